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

/// One container of a checkpoint as [`read_checkpoint`] returns it, for readers other than
/// [`Placement::restore`] (the `ingot node report` command) that show the state without
/// checking it against a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointEntry {
    pub container_id: String,
    pub pod_id: String,
    pub assignment: Assignment,
}

/// A checkpoint document of this version.
fn parse(bytes: &[u8]) -> Result<Checkpoint, PlacementError> {
    let checkpoint: Checkpoint =
        serde_json::from_slice(bytes).map_err(|err| PlacementError::Checkpoint {
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
    Ok(checkpoint)
}

/// The containers of [`Placement::checkpoint`]'s output as written, in its order. Unlike
/// [`Placement::restore`] nothing is checked against a node or dropped: a reader that only
/// reports wants to see what ingotd holds, even records a restart would drop. A document that
/// is not a checkpoint, or of another version, is refused the way `restore` refuses it.
pub fn read_checkpoint(bytes: &[u8]) -> Result<Vec<CheckpointEntry>, PlacementError> {
    let checkpoint = parse(bytes)?;
    Ok(checkpoint
        .containers
        .into_iter()
        .map(|container| CheckpointEntry {
            container_id: container.container_id,
            pod_id: container.pod_id,
            assignment: container.assignment,
        })
        .collect())
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
        let checkpoint = parse(checkpoint)?;
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

#[cfg(test)]
mod read_checkpoint_tests {
    use super::*;
    use crate::{
        testing::{machine, set},
        Policy, Request,
    };

    #[test]
    fn reads_back_every_container_a_placement_checkpoints() {
        let topology = machine(1, 1, 1, 4, 1);
        let config = PlacementConfig {
            policy: Policy::Exclusive,
            reserved: set("0"),
        };
        let mut placement = Placement::new(&topology, config).expect("placement");
        let request = |container_id: &str, exclusive_cpus: u32| Request {
            pod_id: "pod".into(),
            container_id: container_id.into(),
            exclusive_cpus,
            ..Request::default()
        };
        let a = placement.allocate(&request("a", 2)).expect("fits");
        let web = placement.allocate(&request("web", 0)).expect("shared");
        let entries = read_checkpoint(&placement.checkpoint()).expect("its own checkpoint");
        let seen: Vec<(&str, &str, &Assignment)> = entries
            .iter()
            .map(|entry| {
                (
                    entry.container_id.as_str(),
                    entry.pod_id.as_str(),
                    &entry.assignment,
                )
            })
            .collect();
        assert_eq!(seen, vec![("a", "pod", &a), ("web", "pod", &web)]);
    }

    #[test]
    fn reads_what_checkpoint_writes_and_refuses_the_rest() {
        let text = br#"{"version":1,"containers":[
            {"container_id":"c1","pod_id":"p1","cpus":"2-3","mems":"0","kind":"exclusive",
             "notes":["not NUMA-aligned: x"]},
            {"container_id":"c2","pod_id":"p1","cpus":"0-1,4-7","mems":"","kind":"shared",
             "notes":[]}]}"#;
        let entries = read_checkpoint(text).expect("a checkpoint");
        assert_eq!(
            entries,
            vec![
                CheckpointEntry {
                    container_id: "c1".into(),
                    pod_id: "p1".into(),
                    assignment: Assignment {
                        cpus: set("2-3"),
                        mems: set("0"),
                        kind: Kind::Exclusive,
                        notes: vec!["not NUMA-aligned: x".into()],
                    },
                },
                CheckpointEntry {
                    container_id: "c2".into(),
                    pod_id: "p1".into(),
                    assignment: Assignment {
                        cpus: set("0-1,4-7"),
                        mems: CpuSet::new(),
                        kind: Kind::Shared,
                        notes: Vec::new(),
                    },
                },
            ]
        );
        assert_eq!(
            read_checkpoint(br#"{"version":1,"containers":[]}"#).expect("empty"),
            Vec::new()
        );

        let version = read_checkpoint(br#"{"version":2,"containers":[]}"#).expect_err("v2");
        assert_eq!(
            version.to_string(),
            "placement checkpoint: version 2 (this ingot reads version 1)"
        );
        for bad in [
            &b""[..],
            b"{",
            b"[]",
            br#"{"version":1,"containers":[{"cpus":"x"}]}"#,
        ] {
            let err = read_checkpoint(bad).expect_err("not a checkpoint");
            assert!(matches!(err, PlacementError::Checkpoint { .. }), "{err}");
        }
    }
}
