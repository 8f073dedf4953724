//! The region proxy: a gateway that takes calls like a server and forwards each one through
//! a [`RegionClient`](crate::region::RegionClient), so a caller that knows one address reaches the nearest healthy region
//! that serves its method, with the same failover, retries and hedging as a client library.
//!
//! Every response the proxy forwards carries its own times in the TRAILERS (time inside the
//! proxy, and its upstream call's time) beside the server's time, so a client reads off each
//! call where the time went: `client -> proxy` network, proxy, `proxy -> server` network and
//! server (see [`CallTiming`](crate::CallTiming)).
//!
//! How each call kind is forwarded, by the kind the upstream catalogs give the method:
//! - unary: one routed call, retried and hedged like [`RegionClient`](crate::region::RegionClient) calls;
//! - server-streaming: opened on the chosen server (the next choice is tried once if the
//!   open fails without running), then responses are passed on one by one;
//! - client-streaming, bidirectional and methods no catalog lists yet: a stream each way,
//!   messages passed on as they arrive.
//!
//! Memory per call is bounded: a message is held whole (at most the message size limit)
//! while it waits for the next hop's flow control, and at most a few responses queue in the
//! proxy; a slow reader stops the proxy reading from its writer, which QUIC flow control
//! then slows down. Deadlines go on with the time the caller has left; a caller that
//! cancels cancels the upstream call; an upstream failure reaches the caller with the same
//! status and metadata.
//!
//! ```no_run
//! # async fn demo() -> Result<(), meridian::Error> {
//! let proxy = meridian::proxy::Proxy::from_toml_file("proxy.toml").await?;
//! println!("proxy on {}", proxy.local_addr());
//! # Ok(()) }
//! ```

mod builder;
mod config;
mod forward;
mod handle;
mod upstream;

use std::time::Duration;
/// How often the proxy compares the catalog it announces with its upstream servers' (a
/// cheap check; connected clients hear only of changes).
const CATALOG_REFRESH: Duration = Duration::from_millis(50);

pub use builder::ProxyBuilder;
pub use config::{ProxyConfig, ProxyTlsConfig};
pub use handle::{Proxy, ProxyStats};
