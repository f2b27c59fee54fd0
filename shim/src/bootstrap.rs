//! The shim's command line, as containerd drives it: `start` (find or spawn the pod's shim and
//! print its address), `delete` (clean up after a shim that died), and the serving mode.
//!
//! The bootstrap is our own rather than containerd-shim's `run`: that one answers `start` in the
//! containerd 2.x format and serves only `containerd.task.v3.Task`, while containerd 1.6 reads a
//! plain address and calls `containerd.task.v2.Task`. The task API is the same message set under
//! both names, so the service is registered under both.

use std::{
    env,
    io::Write,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::{
            net::{UnixListener, UnixStream},
            process::CommandExt,
        },
    },
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{atomic::AtomicBool, mpsc, Arc},
    thread,
};

use anyhow::{bail, Context as _};
use containerd_shim::{api::DeleteResponse, protos::protobuf::Message, ExitSignal, Flags};

use crate::{
    events::Publisher,
    reaper::Reaper,
    service::{self, Event, Service},
};

/// Where the shim keeps libcontainer state and per-container work files.
pub const STATE_ROOT: &str = "/run/ingot/shim";
const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";
const LISTEN_FD_ENV: &str = "INGOT_SHIM_LISTEN_FD";
const LISTEN_FD: i32 = 3;

pub fn run() -> anyhow::Result<()> {
    let args: Vec<_> = env::args_os().collect();
    if args
        .get(1)
        .is_some_and(|arg| arg == crate::zygote::ZYGOTE_ARG)
    {
        std::process::exit(crate::zygote::main());
    }
    run_args(&args)
}

/// The shim with the command line `args` (the program first).
pub fn run_args(args: &[std::ffi::OsString]) -> anyhow::Result<()> {
    let flags =
        containerd_shim::parse(args.get(1..).unwrap_or_default()).context("parse shim flags")?;
    if flags.namespace.is_empty() {
        bail!("-namespace is required");
    }
    match flags.action.as_str() {
        "start" => start(&flags),
        "delete" => delete(&flags),
        "" => serve(&flags),
        other => bail!("unknown action {other:?}"),
    }
}

/// Set by a daemon other than containerd (ingotd) to keep its shims' state and sockets under
/// its own runtime directory: `<dir>/<namespace>` for state, `<dir>/s` for sockets.
pub const ROOT_ENV: &str = "INGOT_SHIM_ROOT";

fn root_override() -> Option<PathBuf> {
    env::var_os(ROOT_ENV)
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
}

fn state_root(namespace: &str) -> PathBuf {
    root_override()
        .unwrap_or_else(|| PathBuf::from(STATE_ROOT))
        .join(namespace)
}

fn bundle_dir(flags: &Flags) -> anyhow::Result<PathBuf> {
    if flags.bundle.is_empty() {
        env::current_dir().context("current directory")
    } else {
        Ok(PathBuf::from(&flags.bundle))
    }
}

/// The pod a container belongs to: its CRI sandbox id, or itself.
pub fn grouping(bundle: &Path, id: &str) -> String {
    std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|text| serde_json::from_slice::<serde_json::Value>(&text).ok())
        .and_then(|spec| {
            spec.get("annotations")?
                .get(SANDBOX_ID_ANNOTATION)?
                .as_str()
                .map(str::to_string)
        })
        .filter(|sandbox| !sandbox.is_empty())
        .unwrap_or_else(|| id.to_string())
}

/// The pod's shim socket: named by a hash of the daemon's address, namespace and pod, as
/// containerd names it; under [`ROOT_ENV`]`/s` when that is set.
fn shim_address(address: &str, namespace: &str, group: &str) -> String {
    let containerd = containerd_shim::socket_address(address, namespace, group);
    match root_override() {
        Some(dir) => {
            let name = Path::new(socket_path(&containerd))
                .file_name()
                .map(|n| n.to_os_string())
                .unwrap_or_default();
            format!("unix://{}", dir.join("s").join(name).display())
        }
        None => containerd,
    }
}

/// The filesystem path of a `unix://` address (a bare path is returned as is).
pub(crate) fn socket_path(address: &str) -> &str {
    address.strip_prefix("unix://").unwrap_or(address)
}

fn start(flags: &Flags) -> anyhow::Result<()> {
    let bundle = bundle_dir(flags)?;
    let group = grouping(&bundle, &flags.id);
    let address = shim_address(&flags.address, &flags.namespace, &group);
    let path = socket_path(&address);

    if UnixStream::connect(path).is_err() {
        let _ = std::fs::remove_file(path);
        if let Some(parent) = Path::new(path).parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("create {}", parent.display()))?;
        }
        let listener =
            UnixListener::bind(path).with_context(|| format!("bind shim socket {path}"))?;
        spawn_server(flags, &bundle, &address, listener)?;
    }
    std::fs::write(bundle.join("address"), &address).context("write address file")?;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(address.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

fn spawn_server(
    flags: &Flags,
    bundle: &Path,
    address: &str,
    listener: UnixListener,
) -> anyhow::Result<()> {
    let exe = env::current_exe().context("find shim binary")?;
    let listen_fd: OwnedFd = listener.into();
    let raw = listen_fd.as_raw_fd();
    let mut command = Command::new(exe);
    command
        .current_dir(bundle)
        .args(["-namespace", &flags.namespace, "-id", &flags.id])
        .args(["-address", &flags.address, "-socket", address])
        .env(LISTEN_FD_ENV, LISTEN_FD.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(server_stderr());
    if !flags.publish_binary.is_empty() {
        command.args(["-publish-binary", &flags.publish_binary]);
    }
    if flags.debug {
        command.arg("-debug");
    }
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if raw == LISTEN_FD {
                if libc::fcntl(LISTEN_FD, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(raw, LISTEN_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // The server outlives this process; containerd reaps nothing of ours.
    command.spawn().context("spawn shim server")?;
    drop(listen_fd);
    Ok(())
}

/// The serving shim's stderr before its logger is set up: its log file when ingotd names one
/// (so a failure to start is in it too), else nowhere (containerd reads the `log` fifo).
fn server_stderr() -> Stdio {
    crate::shimlog::path_from_env()
        .and_then(|path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .ok()
        })
        .map_or_else(Stdio::null, Stdio::from)
}

fn delete(flags: &Flags) -> anyhow::Result<()> {
    let bundle = bundle_dir(flags)?;
    let root = state_root(&flags.namespace);
    let request = crate::helper::Request {
        op: crate::helper::Op::Delete {
            work_dir: root.join(format!("{}.ingot", flags.id)),
        },
        root: root.clone(),
        id: flags.id.clone(),
        pid_file: PathBuf::new(),
        console_socket: None,
    };
    let output = Command::new(crate::helper::binary())
        .arg(serde_json::to_string(&request)?)
        .stdin(Stdio::null())
        .output()
        .context("run the runtime helper")?;
    if !output.status.success() {
        eprintln!("delete container {}: helper {}", flags.id, output.status);
    }
    let rootfs = bundle.join("rootfs");
    if is_mount_point(&rootfs) {
        service::unmount(&rootfs);
    }
    let _ = std::fs::remove_dir_all(root.join(format!("{}.ingot", flags.id)));
    let response = DeleteResponse {
        exit_status: 128 + 9,
        exited_at: Some(containerd_shim::util::timestamp()?).into(),
        ..Default::default()
    };
    let mut stdout = std::io::stdout().lock();
    response.write_to_writer(&mut stdout)?;
    stdout.flush()?;
    Ok(())
}

fn is_mount_point(path: &Path) -> bool {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let target = path.to_string_lossy();
    mountinfo
        .lines()
        .any(|line| line.split_whitespace().nth(4) == Some(target.as_ref()))
}

fn serve(flags: &Flags) -> anyhow::Result<()> {
    if let Some(path) = crate::shimlog::path_from_env() {
        let level = if flags.debug {
            log::LevelFilter::Debug
        } else {
            log::LevelFilter::Info
        };
        crate::shimlog::init(&path, level)
            .with_context(|| format!("open the shim log {}", path.display()))?;
    } else if containerd_shim::logger::init(flags.debug, "info", &flags.namespace, &flags.id)
        .is_err()
    {
        // No log fifo (started by hand): containerd is not reading our logs anyway.
        log::set_max_level(log::LevelFilter::Off);
    }
    nix::sys::prctl::set_child_subreaper(true).context("become a subreaper")?;
    // containerd may signal the shim's process group; the shim stays for its containers.
    let ignored = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&ignored)).context("signal handler")?;
    }

    let root = state_root(&flags.namespace);
    // A working directory of this shim's own, for as long as it runs: the first container's
    // bundle may be deleted before the pod ends, and the namespace's state root is shared by
    // every pod's shim (libcontainer and the helper resolve paths against the working
    // directory, so it must never vanish under a live shim).
    let work_dir = shim_work_dir(&root, &flags.id);
    std::fs::create_dir_all(&work_dir).with_context(|| format!("create {}", work_dir.display()))?;
    env::set_current_dir(&work_dir).with_context(|| format!("chdir {}", work_dir.display()))?;
    let listen_fd = match env::var(LISTEN_FD_ENV) {
        Ok(fd) => Some(fd.parse::<i32>().context("listen fd")?),
        Err(_) => None,
    };
    // Before the first thread: the spare is forked from a single-threaded shim.
    let spare = fork_spare(listen_fd);

    // containerd gives its events address; ingotd gives none (it learns exits through Wait and
    // OOM kills from the cgroup), and then neither the publisher's thread nor the OOM
    // watcher's is started: two threads, and a registration per container, that every pod
    // would pay for nothing.
    let events_tx = env::var("TTRPC_ADDRESS").ok().map(|address| {
        let (events_tx, events_rx) = mpsc::channel::<Event>();
        start_publisher(events_rx, address, flags.namespace.clone());
        events_tx
    });

    let reaper = Arc::new(Reaper::default());
    let exit = Arc::new(ExitSignal::default());
    let service = Service::new(
        &flags.namespace,
        root,
        events_tx,
        Arc::clone(&reaper),
        Arc::clone(&exit),
    );
    if let Some(spare) = spare {
        service.set_spare_helper(spare);
    }
    if service.publishes() {
        if let Err(err) = service.start_oom_watcher() {
            tracing::warn!(error = %err, "OOM events disabled");
        }
    }
    let on_exit = service.clone();
    reaper
        .start(move |pid, code| on_exit.on_exit(pid, code))
        .context("start reaper")?;

    let listener = match listen_fd {
        // SAFETY: the fd ingotd (or the shim's start action) passed is the listening socket,
        // owned by nothing else in this process.
        Some(fd) => unsafe { UnixListener::from_raw_fd(fd) },
        None => {
            let path = socket_path(&flags.socket);
            UnixListener::bind(path).with_context(|| format!("bind shim socket {path}"))?
        }
    };
    let task: Arc<dyn containerd_shim::Task + Send + Sync> = Arc::new(service.clone());
    let mut methods = crate::serve::task_methods(Arc::clone(&task), "containerd.task.v3.Task");
    methods.extend(crate::serve::task_methods(task, "containerd.task.v2.Task"));
    let server = crate::serve::Server::new(methods);
    server.start(listener).context("start ttrpc server")?;
    tracing::info!(namespace = %flags.namespace, id = %flags.id, "shim serving");

    exit.wait();
    server.shutdown();
    if !flags.socket.is_empty() {
        let _ = std::fs::remove_file(socket_path(&flags.socket));
    }
    // Only this shim's own directory: the namespace's state root stays for the other pods'
    // shims (as containerd keeps its per-namespace task directory).
    let _ = env::set_current_dir("/");
    let _ = std::fs::remove_dir_all(&work_dir);
    Ok(())
}

/// Fills std's cache of CPU features (`is_x86_feature_detected!`) in a process that forks the
/// others: the shims, their spare helper and the container processes it forks inherit it,
/// where each would otherwise probe with `cpuid` on first use (a VM exit per leaf on a
/// virtual machine). Later calls only read the cache.
fn detect_cpu_features() {
    #[cfg(target_arch = "x86_64")]
    let _ = std::arch::is_x86_feature_detected!("avx2");
}

/// What a process that forks the others learns once for all of them: the CPU features (above),
/// the host's cgroup mounts ([`crate::cgroups::host_cgroup_mounts`]) and libpathrs's cached
/// procfs handle. That handle (a detached `subset=pid` procfs mount, close-on-exec) is what
/// libcgroups and libcontainer open `/proc/self/...` through; a container's init made its
/// own on first use, a new procfs superblock per container. A procfs of an ancestor PID
/// namespace resolves `/proc/self` in the container's init as well, and the init closes (marks
/// close-on-exec) every inherited descriptor before its process runs.
///
/// Once per process image: a shim forked by the zygote inherits what the zygote learnt (asking
/// pathrs for its handle again would only check it once more, a dozen system calls).
pub(crate) fn learn_host_before_forks() {
    static LEARNT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if LEARNT.swap(true, std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    detect_cpu_features();
    let _ = crate::cgroups::host_cgroup_mounts();
    let _ = pathrs::procfs::ProcfsHandle::new();
}

/// Forks the spare helper (see [`crate::spare`]) unless this process already has threads.
fn fork_spare(listen_fd: Option<i32>) -> Option<crate::spare::Spare> {
    let threads = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Threads:"))
                .and_then(|n| n.trim().parse::<u32>().ok())
        });
    if threads != Some(1) {
        tracing::warn!(?threads, "no spare helper: the shim is not single-threaded");
        return None;
    }
    learn_host_before_forks();
    let close: Vec<i32> = listen_fd.into_iter().collect();
    // SAFETY: the process has one thread (checked above, before any thread is started).
    match unsafe { crate::spare::Spare::fork(&close) } {
        Ok(spare) => Some(spare),
        Err(err) => {
            tracing::warn!(error = %err, "no spare helper");
            None
        }
    }
}

/// Suffix of a shim's own working directory in the namespace's state root (beside the
/// containers' `<id>` and `<id>.ingot` directories).
pub const SHIM_DIR_SUFFIX: &str = ".shim";

/// The working directory of the shim started with `-id id`: unique while it runs, since a
/// shim's id is its pod's (or its first container's).
fn shim_work_dir(root: &Path, id: &str) -> PathBuf {
    root.join(format!("{id}{SHIM_DIR_SUFFIX}"))
}

fn start_publisher(events: mpsc::Receiver<Event>, address: String, namespace: String) {
    let spawned = thread::Builder::new().name("events".into()).spawn(move || {
        let mut publisher = Publisher::new(&address, &namespace);
        for (topic, event) in events {
            if let Err(err) = publisher.publish(topic, event.as_ref()) {
                tracing::warn!(topic, error = %err, "publish event");
            }
        }
    });
    if let Err(err) = spawned {
        tracing::warn!(error = %err, "events thread");
    }
}
