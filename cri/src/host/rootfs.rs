//! Mounts on the node: a container's overlay rootfs, and the removal of a pod's directory with
//! what is mounted in it.

use std::{
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::CriError;

/// ext2/3/4's `T` attribute (`chattr +T`): the directory's subdirectories each top a hierarchy
/// of their own.
const FS_TOPDIR_FL: libc::c_int = 0x0002_0000;

/// Marks `dir`, the parent of the writable layers, as the top of directory hierarchies, so
/// ext4's Orlov allocator spreads each container's layer over the block groups as it does
/// directories made at the root, instead of packing every layer into the parent's group. On
/// an ext4 without a journal this is what keeps a churning node's layer creation cheap: a new
/// inode there is taken only after every inode its group freed in the last minute is passed
/// over, one by one, and a group that holds every layer has all of them. Returns false where
/// the filesystem has no such attribute (tmpfs, xfs, overlay: `ENOTTY` or `EOPNOTSUPP`).
pub fn spread_subdirectories(dir: &Path) -> std::io::Result<bool> {
    let file = std::fs::File::open(dir)?;
    let unsupported = |err: std::io::Error| match err.raw_os_error() {
        Some(libc::ENOTTY | libc::EOPNOTSUPP | libc::EINVAL) => Ok(false),
        _ => Err(err),
    };
    let mut flags = match inode_flags(&file) {
        Ok(flags) => flags,
        Err(err) => return unsupported(err),
    };
    if flags & FS_TOPDIR_FL == 0 {
        flags |= FS_TOPDIR_FL;
        // SAFETY: FS_IOC_SETFLAGS reads an int from `flags`, which outlives the call (its
        // request number is sized for a long, as the kernel's is; the kernel reads an int).
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::FS_IOC_SETFLAGS, &raw const flags) } != 0 {
            return unsupported(std::io::Error::last_os_error());
        }
    }
    Ok(true)
}

/// The inode flags of an open file (`lsattr`).
fn inode_flags(file: &std::fs::File) -> std::io::Result<libc::c_int> {
    let mut flags: libc::c_int = 0;
    // SAFETY: FS_IOC_GETFLAGS writes an int into `flags`, which outlives the call.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::FS_IOC_GETFLAGS, &raw mut flags) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(flags)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    /// ext2, ext3 and ext4 share a superblock magic.
    const EXT4_SUPER_MAGIC: i64 = 0xEF53;

    #[test]
    fn the_layers_parent_tops_directory_hierarchies_on_ext4() {
        let dir = tempfile::tempdir().expect("tempdir");
        let magic = nix::sys::statfs::statfs(dir.path())
            .expect("statfs")
            .filesystem_type()
            .0;
        let spread = spread_subdirectories(dir.path()).expect("spread");
        if magic == EXT4_SUPER_MAGIC {
            assert!(spread);
            let file = std::fs::File::open(dir.path()).expect("open");
            assert_ne!(inode_flags(&file).expect("flags") & FS_TOPDIR_FL, 0);
            // Again: nothing to change.
            assert!(spread_subdirectories(dir.path()).expect("again"));
        } else if spread {
            let file = std::fs::File::open(dir.path()).expect("open");
            assert_ne!(inode_flags(&file).expect("flags") & FS_TOPDIR_FL, 0);
        }
    }

    #[test]
    fn a_missing_layers_parent_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = spread_subdirectories(&dir.path().join("absent")).expect_err("absent");
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }
}
