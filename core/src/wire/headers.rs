//! HEADERS: the first frame of a call.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};

use super::error::WireError;
use super::frame::{frame_len, put_frame_in_place, FrameKind};
use super::limits::WireLimits;
use super::metadata::Metadata;
use super::varint::{get_bytes, get_u8, get_varint, put_bytes, put_varint, varint_len, VARINT_MAX};
use crate::codec::Codec;

const HF_IDEMPOTENT: u8 = 0x01;
const HF_DEADLINE: u8 = 0x02;
const HF_KEY: u8 = 0x04;

/// Largest method name, in bytes.
pub const MAX_METHOD_LEN: usize = 1024;
/// Largest routing key, in bytes.
pub const MAX_ROUTING_KEY_LEN: usize = 1024;

/// A duration in whole µs for the wire, clamped to [`VARINT_MAX`] (never truncated: a
/// `Duration` can hold far more µs than a `u64`).
pub(crate) fn micros(t: Duration) -> u64 {
    u64::try_from(t.as_micros())
        .unwrap_or(u64::MAX)
        .min(VARINT_MAX)
}

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
            put_varint(out, micros(t));
        }
        if let Some(k) = &self.routing_key {
            put_bytes(out, k);
        }
        self.metadata.encode(out);
    }

    /// The number of bytes [`encode`](Self::encode) writes.
    fn payload_len(&self) -> usize {
        2 + varint_len(self.method.len() as u64)
            + self.method.len()
            + self.timeout.map_or(0, |t| varint_len(micros(t)))
            + self
                .routing_key
                .as_ref()
                .map_or(0, |k| varint_len(k.len() as u64) + k.len())
            + self.metadata.encoded_len()
    }

    /// The number of bytes [`put_frame`](Self::put_frame) appends: a buffer of exactly this
    /// capacity (plus whatever else goes in it) holds the frame with no spare room, so
    /// freezing it allocates nothing more.
    pub fn frame_len(&self) -> usize {
        frame_len(self.payload_len())
    }

    /// Appends a complete HEADERS frame to `out`, encoded in place: its length is worked
    /// out first, so nothing is encoded twice or copied.
    pub fn put_frame(&self, out: &mut BytesMut) {
        put_frame_in_place(out, FrameKind::Headers, self.payload_len(), |out| {
            self.encode(out)
        });
    }

    /// Encodes a complete HEADERS frame, in a buffer of exactly its size.
    pub fn to_frame(&self) -> BytesMut {
        let mut out = BytesMut::with_capacity(self.frame_len());
        self.put_frame(&mut out);
        out
    }

    /// Decodes a HEADERS payload.
    pub fn decode(buf: &[u8], limits: &WireLimits) -> Result<RequestHeaders, WireError> {
        HeadersRef::decode(buf, limits).map(HeadersRef::into_owned)
    }
}

/// HEADERS decoded in place: the method name borrows the frame's bytes, so a server learns
/// which method is called without copying its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadersRef<'a> {
    /// Method name, e.g. `add` or `kv.Get`.
    pub method: &'a str,
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

impl<'a> HeadersRef<'a> {
    /// Decodes a HEADERS payload (without the frame header), checking every limit
    /// [`RequestHeaders::decode`] checks.
    pub fn decode(mut buf: &'a [u8], limits: &WireLimits) -> Result<HeadersRef<'a>, WireError> {
        let buf = &mut buf;
        let flags = get_u8(buf)?;
        let codec = Codec::from_u8(get_u8(buf)?).ok_or(WireError::Invalid("codec"))?;
        let method = get_bytes(buf, "method name", MAX_METHOD_LEN)?;
        let method =
            std::str::from_utf8(method).map_err(|_| WireError::InvalidUtf8("method name"))?;
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
        Ok(HeadersRef {
            method,
            codec,
            timeout,
            idempotent: flags & HF_IDEMPOTENT != 0,
            routing_key,
            metadata,
        })
    }

    /// The same HEADERS, owning their method name.
    pub fn into_owned(self) -> RequestHeaders {
        RequestHeaders {
            method: self.method.to_owned(),
            codec: self.codec,
            timeout: self.timeout,
            idempotent: self.idempotent,
            routing_key: self.routing_key,
            metadata: self.metadata,
        }
    }
}
