//! `ingot-bench run`: every runtime on this machine in one run, interleaved sample by sample,
//! each over CRI where the kubelet would call it. See the README's performance section.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ingot_tests::{cri::runtime_client, Registry, TestNetns};
use k8s_cri::v1::{self, runtime_service_client::RuntimeServiceClient};
use tonic::transport::Channel;

use crate::{
    peers::{shared_dir, Kind, Peer},
    procs,
    report::{Report, Runtime},
};

pub(crate) const IMAGE: &str = "bench/busybox:1";
const PAUSE: &str = "bench/pause:1";
const CYCLICTEST: &str = "bench/cyclictest:1";
/// Concurrent calls when the harness sets up or removes many idle pods (not timed).
const SETUP_PARALLEL: usize = 10;

/// What a run measures, and how much.
pub(crate) struct Settings {
    pub runtimes: Vec<Kind>,
    pub iterations: usize,
    pub execs_per_round: usize,
    /// (pods started at once, bursts).
    pub churn: Vec<(usize, usize)>,
    pub scale: Vec<usize>,
    /// The pod count at which the idle wakeups are measured a second time.
    pub wakeups_at: usize,
    pub idle_window: Duration,
    pub jitter: Duration,
    pub json: Option<PathBuf>,
    pub svg: Option<PathBuf>,
    pub quiet: bool,
    /// `--marks FILE`: each churn burst's start and end (CLOCK_MONOTONIC ns, a line per burst),
    /// to cut a `perf record -k CLOCK_MONOTONIC` of the run to the timed windows.
    pub marks: Option<PathBuf>,
    /// The sections measured (`--only`), of [`SECTIONS`]; all by default.
    pub only: Vec<&'static str>,
    pub command: String,
}

/// The parts of a run `--only` may pick, in the order a run measures them.
const SECTIONS: [&str; 6] = ["idle", "pod-start", "lifecycle", "churn", "scale", "jitter"];

const USAGE: &str = "usage: ingot-bench run [--runtimes NAME,...] [--iterations N] [--smoke] \
                     [--only SECTION,...] [--churn PODSxBURSTS,...] [--marks FILE] \
                     [--json FILE] [--svg FILE] [--quiet] \
                     (sections: idle, pod-start, lifecycle, churn, scale, jitter)";

/// `--churn 10x5,50x3`: pods started at once, and how many bursts of them.
fn parse_churn(value: &str) -> Result<Vec<(usize, usize)>> {
    value
        .split(',')
        .map(|entry| {
            let (pods, bursts) = entry
                .split_once('x')
                .with_context(|| format!("--churn: {entry:?} is not PODSxBURSTS; {USAGE}"))?;
            let count = |text: &str| {
                text.parse::<usize>()
                    .ok()
                    .filter(|n| *n > 0)
                    .with_context(|| format!("--churn: {entry:?}: {text:?} is not a count above 0"))
            };
            Ok((count(pods)?, count(bursts)?))
        })
        .collect()
}

impl Settings {
    pub(crate) fn parse(args: &[String]) -> Result<Settings> {
        let mut s = Settings {
            runtimes: Kind::ALL.to_vec(),
            iterations: 20,
            execs_per_round: 5,
            // A 10-pod burst takes 0.1-0.8 s and its samples spread by a third: ten of them.
            churn: vec![(10, 10), (50, 3)],
            scale: vec![10, 50, 100],
            wakeups_at: 50,
            idle_window: Duration::from_secs(10),
            jitter: Duration::from_secs(30),
            json: None,
            svg: None,
            quiet: false,
            marks: None,
            only: SECTIONS.to_vec(),
            command: std::iter::once("ingot-bench".to_string())
                .chain(args.iter().cloned())
                .collect::<Vec<_>>()
                .join(" "),
        };
        let mut args = args.iter().skip(1);
        while let Some(arg) = args.next() {
            let mut value = |flag: &str| {
                args.next()
                    .cloned()
                    .with_context(|| format!("{flag} needs a value; {USAGE}"))
            };
            match arg.as_str() {
                "--runtimes" => {
                    s.runtimes = value("--runtimes")?
                        .split(',')
                        .map(Kind::parse)
                        .collect::<Result<_>>()?;
                }
                "--iterations" => {
                    s.iterations = value("--iterations")?
                        .parse()
                        .context("--iterations: a count")?;
                }
                "--json" => s.json = Some(value("--json")?.into()),
                "--svg" => s.svg = Some(value("--svg")?.into()),
                "--quiet" => s.quiet = true,
                "--marks" => s.marks = Some(value("--marks")?.into()),
                "--churn" => s.churn = parse_churn(&value("--churn")?)?,
                "--only" => {
                    s.only = value("--only")?
                        .split(',')
                        .map(|name| {
                            SECTIONS
                                .iter()
                                .find(|known| **known == name)
                                .copied()
                                .with_context(|| format!("--only: no section {name:?}; {USAGE}"))
                        })
                        .collect::<Result<_>>()?;
                }
                "--smoke" => {
                    s.iterations = 2;
                    s.execs_per_round = 2;
                    s.churn = vec![(3, 1)];
                    s.scale = vec![2];
                    s.wakeups_at = 2;
                    s.idle_window = Duration::from_secs(1);
                    s.jitter = Duration::from_secs(2);
                }
                other => bail!("unknown argument {other:?}; {USAGE}"),
            }
        }
        if s.runtimes.is_empty() {
            bail!("--runtimes: name at least one runtime");
        }
        if s.iterations == 0 {
            bail!("--iterations: at least 1");
        }
        if s.only.is_empty() {
            bail!("--only: name at least one section");
        }
        Ok(s)
    }

    /// Whether the run measures `section` (one of [`SECTIONS`]).
    fn runs(&self, section: &str) -> bool {
        self.only.contains(&section)
    }

    /// Progress steps, one per sample the run takes.
    fn steps(&self) -> u64 {
        let legs = self.runtimes.len();
        let rounds = self.iterations + 1;
        let churn: usize = self.churn.iter().map(|(_, b)| b).sum();
        let part = |section: &str, steps: usize| if self.runs(section) { steps } else { 0 };
        (legs
            * (part("idle", 1)
                + part("pod-start", rounds * 2)
                + part("lifecycle", rounds * (1 + self.execs_per_round))
                + part("churn", churn)
                + part("scale", self.scale.len())
                + part("jitter", 1)
                + 1)
            + part("jitter", 1)) as u64
    }
}

/// A peer as the harness calls it.
struct Leg<'a> {
    peer: &'a Peer,
    client: RuntimeServiceClient<Channel>,
    logs: PathBuf,
    /// Names pods and containers uniquely within the run.
    serial: usize,
}

/// What a pod runs: one container.
#[derive(Clone, Default)]
pub(crate) struct PodSpec {
    pub(crate) host_network: bool,
    pub(crate) image: String,
    pub(crate) command: Vec<String>,
    /// The container's `linux.resources` (a kubelet's cpuset, a Guaranteed container's limits).
    pub(crate) resources: Option<v1::LinuxContainerResources>,
    pub(crate) mounts: Vec<v1::Mount>,
    /// RunPodSandbox's runtime handler ("" for the default).
    pub(crate) handler: String,
    pub(crate) annotations: HashMap<String, String>,
    /// Capabilities added to the container (`SYS_NICE`).
    pub(crate) capabilities: Vec<String>,
}

/// One runtime's CRI client and where its pods go.
#[derive(Clone)]
pub(crate) struct Target {
    runtime: &'static str,
    client: RuntimeServiceClient<Channel>,
    cgroup_parent: String,
    logs: PathBuf,
}

impl Leg<'_> {
    fn target(&self) -> Target {
        Target {
            runtime: self.peer.name(),
            client: self.client.clone(),
            cgroup_parent: self.peer.cgroup_parent.clone(),
            logs: self.logs.clone(),
        }
    }

    fn name(&mut self, what: &str) -> String {
        self.serial += 1;
        let short = match self.peer.kind {
            Kind::Ingot => "ingot",
            Kind::Containerd16Runc => "c16",
            Kind::Containerd21Runc => "c21",
            Kind::Containerd16Crun => "crun",
            Kind::CrioRunc => "crio",
        };
        format!("{short}-{what}-{}", self.serial)
    }
}

impl Target {
    fn pod_config(&self, name: &str, spec: &PodSpec) -> v1::PodSandboxConfig {
        v1::PodSandboxConfig {
            metadata: Some(v1::PodSandboxMetadata {
                name: name.into(),
                namespace: "bench".into(),
                uid: format!("uid-{name}"),
                attempt: 0,
            }),
            annotations: spec.annotations.clone(),
            log_directory: self.logs.join(name).display().to_string(),
            linux: Some(v1::LinuxPodSandboxConfig {
                cgroup_parent: format!("{}/{name}", self.cgroup_parent),
                security_context: Some(v1::LinuxSandboxSecurityContext {
                    namespace_options: Some(namespaces(spec)),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn container_config(&self, name: &str, spec: &PodSpec) -> v1::ContainerConfig {
        v1::ContainerConfig {
            metadata: Some(v1::ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(v1::ImageSpec {
                image: spec.image.clone(),
                user_specified_image: spec.image.clone(),
                ..Default::default()
            }),
            command: spec.command.clone(),
            log_path: format!("{name}.log"),
            mounts: spec.mounts.clone(),
            // The pod's namespaces, as the kubelet repeats them for each container.
            linux: Some(v1::LinuxContainerConfig {
                resources: spec.resources.clone(),
                security_context: Some(v1::LinuxContainerSecurityContext {
                    namespace_options: Some(namespaces(spec)),
                    capabilities: (!spec.capabilities.is_empty()).then(|| v1::Capability {
                        add_capabilities: spec.capabilities.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }
    }

    pub(crate) fn new(
        runtime: &'static str,
        client: RuntimeServiceClient<Channel>,
        cgroup_parent: &str,
        logs: &Path,
    ) -> Self {
        Target {
            runtime,
            client,
            cgroup_parent: cgroup_parent.into(),
            logs: logs.into(),
        }
    }

    /// RunPodSandbox, CreateContainer and StartContainer, as the kubelet starts a pod; the pod's
    /// and the container's ids.
    pub(crate) async fn start_pod(
        &mut self,
        name: &str,
        spec: &PodSpec,
    ) -> Result<(String, String)> {
        let (pod, container, _) = self.start_pod_timed(name, spec).await?;
        Ok((pod, container))
    }

    /// [`Target::start_pod`], with the time of each of its three calls.
    pub(crate) async fn start_pod_timed(
        &mut self,
        name: &str,
        spec: &PodSpec,
    ) -> Result<(String, String, [Duration; 3])> {
        let config = self.pod_config(name, spec);
        let mut phase = Instant::now();
        let pod = self
            .client
            .run_pod_sandbox(v1::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: spec.handler.clone(),
            })
            .await
            .with_context(|| format!("{}: RunPodSandbox {name}", self.runtime))?
            .into_inner()
            .pod_sandbox_id;
        let run = phase.elapsed();
        phase = Instant::now();
        let container = self.create_container(&pod, &config, "app", spec).await?;
        let create = phase.elapsed();
        phase = Instant::now();
        self.start(&container).await?;
        Ok((pod, container, [run, create, phase.elapsed()]))
    }

    async fn start_container(
        &mut self,
        pod: &str,
        config: &v1::PodSandboxConfig,
        name: &str,
        spec: &PodSpec,
    ) -> Result<String> {
        let container = self.create_container(pod, config, name, spec).await?;
        self.start(&container).await?;
        Ok(container)
    }

    async fn create_container(
        &mut self,
        pod: &str,
        config: &v1::PodSandboxConfig,
        name: &str,
        spec: &PodSpec,
    ) -> Result<String> {
        let container = self
            .client
            .create_container(v1::CreateContainerRequest {
                pod_sandbox_id: pod.into(),
                config: Some(self.container_config(name, spec)),
                sandbox_config: Some(config.clone()),
            })
            .await
            .with_context(|| format!("{}: CreateContainer {name}", self.runtime))?
            .into_inner()
            .container_id;
        Ok(container)
    }

    async fn start(&mut self, container: &str) -> Result<()> {
        self.client
            .start_container(v1::StartContainerRequest {
                container_id: container.into(),
            })
            .await
            .with_context(|| format!("{}: StartContainer {container}", self.runtime))?;
        Ok(())
    }

    /// StopPodSandbox and RemovePodSandbox, as the kubelet ends a pod.
    pub(crate) async fn end_pod(&mut self, pod: &str) -> Result<()> {
        self.client
            .stop_pod_sandbox(v1::StopPodSandboxRequest {
                pod_sandbox_id: pod.into(),
            })
            .await
            .with_context(|| format!("{}: StopPodSandbox {pod}", self.runtime))?;
        self.client
            .remove_pod_sandbox(v1::RemovePodSandboxRequest {
                pod_sandbox_id: pod.into(),
            })
            .await
            .with_context(|| format!("{}: RemovePodSandbox {pod}", self.runtime))?;
        Ok(())
    }

    async fn exec_true(&mut self, container: &str) -> Result<()> {
        let out = self
            .client
            .exec_sync(v1::ExecSyncRequest {
                container_id: container.into(),
                cmd: vec!["true".into()],
                timeout: 10,
            })
            .await
            .with_context(|| format!("{}: ExecSync", self.runtime))?
            .into_inner();
        if out.exit_code != 0 {
            bail!("{}: ExecSync true exited {}", self.runtime, out.exit_code);
        }
        Ok(())
    }

    /// Polls ContainerStatus every `poll`, as the kubelet's PLEG does, until the container has
    /// exited.
    async fn wait_exited(
        &mut self,
        container: &str,
        timeout: Duration,
        poll: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self
                .client
                .container_status(v1::ContainerStatusRequest {
                    container_id: container.into(),
                    verbose: false,
                })
                .await
                .with_context(|| format!("{}: ContainerStatus", self.runtime))?
                .into_inner()
                .status
                .context("ContainerStatus without a status")?;
            if status.state == v1::ContainerState::ContainerExited as i32 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{}: container {container} still running after {timeout:?}",
                    self.runtime
                );
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// Every pod the runtime lists, stopped and removed.
    async fn end_all(&mut self) -> Result<()> {
        let pods = self
            .client
            .list_pod_sandbox(v1::ListPodSandboxRequest { filter: None })
            .await
            .with_context(|| format!("{}: ListPodSandbox", self.runtime))?
            .into_inner()
            .items;
        let ids: Vec<String> = pods.into_iter().map(|p| p.id).collect();
        self.end_pods(ids).await
    }

    /// Ends `pods`, `SETUP_PARALLEL` at a time.
    async fn end_pods(&mut self, pods: Vec<String>) -> Result<()> {
        for chunk in pods.chunks(SETUP_PARALLEL) {
            let mut ending = tokio::task::JoinSet::new();
            for pod in chunk {
                let mut target = self.clone();
                let pod = pod.clone();
                ending.spawn(async move { target.end_pod(&pod).await });
            }
            while let Some(done) = ending.join_next().await {
                done.context("end task")??;
            }
        }
        Ok(())
    }
}

/// The host's network or the pod's own, and a PID namespace per container (the kubelet's
/// default).
fn namespaces(spec: &PodSpec) -> v1::NamespaceOption {
    v1::NamespaceOption {
        network: if spec.host_network {
            v1::NamespaceMode::Node as i32
        } else {
            v1::NamespaceMode::Pod as i32
        },
        pid: v1::NamespaceMode::Container as i32,
        ..Default::default()
    }
}

/// A pod of one `sleep` container of the bench image.
pub(crate) fn busybox(host_network: bool, image: &str) -> PodSpec {
    PodSpec {
        host_network,
        image: image.into(),
        command: vec!["sleep".into(), "100000".into()],
        ..Default::default()
    }
}

/// A container on `cpus`, as the kubelet's static CPU manager sends it.
fn cpuset(cpus: &str) -> v1::LinuxContainerResources {
    v1::LinuxContainerResources {
        cpuset_cpus: cpus.into(),
        ..Default::default()
    }
}

/// The CPUs of this machine: (the one the pinned pod gets, the rest as a cpuset).
fn pinned_and_shared() -> Result<(usize, String)> {
    let cpus = std::thread::available_parallelism()?.get();
    if cpus < 2 {
        bail!("the jitter metric needs two CPUs or more (one exclusive)");
    }
    let pinned = cpus - 1;
    let shared = if pinned == 1 {
        "0".to_string()
    } else {
        format!("0-{}", pinned - 1)
    };
    Ok((pinned, shared))
}

/// An image holding busybox and the host's `cyclictest` with the libraries it links.
fn cyclictest_archive(archive: &Path) -> Result<()> {
    let work = tempfile::tempdir()?;
    let rootfs = work.path().join("rootfs");
    ingot_tests::busybox_rootfs(&rootfs)?;
    let binary = Path::new("/usr/bin/cyclictest");
    if !binary.exists() {
        bail!("/usr/bin/cyclictest is missing (Debian package rt-tests)");
    }
    let ldd = std::process::Command::new("ldd")
        .arg(binary)
        .output()
        .context("ldd /usr/bin/cyclictest")?;
    let mut files = vec![binary.to_path_buf()];
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        // `libnuma.so.1 => /lib/x86_64-linux-gnu/libnuma.so.1 (0x...)`, or the loader's own path.
        if let Some(path) = line
            .split_whitespace()
            .find(|w| w.starts_with('/'))
            .map(PathBuf::from)
        {
            files.push(path);
        }
    }
    for file in files {
        let to = rootfs.join(file.strip_prefix("/")?);
        fs::create_dir_all(to.parent().context("parent")?)?;
        fs::copy(&file, &to).with_context(|| format!("copy {}", file.display()))?;
    }
    ingot_tests::oci_archive(&rootfs, archive, CYCLICTEST, &["cyclictest"])
}

/// `cyclictest` on CPU `cpu` for `duration`, its measuring thread SCHED_FIFO at
/// [`JITTER_PRIORITY`], its histogram written to `histfile` (`--laptop` leaves
/// /dev/cpu_dma_latency alone).
fn cyclictest_args(cpu: usize, duration: Duration, histfile: &str) -> Vec<String> {
    [
        "cyclictest",
        "-q",
        "-t1",
        "-a",
        &cpu.to_string(),
        "-i",
        "1000",
        "-D",
        &duration.as_secs().max(1).to_string(),
        "-h",
        "100000",
        "--laptop",
        "--policy=fifo",
        "-p",
        &JITTER_PRIORITY.to_string(),
        &format!("--histfile={histfile}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Each latency (us) that cyclictest's histogram file counts; overflows count as its maximum.
fn histogram_samples(text: &str) -> Result<Vec<f64>> {
    let mut samples = Vec::new();
    let mut max = None;
    let mut overflows = 0usize;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("# Max Latencies:") {
            max = v
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<f64>().ok());
        } else if let Some(v) = line.strip_prefix("# Histogram Overflows:") {
            overflows = v
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
        } else if !line.starts_with('#') {
            let mut fields = line.split_whitespace();
            if let (Some(bucket), Some(count)) = (fields.next(), fields.next()) {
                let bucket: f64 = bucket.parse().context("cyclictest histogram bucket")?;
                let count: usize = count.parse().context("cyclictest histogram count")?;
                samples.extend(std::iter::repeat_n(bucket, count));
            }
        }
    }
    let max = max.context("cyclictest histogram without `# Max Latencies`")?;
    samples.extend(std::iter::repeat_n(max, overflows));
    if samples.is_empty() {
        bail!("cyclictest measured nothing");
    }
    Ok(samples)
}

pub(crate) fn run(settings: Settings) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run_async(settings))
}

async fn run_async(s: Settings) -> Result<()> {
    let bar = if s.quiet {
        ProgressBar::with_draw_target(Some(s.steps()), ProgressDrawTarget::hidden())
    } else {
        let bar = ProgressBar::new(s.steps());
        bar.set_style(
            ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
                .context("progress style")?
                .progress_chars("=> "),
        );
        bar
    };
    bar.set_message("starting the runtimes");
    let netns = TestNetns::create()?;
    let registry = Registry::start_in(Some(&netns))?;
    registry.push_test_image(IMAGE)?;
    let pause = registry.dir.path().join("pause.tar");
    ingot_tests::busybox_oci_archive_with_cmd(&pause, PAUSE, &["sleep", "2147483647"])?;
    registry.push_archive(&pause, PAUSE)?;
    let cyclictest = registry.dir.path().join("cyclictest.tar");
    cyclictest_archive(&cyclictest)?;
    registry.push_archive(&cyclictest, CYCLICTEST)?;
    let shared = shared_dir();
    let mut peers = Vec::new();
    for kind in &s.runtimes {
        bar.set_message(format!("starting {}", kind.name()));
        peers.push(Peer::start(
            *kind,
            &netns,
            &registry.address,
            PAUSE,
            &shared,
        )?);
    }
    // The pods' log directories, which a kubelet makes and removes, on a tmpfs: on this
    // machine's disk (an ext4 without a journal) each one made scanned the inodes every runtime
    // freed in the last minute, a cost journaled ext4 and xfs do not have, and a runtime paid
    // for the deletions of the one before it.
    let logs = LogsTmpfs::new()?;
    let mut legs = Vec::new();
    for peer in &peers {
        legs.push(Leg {
            peer,
            client: runtime_client(&peer.socket).await,
            logs: logs.path().join(peer.name()),
            serial: 0,
        });
    }
    let mut report = Report {
        command: s.command.clone(),
        machine: machine(),
        date: date(),
        runtimes: Vec::new(),
        metrics: Vec::new(),
        targets: Vec::new(),
        notes: Vec::new(),
    };
    let interrupted = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        anyhow::Ok(())
    };
    let outcome = tokio::select! {
        done = measure(&s, &registry.address, &mut legs, &mut report, &bar) => done,
        _ = interrupted => Err(anyhow::anyhow!("interrupted: removing what the run started")),
    };
    bar.set_message("removing every pod");
    for leg in &mut legs {
        if let Err(e) = tokio::time::timeout(Duration::from_secs(120), leg.target().end_all())
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")))
        {
            eprintln!(
                "{}: removing its pods: {e:#} (its cgroups and processes are ended by pid)",
                leg.peer.name()
            );
        }
    }
    bar.finish_and_clear();
    drop(legs);
    if let Err(e) = &outcome {
        for peer in &peers {
            eprintln!("{}'s log: {}", peer.name(), peer.log().display());
        }
        // Keep the logs readable: the peers' dirs go with them, so copy each log first.
        let keep = std::env::temp_dir().join(format!("ingot-bench-logs-{}", std::process::id()));
        if fs::create_dir_all(&keep).is_ok() {
            for peer in &peers {
                let _ = fs::copy(peer.log(), keep.join(format!("{}.log", peer.name())));
            }
            eprintln!("the daemons' logs are kept in {}", keep.display());
        }
        drop(peers);
        return Err(anyhow::anyhow!("{e:#}"));
    }
    drop(peers);
    report.judge();
    print!("{}", report.table());
    if let Some(path) = &s.json {
        report.write_json(path)?;
        println!("\nJSON: {}", path.display());
    }
    if let Some(path) = &s.svg {
        report.write_svg(path)?;
        println!("SVG: {}", path.display());
    }
    Ok(())
}

/// `uname -r`, the CPUs and the cgroup layout.
fn machine() -> String {
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let layout = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "cgroup v2"
    } else {
        "cgroup v1"
    };
    format!("Linux {}, {cpus} CPUs, {layout}", kernel.trim())
}

fn date() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn measure(
    s: &Settings,
    registry: &str,
    legs: &mut [Leg<'_>],
    report: &mut Report,
    bar: &ProgressBar,
) -> Result<()> {
    let image = format!("{registry}/{IMAGE}");
    let cyclictest = format!("{registry}/{CYCLICTEST}");
    for leg in legs.iter_mut() {
        let version = leg
            .client
            .version(v1::VersionRequest::default())
            .await
            .with_context(|| format!("{}: Version", leg.peer.name()))?
            .into_inner();
        report.runtimes.push(Runtime {
            name: leg.peer.name().into(),
            version: format!("{} {}", version.runtime_name, version.runtime_version),
        });
        for reference in [&image, &format!("{registry}/{PAUSE}"), &cyclictest] {
            ingot_tests::cri::pull(&leg.peer.socket, reference)
                .await
                .with_context(|| format!("{}: PullImage {reference}", leg.peer.name()))?;
        }
    }

    // Idle, no pods: each daemon alone over the window while the others idle too.
    if s.runs("idle") {
        for leg in legs.iter_mut() {
            bar.set_message(format!("idle: {}", leg.peer.name()));
            idle(s, leg, 0, report).await?;
            bar.inc(1);
        }
    }

    // Pod start, host network then CNI network, interleaved pod by pod; round 0 warms up.
    if s.runs("pod-start") {
        for round in 0..=s.iterations {
            for (id, title, host) in [
                ("pod-start-host", "pod start, host network", true),
                ("pod-start-cni", "pod start, CNI network", false),
            ] {
                for leg in legs.iter_mut() {
                    bar.set_message(format!("{title}: {}", leg.peer.name()));
                    let name = leg.name(if host { "host" } else { "cni" });
                    let mut target = leg.target();
                    let started = Instant::now();
                    let (pod, _, phases) = target
                        .start_pod_timed(&name, &busybox(host, &image))
                        .await?;
                    let took = started.elapsed();
                    target.end_pod(&pod).await?;
                    if round > 0 {
                        report.add(id, title, "ms", leg.peer.name(), vec![ms(took)]);
                        // Where a host-network pod start goes, call by call.
                        if host {
                            for (phase, call) in phases.iter().zip(POD_START_CALLS) {
                                report.add(
                                    &format!("{id}-{}", call.to_lowercase()),
                                    &format!("{title}: {call}"),
                                    "ms",
                                    leg.peer.name(),
                                    vec![ms(*phase)],
                                );
                            }
                        }
                    }
                    bar.inc(1);
                }
            }
        }
    }

    // Container lifecycle and ExecSync in one long-lived pod per runtime.
    if s.runs("lifecycle") {
        let mut long_lived = Vec::new();
        for leg in legs.iter_mut() {
            let name = leg.name("long");
            let spec = busybox(true, &image);
            let mut target = leg.target();
            let (pod, container) = target.start_pod(&name, &spec).await?;
            long_lived.push((pod, container, target.pod_config(&name, &spec)));
        }
        let true_spec = PodSpec {
            host_network: true,
            image: image.clone(),
            command: vec!["true".into()],
            ..Default::default()
        };
        for round in 0..=s.iterations {
            for (leg, (pod, container, config)) in legs.iter_mut().zip(&long_lived) {
                bar.set_message(format!("lifecycle and ExecSync: {}", leg.peer.name()));
                let name = leg.name("true");
                let mut target = leg.target();
                let started = Instant::now();
                let id = target
                    .start_container(pod, config, &name, &true_spec)
                    .await?;
                target
                    .wait_exited(&id, Duration::from_secs(30), Duration::from_millis(1))
                    .await?;
                target
                    .client
                    .remove_container(v1::RemoveContainerRequest {
                        container_id: id.clone(),
                    })
                    .await
                    .with_context(|| format!("{}: RemoveContainer", leg.peer.name()))?;
                let took = started.elapsed();
                bar.inc(1);
                let mut execs = Vec::new();
                for _ in 0..s.execs_per_round {
                    let started = Instant::now();
                    target.exec_true(container).await?;
                    execs.push(ms(started.elapsed()));
                    bar.inc(1);
                }
                if round > 0 {
                    let name = leg.peer.name();
                    report.add(
                        "lifecycle",
                        "container create+start+wait+remove of `true`",
                        "ms",
                        name,
                        vec![ms(took)],
                    );
                    report.add("exec", "ExecSync of `true`", "ms", name, execs);
                }
            }
        }
        for (leg, (pod, _, _)) in legs.iter_mut().zip(&long_lived) {
            leg.target().end_pod(pod).await?;
        }
    }

    // Churn: N pods started at once until all run (the sample), then all removed.
    if s.runs("churn") {
        // As pod start's round 0: a runtime's first burst pays what it does once (the CNI
        // bridge made, the image's first use), so each runtime runs one first, not a sample.
        if let Some((pods, _)) = s.churn.first() {
            for leg in legs.iter_mut() {
                bar.set_message(format!("churn warm-up: {}", leg.peer.name()));
                procs::settle(SETTLE_LIMIT).await;
                churn(leg, *pods, &image, None).await?;
            }
        }
        for (pods, bursts) in &s.churn {
            for _ in 0..*bursts {
                for leg in legs.iter_mut() {
                    bar.set_message(format!("churn of {pods}: {}", leg.peer.name()));
                    // Each burst starts on a quiet machine: the one before it (another
                    // runtime's, as often as not) leaves teardown work behind.
                    if procs::settle(SETTLE_LIMIT).await >= SETTLE_LIMIT {
                        report.notes.push(format!(
                            "churn of {pods}, {}: the CPUs were still busy {SETTLE_LIMIT:?} \
                             after the burst before",
                            leg.peer.name()
                        ));
                    }
                    let took = churn(leg, *pods, &image, s.marks.as_deref()).await?;
                    report.add(
                        &format!("churn-{pods}"),
                        &format!("churn, {pods} pods at once"),
                        "ms",
                        leg.peer.name(),
                        vec![ms(took)],
                    );
                    bar.inc(1);
                }
            }
        }
    }

    // Scale: per-pod cost with growing counts of idle pods, one runtime at a time.
    if s.runs("scale") {
        for leg in legs.iter_mut() {
            scale(s, leg, &image, report, bar).await?;
        }
    }

    // Jitter: cyclictest on the exclusive CPU, on the bare host, then in a pinned pod of each
    // runtime while the harness churns its other pods on the other CPUs.
    if s.runs("jitter") {
        bar.set_message("jitter: the bare host");
        if let Some(first) = legs.first_mut() {
            if let Err(e) = jitter_host(s, first, &image, report).await {
                report
                    .notes
                    .push(format!("host: jitter not measured: {e:#}"));
            }
        }
        for leg in legs.iter_mut() {
            bar.set_message(format!("jitter: {}", leg.peer.name()));
            // A runtime whose pod cannot run cyclictest is reported, not fatal to the run.
            if let Err(e) = jitter(s, leg, &image, &cyclictest, report).await {
                report
                    .notes
                    .push(format!("{}: jitter not measured: {e:#}", leg.peer.name()));
            }
            bar.inc(1);
        }
        bar.inc(1);
    }

    // What each daemon holds once a whole run's pods are gone.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for leg in legs.iter_mut() {
        let rss = procs::smaps_field(leg.peer.daemon_pid, "Rss:");
        report.add(
            "daemon-rss-after",
            "daemon RSS after the run, pods removed",
            "KiB",
            leg.peer.name(),
            vec![rss as f64],
        );
        bar.inc(1);
    }
    Ok(())
}

/// The daemon's RSS and wakeups over the idle window with `pods` pods.
async fn idle(s: &Settings, leg: &Leg<'_>, pods: usize, report: &mut Report) -> Result<()> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = leg.peer.daemon_pid;
    let rss = procs::smaps_field(pid, "Rss:");
    let wakeups = procs::wakeups(&[pid], s.idle_window).await;
    let name = leg.peer.name();
    report.add(
        &format!("daemon-rss-{pods}"),
        &format!("daemon RSS, {pods} pods"),
        "KiB",
        name,
        vec![rss as f64],
    );
    report.add(
        &format!("daemon-wakeups-{pods}"),
        &format!("daemon wakeups, {pods} idle pods"),
        "wakeups/s",
        name,
        vec![wakeups],
    );
    Ok(())
}

/// A temporary directory with a tmpfs on it, unmounted before it is removed.
struct LogsTmpfs(tempfile::TempDir);

impl LogsTmpfs {
    fn new() -> Result<LogsTmpfs> {
        let dir = tempfile::Builder::new()
            .prefix("ingot-bench-logs")
            .tempdir()?;
        ingot_tests::mount_tmpfs(dir.path())?;
        Ok(LogsTmpfs(dir))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for LogsTmpfs {
    fn drop(&mut self) {
        ingot_tests::unmount_below(self.0.path());
    }
}

/// The longest a churn burst waits for the machine to settle.
const SETTLE_LIMIT: Duration = Duration::from_secs(10);

async fn churn(
    leg: &mut Leg<'_>,
    pods: usize,
    image: &str,
    marks: Option<&Path>,
) -> Result<Duration> {
    let mark_start = monotonic_ns();
    let started = Instant::now();
    let mut starting = tokio::task::JoinSet::new();
    for _ in 0..pods {
        let mut target = leg.target();
        let name = leg.name("churn");
        let spec = busybox(false, image);
        starting.spawn(async move { target.start_pod(&name, &spec).await });
    }
    let mut started_pods = Vec::with_capacity(pods);
    let mut failed = None;
    while let Some(done) = starting.join_next().await {
        match done.context("churn task")? {
            Ok((pod, _)) => started_pods.push(pod),
            Err(e) => failed = Some(e),
        }
    }
    let took = started.elapsed();
    if let Some(marks) = marks {
        let line = format!("{mark_start} {}\n", monotonic_ns());
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(marks)
            .and_then(|mut file| std::io::Write::write_all(&mut file, line.as_bytes()))
            .with_context(|| format!("--marks: append to {}", marks.display()))?;
    }
    let ended = leg.target().end_pods(started_pods).await;
    if let Some(e) = failed {
        return Err(e);
    }
    ended?;
    Ok(took)
}

/// CLOCK_MONOTONIC in ns, the clock `perf record -k CLOCK_MONOTONIC` stamps samples with.
fn monotonic_ns() -> u128 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| Duration::from(t).as_nanos())
        .unwrap_or_default()
}

async fn scale(
    s: &Settings,
    leg: &mut Leg<'_>,
    image: &str,
    report: &mut Report,
    bar: &ProgressBar,
) -> Result<()> {
    let name = leg.peer.name();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = procs::pss(&procs::owned(leg.peer));
    let mut pods: Vec<String> = Vec::new();
    let result = async {
        for size in &s.scale {
            bar.set_message(format!("{size} idle pods: {name}"));
            while pods.len() < *size {
                let batch = (*size - pods.len()).min(SETUP_PARALLEL);
                let mut starting = tokio::task::JoinSet::new();
                for _ in 0..batch {
                    let mut target = leg.target();
                    let pod_name = leg.name("idle");
                    let spec = busybox(true, image);
                    starting.spawn(async move { target.start_pod(&pod_name, &spec).await });
                }
                while let Some(done) = starting.join_next().await {
                    pods.push(done.context("scale task")??.0);
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            let owned = procs::owned(leg.peer);
            let total = procs::pss(&owned);
            let per_pod = total.saturating_sub(base) as f64 / *size as f64;
            report.add(
                &format!("pss-per-pod-{size}"),
                &format!("per-pod PSS of runtime processes, {size} pods"),
                "KiB",
                name,
                vec![per_pod],
            );
            report.add(
                &format!("daemon-rss-{size}"),
                &format!("daemon RSS, {size} pods"),
                "KiB",
                name,
                vec![procs::smaps_field(leg.peer.daemon_pid, "Rss:") as f64],
            );
            if *size == s.wakeups_at {
                let wakeups = procs::wakeups(&[leg.peer.daemon_pid], s.idle_window).await;
                report.add(
                    &format!("daemon-wakeups-{size}"),
                    &format!("daemon wakeups, {size} idle pods"),
                    "wakeups/s",
                    name,
                    vec![wakeups],
                );
                let all = procs::wakeups(&owned, s.idle_window).await;
                report.add(
                    &format!("owned-wakeups-{size}"),
                    &format!("wakeups of every runtime process, {size} idle pods"),
                    "wakeups/s",
                    name,
                    vec![all],
                );
            }
            bar.inc(1);
        }
        anyhow::Ok(())
    }
    .await;
    let ended = leg.target().end_pods(pods).await;
    result?;
    ended
}

/// cyclictest on the bare host, on the CPU the pinned pods get, while `leg` churns pods on the
/// other CPUs as in the pods' runs.
async fn jitter_host(
    s: &Settings,
    leg: &mut Leg<'_>,
    image: &str,
    report: &mut Report,
) -> Result<()> {
    let (cpu, _) = pinned_and_shared()?;
    let dir = tempfile::tempdir()?;
    let hist = dir.path().join("hist");
    let args = cyclictest_args(cpu, s.jitter, &hist.display().to_string());
    let measure = async {
        let status = tokio::process::Command::new("taskset")
            .args(["-c", &cpu.to_string()])
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .await
            .context("taskset (util-linux) and cyclictest (rt-tests)")?;
        if !status.success() {
            bail!("cyclictest on the host: {status}");
        }
        Ok(())
    };
    under_churn(leg, image, measure).await?;
    let samples = histogram_samples(&fs::read_to_string(&hist)?)?;
    report.add("jitter", JITTER_TITLE, "us", "host", samples);
    Ok(())
}

/// Runs `measure` while pods come and go in `leg` on the CPUs the pinned pod does not get,
/// each probed with ExecSync; the pod in flight when `measure` ends is removed before this
/// returns.
async fn under_churn<T>(
    leg: &mut Leg<'_>,
    image: &str,
    measure: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let (_, shared) = pinned_and_shared()?;
    let mut churner = leg.target();
    let spec = PodSpec {
        resources: Some(cpuset(&shared)),
        ..busybox(false, image)
    };
    let prefix = leg.name("jitter-churn");
    let stop = std::cell::Cell::new(false);
    let measured = async {
        let measured = measure.await;
        stop.set(true);
        measured
    };
    let churn = async {
        let mut i = 0;
        while !stop.get() {
            let (pod, container) = churner.start_pod(&format!("{prefix}-{i}"), &spec).await?;
            let probed = churner.exec_true(&container).await;
            churner.end_pod(&pod).await?;
            probed?;
            i += 1;
        }
        anyhow::Ok(())
    };
    let (measured, churned) = tokio::join!(measured, churn);
    let measured = measured?;
    churned.context("the pods churned meanwhile")?;
    Ok(measured)
}

const JITTER_TITLE: &str = "cyclictest latency on the exclusive CPU";
/// The three calls of a pod start, as the kubelet makes them.
const POD_START_CALLS: [&str; 3] = ["RunPodSandbox", "CreateContainer", "StartContainer"];
/// cyclictest's SCHED_FIFO priority, on the host and in the pods.
const JITTER_PRIORITY: u32 = 80;
/// ingot's runtime handler for the pinned pod: real time, admitted on a node that fails the
/// real-time checks (this one is not PREEMPT_RT), so that it gets its RT budget and class.
pub(crate) const INGOT_JITTER_HANDLER: &str = "bench-rt";
pub(crate) const INGOT_JITTER_CONFIG: &str =
    "[runtimes.bench-rt]\nrealtime = true\nrealtime_checks = \"warn\"\n";

/// How a fresh v1 cgroup refuses cyclictest's SCHED_FIFO, as the peers' pods show it.
const FIFO_REFUSED: &str = "Unable to change scheduling policy";
/// Present where cgroup v1 RT group scheduling gives each cpu cgroup its own RT budget.
const RT_GROUP_BUDGET: &str = "/sys/fs/cgroup/cpu/cpu.rt_runtime_us";

async fn jitter(
    s: &Settings,
    leg: &mut Leg<'_>,
    image: &str,
    cyclictest: &str,
    report: &mut Report,
) -> Result<()> {
    let (cpu, _) = pinned_and_shared()?;
    let out = tempfile::tempdir()?;
    // What a user of each runtime would ask for: CAP_SYS_NICE for the pinned container, and
    // on ingot its real-time pod (class, priority and the cgroup v1 RT budget a fresh cgroup
    // lacks). CRI has no field for that budget, so the peers' pods cannot run SCHED_FIFO here.
    let (handler, annotations) = if leg.peer.kind == Kind::Ingot {
        (
            INGOT_JITTER_HANDLER.to_string(),
            HashMap::from([
                (
                    "realtime.ingot.dev/sched-policy".to_string(),
                    "fifo".to_string(),
                ),
                (
                    "realtime.ingot.dev/sched-priority".to_string(),
                    JITTER_PRIORITY.to_string(),
                ),
            ]),
        )
    } else {
        (String::new(), HashMap::new())
    };
    let spec = PodSpec {
        host_network: true,
        image: cyclictest.into(),
        command: cyclictest_args(cpu, s.jitter, "/out/hist"),
        resources: Some(cpuset(&cpu.to_string())),
        mounts: vec![v1::Mount {
            container_path: "/out".into(),
            host_path: out.path().display().to_string(),
            ..Default::default()
        }],
        handler,
        annotations,
        capabilities: vec!["SYS_NICE".into()],
    };
    let name = leg.name("jitter");
    let mut target = leg.target();
    let (pod, container) = target.start_pod(&name, &spec).await?;
    // Polled seldom: the probe must not be the load on the pinned CPU.
    let mut waiter = target.clone();
    let wait = waiter.wait_exited(
        &container,
        s.jitter + Duration::from_secs(60),
        Duration::from_millis(250),
    );
    let waited = under_churn(leg, image, wait).await;
    let ended = target.end_pod(&pod).await;
    waited?;
    ended?;
    let hist = fs::read_to_string(out.path().join("hist")).map_err(|_| {
        let log = fs::read_to_string(target.logs.join(&name).join("app.log")).unwrap_or_default();
        if log.contains(FIFO_REFUSED) && Path::new(RT_GROUP_BUDGET).exists() {
            anyhow::anyhow!(
                "cyclictest was refused SCHED_FIFO in the pod (a fresh cgroup v1 cpu group has \
                 no cpu.rt_runtime_us budget, and CRI has no field to ask for one)"
            )
        } else if log.contains(FIFO_REFUSED) {
            anyhow::anyhow!("cyclictest was refused SCHED_FIFO in the pod; its log:\n{log}")
        } else {
            anyhow::anyhow!("cyclictest wrote no histogram; its log:\n{log}")
        }
    })?;
    report.add(
        "jitter",
        JITTER_TITLE,
        "us",
        leg.peer.name(),
        histogram_samples(&hist)?,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cyclictest_histograms_are_read_with_their_overflows() {
        let text = "# Histogram\n000000 000000\n000003 000002\n000007 000001\n# Total: 000000004\n\
                    # Min Latencies: 00003\n# Avg Latencies: 00005\n# Max Latencies: 00250\n\
                    # Histogram Overflows: 00001\n# Histogram Overflow at cycle number:\n# Thread 0: 00017\n";
        assert_eq!(
            histogram_samples(text).expect("parse"),
            vec![3.0, 3.0, 7.0, 250.0]
        );
        assert!(histogram_samples("# Histogram\n").is_err());
    }

    #[test]
    fn settings_name_what_is_wrong() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let e = Settings::parse(&args(&["run", "--runtimes", "docker"]))
            .err()
            .expect("refused");
        assert!(
            format!("{e:#}").contains("unknown runtime \"docker\""),
            "{e:#}"
        );
        let s =
            Settings::parse(&args(&["run", "--runtimes", "ingot,cri-o", "--smoke"])).expect("ok");
        assert_eq!(s.runtimes, vec![Kind::Ingot, Kind::CrioRunc]);
        assert_eq!(s.churn, vec![(3, 1)]);
        assert!(Settings::parse(&args(&["run", "--iterations"])).is_err());
        let s = Settings::parse(&args(&["run", "--churn", "10x20,50x1"])).expect("ok");
        assert_eq!(s.churn, vec![(10, 20), (50, 1)]);
        for bad in ["10", "0x3", "10x", "tenx2"] {
            let e = Settings::parse(&args(&["run", "--churn", bad]))
                .err()
                .expect("refused");
            assert!(format!("{e:#}").contains("--churn"), "{bad}: {e:#}");
        }
        let e = Settings::parse(&args(&["run", "--runtimes", "containerd"]))
            .err()
            .expect("refused");
        assert!(format!("{e:#}").contains("more than one runtime"), "{e:#}");
    }

    #[test]
    fn only_picks_sections_and_refuses_unknown_ones() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let all = Settings::parse(&args(&["run"])).expect("ok");
        assert!(SECTIONS.iter().all(|section| all.runs(section)));
        let s = Settings::parse(&args(&[
            "run",
            "--runtimes",
            "ingot",
            "--only",
            "churn,idle",
            "--smoke",
        ]))
        .expect("ok");
        assert!(s.runs("churn") && s.runs("idle"));
        assert!(!s.runs("pod-start") && !s.runs("jitter") && !s.runs("scale"));
        // One leg: idle (1) + churn bursts (1) + the memory after the run (1).
        assert_eq!(s.steps(), 3);
        assert!(s.steps() < all.steps());
        let e = Settings::parse(&args(&["run", "--only", "churn,exec"]))
            .err()
            .expect("refused");
        assert!(format!("{e:#}").contains("no section \"exec\""), "{e:#}");
        assert!(Settings::parse(&args(&["run", "--only", ""])).is_err());
    }
}
