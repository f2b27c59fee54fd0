//! SR-IOV virtual functions a pod asks for by annotation: which VF a PCI address means (a VF
//! itself, or the first free VF of a PF), read from sysfs under a root path; and what giving it
//! takes (its netdev moved into the pod, or the VF bound to vfio-pci and its group's node
//! passed in). Pure but for reading sysfs.
//!
//! `ingot.io/sriov-vf` (every container of the pod) or `ingot.io/sriov-vf/<container>`: entries
//! separated by `;`, each a PCI address and options separated by `,`:
//! `0000:3b:00.0,mode=netdev,name=net1,mac=02:00:00:00:00:01,vlan=100,mtu=9000` or
//! `0000:3b:02.1,mode=vfio`. `mode` is `netdev` by default; `name` is `net1`, `net2`, ... in
//! order.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::DevicesError;

pub const ANNOTATION: &str = "ingot.io/sriov-vf";

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Mode {
    /// The VF's network interface, moved into the pod's namespace.
    Netdev,
    /// The VF bound to vfio-pci, its IOMMU group's device node passed in (DPDK).
    Vfio,
}

/// One VF asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// A VF's or a PF's PCI address.
    pub address: String,
    pub mode: Mode,
    /// Its interface's name in the pod (netdev mode).
    pub name: String,
    pub mac: Option<String>,
    pub vlan: Option<u16>,
    pub mtu: Option<u32>,
}

/// A VF as sysfs shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vf {
    pub address: String,
    /// Its PF's address and its index among the PF's VFs (`virtfn<index>`).
    pub pf: String,
    pub index: u32,
    /// The PF's interface (for VLAN and MAC set through it).
    pub pf_netdev: Option<String>,
    /// Its own interface while a network driver has it.
    pub netdev: Option<String>,
    pub driver: Option<String>,
    pub iommu_group: Option<u32>,
    pub numa_node: Option<u32>,
}

fn bad(annotation: &str, reason: impl Into<String>) -> DevicesError {
    DevicesError::Sriov {
        what: annotation.to_string(),
        reason: reason.into(),
    }
}

fn is_pci_address(s: &str) -> bool {
    // dddd:bb:dd.f
    let b = s.as_bytes();
    b.len() == 12
        && b[4] == b':'
        && b[7] == b':'
        && b[10] == b'.'
        && s.chars()
            .enumerate()
            .all(|(i, c)| matches!(i, 4 | 7 | 10) || c.is_ascii_hexdigit())
}

fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// The VFs the pod's annotations ask of container `container`: the scoped annotation wins.
pub fn requests(
    annotations: &HashMap<String, String>,
    container: &str,
) -> Result<Vec<Request>, DevicesError> {
    let scoped = format!("{ANNOTATION}/{container}");
    let (key, value) = match annotations.get(&scoped) {
        Some(value) => (scoped.as_str(), value),
        None => match annotations.get(ANNOTATION) {
            Some(value) => (ANNOTATION, value),
            None => return Ok(Vec::new()),
        },
    };
    let mut out: Vec<Request> = Vec::new();
    for entry in value.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let mut parts = entry.split(',').map(str::trim);
        let address = parts.next().unwrap_or_default().to_ascii_lowercase();
        if !is_pci_address(&address) {
            return Err(bad(
                key,
                format!("{address:?} is not a PCI address (0000:3b:00.0)"),
            ));
        }
        let mut request = Request {
            address,
            mode: Mode::Netdev,
            name: format!("net{}", out.len() + 1),
            mac: None,
            vlan: None,
            mtu: None,
        };
        for option in parts {
            let (name, value) = option
                .split_once('=')
                .ok_or_else(|| bad(key, format!("{option:?} is not <option>=<value>")))?;
            match name {
                "mode" => {
                    request.mode = match value {
                        "netdev" => Mode::Netdev,
                        "vfio" => Mode::Vfio,
                        _ => return Err(bad(key, format!("mode {value:?} is not netdev or vfio"))),
                    }
                }
                "name" => {
                    if value.is_empty()
                        || value.len() > 15
                        || value.contains(['/', ' ', ':'])
                        || value == "eth0"
                        || value == "lo"
                    {
                        return Err(bad(
                            key,
                            format!("{value:?} cannot name the pod's interface"),
                        ));
                    }
                    request.name = value.to_string();
                }
                "mac" => {
                    if !is_mac(value) {
                        return Err(bad(key, format!("{value:?} is not a MAC address")));
                    }
                    request.mac = Some(value.to_ascii_lowercase());
                }
                "vlan" => {
                    request.vlan = Some(
                        value
                            .parse()
                            .ok()
                            .filter(|v| (1..4095).contains(v))
                            .ok_or_else(|| bad(key, format!("vlan {value:?} is not 1..4094")))?,
                    )
                }
                "mtu" => {
                    request.mtu = Some(
                        value
                            .parse()
                            .ok()
                            .filter(|v| (68..=65535).contains(v))
                            .ok_or_else(|| bad(key, format!("mtu {value:?} is not 68..65535")))?,
                    )
                }
                _ => return Err(bad(key, format!("unknown option {name:?}"))),
            }
        }
        if request.mode == Mode::Vfio && (request.mac.is_some() || request.mtu.is_some()) {
            return Err(bad(
                key,
                "mac and mtu are for netdev mode; a vfio VF has no interface",
            ));
        }
        if out
            .iter()
            .any(|r| r.mode == Mode::Netdev && r.name == request.name)
            && request.mode == Mode::Netdev
        {
            return Err(bad(key, format!("two VFs named {}", request.name)));
        }
        out.push(request);
    }
    Ok(out)
}

fn device_dir(root: &Path, address: &str) -> PathBuf {
    root.join("sys/bus/pci/devices").join(address)
}

fn link_name(path: &Path) -> Option<String> {
    std::fs::read_link(path)
        .ok()?
        .file_name()?
        .to_str()
        .map(str::to_string)
}

fn first_netdev(dir: &Path) -> Option<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("net"))
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    names.sort();
    names.into_iter().next()
}

fn read_vf(root: &Path, address: &str, pf: &str, index: u32) -> Vf {
    let dir = device_dir(root, address);
    let pf_dir = device_dir(root, pf);
    Vf {
        address: address.to_string(),
        pf: pf.to_string(),
        index,
        pf_netdev: first_netdev(&pf_dir),
        netdev: first_netdev(&dir),
        driver: link_name(&dir.join("driver")),
        iommu_group: link_name(&dir.join("iommu_group")).and_then(|g| g.parse().ok()),
        numa_node: std::fs::read_to_string(dir.join("numa_node"))
            .ok()
            .and_then(|n| n.trim().parse().ok()),
    }
}

/// The PF's VFs by index (`virtfn<N>` links).
fn vfs_of(root: &Path, pf: &str) -> Vec<(u32, String)> {
    let dir = device_dir(root, pf);
    let mut vfs: Vec<(u32, String)> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let index = name.strip_prefix("virtfn")?.parse().ok()?;
            Some((index, link_name(&e.path())?))
        })
        .collect();
    vfs.sort();
    vfs
}

/// The VF `request` means under `root`: the address itself when it is a VF, else the PF's
/// first VF not in `taken` that suits the mode (netdev mode: one whose interface a network
/// driver still has). Refused naming the address: not a PCI device, not SR-IOV, no free VF, a
/// VF without an interface in netdev mode.
pub fn resolve(root: &Path, request: &Request, taken: &[String]) -> Result<Vf, DevicesError> {
    let what = format!("{ANNOTATION} {}", request.address);
    let dir = device_dir(root, &request.address);
    if !dir.exists() {
        return Err(bad(&what, format!("no PCI device {}", dir.display())));
    }
    let suits = |vf: &Vf| request.mode == Mode::Vfio || vf.netdev.is_some();
    let vf = if let Some(pf) = link_name(&dir.join("physfn")) {
        let index = vfs_of(root, &pf)
            .into_iter()
            .find(|(_, address)| *address == request.address)
            .map_or(0, |(index, _)| index);
        let vf = read_vf(root, &request.address, &pf, index);
        if taken.contains(&vf.address) {
            return Err(bad(&what, "this VF is already another container's"));
        }
        vf
    } else {
        let vfs = vfs_of(root, &request.address);
        if vfs.is_empty() {
            return Err(bad(
                &what,
                "is neither an SR-IOV VF nor a PF with VFs (sriov_numvfs)",
            ));
        }
        vfs.iter()
            .filter(|(_, address)| !taken.contains(address))
            .map(|(index, address)| read_vf(root, address, &request.address, *index))
            .find(|vf| suits(vf))
            .ok_or_else(|| {
                bad(
                    &what,
                    format!(
                        "none of its {} VFs is free{}",
                        vfs.len(),
                        if request.mode == Mode::Netdev {
                            " with a network interface"
                        } else {
                            ""
                        }
                    ),
                )
            })?
    };
    if !suits(&vf) {
        return Err(bad(
            &what,
            format!(
                "has no network interface (driver {}): netdev mode needs the VF's network driver",
                vf.driver.as_deref().unwrap_or("none")
            ),
        ));
    }
    Ok(vf)
}

/// The sysfs writes (file, value) that bind `vf` to vfio-pci, in order; empty when it is
/// bound already. Undone by [`unbind_plan`] with the driver it had.
pub fn vfio_bind_plan(root: &Path, vf: &Vf) -> Vec<(PathBuf, String)> {
    if vf.driver.as_deref() == Some("vfio-pci") {
        return Vec::new();
    }
    let dir = device_dir(root, &vf.address);
    let mut plan = vec![(dir.join("driver_override"), "vfio-pci".to_string())];
    if vf.driver.is_some() {
        plan.push((dir.join("driver/unbind"), vf.address.clone()));
    }
    plan.push((root.join("sys/bus/pci/drivers_probe"), vf.address.clone()));
    plan
}

/// The writes that give a VF bound by [`vfio_bind_plan`] back to the driver it had (the
/// kernel's choice again: override cleared, then probed).
pub fn unbind_plan(root: &Path, address: &str) -> Vec<(PathBuf, String)> {
    let dir = device_dir(root, address);
    vec![
        (dir.join("driver_override"), "\n".to_string()),
        (dir.join("driver/unbind"), address.to_string()),
        (root.join("sys/bus/pci/drivers_probe"), address.to_string()),
    ]
}

#[cfg(test)]
#[path = "sriov_tests.rs"]
mod tests;
