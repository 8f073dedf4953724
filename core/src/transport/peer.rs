//! [`PeerIdentity`]: who is on the other end of a connection, from the certificate chain
//! the TLS handshake verified (mutual TLS).

use rustls::pki_types::CertificateDer;

/// The verified client certificate chain of a connection, with the names a handler or an
/// authorization check needs: DNS and URI subject alternative names (a SPIFFE ID is a URI
/// SAN, `spiffe://trust-domain/path`) and the subject's common name.
///
/// Only made from a chain the server's verifier accepted, so every name in it was vouched
/// for by a CA the server trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    chain: Vec<CertificateDer<'static>>,
    dns_names: Vec<String>,
    uris: Vec<String>,
    common_name: Option<String>,
}

impl PeerIdentity {
    /// The names of a verified chain (end entity first); `None` if there is no chain or
    /// its end entity cannot be parsed.
    pub(crate) fn from_chain(chain: Vec<CertificateDer<'static>>) -> Option<PeerIdentity> {
        let end = chain.first()?;
        let cert = webpki::EndEntityCert::try_from(end).ok()?;
        let dns_names = cert.valid_dns_names().map(str::to_string).collect();
        let uris = cert.valid_uri_names().map(str::to_string).collect();
        let common_name = common_name(cert.subject());
        Some(PeerIdentity {
            chain,
            dns_names,
            uris,
            common_name,
        })
    }

    /// The chain as presented, end-entity certificate first.
    pub fn certificates(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// DNS names among the subject alternative names.
    pub fn dns_names(&self) -> &[String] {
        &self.dns_names
    }

    /// URIs among the subject alternative names.
    pub fn uris(&self) -> &[String] {
        &self.uris
    }

    /// The first `spiffe://` URI SAN, the workload's SPIFFE ID.
    pub fn spiffe_id(&self) -> Option<&str> {
        self.uris
            .iter()
            .map(String::as_str)
            .find(|u| u.starts_with("spiffe://"))
    }

    /// The subject's common name (CN), if it has one in a string form.
    pub fn common_name(&self) -> Option<&str> {
        self.common_name.as_deref()
    }

    /// Whether any DNS or URI SAN, or the common name, equals `name`.
    pub fn has_name(&self, name: &str) -> bool {
        self.dns_names.iter().any(|n| n == name)
            || self.uris.iter().any(|u| u == name)
            || self.common_name.as_deref() == Some(name)
    }
}

/// One DER element: tag, contents, and what follows it. `None` on anything malformed
/// (the input is the subject of a certificate the verifier accepted, but is parsed as if
/// hostile anyway: no indexing past the end, no lengths trusted).
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The first common name in a DER `Name` (without its outer SEQUENCE header, as webpki
/// gives it): SET OF SEQUENCE { OID, value }.
fn common_name(mut name: &[u8]) -> Option<String> {
    const CN: &[u8] = &[0x55, 0x04, 0x03]; // 2.5.4.3
    while !name.is_empty() {
        let (set_tag, set, rest) = element(name)?;
        name = rest;
        if set_tag != 0x31 {
            return None;
        }
        let mut set = set;
        while !set.is_empty() {
            let (seq_tag, seq, more) = element(set)?;
            set = more;
            if seq_tag != 0x30 {
                return None;
            }
            let (oid_tag, oid, value) = element(seq)?;
            if oid_tag != 0x06 || oid != CN {
                continue;
            }
            let (value_tag, value, _) = element(value)?;
            // UTF8String, PrintableString, IA5String, T61String (read as Latin-1-ish UTF-8).
            if matches!(value_tag, 0x0c | 0x13 | 0x16 | 0x14) {
                return std::str::from_utf8(value).ok().map(str::to_string);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_end_entity_certificate() {
        let ca = crate::DevCa::new().unwrap();
        let id = ca
            .issue_client_with_uri("client-1", "spiffe://example.org/ns/prod/sa/api")
            .unwrap();
        let peer = PeerIdentity::from_chain(id.chain.clone()).unwrap();
        assert_eq!(peer.dns_names(), ["client-1"]);
        assert_eq!(
            peer.spiffe_id(),
            Some("spiffe://example.org/ns/prod/sa/api")
        );
        assert_eq!(peer.common_name(), Some("client-1"));
        assert!(peer.has_name("client-1"));
        assert!(!peer.has_name("client-2"));
        assert_eq!(peer.certificates().len(), 2);
    }

    #[test]
    fn malformed_subjects_give_no_name_and_never_panic() {
        for bad in [
            &[][..],
            &[0x31],
            &[0x31, 0x85, 1, 1, 1, 1, 1],
            &[0x31, 0x05, 0x30, 0x03, 0x06, 0x01],
            &[0x30, 0x00],
            &[
                0x31, 0x09, 0x30, 0x07, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, 0x05,
            ],
        ] {
            assert_eq!(common_name(bad), None, "{bad:?}");
        }
        assert_eq!(PeerIdentity::from_chain(Vec::new()), None);
        assert_eq!(
            PeerIdentity::from_chain(vec![CertificateDer::from(vec![1u8, 2, 3])]),
            None
        );
    }
}
