//! The streaming server behind Exec, Attach and PortForward (`kubectl exec`, `crictl exec -it`,
//! `kubectl port-forward`): the RPCs hand out one-time URLs with a token that expires, and this
//! server, on its own address (`stream_address`, 127.0.0.1 by default as containerd's; TLS when
//! `stream_tls` asks), serves them the way the kubelet's own streaming server
//! (`k8s.io/kubelet/pkg/cri/streaming`) does: SPDY/3.1 with the Kubernetes subprotocols
//! (`v4.channel.k8s.io` down to `channel.k8s.io`, `portforward.k8s.io`) and WebSocket
//! (`v5`/`v4.channel.k8s.io`, port-forward channels, SPDY tunnelled in WebSocket).

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use http_body_util::Full;
use hyper::{body::Bytes, header, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use ingot_spdy::{Incoming, Session, Stream};
use k8s_cri::v1;
use tokio::{io::AsyncWriteExt, sync::mpsc};

use crate::{
    lifecycle::{new_id, stream, Manager},
    store::{ContainerState, PodState},
    CriError,
};

/// How long a URL may wait for its client (the kubelet's `StreamIdleTimeout` default is 4 h
/// for a stream, its tokens last 1 min).
const TOKEN_TTL: Duration = Duration::from_secs(60);
/// How long the client may take to open the streams it asked for (the kubelet's
/// `StreamCreationTimeout`).
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);
/// Exec subprotocols, most preferred first.
const EXEC_PROTOCOLS: &[&str] = &[
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];
const PORT_FORWARD_PROTOCOLS: &[&str] = &["portforward.k8s.io"];
/// Exec and attach subprotocols over WebSocket, most preferred first.
const WEBSOCKET_PROTOCOLS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io"];
/// SPDY carried in WebSocket binary messages (client-go's tunnelling dialer).
const SPDY_TUNNEL: &str = "SPDY/3.1+portforward.k8s.io";
/// Port-forward subprotocols over WebSocket.
const WEBSOCKET_PORT_FORWARD_PROTOCOLS: &[&str] =
    &[SPDY_TUNNEL, "v4.channel.k8s.io", "v4.base64.channel.k8s.io"];
const PROTOCOL_HEADER: &str = "x-stream-protocol-version";

/// What a token was handed out for.
#[derive(Debug, Clone)]
enum Pending {
    Exec(v1::ExecRequest),
    Attach(v1::AttachRequest),
    PortForward(v1::PortForwardRequest),
}

impl Pending {
    /// The streams an exec or an attach asks for (None for a port-forward).
    fn wanted(&self) -> Option<Wanted> {
        let (stdin, stdout, stderr, tty) = match self {
            Pending::Exec(r) => (r.stdin, r.stdout, r.stderr, r.tty),
            Pending::Attach(r) => (r.stdin, r.stdout, r.stderr, r.tty),
            Pending::PortForward(_) => return None,
        };
        Some(Wanted {
            stdin,
            stdout,
            stderr,
            tty,
        })
    }

    fn container_id(&self) -> &str {
        match self {
            Pending::Exec(r) => &r.container_id,
            Pending::Attach(r) => &r.container_id,
            Pending::PortForward(r) => &r.pod_sandbox_id,
        }
    }
}

/// The URLs handed out and not yet used: single-use, each for [`TOKEN_TTL`].
#[derive(Default)]
struct Tokens {
    issued: HashMap<String, (Pending, Instant)>,
}

impl Tokens {
    /// Keeps `pending` under `token`, dropping the expired ones.
    fn issue(&mut self, token: String, pending: Pending, now: Instant) {
        self.issued
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < TOKEN_TTL);
        self.issued.insert(token, (pending, now));
    }

    /// The token's request, once, while it has not expired.
    fn take(&mut self, token: &str, now: Instant) -> Option<Pending> {
        let (pending, at) = self.issued.remove(token)?;
        (now.saturating_duration_since(at) < TOKEN_TTL).then_some(pending)
    }
}

pub struct StreamServer {
    base: String,
    tokens: Mutex<Tokens>,
    manager: Arc<Manager>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl StreamServer {
    /// Binds `address` and serves it (over TLS when `tls` asks) until the runtime ends.
    pub async fn start(
        address: &str,
        tls: &crate::config::StreamTls,
        manager: Arc<Manager>,
    ) -> Result<Arc<Self>, CriError> {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(CriError::io(format!(
                "bind the streaming server on {address}"
            )))?;
        let local = listener
            .local_addr()
            .map_err(CriError::io("the streaming server's address"))?;
        let acceptor = super::tls::acceptor(tls, local)?;
        let scheme = if acceptor.is_some() { "https" } else { "http" };
        let server = Arc::new(StreamServer {
            base: format!("{scheme}://{local}"),
            tokens: Mutex::default(),
            manager,
        });
        tracing::info!(address = %local, tls = acceptor.is_some(), "streaming server listening");
        let accepting = Arc::clone(&server);
        tokio::spawn(async move {
            loop {
                let Ok((connection, peer)) = listener.accept().await else {
                    continue;
                };
                let server = Arc::clone(&accepting);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match acceptor {
                        None => server.serve_connection(connection, peer).await,
                        Some(acceptor) => match acceptor.accept(connection).await {
                            Ok(tls) => server.serve_connection(tls, peer).await,
                            Err(err) => {
                                tracing::debug!(%peer, error = %err, "TLS handshake failed")
                            }
                        },
                    }
                });
            }
        });
        Ok(server)
    }

    fn token_for(&self, pending: Pending) -> Result<String, CriError> {
        let token = new_id()?[..32].to_string();
        lock(&self.tokens).issue(token.clone(), pending, Instant::now());
        Ok(token)
    }

    /// The token's request, or the 404 for a used, expired or unknown one.
    fn take_or_refuse(&self, token: &str) -> Result<Pending, Box<Response<Full<Bytes>>>> {
        self.take(token).ok_or_else(|| {
            Box::new(plain(
                StatusCode::NOT_FOUND,
                format!("unknown or expired token {token:?}"),
            ))
        })
    }

    fn take(&self, token: &str) -> Option<Pending> {
        lock(&self.tokens).take(token, Instant::now())
    }

    /// Exec: a URL for a running container, as the CRI and containerd check the request.
    pub fn exec_url(&self, request: v1::ExecRequest) -> Result<String, CriError> {
        if request.cmd.is_empty() {
            return Err(CriError::invalid("cmd", "is required"));
        }
        if !(request.stdin || request.stdout || request.stderr) {
            return Err(CriError::invalid(
                "stdin",
                "one of stdin, stdout or stderr must be set",
            ));
        }
        if request.tty && request.stderr {
            return Err(CriError::invalid(
                "stderr",
                "tty and stderr cannot both be true (a terminal has one output)",
            ));
        }
        let container = self.manager.container(&request.container_id)?;
        if container.state != ContainerState::Running {
            return Err(CriError::FailedPrecondition {
                what: format!("container {}", container.id),
                reason: format!("is {:?}, not running", container.state),
            });
        }
        let token = self.token_for(Pending::Exec(v1::ExecRequest {
            container_id: container.id,
            ..request
        }))?;
        Ok(format!("{}/exec/{token}", self.base))
    }

    /// Attach: a URL for a running container; stdin only where the container keeps it open.
    pub fn attach_url(&self, request: v1::AttachRequest) -> Result<String, CriError> {
        if !(request.stdin || request.stdout || request.stderr) {
            return Err(CriError::invalid(
                "stdin",
                "one of stdin, stdout or stderr must be set",
            ));
        }
        let container = self.manager.container(&request.container_id)?;
        if container.state != ContainerState::Running {
            return Err(CriError::FailedPrecondition {
                what: format!("container {}", container.id),
                reason: format!("is {:?}, not running", container.state),
            });
        }
        let config = crate::convert::container_config(&container);
        if request.stdin && !config.stdin {
            return Err(CriError::FailedPrecondition {
                what: format!("container {}", container.id),
                reason: "was created without stdin: there is none to attach to".into(),
            });
        }
        if request.tty != config.tty {
            return Err(CriError::invalid(
                "tty",
                format!("the container was created with tty {}", config.tty),
            ));
        }
        let token = self.token_for(Pending::Attach(v1::AttachRequest {
            container_id: container.id,
            ..request
        }))?;
        Ok(format!("{}/attach/{token}", self.base))
    }

    /// PortForward: a URL for a ready pod.
    pub fn port_forward_url(&self, request: v1::PortForwardRequest) -> Result<String, CriError> {
        let pod = self.manager.pod(&request.pod_sandbox_id)?;
        if pod.state != PodState::Ready {
            return Err(CriError::FailedPrecondition {
                what: format!("pod sandbox {}", pod.id),
                reason: "is not ready".into(),
            });
        }
        for port in &request.port {
            if !(1..=65535).contains(port) {
                return Err(CriError::invalid(
                    "port",
                    format!("{port} is not a TCP port"),
                ));
            }
        }
        let token = self.token_for(Pending::PortForward(v1::PortForwardRequest {
            pod_sandbox_id: pod.id,
            ..request
        }))?;
        Ok(format!("{}/portforward/{token}", self.base))
    }

    async fn serve_connection<IO>(self: Arc<Self>, connection: IO, peer: SocketAddr)
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let service = hyper::service::service_fn(move |request| {
            let server = Arc::clone(&self);
            async move { Ok::<_, std::convert::Infallible>(server.handle(request)) }
        });
        let served = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(connection), service)
            .with_upgrades()
            .await;
        if let Err(err) = served {
            tracing::debug!(%peer, error = %err, "streaming connection ended");
        }
    }

    fn handle(self: &Arc<Self>, request: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let path = request.uri().path().to_string();
        let mut parts = path.trim_start_matches('/').splitn(2, '/');
        let (kind, token) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let supported = match kind {
            "exec" | "attach" => EXEC_PROTOCOLS,
            "portforward" => PORT_FORWARD_PROTOCOLS,
            _ => return plain(StatusCode::NOT_FOUND, format!("no such endpoint {path}")),
        };
        let upgrade = request
            .headers()
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if upgrade.eq_ignore_ascii_case("websocket") {
            return self.handle_websocket(kind, token, request);
        }
        if !upgrade.eq_ignore_ascii_case("SPDY/3.1") {
            return plain(
                StatusCode::BAD_REQUEST,
                format!(
                    "unable to upgrade: {upgrade:?} is not a supported protocol (SPDY/3.1 or websocket)"
                ),
            );
        }
        let offered = header_list(request.headers(), PROTOCOL_HEADER);
        let protocol = match supported.iter().find(|p| offered.iter().any(|o| o == *p)) {
            Some(protocol) => protocol.to_string(),
            // A client that names none speaks the first version (the kubelet's handshake).
            None if offered.is_empty() => String::new(),
            None => return unnegotiable(&offered, supported),
        };
        let pending = match self.take_or_refuse(token) {
            Ok(pending) => pending,
            Err(refusal) => return *refusal,
        };
        let server = Arc::clone(self);
        let chosen = protocol.clone();
        tokio::spawn(async move {
            match hyper::upgrade::on(request).await {
                Ok(upgraded) => {
                    let (session, incoming) = match Session::server(TokioIo::new(upgraded)) {
                        Ok(started) => started,
                        Err(err) => {
                            tracing::warn!(error = %err, "SPDY session not started");
                            return;
                        }
                    };
                    match pending {
                        Pending::PortForward(forward) => {
                            server.port_forward(forward, session, incoming).await
                        }
                        process => server.process(&chosen, process, session, incoming).await,
                    }
                }
                Err(err) => tracing::warn!(error = %err, "streaming upgrade failed"),
            }
        });
        let mut response = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "Upgrade")
            .header(header::UPGRADE, "SPDY/3.1");
        if !protocol.is_empty() {
            response = response.header(PROTOCOL_HEADER, protocol);
        }
        response
            .body(Full::new(Bytes::new()))
            .unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, "response".into()))
    }

    /// WebSocket: exec and attach (`v5.channel.k8s.io`, `v4.channel.k8s.io`: one binary
    /// message per write, its first byte the channel: 0 stdin, 1 stdout, 2 stderr, 3 error,
    /// 4 resize; v5's 255 closes a channel, so stdin can end); port-forward with channels
    /// (`v4.channel.k8s.io`, `v4.base64.channel.k8s.io`, or none named) or as SPDY tunnelled in
    /// binary messages (`SPDY/3.1+portforward.k8s.io`, what kubectl 1.31 and later dial).
    fn handle_websocket(
        self: &Arc<Self>,
        kind: &str,
        token: &str,
        request: Request<hyper::body::Incoming>,
    ) -> Response<Full<Bytes>> {
        let headers = request.headers();
        let Some(key) = headers
            .get(header::SEC_WEBSOCKET_KEY)
            .and_then(|v| v.to_str().ok())
        else {
            return plain(StatusCode::BAD_REQUEST, "no Sec-WebSocket-Key".into());
        };
        let offered = header_list(headers, header::SEC_WEBSOCKET_PROTOCOL.as_str());
        let supported = if kind == "portforward" {
            WEBSOCKET_PORT_FORWARD_PROTOCOLS
        } else {
            WEBSOCKET_PROTOCOLS
        };
        // The client's order decides, as the kubelet's server does.
        let protocol = match offered.iter().find(|o| supported.contains(&o.as_str())) {
            Some(protocol) => protocol.clone(),
            // A port-forward client that names none speaks binary channels.
            None if offered.is_empty() && kind == "portforward" => String::new(),
            None => return unnegotiable(&offered, supported),
        };
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        let pending = match self.take_or_refuse(token) {
            Ok(pending) => pending,
            Err(refusal) => return *refusal,
        };
        let server = Arc::clone(self);
        let chosen = protocol.clone();
        tokio::spawn(async move {
            let upgraded = match hyper::upgrade::on(request).await {
                Ok(upgraded) => upgraded,
                Err(err) => {
                    tracing::warn!(error = %err, "websocket upgrade failed");
                    return;
                }
            };
            let socket = tokio_tungstenite::WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                tokio_tungstenite::tungstenite::protocol::Role::Server,
                None,
            )
            .await;
            match pending {
                Pending::PortForward(forward) if chosen == SPDY_TUNNEL => {
                    let (session, incoming) = match Session::server(websocket_bytes(socket)) {
                        Ok(started) => started,
                        Err(err) => {
                            tracing::warn!(error = %err, "tunnelled SPDY session not started");
                            return;
                        }
                    };
                    server.port_forward(forward, session, incoming).await;
                }
                Pending::PortForward(forward) => {
                    let base64 = chosen == "v4.base64.channel.k8s.io";
                    server.websocket_port_forward(forward, base64, socket).await;
                }
                process => server.websocket_session(&chosen, process, socket).await,
            }
        });
        let mut response = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "Upgrade")
            .header(header::UPGRADE, "websocket")
            .header(header::SEC_WEBSOCKET_ACCEPT, accept);
        if !protocol.is_empty() {
            response = response.header(header::SEC_WEBSOCKET_PROTOCOL, protocol);
        }
        response
            .body(Full::new(Bytes::new()))
            .unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, "response".into()))
    }

    /// Port-forward over WebSocket channels: for the request's i-th port, channel 2i carries
    /// the data both ways and 2i+1 the errors; each channel first carries the port, two bytes
    /// little-endian. One connection per port for the socket's life (the kubelet's
    /// `portforward/websocket.go`); once every connection has ended the socket closes.
    async fn websocket_port_forward<IO>(
        &self,
        request: v1::PortForwardRequest,
        base64: bool,
        socket: tokio_tungstenite::WebSocketStream<IO>,
    ) where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        use futures_util::StreamExt;
        let (sink, mut source) = socket.split();
        let (outgoing, writer) = websocket_writer(sink);
        let frame = ChannelFrame { base64 };
        let ports: Vec<u16> = request
            .port
            .iter()
            .filter_map(|p| u16::try_from(*p).ok())
            .collect();
        let mut to_pod = Vec::new();
        let mut connections = tokio::task::JoinSet::new();
        for (index, port) in ports.iter().copied().enumerate() {
            let data = u8::try_from(index * 2).unwrap_or(u8::MAX - 1);
            for channel in [data, data + 1] {
                let _ = outgoing
                    .send(frame.encode(channel, &port.to_le_bytes()))
                    .await;
            }
            let (sender, receiver) = mpsc::channel::<Vec<u8>>(64);
            to_pod.push(sender);
            let manager = Arc::clone(&self.manager);
            let pod = request.pod_sandbox_id.clone();
            let outgoing = outgoing.clone();
            connections.spawn(async move {
                forward_channel(manager, pod, port, data, frame, receiver, outgoing).await
            });
        }
        // What the client sends goes to its port's connection, by data channel.
        let reader = tokio::spawn(async move {
            while let Some(Ok(message)) = source.next().await {
                if matches!(message, tokio_tungstenite::tungstenite::Message::Close(_)) {
                    break;
                }
                let Some((channel, payload)) = frame.decode(message) else {
                    continue;
                };
                if channel % 2 != 0 {
                    continue;
                }
                if let Some(sender) = to_pod.get(usize::from(channel / 2)) {
                    let _ = sender.send(payload).await;
                }
            }
        });
        let mut reader = reader;
        // Every connection ended, or the client went away.
        tokio::select! {
            () = async { while connections.join_next().await.is_some() {} } => {}
            _ = &mut reader => {}
        }
        reader.abort();
        connections.abort_all();
        let _ = outgoing.send(normal_close()).await;
        drop(outgoing);
        let _ = writer.await;
    }

    async fn websocket_session<IO>(
        &self,
        protocol: &str,
        pending: Pending,
        socket: tokio_tungstenite::WebSocketStream<IO>,
    ) where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        let Some(wanted) = pending.wanted() else {
            return;
        };
        let (sink, mut source) = socket.split();
        let (outgoing, writer) = websocket_writer(sink);
        // An output channel: what the process writes, as messages with its channel byte.
        let mut pumps = Vec::new();
        let mut output = |channel: u8| -> stream::Writer {
            let (ours, theirs) = tokio::io::duplex(64 * 1024);
            let outgoing = outgoing.clone();
            let frame = ChannelFrame { base64: false };
            pumps.push(tokio::spawn(async move {
                pump_messages(theirs, &outgoing, |bytes| frame.encode(channel, bytes)).await
            }));
            Box::new(ours)
        };
        let stdout = wanted.stdout.then(|| output(1));
        let stderr = (wanted.stderr && !wanted.tty).then(|| output(2));
        let (stdin_ours, stdin_theirs) = tokio::io::duplex(64 * 1024);
        let (sizes, resize) = mpsc::channel::<(u16, u16)>(8);
        let (gone_tx, gone_rx) = tokio::sync::oneshot::channel::<()>();
        // What the client sends: stdin bytes, terminal sizes, v5's channel close.
        let reader = tokio::spawn(async move {
            let mut stdin = Some(stdin_ours);
            while let Some(Ok(message)) = source.next().await {
                let data = match message {
                    Message::Binary(data) => data.to_vec(),
                    Message::Close(_) => break,
                    _ => continue,
                };
                match data.split_first() {
                    Some((0, rest)) => {
                        if let Some(pipe) = stdin.as_mut() {
                            if pipe.write_all(rest).await.is_err() {
                                stdin = None;
                            }
                        }
                    }
                    Some((4, rest)) => {
                        #[derive(serde::Deserialize)]
                        #[serde(rename_all = "PascalCase")]
                        struct Size {
                            width: u16,
                            height: u16,
                        }
                        if let Ok(size) = serde_json::from_slice::<Size>(rest) {
                            let _ = sizes.send((size.width, size.height)).await;
                        }
                    }
                    Some((255, [0])) => stdin = None,
                    _ => {}
                }
            }
            let _ = gone_tx.send(());
        });
        let gone: stream::Gone<'_> = Box::pin(async move {
            let _ = gone_rx.await;
        });
        let stdin_reader = wanted
            .stdin
            .then(|| Box::new(stdin_theirs) as stream::Reader);
        let resize = wanted.tty.then_some(resize);
        let report = self
            .run_process(
                protocol,
                pending,
                stream::ProcessStreams {
                    stdin: stdin_reader,
                    stdout,
                    stderr,
                    resize,
                },
                gone,
            )
            .await;
        // What the process wrote goes first (its writers are shut: the pumps end), then the
        // status and the close.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
            for pump in pumps {
                let _ = pump.await;
            }
        })
        .await;
        if let Some(report) = report {
            let mut message = vec![3u8];
            message.extend_from_slice(report.as_bytes());
            let _ = outgoing.send(Message::binary(message)).await;
        }
        let _ = outgoing.send(normal_close()).await;
        drop(outgoing);
        let _ = writer.await;
        reader.abort();
    }

    /// An exec or an attach over SPDY: the streams it asked for, the process, its report.
    async fn process(
        &self,
        protocol: &str,
        pending: Pending,
        session: Session,
        incoming: Incoming,
    ) {
        let Some(wanted) = pending.wanted() else {
            return;
        };
        let Some(mut streams) = gather(protocol, wanted, incoming).await else {
            tracing::info!(container = %pending.container_id(), "streaming client did not open its streams");
            session.goaway().await;
            return;
        };
        let Some(mut error) = streams.error.take() else {
            return;
        };
        let (stdin, stdout, stderr, resize, _unused) = streams.into_parts();
        let report = self
            .run_process(
                protocol,
                pending,
                stream::ProcessStreams {
                    stdin,
                    stdout,
                    stderr,
                    resize,
                },
                Box::pin(session.closed()),
            )
            .await;
        if let Some(report) = report {
            let _ = error.write_all(report.as_bytes()).await;
        }
        let _ = error.shutdown().await;
        session.goaway().await;
    }

    /// Runs an exec or an attach with the caller's streams; returns what goes on its error
    /// stream.
    async fn run_process(
        &self,
        protocol: &str,
        pending: Pending,
        streams: stream::ProcessStreams,
        gone: stream::Gone<'_>,
    ) -> Option<String> {
        match pending {
            Pending::Exec(request) => {
                let exit = stream::exec(
                    &self.manager,
                    &request.container_id,
                    &request.cmd,
                    request.tty,
                    streams,
                    gone,
                )
                .await;
                tracing::info!(container = %request.container_id, exit = ?exit.as_ref().ok(), "streaming exec ended");
                exit_report(protocol, &exit)
            }
            Pending::Attach(request) => {
                let attached =
                    stream::attach(&self.manager, &request.container_id, streams, gone).await;
                let exit = attached
                    .map(|()| 0)
                    .map_err(|err| CriError::FailedPrecondition {
                        what: format!("attach to container {}", request.container_id),
                        reason: err.to_string(),
                    });
                exit_report(protocol, &exit)
            }
            Pending::PortForward(_) => None,
        }
    }

    async fn port_forward(
        &self,
        request: v1::PortForwardRequest,
        session: Session,
        mut incoming: Incoming,
    ) {
        // Streams come in pairs by request id: the error stream, then the data stream.
        let mut errors: HashMap<String, ingot_spdy::StreamWriter> = HashMap::new();
        let mut connections = tokio::task::JoinSet::new();
        while let Some(mut stream) = incoming.next().await {
            let kind = stream.header("streamtype").unwrap_or("").to_string();
            let id = stream.header("requestid").unwrap_or("").to_string();
            let port = stream.header("port").and_then(|p| p.parse::<u16>().ok());
            if stream.reply().await.is_err() {
                break;
            }
            match kind.as_str() {
                "error" => {
                    let (_, writer) = stream.split();
                    errors.insert(id, writer);
                }
                "data" => {
                    let error = errors.remove(&id);
                    let manager = Arc::clone(&self.manager);
                    let pod = request.pod_sandbox_id.clone();
                    let allowed = request.port.is_empty()
                        || port.is_some_and(|p| request.port.contains(&i32::from(p)));
                    connections.spawn(async move {
                        forward(manager, pod, port.filter(|_| allowed), stream, error).await
                    });
                }
                _ => stream.reset(),
            }
        }
        connections.abort_all();
        session.goaway().await;
    }
}

/// The streams an exec or attach client opens.
#[derive(Debug, Clone, Copy)]
struct Wanted {
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
}

/// The client's streams, accepted.
struct Streams {
    error: Option<ingot_spdy::StreamWriter>,
    stdin: Option<ingot_spdy::StreamReader>,
    stdout: Option<ingot_spdy::StreamWriter>,
    stderr: Option<ingot_spdy::StreamWriter>,
    resize: Option<ingot_spdy::StreamReader>,
    /// The halves nothing uses (the stdin stream's sending half, the output streams'
    /// receiving halves), kept until the session ends as the kubelet's server keeps them:
    /// closing our half of stdin at once made spdystream drop the stream, and with it stdin.
    unused: Unused,
}

/// stdin, stdout, stderr, terminal sizes, and the halves to hold.
type Parts = (
    Option<stream::Reader>,
    Option<stream::Writer>,
    Option<stream::Writer>,
    Option<mpsc::Receiver<(u16, u16)>>,
    Unused,
);

/// Stream halves held open for the session's length.
#[derive(Default)]
struct Unused {
    _writers: Vec<ingot_spdy::StreamWriter>,
    _readers: Vec<ingot_spdy::StreamReader>,
}

impl Streams {
    /// stdin, stdout, stderr and terminal sizes, as the lifecycle takes them.
    fn into_parts(self) -> Parts {
        let sizes = self.resize.map(|reader| {
            let (sender, receiver) = mpsc::channel(8);
            tokio::spawn(read_sizes(reader, sender));
            receiver
        });
        (
            self.stdin.map(|r| Box::new(r) as stream::Reader),
            self.stdout.map(|w| Box::new(w) as stream::Writer),
            self.stderr.map(|w| Box::new(w) as stream::Writer),
            sizes,
            self.unused,
        )
    }
}

/// Waits (at most [`STREAM_CREATION_TIMEOUT`]) for the streams the request asked for: the
/// error stream always, stdin/stdout/stderr as asked (stderr not with a terminal), the resize
/// stream with a terminal from v3 on. Others are reset.
async fn gather(protocol: &str, wanted: Wanted, mut incoming: Incoming) -> Option<Streams> {
    let resize = wanted.tty && matches!(protocol, "v3.channel.k8s.io" | "v4.channel.k8s.io");
    let mut kinds: Vec<&str> = vec!["error"];
    for (on, kind) in [
        (wanted.stdin, "stdin"),
        (wanted.stdout, "stdout"),
        (wanted.stderr && !wanted.tty, "stderr"),
        (resize, "resize"),
    ] {
        if on {
            kinds.push(kind);
        }
    }
    let mut streams: HashMap<String, Stream> = HashMap::new();
    let gathered = tokio::time::timeout(STREAM_CREATION_TIMEOUT, async {
        while streams.len() < kinds.len() {
            let mut stream = incoming.next().await?;
            let kind = stream.header("streamtype").unwrap_or("").to_string();
            if !kinds.contains(&kind.as_str()) || streams.contains_key(&kind) {
                stream.reset();
                continue;
            }
            stream.reply().await.ok()?;
            streams.insert(kind, stream);
        }
        Some(())
    })
    .await;
    gathered.ok().flatten()?;
    let mut unused = Unused::default();
    let mut writer_of = |kind: &str, unused: &mut Unused| {
        streams.remove(kind).map(|stream| {
            let (reader, writer) = stream.split();
            unused._readers.push(reader);
            writer
        })
    };
    let error = writer_of("error", &mut unused);
    let stdout = writer_of("stdout", &mut unused);
    let stderr = writer_of("stderr", &mut unused);
    let mut reader_of = |kind: &str, unused: &mut Unused| {
        streams.remove(kind).map(|stream| {
            let (reader, writer) = stream.split();
            unused._writers.push(writer);
            reader
        })
    };
    let stdin = reader_of("stdin", &mut unused);
    let resize = reader_of("resize", &mut unused);
    Some(Streams {
        error,
        stdin,
        stdout,
        stderr,
        resize,
        unused,
    })
}

/// One port-forward connection: the data stream to a socket in the pod, both ways; a failure
/// to connect is written on the request's error stream.
async fn forward(
    manager: Arc<Manager>,
    pod_id: String,
    port: Option<u16>,
    stream: Stream,
    error: Option<ingot_spdy::StreamWriter>,
) {
    let connected = match port {
        Some(port) => stream::connect_in_pod(&manager, &pod_id, port).await,
        None => Err(CriError::invalid(
            "port",
            "missing, malformed or not requested",
        )),
    };
    match connected {
        Ok(socket) => {
            let (mut from_client, mut to_client) = stream.split();
            let (mut from_pod, mut to_pod) = socket.into_split();
            let upstream = async {
                let _ = tokio::io::copy(&mut from_client, &mut to_pod).await;
                let _ = to_pod.shutdown().await;
            };
            let downstream = async {
                let _ = tokio::io::copy(&mut from_pod, &mut to_client).await;
                let _ = to_client.shutdown().await;
            };
            tokio::join!(upstream, downstream);
        }
        Err(err) => {
            tracing::info!(pod = %pod_id, ?port, error = %err, "port-forward connection refused");
            if let Some(mut error) = error {
                let _ = error
                    .write_all(
                        format!("error forwarding port {}: {err}", port.unwrap_or(0)).as_bytes(),
                    )
                    .await;
                let _ = error.shutdown().await;
            }
            stream.reset();
        }
    }
}

type WebSocketSink<IO> = futures_util::stream::SplitSink<
    tokio_tungstenite::WebSocketStream<IO>,
    tokio_tungstenite::tungstenite::Message,
>;

/// One task writes everything to the client, in order, until a close message (sent, then the
/// socket closed) or until every sender is gone.
fn websocket_writer<IO>(
    mut sink: WebSocketSink<IO>,
) -> (
    mpsc::Sender<tokio_tungstenite::tungstenite::Message>,
    tokio::task::JoinHandle<()>,
)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use futures_util::SinkExt;
    let (outgoing, mut queue) = mpsc::channel::<tokio_tungstenite::tungstenite::Message>(64);
    let writer = tokio::spawn(async move {
        while let Some(message) = queue.recv().await {
            let closing = matches!(message, tokio_tungstenite::tungstenite::Message::Close(_));
            if sink.send(message).await.is_err() || closing {
                break;
            }
        }
        let _ = sink.close().await;
    });
    (outgoing, writer)
}

/// A normal closure: Go's client reads 1005 (no status) as an error on every stream.
fn normal_close() -> tokio_tungstenite::tungstenite::Message {
    tokio_tungstenite::tungstenite::Message::Close(Some(
        tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
            reason: "".into(),
        },
    ))
}

/// The channel framing of `v4.channel.k8s.io` (a binary message, its first byte the channel)
/// and of `v4.base64.channel.k8s.io` (a text message: `'0' + channel`, then base64).
#[derive(Debug, Clone, Copy)]
struct ChannelFrame {
    base64: bool,
}

impl ChannelFrame {
    fn encode(self, channel: u8, payload: &[u8]) -> tokio_tungstenite::tungstenite::Message {
        use base64::Engine;
        if self.base64 {
            let mut text = String::from(char::from(b'0'.saturating_add(channel)));
            text.push_str(&base64::engine::general_purpose::STANDARD.encode(payload));
            tokio_tungstenite::tungstenite::Message::text(text)
        } else {
            let mut message = Vec::with_capacity(payload.len() + 1);
            message.push(channel);
            message.extend_from_slice(payload);
            tokio_tungstenite::tungstenite::Message::binary(message)
        }
    }

    /// The channel and payload of a client's message; None for an empty or malformed one.
    fn decode(self, message: tokio_tungstenite::tungstenite::Message) -> Option<(u8, Vec<u8>)> {
        use base64::Engine;
        use tokio_tungstenite::tungstenite::Message;
        let data: Vec<u8> = match message {
            Message::Binary(data) => data.to_vec(),
            Message::Text(text) => text.as_bytes().to_vec(),
            _ => return None,
        };
        let (&first, rest) = data.split_first()?;
        if self.base64 {
            let payload = base64::engine::general_purpose::STANDARD
                .decode(rest)
                .ok()?;
            Some((first.checked_sub(b'0')?, payload))
        } else {
            Some((first, rest.to_vec()))
        }
    }
}

/// One WebSocket port-forward connection: the pod's `port` joined to data channel `data`;
/// a failure to connect goes on the error channel (`data + 1`).
async fn forward_channel(
    manager: Arc<Manager>,
    pod_id: String,
    port: u16,
    data: u8,
    frame: ChannelFrame,
    mut from_client: mpsc::Receiver<Vec<u8>>,
    outgoing: mpsc::Sender<tokio_tungstenite::tungstenite::Message>,
) {
    let socket = match stream::connect_in_pod(&manager, &pod_id, port).await {
        Ok(socket) => socket,
        Err(err) => {
            tracing::info!(pod = %pod_id, port, error = %err, "port-forward connection refused");
            let message = format!("error forwarding port {port} to pod {pod_id}, uid : {err}");
            let _ = outgoing
                .send(frame.encode(data + 1, message.as_bytes()))
                .await;
            return;
        }
    };
    let (mut from_pod, mut to_pod) = socket.into_split();
    let upstream = async {
        while let Some(bytes) = from_client.recv().await {
            if to_pod.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = to_pod.shutdown().await;
    };
    let downstream = pump_messages(&mut from_pod, &outgoing, |bytes| frame.encode(data, bytes));
    // The pod closing its side ends the connection (the kubelet's too: no half-close on v4).
    tokio::select! {
        () = downstream => {}
        () = async { upstream.await; std::future::pending::<()>().await } => {}
    }
}

/// Sends what `from` yields to the client, a message per read made by `encode`, until it ends
/// or the client's writer is gone.
async fn pump_messages<R>(
    mut from: R,
    outgoing: &mpsc::Sender<tokio_tungstenite::tungstenite::Message>,
    encode: impl Fn(&[u8]) -> tokio_tungstenite::tungstenite::Message,
) where
    R: tokio::io::AsyncRead + Unpin,
{
    let mut buffer = vec![0u8; 32 * 1024];
    loop {
        let n = match tokio::io::AsyncReadExt::read(&mut from, &mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if outgoing.send(encode(&buffer[..n])).await.is_err() {
            break;
        }
    }
}

/// The byte stream of a WebSocket that carries one in binary messages (the SPDY tunnel):
/// reads join the messages, each write is one message.
fn websocket_bytes<IO>(socket: tokio_tungstenite::WebSocketStream<IO>) -> tokio::io::DuplexStream
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let (sink, mut source) = socket.split();
    let (mut read_half, mut write_half) = tokio::io::split(theirs);
    let (outgoing, writer) = websocket_writer(sink);
    tokio::spawn(async move {
        let inbound = async {
            while let Some(Ok(message)) = source.next().await {
                let data = match message {
                    Message::Binary(data) => data,
                    Message::Close(_) => break,
                    _ => continue,
                };
                if write_half.write_all(&data).await.is_err() {
                    break;
                }
            }
            let _ = write_half.shutdown().await;
        };
        let outbound = async {
            pump_messages(&mut read_half, &outgoing, |bytes| {
                Message::binary(bytes.to_vec())
            })
            .await;
            let _ = outgoing.send(normal_close()).await;
        };
        tokio::join!(inbound, outbound);
        let _ = writer.await;
    });
    ours
}

/// Terminal sizes, one JSON object per message (`{"Width":80,"Height":24}`).
async fn read_sizes(reader: ingot_spdy::StreamReader, sender: mpsc::Sender<(u16, u16)>) {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Size {
        width: u16,
        height: u16,
    }
    let mut reader = tokio::io::BufReader::new(reader);
    let mut buffer = Vec::new();
    loop {
        let mut chunk = [0u8; 512];
        let n = match tokio::io::AsyncReadExt::read(&mut reader, &mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buffer.extend_from_slice(&chunk[..n]);
        let mut sizes = serde_json::Deserializer::from_slice(&buffer).into_iter::<Size>();
        let mut consumed = 0;
        while let Some(Ok(size)) = sizes.next() {
            consumed = sizes.byte_offset();
            if sender.send((size.width, size.height)).await.is_err() {
                return;
            }
        }
        buffer.drain(..consumed);
    }
}

/// What goes on the error stream when the process ends: v4's status object, or the older
/// protocols' text (nothing on success).
fn exit_report(protocol: &str, exit: &Result<u32, CriError>) -> Option<String> {
    let structured = matches!(protocol, "v4.channel.k8s.io" | "v5.channel.k8s.io");
    match exit {
        Ok(0) if structured => Some(r#"{"metadata":{},"status":"Success"}"#.to_string()),
        Ok(0) => None,
        Ok(code) if structured => Some(
            serde_json::json!({
                "metadata": {},
                "status": "Failure",
                "message": format!("command terminated with non-zero exit code: {code}"),
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
            })
            .to_string(),
        ),
        Ok(code) => Some(format!(
            "command terminated with non-zero exit code: {code}"
        )),
        Err(err) if structured => Some(
            serde_json::json!({
                "metadata": {},
                "status": "Failure",
                "message": err.to_string(),
                "reason": "InternalError",
            })
            .to_string(),
        ),
        Err(err) => Some(err.to_string()),
    }
}

/// Every value of a header given once per value or comma-separated.
fn header_list(headers: &hyper::HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|p| p.trim().to_string()))
        .filter(|p| !p.is_empty())
        .collect()
}

/// 403, as the kubelet answers a client whose protocols it does not speak.
fn unnegotiable(offered: &[String], supported: &[&str]) -> Response<Full<Bytes>> {
    plain(
        StatusCode::FORBIDDEN,
        format!(
            "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server supports {supported:?}"
        ),
    )
}

fn plain(status: StatusCode, message: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(message)));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_single_use_and_expire() {
        let forward = || {
            Pending::PortForward(v1::PortForwardRequest {
                pod_sandbox_id: "p".into(),
                port: vec![80],
            })
        };
        let start = Instant::now();
        let mut tokens = Tokens::default();
        tokens.issue("a".into(), forward(), start);
        tokens.issue("b".into(), forward(), start);
        assert!(tokens.take("a", start + Duration::from_secs(59)).is_some());
        assert!(
            tokens.take("a", start + Duration::from_secs(59)).is_none(),
            "used"
        );
        assert!(tokens.take("b", start + TOKEN_TTL).is_none(), "expired");
        assert!(tokens.take("c", start).is_none(), "unknown");
        // Expired ones are dropped as new ones are issued.
        tokens.issue("d".into(), forward(), start);
        tokens.issue("e".into(), forward(), start + TOKEN_TTL);
        assert_eq!(tokens.issued.len(), 1);
    }

    #[test]
    fn the_error_stream_reports_the_exit_as_each_protocol_does() {
        let v4 = "v4.channel.k8s.io";
        assert_eq!(
            exit_report(v4, &Ok(0)).as_deref(),
            Some(r#"{"metadata":{},"status":"Success"}"#)
        );
        let failure: serde_json::Value =
            serde_json::from_str(&exit_report(v4, &Ok(7)).expect("report")).expect("json");
        assert_eq!(failure["reason"], "NonZeroExitCode");
        assert_eq!(failure["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(failure["details"]["causes"][0]["message"], "7");
        assert_eq!(exit_report("v3.channel.k8s.io", &Ok(0)), None);
        assert!(exit_report("v2.channel.k8s.io", &Ok(7))
            .expect("text")
            .contains("exit code: 7"));
    }
}
