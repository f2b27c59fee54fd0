//! The pod-init: a process of ingotd's own binary that holds a pod's shared PID namespace as its
//! pid 1 (in place of a pause container), found again after a restart by its command line.

use std::path::{Path, PathBuf};

use crate::store::PodRecord;
/// `ingotd --pod-init <pod dir>`: PID 1 of a pod's shared PID namespace (the directory names
/// the pod in `ps`).
pub const POD_INIT_ARG: &str = "--pod-init";

extern "C" fn reap_children(_: libc::c_int) {
    // Orphans of the pod are re-parented here; reap them (async-signal-safe calls only).
    loop {
        // SAFETY: waitpid with a null status pointer is async-signal-safe.
        let pid = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
        if pid <= 0 {
            break;
        }
    }
}

/// The init of a pod's shared PID namespace: sleeps, reaping orphans, until killed.
pub fn pod_init() -> ! {
    let action = nix::sys::signal::SigAction::new(
        nix::sys::signal::SigHandler::Handler(reap_children),
        nix::sys::signal::SaFlags::SA_RESTART | nix::sys::signal::SaFlags::SA_NOCLDSTOP,
        nix::sys::signal::SigSet::empty(),
    );
    // SAFETY: the handler only calls waitpid.
    let _ = unsafe { nix::sys::signal::sigaction(nix::sys::signal::Signal::SIGCHLD, &action) };
    loop {
        nix::unistd::pause();
    }
}

/// Whether `pid` is still a pod-init process (a pid is reused once its process is reaped).
fn is_pod_init(proc_root: &Path, pid: u32) -> bool {
    std::fs::read(proc_root.join(pid.to_string()).join("cmdline"))
        .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(POD_INIT_ARG))
}

/// Running pod inits whose pod directory is directly under `pods_dir`: (pid, pod id). Their
/// command line is `ingotd --pod-init <pods_dir>/<id>`.
pub fn pod_inits_under(proc_root: &Path, pods_dir: &Path) -> Vec<(u32, String)> {
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let mut args = cmdline.split(|b| *b == 0).skip(1);
            if args.next()? != POD_INIT_ARG.as_bytes() {
                return None;
            }
            let dir = PathBuf::from(String::from_utf8_lossy(args.next()?).into_owned());
            if dir.parent()? != pods_dir {
                return None;
            }
            Some((pid, dir.file_name()?.to_string_lossy().into_owned()))
        })
        .collect()
}

/// Ends a pod init by pid (SIGKILL; reaped when it is ingotd's child).
pub fn kill_pod_init(pid: u32) {
    let Ok(raw) = i32::try_from(pid) else { return };
    let pid = nix::unistd::Pid::from_raw(raw);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    let _ = nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
}

pub fn stop_pod_init(proc_root: &Path, pod: &PodRecord) {
    let Some(pid) = pod.pid_holder.filter(|pid| is_pod_init(proc_root, *pid)) else {
        return;
    };
    let Ok(raw) = i32::try_from(pid) else { return };
    let pid = nix::unistd::Pid::from_raw(raw);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    // Our child unless ingotd restarted since (then init reaps it).
    let _ = nix::sys::wait::waitpid(pid, None);
}
