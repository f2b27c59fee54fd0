//! cgroup facts and metrics for the shim: where the hugetlb controller lives, the oom_score_adj
//! floor, stats in containerd's metrics types, resource updates, and hugepage limits written into
//! the unified hierarchy when a v1 manager runs the rest (hybrid hosts). Every reader takes its
//! root so it can be tested on a fixture tree.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use containerd_shim::protos::{
    cgroups::metrics::{
        CPUStat, CPUUsage, HugetlbStat, MemoryEntry, MemoryStat, Metrics, PidsStat, Throttle,
    },
    cgroups_v2::metrics as v2,
    protobuf::{well_known_types::any::Any, Message},
};
use ingot_oci::HugetlbSupport;
use libcgroups::{
    common::{create_cgroup_manager, AnyCgroupManager, CgroupConfig, CgroupManager},
    stats::Stats,
};

use crate::error::{Result, ShimError};

/// Each mount of `/proc/self/mountinfo` text: (mount point, filesystem type, super options).
pub fn mounts(mountinfo: &str) -> impl Iterator<Item = (&str, &str, &str)> {
    mountinfo.lines().filter_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mount_point = left.split_whitespace().nth(4)?;
        let mut right = right.split_whitespace();
        let fs_type = right.next()?;
        let super_options = right.nth(1).unwrap_or_default();
        Some((mount_point, fs_type, super_options))
    })
}

/// The host's cgroup mounts: the `cgroup` and `cgroup2` lines of `/proc/self/mountinfo`, read
/// once per process family and kept. A node mounts its hierarchies at boot and keeps them, while
/// mountinfo grows by a few lines per pod (rootfs overlays, namespace pins, shm), each costly
/// for the kernel to print. The zygote fills this before it forks shims, a shim before it forks
/// its spare helper, so neither they nor the container processes forked from them read it again.
pub fn host_cgroup_mounts() -> &'static str {
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TEXT.get_or_init(|| {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let text = cgroup_lines(&mountinfo);
        libcgroups::v1::util::remember_subsystem_mount_points(&text);
        text
    })
}

/// The lines of `mountinfo` text that mount a cgroup or cgroup2 filesystem.
fn cgroup_lines(mountinfo: &str) -> String {
    mountinfo
        .lines()
        .filter(|line| {
            line.split_once(" - ")
                .and_then(|(_, right)| right.split_whitespace().next())
                .is_some_and(|fs_type| fs_type == "cgroup" || fs_type == "cgroup2")
        })
        .fold(String::new(), |mut text, line| {
            text.push_str(line);
            text.push('\n');
            text
        })
}

/// Where hugetlb lives on this host, and the unified mount when limits go there by hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HugetlbPlacement {
    pub support: HugetlbSupport,
    pub unified_mount: Option<PathBuf>,
}

/// Decides where hugepage limits can land from `/proc/self/mountinfo` and the unified root's
/// control files (read under `root`, `/` in production).
pub fn hugetlb_placement(mountinfo: &str, root: &Path) -> HugetlbPlacement {
    let mut unified = None;
    for (mount_point, fs_type, super_options) in mounts(mountinfo) {
        if fs_type == "cgroup" && super_options.split(',').any(|o| o == "hugetlb") {
            return HugetlbPlacement {
                support: HugetlbSupport::V1,
                unified_mount: None,
            };
        }
        if fs_type == "cgroup2" {
            unified = Some(PathBuf::from(mount_point));
        }
    }
    let Some(mount) = unified else {
        return HugetlbPlacement {
            support: HugetlbSupport::Unavailable {
                reason: "no hugetlb cgroup hierarchy is mounted".into(),
            },
            unified_mount: None,
        };
    };
    let read = |name: &str| {
        let relative = mount.strip_prefix("/").unwrap_or(&mount);
        fs::read_to_string(root.join(relative).join(name)).unwrap_or_default()
    };
    let has = |text: String| text.split_whitespace().any(|c| c == "hugetlb");
    if !has(read("cgroup.controllers")) {
        return HugetlbPlacement {
            support: HugetlbSupport::Unavailable {
                reason: format!(
                    "the cgroup2 hierarchy at {} has no hugetlb",
                    mount.display()
                ),
            },
            unified_mount: None,
        };
    }
    let pure_v2 = mount == Path::new("/sys/fs/cgroup");
    if pure_v2 {
        return HugetlbPlacement {
            support: HugetlbSupport::Unified,
            unified_mount: None,
        };
    }
    if has(read("cgroup.subtree_control")) {
        HugetlbPlacement {
            support: HugetlbSupport::UnifiedBeside,
            unified_mount: Some(mount),
        }
    } else {
        HugetlbPlacement {
            support: HugetlbSupport::Unavailable {
                reason: format!(
                    "hugetlb sits on the cgroup2 hierarchy at {} whose root does not delegate it \
                     (cgroup.subtree_control lacks hugetlb)",
                    mount.display()
                ),
            },
            unified_mount: None,
        }
    }
}

/// The lowest oom_score_adj this process can give a child: -1000 with CAP_SYS_RESOURCE, else its
/// own value.
pub fn oom_score_floor(proc_self: &Path) -> i32 {
    const CAP_SYS_RESOURCE: u32 = 24;
    let status = fs::read_to_string(proc_self.join("status")).unwrap_or_default();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    if cap_eff & (1 << CAP_SYS_RESOURCE) != 0 {
        return -1000;
    }
    fs::read_to_string(proc_self.join("oom_score_adj"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Whether this host runs cgroup v2 alone (as opposed to v1 or a v1/v2 hybrid).
pub fn unified_only() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

pub fn manager(id: &str, cgroups_path: &Path) -> Result<AnyCgroupManager> {
    create_cgroup_manager(CgroupConfig {
        cgroup_path: cgroups_path.to_path_buf(),
        systemd_cgroup: false,
        container_name: id.to_string(),
    })
    .map_err(|err| ShimError::Runtime {
        id: id.to_string(),
        op: "open cgroup",
        message: err.to_string(),
    })
}

fn cgroup_err(id: &str, op: &'static str) -> impl FnOnce(String) -> ShimError {
    let id = id.to_string();
    move |message| ShimError::Runtime { id, op, message }
}

pub fn pids(id: &str, cgroups_path: &Path) -> Result<Vec<i32>> {
    let pids = manager(id, cgroups_path)?
        .get_all_pids()
        .map_err(|err| cgroup_err(id, "list pids")(err.to_string()))?;
    Ok(pids.into_iter().map(|pid| pid.as_raw()).collect())
}

pub fn update(id: &str, cgroups_path: &Path, json: &[u8]) -> Result<()> {
    let resources: oci_spec::runtime::LinuxResources =
        serde_json::from_slice(json).map_err(|err| ShimError::InvalidArgument {
            what: format!("update of container {id}: resources"),
            reason: err.to_string(),
        })?;
    manager(id, cgroups_path)?
        .apply(&libcgroups::common::ControllerOpt {
            resources: &resources,
            disable_oom_killer: false,
            oom_score_adj: None,
            freezer_state: None,
        })
        .map_err(|err| cgroup_err(id, "update resources")(err.to_string()))
}

pub fn stats(id: &str, cgroups_path: &Path) -> Result<Any> {
    let stats = manager(id, cgroups_path)?
        .stats()
        .map_err(|err| cgroup_err(id, "read stats")(err.to_string()))?;
    // containerd decodes by the message's full name; each layout has its own message.
    let (type_url, encoded) = if unified_only() {
        (
            "io.containerd.cgroups.v2.Metrics",
            v2_metrics(&stats).write_to_bytes(),
        )
    } else {
        (
            "io.containerd.cgroups.v1.Metrics",
            v1_metrics(&stats).write_to_bytes(),
        )
    };
    let value = encoded.map_err(|err| cgroup_err(id, "encode stats")(err.to_string()))?;
    Ok(Any {
        type_url: type_url.into(),
        value,
        ..Default::default()
    })
}

/// libcgroups' stats (read from a cgroup v2 tree) in containerd's cgroup v2 metrics message.
pub fn v2_metrics(stats: &Stats) -> v2::Metrics {
    let memory_stat = |key: &str| stats.memory.stats.get(key).copied().unwrap_or(0);
    let hugetlb: BTreeMap<_, _> = stats.hugetlb.iter().collect();
    v2::Metrics {
        pids: Some(v2::PidsStat {
            current: stats.pids.current,
            limit: stats.pids.limit,
            ..Default::default()
        })
        .into(),
        cpu: Some(v2::CPUStat {
            usage_usec: stats.cpu.usage.usage_total,
            user_usec: stats.cpu.usage.usage_user,
            system_usec: stats.cpu.usage.usage_kernel,
            nr_periods: stats.cpu.throttling.periods,
            nr_throttled: stats.cpu.throttling.throttled_periods,
            throttled_usec: stats.cpu.throttling.throttled_time,
            ..Default::default()
        })
        .into(),
        memory: Some(v2::MemoryStat {
            anon: memory_stat("anon"),
            file: memory_stat("file"),
            kernel_stack: memory_stat("kernel_stack"),
            slab: memory_stat("slab"),
            sock: memory_stat("sock"),
            shmem: memory_stat("shmem"),
            file_mapped: memory_stat("file_mapped"),
            file_dirty: memory_stat("file_dirty"),
            file_writeback: memory_stat("file_writeback"),
            inactive_anon: memory_stat("inactive_anon"),
            active_anon: memory_stat("active_anon"),
            inactive_file: memory_stat("inactive_file"),
            active_file: memory_stat("active_file"),
            unevictable: memory_stat("unevictable"),
            pgfault: memory_stat("pgfault"),
            pgmajfault: memory_stat("pgmajfault"),
            usage: stats.memory.memory.usage,
            usage_limit: stats.memory.memory.limit,
            max_usage: stats.memory.memory.max_usage,
            swap_usage: stats.memory.memswap.usage,
            swap_limit: stats.memory.memswap.limit,
            ..Default::default()
        })
        .into(),
        hugetlb: hugetlb
            .into_iter()
            .map(|(pagesize, h)| v2::HugeTlbStat {
                current: h.usage,
                max: h.max_usage,
                failcnt: h.fail_count,
                pagesize: pagesize.clone(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// libcgroups' stats in containerd's cgroup v1 metrics message (what `ctr task metrics` decodes).
pub fn v1_metrics(stats: &Stats) -> Metrics {
    let memory_stat = |key: &str| stats.memory.stats.get(key).copied().unwrap_or(0);
    let entry = |data: &libcgroups::stats::MemoryData| MemoryEntry {
        limit: data.limit,
        usage: data.usage,
        max: data.max_usage,
        failcnt: data.fail_count,
        ..Default::default()
    };
    let hugetlb: BTreeMap<_, _> = stats.hugetlb.iter().collect();
    Metrics {
        pids: Some(PidsStat {
            current: stats.pids.current,
            limit: stats.pids.limit,
            ..Default::default()
        })
        .into(),
        cpu: Some(CPUStat {
            usage: Some(CPUUsage {
                total: stats.cpu.usage.usage_total,
                kernel: stats.cpu.usage.usage_kernel,
                user: stats.cpu.usage.usage_user,
                per_cpu: stats.cpu.usage.per_core_usage_total.clone(),
                ..Default::default()
            })
            .into(),
            throttling: Some(Throttle {
                periods: stats.cpu.throttling.periods,
                throttled_periods: stats.cpu.throttling.throttled_periods,
                throttled_time: stats.cpu.throttling.throttled_time,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        })
        .into(),
        memory: Some(MemoryStat {
            cache: stats.memory.cache,
            rss: memory_stat("rss"),
            rss_huge: memory_stat("rss_huge"),
            mapped_file: memory_stat("mapped_file"),
            dirty: memory_stat("dirty"),
            writeback: memory_stat("writeback"),
            pg_fault: memory_stat("pgfault"),
            pg_maj_fault: memory_stat("pgmajfault"),
            inactive_anon: memory_stat("inactive_anon"),
            active_anon: memory_stat("active_anon"),
            inactive_file: memory_stat("inactive_file"),
            active_file: memory_stat("active_file"),
            unevictable: memory_stat("unevictable"),
            hierarchical_memory_limit: memory_stat("hierarchical_memory_limit"),
            // The hierarchical totals, which the CRI's working set and page faults read.
            total_cache: memory_stat("total_cache"),
            total_rss: memory_stat("total_rss"),
            total_rss_huge: memory_stat("total_rss_huge"),
            total_mapped_file: memory_stat("total_mapped_file"),
            total_dirty: memory_stat("total_dirty"),
            total_writeback: memory_stat("total_writeback"),
            total_pg_fault: memory_stat("total_pgfault"),
            total_pg_maj_fault: memory_stat("total_pgmajfault"),
            total_inactive_anon: memory_stat("total_inactive_anon"),
            total_active_anon: memory_stat("total_active_anon"),
            total_inactive_file: memory_stat("total_inactive_file"),
            total_active_file: memory_stat("total_active_file"),
            total_unevictable: memory_stat("total_unevictable"),
            usage: Some(entry(&stats.memory.memory)).into(),
            swap: Some(entry(&stats.memory.memswap)).into(),
            kernel: Some(entry(&stats.memory.kernel)).into(),
            kernel_tcp: Some(entry(&stats.memory.kernel_tcp)).into(),
            ..Default::default()
        })
        .into(),
        hugetlb: hugetlb
            .into_iter()
            .map(|(pagesize, h)| HugetlbStat {
                usage: h.usage,
                max: h.max_usage,
                failcnt: h.fail_count,
                pagesize: pagesize.clone(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// Hugepage limits in the unified hierarchy beside v1 controllers: creates the cgroup (enabling
/// hugetlb on each level it creates), writes `hugetlb.<size>.max` (and `.rsvd.max` where the
/// kernel has it), and moves `pid` in.
/// Returns the directories created, deepest last, for removal.
pub fn apply_unified_hugetlb(
    unified_mount: &Path,
    cgroups_path: &Path,
    limits: &BTreeMap<String, u64>,
    pid: i32,
) -> Result<Vec<PathBuf>> {
    let mut created = Vec::new();
    let mut dir = unified_mount.to_path_buf();
    let relative = cgroups_path.strip_prefix("/").unwrap_or(cgroups_path);
    for component in relative.components() {
        let parent = dir.clone();
        dir.push(component);
        if !dir.exists() {
            fs::write(parent.join("cgroup.subtree_control"), "+hugetlb").map_err(ShimError::io(
                format!("enable hugetlb in {}", parent.display()),
            ))?;
            fs::create_dir(&dir).map_err(ShimError::io(format!("create {}", dir.display())))?;
            created.push(dir.clone());
        }
    }
    let result = (|| {
        for (size, bytes) in limits {
            let file = dir.join(format!("hugetlb.{size}.max"));
            fs::write(&file, bytes.to_string())
                .map_err(ShimError::io(format!("write {}", file.display())))?;
            // Reservations (Linux 5.7 on) are limited too, as libcgroups does on v1 and v2: a
            // process cannot reserve pages at mmap time it may not fault in.
            let reserved = dir.join(format!("hugetlb.{size}.rsvd.max"));
            if reserved.exists() {
                fs::write(&reserved, bytes.to_string())
                    .map_err(ShimError::io(format!("write {}", reserved.display())))?;
            }
        }
        let procs = dir.join("cgroup.procs");
        fs::write(&procs, pid.to_string())
            .map_err(ShimError::io(format!("write {}", procs.display())))
    })();
    if let Err(err) = result {
        remove_dirs(&created);
        return Err(err);
    }
    Ok(created)
}

/// The cpuset of an update that changes nothing else (`{"cpu": {"cpus": .., "mems": ..}}`, as
/// ingotd sends when a shared container follows the shared pool): `(cpus, mems)`.
pub fn cpuset_only(resources: &[u8]) -> Option<(Option<String>, Option<String>)> {
    let value: serde_json::Value = serde_json::from_slice(resources).ok()?;
    let fields = value.as_object()?;
    if fields.keys().any(|key| key != "cpu") {
        return None;
    }
    let cpu = fields.get("cpu")?.as_object()?;
    if cpu.keys().any(|key| key != "cpus" && key != "mems") {
        return None;
    }
    let text = |key: &str| cpu.get(key).and_then(|v| v.as_str()).map(str::to_string);
    let (cpus, mems) = (text("cpus"), text("mems"));
    (cpus.is_some() || mems.is_some()).then_some((cpus, mems))
}

/// Writes `cpuset.cpus` / `cpuset.mems` of the container's cgroup in every hierarchy that has
/// the cpuset controller (the v1 cpuset hierarchy, or the unified one where it is enabled);
/// false when there is none, so the caller takes the general path. A v1 cpuset move of the
/// container's tasks is the kernel's: writing the files is the whole update.
pub fn write_cpuset(
    mountinfo: &str,
    cgroups_path: &Path,
    cpus: Option<&str>,
    mems: Option<&str>,
) -> Result<bool> {
    let relative = cgroups_path.strip_prefix("/").unwrap_or(cgroups_path);
    let mut written = false;
    for (mount_point, fs_type, super_options) in mounts(mountinfo) {
        let has_cpuset = match fs_type {
            "cgroup" => super_options.split(',').any(|o| o == "cpuset"),
            "cgroup2" => true,
            _ => false,
        };
        let dir = Path::new(mount_point).join(relative);
        if !has_cpuset || !dir.join("cpuset.cpus").exists() {
            continue;
        }
        for (file, value) in [("cpuset.cpus", cpus), ("cpuset.mems", mems)] {
            if let Some(value) = value {
                let path = dir.join(file);
                fs::write(&path, value).map_err(ShimError::io(format!(
                    "write {value:?} to {}",
                    path.display()
                )))?;
            }
        }
        written = true;
    }
    Ok(written)
}

/// Removes cgroup directories made by [`apply_unified_hugetlb`], deepest first.
pub fn remove_dirs(created: &[PathBuf]) {
    for dir in created.iter().rev() {
        if let Err(err) = fs::remove_dir(dir) {
            tracing::warn!(dir = %dir.display(), error = %err, "remove hugetlb cgroup");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
30 24 0:26 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:6 - cgroup2 cgroup2 rw
31 24 0:27 / /sys/fs/cgroup/memory rw,nosuid shared:7 - cgroup cgroup rw,memory
32 24 0:28 / /sys/fs/cgroup/cpuset rw,nosuid shared:8 - cgroup cgroup rw,cpuset
";

    fn fixture(controllers: &str, subtree: &str) -> tempfile::TempDir {
        let root = tempfile::tempdir().expect("tempdir");
        let unified = root.path().join("sys/fs/cgroup/unified");
        fs::create_dir_all(&unified).expect("mkdir");
        fs::write(unified.join("cgroup.controllers"), controllers).expect("write");
        fs::write(unified.join("cgroup.subtree_control"), subtree).expect("write");
        root
    }

    #[test]
    fn only_cgroup_mounts_are_kept() {
        let mountinfo = format!(
            "22 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n{HYBRID}\
             40 22 0:40 / /run/ingot/c/rootfs rw - overlay overlay rw,lowerdir=/a:/b\n\
             41 22 0:4 net:[4026532] /run/ingot/pods/p/ns/net rw - nsfs nsfs rw\n"
        );
        let kept = cgroup_lines(&mountinfo);
        assert_eq!(kept, HYBRID);
        assert_eq!(
            hugetlb_placement(&kept, Path::new("/nonexistent")),
            hugetlb_placement(&mountinfo, Path::new("/nonexistent"))
        );
    }

    #[test]
    fn hybrid_without_delegation_is_unavailable() {
        let root = fixture("hugetlb\n", "\n");
        let placement = hugetlb_placement(HYBRID, root.path());
        match placement.support {
            HugetlbSupport::Unavailable { reason } => {
                assert!(reason.contains("/sys/fs/cgroup/unified"), "{reason}");
                assert!(reason.contains("subtree_control"), "{reason}");
            }
            other => panic!("expected unavailable, got {other:?}"),
        }
    }

    #[test]
    fn hybrid_with_delegation_writes_beside() {
        let root = fixture("hugetlb\n", "hugetlb\n");
        let placement = hugetlb_placement(HYBRID, root.path());
        assert_eq!(placement.support, HugetlbSupport::UnifiedBeside);
        assert_eq!(
            placement.unified_mount,
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn a_cpuset_only_update_is_written_where_the_cpuset_controller_is() {
        assert_eq!(
            cpuset_only(br#"{"cpu": {"cpus": "0-1"}}"#),
            Some((Some("0-1".into()), None))
        );
        assert_eq!(
            cpuset_only(br#"{"cpu": {"cpus": "0", "mems": "1"}}"#),
            Some((Some("0".into()), Some("1".into())))
        );
        for other in [
            &br#"{"cpu": {"cpus": "0", "shares": 2}}"#[..],
            br#"{"cpu": {"cpus": "0"}, "memory": {"limit": 1}}"#,
            br#"{"cpu": {}}"#,
            br#"{}"#,
            b"not json",
        ] {
            assert_eq!(
                cpuset_only(other),
                None,
                "{}",
                String::from_utf8_lossy(other)
            );
        }

        let root = tempfile::tempdir().expect("tempdir");
        let cpuset = root.path().join("cpuset");
        let memory = root.path().join("memory");
        let leaf = cpuset.join("ingot/p/c1");
        fs::create_dir_all(&leaf).expect("leaf");
        fs::create_dir_all(memory.join("ingot/p/c1")).expect("memory leaf");
        fs::write(leaf.join("cpuset.cpus"), "0-1").expect("cpus");
        fs::write(leaf.join("cpuset.mems"), "0").expect("mems");
        let mountinfo = format!(
            "31 24 0:27 / {} rw,nosuid shared:7 - cgroup cgroup rw,memory\n\
             32 24 0:28 / {} rw,nosuid shared:8 - cgroup cgroup rw,cpuset\n",
            memory.display(),
            cpuset.display()
        );
        let path = Path::new("/ingot/p/c1");
        assert!(write_cpuset(&mountinfo, path, Some("1"), None).expect("write"));
        assert_eq!(
            fs::read_to_string(leaf.join("cpuset.cpus")).expect("cpus"),
            "1"
        );
        assert_eq!(
            fs::read_to_string(leaf.join("cpuset.mems")).expect("mems"),
            "0"
        );
        assert!(
            !memory.join("ingot/p/c1/cpuset.cpus").exists(),
            "not a cpuset hierarchy"
        );
        assert!(
            !write_cpuset(&mountinfo, Path::new("/ingot/p/none"), Some("1"), None)
                .expect("nothing to write")
        );
    }

    #[test]
    fn unified_hugetlb_limits_reservations_too() {
        let unified = tempfile::tempdir().expect("tempdir");
        let leaf = unified.path().join("ingot/pod/c1");
        fs::create_dir_all(&leaf).expect("leaf");
        fs::write(leaf.join("hugetlb.2MB.rsvd.max"), "max\n").expect("rsvd");
        let limits = BTreeMap::from([("2MB".to_string(), 8u64 << 20), ("1GB".to_string(), 0)]);
        let created =
            apply_unified_hugetlb(unified.path(), Path::new("/ingot/pod/c1"), &limits, 42)
                .expect("apply");
        assert!(created.is_empty(), "nothing was created: {created:?}");
        let read = |name: &str| fs::read_to_string(leaf.join(name)).expect(name);
        assert_eq!(read("hugetlb.2MB.max"), (8u64 << 20).to_string());
        assert_eq!(read("hugetlb.2MB.rsvd.max"), (8u64 << 20).to_string());
        assert_eq!(read("hugetlb.1GB.max"), "0");
        assert!(
            !leaf.join("hugetlb.1GB.rsvd.max").exists(),
            "no rsvd file is made up"
        );
        assert_eq!(read("cgroup.procs"), "42");
    }

    #[test]
    fn v1_hugetlb_mount_wins() {
        let mountinfo = format!(
            "{HYBRID}40 24 0:30 / /sys/fs/cgroup/hugetlb rw shared:9 - cgroup cgroup rw,hugetlb\n"
        );
        let root = fixture("", "");
        assert_eq!(
            hugetlb_placement(&mountinfo, root.path()).support,
            HugetlbSupport::V1
        );
    }

    #[test]
    fn pure_v2_with_hugetlb_is_managed_by_libcgroups() {
        let root = tempfile::tempdir().expect("tempdir");
        let cg = root.path().join("sys/fs/cgroup");
        fs::create_dir_all(&cg).expect("mkdir");
        fs::write(cg.join("cgroup.controllers"), "cpu memory hugetlb pids\n").expect("write");
        let mountinfo = "25 1 0:22 / /sys/fs/cgroup rw shared:4 - cgroup2 cgroup2 rw\n";
        assert_eq!(
            hugetlb_placement(mountinfo, root.path()).support,
            HugetlbSupport::Unified
        );
    }

    #[test]
    fn oom_floor_follows_capability() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("oom_score_adj"), "-500\n").expect("write");
        // This machine's own CapEff: everything but CAP_SYS_RESOURCE (bit 24).
        fs::write(dir.path().join("status"), "CapEff:\t000001fffeffffff\n").expect("write");
        assert_eq!(oom_score_floor(dir.path()), -500);
        fs::write(dir.path().join("status"), "CapEff:\t000001ffffffffff\n").expect("write");
        assert_eq!(oom_score_floor(dir.path()), -1000);
    }

    #[test]
    fn unified_hugetlb_limits_written_and_removed() {
        let root = tempfile::tempdir().expect("tempdir");
        let mount = root.path().join("unified");
        fs::create_dir_all(&mount).expect("mkdir");
        let limits = BTreeMap::from([("2MB".to_string(), 4u64 << 20)]);
        let created =
            apply_unified_hugetlb(&mount, Path::new("/ingot/pod/c1"), &limits, 42).expect("apply");
        assert_eq!(created.len(), 3);
        let leaf = mount.join("ingot/pod/c1");
        assert_eq!(
            fs::read_to_string(leaf.join("hugetlb.2MB.max")).expect("read"),
            "4194304"
        );
        assert_eq!(
            fs::read_to_string(leaf.join("cgroup.procs")).expect("read"),
            "42"
        );
        assert_eq!(
            fs::read_to_string(mount.join("cgroup.subtree_control")).expect("read"),
            "+hugetlb"
        );
        // A fixture directory holds files, so rmdir fails there; the real cgroupfs allows it.
        for dir in created.iter().rev() {
            fs::remove_dir_all(dir).ok();
        }
        assert!(!mount.join("ingot").exists());
    }

    #[test]
    fn metrics_carry_cpu_memory_pids() {
        let mut stats = Stats::default();
        stats.cpu.usage.usage_total = 1234;
        stats.memory.memory.usage = 4096;
        stats.memory.memory.limit = 1 << 20;
        stats.pids.current = 3;
        stats.pids.limit = 10;
        let metrics = v1_metrics(&stats);
        assert_eq!(metrics.cpu.usage.total, 1234);
        assert_eq!(metrics.memory.usage.usage, 4096);
        assert_eq!(metrics.memory.usage.limit, 1 << 20);
        assert_eq!(metrics.pids.current, 3);
        assert_eq!(metrics.pids.limit, 10);
        // v1's hierarchical totals (memory.stat's `total_*`) carry what the CRI reads.
        stats
            .memory
            .stats
            .insert("total_inactive_file".into(), 1000);
        stats.memory.stats.insert("total_pgfault".into(), 55);
        stats.memory.stats.insert("total_pgmajfault".into(), 2);
        let metrics = v1_metrics(&stats);
        assert_eq!(metrics.memory.total_inactive_file, 1000);
        assert_eq!(metrics.memory.total_pg_fault, 55);
        assert_eq!(metrics.memory.total_pg_maj_fault, 2);

        stats.memory.stats.insert("anon".into(), 777);
        let metrics = v2_metrics(&stats);
        assert_eq!(metrics.cpu.usage_usec, 1234);
        assert_eq!(metrics.memory.usage, 4096);
        assert_eq!(metrics.memory.usage_limit, 1 << 20);
        assert_eq!(metrics.memory.anon, 777);
        assert_eq!(metrics.pids.current, 3);
    }
}
