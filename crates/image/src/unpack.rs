//! Unpacking one image layer into its own directory, for use as an overlayfs lower layer:
//! regular entries are extracted confined to the directory (no `..`, no absolute paths, no
//! escape through symlinks), OCI whiteouts become overlayfs whiteouts (`.wh.NAME` → a 0/0
//! character device `NAME`; `.wh..wh..opq` → `trusted.overlay.opaque=y` on its directory).

use std::{
    ffi::CString,
    io::Read,
    os::unix::ffi::OsStrExt,
    path::{Component, Path, PathBuf},
};

use crate::ImageError;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ImageError {
    let context = context.into();
    move |source| ImageError::Io { context, source }
}

fn invalid(path: &Path, reason: &str) -> ImageError {
    ImageError::Io {
        context: format!("layer entry {}", path.display()),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, reason.to_string()),
    }
}

/// The entry's path inside the layer, refused when it is absolute or climbs with `..`.
fn confined(path: &Path) -> Result<PathBuf, ImageError> {
    let mut clean = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => clean.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(invalid(path, "leaves the layer (absolute or \"..\")"));
            }
        }
    }
    Ok(clean)
}

/// Opens a layer blob for reading as a tar stream, by its media type.
pub fn layer_reader<'a>(
    blob: impl Read + 'a,
    media_type: &str,
) -> Result<Box<dyn Read + 'a>, ImageError> {
    if media_type.ends_with("+gzip") || media_type.ends_with(".tar.gzip") {
        Ok(Box::new(flate2::read::GzDecoder::new(blob)))
    } else if media_type.ends_with(".tar") || media_type.ends_with("layer.v1.tar") {
        Ok(Box::new(blob))
    } else {
        Err(ImageError::InvalidReference {
            reference: media_type.to_string(),
            reason: "unsupported layer media type (tar and tar+gzip are)".into(),
        })
    }
}

/// Extracts the tar stream `layer` into `dest` (created if missing), in overlayfs form.
pub fn unpack_layer(layer: impl Read, dest: &Path) -> Result<(), ImageError> {
    std::fs::create_dir_all(dest).map_err(io(format!("create {}", dest.display())))?;
    let mut archive = tar::Archive::new(layer);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    let entries = archive
        .entries()
        .map_err(io(format!("read layer for {}", dest.display())))?;
    for entry in entries {
        let mut entry = entry.map_err(io(format!("read layer for {}", dest.display())))?;
        let raw = entry.path().map_err(io("layer entry path"))?.into_owned();
        let path = confined(&raw)?;
        let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            continue;
        };
        let parent = dest.join(path.parent().unwrap_or(Path::new("")));
        if name == OPAQUE_MARKER {
            std::fs::create_dir_all(&parent).map_err(io(format!("create {}", parent.display())))?;
            set_xattr(&parent, OPAQUE_XATTR, b"y")?;
        } else if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            std::fs::create_dir_all(&parent).map_err(io(format!("create {}", parent.display())))?;
            let target = parent.join(hidden);
            let _ = std::fs::remove_file(&target);
            nix::sys::stat::mknod(
                &target,
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::empty(),
                0,
            )
            .map_err(|errno| ImageError::Io {
                context: format!("whiteout {}", target.display()),
                source: errno.into(),
            })?;
        } else {
            // unpack_in refuses entries that would land outside `dest`, through links too.
            let unpacked = entry
                .unpack_in(dest)
                .map_err(io(format!("unpack {}", raw.display())))?;
            if !unpacked {
                return Err(invalid(&raw, "leaves the layer"));
            }
        }
    }
    Ok(())
}

/// Whether `dir` is an overlayfs opaque directory (`trusted.overlay.opaque=y`, as an OCI
/// `.wh..wh..opq` is unpacked): nothing of the layers below shows through it.
pub(crate) fn is_opaque(dir: &Path) -> bool {
    let (Ok(path), Ok(name)) = (
        CString::new(dir.as_os_str().as_bytes()),
        CString::new(OPAQUE_XATTR),
    ) else {
        return false;
    };
    let mut value = [0u8; 1];
    // SAFETY: both strings are NUL-terminated and the buffer is as long as the size passed.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    n == 1 && value[0] == b'y'
}

pub(crate) fn set_xattr(path: &Path, name: &str, value: &[u8]) -> Result<(), ImageError> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| invalid(path, "path holds a NUL byte"))?;
    let c_name = CString::new(name).map_err(|_| invalid(path, "xattr name holds a NUL byte"))?;
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let rc = unsafe {
        libc::lsetxattr(
            c_path.as_ptr(),
            c_name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc < 0 {
        return Err(ImageError::Io {
            context: format!("set {name} on {}", path.display()),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileTypeExt;

    use super::*;

    fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut header = tar::Header::new_gnu();
            if path.ends_with('/') {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
            } else {
                header.set_mode(0o644);
                header.set_size(data.len() as u64);
            }
            header.set_path(path).expect("path");
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(0);
            header.set_cksum();
            builder.append(&header, *data).expect("append");
        }
        builder.into_inner().expect("tar")
    }

    /// A tar whose single entry's name is written raw, bypassing the builder's own checks.
    fn tar_with_raw_name(name: &str) -> Vec<u8> {
        let mut header = tar::Header::new_old();
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_mode(0o644);
        header.set_size(1);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_cksum();
        let mut bytes = header.as_bytes().to_vec();
        let mut block = [0u8; 512];
        block[0] = b'x';
        bytes.extend_from_slice(&block);
        bytes.extend_from_slice(&[0u8; 1024]);
        bytes
    }

    #[test]
    fn files_and_whiteouts_in_overlay_form() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layer = tar_of(&[
            ("etc/", b""),
            ("etc/hostname", b"ingot\n"),
            ("etc/.wh.motd", b""),
            ("var/lib/", b""),
            ("var/lib/.wh..wh..opq", b""),
        ]);
        unpack_layer(layer.as_slice(), dir.path()).expect("unpack");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("etc/hostname")).expect("file"),
            "ingot\n"
        );
        let whiteout = std::fs::symlink_metadata(dir.path().join("etc/motd")).expect("whiteout");
        assert!(whiteout.file_type().is_char_device());
        assert!(!dir.path().join("etc/.wh.motd").exists());
        assert!(is_opaque(&dir.path().join("var/lib")));
        assert!(!is_opaque(&dir.path().join("etc")));
    }

    #[test]
    fn entries_that_leave_the_layer_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("layer");
        let err =
            unpack_layer(tar_with_raw_name("../escape").as_slice(), &dest).expect_err("parent dir");
        assert!(err.to_string().contains("leaves the layer"), "{err}");
        assert!(!dir.path().join("escape").exists());
        let err = unpack_layer(tar_with_raw_name("/abs").as_slice(), &dest).expect_err("absolute");
        assert!(err.to_string().contains("leaves the layer"), "{err}");
    }

    #[test]
    fn media_types() {
        assert!(layer_reader(&b""[..], "application/vnd.oci.image.layer.v1.tar").is_ok());
        assert!(layer_reader(&b""[..], "application/vnd.oci.image.layer.v1.tar+gzip").is_ok());
        assert!(layer_reader(
            &b""[..],
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
        )
        .is_ok());
        let err = layer_reader(&b""[..], "application/vnd.oci.image.layer.v1.tar+zstd")
            .err()
            .expect("zstd refused");
        assert!(err.to_string().contains("zstd"), "{err}");
    }
}
