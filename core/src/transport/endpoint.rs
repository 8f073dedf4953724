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
        // An alert this side raised: the server's certificate did not pass.
        quinn::ConnectionError::TransportError(t) if is_tls_alert(t.code) => {
            let alert = u64::from(t.code) & 0xff;
            let what = if refuses_certificate(alert) || t.reason.contains("peer certificate") {
                "the server's certificate was rejected"
            } else {
                "this side aborted it"
            };
            format!(
                "TLS handshake failed: {what}: {} (TLS alert {})",
                t.reason,
                alert_name(alert)
            )
        }
        quinn::ConnectionError::TransportError(t) => t.to_string(),
        quinn::ConnectionError::ConnectionClosed(c) if is_tls_alert(c.error_code) => {
            let alert = u64::from(c.error_code) & 0xff;
            let reason = String::from_utf8_lossy(&c.reason);
            let detail = if reason.is_empty() {
                String::new()
            } else {
                format!(": {reason}")
            };
            let what = if refuses_certificate(alert) || reason.contains("peer certificate") {
                "the server refused the client certificate"
            } else {
                "the server refused it"
            };
            format!(
                "TLS handshake failed: {what}{detail} (TLS alert {})",
                alert_name(alert)
            )
        }
        quinn::ConnectionError::ConnectionClosed(c) => format!("refused by the server: {c}"),
        quinn::ConnectionError::TimedOut => "timed out".to_string(),
        other => other.to_string(),
    }
}

/// Whether a TLS alert is about the peer's certificate (none given when one is required,
/// or one not trusted). A server sends these only about the client's certificate, a client
/// only about the server's.
fn refuses_certificate(alert: u64) -> bool {
    matches!(alert, 42..=46 | 48 | 116)
}

/// The RFC 8446 name of a TLS alert, or its number.
fn alert_name(alert: u64) -> String {
    let name = match alert {
        10 => "unexpected_message",
        20 => "bad_record_mac",
        40 => "handshake_failure",
        42 => "bad_certificate",
        43 => "unsupported_certificate",
        44 => "certificate_revoked",
        45 => "certificate_expired",
        46 => "certificate_unknown",
        47 => "illegal_parameter",
        48 => "unknown_ca",
        49 => "access_denied",
        50 => "decode_error",
        51 => "decrypt_error",
        70 => "protocol_version",
        80 => "internal_error",
        109 => "missing_extension",
        110 => "unsupported_extension",
        112 => "unrecognized_name",
        116 => "certificate_required",
        120 => "no_application_protocol",
        _ => return alert.to_string(),
    };
    name.to_string()
}

/// Whether a QUIC error code carries a TLS alert (RFC 9001 section 4.8: `0x0100` plus
/// the alert), which is how a refused certificate or a failed handshake ends a connection.
fn is_tls_alert(code: quinn::TransportErrorCode) -> bool {
    (0x100..=0x1ff).contains(&u64::from(code))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closed_by_server(alert: u8, reason: &str) -> quinn::ConnectionError {
        quinn::ConnectionError::ConnectionClosed(quinn::ConnectionClose {
            error_code: quinn::TransportErrorCode::crypto(alert),
            frame_type: None,
            reason: reason.as_bytes().to_vec().into(),
        })
    }

    #[test]
    fn a_server_s_alert_about_the_client_certificate_says_so() {
        let text = describe_connection_error(&closed_by_server(116, "peer sent no certificates"));
        assert_eq!(
            text,
            "TLS handshake failed: the server refused the client certificate: \
             peer sent no certificates (TLS alert certificate_required)"
        );
        let text = describe_connection_error(&closed_by_server(48, ""));
        assert!(text.contains("refused the client certificate"), "{text}");
        let text = describe_connection_error(&closed_by_server(120, ""));
        assert_eq!(
            text,
            "TLS handshake failed: the server refused it (TLS alert no_application_protocol)"
        );
        let text = describe_connection_error(&closed_by_server(200, ""));
        assert!(text.ends_with("(TLS alert 200)"), "{text}");
    }
}
