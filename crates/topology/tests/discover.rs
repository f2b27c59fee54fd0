//! `discover` against the fixture trees (hand-made machine shapes and two real captures), against
//! this machine's own `/`, and against altered copies of the fixtures for what must fail.

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
};

use ingot_topology::{
    discover, CpuSet, Gpu, GpuVendor, Hugepages, PciClass, PciDevice, Topology, TopologyError,
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn discover_fixture(name: &str) -> Topology {
    discover(&fixture(name)).unwrap_or_else(|err| panic!("{name}: {err}"))
}

fn set(list: &str) -> CpuSet {
    CpuSet::parse(list).expect("a CPU list")
}

fn pci<'a>(topology: &'a Topology, address: &str) -> &'a PciDevice {
    topology
        .pci_devices
        .iter()
        .find(|device| device.address == address)
        .unwrap_or_else(|| panic!("no PCI device {address}"))
}

fn hugepages(size_kb: u64, total: u64, free: u64) -> Hugepages {
    Hugepages {
        size_kb,
        total,
        free,
    }
}

/// A fixture copied into a temp dir, symlinks kept as symlinks, to be altered by one test.
fn fixture_copy(name: &str) -> tempfile::TempDir {
    fn copy_tree(from: &Path, to: &Path) {
        fs::create_dir_all(to).expect("create dir");
        for entry in fs::read_dir(from).expect("read fixture dir") {
            let entry = entry.expect("fixture entry");
            let (source, target) = (entry.path(), to.join(entry.file_name()));
            let kind = entry.file_type().expect("file type");
            if kind.is_symlink() {
                symlink(fs::read_link(&source).expect("read link"), &target).expect("symlink");
            } else if kind.is_dir() {
                copy_tree(&source, &target);
            } else {
                fs::copy(&source, &target).expect("copy file");
            }
        }
    }
    let dir = tempfile::tempdir().expect("temp dir");
    copy_tree(&fixture(name), dir.path());
    dir
}

fn write(root: &Path, relative: &str, contents: &str) {
    let path = root.join(relative);
    fs::create_dir_all(path.parent().expect("a parent")).expect("create dir");
    fs::write(path, contents).expect("write");
}

fn assert_malformed(result: Result<Topology, TopologyError>, expected_path: &Path) -> String {
    match result {
        Err(TopologyError::Malformed { path, reason }) => {
            assert_eq!(path, expected_path, "{reason}");
            reason
        }
        other => panic!(
            "expected Malformed for {}, got {other:?}",
            expected_path.display()
        ),
    }
}

fn assert_read_error(result: Result<Topology, TopologyError>, expected_path: &Path) {
    match result {
        Err(TopologyError::Read { path, source }) => {
            assert_eq!(path, expected_path, "{source}");
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!(
            "expected Read for {}, got {other:?}",
            expected_path.display()
        ),
    }
}

// ---- intel-2s-smt-isolated ----

#[test]
fn intel_two_sockets_siblings_cores_and_l3() {
    let topology = discover_fixture("intel-2s-smt-isolated");
    assert_eq!(topology.cpus.len(), 16);
    assert_eq!(topology.online(), set("0-15"));
    let ids: Vec<u32> = topology.cpus.iter().map(|cpu| cpu.id).collect();
    assert_eq!(ids, (0..16).collect::<Vec<_>>());

    let cpu3 = topology.cpu(3).expect("cpu 3");
    assert_eq!(cpu3.thread_siblings, set("3,11"));
    assert_eq!((cpu3.socket_id, cpu3.core_id, cpu3.numa_node), (0, 3, 0));
    assert_eq!(
        (cpu3.die_id, cpu3.cluster_id, cpu3.l3_id),
        (0, Some(3), Some(0))
    );

    // Intel numbering: the first threads of socket 1 follow those of socket 0.
    let cpu4 = topology.cpu(4).expect("cpu 4");
    assert_eq!(cpu4.thread_siblings, set("4,12"));
    assert_eq!((cpu4.socket_id, cpu4.core_id, cpu4.numa_node), (1, 0, 1));
    assert_eq!((cpu4.cluster_id, cpu4.l3_id), (Some(32), Some(1)));

    let cpu12 = topology.cpu(12).expect("cpu 12");
    assert_eq!(
        (cpu12.socket_id, cpu12.core_id, cpu12.numa_node, cpu12.l3_id),
        (1, 0, 1, Some(1))
    );
    for cpu in &topology.cpus {
        assert_eq!(cpu.thread_siblings.len(), 2, "cpu {}", cpu.id);
        assert!(cpu.thread_siblings.contains(cpu.id));
        assert_eq!(cpu.l3_id, Some(cpu.socket_id));
    }
}

#[test]
fn intel_isolated_and_nohz_full() {
    let topology = discover_fixture("intel-2s-smt-isolated");
    assert_eq!(topology.isolated, set("2-7,10-15"));
    assert_eq!(topology.nohz_full, set("2-7,10-15"));
    // Housekeeping is left with both threads of socket 0's first two cores.
    assert_eq!(
        topology.online().difference(&topology.isolated),
        set("0-1,8-9")
    );
}

#[test]
fn intel_numa_nodes_memory_hugepages_and_distances() {
    let topology = discover_fixture("intel-2s-smt-isolated");
    let ids: Vec<u32> = topology.numa_nodes.iter().map(|node| node.id).collect();
    assert_eq!(ids, vec![0, 1]);

    let node0 = topology.numa_node(0).expect("node 0");
    assert_eq!(node0.cpus, set("0-3,8-11"));
    assert_eq!(
        (node0.memory_total_kb, node0.memory_free_kb),
        (196_471_808, 180_224_000)
    );
    assert_eq!(
        node0.hugepages,
        vec![hugepages(2048, 1024, 512), hugepages(1_048_576, 4, 2)]
    );
    assert_eq!(node0.distances, vec![10, 21]);

    let node1 = topology.numa_node(1).expect("node 1");
    assert_eq!(node1.cpus, set("4-7,12-15"));
    assert_eq!(
        (node1.memory_total_kb, node1.memory_free_kb),
        (198_180_864, 190_054_400)
    );
    assert_eq!(
        node1.hugepages,
        vec![hugepages(2048, 2048, 2048), hugepages(1_048_576, 8, 8)]
    );
    assert_eq!(node1.distances, vec![21, 10]);

    assert_eq!(topology.hugepage_sizes_kb(), vec![2048, 1_048_576]);
    let names: Vec<String> = node1.hugepages.iter().map(Hugepages::size_name).collect();
    assert_eq!(names, vec!["2MB", "1GB"]);
}

#[test]
fn intel_sriov_pf_and_its_vfs() {
    let topology = discover_fixture("intel-2s-smt-isolated");
    let vfs = ["0000:af:01.0", "0000:af:01.1", "0000:af:01.2"];

    let pf = pci(&topology, "0000:af:00.0");
    assert_eq!((pf.vendor.as_str(), pf.device.as_str()), ("8086", "1592"));
    assert_eq!(
        (pf.class_code.as_str(), pf.class),
        ("020000", PciClass::Network)
    );
    assert_eq!(pf.numa_node, Some(1));
    assert_eq!(pf.driver.as_deref(), Some("ice"));
    assert_eq!(pf.iommu_group, Some(60));
    assert_eq!(pf.netdevs, vec!["ens801f0"]);
    assert_eq!(pf.physfn, None);
    assert_eq!(pf.virtfns, vfs);
    assert_eq!((pf.sriov_totalvfs, pf.sriov_numvfs), (Some(128), Some(3)));

    let drivers = ["iavf", "iavf", "vfio-pci"];
    for (index, address) in vfs.into_iter().enumerate() {
        let vf = pci(&topology, address);
        assert_eq!(vf.physfn.as_deref(), Some("0000:af:00.0"), "{address}");
        assert_eq!(vf.driver.as_deref(), Some(drivers[index]), "{address}");
        assert_eq!((vf.vendor.as_str(), vf.device.as_str()), ("8086", "1889"));
        assert_eq!(vf.numa_node, Some(1));
        assert_eq!(
            vf.iommu_group,
            Some(61 + u32::try_from(index).expect("small"))
        );
        assert!(vf.virtfns.is_empty());
        assert_eq!((vf.sriov_totalvfs, vf.sriov_numvfs), (None, None));
    }
    assert_eq!(pci(&topology, vfs[0]).netdevs, vec!["ens801f0v0"]);
    assert!(pci(&topology, vfs[1]).netdevs.is_empty());
    assert!(pci(&topology, vfs[2]).netdevs.is_empty());
}

#[test]
fn intel_pci_devices_by_address_and_only_known_gpus() {
    let topology = discover_fixture("intel-2s-smt-isolated");
    let addresses: Vec<&str> = topology
        .pci_devices
        .iter()
        .map(|device| device.address.as_str())
        .collect();
    assert_eq!(
        addresses,
        vec![
            "0000:00:00.0",
            "0000:00:1c.0",
            "0000:03:00.0",
            "0000:3a:00.0",
            "0000:3b:00.0",
            "0000:ae:00.0",
            "0000:af:00.0",
            "0000:af:01.0",
            "0000:af:01.1",
            "0000:af:01.2",
        ]
    );
    let host_bridge = pci(&topology, "0000:00:00.0");
    assert_eq!(
        (host_bridge.class, host_bridge.driver.as_deref()),
        (PciClass::Other, None)
    );
    assert_eq!(host_bridge.iommu_group, Some(0));

    // The BMC's VGA is a display function, not a GPU.
    let bmc_vga = pci(&topology, "0000:03:00.0");
    assert_eq!(
        (bmc_vga.vendor.as_str(), bmc_vga.class),
        ("1a03", PciClass::Display)
    );
    assert_eq!(
        topology.gpus,
        vec![Gpu {
            vendor: GpuVendor::Nvidia,
            address: "0000:3b:00.0".into(),
            numa_node: Some(0),
            driver: Some("nvidia".into()),
        }]
    );
}

// ---- amd-epyc-multi-l3 ----

#[test]
fn amd_nps2_two_l3_domains_per_node() {
    let topology = discover_fixture("amd-epyc-multi-l3");
    assert_eq!(topology.cpus.len(), 32);
    assert!(topology.cpus.iter().all(|cpu| cpu.socket_id == 0));

    let cpu0 = topology.cpu(0).expect("cpu 0");
    assert_eq!(cpu0.thread_siblings, set("0,16"));
    assert_eq!((cpu0.core_id, cpu0.numa_node, cpu0.l3_id), (0, 0, Some(0)));
    let cpu20 = topology.cpu(20).expect("cpu 20");
    assert_eq!(cpu20.thread_siblings, set("4,20"));
    assert_eq!(
        (cpu20.core_id, cpu20.numa_node, cpu20.l3_id),
        (4, 0, Some(1))
    );
    let cpu11 = topology.cpu(11).expect("cpu 11");
    assert_eq!((cpu11.numa_node, cpu11.l3_id), (1, Some(2)));
    let cpu31 = topology.cpu(31).expect("cpu 31");
    assert_eq!(
        (cpu31.core_id, cpu31.numa_node, cpu31.l3_id),
        (15, 1, Some(3))
    );

    // The `id` files name the L3s 0-3; the lowest CPUs sharing them would have been 0, 4, 8, 12.
    let cpus_of_l3 = |l3: u32| -> CpuSet {
        topology
            .cpus
            .iter()
            .filter(|cpu| cpu.l3_id == Some(l3))
            .map(|cpu| cpu.id)
            .collect()
    };
    assert_eq!(cpus_of_l3(0), set("0-3,16-19"));
    assert_eq!(cpus_of_l3(1), set("4-7,20-23"));
    assert_eq!(cpus_of_l3(2), set("8-11,24-27"));
    assert_eq!(cpus_of_l3(3), set("12-15,28-31"));

    assert_eq!(
        topology.numa_node(0).expect("node 0").cpus,
        set("0-7,16-23")
    );
    assert_eq!(
        topology.numa_node(1).expect("node 1").cpus,
        set("8-15,24-31")
    );
    assert_eq!(
        topology.numa_node(1).expect("node 1").distances,
        vec![12, 10]
    );
    assert_eq!(
        topology.numa_node(0).expect("node 0").hugepages,
        vec![hugepages(2048, 512, 500), hugepages(1_048_576, 0, 0)]
    );
    // `isolated` is empty and `nohz_full` absent (a kernel without NO_HZ_FULL).
    assert!(topology.isolated.is_empty());
    assert!(topology.nohz_full.is_empty());
}

#[test]
fn amd_gpu_and_nic_on_their_nodes() {
    let topology = discover_fixture("amd-epyc-multi-l3");
    assert_eq!(
        topology.gpus,
        vec![Gpu {
            vendor: GpuVendor::Amd,
            address: "0000:c1:00.0".into(),
            numa_node: Some(1),
            driver: Some("amdgpu".into()),
        }]
    );
    let gpu = pci(&topology, "0000:c1:00.0");
    assert_eq!(
        (gpu.class_code.as_str(), gpu.iommu_group),
        ("038000", Some(40))
    );

    let nic = pci(&topology, "0000:41:00.0");
    assert_eq!(nic.driver.as_deref(), Some("mlx5_core"));
    assert_eq!(nic.netdevs, vec!["ens1f0np0"]);
    assert_eq!(nic.numa_node, Some(0));
    assert_eq!((nic.sriov_totalvfs, nic.sriov_numvfs), (Some(8), Some(0)));
    assert!(nic.virtfns.is_empty());
}

// ---- single-socket-no-smt ----

#[test]
fn single_socket_without_numa_is_one_node_from_proc_meminfo() {
    let topology = discover_fixture("single-socket-no-smt");
    assert_eq!(topology.online(), set("0-3"));
    for cpu in &topology.cpus {
        assert_eq!(
            cpu.thread_siblings,
            [cpu.id].into_iter().collect::<CpuSet>()
        );
        assert_eq!((cpu.core_id, cpu.socket_id, cpu.numa_node), (cpu.id, 0, 0));
        // No die_id, no cluster_id, no cache id: the defaults, and the L3 named by CPU 0.
        assert_eq!((cpu.die_id, cpu.cluster_id, cpu.l3_id), (0, None, Some(0)));
    }
    assert_eq!(topology.numa_nodes.len(), 1);
    let node = &topology.numa_nodes[0];
    assert_eq!((node.id, node.cpus.clone()), (0, set("0-3")));
    assert_eq!(
        (node.memory_total_kb, node.memory_free_kb),
        (8_024_420, 6_912_304)
    );
    assert_eq!(
        node.hugepages,
        vec![hugepages(64, 0, 0), hugepages(2048, 128, 100)]
    );
    assert_eq!(node.hugepages[0].size_name(), "64KB");
    assert_eq!(node.distances, vec![10]);
    // `nohz_full` says "(null)", `isolated` is empty, and there is no PCI bus.
    assert!(topology.isolated.is_empty());
    assert!(topology.nohz_full.is_empty());
    assert!(topology.pci_devices.is_empty());
    assert!(topology.gpus.is_empty());
}

// ---- nvidia-h100-vm (real capture) ----

#[test]
fn h100_vm_gpu_cpus_and_node() {
    let topology = discover_fixture("nvidia-h100-vm");
    assert_eq!(topology.online(), set("0-15"));
    for cpu in &topology.cpus {
        assert_eq!(
            cpu.thread_siblings,
            [cpu.id].into_iter().collect::<CpuSet>()
        );
        assert_eq!((cpu.socket_id, cpu.numa_node, cpu.l3_id), (0, 0, Some(0)));
        assert_eq!((cpu.core_id, cpu.cluster_id), (cpu.id, Some(cpu.id)));
    }
    assert!(topology.isolated.is_empty());
    assert!(topology.nohz_full.is_empty());

    assert_eq!(topology.numa_nodes.len(), 1);
    let node = &topology.numa_nodes[0];
    assert_eq!(node.cpus, set("0-15"));
    // The node's meminfo, as numactl -H saw it (4443 MB), not proc/meminfo's 128 GiB.
    assert_eq!(
        (node.memory_total_kb, node.memory_free_kb),
        (4_550_128, 3_298_856)
    );
    assert_eq!(
        node.hugepages,
        vec![hugepages(2048, 0, 0), hugepages(1_048_576, 0, 0)]
    );
    assert_eq!(node.distances, vec![10]);

    assert_eq!(
        topology.gpus,
        vec![Gpu {
            vendor: GpuVendor::Nvidia,
            address: "0000:00:06.0".into(),
            numa_node: None,
            driver: Some("nvidia".into()),
        }]
    );
    let gpu = pci(&topology, "0000:00:06.0");
    assert_eq!(
        (gpu.device.as_str(), gpu.class_code.as_str()),
        ("2330", "030200")
    );
    assert_eq!((gpu.class, gpu.iommu_group), (PciClass::Display, None));

    assert_eq!(topology.pci_devices.len(), 7);
    let classes: Vec<(&str, PciClass, Option<&str>)> = topology
        .pci_devices
        .iter()
        .map(|device| {
            (
                device.address.as_str(),
                device.class,
                device.driver.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        classes[..5],
        [
            ("0000:00:00.0", PciClass::Other, None),
            ("0000:00:01.0", PciClass::Storage, Some("virtio-pci")),
            ("0000:00:02.0", PciClass::Storage, Some("virtio-pci")),
            ("0000:00:03.0", PciClass::Network, Some("virtio-pci")),
            ("0000:00:04.0", PciClass::Other, Some("virtio-pci")),
        ]
    );
    assert!(topology
        .pci_devices
        .iter()
        .all(|device| device.numa_node.is_none()));
}

#[test]
fn a_topology_survives_json() {
    let topology = discover_fixture("intel-2s-smt-isolated");
    let json = serde_json::to_string(&topology).expect("serialize");
    assert!(json.contains(r#""isolated":"2-7,10-15""#), "{json}");
    let back: Topology = serde_json::from_str(&json).expect("deserialize");
    assert_eq!(back, topology);
}

// ---- vm-2cpu (real capture) and this machine ----

#[test]
fn vm_2cpu_capture() {
    let topology = discover_fixture("vm-2cpu");
    assert_eq!(topology.online(), set("0-1"));
    for cpu in &topology.cpus {
        assert_eq!(
            cpu.thread_siblings,
            [cpu.id].into_iter().collect::<CpuSet>()
        );
        assert_eq!((cpu.core_id, cpu.socket_id, cpu.numa_node), (cpu.id, 0, 0));
        assert_eq!(cpu.l3_id, Some(0));
    }
    assert_eq!(topology.numa_nodes.len(), 1);
    assert_eq!(topology.numa_nodes[0].cpus, set("0-1"));
    assert_eq!(topology.numa_nodes[0].distances, vec![10]);
    assert_eq!(topology.hugepage_sizes_kb(), vec![2048, 1_048_576]);
    assert_eq!(topology.pci_devices.len(), 6);
    assert!(topology
        .pci_devices
        .iter()
        .filter(|device| device.vendor == "1af4")
        .all(|device| device.driver.as_deref() == Some("virtio-pci")));
    assert!(topology.gpus.is_empty());
}

#[test]
fn this_machine() {
    let topology = discover(Path::new("/")).expect("discover /");
    let online = fs::read_to_string("/sys/devices/system/cpu/online").expect("online");
    assert_eq!(topology.online(), set(&online));
    for cpu in &topology.cpus {
        assert!(
            topology.numa_node(cpu.numa_node).is_some(),
            "cpu {} is on node {}, which is not among {:?}",
            cpu.id,
            cpu.numa_node,
            topology.numa_nodes
        );
        assert!(cpu.thread_siblings.contains(cpu.id), "cpu {}", cpu.id);
    }
}

// ---- what must fail, or fall back ----

#[test]
fn missing_online_is_a_read_error_naming_it() {
    let root = tempfile::tempdir().expect("temp dir");
    assert_read_error(
        discover(root.path()),
        &root.path().join("sys/devices/system/cpu/online"),
    );
}

#[test]
fn malformed_files_are_errors_naming_them() {
    let cases = [
        ("sys/devices/system/cpu/online", "0-3,x\n"),
        ("sys/devices/system/cpu/isolated", "3-1\n"),
        ("sys/devices/system/cpu/cpu2/topology/core_id", "two\n"),
        (
            "sys/devices/system/cpu/cpu2/topology/thread_siblings_list",
            "2-\n",
        ),
        ("sys/devices/system/cpu/cpu2/cache/index3/level", "L3\n"),
        (
            "sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages",
            "-1\n",
        ),
        ("proc/meminfo", "MemTotal: lots kB\nMemFree: 1 kB\n"),
    ];
    for (relative, contents) in cases {
        let root = fixture_copy("single-socket-no-smt");
        write(root.path(), relative, contents);
        let reason = assert_malformed(discover(root.path()), &root.path().join(relative));
        assert!(!reason.is_empty(), "{relative}");
    }
}

#[test]
fn malformed_numa_and_pci_files_are_errors_naming_them() {
    let pf = "sys/devices/pci0000:ae/0000:ae:00.0/0000:af:00.0";
    let cases = [
        (
            "sys/devices/system/node/node1/distance".to_string(),
            "21 ten\n",
        ),
        (
            "sys/devices/system/node/node1/meminfo".to_string(),
            "Node 1 MemFree: 1 kB\n",
        ),
        (format!("{pf}/class"), "0x02000\n"),
        (format!("{pf}/vendor"), "intel\n"),
        (format!("{pf}/numa_node"), "-2\n"),
        (format!("{pf}/sriov_numvfs"), "three\n"),
    ];
    for (relative, contents) in cases {
        let root = fixture_copy("intel-2s-smt-isolated");
        write(root.path(), &relative, contents);
        // Errors name the path as discovery reached it: PCI files through bus/pci/devices.
        let reached = relative.replace(
            "sys/devices/pci0000:ae/0000:ae:00.0/0000:af:00.0",
            "sys/bus/pci/devices/0000:af:00.0",
        );
        assert_malformed(discover(root.path()), &root.path().join(reached));
    }
}

#[test]
fn an_iommu_group_that_is_not_a_number_is_malformed() {
    let root = fixture_copy("intel-2s-smt-isolated");
    let link = root
        .path()
        .join("sys/devices/pci0000:ae/0000:ae:00.0/0000:af:01.2/iommu_group");
    fs::remove_file(&link).expect("remove link");
    symlink("../../../../kernel/iommu_groups/sixty", &link).expect("symlink");
    assert_malformed(
        discover(root.path()),
        &root
            .path()
            .join("sys/bus/pci/devices/0000:af:01.2/iommu_group"),
    );
}

#[test]
fn missing_required_files_are_read_errors_naming_them() {
    let cases = [
        ("single-socket-no-smt", "proc/meminfo"),
        (
            "single-socket-no-smt",
            "sys/devices/system/cpu/cpu3/topology/physical_package_id",
        ),
        (
            "intel-2s-smt-isolated",
            "sys/devices/system/node/node0/cpulist",
        ),
        (
            "intel-2s-smt-isolated",
            "sys/devices/system/node/node1/hugepages/hugepages-2048kB/nr_hugepages",
        ),
        (
            "intel-2s-smt-isolated",
            "sys/devices/pci0000:ae/0000:ae:00.0/0000:af:01.1/device",
        ),
    ];
    for (name, relative) in cases {
        let root = fixture_copy(name);
        fs::remove_file(root.path().join(relative)).expect("remove");
        let reached = relative.replace(
            "sys/devices/pci0000:ae/0000:ae:00.0/0000:af:01.1",
            "sys/bus/pci/devices/0000:af:01.1",
        );
        assert_read_error(discover(root.path()), &root.path().join(reached));
    }
}

#[test]
fn an_online_cpu_in_no_node_is_malformed() {
    let root = fixture_copy("intel-2s-smt-isolated");
    write(
        root.path(),
        "sys/devices/system/node/node1/cpulist",
        "4-7,12-14\n",
    );
    let reason = assert_malformed(
        discover(root.path()),
        &root.path().join("sys/devices/system/node"),
    );
    assert!(reason.contains("15"), "{reason}");
}

#[test]
fn offline_cpus_are_left_out_of_nodes_and_empty_nodes_left_out() {
    let root = fixture_copy("intel-2s-smt-isolated");
    write(root.path(), "sys/devices/system/cpu/online", "0-14\n");
    // A node whose memory is offline and that has no CPUs.
    write(root.path(), "sys/devices/system/node/node2/cpulist", "\n");
    write(
        root.path(),
        "sys/devices/system/node/node2/meminfo",
        "Node 2 MemTotal: 0 kB\nNode 2 MemFree: 0 kB\n",
    );
    write(
        root.path(),
        "sys/devices/system/node/node2/distance",
        "21 21 10\n",
    );
    let topology = discover(root.path()).expect("discover");
    assert_eq!(topology.cpus.len(), 15);
    assert_eq!(
        topology.numa_node(1).expect("node 1").cpus,
        set("4-7,12-14")
    );
    assert!(topology.numa_node(2).is_none());
}

#[test]
fn an_l3_without_id_is_named_by_its_lowest_cpu() {
    let root = fixture_copy("intel-2s-smt-isolated");
    for cpu in 0..16 {
        fs::remove_file(
            root.path()
                .join(format!("sys/devices/system/cpu/cpu{cpu}/cache/index3/id")),
        )
        .expect("remove id");
    }
    let topology = discover(root.path()).expect("discover");
    assert_eq!(topology.cpu(11).expect("cpu 11").l3_id, Some(0));
    assert_eq!(topology.cpu(12).expect("cpu 12").l3_id, Some(4));
}

#[test]
fn no_l3_and_levels_the_firmware_leaves_out() {
    let root = fixture_copy("single-socket-no-smt");
    for cpu in 0..4 {
        let dir = root.path().join(format!("sys/devices/system/cpu/cpu{cpu}"));
        fs::remove_dir_all(dir.join("cache/index3")).expect("remove L3");
        // arm64 writes -1 where the firmware describes no cluster.
        fs::write(dir.join("topology/cluster_id"), "-1\n").expect("write");
    }
    fs::remove_dir_all(root.path().join("sys/devices/system/cpu/cpu1/cache")).expect("remove");
    let topology = discover(root.path()).expect("discover");
    for cpu in &topology.cpus {
        assert_eq!(
            (cpu.l3_id, cpu.cluster_id, cpu.die_id),
            (None, None, 0),
            "cpu {}",
            cpu.id
        );
    }
}

fn vf_address(index: u32) -> String {
    format!("0000:02:{:02x}.{}", index / 8, index % 8)
}

#[test]
fn plain_pci_dirs_and_virtfns_by_number() {
    // PCI functions as plain directories (a capture that followed the links), and a PF with
    // twelve VFs whose links must come in numeric order, not by name.
    let root = fixture_copy("single-socket-no-smt");
    let pf = root.path().join("sys/bus/pci/devices/0000:01:00.0");
    write(&pf, "vendor", "0x15B3\n");
    write(&pf, "device", "0x101d\n");
    write(&pf, "class", "0x020000\n");
    write(&pf, "numa_node", "0\n");
    write(&pf, "sriov_numvfs", "12\n");
    for index in 0..12 {
        symlink(
            format!("../{}", vf_address(index)),
            pf.join(format!("virtfn{index}")),
        )
        .expect("symlink");
    }
    let topology = discover(root.path()).expect("discover");
    let device = pci(&topology, "0000:01:00.0");
    assert_eq!(device.vendor, "15b3");
    assert_eq!(device.numa_node, Some(0));
    assert_eq!((device.driver.clone(), device.iommu_group), (None, None));
    let expected: Vec<String> = (0..12).map(vf_address).collect();
    assert_eq!(device.virtfns, expected);
}

#[test]
fn refreshed_memory_sees_hugepages_taken_since_discovery() {
    let copy = fixture_copy("intel-2s-smt-isolated");
    let mut topology = discover(copy.path()).expect("discover");
    let free = copy
        .path()
        .join("sys/devices/system/node/node1/hugepages/hugepages-2048kB/free_hugepages");
    let before = topology.numa_node(1).expect("node 1").hugepages[0].free;
    std::fs::write(&free, "7\n").expect("write");
    assert_eq!(
        topology.numa_node(1).expect("node 1").hugepages[0].free,
        before
    );
    let cpus = topology.cpus.clone();
    ingot_topology::refresh_memory(copy.path(), &mut topology).expect("refresh");
    assert_eq!(topology.numa_node(1).expect("node 1").hugepages[0].free, 7);
    assert_eq!(topology.cpus, cpus, "the rest is as discovered");
}
