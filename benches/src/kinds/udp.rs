//! `udp`: raw tokio UDP ping-pong, the floor every other kind is above.
//!
//! The client sends one datagram holding the payload and waits for the echo.
//! Each call in flight uses its own connected socket, taken from a small pool,
//! so no demultiplexing sits in the measured path.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::UdpSocket;

use super::{Client, Listening, Ready, Transport};
use crate::tls::Identity;
use crate::Result;

/// Largest UDP payload over IPv4 (65535 - 8 byte UDP header - 20 byte IP header).
pub const MAX_DATAGRAM: usize = 65_507;

/// A call that gets no echo within this time fails (a lost datagram).
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// The raw UDP kind.
pub struct Udp;

/// Client of [`Udp`]: a pool of sockets connected to the server.
pub struct UdpClient {
    server: SocketAddr,
    idle: RefCell<Vec<UdpSocket>>,
}

impl Transport for Udp {
    type Client = UdpClient;

    async fn serve(addr: SocketAddr, _identity: &Identity, ready: Ready) -> Result<()> {
        let socket = UdpSocket::bind(addr).await?;
        ready.announce(socket.local_addr()?);
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        loop {
            let (len, peer) = socket.recv_from(&mut buf).await?;
            socket.send_to(&buf[..len], peer).await?;
        }
    }

    async fn connect(server: &Listening) -> Result<UdpClient> {
        Ok(UdpClient {
            server: server.addr,
            idle: RefCell::new(Vec::new()),
        })
    }
}

impl UdpClient {
    async fn socket(&self) -> Result<UdpSocket> {
        // Never hold the RefCell borrow across an await.
        let pooled = self.idle.borrow_mut().pop();
        match pooled {
            Some(socket) => Ok(socket),
            None => {
                let socket = UdpSocket::bind("127.0.0.1:0").await?;
                socket.connect(self.server).await?;
                Ok(socket)
            }
        }
    }
}

impl Client for UdpClient {
    fn max_payload(&self) -> Option<usize> {
        Some(MAX_DATAGRAM)
    }

    async fn call(&self, payload: Bytes) -> Result<Bytes> {
        let socket = self.socket().await?;
        socket.send(&payload).await?;
        let mut buf = vec![0u8; payload.len() + 1];
        let len = tokio::time::timeout(CALL_TIMEOUT, socket.recv(&mut buf))
            .await
            .map_err(|_| "udp: no echo within 2 s (datagram lost?)")??;
        buf.truncate(len);
        self.idle.borrow_mut().push(socket);
        Ok(Bytes::from(buf))
    }
}
