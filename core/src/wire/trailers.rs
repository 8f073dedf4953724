//! TRAILERS: the last frame of a call, with its status and timing.

use std::time::Duration;

use bytes::{BufMut, BytesMut};

use super::code::Code;
use super::error::WireError;
use super::frame::{frame_len, put_frame_in_place, FrameKind};
use super::headers::micros;
use super::limits::WireLimits;
use super::metadata::Metadata;
use super::varint::{get_str, get_u8, get_varint, put_bytes, put_varint, varint_len};

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
        if let Some(t) = self.server_time {
            put_varint(out, micros(t));
        }
        if let Some(p) = self.proxy {
            put_varint(out, micros(p.inside));
            put_varint(out, micros(p.upstream));
        }
    }

    /// The number of bytes [`encode`](Self::encode) writes.
    fn payload_len(&self) -> usize {
        let msg = truncate_utf8(&self.message, MAX_STATUS_MESSAGE_LEN).len();
        let times = self.server_time.map_or(0, |t| varint_len(micros(t)))
            + self.proxy.map_or(0, |p| {
                varint_len(micros(p.inside)) + varint_len(micros(p.upstream))
            });
        1 + varint_len(self.code as u64)
            + varint_len(msg as u64)
            + msg
            + self.metadata.encoded_len()
            + times
    }

    /// The number of bytes [`put_frame`](Self::put_frame) appends: a buffer of exactly this
    /// capacity holds the frame with no spare room (so freezing it allocates nothing).
    pub fn frame_len(&self) -> usize {
        frame_len(self.payload_len())
    }

    /// Appends a complete TRAILERS frame to `out`, encoded in place: its length is worked
    /// out first, so nothing is encoded twice or copied.
    pub fn put_frame(&self, out: &mut BytesMut) {
        put_frame_in_place(out, FrameKind::Trailers, self.payload_len(), |out| {
            self.encode(out)
        });
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
