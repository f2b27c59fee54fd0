//! Reading files under a root, and the text formats the checks meet: the kernel command line,
//! CPU lists and CPU masks.

use std::{
    collections::BTreeMap,
    io,
    path::{Path, PathBuf},
};

use ingot_topology::CpuSet;

use crate::RtError;

/// The evidence value of a file that does not exist.
pub(crate) const ABSENT: &str = "absent";

/// A node's filesystem, read under a root (`/` on a real node, a fixture tree in tests).
pub(crate) struct Root<'a> {
    path: &'a Path,
}

/// Errors that mean "this file is not there" rather than "the read failed": missing files,
/// a directory where a file was expected, a process that exited (`ESRCH`), a device that went
/// away (`ENODEV`, `ENXIO`).
fn is_absent(error: &io::Error) -> bool {
    const ESRCH: i32 = 3;
    const ENXIO: i32 = 6;
    const ENODEV: i32 = 19;
    matches!(
        error.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    ) || matches!(error.raw_os_error(), Some(ESRCH | ENXIO | ENODEV))
}

impl<'a> Root<'a> {
    pub(crate) fn new(path: &'a Path) -> Self {
        Self { path }
    }

    fn full(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    /// A file's content, trimmed; `None` when it is absent.
    pub(crate) fn read(&self, rel: &str) -> Result<Option<String>, RtError> {
        let path = self.full(rel);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).trim().to_string())),
            Err(error) if is_absent(&error) => Ok(None),
            Err(source) => Err(RtError::Read { path, source }),
        }
    }

    /// A file's content, trimmed; `None` on any error (for `/proc/<pid>` files, whose process
    /// may exit between listing and reading).
    pub(crate) fn read_lenient(&self, rel: &str) -> Option<String> {
        std::fs::read(self.full(rel))
            .ok()
            .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_string())
    }

    /// The names in a directory, sorted; empty when the directory is absent.
    pub(crate) fn entries(&self, rel: &str) -> Result<Vec<String>, RtError> {
        let path = self.full(rel);
        let reader = match std::fs::read_dir(&path) {
            Ok(reader) => reader,
            Err(error) if is_absent(&error) => return Ok(Vec::new()),
            Err(source) => return Err(RtError::Read { path, source }),
        };
        let mut names = Vec::new();
        for entry in reader {
            match entry {
                Ok(entry) => names.push(entry.file_name().to_string_lossy().into_owned()),
                Err(error) if is_absent(&error) => {}
                Err(source) => return Err(RtError::Read { path, source }),
            }
        }
        names.sort();
        Ok(names)
    }

    /// The numeric names in a directory (IRQs, pids), in numeric order.
    pub(crate) fn numeric_entries(&self, rel: &str) -> Result<Vec<u32>, RtError> {
        let mut ids: Vec<u32> = self
            .entries(rel)?
            .iter()
            .filter_map(|name| name.parse().ok())
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }
}

/// The kernel command line (`/proc/cmdline`) as `key[=value]` arguments.
#[derive(Debug, Default)]
pub(crate) struct Cmdline {
    args: Vec<(String, Option<String>)>,
}

impl Cmdline {
    pub(crate) fn parse(text: &str) -> Self {
        let args = text
            .split_whitespace()
            .map(|arg| match arg.split_once('=') {
                Some((key, value)) => (key.to_string(), Some(value.trim_matches('"').to_string())),
                None => (arg.to_string(), None),
            })
            .collect();
        Self { args }
    }

    /// The last occurrence of `key` (the kernel lets a later argument override an earlier
    /// one): `Some(None)` for a bare `key`, `Some(Some(value))` for `key=value`.
    pub(crate) fn get(&self, key: &str) -> Option<Option<&str>> {
        self.args
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, value)| value.as_deref())
    }

    /// `key=value` as written, for evidence; `(no key=)` when the argument is not there.
    pub(crate) fn show(&self, key: &str) -> String {
        match self.get(key) {
            Some(Some(value)) => format!("{key}={value}"),
            Some(None) => key.to_string(),
            None => format!("(no {key}=)"),
        }
    }
}

/// A CPU list as sysfs or the command line writes it; `(null)` (an unset `nohz_full` on
/// older kernels) and the empty string are the empty set.
pub(crate) fn cpu_list(text: &str) -> Result<CpuSet, String> {
    let text = text.trim();
    if text == "(null)" {
        return Ok(CpuSet::new());
    }
    CpuSet::parse(text).map_err(|error| error.to_string())
}

/// The CPUs of `isolcpus=[flag,...,]<cpu-list>`, its leading flags (`nohz`, `domain`,
/// `managed_irq`) dropped.
pub(crate) fn isolcpus_list(value: &str) -> Result<CpuSet, String> {
    let mut parts = value.split(',').peekable();
    while parts
        .peek()
        .is_some_and(|part| matches!(part.trim(), "nohz" | "domain" | "managed_irq"))
    {
        parts.next();
    }
    cpu_list(&parts.collect::<Vec<_>>().join(","))
}

/// The CPUs of a kernel CPU mask (`default_smp_affinity`, `IRQBALANCE_BANNED_CPUS`): hex
/// groups of 32 CPUs, most significant first, separated by commas; `""` is none.
pub(crate) fn parse_mask(text: &str) -> Result<CpuSet, String> {
    let text = text.trim().trim_matches('"');
    let mut set = CpuSet::new();
    if text.is_empty() {
        return Ok(set);
    }
    for (index, group) in text.rsplit(',').enumerate() {
        let value = u32::from_str_radix(group.trim(), 16)
            .map_err(|_| format!("{group:?} is not a hex group of a CPU mask"))?;
        let base = u32::try_from(index * 32).map_err(|_| "too many groups".to_string())?;
        for bit in 0..32 {
            if value & (1 << bit) != 0 {
                set.insert(base + bit);
            }
        }
    }
    Ok(set)
}

/// `set` as a kernel CPU mask, in full 32-CPU groups (irqbalance's format).
pub(crate) fn format_mask(set: &CpuSet) -> String {
    let last = set.iter().last().unwrap_or(0);
    let groups = usize::try_from(last / 32).unwrap_or(0) + 1;
    (0..groups)
        .rev()
        .map(|index| {
            let base = index * 32;
            let value = set
                .iter()
                .filter_map(|cpu| usize::try_from(cpu).ok())
                .filter(|cpu| *cpu >= base && *cpu < base + 32)
                .fold(0u32, |value, cpu| value | (1 << (cpu - base)));
            format!("{value:08x}")
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Per-CPU values grouped by value, for evidence: `cpu2-3: performance; cpu4: powersave`.
pub(crate) fn per_cpu(values: &[(u32, String)]) -> String {
    let mut groups: BTreeMap<&str, CpuSet> = BTreeMap::new();
    for (cpu, value) in values {
        groups.entry(value.as_str()).or_default().insert(*cpu);
    }
    let mut groups: Vec<(CpuSet, &str)> = groups.into_iter().map(|(v, s)| (s, v)).collect();
    groups.sort();
    groups
        .iter()
        .map(|(cpus, value)| format!("cpu{cpus}: {value}"))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_arguments() {
        let cmdline = Cmdline::parse("ro quiet isolcpus=1 isolcpus=managed_irq,domain,2-3 nosmt");
        assert_eq!(
            cmdline.get("isolcpus"),
            Some(Some("managed_irq,domain,2-3"))
        );
        assert_eq!(cmdline.get("nosmt"), Some(None));
        assert_eq!(cmdline.get("nohz_full"), None);
        assert_eq!(cmdline.show("nohz_full"), "(no nohz_full=)");
        let isolated = isolcpus_list("managed_irq,domain,2-3").expect("list");
        assert_eq!(isolated.to_string(), "2-3");
        assert_eq!(isolcpus_list("2,3").expect("list").to_string(), "2-3");
        assert!(isolcpus_list("domain,all").is_err());
        assert!(cpu_list("(null)").expect("empty").is_empty());
    }

    #[test]
    fn masks_round_trip() {
        assert_eq!(parse_mask("ffff").expect("mask").to_string(), "0-15");
        assert_eq!(
            parse_mask("00000001,00000003").expect("mask").to_string(),
            "0-1,32"
        );
        assert!(parse_mask("").expect("empty").is_empty());
        assert!(parse_mask("xyz").is_err());
        let set = CpuSet::parse("2-3,33").expect("list");
        assert_eq!(format_mask(&set), "00000002,0000000c");
        assert_eq!(format_mask(&CpuSet::new()), "00000000");
        assert_eq!(parse_mask(&format_mask(&set)).expect("mask"), set);
    }

    #[test]
    fn per_cpu_groups_equal_values() {
        let values = vec![
            (3, "performance".to_string()),
            (2, "performance".to_string()),
            (5, "powersave".to_string()),
        ];
        assert_eq!(per_cpu(&values), "cpu2-3: performance; cpu5: powersave");
    }
}
