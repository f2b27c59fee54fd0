//! ingot's shim under a real containerd (Debian's 1.6), driven by `ctr`, as a user would.
//! Needs root, `containerd`, `ctr` and `busybox-static` (installed by `.ci/run`).

use std::time::Duration;

use ingot_tests::{
    cgroups_named, mounts, pids_with_cmdline, wait_until, Containerd, INGOT_RUNTIME, SHIM_BINARY,
    TEST_IMAGE,
};

fn containerd() -> Containerd {
    let ctd = Containerd::start().expect("start containerd");
    ctd.import_test_image().expect("import test image");
    ctd
}

fn run(ctd: &Containerd, id: &str, args: &[&str]) -> std::process::Output {
    let mut full = vec!["run", "--rm", "--runtime", INGOT_RUNTIME, TEST_IMAGE, id];
    full.extend_from_slice(args);
    ctd.ctr_output(&full).expect("ctr run")
}

fn task_status(ctd: &Containerd, id: &str) -> String {
    let out = ctd.ctr_ok(&["tasks", "ls"]).expect("tasks ls");
    out.lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or("")
        .to_string()
}

/// Nothing of container `id` is left: no cgroup, no rootfs mount, no shim.
fn assert_nothing_left(ctd: &Containerd, id: &str) {
    let cgroups = cgroups_named(&format!("{}/{id}", ctd.namespace));
    assert!(cgroups.is_empty(), "cgroups left: {cgroups:?}");
    let left: Vec<_> = mounts().into_iter().filter(|m| m.contains(id)).collect();
    assert!(left.is_empty(), "mounts left: {left:?}");
    assert!(
        wait_until(Duration::from_secs(5), || pids_with_cmdline(&[
            SHIM_BINARY,
            &ctd.namespace,
            id
        ])
        .is_empty()),
        "shim of {id} still runs"
    );
}

#[test]
fn output_and_exit_codes() {
    let ctd = containerd();
    let out = run(&ctd, "echo", &["echo", "hello from ingot"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from ingot\n");

    let out = run(&ctd, "exit3", &["sh", "-c", "echo to-stderr >&2; exit 3"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("to-stderr"));

    // Killed by a signal from outside: ctr run reports 128 + 9, as with runc.
    let mut attached = ctd
        .ctr()
        .args([
            "run",
            "--rm",
            "--runtime",
            INGOT_RUNTIME,
            TEST_IMAGE,
            "killed",
            "sleep",
            "100",
        ])
        .spawn()
        .expect("ctr run");
    assert!(wait_until(Duration::from_secs(10), || task_status(
        &ctd, "killed"
    ) == "RUNNING"));
    ctd.ctr_ok(&["tasks", "kill", "-s", "SIGKILL", "killed"])
        .expect("kill");
    let status = attached.wait().expect("wait ctr");
    assert_eq!(status.code(), Some(137));
    assert_nothing_left(&ctd, "killed");

    assert_nothing_left(&ctd, "echo");
    assert_nothing_left(&ctd, "exit3");
}

#[test]
fn exec_ps_kill_pause_resume_metrics_delete() {
    let ctd = containerd();
    ctd.ctr_ok(&[
        "run",
        "-d",
        "--runtime",
        INGOT_RUNTIME,
        TEST_IMAGE,
        "life",
        "sleep",
        "1000",
    ])
    .expect("run -d");
    assert_eq!(task_status(&ctd, "life"), "RUNNING");

    let out = ctd
        .ctr_ok(&[
            "tasks",
            "exec",
            "--exec-id",
            "e1",
            "life",
            "sh",
            "-c",
            "echo exec-out; id -u",
        ])
        .expect("exec");
    assert_eq!(out, "exec-out\n0\n");
    let out = ctd
        .ctr_output(&[
            "tasks",
            "exec",
            "--exec-id",
            "e2",
            "life",
            "sh",
            "-c",
            "exit 5",
        ])
        .expect("exec");
    assert_eq!(out.status.code(), Some(5));

    let ps = ctd.ctr_ok(&["tasks", "ps", "life"]).expect("ps");
    let pids: Vec<&str> = ps
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(pids.len(), 1, "{ps}");
    let cmdline = std::fs::read_to_string(format!("/proc/{}/cmdline", pids[0])).expect("cmdline");
    assert!(cmdline.starts_with("sleep"), "{cmdline:?}");

    ctd.ctr_ok(&["tasks", "pause", "life"]).expect("pause");
    assert_eq!(task_status(&ctd, "life"), "PAUSED");
    let freezer = format!(
        "/sys/fs/cgroup/freezer/{}/life/freezer.state",
        ctd.namespace
    );
    assert_eq!(
        std::fs::read_to_string(&freezer).expect("freezer").trim(),
        "FROZEN"
    );
    ctd.ctr_ok(&["tasks", "resume", "life"]).expect("resume");
    assert_eq!(task_status(&ctd, "life"), "RUNNING");
    assert_eq!(
        std::fs::read_to_string(&freezer).expect("freezer").trim(),
        "THAWED"
    );

    let metrics = ctd.ctr_ok(&["tasks", "metrics", "life"]).expect("metrics");
    assert!(metrics.contains("memory.usage_in_bytes"), "{metrics}");
    let usage: u64 = metrics
        .lines()
        .find(|l| l.starts_with("memory.usage_in_bytes"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .expect("usage value");
    assert!(usage > 0, "{metrics}");

    ctd.ctr_ok(&["tasks", "kill", "-s", "SIGKILL", "life"])
        .expect("kill");
    assert!(wait_until(Duration::from_secs(10), || task_status(
        &ctd, "life"
    ) == "STOPPED"));
    let out = ctd
        .ctr_output(&["tasks", "kill", "life"])
        .expect("kill again");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("process already finished"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ctd.ctr_ok(&["tasks", "delete", "life"]).expect("delete");
    ctd.ctr_ok(&["containers", "delete", "life"])
        .expect("container delete");
    assert_nothing_left(&ctd, "life");
}

#[test]
fn bad_input_through_containerd() {
    let ctd = containerd();
    let out = run(&ctd, "nobin", &["nope"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("exec: \"nope\": executable file not found in $PATH"),
        "{stderr}"
    );
    let _ = ctd.ctr_output(&["containers", "delete", "nobin"]);
    assert_nothing_left(&ctd, "nobin");

    ctd.ctr_ok(&[
        "run",
        "-d",
        "--runtime",
        INGOT_RUNTIME,
        TEST_IMAGE,
        "dup",
        "sleep",
        "1000",
    ])
    .expect("run -d");
    let out = ctd
        .ctr_output(&[
            "run",
            "-d",
            "--runtime",
            INGOT_RUNTIME,
            TEST_IMAGE,
            "dup",
            "true",
        ])
        .expect("dup");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));

    let out = ctd
        .ctr_output(&["tasks", "kill", "--exec-id", "nope", "dup"])
        .expect("kill unknown exec");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("exec \"nope\" not found"), "{stderr}");
    assert!(stderr.contains("not found"), "{stderr}");
}

#[test]
fn oom_kill_is_published() {
    let ctd = containerd();
    let events = ctd
        .ctr()
        .arg("events")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("ctr events");
    let out = ctd
        .ctr_output(&[
            "run",
            "--rm",
            "--runtime",
            INGOT_RUNTIME,
            "--memory-limit",
            "16777216",
            TEST_IMAGE,
            "hog",
            "tail",
            "/dev/zero",
        ])
        .expect("ctr run");
    assert_eq!(
        out.status.code(),
        Some(137),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Events arrive asynchronously; give the stream a moment, then stop it (our child, by pid).
    std::thread::sleep(Duration::from_millis(500));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(events.id()).expect("pid")),
        nix::sys::signal::Signal::SIGTERM,
    );
    let output = events.wait_with_output().expect("events output");
    let text = String::from_utf8_lossy(&output.stdout);
    let oom = text.lines().find(|l| l.contains("/tasks/oom"));
    assert!(
        oom.is_some_and(|l| l.contains("hog")),
        "no TaskOOM for hog in:\n{text}"
    );
    assert!(text.contains("/tasks/exit"), "{text}");
    assert_nothing_left(&ctd, "hog");
}
