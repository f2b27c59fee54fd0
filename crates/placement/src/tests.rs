use ingot_topology::CpuSet;

use crate::{
    guaranteed_integer_cpus,
    testing::{machine, set},
    Kind, Placement, PlacementConfig, PlacementError, Policy, Request,
};

fn exclusive(reserved: &str) -> PlacementConfig {
    PlacementConfig {
        policy: Policy::Exclusive,
        reserved: set(reserved),
    }
}

fn guaranteed(container_id: &str, cpus: u32) -> Request {
    Request {
        pod_id: format!("pod-{container_id}"),
        container_id: container_id.to_string(),
        exclusive_cpus: cpus,
        ..Request::default()
    }
}

fn burstable(container_id: &str) -> Request {
    guaranteed(container_id, 0)
}

fn placement(topology: &ingot_topology::Topology, config: PlacementConfig) -> Placement {
    Placement::new(topology, config).expect("placement")
}

#[test]
fn this_vm_one_exclusive_cpu_then_refusal_then_release() {
    // 2 CPUs, 1 node, no SMT; CPU 0 kept for housekeeping.
    let topology = machine(1, 1, 1, 2, 1);
    let mut placement = placement(&topology, exclusive("0"));
    let shared = placement.allocate(&burstable("web")).expect("shared");
    assert_eq!(shared.cpus, set("0-1"));

    let first = placement.allocate(&guaranteed("rt", 1)).expect("exclusive");
    assert_eq!(first.kind, Kind::Exclusive);
    assert_eq!(first.cpus, set("1"));
    assert_eq!(first.mems, set("0"));
    assert_eq!(placement.shared_pool(), set("0"));
    assert_eq!(placement.exclusive_cpus(), set("1"));
    assert_eq!(placement.housekeeping_cpus(), set("0"));
    assert_eq!(
        placement.assignment("web").map(|a| a.cpus.clone()),
        Some(set("0"))
    );
    assert_eq!(placement.shared_containers(), vec!["web".to_string()]);

    let before = placement.clone();
    let err = placement
        .allocate(&guaranteed("rt2", 1))
        .expect_err("no CPU left");
    assert_eq!(
        err,
        PlacementError::InsufficientCpus {
            requested: 1,
            free: CpuSet::new(),
            available: 0
        }
    );
    assert_eq!(err.to_string(), "1 exclusive CPU requested, 0 free (none)");
    assert_eq!(placement, before, "a failed allocation changes nothing");

    let released = placement.release("rt").expect("was placed");
    assert_eq!(released.cpus, set("1"));
    assert_eq!(placement.shared_pool(), set("0-1"));
    assert_eq!(placement.exclusive_cpus(), CpuSet::new());
    assert_eq!(
        placement.assignment("web").map(|a| a.cpus.clone()),
        Some(set("0-1"))
    );
    assert_eq!(placement.release("rt"), None);
}

#[test]
fn insufficient_message_counts_the_free_cpus() {
    let topology = machine(1, 1, 1, 4, 1);
    let mut placement = placement(&topology, exclusive("0-2"));
    let err = placement
        .allocate(&guaranteed("big", 2))
        .expect_err("one free");
    assert_eq!(err.to_string(), "2 exclusive CPUs requested, 1 free (3)");
}

#[test]
fn without_reserved_cpus_the_last_free_cpu_stays_shared() {
    let topology = machine(1, 1, 1, 2, 1);
    let mut placement = placement(&topology, exclusive(""));
    let err = placement
        .allocate(&guaranteed("all", 2))
        .expect_err("pool keeps one");
    assert_eq!(
        err.to_string(),
        "2 exclusive CPUs requested, 1 free (0-1, one kept for the shared pool)"
    );
    let one = placement.allocate(&guaranteed("one", 1)).expect("fits");
    assert_eq!(one.cpus, set("0"));
    assert_eq!(placement.shared_pool(), set("1"));
    assert!(placement.allocate(&guaranteed("two", 1)).is_err());
    assert_eq!(placement.housekeeping_cpus(), set("1"));
}

#[test]
fn kubelet_cpus_not_online_names_the_field_and_ids() {
    let topology = machine(1, 1, 1, 2, 1);
    let mut placement = placement(&topology, exclusive("0"));
    let request = Request {
        kubelet_cpus: Some(set("5")),
        ..guaranteed("c", 1)
    };
    let err = placement.allocate(&request).expect_err("offline");
    assert_eq!(
        err.to_string(),
        "cpuset_cpus \"5\": CPU 5 is not online (online: 0-1)"
    );
    let request = Request {
        kubelet_cpus: Some(set("1-3")),
        ..guaranteed("c", 1)
    };
    let err = placement.allocate(&request).expect_err("offline");
    assert_eq!(
        err.to_string(),
        "cpuset_cpus \"1-3\": CPUs 2-3 are not online (online: 0-1)"
    );
    let request = Request {
        kubelet_mems: Some(set("0,2")),
        ..guaranteed("c", 1)
    };
    let err = placement.allocate(&request).expect_err("no node 2");
    assert_eq!(
        err.to_string(),
        "cpuset_mems \"0,2\": node 2 is not a NUMA node (nodes: 0)"
    );
    assert_eq!(placement.assignment("c"), None);
}

#[test]
fn kubelet_cpuset_is_applied_exactly_and_not_counted_exclusive() {
    let topology = machine(2, 1, 1, 2, 2); // nodes 0: 0-1,4-5; 1: 2-3,6-7
    let mut placement = placement(&topology, exclusive("0"));
    let request = Request {
        kubelet_cpus: Some(set("2,6")),
        ..guaranteed("k", 2)
    };
    let assignment = placement.allocate(&request).expect("kubelet");
    assert_eq!(assignment.kind, Kind::Kubelet);
    assert_eq!(assignment.cpus, set("2,6"));
    assert_eq!(assignment.mems, set("1"), "the nodes of the kubelet's CPUs");
    assert_eq!(placement.exclusive_cpus(), CpuSet::new());
    assert_eq!(placement.shared_pool(), set("0-7"));

    let request = Request {
        kubelet_cpus: Some(set("1")),
        kubelet_mems: Some(set("0-1")),
        ..burstable("k2")
    };
    let assignment = placement.allocate(&request).expect("kubelet");
    assert_eq!((assignment.cpus, assignment.mems), (set("1"), set("0-1")));
    assert!(placement.shared_containers().is_empty());
}

#[test]
fn policy_none_and_ineligible_containers_share_the_pool() {
    let topology = machine(2, 1, 1, 2, 1);
    let mut placement = placement(&topology, PlacementConfig::default());
    let assignment = placement.allocate(&guaranteed("g", 2)).expect("shared");
    assert_eq!(assignment.kind, Kind::Shared);
    assert_eq!(assignment.cpus, set("0-3"));
    assert_eq!(assignment.mems, CpuSet::new(), "empty: all nodes");
    let with_hugepages = Request {
        hugepage_nodes: Some(set("1")),
        ..burstable("h")
    };
    let assignment = placement.allocate(&with_hugepages).expect("shared");
    assert_eq!((assignment.kind, assignment.mems), (Kind::Shared, set("1")));
    assert_eq!(placement.exclusive_cpus(), CpuSet::new());
}

#[test]
fn an_even_request_gets_whole_cores() {
    let topology = machine(1, 1, 1, 4, 2); // cores: {0,4} {1,5} {2,6} {3,7}
    let mut placement = placement(&topology, exclusive(""));
    let assignment = placement.allocate(&guaranteed("a", 4)).expect("fits");
    assert_eq!(assignment.cpus, set("0-1,4-5"));
}

#[test]
fn an_odd_request_takes_one_single_thread() {
    let topology = machine(1, 1, 1, 4, 2);
    let mut placement = placement(&topology, exclusive(""));
    let assignment = placement.allocate(&guaranteed("a", 3)).expect("fits");
    assert_eq!(assignment.cpus, set("0-1,4"));
}

#[test]
fn single_threads_fill_broken_cores_before_breaking_whole_ones() {
    let topology = machine(1, 1, 1, 4, 2);
    let mut placement = placement(&topology, exclusive(""));
    let first = placement.allocate(&guaranteed("a", 1)).expect("fits");
    assert_eq!(first.cpus, set("0"));
    let second = placement.allocate(&guaranteed("b", 1)).expect("fits");
    assert_eq!(
        second.cpus,
        set("4"),
        "the sibling of CPU 0, not a fresh core"
    );
    let pair = placement.allocate(&guaranteed("c", 2)).expect("fits");
    assert_eq!(pair.cpus, set("1,5"));
}

#[test]
fn reserved_cpus_break_their_cores() {
    let topology = machine(1, 1, 1, 4, 2);
    let mut placement = placement(&topology, exclusive("0"));
    // Core {0,4} is not whole anymore: a pair comes from core {1,5}.
    let pair = placement.allocate(&guaranteed("a", 2)).expect("fits");
    assert_eq!(pair.cpus, set("1,5"));
    let single = placement.allocate(&guaranteed("b", 1)).expect("fits");
    assert_eq!(single.cpus, set("4"));
}

#[test]
fn whole_cores_come_from_the_fewest_l3_domains() {
    // L3 0: cores {0,4} {1,5}; L3 1: cores {2,6} {3,7}.
    let topology = machine(1, 1, 2, 2, 2);
    let mut placement = placement(&topology, exclusive(""));
    let small = placement.allocate(&guaranteed("a", 2)).expect("fits");
    assert_eq!(small.cpus, set("0,4"));
    let big = placement.allocate(&guaranteed("b", 4)).expect("fits");
    assert_eq!(
        big.cpus,
        set("2-3,6-7"),
        "one L3 domain, not {{1,5}} plus half of the other"
    );
}

#[test]
fn one_numa_node_when_it_fits_preferring_the_devices_node() {
    let topology = machine(2, 1, 1, 4, 2); // node 0: 0-3,8-11; node 1: 4-7,12-15
    let mut placement = placement(&topology, exclusive("0"));
    let near_nic = Request {
        numa_affinity: Some(set("1")),
        ..guaranteed("a", 4)
    };
    let assignment = placement.allocate(&near_nic).expect("fits");
    assert_eq!(assignment.cpus, set("4-5,12-13"));
    assert_eq!(assignment.mems, set("1"));
    assert!(assignment.notes.is_empty(), "{:?}", assignment.notes);

    let plain = placement.allocate(&guaranteed("b", 6)).expect("fits");
    assert_eq!(plain.cpus, set("1-3,9-11"), "node 0 holds 6; cores whole");
    assert_eq!(plain.mems, set("0"));
}

#[test]
fn unhonoured_affinity_allocates_anyway_with_a_note() {
    let topology = machine(2, 1, 1, 2, 1); // node 0: 0-1; node 1: 2-3
    let mut placement = placement(&topology, exclusive("0"));
    placement.allocate(&guaranteed("a", 2)).expect("node 1");
    let request = Request {
        numa_affinity: Some(set("1")),
        ..guaranteed("b", 1)
    };
    let assignment = placement.allocate(&request).expect("anyway");
    assert_eq!(assignment.cpus, set("1"));
    assert_eq!(
        assignment.notes,
        vec!["not NUMA-aligned: CPUs 1 on node(s) 0, devices on node(s) 1".to_string()]
    );
}

#[test]
fn a_request_larger_than_any_node_spans_the_fewest_nearest_nodes() {
    // Four nodes of two CPUs; nodes 0-1 on socket 0, 2-3 on socket 1.
    let topology = machine(2, 2, 1, 2, 1);
    let mut placement = placement(&topology, exclusive(""));
    let assignment = placement.allocate(&guaranteed("a", 3)).expect("fits");
    assert_eq!(assignment.cpus, set("0-2"));
    assert_eq!(assignment.mems, set("0-1"));
    assert_eq!(
        assignment.notes,
        vec!["spans NUMA nodes 0-1: no single node has 3 free CPUs".to_string()]
    );
    // No node holds 4 now: nodes 2 and 3, on one socket, rather than what is left of node 1.
    let next = placement.allocate(&guaranteed("b", 4)).expect("fits");
    assert_eq!(next.cpus, set("4-7"));
}

#[test]
fn hugepage_nodes_decide_the_mems_and_attract_the_cpus() {
    let topology = machine(2, 1, 1, 2, 1);
    let mut placement = placement(&topology, exclusive(""));
    let request = Request {
        hugepage_nodes: Some(set("1")),
        ..guaranteed("a", 1)
    };
    let assignment = placement.allocate(&request).expect("fits");
    assert_eq!((assignment.cpus, assignment.mems), (set("2"), set("1")));

    let none_free = Request {
        hugepage_nodes: Some(CpuSet::new()),
        ..guaranteed("b", 1)
    };
    assert_eq!(
        placement.allocate(&none_free),
        Err(PlacementError::NoHugepageNodes)
    );
    let unknown = Request {
        hugepage_nodes: Some(set("7")),
        ..guaranteed("b", 1)
    };
    let err = placement.allocate(&unknown).expect_err("no node 7");
    assert_eq!(
        err.to_string(),
        "hugepage nodes \"7\": node 7 is not a NUMA node (nodes: 0-1)"
    );
    assert_eq!(placement.assignment("b"), None);
}

#[test]
fn memory_stays_on_the_cpus_node_when_hugepages_are_free_there_too() {
    // Found on the test node: hugepages free on both nodes gave a container on node 1 both.
    let topology = machine(2, 1, 1, 2, 1); // node 0: CPUs 0-1, node 1: CPUs 2-3
    let mut placement = placement(&topology, exclusive(""));
    let kubelet = Request {
        kubelet_cpus: Some(set("2")),
        hugepage_nodes: Some(set("0-1")),
        ..guaranteed("k", 1)
    };
    let assignment = placement.allocate(&kubelet).expect("kubelet");
    assert_eq!(
        (assignment.mems, assignment.notes),
        (set("1"), Vec::<String>::new())
    );
    let exclusive = Request {
        hugepage_nodes: Some(set("0-1")),
        ..guaranteed("e", 1)
    };
    let assignment = placement.allocate(&exclusive).expect("fits");
    assert_eq!(
        assignment.mems,
        placement.machine.nodes_of(&assignment.cpus)
    );
    assert_eq!(assignment.mems.len(), 1);
    // Hugepages free only on the other node: that node, said in a note.
    let remote = Request {
        kubelet_cpus: Some(set("1")),
        hugepage_nodes: Some(set("1")),
        ..guaranteed("r", 1)
    };
    let assignment = placement.allocate(&remote).expect("kubelet");
    assert_eq!(assignment.mems, set("1"));
    assert!(
        assignment
            .notes
            .contains(&"memory not local: CPUs 1 on node(s) 0, hugepages free on node(s) 1".into()),
        "{:?}",
        assignment.notes
    );
    // An update with the kubelet's CPUs follows the same rule.
    let moved = Request {
        kubelet_cpus: Some(set("3")),
        hugepage_nodes: Some(set("0-1")),
        ..guaranteed("k", 1)
    };
    assert_eq!(placement.update(&moved).expect("update").mems, set("1"));
}

#[test]
fn allocating_the_same_container_again_returns_its_assignment() {
    let topology = machine(1, 1, 1, 4, 1);
    let mut placement = placement(&topology, exclusive("0"));
    let first = placement.allocate(&guaranteed("a", 2)).expect("fits");
    let again = placement.allocate(&guaranteed("a", 2)).expect("same");
    assert_eq!(first, again);
    assert_eq!(placement.exclusive_cpus(), first.cpus);
}

#[test]
fn release_pod_releases_all_its_containers() {
    let topology = machine(1, 1, 1, 4, 1);
    let mut placement = placement(&topology, exclusive("0"));
    for (id, cpus) in [("a", 1), ("b", 1), ("c", 0)] {
        let request = Request {
            pod_id: "pod".to_string(),
            ..guaranteed(id, cpus)
        };
        placement.allocate(&request).expect("fits");
    }
    placement.allocate(&guaranteed("other", 1)).expect("fits");
    assert_eq!(placement.release_pod("pod"), vec!["a", "b", "c"]);
    assert_eq!(placement.exclusive_cpus(), set("3"));
    assert!(placement.release_pod("pod").is_empty());
}

#[test]
fn update_with_a_kubelet_cpuset_replaces_the_assignment() {
    let topology = machine(1, 1, 1, 4, 1);
    let mut placement = placement(&topology, exclusive("0"));
    placement.allocate(&burstable("web")).expect("shared");
    let assignment = placement.allocate(&guaranteed("a", 2)).expect("fits");
    assert_eq!(assignment.cpus, set("1-2"));

    let unchanged = placement.update(&guaranteed("a", 2)).expect("no cpuset");
    assert_eq!(unchanged, assignment);
    let same_cpus = Request {
        kubelet_cpus: Some(set("1-2")),
        ..guaranteed("b", 0)
    };
    placement.allocate(&same_cpus).expect("kubelet");
    assert_eq!(
        placement.assignment("b").map(|a| a.notes.clone()),
        Some(vec![
            "kubelet cpuset_cpus 1-2 overlaps CPUs 1-2 ingot allocated exclusively".to_string()
        ])
    );
    placement.release("b");

    let request = Request {
        kubelet_cpus: Some(set("3")),
        ..guaranteed("a", 2)
    };
    let updated = placement.update(&request).expect("kubelet");
    assert_eq!(
        (updated.kind, updated.cpus.clone()),
        (Kind::Kubelet, set("3"))
    );
    assert_eq!(placement.assignment("a"), Some(&updated));
    assert_eq!(placement.exclusive_cpus(), CpuSet::new(), "1-2 went back");
    assert_eq!(
        placement.assignment("web").map(|a| a.cpus.clone()),
        Some(set("0-3"))
    );

    let mems_only = Request {
        kubelet_mems: Some(set("0")),
        ..burstable("web")
    };
    let web = placement.update(&mems_only).expect("mems");
    assert_eq!((web.kind, web.mems), (Kind::Shared, set("0")));

    let err = placement.update(&burstable("ghost")).expect_err("unknown");
    assert_eq!(err.to_string(), "container \"ghost\" has no placement");
    let bad = Request {
        kubelet_cpus: Some(set("9")),
        ..burstable("web")
    };
    let before = placement.clone();
    assert!(placement.update(&bad).is_err());
    assert_eq!(placement, before);
}

#[test]
fn housekeeping_cpus_are_reserved_else_shared_and_not_isolated() {
    let mut topology = machine(1, 1, 1, 4, 1);
    topology.isolated = set("2-3");
    let reserved = placement(&topology, exclusive("1"));
    assert_eq!(reserved.housekeeping_cpus(), set("1"));

    let mut placement = placement(&topology, exclusive(""));
    assert_eq!(placement.housekeeping_cpus(), set("0-1"));
    placement.allocate(&guaranteed("a", 2)).expect("fits");
    assert_eq!(placement.exclusive_cpus(), set("0-1"));
    assert_eq!(
        placement.housekeeping_cpus(),
        set("2-3"),
        "all non-isolated CPUs exclusive: the shared pool"
    );
}

#[test]
fn reserved_cpus_must_be_online() {
    let topology = machine(1, 1, 1, 2, 1);
    let err = Placement::new(&topology, exclusive("1-3")).expect_err("offline");
    assert_eq!(
        err.to_string(),
        "reserved CPUs \"1-3\": CPUs 2-3 are not online (online: 0-1)"
    );
    let mut empty = topology.clone();
    empty.cpus.clear();
    assert_eq!(
        Placement::new(&empty, PlacementConfig::default()),
        Err(PlacementError::NoOnlineCpus)
    );
}

#[test]
fn checkpoint_and_restore_lose_nothing() {
    let topology = machine(2, 1, 1, 2, 2);
    let config = exclusive("0");
    let mut placement = placement(&topology, config.clone());
    placement.allocate(&burstable("web")).expect("shared");
    placement.allocate(&guaranteed("a", 2)).expect("fits");
    let near = Request {
        numa_affinity: Some(set("0")),
        ..guaranteed("b", 3)
    };
    placement.allocate(&near).expect("fits");
    let kubelet = Request {
        kubelet_cpus: Some(set("1")),
        ..burstable("k")
    };
    placement.allocate(&kubelet).expect("kubelet");

    let checkpoint = placement.checkpoint();
    let text = String::from_utf8(checkpoint.clone()).expect("utf-8");
    assert!(text.starts_with("{\"version\":1,"), "{text}");
    let (restored, dropped) = Placement::restore(&topology, config, &checkpoint).expect("restore");
    assert!(dropped.is_empty(), "{dropped:?}");
    assert_eq!(restored, placement);
    assert_eq!(restored.checkpoint(), checkpoint);
}

#[test]
fn restore_drops_what_no_longer_fits_and_refuses_garbage() {
    let big = machine(1, 1, 1, 4, 1);
    let mut placement = placement(&big, exclusive("0"));
    placement.allocate(&guaranteed("low", 1)).expect("fits");
    placement.allocate(&guaranteed("high", 2)).expect("fits");
    placement.allocate(&burstable("web")).expect("shared");
    assert_eq!(
        placement.assignment("high").map(|a| a.cpus.clone()),
        Some(set("2-3"))
    );
    let checkpoint = placement.checkpoint();

    // CPUs 2-3 went offline across the restart.
    let small = machine(1, 1, 1, 2, 1);
    let (restored, dropped) =
        Placement::restore(&small, exclusive("0"), &checkpoint).expect("restore");
    assert_eq!(
        dropped,
        vec!["container \"high\": exclusive cpus \"2-3\" are not all online (online: 0-1)"]
    );
    assert_eq!(restored.exclusive_cpus(), set("1"));
    assert_eq!(
        restored.assignment("web").map(|a| a.cpus.clone()),
        Some(set("0"))
    );

    // CPU 1 became a reserved CPU.
    let (restored, dropped) =
        Placement::restore(&big, exclusive("0-1"), &checkpoint).expect("restore");
    assert_eq!(
        dropped,
        vec!["container \"low\": exclusive cpus \"1\" include reserved CPUs 1"]
    );
    assert_eq!(restored.exclusive_cpus(), set("2-3"));

    for garbage in [&b""[..], b"{", b"[]", b"{\"version\":2,\"containers\":[]}"] {
        let err = Placement::restore(&big, exclusive("0"), garbage).expect_err("garbage");
        assert!(matches!(err, PlacementError::Checkpoint { .. }), "{err}");
    }
    let err = Placement::restore(&big, exclusive("0"), b"{\"version\":2,\"containers\":[]}")
        .expect_err("version");
    assert_eq!(
        err.to_string(),
        "placement checkpoint: version 2 (this ingot reads version 1)"
    );
}

#[test]
fn restore_keeps_the_shared_pool_non_empty_and_exclusive_sets_disjoint() {
    let topology = machine(1, 1, 1, 2, 1);
    let checkpoint = br#"{"version":1,"containers":[
        {"container_id":"a","pod_id":"p","cpus":"0","mems":"0","kind":"exclusive","notes":[]},
        {"container_id":"b","pod_id":"p","cpus":"0","mems":"0","kind":"exclusive","notes":[]},
        {"container_id":"c","pod_id":"p","cpus":"1","mems":"0","kind":"exclusive","notes":[]},
        {"container_id":"d","pod_id":"p","cpus":"","mems":"3","kind":"shared","notes":[]}
    ]}"#;
    let (restored, dropped) =
        Placement::restore(&topology, exclusive(""), checkpoint).expect("restore");
    assert_eq!(
        dropped,
        vec![
            "container \"b\": exclusive cpus \"0\" overlap CPUs 0 of another container",
            "container \"c\": exclusive cpus \"1\" would leave the shared pool empty",
            "container \"d\": mems 3 name nodes 3 that are not NUMA nodes (nodes: 0)",
        ]
    );
    assert_eq!(restored.exclusive_cpus(), set("0"));
    assert_eq!(restored.shared_pool(), set("1"));
}

#[test]
fn inconsistent_sibling_lists_still_give_disjoint_cores() {
    let mut topology = machine(1, 1, 1, 2, 2); // cores {0,2} {1,3}
                                               // CPU 2 claims CPU 1 and an offline CPU 9 as siblings too.
    if let Some(cpu) = topology.cpus.iter_mut().find(|cpu| cpu.id == 2) {
        cpu.thread_siblings = set("0-2,9");
    }
    let mut placement = placement(&topology, exclusive(""));
    let assignment = placement.allocate(&guaranteed("a", 3)).expect("fits");
    assert_eq!(assignment.cpus.len(), 3);
    assert_eq!(placement.shared_pool().len(), 1);
}

#[test]
fn guaranteed_integer_cpus_reads_the_cri_resources() {
    let gib = 1 << 30;
    assert_eq!(
        guaranteed_integer_cpus(200_000, 100_000, 2048, gib),
        Some(2)
    );
    assert_eq!(
        guaranteed_integer_cpus(100_000, 100_000, 1024, gib),
        Some(1)
    );
    // Fractional limit, request below limit, no memory limit, no limit at all.
    assert_eq!(guaranteed_integer_cpus(150_000, 100_000, 1536, gib), None);
    assert_eq!(guaranteed_integer_cpus(200_000, 100_000, 1024, gib), None);
    assert_eq!(guaranteed_integer_cpus(200_000, 100_000, 2048, 0), None);
    assert_eq!(guaranteed_integer_cpus(0, 100_000, 2, gib), None);
    assert_eq!(guaranteed_integer_cpus(-1, 100_000, 2, gib), None);
    assert_eq!(guaranteed_integer_cpus(100_000, 0, 1024, gib), None);
    assert_eq!(guaranteed_integer_cpus(i64::MAX, 1, 1024, gib), None);
    assert_eq!(
        guaranteed_integer_cpus(i64::from(u32::MAX) * 2, 2, i64::from(u32::MAX) * 1024, gib),
        Some(u32::MAX)
    );
}

#[test]
fn config_reads_from_text() {
    let config: PlacementConfig =
        serde_json::from_str(r#"{"policy":"exclusive","reserved":"0-1"}"#).expect("config");
    assert_eq!(config, exclusive("0-1"));
    let default: PlacementConfig = serde_json::from_str("{}").expect("config");
    assert_eq!(default.policy, Policy::None);
    assert!(serde_json::from_str::<PlacementConfig>(r#"{"policy":"static"}"#).is_err());
}

#[test]
fn a_released_assignment_is_reinstated_unless_its_cpus_were_taken() {
    let topology = machine(1, 1, 1, 2, 1);
    let mut placement = placement(&topology, exclusive("0"));
    placement.allocate(&burstable("web")).expect("shared");
    let held = placement.allocate(&guaranteed("rt", 1)).expect("exclusive");
    let before = placement.clone();
    let released = placement.release("rt").expect("placed");
    let pod = guaranteed("rt", 1).pod_id;
    placement
        .reinstate("rt", &pod, released.clone())
        .expect("nobody took CPU 1");
    assert_eq!(placement, before, "as it was, the shared pool included");
    assert_eq!(placement.assignment("rt"), Some(&held));

    placement.release("rt");
    placement
        .allocate(&guaranteed("other", 1))
        .expect("CPU 1 again");
    let err = placement
        .reinstate("rt", &pod, released)
        .expect_err("CPU 1 is another's now");
    assert!(err.to_string().contains("CPUs 1"), "{err}");
    assert!(placement.assignment("rt").is_none());
}
