//! Exec into a running container without the runtime helper: the shim forks, the child joins
//! the container's cgroups and namespaces (the mount namespace last) and forks the process, which
//! takes the exec spec's identity (groups, gid, uid, capabilities, no_new_privs, the container's
//! seccomp profile compiled to BPF at create), changes directory and execs. The same steps runc's
//! and libcontainer's exec take, minus a runtime binary's start-up, a spec reload and a cgroup
//! manager per exec: probes and ExecSync are the hot path on a node.
//!
//! Everything is prepared before the fork; the children only make raw system calls (the shim is
//! multi-threaded). A failure before the final execve is reported through a close-on-exec pipe
//! as (stage, errno), so the Start RPC fails with the cause, as with the helper.
//!
//! Not handled here (the helper does them): terminal mode, and profiles with a notify action.

use std::{
    ffi::CString,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    path::{Path, PathBuf},
};

use serde_json::Value;

use crate::error::{Result, ShimError};

/// The container's seccomp profile as BPF, written by the helper at create.
pub const SECCOMP_BPF_FILE: &str = "seccomp.bpf";
/// Written by the helper at create when this path may exec into the container: `none` (no
/// profile) or `seccomp` (the profile is in [`SECCOMP_BPF_FILE`]). Without it (a container made
/// before this path existed, a notify profile, a failed export) execs go through the helper.
pub const ELIGIBLE_FILE: &str = "fastexec";

/// Namespaces joined, in order; the mount namespace last (after it, host paths are gone).
const NAMESPACES: &[(&str, libc::c_int)] = &[
    ("cgroup", libc::CLONE_NEWCGROUP),
    ("ipc", libc::CLONE_NEWIPC),
    ("uts", libc::CLONE_NEWUTS),
    ("net", libc::CLONE_NEWNET),
    ("pid", libc::CLONE_NEWPID),
    ("mnt", libc::CLONE_NEWNS),
];

/// Stages a child reports a failure at.
const STAGES: &[&str] = &[
    "join cgroup",
    "join namespace",
    "fork into the pid namespace",
    "set up stdio",
    "drop bounding capabilities",
    "set no_new_privs",
    "install the seccomp filter",
    "set groups",
    "set gid",
    "set uid",
    "set capabilities",
    "raise ambient capabilities",
    "change directory",
    "exec",
    "reset the CPU affinity",
];
const STAGE_CGROUP: u32 = 0;
const STAGE_SETNS: u32 = 1;
const STAGE_FORK: u32 = 2;
const STAGE_STDIO: u32 = 3;
const STAGE_BOUNDING: u32 = 4;
const STAGE_NNP: u32 = 5;
const STAGE_SECCOMP: u32 = 6;
const STAGE_GROUPS: u32 = 7;
const STAGE_GID: u32 = 8;
const STAGE_UID: u32 = 9;
const STAGE_CAPS: u32 = 10;
const STAGE_AMBIENT: u32 = 11;
const STAGE_CHDIR: u32 = 12;
const STAGE_EXEC: u32 = 13;
const STAGE_AFFINITY: u32 = 14;

/// The process fields this path applies; an exec whose process sets any other goes through the
/// runtime helper, which applies them all (rlimits, scheduler, I/O priority, CPU affinity, OOM
/// score, labels).
const HONOURED_FIELDS: &[&str] = &[
    "terminal",
    "user",
    "args",
    "env",
    "cwd",
    "capabilities",
    "noNewPrivileges",
];

/// The first process field set in `process` that this path does not apply.
pub fn unhonoured_field(process: &Value) -> Option<&str> {
    let fields = process.as_object()?;
    fields
        .iter()
        .filter(|(name, _)| !HONOURED_FIELDS.contains(&name.as_str()))
        .find(|(_, value)| match value {
            Value::Null => false,
            Value::String(text) => !text.is_empty(),
            Value::Array(items) => !items.is_empty(),
            Value::Object(entries) => !entries.is_empty(),
            _ => true,
        })
        .map(|(name, _)| name.as_str())
}

const MSG_PID: u32 = 1;
const MSG_ERROR: u32 = 2;

/// Capability sets as bit masks (bit n = capability number n).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    pub bounding: u64,
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    pub ambient: u64,
}

/// Everything an exec needs, resolved before the fork.
pub struct Plan {
    namespaces: Vec<(OwnedFd, libc::c_int)>,
    cgroup_joins: Vec<OwnedFd>,
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
    caps: Caps,
    last_cap: u32,
    no_new_privs: bool,
    seccomp: Option<Vec<libc::sock_filter>>,
    cwd: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    /// Paths to try for `argv[0]` inside the container (a PATH search).
    candidates: Vec<CString>,
}

fn cstring(what: &str, text: &str) -> Result<CString> {
    CString::new(text).map_err(|_| ShimError::InvalidArgument {
        what: what.to_string(),
        reason: format!("{text:?} holds a NUL byte"),
    })
}

fn invalid(reason: impl Into<String>) -> ShimError {
    ShimError::InvalidArgument {
        what: "exec process spec".into(),
        reason: reason.into(),
    }
}

/// Capability names (`CAP_NET_ADMIN`) to a mask; unknown names are an error.
pub fn cap_mask(names: Option<&Value>) -> Result<u64> {
    let mut mask = 0u64;
    for name in names.and_then(Value::as_array).into_iter().flatten() {
        let name = name.as_str().unwrap_or_default();
        let bit = ingot_oci::cri::ALL_CAPABILITIES
            .iter()
            .position(|known| *known == name)
            .ok_or_else(|| invalid(format!("unknown capability {name:?}")))?;
        mask |= 1u64 << bit;
    }
    Ok(mask)
}

/// The paths `argv0` is looked up at: itself when it holds a '/', else each `PATH` entry.
pub fn candidates(argv0: &str, env: &[String]) -> Vec<String> {
    if argv0.contains('/') {
        return vec![argv0.to_string()];
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    path.split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| format!("{}/{argv0}", dir.trim_end_matches('/')))
        .collect()
}

/// The files that move a process into the container's cgroup, one per cgroup hierarchy mounted
/// here: `tasks` in a v1 hierarchy, `cgroup.procs` in the unified one. The first child of an exec
/// is single-threaded and moves itself, and a v1 `tasks` write of "0" spares it the kernel's
/// global threadgroup lock (whose first writer waits an RCU grace period, milliseconds); cgroup v2
/// moves whole processes only.
pub fn cgroup_join_files(mountinfo: &str, cgroups_path: &Path) -> Vec<PathBuf> {
    let relative = cgroups_path.strip_prefix("/").unwrap_or(cgroups_path);
    crate::cgroups::mounts(mountinfo)
        .filter_map(|(mount_point, fs_type, _)| {
            let file = match fs_type {
                "cgroup" => "tasks",
                "cgroup2" => "cgroup.procs",
                _ => return None,
            };
            let file = Path::new(mount_point).join(relative).join(file);
            file.exists().then_some(file)
        })
        .collect()
}

/// A list of strings in the process spec (`args`, `env`); empty when absent.
fn strings(process: &Value, key: &str) -> Vec<String> {
    process
        .get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn read_bpf(path: &Path) -> Result<Vec<libc::sock_filter>> {
    let bytes = std::fs::read(path).map_err(ShimError::io(format!("read {}", path.display())))?;
    if bytes.is_empty() || bytes.len() % 8 != 0 {
        return Err(invalid(format!("{} is not a BPF program", path.display())));
    }
    Ok(bytes
        .chunks_exact(8)
        .map(|c| libc::sock_filter {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect())
}

impl Plan {
    /// Prepares an exec of `process` (the OCI process JSON) into the container whose init is
    /// `init_pid`, in cgroup `cgroups_path`, with its create-time files in `work_dir`. None when
    /// this path cannot do it (terminal mode, or no [`ELIGIBLE_FILE`]).
    pub fn new(
        process: &Value,
        init_pid: i32,
        cgroups_path: &Path,
        work_dir: &Path,
    ) -> Result<Option<Plan>> {
        if process.get("terminal").and_then(Value::as_bool) == Some(true) || init_pid <= 0 {
            return Ok(None);
        }
        if let Some(field) = unhonoured_field(process) {
            tracing::debug!(
                field,
                "exec through the runtime helper: the fast path does not apply this field"
            );
            return Ok(None);
        }
        let seccomp = match std::fs::read_to_string(work_dir.join(ELIGIBLE_FILE)).as_deref() {
            Ok("none") => None,
            Ok("seccomp") => Some(read_bpf(&work_dir.join(SECCOMP_BPF_FILE))?),
            _ => return Ok(None),
        };
        let args = strings(process, "args");
        let Some(argv0) = args.first() else {
            return Err(invalid("no args"));
        };
        let env = strings(process, "env");
        let cwd = process.get("cwd").and_then(Value::as_str).unwrap_or("/");
        let user = process.get("user");
        let id = |key: &str| -> Result<u32> {
            let value = user
                .and_then(|u| u.get(key))
                .and_then(Value::as_u64)
                .unwrap_or(0);
            u32::try_from(value).map_err(|_| invalid(format!("user.{key} {value} is not an id")))
        };
        let groups = user
            .and_then(|u| u.get("additionalGids"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_u64)
                    .filter_map(|g| u32::try_from(g).ok())
                    .collect()
            })
            .unwrap_or_default();
        let capabilities = process.get("capabilities");
        let caps = Caps {
            bounding: cap_mask(capabilities.and_then(|c| c.get("bounding")))?,
            effective: cap_mask(capabilities.and_then(|c| c.get("effective")))?,
            permitted: cap_mask(capabilities.and_then(|c| c.get("permitted")))?,
            inheritable: cap_mask(capabilities.and_then(|c| c.get("inheritable")))?,
            ambient: cap_mask(capabilities.and_then(|c| c.get("ambient")))?,
        };
        let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(40);

        let mut namespaces = Vec::new();
        for (name, flag) in NAMESPACES {
            let theirs = format!("/proc/{init_pid}/ns/{name}");
            let Ok(target) = std::fs::read_link(&theirs) else {
                continue;
            };
            if std::fs::read_link(format!("/proc/self/ns/{name}")).ok() == Some(target) {
                continue;
            }
            let file =
                std::fs::File::open(&theirs).map_err(ShimError::io(format!("open {theirs}")))?;
            namespaces.push((OwnedFd::from(file), *flag));
        }
        let mut cgroup_joins = Vec::new();
        for file in cgroup_join_files(crate::cgroups::host_cgroup_mounts(), cgroups_path) {
            let fd = std::fs::OpenOptions::new()
                .write(true)
                .open(&file)
                .map_err(ShimError::io(format!("open {}", file.display())))?;
            cgroup_joins.push(OwnedFd::from(fd));
        }
        if cgroup_joins.is_empty() {
            return Err(ShimError::FailedPrecondition {
                what: "exec".into(),
                reason: format!("no cgroup {} to join", cgroups_path.display()),
            });
        }
        Ok(Some(Plan {
            namespaces,
            cgroup_joins,
            uid: id("uid")?,
            gid: id("gid")?,
            groups,
            caps,
            last_cap,
            no_new_privs: process.get("noNewPrivileges").and_then(Value::as_bool) == Some(true),
            seccomp,
            cwd: cstring("cwd", cwd)?,
            argv: args
                .iter()
                .map(|a| cstring("args", a))
                .collect::<Result<_>>()?,
            envp: env
                .iter()
                .map(|e| cstring("env", e))
                .collect::<Result<_>>()?,
            candidates: candidates(argv0, &env)
                .iter()
                .map(|c| cstring("args", c))
                .collect::<Result<_>>()?,
        }))
    }

    /// Forks the process with `stdio` as fds 0-2; returns its pid once it has exec'd. The
    /// caller holds the reaper off and registers the pid before releasing it.
    pub fn spawn(&self, stdio: [RawFd; 3]) -> Result<i32> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: pipe2 fills two fds.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
            return Err(ShimError::io("exec report pipe")(
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: both fds are fresh and owned here.
        let (report_read, report_write) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let mut argv: Vec<*const libc::c_char> = self.argv.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const libc::c_char> = self.envp.iter().map(|e| e.as_ptr()).collect();
        envp.push(std::ptr::null());
        let prog = self.seccomp.as_ref().map(|filter| libc::sock_fprog {
            len: u16::try_from(filter.len()).unwrap_or(u16::MAX),
            filter: filter.as_ptr().cast_mut(),
        });
        let child = Child {
            plan: self,
            argv: &argv,
            envp: &envp,
            prog: prog.as_ref(),
            report: report_write.as_raw_fd(),
            stdio,
        };
        // SAFETY: the child runs only `Child::run`, which makes raw system calls on memory
        // prepared above and never returns.
        let first = unsafe { libc::fork() };
        if first < 0 {
            return Err(ShimError::io("fork for exec")(
                std::io::Error::last_os_error(),
            ));
        }
        if first == 0 {
            child.run_first();
        }
        drop(report_write);
        let mut status = 0;
        // SAFETY: waits for our own child.
        unsafe { libc::waitpid(first, &mut status, 0) };
        read_report(report_read.as_raw_fd())
    }
}

/// What the forked children use; references only memory prepared before the fork.
struct Child<'a> {
    plan: &'a Plan,
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
    prog: Option<&'a libc::sock_fprog>,
    report: RawFd,
    stdio: [RawFd; 3],
}

fn errno() -> u32 {
    u32::try_from(std::io::Error::last_os_error().raw_os_error().unwrap_or(0)).unwrap_or(0)
}

impl Child<'_> {
    fn send(&self, kind: u32, a: u32, b: u32) {
        let mut message = [0u8; 12];
        message[..4].copy_from_slice(&kind.to_ne_bytes());
        message[4..8].copy_from_slice(&a.to_ne_bytes());
        message[8..].copy_from_slice(&b.to_ne_bytes());
        // SAFETY: writes 12 bytes from a local buffer; a pipe write this small is atomic.
        unsafe { libc::write(self.report, message.as_ptr().cast(), message.len()) };
    }

    fn fail(&self, stage: u32) -> ! {
        self.send(MSG_ERROR, stage, errno());
        // SAFETY: leaves the child without running the parent's exit handlers.
        unsafe { libc::_exit(126) }
    }

    /// The first child: joins cgroups and namespaces, forks the process into the pid namespace,
    /// reports its pid and exits.
    fn run_first(&self) -> ! {
        for fd in &self.plan.cgroup_joins {
            // SAFETY: writes "0" (this process) to an open `tasks` or `cgroup.procs` file.
            if unsafe { libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) } < 0 {
                self.fail(STAGE_CGROUP);
            }
        }
        // Every CPU allowed, so the kernel confines the process to the container's cpuset: the
        // shim's own affinity (the housekeeping CPUs) would otherwise stay, as a cpuset move
        // keeps an affinity set with sched_setaffinity (Linux 6.2 on).
        // SAFETY: an all-ones cpu_set_t on this stack, its size passed with it.
        unsafe {
            let mut all: libc::cpu_set_t = std::mem::zeroed();
            for cpu in 0..libc::CPU_SETSIZE as usize {
                libc::CPU_SET(cpu, &mut all);
            }
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &all) < 0 {
                self.fail(STAGE_AFFINITY);
            }
        }
        for (fd, flag) in &self.plan.namespaces {
            // SAFETY: setns on an open namespace file.
            if unsafe { libc::setns(fd.as_raw_fd(), *flag) } < 0 {
                self.fail(STAGE_SETNS);
            }
        }
        // A raw clone: no fork handlers run in this child of a multi-threaded process.
        // SAFETY: SIGCHLD-only clone is fork; the grandchild runs `run_second` only.
        let pid = unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0) };
        if pid < 0 {
            self.fail(STAGE_FORK);
        }
        if pid == 0 {
            self.run_second();
        }
        self.send(MSG_PID, u32::try_from(pid).unwrap_or(0), 0);
        // SAFETY: as in `fail`.
        unsafe { libc::_exit(0) }
    }

    /// The process itself: identity, seccomp, directory, exec.
    fn run_second(&self) -> ! {
        // SAFETY (whole function): raw system calls on memory prepared before the fork.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            // Rust ignores SIGPIPE in the shim; the process gets the default back.
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            libc::setsid();
            for (target, fd) in self.stdio.iter().enumerate() {
                let target = libc::c_int::try_from(target).unwrap_or(0);
                if *fd == target {
                    if libc::fcntl(*fd, libc::F_SETFD, 0) < 0 {
                        self.fail(STAGE_STDIO);
                    }
                } else if libc::dup2(*fd, target) < 0 {
                    self.fail(STAGE_STDIO);
                }
            }
            // Nothing of the shim's beyond stdio reaches the process (some of its pipes are not
            // close-on-exec); the report pipe stays open until the exec.
            let marked = libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC);
            if marked < 0 {
                for fd in 3..4096 {
                    libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                }
            }
            let plan = self.plan;
            for cap in 0..=plan.last_cap.min(63) {
                if plan.caps.bounding & (1u64 << cap) == 0
                    && libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) < 0
                {
                    self.fail(STAGE_BOUNDING);
                }
            }
            if plan.no_new_privs && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
                self.fail(STAGE_NNP);
            }
            // Without no_new_privs, installing a filter needs CAP_SYS_ADMIN: before the drop.
            if !plan.no_new_privs {
                self.install_seccomp();
            }
            libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0);
            if libc::setgroups(plan.groups.len(), plan.groups.as_ptr()) < 0 {
                self.fail(STAGE_GROUPS);
            }
            if libc::setresgid(plan.gid, plan.gid, plan.gid) < 0 {
                self.fail(STAGE_GID);
            }
            if libc::setresuid(plan.uid, plan.uid, plan.uid) < 0 {
                self.fail(STAGE_UID);
            }
            let header = CapHeader {
                version: LINUX_CAPABILITY_VERSION_3,
                pid: 0,
            };
            let split = |mask: u64| {
                (
                    u32::try_from(mask & 0xffff_ffff).unwrap_or(0),
                    u32::try_from(mask >> 32).unwrap_or(0),
                )
            };
            let (e0, e1) = split(plan.caps.effective);
            let (p0, p1) = split(plan.caps.permitted);
            let (i0, i1) = split(plan.caps.inheritable);
            let data = [
                CapData {
                    effective: e0,
                    permitted: p0,
                    inheritable: i0,
                },
                CapData {
                    effective: e1,
                    permitted: p1,
                    inheritable: i1,
                },
            ];
            if libc::syscall(libc::SYS_capset, &header, data.as_ptr()) < 0 {
                self.fail(STAGE_CAPS);
            }
            for cap in 0..=plan.last_cap.min(63) {
                if plan.caps.ambient & (1u64 << cap) != 0
                    && libc::prctl(
                        libc::PR_CAP_AMBIENT,
                        libc::c_ulong::try_from(libc::PR_CAP_AMBIENT_RAISE).unwrap_or(0),
                        libc::c_ulong::from(cap),
                        0,
                        0,
                    ) < 0
                {
                    self.fail(STAGE_AMBIENT);
                }
            }
            if libc::chdir(plan.cwd.as_ptr()) < 0 {
                self.fail(STAGE_CHDIR);
            }
            if plan.no_new_privs {
                self.install_seccomp();
            }
            let mut last = libc::ENOENT;
            for candidate in &plan.candidates {
                libc::execve(candidate.as_ptr(), self.argv.as_ptr(), self.envp.as_ptr());
                let err = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
                // Keep looking along PATH past what is not there; report anything else.
                if err != libc::ENOENT && err != libc::ENOTDIR {
                    last = err;
                    break;
                }
            }
            self.send(MSG_ERROR, STAGE_EXEC, u32::try_from(last).unwrap_or(0));
            libc::_exit(127)
        }
    }

    fn install_seccomp(&self) {
        if let Some(prog) = self.prog {
            // SAFETY: a valid sock_fprog pointing at the prepared filter.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_seccomp,
                    SECCOMP_SET_MODE_FILTER,
                    0,
                    std::ptr::from_ref(prog),
                )
            };
            if rc < 0 {
                self.fail(STAGE_SECCOMP);
            }
        }
    }
}

const SECCOMP_SET_MODE_FILTER: libc::c_uint = 1;
const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Reads the children's report until EOF (the process exec'd, or every child is gone).
fn read_report(fd: RawFd) -> Result<i32> {
    let mut pid = None;
    let mut buf = [0u8; 12];
    loop {
        // SAFETY: reads into a local buffer.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(ShimError::io("read exec report")(err));
        }
        if n == 0 {
            break;
        }
        let word = |i: usize| u32::from_ne_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
        match word(0) {
            MSG_PID => pid = i32::try_from(word(4)).ok(),
            MSG_ERROR => {
                let stage = STAGES.get(word(4) as usize).copied().unwrap_or("exec");
                let errno = i32::try_from(word(8)).unwrap_or(0);
                let source = std::io::Error::from_raw_os_error(errno);
                if word(4) == STAGE_EXEC && errno == libc::ENOENT {
                    return Err(ShimError::Helper {
                        code: containerd_shim::protos::ttrpc::Code::NOT_FOUND,
                        message: "exec: executable file not found in $PATH".into(),
                    });
                }
                return Err(ShimError::Io {
                    context: format!("exec: {stage}"),
                    source,
                });
            }
            _ => {}
        }
    }
    pid.ok_or_else(|| ShimError::Io {
        context: "exec".into(),
        source: std::io::Error::other("the process was not started"),
    })
}

/// Starts a created container as libcontainer's `Container::start` does, without the helper:
/// the container's init waits on `notify.sock` in its state directory for "start container",
/// then the state records it running. False (nothing done) when the container has poststart
/// hooks, which the helper runs.
pub fn start_created(container_root: &Path) -> Result<bool> {
    let read = |name: &str| -> Result<Value> {
        let path = container_root.join(name);
        let text =
            std::fs::read(&path).map_err(ShimError::io(format!("read {}", path.display())))?;
        serde_json::from_slice(&text).map_err(|err| ShimError::InvalidArgument {
            what: path.display().to_string(),
            reason: err.to_string(),
        })
    };
    let config = read("youki_config.json")?;
    let poststart = config
        .get("hooks")
        .and_then(|h| h.get("poststart"))
        .and_then(Value::as_array)
        .is_some_and(|hooks| !hooks.is_empty());
    if poststart {
        return Ok(false);
    }
    let mut state = read("state.json")?;
    if state.get("status").and_then(Value::as_str) != Some("created") {
        return Err(ShimError::FailedPrecondition {
            what: format!("start {}", container_root.display()),
            reason: format!(
                "the container is {}",
                state.get("status").unwrap_or(&Value::Null)
            ),
        });
    }
    // Through /proc/self/fd: the socket's own path may be longer than sun_path allows.
    let dir = std::fs::File::open(container_root)
        .map_err(ShimError::io(format!("open {}", container_root.display())))?;
    let socket = format!("/proc/self/fd/{}/notify.sock", dir.as_raw_fd());
    let mut stream = std::os::unix::net::UnixStream::connect(&socket).map_err(ShimError::io(
        format!("connect {}", container_root.join("notify.sock").display()),
    ))?;
    std::io::Write::write_all(&mut stream, b"start container")
        .map_err(ShimError::io("send start container"))?;
    drop(stream);
    state["status"] = Value::from("running");
    let path = container_root.join("state.json");
    let text = serde_json::to_vec(&state).map_err(|err| ShimError::InvalidArgument {
        what: path.display().to_string(),
        reason: err.to_string(),
    })?;
    overwrite(&path, &text).map_err(ShimError::io(format!("write {}", path.display())))?;
    Ok(true)
}

/// Replaces a small file's content in place, as libcontainer saves its state: one write at
/// offset 0, then the length. "created" and "running" have the same length, so the write alone
/// holds the new state. A rename over the old file would be atomic too, but on ext4 it flushes
/// the new file's data first (auto_da_alloc), about 1.5 ms of every StartContainer here.
fn overwrite(path: &Path, text: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new().write(true).open(path)?;
    file.write_all_at(text, 0)?;
    file.set_len(u64::try_from(text.len()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_the_fast_path_cannot_apply_send_the_exec_to_the_helper() {
        let plain = serde_json::json!({
            "args": ["sh"], "env": [], "cwd": "/", "user": {"uid": 0, "gid": 0},
            "capabilities": {"bounding": []}, "noNewPrivileges": true,
            "apparmorProfile": "", "rlimits": [], "oomScoreAdj": null,
        });
        assert_eq!(unhonoured_field(&plain), None);
        for (field, value) in [
            (
                "rlimits",
                serde_json::json!([{"type": "RLIMIT_NOFILE", "hard": 64, "soft": 64}]),
            ),
            (
                "scheduler",
                serde_json::json!({"policy": "SCHED_FIFO", "priority": 10}),
            ),
            ("execCPUAffinity", serde_json::json!({"final": "1"})),
            (
                "ioPriority",
                serde_json::json!({"class": "IOPRIO_CLASS_RT", "priority": 1}),
            ),
            ("oomScoreAdj", serde_json::json!(500)),
        ] {
            let mut process = plain.clone();
            process[field] = value;
            assert_eq!(unhonoured_field(&process), Some(field));
            let dir = tempfile::tempdir().expect("tempdir");
            // Refused before any file or namespace is looked at: the helper takes it.
            let plan = Plan::new(&process, 1, Path::new("/ingot/x"), dir.path()).expect("plan");
            assert!(plan.is_none(), "{field}");
        }
    }

    #[test]
    fn path_search_and_capabilities() {
        let env = vec!["A=1".to_string(), "PATH=/usr/bin:/bin/".to_string()];
        assert_eq!(candidates("ls", &env), ["/usr/bin/ls", "/bin/ls"]);
        assert_eq!(candidates("./run", &env), ["./run"]);
        assert_eq!(candidates("sh", &[]).len(), 6);
        let caps = serde_json::json!(["CAP_CHOWN", "CAP_KILL", "CAP_SYS_ADMIN"]);
        assert_eq!(
            cap_mask(Some(&caps)).expect("mask"),
            1 | (1 << 5) | (1 << 21)
        );
        assert!(cap_mask(Some(&serde_json::json!(["CAP_NOPE"]))).is_err());
    }

    #[test]
    fn start_sends_the_start_message_and_records_running() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::write(
            root.join("youki_config.json"),
            r#"{"hooks": null, "cgroup_path": "/x"}"#,
        )
        .expect("config");
        std::fs::write(
            root.join("state.json"),
            r#"{"id": "c1", "status": "created", "pid": 7}"#,
        )
        .expect("state");
        let listener =
            std::os::unix::net::UnixListener::bind(root.join("notify.sock")).expect("bind");
        let reader = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut message = String::new();
            std::io::Read::read_to_string(&mut stream, &mut message).expect("read");
            message
        });
        assert!(start_created(root).expect("start"));
        assert_eq!(reader.join().expect("reader"), "start container");
        let state: Value =
            serde_json::from_slice(&std::fs::read(root.join("state.json")).expect("read"))
                .expect("json");
        assert_eq!(state["status"], "running");
        assert_eq!(state["pid"], 7);
        assert!(start_created(root).is_err(), "not created any more");

        std::fs::write(
            root.join("youki_config.json"),
            r#"{"hooks": {"poststart": [{"path": "/bin/true"}]}}"#,
        )
        .expect("config");
        assert!(
            !start_created(root).expect("hooks"),
            "hooks go through the helper"
        );
    }

    #[test]
    fn cgroup_files_of_every_hierarchy() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (hierarchy, file) in [
            ("cpu", "tasks"),
            ("memory", "tasks"),
            ("unified", "cgroup.procs"),
        ] {
            let cgroup = dir.path().join(hierarchy).join("pods/c1");
            std::fs::create_dir_all(&cgroup).expect("mkdir");
            std::fs::write(cgroup.join(file), "").expect("procs");
        }
        let root = dir.path().display();
        let mountinfo = format!(
            "30 25 0:26 / {root}/cpu rw - cgroup cgroup rw,cpu\n\
             31 25 0:27 / {root}/memory rw - cgroup cgroup rw,memory\n\
             32 25 0:28 / {root}/unified rw - cgroup2 cgroup2 rw\n\
             33 25 0:29 / {root}/pids rw - cgroup cgroup rw,pids\n\
             34 25 0:30 / /proc rw - proc proc rw\n"
        );
        let files = cgroup_join_files(&mountinfo, Path::new("/pods/c1"));
        let expected: Vec<PathBuf> = [
            "cpu/pods/c1/tasks",
            "memory/pods/c1/tasks",
            "unified/pods/c1/cgroup.procs",
        ]
        .iter()
        .map(|file| dir.path().join(file))
        .collect();
        assert_eq!(files, expected);
    }
}
