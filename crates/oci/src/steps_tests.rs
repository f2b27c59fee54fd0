use ingot_placement::{PlacementConfig, Policy};
use ingot_topology::{Cpu, Hugepages, NumaNode};
use oci_spec::runtime::LinuxHugepageLimitBuilder;

use super::*;

/// Two NUMA nodes of two cores × two threads (CPU n and n+4 are siblings); 2 MB pages on node 1
/// only, 1 GB pages nowhere.
fn node() -> Topology {
    let cpus = (0..8)
        .map(|id| {
            let core = id % 4;
            Cpu {
                id,
                core_id: core,
                die_id: 0,
                cluster_id: None,
                socket_id: core / 2,
                numa_node: core / 2,
                l3_id: Some(core / 2),
                thread_siblings: [core, core + 4].into_iter().collect(),
            }
        })
        .collect();
    let numa = |id: u32, cpus: &str, free_2mb: u64| NumaNode {
        id,
        cpus: CpuSet::parse(cpus).expect("cpus"),
        memory_total_kb: 8 << 20,
        memory_free_kb: 4 << 20,
        hugepages: vec![Hugepages {
            size_kb: 2048,
            total: free_2mb,
            free: free_2mb,
        }],
        distances: vec![10, 21],
    };
    Topology {
        cpus,
        isolated: CpuSet::new(),
        nohz_full: CpuSet::new(),
        numa_nodes: vec![numa(0, "0-1,4-5", 0), numa(1, "2-3,6-7", 512)],
        pci_devices: Vec::new(),
        gpus: Vec::new(),
    }
}

fn exclusive(reserved: &str) -> Placement {
    Placement::new(
        &node(),
        PlacementConfig {
            policy: Policy::Exclusive,
            reserved: CpuSet::parse(reserved).expect("reserved"),
        },
    )
    .expect("placement")
}

fn guaranteed(cpus: i64) -> v1::LinuxContainerResources {
    v1::LinuxContainerResources {
        cpu_period: 100_000,
        cpu_quota: cpus * 100_000,
        cpu_shares: cpus * 1024,
        memory_limit_in_bytes: 1 << 30,
        ..Default::default()
    }
}

/// A spec as the base step leaves it for `resources`.
fn base(resources: &v1::LinuxContainerResources) -> Spec {
    let mut spec = Spec::default();
    let mut linux = oci_spec::runtime::Linux::default();
    linux.set_resources(Some(
        crate::cri::resources(Some(resources)).expect("resources"),
    ));
    spec.set_linux(Some(linux));
    spec
}

/// A CreateContainer's step input for container `id` with `tuning`.
fn tuning_input<'a>(
    id: &'a str,
    resources: &'a v1::LinuxContainerResources,
    node: &'a Topology,
    tuning: &'a ingot_tuning::Tuning,
) -> StepInput<'a> {
    StepInput {
        pod_id: "pod",
        container_id: id,
        resources: Some(resources),
        devices: &[],
        node,
        phase: Phase::Create,
        tuning: Some(tuning),
        cdi: None,
        pci_addresses: &[],
        realtime: None,
    }
}

fn run_for(
    id: &str,
    resources: &v1::LinuxContainerResources,
    placement: &mut Placement,
    phase: Phase,
) -> Result<(Spec, StepEffects), OciError> {
    let topology = node();
    let mut spec = base(resources);
    let input = StepInput {
        pod_id: "pod",
        container_id: id,
        resources: Some(resources),
        devices: &[],
        node: &topology,
        phase,
        tuning: None,
        cdi: None,
        pci_addresses: &[],
        realtime: None,
    };
    let effects = run(&mut spec, &input, placement)?;
    Ok((spec, effects))
}

fn cpu_of(spec: &Spec) -> (Option<String>, Option<String>) {
    let cpu = spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .and_then(|r| r.cpu().clone())
        .unwrap_or_default();
    (cpu.cpus().clone(), cpu.mems().clone())
}

#[test]
fn the_kubelet_cpuset_is_applied_exactly() {
    let mut placement = exclusive("0");
    let mut resources = guaranteed(2);
    resources.cpuset_cpus = "5-6".into();
    let (spec, effects) =
        run_for("c1", &resources, &mut placement, Phase::Create).expect("kubelet cpuset");
    assert_eq!(cpu_of(&spec), (Some("5-6".into()), Some("0-1".into())));
    assert_eq!(effects.assignment.expect("assignment").kind, Kind::Kubelet);
    assert!(placement.exclusive_cpus().is_empty());

    // A later update from the kubelet replaces it, live.
    resources.cpuset_cpus = "1".into();
    resources.cpuset_mems = "0".into();
    let (spec, _) = run_for("c1", &resources, &mut placement, Phase::Update).expect("update");
    assert_eq!(cpu_of(&spec), (Some("1".into()), Some("0".into())));
}

#[test]
fn a_cpuset_outside_the_online_cpus_is_refused_and_nothing_is_placed() {
    let mut placement = exclusive("0");
    let mut resources = guaranteed(1);
    resources.cpuset_cpus = "7-9".into();
    let err = run_for("c1", &resources, &mut placement, Phase::Create).expect_err("offline");
    let message = err.to_string();
    assert!(message.contains("linux.resources.cpuset_cpus"), "{message}");
    assert!(message.contains("8-9"), "{message}");
    assert!(placement.assignment("c1").is_none());
}

#[test]
fn guaranteed_integer_cpus_get_full_cores_of_one_node() {
    let mut placement = exclusive("0");
    let (spec, effects) =
        run_for("c1", &guaranteed(2), &mut placement, Phase::Create).expect("exclusive");
    let assignment = effects.assignment.expect("assignment");
    assert_eq!(assignment.kind, Kind::Exclusive);
    // CPU 0 is reserved, so core 0 (0,4) is not whole: the first full core is 1 (1,5).
    assert_eq!(cpu_of(&spec), (Some("1,5".into()), Some("0".into())));
    assert!(effects.shared_pool_changed);

    // A shared container now runs beside them, not on them.
    let burstable = v1::LinuxContainerResources {
        cpu_shares: 512,
        ..Default::default()
    };
    let (spec, effects) = run_for("c2", &burstable, &mut placement, Phase::Create).expect("shared");
    assert_eq!(effects.assignment.expect("assignment").kind, Kind::Shared);
    assert_eq!(cpu_of(&spec), (Some("0,2-4,6-7".into()), None));
    assert!(!effects.shared_pool_changed);
}

#[test]
fn more_exclusive_cpus_than_free_are_refused_with_nothing_half_allocated() {
    let mut placement = exclusive("0");
    let err = run_for("c1", &guaranteed(8), &mut placement, Phase::Create).expect_err("too many");
    let message = err.to_string();
    assert!(message.contains("8 exclusive CPUs"), "{message}");
    assert!(placement.assignment("c1").is_none());
    assert!(placement.exclusive_cpus().is_empty());
}

#[test]
fn hugepages_pick_the_memory_nodes_and_a_missing_size_is_refused() {
    let mut placement = exclusive("0");
    let mut resources = guaranteed(1);
    resources.hugepage_limits = vec![v1::HugepageLimit {
        page_size: "2MB".into(),
        limit: 64 << 20,
    }];
    let (spec, effects) =
        run_for("c1", &resources, &mut placement, Phase::Create).expect("hugepages");
    assert_eq!(effects.hugepage_nodes, Some(CpuSet::parse("1").expect("1")));
    assert_eq!(cpu_of(&spec).1, Some("1".into()));
    // The CPU comes from the node whose memory it uses.
    let cpus = CpuSet::parse(&cpu_of(&spec).0.expect("cpus")).expect("cpus");
    assert!(
        cpus.is_subset(&CpuSet::parse("2-3,6-7").expect("node 1")),
        "{cpus}"
    );

    resources.hugepage_limits = vec![v1::HugepageLimit {
        page_size: "1GB".into(),
        limit: 1 << 30,
    }];
    let err = run_for("c2", &resources, &mut placement, Phase::Create).expect_err("1GB");
    let message = err.to_string();
    assert!(
        message.contains("hugepage_limits.page_size") && message.contains("no 1GB hugepages"),
        "{message}"
    );
    assert!(message.contains("it has: 2MB"), "{message}");
    assert!(placement.assignment("c2").is_none());

    // A size the node lacks with a zero limit is what a kubelet sends for sizes not asked for.
    resources.hugepage_limits[0].limit = 0;
    run_for("c3", &resources, &mut placement, Phase::Create).expect("zero limit");
}

#[test]
fn page_sizes_parse_like_the_cri_writes_them() {
    assert_eq!(page_size_kb("2MB"), Some(2048));
    assert_eq!(page_size_kb("1GB"), Some(1 << 20));
    assert_eq!(page_size_kb("64KB"), Some(64));
    assert_eq!(page_size_kb("2Mi"), None);
    assert_eq!(page_size_kb("MB"), None);
    let mut spec = base(&guaranteed(1));
    let limit = LinuxHugepageLimitBuilder::default()
        .page_size("huge")
        .limit(1)
        .build()
        .expect("limit");
    resources_mut(&mut spec).set_hugepage_limits(Some(vec![limit]));
    let topology = node();
    let input = StepInput {
        pod_id: "pod",
        container_id: "c1",
        resources: None,
        devices: &[],
        node: &topology,
        phase: Phase::Create,
        tuning: None,
        cdi: None,
        pci_addresses: &[],
        realtime: None,
    };
    let err = run(&mut spec, &input, &mut exclusive("")).expect_err("not a size");
    assert!(
        err.to_string().contains("\"huge\" is not a page size"),
        "{err}"
    );
}

#[test]
fn cpus_follow_the_numa_node_of_the_containers_vfio_device() {
    let mut topology = node();
    let pci = |address: &str, group: u32, numa_node: u32| ingot_topology::PciDevice {
        address: address.into(),
        vendor: "8086".into(),
        device: "1889".into(),
        class_code: "020000".into(),
        class: ingot_topology::PciClass::Network,
        numa_node: Some(numa_node),
        driver: Some("vfio-pci".into()),
        iommu_group: Some(group),
        netdevs: Vec::new(),
        physfn: None,
        virtfns: Vec::new(),
        sriov_totalvfs: None,
        sriov_numvfs: None,
    };
    topology.pci_devices = vec![pci("0000:af:01.0", 61, 1), pci("0000:3b:01.0", 40, 0)];
    let devices = [v1::Device {
        container_path: "/dev/vfio/61".into(),
        host_path: "/dev/vfio/61".into(),
        permissions: "rw".into(),
    }];
    let resources = guaranteed(2);
    let mut placement = exclusive("0");
    let mut spec = base(&resources);
    let input = StepInput {
        pod_id: "pod",
        container_id: "dpdk",
        resources: Some(&resources),
        devices: &devices,
        node: &topology,
        phase: Phase::Create,
        tuning: None,
        cdi: None,
        pci_addresses: &[],
        realtime: None,
    };
    let effects = run(&mut spec, &input, &mut placement).expect("aligned");
    assert_eq!(effects.device_nodes, Some(CpuSet::parse("1").expect("1")));
    // Node 1's first full core, though node 0 has one free too.
    assert_eq!(cpu_of(&spec), (Some("2,6".into()), Some("1".into())));
    // A device that is not VFIO, or a group no PCI function has, aligns nothing.
    assert_eq!(vfio_group("/dev/vfio/vfio"), None);
    assert_eq!(vfio_group("/dev/nvidia0"), None);

    // A CDI device whose spec names its PCI function (a GPU, as `ingot cdi generate` writes
    // it) pulls the CPUs to that function's node.
    let mut gpu = pci("0000:3b:00.0", 7, 0);
    gpu.vendor = "10de".into();
    let mut topology = topology.clone();
    topology.pci_devices.push(gpu);
    let mut cdi = ingot_devices::cdi::Resolved::default();
    cdi.devices.push(ingot_devices::cdi::ResolvedDevice {
        name: "nvidia.com/gpu=0".into(),
        spec_file: "/var/run/cdi/nvidia.json".into(),
        pci_address: Some("0000:3b:00.0".into()),
    });
    let mut placement = exclusive("0");
    let mut spec = base(&resources);
    let input = StepInput {
        container_id: "cuda",
        devices: &[],
        node: &topology,
        cdi: Some(&cdi),
        pci_addresses: &[],
        realtime: None,
        ..input
    };
    let effects = run(&mut spec, &input, &mut placement).expect("aligned");
    assert_eq!(effects.device_nodes, Some(CpuSet::parse("0").expect("0")));
    assert_eq!(cpu_of(&spec).1, Some("0".into()));

    // An SR-IOV VF given by annotation, by its PCI address: node 1's.
    let vf = ["0000:af:01.0".to_string()];
    let mut placement = exclusive("0");
    let mut spec = base(&resources);
    let input = StepInput {
        container_id: "vf",
        cdi: None,
        pci_addresses: &vf,
        ..input
    };
    let effects = run(&mut spec, &input, &mut placement).expect("aligned");
    assert_eq!(effects.device_nodes, Some(CpuSet::parse("1").expect("1")));
}

#[test]
fn tuning_needs_whole_cpus_of_its_own_and_lifts_the_quota() {
    let topology = node();
    let wanted = ingot_tuning::Tuning {
        quota_off: true,
        ..Default::default()
    };
    let input = |resources| tuning_input("rt", resources, &topology, &wanted);
    let whole: &'static v1::LinuxContainerResources = Box::leak(Box::new(guaranteed(2)));
    let mut placement = exclusive("0");
    let mut spec = base(whole);
    let effects = run(&mut spec, &input(whole), &mut placement).expect("exclusive");
    assert_eq!(effects.tuning.as_ref(), Some(&wanted));
    let quota = spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .and_then(|r| r.cpu().as_ref())
        .and_then(|c| c.quota());
    assert_eq!(quota, Some(-1), "cpu-quota.crio.io: disable");

    // Half a CPU, or whole CPUs on a node whose policy shares them: refused, nothing placed.
    let half: &'static v1::LinuxContainerResources =
        Box::leak(Box::new(v1::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 512,
            memory_limit_in_bytes: 1 << 30,
            ..Default::default()
        }));
    let mut placement = exclusive("0");
    let err = run(&mut base(half), &input(half), &mut placement).expect_err("half a CPU");
    let message = err.to_string();
    assert!(message.contains("cpu-quota.crio.io"), "{message}");
    assert!(
        message.contains("not Guaranteed with whole CPUs"),
        "{message}"
    );
    assert!(placement.assignment("rt").is_none());
    let mut shared = Placement::new(&node(), PlacementConfig::default()).expect("placement");
    run(&mut base(whole), &input(whole), &mut shared).expect_err("no CPUs of its own");
}

#[test]
fn shared_cpus_join_the_containers_own_with_crio_variables_and_quota() {
    let topology = node();
    let wanted = ingot_tuning::Tuning {
        shared_cpus: true,
        ..Default::default()
    };
    let input = |resources| tuning_input("app", resources, &topology, &wanted);
    let whole: &'static v1::LinuxContainerResources = Box::leak(Box::new(guaranteed(2)));
    let mut placement = exclusive("0");
    let mut spec = base(whole);
    run(&mut spec, &input(whole), &mut placement).expect("shared");
    let own = placement.assignment("app").expect("placed").cpus.clone();
    assert!(!own.contains(0), "its own CPUs stay exclusive ones: {own}");
    let cpu = spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .and_then(|r| r.cpu().clone())
        .expect("cpu");
    let mut with_shared = own.clone();
    with_shared.insert(0);
    assert_eq!(
        cpu.cpus().as_deref(),
        Some(with_shared.to_string().as_str())
    );
    assert_eq!(
        cpu.quota(),
        Some(300_000),
        "two CPUs' quota and one shared CPU's"
    );
    let env = spec
        .process()
        .as_ref()
        .and_then(|p| p.env().clone())
        .unwrap_or_default();
    assert!(
        env.contains(&format!("OPENSHIFT_ISOLATED_CPUS={own}")),
        "{env:?}"
    );
    assert!(
        env.contains(&"OPENSHIFT_SHARED_CPUS=0".to_string()),
        "{env:?}"
    );
    assert!(env.contains(&format!("INGOT_CPUS={own}")), "{env:?}");

    // No reserved CPUs: nothing to share, refused naming the annotation and what to set.
    let mut none_reserved = exclusive("");
    let err = run(&mut base(whole), &input(whole), &mut none_reserved).expect_err("none");
    let message = err.to_string();
    assert!(message.contains("cpu-shared.crio.io"), "{message}");
    assert!(message.contains("placement.reserved"), "{message}");
    assert!(none_reserved.assignment("app").is_none());
}
