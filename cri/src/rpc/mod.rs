//! RuntimeService: thin handlers over the pod and container manager. Exec, Attach and
//! PortForward hand out URLs of the streaming server (`streaming`); CheckpointContainer answers
//! Unimplemented, naming the RPC.

use std::{
    future::Future,
    net::IpAddr,
    path::Path,
    pin::Pin,
    sync::{Arc, Mutex},
};

use k8s_cri::v1::{self, runtime_service_server::RuntimeService};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::{
    config::Config,
    convert,
    lifecycle::{containers, pod_metrics, pods, stats, Manager},
    CriError,
};

pub mod images;
mod list;
pub mod metrics;
pub mod server;
pub mod status;
pub mod streaming;
mod tls;
mod validate;

pub const RUNTIME_NAME: &str = "ingot";
pub const CRI_API_VERSION: &str = "v1";

/// A watcher's events, in order. One that falls behind by more than the buffer holds is
/// dropped with ResourceExhausted (as containerd drops it) rather than silently missing events.
fn event_stream(
    receiver: tokio::sync::broadcast::Receiver<v1::ContainerEventResponse>,
) -> impl tokio_stream::Stream<Item = Result<v1::ContainerEventResponse, Status>> + Send {
    use tokio_stream::StreamExt;
    let mut lagged = false;
    tokio_stream::wrappers::BroadcastStream::new(receiver).map_while(move |event| {
        if lagged {
            return None;
        }
        Some(match event {
            Ok(event) => Ok(event),
            Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(missed)) => {
                lagged = true;
                tracing::warn!(missed, "a container event watcher fell behind; dropped");
                Err(Status::resource_exhausted(format!(
                    "GetContainerEvents: this watcher fell {missed} events behind and is dropped; watch again"
                )))
            }
        })
    })
}

pub struct Runtime {
    config: Config,
    manager: Arc<Manager>,
    /// The pod CIDR the kubelet last gave (UpdateRuntimeConfig), for CNI.
    pod_cidr: Mutex<String>,
    streaming: Arc<streaming::StreamServer>,
}

impl Runtime {
    pub fn new(
        config: Config,
        manager: Arc<Manager>,
        streaming: Arc<streaming::StreamServer>,
    ) -> Self {
        Runtime {
            config,
            manager,
            pod_cidr: Mutex::new(String::new()),
            streaming,
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

/// Runs one RPC inside its span (named for the RPC, with the pod and container ids it names),
/// and logs a failure there with its code and whole cause chain before it becomes a status.
async fn traced<T>(
    span: tracing::Span,
    call: impl Future<Output = Result<T, CriError>>,
) -> Result<T, Status> {
    let result = call.instrument(span.clone()).await;
    if let Err(err) = &result {
        span.in_scope(|| tracing::warn!(code = ?err.code(), error = %err, "call failed"));
    }
    result.map_err(Status::from)
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
            // JSON, as containerd and CRI-O give it (`crictl info | jq .config`).
            let config = serde_json::to_string(&self.config).unwrap_or_default();
            info.insert("config".to_string(), config);
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
        Ok(Response::new(Box::pin(event_stream(
            self.manager.subscribe(),
        ))))
    }

    async fn run_pod_sandbox(
        &self,
        request: Request<v1::RunPodSandboxRequest>,
    ) -> Result<Response<v1::RunPodSandboxResponse>, Status> {
        let request = request.into_inner();
        validate::run_pod_sandbox(&request)?;
        let metadata = request
            .config
            .as_ref()
            .and_then(|c| c.metadata.clone())
            .unwrap_or_default();
        let span = tracing::info_span!(
            "RunPodSandbox",
            pod_name = %metadata.name,
            pod_namespace = %metadata.namespace
        );
        let pod_sandbox_id = traced(span, pods::run(&self.manager, request)).await?;
        Ok(Response::new(v1::RunPodSandboxResponse { pod_sandbox_id }))
    }

    async fn stop_pod_sandbox(
        &self,
        request: Request<v1::StopPodSandboxRequest>,
    ) -> Result<Response<v1::StopPodSandboxResponse>, Status> {
        let id = request.into_inner().pod_sandbox_id;
        let span = tracing::info_span!("StopPodSandbox", pod = %id);
        traced(span, pods::stop(&self.manager, &id)).await?;
        Ok(Response::new(v1::StopPodSandboxResponse {}))
    }

    async fn remove_pod_sandbox(
        &self,
        request: Request<v1::RemovePodSandboxRequest>,
    ) -> Result<Response<v1::RemovePodSandboxResponse>, Status> {
        let id = request.into_inner().pod_sandbox_id;
        let span = tracing::info_span!("RemovePodSandbox", pod = %id);
        traced(span, pods::remove(&self.manager, &id)).await?;
        Ok(Response::new(v1::RemovePodSandboxResponse {}))
    }

    async fn pod_sandbox_status(
        &self,
        request: Request<v1::PodSandboxStatusRequest>,
    ) -> Result<Response<v1::PodSandboxStatusResponse>, Status> {
        let request = request.into_inner();
        let pod = self.manager.pod(&request.pod_sandbox_id)?;
        let containers_statuses = self
            .manager
            .containers_of(&pod.id)
            .iter()
            .map(convert::container_status)
            .collect();
        Ok(Response::new(v1::PodSandboxStatusResponse {
            status: Some(convert::pod_status(&pod)),
            info: if request.verbose {
                convert::pod_verbose_info(&pod)
            } else {
                Default::default()
            },
            containers_statuses,
            timestamp: crate::lifecycle::now_ns(),
        }))
    }

    async fn list_pod_sandbox(
        &self,
        request: Request<v1::ListPodSandboxRequest>,
    ) -> Result<Response<v1::ListPodSandboxResponse>, Status> {
        let items = list::pods(&self.manager, request.get_ref().filter.as_ref());
        Ok(Response::new(v1::ListPodSandboxResponse { items }))
    }

    async fn create_container(
        &self,
        request: Request<v1::CreateContainerRequest>,
    ) -> Result<Response<v1::CreateContainerResponse>, Status> {
        let request = request.into_inner();
        validate::create_container(&request)?;
        let name = request
            .config
            .as_ref()
            .and_then(|c| c.metadata.as_ref())
            .map(|m| m.name.clone())
            .unwrap_or_default();
        let span = tracing::info_span!(
            "CreateContainer",
            pod = %request.pod_sandbox_id,
            container_name = %name
        );
        let container_id = traced(span, containers::create(&self.manager, request)).await?;
        Ok(Response::new(v1::CreateContainerResponse { container_id }))
    }

    async fn start_container(
        &self,
        request: Request<v1::StartContainerRequest>,
    ) -> Result<Response<v1::StartContainerResponse>, Status> {
        let id = request.into_inner().container_id;
        let span = tracing::info_span!("StartContainer", container = %id);
        traced(span, containers::start(&self.manager, &id)).await?;
        Ok(Response::new(v1::StartContainerResponse {}))
    }

    async fn stop_container(
        &self,
        request: Request<v1::StopContainerRequest>,
    ) -> Result<Response<v1::StopContainerResponse>, Status> {
        let request = request.into_inner();
        let span = tracing::info_span!("StopContainer", container = %request.container_id);
        traced(
            span,
            containers::stop(&self.manager, &request.container_id, request.timeout),
        )
        .await?;
        Ok(Response::new(v1::StopContainerResponse {}))
    }

    async fn remove_container(
        &self,
        request: Request<v1::RemoveContainerRequest>,
    ) -> Result<Response<v1::RemoveContainerResponse>, Status> {
        let id = request.into_inner().container_id;
        let span = tracing::info_span!("RemoveContainer", container = %id);
        traced(span, containers::remove(&self.manager, &id)).await?;
        Ok(Response::new(v1::RemoveContainerResponse {}))
    }

    async fn list_containers(
        &self,
        request: Request<v1::ListContainersRequest>,
    ) -> Result<Response<v1::ListContainersResponse>, Status> {
        let containers = list::containers(&self.manager, request.get_ref().filter.as_ref());
        Ok(Response::new(v1::ListContainersResponse { containers }))
    }

    async fn container_status(
        &self,
        request: Request<v1::ContainerStatusRequest>,
    ) -> Result<Response<v1::ContainerStatusResponse>, Status> {
        let request = request.into_inner();
        let container = self.manager.container(&request.container_id)?;
        Ok(Response::new(v1::ContainerStatusResponse {
            status: Some(convert::container_status(&container)),
            info: if request.verbose {
                convert::container_verbose_info(&container)
            } else {
                Default::default()
            },
        }))
    }

    async fn update_container_resources(
        &self,
        request: Request<v1::UpdateContainerResourcesRequest>,
    ) -> Result<Response<v1::UpdateContainerResourcesResponse>, Status> {
        let request = request.into_inner();
        let span =
            tracing::info_span!("UpdateContainerResources", container = %request.container_id);
        traced(span, containers::update_resources(&self.manager, request)).await?;
        Ok(Response::new(v1::UpdateContainerResourcesResponse {}))
    }

    async fn reopen_container_log(
        &self,
        request: Request<v1::ReopenContainerLogRequest>,
    ) -> Result<Response<v1::ReopenContainerLogResponse>, Status> {
        let id = request.into_inner().container_id;
        let span = tracing::info_span!("ReopenContainerLog", container = %id);
        traced(span, containers::reopen_log(&self.manager, &id)).await?;
        Ok(Response::new(v1::ReopenContainerLogResponse {}))
    }

    async fn exec_sync(
        &self,
        request: Request<v1::ExecSyncRequest>,
    ) -> Result<Response<v1::ExecSyncResponse>, Status> {
        let request = request.into_inner();
        let span = tracing::info_span!("ExecSync", container = %request.container_id);
        let response = traced(span, crate::lifecycle::exec_sync(&self.manager, request)).await?;
        Ok(Response::new(response))
    }

    async fn exec(
        &self,
        request: Request<v1::ExecRequest>,
    ) -> Result<Response<v1::ExecResponse>, Status> {
        let request = request.into_inner();
        let span = tracing::info_span!("Exec", container = %request.container_id);
        let _entered = span.enter();
        let url = self.streaming.exec_url(request)?;
        Ok(Response::new(v1::ExecResponse { url }))
    }

    async fn attach(
        &self,
        request: Request<v1::AttachRequest>,
    ) -> Result<Response<v1::AttachResponse>, Status> {
        let request = request.into_inner();
        let span = tracing::info_span!("Attach", container = %request.container_id);
        let _entered = span.enter();
        let url = self.streaming.attach_url(request)?;
        Ok(Response::new(v1::AttachResponse { url }))
    }

    async fn port_forward(
        &self,
        request: Request<v1::PortForwardRequest>,
    ) -> Result<Response<v1::PortForwardResponse>, Status> {
        let request = request.into_inner();
        let span = tracing::info_span!("PortForward", pod = %request.pod_sandbox_id);
        let _entered = span.enter();
        let url = self.streaming.port_forward_url(request)?;
        Ok(Response::new(v1::PortForwardResponse { url }))
    }

    async fn container_stats(
        &self,
        request: Request<v1::ContainerStatsRequest>,
    ) -> Result<Response<v1::ContainerStatsResponse>, Status> {
        let container = self.manager.container(&request.get_ref().container_id)?;
        let stats = stats::container_stats(&self.manager, &container).await;
        Ok(Response::new(v1::ContainerStatsResponse {
            stats: Some(stats),
        }))
    }

    async fn list_container_stats(
        &self,
        request: Request<v1::ListContainerStatsRequest>,
    ) -> Result<Response<v1::ListContainerStatsResponse>, Status> {
        let filter = request.into_inner().filter.unwrap_or_default();
        let mut out = Vec::new();
        for container in self.manager.containers() {
            if (!filter.id.is_empty() && !container.id.starts_with(&filter.id))
                || (!filter.pod_sandbox_id.is_empty()
                    && !container.pod_id.starts_with(&filter.pod_sandbox_id))
                || !convert::labels_match(
                    &filter.label_selector,
                    &convert::container_config(&container).labels,
                )
            {
                continue;
            }
            out.push(stats::container_stats(&self.manager, &container).await);
        }
        Ok(Response::new(v1::ListContainerStatsResponse { stats: out }))
    }

    async fn pod_sandbox_stats(
        &self,
        request: Request<v1::PodSandboxStatsRequest>,
    ) -> Result<Response<v1::PodSandboxStatsResponse>, Status> {
        let pod = self.manager.pod(&request.get_ref().pod_sandbox_id)?;
        let stats = stats::pod_stats(&self.manager, &pod).await;
        Ok(Response::new(v1::PodSandboxStatsResponse {
            stats: Some(stats),
        }))
    }

    async fn list_pod_sandbox_stats(
        &self,
        request: Request<v1::ListPodSandboxStatsRequest>,
    ) -> Result<Response<v1::ListPodSandboxStatsResponse>, Status> {
        let filter = request.into_inner().filter.unwrap_or_default();
        let mut out = Vec::new();
        for pod in self.manager.pods() {
            if (!filter.id.is_empty() && !pod.id.starts_with(&filter.id))
                || !convert::labels_match(&filter.label_selector, &convert::pod_config(&pod).labels)
            {
                continue;
            }
            out.push(stats::pod_stats(&self.manager, &pod).await);
        }
        Ok(Response::new(v1::ListPodSandboxStatsResponse {
            stats: out,
        }))
    }

    async fn checkpoint_container(
        &self,
        _: Request<v1::CheckpointContainerRequest>,
    ) -> Result<Response<v1::CheckpointContainerResponse>, Status> {
        Err(Status::unimplemented(
            "CheckpointContainer: checkpoint/restore is not supported by ingot",
        ))
    }

    async fn list_metric_descriptors(
        &self,
        _: Request<v1::ListMetricDescriptorsRequest>,
    ) -> Result<Response<v1::ListMetricDescriptorsResponse>, Status> {
        Ok(Response::new(v1::ListMetricDescriptorsResponse {
            descriptors: pod_metrics::descriptors(),
        }))
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _: Request<v1::ListPodSandboxMetricsRequest>,
    ) -> Result<Response<v1::ListPodSandboxMetricsResponse>, Status> {
        let mut pod_metrics = Vec::new();
        for pod in self.manager.pods() {
            pod_metrics.extend(pod_metrics::pod_metrics(&self.manager, &pod).await);
        }
        Ok(Response::new(v1::ListPodSandboxMetricsResponse {
            pod_metrics,
        }))
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

    #[tokio::test(flavor = "current_thread")]
    async fn a_watcher_that_falls_behind_is_dropped_saying_so() {
        use tokio_stream::StreamExt;

        let (sender, _) = tokio::sync::broadcast::channel(4);
        let mut fast = Box::pin(event_stream(sender.subscribe()));
        let mut slow = Box::pin(event_stream(sender.subscribe()));
        for n in 0..6 {
            let event = v1::ContainerEventResponse {
                container_id: format!("c{n}"),
                ..Default::default()
            };
            sender.send(event).expect("send");
            let seen = fast.next().await.expect("an event").expect("not lagged");
            assert_eq!(seen.container_id, format!("c{n}"));
        }
        let dropped = slow.next().await.expect("an item").expect_err("lagged");
        assert_eq!(dropped.code(), tonic::Code::ResourceExhausted);
        assert!(
            dropped.message().contains("2 events behind"),
            "{}",
            dropped.message()
        );
        drop(sender);
        assert!(
            slow.next().await.is_none(),
            "the stream ends after the error"
        );
    }
}
