//! Synthetic machines for tests, numbered the way Linux numbers x86 servers: every core's first
//! thread first (socket by socket), then every core's second thread, so core `c`'s siblings are
//! `c`, `c + cores`, ...

use ingot_topology::{Cpu, CpuSet, Hugepages, NumaNode, Topology};

/// A machine of `sockets` × `nodes_per_socket` NUMA nodes, each of `l3_per_node` L3 domains of
/// `cores_per_l3` cores with `threads` threads each.
pub(crate) fn machine(
    sockets: u32,
    nodes_per_socket: u32,
    l3_per_node: u32,
    cores_per_l3: u32,
    threads: u32,
) -> Topology {
    let cores_per_node = l3_per_node * cores_per_l3;
    let cores_per_socket = nodes_per_socket * cores_per_node;
    let cores = sockets * cores_per_socket;
    let nodes = sockets * nodes_per_socket;
    let mut cpus = Vec::new();
    for thread in 0..threads {
        for core in 0..cores {
            cpus.push(Cpu {
                id: thread * cores + core,
                core_id: core % cores_per_socket,
                die_id: 0,
                cluster_id: None,
                socket_id: core / cores_per_socket,
                numa_node: core / cores_per_node,
                l3_id: Some(core / cores_per_l3),
                thread_siblings: (0..threads).map(|t| t * cores + core).collect(),
            });
        }
    }
    let numa_nodes = (0..nodes)
        .map(|node| NumaNode {
            id: node,
            cpus: cpus
                .iter()
                .filter(|cpu| cpu.numa_node == node)
                .map(|cpu| cpu.id)
                .collect(),
            memory_total_kb: 16 << 20,
            memory_free_kb: 12 << 20,
            hugepages: vec![Hugepages {
                size_kb: 2048,
                total: 512,
                free: 512,
            }],
            distances: (0..nodes)
                .map(|other| {
                    if other == node {
                        10
                    } else if other / nodes_per_socket == node / nodes_per_socket {
                        12
                    } else {
                        21
                    }
                })
                .collect(),
        })
        .collect();
    Topology {
        cpus,
        isolated: CpuSet::new(),
        nohz_full: CpuSet::new(),
        numa_nodes,
        pci_devices: Vec::new(),
        gpus: Vec::new(),
    }
}

/// Shorthand for a set in list format; panics on a bad literal, which only tests write.
pub(crate) fn set(list: &str) -> CpuSet {
    CpuSet::parse(list).expect("test set literal")
}
