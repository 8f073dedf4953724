//! `meridian probe`: the RTT to every region and server, as a table.

use std::collections::{HashMap, VecDeque};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use meridian::region::ServerAddr;

use crate::common::{
    ms, ms_f64, parse_duration, shutdown_signal, CliResult, EtcdArgs, Target, TargetArgs, TlsArgs,
    EXIT_CODES,
};

/// Flags of `probe`.
#[derive(Args, Debug)]
#[command(after_help = format!("{PROBE_HELP}\n\n{EXIT_CODES}"))]
pub struct ProbeArgs {
    /// The TOML region file listing the regions and servers to probe.
    #[arg(long, value_name = "FILE", required_unless_present = "etcd")]
    pub regions: Option<PathBuf>,
    /// Probe only this region of the file.
    #[arg(long, value_name = "NAME", requires = "regions")]
    pub region: Option<String>,
    /// Keep measuring and print a fresh table every --interval (until --count tables or
    /// Ctrl-C).
    #[arg(long)]
    pub watch: bool,
    /// Print this many tables, then stop (implies --watch when above 1).
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// How long each table's samples are gathered.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Give up connecting after this long.
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Machine-readable output: one JSON object per table.
    #[arg(long)]
    pub json: bool,
    /// Every server must present the certificate whose SHA-256 its entry publishes
    /// (`cert_sha256`), on top of the normal verification (see `call --help`).
    #[arg(long)]
    pub pin_cert_sha256: bool,
    #[command(flatten)]
    pub etcd: EtcdArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
}

const PROBE_HELP: &str = "\
Connects to every server of the region file (or registered in etcd) (QUIC keep-alives every 100 ms keep the RTT
estimates fresh) and prints, per server: its region and id (from its HELLO), the RTT
median (p50) of the samples of the last --interval and the minimum RTT QUIC has seen,
whether it can take calls, what its health method (`meridian.health`) answers
(SERVING, NOT_SERVING, DRAINING), and `<-` on the region a call would be sent to now.

Examples:
  meridian probe --regions regions.toml --insecure-dev
  meridian probe --regions regions.toml --ca ca.pem --watch --interval 2s
  meridian probe --etcd http://127.0.0.1:2379 --insecure-dev";

const SAMPLE_EVERY: Duration = Duration::from_millis(100);
const KEEP_SAMPLES: usize = 256;

fn p50(samples: &VecDeque<Duration>) -> Option<Duration> {
    let mut v: Vec<Duration> = samples.iter().copied().collect();
    v.sort_unstable();
    v.get(v.len().checked_sub(1)? / 2).copied()
}

struct Row {
    region: String,
    server: String,
    addr: ServerAddr,
    p50: Option<Duration>,
    min: Option<Duration>,
    healthy: bool,
    /// What the server's health method says: SERVING, NOT_SERVING, DRAINING, or why it
    /// could not be asked.
    health: String,
    chosen: bool,
}

/// Asks each server's health method (`meridian.health`) at once, within 1 s.
async fn health_of(
    client: &meridian::region::RegionClient,
    addrs: &[ServerAddr],
) -> HashMap<ServerAddr, String> {
    let mut asks = tokio::task::JoinSet::new();
    for addr in addrs {
        let addr = addr.clone();
        let Some(ch) = client.server_channel(&addr) else {
            continue;
        };
        asks.spawn(async move {
            let answer = ch
                .call(meridian::HEALTH_METHOD)
                .timeout(Duration::from_secs(1))
                .unary::<String, String>(&String::new())
                .await;
            let text = match answer {
                Ok(r) => r.into_inner(),
                Err(s) => s.code().name().to_string(),
            };
            (addr, text)
        });
    }
    let mut out = HashMap::new();
    while let Some(r) = asks.join_next().await {
        if let Ok((addr, text)) = r {
            out.insert(addr, text);
        }
    }
    out
}

/// Runs `probe`.
pub async fn run(args: ProbeArgs) -> CliResult<()> {
    let target_args = TargetArgs {
        connect: None,
        regions: args.regions.clone(),
        region: args.region.clone(),
        server_name: None,
        pin_cert_sha256: args.pin_cert_sha256,
        home_region: None,
        hedge: Vec::new(),
        via_proxies: false,
        connect_timeout: args.connect_timeout,
        etcd: args.etcd.clone(),
        tls: args.tls.clone(),
    };
    let Target::Routed(client, addrs) = target_args.connect(Some(SAMPLE_EVERY)).await? else {
        return Ok(());
    };
    let tables = match (args.count, args.watch) {
        (Some(n), _) => n.max(1),
        (None, true) => u64::MAX,
        (None, false) => 1,
    };
    let clear = tables > 1 && !args.json && std::io::stdout().is_terminal();
    let start = Instant::now();
    let mut samples: HashMap<ServerAddr, VecDeque<Duration>> = HashMap::new();
    let stop = shutdown_signal();
    tokio::pin!(stop);
    let mut printed = 0u64;
    'outer: while printed < tables {
        // Gather one interval of samples.
        for addr in &addrs {
            samples.entry(addr.clone()).or_default().clear();
        }
        let end = tokio::time::Instant::now() + args.interval;
        loop {
            for addr in &addrs {
                if let Some(rtt) = client.server_channel(addr).and_then(|c| c.stats().rtt) {
                    let s = samples.entry(addr.clone()).or_default();
                    if s.len() == KEEP_SAMPLES {
                        s.pop_front();
                    }
                    s.push_back(rtt);
                }
            }
            if tokio::time::Instant::now() >= end {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(SAMPLE_EVERY) => {}
                _ = &mut stop => break 'outer,
            }
        }
        let chosen = client.preview_region(None);
        let health = health_of(&client, &addrs).await;
        let stats = client.stats();
        let rows: Vec<Row> = stats
            .servers
            .iter()
            .map(|s| {
                let ch = client.server_channel(&s.addr);
                let server = ch
                    .as_ref()
                    .and_then(|c| c.server_info())
                    .map(|h| h.server_id.clone())
                    .unwrap_or_else(|| "-".into());
                Row {
                    region: s.region.clone(),
                    server,
                    addr: s.addr.clone(),
                    p50: samples.get(&s.addr).and_then(p50),
                    min: ch.as_ref().and_then(|c| c.stats().min_rtt),
                    healthy: s.connected && !s.ejected,
                    health: health.get(&s.addr).cloned().unwrap_or_else(|| "-".into()),
                    chosen: chosen.as_deref() == Some(s.region.as_str()),
                }
            })
            .collect();
        print_table(&rows, chosen.as_deref(), start.elapsed(), args.json, clear)?;
        printed += 1;
    }
    Ok(())
}

fn opt_ms(d: Option<Duration>) -> String {
    d.map(ms).unwrap_or_else(|| "-".into())
}

fn print_table(
    rows: &[Row],
    chosen: Option<&str>,
    elapsed: Duration,
    json: bool,
    clear: bool,
) -> CliResult<()> {
    let mut out = std::io::stdout().lock();
    if json {
        let servers: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "region": r.region,
                    "server": r.server,
                    "address": r.addr.to_string(),
                    "rtt_p50_ms": r.p50.map(ms_f64),
                    "rtt_min_ms": r.min.map(ms_f64),
                    "healthy": r.healthy,
                    "health": r.health,
                    "chosen": r.chosen,
                })
            })
            .collect();
        let line = serde_json::json!({
            "elapsed_s": (elapsed.as_secs_f64() * 10.0).round() / 10.0,
            "chosen_region": chosen,
            "servers": servers,
        });
        writeln!(out, "{line}")?;
        return Ok(());
    }
    if clear {
        write!(out, "\x1b[2J\x1b[H")?;
    }
    writeln!(
        out,
        "{:<10} {:<14} {:<22} {:>12} {:>12} {:>8} {:>12} {:>7}",
        "region", "server", "address", "RTT p50", "RTT min", "healthy", "health", "chosen"
    )?;
    for r in rows {
        writeln!(
            out,
            "{:<10} {:<14} {:<22} {:>12} {:>12} {:>8} {:>12} {:>7}",
            r.region,
            r.server,
            r.addr.to_string(),
            opt_ms(r.p50),
            opt_ms(r.min),
            if r.healthy { "yes" } else { "NO" },
            r.health,
            if r.chosen { "<-" } else { "" }
        )?;
    }
    writeln!(
        out,
        "({:.1} s; calls would go to region {})\n",
        elapsed.as_secs_f64(),
        chosen.unwrap_or("none: no region can take calls")
    )?;
    Ok(())
}
