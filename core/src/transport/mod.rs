//! QUIC endpoints over rustls: transport limits, TLS identities and trust, dev certificates.
//!
//! Every limit that decides how much a peer can make us buffer is set here on purpose, in
//! one [`TransportConfig`] with documented defaults. quinn's own defaults allow roughly
//! 100 streams x 1.25 MB of receive window and an unbounded connection window; Meridian
//! sets [`TransportConfig::DEFAULT_CONNECTION_WINDOW`] instead. That window bounds the bytes
//! quinn holds for the application, not what the application has already read out of it:
//! request bytes moved into a call's frame decoder return their flow-control credit, so
//! they are bounded by the message size limit per stream times the stream limit, not by
//! the window. Those decoders grow with the bytes that arrive, never with a length a frame
//! header declares, and unidirectional streams the protocol does not use are stopped on
//! arrival, so they hold nothing.
//!
//! TLS is always on (TLS 1.3 only, ALPN `meridian/1`). AES-128-GCM-SHA256 is offered first:
//! ring's default prefers AES-256-GCM-SHA384, and SHA-384 has no hardware support on many
//! CPUs, which shows in handshake CPU time.

mod client_tls;
mod config;
#[cfg(feature = "dev")]
mod dev;
mod endpoint;
mod identity;
mod peer;
mod pem_text;
mod pin;
mod server_tls;
mod session;

pub(crate) mod zero_rtt;

pub use client_tls::ClientTls;
pub use config::{crypto_provider, TransportConfig};
#[cfg(feature = "dev")]
pub use dev::DevCa;
pub(crate) use endpoint::{describe_connection_error, server_endpoint};
pub use identity::Identity;
pub use peer::PeerIdentity;
pub use pem_text::pem_encode;
pub(crate) use pin::pinned_quinn_config;
pub use pin::{cert_sha256, CertHashMismatch};
pub use server_tls::ServerTls;
pub use session::{
    memory_session_store, SessionStore, DEFAULT_SESSION_CAPACITY, TICKETS_PER_HANDSHAKE,
};
