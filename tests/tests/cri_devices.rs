//! Devices end to end: host devices from the CRI's `devices`, CDI devices from the CRI's
//! `CDI_devices` field and from `cdi.k8s.io/*` annotations (device nodes the device cgroup lets
//! through with exactly their permissions, mounts, environment, additional GIDs), spec files
//! read again when they change, privileged containers with the host's devices, and every bad
//! request refused at CreateContainer naming the device and the spec file, with nothing made.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ingot_tests::{cri::Options, pods::*};
use k8s_cri::v1;

/// A character device node at `path`, as mknod(2) makes it.
fn mknod(path: &Path, major: u64, minor: u64) {
    nix::sys::stat::mknod(
        path,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(major, minor),
    )
    .unwrap_or_else(|err| panic!("mknod {}: {err}", path.display()));
}

/// The test's device node (a copy of /dev/loop-control: not among the devices every container
/// gets, and opening it does nothing), a library directory and the two CDI spec directories.
struct Devices {
    dir: tempfile::TempDir,
}

impl Devices {
    fn new() -> Devices {
        let dir = tempfile::tempdir().expect("tempdir");
        for sub in ["nodes", "lib", "etc-cdi", "run-cdi"] {
            std::fs::create_dir_all(dir.path().join(sub)).expect("mkdir");
        }
        mknod(&dir.path().join("nodes/ctl"), 10, 237);
        std::fs::write(dir.path().join("lib/marker"), "vendor library\n").expect("marker");
        let devices = Devices { dir };
        devices.write_spec(
            "etc-cdi",
            "test.json",
            &serde_json::json!({
                "cdiVersion": "0.7.0",
                "kind": "test.ingot.dev/device",
                "containerEdits": {"env": ["CDI_VENDOR=test"]},
                "devices": [
                    {"name": "ctl0", "containerEdits": {
                        "deviceNodes": [{"path": "/dev/cdi-ctl", "hostPath": devices.path("nodes/ctl")}],
                        "mounts": [{"hostPath": devices.path("lib"), "containerPath": "/opt/cdi-lib", "options": ["ro", "bind"]}],
                        "env": ["CDI_DEVICE=ctl0"],
                        "additionalGids": [4242]
                    }},
                    {"name": "ctl-ro", "containerEdits": {
                        "deviceNodes": [{"path": "/dev/cdi-ctl-ro", "hostPath": devices.path("nodes/ctl"), "permissions": "r"}]
                    }}
                ]
            }),
        );
        devices
    }

    fn path(&self, rel: &str) -> String {
        self.dir.path().join(rel).display().to_string()
    }

    fn write_spec(&self, dir: &str, name: &str, spec: &serde_json::Value) {
        let path: PathBuf = self.dir.path().join(dir).join(name);
        std::fs::write(&path, serde_json::to_vec_pretty(spec).expect("json")).expect("spec");
    }

    fn config(&self) -> String {
        format!(
            "cdi_spec_dirs = [{:?}, {:?}]\n",
            self.path("etc-cdi"),
            self.path("run-cdi")
        )
    }
}

fn sleeper(name: &str, image: &str) -> v1::ContainerConfig {
    container_config(name, image, "sleep 600")
}

fn with_cdi(mut config: v1::ContainerConfig, names: &[&str]) -> v1::ContainerConfig {
    config.cdi_devices = names
        .iter()
        .map(|n| v1::CdiDevice {
            name: n.to_string(),
        })
        .collect();
    config
}

/// `sh -c script` in a container: exit code and stdout+stderr.
async fn sh(
    client: &mut v1::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>,
    id: &str,
    script: &str,
) -> (i32, String) {
    let out = exec(client, id, &["/bin/sh", "-c", script]).await;
    (
        out.exit_code,
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

async fn container_count(
    client: &mut v1::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>,
) -> usize {
    client
        .list_containers(v1::ListContainersRequest::default())
        .await
        .expect("ListContainers")
        .into_inner()
        .containers
        .len()
}

#[tokio::test(flavor = "current_thread")]
async fn cri_and_cdi_devices_reach_the_container_with_their_permissions_only() {
    let devices = Devices::new();
    let (env, mut client, image) = env_with(
        false,
        Options {
            extra_config: devices.config(),
            ..Default::default()
        },
    )
    .await;
    let pod = host_network_pod(
        "devices",
        &env.daemon.log_dir("devices"),
        v1::NamespaceMode::Pod,
    );
    let pod_id = run_pod(&mut client, pod.clone()).await;

    // The CRI field and a host device side by side.
    let mut first = with_cdi(sleeper("first", &image), &["test.ingot.dev/device=ctl0"]);
    first.devices = vec![v1::Device {
        container_path: "/dev/cri-ctl".into(),
        host_path: devices.path("nodes/ctl"),
        permissions: "rw".into(),
    }];
    let first = start_container(&mut client, &pod_id, &pod, first).await;
    let (code, out) = sh(
        &mut client,
        &first,
        "exec 3<>/dev/cdi-ctl 4<>/dev/cri-ctl && echo \"$CDI_VENDOR $CDI_DEVICE\" \
         && cat /opt/cdi-lib/marker && id -G && ! test -e /dev/cdi-ctl-ro && echo done",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("test ctl0\n"), "{out}");
    assert!(out.contains("vendor library\n"), "{out}");
    assert!(out.split_whitespace().any(|g| g == "4242"), "{out}");
    assert!(out.ends_with("done\n"), "{out}");
    let (code, out) = sh(&mut client, &first, "echo x > /opt/cdi-lib/marker").await;
    assert_ne!(code, 0, "the CDI mount is read-only: {out}");

    // An annotation, with a read-only device: reads pass the device cgroup, writes do not.
    let mut second = sleeper("second", &image);
    second.annotations = HashMap::from([(
        "cdi.k8s.io/test-plugin".to_string(),
        "test.ingot.dev/device=ctl-ro".to_string(),
    )]);
    let second = start_container(&mut client, &pod_id, &pod, second).await;
    let (code, out) = sh(
        &mut client,
        &second,
        "exec 3</dev/cdi-ctl-ro && echo opened",
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "opened\n"), "{out}");
    let (code, out) = sh(&mut client, &second, "exec 3>/dev/cdi-ctl-ro").await;
    assert_ne!(
        code, 0,
        "a read-only CDI device opens for reading only: {out}"
    );
    assert!(
        out.contains("not permitted"),
        "the device cgroup refuses it: {out}"
    );
    let (code, out) = sh(&mut client, &second, "test -e /dev/cdi-ctl || echo absent").await;
    assert_eq!((code, out.as_str()), (0, "absent\n"), "{out}");

    // A spec written while ingotd runs is read at the next request.
    devices.write_spec(
        "run-cdi",
        "late.yaml",
        &serde_json::json!({
            "cdiVersion": "0.6.0",
            "kind": "test.ingot.dev/late",
            "devices": [{"name": "x", "containerEdits": {"env": ["LATE=1"]}}]
        }),
    );
    let late = start_container(
        &mut client,
        &pod_id,
        &pod,
        with_cdi(sleeper("late", &image), &["test.ingot.dev/late=x"]),
    )
    .await;
    let (_, out) = sh(&mut client, &late, "echo $LATE").await;
    assert_eq!(out, "1\n");

    // Refusals: each names the device and where it looked, and makes nothing.
    devices.write_spec(
        "run-cdi",
        "broken.json",
        &serde_json::json!({
            "cdiVersion": "0.6.0",
            "kind": "test.ingot.dev/broken",
            "devices": [{"name": "x", "containerEdits": {"deviceNodes": [{"major": 1}]}}]
        }),
    );
    let before = container_count(&mut client).await;
    let cases: Vec<(&str, v1::ContainerConfig, Vec<String>)> = vec![
        (
            "unknown device",
            with_cdi(sleeper("unknown", &image), &["test.ingot.dev/device=nope"]),
            vec![
                "\"test.ingot.dev/device=nope\"".into(),
                devices.path("etc-cdi"),
                "config.CDI_devices".into(),
            ],
        ),
        (
            "device of a spec that does not validate",
            with_cdi(sleeper("broken", &image), &["test.ingot.dev/broken=x"]),
            vec!["\"test.ingot.dev/broken=x\"".into(), "broken.json".into()],
        ),
        (
            "unqualified name",
            with_cdi(sleeper("bare", &image), &["ctl0"]),
            vec!["\"ctl0\"".into(), "config.CDI_devices".into()],
        ),
        (
            "unqualified name in an annotation",
            {
                let mut c = sleeper("bare-annotation", &image);
                c.annotations = HashMap::from([(
                    "cdi.k8s.io/x".to_string(),
                    "test.ingot.dev/device".to_string(),
                )]);
                c
            },
            vec!["config.annotations".into(), "cdi.k8s.io/x".into()],
        ),
    ];
    for (what, config, needles) in cases {
        let status = refused_create(&mut client, &pod_id, &pod, config).await;
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{what}: {status:?}"
        );
        for needle in needles {
            assert!(
                status.message().contains(&needle),
                "{what}: {needle} in {:?}",
                status.message()
            );
        }
    }
    assert_eq!(container_count(&mut client).await, before, "nothing made");

    // The first containers still work after the refusals.
    let (code, out) = sh(&mut client, &first, "exec 3<>/dev/cdi-ctl").await;
    assert_eq!(code, 0, "{out}");

    remove_pod(&mut client, &pod_id).await;
    assert_nothing_left(&env.daemon, &pod_id);
}

#[tokio::test(flavor = "current_thread")]
async fn a_privileged_container_gets_the_hosts_devices() {
    let (env, mut client, image) = env(false).await;
    let mut pod = host_network_pod(
        "privileged",
        &env.daemon.log_dir("privileged"),
        v1::NamespaceMode::Pod,
    );
    if let Some(context) = pod.linux.as_mut().and_then(|l| l.security_context.as_mut()) {
        context.privileged = true;
    }
    let pod_id = run_pod(&mut client, pod.clone()).await;
    let mut privileged = sleeper("privileged", &image);
    privileged.linux = Some(v1::LinuxContainerConfig {
        security_context: Some(v1::LinuxContainerSecurityContext {
            privileged: true,
            ..Default::default()
        }),
        ..Default::default()
    });
    let privileged = start_container(&mut client, &pod_id, &pod, privileged).await;
    let plain = start_container(&mut client, &pod_id, &pod, sleeper("plain", &image)).await;

    // Every character device of the host's /dev (but its console and what the container
    // mounts itself) is there with its own numbers.
    let mut expected = Vec::new();
    for entry in std::fs::read_dir("/dev").expect("/dev").flatten() {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let meta = entry.metadata().expect("stat");
        let name = entry.file_name().to_string_lossy().into_owned();
        if meta.file_type().is_char_device()
            && !["console", "ptmx"].contains(&name.as_str())
            && !name.starts_with("tty")
        {
            let rdev = meta.rdev();
            expected.push((
                name,
                nix::sys::stat::major(rdev),
                nix::sys::stat::minor(rdev),
            ));
        }
    }
    assert!(
        expected.iter().any(|(n, _, _)| n == "loop-control"),
        "{expected:?}"
    );
    let (code, listing) = sh(
        &mut client,
        &privileged,
        "for f in /dev/*; do test -c \"$f\" && stat -c '%n %t %T' \"$f\"; done; true",
    )
    .await;
    assert_eq!(code, 0, "{listing}");
    for (name, major, minor) in &expected {
        let line = format!("/dev/{name} {major:x} {minor:x}");
        assert!(listing.lines().any(|l| l == line), "{line} in {listing}");
    }
    // The device cgroup lets the privileged one use them; the plain one has none of them.
    let (code, out) = sh(
        &mut client,
        &privileged,
        "head -c 1 /dev/urandom | wc -c && test -c /dev/loop-control",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let (code, out) = sh(
        &mut client,
        &plain,
        "test -e /dev/loop-control || echo absent",
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "absent\n"), "{out}");

    remove_pod(&mut client, &pod_id).await;
    assert_nothing_left(&env.daemon, &pod_id);
}

/// `ip -o link show dev <name>` in the test's namespace: None when it is not there.
fn link_in(netns: &Path, name: &str) -> Option<String> {
    let out = ip_in(netns)
        .args(["-o", "link", "show", "dev", name])
        .output()
        .expect("ip");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A daemon in a network namespace of the test's own, started with `extra_config`, with the
/// namespace's path.
async fn private_env(
    extra_config: String,
) -> (
    ingot_tests::pods::Env,
    v1::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>,
    String,
    PathBuf,
) {
    let (env, client, image) = env_with(
        true,
        Options {
            extra_config,
            ..Default::default()
        },
    )
    .await;
    let netns = env.netns().expect("a namespace of the test's own").path();
    (env, client, image, netns)
}

/// A veth pair `name` / `<name>p` in the namespace at `netns` (a VF's netdev stands in).
fn veth(netns: &Path, name: &str) {
    let status = ip_in(netns)
        .args(["link", "add", name, "type", "veth", "peer", "name"])
        .arg(format!("{name}p"))
        .status()
        .expect("ip");
    assert!(status.success(), "ip link add {name}");
}

/// `ip` in the namespace pinned at `netns`.
fn ip_in(netns: &Path) -> std::process::Command {
    let mut command = std::process::Command::new("nsenter");
    command.arg(format!("--net={}", netns.display())).arg("ip");
    command
}

fn mac_of(link: &str) -> String {
    link.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .expect("link/ether")
        .to_string()
}

/// A CDI device's network interface (one end of a veth pair in ingotd's own namespace, as a VF's
/// netdev would be) is moved into the pod's namespace under the name the spec gives, stays there
/// while the container is created again, and is back in ingotd's namespace, under its own name
/// and MAC, when the pod stops. A host-network pod cannot have one.
#[tokio::test(flavor = "current_thread")]
async fn a_cdi_network_device_moves_into_the_pod_and_back_when_it_stops() {
    let devices = Devices::new();
    devices.write_spec(
        "run-cdi",
        "nic.json",
        &serde_json::json!({
            "cdiVersion": "1.1.0",
            "kind": "test.ingot.dev/nic",
            "devices": [{"name": "vf0", "containerEdits": {
                "netDevices": [{"hostInterfaceName": "ingotvf0", "name": "net1"}]
            }}]
        }),
    );
    let (mut env, mut client, image, netns) = private_env(devices.config()).await;
    let netns = netns.as_path();
    veth(netns, "ingotvf0");
    let mac = mac_of(&link_in(netns, "ingotvf0").expect("created"));

    let pod = pod_config("nic", &env.daemon.log_dir("nic"));
    let pod_id = run_pod(&mut client, pod.clone()).await;
    let nic = with_cdi(sleeper("nic", &image), &["test.ingot.dev/nic=vf0"]);
    let id = start_container(&mut client, &pod_id, &pod, nic.clone()).await;
    let (code, out) = sh(
        &mut client,
        &id,
        "cat /sys/class/net/net1/address /sys/class/net/net1/operstate",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with(&format!("{mac}\n")), "{out}");
    assert_eq!(
        link_in(netns, "ingotvf0"),
        None,
        "moved out of ingotd's namespace"
    );

    // The kubelet creates the container again: the interface is still the pod's.
    stop_and_remove_container(&mut client, &id, 0).await;
    let again = start_container(&mut client, &pod_id, &pod, nic).await;
    let (code, out) = sh(&mut client, &again, "cat /sys/class/net/net1/address").await;
    assert_eq!((code, out.trim()), (0, mac.as_str()), "{out}");

    // ingotd killed and started again: the record still knows whose the interface is.
    env.daemon.kill();
    env.daemon = ingot_tests::cri::Daemon::restart(env.daemon);
    let mut client = ingot_tests::cri::runtime_client(&env.daemon.socket()).await;
    client
        .stop_pod_sandbox(v1::StopPodSandboxRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await
        .expect("StopPodSandbox");
    let back = link_in(netns, "ingotvf0").expect("back in ingotd's namespace");
    assert_eq!(mac_of(&back), mac);
    assert!(
        link_in(netns, "ingotvf0p").is_some(),
        "its peer was never touched"
    );

    // A host-network pod has no namespace to move it into.
    let host = host_network_pod(
        "nic-host",
        &env.daemon.log_dir("nic-host"),
        v1::NamespaceMode::Pod,
    );
    let host_id = run_pod(&mut client, host.clone()).await;
    let status = refused_create(
        &mut client,
        &host_id,
        &host,
        with_cdi(sleeper("nic", &image), &["test.ingot.dev/nic=vf0"]),
    )
    .await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("ingotvf0"), "{status:?}");
    assert!(link_in(netns, "ingotvf0").is_some(), "left where it was");

    remove_pod(&mut client, &host_id).await;
    remove_pod(&mut client, &pod_id).await;
    assert_nothing_left(&env.daemon, &pod_id);
    ip_in(netns)
        .args(["link", "del", "ingotvf0"])
        .status()
        .expect("ip");
}

/// An SR-IOV VF asked for by annotation: its PF's address resolves, through a sysfs tree of the
/// test's (`devices_root`: a PF with one VF whose interface is a veth end in ingotd's namespace),
/// to that interface, which the pod gets as `net1` with the MAC and MTU asked for, and which
/// comes back with its own when the pod stops. A second pod finds no free VF.
#[tokio::test(flavor = "current_thread")]
async fn sriov_vfs_by_annotation_as_pod_interfaces_and_as_vfio_devices() {
    let sysfs = tempfile::tempdir().expect("tempdir");
    let devices = sysfs.path().join("sys/bus/pci/devices");
    let pf = devices.join("0000:3b:00.0");
    let vf = devices.join("0000:3b:02.0");
    for dir in [&pf, &vf] {
        std::fs::create_dir_all(dir).expect("mkdir");
        std::fs::write(dir.join("numa_node"), "0\n").expect("numa");
    }
    std::os::unix::fs::symlink("../0000:3b:02.0", pf.join("virtfn0")).expect("virtfn");
    std::os::unix::fs::symlink("../0000:3b:00.0", vf.join("physfn")).expect("physfn");
    std::fs::create_dir_all(vf.join("net/ingotvf1")).expect("net");
    // A second VF for vfio: on the iavf driver, IOMMU group 61, whose node appears in the tree's
    // /dev (as the kernel would make it once vfio-pci has the VF).
    let vfio_vf = devices.join("0000:3b:02.1");
    std::fs::create_dir_all(&vfio_vf).expect("mkdir");
    std::os::unix::fs::symlink("../0000:3b:02.1", pf.join("virtfn1")).expect("virtfn");
    std::os::unix::fs::symlink("../0000:3b:00.0", vfio_vf.join("physfn")).expect("physfn");
    let iavf = sysfs.path().join("sys/bus/pci/drivers/iavf");
    std::fs::create_dir_all(&iavf).expect("driver");
    std::fs::write(iavf.join("unbind"), "").expect("unbind");
    std::fs::write(sysfs.path().join("sys/bus/pci/drivers_probe"), "").expect("probe");
    std::os::unix::fs::symlink("../../drivers/iavf", vfio_vf.join("driver")).expect("driver");
    std::os::unix::fs::symlink(
        "../../../kernel/iommu_groups/61",
        vfio_vf.join("iommu_group"),
    )
    .expect("group");
    std::fs::create_dir_all(sysfs.path().join("dev/vfio")).expect("dev");
    mknod(&sysfs.path().join("dev/vfio/61"), 10, 237);
    mknod(&sysfs.path().join("dev/vfio/vfio"), 10, 196);
    let (env, mut client, image, netns) = private_env(format!(
        "devices_root = {:?}\n",
        sysfs.path().display().to_string()
    ))
    .await;
    let netns = netns.as_path();
    veth(netns, "ingotvf1");
    let before = link_in(netns, "ingotvf1").expect("created");
    assert!(before.contains("mtu 1500"), "{before}");

    let mut pod = pod_config("vf", &env.daemon.log_dir("vf"));
    pod.annotations.insert(
        "ingot.io/sriov-vf".into(),
        "0000:3b:00.0,mac=02:11:22:33:44:55,mtu=1400".into(),
    );
    pod.annotations.insert(
        "ingot.io/sriov-vf/dpdk".into(),
        "0000:3b:02.1,mode=vfio".into(),
    );
    let pod_id = run_pod(&mut client, pod.clone()).await;
    let id = start_container(&mut client, &pod_id, &pod, sleeper("vf", &image)).await;
    let (code, out) = sh(
        &mut client,
        &id,
        "cat /sys/class/net/net1/address /sys/class/net/net1/mtu",
    )
    .await;
    assert_eq!(
        (code, out.as_str()),
        (0, "02:11:22:33:44:55\n1400\n"),
        "{out}"
    );
    assert_eq!(link_in(netns, "ingotvf1"), None);

    // A container of the same pod asks for a VF of its own in vfio mode: bound to vfio-pci
    // through the tree's sysfs files, its group's node and /dev/vfio/vfio in the container, and
    // given back to the kernel's choice of driver at removal.
    let dpdk = start_container(&mut client, &pod_id, &pod, sleeper("dpdk", &image)).await;
    let read = |rel: &str| std::fs::read_to_string(sysfs.path().join(rel)).expect(rel);
    assert_eq!(
        read("sys/bus/pci/devices/0000:3b:02.1/driver_override"),
        "vfio-pci"
    );
    assert_eq!(read("sys/bus/pci/drivers/iavf/unbind"), "0000:3b:02.1");
    assert_eq!(read("sys/bus/pci/drivers_probe"), "0000:3b:02.1");
    let (code, out) = sh(
        &mut client,
        &dpdk,
        "test -c /dev/vfio/61 && test -c /dev/vfio/vfio && echo ok",
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "ok\n"), "{out}");
    // `ingot node report` learns who holds them from ingotd's mirror.
    let held: serde_json::Value = serde_json::from_slice(
        &std::fs::read(env.daemon.dir.path().join("run/devices.json")).expect("devices.json"),
    )
    .expect("json");
    let holders: Vec<(String, String, String)> = held
        .as_array()
        .expect("a list")
        .iter()
        .map(|h| {
            (
                h["address"].as_str().unwrap_or_default().to_string(),
                h["pod_id"].as_str().unwrap_or_default().to_string(),
                h["how"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    for expected in [
        (
            "0000:3b:02.0".to_string(),
            pod_id.clone(),
            "netdev net1".to_string(),
        ),
        (
            "0000:3b:02.1".to_string(),
            pod_id.clone(),
            "vfio".to_string(),
        ),
    ] {
        assert!(holders.contains(&expected), "{expected:?} in {holders:?}");
    }
    std::fs::write(sysfs.path().join("sys/bus/pci/drivers_probe"), "").expect("probe");
    stop_and_remove_container(&mut client, &dpdk, 0).await;
    assert_eq!(
        read("sys/bus/pci/devices/0000:3b:02.1/driver_override"),
        "\n"
    );
    assert_eq!(read("sys/bus/pci/drivers_probe"), "0000:3b:02.1");

    // The PF's only VF is this pod's.
    let mut other = pod_config("vf2", &env.daemon.log_dir("vf2"));
    other.annotations = pod.annotations.clone();
    let other_id = run_pod(&mut client, other.clone()).await;
    let status = refused_create(&mut client, &other_id, &other, sleeper("vf", &image)).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("ingot.io/sriov-vf 0000:3b:00.0"),
        "{status:?}"
    );
    assert!(
        status
            .message()
            .contains("none of its 2 VFs is free with a network interface"),
        "{status:?}"
    );
    remove_pod(&mut client, &other_id).await;

    remove_pod(&mut client, &pod_id).await;
    let back = link_in(netns, "ingotvf1").expect("back in ingotd's namespace");
    assert_eq!(mac_of(&back), mac_of(&before), "its own MAC");
    assert!(back.contains("mtu 1500"), "its own MTU: {back}");
    assert_nothing_left(&env.daemon, &pod_id);
    ip_in(netns)
        .args(["link", "del", "ingotvf1"])
        .status()
        .expect("ip");
}

/// crictl, with JSON configs as a person writes them: `crictl runp`, `create` with `CDI_devices`
/// and `start`; the container sees the CDI device node, environment and mount; an unknown CDI
/// device is refused to crictl, naming it.
#[tokio::test(flavor = "current_thread")]
async fn crictl_starts_a_container_with_a_cdi_device() {
    let crictl = ingot_tests::crictl();
    assert!(crictl.exists(), "crictl at {}", crictl.display());
    let devices = Devices::new();
    let (env, _client, image) = env_with(
        false,
        Options {
            extra_config: devices.config(),
            ..Default::default()
        },
    )
    .await;
    let endpoint = format!("unix://{}", env.daemon.socket().display());
    let run = |args: &[&str]| {
        let output = std::process::Command::new(&crictl)
            .args(["--runtime-endpoint", &endpoint, "--timeout", "30s"])
            .args(args)
            .output()
            .expect("crictl");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).trim().to_string(),
            String::from_utf8_lossy(&output.stderr).trim().to_string(),
        )
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let pod_json = dir.path().join("pod.json");
    std::fs::write(
        &pod_json,
        serde_json::json!({
            "metadata": {"name": "crictl-cdi", "namespace": "default", "uid": "crictl-cdi-uid"},
            "log_directory": env.daemon.log_dir("crictl-cdi"),
            "linux": {"security_context": {"namespace_options": {"network": 2}}}
        })
        .to_string(),
    )
    .expect("pod.json");
    let container_json = |name: &str, device: &str| {
        let path = dir.path().join(format!("{name}.json"));
        std::fs::write(
            &path,
            serde_json::json!({
                "metadata": {"name": name},
                "image": {"image": image},
                "command": ["/bin/sh", "-c", "sleep 600"],
                "log_path": format!("{name}.log"),
                "CDI_devices": [{"name": device}]
            })
            .to_string(),
        )
        .expect("container.json");
        path
    };
    let (ok, pod_id, err) = run(&["runp", pod_json.to_str().expect("utf-8")]);
    assert!(ok, "runp: {err}");
    let ctr = container_json("cdi", "test.ingot.dev/device=ctl0");
    let (ok, id, err) = run(&[
        "create",
        &pod_id,
        ctr.to_str().expect("utf-8"),
        pod_json.to_str().expect("utf-8"),
    ]);
    assert!(ok, "create: {err}");
    let (ok, _, err) = run(&["start", &id]);
    assert!(ok, "start: {err}");
    let (ok, out, err) = run(&[
        "exec",
        &id,
        "/bin/sh",
        "-c",
        "test -c /dev/cdi-ctl && echo \"$CDI_DEVICE\" && cat /opt/cdi-lib/marker",
    ]);
    assert!(ok, "exec: {err}");
    assert_eq!(out, "ctl0\nvendor library");

    let unknown = container_json("unknown", "test.ingot.dev/device=nope");
    let (ok, _, err) = run(&[
        "create",
        &pod_id,
        unknown.to_str().expect("utf-8"),
        pod_json.to_str().expect("utf-8"),
    ]);
    assert!(!ok, "an unknown CDI device is refused");
    assert!(err.contains("test.ingot.dev/device=nope"), "{err}");
    assert!(err.contains("InvalidArgument"), "{err}");

    let (ok, _, err) = run(&["rmp", "-f", &pod_id]);
    assert!(ok, "rmp: {err}");
    assert_nothing_left(&env.daemon, &pod_id);
}
