//! The HELLO catalog, and graceful shutdown.

use std::time::Duration;

use meridian::wire::MethodKind;
use meridian::Code;

use crate::common::Fixture;

#[tokio::test]
async fn the_hello_carries_region_and_catalog() {
    let fx = Fixture::start().await;
    let ch = fx.channel().await;
    let hello = ch
        .wait_server_info(Duration::from_secs(5))
        .await
        .expect("HELLO");
    assert_eq!(hello.region, "test-region");
    assert_eq!(hello.server_id, "test-1");
    assert_eq!(hello.version, meridian::wire::PROTOCOL_VERSION);
    let add = hello.methods.iter().find(|m| m.name == "add").unwrap();
    assert!(add.idempotent);
    assert_eq!(add.kind, MethodKind::Unary);
    let count = hello.methods.iter().find(|m| m.name == "count").unwrap();
    assert_eq!(count.kind, MethodKind::ServerStreaming);
    assert!(!count.idempotent);
    assert_eq!(
        hello
            .methods
            .iter()
            .find(|m| m.name == "double")
            .unwrap()
            .kind,
        MethodKind::Bidi
    );
}

#[tokio::test]
async fn graceful_shutdown_finishes_calls_in_flight() {
    let fx = Fixture::start().await;
    let ch = fx.channel().await;
    let in_flight = {
        let ch = ch.clone();
        tokio::spawn(async move { ch.unary::<_, u64>("sleep_ms", &300u64).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let shutdown = tokio::spawn(fx.server.shutdown(Duration::from_secs(5)));
    tokio::time::sleep(Duration::from_millis(50)).await;
    // New calls are refused while the old one finishes.
    let err = ch.unary::<_, i64>("add", &(1i64, 1i64)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert_eq!(in_flight.await.unwrap().unwrap(), 300);
    tokio::time::timeout(Duration::from_secs(3), shutdown)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn shutdown_grace_is_bounded() {
    let fx = Fixture::start().await;
    let ch = fx.channel().await;
    let stuck = {
        let ch = ch.clone();
        tokio::spawn(async move { ch.unary::<_, u64>("sleep_ms", &60_000u64).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = std::time::Instant::now();
    fx.server.shutdown(Duration::from_millis(200)).await;
    assert!(started.elapsed() < Duration::from_secs(3));
    let err = tokio::time::timeout(Duration::from_secs(5), stuck)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
}

#[tokio::test]
async fn a_refused_call_says_it_never_ran() {
    let fx = Fixture::start().await;
    let ch = fx.channel().await;
    let _ = ch.unary::<_, i64>("add", &(1i64, 1i64)).await.unwrap();
    let slow = {
        let ch = ch.clone();
        tokio::spawn(async move { ch.unary::<_, u64>("sleep_ms", &300u64).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let shutdown = tokio::spawn(fx.server.shutdown(Duration::from_secs(5)));
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Not idempotent, refused by a server that is shutting down: the status says it is
    // safe to send elsewhere.
    let err = ch
        .unary::<_, ()>("fail", &"x".to_string())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert!(err.is_known_not_run(), "{err:?}");
    assert_eq!(slow.await.unwrap().unwrap(), 300);
    shutdown.await.unwrap();
}

#[tokio::test]
async fn methods_added_and_removed_while_running_reach_connected_clients() {
    let fx = Fixture::start().await;
    let ch = fx.channel().await;
    let has = |ch: &meridian::Channel, name: &str| {
        ch.server_info()
            .is_some_and(|h| h.methods.iter().any(|m| m.name == name))
    };
    assert!(ch.wait_server_info(Duration::from_secs(5)).await.is_some());
    assert!(!has(&ch, "triple"));
    let err = ch.unary::<_, i64>("triple", &2i64).await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);

    fx.server.add_methods(|b| {
        b.unary(
            meridian::Method::new("triple").idempotent(),
            |x: i64, _| async move { Ok(x * 3) },
        )
    });
    assert!(fx
        .server
        .catalog()
        .iter()
        .any(|m| m.name == "triple" && m.idempotent));
    // The connected client hears of it through an updated HELLO.
    assert!(crate::common::eventually(Duration::from_secs(3), || has(&ch, "triple")).await);
    assert_eq!(ch.unary::<_, i64>("triple", &2i64).await.unwrap(), 6);

    assert!(fx.server.remove_method("triple"));
    assert!(!fx.server.remove_method("triple"));
    assert!(crate::common::eventually(Duration::from_secs(3), || !has(&ch, "triple")).await);
    let err = ch.unary::<_, i64>("triple", &2i64).await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
}

/// Dropping the last handle of a channel closes its connection at once; before, keep-alives
/// held it (and the server's state for it) open long after the idle timeout.
#[tokio::test]
async fn dropping_the_last_channel_handle_closes_its_connection() {
    let fx = Fixture::start().await;
    let (channel, endpoint) = channel_on_its_own_endpoint(&fx).await;
    let clone = channel.clone();
    let sum: i64 = channel.unary("add", &(1i64, 2i64)).await.unwrap();
    assert_eq!(sum, 3);
    drop(channel);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(endpoint.open_connections(), 1, "a clone still uses it");
    drop(clone);
    assert!(
        crate::common::eventually(Duration::from_secs(1), || endpoint.open_connections() == 0)
            .await,
        "still {} connection(s) open after the last handle was dropped",
        endpoint.open_connections()
    );
}

/// A stream outlives the handle that opened it: dropping the last `Channel` while a
/// server-streaming response is being read does not cut the stream (the connection closes
/// when the stream is done).
#[tokio::test]
async fn an_open_stream_outlives_the_dropped_channel() {
    let fx = Fixture::start().await;
    let (channel, endpoint) = channel_on_its_own_endpoint(&fx).await;
    let mut stream = channel
        .call("count")
        .server_streaming::<_, u32>(&2000u32)
        .await
        .unwrap();
    drop(channel);
    let mut got = 0u32;
    while let Some(v) = stream.message().await.expect("the stream goes on") {
        assert_eq!(v, got);
        got += 1;
    }
    assert_eq!(got, 2000);
    drop(stream);
    assert!(
        crate::common::eventually(Duration::from_secs(2), || endpoint.open_connections() == 0)
            .await,
        "the connection outlived its last stream"
    );
}

/// A channel on a client endpoint of its own, so the test can count that endpoint's
/// connections.
async fn channel_on_its_own_endpoint(fx: &Fixture) -> (meridian::Channel, quinn::Endpoint) {
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let channel = meridian::Channel::builder(fx.server.local_addr(), fx.client_tls())
        .endpoint(endpoint.clone())
        .connect()
        .await
        .unwrap();
    (channel, endpoint)
}

/// Once its only server is gone, a channel's calls fail fast with UNAVAILABLE, marked not
/// run, instead of waiting through reconnection attempts (gRPC's default); a call that
/// asks to wait for ready waits, within its deadline.
#[tokio::test]
async fn calls_to_a_server_that_is_gone_fail_fast_unless_they_wait_for_ready() {
    let fx = Fixture::start().await;
    let channel = fx.channel().await;
    let sum: i64 = channel.unary("add", &(1i64, 2i64)).await.unwrap();
    assert_eq!(sum, 3);
    let Fixture { server, .. } = fx;
    server.shutdown(Duration::from_millis(10)).await;
    for i in 0..3 {
        let started = std::time::Instant::now();
        let err = channel
            .call("add")
            .unary::<_, i64>(&(1i64, 2i64))
            .await
            .unwrap_err();
        let took = started.elapsed();
        assert_eq!(err.code(), meridian::Code::Unavailable, "{err}");
        // The first call of an idempotent method goes in the first flight of the
        // reconnection, and may have reached the server; the next ones are refused
        // before they are sent.
        assert!(i == 0 || err.is_known_not_run(), "{err}");
        // Generous: the point is "not the 10 s handshake timeout, nor minutes of
        // reconnection attempts"; the first call may wait out the 1 s reconnect wait.
        assert!(
            took < Duration::from_secs(3),
            "call {i} took {took:?}: {err}"
        );
    }
    let started = std::time::Instant::now();
    let err = channel
        .call("add")
        .wait_for_ready(true)
        .timeout(Duration::from_millis(1500))
        .unary::<_, i64>(&(1i64, 2i64))
        .await
        .unwrap_err();
    assert_eq!(err.code(), meridian::Code::DeadlineExceeded, "{err}");
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "it did not wait"
    );
}

/// A caller that loops on calls failing at once (its server is gone) must not hold its
/// thread: on a one-thread runtime the loop would otherwise never let a timer fire. The
/// seeded chaos test found this as a hang of both worker threads (fail-fast calls that
/// never returned `Pending`).
#[test]
fn a_caller_looping_on_failing_calls_does_not_starve_the_runtime() {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let looped = rt.block_on(async {
            let fx = Fixture::start().await;
            let channel = fx.channel().await;
            let _: i64 = channel.unary("add", &(1i64, 2i64)).await.unwrap();
            let Fixture { server, .. } = fx;
            server.shutdown(Duration::from_millis(10)).await;
            // Until a reconnection has failed; from then on calls fail at once.
            for _ in 0..3 {
                let _ = channel.call("add").unary::<_, i64>(&(1i64, 2i64)).await;
            }
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let looping = {
                let stop = stop.clone();
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let r = channel.call("add").unary::<_, i64>(&(1i64, 2i64)).await;
                        assert!(r.is_err());
                        n += 1;
                    }
                    n
                })
            };
            tokio::time::sleep(Duration::from_millis(200)).await;
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            looping.await.unwrap()
        });
        let _ = tx.send(looped);
    });
    let looped = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the looping caller starved the runtime: a 200 ms timer never fired");
    assert!(looped > 0);
}

/// A dropped channel whose server is gone stops dialling at once: no socket, no
/// handshake packets left behind.
#[tokio::test]
async fn a_dropped_channel_stops_dialling_a_server_that_is_gone() {
    let fx = Fixture::start().await;
    let addr = fx.server.local_addr();
    let channel = fx.channel().await;
    let _: i64 = channel.unary("add", &(1i64, 2i64)).await.unwrap();
    let Fixture { server, .. } = fx;
    server.shutdown(Duration::from_millis(10)).await;
    // Listen where the server was, to see the channel's reconnection attempts.
    let mut sink = None;
    for _ in 0..200 {
        if let Ok(s) = tokio::net::UdpSocket::bind(addr).await {
            sink = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let sink = sink.expect("the server's port is free again");
    let count = |limit: Duration| {
        let sink = &sink;
        async move {
            let mut n = 0;
            let mut buf = [0u8; 2048];
            let end = tokio::time::Instant::now() + limit;
            while let Ok(Ok(_)) = tokio::time::timeout_at(end, sink.recv_from(&mut buf)).await {
                n += 1;
            }
            n
        }
    };
    assert!(
        count(Duration::from_secs(2)).await > 0,
        "the channel never tried again"
    );
    drop(channel);
    let _ = count(Duration::from_millis(300)).await;
    let after = count(Duration::from_secs(3)).await;
    assert_eq!(after, 0, "{after} datagrams from a dropped channel");
}

/// A server whose shutdown returned has given its port back, even while a client keeps
/// redialling it, so it can restart on the same address at once. (On this single-threaded
/// runtime nothing else runs between the return and the bind.)
#[tokio::test]
async fn a_stopped_server_gives_its_port_back() {
    let fx = Fixture::start().await;
    let addr = fx.server.local_addr();
    let channel = fx.channel().await;
    let _: i64 = channel.unary("add", &(1i64, 2i64)).await.unwrap();
    let Fixture { server, .. } = fx;
    server.shutdown(Duration::from_millis(10)).await;
    if let Err(e) = std::net::UdpSocket::bind(addr) {
        panic!("port still bound when shutdown returned: {e}");
    }
    drop(channel);
}

/// A server dropped with calls in flight gives its port back promptly too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_server_with_calls_in_flight_gives_its_port_back() {
    let fx = Fixture::start().await;
    let addr = fx.server.local_addr();
    let channel = fx.channel().await;
    let mut calls = Vec::new();
    for _ in 0..8 {
        let ch = channel.clone();
        calls.push(tokio::spawn(async move {
            ch.call("sleep_ms").unary::<_, ()>(&300u64).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let Fixture { server, .. } = fx;
    drop(server);
    let started = std::time::Instant::now();
    loop {
        match std::net::UdpSocket::bind(addr) {
            Ok(_) => break,
            Err(e) => assert!(
                started.elapsed() < Duration::from_secs(3),
                "port still bound after {:?}: {e}",
                started.elapsed()
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for c in calls {
        let _ = c.await;
    }
    drop(channel);
}
