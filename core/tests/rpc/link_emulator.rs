//! The link emulator: RTT through it follows the configured delay; outages and loss.

use std::time::{Duration, Instant};

use meridian::testing::{LinkEmulator, LinkSettings};
use meridian::Channel;

use crate::common::Fixture;

async fn median_call_time(ch: &Channel, n: usize) -> Duration {
    let mut times = Vec::with_capacity(n);
    for i in 0..n as i64 {
        let t = Instant::now();
        let _: i64 = ch.unary("add", &(i, 1i64)).await.unwrap();
        times.push(t.elapsed());
    }
    times.sort();
    times[n / 2]
}

#[tokio::test]
async fn rtt_through_the_link_follows_the_configured_delay() {
    let fx = Fixture::start().await;
    let link = LinkEmulator::start(
        fx.server.local_addr(),
        LinkSettings::with_rtt(Duration::from_millis(40)),
    )
    .await
    .unwrap();
    let ch = Channel::builder(link.addr(), fx.client_tls())
        .connect()
        .await
        .unwrap();
    let t = median_call_time(&ch, 10).await;
    assert!(
        t >= Duration::from_millis(40),
        "a call takes at least one RTT: {t:?}"
    );
    assert!(t < Duration::from_millis(80), "and not much more: {t:?}");
    let rtt = ch.stats().min_rtt.unwrap();
    assert!(
        rtt >= Duration::from_millis(38) && rtt < Duration::from_millis(70),
        "QUIC sees it: {rtt:?}"
    );

    // Changing the delay while it runs.
    link.set_rtt(Duration::from_millis(100));
    let t = median_call_time(&ch, 5).await;
    assert!(
        t >= Duration::from_millis(100) && t < Duration::from_millis(160),
        "{t:?}"
    );
    assert!(link.stats().forwarded > 0);
}

#[tokio::test]
async fn an_outage_stops_traffic_until_it_ends() {
    let fx = Fixture::start().await;
    let link = LinkEmulator::start(
        fx.server.local_addr(),
        LinkSettings::with_rtt(Duration::from_millis(10)),
    )
    .await
    .unwrap();
    let ch = Channel::builder(link.addr(), fx.client_tls())
        .connect()
        .await
        .unwrap();
    let _: i64 = ch.unary("add", &(1i64, 1i64)).await.unwrap();
    link.set_outage(true);
    let err = ch
        .call("add")
        .timeout(Duration::from_millis(300))
        .unary::<_, i64>(&(1i64, 1i64))
        .await
        .unwrap_err();
    assert_eq!(err.code(), meridian::Code::DeadlineExceeded);
    assert!(link.stats().dropped > 0);
    link.set_outage(false);
    let v: i64 = ch
        .call("add")
        .timeout(Duration::from_secs(5))
        .unary(&(2i64, 2i64))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v, 4);
}

#[tokio::test]
async fn calls_survive_loss() {
    let fx = Fixture::start().await;
    let link = LinkEmulator::start(
        fx.server.local_addr(),
        LinkSettings {
            loss: 0.1,
            ..LinkSettings::with_rtt(Duration::from_millis(2))
        },
    )
    .await
    .unwrap();
    let ch = Channel::builder(link.addr(), fx.client_tls())
        .connect()
        .await
        .unwrap();
    for i in 0..50i64 {
        let v: i64 = ch
            .call("add")
            .timeout(Duration::from_secs(10))
            .unary(&(i, i))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(v, 2 * i);
    }
    assert!(
        link.stats().dropped > 0,
        "some packets were lost and recovered"
    );
}
