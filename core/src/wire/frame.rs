//! Frames: `kind: u8 | len: varint | payload`, and the incremental decoder.

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::error::WireError;
use super::limits::WireLimits;
use super::varint::{peek_varint, put_varint, varint_len};

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

/// The length of a whole frame whose payload is `payload_len` bytes.
pub fn frame_len(payload_len: usize) -> usize {
    1 + varint_len(payload_len as u64) + payload_len
}

/// Appends a whole frame to `out` whose payload `encode` writes in place, after its header:
/// `payload_len` must be exactly what `encode` writes (checked in debug builds).
pub(crate) fn put_frame_in_place(
    out: &mut BytesMut,
    kind: FrameKind,
    payload_len: usize,
    encode: impl FnOnce(&mut BytesMut),
) {
    out.reserve(frame_len(payload_len));
    put_frame_header(out, kind, payload_len);
    let start = out.len();
    encode(out);
    debug_assert_eq!(out.len() - start, payload_len, "{kind} payload length");
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
/// Feed it bytes as they arrive with [`FrameDecoder::extend`] (or
/// [`FrameDecoder::extend_bytes`]), then take frames with [`FrameDecoder::next_frame`]. It
/// never buffers more than one frame plus one read, and its memory follows the bytes that
/// arrived: a header declaring a 4 MiB frame costs nothing until the 4 MiB are there.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    /// A received chunk taken over whole, without a copy, because nothing was buffered
    /// when it came: frames lying wholly inside it are handed out as slices of it. Bytes
    /// that arrive after it are appended to `buf`, once it has moved there.
    held: Bytes,
    buf: BytesMut,
    limits: WireLimits,
}

/// Buffered bytes from which [`FrameDecoder::extend`] grows its buffer with `realloc`
/// rather than a new buffer and a copy. Below it the copy is cheap and the new buffer
/// costs one allocation, where the conversions to and from `Vec` cost two. Above it, a
/// 1 MiB message assembled by copying at every doubling made the allocator map and unmap
/// fresh pages on every call: 1 MiB echoes reached 0.65x of bare quinn's MB/s
/// (`benches/RESULTS.md`).
const GROW_IN_PLACE_FROM: usize = 64 * 1024;

impl FrameDecoder {
    /// A decoder with the given limits.
    pub fn new(limits: WireLimits) -> Self {
        FrameDecoder {
            held: Bytes::new(),
            buf: BytesMut::new(),
            limits,
        }
    }

    /// The largest chunk [`FrameDecoder::extend_bytes`] takes over without a copy.
    /// Frames handed out of such a chunk are slices of the peer's datagram (or of the
    /// receive batch it came in), so whoever keeps one long should copy it first; a
    /// frame payload longer than this was never such a slice.
    pub const MAX_HELD_CHUNK: usize = 4096;

    /// Appends a chunk received from the peer, taking it over without a copy when nothing
    /// is buffered and it is at most [`FrameDecoder::MAX_HELD_CHUNK`] bytes (the common
    /// case: a small message and its trailers arriving in one chunk).
    pub fn extend_bytes(&mut self, bytes: Bytes) {
        if self.held.is_empty() && self.buf.is_empty() && bytes.len() <= Self::MAX_HELD_CHUNK {
            self.held = bytes;
        } else {
            self.extend(&bytes);
        }
    }

    /// Copies a chunk taken over whole into the decoder's own buffer, so the datagram it
    /// was a slice of is no longer kept (before waiting for the rest of a partial frame).
    pub fn spill(&mut self) {
        if !self.held.is_empty() {
            self.extend(&[]);
        }
    }

    /// Appends bytes received from the peer.
    ///
    /// The buffer grows with what arrives, never with what a frame header declares: when
    /// it must grow, it takes at most twice the bytes it then holds, and never more than
    /// the end of the frame being assembled (so a whole message is not doubled either).
    pub fn extend(&mut self, bytes: &[u8]) {
        // A chunk taken over whole moves into the buffer first (the buffer is empty then).
        let held = std::mem::take(&mut self.held);
        let before = self.buf.len() + held.len();
        let needed = before + bytes.len();
        if needed > self.buf.capacity() && !self.buf.try_reclaim(needed - self.buf.len()) {
            let pending = if held.is_empty() {
                &self.buf[..]
            } else {
                &held[..]
            };
            let mut cap = needed.max(2 * before);
            if let Ok(Some(h)) = parse_frame_header(pending, &self.limits) {
                let frame_end = h.header_len + h.len;
                if frame_end >= needed {
                    cap = cap.min(frame_end);
                }
            }
            if self.buf.len() < GROW_IN_PLACE_FROM {
                let mut grown = BytesMut::with_capacity(cap);
                grown.extend_from_slice(&self.buf);
                self.buf = grown;
            } else {
                // A large buffer grows in place where the allocator can (`realloc`
                // remaps it rather than copy it), unless frames handed out still share
                // it. The conversions keep the allocation; they cost one small one.
                let mut grown = Vec::from(std::mem::take(&mut self.buf));
                grown.reserve_exact(cap - grown.len());
                self.buf = BytesMut::from(Bytes::from(grown));
            }
        }
        self.buf.extend_from_slice(&held);
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.held.len() + self.buf.len()
    }

    /// Bytes of memory the buffer holds (its capacity, plus a chunk taken over whole): it
    /// follows the bytes that arrived, never a length a frame header declared.
    pub fn capacity(&self) -> usize {
        self.held.len() + self.buf.capacity()
    }

    /// The bytes not yet returned as frames, in one of the two places.
    fn pending(&self) -> &[u8] {
        if self.held.is_empty() {
            &self.buf
        } else {
            &self.held
        }
    }

    /// How many more bytes the next frame needs, if its header is known.
    pub fn wanted(&self) -> Result<Option<usize>, WireError> {
        let pending = self.pending();
        Ok(parse_frame_header(pending, &self.limits)?
            .map(|h| (h.header_len + h.len).saturating_sub(pending.len())))
    }

    /// Takes the next complete frame, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, WireError> {
        if !self.held.is_empty() {
            let Some(h) = parse_frame_header(&self.held, &self.limits)? else {
                return Ok(None);
            };
            if self.held.len() < h.header_len + h.len {
                return Ok(None);
            }
            self.held.advance(h.header_len);
            return Ok(Some(Frame {
                kind: h.kind,
                payload: self.held.split_to(h.len),
            }));
        }
        let Some(h) = parse_frame_header(&self.buf, &self.limits)? else {
            return Ok(None);
        };
        if self.buf.len() < h.header_len + h.len {
            // Nothing is reserved for the rest: it is buffered as it arrives (`extend`).
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
