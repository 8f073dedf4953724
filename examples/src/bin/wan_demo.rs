//! The local WAN demo: three regions, each a Meridian server behind an emulated WAN link
//! (5 ms, 40 ms and 120 ms round trip), called from one client. It prints what happened as
//! a table: handshake time, QUIC's RTT estimate, unary and streaming call times, and what a
//! deadline, an unknown method and a link outage look like to the caller.
//!
//! Run: `cargo run --release -p meridian-examples --bin wan_demo`

use std::time::{Duration, Instant};

use meridian::testing::{LinkEmulator, LinkSettings};
use meridian::{Channel, ClientTls, DevCa, Method, Server, ServerTls, Status};

const REGIONS: [(&str, u64); 3] = [("near", 5), ("mid", 40), ("far", 120)];
const CALLS: usize = 20;

struct Row {
    region: &'static str,
    link_rtt: Duration,
    handshake: Duration,
    quic_rtt: Duration,
    unary_p50: Duration,
    stream_100: Duration,
    reconnect_0rtt: Duration,
    early: bool,
}

async fn start_region(
    ca: &DevCa,
    region: &'static str,
) -> Result<Server, Box<dyn std::error::Error>> {
    let tls = ServerTls::new(ca.issue_server(&[&server_name(region)])?);
    let server = Server::builder()
        .region(region)
        .unary(
            Method::new("add").idempotent(),
            |(a, b): (i64, i64), _| async move {
                a.checked_add(b)
                    .ok_or_else(|| Status::out_of_range("sum overflows"))
            },
        )
        .unary("sleep_ms", |ms: u64, _| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(ms)
        })
        .server_streaming("count", |n: u32, _, sink| async move {
            for i in 0..n {
                sink.send(&i).await?;
            }
            Ok(())
        })
        .bind("127.0.0.1:0".parse()?, tls)
        .await?;
    Ok(server)
}

/// Each region's servers have their own name (and so their own session tickets).
fn server_name(region: &str) -> String {
    format!("{region}.meridian.test")
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn outcome<T: std::fmt::Debug>(r: Result<T, Status>) -> String {
    match r {
        Ok(v) => format!("OK ({v:?})"),
        Err(e) => e.to_string(),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ca = DevCa::new()?;
    let tls = ClientTls::with_roots([ca.certificate().clone()])?;
    println!("Meridian WAN demo: 3 regions on loopback, each behind an emulated WAN link\n");

    let mut rows = Vec::new();
    let mut regions = Vec::new();
    for (region, rtt_ms) in REGIONS {
        let server = start_region(&ca, region).await?;
        let rtt = Duration::from_millis(rtt_ms);
        let link = LinkEmulator::start(server.local_addr(), LinkSettings::with_rtt(rtt)).await?;

        let t = Instant::now();
        let channel = Channel::builder(link.addr(), tls.clone())
            .server_name(server_name(region))
            .connect()
            .await?;
        let handshake = t.elapsed();

        let mut times = Vec::with_capacity(CALLS);
        for i in 0..CALLS as i64 {
            let t = Instant::now();
            let sum: i64 = channel.unary("add", &(i, 1i64)).await?;
            if sum != i + 1 {
                return Err(format!("add({i}, 1) returned {sum}").into());
            }
            times.push(t.elapsed());
        }
        times.sort();

        let t = Instant::now();
        let mut stream = channel
            .call("count")
            .server_streaming::<_, u32>(&100u32)
            .await?;
        let mut n = 0;
        while stream.message().await?.is_some() {
            n += 1;
        }
        if n != 100 {
            return Err(format!("count(100) streamed {n} messages").into());
        }
        let stream_100 = t.elapsed();

        // Close (keeping the session tickets), then reconnect: the first call rides in the
        // first flight of the new connection.
        channel.close().await;
        let t = Instant::now();
        let _: i64 = channel.unary("add", &(1i64, 1i64)).await?;
        let reconnect_0rtt = t.elapsed();
        let early = channel.stats().early_calls == 1;

        rows.push(Row {
            region,
            link_rtt: rtt,
            handshake,
            quic_rtt: channel.stats().min_rtt.unwrap_or_default(),
            unary_p50: times[CALLS / 2],
            stream_100,
            reconnect_0rtt,
            early,
        });
        regions.push((server, link, channel));
    }

    println!(
        "{:<8} {:>10} {:>12} {:>12} {:>12} {:>16} {:>22}",
        "region",
        "link RTT",
        "handshake",
        "QUIC minRTT",
        "unary p50",
        "stream 100 msgs",
        "reconnect + 1st call"
    );
    for r in &rows {
        println!(
            "{:<8} {:>10} {:>12} {:>12} {:>12} {:>16} {:>22}",
            r.region,
            ms(r.link_rtt),
            ms(r.handshake),
            ms(r.quic_rtt),
            ms(r.unary_p50),
            ms(r.stream_100),
            format!(
                "{} ({})",
                ms(r.reconnect_0rtt),
                if r.early { "0-RTT" } else { "full" }
            )
        );
    }

    let (_, near_link, near) = &regions[0];
    println!("\nFailure modes, as the caller sees them (region 'near'):");
    let r = near
        .call("sleep_ms")
        .timeout(Duration::from_millis(50))
        .unary::<_, u64>(&1_000u64)
        .await;
    println!("  50 ms deadline on a 1 s handler  -> {}", outcome(r));
    let r = near.unary::<_, ()>("no_such_method", &()).await;
    println!("  unknown method                   -> {}", outcome(r));
    near_link.set_outage(true);
    let t = Instant::now();
    let r = near
        .call("add")
        .timeout(Duration::from_millis(300))
        .unary::<_, i64>(&(1i64, 1i64))
        .await;
    println!(
        "  link outage, 300 ms deadline     -> {} after {}",
        outcome(r),
        ms(t.elapsed())
    );
    near_link.set_outage(false);
    let t = Instant::now();
    let r = near
        .call("add")
        .timeout(Duration::from_secs(5))
        .unary::<_, i64>(&(1i64, 1i64))
        .await
        .map(|r| r.into_inner());
    println!(
        "  outage over, same connection     -> {} after {}",
        outcome(r),
        ms(t.elapsed())
    );
    println!(
        "\nThis demo calls each region directly; choosing the nearest region and failing over \
         come with region routing."
    );
    for (server, _, _) in regions {
        server.shutdown(Duration::from_secs(1)).await;
    }
    Ok(())
}
