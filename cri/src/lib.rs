//! ingotd's CRI v1 server: RuntimeService and ImageService over gRPC on a unix socket, its
//! configuration, and (as they land) the state store and the pod and container managers that
//! drive one `containerd-shim-ingot-v2` per pod.

pub mod config;
pub mod images;
pub mod runtime;
pub mod server;
pub mod status;

/// Everything ingotd's RPCs and start-up can fail with; mapped to gRPC codes in `status`.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("config: {0}")]
    Config(String),
    #[error("{rpc}: not implemented yet in ingotd")]
    Unimplemented { rpc: &'static str },
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error(transparent)]
    Image(#[from] ingot_image::ImageError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}
