//! Pods and containers through ingotd's CRI, end to end on real parts: an image pulled from a
//! real registry, the CNI bridge/host-local/loopback plugins (ingotd runs in a network namespace
//! of its own, so the bridge never appears on the host), the shim, CRI logs, ExecSync, stats,
//! stop/remove leaving nothing behind, and recovery after `kill -9` of the daemon.

use std::{collections::HashMap, path::Path, time::Duration};

use ingot_tests::{
    cri::{runtime_client, Daemon},
    pods::*,
};
use k8s_cri::v1::{self, runtime_service_client::RuntimeServiceClient};
use tonic::transport::Channel;

#[tokio::test(flavor = "current_thread")]
async fn pod_lifecycle_network_logs_exec_stats() {
    let (env, mut client, image) = env(true).await;
    let daemon = &env.daemon;
    let log_dir = daemon.log_dir("web");
    let mut pod = pod_config("web", &log_dir);
    // A namespaced sysctl of the pod, set in its network namespace for its containers.
    pod.linux = Some(v1::LinuxPodSandboxConfig {
        sysctls: HashMap::from([("net.ipv4.ip_unprivileged_port_start".into(), "80".into())]),
        ..Default::default()
    });
    let pod_id = run_pod(&mut client, pod.clone()).await;

    let status = client
        .pod_sandbox_status(v1::PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.clone(),
            verbose: true,
        })
        .await
        .expect("PodSandboxStatus")
        .into_inner();
    let sandbox = status.status.expect("status");
    assert_eq!(sandbox.state, v1::PodSandboxState::SandboxReady as i32);
    let ip = sandbox.network.expect("network").ip;
    assert!(ip.starts_with("10.99.0."), "pod IP {ip:?}");
    assert_eq!(sandbox.labels.get("app").map(String::as_str), Some("web"));
    assert_eq!(
        sandbox.annotations.get("note").map(String::as_str),
        Some("kept")
    );
    assert!(status.info.contains_key("info"));
    // The pod's sysctl is set in its pinned network namespace at RunPodSandbox, before any
    // container exists.
    let info: serde_json::Value = serde_json::from_str(&status.info["info"]).expect("info json");
    let netns = info["netNamespacePath"].as_str().expect("netns path");
    let set = std::process::Command::new("nsenter")
        .arg(format!("--net={netns}"))
        .args(["cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"])
        .output()
        .expect("nsenter");
    assert_eq!(String::from_utf8_lossy(&set.stdout).trim(), "80", "{set:?}");

    // A duplicate name is refused, and leaves nothing.
    let duplicate = client
        .run_pod_sandbox(v1::RunPodSandboxRequest {
            config: Some(pod.clone()),
            runtime_handler: String::new(),
        })
        .await
        .expect_err("duplicate");
    assert_eq!(
        duplicate.code(),
        tonic::Code::AlreadyExists,
        "{duplicate:?}"
    );

    let script = "echo \"$GREETING\"; echo to-stderr >&2; trap 'echo bye; exit 0' TERM; \
                  while true; do sleep 0.1; done";
    let id = start_container(
        &mut client,
        &pod_id,
        &pod,
        container_config("app", &image, script),
    )
    .await;
    let log_path = log_dir.join("app/0.log");
    // stdout and stderr are copied by a thread each, as containerd's shim does with a
    // goroutine each: the order of their lines in the file is not the order of the writes.
    wait_for_log(&log_path, "hello from ingot").await;
    let log = wait_for_log(&log_path, "to-stderr").await;
    assert!(log.contains(" stdout F hello from ingot\n"), "{log}");
    assert!(log.contains(" stderr F to-stderr\n"), "{log}");
    assert_cri_format(&log);

    let status = container_status(&mut client, &id).await;
    assert_eq!(status.state, v1::ContainerState::ContainerRunning as i32);
    assert_eq!(status.log_path, log_path.display().to_string());
    assert_eq!(status.labels.get("tier").map(String::as_str), Some("app"));
    assert!(status.started_at >= status.created_at && status.created_at > 0);

    // ExecSync: the pod's hostname, DNS and network, output and exit codes.
    let out = exec(
        &mut client,
        &id,
        &["cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"],
    )
    .await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "80\n");
    let out = exec(&mut client, &id, &["hostname"]).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "web-host\n");
    assert_eq!(out.exit_code, 0);
    // $HOSTNAME too, as containerd and CRI-O set it (StatefulSet scripts read it).
    let out = exec(&mut client, &id, &["env"]).await;
    let env = String::from_utf8_lossy(&out.stdout);
    assert!(env.lines().any(|l| l == "HOSTNAME=web-host"), "{env}");
    let out = exec(&mut client, &id, &["cat", "/etc/resolv.conf"]).await;
    let resolv = String::from_utf8_lossy(&out.stdout);
    assert!(
        resolv.contains("nameserver 10.96.0.10") && resolv.contains("ndots:5"),
        "{resolv}"
    );
    let out = exec(&mut client, &id, &["ip", "-4", "addr", "show", "eth0"]).await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&ip),
        "{out:?}"
    );
    let out = exec(
        &mut client,
        &id,
        &["sh", "-c", "echo out; echo err >&2; exit 3"],
    )
    .await;
    assert_eq!(
        (out.stdout.as_slice(), out.stderr.as_slice(), out.exit_code),
        (&b"out\n"[..], &b"err\n"[..], 3)
    );
    let timed_out = client
        .exec_sync(v1::ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["sleep".into(), "30".into()],
            timeout: 1,
        })
        .await
        .expect_err("timeout");
    assert_eq!(
        timed_out.code(),
        tonic::Code::DeadlineExceeded,
        "{timed_out:?}"
    );

    // A second container joins the same network namespace.
    let sidecar = start_container(
        &mut client,
        &pod_id,
        &pod,
        container_config("sidecar", &image, "sleep 1000"),
    )
    .await;
    let out = exec(&mut client, &sidecar, &["ip", "-4", "addr", "show", "eth0"]).await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&ip),
        "{out:?}"
    );

    let listed = client
        .list_containers(v1::ListContainersRequest {
            filter: Some(v1::ContainerFilter {
                label_selector: HashMap::from([("tier".into(), "sidecar".into())]),
                ..Default::default()
            }),
        })
        .await
        .expect("ListContainers")
        .into_inner()
        .containers;
    assert_eq!(
        listed.iter().map(|c| c.id.clone()).collect::<Vec<_>>(),
        vec![sidecar.clone()]
    );

    let stats = client
        .container_stats(v1::ContainerStatsRequest {
            container_id: id.clone(),
        })
        .await
        .expect("ContainerStats")
        .into_inner()
        .stats
        .expect("stats");
    let cpu = stats
        .cpu
        .and_then(|c| c.usage_core_nano_seconds)
        .map(|v| v.value);
    let memory = stats
        .memory
        .and_then(|m| m.working_set_bytes)
        .map(|v| v.value);
    assert!(cpu.is_some_and(|v| v > 0), "cpu {cpu:?}");
    assert!(memory.is_some_and(|v| v > 0), "memory {memory:?}");

    // ReopenContainerLog after the kubelet rotated the file: the next lines go to a new file.
    std::fs::rename(&log_path, log_dir.join("app/0.log.1")).expect("rotate");
    client
        .reopen_container_log(v1::ReopenContainerLogRequest {
            container_id: id.clone(),
        })
        .await
        .expect("ReopenContainerLog");
    client
        .stop_container(v1::StopContainerRequest {
            container_id: id.clone(),
            timeout: 10,
        })
        .await
        .expect("StopContainer");
    let log = wait_for_log(&log_path, "bye").await;
    assert!(!log.contains("hello from ingot"), "{log}");
    let status = container_status(&mut client, &id).await;
    assert_eq!(status.state, v1::ContainerState::ContainerExited as i32);
    assert_eq!((status.exit_code, status.reason.as_str()), (0, "Completed"));
    assert!(status.finished_at >= status.started_at);

    client
        .remove_container(v1::RemoveContainerRequest {
            container_id: id.clone(),
        })
        .await
        .expect("RemoveContainer");
    let gone = client
        .container_status(v1::ContainerStatusRequest {
            container_id: id.clone(),
            verbose: false,
        })
        .await
        .expect_err("removed");
    assert_eq!(gone.code(), tonic::Code::NotFound);

    // Stop kills the sidecar and detaches the network; remove takes everything else.
    client
        .stop_pod_sandbox(v1::StopPodSandboxRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await
        .expect("StopPodSandbox");
    let status = container_status(&mut client, &sidecar).await;
    assert_eq!(status.state, v1::ContainerState::ContainerExited as i32);
    assert_eq!(status.exit_code, 137);
    remove_pod(&mut client, &pod_id).await;
    let pods = client
        .list_pod_sandbox(v1::ListPodSandboxRequest { filter: None })
        .await
        .expect("list")
        .into_inner()
        .items;
    assert!(pods.is_empty(), "{pods:?}");
    assert_nothing_left(daemon, &pod_id);
    // Idempotent, as the CRI asks.
    remove_pod(&mut client, &pod_id).await;
    drop(env);
}

#[tokio::test(flavor = "current_thread")]
async fn restart_recovers_pods_and_exits_that_happened_meanwhile() {
    let (mut env, mut client, image) = env(false).await;
    let log_dir = env.daemon.log_dir("batch");
    // No network configuration in this daemon's CNI dir: the pod shares the host's network.
    let pod = host_network_pod("batch", &log_dir, v1::NamespaceMode::Pod);
    let pod_id = run_pod(&mut client, pod.clone()).await;
    let long = start_container(
        &mut client,
        &pod_id,
        &pod,
        container_config("long", &image, "sleep 1000"),
    )
    .await;
    let short = start_container(
        &mut client,
        &pod_id,
        &pod,
        container_config("short", &image, "sleep 2; exit 7"),
    )
    .await;

    env.daemon.kill();
    // The store where an older ingotd kept it, under the root: the new one moves it to the
    // runtime state and recovers from it.
    let (moved, legacy) = (
        env.daemon.dir.path().join("run/state.redb"),
        env.daemon.dir.path().join("lib/state.redb"),
    );
    std::fs::copy(&moved, &legacy).expect("copy the store under the root");
    std::fs::remove_file(&moved).expect("remove the store");
    tokio::time::sleep(Duration::from_secs(3)).await;
    env.daemon = Daemon::restart(env.daemon);
    let mut client = runtime_client(&env.daemon.socket()).await;
    assert!(
        moved.is_file() && !legacy.exists(),
        "the store was not moved"
    );

    let pods = client
        .list_pod_sandbox(v1::ListPodSandboxRequest { filter: None })
        .await
        .expect("list pods")
        .into_inner()
        .items;
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].state, v1::PodSandboxState::SandboxReady as i32);
    let status = container_status(&mut client, &long).await;
    assert_eq!(
        status.state,
        v1::ContainerState::ContainerRunning as i32,
        "{status:?}"
    );
    let status = container_status(&mut client, &short).await;
    assert_eq!(
        status.state,
        v1::ContainerState::ContainerExited as i32,
        "{status:?}"
    );
    assert_eq!((status.exit_code, status.reason.as_str()), (7, "Error"));
    // The running one is followed again: ExecSync works and its exit is seen.
    let out = exec(&mut client, &long, &["echo", "still here"]).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "still here\n");
    client
        .stop_container(v1::StopContainerRequest {
            container_id: long.clone(),
            timeout: 0,
        })
        .await
        .expect("stop");
    assert_eq!(container_status(&mut client, &long).await.exit_code, 137);

    remove_pod(&mut client, &pod_id).await;
    assert_nothing_left(&env.daemon, &pod_id);
}

/// A process exec'd into a container (the shim's direct path) has exactly the identity of the
/// container's own process: ids, groups, capability sets, no_new_privs, seccomp, cgroups. The
/// pod's shim runs no thread for events nobody receives.
#[tokio::test(flavor = "current_thread")]
async fn exec_gets_the_container_identity() {
    let (env, mut client, image) = env(false).await;
    let log_dir = env.daemon.log_dir("ident");
    let pod = host_network_pod("ident", &log_dir, v1::NamespaceMode::Container);
    let pod_id = run_pod(&mut client, pod.clone()).await;
    let probe = "grep -E '^(Uid|Gid|Groups|Cap[A-Za-z]+|NoNewPrivs|Seccomp):' /proc/self/status; \
                 cat /proc/self/cgroup; for n in pid mnt ipc uts net; do readlink /proc/self/ns/$n; done";
    let mut config = container_config(
        "ident",
        &image,
        &format!("{probe}; echo END; exec sleep 1000"),
    );
    config.linux = Some(v1::LinuxContainerConfig {
        security_context: Some(v1::LinuxContainerSecurityContext {
            run_as_user: Some(v1::Int64Value { value: 1000 }),
            run_as_group: Some(v1::Int64Value { value: 1000 }),
            supplemental_groups: vec![2000, 3000],
            no_new_privs: true,
            capabilities: Some(v1::Capability {
                add_capabilities: vec!["NET_BIND_SERVICE".into()],
                drop_capabilities: vec!["ALL".into()],
                ..Default::default()
            }),
            seccomp: Some(v1::SecurityProfile {
                profile_type: v1::security_profile::ProfileType::RuntimeDefault as i32,
                localhost_ref: String::new(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = start_container(&mut client, &pod_id, &pod, config).await;
    let log = wait_for_log(&log_dir.join("ident/0.log"), " END\n").await;
    let init: Vec<String> = log
        .lines()
        .map(|l| l.splitn(4, ' ').nth(3).unwrap_or_default().to_string())
        .take_while(|l| l != "END")
        .collect();
    let out = exec(&mut client, &id, &["sh", "-c", probe]).await;
    assert_eq!(out.exit_code, 0, "{out:?}");
    let exec: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(exec, init);
    // Both are in the container's own cgroup, in every hierarchy (v1 controllers; or v2's one).
    let cgroup = format!("{}/{pod_id}/{id}", env.daemon.cgroup_parent);
    let cgroup_lines: Vec<(&str, &str)> = init
        .iter()
        .filter_map(|l| {
            let mut fields = l.splitn(3, ':');
            let hierarchy = fields.next()?;
            let (controllers, path) = (fields.next()?, fields.next()?);
            (hierarchy.parse::<u32>().is_ok() && path.starts_with('/'))
                .then_some((controllers, path))
        })
        .collect();
    let v1 = cgroup_lines.iter().any(|(c, _)| !c.is_empty());
    let checked: Vec<_> = cgroup_lines
        .iter()
        .filter(|(c, _)| {
            if v1 {
                !c.is_empty() && !c.starts_with("name=")
            } else {
                true
            }
        })
        .collect();
    assert!(!checked.is_empty(), "{init:?}");
    for (controllers, path) in checked {
        assert_eq!(*path, cgroup, "{controllers}: {init:?}");
    }
    assert!(init.iter().any(|l| l.starts_with("Uid:\t1000")), "{init:?}");
    assert!(init.iter().any(|l| l == "Seccomp:\t2"), "{init:?}");
    assert!(init.iter().any(|l| l == "NoNewPrivs:\t1"), "{init:?}");
    // An exec'd binary that is not there fails the RPC, naming it.
    let missing = client
        .exec_sync(v1::ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["no-such-binary".into()],
            timeout: 5,
        })
        .await
        .expect_err("missing binary");
    assert!(
        missing.message().contains("executable file not found"),
        "{missing:?}"
    );

    // ingotd gives its shims no events address (exits come through Wait, OOM kills from the
    // cgroup): such a shim starts neither the event publisher's thread nor the OOM watcher's.
    let shims = ingot_tests::pids_with_cmdline(&["containerd-shim-ingot-v2", &pod_id]);
    let threads: Vec<String> = shims
        .iter()
        // A helper the shim forked shares its command line and may be gone already.
        .filter_map(|shim| std::fs::read_dir(format!("/proc/{shim}/task")).ok())
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|comm| comm.trim().to_string())
        .collect();
    assert!(threads.iter().any(|t| t == "reaper"), "{threads:?}");
    assert!(
        !threads.iter().any(|t| t == "events" || t == "oom"),
        "{threads:?}"
    );

    // The node "rebooted" under the pod: shim and container gone. Stop still succeeds.
    let info = container_info(&mut client, &id).await;
    let pid = i32::try_from(info["pid"].as_i64().expect("pid")).expect("pid");
    for victim in shims.into_iter().chain([pid]) {
        let victim = nix::unistd::Pid::from_raw(victim);
        let _ = nix::sys::signal::kill(victim, nix::sys::signal::Signal::SIGKILL);
    }
    assert!(ingot_tests::wait_until(Duration::from_secs(5), || {
        ingot_tests::pids_with_cmdline(&["containerd-shim-ingot-v2", &pod_id]).is_empty()
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
    }));
    client
        .stop_pod_sandbox(v1::StopPodSandboxRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await
        .expect("StopPodSandbox with the shim gone");
    let status = container_status(&mut client, &id).await;
    assert_eq!(status.state, v1::ContainerState::ContainerExited as i32);
    assert_eq!(status.exit_code, 255, "{status:?}");
    remove_pod(&mut client, &pod_id).await;
    assert_nothing_left(&env.daemon, &pod_id);
}

/// GetContainerEvents streams each lifecycle change; UpdateContainerResources reaches the
/// container's cgroup and its status; pod and container stats list what runs; after a restart,
/// a pod directory and a bundle that no record owns are removed.
#[tokio::test(flavor = "current_thread")]
async fn events_updates_stats_and_orphans() {
    let (mut env, mut client, image) = env(false).await;
    let mut events = client
        .get_container_events(v1::GetEventsRequest {})
        .await
        .expect("GetContainerEvents")
        .into_inner();
    let log_dir = env.daemon.log_dir("ev");
    let pod = host_network_pod("ev", &log_dir, v1::NamespaceMode::Container);
    let pod_id = run_pod(&mut client, pod.clone()).await;
    // As a sandbox container would, RunPodSandbox puts the pod cgroup in place (v1 hosts).
    if !std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        let pod_cgroup = format!("{}/{pod_id}", env.daemon.cgroup_parent);
        for hierarchy in ["cpu", "memory", "pids", "cpuset"] {
            let dir = format!("/sys/fs/cgroup/{hierarchy}{pod_cgroup}");
            assert!(std::path::Path::new(&dir).is_dir(), "{dir} missing");
        }
    }
    let id = start_container(
        &mut client,
        &pod_id,
        &pod,
        container_config("ev", &image, "sleep 1000"),
    )
    .await;

    // Resources: new limits land in the cgroup and in ContainerStatus.
    client
        .update_container_resources(v1::UpdateContainerResourcesRequest {
            container_id: id.clone(),
            linux: Some(v1::LinuxContainerResources {
                cpu_shares: 256,
                memory_limit_in_bytes: 96 << 20,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("UpdateContainerResources");
    let cgroup = format!("{}/{pod_id}/{id}", env.daemon.cgroup_parent);
    let read = |file: &str| {
        std::fs::read_to_string(format!("/sys/fs/cgroup/{file}"))
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let (shares, limit) = if std::path::Path::new("/sys/fs/cgroup/cpu").exists() {
        (
            read(&format!("cpu{cgroup}/cpu.shares")),
            read(&format!("memory{cgroup}/memory.limit_in_bytes")),
        )
    } else {
        (
            read(&format!("{cgroup}/cpu.weight")),
            read(&format!("{cgroup}/memory.max")),
        )
    };
    assert!(
        shares == "256" || shares == "10",
        "cpu shares/weight {shares:?}"
    );
    assert_eq!(limit, (96u64 << 20).to_string());
    let status = container_status(&mut client, &id).await;
    let resources = status.resources.and_then(|r| r.linux).expect("resources");
    assert_eq!(resources.memory_limit_in_bytes, 96 << 20);

    let pod_stats = client
        .list_pod_sandbox_stats(v1::ListPodSandboxStatsRequest { filter: None })
        .await
        .expect("ListPodSandboxStats")
        .into_inner()
        .stats;
    assert_eq!(pod_stats.len(), 1);
    let linux = pod_stats[0].linux.clone().expect("linux stats");
    assert_eq!(linux.containers.len(), 1);
    assert!(linux
        .memory
        .and_then(|m| m.working_set_bytes)
        .is_some_and(|v| v.value > 0));
    // What the container's working set may still grow by under its 96 MiB limit.
    let available = linux.containers[0]
        .memory
        .as_ref()
        .and_then(|m| m.available_bytes)
        .map(|v| v.value);
    assert!(
        available.is_some_and(|a| a > 80 << 20 && a < 96 << 20),
        "{available:?}"
    );
    // The pod's cgroup holds its container's `sleep` (a pod with a PID namespace per
    // container has no pod-init): the kubelet's summary reports the count.
    let processes = linux.process.and_then(|p| p.process_count).map(|v| v.value);
    assert!(processes == Some(1), "{processes:?}");
    let listed = client
        .list_container_stats(v1::ListContainerStatsRequest { filter: None })
        .await
        .expect("ListContainerStats")
        .into_inner()
        .stats;
    assert_eq!(listed.len(), 1);
    client
        .list_metric_descriptors(v1::ListMetricDescriptorsRequest {})
        .await
        .expect("ListMetricDescriptors");
    client
        .list_pod_sandbox_metrics(v1::ListPodSandboxMetricsRequest {})
        .await
        .expect("ListPodSandboxMetrics");

    // The pod's CPU counter never goes back: what a container used stays counted once it is
    // gone (the kubelet's pod CPU rate comes from it).
    let busy = exec(
        &mut client,
        &id,
        &[
            "sh",
            "-c",
            "i=0; while [ $i -lt 30000 ]; do i=$((i+1)); done",
        ],
    )
    .await;
    assert_eq!(busy.exit_code, 0);
    let before = pod_cpu_ns(&mut client, &pod_id).await;
    assert!(
        before >= 10_000_000,
        "the loop's CPU is the pod's: {before} ns"
    );
    stop_and_remove_container(&mut client, &id, 1).await;
    let after = pod_cpu_ns(&mut client, &pod_id).await;
    assert!(after >= before, "{after} < {before}");
    let mut kinds = Vec::new();
    while kinds.len() < 4 {
        let event = tokio::time::timeout(Duration::from_secs(10), events.message())
            .await
            .expect("an event in time")
            .expect("stream")
            .expect("open stream");
        assert_eq!(event.container_id, id);
        assert_eq!(
            event.pod_sandbox_status.as_ref().map(|p| p.id.as_str()),
            Some(pod_id.as_str())
        );
        kinds.push(event.container_event_type);
    }
    use v1::ContainerEventType as E;
    assert_eq!(
        kinds,
        [
            E::ContainerCreatedEvent,
            E::ContainerStartedEvent,
            E::ContainerStoppedEvent,
            E::ContainerDeletedEvent
        ]
        .map(|k| k as i32)
    );

    // Orphans: what a crash between steps could leave, with no record owning it.
    let run = env.daemon.dir.path().join("run");
    let orphan_pod = run.join("pods").join("0".repeat(64));
    let orphan_bundle = run.join("containers").join("1".repeat(64));
    std::fs::create_dir_all(orphan_pod.join("ns")).expect("orphan pod");
    std::fs::create_dir_all(orphan_bundle.join("rootfs")).expect("orphan bundle");
    env.daemon = Daemon::restart(env.daemon);
    let mut client = runtime_client(&env.daemon.socket()).await;
    assert!(
        !orphan_pod.exists() && !orphan_bundle.exists(),
        "orphans removed on start"
    );
    assert_eq!(
        client
            .list_pod_sandbox(v1::ListPodSandboxRequest { filter: None })
            .await
            .expect("list")
            .into_inner()
            .items
            .len(),
        1
    );
    remove_pod(&mut client, &pod_id).await;
    assert_nothing_left(&env.daemon, &pod_id);
}

async fn pod_cpu_ns(client: &mut RuntimeServiceClient<Channel>, pod_id: &str) -> u64 {
    client
        .pod_sandbox_stats(v1::PodSandboxStatsRequest {
            pod_sandbox_id: pod_id.into(),
        })
        .await
        .expect("PodSandboxStats")
        .into_inner()
        .stats
        .and_then(|s| s.linux)
        .and_then(|l| l.cpu)
        .and_then(|c| c.usage_core_nano_seconds)
        .map_or(0, |v| v.value)
}

/// `kill -9` of the daemon, the records of `tables` emptied (as if it had died before they
/// were committed), and a new daemon over the same root and state.
fn restart_without_records(mut daemon: Daemon, tables: &[&str]) -> Daemon {
    daemon.kill();
    let db = redb::Database::create(daemon.dir.path().join("run/state.redb")).expect("open store");
    let txn = db.begin_write().expect("txn");
    for table in tables {
        let definition: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new(table);
        let mut table = txn.open_table(definition).expect("table");
        table.retain(|_, _| false).expect("clear");
    }
    txn.commit().expect("commit");
    drop(db);
    Daemon::restart(daemon)
}

/// ingotd killed after a shim made a pod and container but before their records were committed
/// (simulated by removing the records): on start, the container is killed and deleted through
/// its shim, the shim shut down, and the pod's directory, mounts and cgroups removed.
#[tokio::test(flavor = "current_thread")]
async fn restart_removes_what_no_record_owns() {
    let (mut env, mut client, image) = env(false).await;
    let (pod_id, _, id) = sleeping_host_pod(&mut client, &env.daemon, "lost", &image).await;
    let info = container_info(&mut client, &id).await;
    let pid = info["pid"].as_i64().expect("pid");
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());

    env.daemon = restart_without_records(env.daemon, &["pods", "containers"]);
    let mut client = runtime_client(&env.daemon.socket()).await;
    assert!(client
        .list_pod_sandbox(v1::ListPodSandboxRequest { filter: None })
        .await
        .expect("list")
        .into_inner()
        .items
        .is_empty());
    assert!(
        ingot_tests::wait_until(Duration::from_secs(10), || {
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
                && leftovers(&env.daemon, &pod_id).is_empty()
        }),
        "container pid {pid} or {:?} left behind",
        leftovers(&env.daemon, &pod_id)
    );
    let pod_cgroups: Vec<_> =
        ingot_tests::cgroups_named(env.daemon.cgroup_parent.trim_start_matches('/'))
            .into_iter()
            .filter(|dir| dir.join(&pod_id).exists())
            .collect();
    assert!(pod_cgroups.is_empty(), "{pod_cgroups:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_failed_create_is_in_the_shim_log_and_ingotd_names_it() {
    let (env, mut client, image) = env(false).await;
    let daemon = &env.daemon;
    let pod = host_network_pod("logged", &daemon.log_dir("logged"), v1::NamespaceMode::Pod);
    let pod_id = run_pod(&mut client, pod.clone()).await;
    let mut config = container_config("missing", &image, "");
    config.command = vec!["/no/such/binary".into()];
    let err = refused_create(&mut client, &pod_id, &pod, config).await;
    assert!(err.message().contains("/no/such/binary"), "{err:?}");

    // The shim's own account of it, in its log under the pod's state directory.
    let shim_log = daemon
        .dir
        .path()
        .join("run/pods")
        .join(&pod_id)
        .join("shim.log");
    let text = std::fs::read_to_string(&shim_log).expect("shim log");
    assert!(text.contains("shim serving"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("WARN") && l.contains("/no/such/binary")),
        "{text}"
    );
    // ingotd's log names that file, inside the RPC's span with the pod id.
    let log = daemon.log();
    let line = log
        .lines()
        .find(|l| l.contains("shim_log="))
        .unwrap_or_else(|| panic!("no shim_log in ingotd's log:\n{log}"));
    assert!(line.contains(&shim_log.display().to_string()), "{line}");
    assert!(
        line.contains("CreateContainer{") && line.contains(&pod_id),
        "{line}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("call failed") && l.contains("/no/such/binary")),
        "{log}"
    );

    // A working container afterwards: the shim survived its failed create.
    let id = start_container(
        &mut client,
        &pod_id,
        &pod,
        container_config("ok", &image, "sleep 100"),
    )
    .await;
    let reply = exec(&mut client, &id, &["echo", "fine"]).await;
    assert_eq!(String::from_utf8_lossy(&reply.stdout), "fine\n");
    remove_pod(&mut client, &pod_id).await;
    assert_nothing_left(daemon, &pod_id);
}

/// Pids of the processes holding a descriptor of `path`.
fn holders(path: &Path) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        if fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target == path))
        {
            pids.push(pid);
        }
    }
    pids
}

#[tokio::test(flavor = "current_thread")]
async fn descriptors_ingotd_inherits_reach_none_of_its_processes() {
    let marker_dir = tempfile::tempdir().expect("tempdir");
    let marker = marker_dir.path().join("inherited");
    let file = std::fs::File::create(&marker).expect("marker");
    let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
    let (env, mut client, image) = env_with(
        false,
        ingot_tests::cri::Options {
            inherited_fd: Some(fd),
            ..Default::default()
        },
    )
    .await;
    let daemon = &env.daemon;
    let pod = host_network_pod("fds", &daemon.log_dir("fds"), v1::NamespaceMode::Pod);
    let pod_id = run_pod(&mut client, pod.clone()).await;
    let id = start_container(
        &mut client,
        &pod_id,
        &pod,
        container_config("app", &image, "sleep 100"),
    )
    .await;
    let init = pod_info(&mut client, &pod_id).await["podInitPid"]
        .as_u64()
        .expect("pod init pid");
    assert!(!id.is_empty());
    // The daemon holds it (it cannot know whose it is); the pod-init, the zygote, the shim
    // and the container do not.
    let daemon_pid = daemon.pid().as_raw();
    let mut held = holders(&marker);
    held.retain(|pid| i64::from(*pid) != i64::from(std::process::id()));
    assert_eq!(held, vec![daemon_pid], "pod-init is {init}");
    remove_pod(&mut client, &pod_id).await;
    assert_nothing_left(daemon, &pod_id);
}

#[tokio::test(flavor = "current_thread")]
async fn a_container_joins_a_shared_pid_namespace_whatever_pid_it_gets_there() {
    let (env, mut client, image) = env(false).await;
    let daemon = &env.daemon;
    let pod = host_network_pod("pidns", &daemon.log_dir("pidns"), v1::NamespaceMode::Pod);
    let pod_id = run_pod(&mut client, pod.clone()).await;
    let init = pod_info(&mut client, &pod_id).await["podInitPid"]
        .as_u64()
        .expect("pod init pid");
    // The container's init gets the next pids of the pod's PID namespace: make them numbers no
    // host process has (the host's /proc is still mounted while its rootfs is prepared), far
    // from where the host allocates now.
    let pid_max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .expect("pid_max")
        .trim()
        .parse()
        .expect("pid_max number");
    let host_last: u32 = std::fs::read_to_string("/proc/sys/kernel/ns_last_pid")
        .expect("ns_last_pid")
        .trim()
        .parse()
        .expect("ns_last_pid number");
    let free =
        |start: u32| (start..start + 50).all(|pid| !Path::new(&format!("/proc/{pid}")).exists());
    let start = (1..pid_max / 100)
        .map(|step| (host_last + pid_max / 2 + step * 50) % (pid_max - 100) + 50)
        .find(|start| free(*start))
        .expect("a window of free pids");
    let set = std::process::Command::new("nsenter")
        .arg(format!("--pid=/proc/{init}/ns/pid"))
        .args(["sh", "-c"])
        .arg(format!("echo {} > /proc/sys/kernel/ns_last_pid", start - 1))
        .status()
        .expect("nsenter");
    assert!(set.success(), "set the pod's ns_last_pid");

    let id = start_container(
        &mut client,
        &pod_id,
        &pod,
        container_config("app", &image, "sleep 100"),
    )
    .await;
    // It is in the pod's PID namespace, with a pid from the window.
    let reply = exec(&mut client, &id, &["cat", "/proc/1/cmdline"]).await;
    assert!(
        String::from_utf8_lossy(&reply.stdout).contains("--pod-init"),
        "{reply:?}"
    );
    let reply = exec(&mut client, &id, &["sh", "-c", "pidof sleep"]).await;
    let pid: u32 = String::from_utf8_lossy(&reply.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("pidof: {reply:?}"));
    assert!(
        (start..start + 50).contains(&pid),
        "sleep is pid {pid}, window {start}"
    );
    remove_pod(&mut client, &pod_id).await;
    assert_nothing_left(daemon, &pod_id);
}

/// The mount points a container gets that the image lacks (`/etc/hostname`, `/etc/hosts`,
/// `/etc/resolv.conf`: the test image has `/etc` but none of them) come from the image's init
/// layer: the container sees the pod's files there, and its writable layer on the disk holds
/// nothing of them (no copy-up of `/etc`), for every container of the image.
#[tokio::test(flavor = "current_thread")]
async fn mount_points_come_from_the_init_layer_not_the_writable_layer() {
    let (env, mut client, image) = env(false).await;
    let daemon = &env.daemon;
    let pod = host_network_pod(
        "init",
        &daemon.log_dir("init"),
        v1::NamespaceMode::Container,
    );
    // A host-network pod has the node's name, as with containerd.
    let node = nix::unistd::gethostname().expect("hostname");
    let pod_id = run_pod(&mut client, pod.clone()).await;
    let mut containers = Vec::new();
    for name in ["one", "two"] {
        let id = start_container(
            &mut client,
            &pod_id,
            &pod,
            container_config(name, &image, "sleep 1000"),
        )
        .await;
        let hostname = exec(&mut client, &id, &["sh", "-c", "cat /etc/hostname; env"]).await;
        let node = node.to_string_lossy();
        let out = String::from_utf8_lossy(&hostname.stdout);
        assert!(out.starts_with(&format!("{node}\n")), "{out}");
        assert!(
            out.lines().any(|l| l == format!("HOSTNAME={node}")),
            "{out}"
        );
        // The image's own /etc is still there, under the init layer.
        let passwd = exec(&mut client, &id, &["cat", "/etc/passwd"]).await;
        assert!(
            String::from_utf8_lossy(&passwd.stdout).starts_with("root:"),
            "{passwd:?}"
        );
        let upper = daemon
            .dir
            .path()
            .join("lib/containers")
            .join(&id)
            .join("upper");
        assert!(
            upper.is_dir(),
            "{} is not the writable layer",
            upper.display()
        );
        assert!(
            !upper.join("etc").exists(),
            "the writable layer of {name} has /etc: {:?}",
            std::fs::read_dir(upper.join("etc"))
                .map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
        );
        containers.push(id);
    }
    let init_layers: Vec<_> = std::fs::read_dir(daemon.dir.path().join("lib/images/layers"))
        .expect("layers")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("init-"))
        .collect();
    assert_eq!(init_layers.len(), 1, "one init layer for the image");
    remove_pod(&mut client, &pod_id).await;
    assert_pod_gone(daemon, &pod_id, &containers);
}

/// Pod shims are forked by ingotd's shim zygote, each with its own command line; when the
/// zygote is killed, the next pod's shim still starts (a new zygote forks it).
#[tokio::test(flavor = "current_thread")]
async fn shims_come_from_the_zygote_and_survive_its_death() {
    let (env, mut client, image) = env(false).await;
    let daemon = &env.daemon;
    let socket = daemon.socket().display().to_string();
    let zygotes =
        || ingot_tests::pids_with_cmdline(&["containerd-shim-ingot-v2", "-zygote", &socket]);
    let mut pods = Vec::new();
    for round in 0..2 {
        let name = format!("zygote-{round}");
        let (pod_id, _, id) = sleeping_host_pod(&mut client, daemon, &name, &image).await;
        let reply = exec(&mut client, &id, &["echo", "up"]).await;
        assert_eq!(String::from_utf8_lossy(&reply.stdout).trim(), "up");
        let running = zygotes();
        assert_eq!(running.len(), 1, "one zygote for {socket}: {running:?}");
        let shims = ingot_tests::outermost(ingot_tests::pids_with_cmdline(&[
            "containerd-shim-ingot-v2",
            "-id",
            &pod_id,
        ]));
        assert_eq!(shims.len(), 1, "{shims:?}");
        assert_eq!(
            ingot_tests::parent_pid(shims[0]),
            Some(running[0]),
            "the shim of {pod_id} is the zygote's child"
        );
        if round == 0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(running[0]),
                nix::sys::signal::Signal::SIGKILL,
            );
            assert!(ingot_tests::wait_until(Duration::from_secs(5), || zygotes(
            )
            .is_empty()));
        }
        pods.push((pod_id, id));
    }
    for (pod_id, id) in pods {
        remove_pod(&mut client, &pod_id).await;
        assert_pod_gone(daemon, &pod_id, &[id]);
    }
}

/// The nat table of the daemon's network namespace, as `iptables -S` lists it.
fn nat_rules(netns: &ingot_tests::TestNetns) -> String {
    let out = netns
        .command("iptables")
        .args(["-t", "nat", "-S"])
        .output()
        .expect("iptables");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A daemon whose network masquerades and maps host ports, and a pod of it mapping `host_port`
/// to its 8080.
async fn host_port_pod(
    host_port: i32,
) -> (
    Env,
    RuntimeServiceClient<Channel>,
    String,
    String,
    v1::PodSandboxConfig,
) {
    let options = ingot_tests::cri::Options {
        host_ports: true,
        ..Default::default()
    };
    let (env, mut client, image) = env_with(true, options).await;
    let mut pod = pod_config("ports", &env.daemon.log_dir("ports"));
    pod.port_mappings = vec![v1::PortMapping {
        protocol: v1::Protocol::Tcp as i32,
        container_port: 8080,
        host_port,
        host_ip: String::new(),
    }];
    let pod_id = run_pod(&mut client, pod.clone()).await;
    (env, client, image, pod_id, pod)
}

/// Neither the bridge's masquerade rule for `pod_id` nor portmap's for `host_port` is left.
fn assert_no_rules_for(netns: &ingot_tests::TestNetns, pod_id: &str, host_port: u16) {
    let rules = nat_rules(netns);
    assert!(!rules.contains(pod_id), "rules left for {pod_id}:\n{rules}");
    let port = format!("--dport {host_port}");
    assert!(!rules.contains(&port), "host port rule left:\n{rules}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_host_port_reaches_the_pod_through_plugins_that_run_iptables() {
    // The bridge masquerades and the portmap plugin maps the host port: both find iptables on
    // PATH, which a plugin run with an empty environment has not.
    let (env, mut client, image, pod_id, pod) = host_port_pod(18080).await;
    let daemon = &env.daemon;
    let netns = env.netns().expect("a private network");
    let rules = nat_rules(netns);
    assert!(
        rules.contains(&pod_id),
        "no masquerade rule for {pod_id}:\n{rules}"
    );
    assert!(
        rules.contains("--dport 18080"),
        "no host port rule:\n{rules}"
    );
    let id = start_container(&mut client, &pod_id, &pod, web_container(&image)).await;
    // The bridge's address is the node's: the host port is DNAT'ed to the pod's 8080.
    let reply = netns
        .run(|| {
            use std::io::{Read, Write};
            let mut reply = String::new();
            let served = ingot_tests::wait_until(Duration::from_secs(10), || {
                let Ok(mut stream) = std::net::TcpStream::connect("10.99.0.1:18080") else {
                    return false;
                };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                reply.clear();
                stream
                    .write_all(b"GET /index.html HTTP/1.0\r\n\r\n")
                    .is_ok()
                    && stream.read_to_string(&mut reply).is_ok()
                    && !reply.is_empty()
            });
            served.then_some(reply)
        })
        .expect("netns")
        .expect("no reply on the host port");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.ends_with("\r\n\r\nserved\n"), "{reply}");
    remove_pod(&mut client, &pod_id).await;
    assert_pod_gone(daemon, &pod_id, &[id]);
    assert_no_rules_for(netns, &pod_id, 18080);
}

#[tokio::test(flavor = "current_thread")]
async fn an_orphaned_pods_host_port_rules_go_at_restart() {
    // A pod no record owns (ingotd died inside RunPodSandbox after CNI ADD): recovery's DEL
    // gets the port mappings ADD got, or portmap leaves its rules.
    let (mut env, _client, _image, pod_id, _pod) = host_port_pod(18081).await;
    let netns_path = env.netns().expect("a private network").path();
    assert!(nat_rules(env.netns().expect("netns")).contains("--dport 18081"));
    env.daemon = restart_without_records(env.daemon, &["pods"]);
    let _client = runtime_client(&env.daemon.socket()).await;
    let netns = env.netns().expect("netns");
    assert_eq!(netns.path(), netns_path);
    assert!(
        ingot_tests::wait_until(Duration::from_secs(10), || leftovers(&env.daemon, &pod_id)
            .is_empty()),
        "{:?} left behind",
        leftovers(&env.daemon, &pod_id)
    );
    assert_no_rules_for(netns, &pod_id, 18081);
}

/// The unpacked layer directories of the daemon's image store.
fn image_layer_dirs(daemon: &Daemon) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(daemon.dir.path().join("lib/images/layers"))
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "current_thread")]
async fn removing_an_image_keeps_the_layers_its_containers_stack() {
    // containerd keeps a removed image's snapshots while containers use them: its running
    // containers keep their files, across a restart too, and the layers go with the last one.
    let (mut env, mut client, image) = env(false).await;
    let (pod_id, _, id) = sleeping_host_pod(&mut client, &env.daemon, "rmi", &image).await;
    let layers = image_layer_dirs(&env.daemon);
    assert!(!layers.is_empty());
    let mut images = ingot_tests::cri::image_client(&env.daemon.socket()).await;
    images
        .remove_image(v1::RemoveImageRequest {
            image: Some(v1::ImageSpec {
                image: image.clone(),
                ..Default::default()
            }),
        })
        .await
        .expect("RemoveImage");
    let listed = images
        .list_images(v1::ListImagesRequest { filter: None })
        .await
        .expect("ListImages")
        .into_inner()
        .images;
    assert!(listed.is_empty(), "{listed:?}");
    assert_eq!(
        image_layer_dirs(&env.daemon),
        layers,
        "kept for the container"
    );
    let reply = exec(&mut client, &id, &["ls", "/bin/busybox"]).await;
    assert_eq!(
        String::from_utf8_lossy(&reply.stdout).trim(),
        "/bin/busybox"
    );

    env.daemon = Daemon::restart(env.daemon);
    let mut client = runtime_client(&env.daemon.socket()).await;
    assert_eq!(image_layer_dirs(&env.daemon), layers, "kept at start");
    let reply = exec(&mut client, &id, &["sh", "-c", "echo after restart"]).await;
    assert_eq!(
        String::from_utf8_lossy(&reply.stdout).trim(),
        "after restart"
    );
    remove_pod(&mut client, &pod_id).await;
    assert_pod_gone(&env.daemon, &pod_id, &[id]);
    let left = image_layer_dirs(&env.daemon);
    assert!(
        left.is_empty(),
        "layers left after their last container: {left:?}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_working_dir_the_image_lacks_is_made() {
    // As runc makes it (Docker's `-w /new/dir` relies on it): 0755 and root's, after the
    // container's root is in place, so nothing in the image can lead it outside.
    let (env, mut client, image) = env(false).await;
    let daemon = &env.daemon;
    let pod = host_network_pod("cwd", &daemon.log_dir("cwd"), v1::NamespaceMode::Container);
    let pod_id = run_pod(&mut client, pod.clone()).await;
    let mut config = container_config("app", &image, "pwd; sleep 1000");
    config.working_dir = "/made/by/the/runtime".into();
    let id = start_container(&mut client, &pod_id, &pod, config).await;
    let reply = exec(&mut client, &id, &["stat", "-c", "%a %u %n", "."]).await;
    assert_eq!(
        String::from_utf8_lossy(&reply.stdout).trim(),
        "755 0 .",
        "{reply:?}"
    );
    let log = wait_for_log(&daemon.log_dir("cwd").join("app/0.log"), "/made").await;
    assert!(log.contains("stdout F /made/by/the/runtime"), "{log}");
    remove_pod(&mut client, &pod_id).await;
    assert_pod_gone(daemon, &pod_id, &[id]);
}
