//! What a runtime costs the node while its pods sit idle: the memory of every process it owns
//! and their wakeups, read from `/proc`.

use std::{
    collections::{HashMap, HashSet},
    fs,
    time::Duration,
};

use crate::peers::Peer;

/// A pod's own workload (the benchmark's containers), which is not the runtime's cost.
fn is_workload(cmdline: &str) -> bool {
    cmdline.starts_with("sleep 100000") || cmdline.starts_with("cyclictest")
}

fn cmdline(pid: i32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

fn parent(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command sits in parentheses and may hold spaces: fields follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Every process `peer` owns: its daemon, each process whose command line names the peer's
/// directory (shims by their `-address`, conmon by its paths, ingot's pod inits), and their
/// descendants (pause processes), less the pods' workloads.
pub(crate) fn owned(peer: &Peer) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    let mut roots = vec![peer.daemon_pid];
    let mut lines = HashMap::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let line = cmdline(pid);
        if line.contains(&peer.marker) {
            roots.push(pid);
        }
        if let Some(ppid) = parent(pid) {
            children.entry(ppid).or_default().push(pid);
        }
        lines.insert(pid, line);
    }
    let mut seen = HashSet::new();
    let mut stack = roots;
    while let Some(pid) = stack.pop() {
        if !seen.insert(pid) {
            continue;
        }
        stack.extend(children.get(&pid).into_iter().flatten().copied());
    }
    let mut owned: Vec<i32> = seen
        .into_iter()
        .filter(|pid| {
            lines
                .get(pid)
                .is_some_and(|l| !l.is_empty() && !is_workload(l))
        })
        .collect();
    owned.sort_unstable();
    owned
}

/// One field (KiB) of /proc/PID/smaps_rollup, e.g. `Pss:`; 0 for a process that is gone.
pub(crate) fn smaps_field(pid: i32, name: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
}

/// Summed PSS (KiB) of `pids`.
pub(crate) fn pss(pids: &[i32]) -> u64 {
    pids.iter().map(|pid| smaps_field(*pid, "Pss:")).sum()
}

/// Voluntary and involuntary context switches of each thread of `pids`, by thread id.
fn switches(pids: &[i32]) -> HashMap<i32, u64> {
    let mut by_thread = HashMap::new();
    for pid in pids {
        let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let Ok(tid) = task.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let status = fs::read_to_string(task.path().join("status")).unwrap_or_default();
            let n = status
                .lines()
                .filter(|l| l.contains("ctxt_switches"))
                .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
            by_thread.insert(tid, n);
        }
    }
    by_thread
}

/// How often `pids` wake up per second over `window`: every context switch of every thread,
/// sampled every 50 ms so that threads which start and end inside the window count too (a
/// thread first seen during the window counts all its switches; one gone by the next sample
/// counts those seen until then).
pub(crate) async fn wakeups(pids: &[i32], window: Duration) -> f64 {
    let first = switches(pids);
    let mut last = first.clone();
    let started = tokio::time::Instant::now();
    while started.elapsed() < window {
        tokio::time::sleep(Duration::from_millis(50)).await;
        for (tid, n) in switches(pids) {
            last.insert(tid, n);
        }
    }
    let total: u64 = last
        .iter()
        .map(|(tid, n)| n.saturating_sub(first.get(tid).copied().unwrap_or(0)))
        .sum();
    total as f64 / window.as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_are_the_benchmarks_own_containers() {
        assert!(is_workload("sleep 100000 "));
        assert!(is_workload("cyclictest -q -t1"));
        // containerd's pause, the busybox image sleeping, is the runtime's.
        assert!(!is_workload("sleep 2147483647 "));
        assert!(!is_workload(
            "/usr/bin/containerd-shim-runc-v2 -namespace k8s.io"
        ));
    }

    #[test]
    fn parent_reads_past_a_command_with_spaces() {
        let me = std::process::id().cast_signed();
        assert_eq!(
            parent(me),
            Some(std::os::unix::process::parent_id().cast_signed())
        );
    }

    #[tokio::test]
    async fn a_busy_thread_counts_its_wakeups() {
        let me = std::process::id().cast_signed();
        let worker = std::thread::spawn(|| {
            for _ in 0..200 {
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        let rate = wakeups(&[me], Duration::from_millis(300)).await;
        worker.join().expect("worker");
        // 200 sleeps in 0.3 s are ~660 switches a second; nothing else here sleeps that often.
        assert!(rate > 300.0, "{rate}");
    }
}
