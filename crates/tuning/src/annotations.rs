//! The high-performance annotations: names, accepted values, the per-container form, and the
//! runtime handler's `allowed_annotations`.
//!
//! Values follow CRI-O (`internal/runtimehandlerhooks/high_performance_hooks_linux.go`):
//! `"disable"` turns a balancing/quota feature off, `"true"` is its deprecated synonym (CRI-O logs
//! a deprecation warning, so do we). Where CRI-O silently ignores a value it does not know (a
//! typo such as `"disabled"` leaves the pod untuned without a word), this crate refuses it, and
//! accepts `"enable"` as the explicit "leave it as it is".

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::TuningError;

/// Disables scheduler load balancing on the container's CPUs (a cgroup setting; the daemon
/// applies it).
pub const CPU_LOAD_BALANCING: &str = "cpu-load-balancing.crio.io";
/// Disables the CFS quota of the container (a cgroup setting; the daemon applies it).
pub const CPU_QUOTA: &str = "cpu-quota.crio.io";
/// Keeps device interrupts off the container's CPUs (`disable`), or off all but the first core's
/// threads (`housekeeping`).
pub const IRQ_LOAD_BALANCING: &str = "irq-load-balancing.crio.io";
/// C-states of the container's CPUs, via `power/pm_qos_resume_latency_us`.
pub const CPU_C_STATES: &str = "cpu-c-states.crio.io";
/// The cpufreq governor of the container's CPUs.
pub const CPU_FREQ_GOVERNOR: &str = "cpu-freq-governor.crio.io";
/// The container also runs on the node's shared CPU pool (the daemon applies it).
pub const CPU_SHARED: &str = "cpu-shared.crio.io";

/// Beyond CRI-O: the interrupts of the container's own devices (its SR-IOV VFs, CDI devices
/// with a PCI address, VFIO functions), steered onto its CPUs (`pod-cpus`) or off them
/// (`housekeeping`), directly and without irqbalance.
pub const DEVICE_IRQS: &str = "irq.ingot.dev/device-irqs";

/// Every annotation key this crate understands (the pod-wide names).
pub const ANNOTATIONS: &[&str] = &[
    DEVICE_IRQS,
    CPU_LOAD_BALANCING,
    CPU_QUOTA,
    IRQ_LOAD_BALANCING,
    CPU_C_STATES,
    CPU_FREQ_GOVERNOR,
    CPU_SHARED,
];

/// Parsed high-performance annotations for one container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tuning {
    /// `cpu-load-balancing.crio.io: "disable"` (or the deprecated `"true"`).
    pub load_balancing_off: bool,
    /// `cpu-quota.crio.io: "disable"` (or the deprecated `"true"`).
    pub quota_off: bool,
    /// `irq-load-balancing.crio.io`: `"disable"`/`"true"` or `"housekeeping"`.
    pub irq: Option<IrqMode>,
    /// `cpu-c-states.crio.io`: `"enable"`, `"disable"` or `"max_latency:<us>"`.
    pub c_states: Option<CStates>,
    /// `cpu-freq-governor.crio.io: "<governor>"`.
    pub governor: Option<String>,
    /// `cpu-shared.crio.io: "enable"`: the container also uses the shared pool.
    pub shared_cpus: bool,
    /// `irq.ingot.dev/device-irqs`; the daemon fills in the devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_irqs: Option<DeviceIrqs>,
}

/// Where the interrupts of a container's own devices go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceIrqs {
    pub steer: Steer,
    /// The devices' PCI addresses: their `msi_irqs` are read at each reconcile, so IRQs a
    /// driver adds or renumbers are steered too.
    pub devices: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Steer {
    /// `pod-cpus`: onto the container's CPUs.
    OnCpus,
    /// `housekeeping`: onto CPUs no claim holds.
    OffCpus,
}

impl Tuning {
    /// Whether no annotation asked for anything.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Whether this tuning writes host files (IRQ affinity, C-states or the governor), as
    /// opposed to only the container's cgroups.
    pub fn touches_host(&self) -> bool {
        self.irq.is_some()
            || self.c_states.is_some()
            || self.governor.is_some()
            || self.device_irqs.is_some()
    }
}

/// What `irq-load-balancing.crio.io` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IrqMode {
    /// `"disable"` (or `"true"`): no device interrupts on any of the container's CPUs.
    Disable,
    /// `"housekeeping"`: interrupts stay on the container's first CPU and those of its thread
    /// siblings the container has; they leave the other CPUs (CRI-O 1.34+).
    Housekeeping,
}

/// What `cpu-c-states.crio.io` asks for, as written to `pm_qos_resume_latency_us`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CStates {
    /// `"enable"`: every C-state allowed (`0`, the kernel's "no constraint").
    Enable,
    /// `"disable"`: no C-state at all (`n/a`, a zero resume latency).
    Disable,
    /// `"max_latency:<us>"`: only C-states that wake within this many microseconds (> 0).
    MaxLatencyUs(u32),
}

impl CStates {
    /// The value written to `power/pm_qos_resume_latency_us` (CRI-O's
    /// `convertAnnotationToLatency`).
    pub fn resume_latency(&self) -> String {
        match self {
            CStates::Enable => "0".to_string(),
            CStates::Disable => "n/a".to_string(),
            CStates::MaxLatencyUs(us) => us.to_string(),
        }
    }
}

/// Reads the pod's annotations for container `container`: a per-container key
/// `<annotation>/<container>` wins over the pod-wide `<annotation>`. `allowed` is the runtime
/// handler's allowed_annotations (an annotation not allowed by the handler is an error when
/// present). Errors name the annotation key and say why (malformed value, not allowed).
///
/// "Present" means any key of the family, pod-wide or for any container: a pod that asks for
/// something its handler refuses fails as a whole rather than running some containers untuned.
/// Only the keys that apply to `container` have their values checked.
pub fn parse(
    annotations: &BTreeMap<String, String>,
    container: &str,
    allowed: &[String],
) -> Result<Tuning, TuningError> {
    for name in ANNOTATIONS {
        if allowed.iter().any(|entry| entry == name) {
            continue;
        }
        if let Some(key) = family_keys(annotations, name).next() {
            return Err(TuningError::NotAllowed {
                key: key.to_string(),
                annotation: name.to_string(),
            });
        }
    }

    let mut tuning = Tuning::default();
    if let Some((key, value)) = lookup(annotations, CPU_LOAD_BALANCING, container) {
        tuning.load_balancing_off = parse_switch_off(key, value)?;
    }
    if let Some((key, value)) = lookup(annotations, CPU_QUOTA, container) {
        tuning.quota_off = parse_switch_off(key, value)?;
    }
    if let Some((key, value)) = lookup(annotations, IRQ_LOAD_BALANCING, container) {
        tuning.irq = match value {
            "housekeeping" => Some(IrqMode::Housekeeping),
            "enable" => None,
            _ => parse_switch_off(key, value)?.then_some(IrqMode::Disable),
        };
    }
    if let Some((key, value)) = lookup(annotations, CPU_C_STATES, container) {
        tuning.c_states = Some(parse_c_states(key, value)?);
    }
    if let Some((key, value)) = lookup(annotations, CPU_FREQ_GOVERNOR, container) {
        tuning.governor = Some(parse_governor(key, value)?);
    }
    if let Some((key, value)) = lookup(annotations, DEVICE_IRQS, container) {
        tuning.device_irqs = Some(DeviceIrqs {
            steer: match value {
                "pod-cpus" => Steer::OnCpus,
                "housekeeping" => Steer::OffCpus,
                _ => {
                    return Err(invalid(
                        key,
                        value,
                        "expected \"pod-cpus\" or \"housekeeping\"",
                    ))
                }
            },
            devices: Vec::new(),
        });
    }
    if let Some((key, value)) = lookup(annotations, CPU_SHARED, container) {
        tuning.shared_cpus = match value {
            "enable" => true,
            "disable" => false,
            _ => return Err(invalid(key, value, "expected \"enable\" or \"disable\"")),
        };
    }
    Ok(tuning)
}

/// The keys of one annotation family: the pod-wide name and every `<name>/<container>`.
fn family_keys<'a>(
    annotations: &'a BTreeMap<String, String>,
    name: &'a str,
) -> impl Iterator<Item = &'a str> + 'a {
    annotations
        .range::<str, _>((std::ops::Bound::Included(name), std::ops::Bound::Unbounded))
        .map(|(key, _)| key.as_str())
        .take_while(move |key| key.starts_with(name))
        .filter(move |key| {
            let rest = &key[name.len()..];
            rest.is_empty() || rest.starts_with('/')
        })
}

/// The key that applies to `container` and its value: `<name>/<container>` before `<name>`.
fn lookup<'a>(
    annotations: &'a BTreeMap<String, String>,
    name: &str,
    container: &str,
) -> Option<(&'a str, &'a str)> {
    annotations
        .get_key_value(&format!("{name}/{container}"))
        .or_else(|| annotations.get_key_value(name))
        .map(|(key, value)| (key.as_str(), value.as_str()))
}

fn invalid(key: &str, value: &str, reason: impl Into<String>) -> TuningError {
    TuningError::InvalidAnnotation {
        key: key.to_string(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// `"disable"` or the deprecated `"true"` → on; `"enable"` → off.
fn parse_switch_off(key: &str, value: &str) -> Result<bool, TuningError> {
    match value {
        "disable" => Ok(true),
        "true" => {
            tracing::warn!(
                annotation = key,
                "the value \"true\" is deprecated (CRI-O since 1.21); use \"disable\""
            );
            Ok(true)
        }
        "enable" => Ok(false),
        _ => Err(invalid(
            key,
            value,
            "expected \"disable\" (or the deprecated \"true\") or \"enable\"",
        )),
    }
}

/// `enable`, `disable`, `max_latency:<us>` with 0 < us < 2^31-1: the kernel parses the file as an
/// s32 and refuses S32_MAX, its "no constraint" sentinel; CRI-O refuses 0.
fn parse_c_states(key: &str, value: &str) -> Result<CStates, TuningError> {
    const EXPECTED: &str = "expected \"enable\", \"disable\" or \"max_latency:<microseconds>\"";
    match value {
        "enable" => Ok(CStates::Enable),
        "disable" => Ok(CStates::Disable),
        _ => {
            let Some(latency) = value.strip_prefix("max_latency:") else {
                return Err(invalid(key, value, EXPECTED));
            };
            if latency.is_empty() || !latency.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid(
                    key,
                    value,
                    format!("{latency:?} is not a number of microseconds"),
                ));
            }
            match latency.parse::<u32>() {
                Ok(us) if us > 0 && us < i32::MAX.unsigned_abs() => Ok(CStates::MaxLatencyUs(us)),
                _ => Err(invalid(
                    key,
                    value,
                    format!(
                        "the latency must be between 1 and {} microseconds",
                        i32::MAX - 1
                    ),
                )),
            }
        }
    }
}

/// A governor name as the kernel knows them (`CPUFREQ_NAME_LEN` is 16 with the NUL): letters,
/// digits, `_` and `-`. Anything else could not be a governor, and is not written to sysfs.
fn parse_governor(key: &str, value: &str) -> Result<String, TuningError> {
    if value.is_empty() || value.len() > 15 {
        return Err(invalid(
            key,
            value,
            "a governor name has 1 to 15 characters",
        ));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(invalid(
            key,
            value,
            "a governor name has only letters, digits, '_' and '-'",
        ));
    }
    Ok(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn all_allowed() -> Vec<String> {
        ANNOTATIONS.iter().map(|name| name.to_string()).collect()
    }

    #[test]
    fn pod_wide_annotations() {
        let annotations = pod(&[
            (CPU_LOAD_BALANCING, "disable"),
            (CPU_QUOTA, "true"),
            (IRQ_LOAD_BALANCING, "housekeeping"),
            (CPU_C_STATES, "max_latency:10"),
            (CPU_FREQ_GOVERNOR, "performance"),
            (CPU_SHARED, "enable"),
            ("irq.ingot.dev/device-irqs/app", "pod-cpus"),
            ("unrelated.example.com", "whatever"),
        ]);
        let tuning = parse(&annotations, "app", &all_allowed()).expect("valid");
        assert_eq!(
            tuning,
            Tuning {
                load_balancing_off: true,
                quota_off: true,
                irq: Some(IrqMode::Housekeeping),
                c_states: Some(CStates::MaxLatencyUs(10)),
                governor: Some("performance".to_string()),
                shared_cpus: true,
                device_irqs: Some(DeviceIrqs {
                    steer: Steer::OnCpus,
                    devices: Vec::new(),
                }),
            }
        );
        let wrong = BTreeMap::from([(DEVICE_IRQS.to_string(), "mine".to_string())]);
        let err = parse(&wrong, "app", &all_allowed()).expect_err("malformed");
        assert!(err.to_string().contains(DEVICE_IRQS), "{err}");
        assert!(!tuning.is_empty());
        assert!(tuning.touches_host());
    }

    #[test]
    fn per_container_key_wins_over_pod_wide() {
        let annotations = pod(&[
            (IRQ_LOAD_BALANCING, "disable"),
            ("irq-load-balancing.crio.io/sidecar", "enable"),
            (CPU_C_STATES, "disable"),
            ("cpu-c-states.crio.io/app", "enable"),
            ("cpu-shared.crio.io/app", "enable"),
            ("cpu-freq-governor.crio.io/other", "powersave"),
        ]);
        let app = parse(&annotations, "app", &all_allowed()).expect("valid");
        assert_eq!(app.irq, Some(IrqMode::Disable));
        assert_eq!(app.c_states, Some(CStates::Enable));
        assert!(app.shared_cpus);
        assert_eq!(app.governor, None);

        let sidecar = parse(&annotations, "sidecar", &all_allowed()).expect("valid");
        assert_eq!(sidecar.irq, None);
        assert_eq!(sidecar.c_states, Some(CStates::Disable));
        assert!(!sidecar.shared_cpus);

        let other = parse(&annotations, "other", &all_allowed()).expect("valid");
        assert_eq!(other.governor.as_deref(), Some("powersave"));
    }

    #[test]
    fn no_annotations_is_empty() {
        let tuning = parse(&pod(&[]), "app", &[]).expect("valid");
        assert!(tuning.is_empty());
        assert!(!tuning.touches_host());
        let cgroup_only = Tuning {
            load_balancing_off: true,
            quota_off: true,
            shared_cpus: true,
            ..Tuning::default()
        };
        assert!(!cgroup_only.touches_host());
    }

    #[test]
    fn enable_means_untouched() {
        let annotations = pod(&[
            (CPU_LOAD_BALANCING, "enable"),
            (CPU_QUOTA, "enable"),
            (IRQ_LOAD_BALANCING, "enable"),
            (CPU_SHARED, "disable"),
        ]);
        assert!(parse(&annotations, "app", &all_allowed())
            .expect("valid")
            .is_empty());
        let annotations = pod(&[(IRQ_LOAD_BALANCING, "true"), (CPU_C_STATES, "disable")]);
        let tuning = parse(&annotations, "app", &all_allowed()).expect("valid");
        assert_eq!(tuning.irq, Some(IrqMode::Disable));
        assert_eq!(tuning.c_states, Some(CStates::Disable));
    }

    #[test]
    fn malformed_values_name_the_key() {
        let cases: &[(&str, &str)] = &[
            (CPU_LOAD_BALANCING, "disabled"),
            (CPU_QUOTA, "off"),
            (IRQ_LOAD_BALANCING, "housekeeper"),
            (CPU_C_STATES, "max_latency:"),
            (CPU_C_STATES, "max_latency:0"),
            (CPU_C_STATES, "max_latency:-5"),
            (CPU_C_STATES, "max_latency:+5"),
            (CPU_C_STATES, "max_latency:2147483647"),
            (CPU_C_STATES, "max_latency:99999999999"),
            (CPU_C_STATES, "deep"),
            (CPU_FREQ_GOVERNOR, ""),
            (CPU_FREQ_GOVERNOR, "performance\n"),
            (CPU_FREQ_GOVERNOR, "a-very-long-governor-name"),
            (CPU_SHARED, "true"),
            ("cpu-quota.crio.io/app", "nope"),
        ];
        for (key, value) in cases {
            let err = parse(&pod(&[(key, value)]), "app", &all_allowed())
                .expect_err(&format!("{key}={value:?}"));
            let message = err.to_string();
            assert!(
                matches!(err, TuningError::InvalidAnnotation { .. }),
                "{key}={value:?}: {message}"
            );
            assert!(message.contains(key), "{key}={value:?}: {message}");
        }
        // The largest latency the kernel takes.
        let ok = parse(
            &pod(&[(CPU_C_STATES, "max_latency:2147483646")]),
            "app",
            &all_allowed(),
        )
        .expect("valid");
        assert_eq!(ok.c_states, Some(CStates::MaxLatencyUs(2_147_483_646)));
    }

    #[test]
    fn a_malformed_value_for_another_container_is_not_this_ones_error() {
        let annotations = pod(&[("cpu-c-states.crio.io/other", "bogus")]);
        assert!(parse(&annotations, "app", &all_allowed())
            .expect("valid")
            .is_empty());
        assert!(parse(&annotations, "other", &all_allowed()).is_err());
    }

    #[test]
    fn annotations_the_handler_does_not_allow_are_errors() {
        let allowed = vec![CPU_QUOTA.to_string()];
        assert!(
            parse(&pod(&[(CPU_QUOTA, "disable")]), "app", &allowed)
                .expect("allowed")
                .quota_off
        );
        for key in [
            IRQ_LOAD_BALANCING,
            "irq-load-balancing.crio.io/app",
            "irq-load-balancing.crio.io/other-container",
            CPU_SHARED,
            "cpu-shared.crio.io/app",
        ] {
            let err = parse(
                &pod(&[(CPU_QUOTA, "disable"), (key, "enable")]),
                "app",
                &allowed,
            )
            .expect_err(key);
            let message = err.to_string();
            assert!(
                matches!(err, TuningError::NotAllowed { .. }),
                "{key}: {message}"
            );
            assert!(message.contains(key), "{key}: {message}");
            assert!(message.contains("not allowed"), "{key}: {message}");
        }
        // A key that merely starts like one of ours is not ours.
        assert!(parse(
            &pod(&[("cpu-quota.crio.io.example/x", "y"), ("cpu-sharedx", "y")]),
            "app",
            &[]
        )
        .expect("not ours")
        .is_empty());
    }

    #[test]
    fn serde_round_trip() {
        let tuning = Tuning {
            irq: Some(IrqMode::Housekeeping),
            c_states: Some(CStates::MaxLatencyUs(7)),
            governor: Some("schedutil".to_string()),
            ..Tuning::default()
        };
        let json = serde_json::to_string(&tuning).expect("serializes");
        assert_eq!(
            serde_json::from_str::<Tuning>(&json).expect("deserializes"),
            tuning
        );
        assert_eq!(CStates::Enable.resume_latency(), "0");
        assert_eq!(CStates::Disable.resume_latency(), "n/a");
        assert_eq!(CStates::MaxLatencyUs(10).resume_latency(), "10");
    }
}
