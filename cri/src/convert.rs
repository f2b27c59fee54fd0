//! Store records to CRI messages: decoded configs, statuses, verbose info, label matching. Pure;
//! used by the RPC handlers and by container events.

use std::collections::HashMap;

use ingot_netns::Kind;
use k8s_cri::v1;
use prost::Message;

use crate::store::{ContainerRecord, ContainerState, PodRecord, PodState};
pub fn pod_name_key(config: &v1::PodSandboxConfig) -> String {
    let m = config.metadata.clone().unwrap_or_default();
    format!("{}_{}_{}_{}", m.name, m.namespace, m.uid, m.attempt)
}

pub fn pod_config(pod: &PodRecord) -> v1::PodSandboxConfig {
    v1::PodSandboxConfig::decode(pod.config.as_slice()).unwrap_or_default()
}

pub fn container_config(container: &ContainerRecord) -> v1::ContainerConfig {
    v1::ContainerConfig::decode(container.config.as_slice()).unwrap_or_default()
}

pub fn container_name_key(config: &v1::ContainerConfig) -> String {
    let m = config.metadata.clone().unwrap_or_default();
    format!("{}_{}", m.name, m.attempt)
}

pub fn pod_status(pod: &PodRecord) -> v1::PodSandboxStatus {
    let config = pod_config(pod);
    let options = namespace_options(&config);
    let mut ips = pod.ips.iter();
    v1::PodSandboxStatus {
        id: pod.id.clone(),
        metadata: config.metadata.clone(),
        state: match pod.state {
            PodState::Ready => v1::PodSandboxState::SandboxReady as i32,
            PodState::NotReady => v1::PodSandboxState::SandboxNotready as i32,
        },
        created_at: pod.created_at,
        network: Some(v1::PodSandboxNetworkStatus {
            ip: ips.next().cloned().unwrap_or_default(),
            additional_ips: ips.map(|ip| v1::PodIp { ip: ip.clone() }).collect(),
        }),
        linux: Some(v1::LinuxPodSandboxStatus {
            namespaces: Some(v1::Namespace {
                options: Some(options),
            }),
        }),
        labels: config.labels.clone(),
        annotations: config.annotations.clone(),
        runtime_handler: pod.runtime_handler.clone(),
    }
}

pub fn pod_verbose_info(pod: &PodRecord) -> HashMap<String, String> {
    let info = serde_json::json!({
        "pid": 0,
        "processStatus": "ready-without-pause",
        "netNamespacePath": pod.net,
        "ipcNamespacePath": pod.ipc,
        "utsNamespacePath": pod.uts,
        "cgroupParent": pod.cgroup_parent,
        "shim": pod.shim,
        "podInitPid": pod.pid_holder,
        "runtimeHandler": pod.runtime_handler,
        "cniResult": pod.cni_result,
    });
    HashMap::from([("info".to_string(), info.to_string())])
}

/// Whether every key of `selector` is in `labels` with the same value.
pub fn labels_match(selector: &HashMap<String, String>, labels: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

pub fn cri_state(state: ContainerState) -> i32 {
    (match state {
        ContainerState::Created => v1::ContainerState::ContainerCreated,
        ContainerState::Running => v1::ContainerState::ContainerRunning,
        ContainerState::Exited => v1::ContainerState::ContainerExited,
        ContainerState::Unknown => v1::ContainerState::ContainerUnknown,
    }) as i32
}

pub fn container_status(container: &ContainerRecord) -> v1::ContainerStatus {
    let config = container_config(container);
    v1::ContainerStatus {
        id: container.id.clone(),
        metadata: config.metadata.clone(),
        state: cri_state(container.state),
        created_at: container.created_at,
        started_at: container.started_at,
        finished_at: container.finished_at,
        exit_code: container.exit_code,
        image: config.image.clone(),
        image_ref: container.image_id.clone(),
        reason: container.reason.clone(),
        message: container.message.clone(),
        labels: config.labels.clone(),
        annotations: config.annotations.clone(),
        mounts: config.mounts.clone(),
        log_path: container
            .log_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        resources: config
            .linux
            .as_ref()
            .and_then(|l| l.resources.clone())
            .map(|linux| v1::ContainerResources {
                linux: Some(linux),
                windows: None,
            }),
        ..Default::default()
    }
}

pub fn container_verbose_info(container: &ContainerRecord) -> HashMap<String, String> {
    let info = serde_json::json!({
        "sandboxID": container.pod_id,
        "pid": container.pid,
        "bundle": container.bundle,
        "snapshotDir": container.snapshot,
        "imageRef": container.image_ref,
    });
    HashMap::from([("info".to_string(), info.to_string())])
}

pub fn namespace_options(config: &v1::PodSandboxConfig) -> v1::NamespaceOption {
    config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or_default()
}

pub fn is_node(mode: i32) -> bool {
    mode == v1::NamespaceMode::Node as i32
}

/// The namespaces a pod gets of its own (and pins): network and UTS unless it uses the host's
/// network, IPC unless it uses the host's IPC.
pub fn own_namespaces(options: &v1::NamespaceOption) -> Vec<Kind> {
    let mut kinds = Vec::new();
    if !is_node(options.network) {
        kinds.extend([Kind::Net, Kind::Uts]);
    }
    if !is_node(options.ipc) {
        kinds.push(Kind::Ipc);
    }
    kinds
}
