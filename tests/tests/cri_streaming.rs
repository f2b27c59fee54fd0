//! The streaming server through crictl (the kubelet's own SPDY client code): `crictl exec -i`
//! with stdin, output and the exit code; a TTY exec that sees its terminal size; port-forward to
//! a server inside a pod's network namespace, two connections at once; a used or unknown token
//! refused; nothing left behind.

use std::{
    io::{Read, Write},
    process::{Command, Stdio},
    time::Duration,
};

use ingot_tests::{cri::Daemon, pods::*};

use ingot_tests::crictl;
use k8s_cri::v1;

/// crictl in ingotd's network namespace, where its streaming server listens on loopback, as a
/// kubelet on the same node would reach it.
/// Runs `line` in a shell under `script` (a pseudo-terminal), in ingotd's network namespace;
/// returns what it printed.
fn under_script(env: &Env, line: &str) -> String {
    let mut command = match env.netns() {
        Some(netns) => netns.command("script"),
        None => Command::new("script"),
    };
    let output = command
        .args(["-qec", line, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .expect("script");
    String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr)
}

fn crictl_cmd(env: &Env) -> Command {
    let daemon = &env.daemon;
    let mut command = match env.netns() {
        Some(netns) => netns.command(crictl()),
        None => Command::new(crictl()),
    };
    command
        .arg("--runtime-endpoint")
        .arg(format!("unix://{}", daemon.socket().display()))
        .arg("--timeout")
        .arg("20s");
    command
}

/// Processes whose whole command line is `sleep 737` (not crictl's, which names it too).
fn sleeping_737() -> usize {
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| {
                    std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == b"sleep\x00737\x00")
                })
                .count()
        })
        .unwrap_or(0)
}

/// Threads of ingotd, to check none is left running per stream.
fn threads(daemon: &Daemon) -> usize {
    std::fs::read_dir(format!("/proc/{}/task", daemon.pid()))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "current_thread")]
async fn exec_with_stdin_tty_and_port_forward_through_crictl() {
    assert!(
        crictl().exists(),
        "crictl from ../shared/cri-tools is needed"
    );
    let (env, mut client, image) = env(true).await;
    let daemon = &env.daemon;
    let log_dir = daemon.log_dir("web");
    let pod = pod_config("web", &log_dir);
    let pod_id = run_pod(&mut client, pod.clone()).await;
    let id = start_container(&mut client, &pod_id, &pod, web_container(&image)).await;
    let threads_before = threads(daemon);

    // stdin in, stdout out, the exit code back.
    let mut child = crictl_cmd(&env)
        .args([
            "exec",
            "-i",
            &id,
            "sh",
            "-c",
            "read x; echo got-$x; echo err >&2; exit 7",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("crictl exec");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"hello\n")
        .expect("write stdin");
    let output = child.wait_with_output().expect("crictl exec output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stdout.trim(), "got-hello", "stderr: {stderr}");
    assert!(stderr.contains("err"), "{stderr}");
    // crictl reports the exit code from the error stream's status, and exits 1 itself.
    assert!(
        stderr.contains("command terminated with exit code 7"),
        "stdout {stdout} stderr {stderr}"
    );
    assert!(!output.status.success());

    // The same over WebSocket (v5.channel.k8s.io, whose close message ends stdin).
    let mut child = crictl_cmd(&env)
        .args([
            "exec",
            "-i",
            "--transport",
            "websocket",
            &id,
            "sh",
            "-c",
            "read x; echo ws-$x; exit 3",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("crictl exec over websocket");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"there\n")
        .expect("write stdin");
    let output = child.wait_with_output().expect("crictl exec output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stdout.trim(), "ws-there", "stderr: {stderr}");
    assert!(
        stderr.contains("command terminated with exit code 3"),
        "stdout {stdout} stderr {stderr}"
    );

    // A terminal: the process sees a tty of the size crictl's own terminal has (crictl wants
    // a terminal on its stdin for -t: `script` gives it one, 33x101).
    let mut crictl_line = crictl_cmd(&env);
    crictl_line.args(["exec", "-it", &id, "sh", "-c", "tty; sleep 0.5; stty size"]);
    let line = format!(
        "stty rows 33 cols 101; {}",
        std::iter::once(crictl_line.get_program())
            .chain(crictl_line.get_args())
            .map(|arg| format!("'{}'", arg.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let output = under_script(&env, &line);
    assert!(output.contains("/dev/pts/"), "{output}");
    assert!(output.contains("33 101"), "the terminal's size: {output}");

    // Port-forward: two connections at once to the pod's httpd, inside its network namespace.
    let local_port = 18_080;
    let mut forward = crictl_cmd(&env)
        .args(["port-forward", &pod_id, &format!("{local_port}:8080")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("crictl port-forward");
    let netns = env.netns().expect("a private network namespace");
    let connect = || {
        netns
            .run(move || std::net::TcpStream::connect(("127.0.0.1", local_port)))
            .expect("in the namespace")
    };
    assert!(
        ingot_tests::wait_until(Duration::from_secs(10), || connect().is_ok()),
        "crictl port-forward never listened"
    );
    let mut first = connect().expect("first");
    let mut second = connect().expect("second");
    for stream in [&mut first, &mut second] {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        stream
            .write_all(b"GET /index.html HTTP/1.0\r\n\r\n")
            .expect("request");
    }
    for stream in [&mut first, &mut second] {
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("response");
        assert!(response.contains("served"), "{response}");
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(forward.id()).expect("pid")),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = forward.wait();

    // A client that vanishes mid-exec takes its process with it.
    let mut vanishing = crictl_cmd(&env)
        .args(["exec", &id, "sleep", "737"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("crictl exec sleep");
    assert!(
        ingot_tests::wait_until(Duration::from_secs(10), || { sleeping_737() > 0 }),
        "the exec never started"
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(vanishing.id()).expect("pid")),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = vanishing.wait();
    assert!(
        ingot_tests::wait_until(Duration::from_secs(10), || { sleeping_737() == 0 }),
        "the exec outlived its client"
    );

    // Attach to a container that keeps stdin open: what it prints comes back.
    let mut reader = container_config("reader", &image, "");
    reader.command = vec!["/bin/sh".into()];
    reader.stdin = true;
    reader.stdin_once = true;
    let reader_id = start_container(&mut client, &pod_id, &pod, reader).await;
    // It waits on its stdin, which nobody has opened yet.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        container_status(&mut client, &reader_id).await.state,
        v1::ContainerState::ContainerRunning as i32,
        "a container with stdin open waits for it"
    );
    let mut child = crictl_cmd(&env)
        .args(["attach", "-i", &reader_id])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("crictl attach");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"echo attached-$((6*7))\n")
        .expect("write stdin");
    let output = child.wait_with_output().expect("crictl attach output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("attached-42"),
        "stdout {stdout} stderr {}",
        String::from_utf8_lossy(&output.stderr)
    );
    stop_and_remove_container(&mut client, &reader_id, 0).await;

    // And attach over WebSocket.
    let mut reader = container_config("wsreader", &image, "");
    reader.command = vec!["/bin/sh".into()];
    reader.stdin = true;
    reader.stdin_once = true;
    let reader_id = start_container(&mut client, &pod_id, &pod, reader).await;
    let mut child = crictl_cmd(&env)
        .args(["attach", "-i", "--transport", "websocket", &reader_id])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("crictl attach over websocket");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"echo over-ws-$((6*7))\n")
        .expect("write stdin");
    let output = child.wait_with_output().expect("crictl attach output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("over-ws-42"),
        "stdout {stdout} stderr {}",
        String::from_utf8_lossy(&output.stderr)
    );
    stop_and_remove_container(&mut client, &reader_id, 0).await;

    // Used and unknown tokens, and a bad protocol, are refused.
    let url = client
        .exec(v1::ExecRequest {
            container_id: id.clone(),
            cmd: vec!["true".into()],
            stdout: true,
            ..Default::default()
        })
        .await
        .expect("Exec")
        .into_inner()
        .url;
    let status = |url: &str, upgrade: &str| -> String {
        let rest = url.strip_prefix("http://").expect("http url");
        let (host, path) = rest.split_once('/').expect("path");
        let host = host.to_string();
        let target = host.clone();
        let mut stream = netns
            .run(move || std::net::TcpStream::connect(target))
            .expect("in the namespace")
            .expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        write!(
            stream,
            "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: {upgrade}\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n"
        )
        .expect("request");
        let mut buffer = [0u8; 512];
        let n = stream.read(&mut buffer).unwrap_or(0);
        String::from_utf8_lossy(&buffer[..n])
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    };
    assert!(status(&url, "h2c").contains("400"), "not SPDY");
    assert!(status(&url, "SPDY/3.1").contains("101"), "the first use");
    assert!(status(&url, "SPDY/3.1").contains("404"), "a used token");
    let unknown = format!(
        "{}/0123456789abcdef",
        url.rsplit_once('/').expect("token").0
    );
    assert!(
        status(&unknown, "SPDY/3.1").contains("404"),
        "an unknown token"
    );
    let err = client
        .exec(v1::ExecRequest {
            container_id: "nope".into(),
            cmd: vec!["true".into()],
            stdout: true,
            ..Default::default()
        })
        .await
        .expect_err("unknown container");
    assert_eq!(err.code(), tonic::Code::NotFound);

    // Nothing per stream is left: threads settle back, no exec state remains.
    assert!(
        ingot_tests::wait_until(Duration::from_secs(5), || threads(daemon)
            <= threads_before + 2),
        "threads {} after, {threads_before} before",
        threads(daemon)
    );
    let exec_dir = daemon.dir.path().join("run/exec");
    assert!(
        ingot_tests::wait_until(Duration::from_secs(5), || std::fs::read_dir(&exec_dir)
            .map(|d| d.count() == 0)
            .unwrap_or(true)),
        "exec state left in {}",
        exec_dir.display()
    );
    stop_and_remove_container(&mut client, &id, 0).await;
    remove_pod(&mut client, &pod_id).await;
    assert_nothing_left(daemon, &pod_id);
}
