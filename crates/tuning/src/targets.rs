//! What each host file should hold for a set of claims, as a function of its baseline: pure.

use std::{collections::BTreeMap, path::PathBuf};

use ingot_topology::CpuSet;
use serde::{Deserialize, Serialize};

use crate::{
    host::{cpu_file, GOVERNOR, RESUME_LATENCY},
    mask, IrqMode, Layout, Tuning, TuningError, DEFAULT_SMP_AFFINITY, IRQBALANCE_CONFIG,
};

/// One container's claim on host state: its exclusive CPUs and what it asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub owner: String,
    pub cpus: CpuSet,
    pub tuning: Tuning,
}

/// What a file should hold, given its baseline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A hex CPU mask with these CPUs cleared.
    MaskCleared(CpuSet),
    /// A CPU list with these CPUs removed; the baseline where that would leave none.
    ListCleared(CpuSet),
    /// A fixed value.
    Value(String),
    /// irqbalance's config with `IRQBALANCE_BANNED_CPUS` banning these CPUs too.
    IrqbalanceBanned(CpuSet),
}

/// The CPUs of a claim that keep taking interrupts under `irq-load-balancing: housekeeping`:
/// its first CPU (CRI-O keeps the first CPU and its siblings in the container; siblings are
/// not in a claim, so the first CPU alone).
pub fn housekeeping_cpus(claim: &Claim) -> CpuSet {
    match claim.tuning.irq {
        Some(IrqMode::Housekeeping) => claim.cpus.first().into_iter().collect(),
        _ => CpuSet::new(),
    }
}

/// The CPUs interrupts must leave: every IRQ-tuned claim's, less its housekeeping CPUs.
pub fn irq_cpus(claims: &[Claim]) -> CpuSet {
    claims
        .iter()
        .filter(|c| c.tuning.irq.is_some())
        .fold(CpuSet::new(), |all, c| {
            all.union(&c.cpus.difference(&housekeeping_cpus(c)))
        })
}

/// Every file the claims want changed, by path under the host root. Per-CPU files of a CPU two
/// claims share (exclusive CPUs never are) follow the later claim by owner.
pub fn targets(layout: &Layout, claims: &[Claim]) -> BTreeMap<PathBuf, Target> {
    let mut out = BTreeMap::new();
    let irq = irq_cpus(claims);
    if !irq.is_empty() {
        out.insert(
            PathBuf::from(DEFAULT_SMP_AFFINITY),
            Target::MaskCleared(irq.clone()),
        );
        for number in &layout.irqs {
            out.insert(
                PathBuf::from(format!("proc/irq/{number}/smp_affinity_list")),
                Target::ListCleared(irq.clone()),
            );
        }
        if layout.irqbalance_config {
            out.insert(
                PathBuf::from(IRQBALANCE_CONFIG),
                Target::IrqbalanceBanned(irq),
            );
        }
    }
    let mut ordered: Vec<&Claim> = claims.iter().collect();
    ordered.sort_by(|a, b| a.owner.cmp(&b.owner));
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

const BANNED: &str = "IRQBALANCE_BANNED_CPUS=";

fn invalid(content: &str, reason: String) -> TuningError {
    TuningError::InvalidContent {
        content: content.to_string(),
        reason,
    }
}

/// The content `target` asks for, from the file's baseline; `total_cpus` sizes a mask that
/// the baseline does not shape.
pub fn desired(target: &Target, baseline: &str, total_cpus: usize) -> Result<String, TuningError> {
    match target {
        Target::Value(value) => Ok(value.clone()),
        Target::MaskCleared(cpus) => {
            let before = mask::parse_mask(baseline).map_err(|r| invalid(baseline, r))?;
            let groups = total_cpus.div_ceil(32).max(1);
            Ok(mask::format_like(
                &before.difference(cpus),
                baseline,
                groups,
            ))
        }
        Target::ListCleared(cpus) => {
            let before =
                CpuSet::parse(baseline.trim()).map_err(|err| invalid(baseline, err.to_string()))?;
            let after = before.difference(cpus);
            Ok(if after.is_empty() {
                baseline.trim().to_string()
            } else {
                after.to_string()
            })
        }
        Target::IrqbalanceBanned(cpus) => {
            let mut lines: Vec<String> = Vec::new();
            let mut found = false;
            for line in baseline.lines() {
                match line.trim_start().strip_prefix(BANNED) {
                    Some(value) if !found => {
                        found = true;
                        let before = mask::parse_mask(value).map_err(|r| invalid(baseline, r))?;
                        lines.push(format!(
                            "{BANNED}{}",
                            mask::format_full(&before.union(cpus), total_cpus)
                        ));
                    }
                    _ => lines.push(line.to_string()),
                }
            }
            if !found {
                lines.push(format!("{BANNED}{}", mask::format_full(cpus, total_cpus)));
            }
            Ok(lines.join("\n"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CStates;

    fn claim(owner: &str, cpus: &str, tuning: Tuning) -> Claim {
        Claim {
            owner: owner.into(),
            cpus: CpuSet::parse(cpus).expect("cpus"),
            tuning,
        }
    }

    #[test]
    fn targets_cover_irqs_c_states_and_governors() {
        let layout = Layout {
            irqs: vec![0, 24],
            irqbalance_config: true,
            cpus: 4,
        };
        let claims = [
            claim(
                "a",
                "1",
                Tuning {
                    irq: Some(IrqMode::Disable),
                    governor: Some("performance".into()),
                    ..Default::default()
                },
            ),
            claim(
                "b",
                "2-3",
                Tuning {
                    irq: Some(IrqMode::Housekeeping),
                    c_states: Some(CStates::Disable),
                    ..Default::default()
                },
            ),
        ];
        let t = targets(&layout, &claims);
        let cleared = CpuSet::parse("1,3").expect("cpus");
        assert_eq!(
            t[&PathBuf::from(DEFAULT_SMP_AFFINITY)],
            Target::MaskCleared(cleared.clone())
        );
        assert_eq!(
            t[&PathBuf::from("proc/irq/24/smp_affinity_list")],
            Target::ListCleared(cleared.clone())
        );
        assert_eq!(
            t[&PathBuf::from(IRQBALANCE_CONFIG)],
            Target::IrqbalanceBanned(cleared)
        );
        assert_eq!(
            t[&cpu_file(1, GOVERNOR)],
            Target::Value("performance".into())
        );
        assert_eq!(t[&cpu_file(3, RESUME_LATENCY)], Target::Value("n/a".into()));
        assert!(!t.contains_key(&cpu_file(1, RESUME_LATENCY)));
        assert_eq!(t.len(), 7);
        assert!(targets(&layout, &[]).is_empty());
    }

    #[test]
    fn desired_values_from_baselines() {
        let cpus = CpuSet::parse("1").expect("cpus");
        assert_eq!(
            desired(&Target::MaskCleared(cpus.clone()), "3", 2).expect("mask"),
            "1"
        );
        assert_eq!(
            desired(&Target::ListCleared(cpus.clone()), "0-1", 2).expect("list"),
            "0"
        );
        assert_eq!(
            desired(&Target::ListCleared(cpus.clone()), "1", 2).expect("list"),
            "1",
            "never empty"
        );
        let config = "# c\nIRQBALANCE_ARGS=\"\"\nIRQBALANCE_BANNED_CPUS=00000001";
        assert_eq!(
            desired(&Target::IrqbalanceBanned(cpus.clone()), config, 2).expect("config"),
            "# c\nIRQBALANCE_ARGS=\"\"\nIRQBALANCE_BANNED_CPUS=00000003"
        );
        assert_eq!(
            desired(&Target::IrqbalanceBanned(cpus.clone()), "# none", 2).expect("config"),
            "# none\nIRQBALANCE_BANNED_CPUS=00000002"
        );
        assert!(desired(&Target::MaskCleared(cpus), "zz", 2).is_err());
    }
}
