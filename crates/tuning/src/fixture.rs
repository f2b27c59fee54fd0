//! A host tree built like a real 4-CPU node's (two cores of two threads), in a temp dir.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use crate::Host;

/// The irqbalance file as distributions ship it: comments, a commented-out ban, an empty one.
pub const IRQBALANCE: &str = "\
# irqbalance is a daemon process that distributes interrupts across
# CPUs on SMP systems.
#
#IRQBALANCE_ONESHOT=
# IRQBALANCE_BANNED_CPUS
#    64 bit bitmask which allows you to indicate which CPUs should
#    be skipped when reblancing IRQs.
#IRQBALANCE_BANNED_CPUS=ffff
IRQBALANCE_BANNED_CPUS=
#IRQBALANCE_ARGS=
";

pub struct Fixture {
    pub dir: tempfile::TempDir,
}

impl Fixture {
    pub fn new() -> Fixture {
        let fixture = Fixture {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        fixture.write("proc/irq/default_smp_affinity", "f\n");
        for irq in [0, 1, 24, 25] {
            fixture.write(&format!("proc/irq/{irq}/smp_affinity_list"), "0-3\n");
            fixture.write(&format!("proc/irq/{irq}/smp_affinity"), "f\n");
        }
        fixture.write("proc/sys/kernel/random/boot_id", "boot-1\n");
        fixture.write("sys/devices/system/cpu/possible", "0-3\n");
        fixture.write("sys/devices/system/cpu/online", "0-3\n");
        fixture.write("sys/devices/system/cpu/isolated", "\n");
        for cpu in 0..4 {
            let base = format!("sys/devices/system/cpu/cpu{cpu}");
            fixture.write(&format!("{base}/cpufreq/scaling_governor"), "schedutil\n");
            fixture.write(
                &format!("{base}/cpufreq/scaling_available_governors"),
                "performance schedutil powersave\n",
            );
            fixture.write(&format!("{base}/power/pm_qos_resume_latency_us"), "0\n");
            let siblings = if cpu < 2 { "0-1" } else { "2-3" };
            fixture.write(
                &format!("{base}/topology/thread_siblings_list"),
                &format!("{siblings}\n"),
            );
        }
        fixture.write("etc/sysconfig/irqbalance", IRQBALANCE);
        fixture
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn host(&self) -> Host {
        Host::new(self.root())
    }

    pub fn write(&self, relative: &str, text: &str) {
        let path = self.root().join(relative);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }

    pub fn remove(&self, relative: &str) {
        std::fs::remove_file(self.root().join(relative)).expect("remove");
    }

    /// Every file and its exact content.
    pub fn files(&self) -> BTreeMap<PathBuf, String> {
        fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<PathBuf, String>) {
            for entry in std::fs::read_dir(dir).expect("read_dir") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    walk(&path, root, out);
                } else {
                    let text = std::fs::read_to_string(&path).expect("read");
                    out.insert(path.strip_prefix(root).expect("under").to_path_buf(), text);
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(self.root(), self.root(), &mut out);
        out
    }

    /// One file's content, without the trailing newline.
    pub fn read(&self, relative: &str) -> String {
        std::fs::read_to_string(self.root().join(relative))
            .expect("read")
            .trim_end()
            .to_string()
    }
}
