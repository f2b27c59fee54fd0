//! ingotd's configuration: embedded defaults, overlaid by `/etc/ingot/ingot.toml` (or the file
//! `--config` names), overlaid by flags. Unknown keys are errors that name the key, so a typo in
//! a node's config does not silently fall back to a default.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::CriError;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/ingot/ingot.toml";
pub const DEFAULT_METRICS_ADDRESS: &str = "127.0.0.1:9539";

/// The whole configuration, with every default filled in.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The CRI socket, `unix:///path`.
    pub listen: String,
    /// Persistent state (images, writable layers).
    pub root: PathBuf,
    /// Runtime state (the store, pod namespaces, shim sockets): what does not outlive the boot.
    pub state: PathBuf,
    /// Parent of every pod cgroup ingot creates when the kubelet gives none; absolute.
    pub cgroup_parent: String,
    pub cni: CniConfig,
    /// Per registry host (`registry.k8s.io`, `127.0.0.1:5000`): mirrors and plain http.
    pub registries: BTreeMap<String, RegistryConfig>,
    /// Where the node's `/sys` and `/proc` are read from (`/`; a captured tree in tests).
    pub host_root: PathBuf,
    /// The streaming server (Exec, PortForward URLs): `127.0.0.1:0` picks a free port on
    /// loopback, as containerd's `stream_server_address`.
    pub stream_address: String,
    /// TLS for the streaming server (containerd's `enable_tls_streaming`).
    pub stream_tls: StreamTls,
    /// The Prometheus endpoint (`/metrics`): loopback and a fixed port by default, as
    /// containerd's `metrics.address`; `127.0.0.1:0` picks a free port, `""` turns it off.
    pub metrics_address: String,
    /// Where the files host tuning changes (`proc/irq`, `sys/devices/system/cpu`,
    /// `etc/sysconfig/irqbalance`) are; `host_root` when unset.
    pub tuning_root: Option<PathBuf>,
    /// Where PCI devices (SR-IOV PFs and VFs) are read and bound (`sys/bus/pci`); `host_root`
    /// when unset.
    pub devices_root: Option<PathBuf>,
    /// Runtime handlers beside the default (`""` and `"ingot"`), as CRI-O's
    /// `[crio.runtime.runtimes.<name>]`: RunPodSandbox's `runtime_handler` picks one.
    pub runtimes: BTreeMap<String, RuntimeHandler>,
    /// CPU placement: `policy = "none" | "exclusive"`, `reserved = "0"` (housekeeping CPUs).
    pub placement: ingot_placement::PlacementConfig,
    /// Where CDI specs are read, lowest priority first (containerd's `cdi_spec_dirs`): a device
    /// in a later directory overrides one of the same name in an earlier one.
    pub cdi_spec_dirs: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CniConfig {
    pub conf_dir: PathBuf,
    pub bin_dirs: Vec<PathBuf>,
}

/// A runtime handler: CRI-O's high-performance hooks and the annotations its pods may use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeHandler {
    /// The CRI-O high-performance annotations (`cpu-quota.crio.io` …) take effect, as under
    /// CRI-O's `high-performance` runtime handler hooks.
    pub high_performance: bool,
    /// Annotations its pods may carry (CRI-O's `allowed_annotations`); a tuning annotation
    /// not listed here is refused.
    pub allowed_annotations: Vec<String>,
    /// `"first"`: exec'd and probe processes run on the container's first exclusive CPU, not
    /// over all of them (CRI-O's `exec_cpu_affinity`).
    pub exec_cpu_affinity: ExecCpuAffinity,
    /// Its pods need real time: admitted only on a node that passes `ingot-rt`'s required
    /// checks, each container only with whole CPUs of its own.
    pub realtime: bool,
    /// `"warn"`: a real-time pod on a node that fails those checks is admitted with a warning
    /// naming them (a latency benchmark on a stock kernel); by default it is refused.
    pub realtime_checks: RealtimeChecks,
}

/// What a node failing the real-time checks does to a real-time pod.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RealtimeChecks {
    /// Refused with FailedPrecondition naming each failed check.
    #[default]
    Require,
    /// Admitted, with a warning naming each failed check.
    Warn,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecCpuAffinity {
    /// Every CPU of the container.
    #[default]
    #[serde(rename = "")]
    All,
    First,
}

/// The runtime handlers ingotd always has.
pub const DEFAULT_HANDLERS: &[&str] = &["", "ingot"];
/// The handler of real-time pods unless the config defines it otherwise.
pub const RT_HANDLER: &str = "rt";

impl Config {
    /// The handler a pod names, or None when ingotd has no such handler.
    pub fn runtime_handler(&self, name: &str) -> Option<RuntimeHandler> {
        match self.runtimes.get(name) {
            Some(handler) => Some(handler.clone()),
            None if name == RT_HANDLER => Some(RuntimeHandler {
                realtime: true,
                ..Default::default()
            }),
            None => DEFAULT_HANDLERS
                .contains(&name)
                .then(RuntimeHandler::default),
        }
    }
}

/// `enabled` serves https: with the PEM certificate chain and key of `cert_file` and
/// `key_file` when given (both or neither), else with a self-signed certificate made at start
/// for the listening address, as containerd does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamTls {
    pub enabled: bool,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// Endpoints tried in order before the registry itself (`http://10.0.0.5:5000`).
    pub mirrors: Vec<String>,
    /// Talk plain http to this host. Loopback hosts always may.
    pub plain_http: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "unix:///run/ingot/ingot.sock".into(),
            root: PathBuf::from("/var/lib/ingot"),
            state: PathBuf::from("/run/ingot"),
            cgroup_parent: "/ingot".into(),
            cni: CniConfig::default(),
            registries: BTreeMap::new(),
            host_root: PathBuf::from("/"),
            stream_address: "127.0.0.1:0".into(),
            stream_tls: StreamTls::default(),
            runtimes: BTreeMap::new(),
            tuning_root: None,
            devices_root: None,
            metrics_address: DEFAULT_METRICS_ADDRESS.into(),
            placement: ingot_placement::PlacementConfig::default(),
            cdi_spec_dirs: vec![PathBuf::from("/etc/cdi"), PathBuf::from("/var/run/cdi")],
        }
    }
}

impl Default for CniConfig {
    fn default() -> Self {
        CniConfig {
            conf_dir: PathBuf::from("/etc/cni/net.d"),
            bin_dirs: vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")],
        }
    }
}

/// Command-line overrides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flags {
    pub config: Option<PathBuf>,
    pub listen: Option<String>,
    pub root: Option<PathBuf>,
    pub state: Option<PathBuf>,
}

impl Flags {
    /// Parses `--config F --listen L --root R --state S` (also `--flag=value`).
    pub fn parse(args: &[String]) -> Result<Flags, CriError> {
        let mut flags = Flags::default();
        let mut iter = args.iter();
        while let Some(arg) = iter.next() {
            let (name, inline) = match arg.split_once('=') {
                Some((name, value)) => (name, Some(value.to_string())),
                None => (arg.as_str(), None),
            };
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| iter.next().cloned())
                    .ok_or_else(|| CriError::Config(format!("flag {name} needs a value")))
            };
            match name {
                "--config" => flags.config = Some(PathBuf::from(value()?)),
                "--listen" => flags.listen = Some(value()?),
                "--root" => flags.root = Some(PathBuf::from(value()?)),
                "--state" => flags.state = Some(PathBuf::from(value()?)),
                other => {
                    return Err(CriError::Config(format!(
                        "unknown flag {other}; known: --config, --listen, --root, --state"
                    )))
                }
            }
        }
        Ok(flags)
    }
}

impl Config {
    /// Parses a TOML document over the defaults.
    pub fn from_toml(text: &str, origin: &Path) -> Result<Config, CriError> {
        let config: Config = toml::from_str(text)
            .map_err(|err| CriError::Config(format!("{}: {err}", origin.display())))?;
        config.validate()
    }

    /// Defaults, then the config file, then the flags. A file named by `--config` must exist;
    /// the default path may be absent.
    pub fn load(flags: &Flags) -> Result<Config, CriError> {
        let (path, required) = match &flags.config {
            Some(path) => (path.clone(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        let mut config = match std::fs::read_to_string(&path) {
            Ok(text) => Config::from_toml(&text, &path)?,
            Err(err) if !required && err.kind() == std::io::ErrorKind::NotFound => {
                Config::default()
            }
            Err(err) => {
                return Err(CriError::Config(format!("{}: {err}", path.display())));
            }
        };
        if let Some(listen) = &flags.listen {
            config.listen.clone_from(listen);
        }
        if let Some(root) = &flags.root {
            config.root.clone_from(root);
        }
        if let Some(state) = &flags.state {
            config.state.clone_from(state);
        }
        config.validate()
    }

    fn validate(self) -> Result<Config, CriError> {
        self.socket_path()?;
        for (name, path) in [
            ("root", &self.root),
            ("state", &self.state),
            ("host_root", &self.host_root),
        ] {
            if !path.is_absolute() {
                return Err(CriError::Config(format!(
                    "{name} = {:?}: an absolute path is required",
                    path.display()
                )));
            }
        }
        let parent = Path::new(&self.cgroup_parent);
        if !parent.is_absolute()
            || parent
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(CriError::Config(format!(
                "cgroup_parent = {:?}: an absolute path without \"..\" is required",
                self.cgroup_parent
            )));
        }
        let tls = &self.stream_tls;
        if tls.cert_file.is_some() != tls.key_file.is_some() {
            return Err(CriError::Config(
                "stream_tls: cert_file and key_file go together (or neither, for a self-signed certificate)"
                    .into(),
            ));
        }
        if !tls.enabled && tls.cert_file.is_some() {
            return Err(CriError::Config(
                "stream_tls: cert_file is set but enabled = false".into(),
            ));
        }
        for (host, registry) in &self.registries {
            for mirror in &registry.mirrors {
                if !(mirror.starts_with("http://") || mirror.starts_with("https://")) {
                    return Err(CriError::Config(format!(
                        "registries.\"{host}\".mirrors: {mirror:?} must start with http:// or https://"
                    )));
                }
            }
        }
        Ok(self)
    }

    /// The unix socket path of `listen`.
    pub fn socket_path(&self) -> Result<PathBuf, CriError> {
        let path = self.listen.strip_prefix("unix://").ok_or_else(|| {
            CriError::Config(format!(
                "listen = {:?}: only unix:///absolute/path sockets are served",
                self.listen
            ))
        })?;
        if !Path::new(path).is_absolute() {
            return Err(CriError::Config(format!(
                "listen = {:?}: the socket path must be absolute",
                self.listen
            )));
        }
        Ok(PathBuf::from(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn embedded_defaults() {
        let empty = Config::from_toml("", Path::new("empty.toml")).expect("empty");
        assert_eq!(empty, Config::default());
        assert_eq!(
            empty.socket_path().expect("socket"),
            PathBuf::from("/run/ingot/ingot.sock")
        );
        assert_eq!(empty.root, PathBuf::from("/var/lib/ingot"));
        assert_eq!(empty.cni.bin_dirs[0], PathBuf::from("/opt/cni/bin"));
    }

    #[test]
    fn file_then_flags() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("ingot.toml");
        std::fs::write(
            &file,
            r#"
root = "/srv/ingot"
[cni]
conf_dir = "/srv/cni"
[registries."registry.k8s.io"]
mirrors = ["http://127.0.0.1:5000"]
"#,
        )
        .expect("write");
        let flags = Flags::parse(&args(&[
            "--config",
            file.to_str().expect("utf8"),
            "--listen=unix:///tmp/x.sock",
        ]))
        .expect("flags");
        let config = Config::load(&flags).expect("load");
        assert_eq!(config.root, PathBuf::from("/srv/ingot"));
        assert_eq!(config.cni.conf_dir, PathBuf::from("/srv/cni"));
        assert_eq!(
            config.cni.bin_dirs.len(),
            2,
            "defaults kept beside the file's keys"
        );
        assert_eq!(config.listen, "unix:///tmp/x.sock");
        assert_eq!(
            config.registries["registry.k8s.io"].mirrors,
            vec!["http://127.0.0.1:5000".to_string()]
        );
    }

    #[test]
    fn bad_input_names_the_key_or_flag() {
        let origin = Path::new("/etc/ingot/ingot.toml");
        let err = Config::from_toml("lisen = \"x\"", origin).expect_err("typo");
        assert!(err.to_string().contains("lisen"), "{err}");
        let err = Config::from_toml("listen = \"tcp://0.0.0.0:1\"", origin).expect_err("tcp");
        assert!(err.to_string().contains("listen"), "{err}");
        let err = Config::from_toml("root = \"relative\"", origin).expect_err("relative");
        assert!(err.to_string().contains("root"), "{err}");
        let err = Config::from_toml(
            "[stream_tls]\nenabled = true\ncert_file = \"/c.pem\"",
            origin,
        )
        .expect_err("a certificate without its key");
        assert!(err.to_string().contains("key_file"), "{err}");
        let err = Config::from_toml("cgroup_parent = \"/a/../b\"", origin).expect_err("dotdot");
        assert!(err.to_string().contains("cgroup_parent"), "{err}");
        let err = Config::from_toml(
            "[registries.\"docker.io\"]\nmirrors = [\"10.0.0.1:5000\"]",
            origin,
        )
        .expect_err("mirror scheme");
        assert!(err.to_string().contains("docker.io"), "{err}");
        let err = Flags::parse(&args(&["--lsten", "x"])).expect_err("flag");
        assert!(err.to_string().contains("--lsten"), "{err}");
        let err = Flags::parse(&args(&["--root"])).expect_err("value");
        assert!(err.to_string().contains("--root"), "{err}");
        let err = Config::load(&Flags {
            config: Some(PathBuf::from("/nonexistent/ingot.toml")),
            ..Flags::default()
        })
        .expect_err("missing named file");
        assert!(err.to_string().contains("/nonexistent/ingot.toml"), "{err}");
    }
}
