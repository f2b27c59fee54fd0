//! What can fail, with messages that name the field and the offending ids, so a refused
//! CreateContainer tells the operator what to change.

use ingot_topology::CpuSet;

/// Everything placement can refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("the topology has no online CPUs")]
    NoOnlineCpus,
    #[error(
        "reserved CPUs \"{reserved}\": {} (online: {online})",
        not_online("CPU", offline)
    )]
    ReservedNotOnline {
        reserved: CpuSet,
        offline: CpuSet,
        online: CpuSet,
    },
    #[error(
        "cpuset_cpus \"{requested}\": {} (online: {online})",
        not_online("CPU", offline)
    )]
    KubeletCpusNotOnline {
        requested: CpuSet,
        offline: CpuSet,
        online: CpuSet,
    },
    #[error(
        "cpuset_mems \"{requested}\": {} (nodes: {nodes})",
        not_a_node(unknown)
    )]
    KubeletMemsUnknown {
        requested: CpuSet,
        unknown: CpuSet,
        nodes: CpuSet,
    },
    #[error(
        "hugepage nodes \"{requested}\": {} (nodes: {nodes})",
        not_a_node(unknown)
    )]
    HugepageNodesUnknown {
        requested: CpuSet,
        unknown: CpuSet,
        nodes: CpuSet,
    },
    #[error("no NUMA node has the requested hugepages free")]
    NoHugepageNodes,
    #[error("{}", insufficient(*requested, free, *available))]
    InsufficientCpus {
        requested: u32,
        /// Every CPU not reserved and not exclusive.
        free: CpuSet,
        /// How many of `free` may be taken: one fewer when, with no reserved CPUs, the last free
        /// CPU has to stay in the shared pool.
        available: usize,
    },
    #[error(
        "container {container_id:?} cannot have CPUs {cpus} back: another container holds them"
    )]
    Taken { container_id: String, cpus: CpuSet },
    #[error("container {container_id:?} has no placement")]
    UnknownContainer { container_id: String },
    #[error("placement checkpoint: {reason}")]
    Checkpoint { reason: String },
}

/// `CPU 5 is not online` / `CPUs 5-6 are not online`.
fn not_online(what: &str, ids: &CpuSet) -> String {
    if ids.len() == 1 {
        format!("{what} {ids} is not online")
    } else {
        format!("{what}s {ids} are not online")
    }
}

/// `node 3 is not a NUMA node` / `nodes 3-4 are not NUMA nodes`.
fn not_a_node(ids: &CpuSet) -> String {
    if ids.len() == 1 {
        format!("node {ids} is not a NUMA node")
    } else {
        format!("nodes {ids} are not NUMA nodes")
    }
}

/// `2 exclusive CPUs requested, 1 free (1)`.
fn insufficient(requested: u32, free: &CpuSet, available: usize) -> String {
    let noun = if requested == 1 { "CPU" } else { "CPUs" };
    let list = if free.is_empty() {
        "none".to_string()
    } else {
        free.to_string()
    };
    let kept = if available < free.len() {
        ", one kept for the shared pool"
    } else {
        ""
    };
    format!("{requested} exclusive {noun} requested, {available} free ({list}{kept})")
}
