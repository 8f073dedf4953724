//! A handler's message streams: [`RequestStream`] in, [`ResponseSink`] out.

use bytes::Bytes;
use tokio::sync::mpsc;

use std::sync::Arc;

use crate::call::budget::{Charge, Pool};
use crate::call::{DecodeFn, EncodeFn, FramedRecv, RecvError};
use crate::codec::{Codec, DecodeLimits};
use crate::status::Status;
use crate::wire::{reset, FrameKind, WireError};

/// A response message queued for writing, with the budget it holds until written.
pub(super) type Queued = (Bytes, Option<Charge>);

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
            Ok(Some(f)) => {
                self.done = true;
                self.recv.stop(reset::PROTOCOL_ERROR);
                Err(Status::invalid_argument(format!(
                    "unexpected {} frame in a request",
                    f.kind
                )))
            }
            Ok(None) => {
                self.done = true;
                Ok(None)
            }
            Err(e) => {
                self.done = true;
                // The client is told why its request stream was stopped.
                match &e {
                    RecvError::Wire(WireError::TooLarge { .. }) | RecvError::Budget(_) => {
                        self.recv.stop(reset::TOO_LARGE)
                    }
                    RecvError::Wire(_) => self.recv.stop(reset::PROTOCOL_ERROR),
                    _ => {}
                }
                Err(e.to_status())
            }
        }
    }
}

/// Where a streaming handler sends its responses. Sending waits while the client is slow
/// to read (backpressure); it fails once the call has ended.
pub struct ResponseSink<T> {
    pub(super) tx: mpsc::Sender<Queued>,
    /// The connection's and the server's buffer budgets, charged for queued messages.
    pub(super) budgets: Option<[Arc<Pool>; 2]>,
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
    /// Sends one response message. It waits while the call's queue is full (the client
    /// reads slowly) or while the connection's or server's buffer budget is spent by
    /// responses waiting to be written.
    pub async fn send(&self, msg: &T) -> Result<(), Status> {
        let bytes = (self.encode)(self.codec, msg, self.max)?;
        let charge = match &self.budgets {
            Some([conn, server]) => {
                let mut charge = Charge::new(conn.clone(), server.clone());
                let taken = charge.take_wait(bytes.len());
                tokio::select! {
                    () = taken => {}
                    // The call ended while waiting.
                    () = self.tx.closed() => {
                        return Err(Status::cancelled("the call has ended"));
                    }
                }
                Some(charge)
            }
            None => None,
        };
        self.tx
            .send((bytes, charge))
            .await
            .map_err(|_| Status::cancelled("the call has ended"))
    }
}
