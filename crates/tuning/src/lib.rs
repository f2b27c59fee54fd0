//! Host tuning for high-performance pods, compatible with CRI-O's high-performance runtime
//! handler annotations (`cpu-load-balancing.crio.io`, `cpu-quota.crio.io`,
//! `irq-load-balancing.crio.io`, `cpu-c-states.crio.io`, `cpu-freq-governor.crio.io`,
//! `cpu-shared.crio.io`).
//!
//! The crate is split the way the daemon uses it:
//!
//! * [`parse`] turns a pod's annotations into one container's [`Tuning`], refusing what the
//!   runtime handler does not allow and values CRI-O would not understand.
//! * [`check`] validates a [`Claim`] (a container's exclusive CPUs and its tuning) against the
//!   host before anything is written.
//! * [`targets`] and [`desired`] say, without any I/O, what each host file should hold for a set
//!   of claims, as a function of the file's *baseline* (its content before ingot first changed
//!   it).
//! * [`reconcile`] brings the host to that state, recording each baseline in a [`Journal`]
//!   before the first write and writing it back once no claim wants the file any more. It is
//!   idempotent and crash-safe: rerunning it after a kill at any point converges.
//! * [`forget_if_rebooted`] drops baselines that a reboot made meaningless.
//!
//! `cpu-load-balancing`, `cpu-quota` and `cpu-shared` are cgroup settings: they are parsed here
//! but the daemon applies them. Only IRQ affinity, the irqbalance configuration, C-states
//! (`pm_qos_resume_latency_us`) and cpufreq governors are host files this crate writes. It never
//! starts processes: when [`Report::irqbalance_changed`] says the irqbalance configuration
//! changed, the daemon restarts irqbalance (CRI-O runs `systemctl restart irqbalance`, or
//! `irqbalance --oneshot` where the service is not enabled).

use std::path::PathBuf;

mod annotations;
mod host;
mod mask;
mod reconcile;
mod targets;

#[cfg(test)]
mod fixture;

pub use annotations::{
    parse, CStates, DeviceIrqs, IrqMode, Steer, Tuning, ANNOTATIONS, CPU_C_STATES,
    CPU_FREQ_GOVERNOR, CPU_LOAD_BALANCING, CPU_QUOTA, CPU_SHARED, DEVICE_IRQS, IRQ_LOAD_BALANCING,
};
pub use host::{
    boot_id, check, layout, Host, Layout, BOOT_ID, DEFAULT_SMP_AFFINITY, IRQBALANCE_CONFIG,
};
pub use ingot_topology::CpuSet;
pub use reconcile::{forget_if_rebooted, reconcile, Journal, MemoryJournal, Report};
pub use targets::{desired, housekeeping_cpus, irq_cpus, targets, Claim, Target};

/// Everything that can go wrong parsing, checking or applying tuning.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TuningError {
    /// An annotation of a family the runtime handler's `allowed_annotations` does not list.
    #[error(
        "annotation {key:?} is not allowed by the runtime handler \
         (its allowed_annotations do not list {annotation:?})"
    )]
    NotAllowed {
        /// The key as the pod carries it (possibly `<annotation>/<container>`).
        key: String,
        /// The pod-wide annotation name the handler would have to allow.
        annotation: String,
    },
    /// An annotation whose value this crate (and CRI-O) does not understand.
    #[error("annotation {key:?} has invalid value {value:?}: {reason}")]
    InvalidAnnotation {
        key: String,
        value: String,
        reason: String,
    },
    /// A claim asks for host tuning but has no exclusive CPUs to apply it to.
    #[error("container {owner} asks for host tuning but has no exclusive CPUs")]
    NoCpus { owner: String },
    /// A claim asks for something the host cannot do: the file it needs is missing.
    #[error("container {owner} asks for {feature}, but the host has no {path}")]
    Unsupported {
        owner: String,
        feature: String,
        path: PathBuf,
    },
    /// The requested cpufreq governor is not among those a CPU offers.
    #[error(
        "container {owner} asks for cpufreq governor {governor:?}, \
         which CPU {cpu} does not offer (it has: {})",
        available.join(" ")
    )]
    GovernorUnavailable {
        owner: String,
        cpu: u32,
        governor: String,
        available: Vec<String>,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A host file (or its recorded baseline) whose content does not parse.
    #[error("malformed {path}: {reason}")]
    Malformed { path: PathBuf, reason: String },
    /// Content given to [`desired`] that does not parse (no file to name: it is pure).
    #[error("invalid content {content:?}: {reason}")]
    InvalidContent { content: String, reason: String },
    /// The daemon's [`Journal`] failed.
    #[error("tuning journal: {0}")]
    Journal(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
}

impl TuningError {
    /// Wraps a journal implementation's error (for [`Journal`] implementors).
    pub fn journal(err: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        Self::Journal(err.into())
    }
}

/// The API as the daemon uses it: a change that breaks one of these breaks ingotd.
#[cfg(test)]
mod contract {
    use super::*;

    fn send_static<T: Send + 'static>(_: &T) {}

    #[test]
    fn the_daemons_usage_compiles_and_holds() {
        let fixture = fixture::Fixture::new();
        let host = Host::new(fixture.root());
        send_static(&host);
        let mut journal = MemoryJournal::default();
        let report: Report = reconcile(&host, &[], &mut journal).expect("reconcile");
        send_static(&report);
        let Report {
            written,
            restored,
            skipped,
            irqbalance_changed,
        } = report;
        assert!(written.is_empty() && restored.is_empty() && skipped.is_empty());
        assert!(!irqbalance_changed);
        let err = TuningError::journal("store closed".to_string());
        assert_eq!(err.to_string(), "tuning journal: store closed");
        let claim = Claim {
            owner: "c".to_string(),
            cpus: CpuSet::parse("1").expect("valid"),
            tuning: Tuning {
                c_states: Some(CStates::Disable),
                ..Tuning::default()
            },
        };
        fixture.remove("sys/devices/system/cpu/cpu1/power/pm_qos_resume_latency_us");
        match check(&host, &claim) {
            Err(TuningError::Unsupported { feature, .. }) => assert_eq!(feature, CPU_C_STATES),
            other => panic!("{other:?}"),
        }
        assert!(ANNOTATIONS.contains(&CPU_FREQ_GOVERNOR));
        let _: Result<bool, TuningError> = forget_if_rebooted(&host, None, &mut journal);
        let _: Result<String, TuningError> = boot_id(&host);
    }
}
