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

/// Bytes and inodes used under `dir` (for ImageFsInfo).
pub fn usage(dir: &Path) -> (u64, u64) {
    let mut bytes = 0;
    let mut inodes = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            inodes += 1;
            if let Ok(meta) = entry.metadata() {
                if meta.is_dir() {
                    stack.push(entry.path());
                } else {
                    bytes += meta.len();
                }
            }
        }
    }
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
}
