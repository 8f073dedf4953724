//! HELLO: what a server announces on its control stream.

use bytes::{BufMut, BytesMut};

use super::error::WireError;
use super::frame::{put_frame, FrameKind};
use super::headers::MAX_METHOD_LEN;
use super::varint::{get_str, get_u8, get_varint, put_bytes, put_varint};

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
    /// Protocol version ([`PROTOCOL_VERSION`](super::PROTOCOL_VERSION)).
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
