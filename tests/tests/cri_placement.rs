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

/// A running pod on the host network with its own PID namespace: its id and config.
async fn host_pod(
    client: &mut v1::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>,
    daemon: &Daemon,
    name: &str,
) -> (String, v1::PodSandboxConfig) {
    let pod = host_network_pod(name, &daemon.log_dir(name), v1::NamespaceMode::Pod);
    (run_pod(client, pod.clone()).await, pod)
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
    let file = ingot_tests::cgroup_file(pid, "cpuset", "cpuset.cpus");
    CpuSet::parse(&std::fs::read_to_string(&file).expect("cpuset.cpus")).expect("cpus")
}

fn cmdline(pid: u32) -> String {
    String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default())
        .into_owned()
}

fn parent_of(pid: u32) -> Option<u32> {
    let parent = ingot_tests::parent_pid(i32::try_from(pid).ok()?)?;
    u32::try_from(parent).ok()
}

/// Whether a shim is among the process's ancestors: then it is a container's process being set
/// up (libcontainer's intermediate and init processes, an exec), in the container's cgroup.
fn descends_from_a_shim(pid: u32) -> bool {
    let mut next = parent_of(pid);
    while let Some(parent) = next.filter(|p| *p > 1) {
        let line = cmdline(parent);
        // The shim zygote forks the shims; a shim's children are what counts.
        if line.contains("containerd-shim-ingot-v2") && !line.contains("-zygote") {
            return true;
        }
        next = parent_of(parent);
    }
    false
}

/// Every process of a daemon: ingotd, its shims (started with its socket) and pod-inits (started
/// with a pod directory under its state), by pid. A shim's children are left out: they are its
/// containers' processes being set up, already in the containers' cgroups.
fn processes_of(daemon_dir: &Path, daemon_pid: u32) -> Vec<u32> {
    let marker = daemon_dir.display().to_string();
    let mut pids = vec![daemon_pid];
    for entry in std::fs::read_dir("/proc").expect("proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if !cmdline(pid).contains(&marker) || pids.contains(&pid) {
            continue;
        }
        if descends_from_a_shim(pid) {
            continue;
        }
        pids.push(pid);
    }
    pids
}

/// Samples every ingot thread's allowed CPUs until finished, noting each one that could run on
/// `forbidden`.
struct Audit {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(usize, Vec<String>)>,
}

impl Audit {
    fn start(daemon_dir: std::path::PathBuf, daemon_pid: u32, forbidden: CpuSet) -> Audit {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let (mut samples, mut found) = (0, Vec::new());
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                found.extend(threads_on(&daemon_dir, daemon_pid, &forbidden));
                samples += 1;
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            (samples, found)
        });
        Audit { stop, thread }
    }

    fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().expect("audit thread")
    }
}

/// Every thread of every ingot process whose allowed CPUs reach into `exclusive`.
fn ingot_threads_on(daemon: &Daemon, exclusive: &CpuSet) -> Vec<String> {
    threads_on(
        daemon.dir.path(),
        u32::try_from(daemon.pid().as_raw()).expect("pid"),
        exclusive,
    )
}

fn threads_on(daemon_dir: &Path, daemon_pid: u32, exclusive: &CpuSet) -> Vec<String> {
    let mut found = Vec::new();
    for pid in processes_of(daemon_dir, daemon_pid) {
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
            let Ok(allowed) = CpuSet::parse(&field("Cpus_allowed_list:")) else {
                continue;
            };
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
    // From here to the end, while pods come and go, no ingot thread may run off CPU 0.
    let audit = Audit::start(
        env.daemon.dir.path().to_path_buf(),
        u32::try_from(env.daemon.pid().as_raw()).expect("pid"),
        online.difference(&CpuSet::from_iter([0])),
    );

    // A shared container first: it may run anywhere.
    let (shared_pod_id, shared_pod) = host_pod(&mut client, &env.daemon, "shared").await;
    let shared = start_container(
        &mut client,
        &shared_pod_id,
        &shared_pod,
        burstable("shared", &image),
    )
    .await;
    let shared_pid = container_pid(&mut client, &shared).await;
    assert_eq!(cpus_allowed(shared_pid), online);

    // The Guaranteed one gets the last CPU.
    let (rt_pod_id, rt_pod) = host_pod(&mut client, &env.daemon, "rt").await;
    let rt = start_container(
        &mut client,
        &rt_pod_id,
        &rt_pod,
        guaranteed("rt", &image, 1),
    )
    .await;
    let rt_pid = container_pid(&mut client, &rt).await;
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
    // The audit sees ingotd, both pods' shims and pod-inits (it is not looking at nothing).
    let daemon_pid = u32::try_from(env.daemon.pid().as_raw()).expect("pid");
    let audited = processes_of(env.daemon.dir.path(), daemon_pid);
    assert!(
        audited.len() >= 5,
        "ingotd, 2 shims, 2 pod-inits: {audited:?}"
    );
    assert!(ingot_threads_on(&env.daemon, &online).len() >= audited.len());
    let stray = ingot_threads_on(&env.daemon, &exclusive);
    assert!(
        stray.is_empty(),
        "ingot threads on the exclusive CPU:\n{}",
        stray.join("\n")
    );

    // No CPU is left to give: refused, nothing created, nothing allocated.
    let (late_pod_id, late_pod) = host_pod(&mut client, &env.daemon, "late").await;
    let err = refused_create(
        &mut client,
        &late_pod_id,
        &late_pod,
        guaranteed("late", &image, 1),
    )
    .await;
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
        let err = refused_create(&mut client, &late_pod_id, &late_pod, config).await;
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

    // An update the kernel refuses (a memory limit below what the container uses) leaves it
    // where it was: still exclusive, the shared pool unchanged.
    let err = client
        .update_container_resources(v1::UpdateContainerResourcesRequest {
            container_id: rt.clone(),
            linux: Some(v1::LinuxContainerResources {
                cpuset_cpus: "0".into(),
                memory_limit_in_bytes: 4096,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect_err("a limit below the usage");
    assert!(err.message().contains("memory"), "{}", err.message());
    let checkpoint = std::fs::read_to_string(&mirror).expect("placement mirror");
    assert_eq!(
        checkpoint.matches("\"exclusive\"").count(),
        1,
        "{checkpoint}"
    );
    assert_eq!(cgroup_cpus(rt_pid), exclusive);
    assert_eq!(cgroup_cpus(shared_pid), shared_pool);

    // kill -9 and a new ingotd: the CPU is still the container's. (The new ingotd pins itself
    // first thing; the instant between its exec and that is its service manager's to cover, so
    // the audit starts again once it runs.)
    let (samples, stray) = audit.finish();
    assert!(samples > 10, "the audit ran {samples} times");
    assert!(
        stray.is_empty(),
        "ingot threads off the housekeeping CPU:\n{}",
        stray.join("\n")
    );
    env.daemon = Daemon::restart(env.daemon);
    let audit = Audit::start(
        env.daemon.dir.path().to_path_buf(),
        u32::try_from(env.daemon.pid().as_raw()).expect("pid"),
        online.difference(&CpuSet::from_iter([0])),
    );
    let mut client = ingot_tests::cri::runtime_client(&env.daemon.socket()).await;
    let err = refused_create(
        &mut client,
        &late_pod_id,
        &late_pod,
        guaranteed("late", &image, 1),
    )
    .await;
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert_eq!(cpus_allowed(rt_pid), exclusive);
    let stray = ingot_threads_on(&env.daemon, &exclusive);
    assert!(stray.is_empty(), "after the restart:\n{}", stray.join("\n"));

    // The kubelet's cpuset is applied exactly, to a running container too; such a container no
    // longer follows the shared pool.
    let pinned = start_container(
        &mut client,
        &shared_pod_id,
        &shared_pod,
        burstable("pinned", &image),
    )
    .await;
    let pinned_pid = container_pid(&mut client, &pinned).await;
    assert_eq!(cgroup_cpus(pinned_pid), shared_pool);
    let update = |cpus: String| v1::UpdateContainerResourcesRequest {
        container_id: pinned.clone(),
        linux: Some(v1::LinuxContainerResources {
            cpu_shares: 256,
            cpuset_cpus: cpus,
            ..Default::default()
        }),
        ..Default::default()
    };
    client
        .update_container_resources(update("0".into()))
        .await
        .expect("update to a kubelet cpuset");
    assert_eq!(cgroup_cpus(pinned_pid), CpuSet::from_iter([0]));
    let err = client
        .update_container_resources(update(format!("{}", last + 64)))
        .await
        .expect_err("an offline CPU");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("cpuset_cpus"), "{}", err.message());
    assert_eq!(cgroup_cpus(pinned_pid), CpuSet::from_iter([0]), "unchanged");
    // Even over ingot's exclusive CPU: the kubelet decides.
    client
        .update_container_resources(update(online.to_string()))
        .await
        .expect("the kubelet's word");
    assert_eq!(cgroup_cpus(pinned_pid), online);
    stop_and_remove_container(&mut client, &pinned, 0).await;

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
    let late_pid = container_pid(&mut client, &late).await;
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
    let (samples, stray) = audit.finish();
    assert!(samples > 10, "the audit ran {samples} times");
    assert!(
        stray.is_empty(),
        "ingot threads off the housekeeping CPU:\n{}",
        stray.join("\n")
    );
}

/// Without reserved CPUs the housekeeping CPUs are those not exclusive: ingot's threads move off
/// a CPU when it becomes exclusive, and may use it again when it is freed.
#[tokio::test(flavor = "current_thread")]
async fn without_reserved_cpus_ingot_moves_off_a_cpu_that_becomes_exclusive() {
    let online = online();
    assert!(
        online.len() >= 2,
        "this test needs two CPUs, found {online}"
    );
    let (env, mut client, image) = env_with(
        false,
        Options {
            extra_config: "[placement]\npolicy = \"exclusive\"\n".to_string(),
            ..Default::default()
        },
    )
    .await;
    let all_threads_on = |cpus: &CpuSet| {
        let daemon_pid = u32::try_from(env.daemon.pid().as_raw()).expect("pid");
        processes_of(env.daemon.dir.path(), daemon_pid)
            .into_iter()
            .all(|pid| cpus_allowed(pid) == *cpus)
    };
    assert!(all_threads_on(&online), "before: ingot may use every CPU");

    let (rt_pod_id, rt_pod) = host_pod(&mut client, &env.daemon, "rt").await;
    let rt = start_container(
        &mut client,
        &rt_pod_id,
        &rt_pod,
        guaranteed("rt", &image, 1),
    )
    .await;
    let rt_pid = container_pid(&mut client, &rt).await;
    let exclusive = cgroup_cpus(rt_pid);
    assert_eq!(exclusive.len(), 1, "{exclusive}");
    assert_eq!(cpus_allowed(rt_pid), exclusive);
    let stray = ingot_threads_on(&env.daemon, &exclusive);
    assert!(
        stray.is_empty(),
        "not moved off {exclusive}:\n{}",
        stray.join("\n")
    );

    // A pod made now starts off it too.
    let (later_pod_id, later_pod) = host_pod(&mut client, &env.daemon, "later").await;
    let later = start_container(
        &mut client,
        &later_pod_id,
        &later_pod,
        burstable("later", &image),
    )
    .await;
    let later_pid = container_pid(&mut client, &later).await;
    assert_eq!(cgroup_cpus(later_pid), online.difference(&exclusive));
    let stray = ingot_threads_on(&env.daemon, &exclusive);
    assert!(
        stray.is_empty(),
        "a new pod's shim or pod-init:\n{}",
        stray.join("\n")
    );

    remove_pod(&mut client, &rt_pod_id).await;
    assert!(
        all_threads_on(&online),
        "after: the CPU is housekeeping again"
    );
    assert_eq!(cgroup_cpus(later_pid), online);
    remove_pod(&mut client, &later_pod_id).await;
    for pod in [&rt_pod_id, &later_pod_id] {
        assert_nothing_left(&env.daemon, pod);
    }
}

/// The host's pool of 2 MB pages, grown for a test and put back as it was when dropped.
struct HugepagePool {
    file: std::path::PathBuf,
    original: String,
}

impl HugepagePool {
    fn grow(pages: u64) -> HugepagePool {
        let dir = Path::new("/sys/kernel/mm/hugepages/hugepages-2048kB");
        let file = dir.join("nr_hugepages");
        let original = std::fs::read_to_string(&file).expect("nr_hugepages");
        let count: u64 = original.trim().parse().expect("a number");
        std::fs::write(&file, (count + pages).to_string()).expect("grow the pool");
        let pool = HugepagePool { file, original };
        let free: u64 = std::fs::read_to_string(dir.join("free_hugepages"))
            .expect("free_hugepages")
            .trim()
            .parse()
            .expect("a number");
        assert!(
            free >= pages,
            "the kernel gave {free} of {pages} 2 MB pages"
        );
        pool
    }
}

impl Drop for HugepagePool {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.file, self.original.trim());
    }
}

/// The container's cgroup directory in the hierarchy mounted at `mount` (`cpuset`, or the
/// unified one: `0::`).
fn cgroup_dir(pid: u32, controller: &str, mount: &str) -> std::path::PathBuf {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    let path = cgroups
        .lines()
        .find_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            (controllers == controller).then(|| path.to_string())
        })
        .expect("the hierarchy");
    Path::new(mount).join(path.trim_start_matches('/'))
}

/// Whether a container can get hugepage limits here: a v1 hugetlb hierarchy, or hugetlb in the
/// unified one and delegated by its root (ingot never changes a cgroup it did not create).
fn hugetlb_available() -> bool {
    if Path::new("/sys/fs/cgroup/hugetlb/tasks").exists() {
        return true;
    }
    let unified = Path::new("/sys/fs/cgroup/unified");
    std::fs::read_to_string(unified.join("cgroup.subtree_control"))
        .is_ok_and(|c| c.split_whitespace().any(|c| c == "hugetlb"))
}

/// Hugepages through the CRI: where the hugetlb controller can be used, the limit lands in it
/// (`hugetlb.2MB.max` and `.rsvd.max` in the unified hierarchy, `limit_in_bytes` on v1) and the
/// memory nodes are those with the pages free; where it cannot (this machine's unified root does
/// not delegate hugetlb), CreateContainer says why and holds nothing. A kubelet's zero limit for
/// another size is accepted either way.
#[tokio::test(flavor = "current_thread")]
async fn hugepage_limits_land_in_hugetlb_or_are_refused_saying_why() {
    let _pool = HugepagePool::grow(8);
    let (env, mut client, image) = env_with(
        false,
        Options {
            extra_config: EXCLUSIVE.to_string(),
            ..Default::default()
        },
    )
    .await;
    let (pod_id, pod) = host_pod(&mut client, &env.daemon, "huge").await;
    let mut config = guaranteed("huge", &image, 1);
    if let Some(r) = config.linux.as_mut().and_then(|l| l.resources.as_mut()) {
        r.hugepage_limits = vec![
            v1::HugepageLimit {
                page_size: "2MB".into(),
                limit: 4 << 21,
            },
            v1::HugepageLimit {
                page_size: "1GB".into(),
                limit: 0,
            },
        ];
    }
    if !hugetlb_available() {
        let err = refused_create(&mut client, &pod_id, &pod, config).await;
        assert!(
            err.message().contains("hugepageLimits[2MB]")
                && err
                    .message()
                    .contains("hugetlb controller is not available"),
            "{}",
            err.message()
        );
        let mirror = env.daemon.dir.path().join("run/placement.json");
        let checkpoint = std::fs::read_to_string(&mirror).expect("placement mirror");
        assert!(
            !checkpoint.contains("\"exclusive\""),
            "released: {checkpoint}"
        );
        remove_pod(&mut client, &pod_id).await;
        assert_nothing_left(&env.daemon, &pod_id);
        return;
    }
    let hybrid = !Path::new("/sys/fs/cgroup/hugetlb/tasks").exists();
    let id = start_container(&mut client, &pod_id, &pod, config).await;
    let pid = container_pid(&mut client, &id).await;
    let cpuset = cgroup_dir(pid, "cpuset", "/sys/fs/cgroup/cpuset");
    assert_eq!(
        std::fs::read_to_string(cpuset.join("cpuset.mems"))
            .expect("mems")
            .trim(),
        "0",
        "the node with the pages"
    );
    let hugetlb = if hybrid {
        cgroup_dir(pid, "", "/sys/fs/cgroup/unified")
    } else {
        cgroup_dir(pid, "hugetlb", "/sys/fs/cgroup/hugetlb")
    };
    let limit_file = if hybrid {
        "hugetlb.2MB.max"
    } else {
        "hugetlb.2MB.limit_in_bytes"
    };
    assert_eq!(
        std::fs::read_to_string(hugetlb.join(limit_file))
            .expect("limit")
            .trim(),
        (4u64 << 21).to_string()
    );
    let reserved = hugetlb.join(if hybrid {
        "hugetlb.2MB.rsvd.max"
    } else {
        "hugetlb.2MB.rsvd.limit_in_bytes"
    });
    if reserved.exists() {
        assert_eq!(
            std::fs::read_to_string(&reserved).expect("rsvd").trim(),
            (4u64 << 21).to_string()
        );
    }
    remove_pod(&mut client, &pod_id).await;
    assert_nothing_left(&env.daemon, &pod_id);
}
