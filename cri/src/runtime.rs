//! RuntimeService. Answered today: Version, Status, RuntimeConfig, UpdateRuntimeConfig. Every
//! other RPC answers Unimplemented with a message naming it, until the pod and container
//! managers land.

use std::{net::IpAddr, path::Path, pin::Pin, sync::Mutex};

use k8s_cri::v1::{self, runtime_service_server::RuntimeService};
use tonic::{Request, Response, Status};

use crate::{config::Config, CriError};

pub const RUNTIME_NAME: &str = "ingot";
pub const CRI_API_VERSION: &str = "v1";

pub struct Runtime {
    config: Config,
    /// The pod CIDR the kubelet last gave (UpdateRuntimeConfig), for CNI.
    pod_cidr: Mutex<String>,
}

impl Runtime {
    pub fn new(config: Config) -> Self {
        Runtime {
            config,
            pod_cidr: Mutex::new(String::new()),
        }
    }

    pub fn pod_cidr(&self) -> String {
        self.pod_cidr
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

/// Whether `dir` holds a CNI network configuration (`*.conf`, `*.conflist`, `*.json`).
pub fn has_cni_config(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.flatten().any(|entry| {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            name.ends_with(".conf") || name.ends_with(".conflist") || name.ends_with(".json")
        })
    })
}

/// Checks a pod CIDR (`10.88.0.0/16`, `fd00::/64`); empty clears it.
pub fn validate_pod_cidr(cidr: &str) -> Result<(), CriError> {
    if cidr.is_empty() {
        return Ok(());
    }
    let invalid = || CriError::InvalidArgument {
        field: "runtime_config.network_config.pod_cidr",
        reason: format!("{cidr:?} is not an address/prefix CIDR"),
    };
    let (address, prefix) = cidr.split_once('/').ok_or_else(invalid)?;
    let address: IpAddr = address.parse().map_err(|_| invalid())?;
    let prefix: u8 = prefix.parse().map_err(|_| invalid())?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(invalid());
    }
    Ok(())
}

fn condition(kind: &str, ready: bool, reason: &str, message: String) -> v1::RuntimeCondition {
    v1::RuntimeCondition {
        r#type: kind.to_string(),
        status: ready,
        reason: if ready {
            String::new()
        } else {
            reason.to_string()
        },
        message: if ready { String::new() } else { message },
    }
}

type EventStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<v1::ContainerEventResponse, Status>> + Send>>;

#[tonic::async_trait]
impl RuntimeService for Runtime {
    async fn version(
        &self,
        _: Request<v1::VersionRequest>,
    ) -> Result<Response<v1::VersionResponse>, Status> {
        Ok(Response::new(v1::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: RUNTIME_NAME.into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: CRI_API_VERSION.into(),
        }))
    }

    async fn status(
        &self,
        request: Request<v1::StatusRequest>,
    ) -> Result<Response<v1::StatusResponse>, Status> {
        let conf_dir = &self.config.cni.conf_dir;
        let network_ready = has_cni_config(conf_dir);
        let conditions = vec![
            condition("RuntimeReady", true, "", String::new()),
            condition(
                "NetworkReady",
                network_ready,
                "NetworkPluginNotReady",
                format!("no CNI network configuration in {}", conf_dir.display()),
            ),
        ];
        let mut info = std::collections::HashMap::new();
        if request.get_ref().verbose {
            info.insert("config".to_string(), format!("{:?}", self.config));
            info.insert("podCIDR".to_string(), self.pod_cidr());
        }
        Ok(Response::new(v1::StatusResponse {
            status: Some(v1::RuntimeStatus { conditions }),
            info,
            ..Default::default()
        }))
    }

    async fn runtime_config(
        &self,
        _: Request<v1::RuntimeConfigRequest>,
    ) -> Result<Response<v1::RuntimeConfigResponse>, Status> {
        Ok(Response::new(v1::RuntimeConfigResponse {
            linux: Some(v1::LinuxRuntimeConfiguration {
                cgroup_driver: v1::CgroupDriver::Cgroupfs as i32,
            }),
        }))
    }

    async fn update_runtime_config(
        &self,
        request: Request<v1::UpdateRuntimeConfigRequest>,
    ) -> Result<Response<v1::UpdateRuntimeConfigResponse>, Status> {
        let cidr = request
            .into_inner()
            .runtime_config
            .and_then(|c| c.network_config)
            .map(|n| n.pod_cidr)
            .unwrap_or_default();
        validate_pod_cidr(&cidr)?;
        tracing::info!(pod_cidr = %cidr, "pod CIDR updated");
        *self
            .pod_cidr
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = cidr;
        Ok(Response::new(v1::UpdateRuntimeConfigResponse {}))
    }

    type GetContainerEventsStream = EventStream;

    async fn get_container_events(
        &self,
        _: Request<v1::GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        Err(CriError::Unimplemented {
            rpc: "GetContainerEvents",
        }
        .into())
    }

    async fn run_pod_sandbox(
        &self,
        _: Request<v1::RunPodSandboxRequest>,
    ) -> Result<Response<v1::RunPodSandboxResponse>, Status> {
        Err(CriError::Unimplemented {
            rpc: "RunPodSandbox",
        }
        .into())
    }

    async fn stop_pod_sandbox(
        &self,
        _: Request<v1::StopPodSandboxRequest>,
    ) -> Result<Response<v1::StopPodSandboxResponse>, Status> {
        Err(CriError::Unimplemented {
            rpc: "StopPodSandbox",
        }
        .into())
    }

    async fn remove_pod_sandbox(
        &self,
        _: Request<v1::RemovePodSandboxRequest>,
    ) -> Result<Response<v1::RemovePodSandboxResponse>, Status> {
        Err(CriError::Unimplemented {
            rpc: "RemovePodSandbox",
        }
        .into())
    }

    async fn pod_sandbox_status(
        &self,
        _: Request<v1::PodSandboxStatusRequest>,
    ) -> Result<Response<v1::PodSandboxStatusResponse>, Status> {
        Err(CriError::Unimplemented {
            rpc: "PodSandboxStatus",
        }
        .into())
    }

    async fn list_pod_sandbox(
        &self,
        _: Request<v1::ListPodSandboxRequest>,
    ) -> Result<Response<v1::ListPodSandboxResponse>, Status> {
        Err(CriError::Unimplemented {
            rpc: "ListPodSandbox",
        }
        .into())
    }

    async fn create_container(
        &self,
        _: Request<v1::CreateContainerRequest>,
    ) -> Result<Response<v1::CreateContainerResponse>, Status> {
        Err(CriError::Unimplemented {
            rpc: "CreateContainer",
        }
        .into())
    }

    async fn start_container(
        &self,
        _: Request<v1::StartContainerRequest>,
    ) -> Result<Response<v1::StartContainerResponse>, Status> {
        Err(CriError::Unimplemented {
            rpc: "StartContainer",
        }
        .into())
    }

    async fn stop_container(
        &self,
        _: Request<v1::StopContainerRequest>,
    ) -> Result<Response<v1::StopContainerResponse>, Status> {
        Err(CriError::Unimplemented {
            rpc: "StopContainer",
        }
        .into())
    }

    async fn remove_container(
        &self,
        _: Request<v1::RemoveContainerRequest>,
    ) -> Result<Response<v1::RemoveContainerResponse>, Status> {
        Err(CriError::Unimplemented {
            rpc: "RemoveContainer",
        }
        .into())
    }

    async fn list_containers(
        &self,
        _: Request<v1::ListContainersRequest>,
    ) -> Result<Response<v1::ListContainersResponse>, Status> {
        Err(CriError::Unimplemented {
            rpc: "ListContainers",
        }
        .into())
    }

    async fn container_status(
        &self,
        _: Request<v1::ContainerStatusRequest>,
    ) -> Result<Response<v1::ContainerStatusResponse>, Status> {
        Err(CriError::Unimplemented {
            rpc: "ContainerStatus",
        }
        .into())
    }

    async fn update_container_resources(
        &self,
        _: Request<v1::UpdateContainerResourcesRequest>,
    ) -> Result<Response<v1::UpdateContainerResourcesResponse>, Status> {
        Err(CriError::Unimplemented {
            rpc: "UpdateContainerResources",
        }
        .into())
    }

    async fn reopen_container_log(
        &self,
        _: Request<v1::ReopenContainerLogRequest>,
    ) -> Result<Response<v1::ReopenContainerLogResponse>, Status> {
        Err(CriError::Unimplemented {
            rpc: "ReopenContainerLog",
        }
        .into())
    }

    async fn exec_sync(
        &self,
        _: Request<v1::ExecSyncRequest>,
    ) -> Result<Response<v1::ExecSyncResponse>, Status> {
        Err(CriError::Unimplemented { rpc: "ExecSync" }.into())
    }

    async fn exec(
        &self,
        _: Request<v1::ExecRequest>,
    ) -> Result<Response<v1::ExecResponse>, Status> {
        Err(CriError::Unimplemented { rpc: "Exec" }.into())
    }

    async fn attach(
        &self,
        _: Request<v1::AttachRequest>,
    ) -> Result<Response<v1::AttachResponse>, Status> {
        Err(CriError::Unimplemented { rpc: "Attach" }.into())
    }

    async fn port_forward(
        &self,
        _: Request<v1::PortForwardRequest>,
    ) -> Result<Response<v1::PortForwardResponse>, Status> {
        Err(CriError::Unimplemented { rpc: "PortForward" }.into())
    }

    async fn container_stats(
        &self,
        _: Request<v1::ContainerStatsRequest>,
    ) -> Result<Response<v1::ContainerStatsResponse>, Status> {
        Err(CriError::Unimplemented {
            rpc: "ContainerStats",
        }
        .into())
    }

    async fn list_container_stats(
        &self,
        _: Request<v1::ListContainerStatsRequest>,
    ) -> Result<Response<v1::ListContainerStatsResponse>, Status> {
        Err(CriError::Unimplemented {
            rpc: "ListContainerStats",
        }
        .into())
    }

    async fn pod_sandbox_stats(
        &self,
        _: Request<v1::PodSandboxStatsRequest>,
    ) -> Result<Response<v1::PodSandboxStatsResponse>, Status> {
        Err(CriError::Unimplemented {
            rpc: "PodSandboxStats",
        }
        .into())
    }

    async fn list_pod_sandbox_stats(
        &self,
        _: Request<v1::ListPodSandboxStatsRequest>,
    ) -> Result<Response<v1::ListPodSandboxStatsResponse>, Status> {
        Err(CriError::Unimplemented {
            rpc: "ListPodSandboxStats",
        }
        .into())
    }

    async fn checkpoint_container(
        &self,
        _: Request<v1::CheckpointContainerRequest>,
    ) -> Result<Response<v1::CheckpointContainerResponse>, Status> {
        Err(CriError::Unimplemented {
            rpc: "CheckpointContainer",
        }
        .into())
    }

    async fn list_metric_descriptors(
        &self,
        _: Request<v1::ListMetricDescriptorsRequest>,
    ) -> Result<Response<v1::ListMetricDescriptorsResponse>, Status> {
        Err(CriError::Unimplemented {
            rpc: "ListMetricDescriptors",
        }
        .into())
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _: Request<v1::ListPodSandboxMetricsRequest>,
    ) -> Result<Response<v1::ListPodSandboxMetricsResponse>, Status> {
        Err(CriError::Unimplemented {
            rpc: "ListPodSandboxMetrics",
        }
        .into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_cidrs() {
        for ok in ["", "10.88.0.0/16", "fd00::/64", "0.0.0.0/0"] {
            assert!(validate_pod_cidr(ok).is_ok(), "{ok}");
        }
        for bad in [
            "10.88.0.0",
            "10.88.0.0/33",
            "fd00::/129",
            "x/8",
            "10.0.0.0/-1",
        ] {
            let err = validate_pod_cidr(bad).expect_err(bad);
            assert!(err.to_string().contains("pod_cidr"), "{err}");
        }
    }

    #[test]
    fn cni_config_detection() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(!has_cni_config(dir.path()));
        assert!(!has_cni_config(&dir.path().join("missing")));
        std::fs::write(dir.path().join("README"), "").expect("write");
        assert!(!has_cni_config(dir.path()));
        std::fs::write(dir.path().join("10-bridge.conflist"), "{}").expect("write");
        assert!(has_cni_config(dir.path()));
    }
}
