//! Many calls on one connection, and no head-of-line blocking between them.

use std::time::{Duration, Instant};

use crate::common::Fixture;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_calls_on_one_connection() {
    let fx = Fixture::start().await;
    let ch = fx.channel().await;
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
    let ch = fx.channel().await;
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
