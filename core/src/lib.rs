//! Meridian: low-latency RPC over QUIC, built for services that live in several regions.
//!
//! Each call is its own QUIC stream on a shared connection, so a slow or lost call never
//! blocks another; TLS 1.3 is always on. Calls can be unary or streaming either way, carry
//! metadata and deadlines, and end with one of gRPC's 17 status codes.
//!
//! Layers, lowest first; a layer uses only layers below it, and peers on one layer do not
//! know each other (`tests/layering.rs` checks this on every `crate::` path):
//! - [`codec`]: message encodings: postcard for typed Rust, [`Value`] for any language,
//!   raw bytes. Pure code.
//! - [`wire`]: frames, varints, headers, trailers, HELLO, status codes. Pure code.
//! - `status`: [`Status`] (a call's outcome) and [`Error`] (everything else).
//! - [`telemetry`]: metrics (Prometheus text), the metrics and health endpoint, W3C trace
//!   context.
//! - [`discovery`] and [`transport`]: where servers are (region maps, the in-process
//!   registry, etcd); QUIC endpoints, TLS identities and trust, limits, 0-RTT.
//! - `call`: what one call needs on either side: frame I/O on its stream, messages, reset
//!   codes.
//! - [`server`] and [`client`]: the public RPC API for one server.
//! - [`region`]: region routing over many servers: nearest region by measured RTT,
//!   balancing, failover, hedging.
//! - [`proxy`]: a gateway that forwards calls through region routing and reports the time
//!   of each hop.
//! - `testing` (feature `testing`): the WAN link emulator used by tests and benchmarks.
//! - `DevCa` (feature `dev`, off by default): a throwaway CA for development and tests.
//!
//! A server and a client in a few lines:
//!
//! ```
//! use meridian::{Channel, ClientTls, DevCa, Method, Server, ServerTls, Status};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let ca = DevCa::new()?;
//! let server = Server::builder()
//!     .region("local")
//!     .unary(Method::new("add").idempotent(), |(a, b): (i64, i64), _ctx| async move {
//!         a.checked_add(b).ok_or_else(|| Status::out_of_range("sum overflows"))
//!     })
//!     .bind("127.0.0.1:0".parse()?, ServerTls::new(ca.issue_server(&["localhost"])?))
//!     .await?;
//!
//! let tls = ClientTls::with_roots([ca.certificate().clone()])?;
//! let channel = Channel::builder(server.local_addr(), tls).connect().await?;
//! let sum: i64 = channel.unary("add", &(10i64, 5i64)).await?;
//! assert_eq!(sum, 15);
//! server.shutdown(std::time::Duration::from_secs(1)).await;
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod call;
pub mod client;
pub mod codec;
pub mod discovery;
pub mod proxy;
pub mod region;
pub mod server;
mod status;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod transport;
pub mod wire;

pub use call::{DecodeAs, EncodeAs, PayloadStyle, Raw, RetryPolicy, Typed};
pub use client::{
    CallBuilder, CallOptions, CallTiming, Channel, ChannelBuilder, ChannelStats, RequestSink,
    Response, ResponseFuture, ServedBy, Streaming,
};
pub use codec::{Codec, Value};
pub use server::{
    CallContext, MemoryReservation, Method, RequestStream, ResponseSink, Server, ServerBuilder,
    UpstreamReport, HEALTH_METHOD,
};
pub use status::{Error, Status};
#[cfg(feature = "dev")]
pub use transport::DevCa;
pub use transport::{ClientTls, Identity, ServerTls, TransportConfig};
pub use wire::{Code, Metadata};

/// The README's Rust tour, compiled and run as a doctest so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
