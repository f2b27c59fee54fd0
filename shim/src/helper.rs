//! The runtime helper: `ingot-shim-helper`, a short-lived child of the shim that runs libcontainer
//! (create, exec, start, delete), as runc's CLI runs under runc's shim. Keeping libcontainer out
//! of the shim process matters: `build()` forks from the calling process, writes
//! `oom_score_adj` and the dumpable flag into the caller, and waits on children of its own; none
//! of that may touch a long-lived, multi-threaded shim. And the shim binary stays small: its
//! resident memory is what every pod pays. The container's processes re-parent to the shim (a
//! subreaper) when the helper exits.
//!
//! Protocol: one JSON argument; fds 0-2 are the container process's stdio; fd 3 carries an error
//! message back. Exit 0 means the pid file holds the new process's pid.

use std::{
    io::{Read, Write},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::process::CommandExt,
    },
    path::PathBuf,
    process::{Command, Stdio},
};

use libcontainer::{
    container::{builder::ContainerBuilder, Container},
    syscall::syscall::SyscallType,
};
use nix::{fcntl::OFlag, unistd::pipe2};
use serde::{Deserialize, Serialize};

use crate::{
    error::{Result, ShimError},
    io::ChildStdio,
    reaper::Reaper,
};

pub const HELPER_BINARY: &str = "ingot-shim-helper";
const ERROR_FD: i32 = 3;

#[derive(Debug, Serialize, Deserialize)]
pub enum Op {
    /// Create the container from `bundle/config.json` (init process, waiting for start).
    Create { bundle: PathBuf },
    /// Run the process in `process` (a process.json) inside the running container.
    Exec { process: PathBuf },
    /// Let the created container's init exec its process.
    Start,
    /// Kill what is left, run poststop hooks, remove the cgroup and libcontainer's state.
    Delete,
}

impl Op {
    fn name(&self) -> &'static str {
        match self {
            Op::Create { .. } => "create",
            Op::Exec { .. } => "exec",
            Op::Start => "start",
            Op::Delete => "delete",
        }
    }

    /// Whether the helper leaves a new process's pid in the pid file.
    fn makes_process(&self) -> bool {
        matches!(self, Op::Create { .. } | Op::Exec { .. })
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    pub op: Op,
    /// libcontainer's state root.
    pub root: PathBuf,
    pub id: String,
    pub pid_file: PathBuf,
    pub console_socket: Option<PathBuf>,
}

/// Entry point inside the helper process; returns the exit code.
pub fn main(arg: &str) -> i32 {
    match run(arg) {
        Ok(()) => 0,
        Err(message) => {
            // SAFETY: fd 3 is the error pipe the shim set up for us; we own it from here on.
            let mut pipe = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(ERROR_FD) });
            let _ = pipe.write_all(message.as_bytes());
            1
        }
    }
}

fn load(request: &Request) -> std::result::Result<Container, String> {
    Container::load(request.root.join(&request.id)).map_err(|err| err.to_string())
}

fn run(arg: &str) -> std::result::Result<(), String> {
    let request: Request =
        serde_json::from_str(arg).map_err(|err| format!("helper request: {err}"))?;
    let builder = ContainerBuilder::new(request.id.clone(), SyscallType::default())
        .with_root_path(&request.root)
        .map_err(|err| err.to_string())?
        .with_pid_file(Some(&request.pid_file))
        .map_err(|err| err.to_string())?
        .with_console_socket(request.console_socket.as_ref());
    match request.op {
        Op::Create { bundle } => {
            let readonly_cgroups = cgroup_mount_readonly(&bundle);
            let container = builder
                .as_init(bundle)
                .with_systemd(false)
                .with_detach(true)
                .build()
                .map_err(|err| err.to_string())?;
            if readonly_cgroups {
                if let Some(pid) = container.pid() {
                    seal_cgroup_mounts(pid.as_raw())?;
                }
            }
        }
        Op::Exec { process } => {
            let pid = builder
                .as_tenant()
                .with_detach(true)
                .with_process(Some(process))
                .build()
                .map_err(|err| err.to_string())?;
            std::fs::write(&request.pid_file, pid.to_string())
                .map_err(|err| format!("write pid file: {err}"))?;
        }
        Op::Start => {
            load(&request)?.start().map_err(|err| err.to_string())?;
        }
        Op::Delete => match Container::load(request.root.join(&request.id)) {
            Ok(mut container) => container.delete(true).map_err(|err| err.to_string())?,
            // Nothing was created, or it is gone already: deleting is done.
            Err(_) if !request.root.join(&request.id).exists() => {}
            Err(err) => return Err(err.to_string()),
        },
    }
    Ok(())
}

/// The helper binary: beside the running shim, else on PATH.
pub fn binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .map(|exe| exe.with_file_name(HELPER_BINARY))
        .filter(|path| path.exists())
        .unwrap_or_else(|| PathBuf::from(HELPER_BINARY))
}

/// Runs the helper for `request`. For create and exec it returns the new process's pid, after
/// `register` ran with it while the reaper is still held off, so an exit of a short-lived
/// process is never seen before the shim knows the pid.
pub fn spawn(
    binary: &std::path::Path,
    reaper: &Reaper,
    request: &Request,
    stdio: ChildStdio,
    register: impl FnOnce(Option<i32>),
) -> Result<Option<i32>> {
    let id = request.id.as_str();
    let op = request.op.name();
    let arg = serde_json::to_string(request).map_err(|err| ShimError::Runtime {
        id: id.to_string(),
        op,
        message: format!("encode helper request: {err}"),
    })?;
    let (error_read, error_write) = pipe2(OFlag::O_CLOEXEC).map_err(|errno| ShimError::Io {
        context: "create helper error pipe".into(),
        source: errno.into(),
    })?;
    let error_fd = error_write.as_raw_fd();
    let mut command = Command::new(binary);
    command
        .arg(arg)
        .stdin(Stdio::from(stdio.stdin))
        .stdout(Stdio::from(stdio.stdout))
        .stderr(Stdio::from(stdio.stderr));
    // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if error_fd == ERROR_FD {
                if libc::fcntl(ERROR_FD, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(error_fd, ERROR_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }

    let _hold = reaper.hold();
    let mut child = command.spawn().map_err(ShimError::io(format!(
        "spawn container helper {}",
        binary.display()
    )))?;
    drop(command);
    drop(error_write);
    // Wait first, then read what the helper wrote: the container's init is cloned from the
    // helper and holds the pipe's write end until it execs, so EOF would wait for Start.
    let status = child
        .wait()
        .map_err(ShimError::io("wait for container helper"))?;
    let mut message = String::new();
    if nix::fcntl::fcntl(
        error_read.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK),
    )
    .is_ok()
    {
        let _ = std::fs::File::from(error_read).read_to_string(&mut message);
    }
    if !status.success() {
        let message = if message.is_empty() {
            format!("helper {status}")
        } else {
            message
        };
        return Err(ShimError::Runtime {
            id: id.to_string(),
            op,
            message,
        });
    }
    if !request.op.makes_process() {
        register(None);
        return Ok(None);
    }
    let text = std::fs::read_to_string(&request.pid_file).map_err(ShimError::io(format!(
        "read pid file {}",
        request.pid_file.display()
    )))?;
    let pid: i32 = text.trim().parse().map_err(|_| ShimError::Runtime {
        id: id.to_string(),
        op: "read pid file",
        message: format!("{:?} is not a pid", text.trim()),
    })?;
    register(Some(pid));
    Ok(Some(pid))
}

/// Whether the spec asks for a read-only cgroup mount (runc's default spec does).
fn cgroup_mount_readonly(bundle: &std::path::Path) -> bool {
    let Ok(spec) = ingot_oci::load_spec(bundle) else {
        return false;
    };
    spec.mounts().iter().flatten().any(|mount| {
        mount.typ().as_deref() == Some("cgroup")
            && mount
                .options()
                .iter()
                .flatten()
                .any(|option| option == "ro")
    })
}

/// libcontainer 0.7 bind-mounts each v1 controller at /sys/fs/cgroup/<controller> read-write,
/// whatever the spec's cgroup mount says, which would let a container's root raise its own
/// limits. runc mounts them `ro,nosuid,nodev,noexec`; so do we, from inside the container's mount
/// namespace while its init still waits for start.
fn seal_cgroup_mounts(init_pid: i32) -> std::result::Result<(), String> {
    use nix::{
        mount::{mount, MsFlags},
        sched::{setns, CloneFlags},
    };
    // Read before entering: inside, /proc is the container's and our pid is not in it.
    let mountinfo = std::fs::read_to_string(format!("/proc/{init_pid}/mountinfo"))
        .map_err(|err| format!("read mountinfo of {init_pid}: {err}"))?;
    let ns = std::fs::File::open(format!("/proc/{init_pid}/ns/mnt"))
        .map_err(|err| format!("open mount namespace of {init_pid}: {err}"))?;
    // This helper is single-threaded; setns moves its root to the container's root.
    setns(&ns, CloneFlags::CLONE_NEWNS).map_err(|err| format!("enter mount namespace: {err}"))?;
    for line in mountinfo.lines() {
        let mount_point = line.split_whitespace().nth(4).unwrap_or_default();
        let fs_type = line
            .split_once(" - ")
            .and_then(|(_, right)| right.split_whitespace().next())
            .unwrap_or_default();
        if fs_type != "cgroup" || !mount_point.starts_with("/sys/fs/cgroup/") {
            continue;
        }
        let flags = MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC
            | MsFlags::MS_RELATIME;
        mount(None::<&str>, mount_point, None::<&str>, flags, None::<&str>)
            .map_err(|err| format!("remount {mount_point} read-only: {err}"))?;
    }
    Ok(())
}
