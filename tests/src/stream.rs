//! A client of ingotd's streaming server in Rust, one per protocol the kubelet and the API server
//! speak: SPDY/3.1 (`v4.channel.k8s.io` … `channel.k8s.io`, `portforward.k8s.io`), WebSocket
//! channels (`v5`/`v4.channel.k8s.io`, `v4.base64.channel.k8s.io`) and SPDY tunnelled in
//! WebSocket (`SPDY/3.1+portforward.k8s.io`). Sockets are made in the daemon's network
//! namespace, where the server listens on loopback.

use std::{collections::HashMap, time::Duration};

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use ingot_spdy::Session;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::{
    tungstenite::{client::IntoClientRequest, http::HeaderValue, Message},
    WebSocketStream,
};

use crate::TestNetns;

/// How long a test waits on any one step of a stream.
const STEP: Duration = Duration::from_secs(20);

/// Any connection a stream runs over: plain TCP or TLS.
pub trait Conn:
    tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + std::fmt::Debug
{
}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + std::fmt::Debug> Conn for T {}
pub type Io = Box<dyn Conn>;

/// Where and how to reach the server: the network namespace to connect from (the host's when
/// None) and, for `https` URLs, the certificates to trust.
pub struct Dialer<'a> {
    pub netns: Option<&'a TestNetns>,
    pub roots: Vec<rustls_pki_types::CertificateDer<'static>>,
}

impl<'a> Dialer<'a> {
    pub fn new(netns: Option<&'a TestNetns>) -> Self {
        Dialer {
            netns,
            roots: Vec::new(),
        }
    }

    /// Trusts the PEM certificate `pem` for `https` URLs.
    pub fn trusting(mut self, pem: &str) -> Result<Self> {
        use rustls_pki_types::pem::PemObject;
        self.roots
            .push(rustls_pki_types::CertificateDer::from_pem_slice(
                pem.as_bytes(),
            )?);
        Ok(self)
    }

    /// A connection to the URL's host, with TLS for `https`.
    pub async fn connect(&self, url: &str) -> Result<Io> {
        let (tls, rest) = match url.split_once("://") {
            Some(("http", rest)) => (false, rest),
            Some(("https", rest)) => (true, rest),
            _ => bail!("not an http(s) URL: {url}"),
        };
        let host = rest.split('/').next().unwrap_or(rest).to_string();
        let target = host.clone();
        let stream = match self.netns {
            Some(netns) => netns.run(move || std::net::TcpStream::connect(target))??,
            None => std::net::TcpStream::connect(target)?,
        };
        stream.set_nonblocking(true)?;
        let tcp = tokio::net::TcpStream::from_std(stream)?;
        if !tls {
            return Ok(Box::new(tcp));
        }
        let mut roots = tokio_rustls::rustls::RootCertStore::empty();
        for root in &self.roots {
            roots.add(root.clone())?;
        }
        let provider =
            std::sync::Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
        let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(&host);
        let name = rustls_pki_types::ServerName::try_from(name.to_string())?;
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
        let stream = tokio::time::timeout(STEP, connector.connect(name, tcp))
            .await
            .context("TLS handshake timed out")??;
        Ok(Box::new(stream))
    }
}

/// What an exec or attach printed, and its error channel's status (empty when it succeeded
/// on protocols that say nothing then).
#[derive(Debug, Default, Clone)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
    pub status: String,
}

impl Output {
    /// The exit code the status reports: 0 for `Success`, the `ExitCode` cause otherwise.
    pub fn exit_code(&self) -> Option<i64> {
        if self.status.is_empty() {
            return Some(0);
        }
        let status: serde_json::Value = serde_json::from_str(&self.status).ok()?;
        if status["status"] == "Success" {
            return Some(0);
        }
        status["details"]["causes"]
            .as_array()?
            .iter()
            .find(|cause| cause["reason"] == "ExitCode")
            .and_then(|cause| cause["message"].as_str())
            .and_then(|code| code.parse().ok())
    }
}

/// A WebSocket to `url` offering `protocols`; the socket and the protocol the server chose, or
/// the HTTP status line it answered instead.
pub async fn websocket(
    dialer: &Dialer<'_>,
    url: &str,
    protocols: &[&str],
) -> Result<(WebSocketStream<Io>, String)> {
    let tcp = dialer.connect(url).await?;
    let ws_url = url.replacen("http", "ws", 1);
    let mut request = ws_url.into_client_request()?;
    if !protocols.is_empty() {
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_str(&protocols.join(", "))?,
        );
    }
    let (socket, response) =
        tokio::time::timeout(STEP, tokio_tungstenite::client_async(request, tcp))
            .await
            .context("websocket handshake timed out")?
            .map_err(|err| match err {
                tokio_tungstenite::tungstenite::Error::Http(response) => {
                    anyhow!("HTTP {}", response.status().as_u16())
                }
                other => anyhow!(other),
            })?;
    let chosen = response
        .headers()
        .get("Sec-WebSocket-Protocol")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    Ok((socket, chosen))
}

/// Exec or attach over a `v5`/`v4.channel.k8s.io` WebSocket: writes `stdin` (then, on v5,
/// closes it), sends `resize` first when given, and collects the output until the server
/// closes.
pub async fn websocket_process(
    mut socket: WebSocketStream<Io>,
    protocol: &str,
    stdin: Option<&[u8]>,
    resize: Option<(u16, u16)>,
) -> Result<Output> {
    if let Some((width, height)) = resize {
        let mut message = vec![4u8];
        message.extend_from_slice(
            serde_json::json!({"Width": width, "Height": height})
                .to_string()
                .as_bytes(),
        );
        socket.send(Message::binary(message)).await?;
    }
    if let Some(data) = stdin {
        let mut message = vec![0u8];
        message.extend_from_slice(data);
        socket.send(Message::binary(message)).await?;
        if protocol == "v5.channel.k8s.io" {
            socket.send(Message::binary(vec![255u8, 0])).await?;
        }
    }
    let mut output = Output::default();
    loop {
        let message = tokio::time::timeout(STEP, socket.next())
            .await
            .context("the process's output timed out")?;
        let data = match message {
            None | Some(Ok(Message::Close(_))) => break,
            Some(Ok(Message::Binary(data))) => data.to_vec(),
            Some(Ok(_)) => continue,
            Some(Err(err)) => bail!("websocket: {err}"),
        };
        let Some((channel, rest)) = data.split_first() else {
            continue;
        };
        let text = String::from_utf8_lossy(rest);
        match channel {
            1 => output.stdout.push_str(&text),
            2 => output.stderr.push_str(&text),
            3 => output.status.push_str(&text),
            _ => {}
        }
    }
    Ok(output)
}

/// Port-forward over WebSocket channels to the one port the URL was made for: sends `request`
/// on data channel 0 and returns what the pod answered (until it closed), after checking the
/// port prefix each channel starts with.
pub async fn websocket_port_forward(
    mut socket: WebSocketStream<Io>,
    base64: bool,
    port: u16,
    request: &[u8],
) -> Result<Vec<u8>> {
    let encode = |channel: u8, payload: &[u8]| {
        if base64 {
            Message::text(format!(
                "{}{}",
                char::from(b'0' + channel),
                base64::engine::general_purpose::STANDARD.encode(payload)
            ))
        } else {
            let mut message = vec![channel];
            message.extend_from_slice(payload);
            Message::binary(message)
        }
    };
    let decode = |message: Message| -> Result<Option<(u8, Vec<u8>)>> {
        let data = match message {
            Message::Binary(data) if !base64 => data.to_vec(),
            Message::Text(text) if base64 => text.as_bytes().to_vec(),
            Message::Close(_) => return Ok(None),
            other => bail!("unexpected message {other:?}"),
        };
        let (&first, rest) = data.split_first().ok_or_else(|| anyhow!("empty message"))?;
        if base64 {
            let payload = base64::engine::general_purpose::STANDARD.decode(rest)?;
            Ok(Some((first - b'0', payload)))
        } else {
            Ok(Some((first, rest.to_vec())))
        }
    };
    // Each channel first carries the port.
    let mut prefixed: HashMap<u8, bool> = HashMap::new();
    let mut response = Vec::new();
    let mut errors = String::new();
    let mut sent = false;
    loop {
        let message = tokio::time::timeout(STEP, socket.next())
            .await
            .context("port-forward timed out")?;
        let message = match message {
            None => break,
            Some(message) => message?,
        };
        let Some((channel, payload)) = decode(message)? else {
            break;
        };
        if !prefixed.get(&channel).copied().unwrap_or(false) {
            if payload != port.to_le_bytes() {
                bail!("channel {channel} began with {payload:?}, not port {port}");
            }
            prefixed.insert(channel, true);
            if prefixed.len() == 2 && !sent {
                socket.send(encode(0, request)).await?;
                sent = true;
            }
            continue;
        }
        match channel {
            0 => response.extend_from_slice(&payload),
            1 => errors.push_str(&String::from_utf8_lossy(&payload)),
            _ => {}
        }
    }
    if !errors.is_empty() {
        bail!("error channel: {errors}");
    }
    Ok(response)
}

/// The byte stream of a WebSocket that carries SPDY in binary messages (client-go's
/// `TunnelingConnection`).
pub fn tunnel(socket: WebSocketStream<Io>) -> tokio::io::DuplexStream {
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let (mut sink, mut source) = socket.split();
    let (mut read_half, mut write_half) = tokio::io::split(theirs);
    tokio::spawn(async move {
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
    });
    tokio::spawn(async move {
        let mut buffer = vec![0u8; 32 * 1024];
        loop {
            let n = match read_half.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if sink
                .send(Message::binary(buffer[..n].to_vec()))
                .await
                .is_err()
            {
                break;
            }
        }
        let _ = sink.close().await;
    });
    ours
}

/// An HTTP/1.1 upgrade to SPDY/3.1 offering `protocols`; the session and the protocol the
/// server chose, or the status line it answered instead.
pub async fn spdy(dialer: &Dialer<'_>, url: &str, protocols: &[&str]) -> Result<(Session, String)> {
    let mut tcp = dialer.connect(url).await?;
    let rest = url.split_once("://").map(|(_, rest)| rest).unwrap_or(url);
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut request = format!(
        "POST /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
    );
    for protocol in protocols {
        request.push_str(&format!("X-Stream-Protocol-Version: {protocol}\r\n"));
    }
    request.push_str("Content-Length: 0\r\n\r\n");
    tcp.write_all(request.as_bytes()).await?;
    // The head, byte by byte: what follows it is the session's.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(STEP, tcp.read(&mut byte))
            .await
            .context("upgrade response timed out")??;
        if n == 0 {
            break;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head.lines().next().unwrap_or("").to_string();
    if !status.contains(" 101 ") {
        bail!("{status}");
    }
    let chosen = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("X-Stream-Protocol-Version")
                .then(|| value.trim().to_string())
        })
        .unwrap_or_default();
    let session = Session::client(tcp)?;
    Ok((session, chosen))
}

/// Exec or attach over SPDY: opens the error stream and those asked for (stdin when `stdin`
/// is given, stdout, stderr unless `tty`, resize with a `tty` from v3 on), writes stdin and
/// ends it, sends `resize`, and collects everything until the error stream ends.
pub async fn spdy_process(
    session: &Session,
    protocol: &str,
    stdin: Option<&[u8]>,
    tty: bool,
    resize: Option<(u16, u16)>,
) -> Result<Output> {
    let open = |kind: &'static str| async move {
        let mut stream = session.open(&[("streamtype", kind)], false)?;
        tokio::time::timeout(STEP, stream.wait_reply())
            .await
            .context("no reply to a stream")??;
        anyhow::Ok(stream)
    };
    let error = open("error").await?;
    let stdin_stream = match stdin {
        Some(_) => Some(open("stdin").await?),
        None => None,
    };
    let stdout = open("stdout").await?;
    let stderr = match tty {
        false => Some(open("stderr").await?),
        true => None,
    };
    let resize_stream = match (tty, protocol) {
        (true, "v3.channel.k8s.io" | "v4.channel.k8s.io") => Some(open("resize").await?),
        _ => None,
    };
    if let (Some(stream), Some((width, height))) = (resize_stream, resize) {
        let (_, mut writer) = stream.split();
        writer
            .write_all(
                serde_json::json!({"Width": width, "Height": height})
                    .to_string()
                    .as_bytes(),
            )
            .await?;
    }
    if let (Some(stream), Some(data)) = (stdin_stream, stdin) {
        let (_, mut writer) = stream.split();
        writer.write_all(data).await?;
        writer.shutdown().await?;
    }
    let read_all = |stream: ingot_spdy::Stream| async move {
        let (mut reader, _writer) = stream.split();
        let mut bytes = Vec::new();
        let _ = reader.read_to_end(&mut bytes).await;
        String::from_utf8_lossy(&bytes).into_owned()
    };
    let stdout = tokio::spawn(read_all(stdout));
    let stderr = stderr.map(|stream| tokio::spawn(read_all(stream)));
    let status = tokio::time::timeout(STEP, read_all(error))
        .await
        .context("the error stream never ended")?;
    let stdout = tokio::time::timeout(STEP, stdout).await??;
    let stderr = match stderr {
        Some(task) => tokio::time::timeout(STEP, task).await??,
        None => String::new(),
    };
    Ok(Output {
        stdout,
        stderr,
        status,
    })
}

/// One port-forward connection over SPDY (`portforward.k8s.io`): the error and data streams
/// of `request_id` to `port`; sends `request`, ends it, returns the answer (until the pod
/// closed) or what the error stream said.
pub async fn spdy_port_forward(
    session: &Session,
    port: u16,
    request_id: u32,
    request: &[u8],
) -> Result<Vec<u8>> {
    let port = port.to_string();
    let id = request_id.to_string();
    let mut error = session.open(
        &[("streamtype", "error"), ("port", &port), ("requestid", &id)],
        false,
    )?;
    error.wait_reply().await?;
    let mut data = session.open(
        &[("streamtype", "data"), ("port", &port), ("requestid", &id)],
        false,
    )?;
    data.wait_reply().await?;
    let (mut reader, mut writer) = data.split();
    writer.write_all(request).await?;
    let mut response = Vec::new();
    let read = tokio::time::timeout(STEP, reader.read_to_end(&mut response)).await;
    let (mut error_reader, _error_writer) = error.split();
    let mut message = Vec::new();
    let _ = tokio::time::timeout(
        Duration::from_millis(500),
        error_reader.read_to_end(&mut message),
    )
    .await;
    if !message.is_empty() {
        bail!("error stream: {}", String::from_utf8_lossy(&message));
    }
    read.context("port-forward timed out")??;
    Ok(response)
}
