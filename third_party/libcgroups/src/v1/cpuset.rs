use std::fs;
use std::path::{Path, PathBuf, StripPrefixError};

use nix::unistd;
use oci_spec::runtime::LinuxCpu;
use unistd::Pid;

use super::ControllerType;
use super::controller::Controller;
use super::util::{self, V1MountPointError};
use crate::common::{self, ControllerOpt, WrapIoResult, WrappedIoError};

const CGROUP_CPUSET_CPUS: &str = "cpuset.cpus";
const CGROUP_CPUSET_MEMS: &str = "cpuset.mems";

#[derive(thiserror::Error, Debug)]
pub enum V1CpuSetControllerError {
    #[error("io error: {0}")]
    WrappedIo(#[from] WrappedIoError),
    #[error("bad cgroup path {path}: {err}")]
    BadCgroupPath {
        err: StripPrefixError,
        path: PathBuf,
    },
    #[error("cpuset parent value is empty")]
    EmptyParent,
    #[error("mount point error: {0}")]
    MountPoint(#[from] V1MountPointError),
}

pub struct CpuSet {}

impl Controller for CpuSet {
    type Error = V1CpuSetControllerError;
    type Resource = LinuxCpu;

    fn add_task(pid: Pid, cgroup_path: &Path) -> Result<(), Self::Error> {
        fs::create_dir_all(cgroup_path).wrap_create_dir(cgroup_path)?;

        let mount_point = util::get_subsystem_mount_point(&ControllerType::CpuSet)?;
        Self::ensure_not_empty(&mount_point, cgroup_path, CGROUP_CPUSET_CPUS)?;
        Self::ensure_not_empty(&mount_point, cgroup_path, CGROUP_CPUSET_MEMS)?;

        super::controller::move_task(cgroup_path, pid)?;
        Ok(())
    }

    fn apply(controller_opt: &ControllerOpt, cgroup_path: &Path) -> Result<(), Self::Error> {
        tracing::debug!("Apply CpuSet cgroup config");

        if let Some(cpuset) = Self::needs_to_handle(controller_opt) {
            Self::apply(cgroup_path, cpuset)?;
        }

        Ok(())
    }

    fn needs_to_handle<'a>(controller_opt: &'a ControllerOpt) -> Option<&'a Self::Resource> {
        if let Some(cpuset) = &controller_opt.resources.cpu() {
            if cpuset.cpus().is_some() || cpuset.mems().is_some() {
                return Some(cpuset);
            }
        }

        None
    }
}

impl CpuSet {
    fn apply(cgroup_path: &Path, cpuset: &LinuxCpu) -> Result<(), V1CpuSetControllerError> {
        if let Some(cpus) = &cpuset.cpus() {
            common::write_cgroup_file_str(cgroup_path.join(CGROUP_CPUSET_CPUS), cpus)?;
        }

        if let Some(mems) = &cpuset.mems() {
            common::write_cgroup_file_str(cgroup_path.join(CGROUP_CPUSET_MEMS), mems)?;
        }

        Ok(())
    }

    // if a task is moved into the cgroup and a value has not been set for cpus and mems
    // Errno 28 (no space left on device) will be returned. Therefore we set the value from the parent if required.
    //
    // Read from the cgroup upwards: the first level that holds a value gives it to each empty
    // level below it, top down. A new cgroup under a filled parent costs two reads and a write,
    // where reading every level from the mount point down read each parent twice.
    fn ensure_not_empty(
        mount_point: &Path,
        cgroup_path: &Path,
        interface_file: &str,
    ) -> Result<(), V1CpuSetControllerError> {
        cgroup_path.strip_prefix(mount_point).map_err(|err| {
            V1CpuSetControllerError::BadCgroupPath {
                err,
                path: cgroup_path.to_path_buf(),
            }
        })?;
        let mut empty = Vec::new();
        let mut current = cgroup_path;
        let value = loop {
            let file = current.join(interface_file);
            let value = fs::read_to_string(&file).wrap_read(&file)?;
            if !value.trim().is_empty() {
                break value;
            }
            if current == mount_point {
                return Err(V1CpuSetControllerError::EmptyParent);
            }
            empty.push(file);
            current = current.parent().unwrap_or(mount_point);
        };
        for file in empty.iter().rev() {
            common::write_cgroup_file_str(file, &value)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use oci_spec::runtime::LinuxCpuBuilder;

    use super::*;
    use crate::test::setup;

    #[test]
    fn test_set_cpus() {
        // arrange
        let (tmp, cpus) = setup(CGROUP_CPUSET_CPUS);
        let cpuset = LinuxCpuBuilder::default()
            .cpus("1-3".to_owned())
            .build()
            .unwrap();

        // act
        CpuSet::apply(tmp.path(), &cpuset).expect("apply cpuset");

        // assert
        let content = fs::read_to_string(cpus)
            .unwrap_or_else(|_| panic!("read {CGROUP_CPUSET_CPUS} file content"));
        assert_eq!(content, "1-3");
    }

    #[test]
    fn test_set_mems() {
        // arrange
        let (tmp, mems) = setup(CGROUP_CPUSET_MEMS);
        let cpuset = LinuxCpuBuilder::default()
            .mems("1-3".to_owned())
            .build()
            .unwrap();

        // act
        CpuSet::apply(tmp.path(), &cpuset).expect("apply cpuset");

        // assert
        let content = fs::read_to_string(mems)
            .unwrap_or_else(|_| panic!("read {CGROUP_CPUSET_MEMS} file content"));
        assert_eq!(content, "1-3");
    }

    #[test]
    fn empty_levels_take_the_nearest_value_above_them() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let root = tmp.path();
        let pod = root.join("pod");
        let container = pod.join("container");
        fs::create_dir_all(&container).expect("dirs");
        fs::write(root.join(CGROUP_CPUSET_CPUS), "0-3\n").expect("root");
        fs::write(pod.join(CGROUP_CPUSET_CPUS), "\n").expect("pod");
        fs::write(container.join(CGROUP_CPUSET_CPUS), "").expect("container");
        CpuSet::ensure_not_empty(root, &container, CGROUP_CPUSET_CPUS).expect("filled");
        for dir in [&pod, &container] {
            let value = fs::read_to_string(dir.join(CGROUP_CPUSET_CPUS)).expect("read");
            assert_eq!(value.trim(), "0-3", "{}", dir.display());
        }

        // A level that holds a value is left as it is, and so is everything above it.
        fs::write(pod.join(CGROUP_CPUSET_CPUS), "1").expect("pod");
        fs::write(container.join(CGROUP_CPUSET_CPUS), "").expect("container");
        fs::write(root.join(CGROUP_CPUSET_CPUS), "").expect("root");
        CpuSet::ensure_not_empty(root, &container, CGROUP_CPUSET_CPUS).expect("filled");
        let value = fs::read_to_string(container.join(CGROUP_CPUSET_CPUS)).expect("read");
        assert_eq!(value.trim(), "1");

        // Nothing anywhere up to the mount point: refused, nothing written.
        fs::write(pod.join(CGROUP_CPUSET_CPUS), "").expect("pod");
        fs::write(container.join(CGROUP_CPUSET_CPUS), "").expect("container");
        let err = CpuSet::ensure_not_empty(root, &container, CGROUP_CPUSET_CPUS);
        assert!(
            matches!(err, Err(V1CpuSetControllerError::EmptyParent)),
            "{err:?}"
        );
        assert_eq!(
            fs::read_to_string(pod.join(CGROUP_CPUSET_CPUS)).expect("read"),
            ""
        );
    }
}
