//! Starting a long-lived helper process (a pod's shim) from ingotd without copying ingotd.
//!
//! `std::process::Command` forks when it must run code in the child (a new session, an fd moved
//! to a fixed number), and a fork of ingotd copies the page tables of every thread's stack and
//! heap; `posix_spawn` (glibc: `clone(CLONE_VM | CLONE_VFORK)`) does the same with file actions
//! and flags, copying nothing. The process is ingotd's child, reaped by a task that waits on its
//! pidfd, so no zombie outlives it.

use std::{
    ffi::{CString, OsStr},
    os::{
        fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

/// What a spawned process gets: `fds` as `(theirs, ours)` (dup'ed onto `theirs`, which loses
/// close-on-exec), ingotd's environment but `env_remove`, plus `env`, in a session of its own,
/// with the default signal mask and SIGPIPE's default action.
pub struct Spawn<'a> {
    pub program: &'a Path,
    pub args: &'a [&'a str],
    pub env: &'a [(&'a str, &'a OsStr)],
    pub env_remove: &'a [&'a str],
    pub fds: &'a [(i32, BorrowedFd<'a>)],
}

fn cstring(bytes: &[u8]) -> std::io::Result<CString> {
    CString::new(bytes).map_err(|_| std::io::Error::other("an argument holds a NUL byte"))
}

/// Fails with the error of a nonzero posix_spawn* return (they return the errno).
fn check(code: libc::c_int) -> std::io::Result<()> {
    if code == 0 {
        Ok(())
    } else {
        Err(std::io::Error::from_raw_os_error(code))
    }
}

impl Spawn<'_> {
    /// Starts the process; its pid.
    pub fn start(&self) -> std::io::Result<libc::pid_t> {
        let program = cstring(self.program.as_os_str().as_bytes())?;
        let mut argv = vec![program.clone()];
        for arg in self.args {
            argv.push(cstring(arg.as_bytes())?);
        }
        let mut envp = Vec::new();
        for (key, value) in std::env::vars_os() {
            let name = key.as_bytes();
            let replaced = self.env.iter().any(|(k, _)| k.as_bytes() == name);
            let removed = self.env_remove.iter().any(|k| k.as_bytes() == name);
            if !replaced && !removed {
                envp.push(cstring(&[name, b"=", value.as_bytes()].concat())?);
            }
        }
        for (key, value) in self.env {
            envp.push(cstring(&[key.as_bytes(), b"=", value.as_bytes()].concat())?);
        }
        let argv_ptrs: Vec<*mut libc::c_char> = argv
            .iter()
            .map(|a| a.as_ptr().cast_mut())
            .chain(std::iter::once(std::ptr::null_mut()))
            .collect();
        let envp_ptrs: Vec<*mut libc::c_char> = envp
            .iter()
            .map(|e| e.as_ptr().cast_mut())
            .chain(std::iter::once(std::ptr::null_mut()))
            .collect();

        // SAFETY: the attribute and file-action objects are initialised before use and
        // destroyed on every path; the pointers passed live until posix_spawn returns.
        unsafe {
            let mut actions: libc::posix_spawn_file_actions_t = std::mem::zeroed();
            check(libc::posix_spawn_file_actions_init(&mut actions))?;
            let mut attrs: libc::posix_spawnattr_t = std::mem::zeroed();
            if let Err(err) = check(libc::posix_spawnattr_init(&mut attrs)) {
                libc::posix_spawn_file_actions_destroy(&mut actions);
                return Err(err);
            }
            let result = (|| {
                for (theirs, ours) in self.fds {
                    check(libc::posix_spawn_file_actions_adddup2(
                        &mut actions,
                        ours.as_raw_fd(),
                        *theirs,
                    ))?;
                }
                let mut empty: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut empty);
                check(libc::posix_spawnattr_setsigmask(&mut attrs, &empty))?;
                let mut default: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut default);
                libc::sigaddset(&mut default, libc::SIGPIPE);
                check(libc::posix_spawnattr_setsigdefault(&mut attrs, &default))?;
                let flags = libc::c_int::from(libc::POSIX_SPAWN_SETSID)
                    | libc::POSIX_SPAWN_SETSIGMASK
                    | libc::POSIX_SPAWN_SETSIGDEF;
                let flags = libc::c_short::try_from(flags)
                    .map_err(|_| std::io::Error::other("posix_spawn flags out of range"))?;
                check(libc::posix_spawnattr_setflags(&mut attrs, flags))?;
                let mut pid: libc::pid_t = 0;
                check(libc::posix_spawn(
                    &mut pid,
                    program.as_ptr(),
                    &actions,
                    &attrs,
                    argv_ptrs.as_ptr(),
                    envp_ptrs.as_ptr(),
                ))?;
                Ok(pid)
            })();
            libc::posix_spawnattr_destroy(&mut attrs);
            libc::posix_spawn_file_actions_destroy(&mut actions);
            result
        }
    }
}

/// Reaps `pid` (a child of ingotd) when it exits: a task waiting on its pidfd hands it to
/// ingot_netns's reaper; a thread of its own waits for it where pidfds are missing (Linux
/// before 5.3).
pub fn reap_in_background(pid: libc::pid_t) {
    let reap = move || {
        let mut status = 0;
        // SAFETY: waits for our own child; the status is written to a local.
        unsafe { libc::waitpid(pid, &mut status, 0) };
    };
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let Ok(raw) = i32::try_from(raw) else {
        std::thread::spawn(reap);
        return;
    };
    if raw < 0 {
        std::thread::spawn(reap);
        return;
    }
    // SAFETY: a new fd that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: the AsyncFd owns the OwnedFd, which stays open (the same fd) until it is dropped.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE)
    };
    match registered {
        Ok(pidfd) => {
            tokio::spawn(async move {
                // Readable once the process has exited. Reaped a moment later, off the event
                // loop: a process whose last thread is still dropping its /proc entries makes
                // a reaper spin until it has (ingot_netns's reaper, which plugins use too).
                let _ = pidfd.readable().await;
                ingot_netns::reap_later(nix::unistd::Pid::from_raw(pid));
            });
        }
        Err(_) => {
            std::thread::spawn(reap);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_child_gets_its_fds_env_and_session_and_is_reaped() {
        use std::os::fd::AsFd;
        let dir = tempfile::tempdir().expect("tempdir");
        let out = std::fs::File::create(dir.path().join("out")).expect("create");
        let devnull = std::fs::File::open("/dev/null").expect("devnull");
        // Builtins only. CARGO_MANIFEST_DIR is in the environment of a test cargo runs.
        let script = "echo \"$INGOT_SPAWN_TEST_SET-${CARGO_MANIFEST_DIR:-unset}\" >&3; \
                      read -r stat < /proc/$$/stat; set -- $stat; echo \"$6\" >&3; echo $$ >&3";
        let pid = Spawn {
            program: Path::new("/bin/sh"),
            args: &["-c", script],
            env: &[("INGOT_SPAWN_TEST_SET", OsStr::new("yes"))],
            env_remove: &["CARGO_MANIFEST_DIR"],
            fds: &[(0, devnull.as_fd()), (3, out.as_fd())],
        }
        .start()
        .expect("spawn");
        reap_in_background(pid);
        // Reaped: neither running nor a zombie once the task has run.
        assert!(
            wait(|| !Path::new(&format!("/proc/{pid}")).exists()).await,
            "the child was not reaped"
        );
        let text = std::fs::read_to_string(dir.path().join("out")).expect("read");
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        assert_eq!(lines.first(), Some(&"yes-unset"), "{text}");
        // Its own session: the session id is its pid.
        assert_eq!(lines.get(1), lines.get(2), "{text}");
        assert_eq!(lines.get(2), Some(&pid.to_string().as_str()), "{text}");
    }

    async fn wait(mut done: impl FnMut() -> bool) -> bool {
        for _ in 0..500 {
            if done() {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        done()
    }

    #[test]
    fn a_missing_program_is_an_error() {
        let err = Spawn {
            program: Path::new("/nonexistent/ingot-no-such-binary"),
            args: &[],
            env: &[],
            env_remove: &[],
            fds: &[],
        }
        .start()
        .expect_err("spawned a missing binary");
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{err}");
    }
}
