//! `ingot-spdy`: both sides of a SPDY/3.1 session, the transport `kubectl exec`, `attach` and
//! `port-forward` (and `crictl`) speak to a streaming server once an HTTP request has been
//! upgraded (`101 Switching Protocols`, `Upgrade: SPDY/3.1`).
//!
//! The crate owns the wire: framing ([`frame`]), the zlib header compression with the SPDY/3
//! dictionary ([`dictionary`]), and a [`Session`] that runs one reader and one writer task over
//! the upgraded connection, answers PINGs, and does SPDY/3.1 flow control, in either role:
//!
//! - the server ([`Session::server`]) hands out the streams the client opens ([`Incoming`]);
//! - the client ([`Session::client`]), as kubectl's spdystream client does, opens streams with
//!   headers ([`Session::open`], odd ids) and waits for the server's SYN_REPLY
//!   ([`Stream::wait_reply`]); it refuses streams the server opens, which Kubernetes servers
//!   never do.
//!
//! Either way a [`Stream`] splits into a [`StreamReader`] (`AsyncRead`) and a [`StreamWriter`]
//! (`AsyncWrite`, whose shutdown sends FIN). The crate knows nothing about what the streams mean
//! (the `streamtype` header etc. is the caller's business) nor about the HTTP upgrade itself.
//!
//! Wire behaviour follows `github.com/moby/spdystream`, the Go implementation behind
//! `k8s.io/apimachinery/pkg/util/httpstream/spdy`, where the spec leaves room; notably that Go
//! peer ignores WINDOW_UPDATE and never sends one, which [`SendFlowControl::Auto`] accounts for.

pub mod dictionary;
pub mod frame;
mod session;

use std::time::Duration;

pub use session::{Incoming, Session, Stream, StreamReader, StreamWriter};

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    /// The connection failed.
    #[error("spdy i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The peer broke the protocol.
    #[error("spdy protocol error: {0}")]
    Protocol(String),
    /// A frame exceeded a limit.
    #[error("spdy frame of {len} bytes exceeds the limit of {limit}")]
    FrameTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A decompressed header block exceeded [`frame::Limits::max_header_block`].
    #[error("spdy header block exceeds {limit} bytes")]
    HeaderBlockTooLarge {
        /// The limit.
        limit: usize,
    },
    /// zlib failed on a header block.
    #[error("spdy header compression: {0}")]
    Compression(String),
    /// The session is closed (or closing).
    #[error("spdy session closed")]
    Closed,
    /// The stream was reset or has ended.
    #[error("spdy stream reset")]
    Reset,
    /// The peer answered a stream this side opened with RST_STREAM instead of SYN_REPLY.
    #[error("spdy stream reset by the peer with status {status}")]
    ResetByPeer {
        /// The RST_STREAM status, one of [`frame::rst`] (e.g. `REFUSED_STREAM`).
        status: u32,
    },
    /// A session was started outside a tokio runtime.
    #[error("spdy session needs a tokio runtime")]
    NoRuntime,
}

/// Result with [`SpdyError`].
pub type Result<T, E = SpdyError> = std::result::Result<T, E>;

/// Whether the session waits for the peer's flow-control windows before sending DATA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SendFlowControl {
    /// Track the windows always, but only wait on them once the peer shows it does flow
    /// control (it sent a WINDOW_UPDATE or SETTINGS_INITIAL_WINDOW_SIZE). spdystream, i.e. every
    /// Go peer (kubectl, crictl, the API server's proxy, the kubelet), sends neither and reads
    /// whatever arrives; waiting on its windows would stall any output past 64 KiB forever. This
    /// crate's own sessions, in either role, always send WINDOW_UPDATE as they read.
    #[default]
    Auto,
    /// Strict SPDY/3.1: never send past the peer's windows.
    Enforce,
    /// Never wait on windows (TCP alone pushes back).
    Ignore,
}

/// Session tuning; [`Config::default`] matches SPDY/3.1 defaults.
#[derive(Debug, Clone)]
pub struct Config {
    /// Receive window per stream, which is also the most the session buffers for one stream.
    /// Anything but the 64 KiB default is announced with SETTINGS_INITIAL_WINDOW_SIZE.
    pub recv_window: u32,
    /// Session-level receive window (SPDY/3.1 stream 0); above 64 KiB it is announced with a
    /// WINDOW_UPDATE at start.
    pub session_recv_window: u32,
    /// See [`SendFlowControl`].
    pub send_flow_control: SendFlowControl,
    /// Control-frame and header-block size limits.
    pub limits: frame::Limits,
    /// Streams open at once, whoever opened them; the peer's SYN_STREAMs beyond it get
    /// RST_STREAM(REFUSED_STREAM). [`Session::open`] is not limited by it.
    pub max_streams: usize,
    /// DATA payload bytes queued for the writer task before [`StreamWriter`]s wait.
    pub max_write_queue: usize,
    /// How long a closing session may take to flush its last frames.
    pub close_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            recv_window: frame::DEFAULT_WINDOW,
            session_recv_window: frame::DEFAULT_WINDOW,
            send_flow_control: SendFlowControl::Auto,
            limits: frame::Limits::default(),
            max_streams: 256,
            max_write_queue: 256 * 1024,
            close_timeout: Duration::from_secs(5),
        }
    }
}
