//! [`ClientTls`]: whom a client trusts (roots or one pinned certificate), its own identity, and the sockets its channels share.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::config::{crypto_provider, TransportConfig};
use super::endpoint::client_endpoint;
use super::identity::Identity;
use super::pem_text::{certs_from_pem, read_file};
use crate::status::Error;
use crate::wire::ALPN;

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
#[derive(Clone)]
pub struct ClientTls {
    trust: Trust,
    identity: Option<Identity>,
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
        let mut store = RootCertStore::empty();
        for r in roots {
            store.add(r)?;
        }
        Ok(ClientTls {
            trust: Trust::Roots(store),
            identity: None,
            share_tickets: false,
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
            share_tickets: false,
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

    /// The verifier of these settings' trust (roots or a pinned certificate), for a
    /// wrapper that checks more ([`super::pin`]).
    pub(crate) fn server_verifier(&self) -> Result<Arc<dyn ServerCertVerifier>, Error> {
        let provider = crypto_provider();
        Ok(match &self.trust {
            Trust::Roots(roots) => rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots.clone()),
                provider,
            )
            .build()
            .map_err(|e| Error::Config(format!("server certificate verifier: {e}")))?,
            Trust::Pinned(cert) => Arc::new(PinnedCertVerifier {
                cert: cert.clone(),
                provider,
            }),
        })
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
    /// Its session tickets are pooled by server name.
    pub fn quinn_config(&self, transport: &TransportConfig) -> Result<quinn::ClientConfig, Error> {
        let crypto = self.crypto(None)?;
        let mut cfg = quinn::ClientConfig::new(crypto);
        cfg.transport_config(transport.to_quinn());
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
        cfg.transport_config(transport.to_quinn());
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
