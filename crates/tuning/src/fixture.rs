//! A host tree like a real 4-CPU node's, in a temp dir.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

pub struct Fixture {
    pub dir: tempfile::TempDir,
}

impl Fixture {
    pub fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let write = |relative: &str, text: &str| {
            let path = root.join(relative);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, text).expect("write");
        };
        write("proc/irq/default_smp_affinity", "f\n");
        for irq in [0, 1, 24, 25] {
            write(&format!("proc/irq/{irq}/smp_affinity_list"), "0-3\n");
        }
        write("proc/sys/kernel/random/boot_id", "boot-1\n");
        write("sys/devices/system/cpu/possible", "0-3\n");
        for cpu in 0..4 {
            let base = format!("sys/devices/system/cpu/cpu{cpu}");
            write(&format!("{base}/cpufreq/scaling_governor"), "schedutil\n");
            write(
                &format!("{base}/cpufreq/scaling_available_governors"),
                "performance schedutil powersave\n",
            );
            write(&format!("{base}/power/pm_qos_resume_latency_us"), "0\n");
        }
        write(
            "etc/sysconfig/irqbalance",
            "# settings\nIRQBALANCE_ARGS=\"\"\nIRQBALANCE_BANNED_CPUS=\n",
        );
        Fixture { dir }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Every file and its content.
    pub fn files(&self) -> BTreeMap<PathBuf, String> {
        fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<PathBuf, String>) {
            for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, root, out);
                } else if let Ok(text) = std::fs::read_to_string(&path) {
                    out.insert(path.strip_prefix(root).expect("under").to_path_buf(), text);
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(self.root(), self.root(), &mut out);
        out
    }

    pub fn read(&self, relative: &str) -> String {
        std::fs::read_to_string(self.root().join(relative))
            .expect("read")
            .trim_end()
            .to_string()
    }
}
