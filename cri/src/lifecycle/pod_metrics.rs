//! ListMetricDescriptors and ListPodSandboxMetrics: cAdvisor's metric names, label keys and
//! values as containerd 2.3 gives them, so a kubelet with `PodAndContainerStatsFromCRI` can drop
//! cAdvisor. Container metrics carry `pod, namespace, container, id, image`; the pod's network
//! metrics the same keys (container and image empty, id the pod's) and `interface`. Values are
//! whole numbers (the CRI's `UInt64Value`): seconds are truncated, as containerd's are.

use k8s_cri::v1;

use crate::{
    convert,
    host::netns::Interface,
    lifecycle::{now_ns, stats, Manager},
    store::{ContainerRecord, ContainerState, PodRecord, PodState},
};

const BASE: &[&str] = &["pod", "namespace", "container", "id", "image"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Extra {
    None,
    Interface,
    Device,
    Failure,
}

/// Name, help, type, the label keys past [`BASE`].
const DESCRIPTORS: &[(&str, &str, v1::MetricType, Extra)] = &[
    (
        "container_cpu_usage_seconds_total",
        "Cumulative CPU time consumed in seconds.",
        v1::MetricType::Counter,
        Extra::None,
    ),
    (
        "container_cpu_user_seconds_total",
        "Cumulative user CPU time consumed in seconds.",
        v1::MetricType::Counter,
        Extra::None,
    ),
    (
        "container_cpu_system_seconds_total",
        "Cumulative system CPU time consumed in seconds.",
        v1::MetricType::Counter,
        Extra::None,
    ),
    (
        "container_cpu_cfs_periods_total",
        "Number of elapsed enforcement period intervals.",
        v1::MetricType::Counter,
        Extra::None,
    ),
    (
        "container_cpu_cfs_throttled_periods_total",
        "Number of throttled period intervals.",
        v1::MetricType::Counter,
        Extra::None,
    ),
    (
        "container_cpu_cfs_throttled_seconds_total",
        "Total time duration the container has been throttled.",
        v1::MetricType::Counter,
        Extra::None,
    ),
    (
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed",
        v1::MetricType::Gauge,
        Extra::None,
    ),
    (
        "container_memory_working_set_bytes",
        "Current working set in bytes.",
        v1::MetricType::Gauge,
        Extra::None,
    ),
    (
        "container_memory_rss",
        "Size of RSS in bytes.",
        v1::MetricType::Gauge,
        Extra::None,
    ),
    (
        "container_memory_cache",
        "Number of bytes of page cache memory.",
        v1::MetricType::Gauge,
        Extra::None,
    ),
    (
        "container_memory_mapped_file",
        "Size of memory mapped files in bytes.",
        v1::MetricType::Gauge,
        Extra::None,
    ),
    (
        "container_memory_total_active_file_bytes",
        "Current total active file in bytes.",
        v1::MetricType::Gauge,
        Extra::None,
    ),
    (
        "container_memory_total_inactive_file_bytes",
        "Current total inactive file in bytes.",
        v1::MetricType::Gauge,
        Extra::None,
    ),
    (
        "container_memory_failures_total",
        "Cumulative count of memory allocation failures.",
        v1::MetricType::Counter,
        Extra::Failure,
    ),
    (
        "container_fs_usage_bytes",
        "Number of bytes that are consumed by the container on this filesystem.",
        v1::MetricType::Gauge,
        Extra::Device,
    ),
    (
        "container_fs_inodes_total",
        "Number of Inodes",
        v1::MetricType::Gauge,
        Extra::Device,
    ),
    (
        "container_processes",
        "Number of processes running inside the container.",
        v1::MetricType::Gauge,
        Extra::None,
    ),
    (
        "container_last_seen",
        "Last time a container was seen by the exporter",
        v1::MetricType::Gauge,
        Extra::None,
    ),
    (
        "container_start_time_seconds",
        "Start time of the container since unix epoch in seconds.",
        v1::MetricType::Gauge,
        Extra::None,
    ),
    (
        "container_spec_cpu_period",
        "CPU period of the container.",
        v1::MetricType::Gauge,
        Extra::None,
    ),
    (
        "container_spec_cpu_quota",
        "CPU quota of the container.",
        v1::MetricType::Gauge,
        Extra::None,
    ),
    (
        "container_spec_cpu_shares",
        "CPU share of the container.",
        v1::MetricType::Gauge,
        Extra::None,
    ),
    (
        "container_spec_memory_limit_bytes",
        "Memory limit for the container.",
        v1::MetricType::Gauge,
        Extra::None,
    ),
    (
        "container_network_receive_bytes_total",
        "Cumulative count of bytes received",
        v1::MetricType::Counter,
        Extra::Interface,
    ),
    (
        "container_network_receive_packets_total",
        "Cumulative count of packets received",
        v1::MetricType::Counter,
        Extra::Interface,
    ),
    (
        "container_network_receive_packets_dropped_total",
        "Cumulative count of packets dropped while receiving",
        v1::MetricType::Counter,
        Extra::Interface,
    ),
    (
        "container_network_receive_errors_total",
        "Cumulative count of errors encountered while receiving",
        v1::MetricType::Counter,
        Extra::Interface,
    ),
    (
        "container_network_transmit_bytes_total",
        "Cumulative count of bytes transmitted",
        v1::MetricType::Counter,
        Extra::Interface,
    ),
    (
        "container_network_transmit_packets_total",
        "Cumulative count of packets transmitted",
        v1::MetricType::Counter,
        Extra::Interface,
    ),
    (
        "container_network_transmit_packets_dropped_total",
        "Cumulative count of packets dropped while transmitting",
        v1::MetricType::Counter,
        Extra::Interface,
    ),
    (
        "container_network_transmit_errors_total",
        "Cumulative count of errors encountered while transmitting",
        v1::MetricType::Counter,
        Extra::Interface,
    ),
];

fn extra_keys(extra: Extra) -> &'static [&'static str] {
    match extra {
        Extra::None => &[],
        Extra::Interface => &["interface"],
        Extra::Device => &["device"],
        Extra::Failure => &["failure_type", "scope"],
    }
}

/// Every metric ListPodSandboxMetrics may return, with its label keys.
pub fn descriptors() -> Vec<v1::MetricDescriptor> {
    DESCRIPTORS
        .iter()
        .map(|(name, help, _, extra)| v1::MetricDescriptor {
            name: (*name).into(),
            help: (*help).into(),
            label_keys: BASE
                .iter()
                .chain(extra_keys(*extra))
                .map(|k| k.to_string())
                .collect(),
        })
        .collect()
}

/// Builds metrics with the values of one label set.
struct Emitter {
    base: Vec<String>,
    timestamp: i64,
    out: Vec<v1::Metric>,
}

impl Emitter {
    fn emit(&mut self, name: &str, extra: &[&str], value: u64) {
        let Some((_, _, kind, keys)) = DESCRIPTORS.iter().find(|(n, ..)| *n == name) else {
            return;
        };
        if extra_keys(*keys).len() != extra.len() {
            return;
        }
        self.out.push(v1::Metric {
            name: name.into(),
            timestamp: self.timestamp,
            metric_type: *kind as i32,
            label_values: self
                .base
                .iter()
                .cloned()
                .chain(extra.iter().map(|v| v.to_string()))
                .collect(),
            value: Some(v1::UInt64Value { value }),
        });
    }
}

const NS_PER_SECOND: u64 = 1_000_000_000;

/// One container's metrics from its cgroup usage, writable layer and config.
fn container_metrics(
    base: Vec<String>,
    timestamp: i64,
    usage: &stats::Usage,
    layer: (u64, u64),
    started_at: i64,
    resources: Option<&v1::LinuxContainerResources>,
) -> Vec<v1::Metric> {
    let mut e = Emitter {
        base,
        timestamp,
        out: Vec::new(),
    };
    e.emit(
        "container_cpu_usage_seconds_total",
        &[],
        usage.cpu_ns / NS_PER_SECOND,
    );
    e.emit(
        "container_cpu_user_seconds_total",
        &[],
        usage.user_ns / NS_PER_SECOND,
    );
    e.emit(
        "container_cpu_system_seconds_total",
        &[],
        usage.system_ns / NS_PER_SECOND,
    );
    e.emit("container_cpu_cfs_periods_total", &[], usage.cfs_periods);
    e.emit(
        "container_cpu_cfs_throttled_periods_total",
        &[],
        usage.cfs_throttled_periods,
    );
    e.emit(
        "container_cpu_cfs_throttled_seconds_total",
        &[],
        usage.cfs_throttled_ns / NS_PER_SECOND,
    );
    e.emit("container_memory_usage_bytes", &[], usage.memory_usage);
    e.emit("container_memory_working_set_bytes", &[], usage.working_set);
    e.emit("container_memory_rss", &[], usage.rss);
    e.emit("container_memory_cache", &[], usage.cache);
    e.emit("container_memory_mapped_file", &[], usage.mapped_file);
    e.emit(
        "container_memory_total_active_file_bytes",
        &[],
        usage.active_file,
    );
    e.emit(
        "container_memory_total_inactive_file_bytes",
        &[],
        usage.inactive_file,
    );
    e.emit(
        "container_memory_failures_total",
        &["pgfault", "container"],
        usage.page_faults,
    );
    e.emit(
        "container_memory_failures_total",
        &["pgmajfault", "container"],
        usage.major_page_faults,
    );
    e.emit("container_fs_usage_bytes", &["/"], layer.0);
    e.emit("container_fs_inodes_total", &["/"], layer.1);
    e.emit("container_processes", &[], usage.processes);
    let seconds = |ns: i64| u64::try_from(ns).unwrap_or(0) / NS_PER_SECOND;
    e.emit("container_last_seen", &[], seconds(timestamp));
    e.emit("container_start_time_seconds", &[], seconds(started_at));
    if let Some(r) = resources {
        let positive = |v: i64| u64::try_from(v).ok().filter(|v| *v > 0);
        if let Some(period) = positive(r.cpu_period) {
            e.emit("container_spec_cpu_period", &[], period);
        }
        if let Some(quota) = positive(r.cpu_quota) {
            e.emit("container_spec_cpu_quota", &[], quota);
        }
        if let Some(shares) = positive(r.cpu_shares) {
            e.emit("container_spec_cpu_shares", &[], shares);
        }
        if let Some(limit) = positive(r.memory_limit_in_bytes) {
            e.emit("container_spec_memory_limit_bytes", &[], limit);
        }
    }
    e.out
}

/// The pod's network metrics, one set per interface.
fn network_metrics(base: Vec<String>, timestamp: i64, interfaces: &[Interface]) -> Vec<v1::Metric> {
    let mut e = Emitter {
        base,
        timestamp,
        out: Vec::new(),
    };
    for i in interfaces {
        let name = [i.name.as_str()];
        e.emit("container_network_receive_bytes_total", &name, i.rx_bytes);
        e.emit(
            "container_network_receive_packets_total",
            &name,
            i.rx_packets,
        );
        e.emit(
            "container_network_receive_packets_dropped_total",
            &name,
            i.rx_dropped,
        );
        e.emit("container_network_receive_errors_total", &name, i.rx_errors);
        e.emit("container_network_transmit_bytes_total", &name, i.tx_bytes);
        e.emit(
            "container_network_transmit_packets_total",
            &name,
            i.tx_packets,
        );
        e.emit(
            "container_network_transmit_packets_dropped_total",
            &name,
            i.tx_dropped,
        );
        e.emit(
            "container_network_transmit_errors_total",
            &name,
            i.tx_errors,
        );
    }
    e.out
}

/// The metrics of a ready pod and its running containers (None for a pod not ready).
pub async fn pod_metrics(manager: &Manager, pod: &PodRecord) -> Option<v1::PodSandboxMetrics> {
    if pod.state != PodState::Ready {
        return None;
    }
    let metadata = convert::pod_config(pod).metadata.unwrap_or_default();
    let timestamp = now_ns();
    let mut containers = Vec::new();
    for container in manager.containers_of(&pod.id) {
        if container.state != ContainerState::Running {
            continue;
        }
        containers.push(v1::ContainerMetrics {
            container_id: container.id.clone(),
            metrics: one_container(manager, &metadata, &container, timestamp).await,
        });
    }
    let pod_base = vec![
        metadata.name.clone(),
        metadata.namespace.clone(),
        String::new(),
        pod.id.clone(),
        String::new(),
    ];
    let interfaces = stats::pod_interfaces(pod).await.unwrap_or_default();
    Some(v1::PodSandboxMetrics {
        pod_sandbox_id: pod.id.clone(),
        metrics: network_metrics(pod_base, timestamp, &interfaces),
        container_metrics: containers,
    })
}

async fn one_container(
    manager: &Manager,
    pod: &v1::PodSandboxMetadata,
    container: &ContainerRecord,
    timestamp: i64,
) -> Vec<v1::Metric> {
    let config = convert::container_config(container);
    let name = config
        .metadata
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_default();
    let image = config
        .image
        .as_ref()
        .map(|i| i.image.clone())
        .filter(|i| !i.is_empty())
        .unwrap_or_else(|| container.image_ref.clone());
    let base = vec![
        pod.name.clone(),
        pod.namespace.clone(),
        name,
        container.id.clone(),
        image,
    ];
    let usage = stats::container_usage(manager, container).await;
    let layer = stats::writable_layer(container).await;
    let resources = config.linux.as_ref().and_then(|l| l.resources.as_ref());
    container_metrics(
        base,
        timestamp,
        &usage,
        layer,
        container.started_at,
        resources,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys_of(name: &str) -> usize {
        descriptors()
            .into_iter()
            .find(|d| d.name == name)
            .map(|d| d.label_keys.len())
            .unwrap_or(0)
    }

    /// The kubelet drops a metric whose label values do not match its descriptor's keys.
    #[test]
    fn every_metric_has_a_value_per_label_key() {
        let base = || BASE.iter().map(|k| format!("v-{k}")).collect::<Vec<_>>();
        let usage = stats::Usage {
            cpu_ns: 3_500_000_000,
            working_set: 4096,
            page_faults: 12,
            ..Default::default()
        };
        let resources = v1::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            memory_limit_in_bytes: 1 << 26,
            ..Default::default()
        };
        let mut metrics = container_metrics(
            base(),
            5_000_000_000,
            &usage,
            (8192, 3),
            2_000_000_000,
            Some(&resources),
        );
        metrics.extend(network_metrics(
            base(),
            5_000_000_000,
            &[Interface {
                name: "eth0".into(),
                rx_bytes: 100,
                ..Default::default()
            }],
        ));
        for metric in &metrics {
            assert_eq!(
                metric.label_values.len(),
                keys_of(&metric.name),
                "{}",
                metric.name
            );
        }
        let value = |name: &str, extra: &[&str]| {
            metrics
                .iter()
                .find(|m| {
                    m.name == name
                        && m.label_values
                            .ends_with(&extra.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                })
                .and_then(|m| m.value.as_ref())
                .map(|v| v.value)
        };
        assert_eq!(value("container_cpu_usage_seconds_total", &[]), Some(3));
        assert_eq!(value("container_memory_working_set_bytes", &[]), Some(4096));
        assert_eq!(
            value("container_memory_failures_total", &["pgfault", "container"]),
            Some(12)
        );
        assert_eq!(value("container_fs_usage_bytes", &["/"]), Some(8192));
        assert_eq!(value("container_start_time_seconds", &[]), Some(2));
        assert_eq!(
            value("container_spec_memory_limit_bytes", &[]),
            Some(1 << 26)
        );
        assert_eq!(
            value("container_spec_cpu_shares", &[]),
            None,
            "unset limits are left out"
        );
        assert_eq!(
            value("container_network_receive_bytes_total", &["eth0"]),
            Some(100)
        );
        let counter = metrics
            .iter()
            .find(|m| m.name == "container_network_receive_bytes_total")
            .map(|m| m.metric_type);
        assert_eq!(counter, Some(v1::MetricType::Counter as i32));
    }

    #[test]
    fn descriptor_names_are_unique() {
        let mut names: Vec<_> = DESCRIPTORS.iter().map(|d| d.0).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len());
    }
}
