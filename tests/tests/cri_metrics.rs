//! What ingotd tells a monitoring system and a kubelet about its pods: the Prometheus endpoint,
//! parsed by the Prometheus client library's own OpenMetrics parser (Python's
//! `prometheus_client`, from PyPI), with counts, RPC latencies, pulls, shims and memory that
//! follow what happened; the pod's network stats from its own namespace; and
//! ListMetricDescriptors / ListPodSandboxMetrics with a value per label key.

use std::{collections::HashMap, process::Command, time::Duration};

use ingot_tests::{cri::Options, pods::*};
use k8s_cri::v1;

/// Prints `name{labels} value` per sample, as the parser read them; fails on text it rejects.
const PARSE: &str = r#"
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
for family in text_string_to_metric_families(sys.stdin.read()):
    for sample in family.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
        print(f"{sample.name}{{{labels}}} {sample.value}")
"#;

/// A loopback port nothing listens on now (in the namespace the daemon will run in).
fn free_port(netns: &ingot_tests::TestNetns) -> u16 {
    netns
        .run(|| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
        })
        .expect("in the namespace")
        .expect("a free port")
}

/// GET /metrics, its status, content type and body.
fn scrape(netns: &ingot_tests::TestNetns, port: u16, path: &str) -> (u16, String, String) {
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    let text = netns
        .run(move || -> std::io::Result<String> {
            use std::io::{Read, Write};
            let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            stream.write_all(request.as_bytes())?;
            let mut text = String::new();
            stream.read_to_string(&mut text)?;
            Ok(text)
        })
        .expect("in the namespace")
        .expect("scrape");
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let kind = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default();
    (status, kind, body.to_string())
}

/// The samples as the Prometheus parser read them, by `name{sorted labels}`.
fn parse(python: &std::path::Path, text: &str) -> HashMap<String, f64> {
    use std::io::Write;
    let mut child = Command::new(python)
        .args(["-c", PARSE])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let output = child.wait_with_output().expect("parse");
    assert!(
        output.status.success(),
        "the OpenMetrics parser refused the text: {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            Some((key.to_string(), value.parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "current_thread")]
async fn the_metrics_endpoint_and_pod_metrics_follow_the_pods() {
    let python = ingot_tests::python_with("prometheus-client", "prometheus_client");
    // The port is picked in a namespace of its own first, then the daemon's is made.
    let probe = ingot_tests::TestNetns::create().expect("netns");
    let port = free_port(&probe);
    drop(probe);
    let (env, mut client, image) = env_with(
        true,
        Options {
            extra_config: format!("metrics_address = \"127.0.0.1:{port}\"\n"),
            ..Default::default()
        },
    )
    .await;
    let daemon = &env.daemon;
    let netns = env.netns().expect("a private network namespace");

    let (status, kind, body) = scrape(netns, port, "/metrics");
    assert_eq!(status, 200, "{body}");
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
    let before = parse(&python, &body);
    assert_eq!(
        before.get("ingot_pods{state=\"ready\"}"),
        Some(&0.0),
        "{body}"
    );
    assert_eq!(before.get("ingot_shims{}"), Some(&0.0), "{body}");
    // The harness pulled the test image through the CRI.
    assert_eq!(
        before.get("ingot_image_pull_duration_seconds_count{outcome=\"ok\"}"),
        Some(&1.0),
        "{body}"
    );
    assert!(before["ingot_image_pull_bytes_total{}"] > 0.0, "{body}");
    assert!(
        before["ingot_daemon_resident_memory_bytes{}"] > 1e6,
        "{body}"
    );
    assert!(before["ingot_daemon_threads{}"] >= 2.0, "{body}");

    let log_dir = daemon.log_dir("metered");
    let pod = pod_config("metered", &log_dir);
    let pod_id = run_pod(&mut client, pod.clone()).await;
    let mut config = container_config("busy", &image, "sleep 1000");
    config.linux = Some(v1::LinuxContainerConfig {
        resources: Some(v1::LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = start_container(&mut client, &pod_id, &pod, config).await;
    let missing = client
        .container_status(v1::ContainerStatusRequest {
            container_id: "no-such-container".into(),
            verbose: false,
        })
        .await
        .expect_err("unknown container");
    assert_eq!(missing.code(), tonic::Code::NotFound);

    // Traffic the pod's interface sees, so its counters are not zero.
    let pod_ip = client
        .pod_sandbox_status(v1::PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.clone(),
            verbose: false,
        })
        .await
        .expect("status")
        .into_inner()
        .status
        .and_then(|s| s.network)
        .map(|n| n.ip)
        .expect("a pod IP");
    let pinged = netns
        .command("busybox")
        .args(["ping", "-c", "3", "-W", "2", &pod_ip])
        .output()
        .expect("ping");
    assert!(pinged.status.success(), "ping {pod_ip}: {pinged:?}");

    let after = parse(&python, &scrape(netns, port, "/metrics").2);
    assert_eq!(after.get("ingot_pods{state=\"ready\"}"), Some(&1.0));
    assert_eq!(after.get("ingot_containers{state=\"running\"}"), Some(&1.0));
    assert_eq!(after.get("ingot_shims{}"), Some(&1.0));
    assert!(after["ingot_shim_resident_memory_bytes{}"] > 1e5);
    let calls = |samples: &HashMap<String, f64>, method: &str, code: &str| {
        samples
            .get(&format!(
                "ingot_cri_request_duration_seconds_count{{code=\"{code}\",method=\"runtime.v1.RuntimeService/{method}\"}}"
            ))
            .copied()
            .unwrap_or(0.0)
    };
    assert_eq!(calls(&after, "RunPodSandbox", "Ok"), 1.0);
    assert_eq!(calls(&after, "StartContainer", "Ok"), 1.0);
    assert!(calls(&after, "ContainerStatus", "NotFound") >= 1.0);
    let (status, _, _) = scrape(netns, port, "/nope");
    assert_eq!(status, 404);

    // The CRI's own stats: network from the pod's namespace, memory from its cgroup.
    let stats = client
        .pod_sandbox_stats(v1::PodSandboxStatsRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await
        .expect("PodSandboxStats")
        .into_inner()
        .stats
        .and_then(|s| s.linux)
        .expect("linux stats");
    let network = stats
        .network
        .expect("network stats of a pod with its own namespace");
    let eth0 = network.default_interface.expect("eth0");
    assert_eq!(eth0.name, "eth0");
    assert!(
        eth0.rx_bytes.map(|v| v.value).unwrap_or(0) >= 3 * 84,
        "three pings in: {eth0:?}"
    );
    assert!(
        eth0.tx_bytes.map(|v| v.value).unwrap_or(0) >= 3 * 84,
        "{eth0:?}"
    );
    let container = stats.containers.first().expect("the container's stats");
    let memory = container.memory.expect("memory");
    assert!(memory.working_set_bytes.map(|v| v.value).unwrap_or(0) > 0);
    assert!(
        memory.page_faults.map(|v| v.value).unwrap_or(0) > 0,
        "{memory:?}"
    );

    // ListMetricDescriptors and ListPodSandboxMetrics agree on names and label keys.
    let descriptors = client
        .list_metric_descriptors(v1::ListMetricDescriptorsRequest {})
        .await
        .expect("ListMetricDescriptors")
        .into_inner()
        .descriptors;
    let keys: HashMap<String, usize> = descriptors
        .iter()
        .map(|d| (d.name.clone(), d.label_keys.len()))
        .collect();
    let pods = client
        .list_pod_sandbox_metrics(v1::ListPodSandboxMetricsRequest {})
        .await
        .expect("ListPodSandboxMetrics")
        .into_inner()
        .pod_metrics;
    assert_eq!(pods.len(), 1);
    let metrics = &pods[0];
    assert_eq!(metrics.pod_sandbox_id, pod_id);
    let all = metrics.metrics.iter().chain(
        metrics
            .container_metrics
            .iter()
            .flat_map(|c| c.metrics.iter()),
    );
    for metric in all {
        assert_eq!(
            keys.get(&metric.name),
            Some(&metric.label_values.len()),
            "{metric:?}"
        );
    }
    let find = |metrics: &[v1::Metric], name: &str| {
        metrics
            .iter()
            .find(|m| m.name == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} missing"))
    };
    let received = find(&metrics.metrics, "container_network_receive_bytes_total");
    assert_eq!(
        received.label_values.last().map(String::as_str),
        Some("eth0")
    );
    assert!(received.value.map(|v| v.value).unwrap_or(0) > 0);
    assert_eq!(metrics.container_metrics.len(), 1);
    let ours = &metrics.container_metrics[0];
    assert_eq!(ours.container_id, id);
    let working_set = find(&ours.metrics, "container_memory_working_set_bytes");
    assert_eq!(
        working_set.label_values,
        vec![
            "metered".to_string(),
            "default".into(),
            "busy".into(),
            id.clone(),
            image.clone()
        ]
    );
    assert!(working_set.value.map(|v| v.value).unwrap_or(0) > 0);
    let limit = find(&ours.metrics, "container_spec_memory_limit_bytes");
    assert_eq!(limit.value.map(|v| v.value), Some(64 << 20));
    assert!(working_set.timestamp > 0);

    stop_and_remove_container(&mut client, &id, 0).await;
    remove_pod(&mut client, &pod_id).await;
    let gone = parse(&python, &scrape(netns, port, "/metrics").2);
    assert_eq!(gone.get("ingot_pods{state=\"ready\"}"), Some(&0.0));
    assert_eq!(gone.get("ingot_shims{}"), Some(&0.0));
    assert!(calls(&gone, "RemovePodSandbox", "Ok") >= 1.0);
    assert_nothing_left(daemon, &pod_id);
}
