//! Building a [`Channel`]: address, trust, transport settings, endpoint sharing.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use tokio::sync::watch;

use super::channel::Channel;
use super::connection::{ChannelInner, Link};
use super::intercept::Interceptor;
use super::stats::Counters;
use crate::status::Error;
use crate::transport::{pinned_quinn_config, ClientTls, TransportConfig};

/// Builds a [`Channel`].
pub struct ChannelBuilder {
    pub(super) addr: SocketAddr,
    pub(super) tls: ClientTls,
    pub(super) server_name: String,
    pub(super) transport: TransportConfig,
    pub(super) endpoint: Option<quinn::Endpoint>,
    pub(super) interceptors: Vec<Arc<dyn Interceptor>>,
    pub(super) cert_sha256: Option<[u8; 32]>,
}

impl std::fmt::Debug for ChannelBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelBuilder")
            .field("addr", &self.addr)
            .field("server_name", &self.server_name)
            .field("interceptors", &self.interceptors.len())
            .finish_non_exhaustive()
    }
}

impl ChannelBuilder {
    /// The name the server's certificate must carry: a DNS name, or an IP address (checked
    /// against the certificate's IP address entries). Default: the IP address dialled.
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = name.into();
        self
    }

    /// Also requires the server's end-entity certificate to have this SHA-256 (of its
    /// DER), on top of the normal verification: a server that presents another
    /// certificate, even a valid one for the right name, is refused during the handshake
    /// with a [`CertHashMismatch`](crate::transport::CertHashMismatch) in the error.
    /// The channel then keeps its own session tickets (resumption only ever reaches a
    /// server that passed the pin).
    pub fn require_cert_sha256(mut self, hash: [u8; 32]) -> Self {
        self.cert_sha256 = Some(hash);
        self
    }

    /// Transport limits and timers.
    pub fn transport(mut self, transport: TransportConfig) -> Self {
        self.transport = transport;
        self
    }

    /// Adds an interceptor to the channel's chain: it sees every call before it is sent
    /// and how it ended (see [`Interceptor`]); interceptors run in the order added.
    pub fn intercept(mut self, interceptor: impl Interceptor) -> Self {
        self.interceptors.push(Arc::new(interceptor));
        self
    }

    /// Shares an existing client endpoint (one UDP socket for many channels).
    pub fn endpoint(mut self, endpoint: quinn::Endpoint) -> Self {
        self.endpoint = Some(endpoint);
        self
    }

    /// Connects (QUIC + TLS handshake) and returns the channel. On a full handshake a
    /// certificate the client does not trust, or a server that requires a client
    /// certificate we lack, fails here. A connection resumed with 0-RTT is usable before
    /// the handshake completes, so such a failure then shows on the first call instead.
    pub async fn connect(self) -> Result<Channel, Error> {
        let (endpoint, shared) = match self.endpoint {
            Some(e) => (e, None),
            None => (
                self.tls.endpoint_for(self.addr, None)?,
                Some(self.tls.clone()),
            ),
        };
        let config = match self.cert_sha256 {
            Some(hash) => pinned_quinn_config(&self.tls, &self.transport, hash)?,
            None => self.tls.quinn_config_for(&self.transport, self.addr)?,
        };
        let inner = Arc::new(ChannelInner {
            addr: self.addr,
            server_name: self.server_name,
            endpoint: RwLock::new(endpoint),
            shared_sockets: shared,
            config,
            wire: self.transport.wire,
            value: self.transport.value,
            handshake_timeout: self.transport.handshake_timeout,
            conn: RwLock::new(None),
            reconnect_wait: self.transport.reconnect_wait,
            link: watch::channel(Link::Connecting {
                since: std::time::Instant::now(),
                retrying: false,
                last_error: None,
            })
            .0,
            wake: Default::default(),
            closed: watch::channel(()).0,
            hello: watch::channel(None).0,
            catalog: Default::default(),
            hello_seq: Default::default(),
            stats: Counters::default(),
            extra: Default::default(),
            max_extra: self.transport.extra_connections,
            credit_grace: self.transport.stream_credit_grace,
            interceptors: self.interceptors.into(),
        });
        inner.establish().await.map_err(|reason| Error::Connect {
            addr: self.addr,
            reason,
        })?;
        Ok(Channel { inner })
    }
}
