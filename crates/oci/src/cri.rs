//! CRI container config + image config + pod facts → OCI runtime spec, the way containerd's CRI
//! plugin builds one: the command merged with the image's entrypoint/cmd, the environment and
//! working directory, the user, Linux resources, the security context, mounts with propagation,
//! devices, and the pod's pinned namespaces. Pure: every host fact (the user's ids from the
//! image's /etc/passwd, device numbers, a Localhost seccomp profile) is resolved by the caller and
//! passed in.

use std::{
    collections::BTreeMap,
    path::{Component, Path, PathBuf},
};

use k8s_cri::v1;
use oci_spec::runtime::Spec;
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

/// The environment: the image's, overridden and extended by the container's, in order.
pub fn process_env(config: &v1::ContainerConfig, image: &ImageConfig) -> Vec<String> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |key: &str, value: &str| {
        if let Some(entry) = env.iter_mut().find(|(k, _)| k == key) {
            entry.1 = value.to_string();
        } else {
            env.push((key.to_string(), value.to_string()));
        }
    };
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

/// The `linux.resources` object for CRI resources (also used by UpdateContainerResources).
pub fn resources(resources: Option<&v1::LinuxContainerResources>) -> Result<Value, OciError> {
    let mut out = serde_json::Map::new();
    let Some(r) = resources else {
        return Ok(Value::Object(out));
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
    let mut cpu = serde_json::Map::new();
    if shares > 0 {
        cpu.insert("shares".into(), json!(shares));
    }
    if r.cpu_quota > 0 {
        cpu.insert("quota".into(), json!(r.cpu_quota));
    }
    if period > 0 {
        cpu.insert("period".into(), json!(period));
    }
    if !r.cpuset_cpus.is_empty() {
        cpu.insert("cpus".into(), json!(r.cpuset_cpus));
    }
    if !r.cpuset_mems.is_empty() {
        cpu.insert("mems".into(), json!(r.cpuset_mems));
    }
    if !cpu.is_empty() {
        out.insert("cpu".into(), Value::Object(cpu));
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
        let mut memory = json!({ "limit": limit });
        if swap > 0 {
            memory["swap"] = json!(swap);
        }
        out.insert("memory".into(), memory);
    }
    let mut hugepages = Vec::new();
    for limit in &r.hugepage_limits {
        if limit.page_size.is_empty() {
            return Err(OciError::InvalidField {
                field: "linux.resources.hugepage_limits.page_size",
                reason: "is empty".into(),
            });
        }
        hugepages.push(json!({ "pageSize": limit.page_size, "limit": limit.limit }));
    }
    if !hugepages.is_empty() {
        out.insert("hugepageLimits".into(), Value::Array(hugepages));
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
        let unified: BTreeMap<_, _> = r.unified.iter().collect();
        out.insert("unified".into(), json!(unified));
    }
    Ok(Value::Object(out))
}

fn propagation(mode: i32) -> &'static str {
    match v1::MountPropagation::try_from(mode) {
        Ok(v1::MountPropagation::PropagationHostToContainer) => "rslave",
        Ok(v1::MountPropagation::PropagationBidirectional) => "rshared",
        _ => "rprivate",
    }
}

fn bind(destination: &str, source: &Path, readonly: bool) -> Value {
    let mut options = vec!["rbind", "rprivate"];
    options.push(if readonly { "ro" } else { "rw" });
    json!({"destination": destination, "type": "bind", "source": source, "options": options})
}

/// Builds the container's spec.
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
    let env = process_env(config, input.image);
    let cwd = if !config.working_dir.is_empty() {
        config.working_dir.clone()
    } else if !input.image.working_dir.is_empty() {
        input.image.working_dir.clone()
    } else {
        "/".to_string()
    };
    container_path("working_dir", &cwd)?;
    let caps = within_bounding(capabilities(context)?, input.bounding);

    let mut process = json!({
        "terminal": config.tty,
        "user": {
            "uid": input.user.uid,
            "gid": input.user.gid,
            "additionalGids": input.user.additional_gids,
        },
        "args": args,
        "env": env,
        "cwd": cwd,
        "capabilities": {
            "bounding": caps, "effective": caps, "permitted": caps,
        },
    });
    // Only when set: libcontainer loads seccomp after dropping capabilities whenever the field
    // is present, even false, and that load needs CAP_SYS_ADMIN or no_new_privs.
    if context.is_some_and(|c| c.no_new_privs) {
        process["noNewPrivileges"] = json!(true);
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
            process["oomScoreAdj"] = json!(adj);
        }
    }

    // Mounts: the defaults, then the pod's files, then the CRI's; a later destination replaces
    // an earlier one.
    let sys_options = if privileged {
        vec!["nosuid", "noexec", "nodev", "rw"]
    } else {
        vec!["nosuid", "noexec", "nodev", "ro"]
    };
    let mut mounts: Vec<Value> = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": sys_options}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
               "options": ["nosuid", "noexec", "nodev", "relatime", if privileged { "rw" } else { "ro" }]}),
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
        None => mounts.push(
            json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        ),
    }
    for (index, mount) in config.mounts.iter().enumerate() {
        container_path("mounts.container_path", &mount.container_path)?;
        let host = Path::new(&mount.host_path);
        if !host.is_absolute() || host.components().any(|c| c == Component::ParentDir) {
            return Err(OciError::InvalidField {
                field: "mounts.host_path",
                reason: format!(
                    "mounts[{index}]: {:?} must be an absolute path without \"..\"",
                    mount.host_path
                ),
            });
        }
        let mut options = vec!["rbind", propagation(mount.propagation)];
        options.push(if mount.readonly { "ro" } else { "rw" });
        mounts.retain(|m| m["destination"] != json!(mount.container_path));
        mounts.push(json!({
            "destination": mount.container_path,
            "type": "bind",
            "source": mount.host_path,
            "options": options,
        }));
    }

    let mut namespaces = vec![json!({"type": "mount"})];
    match (&input.namespaces.pid, input.namespaces.host_pid) {
        (_, true) => {}
        (Some(path), false) => namespaces.push(json!({"type": "pid", "path": path})),
        (None, false) => namespaces.push(json!({"type": "pid"})),
    }
    for (kind, path) in [
        ("network", &input.namespaces.network),
        ("ipc", &input.namespaces.ipc),
        ("uts", &input.namespaces.uts),
    ] {
        if let Some(path) = path {
            namespaces.push(json!({"type": kind, "path": path}));
        }
    }

    let mut resources = resources(resources_in)?;
    let mut devices = vec![json!({"allow": privileged, "access": "rwm"})];
    let mut linux_devices = Vec::new();
    for device in input.devices {
        container_path("devices.container_path", &device.container_path)?;
        let access: String = device
            .permissions
            .chars()
            .filter(|c| matches!(c, 'r' | 'w' | 'm'))
            .collect();
        linux_devices.push(json!({
            "path": device.container_path,
            "type": device.kind.to_string(),
            "major": device.major,
            "minor": device.minor,
            "fileMode": device.file_mode,
            "uid": 0,
            "gid": 0,
        }));
        devices.push(json!({
            "allow": true,
            "type": device.kind.to_string(),
            "major": device.major,
            "minor": device.minor,
            "access": if access.is_empty() { "rwm".to_string() } else { access },
        }));
    }
    resources["devices"] = Value::Array(devices);

    let sysctls: BTreeMap<_, _> = input
        .sandbox
        .linux
        .as_ref()
        .map(|l| l.sysctls.iter().collect())
        .unwrap_or_default();

    let masked: Vec<String> = if privileged {
        Vec::new()
    } else if let Some(paths) = context.filter(|c| !c.masked_paths.is_empty()) {
        paths.masked_paths.clone()
    } else {
        DEFAULT_MASKED_PATHS.iter().map(|s| s.to_string()).collect()
    };
    let readonly: Vec<String> = if privileged {
        Vec::new()
    } else if let Some(paths) = context.filter(|c| !c.readonly_paths.is_empty()) {
        paths.readonly_paths.clone()
    } else {
        DEFAULT_READONLY_PATHS
            .iter()
            .map(|s| s.to_string())
            .collect()
    };

    let mut annotations: BTreeMap<String, String> = config
        .annotations
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
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

    let mut linux_json = json!({
        "namespaces": namespaces,
        "resources": resources,
        "cgroupsPath": input.cgroups_path,
        "devices": linux_devices,
        "maskedPaths": masked,
        "readonlyPaths": readonly,
        "sysctl": sysctls,
    });
    if let Some(propagation) = rootfs_propagation {
        linux_json["rootfsPropagation"] = json!(propagation);
    }
    if let Some(profile) = input.seccomp.filter(|_| !privileged) {
        linux_json["seccomp"] = profile.clone();
    }

    let spec = json!({
        "ociVersion": "1.0.2",
        "process": process,
        "root": {"path": input.rootfs, "readonly": readonly_rootfs},
        "mounts": mounts,
        "annotations": annotations,
        "linux": linux_json,
    });
    serde_json::from_value(spec).map_err(|err| OciError::Malformed {
        path: PathBuf::from(format!("generated spec of container {}", input.id)),
        reason: err.to_string(),
    })
}

#[cfg(test)]
#[path = "cri_tests.rs"]
mod tests;
