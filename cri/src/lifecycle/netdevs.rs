//! The host interfaces a pod is given: CDI `netDevices` and SR-IOV VFs in netdev mode
//! (`ingot.io/sriov-vf`), moved into the pod's namespace by ingotd once for the pod's life and
//! back when it stops (`host::netdev`).

use std::collections::HashMap;
use std::sync::Arc;

use ingot_devices::sriov;

use crate::{
    host,
    lifecycle::Manager,
    store::{PodNetdev, PodRecord},
    CriError,
};

/// The interfaces a container's CDI devices bring. A pod on the host's network has no
/// namespace to put them in.
pub fn from_cdi(
    pod: &PodRecord,
    cdi: &ingot_devices::cdi::Resolved,
) -> Result<Vec<PodNetdev>, CriError> {
    let wanted: Vec<PodNetdev> = cdi
        .net_devices()
        .into_iter()
        .map(|(host_name, pod_name)| PodNetdev {
            source: format!("CDI interface {host_name}"),
            host_name,
            pod_name,
            mtu: None,
            mac: None,
            vlan: None,
            original_mtu: None,
            original_mac: None,
        })
        .collect();
    if !wanted.is_empty() && pod.net.is_none() {
        return Err(CriError::invalid(
            "config.CDI_devices",
            format!(
                "network devices ({}) need a pod with its own network namespace, not the host's",
                wanted
                    .iter()
                    .map(|n| n.host_name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    Ok(wanted)
}

/// The SR-IOV VFs (netdev mode) the pod's annotations ask for container `name`, resolved under
/// the devices root, with their PCI addresses for NUMA alignment. A VF another pod holds is not
/// free; one this pod already holds under the same name is its own.
pub fn sriov_vfs(
    manager: &Manager,
    pod: &PodRecord,
    annotations: &HashMap<String, String>,
    name: &str,
) -> Result<(Vec<PodNetdev>, Vec<String>), CriError> {
    let invalid =
        |err: ingot_devices::DevicesError| CriError::invalid("config.annotations", err.to_string());
    let requests = sriov::requests(annotations, name).map_err(invalid)?;
    if requests.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let root = manager.devices_root();
    let mut taken: Vec<String> = manager
        .pods()
        .into_iter()
        .filter(|other| other.id != pod.id)
        .flat_map(|other| other.netdevs.into_iter().map(|n| n.source))
        .collect();
    let mut netdevs = Vec::new();
    let mut addresses = Vec::new();
    for request in requests {
        if request.mode == sriov::Mode::Vfio {
            return Err(CriError::invalid(
                "config.annotations",
                format!(
                    "{}: {} mode=vfio is not supported yet",
                    sriov::ANNOTATION,
                    request.address
                ),
            ));
        }
        if pod.net.is_none() {
            return Err(CriError::invalid(
                "config.annotations",
                format!(
                    "{}: a VF's interface needs a pod with its own network namespace, not the host's",
                    sriov::ANNOTATION
                ),
            ));
        }
        if let Some(held) = pod.netdevs.iter().find(|n| n.pod_name == request.name) {
            addresses.push(held.source.clone());
            netdevs.push(held.clone());
            continue;
        }
        let vf = sriov::resolve(&root, &request, &taken).map_err(invalid)?;
        let Some(host_name) = vf.netdev.clone() else {
            return Err(CriError::invalid(
                "config.annotations",
                format!("{}: {} has no interface", sriov::ANNOTATION, vf.address),
            ));
        };
        taken.push(vf.address.clone());
        addresses.push(vf.address.clone());
        netdevs.push(PodNetdev {
            source: vf.address.clone(),
            host_name,
            pod_name: request.name.clone(),
            mtu: request.mtu,
            mac: request.mac.clone(),
            vlan: request
                .vlan
                .map(|vlan| (vf.pf_netdev.clone().unwrap_or_default(), vf.index, vlan)),
            original_mtu: None,
            original_mac: None,
        });
    }
    Ok((netdevs, addresses))
}

/// Moves the host interfaces a container's devices bring into its pod's namespace, each once
/// for the pod's life (a container created again finds its interface there); recorded before
/// the move, so a crash between the two still moves it back at the pod's stop.
pub async fn give(
    manager: &Arc<Manager>,
    pod: &mut PodRecord,
    wanted: &[PodNetdev],
) -> Result<(), CriError> {
    let Some(netns) = pod.net.clone() else {
        return Ok(());
    };
    for netdev in wanted {
        if let Some(held) = pod.netdevs.iter().find(|n| n.pod_name == netdev.pod_name) {
            if held.source != netdev.source {
                return Err(CriError::invalid(
                    "config",
                    format!(
                        "pod {} already has {} (from {}), not from {}",
                        pod.id, netdev.pod_name, held.source, netdev.source
                    ),
                ));
            }
            continue;
        }
        let netdev = netdev.clone();
        pod.netdevs.push(netdev.clone());
        manager.save_pod(pod.clone())?;
        let path = netns.clone();
        let moved = tokio::task::spawn_blocking(move || host::netdev::move_in(&path, netdev))
            .await
            .map_err(CriError::join("pod interfaces"))
            .and_then(|r| r);
        match moved {
            Ok(moved) => {
                if let Some(last) = pod.netdevs.last_mut() {
                    *last = moved;
                }
                manager.save_pod(pod.clone())?;
            }
            Err(err) => {
                pod.netdevs.pop();
                manager.save_pod(pod.clone())?;
                return Err(err);
            }
        }
    }
    Ok(())
}
