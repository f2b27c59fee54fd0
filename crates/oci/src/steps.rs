//! The ordered spec steps every bare-metal feature plugs into. The base spec
//! ([`crate::cri::container_spec`]) is passed through [`STEPS`] in a fixed order (hugepages, then
//! placement, then high-performance tuning; devices and RT join here), at CreateContainer and again at
//! UpdateContainerResources. Each step is a pure function of the CRI request and the discovered
//! node; the only state it touches is the in-memory [`Placement`], whose change the caller
//! checkpoints, and which [`run`] undoes when a later step fails, so a refused request leaves
//! nothing half-allocated.

use ingot_placement::{guaranteed_integer_cpus, Assignment, Kind, Placement, Request};
use ingot_topology::{hugepage_size_name, CpuSet, Topology};
use k8s_cri::v1;
use oci_spec::runtime::{LinuxCpu, LinuxResources, Spec};

use crate::OciError;

/// Whether the steps serve CreateContainer or UpdateContainerResources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Create,
    Update,
}

/// What every step reads.
#[derive(Debug, Clone, Copy)]
pub struct StepInput<'a> {
    pub pod_id: &'a str,
    pub container_id: &'a str,
    /// The request's resources (CreateContainer's `linux.resources`, or the update's).
    pub resources: Option<&'a v1::LinuxContainerResources>,
    /// The host devices the container asks for (empty for an update).
    pub devices: &'a [v1::Device],
    pub node: &'a Topology,
    pub phase: Phase,
    /// The high-performance tuning the pod's annotations ask of this container (parsed and
    /// allowed by its runtime handler), if any.
    pub tuning: Option<&'a ingot_tuning::Tuning>,
    /// The CDI devices the container asks for, resolved from their specs (None for an update).
    pub cdi: Option<&'a ingot_devices::cdi::Resolved>,
    /// PCI functions the container is given otherwise (SR-IOV VFs), for NUMA alignment.
    pub pci_addresses: &'a [String],
    /// What a real-time pod's annotations ask of this container (None: not a real-time pod,
    /// or an update).
    pub realtime: Option<&'a ingot_rt::settings::Settings>,
}

impl StepInput<'_> {
    /// The CPUs of a Guaranteed container with an integer CPU limit (None otherwise).
    fn guaranteed_cpus(&self) -> Option<u32> {
        self.resources.and_then(|r| {
            guaranteed_integer_cpus(
                r.cpu_quota,
                r.cpu_period,
                r.cpu_shares,
                r.memory_limit_in_bytes,
            )
        })
    }
}

/// What the steps decided beside the spec itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepEffects {
    /// Where the container runs, as placement recorded it.
    pub assignment: Option<Assignment>,
    /// NUMA nodes with the requested hugepages free (None: no hugepages asked for).
    pub hugepage_nodes: Option<CpuSet>,
    /// NUMA nodes of the PCI devices the container is given (None: none with a node).
    pub device_nodes: Option<CpuSet>,
    /// Whether placement's shared pool changed, so running shared containers must follow.
    pub shared_pool_changed: bool,
    /// Sentences for the log.
    pub notes: Vec<String>,
    /// The tuning to claim on the container's exclusive CPUs (None: none asked for).
    pub tuning: Option<ingot_tuning::Tuning>,
}

type StepFn =
    fn(&mut Spec, &StepInput<'_>, &mut Placement, &mut StepEffects) -> Result<(), OciError>;

/// The steps, in the order they run.
pub const STEPS: &[(&str, StepFn)] = &[
    ("CDI devices", cdi_devices),
    ("hugepages", hugepages),
    ("device alignment", device_alignment),
    ("placement", placement),
    ("high-performance tuning", tuning),
    ("real time", realtime),
    ("placement environment", placement_environment),
];

/// The environment through which a container with CPUs of its own learns them: its CPUs,
/// memory nodes and the node's housekeeping CPUs (where its own helper threads belong).
pub const CPUS_ENV: &str = "INGOT_CPUS";
pub const MEMS_ENV: &str = "INGOT_MEMS";
pub const HOUSEKEEPING_ENV: &str = "INGOT_HOUSEKEEPING_CPUS";
/// The spec annotation that lets execs keep the container's scheduling class.
pub const EXEC_SCHEDULER_ANNOTATION: &str = ingot_rt::settings::SCHED_EXECS;

/// Runs every step over `spec`. On an error, a container placed by this run is released again.
pub fn run(
    spec: &mut Spec,
    input: &StepInput<'_>,
    placement: &mut Placement,
) -> Result<StepEffects, OciError> {
    let mut effects = StepEffects::default();
    let placed_before = placement.assignment(input.container_id).cloned();
    for (_name, step) in STEPS {
        if let Err(err) = step(spec, input, placement, &mut effects) {
            if input.phase == Phase::Create && placed_before.is_none() {
                placement.release(input.container_id);
            }
            return Err(err);
        }
    }
    Ok(effects)
}

fn resources_mut(spec: &mut Spec) -> &mut LinuxResources {
    let linux = spec.linux_mut().get_or_insert_with(Default::default);
    linux.resources_mut().get_or_insert_with(|| {
        let mut resources = LinuxResources::default();
        resources.set_devices(None);
        resources
    })
}

/// `2MB` → 2048 (KiB); None when it is not a size.
fn page_size_kb(name: &str) -> Option<u64> {
    let split = name.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = name.split_at(split);
    let number: u64 = number.parse().ok()?;
    let factor = match unit.to_ascii_uppercase().as_str() {
        "KB" => 1,
        "MB" => 1 << 10,
        "GB" => 1 << 20,
        _ => return None,
    };
    number.checked_mul(factor)
}

/// Hugepages: a size the node lacks is refused; the memory nodes of a container with hugepages
/// are those that have them free.
fn hugepages(
    spec: &mut Spec,
    input: &StepInput<'_>,
    _placement: &mut Placement,
    effects: &mut StepEffects,
) -> Result<(), OciError> {
    let Some(limits) = resources_mut(spec).hugepage_limits().clone() else {
        return Ok(());
    };
    let field = "linux.resources.hugepage_limits.page_size";
    let sizes = input.node.hugepage_sizes_kb();
    let offered = || {
        if sizes.is_empty() {
            "none".to_string()
        } else {
            sizes
                .iter()
                .map(|kb| hugepage_size_name(*kb))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let mut nodes: Option<CpuSet> = None;
    for limit in &limits {
        let size_kb = page_size_kb(limit.page_size()).ok_or_else(|| OciError::InvalidField {
            field,
            reason: format!("{:?} is not a page size like 2MB or 1GB", limit.page_size()),
        })?;
        if !sizes.contains(&size_kb) {
            if limit.limit() == 0 {
                continue;
            }
            return Err(OciError::InvalidField {
                field,
                reason: format!(
                    "{}: this node has no {} hugepages (it has: {})",
                    limit.page_size(),
                    hugepage_size_name(size_kb),
                    offered()
                ),
            });
        }
        let Ok(limit_bytes) = u64::try_from(limit.limit()) else {
            continue;
        };
        if limit_bytes == 0 {
            continue;
        }
        let pages = limit_bytes.div_ceil(size_kb * 1024);
        let free_on = |enough: bool| -> CpuSet {
            input
                .node
                .numa_nodes
                .iter()
                .filter(|node| {
                    node.hugepages.iter().any(|p| {
                        p.size_kb == size_kb && if enough { p.free >= pages } else { p.free > 0 }
                    })
                })
                .map(|node| node.id)
                .collect()
        };
        // One node that holds them all, else every node with some free.
        let mut with_pages = free_on(true);
        if with_pages.is_empty() {
            with_pages = free_on(false);
        }
        if with_pages.is_empty() {
            effects.notes.push(format!(
                "no NUMA node has {} hugepages free; memory nodes left to placement",
                limit.page_size()
            ));
            continue;
        }
        nodes = Some(match nodes {
            None => with_pages,
            Some(so_far) => {
                let both = so_far.intersection(&with_pages);
                if both.is_empty() {
                    so_far.union(&with_pages)
                } else {
                    both
                }
            }
        });
    }
    effects.hugepage_nodes = nodes;
    Ok(())
}

/// CDI devices: their edits (device nodes with their cgroup rules, mounts, environment, hooks,
/// additional GIDs, network devices) go into the spec before placement reads it.
fn cdi_devices(
    spec: &mut Spec,
    input: &StepInput<'_>,
    _placement: &mut Placement,
    _effects: &mut StepEffects,
) -> Result<(), OciError> {
    match input.cdi {
        Some(resolved) if input.phase == Phase::Create => {
            resolved.inject(spec).map_err(|err| OciError::InvalidField {
                field: "config.CDI_devices",
                reason: err.to_string(),
            })
        }
        _ => Ok(()),
    }
}

/// Real time: the scheduling class and priority, the rlimits, and the cgroup's RT runtime a
/// real-time pod's annotations ask of the container. Execs keep the class only when asked
/// (the spec carries [`EXEC_SCHEDULER_ANNOTATION`] for the exec path to read).
fn realtime(
    spec: &mut Spec,
    input: &StepInput<'_>,
    _placement: &mut Placement,
    _effects: &mut StepEffects,
) -> Result<(), OciError> {
    let Some(settings) = input.realtime.filter(|_| input.phase == Phase::Create) else {
        return Ok(());
    };
    let build = |reason: String| OciError::Build {
        what: "real-time settings",
        reason,
    };
    let mut process = spec.process().clone().unwrap_or_default();
    if let Some(s) = &settings.scheduler {
        let mut value = serde_json::json!({ "policy": s.policy.oci_name() });
        if s.priority != 0 {
            value["priority"] = s.priority.into();
        }
        if s.nice != 0 {
            value["nice"] = s.nice.into();
        }
        if s.period != 0 {
            value["runtime"] = s.runtime.into();
            value["deadline"] = s.deadline.into();
            value["period"] = s.period.into();
        }
        let scheduler = serde_json::from_value(value).map_err(|err| build(err.to_string()))?;
        process.set_scheduler(Some(scheduler));
        if s.execs {
            let mut annotations = spec.annotations().clone().unwrap_or_default();
            annotations.insert(EXEC_SCHEDULER_ANNOTATION.to_string(), "true".to_string());
            spec.set_annotations(Some(annotations));
        }
    }
    let mut rlimits = process.rlimits().clone().unwrap_or_default();
    for (kind, limit) in [
        (
            "RLIMIT_MEMLOCK",
            settings.memlock.map(|l| l.unwrap_or(u64::MAX)),
        ),
        ("RLIMIT_RTPRIO", settings.rtprio),
    ] {
        let Some(limit) = limit else { continue };
        let rlimit: oci_spec::runtime::PosixRlimit =
            serde_json::from_value(serde_json::json!({"type": kind, "hard": limit, "soft": limit}))
                .map_err(|err| build(err.to_string()))?;
        rlimits.retain(|r| r.typ() != rlimit.typ());
        rlimits.push(rlimit);
    }
    if !rlimits.is_empty() {
        process.set_rlimits(Some(rlimits));
    }
    spec.set_process(Some(process));
    if settings.rt_runtime_us > 0 {
        let resources = resources_mut(spec);
        let mut cpu = resources.cpu().clone().unwrap_or_default();
        cpu.set_realtime_runtime(Some(settings.rt_runtime_us));
        resources.set_cpu(Some(cpu));
    }
    Ok(())
}

/// A container with CPUs of its own is told them in its environment.
fn placement_environment(
    spec: &mut Spec,
    input: &StepInput<'_>,
    placement: &mut Placement,
    effects: &mut StepEffects,
) -> Result<(), OciError> {
    if input.phase != Phase::Create {
        return Ok(());
    }
    let Some(assignment) = effects
        .assignment
        .as_ref()
        .filter(|a| matches!(a.kind, Kind::Kubelet | Kind::Exclusive))
    else {
        return Ok(());
    };
    let mems = if assignment.mems.is_empty() {
        input.node.numa_nodes.iter().map(|n| n.id).collect()
    } else {
        assignment.mems.clone()
    };
    let vars = [
        (CPUS_ENV, assignment.cpus.to_string()),
        (MEMS_ENV, mems.to_string()),
        (HOUSEKEEPING_ENV, placement.housekeeping_cpus().to_string()),
    ];
    let mut process = spec.process().clone().unwrap_or_default();
    let mut env = process.env().clone().unwrap_or_default();
    for (key, value) in vars {
        env.retain(|e| !e.starts_with(&format!("{key}=")));
        env.push(format!("{key}={value}"));
    }
    process.set_env(Some(env));
    spec.set_process(Some(process));
    Ok(())
}

/// The IOMMU group a VFIO device node names (`/dev/vfio/<group>`).
fn vfio_group(host_path: &str) -> Option<u32> {
    host_path.strip_prefix("/dev/vfio/")?.parse().ok()
}

/// Device alignment: the NUMA nodes of the PCI functions behind the container's VFIO devices
/// (an SR-IOV VF or a GPU bound to vfio-pci), which placement prefers for its CPUs.
fn device_alignment(
    spec: &mut Spec,
    input: &StepInput<'_>,
    _placement: &mut Placement,
    effects: &mut StepEffects,
) -> Result<(), OciError> {
    // VFIO groups of the CRI's devices and of the device nodes CDI put in; PCI functions CDI
    // specs name (`ingot cdi generate` writes each GPU's).
    let injected = spec
        .linux()
        .as_ref()
        .and_then(|l| l.devices().as_ref())
        .into_iter()
        .flatten()
        .filter_map(|d| d.path().to_str().and_then(vfio_group));
    let groups: Vec<u32> = input
        .devices
        .iter()
        .filter_map(|device| vfio_group(&device.host_path))
        .chain(injected)
        .collect();
    let addresses: Vec<&str> = input
        .cdi
        .iter()
        .flat_map(|r| r.devices.iter())
        .filter_map(|d| d.pci_address.as_deref())
        .chain(input.pci_addresses.iter().map(String::as_str))
        .collect();
    let nodes: CpuSet = input
        .node
        .pci_devices
        .iter()
        .filter(|pci| {
            pci.iommu_group.is_some_and(|group| groups.contains(&group))
                || addresses.contains(&pci.address.as_str())
        })
        .filter_map(|pci| pci.numa_node)
        .collect();
    if !nodes.is_empty() {
        effects.device_nodes = Some(nodes);
    }
    Ok(())
}

fn cpu_list(field: &'static str, list: Option<&String>) -> Result<Option<CpuSet>, OciError> {
    match list.map(|l| l.trim()).filter(|l| !l.is_empty()) {
        None => Ok(None),
        Some(list) => CpuSet::parse(list)
            .map(Some)
            .map_err(|err| OciError::InvalidField {
                field,
                reason: err.to_string(),
            }),
    }
}

/// Placement: the kubelet's cpuset exactly, exclusive CPUs for a Guaranteed container with
/// integer CPUs under the `exclusive` policy, else the shared pool.
fn placement(
    spec: &mut Spec,
    input: &StepInput<'_>,
    placement: &mut Placement,
    effects: &mut StepEffects,
) -> Result<(), OciError> {
    let resources = resources_mut(spec);
    let cpu = resources.cpu().clone().unwrap_or_default();
    let kubelet_cpus = cpu_list("linux.resources.cpuset_cpus", cpu.cpus().as_ref())?;
    let kubelet_mems = cpu_list("linux.resources.cpuset_mems", cpu.mems().as_ref())?;
    let exclusive_cpus = input.guaranteed_cpus().unwrap_or(0);
    let request = Request {
        pod_id: input.pod_id.to_string(),
        container_id: input.container_id.to_string(),
        kubelet_cpus,
        kubelet_mems,
        exclusive_cpus,
        numa_affinity: effects.device_nodes.clone(),
        hugepage_nodes: effects.hugepage_nodes.clone(),
    };
    let pool_before = placement.shared_pool();
    let field = if request.kubelet_cpus.is_some() {
        "linux.resources.cpuset_cpus"
    } else {
        "linux.resources.cpu"
    };
    let assignment = match input.phase {
        Phase::Create => placement.allocate(&request),
        Phase::Update => placement.update(&request),
    }
    .map_err(|source| OciError::Placement { field, source })?;
    effects.shared_pool_changed = placement.shared_pool() != pool_before;
    let mut cpu = cpu;
    // A shared container on a node without exclusive CPUs inherits its parent's cpuset, as it
    // would without ingot's placement.
    let cpus = match assignment.kind {
        Kind::Shared if assignment.cpus == input.node.online() => None,
        _ => Some(assignment.cpus.to_string()),
    };
    let mems = (!assignment.mems.is_empty()).then(|| assignment.mems.to_string());
    cpu.set_cpus(cpus).set_mems(mems);
    if cpu == LinuxCpu::default() {
        resources.set_cpu(None);
    } else {
        resources.set_cpu(Some(cpu));
    }
    effects.notes.extend(assignment.notes.iter().cloned());
    effects.assignment = Some(assignment);
    Ok(())
}

/// CRI-O's high-performance annotations: only for a Guaranteed container with whole CPUs of
/// its own (the kubelet's cpuset or ingot's exclusive placement); `cpu-quota.crio.io: disable`
/// lifts the container's CFS quota (the cgroup's `-1`). The host-side tuning is claimed by the
/// caller with the CPUs placement gave.
fn tuning(
    spec: &mut Spec,
    input: &StepInput<'_>,
    placement: &mut Placement,
    effects: &mut StepEffects,
) -> Result<(), OciError> {
    let Some(tuning) = input.tuning.filter(|t| !t.is_empty()) else {
        return Ok(());
    };
    let guaranteed = input.guaranteed_cpus();
    let exclusive = effects
        .assignment
        .as_ref()
        .is_some_and(|a| matches!(a.kind, Kind::Kubelet | Kind::Exclusive));
    if guaranteed.is_none() || !exclusive {
        return Err(OciError::InvalidField {
            field: "config.annotations",
            reason: format!(
                "{}: container {} is not Guaranteed with whole CPUs of its own",
                annotation_names(tuning).join(", "),
                input.container_id
            ),
        });
    }
    if tuning.quota_off {
        let resources = resources_mut(spec);
        let mut cpu = resources.cpu().clone().unwrap_or_default();
        cpu.set_quota(Some(-1));
        resources.set_cpu(Some(cpu));
    }
    if tuning.shared_cpus {
        shared_cpus(spec, input, placement, effects, tuning.quota_off)?;
    }
    effects.tuning = Some(tuning.clone());
    Ok(())
}

/// CRI-O's environment for a container with shared CPUs beside its own.
pub const ISOLATED_CPUS_ENV: &str = "OPENSHIFT_ISOLATED_CPUS";
pub const SHARED_CPUS_ENV: &str = "OPENSHIFT_SHARED_CPUS";

/// `cpu-shared.crio.io/<container>: enable`, as CRI-O does with its `shared_cpuset`: the
/// container runs on its own CPUs and the node's shared ones (ingot's reserved, housekeeping
/// CPUs, which are never exclusive), its CFS quota grows by a period per shared CPU (unless
/// quota is off), and it learns both sets from CRI-O's variables. Its placement keeps its own
/// CPUs only, so no other container's exclusive CPUs are counted as its.
fn shared_cpus(
    spec: &mut Spec,
    input: &StepInput<'_>,
    placement: &Placement,
    effects: &StepEffects,
    quota_off: bool,
) -> Result<(), OciError> {
    let shared = placement.config().reserved.clone();
    if shared.is_empty() {
        return Err(OciError::InvalidField {
            field: "config.annotations",
            reason: format!(
                "{}: container {} asks for shared CPUs and this node has none: set \
                 placement.reserved (CRI-O's shared_cpuset)",
                ingot_tuning::CPU_SHARED,
                input.container_id
            ),
        });
    }
    let Some(own) = effects.assignment.as_ref().map(|a| a.cpus.clone()) else {
        return Ok(());
    };
    let resources = resources_mut(spec);
    let mut cpu = resources.cpu().clone().unwrap_or_default();
    cpu.set_cpus(Some(own.union(&shared).to_string()));
    if !quota_off {
        if let (Some(quota), Some(period)) = (cpu.quota().filter(|q| *q > 0), cpu.period()) {
            let extra = i64::try_from(shared.len())
                .unwrap_or(i64::MAX)
                .saturating_mul(i64::try_from(period).unwrap_or(i64::MAX));
            cpu.set_quota(Some(quota.saturating_add(extra)));
        }
    }
    resources.set_cpu(Some(cpu));
    let mut process = spec.process().clone().unwrap_or_default();
    let mut env = process.env().clone().unwrap_or_default();
    for (key, value) in [
        (ISOLATED_CPUS_ENV, own.to_string()),
        (SHARED_CPUS_ENV, shared.to_string()),
    ] {
        env.retain(|e| !e.starts_with(&format!("{key}=")));
        env.push(format!("{key}={value}"));
    }
    process.set_env(Some(env));
    spec.set_process(Some(process));
    Ok(())
}

/// The annotations a tuning came from, for messages.
fn annotation_names(tuning: &ingot_tuning::Tuning) -> Vec<&'static str> {
    [
        (tuning.load_balancing_off, ingot_tuning::CPU_LOAD_BALANCING),
        (tuning.quota_off, ingot_tuning::CPU_QUOTA),
        (tuning.irq.is_some(), ingot_tuning::IRQ_LOAD_BALANCING),
        (tuning.c_states.is_some(), ingot_tuning::CPU_C_STATES),
        (tuning.governor.is_some(), ingot_tuning::CPU_FREQ_GOVERNOR),
        (tuning.shared_cpus, ingot_tuning::CPU_SHARED),
    ]
    .into_iter()
    .filter_map(|(asked, name)| asked.then_some(name))
    .collect()
}

#[cfg(test)]
#[path = "steps_tests.rs"]
mod tests;
