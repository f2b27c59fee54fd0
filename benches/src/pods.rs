//! `ingot-bench pods [ITERATIONS]`: pod start (RunPodSandbox + CreateContainer +
//! StartContainer of a container that stays up) and ExecSync (`true`), ingotd against
//! containerd's own CRI plugin with runc, alternating in one run. Both run in one network
//! namespace of the benchmark's own with the same kind of CNI network (bridge + host-local), pull
//! the same busybox image from the same local registry, write container logs, and put pods under
//! their own absolute cgroup parents, removed at the end. Then churn: N pods (10, then 50)
//! started at once until all run, then all removed, per runtime in turn; and ingotd's resident
//! memory once everything is gone.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use ingot_tests::{
    cri::{runtime_client, Daemon, Options},
    Registry, TestNetns,
};
use k8s_cri::v1::{self, runtime_service_client::RuntimeServiceClient};
use tonic::transport::Channel;

pub(crate) const IMAGE: &str = "bench/busybox:1";
const PAUSE: &str = "bench/pause:1";
const EXECS_PER_POD: usize = 5;

/// containerd with its CRI plugin in the benchmark's network namespace.
struct ContainerdCri {
    dir: tempfile::TempDir,
    child: Child,
    cgroup_parent: String,
}

impl ContainerdCri {
    fn start(netns: &TestNetns, registry: &str) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("ingot-bench-ctd")
            .tempdir()?;
        let d = dir.path();
        fs::create_dir_all(d.join("net.d"))?;
        let network = serde_json::json!({
            "cniVersion": "1.0.0", "name": "ctd-bench",
            "plugins": [{"type": "bridge", "bridge": "ctd0", "isGateway": true, "ipMasq": false,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.98.0.0/24"}]],
                         "dataDir": d.join("ipam")}}]
        });
        fs::write(d.join("net.d/10-bench.conflist"), network.to_string())?;
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{registry}/{PAUSE}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{netd}"
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."{registry}"]
    endpoint = ["http://{registry}"]
"#,
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = d.join("c.sock").display(),
            netd = d.join("net.d").display(),
        );
        fs::write(d.join("config.toml"), config)?;
        let log = fs::File::create(d.join("containerd.log"))?;
        let child = netns
            .command("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start containerd")?;
        let cri = ContainerdCri {
            dir,
            child,
            cgroup_parent: format!("/{}", ingot_tests::unique("ingot-bench-ctd")),
        };
        if !ingot_tests::wait_until(Duration::from_secs(20), || cri.socket().exists()) {
            bail!("containerd did not start");
        }
        Ok(cri)
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("c.sock")
    }
}

impl Drop for ContainerdCri {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(0)),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.child.wait();
        // Shims left by an interrupted run name this containerd's socket.
        let socket = self.socket().display().to_string();
        for pid in ingot_tests::pids_with_cmdline(&["containerd-shim", &socket]) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        ingot_tests::remove_cgroup_parent(self.cgroup_parent.trim_start_matches('/'));
        ingot_tests::unmount_below(self.dir.path());
    }
}

struct Leg {
    name: &'static str,
    client: RuntimeServiceClient<Channel>,
    cgroup_parent: String,
    log_dir: PathBuf,
    start: Vec<Duration>,
    /// RunPodSandbox, CreateContainer and StartContainer alone.
    phases: [Vec<Duration>; 3],
    exec: Vec<Duration>,
}

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

impl Leg {
    async fn iteration(&mut self, n: usize, image: &str) -> Result<()> {
        let name = format!("{}-{n}", self.name);
        let pod = pod_config(&name, &self.cgroup_parent, &self.log_dir);
        let started = Instant::now();
        let mut phases = [Duration::ZERO; 3];
        let (pod_id, container_id) =
            start_pod(&mut self.client, self.name, pod, image, &mut phases).await?;
        self.start.push(started.elapsed());
        for (samples, phase) in self.phases.iter_mut().zip(phases) {
            samples.push(phase);
        }
        for _ in 0..EXECS_PER_POD {
            let started = Instant::now();
            let out = self
                .client
                .exec_sync(v1::ExecSyncRequest {
                    container_id: container_id.clone(),
                    cmd: vec!["true".into()],
                    timeout: 10,
                })
                .await
                .with_context(|| format!("{}: ExecSync", self.name))?
                .into_inner();
            self.exec.push(started.elapsed());
            if out.exit_code != 0 {
                bail!("{}: ExecSync true exited {}", self.name, out.exit_code);
            }
        }
        end_pod(&mut self.client, self.name, &pod_id).await
    }

    /// One churn burst: `pods` pods started concurrently until all run (the sample), then all
    /// ended concurrently.
    async fn churn(&mut self, burst: usize, pods: usize, image: &str) -> Result<Duration> {
        let started = Instant::now();
        let mut starting = tokio::task::JoinSet::new();
        for i in 0..pods {
            let mut client = self.client.clone();
            let leg = self.name;
            let pod = pod_config(
                &format!("{leg}-churn{pods}-{burst}-{i}"),
                &self.cgroup_parent,
                &self.log_dir,
            );
            let image = image.to_string();
            starting.spawn(async move {
                let mut phases = [Duration::ZERO; 3];
                start_pod(&mut client, leg, pod, &image, &mut phases).await
            });
        }
        let mut started_pods = Vec::with_capacity(pods);
        while let Some(done) = starting.join_next().await {
            started_pods.push(done.context("churn task")??.0);
        }
        let elapsed = started.elapsed();
        let mut ending = tokio::task::JoinSet::new();
        for pod_id in started_pods {
            let mut client = self.client.clone();
            let leg = self.name;
            ending.spawn(async move { end_pod(&mut client, leg, &pod_id).await });
        }
        while let Some(done) = ending.join_next().await {
            done.context("churn task")??;
        }
        Ok(elapsed)
    }
}

/// Churn bursts per size: (pods started at once, bursts per runtime).
const CHURN: [(usize, usize); 2] = [(10, 5), (50, 3)];
/// ingotd's resident memory after the whole run, its pods gone: the bound.
const RSS_TARGET_KIB: u64 = 20 * 1024;

pub(crate) async fn pull(socket: &Path, image: &str) -> Result<()> {
    ingot_tests::cri::pull(socket, image)
        .await
        .with_context(|| format!("pull {image}"))
}

pub fn run(iterations: usize) -> Result<()> {
    let netns = TestNetns::create()?;
    let registry = Registry::start_in(Some(&netns))?;
    registry.push_test_image(IMAGE)?;
    let pause = registry.dir.path().join("pause.tar");
    ingot_tests::busybox_oci_archive_with_cmd(&pause, PAUSE, &["sleep", "2147483647"])?;
    registry.push_archive(&pause, PAUSE)?;
    let image = format!("{}/{IMAGE}", registry.address);

    let ingotd = Daemon::start_with(Options {
        netns: Some(netns.path()),
        ..Default::default()
    });
    let containerd = ContainerdCri::start(&netns, &registry.address)?;
    let logs = tempfile::Builder::new()
        .prefix("ingot-bench-logs")
        .tempdir()?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (ingot, ctd, churn) = runtime.block_on(async {
        pull(&ingotd.socket(), &image).await?;
        pull(&containerd.socket(), &image).await?;
        let mut legs = [
            Leg {
                name: "ingotd",
                client: runtime_client(&ingotd.socket()).await,
                cgroup_parent: ingotd.cgroup_parent.clone(),
                log_dir: logs.path().join("ingotd"),
                start: Vec::new(),
                phases: Default::default(),
                exec: Vec::new(),
            },
            Leg {
                name: "containerd",
                client: runtime_client(&containerd.socket()).await,
                cgroup_parent: containerd.cgroup_parent.clone(),
                log_dir: logs.path().join("containerd"),
                start: Vec::new(),
                phases: Default::default(),
                exec: Vec::new(),
            },
        ];
        // One warm-up pod each (first unpack, first shim binary load), not counted.
        for leg in &mut legs {
            leg.iteration(0, &image).await?;
            leg.start.clear();
            leg.phases = Default::default();
            leg.exec.clear();
        }
        for n in 1..=iterations {
            for leg in &mut legs {
                leg.iteration(n, &image).await?;
            }
        }
        let mut churn = Vec::new();
        for (pods, bursts) in CHURN {
            let mut samples = [Vec::new(), Vec::new()];
            for burst in 0..bursts {
                for (leg, samples) in legs.iter_mut().zip(&mut samples) {
                    samples.push(leg.churn(burst, pods, &image).await?);
                }
            }
            churn.push((pods, samples));
        }
        let [ingot, ctd] = legs;
        Ok::<_, anyhow::Error>((ingot, ctd, churn))
    })?;
    // All pods are gone: what ingotd still holds is what a day's work leaves.
    std::thread::sleep(Duration::from_secs(1));
    let (rss, pss) = crate::smaps_rollup(ingotd.pid().as_raw())?;
    let anonymous = crate::smaps_field(ingotd.pid().as_raw(), "Anonymous:")?;
    if let Ok(path) = std::env::var("INGOT_BENCH_SMAPS") {
        fs::copy(format!("/proc/{}/smaps", ingotd.pid()), &path)?;
        println!("ingotd's memory map: {path}");
    }

    let p50 = |samples: &[Duration]| {
        let mut sorted = samples.to_vec();
        sorted.sort();
        crate::percentile(&sorted, 50)
    };
    let p95 = |samples: &[Duration]| {
        let mut sorted = samples.to_vec();
        sorted.sort();
        crate::percentile(&sorted, 95)
    };
    println!("{iterations} pods per runtime, alternating; {EXECS_PER_POD} ExecSync per pod");
    println!(
        "{:<12} {:>14} {:>14} {:>14} {:>14}",
        "runtime", "start p50", "start p95", "exec p50", "exec p95"
    );
    for leg in [&ingot, &ctd] {
        println!(
            "{:<12} {:>14} {:>14} {:>14} {:>14}",
            leg.name,
            crate::ms(p50(&leg.start)),
            crate::ms(p95(&leg.start)),
            crate::ms(p50(&leg.exec)),
            crate::ms(p95(&leg.exec)),
        );
    }
    println!("p50 by RPC: RunPodSandbox / CreateContainer / StartContainer");
    for leg in [&ingot, &ctd] {
        println!(
            "{:<12} {:>10} {:>10} {:>10}",
            leg.name,
            crate::ms(p50(&leg.phases[0])),
            crate::ms(p50(&leg.phases[1])),
            crate::ms(p50(&leg.phases[2])),
        );
    }
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    println!(
        "ingotd/containerd: pod start p50 {:.2} (target <= 0.25), ExecSync p50 {:.2} (target <= 0.33)",
        ratio(p50(&ingot.start), p50(&ctd.start)),
        ratio(p50(&ingot.exec), p50(&ctd.exec)),
    );
    println!("churn: N pods started at once until all run, then removed; p50 of the bursts");
    for (pods, [ingot, ctd]) in &churn {
        println!(
            "N={pods:<3} ingotd {:>10}  containerd {:>10}  ratio {:.2} (target <= 0.17), {} bursts",
            crate::ms(p50(ingot)),
            crate::ms(p50(ctd)),
            ratio(p50(ingot), p50(ctd)),
            ingot.len(),
        );
    }
    let pods_run = iterations + 1 + CHURN.iter().map(|(n, b)| n * b).sum::<usize>();
    println!(
        "ingotd after {pods_run} pods and {} ExecSync, all removed: RSS {rss} KiB ({anonymous} KiB anonymous), PSS {pss} KiB (target RSS <= {RSS_TARGET_KIB} KiB)",
        (iterations + 1) * EXECS_PER_POD,
    );
    if let Ok(path) = std::env::var("INGOT_BENCH_LOG") {
        fs::copy(ingotd.dir.path().join("ingotd.log"), &path)?;
        println!("ingotd's log: {path}");
    }
    drop(containerd);
    drop(ingotd);
    Ok(())
}
