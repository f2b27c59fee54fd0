use super::*;

fn image() -> ImageConfig {
    ImageConfig::from_document(
        r#"{"config": {"Entrypoint": ["/bin/sh", "-c"], "Cmd": ["echo hi"],
            "Env": ["PATH=/bin", "A=image"], "User": "", "WorkingDir": "/work"}}"#,
    )
    .expect("image config")
}

fn container() -> v1::ContainerConfig {
    v1::ContainerConfig {
        metadata: Some(v1::ContainerMetadata {
            name: "c".into(),
            attempt: 0,
        }),
        ..Default::default()
    }
}

fn spec_of(config: &v1::ContainerConfig, sandbox: &v1::PodSandboxConfig) -> Result<Spec, OciError> {
    let namespaces = PodNamespaces {
        network: Some(PathBuf::from("/run/ingot/pods/p/ns/net")),
        ipc: Some(PathBuf::from("/run/ingot/pods/p/ns/ipc")),
        uts: None,
        pid: None,
        host_pid: false,
    };
    let files = PodFiles {
        resolv_conf: Some(PathBuf::from("/run/ingot/pods/p/resolv.conf")),
        ..Default::default()
    };
    let seccomp = default_seccomp_profile();
    container_spec(&ContainerInput {
        id: "c1",
        sandbox_id: "p",
        config,
        sandbox,
        image: &image(),
        image_name: "busybox:latest",
        rootfs: Path::new("/var/lib/ingot/containers/c1/rootfs"),
        namespaces: &namespaces,
        files: &files,
        hostname: "web-host",
        cgroups_path: "/ingot/p/c1",
        user: &User::default(),
        devices: &[],
        seccomp: Some(&seccomp),
        bounding: u64::MAX,
    })
}

#[test]
fn command_merge_follows_containerd() {
    let image = image();
    let mut config = container();
    assert_eq!(
        process_args(&config, &image).expect("args"),
        ["/bin/sh", "-c", "echo hi"]
    );
    config.args = vec!["echo there".into()];
    assert_eq!(
        process_args(&config, &image).expect("args"),
        ["/bin/sh", "-c", "echo there"]
    );
    config.command = vec!["/bin/top".into()];
    assert_eq!(
        process_args(&config, &image).expect("args"),
        ["/bin/top", "echo there"]
    );
    let err = process_args(&container(), &ImageConfig::default()).expect_err("no command");
    assert!(err.to_string().contains("command"), "{err}");
}

#[test]
fn environment_overrides_the_image_in_order() {
    let mut config = container();
    config.envs = vec![
        v1::KeyValue {
            key: "A".into(),
            value: "mine".into(),
        },
        v1::KeyValue {
            key: "B".into(),
            value: "x=y".into(),
        },
    ];
    assert_eq!(
        process_env(&config, &image(), ""),
        ["PATH=/bin", "A=mine", "B=x=y"]
    );
    let bare = process_env(&container(), &ImageConfig::default(), "");
    assert!(bare[0].starts_with("PATH=/usr/local/sbin"), "{bare:?}");
    // HOSTNAME first, as containerd sets it: the image and the container may override it.
    assert_eq!(
        process_env(&config, &image(), "web-0")[..2],
        ["HOSTNAME=web-0".to_string(), "PATH=/bin".to_string()]
    );
    config.envs.push(v1::KeyValue {
        key: "HOSTNAME".into(),
        value: "mine".into(),
    });
    let env = process_env(&config, &image(), "web-0");
    assert_eq!(env[0], "HOSTNAME=mine", "{env:?}");
    assert_eq!(env.iter().filter(|e| e.starts_with("HOSTNAME=")).count(), 1);
}

#[test]
fn users_resolve_against_the_image_files() {
    let passwd = "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33::/var/www:/bin/false\n";
    let group = "root:x:0:\nwww:x:33:\naudio:x:29:www,other\n";
    let request = |user: Option<&str>, group: Option<&str>| UserRequest {
        user: user.map(str::to_string),
        group: group.map(str::to_string),
        supplemental: vec![],
    };
    let www = resolve_user(&request(Some("www"), None), passwd, group).expect("www");
    assert_eq!(
        (www.uid, www.gid, www.additional_gids.clone()),
        (33, 33, vec![29])
    );
    let numeric = resolve_user(&request(Some("1234"), None), passwd, group).expect("uid");
    assert_eq!((numeric.uid, numeric.gid), (1234, 0));
    let with_group = resolve_user(&request(Some("33"), Some("audio")), passwd, group).expect("g");
    assert_eq!((with_group.uid, with_group.gid), (33, 29));
    let err = resolve_user(&request(Some("nobody"), None), passwd, group).expect_err("unknown");
    assert!(err.to_string().contains("nobody"), "{err}");
    assert_eq!(
        resolve_user(&request(None, None), "", "").expect("root"),
        User::default()
    );

    let mut config = container();
    config.linux = Some(v1::LinuxContainerConfig {
        security_context: Some(v1::LinuxContainerSecurityContext {
            run_as_user: Some(v1::Int64Value { value: 1000 }),
            run_as_group: Some(v1::Int64Value { value: 2000 }),
            supplemental_groups: vec![3000],
            ..Default::default()
        }),
        ..Default::default()
    });
    let request = user_request(&config, &image()).expect("request");
    assert_eq!(request.user.as_deref(), Some("1000"));
    assert_eq!(request.group.as_deref(), Some("2000"));
    assert_eq!(request.supplemental, vec![3000]);
}

#[test]
fn capabilities_add_drop_and_all() {
    let context = |add: &[&str], drop: &[&str]| v1::LinuxContainerSecurityContext {
        capabilities: Some(v1::Capability {
            add_capabilities: add.iter().map(|s| s.to_string()).collect(),
            drop_capabilities: drop.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let caps = capabilities(Some(&context(&["sys_admin"], &["CAP_CHOWN"]))).expect("caps");
    assert!(caps.contains(&"CAP_SYS_ADMIN".to_string()));
    assert!(!caps.contains(&"CAP_CHOWN".to_string()));
    let caps = capabilities(Some(&context(&["NET_ADMIN"], &["ALL"]))).expect("caps");
    assert_eq!(caps, ["CAP_NET_ADMIN"]);
    assert_eq!(
        capabilities(Some(&context(&["ALL"], &[])))
            .expect("all")
            .len(),
        ALL_CAPABILITIES.len()
    );
    let err = capabilities(Some(&context(&["CAP_FLY"], &[]))).expect_err("unknown");
    assert!(err.to_string().contains("add_capabilities"), "{err}");
}

#[test]
fn resources_translate_and_refuse_bad_values() {
    let r = v1::LinuxContainerResources {
        cpu_shares: 512,
        cpu_quota: 50_000,
        cpu_period: 100_000,
        memory_limit_in_bytes: 64 << 20,
        cpuset_cpus: "0-1".into(),
        hugepage_limits: vec![v1::HugepageLimit {
            page_size: "2MB".into(),
            limit: 4 << 21,
        }],
        ..Default::default()
    };
    let json = serde_json::to_value(resources(Some(&r)).expect("resources")).expect("json");
    assert_eq!(json["cpu"]["shares"], 512);
    assert_eq!(json["cpu"]["quota"], 50_000);
    assert_eq!(json["cpu"]["cpus"], "0-1");
    assert_eq!(json["memory"]["limit"], 64 << 20);
    assert_eq!(json["hugepageLimits"][0]["pageSize"], "2MB");
    for (bad, field) in [
        (
            v1::LinuxContainerResources {
                cpuset_cpus: "0-a".into(),
                ..Default::default()
            },
            "cpuset_cpus",
        ),
        (
            v1::LinuxContainerResources {
                cpuset_mems: "3-1".into(),
                ..Default::default()
            },
            "cpuset_mems",
        ),
        (
            v1::LinuxContainerResources {
                memory_limit_in_bytes: -5,
                ..Default::default()
            },
            "memory_limit",
        ),
        (
            v1::LinuxContainerResources {
                cpu_shares: -2,
                ..Default::default()
            },
            "cpu_shares",
        ),
        (
            v1::LinuxContainerResources {
                cpu_quota: -7,
                ..Default::default()
            },
            "cpu_quota",
        ),
    ] {
        let err = resources(Some(&bad)).expect_err(field);
        assert!(err.to_string().contains(field), "{err}");
    }
}

#[test]
fn spec_joins_the_pod_and_carries_the_request() {
    let mut config = container();
    config.tty = true;
    config.mounts = vec![v1::Mount {
        container_path: "/data".into(),
        host_path: "/srv/data".into(),
        readonly: true,
        propagation: v1::MountPropagation::PropagationHostToContainer as i32,
        ..Default::default()
    }];
    config.annotations.insert("team".into(), "rt".into());
    let spec = spec_of(&config, &v1::PodSandboxConfig::default()).expect("spec");
    let json = serde_json::to_value(&spec).expect("json");
    let namespaces = json["linux"]["namespaces"].as_array().expect("namespaces");
    assert!(namespaces.contains(&json!({"type": "network", "path": "/run/ingot/pods/p/ns/net"})));
    assert!(namespaces.contains(&json!({"type": "pid"})));
    assert!(
        !namespaces.iter().any(|n| n["type"] == "uts"),
        "host UTS: no namespace entry"
    );
    assert_eq!(json["linux"]["cgroupsPath"], "/ingot/p/c1");
    assert_eq!(json["process"]["cwd"], "/work");
    assert_eq!(json["process"]["terminal"], true);
    assert_eq!(json["annotations"]["io.kubernetes.cri.sandbox-id"], "p");
    assert_eq!(json["annotations"]["team"], "rt");
    let data = json["mounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .find(|m| m["destination"] == "/data")
        .expect("data");
    assert_eq!(data["options"], json!(["rbind", "rslave", "ro"]));
    assert_eq!(json["linux"]["rootfsPropagation"], "slave");
    assert!(json["mounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .any(|m| m["destination"] == "/etc/resolv.conf"));
    assert_eq!(json["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ALLOW");
    assert_eq!(
        json["linux"]["resources"]["devices"][0],
        json!({"allow": false, "access": "rwm"})
    );
}

#[test]
fn spec_refuses_hostile_paths_and_privilege_escalation() {
    let mut config = container();
    config.mounts = vec![v1::Mount {
        container_path: "/a/../etc".into(),
        host_path: "/tmp".into(),
        ..Default::default()
    }];
    let err = spec_of(&config, &v1::PodSandboxConfig::default()).expect_err("..");
    assert!(err.to_string().contains("mounts.container_path"), "{err}");
    config.mounts = vec![v1::Mount {
        container_path: "/a".into(),
        host_path: "tmp".into(),
        ..Default::default()
    }];
    let err = spec_of(&config, &v1::PodSandboxConfig::default()).expect_err("relative");
    assert!(err.to_string().contains("mounts.host_path"), "{err}");
    let mut config = container();
    config.working_dir = "relative".into();
    assert!(spec_of(&config, &v1::PodSandboxConfig::default())
        .expect_err("cwd")
        .to_string()
        .contains("working_dir"));
    let mut config = container();
    config.linux = Some(v1::LinuxContainerConfig {
        security_context: Some(v1::LinuxContainerSecurityContext {
            privileged: true,
            ..Default::default()
        }),
        ..Default::default()
    });
    let err = spec_of(&config, &v1::PodSandboxConfig::default()).expect_err("privileged");
    assert!(err.to_string().contains("privileged"), "{err}");
}

#[test]
fn capabilities_stay_within_the_runtime_bounding_set() {
    let all: Vec<String> = ALL_CAPABILITIES.iter().map(|s| s.to_string()).collect();
    // Everything but CAP_SYS_RESOURCE (24), as on a host that withholds it from the runtime.
    let kept = within_bounding(all.clone(), !(1u64 << 24));
    assert_eq!(kept.len(), all.len() - 1);
    assert!(!kept.contains(&"CAP_SYS_RESOURCE".to_string()));
    assert_eq!(ALL_CAPABILITIES[24], "CAP_SYS_RESOURCE");
    assert_eq!(ALL_CAPABILITIES[40], "CAP_CHECKPOINT_RESTORE");
}

#[test]
fn seccomp_choices() {
    let with = |profile_type: v1::security_profile::ProfileType, reference: &str| {
        v1::LinuxContainerSecurityContext {
            seccomp: Some(v1::SecurityProfile {
                profile_type: profile_type as i32,
                localhost_ref: reference.into(),
            }),
            ..Default::default()
        }
    };
    use v1::security_profile::ProfileType;
    assert_eq!(
        seccomp_choice(Some(&with(ProfileType::RuntimeDefault, ""))).expect("rd"),
        SeccompChoice::RuntimeDefault
    );
    assert_eq!(
        seccomp_choice(Some(&with(ProfileType::Localhost, "/p.json"))).expect("lh"),
        SeccompChoice::Localhost("/p.json".into())
    );
    assert!(seccomp_choice(Some(&with(ProfileType::Localhost, "rel.json"))).is_err());
    #[allow(deprecated)]
    let old = v1::LinuxContainerSecurityContext {
        seccomp_profile_path: "chrome".into(),
        ..Default::default()
    };
    assert!(seccomp_choice(Some(&old))
        .expect_err("unknown")
        .to_string()
        .contains("seccomp"));
    assert_eq!(
        seccomp_choice(None).expect("none"),
        SeccompChoice::Unconfined
    );
}

/// Compares `spec` with the committed snapshot `tests/snapshots/<name>.json`; with
/// `INGOT_UPDATE_SNAPSHOTS=1` it rewrites the file instead.
fn assert_snapshot(name: &str, spec: &Spec) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(format!("{name}.json"));
    // Capabilities are sets in oci-spec (no order): sorted, so the snapshot is stable.
    let mut value = serde_json::to_value(spec).expect("json");
    if let Some(Value::Object(sets)) = value.pointer_mut("/process/capabilities") {
        for set in sets.values_mut() {
            if let Value::Array(names) = set {
                names.sort_by_key(|name| name.to_string());
            }
        }
    }
    let actual = serde_json::to_string_pretty(&value).expect("json") + "\n";
    if std::env::var_os("INGOT_UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("snapshot dir");
        std::fs::write(&path, &actual).expect("write snapshot");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|err| {
        panic!(
            "{}: {err} (INGOT_UPDATE_SNAPSHOTS=1 writes it)",
            path.display()
        )
    });
    assert!(
        expected == actual,
        "spec {name} differs from {}:\n{}",
        path.display(),
        first_difference(&expected, &actual)
    );
}

fn first_difference(expected: &str, actual: &str) -> String {
    for (line, (e, a)) in expected.lines().zip(actual.lines()).enumerate() {
        if e != a {
            return format!("line {}: expected {e:?}, got {a:?}", line + 1);
        }
    }
    format!(
        "lengths differ: {} lines expected, {} got",
        expected.lines().count(),
        actual.lines().count()
    )
}

fn privileged_pod() -> v1::PodSandboxConfig {
    v1::PodSandboxConfig {
        metadata: Some(v1::PodSandboxMetadata {
            name: "pod".into(),
            uid: "uid-1".into(),
            namespace: "ns".into(),
            attempt: 0,
        }),
        linux: Some(v1::LinuxPodSandboxConfig {
            security_context: Some(v1::LinuxSandboxSecurityContext {
                privileged: true,
                ..Default::default()
            }),
            sysctls: [("net.core.somaxconn".to_string(), "1024".to_string())].into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn spec_snapshots() {
    assert_snapshot(
        "default",
        &spec_of(&container(), &v1::PodSandboxConfig::default()).expect("default"),
    );

    let mut config = container();
    config.tty = true;
    config.args = vec!["sleep".into(), "100".into()];
    config.envs = vec![v1::KeyValue {
        key: "A".into(),
        value: "request".into(),
    }];
    config.working_dir = "/data".into();
    config.annotations.insert("team".into(), "rt".into());
    config.image = Some(v1::ImageSpec {
        image: "busybox:latest".into(),
        ..Default::default()
    });
    config.mounts = vec![
        v1::Mount {
            container_path: "/data".into(),
            host_path: "/srv/data".into(),
            readonly: true,
            propagation: v1::MountPropagation::PropagationBidirectional as i32,
            ..Default::default()
        },
        v1::Mount {
            container_path: "/etc/hosts".into(),
            host_path: "/srv/hosts".into(),
            ..Default::default()
        },
    ];
    config.linux = Some(v1::LinuxContainerConfig {
        resources: Some(v1::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 200_000,
            cpu_shares: 2048,
            memory_limit_in_bytes: 1 << 30,
            memory_swap_limit_in_bytes: 1 << 31,
            oom_score_adj: -997,
            cpuset_cpus: "2-3".into(),
            cpuset_mems: "0".into(),
            hugepage_limits: vec![v1::HugepageLimit {
                page_size: "2MB".into(),
                limit: 4 << 21,
            }],
            unified: [("memory.high".to_string(), "max".to_string())].into(),
        }),
        security_context: Some(v1::LinuxContainerSecurityContext {
            readonly_rootfs: true,
            no_new_privs: true,
            capabilities: Some(v1::Capability {
                add_capabilities: vec!["NET_ADMIN".into()],
                drop_capabilities: vec!["KILL".into()],
                ..Default::default()
            }),
            masked_paths: vec!["/proc/secret".into()],
            readonly_paths: vec!["/proc/sys".into()],
            ..Default::default()
        }),
    });
    assert_snapshot(
        "resources-and-mounts",
        &spec_of(&config, &v1::PodSandboxConfig::default()).expect("resources"),
    );

    let mut config = container();
    config.linux = Some(v1::LinuxContainerConfig {
        security_context: Some(v1::LinuxContainerSecurityContext {
            privileged: true,
            ..Default::default()
        }),
        ..Default::default()
    });
    let pod = privileged_pod();
    let namespaces = PodNamespaces {
        network: None,
        ipc: Some(PathBuf::from("/run/ingot/pods/p/ns/ipc")),
        uts: Some(PathBuf::from("/run/ingot/pods/p/ns/uts")),
        pid: Some(PathBuf::from("/proc/42/ns/pid")),
        host_pid: false,
    };
    let files = PodFiles {
        hostname: Some(PathBuf::from("/run/ingot/pods/p/hostname")),
        hosts: Some(PathBuf::from("/run/ingot/pods/p/hosts")),
        resolv_conf: Some(PathBuf::from("/run/ingot/pods/p/resolv.conf")),
        shm: Some(PathBuf::from("/run/ingot/pods/p/shm")),
    };
    let devices = [HostDevice {
        container_path: "/dev/fuse".into(),
        kind: 'c',
        major: 10,
        minor: 229,
        file_mode: 0o666,
        permissions: "rw".into(),
    }];
    let user = User {
        uid: 1000,
        gid: 100,
        additional_gids: vec![10, 20],
    };
    let spec = container_spec(&ContainerInput {
        id: "c2",
        sandbox_id: "p",
        config: &config,
        sandbox: &pod,
        image: &image(),
        image_name: "busybox:latest",
        rootfs: Path::new("/var/lib/ingot/containers/c2/rootfs"),
        namespaces: &namespaces,
        files: &files,
        hostname: "",
        cgroups_path: "/ingot/p/c2",
        user: &user,
        devices: &devices,
        seccomp: None,
        bounding: (1 << 21) | (1 << 12),
    })
    .expect("privileged");
    assert_snapshot("privileged-with-devices", &spec);
}
