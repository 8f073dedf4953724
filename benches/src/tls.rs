//! TLS material shared by every kind that encrypts: one rustls crypto
//! provider (ring, AES-128-GCM first), a self-signed certificate made by the
//! server process, and helpers that build rustls configs from them.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{CipherSuite, ClientConfig, RootCertStore, ServerConfig};

use crate::Result;

/// Server name the self-signed certificate is issued for and clients ask for.
pub const SERVER_NAME: &str = "localhost";

/// The ring provider with `TLS13_AES_128_GCM_SHA256` moved to the front.
///
/// ring's default order prefers AES-256-GCM/SHA-384; on machines without fast
/// SHA-384 or wide AES that costs latency for no benefit in a benchmark, and
/// QUIC's initial packets use AES-128-GCM anyway.
pub fn provider() -> CryptoProvider {
    let mut provider = rustls::crypto::ring::default_provider();
    // Stable sort: AES-128-GCM first, everything else keeps its order.
    provider
        .cipher_suites
        .sort_by_key(|suite| suite.suite() != CipherSuite::TLS13_AES_128_GCM_SHA256);
    provider
}

/// Installs [`provider`] as the process-wide default, so libraries that build
/// their own rustls configs (tonic) use the same suites as the rest.
///
/// Harmless if a default is already installed.
pub fn install_default_provider() {
    let _ = provider().install_default();
}

/// A self-signed certificate and its private key.
pub struct Identity {
    /// The certificate, DER encoded.
    pub cert_der: CertificateDer<'static>,
    /// The private key, PKCS#8 DER encoded.
    pub key_der: PrivatePkcs8KeyDer<'static>,
    /// The certificate, PEM encoded.
    pub cert_pem: String,
    /// The private key, PEM encoded.
    pub key_pem: String,
}

impl Identity {
    /// Generates a fresh self-signed certificate for [`SERVER_NAME`].
    pub fn generate() -> Result<Self> {
        let certified = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()])?;
        Ok(Self {
            cert_der: certified.cert.der().clone(),
            key_der: PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der()),
            cert_pem: certified.cert.pem(),
            key_pem: certified.signing_key.serialize_pem(),
        })
    }

    /// The private key in the form rustls takes.
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key_der.clone_key())
    }
}

/// A root store that trusts exactly `cert`.
pub fn roots_trusting(cert: &CertificateDer<'static>) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    roots.add(cert.clone())?;
    Ok(roots)
}

/// A TLS 1.3 server config presenting `identity` and offering `alpn`.
pub fn server_config(identity: &Identity, alpn: &[&[u8]]) -> Result<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![identity.cert_der.clone()], identity.key())?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A TLS 1.3 client config that trusts only `cert` and offers `alpn`.
pub fn client_config(cert: &CertificateDer<'static>, alpn: &[&[u8]]) -> Result<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots_trusting(cert)?)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Lower-case hex of `bytes`, used to pass the certificate on the LISTEN line.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    out
}

/// Parses hex written by [`to_hex`].
pub fn from_hex(text: &str) -> Result<Vec<u8>> {
    fn nibble(c: u8) -> Result<u8> {
        match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            b'A'..=b'F' => Ok(c - b'A' + 10),
            _ => Err(format!("bad hex digit {:?}", c as char).into()),
        }
    }
    let text = text.as_bytes();
    if text.len() % 2 != 0 {
        return Err("odd-length hex".into());
    }
    text.chunks_exact(2)
        .map(|pair| Ok(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(from_hex(&to_hex(&bytes)).unwrap(), bytes);
        assert!(from_hex("abc").is_err());
        assert!(from_hex("zz").is_err());
    }

    #[test]
    fn aes_128_is_preferred() {
        let first = provider().cipher_suites[0].suite();
        assert_eq!(first, CipherSuite::TLS13_AES_128_GCM_SHA256);
    }
}
