//! The host's tunable files under a root path, what is there, and what a claim needs of it.

use std::path::{Path, PathBuf};

use crate::{Claim, TuningError};

pub const DEFAULT_SMP_AFFINITY: &str = "proc/irq/default_smp_affinity";
pub const IRQBALANCE_CONFIG: &str = "etc/sysconfig/irqbalance";
pub const BOOT_ID: &str = "proc/sys/kernel/random/boot_id";
const CPUS: &str = "sys/devices/system/cpu";

/// The node's files, under `root` (`/`, or a temp tree in tests).
#[derive(Debug, Clone)]
pub struct Host {
    root: PathBuf,
}

impl Host {
    pub fn new(root: impl Into<PathBuf>) -> Host {
        Host { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn path(&self, relative: &Path) -> PathBuf {
        self.root.join(relative)
    }
}

/// `sys/devices/system/cpu/cpu<N>/<file>`.
pub(crate) fn cpu_file(cpu: u32, file: &str) -> PathBuf {
    PathBuf::from(format!("{CPUS}/cpu{cpu}/{file}"))
}

pub(crate) const RESUME_LATENCY: &str = "power/pm_qos_resume_latency_us";
pub(crate) const GOVERNOR: &str = "cpufreq/scaling_governor";
const GOVERNORS: &str = "cpufreq/scaling_available_governors";

/// What the host has, read once per reconcile.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
    /// IRQs with an `smp_affinity_list`, ascending.
    pub irqs: Vec<u32>,
    /// Whether `etc/sysconfig/irqbalance` exists.
    pub irqbalance_config: bool,
    /// Possible CPUs (the width of the kernel's masks).
    pub cpus: usize,
}

fn read(host: &Host, relative: &Path) -> Result<String, TuningError> {
    let path = host.path(relative);
    std::fs::read_to_string(&path).map_err(|source| TuningError::Read { path, source })
}

pub fn layout(host: &Host) -> Result<Layout, TuningError> {
    let irq_dir = host.path(Path::new("proc/irq"));
    let mut irqs: Vec<u32> = match std::fs::read_dir(&irq_dir) {
        Ok(entries) => entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|irq| {
                irq_dir
                    .join(irq.to_string())
                    .join("smp_affinity_list")
                    .exists()
            })
            .collect(),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(source) => {
            return Err(TuningError::Read {
                path: irq_dir,
                source,
            })
        }
    };
    irqs.sort_unstable();
    let cpus = ["possible", "online"]
        .iter()
        .find_map(|name| {
            let text =
                std::fs::read_to_string(host.path(Path::new(&format!("{CPUS}/{name}")))).ok()?;
            let set = ingot_topology::CpuSet::parse(text.trim()).ok()?;
            set.iter()
                .last()
                .and_then(|c| usize::try_from(c).ok())
                .map(|c| c + 1)
        })
        .unwrap_or(0);
    Ok(Layout {
        irqs,
        irqbalance_config: host.path(Path::new(IRQBALANCE_CONFIG)).exists(),
        cpus,
    })
}

/// What the host must offer before a claim is accepted: IRQ files for IRQ tuning, a resume
/// latency file per CPU for C-states, the governor among each CPU's available ones.
pub fn check(host: &Host, claim: &Claim) -> Result<(), TuningError> {
    let tuning = &claim.tuning;
    if tuning.touches_host() && claim.cpus.is_empty() {
        return Err(TuningError::NoCpus {
            owner: claim.owner.clone(),
        });
    }
    let unsupported = |feature: &str, relative: &Path| TuningError::Unsupported {
        owner: claim.owner.clone(),
        feature: feature.into(),
        path: host.path(relative),
    };
    if tuning.irq.is_some() && !host.path(Path::new(DEFAULT_SMP_AFFINITY)).exists() {
        return Err(unsupported(
            crate::IRQ_LOAD_BALANCING,
            Path::new(DEFAULT_SMP_AFFINITY),
        ));
    }
    for cpu in claim.cpus.iter() {
        if tuning.c_states.is_some() {
            let file = cpu_file(cpu, RESUME_LATENCY);
            if !host.path(&file).exists() {
                return Err(unsupported(crate::CPU_C_STATES, &file));
            }
        }
        if let Some(governor) = &tuning.governor {
            let file = cpu_file(cpu, GOVERNORS);
            let available: Vec<String> = match read(host, &file) {
                Ok(text) => text.split_whitespace().map(str::to_string).collect(),
                Err(_) => return Err(unsupported(crate::CPU_FREQ_GOVERNOR, &file)),
            };
            if !available.iter().any(|g| g == governor) {
                return Err(TuningError::GovernorUnavailable {
                    owner: claim.owner.clone(),
                    cpu,
                    governor: governor.clone(),
                    available,
                });
            }
        }
    }
    Ok(())
}

/// The host's boot id (a new one after every boot).
pub fn boot_id(host: &Host) -> Result<String, TuningError> {
    read(host, Path::new(BOOT_ID)).map(|text| text.trim().to_string())
}
