//! Validation of CRI requests before anything is done: each error names the request field.

use std::path::{Component, Path};

use ingot_oci::cri::{self as spec};
use k8s_cri::v1;

use crate::{convert, CriError};
/// The longest name, namespace, uid or hostname accepted (Kubernetes' own limits are lower).
const MAX_NAME: usize = 253;

/// Checks an absolute host path without `..`.
pub fn absolute_path(field: &'static str, path: &str) -> Result<(), CriError> {
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(CriError::invalid(
            field,
            format!("{path:?} is not an absolute path"),
        ));
    }
    if p.components().any(|c| c == Component::ParentDir) {
        return Err(CriError::invalid(
            field,
            format!("{path:?} contains \"..\""),
        ));
    }
    Ok(())
}

fn name_field(field: &'static str, value: &str) -> Result<(), CriError> {
    if value.is_empty() {
        return Err(CriError::invalid(field, "is required"));
    }
    if value.len() > MAX_NAME {
        return Err(CriError::invalid(
            field,
            format!("is {} bytes long; at most {MAX_NAME}", value.len()),
        ));
    }
    if value.contains('/') || value.chars().any(char::is_control) {
        return Err(CriError::invalid(
            field,
            format!("{value:?} holds '/' or control characters"),
        ));
    }
    Ok(())
}

/// Everything RunPodSandbox refuses before it touches the host.
pub fn pod_config(config: &v1::PodSandboxConfig) -> Result<(), CriError> {
    let metadata = config
        .metadata
        .as_ref()
        .ok_or_else(|| CriError::invalid("config.metadata", "is required"))?;
    name_field("config.metadata.name", &metadata.name)?;
    name_field("config.metadata.namespace", &metadata.namespace)?;
    name_field("config.metadata.uid", &metadata.uid)?;
    if !config.hostname.is_empty() {
        let valid = config.hostname.len() <= 64
            && config
                .hostname
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        if !valid {
            return Err(CriError::invalid(
                "config.hostname",
                format!(
                    "{:?} is not a host name of at most 64 characters",
                    config.hostname
                ),
            ));
        }
    }
    if !config.log_directory.is_empty() {
        absolute_path("config.log_directory", &config.log_directory)?;
    }
    for mapping in &config.port_mappings {
        for (field, port) in [
            (
                "config.port_mappings.container_port",
                mapping.container_port,
            ),
            ("config.port_mappings.host_port", mapping.host_port),
        ] {
            if !(0..=65535).contains(&port) {
                return Err(CriError::invalid(
                    field,
                    format!("{port} is not a port number"),
                ));
            }
        }
    }
    if let Some(dns) = &config.dns_config {
        for server in &dns.servers {
            if server.parse::<std::net::IpAddr>().is_err() {
                return Err(CriError::invalid(
                    "config.dns_config.servers",
                    format!("{server:?} is not an IP address"),
                ));
            }
        }
    }
    if let Some(linux) = &config.linux {
        if !linux.cgroup_parent.is_empty() {
            ingot_oci::validate_cgroups_path(&linux.cgroup_parent).map_err(|_| {
                CriError::invalid(
                    "config.linux.cgroup_parent",
                    format!(
                        "{:?} must be an absolute cgroupfs path without \"..\"",
                        linux.cgroup_parent
                    ),
                )
            })?;
        }
        crate::sysctl::check(
            &linux.sysctls,
            &convert::own_namespaces(&convert::namespace_options(config)),
        )?;
    }
    Ok(())
}

/// Everything CreateContainer refuses before it touches the host.
pub fn container_config(config: &v1::ContainerConfig) -> Result<(), CriError> {
    let metadata = config
        .metadata
        .as_ref()
        .ok_or_else(|| CriError::invalid("config.metadata", "is required"))?;
    if metadata.name.is_empty() {
        return Err(CriError::invalid("config.metadata.name", "is required"));
    }
    if metadata.name.len() > 253 || metadata.name.contains('/') {
        return Err(CriError::invalid(
            "config.metadata.name",
            "must be at most 253 bytes without '/'",
        ));
    }
    if config
        .image
        .as_ref()
        .is_none_or(|i| i.image.trim().is_empty())
    {
        return Err(CriError::invalid(
            "config.image.image",
            "an image reference is required",
        ));
    }
    if !config.log_path.is_empty() {
        let path = Path::new(&config.log_path);
        if path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
            return Err(CriError::invalid(
                "config.log_path",
                format!(
                    "{:?} must be relative to the pod's log directory, without \"..\"",
                    config.log_path
                ),
            ));
        }
    }
    for mount in &config.mounts {
        spec::container_path("config.mounts.container_path", &mount.container_path)?;
        absolute_path("config.mounts.host_path", &mount.host_path)?;
    }
    for device in &config.devices {
        spec::container_path("config.devices.container_path", &device.container_path)?;
        absolute_path("config.devices.host_path", &device.host_path)?;
    }
    if !config.working_dir.is_empty() {
        spec::container_path("config.working_dir", &config.working_dir)?;
    }
    let linux = config.linux.as_ref();
    spec::resources(linux.and_then(|l| l.resources.as_ref()))?;
    let context = linux.and_then(|l| l.security_context.as_ref());
    spec::capabilities(context)?;
    spec::seccomp_choice(context)?;
    Ok(())
}

/// RunPodSandbox: a config, and a valid one.
pub fn run_pod_sandbox(request: &v1::RunPodSandboxRequest) -> Result<(), CriError> {
    let config = request
        .config
        .as_ref()
        .ok_or_else(|| CriError::invalid("config", "is required"))?;
    pod_config(config)
}

/// CreateContainer: a config, a pod id, and a valid config.
pub fn create_container(request: &v1::CreateContainerRequest) -> Result<(), CriError> {
    let config = request
        .config
        .as_ref()
        .ok_or_else(|| CriError::invalid("config", "is required"))?;
    if request.pod_sandbox_id.is_empty() {
        return Err(CriError::invalid("pod_sandbox_id", "is required"));
    }
    container_config(config)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn config() -> v1::PodSandboxConfig {
        v1::PodSandboxConfig {
            metadata: Some(v1::PodSandboxMetadata {
                name: "web".into(),
                namespace: "default".into(),
                uid: "u1".into(),
                attempt: 0,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn validation_names_the_field() {
        assert!(pod_config(&config()).is_ok());
        type Change = Box<dyn Fn(&mut v1::PodSandboxConfig)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|c| c.metadata = None), "config.metadata"),
            (
                Box::new(|c| c.metadata.as_mut().expect("m").name.clear()),
                "config.metadata.name",
            ),
            (
                Box::new(|c| c.metadata.as_mut().expect("m").uid = "a/b".into()),
                "config.metadata.uid",
            ),
            (
                Box::new(|c| c.metadata.as_mut().expect("m").namespace = "n".repeat(300)),
                "config.metadata.namespace",
            ),
            (
                Box::new(|c| c.hostname = "bad host".into()),
                "config.hostname",
            ),
            (
                Box::new(|c| c.log_directory = "var/log".into()),
                "config.log_directory",
            ),
            (
                Box::new(|c| {
                    c.port_mappings = vec![v1::PortMapping {
                        container_port: 70000,
                        ..Default::default()
                    }]
                }),
                "config.port_mappings.container_port",
            ),
            (
                Box::new(|c| {
                    c.dns_config = Some(v1::DnsConfig {
                        servers: vec!["dns.example".into()],
                        ..Default::default()
                    })
                }),
                "config.dns_config.servers",
            ),
            (
                Box::new(|c| {
                    c.linux = Some(v1::LinuxPodSandboxConfig {
                        cgroup_parent: "kubepods/../x".into(),
                        ..Default::default()
                    })
                }),
                "config.linux.cgroup_parent",
            ),
            (
                Box::new(|c| {
                    c.linux = Some(v1::LinuxPodSandboxConfig {
                        sysctls: HashMap::from([("net/../x".into(), "1".into())]),
                        ..Default::default()
                    })
                }),
                "config.linux.sysctls",
            ),
        ];
        for (change, field) in cases {
            let mut bad = config();
            change(&mut bad);
            let err = pod_config(&bad).expect_err(field);
            assert!(err.to_string().starts_with(field), "{field}: {err}");
        }
    }
}
