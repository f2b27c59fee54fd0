//! The shim's errors, and their one mapping to ttrpc status codes.

use containerd_shim::protos::ttrpc::{self, Code};
use ingot_oci::OciError;

/// Everything a Task RPC can fail with. Variants keep NotFound, AlreadyExists, InvalidArgument and
/// FailedPrecondition apart so containerd maps them to the right errdefs.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("container {id}: {source}")]
    Spec {
        id: String,
        #[source]
        source: OciError,
    },
    #[error("container {id}: already exists")]
    AlreadyExists { id: String },
    #[error("container {id}: not found")]
    ContainerNotFound { id: String },
    #[error("container {id}: exec {exec_id:?} not found")]
    ExecNotFound { id: String, exec_id: String },
    #[error("container {id}: exec {exec_id:?} already exists")]
    ExecExists { id: String, exec_id: String },
    #[error("container {id}: process {exec_id:?}: process already finished")]
    ProcessFinished { id: String, exec_id: String },
    #[error("{what}: {reason}")]
    FailedPrecondition { what: String, reason: String },
    #[error("{what}: {reason}")]
    InvalidArgument { what: String, reason: String },
    #[error("container {id}: {op} failed: {message}")]
    Runtime {
        id: String,
        op: &'static str,
        message: String,
    },
    /// A failure the runtime helper reported with its code.
    #[error("{message}")]
    Helper { code: Code, message: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl ShimError {
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ShimError {
        let context = context.into();
        move |source| ShimError::Io { context, source }
    }

    pub fn code(&self) -> Code {
        match self {
            ShimError::Spec { source, .. } => match source {
                OciError::ExecutableNotFound { .. } | OciError::RootfsMissing { .. } => {
                    Code::NOT_FOUND
                }
                OciError::HugetlbUnavailable { .. } => Code::FAILED_PRECONDITION,
                OciError::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                    Code::NOT_FOUND
                }
                _ => Code::INVALID_ARGUMENT,
            },
            ShimError::AlreadyExists { .. } | ShimError::ExecExists { .. } => Code::ALREADY_EXISTS,
            ShimError::ContainerNotFound { .. }
            | ShimError::ExecNotFound { .. }
            | ShimError::ProcessFinished { .. } => Code::NOT_FOUND,
            ShimError::FailedPrecondition { .. } => Code::FAILED_PRECONDITION,
            ShimError::InvalidArgument { .. } => Code::INVALID_ARGUMENT,
            ShimError::Helper { code, .. } => *code,
            ShimError::Runtime { .. } | ShimError::Io { .. } => Code::UNKNOWN,
        }
    }

    /// The message with its whole source chain, as the RPC edge shows it.
    pub fn full_message(&self) -> String {
        let mut message = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            let text = cause.to_string();
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            source = cause.source();
        }
        message
    }
}

/// Renders the whole source chain into the status message, so containerd shows the cause.
impl From<ShimError> for ttrpc::Error {
    fn from(err: ShimError) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(err.code(), err.full_message()))
    }
}

pub type Result<T, E = ShimError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn status_of(err: ShimError) -> (Code, String) {
        match ttrpc::Error::from(err) {
            ttrpc::Error::RpcStatus(status) => (status.code(), status.message().to_string()),
            other => panic!("not a status: {other:?}"),
        }
    }

    #[test]
    fn codes_stay_distinct() {
        let (code, message) = status_of(ShimError::AlreadyExists { id: "c1".into() });
        assert_eq!(code, Code::ALREADY_EXISTS);
        assert_eq!(message, "container c1: already exists");
        let (code, _) = status_of(ShimError::ExecNotFound {
            id: "c1".into(),
            exec_id: "e1".into(),
        });
        assert_eq!(code, Code::NOT_FOUND);
        let (code, message) = status_of(ShimError::Spec {
            id: "c1".into(),
            source: OciError::ExecutableNotFound {
                name: "nope".into(),
            },
        });
        assert_eq!(code, Code::NOT_FOUND);
        assert!(message.contains("exec: \"nope\": executable file not found in $PATH"));
        let (code, _) = status_of(ShimError::Spec {
            id: "c1".into(),
            source: OciError::InvalidField {
                field: "linux.cgroupsPath",
                reason: "relative".into(),
            },
        });
        assert_eq!(code, Code::INVALID_ARGUMENT);
    }

    #[test]
    fn message_keeps_the_io_cause() {
        let (code, message) = status_of(ShimError::Io {
            context: "open stdout fifo /x".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOENT),
        });
        assert_eq!(code, Code::UNKNOWN);
        assert!(
            message.starts_with("open stdout fifo /x: No such file"),
            "{message}"
        );
    }
}
