//! Client interceptors: an ordered chain that sees every call a [`Channel`] or a region
//! client starts (method, kind, options with metadata and timeout) before anything is sent,
//! may refuse it with a [`Status`] or change its metadata and timeout, may hold something
//! for as long as the call runs, and observes how and when it ended.
//!
//! [`Channel`]: super::Channel

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::options::CallOptions;
use crate::status::Status;
use crate::wire::{Code, Metadata};

/// Something an interceptor keeps for as long as the call runs (a rate limiter's permit,
/// a span): dropped once the call has ended.
pub type Hold = Box<dyn std::any::Any + Send>;

/// The four call kinds, as interceptors see them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// One request, one response.
    Unary,
    /// One request, a stream of responses.
    ServerStreaming,
    /// A stream of requests, one response.
    ClientStreaming,
    /// Both directions streamed.
    Bidi,
}

/// A call as client interceptors see it, before anything is sent.
#[derive(Debug)]
pub struct CallHead<'a> {
    method: &'a str,
    kind: CallKind,
    options: &'a mut CallOptions,
}

impl CallHead<'_> {
    /// The method called.
    pub fn method(&self) -> &str {
        self.method
    }

    /// The kind of call.
    pub fn kind(&self) -> CallKind {
        self.kind
    }

    /// The request metadata; an interceptor may add entries (credentials, a tenant, a
    /// trace context) the server then sees.
    pub fn metadata(&mut self) -> &mut Metadata {
        &mut self.options.metadata
    }

    /// The call's timeout, if it has one.
    pub fn timeout(&self) -> Option<Duration> {
        self.options.timeout
    }

    /// Sets or clears the call's timeout (a default deadline for calls made without one).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.options.timeout = timeout;
    }

    /// The routing key, if the call has one.
    pub fn routing_key(&self) -> Option<&[u8]> {
        self.options.routing_key.as_deref()
    }

    /// Whether the caller declared the call idempotent (`None`: the servers' catalogs
    /// decide).
    pub fn idempotent(&self) -> Option<bool> {
        self.options.idempotent
    }
}

/// How a call ended, as [`Interceptor::after`] sees it.
#[derive(Debug, Clone, Copy)]
pub struct CallEnd<'a> {
    /// The method called.
    pub method: &'a str,
    /// The kind of call.
    pub kind: CallKind,
    /// The code it ended with: the server's, a local failure's, an interceptor's refusal,
    /// `CANCELLED` when the caller dropped it, `DEADLINE_EXCEEDED` when its time ran out.
    pub code: Code,
    /// From the interceptors letting it through to its end (for a streaming call, the
    /// end of its response stream).
    pub duration: Duration,
}

/// One link of a client's interceptor chain ([`ChannelBuilder::intercept`],
/// `RegionClientBuilder::intercept`).
///
/// Interceptors run in the order they were added, once per call, before the request is
/// encoded (on a region client, before the call is routed: its retries and hedges are
/// made beneath the chain); the first refusal
/// ends the call with its status and nothing is sent. [`after`](Self::after) runs for
/// every interceptor whose [`before`](Self::before) let the call through, last first,
/// whatever the outcome, including a call dropped by its caller.
///
/// ```
/// use meridian::client::{CallHead, Hold, Interceptor};
/// use meridian::Status;
///
/// /// Adds a bearer token to every call.
/// struct Token(&'static str);
///
/// impl Interceptor for Token {
///     fn before(&self, call: &mut CallHead<'_>) -> Result<Option<Hold>, Status> {
///         call.metadata().insert("authorization", format!("Bearer {}", self.0));
///         Ok(None)
///     }
/// }
/// ```
///
/// [`ChannelBuilder::intercept`]: super::ChannelBuilder::intercept
pub trait Interceptor: Send + Sync + 'static {
    /// Sees the call before it is sent: `Err` refuses it with that status; `Ok(Some)`
    /// keeps the value until the call has ended.
    fn before(&self, call: &mut CallHead<'_>) -> Result<Option<Hold>, Status>;

    /// Sees how the call ended.
    fn after(&self, _end: &CallEnd<'_>) {}
}

impl<T: Interceptor + ?Sized> Interceptor for Arc<T> {
    fn before(&self, call: &mut CallHead<'_>) -> Result<Option<Hold>, Status> {
        (**self).before(call)
    }

    fn after(&self, end: &CallEnd<'_>) {
        (**self).after(end)
    }
}

/// A client's chain, shared by all its calls (empty: nothing to run, nothing allocated).
pub(crate) type Chain = Arc<[Arc<dyn Interceptor>]>;

/// A call the chain let through: runs the `after`s once, when the call ends (or, if it is
/// dropped first, as `CANCELLED`).
pub(crate) struct Intercepted {
    chain: Chain,
    /// The first `count` interceptors let it through (their `after` runs).
    count: usize,
    /// Behind a lock only so the call's handles stay `Sync` while holding `Send` values.
    holds: Mutex<Vec<Hold>>,
    method: String,
    kind: CallKind,
    started: Instant,
}

impl Intercepted {
    /// Runs the `after`s with `code`, last first, then drops the holds. Once only.
    pub(crate) fn finish(mut self, code: Code) {
        self.run_after(code);
    }

    fn run_after(&mut self, code: Code) {
        let end = CallEnd {
            method: &self.method,
            kind: self.kind,
            code,
            duration: self.started.elapsed(),
        };
        for interceptor in self.chain[..self.count].iter().rev() {
            interceptor.after(&end);
        }
        self.count = 0;
        match self.holds.get_mut() {
            Ok(h) => h.clear(),
            Err(poisoned) => poisoned.into_inner().clear(),
        }
    }
}

impl Drop for Intercepted {
    fn drop(&mut self) {
        if self.count > 0 {
            self.run_after(Code::Cancelled);
        }
    }
}

/// Runs the chain's `before`s for a call about to start. `Ok(None)`: no interceptors.
/// On a refusal, the `after`s of those that let it through run with the refusal's code.
pub(crate) fn admit(
    chain: &Chain,
    method: &str,
    kind: CallKind,
    options: &mut CallOptions,
) -> Result<Option<Intercepted>, Status> {
    if chain.is_empty() {
        return Ok(None);
    }
    let mut passed = Intercepted {
        chain: chain.clone(),
        count: 0,
        holds: Mutex::new(Vec::new()),
        method: method.to_string(),
        kind,
        started: Instant::now(),
    };
    let mut head = CallHead {
        method,
        kind,
        options,
    };
    for interceptor in chain.iter() {
        match interceptor.before(&mut head) {
            Ok(hold) => {
                if let Some(hold) = hold {
                    match passed.holds.get_mut() {
                        Ok(h) => h.push(hold),
                        Err(poisoned) => poisoned.into_inner().push(hold),
                    }
                }
                passed.count += 1;
            }
            Err(status) => {
                passed.finish(status.code());
                return Err(status);
            }
        }
    }
    Ok(Some(passed))
}

/// Ends an intercepted call with its result's code.
pub(crate) fn settle<T>(passed: Option<Intercepted>, result: &Result<T, Status>) {
    if let Some(p) = passed {
        p.finish(match result {
            Ok(_) => Code::Ok,
            Err(s) => s.code(),
        });
    }
}
