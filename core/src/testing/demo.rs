//! The multi-region demo (the README's main command), shared by the `meridian demo`
//! command and the `regions_demo` example.
//!
//! Three regions run on loopback, each behind an emulated WAN link: `near` (5 ms RTT, two
//! servers), `mid` (40 ms) and `far` (120 ms, the only region serving `report`). One
//! region client, configured from a TOML region file, measures the RTT to every region,
//! sends each call to the nearest healthy region that serves it, then survives an outage
//! of the nearest region and comes back after it recovers. Last, the same calls go
//! through a region proxy, and each call's time is split by hop. Everything it does is
//! written as tables.
//!
//! ```no_run
//! # async fn demo() -> Result<(), meridian::testing::demo::DemoError> {
//! use meridian::testing::demo::{run, DemoOptions};
//! run(&mut std::io::stdout(), &DemoOptions::default()).await?;
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{LinkEmulator, LinkSettings};
use crate::region::{RegionClient, RegionMap, StaticDiscovery};
use crate::{ClientTls, DevCa, Method, Server, ServerTls, Status};

/// Anything that can stop the demo: a server that cannot bind, a link that cannot start,
/// a call that fails where the demo needs an answer, output that cannot be written.
pub type DemoError = Box<dyn std::error::Error + Send + Sync>;

/// Options of [`run`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DemoOptions {
    /// A short run (about 4 s instead of 16 s): the outage part lasts 3 s and the
    /// recovery part (which must outlast the 5 s hold-down) is skipped. For tests.
    pub quick: bool,
}

const SITES: [(&str, &str, u64); 4] = [
    ("near", "near-1", 5),
    ("near", "near-2", 5),
    ("mid", "mid-1", 40),
    ("far", "far-1", 120),
];

async fn start_site(
    ca: &DevCa,
    region: &'static str,
    id: &'static str,
) -> Result<Server, DemoError> {
    let tls = ServerTls::new(ca.issue_server(&["localhost"])?);
    let mut builder = Server::builder()
        .region(region)
        .server_id(id)
        .no_local_registry()
        .unary(
            Method::new("add").idempotent(),
            |(a, b): (i64, i64), _| async move {
                a.checked_add(b)
                    .ok_or_else(|| Status::out_of_range("sum overflows"))
            },
        )
        .unary(
            Method::new("where").idempotent(),
            move |(): (), _| async move { Ok((region.to_string(), id.to_string())) },
        );
    if region == "far" {
        builder = builder.unary(
            Method::new("report").idempotent(),
            move |(): (), _| async move { Ok(format!("quarterly report, served by {id}")) },
        );
    }
    Ok(builder.bind("127.0.0.1:0".parse()?, tls).await?)
}

fn ms(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.1} ms", d.as_secs_f64() * 1e3))
        .unwrap_or_else(|| "-".into())
}

fn print_regions(out: &mut dyn Write, client: &RegionClient) -> std::io::Result<()> {
    let stats = client.stats();
    writeln!(
        out,
        "  {:<6} {:>12} {:>8} {:>8} {:>8}",
        "region", "RTT (QUIC)", "healthy", "calls", "chosen"
    )?;
    for r in &stats.regions {
        writeln!(
            out,
            "  {:<6} {:>12} {:>8} {:>8} {:>8}",
            r.name,
            ms(r.rtt),
            if r.healthy { "yes" } else { "NO" },
            r.calls,
            if r.chosen { "<-" } else { "" }
        )?;
    }
    Ok(())
}

async fn whereis(client: &RegionClient) -> Result<(String, String), Status> {
    client
        .call("where")
        .timeout(Duration::from_secs(5))
        .unary(&())
        .await
        .map(|r| r.into_inner())
}

/// Calls `where` from 4 workers for `length`, counting answers per region in 500 ms
/// buckets, and returns (buckets, failures).
async fn load(
    client: &RegionClient,
    length: Duration,
    during: impl FnOnce(),
    at: Duration,
) -> (Vec<BTreeMap<String, u64>>, u64) {
    let start = Instant::now();
    let buckets = Arc::new(Mutex::new(vec![
        BTreeMap::new();
        (length.as_millis() / 500) as usize + 1
    ]));
    let failures = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (client, buckets, failures) = (client.clone(), buckets.clone(), failures.clone());
        workers.push(tokio::spawn(async move {
            while start.elapsed() < length {
                match whereis(&client).await {
                    Ok((region, _)) => {
                        let i = (start.elapsed().as_millis() / 500) as usize;
                        if let Ok(mut b) = buckets.lock() {
                            if let Some(slot) = b.get_mut(i) {
                                *slot.entry(region).or_default() += 1;
                            }
                        }
                    }
                    Err(_) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(at).await;
    during();
    for w in workers {
        let _ = w.await;
    }
    let b = buckets.lock().map(|b| b.clone()).unwrap_or_default();
    (b, failures.load(Ordering::Relaxed))
}

fn print_timeline(
    out: &mut dyn Write,
    buckets: &[BTreeMap<String, u64>],
    mark: Duration,
    mark_label: &str,
) -> std::io::Result<()> {
    writeln!(
        out,
        "  {:>7}  {:>6} {:>6} {:>6}",
        "time", "near", "mid", "far"
    )?;
    for (i, b) in buckets.iter().enumerate() {
        let t = Duration::from_millis(i as u64 * 500);
        let get = |r: &str| b.get(r).copied().unwrap_or(0);
        let note = if t <= mark && mark < t + Duration::from_millis(500) {
            format!("  <- {mark_label}")
        } else {
            String::new()
        };
        writeln!(
            out,
            "  {:>5.1} s  {:>6} {:>6} {:>6}{note}",
            t.as_secs_f64(),
            get("near"),
            get("mid"),
            get("far")
        )?;
    }
    Ok(())
}

/// Runs the demo on the current tokio runtime (it needs timers and UDP sockets), writing
/// its tables to `out`. Takes about 16 s, or 4 s with [`DemoOptions::quick`].
///
/// Errors when a server or link cannot start on loopback, when a call the demo relies on
/// fails (calls during the outage may fail and are counted instead), or when `out` cannot
/// be written.
pub async fn run(out: &mut dyn Write, options: &DemoOptions) -> Result<(), DemoError> {
    let ca = DevCa::new()?;
    let mut servers = Vec::new();
    let mut links = BTreeMap::new();
    let mut by_region: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (region, id, rtt) in SITES {
        let server = start_site(&ca, region, id).await?;
        let link = LinkEmulator::start(
            server.local_addr(),
            LinkSettings::with_rtt(Duration::from_millis(rtt)),
        )
        .await?;
        by_region
            .entry(region)
            .or_default()
            .push(format!("{{ addr = \"{}\" }}", link.addr()));
        links.insert(id, link);
        servers.push(server);
    }
    // The client is configured the way a deployment would be: from a region file.
    let toml: String = by_region
        .iter()
        .map(|(region, eps)| {
            format!(
                "[[region]]\nname = \"{region}\"\nservers = [{}]\n",
                eps.join(", ")
            )
        })
        .collect();
    let map = RegionMap::from_toml_str(&toml)?;

    writeln!(
        out,
        "Meridian multi-region demo: 3 regions on loopback behind emulated WAN links"
    )?;
    writeln!(out, "  near: 2 servers, 5 ms RTT | mid: 1 server, 40 ms | far: 1 server, 120 ms (only one serving `report`)\n")?;

    let tls = ClientTls::with_roots([ca.certificate().clone()])?;
    let client = RegionClient::builder(StaticDiscovery::new(map), tls.clone()).build()?;

    // 1. Find the nearest region.
    let t = Instant::now();
    let mut streak = 0;
    while t.elapsed() < Duration::from_secs(10) && streak < 10 {
        match whereis(&client).await {
            Ok((region, _)) if region == "near" => streak += 1,
            _ => streak = 0,
        }
    }
    writeln!(
        out,
        "1. Measured RTTs; settled on the nearest region after {:.2} s:",
        t.elapsed().as_secs_f64()
    )?;
    print_regions(out, &client)?;

    // 2. Where calls go, and why.
    writeln!(out, "\n2. Where calls go:")?;
    writeln!(out, "  {:<8} {:<8} {:<8} why", "call", "region", "server")?;
    for i in 0..4 {
        let (region, server) = whereis(&client).await?;
        let why = if i == 0 {
            "nearest healthy region; server by power of two choices"
        } else {
            ""
        };
        writeln!(out, "  {:<8} {:<8} {:<8} {why}", "where", region, server)?;
    }
    let report: String = client.unary("report", &()).await?;
    writeln!(
        out,
        "  {:<8} {:<8} {:<8} only region whose servers' catalogs list it  ({report})",
        "report", "far", "far-1"
    )?;
    for key in ["alice", "bob", "carol", "dave"] {
        let (region, server): (String, String) = client
            .call("where")
            .routing_key(key)
            .unary(&())
            .await?
            .into_inner();
        writeln!(
            out,
            "  {:<8} {:<8} {:<8} routing key {key:?}: its owner by rendezvous hashing",
            "where", region, server
        )?;
    }

    // 3. The nearest region goes dark under load.
    let (dark, length) = if options.quick {
        (Duration::from_millis(500), Duration::from_secs(3))
    } else {
        (Duration::from_secs(1), Duration::from_secs(4))
    };
    writeln!(
        out,
        "\n3. Region `near` goes dark at {:.1} s, 4 callers keep calling (calls answered per region, per 0.5 s):",
        dark.as_secs_f64()
    )?;
    let near_links: Vec<&LinkEmulator> = ["near-1", "near-2"]
        .iter()
        .filter_map(|id| links.get(id))
        .collect();
    let (buckets, failures) = load(
        &client,
        length,
        || {
            for l in &near_links {
                l.set_outage(true);
            }
        },
        dark,
    )
    .await;
    print_timeline(out, &buckets, dark, "outage starts")?;
    writeln!(out, "  failed calls: {failures}")?;
    print_regions(out, &client)?;

    // 4. It comes back.
    if options.quick {
        writeln!(
            out,
            "\n4. Recovery skipped (quick run: the 5 s hold-down would not fit)."
        )?;
    } else {
        writeln!(
            out,
            "\n4. Region `near` recovers at 0.5 s; traffic returns after the hold-down, ramped:"
        )?;
        let back = Duration::from_millis(500);
        let (buckets, failures) = load(
            &client,
            Duration::from_secs(9),
            || {
                for l in &near_links {
                    l.set_outage(false);
                }
            },
            back,
        )
        .await;
        print_timeline(out, &buckets, back, "outage ends")?;
        writeln!(out, "  failed calls: {failures}")?;
        print_regions(out, &client)?;
    }
    // 5. The same regions through a proxy, with the time of each hop.
    writeln!(
        out,
        "\n5. Through a proxy 10 ms away (it routes like the client did); where each call's time went:"
    )?;
    let proxy = crate::proxy::Proxy::builder(
        RegionClient::builder(
            StaticDiscovery::new(RegionMap::from_toml_str(&toml)?),
            tls.clone(),
        )
        .build()?,
    )
    .region("edge")
    .bind(
        "127.0.0.1:0".parse()?,
        ServerTls::new(ca.issue_server(&["localhost"])?),
    )
    .await?;
    let to_proxy = LinkEmulator::start(
        proxy.local_addr(),
        LinkSettings::with_rtt(Duration::from_millis(10)),
    )
    .await?;
    let channel = crate::Channel::builder(to_proxy.addr(), tls)
        .connect()
        .await?;
    // The proxy's own region client measures RTTs from scratch: let it settle where the
    // demo's client is (a few hundred ms).
    let settled = client.stats().current_region;
    let t = Instant::now();
    let mut streak = 0;
    while t.elapsed() < Duration::from_secs(5) && streak < 5 {
        let r = channel
            .call("where")
            .timeout(Duration::from_secs(5))
            .unary::<_, (String, String)>(&())
            .await;
        if r.is_ok_and(|r| Some(&r.get_ref().0) == settled.as_ref()) {
            streak += 1;
        } else {
            streak = 0;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    writeln!(
        out,
        "  {:<8} {:<8} {:>9} = {:>14} + {:>7} + {:>15} + {:>7}",
        "call", "server", "total", "client<->proxy", "proxy", "proxy<->server", "server"
    )?;
    for method in ["where", "where", "report", "report"] {
        let (server, timing) = if method == "where" {
            let r = channel
                .call(method)
                .timeout(Duration::from_secs(5))
                .unary::<_, (String, String)>(&())
                .await?;
            (r.get_ref().1.clone(), r.timing())
        } else {
            let r = channel
                .call(method)
                .timeout(Duration::from_secs(5))
                .unary::<_, String>(&())
                .await?;
            ("far-1".to_string(), r.timing())
        };
        let us = |d: Option<Duration>| {
            d.map(|d| format!("{:.0} µs", d.as_secs_f64() * 1e6))
                .unwrap_or_else(|| "-".into())
        };
        writeln!(
            out,
            "  {:<8} {:<8} {:>9} = {:>14} + {:>7} + {:>15} + {:>7}",
            method,
            server,
            ms(Some(timing.total())),
            ms(timing.client_proxy_network()),
            us(timing.proxy()),
            ms(timing.proxy_server_network()),
            us(timing.server()),
        )?;
    }
    writeln!(
        out,
        "  (T_total = T_client_proxy + T_proxy_server: each part is measured on one machine's clock and reported in the call's TRAILERS)"
    )?;
    proxy.shutdown(Duration::from_millis(200)).await;

    let stats = client.stats();
    writeln!(
        out,
        "\n{} calls, {} retries, region switches: {}",
        stats.calls, stats.retries, stats.region_switches
    )?;
    for s in servers {
        s.shutdown(Duration::from_millis(200)).await;
    }
    Ok(())
}
