//! Mounts on the node: a container's overlay rootfs, and the removal of a pod's directory with
//! what is mounted in it.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::CriError;
/// The overlay rootfs: the image's layers (top first) under the container's writable layer.
pub fn mount_rootfs(lower: &[PathBuf], snapshot: &Path, rootfs: &Path) -> Result<(), CriError> {
    let upper = snapshot.join("upper");
    let work = snapshot.join("work");
    for dir in [&upper, &work, &rootfs.to_path_buf()] {
        std::fs::create_dir_all(dir).map_err(CriError::io(format!("create {}", dir.display())))?;
    }
    let lowerdir: Vec<String> = lower
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowerdir.join(":"),
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        rootfs,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(|errno| CriError::Io {
        context: format!(
            "mount the overlay rootfs at {}{}",
            rootfs.display(),
            // ENODEV: the kernel knows no `overlay` filesystem (its module not loaded).
            if errno == nix::errno::Errno::ENODEV {
                " (no overlay filesystem in this kernel: `modprobe overlay`)"
            } else {
                ""
            }
        ),
        source: errno.into(),
    })
}

pub fn unmount_rootfs(rootfs: &Path) {
    let _ = umount2(rootfs, MntFlags::MNT_DETACH);
}

/// Unmounts and removes a pod directory (namespaces, shm, files). Idempotent.
pub fn remove_pod_dir(dir: &Path) {
    for name in ["ns/net", "ns/ipc", "ns/uts", "shm"] {
        let _ = umount2(&dir.join(name), MntFlags::MNT_DETACH);
    }
    let _ = std::fs::remove_dir_all(dir);
}
