//! `meridian-bench proxy`: a call through the region proxy against the same call made
//! directly, over emulated WAN links, with the per-hop breakdown the proxy reports.
//!
//! Three paths to one echo server, for each emulated RTT `R`:
//! - direct: client -> server over a link of RTT `R`;
//! - gateway: the proxy sits beside the server (client -> proxy over `R`, proxy -> server
//!   on loopback), as a regional gateway would;
//! - edge: the proxy sits beside the client (client -> proxy on loopback, proxy -> server
//!   over `R`), as a sidecar or edge proxy would.
//!
//! Everything runs in this process on one thread; at these RTTs (milliseconds) the few
//! microseconds of local work do not matter, and the breakdown shows where time went.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use meridian::proxy::Proxy;
use meridian::region::{RegionClient, RegionMap, ServerEndpoint, StaticDiscovery};
use meridian::testing::{LinkEmulator, LinkSettings};
use meridian::{CallTiming, Channel, ClientTls, DevCa, Method, Server, ServerTls};

use crate::Result;

/// Options of `proxy`.
pub struct ProxyPlan {
    /// Emulated round-trip times.
    pub rtts: Vec<Duration>,
    /// Calls timed per path and RTT.
    pub calls: usize,
}

struct PathResult {
    label: &'static str,
    samples: Vec<Duration>,
    timings: Vec<CallTiming>,
}

fn pct(samples: &[Duration], p: f64) -> Duration {
    let mut s = samples.to_vec();
    s.sort();
    s[((s.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn measure(
    label: &'static str,
    addr: SocketAddr,
    tls: &ClientTls,
    server_name: &str,
    calls: usize,
) -> Result<PathResult> {
    let ch = Channel::builder(addr, tls.clone())
        .server_name(server_name)
        .connect()
        .await?;
    let payload = Bytes::from(vec![7u8; 64]);
    for _ in 0..20 {
        ch.call("echo").raw().unary(&payload.clone()).await?;
    }
    let mut samples = Vec::with_capacity(calls);
    let mut timings = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t = Instant::now();
        let r = ch.call("echo").raw().unary(&payload.clone()).await?;
        samples.push(t.elapsed());
        timings.push(r.timing());
    }
    Ok(PathResult {
        label,
        samples,
        timings,
    })
}

async fn proxy_to(ca: &DevCa, upstream_addr: SocketAddr) -> Result<Proxy> {
    let mut map = RegionMap::new();
    map.add_server("r", ServerEndpoint::new(upstream_addr, "localhost"));
    let upstream = RegionClient::builder(
        StaticDiscovery::new(map),
        ClientTls::with_roots([ca.certificate().clone()])?,
    )
    .build()?;
    let proxy = Proxy::builder(upstream)
        .bind(
            "127.0.0.1:0".parse()?,
            ServerTls::new(ca.issue_server(&["proxy.local"])?),
        )
        .await?;
    if !proxy.upstream().ready("echo", Duration::from_secs(5)).await {
        return Err("the proxy cannot reach the server".into());
    }
    Ok(proxy)
}

/// Runs the plan and returns the markdown section.
pub async fn run(plan: &ProxyPlan) -> Result<String> {
    let ca = DevCa::new()?;
    let server = Server::builder()
        .no_local_registry()
        .raw()
        .unary(
            Method::new("echo").idempotent(),
            |payload: Bytes, _| async move { Ok(payload) },
        )
        .typed()
        .bind(
            "127.0.0.1:0".parse()?,
            ServerTls::new(ca.issue_server(&["localhost"])?),
        )
        .await?;
    let tls = ClientTls::with_roots([ca.certificate().clone()])?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## Proxy over emulated WAN links\n\n\
         - command: `cargo run --release -p meridian-bench -- proxy --calls {}`\n\
         - one echo server, 64 B calls, one at a time; client, proxy, server and link \
         emulators in one process. Direct: client -> server over the link. Gateway: proxy \
         beside the server (client -> proxy over the link, proxy -> server on loopback). \
         Edge: proxy beside the client (client -> proxy on loopback, proxy -> server over \
         the link). The breakdown columns are medians of what each call's TRAILERS \
         reported (`CallTiming`).\n",
        plan.calls
    );
    let _ = writeln!(
        out,
        "| RTT | path | p50 ms | p90 ms | p50 vs direct | client<->proxy ms (direct: client<->server) | proxy µs | proxy<->server ms | server µs |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for &rtt in &plan.rtts {
        let settings = LinkSettings::with_rtt(rtt);
        let to_server = LinkEmulator::start(server.local_addr(), settings).await?;
        let gateway = proxy_to(&ca, server.local_addr()).await?;
        let to_gateway = LinkEmulator::start(gateway.local_addr(), settings).await?;
        let edge = proxy_to(&ca, to_server.addr()).await?;

        let direct = measure("direct", to_server.addr(), &tls, "localhost", plan.calls).await?;
        let via_gateway = measure(
            "gateway",
            to_gateway.addr(),
            &tls,
            "proxy.local",
            plan.calls,
        )
        .await?;
        let via_edge = measure("edge", edge.local_addr(), &tls, "proxy.local", plan.calls).await?;
        let base = pct(&direct.samples, 0.5);
        for r in [&direct, &via_gateway, &via_edge] {
            let p50 = pct(&r.samples, 0.5);
            let median = |f: &dyn Fn(&CallTiming) -> Option<Duration>| {
                let v: Vec<Duration> = r.timings.iter().filter_map(f).collect();
                (!v.is_empty()).then(|| pct(&v, 0.5))
            };
            let show_ms = |d: Option<Duration>| d.map_or("-".into(), |d| format!("{:.2}", ms(d)));
            let show_us = |d: Option<Duration>| {
                d.map_or("-".into(), |d| format!("{:.0}", d.as_secs_f64() * 1e6))
            };
            let _ = writeln!(
                out,
                "| {} ms | {} | {:.2} | {:.2} | {:+.3} ms | {} | {} | {} | {} |",
                rtt.as_millis(),
                r.label,
                ms(p50),
                ms(pct(&r.samples, 0.9)),
                ms(p50) - ms(base),
                show_ms(median(&|t| t.client_proxy_network().or(t.network()))),
                show_us(median(&|t| t.proxy())),
                show_ms(median(&|t| t.proxy_server_network())),
                show_us(median(&|t| t.server())),
            );
        }
        gateway.shutdown(Duration::from_millis(100)).await;
        edge.shutdown(Duration::from_millis(100)).await;
    }
    server.shutdown(Duration::from_millis(100)).await;
    Ok(out)
}
