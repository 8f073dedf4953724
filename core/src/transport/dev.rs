//! [`DevCa`]: a throwaway certificate authority for development and tests.

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::identity::Identity;
use super::pem_text::pem_encode;
use crate::status::Error;

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

    /// Issues a server certificate for the given DNS names or IP addresses (an entry that
    /// parses as an IP address becomes an IP address entry).
    ///
    /// `localhost` also brings the loopback addresses `127.0.0.1` and `::1`, which is
    /// what it resolves to: a client that dials a dev server at `127.0.0.1:PORT` with no
    /// explicit server name checks the certificate against `127.0.0.1`, and finds it.
    pub fn issue_server(&self, names: &[&str]) -> Result<Identity, Error> {
        let mut all: Vec<&str> = names.to_vec();
        if names.contains(&"localhost") {
            for ip in ["127.0.0.1", "::1"] {
                if !all.contains(&ip) {
                    all.push(ip);
                }
            }
        }
        self.issue(&all, rcgen::ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// Issues a client certificate (for mutual TLS) with the given name.
    pub fn issue_client(&self, name: &str) -> Result<Identity, Error> {
        self.issue(&[name], rcgen::ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// Issues a client certificate with the DNS name and common name `name` and the URI
    /// subject alternative name `uri` (a SPIFFE ID such as
    /// `spiffe://example.org/ns/prod/sa/api`).
    pub fn issue_client_with_uri(&self, name: &str, uri: &str) -> Result<Identity, Error> {
        let mut params =
            rcgen::CertificateParams::new(vec![name.to_string()]).map_err(rcgen_err)?;
        let uri = rcgen::string::Ia5String::try_from(uri).map_err(rcgen_err)?;
        params.subject_alt_names.push(rcgen::SanType::URI(uri));
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn issue(
        &self,
        names: &[&str],
        usage: rcgen::ExtendedKeyUsagePurpose,
    ) -> Result<Identity, Error> {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).map_err(rcgen_err)?;
        params.extended_key_usages = vec![usage];
        self.sign(params)
    }

    fn sign(&self, params: rcgen::CertificateParams) -> Result<Identity, Error> {
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
