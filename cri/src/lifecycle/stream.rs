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

use super::{new_id, Manager};
use crate::CriError;

/// How long output written just before the exit may take to drain.
const DRAIN: Duration = Duration::from_secs(1);

pub type Reader = Box<dyn AsyncRead + Send + Unpin>;
pub type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// The caller's ends of an exec.
pub struct ExecStreams {
    pub stdin: Option<Reader>,
    pub stdout: Option<Writer>,
    /// Unused with a terminal (its output is all on stdout).
    pub stderr: Option<Writer>,
    /// Terminal sizes (width, height), in order.
    pub resize: Option<mpsc::Receiver<(u16, u16)>>,
}

fn fifo(dir: &Path, name: &str) -> Result<std::path::PathBuf, CriError> {
    let path = dir.join(name);
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).map_err(
        |errno| CriError::Io {
            context: format!("mkfifo {}", path.display()),
            source: errno.into(),
        },
    )?;
    Ok(path)
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
    streams: ExecStreams,
) -> Result<u32, CriError> {
    if cmd.is_empty() {
        return Err(CriError::invalid("cmd", "is required"));
    }
    let (container, shim) = super::running(manager, container_id)?;
    let process = super::exec::exec_process(&container, cmd, tty).await?;
    let exec_id = new_id()?[..16].to_string();
    let dir = manager.config.state.join("exec").join(&exec_id);
    std::fs::create_dir_all(&dir).map_err(CriError::io(format!("create {}", dir.display())))?;
    let result = run(&shim, &container.id, &exec_id, &dir, &process, tty, streams).await;
    let _ = shim.delete(&container.id, &exec_id).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run(
    shim: &crate::shim_client::ShimClient,
    id: &str,
    exec_id: &str,
    dir: &Path,
    process: &serde_json::Value,
    tty: bool,
    streams: ExecStreams,
) -> Result<u32, CriError> {
    let stdin_path = streams
        .stdin
        .is_some()
        .then(|| fifo(dir, "stdin"))
        .transpose()?;
    let stdout_path = fifo(dir, "stdout")?;
    let stderr_path = (!tty).then(|| fifo(dir, "stderr")).transpose()?;
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
                let _ = shim.close_stdin(&id, &exec_id).await;
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
    let exit = shim.wait(id, exec_id).await;
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
    let stream = tokio::task::spawn_blocking(move || -> Result<std::net::TcpStream, CriError> {
        // A thread of its own enters the namespace and ends there: the socket keeps the
        // namespace it was made in, and no other work runs in a thread that left the host's.
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    if let Some(netns) = &netns {
                        let file = std::fs::File::open(netns)
                            .map_err(CriError::io(format!("open {}", netns.display())))?;
                        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(
                            |errno| CriError::Io {
                                context: format!("enter {}", netns.display()),
                                source: errno.into(),
                            },
                        )?;
                    }
                    std::net::TcpStream::connect_timeout(
                        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                        Duration::from_secs(5),
                    )
                    .map_err(CriError::io(format!("connect to port {port} in the pod")))
                })
                .join()
                .map_err(|_| CriError::Io {
                    context: "port-forward connect thread".into(),
                    source: std::io::Error::other("panicked"),
                })?
        })
    })
    .await
    .map_err(CriError::join("port-forward connect"))??;
    stream
        .set_nonblocking(true)
        .map_err(CriError::io("port-forward socket"))?;
    tokio::net::TcpStream::from_std(stream).map_err(CriError::io("port-forward socket"))
}
