//! CRI calls the placement benchmark makes: a pod with one `sleep` container, started the
//! way the kubelet starts it, each call timed on its own.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use k8s_cri::v1::{self, runtime_service_client::RuntimeServiceClient};
use tonic::transport::Channel;

pub(crate) const IMAGE: &str = "bench/busybox:1";

pub(crate) fn pod_config(name: &str, cgroup_parent: &str, log_dir: &Path) -> v1::PodSandboxConfig {
    v1::PodSandboxConfig {
        metadata: Some(v1::PodSandboxMetadata {
            name: name.into(),
            namespace: "bench".into(),
            uid: format!("uid-{name}"),
            attempt: 0,
        }),
        log_directory: log_dir.join(name).display().to_string(),
        linux: Some(v1::LinuxPodSandboxConfig {
            cgroup_parent: format!("{cgroup_parent}/{name}"),
            security_context: Some(v1::LinuxSandboxSecurityContext {
                namespace_options: Some(v1::NamespaceOption {
                    pid: v1::NamespaceMode::Container as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A pod with one `sleep` container, started: RunPodSandbox, CreateContainer, StartContainer,
/// each call's time in `phases`. Returns the pod and container ids.
pub(crate) async fn start_pod(
    client: &mut RuntimeServiceClient<Channel>,
    leg: &str,
    pod: v1::PodSandboxConfig,
    image: &str,
    phases: &mut [Duration; 3],
) -> Result<(String, String)> {
    start_pod_with(client, leg, pod, image, None, phases).await
}

/// [`start_pod`] with the container's `linux.resources`.
pub(crate) async fn start_pod_with(
    client: &mut RuntimeServiceClient<Channel>,
    leg: &str,
    pod: v1::PodSandboxConfig,
    image: &str,
    resources: Option<v1::LinuxContainerResources>,
    phases: &mut [Duration; 3],
) -> Result<(String, String)> {
    let mut phase = Instant::now();
    let pod_id = client
        .run_pod_sandbox(v1::RunPodSandboxRequest {
            config: Some(pod.clone()),
            runtime_handler: String::new(),
        })
        .await
        .with_context(|| format!("{leg}: RunPodSandbox"))?
        .into_inner()
        .pod_sandbox_id;
    phases[0] = phase.elapsed();
    phase = Instant::now();
    let container_id = client
        .create_container(v1::CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(v1::ContainerConfig {
                metadata: Some(v1::ContainerMetadata {
                    name: "app".into(),
                    attempt: 0,
                }),
                image: Some(v1::ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                command: vec!["sleep".into(), "100000".into()],
                log_path: "app/0.log".into(),
                linux: resources.map(|resources| v1::LinuxContainerConfig {
                    resources: Some(resources),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            sandbox_config: Some(pod),
        })
        .await
        .with_context(|| format!("{leg}: CreateContainer"))?
        .into_inner()
        .container_id;
    phases[1] = phase.elapsed();
    phase = Instant::now();
    client
        .start_container(v1::StartContainerRequest {
            container_id: container_id.clone(),
        })
        .await
        .with_context(|| format!("{leg}: StartContainer"))?;
    phases[2] = phase.elapsed();
    Ok((pod_id, container_id))
}

/// StopPodSandbox and RemovePodSandbox, as the kubelet ends a pod.
pub(crate) async fn end_pod(
    client: &mut RuntimeServiceClient<Channel>,
    leg: &str,
    pod_id: &str,
) -> Result<()> {
    client
        .stop_pod_sandbox(v1::StopPodSandboxRequest {
            pod_sandbox_id: pod_id.into(),
        })
        .await
        .with_context(|| format!("{leg}: StopPodSandbox"))?;
    client
        .remove_pod_sandbox(v1::RemovePodSandboxRequest {
            pod_sandbox_id: pod_id.into(),
        })
        .await
        .with_context(|| format!("{leg}: RemovePodSandbox"))?;
    Ok(())
}

pub(crate) async fn pull(socket: &Path, image: &str) -> Result<()> {
    ingot_tests::cri::pull(socket, image)
        .await
        .with_context(|| format!("pull {image}"))
}
