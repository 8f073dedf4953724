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

mod code;
mod error;
mod frame;
mod headers;
mod hello;
mod limits;
mod metadata;
mod shutdown;
#[cfg(test)]
mod tests;
mod trailers;
mod varint;

pub use code::{reset, Code};
pub use error::WireError;
pub use frame::*;
pub use headers::*;
pub use hello::*;
pub use limits::WireLimits;
pub use metadata::{Metadata, METADATA_ENTRY_OVERHEAD};
pub use shutdown::{shutdown_not_run_from, shutdown_reason};
pub use trailers::*;
pub use varint::{peek_varint, put_varint, varint_len, VARINT_MAX};

/// The protocol version carried in the HELLO.
pub const PROTOCOL_VERSION: u8 = 1;

/// The ALPN identifier negotiated in the TLS handshake.
pub const ALPN: &[u8] = b"meridian/1";
