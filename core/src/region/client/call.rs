//! Routed calls: [`CallBuilder`] on a [`RegionClient`]: attempts, retries within the budget,
//! hedging.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tracing::{field, Instrument};

use super::handle::RegionClient;
use super::routing::Target;
use crate::call::{is_server_failure, may_send_again_before};
use crate::call::{DecodeAs, EncodeAs, PayloadStyle, Typed};
use crate::client::{
    CallBuilder, Channel, Reach, RequestSink, Response, ResponseFuture, Streaming,
};
use crate::region::hedge::HedgePolicy;
use crate::status::Status;
use crate::wire::Code;

/// A routed call: [`CallBuilder`] on a [`RegionClient`] (the options are the same as on a
/// channel; each attempt is a channel call to the chosen server).
pub type RegionCallBuilder<P = Typed> = CallBuilder<RegionClient, P>;

/// How one attempt ended.
enum Attempt<T> {
    Done(Result<Response<T>, Status>),
    /// The server was ejected while the attempt was in flight (it may have run there).
    Abandoned,
}

/// The four call kinds, routed: nearest healthy region serving the method, balanced,
/// retried within the budget, hedged as configured.
impl<P: PayloadStyle> CallBuilder<RegionClient, P> {
    /// The call's own flag, else the servers' merged catalog: idempotent only when every
    /// server that lists the method says so ([`Catalog::merge`]).
    fn is_idempotent(&self) -> bool {
        if let Some(i) = self.options.idempotent {
            return i;
        }
        self.target
            .method_info(&self.method)
            .is_some_and(|m| m.idempotent)
    }

    /// The channel-level call for one attempt: this call's options, its idempotency
    /// resolved once for all attempts, and the time left.
    fn channel_call(
        &self,
        target: &Target,
        idempotent: bool,
        deadline: Option<Instant>,
    ) -> CallBuilder<Channel, P> {
        let mut options = self.options.clone();
        options.idempotent = Some(idempotent);
        options.timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        target
            .channel
            .call(self.method.clone())
            .options(options)
            .with_style()
    }

    /// Opens a streaming call on the chosen server. If opening fails in a way that proves
    /// nothing ran (no such method there, server refused or unreachable), the next choice
    /// is tried once. Streams are not moved once open.
    async fn open_streaming<T, F, Fut>(self, open: F) -> Result<T, Status>
    where
        F: Fn(CallBuilder<Channel, P>) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let inner = self.target.inner.clone();
        inner.calls.fetch_add(1, Ordering::Relaxed);
        let deadline = self.options.deadline(Instant::now());
        let idempotent = self.is_idempotent();
        let mut tried = Vec::new();
        let mut last = None;
        let started = Instant::now();
        while tried.len() < 2 {
            let Some(mut target) =
                inner.pick(&self.method, self.options.routing_key.as_deref(), &tried)
            else {
                // Nothing connected yet (startup): wait a little for the prober, as unary
                // calls do.
                let waited = started.elapsed() < Duration::from_secs(5)
                    && deadline.is_none_or(|d| Instant::now() + Duration::from_millis(50) < d)
                    && inner.may_still_connect();
                if tried.is_empty() && waited {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                break;
            };
            let started = Instant::now();
            let result = open(self.channel_call(&target, idempotent, deadline)).await;
            let failed = result.as_ref().is_err_and(|s| is_server_failure(s.code()));
            // A stream's claim ends once it is open (its messages are not attempts).
            target.guard.settle(started.elapsed(), None, failed);
            let result = result.map_err(|s| unknown_here(s, &target, &self.method));
            match result {
                Ok(stream) => return Ok(stream),
                // The one rule (crate::call::may_send_again): provably not run, or
                // idempotent after a server failure; and never past the deadline.
                Err(s) if may_send_again_before(&s, idempotent, deadline) => {
                    tried.push(target.addr);
                    last = Some(s);
                }
                Err(s) => return Err(s),
            }
        }
        // With no attempt made, nothing ran anywhere.
        Err(last.unwrap_or_else(|| {
            Status::unavailable(format!("no healthy region serves {:?}", self.method))
                .mark_not_run()
        }))
    }

    /// A server-streaming call, opened on the chosen server.
    pub async fn server_streaming<Req, Resp>(self, request: &Req) -> Result<Streaming<Resp>, Status>
    where
        Req: ?Sized,
        P: EncodeAs<Req> + DecodeAs<Resp>,
    {
        self.open_streaming(|call| call.server_streaming::<Req, Resp>(request))
            .await
    }

    /// A client-streaming call, opened on the chosen server.
    pub async fn client_streaming<Req, Resp>(
        self,
    ) -> Result<(RequestSink<Req>, ResponseFuture<Resp>), Status>
    where
        P: EncodeAs<Req> + DecodeAs<Resp>,
    {
        self.open_streaming(|call| call.client_streaming::<Req, Resp>())
            .await
    }

    /// A bidirectional call, opened on the chosen server.
    pub async fn bidi<Req, Resp>(self) -> Result<(RequestSink<Req>, Streaming<Resp>), Status>
    where
        P: EncodeAs<Req> + DecodeAs<Resp>,
    {
        self.open_streaming(|call| call.bidi::<Req, Resp>()).await
    }

    /// One attempt on `target`: `make` runs a unary call on its channel, which reports
    /// whether the call may have reached the server, so that an attempt given up because
    /// the server was ejected says whether the call may have run there.
    async fn attempt<T, F, Fut>(
        &self,
        target: &mut Target,
        make: &F,
        idempotent: bool,
        deadline: Option<Instant>,
    ) -> Attempt<T>
    where
        F: Fn(CallBuilder<Channel, P>) -> Fut,
        Fut: std::future::Future<Output = Result<Response<T>, Status>>,
    {
        let mut call = self.channel_call(target, idempotent, deadline);
        let reach = Reach::default();
        call.reach = Some(reach.clone());
        let started = Instant::now();
        let fut = make(call);
        let result = tokio::select! {
            r = fut => Some(r),
            _ = target.ejected.changed() => None,
        };
        let latency = started.elapsed();
        let timeout = deadline.map(|d| d.saturating_duration_since(started));
        match result {
            Some(r) => {
                let failed = r.as_ref().is_err_and(|s| is_server_failure(s.code()));
                target.guard.settle(latency, timeout, failed);
                Attempt::Done(r.map_err(|s| unknown_here(s, target, &self.method)))
            }
            None => {
                target.guard.settle(latency, timeout, true);
                if reach.may_have_reached() {
                    Attempt::Abandoned
                } else {
                    // Between attempts on that server (say, refused by it, or its close
                    // said the call did not run, and waiting to reconnect): nothing ran.
                    Attempt::Done(Err(Status::unavailable(
                        "the server stopped answering before the call reached it",
                    )
                    .mark_not_run()))
                }
            }
        }
    }

    /// A unary call, routed, retried and hedged as configured.
    pub async fn unary<Req, Resp>(self, request: &Req) -> Result<Response<Resp>, Status>
    where
        Req: ?Sized,
        P: EncodeAs<Req> + DecodeAs<Resp>,
    {
        self.unary_with(|call| call.unary::<Req, Resp>(request))
            .await
    }

    async fn unary_with<T, F, Fut>(self, make: F) -> Result<Response<T>, Status>
    where
        F: Fn(CallBuilder<Channel, P>) -> Fut,
        Fut: std::future::Future<Output = Result<Response<T>, Status>>,
    {
        let inner = self.target.inner.clone();
        inner.calls.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let deadline = self.options.deadline(started);
        let idempotent = self.is_idempotent();
        {
            let mut st = inner.lock();
            st.budget.record_call(started);
        }
        let span = tracing::debug_span!(
            "rpc.region",
            method = %self.method,
            region = field::Empty,
            server = field::Empty,
            attempts = field::Empty,
            code = field::Empty
        );
        let fut = async {
            let mut tried: Vec<SocketAddr> = Vec::new();
            let mut attempts = 0u32;
            let mut last: Option<Status> = None;
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(
                        last.unwrap_or_else(|| Status::deadline_exceeded("deadline exceeded"))
                    );
                }
                let Some(mut target) = inner
                    .pick(&self.method, self.options.routing_key.as_deref(), &tried)
                    .or_else(|| {
                        // Every candidate tried: allow the ones tried before.
                        if tried.is_empty() {
                            None
                        } else {
                            inner.pick(&self.method, self.options.routing_key.as_deref(), &[])
                        }
                    })
                else {
                    if attempts == 0
                        && deadline.is_none_or(|d| Instant::now() + Duration::from_millis(50) < d)
                        && inner.may_still_connect()
                    {
                        // Nothing connected yet (startup): wait a little for the prober.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        if started.elapsed() < Duration::from_secs(5) {
                            continue;
                        }
                    }
                    // With no attempt made, nothing ran anywhere.
                    return Err(last.unwrap_or_else(|| {
                        Status::unavailable(format!("no healthy region serves {:?}", self.method))
                            .mark_not_run()
                    }));
                };
                attempts += 1;
                tracing::Span::current().record("region", target.region.as_str());
                tracing::Span::current().record("server", field::display(target.addr));
                tracing::Span::current().record("attempts", attempts);
                let hedge_delay = if idempotent && inner.hedged.contains(&self.method) {
                    inner
                        .lock()
                        .hedges
                        .get(&self.method)
                        .and_then(HedgePolicy::delay)
                } else {
                    None
                };
                let t0 = Instant::now();
                let (outcome, hedge_sent) = match hedge_delay {
                    None => (
                        self.attempt(&mut target, &make, idempotent, deadline).await,
                        false,
                    ),
                    Some(delay) => self.hedged(&mut target, &make, deadline, delay).await,
                };
                match outcome {
                    Attempt::Done(Ok(r)) => {
                        if inner.hedged.contains(&self.method) {
                            // A hedged call's own latency hides how slow the first copy
                            // was; record it as slower than the delay, so the p95 is not
                            // dragged down by hedging itself (which would hedge ever more).
                            let mut sample = t0.elapsed();
                            if hedge_sent {
                                sample = sample.max(hedge_delay.unwrap_or_default() * 2);
                            }
                            inner
                                .lock()
                                .hedges
                                .entry(self.method.clone())
                                .or_default()
                                .observe(sample);
                        }
                        return Ok(r);
                    }
                    Attempt::Done(Err(status)) => {
                        let retryable = may_send_again_before(&status, idempotent, deadline);
                        if !retryable || attempts >= MAX_ATTEMPTS {
                            return Err(status);
                        }
                        last = Some(status);
                    }
                    Attempt::Abandoned => {
                        if !idempotent || attempts >= MAX_ATTEMPTS {
                            return Err(Status::unavailable(
                                "the server stopped answering with the call in flight; it may or may not have run",
                            ));
                        }
                        last = Some(Status::unavailable("the server stopped answering"));
                    }
                }
                if !inner.lock().budget.try_spend(Instant::now()) {
                    return Err(
                        last.unwrap_or_else(|| Status::unavailable("retry budget exhausted"))
                    );
                }
                inner.retries.fetch_add(1, Ordering::Relaxed);
                tried.push(target.addr);
            }
        };
        let result = fut.instrument(span.clone()).await;
        span.record(
            "code",
            field::display(result.as_ref().map_or_else(|s| s.code(), |_| Code::Ok)),
        );
        result
    }

    /// Sends a first copy; if it has not answered after `delay`, a second copy to the next
    /// choice (budget permitting). The first answer wins; the other copy is dropped, which
    /// cancels it on its server.
    async fn hedged<T, F, Fut>(
        &self,
        first: &mut Target,
        make: &F,
        deadline: Option<Instant>,
        delay: Duration,
    ) -> (Attempt<T>, bool)
    where
        F: Fn(CallBuilder<Channel, P>) -> Fut,
        Fut: std::future::Future<Output = Result<Response<T>, Status>>,
    {
        let inner = &self.target.inner;
        let first_addr = first.addr;
        // Boxed so that the loser can be dropped before its claim is settled as slow.
        let mut a = Box::pin(self.attempt(first, make, true, deadline));
        tokio::select! {
            r = &mut a => return (r, false),
            _ = tokio::time::sleep(delay) => {}
        }
        let second = {
            let ok = inner.lock().budget.try_spend(Instant::now());
            if ok {
                inner.pick(
                    &self.method,
                    self.options.routing_key.as_deref(),
                    &[first_addr],
                )
            } else {
                None
            }
        };
        let Some(mut second) = second else {
            return (a.await, false);
        };
        inner.hedges_sent.fetch_add(1, Ordering::Relaxed);
        let mut b = Box::pin(self.attempt(&mut second, make, true, deadline));
        let (r, first_won) = tokio::select! {
            r = &mut a => (r, true),
            r = &mut b => {
                inner.hedges_won.fetch_add(1, Ordering::Relaxed);
                (r, false)
            }
        };
        // The loser was still running: it is at least this slow, and did not fail.
        drop(a);
        drop(b);
        if first_won {
            second.guard.settle_slow();
        } else {
            first.guard.settle_slow();
        }
        (r, true)
    }
}

/// Most attempts of one routed call (first try included).
pub(super) const MAX_ATTEMPTS: u32 = 4;

/// A server whose catalog does not list the method answered UNIMPLEMENTED: nothing ran
/// there, even if the server predates marking its unknown-method answers NOT_RUN (a
/// rolling upgrade), so the call may go to a server that does serve it.
fn unknown_here(status: Status, target: &Target, method: &str) -> Status {
    if status.code() == Code::Unimplemented
        && !status.is_known_not_run()
        && target.channel.server_info().is_some()
        && !target.channel.catalog().serves(method)
    {
        status.mark_not_run()
    } else {
        status
    }
}
