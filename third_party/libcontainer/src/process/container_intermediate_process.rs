use std::os::fd::FromRawFd;

use libcgroups::common::CgroupManager;
use nix::unistd::{Gid, Pid, Uid, close, getpid, write};
use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType, LinuxResources};

use super::args::{ContainerArgs, ContainerType};
use super::channel::{IntermediateReceiver, MainSender};
use super::fork::CloneCb;
use super::init::process as init_process;
use crate::error::MissingSpecError;
use crate::namespaces::Namespaces;
use crate::process::{channel, cpu_affinity, fork};
use crate::utils::rootless_required;

#[derive(Debug, thiserror::Error)]
pub enum IntermediateProcessError {
    #[error(transparent)]
    Channel(#[from] channel::ChannelError),
    #[error(transparent)]
    Namespace(#[from] crate::namespaces::NamespaceError),
    #[error(transparent)]
    Syscall(#[from] crate::syscall::SyscallError),
    #[error("failed to launch init process")]
    InitProcess(#[source] fork::CloneError),
    #[error("cgroup error: {0}")]
    Cgroup(String),
    #[error(transparent)]
    Procfs(#[from] procfs::ProcError),
    #[error("exec notify failed")]
    ExecNotify(#[source] nix::Error),
    #[error(transparent)]
    MissingSpec(#[from] crate::error::MissingSpecError),
    #[error("CPU affinity error {0}")]
    CpuAffinity(#[from] cpu_affinity::CPUAffinityError),
    #[error("other error")]
    Other(String),
}

type Result<T> = std::result::Result<T, IntermediateProcessError>;

pub fn container_intermediate_process(
    args: &ContainerArgs,
    intermediate_chan: &mut (channel::IntermediateSender, channel::IntermediateReceiver),
    init_chan: &mut (channel::InitSender, channel::InitReceiver),
    intermediate_main_sender: &mut channel::MainSender,
    init_main_sender: &mut channel::MainSender,
) -> Result<()> {
    let (inter_sender, inter_receiver) = intermediate_chan;
    let (init_sender, init_receiver) = init_chan;
    let command = args.syscall.create_syscall();
    let spec = &args.spec;
    let linux = spec.linux().as_ref().ok_or(MissingSpecError::Linux)?;
    let namespaces = Namespaces::try_from(linux.namespaces().as_ref())?;
    let rootless = rootless_required(command.as_ref()).unwrap_or(false);
    let cgroup_manager = libcgroups::common::create_cgroup_manager(args.cgroup_config.to_owned())
        .map_err(|e| IntermediateProcessError::Cgroup(e.to_string()))?
        .with_rootless(rootless);

    join_cgroups(args, &cgroup_manager)?;

    // if new user is specified in specification, this will be true and new
    // namespace will be created, check
    // https://man7.org/linux/man-pages/man7/user_namespaces.7.html for more
    // information
    if let Some(user_namespace) = namespaces.get(LinuxNamespaceType::User)? {
        setup_userns(
            &namespaces,
            user_namespace,
            intermediate_main_sender,
            inter_receiver,
        )?;

        // After UID and GID mapping is configured correctly in the Youki main
        // process, We want to make sure continue as the root user inside the
        // new user namespace. This is required because the process of
        // configuring the container process will require root, even though the
        // root in the user namespace likely is mapped to an non-privileged user
        // on the parent user namespace.
        command.set_id(Uid::from_raw(0), Gid::from_raw(0))?;
    }

    // set limits and namespaces to the process
    set_rlimits(args, command.as_ref())?;

    if let Some(time_namespace) = namespaces.get(LinuxNamespaceType::Time)? {
        namespaces.unshare_or_setns(time_namespace)?;
        if time_namespace.path().is_none()
            && linux
                .time_offsets()
                .as_ref()
                .is_some_and(|offsets| !offsets.is_empty())
        {
            setup_time_offsets(intermediate_main_sender, inter_receiver)?;
        }
    }

    // Pid namespace requires an extra fork to enter, so we enter pid namespace now.
    if let Some(pid_namespace) = namespaces.get(LinuxNamespaceType::Pid)? {
        namespaces.unshare_or_setns(pid_namespace)?;
    }

    let cb: CloneCb = {
        Box::new(|| {
            if let Err(ret) = prctl::set_name("youki:[2:INIT]") {
                tracing::error!(?ret, "failed to set name for child process");
                return ret;
            }

            // We are inside the forked process here. The first thing we have to do
            // is to close any unused senders, since fork will make a dup for all
            // the socket.
            if !close_main_ends(init_sender, inter_sender, intermediate_main_sender) {
                return -1;
            }
            match init_process::container_init_process(args, init_main_sender, init_receiver) {
                Ok(_) => 0,
                Err(e) => init_failed(args, init_main_sender, crate::utils::error_chain(&e)),
            }
        })
    };

    // We have to record the pid of the init process. The init process will be
    // inside the pid namespace, so we can't rely on the init process to send us
    // the correct pid. We also want to clone the init process as a sibling
    // process to the intermediate process. The intermediate process is only
    // used as a jumping board to set the init process to the correct
    // configuration. The youki main process can decide what to do with the init
    // process and the intermediate process can just exit safely after the job
    // is done.
    let pid = fork::container_clone_sibling(cb).map_err(|err| {
        tracing::error!("failed to fork init process: {}", err);
        IntermediateProcessError::InitProcess(err)
    })?;

    // Close the exec_notify_fd in this process
    if let ContainerType::TenantContainer { exec_notify_fd } = args.container_type {
        close(exec_notify_fd).map_err(|err| {
            tracing::error!("failed to close exec notify fd: {}", err);
            IntermediateProcessError::ExecNotify(err)
        })?;
    }

    intermediate_main_sender
        .intermediate_ready(pid)
        .map_err(|err| {
            tracing::error!("failed to wait on intermediate process: {}", err);
            err
        })?;

    // Close unused senders here so we don't have lingering socket around.
    intermediate_main_sender.close().map_err(|err| {
        tracing::error!("failed to close unused main sender: {}", err);
        err
    })?;
    init_main_sender.close().map_err(|err| {
        tracing::error!("failed to close unused init main sender: {}", err);
        err
    })?;
    inter_sender.close().map_err(|err| {
        tracing::error!(
            "failed to close sender in the intermediate process: {}",
            err
        );
        err
    })?;
    init_sender.close().map_err(|err| {
        tracing::error!("failed to close unused init sender: {}", err);
        err
    })?;

    Ok(())
}

/// The calling process joins the container's cgroups (applying its resources for an init
/// container) and takes its CPU affinity: what the init inherits, or does itself.
fn join_cgroups(
    args: &ContainerArgs,
    cgroup_manager: &libcgroups::common::AnyCgroupManager,
) -> Result<()> {
    let spec = &args.spec;
    let linux = spec.linux().as_ref().ok_or(MissingSpecError::Linux)?;
    let current_pid = Pid::this();
    // setting CPU affinity for tenant container before cgroup move
    if matches!(args.container_type, ContainerType::TenantContainer { .. }) {
        if let Some(exec_cpu_affinity) = spec
            .process()
            .as_ref()
            .and_then(|p| p.exec_cpu_affinity().as_ref())
        {
            if let Some(initial) = exec_cpu_affinity.initial() {
                cpu_affinity::set_cpuset_affinity_from_string(current_pid, initial)?;
            }
        }
    }
    let _ = cpu_affinity::log_cpu_affinity();

    // this needs to be done before we create the init process, so that the init
    // process will already be captured by the cgroup. It also needs to be done
    // before we enter the user namespace because if a privileged user starts a
    // rootless container on a cgroup v1 system we can still fulfill resource
    // restrictions through the cgroup fs support (delegation through systemd is
    // not supported for v1 by us). This only works if the user has not yet been
    // mapped to an unprivileged user by the user namespace however.
    // In addition this needs to be done before we enter the cgroup namespace as
    // the cgroup of the process will form the root of the cgroup hierarchy in
    // the cgroup namespace.
    apply_cgroups(
        cgroup_manager,
        linux.resources().as_ref(),
        matches!(args.container_type, ContainerType::InitContainer),
    )?;

    // setting CPU affinity for tenant container after cgroup move
    let final_affinity = spec
        .process()
        .as_ref()
        .and_then(|p| p.exec_cpu_affinity().as_ref())
        .and_then(|a| a.cpu_affinity_final().as_ref())
        .filter(|_| matches!(args.container_type, ContainerType::TenantContainer { .. }));
    match final_affinity {
        Some(cpu_affinity_final) => {
            cpu_affinity::set_cpuset_affinity_from_string(current_pid, cpu_affinity_final)?;
        }
        // ingot: as runc 1.2, the affinity of the runtime (a shim pinned to housekeeping CPUs)
        // is not inherited: the process may run on every CPU of its cgroup's cpuset. Since
        // Linux 6.2 a cpuset move keeps an affinity the parent asked for with
        // sched_setaffinity, so the move alone does not widen it.
        None => cpu_affinity::reset_cpu_affinity(current_pid)?,
    }

    Ok(())
}

/// The process's rlimits on the calling process.
fn set_rlimits(args: &ContainerArgs, command: &dyn crate::syscall::Syscall) -> Result<()> {
    let proc = args
        .spec
        .process()
        .as_ref()
        .ok_or(MissingSpecError::Process)?;
    if let Some(rlimits) = proc.rlimits() {
        for rlimit in rlimits {
            command.set_rlimit(rlimit).map_err(|err| {
                tracing::error!(?err, ?rlimit, "failed to set rlimit");
                err
            })?;
        }
    }
    Ok(())
}

/// ingot: whether the init can be cloned by the main process itself, without the intermediate
/// process: an init container with neither a user namespace (whose mapping the main process
/// writes for the intermediate) nor a time namespace (whose offsets likewise), and no
/// prestart or createRuntime hooks (which the main process runs, and which would start in the
/// container's PID namespace once the main process has entered it).
pub fn init_without_intermediate(args: &ContainerArgs) -> bool {
    matches!(args.container_type, ContainerType::InitContainer)
        && args.user_ns_config.is_none()
        && spec_allows_init_without_intermediate(&args.spec)
}

fn spec_allows_init_without_intermediate(spec: &oci_spec::runtime::Spec) -> bool {
    let Some(linux) = spec.linux().as_ref() else {
        return false;
    };
    let namespaces = linux.namespaces().as_deref().unwrap_or_default();
    let own_namespace = |typ| namespaces.iter().any(|ns| ns.typ() == typ);
    !own_namespace(LinuxNamespaceType::User)
        && !own_namespace(LinuxNamespaceType::Time)
        && linux.time_offsets().as_ref().is_none_or(|o| o.is_empty())
        && spec.hooks().as_ref().is_none_or(|h| {
            #[allow(deprecated)]
            let prestart = h.prestart().as_ref().is_some_and(|p| !p.is_empty());
            let runtime = h.create_runtime().as_ref().is_some_and(|p| !p.is_empty());
            !prestart && !runtime
        })
}

/// ingot: the intermediate's work without its process (see [`init_without_intermediate`]).
/// The calling process enters the PID namespace, which only its children join, and clones the
/// init; the init joins its cgroups, takes its affinity and rlimits itself, then runs as it
/// would have. One process start and exit less per container.
pub fn clone_init(
    args: &ContainerArgs,
    clone_fn: fn(CloneCb) -> std::result::Result<Pid, fork::CloneError>,
    init_chan: &mut (channel::InitSender, channel::InitReceiver),
    inter_sender: &mut channel::IntermediateSender,
    intermediate_main_sender: &mut channel::MainSender,
    init_main_sender: &mut channel::MainSender,
) -> Result<Pid> {
    let (init_sender, init_receiver) = init_chan;
    let linux = args.spec.linux().as_ref().ok_or(MissingSpecError::Linux)?;
    let namespaces = Namespaces::try_from(linux.namespaces().as_ref())?;
    if let Some(pid_namespace) = namespaces.get(LinuxNamespaceType::Pid)? {
        namespaces.unshare_or_setns(pid_namespace)?;
    }
    let cb: CloneCb = Box::new(|| {
        if let Err(ret) = prctl::set_name("youki:[2:INIT]") {
            tracing::error!(?ret, "failed to set name for child process");
            return ret;
        }
        if !close_main_ends(init_sender, inter_sender, intermediate_main_sender) {
            return -1;
        }
        let prepared = (|| {
            let command = args.syscall.create_syscall();
            let rootless = rootless_required(command.as_ref()).unwrap_or(false);
            let cgroup_manager =
                libcgroups::common::create_cgroup_manager(args.cgroup_config.to_owned())
                    .map_err(|e| IntermediateProcessError::Cgroup(e.to_string()))?
                    .with_rootless(rootless);
            join_cgroups(args, &cgroup_manager)?;
            set_rlimits(args, command.as_ref())
        })();
        let result = prepared
            .map_err(|err| crate::utils::error_chain(&err))
            .and_then(|()| {
                init_process::container_init_process(args, init_main_sender, init_receiver)
                    .map_err(|err| crate::utils::error_chain(&err))
            });
        match result {
            Ok(()) => 0,
            Err(message) => init_failed(args, init_main_sender, message),
        }
    });
    clone_fn(cb).map_err(|err| {
        tracing::error!("failed to fork init process: {}", err);
        IntermediateProcessError::InitProcess(err)
    })
}

/// In the init process: closes the ends of the channels the clone duplicated from its parent
/// (the main process's senders); false, logged, when one fails.
fn close_main_ends(
    init_sender: &mut channel::InitSender,
    inter_sender: &mut channel::IntermediateSender,
    intermediate_main_sender: &mut channel::MainSender,
) -> bool {
    let closed = [
        init_sender.close(),
        inter_sender.close(),
        intermediate_main_sender.close(),
    ];
    match closed.into_iter().find(|c| c.is_err()) {
        Some(Err(err)) => {
            tracing::error!(?err, "failed to close a sender in the init process");
            false
        }
        _ => true,
    }
}

/// In the init process: reports its failure to the main process (and to the exec notify fd
/// of a tenant container); the init's exit code.
fn init_failed(args: &ContainerArgs, init_main_sender: &mut MainSender, message: String) -> i32 {
    tracing::error!("failed to initialize container process: {message}");
    if let Err(err) = init_main_sender.exec_failed(message.clone()) {
        tracing::error!(?err, "failed sending error to main sender");
    }
    if let ContainerType::TenantContainer { exec_notify_fd } = args.container_type {
        let exec_notify_fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(exec_notify_fd) };
        if let Err(err) = write(&exec_notify_fd, message.as_bytes()) {
            tracing::error!(?err, "failed to write to exec notify fd");
        }
        // After sending the error through the exec_notify_fd,
        // we need to explicitly close the pipe.
        drop(exec_notify_fd);
    }
    -1
}

fn setup_userns(
    namespaces: &Namespaces,
    user_namespace: &LinuxNamespace,
    sender: &mut MainSender,
    receiver: &mut IntermediateReceiver,
) -> Result<()> {
    namespaces.unshare_or_setns(user_namespace)?;
    if user_namespace.path().is_some() {
        return Ok(());
    }

    tracing::debug!("creating new user namespace");
    // child needs to be dumpable, otherwise the non root parent is not
    // allowed to write the uid/gid maps
    prctl::set_dumpable(true).map_err(|e| {
        IntermediateProcessError::Other(format!(
            "error in setting dumpable to true : {}",
            nix::errno::Errno::from_raw(e)
        ))
    })?;
    sender.identifier_mapping_request().map_err(|err| {
        tracing::error!("failed to send id mapping request: {}", err);
        err
    })?;
    receiver.wait_for_mapping_ack().map_err(|err| {
        tracing::error!("failed to receive id mapping ack: {}", err);
        err
    })?;
    prctl::set_dumpable(false).map_err(|e| {
        IntermediateProcessError::Other(format!(
            "error in setting dumplable to false : {}",
            nix::errno::Errno::from_raw(e)
        ))
    })?;
    Ok(())
}

fn setup_time_offsets(sender: &mut MainSender, receiver: &mut IntermediateReceiver) -> Result<()> {
    tracing::debug!("requesting parent to write time namespace offsets");

    prctl::set_dumpable(true).map_err(|e| {
        IntermediateProcessError::Other(format!(
            "error in setting dumpable to true for time offsets: {}",
            nix::errno::Errno::from_raw(e)
        ))
    })?;

    sender.time_offset_request().map_err(|err| {
        tracing::error!("failed to send time offset request: {}", err);
        err
    })?;

    receiver.wait_for_time_offsets_ack().map_err(|err| {
        tracing::error!("failed to receive time offsets ack: {}", err);
        err
    })?;

    prctl::set_dumpable(false).map_err(|e| {
        IntermediateProcessError::Other(format!(
            "error in setting dumpable to false after time offsets: {}",
            nix::errno::Errno::from_raw(e)
        ))
    })?;

    Ok(())
}

fn apply_cgroups<
    C: CgroupManager<Error = E> + ?Sized,
    E: std::error::Error + Send + Sync + 'static,
>(
    cmanager: &C,
    resources: Option<&LinuxResources>,
    init: bool,
) -> Result<()> {
    let pid = getpid();
    cmanager.add_task(pid).map_err(|err| {
        tracing::error!(?pid, ?err, ?init, "failed to add task to cgroup");
        IntermediateProcessError::Cgroup(err.to_string())
    })?;

    if init && let Some(resources) = resources {
        let controller_opt = libcgroups::common::ControllerOpt {
            resources,
            freezer_state: None,
            oom_score_adj: None,
            disable_oom_killer: false,
        };

        cmanager.apply(&controller_opt).map_err(|err| {
            tracing::error!(?pid, ?err, ?init, "failed to apply cgroup");
            IntermediateProcessError::Cgroup(err.to_string())
        })?;
    }

    Ok(())
}

#[cfg(test)]
mod tests {
    use anyhow::Result;
    use libcgroups::test_manager::TestManager;
    use nix::unistd::Pid;
    use oci_spec::runtime::LinuxResources;
    use procfs::process::Process;

    use super::*;

    #[test]
    fn apply_cgroup_init() -> Result<()> {
        // arrange
        let cmanager = TestManager::default();
        let resources = LinuxResources::default();

        // act
        apply_cgroups(&cmanager, Some(&resources), true)?;

        // assert
        assert!(cmanager.get_add_task_args().len() == 1);
        assert_eq!(
            cmanager.get_add_task_args()[0],
            Pid::from_raw(Process::myself()?.pid())
        );
        assert!(cmanager.apply_called());
        Ok(())
    }

    #[test]
    fn apply_cgroup_tenant() -> Result<()> {
        // arrange
        let cmanager = TestManager::default();
        let resources = LinuxResources::default();

        // act
        apply_cgroups(&cmanager, Some(&resources), false)?;

        // assert
        assert_eq!(
            cmanager.get_add_task_args()[0],
            Pid::from_raw(Process::myself()?.pid())
        );
        assert!(!cmanager.apply_called());
        Ok(())
    }

    #[test]
    fn apply_cgroup_no_resources() -> Result<()> {
        // arrange
        let cmanager = TestManager::default();

        // act
        apply_cgroups(&cmanager, None, true)?;
        // assert
        assert_eq!(
            cmanager.get_add_task_args()[0],
            Pid::from_raw(Process::myself()?.pid())
        );
        assert!(!cmanager.apply_called());
        Ok(())
    }
}
