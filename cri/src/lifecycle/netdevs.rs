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

/// What the pod's SR-IOV annotations give a container.
#[derive(Default)]
pub struct Vfs {
    /// Interfaces of VFs in netdev mode, for the pod's namespace.
    pub netdevs: Vec<PodNetdev>,
    /// VFs in vfio mode.
    pub vfio: Vec<sriov::Vf>,
    /// Every VF's PCI address, for NUMA alignment.
    pub addresses: Vec<String>,
}

/// The SR-IOV VFs the pod's annotations ask for container `name`, resolved under the devices
/// root. A VF a pod's interface or another container's vfio device is, is not free; an
/// interface this pod already holds under the same name is its own.
pub fn sriov_vfs(
    manager: &Manager,
    pod: &PodRecord,
    annotations: &HashMap<String, String>,
    name: &str,
) -> Result<Vfs, CriError> {
    let invalid =
        |err: ingot_devices::DevicesError| CriError::invalid("config.annotations", err.to_string());
    let requests = sriov::requests(annotations, name).map_err(invalid)?;
    if requests.is_empty() {
        return Ok(Vfs::default());
    }
    let root = manager.devices_root();
    // Every VF a pod's interface or a container's vfio device is (this pod's own included:
    // an interface it holds under the name asked is reused below, before any resolving).
    let mut taken: Vec<String> = manager
        .pods()
        .into_iter()
        .flat_map(|other| other.netdevs.into_iter().map(|n| n.source))
        .chain(manager.containers().into_iter().flat_map(|c| c.vfio))
        .collect();
    let mut vfs = Vfs::default();
    for request in requests {
        if request.mode == sriov::Mode::Vfio {
            let vf = sriov::resolve(&root, &request, &taken).map_err(invalid)?;
            taken.push(vf.address.clone());
            vfs.addresses.push(vf.address.clone());
            vfs.vfio.push(vf);
            continue;
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
            vfs.addresses.push(held.source.clone());
            vfs.netdevs.push(held.clone());
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
        vfs.addresses.push(vf.address.clone());
        vfs.netdevs.push(PodNetdev {
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
    Ok(vfs)
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

/// VFs bound to vfio-pci for a container, with the device nodes it gets: unbound again when
/// dropped before [`VfioBinding::keep`].
pub struct VfioBinding {
    root: std::path::PathBuf,
    /// The VFs ingot bound (not those bound already), to give back at removal.
    bound: Vec<String>,
    pub devices: Vec<ingot_oci::cri::HostDevice>,
}

impl VfioBinding {
    /// The addresses to unbind at the container's removal.
    pub fn keep(mut self) -> Vec<String> {
        std::mem::take(&mut self.bound)
    }
}

impl Drop for VfioBinding {
    fn drop(&mut self) {
        unbind_vfio(&self.root, &self.bound);
    }
}

fn write_plan(plan: &[(std::path::PathBuf, String)]) -> Result<(), CriError> {
    for (file, value) in plan {
        std::fs::write(file, value).map_err(CriError::io(format!(
            "write {value:?} to {}",
            file.display()
        )))?;
    }
    Ok(())
}

/// Binds each VF to vfio-pci (driver_override, unbind, probe under the devices root) and waits
/// for its IOMMU group's node (`<root>/dev/vfio/<group>`), which the container gets with
/// `/dev/vfio/vfio`.
pub fn bind_vfio(root: &std::path::Path, vfs: &[sriov::Vf]) -> Result<VfioBinding, CriError> {
    let mut binding = VfioBinding {
        root: root.to_path_buf(),
        bound: Vec::new(),
        devices: Vec::new(),
    };
    for vf in vfs {
        let Some(group) = vf.iommu_group else {
            return Err(CriError::FailedPrecondition {
                what: format!("VF {}", vf.address),
                reason:
                    "has no IOMMU group: vfio needs the IOMMU on (intel_iommu=on, amd_iommu=on)"
                        .into(),
            });
        };
        let plan = sriov::vfio_bind_plan(root, vf);
        if !plan.is_empty() {
            binding.bound.push(vf.address.clone());
            write_plan(&plan)?;
            tracing::info!(vf = %vf.address, from = ?vf.driver, "VF bound to vfio-pci");
        }
        let node = root.join(format!("dev/vfio/{group}"));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while !node.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        for (host_path, container_path) in [
            (node, format!("/dev/vfio/{group}")),
            (root.join("dev/vfio/vfio"), "/dev/vfio/vfio".to_string()),
        ] {
            if binding
                .devices
                .iter()
                .any(|d| d.container_path == container_path)
            {
                continue;
            }
            let device = host::devices::host_device(&k8s_cri::v1::Device {
                container_path,
                host_path: host_path.display().to_string(),
                permissions: "rw".into(),
            })
            .map_err(|err| CriError::FailedPrecondition {
                what: format!("VF {} bound to vfio-pci", vf.address),
                reason: err.to_string(),
            })?;
            binding.devices.push(device);
        }
    }
    Ok(binding)
}

/// Gives VFs ingot bound to vfio-pci back to the driver the kernel picks for them.
pub fn unbind_vfio(root: &std::path::Path, addresses: &[String]) {
    for address in addresses {
        match write_plan(&sriov::unbind_plan(root, address)) {
            Ok(()) => tracing::info!(vf = %address, "VF given back from vfio-pci"),
            Err(err) => {
                tracing::warn!(vf = %address, error = %err, "VF not given back from vfio-pci")
            }
        }
    }
}

/// What `ingot node report` reads beside the placement checkpoint: which pod (and container)
/// holds which PCI function.
pub const DEVICES_MIRROR: &str = "devices.json";

impl Manager {
    /// Writes [`DEVICES_MIRROR`]: the VFs whose interfaces pods hold, and the PCI functions
    /// containers were given (`vfio` where ingot bound them to vfio-pci).
    pub fn mirror_devices(&self) {
        let mut held: Vec<serde_json::Value> = Vec::new();
        for pod in self.pods() {
            for netdev in &pod.netdevs {
                if netdev.source.contains(':') && !netdev.source.contains(' ') {
                    held.push(serde_json::json!({
                        "address": netdev.source,
                        "pod_id": pod.id,
                        "how": format!("netdev {}", netdev.pod_name),
                    }));
                }
            }
        }
        for container in self.containers() {
            for address in &container.pci_devices {
                held.push(serde_json::json!({
                    "address": address,
                    "pod_id": container.pod_id,
                    "container_id": container.id,
                    "how": if container.vfio.contains(address) { "vfio" } else { "device" },
                }));
            }
        }
        self.write_json_mirror(DEVICES_MIRROR, &held);
    }
}
