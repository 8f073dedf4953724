//! Discovery in etcd: three regions on loopback behind emulated WAN links (`near` 5 ms
//! RTT with two servers, `mid` 40 ms, `far` 120 ms and the only one serving `report`).
//! Every server registers itself in etcd; the client is given nothing but the etcd
//! address (and the CA to trust), finds them all, and calls them. Then both `near`
//! servers crash: their leases expire, they leave the membership, and traffic moves on.
//!
//! Run: `bash scripts/etcd_demo.sh` (installs etcd if missing). By default the demo starts
//! its own etcd on a free loopback port with a temporary data directory; `--etcd URL`
//! uses a running one instead.

use std::time::{Duration, Instant};

use meridian::region::{EtcdConfig, EtcdDiscovery, EtcdRegistration, RegionClient, ServerRecord};
use meridian::testing::etcd::EtcdProcess;
use meridian::testing::{LinkEmulator, LinkSettings};
use meridian::{ClientTls, DevCa, Method, Server, ServerTls};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

struct Site {
    _server: Server,
    link: LinkEmulator,
    registration: Option<EtcdRegistration>,
}

async fn start_site(
    ca: &DevCa,
    config: &EtcdConfig,
    region: &str,
    id: &str,
    rtt_ms: u64,
) -> Result<Site, BoxError> {
    let me = id.to_string();
    let mut builder = Server::builder()
        .region(region)
        .server_id(id)
        .no_local_registry()
        .unary(Method::new("whoami").idempotent(), move |(): (), _| {
            let me = me.clone();
            async move { Ok(me) }
        });
    if region == "far" {
        builder = builder.unary(Method::new("report").idempotent(), |(): (), _| async {
            Ok("quarterly report".to_string())
        });
    }
    let identity = ca.issue_server(&["localhost"])?;
    let cert = identity.certificate().clone();
    let server = builder
        .bind("127.0.0.1:0".parse()?, ServerTls::new(identity))
        .await?;
    let link = LinkEmulator::start(
        server.local_addr(),
        LinkSettings::with_rtt(Duration::from_millis(rtt_ms)),
    )
    .await?;
    // Clients reach the server through its emulated link: that is the address to publish.
    let record = ServerRecord::for_server(&server, link.addr(), "localhost")
        .server_id(id)
        .certificate(&cert);
    let registration = EtcdRegistration::register(config, record).await?;
    Ok(Site {
        _server: server,
        link,
        registration: Some(registration),
    })
}

async fn whoami(client: &RegionClient) -> String {
    match client
        .call("whoami")
        .timeout(Duration::from_secs(5))
        .unary::<_, String>(&())
        .await
    {
        Ok(r) => r.into_inner(),
        Err(e) => format!("error: {e}"),
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let given = args
        .iter()
        .position(|a| a == "--etcd")
        .and_then(|i| args.get(i + 1).cloned());
    let (_own_etcd, endpoint) = match given {
        Some(url) => (None, url),
        None => {
            let etcd = tokio::task::spawn_blocking(EtcdProcess::start).await??;
            let url = etcd.endpoint();
            (Some(etcd), url)
        }
    };
    let ttl = Duration::from_secs(3);
    let config = EtcdConfig::new([endpoint.clone()])
        .prefix(format!("/meridian-demo-{}/", std::process::id()))
        .lease_ttl(ttl);
    println!("Meridian etcd discovery demo: etcd at {endpoint}, lease TTL {ttl:?}");

    let ca = DevCa::new()?;
    let mut sites = Vec::new();
    for (region, id, rtt) in [
        ("near", "near-1", 5),
        ("near", "near-2", 5),
        ("mid", "mid-1", 40),
        ("far", "far-1", 120),
    ] {
        sites.push(start_site(&ca, &config, region, id, rtt).await?);
    }
    println!("  4 servers registered themselves (near 5 ms x2, mid 40 ms, far 120 ms)\n");

    // The client knows only the etcd address (and which CA to trust).
    let discovery = EtcdDiscovery::connect(config.clone()).await?;
    let client = RegionClient::builder(
        discovery.clone(),
        ClientTls::with_roots([ca.certificate().clone()])?,
    )
    .build()?;

    println!("1. What the client read from etcd:");
    println!("  {:<8} {:<8} {:<17} methods", "region", "id", "address");
    for r in discovery.records() {
        let methods: Vec<&str> = r.methods.iter().map(|m| m.name.as_str()).collect();
        println!(
            "  {:<8} {:<8} {:<17} {}",
            r.region,
            r.server_id,
            r.addr.to_string(),
            methods.join(", ")
        );
    }

    client.ready("whoami", Duration::from_secs(5)).await;
    let start = Instant::now();
    let mut calls = 0;
    while calls < 40 && start.elapsed() < Duration::from_secs(3) {
        whoami(&client).await;
        calls += 1;
    }
    let report: String = client.unary("report", &()).await?;
    println!("\n2. Calls: `whoami` x{calls} and `report` once:");
    println!(
        "  {:<8} {:>10} {:>7} {:>8}",
        "region", "RTT", "calls", "chosen"
    );
    for r in client.stats().regions {
        println!(
            "  {:<8} {:>10} {:>7} {:>8}",
            r.name,
            r.rtt
                .map(|d| format!("{:.1} ms", d.as_secs_f64() * 1e3))
                .unwrap_or_else(|| "-".into()),
            r.calls,
            if r.chosen { "<-" } else { "" }
        );
    }
    println!("  `report` answered {report:?} (only `far` serves it)");

    println!("\n3. Both `near` servers crash (no clean stop: their leases just expire):");
    let crashed = Instant::now();
    for site in sites.iter_mut().take(2) {
        site.link.set_outage(true);
        if let Some(r) = site.registration.take() {
            r.abandon();
        }
    }
    let mut last = String::new();
    let mut left_at = None;
    while crashed.elapsed() < ttl + Duration::from_secs(3) {
        let id = whoami(&client).await;
        if id != last {
            println!(
                "  {:>5.2} s  calls answered by {id}",
                crashed.elapsed().as_secs_f64()
            );
            last = id;
        }
        let near_listed = discovery.records().iter().any(|r| r.region == "near");
        if !near_listed && left_at.is_none() {
            left_at = Some(crashed.elapsed());
            println!(
                "  {:>5.2} s  leases expired: `near` left the membership",
                crashed.elapsed().as_secs_f64()
            );
        }
        if left_at.is_some() && crashed.elapsed() > ttl + Duration::from_secs(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = client.stats();
    println!(
        "  calls: {}, retried: {}, now served from {}",
        stats.calls,
        stats.retries,
        stats.current_region.as_deref().unwrap_or("no region")
    );

    for site in sites.iter_mut() {
        if let Some(r) = site.registration.take() {
            r.deregister().await;
        }
    }
    println!("\nThe remaining servers deregistered (leases revoked); etcd is stopped on exit.");
    Ok(())
}
