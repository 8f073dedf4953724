//! [`ServerTls`]: a server's identity, session store and client-certificate policy.

use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

use super::config::{crypto_provider, TransportConfig};
use super::identity::Identity;
use super::session::{
    memory_session_store, SessionStore, DEFAULT_SESSION_CAPACITY, TICKETS_PER_HANDSHAKE,
};
use crate::status::Error;
use crate::wire::ALPN;

/// TLS settings of a server: its identity, its session store and, optionally, the CAs its
/// clients must present certificates from (mutual TLS).
///
/// Clones share the session store.
#[derive(Clone)]
pub struct ServerTls {
    identity: Identity,
    /// Under mutual TLS, the verifier of client chains in use, shared by every clone so
    /// [`set_client_roots`](ServerTls::set_client_roots) changes it live.
    client_roots: Option<Arc<LiveClientVerifier>>,
    /// Bumped when the client CAs change: sessions stored before are not resumed (a
    /// resumption would skip the new check of the client's certificate).
    epoch: Arc<std::sync::atomic::AtomicU32>,
    sessions: Arc<dyn SessionStore>,
    /// The certificate new handshakes present, shared by every clone (and the servers
    /// bound with them), so [`set_identity`](ServerTls::set_identity) rotates it live.
    current: Arc<CurrentCert>,
}

/// Resolves every handshake to the identity set last.
#[derive(Debug)]
struct CurrentCert(std::sync::RwLock<Option<Arc<rustls::sign::CertifiedKey>>>);

impl rustls::server::ResolvesServerCert for CurrentCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        match self.0.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

/// The signing form of an identity; fails for a key that does not fit (or match) the
/// certificate.
pub(super) fn certified(identity: &Identity) -> Result<Arc<rustls::sign::CertifiedKey>, Error> {
    let provider = crypto_provider();
    let key = provider
        .key_provider
        .load_private_key(identity.key.clone_key())
        .map_err(|e| Error::Config(format!("unusable private key: {e}")))?;
    let certified = rustls::sign::CertifiedKey::new(identity.chain.clone(), key);
    certified.keys_match().map_err(|e| {
        Error::Config(format!(
            "the private key does not match the certificate: {e}"
        ))
    })?;
    Ok(Arc::new(certified))
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
            epoch: Default::default(),
            sessions: memory_session_store(DEFAULT_SESSION_CAPACITY),
            current: Arc::new(CurrentCert(std::sync::RwLock::new(None))),
        }
    }

    /// Keeps resumable sessions in `store` (share one store between the servers of a
    /// region so a client resumes with 0-RTT on any of them).
    pub fn with_session_store(mut self, store: Arc<dyn SessionStore>) -> ServerTls {
        self.sessions = store;
        self
    }

    /// Rotates the certificate: handshakes from now on present `identity` (servers bound
    /// with this `ServerTls` or a clone of it); connections already open keep theirs and are
    /// not dropped. Fails, changing nothing, when the key does not match the certificate.
    /// Session tickets issued before stay valid (resumption does not resend certificates).
    pub fn set_identity(&self, identity: Identity) -> Result<(), Error> {
        let next = certified(&identity)?;
        let mut current = self
            .current
            .0
            .write()
            .map_err(|_| Error::Config("server certificate lock poisoned".into()))?;
        *current = Some(next);
        Ok(())
    }

    /// Reloads the certificate chain and key from PEM files, as
    /// [`set_identity`](Self::set_identity) (a `SIGHUP` handler, a file watcher).
    pub fn reload_pem_files(
        &self,
        cert: impl AsRef<std::path::Path>,
        key: impl AsRef<std::path::Path>,
    ) -> Result<(), Error> {
        self.set_identity(Identity::from_pem_files(cert, key)?)
    }

    /// The end-entity certificate the server presents now (the first of its chain, after
    /// any rotation): what an
    /// in-process client pins for this server's address. Never the chain's last
    /// certificate, which for a real chain is a CA trusted for every name it issued.
    pub(crate) fn end_entity(&self) -> CertificateDer<'static> {
        let current = match self.current.0.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        current
            .and_then(|c| c.cert.first().cloned())
            .or_else(|| self.identity.chain.first().cloned())
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
        let verifier = client_verifier(roots)?;
        self.client_roots = Some(Arc::new(LiveClientVerifier(std::sync::RwLock::new(
            verifier,
        ))));
        Ok(self)
    }

    /// Replaces the CAs client certificates must chain to, from the next handshake on
    /// (servers bound with this `ServerTls` or a clone); connections already open keep
    /// going. Sessions stored before are no longer resumed, so every client proves its
    /// certificate against the new CAs on its next connection. Fails, changing nothing, on
    /// an empty or unusable set, or when this server does not require client
    /// certificates.
    pub fn set_client_roots(
        &self,
        roots: impl IntoIterator<Item = CertificateDer<'static>>,
    ) -> Result<(), Error> {
        let Some(live) = &self.client_roots else {
            return Err(Error::Config(
                "this server does not require client certificates: nothing to reload".into(),
            ));
        };
        let verifier = client_verifier(roots)?;
        match live.0.write() {
            Ok(mut v) => *v = verifier,
            Err(poisoned) => *poisoned.into_inner() = verifier,
        }
        self.epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// Reloads the client CAs from a PEM file, as
    /// [`set_client_roots`](Self::set_client_roots).
    pub fn reload_client_roots_pem_file(
        &self,
        path: impl AsRef<std::path::Path>,
    ) -> Result<(), Error> {
        let path = path.as_ref();
        let roots = super::pem_text::certs_from_pem(
            &super::pem_text::read_file(path)?,
            &path.display().to_string(),
        )?;
        self.set_client_roots(roots)
    }

    /// As [`require_client_certs`](Self::require_client_certs), with the CA certificates
    /// of a PEM file.
    pub fn require_client_certs_pem_file(
        self,
        path: impl AsRef<std::path::Path>,
    ) -> Result<ServerTls, Error> {
        let path = path.as_ref();
        let roots = super::pem_text::certs_from_pem(
            &super::pem_text::read_file(path)?,
            &path.display().to_string(),
        )?;
        self.require_client_certs(roots)
    }

    pub(crate) fn to_rustls(&self) -> Result<rustls::ServerConfig, Error> {
        let provider = crypto_provider();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?;
        let builder = match &self.client_roots {
            Some(live) => builder.with_client_cert_verifier(live.clone()),
            None => builder.with_no_client_auth(),
        };
        {
            let mut current = self
                .current
                .0
                .write()
                .map_err(|_| Error::Config("server certificate lock poisoned".into()))?;
            if current.is_none() {
                *current = Some(certified(&self.identity)?);
            }
        }
        let mut cfg = builder.with_cert_resolver(self.current.clone());
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        // QUIC allows only 0 or u32::MAX here; what may run early is decided per stream.
        cfg.max_early_data_size = u32::MAX;
        // Stateful resumption: rustls accepts early data only with a session store, never
        // with a stateless ticketer.
        cfg.session_storage = Arc::new(EpochStore {
            inner: self.sessions.clone(),
            epoch: self.epoch.clone(),
        });
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
        cfg.transport_config(transport.to_quinn_server());
        Ok(cfg)
    }
}

/// A verifier of client chains leading to one of `roots` (at least one).
fn client_verifier(
    roots: impl IntoIterator<Item = CertificateDer<'static>>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, Error> {
    let mut store = RootCertStore::empty();
    for r in roots {
        store.add(r)?;
    }
    if store.is_empty() {
        return Err(Error::Config(
            "no CA certificate given for client certificates".into(),
        ));
    }
    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(store), crypto_provider())
        .build()
        .map_err(|e| Error::Config(format!("client certificate verifier: {e}")))
}

/// The client verifier rustls sees: whichever one is current at the handshake. It sends
/// no CA names in its certificate request (they could change under a handshake); clients
/// present the one certificate they have.
#[derive(Debug)]
pub(super) struct LiveClientVerifier(
    std::sync::RwLock<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
);

impl LiveClientVerifier {
    fn current(&self) -> Arc<dyn rustls::server::danger::ClientCertVerifier> {
        match self.0.read() {
            Ok(v) => v.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

impl rustls::server::danger::ClientCertVerifier for LiveClientVerifier {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        self.current()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.current().supported_verify_schemes()
    }
}

/// A session store seen through the current client-CA epoch: each key is prefixed with
/// it, so sessions stored before a change of client CAs are never found again (and age
/// out of the underlying store).
#[derive(Debug)]
struct EpochStore {
    inner: Arc<dyn SessionStore>,
    epoch: Arc<std::sync::atomic::AtomicU32>,
}

impl EpochStore {
    fn key(&self, key: &[u8]) -> Vec<u8> {
        let epoch = self.epoch.load(std::sync::atomic::Ordering::SeqCst);
        let mut k = Vec::with_capacity(4 + key.len());
        k.extend_from_slice(&epoch.to_be_bytes());
        k.extend_from_slice(key);
        k
    }
}

impl SessionStore for EpochStore {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.inner.put(self.key(&key), value)
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.inner.get(&self.key(key))
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.inner.take(&self.key(key))
    }

    fn can_cache(&self) -> bool {
        self.inner.can_cache()
    }
}
