//! The report built from the topology crate's fixture trees and hand-written checkpoints,
//! checked line by line.

use std::path::Path;

use ingot_placement::read_checkpoint;

use super::*;

fn fixture(name: &str) -> Topology {
    let root = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../topology/tests/fixtures"
    ))
    .join(name);
    ingot_topology::discover(&root).unwrap_or_else(|err| panic!("{name}: {err}"))
}

fn set(list: &str) -> CpuSet {
    CpuSet::parse(list).expect("a CPU list")
}

/// On the Intel fixture: one exclusive container on node 1, one kubelet-pinned container on
/// housekeeping CPUs, two shared ones.
const INTEL_CHECKPOINT: &str = r#"{"version":1,"containers":[
    {"container_id":"3f2a9c1be4d07a55c0ffee","pod_id":"9d8e7f6a5b4c3d2e1f00",
     "cpus":"4-5,12-13","mems":"1","kind":"exclusive","notes":[]},
    {"container_id":"aaaa000011112222","pod_id":"pod-k","cpus":"0-1","mems":"",
     "kind":"kubelet","notes":[]},
    {"container_id":"bbbb000011112222","pod_id":"pod-s","cpus":"0-3,6-11,14-15","mems":"",
     "kind":"shared","notes":[]},
    {"container_id":"cccc000011112222","pod_id":"pod-s","cpus":"0-3,6-11,14-15","mems":"",
     "kind":"shared","notes":[]}]}"#;

fn intel_report() -> Report {
    let entries = read_checkpoint(INTEL_CHECKPOINT.as_bytes()).expect("a checkpoint");
    build(fixture("intel-2s-smt-isolated"), Some(entries))
}

/// The lines of one section: from its heading to the next blank line.
fn section<'a>(table: &'a str, heading: &str) -> Vec<&'a str> {
    table
        .lines()
        .skip_while(|line| *line != heading)
        .skip(1)
        .take_while(|line| !line.is_empty())
        .collect()
}

fn has_line(lines: &[&str], expected: &str) {
    assert!(
        lines.contains(&expected),
        "no line {expected:?} in\n{}",
        lines.join("\n")
    );
}

#[test]
fn intel_summary_counts_sockets_cores_threads_and_isolation() {
    let report = intel_report();
    assert_eq!(
        report.summary,
        Summary {
            sockets: 2,
            numa_nodes: 2,
            cores: 8,
            threads: 16,
            smt: true,
            online: set("0-15"),
            isolated: set("2-7,10-15"),
            nohz_full: set("2-7,10-15"),
        }
    );
    let table = render_table(&report);
    assert_eq!(
        section(&table, "NODE"),
        vec![
            "  sockets         2",
            "  NUMA nodes      2",
            "  cores           8",
            "  threads         16",
            "  SMT             on",
            "  online CPUs     0-15",
            "  isolated CPUs   2-7,10-15",
            "  nohz_full CPUs  2-7,10-15",
        ]
    );
}

#[test]
fn intel_nodes_show_cpus_memory_hugepages_and_their_devices() {
    let table = render_table(&intel_report());
    let node0 = section(&table, "NUMA NODE 0");
    has_line(&node0, "  CPUs           0-3,8-11 (isolated 2-3,10-11)");
    has_line(&node0, "  memory         187.4 GiB total, 171.9 GiB free");
    has_line(&node0, "  hugepages 2MB  1024 total, 512 free");
    has_line(&node0, "  hugepages 1GB  4 total, 2 free");
    has_line(
        &node0,
        "    0000:3b:00.0  gpu   10de:26b9  nvidia  NVIDIA GPU",
    );

    let node1 = section(&table, "NUMA NODE 1");
    has_line(&node1, "  CPUs           4-7,12-15 (isolated 4-7,12-15)");
    has_line(&node1, "  hugepages 1GB  8 total, 8 free");
    has_line(
        &node1,
        "    0000:af:00.0  network  8086:1592  ice     \
         ens801f0; SR-IOV PF, 3 of 128 VFs (2 iavf, 1 vfio-pci)",
    );
    // The VFs are folded into their PF's line; the BMC's VGA, bridges and the GPU are not on
    // node 1.
    for absent in [
        "0000:af:01.",
        "0000:03:00.0",
        "0000:00:00.0",
        "0000:3b:00.0",
    ] {
        assert!(
            node1.iter().all(|line| !line.contains(absent)),
            "{absent} in {node1:#?}"
        );
    }
    assert!(!table.contains("0000:03:00.0"), "{table}");
    assert!(!table.contains("WITHOUT A NUMA NODE"), "{table}");
}

#[test]
fn intel_allocations_exclusive_kubelet_and_the_shared_pool_without_them() {
    let report = intel_report();
    assert_eq!(report.exclusive_cpus, set("4-5,12-13"));
    assert_eq!(report.shared_pool, set("0-3,6-11,14-15"));
    assert!(report.shared_pool.is_disjoint(&report.exclusive_cpus));

    let table = render_table(&report);
    assert_eq!(
        section(&table, "ALLOCATIONS"),
        vec![
            "  exclusive CPUs  4-5,12-13",
            "  shared pool     0-3,6-11,14-15 (2 containers)",
        ]
    );
    let containers: Vec<&str> = table
        .lines()
        .skip_while(|line| !line.starts_with("  CONTAINER"))
        .collect();
    assert_eq!(
        containers,
        vec![
            "  CONTAINER      POD            CPUS       MEMS  KIND       NOTES",
            "  3f2a9c1be4d07  9d8e7f6a5b4c3  4-5,12-13  1     exclusive  -",
            "  aaaa000011112  pod-k          0-1        all   kubelet    -",
            "",
            "TUNING",
            "  no CPU tuned",
        ]
    );
}

#[test]
fn h100_gpu_has_no_numa_node_and_is_still_shown() {
    let report = build(fixture("nvidia-h100-vm"), None);
    assert_eq!(
        (
            report.summary.sockets,
            report.summary.cores,
            report.summary.threads
        ),
        (1, 16, 16)
    );
    assert!(!report.summary.smt);
    let table = render_table(&report);
    has_line(&section(&table, "NODE"), "  SMT             off");
    has_line(&section(&table, "NODE"), "  isolated CPUs   none");
    let node0 = section(&table, "NUMA NODE 0");
    has_line(&node0, "  memory         4.3 GiB total, 3.1 GiB free");
    has_line(&node0, "  devices        none");
    let elsewhere = section(&table, "DEVICES WITHOUT A NUMA NODE");
    has_line(
        &elsewhere,
        "    0000:00:06.0  gpu      10de:2330  nvidia      NVIDIA GPU",
    );
    has_line(
        &elsewhere,
        "    0000:00:03.0  network  1af4:1041  virtio-pci",
    );
}

#[test]
fn no_checkpoint_and_an_empty_one_say_why_there_is_nothing() {
    let missing = render_table(&build(fixture("vm-2cpu"), None));
    assert_eq!(
        section(&missing, "ALLOCATIONS"),
        vec![
            "  no allocations (ingotd not running or nothing placed)",
            "  exclusive CPUs  none",
            "  shared pool     0-1",
        ]
    );
    let empty = build(fixture("vm-2cpu"), Some(Vec::new()));
    assert_eq!(empty.shared_pool, set("0-1"));
    let empty = render_table(&empty);
    has_line(
        &section(&empty, "ALLOCATIONS"),
        "  no allocations (the checkpoint holds no containers)",
    );
    assert!(!empty.contains("CONTAINER"), "{empty}");
}

#[test]
fn json_has_the_stable_fields_and_the_whole_topology() {
    let report = intel_report();
    let json: serde_json::Value =
        serde_json::from_str(&render_json(&report).expect("json")).expect("valid JSON");
    let keys: Vec<&str> = json
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys.iter().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from([
            "allocations",
            "exclusive_cpus",
            "held_devices",
            "shared_pool",
            "readiness",
            "summary",
            "topology",
            "tuning"
        ])
    );
    let topology: Topology = serde_json::from_value(json["topology"].clone()).expect("topology");
    assert_eq!(topology, report.topology);
    assert_eq!(
        json["summary"],
        serde_json::json!({
            "sockets": 2, "numa_nodes": 2, "cores": 8, "threads": 16, "smt": true,
            "online": "0-15", "isolated": "2-7,10-15", "nohz_full": "2-7,10-15"
        })
    );
    assert_eq!(json["exclusive_cpus"], "4-5,12-13");
    assert_eq!(json["shared_pool"], "0-3,6-11,14-15");
    // Every container, full ids, in the checkpoint's order.
    assert_eq!(json["allocations"].as_array().map(Vec::len), Some(4));
    assert_eq!(
        json["allocations"][0],
        serde_json::json!({
            "container_id": "3f2a9c1be4d07a55c0ffee", "pod_id": "9d8e7f6a5b4c3d2e1f00",
            "cpus": "4-5,12-13", "mems": "1", "kind": "exclusive", "notes": []
        })
    );
    assert_eq!(json["allocations"][2]["kind"], "shared");
}

#[test]
fn a_checkpoint_that_does_not_fit_the_topology_is_shown_with_warnings() {
    // CPUs 2-3 twice (two containers) and CPU 9 on a 2-CPU VM: a checkpoint from elsewhere.
    let checkpoint = br#"{"version":1,"containers":[
        {"container_id":"a","pod_id":"p","cpus":"1","mems":"","kind":"exclusive",
         "notes":["not NUMA-aligned: no node has 1 CPU free"]},
        {"container_id":"b","pod_id":"p","cpus":"1,9","mems":"","kind":"exclusive","notes":[]},
        {"container_id":"c\u001b[31m","pod_id":"p","cpus":"0","mems":"","kind":"kubelet",
         "notes":[]}]}"#;
    let entries = read_checkpoint(checkpoint).expect("a checkpoint");
    let report = build(fixture("vm-2cpu"), Some(entries));
    assert_eq!(report.exclusive_cpus, set("1,9"));
    assert_eq!(report.shared_pool, set("0"));
    let table = render_table(&report);
    assert!(
        table.contains("warning: exclusive CPUs 9 are not online in this topology"),
        "{table}"
    );
    assert!(
        table.contains("warning: CPUs 1 are exclusive to more than one container"),
        "{table}"
    );
    assert!(
        table.contains("  a          p    1     all   exclusive  not NUMA-aligned: no node"),
        "{table}"
    );
    // The escape sequence in an id reaches the terminal as text, not as a colour.
    assert!(!table.contains('\u{1b}'), "{table:?}");
    assert!(table.contains("  c?[31m     p    0"), "{table}");
}

#[test]
fn short_ids_count_characters_not_bytes() {
    assert_eq!(short("0123456789abcdef"), "0123456789abc");
    assert_eq!(short("ééééééééééééééé").chars().count(), 13);
    assert_eq!(short("abc"), "abc");
}

#[test]
fn every_fixture_renders_and_round_trips_as_json() {
    for name in [
        "intel-2s-smt-isolated",
        "amd-epyc-multi-l3",
        "single-socket-no-smt",
        "nvidia-h100-vm",
        "vm-2cpu",
    ] {
        let report = build(fixture(name), None);
        let table = render_table(&report);
        assert!(table.starts_with("NODE\n"), "{name}");
        assert!(
            table.lines().all(|line| line == line.trim_end()),
            "{name}: trailing spaces"
        );
        let json: serde_json::Value =
            serde_json::from_str(&render_json(&report).expect("json")).expect("valid JSON");
        assert_eq!(json["allocations"], serde_json::json!([]), "{name}");
        assert_eq!(json["shared_pool"], report.summary.online.to_string());
    }
    let amd = render_table(&build(fixture("amd-epyc-multi-l3"), None));
    assert!(amd.contains("SR-IOV PF, 0 of 8 VFs"), "{amd}");
    assert!(
        amd.contains("0000:c1:00.0  gpu   1002:740f  amdgpu  AMD GPU"),
        "{amd}"
    );
    let arm = render_table(&build(fixture("single-socket-no-smt"), None));
    assert!(arm.contains("  hugepages 64KB  0 total, 0 free"), "{arm}");
}

#[test]
fn held_devices_name_their_pod_on_the_device_or_its_pf_line() {
    let held: Vec<Held> = serde_json::from_value(serde_json::json!([
        {"address": "0000:af:01.0", "pod_id": "5e5e5e5e5e5e5e5e5e5e", "how": "netdev net1"},
        {"address": "0000:3b:00.0", "pod_id": "7a7a7a7a7a7a7a7a7a7a",
         "container_id": "c0c0c0c0c0c0c0c0c0", "how": "device"}
    ]))
    .expect("the mirror's shape");
    let report = with_held_devices(intel_report(), held);
    let table = render_table(&report);
    has_line(
        &section(&table, "NUMA NODE 0"),
        "    0000:3b:00.0  gpu   10de:26b9  nvidia  NVIDIA GPU; held by pod 7a7a7a7a7a7a7 \
         container c0c0c0c0c0c0c (device)",
    );
    let node1 = section(&table, "NUMA NODE 1");
    assert!(
        node1.iter().any(|line| line.contains("0000:af:00.0")
            && line.contains("VF 0000:af:01.0 held by pod 5e5e5e5e5e5e5 (netdev net1)")),
        "{node1:#?}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&render_json(&report).expect("json")).expect("valid JSON");
    assert_eq!(json["held_devices"][0]["how"], "netdev net1");
}
