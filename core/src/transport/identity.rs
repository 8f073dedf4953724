//! [`Identity`]: a certificate chain and its key.

use std::path::Path;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::pem_text::{certs_from_pem, key_from_pem, read_file};
use crate::status::Error;

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
