//! ExecSync: a process run in a container through the pod's shim, its output collected from
//! fifos, bounded in size and time.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use containerd_shim_protos::{api, protobuf::well_known_types::any::Any};
use k8s_cri::v1;
use tokio::io::AsyncReadExt;

use crate::{
    lifecycle::{new_id, Manager},
    shim_client::ShimClient,
    CriError,
};
/// ExecSync output beyond this is dropped (containerd's limit).
const MAX_EXEC_OUTPUT: usize = 16 << 20;

/// After an exec'd process exits, how long its output may still drain (a child it left behind
/// may hold the pipe open).
const EXEC_DRAIN: Duration = Duration::from_secs(1);

async fn read_all(path: PathBuf, sink: Arc<Mutex<Vec<u8>>>) -> std::io::Result<()> {
    let mut fifo = tokio::net::unix::pipe::OpenOptions::new().open_receiver(&path)?;
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = fifo.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        let mut out = sink.lock().unwrap_or_else(|p| p.into_inner());
        let room = MAX_EXEC_OUTPUT.saturating_sub(out.len());
        out.extend_from_slice(&buf[..n.min(room)]);
    }
}

/// A new exec's id and its directory under the runtime state (its fifos); the caller removes
/// the directory when the exec is done.
pub(crate) fn exec_dir(manager: &Manager) -> Result<(String, PathBuf), CriError> {
    let exec_id = new_id()?[..16].to_string();
    let dir = manager.config.state.join("exec").join(&exec_id);
    std::fs::create_dir_all(&dir).map_err(CriError::io(format!("create {}", dir.display())))?;
    Ok((exec_id, dir))
}

/// Makes the fifo `dir/name` (owner only).
pub(crate) fn fifo(dir: &Path, name: &str) -> Result<PathBuf, CriError> {
    let path = dir.join(name);
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).map_err(
        |errno| CriError::Io {
            context: format!("mkfifo {}", path.display()),
            source: errno.into(),
        },
    )?;
    Ok(path)
}

/// The process of an exec: the container's own (user, env, capabilities, cwd...) with `cmd`.
pub(crate) async fn exec_process(
    manager: &Manager,
    container: &crate::store::ContainerRecord,
    cmd: &[String],
    terminal: bool,
) -> Result<serde_json::Value, CriError> {
    let spec_path = container.bundle.join("config.json");
    let spec: serde_json::Value = serde_json::from_slice(
        &tokio::fs::read(&spec_path)
            .await
            .map_err(CriError::io(format!("read {}", spec_path.display())))?,
    )
    .map_err(|err| CriError::Io {
        context: format!("parse {}", spec_path.display()),
        source: err.into(),
    })?;
    let mut process = spec["process"].clone();
    process["args"] = serde_json::json!(cmd);
    // A real-time container's scheduling class is its own process's; execs (probes, shells)
    // get it only when its pod asked.
    if spec["annotations"][ingot_oci::steps::EXEC_SCHEDULER_ANNOTATION] != "true" {
        if let Some(process) = process.as_object_mut() {
            process.remove("scheduler");
        }
    }
    // The runtime handler's exec_cpu_affinity = "first": on the container's first CPU only.
    if let Some(cpu) = manager.exec_cpu(container) {
        process["execCPUAffinity"] = serde_json::json!({"final": cpu.to_string()});
    }
    process["terminal"] = serde_json::json!(terminal);
    if terminal {
        let env = process["env"].as_array_mut();
        if let Some(env) = env {
            if !env
                .iter()
                .any(|e| e.as_str().is_some_and(|e| e.starts_with("TERM=")))
            {
                env.push(serde_json::json!("TERM=xterm"));
            }
        }
    }
    Ok(process)
}

pub async fn exec_sync(
    manager: &Arc<Manager>,
    request: v1::ExecSyncRequest,
) -> Result<v1::ExecSyncResponse, CriError> {
    if request.cmd.is_empty() {
        return Err(CriError::invalid("cmd", "is required"));
    }
    if request.timeout < 0 {
        return Err(CriError::invalid(
            "timeout",
            format!("{} is negative", request.timeout),
        ));
    }
    let (container, shim) = super::running(manager, &request.container_id)?;
    let process = exec_process(manager, &container, &request.cmd, false).await?;

    let (exec_id, dir) = exec_dir(manager)?;
    let result = run_exec(
        &shim,
        &container.id,
        &exec_id,
        &dir,
        &process,
        request.timeout,
    )
    .await;
    let _ = shim.delete(&container.id, &exec_id).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run_exec(
    shim: &ShimClient,
    id: &str,
    exec_id: &str,
    dir: &Path,
    process: &serde_json::Value,
    timeout: i64,
) -> Result<v1::ExecSyncResponse, CriError> {
    let (stdout_path, stderr_path) = (fifo(dir, "stdout")?, fifo(dir, "stderr")?);
    // Our own writing ends keep each pipe (and what the process wrote) alive until its exit is
    // known, and keep the readers from seeing EOF before the shim has opened the fifos.
    let keep = |path: &Path| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(CriError::io(format!("open {}", path.display())))
    };
    let keepers = (keep(&stdout_path)?, keep(&stderr_path)?);
    let stdout = Arc::new(Mutex::new(Vec::new()));
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let mut readers = (
        tokio::spawn(read_all(stdout_path.clone(), Arc::clone(&stdout))),
        tokio::spawn(read_all(stderr_path.clone(), Arc::clone(&stderr))),
    );
    let outcome = exec_and_wait(
        shim,
        id,
        exec_id,
        &stdout_path,
        &stderr_path,
        process,
        timeout,
    )
    .await;
    drop(keepers);
    if outcome.is_ok() {
        // Output written just before the exit is still in the pipes.
        let _ = tokio::time::timeout(EXEC_DRAIN, async {
            let _ = tokio::join!(&mut readers.0, &mut readers.1);
        })
        .await;
    }
    readers.0.abort();
    readers.1.abort();
    let exit_status = outcome?;
    let take = |sink: &Arc<Mutex<Vec<u8>>>| {
        std::mem::take(&mut *sink.lock().unwrap_or_else(|p| p.into_inner()))
    };
    Ok(v1::ExecSyncResponse {
        stdout: take(&stdout),
        stderr: take(&stderr),
        exit_code: i32::try_from(exit_status).unwrap_or(255),
    })
}

/// Starts the exec'd process and waits for its exit status (killing it after `timeout`
/// seconds, when positive).
async fn exec_and_wait(
    shim: &ShimClient,
    id: &str,
    exec_id: &str,
    stdout: &Path,
    stderr: &Path,
    process: &serde_json::Value,
    timeout: i64,
) -> Result<u32, CriError> {
    let value = serde_json::to_vec(process).map_err(|err| CriError::Io {
        context: "encode exec process".into(),
        source: err.into(),
    })?;
    let request = api::ExecProcessRequest {
        id: id.to_string(),
        exec_id: exec_id.to_string(),
        terminal: false,
        stdout: stdout.display().to_string(),
        stderr: stderr.display().to_string(),
        spec: Some(Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
            value,
            ..Default::default()
        })
        .into(),
        ..Default::default()
    };
    let timer = std::time::Instant::now();
    shim.exec(&request).await?;
    let exec_time = timer.elapsed();
    shim.start(id, exec_id).await?;
    tracing::debug!(container = %id, exec = ?exec_time, started = ?timer.elapsed(), "exec timings");
    let wait = shim.wait(id, exec_id);
    let exit = if timeout > 0 {
        let limit = Duration::from_secs(u64::try_from(timeout).unwrap_or(0));
        match tokio::time::timeout(limit, wait).await {
            Ok(exit) => exit?,
            Err(_) => {
                let _ = shim.kill(id, exec_id, libc::SIGKILL as u32, false).await;
                let _ = shim.wait(id, exec_id).await;
                return Err(CriError::DeadlineExceeded {
                    what: format!("ExecSync in container {id}"),
                    reason: format!("command did not finish within {timeout}s"),
                });
            }
        }
    } else {
        wait.await?
    };
    Ok(exit.exit_status)
}
