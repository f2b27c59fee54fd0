//! The one mapping from ingotd's errors to gRPC status codes, with the whole cause chain in the
//! message.

use tonic::{Code, Status};

use ingot_image::ImageError;
use ingot_oci::OciError;
use ingot_placement::PlacementError;

use crate::CriError;

impl CriError {
    pub fn code(&self) -> Code {
        match self {
            CriError::Config(_) | CriError::InvalidArgument { .. } => Code::InvalidArgument,
            CriError::Unimplemented { .. } => Code::Unimplemented,
            CriError::Image(err) => match err {
                ImageError::InvalidReference { .. } => Code::InvalidArgument,
                ImageError::NotFound { .. } => Code::NotFound,
                ImageError::Registry { .. } => Code::Unavailable,
                ImageError::DigestMismatch { .. } => Code::DataLoss,
                ImageError::Io { .. } | ImageError::Store { .. } => Code::Internal,
            },
            CriError::Io { .. } | CriError::Store { .. } | CriError::Netns(_) => Code::Internal,
            CriError::NotFound { .. } => Code::NotFound,
            CriError::AlreadyExists { .. } => Code::AlreadyExists,
            CriError::FailedPrecondition { .. } => Code::FailedPrecondition,
            CriError::DeadlineExceeded { .. } => Code::DeadlineExceeded,
            CriError::Shim { code, .. } => *code,
            CriError::Topology(_) => Code::Internal,
            CriError::Placement(err) | CriError::Oci(OciError::Placement { source: err, .. }) => {
                match err {
                    PlacementError::InsufficientCpus { .. } | PlacementError::NoHugepageNodes => {
                        Code::ResourceExhausted
                    }
                    PlacementError::Checkpoint { .. } | PlacementError::NoOnlineCpus => {
                        Code::Internal
                    }
                    PlacementError::UnknownContainer { .. } => Code::NotFound,
                    _ => Code::InvalidArgument,
                }
            }
            CriError::Oci(err) => match err {
                OciError::InvalidField { .. }
                | OciError::ExecutableNotFound { .. }
                | OciError::HugetlbUnavailable { .. } => Code::InvalidArgument,
                OciError::RootfsMissing { .. } => Code::FailedPrecondition,
                OciError::Read { .. } | OciError::Malformed { .. } | OciError::Build { .. } => {
                    Code::Internal
                }
                OciError::Placement { .. } => Code::InvalidArgument,
            },
        }
    }
}

impl From<CriError> for Status {
    fn from(err: CriError) -> Self {
        let mut message = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(cause) = source {
            let text = cause.to_string();
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            source = cause.source();
        }
        Status::new(err.code(), message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_messages() {
        let status = Status::from(CriError::Unimplemented {
            rpc: "RunPodSandbox",
        });
        assert_eq!(status.code(), Code::Unimplemented);
        assert_eq!(
            status.message(),
            "RunPodSandbox: not implemented yet in ingotd"
        );
        let status = Status::from(CriError::InvalidArgument {
            field: "runtime_config.network_config.pod_cidr",
            reason: "\"10.0.0.0/33\" is not a CIDR".into(),
        });
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status
            .message()
            .starts_with("runtime_config.network_config.pod_cidr:"));
    }
}
