//! The kinds of RPC under test and the two traits each one implements.
//!
//! Adding a kind takes three steps:
//! 1. a module here with a type implementing [`Transport`] (server side and
//!    connect) and a client type implementing [`Client`];
//! 2. a variant in [`Kind`] plus its name in [`Kind::name`] and [`Kind::ALL`];
//! 3. one arm in each of [`Kind::serve`], [`Kind::load`], [`Kind::connect_timed`] and
//!    [`Kind::bench`].
//!
//! The driver measures every kind with the same generic code
//! ([`crate::driver::measure`]), so nothing else needs to change.

pub mod grpc;
pub mod meridian;
pub mod quinn;
pub mod udp;

use std::future::Future;
use std::net::SocketAddr;

use bytes::Bytes;
use rustls::pki_types::CertificateDer;

use crate::driver::{self, KindResults, Plan};
use crate::paired::TimedCalls;
use crate::tls::Identity;
use crate::Result;

/// Where a server process listens, as read by the driver from its LISTEN line.
#[derive(Clone, Debug)]
pub struct Listening {
    /// The address the server bound.
    pub addr: SocketAddr,
    /// The server's self-signed certificate; kinds without TLS ignore it.
    pub cert: CertificateDer<'static>,
}

/// Called once by a server when it is ready to take calls.
pub struct Ready(Box<dyn FnOnce(SocketAddr)>);

impl Ready {
    /// Wraps the action to run once the server is bound.
    pub fn new(on_ready: impl FnOnce(SocketAddr) + 'static) -> Self {
        Self(Box::new(on_ready))
    }

    /// Tells the driver which address the server is bound to. Call it once
    /// the socket accepts, before serving.
    pub fn announce(self, bound: SocketAddr) {
        (self.0)(bound)
    }
}

/// One transport under test: its server and how a client connects to it.
///
/// Both sides run on a single-threaded tokio runtime inside a
/// [`tokio::task::LocalSet`], so futures need not be `Send` and
/// `tokio::task::spawn_local` is available (plain `tokio::spawn` works too).
pub trait Transport {
    /// The client handle this transport's `connect` returns.
    type Client: Client;

    /// Binds `addr` (port 0: any free port), calls [`Ready::announce`] with the
    /// bound address, then echoes every call's payload back until the process
    /// is ended. `identity` is the certificate to present if the kind uses TLS.
    fn serve(
        addr: SocketAddr,
        identity: &Identity,
        ready: Ready,
    ) -> impl Future<Output = Result<()>>;

    /// Connects to a server that `serve` started in another process. Any
    /// handshake happens here, outside the measured calls.
    fn connect(server: &Listening) -> impl Future<Output = Result<Self::Client>>;
}

/// A connected client. The driver shares one client between all calls in
/// flight (behind an `Rc`), so `call` takes `&self`.
pub trait Client: 'static {
    /// Largest payload the kind can carry in one call, if it has a limit.
    /// The driver reports "n/a" for larger sizes instead of calling.
    fn max_payload(&self) -> Option<usize> {
        None
    }

    /// Datagrams (sent, received) so far, where the kind can tell; printed by the driver
    /// when `BENCH_DEBUG` is set.
    fn datagrams(&self) -> Option<(u64, u64)> {
        None
    }

    /// One unary call: sends `payload`, returns the server's echo of it.
    fn call(&self, payload: Bytes) -> impl Future<Output = Result<Bytes>>;
}

/// Every kind the binary knows, by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Raw tokio UDP ping-pong: the floor.
    Udp,
    /// Bare quinn: one bidirectional stream per call, no framing.
    Quinn,
    /// tonic gRPC unary echo over plaintext HTTP/2.
    TonicH2c,
    /// tonic gRPC unary echo over HTTP/2 with TLS 1.3.
    TonicTls,
    /// Meridian: a raw-bytes unary call on a `meridian::Channel`.
    Meridian,
    /// The Meridian call through a `meridian::proxy::Proxy` in front of the server.
    MeridianProxy,
}

impl Kind {
    /// All kinds, in the order `run` measures them by default.
    pub const ALL: [Kind; 6] = [
        Kind::Udp,
        Kind::Quinn,
        Kind::Meridian,
        Kind::MeridianProxy,
        Kind::TonicH2c,
        Kind::TonicTls,
    ];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Udp => "udp",
            Kind::Quinn => "quinn",
            Kind::TonicH2c => "tonic-h2c",
            Kind::TonicTls => "tonic-tls",
            Kind::Meridian => "meridian",
            Kind::MeridianProxy => "meridian-proxy",
        }
    }

    /// The kind called `name`, if any.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }

    /// Runs this kind's server (see [`Transport::serve`]).
    pub async fn serve(self, addr: SocketAddr, identity: &Identity, ready: Ready) -> Result<()> {
        match self {
            Kind::Udp => udp::Udp::serve(addr, identity, ready).await,
            Kind::Quinn => quinn::BareQuinn::serve(addr, identity, ready).await,
            Kind::TonicH2c => grpc::TonicH2c::serve(addr, identity, ready).await,
            Kind::TonicTls => grpc::TonicTls::serve(addr, identity, ready).await,
            Kind::Meridian => meridian::Meridian::serve(addr, identity, ready).await,
            Kind::MeridianProxy => meridian::MeridianViaProxy::serve(addr, identity, ready).await,
        }
    }

    /// Connects a client to `server`, boxed so that clients of several kinds can take
    /// turns (`meridian-bench latency`).
    pub async fn connect_timed(self, server: &Listening) -> Result<Box<dyn TimedCalls>> {
        Ok(match self {
            Kind::Udp => Box::new(udp::Udp::connect(server).await?),
            Kind::Quinn => Box::new(quinn::BareQuinn::connect(server).await?),
            Kind::TonicH2c => Box::new(grpc::TonicH2c::connect(server).await?),
            Kind::TonicTls => Box::new(grpc::TonicTls::connect(server).await?),
            Kind::Meridian => Box::new(meridian::Meridian::connect(server).await?),
            Kind::MeridianProxy => Box::new(meridian::MeridianViaProxy::connect(server).await?),
        })
    }

    /// Connects to `server` and runs the whole measurement plan against it.
    /// Only the throughput phase, for `time`; returns the calls completed in `time`, and
    /// in all.
    pub async fn load(self, server: &Listening, time: std::time::Duration) -> Result<(u64, u64)> {
        match self {
            Kind::Udp => driver::load::<udp::Udp>(server, time).await,
            Kind::Quinn => driver::load::<quinn::BareQuinn>(server, time).await,
            Kind::TonicH2c => driver::load::<grpc::TonicH2c>(server, time).await,
            Kind::TonicTls => driver::load::<grpc::TonicTls>(server, time).await,
            Kind::Meridian => driver::load::<meridian::Meridian>(server, time).await,
            Kind::MeridianProxy => driver::load::<meridian::MeridianViaProxy>(server, time).await,
        }
    }

    pub async fn bench(self, server: &driver::ServerProcess, plan: &Plan) -> Result<KindResults> {
        match self {
            Kind::Udp => driver::measure::<udp::Udp>(server, plan).await,
            Kind::Quinn => driver::measure::<quinn::BareQuinn>(server, plan).await,
            Kind::TonicH2c => driver::measure::<grpc::TonicH2c>(server, plan).await,
            Kind::TonicTls => driver::measure::<grpc::TonicTls>(server, plan).await,
            Kind::Meridian => driver::measure::<meridian::Meridian>(server, plan).await,
            Kind::MeridianProxy => {
                driver::measure::<meridian::MeridianViaProxy>(server, plan).await
            }
        }
    }
}
