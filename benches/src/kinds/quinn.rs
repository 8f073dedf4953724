//! `quinn`: a bare quinn round trip, the transport's own floor.
//!
//! One bidirectional stream per call and no framing: the client opens a
//! stream, writes the payload and finishes; the server reads to the end,
//! writes it back and finishes; the client reads to the end. TLS 1.3 with the
//! server's self-signed certificate, ALPN "bench".

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, TransportConfig, VarInt};

use super::{Client, Listening, Ready, Transport};
use crate::tls::{self, Identity};
use crate::Result;

/// ALPN protocol both ends agree on.
pub const ALPN: &[u8] = b"bench";

/// Largest message either side reads in one call.
const MAX_MESSAGE: usize = 16 << 20;

/// The bare quinn kind.
pub struct BareQuinn;

/// Client of [`BareQuinn`]: one connection, a stream per call.
pub struct QuinnClient {
    connection: Connection,
    // Kept so the endpoint's driver lives as long as the client.
    _endpoint: Endpoint,
}

/// Explicit, generous limits so 64 calls in flight and 1 MiB payloads are
/// never held back by flow control.
pub fn transport_config() -> TransportConfig {
    let mut config = TransportConfig::default();
    config
        .max_concurrent_bidi_streams(VarInt::from_u32(1024))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .stream_receive_window(VarInt::from_u32(4 << 20))
        .receive_window(VarInt::from_u32(16 << 20))
        .send_window(16 << 20);
    config
}

impl Transport for BareQuinn {
    type Client = QuinnClient;

    async fn serve(addr: SocketAddr, identity: &Identity, ready: Ready) -> Result<()> {
        let crypto = QuicServerConfig::try_from(tls::server_config(identity, &[ALPN])?)?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(Arc::new(transport_config()));
        let endpoint = Endpoint::server(config, addr)?;
        ready.announce(endpoint.local_addr()?);
        while let Some(incoming) = endpoint.accept().await {
            tokio::task::spawn_local(async move {
                if let Err(e) = serve_connection(incoming).await {
                    eprintln!("quinn server: connection ended: {e}");
                }
            });
        }
        Ok(())
    }

    async fn connect(server: &Listening) -> Result<QuinnClient> {
        let crypto = QuicClientConfig::try_from(tls::client_config(&server.cert, &[ALPN])?)?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(Arc::new(transport_config()));
        let mut endpoint = Endpoint::client("127.0.0.1:0".parse()?)?;
        endpoint.set_default_client_config(config);
        let connection = endpoint.connect(server.addr, tls::SERVER_NAME)?.await?;
        Ok(QuinnClient {
            connection,
            _endpoint: endpoint,
        })
    }
}

async fn serve_connection(incoming: quinn::Incoming) -> Result<()> {
    let connection = incoming.await?;
    loop {
        let (mut send, mut recv) = match connection.accept_bi().await {
            Ok(streams) => streams,
            // The client closing its connection is the normal end.
            Err(quinn::ConnectionError::ApplicationClosed(_))
            | Err(quinn::ConnectionError::LocallyClosed) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        tokio::task::spawn_local(async move {
            let echo = async {
                let data = recv.read_to_end(MAX_MESSAGE).await?;
                send.write_chunk(Bytes::from(data)).await?;
                send.finish()?;
                Ok::<(), crate::BoxError>(())
            };
            if let Err(e) = echo.await {
                eprintln!("quinn server: stream failed: {e}");
            }
        });
    }
}

impl Client for QuinnClient {
    fn datagrams(&self) -> Option<(u64, u64)> {
        let s = self.connection.stats();
        Some((s.udp_tx.datagrams, s.udp_rx.datagrams))
    }

    async fn call(&self, payload: Bytes) -> Result<Bytes> {
        let (mut send, mut recv) = self.connection.open_bi().await?;
        send.write_chunk(payload).await?;
        send.finish()?;
        Ok(Bytes::from(recv.read_to_end(MAX_MESSAGE).await?))
    }
}

impl Drop for QuinnClient {
    fn drop(&mut self) {
        self.connection.close(VarInt::from_u32(0), b"done");
    }
}
