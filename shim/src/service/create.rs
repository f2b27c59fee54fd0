//! Creating a container: rootfs mount, the helper's create, stdio, and undoing all of it when
//! any step fails.

use std::{collections::BTreeMap, path::PathBuf, sync::atomic::Ordering};

use containerd_shim::{
    api,
    protos::{
        events::task::{TaskCreate, TaskIO},
        topics,
    },
};
use nix::{sys::signal::Signal, unistd::Pid};

use super::{unmount, validate_id, Container, Proc, Service};
use crate::{
    error::{Result, ShimError},
    helper,
    io::{self, ConsoleSocket, ProcessIo, StdioPaths},
};

impl Service {
    pub(crate) fn create(&self, req: &api::CreateTaskRequest) -> Result<u32> {
        let id = req.id.as_str();
        validate_id(id)?;
        if !req.checkpoint.is_empty() || !req.parent_checkpoint.is_empty() {
            return Err(ShimError::InvalidArgument {
                what: format!("container {id}: checkpoint"),
                reason: "restore from a checkpoint is not supported".into(),
            });
        }
        {
            let mut state = self.state();
            if state.containers.contains_key(id) || state.creating.iter().any(|c| c == id) {
                return Err(ShimError::AlreadyExists { id: id.to_string() });
            }
            state.creating.push(id.to_string());
        }
        let mut cleanup = CreateCleanup::default();
        let result = self.create_reserved(req, &mut cleanup);
        let mut state = self.state();
        state.creating.retain(|c| c != id);
        match result {
            Ok(container) => {
                let pid = container.init.pid;
                state.containers.insert(id.to_string(), container);
                drop(state);
                Ok(u32::try_from(pid).unwrap_or(0))
            }
            Err(err) => {
                drop(state);
                cleanup.run(self, id);
                Err(err)
            }
        }
    }

    fn create_reserved(
        &self,
        req: &api::CreateTaskRequest,
        cleanup: &mut CreateCleanup,
    ) -> Result<Container> {
        let id = req.id.as_str();
        let bundle = PathBuf::from(&req.bundle);
        let rootfs_target = bundle.join("rootfs");
        for mount in &req.rootfs {
            if cleanup.rootfs_mount.is_none() {
                std::fs::create_dir_all(&rootfs_target)
                    .map_err(ShimError::io(format!("create {}", rootfs_target.display())))?;
            }
            crate::mount::mount(&mount.type_, &mount.source, &mount.options, &rootfs_target)
                .map_err(|err| ShimError::Runtime {
                    id: id.to_string(),
                    op: "mount rootfs",
                    message: err,
                })?;
            cleanup.rootfs_mount = Some(rootfs_target.clone());
        }

        let work_dir = self.work_dir(id);
        std::fs::create_dir_all(&work_dir)
            .map_err(ShimError::io(format!("create {}", work_dir.display())))?;
        cleanup.work_dir = Some(work_dir.clone());

        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        // The helper prepares the spec (validation, clamping, hugetlb placement) and builds.
        let request = helper::Request {
            op: helper::Op::Create {
                bundle: bundle.clone(),
                work_dir: work_dir.clone(),
            },
            root: self.inner.root.clone(),
            id: id.to_string(),
            pid_file: work_dir.join("init.pid"),
            console_socket: None,
        };
        let (pid, process_io) = self.run_helper(request, &stdio, |_| {})?;
        let pid = pid.ok_or_else(|| ShimError::Runtime {
            id: id.to_string(),
            op: "create",
            message: "the helper reported no pid".into(),
        })?;
        cleanup.pid = Some(pid);
        let created_file = work_dir.join(helper::CREATED_FILE);
        let created: helper::Created = std::fs::read(&created_file)
            .map_err(ShimError::io(format!("read {}", created_file.display())))
            .and_then(|text| {
                serde_json::from_slice(&text).map_err(|err| ShimError::Runtime {
                    id: id.to_string(),
                    op: "create",
                    message: format!("{}: {err}", created_file.display()),
                })
            })?;
        for warning in &created.warnings {
            tracing::warn!(container_id = id, "{warning}");
        }

        let mut init = Proc::new(stdio.clone());
        init.pid = pid;
        init.io = process_io;
        self.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            Box::new(TaskCreate {
                container_id: id.to_string(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: Some(TaskIO {
                    stdin: stdio.stdin,
                    stdout: stdio.stdout,
                    stderr: stdio.stderr,
                    terminal: stdio.terminal,
                    ..Default::default()
                })
                .into(),
                pid: u32::try_from(pid).unwrap_or(0),
                ..Default::default()
            }),
        );
        self.watch_oom(id, &created.cgroups_path);
        tracing::info!(container_id = id, pid, "container created");
        Ok(Container {
            id: id.to_string(),
            bundle,
            cgroups_path: created.cgroups_path,
            rootfs_mount: cleanup.rootfs_mount.take(),
            work_dir,
            init,
            execs: BTreeMap::new(),
            paused: false,
        })
    }

    /// Sets up stdio, runs the helper, and returns the pid with the stdio the shim keeps.
    pub(super) fn run_helper(
        &self,
        mut request: helper::Request,
        stdio: &StdioPaths,
        register: impl FnOnce(Option<i32>),
    ) -> Result<(Option<i32>, ProcessIo)> {
        // In terminal mode the process's stdio is the pty, which arrives on the console socket.
        let console = if stdio.terminal {
            let n = self.inner.counter.fetch_add(1, Ordering::Relaxed);
            let socket = ConsoleSocket::bind(
                self.inner
                    .root
                    .join(format!("console-{}-{n}.sock", std::process::id())),
            )?;
            request.console_socket = Some(socket.path().to_path_buf());
            Some(socket)
        } else {
            None
        };
        let no_stdio = StdioPaths::default();
        let (child, plain_io) = io::plain(if console.is_some() { &no_stdio } else { stdio })?;
        let pid = helper::spawn(
            &self.inner.helper,
            &self.inner.reaper,
            &request,
            child,
            register,
        )?;
        let process_io = match console {
            Some(socket) => socket.finish(stdio)?,
            None => plain_io,
        };
        Ok((pid, process_io))
    }
}

/// What a failed create must undo.
#[derive(Default)]
pub(super) struct CreateCleanup {
    rootfs_mount: Option<PathBuf>,
    work_dir: Option<PathBuf>,
    pid: Option<i32>,
}

impl CreateCleanup {
    /// Undoes a failed create; the create's own error is what the caller returns, so failures
    /// here are logged beside it.
    pub(super) fn run(self, service: &Service, id: &str) {
        if let Some(pid) = self.pid {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let work_dir = service.work_dir(id);
        if let Err(err) = service.helper_op(id, helper::Op::Delete { work_dir }, || {}) {
            tracing::warn!(container_id = id, error = %err, "cleanup after failed create");
        }
        if let Some(target) = &self.rootfs_mount {
            unmount(target);
        }
        if let Some(dir) = &self.work_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
