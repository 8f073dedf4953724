//! `meridian serve`: a server with built-in demo methods.

use std::io::Write;
use std::net::SocketAddr;

use meridian::region::ServerAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use meridian::{CallContext, Identity, Method, ResponseSink, Server, ServerTls, Status, Value};

#[cfg(feature = "etcd")]
use meridian::region::{EtcdConfig, ServerRecord};

use crate::common::{
    dev_dir, fingerprint, parse_duration, shutdown_signal, CliError, CliResult,
    ETCD_DEFAULT_PREFIX, EXIT_CODES,
};

/// Flags of `serve`.
#[derive(Args, Debug)]
#[command(after_help = format!("{SERVE_HELP}\n\n{EXIT_CODES}"))]
pub struct ServeArgs {
    /// The region this server announces in its HELLO.
    #[arg(long, value_name = "NAME", default_value = "local")]
    pub region: String,
    /// The UDP address to listen on, HOST:PORT: an IP literal or a host name (resolved
    /// once, at start: the first of its addresses that can be bound). Port 0 picks a free
    /// port.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0", value_parser = parse_server_addr)]
    pub listen: ServerAddr,
    /// The server id announced in the HELLO (default: the bound address).
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
    /// The server's PEM certificate chain (needs --key).
    #[arg(
        long,
        value_name = "FILE",
        requires = "key",
        conflicts_with = "insecure_dev"
    )]
    pub cert: Option<PathBuf>,
    /// The private key (PEM) of --cert. Both files are read again on SIGHUP: new
    /// handshakes present the new certificate, open connections stay.
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Require client certificates issued by the CAs in this PEM file (mutual TLS).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// FOR LOCAL TESTING ONLY: present the shared dev certificate of the dev directory
    /// (made on first use; valid for localhost, 127.0.0.1 and ::1), which `--insecure-dev`
    /// clients trust.
    #[arg(long)]
    pub insecure_dev: bool,
    /// The dev directory of --insecure-dev.
    #[arg(long, value_name = "DIR", env = "MERIDIAN_DEV_DIR")]
    pub dev_dir: Option<PathBuf>,
    /// On Ctrl-C or SIGTERM, let calls in flight finish for up to this long.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub grace: Duration,
    /// Print the start-up lines as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Register in etcd at these client URLs (comma-separated or repeated), under a lease
    /// kept alive while the server runs, so `--etcd` clients and proxies find it. If etcd
    /// cannot be reached at start, the server serves anyway and keeps trying (a warning on
    /// stderr for each attempt).
    #[arg(long = "etcd", value_name = "URL", value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// The etcd key prefix to register under.
    #[arg(long, value_name = "PREFIX", default_value = ETCD_DEFAULT_PREFIX)]
    pub etcd_prefix: String,
    /// The etcd lease TTL: how long the registration outlives a server that died.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub etcd_ttl: Duration,
    /// With --etcd: the address clients should dial, HOST:PORT (an IP literal, or a host
    /// name clients resolve when they dial; default: the bound address).
    #[arg(long, value_name = "ADDR", value_parser = parse_server_addr)]
    pub advertise: Option<ServerAddr>,
    /// With --etcd: the name clients check the certificate against (default: the host of
    /// the advertised address, a DNS name or an IP address).
    #[arg(long, value_name = "NAME")]
    pub server_name: Option<String>,
    #[command(flatten)]
    pub ops: crate::common::OpsArgs,
}

const SERVE_HELP: &str = "\
Methods (all take and return JSON-like Values; see `meridian call`):
  echo VALUE        returns VALUE (idempotent)
  add [A, B]        returns A + B; OUT_OF_RANGE on overflow (idempotent)
  count N           server streaming: N messages 1..=N; [N, MS] waits MS ms between them
  sleep MS          waits MS milliseconds (at most 1 h), returns MS; honours deadlines
  where             returns {\"region\", \"server\", \"metadata\"} as the server saw the call

Prints `address: ADDR` and `fingerprint: sha256:HEX` (SHA-256 of the DER of the
certificate it presents), then serves until Ctrl-C or SIGTERM and shuts down gracefully.

--insecure-dev: the dev directory (--dev-dir, $MERIDIAN_DEV_DIR, else
$HOME/.cache/meridian/dev) holds ca.pem, server.pem and server.key. The first
`serve --insecure-dev` makes them: a throw-away CA (its key is never stored, so nothing
else can be issued under it) signs one certificate for localhost, 127.0.0.1 and ::1.
Every dev server presents that certificate, and clients given --insecure-dev trust
ca.pem: nothing is accepted unverified, but whoever can read the directory can
impersonate the dev servers. Never use it outside local testing.";

/// Streams 1..=n, `interval` apart.
async fn count(request: Value, _ctx: CallContext, sink: ResponseSink<Value>) -> Result<(), Status> {
    let (n, interval) = match &request {
        Value::Int(n) => (*n, 0),
        Value::List(items) => match items.as_slice() {
            [Value::Int(n)] => (*n, 0),
            [Value::Int(n), Value::Int(ms)] => (*n, *ms),
            _ => return Err(Status::invalid_argument("count takes N or [N, MS]")),
        },
        _ => return Err(Status::invalid_argument("count takes N or [N, MS]")),
    };
    if !(0..=1_000_000).contains(&n) || !(0..=60_000).contains(&interval) {
        return Err(Status::out_of_range(
            "count takes 0 <= N <= 1000000 and 0 <= MS <= 60000",
        ));
    }
    for i in 1..=n {
        if i > 1 && interval > 0 {
            tokio::time::sleep(Duration::from_millis(interval as u64)).await;
        }
        sink.send(&Value::Int(i)).await?;
    }
    Ok(())
}

fn builder(region: &str, id: Option<&str>) -> meridian::ServerBuilder {
    let mut b = Server::builder().region(region).no_local_registry();
    if let Some(id) = id {
        b = b.server_id(id);
    }
    b.unary(
        Method::new("echo").idempotent(),
        |v: Value, _ctx| async move { Ok::<_, Status>(v) },
    )
    .unary(
        Method::new("add").idempotent(),
        |(a, b): (i64, i64), _ctx| async move {
            a.checked_add(b)
                .ok_or_else(|| Status::out_of_range("sum overflows"))
        },
    )
    .server_streaming(Method::new("count").idempotent(), count)
    .unary(
        Method::new("sleep"),
        |ms: u64, ctx: CallContext| async move {
            if ms > 3_600_000 {
                return Err(Status::out_of_range("sleep takes at most 3600000 ms"));
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(ms)) => Ok(ms),
                _ = ctx.cancelled() => Err(Status::cancelled("the caller gave up")),
            }
        },
    )
}

/// Runs `serve` until Ctrl-C or SIGTERM.
pub async fn run(args: ServeArgs) -> CliResult<()> {
    #[cfg(not(feature = "etcd"))]
    if !args.etcd.is_empty() {
        return Err(crate::common::etcd_not_built("--etcd"));
    }
    let identity = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => {
            Identity::from_pem_files(cert, key).map_err(|e| CliError::from_meridian(&e))?
        }
        _ if args.insecure_dev => crate::common::dev_identity(&dev_dir(args.dev_dir.as_deref()))?,
        _ => {
            return Err(CliError::config(
                "give the server an identity: --cert FILE --key FILE or, for local testing, --insecure-dev",
            ))
        }
    };
    let print = fingerprint(identity.certificate());
    #[cfg(feature = "etcd")]
    let certificate = identity.certificate().clone();
    let mut tls = ServerTls::new(identity);
    if let Some(ca) = &args.ca {
        tls = tls
            .require_client_certs(read_certs(ca)?)
            .map_err(|e| CliError::from_meridian(&e))?;
    }
    if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
        let (cert, key, ca) = (cert.clone(), key.clone(), args.ca.clone());
        let handle = tls.clone();
        crate::common::reload_on_sighup(cert.display().to_string(), move || {
            handle.reload_pem_files(&cert, &key)?;
            match &ca {
                Some(ca) => handle.reload_client_roots_pem_file(ca),
                None => Ok(()),
            }
        });
    }
    let listen = bindable(&args.listen).await?;
    let server = builder(&args.region, args.id.as_deref())
        .access_log(args.ops.access_log)
        .bind(listen, tls)
        .await
        .map_err(|e| CliError::from_meridian(&e))?;
    let id = args
        .id
        .clone()
        .unwrap_or_else(|| server.local_addr().to_string());
    // Added once bound, so it can tell the server id (by default the bound address).
    let (region, who) = (args.region.clone(), id.clone());
    server.add_methods(move |b| {
        b.unary(
            Method::new("where").idempotent(),
            move |(): (), ctx: CallContext| {
                let (region, who) = (region.clone(), who.clone());
                async move {
                    let metadata: Vec<(Value, Value)> = ctx
                        .metadata()
                        .iter()
                        .map(|(k, v)| {
                            (
                                Value::from(k),
                                Value::from(String::from_utf8_lossy(v).into_owned()),
                            )
                        })
                        .collect();
                    Ok::<_, Status>(Value::Map(vec![
                        (Value::from("region"), Value::from(region)),
                        (Value::from("server"), Value::from(who)),
                        (Value::from("metadata"), Value::Map(metadata)),
                    ]))
                }
            },
        )
    });
    let addr = server.local_addr();
    let methods: Vec<String> = server.catalog().into_iter().map(|m| m.name).collect();
    // Kept until the process ends: /readyz says "draining" during the grace period.
    let endpoint = args
        .ops
        .start_metrics(vec![server.metrics_source()])
        .await?;
    let metrics_addr = endpoint.as_ref().map(|e| e.local_addr().to_string());
    let text = if args.json {
        serde_json::json!({
            "address": addr.to_string(),
            "fingerprint": print,
            "region": args.region,
            "server_id": id,
            "methods": methods,
            "metrics": metrics_addr,
        })
        .to_string()
    } else {
        let mut text = format!(
            "address: {addr}\nfingerprint: {print}\nregion: {}\nserver id: {id}\nmethods: {}",
            args.region,
            methods.join(", ")
        );
        if let Some(m) = &metrics_addr {
            text.push_str(&format!("\nmetrics: {m}"));
        }
        text
    };
    #[cfg(feature = "etcd")]
    let registration = if args.etcd.is_empty() {
        None
    } else {
        let config = EtcdConfig::new(args.etcd.clone())
            .prefix(args.etcd_prefix.clone())
            .lease_ttl(args.etcd_ttl);
        let advertised = match &args.advertise {
            Some(a) => a.clone(),
            None => {
                let mut bound = addr;
                if bound.ip().is_unspecified() {
                    bound.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                }
                ServerAddr::from(bound)
            }
        };
        let record = ServerRecord::for_server(&server, advertised, String::new());
        let record = match &args.server_name {
            Some(name) => ServerRecord {
                server_name: Some(name.clone()),
                ..record
            },
            None => record.named_by_host(),
        }
        .server_id(id.clone())
        .certificate(&certificate);
        Some(crate::common::register_in_etcd(config, record).await?)
    };
    // Whoever started us may stop reading once it has the address: a closed stdout is no
    // reason to stop serving.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}").and_then(|()| out.flush());
    drop(out);
    #[cfg(feature = "etcd")]
    if let Some(key) = registration.as_ref().and_then(|r| r.key()) {
        note(&format!(
            "registered in etcd under {key} (lease TTL {:.0} s)",
            args.etcd_ttl.as_secs_f64()
        ));
    }
    note("serving; Ctrl-C or SIGTERM to stop");
    shutdown_signal().await;
    #[cfg(feature = "etcd")]
    if let Some(r) = registration {
        // Leave the registry first, so clients stop choosing this server.
        r.deregister().await;
    }
    note(&format!(
        "shutting down: waiting up to {:.1} s for calls in flight",
        args.grace.as_secs_f64()
    ));
    server.shutdown(args.grace).await;
    note("stopped");
    drop(endpoint);
    Ok(())
}

/// `--listen` and `--advertise`: HOST:PORT, an IP literal or a host name.
fn parse_server_addr(text: &str) -> Result<ServerAddr, String> {
    ServerAddr::parse(text).map_err(|e| match e {
        meridian::Error::Config(why) => why,
        other => other.to_string(),
    })
}

/// The socket address to bind for `--listen`: an IP literal as is; a host name's first
/// address that can be bound now (a name may resolve to an address family the machine
/// lacks). Errors name the host.
async fn bindable(listen: &ServerAddr) -> CliResult<SocketAddr> {
    let candidates = listen.resolve_all().await.map_err(|e| {
        CliError::config(format!(
            "--listen {listen}: {}",
            match e {
                meridian::Error::Config(why) => why,
                other => other.to_string(),
            }
        ))
    })?;
    if candidates.len() == 1 {
        return Ok(candidates[0]);
    }
    let mut last = None;
    for a in &candidates {
        match std::net::UdpSocket::bind(a) {
            Ok(_) => return Ok(*a),
            Err(e) => last = Some(format!("{a}: {e}")),
        }
    }
    Err(CliError::config(format!(
        "--listen {listen}: none of its addresses can be bound (last: {})",
        last.unwrap_or_default()
    )))
}

fn read_certs(
    path: &std::path::Path,
) -> CliResult<Vec<rustls::pki_types::CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(path)
        .map_err(|e| CliError::config(format!("cannot read {}: {e}", path.display())))?;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CliError::config(format!("{}: bad PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(CliError::config(format!(
            "{}: no certificate found",
            path.display()
        )));
    }
    Ok(certs)
}

/// A progress note on stderr; a closed stderr is ignored.
fn note(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}
