//! ingot's containerd shim v2: the Task API over ttrpc for every container of one pod, and the
//! runtime helper that runs libcontainer on the shim's behalf. Two binaries share this library:
//! `containerd-shim-ingot-v2` (long-lived, kept small) and `ingot-shim-helper` (short-lived).

pub mod bootstrap;
pub mod cgroups;
pub mod crilog;
pub mod error;
pub mod events;
pub mod fastexec;
pub mod helper;
pub mod io;
pub mod mount;
pub mod oom;
pub mod proctitle;
pub mod reaper;
pub mod serve;
pub mod service;
pub mod shimlog;
pub mod spare;
pub mod task;
pub mod zygote;
