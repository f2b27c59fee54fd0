//! CRI-O's high-performance annotations in ingotd: which containers ask for what (parsed with
//! the pod's runtime handler's `allowed_annotations`), the host brought to what the live ones
//! want (`ingot_tuning::reconcile`, each file's baseline committed to the store before its first
//! write), the cgroup-side effects, and exec CPU affinity. Every change of the set of tuned
//! containers (created, exited, stopped, removed, recovered) reconciles the whole host, so a
//! crash at any point is mended by the next reconcile.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
};

use ingot_topology::CpuSet;
use ingot_tuning::{Claim, Journal, Tuning, TuningError};

use crate::{
    config::{ExecCpuAffinity, RealtimeChecks},
    lifecycle::Manager,
    store::{ContainerRecord, ContainerState, Store},
    CriError,
};

/// Where the tuned host files live: `tuning_root`, else `host_root`.
pub fn root(manager: &Manager) -> PathBuf {
    manager
        .config
        .tuning_root
        .clone()
        .unwrap_or_else(|| manager.config.host_root.clone())
}

fn is_tuning_key(key: &str) -> bool {
    ingot_tuning::ANNOTATIONS.iter().any(|name| {
        key == *name
            || key
                .strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('/'))
    })
}

/// The tuning the pod's annotations ask of `container` (`""`: the pod-wide ones only), refused
/// with InvalidArgument naming the annotation when it is malformed, when the pod's runtime
/// handler is not high-performance, or when the handler does not allow it.
pub fn for_container(
    manager: &Manager,
    handler: &str,
    annotations: &HashMap<String, String>,
    container: &str,
) -> Result<Option<Tuning>, CriError> {
    let Some(present) = annotations.keys().find(|k| is_tuning_key(k)) else {
        return Ok(None);
    };
    let settings = manager.config.runtime_handler(handler).unwrap_or_default();
    if !settings.high_performance {
        return Err(CriError::InvalidArgument {
            field: "config.annotations",
            reason: format!(
                "{present}: runtime handler {handler:?} is not high-performance \
                 (runtimes.<name>.high_performance)"
            ),
        });
    }
    let sorted: BTreeMap<String, String> = annotations
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let tuning =
        ingot_tuning::parse(&sorted, container, &settings.allowed_annotations).map_err(|err| {
            CriError::InvalidArgument {
                field: "config.annotations",
                reason: err.to_string(),
            }
        })?;
    Ok((!tuning.is_empty()).then_some(tuning))
}

/// The annotation that asks for real time on any handler.
pub const REALTIME_ANNOTATION: &str = ingot_rt::settings::ENABLED;

/// Whether a pod needs real time: its handler says so, or its annotation does.
pub fn is_realtime(
    manager: &Manager,
    handler: &str,
    annotations: &HashMap<String, String>,
) -> bool {
    manager
        .config
        .runtime_handler(handler)
        .is_some_and(|h| h.realtime)
        || annotations
            .get(REALTIME_ANNOTATION)
            .is_some_and(|v| v == "true")
}

/// What a pod's `realtime.ingot.dev/` annotations ask of container `name`: None for a pod
/// that is not real-time (where such annotations are refused, naming the first). The budget is
/// left out where the host has no RT group scheduling (cgroup v2, or a kernel without it).
pub fn realtime_settings(
    manager: &Manager,
    is_realtime: bool,
    annotations: &HashMap<String, String>,
    name: &str,
) -> Result<Option<ingot_rt::settings::Settings>, CriError> {
    let invalid = |err: ingot_rt::settings::AnnotationError| CriError::InvalidArgument {
        field: "config.annotations",
        reason: err.to_string(),
    };
    if !is_realtime {
        if let Some(key) = annotations
            .keys()
            .filter(|k| {
                k.starts_with(ingot_rt::settings::PREFIX) && k.as_str() != REALTIME_ANNOTATION
            })
            .min()
        {
            return Err(CriError::InvalidArgument {
                field: "config.annotations",
                reason: format!(
                    "{key}: only a real-time pod (runtime handler `rt`, or \
                     {REALTIME_ANNOTATION}: \"true\") may ask for it"
                ),
            });
        }
        return Ok(None);
    }
    let mut settings = ingot_rt::settings::for_container(annotations, name).map_err(invalid)?;
    clamp_rlimits(&mut settings, name);
    if crate::host::rt_budget::cpu_hierarchy(&manager.config.host_root).is_none() {
        tracing::debug!(
            container = name,
            "no RT group scheduling here: no RT budget"
        );
        settings.rt_runtime_us = 0;
    }
    Ok(Some(settings))
}

/// Whether ingotd holds CAP_SYS_RESOURCE (bit 24 of its effective set), without which no
/// process it starts may have a hard rlimit above its own.
fn has_sys_resource() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let hex = status
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))?
                .trim()
                .to_string();
            u64::from_str_radix(&hex, 16).ok()
        })
        .is_some_and(|caps| caps & (1 << 24) != 0)
}

/// Without CAP_SYS_RESOURCE a raised hard limit would fail the container's start: the rlimits
/// asked for are clamped to ingotd's own hard limits, with a log line.
fn clamp_rlimits(settings: &mut ingot_rt::settings::Settings, name: &str) {
    use nix::sys::resource::{getrlimit, Resource};
    if has_sys_resource() {
        return;
    }
    let own = |resource| getrlimit(resource).ok().map(|(_soft, hard)| hard);
    if let (Some(asked), Some(hard)) = (settings.memlock, own(Resource::RLIMIT_MEMLOCK)) {
        let wanted = asked.unwrap_or(u64::MAX);
        if wanted > hard {
            tracing::warn!(
                container = name,
                asked = wanted,
                limit = hard,
                "RLIMIT_MEMLOCK clamped to ingotd's own: it lacks CAP_SYS_RESOURCE"
            );
            settings.memlock = Some((hard != u64::MAX).then_some(hard));
        }
    }
    if let (Some(asked), Some(hard)) = (settings.rtprio, own(Resource::RLIMIT_RTPRIO)) {
        if asked > hard {
            tracing::warn!(
                container = name,
                asked,
                limit = hard,
                "RLIMIT_RTPRIO clamped to ingotd's own: it lacks CAP_SYS_RESOURCE"
            );
            settings.rtprio = Some(hard);
        }
    }
}

/// A real-time pod is admitted only where the node passes the checks RT pods need
/// (`ingot_rt::REQUIRED_FOR_RT_PODS`, read under the tuning root); FailedPrecondition names
/// each failed check and why.
pub fn admit_realtime(
    manager: &Manager,
    handler: &str,
    config: &k8s_cri::v1::PodSandboxConfig,
) -> Result<(), CriError> {
    let root = root(manager);
    let readiness = ingot_rt::assess(&root).map_err(|err| CriError::FailedPrecondition {
        what: "real-time pod".into(),
        reason: format!("the node's real-time checks could not run: {err}"),
    })?;
    if readiness.passes(ingot_rt::REQUIRED_FOR_RT_PODS) {
        return Ok(());
    }
    let failed: Vec<String> = ingot_rt::REQUIRED_FOR_RT_PODS
        .iter()
        .filter_map(|id| readiness.get(id))
        .filter(|check| check.status != ingot_rt::Status::Pass)
        .map(|check| format!("{} ({})", check.id, check.title))
        .collect();
    let name = config
        .metadata
        .as_ref()
        .map(|m| m.name.as_str())
        .unwrap_or("");
    let checks = manager
        .config
        .runtime_handler(handler)
        .map(|h| h.realtime_checks)
        .unwrap_or_default();
    if checks == RealtimeChecks::Warn {
        tracing::warn!(
            pod = name,
            handler,
            failed = %failed.join("; "),
            "real-time pod admitted on a node that fails real-time checks (realtime_checks = \"warn\")"
        );
        return Ok(());
    }
    Err(CriError::FailedPrecondition {
        what: format!("real-time pod {name:?}"),
        reason: format!(
            "this node cannot run it: {} (`ingot node report` shows the evidence and remedies)",
            failed.join("; ")
        ),
    })
}

/// The store as the tuning journal.
struct StoreJournal<'a>(&'a Store);

fn journal_error(err: CriError) -> TuningError {
    TuningError::journal(err.to_string())
}

impl Journal for StoreJournal<'_> {
    fn baselines(&self) -> Result<BTreeMap<PathBuf, String>, TuningError> {
        self.0.tuning_baselines().map_err(journal_error)
    }

    fn record(&mut self, path: &Path, baseline: &str) -> Result<(), TuningError> {
        self.0
            .record_tuning_baseline(path, baseline)
            .map_err(journal_error)
    }

    fn forget(&mut self, path: &Path) -> Result<(), TuningError> {
        self.0.forget_tuning_baseline(path).map_err(journal_error)
    }
}

/// How often IRQ affinities are checked while a claim steers IRQs.
pub const IRQ_WATCH: std::time::Duration = std::time::Duration::from_secs(10);

/// What `ingot node report` shows: the live claims and what will be restored.
pub const TUNING_MIRROR: &str = "tuning.json";

impl Manager {
    /// The claims of containers that hold their tuning: created or running, with CPUs placed.
    fn claims(&self) -> Vec<Claim> {
        let mut claims: Vec<Claim> = self
            .containers()
            .into_iter()
            .filter(|c| matches!(c.state, ContainerState::Created | ContainerState::Running))
            .filter_map(|c| {
                let tuning = c.tuning.clone()?;
                let cpus = self.assignment(&c.id)?.cpus;
                Some(Claim {
                    owner: c.id,
                    cpus,
                    tuning,
                })
            })
            .collect();
        claims.sort_by(|a, b| a.owner.cmp(&b.owner));
        claims
    }

    /// Brings the host's tuned files to what the live claims want, restoring what no claim
    /// wants any more. Failures are logged: a pod's life does not wait on the host's files.
    pub async fn retune(self: &std::sync::Arc<Self>) {
        let _serial = self.tuning_lock.lock().await;
        let claims = self.claims();
        let baselines = self.store.tuning_baselines().unwrap_or_default();
        if claims.iter().all(|c| !c.tuning.touches_host()) && baselines.is_empty() {
            self.mirror_tuning(&claims);
            return;
        }
        let host = ingot_tuning::Host::new(root(self));
        let manager = std::sync::Arc::clone(self);
        let reconciling = claims.clone();
        let reconciled = tokio::task::spawn_blocking(move || {
            ingot_tuning::reconcile(&host, &reconciling, &mut StoreJournal(&manager.store))
                .map_err(|err| err.to_string())
        })
        .await
        .unwrap_or_else(|err| Err(err.to_string()));
        match reconciled {
            Ok(report) => {
                for (path, value) in &report.written {
                    tracing::info!(file = %path.display(), %value, "tuned");
                }
                for (path, value) in &report.restored {
                    tracing::info!(file = %path.display(), %value, "restored");
                }
                for (path, why) in &report.skipped {
                    tracing::info!(file = %path.display(), %why, "left as it is");
                }
                if report.irqbalance_changed {
                    restart_irqbalance(&root(self)).await;
                }
            }
            Err(err) => tracing::warn!(error = %err, "host tuning not reconciled"),
        }
        self.mirror_tuning(&claims);
    }

    /// At start: baselines recorded before a reboot are dropped (the reboot reset the files),
    /// then the host is reconciled with the containers that survived.
    pub async fn recover_tuning(self: &std::sync::Arc<Self>) {
        let host = ingot_tuning::Host::new(root(self));
        if let Ok(boot_id) = ingot_tuning::boot_id(&host) {
            let recorded = self.store.tuning_boot_id().ok().flatten();
            match ingot_tuning::forget_if_rebooted(
                &host,
                recorded.as_deref(),
                &mut StoreJournal(&self.store),
            ) {
                Ok(true) => tracing::info!("the node rebooted: tuning baselines dropped"),
                Ok(false) => {}
                Err(err) => tracing::warn!(error = %err, "tuning baselines"),
            }
            if let Err(err) = self.store.put_tuning_boot_id(&boot_id) {
                tracing::warn!(error = %err, "tuning boot id");
            }
        }
        self.retune().await;
    }

    /// IRQs come and go (a driver loaded, a VF's MSI-X vectors allocated when it comes up):
    /// while a claim steers IRQs, the host is reconciled every [`IRQ_WATCH`], so a new IRQ is
    /// kept off (or on) the claimed CPUs without irqbalance. Idle otherwise.
    pub fn watch_irqs(self: &std::sync::Arc<Self>) {
        let manager = std::sync::Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(IRQ_WATCH);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(manager) = manager.upgrade() else {
                    return;
                };
                let steers = manager
                    .claims()
                    .iter()
                    .any(|c| c.tuning.irq.is_some() || c.tuning.device_irqs.is_some());
                if steers {
                    manager.retune().await;
                }
            }
        });
    }

    fn mirror_tuning(&self, claims: &[Claim]) {
        let baselines = self.store.tuning_baselines().unwrap_or_default();
        let document = serde_json::json!({
            "claims": claims,
            "baselines": baselines,
        });
        self.write_json_mirror(TUNING_MIRROR, &document);
    }

    /// The CPU exec'd processes of `container` are held to under its handler's
    /// `exec_cpu_affinity = "first"`: the first of its own CPUs (None: all of its CPUs).
    pub fn exec_cpu(&self, container: &ContainerRecord) -> Option<u32> {
        let pod = self.pod(&container.pod_id).ok()?;
        let handler = self.config.runtime_handler(&pod.runtime_handler)?;
        if handler.exec_cpu_affinity != ExecCpuAffinity::First {
            return None;
        }
        let assignment = self.assignment(&container.id)?;
        if assignment.kind == ingot_placement::Kind::Shared {
            return None;
        }
        // With shared CPUs beside its own, execs go to the first shared one (as CRI-O 1.34).
        if container.tuning.as_ref().is_some_and(|t| t.shared_cpus) {
            if let Some(shared) = self.config.placement.reserved.first() {
                return Some(shared);
            }
        }
        assignment.cpus.first()
    }
}

/// irqbalance reads its banned CPUs at start: restarted where systemd runs it, as CRI-O does.
/// Only for the node's own files (a test's tuning root is nobody's irqbalance).
async fn restart_irqbalance(root: &Path) {
    if root != Path::new("/") {
        return;
    }
    let restarted = tokio::process::Command::new("systemctl")
        .args(["try-restart", "irqbalance.service"])
        .stdin(std::process::Stdio::null())
        .output()
        .await;
    match restarted {
        Ok(output) if output.status.success() => tracing::info!("irqbalance restarted"),
        Ok(output) => tracing::info!(
            stderr = %String::from_utf8_lossy(&output.stderr).trim(),
            "irqbalance not restarted; its banned CPUs apply when it next starts"
        ),
        Err(err) => tracing::info!(error = %err, "no systemctl to restart irqbalance with"),
    }
}

/// The cgroup side of a tuned container, once its cgroups exist: `cpu-load-balancing` turns
/// the scheduler's balancing off in its cpuset (v1 `cpuset.sched_load_balance`, v2 an isolated
/// partition) and `cpu-quota` lifts the pod cgroup's quota too (the container's is lifted in
/// its spec). Only cgroups of this container and its pod are written.
pub fn apply_cgroups(
    host_root: &Path,
    pod_parent: &str,
    container: &str,
    tuning: &Tuning,
    shared_cpus: usize,
) {
    let mount = crate::host::cgroups::cgroup_mount(host_root);
    let relative = pod_parent.trim_start_matches('/');
    let unified = mount.join("cgroup.controllers").exists();
    let mut writes: Vec<(PathBuf, String)> = Vec::new();
    if tuning.load_balancing_off {
        if unified {
            isolate(&mount, &mount.join(relative).join(container), container);
        } else {
            writes.push((
                mount
                    .join("cpuset")
                    .join(relative)
                    .join(container)
                    .join("cpuset.sched_load_balance"),
                "0".into(),
            ));
        }
    }
    if tuning.quota_off {
        if unified {
            writes.push((mount.join(relative).join("cpu.max"), "max".into()));
        } else if let Some(dir) = v1_cpu_dir(&mount, relative) {
            writes.push((dir.join("cpu.cfs_quota_us"), "-1".into()));
        }
    }
    // `cpu-shared`: the pod's quota grows by a period per shared CPU, as the container's did in
    // its spec, or the pod's limit would throttle what the shared CPUs add (CRI-O does the same).
    if tuning.shared_cpus && !tuning.quota_off && shared_cpus > 0 {
        writes.extend(raised_pod_quota(&mount, relative, unified, shared_cpus));
    }
    for (file, value) in writes {
        match std::fs::write(&file, &value) {
            Ok(()) => tracing::info!(%container, file = %file.display(), value, "cgroup tuned"),
            Err(err) => {
                tracing::warn!(%container, file = %file.display(), error = %err, "cgroup not tuned")
            }
        }
    }
}

/// The v1 cpu hierarchy's directory of the cgroup at `relative` (`cpu,cpuacct` where the two
/// are mounted together, else `cpu`), where it has a CFS quota file.
fn v1_cpu_dir(mount: &Path, relative: &str) -> Option<PathBuf> {
    ["cpu,cpuacct", "cpu"]
        .iter()
        .map(|hierarchy| mount.join(hierarchy).join(relative))
        .find(|dir| dir.join("cpu.cfs_quota_us").exists())
}

/// The pod cgroup's CFS quota file and its value raised by `cpus` periods; None where it has
/// no quota (unlimited) or no such file.
fn raised_pod_quota(
    mount: &Path,
    relative: &str,
    unified: bool,
    cpus: usize,
) -> Option<(PathBuf, String)> {
    let cpus = u64::try_from(cpus).ok()?;
    if unified {
        let file = mount.join(relative).join("cpu.max");
        let text = std::fs::read_to_string(&file).ok()?;
        let (quota, period) = text.trim().split_once(' ')?;
        let (quota, period) = (quota.parse::<u64>().ok()?, period.parse::<u64>().ok()?);
        let raised = quota.saturating_add(cpus.saturating_mul(period));
        return Some((file, format!("{raised} {period}")));
    }
    let dir = v1_cpu_dir(mount, relative)?;
    let read = |name: &str| -> Option<i64> {
        std::fs::read_to_string(dir.join(name))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    let (quota, period) = (read("cpu.cfs_quota_us")?, read("cpu.cfs_period_us")?);
    if quota <= 0 {
        return None;
    }
    let extra = i64::try_from(cpus).ok()?.saturating_mul(period);
    Some((
        dir.join("cpu.cfs_quota_us"),
        quota.saturating_add(extra).to_string(),
    ))
}

/// The cgroup directories from the first below the root of `mount` down to `dir`.
fn path_below_root(mount: &Path, dir: &Path) -> Vec<PathBuf> {
    let mut path = mount.to_path_buf();
    let relative = dir.strip_prefix(mount).unwrap_or(dir);
    relative
        .components()
        .map(|component| {
            path.push(component);
            path.clone()
        })
        .collect()
}

fn read_cpus(file: &Path) -> CpuSet {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|text| CpuSet::parse(text.trim()).ok())
        .unwrap_or_default()
}

/// cgroup v2: the container's cgroup becomes an isolated (remote) cpuset partition, where the
/// scheduler neither balances load nor runs unbound work. The kernel (6.7 on) wants the CPUs
/// in `cpuset.cpus.exclusive` of the cgroup and of every ancestor below the root first; each
/// ancestor gets them added to what it had, and [`release_partition`] takes them back.
fn isolate(mount: &Path, dir: &Path, container: &str) {
    let cpus = read_cpus(&dir.join("cpuset.cpus.effective"));
    if cpus.is_empty() {
        tracing::warn!(%container, cgroup = %dir.display(), "no CPUs to isolate");
        return;
    }
    for cgroup in path_below_root(mount, dir) {
        let file = cgroup.join("cpuset.cpus.exclusive");
        let want = read_cpus(&file).union(&cpus);
        if let Err(err) = std::fs::write(&file, format!("{want}\n")) {
            tracing::warn!(%container, file = %file.display(), error = %err, "CPUs not made exclusive; no partition");
            release_partition_at(mount, dir, &cpus);
            return;
        }
    }
    let partition = dir.join("cpuset.cpus.partition");
    let state = std::fs::write(&partition, "isolated")
        .map_err(|err| err.to_string())
        .and_then(|()| std::fs::read_to_string(&partition).map_err(|err| err.to_string()));
    match state {
        // An invalid partition names why (`isolated invalid (<reason>)`).
        Ok(state) if state.trim() == "isolated" => {
            tracing::info!(%container, cgroup = %dir.display(), %cpus, "isolated cpuset partition")
        }
        Ok(state) => {
            tracing::warn!(%container, cgroup = %dir.display(), state = %state.trim(), "cpuset partition not isolated")
        }
        Err(err) => {
            tracing::warn!(%container, file = %partition.display(), error = %err, "cpuset partition not isolated")
        }
    }
}

/// Gives back the exclusive CPUs a removed container's partition held: each ancestor below the
/// root, deepest first, loses those of `cpus` that none of its children still holds. A no-op
/// on cgroup v1, and where nothing was made exclusive.
pub fn release_partition(host_root: &Path, pod_parent: &str, container: &str, cpus: &CpuSet) {
    let mount = crate::host::cgroups::cgroup_mount(host_root);
    if !mount.join("cgroup.controllers").exists() || cpus.is_empty() {
        return;
    }
    let dir = mount
        .join(pod_parent.trim_start_matches('/'))
        .join(container);
    release_partition_at(&mount, &dir, cpus);
}

fn release_partition_at(mount: &Path, dir: &Path, cpus: &CpuSet) {
    for cgroup in path_below_root(mount, dir).iter().rev() {
        let file = cgroup.join("cpuset.cpus.exclusive");
        let Ok(had) = std::fs::read_to_string(&file) else {
            continue; // gone with the container, or no cpuset here
        };
        let had = CpuSet::parse(had.trim()).unwrap_or_default();
        let held: CpuSet = std::fs::read_dir(cgroup)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|entry| entry.file_type().is_ok_and(|t| t.is_dir()))
            .map(|entry| read_cpus(&entry.path().join("cpuset.cpus.exclusive")))
            .fold(CpuSet::new(), |all, child| all.union(&child));
        let want = had.difference(&cpus.difference(&held));
        if want != had {
            // A newline: an empty write would not reach the kernel.
            if let Err(err) = std::fs::write(&file, format!("{want}\n")) {
                tracing::warn!(file = %file.display(), error = %err, "exclusive CPUs not given back");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuning_keys_pod_wide_and_per_container() {
        assert!(is_tuning_key("cpu-quota.crio.io"));
        assert!(is_tuning_key("cpu-quota.crio.io/app"));
        assert!(!is_tuning_key("cpu-quota.crio.iox"));
        assert!(!is_tuning_key("io.kubernetes.cri.sandbox-id"));
    }

    #[test]
    fn a_v2_partition_makes_its_cpus_exclusive_up_the_tree_and_gives_them_back() {
        let root = tempfile::tempdir().expect("tempdir");
        let mount = root.path().join("sys/fs/cgroup");
        let container = mount.join("pods/p1/c1");
        let other = mount.join("pods/p2/c2");
        for dir in [&container, &other] {
            std::fs::create_dir_all(dir).expect("mkdir");
        }
        std::fs::write(mount.join("cgroup.controllers"), "cpuset cpu").expect("write");
        std::fs::write(container.join("cpuset.cpus.effective"), "2\n").expect("write");
        std::fs::write(container.join("cpuset.cpus.partition"), "member\n").expect("write");
        // Another pod's partition holds CPU 3 under the same parent.
        for dir in [mount.join("pods"), mount.join("pods/p2"), other.clone()] {
            std::fs::write(dir.join("cpuset.cpus.exclusive"), "3\n").expect("write");
        }
        let tuning = Tuning {
            load_balancing_off: true,
            ..Default::default()
        };
        apply_cgroups(root.path(), "/pods/p1", "c1", &tuning, 0);
        let read = |p: PathBuf| std::fs::read_to_string(p).expect("read");
        assert_eq!(read(mount.join("pods/cpuset.cpus.exclusive")), "2-3\n");
        assert_eq!(read(mount.join("pods/p1/cpuset.cpus.exclusive")), "2\n");
        assert_eq!(read(container.join("cpuset.cpus.exclusive")), "2\n");
        assert_eq!(read(container.join("cpuset.cpus.partition")), "isolated");

        // The container's cgroup goes; its CPU is given back, the other pod's stays.
        std::fs::remove_dir_all(&container).expect("rm");
        let cpus = CpuSet::parse("2").expect("cpus");
        release_partition(root.path(), "/pods/p1", "c1", &cpus);
        assert_eq!(read(mount.join("pods/p1/cpuset.cpus.exclusive")), "\n");
        assert_eq!(read(mount.join("pods/cpuset.cpus.exclusive")), "3\n");
        assert_eq!(read(other.join("cpuset.cpus.exclusive")), "3\n");
        // On v1 there is nothing to give back.
        std::fs::remove_file(mount.join("cgroup.controllers")).expect("rm");
        release_partition(
            root.path(),
            "/pods/p2",
            "c2",
            &CpuSet::parse("3").expect("cpus"),
        );
        assert_eq!(read(mount.join("pods/cpuset.cpus.exclusive")), "3\n");
    }

    #[test]
    fn shared_cpus_raise_the_pods_quota_on_v1_and_v2() {
        let root = tempfile::tempdir().expect("tempdir");
        let mount = root.path().join("sys/fs/cgroup");
        let cpu = mount.join("cpu,cpuacct/pods/p1");
        std::fs::create_dir_all(&cpu).expect("cpu");
        std::fs::write(cpu.join("cpu.cfs_quota_us"), "200000\n").expect("write");
        std::fs::write(cpu.join("cpu.cfs_period_us"), "100000\n").expect("write");
        let tuning = Tuning {
            shared_cpus: true,
            ..Default::default()
        };
        apply_cgroups(root.path(), "/pods/p1", "c1", &tuning, 1);
        let read = |p: PathBuf| std::fs::read_to_string(p).expect("read");
        assert_eq!(read(cpu.join("cpu.cfs_quota_us")), "300000");
        // Unlimited stays unlimited.
        std::fs::write(cpu.join("cpu.cfs_quota_us"), "-1\n").expect("write");
        apply_cgroups(root.path(), "/pods/p1", "c1", &tuning, 1);
        assert_eq!(read(cpu.join("cpu.cfs_quota_us")), "-1\n");

        let v2 = tempfile::tempdir().expect("tempdir");
        let mount = v2.path().join("sys/fs/cgroup");
        std::fs::create_dir_all(mount.join("pods/p1")).expect("mkdir");
        std::fs::write(mount.join("cgroup.controllers"), "cpu").expect("write");
        std::fs::write(mount.join("pods/p1/cpu.max"), "100000 100000\n").expect("write");
        apply_cgroups(v2.path(), "/pods/p1", "c1", &tuning, 2);
        assert_eq!(read(mount.join("pods/p1/cpu.max")), "300000 100000");
    }

    #[test]
    fn cgroup_files_of_a_tuned_container_on_v1() {
        let root = tempfile::tempdir().expect("tempdir");
        let mount = root.path().join("sys/fs/cgroup");
        let cpuset = mount.join("cpuset/pods/p1/c1");
        let cpu = mount.join("cpu,cpuacct/pods/p1");
        std::fs::create_dir_all(&cpuset).expect("cpuset");
        std::fs::create_dir_all(&cpu).expect("cpu");
        std::fs::write(cpuset.join("cpuset.sched_load_balance"), "1").expect("write");
        std::fs::write(cpu.join("cpu.cfs_quota_us"), "200000").expect("write");
        let tuning = Tuning {
            load_balancing_off: true,
            quota_off: true,
            ..Default::default()
        };
        apply_cgroups(root.path(), "/pods/p1", "c1", &tuning, 0);
        let read = |p: PathBuf| std::fs::read_to_string(p).expect("read");
        assert_eq!(read(cpuset.join("cpuset.sched_load_balance")), "0");
        assert_eq!(read(cpu.join("cpu.cfs_quota_us")), "-1");
    }
}
