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
