//! `meridian-bench`: unary RPC latency and throughput of several transports,
//! with client and server in separate processes.
//!
//! ```text
//! meridian-bench run [--quick] [--kinds a,b,c] [--out FILE] [--no-pin]
//! meridian-bench serve KIND [--cpu N]
//! meridian-bench list
//! ```
//!
//! `run` is the driver: for each kind it starts `meridian-bench serve KIND`,
//! reads its `LISTEN <addr> <cert-der-hex>` line, measures from its own
//! single-threaded runtime, then kills the server. See [`kinds`] for how to
//! add a kind.

mod cost;
mod driver;
mod handshake;
mod kinds;
mod paired;
mod proxy_wan;
mod report;
mod scale;
mod sessions;
mod tls;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use kinds::{Kind, Ready};

/// Error type used throughout the benchmark.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result with [`BoxError`].
pub type Result<T, E = BoxError> = std::result::Result<T, E>;

const USAGE: &str = "\
usage:
  meridian-bench run [--quick] [--kinds a,b,c] [--out FILE] [--no-pin]
      measure each kind, each against its own server process, print a
      markdown table, and with --out write a markdown report to FILE;
      client and server are pinned to two different CPUs unless --no-pin
  meridian-bench serve KIND [--cpu N]
      serve KIND on 127.0.0.1 (any port), print `LISTEN <addr> <cert-der-hex>`,
      serve until stdin closes
  meridian-bench latency [--kinds quinn,meridian,tonic-tls] [--rounds 20] [--calls 1000]
                         [--no-pin] [--append FILE]
      the latency phase with every kind's server running at once and the kinds
      taking turns: ROUNDS rounds of CALLS sequential 64 B calls on each kind, so
      that the machine's drift falls on all kinds alike; prints p50, p99 and mean
      per kind and each p50 against every other
  meridian-bench sessions [--capacities 1024,4096,16384] [--reconnects 20000] [--append FILE]
      the server's TLS session store under 0-RTT reconnects (take one session, put
      the new tickets), Meridian's store against rustls's, on a full store
  meridian-bench connect [--rtts 50,120] [--runs 50] [--setups 200] [--methods M,..] [--append FILE]
      time connect-to-first-response over emulated WAN links (Meridian full
      handshake, Meridian 0-RTT, tonic over TCP + TLS), and CPU per connection
      setup on loopback; --methods picks the setups measured for CPU (fresh-socket,
      shared-socket, bare-quinn, tonic, bare-quinn-idle, shared-socket-tickets,
      0-rtt; all by default); with --append add the section to FILE
  meridian-bench proxy [--rtts 5,50] [--calls 200] [--append FILE]
      a call through the region proxy against the same call made directly, over
      emulated WAN links, with the per-hop breakdown; with --append add the section
      to FILE
  meridian-bench scale [--connections 2000] [--idle-calls 1000] [--burst 10000]
                       [--stream-limit 1024] [--append FILE]
      server memory per idle connection and per open idle call, many connections
      to one server, a burst of calls over the stream limit on one connection, and
      calls/s of a server with 1 and 2 worker threads against 2 load processes
  meridian-bench load KIND ADDR CERT_HEX MILLIS
      the throughput phase alone (64 calls in flight, BENCH_IN_FLIGHT=N to change) against a running
      `serve KIND`, on this thread; prints `CALLS n total`, the calls in
      MILLIS and in all, warm-up included (for profiling with
      `perf stat -p` / `perf record -p` on both processes)
  meridian-bench list
      print the known kinds";

fn main() -> ExitCode {
    tls::install_default_provider();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = match args.first().map(String::as_str) {
        Some("run") => run(&args[1..]),
        Some("serve") => serve(&args[1..]),
        Some("latency") => latency(&args[1..]),
        Some("sessions") => session_store(&args[1..]),
        Some("connect") => connect(&args[1..]),
        Some("proxy") => proxy(&args[1..]),
        Some("scale") => scale(&args[1..]),
        Some("scale-serve") => scale::serve(&args[1..]),
        Some("scale-load") => scale::load_process(&args[1..]),
        Some("load") => load(&args[1..]),
        Some("list") => {
            for kind in Kind::ALL {
                println!("{}", kind.name());
            }
            Ok(())
        }
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => Err(USAGE.into()),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meridian-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `udp,quinn` -> the kinds named, in that order (empty names skipped).
fn parse_kinds(list: &str) -> Result<Vec<Kind>> {
    list.split(',')
        .filter(|name| !name.is_empty())
        .map(parse_kind)
        .collect()
}

fn parse_kind(name: &str) -> Result<Kind> {
    Kind::parse(name).ok_or_else(|| {
        let known: Vec<_> = Kind::ALL.iter().map(|k| k.name()).collect();
        format!("unknown kind {name:?} (known: {})", known.join(", ")).into()
    })
}

/// `serve KIND [--cpu N]`: one server on a current-thread runtime.
fn serve(args: &[String]) -> Result<()> {
    let kind = match args {
        [name] => parse_kind(name)?,
        [name, flag, cpu] if flag == "--cpu" => {
            driver::pin_current_thread(cpu.parse()?)?;
            parse_kind(name)?
        }
        _ => return Err("usage: meridian-bench serve KIND [--cpu N]".into()),
    };
    let identity = tls::Identity::generate()?;

    // The driver asks for our allocation count with `ALLOCS` lines, and closes our stdin
    // (or kills us) when it is done.
    std::thread::spawn(|| {
        use std::io::{BufRead as _, Write as _};
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if line.trim() == "ALLOCS" {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "ALLOCS {}", cost::allocations());
                let _ = out.flush();
            }
        }
        std::process::exit(0);
    });

    let listen_line_cert = identity.cert_der.clone();
    let ready = Ready::new(move |bound: SocketAddr| {
        println!("{}", driver::listen_line(bound, &listen_line_cert));
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let addr: SocketAddr = "127.0.0.1:0".parse()?;
    tokio::task::LocalSet::new().block_on(&runtime, kind.serve(addr, &identity, ready))
}

/// `load KIND ADDR CERT_HEX MILLIS`: the throughput phase alone, against a server already
/// running, so a profiler can watch client and server over nothing else.
fn load(args: &[String]) -> Result<()> {
    let [kind, addr, cert, millis] = args else {
        return Err("usage: meridian-bench load KIND ADDR CERT_HEX MILLIS".into());
    };
    let kind = parse_kind(kind)?;
    let server = driver::parse_listen_line(&format!("LISTEN {addr} {cert}"))?;
    let time = Duration::from_millis(millis.parse()?);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (calls, total) =
        tokio::task::LocalSet::new().block_on(&runtime, kind.load(&server, time))?;
    println!("CALLS {calls} {total}");
    Ok(())
}

/// `latency [--kinds a,b] [--rounds N] [--calls N] [--no-pin] [--append FILE]`.
fn latency(args: &[String]) -> Result<()> {
    let mut kinds = vec![Kind::Quinn, Kind::Meridian, Kind::TonicTls];
    let mut rounds = paired::Rounds::default();
    let mut pin = true;
    let mut append = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--kinds" => kinds = parse_kinds(value()?)?,
            "--rounds" => rounds.rounds = value()?.parse()?,
            "--calls" => rounds.calls = value()?.parse()?,
            "--no-pin" => pin = false,
            "--append" => append = Some(value()?.clone()),
            other => return Err(format!("unknown option {other:?}\n{USAGE}").into()),
        }
    }
    let mut plan = driver::Plan::new(false);
    if pin {
        plan.pin = driver::Pin::first_two_cpus();
        if let Some(pin) = plan.pin {
            driver::pin_current_thread(pin.client)?;
        }
    }
    let measured = paired::run(&kinds, &plan, rounds)?;
    print_and_append(&paired::table(&measured, rounds), append.as_deref())
}

/// `sessions [--capacities a,b] [--reconnects N] [--append FILE]`.
fn session_store(args: &[String]) -> Result<()> {
    let mut capacities = vec![1024, 4096, 16384];
    let mut reconnects = 20_000;
    let mut append = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--capacities" => {
                capacities = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            "--reconnects" => reconnects = value()?.parse()?,
            "--append" => append = Some(value()?.clone()),
            other => return Err(format!("unknown option {other:?}\n{USAGE}").into()),
        }
    }
    // Each reconnect resumes the newest but one session: a store needs room for two.
    if capacities.iter().any(|&c| c < 2) || reconnects == 0 {
        return Err("sessions needs capacities of at least 2 and at least one reconnect".into());
    }
    print_and_append(&sessions::run(&capacities, reconnects), append.as_deref())
}

/// `50,120` -> 50 ms and 120 ms.
fn parse_rtts(list: &str) -> Result<Vec<Duration>> {
    Ok(list
        .split(',')
        .map(|ms| ms.parse().map(Duration::from_millis))
        .collect::<Result<_, _>>()?)
}

/// Prints a report section and, with `--append FILE`, adds it to FILE.
fn print_and_append(section: &str, append: Option<&str>) -> Result<()> {
    println!("{section}");
    if let Some(file) = append {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(file)?;
        writeln!(f, "\n{section}")?;
    }
    Ok(())
}

/// `connect [--rtts 50,120] [--runs 50] [--setups 200] [--methods M,..] [--append FILE]`.
fn connect(args: &[String]) -> Result<()> {
    let mut plan = handshake::ConnectPlan {
        rtts: vec![Duration::from_millis(50), Duration::from_millis(120)],
        runs: 50,
        setups: 200,
        methods: handshake::Setup::ALL.to_vec(),
    };
    let mut append = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--rtts" => plan.rtts = parse_rtts(value()?)?,
            "--runs" => plan.runs = value()?.parse()?,
            "--setups" => plan.setups = value()?.parse()?,
            "--methods" => plan.methods = handshake::Setup::parse_list(value()?)?,
            "--append" => append = Some(value()?.clone()),
            other => return Err(format!("unknown option {other:?}\n{USAGE}").into()),
        }
    }
    if plan.runs == 0 || plan.setups == 0 {
        return Err("--runs and --setups must be at least 1".into());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let section = tokio::task::LocalSet::new().block_on(&runtime, handshake::run(&plan))?;
    print_and_append(&section, append.as_deref())
}

/// `scale [--connections N] [--idle-calls N] [--burst N] [--stream-limit N] [--append FILE]`.
fn scale(args: &[String]) -> Result<()> {
    let mut plan = scale::ScalePlan::default();
    let mut append = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--connections" => plan.connections = value()?.parse()?,
            "--idle-calls" => plan.idle_calls = value()?.parse()?,
            "--burst" => plan.burst_calls = value()?.parse()?,
            "--stream-limit" => plan.stream_limit = value()?.parse()?,
            "--append" => append = Some(value()?.clone()),
            other => return Err(format!("unknown option {other:?}\n{USAGE}").into()),
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let section = tokio::task::LocalSet::new().block_on(&runtime, scale::run(&plan))?;
    print_and_append(&section, append.as_deref())
}

/// `proxy [--rtts 5,50] [--calls 200] [--append FILE]`.
fn proxy(args: &[String]) -> Result<()> {
    let mut plan = proxy_wan::ProxyPlan {
        rtts: vec![Duration::from_millis(5), Duration::from_millis(50)],
        calls: 200,
    };
    let mut append = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--rtts" => plan.rtts = parse_rtts(value()?)?,
            "--calls" => plan.calls = value()?.parse()?,
            "--append" => append = Some(value()?.clone()),
            other => return Err(format!("unknown option {other:?}\n{USAGE}").into()),
        }
    }
    if plan.calls == 0 {
        return Err("--calls must be at least 1".into());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let section = runtime.block_on(proxy_wan::run(&plan))?;
    print_and_append(&section, append.as_deref())
}

/// `run [--quick] [--kinds a,b,c] [--out FILE] [--no-pin]`: the driver.
fn run(args: &[String]) -> Result<()> {
    let mut quick = false;
    let mut pin = true;
    let mut kinds = Kind::ALL.to_vec();
    let mut out = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--no-pin" => pin = false,
            "--kinds" => {
                let list = args.next().ok_or("--kinds needs a list, e.g. udp,quinn")?;
                kinds = parse_kinds(list)?;
            }
            "--out" => out = Some(args.next().ok_or("--out needs a file name")?.clone()),
            other => return Err(format!("unknown option {other:?}\n{USAGE}").into()),
        }
    }

    let machine = report::machine();
    let mut plan = driver::Plan::new(quick);
    if pin {
        // Separate CPUs, chosen rather than left to the scheduler: on a small
        // VM, sharing one CPU or not changes latencies by 2-3x from run to run.
        plan.pin = driver::Pin::first_two_cpus();
        match plan.pin {
            Some(pin) => driver::pin_current_thread(pin.client)?,
            None => eprintln!("fewer than two CPUs: client and server not pinned"),
        }
    }
    eprintln!(
        "client and server in separate processes, {}",
        report::placement(&plan)
    );
    let mut results = Vec::with_capacity(kinds.len());
    for kind in kinds {
        eprint!("{:>10}: ", kind.name());
        let outcome = driver::run_kind(kind, &plan).map_err(|e| e.to_string());
        match &outcome {
            Ok(r) => eprintln!(
                "p50 {:.1} µs, {:.0} calls/s",
                r.latency.p50_us, r.calls_per_s
            ),
            Err(e) => eprintln!("failed: {e}"),
        }
        results.push((kind, outcome));
    }

    println!("{}", report::figures_table(&plan, &results));
    println!("{}", report::cost_table(&results));
    print!("{}", report::ratios_table(&plan, &results));
    if let Some(path) = out {
        std::fs::write(&path, report::markdown(&plan, &machine, &results))?;
        eprintln!("wrote {path}");
    }
    if results.iter().any(|(_, outcome)| outcome.is_err()) {
        return Err("some kinds failed".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_round_trip() {
        for kind in Kind::ALL {
            assert_eq!(parse_kind(kind.name()).unwrap(), kind);
        }
        assert!(parse_kind("smoke-signals").is_err());
    }

    #[test]
    fn kind_lists_keep_their_order_and_reject_unknown_names() {
        assert_eq!(
            parse_kinds("meridian,,quinn").unwrap(),
            [Kind::Meridian, Kind::Quinn]
        );
        assert!(parse_kinds("quinn,smoke-signals").is_err());
    }
}
