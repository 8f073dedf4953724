//! The link emulator: RTT through it follows the configured delay; outages and loss.

use std::time::{Duration, Instant};

use meridian::testing::LinkSettings;
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
    let (link, ch) = fx
        .through_link(LinkSettings::with_rtt(Duration::from_millis(40)))
        .await;
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
    let (link, ch) = fx
        .through_link(LinkSettings::with_rtt(Duration::from_millis(10)))
        .await;
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
    let (link, ch) = fx
        .through_link(LinkSettings {
            loss: 0.1,
            ..LinkSettings::with_rtt(Duration::from_millis(2))
        })
        .await;
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

#[tokio::test]
async fn the_tcp_relay_delays_each_way() {
    use meridian::testing::TcpLinkEmulator;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = echo.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = echo.accept().await.unwrap();
        s.set_nodelay(true).unwrap();
        let mut buf = [0u8; 64];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    });
    let link = TcpLinkEmulator::start(target, Duration::from_millis(40))
        .await
        .unwrap();
    let connected = Instant::now();
    let mut c = tokio::net::TcpStream::connect(link.addr()).await.unwrap();
    c.set_nodelay(true).unwrap();
    // The first exchange also pays for TCP's own handshake: two round trips.
    c.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    c.read_exact(&mut buf).await.unwrap();
    let first = connected.elapsed();
    // Upper bounds sit just below what a relay that delayed each way twice would take
    // (160 ms, 80 ms): a loaded 2-core CI machine adds tens of milliseconds of scheduling
    // delay now and then, which is not what this test is about.
    assert!(
        first >= Duration::from_millis(80) && first < Duration::from_millis(160),
        "{first:?}"
    );
    let mut fastest = Duration::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        c.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        let rtt = t.elapsed();
        assert!(rtt >= Duration::from_millis(40), "{rtt:?}");
        fastest = fastest.min(rtt);
    }
    assert!(fastest < Duration::from_millis(80), "{fastest:?}");
}

/// Makes calls on `ch` until `done` holds of its stats (at most `limit`).
async fn call_until(
    ch: &Channel,
    limit: Duration,
    done: impl Fn(&meridian::ChannelStats) -> bool,
) -> meridian::ChannelStats {
    let end = Instant::now() + limit;
    while Instant::now() < end && !done(&ch.stats()) {
        let _: i64 = ch.unary("add", &(1i64, 1i64)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    ch.stats()
}

#[tokio::test]
async fn path_mtu_discovery_reaches_1452_in_two_probes() {
    let fx = Fixture::start().await;
    let ch = fx.channel().await;
    let s = call_until(&ch, Duration::from_secs(5), |s| s.path_mtu == Some(1452)).await;
    assert_eq!(s.path_mtu, Some(1452), "{s:?}");
    // Steps of at least 64 bytes: 1,326 then 1,452 (quinn's default of 20 takes four).
    assert_eq!(s.mtu_probes_sent, 2, "{s:?}");
}

#[tokio::test]
async fn a_narrow_path_settles_within_64_bytes_of_its_mtu_and_large_calls_still_pass() {
    let fx = Fixture::start().await;
    let (link, ch) = fx
        .through_link(LinkSettings {
            max_datagram: Some(1400),
            ..LinkSettings::with_rtt(Duration::from_millis(2))
        })
        .await;
    // 1,326 passes, 1,452 is lost (and retried), then 1,388 passes and the search stops.
    let s = call_until(&ch, Duration::from_secs(10), |s| {
        s.path_mtu.is_some_and(|m| m > 1326)
    })
    .await;
    let mtu = s.path_mtu.unwrap();
    assert!((1400 - 64..=1400).contains(&mtu), "{s:?}");
    assert!(link.stats().dropped > 0, "the 1,452-byte probe was dropped");
    // Packets of the settled size cross the link: a message of many packets arrives whole.
    let big = bytes::Bytes::from(vec![7u8; 256 * 1024]);
    let back = ch
        .call("raw_reverse")
        .raw()
        .unary(&big)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(back.len(), big.len());
    assert_eq!(ch.stats().path_mtu, Some(mtu), "no black hole was detected");
}
