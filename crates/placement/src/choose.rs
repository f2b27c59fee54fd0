//! Which free CPUs an exclusive request gets. Pure: a function of the machine, the free CPUs and
//! the request's preferences.
//!
//! In order of importance: as few NUMA nodes as possible (one when it fits, preferring the nodes
//! of the pod's devices, then the nodes with its hugepages); within the chosen nodes, whole
//! physical cores so no other workload shares a core with the container; as few L3 domains as
//! possible; then the lowest ids, so the same state always gives the same answer.

use std::{cmp::Reverse, collections::BTreeMap};

use ingot_topology::CpuSet;

use crate::machine::Machine;

/// What the choice should lean towards; neither is a hard constraint.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Preferences<'a> {
    /// NUMA nodes of the pod's devices.
    pub numa_affinity: Option<&'a CpuSet>,
    /// NUMA nodes the container's memory will come from (the kubelet's mems, or the nodes with
    /// its hugepages free).
    pub memory_nodes: Option<&'a CpuSet>,
}

impl Preferences<'_> {
    /// Sort key part: preferred nodes sort first.
    fn rank(&self, node: u32) -> (bool, bool) {
        let outside = |nodes: Option<&CpuSet>| nodes.is_some_and(|nodes| !nodes.contains(node));
        (outside(self.numa_affinity), outside(self.memory_nodes))
    }
}

/// `count` CPUs out of `free`, or None when `free` has fewer. The caller decides how many of the
/// free CPUs may be taken at all (the shared pool keeps one).
pub(crate) fn choose_exclusive(
    machine: &Machine,
    free: &CpuSet,
    count: usize,
    preferences: Preferences<'_>,
) -> Option<CpuSet> {
    if count == 0 || count > free.len() {
        return None;
    }
    let node_free: Vec<(u32, CpuSet)> = machine
        .node_cpus
        .iter()
        .map(|(node, cpus)| (*node, cpus.intersection(free)))
        .filter(|(_, cpus)| !cpus.is_empty())
        .collect();
    let nodes = choose_nodes(machine, &node_free, count, preferences)?;
    let mut chosen = CpuSet::new();
    // Nodes are filled in the order chosen: the preferred ones whole, the last one for the rest.
    for node in nodes {
        let remaining = count - chosen.len();
        if remaining == 0 {
            break;
        }
        let pool = node_free
            .iter()
            .find(|(id, _)| *id == node)
            .map(|(_, cpus)| cpus.clone())
            .unwrap_or_default();
        chosen = chosen.union(&choose_within(machine, &pool, remaining.min(pool.len())));
    }
    (chosen.len() == count).then_some(chosen)
}

/// The NUMA nodes to take CPUs from, in filling order.
fn choose_nodes(
    machine: &Machine,
    node_free: &[(u32, CpuSet)],
    count: usize,
    preferences: Preferences<'_>,
) -> Option<Vec<u32>> {
    // One node when any can hold the whole request: preferred nodes first, then the node that
    // gives the most whole cores, then the tightest fit so large holes stay for large requests.
    let single = node_free
        .iter()
        .filter(|(_, cpus)| cpus.len() >= count)
        .min_by_key(|(node, cpus)| {
            (
                preferences.rank(*node),
                Reverse(whole_core_coverage(machine, cpus, count)),
                cpus.len(),
                *node,
            )
        });
    if let Some((node, _)) = single {
        return Some(vec![*node]);
    }

    // Otherwise the fewest nodes: the smallest k whose k largest nodes hold the request.
    let mut sizes: Vec<usize> = node_free.iter().map(|(_, cpus)| cpus.len()).collect();
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    let mut total = 0;
    let needed_nodes = sizes.iter().position(|size| {
        total += size;
        total >= count
    })? + 1;

    // Then greedily the most preferred node that still lets k nodes hold the request: near the
    // nodes already chosen (same socket before the other one), larger before smaller.
    let mut chosen: Vec<u32> = Vec::new();
    let mut chosen_size = 0;
    let mut remaining: Vec<(u32, usize)> = node_free
        .iter()
        .map(|(node, cpus)| (*node, cpus.len()))
        .collect();
    while chosen.len() < needed_nodes {
        let slots_after = needed_nodes - chosen.len() - 1;
        let feasible = |candidate: &(u32, usize)| {
            let mut others: Vec<usize> = remaining
                .iter()
                .filter(|(node, _)| *node != candidate.0)
                .map(|(_, size)| *size)
                .collect();
            others.sort_unstable_by(|a, b| b.cmp(a));
            let best_rest: usize = others.iter().take(slots_after).sum();
            chosen_size + candidate.1 + best_rest >= count
        };
        let next = remaining
            .iter()
            .filter(|candidate| feasible(candidate))
            .min_by_key(|(node, size)| {
                let distance: u32 = chosen
                    .iter()
                    .map(|other| machine.distance(*other, *node))
                    .sum();
                (preferences.rank(*node), distance, Reverse(*size), *node)
            })
            .copied()?;
        chosen.push(next.0);
        chosen_size += next.1;
        remaining.retain(|(node, _)| *node != next.0);
    }
    Some(chosen)
}

/// How many of `count` CPUs whole cores in `pool` can cover (larger cores first, as they are
/// taken).
fn whole_core_coverage(machine: &Machine, pool: &CpuSet, count: usize) -> usize {
    let mut sizes: Vec<usize> = machine
        .full_cores_in(pool)
        .map(|core| core.cpus.len())
        .collect();
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    sizes.into_iter().fold(0, |covered, size| {
        if covered + size <= count {
            covered + size
        } else {
            covered
        }
    })
}

/// Free-CPU counts of one L3 domain within a pool.
#[derive(Debug, Default, Clone, Copy)]
struct Domain {
    /// CPUs in whole free cores.
    whole: usize,
    /// All free CPUs.
    free: usize,
}

/// `count` CPUs out of `pool` (all on one node): whole cores first, from as few L3 domains as
/// possible, lowest ids first; single threads only for what whole cores cannot cover.
fn choose_within(machine: &Machine, pool: &CpuSet, count: usize) -> CpuSet {
    if count >= pool.len() {
        return pool.clone();
    }
    let mut domains: BTreeMap<Option<u32>, Domain> = BTreeMap::new();
    for core in machine.full_cores_in(pool) {
        domains.entry(core.l3).or_default().whole += core.cpus.len();
    }
    for cpu in pool.iter() {
        domains.entry(machine.l3_of(cpu)).or_default().free += 1;
    }
    let target = whole_core_coverage(machine, pool, count);
    let domain_order = order_domains(&domains, target, count);
    let rank = |l3: Option<u32>| {
        domain_order
            .iter()
            .position(|domain| *domain == l3)
            .unwrap_or(domain_order.len())
    };

    // Whole cores: the best domains first, larger cores first, lowest ids first.
    let mut cores: Vec<&CpuSet> = Vec::new();
    let mut whole_cores: Vec<_> = machine.full_cores_in(pool).collect();
    whole_cores.sort_by_key(|core| (rank(core.l3), Reverse(core.cpus.len()), core.cpus.first()));
    let mut taken = 0;
    for core in whole_cores {
        if taken + core.cpus.len() <= count {
            taken += core.cpus.len();
            cores.push(&core.cpus);
        }
    }
    let mut chosen: CpuSet = cores.into_iter().flat_map(CpuSet::iter).collect();

    // Single threads for the rest: in a domain already used, then from cores already broken up
    // (keeping whole cores whole for the next request), then the lowest ids.
    let used_domains: Vec<Option<u32>> = chosen.iter().map(|cpu| machine.l3_of(cpu)).collect();
    let mut threads: Vec<u32> = pool.difference(&chosen).iter().collect();
    threads.sort_by_key(|cpu| {
        let l3 = machine.l3_of(*cpu);
        (
            !used_domains.contains(&l3),
            machine.core_is_full_in(*cpu, pool),
            rank(l3),
            *cpu,
        )
    });
    let missing = count.saturating_sub(chosen.len());
    chosen.extend(threads.into_iter().take(missing));
    chosen
}

/// L3 domains in the order whole cores are taken from them: the fewest that cover `target`
/// CPUs in whole cores (one when one can, the tightest fit, preferring one that also holds the
/// odd threads), then the rest, fuller first.
fn order_domains(
    domains: &BTreeMap<Option<u32>, Domain>,
    target: usize,
    count: usize,
) -> Vec<Option<u32>> {
    let mut by_whole: Vec<(Option<u32>, Domain)> =
        domains.iter().map(|(l3, domain)| (*l3, *domain)).collect();
    by_whole.sort_by_key(|(l3, domain)| (Reverse(domain.whole), *l3));
    let single = domains
        .iter()
        .filter(|(_, domain)| domain.whole >= target)
        .min_by_key(|(l3, domain)| (domain.free < count, domain.whole, **l3))
        .map(|(l3, _)| *l3);
    let mut order: Vec<Option<u32>> = single.into_iter().collect();
    order.extend(
        by_whole
            .into_iter()
            .map(|(l3, _)| l3)
            .filter(|l3| Some(*l3) != single),
    );
    order
}
