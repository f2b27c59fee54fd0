//! ingotd's own metrics, in the OpenMetrics text format Prometheus scrapes (`/metrics` on
//! `metrics_address`): what the CRI calls cost, what image pulls cost, and, set at each scrape,
//! how many pods, containers and shims there are and what ingotd and its shims hold in memory.
//!
//! The names follow Prometheus' conventions (`_seconds`, `_bytes`, `_total`) under `ingot_`.

use std::{sync::Arc, time::Duration};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::{Registry, Unit},
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    /// `runtime.v1.RuntimeService/RunPodSandbox`.
    method: String,
    /// The gRPC status code's name (`OK`, `NotFound`).
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The registry and the handles ingotd records into.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    rpc_duration: HistogramFamily<RpcLabels>,
    pull_duration: HistogramFamily<OutcomeLabels>,
    pull_bytes: Counter,
    pods: Family<StateLabels, Gauge>,
    containers: Family<StateLabels, Gauge>,
    shims: Gauge,
    shim_memory: Gauge,
    resident_memory: Gauge,
    threads: Gauge,
}

/// From 0.5 ms to about 16 s: a CreateContainer is milliseconds, a cold StopContainer seconds.
fn rpc_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// From 50 ms to about 7 min.
fn pull_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.05, 2.0, 14))
}

/// What a scrape reads off the node and the store.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Pods per state (`ready`, `notready`).
    pub pods: Vec<(&'static str, i64)>,
    /// Containers per state (`created`, `running`, `exited`, `unknown`).
    pub containers: Vec<(&'static str, i64)>,
    pub shims: i64,
    /// The shims' resident memory together.
    pub shim_memory_bytes: i64,
    pub resident_memory_bytes: i64,
    pub threads: i64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("ingot");
        let rpc_duration: HistogramFamily<RpcLabels> = Family::new_with_constructor(rpc_histogram);
        registry.register_with_unit(
            "cri_request_duration",
            "Time a CRI call took until its response, by method and gRPC status",
            Unit::Seconds,
            rpc_duration.clone(),
        );
        let pull_duration: HistogramFamily<OutcomeLabels> =
            Family::new_with_constructor(pull_histogram);
        registry.register_with_unit(
            "image_pull_duration",
            "Time a PullImage took, by outcome (ok, error)",
            Unit::Seconds,
            pull_duration.clone(),
        );
        let pull_bytes = Counter::default();
        registry.register_with_unit(
            "image_pull",
            "Bytes of the images pulled (their layers and config, as stored)",
            Unit::Bytes,
            pull_bytes.clone(),
        );
        let pods = Family::<StateLabels, Gauge>::default();
        registry.register("pods", "Pod sandboxes by state", pods.clone());
        let containers = Family::<StateLabels, Gauge>::default();
        registry.register("containers", "Containers by state", containers.clone());
        let shims = Gauge::default();
        registry.register("shims", "Pod shims running", shims.clone());
        let shim_memory = Gauge::default();
        registry.register_with_unit(
            "shim_resident_memory",
            "Resident memory of all pod shims together",
            Unit::Bytes,
            shim_memory.clone(),
        );
        let resident_memory = Gauge::default();
        registry.register_with_unit(
            "daemon_resident_memory",
            "Resident memory of ingotd",
            Unit::Bytes,
            resident_memory.clone(),
        );
        let threads = Gauge::default();
        registry.register("daemon_threads", "Threads of ingotd", threads.clone());
        Metrics {
            registry,
            rpc_duration,
            pull_duration,
            pull_bytes,
            pods,
            containers,
            shims,
            shim_memory,
            resident_memory,
            threads,
        }
    }

    /// One CRI call: `path` is the gRPC path (`/runtime.v1.RuntimeService/Version`), `code` the
    /// gRPC status code. Paths outside the CRI's two services count as `other`, so a client
    /// cannot make a label per path.
    pub fn observe_rpc(&self, path: &str, code: tonic::Code, took: Duration) {
        let method = path.trim_start_matches('/');
        let known = method.starts_with("runtime.v1.RuntimeService/")
            || method.starts_with("runtime.v1.ImageService/");
        let labels = RpcLabels {
            method: if known { method.into() } else { "other".into() },
            code: format!("{code:?}"),
        };
        self.rpc_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// One PullImage: how long it took and, when it succeeded, the bytes it stored.
    pub fn observe_pull(&self, took: Duration, pulled: Result<u64, ()>) {
        let outcome = if pulled.is_ok() { "ok" } else { "error" };
        self.pull_duration
            .get_or_create(&OutcomeLabels {
                outcome: outcome.into(),
            })
            .observe(took.as_secs_f64());
        if let Ok(bytes) = pulled {
            self.pull_bytes.inc_by(bytes);
        }
    }

    /// The OpenMetrics text of everything, with the gauges set from `snapshot`.
    pub fn render(&self, snapshot: &Snapshot) -> String {
        for (family, values) in [
            (&self.pods, &snapshot.pods),
            (&self.containers, &snapshot.containers),
        ] {
            for (state, count) in values {
                family
                    .get_or_create(&StateLabels {
                        state: (*state).into(),
                    })
                    .set(*count);
            }
        }
        self.shims.set(snapshot.shims);
        self.shim_memory.set(snapshot.shim_memory_bytes);
        self.resident_memory.set(snapshot.resident_memory_bytes);
        self.threads.set(snapshot.threads);
        let mut text = String::new();
        if let Err(err) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::warn!(error = %err, "encode metrics");
        }
        text
    }
}

/// `VmRSS` (bytes) and `Threads` of a `/proc/<pid>/status` text.
pub fn rss_and_threads(status: &str) -> (i64, i64) {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<i64>().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:") * 1024, field("Threads:"))
}

/// Shared by the CRI server's layer, PullImage and the `/metrics` server.
pub type Shared = Arc<Metrics>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_pulls_and_gauges_are_rendered_with_their_labels() {
        let metrics = Metrics::new();
        metrics.observe_rpc(
            "/runtime.v1.RuntimeService/Version",
            tonic::Code::Ok,
            Duration::from_millis(2),
        );
        metrics.observe_rpc("/evil/path", tonic::Code::Unimplemented, Duration::ZERO);
        metrics.observe_pull(Duration::from_secs(1), Ok(2048));
        metrics.observe_pull(Duration::from_secs(1), Err(()));
        let text = metrics.render(&Snapshot {
            pods: vec![("ready", 2), ("notready", 1)],
            containers: vec![("running", 3)],
            shims: 2,
            shim_memory_bytes: 4096,
            resident_memory_bytes: 8192,
            threads: 7,
        });
        for line in [
            "ingot_cri_request_duration_seconds_count{method=\"runtime.v1.RuntimeService/Version\",code=\"Ok\"} 1",
            "ingot_cri_request_duration_seconds_count{method=\"other\",code=\"Unimplemented\"} 1",
            "ingot_image_pull_bytes_total 2048",
            "ingot_image_pull_duration_seconds_count{outcome=\"error\"} 1",
            "ingot_pods{state=\"notready\"} 1",
            "ingot_containers{state=\"running\"} 3",
            "ingot_shims 2",
            "ingot_shim_resident_memory_bytes 4096",
            "ingot_daemon_resident_memory_bytes 8192",
            "ingot_daemon_threads 7",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} not in\n{text}");
        }
    }

    #[test]
    fn proc_status_fields() {
        let status = "Name:\tingotd\nVmRSS:\t   1234 kB\nThreads:\t9\n";
        assert_eq!(rss_and_threads(status), (1234 * 1024, 9));
        assert_eq!(rss_and_threads(""), (0, 0));
    }
}
