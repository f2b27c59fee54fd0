//! Random sequences of allocate / update / release on random machines, checking after every step
//! what must always hold: no CPU in two exclusive sets, none shared or reserved, whole cores when
//! they are there to take, failures that change nothing, and a checkpoint that loses nothing.

use ingot_topology::{CpuSet, Topology};
use proptest::prelude::*;

use crate::{testing::machine, Kind, Placement, PlacementConfig, Policy, Request};

#[derive(Debug, Clone)]
struct Shape {
    sockets: u32,
    nodes_per_socket: u32,
    l3_per_node: u32,
    cores_per_l3: u32,
    threads: u32,
}

impl Shape {
    fn topology(&self) -> Topology {
        machine(
            self.sockets,
            self.nodes_per_socket,
            self.l3_per_node,
            self.cores_per_l3,
            self.threads,
        )
    }
}

fn shape() -> impl Strategy<Value = Shape> {
    (1..=2u32, 1..=2u32, 1..=2u32, 1..=3u32, 1..=2u32).prop_map(
        |(sockets, nodes_per_socket, l3_per_node, cores_per_l3, threads)| Shape {
            sockets,
            nodes_per_socket,
            l3_per_node,
            cores_per_l3,
            threads,
        },
    )
}

/// Raw ids, mapped onto the machine when the op runs: modulo one more than the machine has, so
/// some name a CPU or node that does not exist.
type Ids = Vec<u32>;

#[derive(Debug, Clone)]
enum Op {
    Allocate {
        container: u8,
        pod: u8,
        exclusive_cpus: u32,
        kubelet_cpus: Option<Ids>,
        kubelet_mems: Option<Ids>,
        numa_affinity: Option<Ids>,
        hugepage_nodes: Option<Ids>,
    },
    Update {
        container: u8,
        kubelet_cpus: Option<Ids>,
        kubelet_mems: Option<Ids>,
    },
    Release {
        container: u8,
    },
    ReleasePod {
        pod: u8,
    },
}

/// Mostly absent, as on a real node.
fn sometimes_ids() -> impl Strategy<Value = Option<Ids>> {
    prop_oneof![
        3 => Just(None),
        1 => proptest::collection::vec(0..64u32, 0..4).prop_map(Some),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (
            0..8u8,
            0..3u8,
            prop_oneof![4 => 0..=6u32, 1 => 7..=40u32],
            sometimes_ids(),
            sometimes_ids(),
            sometimes_ids(),
            sometimes_ids(),
        )
            .prop_map(
                |(container, pod, exclusive_cpus, kubelet_cpus, kubelet_mems, numa_affinity, hugepage_nodes)| {
                    Op::Allocate {
                        container,
                        pod,
                        exclusive_cpus,
                        kubelet_cpus,
                        kubelet_mems,
                        numa_affinity,
                        hugepage_nodes,
                    }
                }
            ),
        2 => (0..8u8, sometimes_ids(), sometimes_ids()).prop_map(
            |(container, kubelet_cpus, kubelet_mems)| Op::Update {
                container,
                kubelet_cpus,
                kubelet_mems,
            }
        ),
        2 => (0..8u8).prop_map(|container| Op::Release { container }),
        1 => (0..3u8).prop_map(|pod| Op::ReleasePod { pod }),
    ]
}

/// `ids` mapped into `0..=limit` (so `limit` itself is out of range when the ids are `0..limit`).
fn map_ids(ids: &Option<Ids>, limit: usize) -> Option<CpuSet> {
    let modulus = u32::try_from(limit + 1).unwrap_or(u32::MAX);
    ids.as_ref()
        .map(|ids| ids.iter().map(|id| id % modulus).collect())
}

struct World {
    topology: Topology,
    config: PlacementConfig,
    placement: Placement,
    online: CpuSet,
    nodes: usize,
    smt2: bool,
}

impl World {
    fn request(&self, container: u8, pod: u8) -> Request {
        Request {
            pod_id: format!("pod-{pod}"),
            container_id: format!("c{container}"),
            ..Request::default()
        }
    }

    /// Whether some node has `count / 2` whole cores free: then an even request must get only
    /// whole cores.
    fn whole_cores_available(&self, count: usize) -> bool {
        let free = self
            .online
            .difference(&self.config.reserved)
            .difference(&self.placement.exclusive_cpus());
        let mut whole_per_node = std::collections::BTreeMap::<u32, usize>::new();
        for cpu in &self.topology.cpus {
            let core = &cpu.thread_siblings;
            // Count each core once, by its first thread.
            if core.first() == Some(cpu.id) && core.is_subset(&free) {
                *whole_per_node.entry(cpu.numa_node).or_default() += 1;
            }
        }
        whole_per_node.values().any(|cores| *cores * 2 >= count)
    }

    fn whole_cores_only(&self, cpus: &CpuSet) -> bool {
        cpus.iter().all(|id| {
            self.topology
                .cpu(id)
                .is_some_and(|cpu| cpu.thread_siblings.is_subset(cpus))
        })
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let before = self.placement.clone();
        match op {
            Op::Allocate {
                container,
                pod,
                exclusive_cpus,
                kubelet_cpus,
                kubelet_mems,
                numa_affinity,
                hugepage_nodes,
            } => {
                let request = Request {
                    exclusive_cpus: *exclusive_cpus,
                    kubelet_cpus: map_ids(kubelet_cpus, self.online.len()),
                    kubelet_mems: map_ids(kubelet_mems, self.nodes),
                    numa_affinity: map_ids(numa_affinity, self.nodes),
                    hugepage_nodes: map_ids(hugepage_nodes, self.nodes),
                    ..self.request(*container, *pod)
                };
                let existing = before.assignment(&request.container_id).cloned();
                let count = usize::try_from(*exclusive_cpus).unwrap_or(usize::MAX);
                let plain_exclusive = existing.is_none()
                    && self.config.policy == Policy::Exclusive
                    && count > 0
                    && request.kubelet_cpus.as_ref().is_none_or(CpuSet::is_empty)
                    && request.kubelet_mems.as_ref().is_none_or(CpuSet::is_empty)
                    && request.numa_affinity.is_none()
                    && request.hugepage_nodes.is_none();
                let free = self
                    .online
                    .difference(&self.config.reserved)
                    .difference(&before.exclusive_cpus());
                // Without reserved CPUs the shared pool keeps one of the free CPUs.
                let available = if self.config.reserved.is_empty() {
                    free.len().saturating_sub(1)
                } else {
                    free.len()
                };
                let expect_whole = plain_exclusive
                    && self.smt2
                    && count % 2 == 0
                    && count <= available
                    && self.whole_cores_available(count);
                match self.placement.allocate(&request) {
                    Ok(assignment) => {
                        if let Some(existing) = existing {
                            prop_assert_eq!(&assignment, &existing, "idempotent");
                            prop_assert_eq!(&self.placement, &before);
                        } else {
                            match assignment.kind {
                                Kind::Exclusive => {
                                    prop_assert_eq!(assignment.cpus.len(), count);
                                    prop_assert!(assignment.cpus.is_subset(&free));
                                    prop_assert!(!assignment.mems.is_empty());
                                }
                                Kind::Kubelet => {
                                    prop_assert_eq!(
                                        Some(&assignment.cpus),
                                        request.kubelet_cpus.as_ref()
                                    );
                                }
                                Kind::Shared => {
                                    prop_assert!(self.config.policy == Policy::None || count == 0);
                                }
                            }
                            if expect_whole {
                                prop_assert_eq!(assignment.kind, Kind::Exclusive);
                                prop_assert!(
                                    self.whole_cores_only(&assignment.cpus),
                                    "{} is not whole cores",
                                    assignment.cpus
                                );
                            }
                        }
                    }
                    Err(_) => {
                        prop_assert!(!expect_whole, "refused although whole cores were free");
                        prop_assert_eq!(
                            &self.placement,
                            &before,
                            "a failed allocate changes nothing"
                        );
                    }
                }
            }
            Op::Update {
                container,
                kubelet_cpus,
                kubelet_mems,
            } => {
                let request = Request {
                    kubelet_cpus: map_ids(kubelet_cpus, self.online.len()),
                    kubelet_mems: map_ids(kubelet_mems, self.nodes),
                    ..self.request(*container, 0)
                };
                match self.placement.update(&request) {
                    Ok(assignment) => {
                        if let Some(cpus) = request.kubelet_cpus.filter(|cpus| !cpus.is_empty()) {
                            prop_assert_eq!(&assignment.cpus, &cpus);
                            prop_assert_eq!(assignment.kind, Kind::Kubelet);
                        }
                        prop_assert_eq!(
                            self.placement.assignment(&request.container_id),
                            Some(&assignment)
                        );
                    }
                    Err(_) => {
                        prop_assert_eq!(&self.placement, &before, "a failed update changes nothing")
                    }
                }
            }
            Op::Release { container } => {
                let id = format!("c{container}");
                let released = self.placement.release(&id);
                prop_assert_eq!(released.as_ref(), before.assignment(&id));
                prop_assert!(self.placement.assignment(&id).is_none());
            }
            Op::ReleasePod { pod } => {
                let released = self.placement.release_pod(&format!("pod-{pod}"));
                for id in released {
                    prop_assert!(before.assignment(&id).is_some());
                    prop_assert!(self.placement.assignment(&id).is_none());
                }
            }
        }
        self.check_invariants()
    }

    fn check_invariants(&self) -> Result<(), TestCaseError> {
        let placement = &self.placement;
        let mut seen = CpuSet::new();
        for (id, assignment) in placement.assignments() {
            if assignment.kind == Kind::Exclusive {
                prop_assert!(
                    assignment.cpus.is_disjoint(&seen),
                    "{id}: {} already exclusive",
                    assignment.cpus
                );
                seen = seen.union(&assignment.cpus);
            }
        }
        let exclusive = placement.exclusive_cpus();
        let shared = placement.shared_pool();
        prop_assert_eq!(&seen, &exclusive);
        prop_assert!(exclusive.is_disjoint(&shared));
        prop_assert!(exclusive.is_disjoint(&self.config.reserved));
        prop_assert_eq!(exclusive.union(&shared), self.online.clone());
        prop_assert!(!shared.is_empty());
        let housekeeping = placement.housekeeping_cpus();
        prop_assert!(!housekeeping.is_empty() && housekeeping.is_subset(&shared));
        for id in placement.shared_containers() {
            prop_assert_eq!(
                placement.assignment(&id).map(|assignment| &assignment.cpus),
                Some(&shared)
            );
        }

        // A restart loses nothing.
        let restored =
            Placement::restore(&self.topology, self.config.clone(), &placement.checkpoint());
        prop_assert!(restored.is_ok(), "{:?}", restored.err());
        if let Ok((restored, dropped)) = restored {
            prop_assert!(dropped.is_empty(), "{:?}", dropped);
            prop_assert_eq!(&restored, placement);
        }
        Ok(())
    }
}

proptest! {
    #[test]
    fn random_sequences_keep_every_invariant(
        shape in shape(),
        exclusive_policy in prop::bool::weighted(0.85),
        reserved in proptest::collection::vec(0..64u32, 0..3),
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        let topology = shape.topology();
        let online = topology.online();
        let modulus = u32::try_from(online.len()).unwrap_or(u32::MAX).max(1);
        let config = PlacementConfig {
            policy: if exclusive_policy { Policy::Exclusive } else { Policy::None },
            reserved: reserved.iter().map(|id| id % modulus).collect(),
        };
        let placement = Placement::new(&topology, config.clone());
        prop_assert!(placement.is_ok());
        if let Ok(placement) = placement {
            let mut world = World {
                nodes: topology.numa_nodes.len(),
                smt2: shape.threads == 2,
                online,
                config,
                placement,
                topology,
            };
            for op in &ops {
                world.apply(op)?;
            }
        }
    }
}
