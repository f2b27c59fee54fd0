//! A pod's shared namespaces without a pause process: network, IPC and UTS namespaces are
//! created once by a short-lived thread and pinned by bind mounts of its `/proc/thread-self/ns/*`
//! files under the pod's directory (like CRI-O's pinned namespaces); containers join them by
//! path. Also runs CNI plugins (spec 1.0) against a pinned network namespace.

use std::{
    io::{Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use nix::{
    mount::{mount, umount2, MntFlags, MsFlags},
    sched::{unshare, CloneFlags},
    sys::{memfd::MemFdCreateFlag, wait::WaitStatus},
    unistd::Pid,
};

/// Everything creating, removing or configuring pod namespaces can fail with.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The kernel refused a sysctl in the new namespaces (no such sysctl, a bad value).
    #[error("sysctl {name}={value:?}: {reason}")]
    Sysctl {
        name: String,
        value: String,
        reason: String,
        #[source]
        source: std::io::Error,
    },
    #[error("CNI plugin {plugin} {command}: {message}")]
    Cni {
        plugin: String,
        command: String,
        message: String,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> NetnsError {
    let context = context.into();
    move |source| NetnsError::Io { context, source }
}

fn errno(context: impl Into<String>) -> impl FnOnce(nix::errno::Errno) -> NetnsError {
    let context = context.into();
    move |errno| NetnsError::Io {
        context,
        source: errno.into(),
    }
}

/// A namespace kind a pod shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Net,
    Ipc,
    Uts,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Net => "net",
            Kind::Ipc => "ipc",
            Kind::Uts => "uts",
        }
    }

    fn flag(self) -> CloneFlags {
        match self {
            Kind::Net => CloneFlags::CLONE_NEWNET,
            Kind::Ipc => CloneFlags::CLONE_NEWIPC,
            Kind::Uts => CloneFlags::CLONE_NEWUTS,
        }
    }
}

/// Pinned namespaces of one pod: `<dir>/<kind>` files, each a bind mount of a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pinned {
    pub dir: PathBuf,
    pub kinds: Vec<Kind>,
}

impl Pinned {
    pub fn path(&self, kind: Kind) -> Option<PathBuf> {
        self.kinds
            .contains(&kind)
            .then(|| self.dir.join(kind.name()))
    }
}

/// A sysctl to write in new namespaces: its dotted name and the file under `/proc/sys`.
#[derive(Debug, Clone)]
pub struct Sysctl {
    pub name: String,
    pub path: String,
    pub value: String,
}

/// Writes one sysctl as the calling thread's namespaces see it (`/proc/sys/net` and the IPC
/// and UTS files are per namespace of the task that opens them).
fn write_sysctl(sysctl: &Sysctl) -> Result<(), NetnsError> {
    let file = Path::new("/proc/sys").join(&sysctl.path);
    let refused = |reason: &str, source: std::io::Error| NetnsError::Sysctl {
        name: sysctl.name.clone(),
        value: sysctl.value.clone(),
        reason: format!("{reason} ({})", file.display()),
        source,
    };
    let mut opened = std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .map_err(|err| {
            let reason = match err.kind() {
                std::io::ErrorKind::NotFound => "no such sysctl in this kernel",
                std::io::ErrorKind::PermissionDenied => "not writable",
                _ => "cannot be opened",
            };
            refused(reason, err)
        })?;
    opened
        .write_all(sysctl.value.as_bytes())
        .map_err(|err| refused("the kernel refused the value", err))
}

/// Creates new namespaces of `kinds` (setting `hostname` in a new UTS namespace, writing
/// `sysctls` in them, bringing a new network namespace's `lo` up) and pins them under `dir`.
/// On failure nothing stays mounted.
pub fn pin(
    dir: &Path,
    kinds: &[Kind],
    hostname: Option<&str>,
    sysctls: &[Sysctl],
) -> Result<Pinned, NetnsError> {
    std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
    for kind in kinds {
        let file = dir.join(kind.name());
        std::fs::File::create(&file).map_err(io(format!("create {}", file.display())))?;
    }
    let pinned = Pinned {
        dir: dir.to_path_buf(),
        kinds: kinds.to_vec(),
    };
    let worker = pinned.clone();
    let hostname = hostname.map(str::to_string);
    let sysctls = sysctls.to_vec();
    // Namespaces belong to the thread that unshares; this one exists only to make and pin them.
    let result = std::thread::Builder::new()
        .name("netns-pin".into())
        .spawn(move || -> Result<(), NetnsError> {
            let flags = worker
                .kinds
                .iter()
                .fold(CloneFlags::empty(), |flags, kind| flags | kind.flag());
            unshare(flags).map_err(errno("unshare pod namespaces"))?;
            if let Some(name) = &hostname {
                if worker.kinds.contains(&Kind::Uts) {
                    nix::unistd::sethostname(name).map_err(errno("set pod hostname"))?;
                }
            }
            // In the new namespaces, before anything joins them (as CRI-O's pinns does).
            for sysctl in &sysctls {
                write_sysctl(sysctl)?;
            }
            // A pod's loopback is up whatever its network configuration holds, as the CNI
            // loopback plugin leaves it; here, in the thread that is already inside.
            if worker.kinds.contains(&Kind::Net) {
                lo_up_here()?;
            }
            for kind in &worker.kinds {
                let source = format!("/proc/thread-self/ns/{}", kind.name());
                let target = worker.dir.join(kind.name());
                mount(
                    Some(source.as_str()),
                    &target,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(errno(format!(
                    "pin {} namespace at {}",
                    kind.name(),
                    target.display()
                )))?;
            }
            Ok(())
        })
        .map_err(io("spawn namespace thread"))?
        .join()
        .unwrap_or_else(|_| {
            Err(NetnsError::Io {
                context: "namespace thread".into(),
                source: std::io::Error::other("panicked"),
            })
        });
    if let Err(err) = result {
        remove(&pinned);
        return Err(err);
    }
    Ok(pinned)
}

/// Starts `program args` as PID 1 of a new PID namespace (the holder a pod's shared PID
/// namespace needs: unlike network or IPC namespaces, a PID namespace ends with its init), in
/// its own session, with no stdio. Before it runs `program` it joins a cgroup through each of
/// `cgroup_files` (a v1 hierarchy's `tasks` or a v2 `cgroup.procs`), so it is in the pod's
/// cgroups from its first instruction. Returns its pid; the caller ends it by pid.
pub fn spawn_pid_holder(
    program: &Path,
    args: &[&str],
    cgroup_files: &[PathBuf],
) -> Result<u32, NetnsError> {
    let program = program.to_path_buf();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    // Opened here (close-on-exec), written by the child between fork and exec.
    let joins = cgroup_files
        .iter()
        .map(|file| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(file)
                .map(|f| (file.clone(), std::os::fd::OwnedFd::from(f)))
                .map_err(io(format!("open {}", file.display())))
        })
        .collect::<Result<Vec<_>, _>>()?;
    std::thread::Builder::new()
        .name("pidns-holder".into())
        .spawn(move || -> Result<u32, NetnsError> {
            // Affects only the children this thread creates.
            unshare(CloneFlags::CLONE_NEWPID).map_err(errno("unshare a PID namespace"))?;
            let raw: Vec<i32> = joins
                .iter()
                .map(|(_, fd)| std::os::fd::AsRawFd::as_raw_fd(fd))
                .collect();
            let mut command = Command::new(&program);
            command
                .args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            // SAFETY: setsid and write are async-signal-safe; the closure allocates nothing.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
                    nix::unistd::setsid().map_err(std::io::Error::from)?;
                    // "0" moves the writer: a forked child is single-threaded, so this moves
                    // the whole process (a v1 `tasks` write takes no threadgroup lock).
                    for fd in &raw {
                        if nix::libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
            let child = command.spawn().map_err(io(format!(
                "start {} in the cgroups {:?}",
                program.display(),
                joins.iter().map(|(file, _)| file).collect::<Vec<_>>()
            )))?;
            Ok(child.id())
        })
        .map_err(io("spawn PID namespace thread"))?
        .join()
        .unwrap_or_else(|_| {
            Err(NetnsError::Io {
                context: "PID namespace thread".into(),
                source: std::io::Error::other("panicked"),
            })
        })
}

/// Unpins and removes the namespace files and their directory. Idempotent.
pub fn remove(pinned: &Pinned) {
    for kind in &pinned.kinds {
        let file = pinned.dir.join(kind.name());
        let _ = umount2(&file, MntFlags::MNT_DETACH);
        let _ = std::fs::remove_file(&file);
    }
    let _ = std::fs::remove_dir(&pinned.dir);
}

/// The flags (`IFF_*`) of interface `name` as the calling thread's network namespace sees it.
fn interface_flags(name: &str) -> Result<(std::os::fd::OwnedFd, nix::libc::ifreq), NetnsError> {
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: plain socket(2); the fd is owned right away.
    let raw = unsafe {
        nix::libc::socket(
            nix::libc::AF_INET,
            nix::libc::SOCK_DGRAM | nix::libc::SOCK_CLOEXEC,
            0,
        )
    };
    if raw < 0 {
        return Err(io("socket for interface flags")(
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: raw is a fresh fd nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut request: nix::libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request
        .ifr_name
        .iter_mut()
        .zip(name.bytes().take(nix::libc::IFNAMSIZ - 1))
    {
        *slot = nix::libc::c_char::from_ne_bytes([byte]);
    }
    // SAFETY: SIOCGIFFLAGS reads the name and writes the flags of a valid ifreq.
    let rc = unsafe {
        nix::libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            nix::libc::SIOCGIFFLAGS,
            &mut request,
        )
    };
    if rc < 0 {
        return Err(io(format!("flags of interface {name}"))(
            std::io::Error::last_os_error(),
        ));
    }
    Ok((socket, request))
}

/// Whether interface `name` is up in the network namespace at `netns`.
pub fn interface_is_up(netns: &Path, name: &str) -> Result<bool, NetnsError> {
    let name = name.to_string();
    in_netns(netns, move || {
        interface_flags(&name).map(|(_, request)| {
            // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
            let flags = unsafe { request.ifr_ifru.ifru_flags };
            i32::from(flags) & nix::libc::IFF_UP != 0
        })
    })?
}

/// Brings the loopback interface up in the network namespace at `netns`, as the CNI loopback
/// plugin does, without running a plugin process.
pub fn loopback_up(netns: &Path) -> Result<(), NetnsError> {
    in_netns(netns, lo_up_here)?
}

/// Brings `lo` up in the calling thread's network namespace.
fn lo_up_here() -> Result<(), NetnsError> {
    {
        let (socket, mut request) = interface_flags("lo")?;
        // SAFETY: the flags member is the one SIOCGIFFLAGS filled and SIOCSIFFLAGS reads.
        unsafe {
            let flags =
                i32::from(request.ifr_ifru.ifru_flags) | nix::libc::IFF_UP | nix::libc::IFF_RUNNING;
            request.ifr_ifru.ifru_flags =
                i16::try_from(flags).unwrap_or(request.ifr_ifru.ifru_flags);
        }
        // SAFETY: SIOCSIFFLAGS reads a valid ifreq.
        let rc = unsafe {
            nix::libc::ioctl(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                nix::libc::SIOCSIFFLAGS,
                &request,
            )
        };
        if rc < 0 {
            return Err(io("bring lo up")(std::io::Error::last_os_error()));
        }
        Ok(())
    }
}

/// Runs `f` in a thread that has joined the network namespace at `netns`.
pub fn in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, NetnsError> {
    let file = std::fs::File::open(netns).map_err(io(format!("open {}", netns.display())))?;
    std::thread::spawn(move || -> Result<T, NetnsError> {
        nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).map_err(errno("enter netns"))?;
        Ok(f())
    })
    .join()
    .unwrap_or_else(|_| {
        Err(NetnsError::Io {
            context: "netns thread".into(),
            source: std::io::Error::other("panicked"),
        })
    })
}

/// One CNI plugin invocation (spec 1.0): `command` is ADD, DEL or CHECK; `config` the plugin's
/// network configuration (with `cniVersion` and `name`). Returns the plugin's JSON result.
pub struct CniCall<'a> {
    pub plugin_dirs: &'a [PathBuf],
    pub command: &'a str,
    pub container_id: &'a str,
    pub netns: &'a Path,
    pub ifname: &'a str,
    /// `CNI_ARGS` (`K=V;K=V`), empty for none.
    pub args: &'a str,
    pub config: &'a serde_json::Value,
}

/// `GOMAXPROCS` for the plugins when the daemon's environment sets none.
pub const PLUGIN_GOMAXPROCS: &str = "1";

/// PATH for plugins when the daemon has none.
pub const PLUGIN_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub fn run_plugin(call: &CniCall<'_>) -> Result<serde_json::Value, NetnsError> {
    let plugin = call
        .config
        .get("type")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .to_string();
    let cni = |message: String| NetnsError::Cni {
        plugin: plugin.clone(),
        command: call.command.to_string(),
        message,
    };
    if plugin.is_empty() || plugin.contains('/') {
        return Err(cni(
            "the network configuration names no plugin \"type\"".into()
        ));
    }
    let binary = call
        .plugin_dirs
        .iter()
        .map(|dir| dir.join(&plugin))
        .find(|path| path.is_file())
        .ok_or_else(|| cni(format!("not found in {:?}", call.plugin_dirs)))?;
    let path =
        std::env::join_paths(call.plugin_dirs).map_err(|err| cni(format!("plugin dirs: {err}")))?;
    let mut command = Command::new(&binary);
    // Plugins run tools found on PATH (bridge's ipMasq and portmap run iptables), so they get
    // the daemon's environment and the CNI variables, as libcni runs them; a daemon started
    // without PATH gives them the usual one.
    if std::env::var_os("PATH").is_none() {
        command.env("PATH", PLUGIN_PATH);
    }
    // A plugin is a one-shot process doing one thing at a time; a Go plugin (most are) would
    // otherwise size its runtime for one running thread per CPU, and with many pods starting at
    // once spend CPU on threads that spin looking for work. With one, host-local starts 3
    // threads instead of 5 on 2 CPUs, and a 10-pod churn burst is about 4% shorter. A daemon
    // started with GOMAXPROCS passes its own.
    if std::env::var_os("GOMAXPROCS").is_none() {
        command.env("GOMAXPROCS", PLUGIN_GOMAXPROCS);
    }
    // stderr goes to a memory file, so reading stdout alone cannot block on a full pipe.
    let stderr = std::fs::File::from(
        nix::sys::memfd::memfd_create(c"cni-plugin-stderr", MemFdCreateFlag::MFD_CLOEXEC)
            .map_err(errno("create a file for the plugin's stderr"))?,
    );
    let mut child = command
        .env("CNI_COMMAND", call.command)
        .env("CNI_CONTAINERID", call.container_id)
        .env("CNI_NETNS", call.netns)
        .env("CNI_IFNAME", call.ifname)
        .env("CNI_PATH", path)
        .env("CNI_ARGS", call.args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(
            stderr
                .try_clone()
                .map_err(io("duplicate the plugin's stderr file"))?,
        ))
        .spawn()
        .map_err(io(format!("run {}", binary.display())))?;
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    // Whatever happens to its pipes, the plugin is waited for and reaped.
    let stdout = exchange(&mut child, call.config);
    let exited = reap::wait_exited(pid);
    reap::release(pid);
    let stdout = stdout.map_err(|err| cni(err.to_string()))?;
    let status = exited.map_err(errno(format!("wait for {}", binary.display())))?;
    let result: serde_json::Value = if stdout.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&stdout).map_err(|err| {
            cni(format!(
                "unreadable result ({err}): {}",
                String::from_utf8_lossy(&stdout)
            ))
        })?
    };
    if !matches!(status, WaitStatus::Exited(_, 0)) {
        let message = result
            .get("msg")
            .and_then(serde_json::Value::as_str)
            .map(str::to_string)
            .or_else(|| Some(read_start(&stderr)).filter(|text| !text.is_empty()))
            .unwrap_or_else(|| describe(status));
        let details = result
            .get("details")
            .and_then(serde_json::Value::as_str)
            .map(|d| format!(" ({d})"))
            .unwrap_or_default();
        return Err(cni(format!("{message}{details}")));
    }
    Ok(result)
}

/// The most of a plugin's stderr kept for its error message.
const STDERR_LIMIT: u64 = 64 * 1024;

/// The start of what a plugin wrote to its stderr file, trimmed.
fn read_start(mut file: &std::fs::File) -> String {
    let mut bytes = Vec::new();
    let _ = file
        .seek(SeekFrom::Start(0))
        .and_then(|_| file.take(STDERR_LIMIT).read_to_end(&mut bytes));
    String::from_utf8_lossy(&bytes).trim().to_string()
}

/// Writes `config` to the plugin's stdin, closes it and reads its stdout to the end. A plugin
/// that exits without reading its configuration is no error here: its exit says why.
fn exchange(child: &mut Child, config: &serde_json::Value) -> std::io::Result<Vec<u8>> {
    if let Some(mut stdin) = child.stdin.take() {
        let config = serde_json::to_vec(config)?;
        match stdin.write_all(&config) {
            Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => {}
            other => other?,
        }
    }
    let mut stdout = Vec::new();
    if let Some(mut pipe) = child.stdout.take() {
        pipe.read_to_end(&mut stdout)?;
    }
    Ok(stdout)
}

/// How a plugin that printed nothing ended.
fn describe(status: WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exited with status {code} and printed nothing"),
        WaitStatus::Signaled(_, signal, _) => format!("killed by {signal}"),
        other => format!("ended: {other:?}"),
    }
}

pub mod cni;
mod reap;
pub use reap::release as reap_later;

#[cfg(test)]
mod tests;
