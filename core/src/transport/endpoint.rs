//! Client endpoints and what a failed connection means.

use std::net::SocketAddr;

use crate::status::Error;

/// Binds a client endpoint on the unspecified address of `peer`'s family.
pub(crate) fn client_endpoint(peer: SocketAddr) -> Result<quinn::Endpoint, Error> {
    let bind: SocketAddr = if peer.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    quinn::Endpoint::client(bind).map_err(|source| Error::Io {
        context: format!("cannot bind a UDP socket on {bind}"),
        source,
    })
}

/// A readable reason for a failed connection attempt.
pub(crate) fn describe_connection_error(e: &quinn::ConnectionError) -> String {
    match e {
        quinn::ConnectionError::TransportError(t) if is_tls_alert(t.code) => {
            format!("TLS handshake failed: {t}")
        }
        quinn::ConnectionError::TransportError(t) => t.to_string(),
        quinn::ConnectionError::ConnectionClosed(c) if is_tls_alert(c.error_code) => {
            format!("TLS handshake failed: the server refused it: {c}")
        }
        quinn::ConnectionError::ConnectionClosed(c) => format!("refused by the server: {c}"),
        quinn::ConnectionError::TimedOut => "timed out".to_string(),
        other => other.to_string(),
    }
}

/// Whether a QUIC error code carries a TLS alert (RFC 9001 section 4.8: `0x0100` plus
/// the alert), which is how a refused certificate or a failed handshake ends a connection.
fn is_tls_alert(code: quinn::TransportErrorCode) -> bool {
    (0x100..=0x1ff).contains(&u64::from(code))
}
