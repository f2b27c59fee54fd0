//! RT group-scheduling budgets on the host's v1 `cpu` hierarchy: what [`ingot_rt::budget`]
//! plans, read and written here. A grant raises the pod's cgroup and ingot's own levels above
//! it as far as the container's budget needs; a release gives back what the grant raised.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ingot_rt::budget::{self, Level};

use crate::CriError;

const RUNTIME: &str = "cpu.rt_runtime_us";

/// Grants read and write levels shared by every pod under ingot's parent: one at a time.
static LOCK: Mutex<()> = Mutex::new(());

/// What a grant raised: each level's path with its runtime before and after.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Grant {
    pub runtime_us: i64,
    pub raised: Vec<(PathBuf, i64, i64)>,
}

/// The v1 hierarchy with the `cpu` controller, where RT group scheduling is compiled in
/// (`cpu.rt_runtime_us` at its root); None on cgroup v2 or a kernel without it.
pub fn cpu_hierarchy(host_root: &Path) -> Option<PathBuf> {
    super::cgroups::v1_controller_hierarchies(host_root)
        .into_iter()
        .find(|h| {
            h.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.split(',').any(|c| c == "cpu"))
                && h.join(RUNTIME).is_file()
        })
}

fn read_runtime(dir: &Path) -> Option<i64> {
    std::fs::read_to_string(dir.join(RUNTIME))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn children_runtime(dir: &Path) -> i64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| read_runtime(&e.path()))
        .map(|r| r.max(0))
        .sum()
}

/// The levels from the hierarchy's root down to `cgroup` (relative to the root), those at or
/// below `own` (ingot's cgroup parent) or `cgroup` itself writable.
fn levels(hierarchy: &Path, cgroup: &str, own: &str) -> Vec<Level> {
    let own = Path::new(own.trim_start_matches('/'));
    let target = Path::new(cgroup.trim_start_matches('/'));
    let mut out = Vec::new();
    let mut relative = PathBuf::new();
    let mut push = |relative: &Path| {
        let dir = hierarchy.join(relative);
        if let Some(runtime) = read_runtime(&dir) {
            out.push(Level {
                writable: relative != Path::new("")
                    && (relative.starts_with(own) || relative == target),
                children: children_runtime(&dir),
                runtime,
                path: dir,
            });
        }
    };
    push(&relative);
    for component in target.components() {
        relative.push(component);
        push(&relative);
    }
    out
}

fn write(path: &Path, runtime: i64) -> std::io::Result<()> {
    std::fs::write(path.join(RUNTIME), runtime.to_string())
}

/// Gives a new child of `cgroup` (a pod's) room for `runtime_us`; None where the host has no
/// RT group scheduling. On a failed write what was already raised is lowered again.
pub fn grant(
    host_root: &Path,
    cgroup: &str,
    own: &str,
    runtime_us: i64,
) -> Result<Option<Grant>, CriError> {
    let Some(hierarchy) = cpu_hierarchy(host_root) else {
        return Ok(None);
    };
    let _one = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let levels = levels(&hierarchy, cgroup, own);
    let pod_level = hierarchy.join(cgroup.trim_start_matches('/'));
    if levels.last().is_none_or(|l| l.path != pod_level) {
        return Err(CriError::FailedPrecondition {
            what: format!("the RT budget of cgroup {cgroup}"),
            reason: format!("{} has no such cgroup", hierarchy.display()),
        });
    }
    let writes =
        budget::grant(&levels, runtime_us).map_err(|err| CriError::FailedPrecondition {
            what: format!("an RT budget of {runtime_us} µs in cgroup {cgroup}"),
            reason: err.to_string(),
        })?;
    let mut raised = Vec::new();
    for (path, after) in writes {
        let before = levels
            .iter()
            .find(|l| l.path == path)
            .map_or(0, |l| l.runtime);
        if let Err(err) = write(&path, after) {
            let done = Grant { runtime_us, raised };
            release_locked(&hierarchy, &done);
            return Err(CriError::Io {
                context: format!("write {}", path.join(RUNTIME).display()),
                source: err,
            });
        }
        tracing::debug!(cgroup = %path.display(), before, after, "RT runtime raised");
        raised.push((path, before, after));
    }
    Ok(Some(Grant { runtime_us, raised }))
}

/// Gives back what `grant` raised, once the container holding it is gone.
pub fn release(host_root: &Path, grant: &Grant) {
    if let Some(hierarchy) = cpu_hierarchy(host_root) {
        let _one = LOCK.lock().unwrap_or_else(|p| p.into_inner());
        release_locked(&hierarchy, grant);
    }
}

fn release_locked(_hierarchy: &Path, grant: &Grant) {
    let now: Vec<Level> = grant
        .raised
        .iter()
        .filter_map(|(path, _, _)| {
            Some(Level {
                path: path.clone(),
                runtime: read_runtime(path)?,
                children: children_runtime(path),
                writable: true,
            })
        })
        .collect();
    for (path, runtime) in budget::release(&grant.raised, &now) {
        // A removed child cgroup's group leaves the kernel's sum of children only once its last
        // reference is dropped, a moment after rmdir: until then a lower value is EINVAL.
        let mut written = write(&path, runtime);
        for _ in 0..40 {
            match &written {
                Err(err) if err.raw_os_error() == Some(libc::EINVAL) => {
                    std::thread::sleep(std::time::Duration::from_millis(25));
                    written = write(&path, runtime);
                }
                _ => break,
            }
        }
        match written {
            Ok(()) => tracing::debug!(cgroup = %path.display(), runtime, "RT runtime given back"),
            Err(err) => {
                tracing::warn!(cgroup = %path.display(), error = %err, "RT runtime not given back")
            }
        }
    }
}
