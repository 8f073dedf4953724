//! The client: a [`Channel`] to one server, carrying any number of concurrent calls.
//!
//! Every call is its own QUIC stream on one shared connection, so a slow or lost call never
//! holds up another. A call ends in one of three ways: the server's TRAILERS arrive, its
//! deadline passes (the stream is reset with `DEADLINE_EXCEEDED` and the server's handler is
//! cancelled), or the caller drops it (the stream is reset with `CANCELLED`, same effect).
//!
//! ```no_run
//! # async fn demo(addr: std::net::SocketAddr, ca: &meridian::DevCa) -> Result<(), Box<dyn std::error::Error>> {
//! use meridian::{Channel, ClientTls};
//! let tls = ClientTls::with_roots([ca.certificate().clone()])?;
//! let channel = Channel::builder(addr, tls).server_name("localhost").connect().await?;
//! let sum: i64 = channel
//!     .call("add")
//!     .timeout(std::time::Duration::from_secs(1))
//!     .unary(&(10i64, 5i64))
//!     .await?
//!     .into_inner();
//! assert_eq!(sum, 15);
//! # Ok(()) }
//! ```

mod builder;
mod call;
mod channel;
mod connection;
mod hold;
mod intercept;
mod open;
mod options;
mod response;
mod retry;
mod service;
mod stats;
mod streaming;

pub use builder::ChannelBuilder;
pub(crate) use call::end_when_done;
pub use call::CallBuilder;
pub use channel::Channel;
pub(crate) use hold::Attach;
pub(crate) use intercept::{admit, settle, Chain, Intercepted};
pub use intercept::{CallEnd, CallHead, CallKind, Hold, Interceptor};
pub use options::CallOptions;
pub use response::{CallTiming, Response, ServedBy};
pub(crate) use retry::Reach;
pub use service::{CallFuture, UnaryRequest};
pub use stats::ChannelStats;
pub use streaming::{RequestSink, ResponseFuture, Streaming};
