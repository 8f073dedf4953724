//! Reading and writing PEM: certificate chains, keys, files.

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::status::Error;

pub(super) fn read_file(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Io {
        context: format!("cannot read {}", path.display()),
        source,
    })
}

pub(super) fn certs_from_pem(
    pem: &[u8],
    what: &str,
) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Config(format!("{what}: bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(Error::Config(format!("{what}: no certificate found")));
    }
    Ok(certs)
}

pub(super) fn key_from_pem(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>, Error> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| Error::Config(format!("{what}: {e}")))
}

/// Encodes DER bytes as PEM text with the given label (LF line endings).
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new(label, der), config)
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    use super::pem_encode;

    #[test]
    fn pem_text_parses_back_to_the_same_der() {
        for len in [0usize, 1, 2, 3, 47, 48, 49, 1000] {
            let der: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let text = pem_encode("CERTIFICATE", &der);
            assert!(text.starts_with("-----BEGIN CERTIFICATE-----\n"), "{text}");
            assert!(!text.contains('\r'), "LF line endings only");
            assert!(text.lines().all(|l| l.len() <= 64), "{text}");
            if len > 0 {
                let back = CertificateDer::from_pem_slice(text.as_bytes()).expect("parses");
                assert_eq!(back.as_ref(), &der[..]);
            }
        }
    }
}
