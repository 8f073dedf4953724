//! Markdown output: the table of figures, ratios against the baselines, and
//! the header describing the machine and the run.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::driver::{KindResults, Plan, SMALL_PAYLOAD};
use crate::kinds::Kind;

/// The outcome for one kind: figures, or why there are none.
pub type Outcome = std::result::Result<KindResults, String>;

/// Kinds that ratios are computed against, when they are part of the run.
const BASELINES: [Kind; 2] = [Kind::Quinn, Kind::TonicTls];

/// "64 KiB", "1 MiB", "64 B".
pub fn size_label(bytes: usize) -> String {
    if bytes >= 1 << 20 && bytes % (1 << 20) == 0 {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes % (1 << 10) == 0 {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} B")
    }
}

fn us(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The table of all figures.
pub fn figures_table(plan: &Plan, results: &[(Kind, Outcome)]) -> String {
    let mut header = format!(
        "| kind | {SMALL_PAYLOAD} B p50 µs | p99 µs | mean µs | calls/s ({} in flight) |",
        plan.in_flight
    );
    for phase in &plan.large {
        let size = size_label(phase.size);
        let _ = write!(header, " {size} p50 µs | {size} MB/s |");
    }
    let columns = 5 + 2 * plan.large.len();
    let mut out = header;
    out.push('\n');
    out.push('|');
    out.push_str(&" --- |".repeat(columns));
    out.push('\n');
    for (kind, outcome) in results {
        match outcome {
            Ok(r) => {
                let _ = write!(
                    out,
                    "| {} | {} | {} | {} | {} |",
                    kind.name(),
                    us(r.latency.p50_us),
                    us(r.latency.p99_us),
                    us(r.latency.mean_us),
                    thousands(r.calls_per_s)
                );
                for large in &r.large {
                    match (large.latency, large.mb_per_s()) {
                        (Some(l), Some(mbps)) => {
                            let _ = write!(out, " {} | {mbps:.0} |", us(l.p50_us));
                        }
                        _ => out.push_str(" n/a | n/a |"),
                    }
                }
            }
            Err(e) => {
                let _ = write!(out, "| {} | failed: {} |", kind.name(), e.replace('|', "/"));
                out.push_str(&" |".repeat(columns - 2));
            }
        }
        out.push('\n');
    }
    out
}

fn ratio(value: Option<f64>, baseline: Option<f64>) -> String {
    match (value, baseline) {
        (Some(v), Some(b)) if b > 0.0 => format!("{:.2}x", v / b),
        _ => "n/a".to_string(),
    }
}

/// What each call cost in the throughput phase, both sides: allocations (counted by the
/// binaries' global allocator) and CPU time (schedstat of the runtime threads).
pub fn cost_table(results: &[(Kind, Outcome)]) -> String {
    let mut out = String::from(
        "| kind | client allocs/call | server allocs/call | client CPU µs/call | server CPU µs/call | CPU µs/call, both |\n\
         | --- | --- | --- | --- | --- | --- |\n",
    );
    for (kind, outcome) in results {
        let Ok(r) = outcome else {
            continue;
        };
        let c = r.per_call;
        let _ = writeln!(
            out,
            "| {} | {:.1} | {:.1} | {:.2} | {:.2} | {:.2} |",
            kind.name(),
            c.client_allocs,
            c.server_allocs,
            c.client_cpu_us,
            c.server_cpu_us,
            c.client_cpu_us + c.server_cpu_us
        );
    }
    out
}

/// Ratios of every kind against each baseline present in `results`:
/// p50 latency (lower is better), calls/s and large-payload MB/s (higher is
/// better). Empty when no baseline ran.
pub fn ratios_table(plan: &Plan, results: &[(Kind, Outcome)]) -> String {
    let find = |wanted: Kind| {
        results
            .iter()
            .find(|(kind, _)| *kind == wanted)
            .and_then(|(_, outcome)| outcome.as_ref().ok())
    };
    let mut out = String::new();
    for baseline in BASELINES {
        let Some(base) = find(baseline) else {
            continue;
        };
        let _ = write!(
            out,
            "\nAgainst {} (p50: lower is better; calls/s and MB/s: higher is better):\n\n\
             | kind | p50 | calls/s |",
            baseline.name()
        );
        for phase in &plan.large {
            let _ = write!(out, " {} MB/s |", size_label(phase.size));
        }
        out.push_str("\n|");
        out.push_str(&" --- |".repeat(3 + plan.large.len()));
        out.push('\n');
        for (kind, outcome) in results {
            let Ok(r) = outcome else {
                continue;
            };
            let _ = write!(
                out,
                "| {} | {} | {} |",
                kind.name(),
                ratio(Some(r.latency.p50_us), Some(base.latency.p50_us)),
                ratio(Some(r.calls_per_s), Some(base.calls_per_s))
            );
            for (mine, theirs) in r.large.iter().zip(&base.large) {
                let _ = write!(out, " {} |", ratio(mine.mb_per_s(), theirs.mb_per_s()));
            }
            out.push('\n');
        }
    }
    if let (Some(direct), Some(proxied), Some(udp)) = (
        find(Kind::Meridian),
        find(Kind::MeridianProxy),
        find(Kind::Udp),
    ) {
        let added = proxied.latency.p50_us - direct.latency.p50_us;
        let budget = udp.latency.p50_us + 30.0;
        let _ = write!(
            out,
            "\nProxy hop: meridian-proxy p50 {:.1} µs - meridian p50 {:.1} µs = {:.1} µs added; \
             goal at most one loopback round trip (udp p50 {:.1} µs) + 30 µs = {:.1} µs: {}.\n",
            proxied.latency.p50_us,
            direct.latency.p50_us,
            added,
            udp.latency.p50_us,
            budget,
            if added <= budget { "met" } else { "missed" }
        );
    }
    out
}

/// Facts about the machine: `nproc`, CPU model, kernel. Call it before
/// pinning: `nproc` counts the CPUs this process may use.
pub fn machine() -> String {
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, model)| model.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string());
    format!("nproc {nproc}, CPU {cpu}, Linux {kernel}")
}

/// The current time in UTC, as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Days since 1970-01-01 to a civil date (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

/// The command line this process was started with, shell-quoted where needed.
pub fn command_line() -> String {
    std::env::args()
        .map(|arg| {
            if arg.is_empty() || arg.contains(|c: char| c.is_whitespace() || c == '\'') {
                format!("'{}'", arg.replace('\'', r"'\''"))
            } else {
                arg
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// How the phases were run, for the report.
pub fn method(plan: &Plan) -> String {
    let mut out = format!(
        "- latency: {} warm-up then {} sequential unary calls, {SMALL_PAYLOAD} B payload echoed;\n\
         - throughput: {} calls in flight ({} tasks spawned with `JoinSet::spawn_local` on the \
         client's current-thread runtime, each looping sequential calls over one shared client), \
         {:.1} s warm-up then completed calls counted over {:.1} s;\n",
        plan.warmup_calls,
        plan.latency_calls,
        plan.in_flight,
        plan.in_flight,
        plan.throughput_warmup.as_secs_f64(),
        plan.throughput_time.as_secs_f64()
    );
    for phase in &plan.large {
        let _ = writeln!(
            out,
            "- {}: {} warm-up then {} sequential echoes; MB/s = payload bytes x calls / time in \
             calls (10^6 bytes, each payload counted once);",
            size_label(phase.size),
            phase.warmup_calls,
            phase.calls
        );
    }
    out.push_str(
        "- udp cannot carry payloads over 65,507 bytes in one datagram: \"n/a\" there;\n\
         - TLS kinds: TLS 1.3, rustls with ring, TLS13_AES_128_GCM_SHA256 preferred, self-signed \
         certificate trusted through a root store; quinn and tonic use 4 MiB stream and 16 MiB \
         connection flow-control windows.\n",
    );
    out
}

/// Where the two processes ran.
pub fn placement(plan: &Plan) -> String {
    match plan.pin {
        Some(pin) => format!(
            "client pinned to CPU {}, server to CPU {}",
            pin.client, pin.server
        ),
        None => "not pinned (placement left to the scheduler)".to_string(),
    }
}

/// The whole markdown report; `machine` is what [`machine`] said before the
/// driver pinned itself.
pub fn markdown(plan: &Plan, machine: &str, results: &[(Kind, Outcome)]) -> String {
    format!(
        "# Meridian benchmark results\n\n\
         - command: `{}`\n\
         - date: {}\n\
         - machine: {}\n\
         - layout: client and server in separate processes, each a single-threaded tokio \
         runtime; loopback (127.0.0.1); {}\n\n\
         ## Method\n\n{}\n\
         ## Figures\n\n{}\n\
         ## Cost per call (throughput phase)\n\n{}\n\
         ## Ratios (same run)\n{}",
        command_line(),
        utc_now(),
        machine,
        placement(plan),
        method(plan),
        figures_table(plan, results),
        cost_table(results),
        ratios_table(plan, results)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_numbers() {
        assert_eq!(size_label(64), "64 B");
        assert_eq!(size_label(64 << 10), "64 KiB");
        assert_eq!(size_label(1 << 20), "1 MiB");
        assert_eq!(thousands(381_234.4), "381,234");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(us(56.04), "56.0");
        assert_eq!(us(101.4), "101");
    }

    #[test]
    fn date_format() {
        let now = utc_now();
        assert_eq!(now.len(), "2025-01-01 00:00:00 UTC".len());
        assert!(now.starts_with("20"));
    }
}
