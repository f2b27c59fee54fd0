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

/// An initramfs (gzip'd newc cpio) of busybox, `ingot` with its libraries, and the init above.
fn initramfs(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    for sub in ["bin", "proc", "sys", "dev", "tmp", "run"] {
        std::fs::create_dir_all(root.join(sub)).expect("mkdir");
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static");
    for applet in ["sh", "mount", "mkdir", "cat", "echo", "poweroff"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).expect("applet");
    }
    let ingot = ingot_tests::target_dir().expect("target").join("ingot");
    std::fs::copy(&ingot, root.join("bin/ingot")).expect("the ingot binary");
    for library in libraries(&ingot) {
        let inside = root.join(library.strip_prefix("/").expect("absolute"));
        std::fs::create_dir_all(inside.parent().expect("parent")).expect("mkdir");
        std::fs::copy(&library, &inside).expect("library");
    }
    let init = root.join("init");
    std::fs::write(&init, INIT).expect("init");
    std::fs::set_permissions(&init, std::os::unix::fs::PermissionsExt::from_mode(0o755))
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

#[test]
fn a_preempt_rt_node_with_two_numa_nodes_passes_the_checks_rt_pods_need() {
    let kernel = std::env::var_os("INGOT_VM_KERNEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(KERNEL));
    assert!(
        kernel.exists(),
        "{}: run tests/vm/prepare.sh (tests/run.sh does) for the test node's kernel",
        kernel.display()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let initrd = initramfs(dir.path());
    let output = Command::new("timeout")
        .arg("300")
        .arg("qemu-system-x86_64")
        .args(["-accel", "tcg", "-m", "1024", "-smp", "4"])
        .args(["-object", "memory-backend-ram,size=512M,id=m0"])
        .args(["-object", "memory-backend-ram,size=512M,id=m1"])
        .args(["-numa", "node,nodeid=0,cpus=0-1,memdev=m0"])
        .args(["-numa", "node,nodeid=1,cpus=2-3,memdev=m1"])
        .arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(&initrd)
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
    let said = &console[begin + BEGIN.len()..end];
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
