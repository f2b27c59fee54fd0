//! OCI runtime spec preparation for ingot: everything decided about a container's `config.json`
//! before a runtime touches the host. Loading with errors that name the file and the field,
//! refusing cgroup paths that would escape the cgroup parent, clamping `oomScoreAdj` to what the
//! host allows, deciding where hugepage limits can land, and checking that the process's binary
//! exists in the rootfs. Pure functions of the spec and of host facts passed in; the only I/O is
//! reading the bundle and looking up files in the rootfs.

use std::{
    collections::BTreeMap,
    fs,
    path::{Component, Path, PathBuf},
};

use oci_spec::runtime::{Process, Spec};

pub mod cri;
pub mod steps;

/// Everything that can be wrong with a container's spec or bundle.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed {path}: {reason}")]
    Malformed { path: PathBuf, reason: String },
    #[error("invalid {field}: {reason}")]
    InvalidField { field: &'static str, reason: String },
    #[error("{field}: {source}")]
    Placement {
        field: &'static str,
        #[source]
        source: ingot_placement::PlacementError,
    },
    #[error("cannot build {what}: {reason}")]
    Build { what: &'static str, reason: String },
    #[error("rootfs {path} does not exist")]
    RootfsMissing { path: PathBuf },
    #[error("exec: \"{name}\": executable file not found in $PATH")]
    ExecutableNotFound { name: String },
    #[error(
        "linux.resources.hugepageLimits[{page_size}] = {limit}: the hugetlb controller is not \
         available to this container ({reason})"
    )]
    HugetlbUnavailable {
        page_size: String,
        limit: u64,
        reason: String,
    },
}

/// Where the hugetlb controller can be used from, as discovered on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HugetlbSupport {
    /// A cgroup v1 hugetlb hierarchy is mounted: the cgroup manager applies limits itself.
    V1,
    /// The unified hierarchy holds hugetlb and the cgroup parent delegates it, but the container's
    /// other controllers are managed through v1: the runtime writes `hugetlb.*.max` itself.
    UnifiedBeside,
    /// A pure cgroup v2 host with hugetlb delegated: the cgroup manager applies limits itself.
    Unified,
    /// Nowhere to put a limit; the reason says why, for the error message.
    Unavailable { reason: String },
}

/// Host facts the preparation depends on.
#[derive(Debug, Clone)]
pub struct HostFacts {
    /// The lowest `oom_score_adj` this process may hand to a child (its own, without
    /// CAP_SYS_RESOURCE).
    pub min_oom_score_adj: i32,
    pub hugetlb: HugetlbSupport,
}

/// A spec ready for the runtime, with what was changed and why.
#[derive(Debug)]
pub struct Prepared {
    pub spec: Spec,
    /// Absolute cgroup path of the container (below the cgroup root of each hierarchy).
    pub cgroups_path: PathBuf,
    /// Absolute rootfs path.
    pub rootfs: PathBuf,
    /// Hugepage limits the runtime writes into the unified hierarchy itself (page size → bytes).
    pub unified_hugetlb: BTreeMap<String, u64>,
    /// Changes made to the spec, each a sentence for the log.
    pub warnings: Vec<String>,
}

/// Reads and parses `<bundle>/config.json`.
pub fn load_spec(bundle: &Path) -> Result<Spec, OciError> {
    let path = bundle.join("config.json");
    let text = fs::read(&path).map_err(|source| OciError::Read {
        path: path.clone(),
        source,
    })?;
    serde_json::from_slice(&text).map_err(|err| OciError::Malformed {
        path,
        reason: err.to_string(),
    })
}

/// Parses a process spec (the JSON containerd passes for an exec).
pub fn parse_process(json: &[u8]) -> Result<Process, OciError> {
    serde_json::from_slice(json).map_err(|err| OciError::Malformed {
        path: PathBuf::from("exec process spec"),
        reason: err.to_string(),
    })
}

/// Checks a `cgroupsPath`: it must be absolute and must not climb with `..`. A relative path
/// would be resolved against the caller's own cgroup, which is not ours to touch.
pub fn validate_cgroups_path(path: &str) -> Result<PathBuf, OciError> {
    let invalid = |reason: &str| OciError::InvalidField {
        field: "linux.cgroupsPath",
        reason: format!("{path:?} {reason}"),
    };
    if path.contains(':') {
        return Err(invalid(
            "uses the systemd slice:prefix:name form; only the cgroupfs driver is supported",
        ));
    }
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(invalid("is relative; an absolute path is required"));
    }
    if p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(invalid("contains \"..\""));
    }
    if p == Path::new("/") {
        return Err(invalid("is the cgroup root"));
    }
    Ok(p.to_path_buf())
}

/// Prepares the spec of a new container: validation, defaults and clamping.
pub fn prepare(
    mut spec: Spec,
    container_id: &str,
    bundle: &Path,
    host: &HostFacts,
) -> Result<Prepared, OciError> {
    let mut warnings = Vec::new();

    let root = spec.root().as_ref().ok_or(OciError::InvalidField {
        field: "root",
        reason: "missing".into(),
    })?;
    let rootfs = if root.path().is_absolute() {
        root.path().clone()
    } else {
        bundle.join(root.path())
    };
    if !rootfs.is_dir() {
        return Err(OciError::RootfsMissing { path: rootfs });
    }
    let mut root = root.clone();
    root.set_path(rootfs.clone());
    spec.set_root(Some(root));

    let process = spec.process().as_ref().ok_or(OciError::InvalidField {
        field: "process",
        reason: "missing".into(),
    })?;
    check_executable(&rootfs, process)?;
    let mut process = process.clone();
    if let Some(adj) = process.oom_score_adj() {
        let clamped = clamp_oom_score_adj(adj, host.min_oom_score_adj);
        if clamped != adj {
            warnings.push(format!(
                "process.oomScoreAdj {adj} raised to {clamped}: lowering it below the runtime's \
                 own needs CAP_SYS_RESOURCE"
            ));
            process.set_oom_score_adj(Some(clamped));
        }
    }
    spec.set_process(Some(process));

    let mut linux = spec.linux().clone().ok_or(OciError::InvalidField {
        field: "linux",
        reason: "missing".into(),
    })?;
    let cgroups_path = match linux.cgroups_path() {
        Some(path) => validate_cgroups_path(&path.to_string_lossy())?,
        None => {
            let path = PathBuf::from(format!("/ingot/{container_id}"));
            warnings.push(format!(
                "linux.cgroupsPath not set; using {}",
                path.display()
            ));
            path
        }
    };
    linux.set_cgroups_path(Some(cgroups_path.clone()));

    let mut unified_hugetlb = BTreeMap::new();
    if let Some(mut resources) = linux.resources().clone() {
        if let Some(limits) = resources.hugepage_limits().clone() {
            match &host.hugetlb {
                HugetlbSupport::V1 | HugetlbSupport::Unified => {}
                HugetlbSupport::UnifiedBeside => {
                    for limit in &limits {
                        let bytes =
                            u64::try_from(limit.limit()).map_err(|_| OciError::InvalidField {
                                field: "linux.resources.hugepageLimits",
                                reason: format!(
                                    "negative limit {} for page size {}",
                                    limit.limit(),
                                    limit.page_size()
                                ),
                            })?;
                        unified_hugetlb.insert(limit.page_size().clone(), bytes);
                    }
                    resources.set_hugepage_limits(None);
                }
                HugetlbSupport::Unavailable { reason } => {
                    if let Some(limit) = limits.iter().find(|l| l.limit() != 0) {
                        return Err(OciError::HugetlbUnavailable {
                            page_size: limit.page_size().clone(),
                            limit: u64::try_from(limit.limit()).unwrap_or(0),
                            reason: reason.clone(),
                        });
                    }
                    if !limits.is_empty() {
                        warnings.push(format!(
                            "zero hugepage limits ({}) not applied: {reason}",
                            limits
                                .iter()
                                .map(|l| l.page_size().as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ));
                    }
                    resources.set_hugepage_limits(None);
                }
            }
        }
        linux.set_resources(Some(resources));
    }
    spec.set_linux(Some(linux));

    Ok(Prepared {
        spec,
        cgroups_path,
        rootfs,
        unified_hugetlb,
        warnings,
    })
}

/// The `oom_score_adj` a child may get: never below the runtime's own floor.
pub fn clamp_oom_score_adj(requested: i32, floor: i32) -> i32 {
    requested.clamp(floor.max(-1000), 1000)
}

/// Checks that `process.args[0]` names a file inside the rootfs, searching the process's `PATH`
/// when it has no slash, as `execvp` in the container will. Links are not followed: an absolute
/// link target is only meaningful inside the container.
pub fn check_executable(rootfs: &Path, process: &Process) -> Result<(), OciError> {
    let name = process
        .args()
        .as_ref()
        .and_then(|args| args.first())
        .ok_or(OciError::InvalidField {
            field: "process.args",
            reason: "empty; a command is required".into(),
        })?;
    if name.is_empty() {
        return Err(OciError::InvalidField {
            field: "process.args[0]",
            reason: "empty".into(),
        });
    }
    let exists = |candidate: &Path| -> bool {
        let relative = candidate.strip_prefix("/").unwrap_or(candidate);
        fs::symlink_metadata(rootfs.join(relative)).is_ok_and(|meta| !meta.is_dir())
    };
    let found = if name.contains('/') {
        let cwd = process.cwd();
        exists(&cwd.join(name))
    } else {
        let path_var = process
            .env()
            .as_ref()
            .and_then(|env| env.iter().find_map(|kv| kv.strip_prefix("PATH=")))
            .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        path_var
            .split(':')
            .filter(|dir| !dir.is_empty())
            .any(|dir| exists(&Path::new(dir).join(name)))
    };
    if found {
        Ok(())
    } else {
        Err(OciError::ExecutableNotFound { name: name.clone() })
    }
}

#[cfg(test)]
mod tests;
