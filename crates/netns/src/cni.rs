//! A pod's network through CNI (spec 1.0): the node's network configuration (the first
//! `*.conflist`, `*.conf` or `*.json` in the config dir by name, as the kubelet's runtimes pick
//! it), each plugin of the list run in order on ADD with the previous result chained in, and in
//! reverse on DEL. Capabilities (`portMappings`) reach only the plugins that declare them.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::{run_plugin, CniCall, NetnsError};

/// One network configuration list.
#[derive(Debug, Clone, PartialEq)]
pub struct Network {
    pub name: String,
    pub cni_version: String,
    pub plugins: Vec<Value>,
    pub source: PathBuf,
}

fn invalid(source: &Path, message: impl Into<String>) -> NetnsError {
    NetnsError::Cni {
        plugin: source.display().to_string(),
        command: "load".into(),
        message: message.into(),
    }
}

/// Loads the node's network: None when the directory holds no configuration.
pub fn load_network(conf_dir: &Path) -> Result<Option<Network>, NetnsError> {
    let Ok(entries) = std::fs::read_dir(conf_dir) else {
        return Ok(None);
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("conflist" | "conf" | "json")
            )
        })
        .collect();
    files.sort();
    let Some(source) = files.into_iter().next() else {
        return Ok(None);
    };
    read_network(source).map(Some)
}

/// The network configuration file at `source` (a pod's record names the one it was attached
/// with); a file that cannot be read is [`NetnsError::Io`].
pub fn read_network(source: PathBuf) -> Result<Network, NetnsError> {
    let text = std::fs::read(&source).map_err(|err| NetnsError::Io {
        context: format!("read {}", source.display()),
        source: err,
    })?;
    let value: Value = serde_json::from_slice(&text)
        .map_err(|err| invalid(&source, format!("not JSON: {err}")))?;
    parse_network(value, source)
}

/// A `.conflist` document, or a single-plugin `.conf` one.
pub fn parse_network(value: Value, source: PathBuf) -> Result<Network, NetnsError> {
    let name = value
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| invalid(&source, "no \"name\""))?
        .to_string();
    let cni_version = value
        .get("cniVersion")
        .and_then(Value::as_str)
        .unwrap_or("1.0.0")
        .to_string();
    let plugins = match value.get("plugins") {
        Some(Value::Array(plugins)) if !plugins.is_empty() => plugins.clone(),
        Some(_) => return Err(invalid(&source, "\"plugins\" must be a non-empty list")),
        None => vec![value.clone()],
    };
    for plugin in &plugins {
        if plugin.get("type").and_then(Value::as_str).is_none() {
            return Err(invalid(&source, "a plugin has no \"type\""));
        }
    }
    Ok(Network {
        name,
        cni_version,
        plugins,
        source,
    })
}

/// Where and for whom a network is attached.
pub struct Attachment<'a> {
    pub plugin_dirs: &'a [PathBuf],
    pub container_id: &'a str,
    pub netns: &'a Path,
    pub ifname: &'a str,
    /// `CNI_ARGS`, e.g. `IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web`.
    pub args: &'a str,
    /// Capability arguments by name (`portMappings`).
    pub runtime_config: &'a Value,
}

impl Network {
    fn plugin_config(&self, plugin: &Value, attachment: &Attachment<'_>, prev: &Value) -> Value {
        let mut config = plugin.clone();
        config["name"] = json!(self.name);
        config["cniVersion"] = json!(self.cni_version);
        if !prev.is_null() {
            config["prevResult"] = prev.clone();
        }
        if let Some(capabilities) = plugin.get("capabilities").and_then(Value::as_object) {
            let mut runtime = serde_json::Map::new();
            for (capability, enabled) in capabilities {
                if enabled.as_bool() == Some(true) {
                    if let Some(value) = attachment.runtime_config.get(capability) {
                        runtime.insert(capability.clone(), value.clone());
                    }
                }
            }
            if !runtime.is_empty() {
                config["runtimeConfig"] = Value::Object(runtime);
            }
        }
        config
    }

    fn call(
        &self,
        command: &str,
        plugin: &Value,
        attachment: &Attachment<'_>,
        prev: &Value,
    ) -> Result<Value, NetnsError> {
        let config = self.plugin_config(plugin, attachment, prev);
        run_plugin(&CniCall {
            plugin_dirs: attachment.plugin_dirs,
            command,
            container_id: attachment.container_id,
            netns: attachment.netns,
            ifname: attachment.ifname,
            args: attachment.args,
            config: &config,
        })
    }

    /// ADD through every plugin; the last result. On a failure, what was added is deleted.
    pub fn add(&self, attachment: &Attachment<'_>) -> Result<Value, NetnsError> {
        let mut prev = Value::Null;
        for (index, plugin) in self.plugins.iter().enumerate() {
            match self.call("ADD", plugin, attachment, &prev) {
                Ok(result) => {
                    if !result.is_null() {
                        prev = result;
                    }
                }
                Err(err) => {
                    for done in self.plugins[..index].iter().rev() {
                        let _ = self.call("DEL", done, attachment, &prev);
                    }
                    return Err(err);
                }
            }
        }
        Ok(prev)
    }

    /// DEL through every plugin in reverse; every plugin runs, the first error is returned.
    pub fn del(&self, attachment: &Attachment<'_>, prev: &Value) -> Result<(), NetnsError> {
        let mut first = None;
        for plugin in self.plugins.iter().rev() {
            if let Err(err) = self.call("DEL", plugin, attachment, prev) {
                first.get_or_insert(err);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// The first IP address of a CNI result (`ips[].address`, without the prefix length), and the
/// others.
pub fn pod_ips(result: &Value) -> Vec<String> {
    result
        .get("ips")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|ip| ip.get("address").and_then(Value::as_str))
        .map(|address| address.split('/').next().unwrap_or(address).to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_the_first_configuration_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(load_network(dir.path()).expect("empty"), None);
        std::fs::write(
            dir.path().join("20-b.conf"),
            r#"{"cniVersion": "0.4.0", "name": "single", "type": "bridge"}"#,
        )
        .expect("write");
        std::fs::write(
            dir.path().join("10-a.conflist"),
            r#"{"cniVersion": "1.0.0", "name": "pods", "plugins": [
                {"type": "bridge", "bridge": "ingot0"},
                {"type": "portmap", "capabilities": {"portMappings": true}}]}"#,
        )
        .expect("write");
        std::fs::write(dir.path().join("00-readme.txt"), "not a config").expect("write");
        let network = load_network(dir.path()).expect("load").expect("some");
        assert_eq!(network.name, "pods");
        assert_eq!(network.plugins.len(), 2);
        let single = parse_network(
            serde_json::from_str(r#"{"name": "s", "type": "loopback"}"#).expect("json"),
            PathBuf::from("s.conf"),
        )
        .expect("single");
        assert_eq!(single.plugins.len(), 1);
        assert!(parse_network(json!({"name": "n", "plugins": []}), PathBuf::from("x")).is_err());
        assert!(parse_network(json!({"plugins": [{"type": "a"}]}), PathBuf::from("x")).is_err());
    }

    #[test]
    fn capabilities_reach_only_plugins_that_declare_them() {
        let network = parse_network(
            json!({"name": "pods", "cniVersion": "1.0.0", "plugins": [
                {"type": "bridge"},
                {"type": "portmap", "capabilities": {"portMappings": true}}]}),
            PathBuf::from("x"),
        )
        .expect("network");
        let runtime =
            json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]});
        let attachment = Attachment {
            plugin_dirs: &[],
            container_id: "p",
            netns: Path::new("/run/netns/x"),
            ifname: "eth0",
            args: "",
            runtime_config: &runtime,
        };
        let prev = json!({"ips": [{"address": "10.1.0.5/24"}]});
        let bridge = network.plugin_config(&network.plugins[0], &attachment, &Value::Null);
        assert!(bridge.get("runtimeConfig").is_none());
        assert!(bridge.get("prevResult").is_none());
        assert_eq!(bridge["name"], "pods");
        let portmap = network.plugin_config(&network.plugins[1], &attachment, &prev);
        assert_eq!(
            portmap["runtimeConfig"]["portMappings"][0]["hostPort"],
            8080
        );
        assert_eq!(portmap["prevResult"], prev);
        assert_eq!(pod_ips(&prev), vec!["10.1.0.5".to_string()]);
    }
}
