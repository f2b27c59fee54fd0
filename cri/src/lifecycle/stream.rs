//! Exec with streams (`kubectl exec`, `crictl exec -it`) and port-forward connections, for the
//! streaming server: the process runs through the pod's shim like ExecSync's, its stdin, stdout
//! and stderr carried through fifos to the caller's streams, a terminal resized on request; a
//! port-forward connection is a TCP socket made inside the pod's network namespace.

use std::{path::Path, sync::Arc, time::Duration};

use containerd_shim_protos::{api, protobuf::well_known_types::any::Any};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt},
    net::unix::pipe,
    sync::mpsc,
};

use super::Manager;
use crate::{convert, CriError};

/// How long output written just before the exit may take to drain.
const DRAIN: Duration = Duration::from_secs(1);

pub type Reader = Box<dyn AsyncRead + Send + Unpin>;
pub type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// Resolves when the caller is gone (its connection closed).
pub type Gone<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;

/// The caller's ends of an exec or an attach.
pub struct ProcessStreams {
    pub stdin: Option<Reader>,
    pub stdout: Option<Writer>,
    /// Unused with a terminal (its output is all on stdout).
    pub stderr: Option<Writer>,
    /// Terminal sizes (width, height), in order.
    pub resize: Option<mpsc::Receiver<(u16, u16)>>,
}

/// Copies a fifo's output to `sink` until `done` fires, then what is left for [`DRAIN`].
async fn pump_out(
    path: std::path::PathBuf,
    mut sink: Writer,
    mut done: tokio::sync::watch::Receiver<bool>,
) {
    // Opened read-write: the open does not wait for the shim, and EOF never comes early.
    let Ok(mut source) = pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(&path)
    else {
        return;
    };
    let mut buffer = vec![0u8; 32 * 1024];
    loop {
        tokio::select! {
            read = tokio::io::AsyncReadExt::read(&mut source, &mut buffer) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => if sink.write_all(&buffer[..n]).await.is_err() { return },
            },
            _ = done.changed() => {
                // The process exited: what it wrote is in the pipe already.
                while let Ok(Ok(n)) = tokio::time::timeout(
                    Duration::from_millis(50),
                    tokio::io::AsyncReadExt::read(&mut source, &mut buffer),
                ).await {
                    if n == 0 || sink.write_all(&buffer[..n]).await.is_err() {
                        break;
                    }
                }
                break;
            }
        }
    }
    let _ = sink.flush().await;
    let _ = sink.shutdown().await;
}

/// Runs `cmd` in a running container with the caller's streams; returns its exit status.
/// Ends the process (SIGKILL) when the caller goes away before it exits.
pub async fn exec(
    manager: &Arc<Manager>,
    container_id: &str,
    cmd: &[String],
    tty: bool,
    streams: ProcessStreams,
    gone: Gone<'_>,
) -> Result<u32, CriError> {
    if cmd.is_empty() {
        return Err(CriError::invalid("cmd", "is required"));
    }
    let (container, shim) = super::running(manager, container_id)?;
    let process = super::exec::exec_process(manager, &container, cmd, tty).await?;
    let (exec_id, dir) = super::exec::exec_dir(manager)?;
    let result = run(
        &shim,
        &container.id,
        &exec_id,
        &dir,
        &process,
        tty,
        streams,
        gone,
    )
    .await;
    let _ = shim.delete(&container.id, &exec_id).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

#[allow(clippy::too_many_arguments)]
async fn run(
    shim: &crate::shim_client::ShimClient,
    id: &str,
    exec_id: &str,
    dir: &Path,
    process: &serde_json::Value,
    tty: bool,
    streams: ProcessStreams,
    gone: Gone<'_>,
) -> Result<u32, CriError> {
    let stdin_path = streams
        .stdin
        .is_some()
        .then(|| super::exec::fifo(dir, "stdin"))
        .transpose()?;
    let stdout_path = super::exec::fifo(dir, "stdout")?;
    let stderr_path = (!tty)
        .then(|| super::exec::fifo(dir, "stderr"))
        .transpose()?;
    // The write end of stdin, opened before the shim opens its read end.
    let stdin_writer = match &stdin_path {
        Some(path) => Some(
            pipe::OpenOptions::new()
                .read_write(true)
                .open_sender(path)
                .map_err(CriError::io(format!("open {}", path.display())))?,
        ),
        None => None,
    };
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let discard = || -> Writer { Box::new(tokio::io::sink()) };
    let mut outputs = tokio::task::JoinSet::new();
    outputs.spawn(pump_out(
        stdout_path.clone(),
        streams.stdout.unwrap_or_else(discard),
        done_rx.clone(),
    ));
    if let Some(path) = &stderr_path {
        outputs.spawn(pump_out(
            path.clone(),
            streams.stderr.unwrap_or_else(discard),
            done_rx.clone(),
        ));
    }
    let value = serde_json::to_vec(process).map_err(|err| CriError::Io {
        context: "encode exec process".into(),
        source: err.into(),
    })?;
    let request = api::ExecProcessRequest {
        id: id.to_string(),
        exec_id: exec_id.to_string(),
        terminal: tty,
        stdin: stdin_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        stdout: stdout_path.display().to_string(),
        stderr: stderr_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        spec: Some(Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
            value,
            ..Default::default()
        })
        .into(),
        ..Default::default()
    };
    shim.exec(&request).await?;
    shim.start(id, exec_id).await?;
    tracing::info!(container = %id, exec = %exec_id, tty, "streaming exec started");

    // stdin: the caller's bytes into the fifo; at its end, the process reads EOF.
    let stdin_task = match (streams.stdin, stdin_writer) {
        (Some(mut source), Some(mut sink)) => {
            let (shim, id, exec_id) = (shim.clone(), id.to_string(), exec_id.to_string());
            Some(tokio::spawn(async move {
                let copied = tokio::io::copy(&mut source, &mut sink).await;
                tracing::debug!(exec = %exec_id, ?copied, "exec stdin ended");
                drop(sink);
                // The shim holds the fifo open (as containerd's does): CloseIO ends stdin, once
                // the shim has passed on what was written.
                if let Err(err) = shim.close_stdin(&id, &exec_id).await {
                    tracing::debug!(exec = %exec_id, error = %err, "close exec stdin");
                }
            }))
        }
        _ => None,
    };
    let resize_task = streams.resize.map(|mut sizes| {
        let (shim, id, exec_id) = (shim.clone(), id.to_string(), exec_id.to_string());
        tokio::spawn(async move {
            while let Some((width, height)) = sizes.recv().await {
                let _ = shim
                    .resize_pty(&id, &exec_id, u32::from(width), u32::from(height))
                    .await;
            }
        })
    });
    // A caller that goes away takes its process with it: nothing would read its output or
    // collect its exit.
    let exit = tokio::select! {
        exit = shim.wait(id, exec_id) => exit,
        () = gone => {
            tracing::info!(container = %id, exec = %exec_id, "exec client gone: the process is killed");
            let _ = shim.kill(id, exec_id, libc::SIGKILL as u32, false).await;
            shim.wait(id, exec_id).await
        }
    };
    let _ = done_tx.send(true);
    let drained = tokio::time::timeout(DRAIN + Duration::from_millis(500), async {
        while outputs.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        outputs.abort_all();
    }
    for task in [stdin_task, resize_task].into_iter().flatten() {
        task.abort();
    }
    Ok(exit?.exit_status)
}

/// A TCP connection to `port` on the pod's loopback, made inside its network namespace (the
/// host's for a host-network pod), without a helper process.
pub async fn connect_in_pod(
    manager: &Arc<Manager>,
    pod_id: &str,
    port: u16,
) -> Result<tokio::net::TcpStream, CriError> {
    let pod = manager.pod(pod_id)?;
    let netns = pod.net.clone();
    let stream = tokio::task::spawn_blocking(move || {
        crate::host::netns::run_in(netns.as_deref(), "port-forward", || {
            std::net::TcpStream::connect_timeout(
                &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                Duration::from_secs(5),
            )
            .map_err(CriError::io(format!("connect to port {port} in the pod")))
        })
    })
    .await
    .map_err(CriError::join("port-forward connect"))??;
    stream
        .set_nonblocking(true)
        .map_err(CriError::io("port-forward socket"))?;
    tokio::net::TcpStream::from_std(stream).map_err(CriError::io("port-forward socket"))
}

/// How often a followed log is read for new lines.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(20);
/// Empty reads in a row after the attach ends before the log is left (10 × 20 ms).
const QUIET_READS: u32 = 10;

/// One line of the CRI log format: `<time> <stream> <P|F> <message>`: the stream and the
/// message, with its newline when the line is full (F).
fn log_line(line: &str) -> Option<(&str, String)> {
    let mut parts = line.splitn(4, ' ');
    let (_time, stream, tag) = (parts.next()?, parts.next()?, parts.next()?);
    let message = parts.next().unwrap_or("");
    let text = if tag == "F" {
        format!("{message}\n")
    } else {
        message.to_string()
    };
    Some((stream, text))
}

/// Follows the container's CRI log from its end, writing what the process prints to `stdout`
/// and `stderr`, until `stop` fires.
async fn follow_log(
    mut file: tokio::fs::File,
    mut stdout: Option<Writer>,
    mut stderr: Option<Writer>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::AsyncReadExt;
    let mut pending = Vec::new();
    let mut buffer = vec![0u8; 32 * 1024];
    // After the stop, the shim may still be copying the last output into the log: it is read
    // until it has been quiet for a while.
    let mut quiet_after_stop = 0;
    loop {
        let n = file.read(&mut buffer).await.unwrap_or(0);
        if n == 0 {
            if *stop.borrow() {
                quiet_after_stop += 1;
                if quiet_after_stop >= QUIET_READS {
                    break;
                }
                tokio::time::sleep(FOLLOW_INTERVAL).await;
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(FOLLOW_INTERVAL) => {}
                _ = stop.changed() => {}
            }
            continue;
        }
        quiet_after_stop = 0;
        pending.extend_from_slice(&buffer[..n]);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
            let Some((stream, text)) = log_line(&line) else {
                continue;
            };
            let sink = if stream == "stderr" {
                &mut stderr
            } else {
                &mut stdout
            };
            if let Some(sink) = sink {
                if sink.write_all(text.as_bytes()).await.is_err() {
                    return;
                }
                let _ = sink.flush().await;
            }
        }
    }
    for sink in [stdout, stderr].into_iter().flatten() {
        let mut sink = sink;
        let _ = sink.shutdown().await;
    }
}

/// Attaches to a running container's process: the caller's stdin into the container's stdin
/// fifo, its output followed in the container's CRI log (which the shim writes), terminal sizes
/// to its console. Ends when the container exits, when the caller's stdin ends (which closes
/// the container's stdin: the fifo's last writer goes), or when the caller goes away.
pub async fn attach(
    manager: &Arc<Manager>,
    container_id: &str,
    streams: ProcessStreams,
    gone: Gone<'_>,
) -> Result<(), CriError> {
    let (container, shim) = super::running(manager, container_id)?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // The log is opened at its end before any input is passed on: what the input makes the
    // process print comes after.
    let log_path = container
        .log_path
        .clone()
        .unwrap_or_else(|| super::containers::own_log(&container.bundle));
    let log = match Some(&log_path) {
        Some(path) if streams.stdout.is_some() || streams.stderr.is_some() => {
            use tokio::io::AsyncSeekExt;
            match tokio::fs::File::open(path).await {
                Ok(mut file) => file
                    .seek(std::io::SeekFrom::End(0))
                    .await
                    .ok()
                    .map(|_| file),
                Err(err) => {
                    tracing::info!(container = %container.id, error = %err, "attach: no log to follow");
                    None
                }
            }
        }
        _ => None,
    };
    let follower = log.map(|file| {
        tokio::spawn(follow_log(
            file,
            streams.stdout,
            streams.stderr,
            stop_rx.clone(),
        ))
    });
    let resize_task = streams.resize.map(|mut sizes| {
        let (shim, id) = (shim.clone(), container.id.clone());
        tokio::spawn(async move {
            while let Some((width, height)) = sizes.recv().await {
                let _ = shim
                    .resize_pty(&id, "", u32::from(width), u32::from(height))
                    .await;
            }
        })
    });
    let stdin_done = async {
        let Some(mut source) = streams.stdin else {
            return std::future::pending::<()>().await;
        };
        let path = super::containers::init_stdin(&container.bundle);
        match pipe::OpenOptions::new().open_sender(&path) {
            Ok(mut sink) => {
                let _ = tokio::io::copy(&mut source, &mut sink).await;
                drop(sink);
                // `stdin_once`: the container's stdin ends with its first attach's, as with
                // containerd; otherwise it stays open for the next one.
                if convert::container_config(&container).stdin_once {
                    if let Err(err) = shim.close_stdin(&container.id, "").await {
                        tracing::debug!(container = %container.id, error = %err, "close stdin");
                    }
                }
            }
            Err(err) => {
                tracing::info!(container = %container.id, error = %err, "attach: no stdin to write to");
                return std::future::pending::<()>().await;
            }
        }
        // What the input made the process print is on its way to the log.
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // The attach ends with the container, with the caller's input, or with the caller.
    tokio::select! {
        _ = shim.wait(&container.id, "") => {}
        () = stdin_done => {}
        () = gone => {}
    }
    let _ = stop_tx.send(true);
    if let Some(follower) = follower {
        let _ = tokio::time::timeout(DRAIN, follower).await;
    }
    if let Some(task) = resize_task {
        task.abort();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_log_lines_give_the_stream_and_the_text() {
        assert_eq!(
            log_line("2026-12-02T10:00:00.000000000Z stdout F hello world"),
            Some(("stdout", "hello world\n".to_string()))
        );
        assert_eq!(
            log_line("2026-12-02T10:00:00.000000000Z stderr P part"),
            Some(("stderr", "part".to_string()))
        );
        assert_eq!(
            log_line("2026-12-02T10:00:00.000000000Z stdout F "),
            Some(("stdout", "\n".to_string()))
        );
        assert_eq!(log_line("garbage"), None);
    }
}
