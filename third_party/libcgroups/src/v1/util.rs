use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;

use pathrs::flags::OpenFlags;
use pathrs::procfs::{ProcfsBase, ProcfsHandle};
use procfs::ProcError;
use procfs::process::MountInfo;

use super::ControllerType;
use super::controller_type::CONTROLLERS;

#[derive(thiserror::Error, Debug)]
pub enum V1MountPointError {
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
    #[error("failed to get mountinfo: {0}")]
    MountInfo(ProcError),
    #[error("could not find mountpoint for {subsystem}")]
    NotFound { subsystem: ControllerType },
    #[error(transparent)]
    Pathrs(#[from] pathrs::error::Error),
}

/// List all cgroup v1 subsystem mount points on the system. This can include unsupported
/// subsystems, comounted controllers and named hierarchies.
///
/// Read once per process and kept: a node's v1 hierarchies are mounted at boot and stay, and
/// a container start asks for them in each of its processes (the runtime, the intermediate,
/// the init), each a fork of the one before, so one read serves them all.
pub fn list_subsystem_mount_points() -> Result<Vec<PathBuf>, V1MountPointError> {
    if let Some(known) = MOUNT_POINTS.get() {
        return Ok(known.clone());
    }
    let reader = BufReader::new(ProcfsHandle::new()?.open(
        ProcfsBase::ProcSelf,
        "mountinfo",
        OpenFlags::O_RDONLY | OpenFlags::O_CLOEXEC,
    )?);
    let read = subsystem_mount_points(reader.lines().map(|lr| lr.map_err(V1MountPointError::Io)))?;
    Ok(MOUNT_POINTS.get_or_init(|| read).clone())
}

static MOUNT_POINTS: std::sync::OnceLock<Vec<PathBuf>> = std::sync::OnceLock::new();

/// Keeps the v1 mount points of `mountinfo` (this process's `/proc/self/mountinfo` text, read
/// by the caller for its own needs) for [`list_subsystem_mount_points`], so that neither this
/// process nor the ones it forks read it again. Text that does not parse is ignored.
pub fn remember_subsystem_mount_points(mountinfo: &str) {
    if MOUNT_POINTS.get().is_some() {
        return;
    }
    if let Ok(found) = subsystem_mount_points(mountinfo.lines().map(|l| Ok(l.to_string()))) {
        let _ = MOUNT_POINTS.set(found);
    }
}

fn subsystem_mount_points(
    lines: impl Iterator<Item = Result<String, V1MountPointError>>,
) -> Result<Vec<PathBuf>, V1MountPointError> {
    lines
        .map(|lr| {
            lr.and_then(|line| MountInfo::from_line(&line).map_err(V1MountPointError::MountInfo))
        })
        .try_fold(Vec::new(), |mut mount_points, r| {
            r.map(|m| {
                if m.fs_type == "cgroup" {
                    mount_points.push(m.mount_point);
                }
                mount_points
            })
        })
}

/// List the mount points of all currently supported cgroup subsystems.
pub fn list_supported_mount_points() -> Result<HashMap<ControllerType, PathBuf>, V1MountPointError>
{
    let mut mount_paths = HashMap::with_capacity(CONTROLLERS.len());

    for controller in CONTROLLERS {
        if let Ok(mount_point) = get_subsystem_mount_point(controller) {
            mount_paths.insert(controller.to_owned(), mount_point);
        }
    }

    Ok(mount_paths)
}

pub fn get_subsystem_mount_point(subsystem: &ControllerType) -> Result<PathBuf, V1MountPointError> {
    let subsystem_name = subsystem.to_string();
    list_subsystem_mount_points()?
        .into_iter()
        .find(|mount_point| mounts_subsystem(mount_point, &subsystem_name))
        .ok_or(V1MountPointError::NotFound {
            subsystem: *subsystem,
        })
}

/// Whether the v1 hierarchy mounted at `mount_point` is the one of `subsystem_name`.
pub(crate) fn mounts_subsystem(mount_point: &std::path::Path, subsystem_name: &str) -> bool {
    // Some systems mount net_prio and net_cls in the same directory
    // other systems mount them in their own directories. This
    // should handle both cases.
    match subsystem_name {
        "net_cls" => ["net_cls,net_prio", "net_prio,net_cls", "net_cls"]
            .iter()
            .any(|s| mount_point.ends_with(s)),
        "net_prio" => ["net_cls,net_prio", "net_prio,net_cls", "net_prio"]
            .iter()
            .any(|s| mount_point.ends_with(s)),
        "cpu" => ["cpu,cpuacct", "cpu"]
            .iter()
            .any(|s| mount_point.ends_with(s)),
        "cpuacct" => ["cpu,cpuacct", "cpuacct"]
            .iter()
            .any(|s| mount_point.ends_with(s)),
        _ => mount_point.ends_with(subsystem_name),
    }
}
