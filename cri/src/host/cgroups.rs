//! The pod cgroups ingotd creates (one per v1 hierarchy, or the unified one), the pod-init's leaf,
//! whether a container's cgroup saw an OOM kill, and their removal; never a cgroup ingot did not
//! create. Every function takes the node's root (`/` in production), under which
//! `sys/fs/cgroup` is read.

use std::path::{Path, PathBuf};

use crate::{store::PodRecord, CriError};

/// `<host root>/sys/fs/cgroup`.
pub fn cgroup_mount(host_root: &Path) -> PathBuf {
    host_root.join("sys/fs/cgroup")
}

/// Where a cgroup path can live: each hierarchy under /sys/fs/cgroup (v1 and the hybrid
/// unified one), and /sys/fs/cgroup itself (pure v2).
pub fn cgroup_roots(host_root: &Path) -> Vec<PathBuf> {
    let mount = cgroup_mount(host_root);
    let mut roots: Vec<PathBuf> = std::fs::read_dir(&mount)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    roots.sort();
    roots.push(mount);
    roots
}

/// The v1 controller hierarchies under /sys/fs/cgroup (not the hybrid unified one, nor the
/// named systemd one), where a pod's cgroup is made and its pod init joins it.
pub fn v1_controller_hierarchies(host_root: &Path) -> Vec<PathBuf> {
    let root = cgroup_mount(host_root);
    cgroup_roots(host_root)
        .into_iter()
        .filter(|hierarchy| {
            let name = hierarchy.file_name().and_then(|n| n.to_str()).unwrap_or("");
            *hierarchy != root && !matches!(name, "unified" | "systemd") && hierarchy.is_dir()
        })
        .collect()
}

/// Creates the pod's cgroup in each v1 controller hierarchy where it is missing, as the sandbox
/// container of containerd does at RunPodSandbox, so the pod's first CreateContainer makes one
/// cgroup level, not two (a v1 cgroup costs one directory per hierarchy, each with per-controller
/// state to set up). It runs beside the CNI plugin. Returns what it created, parents first, for
/// removal when the pod fails to start. On cgroup v2 the runtime makes the path itself, enabling
/// controllers on the way down.
pub fn create_pod_cgroups(host_root: &Path, parent: &str) -> Vec<PathBuf> {
    let root = cgroup_mount(host_root);
    if root.join("cgroup.controllers").exists() {
        return Vec::new();
    }
    let relative = Path::new(parent.trim_start_matches('/'));
    let mut created = Vec::new();
    for hierarchy in v1_controller_hierarchies(host_root) {
        let name = hierarchy.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let mut dir = hierarchy.clone();
        for component in relative.components() {
            dir.push(component);
            match std::fs::create_dir(&dir) {
                Ok(()) => {
                    if name == "cpuset" {
                        inherit_cpuset(&dir);
                    }
                    created.push(dir.clone());
                }
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(err) => {
                    // The runtime creates it later, or fails with the reason.
                    tracing::debug!(dir = %dir.display(), error = %err, "pod cgroup not created");
                    break;
                }
            }
        }
    }
    created
}

/// Whether the cgroup at `parent` exists (in the unified hierarchy, or in any v1 controller
/// hierarchy): a kubelet makes its pod's before RunPodSandbox; one that is missing is made by
/// ingot (or the runtime for it), and so removed with the pod.
pub fn cgroup_exists(host_root: &Path, parent: &str) -> bool {
    let root = cgroup_mount(host_root);
    let relative = Path::new(parent.trim_start_matches('/'));
    if root.join("cgroup.controllers").exists() {
        return root.join(relative).is_dir();
    }
    v1_controller_hierarchies(host_root)
        .iter()
        .any(|hierarchy| hierarchy.join(relative).is_dir())
}

/// On cgroup v2 a process may not sit in a cgroup whose children have controllers enabled,
/// so the pod init gets a leaf of its own under the pod's cgroup (as a pause container has).
const POD_INIT_CGROUP: &str = "pod-init";

/// The files through which the pod init joins the pod's cgroup: `tasks` in each v1 hierarchy
/// where the pod cgroup exists, or `cgroup.procs` of its v2 leaf (created here, and added to
/// `created`).
pub fn pod_init_cgroup_files(
    host_root: &Path,
    parent: &str,
    created: &mut Vec<PathBuf>,
) -> Result<Vec<PathBuf>, CriError> {
    let root = cgroup_mount(host_root);
    let relative = Path::new(parent.trim_start_matches('/'));
    if root.join("cgroup.controllers").exists() {
        let mut dir = root.to_path_buf();
        for component in relative.join(POD_INIT_CGROUP).components() {
            dir.push(component);
            match std::fs::create_dir(&dir) {
                Ok(()) => created.push(dir.clone()),
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(err) => return Err(CriError::io(format!("create {}", dir.display()))(err)),
            }
        }
        return Ok(vec![dir.join("cgroup.procs")]);
    }
    Ok(v1_controller_hierarchies(host_root)
        .into_iter()
        .map(|hierarchy| hierarchy.join(relative).join("tasks"))
        .filter(|tasks| tasks.exists())
        .collect())
}

/// A new v1 cpuset cgroup starts with no CPUs and no memory nodes, and no process can join it
/// (ENOSPC) until they are set: it gets its parent's, as libcontainer does for a container's.
fn inherit_cpuset(dir: &Path) {
    let Some(parent) = dir.parent() else { return };
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let own = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        if !own.trim().is_empty() {
            continue;
        }
        let inherited = std::fs::read_to_string(parent.join(file)).unwrap_or_default();
        if let Err(err) = std::fs::write(dir.join(file), inherited.trim()) {
            tracing::debug!(dir = %dir.display(), file, error = %err, "cpuset not inherited");
        }
    }
}

/// Removes cgroup directories made by [`create_pod_cgroups`], children first.
pub fn remove_created_cgroups(created: &[PathBuf]) {
    for dir in created.iter().rev() {
        let _ = std::fs::remove_dir(dir);
    }
}

/// Removes the pod init's v2 leaf, and the pod's cgroup where ingotd made it. The pod init
/// was just killed; one not reaped by ingotd (after a restart its parent is another) may take
/// a moment to leave the cgroup.
pub fn remove_pod_cgroup(host_root: &Path, pod: &PodRecord) {
    if pod.cgroup_parent.is_empty() {
        return;
    }
    let relative = pod.cgroup_parent.trim_start_matches('/');
    for root in cgroup_roots(host_root) {
        let dir = root.join(relative);
        let mut dirs = vec![dir.join(POD_INIT_CGROUP)];
        if pod.owns_cgroup {
            dirs.push(dir);
        }
        for dir in dirs.iter().filter(|d| d.is_dir()) {
            remove_cgroup_dir(dir);
        }
    }
}

/// Removes one cgroup directory, waiting up to 100 ms for processes just killed (and reaped
/// by another parent) to leave it; one that still holds live processes is left, with a log line.
pub fn remove_cgroup_dir(dir: &Path) {
    for _ in 0..20 {
        match std::fs::remove_dir(dir) {
            Err(err) if err.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(cgroup = %dir.display(), error = %err, "cgroup not removed");
                return;
            }
            _ => return,
        }
    }
    tracing::warn!(cgroup = %dir.display(), "cgroup not removed: processes still in it");
}

/// Removes an (empty of processes) cgroup directory tree, deepest first.
pub fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
    remove_cgroup_dir(dir);
}

/// Whether the kernel OOM-killed in the memory cgroup at `relative` (v1 `memory.oom_control`'s
/// `oom_kill` count, or v2 `memory.events`).
pub fn oom_killed(host_root: &Path, relative: &str) -> bool {
    controller_dirs(host_root, "memory", relative)
        .iter()
        .any(|dir| {
            ["memory.oom_control", "memory.events"].iter().any(|file| {
                std::fs::read_to_string(dir.join(file)).is_ok_and(|text| {
                    text.lines().any(|line| {
                        line.strip_prefix("oom_kill ")
                            .is_some_and(|n| n.trim().parse::<u64>().is_ok_and(|n| n > 0))
                    })
                })
            })
        })
}

/// CPU time and memory of the cgroup at `relative`, its children included (a pod's: what its
/// containers used, those that exited too, and its pod-init).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CgroupUsage {
    pub cpu_ns: u64,
    pub memory_usage: u64,
    /// Usage less inactive file pages, as the kubelet's eviction reads it.
    pub working_set: u64,
    pub rss: u64,
    /// The memory limit, 0 for none.
    pub memory_limit: u64,
}

/// The usage of the cgroup at `relative`, from the v1 cpuacct and memory hierarchies or the
/// unified one; None where either cannot be read.
pub fn usage(host_root: &Path, relative: &str) -> Option<CgroupUsage> {
    let [v1_memory, unified] = controller_dirs(host_root, "memory", relative);
    let [v1_cpuacct, _] = controller_dirs(host_root, "cpuacct", relative);
    let read = |path: PathBuf| std::fs::read_to_string(path).ok();
    let number = |text: Option<String>| text.and_then(|t| t.trim().parse::<u64>().ok());
    let field = |text: &str, name: &str| {
        text.lines().find_map(|line| {
            line.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|n| n.trim().parse::<u64>().ok())
        })
    };
    if let (Some(cpu_ns), Some(memory_usage), Some(stat)) = (
        number(read(v1_cpuacct.join("cpuacct.usage"))),
        number(read(v1_memory.join("memory.usage_in_bytes"))),
        read(v1_memory.join("memory.stat")),
    ) {
        let inactive = field(&stat, "total_inactive_file").unwrap_or(0);
        return Some(CgroupUsage {
            cpu_ns,
            memory_usage,
            working_set: memory_usage.saturating_sub(inactive),
            rss: field(&stat, "total_rss").unwrap_or(0),
            memory_limit: number(read(v1_memory.join("memory.limit_in_bytes"))).unwrap_or(0),
        });
    }
    let cpu = read(unified.join("cpu.stat"))?;
    let memory_usage = number(read(unified.join("memory.current")))?;
    let stat = read(unified.join("memory.stat"))?;
    Some(CgroupUsage {
        cpu_ns: field(&cpu, "usage_usec")? * 1000,
        memory_usage,
        working_set: memory_usage.saturating_sub(field(&stat, "inactive_file").unwrap_or(0)),
        rss: field(&stat, "anon").unwrap_or(0),
        // "max" for none.
        memory_limit: number(read(unified.join("memory.max"))).unwrap_or(0),
    })
}

/// The processes in the cgroup at `relative` and below it (`pids.current`, of the v1 pids
/// hierarchy or the unified one); None where no pids controller holds it.
pub fn process_count(host_root: &Path, relative: &str) -> Option<u64> {
    controller_dirs(host_root, "pids", relative)
        .iter()
        .find_map(|dir| {
            std::fs::read_to_string(dir.join("pids.current"))
                .ok()
                .and_then(|text| text.trim().parse().ok())
        })
}

/// Where the cgroup at `relative` holds `controller`'s files: its v1 hierarchy, then the
/// unified one.
fn controller_dirs(host_root: &Path, controller: &str, relative: &str) -> [PathBuf; 2] {
    let mount = cgroup_mount(host_root);
    let relative = relative.trim_start_matches('/');
    [mount.join(controller).join(relative), mount.join(relative)]
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    /// A hybrid v1 tree: controller hierarchies, the unified one and the named systemd one.
    fn v1_tree() -> tempfile::TempDir {
        let root = tempfile::tempdir().expect("tempdir");
        for hierarchy in ["cpu", "memory", "cpuset", "unified", "systemd"] {
            fs::create_dir_all(cgroup_mount(root.path()).join(hierarchy)).expect("hierarchy");
        }
        let cpuset = cgroup_mount(root.path()).join("cpuset");
        fs::write(cpuset.join("cpuset.cpus"), "0-3\n").expect("cpus");
        fs::write(cpuset.join("cpuset.mems"), "0\n").expect("mems");
        root
    }

    #[test]
    fn v1_pod_cgroups_in_controller_hierarchies_only_with_the_parents_cpuset() {
        let root = v1_tree();
        let created = create_pod_cgroups(root.path(), "/ingot/pod1");
        let mount = cgroup_mount(root.path());
        let expected: Vec<PathBuf> = ["cpu", "cpuset", "memory"]
            .iter()
            .flat_map(|h| {
                [
                    mount.join(h).join("ingot"),
                    mount.join(h).join("ingot/pod1"),
                ]
            })
            .collect();
        assert_eq!(created, expected);
        assert!(!mount.join("unified/ingot").exists() && !mount.join("systemd/ingot").exists());
        let pod = mount.join("cpuset/ingot/pod1");
        assert_eq!(
            fs::read_to_string(pod.join("cpuset.cpus")).expect("cpus"),
            "0-3"
        );
        assert_eq!(
            fs::read_to_string(pod.join("cpuset.mems")).expect("mems"),
            "0"
        );

        // The pod init joins through `tasks`, where the kernel has made one.
        fs::write(mount.join("cpu/ingot/pod1/tasks"), "").expect("tasks");
        let mut more = Vec::new();
        let joins = pod_init_cgroup_files(root.path(), "/ingot/pod1", &mut more).expect("joins");
        assert_eq!(joins, vec![mount.join("cpu/ingot/pod1/tasks")]);
        assert!(more.is_empty());

        // (A real cgroup's files go with its directory; here only the memory one has none.)
        remove_created_cgroups(&created);
        assert!(!mount.join("memory/ingot").exists());
    }

    #[test]
    fn v2_pod_init_gets_a_leaf_of_its_own() {
        let root = tempfile::tempdir().expect("tempdir");
        let mount = cgroup_mount(root.path());
        fs::create_dir_all(&mount).expect("mount");
        fs::write(mount.join("cgroup.controllers"), "cpu memory\n").expect("controllers");
        assert!(create_pod_cgroups(root.path(), "/ingot/pod1").is_empty());
        let mut created = Vec::new();
        let joins = pod_init_cgroup_files(root.path(), "/ingot/pod1", &mut created).expect("joins");
        assert_eq!(joins, vec![mount.join("ingot/pod1/pod-init/cgroup.procs")]);
        assert_eq!(
            created,
            vec![
                mount.join("ingot"),
                mount.join("ingot/pod1"),
                mount.join("ingot/pod1/pod-init")
            ]
        );
    }

    #[test]
    fn oom_kills_are_read_from_v1_and_v2_files() {
        let root = v1_tree();
        let mount = cgroup_mount(root.path());
        let v1 = mount.join("memory/ingot/p/c1");
        fs::create_dir_all(&v1).expect("v1");
        fs::write(
            v1.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
        )
        .expect("v1 file");
        assert!(!oom_killed(root.path(), "/ingot/p/c1"));
        fs::write(
            v1.join("memory.oom_control"),
            "oom_kill_disable 0\noom_kill 2\n",
        )
        .expect("v1");
        assert!(oom_killed(root.path(), "/ingot/p/c1"));
        let v2 = mount.join("ingot/p/c2");
        fs::create_dir_all(&v2).expect("v2");
        fs::write(v2.join("memory.events"), "low 0\noom 1\noom_kill 1\n").expect("v2 file");
        assert!(oom_killed(root.path(), "/ingot/p/c2"));
        assert!(!oom_killed(root.path(), "/ingot/p/none"));
    }

    #[test]
    fn process_count_is_the_pids_controllers() {
        let root = v1_tree();
        let mount = cgroup_mount(root.path());
        assert_eq!(process_count(root.path(), "/pods/a"), None);
        let pod = mount.join("pids/pods/a");
        fs::create_dir_all(&pod).expect("pod");
        fs::write(pod.join("pids.current"), "3\n").expect("pids");
        assert_eq!(process_count(root.path(), "/pods/a"), Some(3));
        // A unified hierarchy's own pids.current.
        let unified = tempfile::tempdir().expect("tempdir");
        let pod = cgroup_mount(unified.path()).join("pods/b");
        fs::create_dir_all(&pod).expect("pod");
        fs::write(pod.join("pids.current"), "7\n").expect("pids");
        assert_eq!(process_count(unified.path(), "pods/b"), Some(7));
    }

    #[test]
    fn usage_of_a_v1_or_unified_cgroup() {
        let root = v1_tree();
        let mount = cgroup_mount(root.path());
        assert_eq!(usage(root.path(), "/pods/a"), None);
        for hierarchy in ["cpuacct", "memory"] {
            fs::create_dir_all(mount.join(hierarchy).join("pods/a")).expect("pod");
        }
        fs::write(mount.join("cpuacct/pods/a/cpuacct.usage"), "5000\n").expect("cpu");
        fs::write(mount.join("memory/pods/a/memory.usage_in_bytes"), "1000\n").expect("mem");
        fs::write(
            mount.join("memory/pods/a/memory.stat"),
            "cache 10\nrss 1\ninactive_file 1\ntotal_rss 700\ntotal_inactive_file 300\n",
        )
        .expect("stat");
        fs::write(mount.join("memory/pods/a/memory.limit_in_bytes"), "4096\n").expect("limit");
        let expected = CgroupUsage {
            cpu_ns: 5000,
            memory_usage: 1000,
            working_set: 700,
            rss: 700,
            memory_limit: 4096,
        };
        assert_eq!(usage(root.path(), "/pods/a"), Some(expected));

        let unified = tempfile::tempdir().expect("tempdir");
        let pod = cgroup_mount(unified.path()).join("pods/b");
        fs::create_dir_all(&pod).expect("pod");
        fs::write(pod.join("cpu.stat"), "usage_usec 5\nuser_usec 3\n").expect("cpu");
        fs::write(pod.join("memory.current"), "1000\n").expect("mem");
        fs::write(
            pod.join("memory.stat"),
            "anon 700\nfile 300\ninactive_file 300\n",
        )
        .expect("stat");
        fs::write(pod.join("memory.max"), "max\n").expect("max");
        let unlimited = CgroupUsage {
            memory_limit: 0,
            ..expected
        };
        assert_eq!(usage(unified.path(), "pods/b"), Some(unlimited));
        fs::write(pod.join("memory.max"), "4096\n").expect("max");
        assert_eq!(usage(unified.path(), "pods/b"), Some(expected));
    }
}
