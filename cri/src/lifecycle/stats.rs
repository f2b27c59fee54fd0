//! Container and pod stats from the shim's cgroup metrics (v1 or v2), in the CRI's terms: CPU
//! time in nanoseconds, memory working set (usage less inactive file pages), writable layer use.

use containerd_shim_protos::{
    cgroups::metrics::Metrics as V1Metrics, cgroups_v2::metrics::Metrics as V2Metrics,
    protobuf::Message,
};
use k8s_cri::v1;

use crate::{
    convert,
    lifecycle::{now_ns, Manager},
    store::{ContainerRecord, ContainerState, PodRecord},
    CriError,
};

/// CPU nanoseconds and memory (usage, working set, rss, page faults) from a metrics message.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub cpu_ns: u64,
    pub memory_usage: u64,
    pub working_set: u64,
    pub rss: u64,
    pub page_faults: u64,
    pub major_page_faults: u64,
    pub user_ns: u64,
    pub system_ns: u64,
    pub cfs_periods: u64,
    pub cfs_throttled_periods: u64,
    pub cfs_throttled_ns: u64,
    pub cache: u64,
    pub mapped_file: u64,
    pub active_file: u64,
    pub inactive_file: u64,
    pub processes: u64,
    /// The memory limit, 0 or past 2^62 for none.
    pub memory_limit: u64,
}

/// Decodes the shim's metrics (`io.containerd.cgroups.v1.Metrics` or `...v2.Metrics`).
pub fn usage(type_url: &str, value: &[u8]) -> Result<Usage, CriError> {
    let bad = |err: String| CriError::Shim {
        method: "Stats",
        code: tonic::Code::Internal,
        message: format!("decode {type_url}: {err}"),
    };
    if type_url.ends_with("v2.Metrics") {
        let m = V2Metrics::parse_from_bytes(value).map_err(|e| bad(e.to_string()))?;
        let cpu = m.cpu.clone().unwrap_or_default();
        let memory = m.memory.clone().unwrap_or_default();
        Ok(Usage {
            cpu_ns: cpu.usage_usec * 1000,
            memory_usage: memory.usage,
            working_set: memory.usage.saturating_sub(memory.inactive_file),
            rss: memory.anon,
            page_faults: memory.pgfault,
            major_page_faults: memory.pgmajfault,
            user_ns: cpu.user_usec * 1000,
            system_ns: cpu.system_usec * 1000,
            cfs_periods: cpu.nr_periods,
            cfs_throttled_periods: cpu.nr_throttled,
            cfs_throttled_ns: cpu.throttled_usec * 1000,
            cache: memory.file,
            mapped_file: memory.file_mapped,
            active_file: memory.active_file,
            inactive_file: memory.inactive_file,
            processes: m.pids.as_ref().map(|p| p.current).unwrap_or(0),
            memory_limit: memory.usage_limit,
        })
    } else {
        let m = V1Metrics::parse_from_bytes(value).map_err(|e| bad(e.to_string()))?;
        let cpu = m.cpu.clone().unwrap_or_default();
        let times = cpu.usage.clone().unwrap_or_default();
        let throttling = cpu.throttling.clone().unwrap_or_default();
        let memory = m.memory.clone().unwrap_or_default();
        let usage = memory.usage.as_ref().map(|u| u.usage).unwrap_or(0);
        Ok(Usage {
            cpu_ns: times.total,
            memory_usage: usage,
            working_set: usage.saturating_sub(memory.total_inactive_file),
            rss: memory.total_rss,
            page_faults: memory.total_pg_fault,
            major_page_faults: memory.total_pg_maj_fault,
            user_ns: times.user,
            system_ns: times.kernel,
            cfs_periods: throttling.periods,
            cfs_throttled_periods: throttling.throttled_periods,
            cfs_throttled_ns: throttling.throttled_time,
            cache: memory.total_cache,
            mapped_file: memory.total_mapped_file,
            active_file: memory.total_active_file,
            inactive_file: memory.total_inactive_file,
            processes: m.pids.as_ref().map(|p| p.current).unwrap_or(0),
            memory_limit: memory.usage.as_ref().map(|u| u.limit).unwrap_or(0),
        })
    }
}

/// What the working set may still grow by under the limit, as containerd reports it: 0 when
/// there is no limit (the kernel's "unlimited" is a page-rounded 2^63, hence the 2^62 bound).
fn available_bytes(usage: &Usage) -> u64 {
    if usage.memory_limit == 0 || usage.memory_limit > 1 << 62 {
        0
    } else {
        usage.memory_limit.saturating_sub(usage.working_set)
    }
}

fn value(v: u64) -> Option<v1::UInt64Value> {
    Some(v1::UInt64Value { value: v })
}

pub(super) async fn container_usage(manager: &Manager, container: &ContainerRecord) -> Usage {
    if container.state != ContainerState::Running {
        return Usage::default();
    }
    let Ok(pod) = manager.pod(&container.pod_id) else {
        return Usage::default();
    };
    let Some(shim) = manager.shim_of(&pod) else {
        return Usage::default();
    };
    match shim.stats(&container.id).await {
        Ok(response) => response
            .stats
            .as_ref()
            .map(|any| usage(&any.type_url, &any.value))
            .transpose()
            .unwrap_or_else(|err| {
                tracing::warn!(container = %container.id, error = %err, "stats");
                None
            })
            .unwrap_or_default(),
        Err(err) => {
            tracing::debug!(container = %container.id, error = %err, "stats");
            Usage::default()
        }
    }
}

fn cpu_usage(usage: &Usage, now: i64) -> v1::CpuUsage {
    v1::CpuUsage {
        timestamp: now,
        usage_core_nano_seconds: value(usage.cpu_ns),
        usage_nano_cores: None,
    }
}

fn memory_usage(usage: &Usage, now: i64) -> v1::MemoryUsage {
    v1::MemoryUsage {
        timestamp: now,
        working_set_bytes: value(usage.working_set),
        available_bytes: value(available_bytes(usage)),
        usage_bytes: value(usage.memory_usage),
        rss_bytes: value(usage.rss),
        page_faults: value(usage.page_faults),
        major_page_faults: value(usage.major_page_faults),
    }
}

pub async fn container_stats(manager: &Manager, container: &ContainerRecord) -> v1::ContainerStats {
    container_stats_and_usage(manager, container).await.0
}

async fn container_stats_and_usage(
    manager: &Manager,
    container: &ContainerRecord,
) -> (v1::ContainerStats, Usage) {
    let usage = container_usage(manager, container).await;
    let now = now_ns();
    let config = convert::container_config(container);
    let (bytes, inodes) = writable_layer(container).await;
    let stats = v1::ContainerStats {
        attributes: Some(v1::ContainerAttributes {
            id: container.id.clone(),
            metadata: config.metadata,
            labels: config.labels,
            annotations: config.annotations,
        }),
        cpu: Some(cpu_usage(&usage, now)),
        memory: Some(memory_usage(&usage, now)),
        writable_layer: Some(v1::FilesystemUsage {
            timestamp: now,
            fs_id: Some(v1::FilesystemIdentifier {
                mountpoint: container.snapshot.display().to_string(),
            }),
            used_bytes: value(bytes),
            inodes_used: value(inodes),
        }),
        swap: None,
    };
    (stats, usage)
}

pub async fn pod_stats(manager: &Manager, pod: &PodRecord) -> v1::PodSandboxStats {
    let config = convert::pod_config(pod);
    let mut containers = Vec::new();
    let mut total = Usage::default();
    for container in manager.containers_of(&pod.id) {
        let (stats, usage) = container_stats_and_usage(manager, &container).await;
        total.cpu_ns += usage.cpu_ns;
        total.working_set += usage.working_set;
        total.memory_usage += usage.memory_usage;
        total.rss += usage.rss;
        containers.push(stats);
    }
    // The pod's own cgroup where it can be read, as containerd reads the sandbox's: its
    // counters include containers that exited (a sum over the running ones would go back
    // when one exits, and the kubelet's CPU rate with it) and the pod-init.
    if let Some(pod_usage) =
        crate::host::cgroups::usage(&manager.config.host_root, &pod.cgroup_parent)
    {
        total.cpu_ns = pod_usage.cpu_ns;
        total.memory_usage = pod_usage.memory_usage;
        total.working_set = pod_usage.working_set;
        total.rss = pod_usage.rss;
        total.memory_limit = pod_usage.memory_limit;
    }
    let now = now_ns();
    v1::PodSandboxStats {
        attributes: Some(v1::PodSandboxAttributes {
            id: pod.id.clone(),
            metadata: config.metadata,
            labels: config.labels,
            annotations: config.annotations,
        }),
        linux: Some(v1::LinuxPodSandboxStats {
            cpu: Some(cpu_usage(&total, now)),
            // Page faults are per container only.
            memory: Some(v1::MemoryUsage {
                page_faults: None,
                major_page_faults: None,
                ..memory_usage(&total, now)
            }),
            network: network_usage(pod, now).await,
            // Every process the pod owns is in its cgroup (its pod-init too), as containerd
            // counts them: the kubelet's summary reports it.
            process: Some(v1::ProcessUsage {
                timestamp: now,
                process_count: crate::host::cgroups::process_count(
                    &manager.config.host_root,
                    &pod.cgroup_parent,
                )
                .and_then(value),
            }),
            containers,
        }),
        windows: None,
    }
}

/// The pod's interfaces, from its network namespace (None for a host-network pod, whose
/// traffic is the node's). `eth0`, the interface CNI plugins make, is the default one.
async fn network_usage(pod: &PodRecord, now: i64) -> Option<v1::NetworkUsage> {
    let interfaces = pod_interfaces(pod).await?;
    let stats: Vec<v1::NetworkInterfaceUsage> = interfaces
        .iter()
        .map(|i| v1::NetworkInterfaceUsage {
            name: i.name.clone(),
            rx_bytes: value(i.rx_bytes),
            rx_errors: value(i.rx_errors),
            tx_bytes: value(i.tx_bytes),
            tx_errors: value(i.tx_errors),
        })
        .collect();
    let default_interface = stats
        .iter()
        .find(|i| i.name == "eth0")
        .or_else(|| stats.first())
        .cloned();
    Some(v1::NetworkUsage {
        timestamp: now,
        default_interface,
        interfaces: stats,
    })
}

/// The counters of the pod's interfaces (None for a host-network pod, or when its namespace
/// cannot be read).
pub(super) async fn pod_interfaces(pod: &PodRecord) -> Option<Vec<crate::host::netns::Interface>> {
    let netns = pod.net.clone()?;
    let read = tokio::task::spawn_blocking(move || crate::host::netns::interfaces(&netns))
        .await
        .map_err(CriError::join("network stats"));
    match read {
        Ok(Ok(interfaces)) => Some(interfaces),
        Ok(Err(err)) | Err(err) => {
            tracing::debug!(pod = %pod.id, error = %err, "network stats");
            None
        }
    }
}

/// Bytes and inodes of the container's writable layer.
pub(super) async fn writable_layer(container: &ContainerRecord) -> (u64, u64) {
    let upper = container.snapshot.join("upper");
    tokio::task::spawn_blocking(move || ingot_image::usage(&upper))
        .await
        .unwrap_or((0, 0))
}

#[cfg(test)]
mod tests {
    use containerd_shim_protos::cgroups::metrics::{CPUStat, CPUUsage, MemoryEntry, MemoryStat};

    use super::*;

    #[test]
    fn working_set_is_usage_less_inactive_file() {
        let metrics = V1Metrics {
            cpu: Some(CPUStat {
                usage: Some(CPUUsage {
                    total: 5_000,
                    ..Default::default()
                })
                .into(),
                ..Default::default()
            })
            .into(),
            memory: Some(MemoryStat {
                total_inactive_file: 300,
                total_rss: 700,
                usage: Some(MemoryEntry {
                    usage: 1000,
                    limit: 4000,
                    ..Default::default()
                })
                .into(),
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        let bytes = metrics.write_to_bytes().expect("encode");
        let v1 = usage("io.containerd.cgroups.v1.Metrics", &bytes).expect("decode");
        assert_eq!(v1.cpu_ns, 5_000);
        assert_eq!(v1.working_set, 700);
        assert_eq!(v1.rss, 700);
        assert_eq!(available_bytes(&v1), 3300);
        // The kernel's "no limit": a page-rounded 2^63.
        let unlimited = Usage {
            memory_limit: 9_223_372_036_854_771_712,
            ..v1
        };
        assert_eq!(available_bytes(&unlimited), 0);

        let v2 = V2Metrics {
            cpu: Some(containerd_shim_protos::cgroups_v2::metrics::CPUStat {
                usage_usec: 7,
                ..Default::default()
            })
            .into(),
            memory: Some(containerd_shim_protos::cgroups_v2::metrics::MemoryStat {
                usage: 500,
                inactive_file: 100,
                usage_limit: 1000,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        let bytes = v2.write_to_bytes().expect("encode");
        let decoded = usage("io.containerd.cgroups.v2.Metrics", &bytes).expect("decode");
        assert_eq!((decoded.cpu_ns, decoded.working_set), (7_000, 400));
        assert_eq!(available_bytes(&decoded), 600);
    }
}
