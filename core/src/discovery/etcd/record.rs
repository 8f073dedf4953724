//! What a server writes under its key: a JSON record of its address, certificate and catalog.

use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

use crate::discovery::{parse_sha256, Registrant, ServerAddr, ServerEndpoint};
use crate::wire::{MethodInfo, MethodKind};

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

/// What a server writes about itself in etcd (as JSON, one key per server).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerRecord {
    /// Region of the server.
    pub region: String,
    /// Unique id of the server (the last part of its key).
    pub server_id: String,
    /// Address clients dial (UDP): an IP literal, or a host name resolved at each dial.
    pub addr: ServerAddr,
    /// Name the server's certificate carries. When absent, the host of `addr`.
    ///
    /// Written by whoever can write the etcd prefix: a client that must not let the
    /// registry choose the verified name sets it per region on its side
    /// ([`RegionClientBuilder::expect_server_name`](crate::region::RegionClientBuilder::expect_server_name)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// SHA-256 of the server's end-entity certificate (DER), lowercase hex, if known.
    /// Pinning clients ([`RegionClientBuilder::pin_cert_sha256`](crate::region::RegionClientBuilder::pin_cert_sha256))
    /// refuse a server that presents another certificate, or publishes none.
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
        addr: impl Into<ServerAddr>,
        server_name: impl Into<String>,
    ) -> ServerRecord {
        let addr = addr.into();
        ServerRecord {
            region: region.into(),
            server_id: addr.to_string(),
            addr,
            server_name: Some(server_name.into()),
            cert_sha256: None,
            methods: Vec::new(),
            load: 0,
        }
    }

    /// A record for a running server: its region, catalog and load, reachable at
    /// `advertised` (its own address, or the address clients reach it at, e.g. behind a
    /// NAT or a link emulator) under the certificate name `server_name`.
    pub fn for_server(
        server: &impl Registrant,
        advertised: impl Into<ServerAddr>,
        server_name: impl Into<String>,
    ) -> ServerRecord {
        let mut r = ServerRecord::new(server.region(), advertised, server_name);
        r.refresh_from(server);
        r
    }

    /// Leaves the name out of the record: clients then check the certificate against the
    /// host of the address (a DNS name, or an IP address).
    pub fn named_by_host(mut self) -> Self {
        self.server_name = None;
        self
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
    pub fn refresh_from(&mut self, server: &impl Registrant) {
        self.methods = server.catalog().iter().map(CatalogEntry::from).collect();
        self.load = server.load();
    }

    /// The endpoint a client dials: the record's name (or the host of its address) and its
    /// certificate hash, if it has one.
    pub fn endpoint(&self) -> ServerEndpoint {
        let mut ep = match &self.server_name {
            Some(name) => ServerEndpoint::new(self.addr.clone(), name.clone()),
            None => ServerEndpoint::at(self.addr.clone()),
        };
        ep.cert_sha256 = self
            .cert_sha256
            .as_deref()
            .and_then(|h| parse_sha256(h).ok());
        ep
    }

    pub(super) fn check(&self) -> Result<(), String> {
        if self.region.is_empty() || self.server_id.is_empty() {
            return Err("empty region or server id".into());
        }
        if self.region.contains('/') || self.server_id.contains('/') {
            return Err("region and server id must not contain '/'".into());
        }
        if self
            .server_name
            .as_deref()
            .is_some_and(|n| n.trim().is_empty())
        {
            return Err("empty server_name".into());
        }
        if let Some(hash) = &self.cert_sha256 {
            parse_sha256(hash).map_err(|why| format!("bad cert_sha256: {why}"))?;
        }
        Ok(())
    }
}

fn sha256_hex(data: &[u8]) -> Option<String> {
    let suite = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256;
    let digest = suite.tls13()?.common.hash_provider.hash(data);
    Some(digest.as_ref().iter().map(|b| format!("{b:02x}")).collect())
}
