//! CRI container config + image config + pod facts → OCI runtime spec, the way containerd's CRI
//! plugin builds one: the command merged with the image's entrypoint/cmd, the environment and
//! working directory, the user, Linux resources, the security context, mounts with propagation,
//! devices, and the pod's pinned namespaces. Pure: every host fact (the user's ids from the
//! image's /etc/passwd, device numbers, a Localhost seccomp profile) is resolved by the caller and
//! passed in.

use std::{
    collections::HashMap,
    path::{Component, Path, PathBuf},
};

use k8s_cri::v1;
use oci_spec::{
    runtime::{
        Capabilities, Capability, Linux, LinuxCapabilities, LinuxCpu, LinuxDevice,
        LinuxDeviceCgroup, LinuxDeviceType, LinuxHugepageLimitBuilder, LinuxMemoryBuilder,
        LinuxNamespace, LinuxNamespaceType, LinuxResources, LinuxSeccomp, Mount, Process, Root,
        Spec,
    },
    OciSpecError,
};
use serde_json::{json, Value};

use crate::OciError;

/// The parts of an image config a container is made from.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ImageConfig {
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub env: Option<Vec<String>>,
    pub user: String,
    pub working_dir: String,
    pub stop_signal: String,
}

impl ImageConfig {
    /// From an OCI image config document (`{"config": {...}}`); missing parts are empty.
    pub fn from_document(json: &str) -> Result<Self, OciError> {
        #[derive(serde::Deserialize, Default)]
        #[serde(default)]
        struct Document {
            config: ImageConfig,
        }
        let document: Document = serde_json::from_str(json).map_err(|err| OciError::Malformed {
            path: PathBuf::from("image config"),
            reason: err.to_string(),
        })?;
        Ok(document.config)
    }
}

/// The process's identity, resolved against the image's /etc/passwd and /etc/group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

/// A device node on the host, as stat(2) saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostDevice {
    pub container_path: String,
    /// `c` or `b`.
    pub kind: char,
    pub major: i64,
    pub minor: i64,
    pub file_mode: u32,
    pub permissions: String,
}

/// Where a container's shared namespaces are: a pinned path, or the host's (None).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodNamespaces {
    pub network: Option<PathBuf>,
    pub ipc: Option<PathBuf>,
    pub uts: Option<PathBuf>,
    /// The pod's shared PID namespace; None with `host_pid` false: one of the container's own.
    pub pid: Option<PathBuf>,
    pub host_pid: bool,
}

/// Files the pod provides to each of its containers (bind-mounted over the image's).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodFiles {
    pub hostname: Option<PathBuf>,
    pub hosts: Option<PathBuf>,
    pub resolv_conf: Option<PathBuf>,
    /// The pod's /dev/shm (a tmpfs shared by its containers), when the pod has its own IPC.
    pub shm: Option<PathBuf>,
}

/// Everything a container's spec is built from.
pub struct ContainerInput<'a> {
    pub id: &'a str,
    pub sandbox_id: &'a str,
    pub config: &'a v1::ContainerConfig,
    pub sandbox: &'a v1::PodSandboxConfig,
    pub image: &'a ImageConfig,
    pub image_name: &'a str,
    pub rootfs: &'a Path,
    pub namespaces: &'a PodNamespaces,
    pub files: &'a PodFiles,
    /// The pod's host name (the node's for a host-network pod): the container's `HOSTNAME`.
    pub hostname: &'a str,
    /// Absolute cgroup path of the container.
    pub cgroups_path: &'a str,
    pub user: &'a User,
    pub devices: &'a [HostDevice],
    /// The seccomp profile to apply (None: unconfined).
    pub seccomp: Option<&'a Value>,
    /// The capability bounding set of the runtime itself (`CapBnd`): a container cannot get a
    /// capability its runtime lacks (privileged and `ALL` mean all of these, as in containerd).
    pub bounding: u64,
}

/// The capability bounding set of this process, from `/proc/self/status` (all bits when
/// unreadable).
pub fn own_bounding_set() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("CapBnd:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .unwrap_or(u64::MAX)
}

/// `caps` less those outside the bounding mask (bit n = capability number n).
pub fn within_bounding(caps: Vec<String>, mask: u64) -> Vec<String> {
    caps.into_iter()
        .filter(|cap| {
            ALL_CAPABILITIES
                .iter()
                .position(|known| known == cap)
                .is_none_or(|bit| bit >= 64 || mask & (1u64 << bit) != 0)
        })
        .collect()
}

/// The capabilities a container gets by default (containerd's and Docker's set).
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability the kernel headers of this era define, for privileged containers and `ALL`.
pub const ALL_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

pub const DEFAULT_MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

pub const DEFAULT_READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Syscalls the RuntimeDefault profile refuses with EPERM: those Docker's and containerd's
/// default profiles allow only with CAP_SYS_ADMIN or never (kernel modules, kexec, mount,
/// namespaces, keyrings, clock setting, tracing other processes, BPF).
pub const DEFAULT_DENIED_SYSCALLS: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "get_mempolicy",
    "init_module",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mbind",
    "mount",
    "mount_setattr",
    "move_mount",
    "move_pages",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "query_module",
    "quotactl",
    "reboot",
    "request_key",
    "set_mempolicy",
    "setns",
    "settimeofday",
    "sethostname",
    "setdomainname",
    "stime",
    "swapoff",
    "swapon",
    "sysfs",
    "_sysctl",
    "umount",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
    "vm86",
    "vm86old",
];

/// The RuntimeDefault seccomp profile in OCI form: allow, except [`DEFAULT_DENIED_SYSCALLS`].
pub fn default_seccomp_profile() -> Value {
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64"],
        "syscalls": [{
            "names": DEFAULT_DENIED_SYSCALLS,
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": 1,
        }],
    })
}

/// Which seccomp profile a container asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeccompChoice {
    Unconfined,
    RuntimeDefault,
    /// An absolute path on the host.
    Localhost(PathBuf),
}

/// Reads the container's seccomp choice (the `seccomp` field, or the older
/// `seccomp_profile_path` string: `unconfined`, `runtime/default`, `docker/default`,
/// `localhost/<path>`). Unset means unconfined, as the kubelet's default is explicit.
pub fn seccomp_choice(
    context: Option<&v1::LinuxContainerSecurityContext>,
) -> Result<SeccompChoice, OciError> {
    let Some(context) = context else {
        return Ok(SeccompChoice::Unconfined);
    };
    let invalid = |reason: String| OciError::InvalidField {
        field: "linux.security_context.seccomp",
        reason,
    };
    let localhost = |path: &str| {
        let path = PathBuf::from(path);
        if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
            return Err(invalid(format!(
                "localhost profile {:?} must be an absolute path without \"..\"",
                path.display()
            )));
        }
        Ok(SeccompChoice::Localhost(path))
    };
    if let Some(profile) = &context.seccomp {
        return match v1::security_profile::ProfileType::try_from(profile.profile_type) {
            Ok(v1::security_profile::ProfileType::Unconfined) => Ok(SeccompChoice::Unconfined),
            Ok(v1::security_profile::ProfileType::RuntimeDefault) => {
                Ok(SeccompChoice::RuntimeDefault)
            }
            Ok(v1::security_profile::ProfileType::Localhost) => localhost(&profile.localhost_ref),
            Err(_) => Err(invalid(format!(
                "unknown profile type {}",
                profile.profile_type
            ))),
        };
    }
    // Deprecated in the CRI, still sent by older kubelets and by critest.
    #[allow(deprecated)]
    let path = context.seccomp_profile_path.as_str();
    match path {
        "" | "unconfined" => Ok(SeccompChoice::Unconfined),
        "runtime/default" | "docker/default" => Ok(SeccompChoice::RuntimeDefault),
        other => match other.strip_prefix("localhost/") {
            Some(path) => localhost(path),
            None => Err(invalid(format!("unknown seccomp profile {other:?}"))),
        },
    }
}

/// Checks a path inside the container: absolute, no `..`.
pub fn container_path(field: &'static str, path: &str) -> Result<(), OciError> {
    let p = Path::new(path);
    if path.is_empty() || !p.is_absolute() {
        return Err(OciError::InvalidField {
            field,
            reason: format!("{path:?} is not an absolute path"),
        });
    }
    if p.components().any(|c| c == Component::ParentDir) {
        return Err(OciError::InvalidField {
            field,
            reason: format!("{path:?} contains \"..\""),
        });
    }
    Ok(())
}

/// Checks a cpuset list (`0-3,8,10-11`); empty is allowed (no constraint).
pub fn validate_cpuset(field: &'static str, list: &str) -> Result<(), OciError> {
    let invalid = || OciError::InvalidField {
        field,
        reason: format!("{list:?} is not a CPU list like \"0-3,8\""),
    };
    if list.is_empty() {
        return Ok(());
    }
    for part in list.split(',') {
        let (low, high) = part.split_once('-').unwrap_or((part, part));
        let low: u32 = low.trim().parse().map_err(|_| invalid())?;
        let high: u32 = high.trim().parse().map_err(|_| invalid())?;
        if low > high {
            return Err(invalid());
        }
    }
    Ok(())
}

/// The process arguments: containerd's merge of the CRI command/args with the image's
/// entrypoint/cmd.
pub fn process_args(
    config: &v1::ContainerConfig,
    image: &ImageConfig,
) -> Result<Vec<String>, OciError> {
    let entrypoint = image.entrypoint.clone().unwrap_or_default();
    let cmd = image.cmd.clone().unwrap_or_default();
    let args = if !config.command.is_empty() {
        config.command.iter().chain(&config.args).cloned().collect()
    } else if !config.args.is_empty() {
        entrypoint.into_iter().chain(config.args.clone()).collect()
    } else {
        entrypoint.into_iter().chain(cmd).collect::<Vec<_>>()
    };
    if args.is_empty() {
        return Err(OciError::InvalidField {
            field: "command",
            reason: "no command given and the image has no entrypoint or cmd".into(),
        });
    }
    Ok(args)
}

/// The environment: `HOSTNAME` (the pod's host name, as containerd and CRI-O set it), then the
/// image's, overridden and extended by the container's, in order.
pub fn process_env(
    config: &v1::ContainerConfig,
    image: &ImageConfig,
    hostname: &str,
) -> Vec<String> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |key: &str, value: &str| {
        if let Some(entry) = env.iter_mut().find(|(k, _)| k == key) {
            entry.1 = value.to_string();
        } else {
            env.push((key.to_string(), value.to_string()));
        }
    };
    if !hostname.is_empty() {
        set("HOSTNAME", hostname);
    }
    for entry in image.env.iter().flatten() {
        let (key, value) = entry.split_once('=').unwrap_or((entry, ""));
        set(key, value);
    }
    for kv in &config.envs {
        set(&kv.key, &kv.value);
    }
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.insert(
            0,
            (
                "PATH".into(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            ),
        );
    }
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// Which user the container asked for, before resolution: CRI run_as_user/username, then the
/// image's `User` (`name`, `uid`, `name:group`, `uid:gid`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRequest {
    pub user: Option<String>,
    pub group: Option<String>,
    pub supplemental: Vec<u32>,
}

pub fn user_request(
    config: &v1::ContainerConfig,
    image: &ImageConfig,
) -> Result<UserRequest, OciError> {
    let context = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref());
    let mut supplemental = Vec::new();
    for gid in context
        .map(|c| c.supplemental_groups.as_slice())
        .unwrap_or_default()
    {
        supplemental.push(u32::try_from(*gid).map_err(|_| OciError::InvalidField {
            field: "linux.security_context.supplemental_groups",
            reason: format!("{gid} is not a group id"),
        })?);
    }
    let id = |field: &'static str, value: i64| {
        u32::try_from(value)
            .map(|v| v.to_string())
            .map_err(|_| OciError::InvalidField {
                field,
                reason: format!("{value} is not an id"),
            })
    };
    let group = context
        .and_then(|c| c.run_as_group.as_ref())
        .map(|g| id("linux.security_context.run_as_group", g.value))
        .transpose()?;
    if let Some(uid) = context.and_then(|c| c.run_as_user.as_ref()) {
        return Ok(UserRequest {
            user: Some(id("linux.security_context.run_as_user", uid.value)?),
            group,
            supplemental,
        });
    }
    if let Some(name) = context
        .map(|c| c.run_as_username.as_str())
        .filter(|n| !n.is_empty())
    {
        return Ok(UserRequest {
            user: Some(name.to_string()),
            group,
            supplemental,
        });
    }
    if group.is_some() {
        return Err(OciError::InvalidField {
            field: "linux.security_context.run_as_group",
            reason: "is set without run_as_user or run_as_username".into(),
        });
    }
    let (user, image_group) = match image.user.split_once(':') {
        Some((u, g)) => (u.to_string(), Some(g.to_string())),
        None => (image.user.clone(), None),
    };
    Ok(UserRequest {
        user: (!user.is_empty()).then_some(user),
        group: image_group,
        supplemental,
    })
}

/// Resolves a user request against the image's /etc/passwd and /etc/group text (either may be
/// empty). A numeric uid unknown to passwd runs with gid 0, as in Docker.
pub fn resolve_user(request: &UserRequest, passwd: &str, group: &str) -> Result<User, OciError> {
    let entries: Vec<Vec<&str>> = passwd
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 4)
        .collect();
    let groups: Vec<Vec<&str>> = group
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 3)
        .collect();
    let (uid, mut gid, name) = match request.user.as_deref() {
        None => (0, 0, Some("root".to_string())),
        Some(user) => match user.parse::<u32>() {
            Ok(uid) => {
                let entry = entries.iter().find(|f| f[2].parse() == Ok(uid));
                (
                    uid,
                    entry.and_then(|f| f[3].parse().ok()).unwrap_or(0),
                    entry.map(|f| f[0].to_string()),
                )
            }
            Err(_) => {
                let entry = entries.iter().find(|f| f[0] == user).ok_or_else(|| {
                    OciError::InvalidField {
                        field: "user",
                        reason: format!("no user {user:?} in the image's /etc/passwd"),
                    }
                })?;
                let parse = |s: &str| {
                    s.parse::<u32>().map_err(|_| OciError::InvalidField {
                        field: "user",
                        reason: format!("/etc/passwd entry of {user:?} is malformed"),
                    })
                };
                (parse(entry[2])?, parse(entry[3])?, Some(user.to_string()))
            }
        },
    };
    if let Some(group_name) = request.group.as_deref() {
        gid = match group_name.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => groups
                .iter()
                .find(|f| f[0] == group_name)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| OciError::InvalidField {
                    field: "user",
                    reason: format!("no group {group_name:?} in the image's /etc/group"),
                })?,
        };
    }
    let mut additional_gids: Vec<u32> = Vec::new();
    if let Some(name) = name {
        for entry in &groups {
            let member = entry
                .get(3)
                .is_some_and(|members| members.split(',').any(|m| m == name));
            if member {
                if let Ok(id) = entry[2].parse::<u32>() {
                    if id != gid && !additional_gids.contains(&id) {
                        additional_gids.push(id);
                    }
                }
            }
        }
    }
    for id in &request.supplemental {
        if !additional_gids.contains(id) {
            additional_gids.push(*id);
        }
    }
    Ok(User {
        uid,
        gid,
        additional_gids,
    })
}

fn capability_name(field: &'static str, name: &str) -> Result<String, OciError> {
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    if !ALL_CAPABILITIES.contains(&full.as_str()) {
        return Err(OciError::InvalidField {
            field,
            reason: format!("unknown capability {name:?}"),
        });
    }
    Ok(full)
}

/// The capability set: the default, plus added, minus dropped (`ALL` in either list works).
pub fn capabilities(
    context: Option<&v1::LinuxContainerSecurityContext>,
) -> Result<Vec<String>, OciError> {
    if context.is_some_and(|c| c.privileged) {
        return Ok(ALL_CAPABILITIES.iter().map(|s| s.to_string()).collect());
    }
    let mut caps: Vec<String> = DEFAULT_CAPABILITIES.iter().map(|s| s.to_string()).collect();
    let Some(requested) = context.and_then(|c| c.capabilities.as_ref()) else {
        return Ok(caps);
    };
    let is_all = |name: &String| name.eq_ignore_ascii_case("ALL");
    if requested.add_capabilities.iter().any(is_all) {
        caps = ALL_CAPABILITIES.iter().map(|s| s.to_string()).collect();
    } else {
        for name in &requested.add_capabilities {
            let cap =
                capability_name("linux.security_context.capabilities.add_capabilities", name)?;
            if !caps.contains(&cap) {
                caps.push(cap);
            }
        }
    }
    if requested.drop_capabilities.iter().any(is_all) {
        caps.clear();
        // Explicitly added capabilities survive a drop of ALL, as in containerd.
        for name in requested.add_capabilities.iter().filter(|n| !is_all(n)) {
            caps.push(capability_name(
                "linux.security_context.capabilities.add_capabilities",
                name,
            )?);
        }
    } else {
        for name in &requested.drop_capabilities {
            let cap = capability_name(
                "linux.security_context.capabilities.drop_capabilities",
                name,
            )?;
            caps.retain(|c| *c != cap);
        }
    }
    Ok(caps)
}

fn non_negative(field: &'static str, value: i64) -> Result<i64, OciError> {
    if value < 0 {
        return Err(OciError::InvalidField {
            field,
            reason: format!("{value} is negative"),
        });
    }
    Ok(value)
}

fn built<T>(what: &'static str, result: Result<T, OciSpecError>) -> Result<T, OciError> {
    result.map_err(|err| OciError::Build {
        what,
        reason: err.to_string(),
    })
}

/// `Some(value)` when positive: the CRI's zero means "not set".
fn positive(value: i64) -> Option<u64> {
    u64::try_from(value).ok().filter(|v| *v > 0)
}

/// The `linux.resources` for CRI resources (also used by UpdateContainerResources).
pub fn resources(
    resources: Option<&v1::LinuxContainerResources>,
) -> Result<LinuxResources, OciError> {
    let mut out = empty_resources();
    let Some(r) = resources else {
        return Ok(out);
    };
    let shares = non_negative("linux.resources.cpu_shares", r.cpu_shares)?;
    let period = non_negative("linux.resources.cpu_period", r.cpu_period)?;
    if r.cpu_quota < -1 {
        return Err(OciError::InvalidField {
            field: "linux.resources.cpu_quota",
            reason: format!("{} is negative", r.cpu_quota),
        });
    }
    validate_cpuset("linux.resources.cpuset_cpus", &r.cpuset_cpus)?;
    validate_cpuset("linux.resources.cpuset_mems", &r.cpuset_mems)?;
    let mut cpu = LinuxCpu::default();
    cpu.set_shares(positive(shares))
        .set_quota((r.cpu_quota > 0).then_some(r.cpu_quota))
        .set_period(positive(period))
        .set_cpus((!r.cpuset_cpus.is_empty()).then(|| r.cpuset_cpus.clone()))
        .set_mems((!r.cpuset_mems.is_empty()).then(|| r.cpuset_mems.clone()));
    if cpu != LinuxCpu::default() {
        out.set_cpu(Some(cpu));
    }
    let limit = non_negative(
        "linux.resources.memory_limit_in_bytes",
        r.memory_limit_in_bytes,
    )?;
    let swap = non_negative(
        "linux.resources.memory_swap_limit_in_bytes",
        r.memory_swap_limit_in_bytes,
    )?;
    if limit > 0 {
        let mut memory = LinuxMemoryBuilder::default().limit(limit);
        if swap > 0 {
            memory = memory.swap(swap);
        }
        out.set_memory(Some(built("linux.resources.memory", memory.build())?));
    }
    let mut hugepages = Vec::new();
    for limit in &r.hugepage_limits {
        if limit.page_size.is_empty() {
            return Err(OciError::InvalidField {
                field: "linux.resources.hugepage_limits.page_size",
                reason: "is empty".into(),
            });
        }
        let limit_bytes = i64::try_from(limit.limit).map_err(|_| OciError::InvalidField {
            field: "linux.resources.hugepage_limits.limit",
            reason: format!("{} is too large", limit.limit),
        })?;
        hugepages.push(built(
            "linux.resources.hugepageLimits",
            LinuxHugepageLimitBuilder::default()
                .page_size(limit.page_size.clone())
                .limit(limit_bytes)
                .build(),
        )?);
    }
    if !hugepages.is_empty() {
        out.set_hugepage_limits(Some(hugepages));
    }
    if !r.unified.is_empty() {
        for key in r.unified.keys() {
            if key.is_empty() || key.contains('/') || key.contains("..") {
                return Err(OciError::InvalidField {
                    field: "linux.resources.unified",
                    reason: format!("{key:?} is not a cgroup file name"),
                });
            }
        }
        out.set_unified(Some(r.unified.clone()));
    }
    Ok(out)
}

/// Resources with nothing set (oci-spec's `Default` allows every device).
fn empty_resources() -> LinuxResources {
    let mut resources = LinuxResources::default();
    resources.set_devices(None);
    resources
}

fn propagation(mode: i32) -> &'static str {
    match v1::MountPropagation::try_from(mode) {
        Ok(v1::MountPropagation::PropagationHostToContainer) => "rslave",
        Ok(v1::MountPropagation::PropagationBidirectional) => "rshared",
        _ => "rprivate",
    }
}

fn strings(values: &[&str]) -> Vec<String> {
    values.iter().map(|value| value.to_string()).collect()
}

fn mount(destination: &str, kind: &str, source: &str, options: &[&str]) -> Mount {
    let mut mount = Mount::default();
    mount
        .set_destination(PathBuf::from(destination))
        .set_typ(Some(kind.to_string()))
        .set_source(Some(PathBuf::from(source)))
        .set_options(Some(strings(options)));
    mount
}

fn bind(destination: &str, source: &Path, readonly: bool) -> Mount {
    let mut mount = mount(
        destination,
        "bind",
        "",
        &["rbind", "rprivate", if readonly { "ro" } else { "rw" }],
    );
    mount.set_source(Some(source.to_path_buf()));
    mount
}

fn namespace(kind: LinuxNamespaceType, path: Option<&Path>) -> LinuxNamespace {
    let mut namespace = LinuxNamespace::default();
    namespace
        .set_typ(kind)
        .set_path(path.map(Path::to_path_buf));
    namespace
}

fn capability_set(names: &[String]) -> Result<Capabilities, OciError> {
    names
        .iter()
        .map(|name| {
            name.trim_start_matches("CAP_")
                .parse::<Capability>()
                .map_err(|_| OciError::InvalidField {
                    field: "linux.security_context.capabilities",
                    reason: format!("unknown capability {name:?}"),
                })
        })
        .collect()
}

fn device_type(kind: char) -> LinuxDeviceType {
    match kind {
        'b' => LinuxDeviceType::B,
        'p' => LinuxDeviceType::P,
        'u' => LinuxDeviceType::U,
        _ => LinuxDeviceType::C,
    }
}

/// A process with only what the container asks for (oci-spec's `Default` adds a shell, an
/// environment, rlimits and capabilities of its own).
fn empty_process() -> Process {
    let mut process = Process::default();
    process
        .set_args(None)
        .set_env(None)
        .set_capabilities(None)
        .set_rlimits(None)
        .set_no_new_privileges(None)
        .set_console_size(None)
        .set_apparmor_profile(None)
        .set_selinux_label(None)
        .set_scheduler(None)
        .set_io_priority(None)
        .set_exec_cpu_affinity(None);
    process
}

/// Builds the container's spec: the base every spec step starts from.
pub fn container_spec(input: &ContainerInput<'_>) -> Result<Spec, OciError> {
    let config = input.config;
    let linux = config.linux.as_ref();
    let context = linux.and_then(|l| l.security_context.as_ref());
    let privileged = context.is_some_and(|c| c.privileged);
    if privileged
        && !input
            .sandbox
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .is_some_and(|c| c.privileged)
    {
        return Err(OciError::InvalidField {
            field: "linux.security_context.privileged",
            reason: "a privileged container needs a privileged pod".into(),
        });
    }

    let args = process_args(config, input.image)?;
    let env = process_env(config, input.image, input.hostname);
    let cwd = if !config.working_dir.is_empty() {
        config.working_dir.clone()
    } else if !input.image.working_dir.is_empty() {
        input.image.working_dir.clone()
    } else {
        "/".to_string()
    };
    container_path("working_dir", &cwd)?;
    let caps = capability_set(&within_bounding(capabilities(context)?, input.bounding))?;

    let mut user = oci_spec::runtime::User::default();
    user.set_uid(input.user.uid)
        .set_gid(input.user.gid)
        .set_additional_gids(Some(input.user.additional_gids.clone()));
    let mut capabilities = LinuxCapabilities::default();
    capabilities
        .set_bounding(Some(caps.clone()))
        .set_effective(Some(caps.clone()))
        .set_permitted(Some(caps))
        .set_inheritable(None)
        .set_ambient(None);
    let mut process = empty_process();
    process
        .set_terminal(Some(config.tty))
        .set_user(user)
        .set_args(Some(args))
        .set_env(Some(env))
        .set_cwd(PathBuf::from(cwd))
        .set_capabilities(Some(capabilities));
    // Only when set: libcontainer loads seccomp after dropping capabilities whenever the field
    // is present, even false, and that load needs CAP_SYS_ADMIN or no_new_privs.
    if context.is_some_and(|c| c.no_new_privs) {
        process.set_no_new_privileges(Some(true));
    }
    let resources_in = linux.and_then(|l| l.resources.as_ref());
    if let Some(r) = resources_in {
        if r.oom_score_adj != 0 {
            let adj = i32::try_from(r.oom_score_adj)
                .ok()
                .filter(|v| (-1000..=1000).contains(v))
                .ok_or_else(|| OciError::InvalidField {
                    field: "linux.resources.oom_score_adj",
                    reason: format!("{} is outside -1000..=1000", r.oom_score_adj),
                })?;
            process.set_oom_score_adj(Some(adj));
        }
    }

    // Mounts: the defaults, then the pod's files, then the CRI's; a later destination replaces
    // an earlier one.
    let read_write = if privileged { "rw" } else { "ro" };
    let mut mounts: Vec<Mount> = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", read_write],
        ),
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", read_write],
        ),
    ];
    let readonly_rootfs = context.is_some_and(|c| c.readonly_rootfs);
    let files = input.files;
    for (destination, source) in [
        ("/etc/hostname", &files.hostname),
        ("/etc/hosts", &files.hosts),
        ("/etc/resolv.conf", &files.resolv_conf),
    ] {
        if let Some(source) = source {
            mounts.push(bind(destination, source, readonly_rootfs));
        }
    }
    match &files.shm {
        Some(shm) => mounts.push(bind("/dev/shm", shm, false)),
        None => mounts.push(mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )),
    }
    for (index, requested) in config.mounts.iter().enumerate() {
        container_path("mounts.container_path", &requested.container_path)?;
        let host = Path::new(&requested.host_path);
        if !host.is_absolute() || host.components().any(|c| c == Component::ParentDir) {
            return Err(OciError::InvalidField {
                field: "mounts.host_path",
                reason: format!(
                    "mounts[{index}]: {:?} must be an absolute path without \"..\"",
                    requested.host_path
                ),
            });
        }
        let destination = Path::new(&requested.container_path);
        mounts.retain(|m| m.destination() != destination);
        let mut bind = mount(
            &requested.container_path,
            "bind",
            "",
            &[
                "rbind",
                propagation(requested.propagation),
                if requested.readonly { "ro" } else { "rw" },
            ],
        );
        bind.set_source(Some(host.to_path_buf()));
        mounts.push(bind);
    }

    let mut namespaces = vec![namespace(LinuxNamespaceType::Mount, None)];
    match (&input.namespaces.pid, input.namespaces.host_pid) {
        (_, true) => {}
        (Some(path), false) => namespaces.push(namespace(LinuxNamespaceType::Pid, Some(path))),
        (None, false) => namespaces.push(namespace(LinuxNamespaceType::Pid, None)),
    }
    for (kind, path) in [
        (LinuxNamespaceType::Network, &input.namespaces.network),
        (LinuxNamespaceType::Ipc, &input.namespaces.ipc),
        (LinuxNamespaceType::Uts, &input.namespaces.uts),
    ] {
        if let Some(path) = path {
            namespaces.push(namespace(kind, Some(path)));
        }
    }

    let mut resources = resources(resources_in)?;
    let mut allowed = LinuxDeviceCgroup::default();
    allowed
        .set_allow(privileged)
        .set_typ(None)
        .set_access(Some("rwm".to_string()));
    let mut device_rules = vec![allowed];
    let mut linux_devices = Vec::new();
    for device in input.devices {
        container_path("devices.container_path", &device.container_path)?;
        let access: String = device
            .permissions
            .chars()
            .filter(|c| matches!(c, 'r' | 'w' | 'm'))
            .collect();
        let mut node = LinuxDevice::default();
        node.set_path(PathBuf::from(&device.container_path))
            .set_typ(device_type(device.kind))
            .set_major(device.major)
            .set_minor(device.minor)
            .set_file_mode(Some(device.file_mode))
            .set_uid(Some(0))
            .set_gid(Some(0));
        linux_devices.push(node);
        let mut rule = LinuxDeviceCgroup::default();
        rule.set_allow(true)
            .set_typ(Some(device_type(device.kind)))
            .set_major(Some(device.major))
            .set_minor(Some(device.minor))
            .set_access(Some(if access.is_empty() {
                "rwm".to_string()
            } else {
                access
            }));
        device_rules.push(rule);
    }
    resources.set_devices(Some(device_rules));

    let sysctls: HashMap<String, String> = input
        .sandbox
        .linux
        .as_ref()
        .map(|l| l.sysctls.clone())
        .unwrap_or_default();

    let masked: Vec<String> = if privileged {
        Vec::new()
    } else if let Some(paths) = context.filter(|c| !c.masked_paths.is_empty()) {
        paths.masked_paths.clone()
    } else {
        strings(DEFAULT_MASKED_PATHS)
    };
    let readonly: Vec<String> = if privileged {
        Vec::new()
    } else if let Some(paths) = context.filter(|c| !c.readonly_paths.is_empty()) {
        paths.readonly_paths.clone()
    } else {
        strings(DEFAULT_READONLY_PATHS)
    };

    let mut annotations: HashMap<String, String> = config.annotations.clone();
    let metadata = config.metadata.clone().unwrap_or_default();
    let sandbox_metadata = input.sandbox.metadata.clone().unwrap_or_default();
    for (key, value) in [
        ("io.kubernetes.cri.container-type", "container"),
        ("io.kubernetes.cri.container-name", metadata.name.as_str()),
        ("io.kubernetes.cri.sandbox-id", input.sandbox_id),
        (
            "io.kubernetes.cri.sandbox-name",
            sandbox_metadata.name.as_str(),
        ),
        (
            "io.kubernetes.cri.sandbox-namespace",
            sandbox_metadata.namespace.as_str(),
        ),
        (
            "io.kubernetes.cri.sandbox-uid",
            sandbox_metadata.uid.as_str(),
        ),
        ("io.kubernetes.cri.image-name", input.image_name),
    ] {
        annotations.insert(key.to_string(), value.to_string());
    }

    // As containerd: a bidirectional mount needs the container's mount tree shared, a
    // host-to-container one needs it at least a slave, for propagation to cross the rootfs.
    let propagations: Vec<i32> = config.mounts.iter().map(|m| m.propagation).collect();
    // (libcontainer reads the unprefixed names and applies them recursively.)
    let rootfs_propagation = if propagations
        .contains(&(v1::MountPropagation::PropagationBidirectional as i32))
    {
        Some("shared")
    } else if propagations.contains(&(v1::MountPropagation::PropagationHostToContainer as i32)) {
        Some("slave")
    } else {
        None
    };
    let seccomp = match input.seccomp.filter(|_| !privileged) {
        Some(profile) => Some(
            serde_json::from_value::<LinuxSeccomp>(profile.clone()).map_err(|err| {
                OciError::InvalidField {
                    field: "linux.security_context.seccomp",
                    reason: format!("the profile is not an OCI seccomp profile: {err}"),
                }
            })?,
        ),
        None => None,
    };

    let mut linux = Linux::default();
    linux
        .set_namespaces(Some(namespaces))
        .set_resources(Some(resources))
        .set_cgroups_path(Some(PathBuf::from(input.cgroups_path)))
        .set_devices(Some(linux_devices))
        .set_masked_paths(Some(masked))
        .set_readonly_paths(Some(readonly))
        .set_sysctl(Some(sysctls))
        .set_rootfs_propagation(rootfs_propagation.map(str::to_string))
        .set_seccomp(seccomp)
        .set_uid_mappings(None)
        .set_gid_mappings(None);

    let mut root = Root::default();
    root.set_path(input.rootfs.to_path_buf())
        .set_readonly(Some(readonly_rootfs));

    let mut spec = Spec::default();
    spec.set_version("1.0.2".to_string())
        .set_process(Some(process))
        .set_root(Some(root))
        .set_hostname(None)
        .set_mounts(Some(mounts))
        .set_annotations(Some(annotations))
        .set_linux(Some(linux));
    Ok(spec)
}

#[cfg(test)]
#[path = "cri_tests.rs"]
mod tests;
