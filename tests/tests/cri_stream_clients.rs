//! The streaming server under our own Rust client, one per protocol (`ingot_tests::stream`):
//! exec with stdin, stdout, stderr and the exit code over every SPDY version and both WebSocket
//! versions; a terminal resized over each; attach; port-forward over SPDY (two connections at
//! once), WebSocket binary and base64 channels, and SPDY tunnelled in WebSocket; refusals
//! (bad protocols, a closed port, a used token); clients that vanish mid-stream; and nothing
//! left in ingotd (threads, descriptors) afterwards.

use std::time::Duration;

use ingot_tests::{
    cri::Daemon,
    pods::*,
    stream::{self, Output},
};
use k8s_cri::v1;
use tonic::transport::Channel;

type Client = v1::runtime_service_client::RuntimeServiceClient<Channel>;

const READ_ECHO_EXIT: &str = "read x; echo got-$x; echo err >&2; exit 7";

fn threads(daemon: &Daemon) -> usize {
    std::fs::read_dir(format!("/proc/{}/task", daemon.pid()))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn descriptors(daemon: &Daemon) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", daemon.pid()))
        .map(|d| d.count())
        .unwrap_or(0)
}

async fn exec_url(client: &mut Client, id: &str, cmd: &[&str], stdin: bool, tty: bool) -> String {
    client
        .exec(v1::ExecRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            stdin,
            stdout: true,
            stderr: !tty,
            tty,
        })
        .await
        .expect("Exec")
        .into_inner()
        .url
}

async fn port_forward_url(client: &mut Client, pod_id: &str, ports: &[i32]) -> String {
    client
        .port_forward(v1::PortForwardRequest {
            pod_sandbox_id: pod_id.into(),
            port: ports.to_vec(),
        })
        .await
        .expect("PortForward")
        .into_inner()
        .url
}

fn assert_read_echo_exit(output: &Output, what: &str) {
    assert_eq!(output.stdout, "got-hello\n", "{what}: {output:?}");
    assert_eq!(output.stderr, "err\n", "{what}: {output:?}");
    assert_eq!(output.exit_code(), Some(7), "{what}: {output:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn every_protocol_through_our_own_client() {
    let (env, mut client, image) = env(true).await;
    let daemon = &env.daemon;
    let dialer = stream::Dialer::new(env.netns());
    let log_dir = daemon.log_dir("clients");
    let pod = pod_config("clients", &log_dir);
    let pod_id = run_pod(&mut client, pod.clone()).await;
    let id = start_container(&mut client, &pod_id, &pod, web_container(&image)).await;
    // A first exec warms what every later one shares (the shim's exec path, pools).
    let url = exec_url(&mut client, &id, &["true"], false, false).await;
    let (session, _) = stream::spdy(&dialer, &url, &["v4.channel.k8s.io"])
        .await
        .expect("spdy");
    stream::spdy_process(&session, "v4.channel.k8s.io", None, false, None)
        .await
        .expect("warm-up exec");
    drop(session);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let threads_before = threads(daemon);
    let descriptors_before = descriptors(daemon);

    // Exec with stdin over every SPDY version: v4 reports the exit code as a Status, older
    // versions as text.
    for protocol in [
        "v4.channel.k8s.io",
        "v3.channel.k8s.io",
        "v2.channel.k8s.io",
        "channel.k8s.io",
    ] {
        let url = exec_url(&mut client, &id, &["sh", "-c", READ_ECHO_EXIT], true, false).await;
        let (session, chosen) = stream::spdy(&dialer, &url, &[protocol])
            .await
            .expect(protocol);
        assert_eq!(chosen, protocol);
        let output = stream::spdy_process(&session, protocol, Some(b"hello\n"), false, None)
            .await
            .expect(protocol);
        assert_eq!(output.stdout, "got-hello\n", "{protocol}: {output:?}");
        assert_eq!(output.stderr, "err\n", "{protocol}: {output:?}");
        if protocol == "v4.channel.k8s.io" {
            assert_eq!(output.exit_code(), Some(7), "{output:?}");
        } else {
            assert_eq!(
                output.status, "command terminated with non-zero exit code: 7",
                "{protocol}"
            );
        }
    }
    // The client's first choice wins among those both speak.
    let url = exec_url(&mut client, &id, &["true"], false, false).await;
    let (session, chosen) =
        stream::spdy(&dialer, &url, &["v2.channel.k8s.io", "v4.channel.k8s.io"])
            .await
            .expect("two offered");
    assert_eq!(chosen, "v4.channel.k8s.io", "the newest both speak");
    let output = stream::spdy_process(&session, &chosen, None, false, None)
        .await
        .expect("true");
    assert_eq!(output.exit_code(), Some(0), "{output:?}");

    // A terminal over SPDY, resized before the process asks.
    let url = exec_url(
        &mut client,
        &id,
        &["sh", "-c", "sleep 0.5; stty size"],
        false,
        true,
    )
    .await;
    let (session, _) = stream::spdy(&dialer, &url, &["v4.channel.k8s.io"])
        .await
        .expect("spdy tty");
    let output = stream::spdy_process(&session, "v4.channel.k8s.io", None, true, Some((91, 27)))
        .await
        .expect("tty");
    assert_eq!(output.stdout.trim(), "27 91", "{output:?}");

    // Exec over both WebSocket versions (v4 has no close for stdin: `read` needs a line only).
    for protocol in ["v5.channel.k8s.io", "v4.channel.k8s.io"] {
        let url = exec_url(&mut client, &id, &["sh", "-c", READ_ECHO_EXIT], true, false).await;
        let (socket, chosen) = stream::websocket(&dialer, &url, &[protocol])
            .await
            .expect(protocol);
        assert_eq!(chosen, protocol);
        let output = stream::websocket_process(socket, protocol, Some(b"hello\n"), None)
            .await
            .expect(protocol);
        assert_read_echo_exit(&output, protocol);
    }
    let url = exec_url(
        &mut client,
        &id,
        &["sh", "-c", "sleep 0.5; stty size"],
        false,
        true,
    )
    .await;
    let (socket, _) = stream::websocket(&dialer, &url, &["v5.channel.k8s.io"])
        .await
        .expect("websocket tty");
    let output = stream::websocket_process(socket, "v5.channel.k8s.io", None, Some((120, 40)))
        .await
        .expect("websocket tty");
    assert_eq!(output.stdout.trim(), "40 120", "{output:?}");

    // Attach to a container waiting on its stdin, over SPDY, then over WebSocket.
    for (name, websocket) in [("spdyreader", false), ("wsreader", true)] {
        let mut reader = container_config(name, &image, "");
        reader.command = vec!["/bin/sh".into()];
        reader.stdin = true;
        reader.stdin_once = true;
        let reader_id = start_container(&mut client, &pod_id, &pod, reader).await;
        let url = client
            .attach(v1::AttachRequest {
                container_id: reader_id.clone(),
                stdin: true,
                stdout: true,
                stderr: true,
                tty: false,
            })
            .await
            .expect("Attach")
            .into_inner()
            .url;
        let script = format!("echo {name}-$((6*7)); exit 0\n");
        let output = if websocket {
            let (socket, protocol) = stream::websocket(&dialer, &url, &["v5.channel.k8s.io"])
                .await
                .expect("attach websocket");
            stream::websocket_process(socket, &protocol, Some(script.as_bytes()), None).await
        } else {
            let (session, protocol) = stream::spdy(&dialer, &url, &["v4.channel.k8s.io"])
                .await
                .expect("attach spdy");
            stream::spdy_process(&session, &protocol, Some(script.as_bytes()), false, None).await
        }
        .expect("attach");
        assert!(
            output.stdout.contains(&format!("{name}-42")),
            "{name}: {output:?}"
        );
        stop_and_remove_container(&mut client, &reader_id, 0).await;
    }

    // A container whose stdin is not `stdin_once`: one attach's end leaves it open for the next.
    let mut keeper = container_config("keeper", &image, "");
    keeper.command = vec!["/bin/sh".into()];
    keeper.stdin = true;
    let keeper_id = start_container(&mut client, &pod_id, &pod, keeper).await;
    for (script, expected) in [
        ("echo one-$((1+1))\n", "one-2"),
        ("echo two-$((2+2)); exit 0\n", "two-4"),
    ] {
        let url = client
            .attach(v1::AttachRequest {
                container_id: keeper_id.clone(),
                stdin: true,
                stdout: true,
                stderr: true,
                tty: false,
            })
            .await
            .expect("Attach")
            .into_inner()
            .url;
        let (session, protocol) = stream::spdy(&dialer, &url, &["v4.channel.k8s.io"])
            .await
            .expect("attach spdy");
        let output =
            stream::spdy_process(&session, &protocol, Some(script.as_bytes()), false, None)
                .await
                .expect("attach");
        assert!(output.stdout.contains(expected), "{expected}: {output:?}");
        if expected == "one-2" {
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert_eq!(
                container_status(&mut client, &keeper_id).await.state,
                v1::ContainerState::ContainerRunning as i32,
                "stdin stays open after the first attach"
            );
        }
    }
    stop_and_remove_container(&mut client, &keeper_id, 0).await;

    // Port-forward over SPDY: two connections at once on one session.
    let request = b"GET /index.html HTTP/1.0\r\n\r\n";
    let url = port_forward_url(&mut client, &pod_id, &[]).await;
    let (session, chosen) = stream::spdy(&dialer, &url, &["portforward.k8s.io"])
        .await
        .expect("port-forward spdy");
    assert_eq!(chosen, "portforward.k8s.io");
    let (first, second) = tokio::join!(
        stream::spdy_port_forward(&session, 8080, 0, request),
        stream::spdy_port_forward(&session, 8080, 1, request),
    );
    for response in [first, second] {
        let response = String::from_utf8(response.expect("forwarded")).expect("utf-8");
        assert!(response.contains("served"), "{response}");
    }
    // A port nothing listens on: the error stream says so, the session lives on.
    let refused = stream::spdy_port_forward(&session, 9, 2, request).await;
    let message = refused.expect_err("nothing listens on port 9").to_string();
    assert!(message.contains("error forwarding port 9"), "{message}");
    let again = stream::spdy_port_forward(&session, 8080, 3, request)
        .await
        .expect("the session outlives a refused connection");
    assert!(String::from_utf8_lossy(&again).contains("served"));
    drop(session);

    // Port-forward over WebSocket channels: binary (named or not) and base64.
    for (protocols, base64) in [
        (&["v4.channel.k8s.io"][..], false),
        (&[][..], false),
        (&["v4.base64.channel.k8s.io"][..], true),
    ] {
        let url = port_forward_url(&mut client, &pod_id, &[8080]).await;
        let (socket, _) = stream::websocket(&dialer, &url, protocols)
            .await
            .expect("port-forward websocket");
        let response = stream::websocket_port_forward(socket, base64, 8080, request)
            .await
            .expect("forwarded over websocket");
        assert!(
            String::from_utf8_lossy(&response).contains("served"),
            "{protocols:?}"
        );
    }
    let url = port_forward_url(&mut client, &pod_id, &[9]).await;
    let (socket, _) = stream::websocket(&dialer, &url, &["v4.channel.k8s.io"])
        .await
        .expect("port-forward websocket to a closed port");
    let refused = stream::websocket_port_forward(socket, false, 9, request)
        .await
        .expect_err("nothing listens on port 9");
    assert!(
        refused.to_string().contains("error forwarding port 9"),
        "{refused}"
    );

    // SPDY tunnelled in WebSocket, as kubectl 1.31 and later dial port-forward.
    let url = port_forward_url(&mut client, &pod_id, &[]).await;
    let (socket, chosen) = stream::websocket(&dialer, &url, &["SPDY/3.1+portforward.k8s.io"])
        .await
        .expect("tunnel");
    assert_eq!(chosen, "SPDY/3.1+portforward.k8s.io");
    let session = ingot_spdy::Session::client(stream::tunnel(socket)).expect("tunnel session");
    let (first, second) = tokio::join!(
        stream::spdy_port_forward(&session, 8080, 0, request),
        stream::spdy_port_forward(&session, 8080, 1, request),
    );
    for response in [first, second] {
        assert!(String::from_utf8_lossy(&response.expect("tunnelled")).contains("served"));
    }
    drop(session);

    // Refusals: protocols the server does not speak, a used token, an unknown container.
    let url = exec_url(&mut client, &id, &["true"], false, false).await;
    let refused = stream::websocket(&dialer, &url, &["v1.bogus.k8s.io"])
        .await
        .expect_err("a protocol nobody speaks");
    assert!(refused.to_string().contains("403"), "{refused}");
    let Err(refused) = stream::spdy(&dialer, &url, &["bogus"]).await else {
        panic!("a SPDY protocol nobody speaks was accepted");
    };
    assert!(refused.to_string().contains("403"), "{refused}");
    let (session, _) = stream::spdy(&dialer, &url, &["v4.channel.k8s.io"])
        .await
        .expect("a refusal does not use up the token");
    drop(session);
    let Err(refused) = stream::spdy(&dialer, &url, &["v4.channel.k8s.io"]).await else {
        panic!("a used token was accepted");
    };
    assert!(refused.to_string().contains("404"), "{refused}");
    let refused = stream::websocket(&dialer, &url, &["v5.channel.k8s.io"])
        .await
        .expect_err("a used token over websocket");
    assert!(refused.to_string().contains("404"), "{refused}");

    // Clients that vanish mid-exec, over SPDY and over WebSocket: their processes end.
    for websocket in [false, true] {
        let url = exec_url(&mut client, &id, &["sleep", "738"], false, false).await;
        if websocket {
            let (socket, _) = stream::websocket(&dialer, &url, &["v5.channel.k8s.io"])
                .await
                .expect("websocket");
            wait_for_sleep_738(true).await;
            drop(socket);
        } else {
            let (session, protocol) = stream::spdy(&dialer, &url, &["v4.channel.k8s.io"])
                .await
                .expect("spdy");
            let running = tokio::spawn(async move {
                let _ = stream::spdy_process(&session, &protocol, None, false, None).await;
            });
            wait_for_sleep_738(true).await;
            running.abort();
        }
        wait_for_sleep_738(false).await;
    }

    // Nothing per stream is left in ingotd.
    assert!(
        ingot_tests::wait_until(Duration::from_secs(10), || threads(daemon)
            <= threads_before + 2
            && descriptors(daemon) <= descriptors_before + 2),
        "threads {} (before {threads_before}), descriptors {} (before {descriptors_before})",
        threads(daemon),
        descriptors(daemon)
    );
    stop_and_remove_container(&mut client, &id, 0).await;
    remove_pod(&mut client, &pod_id).await;
    assert_nothing_left(daemon, &pod_id);
}

/// Processes whose whole command line is `sleep 738`.
fn sleeping_738() -> usize {
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| {
                    std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == b"sleep\x00738\x00")
                })
                .count()
        })
        .unwrap_or(0)
}

async fn wait_for_sleep_738(running: bool) {
    for _ in 0..200 {
        if (sleeping_738() > 0) == running {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "sleep 738 {}",
        if running {
            "never started"
        } else {
            "outlived its client"
        }
    );
}

/// The streaming server over TLS (`stream_tls` with a certificate of the test's): its URLs are
/// https, our client speaks SPDY and WebSocket through it when it trusts the certificate and
/// is refused when it does not, plain http is not answered, and crictl (which, like the
/// kubelet's proxy, does not check the runtime's certificate) execs through it.
#[tokio::test(flavor = "current_thread")]
async fn tls_streams() {
    let certs = tempfile::tempdir().expect("tempdir");
    let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).expect("cert");
    let (cert, key) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).expect("cert");
    std::fs::write(&key, made.signing_key.serialize_pem()).expect("key");
    let (env, mut client, image) = env_with(
        true,
        ingot_tests::cri::Options {
            extra_config: format!(
                "[stream_tls]\nenabled = true\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
                cert.display(),
                key.display()
            ),
            ..Default::default()
        },
    )
    .await;
    let daemon = &env.daemon;
    let log_dir = daemon.log_dir("tls");
    let pod = pod_config("tls", &log_dir);
    let pod_id = run_pod(&mut client, pod.clone()).await;
    let id = start_container(
        &mut client,
        &pod_id,
        &pod,
        container_config("c", &image, "sleep 1000"),
    )
    .await;

    let trusting = stream::Dialer::new(env.netns())
        .trusting(&made.cert.pem())
        .expect("trust");
    let url = exec_url(&mut client, &id, &["sh", "-c", READ_ECHO_EXIT], true, false).await;
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let (session, protocol) = stream::spdy(&trusting, &url, &["v4.channel.k8s.io"])
        .await
        .expect("spdy over tls");
    let output = stream::spdy_process(&session, &protocol, Some(b"hello\n"), false, None)
        .await
        .expect("exec over tls");
    assert_read_echo_exit(&output, "spdy over tls");
    let url = exec_url(&mut client, &id, &["sh", "-c", READ_ECHO_EXIT], true, false).await;
    let (socket, protocol) = stream::websocket(&trusting, &url, &["v5.channel.k8s.io"])
        .await
        .expect("websocket over tls");
    let output = stream::websocket_process(socket, &protocol, Some(b"hello\n"), None)
        .await
        .expect("exec over wss");
    assert_read_echo_exit(&output, "wss");

    // A client that does not trust the certificate, and one that does not speak TLS.
    let url = exec_url(&mut client, &id, &["true"], false, false).await;
    let Err(refused) = stream::spdy(
        &stream::Dialer::new(env.netns()),
        &url,
        &["v4.channel.k8s.io"],
    )
    .await
    else {
        panic!("an untrusted certificate was accepted");
    };
    assert!(
        refused.to_string().to_lowercase().contains("certificate"),
        "{refused}"
    );
    let plain = url.replacen("https://", "http://", 1);
    assert!(
        stream::spdy(
            &stream::Dialer::new(env.netns()),
            &plain,
            &["v4.channel.k8s.io"]
        )
        .await
        .is_err(),
        "plain http answered on the TLS port"
    );

    // crictl through TLS.
    let crictl = ingot_tests::crictl();
    let output = env
        .netns()
        .expect("netns")
        .command(&crictl)
        .arg("--runtime-endpoint")
        .arg(format!("unix://{}", daemon.socket().display()))
        .args(["--timeout", "20s", "exec", &id, "echo", "over-tls"])
        .output()
        .expect("crictl exec");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "over-tls",
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    stop_and_remove_container(&mut client, &id, 0).await;
    remove_pod(&mut client, &pod_id).await;
    assert_nothing_left(daemon, &pod_id);
}
