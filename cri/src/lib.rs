//! ingotd's CRI v1 server: RuntimeService and ImageService over gRPC on a unix socket, its
//! configuration, and (as they land) the state store and the pod and container managers that
//! drive one `containerd-shim-ingot-v2` per pod.

pub mod config;
pub mod containers;
pub mod images;
pub mod manager;
pub mod pods;
pub mod runtime;
pub mod server;
pub mod shim_client;
pub mod stats;
pub mod status;
pub mod store;

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
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}
