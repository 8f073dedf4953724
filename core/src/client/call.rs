//! [`CallBuilder`]: one call surface for every caller. The options are set here once; the
//! four call kinds are generic over the payload style ([`Typed`] or [`Raw`]); each target
//! ([`Channel`] here, `RegionClient` in the region layer) implements the kinds for itself.

use std::marker::PhantomData;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{debug, field, Instrument};

use super::channel::Channel;
use super::connection::ChannelInner;
use super::hold::Attach;
use super::intercept::{admit, settle, CallKind, Intercepted};
use super::open::{
    deadline_exceeded, finish_span, open_call, with_deadline, CallRecv, Early, Request,
};
use super::options::CallOptions;
use super::response::Response;
use super::retry::{Failure, Reach, Retry, MAX_ATTEMPTS};
use super::streaming::{RequestSink, ResponseFuture, Streaming};
use crate::call::{may_send_again, DecodeAs, EncodeAs, PayloadStyle, Raw, Typed};
use crate::codec::Codec;
use crate::status::Status;
use crate::wire::RequestHeaders;

/// Options of one call, then the call itself, for any target: a [`Channel`] (one server) or
/// a `RegionClient` (routed). `P` is the payload style: [`Typed`] messages by default,
/// [`Raw`] bytes after [`raw`](Self::raw).
///
/// ```no_run
/// # async fn demo(channel: meridian::Channel) -> Result<(), meridian::Status> {
/// use std::time::Duration;
/// let sum: i64 = channel
///     .call("add")
///     .timeout(Duration::from_millis(50))
///     .metadata("tenant", "blue")
///     .unary(&(1i64, 2i64))
///     .await?
///     .into_inner();
/// let echoed = channel.call("echo").raw().unary(&bytes::Bytes::from_static(b"hi")).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "a call does nothing until a call kind such as `unary` is awaited"]
pub struct CallBuilder<T, P = Typed> {
    pub(crate) target: T,
    pub(crate) method: String,
    pub(crate) options: CallOptions,
    /// One attempt only: the caller (a region client) decides about sending again, and
    /// pays for it from its budget. The channel still completes an attempt whose 0-RTT
    /// data was rejected (the server saw nothing; it is the same attempt, after the
    /// handshake).
    pub(crate) one_attempt: bool,
    /// Where a unary call on a channel reports whether it may have reached the server
    /// (set by a region client, which may give the call up midway).
    pub(crate) reach: Option<Reach>,
    style: PhantomData<P>,
}

impl<T, P: PayloadStyle> CallBuilder<T, P> {
    pub(crate) fn new(target: T, method: String) -> Self {
        CallBuilder {
            target,
            method,
            options: CallOptions::default(),
            one_attempt: false,
            reach: None,
            style: PhantomData,
        }
    }

    /// Gives up after `timeout`; the server is told the time left and stops the handler
    /// when it passes. A timeout too large to represent means no deadline.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.options.timeout = Some(timeout);
        self
    }

    /// Adds a metadata entry.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.options.metadata.insert(key, value);
        self
    }

    /// Declares the call safe (`true`) or not (`false`) to run more than once, whatever the
    /// servers' catalogs say; without it the catalogs decide.
    pub fn idempotent(mut self, idempotent: bool) -> Self {
        self.options.idempotent = Some(idempotent);
        self
    }

    /// Waits for a server to become reachable instead of failing fast (see
    /// [`CallOptions::wait_for_ready`]).
    pub fn wait_for_ready(mut self, wait: bool) -> Self {
        self.options.wait_for_ready = wait;
        self
    }

    /// Sets a routing key: a region client sends the call to the key's owner; proxies pass
    /// it on.
    pub fn routing_key(mut self, key: impl Into<Bytes>) -> Self {
        self.options.routing_key = Some(key.into());
        self
    }

    /// Chooses the codec. Typed messages: [`Codec::Postcard`] (default, Rust to Rust) or
    /// [`Codec::Value`] (self-describing, any language). Raw bytes: the codec they were
    /// encoded with (default [`Codec::Raw`]); a gateway passing a caller's messages through
    /// sets the caller's codec here, so the server decodes them as the caller meant.
    pub fn codec(mut self, codec: Codec) -> Self {
        self.options.codec = Some(codec);
        self
    }

    /// Replaces every option at once.
    pub fn options(mut self, options: CallOptions) -> Self {
        self.options = options;
        self
    }

    /// The options as set so far.
    pub fn current_options(&self) -> &CallOptions {
        &self.options
    }

    /// The method called.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// Switches to raw bytes: requests and responses are [`Bytes`], sent and returned
    /// without encoding.
    pub fn raw(self) -> CallBuilder<T, Raw> {
        self.with_style()
    }

    /// Switches to typed messages (the default).
    pub fn typed(self) -> CallBuilder<T, Typed> {
        self.with_style()
    }

    /// The same call in another payload style.
    pub(crate) fn with_style<Q>(self) -> CallBuilder<T, Q> {
        CallBuilder {
            target: self.target,
            method: self.method,
            options: self.options,
            one_attempt: self.one_attempt,
            reach: self.reach,
            style: PhantomData,
        }
    }

    /// The codec the call announces.
    pub(crate) fn codec_or_default(&self) -> Codec {
        self.options.codec.unwrap_or(P::DEFAULT_CODEC)
    }
}

/// The four call kinds on one server.
impl<P: PayloadStyle> CallBuilder<Channel, P> {
    /// A unary call: one request, one response.
    pub async fn unary<Req, Resp>(mut self, request: &Req) -> Result<Response<Resp>, Status>
    where
        Req: ?Sized,
        P: EncodeAs<Req> + DecodeAs<Resp>,
    {
        let passed = self.admit(CallKind::Unary)?;
        let msg = match self.encode_request(request) {
            Ok(msg) => msg,
            Err(e) => {
                let result = Err(e);
                settle(passed, &result);
                return result;
            }
        };
        // The rest of the call is written here rather than in a helper future: awaiting a
        // multi-KB future made elsewhere copies it into this one's state, on every call.
        let started = Instant::now();
        let span = tracing::debug_span!(
            "rpc.client",
            method = %self.method,
            code = field::Empty,
            duration_us = field::Empty,
            attempts = field::Empty,
            early = field::Empty,
            server_us = field::Empty,
            proxy_us = field::Empty,
            upstream_us = field::Empty
        );
        let one_attempt = self.one_attempt;
        let reach = self.reach.clone();
        let call = self.into_call(started);
        let inner = call.inner.clone();
        let deadline = call.deadline;
        let fut = async {
            let Call {
                inner,
                mut headers,
                deadline,
                explicit_idempotent,
                wait_for_ready,
            } = call;
            // The caller's flag, else the server's catalog as of now: a HELLO that arrives
            // while the call runs still counts for the decision to send it again.
            let idempotent = |headers: &RequestHeaders| {
                explicit_idempotent
                    .unwrap_or_else(|| inner.catalog().is_idempotent(&headers.method))
            };
            let mut attempts = 0u32;
            let mut lost_once = false;
            loop {
                attempts += 1;
                // One attempt, as a block of this future rather than a future of its own
                // (one state machine fewer on every poll).
                let result: Result<Response<Resp>, Failure> = 'attempt: {
                    // Only a first attempt may go early: if 0-RTT was rejected, the
                    // handshake must be complete before the call is sent again.
                    let early = if attempts == 1 {
                        Early::IfIdempotent(explicit_idempotent)
                    } else {
                        Early::Never
                    };
                    let request = Request::Single(msg.clone());
                    let opened = open_call(
                        &inner,
                        &mut headers,
                        deadline,
                        request,
                        early,
                        wait_for_ready,
                        reach.as_ref(),
                    )
                    .await;
                    let (mut call, opened) = match opened {
                        Ok(opened) => opened,
                        Err(failure) => break 'attempt Err(failure),
                    };
                    let mut recv = CallRecv::new(opened, &inner, headers.codec, deadline);
                    span.record("early", call.early);
                    let method = Some(headers.method.as_str());
                    let result = if call.may_be_overdue() {
                        // Rare (an early call on a reconnection), and boxed: the answer, or
                        // the handshake overdue.
                        let answer = Box::pin(async {
                            tokio::select! {
                                // The answer first; and no random order, which costs a draw
                                // from the thread's generator at each poll.
                                biased;
                                r = recv.single_response(P::decode_response, method) => Some(r),
                                _ = call.handshake_overdue() => None,
                            }
                        })
                        .await;
                        let Some(result) = answer else {
                            break 'attempt Err(Failure {
                                status: Status::unavailable(format!(
                                    "no handshake with {} after {:?}",
                                    inner.addr, inner.reconnect_wait
                                )),
                                // Its 0-RTT data may have reached the server.
                                retry: Retry::MaybeStarted,
                            });
                        };
                        result
                    } else {
                        recv.single_response(P::decode_response, method).await
                    };
                    if recv.finished {
                        call.done();
                    }
                    result.map_err(|status| Failure {
                        status,
                        retry: recv.retry,
                    })
                };
                if let (Some(reach), Err(f)) = (&reach, &result) {
                    reach.ended(f.retry);
                }
                let failure = match result {
                    Ok(r) => {
                        span.record("attempts", attempts);
                        return Ok(r);
                    }
                    Err(f) => f,
                };
                // The server's answer is final here (the region client decides about
                // other servers); a call that provably never ran is sent again, paced by
                // the reconnection backoff, up to MAX_ATTEMPTS and within its deadline; a
                // lost connection follows the one rule, once.
                let again = attempts < MAX_ATTEMPTS
                    && match failure.retry {
                        Retry::EarlyRejected => true,
                        _ if one_attempt => false,
                        // Failing fast: the next attempt would fail the same way at once.
                        Retry::NotStarted => wait_for_ready || !inner.failing(),
                        Retry::MaybeStarted => {
                            !lost_once && may_send_again(&failure.status, idempotent(&headers))
                        }
                        Retry::No => false,
                    };
                if again {
                    lost_once |= failure.retry == Retry::MaybeStarted;
                    inner.stats.retries.fetch_add(1, Ordering::Relaxed);
                    debug!(method = %headers.method, reason = %failure.status, "sending the call again");
                    continue;
                }
                span.record("attempts", attempts);
                // An earlier attempt may have run: the call is not known not to have run,
                // whatever the last attempt says.
                let mut failure = failure;
                if lost_once {
                    failure.retry = Retry::MaybeStarted;
                    failure.status = failure.status.clear_not_run();
                }
                return Err(failure.into_status(idempotent(&headers)));
            }
        };
        // Without a subscriber the span records nothing, and wrapping the call's future in
        // it would only copy that future once more.
        let fut = std::pin::pin!(fut);
        let result = if span.is_disabled() {
            // `with_deadline`'s steps, written out: one state machine fewer on every poll.
            match deadline {
                None => fut.await,
                Some(d) => tokio::time::timeout_at(d.into(), fut)
                    .await
                    .unwrap_or_else(|_| Err(deadline_exceeded())),
            }
        } else {
            with_deadline(deadline, fut).instrument(span.clone()).await
        };
        if let Ok(r) = &result {
            r.timing.record(&span);
        }
        finish_span(&span, &inner, &result, started);
        settle(passed, &result);
        result
    }

    /// Runs the channel's interceptors for this call.
    fn admit(&mut self, kind: CallKind) -> Result<Option<Intercepted>, Status> {
        admit(
            &self.target.inner.interceptors,
            &self.method,
            kind,
            &mut self.options,
        )
    }

    /// Encodes the single request of a unary or server-streaming call.
    fn encode_request<Req: ?Sized>(&self, request: &Req) -> Result<Bytes, Status>
    where
        P: EncodeAs<Req>,
    {
        let max = self.target.inner.wire.max_message_size;
        P::encode(self.codec_or_default(), request, max)
    }

    /// A server-streaming call: one request, a stream of responses.
    pub async fn server_streaming<Req, Resp>(
        mut self,
        request: &Req,
    ) -> Result<Streaming<Resp>, Status>
    where
        Req: ?Sized,
        P: EncodeAs<Req> + DecodeAs<Resp>,
    {
        let passed = self.admit(CallKind::ServerStreaming)?;
        let opened = self.open_server_streaming(request).await;
        end_when_done(passed, opened)
    }

    async fn open_server_streaming<Req, Resp>(
        self,
        request: &Req,
    ) -> Result<Streaming<Resp>, Status>
    where
        Req: ?Sized,
        P: EncodeAs<Req> + DecodeAs<Resp>,
    {
        let msg = self.encode_request(request)?;
        let Call {
            inner,
            mut headers,
            deadline,
            wait_for_ready,
            ..
        } = self.into_call(Instant::now());
        let open = open_call(
            &inner,
            &mut headers,
            deadline,
            Request::Single(msg),
            Early::Never,
            wait_for_ready,
            None,
        );
        let (mut call, opened) = with_deadline(
            deadline,
            std::pin::pin!(async { open.await.map_err(|f| f.into_status(true)) }),
        )
        .await?;
        call.done();
        let recv = CallRecv::new(opened, &inner, headers.codec, deadline);
        Ok(recv.into_streaming(P::decode_response, deadline))
    }

    /// A client-streaming call: send requests on the sink, then await the response.
    pub async fn client_streaming<Req, Resp>(
        mut self,
    ) -> Result<(RequestSink<Req>, ResponseFuture<Resp>), Status>
    where
        P: EncodeAs<Req> + DecodeAs<Resp>,
    {
        let passed = self.admit(CallKind::ClientStreaming)?;
        let opened = self
            .open_request_stream::<Req>()
            .await
            .map(|(sink, recv, deadline)| {
                (
                    sink,
                    ResponseFuture {
                        recv,
                        decode: P::decode_response,
                        deadline,
                    },
                )
            });
        end_when_done(passed, opened)
    }

    /// A bidirectional call: send on the sink while reading the stream.
    pub async fn bidi<Req, Resp>(mut self) -> Result<(RequestSink<Req>, Streaming<Resp>), Status>
    where
        P: EncodeAs<Req> + DecodeAs<Resp>,
    {
        let passed = self.admit(CallKind::Bidi)?;
        let opened = self
            .open_request_stream::<Req>()
            .await
            .map(|(sink, recv, deadline)| {
                (sink, recv.into_streaming(P::decode_response, deadline))
            });
        end_when_done(passed, opened)
    }

    /// Opens a call whose requests are streamed: HEADERS only, then a sink for requests.
    async fn open_request_stream<Req>(
        self,
    ) -> Result<(RequestSink<Req>, super::open::CallRecv, Option<Instant>), Status>
    where
        P: EncodeAs<Req>,
    {
        let Call {
            inner,
            mut headers,
            deadline,
            wait_for_ready,
            ..
        } = self.into_call(Instant::now());
        let max = inner.wire.max_message_size;
        let open = open_call(
            &inner,
            &mut headers,
            deadline,
            Request::Stream,
            Early::Never,
            wait_for_ready,
            None,
        );
        let (mut call, opened) = with_deadline(
            deadline,
            std::pin::pin!(async { open.await.map_err(|f| f.into_status(true)) }),
        )
        .await?;
        let recv = CallRecv::new(opened, &inner, headers.codec, deadline);
        let sink = RequestSink {
            send: call.take_send(),
            codec: call.codec,
            max,
            encode: P::encode,
            deadline,
            closed_by_server: false,
            _channel: inner.clone(),
        };
        Ok((sink, recv, deadline))
    }

    /// The call's HEADERS, deadline and the caller's idempotency flag.
    fn into_call(self, started: Instant) -> Call {
        let codec = self.codec_or_default();
        let inner = self.target.inner;
        let o = self.options;
        let deadline = o.deadline(started);
        let headers = RequestHeaders {
            method: self.method,
            codec,
            timeout: deadline.map(|d| d.saturating_duration_since(started)),
            idempotent: o.idempotent == Some(true),
            routing_key: o.routing_key,
            metadata: o.metadata,
        };
        Call {
            inner,
            headers,
            deadline,
            explicit_idempotent: o.idempotent,
            wait_for_ready: o.wait_for_ready,
        }
    }
}

/// An opened streaming call tells the interceptors how it ended when it ends; one that
/// failed to open tells them now.
pub(crate) fn end_when_done<T: Attach>(
    passed: Option<Intercepted>,
    opened: Result<T, Status>,
) -> Result<T, Status> {
    match (passed, opened) {
        (Some(passed), Ok(mut call)) => {
            call.attach_end(passed);
            Ok(call)
        }
        (passed, opened) => {
            settle(passed, &opened);
            opened
        }
    }
}

/// One call on a channel, ready to open.
struct Call {
    inner: Arc<ChannelInner>,
    headers: RequestHeaders,
    deadline: Option<Instant>,
    /// The caller's flag; `None`: the server's catalog decides, when asked.
    explicit_idempotent: Option<bool>,
    wait_for_ready: bool,
}
