//! What the subcommands share: errors and exit codes, connection and TLS flags, the dev
//! certificate directory behind `--insecure-dev`, JSON <-> `Value`, formatting.

use std::fmt;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use meridian::region::{Discovery, RegionClient, RegionMap, StaticDiscovery};
#[cfg(feature = "etcd")]
use meridian::region::{EtcdConfig, EtcdDiscovery, EtcdError};
use meridian::transport::pem_encode;
use meridian::wire::{Hello, MethodKind};
use meridian::{
    Channel, ClientTls, Codec, DevCa, Identity, Status, Streaming, TransportConfig, Value,
};

/// The exit codes, as `--help` shows them.
pub const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  a call failed: the status code name and message are printed (bench: some calls failed)
  2  bad usage or input: unknown flag, bad JSON argument, bad metadata or duration
  3  bad configuration: unreadable or invalid region or certificate file, unknown region,
     no trust given (--ca or --insecure-dev), address already in use
  4  unreachable: no server answered within --connect-timeout
  5  untrusted: the TLS handshake failed (certificate not trusted, or client certificate refused)
  6  anything else (an I/O error, or a subcommand that is not available yet)";

/// Why the command failed, which decides its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// A call ended with a status other than OK.
    Status = 1,
    /// Bad flags or input.
    Usage = 2,
    /// Bad configuration.
    Config = 3,
    /// No server could be reached.
    Unreachable = 4,
    /// The TLS handshake failed.
    Untrusted = 5,
    /// Anything else.
    Other = 6,
}

/// A failure of the command: one line for stderr, and its exit code.
#[derive(Debug)]
pub struct CliError {
    pub exit: Exit,
    pub message: String,
}

impl CliError {
    pub fn new(exit: Exit, message: impl Into<String>) -> CliError {
        CliError {
            exit,
            message: message.into(),
        }
    }

    pub fn usage(message: impl Into<String>) -> CliError {
        CliError::new(Exit::Usage, message)
    }

    pub fn config(message: impl Into<String>) -> CliError {
        CliError::new(Exit::Config, message)
    }

    pub fn other(message: impl Into<String>) -> CliError {
        CliError::new(Exit::Other, message)
    }

    /// A call's status: `CODE: message`.
    pub fn status(status: &Status) -> CliError {
        CliError::new(Exit::Status, status_line(status))
    }

    /// A library error, classified by what it says.
    pub fn from_meridian(e: &meridian::Error) -> CliError {
        match e {
            meridian::Error::Connect { addr, reason } => connect_failure(*addr, reason),
            // Unreadable files, addresses that cannot be bound, bad certificates.
            _ => CliError::config(e.to_string()),
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keep it to one line whatever the source said.
        f.write_str(&self.message.replace('\n', " "))
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> CliError {
        CliError::other(format!("I/O error: {e}"))
    }
}

pub type CliResult<T> = Result<T, CliError>;

/// `CODE: message`, or the code alone.
pub fn status_line(status: &Status) -> String {
    if status.message().is_empty() {
        status.code().name().to_string()
    } else {
        format!("{}: {}", status.code().name(), status.message())
    }
}

/// Sorts a failed connection attempt into untrusted (TLS) or unreachable.
pub fn connect_failure(addr: SocketAddr, reason: &str) -> CliError {
    let lower = reason.to_ascii_lowercase();
    let timed_out = lower.contains("timed out") || lower.contains("timeout");
    if !timed_out
        && (lower.contains("tls") || lower.contains("certificate") || lower.contains("handshake"))
    {
        CliError::new(
            Exit::Untrusted,
            format!("TLS handshake with {addr} failed (is its certificate trusted? see --ca and --insecure-dev): {reason}"),
        )
    } else {
        CliError::new(Exit::Unreachable, format!("cannot reach {addr}: {reason}"))
    }
}

/// Parses `500ms`, `3s`, `1.5s`, `2m` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (number, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = t.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (t, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (examples: 500ms, 3s, 1.5s, 2m)"))?;
    let secs = value * scale;
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("{text:?} is not a usable duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses `key=value` metadata.
pub fn parse_metadata(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{text:?} is not key=value metadata")),
    }
}

/// TLS flags shared by every command that talks to servers.
#[derive(Args, Debug, Clone)]
pub struct TlsArgs {
    /// Trust the CA certificates in this PEM file when verifying servers.
    #[arg(long, value_name = "FILE", conflicts_with = "insecure_dev")]
    pub ca: Option<PathBuf>,
    /// Present this PEM certificate chain to servers that require client certificates
    /// (mutual TLS); needs --key.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// The private key (PEM) of --cert.
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// FOR LOCAL TESTING ONLY: trust the development CA that `meridian serve
    /// --insecure-dev` keeps in the dev directory (see --dev-dir). Anyone who can read that
    /// directory can impersonate the servers that use it.
    #[arg(long)]
    pub insecure_dev: bool,
    /// The dev directory of --insecure-dev.
    #[arg(long, value_name = "DIR", env = "MERIDIAN_DEV_DIR")]
    pub dev_dir: Option<PathBuf>,
}

impl TlsArgs {
    /// The client TLS settings these flags describe.
    pub fn client_tls(&self) -> CliResult<ClientTls> {
        let tls = if let Some(ca) = &self.ca {
            ClientTls::with_roots_pem_file(ca).map_err(|e| CliError::from_meridian(&e))?
        } else if self.insecure_dev {
            let dir = dev_dir(self.dev_dir.as_deref());
            let ca = dir.join(DEV_CA_FILE);
            if !ca.exists() {
                return Err(CliError::config(format!(
                    "--insecure-dev: no dev CA at {} (start `meridian serve --insecure-dev` first, with the same --dev-dir)",
                    ca.display()
                )));
            }
            ClientTls::with_roots_pem_file(&ca).map_err(|e| CliError::from_meridian(&e))?
        } else {
            return Err(CliError::config(
                "say whom to trust: --ca FILE (a CA's PEM certificate) or, for local testing, --insecure-dev",
            ));
        };
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let id =
                    Identity::from_pem_files(cert, key).map_err(|e| CliError::from_meridian(&e))?;
                Ok(tls.with_identity(id))
            }
            _ => Ok(tls),
        }
    }
}

/// The key prefix servers register under in etcd by default.
#[cfg(feature = "etcd")]
pub const ETCD_DEFAULT_PREFIX: &str = EtcdConfig::DEFAULT_PREFIX;
/// The key prefix servers register under in etcd by default (the library's, which a build
/// without etcd does not compile).
#[cfg(not(feature = "etcd"))]
pub const ETCD_DEFAULT_PREFIX: &str = "/meridian/";

/// Flags that find servers in an etcd registry (where `meridian serve --etcd` registers).
/// They exist in every build, so scripts see the same flags; a build without the `etcd`
/// feature refuses them with exit code 3 and says how to get a build that has them.
#[derive(Args, Debug, Clone, Default)]
pub struct EtcdArgs {
    /// Find the servers registered in etcd at these client URLs (comma-separated or
    /// repeated), e.g. http://127.0.0.1:2379; membership is followed live.
    #[arg(long = "etcd", value_name = "URL", value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// The key prefix servers register under in etcd.
    #[arg(long, value_name = "PREFIX", default_value = ETCD_DEFAULT_PREFIX)]
    pub etcd_prefix: String,
}

/// The error of a build without the `etcd` feature that is asked to use etcd.
#[cfg(not(feature = "etcd"))]
pub fn etcd_not_built(what: &str) -> CliError {
    CliError::config(format!(
        "{what} needs etcd support, which this `meridian` was built without: \
         rebuild with `cargo install --path core --features cli,etcd` \
         (the build needs protoc and the protobuf include files: \
         apt-get install protobuf-compiler libprotobuf-dev)"
    ))
}

#[cfg(feature = "etcd")]
impl EtcdArgs {
    /// The etcd settings these flags describe, if `--etcd` was given.
    pub fn config(&self) -> Option<EtcdConfig> {
        (!self.etcd.is_empty())
            .then(|| EtcdConfig::new(self.etcd.clone()).prefix(self.etcd_prefix.clone()))
    }
}

/// An etcd failure: configuration (exit 3) or an unreachable etcd (exit 4).
#[cfg(feature = "etcd")]
pub fn etcd_error(e: &EtcdError) -> CliError {
    match e {
        EtcdError::Config(_) => CliError::config(e.to_string()),
        _ => CliError::new(Exit::Unreachable, e.to_string()),
    }
}

/// Where to send calls: one server, a region file, or the servers registered in etcd.
#[derive(Args, Debug, Clone)]
pub struct TargetArgs {
    /// Call one server directly at this UDP address (host:port).
    #[arg(
        long,
        value_name = "ADDR",
        conflicts_with_all = ["regions", "etcd"],
        required_unless_present_any = ["regions", "etcd"]
    )]
    pub connect: Option<String>,
    /// Route calls with a region client configured from this TOML region file.
    #[arg(long, value_name = "FILE")]
    pub regions: Option<PathBuf>,
    /// With --regions: use only this region of the file.
    #[arg(long, value_name = "NAME", requires = "regions")]
    pub region: Option<String>,
    /// With --connect: the name the server's certificate must carry.
    #[arg(long, value_name = "NAME", default_value = "localhost")]
    pub server_name: String,
    /// Give up connecting after this long (e.g. 500ms, 3s).
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    #[command(flatten)]
    pub etcd: EtcdArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// A connected target: a channel or a region client.
#[derive(Clone)]
pub enum Target {
    Direct(Channel),
    Routed(RegionClient, Vec<SocketAddr>),
}

/// Per-call options of `call` and `bench`.
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    pub timeout: Option<Duration>,
    pub metadata: Vec<(String, String)>,
    pub key: Option<String>,
}

/// Applies `--timeout`, `--metadata` and `--routing-key` to a call builder (a channel's or
/// a region client's: both have the same option methods).
macro_rules! with_options {
    ($call:expr, $o:expr) => {{
        let (mut c, o) = ($call, $o);
        if let Some(t) = o.timeout {
            c = c.timeout(t);
        }
        for (k, v) in &o.metadata {
            c = c.metadata(k.clone(), v.clone().into_bytes());
        }
        if let Some(key) = &o.key {
            c = c.routing_key(key.clone().into_bytes());
        }
        c
    }};
}

impl Target {
    /// A unary call with `Value` messages.
    pub async fn unary(&self, method: &str, o: &CallOptions, req: &Value) -> Result<Value, Status> {
        self.unary_response(method, o, req)
            .await
            .map(meridian::Response::into_inner)
    }

    /// A unary call with `Value` messages, with its trailing metadata and timing.
    pub async fn unary_response(
        &self,
        method: &str,
        o: &CallOptions,
        req: &Value,
    ) -> Result<meridian::Response<Value>, Status> {
        let response = match self {
            Target::Direct(ch) => {
                with_options!(ch.call(method).codec(Codec::Value), o)
                    .unary(req)
                    .await?
            }
            Target::Routed(client, _) => {
                with_options!(client.call(method).codec(Codec::Value), o)
                    .unary(req)
                    .await?
            }
        };
        Ok(response)
    }

    /// A server-streaming call with `Value` messages.
    pub async fn server_streaming(
        &self,
        method: &str,
        o: &CallOptions,
        req: &Value,
    ) -> Result<Streaming<Value>, Status> {
        match self {
            Target::Direct(ch) => {
                with_options!(ch.call(method).codec(Codec::Value), o)
                    .server_streaming(req)
                    .await
            }
            Target::Routed(client, _) => {
                with_options!(client.call(method).codec(Codec::Value), o)
                    .server_streaming(req)
                    .await
            }
        }
    }

    /// The HELLOs received so far, waiting up to `wait` for at least one.
    pub async fn catalogs(&self, wait: Duration) -> Vec<(SocketAddr, Arc<Hello>)> {
        let end = tokio::time::Instant::now() + wait;
        loop {
            let got: Vec<(SocketAddr, Arc<Hello>)> = match self {
                Target::Direct(ch) => ch
                    .server_info()
                    .map(|h| (ch.addr(), h))
                    .into_iter()
                    .collect(),
                Target::Routed(client, addrs) => addrs
                    .iter()
                    .filter_map(|a| Some((*a, client.server_channel(*a)?.server_info()?)))
                    .collect(),
            };
            if !got.is_empty() || tokio::time::Instant::now() >= end {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The shape of `method` according to the first catalog that lists it.
    pub async fn method_kind(&self, method: &str, wait: Duration) -> Option<MethodKind> {
        self.catalogs(wait)
            .await
            .iter()
            .find_map(|(_, h)| h.methods.iter().find(|m| m.name == method).map(|m| m.kind))
    }
}

/// Reads a region file, keeping only `only` if given; it must list a server.
pub fn load_regions(path: &Path, only: Option<&str>) -> CliResult<RegionMap> {
    let map = load_region_file(path, only)?;
    if map.regions.iter().all(|r| r.servers.is_empty()) {
        return Err(CliError::config(format!(
            "{} lists no server",
            path.display()
        )));
    }
    Ok(map)
}

/// Reads a region file, keeping only `only` if given.
fn load_region_file(path: &Path, only: Option<&str>) -> CliResult<RegionMap> {
    let mut map = RegionMap::from_toml_file(path).map_err(|e| CliError::from_meridian(&e))?;
    if let Some(name) = only {
        if !map.regions.iter().any(|r| r.name == name) {
            let known: Vec<&str> = map.regions.iter().map(|r| r.name.as_str()).collect();
            return Err(CliError::config(format!(
                "unknown region {name:?}: {} lists {}",
                path.display(),
                if known.is_empty() {
                    "no region".to_string()
                } else {
                    known.join(", ")
                }
            )));
        }
        map.regions.retain(|r| r.name == name);
    }
    Ok(map)
}

/// The region map to follow: from etcd (`--etcd`, or a region file with an `[etcd]` table,
/// plus the file's own servers) or from the region file alone.
pub async fn discovery(
    regions: Option<&Path>,
    only: Option<&str>,
    etcd: &EtcdArgs,
) -> CliResult<(Arc<dyn Discovery>, RegionMap)> {
    #[cfg(feature = "etcd")]
    if let Some(found) = etcd_discovery(regions, only, etcd).await? {
        return Ok(found);
    }
    #[cfg(not(feature = "etcd"))]
    refuse_etcd(regions, etcd)?;
    let path = regions
        .ok_or_else(|| CliError::usage("give --connect ADDR, --regions FILE or --etcd URL"))?;
    let map = load_regions(path, only)?;
    Ok((StaticDiscovery::new(map.clone()), map))
}

/// Without the `etcd` feature: refuses `--etcd` and a region file with an `[etcd]` table,
/// rather than silently ignoring the registry they name.
#[cfg(not(feature = "etcd"))]
fn refuse_etcd(regions: Option<&Path>, etcd: &EtcdArgs) -> CliResult<()> {
    if !etcd.etcd.is_empty() {
        return Err(etcd_not_built("--etcd"));
    }
    let Some(path) = regions else {
        return Ok(());
    };
    // An unreadable or malformed file is reported by the region-file loader that follows.
    let table = std::fs::read_to_string(path)
        .ok()
        .and_then(|text| text.parse::<toml::Table>().ok());
    if table.is_some_and(|t| t.contains_key("etcd")) {
        return Err(etcd_not_built(&format!(
            "the [etcd] table of {}",
            path.display()
        )));
    }
    Ok(())
}

/// The etcd-backed region map, when `--etcd` or the region file's `[etcd]` table asks
/// for one; `None` otherwise.
#[cfg(feature = "etcd")]
async fn etcd_discovery(
    regions: Option<&Path>,
    only: Option<&str>,
    etcd: &EtcdArgs,
) -> CliResult<Option<(Arc<dyn Discovery>, RegionMap)>> {
    let from_file = match regions {
        Some(path) => EtcdConfig::from_toml_file(path).map_err(|e| etcd_error(&e))?,
        None => None,
    };
    let Some(config) = etcd.config().or(from_file) else {
        return Ok(None);
    };
    let base = match regions {
        Some(path) => load_region_file(path, only)?,
        None => RegionMap::new(),
    };
    let prefix = config.prefix.clone();
    let endpoints = config.endpoints.join(", ");
    let d = EtcdDiscovery::connect_with_base(config, base)
        .await
        .map_err(|e| etcd_error(&e))?;
    let map = d.snapshot();
    if map.regions.iter().all(|r| r.servers.is_empty()) {
        return Err(CliError::config(format!(
            "no server is registered in etcd ({endpoints}) under {prefix:?}"
        )));
    }
    Ok(Some((d, map)))
}

/// Resolves `host:port`.
pub fn resolve(addr: &str) -> CliResult<SocketAddr> {
    use std::net::ToSocketAddrs;
    addr.to_socket_addrs()
        .map_err(|e| CliError::usage(format!("bad address {addr:?}: {e}")))?
        .next()
        .ok_or_else(|| CliError::usage(format!("bad address {addr:?}: it resolves to nothing")))
}

/// Connects one channel within `timeout`.
pub async fn connect_channel(
    addr: SocketAddr,
    server_name: &str,
    tls: ClientTls,
    timeout: Duration,
) -> CliResult<Channel> {
    let transport = TransportConfig {
        handshake_timeout: timeout,
        ..TransportConfig::default()
    };
    let connect = Channel::builder(addr, tls)
        .server_name(server_name)
        .transport(transport)
        .connect();
    match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(ch)) => Ok(ch),
        Ok(Err(e)) => Err(CliError::from_meridian(&e)),
        Err(_) => Err(CliError::new(
            Exit::Unreachable,
            format!(
                "cannot reach {addr}: no answer within {:.1} s (--connect-timeout)",
                timeout.as_secs_f64()
            ),
        )),
    }
}

impl TargetArgs {
    /// Connects: a channel for --connect; for --regions a region client that has at least
    /// one server connected (waiting up to --connect-timeout).
    pub async fn connect(&self, probe_interval: Option<Duration>) -> CliResult<Target> {
        #[cfg(not(feature = "etcd"))]
        refuse_etcd(self.regions.as_deref(), &self.etcd)?;
        let tls = self.tls.client_tls()?;
        if let Some(addr) = &self.connect {
            let addr = resolve(addr)?;
            let ch = connect_channel(addr, &self.server_name, tls, self.connect_timeout).await?;
            return Ok(Target::Direct(ch));
        }
        let (discovery, map) =
            discovery(self.regions.as_deref(), self.region.as_deref(), &self.etcd).await?;
        let endpoints: Vec<(SocketAddr, String)> = map
            .regions
            .iter()
            .flat_map(|r| r.servers.iter().map(|s| (s.addr, s.server_name.clone())))
            .collect();
        let mut builder = RegionClient::builder(discovery, tls.clone());
        if let Some(p) = probe_interval {
            builder = builder.probe_interval(p);
        }
        let client = builder.build().map_err(|e| CliError::from_meridian(&e))?;
        let addrs: Vec<SocketAddr> = endpoints.iter().map(|(a, _)| *a).collect();
        let end = tokio::time::Instant::now() + self.connect_timeout;
        loop {
            let stats = client.stats();
            let connected = stats.servers.iter().filter(|s| s.connected).count();
            if connected == addrs.len() {
                break;
            }
            if tokio::time::Instant::now() >= end {
                if connected > 0 {
                    break;
                }
                // Nobody answered: dial the servers directly to say why.
                return Err(diagnose(&endpoints, &tls, self.connect_timeout).await);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Target::Routed(client, addrs))
    }
}

/// Why no server of a region file can be reached: the first TLS failure if any (the most
/// useful to know), else unreachable.
async fn diagnose(
    endpoints: &[(SocketAddr, String)],
    tls: &ClientTls,
    timeout: Duration,
) -> CliError {
    let attempts = endpoints.iter().map(|(addr, name)| {
        let tls = tls.clone();
        async move { connect_channel(*addr, name, tls, timeout).await.err() }
    });
    let mut errors = Vec::new();
    for a in attempts {
        if let Some(e) = a.await {
            errors.push(e);
        }
    }
    if let Some(tls_error) = errors.iter().position(|e| e.exit == Exit::Untrusted) {
        return errors.swap_remove(tls_error);
    }
    CliError::new(
        Exit::Unreachable,
        format!(
            "cannot reach any of the {} server(s) of the region file within {:.1} s (--connect-timeout){}",
            endpoints.len(),
            timeout.as_secs_f64(),
            errors
                .first()
                .map(|e| format!("; first: {e}"))
                .unwrap_or_default()
        ),
    )
}

// ---------------------------------------------------------------------------------------
// The dev directory behind --insecure-dev
// ---------------------------------------------------------------------------------------

/// The dev CA's certificate, which `--insecure-dev` clients trust.
pub const DEV_CA_FILE: &str = "ca.pem";
/// The server certificate chain every `serve --insecure-dev` presents.
pub const DEV_CERT_FILE: &str = "server.pem";
/// Its private key.
pub const DEV_KEY_FILE: &str = "server.key";

/// The dev directory: `--dev-dir`, else `$MERIDIAN_DEV_DIR` (clap reads both), else
/// `$HOME/.cache/meridian/dev`, else `<temp dir>/meridian-dev`.
pub fn dev_dir(flag: Option<&Path>) -> PathBuf {
    if let Some(d) = flag {
        return d.to_path_buf();
    }
    match std::env::var_os("HOME") {
        Some(home) if !home.is_empty() => PathBuf::from(home).join(".cache/meridian/dev"),
        _ => std::env::temp_dir().join("meridian-dev"),
    }
}

/// The shared dev server identity: made once (a fresh dev CA issues a certificate for
/// `localhost`, `127.0.0.1` and `::1`; the CA's key is then thrown away, so nothing else
/// can ever be issued under it), then reused by every `serve --insecure-dev`.
pub fn dev_identity(dir: &Path) -> CliResult<Identity> {
    let (cert, key) = (dir.join(DEV_CERT_FILE), dir.join(DEV_KEY_FILE));
    if !cert.exists() || !key.exists() {
        create_dev_dir(dir)?;
    }
    Identity::from_pem_files(&cert, &key).map_err(|e| CliError::from_meridian(&e))
}

fn create_dev_dir(dir: &Path) -> CliResult<()> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)
        .map_err(|e| CliError::other(format!("cannot create {}: {e}", parent.display())))?;
    let ca = DevCa::new().map_err(|e| CliError::from_meridian(&e))?;
    let id = ca
        .issue_server(&["localhost", "127.0.0.1", "::1"])
        .map_err(|e| CliError::from_meridian(&e))?;
    // Written into a fresh directory that is then renamed into place, so a concurrent
    // `serve` sees either nothing or all three files; the loser of a race uses the winner's.
    let staging = parent.join(format!(
        ".meridian-dev-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    std::fs::create_dir(&staging)
        .map_err(|e| CliError::other(format!("cannot create {}: {e}", staging.display())))?;
    let chain: String = id
        .chain
        .iter()
        .map(|c| pem_encode("CERTIFICATE", c))
        .collect();
    let write = || -> std::io::Result<()> {
        std::fs::write(staging.join(DEV_CA_FILE), ca.certificate_pem())?;
        std::fs::write(staging.join(DEV_CERT_FILE), chain)?;
        write_private(
            &staging.join(DEV_KEY_FILE),
            &pem_encode("PRIVATE KEY", id.key.secret_der()),
        )
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(CliError::other(format!(
            "cannot write the dev certificate: {e}"
        )));
    }
    if std::fs::rename(&staging, dir).is_err() {
        // Someone else made it first (or an empty directory is in the way).
        let _ = std::fs::remove_dir_all(&staging);
        if !dir.join(DEV_KEY_FILE).exists() {
            return Err(CliError::other(format!(
                "cannot create the dev directory {} (remove what is in the way, or pass --dev-dir)",
                dir.display()
            )));
        }
    }
    Ok(())
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)
}

/// SHA-256 of a certificate's DER, as `sha256:` and lowercase hex (what `openssl x509
/// -noout -fingerprint -sha256` prints, without colons). The hash comes from the TLS
/// library's own provider, so the CLI needs no hashing crate of its own.
pub fn fingerprint(der: &[u8]) -> String {
    let suite = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256;
    let hex = match suite.tls13() {
        Some(s) => s
            .common
            .hash_provider
            .hash(der)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
        None => String::from("unavailable"),
    };
    format!("sha256:{hex}")
}

// ---------------------------------------------------------------------------------------
// JSON <-> Value
// ---------------------------------------------------------------------------------------

/// The request of `call`/`bench`: no argument is `null`, one is that JSON value, several
/// are a list of them (`call add 10 5` is `call add '[10, 5]'`).
pub fn request_value(args: &[String]) -> CliResult<Value> {
    let parse = |text: &str| -> CliResult<Value> {
        let mut de = serde_json::Deserializer::from_str(text);
        let v = serde::Deserialize::deserialize(&mut de)
            .and_then(|v: Value| de.end().map(|()| v))
            .map_err(|e| CliError::usage(format!("bad JSON argument {text:?}: {e}")))?;
        Ok(v)
    };
    match args {
        [] => Ok(Value::Null),
        [one] => parse(one),
        many => Ok(Value::List(
            many.iter().map(|a| parse(a)).collect::<CliResult<_>>()?,
        )),
    }
}

/// A `Value` as JSON. Never fails: bytes become an array of numbers (as in the C ABI),
/// map keys that are not strings become their text form, non-finite floats `null`.
pub fn to_json(v: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Value::Null => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Int(i) => J::from(*i),
        Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
        Value::Str(s) => J::String(s.clone()),
        Value::Bytes(b) => J::Array(b.iter().map(|x| J::from(*x)).collect()),
        Value::List(items) => J::Array(items.iter().map(to_json).collect()),
        Value::Map(entries) => J::Object(
            entries
                .iter()
                .map(|(k, v)| {
                    let key = match k {
                        Value::Str(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
    }
}

/// `1.234 ms`-style text for a duration.
pub fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// Milliseconds as a float, for JSON output.
pub fn ms_f64(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Waits for Ctrl-C or (on Unix) SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
