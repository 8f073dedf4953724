//! A handler's message streams: [`RequestStream`] in, [`ResponseSink`] out.

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::call::{DecodeFn, EncodeFn, FramedRecv};
use crate::codec::{Codec, DecodeLimits};
use crate::status::Status;
use crate::wire::FrameKind;

/// Messages a client streams to a handler (client-streaming and bidirectional calls).
pub struct RequestStream<T> {
    pub(super) recv: FramedRecv,
    pub(super) codec: Codec,
    pub(super) limits: DecodeLimits,
    pub(super) decode: DecodeFn<T>,
    pub(super) done: bool,
}

impl<T> std::fmt::Debug for RequestStream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestStream")
            .field("done", &self.done)
            .finish()
    }
}

impl<T> RequestStream<T> {
    /// The next message, `Ok(None)` once the client has finished sending.
    ///
    /// An error means the client cancelled, broke a limit or sent an undecodable message;
    /// returning it from the handler ends the call with that status.
    pub async fn message(&mut self) -> Result<Option<T>, Status> {
        if self.done {
            return Ok(None);
        }
        match self.recv.next_frame().await {
            Ok(Some(f)) if f.kind == FrameKind::Data => {
                (self.decode)(self.codec, f.payload, &self.limits).map(Some)
            }
            Ok(Some(f)) => Err(Status::invalid_argument(format!(
                "unexpected {} frame in a request",
                f.kind
            ))),
            Ok(None) => {
                self.done = true;
                Ok(None)
            }
            Err(e) => {
                self.done = true;
                Err(e.to_status())
            }
        }
    }
}

/// Where a streaming handler sends its responses. Sending waits while the client is slow
/// to read (backpressure); it fails once the call has ended.
pub struct ResponseSink<T> {
    pub(super) tx: mpsc::Sender<Bytes>,
    pub(super) codec: Codec,
    pub(super) max: usize,
    pub(super) encode: EncodeFn<T>,
}

impl<T> std::fmt::Debug for ResponseSink<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseSink").finish_non_exhaustive()
    }
}

impl<T> ResponseSink<T> {
    /// Sends one response message.
    pub async fn send(&self, msg: &T) -> Result<(), Status> {
        let bytes = (self.encode)(self.codec, msg, self.max)?;
        self.tx
            .send(bytes)
            .await
            .map_err(|_| Status::cancelled("the call has ended"))
    }
}
