//! Hostile and broken peers over real QUIC (issue #15): a raw quinn client (or server)
//! speaks the wire format of `docs/PROTOCOL.md` and sends what no Meridian peer would.
//! Each test checks that what the peer can make us hold stays bounded and that a
//! well-behaved client keeps getting answers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use meridian::region::RegionClient;
use meridian::wire::{self, reset, FrameKind, Hello, RequestHeaders, Trailers, WireLimits};
use meridian::{
    Channel, ClientTls, Code, Codec, DevCa, Metadata, RequestStream, Server, ServerTls,
    TransportConfig, Value,
};

/// A server with the few methods the attacks aim at.
struct Target {
    server: Server,
    ca: DevCa,
}

impl Target {
    async fn start() -> Target {
        Target::start_with(TransportConfig::default()).await
    }

    async fn start_with(transport: TransportConfig) -> Target {
        let ca = DevCa::new().expect("dev CA");
        let tls = ServerTls::new(ca.issue_server(&["localhost"]).expect("server cert"));
        let server = Server::builder()
            .transport(transport)
            .region("hostile")
            .server_id("hostile-1")
            .unary("add", |(a, b): (i64, i64), _| async move { Ok(a + b) })
            .unary("value_len", |v: Value, _| async move {
                Ok(match v {
                    Value::List(items) => items.len() as u64,
                    _ => 0,
                })
            })
            .unary("many_trailers", |n: u32, ctx| async move {
                for _ in 0..n {
                    ctx.set_trailer("", "");
                }
                Ok(())
            })
            .client_streaming("sum", |mut reqs: RequestStream<i64>, _| async move {
                let mut total = 0;
                while let Some(v) = reqs.message().await? {
                    total += v;
                }
                Ok(total)
            })
            .server_streaming(
                "count",
                |n: u32, _, sink: meridian::ResponseSink<u32>| async move {
                    for i in 0..n {
                        sink.send(&i).await?;
                    }
                    Ok(())
                },
            )
            .raw()
            .unary("echo", |b: Bytes, _| async move { Ok(b) })
            // 4 MiB back for any request: more than a client's default stream window.
            .unary("big_reply", |_: Bytes, _| async move {
                Ok(Bytes::from(vec![7u8; WireLimits::DEFAULT_MAX_MESSAGE_SIZE]))
            })
            // 64 MiB in 1 MiB messages, for any request.
            .server_streaming(
                "flood",
                |_: Bytes, _, sink: meridian::ResponseSink<Bytes>| async move {
                    let chunk = Bytes::from(vec![7u8; 1 << 20]);
                    for _ in 0..64 {
                        sink.send(&chunk).await?;
                    }
                    Ok(())
                },
            )
            .bind("127.0.0.1:0".parse().unwrap(), tls)
            .await
            .expect("bind");
        Target { server, ca }
    }

    fn client_tls(&self) -> ClientTls {
        ClientTls::with_roots([self.ca.certificate().clone()]).expect("roots")
    }

    async fn channel(&self) -> Channel {
        Channel::builder(self.server.local_addr(), self.client_tls())
            .connect()
            .await
            .expect("connect")
    }

    /// A raw QUIC connection speaking `meridian/1`, for sending what no client would.
    async fn raw(&self) -> quinn::Connection {
        let cfg = self
            .client_tls()
            .quinn_config(&TransportConfig::default())
            .unwrap();
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        ep.set_default_client_config(cfg);
        ep.connect(self.server.local_addr(), "localhost")
            .unwrap()
            .await
            .unwrap()
    }

    /// Every byte the server's calls held is given back within `limit`.
    async fn assert_buffers_given_back(&self, limit: Duration) {
        assert!(
            eventually(limit, || self.server.stats().buffered_bytes == 0).await,
            "{} bytes still held",
            self.server.stats().buffered_bytes
        );
    }

    /// A good client's calls still succeed.
    async fn assert_serves_a_good_client(&self) {
        let ch = self.channel().await;
        let echoed = ch
            .call("echo")
            .raw()
            .timeout(Duration::from_secs(10))
            .unary(&Bytes::from_static(b"still here"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(&echoed[..], b"still here");
        assert_eq!(
            ch.unary::<_, i64>("add", &(20i64, 22i64)).await.unwrap(),
            42
        );
    }
}

fn headers(method: &str, codec: Codec, metadata: Metadata) -> RequestHeaders {
    RequestHeaders {
        method: method.into(),
        codec,
        timeout: None,
        idempotent: false,
        routing_key: None,
        metadata,
    }
}

/// Sends `bytes` and FIN on a new stream; returns the TRAILERS the server answered with.
async fn exchange(conn: &quinn::Connection, bytes: &[u8]) -> Trailers {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let _ = send.write_all(bytes).await;
    let _ = send.finish();
    trailers_of(&mut recv).await
}

/// The process's virtual memory size in bytes (Linux), which counts reservations whose
/// pages were never touched.
fn vm_size() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmSize:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}

const GIB: u64 = 1 << 30;

/// 1024 streams, each HEADERS for `echo` then a DATA header declaring 4 MiB and no payload
/// (15 bytes a stream): the server used to reserve the declared 4 MiB per stream, 4 GiB of
/// address space in all (fatal under an address-space limit or strict overcommit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_frame_lengths_reserve_nothing_and_a_good_client_is_served() {
    let target = Target::start().await;
    let conn = target.raw().await;
    let mut attack = headers("echo", Codec::Raw, Metadata::new()).to_frame();
    wire::put_frame_header(
        &mut attack,
        FrameKind::Data,
        WireLimits::DEFAULT_MAX_MESSAGE_SIZE,
    );
    assert_eq!(attack.len(), 15);
    let streams = TransportConfig::DEFAULT_MAX_CONCURRENT_STREAMS as usize;
    let before = vm_size();
    let mut held = Vec::new();
    for _ in 0..streams {
        let (mut send, recv) = conn.open_bi().await.unwrap();
        send.write_all(&attack).await.unwrap();
        held.push((send, recv));
    }
    assert!(
        eventually(Duration::from_secs(30), || target.server.stats().in_flight
            == streams)
        .await,
        "in flight: {}",
        target.server.stats().in_flight
    );
    // Every call has read its HEADERS and the DATA header after them (same packet).
    tokio::time::sleep(Duration::from_millis(500)).await;
    if let (Some(before), Some(after)) = (before, vm_size()) {
        let grown = after.saturating_sub(before);
        eprintln!(
            "{streams} streams declaring 4 MiB each: VmSize +{} MiB",
            grown >> 20
        );
        assert!(
            grown < 2 * GIB,
            "VmSize grew by {} MiB for {streams} streams of 15 bytes",
            grown >> 20
        );
    }
    target.assert_serves_a_good_client().await;
    drop(held);
}

/// A HEADERS of thousands of empty metadata entries: 2 bytes each on the wire, but each a
/// key, a value and their bookkeeping in memory. Each entry is charged 32 bytes against
/// the 16 KiB limit, so it is refused with RESOURCE_EXHAUSTED.
#[tokio::test]
async fn thousands_of_empty_metadata_entries_are_refused() {
    let target = Target::start().await;
    let conn = target.raw().await;
    let empty: Metadata = (0..5000).map(|_| ("", "")).collect();
    let mut call = headers("add", Codec::Postcard, empty).to_frame();
    let mut msg = Vec::new();
    meridian::codec::encode_message(Codec::Postcard, &(1i64, 2i64), &mut msg).unwrap();
    wire::put_frame(&mut call, FrameKind::Data, &msg);
    assert!(call.len() < 11_000, "{} bytes on the wire", call.len());
    let t = exchange(&conn, &call).await;
    assert_eq!(t.code, Code::ResourceExhausted, "{}", t.message);
    assert!(t.message.contains("metadata"), "{}", t.message);

    // Our own client counts the same way before sending: 600 empty entries are
    // 19 200 bytes against the 16 KiB limit.
    let ch = target.channel().await;
    let mut call = ch.call("add");
    for _ in 0..600 {
        call = call.metadata("", "");
    }
    let err = call.unary::<_, i64>(&(1i64, 2i64)).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(err.message().contains("metadata"), "{err}");

    // And the server checks the trailing metadata it sends.
    let err = ch
        .unary::<_, ()>("many_trailers", &600u32)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(err.message().contains("trailing metadata"), "{err}");
    ch.unary::<_, ()>("many_trailers", &100u32).await.unwrap();
    target.assert_serves_a_good_client().await;
}

/// A Value body of 4 million nulls is 4 MiB on the wire and would be 128 MiB as Values:
/// the decoded-size budget refuses it.
#[tokio::test]
async fn a_value_body_of_nulls_is_refused() {
    let target = Target::start().await;
    let ch = target.channel().await;
    let n = WireLimits::DEFAULT_MAX_MESSAGE_SIZE - 5;
    let mut body = Value::List(Vec::new()).to_bytes();
    body.truncate(1);
    let mut count = n as u64;
    while count >= 0x80 {
        body.push((count as u8 & 0x7f) | 0x80);
        count >>= 7;
    }
    body.push(count as u8);
    body.resize(body.len() + n, 0x00);
    assert!(body.len() <= WireLimits::DEFAULT_MAX_MESSAGE_SIZE);
    let err = ch
        .call("value_len")
        .raw()
        .codec(Codec::Value)
        .unary(&Bytes::from(body))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.message().contains("decoded"), "{err}");
    // A list the budget holds still decodes.
    let small = Value::List(vec![Value::Null; 1000]).to_bytes();
    let len: u64 = meridian::codec::decode_message(
        Codec::Value,
        &ch.call("value_len")
            .raw()
            .codec(Codec::Value)
            .unary(&Bytes::from(small))
            .await
            .unwrap()
            .into_inner(),
        &Default::default(),
    )
    .unwrap();
    assert_eq!(len, 1000);
    target.assert_serves_a_good_client().await;
}

/// Clients have no unidirectional streams in the protocol: the server stops each one at
/// once (STOP_SENDING(REFUSED)). They used to sit unread in quinn's buffers, 2 MiB each,
/// and, their credit never coming back, a fifth could not even be opened.
#[tokio::test]
async fn the_server_refuses_client_unidirectional_streams() {
    let target = Target::start().await;
    let conn = target.raw().await;
    let junk = vec![0x5a; 256 * 1024];
    for i in 0..16 {
        let mut s = tokio::time::timeout(Duration::from_secs(5), conn.open_uni())
            .await
            .unwrap_or_else(|_| panic!("no credit for unidirectional stream {i}"))
            .unwrap();
        let _ = s.write_all(&junk).await;
        let stopped = tokio::time::timeout(Duration::from_secs(5), s.stopped())
            .await
            .unwrap_or_else(|_| panic!("unidirectional stream {i} was not stopped"));
        assert_eq!(stopped.unwrap(), Some(reset::REFUSED.into()), "stream {i}");
    }
    target.assert_serves_a_good_client().await;
}

/// A raw QUIC server speaking `meridian/1` with a self-signed certificate, and the
/// client TLS that pins it.
fn raw_server() -> (quinn::Endpoint, ClientTls) {
    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = key.cert.der().clone();
    let der = rustls::pki_types::PrivatePkcs8KeyDer::from(key.signing_key.serialize_der());
    let mut tls =
        rustls::ServerConfig::builder_with_provider(meridian::transport::crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], der.into())
            .unwrap();
    tls.alpn_protocols = vec![wire::ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
    let config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    let ep = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
    (ep, ClientTls::pinned(cert))
}

/// The client reads the server's one HELLO stream and stops every other unidirectional
/// stream the server opens, instead of leaving their bytes unread in its buffers.
#[tokio::test]
async fn the_client_refuses_unidirectional_streams_beyond_the_hello() {
    let (ep, tls) = raw_server();
    let addr = ep.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let conn = ep.accept().await.unwrap().await.unwrap();
        let hello = Hello {
            version: wire::PROTOCOL_VERSION,
            server_id: "raw".into(),
            region: "raw".into(),
            load: 0,
            methods: Vec::new(),
        };
        let mut control = conn.open_uni().await.unwrap();
        control.write_all(&hello.to_frame()).await.unwrap();
        let mut codes = Vec::new();
        for _ in 0..8 {
            let mut junk = conn.open_uni().await.unwrap();
            let _ = junk.write_all(&[0x5a; 64 * 1024]).await;
            let stopped = tokio::time::timeout(Duration::from_secs(5), junk.stopped()).await;
            let code = stopped.ok().and_then(|s| s.ok()).flatten();
            codes.push(code);
            if code.is_none() {
                break;
            }
        }
        let control_stopped =
            tokio::time::timeout(Duration::from_millis(200), control.stopped()).await;
        (codes, control_stopped.is_ok(), conn, ep)
    });
    let ch = Channel::builder(addr, tls).connect().await.unwrap();
    let (codes, control_stopped, _conn, _ep) =
        tokio::time::timeout(Duration::from_secs(60), server)
            .await
            .expect("the raw server finished")
            .unwrap();
    let refused = Some(reset::REFUSED.into());
    assert!(codes.iter().all(|c| *c == refused), "{codes:?}");
    assert!(!control_stopped, "the HELLO stream was stopped");
    assert!(eventually(Duration::from_secs(5), || ch.server_info().is_some()).await);
    assert_eq!(ch.server_info().unwrap().server_id, "raw");
}

/// `timeout(Duration::MAX)` and other timeouts too long for the clock mean no deadline,
/// everywhere a caller can give one; a huge timeout is sent as the largest the wire holds,
/// not truncated to a few µs.
#[tokio::test]
async fn a_timeout_too_long_for_the_clock_is_no_deadline() {
    let target = Target::start().await;
    let ch = target.channel().await;
    for t in [
        Duration::MAX,
        Duration::from_secs(1 << 62),
        Duration::from_secs(u64::MAX / 4),
    ] {
        let sum: i64 = ch
            .call("add")
            .timeout(t)
            .unary(&(1i64, 2i64))
            .await
            .unwrap_or_else(|e| panic!("timeout {t:?}: {e}"))
            .into_inner();
        assert_eq!(sum, 3);
        let mut s = ch
            .call("count")
            .timeout(t)
            .server_streaming::<_, u32>(&3u32)
            .await
            .unwrap();
        let mut got = Vec::new();
        while let Some(i) = s.message().await.unwrap() {
            got.push(i);
        }
        assert_eq!(got, [0, 1, 2], "timeout {t:?}");
        let (mut sink, response) = ch
            .call("sum")
            .timeout(t)
            .client_streaming::<i64, i64>()
            .await
            .unwrap();
        sink.send(&40).await.unwrap();
        sink.send(&2).await.unwrap();
        sink.finish();
        assert_eq!(response.response().await.unwrap().into_inner(), 42);
    }
    let region = RegionClient::local().build().unwrap();
    assert!(region.ready("value_len", Duration::MAX).await);
    let len: u64 = region
        .call("value_len")
        .timeout(Duration::MAX)
        .codec(Codec::Value)
        .unary(&Value::List(vec![Value::Null]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(len, 1);
    target.server.shutdown(Duration::MAX).await;
}

/// A client-streaming send blocked by a server that never reads gives up at the call's
/// deadline with DEADLINE_EXCEEDED, and resets the request stream.
#[tokio::test]
async fn a_blocked_request_send_ends_at_the_deadline() {
    let (ep, tls) = raw_server();
    let addr = ep.local_addr().unwrap();
    // Accepts every call stream and never reads it, nor answers.
    let server = tokio::spawn(async move {
        let conn = ep.accept().await.unwrap().await.unwrap();
        let mut held = Vec::new();
        while let Ok(stream) = conn.accept_bi().await {
            held.push(stream);
        }
        drop(ep);
    });
    let ch = Channel::builder(addr, tls).connect().await.unwrap();
    let (mut sink, _response) = ch
        .call("sink")
        .raw()
        .timeout(Duration::from_millis(300))
        .client_streaming::<Bytes, Bytes>()
        .await
        .unwrap();
    let chunk = Bytes::from(vec![0u8; 256 * 1024]);
    let started = Instant::now();
    let sending = async {
        loop {
            if let Err(status) = sink.send(&chunk).await {
                return status;
            }
        }
    };
    let status = tokio::time::timeout(Duration::from_secs(5), sending)
        .await
        .expect("the send was still blocked 5 s after a 300 ms deadline");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status}");
    assert!(started.elapsed() < Duration::from_secs(2));
    // Later sends fail at once.
    let again = tokio::time::timeout(Duration::from_millis(100), sink.send(&chunk)).await;
    assert_eq!(again.unwrap().unwrap_err().code(), Code::DeadlineExceeded);
    server.abort();
}

/// Frames declared at their limits, on every kind, and an unknown kind after HEADERS: each
/// fails its call; the connection and a good client go on.
#[tokio::test]
async fn oversized_declarations_on_every_frame_kind_fail_their_call_only() {
    let target = Target::start().await;
    let conn = target.raw().await;
    // HEADERS declaring the control-frame limit, then a few bytes and FIN.
    let mut b = BytesMut::new();
    wire::put_frame_header(
        &mut b,
        FrameKind::Headers,
        WireLimits::DEFAULT_MAX_CONTROL_FRAME_SIZE,
    );
    b.extend_from_slice(&[0; 3]);
    let t = exchange(&conn, &b).await;
    assert_ne!(t.code, Code::Ok);
    // One byte over the limit: refused from the header.
    let mut b = BytesMut::new();
    wire::put_frame_header(
        &mut b,
        FrameKind::Headers,
        WireLimits::DEFAULT_MAX_CONTROL_FRAME_SIZE + 1,
    );
    let t = exchange(&conn, &b).await;
    assert_eq!(t.code, Code::ResourceExhausted);
    // HEADERS, then TRAILERS and HELLO headers at their limit where DATA belongs.
    for kind in [FrameKind::Trailers, FrameKind::Hello] {
        let mut b = headers("echo", Codec::Raw, Metadata::new()).to_frame();
        wire::put_frame_header(&mut b, kind, WireLimits::DEFAULT_MAX_CONTROL_FRAME_SIZE);
        let t = exchange(&conn, &b).await;
        assert_ne!(t.code, Code::Ok, "{kind}");
    }
    // An unknown frame kind after HEADERS.
    let mut b = headers("echo", Codec::Raw, Metadata::new()).to_frame();
    b.extend_from_slice(&[0x7f, 0x80, 0x01, 0x00, 0x00]);
    let t = exchange(&conn, &b).await;
    assert_ne!(t.code, Code::Ok);
    target.assert_serves_a_good_client().await;
}

/// Opens a raw call to `method` (one empty raw request, then FIN) and never reads the
/// response; returns the stream halves so they stay open.
async fn call_and_never_read(
    conn: &quinn::Connection,
    method: &str,
    timeout: Option<Duration>,
) -> (quinn::SendStream, quinn::RecvStream) {
    let mut h = headers(method, Codec::Raw, Metadata::new());
    h.timeout = timeout;
    let mut call = h.to_frame();
    wire::put_frame(&mut call, FrameKind::Data, b"");
    let (mut send, recv) = conn.open_bi().await.unwrap();
    send.write_all(&call).await.unwrap();
    send.finish().unwrap();
    (send, recv)
}

/// The stream was reset by the server with `code` (read after the server gave up: the
/// reset discards what was buffered).
async fn assert_reset_with(recv: &mut quinn::RecvStream, code: u32) {
    let end = tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(128 << 20))
        .await
        .expect("the stream ends");
    match end {
        Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(c))) => {
            assert_eq!(c.into_inner(), u64::from(code))
        }
        other => panic!("expected a reset with code {code}, got {other:?}"),
    }
}

/// A client that stops reading a server stream: the blocked response write ends at the
/// call's deadline, the stream is reset with DEADLINE_EXCEEDED, and the handler and its
/// buffers are released (the old server still had the call in flight 3 s after a 300 ms
/// deadline). A STOP_SENDING ends a blocked write at once, deadline or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_streaming_write_ends_at_the_deadline_or_stop_sending() {
    let target = Target::start().await;
    let conn = target.raw().await;
    let deadline = Duration::from_millis(300);
    let sent = Instant::now();
    let (_send, mut recv) = call_and_never_read(&conn, "flood", Some(deadline)).await;
    assert!(
        eventually(Duration::from_secs(2), || target.server.stats().in_flight
            == 1)
        .await,
        "the call never started"
    );
    let released = eventually(deadline + Duration::from_secs(1), || {
        target.server.stats().in_flight == 0
    })
    .await;
    assert!(
        released,
        "still in flight {:?} after a {deadline:?} deadline",
        sent.elapsed()
    );
    assert_reset_with(&mut recv, reset::DEADLINE_EXCEEDED).await;

    // No deadline: the write waits for the client, until it sends STOP_SENDING.
    let (_send, mut recv) = call_and_never_read(&conn, "flood", None).await;
    assert!(
        eventually(Duration::from_secs(2), || target.server.stats().in_flight
            == 1)
        .await
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        target.server.stats().in_flight,
        1,
        "a call without deadline waits"
    );
    recv.stop(reset::CANCELLED.into()).unwrap();
    assert!(
        eventually(Duration::from_secs(1), || target.server.stats().in_flight
            == 0)
        .await,
        "still in flight 1 s after STOP_SENDING"
    );
    target.assert_serves_a_good_client().await;
}

/// A unary reply larger than the client's stream window, never read: the final write ends
/// at the call's deadline (reset DEADLINE_EXCEEDED), or after
/// `TransportConfig::response_write_timeout` when the call has none (reset CANCELLED).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_final_write_ends_at_the_deadline_or_the_write_timeout() {
    let target = Target::start_with(TransportConfig {
        response_write_timeout: Duration::from_millis(500),
        ..TransportConfig::default()
    })
    .await;
    let conn = target.raw().await;

    let deadline = Duration::from_millis(300);
    let (_send, mut recv) = call_and_never_read(&conn, "big_reply", Some(deadline)).await;
    assert!(
        eventually(Duration::from_secs(2), || target.server.stats().in_flight
            == 1)
        .await
    );
    assert!(
        eventually(deadline + Duration::from_secs(1), || target
            .server
            .stats()
            .in_flight
            == 0)
        .await,
        "the unary reply was still being written 1 s after the deadline"
    );
    assert_reset_with(&mut recv, reset::DEADLINE_EXCEEDED).await;

    let sent = Instant::now();
    let (_send, mut recv) = call_and_never_read(&conn, "big_reply", None).await;
    assert!(
        eventually(Duration::from_secs(2), || target.server.stats().in_flight
            == 1)
        .await
    );
    assert!(
        eventually(Duration::from_secs(2), || target.server.stats().in_flight
            == 0)
        .await,
        "the unary reply was still being written {:?} after the call (write timeout 500 ms)",
        sent.elapsed()
    );
    assert!(
        sent.elapsed() >= Duration::from_millis(400),
        "{:?}",
        sent.elapsed()
    );
    assert_reset_with(&mut recv, reset::CANCELLED).await;
    target.assert_serves_a_good_client().await;
}

/// Opens a call to `echo` whose DATA frame declares `declared` bytes and carries `sent` of
/// them, without FIN: a request that never completes.
async fn partial_request(
    conn: &quinn::Connection,
    declared: usize,
    sent: usize,
) -> (quinn::SendStream, quinn::RecvStream) {
    let mut call = headers("echo", Codec::Raw, Metadata::new()).to_frame();
    wire::put_frame_header(&mut call, FrameKind::Data, declared);
    call.extend_from_slice(&vec![1u8; sent]);
    let (mut send, recv) = conn.open_bi().await.unwrap();
    send.write_all(&call).await.unwrap();
    (send, recv)
}

/// The TRAILERS at the end of a response stream (within 15 s).
async fn trailers_of(recv: &mut quinn::RecvStream) -> Trailers {
    let answer = tokio::time::timeout(Duration::from_secs(15), recv.read_to_end(1 << 20))
        .await
        .expect("an answer within 15 s")
        .expect("a response stream");
    let mut dec = wire::FrameDecoder::new(WireLimits::default());
    dec.extend(&answer);
    let mut last = None;
    while let Some(f) = dec.next_frame().unwrap() {
        last = Some(f);
    }
    let f = last.expect("a frame");
    assert_eq!(f.kind, FrameKind::Trailers);
    Trailers::decode(&f.payload, &WireLimits::default()).unwrap()
}

const MIB: usize = 1 << 20;

/// Unfinished requests on one connection: the old server held every byte for as long as
/// the connection lived (48 streams x 4 MiB = 200 MiB). Now they count against the
/// connection's buffer budget: once it is spent, further requests fail with
/// RESOURCE_EXHAUSTED marked not run, the server never holds more than the budget, and
/// everything is given back when the connection goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_requests_cannot_hold_more_than_the_connection_budget() {
    let budget = 2 * MIB;
    let target = Target::start_with(TransportConfig {
        connection_buffer_budget: budget,
        ..TransportConfig::default()
    })
    .await;
    let conn = target.raw().await;
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..8 {
        // 400 KiB of a 1 MiB message each: five fit in 2 MiB, the rest cannot.
        held.push(partial_request(&conn, MIB, 400 * 1024).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let buffered = target.server.stats().buffered_bytes;
        assert!(buffered <= budget, "{buffered} bytes held, budget {budget}");
    }
    // Which streams are refused depends on how their data interleaved on the way (a slow
    // server reads several at once): every stream is watched, together, for up to 3 s.
    let answers = futures_util::future::join_all(
        held.iter_mut()
            .map(|(_, recv)| tokio::time::timeout(Duration::from_secs(3), trailers_of(recv))),
    )
    .await;
    for t in answers.into_iter().flatten() {
        assert_eq!(t.code, Code::ResourceExhausted, "{}", t.message);
        assert!(
            t.message.contains("connection buffer budget"),
            "{}",
            t.message
        );
        assert!(t.not_run, "refused before its handler: marked not run");
        refused += 1;
    }
    assert!(
        refused >= 3,
        "only {refused} of the 8 requests were refused"
    );
    assert!(target.server.stats().buffered_bytes > MIB);
    // Another connection is not affected.
    target.assert_serves_a_good_client().await;
    conn.close(0u32.into(), b"");
    drop(held);
    target
        .assert_buffers_given_back(Duration::from_secs(5))
        .await;
}

/// Many connections each within their own budget still cannot pass the server's: calls
/// that do not fit fail with RESOURCE_EXHAUSTED on any connection, and small calls keep
/// working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_together_cannot_hold_more_than_the_server_budget() {
    let budget = 3 * MIB;
    let target = Target::start_with(TransportConfig {
        server_buffer_budget: budget,
        ..TransportConfig::default()
    })
    .await;
    let mut conns = Vec::new();
    let mut held = Vec::new();
    for _ in 0..5 {
        let conn = target.raw().await;
        held.push(partial_request(&conn, 2 * MIB, 900 * 1024).await);
        conns.push(conn);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let buffered = target.server.stats().buffered_bytes;
        assert!(buffered <= budget, "{buffered} bytes held, budget {budget}");
    }
    let (_, recv) = held.last_mut().unwrap();
    let t = trailers_of(recv).await;
    assert_eq!(t.code, Code::ResourceExhausted, "{}", t.message);
    assert!(t.message.contains("server buffer budget"), "{}", t.message);
    target.assert_serves_a_good_client().await;
    drop(held);
    drop(conns);
    target
        .assert_buffers_given_back(Duration::from_secs(5))
        .await;
}

/// A request sent slowly (or never finished) on a call without a deadline: the old server
/// waited for it forever. Now it fails after the request timeout with DEADLINE_EXCEEDED,
/// marked not run, and its bytes are given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_never_completes_ends_at_the_request_timeout() {
    let limit = Duration::from_millis(400);
    let target = Target::start_with(TransportConfig {
        request_timeout: limit,
        ..TransportConfig::default()
    })
    .await;
    let conn = target.raw().await;
    let sent = Instant::now();
    let (_send, mut recv) = partial_request(&conn, MIB, 1000).await;
    let t = trailers_of(&mut recv).await;
    let took = sent.elapsed();
    assert_eq!(t.code, Code::DeadlineExceeded, "{}", t.message);
    assert!(t.message.contains("request timeout"), "{}", t.message);
    assert!(t.not_run);
    assert!(
        took >= limit && took < limit + Duration::from_secs(2),
        "{took:?}"
    );
    target
        .assert_buffers_given_back(Duration::from_secs(2))
        .await;
    target.assert_serves_a_good_client().await;
}

/// Connections beyond `max_connections` are refused; once one closes, a new one gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_refused() {
    let target = Target::start_with(TransportConfig {
        max_connections: 2,
        ..TransportConfig::default()
    })
    .await;
    let a = target.raw().await;
    let _b = target.raw().await;
    let cfg = target
        .client_tls()
        .quinn_config(&TransportConfig::default())
        .unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(cfg);
    let third = ep
        .connect(target.server.local_addr(), "localhost")
        .unwrap()
        .await;
    assert!(
        matches!(third, Err(quinn::ConnectionError::ConnectionClosed(ref c))
            if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED),
        "{third:?}"
    );
    assert_eq!(target.server.stats().connections_refused, 1);
    a.close(0u32.into(), b"");
    assert!(
        eventually(Duration::from_secs(5), || target.server.stats().connections
            < 2)
        .await
    );
    target.assert_serves_a_good_client().await;
}

/// With handshakes piling up (here: a limit of 0), new peers must prove their address with
/// a QUIC Retry first; a real client does so and is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_beyond_the_limit_are_answered_with_retry() {
    let target = Target::start_with(TransportConfig {
        max_handshakes: 0,
        ..TransportConfig::default()
    })
    .await;
    target.assert_serves_a_good_client().await;
    assert!(target.server.stats().retries_sent >= 1);
    assert_eq!(target.server.stats().connections_refused, 0);
}

/// A streamed request gives each message's bytes back when its handler takes it, so a
/// long client stream is not limited by the connection budget (here 64 KiB for ~300 KB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_request_messages_give_their_budget_back() {
    let target = Target::start_with(TransportConfig {
        connection_buffer_budget: 64 * 1024,
        ..TransportConfig::default()
    })
    .await;
    let ch = target.channel().await;
    let (mut sink, response) = ch
        .call("sum")
        .timeout(Duration::from_secs(20))
        .client_streaming::<i64, i64>()
        .await
        .unwrap();
    for i in 0..30_000i64 {
        sink.send(&i).await.unwrap();
    }
    sink.finish();
    let total = response.response().await.unwrap().into_inner();
    assert_eq!(total, (0..30_000i64).sum::<i64>());
    target
        .assert_buffers_given_back(Duration::from_secs(2))
        .await;
}

/// A catalog too big for one HELLO (a proxy announcing many upstream methods): the old
/// server sent a HELLO every client refused, so clients knew nothing it served. Now the
/// HELLO is trimmed to fit, the server's own methods first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_too_big_for_one_hello_is_trimmed_to_fit() {
    let target = Target::start().await;
    let many: Vec<wire::MethodInfo> = (0..3000)
        .map(|i| wire::MethodInfo {
            name: format!("upstream.service.with.a.long.name.method_{i:05}"),
            kind: wire::MethodKind::Unary,
            idempotent: false,
        })
        .collect();
    assert!(target.server.catalog_handle().set(many));
    let ch = target.channel().await;
    let hello = ch
        .wait_server_info(Duration::from_secs(5))
        .await
        .expect("a HELLO the client accepts");
    let names: Vec<&str> = hello.methods.iter().map(|m| m.name.as_str()).collect();
    assert!(
        names.contains(&"add") && names.contains(&"echo"),
        "own methods kept"
    );
    assert!(
        names.len() > 1000 && names.len() < 3000,
        "{} methods",
        names.len()
    );
    target.assert_serves_a_good_client().await;
}

/// A Value body's decoded size counts against the connection's budget while its handler
/// holds it: 200,000 nulls are 200 KB on the wire but 6.4 MB decoded, past a 2 MiB
/// budget (the old server decoded it regardless, up to 32 MiB a call).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_body_s_decoded_size_counts_against_the_budget() {
    let target = Target::start_with(TransportConfig {
        connection_buffer_budget: 2 * MIB,
        ..TransportConfig::default()
    })
    .await;
    let ch = target.channel().await;
    let call = |n: usize| {
        let body = Value::List(vec![Value::Null; n]).to_bytes();
        let ch = ch.clone();
        async move {
            ch.call("value_len")
                .raw()
                .codec(Codec::Value)
                .unary(&Bytes::from(body))
                .await
        }
    };
    let err = call(200_000).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(err.message().contains("connection buffer budget"), "{err}");
    // 20,000 nulls (640 KB decoded) fit.
    assert!(call(20_000).await.is_ok());
    target
        .assert_buffers_given_back(Duration::from_secs(2))
        .await;
}

/// How the server answers streams that end or are stopped early: never a bare FIN (a
/// malformed response), never an echoed REFUSED once the handler ran, and STOP_SENDING with
/// the reason when a request breaks the framing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_ends_and_stops_get_the_documented_codes() {
    let target = Target::start().await;
    let conn = target.raw().await;
    let reset_code = |r: Result<Vec<u8>, quinn::ReadToEndError>| match r {
        Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(c))) => Some(c.into_inner()),
        _ => None,
    };

    // FIN before any HEADERS: RESET_STREAM(PROTOCOL_ERROR), not a bare FIN.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&[]).await.unwrap();
    send.finish().unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(1 << 16))
        .await
        .unwrap();
    assert_eq!(reset_code(end), Some(u64::from(reset::PROTOCOL_ERROR)));

    // Half a HEADERS frame, then a reset: RESET_STREAM(CANCELLED).
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let h = headers("echo", Codec::Raw, Metadata::new()).to_frame();
    send.write_all(&h[..h.len() / 2]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    send.reset(reset::CANCELLED.into()).unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(1 << 16))
        .await
        .unwrap();
    assert_eq!(reset_code(end), Some(u64::from(reset::CANCELLED)));

    // A running handler stopped with REFUSED, or with a code past 32 bits, is released
    // (the code the server resets with is checked by a unit test of `echoed_reset`: a
    // stopped receive side cannot read it).
    for code in [u64::from(reset::REFUSED), 1 << 40] {
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&headers("sum", Codec::Postcard, Metadata::new()).to_frame())
            .await
            .unwrap();
        assert!(
            eventually(Duration::from_secs(2), || target.server.stats().in_flight
                == 1)
            .await
        );
        recv.stop(quinn::VarInt::from_u64(code).unwrap()).unwrap();
        assert!(
            eventually(Duration::from_secs(2), || target.server.stats().in_flight
                == 0)
            .await
        );
        drop(send);
    }

    // An unknown frame kind after HEADERS: STOP_SENDING(PROTOCOL_ERROR) and TRAILERS.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let mut bytes = headers("echo", Codec::Raw, Metadata::new()).to_frame();
    bytes.extend_from_slice(&[0x7e, 0x01, 0x00]);
    send.write_all(&bytes).await.unwrap();
    let stopped = tokio::time::timeout(Duration::from_secs(5), send.stopped())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stopped, Some(reset::PROTOCOL_ERROR.into()));
    let t = trailers_of(&mut recv).await;
    assert_ne!(t.code, Code::Ok);
    target.assert_serves_a_good_client().await;
}

/// `max_connection_idle`: a connection with no call is closed; the client reconnects on
/// its next call, which succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_retired_and_the_client_reconnects() {
    let target = Target::start_with(TransportConfig {
        max_connection_idle: Some(Duration::from_millis(300)),
        ..TransportConfig::default()
    })
    .await;
    let ch = target.channel().await;
    assert_eq!(ch.unary::<_, i64>("add", &(1i64, 2i64)).await.unwrap(), 3);
    assert!(
        eventually(Duration::from_secs(3), || target.server.stats().connections
            == 0)
        .await,
        "the idle connection is still open"
    );
    assert_eq!(ch.unary::<_, i64>("add", &(2i64, 2i64)).await.unwrap(), 4);
}

/// `max_connection_age`: an old connection takes no new call but lets the one in flight
/// finish, then closes; the client's next call goes over a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_connection_finishes_its_calls_then_closes() {
    let target = Target::start_with(TransportConfig {
        max_connection_age: Some(Duration::from_millis(300)),
        max_connection_age_grace: Duration::from_secs(5),
        ..TransportConfig::default()
    })
    .await;
    let ch = target.channel().await;
    let (mut sink, response) = ch
        .call("sum")
        .timeout(Duration::from_secs(5))
        .client_streaming::<i64, i64>()
        .await
        .unwrap();
    sink.send(&40).await.unwrap();
    // Past the age: the call in flight is not cut.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(target.server.stats().connections, 1, "closed under a call");
    sink.send(&2).await.unwrap();
    sink.finish();
    assert_eq!(response.response().await.unwrap().into_inner(), 42);
    assert!(
        eventually(Duration::from_secs(3), || target.server.stats().connections
            == 0)
        .await,
        "the old connection is still open"
    );
    assert_eq!(ch.unary::<_, i64>("add", &(2i64, 2i64)).await.unwrap(), 4);
}

/// The server keeps each finished response's stream until the client acknowledges it (a
/// graceful stop waits for those), and that list stays bounded however many calls a
/// connection makes: at most 64 per connection with a stream limit of 16, where 3,000
/// calls would leave 3,000 if it were never compacted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_kept_for_their_acknowledgement_stay_bounded() {
    use futures_util::stream::{self, StreamExt as _};
    let target = Target::start_with(TransportConfig {
        max_concurrent_streams: 16,
        ..TransportConfig::default()
    })
    .await;
    let ch = target.channel().await;
    let done = std::sync::atomic::AtomicBool::new(false);
    let sample = async {
        let mut most = (0, 1);
        while !done.load(std::sync::atomic::Ordering::Relaxed) {
            let s = target.server.stats();
            if s.kept_responses > most.0 {
                most = (s.kept_responses, s.connections.max(1));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        most
    };
    let calls = async {
        let answered = stream::iter(0..3_000i64)
            .map(|i| {
                let ch = ch.clone();
                async move { ch.unary::<_, i64>("add", &(i, 1i64)).await }
            })
            .buffer_unordered(32)
            .filter(|r| std::future::ready(r.is_ok()))
            .count()
            .await;
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        answered
    };
    let (answered, (most, connections)) = tokio::join!(calls, sample);
    assert_eq!(answered, 3_000);
    let after = target.server.stats();
    assert!(after.calls_total >= 3_000);
    assert!(
        most <= 64 * connections && after.kept_responses <= 64 * after.connections,
        "kept {most} responses on {connections} connection(s) during the run, {} after",
        after.kept_responses
    );
    // Without compaction the list would hold every response ever finished.
    assert!(after.kept_responses < 3_000);
    target.assert_serves_a_good_client().await;
}

/// Streams `conn` may open right now, opened (and kept) until one would wait for credit.
fn open_all_now(conn: &quinn::Connection, into: &mut Vec<(quinn::SendStream, quinn::RecvStream)>) {
    use std::future::Future as _;
    loop {
        let mut open = std::pin::pin!(conn.open_bi());
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match open.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(Ok(pair)) => into.push(pair),
            _ => return,
        }
    }
}

/// A new connection is allowed `initial_stream_credit` (100) streams. Once its peer has
/// opened half of them, the credit grows to `max_concurrent_streams` (here 300), and no
/// further: a raw peer that opens streams and never finishes them holds exactly 300.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_credit_starts_small_and_grows_only_to_the_limit() {
    let target = Target::start_with(TransportConfig {
        max_concurrent_streams: 300,
        ..TransportConfig::default()
    })
    .await;
    let conn = target.raw().await;
    let mut streams = Vec::new();
    open_all_now(&conn, &mut streams);
    // Opened without a byte sent: the server has not seen them, so nothing has grown.
    assert_eq!(streams.len(), 100, "the first allowance");
    tokio::time::sleep(Duration::from_millis(100)).await;
    open_all_now(&conn, &mut streams);
    assert_eq!(
        streams.len(),
        100,
        "no more credit while the server saw no stream"
    );
    // One byte on the 50th stream: the server accepts streams 0 to 49 (each an unfinished
    // call) and grants the rest.
    streams[49].0.write_all(&[0]).await.unwrap();
    let more = tokio::time::timeout(Duration::from_secs(5), conn.open_bi())
        .await
        .expect("credit granted")
        .unwrap();
    streams.push(more);
    open_all_now(&conn, &mut streams);
    assert_eq!(streams.len(), 300, "credit up to max_concurrent_streams");
    tokio::time::sleep(Duration::from_millis(200)).await;
    open_all_now(&conn, &mut streams);
    assert_eq!(streams.len(), 300, "and never past it");
    drop(streams);
    conn.close(0u32.into(), b"");
    target.assert_serves_a_good_client().await;
}
