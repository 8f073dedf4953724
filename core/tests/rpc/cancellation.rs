//! Deadlines and cancellation reach the server's handler.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use meridian::Code;

use crate::common::{eventually, Fixture};

#[tokio::test]
async fn deadline_exceeded_reaches_caller_and_handler() {
    let fx = Fixture::start().await;
    let ch = fx.channel().await;
    let started = Instant::now();
    let err = ch
        .call("sleep_ms")
        .timeout(Duration::from_millis(100))
        .unary::<_, u64>(&5_000u64)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded);
    assert!(started.elapsed() < Duration::from_secs(2));
    let probe = fx.probe.clone();
    assert!(
        eventually(Duration::from_secs(2), || probe
            .dropped_early
            .load(Ordering::SeqCst)
            == 1)
        .await,
        "the handler was stopped"
    );
    assert!(
        eventually(Duration::from_secs(1), || probe
            .saw_cancel
            .load(Ordering::SeqCst)
            == 1)
        .await
    );
    assert_eq!(probe.completed.load(Ordering::SeqCst), 0);
    // The connection keeps serving.
    assert_eq!(ch.unary::<_, i64>("add", &(1i64, 1i64)).await.unwrap(), 2);
}

#[tokio::test]
async fn dropping_a_unary_call_cancels_the_handler() {
    let fx = Fixture::start().await;
    let ch = fx.channel().await;
    let call = {
        let ch = ch.clone();
        tokio::spawn(async move { ch.unary::<_, u64>("sleep_ms", &10_000u64).await })
    };
    let probe = fx.probe.clone();
    assert!(
        eventually(Duration::from_secs(2), || probe
            .started
            .load(Ordering::SeqCst)
            == 1)
        .await
    );
    call.abort();
    assert!(
        eventually(Duration::from_secs(2), || probe
            .dropped_early
            .load(Ordering::SeqCst)
            == 1)
        .await,
        "the server handler was cancelled when the caller dropped the call"
    );
    assert!(
        eventually(Duration::from_secs(1), || probe
            .saw_cancel
            .load(Ordering::SeqCst)
            == 1)
        .await
    );
    assert_eq!(fx.server.stats().in_flight, 0);
}

#[tokio::test]
async fn dropping_a_response_stream_cancels_the_handler() {
    let fx = Fixture::start().await;
    let ch = fx.channel().await;
    let mut stream = ch
        .call("count_forever")
        .server_streaming::<_, u64>(&())
        .await
        .unwrap();
    for i in 0..3 {
        assert_eq!(stream.message().await.unwrap(), Some(i));
    }
    drop(stream);
    let probe = fx.probe.clone();
    assert!(
        eventually(Duration::from_secs(2), || probe
            .dropped_early
            .load(Ordering::SeqCst)
            == 1)
        .await,
        "the streaming handler stopped"
    );
}

/// A call that reads its whole response leaves nothing for the server to stop: the end of
/// its stream is read with the TRAILERS, and no STOP_SENDING goes out (it would cost a
/// frame, and work on both sides, on every call). A stream dropped before its end sends one.
#[tokio::test]
async fn only_a_response_left_unread_is_stopped() {
    let fx = Fixture::start().await;
    let ch = fx.channel().await;
    for i in 0..50i64 {
        let sum: i64 = ch.unary("add", &(i, 1i64)).await.unwrap();
        assert_eq!(sum, i + 1);
    }
    let mut stream = ch
        .call("count")
        .server_streaming::<_, u32>(&3u32)
        .await
        .unwrap();
    let mut got = 0;
    while stream.message().await.unwrap().is_some() {
        got += 1;
    }
    assert_eq!(got, 3);
    assert_eq!(ch.stats().stop_sending_sent, 0, "{:?}", ch.stats());
    let mut stream = ch
        .call("count_forever")
        .server_streaming::<_, u64>(&())
        .await
        .unwrap();
    assert_eq!(stream.message().await.unwrap(), Some(0));
    drop(stream);
    assert!(
        eventually(Duration::from_secs(2), || ch.stats().stop_sending_sent == 1).await,
        "a dropped stream sends one STOP_SENDING: {:?}",
        ch.stats()
    );
}

#[tokio::test]
async fn streaming_deadline_ends_the_stream() {
    let fx = Fixture::start().await;
    let ch = fx.channel().await;
    let mut stream = ch
        .call("count_forever")
        .timeout(Duration::from_millis(150))
        .server_streaming::<_, u64>(&())
        .await
        .unwrap();
    let mut n = 0;
    let err = loop {
        match stream.message().await {
            Ok(Some(_)) => n += 1,
            Ok(None) => panic!("an endless stream ended with OK"),
            Err(e) => break e,
        }
        assert!(n < 10_000);
    };
    assert_eq!(err.code(), Code::DeadlineExceeded);
    assert!(n > 0);
}

#[tokio::test]
async fn the_server_sees_the_time_left_not_more() {
    let fx = Fixture::start().await;
    let ch = fx.channel().await;
    let left: Option<u64> = ch
        .call("remaining_ms")
        .timeout(Duration::from_millis(800))
        .unary(&())
        .await
        .unwrap()
        .into_inner();
    let left = left.expect("the deadline travelled with the call");
    assert!(
        left <= 800 && left > 500,
        "server saw {left} ms left of 800"
    );
    let none: Option<u64> = ch.unary("remaining_ms", &()).await.unwrap();
    assert_eq!(none, None, "no deadline, none invented");
}
