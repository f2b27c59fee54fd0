//! The Prometheus endpoint (`GET /metrics` on `metrics_address`, loopback by default) and the
//! layer under the CRI server that times every call.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use http_body_util::Full;
use hyper::{body::Bytes, header, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use crate::{
    lifecycle::Manager,
    metrics::{rss_and_threads, Metrics, Snapshot},
    store::{ContainerState, PodState},
    CriError,
};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds `address` and serves `/metrics` until the runtime ends; returns the bound address.
pub async fn start(
    address: &str,
    metrics: Arc<Metrics>,
    manager: Arc<Manager>,
) -> Result<std::net::SocketAddr, CriError> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(CriError::io(format!(
            "bind the metrics endpoint on {address}"
        )))?;
    let local = listener
        .local_addr()
        .map_err(CriError::io("the metrics endpoint's address"))?;
    tracing::info!(address = %local, "metrics endpoint listening");
    tokio::spawn(async move {
        loop {
            let Ok((connection, _)) = listener.accept().await else {
                continue;
            };
            let metrics = Arc::clone(&metrics);
            let manager = Arc::clone(&manager);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let metrics = Arc::clone(&metrics);
                    let manager = Arc::clone(&manager);
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            respond(request, &metrics, &manager).await,
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(connection), service)
                    .await;
            });
        }
    });
    Ok(local)
}

async fn respond(
    request: Request<hyper::body::Incoming>,
    metrics: &Metrics,
    manager: &Manager,
) -> Response<Full<Bytes>> {
    let (status, kind, body) = if request.uri().path() != "/metrics" {
        (
            StatusCode::NOT_FOUND,
            "text/plain",
            format!("no such endpoint {}; try /metrics\n", request.uri().path()),
        )
    } else if request.method() != hyper::Method::GET && request.method() != hyper::Method::HEAD {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".to_string(),
        )
    } else {
        (
            StatusCode::OK,
            OPENMETRICS,
            metrics.render(&snapshot(manager).await),
        )
    };
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, kind)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

/// Counts from the store, memory and threads from `/proc`.
async fn snapshot(manager: &Manager) -> Snapshot {
    let pods = manager.pods();
    let containers = manager.containers();
    let count_pods = |state: PodState| {
        i64::try_from(pods.iter().filter(|p| p.state == state).count()).unwrap_or(i64::MAX)
    };
    let count_containers = |state: ContainerState| {
        i64::try_from(containers.iter().filter(|c| c.state == state).count()).unwrap_or(i64::MAX)
    };
    let proc_root = manager.proc_root();
    let status_of = |pid: &str| std::fs::read_to_string(proc_root.join(pid).join("status"));
    let (resident_memory_bytes, threads) = status_of("self")
        .map(|s| rss_and_threads(&s))
        .unwrap_or((0, 0));
    let mut shims = 0;
    let mut shim_memory_bytes = 0;
    for pid in manager.shim_pids().await {
        // A pid remembered for a shim that has since gone may name another process now.
        let Ok(status) = status_of(&pid.to_string()) else {
            continue;
        };
        if !status.starts_with("Name:\tcontainerd-shim") {
            continue;
        }
        shims += 1;
        shim_memory_bytes += rss_and_threads(&status).0;
    }
    Snapshot {
        pods: vec![
            ("ready", count_pods(PodState::Ready)),
            ("notready", count_pods(PodState::NotReady)),
        ],
        containers: vec![
            ("created", count_containers(ContainerState::Created)),
            ("running", count_containers(ContainerState::Running)),
            ("exited", count_containers(ContainerState::Exited)),
            ("unknown", count_containers(ContainerState::Unknown)),
        ],
        shims,
        shim_memory_bytes,
        resident_memory_bytes,
        threads,
    }
}

/// A tower layer that times each CRI call until its response head, labelled with the gRPC
/// status the head carries (a call that fails at once answers trailers-only, with the status
/// in the head; a success carries it in the trailers and counts as OK).
#[derive(Clone)]
pub struct Timed<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S> Timed<S> {
    pub fn layer(metrics: Arc<Metrics>) -> impl tower::Layer<S, Service = Timed<S>> + Clone {
        tower::layer::layer_fn(move |inner| Timed {
            inner,
            metrics: Arc::clone(&metrics),
        })
    }
}

impl<S, B, R> tower::Service<http::Request<B>> for Timed<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    R: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path().to_string();
        let started = Instant::now();
        let metrics = Arc::clone(&self.metrics);
        let call = self.inner.call(request);
        Box::pin(async move {
            let response = call.await;
            let code = match &response {
                Ok(head) => head
                    .headers()
                    .get("grpc-status")
                    .map(|v| tonic::Code::from_bytes(v.as_bytes()))
                    .unwrap_or(tonic::Code::Ok),
                Err(_) => tonic::Code::Unknown,
            };
            metrics.observe_rpc(&path, code, started.elapsed());
            response
        })
    }
}
