//! Discovery in etcd (feature `etcd`): servers register themselves under a key prefix with
//! a lease they keep alive, and clients read the prefix and then watch it.
//!
//! Why etcd: a fleet spread over regions needs a registry that is itself replicated, and
//! teams that run services in several regions usually run etcd already.
//!
//! How it works:
//! - A server's [`EtcdRegistration`] grants a lease of [`EtcdConfig::lease_ttl`], writes one
//!   key `{prefix}{region}/{server_id}` whose value is a JSON [`ServerRecord`] (region, id,
//!   address, certificate name and fingerprint, method catalog, load), and keeps the lease
//!   alive (a keep-alive every third of the TTL). A clean stop revokes the lease, so the key
//!   goes at once; a server that dies stops the keep-alives and etcd deletes the key when the
//!   lease expires, one TTL later at most.
//! - An [`EtcdDiscovery`] reads the prefix, then watches it from the revision after the one
//!   it read, so no change falls in between. When the watch breaks (etcd restarted, network
//!   cut) it is opened again from the last revision applied; if etcd has compacted that
//!   revision away, the prefix is read again. Until etcd answers again, the last known
//!   membership stays in force: a registry outage never empties the region map.
//! - A value that does not parse is logged and skipped (the key counts as no server).
//!
//! From code:
//!
//! ```no_run
//! # async fn demo(tls: meridian::ClientTls) -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use meridian::region::{EtcdConfig, EtcdDiscovery, RegionClient};
//! let config = EtcdConfig::new(["http://127.0.0.1:2379"]).lease_ttl(Duration::from_secs(5));
//! let discovery = EtcdDiscovery::connect(config).await?;
//! let client = RegionClient::builder(discovery, tls).build()?;
//! # Ok(()) }
//! ```
//!
//! From a region file, an `[etcd]` table next to (or instead of) the `[[region]]` lists
//! (files without it keep working; [`RegionMap`] ignores the table):
//!
//! ```toml
//! [etcd]
//! endpoints = ["http://10.0.0.5:2379", "http://10.0.0.6:2379"]
//! prefix = "/meridian/"    # default
//! lease_ttl = 10           # seconds, default 10
//!
//! [etcd.tls]               # optional: https endpoints
//! ca = "etcd-ca.pem"
//! cert = "client.pem"      # optional client certificate and key (mutual TLS)
//! key = "client-key.pem"
//! domain = "etcd.example.com"
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{
    Certificate, Client, ConnectOptions, EventType, GetOptions, Identity, PutOptions, TlsOptions,
    WatchOptions,
};
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::map::{Discovery, RegionMap, ServerEndpoint};
use crate::server::Server;
use crate::wire::{MethodInfo, MethodKind};

/// Errors of the etcd backend.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// The configuration is not usable (no endpoints, a bad TLS file, a bad TOML table).
    #[error("etcd configuration error: {0}")]
    Config(String),
    /// etcd refused a request or could not be reached.
    #[error("etcd: {context}: {source}")]
    Etcd {
        /// What was being done.
        context: String,
        /// The client's error.
        source: etcd_client::Error,
    },
    /// etcd did not answer within the connect timeout.
    #[error("etcd: {0}: no answer within the connect timeout")]
    Timeout(String),
}

fn etcd_err(context: &str) -> impl FnOnce(etcd_client::Error) -> EtcdError + '_ {
    move |source| EtcdError::Etcd {
        context: context.to_string(),
        source,
    }
}

/// Runs `fut` with the connect timeout.
async fn bounded<T>(
    limit: Duration,
    what: &str,
    fut: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, EtcdError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r.map_err(etcd_err(what)),
        Err(_) => Err(EtcdError::Timeout(what.to_string())),
    }
}

fn default_prefix() -> String {
    EtcdConfig::DEFAULT_PREFIX.to_string()
}

fn default_ttl() -> Duration {
    EtcdConfig::DEFAULT_LEASE_TTL
}

fn ttl_from_secs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let secs = u64::deserialize(d)?;
    if secs == 0 || secs > 86_400 {
        return Err(serde::de::Error::custom(
            "lease_ttl must be between 1 and 86400 seconds",
        ));
    }
    Ok(Duration::from_secs(secs))
}

/// TLS for the connection to etcd (endpoints must then be `https://`). PEM files.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdTls {
    /// Certificates (PEM) that may sign etcd's certificate; default: none, which only
    /// works if etcd's certificate is trusted otherwise.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Client certificate chain (PEM) for mutual TLS; needs `key` too.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// The name etcd's certificate must carry, when it is not the endpoint's host.
    #[serde(default)]
    pub domain: Option<String>,
}

impl EtcdTls {
    fn options(&self) -> Result<TlsOptions, EtcdError> {
        let read = |p: &Path| {
            std::fs::read(p)
                .map_err(|e| EtcdError::Config(format!("cannot read {}: {e}", p.display())))
        };
        let mut tls = TlsOptions::new();
        if let Some(ca) = &self.ca {
            tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        match (&self.cert, &self.key) {
            (Some(c), Some(k)) => tls = tls.identity(Identity::from_pem(read(c)?, read(k)?)),
            (None, None) => {}
            _ => {
                return Err(EtcdError::Config(
                    "etcd TLS needs both a client certificate and its key".into(),
                ))
            }
        }
        if let Some(d) = &self.domain {
            tls = tls.domain_name(d.clone());
        }
        Ok(tls)
    }
}

/// Where the etcd cluster is and how servers register in it.
///
/// Build it in code with [`EtcdConfig::new`] and its setters, or read the `[etcd]` table
/// of a region file with [`EtcdConfig::from_toml_file`] (format in the [module
/// docs](self)).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    /// Client URLs of the etcd members, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// Key prefix under which servers register (default `/meridian/`).
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Lease time-to-live: how long a server that died stays listed, at most (whole
    /// seconds, at least 1; default 10 s). In TOML, `lease_ttl = 10`.
    #[serde(default = "default_ttl", deserialize_with = "ttl_from_secs")]
    pub lease_ttl: Duration,
    /// TLS for etcd, if the endpoints are `https://`.
    #[serde(default)]
    pub tls: Option<EtcdTls>,
    /// How long one request may wait for etcd before it counts as unreachable (default
    /// 3 s). Not read from TOML.
    #[serde(skip, default = "default_connect_timeout")]
    pub connect_timeout: Duration,
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(3)
}

/// Only the `[etcd]` table of a region file; the rest is [`RegionMap`]'s.
#[derive(Deserialize)]
struct RegionFileEtcd {
    #[serde(default)]
    etcd: Option<EtcdConfig>,
}

impl EtcdConfig {
    /// The default key prefix.
    pub const DEFAULT_PREFIX: &'static str = "/meridian/";
    /// The default lease TTL.
    pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);

    /// A configuration for the cluster at `endpoints`, with the default prefix and TTL.
    pub fn new<I, S>(endpoints: I) -> EtcdConfig
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        EtcdConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            prefix: default_prefix(),
            lease_ttl: default_ttl(),
            tls: None,
            connect_timeout: default_connect_timeout(),
        }
    }

    /// Sets the key prefix (a trailing `/` is added if missing).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets the lease TTL, rounded up to whole seconds (etcd's unit), at least 1 s.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// Connects to etcd over TLS.
    pub fn tls(mut self, tls: EtcdTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// How long one request may wait for etcd (default 3 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Reads the `[etcd]` table of a region file's text; `Ok(None)` if there is none.
    pub fn from_toml_str(text: &str) -> Result<Option<EtcdConfig>, EtcdError> {
        let file: RegionFileEtcd = toml::from_str(text)
            .map_err(|e| EtcdError::Config(format!("bad [etcd] table: {e}")))?;
        match file.etcd {
            Some(c) => c.validated().map(Some),
            None => Ok(None),
        }
    }

    /// Reads the `[etcd]` table of a region file; `Ok(None)` if there is none.
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<Option<EtcdConfig>, EtcdError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| EtcdError::Config(format!("cannot read {}: {e}", path.display())))?;
        Self::from_toml_str(&text)
    }

    /// Checks the configuration and normalises the prefix.
    fn validated(mut self) -> Result<EtcdConfig, EtcdError> {
        if self.endpoints.is_empty() || self.endpoints.iter().any(|e| e.trim().is_empty()) {
            return Err(EtcdError::Config("no etcd endpoints given".into()));
        }
        if self.prefix.is_empty() {
            return Err(EtcdError::Config("the etcd key prefix is empty".into()));
        }
        if !self.prefix.ends_with('/') {
            self.prefix.push('/');
        }
        Ok(self)
    }

    /// The lease TTL in etcd's unit (whole seconds, at least 1).
    fn ttl_secs(&self) -> i64 {
        let ms = self.lease_ttl.as_millis().max(1);
        i64::try_from(ms.div_ceil(1000)).unwrap_or(i64::MAX)
    }

    async fn client(&self) -> Result<Client, EtcdError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(self.connect_timeout)
            .with_timeout(self.connect_timeout)
            // HTTP/2 pings find a silently dead etcd connection (the watch would wait
            // forever on it otherwise).
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_keep_alive_while_idle(true);
        if let Some(tls) = &self.tls {
            options = options.with_tls(tls.options()?);
        }
        // Connecting is lazy: this fails only on malformed endpoints.
        bounded(
            self.connect_timeout,
            "connect",
            Client::connect(&self.endpoints, Some(options)),
        )
        .await
    }
}

/// One method of a registered server's catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogEntry {
    /// Method name.
    pub name: String,
    /// `unary`, `server_streaming`, `client_streaming` or `bidi`.
    pub kind: String,
    /// Safe to run more than once.
    #[serde(default)]
    pub idempotent: bool,
}

impl From<&MethodInfo> for CatalogEntry {
    fn from(m: &MethodInfo) -> CatalogEntry {
        let kind = match m.kind {
            MethodKind::Unary => "unary",
            MethodKind::ServerStreaming => "server_streaming",
            MethodKind::ClientStreaming => "client_streaming",
            MethodKind::Bidi => "bidi",
        };
        CatalogEntry {
            name: m.name.clone(),
            kind: kind.into(),
            idempotent: m.idempotent,
        }
    }
}

fn localhost() -> String {
    "localhost".into()
}

/// What a server writes about itself in etcd (as JSON, one key per server).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerRecord {
    /// Region of the server.
    pub region: String,
    /// Unique id of the server (the last part of its key).
    pub server_id: String,
    /// Address clients dial (UDP).
    pub addr: SocketAddr,
    /// Name the server's certificate carries. Default `localhost`.
    #[serde(default = "localhost")]
    pub server_name: String,
    /// SHA-256 of the server's certificate (DER), lowercase hex, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_sha256: Option<String>,
    /// The methods the server serves.
    #[serde(default)]
    pub methods: Vec<CatalogEntry>,
    /// Calls in flight when the record was last written.
    #[serde(default)]
    pub load: u64,
}

impl ServerRecord {
    /// A record with no catalog; the id is the address.
    pub fn new(
        region: impl Into<String>,
        addr: SocketAddr,
        server_name: impl Into<String>,
    ) -> ServerRecord {
        ServerRecord {
            region: region.into(),
            server_id: addr.to_string(),
            addr,
            server_name: server_name.into(),
            cert_sha256: None,
            methods: Vec::new(),
            load: 0,
        }
    }

    /// A record for a running server: its region, catalog and load, reachable at
    /// `advertised` (its own address, or the address clients reach it at, e.g. behind a
    /// NAT or a link emulator) under the certificate name `server_name`.
    pub fn for_server(
        server: &Server,
        advertised: SocketAddr,
        server_name: impl Into<String>,
    ) -> ServerRecord {
        let mut r = ServerRecord::new(server.region(), advertised, server_name);
        r.refresh_from(server);
        r
    }

    /// Sets the server id (default: the address).
    pub fn server_id(mut self, id: impl Into<String>) -> Self {
        self.server_id = id.into();
        self
    }

    /// Records the fingerprint (SHA-256) of the server's certificate.
    pub fn certificate(mut self, cert: &CertificateDer<'_>) -> Self {
        self.cert_sha256 = sha256_hex(cert.as_ref());
        self
    }

    /// Copies the catalog and load of a running server.
    pub fn refresh_from(&mut self, server: &Server) {
        self.methods = server.catalog().iter().map(CatalogEntry::from).collect();
        self.load = server.stats().in_flight as u64;
    }

    /// The endpoint a client dials.
    pub fn endpoint(&self) -> ServerEndpoint {
        ServerEndpoint::new(self.addr, self.server_name.clone())
    }

    fn check(&self) -> Result<(), String> {
        if self.region.is_empty() || self.server_id.is_empty() {
            return Err("empty region or server id".into());
        }
        if self.region.contains('/') || self.server_id.contains('/') {
            return Err("region and server id must not contain '/'".into());
        }
        Ok(())
    }
}

fn sha256_hex(data: &[u8]) -> Option<String> {
    let suite = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256;
    let digest = suite.tls13()?.common.hash_provider.hash(data);
    Some(digest.as_ref().iter().map(|b| format!("{b:02x}")).collect())
}

/// What ends a registration task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Revoke the lease: the key goes at once.
    Revoke,
    /// Just stop keeping the lease alive (as a crash would): the key goes at lease expiry.
    Abandon,
}

/// A server's entry in etcd, kept alive until [`EtcdRegistration::deregister`] (or drop,
/// which revokes the lease in the background).
///
/// While etcd is unreachable the registration keeps trying; when it comes back it renews
/// the same lease if it is still alive, or grants a new one and writes the key again.
#[derive(Debug)]
pub struct EtcdRegistration {
    key: String,
    lease: Arc<AtomicI64>,
    record: watch::Sender<ServerRecord>,
    stop: Option<oneshot::Sender<Stop>>,
    task: Option<JoinHandle<()>>,
}

impl EtcdRegistration {
    /// Registers `record`: grants a lease, writes the key, and keeps the lease alive in
    /// the background (on the current tokio runtime). Fails if etcd does not answer
    /// within the connect timeout.
    pub async fn register(
        config: &EtcdConfig,
        record: ServerRecord,
    ) -> Result<EtcdRegistration, EtcdError> {
        let config = config.clone().validated()?;
        record
            .check()
            .map_err(|e| EtcdError::Config(format!("bad server record: {e}")))?;
        let key = format!("{}{}/{}", config.prefix, record.region, record.server_id);
        let mut client = config.client().await?;
        let lease = grant_and_put(&mut client, &config, &key, &record).await?;
        info!(key = %key, lease, "registered in etcd");
        let lease_cell = Arc::new(AtomicI64::new(lease));
        let (record_tx, record_rx) = watch::channel(record);
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(keep_registered(
            client,
            config,
            key.clone(),
            lease_cell.clone(),
            record_rx,
            stop_rx,
        ));
        Ok(EtcdRegistration {
            key,
            lease: lease_cell,
            record: record_tx,
            stop: Some(stop_tx),
            task: Some(task),
        })
    }

    /// The key the server is registered under.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The current lease id (it changes if the lease expired during an etcd outage).
    pub fn lease_id(&self) -> i64 {
        self.lease.load(Ordering::Relaxed)
    }

    /// The record as last written (or about to be).
    pub fn record(&self) -> ServerRecord {
        self.record.borrow().clone()
    }

    /// Changes the record; it is written again if it changed.
    pub fn update(&self, f: impl FnOnce(&mut ServerRecord)) {
        self.record.send_if_modified(|r| {
            let before = r.clone();
            f(r);
            // Key fields stay: the key is fixed for the registration's life.
            r.region = before.region.clone();
            r.server_id = before.server_id.clone();
            *r != before
        });
    }

    /// Copies a running server's catalog and load into the record (written if changed).
    pub fn refresh_from(&self, server: &Server) {
        self.update(|r| r.refresh_from(server));
    }

    /// Removes the server from etcd now (revokes the lease) and stops. Bounded by the
    /// connect timeout; if etcd is unreachable the key goes at lease expiry instead.
    pub async fn deregister(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(Stop::Revoke);
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Stops keeping the lease alive without revoking it, as a crashed server would: the
    /// key stays until the lease expires (one TTL at most). For failure tests.
    pub fn abandon(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(Stop::Abandon);
        }
    }
}

impl Drop for EtcdRegistration {
    fn drop(&mut self) {
        // The task revokes the lease on its own; nothing to wait for here.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(Stop::Revoke);
        }
    }
}

async fn put_record(
    client: &mut Client,
    config: &EtcdConfig,
    key: &str,
    record: &ServerRecord,
    lease: i64,
) -> Result<(), EtcdError> {
    let value = serde_json::to_vec(record)
        .map_err(|e| EtcdError::Config(format!("cannot encode the record: {e}")))?;
    bounded(
        config.connect_timeout,
        "put",
        client.put(key, value, Some(PutOptions::new().with_lease(lease))),
    )
    .await
    .map(|_| ())
}

async fn grant_and_put(
    client: &mut Client,
    config: &EtcdConfig,
    key: &str,
    record: &ServerRecord,
) -> Result<i64, EtcdError> {
    let lease = bounded(
        config.connect_timeout,
        "lease grant",
        client.lease_grant(config.ttl_secs(), None),
    )
    .await?
    .id();
    put_record(client, config, key, record, lease).await?;
    Ok(lease)
}

/// The registration's background task: keep-alives, record updates, re-registration
/// after an outage, and the final revoke.
async fn keep_registered(
    mut client: Client,
    config: EtcdConfig,
    key: String,
    lease: Arc<AtomicI64>,
    mut record: watch::Receiver<ServerRecord>,
    mut stop: oneshot::Receiver<Stop>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut fresh = true;
    let reason = loop {
        let session = keep_alive_session(&mut client, &config, &key, &lease, &mut record, fresh);
        tokio::select! {
            s = &mut stop => break s.unwrap_or(Stop::Revoke),
            r = session => {
                fresh = false;
                match r {
                    Ok(()) => backoff = Duration::from_millis(100),
                    Err(e) => {
                        warn!(key = %key, error = %e, "etcd registration interrupted, retrying");
                    }
                }
            }
        }
        tokio::select! {
            s = &mut stop => break s.unwrap_or(Stop::Revoke),
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(1));
    };
    if reason == Stop::Revoke {
        let id = lease.load(Ordering::Relaxed);
        match bounded(
            config.connect_timeout,
            "lease revoke",
            client.lease_revoke(id),
        )
        .await
        {
            Ok(_) => info!(key = %key, "deregistered from etcd"),
            Err(e) => {
                warn!(key = %key, error = %e, "cannot revoke the lease; the key goes at expiry")
            }
        }
    } else {
        debug!(key = %key, "registration abandoned; the key goes at lease expiry");
    }
}

/// One stretch of keep-alives on one stream; returns when the stream breaks or the lease
/// is gone. `fresh`: the lease and key were just written.
async fn keep_alive_session(
    client: &mut Client,
    config: &EtcdConfig,
    key: &str,
    lease: &AtomicI64,
    record: &mut watch::Receiver<ServerRecord>,
    fresh: bool,
) -> Result<(), EtcdError> {
    let limit = config.connect_timeout;
    let mut id = lease.load(Ordering::Relaxed);
    let (mut keeper, mut stream) =
        bounded(limit, "lease keep-alive", client.lease_keep_alive(id)).await?;
    if !fresh {
        // Back after an interruption: is the lease still alive?
        bounded(limit, "lease keep-alive", keeper.keep_alive()).await?;
        let alive = match bounded(limit, "lease keep-alive", stream.message()).await? {
            Some(resp) => resp.ttl() > 0,
            None => return Err(EtcdError::Timeout("lease keep-alive stream closed".into())),
        };
        let current = record.borrow_and_update().clone();
        if alive {
            // The key may have been lost with a restored snapshot: write it again.
            put_record(client, config, key, &current, id).await?;
        } else {
            id = grant_and_put(client, config, key, &current).await?;
            lease.store(id, Ordering::Relaxed);
            info!(key = %key, lease = id, "lease had expired: registered again");
            let (k, s) = bounded(limit, "lease keep-alive", client.lease_keep_alive(id)).await?;
            keeper = k;
            stream = s;
        }
    }
    let period = (config.lease_ttl / 3).max(Duration::from_millis(300));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_answer = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if last_answer.elapsed() > config.lease_ttl {
                    return Err(EtcdError::Timeout("lease keep-alive".into()));
                }
                bounded(limit, "lease keep-alive", keeper.keep_alive()).await?;
            }
            msg = stream.message() => match msg.map_err(etcd_err("lease keep-alive"))? {
                Some(resp) if resp.ttl() > 0 => last_answer = tokio::time::Instant::now(),
                Some(_) => {
                    // Expired (etcd was away longer than the TTL): start over.
                    let current = record.borrow_and_update().clone();
                    let id = grant_and_put(client, config, key, &current).await?;
                    lease.store(id, Ordering::Relaxed);
                    info!(key = %key, lease = id, "lease had expired: registered again");
                    return Ok(());
                }
                None => return Err(EtcdError::Timeout("lease keep-alive stream closed".into())),
            },
            changed = record.changed() => {
                if changed.is_err() {
                    // The registration handle is gone; the stop signal follows.
                    std::future::pending::<()>().await;
                }
                let current = record.borrow_and_update().clone();
                put_record(client, config, key, &current, lease.load(Ordering::Relaxed)).await?;
            }
        }
    }
}

/// Membership that follows an etcd key prefix: a [`Discovery`] for
/// [`RegionClient`](super::RegionClient) and proxies.
///
/// Dropping it stops the watch.
pub struct EtcdDiscovery {
    map: Arc<watch::Sender<RegionMap>>,
    records: Arc<Mutex<BTreeMap<Vec<u8>, ServerRecord>>>,
    connected: Arc<AtomicBool>,
    revision: Arc<AtomicI64>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for EtcdDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdDiscovery")
            .field("connected", &self.is_connected())
            .field("revision", &self.revision())
            .finish_non_exhaustive()
    }
}

/// The state the watch task shares with the handle.
#[derive(Clone)]
struct Shared {
    base: RegionMap,
    map: Arc<watch::Sender<RegionMap>>,
    records: Arc<Mutex<BTreeMap<Vec<u8>, ServerRecord>>>,
    connected: Arc<AtomicBool>,
    revision: Arc<AtomicI64>,
}

impl Shared {
    fn records(&self) -> std::sync::MutexGuard<'_, BTreeMap<Vec<u8>, ServerRecord>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Rebuilds the region map from the base map and the records, and publishes it if it
    /// changed.
    fn publish(&self) {
        let mut map = self.base.clone();
        for r in self.records().values() {
            map.add_server(&r.region, r.endpoint());
        }
        self.map.send_if_modified(|m| {
            if *m == map {
                false
            } else {
                *m = map;
                true
            }
        });
    }

    /// Applies one key's new value; a value that does not parse counts as no server.
    fn apply_put(&self, key: &[u8], value: &[u8]) {
        let parsed = serde_json::from_slice::<ServerRecord>(value)
            .map_err(|e| e.to_string())
            .and_then(|r| r.check().map(|()| r));
        let mut records = self.records();
        match parsed {
            Ok(r) => {
                records.insert(key.to_vec(), r);
            }
            Err(e) => {
                warn!(key = %String::from_utf8_lossy(key), error = %e, "skipping a malformed server record in etcd");
                records.remove(key);
            }
        }
    }
}

impl EtcdDiscovery {
    /// Reads the servers registered in etcd and follows them. Fails if etcd cannot be
    /// read within the connect timeout; once started, outages are ridden out with the last
    /// known membership.
    pub async fn connect(config: EtcdConfig) -> Result<Arc<EtcdDiscovery>, EtcdError> {
        Self::connect_with_base(config, RegionMap::new()).await
    }

    /// As [`connect`](Self::connect), with the regions and servers of `base` (e.g. the
    /// `[[region]]` lists of a region file) always listed besides those in etcd.
    pub async fn connect_with_base(
        config: EtcdConfig,
        base: RegionMap,
    ) -> Result<Arc<EtcdDiscovery>, EtcdError> {
        let config = config.validated()?;
        let mut client = config.client().await?;
        let shared = Shared {
            map: Arc::new(watch::channel(base.clone()).0),
            base,
            records: Arc::new(Mutex::new(BTreeMap::new())),
            connected: Arc::new(AtomicBool::new(false)),
            revision: Arc::new(AtomicI64::new(0)),
        };
        read_all(&mut client, &config, &shared).await?;
        let task = tokio::spawn(follow(client, config, shared.clone()));
        Ok(Arc::new(EtcdDiscovery {
            map: shared.map,
            records: shared.records,
            connected: shared.connected,
            revision: shared.revision,
            task,
        }))
    }

    /// Reads the region file at `path`: with an `[etcd]` table, its servers come from etcd
    /// plus the file's `[[region]]` lists; without one, only from the lists (no etcd).
    pub async fn from_region_file(path: impl AsRef<Path>) -> Result<Arc<dyn Discovery>, EtcdError> {
        let path = path.as_ref();
        let base = RegionMap::from_toml_file(path).map_err(|e| EtcdError::Config(e.to_string()))?;
        match EtcdConfig::from_toml_file(path)? {
            Some(config) => Ok(Self::connect_with_base(config, base).await?),
            None => Ok(super::StaticDiscovery::new(base)),
        }
    }

    /// Every server record now known, in key order (with catalogs and load, for tools
    /// and proxies).
    pub fn records(&self) -> Vec<ServerRecord> {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The current region map.
    pub fn snapshot(&self) -> RegionMap {
        self.map.borrow().clone()
    }

    /// Whether the watch on etcd is established now (if not, the last known membership is
    /// in force).
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// The last etcd revision applied.
    pub fn revision(&self) -> i64 {
        self.revision.load(Ordering::Relaxed)
    }
}

impl Drop for EtcdDiscovery {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Discovery for EtcdDiscovery {
    fn watch(&self) -> watch::Receiver<RegionMap> {
        self.map.subscribe()
    }
}

/// Reads the whole prefix and replaces the records with it.
async fn read_all(
    client: &mut Client,
    config: &EtcdConfig,
    shared: &Shared,
) -> Result<(), EtcdError> {
    let resp = bounded(
        config.connect_timeout,
        "read the prefix",
        client.get(
            config.prefix.as_str(),
            Some(GetOptions::new().with_prefix()),
        ),
    )
    .await?;
    let revision = resp.header().map_or(0, |h| h.revision());
    shared.records().clear();
    for kv in resp.kvs() {
        shared.apply_put(kv.key(), kv.value());
    }
    shared.revision.store(revision, Ordering::Relaxed);
    shared.connected.store(true, Ordering::Relaxed);
    shared.publish();
    debug!(
        revision,
        servers = shared.records().len(),
        "read the etcd prefix"
    );
    Ok(())
}

/// The discovery's background task: watch from the last revision, reconnect with backoff,
/// read the prefix again when the revision was compacted.
async fn follow(mut client: Client, config: EtcdConfig, shared: Shared) {
    let mut backoff = Duration::from_millis(100);
    let mut need_read = false;
    loop {
        if need_read {
            match read_all(&mut client, &config, &shared).await {
                Ok(()) => need_read = false,
                Err(e) => {
                    shared.connected.store(false, Ordering::Relaxed);
                    debug!(error = %e, "etcd unreachable; keeping the last known membership");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            }
        }
        let from = shared.revision.load(Ordering::Relaxed) + 1;
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(from)
            .with_progress_notify();
        match bounded(
            config.connect_timeout,
            "watch",
            client.watch(config.prefix.as_str(), Some(options)),
        )
        .await
        {
            Ok(mut stream) => loop {
                match stream.message().await {
                    Ok(Some(resp)) => {
                        shared.connected.store(true, Ordering::Relaxed);
                        backoff = Duration::from_millis(100);
                        if resp.compact_revision() > 0 || resp.canceled() {
                            info!(
                                compacted = resp.compact_revision(),
                                reason = resp.cancel_reason(),
                                "etcd watch cancelled; reading the prefix again"
                            );
                            need_read = true;
                            break;
                        }
                        let behind = resp
                            .header()
                            .is_some_and(|h| h.revision() < from.saturating_sub(1));
                        if resp.created() && behind {
                            // etcd is at an older revision than we applied: its data was
                            // replaced (restored or wiped). Only a fresh read is right.
                            info!("etcd went back in revisions; reading the prefix again");
                            need_read = true;
                            break;
                        }
                        let mut last = 0;
                        for event in resp.events() {
                            let Some(kv) = event.kv() else { continue };
                            match event.event_type() {
                                EventType::Put => shared.apply_put(kv.key(), kv.value()),
                                EventType::Delete => {
                                    shared.records().remove(kv.key());
                                }
                            }
                            last = last.max(kv.mod_revision());
                        }
                        if last > 0 {
                            shared.revision.fetch_max(last, Ordering::Relaxed);
                            shared.publish();
                        }
                    }
                    Ok(None) => {
                        debug!("etcd watch stream ended");
                        break;
                    }
                    Err(e) => {
                        debug!(error = %e, "etcd watch broke; keeping the last known membership");
                        break;
                    }
                }
            },
            Err(e) => debug!(error = %e, "cannot watch etcd; keeping the last known membership"),
        }
        shared.connected.store(false, Ordering::Relaxed);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_etcd_table_of_a_region_file() {
        let text = r#"
            [[region]]
            name = "near"
            servers = [{ addr = "127.0.0.1:7000" }]

            [etcd]
            endpoints = ["http://127.0.0.1:2379"]
            lease_ttl = 4
            prefix = "/svc"
        "#;
        let c = EtcdConfig::from_toml_str(text).unwrap().unwrap();
        assert_eq!(c.endpoints, ["http://127.0.0.1:2379"]);
        assert_eq!(c.lease_ttl, Duration::from_secs(4));
        assert_eq!(c.prefix, "/svc/");
        assert!(c.tls.is_none());
        // The region list still parses, the table is ignored there.
        assert_eq!(RegionMap::from_toml_str(text).unwrap().regions.len(), 1);
        // No table: no etcd.
        assert!(EtcdConfig::from_toml_str("[[region]]\nname = \"a\"\n")
            .unwrap()
            .is_none());
    }

    #[test]
    fn bad_etcd_tables_are_clear_errors() {
        for bad in [
            "[etcd]\nendpoints = []\n",
            "[etcd]\nendpoints = [\"http://x:1\"]\nlease_ttl = 0\n",
            "[etcd]\nendpoints = [\"http://x:1\"]\nttl = 3\n",
            "[etcd]\nendpoints = \"http://x:1\"\n",
        ] {
            assert!(EtcdConfig::from_toml_str(bad).is_err(), "{bad}");
        }
        let tls = "[etcd]\nendpoints = [\"https://x:1\"]\n[etcd.tls]\ncert = \"c.pem\"\n";
        let c = EtcdConfig::from_toml_str(tls).unwrap().unwrap();
        assert!(c.tls.unwrap().options().is_err());
    }

    #[test]
    fn ttl_is_whole_seconds_rounded_up() {
        let c = EtcdConfig::new(["http://x:1"]);
        assert_eq!(
            c.clone().lease_ttl(Duration::from_millis(1500)).ttl_secs(),
            2
        );
        assert_eq!(c.clone().lease_ttl(Duration::ZERO).ttl_secs(), 1);
        assert_eq!(c.lease_ttl(Duration::from_secs(7)).ttl_secs(), 7);
    }

    #[test]
    fn records_round_trip_and_bad_ones_are_refused() {
        let addr: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let r = ServerRecord::new("eu", addr, "eu.example")
            .server_id("eu-1")
            .certificate(&CertificateDer::from(vec![1u8, 2, 3]));
        assert_eq!(r.cert_sha256.as_deref().map(str::len), Some(64));
        let json = serde_json::to_vec(&r).unwrap();
        let back: ServerRecord = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, r);
        // Minimal records from other tools parse, with defaults.
        let min: ServerRecord =
            serde_json::from_str(r#"{"region":"a","server_id":"b","addr":"127.0.0.1:1"}"#).unwrap();
        assert_eq!(min.server_name, "localhost");
        assert!(min.check().is_ok());
        assert!(ServerRecord::new("a/b", addr, "x").check().is_err());

        let shared = Shared {
            base: RegionMap::new(),
            map: Arc::new(watch::channel(RegionMap::new()).0),
            records: Arc::default(),
            connected: Arc::default(),
            revision: Arc::default(),
        };
        shared.apply_put(b"/m/eu/eu-1", &json);
        shared.publish();
        assert_eq!(shared.map.borrow().region_of(addr), Some("eu"));
        // A malformed value replaces the record: the key no longer names a server.
        shared.apply_put(b"/m/eu/eu-1", b"{not json");
        shared.apply_put(b"/m/eu/eu-2", &[0xff, 0x00]);
        shared.publish();
        assert_eq!(shared.map.borrow().region_of(addr), None);
    }
}
