//! Images for ingot: references normalised like containerd's, pull with `oci-client` (tags and
//! digests, image index → linux/amd64, basic auth, per-registry mirrors and plain http), a
//! content store that verifies every blob's digest before it is visible, image metadata in
//! `redb`, and layers unpacked in overlayfs form (whiteouts as 0/0 devices, opaque directories).
//! Overlay rootfs assembly lands with containers.

pub mod init_layer;
pub mod reference;
pub mod store;
pub mod unpack;

use std::path::Path;

pub use store::{ContentStore, ImageRecord, ImageStore};

/// Everything pulling or looking up an image can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
    #[error("image {reference:?} not found")]
    NotFound { reference: String },
    #[error("pull {reference:?} from {registry}: {message}")]
    Registry {
        reference: String,
        registry: String,
        message: String,
    },
    #[error("blob {expected}: content has digest {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("image metadata store {path}: {message}")]
    Store { path: String, message: String },
}

/// Normalises a reference the way containerd does: `busybox` →
/// `docker.io/library/busybox:latest`, a missing tag is `latest` unless a digest is given.
pub fn normalize(reference: &str) -> Result<oci_client::Reference, ImageError> {
    if reference.is_empty() {
        return Err(ImageError::InvalidReference {
            reference: reference.into(),
            reason: "empty".into(),
        });
    }
    reference::parse(reference).map_err(|reason| ImageError::InvalidReference {
        reference: reference.into(),
        reason: reason.into(),
    })
}

/// `registry/repository:tag`, or `registry/repository@digest` without a tag.
pub fn reference_string(reference: &oci_client::Reference) -> String {
    reference.whole()
}

/// Registry hosts the client may talk plain http to: the configured ones and loopback.
pub fn is_loopback_registry(host: &str) -> bool {
    let name = host.rsplit_once(':').map_or(host, |(name, port)| {
        if port.chars().all(|c| c.is_ascii_digit()) {
            name
        } else {
            host
        }
    });
    name == "localhost" || name == "[::1]" || name.starts_with("127.")
}

/// Disk bytes and inodes used under `dir`, `dir` itself included (ImageFsInfo, a writable
/// layer's stats), as containerd's snapshotters count them: each inode once however many
/// links it has (an image's layer holds busybox's one binary under 400 names), and the blocks
/// it takes, not its length (a sparse file holds little).
pub fn usage(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let mut bytes = 0;
    let mut count = |meta: &std::fs::Metadata| {
        if seen.insert((meta.dev(), meta.ino())) {
            bytes += meta.blocks() * 512;
        }
    };
    let Ok(top) = std::fs::symlink_metadata(dir) else {
        return (0, 0);
    };
    count(&top);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            // The entry itself: a symlink is not followed.
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            count(&meta);
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    let inodes = seen.len() as u64;
    (bytes, inodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_like_containerd() {
        let r = normalize("busybox").expect("short");
        assert_eq!(reference_string(&r), "docker.io/library/busybox:latest");
        let r = normalize("k8s/pause:3.9").expect("org");
        assert_eq!(reference_string(&r), "docker.io/k8s/pause:3.9");
        let r = normalize("127.0.0.1:5000/ingot/busybox:test").expect("local");
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "ingot/busybox");
        let digest = format!("sha256:{}", "a".repeat(64));
        let r = normalize(&format!("registry.k8s.io/pause@{digest}")).expect("digest");
        assert_eq!(r.digest(), Some(digest.as_str()));
        for bad in ["", "a b", "busybox:tag:extra", "docker.io/library/Busybox"] {
            assert!(normalize(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn loopback_registries() {
        assert!(is_loopback_registry("127.0.0.1:5000"));
        assert!(is_loopback_registry("localhost:5000"));
        assert!(is_loopback_registry("localhost"));
        assert!(!is_loopback_registry("registry.k8s.io"));
        assert!(!is_loopback_registry("10.0.0.1:5000"));
    }

    #[test]
    fn usage_counts_each_inode_once_and_its_blocks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).expect("bin");
        let data = vec![7u8; 1 << 20];
        std::fs::write(bin.join("busybox"), &data).expect("file");
        for name in ["sh", "ls", "cat"] {
            std::fs::hard_link(bin.join("busybox"), bin.join(name)).expect("link");
        }
        std::os::unix::fs::symlink("/nowhere", dir.path().join("dangling")).expect("symlink");
        let sparse = std::fs::File::create(dir.path().join("sparse")).expect("sparse");
        sparse.set_len(1 << 30).expect("truncate");
        let (bytes, inodes) = usage(dir.path());
        // The directory, bin, one busybox whatever its names, the symlink, the sparse file.
        assert_eq!(inodes, 5);
        assert!(
            (1 << 20..2 << 20).contains(&bytes),
            "one MiB of data once, not four, nor the sparse file's length: {bytes}"
        );
        assert_eq!(usage(&dir.path().join("missing")), (0, 0));
    }
}
