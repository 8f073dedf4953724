//! Where the etcd cluster is: endpoints, key prefix, lease TTL, TLS; from code or TOML.

use std::path::{Path, PathBuf};
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use serde::Deserialize;

use super::{bounded, EtcdError};

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
    pub(super) fn options(&self) -> Result<TlsOptions, EtcdError> {
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
/// docs](super)).
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
    pub(super) fn validated(mut self) -> Result<EtcdConfig, EtcdError> {
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
    pub(super) fn ttl_secs(&self) -> i64 {
        let ms = self.lease_ttl.as_millis().max(1);
        i64::try_from(ms.div_ceil(1000)).unwrap_or(i64::MAX)
    }

    pub(super) async fn client(&self) -> Result<Client, EtcdError> {
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
