//! A pod's sysctls, checked as runc checks them before anything is made: only sysctls the
//! kernel keeps per namespace (net.*, the IPC ones, kernel.domainname), each only where the pod
//! has that namespace of its own (net.* not with the host's network, IPC ones not with the
//! host's IPC), names as Kubernetes allows them (dotted, or with '/' as separator). Their values
//! are checked by the kernel when RunPodSandbox writes them in the pod's new namespaces.

use std::collections::HashMap;

use ingot_netns::Kind;

use crate::CriError;

const FIELD: &str = "config.linux.sysctls";
/// Sysctls of the IPC namespace (runc's list, as the kubelet's).
const IPC_SYSCTLS: &[&str] = &[
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
    "kernel.shmall",
    "kernel.shmmax",
    "kernel.shmmni",
    "kernel.shm_rmid_forced",
];
const IPC_PREFIX: &str = "fs.mqueue.";
const NET_PREFIX: &str = "net.";
/// Kubernetes' limit on a sysctl name.
const MAX_NAME: usize = 253;

/// A name with '/' as its separator in dotted form: the first separator decides, and '.' and
/// '/' swap (`net/ipv4/conf/eth0.100/forwarding` is `net.ipv4.conf.eth0/100.forwarding`), as the
/// kubelet and runc convert them.
pub fn dotted(name: &str) -> String {
    match name.find(['.', '/']) {
        Some(i) if name.as_bytes()[i] == b'/' => swap_separators(name),
        _ => name.to_string(),
    }
}

fn swap_separators(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            '.' => '/',
            '/' => '.',
            c => c,
        })
        .collect()
}

/// The file under `/proc/sys` of a dotted name.
pub fn proc_path(dotted: &str) -> String {
    swap_separators(dotted)
}

/// Kubernetes' sysctl name syntax: segments of `[a-z0-9]([-_a-z0-9]*[a-z0-9])?` joined by '.'
/// or '/'.
fn well_formed(name: &str) -> bool {
    let segment_ok = |s: &str| {
        let bytes = s.as_bytes();
        !bytes.is_empty()
            && bytes
                .iter()
                .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_'))
            && bytes[0].is_ascii_alphanumeric()
            && bytes[bytes.len() - 1].is_ascii_alphanumeric()
    };
    name.len() <= MAX_NAME && name.split(['.', '/']).all(segment_ok)
}

/// The namespace a (dotted) sysctl belongs to, when the kernel keeps it per namespace.
fn namespace_of(dotted: &str) -> Option<Kind> {
    if IPC_SYSCTLS.contains(&dotted) || dotted.starts_with(IPC_PREFIX) {
        Some(Kind::Ipc)
    } else if dotted.starts_with(NET_PREFIX) {
        Some(Kind::Net)
    } else if dotted == "kernel.domainname" {
        Some(Kind::Uts)
    } else {
        None
    }
}

/// Checks the pod's sysctls against the namespaces it gets (`own`: those not shared with the
/// host); returns them dotted, sorted by name, for writing in those namespaces.
pub fn check(
    sysctls: &HashMap<String, String>,
    own: &[Kind],
) -> Result<Vec<(String, String)>, CriError> {
    let invalid =
        |name: &str, reason: String| CriError::invalid(FIELD, format!("{name:?}: {reason}"));
    let mut checked = Vec::with_capacity(sysctls.len());
    for (name, value) in sysctls {
        if !well_formed(name) {
            return Err(invalid(
                name,
                "is not a sysctl name (dot- or slash-separated segments of [a-z0-9_-], at most \
                 253 characters)"
                    .into(),
            ));
        }
        if value.is_empty() || value.contains(['\n', '\0']) {
            return Err(invalid(
                name,
                format!("{value:?} is not a sysctl value (empty, or with a newline or NUL)"),
            ));
        }
        let dotted = dotted(name);
        if dotted == "kernel.hostname" {
            return Err(invalid(
                name,
                "is not allowed: it conflicts with the pod's hostname".into(),
            ));
        }
        let Some(kind) = namespace_of(&dotted) else {
            return Err(invalid(
                name,
                "is not in a separate kernel namespace (only net.*, fs.mqueue.*, the kernel.msg*, \
                 kernel.sem and kernel.shm* IPC sysctls and kernel.domainname are)"
                    .into(),
            ));
        };
        if !own.contains(&kind) {
            let shared = match kind {
                Kind::Net => "the host's network namespace (hostNetwork)",
                Kind::Ipc => "the host's IPC namespace (hostIPC)",
                Kind::Uts => "the host's UTS namespace (hostNetwork)",
            };
            return Err(invalid(name, format!("is not allowed in {shared}")));
        }
        checked.push((dotted, value.clone()));
    }
    checked.sort();
    if let Some(pair) = checked.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(invalid(
            &pair[0].0,
            "is given twice (dotted and slashed)".into(),
        ));
    }
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: &[Kind] = &[Kind::Net, Kind::Ipc, Kind::Uts];

    fn one(name: &str, value: &str, own: &[Kind]) -> Result<Vec<(String, String)>, CriError> {
        check(&HashMap::from([(name.to_string(), value.to_string())]), own)
    }

    #[test]
    fn namespaced_sysctls_pass_in_their_own_namespaces() {
        for name in [
            "net.ipv4.ip_unprivileged_port_start",
            "net.core.somaxconn",
            "kernel.shm_rmid_forced",
            "kernel.msgmax",
            "kernel.sem",
            "fs.mqueue.msg_max",
            "kernel.domainname",
        ] {
            assert_eq!(
                one(name, "1", ALL).expect(name),
                vec![(name.to_string(), "1".to_string())]
            );
        }
        assert_eq!(
            one("net/ipv4/conf/eth0.100/forwarding", "1", ALL).expect("slashed"),
            vec![("net.ipv4.conf.eth0/100.forwarding".into(), "1".into())]
        );
        assert_eq!(
            proc_path("net.ipv4.conf.eth0/100.forwarding"),
            "net/ipv4/conf/eth0.100/forwarding"
        );
    }

    #[test]
    fn refusals_name_the_sysctl_and_the_reason() {
        let cases: &[(&str, &str, &[Kind], &str)] = &[
            (
                "kernel.panic",
                "1",
                ALL,
                "not in a separate kernel namespace",
            ),
            (
                "vm.swappiness",
                "1",
                ALL,
                "not in a separate kernel namespace",
            ),
            (
                "kernel.hostname",
                "x",
                ALL,
                "conflicts with the pod's hostname",
            ),
            (
                "net.ipv4.ip_forward",
                "1",
                &[Kind::Ipc],
                "host's network namespace",
            ),
            (
                "kernel.shmmax",
                "1",
                &[Kind::Net, Kind::Uts],
                "host's IPC namespace",
            ),
            (
                "fs.mqueue.msg_max",
                "1",
                &[Kind::Net],
                "host's IPC namespace",
            ),
            (
                "kernel.domainname",
                "x",
                &[Kind::Ipc],
                "host's UTS namespace",
            ),
            ("Net.ipv4.ip_forward", "1", ALL, "is not a sysctl name"),
            ("net..ipv4", "1", ALL, "is not a sysctl name"),
            ("net/../x", "1", ALL, "is not a sysctl name"),
            ("net.ipv4.ip_forward", "", ALL, "is not a sysctl value"),
            ("net.ipv4.ip_forward", "1\n0", ALL, "is not a sysctl value"),
        ];
        for (name, value, own, reason) in cases {
            let err = one(name, value, own).expect_err(name);
            let text = err.to_string();
            assert!(text.starts_with(FIELD), "{name}: {text}");
            assert!(
                text.contains(name) && text.contains(reason),
                "{name}: {text}"
            );
            assert!(matches!(err, CriError::InvalidArgument { .. }), "{name}");
        }
        let twice = check(
            &HashMap::from([
                ("net.ipv4.ip_forward".to_string(), "1".to_string()),
                ("net/ipv4/ip_forward".to_string(), "1".to_string()),
            ]),
            ALL,
        )
        .expect_err("twice");
        assert!(twice.to_string().contains("given twice"), "{twice}");
    }
}
