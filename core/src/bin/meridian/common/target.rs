//! Where calls go: one server (`--connect`), a region file, or etcd; connecting and diagnosing failures.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use meridian::region::{Discovery, RegionClient, RegionMap, ServerAddr, StaticDiscovery};
#[cfg(feature = "etcd")]
use meridian::region::{EtcdConfig, EtcdDiscovery};
use meridian::wire::{Hello, MethodKind};
use meridian::{Channel, ClientTls, Codec, Status, Streaming, TransportConfig, Value};

use super::errors::{CliError, CliResult, Exit};
#[cfg(feature = "etcd")]
use super::etcd::etcd_error;
#[cfg(not(feature = "etcd"))]
use super::etcd::etcd_not_built;
use super::etcd::EtcdArgs;
use super::parse::parse_duration;
use super::tls::TlsArgs;

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
    /// With --connect: the name the server's certificate must carry (default: the host of
    /// --connect, a DNS name or an IP address). Region files name servers with
    /// `server_name` (per server, or per region for all its servers).
    #[arg(long, value_name = "NAME")]
    pub server_name: Option<String>,
    /// With --regions or --etcd: every server must present the certificate whose SHA-256
    /// its entry publishes (`cert_sha256`, which `serve --etcd` records), on top of the
    /// normal verification; a server with no published hash, or another certificate, is
    /// refused. A region file can ask for it per region with `pin_cert_sha256 = true`.
    #[arg(long, conflicts_with = "connect")]
    pub pin_cert_sha256: bool,
    /// With --regions or --etcd: prefer this region whenever it is healthy, whatever the
    /// RTTs say.
    #[arg(long, value_name = "NAME", conflicts_with = "connect")]
    pub home_region: Option<String>,
    /// With --regions or --etcd: hedge calls to this idempotent method (repeatable): when
    /// the first copy is slower than the method's p95, a second goes to the next choice.
    #[arg(long, value_name = "METHOD", conflicts_with = "connect")]
    pub hedge: Vec<String>,
    /// With --regions or --etcd: reach each region through the proxies the region file
    /// lists for it (`proxies = [...]`), nearest first; regions without one directly.
    #[arg(long, conflicts_with = "connect")]
    pub via_proxies: bool,
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
    Routed(RegionClient, Vec<ServerAddr>),
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

    /// The HELLOs received so far, waiting up to `wait` for at least one, with the
    /// address of the server that sent each.
    pub async fn catalogs(&self, wait: Duration) -> Vec<(ServerAddr, Arc<Hello>)> {
        let end = tokio::time::Instant::now() + wait;
        loop {
            let got: Vec<(ServerAddr, Arc<Hello>)> = match self {
                Target::Direct(ch) => ch
                    .server_info()
                    .map(|h| (ServerAddr::from(ch.addr()), h))
                    .into_iter()
                    .collect(),
                Target::Routed(client, addrs) => addrs
                    .iter()
                    .filter_map(|a| Some((a.clone(), client.server_channel(a)?.server_info()?)))
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
    // The region file first: a missing or malformed file is a region-file error, and
    // only then is its [etcd] table read.
    let base = match regions {
        Some(path) => load_region_file(path, only)?,
        None => RegionMap::new(),
    };
    let from_file = match regions {
        Some(path) => EtcdConfig::from_toml_file(path).map_err(|e| etcd_error(&e, &[]))?,
        None => None,
    };
    let Some(config) = etcd.config().or(from_file) else {
        return Ok(None);
    };
    let prefix = config.prefix.clone();
    let urls = config.endpoints.clone();
    let endpoints = config.endpoints.join(", ");
    let d = EtcdDiscovery::connect_with_base(config, base)
        .await
        .map_err(|e| etcd_error(&e, &urls))?;
    let map = d.snapshot();
    if map.regions.iter().all(|r| r.servers.is_empty()) {
        return Err(CliError::config(format!(
            "no server is registered in etcd ({endpoints}) under {prefix:?}"
        )));
    }
    Ok(Some((d, map)))
}

/// Parses `host:port` (an IP literal or a DNS name), with a usage error that says what
/// is wrong.
pub fn parse_addr(addr: &str) -> CliResult<ServerAddr> {
    ServerAddr::parse(addr).map_err(|e| CliError::usage(plain(&e)))
}

/// Resolves `host:port`: an IP literal as is, a DNS name with the system resolver (the
/// first address it gives). The error names the host.
pub async fn resolve(addr: &ServerAddr) -> CliResult<SocketAddr> {
    addr.resolve().await.map_err(|e| CliError::usage(plain(&e)))
}

/// A library error without its `configuration error: ` prefix.
fn plain(e: &meridian::Error) -> String {
    match e {
        meridian::Error::Config(why) => why.clone(),
        other => other.to_string(),
    }
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
            let addr = parse_addr(addr)?;
            let name = self.server_name.clone().unwrap_or_else(|| addr.host());
            let addr = resolve(&addr).await?;
            let ch = connect_channel(addr, &name, tls, self.connect_timeout).await?;
            return Ok(Target::Direct(ch));
        }
        let (discovery, map) =
            discovery(self.regions.as_deref(), self.region.as_deref(), &self.etcd).await?;
        if let Some(home) = &self.home_region {
            if map.regions.iter().all(|r| &r.name != home) {
                let known: Vec<&str> = map.regions.iter().map(|r| r.name.as_str()).collect();
                return Err(CliError::config(format!(
                    "--home-region {home:?} is not a known region (known: {})",
                    known.join(", ")
                )));
            }
        }
        // With --via-proxies a region that lists proxies is reached through them.
        let endpoints: Vec<(ServerAddr, String)> = map
            .regions
            .iter()
            .flat_map(|r| {
                let through = if self.via_proxies && !r.proxies.is_empty() {
                    &r.proxies
                } else {
                    &r.servers
                };
                through
                    .iter()
                    .map(|s| (s.addr.clone(), s.server_name.clone()))
            })
            .collect();
        let mut builder = RegionClient::builder(discovery, tls.clone());
        if let Some(p) = probe_interval {
            builder = builder.probe_interval(p);
        }
        if let Some(home) = &self.home_region {
            builder = builder.home_region(home.clone());
        }
        for m in &self.hedge {
            builder = builder.hedge(m.clone());
        }
        if self.via_proxies {
            builder = builder.via_proxies();
        }
        if self.pin_cert_sha256 {
            builder = builder.pin_cert_sha256();
        }
        let client = builder.build().map_err(|e| CliError::from_meridian(&e))?;
        let addrs: Vec<ServerAddr> = endpoints.iter().map(|(a, _)| a.clone()).collect();
        // Routing needs one server; the others get a short grace to connect (so the
        // nearest can be measured) but a dead one never holds the call for the whole
        // connect timeout.
        const GRACE_AFTER_FIRST: Duration = Duration::from_millis(250);
        let end = tokio::time::Instant::now() + self.connect_timeout;
        let mut first_at = None;
        loop {
            let now = tokio::time::Instant::now();
            let stats = client.stats();
            let connected = stats.servers.iter().filter(|s| s.connected).count();
            // With --home-region, a server of that region is what the call is for: wait
            // for one (within the connect timeout) rather than go elsewhere at once.
            // (Connected, and seen healthy by the client's region selector, which a probe
            // tick updates just after: every server connected is not enough.)
            let home_waiting = self.home_region.as_ref().is_some_and(|home| {
                !stats
                    .servers
                    .iter()
                    .any(|s| s.connected && &s.region == home)
                    || !stats.regions.iter().any(|r| &r.name == home && r.healthy)
            });
            if connected == addrs.len() && !home_waiting {
                break;
            }
            if connected > 0 && !home_waiting {
                let first = *first_at.get_or_insert(now);
                if now >= first + GRACE_AFTER_FIRST || now >= end {
                    break;
                }
            }
            if connected > 0 && home_waiting && now >= end {
                break;
            }
            if now >= end {
                // Nobody answered: the client's own reason when it refused every server
                // (pinning), else dial the servers directly to say why.
                if let Some(refused) = refused_by_checks(&client) {
                    return Err(refused);
                }
                return Err(diagnose(&endpoints, &tls, self.connect_timeout).await);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !self.hedge.is_empty() {
            // Say now, rather than never hedge silently.
            let _ = Target::Routed(client.clone(), addrs.clone())
                .catalogs(Duration::from_millis(500))
                .await;
            for problem in client.hedge_problems() {
                eprintln!("meridian: warning: --hedge: {problem}");
            }
        }
        Ok(Target::Routed(client, addrs))
    }
}

/// When the region client refused every server on its own checks (certificate pinning),
/// the reason it gave, as an untrusted-server error: dialling them again without those
/// checks would only hide it.
fn refused_by_checks(client: &RegionClient) -> Option<CliError> {
    let status = client.last_connect_error()?;
    let pinning = status.contains("certificate pinning is on")
        || status.contains("certificate SHA-256 mismatch");
    pinning.then(|| {
        CliError::new(
            Exit::Untrusted,
            format!(
                "no server could be verified: {status} (the published cert_sha256 does not \
                 match, or is missing: see --pin-cert-sha256 and the region file's \
                 pin_cert_sha256)"
            ),
        )
    })
}

/// Why no server of a region file can be reached: the first TLS failure if any (the most
/// useful to know), else unreachable.
async fn diagnose(
    endpoints: &[(ServerAddr, String)],
    tls: &ClientTls,
    timeout: Duration,
) -> CliError {
    let attempts = endpoints.iter().map(|(addr, name)| {
        let tls = tls.clone();
        async move {
            let to = match resolve(addr).await {
                Ok(to) => to,
                Err(e) => return Some(e),
            };
            connect_channel(to, name, tls, timeout).await.err()
        }
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
