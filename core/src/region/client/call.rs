//! Routed calls: [`CallBuilder`] on a [`RegionClient`]: attempts, retries within the budget,
//! hedging.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tracing::{field, Instrument};

use super::handle::RegionClient;
use super::routing::{outcome_of, Target};
use crate::call::may_send_again_before;
use crate::call::{DecodeAs, EncodeAs, PayloadStyle, Typed};
use crate::client::{
    admit, end_when_done, settle, Attach, CallBuilder, CallKind, Channel, Intercepted, Reach,
    RequestSink, Response, ResponseFuture, Streaming,
};
use crate::discovery::ServerAddr;
use crate::region::hedge::HedgePolicy;
use crate::region::table::{NoPick, Outcome};
use crate::status::Status;
use crate::wire::Code;

/// A routed call: [`CallBuilder`] on a [`RegionClient`] (the options are the same as on a
/// channel; each attempt is a channel call to the chosen server).
pub type RegionCallBuilder<P = Typed> = CallBuilder<RegionClient, P>;

/// How long into a call it still waits for servers that have not connected yet (start-up,
/// or a server that just appeared and may serve the method).
const STARTUP_WAIT: Duration = Duration::from_secs(5);

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
        // Waiting for a server is this client's business (any server will do), not the
        // channel's (this one server).
        options.wait_for_ready = false;
        let mut call = target
            .channel
            .call(self.method.clone())
            .options(options)
            .with_style();
        // This client decides about sending again (and pays from its budget): the channel
        // makes one attempt.
        call.one_attempt = true;
        call
    }

    /// The error for a call that found no server: with no attempt made, nothing ran.
    fn no_server(&self, why: NoPick, last: Option<Status>) -> Status {
        if let (NoPick::NoBudget, Some(last)) = (why, &last) {
            return last
                .clone()
                .annotate("not sent again: the retry budget is spent");
        }
        last.unwrap_or_else(|| {
            let message = match why {
                NoPick::NoServer => format!(
                    "no healthy region serves {:?}{}",
                    self.method,
                    self.target.inner.last_connect_error()
                ),
                NoPick::NoBudget => "retry budget exhausted".to_string(),
            };
            Status::unavailable(message).mark_not_run()
        })
    }

    /// Opens a streaming call on the chosen server. If opening fails in a way that proves
    /// nothing ran (no such method there, server refused or unreachable), the next choice
    /// is tried once. Streams are not moved once open.
    async fn open_streaming<T, F, Fut>(self, open: F) -> Result<T, Status>
    where
        T: Attach,
        F: Fn(CallBuilder<Channel, P>) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let inner = self.target.inner.clone();
        inner.calls.fetch_add(1, Ordering::Relaxed);
        let deadline = self.options.deadline(Instant::now());
        let idempotent = self.is_idempotent();
        inner.lock().record_call(Instant::now());
        let mut tried = Vec::new();
        let mut last = None;
        let started = Instant::now();
        while tried.len() < 2 {
            let resend = !tried.is_empty() && !last.as_ref().is_some_and(Status::is_known_not_run);
            let key = self.options.routing_key.as_deref();
            let mut target = match inner.pick(&self.method, key, &tried, resend) {
                Ok(t) => t,
                Err(why) => {
                    let first = tried.is_empty();
                    match self.wait_for_server(&inner, started, first, deadline).await {
                        true => continue,
                        false => return Err(self.no_server(why, last)),
                    }
                }
            };
            if !tried.is_empty() {
                inner.retries.fetch_add(1, Ordering::Relaxed);
            }
            let opened = Instant::now();
            let result = open(self.channel_call(&target, idempotent, deadline)).await;
            let result = result.map_err(|s| unknown_here(s, &target, &self.method));
            match result {
                Ok(mut stream) => {
                    // The stream holds the claim: the server counts it as load until the
                    // call ends.
                    stream.attach(Box::new(target.guard));
                    return Ok(stream);
                }
                Err(s) => {
                    let outcome = outcome_of::<()>(&Err(s.clone()));
                    target.guard.settle(opened.elapsed(), None, outcome);
                    // The one rule (crate::call::may_send_again): provably not run, or
                    // idempotent after a server failure; and never past the deadline.
                    let policy = inner.retry_policy(&self.method);
                    if !policy.may_send_again_before(&s, idempotent, deadline) {
                        return Err(s);
                    }
                    tried.push(target.addr.clone());
                    last = Some(s);
                }
            }
        }
        Err(self.no_server(NoPick::NoServer, last))
    }

    /// No server can take the call now: whether to look again in 50 ms (`true`) or fail.
    ///
    /// Waits while nothing has connected yet or a discovered server has not connected yet
    /// (start-up, or a server that just appeared; `first_attempt`: a first attempt, or a
    /// retry whose try never ran while a new server may serve it; at most 5 s into the
    /// call) and, with wait-for-ready, for as long as the deadline allows. Failing involves no I/O,
    /// so it yields once first: a caller that loops on failing calls cannot starve the
    /// runtime (its timers included).
    async fn wait_for_server(
        &self,
        inner: &super::routing::Router,
        started: Instant,
        first_attempt: bool,
        deadline: Option<Instant>,
    ) -> bool {
        let step = Duration::from_millis(50);
        let time_left = deadline.is_none_or(|d| Instant::now() + step < d);
        let starting =
            first_attempt && started.elapsed() < STARTUP_WAIT && inner.may_still_connect();
        if time_left && (starting || self.options.wait_for_ready) {
            tokio::time::sleep(step).await;
            true
        } else {
            tokio::task::yield_now().await;
            false
        }
    }

    /// A server-streaming call, opened on the chosen server.
    pub async fn server_streaming<Req, Resp>(
        mut self,
        request: &Req,
    ) -> Result<Streaming<Resp>, Status>
    where
        Req: ?Sized,
        P: EncodeAs<Req> + DecodeAs<Resp>,
    {
        let passed = self.admit(CallKind::ServerStreaming)?;
        let opened = self
            .open_streaming(|call| call.server_streaming::<Req, Resp>(request))
            .await;
        end_when_done(passed, opened)
    }

    /// Runs the client's interceptors for this call.
    fn admit(&mut self, kind: CallKind) -> Result<Option<Intercepted>, Status> {
        admit(
            &self.target.inner.interceptors,
            &self.method,
            kind,
            &mut self.options,
        )
    }

    /// A client-streaming call, opened on the chosen server.
    pub async fn client_streaming<Req, Resp>(
        mut self,
    ) -> Result<(RequestSink<Req>, ResponseFuture<Resp>), Status>
    where
        P: EncodeAs<Req> + DecodeAs<Resp>,
    {
        let passed = self.admit(CallKind::ClientStreaming)?;
        let opened = self
            .open_streaming(|call| call.client_streaming::<Req, Resp>())
            .await;
        end_when_done(passed, opened)
    }

    /// A bidirectional call, opened on the chosen server.
    pub async fn bidi<Req, Resp>(mut self) -> Result<(RequestSink<Req>, Streaming<Resp>), Status>
    where
        P: EncodeAs<Req> + DecodeAs<Resp>,
    {
        let passed = self.admit(CallKind::Bidi)?;
        let opened = self.open_streaming(|call| call.bidi::<Req, Resp>()).await;
        end_when_done(passed, opened)
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
            biased;
            r = fut => Some(r),
            _ = target.ejected.changed() => None,
        };
        let latency = started.elapsed();
        let timeout = deadline.map(|d| d.saturating_duration_since(started));
        match result {
            Some(r) => {
                target.guard.settle(latency, timeout, outcome_of(&r));
                Attempt::Done(
                    r.map(|mut r| {
                        r.set_served_region(&target.region);
                        r
                    })
                    .map_err(|s| unknown_here(s, target, &self.method)),
                )
            }
            None => {
                target.guard.settle(latency, timeout, Outcome::NoAnswer);
                if reach.may_have_reached() {
                    Attempt::Abandoned
                } else {
                    // Between attempts on that server (say, refused by it, or its close
                    // said the call did not run, and waiting to reconnect): nothing ran.
                    // Why the connection went, when the channel knows (a refused client
                    // certificate ends it just after the handshake).
                    let why = target
                        .channel
                        .last_failure()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default();
                    Attempt::Done(Err(Status::unavailable(format!(
                        "the server stopped answering before the call reached it{why}"
                    ))
                    .mark_not_run()))
                }
            }
        }
    }

    /// A unary call, routed, retried and hedged as configured.
    pub async fn unary<Req, Resp>(mut self, request: &Req) -> Result<Response<Resp>, Status>
    where
        Req: ?Sized,
        P: EncodeAs<Req> + DecodeAs<Resp>,
    {
        let passed = self.admit(CallKind::Unary)?;
        let result = self
            .unary_with(|call| call.unary::<Req, Resp>(request))
            .await;
        settle(passed, &result);
        result
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
        let policy = inner.retry_policy(&self.method);
        inner.lock().record_call(started);
        let span = tracing::debug_span!(
            "rpc.region",
            method = %self.method,
            region = field::Empty,
            server = field::Empty,
            attempts = field::Empty,
            code = field::Empty
        );
        let fut = async {
            let mut tried: Vec<ServerAddr> = Vec::new();
            let mut attempts = 0u32;
            let mut last: Option<Status> = None;
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(
                        last.unwrap_or_else(|| Status::deadline_exceeded("deadline exceeded"))
                    );
                }
                // A re-send is paid from the budget, once a server for it is found; one
                // after an attempt that provably never ran is not: it put no load on any
                // server (the budget guards servers against retry storms), and the
                // attempt cap still bounds it.
                let resend = attempts > 0 && !last.as_ref().is_some_and(Status::is_known_not_run);
                let key = self.options.routing_key.as_deref();
                let picked = match inner.pick(&self.method, key, &tried, resend) {
                    // Every candidate tried: the ones tried before may take it again. A
                    // call whose last try never ran (the server was down, or did not
                    // serve the method) waits a step first when it waits for ready, or
                    // while a server that was discovered but has not connected yet may
                    // serve it (a server that just started), as a first attempt does: it
                    // does not spend its attempts on the same servers within microseconds
                    // while another may be coming.
                    Err(NoPick::NoServer) if !tried.is_empty() => {
                        let never_ran = last.as_ref().is_some_and(Status::is_known_not_run);
                        let new_server = inner.has_new_server();
                        if never_ran
                            && (self.options.wait_for_ready || new_server)
                            && self
                                .wait_for_server(&inner, started, new_server, deadline)
                                .await
                        {
                            tried.clear();
                            continue;
                        }
                        inner.pick(&self.method, key, &[], resend)
                    }
                    other => other,
                };
                let mut target = match picked {
                    Ok(t) => t,
                    Err(why) => {
                        let first = attempts == 0;
                        match self.wait_for_server(&inner, started, first, deadline).await {
                            true => continue,
                            false => return Err(self.no_server(why, last)),
                        }
                    }
                };
                if attempts > 0 {
                    inner.retries.fetch_add(1, Ordering::Relaxed);
                }
                attempts += 1;
                tracing::Span::current().record("region", target.region.as_str());
                tracing::Span::current().record("server", field::display(&target.addr));
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
                        // An unknown method while a server that just appeared is still
                        // connecting (it may serve the method) is not counted against the
                        // attempts, for as long as a first attempt waits for servers: the
                        // waits between such tries pace them, and this bounds them.
                        if status.code() == Code::Unimplemented
                            && status.is_known_not_run()
                            && started.elapsed() < STARTUP_WAIT
                            && inner.has_new_server()
                        {
                            attempts -= 1;
                        }
                        let retryable = policy.may_send_again_before(&status, idempotent, deadline);
                        // A call waiting for ready, within a deadline, keeps trying while
                        // its tries provably never run (no server was up to take it): the
                        // deadline bounds it, and the waits between tries pace it.
                        let waiting = self.options.wait_for_ready
                            && deadline.is_some()
                            && status.is_known_not_run();
                        if !retryable || (attempts >= policy.max_attempts && !waiting) {
                            return Err(status);
                        }
                        last = Some(status);
                    }
                    Attempt::Abandoned => {
                        if !idempotent || attempts >= policy.max_attempts {
                            return Err(Status::unavailable(
                                "the server stopped answering with the call in flight; it may or may not have run",
                            ));
                        }
                        last = Some(Status::unavailable("the server stopped answering"));
                    }
                }
                tried.push(target.addr.clone());
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
    /// choice (paid from the budget). The first useful answer wins: a copy that fails in a
    /// way another server may fix (a lost connection, a refusal) does not end the race
    /// while the other copy runs. The loser is dropped, which cancels it on its server.
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
        let first_addr = first.addr.clone();
        // Boxed so that the loser can be dropped before its claim is settled as slow.
        let mut a = Box::pin(self.attempt(first, make, true, deadline));
        tokio::select! {
            r = &mut a => return (r, false),
            _ = tokio::time::sleep(delay) => {}
        }
        let key = self.options.routing_key.as_deref();
        let Ok(mut second) = inner.pick(&self.method, key, &[first_addr], true) else {
            return (a.await, false);
        };
        inner.hedges_sent.fetch_add(1, Ordering::Relaxed);
        let mut b = Box::pin(self.attempt(&mut second, make, true, deadline));
        // A copy whose failure another server may not share gives way to the other copy.
        let settles = |r: &Attempt<T>| match r {
            Attempt::Done(Err(s)) => !may_send_again_before(s, true, deadline),
            Attempt::Done(Ok(_)) => true,
            Attempt::Abandoned => false,
        };
        let (r, first_won) = tokio::select! {
            r = &mut a => {
                if settles(&r) {
                    (r, true)
                } else {
                    let other = b.as_mut().await;
                    inner.hedges_won.fetch_add(1, Ordering::Relaxed);
                    drop(a);
                    drop(b);
                    return (other, true);
                }
            }
            r = &mut b => {
                if settles(&r) {
                    inner.hedges_won.fetch_add(1, Ordering::Relaxed);
                    (r, false)
                } else {
                    let other = a.as_mut().await;
                    drop(a);
                    drop(b);
                    return (other, true);
                }
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
