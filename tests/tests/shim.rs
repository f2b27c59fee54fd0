//! ingot's shim driven directly over ttrpc: bad input gets the right status code and a message
//! that names the thing, and leaves nothing behind; terminal mode, CloseIO, ResizePty, Update,
//! Stats and Pids behave. Needs root and `busybox-static`, `runc` (for `runc spec`).

use std::{fs, path::Path, time::Duration};

use containerd_shim_protos::{
    api,
    protobuf::well_known_types::any::Any,
    ttrpc::{self, Code},
};
use ingot_tests::{
    cgroups_named, ctx, pids_with_cmdline, remove_cgroup_parent, target_dir, unique, wait_until,
    write_bundle, ShimProcess,
};

struct Fixture {
    shim: ShimProcess,
    parent: String,
    work: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        Self::with(ShimProcess::start().expect("shim"))
    }

    fn with(shim: ShimProcess) -> Self {
        Fixture {
            shim,
            parent: unique("ingot-shimtest"),
            work: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn cgroup(&self, id: &str) -> String {
        format!("/{}/{id}", self.parent)
    }

    /// A bundle for `args` whose stdout and stderr go to `<bundle>/out`.
    fn bundle(
        &self,
        id: &str,
        args: &[&str],
        extra: impl FnOnce(&mut serde_json::Value),
    ) -> std::path::PathBuf {
        let bundle = self.work.path().join(id);
        write_bundle(&bundle, args, &self.cgroup(id), extra).expect("bundle");
        fs::write(bundle.join("out"), b"").expect("out");
        bundle
    }

    fn create(&self, id: &str, bundle: &Path) -> ttrpc::Result<api::CreateTaskResponse> {
        let out = bundle.join("out").display().to_string();
        self.shim.client.create(
            ctx(),
            &api::CreateTaskRequest {
                id: id.into(),
                bundle: bundle.display().to_string(),
                stdout: out.clone(),
                stderr: out,
                ..Default::default()
            },
        )
    }

    fn start(&self, id: &str, exec_id: &str) -> ttrpc::Result<api::StartResponse> {
        self.shim.client.start(
            ctx(),
            &api::StartRequest {
                id: id.into(),
                exec_id: exec_id.into(),
                ..Default::default()
            },
        )
    }

    fn wait(&self, id: &str, exec_id: &str) -> u32 {
        self.shim
            .client
            .wait(
                ctx(),
                &api::WaitRequest {
                    id: id.into(),
                    exec_id: exec_id.into(),
                    ..Default::default()
                },
            )
            .expect("wait")
            .exit_status
    }

    fn kill(&self, id: &str, exec_id: &str, signal: u32) -> ttrpc::Result<api::Empty> {
        self.shim.client.kill(
            ctx(),
            &api::KillRequest {
                id: id.into(),
                exec_id: exec_id.into(),
                signal,
                all: false,
                ..Default::default()
            },
        )
    }

    fn delete(&self, id: &str, exec_id: &str) -> ttrpc::Result<api::DeleteResponse> {
        self.shim.client.delete(
            ctx(),
            &api::DeleteRequest {
                id: id.into(),
                exec_id: exec_id.into(),
                ..Default::default()
            },
        )
    }

    /// Nothing of `id` is left: no cgroup, no libcontainer state, no process.
    fn assert_clean(&self, id: &str) {
        let cgroups = cgroups_named(&format!("{}/{id}", self.parent));
        assert!(cgroups.is_empty(), "{id}: cgroups left {cgroups:?}");
        let state = Path::new("/run/ingot/shim").join(&self.shim.namespace);
        assert!(!state.join(id).exists(), "{id}: libcontainer state left");
        assert!(
            !state.join(format!("{id}.ingot")).exists(),
            "{id}: work dir left"
        );
        let helpers = pids_with_cmdline(&["ingot-shim-helper", id]);
        assert!(helpers.is_empty(), "{id}: helpers left {helpers:?}");
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        remove_cgroup_parent(&self.parent);
    }
}

fn status(result: ttrpc::Result<impl std::fmt::Debug>) -> (Code, String) {
    match result {
        Err(ttrpc::Error::RpcStatus(status)) => (status.code(), status.message().to_string()),
        other => panic!("expected an error status, got {other:?}"),
    }
}

fn out(bundle: &Path) -> String {
    fs::read_to_string(bundle.join("out")).expect("read out")
}

#[test]
fn bad_create_requests_are_refused_with_named_causes() {
    let f = Fixture::new();

    let bundle = f.bundle("norootfs", &["true"], |_| {});
    fs::remove_dir_all(bundle.join("rootfs")).expect("rm rootfs");
    let (code, message) = status(f.create("norootfs", &bundle));
    assert_eq!(code, Code::NOT_FOUND, "{message}");
    assert!(
        message.contains("rootfs") && message.contains("does not exist"),
        "{message}"
    );
    f.assert_clean("norootfs");

    let bundle = f.bundle("malformed", &["true"], |_| {});
    fs::write(bundle.join("config.json"), b"{\"ociVersion\": 1,").expect("write");
    let (code, message) = status(f.create("malformed", &bundle));
    assert_eq!(code, Code::INVALID_ARGUMENT, "{message}");
    assert!(message.contains("config.json"), "{message}");
    f.assert_clean("malformed");

    let bundle = f.bundle("nobinary", &["nope"], |_| {});
    let (code, message) = status(f.create("nobinary", &bundle));
    assert_eq!(code, Code::NOT_FOUND, "{message}");
    assert!(
        message.contains("exec: \"nope\": executable file not found in $PATH"),
        "{message}"
    );
    f.assert_clean("nobinary");

    let bundle = f.bundle("relcgroup", &["true"], |spec| {
        spec["linux"]["cgroupsPath"] = serde_json::json!("ingot/relative");
    });
    let (code, message) = status(f.create("relcgroup", &bundle));
    assert_eq!(code, Code::INVALID_ARGUMENT, "{message}");
    assert!(message.contains("linux.cgroupsPath"), "{message}");

    let bundle = f.bundle("dotdot", &["true"], |spec| {
        spec["linux"]["cgroupsPath"] = serde_json::json!("/ingot/../../escape");
    });
    let (code, message) = status(f.create("dotdot", &bundle));
    assert_eq!(code, Code::INVALID_ARGUMENT, "{message}");
    assert!(message.contains("\"..\""), "{message}");

    let bundle = f.bundle("badid", &["true"], |_| {});
    let (code, message) = status(f.create("../badid", &bundle));
    assert_eq!(code, Code::INVALID_ARGUMENT, "{message}");
    assert!(message.contains("container id"), "{message}");

    let bundle = f.bundle("dup", &["sleep", "100"], |_| {});
    f.create("dup", &bundle).expect("first create");
    let (code, message) = status(f.create("dup", &bundle));
    assert_eq!(code, Code::ALREADY_EXISTS, "{message}");
    assert!(message.contains("dup"), "{message}");
    f.delete("dup", "").expect("delete created");
    f.assert_clean("dup");
}

#[test]
fn hugepage_limits_follow_where_hugetlb_lives() {
    let f = Fixture::new();
    let limits = |limit: u64| {
        move |spec: &mut serde_json::Value| {
            spec["linux"]["resources"]["hugepageLimits"] =
                serde_json::json!([{"pageSize": "2MB", "limit": limit}]);
        }
    };
    // A zero limit is always accepted (with a warning where hugetlb is unreachable).
    let bundle = f.bundle("hugezero", &["true"], limits(0));
    f.create("hugezero", &bundle).expect("zero hugepage limit");
    f.delete("hugezero", "").expect("delete");
    f.assert_clean("hugezero");

    let v1 = Path::new("/sys/fs/cgroup/hugetlb").exists();
    let delegated = fs::read_to_string("/sys/fs/cgroup/unified/cgroup.subtree_control")
        .map(|s| s.contains("hugetlb"))
        .unwrap_or(false);
    let bundle = f.bundle("hugeset", &["true"], limits(4 << 20));
    let result = f.create("hugeset", &bundle);
    if v1 || delegated || Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        result.expect("hugetlb available: the limit is applied");
        f.delete("hugeset", "").expect("delete");
    } else {
        // This host: hugetlb on the hybrid unified hierarchy, not delegated.
        let (code, message) = status(result);
        assert_eq!(code, Code::FAILED_PRECONDITION, "{message}");
        assert!(
            message.contains("hugepageLimits[2MB] = 4194304"),
            "{message}"
        );
        assert!(message.contains("subtree_control"), "{message}");
    }
    f.assert_clean("hugeset");
}

#[test]
fn unknown_ids_and_finished_processes() {
    let f = Fixture::new();
    let (code, message) = status(f.start("ghost", ""));
    assert_eq!(code, Code::NOT_FOUND, "{message}");
    assert!(message.contains("ghost"), "{message}");
    let (code, _) = status(f.kill("ghost", "", 9));
    assert_eq!(code, Code::NOT_FOUND);
    let (code, _) = status(f.delete("ghost", ""));
    assert_eq!(code, Code::NOT_FOUND);

    let bundle = f.bundle("short", &["sh", "-c", "echo done; exit 4"], |_| {});
    f.create("short", &bundle).expect("create");
    f.start("short", "").expect("start");
    assert_eq!(f.wait("short", ""), 4);
    assert_eq!(out(&bundle), "done\n");

    let (code, message) = status(f.kill("short", "", 15));
    assert_eq!(code, Code::NOT_FOUND, "{message}");
    assert!(message.contains("process already finished"), "{message}");
    let (code, message) = status(f.kill("short", "nope", 15));
    assert_eq!(code, Code::NOT_FOUND, "{message}");
    assert!(message.contains("exec \"nope\" not found"), "{message}");

    let bad_exec = f.shim.client.exec(
        ctx(),
        &api::ExecProcessRequest {
            id: "short".into(),
            exec_id: "e1".into(),
            spec: Some(Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
                value: b"{not json".to_vec(),
                ..Default::default()
            })
            .into(),
            ..Default::default()
        },
    );
    let (code, message) = status(bad_exec);
    assert_eq!(code, Code::INVALID_ARGUMENT, "{message}");
    assert!(message.contains("exec process spec"), "{message}");

    let deleted = f.delete("short", "").expect("delete");
    assert_eq!(deleted.exit_status, 4);
    f.assert_clean("short");
}

fn process_any(args: &[&str], terminal: bool) -> Any {
    let process = serde_json::json!({
        "terminal": terminal,
        "user": {"uid": 0, "gid": 0},
        "args": args,
        "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
        "cwd": "/",
    });
    Any {
        type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
        value: serde_json::to_vec(&process).expect("json"),
        ..Default::default()
    }
}

#[test]
fn exec_stdin_close_io_terminal_resize_update_stats() {
    let f = Fixture::new();
    let bundle = f.bundle("box", &["sleep", "1000"], |_| {});
    let created = f.create("box", &bundle).expect("create");
    let started = f.start("box", "").expect("start");
    assert_eq!(created.pid, started.pid);

    // An exec reading stdin from a fifo; CloseIO ends its input.
    let fifo = f.work.path().join("stdin.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let exec_out = f.work.path().join("exec.out");
    fs::write(&exec_out, b"").expect("out");
    f.shim
        .client
        .exec(
            ctx(),
            &api::ExecProcessRequest {
                id: "box".into(),
                exec_id: "cat".into(),
                stdin: fifo.display().to_string(),
                stdout: exec_out.display().to_string(),
                spec: Some(process_any(&["cat"], false)).into(),
                ..Default::default()
            },
        )
        .expect("exec");
    f.start("box", "cat").expect("start exec");
    let mut writer = fs::OpenOptions::new()
        .write(true)
        .open(&fifo)
        .expect("open fifo");
    std::io::Write::write_all(&mut writer, b"through stdin\n").expect("write");
    f.shim
        .client
        .close_io(
            ctx(),
            &api::CloseIORequest {
                id: "box".into(),
                exec_id: "cat".into(),
                stdin: true,
                ..Default::default()
            },
        )
        .expect("close io");
    assert!(
        wait_until(Duration::from_secs(10), || {
            fs::read_to_string(&exec_out).unwrap_or_default() == "through stdin\n"
        }),
        "cat output: {:?}",
        fs::read_to_string(&exec_out)
    );
    assert_eq!(f.wait("box", "cat"), 0);
    drop(writer);
    f.delete("box", "cat").expect("delete exec");
    let (code, _) = status(f.delete("box", "cat"));
    assert_eq!(code, Code::NOT_FOUND);

    // A terminal exec: the pty size set by ResizePty is what the process sees.
    let tty_out = f.work.path().join("tty.out");
    fs::write(&tty_out, b"").expect("out");
    f.shim
        .client
        .exec(
            ctx(),
            &api::ExecProcessRequest {
                id: "box".into(),
                exec_id: "tty".into(),
                terminal: true,
                stdout: tty_out.display().to_string(),
                spec: Some(process_any(
                    &["sh", "-c", "sleep 0.3; stty size; tty"],
                    true,
                ))
                .into(),
                ..Default::default()
            },
        )
        .expect("exec tty");
    f.start("box", "tty").expect("start tty");
    f.shim
        .client
        .resize_pty(
            ctx(),
            &api::ResizePtyRequest {
                id: "box".into(),
                exec_id: "tty".into(),
                width: 91,
                height: 27,
                ..Default::default()
            },
        )
        .expect("resize");
    assert_eq!(f.wait("box", "tty"), 0);
    assert!(
        wait_until(Duration::from_secs(10), || {
            fs::read_to_string(&tty_out)
                .unwrap_or_default()
                .contains("/dev/pts/")
        }),
        "tty output: {:?}",
        fs::read_to_string(&tty_out)
    );
    let text = fs::read_to_string(&tty_out).expect("tty out");
    assert!(text.starts_with("27 91\r\n"), "{text:?}");
    f.delete("box", "tty").expect("delete tty");

    // Update: a new memory limit lands in the container's cgroup.
    let resources = serde_json::json!({"memory": {"limit": 96 * 1024 * 1024}});
    f.shim
        .client
        .update(
            ctx(),
            &api::UpdateTaskRequest {
                id: "box".into(),
                resources: Some(Any {
                    type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources"
                        .into(),
                    value: serde_json::to_vec(&resources).expect("json"),
                    ..Default::default()
                })
                .into(),
                ..Default::default()
            },
        )
        .expect("update");
    let limit = fs::read_to_string(format!(
        "/sys/fs/cgroup/memory{}/memory.limit_in_bytes",
        f.cgroup("box")
    ))
    .expect("limit");
    assert_eq!(limit.trim(), (96 * 1024 * 1024).to_string());

    let stats = f
        .shim
        .client
        .stats(
            ctx(),
            &api::StatsRequest {
                id: "box".into(),
                ..Default::default()
            },
        )
        .expect("stats");
    assert_eq!(stats.stats.type_url, "io.containerd.cgroups.v1.Metrics");
    assert!(!stats.stats.value.is_empty());

    let pids = f
        .shim
        .client
        .pids(
            ctx(),
            &api::PidsRequest {
                id: "box".into(),
                ..Default::default()
            },
        )
        .expect("pids");
    let listed: Vec<u32> = pids.processes.iter().map(|p| p.pid).collect();
    assert_eq!(listed, vec![started.pid]);

    let (code, message) = status(f.delete("box", ""));
    assert_eq!(code, Code::FAILED_PRECONDITION, "{message}");
    f.kill("box", "", 9).expect("kill");
    assert_eq!(f.wait("box", ""), 137);
    f.delete("box", "").expect("delete");
    f.assert_clean("box");

    // With its last container gone, Shutdown ends the shim.
    f.shim
        .client
        .shutdown(ctx(), &api::ShutdownRequest::default())
        .expect("shutdown");
    let pid = f.shim.pid();
    assert!(wait_until(Duration::from_secs(5), || {
        !Path::new(&format!("/proc/{pid}/cmdline")).exists()
            || fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.contains(") Z "))
                .unwrap_or(true)
    }));
}

/// What containerd does to start a task's shim: `containerd-shim-ingot-v2 ... start` in the
/// bundle, reading the address from stdout.
fn shim_start(namespace: &str, id: &str, bundle: &Path) -> String {
    let output = std::process::Command::new(
        ingot_tests::target_dir()
            .expect("target")
            .join(ingot_tests::SHIM_BINARY),
    )
    .args([
        "-namespace",
        namespace,
        "-id",
        id,
        "-address",
        "/run/ingot-test/none.sock",
        "start",
    ])
    .current_dir(bundle)
    .env("TTRPC_ADDRESS", "/run/ingot-test/none.sock.ttrpc")
    .output()
    .expect("shim start");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let address = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(
        fs::read_to_string(bundle.join("address")).expect("address file"),
        address
    );
    address
}

#[test]
fn one_shim_per_pod() {
    let work = tempfile::tempdir().expect("tempdir");
    let namespace = unique("ingot-pods");
    let bundle = |name: &str, sandbox: &str| {
        let dir = work.path().join(name);
        fs::create_dir_all(&dir).expect("mkdir");
        let spec = serde_json::json!({
            "ociVersion": "1.0.2",
            "annotations": {"io.kubernetes.cri.sandbox-id": sandbox}
        });
        fs::write(dir.join("config.json"), spec.to_string()).expect("config");
        dir
    };
    let first = shim_start(&namespace, "c1", &bundle("c1", "pod-a"));
    let second = shim_start(&namespace, "c2", &bundle("c2", "pod-a"));
    let other = shim_start(&namespace, "c3", &bundle("c3", "pod-b"));
    assert_eq!(first, second, "containers of one pod share a shim");
    assert_ne!(first, other, "another pod gets its own shim");
    let shims = ingot_tests::outermost(pids_with_cmdline(&[ingot_tests::SHIM_BINARY, &namespace]));
    assert_eq!(shims.len(), 2, "{shims:?}");

    // Each shim exits on Shutdown when it has no containers.
    for address in [&first, &other] {
        let client = containerd_shim_protos::Client::connect(address).expect("connect");
        containerd_shim_protos::TaskClient::new(client)
            .shutdown(ctx(), &api::ShutdownRequest::default())
            .expect("shutdown");
    }
    assert!(
        wait_until(Duration::from_secs(5), || pids_with_cmdline(&[
            ingot_tests::SHIM_BINARY,
            &namespace
        ])
        .is_empty()),
        "shims still run"
    );
    assert!(
        !Path::new(first.trim_start_matches("unix://")).exists(),
        "socket left"
    );
    ingot_tests::remove_shim_namespace(&namespace);
}

/// The CPUs every thread of `pid` may run on, one list per thread.
fn allowed_cpus(pid: u32) -> Vec<String> {
    let mut lists = Vec::new();
    for task in fs::read_dir(format!("/proc/{pid}/task"))
        .expect("tasks")
        .flatten()
    {
        let status = fs::read_to_string(task.path().join("status")).unwrap_or_default();
        if let Some(list) = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        {
            lists.push(list.trim().to_string());
        }
    }
    lists
}

/// Pins every thread of `pid` to `cpu`, as ingotd pins its shims to the housekeeping CPUs.
fn pin(pid: u32, cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).expect("cpu");
    for task in fs::read_dir(format!("/proc/{pid}/task"))
        .expect("tasks")
        .flatten()
    {
        let tid: i32 = task.file_name().to_string_lossy().parse().expect("tid");
        // A thread that ended since the listing needs no pin.
        match nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(tid), &set) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(err) => panic!("pin thread {tid} of {pid}: {err}"),
        }
    }
}

#[test]
fn execs_run_in_the_containers_cgroup_and_cpuset_by_either_path() {
    let online = fs::read_to_string("/sys/devices/system/cpu/online").expect("online");
    let online = online.trim();
    assert_ne!(online, "0", "this test needs more than one CPU");
    let f = Fixture::new();
    // The shim runs on CPU 0 only; its containers and their execs must not inherit that.
    pin(f.shim.pid(), 0);
    let bundle = f.bundle("box", &["sleep", "1000"], |_| {});
    let created = f.create("box", &bundle).expect("create");
    f.start("box", "").expect("start");
    assert!(
        allowed_cpus(created.pid).iter().all(|list| list == online),
        "the container's init: {:?}, online {online}",
        allowed_cpus(created.pid)
    );
    let script =
        "grep Cpus_allowed_list /proc/self/status; grep cpuset /proc/self/cgroup; ulimit -n";
    let plain = process_any(&["sh", "-c", script], false);
    // A field the fast path does not apply: the runtime helper runs this one.
    let mut limited: serde_json::Value = serde_json::from_slice(&plain.value).expect("json");
    limited["rlimits"] = serde_json::json!([{"type": "RLIMIT_NOFILE", "hard": 77, "soft": 77}]);
    let limited = Any {
        value: serde_json::to_vec(&limited).expect("json"),
        ..plain.clone()
    };
    for (exec_id, process) in [("fast", plain), ("helper", limited)] {
        let out = f.work.path().join(format!("{exec_id}.out"));
        fs::write(&out, b"").expect("out");
        f.shim
            .client
            .exec(
                ctx(),
                &api::ExecProcessRequest {
                    id: "box".into(),
                    exec_id: exec_id.into(),
                    stdout: out.display().to_string(),
                    spec: Some(process).into(),
                    ..Default::default()
                },
            )
            .expect("exec");
        f.start("box", exec_id).expect("start exec");
        assert_eq!(f.wait("box", exec_id), 0, "{exec_id}");
        let text = fs::read_to_string(&out).expect("exec output");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines
                .first()
                .map(|l| l.split(':').nth(1).unwrap_or("").trim()),
            Some(online),
            "{exec_id}: the container's CPUs, not the shim's: {text}"
        );
        assert!(
            lines.get(1).is_some_and(|l| l.ends_with(&f.cgroup("box"))),
            "{exec_id}: the container's cpuset cgroup: {text}"
        );
        if exec_id == "helper" {
            assert_eq!(lines.get(2).copied(), Some("77"), "rlimits applied: {text}");
        }
        let log = f.shim.log();
        assert!(
            log.lines().any(|line| line.contains("exec started")
                && line.contains(&format!("exec_id=\"{exec_id}\""))
                && line.contains(&format!("path=\"{exec_id}\""))),
            "the {exec_id} path ran:\n{log}"
        );
        f.delete("box", exec_id).expect("delete exec");
    }
    f.kill("box", "", 9).expect("kill");
    f.wait("box", "");
    f.delete("box", "").expect("delete");
    f.assert_clean("box");
}

/// The first helper request of a shim (its pod's first container) goes to the helper forked at
/// the shim's start, not to the helper binary; later ones run the binary. The binary beside the
/// shim here is a wrapper that records each run.
#[test]
fn the_first_create_runs_in_the_spare_helper() {
    let bin = tempfile::tempdir().expect("tempdir");
    let built = target_dir().expect("target dir");
    let shim_binary = bin.path().join(ingot_tests::SHIM_BINARY);
    fs::copy(built.join(ingot_tests::SHIM_BINARY), &shim_binary).expect("copy shim");
    let runs = bin.path().join("helper-runs");
    let wrapper = bin.path().join("ingot-shim-helper");
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho run >> {}\nexec {} \"$@\"\n",
            runs.display(),
            built.join("ingot-shim-helper").display()
        ),
    )
    .expect("wrapper");
    fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let helper_runs = || {
        fs::read_to_string(&runs)
            .unwrap_or_default()
            .lines()
            .count()
    };
    let f = Fixture::with(ShimProcess::start_binary(&shim_binary).expect("shim"));

    let first = f.bundle("first", &["sh", "-c", "echo first"], |_| {});
    f.create("first", &first).expect("create first");
    assert_eq!(helper_runs(), 0, "the first create ran the helper binary");
    f.start("first", "").expect("start first");
    assert_eq!(f.wait("first", ""), 0);
    assert_eq!(
        fs::read_to_string(first.join("out")).expect("out").trim(),
        "first"
    );

    let second = f.bundle("second", &["true"], |_| {});
    f.create("second", &second).expect("create second");
    assert_eq!(helper_runs(), 1, "the second create runs the helper binary");
    f.start("second", "").expect("start second");
    assert_eq!(f.wait("second", ""), 0);
    for id in ["first", "second"] {
        f.delete(id, "").expect("delete");
        f.assert_clean(id);
    }
}

#[test]
fn mount_points_are_made_inside_the_rootfs_whatever_exists() {
    let f = Fixture::new();
    let outside = tempfile::tempdir().expect("tempdir");
    let host_file = f.work.path().join("host-file");
    fs::write(&host_file, "from the host\n").expect("host file");
    let bundle = f.bundle(
        "mounts",
        &[
            "sh",
            "-c",
            "cut -d' ' -f5 /proc/self/mountinfo; cat /etc/from-host; ls -d /deep/new/dir /fresh",
        ],
        |spec| {
            let mounts = spec["mounts"].as_array_mut().expect("mounts");
            let tmpfs = |destination: &str| {
                serde_json::json!({"destination": destination, "type": "tmpfs", "source": "tmpfs",
                    "options": ["nosuid", "nodev"]})
            };
            // A missing last component, a missing chain, a path through a symlink that points
            // out of the rootfs, and a file bind whose target does not exist.
            mounts.push(tmpfs("/fresh"));
            mounts.push(tmpfs("/deep/new/dir"));
            mounts.push(tmpfs("/escape/inner"));
            mounts.push(
                serde_json::json!({"destination": "/etc/from-host", "type": "bind",
                "source": host_file.display().to_string(), "options": ["rbind", "ro"]}),
            );
        },
    );
    // An absolute symlink is resolved inside the rootfs, never on the host: its target exists
    // in both, and the mount point must be made in the rootfs' one.
    let inside = bundle
        .join("rootfs")
        .join(outside.path().strip_prefix("/").expect("absolute"));
    fs::create_dir_all(&inside).expect("target in the rootfs");
    std::os::unix::fs::symlink(outside.path(), bundle.join("rootfs/escape")).expect("symlink");
    f.create("mounts", &bundle).expect("create");
    f.start("mounts", "").expect("start");
    assert_eq!(f.wait("mounts", ""), 0, "{}", out(&bundle));
    let text = out(&bundle);
    let mount_points: Vec<&str> = text.lines().collect();
    for expected in ["/fresh", "/deep/new/dir", "/etc/from-host"] {
        assert!(
            mount_points.contains(&expected),
            "{expected} not mounted: {text}"
        );
    }
    let through_link = format!("{}/inner", outside.path().display());
    assert!(
        mount_points.contains(&through_link.as_str()),
        "{through_link} not mounted inside: {text}"
    );
    assert!(text.contains("from the host"), "{text}");
    assert!(
        !outside.path().join("inner").exists(),
        "a mount point was made on the host through the symlink"
    );
    assert!(
        inside.join("inner").is_dir(),
        "the mount point is not in the rootfs"
    );
    f.delete("mounts", "").expect("delete");
    f.assert_clean("mounts");
}
