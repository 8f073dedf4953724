//! [`ClientTls`]: whom a client trusts (roots or one pinned certificate), its own identity, and the sockets its channels share.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::config::{crypto_provider, TransportConfig};
use super::endpoint::client_endpoint;
use super::identity::Identity;
use super::pem_text::{certs_from_pem, read_file};
use super::server_tls::certified;
use crate::status::Error;
use crate::wire::ALPN;

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("client_cert", &self.live.has_identity())
            .finish_non_exhaustive()
    }
}

/// Whom a client trusts and which certificate it presents, shared by every clone of a
/// [`ClientTls`] and by every rustls configuration made from them: a reload changes what
/// the next handshake of any of their connections uses, and nothing else.
struct Live {
    verifier: RwLock<Arc<dyn ServerCertVerifier>>,
    identity: RwLock<Option<Arc<CertifiedKey>>>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live").finish_non_exhaustive()
    }
}

impl Live {
    fn new(verifier: Arc<dyn ServerCertVerifier>, identity: Option<Arc<CertifiedKey>>) -> Live {
        Live {
            verifier: RwLock::new(verifier),
            identity: RwLock::new(identity),
        }
    }

    fn verifier(&self) -> Arc<dyn ServerCertVerifier> {
        match self.verifier.read() {
            Ok(v) => v.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn identity(&self) -> Option<Arc<CertifiedKey>> {
        match self.identity.read() {
            Ok(i) => i.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn has_identity(&self) -> bool {
        self.identity().is_some()
    }

    fn set_verifier(&self, verifier: Arc<dyn ServerCertVerifier>) {
        match self.verifier.write() {
            Ok(mut v) => *v = verifier,
            Err(poisoned) => *poisoned.into_inner() = verifier,
        }
    }

    fn set_identity(&self, identity: Arc<CertifiedKey>) {
        match self.identity.write() {
            Ok(mut i) => *i = Some(identity),
            Err(poisoned) => *poisoned.into_inner() = Some(identity),
        }
    }
}

/// The server verifier rustls sees: whatever [`Live`] holds at the time of the handshake.
#[derive(Debug)]
struct LiveVerifier(Arc<Live>);

impl ServerCertVerifier for LiveVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0.verifier().verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verifier().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verifier().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.verifier().supported_verify_schemes()
    }
}

/// The client certificate rustls sends: whatever [`Live`] holds at the time.
#[derive(Debug)]
struct LiveIdentity(Arc<Live>);

impl ResolvesClientCert for LiveIdentity {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0.identity()
    }

    fn has_certs(&self) -> bool {
        self.0.has_identity()
    }
}

/// A verifier of server chains leading to one of `roots`, names checked.
fn roots_verifier(
    roots: impl IntoIterator<Item = CertificateDer<'static>>,
) -> Result<Arc<dyn ServerCertVerifier>, Error> {
    let mut store = RootCertStore::empty();
    for r in roots {
        store.add(r)?;
    }
    if store.is_empty() {
        // Trusts nobody (a local registry's client made before any server registered):
        // every handshake fails as with an unknown issuer.
        return Ok(Arc::new(PinnedCertVerifier {
            cert: CertificateDer::from(Vec::new()),
            provider: crypto_provider(),
        }));
    }
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(store), crypto_provider())
        .build()
        .map_err(|e| Error::Config(format!("unusable root certificates: {e}")))?;
    Ok(verifier)
}

/// TLS settings of a client: whom it trusts and, for mutual TLS, its own identity.
///
/// The rustls configurations built from it are shared by every clone and every
/// connection: rustls keeps session tickets inside them, so sharing them is what lets a
/// reconnect (on any channel made from these settings) resume with 0-RTT. Tickets are
/// kept per server address and name: servers that share a name (every dev server is
/// `localhost`, a fleet shares one certificate) do not, by default, share ticket keys, and
/// a ticket offered to the wrong one only gets its early data rejected. Fleets whose
/// servers do share ticket keys ([`ServerTls::with_session_store`](super::ServerTls))
/// can pool tickets by name with [`share_tickets_by_name`](Self::share_tickets_by_name).
///
/// There is deliberately no "accept any certificate" mode.
///
/// Trust roots and the client certificate can be replaced while the client runs
/// ([`set_roots`](Self::set_roots), [`reload_roots_pem_file`](Self::reload_roots_pem_file),
/// [`set_identity`](Self::set_identity),
/// [`reload_identity_pem_files`](Self::reload_identity_pem_files)): every clone, and every
/// channel or region client made from one, uses the new ones from its next handshake;
/// connections already open are not touched. A reload also forgets the session tickets
/// kept for new channels, so their first handshake is a full one under the new trust;
/// a channel made before the reload may still resume its own earlier session when it
/// reconnects (TLS 1.3 resumption sends no certificate).
#[derive(Clone)]
pub struct ClientTls {
    live: Arc<Live>,
    /// Why the identity given to [`with_identity`](Self::with_identity) is unusable, to
    /// report when a configuration is made.
    identity_error: Option<String>,
    share_tickets: bool,
    built: Arc<std::sync::Mutex<Built>>,
    sockets: Arc<std::sync::Mutex<SharedSockets>>,
}

/// The QUIC client configurations made so far: one whose tickets are pooled by server
/// name, and one per server address (each with its own ticket store).
#[derive(Default)]
struct Built {
    by_name: Option<Arc<quinn::crypto::rustls::QuicClientConfig>>,
    by_peer: std::collections::HashMap<SocketAddr, Arc<quinn::crypto::rustls::QuicClientConfig>>,
}

/// Server addresses whose tickets are kept apart, at most; past it the stores start over
/// (the next connection to each server is a full handshake again).
const MAX_TICKET_STORES: usize = 4096;

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
        Ok(Self::trusting(roots_verifier(roots)?))
    }

    fn trusting(verifier: Arc<dyn ServerCertVerifier>) -> ClientTls {
        ClientTls {
            live: Arc::new(Live::new(verifier, None)),
            identity_error: None,
            share_tickets: false,
            built: Default::default(),
            sockets: Default::default(),
        }
    }

    /// Trusts the CA certificates in a PEM file.
    pub fn with_roots_pem_file(path: impl AsRef<Path>) -> Result<ClientTls, Error> {
        Self::with_roots(roots_from_pem_file(path.as_ref())?)
    }

    /// Trusts exactly one server certificate, compared byte for byte (certificate pinning).
    /// The server's handshake signature is still verified against it; names and expiry are
    /// not checked.
    pub fn pinned(cert: CertificateDer<'static>) -> ClientTls {
        Self::trusting(Arc::new(PinnedCertVerifier {
            cert,
            provider: crypto_provider(),
        }))
    }

    /// Presents `identity` to servers that require client certificates. A key that does
    /// not match the certificate makes connecting fail with a configuration error.
    pub fn with_identity(mut self, identity: Identity) -> ClientTls {
        // A new shared state: clones made before keep theirs.
        let (key, error) = match certified(&identity) {
            Ok(k) => (Some(k), None),
            Err(e) => (None, Some(e.to_string())),
        };
        self.live = Arc::new(Live::new(self.live.verifier(), key));
        self.identity_error = error;
        self.built = Default::default();
        self
    }

    /// Replaces the trusted roots: from the next handshake on, servers must chain to one
    /// of `roots` (this settings object, its clones, and the channels and region clients
    /// made from them). Open connections are untouched. Fails, changing nothing, on an
    /// empty or unusable set.
    pub fn set_roots(
        &self,
        roots: impl IntoIterator<Item = CertificateDer<'static>>,
    ) -> Result<(), Error> {
        let roots: Vec<_> = roots.into_iter().collect();
        if roots.is_empty() {
            return Err(Error::Config("no root certificate to trust".into()));
        }
        self.live.set_verifier(roots_verifier(roots)?);
        self.forget_sessions();
        Ok(())
    }

    /// Drops the session tickets kept for new channels, so their first connections are
    /// full handshakes under the current trust and identity (a resumed session would skip
    /// both). Channels already made keep theirs.
    fn forget_sessions(&self) {
        match self.built.lock() {
            Ok(mut b) => *b = Built::default(),
            Err(poisoned) => *poisoned.into_inner() = Built::default(),
        }
    }

    /// Reloads the trusted roots from a PEM file, as [`set_roots`](Self::set_roots) (a
    /// `SIGHUP` handler, a file watcher, a CA bundle rotated by a sidecar).
    pub fn reload_roots_pem_file(&self, path: impl AsRef<Path>) -> Result<(), Error> {
        self.set_roots(roots_from_pem_file(path.as_ref())?)
    }

    /// Replaces the client certificate presented from the next handshake on (clones and
    /// everything made from them). Fails, changing nothing, when the key does not match.
    pub fn set_identity(&self, identity: Identity) -> Result<(), Error> {
        self.live.set_identity(certified(&identity)?);
        self.forget_sessions();
        Ok(())
    }

    /// Reloads the client certificate chain and key from PEM files, as
    /// [`set_identity`](Self::set_identity).
    pub fn reload_identity_pem_files(
        &self,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<(), Error> {
        self.set_identity(Identity::from_pem_files(cert, key)?)
    }

    /// Pools session tickets by server name, across addresses: for fleets whose servers
    /// share their ticket keys, so a client that talked to one resumes with 0-RTT at any
    /// other. Without shared keys this costs each first connection to another server its
    /// early data (rejected, sent again after the handshake).
    pub fn share_tickets_by_name(mut self) -> ClientTls {
        self.share_tickets = true;
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

    /// The verifier of these settings' trust (roots or a pinned certificate) as it is at
    /// each handshake, so reloads reach it, for a wrapper that checks more
    /// ([`super::pin`]).
    pub(crate) fn server_verifier(&self) -> Result<Arc<dyn ServerCertVerifier>, Error> {
        Ok(Arc::new(LiveVerifier(self.live.clone())))
    }

    pub(crate) fn to_rustls(&self) -> Result<rustls::ClientConfig, Error> {
        if let Some(e) = &self.identity_error {
            return Err(Error::Config(format!("unusable client certificate: {e}")));
        }
        let provider = crypto_provider();
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(LiveVerifier(self.live.clone())))
            .with_client_cert_resolver(Arc::new(LiveIdentity(self.live.clone())));
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        cfg.enable_early_data = true;
        Ok(cfg)
    }

    /// The quinn client configuration these settings produce (TLS 1.3, ALPN `meridian/1`,
    /// the transport limits), for tools that speak to a Meridian server at the QUIC level.
    /// Its session tickets are pooled by server name.
    pub fn quinn_config(&self, transport: &TransportConfig) -> Result<quinn::ClientConfig, Error> {
        let crypto = self.crypto(None)?;
        let mut cfg = quinn::ClientConfig::new(crypto);
        cfg.transport_config(transport.to_quinn_client());
        Ok(cfg)
    }

    /// The configuration for connections to `peer`: its tickets kept for that address
    /// (unless [`share_tickets_by_name`](Self::share_tickets_by_name)).
    pub(crate) fn quinn_config_for(
        &self,
        transport: &TransportConfig,
        peer: SocketAddr,
    ) -> Result<quinn::ClientConfig, Error> {
        let crypto = self.crypto((!self.share_tickets).then_some(peer))?;
        let mut cfg = quinn::ClientConfig::new(crypto);
        cfg.transport_config(transport.to_quinn_client());
        Ok(cfg)
    }

    /// The rustls side of a configuration, made once per ticket store and shared.
    fn crypto(
        &self,
        peer: Option<SocketAddr>,
    ) -> Result<Arc<quinn::crypto::rustls::QuicClientConfig>, Error> {
        let mut built = self
            .built
            .lock()
            .map_err(|_| Error::Config("client TLS cache poisoned".into()))?;
        let cached = match peer {
            Some(p) => built.by_peer.get(&p),
            None => built.by_name.as_ref(),
        };
        if let Some(c) = cached {
            return Ok(c.clone());
        }
        let mut rustls = self.to_rustls()?;
        if peer.is_some() {
            // A few tickets per server: enough for reconnects in a row.
            rustls.resumption = rustls::client::Resumption::in_memory_sessions(8);
        }
        let c = Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(rustls)
                .map_err(|e| Error::Config(format!("TLS config unusable for QUIC: {e}")))?,
        );
        match peer {
            Some(p) => {
                if built.by_peer.len() >= MAX_TICKET_STORES {
                    built.by_peer.clear();
                }
                built.by_peer.insert(p, c.clone());
            }
            None => built.by_name = Some(c.clone()),
        }
        Ok(c)
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

/// The certificates of a PEM file, for trust.
fn roots_from_pem_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    certs_from_pem(&read_file(path)?, &path.display().to_string())
}
