//! Pods and containers over a daemon's CRI, as the end-to-end tests drive them: a registry with
//! the test image and a daemon that pulled it (optionally in a network namespace of the test's
//! own), pod and container configs, the calls a kubelet makes, and the check that a removed pod
//! left nothing behind (mounts, cgroups, shims, directories).

use std::{collections::HashMap, path::Path, time::Duration};

use k8s_cri::v1::{self, runtime_service_client::RuntimeServiceClient};
use tonic::transport::Channel;

use crate::{
    cri::{pull, runtime_client, Daemon, Options},
    Registry, TestNetns,
};

pub const IMAGE: &str = "ingot/pods:1";

impl Env {
    /// The network namespace ingotd and the registry run in, when private.
    pub fn netns(&self) -> Option<&TestNetns> {
        self._netns.as_ref()
    }
}

pub struct Env {
    // Dropped in order: the daemon (and what it left), the registry, the network namespace.
    pub daemon: Daemon,
    _registry: Registry,
    _netns: Option<TestNetns>,
}

/// A registry with the test image and a daemon that pulled it; with `private_network`, both
/// run in a network namespace of the test's own, with a bridge network for pods.
pub async fn env(private_network: bool) -> (Env, RuntimeServiceClient<Channel>, String) {
    env_with(private_network, Options::default()).await
}

/// [`env`] with a daemon started with `options` (its network namespace set here).
pub async fn env_with(
    private_network: bool,
    options: Options,
) -> (Env, RuntimeServiceClient<Channel>, String) {
    let netns = private_network.then(|| TestNetns::create().expect("netns"));
    let registry = Registry::start_in(netns.as_ref()).expect("registry");
    registry.push_test_image(IMAGE).expect("push");
    let daemon = Daemon::start_with(Options {
        netns: netns.as_ref().map(TestNetns::path),
        ..options
    });
    let image = format!("{}/{IMAGE}", registry.address);
    pull(&daemon.socket(), &image).await.expect("pull");
    let client = runtime_client(&daemon.socket()).await;
    let env = Env {
        daemon,
        _registry: registry,
        _netns: netns,
    };
    (env, client, image)
}

pub fn pod_config(name: &str, log_dir: &Path) -> v1::PodSandboxConfig {
    v1::PodSandboxConfig {
        metadata: Some(v1::PodSandboxMetadata {
            name: name.into(),
            namespace: "default".into(),
            uid: format!("uid-{name}"),
            attempt: 0,
        }),
        hostname: format!("{name}-host"),
        log_directory: log_dir.display().to_string(),
        dns_config: Some(v1::DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec!["default.svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        }),
        labels: HashMap::from([("app".into(), name.into())]),
        annotations: HashMap::from([("note".into(), "kept".into())]),
        ..Default::default()
    }
}

/// A pod on the host's network (no CNI needed), with the given PID namespace mode.
pub fn host_network_pod(
    name: &str,
    log_dir: &Path,
    pid: v1::NamespaceMode,
) -> v1::PodSandboxConfig {
    let mut pod = pod_config(name, log_dir);
    pod.linux = Some(v1::LinuxPodSandboxConfig {
        security_context: Some(v1::LinuxSandboxSecurityContext {
            namespace_options: Some(v1::NamespaceOption {
                network: v1::NamespaceMode::Node as i32,
                pid: pid as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    pod
}

/// A host-network pod `name` (its own PID namespace per container) running one container
/// `name` that sleeps: (pod id, pod config, container id).
pub async fn sleeping_host_pod(
    client: &mut RuntimeServiceClient<Channel>,
    daemon: &Daemon,
    name: &str,
    image: &str,
) -> (String, v1::PodSandboxConfig, String) {
    let pod = host_network_pod(name, &daemon.log_dir(name), v1::NamespaceMode::Container);
    let pod_id = run_pod(client, pod.clone()).await;
    let config = container_config(name, image, "sleep 1000");
    let id = start_container(client, &pod_id, &pod, config).await;
    (pod_id, pod, id)
}

/// The verbose `info` of PodSandboxStatus, parsed.
pub async fn pod_info(client: &mut RuntimeServiceClient<Channel>, id: &str) -> serde_json::Value {
    let info = client
        .pod_sandbox_status(v1::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: true,
        })
        .await
        .expect("PodSandboxStatus")
        .into_inner()
        .info;
    serde_json::from_str(&info["info"]).expect("info json")
}

/// StopContainer (with `timeout` seconds of grace), then RemoveContainer.
pub async fn stop_and_remove_container(
    client: &mut RuntimeServiceClient<Channel>,
    id: &str,
    timeout: i64,
) {
    client
        .stop_container(v1::StopContainerRequest {
            container_id: id.into(),
            timeout,
        })
        .await
        .expect("StopContainer");
    client
        .remove_container(v1::RemoveContainerRequest {
            container_id: id.into(),
        })
        .await
        .expect("RemoveContainer");
}

/// The verbose `info` of ContainerStatus, parsed.
pub async fn container_info(
    client: &mut RuntimeServiceClient<Channel>,
    id: &str,
) -> serde_json::Value {
    let info = client
        .container_status(v1::ContainerStatusRequest {
            container_id: id.into(),
            verbose: true,
        })
        .await
        .expect("status")
        .into_inner()
        .info;
    serde_json::from_str(&info["info"]).expect("info json")
}

/// The pid of a running container's process, from its verbose status.
pub async fn container_pid(client: &mut RuntimeServiceClient<Channel>, id: &str) -> u32 {
    let info = container_info(client, id).await;
    u32::try_from(info["pid"].as_u64().expect("pid")).expect("pid fits")
}

pub fn container_config(name: &str, image: &str, script: &str) -> v1::ContainerConfig {
    v1::ContainerConfig {
        metadata: Some(v1::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(v1::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        envs: vec![v1::KeyValue {
            key: "GREETING".into(),
            value: "hello from ingot".into(),
        }],
        log_path: format!("{name}/0.log"),
        labels: HashMap::from([("tier".into(), name.into())]),
        ..Default::default()
    }
}

/// A container `web` serving `served\n` as `/index.html` over HTTP on port 8080 (busybox
/// httpd).
pub fn web_container(image: &str) -> v1::ContainerConfig {
    container_config(
        "web",
        image,
        "mkdir -p /www && echo served > /www/index.html && httpd -f -p 8080 -h /www",
    )
}

pub async fn run_pod(
    client: &mut RuntimeServiceClient<Channel>,
    config: v1::PodSandboxConfig,
) -> String {
    client
        .run_pod_sandbox(v1::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await
        .expect("RunPodSandbox")
        .into_inner()
        .pod_sandbox_id
}

pub async fn start_container(
    client: &mut RuntimeServiceClient<Channel>,
    pod_id: &str,
    pod: &v1::PodSandboxConfig,
    config: v1::ContainerConfig,
) -> String {
    let id = client
        .create_container(v1::CreateContainerRequest {
            pod_sandbox_id: pod_id.into(),
            config: Some(config),
            sandbox_config: Some(pod.clone()),
        })
        .await
        .expect("CreateContainer")
        .into_inner()
        .container_id;
    client
        .start_container(v1::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .expect("StartContainer");
    id
}

/// A CreateContainer expected to fail: its status.
pub async fn refused_create(
    client: &mut RuntimeServiceClient<Channel>,
    pod_id: &str,
    pod: &v1::PodSandboxConfig,
    config: v1::ContainerConfig,
) -> tonic::Status {
    match client
        .create_container(v1::CreateContainerRequest {
            pod_sandbox_id: pod_id.into(),
            config: Some(config),
            sandbox_config: Some(pod.clone()),
        })
        .await
    {
        Ok(created) => panic!(
            "CreateContainer should have failed, made {}",
            created.into_inner().container_id
        ),
        Err(status) => status,
    }
}

pub async fn container_status(
    client: &mut RuntimeServiceClient<Channel>,
    id: &str,
) -> v1::ContainerStatus {
    client
        .container_status(v1::ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        })
        .await
        .expect("ContainerStatus")
        .into_inner()
        .status
        .expect("status")
}

pub async fn exec(
    client: &mut RuntimeServiceClient<Channel>,
    id: &str,
    cmd: &[&str],
) -> v1::ExecSyncResponse {
    client
        .exec_sync(v1::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: 10,
        })
        .await
        .expect("ExecSync")
        .into_inner()
}

pub async fn wait_for_log(path: &Path, needle: &str) -> String {
    for _ in 0..200 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "{needle:?} never appeared in {}: {:?}",
        path.display(),
        std::fs::read_to_string(path).unwrap_or_default()
    );
}

/// Every line is `<RFC3339Nano> <stdout|stderr> <F|P> <text>`.
pub fn assert_cri_format(log: &str) {
    for line in log.lines() {
        let mut parts = line.splitn(4, ' ');
        let time = parts.next().expect("time");
        assert!(
            time.len() == 30 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
            "timestamp {time:?} in {line:?}"
        );
        assert!(
            matches!(parts.next(), Some("stdout" | "stderr")),
            "{line:?}"
        );
        assert!(matches!(parts.next(), Some("F" | "P")), "{line:?}");
    }
}

pub fn leftovers(daemon: &Daemon, pod_id: &str) -> Vec<String> {
    let mut left: Vec<String> = crate::mounts()
        .into_iter()
        .filter(|m| m.contains(pod_id) || m.starts_with(&daemon.dir.path().display().to_string()))
        .collect();
    left.extend(
        crate::cgroups_named(daemon.cgroup_parent.trim_start_matches('/'))
            .into_iter()
            .filter(|dir| {
                std::fs::read_dir(dir)
                    .is_ok_and(|mut entries| entries.any(|e| e.is_ok_and(|e| e.path().is_dir())))
            })
            .map(|p| format!("cgroup {}", p.display())),
    );
    left.extend(
        crate::pids_with_cmdline(&["containerd-shim-ingot-v2", pod_id])
            .into_iter()
            .map(|pid| format!("shim pid {pid}")),
    );
    left.extend(
        crate::zombie_children(daemon.pid().as_raw())
            .into_iter()
            .map(|pid| format!("unreaped child pid {pid}")),
    );
    if daemon.dir.path().join("run/pods").join(pod_id).exists() {
        left.push("pod directory".into());
    }
    left
}

/// What one pod (with the given containers) left while other pods of the daemon still run:
/// mounts naming it or its containers, its cgroup, its shim, its pod directory, its
/// containers' bundles and writable layers.
pub fn pod_leftovers(daemon: &Daemon, pod_id: &str, containers: &[String]) -> Vec<String> {
    let names: Vec<&str> = std::iter::once(pod_id)
        .chain(containers.iter().map(String::as_str))
        .collect();
    let mut left: Vec<String> = crate::mounts()
        .into_iter()
        .filter(|m| names.iter().any(|name| m.contains(name)))
        .collect();
    let pod_cgroup = format!("{}/{pod_id}", daemon.cgroup_parent.trim_start_matches('/'));
    left.extend(
        crate::cgroups_named(&pod_cgroup)
            .into_iter()
            .map(|p| format!("cgroup {}", p.display())),
    );
    left.extend(
        crate::pids_with_cmdline(&["containerd-shim-ingot-v2", pod_id])
            .into_iter()
            .map(|pid| format!("shim pid {pid}")),
    );
    let dirs = std::iter::once(daemon.dir.path().join("run/pods").join(pod_id)).chain(
        containers.iter().flat_map(|id| {
            [
                daemon.dir.path().join("run/containers").join(id),
                daemon.dir.path().join("lib/containers").join(id),
            ]
        }),
    );
    left.extend(
        dirs.filter(|dir| dir.exists())
            .map(|dir| format!("directory {}", dir.display())),
    );
    left
}

/// Waits up to 5 s for one pod among others to leave nothing behind, then fails naming what
/// is left.
pub fn assert_pod_gone(daemon: &Daemon, pod_id: &str, containers: &[String]) {
    assert!(
        crate::wait_until(Duration::from_secs(5), || pod_leftovers(
            daemon, pod_id, containers
        )
        .is_empty()),
        "pod {pod_id} left behind: {:?}",
        pod_leftovers(daemon, pod_id, containers)
    );
}

/// Waits up to 5 s for the pod to leave nothing behind, then fails naming what is left.
pub fn assert_nothing_left(daemon: &Daemon, pod_id: &str) {
    assert!(
        crate::wait_until(Duration::from_secs(5), || leftovers(daemon, pod_id)
            .is_empty()),
        "left behind: {:?}",
        leftovers(daemon, pod_id)
    );
}

pub async fn remove_pod(client: &mut RuntimeServiceClient<Channel>, pod_id: &str) {
    client
        .remove_pod_sandbox(v1::RemovePodSandboxRequest {
            pod_sandbox_id: pod_id.to_string(),
        })
        .await
        .expect("RemovePodSandbox");
}

/// What a daemon whose pods are all removed still has: pod directories, pod inits and shims
/// of its own, children it did not reap (shims, plugins), mounts under its directory, pod
/// cgroups under its parent, and addresses its CNI network (host-local, [`Daemon::ipam_dir`])
/// still holds.
pub fn daemon_leftovers(daemon: &Daemon) -> Vec<String> {
    let dir = daemon.dir.path();
    let entries = |path: std::path::PathBuf| -> Vec<String> {
        std::fs::read_dir(&path)
            .map(|e| {
                e.flatten()
                    .map(|e| format!("{}", e.path().display()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut left = entries(dir.join("run/pods"));
    let pods = dir.join("run/pods").display().to_string();
    left.extend(
        crate::pids_with_cmdline(&["--pod-init", &pods])
            .into_iter()
            .map(|pid| format!("pod init pid {pid}")),
    );
    let socket = daemon.socket().display().to_string();
    left.extend(
        crate::pids_with_cmdline(&["containerd-shim-ingot-v2", &socket])
            .into_iter()
            .map(|pid| format!("shim pid {pid}")),
    );
    left.extend(
        crate::zombie_children(daemon.pid().as_raw())
            .into_iter()
            .map(|pid| format!("unreaped child pid {pid}")),
    );
    let prefix = dir.display().to_string();
    left.extend(
        crate::mounts()
            .into_iter()
            .filter(|m| m.starts_with(&prefix)),
    );
    for parent in crate::cgroups_named(daemon.cgroup_parent.trim_start_matches('/')) {
        left.extend(
            std::fs::read_dir(&parent)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| format!("cgroup {}", e.path().display())),
        );
    }
    // host-local keeps one file per address in use (plus its lock and last-reserved marker).
    for network in entries(daemon.ipam_dir()) {
        left.extend(
            entries(network.into())
                .into_iter()
                .filter(|file| !file.ends_with("/lock") && !file.contains("last_reserved_ip")),
        );
    }
    left
}
