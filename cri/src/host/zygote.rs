//! ingotd's end of the shim zygote (`containerd-shim-ingot-v2 -zygote`, see the shim's
//! `zygote` module): one process started with ingotd's first pod, which forks each later pod's
//! shim instead of ingotd exec'ing the shim binary. A fork of the small, single-threaded zygote
//! skips what an exec costs in a VM before the shim runs a line of its own (the dynamic
//! loader, glibc's `cpuid` probing, a fresh process's page faults).
//!
//! A zygote that fails (killed, stuck past [`REPLY_TIMEOUT`], an answer out of step) is
//! dropped and a new one started; one that cannot start leaves shims to start by exec.

use std::{
    io::IoSlice,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd},
    path::{Path, PathBuf},
    time::Duration,
};

use nix::sys::socket::{
    recv, sendmsg, setsockopt, socketpair, sockopt, AddressFamily, ControlMessage, MsgFlags,
    SockFlag, SockType,
};

use super::spawn::Spawn;

/// The zygote's control socket, in the zygote.
const CONTROL_FD: RawFd = 3;
/// Blank room at the end of the zygote's command line, which each forked shim overwrites with
/// its own (`-namespace`, `-id`, `-address`, `-socket`: a few hundred bytes).
const TITLE_ROOM: usize = 1024;
/// How long a fork may take before the zygote is given up.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// A running zygote.
#[derive(Debug)]
pub struct Zygote {
    program: PathBuf,
    pid: libc::pid_t,
    control: OwnedFd,
}

impl Zygote {
    /// Starts a zygote of `program` (the shim binary) for the daemon serving `daemon_socket`
    /// (named in its command line, so it is found among the daemon's processes).
    pub fn start(program: &Path, daemon_socket: &str) -> std::io::Result<Zygote> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        let timeout =
            nix::sys::time::TimeVal::new(i64::try_from(REPLY_TIMEOUT.as_secs()).unwrap_or(5), 0);
        setsockopt(&ours, sockopt::ReceiveTimeout, &timeout)?;
        let devnull = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")?;
        // SAFETY: ingotd's stderr stays open for the life of the process.
        let stderr = unsafe { BorrowedFd::borrow_raw(2) };
        let room = " ".repeat(TITLE_ROOM);
        let pid = Spawn {
            program,
            args: &["-zygote", "-address", daemon_socket, &room],
            env: &[],
            env_remove: &["TTRPC_ADDRESS"],
            fds: &[
                (0, devnull.as_fd()),
                (1, devnull.as_fd()),
                (2, stderr),
                (CONTROL_FD, theirs.as_fd()),
            ],
        }
        .start()?;
        super::spawn::reap_in_background(pid);
        Ok(Zygote {
            program: program.to_path_buf(),
            pid,
            control: ours,
        })
    }

    pub fn pid(&self) -> libc::pid_t {
        self.pid
    }

    /// Forks the process `spawn` describes (its program must be the zygote's); its pid. The
    /// process is the zygote's child, reaped by the kernel when it ends. An error leaves the
    /// zygote unusable: drop it.
    pub fn spawn(&self, spawn: &Spawn<'_>) -> std::io::Result<libc::pid_t> {
        if spawn.program != self.program {
            return Err(std::io::Error::other(format!(
                "the zygote runs {}, not {}",
                self.program.display(),
                spawn.program.display()
            )));
        }
        let text = |value: &std::ffi::OsStr| {
            value.to_str().map(str::to_string).ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("{value:?} is not UTF-8"),
                )
            })
        };
        let env = spawn
            .env
            .iter()
            .map(|(key, value)| Ok((key.to_string(), text(value)?)))
            .collect::<std::io::Result<Vec<_>>>()?;
        let request = serde_json::json!({
            "args": spawn.args,
            "env": env,
            "env_remove": spawn.env_remove,
            "fds": spawn.fds.iter().map(|(theirs, _)| theirs).collect::<Vec<_>>(),
        })
        .to_string();
        let fds: Vec<RawFd> = spawn.fds.iter().map(|(_, ours)| ours.as_raw_fd()).collect();
        sendmsg::<()>(
            self.control.as_raw_fd(),
            &[IoSlice::new(request.as_bytes())],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::MSG_NOSIGNAL,
            None,
        )?;
        let mut answer = [0u8; 4];
        let read = loop {
            match recv(self.control.as_raw_fd(), &mut answer, MsgFlags::empty()) {
                Err(nix::errno::Errno::EINTR) => continue,
                other => break other?,
            }
        };
        if read != answer.len() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the shim zygote ended",
            ));
        }
        match i32::from_le_bytes(answer) {
            pid if pid > 0 => Ok(pid),
            errno => Err(std::io::Error::from_raw_os_error(-errno)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A zygote of a program that is not the shim would run the shim's code anyway: refused.
    #[test]
    fn a_zygote_refuses_another_program() {
        let (ours, _theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .expect("socketpair");
        let zygote = Zygote {
            program: PathBuf::from("/usr/bin/containerd-shim-ingot-v2"),
            pid: 0,
            control: ours,
        };
        let err = zygote
            .spawn(&Spawn {
                program: Path::new("/bin/true"),
                args: &[],
                env: &[],
                env_remove: &[],
                fds: &[],
            })
            .expect_err("refused");
        assert!(err.to_string().contains("/bin/true"), "{err}");
    }

    /// A zygote whose process is gone (its end of the socket closed) fails the spawn at once.
    #[test]
    fn a_gone_zygote_fails_the_spawn() {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .expect("socketpair");
        drop(theirs);
        let program = PathBuf::from("/usr/bin/containerd-shim-ingot-v2");
        let zygote = Zygote {
            program: program.clone(),
            pid: 0,
            control: ours,
        };
        let err = zygote
            .spawn(&Spawn {
                program: &program,
                args: &["-id", "x"],
                env: &[],
                env_remove: &[],
                fds: &[],
            })
            .expect_err("gone");
        assert_eq!(err.raw_os_error(), Some(libc::EPIPE), "{err}");
    }
}
