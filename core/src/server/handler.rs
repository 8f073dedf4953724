//! Type erasure: every handler, whatever its call kind and payload style, becomes one boxed function of a [`ServerCall`].

use bytes::Bytes;
use tokio::sync::mpsc;

use super::context::{CallContext, MemoryReservation};
use super::streams::{Queued, RequestStream, ResponseSink};
use crate::call::{DecodeFn, EncodeFn, FramedRecv};
use crate::codec::{Codec, DecodeLimits, Value};
use crate::status::Status;

/// Everything a type-erased handler receives.
pub(crate) struct ServerCall {
    pub(super) ctx: CallContext,
    pub(super) body: RequestBody,
    pub(super) sink: Option<mpsc::Sender<Queued>>,
    pub(super) limits: DecodeLimits,
    pub(super) max_message: usize,
}

pub(super) enum RequestBody {
    One(Bytes),
    Stream(FramedRecv),
}

impl ServerCall {
    pub(super) fn take_single_request(&mut self) -> Bytes {
        match std::mem::replace(&mut self.body, RequestBody::One(Bytes::new())) {
            RequestBody::One(b) => b,
            RequestBody::Stream(_) => Bytes::new(),
        }
    }

    /// Takes the single request and decodes it. A [`Codec::Value`] body decoded into a
    /// typed message first reserves its decoded size (see
    /// [`CallContext::reserve_memory`]); the reservation is returned, to be held while
    /// the handler runs.
    pub(super) fn decode_single<T>(
        &mut self,
        decode: DecodeFn<T>,
        typed: bool,
    ) -> Result<(T, MemoryReservation), Status> {
        let body = self.take_single_request();
        let codec = self.ctx.codec;
        let decoded = if typed && codec == Codec::Value {
            // A body over the decode limit fails to decode anyway, with a clearer status.
            Some(Value::decoded_size_hint(&body)).filter(|&n| n <= self.limits.max_decoded_size)
        } else {
            None
        };
        // Twice: the typed message is built from a decoded tree, so both exist for a while.
        let decoded = decoded.unwrap_or(0).saturating_mul(2);
        let reservation = self.ctx.reserve_memory(decoded)?;
        Ok((decode(codec, body, &self.limits)?, reservation))
    }

    pub(super) fn stream<T>(&mut self, decode: DecodeFn<T>) -> Result<RequestStream<T>, Status> {
        match std::mem::replace(&mut self.body, RequestBody::One(Bytes::new())) {
            RequestBody::Stream(recv) => Ok(RequestStream {
                recv,
                codec: self.ctx.codec,
                limits: self.limits,
                decode,
                done: false,
            }),
            RequestBody::One(_) => Err(Status::internal("request stream already taken")),
        }
    }

    pub(super) fn sink<T>(&mut self, encode: EncodeFn<T>) -> Result<ResponseSink<T>, Status> {
        let tx = self
            .sink
            .take()
            .ok_or_else(|| Status::internal("response sink already taken"))?;
        Ok(ResponseSink {
            tx,
            budgets: self.ctx.budgets.clone(),
            codec: self.ctx.codec,
            max: self.max_message,
            encode,
        })
    }
}
