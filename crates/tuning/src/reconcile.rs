//! Bringing the host to what the claims want, each file's baseline journaled before its first
//! write and written back once no claim wants the file.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::Serialize;

use crate::{
    desired, layout, targets, Claim, Host, Target, TuningError, BOOT_ID, IRQBALANCE_CONFIG,
};

/// Where baselines persist (the daemon's store). `record` is durable before it returns.
/// Baselines are the files' contents as read, restored byte for byte.
pub trait Journal {
    fn baselines(&self) -> Result<BTreeMap<PathBuf, String>, TuningError>;
    fn record(&mut self, path: &Path, baseline: &str) -> Result<(), TuningError>;
    fn forget(&mut self, path: &Path) -> Result<(), TuningError>;
}

/// A journal in memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryJournal {
    pub entries: BTreeMap<PathBuf, String>,
}

impl Journal for MemoryJournal {
    fn baselines(&self) -> Result<BTreeMap<PathBuf, String>, TuningError> {
        Ok(self.entries.clone())
    }

    fn record(&mut self, path: &Path, baseline: &str) -> Result<(), TuningError> {
        self.entries
            .insert(path.to_path_buf(), baseline.to_string());
        Ok(())
    }

    fn forget(&mut self, path: &Path) -> Result<(), TuningError> {
        self.entries.remove(path);
        Ok(())
    }
}

/// What a reconcile did.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub written: Vec<(PathBuf, String)>,
    pub restored: Vec<(PathBuf, String)>,
    /// Files left as they were, and why (an IRQ the kernel manages itself refuses affinity).
    pub skipped: Vec<(PathBuf, String)>,
    /// The irqbalance config changed: irqbalance must be restarted to read it.
    pub irqbalance_changed: bool,
}

/// Files whose writes the kernel may refuse without anything being wrong.
fn tolerated(path: &Path) -> bool {
    path.starts_with("proc/irq") && path.ends_with("smp_affinity_list")
}

/// A value as written, with the newline `echo` gives it (the kernel's parsers take it, and a
/// text file reads back as it was).
fn on_disk(value: &str) -> String {
    format!("{value}\n")
}

/// Brings the host to what `claims` want, then puts back every journaled file no claim wants.
/// Idempotent: after a crash between any two writes, running it again converges.
pub fn reconcile(
    host: &Host,
    claims: &[Claim],
    journal: &mut dyn Journal,
) -> Result<Report, TuningError> {
    let layout = layout(host)?;
    let wanted: BTreeMap<PathBuf, Target> = targets(&layout, claims);
    let mut baselines = journal.baselines()?;
    let mut report = Report::default();
    for (relative, target) in &wanted {
        let path = host.path(relative);
        let current = match std::fs::read_to_string(&path) {
            Ok(current) => current,
            Err(err) if tolerated(relative) => {
                report.skipped.push((relative.clone(), err.to_string()));
                continue;
            }
            Err(source) => return Err(TuningError::Read { path, source }),
        };
        let baseline = match baselines.get(relative) {
            Some(baseline) => baseline.clone(),
            None => {
                journal.record(relative, &current)?;
                baselines.insert(relative.clone(), current.clone());
                current.clone()
            }
        };
        let value = desired(target, baseline.trim_end(), layout.cpus).map_err(|err| match err {
            TuningError::InvalidContent { reason, .. } => TuningError::Malformed {
                path: path.clone(),
                reason,
            },
            other => other,
        })?;
        if value == current.trim_end() {
            continue;
        }
        crash_point()?;
        match std::fs::write(&path, on_disk(&value)) {
            Ok(()) => {
                report.irqbalance_changed |= relative == Path::new(IRQBALANCE_CONFIG);
                report.written.push((relative.clone(), value));
            }
            Err(err) if tolerated(relative) => {
                tracing::debug!(file = %path.display(), error = %err, "IRQ affinity refused");
                report.skipped.push((relative.clone(), err.to_string()));
            }
            Err(source) => return Err(TuningError::Write { path, source }),
        }
    }
    for (relative, baseline) in &baselines {
        if wanted.contains_key(relative) {
            continue;
        }
        let path = host.path(relative);
        match std::fs::read_to_string(&path) {
            Ok(current) if current == *baseline => {}
            Ok(_) => match crash_point().and_then(|()| {
                std::fs::write(&path, baseline).map_err(|source| TuningError::Write {
                    path: path.clone(),
                    source,
                })
            }) {
                Ok(()) => {
                    report.irqbalance_changed |= relative == Path::new(IRQBALANCE_CONFIG);
                    report.restored.push((relative.clone(), baseline.clone()));
                }
                Err(TuningError::Write { source, .. }) if tolerated(relative) => {
                    report.skipped.push((relative.clone(), source.to_string()));
                }
                Err(err) => return Err(err),
            },
            // The file is gone (an IRQ freed): nothing to put back.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(TuningError::Read { path, source }),
        }
        journal.forget(relative)?;
    }
    Ok(report)
}

#[cfg(not(test))]
fn crash_point() -> Result<(), TuningError> {
    Ok(())
}

#[cfg(test)]
thread_local! {
    /// Writes allowed before a simulated kill (None: no limit).
    static WRITES_LEFT: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// In tests, where a kill between two writes is simulated.
#[cfg(test)]
fn crash_point() -> Result<(), TuningError> {
    WRITES_LEFT.with(|left| match left.get() {
        Some(0) => Err(TuningError::journal("simulated kill")),
        Some(n) => {
            left.set(Some(n - 1));
            Ok(())
        }
        None => Ok(()),
    })
}

/// Drops the journal's baselines without writing when the host booted since they were
/// recorded (`recorded_boot_id` differs from the host's): a reboot reset every tuned file.
pub fn forget_if_rebooted(
    host: &Host,
    recorded_boot_id: Option<&str>,
    journal: &mut dyn Journal,
) -> Result<bool, TuningError> {
    let Some(recorded) = recorded_boot_id else {
        return Ok(false);
    };
    let current = crate::boot_id(host)?;
    if current == recorded.trim() {
        return Ok(false);
    }
    for path in journal.baselines()?.keys() {
        journal.forget(path)?;
    }
    tracing::info!(boot_id = %BOOT_ID, "the host rebooted since the tuning baselines were recorded");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{fixture::Fixture, CStates, CpuSet, IrqMode, Tuning};

    fn claim(owner: &str, cpus: &str, tuning: Tuning) -> Claim {
        Claim {
            owner: owner.into(),
            cpus: CpuSet::parse(cpus).expect("cpus"),
            tuning,
        }
    }

    fn claims() -> Vec<Claim> {
        vec![
            claim(
                "a",
                "1",
                Tuning {
                    irq: Some(IrqMode::Disable),
                    c_states: Some(CStates::Disable),
                    ..Default::default()
                },
            ),
            claim(
                "b",
                "2-3",
                Tuning {
                    irq: Some(IrqMode::Disable),
                    governor: Some("performance".into()),
                    ..Default::default()
                },
            ),
        ]
    }

    #[test]
    fn two_claims_then_one_then_none_end_at_the_baseline() {
        let fixture = Fixture::new();
        let before = fixture.files();
        let host = Host::new(fixture.root());
        let mut journal = MemoryJournal::default();
        let report = reconcile(&host, &claims(), &mut journal).expect("two");
        assert!(report.irqbalance_changed);
        assert_eq!(fixture.read("proc/irq/default_smp_affinity"), "1");
        assert_eq!(fixture.read("proc/irq/24/smp_affinity_list"), "0");
        assert_eq!(
            fixture.read("etc/sysconfig/irqbalance"),
            "# settings\nIRQBALANCE_ARGS=\"\"\nIRQBALANCE_BANNED_CPUS=0000000e"
        );
        assert_eq!(
            fixture.read("sys/devices/system/cpu/cpu1/power/pm_qos_resume_latency_us"),
            "n/a"
        );
        assert_eq!(
            fixture.read("sys/devices/system/cpu/cpu3/cpufreq/scaling_governor"),
            "performance"
        );
        assert_eq!(
            fixture.read("sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
            "schedutil"
        );
        // Again: nothing more to write.
        assert!(reconcile(&host, &claims(), &mut journal)
            .expect("again")
            .written
            .is_empty());

        let one = &claims()[..1];
        reconcile(&host, one, &mut journal).expect("one");
        assert_eq!(fixture.read("proc/irq/default_smp_affinity"), "d");
        assert_eq!(fixture.read("proc/irq/24/smp_affinity_list"), "0,2-3");
        assert_eq!(
            fixture.read("sys/devices/system/cpu/cpu3/cpufreq/scaling_governor"),
            "schedutil"
        );

        reconcile(&host, &[], &mut journal).expect("none");
        assert_eq!(fixture.files(), before);
        assert!(journal.entries.is_empty(), "{:?}", journal.entries);
    }

    /// A kill before each write in turn, then a reconcile with the same claims and one with
    /// none: always the claims' state, then always the baseline.
    #[test]
    fn a_kill_between_any_two_writes_is_mended_by_the_next_reconcile() {
        let reference = Fixture::new();
        let mut journal = MemoryJournal::default();
        reconcile(&Host::new(reference.root()), &claims(), &mut journal).expect("reference");
        let tuned = reference.files();
        let mut kills = 0;
        for allowed in 0.. {
            let fixture = Fixture::new();
            let before = fixture.files();
            let host = Host::new(fixture.root());
            let mut journal = MemoryJournal::default();
            WRITES_LEFT.with(|left| left.set(Some(allowed)));
            let first = reconcile(&host, &claims(), &mut journal);
            WRITES_LEFT.with(|left| left.set(None));
            if first.is_ok() {
                break;
            }
            kills += 1;
            reconcile(&host, &claims(), &mut journal).expect("after the kill");
            assert_eq!(fixture.files(), tuned, "killed after {allowed} writes");
            // And a kill while restoring.
            WRITES_LEFT.with(|left| left.set(Some(allowed / 2)));
            let _ = reconcile(&host, &[], &mut journal);
            WRITES_LEFT.with(|left| left.set(None));
            reconcile(&host, &[], &mut journal).expect("restore");
            assert_eq!(fixture.files(), before, "restore after a kill at {allowed}");
            assert!(journal.entries.is_empty());
        }
        // The default mask, four IRQs, irqbalance, CPU 1's C-states, CPU 2's and 3's governors.
        assert_eq!(kills, 9, "a kill before each of the nine writes");
    }

    #[test]
    fn an_irq_the_kernel_manages_is_skipped_and_reported() {
        let fixture = Fixture::new();
        let managed = fixture.root().join("proc/irq/25/smp_affinity_list");
        std::fs::remove_file(&managed).expect("rm");
        std::fs::create_dir(&managed).expect("a directory cannot be written as a file");
        let host = Host::new(fixture.root());
        let mut journal = MemoryJournal::default();
        let report = reconcile(&host, &claims(), &mut journal).expect("reconcile");
        assert!(
            report
                .skipped
                .iter()
                .any(|(p, _)| p.ends_with("25/smp_affinity_list")),
            "{report:?}"
        );
        assert_eq!(fixture.read("proc/irq/24/smp_affinity_list"), "0");
    }

    #[test]
    fn a_reboot_drops_the_baselines_unwritten() {
        let fixture = Fixture::new();
        let host = Host::new(fixture.root());
        let mut journal = MemoryJournal::default();
        reconcile(&host, &claims(), &mut journal).expect("tuned");
        assert!(!forget_if_rebooted(&host, Some("boot-1"), &mut journal).expect("same boot"));
        assert!(!journal.entries.is_empty());
        std::fs::write(
            fixture.root().join("proc/sys/kernel/random/boot_id"),
            "boot-2\n",
        )
        .expect("boot");
        assert!(forget_if_rebooted(&host, Some("boot-1"), &mut journal).expect("rebooted"));
        assert!(journal.entries.is_empty());
        assert_eq!(crate::boot_id(&host).expect("boot id"), "boot-2");
    }

    #[test]
    fn check_names_the_cpu_and_its_governors() {
        let fixture = Fixture::new();
        let host = Host::new(fixture.root());
        let wanted = claim(
            "a",
            "2",
            Tuning {
                governor: Some("ondemand".into()),
                ..Default::default()
            },
        );
        let err = crate::check(&host, &wanted)
            .expect_err("not offered")
            .to_string();
        assert!(err.contains("CPU 2"), "{err}");
        assert!(err.contains("performance schedutil powersave"), "{err}");
        crate::check(&host, &claims()[1]).expect("offered");
        std::fs::remove_file(
            fixture
                .root()
                .join("sys/devices/system/cpu/cpu1/power/pm_qos_resume_latency_us"),
        )
        .expect("rm");
        let err = crate::check(&host, &claims()[0]).expect_err("no resume latency file");
        assert!(
            err.to_string().contains("pm_qos_resume_latency_us"),
            "{err}"
        );
    }
}
