//! Type erasure: every handler, whatever its call kind and payload style, becomes one boxed function of a [`ServerCall`].

use bytes::Bytes;
use tokio::sync::mpsc;

use super::context::CallContext;
use super::streams::{RequestStream, ResponseSink};
use crate::call::{DecodeFn, EncodeFn, FramedRecv};
use crate::codec::DecodeLimits;
use crate::status::Status;

/// Everything a type-erased handler receives.
pub(crate) struct ServerCall {
    pub(super) ctx: CallContext,
    pub(super) body: RequestBody,
    pub(super) sink: Option<mpsc::Sender<Bytes>>,
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
            codec: self.ctx.codec,
            max: self.max_message,
            encode,
        })
    }
}
