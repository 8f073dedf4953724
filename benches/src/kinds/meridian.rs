//! `meridian`: a Meridian unary call with raw-bytes payloads, the figure under test.
//!
//! The server registers one raw unary method, `echo`; the client calls it on one
//! [`meridian::Channel`]. Each call is HEADERS + DATA on a new stream, answered by DATA +
//! TRAILERS: the framing, status and deadline machinery every Meridian call pays for, on
//! the same quinn and rustls as the bare quinn kind.

use std::net::SocketAddr;

use bytes::Bytes;
use meridian::proxy::Proxy;
use meridian::region::{RegionClient, RegionMap, ServerEndpoint, StaticDiscovery};
use meridian::{Channel, ClientTls, Method, Server, ServerTls, TransportConfig};
use rustls::pki_types::PrivateKeyDer;

use super::{Client, Listening, Ready, Transport};
use crate::tls::{self, Identity};
use crate::Result;

/// The Meridian kind.
pub struct Meridian;

/// Client of [`Meridian`]: one channel, a stream per call.
pub struct MeridianClient {
    channel: Channel,
}

/// Windows as large as the other kinds get, so 1 MiB payloads are not held back.
fn transport_config() -> TransportConfig {
    TransportConfig {
        stream_receive_window: 4 << 20,
        connection_receive_window: 16 << 20,
        send_window: 16 << 20,
        ..TransportConfig::default()
    }
}

/// The bench's certificate as Meridian's identity type.
pub(crate) fn meridian_identity(identity: &Identity) -> meridian::Identity {
    meridian::Identity {
        chain: vec![identity.cert_der.clone()],
        key: PrivateKeyDer::Pkcs8(identity.key_der.clone_key()),
    }
}

/// The echo server every Meridian kind calls.
async fn echo_server(addr: SocketAddr, identity: &Identity) -> Result<Server> {
    Ok(Server::builder()
        .transport(transport_config())
        .no_local_registry()
        // Idempotent, so a resumed client may send it in 0-RTT data (the connect
        // benchmark measures that).
        .raw()
        .unary(
            Method::new("echo").idempotent(),
            |payload: Bytes, _| async move { Ok(payload) },
        )
        .typed()
        .bind(addr, ServerTls::new(meridian_identity(identity)))
        .await?)
}

impl Transport for Meridian {
    type Client = MeridianClient;

    async fn serve(addr: SocketAddr, identity: &Identity, ready: Ready) -> Result<()> {
        let server = echo_server(addr, identity).await?;
        ready.announce(server.local_addr());
        // Serve until the process is ended.
        std::future::pending::<()>().await;
        drop(server);
        Ok(())
    }

    async fn connect(server: &Listening) -> Result<MeridianClient> {
        let tls = ClientTls::with_roots([server.cert.clone()])?;
        let channel = Channel::builder(server.addr, tls)
            .server_name(tls::SERVER_NAME)
            .transport(transport_config())
            .connect()
            .await?;
        Ok(MeridianClient { channel })
    }
}

/// The `meridian-proxy` kind: the same echo call, sent to a [`meridian::proxy::Proxy`]
/// that forwards it to the echo server. Server and proxy share the serve process and its
/// one thread (this VM has two CPUs: one for the client, one for both of them), so the
/// extra hop costs loopback packets and the proxy's work but no cross-thread wake-up.
pub struct MeridianViaProxy;

impl Transport for MeridianViaProxy {
    type Client = MeridianClient;

    async fn serve(addr: SocketAddr, identity: &Identity, ready: Ready) -> Result<()> {
        let server = echo_server(addr, identity).await?;
        let mut map = RegionMap::new();
        map.add_server(
            "local",
            ServerEndpoint::new(server.local_addr(), tls::SERVER_NAME),
        );
        let upstream = RegionClient::builder(
            StaticDiscovery::new(map),
            ClientTls::with_roots([identity.cert_der.clone()])?,
        )
        .transport(transport_config())
        .build()?;
        let proxy = Proxy::builder(upstream)
            .transport(transport_config())
            .bind(addr, ServerTls::new(meridian_identity(identity)))
            .await?;
        if !proxy
            .upstream()
            .ready("echo", std::time::Duration::from_secs(5))
            .await
        {
            return Err("the proxy cannot reach the echo server".into());
        }
        ready.announce(proxy.local_addr());
        std::future::pending::<()>().await;
        drop((server, proxy));
        Ok(())
    }

    async fn connect(server: &Listening) -> Result<MeridianClient> {
        Meridian::connect(server).await
    }
}

impl Client for MeridianClient {
    fn datagrams(&self) -> Option<(u64, u64)> {
        let s = self.channel.stats();
        Some((s.datagrams_sent, s.datagrams_received))
    }

    async fn call(&self, payload: Bytes) -> Result<Bytes> {
        Ok(self
            .channel
            .call("echo")
            .raw()
            .unary(&payload)
            .await?
            .into_inner())
    }
}
