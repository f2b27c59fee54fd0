//! Real-time readiness of a node: whether its kernel and configuration can host real-time pods
//! (a PREEMPT_RT kernel, isolated CPUs without ticks, RCU callbacks or IRQs, no RT throttling
//! surprises, ...).
//!
//! [`assess`] reads everything under a root path — `/` on a node, a fixture tree in tests — and
//! never writes. Each [`Check`] carries the files it read as [`Evidence`] and, when it does not
//! pass, a remedy (a kernel argument, a sysctl or a pod annotation). A missing file is
//! evidence (`"absent"`), not an error; [`RtError`] is only for a root that cannot be read or a
//! read that fails for another reason than the file not being there.
//!
//! The report goes into `ingot node report` as a table ([`render_table`]) or JSON (the types
//! are `Serialize`).
//!
//! ## Statuses
//!
//! * [`Status::Fail`]: RT pods will not get real-time behaviour (no PREEMPT_RT kernel,
//!   `nohz_full`/`rcu_nocbs` that leave isolated CPUs out, RT runtime 0).
//! * [`Status::Warn`]: latency is at risk, or the node is not set up for isolation at all.
//! * [`Status::Pass`]: fine, sometimes with a note in the title — including checks about
//!   isolated CPUs on a node without any (nothing to check), and hardware without the feature
//!   (no cpufreq, no THP).
//!
//! ## The checks
//!
//! | id | reads | passes when |
//! |----|-------|-------------|
//! | `preempt_rt` | `sys/kernel/realtime`, `proc/version` | `1`, or `PREEMPT_RT` in the version (else **fail**) |
//! | `isolcpus` | `proc/cmdline`, `sys/devices/system/cpu/isolated` | some CPUs isolated |
//! | `nohz_full` | `proc/cmdline`, `sys/devices/system/cpu/nohz_full` | set and covering the isolated CPUs (**fail** when it leaves some out) |
//! | `rcu_nocbs` | `proc/cmdline` | `rcu_nocbs=` ∪ `nohz_full=` covers the isolated CPUs (**fail** when not) |
//! | `irq_affinity` | `proc/irq/default_smp_affinity`, `proc/irq/*/smp_affinity_list` | no IRQ may run on an RT CPU |
//! | `irqbalance_banned` | `etc/sysconfig/irqbalance` or `etc/default/irqbalance` | banned CPUs unset (irqbalance then bans isolated/nohz_full CPUs itself) or covering the RT CPUs |
//! | `sched_rt_runtime` | `proc/sys/kernel/sched_rt_runtime_us` | `-1` or ≥ 950000 (**fail** at `0`) |
//! | `rt_group_sched` | `sys/fs/cgroup/cpu/cpu.rt_runtime_us` | the file exists |
//! | `thp` | `sys/kernel/mm/transparent_hugepage/enabled` | `[never]`, `[madvise]` or no THP |
//! | `numa_balancing` | `proc/sys/kernel/numa_balancing` | `0` or absent |
//! | `governor_isolated` | `cpuN/cpufreq/scaling_governor` | `performance` on every RT CPU, or no cpufreq |
//! | `c_states_isolated` | `cpuN/power/pm_qos_resume_latency_us`, `proc/cmdline` | `n/a` or 1..=20 µs on every RT CPU, C-states limited on the command line, or no PM QoS |
//! | `timer_migration` | `proc/sys/kernel/timer_migration` | `0` |
//! | `clocksource` | `.../clocksource0/current_clocksource` | `tsc` (or `arch_sys_counter`) |
//! | `swap` | `proc/swaps` | no swap area |
//! | `hugepages_reserved` | `sys/kernel/mm/hugepages/*/nr_hugepages` | some size > 0 |
//! | `kthread_affinity` | `proc/<pid>/stat`, `proc/<pid>/status` | no `rcu*`/`ksoftirqd/*`/`kworker*` kernel thread allowed on several CPUs including an RT one |
//! | `smt_siblings` | `cpuN/topology/thread_siblings_list` | every sibling of an RT CPU is an RT CPU |
//!
//! Anything else warns. The per-CPU checks pass with a note on a node without isolated CPUs.
//!
//! ## Which CPUs are "isolated"
//!
//! The *isolated* CPUs are those of `isolcpus=` on the command line together with
//! `/sys/devices/system/cpu/isolated`. The per-CPU checks (IRQs, irqbalance, governors,
//! C-states, kernel threads, SMT siblings) look at the *RT CPUs*: the isolated CPUs together
//! with the `nohz_full` ones, since nodes that isolate with cpuset partitions set only
//! `nohz_full`.

use std::{fmt, path::Path, path::PathBuf};

pub mod budget;
mod checks;
mod read;
pub mod settings;

/// The checks an RT pod needs to pass (see [`Readiness::passes`]): a PREEMPT_RT kernel, CPUs
/// isolated from the scheduler, ticks and RCU callbacks, and RT throttling that lets RT tasks
/// run.
pub const REQUIRED_FOR_RT_PODS: &[&str] = &[
    "preempt_rt",
    "isolcpus",
    "nohz_full",
    "rcu_nocbs",
    "sched_rt_runtime",
];

/// Everything that can go wrong assessing a node.
#[derive(Debug, thiserror::Error)]
pub enum RtError {
    /// The root is missing or not a directory.
    #[error("root {path} is not a readable directory: {source}")]
    Root {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file exists but could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

impl Status {
    /// The lowercase name, as JSON has it.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A file a check read and what it held (trimmed, or the part that matters: one argument of
/// the command line, a summary of many per-IRQ files).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Evidence {
    /// The path under the root, without a leading `/` (`proc/cmdline`); a `*` or `{2-3}`
    /// stands for several files summarised in one value.
    pub file: String,
    /// What was read; `"absent"` when the file does not exist.
    pub value: String,
}

/// One readiness check.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Check {
    /// Stable snake_case id (`preempt_rt`).
    pub id: &'static str,
    /// What was found, in a line.
    pub title: String,
    pub status: Status,
    pub evidence: Vec<Evidence>,
    /// How to fix it (a kernel argument, a sysctl, an annotation); `None` exactly when the
    /// check passes.
    pub remedy: Option<String>,
}

/// Every check of a node, in a fixed order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Readiness {
    pub checks: Vec<Check>,
}

impl Readiness {
    /// The checks whose status is [`Status::Fail`] (not the warnings).
    pub fn failed(&self) -> Vec<&Check> {
        self.checks
            .iter()
            .filter(|check| check.status == Status::Fail)
            .collect()
    }

    /// The check with this id.
    pub fn get(&self, id: &str) -> Option<&Check> {
        self.checks.iter().find(|check| check.id == id)
    }

    /// Whether every one of `ids` is a check that passed (a warning does not pass; an unknown
    /// id does not either).
    pub fn passes(&self, ids: &[&str]) -> bool {
        ids.iter().all(|id| {
            self.get(id)
                .is_some_and(|check| check.status == Status::Pass)
        })
    }
}

/// Runs every check against the node under `root`, read-only.
pub fn assess(root: &Path) -> Result<Readiness, RtError> {
    match std::fs::metadata(root) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(RtError::Root {
                path: root.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
            })
        }
        Err(source) => {
            return Err(RtError::Root {
                path: root.to_path_buf(),
                source,
            })
        }
    }
    let checks = checks::run(&read::Root::new(root))?;
    for check in &checks {
        tracing::debug!(id = check.id, status = %check.status, title = %check.title, "rt readiness");
    }
    Ok(Readiness { checks })
}

/// The report as aligned text: `STATUS  CHECK  EVIDENCE / REMEDY`, one block per check (its
/// title, then `file: value` lines, then `remedy: ...`).
pub fn render_table(readiness: &Readiness) -> String {
    let id_width = readiness
        .checks
        .iter()
        .map(|check| check.id.len())
        .chain(["CHECK".len()])
        .max()
        .unwrap_or(5);
    let status_width = "STATUS".len();
    let mut out = String::new();
    let mut line = |status: &str, id: &str, text: &str| {
        let row = format!("{status:<status_width$}  {id:<id_width$}  {text}");
        out.push_str(row.trim_end());
        out.push('\n');
    };
    line("STATUS", "CHECK", "EVIDENCE / REMEDY");
    for check in &readiness.checks {
        line(check.status.as_str(), check.id, &one_line(&check.title));
        for evidence in &check.evidence {
            let value = if evidence.value.is_empty() {
                "(empty)".to_string()
            } else {
                one_line(&evidence.value)
            };
            line("", "", &format!("  {}: {value}", evidence.file));
        }
        if let Some(remedy) = &check.remedy {
            line("", "", &format!("  remedy: {}", one_line(remedy)));
        }
    }
    out
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
