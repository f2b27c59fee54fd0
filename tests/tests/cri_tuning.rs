//! CRI-O's high-performance annotations through ingotd, against a host root the test builds from
//! this machine's real `/proc/irq` and `/sys/devices/system/cpu` (copied to a temp dir; this VM
//! has no cpufreq driver, so the copy gets the files one makes): a Guaranteed pod on a
//! high-performance runtime handler with CPU 1 exclusive gets exactly each annotation's writes
//! and its cgroup effects; they survive ingotd's `kill -9`; removal puts every file back as it
//! was; refusals name the annotation.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
};

use ingot_tests::{
    cgroup_file,
    cri::{Daemon, Options},
    pods::*,
};
use k8s_cri::v1;

const HANDLER: &str = "[runtimes.performance]
high_performance = true
exec_cpu_affinity = \"first\"
allowed_annotations = [\"cpu-load-balancing.crio.io\", \"cpu-quota.crio.io\", \"irq-load-balancing.crio.io\", \"cpu-c-states.crio.io\", \"cpu-freq-governor.crio.io\", \"cpu-shared.crio.io\"]
[runtimes.quota-only]
high_performance = true
allowed_annotations = [\"cpu-quota.crio.io\"]
";

/// A copy of the host's IRQ and CPU files, with cpufreq files where the VM has none.
fn host_copy(root: &Path) {
    let copy = |from: &Path, to: &Path| {
        if let Ok(text) = std::fs::read_to_string(from) {
            std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
            std::fs::write(to, text).expect("write");
        }
    };
    copy(
        Path::new("/proc/irq/default_smp_affinity"),
        &root.join("proc/irq/default_smp_affinity"),
    );
    for entry in std::fs::read_dir("/proc/irq").expect("/proc/irq").flatten() {
        let list = entry.path().join("smp_affinity_list");
        if list.exists() {
            copy(
                &list,
                &root
                    .join("proc/irq")
                    .join(entry.file_name())
                    .join("smp_affinity_list"),
            );
        }
    }
    copy(
        Path::new("/proc/sys/kernel/random/boot_id"),
        &root.join("proc/sys/kernel/random/boot_id"),
    );
    let cpus = root.join("sys/devices/system/cpu");
    copy(
        Path::new("/sys/devices/system/cpu/online"),
        &cpus.join("online"),
    );
    copy(
        Path::new("/sys/devices/system/cpu/possible"),
        &cpus.join("possible"),
    );
    for cpu in [0, 1] {
        let real = PathBuf::from(format!("/sys/devices/system/cpu/cpu{cpu}"));
        let ours = cpus.join(format!("cpu{cpu}"));
        copy(
            &real.join("power/pm_qos_resume_latency_us"),
            &ours.join("power/pm_qos_resume_latency_us"),
        );
        let cpufreq = ours.join("cpufreq");
        std::fs::create_dir_all(&cpufreq).expect("cpufreq");
        std::fs::write(cpufreq.join("scaling_governor"), "schedutil\n").expect("governor");
        std::fs::write(
            cpufreq.join("scaling_available_governors"),
            "performance schedutil powersave\n",
        )
        .expect("governors");
    }
    std::fs::create_dir_all(root.join("etc/sysconfig")).expect("etc");
    std::fs::write(
        root.join("etc/sysconfig/irqbalance"),
        "# irqbalance settings\nIRQBALANCE_ARGS=\"\"\nIRQBALANCE_BANNED_CPUS=\n",
    )
    .expect("irqbalance");
}

/// Every file under `root`, with its content.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<PathBuf, String>) {
        for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, root, out);
            } else {
                let text = std::fs::read_to_string(&path).expect("read");
                out.insert(path.strip_prefix(root).expect("under").to_path_buf(), text);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// The files whose content differs from `before`, with what they hold now.
fn changed(root: &Path, before: &BTreeMap<PathBuf, String>) -> BTreeMap<String, String> {
    snapshot(root)
        .into_iter()
        .filter(|(path, text)| before.get(path) != Some(text))
        .map(|(path, text)| (path.display().to_string(), text.trim().to_string()))
        .collect()
}

fn guaranteed(name: &str, image: &str) -> v1::ContainerConfig {
    let mut config = container_config(name, image, "sleep 600");
    config.linux = Some(v1::LinuxContainerConfig {
        resources: Some(v1::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 100_000,
            cpu_shares: 1024,
            memory_limit_in_bytes: 64 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    config
}

async fn run_pod_on(
    client: &mut v1::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>,
    pod: &v1::PodSandboxConfig,
    handler: &str,
) -> Result<String, tonic::Status> {
    client
        .run_pod_sandbox(v1::RunPodSandboxRequest {
            config: Some(pod.clone()),
            runtime_handler: handler.into(),
        })
        .await
        .map(|r| r.into_inner().pod_sandbox_id)
}

fn pod_with(daemon: &Daemon, name: &str, annotations: &[(&str, &str)]) -> v1::PodSandboxConfig {
    let mut pod = host_network_pod(name, &daemon.log_dir(name), v1::NamespaceMode::Pod);
    pod.annotations = annotations
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect::<HashMap<_, _>>();
    pod
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|err| panic!("{}: {err}", path.display()))
        .trim()
        .to_string()
}

#[tokio::test(flavor = "current_thread")]
async fn a_high_performance_pod_tunes_cpu_1_and_its_removal_restores_the_host() {
    let host = tempfile::tempdir().expect("tempdir");
    host_copy(host.path());
    let before = snapshot(host.path());
    let (mut env, mut client, image) = env_with(
        false,
        Options {
            extra_config: format!(
                "tuning_root = \"{}\"\n[placement]\npolicy = \"exclusive\"\nreserved = \"0\"\n{HANDLER}",
                host.path().display()
            ),
            ..Default::default()
        },
    )
    .await;

    // Refusals, each naming the annotation, each leaving the host as it was.
    for (name, annotation, handler, why) in [
        (
            "malformed",
            ("cpu-c-states.crio.io", "sometimes"),
            "performance",
            "sometimes",
        ),
        (
            "plain",
            ("cpu-quota.crio.io", "disable"),
            "",
            "not high-performance",
        ),
        (
            "narrow",
            ("irq-load-balancing.crio.io", "disable"),
            "quota-only",
            "allowed",
        ),
    ] {
        let status = run_pod_on(
            &mut client,
            &pod_with(&env.daemon, name, &[annotation]),
            handler,
        )
        .await
        .expect_err(name);
        assert_refused(&status, tonic::Code::InvalidArgument, &[annotation.0, why]);
    }

    let governor = pod_with(
        &env.daemon,
        "governor",
        &[("cpu-freq-governor.crio.io", "ondemand")],
    );
    let pod_id = run_pod_on(&mut client, &governor, "performance")
        .await
        .expect("RunPodSandbox");
    let status = refused_create(&mut client, &pod_id, &governor, guaranteed("g", &image)).await;
    let message = status.message().to_lowercase();
    assert!(
        message.contains("cpu 1") || message.contains("cpu1"),
        "names the CPU: {status:?}"
    );
    assert_refused(
        &status,
        tonic::Code::InvalidArgument,
        &[
            "cpu-freq-governor.crio.io",
            "performance schedutil powersave",
        ],
    );
    let status = refused_create(
        &mut client,
        &pod_id,
        &governor,
        container_config("burstable", &image, "sleep 600"),
    )
    .await;
    assert_refused(
        &status,
        tonic::Code::InvalidArgument,
        &[
            "cpu-freq-governor.crio.io",
            "not Guaranteed with whole CPUs",
        ],
    );
    remove_pod(&mut client, &pod_id).await;
    assert_eq!(changed(host.path(), &before), BTreeMap::new());

    // The high-performance pod: CPU 1 is its container's.
    let annotations = [
        ("cpu-load-balancing.crio.io", "disable"),
        ("cpu-quota.crio.io", "disable"),
        ("irq-load-balancing.crio.io", "disable"),
        ("cpu-c-states.crio.io", "disable"),
        ("cpu-freq-governor.crio.io", "performance"),
    ];
    let pod = pod_with(&env.daemon, "du", &annotations);
    let pod_id = run_pod_on(&mut client, &pod, "performance")
        .await
        .expect("RunPodSandbox");
    let id = start_container(&mut client, &pod_id, &pod, guaranteed("du", &image)).await;
    let pid = container_pid(&mut client, &id).await;
    assert_eq!(read(&cgroup_file(pid, "cpuset", "cpuset.cpus")), "1");

    let mut expected: BTreeMap<String, String> = BTreeMap::new();
    // IRQs: the default mask and every IRQ off CPU 1, irqbalance told to leave it alone.
    let all_irqs = read(&host.path().join("proc/irq/default_smp_affinity"));
    assert_eq!(all_irqs, "1", "default_smp_affinity without CPU 1");
    expected.insert("proc/irq/default_smp_affinity".into(), "1".into());
    for (path, text) in &before {
        let path = path.display().to_string();
        if path.ends_with("smp_affinity_list") && text.trim() != "0" {
            expected.insert(path, "0".into());
        }
    }
    expected.insert(
        "etc/sysconfig/irqbalance".into(),
        "# irqbalance settings\nIRQBALANCE_ARGS=\"\"\nIRQBALANCE_BANNED_CPUS=00000002".into(),
    );
    // C-states and the governor of CPU 1 only.
    expected.insert(
        "sys/devices/system/cpu/cpu1/power/pm_qos_resume_latency_us".into(),
        "n/a".into(),
    );
    expected.insert(
        "sys/devices/system/cpu/cpu1/cpufreq/scaling_governor".into(),
        "performance".into(),
    );
    let tuned = changed(host.path(), &before);
    assert_eq!(tuned, expected, "exactly the annotations' writes");

    // The cgroup side: no CFS quota on the container or the pod, no load balancing in its cpuset.
    assert_eq!(read(&cgroup_file(pid, "cpu", "cpu.cfs_quota_us")), "-1");
    let container_cpu = cgroup_file(pid, "cpu", "cpu.cfs_quota_us");
    let pod_cpu = container_cpu
        .parent()
        .and_then(Path::parent)
        .expect("the pod cgroup")
        .join("cpu.cfs_quota_us");
    assert_eq!(read(&pod_cpu), "-1");
    assert_eq!(
        read(&cgroup_file(pid, "cpuset", "cpuset.sched_load_balance")),
        "0"
    );

    // exec_cpu_affinity = "first": an exec runs on the container's first CPU.
    let output = exec(
        &mut client,
        &id,
        &["grep", "Cpus_allowed_list", "/proc/self/status"],
    )
    .await;
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(text.split_whitespace().last(), Some("1"), "{output:?}");

    // ingotd killed and started again: the tuning stays while the container runs.
    env.daemon = Daemon::restart(env.daemon);
    let mut client = ingot_tests::cri::runtime_client(&env.daemon.socket()).await;
    assert_eq!(
        changed(host.path(), &before),
        expected,
        "after kill -9 and restart"
    );

    // Removal gives everything back.
    stop_and_remove_container(&mut client, &id, 0).await;
    assert_eq!(changed(host.path(), &before), BTreeMap::new(), "restored");
    remove_pod(&mut client, &pod_id).await;

    // cpu-shared (per container, as in CRI-O): CPU 1 of its own and the reserved CPU 0 beside
    // it, a period more of quota, CRI-O's variables, execs on the shared CPU.
    let pod = pod_with(
        &env.daemon,
        "shared",
        &[("cpu-shared.crio.io/du", "enable")],
    );
    let pod_id = run_pod_on(&mut client, &pod, "performance")
        .await
        .expect("RunPodSandbox");
    let id = start_container(&mut client, &pod_id, &pod, guaranteed("du", &image)).await;
    let pid = container_pid(&mut client, &id).await;
    assert_eq!(read(&cgroup_file(pid, "cpuset", "cpuset.cpus")), "0-1");
    assert_eq!(read(&cgroup_file(pid, "cpu", "cpu.cfs_quota_us")), "200000");
    let output = exec(
        &mut client,
        &id,
        &[
            "sh",
            "-c",
            "echo $OPENSHIFT_ISOLATED_CPUS $OPENSHIFT_SHARED_CPUS $INGOT_CPUS; \
             grep Cpus_allowed_list /proc/self/status",
        ],
    )
    .await;
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.starts_with("1 0 1\n"), "{output:?}");
    assert_eq!(text.split_whitespace().last(), Some("0"), "{output:?}");
    assert_eq!(
        changed(host.path(), &before),
        BTreeMap::new(),
        "no host file"
    );
    stop_and_remove_container(&mut client, &id, 0).await;
    remove_pod(&mut client, &pod_id).await;
    let mirror: serde_json::Value = serde_json::from_slice(
        &std::fs::read(env.daemon.dir.path().join("run/tuning.json")).expect("tuning mirror"),
    )
    .expect("json");
    assert_eq!(mirror["claims"], serde_json::json!([]), "{mirror}");
    assert_eq!(mirror["baselines"], serde_json::json!({}), "{mirror}");
    assert_nothing_left(&env.daemon, &pod_id);
}

/// A daemon with CPU 0 reserved and exclusive placement, `top` before the tables.
async fn exclusive_env(
    top: &str,
) -> (
    Env,
    v1::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>,
    String,
) {
    env_with(
        false,
        Options {
            extra_config: format!("{top}[placement]\npolicy = \"exclusive\"\nreserved = \"0\"\n"),
            ..Default::default()
        },
    )
    .await
}

/// Real-time pods: on this machine (not PREEMPT_RT, no isolated CPUs) the `rt` handler and the
/// annotation are both refused with FailedPrecondition naming the failed checks; on a node
/// that passes them (ingot-rt's RT-ready fixture as the tuning root) the pod is admitted, a
/// container without whole CPUs of its own is refused, a Guaranteed one gets CPU 1.
#[tokio::test(flavor = "current_thread")]
async fn real_time_pods_need_a_ready_node_and_cpus_of_their_own() {
    let (env, mut client, _image) = exclusive_env("").await;
    let pod = pod_with(&env.daemon, "rt", &[]);
    let status = run_pod_on(&mut client, &pod, "rt")
        .await
        .expect_err("this node is not real-time");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("preempt_rt"), "{status:?}");
    assert!(status.message().contains("isolcpus"), "{status:?}");
    let annotated = pod_with(
        &env.daemon,
        "rt2",
        &[("realtime.ingot.dev/enabled", "true")],
    );
    let status = run_pod_on(&mut client, &annotated, "")
        .await
        .expect_err("the annotation asks for real time too");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    drop(env);

    let ready = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/rt/tests/fixtures/rt-ready");
    let (env, mut client, image) =
        exclusive_env(&format!("tuning_root = \"{}\"\n", ready.display())).await;
    let pod = pod_with(&env.daemon, "rt", &[]);
    let pod_id = run_pod_on(&mut client, &pod, "rt")
        .await
        .expect("a ready node admits it");
    let status = refused_create(
        &mut client,
        &pod_id,
        &pod,
        container_config("shared", &image, "sleep 600"),
    )
    .await;
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("whole CPUs"), "{status:?}");
    let id = start_container(&mut client, &pod_id, &pod, guaranteed("rt", &image)).await;
    let pid = container_pid(&mut client, &id).await;
    assert_eq!(read(&cgroup_file(pid, "cpuset", "cpuset.cpus")), "1");
    stop_and_remove_container(&mut client, &id, 0).await;
    remove_pod(&mut client, &pod_id).await;
    assert_nothing_left(&env.daemon, &pod_id);
}

/// A handler with `realtime_checks = "warn"` admits a real-time pod on this node, which fails
/// the checks (a latency benchmark on a stock kernel), and its container still gets its class
/// and the RT budget without which SCHED_FIFO is refused in a fresh v1 cgroup; the `rt`
/// handler of the same daemon still refuses.
#[tokio::test(flavor = "current_thread")]
async fn real_time_checks_may_warn_instead_of_refusing() {
    let (env, mut client, image) =
        exclusive_env("[runtimes.lab]\nrealtime = true\nrealtime_checks = \"warn\"\n").await;
    let status = run_pod_on(&mut client, &pod_with(&env.daemon, "strict", &[]), "rt")
        .await
        .expect_err("the rt handler still requires a ready node");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    let pod = pod_with(
        &env.daemon,
        "lab",
        &[
            ("realtime.ingot.dev/sched-policy", "fifo"),
            ("realtime.ingot.dev/sched-priority", "7"),
        ],
    );
    let pod_id = run_pod_on(&mut client, &pod, "lab")
        .await
        .expect("admitted with a warning");
    let id = start_container(&mut client, &pod_id, &pod, guaranteed("rt", &image)).await;
    let pid = container_pid(&mut client, &id).await;
    let stat = read(Path::new(&format!("/proc/{pid}/stat")));
    assert_eq!(
        (stat_field(&stat, 41), stat_field(&stat, 40)),
        ("1".to_string(), "7".to_string()),
        "SCHED_FIFO at priority 7: {stat}"
    );
    if Path::new("/sys/fs/cgroup/cpu/cpu.rt_runtime_us").exists() {
        assert_eq!(
            read(&cgroup_file(pid, "cpu", "cpu.rt_runtime_us")),
            "100000",
            "the default budget"
        );
    }
    let log = std::fs::read_to_string(env.daemon.dir.path().join("ingotd.log")).expect("log");
    assert!(
        log.contains("admitted on a node that fails real-time checks")
            && log.contains("preempt_rt"),
        "the warning names the failed checks"
    );
    stop_and_remove_container(&mut client, &id, 0).await;
    remove_pod(&mut client, &pod_id).await;
    assert_nothing_left(&env.daemon, &pod_id);
}

fn has_sys_resource() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .expect("CapEff")
        .trim()
        .to_string();
    u64::from_str_radix(&hex, 16).expect("hex") & (1 << 24) != 0
}

/// A CreateContainer of a Guaranteed container refused in a fresh pod with one annotation on
/// `handler`; the pod is removed again.
async fn refused_in_pod(
    daemon: &Daemon,
    name: &str,
    annotation: (&str, &str),
    handler: &str,
    image: &str,
) -> tonic::Status {
    let mut client = ingot_tests::cri::runtime_client(&daemon.socket()).await;
    let pod = pod_with(daemon, name, &[annotation]);
    let pod_id = run_pod_on(&mut client, &pod, handler)
        .await
        .expect("RunPodSandbox");
    let status = refused_create(&mut client, &pod_id, &pod, guaranteed("x", image)).await;
    remove_pod(&mut client, &pod_id).await;
    status
}

fn assert_refused(status: &tonic::Status, code: tonic::Code, needles: &[&str]) {
    assert_eq!(status.code(), code, "{status:?}");
    for needle in needles {
        assert!(status.message().contains(needle), "{needle}: {status:?}");
    }
}

/// Field `n` (1-based, as proc(5) counts them) of `/proc/<pid>/stat`.
fn stat_field(stat: &str, n: usize) -> String {
    // pid (comm) state ...: comm may hold spaces, so from the last ')'; state is field 3.
    let rest = stat.rsplit_once(')').expect("stat").1;
    rest.split_whitespace()
        .nth(n - 3)
        .expect("field")
        .to_string()
}

/// A real-time pod's per-container settings on a ready node (the RT-ready fixture as the tuning
/// root; the cgroups are this machine's own v1 ones): SCHED_FIFO at the pod's priority for the
/// container's process but not for its execs, its rlimits, an RT runtime budget in its cgroup
/// (without which SCHED_FIFO is refused there) raised on the way down and given back at removal,
/// and its CPUs in its environment and a file. Bad settings are refused naming the annotation;
/// a budget the root cannot give names the numbers.
#[tokio::test(flavor = "current_thread")]
async fn real_time_containers_get_their_scheduling_rlimits_budget_and_cpus() {
    let ready = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/rt/tests/fixtures/rt-ready");
    let (env, mut client, image) =
        exclusive_env(&format!("tuning_root = \"{}\"\n", ready.display())).await;
    let parent =
        Path::new("/sys/fs/cgroup/cpu").join(env.daemon.cgroup_parent.trim_start_matches('/'));
    let pod = pod_with(
        &env.daemon,
        "rt",
        &[
            ("realtime.ingot.dev/sched-policy", "SCHED_FIFO"),
            ("realtime.ingot.dev/sched-priority", "10"),
            ("realtime.ingot.dev/rt-runtime-us/rt", "200000"),
            ("realtime.ingot.dev/rlimit-memlock", "unlimited"),
            ("realtime.ingot.dev/rlimit-rtprio", "20"),
        ],
    );
    let pod_id = run_pod_on(&mut client, &pod, "rt").await.expect("admitted");
    let pod_cgroup = parent.join(&pod_id);
    assert_eq!(
        read(&pod_cgroup.join("cpu.rt_runtime_us")),
        "0",
        "a fresh cgroup"
    );
    let id = start_container(&mut client, &pod_id, &pod, guaranteed("rt", &image)).await;
    let pid = container_pid(&mut client, &id).await;
    let stat = read(Path::new(&format!("/proc/{pid}/stat")));
    assert_eq!(
        (stat_field(&stat, 41), stat_field(&stat, 40)),
        ("1".to_string(), "10".to_string()),
        "SCHED_FIFO at priority 10: {stat}"
    );
    assert_eq!(
        read(&cgroup_file(pid, "cpu", "cpu.rt_runtime_us")),
        "200000"
    );
    assert_eq!(read(&pod_cgroup.join("cpu.rt_runtime_us")), "200000");
    assert_eq!(read(&parent.join("cpu.rt_runtime_us")), "200000");
    let limits = read(Path::new(&format!("/proc/{pid}/limits")));
    let limit = |name: &str| {
        limits
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    // Asked: unlimited and 20; where ingotd lacks CAP_SYS_RESOURCE (as on this machine) no
    // more than its own hard limits, which are this test's.
    let (memlock, rtprio) = if has_sys_resource() {
        ("unlimited".to_string(), "20".to_string())
    } else {
        let (_, memlock) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_MEMLOCK)
                .expect("getrlimit");
        let (_, rtprio) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_RTPRIO)
                .expect("getrlimit");
        let show = |n: u64| {
            if n == u64::MAX {
                "unlimited".to_string()
            } else {
                n.min(20).to_string()
            }
        };
        (
            if memlock == u64::MAX {
                "unlimited".into()
            } else {
                memlock.to_string()
            },
            show(rtprio),
        )
    };
    assert!(
        limit("Max locked memory").contains(&format!("{memlock} {memlock}")),
        "{limits}"
    );
    assert!(
        limit("Max realtime priority").contains(&format!("{rtprio} {rtprio}")),
        "{limits}"
    );

    // An exec is a plain process unless the pod asks otherwise, and sees the container's CPUs.
    let out = exec(&mut client, &id, &["/bin/sh", "-c", "cat /proc/self/stat"]).await;
    let stat = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(stat_field(&stat, 41), "0", "an exec is SCHED_OTHER: {stat}");
    let out = exec(
        &mut client,
        &id,
        &[
            "/bin/sh",
            "-c",
            "echo $INGOT_CPUS $INGOT_MEMS $INGOT_HOUSEKEEPING_CPUS; cat /etc/ingot/placement.env",
        ],
    )
    .await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "1 0 0\nINGOT_CPUS=1\nINGOT_MEMS=0\nINGOT_HOUSEKEEPING_CPUS=0\n"
    );

    // Refusals name the annotation (or the numbers), and make nothing.
    let refusal = |name: &'static str, annotation: (&'static str, &'static str), handler| {
        refused_in_pod(&env.daemon, name, annotation, handler, &image)
    };
    let status = refusal(
        "rt-bad",
        ("realtime.ingot.dev/sched-policy", "SCHED_FIFO"),
        "rt",
    )
    .await;
    assert_refused(
        &status,
        tonic::Code::InvalidArgument,
        &["realtime.ingot.dev/sched-priority"],
    );
    let status = refusal("plain", ("realtime.ingot.dev/sched-nice", "5"), "").await;
    assert_refused(
        &status,
        tonic::Code::InvalidArgument,
        &["realtime.ingot.dev/sched-nice", "real-time pod"],
    );

    // Removal gives the budget back all the way up.
    stop_and_remove_container(&mut client, &id, 0).await;
    assert_eq!(read(&pod_cgroup.join("cpu.rt_runtime_us")), "0");
    assert_eq!(read(&parent.join("cpu.rt_runtime_us")), "0");
    // A budget the root cannot give (CPU 1 is free again).
    // A budget the root cannot give (CPU 1 is free again).
    let status = refusal(
        "rt-greedy",
        ("realtime.ingot.dev/rt-runtime-us", "1000000"),
        "rt",
    )
    .await;
    assert_refused(
        &status,
        tonic::Code::FailedPrecondition,
        &["/sys/fs/cgroup/cpu", "1000000 µs are needed"],
    );
    assert_eq!(
        read(&parent.join("cpu.rt_runtime_us")),
        "0",
        "nothing taken"
    );
    remove_pod(&mut client, &pod_id).await;
    assert_nothing_left(&env.daemon, &pod_id);
}

/// Beyond CRI-O: `irq.ingot.dev/device-irqs: pod-cpus` steers the interrupts of the container's
/// own device (here a CDI device whose spec names its PCI function, with two MSI vectors in a
/// copy of this machine's /proc/irq) onto its exclusive CPU, leaves every other IRQ alone, steers
/// a vector that appears later too (the periodic watch), and removal restores them all.
#[tokio::test(flavor = "current_thread")]
async fn a_containers_own_device_irqs_are_steered_onto_its_cpu_and_back() {
    let host = tempfile::tempdir().expect("tempdir");
    host_copy(host.path());
    let mut irqs: Vec<u32> = std::fs::read_dir(host.path().join("proc/irq"))
        .expect("irqs")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    irqs.sort_unstable();
    assert!(irqs.len() >= 4, "this machine has IRQs: {irqs:?}");
    let (a, b, late, other) = (irqs[0], irqs[1], irqs[2], irqs[3]);
    let msi = host
        .path()
        .join("sys/bus/pci/devices/0000:3b:02.0/msi_irqs");
    for irq in [a, b] {
        std::fs::create_dir_all(msi.join(irq.to_string())).expect("msi");
    }
    let cdi = tempfile::tempdir().expect("cdi");
    std::fs::write(
        cdi.path().join("nic.json"),
        serde_json::json!({
            "cdiVersion": "0.7.0",
            "kind": "test.ingot.dev/nic",
            "devices": [{
                "name": "vf0",
                "annotations": {"ingot.dev/pci-address": "0000:3b:02.0"},
                "containerEdits": {"env": ["NIC=vf0"]}
            }]
        })
        .to_string(),
    )
    .expect("spec");
    let before = snapshot(host.path());
    let (env, mut client, image) = env_with(
        false,
        Options {
            extra_config: format!(
                "tuning_root = \"{}\"\ncdi_spec_dirs = [\"{}\"]\n[placement]\npolicy = \"exclusive\"\nreserved = \"0\"\n\
                 [runtimes.dpdk]\nhigh_performance = true\nallowed_annotations = [\"irq.ingot.dev/device-irqs\"]\n",
                host.path().display(),
                cdi.path().display()
            ),
            ..Default::default()
        },
    )
    .await;
    let pod = pod_with(
        &env.daemon,
        "dpdk",
        &[("irq.ingot.dev/device-irqs", "pod-cpus")],
    );
    let pod_id = run_pod_on(&mut client, &pod, "dpdk")
        .await
        .expect("RunPodSandbox");

    // Without a PCI device of its own there is nothing to steer: refused, naming the annotation.
    let status = refused_create(&mut client, &pod_id, &pod, guaranteed("bare", &image)).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("irq.ingot.dev/device-irqs"),
        "{status:?}"
    );

    let mut nic = guaranteed("nic", &image);
    nic.cdi_devices = vec![v1::CdiDevice {
        name: "test.ingot.dev/nic=vf0".into(),
    }];
    let id = start_container(&mut client, &pod_id, &pod, nic).await;
    let list = |irq: u32| {
        read(
            &host
                .path()
                .join(format!("proc/irq/{irq}/smp_affinity_list")),
        )
    };
    assert_eq!((list(a), list(b)), ("1".to_string(), "1".to_string()));
    let untouched = |irq: u32| {
        before
            .get(Path::new(&format!("proc/irq/{irq}/smp_affinity_list")))
            .map(|s| s.trim().to_string())
    };
    assert_eq!(
        Some(list(other)),
        untouched(other),
        "another IRQ is left alone"
    );
    assert_eq!(Some(list(late)), untouched(late));

    // A vector the driver adds later is steered by the next watch.
    std::fs::create_dir_all(msi.join(late.to_string())).expect("msi");
    assert!(
        ingot_tests::wait_until(std::time::Duration::from_secs(25), || list(late) == "1"),
        "IRQ {late} steered: {}",
        list(late)
    );

    stop_and_remove_container(&mut client, &id, 0).await;
    let left = changed(host.path(), &before);
    assert!(left.is_empty(), "restored: {left:?}");
    remove_pod(&mut client, &pod_id).await;
    assert_nothing_left(&env.daemon, &pod_id);
}
