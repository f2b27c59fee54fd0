//! ingotd under test: a daemon with its own root, state, socket and config in a temp dir, and a
//! CRI client over its unix socket. A daemon can run in a test's network namespace
//! ([`crate::TestNetns`]), so the CNI bridge plugin creates its bridge there, never on the host.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use k8s_cri::v1::{
    image_service_client::ImageServiceClient, runtime_service_client::RuntimeServiceClient,
};
use tonic::transport::{Channel, Endpoint, Uri};

pub fn ingotd_binary() -> PathBuf {
    crate::target_dir().expect("target").join("ingotd")
}

/// How a daemon is started.
#[derive(Default, Clone)]
pub struct Options {
    /// Extra TOML put before the `[cni]` table.
    pub extra_config: String,
    /// Run in this network namespace, with a bridge + host-local network (10.99.0.0/24).
    pub netns: Option<PathBuf>,
    /// Directories searched for CNI plugins before Debian's (`/usr/lib/cni`).
    pub cni_bin_dirs: Vec<PathBuf>,
    /// The network's plugin `type` instead of `bridge` (a plugin in `cni_bin_dirs` that calls
    /// the bridge plugin itself).
    pub cni_plugin: Option<String>,
    /// The runtime state directory (`--state`) on a tmpfs of its own, as `/run` is on a
    /// systemd host (on this machine `/run` is on the disk). Unmounted when the daemon is
    /// dropped.
    pub state_tmpfs: bool,
    /// The bridge masquerades (`ipMasq`) and the portmap plugin follows it: both run iptables
    /// in the daemon's network namespace.
    pub host_ports: bool,
    /// A descriptor of the test's (close-on-exec there) that the daemon inherits, as it would
    /// from a shell or a supervisor that leaks one.
    pub inherited_fd: Option<std::os::fd::RawFd>,
}

pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub child: Child,
    /// The cgroup parent of this daemon's pods (unique; removed on drop).
    pub cgroup_parent: String,
    options: Options,
}

/// A CNI configuration list: the bridge `ingot0` with host-local addresses, kept in
/// `<dir>/ipam`.
pub fn bridge_network(dir: &Path) -> String {
    network(&dir.join("ipam"), "bridge", false)
}

/// [`bridge_network`] run by the plugin `plugin` (which must hand on to `bridge`), keeping
/// host-local's reservations in `ipam`; with `host_ports`, masquerading and the portmap plugin.
fn network(ipam: &Path, plugin: &str, host_ports: bool) -> String {
    let mut plugins = vec![serde_json::json!({
        "type": plugin,
        "bridge": "ingot0",
        "isGateway": true,
        "ipMasq": host_ports,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": "10.99.0.0/24"}]],
            "dataDir": ipam,
        }
    })];
    if host_ports {
        plugins
            .push(serde_json::json!({"type": "portmap", "capabilities": {"portMappings": true}}));
    }
    serde_json::json!({"cniVersion": "1.0.0", "name": "ingot-test", "plugins": plugins}).to_string()
}

/// Where the daemon in `dir` started with `options` has host-local keep its reservations:
/// `<dir>/ipam`, or with the runtime state on a tmpfs (the bench's), there too.
fn ipam_dir(dir: &Path, options: &Options) -> PathBuf {
    if options.state_tmpfs {
        dir.join("run/ipam")
    } else {
        dir.join("ipam")
    }
}

impl Daemon {
    /// host-local's reservations for this daemon's pods.
    pub fn ipam_dir(&self) -> PathBuf {
        ipam_dir(self.dir.path(), &self.options)
    }

    pub fn start(extra_config: &str) -> Daemon {
        Self::start_with(Options {
            extra_config: extra_config.to_string(),
            ..Default::default()
        })
    }

    pub fn start_with(options: Options) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let cgroup_parent = format!("/{}", crate::unique("ingot-cri-test"));
        let net_d = dir.path().join("net.d");
        std::fs::create_dir_all(&net_d).expect("mkdir");
        if options.state_tmpfs {
            crate::mount_tmpfs(&dir.path().join("run")).expect("a tmpfs for the state");
        }
        if options.netns.is_some() {
            let plugin = options.cni_plugin.as_deref().unwrap_or("bridge");
            let ipam = ipam_dir(dir.path(), &options);
            let network = network(&ipam, plugin, options.host_ports);
            std::fs::write(net_d.join("10-ingot.conflist"), network).expect("cni conf");
        }
        let bin_dirs: Vec<String> = options
            .cni_bin_dirs
            .iter()
            .map(|d| d.display().to_string())
            .chain(["/usr/lib/cni".to_string()])
            .collect();
        // Daemons of tests running at once each take a free port, unless the test names one.
        let metrics = if options.extra_config.contains("metrics_address") {
            ""
        } else {
            "metrics_address = \"127.0.0.1:0\"\n"
        };
        std::fs::write(
            dir.path().join("ingot.toml"),
            format!(
                "cgroup_parent = \"{cgroup_parent}\"\n{metrics}{}[cni]\nconf_dir = \"{}\"\nbin_dirs = {:?}\n",
                options.extra_config,
                net_d.display(),
                bin_dirs,
            ),
        )
        .expect("config");
        Self::spawn(dir, cgroup_parent, options)
    }

    /// Starts a new ingotd over the same root, state and config as a stopped (or killed) one.
    pub fn restart(mut stopped: Daemon) -> Daemon {
        stopped.kill();
        let dir = std::mem::replace(&mut stopped.dir, tempfile::tempdir().expect("tempdir"));
        let cgroup_parent = std::mem::take(&mut stopped.cgroup_parent);
        let options = stopped.options.clone();
        drop(stopped);
        Self::spawn(dir, cgroup_parent, options)
    }

    fn spawn(dir: tempfile::TempDir, cgroup_parent: String, options: Options) -> Daemon {
        let socket = dir.path().join("run/ingot.sock");
        let _ = std::fs::remove_file(&socket);
        let mut command = if let Some(netns) = &options.netns {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", netns.display()))
                .arg(ingotd_binary());
            c
        } else {
            Command::new(ingotd_binary())
        };
        if let Some(fd) = options.inherited_fd {
            // SAFETY: fcntl on a descriptor number, async-signal-safe, in the child only.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
                    if libc::fcntl(fd, libc::F_SETFD, 0) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("ingotd.log"))
            .expect("log");
        let child = command
            .arg("--config")
            .arg(dir.path().join("ingot.toml"))
            .arg(format!("--listen=unix://{}", socket.display()))
            .arg("--root")
            .arg(dir.path().join("lib"))
            .arg("--state")
            .arg(dir.path().join("run"))
            .env(
                "INGOT_LOG",
                std::env::var("INGOT_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start ingotd");
        let daemon = Daemon {
            dir,
            child,
            cgroup_parent,
            options,
        };
        assert!(
            // Accepting, not only bound: the file exists a moment before listen(2).
            crate::wait_until(Duration::from_secs(10), || {
                std::os::unix::net::UnixStream::connect(daemon.socket()).is_ok()
            }),
            "ingotd did not listen: {}",
            daemon.log()
        );
        daemon
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("run/ingot.sock")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ingotd.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("pid"))
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        // Once reaped, the pid may belong to someone else.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = nix::sys::signal::kill(self.pid(), nix::sys::signal::Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }

    /// A directory the kubelet would give as a pod's log directory.
    pub fn log_dir(&self, pod: &str) -> PathBuf {
        self.dir.path().join("pods").join(pod)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            // The test failed: its daemon's log is the first thing to read.
            eprintln!(
                "--- ingotd log ({}) ---\n{}",
                self.dir.path().display(),
                self.log()
            );
        }
        if self.cgroup_parent.is_empty() {
            return;
        }
        // Whatever a failed test left: the shims of this daemon's pods (their command line
        // names this daemon's socket), then cgroups and mounts below this daemon's own paths.
        let socket = self.socket().display().to_string();
        for pid in crate::pids_with_cmdline(&["containerd-shim-ingot-v2", &socket]) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        // Pod inits name their pod's directory (under this daemon's) after `--pod-init`.
        let pods = self.dir.path().join("run/pods").display().to_string();
        for pid in crate::pids_with_cmdline(&["--pod-init", &pods]) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        crate::remove_cgroup_parent(self.cgroup_parent.trim_start_matches('/'));
        crate::unmount_below(self.dir.path());
    }
}

pub async fn channel(socket: &Path) -> Channel {
    let socket = socket.to_path_buf();
    Endpoint::try_from("http://[::]:50051")
        .expect("endpoint")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
        .expect("connect")
}

pub async fn runtime_client(socket: &Path) -> RuntimeServiceClient<Channel> {
    RuntimeServiceClient::new(channel(socket).await)
}

pub async fn image_client(socket: &Path) -> ImageServiceClient<Channel> {
    ImageServiceClient::new(channel(socket).await)
}

/// PullImage of `image` through the daemon at `socket`.
pub async fn pull(socket: &Path, image: &str) -> Result<(), tonic::Status> {
    image_client(socket)
        .await
        .pull_image(k8s_cri::v1::PullImageRequest {
            image: Some(k8s_cri::v1::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .map(|_| ())
}
