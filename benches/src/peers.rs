//! The runtimes a run compares, each started by the harness privately: its own root, state,
//! socket, CNI network (a bridge of its own in the run's network namespace) and cgroup parent,
//! never a system instance. Everything a peer starts is ended on drop, by pid or by the cgroup
//! parent the harness made for it.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use ingot_tests::{
    cri::{Daemon, Options},
    TestNetns,
};

/// containerd 2.1.5, built from source beside the checkout (`../shared/containerd2`).
const CONTAINERD2_DIR: &str = "containerd2";
/// CRI-O 1.32, built from source beside the checkout (`../shared/crio`).
const CRIO_DIR: &str = "crio";

/// Which runtime a peer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Ingot,
    /// Debian's containerd 1.6 with its CRI plugin and runc.
    Containerd16Runc,
    /// containerd 2.1.5 with runc.
    Containerd21Runc,
    /// Debian's containerd 1.6 with runc's shim calling crun.
    Containerd16Crun,
    /// CRI-O 1.32 with conmon and runc.
    CrioRunc,
}

impl Kind {
    pub(crate) const ALL: [Kind; 5] = [
        Kind::Ingot,
        Kind::Containerd16Runc,
        Kind::Containerd21Runc,
        Kind::Containerd16Crun,
        Kind::CrioRunc,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Ingot => "ingot",
            Kind::Containerd16Runc => "containerd-1.6+runc",
            Kind::Containerd21Runc => "containerd-2.1+runc",
            Kind::Containerd16Crun => "containerd-1.6+crun",
            Kind::CrioRunc => "cri-o-1.32+runc",
        }
    }

    /// A runtime by its name or a prefix of it that names one runtime (`cri-o`, `ingot`).
    pub(crate) fn parse(name: &str) -> Result<Kind> {
        let names: Vec<_> = Kind::ALL.iter().map(|k| k.name()).collect();
        if let Some(kind) = Kind::ALL.into_iter().find(|k| k.name() == name) {
            return Ok(kind);
        }
        let matching: Vec<Kind> = Kind::ALL
            .into_iter()
            .filter(|k| k.name().starts_with(name))
            .collect();
        match matching[..] {
            [kind] => Ok(kind),
            [] => bail!(
                "--runtimes: unknown runtime {name:?} (known: {})",
                names.join(", ")
            ),
            _ => bail!(
                "--runtimes: {name:?} names more than one runtime (known: {})",
                names.join(", ")
            ),
        }
    }

    /// Where this peer's binaries come from, when they are not found (a clear error, before
    /// anything starts).
    fn check(self, shared: &Path) -> Result<()> {
        let needed: Vec<PathBuf> = match self {
            Kind::Ingot => vec![],
            Kind::Containerd16Runc => vec!["/usr/bin/containerd".into(), "/usr/sbin/runc".into()],
            Kind::Containerd16Crun => vec!["/usr/bin/containerd".into(), "/usr/bin/crun".into()],
            Kind::Containerd21Runc => vec![
                shared.join(CONTAINERD2_DIR).join("containerd"),
                shared.join(CONTAINERD2_DIR).join("containerd-shim-runc-v2"),
                "/usr/sbin/runc".into(),
            ],
            Kind::CrioRunc => vec![
                shared.join(CRIO_DIR).join("crio"),
                "/usr/bin/conmon".into(),
                "/usr/sbin/runc".into(),
            ],
        };
        for path in needed {
            if !path.exists() {
                bail!(
                    "{}: {} is missing (Debian packages containerd, runc, crun, conmon; \
                     containerd 2.1 and CRI-O from ../shared)",
                    self.name(),
                    path.display()
                );
            }
        }
        Ok(())
    }
}

/// What keeps a peer alive; dropping it ends the peer.
enum Guard {
    Ingot(Daemon),
    Process {
        child: Child,
        dir: tempfile::TempDir,
        /// Host paths the peer creates outside its dir that did not exist before (CRI-O).
        created_host_paths: Vec<PathBuf>,
    },
}

/// One runtime under test, serving CRI on `socket`.
pub(crate) struct Peer {
    pub kind: Kind,
    pub socket: PathBuf,
    /// Every process the peer starts names this directory in its command line (shims by
    /// their `-address`, conmon by its paths); see [`crate::procs`].
    pub marker: String,
    /// `/<unique>`, made by the harness for this peer's pods, removed on drop.
    pub cgroup_parent: String,
    pub daemon_pid: i32,
    guard: Option<Guard>,
}

/// A CNI network list for a peer: a bridge of its own with host-local addresses.
fn cni_network(name: &str, bridge: &str, subnet: &str, ipam_dir: &Path, version: &str) -> String {
    serde_json::json!({
        "cniVersion": version, "name": name,
        "plugins": [{"type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]],
                     "dataDir": ipam_dir}}]
    })
    .to_string()
}

/// `<dir>/state` on a tmpfs of its own, for a runtime's runtime state. Every runtime's (ingotd's
/// `--state`, containerd's `state`, CRI-O's `runroot` and its runtimes' roots) is, as `/run` is
/// on a systemd host: this machine has `/run` on its disk, an ext4 without a journal, where a
/// file created while many were deleted in the last seconds costs a scan of their inodes.
/// Persistent state (images, writable layers, the runtimes' databases) stays on the disk, as on
/// a node. host-local's address reservations, which every runtime's plugin writes the same way,
/// are kept there too: on that disk each new reservation file scanned the inodes every runtime
/// freed in the last minute (journaled ext4 and xfs, which nodes run, make no such scan), so a
/// runtime paid for the one before it. The peer's drop unmounts it with everything below its dir.
fn runtime_state_tmpfs(dir: &Path) -> Result<PathBuf> {
    let state = dir.join("state");
    ingot_tests::mount_tmpfs(&state)?;
    Ok(state)
}

/// Makes the cgroup parent `/<name>` in every v1 hierarchy (cpusets filled from the root, as a
/// node's kubepods cgroup is), for peers that expect their parent to exist.
fn make_cgroup_parent(name: &str) -> Result<()> {
    for entry in fs::read_dir("/sys/fs/cgroup")?.flatten() {
        let hierarchy = entry.path();
        if hierarchy.ends_with("unified") || !hierarchy.join("cgroup.procs").exists() {
            continue;
        }
        let dir = hierarchy.join(name);
        fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        for file in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(value) = fs::read_to_string(hierarchy.join(file)) {
                fs::write(dir.join(file), value.trim())
                    .with_context(|| format!("write {}", dir.join(file).display()))?;
            }
        }
    }
    Ok(())
}

impl Peer {
    /// Starts `kind` inside `netns`, pulling from `registry` (an address on the netns'
    /// loopback), with `pause` as its sandbox image where it needs one.
    pub(crate) fn start(
        kind: Kind,
        netns: &TestNetns,
        registry: &str,
        pause: &str,
        shared: &Path,
    ) -> Result<Peer> {
        kind.check(shared)?;
        match kind {
            Kind::Ingot => {
                let daemon = Daemon::start_with(Options {
                    netns: Some(netns.path()),
                    extra_config: crate::run::INGOT_JITTER_CONFIG.into(),
                    state_tmpfs: true,
                    ..Default::default()
                });
                Ok(Peer {
                    kind,
                    socket: daemon.socket(),
                    marker: daemon.dir.path().display().to_string(),
                    cgroup_parent: daemon.cgroup_parent.clone(),
                    daemon_pid: daemon.pid().as_raw(),
                    guard: Some(Guard::Ingot(daemon)),
                })
            }
            Kind::Containerd16Runc | Kind::Containerd16Crun | Kind::Containerd21Runc => {
                Self::containerd(kind, netns, registry, pause, shared)
            }
            Kind::CrioRunc => Self::crio(netns, registry, pause, shared),
        }
    }

    fn containerd(
        kind: Kind,
        netns: &TestNetns,
        registry: &str,
        pause: &str,
        shared: &Path,
    ) -> Result<Peer> {
        let dir = tempfile::Builder::new()
            .prefix("ingot-bench-ctd")
            .tempdir()?;
        let d = dir.path();
        let (bridge, subnet) = match kind {
            Kind::Containerd16Runc => ("ctd16", "10.98.0.0/24"),
            Kind::Containerd16Crun => ("ctdcrun", "10.97.0.0/24"),
            _ => ("ctd21", "10.96.0.0/24"),
        };
        fs::create_dir_all(d.join("net.d"))?;
        fs::write(
            d.join("net.d/10-bench.conflist"),
            cni_network(bridge, bridge, subnet, &d.join("state/ipam"), "1.0.0"),
        )?;
        let hosts = d.join("certs.d").join(registry);
        fs::create_dir_all(&hosts)?;
        fs::write(
            hosts.join("hosts.toml"),
            format!(
                "server = \"http://{registry}\"\n[host.\"http://{registry}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
            ),
        )?;
        let binary = match kind {
            Kind::Containerd16Crun => "/usr/bin/crun",
            _ => "/usr/sbin/runc",
        };
        runtime_state_tmpfs(d)?;
        let common = format!(
            "root = \"{root}\"\nstate = \"{state}\"\n[grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n",
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = d.join("c.sock").display(),
        );
        let config = if kind == Kind::Containerd21Runc {
            format!(
                r#"version = 3
disabled_plugins = ["io.containerd.nri.v1.nri"]
{common}
[plugins."io.containerd.cri.v1.images".pinned_images]
  sandbox = "{registry}/{pause}"
[plugins."io.containerd.cri.v1.images".registry]
  config_path = "{certs}"
[plugins."io.containerd.cri.v1.runtime"]
  restrict_oom_score_adj = true
  enable_cdi = false
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "{binary}"
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "{netd}"
"#,
                certs = d.join("certs.d").display(),
                netd = d.join("net.d").display(),
            )
        } else {
            format!(
                r#"version = 2
{common}
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{registry}/{pause}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "{binary}"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{netd}"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{certs}"
"#,
                certs = d.join("certs.d").display(),
                netd = d.join("net.d").display(),
            )
        };
        fs::write(d.join("config.toml"), config)?;
        let (program, path) = match kind {
            Kind::Containerd21Runc => {
                let own = shared.join(CONTAINERD2_DIR);
                (
                    own.join("containerd").display().to_string(),
                    format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", own.display()),
                )
            }
            _ => (
                "/usr/bin/containerd".to_string(),
                "/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
            ),
        };
        let daemon = format!(
            "exec {program} --config {}",
            d.join("config.toml").display()
        );
        let script = if kind == Kind::Containerd16Crun {
            // crun 1.8 refuses this host's hybrid layout (hugetlb on cgroup2) and runs once the
            // unified hierarchy looks empty: its containerd gets a private mount namespace with
            // an empty file over cgroup.controllers.
            let empty = d.join("empty-controllers");
            fs::write(&empty, b"")?;
            format!(
                "exec unshare --mount --propagation private sh -c 'mount --bind {} /sys/fs/cgroup/unified/cgroup.controllers && {daemon}'",
                empty.display()
            )
        } else {
            daemon
        };
        let mut command = netns.command("sh");
        command.args(["-c", &script]);
        let log = fs::File::create(d.join("daemon.log"))?;
        let child = command
            .env("PATH", path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("{}: start {program}", kind.name()))?;
        let cgroup_parent = ingot_tests::unique("ingot-bench-cg");
        make_cgroup_parent(&cgroup_parent)?;
        let mut peer = Peer {
            kind,
            socket: d.join("c.sock"),
            marker: d.display().to_string(),
            cgroup_parent: format!("/{cgroup_parent}"),
            daemon_pid: 0,
            guard: Some(Guard::Process {
                child,
                dir,
                created_host_paths: Vec::new(),
            }),
        };
        peer.wait_for_socket()?;
        Ok(peer)
    }

    fn crio(netns: &TestNetns, registry: &str, pause: &str, shared: &Path) -> Result<Peer> {
        let dir = tempfile::Builder::new()
            .prefix("ingot-bench-crio")
            .tempdir()?;
        let d = dir.path();
        // Paths CRI-O touches outside its dir (crun's state dir, which it makes when it probes
        // crun at start; the CNI result cache; c/image's blob-info cache): the absent ones are
        // removed again on drop.
        let created_host_paths: Vec<PathBuf> = [
            "/run/crun",
            "/var/lib/cni",
            "/var/lib/containers/cache/blob-info-cache-v1.sqlite",
        ]
        .iter()
        .map(PathBuf::from)
        .filter(|p| !p.exists())
        .collect();
        for sub in [
            "cni",
            "crio.conf.d",
            "hooks.d",
            "cdi",
            "tmp",
            "registries.conf.d",
        ] {
            fs::create_dir_all(d.join(sub))?;
        }
        runtime_state_tmpfs(d)?;
        let p = |s: &str| d.join(s).display().to_string();
        let config = format!(
            r#"[crio]
root = "{root}"
runroot = "{run}"
storage_driver = "overlay"
log_dir = "{logs}"
version_file = "{run}/version"
version_file_persist = "{version}"
clean_shutdown_file = "{clean}"
[crio.api]
listen = "{sock}"
stream_address = "127.0.0.1"
stream_port = "0"
[crio.runtime]
default_runtime = "runc"
cgroup_manager = "cgroupfs"
selinux = false
log_to_journald = false
hooks_dir = ["{hooks}"]
cdi_spec_dirs = ["{cdi}"]
container_exits_dir = "{exits}"
container_attach_socket_dir = "{attach}"
namespaces_dir = "{ns}"
pinns_path = "{pinns}"
drop_infra_ctr = true
irqbalance_config_file = "{irqbalance}"
irqbalance_config_restore_file = "disable"
[crio.runtime.runtimes.runc]
runtime_path = "/usr/sbin/runc"
runtime_type = "oci"
runtime_root = "{runc}"
monitor_path = "/usr/bin/conmon"
monitor_cgroup = "pod"
[crio.runtime.runtimes.crun]
runtime_path = "/usr/bin/crun"
runtime_type = "oci"
runtime_root = "{crun}"
monitor_path = "/usr/bin/conmon"
monitor_cgroup = "pod"
[crio.image]
pause_image = "{registry}/{pause}"
signature_policy = "{policy}"
signature_policy_dir = "{policies}"
big_files_temporary_dir = "{tmp}"
[crio.network]
network_dir = "{cni}"
plugin_dirs = ["/usr/lib/cni"]
[crio.metrics]
enable_metrics = false
[crio.nri]
enable_nri = false
"#,
            root = p("root"),
            run = p("state/run"),
            logs = p("pod-logs"),
            version = p("version"),
            clean = p("clean.shutdown"),
            sock = p("crio.sock"),
            hooks = p("hooks.d"),
            cdi = p("cdi"),
            exits = p("state/exits"),
            attach = p("state/attach"),
            ns = p("state/ns"),
            pinns = shared.join(CRIO_DIR).join("pinns").display(),
            irqbalance = p("irqbalance"),
            runc = p("state/runc"),
            crun = p("state/crun"),
            policy = p("policy.json"),
            policies = p("policies"),
            tmp = p("tmp"),
            cni = p("cni"),
        );
        fs::write(d.join("crio.conf"), config)?;
        fs::write(
            d.join("policy.json"),
            r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )?;
        fs::write(
            d.join("registries.conf"),
            format!(
                "unqualified-search-registries = []\n[[registry]]\nlocation = \"{registry}\"\ninsecure = true\n"
            ),
        )?;
        fs::write(
            d.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"overlay\"\nrunroot = \"{}\"\ngraphroot = \"{}\"\n",
                p("run"),
                p("root")
            ),
        )?;
        fs::write(
            d.join("cni/10-bench.conflist"),
            cni_network(
                "crio-bench",
                "crio0",
                "10.95.0.0/24",
                &d.join("state/ipam"),
                "0.4.0",
            ),
        )?;
        let log = fs::File::create(d.join("daemon.log"))?;
        let child = netns
            .command(shared.join(CRIO_DIR).join("crio"))
            .arg("--config")
            .arg(d.join("crio.conf"))
            .arg("--config-dir")
            .arg(d.join("crio.conf.d"))
            .arg("--registries-conf")
            .arg(d.join("registries.conf"))
            .arg("--registries-conf-dir")
            .arg(d.join("registries.conf.d"))
            .env("CONTAINERS_STORAGE_CONF", d.join("storage.conf"))
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cri-o: start crio")?;
        let cgroup_parent = ingot_tests::unique("ingot-bench-cg");
        make_cgroup_parent(&cgroup_parent)?;
        let mut peer = Peer {
            kind: Kind::CrioRunc,
            socket: d.join("crio.sock"),
            marker: d.display().to_string(),
            cgroup_parent: format!("/{cgroup_parent}"),
            daemon_pid: 0,
            guard: Some(Guard::Process {
                child,
                dir,
                created_host_paths,
            }),
        };
        peer.wait_for_socket()?;
        Ok(peer)
    }

    /// Waits until the daemon accepts on its socket, and finds its pid (the child is `nsenter`
    /// or `sh`, which exec it, so the pid is the child's).
    fn wait_for_socket(&mut self) -> Result<()> {
        let Some(Guard::Process { child, dir, .. }) = &mut self.guard else {
            return Ok(());
        };
        self.daemon_pid = i32::try_from(child.id()).context("pid")?;
        let socket = self.socket.clone();
        let up = ingot_tests::wait_until(Duration::from_secs(60), || {
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        });
        if !up || !matches!(child.try_wait(), Ok(None)) {
            let log = fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            bail!(
                "{} did not serve on {}:\n{}",
                self.kind.name(),
                socket.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        Ok(())
    }

    pub(crate) fn name(&self) -> &'static str {
        self.kind.name()
    }

    /// The daemon's log file.
    pub(crate) fn log(&self) -> PathBuf {
        match &self.guard {
            Some(Guard::Ingot(daemon)) => daemon.dir.path().join("ingotd.log"),
            Some(Guard::Process { dir, .. }) => dir.path().join("daemon.log"),
            None => PathBuf::new(),
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let Some(Guard::Process {
            mut child,
            dir,
            created_host_paths,
        }) = self.guard.take()
        else {
            // ingotd's own test harness ends it and everything of its pods.
            return;
        };
        let kill = |pid: i32| {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        };
        if matches!(child.try_wait(), Ok(None)) {
            kill(self.daemon_pid);
            let _ = child.wait();
        }
        // Shims and conmons name the peer's dir; what is left in its pods' cgroups is the
        // peer's containers.
        for pid in ingot_tests::pids_with_cmdline(&[&self.marker]) {
            kill(pid);
        }
        ingot_tests::remove_cgroup_parent(self.cgroup_parent.trim_start_matches('/'));
        ingot_tests::unmount_below(dir.path());
        for path in created_host_paths {
            let _ = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
        }
        // The bridges live in the run's network namespace and go with it.
        drop(dir);
    }
}

/// The directory holding `containerd2/` and `crio/`: `../shared` beside the checkout, or
/// `$INGOT_BENCH_SHARED`.
pub(crate) fn shared_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("INGOT_BENCH_SHARED") {
        return PathBuf::from(dir);
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .and_then(Path::parent)
        .map(|p| p.join("shared"))
        .unwrap_or_else(|| PathBuf::from("../shared"))
}
