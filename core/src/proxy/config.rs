//! [`ProxyConfig`]: the proxy's TOML configuration.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::region::{Region, RegionMap};
use crate::status::{toml_error, Error};
use crate::transport::{ClientTls, ServerTls};

/// A proxy's configuration, usually read from TOML:
///
/// ```toml
/// listen = "127.0.0.1:7400"
/// proxy_region = "edge"        # where the proxy runs, announced in its HELLO
/// home_region = "eu-west"      # optional: preferred upstream region
/// hedge = ["lookup"]           # optional: idempotent methods to hedge
/// max_calls_per_client = 256   # optional: calls one client connection may have open
///
/// [tls]
/// cert = "proxy.pem"           # the proxy's certificate chain, shown to clients
/// key = "proxy.key"
/// ca = "ca.pem"                # roots that upstream servers' certificates lead to
///
/// [[region]]
/// name = "eu-west"
/// servers = [{ addr = "10.0.0.1:7000", server_name = "eu-west.example.com" }]
///
/// [etcd]                       # optional (feature `etcd`): servers registered in etcd,
/// endpoints = ["http://10.0.0.9:2379"]   # followed live, besides the lists above
/// ```
///
/// Relative file names are read from the configuration file's directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Address the proxy listens on: `IP:port`, or `host:port` resolved when it binds
    /// (the first address the name resolves to).
    pub listen: crate::discovery::ServerAddr,
    /// Where the proxy runs, announced in its HELLO (default `proxy`).
    #[serde(default = "default_region")]
    pub proxy_region: String,
    /// Id announced in the HELLO (default: the bound address).
    #[serde(default)]
    pub server_id: Option<String>,
    /// Upstream region preferred whenever it is healthy.
    #[serde(default)]
    pub home_region: Option<String>,
    /// Methods whose calls are hedged upstream.
    #[serde(default)]
    pub hedge: Vec<String>,
    /// Calls one client connection may have in flight (see
    /// [`ProxyBuilder::max_calls_per_client`](super::ProxyBuilder::max_calls_per_client);
    /// default 256).
    #[serde(default)]
    pub max_calls_per_client: Option<u32>,
    /// Log one line per forwarded call (see
    /// [`ProxyBuilder::access_log`](super::ProxyBuilder::access_log); default off).
    #[serde(default)]
    pub access_log: bool,
    /// Certificates.
    pub tls: ProxyTlsConfig,
    /// The upstream regions and their servers.
    #[serde(default, rename = "region")]
    pub regions: Vec<Region>,
    /// Upstream servers registered in etcd, followed live (besides the `[[region]]` lists).
    #[cfg(feature = "etcd")]
    #[serde(default)]
    pub etcd: Option<crate::region::EtcdConfig>,
    /// Without the `etcd` feature an `[etcd]` table is kept only to be refused: a proxy
    /// must not start while ignoring the registry its configuration names.
    #[cfg(not(feature = "etcd"))]
    #[serde(default)]
    pub etcd: Option<toml::Table>,
}

fn default_region() -> String {
    "proxy".into()
}

/// The `[tls]` table of a [`ProxyConfig`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyTlsConfig {
    /// PEM certificate chain the proxy presents to clients.
    pub cert: PathBuf,
    /// PEM private key of that certificate.
    pub key: PathBuf,
    /// PEM roots trusted for upstream servers.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Mutual TLS with callers: only clients whose certificates lead to these PEM roots
    /// are served (and handlers upstream still see the proxy's identity, not theirs).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// Mutual TLS upstream: the PEM certificate chain the proxy presents to upstream
    /// servers that require client certificates (needs `upstream_key`).
    #[serde(default)]
    pub upstream_cert: Option<PathBuf>,
    /// The private key of `upstream_cert`.
    #[serde(default)]
    pub upstream_key: Option<PathBuf>,
}

impl ProxyTlsConfig {
    /// Rereads the files named here into a proxy's TLS settings (see
    /// [`Proxy::reload_tls`](super::Proxy::reload_tls)): `server` (what callers see and
    /// which client CAs it accepts) and `upstream` (whom it trusts upstream and the
    /// certificate it presents there; `None` for a region client trusting this process's
    /// servers, which has no files). Every file set is tried; the first failure is
    /// returned and leaves its own setting as it was.
    pub fn reload(&self, server: &ServerTls, upstream: Option<&ClientTls>) -> Result<(), Error> {
        let mut first_error = None;
        let mut note = |r: Result<(), Error>| {
            if let Err(e) = r {
                first_error.get_or_insert(e);
            }
        };
        note(server.reload_pem_files(&self.cert, &self.key));
        if let Some(ca) = &self.client_ca {
            note(server.reload_client_roots_pem_file(ca));
        }
        if let Some(upstream) = upstream {
            if let Some(ca) = &self.ca {
                note(upstream.reload_roots_pem_file(ca));
            }
            if let (Some(cert), Some(key)) = (&self.upstream_cert, &self.upstream_key) {
                note(upstream.reload_identity_pem_files(cert, key));
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl ProxyConfig {
    /// Parses TOML; relative file names stay relative to the current directory.
    ///
    /// Unknown keys are errors with their line and column. So is a `home_region` that no
    /// `[[region]]` names, unless an `[etcd]` table may bring more regions (then the proxy
    /// warns at start if etcd does not list it either). Whether `hedge` names idempotent
    /// methods that upstream servers serve is known only from their catalogs, after they
    /// connect: the proxy then logs a warning for each one that can never be hedged.
    pub fn from_toml_str(text: &str) -> Result<ProxyConfig, Error> {
        let cfg: ProxyConfig = toml::from_str(text)
            .map_err(|e| Error::Config(format!("proxy configuration: {}", toml_error(text, &e))))?;
        // The region part follows the region file's rules (unique, non-empty names).
        RegionMap {
            regions: cfg.regions.clone(),
        }
        .validate()?;
        if let Some(home) = &cfg.home_region {
            let known = cfg.regions.iter().any(|r| &r.name == home);
            if !known && cfg.etcd.is_none() {
                let names: Vec<&str> = cfg.regions.iter().map(|r| r.name.as_str()).collect();
                return Err(Error::Config(format!(
                    "proxy configuration: home_region {home:?} is not a region of the \
                     configuration (its [[region]] tables name {})",
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                )));
            }
        }
        Ok(cfg)
    }

    /// Reads a TOML file; relative file names are taken from the file's directory.
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<ProxyConfig, Error> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            context: format!("cannot read {}", path.display()),
            source,
        })?;
        let mut cfg = ProxyConfig::from_toml_str(&text)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        fix(&mut cfg.tls.cert);
        fix(&mut cfg.tls.key);
        for p in [
            &mut cfg.tls.ca,
            &mut cfg.tls.client_ca,
            &mut cfg.tls.upstream_cert,
            &mut cfg.tls.upstream_key,
        ]
        .into_iter()
        .flatten()
        {
            fix(p);
        }
        Ok(cfg)
    }
}
