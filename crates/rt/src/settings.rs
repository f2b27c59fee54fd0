//! What a real-time pod's annotations ask of one of its containers: a scheduling class and
//! priority, rlimits, an RT group-scheduling budget. Each annotation is
//! `realtime.ingot.dev/<key>` for every container of the pod, or `realtime.ingot.dev/<key>/<container>`
//! for one (which wins), as CRI-O scopes its high-performance annotations. Parsing is pure.

use std::collections::HashMap;

/// The annotation prefix.
pub const PREFIX: &str = "realtime.ingot.dev/";
/// `SCHED_FIFO`, `SCHED_RR`, `SCHED_DEADLINE`, `SCHED_IDLE`, `SCHED_BATCH`, `SCHED_OTHER`.
pub const SCHED_POLICY: &str = "realtime.ingot.dev/sched-policy";
/// 1–99 for `SCHED_FIFO`/`SCHED_RR`.
pub const SCHED_PRIORITY: &str = "realtime.ingot.dev/sched-priority";
/// -20–19.
pub const SCHED_NICE: &str = "realtime.ingot.dev/sched-nice";
/// `<runtime>/<deadline>/<period>` in nanoseconds, for `SCHED_DEADLINE`.
pub const SCHED_DEADLINE: &str = "realtime.ingot.dev/sched-deadline";
/// `"true"`: exec'd processes get the scheduling class too (by default they do not).
pub const SCHED_EXECS: &str = "realtime.ingot.dev/sched-execs";
/// `RLIMIT_MEMLOCK` in bytes, or `unlimited`.
pub const RLIMIT_MEMLOCK: &str = "realtime.ingot.dev/rlimit-memlock";
/// `RLIMIT_RTPRIO`, 0–99.
pub const RLIMIT_RTPRIO: &str = "realtime.ingot.dev/rlimit-rtprio";
/// The container's `cpu.rt_runtime_us` per `cpu.rt_period_us` (cgroup v1 RT group scheduling).
pub const RT_RUNTIME_US: &str = "realtime.ingot.dev/rt-runtime-us";
/// The annotation that asks for real time at all (handled by admission).
pub const ENABLED: &str = "realtime.ingot.dev/enabled";

const KEYS: &[&str] = &[
    SCHED_POLICY,
    SCHED_PRIORITY,
    SCHED_NICE,
    SCHED_DEADLINE,
    SCHED_EXECS,
    RLIMIT_MEMLOCK,
    RLIMIT_RTPRIO,
    RT_RUNTIME_US,
    ENABLED,
];

/// The budget a real-time container gets when its annotations name none: 100 ms per second.
pub const DEFAULT_RT_RUNTIME_US: i64 = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Policy {
    Other,
    Batch,
    Idle,
    Fifo,
    Rr,
    Deadline,
}

impl Policy {
    /// The runtime spec's name.
    pub fn oci_name(self) -> &'static str {
        match self {
            Policy::Other => "SCHED_OTHER",
            Policy::Batch => "SCHED_BATCH",
            Policy::Idle => "SCHED_IDLE",
            Policy::Fifo => "SCHED_FIFO",
            Policy::Rr => "SCHED_RR",
            Policy::Deadline => "SCHED_DEADLINE",
        }
    }

    /// The kernel's number (`/proc/<pid>/stat` field 41).
    pub fn number(self) -> u32 {
        match self {
            Policy::Other => 0,
            Policy::Fifo => 1,
            Policy::Rr => 2,
            Policy::Batch => 3,
            Policy::Idle => 5,
            Policy::Deadline => 6,
        }
    }

    fn is_rt(self) -> bool {
        matches!(self, Policy::Fifo | Policy::Rr)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Scheduler {
    pub policy: Policy,
    pub priority: i32,
    pub nice: i32,
    /// Nanoseconds, for `SCHED_DEADLINE`.
    pub runtime: u64,
    pub deadline: u64,
    pub period: u64,
    /// Exec'd processes get it too.
    pub execs: bool,
}

/// A container's real-time settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Settings {
    pub scheduler: Option<Scheduler>,
    /// `RLIMIT_MEMLOCK` (None: unlimited).
    pub memlock: Option<Option<u64>>,
    pub rtprio: Option<u64>,
    /// `cpu.rt_runtime_us` of its cgroup.
    pub rt_runtime_us: i64,
}

/// A malformed or misplaced annotation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{annotation}: {reason}")]
pub struct AnnotationError {
    pub annotation: String,
    pub reason: String,
}

fn bad(annotation: &str, reason: impl Into<String>) -> AnnotationError {
    AnnotationError {
        annotation: annotation.to_string(),
        reason: reason.into(),
    }
}

/// Every `realtime.ingot.dev/` annotation of a pod that is not one ingot knows, refused: a typo
/// would otherwise silently leave a container without what it asked for.
pub fn check_keys(annotations: &HashMap<String, String>) -> Result<(), AnnotationError> {
    for key in annotations.keys().filter(|k| k.starts_with(PREFIX)) {
        let base = match key[PREFIX.len()..].split_once('/') {
            Some((name, _container)) => &key[..PREFIX.len() + name.len()],
            None => key.as_str(),
        };
        if !KEYS.contains(&base) {
            return Err(bad(
                key,
                format!(
                    "unknown annotation; known: {}",
                    KEYS.iter()
                        .map(|k| &k[PREFIX.len()..])
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// Whether the pod's annotations ask anything of containers (scheduling, rlimits, budgets).
pub fn asks_anything(annotations: &HashMap<String, String>) -> bool {
    annotations
        .keys()
        .any(|k| k.starts_with(PREFIX) && !k.starts_with(ENABLED))
}

/// The settings `annotations` give container `name`. The value of `<key>/<name>` wins over
/// `<key>`.
pub fn for_container(
    annotations: &HashMap<String, String>,
    name: &str,
) -> Result<Settings, AnnotationError> {
    check_keys(annotations)?;
    let get = |key: &str| -> Option<(String, &str)> {
        let scoped = format!("{key}/{name}");
        annotations
            .get(&scoped)
            .map(|v| (scoped, v.trim()))
            .or_else(|| annotations.get(key).map(|v| (key.to_string(), v.trim())))
    };
    let number = |key: &str, min: i64, max: i64| -> Result<Option<i64>, AnnotationError> {
        let Some((annotation, value)) = get(key) else {
            return Ok(None);
        };
        let n: i64 = value
            .parse()
            .map_err(|_| bad(&annotation, format!("{value:?} is not a whole number")))?;
        if !(min..=max).contains(&n) {
            return Err(bad(&annotation, format!("{n} is not within {min}..={max}")));
        }
        Ok(Some(n))
    };

    let mut settings = Settings {
        rt_runtime_us: number(RT_RUNTIME_US, 1, 1_000_000)?.unwrap_or(DEFAULT_RT_RUNTIME_US),
        rtprio: number(RLIMIT_RTPRIO, 0, 99)?.map(|n| n.unsigned_abs()),
        ..Settings::default()
    };
    if let Some((annotation, value)) = get(RLIMIT_MEMLOCK) {
        settings.memlock = Some(if value == "unlimited" {
            None
        } else {
            Some(value.parse().map_err(|_| {
                bad(
                    &annotation,
                    format!("{value:?} is neither a number of bytes nor \"unlimited\""),
                )
            })?)
        });
    }

    let priority = number(SCHED_PRIORITY, 1, 99)?;
    let nice = number(SCHED_NICE, -20, 19)?;
    let deadline = get(SCHED_DEADLINE);
    let policy = match get(SCHED_POLICY) {
        None => {
            if priority.is_some() || deadline.is_some() {
                return Err(bad(
                    SCHED_POLICY,
                    "a priority or deadline needs a scheduling policy",
                ));
            }
            nice.map(|_| Policy::Other)
        }
        Some((annotation, value)) => {
            let upper = value.to_ascii_uppercase();
            Some(match upper.strip_prefix("SCHED_").unwrap_or(&upper) {
                "OTHER" => Policy::Other,
                "BATCH" => Policy::Batch,
                "IDLE" => Policy::Idle,
                "FIFO" => Policy::Fifo,
                "RR" => Policy::Rr,
                "DEADLINE" => Policy::Deadline,
                _ => {
                    return Err(bad(
                        &annotation,
                        format!(
                            "{value:?} is not one of SCHED_FIFO, SCHED_RR, SCHED_DEADLINE, \
                                 SCHED_OTHER, SCHED_BATCH, SCHED_IDLE"
                        ),
                    ))
                }
            })
        }
    };
    let Some(policy) = policy else {
        return Ok(settings);
    };
    let mut scheduler = Scheduler {
        policy,
        priority: 0,
        nice: 0,
        runtime: 0,
        deadline: 0,
        period: 0,
        execs: matches!(get(SCHED_EXECS), Some((_, "true"))),
    };
    if policy.is_rt() {
        let Some(priority) = priority else {
            return Err(bad(
                SCHED_PRIORITY,
                format!("{} needs a priority, 1..=99", policy.oci_name()),
            ));
        };
        scheduler.priority = i32::try_from(priority).unwrap_or(1);
    } else if priority.is_some() {
        return Err(bad(
            SCHED_PRIORITY,
            format!("{} takes no priority", policy.oci_name()),
        ));
    }
    if let Some(nice) = nice {
        if policy.is_rt() || policy == Policy::Deadline {
            return Err(bad(
                SCHED_NICE,
                format!("{} takes no nice value", policy.oci_name()),
            ));
        }
        scheduler.nice = i32::try_from(nice).unwrap_or(0);
    }
    match (policy, deadline) {
        (Policy::Deadline, None) => {
            return Err(bad(
                SCHED_DEADLINE,
                "SCHED_DEADLINE needs <runtime>/<deadline>/<period> in nanoseconds",
            ))
        }
        (Policy::Deadline, Some((annotation, value))) => {
            let parts: Vec<Option<u64>> = value.split('/').map(|p| p.trim().parse().ok()).collect();
            match parts[..] {
                [Some(runtime), Some(deadline), Some(period)]
                    if runtime >= 1024 && runtime <= deadline && deadline <= period =>
                {
                    scheduler.runtime = runtime;
                    scheduler.deadline = deadline;
                    scheduler.period = period;
                }
                _ => {
                    return Err(bad(
                        &annotation,
                        format!(
                            "{value:?} is not <runtime>/<deadline>/<period> in nanoseconds with \
                             1024 <= runtime <= deadline <= period"
                        ),
                    ))
                }
            }
        }
        (_, Some((annotation, _))) => {
            return Err(bad(&annotation, "only SCHED_DEADLINE takes a deadline"));
        }
        (_, None) => {}
    }
    settings.scheduler = Some(scheduler);
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn nothing_asked_gives_the_default_budget_only() {
        let settings = for_container(&HashMap::new(), "app").expect("valid");
        assert_eq!(
            settings,
            Settings {
                rt_runtime_us: DEFAULT_RT_RUNTIME_US,
                ..Settings::default()
            }
        );
        assert!(!asks_anything(&annotations(&[(ENABLED, "true")])));
        assert!(asks_anything(&annotations(&[(SCHED_NICE, "1")])));
    }

    #[test]
    fn fifo_with_a_priority_rlimits_and_a_budget_and_the_container_scoped_value_wins() {
        let a = annotations(&[
            (SCHED_POLICY, "fifo"),
            (SCHED_PRIORITY, "50"),
            ("realtime.ingot.dev/sched-priority/dpdk", "80"),
            (RLIMIT_MEMLOCK, "unlimited"),
            (RLIMIT_RTPRIO, "90"),
            ("realtime.ingot.dev/rt-runtime-us/dpdk", "250000"),
            ("realtime.ingot.dev/sched-execs/dpdk", "true"),
        ]);
        let dpdk = for_container(&a, "dpdk").expect("valid");
        let scheduler = dpdk.scheduler.expect("scheduler");
        assert_eq!((scheduler.policy, scheduler.priority), (Policy::Fifo, 80));
        assert!(scheduler.execs);
        assert_eq!(dpdk.memlock, Some(None));
        assert_eq!(dpdk.rtprio, Some(90));
        assert_eq!(dpdk.rt_runtime_us, 250_000);
        let other = for_container(&a, "sidecar").expect("valid");
        let scheduler = other.scheduler.expect("scheduler");
        assert_eq!(scheduler.priority, 50);
        assert!(!scheduler.execs);
        assert_eq!(other.rt_runtime_us, DEFAULT_RT_RUNTIME_US);
    }

    #[test]
    fn deadline_nice_and_idle() {
        let a = annotations(&[
            (SCHED_POLICY, "SCHED_DEADLINE"),
            (SCHED_DEADLINE, "500000/1000000/1000000"),
        ]);
        let s = for_container(&a, "x").expect("valid").scheduler.expect("s");
        assert_eq!(
            (s.policy, s.runtime, s.deadline, s.period),
            (Policy::Deadline, 500_000, 1_000_000, 1_000_000)
        );
        let a = annotations(&[(SCHED_NICE, "-5")]);
        let s = for_container(&a, "x").expect("valid").scheduler.expect("s");
        assert_eq!((s.policy, s.nice), (Policy::Other, -5));
        let a = annotations(&[(SCHED_POLICY, "idle")]);
        assert_eq!(
            for_container(&a, "x")
                .expect("valid")
                .scheduler
                .expect("s")
                .policy,
            Policy::Idle
        );
    }

    #[test]
    fn each_malformed_or_contradictory_annotation_is_named() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[(SCHED_POLICY, "fast")], SCHED_POLICY),
            (&[(SCHED_POLICY, "fifo")], SCHED_PRIORITY),
            (
                &[(SCHED_POLICY, "fifo"), (SCHED_PRIORITY, "100")],
                SCHED_PRIORITY,
            ),
            (
                &[(SCHED_POLICY, "rr"), (SCHED_PRIORITY, "x")],
                SCHED_PRIORITY,
            ),
            (&[(SCHED_PRIORITY, "10")], SCHED_POLICY),
            (
                &[(SCHED_POLICY, "other"), (SCHED_PRIORITY, "10")],
                SCHED_PRIORITY,
            ),
            (
                &[
                    (SCHED_POLICY, "fifo"),
                    (SCHED_PRIORITY, "10"),
                    (SCHED_NICE, "1"),
                ],
                SCHED_NICE,
            ),
            (&[(SCHED_NICE, "20")], SCHED_NICE),
            (&[(SCHED_POLICY, "deadline")], SCHED_DEADLINE),
            (
                &[(SCHED_POLICY, "deadline"), (SCHED_DEADLINE, "10/5/1")],
                SCHED_DEADLINE,
            ),
            (
                &[(SCHED_POLICY, "batch"), (SCHED_DEADLINE, "2000/3000/4000")],
                SCHED_DEADLINE,
            ),
            (&[(RLIMIT_MEMLOCK, "lots")], RLIMIT_MEMLOCK),
            (&[(RLIMIT_RTPRIO, "100")], RLIMIT_RTPRIO),
            (&[(RT_RUNTIME_US, "0")], RT_RUNTIME_US),
            (&[(RT_RUNTIME_US, "2000000")], RT_RUNTIME_US),
            (&[("realtime.ingot.dev/sched-polcy", "fifo")], "sched-polcy"),
        ];
        for (pairs, named) in cases {
            let err = for_container(&annotations(pairs), "x").expect_err(&format!("{pairs:?}"));
            assert!(err.to_string().contains(named), "{pairs:?}: {err}");
        }
    }
}
