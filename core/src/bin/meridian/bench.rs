//! `meridian bench`: a load generator with a ghz-style report.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use meridian::wire::MethodKind;
use meridian::{Status, Value};

use crate::common::{
    ms, ms_f64, parse_duration, parse_metadata, request_value, shutdown_signal, CallOptions,
    CliError, CliResult, Exit, Target, TargetArgs, EXIT_CODES,
};

/// Flags of `bench`.
#[derive(Args, Debug)]
#[command(after_help = format!("{BENCH_HELP}\n\n{EXIT_CODES}"))]
pub struct BenchArgs {
    /// The method to call (unary or server-streaming).
    #[arg(value_name = "METHOD")]
    pub method: String,
    /// The request as JSON, as for `meridian call`.
    #[arg(value_name = "JSON", allow_negative_numbers = true)]
    pub args: Vec<String>,
    /// Calls in flight at once.
    #[arg(long, short = 'c', value_name = "N", default_value_t = 10)]
    pub concurrency: u32,
    /// Total calls to make (default 1000 unless --duration is given).
    #[arg(long, short = 'n', value_name = "N", conflicts_with = "duration")]
    pub calls: Option<u64>,
    /// Keep calling for this long instead of a number of calls (e.g. 10s).
    #[arg(long, short = 'z', value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// At most this many calls per second in total (0: as fast as possible).
    #[arg(long, value_name = "PER_SECOND", default_value_t = 0.0)]
    pub rate: f64,
    /// Deadline of each call.
    #[arg(long, value_name = "DURATION", default_value = "20s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Send metadata with every call (repeatable).
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_metadata)]
    pub metadata: Vec<(String, String)>,
    /// Machine-readable report: one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub target: TargetArgs,
}

const BENCH_HELP: &str = "\
Runs --concurrency workers that call METHOD until --calls calls were made or --duration
passed (Ctrl-C stops early and still reports), optionally capped at --rate calls per second.
A progress bar shows on stderr when it is a terminal. The report gives a latency
histogram, p50/p90/p99/p99.9, throughput and the count of each status code, and for
--regions/--etcd the calls and p50/p99 of each region and server. Exit code 1 when any
call failed.

Examples:
  meridian bench --connect 127.0.0.1:7000 --insecure-dev add 1 2 -c 20 -n 100000
  meridian bench --regions regions.toml --ca ca.pem echo '\"hi\"' --duration 30s --rate 500";

/// What the workers share.
struct Shared {
    next: AtomicU64,
    done: AtomicU64,
    failed: AtomicU64,
    stop: AtomicBool,
    latencies: Mutex<Vec<Duration>>,
    codes: Mutex<BTreeMap<&'static str, u64>>,
    first_error: Mutex<Option<Status>>,
    /// Latencies of the answered unary calls by who answered.
    by_server: Mutex<BTreeMap<Answerer, Vec<Duration>>>,
}

/// Who answered a call: region, server id, address.
type Answerer = (String, String, String);

/// The end of the run: a number of calls, or a moment.
#[derive(Clone, Copy)]
enum Limit {
    Calls(u64),
    Until(Instant),
}

async fn one_call(
    target: &Target,
    method: &str,
    streaming: bool,
    options: &CallOptions,
    request: &Value,
) -> Result<Option<Answerer>, Status> {
    if streaming {
        let mut s = target.server_streaming(method, options, request).await?;
        while s.message().await?.is_some() {}
        Ok(None)
    } else {
        let r = target.unary_response(method, options, request).await?;
        Ok(r.served_by().map(|by| {
            (
                by.region().to_string(),
                by.server_id().to_string(),
                by.addr().to_string(),
            )
        }))
    }
}

#[allow(clippy::too_many_arguments)]
async fn worker(
    target: Target,
    method: Arc<str>,
    streaming: bool,
    options: Arc<CallOptions>,
    request: Arc<Value>,
    shared: Arc<Shared>,
    limit: Limit,
    start: Instant,
    rate: f64,
) {
    let mut latencies = Vec::new();
    let mut by_server: BTreeMap<Answerer, Vec<Duration>> = BTreeMap::new();
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        let i = shared.next.fetch_add(1, Ordering::Relaxed);
        match limit {
            Limit::Calls(n) if i >= n => break,
            Limit::Until(t) if Instant::now() >= t => break,
            _ => {}
        }
        if rate > 0.0 {
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            if let Limit::Until(t) = limit {
                if due >= t {
                    break;
                }
            }
            tokio::time::sleep_until(due.into()).await;
        }
        let t0 = Instant::now();
        let result = one_call(&target, &method, streaming, &options, &request).await;
        let took = t0.elapsed();
        latencies.push(took);
        let name = match &result {
            Ok(answerer) => {
                if let Some(a) = answerer {
                    by_server.entry(a.clone()).or_default().push(took);
                }
                "OK"
            }
            Err(s) => s.code().name(),
        };
        if let Err(s) = result {
            shared.failed.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut first) = shared.first_error.lock() {
                first.get_or_insert(s);
            }
        }
        if let Ok(mut codes) = shared.codes.lock() {
            *codes.entry(name).or_default() += 1;
        }
        shared.done.fetch_add(1, Ordering::Relaxed);
    }
    if let Ok(mut all) = shared.latencies.lock() {
        all.extend(latencies);
    }
    if let Ok(mut all) = shared.by_server.lock() {
        for (who, mut l) in by_server {
            all.entry(who).or_default().append(&mut l);
        }
    }
}

fn progress_line(
    done: u64,
    failed: u64,
    limit: Limit,
    start: Instant,
    end_hint: Duration,
) -> String {
    const WIDTH: usize = 30;
    let elapsed = start.elapsed();
    let fraction = match limit {
        Limit::Calls(n) if n > 0 => done as f64 / n as f64,
        Limit::Calls(_) => 1.0,
        Limit::Until(_) => elapsed.as_secs_f64() / end_hint.as_secs_f64().max(1e-9),
    }
    .clamp(0.0, 1.0);
    let filled = (fraction * WIDTH as f64).round() as usize;
    let rate = done as f64 / elapsed.as_secs_f64().max(1e-9);
    let count = match limit {
        Limit::Calls(n) => format!("{done}/{n} calls"),
        Limit::Until(_) => format!(
            "{done} calls, {:.0}/{:.0} s",
            elapsed.as_secs_f64(),
            end_hint.as_secs_f64()
        ),
    };
    format!(
        "\r[{}{}] {:>3.0}%  {count}  {rate:.0}/s  errors {failed}   ",
        "#".repeat(filled),
        ".".repeat(WIDTH - filled),
        fraction * 100.0
    )
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Ten equal-width buckets from the fastest to the slowest call, as ghz prints.
fn histogram(sorted: &[Duration]) -> Vec<(Duration, u64)> {
    let (Some(first), Some(last)) = (sorted.first(), sorted.last()) else {
        return Vec::new();
    };
    let (lo, hi) = (first.as_secs_f64(), last.as_secs_f64());
    let step = (hi - lo) / 10.0;
    let mut buckets: Vec<(Duration, u64)> = (1..=10)
        .map(|i| (Duration::from_secs_f64(lo + step * i as f64), 0))
        .collect();
    for d in sorted {
        let i = if step > 0.0 {
            (((d.as_secs_f64() - lo) / step).ceil() as usize).clamp(1, 10) - 1
        } else {
            9
        };
        buckets[i].1 += 1;
    }
    // Start at the fastest call: an all-equal run has everything in one bucket.
    if let Some(b) = buckets.first_mut() {
        if step == 0.0 {
            b.0 = *first;
        }
    }
    buckets.retain(|b| step > 0.0 || b.1 > 0);
    buckets
}

/// Runs `bench`.
pub async fn run(args: BenchArgs) -> CliResult<()> {
    let request = Arc::new(request_value(&args.args)?);
    if args.concurrency == 0 {
        return Err(CliError::usage("--concurrency must be at least 1"));
    }
    if !args.rate.is_finite() || args.rate < 0.0 {
        return Err(CliError::usage(
            "--rate must be a number of calls per second, 0 or more",
        ));
    }
    let target = args.target.connect(None).await?;
    let wait = args.target.connect_timeout.min(Duration::from_secs(1));
    let streaming = match target.method_kind(&args.method, wait).await {
        Some(MethodKind::ServerStreaming) => true,
        Some(MethodKind::ClientStreaming | MethodKind::Bidi) => {
            return Err(CliError::usage(format!(
                "{} is a client-streaming or bidirectional method: bench makes unary and server-streaming calls only",
                args.method
            )))
        }
        _ => false,
    };
    let start = Instant::now();
    let (limit, end_hint) = match (args.calls, args.duration) {
        (_, Some(d)) => (Limit::Until(start + d), d),
        (Some(n), None) => (Limit::Calls(n), Duration::ZERO),
        (None, None) => (Limit::Calls(1000), Duration::ZERO),
    };
    let shared = Arc::new(Shared {
        next: AtomicU64::new(0),
        done: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        latencies: Mutex::new(Vec::new()),
        codes: Mutex::new(BTreeMap::new()),
        first_error: Mutex::new(None),
        by_server: Mutex::new(BTreeMap::new()),
    });
    let options = Arc::new(CallOptions {
        timeout: Some(args.timeout),
        metadata: args.metadata.clone(),
        key: None,
    });
    let method: Arc<str> = Arc::from(args.method.as_str());
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        workers.spawn(worker(
            target.clone(),
            method.clone(),
            streaming,
            options.clone(),
            request.clone(),
            shared.clone(),
            limit,
            start,
            args.rate,
        ));
    }
    let show_progress = std::io::stderr().is_terminal();
    let stop = shutdown_signal();
    tokio::pin!(stop);
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    let mut interrupted = false;
    loop {
        tokio::select! {
            joined = workers.join_next() => {
                if joined.is_none() {
                    break;
                }
            }
            _ = ticker.tick() => {
                if show_progress {
                    let line = progress_line(
                        shared.done.load(Ordering::Relaxed),
                        shared.failed.load(Ordering::Relaxed),
                        limit,
                        start,
                        end_hint,
                    );
                    let mut err = std::io::stderr().lock();
                    let _ = write!(err, "{line}");
                    let _ = err.flush();
                }
            }
            _ = &mut stop, if !interrupted => {
                interrupted = true;
                shared.stop.store(true, Ordering::Relaxed);
            }
        }
    }
    let total = start.elapsed();
    if show_progress {
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r{}\r", " ".repeat(90));
        let _ = err.flush();
    }
    let mut latencies = shared
        .latencies
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default();
    latencies.sort_unstable();
    let codes = shared.codes.lock().map(|c| c.clone()).unwrap_or_default();
    let failed = shared.failed.load(Ordering::Relaxed);
    let first_error = shared.first_error.lock().ok().and_then(|e| e.clone());
    // Per region and server: routed runs only (a direct run has one server).
    let mut by_server = match &target {
        Target::Routed(..) => shared
            .by_server
            .lock()
            .map(|b| b.clone())
            .unwrap_or_default(),
        Target::Direct(_) => BTreeMap::new(),
    };
    for l in by_server.values_mut() {
        l.sort_unstable();
    }
    report(&args, &latencies, &codes, &by_server, total, interrupted)?;
    if failed > 0 {
        let detail = first_error
            .map(|s| format!("; first: {}", crate::common::status_line(&s)))
            .unwrap_or_default();
        return Err(CliError::new(
            Exit::Status,
            format!("{failed} of {} calls failed{detail}", latencies.len()),
        ));
    }
    Ok(())
}

fn report(
    args: &BenchArgs,
    sorted: &[Duration],
    codes: &BTreeMap<&'static str, u64>,
    by_server: &BTreeMap<Answerer, Vec<Duration>>,
    total: Duration,
    interrupted: bool,
) -> CliResult<()> {
    let count = sorted.len() as u64;
    let throughput = count as f64 / total.as_secs_f64().max(1e-9);
    let sum: Duration = sorted.iter().sum();
    let average = if count > 0 {
        sum / count as u32
    } else {
        Duration::ZERO
    };
    let fastest = sorted.first().copied().unwrap_or_default();
    let slowest = sorted.last().copied().unwrap_or_default();
    let pcts = [50.0, 90.0, 99.0, 99.9];
    let hist = histogram(sorted);
    let mut out = std::io::stdout().lock();
    if args.json {
        let line = serde_json::json!({
            "method": args.method,
            "count": count,
            "total_s": total.as_secs_f64(),
            "throughput_per_s": throughput,
            "concurrency": args.concurrency,
            "interrupted": interrupted,
            "latency_ms": {
                "fastest": ms_f64(fastest),
                "slowest": ms_f64(slowest),
                "average": ms_f64(average),
                "p50": ms_f64(percentile(sorted, 50.0)),
                "p90": ms_f64(percentile(sorted, 90.0)),
                "p99": ms_f64(percentile(sorted, 99.0)),
                "p99.9": ms_f64(percentile(sorted, 99.9)),
            },
            "histogram": hist.iter().map(|(upper, n)| serde_json::json!({
                "upper_ms": ms_f64(*upper), "count": n,
            })).collect::<Vec<_>>(),
            "status_codes": codes,
            "by_server": by_server.iter().map(|((region, id, addr), l)| serde_json::json!({
                "region": region,
                "server_id": id,
                "address": addr,
                "count": l.len(),
                "p50_ms": ms_f64(percentile(l, 50.0)),
                "p99_ms": ms_f64(percentile(l, 99.0)),
            })).collect::<Vec<_>>(),
        });
        writeln!(out, "{line}")?;
        return Ok(());
    }
    writeln!(out, "Summary:")?;
    writeln!(out, "  Method:       {}", args.method)?;
    writeln!(
        out,
        "  Count:        {count}{}",
        if interrupted { " (interrupted)" } else { "" }
    )?;
    writeln!(out, "  Concurrency:  {}", args.concurrency)?;
    writeln!(out, "  Total:        {:.3} s", total.as_secs_f64())?;
    writeln!(out, "  Slowest:      {}", ms(slowest))?;
    writeln!(out, "  Fastest:      {}", ms(fastest))?;
    writeln!(out, "  Average:      {}", ms(average))?;
    writeln!(out, "  Calls/sec:    {throughput:.2}")?;
    writeln!(out)?;
    writeln!(out, "Latency histogram:")?;
    let max = hist.iter().map(|b| b.1).max().unwrap_or(0).max(1);
    for (upper, n) in &hist {
        let bar = "∎".repeat(((*n as f64 / max as f64) * 40.0).round() as usize);
        writeln!(out, "  {:>12} [{n:>7}] |{bar}", ms(*upper))?;
    }
    writeln!(out)?;
    writeln!(out, "Latency distribution:")?;
    for p in pcts {
        writeln!(out, "  p{:<5} {}", p, ms(percentile(sorted, p)))?;
    }
    writeln!(out)?;
    writeln!(out, "Status code distribution:")?;
    for (code, n) in codes {
        writeln!(out, "  [{code}] {n} calls")?;
    }
    if !by_server.is_empty() {
        writeln!(out)?;
        writeln!(out, "By region and server (answered unary calls):")?;
        writeln!(
            out,
            "  {:<12} {:<16} {:<22} {:>8} {:>12} {:>12}",
            "region", "server", "address", "calls", "p50", "p99"
        )?;
        for ((region, id, addr), l) in by_server {
            writeln!(
                out,
                "  {region:<12} {id:<16} {addr:<22} {:>8} {:>12} {:>12}",
                l.len(),
                ms(percentile(l, 50.0)),
                ms(percentile(l, 99.0))
            )?;
        }
    }
    Ok(())
}
