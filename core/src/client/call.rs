//! [`CallBuilder`]: per-call options and the call kinds.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::{debug, field, Instrument};

use super::channel::Channel;
use super::connection::ChannelInner;
use super::open::{finish_span, open_call, with_deadline};
use super::response::Response;
use super::retry::{Failure, Retry, MAX_ATTEMPTS};
use super::streaming::{RequestSink, ResponseFuture, Streaming};
use crate::call::{
    decode_raw, decode_typed, encode_raw, encode_typed, may_send_again, DecodeFn, EncodeFn,
};
use crate::codec::Codec;
use crate::status::Status;
use crate::wire::{Metadata, RequestHeaders};

/// Options of one call, then the call itself.
#[derive(Debug)]
#[must_use = "a call does nothing until a call kind such as `unary` is awaited"]
pub struct CallBuilder {
    pub(super) channel: Channel,
    pub(super) method: String,
    pub(super) timeout: Option<Duration>,
    pub(super) metadata: Metadata,
    pub(super) idempotent: bool,
    pub(super) routing_key: Option<Bytes>,
    /// The codec chosen with [`codec`](Self::codec); each call kind has its default.
    pub(super) codec: Option<Codec>,
}

impl CallBuilder {
    /// Gives up after `timeout`; the server is told the time left and stops the handler
    /// when it passes.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Adds a metadata entry.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.metadata.insert(key, value);
        self
    }

    /// Declares the call safe to run more than once.
    pub fn idempotent(mut self, idempotent: bool) -> Self {
        self.idempotent = idempotent;
        self
    }

    /// Sets a routing key (for key-owned data; forwarded by proxies).
    pub fn routing_key(mut self, key: impl Into<Bytes>) -> Self {
        self.routing_key = Some(key.into());
        self
    }

    /// Chooses the codec. For typed messages: [`Codec::Postcard`] (default, Rust to Rust)
    /// or [`Codec::Value`] (self-describing, any language). For the `*_raw` calls, whose
    /// bytes are already encoded: the codec byte announced with them (default
    /// [`Codec::Raw`]); a gateway passing a caller's messages through sets the caller's
    /// codec here, so the server decodes them as the caller meant.
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = Some(codec);
        self
    }

    /// The codec a typed call uses.
    fn typed_codec(&mut self) -> Codec {
        *self.codec.get_or_insert(Codec::Postcard)
    }

    /// A unary call with typed messages.
    pub async fn unary<Req: Serialize, Resp: DeserializeOwned>(
        mut self,
        request: &Req,
    ) -> Result<Response<Resp>, Status> {
        let max = self.channel.inner.wire.max_message_size;
        let codec = self.typed_codec();
        let msg = encode_typed(codec, request, max)?;
        self.unary_bytes(msg, decode_typed::<Resp>).await
    }

    /// A unary call on raw bytes.
    pub async fn unary_raw(mut self, request: Bytes) -> Result<Response<Bytes>, Status> {
        self.codec.get_or_insert(Codec::Raw);
        let msg = encode_raw(
            Codec::Raw,
            &request,
            self.channel.inner.wire.max_message_size,
        )?;
        self.unary_bytes(msg, decode_raw).await
    }

    async fn unary_bytes<Resp>(
        self,
        msg: Bytes,
        decode: DecodeFn<Resp>,
    ) -> Result<Response<Resp>, Status> {
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
        let (inner, mut headers, deadline) = self.into_parts(started);
        let fut = async {
            let mut attempts = 0u32;
            let mut lost_once = false;
            loop {
                attempts += 1;
                let attempt = async {
                    // Only a first attempt may go early: if 0-RTT was rejected, the
                    // handshake must be complete before the call is sent again.
                    let mut call = open_call(
                        &inner,
                        &mut headers,
                        deadline,
                        Some(msg.clone()),
                        true,
                        attempts == 1,
                    )
                    .await?;
                    tracing::Span::current().record("early", call.early);
                    let mut recv = call.take_recv();
                    let result = recv.single_response(decode).await;
                    if recv.finished {
                        call.done();
                    }
                    result.map_err(|status| Failure {
                        status,
                        retry: recv.retry,
                    })
                };
                let failure = match attempt.await {
                    Ok(r) => {
                        tracing::Span::current().record("attempts", attempts);
                        return Ok(r);
                    }
                    Err(f) => f,
                };
                let idempotent =
                    || headers.idempotent || inner.catalog().is_idempotent(&headers.method);
                // A call that provably never ran (refused, or lost with rejected 0-RTT
                // data) is sent again, paced by the reconnection backoff, up to
                // MAX_ATTEMPTS and within its deadline; one that may have run is sent again
                // once, and only if it is idempotent.
                // The server's answer is final here (the region client decides about
                // other servers); a lost connection follows the one rule, once.
                let again = attempts < MAX_ATTEMPTS
                    && match failure.retry {
                        Retry::NotStarted => true,
                        Retry::MaybeStarted => {
                            !lost_once && may_send_again(&failure.status, idempotent())
                        }
                        Retry::No => false,
                    };
                if again {
                    lost_once |= failure.retry == Retry::MaybeStarted;
                    inner.stats.retries.fetch_add(1, Ordering::Relaxed);
                    debug!(method = %headers.method, reason = %failure.status, "sending the call again");
                    continue;
                }
                tracing::Span::current().record("attempts", attempts);
                return Err(failure.into_status(idempotent()));
            }
        };
        let result = with_deadline(deadline, fut).instrument(span.clone()).await;
        if let Ok(r) = &result {
            r.timing.record(&span);
        }
        finish_span(&span, &inner, &result, started);
        result
    }

    /// A server-streaming call: one request, a stream of responses.
    pub async fn server_streaming<Req: Serialize, Resp: DeserializeOwned>(
        mut self,
        request: &Req,
    ) -> Result<Streaming<Resp>, Status> {
        let codec = self.typed_codec();
        let msg = encode_typed(codec, request, self.channel.inner.wire.max_message_size)?;
        self.server_streaming_with(msg, decode_typed::<Resp>).await
    }

    /// A server-streaming call on raw bytes.
    pub async fn server_streaming_raw(
        mut self,
        request: Bytes,
    ) -> Result<Streaming<Bytes>, Status> {
        self.codec.get_or_insert(Codec::Raw);
        let msg = encode_raw(
            Codec::Raw,
            &request,
            self.channel.inner.wire.max_message_size,
        )?;
        self.server_streaming_with(msg, decode_raw).await
    }

    async fn server_streaming_with<Resp>(
        self,
        msg: Bytes,
        decode: DecodeFn<Resp>,
    ) -> Result<Streaming<Resp>, Status> {
        let (inner, mut headers, deadline) = self.into_parts(Instant::now());
        let open = open_call(&inner, &mut headers, deadline, Some(msg), true, false);
        let mut call = with_deadline(deadline, async {
            open.await.map_err(|f| f.into_status(true))
        })
        .await?;
        let recv = call.take_recv();
        call.done();
        Ok(recv.into_streaming(decode, deadline))
    }

    /// A client-streaming call: send requests on the sink, then await the response.
    pub async fn client_streaming<Req: Serialize, Resp: DeserializeOwned>(
        self,
    ) -> Result<(RequestSink<Req>, ResponseFuture<Resp>), Status> {
        self.client_streaming_with(encode_typed::<Req>, decode_typed::<Resp>)
            .await
    }

    /// A client-streaming call on raw bytes.
    pub async fn client_streaming_raw(
        mut self,
    ) -> Result<(RequestSink<Bytes>, ResponseFuture<Bytes>), Status> {
        self.codec.get_or_insert(Codec::Raw);
        self.client_streaming_with(encode_raw, decode_raw).await
    }

    async fn client_streaming_with<Req, Resp>(
        self,
        encode: EncodeFn<Req>,
        decode: DecodeFn<Resp>,
    ) -> Result<(RequestSink<Req>, ResponseFuture<Resp>), Status> {
        let (inner, mut headers, deadline) = self.into_parts(Instant::now());
        let max = inner.wire.max_message_size;
        let open = open_call(&inner, &mut headers, deadline, None, false, false);
        let mut call = with_deadline(deadline, async {
            open.await.map_err(|f| f.into_status(true))
        })
        .await?;
        let codec = call.codec;
        let sink = RequestSink {
            send: call.take_send(),
            codec,
            max,
            encode,
        };
        let recv = call.take_recv();
        Ok((
            sink,
            ResponseFuture {
                recv,
                decode,
                deadline,
            },
        ))
    }

    /// A bidirectional call: send on the sink while reading the stream.
    pub async fn bidi<Req: Serialize, Resp: DeserializeOwned>(
        self,
    ) -> Result<(RequestSink<Req>, Streaming<Resp>), Status> {
        self.bidi_with(encode_typed::<Req>, decode_typed::<Resp>)
            .await
    }

    /// A bidirectional call on raw bytes.
    pub async fn bidi_raw(mut self) -> Result<(RequestSink<Bytes>, Streaming<Bytes>), Status> {
        self.codec.get_or_insert(Codec::Raw);
        self.bidi_with(encode_raw, decode_raw).await
    }

    async fn bidi_with<Req, Resp>(
        self,
        encode: EncodeFn<Req>,
        decode: DecodeFn<Resp>,
    ) -> Result<(RequestSink<Req>, Streaming<Resp>), Status> {
        let (inner, mut headers, deadline) = self.into_parts(Instant::now());
        let max = inner.wire.max_message_size;
        let open = open_call(&inner, &mut headers, deadline, None, false, false);
        let mut call = with_deadline(deadline, async {
            open.await.map_err(|f| f.into_status(true))
        })
        .await?;
        let sink = RequestSink {
            send: call.take_send(),
            codec: call.codec,
            max,
            encode,
        };
        Ok((sink, call.take_recv().into_streaming(decode, deadline)))
    }

    fn into_parts(self, started: Instant) -> (Arc<ChannelInner>, RequestHeaders, Option<Instant>) {
        let deadline = self.timeout.map(|t| started + t);
        let headers = RequestHeaders {
            method: self.method,
            codec: self.codec.unwrap_or(Codec::Postcard),
            timeout: self.timeout,
            idempotent: self.idempotent,
            routing_key: self.routing_key,
            metadata: self.metadata,
        };
        (self.channel.inner, headers, deadline)
    }
}
