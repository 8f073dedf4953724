//! `meridian call`: one call from the shell, JSON in and out.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use clap::Args;
use meridian::wire::MethodKind;

use crate::common::{
    ms_f64, parse_duration, parse_metadata, request_value, to_json, CallOptions, CliError,
    CliResult, Target, TargetArgs, EXIT_CODES,
};

/// Flags of `call`.
#[derive(Args, Debug)]
#[command(after_help = format!("{CALL_HELP}\n\n{EXIT_CODES}"))]
pub struct CallArgs {
    /// The method to call.
    #[arg(value_name = "METHOD", required_unless_present = "describe")]
    pub method: Option<String>,
    /// The request as JSON: none is null, one is that value, several are a list of them;
    /// `@FILE` reads it from a file, `-` from stdin.
    #[arg(value_name = "JSON", allow_negative_numbers = true)]
    pub args: Vec<String>,
    /// List the methods the server(s) offer, from their HELLO, instead of calling.
    #[arg(long)]
    pub describe: bool,
    /// Give up on the call after this long (DEADLINE_EXCEEDED), e.g. 500ms, 2s.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Send metadata with the call (repeatable).
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_metadata)]
    pub metadata: Vec<(String, String)>,
    /// Route by this key: with --regions the call goes to the key's owner (rendezvous
    /// hashing); the key travels in the call's headers either way.
    #[arg(long, value_name = "KEY")]
    pub routing_key: Option<String>,
    /// Machine-readable output: one JSON value per line.
    #[arg(long)]
    pub json: bool,
    /// After a unary call, print on stderr where its time went: network and server, and
    /// each hop through a proxy (from the times reported in the call's trailers), and
    /// which server (and region) answered; one JSON object with --json.
    #[arg(long)]
    pub timing: bool,
    #[command(flatten)]
    pub target: TargetArgs,
}

const CALL_HELP: &str = "Examples:
  meridian call --connect 127.0.0.1:7000 --insecure-dev add 10 5
  meridian call --connect 127.0.0.1:7000 --insecure-dev echo '{\"a\": [1, 2.5, null]}'
  meridian call --regions regions.toml --ca ca.pem count 3        (one JSON line per message)
  meridian call --connect 127.0.0.1:7000 --insecure-dev --describe
  meridian call --connect 127.0.0.1:7400 --insecure-dev --timing add 1 2   (time per hop)

Unary and server-streaming methods can be called (the kind comes from the server's HELLO).
Requests and responses are Meridian Values: JSON objects are maps, integers are i64 (a
larger integer is refused: write it as a float, e.g. 1.8e19), numbers with a fraction or
exponent are floats; byte strings print as arrays of numbers.
A large request: `call ... echo @request.json`, or from stdin: `... | call ... echo -`.
On failure the status prints on stderr as `CODE: message` (exit code 1, or 5 when a TLS
handshake failed); with --json as {\"error\": {\"code\", \"message\", \"exit\"}}.";

fn print_json(v: &serde_json::Value, compact: bool) -> CliResult<()> {
    let text = if compact {
        v.to_string()
    } else {
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")?;
    Ok(())
}

/// `time: 1.234 ms = network 1.100 ms + server 0.134 ms`, or the four parts through a proxy.
fn timing_line(t: &meridian::CallTiming) -> String {
    let ms = |d: Option<Duration>| {
        d.map_or_else(
            || "?".into(),
            |d| format!("{:.3} ms", d.as_secs_f64() * 1e3),
        )
    };
    let total = ms(Some(t.total()));
    if t.proxied() {
        format!(
            "time: {total} = client<->proxy {} + proxy {} + proxy<->server {} + server {}",
            ms(t.client_proxy_network()),
            ms(t.proxy()),
            ms(t.proxy_server_network()),
            ms(t.server())
        )
    } else {
        format!(
            "time: {total} = network {} + server {}",
            ms(t.network()),
            ms(t.server())
        )
    }
}

/// `served by eu-1 in eu (127.0.0.1:7001)`.
fn served_by_text(by: &meridian::ServedBy) -> String {
    let id = if by.server_id().is_empty() {
        "?"
    } else {
        by.server_id()
    };
    format!("served by {id} in {} ({})", by.region(), by.addr())
}

/// The `--timing` figures as one JSON object, in milliseconds, with who answered.
fn timing_json(t: &meridian::CallTiming, by: Option<&meridian::ServedBy>) -> serde_json::Value {
    let ms = |d: Option<Duration>| d.map(crate::common::ms_f64);
    let mut v = serde_json::json!({
        "total_ms": ms_f64(t.total()),
        "server_ms": ms(t.server()),
    });
    if t.proxied() {
        v["client_proxy_ms"] = ms(t.client_proxy_network()).into();
        v["proxy_ms"] = ms(t.proxy()).into();
        v["proxy_server_ms"] = ms(t.proxy_server_network()).into();
    } else {
        v["network_ms"] = ms(t.network()).into();
    }
    if let Some(by) = by {
        v["served_by"] = serde_json::json!({
            "server_id": by.server_id(),
            "region": by.region(),
            "address": by.addr().to_string(),
        });
    }
    v
}

fn kind_name(k: MethodKind) -> &'static str {
    match k {
        MethodKind::Unary => "unary",
        MethodKind::ServerStreaming => "server-streaming",
        MethodKind::ClientStreaming => "client-streaming",
        MethodKind::Bidi => "bidi",
    }
}

async fn describe(target: &Target, json: bool, wait: Duration) -> CliResult<()> {
    let catalogs = target.catalogs(wait).await;
    if catalogs.is_empty() {
        return Err(CliError::other(
            "no server sent its HELLO (method catalog) in time",
        ));
    }
    // method -> (kind, idempotent, servers)
    let mut methods: BTreeMap<String, (MethodKind, bool, Vec<String>)> = BTreeMap::new();
    for (addr, hello) in &catalogs {
        for m in &hello.methods {
            methods
                .entry(m.name.clone())
                .or_insert((m.kind, m.idempotent, Vec::new()))
                .2
                .push(format!("{}@{} ({addr})", hello.server_id, hello.region));
        }
    }
    if json {
        let servers: Vec<serde_json::Value> = catalogs
            .iter()
            .map(|(addr, h)| {
                serde_json::json!({
                    "address": addr.to_string(),
                    "server_id": h.server_id,
                    "region": h.region,
                    "load": h.load,
                    "methods": h.methods.iter().map(|m| serde_json::json!({
                        "name": m.name,
                        "kind": kind_name(m.kind),
                        "idempotent": m.idempotent,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        return print_json(&serde_json::json!({ "servers": servers }), true);
    }
    let mut out = std::io::stdout().lock();
    for (addr, h) in &catalogs {
        writeln!(
            out,
            "server {} in region {} at {addr} (load {})",
            h.server_id, h.region, h.load
        )?;
    }
    writeln!(
        out,
        "{:<16} {:<17} {:<11} served by",
        "method", "kind", "idempotent"
    )?;
    for (name, (kind, idem, servers)) in &methods {
        writeln!(
            out,
            "{:<16} {:<17} {:<11} {}",
            name,
            kind_name(*kind),
            if *idem { "yes" } else { "no" },
            servers.join(", ")
        )?;
    }
    Ok(())
}

/// Runs `call`.
pub async fn run(args: CallArgs) -> CliResult<()> {
    // Check the input before connecting: a bad argument never costs a handshake.
    let request = request_value(&args.args)?;
    let target = args.target.connect(None).await?;
    let wait = args.target.connect_timeout.min(Duration::from_secs(1));
    if args.describe {
        return describe(&target, args.json, wait).await;
    }
    let method = args
        .method
        .as_deref()
        .ok_or_else(|| CliError::usage("give the METHOD to call"))?;
    let options = CallOptions {
        timeout: args.timeout,
        metadata: args.metadata.clone(),
        key: args.routing_key.clone(),
    };
    match target.method_kind(method, wait).await {
        Some(MethodKind::ServerStreaming) => {
            if args.timing {
                eprintln!("meridian: note: --timing covers unary calls only");
            }
            let mut stream = target
                .server_streaming(method, &options, &request)
                .await
                .map_err(|s| CliError::status(&s))?;
            loop {
                match stream.message().await {
                    Ok(Some(v)) => print_json(&to_json(&v), true)?,
                    Ok(None) => return Ok(()),
                    Err(s) => return Err(CliError::status(&s)),
                }
            }
        }
        Some(k @ (MethodKind::ClientStreaming | MethodKind::Bidi)) => {
            Err(CliError::usage(format!(
            "{method} is a {} method: `meridian call` makes unary and server-streaming calls only",
            kind_name(k)
        )))
        }
        // Unary, or not in any catalog: the server's answer decides (UNIMPLEMENTED if unknown).
        _ => {
            let r = target
                .unary_response(method, &options, &request)
                .await
                .map_err(|s| CliError::status(&s))?;
            print_json(&to_json(r.get_ref()), args.json)?;
            if args.timing {
                let line = if args.json {
                    timing_json(&r.timing(), r.served_by()).to_string()
                } else {
                    let mut line = timing_line(&r.timing());
                    if let Some(by) = r.served_by() {
                        line.push_str(&format!("; {}", served_by_text(by)));
                    }
                    line
                };
                let _ = writeln!(std::io::stderr().lock(), "{line}");
            }
            Ok(())
        }
    }
}
