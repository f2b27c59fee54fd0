//! Bringing the host to what the claims want, with every baseline journaled before the first
//! write, and written back once no claim wants the file.

use std::{
    collections::BTreeMap,
    io,
    path::{Path, PathBuf},
};

use serde::Serialize;

use crate::{
    boot_id, desired,
    host::{layout, SMP_AFFINITY_LIST},
    targets, Claim, Host, TuningError, IRQBALANCE_CONFIG,
};

/// Persistence of baselines, implemented by the daemon over its store. A baseline is recorded
/// BEFORE the first write to a file and forgotten only after the baseline has been written back.
///
/// Paths are relative to the host root, as [`targets`] names them. `record` and `forget` must be
/// durable when they return: [`reconcile`]'s crash safety rests on it.
pub trait Journal {
    /// Every recorded baseline.
    fn baselines(&self) -> Result<BTreeMap<PathBuf, String>, TuningError>;
    /// Records `path`'s baseline (only called when none is recorded).
    fn record(&mut self, path: &Path, baseline: &str) -> Result<(), TuningError>;
    /// Drops `path`'s baseline (it has been written back, or the file is gone).
    fn forget(&mut self, path: &Path) -> Result<(), TuningError>;
}

/// An in-memory [`Journal`] (for tests, and reusable by the daemon's tests).
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

/// What one [`reconcile`] did, by path relative to the host root.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Files written towards their target, with the value written.
    pub written: Vec<(PathBuf, String)>,
    /// Files written back to their baseline, with the baseline.
    pub restored: Vec<(PathBuf, String)>,
    /// Files left as they are, and why (an IRQ the kernel refuses to move, a file gone).
    pub skipped: Vec<(PathBuf, String)>,
    /// Whether the irqbalance configuration was written or restored: irqbalance reads it only
    /// at start, so the daemon restarts it (CRI-O: `systemctl restart irqbalance` where the
    /// service is enabled, else `IRQBALANCE_BANNED_CPUS=<mask> irqbalance --oneshot`).
    pub irqbalance_changed: bool,
}

impl Report {
    /// Whether nothing was written, restored or skipped.
    pub fn is_empty(&self) -> bool {
        self.written.is_empty() && self.restored.is_empty() && self.skipped.is_empty()
    }

    fn changed(&mut self, path: &Path) {
        self.irqbalance_changed |= path == Path::new(IRQBALANCE_CONFIG);
    }

    fn skip(&mut self, path: &Path, why: String) {
        tracing::warn!(path = %path.display(), why, "host tuning: file left as it is");
        self.skipped.push((path.to_path_buf(), why));
    }
}

/// How a file is read and written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `proc/irq/<n>/smp_affinity_list`: the kernel may refuse it, and that is not fatal.
    Irq,
    /// The irqbalance configuration: kept byte for byte, baseline included.
    Config,
    /// Any other procfs/sysfs value: compared trimmed, written with a newline (as `echo` does).
    Kernel,
}

impl Kind {
    fn of(path: &Path) -> Kind {
        if path == Path::new(IRQBALANCE_CONFIG) {
            Kind::Config
        } else if path.starts_with("proc/irq")
            && path.file_name() == Some(SMP_AFFINITY_LIST.as_ref())
        {
            Kind::Irq
        } else {
            Kind::Kernel
        }
    }

    fn normalize(self, text: String) -> String {
        match self {
            Kind::Config => text,
            Kind::Irq | Kind::Kernel => text.trim().to_string(),
        }
    }

    fn on_disk(self, value: &str) -> String {
        match self {
            Kind::Config => value.to_string(),
            Kind::Irq | Kind::Kernel => format!("{value}\n"),
        }
    }

    /// Whether a failure on this file is the kernel refusing one IRQ rather than a broken host:
    /// EIO for a managed IRQ (or one whose chip cannot move it), EINVAL for a mask it cannot take,
    /// ENOSPC where the target CPUs have no vectors left, ENOENT for an IRQ freed meanwhile.
    fn tolerates(self, err: &io::Error) -> bool {
        // EPERM: an IRQ whose affinity user space may not set (the timer's IRQ 0 on a PREEMPT_RT
        // kernel, seen on the test node); EACCES stays an error (the file itself is not ours).
        const EPERM: i32 = 1;
        const EIO: i32 = 5;
        const EINVAL: i32 = 22;
        const ENOSPC: i32 = 28;
        self == Kind::Irq
            && (err.kind() == io::ErrorKind::NotFound
                || matches!(err.raw_os_error(), Some(EPERM | EIO | EINVAL | ENOSPC)))
    }
}

/// Brings the host to what `claims` want: for each target file, record its baseline (current
/// content, trimmed; the irqbalance file byte for byte) if the journal has none, then write
/// [`desired`] if it differs from the current content; for each file the journal has but no
/// claim targets any more, write the baseline back (where it differs) and forget it.
///
/// Idempotent and crash-safe: a baseline is journaled before the first write and forgotten after
/// the write-back, and targets are computed from baselines, not from what is there, so after a
/// kill between any two writes, calling it again with the same claims (or none) ends in the
/// right state. Callers serialize calls (one host, one reconcile at a time).
///
/// Per-IRQ failures (the kernel refuses managed IRQs with EIO/EINVAL, and IRQs user space may not
/// move with EPERM) are logged and reported in
/// [`Report::skipped`], not fatal; so is a journaled file that no longer exists. Other I/O errors
/// are errors naming the file. The boot id is not its concern: see [`forget_if_rebooted`].
///
/// While a file is targeted, ingot owns it: an edit made to it meanwhile is undone by the next
/// call, and the write-back restores the baseline as it was recorded.
pub fn reconcile(
    host: &Host,
    claims: &[Claim],
    journal: &mut dyn Journal,
) -> Result<Report, TuningError> {
    let mut layout = layout(host)?;
    for claim in claims {
        for address in claim.tuning.device_irqs.iter().flat_map(|d| &d.devices) {
            layout
                .msi_irqs
                .insert(address.clone(), crate::host::msi_irqs(host, address));
        }
    }
    let wanted = targets(&layout, claims);
    let mut baselines = journal.baselines()?;
    // Kernel-file baselines compare trimmed, whoever recorded them.
    for (path, baseline) in baselines.iter_mut() {
        *baseline = Kind::of(path).normalize(std::mem::take(baseline));
    }
    let mut report = Report::default();

    for (path, target) in &wanted {
        let kind = Kind::of(path);
        let current = match host.read(path) {
            Ok(text) => kind.normalize(text),
            Err(err) if kind.tolerates(&err) => {
                report.skip(path, format!("cannot read it: {err}"));
                continue;
            }
            Err(source) => {
                return Err(TuningError::Read {
                    path: host.path(path),
                    source,
                })
            }
        };
        let baseline = match baselines.get(path) {
            Some(baseline) => baseline.clone(),
            None => {
                journal.record(path, &current)?;
                baselines.insert(path.clone(), current.clone());
                current.clone()
            }
        };
        let value =
            desired(target, &baseline, layout.cpus).map_err(|err| TuningError::Malformed {
                path: host.path(path),
                reason: format!("its baseline: {err}"),
            })?;
        if value == current {
            continue;
        }
        match host.write(path, &kind.on_disk(&value)) {
            Ok(()) => {
                tracing::debug!(path = %path.display(), value, "host tuning: written");
                report.changed(path);
                report.written.push((path.clone(), value));
            }
            Err(err) if kind.tolerates(&err) => {
                report.skip(path, format!("the kernel refused {value:?}: {err}"));
            }
            Err(source) => {
                return Err(TuningError::Write {
                    path: host.path(path),
                    source,
                })
            }
        }
    }

    for (path, baseline) in baselines {
        if wanted.contains_key(&path) {
            continue;
        }
        let kind = Kind::of(&path);
        let current = match host.read(&path) {
            Ok(text) => kind.normalize(text),
            Err(err) if err.kind() == io::ErrorKind::NotFound || kind.tolerates(&err) => {
                journal.forget(&path)?;
                report.skip(&path, format!("nothing to restore: {err}"));
                continue;
            }
            Err(source) => {
                return Err(TuningError::Read {
                    path: host.path(&path),
                    source,
                })
            }
        };
        if current != baseline {
            match host.write(&path, &kind.on_disk(&baseline)) {
                Ok(()) => {
                    tracing::debug!(path = %path.display(), baseline, "host tuning: restored");
                    report.changed(&path);
                    report.restored.push((path.clone(), baseline));
                }
                Err(err) if kind.tolerates(&err) => {
                    report.skip(&path, format!("the kernel refused the baseline: {err}"));
                }
                Err(source) => {
                    return Err(TuningError::Write {
                        path: host.path(&path),
                        source,
                    })
                }
            }
        }
        journal.forget(&path)?;
    }
    Ok(report)
}

/// A node reboot resets every tuned file: if `recorded_boot_id` differs from the host's
/// `proc/sys/kernel/random/boot_id`, the journal's baselines are dropped without writing (CRI-O
/// instead guesses from `default_smp_affinity` being all CPUs). Returns whether it dropped them,
/// that is whether the boot id changed (the journal may have been empty).
///
/// `None` (no boot id recorded yet) drops nothing: baselines of unknown age are still the best
/// guess of what to restore. The daemon records [`boot_id`] after this call.
pub fn forget_if_rebooted(
    host: &Host,
    recorded_boot_id: Option<&str>,
    journal: &mut dyn Journal,
) -> Result<bool, TuningError> {
    let Some(recorded) = recorded_boot_id else {
        return Ok(false);
    };
    let current = boot_id(host)?;
    if recorded.trim() == current {
        return Ok(false);
    }
    let baselines = journal.baselines()?;
    tracing::info!(
        recorded = recorded.trim(),
        current,
        files = baselines.len(),
        "the node rebooted: dropping host tuning baselines without writing them"
    );
    for path in baselines.keys() {
        journal.forget(path)?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use std::sync::{atomic::AtomicUsize, Arc};

    use super::*;
    use crate::{
        fixture::{Fixture, IRQBALANCE},
        host::testing,
        CStates, CpuSet, IrqMode, Tuning, DEFAULT_SMP_AFFINITY,
    };

    const CPU: &str = "sys/devices/system/cpu";

    fn claim(owner: &str, cpus: &str, tuning: Tuning) -> Claim {
        Claim {
            owner: owner.to_string(),
            cpus: CpuSet::parse(cpus).expect("valid"),
            tuning,
        }
    }

    /// "a" on CPU 1: IRQs off, C-states off, performance. "b" on CPUs 2-3: IRQs off, C-states
    /// capped at 10us, powersave. "c" on CPU 0: cgroup-only tuning, no host file.
    fn claims() -> Vec<Claim> {
        vec![
            claim(
                "a",
                "1",
                Tuning {
                    irq: Some(IrqMode::Disable),
                    c_states: Some(CStates::Disable),
                    governor: Some("performance".to_string()),
                    ..Tuning::default()
                },
            ),
            claim(
                "b",
                "2-3",
                Tuning {
                    irq: Some(IrqMode::Disable),
                    c_states: Some(CStates::MaxLatencyUs(10)),
                    governor: Some("powersave".to_string()),
                    ..Tuning::default()
                },
            ),
            claim(
                "c",
                "0",
                Tuning {
                    load_balancing_off: true,
                    quota_off: true,
                    ..Tuning::default()
                },
            ),
        ]
    }

    /// A journal whose writes spend the host's kill budget.
    struct CrashJournal {
        inner: MemoryJournal,
        budget: Option<Arc<AtomicUsize>>,
    }

    impl Journal for CrashJournal {
        fn baselines(&self) -> Result<BTreeMap<PathBuf, String>, TuningError> {
            self.inner.baselines()
        }
        fn record(&mut self, path: &Path, baseline: &str) -> Result<(), TuningError> {
            testing::spend(&self.budget).map_err(TuningError::journal)?;
            self.inner.record(path, baseline)
        }
        fn forget(&mut self, path: &Path) -> Result<(), TuningError> {
            testing::spend(&self.budget).map_err(TuningError::journal)?;
            self.inner.forget(path)
        }
    }

    #[test]
    fn two_claims_then_one_then_none_end_at_the_baseline() {
        let fixture = Fixture::new();
        let host = fixture.host();
        let before = fixture.files();
        let mut journal = MemoryJournal::default();

        let report = reconcile(&host, &claims(), &mut journal).expect("apply");
        assert!(report.skipped.is_empty(), "{report:?}");
        assert!(report.irqbalance_changed);
        assert_eq!(fixture.read(DEFAULT_SMP_AFFINITY), "1");
        for irq in [0, 1, 24, 25] {
            assert_eq!(
                fixture.read(&format!("proc/irq/{irq}/smp_affinity_list")),
                "0"
            );
        }
        assert_eq!(
            fixture.files()[Path::new(IRQBALANCE_CONFIG)],
            IRQBALANCE.replace(
                "\nIRQBALANCE_BANNED_CPUS=\n",
                "\nIRQBALANCE_BANNED_CPUS=0000000e\n"
            )
        );
        assert_eq!(
            fixture.read(&format!("{CPU}/cpu1/power/pm_qos_resume_latency_us")),
            "n/a"
        );
        assert_eq!(
            fixture.read(&format!("{CPU}/cpu2/power/pm_qos_resume_latency_us")),
            "10"
        );
        assert_eq!(
            fixture.read(&format!("{CPU}/cpu1/cpufreq/scaling_governor")),
            "performance"
        );
        assert_eq!(
            fixture.read(&format!("{CPU}/cpu3/cpufreq/scaling_governor")),
            "powersave"
        );
        assert_eq!(
            fixture.read(&format!("{CPU}/cpu0/cpufreq/scaling_governor")),
            "schedutil"
        );
        // 1 mask + 4 IRQs + irqbalance + 3 CPUs x (latency, governor).
        assert_eq!(report.written.len(), 12, "{report:?}");
        assert_eq!(journal.entries.len(), 12);
        assert_eq!(journal.entries[Path::new(IRQBALANCE_CONFIG)], IRQBALANCE);
        assert_eq!(journal.entries[Path::new(DEFAULT_SMP_AFFINITY)], "f");

        // Idempotent.
        let again = reconcile(&host, &claims(), &mut journal).expect("again");
        assert!(again.is_empty(), "{again:?}");

        // "b" leaves: its CPUs take IRQs again, its per-CPU files go back.
        let only_a: Vec<Claim> = claims().into_iter().filter(|c| c.owner != "b").collect();
        let report = reconcile(&host, &only_a, &mut journal).expect("release b");
        assert_eq!(fixture.read(DEFAULT_SMP_AFFINITY), "d");
        assert_eq!(fixture.read("proc/irq/24/smp_affinity_list"), "0,2-3");
        assert!(fixture
            .read(IRQBALANCE_CONFIG)
            .contains("IRQBALANCE_BANNED_CPUS=00000002\n"));
        assert_eq!(
            fixture.read(&format!("{CPU}/cpu2/power/pm_qos_resume_latency_us")),
            "0"
        );
        assert_eq!(
            fixture.read(&format!("{CPU}/cpu3/cpufreq/scaling_governor")),
            "schedutil"
        );
        assert_eq!(
            fixture.read(&format!("{CPU}/cpu1/cpufreq/scaling_governor")),
            "performance"
        );
        assert_eq!(report.restored.len(), 4, "{report:?}");
        assert_eq!(journal.entries.len(), 8);

        let report = reconcile(&host, &[], &mut journal).expect("release all");
        assert!(report.written.is_empty());
        assert!(report.irqbalance_changed);
        assert_eq!(
            fixture.files(),
            before,
            "every file exactly at its baseline"
        );
        assert!(journal.entries.is_empty());
    }

    /// Runs `from` claims to completion, then `to` claims with a kill after `n` writes, for
    /// every `n` until one run completes; after each kill, reconciling again with `to` must give
    /// exactly the uninterrupted result, and then with none exactly the original host.
    fn kill_at_every_write(from: &[Claim], to: &[Claim]) {
        let reference = Fixture::new();
        let original = reference.files();
        let mut journal = MemoryJournal::default();
        reconcile(&reference.host(), from, &mut journal).expect("from");
        reconcile(&reference.host(), to, &mut journal).expect("to");
        let expected_files = reference.files();
        let expected_journal = journal.entries.clone();

        let mut kills = 0;
        for n in 0.. {
            assert!(n < 1000, "reconcile never completed");
            let fixture = Fixture::new();
            let mut host = fixture.host();
            let mut journal = CrashJournal {
                inner: MemoryJournal::default(),
                budget: None,
            };
            reconcile(&host, from, &mut journal).expect("from");

            let budget = Some(Arc::new(AtomicUsize::new(n)));
            host.hooks.budget = budget.clone();
            journal.budget = budget;
            let killed = reconcile(&host, to, &mut journal).is_err();
            host.hooks.budget = None;
            journal.budget = None;

            reconcile(&host, to, &mut journal).expect("after the kill");
            assert_eq!(fixture.files(), expected_files, "kill after {n} writes");
            assert_eq!(
                journal.inner.entries, expected_journal,
                "kill after {n} writes"
            );
            reconcile(&host, &[], &mut journal).expect("release");
            assert_eq!(fixture.files(), original, "kill after {n} writes, released");
            assert!(journal.inner.entries.is_empty(), "kill after {n} writes");
            if !killed {
                break;
            }
            kills += 1;
        }
        assert!(kills > 0, "no write was interrupted");
    }

    #[test]
    fn a_kill_while_applying_is_mended_by_the_next_reconcile() {
        kill_at_every_write(&[], &claims());
    }

    #[test]
    fn a_kill_while_releasing_one_claim_is_mended() {
        let only_a: Vec<Claim> = claims().into_iter().filter(|c| c.owner != "b").collect();
        kill_at_every_write(&claims(), &only_a);
    }

    #[test]
    fn a_kill_while_releasing_everything_is_mended() {
        kill_at_every_write(&claims(), &[]);
    }

    #[test]
    fn a_kill_while_switching_claims_is_mended() {
        let other = vec![claim(
            "d",
            "1-2",
            Tuning {
                irq: Some(IrqMode::Housekeeping),
                governor: Some("performance".to_string()),
                ..Tuning::default()
            },
        )];
        kill_at_every_write(&claims(), &other);
    }

    #[test]
    fn a_managed_irq_is_skipped_and_reported() {
        let fixture = Fixture::new();
        let before = fixture.files();
        let mut host = fixture.host();
        host.hooks
            .refuse
            .insert(PathBuf::from("proc/irq/24/smp_affinity_list"), 5); // EIO
        host.hooks
            .refuse
            .insert(PathBuf::from("proc/irq/25/smp_affinity_list"), 22); // EINVAL
        host.hooks
            .refuse
            .insert(PathBuf::from("proc/irq/1/smp_affinity_list"), 1); // EPERM
        let mut journal = MemoryJournal::default();
        let report = reconcile(&host, &claims(), &mut journal).expect("not fatal");
        let skipped: Vec<&Path> = report.skipped.iter().map(|(p, _)| p.as_path()).collect();
        assert_eq!(
            skipped,
            [
                Path::new("proc/irq/1/smp_affinity_list"),
                Path::new("proc/irq/24/smp_affinity_list"),
                Path::new("proc/irq/25/smp_affinity_list")
            ]
        );
        assert!(report.skipped[0].1.contains("refused"), "{report:?}");
        assert_eq!(fixture.read("proc/irq/24/smp_affinity_list"), "0-3");
        assert_eq!(fixture.read("proc/irq/0/smp_affinity_list"), "0");
        assert_eq!(fixture.read(DEFAULT_SMP_AFFINITY), "1");

        // Released: the refused IRQs were never moved, so nothing to write back.
        let report = reconcile(&host, &[], &mut journal).expect("release");
        assert!(report.skipped.is_empty(), "{report:?}");
        assert_eq!(fixture.files(), before);
        assert!(journal.entries.is_empty());
    }

    #[test]
    fn other_write_errors_are_fatal_and_name_the_file() {
        let fixture = Fixture::new();
        let mut host = fixture.host();
        let governor = format!("{CPU}/cpu2/cpufreq/scaling_governor");
        host.hooks.refuse.insert(PathBuf::from(&governor), 22);
        let mut journal = MemoryJournal::default();
        let err = reconcile(&host, &claims(), &mut journal).expect_err("fatal");
        assert!(matches!(err, TuningError::Write { .. }), "{err}");
        assert!(err.to_string().contains(&governor), "{err}");
        // The host comes back whole once it is writable again.
        host.hooks.refuse.clear();
        reconcile(&host, &[], &mut journal).expect("release");
        assert_eq!(fixture.files(), Fixture::new().files());
        assert!(journal.entries.is_empty());

        // EACCES on an IRQ is not the kernel refusing one IRQ: fatal too.
        host.hooks
            .refuse
            .insert(PathBuf::from("proc/irq/0/smp_affinity_list"), 13);
        let err = reconcile(&host, &claims(), &mut journal).expect_err("fatal");
        assert!(
            err.to_string().contains("proc/irq/0/smp_affinity_list"),
            "{err}"
        );
        host.hooks.refuse.clear();
        reconcile(&host, &[], &mut journal).expect("release");
        assert_eq!(fixture.files(), Fixture::new().files());
    }

    #[test]
    fn irqs_that_come_and_go() {
        let fixture = Fixture::new();
        let host = fixture.host();
        let mut journal = MemoryJournal::default();
        reconcile(&host, &claims(), &mut journal).expect("apply");
        // A device is removed and another probed while the pod runs.
        std::fs::remove_dir_all(fixture.root().join("proc/irq/25")).expect("rm");
        fixture.write("proc/irq/40/smp_affinity_list", "2-3\n");
        fixture.write("proc/irq/41/smp_affinity_list", "0-3\n");
        let report = reconcile(&host, &claims(), &mut journal).expect("again");
        assert_eq!(
            report.written,
            vec![(
                PathBuf::from("proc/irq/41/smp_affinity_list"),
                "0".to_string()
            )],
            "a new IRQ moves; one pinned to claimed CPUs only stays where it is"
        );
        assert_eq!(report.skipped.len(), 1, "{report:?}");
        assert!(journal
            .entries
            .contains_key(Path::new("proc/irq/40/smp_affinity_list")));
        assert!(!journal
            .entries
            .contains_key(Path::new("proc/irq/25/smp_affinity_list")));
        reconcile(&host, &[], &mut journal).expect("release");
        assert!(journal.entries.is_empty());
        assert_eq!(fixture.read("proc/irq/40/smp_affinity_list"), "2-3");
        assert_eq!(fixture.read("proc/irq/41/smp_affinity_list"), "0-3");
    }

    #[test]
    fn a_malformed_baseline_names_the_file() {
        let fixture = Fixture::new();
        fixture.write(IRQBALANCE_CONFIG, "IRQBALANCE_BANNED_CPUS=\"not-hex\"\n");
        let mut journal = MemoryJournal::default();
        let err = reconcile(&fixture.host(), &claims(), &mut journal).expect_err("malformed");
        assert!(err.to_string().contains(IRQBALANCE_CONFIG), "{err}");
        assert!(err.to_string().contains("not-hex"), "{err}");
        reconcile(&fixture.host(), &[], &mut journal).expect("release");
        assert!(journal.entries.is_empty());
    }

    #[test]
    fn forget_if_rebooted_drops_baselines_unwritten() {
        let fixture = Fixture::new();
        let host = fixture.host();
        let mut journal = MemoryJournal::default();
        reconcile(&host, &claims(), &mut journal).expect("apply");
        let tuned = fixture.files();
        assert!(!forget_if_rebooted(&host, None, &mut journal).expect("unknown"));
        assert!(!forget_if_rebooted(&host, Some("boot-1"), &mut journal).expect("same"));
        assert!(!forget_if_rebooted(&host, Some("boot-1\n"), &mut journal).expect("same"));
        assert_eq!(journal.entries.len(), 12);

        // The node reboots: the kernel files are back to boot defaults, the journal is stale.
        fixture.write(BOOT_ID_PATH, "boot-2\n");
        assert!(forget_if_rebooted(&host, Some("boot-1"), &mut journal).expect("rebooted"));
        assert!(journal.entries.is_empty());
        let mut after = fixture.files();
        after.insert(PathBuf::from(BOOT_ID_PATH), "boot-1\n".to_string());
        assert_eq!(after, tuned, "nothing written");
        let report = reconcile(&host, &[], &mut journal).expect("nothing to restore");
        assert!(report.is_empty(), "{report:?}");
    }

    const BOOT_ID_PATH: &str = crate::BOOT_ID;
}
