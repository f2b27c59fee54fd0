//! The session: one reader task and one writer task per connection, the stream table they share,
//! and the handles ([`Stream`], [`StreamReader`], [`StreamWriter`]) the application holds.
//!
//! Both roles run the same tasks; the [`Role`] only decides which stream and ping ids are ours
//! (a client's are odd, a server's even) and so which SYN_STREAMs and PINGs come from the peer.
//!
//! Frames are encoded (and header blocks compressed) under the session lock at the moment they
//! are queued, and the writer task sends the queue in order, so the zlib stream the peer
//! decodes sees blocks in exactly the order they were compressed.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{mpsc, oneshot, watch, Notify, Semaphore};
use tokio::time::Instant;

use crate::frame::{
    self, decode_control, goaway, rst, Frame, FrameHead, HeaderCompressor, HeaderDecompressor,
    Headers, FLAG_FIN, FLAG_UNIDIRECTIONAL, MAX_WINDOW, SETTINGS_INITIAL_WINDOW_SIZE, VERSION,
};
use crate::{Config, Result, SendFlowControl, SpdyError};

/// Largest DATA payload we send in one frame.
const SEND_CHUNK: usize = 32 * 1024;
/// Largest piece of an incoming DATA frame read before handing it to its stream, so a 16 MiB
/// frame never sits in memory whole.
const RECV_CHUNK: usize = 16 * 1024;
/// Queued bytes above which the reader stops answering PINGs etc. until the writer catches up:
/// a peer that floods control frames but never reads must not grow the queue without bound.
const CONTROL_BACKLOG: usize = 64 * 1024;
/// Largest stream id (31 bits).
const MAX_STREAM_ID: u32 = 0x7fff_ffff;

/// Which end of the connection this session is. It decides whose ids are whose: a client opens
/// odd streams and sends odd pings, a server even ones; everything else is shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Server,
    Client,
}

impl Role {
    /// The first id of a stream or ping this side originates.
    fn first_id(self) -> u32 {
        match self {
            Role::Server => 2,
            Role::Client => 1,
        }
    }

    /// Whether `id` (a stream or ping id) is one this side originates.
    fn is_local(self, id: u32) -> bool {
        id % 2 == self.first_id() % 2
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// GOAWAY queued; the writer flushes the queue and ends the connection.
    Closing,
    Closed,
}

enum Recv {
    Data(Vec<u8>),
    Eof,
    /// The peer reset a stream this side opened.
    Reset,
}

/// The peer's answer to a SYN_STREAM this side sent.
enum Reply {
    Headers(Headers),
    Reset(u32),
}

/// Where a [`Stream`] stands with the peer's SYN_REPLY.
enum ReplyWait {
    /// A stream the peer opened: nothing to wait for.
    None,
    Pending(oneshot::Receiver<Reply>),
    Got(Headers),
    Reset(u32),
    /// The stream ended (locally, or with the session) before a reply came.
    Gone,
}

struct Queued {
    bytes: Vec<u8>,
    data: usize,
}

struct StreamState {
    send_window: i64,
    send_waker: Option<Waker>,
    replied: bool,
    local_fin: bool,
    remote_fin: bool,
    reader_dropped: bool,
    writer_dropped: bool,
    /// Where the reader task delivers DATA; `None` once the peer finished or the app dropped
    /// the reader. The semaphore counts free buffer bytes (the receive window).
    recv: Option<(mpsc::UnboundedSender<Recv>, Arc<Semaphore>)>,
    /// For a stream this side opened: where the peer's SYN_REPLY (or RST_STREAM) goes.
    reply: Option<oneshot::Sender<Reply>>,
}

/// How a new stream starts, whoever opened it.
struct Setup {
    /// The peer's half is already over (SYN_STREAM with FIN from the peer).
    remote_fin: bool,
    /// Our half is already over (we sent FIN, or the peer's stream is unidirectional).
    local_fin: bool,
    /// No SYN_REPLY is owed by us: the stream is ours, or unidirectional.
    replied: bool,
    reply: Option<oneshot::Sender<Reply>>,
}

struct Inner {
    role: Role,
    state: State,
    z: HeaderCompressor,
    queue: VecDeque<Queued>,
    queued_bytes: usize,
    queued_data: usize,
    data_waiters: Vec<Waker>,
    streams: HashMap<u32, StreamState>,
    initial_send_window: i64,
    session_send_window: i64,
    peer_flow_control: bool,
    /// The last stream id the peer opened (GOAWAY's last-good id).
    last_seen: u32,
    /// Id for the next stream this side opens; above [`MAX_STREAM_ID`] once they are used up.
    next_stream_id: u32,
    /// Id for the next PING this side sends.
    next_ping_id: u32,
    /// PINGs this side sent, by id, awaiting the peer's echo.
    pings: HashMap<u32, oneshot::Sender<()>>,
    /// The peer sent GOAWAY: it takes no more streams.
    peer_goaway: bool,
}

pub(crate) struct Shared {
    inner: Mutex<Inner>,
    writer_wake: Notify,
    drained: Notify,
    dead: watch::Sender<bool>,
    /// When a closing session gives up flushing; a watch so a write already blocked sees it.
    deadline: watch::Sender<Option<Instant>>,
    config: Config,
}

fn register(wakers: &mut Vec<Waker>, cx: &Context<'_>) {
    if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
        wakers.push(cx.waker().clone());
    }
}

fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Inner {
    fn push(&mut self, frame: &Frame) {
        let data = match frame {
            Frame::Data { data, .. } => data.len(),
            _ => 0,
        };
        let mut bytes = Vec::new();
        // Only header-block compression can fail here, and then the zlib stream is unusable:
        // end the session rather than send frames the peer cannot decode.
        if frame::encode(frame, &mut self.z, &mut bytes).is_err() {
            self.fail_all();
            return;
        }
        self.queued_bytes += bytes.len();
        self.queued_data += data;
        self.queue.push_back(Queued { bytes, data });
    }

    fn ensure_replied(&mut self, id: u32) {
        let replied = match self.streams.get_mut(&id) {
            Some(st) if !st.replied => {
                st.replied = true;
                false
            }
            _ => true,
        };
        if !replied {
            // spdystream replies to every accepted stream with an empty header block.
            self.push(&Frame::SynReply {
                stream_id: id,
                flags: 0,
                headers: Vec::new(),
            });
        }
    }

    /// Drops a stream once neither side can use it any more.
    fn maybe_remove(&mut self, id: u32) {
        let done = self.streams.get(&id).is_some_and(|st| {
            (st.local_fin || st.writer_dropped) && (st.remote_fin || st.reader_dropped)
        });
        if done {
            self.remove(id);
        }
    }

    /// The peer sent RST_STREAM. Its own stream just ends (its reader sees EOF, as with
    /// spdystream); one this side opened fails: a pending reply and the reader see the reset.
    fn reset_by_peer(&mut self, id: u32, status: u32) {
        let local = self.role.is_local(id);
        if let Some(st) = self.streams.get_mut(&id) {
            if let Some(tx) = st.reply.take() {
                let _ = tx.send(Reply::Reset(status));
            }
            if local {
                if let Some((tx, sem)) = st.recv.take() {
                    let _ = tx.send(Recv::Reset);
                    sem.close();
                }
            }
        }
        self.remove(id);
    }

    fn remove(&mut self, id: u32) {
        if let Some(mut st) = self.streams.remove(&id) {
            if let Some((tx, sem)) = st.recv.take() {
                let _ = tx.send(Recv::Eof);
                sem.close();
            }
            if let Some(w) = st.send_waker.take() {
                w.wake();
            }
        }
    }

    fn wake_senders(&mut self) {
        for st in self.streams.values_mut() {
            if let Some(w) = st.send_waker.take() {
                w.wake();
            }
        }
        for w in self.data_waiters.drain(..) {
            w.wake();
        }
    }

    /// Stops delivering to every stream reader: the ones not finished see an error.
    fn cut_readers(&mut self) {
        for st in self.streams.values_mut() {
            if let Some((_, sem)) = st.recv.take() {
                sem.close();
            }
        }
    }

    /// The connection is over: nothing more is sent or received.
    fn fail_all(&mut self) {
        self.state = State::Closed;
        self.queue.clear();
        self.queued_bytes = 0;
        self.queued_data = 0;
        self.cut_readers();
        self.wake_senders();
        self.streams.clear();
        self.pings.clear();
    }

    /// Queues GOAWAY and stops taking writes; true if this started the close.
    fn begin_close(&mut self, status: u32) -> bool {
        if self.state == State::Open {
            let last_good = self.last_seen;
            self.push(&Frame::GoAway { last_good, status });
            if self.state == State::Open {
                self.state = State::Closing;
            }
            self.wake_senders();
            return true;
        }
        false
    }

    fn enforcing(&self, mode: SendFlowControl) -> bool {
        match mode {
            SendFlowControl::Enforce => true,
            SendFlowControl::Ignore => false,
            SendFlowControl::Auto => self.peer_flow_control,
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock only means another thread panicked mid-update; the state is still
        // the best there is, and this crate must not turn that into a second panic.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the connection dead and wakes everyone waiting on it.
    fn kill(&self) {
        self.lock().fail_all();
        self.dead.send_replace(true);
        self.writer_wake.notify_one();
        self.drained.notify_waiters();
    }

    fn begin_close(&self, status: u32) {
        if self.lock().begin_close(status) {
            self.deadline
                .send_replace(Some(Instant::now() + self.config.close_timeout));
        }
        self.writer_wake.notify_one();
    }
}

/// A SPDY/3.1 session over an upgraded connection, in either role.
///
/// [`Session::server`] hands out the streams the client opens ([`Incoming`]);
/// [`Session::client`] opens streams itself ([`Session::open`]). Either side can open streams
/// and send PINGs ([`Session::ping`]); a client session refuses streams the server opens.
///
/// Dropping it closes the session (GOAWAY, flush, close) and ends every stream, so keep it
/// alive as long as any stream is in use.
pub struct Session {
    shared: Arc<Shared>,
}

/// The streams the client opens (SYN_STREAM), in order. Ends when the client sends GOAWAY or the
/// session ends. Dropping it refuses later streams.
pub struct Incoming {
    rx: mpsc::UnboundedReceiver<Stream>,
    dead: watch::Receiver<bool>,
}

impl Incoming {
    /// The next stream the client opened.
    pub async fn next(&mut self) -> Option<Stream> {
        // Streams still queued when the connection ended are of no use to anyone.
        let stream = self.rx.recv().await?;
        if *self.dead.borrow() {
            self.rx.close();
            return None;
        }
        Some(stream)
    }
}

/// Removes an unanswered PING when [`Session::ping`] is dropped or done.
struct PingGuard<'a> {
    shared: &'a Shared,
    id: u32,
}

impl Drop for PingGuard<'_> {
    fn drop(&mut self) {
        self.shared.lock().pings.remove(&self.id);
    }
}

impl Session {
    /// Starts a server session with [`Config::default`] on the current tokio runtime, whose
    /// timer must be enabled.
    pub fn server<IO>(io: IO) -> Result<(Session, Incoming)>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        Session::server_with(io, Config::default())
    }

    /// Starts a server session with `config`.
    pub fn server_with<IO>(io: IO, config: Config) -> Result<(Session, Incoming)>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (tx, rx) = mpsc::unbounded_channel();
        let session = Session::start(io, config, Role::Server, Some(tx))?;
        let dead = session.shared.dead.subscribe();
        Ok((session, Incoming { rx, dead }))
    }

    /// Starts a client session with [`Config::default`] on the current tokio runtime, whose
    /// timer must be enabled: it opens streams with [`Session::open`] (ids 1, 3, 5, ...), answers
    /// the server's PINGs and refuses streams the server opens (RST_STREAM(REFUSED_STREAM)), as
    /// Kubernetes streaming servers never open any.
    pub fn client<IO>(io: IO) -> Result<Session>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        Session::client_with(io, Config::default())
    }

    /// Starts a client session with `config`.
    pub fn client_with<IO>(io: IO, config: Config) -> Result<Session>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        Session::start(io, config, Role::Client, None)
    }

    fn start<IO>(
        io: IO,
        config: Config,
        role: Role,
        incoming: Option<mpsc::UnboundedSender<Stream>>,
    ) -> Result<Session>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| SpdyError::NoRuntime)?;
        let recv_window = config.recv_window.clamp(1, MAX_WINDOW);
        let session_window = config.session_recv_window.clamp(1, MAX_WINDOW);
        let config = Config {
            recv_window,
            session_recv_window: session_window,
            ..config
        };
        let mut inner = Inner {
            role,
            state: State::Open,
            z: HeaderCompressor::new()?,
            queue: VecDeque::new(),
            queued_bytes: 0,
            queued_data: 0,
            data_waiters: Vec::new(),
            streams: HashMap::new(),
            initial_send_window: i64::from(frame::DEFAULT_WINDOW),
            session_send_window: i64::from(frame::DEFAULT_WINDOW),
            peer_flow_control: false,
            last_seen: 0,
            next_stream_id: role.first_id(),
            next_ping_id: role.first_id(),
            pings: HashMap::new(),
            peer_goaway: false,
        };
        if recv_window != frame::DEFAULT_WINDOW {
            let entry = frame::Setting {
                flags: 0,
                id: SETTINGS_INITIAL_WINDOW_SIZE,
                value: recv_window,
            };
            inner.push(&Frame::Settings {
                flags: 0,
                entries: vec![entry],
            });
        }
        if session_window > frame::DEFAULT_WINDOW {
            let delta = session_window - frame::DEFAULT_WINDOW;
            inner.push(&Frame::WindowUpdate {
                stream_id: 0,
                delta,
            });
        }
        let (dead, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            inner: Mutex::new(inner),
            writer_wake: Notify::new(),
            drained: Notify::new(),
            dead,
            deadline: watch::channel(None).0,
            config,
        });
        let (rd, wr) = tokio::io::split(io);
        handle.spawn(writer_task(shared.clone(), wr));
        handle.spawn(reader_task(shared.clone(), rd, incoming));
        Ok(Session { shared })
    }

    /// Opens a stream: queues a SYN_STREAM carrying `headers` (e.g. `streamtype: stdout`,
    /// `requestid: 0`; names are sent lowercase, a repeated name once with its values
    /// NUL-joined), with FIN if `fin`, i.e. this side will send nothing on it.
    ///
    /// Returns at once, without waiting for the peer; [`Stream::wait_reply`] waits for its
    /// SYN_REPLY. DATA may be written before that. Stream ids are odd on a client session and
    /// even on a server one, increasing.
    ///
    /// Fails with [`SpdyError::Closed`] once the session is closing or the peer sent GOAWAY, and
    /// with [`SpdyError::Protocol`] once the 31-bit stream ids are used up.
    pub fn open(&self, headers: &[(&str, &str)], fin: bool) -> Result<Stream> {
        let headers: Headers = headers
            .iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), (*v).to_string()))
            .collect();
        let shared = &self.shared;
        let mut inner = shared.lock();
        if inner.state != State::Open || inner.peer_goaway {
            return Err(SpdyError::Closed);
        }
        let id = inner.next_stream_id;
        if id > MAX_STREAM_ID {
            return Err(SpdyError::Protocol("stream ids used up".into()));
        }
        inner.next_stream_id = id + 2;
        inner.push(&Frame::SynStream {
            stream_id: id,
            associated_id: 0,
            priority: 0,
            flags: if fin { FLAG_FIN } else { 0 },
            headers: headers.clone(),
        });
        if inner.state != State::Open {
            // Compressing the header block failed and ended the session.
            return Err(SpdyError::Closed);
        }
        let (reply_tx, reply_rx) = oneshot::channel();
        let setup = Setup {
            remote_fin: false,
            local_fin: fin,
            replied: true,
            reply: Some(reply_tx),
        };
        let mut stream = new_stream(shared, &mut inner, id, headers, setup);
        stream.reply = ReplyWait::Pending(reply_rx);
        drop(inner);
        shared.writer_wake.notify_one();
        Ok(stream)
    }

    /// Sends a PING and waits for the peer to echo it; returns the round trip. Ping ids are odd
    /// on a client session and even on a server one. Fails with [`SpdyError::Closed`] if the
    /// session ends first; a peer that never answers keeps it waiting (use a timeout).
    pub async fn ping(&self) -> Result<Duration> {
        let shared = &*self.shared;
        let (rx, _guard) = {
            let mut inner = shared.lock();
            if inner.state != State::Open {
                return Err(SpdyError::Closed);
            }
            let id = inner.next_ping_id;
            let first = inner.role.first_id();
            inner.next_ping_id = id.checked_add(2).unwrap_or(first);
            let (tx, rx) = oneshot::channel();
            inner.pings.insert(id, tx);
            inner.push(&Frame::Ping { id });
            (rx, PingGuard { shared, id })
        };
        let started = Instant::now();
        shared.writer_wake.notify_one();
        rx.await.map_err(|_| SpdyError::Closed)?;
        Ok(started.elapsed())
    }

    /// Sends GOAWAY, flushes what is queued and closes the connection; returns once both tasks
    /// are done with it (or the close timeout cut the flush short).
    pub async fn goaway(&self) {
        self.shared.begin_close(goaway::OK);
        self.closed().await;
    }

    /// Resolves once the connection is over, for whatever reason.
    pub async fn closed(&self) {
        let mut rx = self.shared.dead.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }

    /// Whether the connection is over.
    pub fn is_closed(&self) -> bool {
        *self.shared.dead.borrow()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.shared.begin_close(goaway::OK);
    }
}

/// Registers a new stream in the table and builds its handles.
fn new_stream(
    shared: &Arc<Shared>,
    inner: &mut Inner,
    id: u32,
    headers: Headers,
    setup: Setup,
) -> Stream {
    let window = usize::try_from(shared.config.recv_window).unwrap_or(RECV_CHUNK);
    let budget = Arc::new(Semaphore::new(window));
    let (tx, rx) = mpsc::unbounded_channel();
    if setup.remote_fin {
        let _ = tx.send(Recv::Eof);
    }
    let initial = inner.initial_send_window;
    inner.streams.insert(
        id,
        StreamState {
            send_window: initial,
            send_waker: None,
            replied: setup.replied,
            local_fin: setup.local_fin,
            remote_fin: setup.remote_fin,
            reader_dropped: false,
            writer_dropped: false,
            recv: if setup.remote_fin {
                None
            } else {
                Some((tx, budget.clone()))
            },
            reply: setup.reply,
        },
    );
    Stream {
        id,
        headers,
        reply: ReplyWait::None,
        reader: StreamReader {
            shared: shared.clone(),
            id,
            rx,
            budget,
            chunk: Vec::new(),
            pos: 0,
            eof: false,
            reset: false,
            unacked: 0,
        },
        writer: StreamWriter {
            shared: shared.clone(),
            id,
            finished: setup.local_fin,
        },
    }
}

/// A stream: one the peer opened (from [`Incoming`]; reply, or write, which replies first), or
/// one this side opened with [`Session::open`] (wait for the peer's reply with
/// [`Stream::wait_reply`]). Then [`Stream::split`] it.
pub struct Stream {
    /// Stream id: odd if the client opened it, even if the server did.
    pub id: u32,
    /// The SYN_STREAM headers (the peer's, or the ones this side sent), names lowercase, e.g.
    /// `streamtype` (`stdin`, `stdout`, `stderr`, `error`, `resize`, `data`), `port`,
    /// `requestid`.
    pub headers: Vec<(String, String)>,
    reply: ReplyWait,
    reader: StreamReader,
    writer: StreamWriter,
}

impl Stream {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Accepts a stream the peer opened with an empty SYN_REPLY, as spdystream does; Go clients
    /// wait for it and drop DATA that arrives before it. Idempotent, and a no-op on a stream this
    /// side opened.
    pub async fn reply(&mut self) -> Result<()> {
        let shared = &self.writer.shared;
        {
            let mut inner = shared.lock();
            if inner.state != State::Open {
                return Err(SpdyError::Closed);
            }
            if !inner.streams.contains_key(&self.id) {
                return Err(SpdyError::Reset);
            }
            inner.ensure_replied(self.id);
        }
        shared.writer_wake.notify_one();
        Ok(())
    }

    /// Waits for the peer's SYN_REPLY to a stream this side opened and returns its headers
    /// (Kubernetes servers send none). Fails with [`SpdyError::ResetByPeer`] if the peer reset
    /// the stream instead, [`SpdyError::Closed`] if the session ended first, and
    /// [`SpdyError::Reset`] if the stream ended otherwise (e.g. it was reset locally). Returns
    /// no headers at once for a stream the peer opened. Idempotent and cancel-safe.
    pub async fn wait_reply(&mut self) -> Result<Headers> {
        if let ReplyWait::Pending(rx) = &mut self.reply {
            self.reply = match rx.await {
                Ok(Reply::Headers(h)) => ReplyWait::Got(h),
                Ok(Reply::Reset(status)) => ReplyWait::Reset(status),
                Err(_) => ReplyWait::Gone,
            };
        }
        match &self.reply {
            ReplyWait::None | ReplyWait::Pending(_) => Ok(Vec::new()),
            ReplyWait::Got(h) => Ok(h.clone()),
            ReplyWait::Reset(status) => Err(SpdyError::ResetByPeer { status: *status }),
            ReplyWait::Gone => {
                if self.writer.shared.lock().state == State::Closed {
                    Err(SpdyError::Closed)
                } else {
                    Err(SpdyError::Reset)
                }
            }
        }
    }

    /// The receiving and sending halves.
    pub fn split(self) -> (StreamReader, StreamWriter) {
        (self.reader, self.writer)
    }

    /// Aborts the stream with RST_STREAM(CANCEL).
    pub fn reset(self) {
        self.writer.reset_with(rst::CANCEL);
    }

    fn refuse(self) {
        self.writer.reset_with(rst::REFUSED_STREAM);
    }
}

/// What the peer sends on a stream. EOF when the peer sends FIN, or resets a stream it opened;
/// an error ([`io::ErrorKind::ConnectionReset`]) when it resets a stream this side opened, and
/// an error when the connection ends first.
///
/// Read it or drop it: at most the receive window is buffered per stream, and once a peer that
/// ignores windows (spdystream) fills it, the session stops reading the connection until this
/// reader makes room. A dropped reader's data is discarded. As it is read, the window is given
/// back to the peer with WINDOW_UPDATE, so a peer that keeps to windows never stalls.
pub struct StreamReader {
    shared: Arc<Shared>,
    id: u32,
    rx: mpsc::UnboundedReceiver<Recv>,
    budget: Arc<Semaphore>,
    chunk: Vec<u8>,
    pos: usize,
    eof: bool,
    /// The peer reset the stream (one this side opened).
    reset: bool,
    unacked: usize,
}

impl StreamReader {
    /// Stream id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Returns consumed bytes to the buffer and, every half window, to the peer.
    fn consumed(&mut self, n: usize) {
        self.budget.add_permits(n);
        self.unacked += n;
        let window = usize::try_from(self.shared.config.recv_window).unwrap_or(usize::MAX);
        if self.unacked >= window / 2 {
            self.send_update();
        }
    }

    fn send_update(&mut self) {
        let delta = u32::try_from(self.unacked)
            .unwrap_or(MAX_WINDOW)
            .min(MAX_WINDOW);
        self.unacked = 0;
        if delta == 0 {
            return;
        }
        let mut inner = self.shared.lock();
        let wants = inner.state == State::Open
            && inner.streams.get(&self.id).is_some_and(|st| !st.remote_fin);
        if wants {
            inner.push(&Frame::WindowUpdate {
                stream_id: self.id,
                delta,
            });
            drop(inner);
            self.shared.writer_wake.notify_one();
        }
    }
}

impl AsyncRead for StreamReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.pos < this.chunk.len() {
                let n = buf.remaining().min(this.chunk.len() - this.pos);
                buf.put_slice(&this.chunk[this.pos..this.pos + n]);
                this.pos += n;
                if this.pos == this.chunk.len() {
                    this.chunk = Vec::new();
                    this.pos = 0;
                }
                this.consumed(n);
                return Poll::Ready(Ok(()));
            }
            if this.reset {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "spdy stream reset by the peer",
                )));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            match this.rx.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Recv::Data(v))) => {
                    this.chunk = v;
                    this.pos = 0;
                }
                Poll::Ready(Some(Recv::Eof)) => this.eof = true,
                Poll::Ready(Some(Recv::Reset)) => this.reset = true,
                Poll::Ready(None) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "spdy session ended before the stream did",
                    )))
                }
            }
        }
    }
}

impl Drop for StreamReader {
    fn drop(&mut self) {
        self.budget.close();
        // Whatever was delivered but not read counts as consumed, so a peer that does flow
        // control is not left with a window that never reopens.
        let mut unread = self.chunk.len() - self.pos;
        while let Ok(msg) = self.rx.try_recv() {
            if let Recv::Data(v) = msg {
                unread += v.len();
            }
        }
        self.unacked += unread;
        self.send_update();
        let mut inner = self.shared.lock();
        if let Some(st) = inner.streams.get_mut(&self.id) {
            st.reader_dropped = true;
            st.recv = None;
        }
        inner.maybe_remove(self.id);
    }
}

/// Sending on a stream. `shutdown` sends FIN (an empty DATA frame); dropping it without one
/// sends FIN too, or RST_STREAM(REFUSED_STREAM) if it is a stream the peer opened that was never
/// replied to. Writes keep to the peer's windows as [`SendFlowControl`] says.
///
/// [`SendFlowControl`]: crate::SendFlowControl
pub struct StreamWriter {
    shared: Arc<Shared>,
    id: u32,
    finished: bool,
}

impl StreamWriter {
    /// Stream id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Aborts the stream with RST_STREAM(CANCEL).
    pub fn reset(self) {
        self.reset_with(rst::CANCEL);
    }

    fn reset_with(mut self, status: u32) {
        self.finished = true;
        let mut inner = self.shared.lock();
        if inner.state != State::Closed && inner.streams.contains_key(&self.id) {
            inner.push(&Frame::RstStream {
                stream_id: self.id,
                status,
            });
        }
        inner.remove(self.id);
        drop(inner);
        self.shared.writer_wake.notify_one();
    }
}

fn closed_err() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "spdy session closed")
}

fn reset_err() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionReset,
        "spdy stream reset or finished",
    )
}

impl AsyncWrite for StreamWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.finished {
            return Poll::Ready(Err(reset_err()));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let shared = &this.shared;
        let mut inner = shared.lock();
        if inner.state != State::Open {
            return Poll::Ready(Err(closed_err()));
        }
        if inner.queued_data >= shared.config.max_write_queue {
            register(&mut inner.data_waiters, cx);
            return Poll::Pending;
        }
        let enforcing = inner.enforcing(shared.config.send_flow_control);
        let session_window = inner.session_send_window;
        let Some(st) = inner.streams.get_mut(&this.id) else {
            return Poll::Ready(Err(reset_err()));
        };
        if st.local_fin {
            return Poll::Ready(Err(reset_err()));
        }
        let mut n = buf.len().min(SEND_CHUNK);
        if enforcing {
            let window = st.send_window.min(session_window);
            if window <= 0 {
                st.send_waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            n = n.min(usize::try_from(window).unwrap_or(usize::MAX));
        }
        st.send_window -= to_i64(n);
        inner.session_send_window -= to_i64(n);
        inner.ensure_replied(this.id);
        inner.push(&Frame::Data {
            stream_id: this.id,
            flags: 0,
            data: buf[..n].to_vec(),
        });
        drop(inner);
        shared.writer_wake.notify_one();
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Queued frames are the writer task's to send; what matters here is whether they can be.
        if !self.finished && self.shared.lock().state == State::Closed {
            return Poll::Ready(Err(closed_err()));
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.finished {
            return Poll::Ready(Ok(()));
        }
        let mut inner = this.shared.lock();
        if inner.state == State::Closed {
            return Poll::Ready(Err(closed_err()));
        }
        let Some(st) = inner.streams.get_mut(&this.id) else {
            return Poll::Ready(Err(reset_err()));
        };
        this.finished = true;
        if !st.local_fin {
            st.local_fin = true;
            inner.ensure_replied(this.id);
            inner.push(&Frame::Data {
                stream_id: this.id,
                flags: FLAG_FIN,
                data: Vec::new(),
            });
        }
        inner.maybe_remove(this.id);
        drop(inner);
        this.shared.writer_wake.notify_one();
        Poll::Ready(Ok(()))
    }
}

impl Drop for StreamWriter {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut inner = self.shared.lock();
        if inner.state == State::Closed {
            return;
        }
        let (replied, local_fin) = match inner.streams.get_mut(&self.id) {
            Some(st) => {
                st.writer_dropped = true;
                (st.replied, st.local_fin)
            }
            None => return,
        };
        if !replied {
            inner.push(&Frame::RstStream {
                stream_id: self.id,
                status: rst::REFUSED_STREAM,
            });
            inner.remove(self.id);
        } else {
            if !local_fin {
                inner.push(&Frame::Data {
                    stream_id: self.id,
                    flags: FLAG_FIN,
                    data: Vec::new(),
                });
                if let Some(st) = inner.streams.get_mut(&self.id) {
                    st.local_fin = true;
                }
            }
            inner.maybe_remove(self.id);
        }
        drop(inner);
        self.shared.writer_wake.notify_one();
    }
}

async fn writer_task<W: AsyncWrite + Unpin>(shared: Arc<Shared>, mut wr: W) {
    let mut dead = shared.dead.subscribe();
    let mut deadline = shared.deadline.subscribe();
    let mut batch = Vec::new();
    loop {
        let notified = shared.writer_wake.notified();
        let (bytes, data) = {
            let mut inner = shared.lock();
            if inner.state == State::Closed {
                break;
            }
            batch.clear();
            let mut data = 0usize;
            while let Some(q) = inner.queue.pop_front() {
                batch.extend_from_slice(&q.bytes);
                data += q.data;
            }
            if batch.is_empty() && inner.state == State::Closing {
                break;
            }
            (batch.len(), data)
        };
        if bytes == 0 {
            tokio::select! {
                _ = notified => continue,
                _ = dead.wait_for(|d| *d) => break,
            }
        }
        let write = async {
            wr.write_all(&batch).await?;
            wr.flush().await
        };
        let res = tokio::select! {
            r = write => r,
            _ = expired(&mut deadline) => break,
            _ = dead.wait_for(|d| *d) => break,
        };
        if res.is_err() {
            break;
        }
        {
            let mut inner = shared.lock();
            inner.queued_bytes = inner.queued_bytes.saturating_sub(bytes);
            inner.queued_data = inner.queued_data.saturating_sub(data);
            for w in inner.data_waiters.drain(..) {
                w.wake();
            }
        }
        shared.drained.notify_waiters();
    }
    tokio::select! {
        _ = wr.shutdown() => {}
        _ = expired(&mut deadline) => {}
        // Killed by the reader (the peer is gone): nothing to say goodbye to.
        _ = dead.wait_for(|d| *d) => {}
    }
    shared.kill();
}

/// Resolves once the close deadline has passed; never while the session is not closing.
async fn expired(deadline: &mut watch::Receiver<Option<Instant>>) {
    loop {
        let d = *deadline.borrow_and_update();
        match d {
            Some(d) => return tokio::time::sleep_until(d).await,
            None => {
                if deadline.changed().await.is_err() {
                    return std::future::pending().await;
                }
            }
        }
    }
}

/// Reads the connection. `incoming` takes the streams the peer opens; `None` refuses them all.
async fn reader_task<R: AsyncRead + Unpin>(
    shared: Arc<Shared>,
    mut rd: R,
    incoming: Option<mpsc::UnboundedSender<Stream>>,
) {
    let mut dead = shared.dead.subscribe();
    let mut reader = Reader {
        shared: &shared,
        incoming,
        session_unacked: 0,
    };
    let res = tokio::select! {
        r = reader.run(&mut rd) => Some(r),
        _ = dead.wait_for(|d| *d) => None,
    };
    reader.incoming = None;
    match res {
        // The peer closed the connection or it failed: nothing more can be said to it.
        Some(Ok(())) | Some(Err(SpdyError::Io(_))) | None => shared.kill(),
        Some(Err(_)) => {
            // A protocol violation: tell the peer, flush, close. Readers end now; nothing more
            // is read for them.
            shared.begin_close(goaway::PROTOCOL_ERROR);
            shared.lock().cut_readers();
        }
    }
}

struct Reader<'a> {
    shared: &'a Arc<Shared>,
    incoming: Option<mpsc::UnboundedSender<Stream>>,
    session_unacked: u32,
}

impl Reader<'_> {
    /// Reads frames until a clean EOF (`Ok`) or an error.
    async fn run<R: AsyncRead + Unpin>(&mut self, rd: &mut R) -> Result<()> {
        let limits = self.shared.config.limits;
        let mut z = HeaderDecompressor::new();
        loop {
            let mut head = [0u8; 8];
            match rd.read_exact(&mut head).await {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e.into()),
            }
            match FrameHead::parse(head) {
                FrameHead::Control {
                    version,
                    frame_type,
                    flags,
                    len,
                } => {
                    if version != VERSION {
                        return Err(SpdyError::Protocol(format!(
                            "unsupported version {version}"
                        )));
                    }
                    if len > limits.max_control_frame {
                        return Err(SpdyError::FrameTooLarge {
                            len,
                            limit: limits.max_control_frame,
                        });
                    }
                    let mut p = vec![0u8; len];
                    rd.read_exact(&mut p).await?;
                    let frame = decode_control(frame_type, flags, &p, &mut z, &limits)?;
                    self.control(frame).await?;
                }
                FrameHead::Data {
                    stream_id,
                    flags,
                    len,
                } => {
                    if stream_id == 0 {
                        return Err(SpdyError::Protocol("DATA on stream 0".into()));
                    }
                    let window =
                        usize::try_from(self.shared.config.recv_window).unwrap_or(RECV_CHUNK);
                    let mut remaining = len;
                    while remaining > 0 {
                        let n = remaining.min(RECV_CHUNK).min(window);
                        let mut buf = vec![0u8; n];
                        rd.read_exact(&mut buf).await?;
                        remaining -= n;
                        self.deliver(stream_id, buf).await;
                        self.session_consumed(n);
                    }
                    if flags & FLAG_FIN != 0 {
                        self.remote_finish(stream_id);
                    }
                }
            }
        }
    }

    /// The session window is given back as soon as data is buffered: per-stream windows already
    /// bound the buffers, and one stream the app reads slowly must not stall the others.
    fn session_consumed(&mut self, n: usize) {
        self.session_unacked = self
            .session_unacked
            .saturating_add(u32::try_from(n).unwrap_or(MAX_WINDOW));
        if self.session_unacked >= self.shared.config.session_recv_window / 2 {
            let delta = self.session_unacked.min(MAX_WINDOW);
            self.session_unacked = 0;
            self.push(&Frame::WindowUpdate {
                stream_id: 0,
                delta,
            });
        }
    }

    fn push(&self, frame: &Frame) {
        let mut inner = self.shared.lock();
        if inner.state != State::Closed {
            inner.push(frame);
        }
        drop(inner);
        self.shared.writer_wake.notify_one();
    }

    /// Waits while the writer is behind, so frames the peer provokes cannot pile up unbounded.
    async fn backlog(&self) {
        loop {
            let drained = self.shared.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            {
                let inner = self.shared.lock();
                if inner.state == State::Closed || inner.queued_bytes < CONTROL_BACKLOG {
                    return;
                }
            }
            drained.await;
        }
    }

    async fn deliver(&mut self, id: u32, buf: Vec<u8>) {
        let n = buf.len();
        let target = {
            let mut inner = self.shared.lock();
            let Some(st) = inner.streams.get(&id) else {
                return;
            };
            match &st.recv {
                Some((tx, sem)) => Some((tx.clone(), sem.clone())),
                None => {
                    if st.reader_dropped && !st.remote_fin {
                        let delta = u32::try_from(n).unwrap_or(MAX_WINDOW);
                        inner.push(&Frame::WindowUpdate {
                            stream_id: id,
                            delta,
                        });
                    }
                    None
                }
            }
        };
        let Some((tx, sem)) = target else {
            self.shared.writer_wake.notify_one();
            return;
        };
        // Wait for buffer room: with a peer that honours our window this never waits; with one
        // that ignores it (spdystream) this is the backpressure, through TCP.
        let n32 = u32::try_from(n).unwrap_or(u32::MAX);
        let acquired = match sem.acquire_many(n32).await {
            Ok(permit) => {
                permit.forget();
                true
            }
            Err(_) => false,
        };
        if acquired {
            let _ = tx.send(Recv::Data(buf));
        } else {
            // The app dropped the reader meanwhile: discard, but reopen the window.
            self.push(&Frame::WindowUpdate {
                stream_id: id,
                delta: n32.min(MAX_WINDOW),
            });
        }
    }

    fn remote_finish(&self, id: u32) {
        let mut inner = self.shared.lock();
        if let Some(st) = inner.streams.get_mut(&id) {
            st.remote_fin = true;
            if let Some((tx, _)) = st.recv.take() {
                let _ = tx.send(Recv::Eof);
            }
        }
        inner.maybe_remove(id);
    }

    async fn control(&mut self, frame: Frame) -> Result<()> {
        match frame {
            Frame::SynStream {
                stream_id,
                flags,
                headers,
                ..
            } => self.syn_stream(stream_id, flags, headers),
            Frame::SynReply {
                stream_id,
                flags,
                headers,
            } => {
                // The peer accepts a stream this side opened; a reply to anything else (or a
                // second one) changes nothing.
                let reply = self
                    .shared
                    .lock()
                    .streams
                    .get_mut(&stream_id)
                    .and_then(|st| st.reply.take());
                if let Some(tx) = reply {
                    let _ = tx.send(Reply::Headers(headers));
                }
                if flags & FLAG_FIN != 0 {
                    self.remote_finish(stream_id);
                }
                Ok(())
            }
            Frame::Headers {
                stream_id, flags, ..
            } => {
                // Nothing to do with more headers; FIN still ends the peer's half.
                if flags & FLAG_FIN != 0 {
                    self.remote_finish(stream_id);
                }
                Ok(())
            }
            Frame::RstStream { stream_id, status } => {
                self.shared.lock().reset_by_peer(stream_id, status);
                Ok(())
            }
            Frame::Settings { entries, .. } => {
                let mut inner = self.shared.lock();
                for s in entries
                    .iter()
                    .filter(|s| s.id == SETTINGS_INITIAL_WINDOW_SIZE)
                {
                    if s.value > MAX_WINDOW {
                        return Err(SpdyError::Protocol("initial window above 2^31-1".into()));
                    }
                    let delta = i64::from(s.value) - inner.initial_send_window;
                    inner.initial_send_window = i64::from(s.value);
                    inner.peer_flow_control = true;
                    for st in inner.streams.values_mut() {
                        st.send_window += delta;
                    }
                }
                inner.wake_senders();
                Ok(())
            }
            Frame::Ping { id } => {
                let role = self.shared.lock().role;
                if role.is_local(id) {
                    // The answer to one of ours, or to none (then ignored).
                    let waiter = self.shared.lock().pings.remove(&id);
                    if let Some(tx) = waiter {
                        let _ = tx.send(());
                    }
                } else {
                    // The peer's own ping: echo it.
                    self.backlog().await;
                    self.push(&Frame::Ping { id });
                }
                Ok(())
            }
            Frame::GoAway { .. } => {
                // No new streams either way; the ones open carry on.
                self.incoming = None;
                self.shared.lock().peer_goaway = true;
                Ok(())
            }
            Frame::WindowUpdate { stream_id, delta } => {
                let mut inner = self.shared.lock();
                inner.peer_flow_control = true;
                if stream_id == 0 {
                    inner.session_send_window += i64::from(delta);
                    if inner.session_send_window > i64::from(MAX_WINDOW) {
                        return Err(SpdyError::Protocol("session window above 2^31-1".into()));
                    }
                    inner.wake_senders();
                } else if let Some(st) = inner.streams.get_mut(&stream_id) {
                    st.send_window += i64::from(delta);
                    if st.send_window > i64::from(MAX_WINDOW) {
                        inner.push(&Frame::RstStream {
                            stream_id,
                            status: rst::FLOW_CONTROL_ERROR,
                        });
                        inner.remove(stream_id);
                    } else if let Some(w) = st.send_waker.take() {
                        w.wake();
                    }
                }
                drop(inner);
                self.shared.writer_wake.notify_one();
                Ok(())
            }
            Frame::Data { .. } | Frame::Unknown { .. } => Ok(()),
        }
    }

    fn syn_stream(&mut self, id: u32, flags: u8, headers: Vec<(String, String)>) -> Result<()> {
        if id == 0 {
            return Err(SpdyError::Protocol("SYN_STREAM for stream 0".into()));
        }
        let mut inner = self.shared.lock();
        // The peer's streams have its parity (odd from a client, even from a server) and
        // increase; spdystream resets the others as PROTOCOL_ERROR.
        if inner.role.is_local(id) || id <= inner.last_seen {
            inner.push(&Frame::RstStream {
                stream_id: id,
                status: rst::PROTOCOL_ERROR,
            });
            drop(inner);
            self.shared.writer_wake.notify_one();
            return Ok(());
        }
        inner.last_seen = id;
        let refuse = self.incoming.is_none()
            || inner.state != State::Open
            || inner.streams.len() >= self.shared.config.max_streams;
        if refuse {
            inner.push(&Frame::RstStream {
                stream_id: id,
                status: rst::REFUSED_STREAM,
            });
            drop(inner);
            self.shared.writer_wake.notify_one();
            return Ok(());
        }
        let unidirectional = flags & FLAG_UNIDIRECTIONAL != 0;
        let setup = Setup {
            remote_fin: flags & FLAG_FIN != 0,
            // A unidirectional stream may not be answered at all.
            local_fin: unidirectional,
            replied: unidirectional,
            reply: None,
        };
        let stream = new_stream(self.shared, &mut inner, id, headers, setup);
        drop(inner);
        if let Some(incoming) = &self.incoming {
            if let Err(mpsc::error::SendError(stream)) = incoming.send(stream) {
                self.incoming = None;
                stream.refuse();
            }
        }
        Ok(())
    }
}
