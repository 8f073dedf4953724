//! tower interop on the calling side: a [`Channel`] is a
//! [`tower_service::Service`] of [`UnaryRequest`]s, so tower's layers (concurrency and
//! rate limits, load shedding, timeouts, buffering) stack in front of it unchanged. A
//! region client is one too (in the region layer).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;

use super::channel::Channel;
use super::options::CallOptions;
use super::response::Response;
use crate::status::Status;

/// A unary call as a tower request: the method, the request message already encoded
/// (sent as is, with the codec named in `options`, raw bytes by default), and the call's
/// options.
///
/// ```no_run
/// # async fn demo(channel: meridian::Channel) -> Result<(), meridian::Status> {
/// use meridian::client::UnaryRequest;
/// use tower::{Service, ServiceBuilder, ServiceExt};
///
/// // At most 8 calls in flight through this handle, whatever the callers do.
/// let mut limited = ServiceBuilder::new().concurrency_limit(8).service(channel);
/// let response = limited
///     .ready()
///     .await?
///     .call(UnaryRequest::new("echo", bytes::Bytes::from_static(b"hi")))
///     .await?;
/// assert_eq!(response.into_inner(), "hi");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct UnaryRequest {
    /// The method to call.
    pub method: String,
    /// The encoded request message.
    pub message: Bytes,
    /// Timeout, metadata, codec and the rest.
    pub options: CallOptions,
}

impl UnaryRequest {
    /// A call of `method` with `message` and default options.
    pub fn new(method: impl Into<String>, message: impl Into<Bytes>) -> UnaryRequest {
        UnaryRequest {
            method: method.into(),
            message: message.into(),
            options: CallOptions::default(),
        }
    }

    /// The same request with these options.
    pub fn with_options(mut self, options: CallOptions) -> UnaryRequest {
        self.options = options;
        self
    }
}

/// The future of a call made through the tower interface.
pub type CallFuture = Pin<Box<dyn Future<Output = Result<Response<Bytes>, Status>> + Send>>;

/// Always ready: a channel queues nothing of its own (QUIC stream credit is waited for
/// inside the call, within its deadline); put a tower limit in front to bound callers.
impl tower_service::Service<UnaryRequest> for Channel {
    type Response = Response<Bytes>;
    type Error = Status;
    type Future = CallFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: UnaryRequest) -> CallFuture {
        let channel = self.clone();
        Box::pin(async move {
            channel
                .call(request.method)
                .options(request.options)
                .raw()
                .unary(&request.message)
                .await
        })
    }
}
