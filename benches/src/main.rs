//! `ingot-bench`: ingot against runc and crun under the same containerd, in one run.
//!
//! `ingot-bench lifecycle [ITERATIONS]`: create+start+wait+delete of a `true` container
//! (`ctr run --rm --null-io`) with ingot's shim, runc's shim (`io.containerd.runc.v2`) and runc's
//! shim with crun as its binary, alternating, then each shim's RSS/PSS and idle wakeups with 10
//! idle containers in one pod.
//!
//! `ingot-bench ingotd-idle`: ingotd's RSS/PSS, threads and wakeups while idle.
//!
//! `ingot-bench placement [ITERATIONS]`: what exclusive CPU placement adds to a pod start (see
//! `placement.rs`).
//!
//! `ingot-bench pods [ITERATIONS]`: pod start and ExecSync, churn of 10 and 50 pods at once,
//! and ingotd's memory after it all, ingotd against containerd's CRI plugin (see `pods.rs`).

mod placement;
mod pods;

use std::{
    fs,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use ingot_tests::{Containerd, INGOT_RUNTIME, RUNC_RUNTIME, SHIM_BINARY, TEST_IMAGE};

struct Leg<'a> {
    name: &'static str,
    containerd: &'a Containerd,
    runtime: &'static str,
    binary: Option<&'static str>,
    shim: &'static str,
    samples: Vec<Duration>,
}

impl Leg<'_> {
    fn run_args<'b>(&'b self, extra: &[&'b str]) -> Vec<&'b str> {
        let mut args = vec!["run", "--runtime", self.runtime];
        if let Some(binary) = self.binary {
            args.extend(["--runc-binary", binary]);
        }
        args.extend_from_slice(extra);
        args
    }
}

const IDLE_WINDOW: Duration = Duration::from_secs(10);

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("image") => {
            let path = args.get(1).map_or("busybox-oci.tar", String::as_str);
            ingot_tests::busybox_oci_archive(std::path::Path::new(path), TEST_IMAGE)?;
            println!("wrote {path} ({TEST_IMAGE})");
            Ok(())
        }
        Some("lifecycle") => {
            let iterations = match args.get(1) {
                Some(n) => n.parse().context("ITERATIONS")?,
                None => 30,
            };
            lifecycle(iterations)
        }
        Some("ingotd-idle") => ingotd_idle(),
        Some("placement") => {
            let iterations = match args.get(1) {
                Some(n) => n.parse().context("ITERATIONS")?,
                None => 30,
            };
            placement::run(iterations)
        }
        Some("pods") => {
            let iterations = match args.get(1) {
                Some(n) => n.parse().context("ITERATIONS")?,
                None => 20,
            };
            pods::run(iterations)
        }
        _ => bail!(
            "usage: ingot-bench lifecycle [ITERATIONS] | ingot-bench pods [ITERATIONS] | ingot-bench placement [ITERATIONS] | ingot-bench ingotd-idle | ingot-bench image [ARCHIVE]"
        ),
    }
}

/// The nearest-rank percentile (`percent` of 100) of sorted samples.
fn percentile(sorted: &[Duration], percent: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() - 1) * percent + 50) / 100;
    sorted[rank.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn lifecycle(iterations: usize) -> Result<()> {
    let main = Containerd::start()?;
    main.import_test_image()?;
    println!("crun leg: its containerd runs in a private mount namespace with an empty file bind-mounted");
    println!("over /sys/fs/cgroup/unified/cgroup.controllers (crun 1.8 refuses this host's hybrid layout).");
    let hidden = Containerd::start_hiding_unified_controllers()?;
    hidden.import_test_image()?;

    let mut legs = [
        Leg {
            name: "ingot",
            containerd: &main,
            runtime: INGOT_RUNTIME,
            binary: None,
            shim: SHIM_BINARY,
            samples: Vec::new(),
        },
        Leg {
            name: "runc",
            containerd: &main,
            runtime: RUNC_RUNTIME,
            binary: None,
            shim: "containerd-shim-runc-v2",
            samples: Vec::new(),
        },
        Leg {
            name: "crun",
            containerd: &hidden,
            runtime: RUNC_RUNTIME,
            binary: Some("crun"),
            shim: "containerd-shim-runc-v2",
            samples: Vec::new(),
        },
    ];

    // One untimed warm-up each, then alternate.
    for round in 0..=iterations {
        for leg in legs.iter_mut() {
            let id = format!("bench-{}-{round}", leg.name);
            let args = leg.run_args(&["--rm", "--null-io", TEST_IMAGE, &id, "true"]);
            let started = Instant::now();
            leg.containerd
                .ctr_ok(&args)
                .with_context(|| format!("{} leg", leg.name))?;
            if round > 0 {
                leg.samples.push(started.elapsed());
            }
        }
    }

    println!("\ncreate+start+wait+delete of `true` via `ctr run --rm` ({iterations} iterations each, alternating), ms");
    println!(
        "{:<8} {:>8} {:>8} {:>8} {:>8}",
        "runtime", "min", "p50", "p90", "max"
    );
    for leg in legs.iter_mut() {
        leg.samples.sort();
        let s = &leg.samples;
        println!(
            "{:<8} {:>8} {:>8} {:>8} {:>8}",
            leg.name,
            ms(s[0]),
            ms(percentile(s, 50)),
            ms(percentile(s, 90)),
            ms(s[s.len() - 1])
        );
    }

    println!("\nshim memory and idle wakeups with 10 idle containers in one pod");
    println!(
        "{:<8} {:>6} {:>10} {:>10} {:>8} {:>14}",
        "runtime", "shims", "RSS KiB", "PSS KiB", "threads", "wakeups/s"
    );
    for leg in &legs {
        let pod = format!("pod-{}", leg.name);
        let annotation = format!("io.kubernetes.cri.sandbox-id={pod}");
        for n in 0..10 {
            let id = format!("{pod}-{n}");
            let args = leg.run_args(&[
                "-d",
                "--null-io",
                "--annotation",
                &annotation,
                TEST_IMAGE,
                &id,
                "sleep",
                "100000",
            ]);
            leg.containerd.ctr_ok(&args)?;
        }
        let pids = ingot_tests::pids_with_cmdline(&[leg.shim, &leg.containerd.namespace]);
        let (mut rss, mut pss, mut threads) = (0, 0, 0);
        for pid in &pids {
            let (r, p) = smaps_rollup(*pid)?;
            rss += r;
            pss += p;
            threads += fs::read_dir(format!("/proc/{pid}/task"))?.count();
        }
        // Let the last start settle, then count wakeups while nothing happens.
        std::thread::sleep(Duration::from_secs(1));
        let before: u64 = pids.iter().map(|p| context_switches(*p)).sum();
        std::thread::sleep(IDLE_WINDOW);
        let after: u64 = pids.iter().map(|p| context_switches(*p)).sum();
        println!(
            "{:<8} {:>6} {:>10} {:>10} {:>8} {:>14.1}",
            leg.name,
            pids.len(),
            rss,
            pss,
            threads,
            (after - before) as f64 / IDLE_WINDOW.as_secs_f64()
        );
        for n in 0..10 {
            let id = format!("{pod}-{n}");
            leg.containerd
                .ctr_ok(&["tasks", "kill", "-s", "SIGKILL", &id])?;
        }
        for n in 0..10 {
            let id = format!("{pod}-{n}");
            let stopped = ingot_tests::wait_until(Duration::from_secs(10), || {
                leg.containerd.ctr_ok(&["tasks", "delete", &id]).is_ok()
            });
            if !stopped {
                bail!("{} leg: task {id} did not stop", leg.name);
            }
            leg.containerd.ctr_ok(&["containers", "delete", &id])?;
        }
    }
    Ok(())
}

/// ingotd's resident memory, threads and wakeups while idle (no requests), on its own temp dirs.
fn ingotd_idle() -> Result<()> {
    let dir = tempfile_dir()?;
    let config = dir.join("ingot.toml");
    fs::write(&config, "metrics_address = \"127.0.0.1:0\"\n")?;
    let binary = ingot_tests::target_dir()?.join("ingotd");
    let mut child = std::process::Command::new(&binary)
        .arg("--config")
        .arg(&config)
        .arg(format!(
            "--listen=unix://{}",
            dir.join("ingot.sock").display()
        ))
        .arg("--root")
        .arg(dir.join("lib"))
        .arg("--state")
        .arg(dir.join("run"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("start {}", binary.display()))?;
    let pid = i32::try_from(child.id()).context("pid")?;
    let listening =
        ingot_tests::wait_until(Duration::from_secs(10), || dir.join("ingot.sock").exists());
    std::thread::sleep(Duration::from_secs(1));
    let (rss, pss) = smaps_rollup(pid)?;
    let threads = fs::read_dir(format!("/proc/{pid}/task"))?.count();
    let before = context_switches(pid);
    std::thread::sleep(Duration::from_secs(5));
    let wakeups = (context_switches(pid) - before) as f64 / 5.0;
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
    let _ = fs::remove_dir_all(&dir);
    if !listening {
        bail!("ingotd did not listen");
    }
    println!(
        "ingotd idle: RSS {rss} KiB, PSS {pss} KiB, {threads} threads, {wakeups:.1} wakeups/s"
    );
    Ok(())
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("ingot-bench-{}", std::process::id()));
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// (Rss, Pss) in KiB from /proc/PID/smaps_rollup.
fn smaps_rollup(pid: i32) -> Result<(u64, u64)> {
    Ok((smaps_field(pid, "Rss:")?, smaps_field(pid, "Pss:")?))
}

/// One field (KiB) of /proc/PID/smaps_rollup, e.g. `Anonymous:`.
fn smaps_field(pid: i32, name: &str) -> Result<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0))
}

/// Voluntary + involuntary context switches over all threads: each is a wakeup.
fn context_switches(pid: i32) -> u64 {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .map(|task| {
            let status = fs::read_to_string(task.path().join("status")).unwrap_or_default();
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches"))
                .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}
