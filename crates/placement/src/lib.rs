//! Exclusive-CPU and memory-node allocation for ingot's containers.
//!
//! This crate owns the decision of which CPUs (`cpuset.cpus`) and memory nodes (`cpuset.mems`)
//! each container runs on, and nothing else: it reads a [`Topology`](ingot_topology::Topology) discovered elsewhere, never
//! touches the host, and hands back [`Assignment`]s for the runtime to apply.
//!
//! - The kubelet is authoritative: a cpuset it sends is applied exactly ([`Kind::Kubelet`]).
//! - When it sends none, the policy is [`Policy::Exclusive`] and the container is Guaranteed with
//!   integer CPUs ([`guaranteed_integer_cpus`]), ingot picks exclusive CPUs itself
//!   ([`Kind::Exclusive`]): one NUMA node when it fits, near the pod's devices and hugepages,
//!   whole physical cores first, few L3 domains, never a reserved (housekeeping) CPU.
//! - Every other container runs on the shared pool, all online CPUs not held exclusively
//!   ([`Kind::Shared`]); the runtime re-applies the pool to [`Placement::shared_containers`] when
//!   exclusive CPUs come and go, as the kubelet's static CPU manager policy does.
//!
//! The state survives restarts through [`Placement::checkpoint`] and [`Placement::restore`].

use ingot_topology::CpuSet;

mod checkpoint;
mod choose;
mod error;
mod machine;
mod placement;

pub use checkpoint::{read_checkpoint, CheckpointEntry};
pub use error::PlacementError;
pub use placement::Placement;

/// Whether ingot allocates exclusive CPUs itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Every container without a kubelet cpuset runs on the shared pool.
    #[default]
    None,
    /// Guaranteed containers with integer CPUs get CPUs of their own.
    Exclusive,
}

/// The node's placement settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlacementConfig {
    pub policy: Policy,
    /// Housekeeping CPUs (the kubelet's `reservedSystemCPUs`): never exclusive, always shared.
    pub reserved: CpuSet,
}

/// What one container asks for, from its CreateContainer (or UpdateContainerResources) request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    pub pod_id: String,
    pub container_id: String,
    /// The CRI's `cpuset_cpus`; an empty set is the CRI's empty string: none sent.
    pub kubelet_cpus: Option<CpuSet>,
    /// The CRI's `cpuset_mems`; an empty set is none sent.
    pub kubelet_mems: Option<CpuSet>,
    /// Exclusive CPUs wanted; 0 when the container is not eligible (see
    /// [`guaranteed_integer_cpus`]).
    pub exclusive_cpus: u32,
    /// NUMA nodes of the pod's devices: CPUs there are preferred.
    pub numa_affinity: Option<CpuSet>,
    /// NUMA nodes with the requested hugepages free: the memory nodes must be these. Empty means
    /// no node has them, which fails the allocation.
    pub hugepage_nodes: Option<CpuSet>,
}

/// Who decided a container's CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The kubelet sent the cpuset; applied exactly, not counted as exclusive by ingot.
    Kubelet,
    /// Ingot allocated these CPUs to this container alone.
    Exclusive,
    /// The shared pool; changes as exclusive CPUs come and go.
    Shared,
}

/// Where a container runs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Assignment {
    /// `cpuset.cpus`.
    pub cpus: CpuSet,
    /// `cpuset.mems`; empty means all nodes (the cgroup's parent's).
    pub mems: CpuSet,
    pub kind: Kind,
    /// Compromises worth a log line (`not NUMA-aligned: ...`).
    pub notes: Vec<String>,
}

/// Whether a container is Guaranteed with an integer number of CPUs, judged from what the CRI's
/// `LinuxContainerResources` carries (the kubelet turns requests into shares and limits into
/// quota): a CPU limit of whole CPUs (`cpu_quota` a multiple of `cpu_period`), a request equal
/// to it (`cpu_shares == N * 1024`) and a memory limit. Returns the number of CPUs.
pub fn guaranteed_integer_cpus(
    cpu_quota: i64,
    cpu_period: i64,
    cpu_shares: i64,
    memory_limit_in_bytes: i64,
) -> Option<u32> {
    if cpu_quota <= 0 || cpu_period <= 0 || memory_limit_in_bytes <= 0 {
        return None;
    }
    if cpu_quota % cpu_period != 0 {
        return None;
    }
    let cpus = cpu_quota / cpu_period;
    if cpu_shares != cpus.checked_mul(1024)? {
        return None;
    }
    u32::try_from(cpus).ok().filter(|cpus| *cpus > 0)
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;
