//! Read-only discovery of a node's hardware under a root path (`/` in production, a fixture tree
//! in tests): online CPUs with their thread siblings, core, die, cluster, socket, NUMA node and L3
//! cache; isolated and nohz_full CPUs; memory and hugepages per NUMA node; PCI devices with their
//! NUMA node, driver, IOMMU group and SR-IOV links; GPUs by vendor. Nothing here decides anything:
//! placement, RT checks and device injection read the [`Topology`] this crate returns.

use std::path::PathBuf;

mod cpus;
mod cpuset;
mod discover;
mod numa;
mod pci;
mod sysfs;

pub use cpuset::{CpuSet, MAX_ID};
pub use discover::{discover, refresh_memory};

/// Everything that can go wrong reading a node.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("invalid CPU list {list:?}: {reason}")]
    InvalidList { list: String, reason: String },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed {path}: {reason}")]
    Malformed { path: PathBuf, reason: String },
}

/// One logical CPU (a hardware thread).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Cpu {
    pub id: u32,
    /// `topology/core_id`: unique only within a socket (and die).
    pub core_id: u32,
    /// `topology/die_id` (0 where the kernel has no die level).
    pub die_id: u32,
    /// `topology/cluster_id` (None where absent).
    pub cluster_id: Option<u32>,
    /// `topology/physical_package_id`.
    pub socket_id: u32,
    /// The NUMA node whose `cpulist` holds this CPU (0 on a kernel without NUMA).
    pub numa_node: u32,
    /// The id of its L3 cache (`cache/index*/level == 3`, `id`; None where there is no L3).
    pub l3_id: Option<u32>,
    /// `topology/thread_siblings_list`: the CPUs sharing its physical core, itself included.
    pub thread_siblings: CpuSet,
}

/// Pages of one size on one NUMA node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Hugepages {
    /// Page size in KiB (2048, 1048576).
    pub size_kb: u64,
    pub total: u64,
    pub free: u64,
}

impl Hugepages {
    /// The size as the CRI and cgroup files name it: `2MB`, `1GB`, `64KB`.
    pub fn size_name(&self) -> String {
        hugepage_size_name(self.size_kb)
    }
}

/// `2048` → `2MB`, `1048576` → `1GB`, `64` → `64KB` (the kernel's hugetlb cgroup names).
pub fn hugepage_size_name(size_kb: u64) -> String {
    if size_kb >= 1 << 20 && size_kb % (1 << 20) == 0 {
        format!("{}GB", size_kb >> 20)
    } else if size_kb >= 1 << 10 && size_kb % (1 << 10) == 0 {
        format!("{}MB", size_kb >> 10)
    } else {
        format!("{size_kb}KB")
    }
}

/// One NUMA node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NumaNode {
    pub id: u32,
    /// Online CPUs of this node.
    pub cpus: CpuSet,
    /// `MemTotal` / `MemFree` of `nodeN/meminfo`, in KiB.
    pub memory_total_kb: u64,
    pub memory_free_kb: u64,
    /// One entry per hugepage size the node offers, smallest first.
    pub hugepages: Vec<Hugepages>,
    /// `nodeN/distance`: distance to node i at index i.
    pub distances: Vec<u32>,
}

/// What a PCI function is used for, from its class code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PciClass {
    Network,
    Display,
    Storage,
    Accelerator,
    Other,
}

/// One PCI function (`/sys/bus/pci/devices/<address>`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PciDevice {
    /// `0000:3b:00.0`.
    pub address: String,
    /// `vendor`, `device` as 4 lowercase hex digits without `0x`.
    pub vendor: String,
    pub device: String,
    /// `class` as 6 hex digits without `0x` (`020000`).
    pub class_code: String,
    pub class: PciClass,
    /// `numa_node`; None where the file says -1 or is absent.
    pub numa_node: Option<u32>,
    /// The name of the bound driver (the `driver` link's last component).
    pub driver: Option<String>,
    /// The `iommu_group` link's last component.
    pub iommu_group: Option<u32>,
    /// Network interfaces under `net/`.
    pub netdevs: Vec<String>,
    /// For a VF: the PF's address (`physfn` link).
    pub physfn: Option<String>,
    /// For a PF: its VFs' addresses (`virtfnN` links, by N).
    pub virtfns: Vec<String>,
    /// `sriov_totalvfs` / `sriov_numvfs` for a PF.
    pub sriov_totalvfs: Option<u32>,
    pub sriov_numvfs: Option<u32>,
}

/// GPU vendors ingot knows by PCI vendor id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GpuVendor {
    Nvidia,
    Amd,
    Intel,
}

/// A GPU: a display or 3D-controller PCI function of a known vendor.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Gpu {
    pub vendor: GpuVendor,
    pub address: String,
    pub numa_node: Option<u32>,
    pub driver: Option<String>,
}

/// A node, as discovered.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Topology {
    /// Online CPUs, by id.
    pub cpus: Vec<Cpu>,
    /// `/sys/devices/system/cpu/isolated` (isolcpus=).
    pub isolated: CpuSet,
    /// `/sys/devices/system/cpu/nohz_full`.
    pub nohz_full: CpuSet,
    /// NUMA nodes with memory or CPUs, by id (one node 0 on a kernel without NUMA).
    pub numa_nodes: Vec<NumaNode>,
    pub pci_devices: Vec<PciDevice>,
    pub gpus: Vec<Gpu>,
}

impl Topology {
    /// The online CPUs as a set.
    pub fn online(&self) -> CpuSet {
        self.cpus.iter().map(|cpu| cpu.id).collect()
    }

    pub fn cpu(&self, id: u32) -> Option<&Cpu> {
        self.cpus.iter().find(|cpu| cpu.id == id)
    }

    pub fn numa_node(&self, id: u32) -> Option<&NumaNode> {
        self.numa_nodes.iter().find(|node| node.id == id)
    }

    /// Hugepage sizes offered by any node, in KiB.
    pub fn hugepage_sizes_kb(&self) -> Vec<u64> {
        let mut sizes: Vec<u64> = self
            .numa_nodes
            .iter()
            .flat_map(|node| node.hugepages.iter().map(|pages| pages.size_kb))
            .collect();
        sizes.sort_unstable();
        sizes.dedup();
        sizes
    }
}
