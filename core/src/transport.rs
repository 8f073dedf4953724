//! QUIC endpoints over rustls: transport limits, TLS identities and trust, dev certificates.
//!
//! Every limit that decides how much a peer can make us buffer is set here on purpose, in
//! one [`TransportConfig`] with documented defaults. quinn's own defaults allow roughly
//! 100 streams x 1.25 MB of receive window and an unbounded connection window, about
//! 125 MB buffered per connection; Meridian caps a connection at
//! [`TransportConfig::DEFAULT_CONNECTION_WINDOW`] instead.
//!
//! TLS is always on (TLS 1.3 only, ALPN `meridian/1`). AES-128-GCM-SHA256 is offered first:
//! ring's default prefers AES-256-GCM-SHA384, and SHA-384 has no hardware support on many
//! CPUs, which shows in handshake CPU time.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::codec::DecodeLimits;
use crate::status::Error;
use crate::wire::{WireLimits, ALPN};

/// Limits and timers of a QUIC connection, shared by clients and servers.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// Concurrent calls (bidirectional streams) the peer may open to us. A caller beyond it
    /// waits for stream credit, within its deadline. Default 1024.
    pub max_concurrent_streams: u32,
    /// Bytes the peer may send on one stream before we read them. Default 2 MiB.
    pub stream_receive_window: u32,
    /// Bytes the peer may send on a whole connection before we read them: the cap on what
    /// one connection can make us buffer. Default 16 MiB.
    pub connection_receive_window: u32,
    /// Bytes we buffer for sending on a connection. Default 16 MiB.
    pub send_window: u64,
    /// A connection with no traffic for this long is closed. Default 30 s.
    pub idle_timeout: Duration,
    /// Ping an idle connection this often so it stays open and its RTT stays fresh.
    /// Default 5 s; `None` disables.
    pub keep_alive_interval: Option<Duration>,
    /// Time allowed for a QUIC + TLS handshake. Default 10 s.
    pub handshake_timeout: Duration,
    /// Frame and metadata size limits.
    pub wire: WireLimits,
    /// Nesting depth and size limits for [`crate::codec::Value`] messages.
    pub value: DecodeLimits,
}

impl TransportConfig {
    /// Default [`TransportConfig::max_concurrent_streams`].
    pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 1024;
    /// Default [`TransportConfig::stream_receive_window`].
    pub const DEFAULT_STREAM_WINDOW: u32 = 2 * 1024 * 1024;
    /// Default [`TransportConfig::connection_receive_window`].
    pub const DEFAULT_CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;

    pub(crate) fn to_quinn(&self) -> Arc<quinn::TransportConfig> {
        let mut t = quinn::TransportConfig::default();
        t.max_concurrent_bidi_streams(self.max_concurrent_streams.into())
            // One control stream each way (the HELLO) and a little slack.
            .max_concurrent_uni_streams(4u32.into())
            .stream_receive_window(self.stream_receive_window.into())
            .receive_window(self.connection_receive_window.into())
            .send_window(self.send_window)
            .keep_alive_interval(self.keep_alive_interval);
        // An idle timeout over quinn's varint range disables it; keep it bounded instead.
        let idle = quinn::IdleTimeout::try_from(self.idle_timeout)
            .unwrap_or_else(|_| quinn::IdleTimeout::from(quinn::VarInt::from_u32(30_000)));
        t.max_idle_timeout(Some(idle));
        Arc::new(t)
    }
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            max_concurrent_streams: Self::DEFAULT_MAX_CONCURRENT_STREAMS,
            stream_receive_window: Self::DEFAULT_STREAM_WINDOW,
            connection_receive_window: Self::DEFAULT_CONNECTION_WINDOW,
            send_window: u64::from(Self::DEFAULT_CONNECTION_WINDOW),
            idle_timeout: Duration::from_secs(30),
            keep_alive_interval: Some(Duration::from_secs(5)),
            handshake_timeout: Duration::from_secs(10),
            wire: WireLimits::default(),
            value: DecodeLimits::default(),
        }
    }
}

/// The crypto provider Meridian uses: ring, TLS 1.3 suites with AES-128-GCM-SHA256 first.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::cipher_suite as cs;
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites = vec![
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
        cs::TLS13_AES_256_GCM_SHA384,
    ];
    Arc::new(p)
}

fn read_file(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Io {
        context: format!("cannot read {}", path.display()),
        source,
    })
}

fn certs_from_pem(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Config(format!("{what}: bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(Error::Config(format!("{what}: no certificate found")));
    }
    Ok(certs)
}

fn key_from_pem(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>, Error> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| Error::Config(format!("{what}: {e}")))
}

/// A certificate chain and its private key.
#[derive(Debug)]
pub struct Identity {
    /// End-entity certificate first, then intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key of the end-entity certificate.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl Identity {
    /// Loads a PEM certificate chain and a PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem_files(cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Result<Self, Error> {
        let (cert, key) = (cert.as_ref(), key.as_ref());
        Ok(Identity {
            chain: certs_from_pem(&read_file(cert)?, &cert.display().to_string())?,
            key: key_from_pem(&read_file(key)?, &key.display().to_string())?,
        })
    }

    /// The end-entity certificate.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }
}

/// A small certificate authority for local and development setups, made with rcgen.
///
/// It issues server certificates (for names such as `localhost`) and client certificates
/// (for mutual TLS); clients trust the CA's certificate. Never use it in production: its
/// key lives in memory and nothing revokes what it issues.
pub struct DevCa {
    params: rcgen::CertificateParams,
    key: rcgen::KeyPair,
    cert: CertificateDer<'static>,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa").finish_non_exhaustive()
    }
}

impl DevCa {
    /// Generates a new CA key and self-signed CA certificate.
    pub fn new() -> Result<DevCa, Error> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(rcgen_err)?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Meridian dev CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().map_err(rcgen_err)?;
        let cert = params.self_signed(&key).map_err(rcgen_err)?.der().clone();
        Ok(DevCa { params, key, cert })
    }

    /// The CA certificate clients and servers trust.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The CA certificate as PEM text.
    pub fn certificate_pem(&self) -> String {
        pem_encode("CERTIFICATE", &self.cert)
    }

    /// Issues a server certificate for the given DNS names or IP addresses.
    pub fn issue_server(&self, names: &[&str]) -> Result<Identity, Error> {
        self.issue(names, rcgen::ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// Issues a client certificate (for mutual TLS) with the given name.
    pub fn issue_client(&self, name: &str) -> Result<Identity, Error> {
        self.issue(&[name], rcgen::ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue(
        &self,
        names: &[&str],
        usage: rcgen::ExtendedKeyUsagePurpose,
    ) -> Result<Identity, Error> {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).map_err(rcgen_err)?;
        params.extended_key_usages = vec![usage];
        let key = rcgen::KeyPair::generate().map_err(rcgen_err)?;
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).map_err(rcgen_err)?;
        Ok(Identity {
            chain: vec![cert.der().clone(), self.cert.clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        })
    }
}

fn rcgen_err(e: rcgen::Error) -> Error {
    Error::Config(format!("certificate generation failed: {e}"))
}

/// Encodes DER bytes as PEM text with the given label.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len() * 4 / 3 + 4);
    for chunk in der.chunks(3) {
        let n = chunk.len();
        let v = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= n {
                b64.push(B64[((v >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Where a server keeps TLS sessions it can resume (and accept 0-RTT data for).
///
/// This is rustls's [`StoresServerSessions`](rustls::server::StoresServerSessions): `put`
/// on a full handshake, single-use `take` on resumption. rustls accepts early data only
/// with such stateful resumption, so servers of one region that share one store resume
/// each other's clients with 0-RTT. Implement it over a shared cache to span processes.
pub use rustls::server::StoresServerSessions as SessionStore;

/// A bounded in-memory session store holding at most `capacity` sessions (the oldest go
/// first). Share the returned `Arc` between servers to let them resume each other's
/// clients.
pub fn memory_session_store(capacity: usize) -> Arc<dyn SessionStore> {
    rustls::server::ServerSessionMemoryCache::new(capacity)
}

/// Sessions a server remembers by default.
pub const DEFAULT_SESSION_CAPACITY: usize = 4096;

/// Session tickets a server sends after each full or resumed handshake. Each 0-RTT
/// reconnect uses one up, so more than rustls's default of two keeps a client that
/// reconnects quickly from running dry.
pub const TICKETS_PER_HANDSHAKE: usize = 4;

/// TLS settings of a server: its identity, its session store and, optionally, the CAs its
/// clients must present certificates from (mutual TLS).
///
/// Clones share the session store.
#[derive(Clone)]
pub struct ServerTls {
    identity: Identity,
    client_roots: Option<RootCertStore>,
    sessions: Arc<dyn SessionStore>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("mutual_tls", &self.client_roots.is_some())
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// A server presenting `identity`, accepting any client, with its own in-memory
    /// session store of [`DEFAULT_SESSION_CAPACITY`] sessions.
    pub fn new(identity: Identity) -> ServerTls {
        ServerTls {
            identity,
            client_roots: None,
            sessions: memory_session_store(DEFAULT_SESSION_CAPACITY),
        }
    }

    /// Keeps resumable sessions in `store` (share one store between the servers of a
    /// region so a client resumes with 0-RTT on any of them).
    pub fn with_session_store(mut self, store: Arc<dyn SessionStore>) -> ServerTls {
        self.sessions = store;
        self
    }

    /// The certificate a client should trust for this server: the last of its chain (the
    /// issuing CA for a chain from [`DevCa`], the certificate itself if self-signed).
    pub(crate) fn trust_anchor(&self) -> CertificateDer<'static> {
        self.identity
            .chain
            .last()
            .cloned()
            .unwrap_or_else(|| CertificateDer::from(Vec::new()))
    }

    /// Whether clients must present certificates.
    pub fn requires_client_certs(&self) -> bool {
        self.client_roots.is_some()
    }

    /// Requires every client to present a certificate issued by one of `roots`.
    pub fn require_client_certs(
        mut self,
        roots: impl IntoIterator<Item = CertificateDer<'static>>,
    ) -> Result<ServerTls, Error> {
        let mut store = RootCertStore::empty();
        for r in roots {
            store.add(r)?;
        }
        self.client_roots = Some(store);
        Ok(self)
    }

    pub(crate) fn to_rustls(&self) -> Result<rustls::ServerConfig, Error> {
        let provider = crypto_provider();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?;
        let builder = match &self.client_roots {
            Some(roots) => {
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots.clone()),
                    provider,
                )
                .build()
                .map_err(|e| Error::Config(format!("client certificate verifier: {e}")))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut cfg =
            builder.with_single_cert(self.identity.chain.clone(), self.identity.key.clone_key())?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        // QUIC allows only 0 or u32::MAX here; what may run early is decided per stream.
        cfg.max_early_data_size = u32::MAX;
        // Stateful resumption: rustls accepts early data only with a session store, never
        // with a stateless ticketer.
        cfg.session_storage = self.sessions.clone();
        cfg.send_tls13_tickets = TICKETS_PER_HANDSHAKE;
        Ok(cfg)
    }

    pub(crate) fn to_quinn(
        &self,
        transport: &TransportConfig,
    ) -> Result<quinn::ServerConfig, Error> {
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(self.to_rustls()?)
            .map_err(|e| Error::Config(format!("TLS config unusable for QUIC: {e}")))?;
        let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        cfg.transport_config(transport.to_quinn());
        Ok(cfg)
    }
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("trust", &self.trust)
            .field("client_cert", &self.identity.is_some())
            .finish()
    }
}

#[derive(Debug, Clone)]
enum Trust {
    Roots(RootCertStore),
    Pinned(CertificateDer<'static>),
}

/// TLS settings of a client: whom it trusts and, for mutual TLS, its own identity.
///
/// The rustls configuration built from it is made once and shared by every clone and
/// every connection: rustls keeps session tickets inside it, so sharing it is what lets a
/// reconnect (on any channel made from these settings) resume with 0-RTT.
///
/// There is deliberately no "accept any certificate" mode.
#[derive(Clone)]
pub struct ClientTls {
    trust: Trust,
    identity: Option<Identity>,
    built: Arc<std::sync::OnceLock<Arc<quinn::crypto::rustls::QuicClientConfig>>>,
    sockets: Arc<std::sync::Mutex<SharedSockets>>,
}

/// Client UDP sockets (quinn endpoints) shared by the channels made from one
/// [`ClientTls`], one per address family. Opening a socket per connection costs more CPU
/// than the QUIC handshake's own client side (buffers, socket options), so channels share.
#[derive(Default)]
struct SharedSockets {
    v4: Option<quinn::Endpoint>,
    v6: Option<quinn::Endpoint>,
}

impl ClientTls {
    /// Trusts servers whose chain leads to one of `roots`.
    pub fn with_roots(
        roots: impl IntoIterator<Item = CertificateDer<'static>>,
    ) -> Result<ClientTls, Error> {
        let mut store = RootCertStore::empty();
        for r in roots {
            store.add(r)?;
        }
        Ok(ClientTls {
            trust: Trust::Roots(store),
            identity: None,
            built: Default::default(),
            sockets: Default::default(),
        })
    }

    /// Trusts the CA certificates in a PEM file.
    pub fn with_roots_pem_file(path: impl AsRef<Path>) -> Result<ClientTls, Error> {
        let path = path.as_ref();
        let certs = certs_from_pem(&read_file(path)?, &path.display().to_string())?;
        Self::with_roots(certs)
    }

    /// Trusts exactly one server certificate, compared byte for byte (certificate pinning).
    /// The server's handshake signature is still verified against it; names and expiry are
    /// not checked.
    pub fn pinned(cert: CertificateDer<'static>) -> ClientTls {
        ClientTls {
            trust: Trust::Pinned(cert),
            identity: None,
            built: Default::default(),
            sockets: Default::default(),
        }
    }

    /// Presents `identity` to servers that require client certificates.
    pub fn with_identity(mut self, identity: Identity) -> ClientTls {
        self.identity = Some(identity);
        self.built = Default::default();
        self
    }

    /// The client endpoint shared by channels made from these settings, for `peer`'s
    /// address family. `stale` is an endpoint that stopped (its runtime ended): it is
    /// replaced.
    pub(crate) fn endpoint_for(
        &self,
        peer: SocketAddr,
        stale: Option<&quinn::Endpoint>,
    ) -> Result<quinn::Endpoint, Error> {
        let mut sockets = self
            .sockets
            .lock()
            .map_err(|_| Error::Config("client socket cache poisoned".into()))?;
        let slot = if peer.is_ipv6() {
            &mut sockets.v6
        } else {
            &mut sockets.v4
        };
        if let (Some(current), Some(stale)) = (slot.as_ref(), stale) {
            if current.local_addr().ok() == stale.local_addr().ok() {
                *slot = None;
            }
        }
        if let Some(e) = slot {
            return Ok(e.clone());
        }
        let e = client_endpoint(peer)?;
        *slot = Some(e.clone());
        Ok(e)
    }

    pub(crate) fn to_rustls(&self) -> Result<rustls::ClientConfig, Error> {
        let provider = crypto_provider();
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?;
        let builder = match &self.trust {
            Trust::Roots(roots) => builder.with_root_certificates(roots.clone()),
            Trust::Pinned(cert) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedCertVerifier {
                    cert: cert.clone(),
                    provider,
                })),
        };
        let mut cfg = match &self.identity {
            Some(id) => builder.with_client_auth_cert(id.chain.clone(), id.key.clone_key())?,
            None => builder.with_no_client_auth(),
        };
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        cfg.enable_early_data = true;
        Ok(cfg)
    }

    /// The quinn client configuration these settings produce (TLS 1.3, ALPN `meridian/1`,
    /// the transport limits), for tools that speak to a Meridian server at the QUIC level.
    pub fn quinn_config(&self, transport: &TransportConfig) -> Result<quinn::ClientConfig, Error> {
        let crypto = match self.built.get() {
            Some(c) => c.clone(),
            None => {
                let c = Arc::new(
                    quinn::crypto::rustls::QuicClientConfig::try_from(self.to_rustls()?)
                        .map_err(|e| Error::Config(format!("TLS config unusable for QUIC: {e}")))?,
                );
                // Another thread may have won the race; use whichever is stored.
                self.built.get_or_init(|| c).clone()
            }
        };
        let mut cfg = quinn::ClientConfig::new(crypto);
        cfg.transport_config(transport.to_quinn());
        Ok(cfg)
    }
}

/// Accepts exactly one certificate, and checks the handshake signature against it.
#[derive(Debug)]
struct PinnedCertVerifier {
    cert: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Binds a client endpoint on the unspecified address of `peer`'s family.
pub(crate) fn client_endpoint(peer: SocketAddr) -> Result<quinn::Endpoint, Error> {
    let bind: SocketAddr = if peer.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    quinn::Endpoint::client(bind).map_err(|source| Error::Io {
        context: format!("cannot bind a UDP socket on {bind}"),
        source,
    })
}

/// A readable reason for a failed connection attempt.
pub(crate) fn describe_connection_error(e: &quinn::ConnectionError) -> String {
    match e {
        quinn::ConnectionError::TransportError(t) => {
            let s = t.to_string();
            if s.contains("certificate")
                || s.contains("handshake")
                || t.code.to_string().contains("crypto")
            {
                format!("TLS handshake failed: {s}")
            } else {
                s
            }
        }
        quinn::ConnectionError::ConnectionClosed(c) => format!("refused by the server: {c}"),
        quinn::ConnectionError::TimedOut => "timed out".to_string(),
        other => other.to_string(),
    }
}
