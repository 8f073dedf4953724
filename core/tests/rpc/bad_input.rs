//! Bad input from a peer fails one call with a clear status; the server lives on.

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use meridian::wire::{self, FrameKind, RequestHeaders, Trailers, WireLimits};
use meridian::{Code, Codec, Metadata, TransportConfig};

use crate::common::Fixture;

/// A raw QUIC connection to the fixture's server, for sending what no client would.
async fn raw_connection(fx: &Fixture) -> quinn::Connection {
    let cfg = fx
        .client_tls()
        .quinn_config(&TransportConfig::default())
        .unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(cfg);
    ep.connect(fx.server.local_addr(), "localhost")
        .unwrap()
        .await
        .unwrap()
}

/// Sends `bytes` on a new stream and returns what the server answered (or how it reset).
async fn exchange(conn: &quinn::Connection, bytes: &[u8]) -> Result<Vec<u8>, String> {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let _ = send.write_all(bytes).await;
    let _ = send.finish();
    match tokio::time::timeout(Duration::from_secs(15), recv.read_to_end(1 << 20)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer".into()),
    }
}

fn trailers_of(answer: &[u8]) -> Trailers {
    let mut dec = wire::FrameDecoder::new(WireLimits::default());
    dec.extend(answer);
    let mut last = None;
    while let Some(f) = dec.next_frame().unwrap() {
        last = Some(f);
    }
    let f = last.expect("a frame");
    assert_eq!(f.kind, FrameKind::Trailers);
    Trailers::decode(&f.payload, &WireLimits::default()).unwrap()
}

#[tokio::test]
async fn oversized_message_is_resource_exhausted_and_the_connection_lives() {
    let fx = Fixture::start_with(|b| {
        b.transport(TransportConfig {
            wire: WireLimits {
                max_message_size: 1024,
                ..Default::default()
            },
            ..Default::default()
        })
    })
    .await;
    let ch = fx.channel().await;
    let big = vec![7u8; 64 * 1024];
    let err = ch
        .call("raw_reverse")
        .raw()
        .unary(&big.into())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    // Same connection, next call fine.
    assert_eq!(ch.unary::<_, i64>("add", &(2i64, 2i64)).await.unwrap(), 4);
    assert_eq!(ch.stats().connections, 1);
}

#[tokio::test]
async fn client_refuses_to_send_over_its_own_limit() {
    let fx = Fixture::start().await;
    let ch = meridian::Channel::builder(fx.server.local_addr(), fx.client_tls())
        .transport(TransportConfig {
            wire: WireLimits {
                max_message_size: 100,
                ..Default::default()
            },
            ..Default::default()
        })
        .connect()
        .await
        .unwrap();
    let err = ch
        .call("raw_reverse")
        .raw()
        .unary(&vec![0u8; 101].into())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
}

#[tokio::test]
async fn unknown_method_is_unimplemented() {
    let fx = Fixture::start().await;
    let ch = fx.channel().await;
    let err = ch.unary::<_, ()>("no_such_method", &()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    assert!(err.message().contains("no_such_method"));
}

#[tokio::test]
async fn a_panicking_handler_is_internal_and_the_server_lives() {
    let fx = Fixture::start().await;
    let ch = fx.channel().await;
    for _ in 0..3 {
        let err = ch.unary::<_, ()>("panic", &()).await.unwrap_err();
        assert_eq!(err.code(), Code::Internal);
    }
    assert_eq!(ch.unary::<_, i64>("add", &(1i64, 2i64)).await.unwrap(), 3);
    assert_eq!(fx.server.stats().calls_failed, 3);
}

#[tokio::test]
async fn garbage_and_truncated_frames_get_errors_and_the_server_keeps_serving() {
    let fx = Fixture::start().await;
    let conn = raw_connection(&fx).await;

    // Pure garbage: an unknown frame kind.
    let answer = exchange(&conn, b"\xff\xfe\xfd garbage").await;
    match answer {
        Ok(bytes) => assert_ne!(trailers_of(&bytes).code, Code::Ok),
        Err(e) => assert!(!e.is_empty()),
    }

    // A DATA frame before any HEADERS.
    let mut b = BytesMut::new();
    wire::put_frame(&mut b, FrameKind::Data, b"hello");
    let t = trailers_of(&exchange(&conn, &b).await.unwrap());
    assert_eq!(t.code, Code::InvalidArgument);

    // HEADERS whose payload is cut short.
    let mut b = BytesMut::new();
    wire::put_frame(&mut b, FrameKind::Headers, &[0x00]);
    let t = trailers_of(&exchange(&conn, &b).await.unwrap());
    assert_eq!(t.code, Code::InvalidArgument);

    // Valid HEADERS, then a DATA frame that promises 100 bytes and ends after 3.
    let headers = RequestHeaders {
        method: "add".into(),
        codec: Codec::Postcard,
        timeout: None,
        idempotent: false,
        routing_key: None,
        metadata: Metadata::new(),
    };
    let mut b = headers.to_frame();
    b.put_u8(FrameKind::Data as u8);
    wire::put_varint(&mut b, 100);
    b.put_slice(b"abc");
    let t = trailers_of(&exchange(&conn, &b).await.unwrap());
    assert_ne!(t.code, Code::Ok);

    // A frame header that declares a length far over every limit.
    let mut b = BytesMut::new();
    b.put_u8(FrameKind::Headers as u8);
    wire::put_varint(&mut b, 1 << 40);
    let t = trailers_of(&exchange(&conn, &b).await.unwrap());
    assert_eq!(t.code, Code::ResourceExhausted);

    // An empty stream.
    let _ = exchange(&conn, b"").await;

    // The same raw connection and a normal client are still served.
    let mut ok = headers.to_frame();
    let mut msg = Vec::new();
    meridian::codec::encode_message(Codec::Postcard, &(20i64, 22i64), &mut msg).unwrap();
    wire::put_frame(&mut ok, FrameKind::Data, &msg);
    let answer = exchange(&conn, &ok).await.unwrap();
    assert_eq!(trailers_of(&answer).code, Code::Ok);
    let ch = fx.channel().await;
    assert_eq!(
        ch.unary::<_, i64>("add", &(20i64, 22i64)).await.unwrap(),
        42
    );
}
