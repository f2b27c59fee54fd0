//! The client role: a client [`Session`] against a server [`Session`] over `tokio::io::duplex`
//! (optionally through a tap that checks flow control on the wire), and against a server played
//! frame by frame with the codec.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ingot_spdy::frame::{
    encode, read_frame, rst, Frame, FrameHead, HeaderCompressor, HeaderDecompressor, Limits,
    FLAG_FIN, SETTINGS_INITIAL_WINDOW_SIZE, TYPE_SETTINGS, TYPE_WINDOW_UPDATE,
};
use ingot_spdy::{Config, Incoming, SendFlowControl, Session, SpdyError, Stream};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::time::timeout;

const T: Duration = Duration::from_secs(20);

fn payload(n: usize, seed: usize) -> Vec<u8> {
    (0..n)
        .map(|i| u8::try_from((i * 7 + i / 251 + seed) % 251).expect("byte"))
        .collect()
}

/// A server and a client session joined by one duplex.
fn pair(server: Config, client: Config, buf: usize) -> (Session, Incoming, Session) {
    let (s, c) = tokio::io::duplex(buf);
    let (server, incoming) = Session::server_with(s, server).expect("server");
    let client = Session::client_with(c, client).expect("client");
    (server, incoming, client)
}

/// What one end sent, as the tap saw it.
#[derive(Default)]
struct End {
    /// DATA bytes per stream and in all.
    sent: HashMap<u32, u64>,
    sent_total: u64,
    /// WINDOW_UPDATE deltas per stream (0: the session).
    granted: HashMap<u32, u64>,
    updates: usize,
    /// SETTINGS_INITIAL_WINDOW_SIZE it announced, if any.
    initial: Option<u64>,
    /// The furthest it got past the other end's windows (stream or session), in bytes.
    overrun: u64,
}

#[derive(Default)]
struct Tap {
    client: End,
    server: End,
}

impl Tap {
    fn end(&mut self, from_client: bool) -> (&mut End, &mut End) {
        if from_client {
            (&mut self.client, &mut self.server)
        } else {
            (&mut self.server, &mut self.client)
        }
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// Forwards frames one way unchanged, recording DATA, WINDOW_UPDATE and SETTINGS in `tap`.
async fn forward(
    mut from: ReadHalf<DuplexStream>,
    mut to: WriteHalf<DuplexStream>,
    tap: Arc<Mutex<Tap>>,
    from_client: bool,
) {
    loop {
        let mut head = [0u8; 8];
        if from.read_exact(&mut head).await.is_err() {
            break;
        }
        let len = usize::from(head[5]) << 16 | usize::from(head[6]) << 8 | usize::from(head[7]);
        let mut body = vec![0u8; len];
        if from.read_exact(&mut body).await.is_err() {
            break;
        }
        {
            let mut tap = tap.lock().expect("tap");
            let (me, peer) = tap.end(from_client);
            match FrameHead::parse(head) {
                FrameHead::Data { stream_id, .. } => {
                    let n = u64::try_from(len).expect("len");
                    let sent = me.sent.entry(stream_id).or_default();
                    *sent += n;
                    me.sent_total += n;
                    let window = peer.initial.unwrap_or(65_536)
                        + peer.granted.get(&stream_id).copied().unwrap_or(0);
                    let session = 65_536 + peer.granted.get(&0).copied().unwrap_or(0);
                    let over = sent
                        .saturating_sub(window)
                        .max(me.sent_total.saturating_sub(session));
                    me.overrun = me.overrun.max(over);
                }
                FrameHead::Control { frame_type, .. } if frame_type == TYPE_WINDOW_UPDATE => {
                    let id = be32(&body, 0) & 0x7fff_ffff;
                    *me.granted.entry(id).or_default() += u64::from(be32(&body, 4));
                    me.updates += 1;
                }
                FrameHead::Control { frame_type, .. } if frame_type == TYPE_SETTINGS => {
                    for e in body[4..].chunks(8) {
                        if be32(e, 0) & 0x00ff_ffff == SETTINGS_INITIAL_WINDOW_SIZE {
                            me.initial = Some(u64::from(be32(e, 4)));
                        }
                    }
                }
                FrameHead::Control { .. } => {}
            }
        }
        if to.write_all(&head).await.is_err() || to.write_all(&body).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// [`pair`] with a tap in the middle.
fn tapped_pair(
    server: Config,
    client: Config,
    buf: usize,
) -> (Session, Incoming, Session, Arc<Mutex<Tap>>) {
    let (s, tap_s) = tokio::io::duplex(buf);
    let (c, tap_c) = tokio::io::duplex(buf);
    let tap = Arc::new(Mutex::new(Tap::default()));
    let (cr, cw) = tokio::io::split(tap_c);
    let (sr, sw) = tokio::io::split(tap_s);
    tokio::spawn(forward(cr, sw, tap.clone(), true));
    tokio::spawn(forward(sr, cw, tap.clone(), false));
    let (server, incoming) = Session::server_with(s, server).expect("server");
    let client = Session::client_with(c, client).expect("client");
    (server, incoming, client, tap)
}

/// The server half of an exec: checks the headers, replies, echoes stdin to stdout, sends
/// `extra` on stdout after the echo, then FIN on stdout and a status on the error stream.
async fn exec_server(mut incoming: Incoming, extra: Vec<u8>) -> Vec<u32> {
    let (mut stdin, mut stdout, mut error) = (None, None, None);
    let mut ids = Vec::new();
    while stdin.is_none() || stdout.is_none() || error.is_none() {
        let mut s = timeout(T, incoming.next())
            .await
            .expect("stream in time")
            .expect("stream");
        ids.push(s.id);
        assert_eq!(s.header("requestid"), Some("0"));
        s.reply().await.expect("reply");
        match s.header("streamtype") {
            Some("stdin") => stdin = Some(s.split().0),
            Some("stdout") => stdout = Some(s.split().1),
            Some("error") => error = Some(s.split()),
            other => panic!("unexpected stream type {other:?}"),
        }
    }
    let (mut stdin, mut stdout, (mut error_r, mut error_w)) = (
        stdin.expect("stdin"),
        stdout.expect("stdout"),
        error.expect("error"),
    );
    tokio::io::copy(&mut stdin, &mut stdout)
        .await
        .expect("echo");
    stdout.write_all(&extra).await.expect("extra");
    stdout.shutdown().await.expect("stdout fin");
    // The client sent FIN on the error stream at once: nothing to read.
    let mut none = Vec::new();
    error_r.read_to_end(&mut none).await.expect("error eof");
    assert!(none.is_empty());
    error_w
        .write_all(b"{\"status\":\"Success\"}")
        .await
        .expect("status");
    error_w.shutdown().await.expect("error fin");
    ids
}

/// The client half of an exec, like kubectl's v4 protocol: error (FIN at once), stdin, stdout;
/// writes `input` on stdin while reading stdout, FIN on stdin. Returns stdout and the status.
async fn exec_client(client: &Session, input: Vec<u8>) -> (Vec<u8>, Vec<u8>) {
    let mut error = client
        .open(&[("StreamType", "error"), ("requestid", "0")], true)
        .expect("open error");
    let mut stdin = client
        .open(&[("streamtype", "stdin"), ("requestid", "0")], false)
        .expect("open stdin");
    let mut stdout = client
        .open(&[("streamtype", "stdout"), ("requestid", "0")], false)
        .expect("open stdout");
    assert_eq!((error.id, stdin.id, stdout.id), (1, 3, 5));
    assert_eq!(error.header("streamtype"), Some("error"));
    for s in [&mut error, &mut stdin, &mut stdout] {
        let h = timeout(T, s.wait_reply())
            .await
            .expect("reply in time")
            .expect("reply");
        assert!(h.is_empty(), "reply headers {h:?}");
    }
    let (_, mut stdin_w) = stdin.split();
    let (mut stdout_r, _) = stdout.split();
    let (mut error_r, _) = error.split();
    let writer = tokio::spawn(async move {
        for chunk in input.chunks(10_000) {
            stdin_w.write_all(chunk).await.expect("stdin");
        }
        stdin_w.shutdown().await.expect("stdin fin");
    });
    let mut out = Vec::new();
    timeout(T, stdout_r.read_to_end(&mut out))
        .await
        .expect("stdout in time")
        .expect("stdout");
    timeout(T, writer)
        .await
        .expect("stdin in time")
        .expect("stdin task");
    let mut status = Vec::new();
    timeout(T, error_r.read_to_end(&mut status))
        .await
        .expect("status in time")
        .expect("status");
    (out, status)
}

/// Both ends strict about windows, the client announcing a 16 KiB receive window: a MiB each
/// way, no stall, and the tap sees neither end send past the other's windows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_both_ways_with_strict_flow_control() {
    let server_config = Config {
        send_flow_control: SendFlowControl::Enforce,
        ..Config::default()
    };
    let client_config = Config {
        send_flow_control: SendFlowControl::Enforce,
        recv_window: 16 * 1024,
        ..Config::default()
    };
    let (server, incoming, client, tap) = tapped_pair(server_config, client_config, 8 * 1024);
    let extra = payload(300 * 1024, 3);
    let srv = tokio::spawn(exec_server(incoming, extra.clone()));
    let input = payload(1 << 20, 0);
    let (out, status) = exec_client(&client, input.clone()).await;
    assert_eq!(out.len(), input.len() + extra.len());
    assert!(out[..input.len()] == input[..], "echo differs");
    assert!(out[input.len()..] == extra[..], "extra differs");
    assert_eq!(status, b"{\"status\":\"Success\"}");
    let ids = timeout(T, srv)
        .await
        .expect("server in time")
        .expect("server");
    assert_eq!(ids, vec![1, 3, 5]);

    {
        let tap = tap.lock().expect("tap");
        assert_eq!(tap.client.initial, Some(16 * 1024));
        assert_eq!(
            tap.client.overrun, 0,
            "client sent past the server's windows"
        );
        assert_eq!(
            tap.server.overrun, 0,
            "server sent past the client's windows"
        );
        assert_eq!(tap.client.sent.get(&3).copied(), Some(1 << 20));
        let stdout = u64::try_from(out.len()).expect("len");
        assert_eq!(tap.server.sent.get(&5).copied(), Some(stdout));
        // The client gave back (nearly) all it read, on the stream and the session.
        let granted = tap.client.granted.get(&5).copied().unwrap_or(0);
        assert!(
            granted + 16 * 1024 >= stdout,
            "stdout window granted {granted}"
        );
        let session = tap.client.granted.get(&0).copied().unwrap_or(0);
        assert!(
            session + 65_536 >= stdout,
            "session window granted {session}"
        );
    }
    timeout(T, client.goaway()).await.expect("client goaway");
    timeout(T, server.closed()).await.expect("server closed");
}

/// Default settings on both ends (`SendFlowControl::Auto`): flow control switches on because the
/// client grants windows as it reads, and a MiB each way still flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_both_ways_with_default_config() {
    let (server, incoming, client, tap) = tapped_pair(Config::default(), Config::default(), 4096);
    let extra = payload(200 * 1024, 5);
    let srv = tokio::spawn(exec_server(incoming, extra.clone()));
    let input = payload(1 << 20, 1);
    let (out, status) = exec_client(&client, input.clone()).await;
    let mut want = input;
    want.extend_from_slice(&extra);
    assert!(out == want, "stdout: {} bytes of {}", out.len(), want.len());
    assert_eq!(status, b"{\"status\":\"Success\"}");
    timeout(T, srv)
        .await
        .expect("server in time")
        .expect("server");
    {
        let tap = tap.lock().expect("tap");
        assert!(tap.client.updates > 0 && tap.server.updates > 0);
        assert!(tap.client.granted.get(&5).copied().unwrap_or(0) > 0);
        assert!(tap.server.granted.get(&3).copied().unwrap_or(0) > 0);
    }
    timeout(T, server.goaway()).await.expect("server goaway");
    timeout(T, client.closed()).await.expect("client closed");
}

#[tokio::test]
async fn stream_opened_with_fin_and_server_headers() {
    let (_server, mut incoming, client) = pair(Config::default(), Config::default(), 4096);
    let mut s = client
        .open(&[("streamtype", "data"), ("port", "8080")], true)
        .expect("open");
    let srv = tokio::spawn(async move {
        let st = incoming.next().await.expect("stream");
        assert_eq!(st.id, 1);
        assert_eq!(
            st.headers,
            vec![
                ("streamtype".to_string(), "data".to_string()),
                ("port".to_string(), "8080".to_string())
            ]
        );
        let (mut r, mut w) = st.split();
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.expect("eof at once");
        assert!(got.is_empty());
        // Writing replies first.
        w.write_all(b"hello").await.expect("write");
        w.shutdown().await.expect("fin");
        incoming
    });
    assert!(timeout(T, s.wait_reply()).await.expect("in time").is_ok());
    let (mut r, mut w) = s.split();
    assert!(
        w.write_all(b"x").await.is_err(),
        "FIN was sent with SYN_STREAM"
    );
    let mut got = Vec::new();
    timeout(T, r.read_to_end(&mut got))
        .await
        .expect("in time")
        .expect("read");
    assert_eq!(got, b"hello");
    let _incoming = srv.await.expect("server");
    // Ids keep increasing.
    let s = client.open(&[], false).expect("second");
    assert_eq!(s.id, 3);
}

#[tokio::test]
async fn resets_from_the_server_are_errors_on_the_client() {
    let (_server, mut incoming, client) = pair(Config::default(), Config::default(), 1 << 16);

    // Dropped without a reply: REFUSED_STREAM.
    let mut a = client.open(&[("streamtype", "stdout")], false).expect("a");
    drop(incoming.next().await.expect("a on the server"));
    let err = timeout(T, a.wait_reply()).await.expect("in time");
    assert!(
        matches!(
            err,
            Err(SpdyError::ResetByPeer {
                status: rst::REFUSED_STREAM
            })
        ),
        "{err:?}"
    );
    // Idempotent.
    assert!(matches!(
        a.wait_reply().await,
        Err(SpdyError::ResetByPeer {
            status: rst::REFUSED_STREAM
        })
    ));
    let (mut r, mut w) = a.split();
    let mut got = Vec::new();
    let e = r.read_to_end(&mut got).await.expect_err("reset read");
    assert_eq!(e.kind(), ErrorKind::ConnectionReset);
    assert!(w.write_all(b"x").await.is_err());

    // Reset before replying: CANCEL.
    let mut b = client.open(&[("streamtype", "stdin")], false).expect("b");
    incoming.next().await.expect("b on the server").reset();
    assert!(matches!(
        timeout(T, b.wait_reply()).await.expect("in time"),
        Err(SpdyError::ResetByPeer {
            status: rst::CANCEL
        })
    ));

    // Replied, some data, then a reset: the data, then an error; writes fail.
    let mut c = client.open(&[("streamtype", "stdout")], false).expect("c");
    let mut sc = incoming.next().await.expect("c on the server");
    sc.reply().await.expect("reply");
    let (_sr, mut sw) = sc.split();
    sw.write_all(b"partial").await.expect("write");
    timeout(T, c.wait_reply())
        .await
        .expect("in time")
        .expect("replied");
    let (mut r, mut w) = c.split();
    let mut first = [0u8; 7];
    timeout(T, r.read_exact(&mut first))
        .await
        .expect("in time")
        .expect("partial");
    assert_eq!(&first, b"partial");
    sw.reset();
    let e = timeout(T, r.read(&mut first))
        .await
        .expect("in time")
        .expect_err("reset");
    assert_eq!(e.kind(), ErrorKind::ConnectionReset);
    assert!(w.write_all(b"late").await.is_err());
    // The session itself is fine.
    assert!(timeout(T, client.ping()).await.expect("in time").is_ok());
}

#[tokio::test]
async fn pings_both_ways() {
    let (server, _incoming, client) = pair(Config::default(), Config::default(), 4096);
    for _ in 0..3 {
        timeout(T, client.ping())
            .await
            .expect("client ping in time")
            .expect("client ping");
        timeout(T, server.ping())
            .await
            .expect("server ping in time")
            .expect("server ping");
    }
}

#[tokio::test]
async fn streams_the_server_opens_are_refused() {
    let (server, mut incoming, client) = pair(Config::default(), Config::default(), 4096);
    let mut s = server.open(&[("streamtype", "push")], false).expect("open");
    assert_eq!(s.id, 2);
    assert!(matches!(
        timeout(T, s.wait_reply()).await.expect("in time"),
        Err(SpdyError::ResetByPeer {
            status: rst::REFUSED_STREAM
        })
    ));
    // The client still opens its own.
    let mut c = client.open(&[], true).expect("client open");
    assert_eq!(c.id, 1);
    let mut sc = incoming.next().await.expect("on the server");
    sc.reply().await.expect("reply");
    timeout(T, c.wait_reply())
        .await
        .expect("in time")
        .expect("reply");
}

async fn wait_tasks(baseline: usize) {
    let m = tokio::runtime::Handle::current().metrics();
    timeout(T, async {
        while m.num_alive_tasks() > baseline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("session tasks end");
}

/// Opens a replied stream on both ends.
async fn replied(client: &Session, incoming: &mut Incoming) -> (Stream, Stream) {
    let mut c = client
        .open(&[("streamtype", "stdout")], false)
        .expect("open");
    let mut s = incoming.next().await.expect("stream");
    s.reply().await.expect("reply");
    timeout(T, c.wait_reply())
        .await
        .expect("in time")
        .expect("reply");
    (c, s)
}

#[tokio::test]
async fn goaway_from_the_server_ends_both() {
    let m = tokio::runtime::Handle::current().metrics();
    let baseline = m.num_alive_tasks();
    let (server, mut incoming, client) = pair(Config::default(), Config::default(), 4096);
    let (c, _s) = replied(&client, &mut incoming).await;
    let mut pending = client.open(&[], false).expect("never answered");
    timeout(T, server.goaway()).await.expect("server goaway");
    timeout(T, client.closed()).await.expect("client closed");
    assert!(client.is_closed() && server.is_closed());
    let (mut r, mut w) = c.split();
    let mut got = Vec::new();
    assert!(r.read_to_end(&mut got).await.is_err(), "no FIN came");
    assert!(w.write_all(b"x").await.is_err());
    assert!(matches!(pending.wait_reply().await, Err(SpdyError::Closed)));
    assert!(matches!(client.open(&[], false), Err(SpdyError::Closed)));
    assert!(matches!(client.ping().await, Err(SpdyError::Closed)));
    assert!(incoming.next().await.is_none());
    wait_tasks(baseline).await;
}

#[tokio::test]
async fn goaway_from_the_client_ends_both() {
    let m = tokio::runtime::Handle::current().metrics();
    let baseline = m.num_alive_tasks();
    let (server, mut incoming, client) = pair(Config::default(), Config::default(), 4096);
    let (_c, s) = replied(&client, &mut incoming).await;
    timeout(T, client.goaway()).await.expect("client goaway");
    assert!(timeout(T, incoming.next())
        .await
        .expect("incoming ends")
        .is_none());
    timeout(T, server.closed()).await.expect("server closed");
    let (mut r, _w) = s.split();
    let mut got = Vec::new();
    assert!(r.read_to_end(&mut got).await.is_err());
    assert!(matches!(server.open(&[], false), Err(SpdyError::Closed)));
    wait_tasks(baseline).await;
}

#[tokio::test]
async fn dropping_the_client_ends_both() {
    let m = tokio::runtime::Handle::current().metrics();
    let baseline = m.num_alive_tasks();
    let (server, mut incoming, client) = pair(Config::default(), Config::default(), 4096);
    let (c, _s) = replied(&client, &mut incoming).await;
    drop(client);
    timeout(T, server.closed()).await.expect("server closed");
    let (mut r, _w) = c.split();
    let mut got = Vec::new();
    assert!(r.read_to_end(&mut got).await.is_err());
    wait_tasks(baseline).await;
}

/// A server played frame by frame with the codec.
struct RawServer {
    rd: ReadHalf<DuplexStream>,
    wr: WriteHalf<DuplexStream>,
    dz: HeaderDecompressor,
    z: HeaderCompressor,
}

impl RawServer {
    fn start(config: Config, buf: usize) -> (Session, RawServer) {
        let (c, s) = tokio::io::duplex(buf);
        let client = Session::client_with(c, config).expect("client");
        let (rd, wr) = tokio::io::split(s);
        let raw = RawServer {
            rd,
            wr,
            dz: HeaderDecompressor::new(),
            z: HeaderCompressor::new().expect("compressor"),
        };
        (client, raw)
    }

    async fn send(&mut self, f: &Frame) {
        let mut b = Vec::new();
        encode(f, &mut self.z, &mut b).expect("encode");
        self.wr.write_all(&b).await.expect("server write");
    }

    async fn recv(&mut self) -> Option<Frame> {
        let limits = Limits::default();
        let f = read_frame(&mut self.rd, &mut self.dz, &limits);
        timeout(T, f).await.expect("frame in time").expect("frame")
    }
}

fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn client_frames_on_the_wire() {
    let (client, mut srv) = RawServer::start(Config::default(), 1 << 20);
    let mut a = client
        .open(&[("streamtype", "stdout"), ("requestid", "3")], false)
        .expect("open");
    let b = client.open(&[("streamtype", "error")], true).expect("open");
    assert_eq!(
        srv.recv().await,
        Some(Frame::SynStream {
            stream_id: 1,
            associated_id: 0,
            priority: 0,
            flags: 0,
            headers: h(&[("streamtype", "stdout"), ("requestid", "3")]),
        })
    );
    assert_eq!(
        srv.recv().await,
        Some(Frame::SynStream {
            stream_id: 3,
            associated_id: 0,
            priority: 0,
            flags: FLAG_FIN,
            headers: h(&[("streamtype", "error")]),
        })
    );
    // A reply with headers is handed over.
    srv.send(&Frame::SynReply {
        stream_id: 1,
        flags: 0,
        headers: h(&[("x-reply", "yes")]),
    })
    .await;
    assert_eq!(
        timeout(T, a.wait_reply())
            .await
            .expect("in time")
            .expect("reply"),
        h(&[("x-reply", "yes")])
    );
    // The server's (even) pings are echoed; an odd one answers nothing and is ignored.
    srv.send(&Frame::Ping { id: 7 }).await;
    srv.send(&Frame::Ping { id: 2 }).await;
    assert_eq!(srv.recv().await, Some(Frame::Ping { id: 2 }));
    // Server-opened streams are refused; odd ids are the client's: a protocol error.
    srv.send(&Frame::SynStream {
        stream_id: 2,
        associated_id: 0,
        priority: 0,
        flags: 0,
        headers: Vec::new(),
    })
    .await;
    assert_eq!(
        srv.recv().await,
        Some(Frame::RstStream {
            stream_id: 2,
            status: rst::REFUSED_STREAM
        })
    );
    srv.send(&Frame::SynStream {
        stream_id: 5,
        associated_id: 0,
        priority: 0,
        flags: 0,
        headers: Vec::new(),
    })
    .await;
    assert_eq!(
        srv.recv().await,
        Some(Frame::RstStream {
            stream_id: 5,
            status: rst::PROTOCOL_ERROR
        })
    );
    // A client ping is odd and answered by the server.
    let ping = tokio::spawn(async move {
        let rtt = client.ping().await;
        (client, rtt)
    });
    assert_eq!(srv.recv().await, Some(Frame::Ping { id: 1 }));
    srv.send(&Frame::Ping { id: 1 }).await;
    let (client, rtt) = timeout(T, ping).await.expect("in time").expect("join");
    assert!(rtt.is_ok());

    // As a receiver the client gives the window back as it reads: a full 64 KiB window of
    // stdout comes back as WINDOW_UPDATEs on the stream and the session.
    let (mut r, _w) = a.split();
    let data = payload(65_536, 9);
    for chunk in data.chunks(16 * 1024) {
        srv.send(&Frame::Data {
            stream_id: 1,
            flags: 0,
            data: chunk.to_vec(),
        })
        .await;
    }
    let mut got = vec![0u8; data.len()];
    timeout(T, r.read_exact(&mut got))
        .await
        .expect("in time")
        .expect("read");
    assert!(got == data);
    let (mut stream, mut session) = (0u32, 0u32);
    while stream < 65_536 || session < 65_536 {
        match srv.recv().await.expect("frame") {
            Frame::WindowUpdate {
                stream_id: 1,
                delta,
            } => stream += delta,
            Frame::WindowUpdate {
                stream_id: 0,
                delta,
            } => session += delta,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((stream, session), (65_536, 65_536));

    // FIN in the SYN_REPLY ends the server's half of stream 3; with the client's FIN already
    // sent, the stream is done.
    let mut b = b;
    srv.send(&Frame::SynReply {
        stream_id: 3,
        flags: FLAG_FIN,
        headers: Vec::new(),
    })
    .await;
    timeout(T, b.wait_reply())
        .await
        .expect("in time")
        .expect("reply");
    let (mut br, _bw) = b.split();
    let mut none = Vec::new();
    br.read_to_end(&mut none).await.expect("eof");
    assert!(none.is_empty());

    // The server's GOAWAY: no new streams.
    srv.send(&Frame::GoAway {
        last_good: 3,
        status: 0,
    })
    .await;
    timeout(T, async {
        loop {
            match client.open(&[], false) {
                Err(SpdyError::Closed) => break,
                Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                Err(e) => panic!("{e:?}"),
            }
        }
    })
    .await
    .expect("open refused after GOAWAY");
}

/// A Go server (spdystream) never sends WINDOW_UPDATE: with the default
/// `SendFlowControl::Auto` the client still writes far past 64 KiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_writes_past_the_window_to_a_server_that_never_grants() {
    let (client, mut srv) = RawServer::start(Config::default(), 8 * 1024);
    let s = client
        .open(&[("streamtype", "stdin")], false)
        .expect("open");
    assert!(matches!(
        srv.recv().await,
        Some(Frame::SynStream { stream_id: 1, .. })
    ));
    srv.send(&Frame::SynReply {
        stream_id: 1,
        flags: 0,
        headers: Vec::new(),
    })
    .await;
    let input = payload(1 << 20, 4);
    let (_r, mut w) = s.split();
    let writer = {
        let input = input.clone();
        tokio::spawn(async move {
            w.write_all(&input).await.expect("write");
            w.shutdown().await.expect("fin");
            w
        })
    };
    let mut got = Vec::new();
    loop {
        match srv.recv().await.expect("frame") {
            Frame::Data {
                stream_id: 1,
                flags,
                data,
            } => {
                got.extend_from_slice(&data);
                if flags & FLAG_FIN != 0 {
                    break;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let _w = timeout(T, writer).await.expect("in time").expect("writer");
    assert!(got == input, "{} bytes of {}", got.len(), input.len());
    drop(client);
}

/// The same server, but the client is strict: it stops at the 64 KiB window.
#[tokio::test]
async fn strict_client_keeps_to_the_window() {
    let config = Config {
        send_flow_control: SendFlowControl::Enforce,
        ..Config::default()
    };
    let (client, mut srv) = RawServer::start(config, 1 << 20);
    let s = client.open(&[], false).expect("open");
    let (_r, mut w) = s.split();
    let writer = tokio::spawn(async move {
        let big = vec![1u8; 200 * 1024];
        w.write_all(&big).await
    });
    let mut sent = 0usize;
    let drained = timeout(Duration::from_millis(300), async {
        loop {
            match srv.recv().await {
                Some(Frame::Data { data, .. }) => sent += data.len(),
                Some(_) => {}
                None => break,
            }
        }
    })
    .await;
    assert!(drained.is_err(), "the client kept sending");
    assert_eq!(sent, 65_536);
    // A grant lets it go on.
    srv.send(&Frame::WindowUpdate {
        stream_id: 1,
        delta: 1 << 20,
    })
    .await;
    srv.send(&Frame::WindowUpdate {
        stream_id: 0,
        delta: 1 << 20,
    })
    .await;
    while sent < 200 * 1024 {
        match srv.recv().await.expect("frame") {
            Frame::Data { data, .. } => sent += data.len(),
            other => panic!("unexpected {other:?}"),
        }
    }
    timeout(T, writer)
        .await
        .expect("in time")
        .expect("join")
        .expect("write");
    drop(client);
}
