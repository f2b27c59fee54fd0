use super::*;

use std::os::unix::fs::symlink;

/// A PF (`0000:3b:00.0`, interface ens1f0, NUMA node 1) with three VFs: VF 0 with its
/// interface, VF 1 bound to vfio-pci in IOMMU group 61, VF 2 with its interface; and a NIC
/// without SR-IOV.
fn tree() -> tempfile::TempDir {
    let root = tempfile::tempdir().expect("tempdir");
    let devices = root.path().join("sys/bus/pci/devices");
    let dev = |address: &str| {
        let dir = devices.join(address);
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("numa_node"), "1\n").expect("numa");
        dir
    };
    let pf = dev("0000:3b:00.0");
    std::fs::create_dir_all(pf.join("net/ens1f0")).expect("net");
    for (index, address, netdev, driver) in [
        (0, "0000:3b:02.0", Some("ens1f0v0"), "iavf"),
        (1, "0000:3b:02.1", None, "vfio-pci"),
        (2, "0000:3b:02.2", Some("ens1f0v2"), "iavf"),
    ] {
        let vf = dev(address);
        symlink(format!("../{address}"), pf.join(format!("virtfn{index}"))).expect("virtfn");
        symlink("../0000:3b:00.0", vf.join("physfn")).expect("physfn");
        symlink(
            format!("../../../bus/pci/drivers/{driver}"),
            vf.join("driver"),
        )
        .expect("driver");
        symlink(
            format!("../../../kernel/iommu_groups/{}", 60 + index),
            vf.join("iommu_group"),
        )
        .expect("group");
        if let Some(netdev) = netdev {
            std::fs::create_dir_all(vf.join("net").join(netdev)).expect("net");
        }
    }
    let plain = dev("0000:00:03.0");
    std::fs::create_dir_all(plain.join("net/eth0")).expect("net");
    root
}

fn asked(value: &str) -> Result<Vec<Request>, DevicesError> {
    requests(
        &HashMap::from([(ANNOTATION.to_string(), value.to_string())]),
        "app",
    )
}

#[test]
fn requests_parse_with_their_options_and_names_in_order() {
    let got = asked("0000:3b:00.0,mac=02:00:00:00:00:0A,vlan=100,mtu=9000; 0000:3b:02.1,mode=vfio; 0000:3b:00.0,name=data")
        .expect("valid");
    assert_eq!(got.len(), 3);
    assert_eq!(
        got[0],
        Request {
            address: "0000:3b:00.0".into(),
            mode: Mode::Netdev,
            name: "net1".into(),
            mac: Some("02:00:00:00:00:0a".into()),
            vlan: Some(100),
            mtu: Some(9000),
        }
    );
    assert_eq!((got[1].mode, got[1].name.as_str()), (Mode::Vfio, "net2"));
    assert_eq!(got[2].name, "data");
    // The container's own annotation wins over the pod-wide one.
    let scoped = HashMap::from([
        (ANNOTATION.to_string(), "0000:3b:00.0".to_string()),
        (
            format!("{ANNOTATION}/dpdk"),
            "0000:3b:02.1,mode=vfio".to_string(),
        ),
    ]);
    assert_eq!(
        requests(&scoped, "dpdk").expect("valid")[0].mode,
        Mode::Vfio
    );
    assert_eq!(
        requests(&scoped, "web").expect("valid")[0].mode,
        Mode::Netdev
    );
    assert!(requests(&HashMap::new(), "x").expect("none").is_empty());
}

#[test]
fn malformed_requests_are_refused_naming_the_annotation() {
    for value in [
        "3b:00.0",
        "0000:3b:00.0,mode=sriov",
        "0000:3b:00.0,mac=02:00",
        "0000:3b:00.0,vlan=4095",
        "0000:3b:00.0,mtu=12",
        "0000:3b:00.0,name=eth0",
        "0000:3b:00.0,speed=fast",
        "0000:3b:00.0,fast",
        "0000:3b:02.1,mode=vfio,mtu=9000",
        "0000:3b:00.0;0000:3b:00.0,name=net1",
    ] {
        let err = asked(value).expect_err(value);
        assert!(err.to_string().contains(ANNOTATION), "{value}: {err}");
    }
}

#[test]
fn a_pf_gives_its_first_free_vf_that_suits_the_mode() {
    let root = tree();
    let netdev = &asked("0000:3b:00.0").expect("valid")[0];
    let vf = resolve(root.path(), netdev, &[]).expect("VF 0");
    assert_eq!(
        vf,
        Vf {
            address: "0000:3b:02.0".into(),
            pf: "0000:3b:00.0".into(),
            index: 0,
            pf_netdev: Some("ens1f0".into()),
            netdev: Some("ens1f0v0".into()),
            driver: Some("iavf".into()),
            iommu_group: Some(60),
            numa_node: Some(1),
        }
    );
    // VF 0 taken: VF 1 has no interface (vfio-pci), so VF 2.
    let next = resolve(root.path(), netdev, &["0000:3b:02.0".into()]).expect("VF 2");
    assert_eq!((next.index, next.netdev.as_deref()), (2, Some("ens1f0v2")));
    let none = resolve(
        root.path(),
        netdev,
        &["0000:3b:02.0".into(), "0000:3b:02.2".into()],
    )
    .expect_err("none free with an interface");
    assert!(
        none.to_string().contains("none of its 3 VFs is free"),
        "{none}"
    );
    // vfio mode takes any free one.
    let vfio = &asked("0000:3b:00.0,mode=vfio").expect("valid")[0];
    let vf = resolve(root.path(), vfio, &["0000:3b:02.0".into()]).expect("VF 1");
    assert_eq!((vf.index, vf.iommu_group), (1, Some(61)));
}

#[test]
fn a_vf_named_directly_is_itself_and_refusals_name_the_address() {
    let root = tree();
    let direct = &asked("0000:3b:02.2").expect("valid")[0];
    let vf = resolve(root.path(), direct, &[]).expect("itself");
    assert_eq!((vf.index, vf.pf.as_str()), (2, "0000:3b:00.0"));
    let err = resolve(root.path(), direct, &["0000:3b:02.2".into()]).expect_err("taken");
    assert!(err.to_string().contains("0000:3b:02.2"), "{err}");
    let err = resolve(root.path(), &asked("0000:3b:02.1").expect("v")[0], &[])
        .expect_err("vfio-pci has no interface");
    assert!(err.to_string().contains("driver vfio-pci"), "{err}");
    let err =
        resolve(root.path(), &asked("0000:00:03.0").expect("v")[0], &[]).expect_err("no SR-IOV");
    assert!(
        err.to_string().contains("neither an SR-IOV VF nor a PF"),
        "{err}"
    );
    let err = resolve(root.path(), &asked("0000:99:00.0").expect("v")[0], &[]).expect_err("absent");
    assert!(err.to_string().contains("no PCI device"), "{err}");
}

#[test]
fn binding_to_vfio_pci_overrides_unbinds_and_probes_and_is_undone_the_same_way() {
    let root = tree();
    let vf = resolve(
        root.path(),
        &asked("0000:3b:02.0,mode=vfio").expect("v")[0],
        &[],
    )
    .expect("VF 0");
    let dir = root.path().join("sys/bus/pci/devices/0000:3b:02.0");
    assert_eq!(
        vfio_bind_plan(root.path(), &vf),
        vec![
            (dir.join("driver_override"), "vfio-pci".to_string()),
            (dir.join("driver/unbind"), "0000:3b:02.0".to_string()),
            (
                root.path().join("sys/bus/pci/drivers_probe"),
                "0000:3b:02.0".to_string()
            ),
        ]
    );
    let bound = resolve(
        root.path(),
        &asked("0000:3b:02.1,mode=vfio").expect("v")[0],
        &[],
    )
    .expect("VF 1");
    assert!(vfio_bind_plan(root.path(), &bound).is_empty());
    assert_eq!(unbind_plan(root.path(), "0000:3b:02.0")[0].1, "\n");
}
