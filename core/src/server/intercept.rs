//! Server interceptors: an ordered chain that sees every call before its handler runs
//! (method, metadata, deadline, peer address and verified identity), may refuse it with a
//! [`Status`] or add metadata, may hold something for the call's duration, and observes
//! its outcome and time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::status::Status;
use crate::transport::PeerIdentity;
use crate::wire::{Code, Metadata};

/// Something an interceptor keeps for as long as the call runs: dropped once the call's
/// response is written (a concurrency-limit permit, say).
pub type Hold = Box<dyn std::any::Any + Send>;

/// A call as interceptors see it before its handler runs.
#[derive(Debug)]
pub struct CallHead<'a> {
    pub(super) method: &'a str,
    pub(super) metadata: &'a mut Metadata,
    pub(super) deadline: Option<Instant>,
    pub(super) peer: SocketAddr,
    pub(super) identity: Option<&'a PeerIdentity>,
}

impl CallHead<'_> {
    /// The method called.
    pub fn method(&self) -> &str {
        self.method
    }

    /// The request metadata; an interceptor may add entries the handler then sees.
    pub fn metadata(&mut self) -> &mut Metadata {
        self.metadata
    }

    /// The caller's deadline, if any.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The caller's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The caller's verified certificate identity (mutual TLS only).
    pub fn peer_identity(&self) -> Option<&PeerIdentity> {
        self.identity
    }
}

/// How a call ended, as [`Interceptor::after`] sees it.
#[derive(Debug, Clone, Copy)]
pub struct CallEnd<'a> {
    /// The method called.
    pub method: &'a str,
    /// The caller's address.
    pub peer: SocketAddr,
    /// The status code it ended with (`OK`, or the refusal's or the handler's).
    pub code: Code,
    /// From its HEADERS to its TRAILERS.
    pub duration: Duration,
}

/// One link of a server's interceptor chain ([`ServerBuilder::intercept`]).
///
/// Interceptors run in the order they were added, before the handler and after the
/// request message arrived; the first refusal ends the call with its status (the handler
/// does not run). [`after`](Self::after) then runs for every interceptor whose
/// [`before`](Self::before) let the call through, last first, whatever the outcome. The
/// built-in health method ([`HEALTH_METHOD`](super::HEALTH_METHOD)) is not intercepted,
/// so load balancers' checks need no credentials.
///
/// [`ServerBuilder::intercept`]: super::ServerBuilder::intercept
pub trait Interceptor: Send + Sync + 'static {
    /// Sees the call before its handler: `Err` refuses it with that status; `Ok(Some)`
    /// keeps the value until the call is over.
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

/// The chain, shared by every call of a server.
pub(super) type Chain = Arc<[Arc<dyn Interceptor>]>;

/// How far a call got through the interceptor chain.
#[derive(Default)]
pub(super) struct Passed {
    /// The first `count` interceptors let it through (their `after` runs).
    count: usize,
    /// Dropped once the call is over.
    holds: Vec<Hold>,
}

/// Runs the chain's `before`s in order until one refuses, recording in `passed` the ones
/// that let the call through.
pub(super) fn admit(
    chain: &Chain,
    head: &mut CallHead<'_>,
    passed: &mut Passed,
) -> Result<(), Status> {
    for interceptor in chain.iter() {
        passed.holds.extend(interceptor.before(head)?);
        passed.count += 1;
    }
    Ok(())
}

/// Runs `after` for the interceptors that let the call through, last first.
pub(super) fn ended(chain: &Chain, passed: &Passed, end: &CallEnd<'_>) {
    for interceptor in chain[..passed.count].iter().rev() {
        interceptor.after(end);
    }
}

/// Refuses calls to some methods unless the caller's verified certificate carries one of
/// the names allowed for that method (a DNS or URI SAN such as a SPIFFE ID, or the common
/// name); other methods pass. Without a client certificate a guarded method is refused
/// with `UNAUTHENTICATED`, with the wrong one `PERMISSION_DENIED`.
///
/// ```
/// use meridian::server::AllowNames;
/// let allow = AllowNames::new()
///     .method("transfer", ["spiffe://bank.example/sa/payments"])
///     .method("audit", ["spiffe://bank.example/sa/payments", "auditor.bank.example"]);
/// let builder = meridian::Server::builder().intercept(allow);
/// # drop(builder);
/// ```
#[derive(Debug, Clone, Default)]
pub struct AllowNames {
    rules: std::collections::HashMap<String, Vec<String>>,
}

impl AllowNames {
    /// No method guarded yet.
    pub fn new() -> AllowNames {
        AllowNames::default()
    }

    /// Guards `method`: only callers with one of `names` may call it.
    pub fn method<I, S>(mut self, method: impl Into<String>, names: I) -> AllowNames
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.rules
            .insert(method.into(), names.into_iter().map(Into::into).collect());
        self
    }
}

impl Interceptor for AllowNames {
    fn before(&self, call: &mut CallHead<'_>) -> Result<Option<Hold>, Status> {
        let Some(names) = self.rules.get(call.method()) else {
            return Ok(None);
        };
        let Some(who) = call.peer_identity() else {
            return Err(Status::unauthenticated(format!(
                "{} needs a client certificate",
                call.method()
            )));
        };
        if names.iter().any(|n| who.has_name(n)) {
            Ok(None)
        } else {
            Err(Status::permission_denied(format!(
                "this caller may not call {}",
                call.method()
            )))
        }
    }
}

/// Limits the calls one caller may have running at once (by its certificate's first name
/// under mutual TLS, else by its IP address); a call past the limit is refused with
/// `RESOURCE_EXHAUSTED` before its handler runs. The count is per caller, not per
/// connection, so opening more connections does not raise it.
#[derive(Debug)]
pub struct PerCallerLimit {
    limit: usize,
    running: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
}

impl PerCallerLimit {
    /// At most `limit` calls running per caller.
    pub fn new(limit: usize) -> PerCallerLimit {
        PerCallerLimit {
            limit,
            running: Default::default(),
        }
    }

    fn caller(call: &CallHead<'_>) -> String {
        match call.peer_identity() {
            Some(p) => p
                .spiffe_id()
                .map(str::to_string)
                .or_else(|| p.dns_names().first().cloned())
                .or_else(|| p.common_name().map(str::to_string))
                .unwrap_or_else(|| call.peer().ip().to_string()),
            None => call.peer().ip().to_string(),
        }
    }
}

/// A running call of one caller, counted until dropped.
struct Permit {
    caller: String,
    running: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut running = match self.running.lock() {
            Ok(r) => r,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(n) = running.get_mut(&self.caller) {
            *n -= 1;
            if *n == 0 {
                running.remove(&self.caller);
            }
        }
    }
}

impl Interceptor for PerCallerLimit {
    fn before(&self, call: &mut CallHead<'_>) -> Result<Option<Hold>, Status> {
        let caller = Self::caller(call);
        let mut running = match self.running.lock() {
            Ok(r) => r,
            Err(poisoned) => poisoned.into_inner(),
        };
        let n = running.entry(caller.clone()).or_insert(0);
        if *n >= self.limit {
            return Err(Status::resource_exhausted(format!(
                "{caller} has {} calls running, the most allowed",
                self.limit
            )));
        }
        *n += 1;
        Ok(Some(Box::new(Permit {
            caller,
            running: self.running.clone(),
        })))
    }
}
