//! Malformed and hostile CRI requests: each gets the gRPC code containerd would give, with a
//! message naming the field, and none leaves a pod, container, bundle, mount or cgroup behind.
//! The daemon must still answer afterwards (no panic).

use std::collections::HashMap;

use ingot_tests::{
    cri::{pull, runtime_client, Daemon},
    Registry,
};
use k8s_cri::v1;
use tonic::Code;

const IMAGE: &str = "ingot/bad-input:1";
const NODE: v1::NamespaceMode = v1::NamespaceMode::Node;
const POD: v1::NamespaceMode = v1::NamespaceMode::Pod;

struct Table {
    cases: usize,
    failures: Vec<String>,
}

impl Table {
    fn check<T: std::fmt::Debug>(
        &mut self,
        name: &str,
        result: Result<tonic::Response<T>, tonic::Status>,
        code: Code,
        needle: &str,
    ) {
        self.cases += 1;
        match result {
            Ok(response) => self
                .failures
                .push(format!("{name}: accepted: {:?}", response.into_inner())),
            Err(status) => {
                if status.code() != code || !status.message().contains(needle) {
                    self.failures.push(format!(
                        "{name}: want {code:?} naming {needle:?}, got {:?} {:?}",
                        status.code(),
                        status.message()
                    ));
                }
            }
        }
    }
}

fn pod(name: &str) -> v1::PodSandboxConfig {
    v1::PodSandboxConfig {
        metadata: Some(v1::PodSandboxMetadata {
            name: name.into(),
            namespace: "default".into(),
            uid: format!("uid-{name}"),
            attempt: 0,
        }),
        linux: Some(v1::LinuxPodSandboxConfig {
            security_context: Some(v1::LinuxSandboxSecurityContext {
                namespace_options: Some(v1::NamespaceOption {
                    network: v1::NamespaceMode::Node as i32,
                    pid: v1::NamespaceMode::Container as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn run(config: Option<v1::PodSandboxConfig>) -> v1::RunPodSandboxRequest {
    v1::RunPodSandboxRequest {
        config,
        runtime_handler: String::new(),
    }
}

fn with(change: impl FnOnce(&mut v1::PodSandboxConfig)) -> v1::RunPodSandboxRequest {
    let mut config = pod("bad");
    change(&mut config);
    run(Some(config))
}

#[tokio::test(flavor = "current_thread")]
async fn hostile_requests_are_refused_and_leave_nothing() {
    let registry = Registry::start().expect("registry");
    registry.push_test_image(IMAGE).expect("push");
    let daemon = Daemon::start("");
    let image = format!("{}/{IMAGE}", registry.address);
    pull(&daemon.socket(), &image).await.expect("pull");
    let mut client = runtime_client(&daemon.socket()).await;
    let mut t = Table {
        cases: 0,
        failures: Vec::new(),
    };
    let ia = Code::InvalidArgument;

    // RunPodSandbox.
    t.check(
        "no config",
        client.run_pod_sandbox(run(None)).await,
        ia,
        "config",
    );
    t.check(
        "no metadata",
        client.run_pod_sandbox(with(|c| c.metadata = None)).await,
        ia,
        "config.metadata",
    );
    let meta = |f: fn(&mut v1::PodSandboxMetadata)| {
        with(move |c| f(c.metadata.as_mut().expect("metadata")))
    };
    t.check(
        "empty name",
        client.run_pod_sandbox(meta(|m| m.name.clear())).await,
        ia,
        "config.metadata.name",
    );
    t.check(
        "empty namespace",
        client.run_pod_sandbox(meta(|m| m.namespace.clear())).await,
        ia,
        "config.metadata.namespace",
    );
    t.check(
        "empty uid",
        client.run_pod_sandbox(meta(|m| m.uid.clear())).await,
        ia,
        "config.metadata.uid",
    );
    t.check(
        "slash in name",
        client
            .run_pod_sandbox(meta(|m| m.name = "a/../b".into()))
            .await,
        ia,
        "config.metadata.name",
    );
    t.check(
        "oversized name",
        client
            .run_pod_sandbox(meta(|m| m.name = "n".repeat(4096)))
            .await,
        ia,
        "config.metadata.name",
    );
    t.check(
        "bad hostname",
        client
            .run_pod_sandbox(with(|c| c.hostname = "bad host!".into()))
            .await,
        ia,
        "config.hostname",
    );
    t.check(
        "relative log dir",
        client
            .run_pod_sandbox(with(|c| c.log_directory = "var/log/pods".into()))
            .await,
        ia,
        "config.log_directory",
    );
    t.check(
        "log dir climbing",
        client
            .run_pod_sandbox(with(|c| c.log_directory = "/var/log/../../etc".into()))
            .await,
        ia,
        "config.log_directory",
    );
    t.check(
        "port out of range",
        client
            .run_pod_sandbox(with(|c| {
                c.port_mappings = vec![v1::PortMapping {
                    container_port: 80,
                    host_port: 70_000,
                    ..Default::default()
                }]
            }))
            .await,
        ia,
        "config.port_mappings.host_port",
    );
    t.check(
        "dns server not an address",
        client
            .run_pod_sandbox(with(|c| {
                c.dns_config = Some(v1::DnsConfig {
                    servers: vec!["8.8.8.8; rm -rf /".into()],
                    ..Default::default()
                })
            }))
            .await,
        ia,
        "config.dns_config.servers",
    );
    t.check(
        "relative cgroup parent",
        client
            .run_pod_sandbox(with(|c| {
                c.linux.as_mut().expect("linux").cgroup_parent = "kubepods/pod1".into()
            }))
            .await,
        ia,
        "config.linux.cgroup_parent",
    );
    t.check(
        "cgroup parent climbing",
        client
            .run_pod_sandbox(with(|c| {
                c.linux.as_mut().expect("linux").cgroup_parent =
                    "/kubepods/../../process_api".into()
            }))
            .await,
        ia,
        "config.linux.cgroup_parent",
    );
    t.check(
        "sysctl path escape",
        client
            .run_pod_sandbox(with(|c| {
                c.linux.as_mut().expect("linux").sysctls =
                    HashMap::from([("../../../etc/passwd".into(), "x".into())]);
            }))
            .await,
        ia,
        "config.linux.sysctls",
    );
    // Sysctls as runc checks them (namespaced ones only, each where the pod has that namespace
    // of its own), then as the kernel does when RunPodSandbox writes them in the new
    // namespaces. `network` and `ipc` choose the pod's namespaces (the table's pod shares the
    // host's network).
    let sysctl_cases: &[(&str, &str, &str, v1::NamespaceMode, v1::NamespaceMode)] = &[
        (
            "sysctl not in a namespace",
            "kernel.no_such_sysctl",
            "1",
            NODE,
            POD,
        ),
        ("sysctl of the host only", "kernel.panic", "1", POD, POD),
        (
            "net sysctl with host network",
            "net.ipv4.ip_forward",
            "1",
            NODE,
            POD,
        ),
        (
            "ipc sysctl with host IPC",
            "kernel.shmmax",
            "4096",
            POD,
            NODE,
        ),
        (
            "mqueue sysctl with host IPC",
            "fs.mqueue.msg_max",
            "10",
            NODE,
            NODE,
        ),
        ("hostname sysctl", "kernel.hostname", "x", POD, POD),
        (
            "unknown net sysctl",
            "net.ipv4.no_such_sysctl",
            "1",
            POD,
            POD,
        ),
        (
            "unknown mqueue sysctl",
            "fs.mqueue.no_such_sysctl",
            "1",
            NODE,
            POD,
        ),
        ("bad ipc sysctl value", "kernel.shmmax", "lots", NODE, POD),
        (
            "bad net sysctl value",
            "net.ipv4.ip_forward",
            "on",
            POD,
            POD,
        ),
    ];
    for (case, name, value, network, ipc) in sysctl_cases {
        let request = with(|c| {
            let linux = c.linux.as_mut().expect("linux");
            linux.sysctls = HashMap::from([(name.to_string(), value.to_string())]);
            let options = linux
                .security_context
                .as_mut()
                .and_then(|s| s.namespace_options.as_mut())
                .expect("namespace options");
            options.network = *network as i32;
            options.ipc = *ipc as i32;
        });
        t.check(case, client.run_pod_sandbox(request).await, ia, name);
    }
    t.check(
        "unknown runtime handler",
        client
            .run_pod_sandbox(v1::RunPodSandboxRequest {
                config: Some(pod("bad")),
                runtime_handler: "kata".into(),
            })
            .await,
        Code::NotFound,
        "runtime handler",
    );

    // One valid pod for the container cases; its name is then taken.
    let pod_config = pod("good");
    let pod_id = client
        .run_pod_sandbox(run(Some(pod_config.clone())))
        .await
        .expect("valid pod")
        .into_inner()
        .pod_sandbox_id;
    t.check(
        "duplicate pod name",
        client.run_pod_sandbox(run(Some(pod_config.clone()))).await,
        Code::AlreadyExists,
        "pod sandbox name",
    );

    let container = || v1::ContainerConfig {
        metadata: Some(v1::ContainerMetadata {
            name: "c".into(),
            attempt: 0,
        }),
        image: Some(v1::ImageSpec {
            image: image.clone(),
            ..Default::default()
        }),
        command: vec!["sleep".into(), "1000".into()],
        ..Default::default()
    };
    let create = |change: &dyn Fn(&mut v1::ContainerConfig)| {
        let mut config = container();
        change(&mut config);
        v1::CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(config),
            sandbox_config: Some(pod_config.clone()),
        }
    };
    let resources = |r: v1::LinuxContainerResources| {
        move |c: &mut v1::ContainerConfig| {
            c.linux = Some(v1::LinuxContainerConfig {
                resources: Some(r.clone()),
                security_context: None,
            });
        }
    };
    let security = |s: v1::LinuxContainerSecurityContext| {
        move |c: &mut v1::ContainerConfig| {
            c.linux = Some(v1::LinuxContainerConfig {
                resources: None,
                security_context: Some(s.clone()),
            });
        }
    };

    t.check(
        "unknown pod",
        client
            .create_container(v1::CreateContainerRequest {
                pod_sandbox_id: "f00d".repeat(16),
                ..create(&|_| {})
            })
            .await,
        Code::NotFound,
        "pod sandbox",
    );
    t.check(
        "empty pod id",
        client
            .create_container(v1::CreateContainerRequest {
                pod_sandbox_id: String::new(),
                ..create(&|_| {})
            })
            .await,
        ia,
        "pod_sandbox_id",
    );
    t.check(
        "no container config",
        client
            .create_container(v1::CreateContainerRequest {
                config: None,
                ..create(&|_| {})
            })
            .await,
        ia,
        "config",
    );
    t.check(
        "no container metadata",
        client
            .create_container(create(&|c| c.metadata = None))
            .await,
        ia,
        "config.metadata",
    );
    t.check(
        "empty container name",
        client
            .create_container(create(&|c| c.metadata.as_mut().expect("m").name.clear()))
            .await,
        ia,
        "config.metadata.name",
    );
    t.check(
        "no image",
        client.create_container(create(&|c| c.image = None)).await,
        ia,
        "config.image.image",
    );
    t.check(
        "unknown image",
        client
            .create_container(create(&|c| {
                c.image.as_mut().expect("i").image = "127.0.0.1:1/missing:1".into()
            }))
            .await,
        Code::NotFound,
        "image",
    );
    t.check(
        "bad cpuset",
        client
            .create_container(create(&resources(v1::LinuxContainerResources {
                cpuset_cpus: "0-a".into(),
                ..Default::default()
            })))
            .await,
        ia,
        "cpuset_cpus",
    );
    t.check(
        "reversed cpuset mems",
        client
            .create_container(create(&resources(v1::LinuxContainerResources {
                cpuset_mems: "3-1".into(),
                ..Default::default()
            })))
            .await,
        ia,
        "cpuset_mems",
    );
    t.check(
        "negative memory limit",
        client
            .create_container(create(&resources(v1::LinuxContainerResources {
                memory_limit_in_bytes: -1,
                ..Default::default()
            })))
            .await,
        ia,
        "memory_limit_in_bytes",
    );
    t.check(
        "negative cpu shares",
        client
            .create_container(create(&resources(v1::LinuxContainerResources {
                cpu_shares: -2,
                ..Default::default()
            })))
            .await,
        ia,
        "cpu_shares",
    );
    t.check(
        "oom score out of range",
        client
            .create_container(create(&resources(v1::LinuxContainerResources {
                oom_score_adj: 5000,
                ..Default::default()
            })))
            .await,
        ia,
        "oom_score_adj",
    );
    t.check(
        "unified key escaping",
        client
            .create_container(create(&resources(v1::LinuxContainerResources {
                unified: HashMap::from([("../../cgroup.procs".into(), "1".into())]),
                ..Default::default()
            })))
            .await,
        ia,
        "unified",
    );
    t.check(
        "missing localhost seccomp profile",
        client
            .create_container(create(&security(v1::LinuxContainerSecurityContext {
                seccomp: Some(v1::SecurityProfile {
                    profile_type: v1::security_profile::ProfileType::Localhost as i32,
                    localhost_ref: "/nonexistent/profile.json".into(),
                }),
                ..Default::default()
            })))
            .await,
        ia,
        "seccomp",
    );
    #[allow(deprecated)]
    let unknown_profile = v1::LinuxContainerSecurityContext {
        seccomp_profile_path: "chrome/default".into(),
        ..Default::default()
    };
    t.check(
        "unknown seccomp profile",
        client
            .create_container(create(&security(unknown_profile.clone())))
            .await,
        ia,
        "seccomp",
    );
    t.check(
        "unknown capability",
        client
            .create_container(create(&security(v1::LinuxContainerSecurityContext {
                capabilities: Some(v1::Capability {
                    add_capabilities: vec!["CAP_TIME_TRAVEL".into()],
                    ..Default::default()
                }),
                ..Default::default()
            })))
            .await,
        ia,
        "capabilities",
    );
    t.check(
        "privileged container in an unprivileged pod",
        client
            .create_container(create(&security(v1::LinuxContainerSecurityContext {
                privileged: true,
                ..Default::default()
            })))
            .await,
        ia,
        "privileged",
    );
    t.check(
        "absolute log path",
        client
            .create_container(create(&|c| c.log_path = "/etc/passwd".into()))
            .await,
        ia,
        "config.log_path",
    );
    t.check(
        "log path climbing",
        client
            .create_container(create(&|c| c.log_path = "../../etc/shadow".into()))
            .await,
        ia,
        "config.log_path",
    );
    let mount = |container_path: &str, host_path: &str| {
        let (container_path, host_path) = (container_path.to_string(), host_path.to_string());
        move |c: &mut v1::ContainerConfig| {
            c.mounts = vec![v1::Mount {
                container_path: container_path.clone(),
                host_path: host_path.clone(),
                ..Default::default()
            }];
        }
    };
    t.check(
        "relative container path",
        client
            .create_container(create(&mount("data", "/tmp")))
            .await,
        ia,
        "mounts.container_path",
    );
    t.check(
        "container path climbing",
        client
            .create_container(create(&mount("/data/../../etc", "/tmp")))
            .await,
        ia,
        "mounts.container_path",
    );
    t.check(
        "host path climbing",
        client
            .create_container(create(&mount("/data", "/tmp/../etc")))
            .await,
        ia,
        "mounts.host_path",
    );
    t.check(
        "relative host path",
        client
            .create_container(create(&mount("/data", "tmp")))
            .await,
        ia,
        "mounts.host_path",
    );
    t.check(
        "missing device",
        client
            .create_container(create(&|c| {
                c.devices = vec![v1::Device {
                    container_path: "/dev/fpga0".into(),
                    host_path: "/dev/ingot-no-such-device".into(),
                    permissions: "rw".into(),
                }]
            }))
            .await,
        ia,
        "devices.host_path",
    );
    t.check(
        "device that is a regular file",
        client
            .create_container(create(&|c| {
                c.devices = vec![v1::Device {
                    container_path: "/dev/x".into(),
                    host_path: "/etc/hostname".into(),
                    permissions: "rw".into(),
                }]
            }))
            .await,
        ia,
        "devices.host_path",
    );
    t.check(
        "relative working dir",
        client
            .create_container(create(&|c| c.working_dir = "srv".into()))
            .await,
        ia,
        "working_dir",
    );

    // A valid container, then what is wrong about using it.
    let id = client
        .create_container(create(&|_| {}))
        .await
        .expect("valid container")
        .into_inner()
        .container_id;
    t.check(
        "duplicate container name",
        client.create_container(create(&|_| {})).await,
        Code::AlreadyExists,
        "container name",
    );
    t.check(
        "exec in a container not started",
        client
            .exec_sync(v1::ExecSyncRequest {
                container_id: id.clone(),
                cmd: vec!["true".into()],
                timeout: 5,
            })
            .await,
        Code::FailedPrecondition,
        "not running",
    );
    client
        .start_container(v1::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .expect("start");
    t.check(
        "start twice",
        client
            .start_container(v1::StartContainerRequest {
                container_id: id.clone(),
            })
            .await,
        Code::FailedPrecondition,
        "not Created",
    );
    t.check(
        "exec without a command",
        client
            .exec_sync(v1::ExecSyncRequest {
                container_id: id.clone(),
                cmd: vec![],
                timeout: 5,
            })
            .await,
        ia,
        "cmd",
    );
    t.check(
        "negative exec timeout",
        client
            .exec_sync(v1::ExecSyncRequest {
                container_id: id.clone(),
                cmd: vec!["true".into()],
                timeout: -1,
            })
            .await,
        ia,
        "timeout",
    );
    t.check(
        "update with a bad cpuset",
        client
            .update_container_resources(v1::UpdateContainerResourcesRequest {
                container_id: id.clone(),
                linux: Some(v1::LinuxContainerResources {
                    cpuset_cpus: "x".into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await,
        ia,
        "cpuset_cpus",
    );
    t.check(
        "start unknown container",
        client
            .start_container(v1::StartContainerRequest {
                container_id: "beef".repeat(16),
            })
            .await,
        Code::NotFound,
        "container",
    );
    t.check(
        "status of unknown container",
        client
            .container_status(v1::ContainerStatusRequest {
                container_id: "beef".repeat(16),
                verbose: false,
            })
            .await,
        Code::NotFound,
        "container",
    );
    t.check(
        "status of empty pod id",
        client
            .pod_sandbox_status(v1::PodSandboxStatusRequest {
                pod_sandbox_id: String::new(),
                verbose: false,
            })
            .await,
        Code::NotFound,
        "pod sandbox",
    );
    t.check(
        "exec in unknown container",
        client
            .exec_sync(v1::ExecSyncRequest {
                container_id: "beef".repeat(16),
                cmd: vec!["true".into()],
                timeout: 1,
            })
            .await,
        Code::NotFound,
        "container",
    );

    assert!(t.cases >= 30, "only {} cases", t.cases);
    assert!(
        t.failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        t.failures.len(),
        t.cases,
        t.failures.join("\n")
    );

    // Nothing half-made: one pod, one container, one bundle, one rootfs mount.
    let pods = client
        .list_pod_sandbox(v1::ListPodSandboxRequest { filter: None })
        .await
        .expect("list")
        .into_inner()
        .items;
    assert_eq!(
        pods.iter().map(|p| p.id.clone()).collect::<Vec<_>>(),
        vec![pod_id.clone()]
    );
    let containers = client
        .list_containers(v1::ListContainersRequest { filter: None })
        .await
        .expect("list")
        .into_inner()
        .containers;
    assert_eq!(
        containers.iter().map(|c| c.id.clone()).collect::<Vec<_>>(),
        vec![id.clone()]
    );
    let bundles: Vec<_> = std::fs::read_dir(daemon.dir.path().join("run/containers"))
        .expect("bundles")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(bundles.len(), 1, "{bundles:?}");
    let layers: Vec<_> = std::fs::read_dir(daemon.dir.path().join("lib/containers"))
        .expect("layers")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(layers.len(), 1, "{layers:?}");
    let pod_dirs: Vec<_> = std::fs::read_dir(daemon.dir.path().join("run/pods"))
        .expect("pods")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(pod_dirs.len(), 1, "{pod_dirs:?}");
    let rootfs_mounts = ingot_tests::mounts()
        .into_iter()
        .filter(|m| m.ends_with("/rootfs") && m.contains(&*daemon.dir.path().to_string_lossy()))
        .count();
    assert_eq!(rootfs_mounts, 1);

    client
        .remove_pod_sandbox(v1::RemovePodSandboxRequest {
            pod_sandbox_id: pod_id,
        })
        .await
        .expect("remove");
    let left = ingot_tests::mounts()
        .into_iter()
        .filter(|m| m.contains(&*daemon.dir.path().to_string_lossy()))
        .count();
    assert_eq!(left, 0, "mounts left");
    assert!(
        ingot_tests::cgroups_named(daemon.cgroup_parent.trim_start_matches('/'))
            .iter()
            .all(|d| {
                std::fs::read_dir(d)
                    .is_ok_and(|mut e| !e.any(|e| e.is_ok_and(|e| e.path().is_dir())))
            })
    );
}
