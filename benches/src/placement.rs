//! `ingot-bench placement [ITERATIONS]`: what CPU placement adds to a pod start. Two ingotd,
//! alternating in one run on the same network namespace, registry and image: one with the
//! `none` policy (every container on the shared pool) and one with `exclusive`, both with the
//! first CPU reserved (ingot's own work confined to it alike). Each starts the same pod, a Guaranteed container of 1 CPU, while another pod
//! runs beside it, and removes it again: under `exclusive` that is an allocation, a checkpoint,
//! the running pod's cpuset moved off the CPU and ingot's own threads pinned, then the reverse.
//! A third leg, `none` with the kubelet's cpuset naming the CPU `exclusive` hands out, separates
//! what placement does from what running on a CPU of its own costs (another CPU woken, the
//! process migrated). Reported: pod start and CreateContainer p50/p95 per leg and the
//! differences (target: placement adds at most 1 ms).

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ingot_tests::{
    cri::{runtime_client, Daemon, Options},
    Registry, TestNetns,
};
use k8s_cri::v1;

use crate::run::{busybox, PodSpec, Target, IMAGE};

/// The most placement may add to a pod start.
const TARGET: Duration = Duration::from_millis(1);

struct Leg {
    name: &'static str,
    /// The container's `cpuset_cpus`, as a kubelet with the static policy sends it.
    kubelet_cpus: String,
    daemon: Daemon,
    target: Target,
    start: Vec<Duration>,
    create: Vec<Duration>,
    phases: [Vec<Duration>; 3],
}

fn guaranteed_one_cpu() -> v1::LinuxContainerResources {
    v1::LinuxContainerResources {
        cpu_period: 100_000,
        cpu_quota: 100_000,
        cpu_shares: 1024,
        memory_limit_in_bytes: 64 << 20,
        ..Default::default()
    }
}

impl Leg {
    async fn start(
        name: &'static str,
        netns: &TestNetns,
        config: &str,
        kubelet_cpus: &str,
        image: &str,
    ) -> Result<Self> {
        let daemon = Daemon::start_with(Options {
            netns: Some(netns.path()),
            extra_config: config.to_string(),
            ..Default::default()
        });
        ingot_tests::cri::pull(&daemon.socket(), image)
            .await
            .with_context(|| format!("{name}: pull {image}"))?;
        let target = Target::new(
            name,
            runtime_client(&daemon.socket()).await,
            &daemon.cgroup_parent,
            &daemon.dir.path().join("bench-logs"),
        );
        Ok(Leg {
            name,
            kubelet_cpus: kubelet_cpus.to_string(),
            daemon,
            target,
            start: Vec::new(),
            create: Vec::new(),
            phases: Default::default(),
        })
    }

    async fn iteration(&mut self, n: usize, image: &str) -> Result<()> {
        let spec = PodSpec {
            resources: Some(v1::LinuxContainerResources {
                cpuset_cpus: self.kubelet_cpus.clone(),
                ..guaranteed_one_cpu()
            }),
            ..busybox(false, image)
        };
        let started = Instant::now();
        let (pod_id, _container_id, phases) = self
            .target
            .start_pod_timed(&format!("{}-{n}", self.name), &spec)
            .await?;
        self.start.push(started.elapsed());
        self.create.push(phases[1]);
        for (samples, phase) in self.phases.iter_mut().zip(phases) {
            samples.push(phase);
        }
        self.target.end_pod(&pod_id).await
    }
}

fn p(samples: &[Duration], percent: usize) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    crate::percentile(&sorted, percent)
}

pub fn run(iterations: usize) -> Result<()> {
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online")?;
    let first = online
        .trim()
        .split([',', '-'])
        .next()
        .context("no online CPU")?
        .to_string();
    let last = online
        .trim()
        .rsplit([',', '-'])
        .next()
        .context("no online CPU")?
        .to_string();
    if online.trim() == first {
        bail!(
            "placement needs two CPUs or more; this machine has {}",
            online.trim()
        );
    }
    let netns = TestNetns::create()?;
    let registry = Registry::start_in(Some(&netns))?;
    registry.push_test_image(IMAGE)?;
    let image = format!("{}/{IMAGE}", registry.address);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let none_config = format!("[placement]\npolicy = \"none\"\nreserved = \"{first}\"\n");
    let (none, kubelet, exclusive) = runtime.block_on(async {
        let mut legs = [
            Leg::start("none", &netns, &none_config, "", &image).await?,
            Leg::start("kubelet", &netns, &none_config, &last, &image).await?,
            Leg::start(
                "exclusive",
                &netns,
                &format!("[placement]\npolicy = \"exclusive\"\nreserved = \"{first}\"\n"),
                "",
                &image,
            )
            .await?,
        ];
        // A pod that stays up beside the measured ones: under `exclusive` its cpuset follows.
        let mut beside = Vec::new();
        for leg in &mut legs {
            beside.push(
                leg.target
                    .start_pod(&format!("{}-beside", leg.name), &busybox(false, &image))
                    .await?
                    .0,
            );
            // One warm-up pod each, not counted.
            leg.iteration(0, &image).await?;
            leg.start.clear();
            leg.create.clear();
            leg.phases = Default::default();
        }
        for n in 1..=iterations {
            for leg in &mut legs {
                leg.iteration(n, &image).await?;
            }
        }
        for (leg, pod_id) in legs.iter_mut().zip(beside) {
            leg.target.end_pod(&pod_id).await?;
        }
        let [none, kubelet, exclusive] = legs;
        Ok::<_, anyhow::Error>((none, kubelet, exclusive))
    })?;
    println!(
        "{iterations} pods per policy, alternating; a Guaranteed 1-CPU container, one pod running beside"
    );
    println!(
        "{:<10} {:>12} {:>12} {:>14} {:>14}",
        "policy", "start p50", "start p95", "create p50", "create p95"
    );
    for leg in [&none, &kubelet, &exclusive] {
        println!(
            "{:<10} {:>12} {:>12} {:>14} {:>14}",
            leg.name,
            crate::ms(p(&leg.start, 50)),
            crate::ms(p(&leg.start, 95)),
            crate::ms(p(&leg.create, 50)),
            crate::ms(p(&leg.create, 95)),
        );
    }
    println!("p50 by RPC: RunPodSandbox / CreateContainer / StartContainer");
    for leg in [&none, &kubelet, &exclusive] {
        println!(
            "{:<10} {:>10} {:>10} {:>10}",
            leg.name,
            crate::ms(p(&leg.phases[0], 50)),
            crate::ms(p(&leg.phases[1], 50)),
            crate::ms(p(&leg.phases[2], 50)),
        );
    }
    let added =
        |leg: &Leg, base: &Leg| crate::ms(p(&leg.start, 50).saturating_sub(p(&base.start, 50)));
    println!(
        "exclusive placement adds {} to a pod start p50 over the kubelet's own cpuset of the same CPU (target <= {}); running on a CPU of its own adds {} over the shared pool",
        added(&exclusive, &kubelet),
        crate::ms(TARGET),
        added(&kubelet, &none),
    );
    if let Ok(dir) = std::env::var("INGOT_BENCH_LOG_DIR") {
        for leg in [&none, &kubelet, &exclusive] {
            let to = std::path::Path::new(&dir).join(format!("ingotd-{}.log", leg.name));
            std::fs::copy(leg.daemon.dir.path().join("ingotd.log"), &to)?;
            println!("{}'s log: {}", leg.name, to.display());
        }
    }
    drop(none);
    drop(kubelet);
    drop(exclusive);
    drop(registry);
    drop(netns);
    Ok(())
}
