//! `tonic-h2c` and `tonic-tls`: a tonic gRPC unary echo over HTTP/2, in
//! plaintext or with TLS 1.3.
//!
//! The service is written by hand instead of generated from a `.proto` file
//! (no `protoc`, nothing runs at build time): a [`Codec`] that passes raw
//! [`Bytes`] through, a [`UnaryService`] that echoes them, and a small tower
//! service that routes the one method path to tonic's `server::Grpc`. On the
//! wire this is ordinary gRPC: 5-byte message framing, HTTP/2 headers and
//! trailers, `grpc-status`.

use std::convert::Infallible;
use std::future::{ready, Future, Ready as ReadyFuture};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes};
use http::uri::PathAndQuery;
use tonic::body::Body;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::server::UnaryService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint, Server, ServerTlsConfig};
use tonic::Status;

use super::{Client, Listening, Ready, Transport};
use crate::tls::{self, Identity};
use crate::Result;

/// The one method the service offers, as a gRPC path.
pub const METHOD: &str = "/meridian.bench.Echo/Echo";

/// Largest message either side accepts (tonic's default is 4 MiB inbound).
const MAX_MESSAGE: usize = 16 << 20;

/// HTTP/2 windows on both sides, matched to the quinn kind's stream and
/// connection windows so 1 MiB messages are not throttled by flow control.
const STREAM_WINDOW: u32 = 4 << 20;
const CONNECTION_WINDOW: u32 = 16 << 20;

/// tonic over plaintext HTTP/2 (h2c, prior knowledge).
pub struct TonicH2c;

/// tonic over HTTP/2 with TLS 1.3 (rustls, ring).
pub struct TonicTls;

impl Transport for TonicH2c {
    type Client = TonicClient;

    async fn serve(addr: SocketAddr, _identity: &Identity, ready: Ready) -> Result<()> {
        serve(addr, None, ready).await
    }

    async fn connect(server: &Listening) -> Result<TonicClient> {
        TonicClient::connect(server, false).await
    }
}

impl Transport for TonicTls {
    type Client = TonicClient;

    async fn serve(addr: SocketAddr, identity: &Identity, ready: Ready) -> Result<()> {
        serve(addr, Some(identity), ready).await
    }

    async fn connect(server: &Listening) -> Result<TonicClient> {
        TonicClient::connect(server, true).await
    }
}

/// Serves the echo method, with TLS if `identity` is given.
async fn serve(addr: SocketAddr, identity: Option<&Identity>, ready: Ready) -> Result<()> {
    let incoming = TcpIncoming::bind(addr)?.with_nodelay(Some(true));
    let bound = incoming.local_addr()?;
    let mut server = Server::builder()
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW);
    if let Some(identity) = identity {
        let identity = tonic::transport::Identity::from_pem(&identity.cert_pem, &identity.key_pem);
        server = server.tls_config(ServerTlsConfig::new().identity(identity))?;
    }
    ready.announce(bound);
    server.serve_with_incoming(EchoRouter, incoming).await?;
    Ok(())
}

/// Client of both tonic kinds: one HTTP/2 connection (a tonic [`Channel`]).
pub struct TonicClient {
    grpc: tonic::client::Grpc<Channel>,
}

impl TonicClient {
    pub(crate) async fn connect(server: &Listening, tls: bool) -> Result<Self> {
        let scheme = if tls { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{}", server.addr))?
            .tcp_nodelay(true)
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW);
        if tls {
            let roots = tls::roots_trusting(&server.cert)?;
            endpoint = endpoint.tls_config(
                ClientTlsConfig::new()
                    .domain_name(tls::SERVER_NAME)
                    .trust_anchors(roots.roots),
            )?;
        }
        let channel = endpoint.connect().await?;
        let grpc = tonic::client::Grpc::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        Ok(Self { grpc })
    }
}

impl Client for TonicClient {
    async fn call(&self, payload: Bytes) -> Result<Bytes> {
        // Cloning a `Grpc<Channel>` is cheap (a handle to the same
        // connection); it is how tonic clients are shared between tasks.
        let mut grpc = self.grpc.clone();
        grpc.ready().await?;
        let response = grpc
            .unary(
                tonic::Request::new(payload),
                PathAndQuery::from_static(METHOD),
                BytesCodec,
            )
            .await?;
        Ok(response.into_inner())
    }
}

/// A gRPC codec whose messages are raw bytes: no protobuf, no copy beyond
/// what tonic's own buffers need.
#[derive(Clone, Copy, Debug, Default)]
pub struct BytesCodec;

/// Encoder half of [`BytesCodec`].
#[derive(Debug)]
pub struct BytesEncoder;

/// Decoder half of [`BytesCodec`].
#[derive(Debug)]
pub struct BytesDecoder;

impl Codec for BytesCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = BytesEncoder;
    type Decoder = BytesDecoder;

    fn encoder(&mut self) -> BytesEncoder {
        BytesEncoder
    }

    fn decoder(&mut self) -> BytesDecoder {
        BytesDecoder
    }
}

impl Encoder for BytesEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for BytesDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// The echo method itself.
#[derive(Clone, Copy, Debug)]
struct EchoMethod;

impl UnaryService<Bytes> for EchoMethod {
    type Response = Bytes;
    type Future = ReadyFuture<Result<tonic::Response<Bytes>, Status>>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        ready(Ok(tonic::Response::new(request.into_inner())))
    }
}

/// Routes HTTP/2 requests: [`METHOD`] to the echo, anything else to
/// `UNIMPLEMENTED`. This is what generated `*Server` types do.
#[derive(Clone, Copy, Debug)]
struct EchoRouter;

type BoxResponse = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

impl tower_service::Service<http::Request<Body>> for EchoRouter {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxResponse;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> BoxResponse {
        if request.uri().path() != METHOD {
            let status = Status::unimplemented(format!("no method {}", request.uri().path()));
            return Box::pin(ready(Ok(status.into_http())));
        }
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(BytesCodec)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE);
            Ok(grpc.unary(EchoMethod, request).await)
        })
    }
}
