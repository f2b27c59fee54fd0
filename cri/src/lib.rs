//! ingotd's CRI v1 server, in layers that call one way:
//! `rpc` (tonic handlers: decode, validate, map errors) → `lifecycle` (pods, containers, exec,
//! stats, recovery; ordering and rollback) → the `store`, the `shim_client`, `host` (everything
//! that changes the node, under a root path) and `ingot_oci`'s spec steps. `convert` (records to
//! CRI messages), `config`, `metrics` and `sysctl` are leaves any layer may use.

pub mod config;
pub mod convert;
pub mod host;
pub mod lifecycle;
pub mod metrics;
pub mod rpc;
pub mod shim_client;
pub mod store;
pub mod sysctl;

/// Everything ingotd's RPCs and start-up can fail with; mapped to gRPC codes in `status`.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("config: {0}")]
    Config(String),
    #[error("{rpc}: not implemented yet in ingotd")]
    Unimplemented { rpc: &'static str },
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("{what} already exists")]
    AlreadyExists { what: String },
    #[error("{what}: {reason}")]
    FailedPrecondition { what: String, reason: String },
    #[error("{what}: {reason}")]
    DeadlineExceeded { what: String, reason: String },
    #[error("shim {method}: {message}")]
    Shim {
        method: &'static str,
        code: tonic::Code,
        message: String,
    },
    #[error("state store {path}: {message}")]
    Store { path: String, message: String },
    #[error(transparent)]
    Image(#[from] ingot_image::ImageError),
    #[error(transparent)]
    Netns(#[from] ingot_netns::NetnsError),
    #[error(transparent)]
    Oci(#[from] ingot_oci::OciError),
    #[error("node topology: {0}")]
    Topology(#[from] ingot_topology::TopologyError),
    #[error("placement: {0}")]
    Placement(#[from] ingot_placement::PlacementError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl CriError {
    /// InvalidArgument naming the request field.
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> CriError {
        CriError::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }

    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> CriError {
        let context = context.into();
        move |source| CriError::Io { context, source }
    }

    /// A blocking task that did not finish (it panicked or was cancelled).
    pub fn join(what: &str) -> impl FnOnce(tokio::task::JoinError) -> CriError + '_ {
        move |err| CriError::Io {
            context: format!("{what} task"),
            source: std::io::Error::other(err.to_string()),
        }
    }
}
