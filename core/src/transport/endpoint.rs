//! Client and server endpoints, and what a failed connection means.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, Runtime, UdpPoller};
use tokio::sync::oneshot;

use crate::status::Error;

/// Binds a server endpoint on `addr`. The receiver completes once the UDP socket is
/// closed, which happens only after quinn's endpoint task and every connection have let
/// go of it, some time after the last `Endpoint` handle is dropped: waiting on it tells a
/// stopped server when its port can be bound again.
pub(crate) fn server_endpoint(
    config: quinn::ServerConfig,
    addr: SocketAddr,
) -> io::Result<(quinn::Endpoint, oneshot::Receiver<()>)> {
    let socket = std::net::UdpSocket::bind(addr)?;
    let runtime = Arc::new(quinn::TokioRuntime);
    let (closed, released) = oneshot::channel();
    let socket = Arc::new(TrackedSocket {
        inner: runtime.wrap_udp_socket(socket)?,
        _closed: closed,
    });
    let endpoint = quinn::Endpoint::new_with_abstract_socket(
        quinn::EndpointConfig::default(),
        Some(config),
        socket,
        runtime,
    )?;
    Ok((endpoint, released))
}

/// A UDP socket that reports when it is closed: every holder of the inner socket (quinn
/// hands a poller to each connection) holds this one, so the inner socket is dropped, and
/// then `_closed` (declared after it, so dropped after it) signals, when the last holder
/// goes.
#[derive(Debug)]
struct TrackedSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    _closed: oneshot::Sender<()>,
}

impl AsyncUdpSocket for TrackedSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(TrackedPoller {
            inner: self.inner.clone().create_io_poller(),
            _socket: self,
        })
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// The inner socket's poller, keeping the tracked socket alive as long as it lives.
#[derive(Debug)]
struct TrackedPoller {
    inner: Pin<Box<dyn UdpPoller>>,
    _socket: Arc<TrackedSocket>,
}

impl UdpPoller for TrackedPoller {
    fn poll_writable(mut self: Pin<&mut Self>, cx: &mut Context) -> Poll<io::Result<()>> {
        self.inner.as_mut().poll_writable(cx)
    }
}

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
