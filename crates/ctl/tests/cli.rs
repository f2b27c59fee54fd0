//! The built `ingot` binary: its exit codes, where its messages go, the JSON against a fixture
//! tree and a checkpoint file, and a report of this machine's own `/`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use ingot_topology::CpuSet;

fn fixture(name: &str) -> PathBuf {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../topology/tests/fixtures"
    ))
    .join(name)
}

fn ingot(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ingot"))
        .args(args)
        .output()
        .expect("run ingot")
}

fn report(root: &Path, allocations: &Path, json: bool) -> Output {
    let mut args = vec![
        "node".as_ref(),
        "report".as_ref(),
        "--root".as_ref(),
        root.as_os_str(),
        "--allocations".as_ref(),
        allocations.as_os_str(),
    ];
    if json {
        args.push("--json".as_ref());
    }
    ingot(&args)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn json_report_of_a_fixture_and_a_checkpoint() {
    let dir = tempfile::tempdir().expect("temp dir");
    let allocations = dir.path().join("placement.json");
    fs::write(
        &allocations,
        r#"{"version":1,"containers":[
            {"container_id":"c-exclusive","pod_id":"p1","cpus":"6-7,14-15","mems":"1",
             "kind":"exclusive","notes":[]},
            {"container_id":"c-shared","pod_id":"p1","cpus":"0-5,8-13","mems":"",
             "kind":"shared","notes":[]}]}"#,
    )
    .expect("write checkpoint");
    let output = report(&fixture("intel-2s-smt-isolated"), &allocations, true);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(output.stderr.is_empty(), "{}", text(&output.stderr));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(json["summary"]["sockets"], 2);
    assert_eq!(json["summary"]["threads"], 16);
    assert_eq!(json["summary"]["isolated"], "2-7,10-15");
    assert_eq!(json["topology"]["numa_nodes"][1]["cpus"], "4-7,12-15");
    assert_eq!(json["exclusive_cpus"], "6-7,14-15");
    assert_eq!(json["shared_pool"], "0-5,8-13");
    assert_eq!(json["allocations"][0]["container_id"], "c-exclusive");
    assert_eq!(json["allocations"][0]["kind"], "exclusive");
    assert_eq!(json["allocations"][1]["kind"], "shared");
    // The real-time checks of the same tree: isolation from sysfs, not a PREEMPT_RT kernel.
    let checks = json["readiness"]["checks"].as_array().expect("checks");
    let status = |id: &str| {
        checks
            .iter()
            .find(|c| c["id"] == id)
            .map(|c| c["status"].clone())
            .unwrap_or_else(|| panic!("no check {id}"))
    };
    assert_eq!(status("isolcpus"), "pass");
    assert_eq!(status("preempt_rt"), "fail");
    assert_eq!(json["tuning"]["claims"], serde_json::json!([]));
}

#[test]
fn a_missing_allocations_file_is_no_allocations() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("placement.json");
    let output = report(&fixture("vm-2cpu"), &missing, false);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert!(
        stdout.contains("no allocations (ingotd not running or nothing placed)"),
        "{stdout}"
    );
    assert!(stdout.contains("  shared pool     0-1\n"), "{stdout}");

    let output = report(&fixture("vm-2cpu"), &missing, true);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(json["allocations"], serde_json::json!([]));
    assert_eq!(json["exclusive_cpus"], "");
    assert_eq!(json["shared_pool"], "0-1");
}

#[test]
fn a_malformed_allocations_file_fails_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let allocations = dir.path().join("placement.json");
    for bad in ["{not json", r#"{"version":7,"containers":[]}"#] {
        fs::write(&allocations, bad).expect("write");
        let output = report(&fixture("vm-2cpu"), &allocations, false);
        assert_eq!(output.status.code(), Some(1), "{bad}");
        assert!(output.stdout.is_empty(), "{bad}");
        let stderr = text(&output.stderr);
        assert!(
            stderr.contains(&allocations.display().to_string()),
            "{bad}: {stderr}"
        );
        assert!(stderr.contains("placement checkpoint"), "{bad}: {stderr}");
    }
}

#[test]
fn a_root_without_a_node_fails_naming_what_is_missing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = report(dir.path(), &dir.path().join("none.json"), false);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("sys/devices/system/cpu/online"), "{stderr}");
    assert!(
        stderr.contains(&dir.path().display().to_string()),
        "{stderr}"
    );
}

#[test]
fn an_unknown_flag_or_command_prints_usage_and_exits_2() {
    for args in [
        &["node", "report", "--colour"][..],
        &["frobnicate"],
        &["node"],
        &[],
    ] {
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|arg| arg.as_ref()).collect();
        let output = ingot(&args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(output.stdout.is_empty(), "{args:?}");
        let stderr = text(&output.stderr);
        assert!(stderr.contains("Usage: ingot"), "{args:?}: {stderr}");
    }
    let output = ingot(&["node".as_ref(), "report".as_ref(), "--colour".as_ref()]);
    assert!(text(&output.stderr).contains("unknown flag \"--colour\""));
}

#[test]
fn help_goes_to_stdout() {
    let output = ingot(&["--help".as_ref()]);
    assert!(output.status.success());
    assert!(text(&output.stdout).contains("node report"));
    let output = ingot(&["node".as_ref(), "report".as_ref(), "--help".as_ref()]);
    assert!(output.status.success());
    let stdout = text(&output.stdout);
    assert!(stdout.starts_with("Usage: ingot node report"), "{stdout}");
    assert!(stdout.contains("--allocations FILE"), "{stdout}");
}

#[test]
fn this_machine() {
    let online = fs::read_to_string("/sys/devices/system/cpu/online").expect("online");
    let online = CpuSet::parse(&online).expect("online list");
    let count = online.len();
    let dir = tempfile::tempdir().expect("temp dir");
    // The default root; allocations from a path known to be absent, so the test does not
    // depend on whether this machine runs ingotd.
    let output = ingot(&[
        "node".as_ref(),
        "report".as_ref(),
        "--allocations".as_ref(),
        dir.path().join("placement.json").as_os_str(),
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    let threads = stdout
        .lines()
        .find_map(|line| line.trim().strip_prefix("threads"))
        .map(str::trim);
    assert_eq!(threads, Some(count.to_string().as_str()), "{stdout}");
    assert!(
        stdout.contains(&format!("online CPUs     {online}\n")),
        "{stdout}"
    );
}
