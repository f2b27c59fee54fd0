//! Reaping of the shim's children. The shim is a subreaper: container processes re-parent to it
//! when the helper that created them exits. One thread waits for SIGCHLD and reaps with
//! `waitpid(-1)`; code that waits for a child of its own (the create/exec helper, mount helpers)
//! holds the gate shared, so the reaper never steals that child's status.

use std::{
    sync::{Arc, RwLock, RwLockReadGuard},
    thread,
};

use nix::{
    errno::Errno,
    sys::wait::{waitpid, WaitPidFlag, WaitStatus},
    unistd::Pid,
};
use signal_hook::{consts::SIGCHLD, iterator::Signals};

#[derive(Default)]
pub struct Reaper {
    gate: RwLock<()>,
}

/// An exit status in the form containerd reports: the code, or 128 + the signal number.
pub fn exit_code(status: WaitStatus) -> Option<(i32, i32)> {
    match status {
        WaitStatus::Exited(pid, code) => Some((pid.as_raw(), code)),
        WaitStatus::Signaled(pid, signal, _) => Some((pid.as_raw(), 128 + signal as i32)),
        _ => None,
    }
}

impl Reaper {
    /// Keeps the reaper from calling `waitpid(-1)` while the guard lives.
    pub fn hold(&self) -> RwLockReadGuard<'_, ()> {
        self.gate
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts the reaper thread; `on_exit(pid, code)` runs for every child reaped.
    pub fn start(
        self: &Arc<Self>,
        on_exit: impl Fn(i32, i32) + Send + 'static,
    ) -> std::io::Result<()> {
        let mut signals = Signals::new([SIGCHLD])?;
        let reaper = Arc::clone(self);
        thread::Builder::new()
            .name("reaper".into())
            .spawn(move || {
                for _ in signals.forever() {
                    let _exclusive = reaper
                        .gate
                        .write()
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                    loop {
                        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                            Ok(status) => {
                                if let Some((pid, code)) = exit_code(status) {
                                    on_exit(pid, code);
                                }
                            }
                            Err(Errno::EINTR) => continue,
                            Err(err) => {
                                tracing::warn!(error = %err, "waitpid failed");
                                break;
                            }
                        }
                    }
                }
            })?;
        Ok(())
    }
}
