//! SPDY/3 framing: the 8-byte frame heads, control-frame payloads, name/value header blocks and
//! their zlib compression.
//!
//! This is the codec both roles share: the session uses it as either end, the tests use it to
//! play a peer frame by frame. It does no I/O except [`read_frame`], a convenience that reads one
//! whole frame.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::dictionary::DICTIONARY;
use crate::{Result, SpdyError};

/// The only protocol version spoken; `Upgrade: SPDY/3.1` still carries version 3 in its frames.
pub const VERSION: u16 = 3;

/// SYN_STREAM control frame type.
pub const TYPE_SYN_STREAM: u16 = 1;
/// SYN_REPLY control frame type.
pub const TYPE_SYN_REPLY: u16 = 2;
/// RST_STREAM control frame type.
pub const TYPE_RST_STREAM: u16 = 3;
/// SETTINGS control frame type.
pub const TYPE_SETTINGS: u16 = 4;
/// PING control frame type.
pub const TYPE_PING: u16 = 6;
/// GOAWAY control frame type.
pub const TYPE_GOAWAY: u16 = 7;
/// HEADERS control frame type.
pub const TYPE_HEADERS: u16 = 8;
/// WINDOW_UPDATE control frame type.
pub const TYPE_WINDOW_UPDATE: u16 = 9;

/// FLAG_FIN, on DATA, SYN_STREAM, SYN_REPLY and HEADERS: the sender's half of the stream ends.
pub const FLAG_FIN: u8 = 0x01;
/// FLAG_UNIDIRECTIONAL on SYN_STREAM: the recipient may not send on the stream.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;

/// RST_STREAM status codes (SPDY/3 section 2.6.3).
pub mod rst {
    /// PROTOCOL_ERROR
    pub const PROTOCOL_ERROR: u32 = 1;
    /// INVALID_STREAM
    pub const INVALID_STREAM: u32 = 2;
    /// REFUSED_STREAM
    pub const REFUSED_STREAM: u32 = 3;
    /// UNSUPPORTED_VERSION
    pub const UNSUPPORTED_VERSION: u32 = 4;
    /// CANCEL
    pub const CANCEL: u32 = 5;
    /// INTERNAL_ERROR
    pub const INTERNAL_ERROR: u32 = 6;
    /// FLOW_CONTROL_ERROR
    pub const FLOW_CONTROL_ERROR: u32 = 7;
    /// STREAM_IN_USE
    pub const STREAM_IN_USE: u32 = 8;
    /// STREAM_ALREADY_CLOSED
    pub const STREAM_ALREADY_CLOSED: u32 = 9;
}

/// GOAWAY status codes.
pub mod goaway {
    /// OK: a normal session teardown.
    pub const OK: u32 = 0;
    /// PROTOCOL_ERROR
    pub const PROTOCOL_ERROR: u32 = 1;
    /// INTERNAL_ERROR
    pub const INTERNAL_ERROR: u32 = 2;
}

/// SETTINGS_INITIAL_WINDOW_SIZE: the sender's receive window for new streams.
pub const SETTINGS_INITIAL_WINDOW_SIZE: u32 = 7;

/// Window size every stream and the session start with (SPDY/3.1: 64 KiB).
pub const DEFAULT_WINDOW: u32 = 65_536;

/// Largest window a WINDOW_UPDATE or SETTINGS may produce (2^31 - 1).
pub const MAX_WINDOW: u32 = 0x7fff_ffff;

/// Largest payload the 24-bit length field can carry.
pub const MAX_FRAME_LEN: usize = 0x00ff_ffff;

const STREAM_ID_MASK: u32 = 0x7fff_ffff;

/// The 8-byte head of a frame, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameHead {
    /// A control frame: the payload is read whole and decoded with [`decode_control`].
    Control {
        /// Protocol version (must be [`VERSION`]).
        version: u16,
        /// Frame type, one of the `TYPE_*` constants or an unknown one.
        frame_type: u16,
        /// Flags byte.
        flags: u8,
        /// Payload length.
        len: usize,
    },
    /// A data frame: `len` payload bytes follow.
    Data {
        /// The stream the data belongs to (31 bits).
        stream_id: u32,
        /// Flags byte ([`FLAG_FIN`]).
        flags: u8,
        /// Payload length.
        len: usize,
    },
}

impl FrameHead {
    /// Parses the first 8 bytes of a frame.
    pub fn parse(b: [u8; 8]) -> FrameHead {
        let first = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        let flags = b[4];
        let len = usize::from(b[5]) << 16 | usize::from(b[6]) << 8 | usize::from(b[7]);
        if first & 0x8000_0000 != 0 {
            FrameHead::Control {
                version: u16::from_be_bytes([b[0] & 0x7f, b[1]]),
                frame_type: u16::from_be_bytes([b[2], b[3]]),
                flags,
                len,
            }
        } else {
            FrameHead::Data {
                stream_id: first & STREAM_ID_MASK,
                flags,
                len,
            }
        }
    }
}

/// One SETTINGS entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// Per-entry flags (PERSIST_VALUE, PERSISTED).
    pub flags: u8,
    /// Setting id (24 bits), e.g. [`SETTINGS_INITIAL_WINDOW_SIZE`].
    pub id: u32,
    /// Value.
    pub value: u32,
}

/// Header names and values in wire order; names lowercase.
pub type Headers = Vec<(String, String)>;

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// SYN_STREAM: the peer opens a stream.
    SynStream {
        /// New stream id.
        stream_id: u32,
        /// Stream this one is associated with, 0 for none.
        associated_id: u32,
        /// Priority, 0 (highest) to 7.
        priority: u8,
        /// [`FLAG_FIN`], [`FLAG_UNIDIRECTIONAL`].
        flags: u8,
        /// The header block.
        headers: Headers,
    },
    /// SYN_REPLY: the recipient accepts a stream.
    SynReply {
        /// Stream id.
        stream_id: u32,
        /// [`FLAG_FIN`].
        flags: u8,
        /// The header block.
        headers: Headers,
    },
    /// RST_STREAM: abnormal end of a stream.
    RstStream {
        /// Stream id.
        stream_id: u32,
        /// One of [`rst`].
        status: u32,
    },
    /// SETTINGS.
    Settings {
        /// Frame flags (CLEAR_SETTINGS).
        flags: u8,
        /// Entries.
        entries: Vec<Setting>,
    },
    /// PING; answered with the same id.
    Ping {
        /// Ping id: odd from clients, even from servers.
        id: u32,
    },
    /// GOAWAY: no new streams after `last_good`.
    GoAway {
        /// Last stream id the sender accepted.
        last_good: u32,
        /// One of [`goaway`].
        status: u32,
    },
    /// HEADERS: more headers for a stream.
    Headers {
        /// Stream id.
        stream_id: u32,
        /// [`FLAG_FIN`].
        flags: u8,
        /// The header block.
        headers: Headers,
    },
    /// WINDOW_UPDATE; stream 0 is the session window (SPDY/3.1).
    WindowUpdate {
        /// Stream id, 0 for the session.
        stream_id: u32,
        /// Bytes added to the window (31 bits).
        delta: u32,
    },
    /// DATA.
    Data {
        /// Stream id.
        stream_id: u32,
        /// [`FLAG_FIN`].
        flags: u8,
        /// Payload.
        data: Vec<u8>,
    },
    /// A control frame of a type this codec does not know; the spec says to ignore it.
    Unknown {
        /// Its type.
        frame_type: u16,
    },
}

fn protocol(msg: impl Into<String>) -> SpdyError {
    SpdyError::Protocol(msg.into())
}

fn be32(b: &[u8], at: usize) -> Result<u32> {
    match b.get(at..at + 4) {
        Some(s) => Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]])),
        None => Err(protocol("control frame too short")),
    }
}

fn len24(len: usize) -> Result<[u8; 3]> {
    if len > MAX_FRAME_LEN {
        return Err(SpdyError::FrameTooLarge {
            len,
            limit: MAX_FRAME_LEN,
        });
    }
    let b = u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes();
    Ok([b[1], b[2], b[3]])
}

/// Appends a control frame head for `len` payload bytes.
fn put_control_head(out: &mut Vec<u8>, frame_type: u16, flags: u8, len: usize) -> Result<()> {
    let l = len24(len)?;
    out.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    out.extend_from_slice(&frame_type.to_be_bytes());
    out.push(flags);
    out.extend_from_slice(&l);
    Ok(())
}

/// Appends a DATA frame head for `len` payload bytes on `stream_id`.
pub fn put_data_head(out: &mut Vec<u8>, stream_id: u32, flags: u8, len: usize) -> Result<()> {
    let l = len24(len)?;
    out.extend_from_slice(&(stream_id & STREAM_ID_MASK).to_be_bytes());
    out.push(flags);
    out.extend_from_slice(&l);
    Ok(())
}

/// Serialises a header block (uncompressed). Repeated names are joined with NUL into one entry,
/// because a Go peer (spdystream) rejects a block that names a header twice.
pub fn encode_header_block(headers: &[(String, String)]) -> Result<Vec<u8>> {
    let mut merged: Vec<(String, String)> = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        let name = name.to_ascii_lowercase();
        match merged.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => {
                v.push('\0');
                v.push_str(value);
            }
            None => merged.push((name, value.clone())),
        }
    }
    let count = u32::try_from(merged.len()).map_err(|_| protocol("too many headers"))?;
    let mut out = Vec::new();
    out.extend_from_slice(&count.to_be_bytes());
    for (name, value) in &merged {
        for s in [name, value] {
            let l = u32::try_from(s.len()).map_err(|_| protocol("header too long"))?;
            out.extend_from_slice(&l.to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }
    }
    Ok(out)
}

/// Parses an uncompressed header block. Names are lowercased (Go peers write them lowercase;
/// spdystream only complains about others) and a NUL-joined value becomes several entries.
pub fn decode_header_block(b: &[u8]) -> Result<Headers> {
    let count = be32(b, 0)?;
    let mut at = 4usize;
    let mut out = Vec::new();
    let take = |at: &mut usize| -> Result<&[u8]> {
        let l = usize::try_from(be32(b, *at)?).map_err(|_| protocol("header length"))?;
        let start = *at + 4;
        let s = start
            .checked_add(l)
            .and_then(|end| b.get(start..end))
            .ok_or_else(|| protocol("header block truncated"))?;
        *at = start + l;
        Ok(s)
    };
    // `count` comes from the peer: never preallocate from it, the block's length bounds the loop.
    for _ in 0..count {
        let name = String::from_utf8_lossy(take(&mut at)?).to_ascii_lowercase();
        if name.is_empty() {
            return Err(protocol("empty header name"));
        }
        let value = String::from_utf8_lossy(take(&mut at)?).into_owned();
        for v in value.split('\0') {
            out.push((name.clone(), v.to_string()));
        }
    }
    if at != b.len() {
        return Err(protocol("trailing bytes after header block"));
    }
    Ok(out)
}

/// The sending side's zlib stream: one per direction per session, primed with the SPDY/3
/// dictionary, each header block ended with a SYNC_FLUSH so the peer can decode it at once.
pub struct HeaderCompressor {
    z: Compress,
}

impl HeaderCompressor {
    /// A fresh stream primed with the dictionary.
    pub fn new() -> Result<HeaderCompressor> {
        let mut z = Compress::new(Compression::best(), true);
        z.set_dictionary(DICTIONARY)
            .map_err(|e| SpdyError::Compression(e.to_string()))?;
        Ok(HeaderCompressor { z })
    }

    /// Compresses one header block.
    pub fn compress(&mut self, block: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(block.len() + 64);
        let mut pos = 0usize;
        loop {
            if out.len() == out.capacity() {
                out.reserve(out.capacity().max(64));
            }
            let before_in = self.z.total_in();
            let before_out = out.len();
            self.z
                .compress_vec(&block[pos..], &mut out, FlushCompress::Sync)
                .map_err(|e| SpdyError::Compression(e.to_string()))?;
            let consumed = usize::try_from(self.z.total_in() - before_in)
                .map_err(|_| SpdyError::Compression("counter overflow".into()))?;
            pos += consumed;
            // Done once all input is in and the flush fitted with room to spare.
            if pos >= block.len() && out.len() < out.capacity() {
                return Ok(out);
            }
            if consumed == 0 && out.len() == before_out && out.len() < out.capacity() {
                return Err(SpdyError::Compression("deflate made no progress".into()));
            }
        }
    }
}

/// The receiving side's zlib stream.
pub struct HeaderDecompressor {
    z: Decompress,
}

impl Default for HeaderDecompressor {
    fn default() -> Self {
        HeaderDecompressor::new()
    }
}

impl HeaderDecompressor {
    /// A fresh stream; the dictionary is supplied when the zlib header asks for it.
    pub fn new() -> HeaderDecompressor {
        HeaderDecompressor {
            z: Decompress::new(true),
        }
    }

    /// Decompresses one header block, refusing more than `limit` bytes of output.
    pub fn decompress(&mut self, input: &[u8], limit: usize) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(input.len().saturating_mul(4).clamp(64, limit.max(64)));
        let mut pos = 0usize;
        loop {
            if out.len() >= limit {
                return Err(SpdyError::HeaderBlockTooLarge { limit });
            }
            if out.len() == out.capacity() {
                out.reserve((limit - out.len()).min(out.capacity().max(256)));
            }
            let before_in = self.z.total_in();
            let before_out = out.len();
            let res = self
                .z
                .decompress_vec(&input[pos..], &mut out, FlushDecompress::Sync);
            let consumed = usize::try_from(self.z.total_in() - before_in)
                .map_err(|_| SpdyError::Compression("counter overflow".into()))?;
            pos += consumed;
            if let Err(e) = res {
                if e.needs_dictionary().is_some() {
                    // zlib asks once, right after the stream header that names the dictionary.
                    self.z
                        .set_dictionary(DICTIONARY)
                        .map_err(|e| SpdyError::Compression(e.to_string()))?;
                    continue;
                }
                return Err(SpdyError::Compression(e.to_string()));
            }
            if pos >= input.len() && out.len() < out.capacity() {
                break;
            }
            if consumed == 0 && out.len() == before_out && out.len() < out.capacity() {
                return Err(SpdyError::Compression("inflate made no progress".into()));
            }
        }
        if out.len() > limit {
            return Err(SpdyError::HeaderBlockTooLarge { limit });
        }
        Ok(out)
    }
}

/// Limits applied while decoding control frames.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest control-frame payload accepted.
    pub max_control_frame: usize,
    /// Largest decompressed header block accepted.
    pub max_header_block: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_control_frame: 256 * 1024,
            max_header_block: 256 * 1024,
        }
    }
}

/// Decodes a control frame's payload. A header block is always run through `z`, so the zlib
/// stream stays in step with the peer's even for frames the caller then ignores.
pub fn decode_control(
    frame_type: u16,
    flags: u8,
    p: &[u8],
    z: &mut HeaderDecompressor,
    limits: &Limits,
) -> Result<Frame> {
    let sid = |at: usize| -> Result<u32> { Ok(be32(p, at)? & STREAM_ID_MASK) };
    let exact = |n: usize| -> Result<()> {
        if p.len() == n {
            Ok(())
        } else {
            Err(protocol(format!(
                "control frame type {frame_type}: length {} != {n}",
                p.len()
            )))
        }
    };
    let headers_at = |at: usize, z: &mut HeaderDecompressor| -> Result<Headers> {
        let block = p
            .get(at..)
            .ok_or_else(|| protocol("control frame too short"))?;
        decode_header_block(&z.decompress(block, limits.max_header_block)?)
    };
    Ok(match frame_type {
        TYPE_SYN_STREAM => {
            if p.len() < 10 {
                return Err(protocol("SYN_STREAM too short"));
            }
            Frame::SynStream {
                stream_id: sid(0)?,
                associated_id: sid(4)?,
                priority: p[8] >> 5,
                flags,
                headers: headers_at(10, z)?,
            }
        }
        TYPE_SYN_REPLY => Frame::SynReply {
            stream_id: sid(0)?,
            flags,
            headers: headers_at(4, z)?,
        },
        TYPE_HEADERS => Frame::Headers {
            stream_id: sid(0)?,
            flags,
            headers: headers_at(4, z)?,
        },
        TYPE_RST_STREAM => {
            exact(8)?;
            Frame::RstStream {
                stream_id: sid(0)?,
                status: be32(p, 4)?,
            }
        }
        TYPE_SETTINGS => {
            let n = usize::try_from(be32(p, 0)?).map_err(|_| protocol("SETTINGS count"))?;
            if n.checked_mul(8).and_then(|l| l.checked_add(4)) != Some(p.len()) {
                return Err(protocol("SETTINGS length does not match its count"));
            }
            let mut entries = Vec::with_capacity(n);
            for i in 0..n {
                let at = 4 + i * 8;
                let word = be32(p, at)?;
                entries.push(Setting {
                    flags: word.to_be_bytes()[0],
                    id: word & 0x00ff_ffff,
                    value: be32(p, at + 4)?,
                });
            }
            Frame::Settings { flags, entries }
        }
        TYPE_PING => {
            exact(4)?;
            Frame::Ping { id: be32(p, 0)? }
        }
        TYPE_GOAWAY => {
            exact(8)?;
            Frame::GoAway {
                last_good: sid(0)?,
                status: be32(p, 4)?,
            }
        }
        TYPE_WINDOW_UPDATE => {
            exact(8)?;
            Frame::WindowUpdate {
                stream_id: sid(0)?,
                delta: be32(p, 4)? & 0x7fff_ffff,
            }
        }
        other => Frame::Unknown { frame_type: other },
    })
}

/// Serialises a frame, compressing any header block with `z`. Frames must be written to the wire
/// in the order they are encoded: each header block depends on the ones before it.
pub fn encode(frame: &Frame, z: &mut HeaderCompressor, out: &mut Vec<u8>) -> Result<()> {
    let mut control = |ty: u16, flags: u8, fixed: &[u8], headers: Option<&Headers>| -> Result<()> {
        let block = match headers {
            Some(h) => z.compress(&encode_header_block(h)?)?,
            None => Vec::new(),
        };
        put_control_head(out, ty, flags, fixed.len() + block.len())?;
        out.extend_from_slice(fixed);
        out.extend_from_slice(&block);
        Ok(())
    };
    let words = |a: u32, b: u32| -> [u8; 8] {
        let mut w = [0u8; 8];
        w[..4].copy_from_slice(&a.to_be_bytes());
        w[4..].copy_from_slice(&b.to_be_bytes());
        w
    };
    match frame {
        Frame::SynStream {
            stream_id,
            associated_id,
            priority,
            flags,
            headers,
        } => {
            let mut fixed = [0u8; 10];
            fixed[..4].copy_from_slice(&(stream_id & STREAM_ID_MASK).to_be_bytes());
            fixed[4..8].copy_from_slice(&(associated_id & STREAM_ID_MASK).to_be_bytes());
            fixed[8] = (priority & 0x07) << 5;
            control(TYPE_SYN_STREAM, *flags, &fixed, Some(headers))
        }
        Frame::SynReply {
            stream_id,
            flags,
            headers,
        } => control(
            TYPE_SYN_REPLY,
            *flags,
            &(stream_id & STREAM_ID_MASK).to_be_bytes(),
            Some(headers),
        ),
        Frame::Headers {
            stream_id,
            flags,
            headers,
        } => control(
            TYPE_HEADERS,
            *flags,
            &(stream_id & STREAM_ID_MASK).to_be_bytes(),
            Some(headers),
        ),
        Frame::RstStream { stream_id, status } => control(
            TYPE_RST_STREAM,
            0,
            &words(stream_id & STREAM_ID_MASK, *status),
            None,
        ),
        Frame::Settings { flags, entries } => {
            let n = u32::try_from(entries.len()).map_err(|_| protocol("too many settings"))?;
            let mut fixed = n.to_be_bytes().to_vec();
            for s in entries {
                let word = u32::from(s.flags) << 24 | (s.id & 0x00ff_ffff);
                fixed.extend_from_slice(&words(word, s.value));
            }
            control(TYPE_SETTINGS, *flags, &fixed, None)
        }
        Frame::Ping { id } => control(TYPE_PING, 0, &id.to_be_bytes(), None),
        Frame::GoAway { last_good, status } => control(
            TYPE_GOAWAY,
            0,
            &words(last_good & STREAM_ID_MASK, *status),
            None,
        ),
        Frame::WindowUpdate { stream_id, delta } => control(
            TYPE_WINDOW_UPDATE,
            0,
            &words(stream_id & STREAM_ID_MASK, delta & 0x7fff_ffff),
            None,
        ),
        Frame::Data {
            stream_id,
            flags,
            data,
        } => {
            put_data_head(out, *stream_id, *flags, data.len())?;
            out.extend_from_slice(data);
            Ok(())
        }
        Frame::Unknown { frame_type } => control(*frame_type, 0, &[], None),
    }
}

/// Reads one whole frame (DATA payload included); `Ok(None)` on a clean EOF between frames.
/// Control frames above `limits.max_control_frame` are refused.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    z: &mut HeaderDecompressor,
    limits: &Limits,
) -> Result<Option<Frame>> {
    let mut head = [0u8; 8];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
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
                return Err(protocol(format!("unsupported SPDY version {version}")));
            }
            if len > limits.max_control_frame {
                return Err(SpdyError::FrameTooLarge {
                    len,
                    limit: limits.max_control_frame,
                });
            }
            let mut p = vec![0u8; len];
            r.read_exact(&mut p).await?;
            decode_control(frame_type, flags, &p, z, limits).map(Some)
        }
        FrameHead::Data {
            stream_id,
            flags,
            len,
        } => {
            let mut data = vec![0u8; len];
            r.read_exact(&mut data).await?;
            Ok(Some(Frame::Data {
                stream_id,
                flags,
                data,
            }))
        }
    }
}
