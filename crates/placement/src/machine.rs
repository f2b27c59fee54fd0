//! The parts of a [`Topology`] the allocator reads, indexed once: which node each CPU is on, which
//! CPUs form one physical core, which L3 cache a core shares, and how far nodes are from each
//! other. Built defensively: sysfs can disagree with itself (a sibling list naming an offline CPU,
//! two CPUs listing different siblings), and nothing here may panic on that.

use std::collections::BTreeMap;

use ingot_topology::{CpuSet, Topology};

/// The distance the kernel reports from a node to itself, used where a distance table is missing.
const LOCAL_DISTANCE: u32 = 10;
/// The distance the kernel's default table gives a remote node, used where the table is missing.
const REMOTE_DISTANCE: u32 = 20;

/// One physical core: the online hardware threads that share it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Core {
    pub cpus: CpuSet,
    /// The L3 domain of its first thread (None where the machine reports no L3).
    pub l3: Option<u32>,
}

/// The allocator's view of a node's CPUs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Machine {
    pub online: CpuSet,
    pub isolated: CpuSet,
    /// NUMA node ids valid in `cpuset.mems`: the nodes the topology lists plus any a CPU names.
    pub node_ids: CpuSet,
    /// Online CPUs per NUMA node (only nodes that have some).
    pub node_cpus: BTreeMap<u32, CpuSet>,
    cpu_node: BTreeMap<u32, u32>,
    /// Disjoint, ordered by their lowest CPU id.
    pub cores: Vec<Core>,
    /// Each online CPU's index in `cores`.
    core_of: BTreeMap<u32, usize>,
    distances: BTreeMap<u32, Vec<u32>>,
}

impl Machine {
    pub fn new(topology: &Topology) -> Self {
        let online = topology.online();
        let mut cpu_node = BTreeMap::new();
        let mut cpu_l3 = BTreeMap::new();
        let mut node_cpus: BTreeMap<u32, CpuSet> = BTreeMap::new();
        // A CPU listed twice keeps its first entry, as `Topology::cpu` does.
        for cpu in &topology.cpus {
            if cpu_node.contains_key(&cpu.id) {
                continue;
            }
            cpu_node.insert(cpu.id, cpu.numa_node);
            cpu_l3.insert(cpu.id, cpu.l3_id);
            node_cpus.entry(cpu.numa_node).or_default().insert(cpu.id);
        }
        let mut node_ids: CpuSet = topology.numa_nodes.iter().map(|node| node.id).collect();
        node_ids.extend(node_cpus.keys().copied());
        let distances = topology
            .numa_nodes
            .iter()
            .map(|node| (node.id, node.distances.clone()))
            .collect();
        let cores: Vec<Core> = group_cores(topology, &online)
            .into_iter()
            .map(|cpus| {
                let l3 = cpus
                    .first()
                    .and_then(|id| cpu_l3.get(&id).copied().flatten());
                Core { cpus, l3 }
            })
            .collect();
        let core_of = cores
            .iter()
            .enumerate()
            .flat_map(|(index, core)| core.cpus.iter().map(move |id| (id, index)))
            .collect();
        Self {
            online,
            isolated: topology.isolated.clone(),
            node_ids,
            node_cpus,
            cpu_node,
            cores,
            core_of,
            distances,
        }
    }

    /// The NUMA nodes the given CPUs are on.
    pub fn nodes_of(&self, cpus: &CpuSet) -> CpuSet {
        cpus.iter()
            .filter_map(|id| self.cpu_node.get(&id).copied())
            .collect()
    }

    /// The kernel's distance from node `from` to node `to`, with the kernel's defaults where the
    /// topology has no table.
    pub fn distance(&self, from: u32, to: u32) -> u32 {
        let reported = usize::try_from(to).ok().and_then(|index| {
            self.distances
                .get(&from)
                .and_then(|row| row.get(index).copied())
        });
        match reported {
            Some(distance) => distance,
            None if from == to => LOCAL_DISTANCE,
            None => REMOTE_DISTANCE,
        }
    }

    /// The cores whose online threads are all in `pool`: the ones that can be handed out whole.
    pub fn full_cores_in<'a>(&'a self, pool: &'a CpuSet) -> impl Iterator<Item = &'a Core> + 'a {
        self.cores
            .iter()
            .filter(move |core| core.cpus.is_subset(pool))
    }

    fn core(&self, cpu: u32) -> Option<&Core> {
        self.core_of
            .get(&cpu)
            .and_then(|index| self.cores.get(*index))
    }

    /// Whether `cpu`'s whole core is in `pool`.
    pub fn core_is_full_in(&self, cpu: u32, pool: &CpuSet) -> bool {
        self.core(cpu).is_some_and(|core| core.cpus.is_subset(pool))
    }

    /// The L3 domain of `cpu`'s core.
    pub fn l3_of(&self, cpu: u32) -> Option<u32> {
        self.core(cpu).and_then(|core| core.l3)
    }
}

/// Groups online CPUs into physical cores from their sibling lists. Sibling lists are treated as
/// a symmetric relation and merged transitively, so a list that disagrees with its siblings' still
/// yields disjoint cores; offline siblings are ignored.
fn group_cores(topology: &Topology, online: &CpuSet) -> Vec<CpuSet> {
    let mut cores: Vec<CpuSet> = Vec::new();
    for cpu in &topology.cpus {
        let mut core = cpu.thread_siblings.intersection(online);
        core.insert(cpu.id);
        // Every existing core sharing a thread with this list is the same core.
        let (overlapping, mut rest): (Vec<CpuSet>, Vec<CpuSet>) = cores
            .into_iter()
            .partition(|existing| !existing.is_disjoint(&core));
        for existing in overlapping {
            core = core.union(&existing);
        }
        rest.push(core);
        cores = rest;
    }
    cores.sort_by_key(CpuSet::first);
    cores
}
