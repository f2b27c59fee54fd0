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

/// The machine's CPU time so far from `/proc/stat`'s `cpu` line, in clock ticks: (busy, all).
/// Idle and iowait are the idle part; guest time is already inside user.
fn cpu_ticks(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|t| t.parse().ok())
        .collect::<Option<_>>()?;
    let all: u64 = ticks.iter().sum();
    let idle = ticks.get(3)? + ticks.get(4)?;
    Some((all - idle, all))
}

/// A window of [`settle`]'s.
const SETTLE_WINDOW: Duration = Duration::from_millis(100);
/// The most of the CPUs' time in use in a window the machine counts as quiet: this machine
/// idles at 1-2 %.
const SETTLE_BUSY: f64 = 0.05;
/// Quiet windows in a row that end [`settle`].
const SETTLE_WINDOWS: u32 = 3;

/// Waits until the machine's CPUs are quiet, so a sample does not pay for work left behind by
/// the one before it (a runtime's deferred teardown: network namespaces the kernel frees in the
/// background, shims and plugins exiting, a peer's garbage collection). Gives up after `limit`;
/// returns how long it waited.
pub(crate) async fn settle(limit: Duration) -> Duration {
    let started = tokio::time::Instant::now();
    let read = || {
        fs::read_to_string("/proc/stat")
            .ok()
            .as_deref()
            .and_then(cpu_ticks)
    };
    let mut quiet = 0;
    let mut last = read();
    while quiet < SETTLE_WINDOWS && started.elapsed() < limit {
        tokio::time::sleep(SETTLE_WINDOW).await;
        let now = read();
        quiet = match (last, now) {
            (Some((busy0, all0)), Some((busy1, all1))) if all1 > all0 => {
                let busy = (busy1 - busy0) as f64 / (all1 - all0) as f64;
                if busy < SETTLE_BUSY {
                    quiet + 1
                } else {
                    0
                }
            }
            // No readable /proc/stat: nothing to wait for.
            (None, _) | (_, None) => SETTLE_WINDOWS,
            _ => 0,
        };
        last = now;
    }
    started.elapsed()
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

    #[test]
    fn cpu_ticks_count_idle_and_iowait_as_idle() {
        let stat = "cpu  100 5 50 1000 20 3 2 7 0 0\ncpu0 50 2 25 500 10 1 1 3 0 0\n";
        // busy: user, nice, system, irq, softirq, steal.
        assert_eq!(cpu_ticks(stat), Some((167, 1187)));
        assert_eq!(cpu_ticks("intr 1 2 3\n"), None);
        assert_eq!(cpu_ticks("cpu  1 2 x 4 5 6 7 8\n"), None);
    }

    #[tokio::test]
    async fn settle_waits_while_a_cpu_is_busy() {
        let spinner = std::thread::spawn(|| {
            let until = std::time::Instant::now() + Duration::from_millis(600);
            while std::time::Instant::now() < until {
                std::hint::spin_loop();
            }
        });
        // One CPU spinning is at least 1/CPUs of the machine's time: busy for as long as it
        // spins, then three quiet windows.
        let waited = settle(Duration::from_secs(5)).await;
        spinner.join().expect("spinner");
        assert!(waited >= Duration::from_millis(600), "{waited:?}");
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
