//! The wire format: frames, varints, call headers, trailers, the HELLO and status codes.
//!
//! Every Meridian call is one client-initiated bidirectional QUIC stream, and every byte on
//! such a stream is part of a frame `kind: u8 | len: varint | payload`. This module turns
//! those bytes into typed values and back. It does no I/O and knows nothing of tokio or
//! quinn, so the property tests and fuzzers can drive it with arbitrary input.
//!
//! Peer input is untrusted: every length is checked against a [`WireLimits`] bound and
//! against the bytes actually present *before* anything is allocated, and every decoder
//! returns a [`WireError`] instead of panicking.
//!
//! The byte-level specification lives in `docs/PROTOCOL.md`; this module is its reference
//! implementation.

use std::fmt;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::codec::Codec;

/// The protocol version carried in the HELLO.
pub const PROTOCOL_VERSION: u8 = 1;

/// The ALPN identifier negotiated in the TLS handshake.
pub const ALPN: &[u8] = b"meridian/1";

/// Largest value a QUIC variable-length integer can hold (2^62 - 1).
pub const VARINT_MAX: u64 = (1 << 62) - 1;

/// Errors found while decoding frames or their payloads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The input ended in the middle of a value.
    #[error("truncated frame")]
    Truncated,
    /// A frame kind this implementation does not know.
    #[error("unknown frame kind 0x{0:02x}")]
    UnknownFrame(u8),
    /// A frame arrived where the protocol does not allow it.
    #[error("unexpected {got} frame, expected {expected}")]
    UnexpectedFrame {
        /// What arrived.
        got: FrameKind,
        /// What the protocol allows at this point.
        expected: &'static str,
    },
    /// A frame or field is longer than the configured limit.
    #[error("{what} of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Which limit was exceeded.
        what: &'static str,
        /// The size the peer declared.
        size: u64,
        /// The configured limit.
        limit: u64,
    },
    /// A text field is not UTF-8.
    #[error("{0} is not valid UTF-8")]
    InvalidUtf8(&'static str),
    /// A field holds a value outside its range.
    #[error("invalid {0}")]
    Invalid(&'static str),
}

/// Bounds applied to everything decoded from a peer.
///
/// All checks happen before allocation: a peer that declares a 1 GiB frame is refused after
/// reading its first nine bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireLimits {
    /// Largest DATA payload (one message), in bytes. Default 4 MiB.
    pub max_message_size: usize,
    /// Largest metadata block (sum of key and value lengths) in HEADERS or TRAILERS.
    /// Default 16 KiB.
    pub max_metadata_size: usize,
    /// Largest HEADERS, TRAILERS or HELLO frame. Default 64 KiB.
    pub max_control_frame_size: usize,
}

impl WireLimits {
    /// Default largest message: 4 MiB, as gRPC.
    pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 4 * 1024 * 1024;
    /// Default largest metadata block: 16 KiB.
    pub const DEFAULT_MAX_METADATA_SIZE: usize = 16 * 1024;
    /// Default largest control frame: 64 KiB.
    pub const DEFAULT_MAX_CONTROL_FRAME_SIZE: usize = 64 * 1024;
}

impl Default for WireLimits {
    fn default() -> Self {
        WireLimits {
            max_message_size: Self::DEFAULT_MAX_MESSAGE_SIZE,
            max_metadata_size: Self::DEFAULT_MAX_METADATA_SIZE,
            max_control_frame_size: Self::DEFAULT_MAX_CONTROL_FRAME_SIZE,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Varints (RFC 9000 section 16)
// ---------------------------------------------------------------------------------------

/// Number of bytes [`put_varint`] uses for `v`.
pub fn varint_len(v: u64) -> usize {
    if v < 1 << 6 {
        1
    } else if v < 1 << 14 {
        2
    } else if v < 1 << 30 {
        4
    } else {
        8
    }
}

/// Appends `v` as a QUIC variable-length integer. Values above [`VARINT_MAX`] are clamped,
/// which never happens for lengths this crate writes.
pub fn put_varint(out: &mut impl BufMut, v: u64) {
    let v = v.min(VARINT_MAX);
    match varint_len(v) {
        1 => out.put_u8(v as u8),
        2 => out.put_u16(0x4000 | v as u16),
        4 => out.put_u32(0x8000_0000 | v as u32),
        _ => out.put_u64(0xc000_0000_0000_0000 | v),
    }
}

/// Reads a QUIC variable-length integer, or `Ok(None)` if `buf` is too short to hold it.
pub fn peek_varint(buf: &[u8]) -> Option<(u64, usize)> {
    let first = *buf.first()?;
    let len = 1usize << (first >> 6);
    if buf.len() < len {
        return None;
    }
    let mut v = u64::from(first & 0x3f);
    for b in &buf[1..len] {
        v = (v << 8) | u64::from(*b);
    }
    Some((v, len))
}

fn get_varint(buf: &mut &[u8]) -> Result<u64, WireError> {
    let (v, n) = peek_varint(buf).ok_or(WireError::Truncated)?;
    buf.advance(n);
    Ok(v)
}

fn get_u8(buf: &mut &[u8]) -> Result<u8, WireError> {
    if buf.is_empty() {
        return Err(WireError::Truncated);
    }
    Ok(buf.get_u8())
}

/// Reads a length-prefixed byte string of at most `limit` bytes, borrowing from `buf`.
fn get_bytes<'a>(
    buf: &mut &'a [u8],
    what: &'static str,
    limit: usize,
) -> Result<&'a [u8], WireError> {
    let len = get_varint(buf)?;
    if len > limit as u64 {
        return Err(WireError::TooLarge {
            what,
            size: len,
            limit: limit as u64,
        });
    }
    let len = len as usize;
    if buf.len() < len {
        return Err(WireError::Truncated);
    }
    let (head, tail) = buf.split_at(len);
    *buf = tail;
    Ok(head)
}

fn get_str(buf: &mut &[u8], what: &'static str, limit: usize) -> Result<String, WireError> {
    let raw = get_bytes(buf, what, limit)?;
    std::str::from_utf8(raw)
        .map(str::to_owned)
        .map_err(|_| WireError::InvalidUtf8(what))
}

fn put_bytes(out: &mut BytesMut, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.put_slice(b);
}

// ---------------------------------------------------------------------------------------
// Frames
// ---------------------------------------------------------------------------------------

/// The kind byte that starts every frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    /// Starts a request: method, codec, deadline, metadata, flags.
    Headers = 0x01,
    /// One message of a request or response.
    Data = 0x02,
    /// Ends a response: status, message, metadata, server timing.
    Trailers = 0x03,
    /// Server description on the unidirectional control stream.
    Hello = 0x10,
}

impl FrameKind {
    /// Parses a kind byte.
    pub fn from_u8(b: u8) -> Option<FrameKind> {
        match b {
            0x01 => Some(FrameKind::Headers),
            0x02 => Some(FrameKind::Data),
            0x03 => Some(FrameKind::Trailers),
            0x10 => Some(FrameKind::Hello),
            _ => None,
        }
    }
}

impl fmt::Display for FrameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FrameKind::Headers => "HEADERS",
            FrameKind::Data => "DATA",
            FrameKind::Trailers => "TRAILERS",
            FrameKind::Hello => "HELLO",
        })
    }
}

/// Writes a frame header (`kind`, payload length) into `out`.
pub fn put_frame_header(out: &mut impl BufMut, kind: FrameKind, payload_len: usize) {
    out.put_u8(kind as u8);
    put_varint(out, payload_len as u64);
}

/// Appends a whole frame to `out`.
pub fn put_frame(out: &mut BytesMut, kind: FrameKind, payload: &[u8]) {
    out.reserve(1 + varint_len(payload.len() as u64) + payload.len());
    put_frame_header(out, kind, payload.len());
    out.put_slice(payload);
}

/// A frame header read from the stream: its kind, payload length and header size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The frame kind.
    pub kind: FrameKind,
    /// Length of the payload that follows, already checked against the limits.
    pub len: usize,
    /// Bytes taken by the kind and the length varint.
    pub header_len: usize,
}

/// Parses a frame header at the start of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed. The declared payload length is checked
/// against `limits` here, before the caller allocates a buffer for it.
pub fn parse_frame_header(
    buf: &[u8],
    limits: &WireLimits,
) -> Result<Option<FrameHeader>, WireError> {
    let Some(&kind_byte) = buf.first() else {
        return Ok(None);
    };
    let kind = FrameKind::from_u8(kind_byte).ok_or(WireError::UnknownFrame(kind_byte))?;
    let Some((len, n)) = peek_varint(&buf[1..]) else {
        return Ok(None);
    };
    let (what, limit) = match kind {
        FrameKind::Data => ("message", limits.max_message_size),
        _ => ("control frame", limits.max_control_frame_size),
    };
    if len > limit as u64 {
        return Err(WireError::TooLarge {
            what,
            size: len,
            limit: limit as u64,
        });
    }
    Ok(Some(FrameHeader {
        kind,
        len: len as usize,
        header_len: 1 + n,
    }))
}

/// A complete frame: kind and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The frame kind.
    pub kind: FrameKind,
    /// The payload bytes.
    pub payload: Bytes,
}

/// Splits a byte stream into frames, enforcing [`WireLimits`].
///
/// Feed it bytes as they arrive with [`FrameDecoder::extend`], then take frames with
/// [`FrameDecoder::next_frame`]. It never buffers more than one frame plus one read.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: BytesMut,
    limits: WireLimits,
}

impl FrameDecoder {
    /// A decoder with the given limits.
    pub fn new(limits: WireLimits) -> Self {
        FrameDecoder {
            buf: BytesMut::new(),
            limits,
        }
    }

    /// Appends bytes received from the peer.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// How many more bytes the next frame needs, if its header is known.
    pub fn wanted(&self) -> Result<Option<usize>, WireError> {
        Ok(parse_frame_header(&self.buf, &self.limits)?
            .map(|h| (h.header_len + h.len).saturating_sub(self.buf.len())))
    }

    /// Takes the next complete frame, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, WireError> {
        let Some(h) = parse_frame_header(&self.buf, &self.limits)? else {
            return Ok(None);
        };
        if self.buf.len() < h.header_len + h.len {
            self.buf.reserve(h.header_len + h.len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(h.header_len);
        let payload = self.buf.split_to(h.len).freeze();
        Ok(Some(Frame {
            kind: h.kind,
            payload,
        }))
    }
}

// ---------------------------------------------------------------------------------------
// Status codes
// ---------------------------------------------------------------------------------------

/// The 17 gRPC status codes, with gRPC's names and numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Code {
    /// Success.
    Ok = 0,
    /// The call was cancelled, usually by the caller.
    Cancelled = 1,
    /// An error that fits no other code.
    Unknown = 2,
    /// The client sent an argument the server cannot accept.
    InvalidArgument = 3,
    /// The deadline passed before the call completed.
    DeadlineExceeded = 4,
    /// A requested entity was not found.
    NotFound = 5,
    /// The entity the client tried to create exists already.
    AlreadyExists = 6,
    /// The caller may not run this call.
    PermissionDenied = 7,
    /// A resource (size, quota, capacity) is exhausted.
    ResourceExhausted = 8,
    /// The system is not in a state required for the call.
    FailedPrecondition = 9,
    /// The call was aborted, usually by a concurrency conflict.
    Aborted = 10,
    /// A value was outside the valid range.
    OutOfRange = 11,
    /// The method is not implemented or not known by this server.
    Unimplemented = 12,
    /// An invariant broke inside the server.
    Internal = 13,
    /// The service is unavailable; retrying may help.
    Unavailable = 14,
    /// Unrecoverable data loss or corruption.
    DataLoss = 15,
    /// The caller has no valid credentials.
    Unauthenticated = 16,
}

impl Code {
    /// Parses a numeric code; unknown numbers map to [`Code::Unknown`], as gRPC does.
    pub fn from_u64(v: u64) -> Code {
        use Code::*;
        match v {
            0 => Ok,
            1 => Cancelled,
            3 => InvalidArgument,
            4 => DeadlineExceeded,
            5 => NotFound,
            6 => AlreadyExists,
            7 => PermissionDenied,
            8 => ResourceExhausted,
            9 => FailedPrecondition,
            10 => Aborted,
            11 => OutOfRange,
            12 => Unimplemented,
            13 => Internal,
            14 => Unavailable,
            15 => DataLoss,
            16 => Unauthenticated,
            _ => Unknown,
        }
    }

    /// The gRPC name, e.g. `DEADLINE_EXCEEDED`.
    pub fn name(self) -> &'static str {
        use Code::*;
        match self {
            Ok => "OK",
            Cancelled => "CANCELLED",
            Unknown => "UNKNOWN",
            InvalidArgument => "INVALID_ARGUMENT",
            DeadlineExceeded => "DEADLINE_EXCEEDED",
            NotFound => "NOT_FOUND",
            AlreadyExists => "ALREADY_EXISTS",
            PermissionDenied => "PERMISSION_DENIED",
            ResourceExhausted => "RESOURCE_EXHAUSTED",
            FailedPrecondition => "FAILED_PRECONDITION",
            Aborted => "ABORTED",
            OutOfRange => "OUT_OF_RANGE",
            Unimplemented => "UNIMPLEMENTED",
            Internal => "INTERNAL",
            Unavailable => "UNAVAILABLE",
            DataLoss => "DATA_LOSS",
            Unauthenticated => "UNAUTHENTICATED",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Application error codes used in QUIC `RESET_STREAM`, `STOP_SENDING` and
/// `CONNECTION_CLOSE` frames.
pub mod reset {
    /// The stream ended without error (used when closing a connection cleanly).
    pub const NO_ERROR: u32 = 0x00;
    /// The caller gave up on the call (dropped it or cancelled it).
    pub const CANCELLED: u32 = 0x01;
    /// The call's deadline passed.
    pub const DEADLINE_EXCEEDED: u32 = 0x02;
    /// The peer broke the framing rules; the call is abandoned.
    pub const PROTOCOL_ERROR: u32 = 0x03;
    /// The server refused the stream before running anything (shutting down or overloaded):
    /// the call may be retried elsewhere even if it is not idempotent.
    pub const REFUSED: u32 = 0x04;
    /// A message exceeded a size limit.
    pub const TOO_LARGE: u32 = 0x05;
    /// Connection close: the server is shutting down.
    pub const SHUTDOWN: u32 = 0x10;
}

// ---------------------------------------------------------------------------------------
// Metadata
// ---------------------------------------------------------------------------------------

/// Ordered key/value pairs sent with a call (in HEADERS) and with its result (in TRAILERS).
///
/// Keys are text, conventionally lowercase ASCII; values are bytes, usually text. A key may
/// appear more than once, as in gRPC.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    entries: Vec<(String, Bytes)>,
}

impl Metadata {
    /// Empty metadata.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends an entry.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<Bytes>) -> &mut Self {
        self.entries.push((key.into(), value.into()));
        self
    }

    /// The first value for `key`.
    pub fn get(&self, key: &str) -> Option<&Bytes> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The first value for `key`, if it is UTF-8 text.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// All entries in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Bytes)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Sum of key and value lengths, the figure checked against
    /// [`WireLimits::max_metadata_size`].
    pub fn byte_size(&self) -> usize {
        self.entries.iter().map(|(k, v)| k.len() + v.len()).sum()
    }

    fn encode(&self, out: &mut BytesMut) {
        put_varint(out, self.entries.len() as u64);
        for (k, v) in &self.entries {
            put_bytes(out, k.as_bytes());
            put_bytes(out, v);
        }
    }

    fn decode(buf: &mut &[u8], limit: usize) -> Result<Metadata, WireError> {
        let count = get_varint(buf)?;
        // Each entry takes at least two bytes (two empty lengths).
        if count > (buf.len() / 2) as u64 {
            return Err(WireError::Truncated);
        }
        let mut entries = Vec::with_capacity(count as usize);
        let mut budget = limit;
        for _ in 0..count {
            let k = get_str(buf, "metadata key", budget)?;
            budget -= k.len();
            let v = get_bytes(buf, "metadata", budget)?;
            budget -= v.len();
            entries.push((k, Bytes::copy_from_slice(v)));
        }
        Ok(Metadata { entries })
    }
}

impl<K: Into<String>, V: Into<Bytes>> FromIterator<(K, V)> for Metadata {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Metadata {
            entries: iter
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// HEADERS
// ---------------------------------------------------------------------------------------

const HF_IDEMPOTENT: u8 = 0x01;
const HF_DEADLINE: u8 = 0x02;
const HF_KEY: u8 = 0x04;

/// Largest method name, in bytes.
pub const MAX_METHOD_LEN: usize = 1024;
/// Largest routing key, in bytes.
pub const MAX_ROUTING_KEY_LEN: usize = 1024;

/// The first frame of every call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHeaders {
    /// Method name, e.g. `add` or `kv.Get`.
    pub method: String,
    /// How messages of this call are encoded.
    pub codec: Codec,
    /// Time left before the caller gives up, measured when the frame was written.
    pub timeout: Option<Duration>,
    /// The caller declares the call safe to run more than once.
    pub idempotent: bool,
    /// Optional routing key (used by region routing and proxies).
    pub routing_key: Option<Bytes>,
    /// Request metadata.
    pub metadata: Metadata,
}

impl RequestHeaders {
    /// Encodes the HEADERS payload (without the frame header).
    pub fn encode(&self, out: &mut BytesMut) {
        let mut flags = 0;
        if self.idempotent {
            flags |= HF_IDEMPOTENT;
        }
        if self.timeout.is_some() {
            flags |= HF_DEADLINE;
        }
        if self.routing_key.is_some() {
            flags |= HF_KEY;
        }
        out.put_u8(flags);
        out.put_u8(self.codec.as_u8());
        put_bytes(out, self.method.as_bytes());
        if let Some(t) = self.timeout {
            put_varint(out, (t.as_micros() as u64).min(VARINT_MAX));
        }
        if let Some(k) = &self.routing_key {
            put_bytes(out, k);
        }
        self.metadata.encode(out);
    }

    /// Encodes a complete HEADERS frame (one allocation: the payload is written after
    /// room for the largest frame header, which is then written just before it).
    pub fn to_frame(&self) -> BytesMut {
        const ROOM: usize = 9;
        let mut out =
            BytesMut::with_capacity(ROOM + 64 + self.method.len() + self.metadata.byte_size());
        out.resize(ROOM, 0);
        self.encode(&mut out);
        let len = out.len() - ROOM;
        let start = ROOM - 1 - varint_len(len as u64);
        let mut head = &mut out[start..ROOM];
        put_frame_header(&mut head, FrameKind::Headers, len);
        out.advance(start);
        out
    }

    /// Decodes a HEADERS payload.
    pub fn decode(mut buf: &[u8], limits: &WireLimits) -> Result<RequestHeaders, WireError> {
        let buf = &mut buf;
        let flags = get_u8(buf)?;
        let codec = Codec::from_u8(get_u8(buf)?).ok_or(WireError::Invalid("codec"))?;
        let method = get_str(buf, "method name", MAX_METHOD_LEN)?;
        let timeout = if flags & HF_DEADLINE != 0 {
            Some(Duration::from_micros(get_varint(buf)?))
        } else {
            None
        };
        let routing_key = if flags & HF_KEY != 0 {
            Some(Bytes::copy_from_slice(get_bytes(
                buf,
                "routing key",
                MAX_ROUTING_KEY_LEN,
            )?))
        } else {
            None
        };
        let metadata = Metadata::decode(buf, limits.max_metadata_size)?;
        Ok(RequestHeaders {
            method,
            codec,
            timeout,
            idempotent: flags & HF_IDEMPOTENT != 0,
            routing_key,
            metadata,
        })
    }
}

// ---------------------------------------------------------------------------------------
// TRAILERS
// ---------------------------------------------------------------------------------------

const TF_SERVER_TIME: u8 = 0x01;
const TF_PROXY_TIME: u8 = 0x02;
const TF_NOT_RUN: u8 = 0x04;

/// The two times a proxy adds to the TRAILERS it forwards (see [`Trailers::proxy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProxyTime {
    /// Time spent inside the proxy: from reading the call's HEADERS to writing its
    /// TRAILERS, minus `upstream`.
    pub inside: Duration,
    /// The proxy's forwarded call, as the proxy measured it: proxy -> server -> proxy,
    /// the server's own time and any retries included.
    pub upstream: Duration,
}

/// The last frame of every response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trailers {
    /// Final status of the call.
    pub code: Code,
    /// Human-readable message (empty on success).
    pub message: String,
    /// Trailing metadata.
    pub metadata: Metadata,
    /// Time the server spent from reading HEADERS to writing TRAILERS.
    pub server_time: Option<Duration>,
    /// Set by a proxy that forwarded the call: its own time and its upstream call's time.
    /// `server_time` then is the time of the server behind the proxy.
    pub proxy: Option<ProxyTime>,
    /// The sender guarantees that no handler ran the call (e.g. a proxy that could reach
    /// no server), so even a non-idempotent call may be sent elsewhere. Only on failures.
    pub not_run: bool,
}

/// Largest status message, in bytes.
pub const MAX_STATUS_MESSAGE_LEN: usize = 8 * 1024;

impl Trailers {
    /// Encodes the TRAILERS payload (without the frame header).
    pub fn encode(&self, out: &mut BytesMut) {
        let mut flags = 0;
        if self.server_time.is_some() {
            flags |= TF_SERVER_TIME;
        }
        if self.proxy.is_some() {
            flags |= TF_PROXY_TIME;
        }
        if self.not_run && self.code != Code::Ok {
            flags |= TF_NOT_RUN;
        }
        out.put_u8(flags);
        put_varint(out, self.code as u64);
        let msg = truncate_utf8(&self.message, MAX_STATUS_MESSAGE_LEN);
        put_bytes(out, msg.as_bytes());
        self.metadata.encode(out);
        let micros = |t: Duration| (t.as_micros() as u64).min(VARINT_MAX);
        if let Some(t) = self.server_time {
            put_varint(out, micros(t));
        }
        if let Some(p) = self.proxy {
            put_varint(out, micros(p.inside));
            put_varint(out, micros(p.upstream));
        }
    }

    /// Appends a complete TRAILERS frame to `out`.
    pub fn put_frame(&self, out: &mut BytesMut) {
        let mut payload = BytesMut::with_capacity(16 + self.message.len());
        self.encode(&mut payload);
        put_frame(out, FrameKind::Trailers, &payload);
    }

    /// Decodes a TRAILERS payload.
    pub fn decode(mut buf: &[u8], limits: &WireLimits) -> Result<Trailers, WireError> {
        let buf = &mut buf;
        let flags = get_u8(buf)?;
        let code = Code::from_u64(get_varint(buf)?);
        let message = get_str(buf, "status message", MAX_STATUS_MESSAGE_LEN)?;
        let metadata = Metadata::decode(buf, limits.max_metadata_size)?;
        let server_time = if flags & TF_SERVER_TIME != 0 {
            Some(Duration::from_micros(get_varint(buf)?))
        } else {
            None
        };
        let proxy = if flags & TF_PROXY_TIME != 0 {
            Some(ProxyTime {
                inside: Duration::from_micros(get_varint(buf)?),
                upstream: Duration::from_micros(get_varint(buf)?),
            })
        } else {
            None
        };
        Ok(Trailers {
            not_run: flags & TF_NOT_RUN != 0 && code != Code::Ok,
            code,
            message,
            metadata,
            server_time,
            proxy,
        })
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub(crate) fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

// ---------------------------------------------------------------------------------------
// HELLO
// ---------------------------------------------------------------------------------------

/// The shape of a method's call: how many messages flow each way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MethodKind {
    /// One request, one response.
    Unary = 0,
    /// One request, a stream of responses.
    ServerStreaming = 1,
    /// A stream of requests, one response.
    ClientStreaming = 2,
    /// Streams both ways.
    Bidi = 3,
}

impl MethodKind {
    fn from_u8(b: u8) -> Option<MethodKind> {
        match b {
            0 => Some(MethodKind::Unary),
            1 => Some(MethodKind::ServerStreaming),
            2 => Some(MethodKind::ClientStreaming),
            3 => Some(MethodKind::Bidi),
            _ => None,
        }
    }
}

/// One entry of a server's method catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodInfo {
    /// Method name.
    pub name: String,
    /// Streaming shape.
    pub kind: MethodKind,
    /// Safe to run more than once (may travel in 0-RTT data, may be retried and hedged).
    pub idempotent: bool,
}

/// Largest number of catalog entries accepted in a HELLO.
pub const MAX_CATALOG_ENTRIES: usize = 4096;

/// The server's self-description, sent on a unidirectional stream at connection start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Protocol version ([`PROTOCOL_VERSION`]).
    pub version: u8,
    /// Server identifier, unique within its region.
    pub server_id: String,
    /// Region name.
    pub region: String,
    /// Current load: calls in flight on this server.
    pub load: u64,
    /// Methods this server serves.
    pub methods: Vec<MethodInfo>,
}

impl Hello {
    /// Encodes a complete HELLO frame.
    pub fn to_frame(&self) -> BytesMut {
        let mut p = BytesMut::with_capacity(64 + self.methods.len() * 16);
        p.put_u8(self.version);
        put_bytes(&mut p, self.server_id.as_bytes());
        put_bytes(&mut p, self.region.as_bytes());
        put_varint(&mut p, self.load);
        put_varint(&mut p, self.methods.len() as u64);
        for m in &self.methods {
            put_bytes(&mut p, m.name.as_bytes());
            p.put_u8(m.kind as u8);
            p.put_u8(u8::from(m.idempotent));
        }
        let mut out = BytesMut::with_capacity(p.len() + 9);
        put_frame(&mut out, FrameKind::Hello, &p);
        out
    }

    /// Decodes a HELLO payload.
    pub fn decode(mut buf: &[u8]) -> Result<Hello, WireError> {
        let buf = &mut buf;
        let version = get_u8(buf)?;
        let server_id = get_str(buf, "server id", 256)?;
        let region = get_str(buf, "region", 256)?;
        let load = get_varint(buf)?;
        let count = get_varint(buf)?;
        // Each entry is at least three bytes.
        if count > MAX_CATALOG_ENTRIES as u64 || count > (buf.len() / 3) as u64 {
            return Err(WireError::Invalid("catalog size"));
        }
        let mut methods = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let name = get_str(buf, "method name", MAX_METHOD_LEN)?;
            let kind =
                MethodKind::from_u8(get_u8(buf)?).ok_or(WireError::Invalid("method kind"))?;
            let idempotent = get_u8(buf)? != 0;
            methods.push(MethodInfo {
                name,
                kind,
                idempotent,
            });
        }
        Ok(Hello {
            version,
            server_id,
            region,
            load,
            methods,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_boundaries_round_trip() {
        for v in [0, 63, 64, 16383, 16384, (1 << 30) - 1, 1 << 30, VARINT_MAX] {
            let mut b = BytesMut::new();
            put_varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v));
            assert_eq!(peek_varint(&b), Some((v, b.len())));
        }
    }

    #[test]
    fn proxy_trailers_match_the_protocol_example() {
        // docs/PROTOCOL.md §3.5.
        let t = Trailers {
            code: Code::Ok,
            message: String::new(),
            metadata: Metadata::new(),
            server_time: Some(Duration::from_micros(100)),
            proxy: Some(ProxyTime {
                inside: Duration::from_micros(12),
                upstream: Duration::from_micros(300),
            }),
            not_run: false,
        };
        let mut b = BytesMut::new();
        t.encode(&mut b);
        assert_eq!(
            &b[..],
            &[0x03, 0x00, 0x00, 0x00, 0x40, 0x64, 0x0c, 0x41, 0x2c]
        );
        assert_eq!(Trailers::decode(&b, &WireLimits::default()).unwrap(), t);
        // Truncated proxy times are an error, not a guess.
        assert!(Trailers::decode(&b[..7], &WireLimits::default()).is_err());
    }

    #[test]
    fn oversized_frame_is_refused_from_its_header() {
        let limits = WireLimits {
            max_message_size: 10,
            ..WireLimits::default()
        };
        let mut b = BytesMut::new();
        put_frame_header(&mut b, FrameKind::Data, 11);
        let err = parse_frame_header(&b, &limits).unwrap_err();
        assert!(matches!(err, WireError::TooLarge { size: 11, .. }));
    }
}
