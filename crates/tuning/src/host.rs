//! The host's tunable files under a root path: where they are, what the host has
//! ([`Layout`]), what a claim needs of it ([`check`]), and the one place files are read and
//! written.

use std::{
    collections::BTreeMap,
    fs, io,
    io::Write as _,
    path::{Path, PathBuf},
};

use ingot_topology::CpuSet;
use serde::Serialize;

use crate::{Claim, TuningError};

/// Affinity of IRQs not yet allocated (a hex mask).
pub const DEFAULT_SMP_AFFINITY: &str = "proc/irq/default_smp_affinity";
/// irqbalance's environment file (CRI-O's default `irqbalance_config_file`).
pub const IRQBALANCE_CONFIG: &str = "etc/sysconfig/irqbalance";
/// A random id the kernel draws at every boot.
pub const BOOT_ID: &str = "proc/sys/kernel/random/boot_id";

const IRQ_DIR: &str = "proc/irq";
const CPU_DIR: &str = "sys/devices/system/cpu";
pub(crate) const SMP_AFFINITY_LIST: &str = "smp_affinity_list";
pub(crate) const RESUME_LATENCY: &str = "power/pm_qos_resume_latency_us";
pub(crate) const GOVERNOR: &str = "cpufreq/scaling_governor";
const AVAILABLE_GOVERNORS: &str = "cpufreq/scaling_available_governors";
const THREAD_SIBLINGS: &str = "topology/thread_siblings_list";

/// `sys/devices/system/cpu/cpu<N>/<file>`.
pub(crate) fn cpu_file(cpu: u32, file: &str) -> PathBuf {
    PathBuf::from(format!("{CPU_DIR}/cpu{cpu}/{file}"))
}

/// `proc/irq/<n>/smp_affinity_list`.
pub(crate) fn irq_file(irq: u32) -> PathBuf {
    PathBuf::from(format!("{IRQ_DIR}/{irq}/{SMP_AFFINITY_LIST}"))
}

/// Where the host's files are: `root` (`/`, or a temp tree in tests) joined with `proc/irq`,
/// `sys/devices/system/cpu`, `etc/sysconfig/irqbalance`.
#[derive(Debug, Clone)]
pub struct Host {
    root: PathBuf,
    #[cfg(test)]
    pub(crate) hooks: testing::Hooks,
}

impl Host {
    pub fn new(root: impl Into<PathBuf>) -> Host {
        Host {
            root: root.into(),
            #[cfg(test)]
            hooks: testing::Hooks::default(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `relative` (a path as [`crate::targets`] and the [`crate::Journal`] name it) under the root.
    pub fn path(&self, relative: &Path) -> PathBuf {
        self.root.join(relative)
    }

    pub(crate) fn read(&self, relative: &Path) -> io::Result<String> {
        fs::read_to_string(self.path(relative))
    }

    /// Writes `content` to an existing file. Kernel files are written in place, in one
    /// `write(2)` (sysfs and procfs never create files, so neither does this); the irqbalance
    /// file is replaced atomically, so a kill mid-write cannot leave half a configuration.
    pub(crate) fn write(&self, relative: &Path, content: &str) -> io::Result<()> {
        #[cfg(test)]
        self.hooks.before_write(relative)?;
        let path = self.path(relative);
        if relative == Path::new(IRQBALANCE_CONFIG) {
            return replace(&path, content);
        }
        let mut file = fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)?;
        file.write_all(content.as_bytes())
    }
}

/// Writes a sibling temp file with the original's permissions, syncs it, renames it over.
fn replace(path: &Path, content: &str) -> io::Result<()> {
    // Through a symlink, replace what it points at, not the link.
    let path = fs::canonicalize(path)?;
    let permissions = fs::metadata(&path)?.permissions();
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = path.with_file_name(format!(".{name}.ingot-tmp"));
    {
        let mut file = fs::File::create(&temp)?;
        file.write_all(content.as_bytes())?;
        file.set_permissions(permissions)?;
        file.sync_all()?;
    }
    fs::rename(&temp, &path)
}

/// The layout read once from the host: the IRQ numbers under `proc/irq` (dirs with
/// `smp_affinity_list`), whether `etc/sysconfig/irqbalance` exists, the number of possible CPUs.
///
/// Construct it with [`layout`]; in a literal, end with `..Layout::default()`, as fields may be
/// added.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Layout {
    /// IRQs with an `smp_affinity_list`, ascending.
    pub irqs: Vec<u32>,
    /// Whether `etc/sysconfig/irqbalance` exists.
    pub irqbalance_config: bool,
    /// Possible CPUs: the highest id in `cpu/possible` plus one, the width of the kernel's masks
    /// (`nr_cpu_ids`). Where `possible` is missing, from the `cpu<N>` directories.
    pub cpus: usize,
    /// `cpu<N>/topology/thread_siblings_list` of each CPU that has one (for
    /// [`crate::IrqMode::Housekeeping`]; a CPU without one is its own only thread).
    pub thread_siblings: BTreeMap<u32, CpuSet>,
    /// `cpu/isolated` and `cpu/nohz_full`: what irqbalance bans by itself when its configuration
    /// bans nothing, and so what a ban ingot sets must keep banning.
    pub isolated: CpuSet,
    /// The MSI interrupts of PCI devices claims steer (`sys/bus/pci/devices/<address>/msi_irqs`),
    /// by address; filled by [`crate::reconcile`] for the claims it is given.
    pub msi_irqs: BTreeMap<String, Vec<u32>>,
}

/// The MSI/MSI-X interrupts of PCI function `address` (`msi_irqs/<n>`), ascending; none when the
/// device or its driver has none.
pub fn msi_irqs(host: &Host, address: &str) -> Vec<u32> {
    let dir = host.path(Path::new(&format!(
        "sys/bus/pci/devices/{address}/msi_irqs"
    )));
    let mut irqs: Vec<u32> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    irqs.sort_unstable();
    irqs
}

fn read_error(host: &Host, relative: &Path, source: io::Error) -> TuningError {
    TuningError::Read {
        path: host.path(relative),
        source,
    }
}

/// `None` where absent; any other failure is an error naming the file.
fn read_optional(host: &Host, relative: &Path) -> Result<Option<String>, TuningError> {
    match host.read(relative) {
        Ok(text) => Ok(Some(text)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(read_error(host, relative, err)),
    }
}

/// The numbered entries `<prefix><n>` of a directory, ascending; none where it is absent.
fn numbered(host: &Host, dir: &str, prefix: &str) -> Result<Vec<u32>, TuningError> {
    let entries = match fs::read_dir(host.path(Path::new(dir))) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(read_error(host, Path::new(dir), err)),
    };
    let mut numbers = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|err| read_error(host, Path::new(dir), err))?;
        let name = entry.file_name();
        let Some(number) = name
            .to_str()
            .and_then(|name| name.strip_prefix(prefix))
            .filter(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|digits| digits.parse::<u32>().ok())
        else {
            continue;
        };
        numbers.push(number);
    }
    numbers.sort_unstable();
    Ok(numbers)
}

/// A CPU list that only informs (siblings, isolation): unreadable content is logged and read
/// as empty, so that a quirk there never blocks restoring the host.
fn read_informative_list(host: &Host, relative: &Path) -> Result<Option<CpuSet>, TuningError> {
    let Some(text) = read_optional(host, relative)? else {
        return Ok(None);
    };
    let text = text.trim();
    if text == "(null)" {
        return Ok(Some(CpuSet::new()));
    }
    match CpuSet::parse(text) {
        Ok(set) => Ok(Some(set)),
        Err(err) => {
            tracing::warn!(path = %host.path(relative).display(), %err, "ignoring a malformed CPU list");
            Ok(None)
        }
    }
}

/// Reads the [`Layout`].
pub fn layout(host: &Host) -> Result<Layout, TuningError> {
    let mut irqs = Vec::new();
    for irq in numbered(host, IRQ_DIR, "")? {
        if host.path(&irq_file(irq)).is_file() {
            irqs.push(irq);
        }
    }
    let cpu_dirs = numbered(host, CPU_DIR, "cpu")?;
    let possible = read_informative_list(host, &PathBuf::from(format!("{CPU_DIR}/possible")))?;
    let top = possible
        .and_then(|set| set.iter().last())
        .or_else(|| cpu_dirs.last().copied());
    let cpus = top.map_or(0, |top| top as usize + 1);
    let mut thread_siblings = BTreeMap::new();
    for cpu in &cpu_dirs {
        if let Some(siblings) = read_informative_list(host, &cpu_file(*cpu, THREAD_SIBLINGS))? {
            thread_siblings.insert(*cpu, siblings);
        }
    }
    let mut isolated = CpuSet::new();
    for name in ["isolated", "nohz_full"] {
        if let Some(set) = read_informative_list(host, &PathBuf::from(format!("{CPU_DIR}/{name}")))?
        {
            isolated = isolated.union(&set);
        }
    }
    Ok(Layout {
        irqs,
        irqbalance_config: host.path(Path::new(IRQBALANCE_CONFIG)).is_file(),
        cpus,
        thread_siblings,
        isolated,
        msi_irqs: BTreeMap::new(),
    })
}

/// Validates a claim against the host before anything is written: the governor must be in
/// every claimed CPU's `cpufreq/scaling_available_governors` (the error names the CPU and lists
/// the governors it has); C-states need `power/pm_qos_resume_latency_us` on each CPU; IRQ tuning
/// needs `proc/irq/default_smp_affinity`. A claim that touches the host needs CPUs.
pub fn check(host: &Host, claim: &Claim) -> Result<(), TuningError> {
    let tuning = &claim.tuning;
    if !tuning.touches_host() {
        return Ok(());
    }
    if claim.cpus.is_empty() {
        return Err(TuningError::NoCpus {
            owner: claim.owner.clone(),
        });
    }
    let unsupported = |feature: &str, relative: &Path| TuningError::Unsupported {
        owner: claim.owner.clone(),
        feature: feature.to_string(),
        path: host.path(relative),
    };
    if tuning.irq.is_some() && !host.path(Path::new(DEFAULT_SMP_AFFINITY)).is_file() {
        return Err(unsupported(
            crate::IRQ_LOAD_BALANCING,
            Path::new(DEFAULT_SMP_AFFINITY),
        ));
    }
    for cpu in claim.cpus.iter() {
        if tuning.c_states.is_some() {
            let file = cpu_file(cpu, RESUME_LATENCY);
            if !host.path(&file).is_file() {
                return Err(unsupported(crate::CPU_C_STATES, &file));
            }
        }
        if let Some(governor) = &tuning.governor {
            let feature = crate::CPU_FREQ_GOVERNOR;
            let file = cpu_file(cpu, AVAILABLE_GOVERNORS);
            let Some(text) = read_optional(host, &file)? else {
                return Err(unsupported(feature, &file));
            };
            let available: Vec<String> = text.split_whitespace().map(str::to_string).collect();
            if !available.iter().any(|offered| offered == governor) {
                return Err(TuningError::GovernorUnavailable {
                    owner: claim.owner.clone(),
                    cpu,
                    governor: governor.clone(),
                    available,
                });
            }
            let file = cpu_file(cpu, GOVERNOR);
            if !host.path(&file).is_file() {
                return Err(unsupported(feature, &file));
            }
        }
    }
    Ok(())
}

/// The host's boot id, `proc/sys/kernel/random/boot_id` (a new one after every boot).
pub fn boot_id(host: &Host) -> Result<String, TuningError> {
    let relative = Path::new(BOOT_ID);
    let text = host
        .read(relative)
        .map_err(|err| read_error(host, relative, err))?;
    let id = text.trim();
    if id.is_empty() {
        return Err(TuningError::Malformed {
            path: host.path(relative),
            reason: "an empty boot id".to_string(),
        });
    }
    Ok(id.to_string())
}

/// Test-only fault injection: a write budget shared with a test journal (a "kill" once it is
/// spent), and files whose writes the "kernel" refuses with an errno.
#[cfg(test)]
pub(crate) mod testing {
    use std::{
        collections::BTreeMap,
        io,
        path::{Path, PathBuf},
        sync::{
            atomic::{AtomicUsize, Ordering},
            Arc,
        },
    };

    #[derive(Debug, Clone, Default)]
    pub(crate) struct Hooks {
        /// Writes (host and journal) left before the simulated kill.
        pub budget: Option<Arc<AtomicUsize>>,
        /// Files whose writes fail with this errno.
        pub refuse: BTreeMap<PathBuf, i32>,
    }

    /// Spends one write of the budget, or fails as a kill would.
    pub(crate) fn spend(budget: &Option<Arc<AtomicUsize>>) -> io::Result<()> {
        let Some(budget) = budget else {
            return Ok(());
        };
        budget
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                left.checked_sub(1)
            })
            .map(|_| ())
            .map_err(|_| io::Error::other("simulated kill"))
    }

    impl Hooks {
        pub(crate) fn before_write(&self, relative: &Path) -> io::Result<()> {
            spend(&self.budget)?;
            match self.refuse.get(relative) {
                Some(errno) => Err(io::Error::from_raw_os_error(*errno)),
                None => Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{fixture::Fixture, CStates, IrqMode, Tuning};

    fn claim(cpus: &str, tuning: Tuning) -> Claim {
        Claim {
            owner: "ctr-1".to_string(),
            cpus: CpuSet::parse(cpus).expect("valid"),
            tuning,
        }
    }

    #[test]
    fn reads_the_layout() {
        let fixture = Fixture::new();
        fixture.write("proc/irq/7/affinity_hint", "0\n"); // an IRQ dir without the list
        fixture.write("sys/devices/system/cpu/nohz_full", "3\n");
        let layout = layout(&fixture.host()).expect("layout");
        assert_eq!(layout.irqs, vec![0, 1, 24, 25]);
        assert!(layout.irqbalance_config);
        assert_eq!(layout.cpus, 4);
        assert_eq!(
            layout.thread_siblings.get(&1),
            Some(&CpuSet::parse("0-1").expect("valid"))
        );
        assert_eq!(layout.isolated.to_string(), "3");

        fixture.remove("sys/devices/system/cpu/possible");
        fixture.remove(IRQBALANCE_CONFIG);
        let layout = super::layout(&fixture.host()).expect("layout");
        assert_eq!(layout.cpus, 4, "from the cpu<N> directories");
        assert!(!layout.irqbalance_config);
    }

    #[test]
    fn check_names_the_cpu_and_the_governors_it_has() {
        let fixture = Fixture::new();
        fixture.write(
            "sys/devices/system/cpu/cpu2/cpufreq/scaling_available_governors",
            "powersave schedutil\n",
        );
        let host = fixture.host();
        let performance = Tuning {
            governor: Some("performance".to_string()),
            ..Tuning::default()
        };
        check(&host, &claim("0-1", performance.clone())).expect("offered on 0-1");
        let err = check(&host, &claim("1-3", performance)).expect_err("not on CPU 2");
        assert!(
            matches!(err, TuningError::GovernorUnavailable { cpu: 2, .. }),
            "{err}"
        );
        let message = err.to_string();
        assert!(message.contains("CPU 2"), "{message}");
        assert!(message.contains("powersave schedutil"), "{message}");
        assert!(message.contains("\"performance\""), "{message}");
    }

    #[test]
    fn check_wants_the_files_each_feature_writes() {
        let fixture = Fixture::new();
        let host = fixture.host();
        let everything = Tuning {
            irq: Some(IrqMode::Disable),
            c_states: Some(CStates::Disable),
            governor: Some("performance".to_string()),
            ..Tuning::default()
        };
        check(&host, &claim("0-3", everything.clone())).expect("all there");
        check(&host, &claim("", Tuning::default())).expect("nothing to check");

        let err = check(&host, &claim("", everything.clone())).expect_err("no CPUs");
        assert!(matches!(err, TuningError::NoCpus { .. }), "{err}");

        fixture.remove("sys/devices/system/cpu/cpu3/power/pm_qos_resume_latency_us");
        let err = check(&host, &claim("2-3", everything.clone())).expect_err("no latency file");
        assert!(
            err.to_string()
                .contains("cpu3/power/pm_qos_resume_latency_us"),
            "{err}"
        );

        fixture.remove("sys/devices/system/cpu/cpu0/cpufreq/scaling_available_governors");
        let governor_only = Tuning {
            governor: Some("performance".to_string()),
            ..Tuning::default()
        };
        let err = check(&host, &claim("0", governor_only)).expect_err("no cpufreq");
        assert!(err.to_string().contains("cpu0/cpufreq"), "{err}");

        fixture.remove(DEFAULT_SMP_AFFINITY);
        let irq_only = Tuning {
            irq: Some(IrqMode::Housekeeping),
            ..Tuning::default()
        };
        let err = check(&host, &claim("1", irq_only)).expect_err("no default_smp_affinity");
        assert!(err.to_string().contains(DEFAULT_SMP_AFFINITY), "{err}");
    }

    #[test]
    fn reads_the_boot_id() {
        let fixture = Fixture::new();
        assert_eq!(boot_id(&fixture.host()).expect("boot id"), "boot-1");
        fixture.remove(BOOT_ID);
        let err = boot_id(&fixture.host()).expect_err("absent");
        assert!(err.to_string().contains(BOOT_ID), "{err}");
    }
}
