//! The allocator's state: one assignment per container, the shared pool derived from them.

use std::collections::BTreeMap;

use ingot_topology::{CpuSet, Topology};

use crate::{
    choose::{choose_exclusive, Preferences},
    machine::Machine,
    Assignment, Kind, PlacementConfig, PlacementError, Policy, Request,
};

/// One container's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub pod_id: String,
    pub assignment: Assignment,
}

/// The CPUs and memory nodes of every container ingot runs on a node.
///
/// Every method either succeeds and updates the state, or fails and leaves it as it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub(crate) machine: Machine,
    pub(crate) config: PlacementConfig,
    /// By container id, so every listing comes out in the same order.
    pub(crate) containers: BTreeMap<String, Record>,
}

impl Placement {
    /// An empty placement. The reserved CPUs must be online: a typo there would otherwise let
    /// exclusive containers take the housekeeping CPUs.
    pub fn new(topology: &Topology, config: PlacementConfig) -> Result<Self, PlacementError> {
        let machine = Machine::new(topology);
        if machine.online.is_empty() {
            return Err(PlacementError::NoOnlineCpus);
        }
        let offline = config.reserved.difference(&machine.online);
        if !offline.is_empty() {
            return Err(PlacementError::ReservedNotOnline {
                reserved: config.reserved.clone(),
                offline,
                online: machine.online.clone(),
            });
        }
        Ok(Self {
            machine,
            config,
            containers: BTreeMap::new(),
        })
    }

    pub fn config(&self) -> &PlacementConfig {
        &self.config
    }

    /// Places a new container. Asking again for a container already placed returns its
    /// assignment unchanged (CreateContainer retried after a timeout must not allocate twice).
    pub fn allocate(&mut self, request: &Request) -> Result<Assignment, PlacementError> {
        if let Some(record) = self.containers.get(&request.container_id) {
            return Ok(record.assignment.clone());
        }
        let assignment = self.plan(request)?;
        self.containers.insert(
            request.container_id.clone(),
            Record {
                pod_id: request.pod_id.clone(),
                assignment: assignment.clone(),
            },
        );
        if assignment.kind == Kind::Exclusive {
            self.refresh_shared();
        }
        Ok(assignment)
    }

    /// UpdateContainerResources: a kubelet cpuset replaces the recorded one exactly (and CPUs
    /// the container held exclusively go back to the shared pool); kubelet mems alone replace
    /// the mems; with neither, the assignment stays as it is.
    pub fn update(&mut self, request: &Request) -> Result<Assignment, PlacementError> {
        let Some(record) = self.containers.get(&request.container_id) else {
            return Err(PlacementError::UnknownContainer {
                container_id: request.container_id.clone(),
            });
        };
        let kubelet_cpus = self.kubelet_cpus(request)?;
        let kubelet_mems = self.kubelet_mems(request)?;
        let mut next = record.assignment.clone();
        match (kubelet_cpus, kubelet_mems) {
            (None, None) => return Ok(next),
            (None, Some(mems)) => next.mems = mems,
            (Some(cpus), kubelet_mems) => {
                let from_kubelet = kubelet_mems.is_some();
                let (memory_nodes, mut notes) = self.memory_nodes(request, kubelet_mems)?;
                let cpu_nodes = self.machine.nodes_of(&cpus);
                let mems = local_mems(&cpus, cpu_nodes, memory_nodes, from_kubelet, &mut notes);
                next = self.kubelet_assignment(&request.container_id, cpus, mems, notes);
            }
        }
        let freed_exclusive =
            record.assignment.kind == Kind::Exclusive && next.kind != Kind::Exclusive;
        if let Some(record) = self.containers.get_mut(&request.container_id) {
            record.assignment = next.clone();
        }
        if freed_exclusive {
            self.refresh_shared();
        }
        Ok(next)
    }

    /// Forgets a container; its exclusive CPUs, if any, return to the shared pool.
    pub fn release(&mut self, container_id: &str) -> Option<Assignment> {
        let record = self.containers.remove(container_id)?;
        if record.assignment.kind == Kind::Exclusive {
            self.refresh_shared();
        }
        Some(record.assignment)
    }

    /// Puts a container's assignment back as it was (an update or a removal that could not be
    /// completed), unless its exclusive CPUs went to another container meanwhile.
    pub fn reinstate(
        &mut self,
        container_id: &str,
        pod_id: &str,
        assignment: Assignment,
    ) -> Result<(), PlacementError> {
        if assignment.kind == Kind::Exclusive {
            let held = self.exclusive_cpus_except(Some(container_id));
            let taken = assignment.cpus.intersection(&held);
            if !taken.is_empty() {
                return Err(PlacementError::Taken {
                    container_id: container_id.to_string(),
                    cpus: taken,
                });
            }
        }
        self.containers.insert(
            container_id.to_string(),
            Record {
                pod_id: pod_id.to_string(),
                assignment,
            },
        );
        self.refresh_shared();
        Ok(())
    }

    /// Forgets every container of a pod (StopPodSandbox, RemovePodSandbox); returns their ids.
    pub fn release_pod(&mut self, pod_id: &str) -> Vec<String> {
        let released: Vec<String> = self
            .containers
            .iter()
            .filter(|(_, record)| record.pod_id == pod_id)
            .map(|(id, _)| id.clone())
            .collect();
        let mut freed_exclusive = false;
        for id in &released {
            if let Some(record) = self.containers.remove(id) {
                freed_exclusive |= record.assignment.kind == Kind::Exclusive;
            }
        }
        if freed_exclusive {
            self.refresh_shared();
        }
        released
    }

    pub fn assignment(&self, container_id: &str) -> Option<&Assignment> {
        self.containers
            .get(container_id)
            .map(|record| &record.assignment)
    }

    /// Every container's assignment, by container id.
    pub fn assignments(&self) -> impl Iterator<Item = (&str, &Assignment)> + '_ {
        self.containers
            .iter()
            .map(|(id, record)| (id.as_str(), &record.assignment))
    }

    /// The union of the CPUs ingot allocated exclusively (kubelet cpusets are not counted).
    pub fn exclusive_cpus(&self) -> CpuSet {
        self.exclusive_cpus_except(None)
    }

    /// The exclusive CPUs of every container but `container_id`: a container the kubelet moves
    /// onto its own exclusive CPUs overlaps no one.
    fn exclusive_cpus_except(&self, container_id: Option<&str>) -> CpuSet {
        self.containers
            .iter()
            .filter(|(id, _)| Some(id.as_str()) != container_id)
            .map(|(_, record)| record)
            .filter(|record| record.assignment.kind == Kind::Exclusive)
            .fold(CpuSet::new(), |all, record| {
                all.union(&record.assignment.cpus)
            })
    }

    /// Online CPUs not held exclusively: where shared containers run. Never empty: allocation
    /// keeps a CPU here when there are no reserved CPUs to fall back on.
    pub fn shared_pool(&self) -> CpuSet {
        self.machine.online.difference(&self.exclusive_cpus())
    }

    /// Where the runtime's own threads and per-pod helpers (shims, pause) belong: the reserved
    /// CPUs when configured, else the shared pool without the isolated CPUs, else — when those
    /// are all exclusive or isolated — the shared pool. Never empty.
    pub fn housekeeping_cpus(&self) -> CpuSet {
        if !self.config.reserved.is_empty() {
            return self.config.reserved.clone();
        }
        let shared = self.shared_pool();
        let housekeeping = shared.difference(&self.machine.isolated);
        if housekeeping.is_empty() {
            shared
        } else {
            housekeeping
        }
    }

    /// Containers whose cpuset follows the shared pool: re-apply [`Self::shared_pool`] to these
    /// after an exclusive allocation or release.
    pub fn shared_containers(&self) -> Vec<String> {
        self.containers
            .iter()
            .filter(|(_, record)| record.assignment.kind == Kind::Shared)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// The assignment a new container would get; changes nothing.
    fn plan(&self, request: &Request) -> Result<Assignment, PlacementError> {
        let kubelet_cpus = self.kubelet_cpus(request)?;
        let kubelet_mems = self.kubelet_mems(request)?;
        let from_kubelet = kubelet_mems.is_some();
        let (memory_nodes, mut notes) = self.memory_nodes(request, kubelet_mems)?;
        if let Some(cpus) = kubelet_cpus {
            let cpu_nodes = self.machine.nodes_of(&cpus);
            let mems = local_mems(&cpus, cpu_nodes, memory_nodes, from_kubelet, &mut notes);
            return Ok(self.kubelet_assignment(&request.container_id, cpus, mems, notes));
        }
        if self.config.policy == Policy::Exclusive && request.exclusive_cpus > 0 {
            return self.plan_exclusive(request, memory_nodes, from_kubelet, notes);
        }
        Ok(Assignment {
            cpus: self.shared_pool(),
            // Empty: the cgroup's parent's nodes, i.e. all of them.
            mems: memory_nodes.unwrap_or_default(),
            kind: Kind::Shared,
            notes,
        })
    }

    /// The nodes a container's memory must come from when something dictates them: the kubelet's
    /// mems (authoritative: hugepage nodes then only earn a note), else the nodes with its
    /// hugepages free. None when the container may use any node.
    fn memory_nodes(
        &self,
        request: &Request,
        kubelet_mems: Option<CpuSet>,
    ) -> Result<(Option<CpuSet>, Vec<String>), PlacementError> {
        let Some(mems) = kubelet_mems else {
            return Ok((self.hugepage_nodes(request)?, Vec::new()));
        };
        let notes = match self.hugepage_nodes(request) {
            Ok(Some(hugepages)) if mems.is_disjoint(&hugepages) => vec![format!(
                "kubelet cpuset_mems {mems} has none of the hugepage nodes {hugepages}"
            )],
            _ => Vec::new(),
        };
        Ok((Some(mems), notes))
    }

    fn plan_exclusive(
        &self,
        request: &Request,
        memory_nodes: Option<CpuSet>,
        from_kubelet: bool,
        mut notes: Vec<String>,
    ) -> Result<Assignment, PlacementError> {
        let free = self
            .machine
            .online
            .difference(&self.config.reserved)
            .difference(&self.exclusive_cpus());
        // Without reserved CPUs the shared pool is the free CPUs: one has to stay for the
        // containers (and the runtime) that run there.
        let available = if self.config.reserved.is_empty() {
            free.len().saturating_sub(1)
        } else {
            free.len()
        };
        let requested = request.exclusive_cpus;
        let count = usize::try_from(requested).unwrap_or(usize::MAX);
        let insufficient = || PlacementError::InsufficientCpus {
            requested,
            free: free.clone(),
            available,
        };
        if count > available {
            return Err(insufficient());
        }
        let preferences = Preferences {
            numa_affinity: request.numa_affinity.as_ref(),
            memory_nodes: memory_nodes.as_ref(),
        };
        let cpus =
            choose_exclusive(&self.machine, &free, count, preferences).ok_or_else(insufficient)?;
        let cpu_nodes = self.machine.nodes_of(&cpus);
        if cpu_nodes.len() > 1 {
            notes.push(format!(
                "spans NUMA nodes {cpu_nodes}: no single node has {requested} free CPUs"
            ));
        }
        if let Some(affinity) = &request.numa_affinity {
            if !affinity.is_empty() && !cpu_nodes.is_subset(affinity) {
                notes.push(format!(
                    "not NUMA-aligned: CPUs {cpus} on node(s) {cpu_nodes}, devices on node(s) \
                     {affinity}"
                ));
            }
        }
        let mems = match memory_nodes {
            Some(memory_nodes) if from_kubelet => {
                if !cpu_nodes.is_subset(&memory_nodes) {
                    notes.push(format!(
                        "memory not local: CPUs on node(s) {cpu_nodes}, memory on node(s) \
                         {memory_nodes}"
                    ));
                }
                memory_nodes
            }
            memory_nodes => local_mems(&cpus, cpu_nodes, memory_nodes, false, &mut notes),
        };
        Ok(Assignment {
            cpus,
            mems,
            kind: Kind::Exclusive,
            notes,
        })
    }

    fn kubelet_assignment(
        &self,
        container_id: &str,
        cpus: CpuSet,
        mems: CpuSet,
        mut notes: Vec<String>,
    ) -> Assignment {
        let overlap = cpus.intersection(&self.exclusive_cpus_except(Some(container_id)));
        if !overlap.is_empty() {
            notes.push(format!(
                "kubelet cpuset_cpus {cpus} overlaps CPUs {overlap} ingot allocated exclusively"
            ));
        }
        Assignment {
            cpus,
            mems,
            kind: Kind::Kubelet,
            notes,
        }
    }

    /// The request's kubelet CPUs, checked against the online CPUs; None when none were sent.
    fn kubelet_cpus(&self, request: &Request) -> Result<Option<CpuSet>, PlacementError> {
        let Some(cpus) = request
            .kubelet_cpus
            .as_ref()
            .filter(|cpus| !cpus.is_empty())
        else {
            return Ok(None);
        };
        let offline = cpus.difference(&self.machine.online);
        if !offline.is_empty() {
            return Err(PlacementError::KubeletCpusNotOnline {
                requested: cpus.clone(),
                offline,
                online: self.machine.online.clone(),
            });
        }
        Ok(Some(cpus.clone()))
    }

    /// The request's kubelet mems, checked against the NUMA nodes; None when none were sent.
    fn kubelet_mems(&self, request: &Request) -> Result<Option<CpuSet>, PlacementError> {
        let Some(mems) = request
            .kubelet_mems
            .as_ref()
            .filter(|mems| !mems.is_empty())
        else {
            return Ok(None);
        };
        let unknown = mems.difference(&self.machine.node_ids);
        if !unknown.is_empty() {
            return Err(PlacementError::KubeletMemsUnknown {
                requested: mems.clone(),
                unknown,
                nodes: self.machine.node_ids.clone(),
            });
        }
        Ok(Some(mems.clone()))
    }

    /// The request's hugepage nodes, checked: empty means no node can supply the pages.
    fn hugepage_nodes(&self, request: &Request) -> Result<Option<CpuSet>, PlacementError> {
        let Some(nodes) = &request.hugepage_nodes else {
            return Ok(None);
        };
        if nodes.is_empty() {
            return Err(PlacementError::NoHugepageNodes);
        }
        let unknown = nodes.difference(&self.machine.node_ids);
        if !unknown.is_empty() {
            return Err(PlacementError::HugepageNodesUnknown {
                requested: nodes.clone(),
                unknown,
                nodes: self.machine.node_ids.clone(),
            });
        }
        Ok(Some(nodes.clone()))
    }

    /// Keeps shared containers' recorded cpus equal to the shared pool.
    pub(crate) fn refresh_shared(&mut self) {
        let pool = self.shared_pool();
        for record in self.containers.values_mut() {
            if record.assignment.kind == Kind::Shared {
                record.assignment.cpus = pool.clone();
            }
        }
    }
}

/// The memory nodes of a container on `cpus` (on `cpu_nodes`): the kubelet's mems as sent
/// (`from_kubelet`); else the CPUs' own nodes, narrowed to those with its hugepages free where
/// they are among them, or the hugepage nodes, with a note, where none is.
fn local_mems(
    cpus: &CpuSet,
    cpu_nodes: CpuSet,
    memory_nodes: Option<CpuSet>,
    from_kubelet: bool,
    notes: &mut Vec<String>,
) -> CpuSet {
    match memory_nodes {
        None => cpu_nodes,
        Some(nodes) if from_kubelet => nodes,
        Some(hugepages) => {
            let local = cpu_nodes.intersection(&hugepages);
            if local.is_empty() {
                notes.push(format!(
                    "memory not local: CPUs {cpus} on node(s) {cpu_nodes}, hugepages free on \
                     node(s) {hugepages}"
                ));
                hugepages
            } else {
                local
            }
        }
    }
}
