//! The server: handlers registered by method name, served over QUIC.
//!
//! Each incoming bidirectional stream is one call and runs in its own tokio task, so a slow
//! handler never delays another call. The task reads the HEADERS, looks the method up,
//! reads the request, and runs the handler while it watches for three ways a call can end
//! early: the client cancels (its `STOP_SENDING` reaches us), the deadline the client sent
//! passes, or the handler panics. Each of those ends this call only.
//!
//! ```no_run
//! # async fn demo() -> Result<(), meridian::Error> {
//! use meridian::{DevCa, Method, Server, ServerTls, Status};
//! let ca = DevCa::new()?;
//! let server = Server::builder()
//!     .region("eu-west")
//!     .unary(Method::new("add").idempotent(), |(a, b): (i64, i64), _ctx| async move {
//!         a.checked_add(b).ok_or_else(|| Status::out_of_range("overflow"))
//!     })
//!     .bind("127.0.0.1:0".parse().unwrap(), ServerTls::new(ca.issue_server(&["localhost"])?))
//!     .await?;
//! println!("serving on {}", server.local_addr());
//! server.shutdown(std::time::Duration::from_secs(5)).await;
//! # Ok(()) }
//! ```

mod builder;
mod call;
mod connection;
mod context;
mod handler;
mod health;
mod intercept;
mod lifecycle;
mod method;
mod respond;
mod shared;
mod streams;

use std::future::Future;
use std::pin::Pin;

pub use builder::{ServerBuilder, UnaryCall};
use bytes::Bytes;
pub use context::{CallContext, MemoryReservation, UpstreamReport};
pub use health::HEALTH_METHOD;
pub use intercept::{AllowNames, CallEnd, CallHead, Hold, Interceptor, PerCallerLimit};
pub use lifecycle::{Server, ServerStats};
pub use method::Method;
pub use shared::CatalogHandle;
pub use streams::{RequestStream, ResponseSink};

use self::handler::ServerCall;
use crate::status::Status;

/// A boxed handler future.
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;
/// Every handler, once erased: a function of the call to its single reply (or none, for
/// streaming replies sent through the call).
type Handler = dyn Fn(ServerCall) -> BoxFuture<Result<Option<Bytes>, Status>> + Send + Sync;

/// Response messages a streaming handler may queue ahead of the network.
const RESPONSE_QUEUE: usize = 8;
