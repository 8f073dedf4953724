//! Many calls on one connection, and no head-of-line blocking between them.

use std::time::{Duration, Instant};

use crate::common::Fixture;

/// 1,000 calls at once share one connection. The server allows 100 at first and its
/// full limit (1,024) once 50 have arrived; the calls past the first 100 wait for that
/// credit. The grace before an extra connection is made long here, so that a slow test
/// machine cannot turn the wait into a dial.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_calls_on_one_connection() {
    let fx = Fixture::start().await;
    let ch = meridian::Channel::builder(fx.server.local_addr(), fx.client_tls())
        .transport(meridian::TransportConfig {
            stream_credit_grace: Duration::from_secs(10),
            ..Default::default()
        })
        .connect()
        .await
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..1000i64 {
        let ch = ch.clone();
        tasks.spawn(async move { (i, ch.unary::<_, i64>("add", &(i, i)).await) });
    }
    let mut ok = 0;
    while let Some(r) = tasks.join_next().await {
        let (i, r) = r.unwrap();
        assert_eq!(r.unwrap(), 2 * i);
        ok += 1;
    }
    assert_eq!(ok, 1000);
    assert_eq!(ch.stats().connections, 1, "all calls shared one connection");
    assert!(ch.stats().calls_started >= 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_call_does_not_block_quick_ones() {
    let fx = Fixture::start().await;
    let ch = fx.channel().await;
    let slow = {
        let ch = ch.clone();
        tokio::spawn(async move {
            let r = ch.unary::<_, u64>("sleep_ms", &500u64).await;
            (r, Instant::now())
        })
    };
    // Let the slow call start first.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let started = Instant::now();
    let mut quick = tokio::task::JoinSet::new();
    for i in 0..100i64 {
        let ch = ch.clone();
        quick.spawn(async move { ch.unary::<_, i64>("add", &(i, 1i64)).await });
    }
    while let Some(r) = quick.join_next().await {
        r.unwrap().unwrap();
    }
    let quick_done = Instant::now();
    let (slow_result, slow_done) = slow.await.unwrap();
    assert_eq!(slow_result.unwrap(), 500);
    assert!(
        quick_done < slow_done,
        "100 quick calls finished {:?} after they started, before the 500 ms call",
        quick_done - started
    );
    assert!(quick_done - started < Duration::from_millis(400));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_stream_credit_is_counted_and_honours_the_deadline() {
    let fx = Fixture::start_with(|b| {
        b.transport(meridian::TransportConfig {
            max_concurrent_streams: 2,
            ..Default::default()
        })
    })
    .await;
    // No extra connections: calls past the limit wait for credit.
    let ch = meridian::Channel::builder(fx.server.local_addr(), fx.client_tls())
        .transport(meridian::TransportConfig {
            extra_connections: 0,
            ..Default::default()
        })
        .connect()
        .await
        .unwrap();
    let mut slow = Vec::new();
    for _ in 0..2 {
        let ch = ch.clone();
        slow.push(tokio::spawn(async move {
            ch.unary::<_, u64>("sleep_ms", &400u64).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let err = ch
        .call("add")
        .timeout(Duration::from_millis(100))
        .unary::<_, i64>(&(1i64, 2i64))
        .await
        .unwrap_err();
    assert_eq!(err.code(), meridian::Code::DeadlineExceeded);
    assert!(ch.stats().stream_credit_waits >= 1);
    // Without a deadline the waiting call goes through once credit returns.
    let v: i64 = ch.unary("add", &(1i64, 2i64)).await.unwrap();
    assert_eq!(v, 3);
    for s in slow {
        assert_eq!(s.await.unwrap().unwrap(), 400);
    }
}

/// A server with a stream limit of `max_streams` whose `hold` calls each wait for a permit
/// of the returned semaphore.
async fn hold_server(max_streams: u32) -> (Fixture, std::sync::Arc<tokio::sync::Semaphore>) {
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let g = gate.clone();
    let fx = Fixture::start_with(move |b| {
        b.transport(meridian::TransportConfig {
            max_concurrent_streams: max_streams,
            ..Default::default()
        })
        .unary("hold", move |(): (), _| {
            let g = g.clone();
            async move {
                g.acquire()
                    .await
                    .map_err(|_| meridian::Status::internal("closed"))?
                    .forget();
                Ok(())
            }
        })
    })
    .await;
    (fx, gate)
}

/// A server allows 4 calls at once per connection: a channel whose calls need more opens
/// extra connections (up to `extra_connections`) instead of queueing them behind the
/// calls in flight; with none allowed they wait for stream credit, and all finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_past_the_stream_limit_get_extra_connections() {
    let (fx, gate) = hold_server(4).await;
    for (extra, started) in [(3usize, 10usize), (0, 4)] {
        let ch = meridian::Channel::builder(fx.server.local_addr(), fx.client_tls())
            .transport(meridian::TransportConfig {
                extra_connections: extra,
                ..Default::default()
            })
            .connect()
            .await
            .unwrap();
        let before = fx.server.stats().in_flight;
        assert_eq!(before, 0);
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..10 {
            let ch = ch.clone();
            calls.spawn(async move {
                ch.call("hold")
                    .timeout(Duration::from_secs(10))
                    .unary::<_, ()>(&())
                    .await
            });
        }
        let end = Instant::now() + Duration::from_secs(5);
        while fx.server.stats().in_flight < started && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            fx.server.stats().in_flight,
            started,
            "extra_connections {extra}"
        );
        assert_eq!(ch.stats().connections as usize, 1 + extra.min(2));
        gate.add_permits(10);
        while let Some(r) = calls.join_next().await {
            r.unwrap().unwrap();
        }
    }
}

/// A server allows a new connection 100 calls at first (`initial_stream_credit`) and the
/// full `max_concurrent_streams` once the client has opened 50. A burst of 400 calls on a
/// fresh connection to a server whose limit is 300: the first 100 start at once, the
/// rest wait for the credit to grow, and the server then holds exactly its limit, never
/// more. With extra connections allowed, calls wait for that credit (within two round
/// trips plus `stream_credit_grace`, here long enough that a busy machine cannot make
/// the test depend on timing) instead of opening extra connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_credit_grows_with_a_burst_up_to_the_limit() {
    let (fx, gate) = hold_server(300).await;
    assert_eq!(
        meridian::TransportConfig::default().initial_stream_credit,
        100
    );
    for extra in [0usize, 3] {
        let ch = meridian::Channel::builder(fx.server.local_addr(), fx.client_tls())
            .transport(meridian::TransportConfig {
                extra_connections: extra,
                stream_credit_grace: Duration::from_secs(10),
                ..Default::default()
            })
            .connect()
            .await
            .unwrap();
        assert_eq!(fx.server.stats().in_flight, 0);
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..400 {
            let ch = ch.clone();
            calls.spawn(async move {
                ch.call("hold")
                    .timeout(Duration::from_secs(20))
                    .unary::<_, ()>(&())
                    .await
            });
        }
        let end = Instant::now() + Duration::from_secs(10);
        while fx.server.stats().in_flight < 300 && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            fx.server.stats().in_flight,
            300,
            "extra_connections {extra}: the credit grew past the first 100, to the limit"
        );
        assert_eq!(ch.stats().connections, 1, "extra_connections {extra}");
        assert!(ch.stats().stream_credit_waits >= 100);
        gate.add_permits(400);
        while let Some(r) = calls.join_next().await {
            r.unwrap().unwrap();
        }
    }
}

/// Two calls on one connection to a handler that blocks its thread until both are inside
/// it (or 1 s passes). With `task_per_call` each call is a task of its own, so on a
/// two-worker runtime both run in parallel and meet. By default a connection's calls are
/// polled by its one task, so the first blocks the second until it gives up: the cost
/// `ServerBuilder::task_per_call` documents, shown here so the two modes cannot silently
/// swap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_per_call_runs_one_connections_blocking_handlers_in_parallel() {
    use std::sync::{Arc, Condvar, Mutex};
    for per_call in [true, false] {
        let arrived = Arc::new((Mutex::new(0u32), Condvar::new()));
        let a = arrived.clone();
        let fx = Fixture::start_with(move |b| {
            b.task_per_call(per_call).unary("meet", move |(): (), _| {
                let a = a.clone();
                async move {
                    // Blocks the worker thread on purpose (no .await inside).
                    let (count, cv) = &*a;
                    let mut n = count.lock().unwrap();
                    *n += 1;
                    cv.notify_all();
                    let (n, _) = cv
                        .wait_timeout_while(n, Duration::from_secs(1), |n| *n < 2)
                        .unwrap();
                    Ok(*n >= 2)
                }
            })
        })
        .await;
        let ch = fx.channel().await;
        let (x, y) = tokio::join!(
            ch.unary::<_, bool>("meet", &()),
            ch.unary::<_, bool>("meet", &())
        );
        let met = [x.unwrap(), y.unwrap()];
        assert_eq!(ch.stats().connections, 1);
        if per_call {
            assert_eq!(
                met,
                [true, true],
                "with a task per call both handlers ran at once"
            );
        } else {
            assert!(
                met.contains(&false),
                "one connection's task ran both blocking handlers at once: {met:?}"
            );
        }
    }
}

/// Computes for `us` microseconds without yielding, as a CPU-bound handler does.
fn spin(us: u64) {
    let end = Instant::now() + Duration::from_micros(us);
    while Instant::now() < end {
        std::hint::spin_loop();
    }
}

/// Sends a burst of 24 calls that each compute for 2.5 ms to a server on a current-thread
/// runtime of its own, built with `calls_per_turn`, and returns how far apart the first
/// and the last answer reached the client.
///
/// The burst is sent while the server computes for 150 ms on an earlier call, so it is
/// waiting whole when the server next reads its socket.
async fn burst_spread(calls_per_turn: usize) -> Duration {
    let ca = meridian::DevCa::new().unwrap();
    let tls = meridian::ServerTls::new(ca.issue_server(&["localhost"]).unwrap());
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server_thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let server = meridian::Server::builder()
                .transport(meridian::TransportConfig {
                    calls_per_turn,
                    ..Default::default()
                })
                .unary("spin_us", |us: u64, _| async move {
                    spin(us);
                    Ok(us)
                })
                .bind("127.0.0.1:0".parse().unwrap(), tls)
                .await
                .unwrap();
            addr_tx.send(server.local_addr()).unwrap();
            let _ = stop_rx.await;
            drop(server);
        });
    });
    let addr = addr_rx.recv().unwrap();
    let ch = meridian::Channel::builder(
        addr,
        meridian::ClientTls::with_roots([ca.certificate().clone()]).unwrap(),
    )
    .connect()
    .await
    .unwrap();
    // Warm up: the connection's first calls also open it.
    assert_eq!(ch.unary::<_, u64>("spin_us", &0u64).await.unwrap(), 0);

    let block = {
        let ch = ch.clone();
        tokio::spawn(async move { ch.unary::<_, u64>("spin_us", &150_000u64).await })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    let mut burst = tokio::task::JoinSet::new();
    for _ in 0..24 {
        let ch = ch.clone();
        burst.spawn(async move {
            let r = ch.unary::<_, u64>("spin_us", &2_500u64).await;
            (r, Instant::now())
        });
    }
    assert_eq!(block.await.unwrap().unwrap(), 150_000);
    let mut arrivals = Vec::new();
    while let Some(joined) = burst.join_next().await {
        let (r, at) = joined.unwrap();
        assert_eq!(r.unwrap(), 2_500);
        arrivals.push(at);
    }
    let _ = stop_tx.send(());
    server_thread.join().unwrap();
    let first = *arrivals.iter().min().unwrap();
    let last = *arrivals.iter().max().unwrap();
    last - first
}

/// `TransportConfig::calls_per_turn`: a burst of calls on one connection is answered as it
/// runs, not all at once when its last call is done, so the client works on the first
/// answers while the server runs the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_calls_is_answered_as_it_runs() {
    // 24 calls of 2.5 ms in turns of 8: the first answers leave after about 20 ms, the
    // last after about 60 ms. (The burst is kept small enough that tokio's cooperative
    // budget does not split it on its own: past about 30 calls in one poll of the
    // connection's task it can.)
    let in_turns = burst_spread(8).await;
    assert!(
        in_turns >= Duration::from_millis(25),
        "with turns of 8 calls the answers came {in_turns:?} apart"
    );
    // The same burst with no turns: every answer leaves after the last call.
    let at_once = burst_spread(0).await;
    assert!(
        at_once < in_turns / 2,
        "without turns the answers came {at_once:?} apart, with turns {in_turns:?}"
    );
}
