//! The shim zygote: one process per ingotd, started once, that forks pod shims on request. A
//! shim started by exec pays, in a VM, about a millisecond of CPU before its first line of code:
//! the dynamic loader, glibc's and libgcc's CPU and cache probing through `cpuid` (a VM exit
//! each), and the page faults of a fresh process. A fork of the small, single-threaded zygote
//! costs a fraction of that, and its pages stay shared with every shim until written.
//!
//! `containerd-shim-ingot-v2 -zygote -address <ingotd socket> <room>`, with a SOCK_SEQPACKET
//! socket at fd 3. Each message is a JSON [`Request`] carrying the new shim's fds by SCM_RIGHTS;
//! the zygote forks, answers with the child's pid as 4 bytes (little-endian; a negative errno on
//! failure), and goes back to waiting. The child starts a session of its own, places its fds,
//! sets its environment, takes the command line it would have had from an exec (written over
//! the zygote's arguments: `<room>` is blank space for it) and runs the shim.
//!
//! The zygote never starts a thread, so each fork is sound. It ignores SIGCHLD, so the kernel
//! reaps shims that end (a shim started by containerd's `start` is re-parented the same way).
//! It ends with ingotd, at end of file on its socket (no parent-death signal: that follows the
//! thread of ingotd that started it, not the process).

use std::{
    ffi::OsString,
    io::IoSlice,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
};

use nix::{
    sys::{
        signal::{signal, SigHandler, Signal},
        socket::{sendmsg, MsgFlags},
    },
    unistd::{fork, setsid, ForkResult},
};
use serde::Deserialize;

use crate::spare::{place, receive};

pub const ZYGOTE_ARG: &str = "-zygote";
/// The zygote's control socket.
pub const CONTROL_FD: RawFd = 3;
/// The most fds one request may carry.
const MAX_FDS: usize = 8;
const MAX_REQUEST: usize = 64 * 1024;

/// One shim to start: what an exec would have given it.
#[derive(Debug, Deserialize)]
pub struct Request {
    /// The command line after the program.
    pub args: Vec<String>,
    /// Set in the shim's environment.
    pub env: Vec<(String, String)>,
    /// Removed from the shim's environment.
    pub env_remove: Vec<String>,
    /// Where each fd of the message goes in the shim, in order.
    pub fds: Vec<RawFd>,
}

/// The zygote's life; returns its exit status.
pub fn main() -> i32 {
    // SAFETY: ingotd passes the control socket at this fd; nothing else owns it.
    let control = unsafe { OwnedFd::from_raw_fd(CONTROL_FD) };
    let _ = nix::fcntl::fcntl(
        control.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    // SAFETY: sets a disposition, no handler.
    let _ = unsafe { signal(Signal::SIGCHLD, SigHandler::SigIgn) };
    crate::bootstrap::learn_host_before_forks();
    let mut buf = vec![0u8; MAX_REQUEST];
    loop {
        let (bytes, fds) = match receive(&control, &mut buf, MAX_FDS) {
            Ok(Some(received)) => received,
            Ok(None) => return 0,
            Err(err) => {
                eprintln!("containerd-shim-ingot-v2 zygote: receive: {err}");
                return 1;
            }
        };
        let reply = match serde_json::from_slice::<Request>(&buf[..bytes]) {
            Ok(request) if request.fds.len() == fds.len() => {
                // SAFETY: the zygote is single-threaded: it never starts a thread.
                match unsafe { fork() } {
                    Ok(ForkResult::Child) => become_shim(&control, request, fds),
                    Ok(ForkResult::Parent { child }) => child.as_raw(),
                    Err(errno) => -(errno as i32),
                }
            }
            Ok(_) | Err(_) => -libc::EINVAL,
        };
        let answer = reply.to_le_bytes();
        if let Err(err) = sendmsg::<()>(
            control.as_raw_fd(),
            &[IoSlice::new(&answer)],
            &[],
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            eprintln!("containerd-shim-ingot-v2 zygote: reply: {err}");
            return 1;
        }
    }
}

/// In the forked child: turns it into the shim `request` describes. Never returns.
fn become_shim(control: &OwnedFd, request: Request, fds: Vec<OwnedFd>) -> ! {
    // SAFETY: the zygote's socket is not the shim's; `control` is never used or dropped here
    // again (this function exits the process).
    unsafe { libc::close(control.as_raw_fd()) };
    // SAFETY: restores the default disposition: the shim reaps its own children.
    let _ = unsafe { signal(Signal::SIGCHLD, SigHandler::SigDfl) };
    let _ = setsid();
    if let Err(err) = place(fds, &request.fds) {
        eprintln!("containerd-shim-ingot-v2: place fds: {err}");
        std::process::exit(1);
    }
    for key in &request.env_remove {
        std::env::remove_var(key);
    }
    for (key, value) in &request.env {
        std::env::set_var(key, value);
    }
    let program = std::env::current_exe()
        .map(OsString::from)
        .unwrap_or_else(|_| OsString::from("containerd-shim-ingot-v2"));
    let mut argv = vec![program];
    argv.extend(request.args.iter().map(OsString::from));
    let title: Vec<&[u8]> = argv
        .iter()
        .map(|arg| std::os::unix::ffi::OsStrExt::as_bytes(arg.as_os_str()))
        .collect();
    // SAFETY: the shim reads its command line from `argv` here, never from std::env::args.
    unsafe { crate::proctitle::set(&title, "containerd-shim") };
    let code = match crate::bootstrap::run_args(&argv) {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("containerd-shim-ingot-v2: {err:#}");
            1
        }
    };
    std::process::exit(code)
}
