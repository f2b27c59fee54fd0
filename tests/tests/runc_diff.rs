//! Differential check: the same bundle under `runc run` and under ingot's shim gives the same
//! exit code and the same view from inside: CPU and memory-node masks, uid/gid, capabilities,
//! hostname, cgroup limits and mounts. Needs root, `runc` and `busybox-static`.

use std::{fs, path::Path, process::Command};

use containerd_shim_protos::api;
use ingot_tests::{ctx, remove_cgroup_parent, unique, write_bundle, ShimProcess};

/// Printed by the container; everything here must match between the runtimes.
const PROBE: &str = r#"
grep -E '^(Cpus_allowed_list|Mems_allowed_list|CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp|Uid|Gid|Groups):' /proc/self/status
echo "id: $(id -u) $(id -g) $(id -G)"
echo "hostname: $(hostname)"
echo "memory.limit: $(cat /sys/fs/cgroup/memory/memory.limit_in_bytes)"
echo "cpu.quota: $(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us) $(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us)"
echo "cpu.shares: $(cat /sys/fs/cgroup/cpu/cpu.shares)"
echo "pids.max: $(cat /sys/fs/cgroup/pids/pids.max)"
echo "cpuset: $(cat /sys/fs/cgroup/cpuset/cpuset.cpus) $(cat /sys/fs/cgroup/cpuset/cpuset.mems)"
echo "umask: $(umask)"
echo "cwd: $(pwd)"
echo "env: $(env | sort | tr '\n' ' ')"
# mount point, filesystem type, per-mount options (the source differs by design)
awk '{ split($0, parts, " - "); split(parts[2], fs, " "); print "mount:", $5, fs[1], $6 }' /proc/self/mountinfo
exit 7
"#;

fn spec_for(user: (u32, u32), cgroup: &str) -> impl FnOnce(&mut serde_json::Value) + '_ {
    move |spec| {
        spec["hostname"] = serde_json::json!("diffhost");
        spec["process"]["user"] =
            serde_json::json!({"uid": user.0, "gid": user.1, "additionalGids": [5]});
        spec["process"]["cwd"] = serde_json::json!("/tmp");
        spec["linux"]["cgroupsPath"] = serde_json::json!(cgroup);
        spec["linux"]["resources"] = serde_json::json!({
            "memory": {"limit": 64 * 1024 * 1024},
            "cpu": {"quota": 50000, "period": 100000, "shares": 512, "cpus": "0", "mems": "0"},
            "pids": {"limit": 64},
            "devices": [{"allow": false, "access": "rwm"}]
        });
    }
}

fn run_runc(bundle: &Path, id: &str) -> (i32, String) {
    let state = tempfile::tempdir().expect("tempdir");
    let output = Command::new("runc")
        .arg("--root")
        .arg(state.path())
        .args(["run", "--bundle"])
        .arg(bundle)
        .arg(id)
        .output()
        .expect("runc run");
    let _ = Command::new("runc")
        .arg("--root")
        .arg(state.path())
        .args(["delete", "-f", id])
        .output();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr),
    )
}

fn run_ingot(shim: &ShimProcess, bundle: &Path, id: &str) -> (i32, String) {
    let out = bundle.join("ingot.out");
    fs::write(&out, b"").expect("out");
    let out_path = out.display().to_string();
    shim.client
        .create(
            ctx(),
            &api::CreateTaskRequest {
                id: id.into(),
                bundle: bundle.display().to_string(),
                stdout: out_path.clone(),
                stderr: out_path,
                ..Default::default()
            },
        )
        .expect("create");
    let request = |id: &str| api::StartRequest {
        id: id.into(),
        ..Default::default()
    };
    shim.client.start(ctx(), &request(id)).expect("start");
    let waited = shim
        .client
        .wait(
            ctx(),
            &api::WaitRequest {
                id: id.into(),
                ..Default::default()
            },
        )
        .expect("wait");
    shim.client
        .delete(
            ctx(),
            &api::DeleteRequest {
                id: id.into(),
                ..Default::default()
            },
        )
        .expect("delete");
    (
        i32::try_from(waited.exit_status).unwrap_or(-1),
        fs::read_to_string(&out).expect("read out"),
    )
}

/// Removes the test's cgroup parent even when an assertion fails.
struct CgroupParent(String);

impl Drop for CgroupParent {
    fn drop(&mut self) {
        remove_cgroup_parent(&self.0);
    }
}

/// ingot mounts the spec's read-only /proc paths `ro,nosuid,nodev,noexec`; runc keeps only
/// `ro`. Stricter and harmless on proc (no setuid, device or executable files there), so the
/// comparison reduces those lines to their read-only state.
fn normalize(line: &str) -> String {
    let readonly_proc = [
        "/proc/bus ",
        "/proc/fs ",
        "/proc/irq ",
        "/proc/sys ",
        "/proc/sysrq-trigger ",
    ];
    match line.strip_prefix("mount: ") {
        Some(rest) if readonly_proc.iter().any(|p| rest.starts_with(p)) => {
            let mut fields = rest.split_whitespace();
            let (point, fs, options) = (fields.next(), fields.next(), fields.next());
            let ro = options.unwrap_or_default().split(',').any(|o| o == "ro");
            format!(
                "mount: {} {} {}",
                point.unwrap_or_default(),
                fs.unwrap_or_default(),
                if ro { "ro" } else { "rw" }
            )
        }
        _ => line.to_string(),
    }
}

fn compare(user: (u32, u32)) {
    let parent = unique("ingot-diff");
    let _cleanup = CgroupParent(parent.clone());
    let work = tempfile::tempdir().expect("tempdir");
    let shim = ShimProcess::start().expect("shim");

    let runc_bundle = work.path().join("runc");
    let runc_cgroup = format!("/{parent}/c");
    write_bundle(
        &runc_bundle,
        &["sh", "-c", PROBE],
        &runc_cgroup,
        spec_for(user, &runc_cgroup),
    )
    .expect("bundle");
    let (runc_code, runc_out) = run_runc(&runc_bundle, &format!("{parent}-runc"));
    remove_cgroup_parent(&parent);

    let ingot_bundle = work.path().join("ingot");
    write_bundle(
        &ingot_bundle,
        &["sh", "-c", PROBE],
        &runc_cgroup,
        spec_for(user, &runc_cgroup),
    )
    .expect("bundle");
    let (ingot_code, ingot_out) = run_ingot(&shim, &ingot_bundle, "diff");
    remove_cgroup_parent(&parent);

    assert_eq!(runc_code, 7, "runc run failed:\n{runc_out}");
    assert!(runc_out.contains("hostname: diffhost"), "{runc_out}");
    assert!(runc_out.contains("memory.limit: 67108864"), "{runc_out}");
    assert!(
        runc_out.contains("mount: /sys/fs/cgroup/memory cgroup ro,"),
        "{runc_out}"
    );
    let runc_lines: Vec<String> = runc_out.lines().map(normalize).collect();
    let ingot_lines: Vec<String> = ingot_out.lines().map(normalize).collect();
    let only_runc: Vec<_> = runc_lines
        .iter()
        .filter(|l| !ingot_lines.contains(l))
        .collect();
    let only_ingot: Vec<_> = ingot_lines
        .iter()
        .filter(|l| !runc_lines.contains(l))
        .collect();
    assert!(
        only_runc.is_empty() && only_ingot.is_empty() && runc_lines.len() == ingot_lines.len(),
        "runc and ingot differ for user {user:?}\nonly runc:  {only_runc:#?}\nonly ingot: {only_ingot:#?}"
    );
    assert_eq!(ingot_code, runc_code);
}

#[test]
fn same_view_as_runc_as_root() {
    compare((0, 0));
}

#[test]
fn same_view_as_runc_as_nobody() {
    compare((65534, 65534));
}
