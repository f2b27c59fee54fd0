//! `ingot-bench`: node runtimes side by side.
//!
//! `ingot-bench run [--runtimes NAME,...] [--iterations N] [--smoke] [--json FILE] [--svg FILE]
//! [--quiet]`: ingot, containerd 1.6 and 2.1 with runc, containerd with crun and CRI-O with
//! conmon and runc, each started privately, every metric over CRI, interleaved (see `run.rs`
//! and the README's performance section).
//!
//! `ingot-bench markdown FILE`: the README's performance figures from a run's JSON.
//!
//! `ingot-bench svg FILE OUT`: a run's distributions plotted again from its JSON.
//!
//! `ingot-bench placement [ITERATIONS]`: what exclusive CPU placement adds to a pod start (see
//! `placement.rs`).

mod peers;
mod placement;
mod procs;
mod report;
mod run;

use std::time::Duration;

use anyhow::{bail, Context, Result};
use ingot_tests::TEST_IMAGE;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("run") => run::run(run::Settings::parse(&args)?),
        Some("markdown") => {
            let path = args.get(1).context("usage: ingot-bench markdown FILE")?;
            print!("{}", report::Report::read_json(std::path::Path::new(path))?.markdown());
            Ok(())
        }
        Some("svg") => {
            let (Some(path), Some(out)) = (args.get(1), args.get(2)) else {
                bail!("usage: ingot-bench svg FILE OUT");
            };
            report::Report::read_json(std::path::Path::new(path))?
                .write_svg(std::path::Path::new(out))
        }
        Some("image") => {
            let path = args.get(1).map_or("busybox-oci.tar", String::as_str);
            ingot_tests::busybox_oci_archive(std::path::Path::new(path), TEST_IMAGE)?;
            println!("wrote {path} ({TEST_IMAGE})");
            Ok(())
        }
        Some("placement") => {
            let iterations = match args.get(1) {
                Some(n) => n.parse().context("ITERATIONS")?,
                None => 30,
            };
            placement::run(iterations)
        }
        _ => bail!(
            "usage: ingot-bench run [--runtimes NAME,...] [--iterations N] [--smoke] [--json FILE] [--svg FILE] [--quiet] | ingot-bench markdown FILE | ingot-bench svg FILE OUT | ingot-bench placement [ITERATIONS] | ingot-bench image [ARCHIVE]"
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
