//! The Task service: one instance per shim, serving every container of one pod.
//!
//! Locking: the reaper gate (see `reaper`) is always taken before the state mutex, never after,
//! so the reaper (gate, then state) cannot deadlock with an RPC.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc::Sender,
        Arc, Condvar, Mutex, MutexGuard, OnceLock,
    },
    time::SystemTime,
};

use containerd_shim::{
    api,
    protos::{
        events::task::{
            TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskOOM, TaskPaused, TaskResumed,
            TaskStart,
        },
        protobuf::{well_known_types::timestamp::Timestamp, MessageDyn},
        topics,
    },
    ExitSignal,
};
use libcgroups::common::{CgroupManager, FreezerState};
use nix::{sys::signal::Signal, unistd::Pid};

mod create;

use crate::{
    cgroups,
    error::{Result, ShimError},
    fastexec, helper,
    io::{self, ProcessIo, StdioPaths},
    oom::OomWatcher,
    reaper::Reaper,
};

/// An event for containerd, queued in order and published by one thread.
pub type Event = (&'static str, Box<dyn MessageDyn>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProcState {
    Created,
    Running,
    Stopped,
}

pub(crate) struct Proc {
    pid: i32,
    state: ProcState,
    exit_status: u32,
    exited_at: Option<SystemTime>,
    stdio: StdioPaths,
    pub(crate) io: ProcessIo,
    /// An exec's process.json, written at Exec, run at Start.
    process_file: Option<PathBuf>,
}

impl Proc {
    fn new(stdio: StdioPaths) -> Self {
        Proc {
            pid: 0,
            state: ProcState::Created,
            exit_status: 0,
            exited_at: None,
            stdio,
            io: ProcessIo::default(),
            process_file: None,
        }
    }

    fn exited_at(&self) -> Timestamp {
        timestamp(self.exited_at.unwrap_or_else(SystemTime::now))
    }
}

struct Container {
    id: String,
    bundle: PathBuf,
    cgroups_path: PathBuf,
    /// Where the shim mounted the rootfs containerd passed, to unmount at delete.
    rootfs_mount: Option<PathBuf>,
    /// The prepared spec and pid files live here; removed at delete.
    work_dir: PathBuf,
    init: Proc,
    execs: BTreeMap<String, Proc>,
    paused: bool,
}

impl Container {
    fn process(&self, exec_id: &str) -> Result<&Proc> {
        if exec_id.is_empty() {
            return Ok(&self.init);
        }
        self.execs
            .get(exec_id)
            .ok_or_else(|| ShimError::ExecNotFound {
                id: self.id.clone(),
                exec_id: exec_id.to_string(),
            })
    }

    fn process_mut(&mut self, exec_id: &str) -> Result<&mut Proc> {
        if exec_id.is_empty() {
            return Ok(&mut self.init);
        }
        let id = self.id.clone();
        self.execs
            .get_mut(exec_id)
            .ok_or_else(|| ShimError::ExecNotFound {
                id,
                exec_id: exec_id.to_string(),
            })
    }
}

#[derive(Default)]
struct State {
    containers: HashMap<String, Container>,
    /// Ids being created: reserved so a concurrent duplicate is refused.
    creating: Vec<String>,
}

pub struct Inner {
    namespace: String,
    /// libcontainer's state root for this shim's containers.
    root: PathBuf,
    state: Mutex<State>,
    exited: Condvar,
    /// Where events go: containerd's publisher; none for a shim started by ingotd, which
    /// learns exits through Wait and OOM kills from the cgroup, and gives no events address.
    events: Option<Mutex<Sender<Event>>>,
    reaper: Arc<Reaper>,
    exit: Arc<ExitSignal>,
    counter: AtomicU64,
    helper: helper::Launcher,
    oom: OnceLock<Arc<OomWatcher>>,
}

#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

fn timestamp(time: SystemTime) -> Timestamp {
    let since = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        seconds: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(since.subsec_nanos()).unwrap_or(0),
        ..Default::default()
    }
}

fn not_found(id: &str) -> ShimError {
    ShimError::ContainerNotFound { id: id.to_string() }
}

impl Service {
    pub fn new(
        namespace: &str,
        root: PathBuf,
        events: Option<Sender<Event>>,
        reaper: Arc<Reaper>,
        exit: Arc<ExitSignal>,
    ) -> Self {
        Service {
            inner: Arc::new(Inner {
                namespace: namespace.to_string(),
                root,
                state: Mutex::default(),
                exited: Condvar::new(),
                events: events.map(Mutex::new),
                reaper,
                exit,
                counter: AtomicU64::new(0),
                helper: helper::Launcher::new(helper::binary()),
                oom: OnceLock::new(),
            }),
        }
    }

    /// The helper forked at shim start, for the first helper request.
    pub fn set_spare_helper(&self, spare: crate::spare::Spare) {
        self.inner.helper.set_spare(spare);
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether this shim's events reach anyone (see [`Inner::events`]).
    pub fn publishes(&self) -> bool {
        self.inner.events.is_some()
    }

    fn publish(&self, topic: &'static str, event: Box<dyn MessageDyn>) {
        let Some(events) = &self.inner.events else {
            return;
        };
        let sender = events
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if sender.send((topic, event)).is_err() {
            tracing::warn!(topic, "event publisher is gone");
        }
    }

    /// Starts the OOM watcher, which publishes TaskOOM for this service's containers.
    pub fn start_oom_watcher(&self) -> Result<()> {
        let service = self.clone();
        let watcher = OomWatcher::start(move |id| {
            service.publish(
                topics::TASK_OOM_EVENT_TOPIC,
                Box::new(TaskOOM {
                    container_id: id.to_string(),
                    ..Default::default()
                }),
            );
        })?;
        let _ = self.inner.oom.set(watcher);
        Ok(())
    }

    fn watch_oom(&self, id: &str, cgroups_path: &Path) {
        let Some(watcher) = self.inner.oom.get() else {
            return;
        };
        let relative = cgroups_path.strip_prefix("/").unwrap_or(cgroups_path);
        let memory_dir = if cgroups::unified_only() {
            Path::new("/sys/fs/cgroup").join(relative)
        } else {
            Path::new("/sys/fs/cgroup/memory").join(relative)
        };
        if let Err(err) = watcher.watch(id, &memory_dir) {
            tracing::warn!(container_id = id, error = %err, "no OOM events for this container");
        }
    }

    /// Called by the reaper for every child it reaps.
    pub fn on_exit(&self, pid: i32, code: i32) {
        let mut state = self.state();
        let now = SystemTime::now();
        for container in state.containers.values_mut() {
            let id = container.id.clone();
            let found = if container.init.pid == pid {
                Some((String::new(), &mut container.init))
            } else {
                container
                    .execs
                    .iter_mut()
                    .find(|(_, p)| p.pid == pid)
                    .map(|(exec_id, p)| (exec_id.clone(), p))
            };
            if let Some((exec_id, process)) = found {
                if process.state == ProcState::Stopped {
                    return;
                }
                process.state = ProcState::Stopped;
                process.exit_status = u32::try_from(code).unwrap_or(255);
                process.exited_at = Some(now);
                tracing::info!(container_id = %id, exec_id, pid, code, "process exited");
                let event = TaskExit {
                    container_id: id.clone(),
                    id: if exec_id.is_empty() { id } else { exec_id },
                    pid: u32::try_from(pid).unwrap_or(0),
                    exit_status: process.exit_status,
                    exited_at: Some(timestamp(now)).into(),
                    ..Default::default()
                };
                self.publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(event));
                self.inner.exited.notify_all();
                return;
            }
        }
    }

    fn work_dir(&self, id: &str) -> PathBuf {
        self.inner.root.join(format!("{id}.ingot"))
    }

    /// Runs a helper operation that makes no process (start, delete).
    fn helper_op(&self, id: &str, op: helper::Op, register: impl FnOnce()) -> Result<()> {
        let request = helper::Request {
            op,
            root: self.inner.root.clone(),
            id: id.to_string(),
            pid_file: PathBuf::new(),
            console_socket: None,
        };
        let (child, _) = io::plain(&StdioPaths::default())?;
        helper::spawn(
            &self.inner.helper,
            &self.inner.reaper,
            &request,
            child,
            |_| register(),
        )?;
        Ok(())
    }

    pub(crate) fn start(&self, id: &str, exec_id: &str) -> Result<u32> {
        if exec_id.is_empty() {
            return self.start_init(id);
        }
        let (stdio, process_file) = {
            let state = self.state();
            let container = state.containers.get(id).ok_or_else(|| not_found(id))?;
            if container.init.state != ProcState::Running {
                return Err(ShimError::FailedPrecondition {
                    what: format!("start exec {exec_id} in container {id}"),
                    reason: "the container is not running".into(),
                });
            }
            let process = container.process(exec_id)?;
            if process.state != ProcState::Created {
                return Err(ShimError::FailedPrecondition {
                    what: format!("start exec {exec_id} in container {id}"),
                    reason: "already started".into(),
                });
            }
            (process.stdio.clone(), process.process_file.clone())
        };
        let process_file = process_file.ok_or_else(|| ShimError::ExecNotFound {
            id: id.to_string(),
            exec_id: exec_id.to_string(),
        })?;
        let mut path = "fast";
        let (pid, process_io) = match self.fast_exec(id, exec_id, &stdio, &process_file)? {
            Some(started) => started,
            None => {
                path = "helper";
                let request = helper::Request {
                    op: helper::Op::Exec {
                        process: process_file.clone(),
                    },
                    root: self.inner.root.clone(),
                    id: id.to_string(),
                    pid_file: process_file.with_extension("pid"),
                    console_socket: None,
                };
                let this = self.clone();
                let (pid, process_io) = self.run_helper(request, &stdio, |pid| {
                    if let Some(pid) = pid {
                        this.exec_started(id, exec_id, pid);
                    }
                })?;
                (pid.unwrap_or(0), process_io)
            }
        };
        let mut state = self.state();
        if let Some(process) = state
            .containers
            .get_mut(id)
            .and_then(|c| c.execs.get_mut(exec_id))
        {
            process.io = process_io;
        }
        tracing::info!(container_id = id, exec_id, pid, path, "exec started");
        Ok(u32::try_from(pid).unwrap_or(0))
    }

    /// Records a started exec (while the reaper is held off: an instant exit is still ours).
    fn exec_started(&self, id: &str, exec_id: &str, pid: i32) {
        let mut state = self.state();
        if let Some(process) = state
            .containers
            .get_mut(id)
            .and_then(|c| c.execs.get_mut(exec_id))
        {
            process.pid = pid;
            process.state = ProcState::Running;
        }
        self.publish(
            topics::TASK_EXEC_STARTED_EVENT_TOPIC,
            Box::new(TaskExecStarted {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
                pid: u32::try_from(pid).unwrap_or(0),
                ..Default::default()
            }),
        );
    }

    /// An exec through [`crate::fastexec`] when the container allows it; None otherwise.
    fn fast_exec(
        &self,
        id: &str,
        exec_id: &str,
        stdio: &StdioPaths,
        process_file: &Path,
    ) -> Result<Option<(i32, ProcessIo)>> {
        use std::os::fd::AsRawFd;
        let (init_pid, cgroups_path) = {
            let state = self.state();
            let container = state.containers.get(id).ok_or_else(|| not_found(id))?;
            (container.init.pid, container.cgroups_path.clone())
        };
        let text = std::fs::read(process_file)
            .map_err(ShimError::io(format!("read {}", process_file.display())))?;
        let process: serde_json::Value =
            serde_json::from_slice(&text).map_err(|err| ShimError::InvalidArgument {
                what: format!("exec {exec_id} process spec"),
                reason: err.to_string(),
            })?;
        let Some(plan) =
            fastexec::Plan::new(&process, init_pid, &cgroups_path, &self.work_dir(id))?
        else {
            return Ok(None);
        };
        let (child, process_io) = io::plain(stdio)?;
        let _hold = self.inner.reaper.hold();
        let pid = plan.spawn([
            child.stdin.as_raw_fd(),
            child.stdout.as_raw_fd(),
            child.stderr.as_raw_fd(),
        ])?;
        drop(child);
        self.exec_started(id, exec_id, pid);
        Ok(Some((pid, process_io)))
    }

    fn start_init(&self, id: &str) -> Result<u32> {
        let pid = {
            let state = self.state();
            let container = state.containers.get(id).ok_or_else(|| not_found(id))?;
            if container.init.state != ProcState::Created {
                return Err(ShimError::FailedPrecondition {
                    what: format!("start container {id}"),
                    reason: "already started".into(),
                });
            }
            container.init.pid
        };
        // "running" is recorded while the reaper is still held off, so an instant exit lands
        // after it, and TaskStart is queued before TaskExit.
        let started = || {
            let mut state = self.state();
            if let Some(container) = state.containers.get_mut(id) {
                if container.init.state == ProcState::Created {
                    container.init.state = ProcState::Running;
                }
            }
            self.publish(
                topics::TASK_START_EVENT_TOPIC,
                Box::new(TaskStart {
                    container_id: id.to_string(),
                    pid: u32::try_from(pid).unwrap_or(0),
                    ..Default::default()
                }),
            );
        };
        let direct = {
            let _hold = self.inner.reaper.hold();
            let direct = fastexec::start_created(&self.inner.root.join(id))?;
            if direct {
                started();
            }
            direct
        };
        if !direct {
            self.helper_op(id, helper::Op::Start, started)?;
        }
        tracing::info!(container_id = id, pid, "container started");
        Ok(u32::try_from(pid).unwrap_or(0))
    }

    pub(crate) fn delete(&self, id: &str, exec_id: &str) -> Result<api::DeleteResponse> {
        if !exec_id.is_empty() {
            let mut state = self.state();
            let container = state.containers.get_mut(id).ok_or_else(|| not_found(id))?;
            let process = container.process(exec_id)?;
            if process.state == ProcState::Running {
                return Err(ShimError::FailedPrecondition {
                    what: format!("delete exec {exec_id} of container {id}"),
                    reason: "the process is running".into(),
                });
            }
            let mut process =
                container
                    .execs
                    .remove(exec_id)
                    .ok_or_else(|| ShimError::ExecNotFound {
                        id: id.to_string(),
                        exec_id: exec_id.to_string(),
                    })?;
            process.io.close_stdin();
            if let Some(file) = &process.process_file {
                let _ = std::fs::remove_file(file);
                let _ = std::fs::remove_file(file.with_extension("pid"));
            }
            return Ok(api::DeleteResponse {
                pid: u32::try_from(process.pid).unwrap_or(0),
                exit_status: process.exit_status,
                exited_at: Some(process.exited_at()).into(),
                ..Default::default()
            });
        }

        {
            let state = self.state();
            let container = state.containers.get(id).ok_or_else(|| not_found(id))?;
            if container.init.state == ProcState::Running {
                return Err(ShimError::FailedPrecondition {
                    what: format!("delete container {id}"),
                    reason: "the task is running; kill it first".into(),
                });
            }
        }
        // Created or stopped: libcontainer kills what is left, removes the cgroup and its state.
        let work_dir = self.work_dir(id);
        self.helper_op(id, helper::Op::Delete { work_dir }, || {})?;
        let mut container = self
            .state()
            .containers
            .remove(id)
            .ok_or_else(|| not_found(id))?;
        if let Some(watcher) = self.inner.oom.get() {
            watcher.unwatch(id);
        }
        container.init.io.close_stdin();
        for process in container.execs.values_mut() {
            process.io.close_stdin();
        }
        if let Some(target) = &container.rootfs_mount {
            unmount(target);
        }
        let _ = std::fs::remove_dir_all(&container.work_dir);
        let response = api::DeleteResponse {
            pid: u32::try_from(container.init.pid).unwrap_or(0),
            exit_status: container.init.exit_status,
            exited_at: Some(container.init.exited_at()).into(),
            ..Default::default()
        };
        self.publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            Box::new(TaskDelete {
                container_id: id.to_string(),
                pid: response.pid,
                exit_status: response.exit_status,
                exited_at: response.exited_at.clone(),
                id: id.to_string(),
                ..Default::default()
            }),
        );
        tracing::info!(container_id = id, "container deleted");
        Ok(response)
    }

    pub(crate) fn exec(&self, req: &api::ExecProcessRequest) -> Result<()> {
        let (id, exec_id) = (req.id.as_str(), req.exec_id.as_str());
        validate_id(exec_id).map_err(|_| ShimError::InvalidArgument {
            what: format!("exec in container {id}"),
            reason: format!("exec id {exec_id:?} is empty or not a plain name"),
        })?;
        let spec = req
            .spec
            .as_ref()
            .ok_or_else(|| ShimError::InvalidArgument {
                what: format!("exec {exec_id} in container {id}"),
                reason: "no process spec".into(),
            })?;
        // The helper checks the process fully at Start; a spec that is not even a process
        // object is refused here, at Exec, as runc's shim does.
        let process: serde_json::Value =
            serde_json::from_slice(&spec.value).map_err(|err| ShimError::InvalidArgument {
                what: format!("exec {exec_id} in container {id}: exec process spec"),
                reason: err.to_string(),
            })?;
        let has_args = process
            .get("args")
            .and_then(serde_json::Value::as_array)
            .is_some_and(|args| !args.is_empty());
        if !has_args {
            return Err(ShimError::InvalidArgument {
                what: format!("exec {exec_id} in container {id}: exec process spec"),
                reason: "process.args is empty; a command is required".into(),
            });
        }
        let mut state = self.state();
        let container = state.containers.get_mut(id).ok_or_else(|| not_found(id))?;
        if container.init.state != ProcState::Running {
            return Err(ShimError::FailedPrecondition {
                what: format!("exec {exec_id} in container {id}"),
                reason: "the container is not running".into(),
            });
        }
        if container.execs.contains_key(exec_id) {
            return Err(ShimError::ExecExists {
                id: id.to_string(),
                exec_id: exec_id.to_string(),
            });
        }
        let file = container.work_dir.join(format!("exec-{exec_id}.json"));
        std::fs::write(&file, &spec.value)
            .map_err(ShimError::io(format!("write {}", file.display())))?;
        let mut proc = Proc::new(StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        });
        proc.process_file = Some(file);
        container.execs.insert(exec_id.to_string(), proc);
        self.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            Box::new(TaskExecAdded {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
                ..Default::default()
            }),
        );
        Ok(())
    }

    pub(crate) fn kill(&self, req: &api::KillRequest) -> Result<()> {
        let (id, exec_id) = (req.id.as_str(), req.exec_id.as_str());
        let signal = Signal::try_from(i32::try_from(req.signal).unwrap_or(-1)).map_err(|_| {
            ShimError::InvalidArgument {
                what: format!("kill container {id}"),
                reason: format!("unknown signal {}", req.signal),
            }
        })?;
        let pid = {
            let state = self.state();
            let container = state.containers.get(id).ok_or_else(|| not_found(id))?;
            let process = container.process(exec_id)?;
            if process.state == ProcState::Stopped && !(exec_id.is_empty() && req.all) {
                return Err(ShimError::ProcessFinished {
                    id: id.to_string(),
                    exec_id: exec_id.to_string(),
                });
            }
            process.pid
        };
        if exec_id.is_empty() && req.all {
            let path = self.cgroups_path(id)?;
            for pid in cgroups::pids(id, &path)? {
                // A process may exit between listing and signalling; that is fine.
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), signal);
            }
            if signal == Signal::SIGKILL && self.is_paused(id) {
                // Frozen tasks die only once thawed.
                self.pause(id, false)?;
            }
        } else {
            nix::sys::signal::kill(Pid::from_raw(pid), signal).map_err(|errno| {
                if errno == nix::errno::Errno::ESRCH {
                    ShimError::ProcessFinished {
                        id: id.to_string(),
                        exec_id: exec_id.to_string(),
                    }
                } else {
                    ShimError::Io {
                        context: format!("kill exec {exec_id} of container {id}"),
                        source: errno.into(),
                    }
                }
            })?;
        }
        tracing::info!(container_id = id, exec_id, signal = %signal, all = req.all, "killed");
        Ok(())
    }

    pub(crate) fn state_of(&self, id: &str, exec_id: &str) -> Result<api::StateResponse> {
        let state = self.state();
        let container = state.containers.get(id).ok_or_else(|| not_found(id))?;
        let process = container.process(exec_id)?;
        let status = match process.state {
            ProcState::Created => api::Status::CREATED,
            ProcState::Running if container.paused => api::Status::PAUSED,
            ProcState::Running => api::Status::RUNNING,
            ProcState::Stopped => api::Status::STOPPED,
        };
        Ok(api::StateResponse {
            id: if exec_id.is_empty() {
                id.to_string()
            } else {
                exec_id.to_string()
            },
            bundle: container.bundle.display().to_string(),
            pid: u32::try_from(process.pid).unwrap_or(0),
            status: status.into(),
            stdin: process.stdio.stdin.clone(),
            stdout: process.stdio.stdout.clone(),
            stderr: process.stdio.stderr.clone(),
            terminal: process.stdio.terminal,
            exit_status: process.exit_status,
            exited_at: process.exited_at.map(timestamp).into(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        })
    }

    pub(crate) fn wait(&self, id: &str, exec_id: &str) -> Result<api::WaitResponse> {
        let mut state = self.state();
        loop {
            let container = state.containers.get(id).ok_or_else(|| not_found(id))?;
            let process = container.process(exec_id)?;
            if process.state == ProcState::Stopped {
                return Ok(api::WaitResponse {
                    exit_status: process.exit_status,
                    exited_at: Some(process.exited_at()).into(),
                    ..Default::default()
                });
            }
            state = self
                .inner
                .exited
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    pub(crate) fn cgroups_path(&self, id: &str) -> Result<PathBuf> {
        let state = self.state();
        let container = state.containers.get(id).ok_or_else(|| not_found(id))?;
        Ok(container.cgroups_path.clone())
    }

    fn is_paused(&self, id: &str) -> bool {
        self.state().containers.get(id).is_some_and(|c| c.paused)
    }

    pub(crate) fn pause(&self, id: &str, pause: bool) -> Result<()> {
        let path = {
            let state = self.state();
            let container = state.containers.get(id).ok_or_else(|| not_found(id))?;
            if container.init.state != ProcState::Running {
                return Err(ShimError::FailedPrecondition {
                    what: format!("{} container {id}", if pause { "pause" } else { "resume" }),
                    reason: "the container is not running".into(),
                });
            }
            container.cgroups_path.clone()
        };
        let target = if pause {
            FreezerState::Frozen
        } else {
            FreezerState::Thawed
        };
        cgroups::manager(id, &path)?
            .freeze(target)
            .map_err(|err| ShimError::Runtime {
                id: id.to_string(),
                op: if pause { "pause" } else { "resume" },
                message: err.to_string(),
            })?;
        if let Some(container) = self.state().containers.get_mut(id) {
            container.paused = pause;
        }
        if pause {
            self.publish(
                topics::TASK_PAUSED_EVENT_TOPIC,
                Box::new(TaskPaused {
                    container_id: id.to_string(),
                    ..Default::default()
                }),
            );
        } else {
            self.publish(
                topics::TASK_RESUMED_EVENT_TOPIC,
                Box::new(TaskResumed {
                    container_id: id.to_string(),
                    ..Default::default()
                }),
            );
        }
        Ok(())
    }

    pub(crate) fn with_process<T>(
        &self,
        id: &str,
        exec_id: &str,
        f: impl FnOnce(&mut Proc) -> Result<T>,
    ) -> Result<T> {
        let mut state = self.state();
        let container = state.containers.get_mut(id).ok_or_else(|| not_found(id))?;
        f(container.process_mut(exec_id)?)
    }

    /// Update runs in the helper (applying resources needs the OCI resource types, which the
    /// long-lived shim does not carry), but for a cpuset alone.
    pub(crate) fn update(&self, id: &str, cgroups_path: PathBuf, resources: &[u8]) -> Result<()> {
        // A cpuset alone (a shared container following the shared pool) is two file writes,
        // not a helper process.
        if let Some((cpus, mems)) = crate::cgroups::cpuset_only(resources) {
            let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
                .map_err(ShimError::io("read /proc/self/mountinfo"))?;
            if crate::cgroups::write_cpuset(
                &mountinfo,
                &cgroups_path,
                cpus.as_deref(),
                mems.as_deref(),
            )? {
                tracing::info!(container_id = id, cpus = ?cpus, mems = ?mems, "cpuset updated");
                return Ok(());
            }
        }
        let n = self.inner.counter.fetch_add(1, Ordering::Relaxed);
        let file = self.work_dir(id).join(format!("update-{n}.json"));
        std::fs::write(&file, resources)
            .map_err(ShimError::io(format!("write {}", file.display())))?;
        let result = self.helper_op(
            id,
            helper::Op::Update {
                resources: file.clone(),
                cgroups_path,
            },
            || {},
        );
        let _ = std::fs::remove_file(&file);
        result
    }

    /// Shutdown: the shim exits once it has no containers (or when told to exit now).
    pub(crate) fn shutdown_requested(&self, now: bool) {
        let remaining = self.state().containers.len();
        if remaining > 0 && !now {
            tracing::info!(
                remaining,
                "shutdown requested; containers remain, staying up"
            );
            return;
        }
        tracing::info!(namespace = %self.inner.namespace, "shutting down");
        self.inner.exit.signal();
    }

    pub(crate) fn init_pid(&self, id: &str) -> u32 {
        let state = self.state();
        state
            .containers
            .get(id)
            .map(|c| u32::try_from(c.init.pid).unwrap_or(0))
            .unwrap_or(0)
    }
}

/// Container and exec ids become file names: refuse anything that is not a plain name.
fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+'));
    if ok {
        Ok(())
    } else {
        Err(ShimError::InvalidArgument {
            what: "container id".into(),
            reason: format!("{id:?} must be 1-1024 characters of [A-Za-z0-9_.+-]"),
        })
    }
}

pub fn unmount(target: &Path) {
    if let Err(err) = nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH) {
        tracing::warn!(target = %target.display(), error = %err, "unmount rootfs");
    }
}
