//! Host device nodes a container asks for, as stat(2) sees them.

use std::os::unix::fs::{FileTypeExt, MetadataExt};

use ingot_oci::cri::HostDevice;
use k8s_cri::v1;

use crate::CriError;

/// Directories of `/dev` a privileged container does not get from the host: its own
/// (`pts`, `shm`, `mqueue` are mounted fresh) and bookkeeping of other tools, as containerd
/// skips them.
const SKIPPED: &[&str] = &["pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"];

/// Every device node under the host's `/dev`, for a privileged container, as containerd's
/// `WithHostDevices` gives them (`/dev/console` left out: the container's terminal is its own).
pub fn host_devices() -> Vec<HostDevice> {
    let mut out = Vec::new();
    walk(std::path::Path::new("/dev"), &mut out);
    out.sort_by(|a, b| a.container_path.cmp(&b.container_path));
    out
}

fn walk(dir: &std::path::Path, out: &mut Vec<HostDevice>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let kind = meta.file_type();
        if kind.is_dir() {
            let name = entry.file_name();
            if !SKIPPED.iter().any(|s| name == *s) {
                walk(&path, out);
            }
        } else if (kind.is_char_device() || kind.is_block_device())
            && path != std::path::Path::new("/dev/console")
        {
            let Some(container_path) = path.to_str() else {
                continue;
            };
            let rdev = meta.rdev();
            out.push(HostDevice {
                container_path: container_path.to_string(),
                kind: if kind.is_char_device() { 'c' } else { 'b' },
                major: i64::try_from(nix::sys::stat::major(rdev)).unwrap_or(-1),
                minor: i64::try_from(nix::sys::stat::minor(rdev)).unwrap_or(-1),
                file_mode: meta.mode() & 0o7777,
                permissions: "rwm".into(),
            });
        }
    }
}

pub fn host_device(device: &v1::Device) -> Result<HostDevice, CriError> {
    let meta = std::fs::metadata(&device.host_path).map_err(|err| {
        CriError::invalid(
            "config.devices.host_path",
            format!("{:?}: {err}", device.host_path),
        )
    })?;
    let kind = if meta.file_type().is_char_device() {
        'c'
    } else if meta.file_type().is_block_device() {
        'b'
    } else {
        return Err(CriError::invalid(
            "config.devices.host_path",
            format!("{:?} is not a device node", device.host_path),
        ));
    };
    let rdev = meta.rdev();
    Ok(HostDevice {
        container_path: device.container_path.clone(),
        kind,
        major: i64::try_from(nix::sys::stat::major(rdev)).unwrap_or(-1),
        minor: i64::try_from(nix::sys::stat::minor(rdev)).unwrap_or(-1),
        file_mode: meta.mode() & 0o7777,
        permissions: if device.permissions.is_empty() {
            "rwm".into()
        } else {
            device.permissions.clone()
        },
    })
}
