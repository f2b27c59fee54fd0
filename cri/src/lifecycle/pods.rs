//! Pod sandboxes without a pause process: RunPodSandbox pins the pod's network, IPC and UTS
//! namespaces under `<state>/pods/<id>/ns/`, writes its hostname, hosts and resolv.conf, mounts
//! its /dev/shm, and attaches its network through CNI; StopPodSandbox kills its containers and
//! detaches the network; RemovePodSandbox removes everything, the pod's shim included.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use ingot_netns::{cni, Kind};
use k8s_cri::v1;
use nix::mount::{mount, MsFlags};
use prost::Message;

use crate::{
    convert, host,
    lifecycle::{new_id, now_ns, Manager},
    store::{PodRecord, PodState},
    CriError,
};
/// resolv.conf for the pod: the kubelet's DNS config, or the host's file.
pub fn resolv_conf(dns: Option<&v1::DnsConfig>) -> Option<String> {
    let dns =
        dns.filter(|d| !d.servers.is_empty() || !d.searches.is_empty() || !d.options.is_empty())?;
    let mut text = String::new();
    if !dns.searches.is_empty() {
        text.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    for server in &dns.servers {
        text.push_str(&format!("nameserver {server}\n"));
    }
    if !dns.options.is_empty() {
        text.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    Some(text)
}

/// The pod's files and namespaces; blocking (namespaces, mounts, CNI plugins).
fn set_up(
    pod: &mut PodRecord,
    config: &v1::PodSandboxConfig,
    manager: &Manager,
    created_cgroups: &mut Vec<PathBuf>,
) -> Result<(), CriError> {
    let options = convert::namespace_options(config);
    let host_network = convert::is_node(options.network);
    let host_ipc = convert::is_node(options.ipc);
    pod.host_pid = convert::is_node(options.pid);
    // A pod cgroup the client named but did not make (a kubelet makes its own first) is made
    // here, so it is removed with the pod: nothing of a removed pod stays behind.
    if !pod.owns_cgroup
        && !host::cgroups::cgroup_exists(&manager.config.host_root, &pod.cgroup_parent)
    {
        pod.owns_cgroup = true;
    }
    // The pod's cgroup first: the pod init, like every process of the pod, lives in it from
    // its start (a kubelet's pod accounting and the pod's cpuset see it).
    created_cgroups.extend(host::cgroups::create_pod_cgroups(
        &manager.config.host_root,
        &pod.cgroup_parent,
    ));
    if options.pid == v1::NamespaceMode::Pod as i32 {
        let exe = std::env::current_exe().map_err(CriError::io("find the ingotd binary"))?;
        let joins = host::cgroups::pod_init_cgroup_files(
            &manager.config.host_root,
            &pod.cgroup_parent,
            created_cgroups,
        )?;
        let pid = ingot_netns::spawn_pid_holder(
            &exe,
            &[host::pod_init::POD_INIT_ARG, &pod.dir.display().to_string()],
            &joins,
        )?;
        pod.pid_holder = Some(pid);
        // Joining the pod's cpuset gave it all the pod's CPUs; it is ingot's, so it goes back
        // to the housekeeping CPUs.
        let cpus = manager.housekeeping_cpus();
        crate::host::affinity::pin_process(&manager.proc_root(), pid, &cpus)?;
    }
    std::fs::create_dir_all(&pod.dir)
        .map_err(CriError::io(format!("create {}", pod.dir.display())))?;

    let kinds = convert::own_namespaces(&options);
    let sysctls: Vec<ingot_netns::Sysctl> = crate::sysctl::check(
        &config
            .linux
            .as_ref()
            .map(|l| l.sysctls.clone())
            .unwrap_or_default(),
        &kinds,
    )?
    .into_iter()
    .map(|(name, value)| ingot_netns::Sysctl {
        path: crate::sysctl::proc_path(&name),
        name,
        value,
    })
    .collect();
    let host_name = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "localhost".into());
    // As containerd: the host's name for host-network pods and when the kubelet gives none.
    let hostname = if host_network || config.hostname.is_empty() {
        host_name
    } else {
        config.hostname.clone()
    };
    if !kinds.is_empty() {
        let pinned = ingot_netns::pin(&pod.dir.join("ns"), &kinds, Some(&hostname), &sysctls)
            .map_err(|err| match err {
                // The kernel's verdict on a sysctl is the request's fault, like its syntax.
                ingot_netns::NetnsError::Sysctl { .. } => {
                    let cause = std::error::Error::source(&err)
                        .map(|source| format!(": {source}"))
                        .unwrap_or_default();
                    CriError::invalid("config.linux.sysctls", format!("{err}{cause}"))
                }
                err => err.into(),
            })?;
        pod.net = pinned.path(Kind::Net);
        pod.ipc = pinned.path(Kind::Ipc);
        pod.uts = pinned.path(Kind::Uts);
    }

    let write = |name: &str, text: &str| -> Result<(), CriError> {
        let path = pod.dir.join(name);
        std::fs::write(&path, text).map_err(CriError::io(format!("write {}", path.display())))
    };
    write("hostname", &format!("{hostname}\n"))?;
    let hosts = if host_network {
        std::fs::read_to_string("/etc/hosts").unwrap_or_default()
    } else {
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n".to_string()
    };
    write("hosts", &hosts)?;
    let resolv = match resolv_conf(config.dns_config.as_ref()) {
        Some(text) => text,
        None => std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
    };
    write("resolv.conf", &resolv)?;

    if !host_ipc {
        let shm = pod.dir.join("shm");
        std::fs::create_dir_all(&shm).map_err(CriError::io(format!("create {}", shm.display())))?;
        mount(
            Some("shm"),
            &shm,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("mode=1777,size=65536k"),
        )
        .map_err(|errno| CriError::Io {
            context: format!("mount the pod's /dev/shm at {}", shm.display()),
            source: errno.into(),
        })?;
        pod.shm = Some(shm);
    }

    if let Some(netns) = pod.net.clone() {
        let network = cni::load_network(&manager.config.cni.conf_dir)?.ok_or_else(|| {
            CriError::FailedPrecondition {
                what: "RunPodSandbox".into(),
                reason: format!(
                    "no CNI network configuration in {} (NetworkReady is false)",
                    manager.config.cni.conf_dir.display()
                ),
            }
        })?;
        let args = cni_args(&pod.id, config);
        let runtime_config = cni_runtime_config(config);
        let attachment = cni::Attachment {
            plugin_dirs: &manager.config.cni.bin_dirs,
            container_id: &pod.id,
            netns: &netns,
            ifname: "eth0",
            args: &args,
            runtime_config: &runtime_config,
        };
        // What DEL needs is on disk before ADD runs, as libcni caches it: a pod whose record
        // never landed (ingotd died inside RunPodSandbox) is detached with it on restart.
        let call = serde_json::json!({
            "network": network.source, "args": args, "runtimeConfig": runtime_config,
        });
        write(CNI_CALL_FILE, &call.to_string())?;
        // The pod's loopback is up already: `pin` brought it up (natively, one plugin process
        // less on every pod start).
        let started = std::time::Instant::now();
        let result = network.add(&attachment)?;
        tracing::debug!(pod = %pod.id, elapsed = ?started.elapsed(), "CNI ADD");
        pod.ips = cni::pod_ips(&result);
        pod.cni_result =
            Some(serde_json::json!({"network": network.source, "result": result}).to_string());
    }
    Ok(())
}

/// `CNI_ARGS` for the pod, as the kubelet's runtimes pass them (ADD and DEL alike).
fn cni_args(pod_id: &str, config: &v1::PodSandboxConfig) -> String {
    let metadata = config.metadata.clone().unwrap_or_default();
    format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={pod_id};K8S_POD_UID={}",
        metadata.namespace, metadata.name, metadata.uid
    )
}

/// The capability arguments of the pod's CNI calls: its host ports (`portMappings`). DEL gets
/// the same as ADD, as the CNI spec asks: portmap removes its rules only when it is told the
/// ports again.
fn cni_runtime_config(config: &v1::PodSandboxConfig) -> serde_json::Value {
    let port_mappings: Vec<serde_json::Value> = config
        .port_mappings
        .iter()
        .filter(|m| m.host_port > 0)
        .map(|m| {
            let protocol = v1::Protocol::try_from(m.protocol)
                .map(|p| p.as_str_name().to_ascii_lowercase())
                .unwrap_or_else(|_| "tcp".into());
            serde_json::json!({
                "hostPort": m.host_port,
                "containerPort": m.container_port,
                "protocol": protocol,
                "hostIP": m.host_ip,
            })
        })
        .collect();
    serde_json::json!({ "portMappings": port_mappings })
}

/// CNI DEL for a pod that was attached; blocking.
fn detach(pod: &PodRecord, manager: &Manager) -> Result<(), CriError> {
    let (Some(netns), Some(saved)) = (&pod.net, &pod.cni_result) else {
        return Ok(());
    };
    let saved: serde_json::Value = serde_json::from_str(saved).unwrap_or_default();
    let source = PathBuf::from(saved["network"].as_str().unwrap_or_default());
    let network = match cni::read_network(source.clone()) {
        Ok(network) => network,
        // The network's configuration is gone: nothing can run its DEL; stopping the pod must
        // not fail forever because of it.
        Err(err @ ingot_netns::NetnsError::Io { .. }) => {
            tracing::warn!(pod = %pod.id, config = %source.display(), error = %err, "CNI DEL skipped");
            return Ok(());
        }
        Err(err) => return Err(err.into()),
    };
    let config = convert::pod_config(pod);
    let args = cni_args(&pod.id, &config);
    let runtime_config = cni_runtime_config(&config);
    network.del(
        &cni::Attachment {
            plugin_dirs: &manager.config.cni.bin_dirs,
            container_id: &pod.id,
            netns,
            ifname: "eth0",
            args: &args,
            runtime_config: &runtime_config,
        },
        &saved["result"],
    )?;
    Ok(())
}

/// The pod directory's record of its CNI ADD: the network's file, CNI_ARGS and the
/// capability arguments.
const CNI_CALL_FILE: &str = "cni.json";

/// CNI DEL for a pod directory no record owns (ingotd died inside RunPodSandbox, perhaps after
/// CNI ADD), so its addresses are released (host-local IPAM keeps them by pod id otherwise)
/// and portmap's rules removed: with the network, CNI_ARGS and port mappings the directory
/// recorded before ADD, or, in a directory an ingotd without that record left, the node's
/// current network with the pod id as the only CNI_ARGS. Blocking.
pub fn release_orphan_network(manager: &Manager, pod_id: &str, dir: &Path) {
    let netns = dir.join("ns/net");
    // Pinned before CNI ADD runs: without it the pod never reached its network.
    if !netns.exists() {
        return;
    }
    let (network, args, runtime_config) = match std::fs::read(dir.join(CNI_CALL_FILE)) {
        Ok(text) => {
            let call: serde_json::Value = serde_json::from_slice(&text).unwrap_or_default();
            let source = PathBuf::from(call["network"].as_str().unwrap_or_default());
            let network = cni::read_network(source).map(Some);
            let args = call["args"].as_str().unwrap_or_default().to_string();
            (network, args, call["runtimeConfig"].clone())
        }
        Err(_) => (
            cni::load_network(&manager.config.cni.conf_dir),
            format!("IgnoreUnknown=1;K8S_POD_INFRA_CONTAINER_ID={pod_id}"),
            serde_json::json!({}),
        ),
    };
    let network = match network {
        Ok(Some(network)) => network,
        Ok(None) => return,
        Err(err) => {
            tracing::warn!(pod = %pod_id, error = %err, "CNI DEL of an orphaned pod skipped");
            return;
        }
    };
    let attachment = cni::Attachment {
        plugin_dirs: &manager.config.cni.bin_dirs,
        container_id: pod_id,
        netns: &netns,
        ifname: "eth0",
        args: &args,
        runtime_config: &runtime_config,
    };
    if let Err(err) = network.del(&attachment, &serde_json::Value::Null) {
        tracing::warn!(pod = %pod_id, error = %err, "CNI DEL of an orphaned pod");
    }
}

pub async fn run(
    manager: &Arc<Manager>,
    request: v1::RunPodSandboxRequest,
) -> Result<String, CriError> {
    let config = request
        .config
        .ok_or_else(|| CriError::invalid("config", "is required"))?;
    if manager
        .config
        .runtime_handler(&request.runtime_handler)
        .is_none()
    {
        return Err(CriError::NotFound {
            what: format!("runtime handler {:?}", request.runtime_handler),
        });
    }
    // Malformed or disallowed tuning annotations are refused before anything is made.
    super::tuning::for_container(manager, &request.runtime_handler, &config.annotations, "")?;
    if super::tuning::is_realtime(manager, &request.runtime_handler, &config.annotations) {
        super::tuning::admit_realtime(manager, &request.runtime_handler, &config)?;
    }
    let key = convert::pod_name_key(&config);
    let _name = manager.reserve_pod_name(key.clone(), || {
        manager
            .pods()
            .into_iter()
            .find(|p| convert::pod_name_key(&convert::pod_config(p)) == key)
            .map(|p| p.id)
    })?;
    let id = new_id()?;
    let lifecycle = manager.lock_pod(&id).await;
    let result = run_locked(manager, id.clone(), config, request.runtime_handler).await;
    drop(lifecycle);
    if result.is_err() {
        // No record was made: the pod's lock goes too.
        manager.forget_pod_lock(&id);
    }
    result
}

/// RunPodSandbox of a new pod `id` whose name is reserved, with its lock held.
async fn run_locked(
    manager: &Arc<Manager>,
    id: String,
    config: v1::PodSandboxConfig,
    runtime_handler: String,
) -> Result<String, CriError> {
    let (cgroup_parent, owns_cgroup) = match config.linux.as_ref().map(|l| l.cgroup_parent.as_str())
    {
        Some(parent) if !parent.is_empty() => (parent.to_string(), false),
        _ => (
            format!(
                "{}/{}",
                manager.config.cgroup_parent.trim_end_matches('/'),
                id
            ),
            true,
        ),
    };
    let mut pod = PodRecord {
        id: id.clone(),
        config: config.encode_to_vec(),
        runtime_handler,
        created_at: now_ns(),
        state: PodState::Ready,
        dir: manager.config.state.join("pods").join(&id),
        net: None,
        ipc: None,
        uts: None,
        host_pid: false,
        shm: None,
        pid_holder: None,
        cni_result: None,
        ips: Vec::new(),
        cgroup_parent,
        owns_cgroup,
        shim: None,
        netdevs: Vec::new(),
    };
    // The pod's shim starts while its namespaces and network are set up.
    let worker = Arc::clone(manager);
    let pod_dir = pod.dir.clone();
    let started = std::time::Instant::now();
    let (set_up_result, shim_result) = tokio::join!(
        tokio::task::spawn_blocking(move || {
            let mut created_cgroups = Vec::new();
            let outcome = set_up(&mut pod, &config, &worker, &mut created_cgroups);
            (pod, outcome, created_cgroups, started.elapsed())
        }),
        async {
            let address = manager.start_shim(&id, &pod_dir).await;
            tracing::debug!(pod = %id, elapsed = ?started.elapsed(), "shim started");
            address
        },
    );
    let (mut pod, outcome, created_cgroups) = match set_up_result {
        Ok((pod, outcome, created_cgroups, elapsed)) => {
            tracing::debug!(pod = %pod.id, ?elapsed, "pod set up");
            (pod, outcome, created_cgroups)
        }
        Err(err) => {
            if let Ok(address) = &shim_result {
                let _ = crate::shim_client::ShimClient::new(address)
                    .shutdown()
                    .await;
            }
            return Err(CriError::join("pod set-up")(err));
        }
    };
    let saved = outcome.and_then(|()| {
        let address = shim_result.as_ref().map_err(|err| CriError::Shim {
            method: "start",
            code: err.code(),
            message: err.to_string(),
        })?;
        pod.shim = Some(address.clone());
        manager.save_pod(pod.clone())
    });
    if let Err(err) = saved {
        if let Ok(address) = &shim_result {
            let _ = crate::shim_client::ShimClient::new(address)
                .shutdown()
                .await;
        }
        let worker = Arc::clone(manager);
        let _ = tokio::task::spawn_blocking(move || {
            let _ = detach(&pod, &worker);
            host::rootfs::remove_pod_dir(&pod.dir);
            host::pod_init::stop_pod_init(&worker.proc_root(), &pod);
            host::cgroups::remove_created_cgroups(&created_cgroups);
        })
        .await;
        return Err(err);
    }
    tracing::info!(pod = %id, ips = ?pod_ips_of(manager, &id), "pod sandbox ready");
    Ok(id)
}

fn pod_ips_of(manager: &Manager, id: &str) -> Vec<String> {
    manager.pod(id).map(|p| p.ips).unwrap_or_default()
}

/// The pod's record, read again under its lifecycle lock (held while the guard lives);
/// None when it is gone.
async fn locked(
    manager: &Manager,
    id: &str,
) -> Result<Option<(tokio::sync::OwnedMutexGuard<()>, PodRecord)>, CriError> {
    let pod = match manager.pod(id) {
        Ok(pod) => pod,
        Err(CriError::NotFound { .. }) => return Ok(None),
        Err(err) => return Err(err),
    };
    let guard = manager.lock_pod(&pod.id).await;
    match manager.pod(&pod.id) {
        Ok(pod) => Ok(Some((guard, pod))),
        // Removed by a call that held the lock first.
        Err(CriError::NotFound { .. }) => Ok(None),
        Err(err) => Err(err),
    }
}

pub async fn stop(manager: &Arc<Manager>, id: &str) -> Result<(), CriError> {
    // Stopping what is gone succeeds: the CRI asks StopPodSandbox to be idempotent.
    let Some((_lifecycle, pod)) = locked(manager, id).await? else {
        return Ok(());
    };
    stop_locked(manager, pod).await
}

/// StopPodSandbox with the pod's lock held: its containers are killed (a container created
/// before the lock was taken included), then its network is detached.
async fn stop_locked(manager: &Arc<Manager>, mut pod: PodRecord) -> Result<(), CriError> {
    for container in manager.containers_of(&pod.id) {
        super::containers::stop(manager, &container.id, 0).await?;
    }
    if pod.state == PodState::NotReady {
        return Ok(());
    }
    if !pod.netdevs.is_empty() {
        pod = give_back_netdevs(manager, pod).await?;
        manager.mirror_devices();
    }
    let worker = Arc::clone(manager);
    let detached = pod.clone();
    tokio::task::spawn_blocking(move || detach(&detached, &worker))
        .await
        .map_err(CriError::join("pod network"))??;
    pod.state = PodState::NotReady;
    pod.ips.clear();
    manager.save_pod(pod.clone())?;
    tracing::info!(pod = %pod.id, "pod sandbox stopped");
    Ok(())
}

/// Moves the pod's host interfaces back into ingotd's namespace; each one moved back is off the
/// record at once, so a failure leaves only the others to retry at the next stop.
async fn give_back_netdevs(
    manager: &Arc<Manager>,
    mut pod: PodRecord,
) -> Result<PodRecord, CriError> {
    let Some(netns) = pod.net.clone() else {
        pod.netdevs.clear();
        manager.save_pod(pod.clone())?;
        return Ok(pod);
    };
    while let Some(netdev) = pod.netdevs.last().cloned() {
        let path = netns.clone();
        let name = netdev.host_name.clone();
        let moved = tokio::task::spawn_blocking(move || host::netdev::move_out(&path, &netdev))
            .await
            .map_err(CriError::join("pod interfaces"))
            .and_then(|r| r);
        if let Err(err) = moved {
            // The pod must be able to stop: a physical interface returns to the node's first
            // namespace when the pod's goes, a virtual one goes with it.
            tracing::warn!(pod = %pod.id, interface = %name, error = %err, "interface not moved back");
        }
        pod.netdevs.pop();
        manager.save_pod(pod.clone())?;
    }
    Ok(pod)
}

pub async fn remove(manager: &Arc<Manager>, id: &str) -> Result<(), CriError> {
    // Removing what is already gone succeeds, as the CRI asks.
    let Some((_lifecycle, pod)) = locked(manager, id).await? else {
        return Ok(());
    };
    stop_locked(manager, pod.clone()).await?;
    for container in manager.containers_of(&pod.id) {
        super::containers::remove_locked(manager, container).await?;
    }
    let pod = manager.pod(&pod.id)?;
    if let Some(shim) = manager.shim_of(&pod) {
        if let Err(err) = shim.shutdown().await {
            tracing::warn!(pod = %pod.id, error = %err, "shim shutdown");
        }
    }
    let removed = pod.clone();
    let (proc_root, host_root) = (manager.proc_root(), manager.config.host_root.clone());
    tokio::task::spawn_blocking(move || {
        host::pod_init::stop_pod_init(&proc_root, &removed);
        host::rootfs::remove_pod_dir(&removed.dir);
        host::cgroups::remove_pod_cgroup(&host_root, &removed);
        // What the pod's calls allocated is free now; give it back to the system rather than
        // keep it in malloc's arenas for the life of the daemon.
        // SAFETY: malloc_trim only returns free memory; it is thread-safe.
        unsafe {
            libc::malloc_trim(0);
        }
    })
    .await
    .map_err(CriError::join("pod removal"))?;
    manager.forget_pod(&pod.id)?;
    tracing::info!(pod = %pod.id, "pod sandbox removed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_from_dns_config() {
        let dns = v1::DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec![
                "default.svc.cluster.local".into(),
                "svc.cluster.local".into(),
            ],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            resolv_conf(Some(&dns)).expect("text"),
            "search default.svc.cluster.local svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
        );
        assert_eq!(resolv_conf(Some(&v1::DnsConfig::default())), None);
    }
}
