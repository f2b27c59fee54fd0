//! Host device nodes a container asks for, as stat(2) sees them.

use std::os::unix::fs::{FileTypeExt, MetadataExt};

use ingot_oci::cri::HostDevice;
use k8s_cri::v1;

use crate::CriError;
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
