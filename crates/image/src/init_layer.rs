//! An image's init layer: a read-only overlay layer on top of the image's own that holds the
//! mount points every container of a pod gets and the image may lack (`/etc/hostname`,
//! `/etc/hosts`, `/etc/resolv.conf`), as Docker's `-init` layer does, but made once per image
//! and shared by its containers. Without it the runtime creates them in each container's
//! writable layer (a copy-up of `/etc` and three files on the disk per container create, and as
//! many deletions at removal).
//!
//! Only what the image lacks is added, so nothing the image has is hidden; an `/etc` the layer
//! adds to an image that has one takes the mode and owner of the image's own.

use std::{
    os::unix::fs::{FileTypeExt, MetadataExt},
    path::{Path, PathBuf},
};

use crate::ImageError;

/// The mount points an init layer provides, relative to the rootfs, under [`ETC`].
pub const MOUNT_POINTS: [&str; 3] = ["hostname", "hosts", "resolv.conf"];
const ETC: &str = "etc";

fn io(context: String) -> impl FnOnce(std::io::Error) -> ImageError {
    move |source| ImageError::Io { context, source }
}

/// An overlayfs whiteout: a 0/0 character device.
fn is_whiteout(meta: &std::fs::Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

/// What the merged view of `layers` (bottom first, overlayfs form) has at `etc/<name>`:
/// `Some(true)` present, `Some(false)` absent; None when `/etc` is something other than a
/// directory (a symlink), where the layer adds nothing.
fn etc_entry(layers: &[PathBuf], name: &str) -> Option<bool> {
    for layer in layers.iter().rev() {
        let etc = layer.join(ETC);
        match std::fs::symlink_metadata(&etc) {
            Err(_) => continue,
            Ok(meta) if is_whiteout(&meta) => return Some(false),
            Ok(meta) if !meta.is_dir() => return None,
            Ok(_) => {}
        }
        if let Ok(meta) = std::fs::symlink_metadata(etc.join(name)) {
            return Some(!is_whiteout(&meta));
        }
        if crate::unpack::is_opaque(&etc) {
            return Some(false);
        }
    }
    Some(false)
}

/// The topmost `/etc` directory of `layers`, whose mode and owner the init layer's copies.
fn image_etc(layers: &[PathBuf]) -> Option<std::fs::Metadata> {
    for layer in layers.iter().rev() {
        match std::fs::symlink_metadata(layer.join(ETC)) {
            Ok(meta) if meta.is_dir() => return Some(meta),
            Ok(_) => return None,
            Err(_) => continue,
        }
    }
    None
}

/// The mount points of [`MOUNT_POINTS`] that `layers` lack; empty when none or when `/etc` is
/// not a directory.
pub fn missing(layers: &[PathBuf]) -> Vec<&'static str> {
    let mut missing = Vec::new();
    for name in MOUNT_POINTS {
        match etc_entry(layers, name) {
            None => return Vec::new(),
            Some(true) => {}
            Some(false) => missing.push(name),
        }
    }
    missing
}

/// Fills `dir` (new, empty) with `etc/` and an empty file for each of `names`.
pub fn build(dir: &Path, layers: &[PathBuf], names: &[&str]) -> Result<(), ImageError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let etc = dir.join(ETC);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&etc)
        .map_err(io(format!("create {}", etc.display())))?;
    if let Some(meta) = image_etc(layers) {
        std::fs::set_permissions(&etc, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(io(format!("chmod {}", etc.display())))?;
        std::os::unix::fs::lchown(&etc, Some(meta.uid()), Some(meta.gid()))
            .map_err(io(format!("chown {}", etc.display())))?;
    }
    for name in names {
        let file = etc.join(name);
        std::fs::File::create(&file).map_err(io(format!("create {}", file.display())))?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644))
            .map_err(io(format!("chmod {}", file.display())))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn layer(root: &Path, name: &str, files: &[&str]) -> PathBuf {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        for file in files {
            let path = dir.join(file);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(&path, b"x").expect("write");
        }
        dir
    }

    fn whiteout(path: &Path) {
        nix::sys::stat::mknod(
            path,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .expect("mknod (root)");
    }

    #[test]
    fn only_what_the_merged_image_lacks_is_missing() {
        let root = tempfile::tempdir().expect("tempdir");
        let bottom = layer(root.path(), "0", &["etc/hosts", "etc/hostname", "bin/sh"]);
        let top = layer(root.path(), "1", &["etc/passwd"]);
        let layers = vec![bottom.clone(), top.clone()];
        assert_eq!(missing(&layers), vec!["resolv.conf"]);

        // A whiteout in a higher layer removes the lower file.
        whiteout(&top.join("etc/hosts"));
        assert_eq!(missing(&layers), vec!["hosts", "resolv.conf"]);

        // An opaque /etc hides everything below it.
        let opaque = layer(root.path(), "2", &["etc/group"]);
        crate::unpack::set_xattr(&opaque.join("etc"), "trusted.overlay.opaque", b"y")
            .expect("set the opaque xattr (root)");
        let layers = vec![bottom.clone(), top.clone(), opaque];
        assert_eq!(missing(&layers), MOUNT_POINTS.to_vec());

        // No /etc at all: everything is missing.
        let bare = layer(root.path(), "3", &["bin/sh"]);
        assert_eq!(missing(&[bare]), MOUNT_POINTS.to_vec());

        // An /etc that is a symlink: the layer adds nothing.
        let linked = layer(root.path(), "4", &["usr/etc/hosts"]);
        std::os::unix::fs::symlink("usr/etc", linked.join("etc")).expect("symlink");
        assert!(missing(&[linked]).is_empty());
    }

    #[test]
    fn the_layer_keeps_the_image_etc_mode_and_owner() {
        let root = tempfile::tempdir().expect("tempdir");
        let image = layer(root.path(), "0", &["etc/passwd"]);
        std::fs::set_permissions(image.join("etc"), std::fs::Permissions::from_mode(0o750))
            .expect("chmod");
        std::os::unix::fs::lchown(image.join("etc"), Some(123), Some(456)).expect("chown (root)");
        let init = root.path().join("init");
        let layers = vec![image];
        build(&init, &layers, &missing(&layers)).expect("build");
        let etc = std::fs::metadata(init.join("etc")).expect("etc");
        assert_eq!(etc.mode() & 0o7777, 0o750);
        assert_eq!((etc.uid(), etc.gid()), (123, 456));
        for name in MOUNT_POINTS {
            let file = std::fs::metadata(init.join("etc").join(name)).expect(name);
            assert!(file.is_file() && file.len() == 0, "{name}");
            assert_eq!(file.mode() & 0o777, 0o644, "{name}");
        }
        let names: Vec<_> = std::fs::read_dir(init.join("etc"))
            .expect("read")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), MOUNT_POINTS.len(), "{names:?}");
    }
}
