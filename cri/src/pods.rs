//! Pod sandboxes without a pause process: RunPodSandbox pins the pod's network, IPC and UTS
//! namespaces under `<state>/pods/<id>/ns/`, writes its hostname, hosts and resolv.conf, mounts
//! its /dev/shm, and attaches its network through CNI; StopPodSandbox kills its containers and
//! detaches the network; RemovePodSandbox removes everything, the pod's shim included.

use std::{
    collections::HashMap,
    path::{Component, Path, PathBuf},
    sync::Arc,
};

use ingot_netns::{cni, Kind};
use k8s_cri::v1;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use prost::Message;

use crate::{
    manager::{new_id, now_ns, Manager},
    store::{PodRecord, PodState},
    CriError,
};

/// `ingotd --pod-init <pod dir>`: PID 1 of a pod's shared PID namespace (the directory names
/// the pod in `ps`).
pub const POD_INIT_ARG: &str = "--pod-init";

extern "C" fn reap_children(_: libc::c_int) {
    // Orphans of the pod are re-parented here; reap them (async-signal-safe calls only).
    loop {
        // SAFETY: waitpid with a null status pointer is async-signal-safe.
        let pid = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
        if pid <= 0 {
            break;
        }
    }
}

/// The init of a pod's shared PID namespace: sleeps, reaping orphans, until killed.
pub fn pod_init() -> ! {
    let action = nix::sys::signal::SigAction::new(
        nix::sys::signal::SigHandler::Handler(reap_children),
        nix::sys::signal::SaFlags::SA_RESTART | nix::sys::signal::SaFlags::SA_NOCLDSTOP,
        nix::sys::signal::SigSet::empty(),
    );
    // SAFETY: the handler only calls waitpid.
    let _ = unsafe { nix::sys::signal::sigaction(nix::sys::signal::Signal::SIGCHLD, &action) };
    loop {
        nix::unistd::pause();
    }
}

/// Whether `pid` is still a pod-init process (a pid is reused once its process is reaped).
fn is_pod_init(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(POD_INIT_ARG))
}

/// Running pod inits whose pod directory is directly under `pods_dir`: (pid, pod id). Their
/// command line is `ingotd --pod-init <pods_dir>/<id>`.
pub fn pod_inits_under(pods_dir: &Path) -> Vec<(u32, String)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let mut args = cmdline.split(|b| *b == 0).skip(1);
            if args.next()? != POD_INIT_ARG.as_bytes() {
                return None;
            }
            let dir = PathBuf::from(String::from_utf8_lossy(args.next()?).into_owned());
            if dir.parent()? != pods_dir {
                return None;
            }
            Some((pid, dir.file_name()?.to_string_lossy().into_owned()))
        })
        .collect()
}

/// Ends a pod init by pid (SIGKILL; reaped when it is ingotd's child).
pub fn kill_pod_init(pid: u32) {
    let Ok(raw) = i32::try_from(pid) else { return };
    let pid = nix::unistd::Pid::from_raw(raw);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    let _ = nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
}

fn stop_pod_init(pod: &PodRecord) {
    let Some(pid) = pod.pid_holder.filter(|pid| is_pod_init(*pid)) else {
        return;
    };
    let Ok(raw) = i32::try_from(pid) else { return };
    let pid = nix::unistd::Pid::from_raw(raw);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    // Our child unless ingotd restarted since (then init reaps it).
    let _ = nix::sys::wait::waitpid(pid, None);
}

/// The longest name, namespace, uid or hostname accepted (Kubernetes' own limits are lower).
const MAX_NAME: usize = 253;

/// Checks an absolute host path without `..`.
pub fn absolute_path(field: &'static str, path: &str) -> Result<(), CriError> {
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(CriError::invalid(
            field,
            format!("{path:?} is not an absolute path"),
        ));
    }
    if p.components().any(|c| c == Component::ParentDir) {
        return Err(CriError::invalid(
            field,
            format!("{path:?} contains \"..\""),
        ));
    }
    Ok(())
}

fn name_field(field: &'static str, value: &str) -> Result<(), CriError> {
    if value.is_empty() {
        return Err(CriError::invalid(field, "is required"));
    }
    if value.len() > MAX_NAME {
        return Err(CriError::invalid(
            field,
            format!("is {} bytes long; at most {MAX_NAME}", value.len()),
        ));
    }
    if value.contains('/') || value.chars().any(char::is_control) {
        return Err(CriError::invalid(
            field,
            format!("{value:?} holds '/' or control characters"),
        ));
    }
    Ok(())
}

/// Everything RunPodSandbox refuses before it touches the host.
pub fn validate(config: &v1::PodSandboxConfig) -> Result<(), CriError> {
    let metadata = config
        .metadata
        .as_ref()
        .ok_or_else(|| CriError::invalid("config.metadata", "is required"))?;
    name_field("config.metadata.name", &metadata.name)?;
    name_field("config.metadata.namespace", &metadata.namespace)?;
    name_field("config.metadata.uid", &metadata.uid)?;
    if !config.hostname.is_empty() {
        let valid = config.hostname.len() <= 64
            && config
                .hostname
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        if !valid {
            return Err(CriError::invalid(
                "config.hostname",
                format!(
                    "{:?} is not a host name of at most 64 characters",
                    config.hostname
                ),
            ));
        }
    }
    if !config.log_directory.is_empty() {
        absolute_path("config.log_directory", &config.log_directory)?;
    }
    for mapping in &config.port_mappings {
        for (field, port) in [
            (
                "config.port_mappings.container_port",
                mapping.container_port,
            ),
            ("config.port_mappings.host_port", mapping.host_port),
        ] {
            if !(0..=65535).contains(&port) {
                return Err(CriError::invalid(
                    field,
                    format!("{port} is not a port number"),
                ));
            }
        }
    }
    if let Some(dns) = &config.dns_config {
        for server in &dns.servers {
            if server.parse::<std::net::IpAddr>().is_err() {
                return Err(CriError::invalid(
                    "config.dns_config.servers",
                    format!("{server:?} is not an IP address"),
                ));
            }
        }
    }
    if let Some(linux) = &config.linux {
        if !linux.cgroup_parent.is_empty() {
            ingot_oci::validate_cgroups_path(&linux.cgroup_parent).map_err(|_| {
                CriError::invalid(
                    "config.linux.cgroup_parent",
                    format!(
                        "{:?} must be an absolute cgroupfs path without \"..\"",
                        linux.cgroup_parent
                    ),
                )
            })?;
        }
        crate::sysctl::check(&linux.sysctls, &own_namespaces(&namespace_options(config)))?;
    }
    Ok(())
}

fn name_key(config: &v1::PodSandboxConfig) -> String {
    let m = config.metadata.clone().unwrap_or_default();
    format!("{}_{}_{}_{}", m.name, m.namespace, m.uid, m.attempt)
}

pub fn decode_config(pod: &PodRecord) -> v1::PodSandboxConfig {
    v1::PodSandboxConfig::decode(pod.config.as_slice()).unwrap_or_default()
}

fn namespace_options(config: &v1::PodSandboxConfig) -> v1::NamespaceOption {
    config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or_default()
}

fn is_node(mode: i32) -> bool {
    mode == v1::NamespaceMode::Node as i32
}

/// The namespaces a pod gets of its own (and pins): network and UTS unless it uses the host's
/// network, IPC unless it uses the host's IPC.
fn own_namespaces(options: &v1::NamespaceOption) -> Vec<Kind> {
    let mut kinds = Vec::new();
    if !is_node(options.network) {
        kinds.extend([Kind::Net, Kind::Uts]);
    }
    if !is_node(options.ipc) {
        kinds.push(Kind::Ipc);
    }
    kinds
}

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
    let options = namespace_options(config);
    let host_network = is_node(options.network);
    let host_ipc = is_node(options.ipc);
    pod.host_pid = is_node(options.pid);
    // The pod's cgroup first: the pod init, like every process of the pod, lives in it from
    // its start (a kubelet's pod accounting and the pod's cpuset see it).
    created_cgroups.extend(create_pod_cgroups(&pod.cgroup_parent));
    if options.pid == v1::NamespaceMode::Pod as i32 {
        let exe = std::env::current_exe().map_err(CriError::io("find the ingotd binary"))?;
        let joins = pod_init_cgroup_files(&pod.cgroup_parent, created_cgroups)?;
        let pid = ingot_netns::spawn_pid_holder(
            &exe,
            &[POD_INIT_ARG, &pod.dir.display().to_string()],
            &joins,
        )?;
        pod.pid_holder = Some(pid);
        // Joining the pod's cpuset gave it all the pod's CPUs; it is ingot's, so it goes back
        // to the housekeeping CPUs.
        let cpus = manager.housekeeping_cpus();
        crate::host::affinity::pin_process(&manager.config.host_root.join("proc"), pid, &cpus)?;
    }
    std::fs::create_dir_all(&pod.dir)
        .map_err(CriError::io(format!("create {}", pod.dir.display())))?;

    let kinds = own_namespaces(&options);
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
        let runtime_config = serde_json::json!({ "portMappings": port_mappings });
        let attachment = cni::Attachment {
            plugin_dirs: &manager.config.cni.bin_dirs,
            container_id: &pod.id,
            netns: &netns,
            ifname: "eth0",
            args: &args,
            runtime_config: &runtime_config,
        };
        // The pod's loopback is always up, whatever the network configuration holds (natively:
        // one plugin process less on every pod start).
        ingot_netns::loopback_up(&netns)?;
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

/// CNI DEL for a pod that was attached; blocking.
fn detach(pod: &PodRecord, manager: &Manager) -> Result<(), CriError> {
    let (Some(netns), Some(saved)) = (&pod.net, &pod.cni_result) else {
        return Ok(());
    };
    let saved: serde_json::Value = serde_json::from_str(saved).unwrap_or_default();
    let source = PathBuf::from(saved["network"].as_str().unwrap_or_default());
    let text = match std::fs::read(&source) {
        Ok(text) => text,
        // The network's configuration is gone: nothing can run its DEL; stopping the pod must
        // not fail forever because of it.
        Err(err) => {
            tracing::warn!(pod = %pod.id, config = %source.display(), error = %err, "CNI DEL skipped");
            return Ok(());
        }
    };
    let value: serde_json::Value = serde_json::from_slice(&text).unwrap_or_default();
    let network = cni::parse_network(value, source)?;
    let config = decode_config(pod);
    let args = cni_args(&pod.id, &config);
    let runtime_config = serde_json::json!({});
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

/// CNI DEL for a pod directory no record owns (ingotd died inside RunPodSandbox, perhaps after
/// CNI ADD), so its addresses are released (host-local IPAM keeps them by pod id otherwise).
/// Its network was not recorded: the node's current configuration is used, with the pod id
/// as container id (the only CNI_ARGS known). Blocking.
pub fn release_orphan_network(manager: &Manager, pod_id: &str, dir: &Path) {
    let netns = dir.join("ns/net");
    // Pinned before CNI ADD runs: without it the pod never reached its network.
    if !netns.exists() {
        return;
    }
    let network = match cni::load_network(&manager.config.cni.conf_dir) {
        Ok(Some(network)) => network,
        Ok(None) => return,
        Err(err) => {
            tracing::warn!(pod = %pod_id, error = %err, "CNI DEL of an orphaned pod skipped");
            return;
        }
    };
    let args = format!("IgnoreUnknown=1;K8S_POD_INFRA_CONTAINER_ID={pod_id}");
    let runtime_config = serde_json::json!({});
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

/// Unmounts and removes a pod directory (namespaces, shm, files). Idempotent.
pub fn remove_pod_dir(dir: &Path) {
    for name in ["ns/net", "ns/ipc", "ns/uts", "shm"] {
        let _ = umount2(&dir.join(name), MntFlags::MNT_DETACH);
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Where a cgroup path can live: each hierarchy under /sys/fs/cgroup (v1 and the hybrid
/// unified one), and /sys/fs/cgroup itself (pure v2).
pub(crate) fn cgroup_roots() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    roots.push(PathBuf::from("/sys/fs/cgroup"));
    roots
}

/// The v1 controller hierarchies under /sys/fs/cgroup (not the hybrid unified one, nor the
/// named systemd one), where a pod's cgroup is made and its pod init joins it.
fn v1_controller_hierarchies() -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    cgroup_roots()
        .into_iter()
        .filter(|hierarchy| {
            let name = hierarchy.file_name().and_then(|n| n.to_str()).unwrap_or("");
            hierarchy != root && !matches!(name, "unified" | "systemd") && hierarchy.is_dir()
        })
        .collect()
}

/// Creates the pod's cgroup in each v1 controller hierarchy where it is missing, as the sandbox
/// container of containerd does at RunPodSandbox, so the pod's first CreateContainer makes one
/// cgroup level, not two (a v1 cgroup costs one directory per hierarchy, each with per-controller
/// state to set up). It runs beside the CNI plugin. Returns what it created, parents first, for
/// removal when the pod fails to start. On cgroup v2 the runtime makes the path itself, enabling
/// controllers on the way down.
fn create_pod_cgroups(parent: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        return Vec::new();
    }
    let relative = Path::new(parent.trim_start_matches('/'));
    let mut created = Vec::new();
    for hierarchy in v1_controller_hierarchies() {
        let name = hierarchy.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let mut dir = hierarchy.clone();
        for component in relative.components() {
            dir.push(component);
            match std::fs::create_dir(&dir) {
                Ok(()) => {
                    if name == "cpuset" {
                        inherit_cpuset(&dir);
                    }
                    created.push(dir.clone());
                }
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(err) => {
                    // The runtime creates it later, or fails with the reason.
                    tracing::debug!(dir = %dir.display(), error = %err, "pod cgroup not created");
                    break;
                }
            }
        }
    }
    created
}

/// On cgroup v2 a process may not sit in a cgroup whose children have controllers enabled,
/// so the pod init gets a leaf of its own under the pod's cgroup (as a pause container has).
const POD_INIT_CGROUP: &str = "pod-init";

/// The files through which the pod init joins the pod's cgroup: `tasks` in each v1 hierarchy
/// where the pod cgroup exists, or `cgroup.procs` of its v2 leaf (created here, and added to
/// `created`).
fn pod_init_cgroup_files(
    parent: &str,
    created: &mut Vec<PathBuf>,
) -> Result<Vec<PathBuf>, CriError> {
    let root = Path::new("/sys/fs/cgroup");
    let relative = Path::new(parent.trim_start_matches('/'));
    if root.join("cgroup.controllers").exists() {
        let mut dir = root.to_path_buf();
        for component in relative.join(POD_INIT_CGROUP).components() {
            dir.push(component);
            match std::fs::create_dir(&dir) {
                Ok(()) => created.push(dir.clone()),
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(err) => return Err(CriError::io(format!("create {}", dir.display()))(err)),
            }
        }
        return Ok(vec![dir.join("cgroup.procs")]);
    }
    Ok(v1_controller_hierarchies()
        .into_iter()
        .map(|hierarchy| hierarchy.join(relative).join("tasks"))
        .filter(|tasks| tasks.exists())
        .collect())
}

/// A new v1 cpuset cgroup starts with no CPUs and no memory nodes, and no process can join it
/// (ENOSPC) until they are set: it gets its parent's, as libcontainer does for a container's.
fn inherit_cpuset(dir: &Path) {
    let Some(parent) = dir.parent() else { return };
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let own = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        if !own.trim().is_empty() {
            continue;
        }
        let inherited = std::fs::read_to_string(parent.join(file)).unwrap_or_default();
        if let Err(err) = std::fs::write(dir.join(file), inherited.trim()) {
            tracing::debug!(dir = %dir.display(), file, error = %err, "cpuset not inherited");
        }
    }
}

/// Removes cgroup directories made by [`create_pod_cgroups`], children first.
fn remove_created_cgroups(created: &[PathBuf]) {
    for dir in created.iter().rev() {
        let _ = std::fs::remove_dir(dir);
    }
}

/// Removes the pod init's v2 leaf, and the pod's cgroup where ingotd made it. The pod init
/// was just killed; one not reaped by ingotd (after a restart its parent is another) may take
/// a moment to leave the cgroup.
fn remove_pod_cgroup(pod: &PodRecord) {
    if pod.cgroup_parent.is_empty() {
        return;
    }
    let relative = pod.cgroup_parent.trim_start_matches('/');
    for root in cgroup_roots() {
        let dir = root.join(relative);
        let mut dirs = vec![dir.join(POD_INIT_CGROUP)];
        if pod.owns_cgroup {
            dirs.push(dir);
        }
        for dir in dirs.iter().filter(|d| d.is_dir()) {
            remove_cgroup_dir(dir);
        }
    }
}

/// Removes one cgroup directory, waiting up to 100 ms for processes just killed (and reaped
/// by another parent) to leave it; one that still holds live processes is left, with a log line.
pub(crate) fn remove_cgroup_dir(dir: &Path) {
    for _ in 0..20 {
        match std::fs::remove_dir(dir) {
            Err(err) if err.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(cgroup = %dir.display(), error = %err, "cgroup not removed");
                return;
            }
            _ => return,
        }
    }
    tracing::warn!(cgroup = %dir.display(), "cgroup not removed: processes still in it");
}

pub async fn run(
    manager: &Arc<Manager>,
    request: v1::RunPodSandboxRequest,
) -> Result<String, CriError> {
    let config = request
        .config
        .ok_or_else(|| CriError::invalid("config", "is required"))?;
    validate(&config)?;
    if !matches!(request.runtime_handler.as_str(), "" | "ingot") {
        return Err(CriError::NotFound {
            what: format!("runtime handler {:?}", request.runtime_handler),
        });
    }
    let key = name_key(&config);
    let _name = manager.reserve_pod_name(key.clone(), || {
        manager
            .pods()
            .into_iter()
            .find(|p| name_key(&decode_config(p)) == key)
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
            remove_pod_dir(&pod.dir);
            stop_pod_init(&pod);
            remove_created_cgroups(&created_cgroups);
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
        crate::containers::stop(manager, &container.id, 0).await?;
    }
    if pod.state == PodState::NotReady {
        return Ok(());
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

pub async fn remove(manager: &Arc<Manager>, id: &str) -> Result<(), CriError> {
    // Removing what is already gone succeeds, as the CRI asks.
    let Some((_lifecycle, pod)) = locked(manager, id).await? else {
        return Ok(());
    };
    stop_locked(manager, pod.clone()).await?;
    for container in manager.containers_of(&pod.id) {
        crate::containers::remove_locked(manager, container).await?;
    }
    let pod = manager.pod(&pod.id)?;
    if let Some(shim) = manager.shim_of(&pod) {
        if let Err(err) = shim.shutdown().await {
            tracing::warn!(pod = %pod.id, error = %err, "shim shutdown");
        }
    }
    let removed = pod.clone();
    tokio::task::spawn_blocking(move || {
        stop_pod_init(&removed);
        remove_pod_dir(&removed.dir);
        remove_pod_cgroup(&removed);
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

pub fn status_of(pod: &PodRecord) -> v1::PodSandboxStatus {
    let config = decode_config(pod);
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

pub fn verbose_info(pod: &PodRecord) -> HashMap<String, String> {
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

pub fn list(manager: &Manager, filter: Option<&v1::PodSandboxFilter>) -> Vec<v1::PodSandbox> {
    manager
        .pods()
        .into_iter()
        .filter(|pod| {
            let Some(filter) = filter else { return true };
            if !filter.id.is_empty() && !pod.id.starts_with(&filter.id) {
                return false;
            }
            if let Some(state) = &filter.state {
                let ready = state.state == v1::PodSandboxState::SandboxReady as i32;
                if ready != (pod.state == PodState::Ready) {
                    return false;
                }
            }
            labels_match(&filter.label_selector, &decode_config(pod).labels)
        })
        .map(|pod| {
            let status = status_of(&pod);
            v1::PodSandbox {
                id: status.id,
                metadata: status.metadata,
                state: status.state,
                created_at: status.created_at,
                labels: status.labels,
                annotations: status.annotations,
                runtime_handler: status.runtime_handler,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> v1::PodSandboxConfig {
        v1::PodSandboxConfig {
            metadata: Some(v1::PodSandboxMetadata {
                name: "web".into(),
                namespace: "default".into(),
                uid: "u1".into(),
                attempt: 0,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn validation_names_the_field() {
        assert!(validate(&config()).is_ok());
        type Change = Box<dyn Fn(&mut v1::PodSandboxConfig)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|c| c.metadata = None), "config.metadata"),
            (
                Box::new(|c| c.metadata.as_mut().expect("m").name.clear()),
                "config.metadata.name",
            ),
            (
                Box::new(|c| c.metadata.as_mut().expect("m").uid = "a/b".into()),
                "config.metadata.uid",
            ),
            (
                Box::new(|c| c.metadata.as_mut().expect("m").namespace = "n".repeat(300)),
                "config.metadata.namespace",
            ),
            (
                Box::new(|c| c.hostname = "bad host".into()),
                "config.hostname",
            ),
            (
                Box::new(|c| c.log_directory = "var/log".into()),
                "config.log_directory",
            ),
            (
                Box::new(|c| {
                    c.port_mappings = vec![v1::PortMapping {
                        container_port: 70000,
                        ..Default::default()
                    }]
                }),
                "config.port_mappings.container_port",
            ),
            (
                Box::new(|c| {
                    c.dns_config = Some(v1::DnsConfig {
                        servers: vec!["dns.example".into()],
                        ..Default::default()
                    })
                }),
                "config.dns_config.servers",
            ),
            (
                Box::new(|c| {
                    c.linux = Some(v1::LinuxPodSandboxConfig {
                        cgroup_parent: "kubepods/../x".into(),
                        ..Default::default()
                    })
                }),
                "config.linux.cgroup_parent",
            ),
            (
                Box::new(|c| {
                    c.linux = Some(v1::LinuxPodSandboxConfig {
                        sysctls: HashMap::from([("net/../x".into(), "1".into())]),
                        ..Default::default()
                    })
                }),
                "config.linux.sysctls",
            ),
        ];
        for (change, field) in cases {
            let mut bad = config();
            change(&mut bad);
            let err = validate(&bad).expect_err(field);
            assert!(err.to_string().starts_with(field), "{field}: {err}");
        }
    }

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
