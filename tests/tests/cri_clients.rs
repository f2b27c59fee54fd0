//! ingotd under gRPC clients other than our own: Python's `grpcio` (from PyPI, in a virtual
//! environment the test creates), which sends the socket path as HTTP/2 `:authority`
//! percent-encoded, and the same client sending the raw path, as the kubelet up to 1.25
//! (grpc-go) and grpc-java do. A server that checks `:authority` as an RFC 3986 authority resets
//! every such call with PROTOCOL_ERROR.

use std::{path::PathBuf, process::Command};

use ingot_tests::cri::Daemon;
use k8s_cri::v1;
use prost::Message;

/// Calls RuntimeService methods with grpcio on `unix://<socket>` (with `authority` as
/// `grpc.default_authority` when given) and prints, per call, `ok <hex reply>` or
/// `error <status code> <details>`.
const CLIENT: &str = r#"
import sys, grpc
socket, authority = sys.argv[1], sys.argv[2]
options = [("grpc.default_authority", authority)] if authority else []
channel = grpc.insecure_channel("unix://" + socket, options=options)
for method, request in [("Version", bytes.fromhex(sys.argv[3])),
                        ("PodSandboxStatus", bytes.fromhex(sys.argv[4]))]:
    call = channel.unary_unary("/runtime.v1.RuntimeService/" + method)
    try:
        print("ok", call(request, timeout=10).hex())
    except grpc.RpcError as err:
        print("error", err.code().name, err.details())
"#;

fn run_client(python: &PathBuf, daemon: &Daemon, authority: &str) -> Vec<String> {
    let version = v1::VersionRequest {
        version: "v1".into(),
    }
    .encode_to_vec();
    let status = v1::PodSandboxStatusRequest {
        pod_sandbox_id: "no-such-pod".into(),
        verbose: false,
    }
    .encode_to_vec();
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let output = Command::new(python)
        .args(["-c", CLIENT])
        .arg(daemon.socket())
        .arg(authority)
        .arg(hex(&version))
        .arg(hex(&status))
        .output()
        .expect("run the grpcio client");
    assert!(
        output.status.success(),
        "grpcio client: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn decode_hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

#[test]
fn python_grpcio_with_the_socket_path_as_authority() {
    let python = ingot_tests::python_with("grpcio", "grpc");
    let daemon = Daemon::start("");
    let raw_path = daemon.socket().display().to_string();
    // grpcio's default (the path, percent-encoded), then the raw path as grpc-go and
    // grpc-java send it, then an ordinary authority.
    for authority in ["", raw_path.as_str(), "localhost"] {
        let lines = run_client(&python, &daemon, authority);
        assert_eq!(lines.len(), 2, "authority {authority:?}: {lines:?}");
        let reply = lines[0]
            .strip_prefix("ok ")
            .unwrap_or_else(|| panic!("Version with authority {authority:?}: {}", lines[0]));
        let version = v1::VersionResponse::decode(decode_hex(reply).as_slice()).expect("decode");
        assert_eq!(version.runtime_name, "ingot");
        assert_eq!(version.runtime_api_version, "v1");
        // Errors keep their code and message through this client too.
        assert!(
            lines[1].starts_with("error NOT_FOUND ") && lines[1].contains("no-such-pod"),
            "PodSandboxStatus with authority {authority:?}: {}",
            lines[1]
        );
    }
}
