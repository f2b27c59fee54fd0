//! The test node: what this machine lacks (a PREEMPT_RT kernel, two NUMA nodes, isolated CPUs,
//! hugepages per node, cgroup v2 only), in a VM the test boots with qemu's software emulation
//! (`-accel tcg`: this machine's nested KVM cannot run a stock kernel). Debian's PREEMPT_RT 6.12
//! kernel, unpacked from its .deb by `tests/vm/prepare.sh` (run by `tests/run.sh`), boots with
//! 4 vCPUs over 2 NUMA nodes, `isolcpus=2,3 nohz_full=2,3 rcu_nocbs=2,3` and 2M hugepages, into
//! an initramfs of busybox-static and ingot's own `ingot` binary, which reports the node; the
//! guest prints the report on its serial console and powers off.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where `tests/vm/prepare.sh` puts the kernel, unless `INGOT_VM_KERNEL` names another.
const KERNEL: &str = "/var/cache/ingot-vm/kernel/vmlinuz";
const BEGIN: &str = "INGOT-VM-BEGIN";
const END: &str = "INGOT-VM-END";

const INIT: &str = "#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup
echo INGOT-VM-BEGIN
echo realtime=$(cat /sys/kernel/realtime)
echo controllers=$(cat /sys/fs/cgroup/cgroup.controllers)
/bin/ingot node report --json --allocations /run/none.json > /tmp/report.json
echo rc=$?
cat /tmp/report.json
echo INGOT-VM-END
poweroff -f
";

/// The shared libraries `binary` loads, as ldd lists them.
fn libraries(binary: &Path) -> Vec<PathBuf> {
    let output = Command::new("ldd").arg(binary).output().expect("ldd");
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .filter(|word| word.starts_with('/'))
        .map(PathBuf::from)
        .collect()
}

/// What goes into an initramfs besides busybox and the init.
#[derive(Default)]
struct Guest<'a> {
    /// Binaries put in `/bin` with the libraries they load; ingot's own are stripped of their
    /// debug info first (a debug build's is hundreds of MiB).
    binaries: Vec<PathBuf>,
    /// Files and trees copied to a path inside.
    files: Vec<(PathBuf, &'a str)>,
    /// Files written inside.
    written: Vec<(&'a str, String)>,
}

/// Copies `from` (a file, or a tree) to `to`, following symbolic links (a library's name is
/// often one, and its target would be missing inside).
fn copy_into(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
    let status = Command::new("cp")
        .arg("-aL")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp");
    assert!(status.success(), "cp {} {}", from.display(), to.display());
}

/// An initramfs (gzip'd newc cpio) of busybox with its applets, `guest`'s binaries with their
/// libraries and files, and `init`.
fn initramfs(dir: &Path, init: &str, guest: &Guest) -> PathBuf {
    let root = dir.join("root");
    for sub in [
        "bin", "proc", "sys", "dev", "tmp", "run", "etc", "var/lib", "var/log",
    ] {
        std::fs::create_dir_all(root.join(sub)).expect("mkdir");
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static");
    let applets = Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&applets.stdout).lines() {
        if !applet.is_empty() && applet != "busybox" {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).expect("applet");
        }
    }
    let target = ingot_tests::target_dir().expect("target");
    for binary in &guest.binaries {
        let name = binary.file_name().expect("a file name");
        let inside = root.join("bin").join(name);
        let status = if binary.starts_with(&target) {
            Command::new("objcopy")
                .arg("--strip-debug")
                .arg(binary)
                .arg(&inside)
                .status()
                .expect("objcopy (binutils)")
        } else {
            Command::new("cp")
                .arg(binary)
                .arg(&inside)
                .status()
                .expect("cp")
        };
        assert!(status.success(), "copy {}", binary.display());
        for library in libraries(binary) {
            let inside = root.join(library.strip_prefix("/").expect("absolute"));
            if !inside.exists() {
                copy_into(&library, &inside);
            }
        }
    }
    for (from, to) in &guest.files {
        copy_into(from, &root.join(to));
    }
    for (to, text) in &guest.written {
        let inside = root.join(to);
        std::fs::create_dir_all(inside.parent().expect("parent")).expect("mkdir");
        std::fs::write(inside, text).expect("write");
    }
    let init_file = root.join("init");
    std::fs::write(&init_file, init).expect("init");
    std::fs::set_permissions(
        &init_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let image = dir.join("initrd.gz");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd {} && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1 > {}",
            root.display(),
            image.display()
        ))
        .status()
        .expect("cpio");
    assert!(status.success(), "initramfs");
    image
}

fn kernel_path() -> PathBuf {
    std::env::var_os("INGOT_VM_KERNEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(KERNEL))
}

/// Boots the test node on `initrd` with `memory_mb` split over its two NUMA nodes, and returns
/// what the guest printed on its console between the markers, and the whole console.
fn boot(initrd: &Path, memory_mb: u32) -> (String, String) {
    let kernel = kernel_path();
    assert!(
        kernel.exists(),
        "{}: run tests/vm/prepare.sh (tests/run.sh does) for the test node's kernel",
        kernel.display()
    );
    let half = memory_mb / 2;
    let output = Command::new("timeout")
        .arg("600")
        .arg("qemu-system-x86_64")
        .args(["-accel", "tcg", "-m", &memory_mb.to_string(), "-smp", "4"])
        .args(["-object", &format!("memory-backend-ram,size={half}M,id=m0")])
        .args(["-object", &format!("memory-backend-ram,size={half}M,id=m1")])
        .args(["-numa", "node,nodeid=0,cpus=0-1,memdev=m0"])
        .args(["-numa", "node,nodeid=1,cpus=2-3,memdev=m1"])
        .arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(initrd)
        .args([
            "-append",
            "console=ttyS0 quiet panic=-1 isolcpus=2,3 nohz_full=2,3 rcu_nocbs=2,3 \
             hugepagesz=2M hugepages=64 cgroup_no_v1=all",
        ])
        .args([
            "-nographic",
            "-no-reboot",
            "-nodefaults",
            "-serial",
            "stdio",
        ])
        .output()
        .expect("qemu-system-x86_64 (tests/vm/prepare.sh installs it)");
    let console = String::from_utf8_lossy(&output.stdout).replace('\r', "");
    let (Some(begin), Some(end)) = (console.find(BEGIN), console.find(END)) else {
        panic!(
            "the guest did not report ({}):\n{console}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    };
    (console[begin + BEGIN.len()..end].to_string(), console)
}

#[test]
fn a_preempt_rt_node_with_two_numa_nodes_passes_the_checks_rt_pods_need() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ingot = ingot_tests::target_dir().expect("target").join("ingot");
    let guest = Guest {
        binaries: vec![ingot],
        ..Default::default()
    };
    let (said, _) = boot(&initramfs(dir.path(), INIT, &guest), 1024);
    assert!(said.contains("realtime=1\n"), "a PREEMPT_RT kernel: {said}");
    // cgroup v2 with its CPU controllers (v1 is off: `cgroup_no_v1=all`).
    let controllers = said
        .lines()
        .find_map(|l| l.strip_prefix("controllers="))
        .unwrap_or_default();
    for controller in ["cpuset", "cpu", "memory", "hugetlb"] {
        assert!(
            controllers.split_whitespace().any(|c| c == controller),
            "cgroup v2 {controller}: {said}"
        );
    }
    assert!(said.contains("rc=0\n"), "ingot node report: {said}");
    let json = &said[said.find('{').expect("the report")..];
    let report: serde_json::Value = serde_json::from_str(json.trim()).expect("report JSON");

    let summary = &report["summary"];
    assert_eq!(summary["numa_nodes"], 2, "{summary}");
    assert_eq!(summary["threads"], 4, "{summary}");
    assert_eq!(summary["isolated"], "2-3", "{summary}");
    assert_eq!(summary["nohz_full"], "2-3", "{summary}");
    for (id, cpus) in [(0, "0-1"), (1, "2-3")] {
        let node = &report["topology"]["numa_nodes"][id];
        assert_eq!(node["cpus"], cpus, "{node}");
        let two_mb = node["hugepages"]
            .as_array()
            .and_then(|sizes| sizes.iter().find(|h| h["size_kb"] == 2048))
            .unwrap_or_else(|| panic!("2M hugepages on node {id}: {node}"));
        assert_eq!(two_mb["total"], 32, "half of the 64 on each node: {node}");
    }

    // What RT pods need passes here, where this machine fails it.
    let checks = report["readiness"]["checks"].as_array().expect("checks");
    for required in ingot_rt::REQUIRED_FOR_RT_PODS {
        let check = checks
            .iter()
            .find(|c| c["id"] == *required)
            .unwrap_or_else(|| panic!("check {required} in {checks:?}"));
        assert_eq!(check["status"], "pass", "{check}");
    }
    let hugepages = checks
        .iter()
        .find(|c| c["id"] == "hugepages_reserved")
        .expect("hugepages check");
    assert_eq!(hugepages["status"], "pass", "{hugepages}");
}

/// ingotd's configuration in the guest: a high-performance handler with CRI-O's annotations
/// and a real-time one, tuning the guest's own /proc and /sys.
const GUEST_CONFIG: &str = r#"listen = "unix:///run/ingot/ingot.sock"
root = "/var/lib/ingot"
state = "/run/ingot"
cgroup_parent = "/ingot-vm"
tuning_root = "/"
metrics_address = ""

[runtimes.performance]
high_performance = true
exec_cpu_affinity = "first"
allowed_annotations = ["cpu-load-balancing.crio.io", "cpu-quota.crio.io",
  "irq-load-balancing.crio.io"]

[runtimes.rt]
realtime = true
"#;

const IMAGE: &str = "vm/busybox:1";

/// The kernel's module `name` (under `kernel/` of its modules), unpacked from the .deb beside
/// the kernel and decompressed (busybox's insmod takes plain ELF) into `dir`.
fn kernel_module(dir: &Path, name: &str) -> PathBuf {
    let kernel = std::fs::canonicalize(kernel_path()).expect("the kernel");
    let modules = kernel.parent().expect("its package").join("lib/modules");
    let version = std::fs::read_dir(&modules)
        .expect("the kernel's modules")
        .flatten()
        .next()
        .expect("one module tree")
        .path();
    let packed = version.join("kernel").join(format!("{name}.xz"));
    let out = dir.join(Path::new(name).file_name().expect("a file name"));
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("xz -dc {} > {}", packed.display(), out.display()))
        .status()
        .expect("xz");
    assert!(status.success(), "xz -dc {}", packed.display());
    out
}

/// The test image: busybox with cyclictest (Debian's rt-tests) and the libraries it loads.
fn test_image(dir: &Path) -> PathBuf {
    let rootfs = dir.join("image");
    ingot_tests::busybox_rootfs(&rootfs).expect("busybox rootfs");
    let cyclictest = PathBuf::from("/usr/bin/cyclictest");
    assert!(cyclictest.exists(), "cyclictest (package rt-tests)");
    copy_into(&cyclictest, &rootfs.join("usr/bin/cyclictest"));
    for library in libraries(&cyclictest) {
        copy_into(
            &library,
            &rootfs.join(library.strip_prefix("/").expect("absolute")),
        );
    }
    let archive = dir.join("image.tar");
    ingot_tests::oci_archive(&rootfs, &archive, IMAGE, &["sh"]).expect("image archive");
    archive
}

/// The pod and container configurations crictl sends, as a kubelet would for Guaranteed
/// containers of one whole CPU under the static CPU manager (`cpuset_cpus`).
fn pod_files(registry: &str) -> Vec<(&'static str, String)> {
    let pod = |name: &str, annotations: serde_json::Value| {
        serde_json::json!({
            "metadata": {"name": name, "namespace": "vm", "uid": format!("{name}-uid")},
            "annotations": annotations,
            "log_directory": format!("/var/log/pods/{name}"),
            "linux": {
                "cgroup_parent": format!("/ingot-vm/{name}"),
                "security_context": {"namespace_options": {"network": 2}},
            },
        })
        .to_string()
    };
    let container = |cpu: &str, command: serde_json::Value| {
        serde_json::json!({
            "metadata": {"name": "app"},
            "image": {"image": format!("{registry}/{IMAGE}")},
            "command": command,
            "log_path": "app.log",
            "linux": {"resources": {
                "cpu_period": 100000, "cpu_quota": 100000, "cpu_shares": 1024,
                "cpuset_cpus": cpu,
                "memory_limit_in_bytes": 64 << 20,
                "hugepage_limits": [{"page_size": "2MB", "limit": 4 << 20}],
            }},
        })
        .to_string()
    };
    vec![
        (
            "etc/vm/hp-pod.json",
            pod(
                "hp",
                serde_json::json!({
                    "cpu-load-balancing.crio.io": "disable",
                    "cpu-quota.crio.io": "disable",
                    "irq-load-balancing.crio.io": "disable",
                }),
            ),
        ),
        (
            "etc/vm/hp-ctr.json",
            container("2", serde_json::json!(["sleep", "3600"])),
        ),
        (
            "etc/vm/rt-pod.json",
            pod(
                "rt",
                serde_json::json!({
                    "realtime.ingot.dev/sched-policy": "SCHED_FIFO",
                    "realtime.ingot.dev/sched-priority": "80",
                    "realtime.ingot.dev/rlimit-memlock": "unlimited",
                    "realtime.ingot.dev/rlimit-rtprio": "99",
                }),
            ),
        ),
        (
            "etc/vm/rt-ctr.json",
            container(
                "3",
                serde_json::json!(["sh", "-c",
                    "echo sched=$(cut -d' ' -f40,41 /proc/$$/stat); grep -E '^(Cpus|Mems)_allowed_list' /proc/self/status; \
                     cat /etc/ingot/placement.env; \
                     exec cyclictest -q -m -t 1 -a 3 -p 80 -i 1000 -l 300"]),
            ),
        ),
    ]
}

/// The `key=value` lines the guest printed; a key said twice keeps the last value, except
/// `rt.log`, whose lines are joined.
fn said_values(said: &str) -> std::collections::BTreeMap<String, String> {
    let mut values = std::collections::BTreeMap::<String, String>::new();
    for line in said.lines() {
        if let Some((key, value)) = line.split_once('=') {
            let entry = values.entry(key.to_string()).or_default();
            if key == "rt.log" && !entry.is_empty() {
                entry.push('\n');
                entry.push_str(value);
            } else {
                *entry = value.trim().to_string();
            }
        }
    }
    values
}

#[test]
fn ingotd_runs_high_performance_and_real_time_pods_on_cgroup_v2() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The image, pushed to a registry on the host whose storage the guest's registry serves.
    let registry = ingot_tests::Registry::start().expect("docker-registry");
    registry
        .push_archive(&test_image(dir.path()), IMAGE)
        .expect("push the test image");
    let target = ingot_tests::target_dir().expect("target");
    let mut written = vec![
        ("etc/ingot/ingot.toml", GUEST_CONFIG.to_string()),
        ("etc/crictl.yaml", String::new()),
        (
            "etc/registry.yml",
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: \
             /var/lib/registry\nhttp:\n  addr: 127.0.0.1:5000\n"
                .to_string(),
        ),
    ];
    written.extend(pod_files("127.0.0.1:5000"));
    let guest = Guest {
        binaries: vec![
            target.join("ingotd"),
            target.join("containerd-shim-ingot-v2"),
            target.join("ingot-shim-helper"),
            PathBuf::from("/usr/bin/docker-registry"),
            ingot_tests::crictl(),
        ],
        files: vec![(registry.dir.path().join("data"), "var/lib/registry")],
        written,
    };
    let mut guest = guest;
    guest.files.push((
        kernel_module(dir.path(), "fs/overlayfs/overlay.ko"),
        "lib/modules/overlay.ko",
    ));
    let initrd = initramfs(dir.path(), include_str!("../vm/pods.sh"), &guest);
    let (said, console) = boot(&initrd, 2048);
    let values = said_values(&said);
    let log = console
        .split("INGOT-LOG-BEGIN")
        .nth(1)
        .unwrap_or_default()
        .split("INGOT-LOG-END")
        .next()
        .unwrap_or_default();
    let get = |key: &str| values.get(key).map(String::as_str).unwrap_or("(not said)");
    let context = format!("{said}\ningotd's log:\n{log}");
    for (key, want) in [
        ("ingotd", "up"),
        ("registry", "up"),
        ("pull", "ok"),
        ("hp.start", "ok"),
        ("rt.start", "ok"),
        ("rt.exited", "yes"),
        ("rt.exit_code", "0"),
    ] {
        assert_eq!(get(key), want, "{key}: {context}");
    }
    // The high-performance container: CPU 2 and memory of its NUMA node (1), an isolated
    // partition, no CFS quota on it and its pod, its memory and hugepage limits.
    for (key, want) in [
        ("hp.cpuset.cpus", "2"),
        ("hp.cpuset.cpus.effective", "2"),
        ("hp.cpuset.mems.effective", "1"),
        ("hp.cpuset.cpus.partition", "isolated"),
        ("hp.cpu.max", "max 100000"),
        ("hp.pod.cpu.max", "max 100000"),
        ("hp.memory.max", "67108864"),
        ("hp.hugetlb.2MB.max", "4194304"),
        ("affinity.before", "f"),
        ("hp.affinity", "b"),
        (
            "hp.devices",
            "zero=0 mem=1 head: /tmp/mem: Operation not permitted",
        ),
    ] {
        assert_eq!(get(key), want, "{key}: {context}");
    }
    assert_eq!(
        get("hp.exec"),
        "Cpus_allowed_list: 2 Mems_allowed_list: 1",
        "{context}"
    );
    // The real-time container: SCHED_FIFO 80 from its start, on CPU 3 with node 1's memory,
    // told its CPUs, and cyclictest ran there to the end.
    let rt_log = get("rt.log");
    for want in [
        // /proc/<pid>/stat's rt_priority and policy (1: SCHED_FIFO): busybox has no chrt.
        "sched=80 1",
        "Cpus_allowed_list:\t3",
        "Mems_allowed_list:\t1",
        "INGOT_CPUS=3",
        "C:    300",
    ] {
        assert!(
            rt_log.contains(want),
            "{want:?} in the RT pod's log: {context}"
        );
    }
    // Both pods removed: no cgroup, no CPU held exclusive, no shim, IRQs back.
    for (key, want) in [
        ("after.cgroups", ""),
        ("after.exclusive", ""),
        ("after.affinity", "f"),
        ("after.shims", "0"),
    ] {
        assert_eq!(get(key), want, "{key}: {context}");
    }
    assert!(!values.contains_key("removed"), "{context}");
}
