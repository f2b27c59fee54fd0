//! CPU placement end to end on this machine: with CPU 0 reserved, a Guaranteed 1-CPU container
//! gets the last CPU to itself (its cgroup's cpuset and its process's affinity say so), a running
//! shared container moves off it, an exec in it lands on it, no ingot thread runs on it, the
//! allocation survives `kill -9` of ingotd, and removing the pod gives it back. Bad input (a
//! cpuset outside the online CPUs, more exclusive CPUs than free, a hugepage size the node lacks)
//! is refused with the field named and nothing allocated.

use std::path::Path;

use ingot_tests::{
    cri::{Daemon, Options},
    pods::*,
};
use ingot_topology::CpuSet;
use k8s_cri::v1;

const EXCLUSIVE: &str = "[placement]\npolicy = \"exclusive\"\nreserved = \"0\"\n";

fn online() -> CpuSet {
    CpuSet::parse(&std::fs::read_to_string("/sys/devices/system/cpu/online").expect("online"))
        .expect("online list")
}

/// A Guaranteed container: requests = limits, `cpus` whole CPUs, 64 MiB.
fn guaranteed(name: &str, image: &str, cpus: i64) -> v1::ContainerConfig {
    let mut config = container_config(name, image, "sleep 600");
    config.linux = Some(v1::LinuxContainerConfig {
        resources: Some(v1::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: cpus * 100_000,
            cpu_shares: cpus * 1024,
            memory_limit_in_bytes: 64 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    config
}

fn burstable(name: &str, image: &str) -> v1::ContainerConfig {
    let mut config = container_config(name, image, "sleep 600");
    config.linux = Some(v1::LinuxContainerConfig {
        resources: Some(v1::LinuxContainerResources {
            cpu_shares: 256,
            ..Default::default()
        }),
        ..Default::default()
    });
    config
}

fn cpus_allowed(pid: u32) -> CpuSet {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let list = status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list");
    CpuSet::parse(list).expect("list")
}

/// `cpuset.cpus` of the v1 cpuset cgroup process `pid` is in.
fn cgroup_cpus(pid: u32) -> CpuSet {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    let path = cgroups
        .lines()
        .find_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            controllers
                .split(',')
                .any(|c| c == "cpuset")
                .then(|| path.to_string())
        })
        .expect("a cpuset hierarchy");
    let file = Path::new("/sys/fs/cgroup/cpuset")
        .join(path.trim_start_matches('/'))
        .join("cpuset.cpus");
    CpuSet::parse(&std::fs::read_to_string(&file).expect("cpuset.cpus")).expect("cpus")
}

async fn pid_of(
    client: &mut v1::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>,
    id: &str,
) -> u32 {
    let info = container_info(client, id).await;
    u32::try_from(info["pid"].as_u64().expect("pid")).expect("pid fits")
}

/// Every process of this daemon: ingotd, its shims (started with its socket) and pod-inits
/// (started with a pod directory under its state), by pid.
fn ingot_processes(daemon: &Daemon) -> Vec<u32> {
    let marker = daemon.dir.path().display().to_string();
    let mut pids = vec![u32::try_from(daemon.pid().as_raw()).expect("pid")];
    for entry in std::fs::read_dir("/proc").expect("proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmdline).contains(&marker) && !pids.contains(&pid) {
            pids.push(pid);
        }
    }
    pids
}

/// Every thread of every ingot process whose allowed CPUs reach into `exclusive`.
fn ingot_threads_on(daemon: &Daemon, exclusive: &CpuSet) -> Vec<String> {
    let mut found = Vec::new();
    for pid in ingot_processes(daemon) {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
                continue;
            };
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .unwrap_or("")
                    .trim()
                    .to_string()
            };
            let allowed = CpuSet::parse(&field("Cpus_allowed_list:")).expect("allowed");
            if !allowed.is_disjoint(exclusive) {
                found.push(format!(
                    "pid {pid} thread {} ({}) may run on {allowed}",
                    task.file_name().to_string_lossy(),
                    field("Name:")
                ));
            }
        }
    }
    found
}

#[tokio::test(flavor = "current_thread")]
async fn a_guaranteed_container_gets_cpu_1_to_itself() {
    let online = online();
    assert!(
        online.len() >= 2 && online.contains(0) && online.contains(1),
        "this test needs CPUs 0 and 1 online, found {online}"
    );
    let last = online.iter().last().expect("a CPU");
    let exclusive = CpuSet::from_iter([last]);
    let (mut env, mut client, image) = env_with(
        false,
        Options {
            extra_config: EXCLUSIVE.to_string(),
            ..Default::default()
        },
    )
    .await;

    // A shared container first: it may run anywhere.
    let log_dir = env.daemon.log_dir("shared");
    let shared_pod = host_network_pod("shared", &log_dir, v1::NamespaceMode::Pod);
    let shared_pod_id = run_pod(&mut client, shared_pod.clone()).await;
    let shared = start_container(
        &mut client,
        &shared_pod_id,
        &shared_pod,
        burstable("shared", &image),
    )
    .await;
    let shared_pid = pid_of(&mut client, &shared).await;
    assert_eq!(cpus_allowed(shared_pid), online);

    // The Guaranteed one gets the last CPU.
    let log_dir = env.daemon.log_dir("rt");
    let rt_pod = host_network_pod("rt", &log_dir, v1::NamespaceMode::Pod);
    let rt_pod_id = run_pod(&mut client, rt_pod.clone()).await;
    let rt = start_container(
        &mut client,
        &rt_pod_id,
        &rt_pod,
        guaranteed("rt", &image, 1),
    )
    .await;
    let rt_pid = pid_of(&mut client, &rt).await;
    assert_eq!(
        cgroup_cpus(rt_pid),
        exclusive,
        "the container's cgroup cpuset"
    );
    assert_eq!(cpus_allowed(rt_pid), exclusive, "the container's process");
    let shared_pool = online.difference(&exclusive);
    assert_eq!(
        cgroup_cpus(shared_pid),
        shared_pool,
        "the shared container moved off"
    );
    assert_eq!(cpus_allowed(shared_pid), shared_pool);
    let status = exec(
        &mut client,
        &rt,
        &["grep", "Cpus_allowed_list", "/proc/self/status"],
    )
    .await;
    assert_eq!(status.exit_code, 0, "{status:?}");
    let stdout = String::from_utf8_lossy(&status.stdout);
    assert_eq!(
        stdout.split(':').nth(1).map(str::trim),
        Some(exclusive.to_string().as_str()),
        "the exec runs on the container's CPU: {stdout}"
    );
    let stray = ingot_threads_on(&env.daemon, &exclusive);
    assert!(
        stray.is_empty(),
        "ingot threads on the exclusive CPU:\n{}",
        stray.join("\n")
    );

    // No CPU is left to give: refused, nothing created, nothing allocated.
    let log_dir = env.daemon.log_dir("late");
    let late_pod = host_network_pod("late", &log_dir, v1::NamespaceMode::Pod);
    let late_pod_id = run_pod(&mut client, late_pod.clone()).await;
    let err = client
        .create_container(v1::CreateContainerRequest {
            pod_sandbox_id: late_pod_id.clone(),
            config: Some(guaranteed("late", &image, 1)),
            sandbox_config: Some(late_pod.clone()),
        })
        .await
        .expect_err("no free CPU");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("1 exclusive CPU requested, 0 free"),
        "{}",
        err.message()
    );

    // A cpuset outside the online CPUs, and a hugepage size this node lacks.
    let mut offline = burstable("offline", &image);
    if let Some(r) = offline.linux.as_mut().and_then(|l| l.resources.as_mut()) {
        r.cpuset_cpus = format!("{}", last + 64);
    }
    let sizes: Vec<String> = std::fs::read_dir("/sys/kernel/mm/hugepages")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let missing_size = ["1GB", "16GB", "64KB"]
        .into_iter()
        .find(|size| {
            let kb = match *size {
                "1GB" => "1048576kB",
                "16GB" => "16777216kB",
                _ => "64kB",
            };
            !sizes.iter().any(|s| s.ends_with(&format!("-{kb}")))
        })
        .expect("a size this node lacks");
    let mut huge = burstable("huge", &image);
    if let Some(r) = huge.linux.as_mut().and_then(|l| l.resources.as_mut()) {
        r.memory_limit_in_bytes = 1 << 30;
        r.hugepage_limits = vec![v1::HugepageLimit {
            page_size: missing_size.into(),
            limit: 1 << 30,
        }];
    }
    for (config, field, detail) in [
        (
            offline,
            "cpuset_cpus",
            format!("CPU {} is not online", last + 64),
        ),
        (
            huge,
            "hugepage_limits.page_size",
            format!("this node has no {missing_size} hugepages"),
        ),
    ] {
        let err = client
            .create_container(v1::CreateContainerRequest {
                pod_sandbox_id: late_pod_id.clone(),
                config: Some(config),
                sandbox_config: Some(late_pod.clone()),
            })
            .await
            .expect_err(field);
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(
            err.message().contains(field) && err.message().contains(&detail),
            "{}",
            err.message()
        );
    }
    let listed = client
        .list_containers(v1::ListContainersRequest {
            filter: Some(v1::ContainerFilter {
                pod_sandbox_id: late_pod_id.clone(),
                ..Default::default()
            }),
        })
        .await
        .expect("list")
        .into_inner()
        .containers;
    assert!(
        listed.is_empty(),
        "refused containers left records: {listed:?}"
    );
    let mirror = env.daemon.dir.path().join("run/placement.json");
    let checkpoint = std::fs::read_to_string(&mirror).expect("placement mirror");
    assert!(checkpoint.contains(&rt), "{checkpoint}");
    assert_eq!(
        checkpoint.matches("\"exclusive\"").count(),
        1,
        "{checkpoint}"
    );

    // kill -9 and a new ingotd: the CPU is still the container's.
    env.daemon = Daemon::restart(env.daemon);
    let mut client = ingot_tests::cri::runtime_client(&env.daemon.socket()).await;
    let err = client
        .create_container(v1::CreateContainerRequest {
            pod_sandbox_id: late_pod_id.clone(),
            config: Some(guaranteed("late", &image, 1)),
            sandbox_config: Some(late_pod.clone()),
        })
        .await
        .expect_err("still no free CPU after a restart");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert_eq!(cpus_allowed(rt_pid), exclusive);
    let stray = ingot_threads_on(&env.daemon, &exclusive);
    assert!(stray.is_empty(), "after the restart:\n{}", stray.join("\n"));

    // Removing the pod gives the CPU back: the shared container spreads again, and the next
    // Guaranteed container gets it.
    remove_pod(&mut client, &rt_pod_id).await;
    assert_eq!(cgroup_cpus(shared_pid), online, "the shared pool grew back");
    assert_eq!(cpus_allowed(shared_pid), online);
    let late = start_container(
        &mut client,
        &late_pod_id,
        &late_pod,
        guaranteed("late", &image, 1),
    )
    .await;
    let late_pid = pid_of(&mut client, &late).await;
    assert_eq!(cpus_allowed(late_pid), exclusive);
    assert_eq!(cpus_allowed(shared_pid), shared_pool);

    remove_pod(&mut client, &late_pod_id).await;
    remove_pod(&mut client, &shared_pod_id).await;
    for pod in [&rt_pod_id, &late_pod_id, &shared_pod_id] {
        assert_nothing_left(&env.daemon, pod);
    }
    let checkpoint = std::fs::read_to_string(&mirror).expect("placement mirror");
    assert!(
        !checkpoint.contains("\"exclusive\""),
        "released: {checkpoint}"
    );
}
