//! `meridian`: the command-line tool of Meridian (feature `cli`).
//!
//! `serve` starts a server with demo methods, `call` calls a method with JSON in and out,
//! `probe` shows the RTT to every region and server, `bench` load-tests a method, `demo`
//! runs the multi-region demo and `proxy` runs the region proxy. Every failure is one line
//! on stderr and a documented exit code (see `meridian --help`).

mod bench;
mod call;
mod common;
mod probe;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use common::{CliError, CliResult, EXIT_CODES, EXIT_CODES_FULL};

/// Meridian: RPC over QUIC with multi-region routing.
#[derive(Parser, Debug)]
#[command(name = "meridian", version, after_help = format!("{MAIN_HELP}\n\n{EXIT_CODES_FULL}"))]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines (on stderr) as text or JSON objects. RUST_LOG filters them (default:
    /// info for serve and proxy, error for the other commands).
    #[arg(long, global = true, value_name = "FORMAT", default_value = "text")]
    log_format: common::LogFormat,
}

const MAIN_HELP: &str = "\
Flags common to the commands that talk to servers:
  --connect ADDR      one server, directly          --regions FILE   a TOML region file
  --ca FILE           trust this CA (PEM)            --cert/--key     client certificate (mTLS)
  --insecure-dev      local testing only: trust the dev CA of `serve --insecure-dev`
  --connect-timeout   give up connecting (default 3s) --json          machine-readable output

Try: meridian serve --insecure-dev --listen 127.0.0.1:7000 &
     meridian call --connect 127.0.0.1:7000 --insecure-dev add 10 5";

#[derive(Subcommand, Debug)]
enum Command {
    /// Start a server with built-in demo methods (echo, add, count, sleep, where).
    Serve(serve::ServeArgs),
    /// Call a method, directly or through region routing; JSON in, JSON out.
    Call(call::CallArgs),
    /// Measure the RTT to every region and server of a region file.
    Probe(probe::ProbeArgs),
    /// Load-test a method: latency histogram, percentiles, throughput, status codes.
    Bench(bench::BenchArgs),
    /// Run the region proxy from a TOML configuration file.
    Proxy(ProxyArgs),
    /// Run the multi-region demo: 3 local regions behind emulated WAN links.
    Demo(DemoArgs),
}

/// Flags of `proxy`.
#[derive(Args, Debug)]
#[command(after_help = format!("{PROXY_HELP}\n\n{EXIT_CODES}"))]
struct ProxyArgs {
    /// The proxy's TOML configuration file (format below).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// How long calls in flight may take to finish on Ctrl-C or SIGTERM.
    #[arg(long, default_value = "5s", value_parser = common::parse_duration)]
    grace: std::time::Duration,
    /// Print the start-up lines as one JSON object.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    ops: common::OpsArgs,
}

const PROXY_HELP: &str = "\
Configuration (relative file names are read from the file's directory):
  listen = \"127.0.0.1:7400\"
  proxy_region = \"edge\"         # announced in the proxy's HELLO
  home_region = \"eu\"            # optional: preferred upstream region
  hedge = [\"get\"]               # optional: idempotent methods to hedge
  access_log = true             # optional: one log line per forwarded call
  [tls]
  cert = \"proxy.pem\"            # shown to clients
  key = \"proxy.key\"
  ca = \"ca.pem\"                 # roots for upstream servers' certificates
  client_ca = \"clients.pem\"     # optional: serve only callers with certificates from these
  upstream_cert = \"up.pem\"      # optional: the certificate shown to upstream servers
  upstream_key = \"up.key\"       #   requiring client certificates (mutual TLS)
  [[region]]
  name = \"eu\"
  servers = [{ addr = \"127.0.0.1:7000\", server_name = \"localhost\" }]

  [etcd]                        # optional: upstream servers registered in etcd
  endpoints = [\"http://127.0.0.1:2379\"]

Prints `address: ADDR`, then forwards calls until Ctrl-C or SIGTERM; SIGHUP rereads
cert and key (new handshakes present them).";

/// Flags of `demo`.
#[derive(Args, Debug)]
#[command(after_help = EXIT_CODES)]
struct DemoArgs {
    /// A 4-second run without the recovery part (the full demo takes about 16 s).
    #[arg(long)]
    quick: bool,
}

/// `meridian proxy --config FILE`: the region proxy until Ctrl-C or SIGTERM.
async fn proxy(args: ProxyArgs) -> CliResult<()> {
    let mut config = meridian::proxy::ProxyConfig::from_toml_file(&args.config)
        .map_err(|e| CliError::from_meridian(&e))?;
    config.access_log |= args.ops.access_log;
    let tls_files = config.tls.clone();
    let regions: Vec<String> = config.regions.iter().map(|r| r.name.clone()).collect();
    let region = config.proxy_region.clone();
    let proxy = meridian::proxy::Proxy::from_config(config)
        .await
        .map_err(|e| CliError::from_meridian(&e))?;
    let server_tls = proxy.server_tls().clone();
    let upstream_tls = proxy.upstream().tls().cloned();
    common::reload_on_sighup(tls_files.cert.display().to_string(), move || {
        tls_files.reload(&server_tls, upstream_tls.as_ref())
    });
    let endpoint = args.ops.start_metrics(vec![proxy.metrics_source()]).await?;
    let metrics_addr = endpoint.as_ref().map(|e| e.local_addr().to_string());
    let text = if args.json {
        serde_json::json!({
            "address": proxy.local_addr().to_string(),
            "region": region,
            "upstream_regions": regions,
            "metrics": metrics_addr,
        })
        .to_string()
    } else {
        let mut text = format!(
            "address: {}\nregion: {region}\nupstream regions: {}",
            proxy.local_addr(),
            regions.join(", ")
        );
        if let Some(m) = &metrics_addr {
            text.push_str(&format!("\nmetrics: {m}"));
        }
        text
    };
    {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{text}").and_then(|()| out.flush());
    }
    common::shutdown_signal().await;
    let stats = proxy.stats();
    eprintln!(
        "shutting down: {} calls forwarded, {} failed",
        stats.calls, stats.failed
    );
    proxy.shutdown(args.grace).await;
    drop(endpoint);
    Ok(())
}

async fn demo(args: DemoArgs) -> CliResult<()> {
    let options = meridian::testing::demo::DemoOptions { quick: args.quick };
    let mut out = std::io::stdout().lock();
    meridian::testing::demo::run(&mut out, &options)
        .await
        .map_err(|e| CliError::other(format!("demo failed: {e}")))
}

impl Command {
    /// Whether `--json` was given: errors are then printed as JSON too.
    fn json(&self) -> bool {
        match self {
            Command::Serve(a) => a.json,
            Command::Call(a) => a.json,
            Command::Probe(a) => a.json,
            Command::Bench(a) => a.json,
            Command::Proxy(a) => a.json,
            Command::Demo(_) => false,
        }
    }
}

async fn dispatch(command: Command) -> CliResult<()> {
    match command {
        Command::Serve(a) => serve::run(a).await,
        Command::Call(a) => call::run(a).await,
        Command::Probe(a) => probe::run(a).await,
        Command::Bench(a) => bench::run(a).await,
        Command::Proxy(a) => proxy(a).await,
        Command::Demo(a) => demo(a).await,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Serve(_) | Command::Proxy(_) => "info",
        // One-shot commands print their own error; library warnings would repeat it.
        _ => "error",
    };
    let otlp = match &cli.command {
        Command::Serve(a) => a.ops.otlp.as_deref().map(|u| (u, "meridian-serve")),
        Command::Proxy(a) => a.ops.otlp.as_deref().map(|u| (u, "meridian-proxy")),
        _ => None,
    };
    if let Err(e) = common::init_logging(cli.log_format, default_level, otlp) {
        eprintln!("meridian: error: {e}");
        return ExitCode::from(e.exit as u8);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("meridian: error: cannot start the async runtime: {e}");
            return ExitCode::from(common::Exit::Other as u8);
        }
    };
    let json_errors = cli.command.json();
    let result = runtime.block_on(dispatch(cli.command));
    // Background tasks (connections, timers) must not keep the process alive.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            e.print(json_errors);
            ExitCode::from(e.exit as u8)
        }
    }
}
