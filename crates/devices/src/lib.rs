//! Devices for containers: CDI specs read from their directories and injected into an OCI spec
//! (`cdi`), and CDI specs generated from what a node has (`nvidia`).

pub mod cdi;
pub mod nvidia;
pub mod sriov;

use std::path::PathBuf;

/// What can go wrong reading, generating or injecting devices.
#[derive(Debug, thiserror::Error)]
pub enum DevicesError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {reason}", path.display())]
    Malformed { path: PathBuf, reason: String },
    #[error("{source_field}: {name:?} is not a qualified CDI device name (vendor.com/class=name)")]
    InvalidName { name: String, source_field: String },
    #[error("unknown CDI device {name:?}: no spec in {dirs} defines it{broken}")]
    UnknownDevice {
        name: String,
        dirs: String,
        broken: String,
    },
    #[error("ambiguous CDI device {name:?}: defined by {}", files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(" and "))]
    Ambiguous { name: String, files: Vec<PathBuf> },
    #[error(
        "conflicting CDI devices: {first} and {second} both put something different at {path}"
    )]
    Conflict {
        path: String,
        first: String,
        second: String,
    },
    #[error("{what}: {reason}")]
    Sriov { what: String, reason: String },
    #[error("CDI device {devices}: {reason}")]
    Cdi { devices: String, reason: String },
    #[error("no NVIDIA GPU found under {}: {reason}", root.display())]
    NoNvidiaGpu { root: PathBuf, reason: String },
    #[error("{}: missing, the device node of NVIDIA GPU {gpu}", path.display())]
    MissingDeviceNode { path: PathBuf, gpu: String },
}

impl DevicesError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DevicesError::Io {
            path: path.into(),
            source,
        }
    }
}
