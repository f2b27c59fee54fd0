use std::os::unix::fs::symlink;

use oci_spec::runtime::{LinuxHugepageLimitBuilder, LinuxResourcesBuilder, Spec};

use super::*;

fn bundle_with_busybox() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = dir.path().join("rootfs/bin");
    fs::create_dir_all(&bin).expect("mkdir");
    fs::write(bin.join("busybox"), b"").expect("write");
    symlink("/bin/busybox", bin.join("sh")).expect("symlink");
    dir
}

fn spec(args: &[&str]) -> Spec {
    let mut spec = Spec::default();
    let mut process = spec.process().clone().expect("default process");
    process.set_args(Some(args.iter().map(|s| s.to_string()).collect()));
    spec.set_process(Some(process));
    spec
}

fn host() -> HostFacts {
    HostFacts {
        min_oom_score_adj: 0,
        hugetlb: HugetlbSupport::V1,
    }
}

fn with_cgroups_path(mut spec: Spec, path: &str) -> Spec {
    let mut linux = spec.linux().clone().expect("default linux");
    linux.set_cgroups_path(Some(PathBuf::from(path)));
    spec.set_linux(Some(linux));
    spec
}

fn with_hugepages(mut spec: Spec, limit: i64) -> Spec {
    let mut linux = spec.linux().clone().expect("default linux");
    let resources = LinuxResourcesBuilder::default()
        .hugepage_limits(vec![LinuxHugepageLimitBuilder::default()
            .page_size("2MB")
            .limit(limit)
            .build()
            .expect("limit")])
        .build()
        .expect("resources");
    linux.set_resources(Some(resources));
    spec.set_linux(Some(linux));
    spec
}

#[test]
fn cgroups_path_must_be_absolute_without_parent_dirs() {
    assert!(validate_cgroups_path("/ingot/pod/c1").is_ok());
    for bad in [
        "ingot/c1",
        "../c1",
        "/ingot/../../c1",
        "/",
        "system.slice:ingot:c1",
    ] {
        let err = validate_cgroups_path(bad).expect_err(bad).to_string();
        assert!(err.contains("linux.cgroupsPath"), "{bad}: {err}");
    }
}

#[test]
fn prepare_makes_rootfs_absolute_and_defaults_cgroup_path() {
    let bundle = bundle_with_busybox();
    let prepared = prepare(spec(&["sh"]), "c1", bundle.path(), &host()).expect("prepare");
    assert_eq!(prepared.rootfs, bundle.path().join("rootfs"));
    assert_eq!(
        prepared.spec.root().as_ref().expect("root").path(),
        &bundle.path().join("rootfs")
    );
    assert_eq!(prepared.cgroups_path, PathBuf::from("/ingot/c1"));
    assert_eq!(prepared.warnings.len(), 1, "{:?}", prepared.warnings);
}

#[test]
fn relative_cgroup_path_is_refused() {
    let bundle = bundle_with_busybox();
    let err = prepare(
        with_cgroups_path(spec(&["sh"]), "default/c1"),
        "c1",
        bundle.path(),
        &host(),
    )
    .expect_err("relative");
    assert!(err.to_string().contains("is relative"), "{err}");
}

#[test]
fn missing_rootfs_is_named() {
    let bundle = tempfile::tempdir().expect("tempdir");
    let err = prepare(spec(&["sh"]), "c1", bundle.path(), &host()).expect_err("no rootfs");
    assert!(matches!(err, OciError::RootfsMissing { .. }));
    assert!(err.to_string().contains("rootfs"), "{err}");
}

#[test]
fn missing_binary_reads_like_runc() {
    let bundle = bundle_with_busybox();
    let err = prepare(spec(&["nope"]), "c1", bundle.path(), &host()).expect_err("no binary");
    assert_eq!(
        err.to_string(),
        "exec: \"nope\": executable file not found in $PATH"
    );
    // An absolute path and a PATH lookup both find links without following them.
    assert!(prepare(spec(&["/bin/sh"]), "c1", bundle.path(), &host()).is_ok());
    let err = prepare(spec(&["/bin/nope"]), "c1", bundle.path(), &host()).expect_err("abs");
    assert!(err.to_string().contains("/bin/nope"), "{err}");
}

#[test]
fn empty_args_are_refused() {
    let bundle = bundle_with_busybox();
    let err = prepare(spec(&[]), "c1", bundle.path(), &host()).expect_err("no args");
    assert!(err.to_string().contains("process.args"), "{err}");
}

#[test]
fn oom_score_adj_is_clamped_to_the_floor() {
    assert_eq!(clamp_oom_score_adj(-999, 0), 0);
    assert_eq!(clamp_oom_score_adj(-999, -1000), -999);
    assert_eq!(clamp_oom_score_adj(500, 0), 500);
    assert_eq!(clamp_oom_score_adj(2000, 0), 1000);

    let bundle = bundle_with_busybox();
    let mut s = spec(&["sh"]);
    let mut process = s.process().clone().expect("process");
    process.set_oom_score_adj(Some(-998));
    s.set_process(Some(process));
    let prepared = prepare(s, "c1", bundle.path(), &host()).expect("prepare");
    let process = prepared.spec.process().as_ref().expect("process");
    assert_eq!(process.oom_score_adj(), Some(0));
    assert!(prepared
        .warnings
        .iter()
        .any(|w| w.contains("oomScoreAdj -998")));
}

#[test]
fn hugetlb_unavailable_accepts_zero_refuses_nonzero() {
    let bundle = bundle_with_busybox();
    let unavailable = HostFacts {
        min_oom_score_adj: 0,
        hugetlb: HugetlbSupport::Unavailable {
            reason: "not delegated".into(),
        },
    };
    let prepared = prepare(
        with_hugepages(spec(&["sh"]), 0),
        "c1",
        bundle.path(),
        &unavailable,
    )
    .expect("zero");
    let resources = prepared
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().clone());
    assert!(resources.expect("resources").hugepage_limits().is_none());
    assert!(prepared.warnings.iter().any(|w| w.contains("2MB")));

    let err = prepare(
        with_hugepages(spec(&["sh"]), 4 << 20),
        "c1",
        bundle.path(),
        &unavailable,
    )
    .expect_err("non-zero");
    let text = err.to_string();
    assert!(text.contains("hugepageLimits[2MB] = 4194304"), "{text}");
    assert!(text.contains("not delegated"), "{text}");
}

#[test]
fn hugetlb_beside_v1_moves_limits_out_of_the_spec() {
    let bundle = bundle_with_busybox();
    let beside = HostFacts {
        min_oom_score_adj: 0,
        hugetlb: HugetlbSupport::UnifiedBeside,
    };
    let prepared = prepare(
        with_hugepages(spec(&["sh"]), 4 << 20),
        "c1",
        bundle.path(),
        &beside,
    )
    .expect("beside");
    assert_eq!(prepared.unified_hugetlb.get("2MB"), Some(&(4 << 20)));
    let resources = prepared
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().clone());
    assert!(resources.expect("resources").hugepage_limits().is_none());

    let v1 = prepare(
        with_hugepages(spec(&["sh"]), 4 << 20),
        "c1",
        bundle.path(),
        &host(),
    )
    .expect("v1");
    assert!(v1.unified_hugetlb.is_empty());
    let resources = v1.spec.linux().as_ref().and_then(|l| l.resources().clone());
    assert_eq!(
        resources
            .expect("resources")
            .hugepage_limits()
            .as_ref()
            .map(Vec::len),
        Some(1)
    );
}

#[test]
fn malformed_config_names_the_file() {
    let bundle = bundle_with_busybox();
    fs::write(bundle.path().join("config.json"), b"{ not json").expect("write");
    let err = load_spec(bundle.path()).expect_err("malformed");
    let text = err.to_string();
    assert!(text.contains("config.json"), "{text}");
    assert!(matches!(err, OciError::Malformed { .. }));
}
