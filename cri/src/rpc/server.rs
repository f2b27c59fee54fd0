//! Serving the CRI on the configured unix socket (mode 0660, directory created).

use std::{future::Future, os::unix::fs::PermissionsExt, path::Path, sync::Arc, time::Duration};

use k8s_cri::v1::{
    image_service_server::ImageServiceServer, runtime_service_server::RuntimeServiceServer,
};
use tokio_stream::wrappers::UnixListenerStream;

use crate::{
    config::Config,
    lifecycle::Manager,
    rpc::{images::Images, Runtime},
    CriError,
};

/// Binds the socket, refusing to take over one another ingotd still serves.
fn bind(socket: &Path) -> Result<tokio::net::UnixListener, CriError> {
    if let Some(parent) = socket.parent() {
        std::fs::create_dir_all(parent)
            .map_err(CriError::io(format!("create {}", parent.display())))?;
    }
    if socket.exists() {
        refuse_live(socket)?;
        std::fs::remove_file(socket).map_err(CriError::io(format!(
            "remove stale socket {}",
            socket.display()
        )))?;
    }
    let listener = tokio::net::UnixListener::bind(socket)
        .map_err(CriError::io(format!("bind {}", socket.display())))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o660))
        .map_err(CriError::io(format!("chmod 0660 {}", socket.display())))?;
    Ok(listener)
}

/// Refuses a socket another ingotd still serves (its state is not ours to reconcile).
fn refuse_live(socket: &Path) -> Result<(), CriError> {
    if std::os::unix::net::UnixStream::connect(socket).is_ok() {
        return Err(CriError::Config(format!(
            "listen: {} is served by another process",
            socket.display()
        )));
    }
    Ok(())
}

/// How long in-flight calls get after a shutdown signal. Clients that keep their connection open
/// (the kubelet always does) must not hold the daemon's exit.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves RuntimeService and ImageService until `shutdown` resolves, then removes the socket.
pub async fn serve(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), CriError> {
    let socket = config.socket_path()?;
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let images = Images::open(&config, Arc::clone(&metrics))?;
    let manager = Manager::open(config.clone(), images.store())?;
    // Reconciled before the socket appears: a client never sees half-recovered state.
    refuse_live(&socket)?;
    manager.pin_housekeeping().await;
    manager.recover().await;
    let streaming = super::streaming::StreamServer::start(
        &config.stream_address,
        &config.stream_tls,
        Arc::clone(&manager),
    )
    .await?;
    if !config.metrics_address.is_empty() {
        super::metrics::start(
            &config.metrics_address,
            Arc::clone(&metrics),
            Arc::clone(&manager),
        )
        .await?;
    }
    let listener = bind(&socket)?;
    tracing::info!(socket = %socket.display(), "serving CRI v1");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        .layer(super::metrics::Timed::layer(metrics))
        .add_service(RuntimeServiceServer::new(Runtime::new(
            config, manager, streaming,
        )))
        .add_service(ImageServiceServer::new(images))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
            let _ = stopped.await;
        });
    tokio::pin!(server);
    let result = tokio::select! {
        result = &mut server => result,
        () = shutdown => {
            let _ = stop.send(());
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::info!("connections still open after the grace period; exiting");
                    Ok(())
                }
            }
        }
    };
    let _ = std::fs::remove_file(&socket);
    result.map_err(|err| CriError::Io {
        context: format!("serve {}", socket.display()),
        source: std::io::Error::other(err),
    })
}
