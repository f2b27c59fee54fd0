//! The runtime helper: `ingot-shim-helper`, a short-lived child of the shim that runs libcontainer
//! (create, exec, start, delete), as runc's CLI runs under runc's shim. Keeping libcontainer out
//! of the shim process matters: `build()` forks from the calling process, writes
//! `oom_score_adj` and the dumpable flag into the caller, and waits on children of its own; none
//! of that may touch a long-lived, multi-threaded shim. And the shim binary stays small: its
//! resident memory is what every pod pays. The container's processes re-parent to the shim (a
//! subreaper) when the helper exits.
//!
//! Protocol: one JSON argument; fds 0-2 are the container process's stdio; fd 3 carries an error
//! message back. Exit 0 means the pid file holds the new process's pid.

use std::{
    io::{Read, Write as _},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::PathBuf,
};

use libcontainer::{
    container::{builder::ContainerBuilder, Container},
    syscall::syscall::SyscallType,
};
use nix::{
    fcntl::OFlag,
    unistd::{pipe2, Pid},
};
use serde::{Deserialize, Serialize};

use containerd_shim::protos::{protobuf::Enum, ttrpc::Code};
use ingot_oci::HostFacts;

use crate::{
    cgroups,
    error::{Result, ShimError},
    io::ChildStdio,
    reaper::Reaper,
    spare::Spare,
};

pub const HELPER_BINARY: &str = "ingot-shim-helper";
const ERROR_FD: i32 = 3;

#[derive(Debug, Serialize, Deserialize)]
pub enum Op {
    /// Prepare `bundle/config.json` into `work_dir`, create the container from it (init
    /// process, waiting for start), and record what the shim needs in `work_dir/created.json`.
    Create { bundle: PathBuf, work_dir: PathBuf },
    /// Run the process in `process` (a process.json) inside the running container.
    Exec { process: PathBuf },
    /// Let the created container's init exec its process.
    Start,
    /// Kill what is left, run poststop hooks, remove the cgroup and libcontainer's state.
    Delete { work_dir: PathBuf },
    /// Apply the LinuxResources JSON in `resources` to the container's cgroup.
    Update {
        resources: PathBuf,
        cgroups_path: PathBuf,
    },
}

/// What a create leaves for the shim in `work_dir/created.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Created {
    pub cgroups_path: PathBuf,
    /// Changes made to the spec, for the shim's log.
    pub warnings: Vec<String>,
    /// Unified-hierarchy cgroup directories made for hugepage limits (hybrid hosts).
    pub hugetlb_dirs: Vec<PathBuf>,
}

pub const CREATED_FILE: &str = "created.json";

impl Op {
    fn name(&self) -> &'static str {
        match self {
            Op::Create { .. } => "create",
            Op::Exec { .. } => "exec",
            Op::Start => "start",
            Op::Delete { .. } => "delete",
            Op::Update { .. } => "update",
        }
    }

    /// Whether the helper leaves a new process's pid in the pid file.
    fn makes_process(&self) -> bool {
        matches!(self, Op::Create { .. } | Op::Exec { .. })
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    pub op: Op,
    /// libcontainer's state root.
    pub root: PathBuf,
    pub id: String,
    pub pid_file: PathBuf,
    pub console_socket: Option<PathBuf>,
}

/// Entry point inside the helper process; returns the exit code. A failure goes back on fd 3
/// as `<ttrpc code number> <message>`, so the shim answers with the right code.
pub fn main(arg: &str) -> i32 {
    match run(arg) {
        Ok(()) => 0,
        Err(err) => {
            // SAFETY: fd 3 is the error pipe the shim set up for us; we own it from here on.
            let mut pipe = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(ERROR_FD) });
            let code = err.code() as i32;
            let _ = write!(pipe, "{code} {}", err.full_message());
            1
        }
    }
}

/// Reads a helper's error report (see [`main`]).
pub fn parse_error(report: &str) -> (Code, String) {
    report
        .split_once(' ')
        .and_then(|(code, message)| {
            let code = code.parse::<i32>().ok()?;
            Some((Code::from_i32(code)?, message.to_string()))
        })
        .unwrap_or((Code::UNKNOWN, report.to_string()))
}

fn other<'a>(id: &'a str, op: &'static str) -> impl Fn(String) -> ShimError + 'a {
    move |message| ShimError::Runtime {
        id: id.to_string(),
        op,
        message,
    }
}

fn run(arg: &str) -> Result<()> {
    let request: Request = serde_json::from_str(arg).map_err(|err| ShimError::InvalidArgument {
        what: "helper request".into(),
        reason: err.to_string(),
    })?;
    let id = request.id.as_str();
    let runtime = |op: &'static str| {
        let id = id.to_string();
        move |err: libcontainer::error::LibcontainerError| ShimError::Runtime {
            id,
            op,
            message: err.to_string(),
        }
    };
    let builder = || -> Result<ContainerBuilder> {
        Ok(
            ContainerBuilder::new(id.to_string(), SyscallType::default())
                .with_root_path(&request.root)
                .map_err(runtime("state root"))?
                .with_pid_file(Some(&request.pid_file))
                .map_err(runtime("pid file"))?
                .with_console_socket(request.console_socket.as_ref()),
        )
    };
    match &request.op {
        Op::Create { bundle, work_dir } => create(&request, builder()?, bundle, work_dir),
        Op::Exec { process } => {
            let work_dir = request.root.join(format!("{id}.ingot"));
            let spec_error = |source| ShimError::Spec {
                id: id.to_string(),
                source,
            };
            let json = std::fs::read(process)
                .map_err(ShimError::io(format!("read {}", process.display())))?;
            let process_spec = ingot_oci::parse_process(&json).map_err(spec_error)?;
            let spec = ingot_oci::load_spec(&work_dir).map_err(spec_error)?;
            let rootfs = spec
                .root()
                .as_ref()
                .map(|root| root.path().clone())
                .unwrap_or_default();
            ingot_oci::check_executable(&rootfs, &process_spec).map_err(spec_error)?;
            let pid = builder()?
                .as_tenant()
                .with_detach(true)
                .with_process(Some(process))
                .build()
                .map_err(runtime("exec"))?;
            std::fs::write(&request.pid_file, pid.to_string())
                .map_err(ShimError::io("write pid file"))
        }
        Op::Start => Container::load(request.root.join(id))
            .and_then(|mut container| container.start())
            .map_err(runtime("start")),
        Op::Delete { work_dir } => {
            if let Ok(text) = std::fs::read(work_dir.join(CREATED_FILE)) {
                if let Ok(created) = serde_json::from_slice::<Created>(&text) {
                    cgroups::remove_dirs(&created.hugetlb_dirs);
                }
            }
            match Container::load(request.root.join(id)) {
                Ok(mut container) => container.delete(true).map_err(runtime("delete")),
                // Nothing was created, or it is gone already: deleting is done.
                Err(_) if !request.root.join(id).exists() => Ok(()),
                Err(err) => Err(runtime("delete")(err)),
            }
        }
        Op::Update {
            resources,
            cgroups_path,
        } => {
            let json = std::fs::read(resources)
                .map_err(ShimError::io(format!("read {}", resources.display())))?;
            cgroups::update(id, cgroups_path, &json)
        }
    }
}

/// Prepares the spec, builds the container and places hugepage limits.
fn create(
    request: &Request,
    builder: ContainerBuilder,
    bundle: &std::path::Path,
    work_dir: &std::path::Path,
) -> Result<()> {
    let id = request.id.as_str();
    let spec_error = |source| ShimError::Spec {
        id: id.to_string(),
        source,
    };
    let spec = ingot_oci::load_spec(bundle).map_err(spec_error)?;
    let placement =
        cgroups::hugetlb_placement(cgroups::host_cgroup_mounts(), std::path::Path::new("/"));
    // This helper inherits the shim's oom_score_adj and capabilities: its floor is the shim's.
    let host = HostFacts {
        min_oom_score_adj: cgroups::oom_score_floor(std::path::Path::new("/proc/self")),
        hugetlb: placement.support.clone(),
    };
    let prepared = ingot_oci::prepare(spec, id, bundle, &host).map_err(spec_error)?;
    let config = serde_json::to_vec(&prepared.spec)
        .map_err(|err| other(id, "encode spec")(err.to_string()))?;
    std::fs::write(work_dir.join("config.json"), config).map_err(ShimError::io(format!(
        "write {}/config.json",
        work_dir.display()
    )))?;

    let export = SeccompExport::start(&prepared.spec, work_dir);
    let container = match builder
        .as_init(work_dir)
        .with_spec(prepared.spec)
        .with_systemd(false)
        .with_detach(true)
        .build()
    {
        Ok(container) => container,
        Err(err) => {
            // libcontainer removes its cgroup when build() fails; make sure.
            if let Ok(manager) = cgroups::manager(id, &prepared.cgroups_path) {
                let _ = libcgroups::common::CgroupManager::remove(&manager);
            }
            return Err(other(id, "create")(err.to_string()));
        }
    };
    let pid = container.pid().map(|pid| pid.as_raw()).unwrap_or(0);
    let mut created = Created {
        cgroups_path: prepared.cgroups_path.clone(),
        warnings: prepared.warnings,
        hugetlb_dirs: Vec::new(),
    };
    if let Some(mount) = &placement.unified_mount {
        if !prepared.unified_hugetlb.is_empty() {
            created.hugetlb_dirs = cgroups::apply_unified_hugetlb(
                mount,
                &prepared.cgroups_path,
                &prepared.unified_hugetlb,
                pid,
            )?;
        }
    }
    let text = serde_json::to_vec(&created).map_err(|err| other(id, "create")(err.to_string()))?;
    std::fs::write(work_dir.join(CREATED_FILE), text).map_err(ShimError::io(format!(
        "write {}/{CREATED_FILE}",
        work_dir.display()
    )))?;
    export.finish();
    Ok(())
}

/// The seccomp export, compiled in a child of the helper while the container is built (the
/// compile is about a millisecond of CPU, and the build mostly waits on its own children).
struct SeccompExport(Option<Pid>);

impl SeccompExport {
    fn start(spec: &oci_spec::runtime::Spec, work_dir: &std::path::Path) -> Self {
        // Without a profile to compile (most pods: the kubelet asks for none unless told)
        // the export is one small file, not worth a process.
        let compiles = spec
            .linux()
            .as_ref()
            .and_then(|l| l.seccomp().as_ref())
            .is_some_and(|s| !libcontainer::seccomp::is_notify(s));
        if !compiles {
            export_seccomp(spec, work_dir);
            return SeccompExport(None);
        }
        // SAFETY: the helper is single-threaded until libcontainer's build, so the child may do
        // anything; it leaves with _exit, running no exit handlers of the helper.
        match unsafe { nix::unistd::fork() } {
            Ok(nix::unistd::ForkResult::Child) => {
                export_seccomp(spec, work_dir);
                // SAFETY: ends this child without unwinding into the helper's code.
                unsafe { libc::_exit(0) }
            }
            Ok(nix::unistd::ForkResult::Parent { child }) => SeccompExport(Some(child)),
            Err(_) => {
                export_seccomp(spec, work_dir);
                SeccompExport(None)
            }
        }
    }

    /// Waits for the export: the files are in place when the create is answered.
    fn finish(mut self) {
        self.wait();
    }

    fn wait(&mut self) {
        if let Some(pid) = self.0.take() {
            let _ = wait_child(pid);
        }
    }
}

impl Drop for SeccompExport {
    fn drop(&mut self) {
        self.wait();
    }
}

/// Compiles the container's seccomp profile to BPF for the shim's direct exec path
/// (`crate::fastexec`) and marks the container eligible for it. Without the mark (a notify
/// profile, a failed export) execs into this container go through this helper.
fn export_seccomp(spec: &oci_spec::runtime::Spec, work_dir: &std::path::Path) {
    use crate::fastexec::{ELIGIBLE_FILE, SECCOMP_BPF_FILE};
    let eligible = work_dir.join(ELIGIBLE_FILE);
    let Some(seccomp) = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) else {
        let _ = std::fs::write(&eligible, "none");
        return;
    };
    if libcontainer::seccomp::is_notify(seccomp) {
        return;
    }
    let path = work_dir.join(SECCOMP_BPF_FILE);
    let exported = std::fs::File::create(&path)
        .map_err(|err| err.to_string())
        .and_then(|mut file| {
            libcontainer::seccomp::export_bpf(seccomp, &mut file).map_err(|err| err.to_string())
        });
    match exported {
        Ok(()) => {
            let _ = std::fs::write(&eligible, "seccomp");
        }
        Err(err) => {
            tracing::warn!(path = %path.display(), error = %err, "seccomp profile not exported");
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// How the shim starts helpers: the binary, and the spare forked at shim start (used by the
/// first request, see [`crate::spare`]).
#[derive(Debug)]
pub struct Launcher {
    binary: PathBuf,
    spare: std::sync::Mutex<Option<Spare>>,
}

impl Launcher {
    pub fn new(binary: PathBuf) -> Self {
        Launcher {
            binary,
            spare: std::sync::Mutex::new(None),
        }
    }

    pub fn set_spare(&self, spare: Spare) {
        *self
            .spare
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(spare);
    }

    fn take_spare(&self) -> Option<Spare> {
        self.spare
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }

    /// Starts the helper for `arg`: hands it to the spare while there is one, else runs the
    /// binary.
    fn start(&self, arg: &str, stdio: &ChildStdio, error: &OwnedFd) -> std::io::Result<Pid> {
        if let Some(spare) = self.take_spare() {
            let spare_pid = spare.pid();
            let fds = [
                stdio.stdin.as_raw_fd(),
                stdio.stdout.as_raw_fd(),
                stdio.stderr.as_raw_fd(),
                error.as_raw_fd(),
            ];
            match spare.hand_over(arg, fds) {
                Ok(pid) => return Ok(pid),
                // Gone (killed, or died): the reaper collects it; start the binary instead.
                Err(err) => {
                    tracing::warn!(pid = spare_pid.as_raw(), error = %err, "spare helper gone")
                }
            }
        }
        spawn_process(&self.binary, arg, stdio, error)
    }
}

/// The helper binary: beside the running shim, else on PATH.
pub fn binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .map(|exe| exe.with_file_name(HELPER_BINARY))
        .filter(|path| path.exists())
        .unwrap_or_else(|| PathBuf::from(HELPER_BINARY))
}

/// Runs the helper for `request`. For create and exec it returns the new process's pid, after
/// `register` ran with it while the reaper is still held off, so an exit of a short-lived
/// process is never seen before the shim knows the pid.
pub fn spawn(
    launcher: &Launcher,
    reaper: &Reaper,
    request: &Request,
    stdio: ChildStdio,
    register: impl FnOnce(Option<i32>),
) -> Result<Option<i32>> {
    let id = request.id.as_str();
    let op = request.op.name();
    let arg = serde_json::to_string(request).map_err(|err| ShimError::Runtime {
        id: id.to_string(),
        op,
        message: format!("encode helper request: {err}"),
    })?;
    let (error_read, error_write) = pipe2(OFlag::O_CLOEXEC).map_err(|errno| ShimError::Io {
        context: "create helper error pipe".into(),
        source: errno.into(),
    })?;

    let _hold = reaper.hold();
    let pid = launcher
        .start(&arg, &stdio, &error_write)
        .map_err(ShimError::io(format!(
            "spawn container helper {}",
            launcher.binary.display()
        )))?;
    drop(stdio);
    drop(error_write);
    // Wait first, then read what the helper wrote: the container's init is cloned from the
    // helper and holds the pipe's write end until it execs, so EOF would wait for Start.
    let status = wait_child(pid).map_err(|errno| ShimError::Io {
        context: "wait for container helper".into(),
        source: errno.into(),
    })?;
    let mut message = String::new();
    if nix::fcntl::fcntl(
        error_read.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK),
    )
    .is_ok()
    {
        let _ = std::fs::File::from(error_read).read_to_string(&mut message);
    }
    let success = matches!(status, nix::sys::wait::WaitStatus::Exited(_, 0));
    if !success {
        if message.is_empty() {
            return Err(ShimError::Runtime {
                id: id.to_string(),
                op,
                message: format!("helper {}", describe(status)),
            });
        }
        let (code, message) = parse_error(&message);
        return Err(ShimError::Helper { code, message });
    }
    if !request.op.makes_process() {
        register(None);
        return Ok(None);
    }
    let text = std::fs::read_to_string(&request.pid_file).map_err(ShimError::io(format!(
        "read pid file {}",
        request.pid_file.display()
    )))?;
    let pid: i32 = text.trim().parse().map_err(|_| ShimError::Runtime {
        id: id.to_string(),
        op: "read pid file",
        message: format!("{:?} is not a pid", text.trim()),
    })?;
    register(Some(pid));
    Ok(Some(pid))
}

/// Waits for a child of our own to end, through interruptions.
fn wait_child(pid: Pid) -> nix::Result<nix::sys::wait::WaitStatus> {
    loop {
        match nix::sys::wait::waitpid(pid, None) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => return other,
        }
    }
}

/// How a helper ended, for an error message.
fn describe(status: nix::sys::wait::WaitStatus) -> String {
    match status {
        nix::sys::wait::WaitStatus::Exited(_, code) => format!("exit status: {code}"),
        nix::sys::wait::WaitStatus::Signaled(_, signal, _) => format!("killed by {signal}"),
        other => format!("{other:?}"),
    }
}

/// Starts `binary arg` with `stdio` as fds 0-2 and `error` as fd 3, through posix_spawn: glibc
/// runs it with a vfork-style clone, so the shim's page tables are not copied as `fork` would
/// (std's `Command` forks when an extra fd needs placing). Signal dispositions and mask start
/// clean (the shim ignores SIGPIPE and blocks signals on some threads).
fn spawn_process(
    binary: &std::path::Path,
    arg: &str,
    stdio: &ChildStdio,
    error: &OwnedFd,
) -> std::io::Result<Pid> {
    use std::{ffi::CString, os::unix::ffi::OsStrExt};
    let invalid = |_| std::io::Error::from(std::io::ErrorKind::InvalidInput);
    let path = CString::new(binary.as_os_str().as_bytes()).map_err(invalid)?;
    let arg = CString::new(arg).map_err(invalid)?;
    // Sources at or below fd 3 could be overwritten by an earlier dup2: move them up first.
    let mut raised = Vec::new();
    let mut source = |fd: &OwnedFd| -> std::io::Result<i32> {
        let raw = fd.as_raw_fd();
        if raw > ERROR_FD {
            return Ok(raw);
        }
        // SAFETY: duplicates an open fd; the copy is owned by `raised` and closed on return.
        let copy = unsafe { libc::fcntl(raw, libc::F_DUPFD_CLOEXEC, ERROR_FD + 1) };
        if copy < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `copy` is a new fd nothing else owns.
        raised.push(unsafe { OwnedFd::from_raw_fd(copy) });
        Ok(copy)
    };
    let moves = [
        (source(&stdio.stdin)?, 0),
        (source(&stdio.stdout)?, 1),
        (source(&stdio.stderr)?, 2),
        (source(error)?, ERROR_FD),
    ];
    let check = |rc: libc::c_int| {
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::from_raw_os_error(rc))
        }
    };
    // SAFETY (whole block): the spawn attributes and file actions are initialised before use
    // and destroyed on every path; argv is NULL-terminated and outlives the call; environ is
    // the process environment.
    unsafe {
        let mut actions: libc::posix_spawn_file_actions_t = std::mem::zeroed();
        check(libc::posix_spawn_file_actions_init(&mut actions))?;
        let mut attr: libc::posix_spawnattr_t = std::mem::zeroed();
        if let Err(err) = check(libc::posix_spawnattr_init(&mut attr)) {
            libc::posix_spawn_file_actions_destroy(&mut actions);
            return Err(err);
        }
        let result = (|| {
            for (from, to) in moves {
                check(libc::posix_spawn_file_actions_adddup2(
                    &mut actions,
                    from,
                    to,
                ))?;
            }
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            check(libc::posix_spawnattr_setsigmask(&mut attr, &empty))?;
            let mut defaults: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut defaults);
            libc::sigaddset(&mut defaults, libc::SIGPIPE);
            check(libc::posix_spawnattr_setsigdefault(&mut attr, &defaults))?;
            let flags = libc::POSIX_SPAWN_SETSIGMASK | libc::POSIX_SPAWN_SETSIGDEF;
            check(libc::posix_spawnattr_setflags(
                &mut attr,
                libc::c_short::try_from(flags).unwrap_or(0),
            ))?;
            let argv = [
                path.as_ptr().cast_mut(),
                arg.as_ptr().cast_mut(),
                std::ptr::null_mut(),
            ];
            extern "C" {
                static environ: *const *mut libc::c_char;
            }
            let mut pid: libc::pid_t = 0;
            check(libc::posix_spawn(
                &mut pid,
                path.as_ptr(),
                &actions,
                &attr,
                argv.as_ptr(),
                environ,
            ))?;
            Ok(Pid::from_raw(pid))
        })();
        libc::posix_spawnattr_destroy(&mut attr);
        libc::posix_spawn_file_actions_destroy(&mut actions);
        result
    }
}
