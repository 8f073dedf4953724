//! Running a C handler for one call: the request it reads, the reply it fills, on a pool thread.

use std::ffi::CString;
use std::sync::Arc;

use bytes::Bytes;
use mcore::{CallContext, Code, RequestStream, ResponseSink, Status, Value};
use tokio::sync::{mpsc, oneshot};

use super::handle::{HandlerFn, Running};
use crate::boundary::{nul_terminated, panic_text, UserPtr};
use crate::{json, meridian_status, MERIDIAN_PAYLOAD_JSON, MERIDIAN_PAYLOAD_RAW};

/// The request a handler reads. Borrowed: valid only during the handler call.
#[allow(non_camel_case_types)]
pub struct meridian_request {
    pub(super) method: CString,
    /// The body, with a NUL byte after it.
    pub(super) body: Vec<u8>,
    pub(super) ctx: CallContext,
    /// Client-streaming and bidi handlers: the request messages, read with
    /// `meridian_request_next`.
    pub(super) incoming: Option<std::sync::Mutex<Incoming>>,
}

/// The request messages of a client-streaming or bidi call, as a handler reads them.
pub(super) struct Incoming {
    pub(super) rx: mpsc::Receiver<Result<Vec<u8>, Status>>,
    /// The last message handed out, with a NUL after it.
    pub(super) current: Vec<u8>,
    /// Set once the requests ended: `MERIDIAN_STREAM_END` or the error, and its text.
    pub(super) ended: Option<(meridian_status, String)>,
}

/// A stream of request messages as it arrived.
pub(super) enum Requests {
    Raw(RequestStream<Bytes>),
    Json(RequestStream<Value>),
}

impl Requests {
    /// Moves the messages, as NUL-terminated bodies, into a channel the handler reads;
    /// stops when the handler is gone, and ends the handler's wait with CANCELLED when the
    /// call is cancelled (deadline, client gone).
    fn forward(self, ctx: CallContext) -> mpsc::Receiver<Result<Vec<u8>, Status>> {
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            let mut requests = self;
            loop {
                let next = async {
                    match &mut requests {
                        Requests::Raw(r) => {
                            r.message().await.map(|m| m.map(|b| nul_terminated(&b)))
                        }
                        Requests::Json(r) => match r.message().await {
                            Ok(Some(v)) => json::from_value(&v).map(Some).map_err(|f| {
                                Status::invalid_argument(format!(
                                    "a JSON handler cannot take this request: {}",
                                    f.message
                                ))
                            }),
                            Ok(None) => Ok(None),
                            Err(s) => Err(s),
                        },
                    }
                };
                let next = tokio::select! {
                    next = next => next,
                    () = ctx.cancelled() => Err(Status::cancelled("the call was cancelled")),
                };
                let item = match next {
                    Ok(Some(body)) => Ok(body),
                    Ok(None) => return,
                    Err(s) => Err(s),
                };
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    return;
                }
            }
        });
        rx
    }
}

/// Where a handler writes its answer. Borrowed: valid only during the handler call.
#[allow(non_camel_case_types)]
pub struct meridian_reply {
    pub(super) payload: u32,
    pub(super) body: Option<Vec<u8>>,
    pub(super) message: Option<String>,
    pub(super) ctx: CallContext,
    /// Streaming handlers only: the messages, on their way to the network.
    pub(super) sender: Option<mpsc::Sender<Out>>,
    /// Set by `meridian_reply_defer`: where the deferred answer will arrive.
    pub(super) deferred: Option<oneshot::Receiver<Result<Vec<u8>, Status>>>,
}

/// What a unary handler's call produced: its answer now, or a promise of one.
enum Answer {
    Now(Vec<u8>),
    Later(oneshot::Receiver<Result<Vec<u8>, Status>>),
}

/// A message a streaming handler sent.
pub(super) enum Out {
    Raw(Bytes),
    Json(Value),
}

/// A request as it arrived.
pub(super) enum Input {
    Raw(Bytes),
    Json(Value),
    /// A streamed request (client-streaming, bidi) of this payload kind: no body, the
    /// messages come through [`Incoming`].
    Stream(u32, Requests),
}

/// Where streaming messages go.
pub(super) enum Sink {
    Raw(ResponseSink<Bytes>),
    Json(ResponseSink<Value>),
}

/// The body of an answer that set none: empty bytes, or JSON null (a C function
/// returning nothing).
pub(super) fn empty_body(payload: u32) -> Vec<u8> {
    if payload == MERIDIAN_PAYLOAD_JSON {
        b"null".to_vec()
    } else {
        Vec::new()
    }
}

/// One method's C handler, as the Rust server calls it.
#[derive(Clone)]
pub(super) struct Handler {
    pub(super) f: HandlerFn,
    pub(super) user: UserPtr,
    pub(super) running: Arc<Running>,
}

impl Handler {
    /// Runs a unary handler on the blocking pool and returns the body it set.
    pub(super) async fn unary(&self, input: Input, ctx: CallContext) -> Result<Vec<u8>, Status> {
        let h = self.clone();
        let task = tokio::task::spawn_blocking(move || h.invoke(input, ctx, None));
        Self::answer(task).await
    }

    /// Waits for a unary-style answer: now, or deferred.
    async fn answer(
        task: tokio::task::JoinHandle<Result<Answer, Status>>,
    ) -> Result<Vec<u8>, Status> {
        let answer = task
            .await
            .map_err(|e| Status::internal(format!("the handler task failed: {e}")))??;
        match answer {
            Answer::Now(body) => Ok(body),
            Answer::Later(rx) => rx.await.unwrap_or_else(|_| {
                Err(Status::internal(
                    "the handler deferred its reply and freed it without answering \
                     (meridian_deferred_free)",
                ))
            }),
        }
    }

    /// Runs a streaming handler on the blocking pool and forwards what it sends.
    pub(super) async fn streaming(
        &self,
        input: Input,
        ctx: CallContext,
        sink: Sink,
    ) -> Result<(), Status> {
        let (tx, mut rx) = mpsc::channel::<Out>(16);
        let h = self.clone();
        let task = tokio::task::spawn_blocking(move || h.invoke(input, ctx, Some(tx)));
        while let Some(msg) = rx.recv().await {
            let sent = match (&sink, msg) {
                (Sink::Raw(s), Out::Raw(b)) => s.send(&b).await,
                (Sink::Json(s), Out::Json(v)) => s.send(&v).await,
                _ => Err(Status::internal("message kind mismatch")),
            };
            if let Err(status) = sent {
                // Dropping the receiver makes the handler's next send fail with CANCELLED.
                drop(rx);
                let _ = task.await;
                return Err(status);
            }
        }
        task.await
            .map_err(|e| Status::internal(format!("the handler task failed: {e}")))?
            .map(|_| ())
    }

    /// Calls the C function (on a blocking-pool thread) and maps what it returned.
    fn invoke(
        &self,
        input: Input,
        ctx: CallContext,
        sender: Option<mpsc::Sender<Out>>,
    ) -> Result<Answer, Status> {
        let _running = self.running.enter();
        let (payload, body, incoming) = match input {
            Input::Raw(b) => (MERIDIAN_PAYLOAD_RAW, nul_terminated(&b), None),
            Input::Json(v) => (
                MERIDIAN_PAYLOAD_JSON,
                json::from_value(&v).map_err(|f| {
                    Status::invalid_argument(format!(
                        "a JSON handler cannot take this request: {}",
                        f.message
                    ))
                })?,
                None,
            ),
            Input::Stream(payload, requests) => (
                payload,
                vec![0],
                Some(std::sync::Mutex::new(Incoming {
                    rx: requests.forward(ctx.clone()),
                    current: Vec::new(),
                    ended: None,
                })),
            ),
        };
        let method = CString::new(ctx.method().replace('\0', " ")).unwrap_or_default();
        let request = meridian_request {
            method,
            body,
            ctx: ctx.clone(),
            incoming,
        };
        let mut reply = meridian_reply {
            payload,
            body: None,
            message: None,
            ctx,
            sender,
            deferred: None,
        };
        let f = self.f;
        let user = self.user;
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // SAFETY: the application registered `f` with `user` and vouched for both; the
            // request and reply live until the call returns.
            unsafe { f(user.0, &request, &mut reply) }
        }))
        .map_err(|p| Status::internal(panic_text(&*p)))?;
        if let Some(rx) = reply.deferred.take() {
            return Ok(Answer::Later(rx));
        }
        let message = reply.message.take();
        match meridian_status::grpc_code(code) {
            // No body: empty bytes, or JSON null (a C function returning nothing).
            Some(Code::Ok) => Ok(Answer::Now(
                reply
                    .body
                    .take()
                    .unwrap_or_else(|| empty_body(reply.payload)),
            )),
            Some(code) => Err(Status::new(
                code,
                message.unwrap_or_else(|| format!("the handler failed with {}", code.name())),
            )),
            None => Err(Status::internal(format!(
                "the handler returned {code}, which is not a gRPC status (7000..7016)"
            ))),
        }
    }
}
