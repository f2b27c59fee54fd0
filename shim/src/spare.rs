//! A spare helper: a child forked at shim start, while the shim is still single-threaded, that
//! waits for one helper request and then runs it as `ingot-shim-helper` would. The first
//! container of a pod is created without starting a program: an exec of the helper costs about
//! a millisecond of CPU in a VM (the dynamic loader, glibc's CPU and cache probing through
//! `cpuid`, the page faults of a fresh process), and a pod start pays it on its critical path.
//!
//! The spare serves one request only. Forking another later would copy a multi-threaded shim,
//! whose allocator locks another thread may hold; later requests exec the helper. A spare that
//! never gets a request ends when the shim closes its end of the control socket.
//!
//! Protocol: one SOCK_SEQPACKET message, the helper's JSON request, carrying four fds by
//! SCM_RIGHTS: the process's stdin, stdout, stderr and the error pipe. The spare places them
//! at fds 0-3 and runs [`crate::helper::main`]; its exit status is the helper's.

use std::{
    io::{IoSlice, IoSliceMut},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
};

use nix::{
    sys::{
        signal::{signal, sigprocmask, SigHandler, SigSet, SigmaskHow, Signal},
        socket::{
            recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned,
            MsgFlags, SockFlag, SockType,
        },
    },
    unistd::{fork, ForkResult, Pid},
};

/// The largest request a spare reads; helper requests are a few hundred bytes of paths.
const MAX_REQUEST: usize = 64 * 1024;
/// The fds a request carries, in the order they are placed at 0-3.
pub const REQUEST_FDS: usize = 4;
/// Exit status of a spare whose request could not be read.
const BAD_REQUEST: i32 = 125;

/// The shim's handle on its spare: the child's pid (the shim waits on it as on a helper) and
/// the control socket.
#[derive(Debug)]
pub struct Spare {
    pid: Pid,
    control: OwnedFd,
}

impl Spare {
    /// Forks the spare. `close` are fds of the shim the spare must not hold (the listening
    /// socket: a spare outliving a dead shim must not keep it open).
    ///
    /// # Safety
    /// The calling process must be single-threaded: the child goes on to allocate and run
    /// libcontainer, which is sound only when no other thread held a lock at the fork.
    pub unsafe fn fork(close: &[RawFd]) -> std::io::Result<Spare> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        // SAFETY: the caller guarantees a single-threaded process (see above).
        match unsafe { fork() }? {
            ForkResult::Child => {
                drop(ours);
                for &fd in close {
                    // SAFETY: closes an fd of the shim's that this child must not keep.
                    unsafe { libc::close(fd) };
                }
                let code = serve(theirs);
                // SAFETY: ends the child without running the shim's exit handlers or unwinding
                // into the shim's code.
                unsafe { libc::_exit(code) }
            }
            ForkResult::Parent { child } => Ok(Spare {
                pid: child,
                control: ours,
            }),
        }
    }

    /// Hands `request` and its fds (stdin, stdout, stderr, error pipe) to the spare; returns the
    /// pid to wait on. An error means the spare is gone (it died, or was killed): start a helper.
    pub fn hand_over(self, request: &str, fds: [RawFd; REQUEST_FDS]) -> nix::Result<Pid> {
        let payload = [IoSlice::new(request.as_bytes())];
        let rights = [ControlMessage::ScmRights(&fds)];
        loop {
            match sendmsg::<()>(
                self.control.as_raw_fd(),
                &payload,
                &rights,
                MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Err(nix::errno::Errno::EINTR) => continue,
                Err(err) => return Err(err),
                Ok(_) => return Ok(self.pid),
            }
        }
    }

    pub fn pid(&self) -> Pid {
        self.pid
    }
}

/// The spare's life: wait for the request, place its fds, run it.
fn serve(control: OwnedFd) -> i32 {
    // Shown as the helper it stands for, not as a second shim of the pod.
    // SAFETY: this child never reads its arguments again.
    unsafe {
        crate::proctitle::set(
            &[crate::helper::HELPER_BINARY.as_bytes(), b"spare"],
            crate::helper::HELPER_BINARY,
        )
    };
    // What the shim set up before the fork and a helper does not have: handlers for SIGTERM and
    // SIGINT (the shim ignores them), and perhaps a signal mask.
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        // SAFETY: restores the default disposition; no handler of ours is involved.
        let _ = unsafe { signal(sig, SigHandler::SigDfl) };
    }
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);

    let mut buf = vec![0u8; MAX_REQUEST];
    let (bytes, fds) = match receive(&control, &mut buf, REQUEST_FDS) {
        Ok(Some(received)) if received.1.len() == REQUEST_FDS => received,
        // The shim closed the socket without a request: nothing to do.
        Ok(None) => return 0,
        Ok(Some(_)) | Err(_) => return BAD_REQUEST,
    };
    drop(control);
    if place(fds, &[0, 1, 2, 3]).is_err() {
        return BAD_REQUEST;
    }
    match std::str::from_utf8(&buf[..bytes]) {
        Ok(request) => crate::helper::main(request),
        Err(_) => BAD_REQUEST,
    }
}

/// One message on `control`: its length and the fds it carried (at most `max_fds`); `None` at
/// end of file.
pub(crate) fn receive(
    control: &OwnedFd,
    buf: &mut [u8],
    max_fds: usize,
) -> nix::Result<Option<(usize, Vec<OwnedFd>)>> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut space = vec![0u8; nix::sys::socket::cmsg_space::<RawFd>() * max_fds];
    let msg = loop {
        match recvmsg::<()>(
            control.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => break other?,
        }
    };
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(received) = cmsg {
            // SAFETY: the kernel just installed these fds in this process; nothing else owns them.
            fds.extend(
                received
                    .into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    let truncated = msg
        .flags
        .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
    if msg.bytes == 0 && fds.is_empty() {
        return Ok(None);
    }
    if truncated {
        return Err(nix::errno::Errno::EMSGSIZE);
    }
    Ok(Some((msg.bytes, fds)))
}

/// Puts each of `fds` at its number in `targets` (without close-on-exec: what runs there
/// inherits them), closing the originals.
pub(crate) fn place(fds: Vec<OwnedFd>, targets: &[RawFd]) -> nix::Result<()> {
    if fds.len() != targets.len() {
        return Err(nix::errno::Errno::EINVAL);
    }
    // A received fd may sit on a target already and be overwritten by an earlier dup2: raise
    // all above every target first, and close the originals before their slots are reused.
    let above = targets.iter().copied().max().unwrap_or(0) + 1;
    let mut raised = Vec::with_capacity(fds.len());
    for fd in fds {
        let copy = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(above))?;
        // SAFETY: `copy` is a new fd nothing else owns.
        raised.push(unsafe { OwnedFd::from_raw_fd(copy) });
    }
    for (&target, fd) in targets.iter().zip(&raised) {
        // SAFETY: dup2 onto a fixed slot that nothing in this process owns any more; whatever
        // was there is closed by the kernel.
        if unsafe { libc::dup2(fd.as_raw_fd(), target) } < 0 {
            return Err(nix::errno::Errno::last());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits for `pid` and returns its exit code.
    fn exit_code(pid: Pid) -> i32 {
        match nix::sys::wait::waitpid(pid, None).expect("waitpid") {
            nix::sys::wait::WaitStatus::Exited(_, code) => code,
            other => panic!("spare ended as {other:?}"),
        }
    }

    /// Forks a spare; call only inside [`single_threaded`] (the test harness has threads).
    fn fork_spare() -> Spare {
        // SAFETY: called in the single-threaded child of `single_threaded`.
        unsafe { Spare::fork(&[]) }.expect("fork spare")
    }

    /// Runs `f` in a forked child that is single-threaded (a test thread forks it; the child
    /// has only that thread), returning the child's exit code.
    fn single_threaded(f: impl FnOnce() -> i32) -> i32 {
        // SAFETY: the child runs `f` and exits; `f` forks again from a process that has one
        // thread, which is what `Spare::fork` requires.
        match unsafe { fork() }.expect("fork") {
            ForkResult::Child => {
                let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(99);
                // SAFETY: leaves the test child without unwinding into the harness.
                unsafe { libc::_exit(code) }
            }
            ForkResult::Parent { child } => exit_code(child),
        }
    }

    #[test]
    fn a_spare_without_a_request_ends_when_the_socket_closes() {
        let code = single_threaded(|| {
            let spare = fork_spare();
            let pid = spare.pid();
            drop(spare);
            exit_code(pid)
        });
        assert_eq!(code, 0);
    }

    #[test]
    fn a_request_runs_with_its_fds_in_place_and_reports_errors_on_fd_3() {
        let dir = tempfile::tempdir().expect("tempdir");
        let report = dir.path().join("report");
        let report_path = report.clone();
        let code = single_threaded(move || {
            let spare = fork_spare();
            let (error_read, error_write) =
                nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
            let null = std::fs::File::open("/dev/null").expect("null");
            let fds = [
                null.as_raw_fd(),
                null.as_raw_fd(),
                null.as_raw_fd(),
                error_write.as_raw_fd(),
            ];
            // Not a request the helper can parse: it answers on fd 3 and exits 1.
            let pid = spare.hand_over("not json", fds).expect("hand over");
            drop(error_write);
            let code = exit_code(pid);
            let mut message = String::new();
            std::io::Read::read_to_string(&mut std::fs::File::from(error_read), &mut message)
                .expect("read error pipe");
            std::fs::write(&report_path, message).expect("write report");
            code
        });
        assert_eq!(code, 1);
        let message = std::fs::read_to_string(&report).expect("report");
        let (code, text) = crate::helper::parse_error(&message);
        assert_eq!(code, containerd_shim::protos::ttrpc::Code::INVALID_ARGUMENT);
        assert!(text.contains("helper request"), "{text}");
    }

    #[test]
    fn a_dead_spare_refuses_the_hand_over() {
        let code = single_threaded(|| {
            let spare = fork_spare();
            let pid = spare.pid();
            // SAFETY: kills our own child.
            unsafe { libc::kill(pid.as_raw(), libc::SIGKILL) };
            let _ = nix::sys::wait::waitpid(pid, None);
            let null = std::fs::File::open("/dev/null").expect("null");
            let fd = null.as_raw_fd();
            match spare.hand_over("{}", [fd, fd, fd, fd]) {
                Err(nix::errno::Errno::EPIPE) => 0,
                other => {
                    eprintln!("hand over to a dead spare: {other:?}");
                    1
                }
            }
        });
        assert_eq!(code, 0);
    }
}
