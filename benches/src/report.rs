//! A run's results: statistics per metric and runtime, the ratio to the best peer, the targets,
//! and their forms: a table for a person, JSON for a machine, an SVG of the distributions, and
//! the README's performance section (made from the JSON).

use std::{fmt::Write as _, path::Path};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// The most points a distribution's curve has in the SVG.
const CDF_POINTS: usize = 500;

/// ingot's name among the runtimes.
pub(crate) const INGOT: &str = "ingot";

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub(crate) struct Stats {
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub n: usize,
}

impl Stats {
    /// Nearest-rank percentiles of `samples` (none: all zero).
    pub(crate) fn of(samples: &[f64]) -> Stats {
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let at = |percent: usize| -> f64 {
            if sorted.is_empty() {
                return 0.0;
            }
            let rank = ((sorted.len() - 1) * percent + 50) / 100;
            sorted[rank.min(sorted.len() - 1)]
        };
        Stats {
            min: at(0),
            p50: at(50),
            p90: at(90),
            p99: at(99),
            max: at(100),
            n: sorted.len(),
        }
    }
}

/// One metric's samples for one runtime.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub(crate) struct Metric {
    /// A stable key, e.g. `pod-start-host`, `churn-10`, `pss-per-pod-100`.
    pub id: String,
    pub title: String,
    /// `ms`, `KiB`, `wakeups/s` or `us`; lower is better for every metric.
    pub unit: String,
    pub runtime: String,
    pub samples: Vec<f64>,
    pub stats: Stats,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub(crate) struct Runtime {
    pub name: String,
    pub version: String,
}

/// One target of the benchmark, judged from this run.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub(crate) struct Target {
    pub what: String,
    pub ingot: f64,
    /// The peer it is judged against and that peer's figure (absent for absolute bounds).
    pub peer: Option<String>,
    pub peer_value: Option<f64>,
    /// The bound on ingot's figure this run implies.
    pub bound: f64,
    pub met: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub(crate) struct Report {
    /// The command line that made the run.
    pub command: String,
    /// `uname -r`, CPUs and the cgroup layout.
    pub machine: String,
    /// When it ran (UTC, RFC 3339).
    pub date: String,
    pub runtimes: Vec<Runtime>,
    pub metrics: Vec<Metric>,
    pub targets: Vec<Target>,
    /// What the run could not measure, and why.
    #[serde(default)]
    pub notes: Vec<String>,
}

impl Report {
    pub(crate) fn add(
        &mut self,
        id: &str,
        title: &str,
        unit: &str,
        runtime: &str,
        samples: Vec<f64>,
    ) {
        let stats = Stats::of(&samples);
        match self
            .metrics
            .iter_mut()
            .find(|m| m.id == id && m.runtime == runtime)
        {
            Some(metric) => {
                metric.samples.extend(samples);
                metric.stats = Stats::of(&metric.samples);
            }
            None => self.metrics.push(Metric {
                id: id.into(),
                title: title.into(),
                unit: unit.into(),
                runtime: runtime.into(),
                samples,
                stats,
            }),
        }
    }

    /// Metric ids in the order first measured.
    fn ids(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = Vec::new();
        for m in &self.metrics {
            if !ids.contains(&m.id.as_str()) {
                ids.push(&m.id);
            }
        }
        ids
    }

    fn of(&self, id: &str) -> Vec<&Metric> {
        self.metrics.iter().filter(|m| m.id == id).collect()
    }

    fn p50(&self, id: &str, runtime: &str) -> Option<f64> {
        self.metrics
            .iter()
            .find(|m| m.id == id && m.runtime == runtime && m.stats.n > 0)
            .map(|m| m.stats.p50)
    }

    /// The peer (not ingot) with the lowest p50 of `id`.
    fn best_peer(&self, id: &str) -> Option<(&str, f64)> {
        self.of(id)
            .into_iter()
            .filter(|m| m.runtime != INGOT && m.stats.n > 0)
            .map(|m| (m.runtime.as_str(), m.stats.p50))
            .min_by(|a, b| a.1.total_cmp(&b.1))
    }

    /// The targets, each where this run measured what it needs.
    pub(crate) fn judge(&mut self) {
        let mut targets = Vec::new();
        let mut against_best = |report: &Report, id: &str, what: &str, factor: f64| {
            if let (Some(ingot), Some((peer, value))) =
                (report.p50(id, INGOT), report.best_peer(id))
            {
                let bound = value * factor;
                targets.push(Target {
                    what: what.into(),
                    ingot,
                    peer: Some(peer.into()),
                    peer_value: Some(value),
                    bound,
                    met: ingot <= bound,
                });
            }
        };
        against_best(
            self,
            "pod-start-host",
            "pod start p50 (host network) <= 1/6 of the best peer",
            1.0 / 6.0,
        );
        against_best(self, "exec", "ExecSync p50 <= 1/10 of the best peer", 0.1);
        for id in self.ids() {
            if let Some(n) = id.strip_prefix("churn-") {
                against_best(
                    self,
                    id,
                    &format!("churn p50 (N={n}) <= 1/6 of the best peer"),
                    1.0 / 6.0,
                );
            }
        }
        for id in self.ids() {
            if id.starts_with("pss-per-pod-") {
                against_best(
                    self,
                    id,
                    &format!("{} below the best peer's", self.of(id)[0].title),
                    1.0,
                );
            }
        }
        if let (Some(ingot), Some(crun)) = (
            self.p50("lifecycle", INGOT),
            self.p50("lifecycle", "containerd-1.6+crun"),
        ) {
            targets.push(Target {
                what: "container lifecycle p50 <= crun's".into(),
                ingot,
                peer: Some("containerd-1.6+crun".into()),
                peer_value: Some(crun),
                bound: crun,
                met: ingot <= crun,
            });
        }
        let mut absolute = |id: &str, what: &str, bound: f64, stat: fn(&Stats) -> f64| {
            if let Some(m) = self
                .metrics
                .iter()
                .find(|m| m.id == id && m.runtime == INGOT && m.stats.n > 0)
            {
                let value = stat(&m.stats);
                targets.push(Target {
                    what: what.into(),
                    ingot: value,
                    peer: None,
                    peer_value: None,
                    bound,
                    met: value <= bound,
                });
            }
        };
        absolute(
            "pss-per-pod-100",
            "per-pod PSS at 100 pods <= 400 KiB",
            400.0,
            |s| s.p50,
        );
        absolute(
            "daemon-rss-0",
            "ingotd RSS idle <= 20 MiB",
            20.0 * 1024.0,
            |s| s.p50,
        );
        absolute("daemon-wakeups-0", "ingotd wakeups idle <= 1/s", 1.0, |s| {
            s.p50
        });
        absolute(
            "daemon-rss-after",
            "ingotd RSS after the run <= 20 MiB",
            20.0 * 1024.0,
            |s| s.p50,
        );
        if let (Some(pod), Some(host)) = (
            self.metrics
                .iter()
                .find(|m| m.id == "jitter" && m.runtime == INGOT),
            self.metrics
                .iter()
                .find(|m| m.id == "jitter" && m.runtime == "host"),
        ) {
            targets.push(Target {
                what: "cyclictest max in the pinned pod within 10% of the bare host's".into(),
                ingot: pod.stats.max,
                peer: Some("host".into()),
                peer_value: Some(host.stats.max),
                bound: host.stats.max * 1.1,
                met: pod.stats.max <= host.stats.max * 1.1,
            });
        }
        self.targets = targets;
    }

    /// The table for a person: per metric, each runtime's statistics and its p50 over the best
    /// peer's.
    pub(crate) fn table(&self) -> String {
        let mut out = String::new();
        for id in self.ids() {
            let metrics = self.of(id);
            let best = self.best_peer(id).map(|(_, v)| v);
            let _ = writeln!(out, "\n{} ({})", metrics[0].title, metrics[0].unit);
            let _ = writeln!(
                out,
                "  {:<22} {:>9} {:>9} {:>9} {:>9} {:>9} {:>5} {:>8}",
                "runtime", "min", "p50", "p90", "p99", "max", "n", "/best"
            );
            for m in metrics {
                let ratio = match best {
                    Some(b) if b > 0.0 => format!("{:.2}", m.stats.p50 / b),
                    _ => "-".into(),
                };
                let s = &m.stats;
                let _ = writeln!(
                    out,
                    "  {:<22} {:>9} {:>9} {:>9} {:>9} {:>9} {:>5} {:>8}",
                    m.runtime,
                    fig(s.min),
                    fig(s.p50),
                    fig(s.p90),
                    fig(s.p99),
                    fig(s.max),
                    s.n,
                    ratio
                );
            }
        }
        for note in &self.notes {
            let _ = writeln!(out, "\nnote: {note}");
        }
        if !self.targets.is_empty() {
            let _ = writeln!(out, "\ntargets (ingot against this run's figures)");
            for t in &self.targets {
                let against = match (&t.peer, t.peer_value) {
                    (Some(peer), Some(value)) => format!(" ({peer}: {})", fig(value)),
                    _ => String::new(),
                };
                let _ = writeln!(
                    out,
                    "  [{}] {}: {} against a bound of {}{against}",
                    if t.met { "met" } else { "MISSED" },
                    t.what,
                    fig(t.ingot),
                    fig(t.bound),
                );
            }
        }
        out
    }

    /// The README's performance figures, from a run's JSON.
    pub(crate) fn markdown(&self) -> String {
        let mut out = String::new();
        let runtimes: Vec<&str> = self.runtimes.iter().map(|r| r.name.as_str()).collect();
        let _ = writeln!(
            out,
            "Made by `{}` on {} ({}).\n",
            self.command, self.date, self.machine
        );
        let _ = writeln!(out, "| runtime | version |\n|---|---|");
        for r in &self.runtimes {
            let _ = writeln!(out, "| {} | {} |", r.name, r.version);
        }
        let _ = writeln!(
            out,
            "\np50 (p99) of each metric; `×` is the p50 over the best peer's.\n"
        );
        let mut header = "| metric |".to_string();
        let mut rule = "|---|".to_string();
        let mut columns = runtimes.clone();
        if self.metrics.iter().any(|m| m.runtime == "host") {
            columns.push("host");
        }
        for r in &columns {
            let _ = write!(header, " {r} |");
            rule.push_str("---|");
        }
        let _ = writeln!(out, "{header}\n{rule}");
        for id in self.ids() {
            let metrics = self.of(id);
            let best = self.best_peer(id).map(|(_, v)| v);
            let mut row = format!("| {} ({}) |", metrics[0].title, metrics[0].unit);
            for r in &columns {
                match metrics.iter().find(|m| m.runtime == *r) {
                    Some(m) => {
                        let ratio = match best {
                            Some(b) if b > 0.0 && *r == INGOT => {
                                format!(" ×{:.2}", m.stats.p50 / b)
                            }
                            _ => String::new(),
                        };
                        let _ =
                            write!(row, " {} ({}){ratio} |", fig(m.stats.p50), fig(m.stats.p99));
                    }
                    None => row.push_str(" – |"),
                }
            }
            let _ = writeln!(out, "{row}");
        }
        if !self.targets.is_empty() {
            let _ = writeln!(out, "\n| target | ingot | bound | |\n|---|---|---|---|");
            for t in &self.targets {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} |",
                    t.what,
                    fig(t.ingot),
                    fig(t.bound),
                    if t.met { "met" } else { "missed" }
                );
            }
        }
        out
    }

    pub(crate) fn write_json(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
    }

    pub(crate) fn read_json(path: &Path) -> Result<Report> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))
    }

    /// One panel per metric: each runtime's samples as a cumulative distribution (the share of
    /// samples at or below a value), so medians and tails read off one picture.
    pub(crate) fn write_svg(&self, path: &Path) -> Result<()> {
        use plotters::prelude::*;

        let ids: Vec<&str> = self.ids();
        let columns = 3usize;
        let rows = ids.len().div_ceil(columns).max(1);
        let root = SVGBackend::new(path, (1200, 330 * u32::try_from(rows).unwrap_or(1)))
            .into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let mut names: Vec<&str> = self.runtimes.iter().map(|r| r.name.as_str()).collect();
        names.push("host");
        let panels = root.split_evenly((rows, columns));
        for (panel, id) in panels.iter().zip(&ids) {
            let metrics = self.of(id);
            let max = metrics
                .iter()
                .map(|m| m.stats.max)
                .fold(0.0_f64, f64::max)
                .max(1e-9);
            let mut chart = ChartBuilder::on(panel)
                .caption(
                    format!("{} ({})", metrics[0].title, metrics[0].unit),
                    ("sans-serif", 15),
                )
                .margin(8)
                .x_label_area_size(28)
                .y_label_area_size(36)
                .build_cartesian_2d(0.0..max * 1.05, 0.0..1.0)
                .map_err(plot_error)?;
            chart
                .configure_mesh()
                .x_labels(5)
                .y_labels(5)
                .draw()
                .map_err(plot_error)?;
            for m in metrics {
                let index = names.iter().position(|n| *n == m.runtime).unwrap_or(0);
                let color = Palette99::pick(index).to_rgba();
                let mut sorted = m.samples.clone();
                sorted.sort_by(f64::total_cmp);
                let n = sorted.len().max(1) as f64;
                // At most CDF_POINTS steps per curve (cyclictest gives tens of thousands of
                // samples), the last one always drawn.
                let step = sorted.len().div_ceil(CDF_POINTS).max(1);
                let last = sorted.len().saturating_sub(1);
                let points = sorted
                    .iter()
                    .enumerate()
                    .filter(move |(i, _)| i % step == 0 || *i == last)
                    .map(|(i, v)| (*v, (i + 1) as f64 / n));
                chart
                    .draw_series(LineSeries::new(points, color.stroke_width(2)))
                    .map_err(plot_error)?
                    .label(m.runtime.clone())
                    .legend(move |(x, y)| {
                        PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2))
                    });
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .label_font(("sans-serif", 11))
                .draw()
                .map_err(plot_error)?;
        }
        root.present().map_err(plot_error)?;
        Ok(())
    }
}

fn plot_error<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("plot: {e:?}")
}

/// A figure with as many decimals as it needs to read.
fn fig(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        let mut r = Report {
            command: "ingot-bench run".into(),
            machine: "test".into(),
            date: "2026-12-03T00:00:00Z".into(),
            runtimes: ["ingot", "containerd-1.6+runc", "cri-o-1.32+runc"]
                .iter()
                .map(|n| Runtime {
                    name: (*n).into(),
                    version: "1".into(),
                })
                .collect(),
            metrics: Vec::new(),
            targets: Vec::new(),
            notes: Vec::new(),
        };
        r.add(
            "pod-start-host",
            "pod start, host network",
            "ms",
            "ingot",
            vec![12.0, 10.0, 11.0],
        );
        r.add(
            "pod-start-host",
            "pod start, host network",
            "ms",
            "containerd-1.6+runc",
            vec![120.0, 100.0],
        );
        r.add(
            "pod-start-host",
            "pod start, host network",
            "ms",
            "cri-o-1.32+runc",
            vec![80.0, 70.0, 90.0],
        );
        r.add("exec", "ExecSync", "ms", "ingot", vec![3.0]);
        r.add("exec", "ExecSync", "ms", "cri-o-1.32+runc", vec![20.0]);
        r.add("jitter", "cyclictest", "us", "ingot", vec![5.0, 50.0]);
        r.add("jitter", "cyclictest", "us", "host", vec![5.0, 40.0]);
        r
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let s = Stats::of(&[5.0, 1.0, 3.0, 2.0, 4.0]);
        assert_eq!((s.min, s.p50, s.max, s.n), (1.0, 3.0, 5.0, 5));
        assert_eq!(Stats::of(&[]).n, 0);
    }

    #[test]
    fn targets_are_judged_against_the_best_peer() {
        let mut r = report();
        r.judge();
        let start = r
            .targets
            .iter()
            .find(|t| t.what.starts_with("pod start"))
            .expect("start");
        // The best peer is CRI-O (p50 80), so the bound is 80/6.
        assert_eq!(start.peer.as_deref(), Some("cri-o-1.32+runc"));
        assert!((start.bound - 80.0 / 6.0).abs() < 1e-9);
        assert!(start.met, "{start:?}");
        let exec = r
            .targets
            .iter()
            .find(|t| t.what.starts_with("ExecSync"))
            .expect("exec");
        assert!(!exec.met, "3 ms against a bound of 2: {exec:?}");
        let jitter = r
            .targets
            .iter()
            .find(|t| t.what.starts_with("cyclictest"))
            .expect("jitter");
        assert!(!jitter.met, "50 against 44: {jitter:?}");
    }

    #[test]
    fn the_table_the_json_and_the_markdown_carry_every_runtime() {
        let mut r = report();
        r.judge();
        let table = r.table();
        assert!(table.contains("cri-o-1.32+runc"), "{table}");
        assert!(table.contains("[MISSED] ExecSync"), "{table}");
        let dir = tempfile::tempdir().expect("tmp");
        let json = dir.path().join("r.json");
        r.write_json(&json).expect("json");
        let back = Report::read_json(&json).expect("read");
        assert_eq!(back.metrics.len(), r.metrics.len());
        let md = back.markdown();
        assert!(
            md.contains("| pod start, host network (ms) | 11.0 (12.0) ×0.14 |"),
            "{md}"
        );
        let svg = dir.path().join("r.svg");
        r.write_svg(&svg).expect("svg");
        let text = std::fs::read_to_string(&svg).expect("svg text");
        assert!(
            text.starts_with("<svg") && text.contains("cri-o-1.32+runc"),
            "{text}"
        );
    }

    /// A metric with tens of thousands of samples (cyclictest's) is drawn with at most
    /// CDF_POINTS points per curve, its largest sample still on it.
    #[test]
    fn long_distributions_are_thinned_in_the_svg() {
        let mut r = report();
        r.metrics.clear();
        let samples: Vec<f64> = (1..=30_000).map(f64::from).collect();
        r.add("jitter", "cyclictest", "us", "host", samples);
        let dir = tempfile::tempdir().expect("tmp");
        let svg = dir.path().join("j.svg");
        r.write_svg(&svg).expect("svg");
        let text = std::fs::read_to_string(&svg).expect("svg text");
        let longest = text
            .split("points=\"")
            .skip(1)
            .map(|p| p.split('"').next().unwrap_or("").split_whitespace().count())
            .max()
            .expect("a curve");
        assert!(
            longest > 100 && longest <= CDF_POINTS + 1,
            "{longest} points"
        );
    }
}
