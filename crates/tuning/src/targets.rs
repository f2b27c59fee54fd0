//! What each host file should hold for a set of claims, as a function of its baseline. Pure: no
//! I/O here; [`crate::reconcile`] reads and writes.

use std::{collections::BTreeMap, path::PathBuf};

use ingot_topology::CpuSet;
use serde::{Deserialize, Serialize};

use crate::{
    host::{cpu_file, irq_file, GOVERNOR, RESUME_LATENCY},
    mask, IrqMode, Layout, Steer, Tuning, TuningError, DEFAULT_SMP_AFFINITY, IRQBALANCE_CONFIG,
};

/// One container's claim on host state: its exclusive CPUs and what it asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The container id.
    pub owner: String,
    /// Its exclusive CPUs (not the shared pool).
    pub cpus: CpuSet,
    pub tuning: Tuning,
}

/// What a file should hold, as a function of its baseline (see [`desired`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    /// A hex CPU mask (`default_smp_affinity` format, comma-separated 32-bit groups) with these
    /// CPUs cleared; the baseline where that would leave no CPU (the kernel refuses an empty
    /// default affinity).
    MaskCleared(CpuSet),
    /// A CPU list (`smp_affinity_list`) with these CPUs removed; the baseline where that would
    /// leave it empty (an IRQ a driver pinned to a claimed CPU stays there).
    ListCleared(CpuSet),
    /// A fixed value.
    Value(String),
    /// The irqbalance configuration with `IRQBALANCE_BANNED_CPUS=` set to the baseline's banned
    /// CPUs OR these, the rest of the file kept.
    IrqbalanceBanned(CpuSet),
}

/// The CPUs of `claim` that keep taking interrupts: under
/// [`IrqMode::Housekeeping`], its first CPU and those of that CPU's thread siblings the claim
/// has (CRI-O 1.34+ `getHousekeepingCPUs`: the siblings of the first container CPU, intersected
/// with the container's CPUs; a CPU without `thread_siblings_list` is alone). Empty otherwise.
/// The daemon may pass them to the container (CRI-O sets `OPENSHIFT_HOUSEKEEPING_CPUS`).
pub fn housekeeping_cpus(layout: &Layout, claim: &Claim) -> CpuSet {
    if claim.tuning.irq != Some(IrqMode::Housekeeping) {
        return CpuSet::new();
    }
    let Some(first) = claim.cpus.first() else {
        return CpuSet::new();
    };
    let mut keep = layout
        .thread_siblings
        .get(&first)
        .map(|siblings| claim.cpus.intersection(siblings))
        .unwrap_or_default();
    keep.insert(first);
    keep
}

/// The CPUs interrupts must leave for `claim`: all its CPUs under [`IrqMode::Disable`], all but
/// the [`housekeeping_cpus`] under [`IrqMode::Housekeeping`], none without IRQ tuning.
pub fn irq_cpus(layout: &Layout, claim: &Claim) -> CpuSet {
    match claim.tuning.irq {
        None => CpuSet::new(),
        Some(_) => claim.cpus.difference(&housekeeping_cpus(layout, claim)),
    }
}

/// What the host files should hold for this set of claims, by path relative to the host root.
///
/// * IRQ tuning (the union of every claim's [`irq_cpus`]): `proc/irq/default_smp_affinity`
///   clears them (CRI-O does the same); every `proc/irq/<n>/smp_affinity_list` drops them
///   (beyond CRI-O, which leaves running IRQs to irqbalance: without irqbalance they would stay);
///   `etc/sysconfig/irqbalance`, where it exists, bans them plus [`Layout::isolated`], since
///   setting a ban switches off irqbalance's own ban of isolated and nohz_full CPUs.
/// * C-states: `cpu<N>/power/pm_qos_resume_latency_us` of each claimed CPU gets
///   [`crate::CStates::resume_latency`].
/// * Governor: `cpu<N>/cpufreq/scaling_governor` of each claimed CPU gets the governor.
///
/// Where two claims hold the same CPU (exclusive CPUs never overlap in practice) its per-CPU
/// files follow the claim whose owner sorts last, whatever the order of `claims`.
/// `load_balancing_off`, `quota_off` and `shared_cpus` are cgroup settings: no file here.
pub fn targets(host_layout: &Layout, claims: &[Claim]) -> BTreeMap<PathBuf, Target> {
    let mut out = BTreeMap::new();
    let irq = claims.iter().fold(CpuSet::new(), |all, claim| {
        all.union(&irq_cpus(host_layout, claim))
    });
    if !irq.is_empty() {
        out.insert(
            PathBuf::from(DEFAULT_SMP_AFFINITY),
            Target::MaskCleared(irq.clone()),
        );
        for number in &host_layout.irqs {
            out.insert(irq_file(*number), Target::ListCleared(irq.clone()));
        }
        if host_layout.irqbalance_config {
            out.insert(
                PathBuf::from(IRQBALANCE_CONFIG),
                Target::IrqbalanceBanned(irq.union(&host_layout.isolated)),
            );
        }
    }
    let mut ordered: Vec<&Claim> = claims.iter().collect();
    ordered.sort_by(|a, b| a.owner.cmp(&b.owner));
    // A container's own devices' interrupts: onto its CPUs, or off every claimed CPU. This wins
    // over the IRQ load balancing above for those interrupts.
    let claimed = claims
        .iter()
        .fold(CpuSet::new(), |all, claim| all.union(&claim.cpus));
    for claim in &ordered {
        let Some(device_irqs) = &claim.tuning.device_irqs else {
            continue;
        };
        let target = match device_irqs.steer {
            Steer::OnCpus => Target::Value(claim.cpus.to_string()),
            Steer::OffCpus => Target::ListCleared(claimed.union(&irq)),
        };
        for irq_number in device_irqs
            .devices
            .iter()
            .filter_map(|address| host_layout.msi_irqs.get(address))
            .flatten()
            .filter(|n| host_layout.irqs.contains(n))
        {
            out.insert(irq_file(*irq_number), target.clone());
        }
    }
    for claim in ordered {
        for cpu in claim.cpus.iter() {
            if let Some(c_states) = &claim.tuning.c_states {
                out.insert(
                    cpu_file(cpu, RESUME_LATENCY),
                    Target::Value(c_states.resume_latency()),
                );
            }
            if let Some(governor) = &claim.tuning.governor {
                out.insert(cpu_file(cpu, GOVERNOR), Target::Value(governor.clone()));
            }
        }
    }
    out
}

fn invalid(content: &str, reason: impl Into<String>) -> TuningError {
    TuningError::InvalidContent {
        content: content.to_string(),
        reason: reason.into(),
    }
}

/// The width in bits of a kernel-printed mask (`f` → 4, `ff,ffffffff` → 40).
fn printed_width(mask: &str) -> usize {
    let groups: Vec<&str> = mask.trim().split(',').collect();
    let head = groups.first().map_or(0, |group| group.trim().len() * 4);
    (groups.len().saturating_sub(1)) * 32 + head
}

/// What a file with `baseline` should hold for `target`. Pure. `total_cpus` is
/// [`Layout::cpus`], the width the kernel prints masks in (0: the baseline's own width).
/// Where the target changes nothing, the baseline comes back unchanged, byte for byte.
///
/// Masks come out as the kernel prints them (`c`, `00000000,00000003`), so that a file already
/// at its target reads back equal and is not written again; the irqbalance ban in CRI-O's
/// full 8-digit groups.
pub fn desired(target: &Target, baseline: &str, total_cpus: usize) -> Result<String, TuningError> {
    match target {
        Target::Value(value) => Ok(value.clone()),
        Target::MaskCleared(cpus) => {
            let before = mask::parse_mask(baseline).map_err(|reason| invalid(baseline, reason))?;
            let after = before.difference(cpus);
            if after == before || after.is_empty() {
                return Ok(baseline.to_string());
            }
            let width = if total_cpus > 0 {
                total_cpus
            } else {
                printed_width(baseline)
            };
            Ok(mask::format_mask(&after, width))
        }
        Target::ListCleared(cpus) => {
            let before =
                CpuSet::parse(baseline).map_err(|err| invalid(baseline, err.to_string()))?;
            let after = before.difference(cpus);
            if after == before || after.is_empty() {
                return Ok(baseline.to_string());
            }
            Ok(after.to_string())
        }
        Target::IrqbalanceBanned(cpus) => mask::set_irqbalance_banned(baseline, cpus, total_cpus)
            .map_err(|reason| invalid(baseline, reason)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CStates;

    fn set(list: &str) -> CpuSet {
        CpuSet::parse(list).expect("valid list")
    }

    fn claim(owner: &str, cpus: &str, tuning: Tuning) -> Claim {
        Claim {
            owner: owner.to_string(),
            cpus: set(cpus),
            tuning,
        }
    }

    fn layout() -> Layout {
        Layout {
            irqs: vec![0, 24],
            irqbalance_config: true,
            cpus: 8,
            thread_siblings: (0..8u32)
                .map(|cpu| (cpu, set(&format!("{},{}", cpu & !1, cpu | 1))))
                .collect(),
            isolated: CpuSet::new(),
            msi_irqs: BTreeMap::new(),
        }
    }

    #[test]
    fn a_containers_device_irqs_go_onto_its_cpus_or_off_every_claimed_one() {
        let layout = Layout {
            irqs: vec![0, 24, 40, 41, 42, 50],
            msi_irqs: BTreeMap::from([
                ("0000:3b:02.0".to_string(), vec![40, 41]),
                ("0000:af:00.0".to_string(), vec![42, 99]),
            ]),
            ..layout()
        };
        let steer = |steer: Steer, devices: &[&str]| Tuning {
            device_irqs: Some(crate::DeviceIrqs {
                steer,
                devices: devices.iter().map(|d| d.to_string()).collect(),
            }),
            ..Tuning::default()
        };
        let claims = [
            claim("dpdk", "2-3", steer(Steer::OnCpus, &["0000:3b:02.0"])),
            claim("gpu", "6", steer(Steer::OffCpus, &["0000:af:00.0"])),
        ];
        let targets = targets(&layout, &claims);
        assert_eq!(
            targets.get(&irq_file(40)),
            Some(&Target::Value("2-3".to_string()))
        );
        assert_eq!(
            targets.get(&irq_file(41)),
            Some(&Target::Value("2-3".to_string()))
        );
        assert_eq!(
            targets.get(&irq_file(42)),
            Some(&Target::ListCleared(set("2-3,6")))
        );
        // Other IRQs are left alone without IRQ load balancing, and an IRQ the kernel no
        // longer lists (99) gets nothing.
        assert_eq!(targets.get(&irq_file(50)), None);
        assert_eq!(targets.get(&irq_file(99)), None);
        assert_eq!(targets.get(&PathBuf::from(DEFAULT_SMP_AFFINITY)), None);

        // With IRQ load balancing off for the same container, its own devices still win.
        let mut both = steer(Steer::OnCpus, &["0000:3b:02.0"]);
        both.irq = Some(IrqMode::Disable);
        let targets = super::targets(&layout, &[claim("dpdk", "2-3", both)]);
        assert_eq!(
            targets.get(&irq_file(40)),
            Some(&Target::Value("2-3".to_string()))
        );
        assert_eq!(
            targets.get(&irq_file(50)),
            Some(&Target::ListCleared(set("2-3")))
        );
    }

    fn irq(mode: IrqMode) -> Tuning {
        Tuning {
            irq: Some(mode),
            ..Tuning::default()
        }
    }

    #[test]
    fn irq_tuning_targets_every_irq_file() {
        let claims = [
            claim("a", "2-3", irq(IrqMode::Disable)),
            claim("b", "5-7", irq(IrqMode::Housekeeping)),
            claim("c", "1", Tuning::default()),
        ];
        let targets = targets(&layout(), &claims);
        // Housekeeping keeps CPU 5 (the first) but not 6-7 (5's sibling is 4, not the claim's).
        let cleared = set("2-3,6-7");
        assert_eq!(
            targets.get(&PathBuf::from(DEFAULT_SMP_AFFINITY)),
            Some(&Target::MaskCleared(cleared.clone()))
        );
        for irq in [
            "proc/irq/0/smp_affinity_list",
            "proc/irq/24/smp_affinity_list",
        ] {
            assert_eq!(
                targets.get(&PathBuf::from(irq)),
                Some(&Target::ListCleared(cleared.clone()))
            );
        }
        assert_eq!(
            targets.get(&PathBuf::from(IRQBALANCE_CONFIG)),
            Some(&Target::IrqbalanceBanned(cleared))
        );
        assert_eq!(targets.len(), 4);
    }

    #[test]
    fn housekeeping_keeps_the_first_cores_threads() {
        let layout = layout();
        let hk = claim("a", "4-7", irq(IrqMode::Housekeeping));
        assert_eq!(housekeeping_cpus(&layout, &hk), set("4-5"));
        assert_eq!(irq_cpus(&layout, &hk), set("6-7"));
        let single = claim("a", "4", irq(IrqMode::Housekeeping));
        assert_eq!(irq_cpus(&layout, &single), CpuSet::new());
        let no_siblings = Layout {
            thread_siblings: BTreeMap::new(),
            ..layout.clone()
        };
        assert_eq!(housekeeping_cpus(&no_siblings, &hk), set("4"));
        let disable = claim("a", "4-7", irq(IrqMode::Disable));
        assert_eq!(housekeeping_cpus(&layout, &disable), CpuSet::new());
        assert_eq!(irq_cpus(&layout, &disable), set("4-7"));
        // Nothing cleared, nothing targeted.
        assert!(targets(&layout, &[single]).is_empty());
    }

    #[test]
    fn the_irqbalance_ban_keeps_isolated_cpus_banned() {
        let layout = Layout {
            isolated: set("7"),
            ..layout()
        };
        let targets = targets(&layout, &[claim("a", "2", irq(IrqMode::Disable))]);
        assert_eq!(
            targets.get(&PathBuf::from(IRQBALANCE_CONFIG)),
            Some(&Target::IrqbalanceBanned(set("2,7")))
        );
    }

    #[test]
    fn per_cpu_values_and_the_later_owner_wins() {
        let performance = Tuning {
            governor: Some("performance".to_string()),
            c_states: Some(CStates::Disable),
            ..Tuning::default()
        };
        let powersave = Tuning {
            governor: Some("powersave".to_string()),
            c_states: Some(CStates::MaxLatencyUs(20)),
            ..Tuning::default()
        };
        let claims = [
            claim("zz", "3", powersave),
            claim("aa", "2-3", performance),
            claim(
                "mm",
                "5",
                Tuning {
                    load_balancing_off: true,
                    quota_off: true,
                    shared_cpus: true,
                    ..Tuning::default()
                },
            ),
        ];
        let targets = targets(&layout(), &claims);
        let value = |path: &str| targets.get(&PathBuf::from(path)).cloned();
        let cpu = "sys/devices/system/cpu";
        assert_eq!(
            value(&format!("{cpu}/cpu2/cpufreq/scaling_governor")),
            Some(Target::Value("performance".to_string()))
        );
        assert_eq!(
            value(&format!("{cpu}/cpu2/power/pm_qos_resume_latency_us")),
            Some(Target::Value("n/a".to_string()))
        );
        assert_eq!(
            value(&format!("{cpu}/cpu3/cpufreq/scaling_governor")),
            Some(Target::Value("powersave".to_string()))
        );
        assert_eq!(
            value(&format!("{cpu}/cpu3/power/pm_qos_resume_latency_us")),
            Some(Target::Value("20".to_string()))
        );
        assert_eq!(targets.len(), 4, "cgroup-only tuning targets no file");
    }

    #[test]
    fn desired_masks() {
        let clear = |cpus: &str| Target::MaskCleared(set(cpus));
        assert_eq!(desired(&clear("0-1"), "f", 4).expect("valid"), "c");
        assert_eq!(desired(&clear("2"), "f", 4).expect("valid"), "b");
        assert_eq!(desired(&clear("5"), "f", 4).expect("valid"), "f");
        assert_eq!(
            desired(&clear("0-3"), "f", 4).expect("valid"),
            "f",
            "never empty"
        );
        assert_eq!(
            desired(&clear("2-63"), "ffffffff,ffffffff", 64).expect("valid"),
            "00000000,00000003"
        );
        assert_eq!(
            desired(&clear("0-31"), "ffffffff,ffffffff", 64).expect("valid"),
            "ffffffff,00000000"
        );
        assert_eq!(
            desired(&clear("0-1,39"), "ff,ffffffff", 40).expect("valid"),
            "7f,fffffffc"
        );
        // Without a CPU count, the baseline's width.
        assert_eq!(
            desired(&clear("32-39"), "ff,ffffffff", 0).expect("valid"),
            "00,ffffffff"
        );
        let err = desired(&clear("1"), "zz", 4).expect_err("not a mask");
        assert!(err.to_string().contains("zz"), "{err}");
    }

    #[test]
    fn desired_lists() {
        let clear = |cpus: &str| Target::ListCleared(set(cpus));
        assert_eq!(desired(&clear("2-3"), "0-3", 4).expect("valid"), "0-1");
        assert_eq!(desired(&clear("1-2"), "0-3", 4).expect("valid"), "0,3");
        assert_eq!(
            desired(&clear("2"), "2", 4).expect("valid"),
            "2",
            "never empty"
        );
        assert_eq!(desired(&clear("2"), "0,1", 4).expect("valid"), "0,1");
        assert!(desired(&clear("2"), "0-", 4).is_err());
    }

    #[test]
    fn desired_values_and_irqbalance() {
        assert_eq!(
            desired(&Target::Value("performance".to_string()), "schedutil", 4).expect("valid"),
            "performance"
        );
        let config = "# comment\nIRQBALANCE_BANNED_CPUS=\"00000001\"\nOTHER=1\n";
        assert_eq!(
            desired(&Target::IrqbalanceBanned(set("2-3")), config, 4).expect("valid"),
            "# comment\nIRQBALANCE_BANNED_CPUS=0000000d\nOTHER=1\n"
        );
    }

    #[test]
    fn targets_serialize() {
        let target = Target::IrqbalanceBanned(set("1-2"));
        let json = serde_json::to_string(&target).expect("serializes");
        assert_eq!(
            serde_json::from_str::<Target>(&json).expect("deserializes"),
            target
        );
    }
}
