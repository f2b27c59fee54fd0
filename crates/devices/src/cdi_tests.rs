use super::*;

use oci_spec::runtime::{LinuxDeviceType, ProcessBuilder, SpecBuilder};

const VENDOR: &str = r#"{
  "cdiVersion": "0.7.0",
  "kind": "vendor.com/device",
  "containerEdits": {
    "env": ["VENDOR_SHARED=1"],
    "hooks": [{"hookName": "createContainer", "path": "/usr/bin/vendor-hook", "args": ["vendor-hook", "update"]}]
  },
  "devices": [
    {
      "name": "dev0",
      "annotations": {"ingot.dev/pci-address": "0000:3b:00.0"},
      "containerEdits": {
        "deviceNodes": [{"path": "/dev/vendor0", "type": "c", "major": 240, "minor": 0, "permissions": "rw"}],
        "mounts": [{"hostPath": "/opt/vendor/lib", "containerPath": "/usr/lib/vendor", "options": ["ro", "bind"]}],
        "env": ["VENDOR_DEVICE=0"],
        "additionalGids": [44]
      }
    },
    {
      "name": "dev1",
      "containerEdits": {
        "deviceNodes": [{"path": "/dev/vendor1", "type": "c", "major": 240, "minor": 1}],
        "env": ["VENDOR_DEVICE=1"]
      }
    }
  ]
}"#;

fn spec_with(name: &str, path: &str, minor: u32) -> String {
    format!(
        r#"{{"cdiVersion": "0.6.0", "kind": "other.com/net", "devices": [
          {{"name": "{name}", "containerEdits": {{"deviceNodes": [{{"path": "{path}", "type": "c", "major": 241, "minor": {minor}}}]}}}}
        ]}}"#
    )
}

struct Dirs {
    _root: tempfile::TempDir,
    etc: PathBuf,
    run: PathBuf,
}

impl Dirs {
    fn new() -> Dirs {
        let root = tempfile::tempdir().expect("tempdir");
        let etc = root.path().join("etc/cdi");
        let run = root.path().join("run/cdi");
        std::fs::create_dir_all(&etc).expect("mkdir");
        std::fs::create_dir_all(&run).expect("mkdir");
        Dirs {
            _root: root,
            etc,
            run,
        }
    }

    fn registry(&self) -> Registry {
        Registry::new(vec![self.etc.clone(), self.run.clone()])
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write spec");
}

fn base_spec() -> Spec {
    SpecBuilder::default()
        .process(
            ProcessBuilder::default()
                .env(vec!["PATH=/bin".to_string()])
                .build()
                .expect("process"),
        )
        .build()
        .expect("spec")
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn requests_come_from_the_cri_field_then_the_annotations_each_once() {
    let annotations = HashMap::from([
        (
            "cdi.k8s.io/plugin_b".to_string(),
            "vendor.com/device=dev1,vendor.com/device=dev0".to_string(),
        ),
        (
            "cdi.k8s.io/plugin_a".to_string(),
            "other.com/net=a".to_string(),
        ),
        ("io.kubernetes.other".to_string(), "not=cdi".to_string()),
    ]);
    let got = requested(&names(&["vendor.com/device=dev0"]), &annotations).expect("valid");
    assert_eq!(
        got,
        names(&[
            "vendor.com/device=dev0",
            "other.com/net=a",
            "vendor.com/device=dev1"
        ])
    );

    let err = requested(&names(&["gpu0"]), &HashMap::new()).expect_err("unqualified");
    assert!(err.to_string().contains("CDI_devices"), "{err}");
    assert!(err.to_string().contains("\"gpu0\""), "{err}");
    let bad = HashMap::from([("cdi.k8s.io/x".to_string(), "vendor.com/device".to_string())]);
    let err = requested(&[], &bad).expect_err("no device name");
    assert!(err.to_string().contains("annotation cdi.k8s.io/x"), "{err}");
}

#[test]
fn a_device_injects_its_nodes_rules_mounts_env_hooks_and_gids_with_its_specs_edits_once() {
    let dirs = Dirs::new();
    write(&dirs.etc.join("vendor.json"), VENDOR);
    let registry = dirs.registry();
    assert_eq!(
        registry.list(),
        names(&["vendor.com/device=dev0", "vendor.com/device=dev1"])
    );
    let resolved = registry
        .resolve(&names(&[
            "vendor.com/device=dev0",
            "vendor.com/device=dev1",
        ]))
        .expect("resolves");
    assert_eq!(resolved.devices.len(), 2);
    assert_eq!(resolved.devices[0].spec_file, dirs.etc.join("vendor.json"));
    assert_eq!(
        resolved.devices[0].pci_address.as_deref(),
        Some("0000:3b:00.0")
    );
    assert_eq!(resolved.devices[1].pci_address, None);

    let mut spec = base_spec();
    resolved.inject(&mut spec).expect("inject");
    let linux = spec.linux().as_ref().expect("linux");
    let nodes = linux.devices().as_ref().expect("devices");
    let node = |path: &str| {
        nodes
            .iter()
            .find(|d| d.path() == Path::new(path))
            .unwrap_or_else(|| panic!("{path} in {nodes:?}"))
    };
    assert_eq!(node("/dev/vendor0").typ(), LinuxDeviceType::C);
    assert_eq!(
        (node("/dev/vendor0").major(), node("/dev/vendor0").minor()),
        (240, 0)
    );
    assert_eq!(node("/dev/vendor1").minor(), 1);
    let rules = linux
        .resources()
        .as_ref()
        .and_then(|r| r.devices().clone())
        .expect("device rules");
    let rule0 = rules
        .iter()
        .find(|r| r.major() == Some(240) && r.minor() == Some(0))
        .expect("rule for dev0");
    assert!(rule0.allow());
    assert_eq!(rule0.access().as_deref(), Some("rw"));
    assert!(rules
        .iter()
        .any(|r| r.minor() == Some(1) && r.access().as_deref() == Some("rwm")));

    let mounts = spec.mounts().as_ref().expect("mounts");
    let mount = mounts
        .iter()
        .find(|m| m.destination() == Path::new("/usr/lib/vendor"))
        .expect("mount");
    assert_eq!(
        mount.source().as_deref(),
        Some(Path::new("/opt/vendor/lib"))
    );

    let process = spec.process().as_ref().expect("process");
    let env = process.env().as_ref().expect("env");
    for var in ["PATH=/bin", "VENDOR_SHARED=1"] {
        assert_eq!(
            env.iter().filter(|e| *e == var).count(),
            1,
            "{var} in {env:?}"
        );
    }
    assert!(
        env.iter().any(|e| e.starts_with("VENDOR_DEVICE=")),
        "{env:?}"
    );
    assert_eq!(process.user().additional_gids().as_deref(), Some(&[44][..]));
    let hooks = spec
        .hooks()
        .as_ref()
        .and_then(|h| h.create_container().clone())
        .expect("createContainer hooks");
    assert_eq!(
        hooks.len(),
        1,
        "the spec's hook once, for two of its devices"
    );
    assert_eq!(hooks[0].path(), Path::new("/usr/bin/vendor-hook"));
}

#[test]
fn an_unknown_device_is_refused_naming_the_dirs_and_the_broken_spec_of_its_kind() {
    let dirs = Dirs::new();
    write(&dirs.etc.join("vendor.json"), VENDOR);
    write(
        &dirs.run.join("broken.yaml"),
        "cdiVersion: \"0.6.0\"\nkind: other.com/net\ndevices: [ {name: a, containerEdits: {bogus: 1}} ]\n",
    );
    write(
        &dirs.run.join("unrelated.json"),
        "{\"kind\": \"third.com/x\", \"cdiVersion\": 7}",
    );
    let registry = dirs.registry();
    assert_eq!(registry.broken().len(), 2);

    let err = registry
        .resolve(&names(&["vendor.com/device=dev9"]))
        .expect_err("unknown");
    let text = err.to_string();
    assert!(text.contains("\"vendor.com/device=dev9\""), "{text}");
    assert!(text.contains(&dirs.etc.display().to_string()), "{text}");
    assert!(
        !text.contains("broken.yaml"),
        "another kind's file is not blamed: {text}"
    );

    let err = registry
        .resolve(&names(&["vendor.com/device=dev0", "other.com/net=a"]))
        .expect_err("in a broken spec");
    let text = err.to_string();
    assert!(text.contains("\"other.com/net=a\""), "{text}");
    assert!(text.contains("broken.yaml"), "{text}");
    assert!(!text.contains("unrelated.json"), "{text}");
}

#[test]
fn the_same_device_twice_in_one_dir_is_ambiguous_and_a_later_dir_overrides() {
    let dirs = Dirs::new();
    write(&dirs.etc.join("a.json"), &spec_with("x", "/dev/x", 1));
    write(&dirs.etc.join("b.json"), &spec_with("x", "/dev/x", 2));
    let registry = dirs.registry();
    let err = registry
        .resolve(&names(&["other.com/net=x"]))
        .expect_err("ambiguous");
    let text = err.to_string();
    assert!(text.contains("ambiguous"), "{text}");
    assert!(text.contains("a.json") && text.contains("b.json"), "{text}");

    // A spec in the later directory wins over both.
    write(&dirs.run.join("c.json"), &spec_with("x", "/dev/x", 3));
    let resolved = registry
        .resolve(&names(&["other.com/net=x"]))
        .expect("the later dir's");
    assert_eq!(resolved.devices[0].spec_file, dirs.run.join("c.json"));
    let mut spec = base_spec();
    resolved.inject(&mut spec).expect("inject");
    let minor = spec
        .linux()
        .as_ref()
        .and_then(|l| l.devices().clone())
        .expect("devices")[0]
        .minor();
    assert_eq!(minor, 3);
}

#[test]
fn two_devices_that_put_different_nodes_at_one_path_conflict() {
    let dirs = Dirs::new();
    write(&dirs.etc.join("vendor.json"), VENDOR);
    write(
        &dirs.etc.join("other.json"),
        &spec_with("clash", "/dev/vendor0", 9),
    );
    let err = dirs
        .registry()
        .resolve(&names(&["vendor.com/device=dev0", "other.com/net=clash"]))
        .expect_err("conflict");
    let text = err.to_string();
    assert!(text.contains("/dev/vendor0"), "{text}");
    assert!(
        text.contains("vendor.com/device=dev0") && text.contains("other.com/net=clash"),
        "{text}"
    );
    assert!(text.contains("other.json"), "{text}");
}

#[test]
fn specs_are_read_again_when_a_file_changes_appears_or_goes() {
    let dirs = Dirs::new();
    let registry = dirs.registry();
    assert!(registry.list().is_empty());
    assert!(registry.resolve(&names(&["other.com/net=late"])).is_err());

    write(
        &dirs.run.join("late.json"),
        &spec_with("late", "/dev/late", 1),
    );
    assert!(registry.resolve(&names(&["other.com/net=late"])).is_ok());

    write(
        &dirs.run.join("late.json"),
        &spec_with("renamed", "/dev/late", 1),
    );
    assert!(registry.resolve(&names(&["other.com/net=late"])).is_err());
    assert_eq!(registry.list(), names(&["other.com/net=renamed"]));

    std::fs::remove_file(dirs.run.join("late.json")).expect("rm");
    assert!(registry.list().is_empty());

    // A spec dir that appears later (the dynamic dir is often created by a driver) is read too.
    let late_dir = dirs.run.join("sub");
    std::fs::create_dir(&late_dir).expect("mkdir");
    write(
        &late_dir.join("nested.yaml"),
        &spec_with("nested", "/dev/n", 1),
    );
    assert_eq!(registry.list(), names(&["other.com/net=nested"]));
}

#[test]
fn no_request_reads_nothing_and_injects_nothing() {
    let registry = Registry::new(vec![PathBuf::from("/nonexistent/cdi")]);
    let resolved = registry.resolve(&[]).expect("nothing asked");
    assert!(resolved.is_empty());
    let mut spec = base_spec();
    let before = serde_json::to_value(&spec).expect("json");
    resolved.inject(&mut spec).expect("inject nothing");
    assert_eq!(serde_json::to_value(&spec).expect("json"), before);
}

#[test]
fn net_devices_are_listed_with_their_pod_names() {
    let dirs = Dirs::new();
    write(
        &dirs.etc.join("net.json"),
        r#"{"cdiVersion": "1.1.0", "kind": "vendor.com/nic", "devices": [
            {"name": "vf0", "containerEdits": {"netDevices": [{"hostInterfaceName": "ens1f0v0", "name": "net1"}]}}
        ]}"#,
    );
    let resolved = dirs
        .registry()
        .resolve(&names(&["vendor.com/nic=vf0"]))
        .expect("resolves");
    assert_eq!(
        resolved.net_devices(),
        vec![("ens1f0v0".to_string(), "net1".to_string())]
    );
}
