//! [`discover`]: the whole node read under one root, the parts put together. What ties them
//! together lives here: each CPU's NUMA node is the node whose list holds it.

use std::path::Path;

use crate::{cpus, numa, pci, sysfs::malformed, Gpu, NumaNode, Topology, TopologyError};

/// Reads the node under `root` (`/` in production, a fixture tree in tests): online CPUs, their
/// isolation, NUMA nodes with memory and hugepages, PCI functions and GPUs. Only reads.
///
/// A required file that is missing or unreadable gives [`TopologyError::Read`], one whose
/// contents do not parse [`TopologyError::Malformed`], both naming the full path. Files that
/// only some kernels or devices have give their defaults where absent.
pub fn discover(root: &Path) -> Result<Topology, TopologyError> {
    let online = cpus::read_online(root)?;
    let numa_nodes = numa::read_numa_nodes(root, &online)?;
    let cpus = online
        .iter()
        .map(|id| cpus::read_cpu(root, id, numa_node_of(root, id, &numa_nodes)?))
        .collect::<Result<Vec<_>, _>>()?;
    let pci_devices = pci::read_pci_devices(root)?;
    let gpus = pci_devices
        .iter()
        .filter_map(Gpu::from_pci_device)
        .collect();
    Ok(Topology {
        cpus,
        isolated: cpus::read_isolated(root)?,
        nohz_full: cpus::read_nohz_full(root)?,
        numa_nodes,
        pci_devices,
        gpus,
    })
}

/// The node whose CPU list holds `cpu`. An online CPU in no node's list would be placed
/// nowhere (or, guessed, on the wrong memory), so it is an error rather than a default.
fn numa_node_of(root: &Path, cpu: u32, nodes: &[NumaNode]) -> Result<u32, TopologyError> {
    nodes
        .iter()
        .find(|node| node.cpus.contains(cpu))
        .map(|node| node.id)
        .ok_or_else(|| {
            malformed(
                &root.join("sys/devices/system/node"),
                format!("online CPU {cpu} is in no node's cpulist"),
            )
        })
}

/// Reads the NUMA nodes' memory and hugepages again (free counts change as pods come and go),
/// keeping the rest of `topology` as discovered.
pub fn refresh_memory(root: &Path, topology: &mut Topology) -> Result<(), TopologyError> {
    topology.numa_nodes = numa::read_numa_nodes(root, &topology.online())?;
    Ok(())
}
