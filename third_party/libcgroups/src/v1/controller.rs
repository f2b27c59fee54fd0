use std::fs;
use std::path::Path;

use nix::unistd::Pid;

use crate::common::{self, CGROUP_PROCS, ControllerOpt, WrapIoResult, WrappedIoError};

pub(super) trait Controller {
    type Error: From<WrappedIoError>;
    type Resource;

    /// Adds a new task specified by its pid to the cgroup
    fn add_task(pid: Pid, cgroup_path: &Path) -> Result<(), Self::Error> {
        fs::create_dir_all(cgroup_path).wrap_create_dir(cgroup_path)?;
        move_task(cgroup_path, pid)?;
        Ok(())
    }

    /// Applies resource restrictions to the cgroup
    fn apply(controller_opt: &ControllerOpt, cgroup_root: &Path) -> Result<(), Self::Error>;

    /// Checks if the controller needs to handle this request
    fn needs_to_handle<'a>(controller_opt: &'a ControllerOpt) -> Option<&'a Self::Resource>;
}

/// Moves `pid` into the v1 cgroup at `cgroup_path`.
///
/// A write to `cgroup.procs` takes the kernel's global threadgroup lock, and the first writer
/// after a quiet spell waits a full RCU grace period for it (5-17 ms per container start on a
/// 2-CPU host). A single-threaded process moving itself writes "0" to `tasks` instead, which the
/// kernel serves without that lock (`cgroup_procs_write_start`: no pid, no threadgroup); its
/// children are born in the cgroup. libcontainer's intermediate process moves itself this way.
///
/// Pid 0 is the calling thread of a process already known to be single-threaded (the manager
/// checks once for all its controllers), written as "0" to `tasks` as the kernel reads it.
pub(super) fn move_task(cgroup_path: &Path, pid: Pid) -> Result<(), WrappedIoError> {
    if pid.as_raw() == 0 || (pid == Pid::this() && single_threaded()) {
        common::write_cgroup_file_str(cgroup_path.join(CGROUP_TASKS), "0")
    } else {
        common::write_cgroup_file(cgroup_path.join(CGROUP_PROCS), pid)
    }
}

const CGROUP_TASKS: &str = "tasks";

/// Whether the calling process has exactly one thread (`/proc/self/task` has one entry).
pub(super) fn single_threaded() -> bool {
    fs::read_dir("/proc/self/task")
        .map(|tasks| tasks.take(2).count() == 1)
        .unwrap_or(false)
}
