//! The CPU affinity of ingot's own processes (ingotd, the pod shims, the pod-init holders):
//! every thread of each, found under `<proc root>/<pid>/task`, confined to the housekeeping
//! CPUs, so no runtime thread wakes on a CPU a container holds exclusively. New threads inherit
//! the affinity of the thread that makes them, and shims inherit ingotd's, so pinning once per
//! change of the housekeeping set covers them.

use std::path::Path;

use ingot_topology::CpuSet;
use nix::{sched::sched_setaffinity, unistd::Pid};

use crate::CriError;

fn nix_set(cpus: &CpuSet) -> Result<nix::sched::CpuSet, CriError> {
    let mut set = nix::sched::CpuSet::new();
    for cpu in cpus.iter() {
        let index = usize::try_from(cpu).unwrap_or(usize::MAX);
        set.set(index).map_err(|err| CriError::Io {
            context: format!("CPU {cpu} in the housekeeping set {cpus}"),
            source: std::io::Error::from(err),
        })?;
    }
    Ok(set)
}

/// Pins every thread of process `pid` to `cpus`; returns how many threads were pinned. A thread
/// that exits meanwhile is skipped; a process that is gone pins none.
pub fn pin_process(proc_root: &Path, pid: u32, cpus: &CpuSet) -> Result<usize, CriError> {
    if cpus.is_empty() {
        return Err(CriError::Config(format!(
            "cannot pin process {pid} to an empty CPU set"
        )));
    }
    let set = nix_set(cpus)?;
    let tasks = proc_root.join(pid.to_string()).join("task");
    let entries = match std::fs::read_dir(&tasks) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(err) => {
            return Err(CriError::Io {
                context: format!("list {}", tasks.display()),
                source: err,
            })
        }
    };
    let mut pinned = 0;
    for entry in entries.flatten() {
        let Some(tid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        match sched_setaffinity(Pid::from_raw(tid), &set) {
            Ok(()) => pinned += 1,
            Err(nix::errno::Errno::ESRCH) => {}
            Err(err) => {
                return Err(CriError::Io {
                    context: format!("pin thread {tid} of process {pid} to CPUs {cpus}"),
                    source: std::io::Error::from(err),
                })
            }
        }
    }
    Ok(pinned)
}

/// The CPUs ingotd takes at start, before its placement state is read: the reserved CPUs when
/// configured, else the online CPUs that are not isolated (None when neither can be read).
/// Exclusive CPUs of running containers are left once the checkpoint is restored.
pub fn startup_cpus(host_root: &Path, reserved: &CpuSet) -> Option<CpuSet> {
    if !reserved.is_empty() {
        return Some(reserved.clone());
    }
    let cpu = host_root.join("sys/devices/system/cpu");
    let read = |name: &str| {
        std::fs::read_to_string(cpu.join(name))
            .ok()
            .and_then(|text| CpuSet::parse(&text).ok())
    };
    let online = read("online")?;
    let housekeeping = online.difference(&read("isolated").unwrap_or_default());
    Some(if housekeeping.is_empty() {
        online
    } else {
        housekeeping
    })
}

/// The `Cpus_allowed_list` of every thread of `pid`, by thread id.
pub fn allowed_cpus(proc_root: &Path, pid: u32) -> Vec<(u32, CpuSet)> {
    let tasks = proc_root.join(pid.to_string()).join("task");
    let Ok(entries) = std::fs::read_dir(&tasks) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let Some(tid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        if let Some(cpus) = status
            .lines()
            .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
            .and_then(|list| CpuSet::parse(list).ok())
        {
            out.push((tid, cpus));
        }
    }
    out.sort_by_key(|(tid, _)| *tid);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_every_thread_of_this_process() {
        let proc_root = Path::new("/proc");
        let before = allowed_cpus(proc_root, std::process::id());
        assert!(!before.is_empty());
        let original = before[0].1.clone();
        let first = CpuSet::from_iter(original.first());
        let worker =
            std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_millis(300)));
        let pinned = pin_process(proc_root, std::process::id(), &first).expect("pin");
        assert!(pinned >= 2, "the main thread and the worker: {pinned}");
        for (tid, cpus) in allowed_cpus(proc_root, std::process::id()) {
            assert_eq!(cpus, first, "thread {tid}");
        }
        pin_process(proc_root, std::process::id(), &original).expect("restore");
        worker.join().expect("worker");
    }

    #[test]
    fn startup_cpus_are_the_reserved_else_the_online_not_isolated() {
        let root = tempfile::tempdir().expect("tempdir");
        let cpu = root.path().join("sys/devices/system/cpu");
        std::fs::create_dir_all(&cpu).expect("cpu dir");
        assert_eq!(startup_cpus(root.path(), &CpuSet::new()), None);
        std::fs::write(cpu.join("online"), "0-7\n").expect("online");
        let reserved = CpuSet::parse("0,4").expect("reserved");
        assert_eq!(startup_cpus(root.path(), &reserved), Some(reserved.clone()));
        assert_eq!(
            startup_cpus(root.path(), &CpuSet::new()).map(|c| c.to_string()),
            Some("0-7".into())
        );
        std::fs::write(cpu.join("isolated"), "2-7\n").expect("isolated");
        assert_eq!(
            startup_cpus(root.path(), &CpuSet::new()).map(|c| c.to_string()),
            Some("0-1".into())
        );
        std::fs::write(cpu.join("isolated"), "0-7\n").expect("all isolated");
        assert_eq!(
            startup_cpus(root.path(), &CpuSet::new()).map(|c| c.to_string()),
            Some("0-7".into()),
            "never an empty set"
        );
    }

    #[test]
    fn a_missing_process_pins_nothing_and_an_empty_set_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cpus = CpuSet::parse("0").expect("cpus");
        assert_eq!(pin_process(dir.path(), 42, &cpus).expect("gone"), 0);
        assert!(pin_process(dir.path(), 42, &CpuSet::new()).is_err());
    }
}
