//! Host network interfaces a pod is given (CDI `netDevices`, SR-IOV VFs in netdev mode): moved
//! into the pod's network namespace under the name it asks for, with the MTU and MAC it asks
//! for, and moved back under their own name with their own MTU and MAC when the pod stops.
//! The move is ingotd's, not the runtime's: the pod's namespace outlives its containers, and a
//! container created again (a kubelet restart of it) finds its interface already there.

use std::os::fd::AsRawFd;
use std::path::Path;

use libcontainer::network::link::LinkClient;
use libcontainer::network::wrapper::create_network_client;
use netlink_packet_route::link::LinkAttribute;

use crate::{store::PodNetdev, CriError};

fn net_err(what: String) -> impl FnOnce(libcontainer::network::NetworkError) -> CriError {
    move |err| CriError::Io {
        context: what,
        source: std::io::Error::other(err.to_string()),
    }
}

/// The MTU and MAC of interface `name` in the calling thread's network namespace.
fn link_state(name: &str) -> Result<(u32, String), CriError> {
    let mut links =
        LinkClient::new(create_network_client()).map_err(net_err(format!("netlink for {name}")))?;
    let link = links
        .get_by_name(name)
        .map_err(net_err(format!("find interface {name}")))?;
    let mut mtu = 0;
    let mut mac = String::new();
    for attribute in &link.attributes {
        match attribute {
            LinkAttribute::Mtu(value) => mtu = *value,
            LinkAttribute::Address(bytes) => {
                mac = bytes
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":")
            }
            _ => {}
        }
    }
    Ok((mtu, mac))
}

/// `ip link set dev <name> <args...>` in the calling thread's network namespace.
fn ip_link_set(name: &str, args: &[&str]) -> Result<(), CriError> {
    let output = std::process::Command::new("ip")
        .args(["link", "set", "dev", name])
        .args(args)
        .output()
        .map_err(CriError::io(format!("run ip link set dev {name}")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(CriError::Io {
            context: format!("ip link set dev {name} {}", args.join(" ")),
            source: std::io::Error::other(
                String::from_utf8_lossy(&output.stderr).trim().to_string(),
            ),
        })
    }
}

/// Moves interface `name` of the calling thread's namespace into the namespace open as `target`,
/// named `new_name` there.
fn move_link(name: &str, new_name: &str, target: &std::fs::File) -> Result<(), CriError> {
    let mut links =
        LinkClient::new(create_network_client()).map_err(net_err(format!("netlink for {name}")))?;
    let link = links
        .get_by_name(name)
        .map_err(net_err(format!("find interface {name}")))?;
    let index = link.header.index;
    links
        .set_down(index)
        .map_err(net_err(format!("set {name} down")))?;
    links
        .set_ns_fd(index, new_name, target.as_raw_fd())
        .map_err(net_err(format!("move {name} as {new_name}")))
}

/// Moves `netdev.host_name` from ingotd's namespace into the pod's at `netns` as
/// `netdev.pod_name`, with its MTU and MAC when asked; returns it with the originals recorded.
pub fn move_in(netns: &Path, mut netdev: PodNetdev) -> Result<PodNetdev, CriError> {
    let target =
        std::fs::File::open(netns).map_err(CriError::io(format!("open {}", netns.display())))?;
    let (mtu, mac) = link_state(&netdev.host_name)?;
    netdev.original_mtu = Some(mtu);
    netdev.original_mac = Some(mac);
    if let Some((pf, index, vlan)) = &netdev.vlan {
        // A VF's VLAN is its PF's to set.
        ip_link_set(pf, &["vf", &index.to_string(), "vlan", &vlan.to_string()])?;
    }
    move_link(&netdev.host_name, &netdev.pod_name, &target)?;
    let moved = netdev.clone();
    super::netns::run_in(Some(netns), "pod interface set-up", move || {
        let mut args: Vec<String> = Vec::new();
        if let Some(mtu) = moved.mtu {
            args.extend(["mtu".into(), mtu.to_string()]);
        }
        if let Some(mac) = &moved.mac {
            args.extend(["address".into(), mac.clone()]);
        }
        args.push("up".into());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ip_link_set(&moved.pod_name, &args)
    })
    .inspect_err(|_| {
        // Half set up is not kept: back where it came from.
        if let Err(err) = move_out(netns, &netdev) {
            tracing::warn!(interface = %netdev.host_name, error = %err, "not moved back after a failed set-up");
        }
    })?;
    tracing::info!(interface = %netdev.host_name, name = %netdev.pod_name, netns = %netns.display(), "interface moved into the pod");
    Ok(netdev)
}

/// Moves a pod's interface back into ingotd's namespace under its own name, MTU and MAC. One
/// that is no longer in the pod (gone with its device, or never moved) is left as it is.
pub fn move_out(netns: &Path, netdev: &PodNetdev) -> Result<(), CriError> {
    if !netns.exists() {
        tracing::info!(interface = %netdev.host_name, netns = %netns.display(), "the pod's namespace is gone: nothing to move back");
        return Ok(());
    }
    let home =
        std::fs::File::open("/proc/self/ns/net").map_err(CriError::io("open /proc/self/ns/net"))?;
    let present = {
        let name = netdev.pod_name.clone();
        super::netns::run_in(Some(netns), "pod interface lookup", move || {
            Ok(link_state(&name).is_ok())
        })?
    };
    if !present {
        tracing::info!(interface = %netdev.pod_name, "not in the pod any more: nothing to move back");
        return Ok(());
    }
    let (name, host_name) = (netdev.pod_name.clone(), netdev.host_name.clone());
    super::netns::run_in(Some(netns), "pod interface move-out", move || {
        move_link(&name, &host_name, &home)
    })?;
    let mut args: Vec<String> = Vec::new();
    if let Some(mtu) = netdev.original_mtu.filter(|_| netdev.mtu.is_some()) {
        args.extend(["mtu".into(), mtu.to_string()]);
    }
    if let Some(mac) = netdev
        .original_mac
        .as_ref()
        .filter(|_| netdev.mac.is_some())
    {
        args.extend(["address".into(), mac.clone()]);
    }
    if !args.is_empty() {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ip_link_set(&netdev.host_name, &args)?;
    }
    if let Some((pf, index, _)) = &netdev.vlan {
        if let Err(err) = ip_link_set(pf, &["vf", &index.to_string(), "vlan", "0"]) {
            tracing::warn!(interface = %netdev.host_name, pf = %pf, error = %err, "VF VLAN not cleared");
        }
    }
    tracing::info!(interface = %netdev.host_name, "interface moved back from the pod");
    Ok(())
}
