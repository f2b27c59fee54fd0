//! The session against a client built from the same codec, over `tokio::io::duplex`.

use std::sync::Arc;
use std::time::Duration;

use ingot_spdy::frame::{
    encode, read_frame, rst, Frame, HeaderCompressor, HeaderDecompressor, Limits, Setting,
    FLAG_FIN, SETTINGS_INITIAL_WINDOW_SIZE,
};
use ingot_spdy::{Config, Incoming, SendFlowControl, Session};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::sync::{Mutex, Semaphore};
use tokio::time::timeout;

const T: Duration = Duration::from_secs(20);

struct ClientTx {
    wr: WriteHalf<DuplexStream>,
    z: HeaderCompressor,
}

impl ClientTx {
    async fn send(&mut self, f: &Frame) {
        let mut b = Vec::new();
        encode(f, &mut self.z, &mut b).expect("encode");
        self.wr.write_all(&b).await.expect("client write");
    }
    async fn raw(&mut self, b: &[u8]) {
        self.wr.write_all(b).await.expect("client write");
    }
}

struct ClientRx {
    rd: ReadHalf<DuplexStream>,
    z: HeaderDecompressor,
}

impl ClientRx {
    /// The next frame; `None` at EOF.
    async fn recv(&mut self) -> Option<Frame> {
        let limits = Limits::default();
        let f = read_frame(&mut self.rd, &mut self.z, &limits);
        timeout(T, f).await.expect("frame in time").expect("frame")
    }
    /// The next frame that is not a WINDOW_UPDATE.
    async fn recv_skip_windows(&mut self) -> Option<Frame> {
        loop {
            match self.recv().await {
                Some(Frame::WindowUpdate { .. }) => continue,
                other => return other,
            }
        }
    }
}

fn start(config: Config, buf: usize) -> (Session, Incoming, ClientTx, ClientRx) {
    let (server, client) = tokio::io::duplex(buf);
    let (session, incoming) = Session::server_with(server, config).expect("session");
    let (rd, wr) = tokio::io::split(client);
    let tx = ClientTx {
        wr,
        z: HeaderCompressor::new().expect("compressor"),
    };
    (
        session,
        incoming,
        tx,
        ClientRx {
            rd,
            z: HeaderDecompressor::new(),
        },
    )
}

fn syn(id: u32, flags: u8, pairs: &[(&str, &str)]) -> Frame {
    Frame::SynStream {
        stream_id: id,
        associated_id: 0,
        priority: 0,
        flags,
        headers: pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
    }
}

fn payload(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| u8::try_from((i * 7 + i / 251) % 251).expect("byte"))
        .collect()
}

/// The server half of an exec: stdin echoed to stdout, then FIN on stdout and the error stream.
async fn exec_echo(mut incoming: Incoming) {
    let (mut stdin, mut stdout, mut error) = (None, None, None);
    while stdin.is_none() || stdout.is_none() || error.is_none() {
        let mut s = incoming.next().await.expect("stream");
        s.reply().await.expect("reply");
        match s.header("streamtype") {
            Some("stdin") => stdin = Some(s.split().0),
            Some("stdout") => stdout = Some(s.split().1),
            Some("error") => error = Some(s.split().1),
            other => panic!("unexpected stream type {other:?}"),
        }
    }
    let (mut stdin, mut stdout, mut error) = (
        stdin.expect("stdin"),
        stdout.expect("stdout"),
        error.expect("error"),
    );
    tokio::io::copy(&mut stdin, &mut stdout)
        .await
        .expect("echo");
    stdout.shutdown().await.expect("stdout fin");
    error.shutdown().await.expect("error fin");
}

#[derive(Default)]
struct Seen {
    replies: Vec<u32>,
    stdout: Vec<u8>,
    stdin_updates: u32,
    fins: Vec<u32>,
}

/// A client that does SPDY/3.1 flow control: it announces a 16 KiB receive window, keeps to the
/// server's windows for stdin, and grants stdout window as it reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_echo_one_mib_with_strict_flow_control() {
    let config = Config {
        send_flow_control: SendFlowControl::Enforce,
        ..Config::default()
    };
    let (session, incoming, mut tx, mut rx) = start(config, 8 * 1024);
    let server = tokio::spawn(exec_echo(incoming));

    const WINDOW: u32 = 16 * 1024;
    let entries = vec![Setting {
        flags: 0,
        id: SETTINGS_INITIAL_WINDOW_SIZE,
        value: WINDOW,
    }];
    tx.send(&Frame::Settings { flags: 0, entries }).await;
    tx.send(&syn(1, 0, &[("streamtype", "error"), ("requestid", "0")]))
        .await;
    tx.send(&syn(3, 0, &[("streamtype", "stdin"), ("requestid", "0")]))
        .await;
    tx.send(&syn(5, 0, &[("streamtype", "stdout"), ("requestid", "0")]))
        .await;
    let tx = Arc::new(Mutex::new(tx));

    let stream_window = Arc::new(Semaphore::new(65_536));
    let session_window = Arc::new(Semaphore::new(65_536));
    let input = payload(1 << 20);

    let sender = {
        let (tx, sw, ssw, input) = (
            tx.clone(),
            stream_window.clone(),
            session_window.clone(),
            input.clone(),
        );
        tokio::spawn(async move {
            for chunk in input.chunks(10_000) {
                let n = u32::try_from(chunk.len()).expect("len");
                sw.acquire_many(n).await.expect("stream window").forget();
                ssw.acquire_many(n).await.expect("session window").forget();
                let f = Frame::Data {
                    stream_id: 3,
                    flags: 0,
                    data: chunk.to_vec(),
                };
                tx.lock().await.send(&f).await;
            }
            tx.lock()
                .await
                .send(&Frame::Data {
                    stream_id: 3,
                    flags: FLAG_FIN,
                    data: Vec::new(),
                })
                .await;
        })
    };

    let mut seen = Seen::default();
    let mut unacked = 0u32;
    let mut outstanding = 0u32;
    let mut done = (false, false);
    while !(done.0 && done.1) {
        match rx.recv().await.expect("frame before EOF") {
            Frame::SynReply { stream_id, .. } => seen.replies.push(stream_id),
            Frame::WindowUpdate {
                stream_id: 3,
                delta,
            } => {
                seen.stdin_updates += 1;
                stream_window.add_permits(usize::try_from(delta).expect("delta"));
            }
            Frame::WindowUpdate {
                stream_id: 0,
                delta,
            } => session_window.add_permits(usize::try_from(delta).expect("delta")),
            Frame::Data {
                stream_id: 5,
                flags,
                data,
            } => {
                let n = u32::try_from(data.len()).expect("len");
                outstanding += n;
                assert!(
                    outstanding <= WINDOW,
                    "server overran the stdout window: {outstanding}"
                );
                seen.stdout.extend_from_slice(&data);
                unacked += n;
                if unacked >= WINDOW / 2 {
                    let mut t = tx.lock().await;
                    t.send(&Frame::WindowUpdate {
                        stream_id: 5,
                        delta: unacked,
                    })
                    .await;
                    t.send(&Frame::WindowUpdate {
                        stream_id: 0,
                        delta: unacked,
                    })
                    .await;
                    outstanding -= unacked;
                    unacked = 0;
                }
                if flags & FLAG_FIN != 0 {
                    seen.fins.push(5);
                    done.0 = true;
                }
            }
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                assert!(data.is_empty(), "data on stream {stream_id}");
                if flags & FLAG_FIN != 0 {
                    seen.fins.push(stream_id);
                    if stream_id == 1 {
                        done.1 = true;
                    }
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    timeout(T, sender)
        .await
        .expect("sender in time")
        .expect("sender");
    timeout(T, server)
        .await
        .expect("server in time")
        .expect("server");
    seen.replies.sort_unstable();
    assert_eq!(seen.replies, vec![1, 3, 5]);
    assert_eq!(seen.stdout.len(), input.len());
    assert!(seen.stdout == input, "echoed bytes differ");
    assert!(
        seen.stdin_updates >= 16,
        "server granted stdin window {} times",
        seen.stdin_updates
    );
    assert!(seen.fins.contains(&1) && seen.fins.contains(&5));
    timeout(T, session.goaway()).await.expect("goaway in time");
    // GOAWAY then EOF.
    assert!(matches!(
        rx.recv_skip_windows().await,
        Some(Frame::Data { .. }) | Some(Frame::GoAway { .. }) | None
    ));
}

/// A client like spdystream (every Go client): it ignores windows entirely, never sends
/// WINDOW_UPDATE, and writes stdin as fast as the connection takes it. Nothing may stall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_echo_one_mib_with_a_client_that_ignores_windows() {
    let (_session, incoming, mut tx, mut rx) = start(Config::default(), 4096);
    let server = tokio::spawn(exec_echo(incoming));
    tx.send(&syn(1, 0, &[("streamtype", "error")])).await;
    tx.send(&syn(3, 0, &[("streamtype", "stdin")])).await;
    tx.send(&syn(5, 0, &[("streamtype", "stdout")])).await;
    let input = payload(1 << 20);
    let sender = {
        let input = input.clone();
        tokio::spawn(async move {
            for chunk in input.chunks(32 * 1024) {
                tx.send(&Frame::Data {
                    stream_id: 3,
                    flags: 0,
                    data: chunk.to_vec(),
                })
                .await;
            }
            tx.send(&Frame::Data {
                stream_id: 3,
                flags: FLAG_FIN,
                data: Vec::new(),
            })
            .await;
            tx
        })
    };
    let mut out = Vec::new();
    let mut updates = 0;
    let mut done = (false, false);
    while !(done.0 && done.1) {
        match rx.recv().await.expect("frame") {
            Frame::WindowUpdate { .. } => updates += 1,
            Frame::SynReply { .. } => {}
            Frame::Data {
                stream_id: 5,
                flags,
                data,
            } => {
                out.extend_from_slice(&data);
                done.0 |= flags & FLAG_FIN != 0;
            }
            Frame::Data {
                stream_id: 1,
                flags,
                ..
            } => done.1 |= flags & FLAG_FIN != 0,
            Frame::Data { stream_id: 3, .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    let _tx = timeout(T, sender)
        .await
        .expect("sender in time")
        .expect("sender");
    timeout(T, server)
        .await
        .expect("server in time")
        .expect("server");
    assert!(
        out == input,
        "echoed {} bytes of {}",
        out.len(),
        input.len()
    );
    assert!(updates > 0, "windows are still granted to the client");
}

#[tokio::test]
async fn ping_is_answered_with_the_same_id() {
    let (_session, _incoming, mut tx, mut rx) = start(Config::default(), 4096);
    tx.send(&Frame::Ping { id: 1 }).await;
    assert_eq!(rx.recv().await, Some(Frame::Ping { id: 1 }));
    // An even id would answer a server ping; none was sent, so it is not echoed.
    tx.send(&Frame::Ping { id: 2 }).await;
    tx.send(&Frame::Ping { id: 0x7fff_ffff }).await;
    assert_eq!(rx.recv().await, Some(Frame::Ping { id: 0x7fff_ffff }));
}

#[tokio::test]
async fn fin_and_rst_from_the_client() {
    let (_session, mut incoming, mut tx, mut rx) = start(Config::default(), 4096);
    tx.send(&syn(1, 0, &[("streamtype", "stdin"), ("requestid", "7")]))
        .await;
    let mut s = incoming.next().await.expect("stream");
    assert_eq!(s.id, 1);
    assert_eq!(s.header("StreamType"), Some("stdin"));
    assert_eq!(s.header("requestid"), Some("7"));
    s.reply().await.expect("reply");
    assert!(matches!(
        rx.recv().await,
        Some(Frame::SynReply { stream_id: 1, .. })
    ));
    tx.send(&Frame::Data {
        stream_id: 1,
        flags: 0,
        data: b"abc".to_vec(),
    })
    .await;
    tx.send(&Frame::Data {
        stream_id: 1,
        flags: FLAG_FIN,
        data: b"def".to_vec(),
    })
    .await;
    let (mut r, mut w) = s.split();
    let mut got = Vec::new();
    timeout(T, r.read_to_end(&mut got))
        .await
        .expect("in time")
        .expect("read");
    assert_eq!(got, b"abcdef");
    // The server's half is still open after the client's FIN.
    w.write_all(b"out").await.expect("write");
    w.shutdown().await.expect("fin");
    assert_eq!(
        rx.recv_skip_windows().await,
        Some(Frame::Data {
            stream_id: 1,
            flags: 0,
            data: b"out".to_vec()
        })
    );
    assert_eq!(
        rx.recv_skip_windows().await,
        Some(Frame::Data {
            stream_id: 1,
            flags: FLAG_FIN,
            data: Vec::new()
        })
    );
    assert!(w.write_all(b"x").await.is_err(), "write after shutdown");

    // SYN_STREAM with FIN: nothing to read.
    tx.send(&syn(3, FLAG_FIN, &[("streamtype", "resize")]))
        .await;
    let s = incoming.next().await.expect("stream 3");
    let (mut r, _w) = s.split();
    let mut got = Vec::new();
    r.read_to_end(&mut got).await.expect("eof");
    assert!(got.is_empty());

    // RST from the client: the reader sees EOF, the writer an error.
    tx.send(&syn(5, 0, &[("streamtype", "stdout")])).await;
    let mut s = incoming.next().await.expect("stream 5");
    s.reply().await.expect("reply");
    let (mut r, mut w) = s.split();
    tx.send(&Frame::RstStream {
        stream_id: 5,
        status: rst::CANCEL,
    })
    .await;
    let mut got = Vec::new();
    timeout(T, r.read_to_end(&mut got))
        .await
        .expect("in time")
        .expect("eof on rst");
    assert!(w.write_all(b"late").await.is_err());
}

#[tokio::test]
async fn server_reset_and_stream_id_rules() {
    let (_session, mut incoming, mut tx, mut rx) = start(Config::default(), 4096);
    tx.send(&syn(1, 0, &[("streamtype", "data"), ("port", "80")]))
        .await;
    let s = incoming.next().await.expect("stream");
    s.reset();
    assert_eq!(
        rx.recv().await,
        Some(Frame::RstStream {
            stream_id: 1,
            status: rst::CANCEL
        })
    );
    // Even ids are the server's, and ids must increase: both reset as PROTOCOL_ERROR.
    tx.send(&syn(4, 0, &[])).await;
    assert_eq!(
        rx.recv().await,
        Some(Frame::RstStream {
            stream_id: 4,
            status: rst::PROTOCOL_ERROR
        })
    );
    tx.send(&syn(1, 0, &[])).await;
    assert_eq!(
        rx.recv().await,
        Some(Frame::RstStream {
            stream_id: 1,
            status: rst::PROTOCOL_ERROR
        })
    );
    // A stream dropped without a reply is refused.
    tx.send(&syn(7, 0, &[])).await;
    drop(incoming.next().await.expect("stream 7"));
    assert_eq!(
        rx.recv().await,
        Some(Frame::RstStream {
            stream_id: 7,
            status: rst::REFUSED_STREAM
        })
    );
}

#[tokio::test]
async fn goaway_from_the_client_ends_incoming() {
    let (_session, mut incoming, mut tx, mut rx) = start(Config::default(), 4096);
    tx.send(&syn(1, 0, &[("streamtype", "stdin")])).await;
    let s = incoming.next().await.expect("stream");
    tx.send(&Frame::GoAway {
        last_good: 0,
        status: 0,
    })
    .await;
    assert!(timeout(T, incoming.next())
        .await
        .expect("in time")
        .is_none());
    tx.send(&syn(3, 0, &[])).await;
    assert_eq!(
        rx.recv().await,
        Some(Frame::RstStream {
            stream_id: 3,
            status: rst::REFUSED_STREAM
        })
    );
    // The stream opened before GOAWAY still works.
    let (mut r, _w) = s.split();
    tx.send(&Frame::Data {
        stream_id: 1,
        flags: FLAG_FIN,
        data: b"ok".to_vec(),
    })
    .await;
    let mut got = Vec::new();
    r.read_to_end(&mut got).await.expect("read");
    assert_eq!(got, b"ok");
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

#[tokio::test]
async fn client_vanishing_mid_stream_ends_everything() {
    let m = tokio::runtime::Handle::current().metrics();
    let baseline = m.num_alive_tasks();
    let (session, mut incoming, mut tx, rx) = start(Config::default(), 4096);
    assert_eq!(m.num_alive_tasks(), baseline + 2);
    tx.send(&syn(1, 0, &[("streamtype", "stdin")])).await;
    tx.send(&syn(3, 0, &[("streamtype", "stdout")])).await;
    let mut stdin = incoming.next().await.expect("stdin");
    stdin.reply().await.expect("reply");
    let mut stdout = incoming.next().await.expect("stdout");
    stdout.reply().await.expect("reply");
    tx.send(&Frame::Data {
        stream_id: 1,
        flags: 0,
        data: b"partial".to_vec(),
    })
    .await;
    let (mut r, _) = stdin.split();
    let (_, mut w) = stdout.split();
    let mut first = [0u8; 7];
    r.read_exact(&mut first).await.expect("partial");
    // A writer blocked on a connection nobody reads: the duplex buffer is 4 KiB.
    let blocked = tokio::spawn(async move {
        let big = vec![0u8; 1 << 20];
        let mut res = Ok(());
        for _ in 0..64 {
            res = w.write_all(&big).await;
            if res.is_err() {
                break;
            }
        }
        res
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(tx);
    drop(rx);
    let mut rest = Vec::new();
    let read = timeout(T, r.read_to_end(&mut rest))
        .await
        .expect("reader ends");
    assert!(
        read.is_err(),
        "a stream cut short is an error, not a clean EOF"
    );
    let write = timeout(T, blocked)
        .await
        .expect("writer ends")
        .expect("join");
    assert!(write.is_err());
    assert!(timeout(T, incoming.next())
        .await
        .expect("incoming ends")
        .is_none());
    timeout(T, session.closed()).await.expect("closed");
    assert!(session.is_closed());
    wait_tasks(baseline).await;
}

#[tokio::test]
async fn dropping_the_session_sends_goaway_and_ends_tasks() {
    let m = tokio::runtime::Handle::current().metrics();
    let baseline = m.num_alive_tasks();
    let (session, mut incoming, mut tx, mut rx) = start(Config::default(), 4096);
    tx.send(&syn(1, 0, &[])).await;
    let s = incoming.next().await.expect("stream");
    tx.send(&syn(3, 0, &[])).await;
    tx.send(&Frame::Ping { id: 1 }).await;
    assert_eq!(rx.recv().await, Some(Frame::Ping { id: 1 }));
    drop(session);
    assert_eq!(
        rx_goaway(&mut rx).await,
        Some(Frame::GoAway {
            last_good: 3,
            status: 0
        })
    );
    assert_eq!(rx.recv().await, None);
    let (mut r, mut w) = s.split();
    let mut got = Vec::new();
    assert!(r.read_to_end(&mut got).await.is_err());
    assert!(w.write_all(b"x").await.is_err());
    assert!(incoming.next().await.is_none());
    wait_tasks(baseline).await;
}

/// The GOAWAY a dropped session sends, skipping what the server may have queued before it.
async fn rx_goaway(rx: &mut ClientRx) -> Option<Frame> {
    loop {
        match rx.recv().await {
            Some(Frame::GoAway { last_good, status }) => {
                return Some(Frame::GoAway { last_good, status })
            }
            Some(_) => continue,
            None => return None,
        }
    }
}

async fn expect_protocol_goaway(bytes: &[u8]) {
    let m = tokio::runtime::Handle::current().metrics();
    let baseline = m.num_alive_tasks();
    let (_session, mut incoming, mut tx, mut rx) = start(Config::default(), 1 << 16);
    tx.raw(bytes).await;
    assert_eq!(
        rx_goaway(&mut rx).await,
        Some(Frame::GoAway {
            last_good: 0,
            status: 1
        }),
        "{bytes:02x?}"
    );
    assert_eq!(rx.recv().await, None);
    assert!(incoming.next().await.is_none());
    wait_tasks(baseline).await;
}

#[tokio::test]
async fn malformed_input_gets_goaway_protocol_error() {
    // Control frame above the 256 KiB limit.
    expect_protocol_goaway(&[0x80, 3, 0, 6, 0, 0x10, 0, 0]).await;
    // Wrong version.
    expect_protocol_goaway(&[0x80, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1]).await;
    // PING with the wrong length.
    expect_protocol_goaway(&[0x80, 3, 0, 6, 0, 0, 0, 3, 0, 0, 1]).await;
    // SYN_STREAM whose header block is not zlib.
    expect_protocol_goaway(&[
        0x80, 3, 0, 1, 0, 0, 0, 14, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4,
    ])
    .await;
    // DATA on stream 0.
    expect_protocol_goaway(&[0, 0, 0, 0, 0, 0, 0, 1, 9]).await;
    // SETTINGS whose count does not match its length.
    expect_protocol_goaway(&[0x80, 3, 0, 4, 0, 0, 0, 4, 0, 0, 0, 9]).await;
}

#[tokio::test]
async fn random_bytes_never_panic_and_end_the_session() {
    let m = tokio::runtime::Handle::current().metrics();
    let baseline = m.num_alive_tasks();
    let mut seed = 0xdead_beefu32;
    for round in 0..40usize {
        let (session, _incoming, mut tx, mut rx) = start(Config::default(), 1 << 16);
        let mut bytes: Vec<u8> = (0..64 + round * 13)
            .map(|_| {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                seed.to_be_bytes()[0]
            })
            .collect();
        // Half the rounds start with a plausible control head so decoding goes deeper.
        if round % 2 == 0 {
            bytes[..4].copy_from_slice(&[0x80, 3, 0, u8::try_from(round % 10).expect("type")]);
            bytes[4] = 0;
            bytes[5] = 0;
        }
        tx.raw(&bytes).await;
        // Shutdown, not drop: the read half keeps the duplex open.
        tx.wr.shutdown().await.expect("shutdown");
        while rx.recv_or_err().await {}
        timeout(T, session.closed()).await.expect("closed");
    }
    wait_tasks(baseline).await;
}

impl ClientRx {
    /// Reads frames until EOF or a frame the client cannot parse; true while it gets frames.
    async fn recv_or_err(&mut self) -> bool {
        let limits = Limits::default();
        let f = read_frame(&mut self.rd, &mut self.z, &limits);
        matches!(timeout(T, f).await.expect("in time"), Ok(Some(_)))
    }
}

#[tokio::test]
async fn larger_receive_window_is_announced() {
    let config = Config {
        recv_window: 1 << 20,
        session_recv_window: 1 << 22,
        ..Config::default()
    };
    let (_session, _incoming, _tx, mut rx) = start(config, 4096);
    let want = Setting {
        flags: 0,
        id: SETTINGS_INITIAL_WINDOW_SIZE,
        value: 1 << 20,
    };
    assert_eq!(
        rx.recv().await,
        Some(Frame::Settings {
            flags: 0,
            entries: vec![want]
        })
    );
    assert_eq!(
        rx.recv().await,
        Some(Frame::WindowUpdate {
            stream_id: 0,
            delta: (1 << 22) - 65_536
        })
    );
}

#[tokio::test]
async fn close_gives_up_on_a_client_that_never_reads() {
    let m = tokio::runtime::Handle::current().metrics();
    let baseline = m.num_alive_tasks();
    let config = Config {
        close_timeout: Duration::from_millis(200),
        ..Config::default()
    };
    let (session, mut incoming, mut tx, _rx) = start(config, 1024);
    tx.send(&syn(1, 0, &[("streamtype", "stdout")])).await;
    let mut s = incoming.next().await.expect("stream");
    s.reply().await.expect("reply");
    let (_r, mut w) = s.split();
    // Fills the duplex and the write queue; the client reads nothing.
    let big = vec![7u8; 128 * 1024];
    w.write_all(&big).await.expect("queued");
    let started = tokio::time::Instant::now();
    timeout(T, session.goaway()).await.expect("goaway gives up");
    assert!(started.elapsed() >= Duration::from_millis(150));
    wait_tasks(baseline).await;
    assert!(w.write_all(b"x").await.is_err());
}

#[tokio::test]
async fn a_dropped_reader_never_stalls_the_session() {
    let (_session, mut incoming, mut tx, mut rx) = start(Config::default(), 1 << 16);
    tx.send(&syn(1, 0, &[("streamtype", "resize")])).await;
    let mut s = incoming.next().await.expect("stream");
    s.reply().await.expect("reply");
    let (r, _w) = s.split();
    drop(r);
    let reader = tokio::spawn(async move {
        let mut granted = 0u64;
        loop {
            match rx.recv().await {
                Some(Frame::WindowUpdate {
                    stream_id: 1,
                    delta,
                }) => granted += u64::from(delta),
                Some(Frame::Ping { id: 9 }) => return granted,
                Some(_) => {}
                None => panic!("EOF before the ping answer"),
            }
        }
    });
    // 1 MiB the app will never read, well past the 64 KiB window, then a PING.
    for _ in 0..32 {
        tx.send(&Frame::Data {
            stream_id: 1,
            flags: 0,
            data: vec![1u8; 32 * 1024],
        })
        .await;
    }
    tx.send(&Frame::Ping { id: 9 }).await;
    let granted = timeout(T, reader)
        .await
        .expect("ping answered")
        .expect("join");
    // Discarded data still reopens the stream window for a client that does flow control.
    assert_eq!(granted, 1 << 20);
}
