//! Pinning a server's end-entity certificate by its SHA-256, on top of the normal
//! verification: the check a client makes when it does not want a registry (or any
//! other source of addresses and names) to decide alone which server it talks to.
//!
//! The wrapper runs the client's own verifier first (chain to a trusted root, name,
//! validity; or the byte-for-byte pin of [`ClientTls::pinned`]) and then compares the
//! SHA-256 of the certificate the server presented with the expected one. Both must pass.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};

use super::client_tls::ClientTls;
use super::config::TransportConfig;
use crate::status::Error;

/// The SHA-256 of a certificate's DER encoding: what `meridian serve` prints as its
/// fingerprint and what registries publish as `cert_sha256`.
pub fn cert_sha256(cert: &CertificateDer<'_>) -> [u8; 32] {
    let digest = ring_sha256(cert.as_ref());
    let mut out = [0u8; 32];
    out.copy_from_slice(&digest[..32]);
    out
}

fn ring_sha256(data: &[u8]) -> Vec<u8> {
    // The hash of the provider's SHA-256 suite: no extra dependency.
    match rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256.tls13() {
        Some(suite) => suite.common.hash_provider.hash(data).as_ref().to_vec(),
        None => vec![0; 32],
    }
}

fn hex(hash: &[u8; 32]) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

/// Why a pinned server's certificate was refused: it passed (or did not reach) the normal
/// checks, but its SHA-256 is not the expected one. Shows in the handshake's error as
/// `certificate SHA-256 mismatch: ...`.
#[derive(Clone, PartialEq, Eq)]
pub struct CertHashMismatch {
    /// The SHA-256 the client expected (published by the registry, or configured).
    pub expected: [u8; 32],
    /// The SHA-256 of the certificate the server presented.
    pub presented: [u8; 32],
}

impl std::fmt::Display for CertHashMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "certificate SHA-256 mismatch: the server presented sha256:{}, but sha256:{} is \
             pinned for it",
            hex(&self.presented),
            hex(&self.expected)
        )
    }
}

// rustls shows the error of a refused certificate with `{:?}`: make that the message.
impl std::fmt::Debug for CertHashMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for CertHashMismatch {}

/// A verifier that accepts what `inner` accepts, and only when the end-entity
/// certificate's SHA-256 is `expected`.
#[derive(Debug)]
struct Sha256PinVerifier {
    inner: Arc<dyn ServerCertVerifier>,
    expected: [u8; 32],
}

impl ServerCertVerifier for Sha256PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        let presented = cert_sha256(end_entity);
        if presented == self.expected {
            Ok(verified)
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(CertHashMismatch {
                    expected: self.expected,
                    presented,
                })),
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }

    fn root_hint_subjects(&self) -> Option<&[rustls::DistinguishedName]> {
        self.inner.root_hint_subjects()
    }
}

/// A QUIC client configuration with `tls`'s trust and identity whose verifier also
/// requires the server's certificate to hash to `expected`. It has its own session
/// ticket store: a ticket from it only ever resumes a session that passed the pin.
pub(crate) fn pinned_quinn_config(
    tls: &ClientTls,
    transport: &TransportConfig,
    expected: [u8; 32],
) -> Result<quinn::ClientConfig, Error> {
    let mut rustls = tls.to_rustls()?;
    let verifier = Sha256PinVerifier {
        inner: tls.server_verifier()?,
        expected,
    };
    rustls
        .dangerous()
        .set_certificate_verifier(Arc::new(verifier));
    rustls.resumption = rustls::client::Resumption::in_memory_sessions(8);
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(rustls)
        .map_err(|e| Error::Config(format!("TLS config unusable for QUIC: {e}")))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(transport.to_quinn_client());
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_sha256_of_the_der() {
        // SHA-256 of the empty string.
        let empty = cert_sha256(&CertificateDer::from(Vec::new()));
        assert_eq!(
            hex(&empty),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let e = CertHashMismatch {
            expected: [1; 32],
            presented: [2; 32],
        };
        assert!(format!("{e:?}").starts_with("certificate SHA-256 mismatch"));
        assert!(e.to_string().contains(&"01".repeat(32)));
    }
}
