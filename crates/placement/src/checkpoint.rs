//! The placement state on disk, so a restarted ingotd puts exclusive CPUs back where running
//! containers already are instead of handing them out a second time.
//!
//! Versioned JSON. Restoring checks every record against the node as it is now (CPUs can go
//! offline, reserved CPUs can change between restarts) and drops what no longer fits, saying why.

use std::collections::BTreeMap;

use ingot_topology::{CpuSet, Topology};

use crate::{placement::Record, Assignment, Kind, Placement, PlacementConfig, PlacementError};

/// Bumped on any change a previous reader would misread.
const VERSION: u32 = 1;

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Checkpoint {
    version: u32,
    containers: Vec<Container>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Container {
    container_id: String,
    pod_id: String,
    #[serde(flatten)]
    assignment: Assignment,
}

impl Placement {
    /// The state as versioned JSON, for [`Placement::restore`].
    pub fn checkpoint(&self) -> Vec<u8> {
        let checkpoint = Checkpoint {
            version: VERSION,
            containers: self
                .containers
                .iter()
                .map(|(container_id, record)| Container {
                    container_id: container_id.clone(),
                    pod_id: record.pod_id.clone(),
                    assignment: record.assignment.clone(),
                })
                .collect(),
        };
        // Strings, lists and enums always serialize; were it ever to fail, the empty output is
        // refused by `restore` rather than read as "no containers".
        serde_json::to_vec(&checkpoint).unwrap_or_default()
    }

    /// Rebuilds the state from [`Placement::checkpoint`]'s output on the node as it is now.
    /// Records that no longer fit are dropped and described in the returned list; shared
    /// containers get the current shared pool. Exclusive records are kept under
    /// [`crate::Policy::None`] too: their containers are still running on those CPUs.
    pub fn restore(
        topology: &Topology,
        config: PlacementConfig,
        checkpoint: &[u8],
    ) -> Result<(Self, Vec<String>), PlacementError> {
        let mut placement = Self::new(topology, config)?;
        let checkpoint: Checkpoint =
            serde_json::from_slice(checkpoint).map_err(|err| PlacementError::Checkpoint {
                reason: err.to_string(),
            })?;
        if checkpoint.version != VERSION {
            return Err(PlacementError::Checkpoint {
                reason: format!(
                    "version {} (this ingot reads version {VERSION})",
                    checkpoint.version
                ),
            });
        }
        let mut dropped = Vec::new();
        let mut containers = BTreeMap::new();
        let mut exclusive = CpuSet::new();
        for container in checkpoint.containers {
            let id = container.container_id;
            if containers.contains_key(&id) {
                dropped.push(format!("container {id:?}: listed twice, the first kept"));
                continue;
            }
            if let Err(reason) = placement.check(&container.assignment, &exclusive) {
                dropped.push(format!("container {id:?}: {reason}"));
                continue;
            }
            if container.assignment.kind == Kind::Exclusive {
                exclusive = exclusive.union(&container.assignment.cpus);
            }
            containers.insert(
                id,
                Record {
                    pod_id: container.pod_id,
                    assignment: container.assignment,
                },
            );
        }
        placement.containers = containers;
        placement.refresh_shared();
        Ok((placement, dropped))
    }

    /// Why a restored assignment no longer fits the node, given the exclusive CPUs restored
    /// before it.
    fn check(&self, assignment: &Assignment, exclusive: &CpuSet) -> Result<(), String> {
        let online = &self.machine.online;
        let unknown_mems = assignment.mems.difference(&self.machine.node_ids);
        if !unknown_mems.is_empty() {
            return Err(format!(
                "mems {} name nodes {unknown_mems} that are not NUMA nodes (nodes: {})",
                assignment.mems, self.machine.node_ids
            ));
        }
        match assignment.kind {
            Kind::Shared => Ok(()),
            Kind::Kubelet => {
                let offline = assignment.cpus.difference(online);
                if assignment.cpus.is_empty() || !offline.is_empty() {
                    return Err(format!(
                        "kubelet cpus \"{}\" are not all online (online: {online})",
                        assignment.cpus
                    ));
                }
                Ok(())
            }
            Kind::Exclusive => {
                let cpus = &assignment.cpus;
                let offline = cpus.difference(online);
                if cpus.is_empty() || !offline.is_empty() {
                    return Err(format!(
                        "exclusive cpus \"{cpus}\" are not all online (online: {online})"
                    ));
                }
                let reserved = cpus.intersection(&self.config.reserved);
                if !reserved.is_empty() {
                    return Err(format!(
                        "exclusive cpus \"{cpus}\" include reserved CPUs {reserved}"
                    ));
                }
                let taken = cpus.intersection(exclusive);
                if !taken.is_empty() {
                    return Err(format!(
                        "exclusive cpus \"{cpus}\" overlap CPUs {taken} of another container"
                    ));
                }
                if self.config.reserved.is_empty() && online.difference(exclusive).is_subset(cpus) {
                    return Err(format!(
                        "exclusive cpus \"{cpus}\" would leave the shared pool empty"
                    ));
                }
                Ok(())
            }
        }
    }
}
