//! Client interceptors and tower interop over real QUIC: a channel's chain adds metadata
//! the server sees, refuses calls before anything is sent, and observes every call's end
//! (unary, streams run to the end, dropped, or out of time); a region client runs its
//! chain once per call; a channel and a region client are tower services that tower's
//! limits wrap; a tower service with a concurrency limit serves a method.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use meridian::client::{CallEnd, CallHead, Hold, Interceptor, UnaryRequest};
use meridian::region::{RegionClient, RegionMap, ServerEndpoint, StaticDiscovery};
use meridian::server::UnaryCall;
use meridian::{Channel, Code, Method, Server, ServerTls, Status};
use tower::{Service, ServiceBuilder, ServiceExt};

use super::common::{eventually, Fixture};

/// Records every call's start and end; refuses methods starting with `local_deny`; adds
/// a token and a default timeout.
struct Recorder {
    log: Arc<Mutex<Vec<String>>>,
}

impl Interceptor for Recorder {
    fn before(&self, call: &mut CallHead<'_>) -> Result<Option<Hold>, Status> {
        self.log
            .lock()
            .unwrap()
            .push(format!("before {} {:?}", call.method(), call.kind()));
        if call.method().starts_with("local_deny") {
            return Err(Status::permission_denied("refused on the client"));
        }
        call.metadata().insert("authorization", "Bearer t0ken");
        if call.timeout().is_none() {
            call.set_timeout(Some(Duration::from_millis(400)));
        }
        Ok(None)
    }

    fn after(&self, end: &CallEnd<'_>) {
        self.log
            .lock()
            .unwrap()
            .push(format!("after {} {}", end.method, end.code));
    }
}

fn recorder() -> (Recorder, Arc<Mutex<Vec<String>>>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    (Recorder { log: log.clone() }, log)
}

fn take(log: &Mutex<Vec<String>>) -> Vec<String> {
    std::mem::take(&mut *log.lock().unwrap())
}

#[tokio::test]
async fn a_channels_chain_adds_metadata_refuses_locally_and_sees_every_end() {
    let fx = Fixture::start().await;
    let (rec, log) = recorder();
    let ch = Channel::builder(fx.server.local_addr(), fx.client_tls())
        .intercept(rec)
        .connect()
        .await
        .unwrap();

    // Metadata added by the interceptor reaches the handler.
    let seen: Option<String> = ch
        .unary("echo_meta", &"authorization".to_string())
        .await
        .unwrap();
    assert_eq!(seen.as_deref(), Some("Bearer t0ken"));
    assert_eq!(
        take(&log),
        ["before echo_meta Unary", "after echo_meta OK"],
        "one before and one after per call"
    );

    // A refusal: nothing is sent, the server counts no call.
    let calls_before = fx.server.stats().calls_total;
    let err = ch.unary::<_, ()>("local_deny", &()).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(
        fx.server.stats().calls_total,
        calls_before,
        "nothing reached the server"
    );
    // Its own `after` does not run: only those that let a call through see its end.
    assert_eq!(take(&log), ["before local_deny Unary"]);

    // The server's error code is what `after` sees.
    let err = ch
        .unary::<_, ()>("fail", &"no".to_string())
        .await
        .unwrap_err();
    assert_ne!(err.code(), Code::Ok);
    assert_eq!(take(&log)[1], format!("after fail {}", err.code()));

    // The default timeout an interceptor set applies (the handler sleeps past it).
    let err = ch.unary::<_, ()>("sleep_ms", &5_000u64).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded);
    assert_eq!(take(&log)[1], "after sleep_ms DEADLINE_EXCEEDED");

    // A stream read to its end: `after` runs at its end, with OK.
    let mut stream = ch
        .call("count")
        .server_streaming::<_, u32>(&3u32)
        .await
        .unwrap();
    assert_eq!(
        take(&log),
        ["before count ServerStreaming"],
        "not ended yet"
    );
    let mut got = Vec::new();
    while let Some(n) = stream.message().await.unwrap() {
        got.push(n);
    }
    assert_eq!(got.len(), 3);
    assert_eq!(take(&log), ["after count OK"]);

    // A stream dropped before its end: CANCELLED.
    let mut stream = ch
        .call("count_forever")
        .timeout(Duration::from_secs(10))
        .server_streaming::<_, u64>(&())
        .await
        .unwrap();
    stream.message().await.unwrap();
    drop(stream);
    assert_eq!(
        take(&log),
        [
            "before count_forever ServerStreaming",
            "after count_forever CANCELLED"
        ]
    );

    // A stream cut by its deadline: DEADLINE_EXCEEDED.
    let mut responses = ch
        .call("count_forever")
        .timeout(Duration::from_millis(150))
        .server_streaming::<_, u64>(&())
        .await
        .unwrap();
    let end = loop {
        match responses.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => break Code::Ok,
            Err(s) => break s.code(),
        }
    };
    assert_eq!(end, Code::DeadlineExceeded);
    assert_eq!(take(&log)[1], "after count_forever DEADLINE_EXCEEDED");
}

#[tokio::test]
async fn a_region_clients_chain_runs_once_per_routed_call() {
    let fx = Fixture::start().await;
    let mut map = RegionMap::new();
    map.add_server(
        "test-region",
        ServerEndpoint::new(fx.server.local_addr(), "localhost"),
    );
    let before = Arc::new(AtomicUsize::new(0));
    struct Count(Arc<AtomicUsize>);
    impl Interceptor for Count {
        fn before(&self, call: &mut CallHead<'_>) -> Result<Option<Hold>, Status> {
            self.0.fetch_add(1, Ordering::SeqCst);
            call.metadata().insert("authorization", "Bearer region");
            Ok(None)
        }
    }
    let (rec, log) = recorder();
    let client = RegionClient::builder(StaticDiscovery::new(map), fx.client_tls())
        .intercept(Count(before.clone()))
        .intercept(rec)
        .build()
        .unwrap();
    assert!(client.ready("echo_meta", Duration::from_secs(5)).await);
    let seen: Option<String> = client
        .unary("echo_meta", &"authorization".to_string())
        .await
        .unwrap();
    // Both added a value; the first one the server sees is the first interceptor's.
    assert_eq!(seen.as_deref(), Some("Bearer region"));
    assert_eq!(before.load(Ordering::SeqCst), 1);
    assert_eq!(take(&log), ["before echo_meta Unary", "after echo_meta OK"]);

    // A bidi call through the region client: ended when its response stream ends.
    let (mut sink, mut responses) = client.call("double").bidi::<i64, i64>().await.unwrap();
    sink.send(&21).await.unwrap();
    sink.finish();
    assert_eq!(responses.message().await.unwrap(), Some(42));
    assert_eq!(responses.message().await.unwrap(), None);
    assert_eq!(take(&log), ["before double Bidi", "after double OK"]);

    // Refused locally: no attempt, no server involved.
    let calls = fx.server.stats().calls_total;
    let err = client
        .unary::<_, ()>("local_deny_x", &())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(fx.server.stats().calls_total, calls);
}

/// A raw server whose `slow` handler records how many calls run at once.
async fn concurrency_server(
    fx: &Fixture,
    limit_on_server: Option<usize>,
) -> (Server, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (r, p) = (running.clone(), peak.clone());
    let slow = tower::service_fn(move |call: UnaryCall<Bytes>| {
        let (r, p) = (r.clone(), p.clone());
        async move {
            let now = r.fetch_add(1, Ordering::SeqCst) + 1;
            p.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(30)).await;
            r.fetch_sub(1, Ordering::SeqCst);
            assert_eq!(call.context.method(), "slow");
            Ok::<_, Status>(call.message)
        }
    });
    let builder = Server::builder().no_local_registry().raw();
    let builder = match limit_on_server {
        Some(n) => builder.unary_service(
            Method::new("slow"),
            ServiceBuilder::new().concurrency_limit(n).service(slow),
        ),
        None => builder.unary_service(Method::new("slow"), slow),
    };
    let server = builder
        .bind(
            "127.0.0.1:0".parse().unwrap(),
            ServerTls::new(fx.ca.issue_server(&["localhost"]).unwrap()),
        )
        .await
        .unwrap();
    (server, running, peak)
}

#[tokio::test]
async fn tower_limits_wrap_a_channel_a_region_client_and_a_handler() {
    let fx = Fixture::start().await;

    // Client side: a channel behind a concurrency limit of 3; 12 callers.
    let (server, _, peak) = concurrency_server(&fx, None).await;
    let ch = Channel::builder(server.local_addr(), fx.client_tls())
        .connect()
        .await
        .unwrap();
    let limited = ServiceBuilder::new().concurrency_limit(3).service(ch);
    let calls = (0..12u8).map(|i| {
        let svc = limited.clone();
        async move {
            let r = svc
                .oneshot(UnaryRequest::new("slow", vec![i]))
                .await
                .unwrap();
            assert_eq!(r.into_inner().as_ref(), [i]);
        }
    });
    futures_join(calls).await;
    let seen = peak.load(Ordering::SeqCst);
    assert!(
        (1..=3).contains(&seen),
        "peak {seen} past the client's limit"
    );

    // A region client is a service too.
    let mut map = RegionMap::new();
    map.add_server("eu", ServerEndpoint::new(server.local_addr(), "localhost"));
    let mut client = RegionClient::builder(StaticDiscovery::new(map), fx.client_tls())
        .build()
        .unwrap();
    assert!(client.ready("slow", Duration::from_secs(5)).await);
    let r = ServiceExt::<UnaryRequest>::ready(&mut client)
        .await
        .unwrap()
        .call(UnaryRequest::new("slow", &b"routed"[..]))
        .await
        .unwrap();
    assert_eq!(r.into_inner().as_ref(), b"routed");

    // Server side: the handler itself behind a limit of 2; 10 callers at once, no
    // client limit. All succeed (later ones wait), never more than 2 run.
    let (server, running, peak) = concurrency_server(&fx, Some(2)).await;
    let ch = Channel::builder(server.local_addr(), fx.client_tls())
        .connect()
        .await
        .unwrap();
    let calls = (0..10u8).map(|i| {
        let ch = ch.clone();
        async move {
            let r = ch
                .call("slow")
                .raw()
                .unary(&Bytes::from(vec![i]))
                .await
                .unwrap();
            assert_eq!(r.into_inner().as_ref(), [i]);
        }
    });
    futures_join(calls).await;
    assert_eq!(
        peak.load(Ordering::SeqCst),
        2,
        "the server's limit was reached, not passed"
    );
    assert!(
        eventually(Duration::from_secs(1), || running.load(Ordering::SeqCst)
            == 0)
        .await
    );
}

/// Runs futures concurrently on this task and waits for all.
async fn futures_join<F: std::future::Future<Output = ()>>(futs: impl Iterator<Item = F>) {
    let mut pending: Vec<_> = futs.map(Box::pin).collect();
    std::future::poll_fn(|cx| {
        pending.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if pending.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
}
