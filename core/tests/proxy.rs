//! The region proxy over real QUIC connections: every call kind forwarded, failover behind
//! the proxy, cancellation and deadlines passed on, the per-hop time breakdown, clients
//! that reach regions through proxies, and hostile callers.
//!
//! Long on purpose: every test shares the proxy fixture (servers and proxies behind
//! emulated links), and each is one forwarding promise.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use meridian::proxy::{Proxy, ProxyConfig};
use meridian::region::{RegionClient, RegionMap, ServerEndpoint, StaticDiscovery};
use meridian::testing::{LinkEmulator, LinkSettings};
use meridian::wire::{self, FrameKind, RequestHeaders, Trailers, WireLimits};
use meridian::{
    Channel, ClientTls, Code, Codec, DevCa, Metadata, Method, Server, ServerBuilder, ServerTls,
    Status, TransportConfig, Value,
};

/// What the backend's handlers saw, for the assertions.
#[derive(Default)]
struct Seen {
    produced: AtomicUsize,
    cancelled: AtomicUsize,
    slow_started: AtomicUsize,
    remaining_ms: AtomicU64,
}

/// Counts a handler stopped before its end.
struct CancelGuard(Arc<Seen>);

impl Drop for CancelGuard {
    fn drop(&mut self) {
        self.0.cancelled.fetch_add(1, Ordering::SeqCst);
    }
}

fn backend(id: &str, region: &str, seen: Arc<Seen>) -> ServerBuilder {
    let id_owned = id.to_string();
    let (s1, s2, s3, s4) = (seen.clone(), seen.clone(), seen.clone(), seen);
    Server::builder()
        .region(region)
        .server_id(id)
        .no_local_registry()
        .unary(Method::new("whoami").idempotent(), move |(): (), _| {
            let id = id_owned.clone();
            async move { Ok(id) }
        })
        .unary(
            Method::new("add").idempotent(),
            |(a, b): (i64, i64), _| async move { Ok(a + b) },
        )
        .unary(Method::new("maybe_slow").idempotent(), |(): (), _| {
            // Every 20th call (counted over all servers, so no balancer can avoid it) takes
            // 300 ms: a 5% tail.
            static CALLS: AtomicU64 = AtomicU64::new(0);
            let slow = CALLS.fetch_add(1, Ordering::Relaxed) % 20 == 19;
            async move {
                if slow {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                Ok(())
            }
        })
        .unary("echo_meta", |(): (), ctx| async move {
            // Echoes a request metadata entry and the routing key, and adds a trailer.
            ctx.set_trailer("served-by", "backend");
            let v = ctx.metadata().get("x-user").cloned().unwrap_or_default();
            let key = ctx.routing_key().cloned().unwrap_or_default();
            Ok((
                String::from_utf8_lossy(&v).into_owned(),
                String::from_utf8_lossy(&key).into_owned(),
            ))
        })
        .unary("fail", |(): (), _| async move {
            let mut md = Metadata::new();
            md.insert("why", "because");
            Err::<(), _>(Status::not_found("no such thing").with_metadata(md))
        })
        .unary("sleep_ms", |ms: u64, _| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(ms)
        })
        .unary("slow", move |(): (), ctx| {
            let seen = s1.clone();
            async move {
                seen.slow_started.fetch_add(1, Ordering::SeqCst);
                if let Some(left) = ctx.remaining() {
                    seen.remaining_ms
                        .store(left.as_millis() as u64, Ordering::SeqCst);
                }
                // Counted when the handler is stopped (its future dropped) before the end.
                let _guard = CancelGuard(seen);
                tokio::time::sleep(Duration::from_secs(20)).await;
                std::mem::forget(_guard);
                Ok(())
            }
        })
        .server_streaming("count", |n: u32, _, sink| async move {
            for i in 0..n {
                sink.send(&i).await?;
            }
            Ok(())
        })
        .raw()
        .server_streaming("firehose", move |n: Bytes, _, sink| {
            // Sends `n` messages of 64 KiB as fast as the caller (through the proxy) lets it.
            let seen = s4.clone();
            async move {
                let n = u32::from_le_bytes(n[..4].try_into().unwrap_or_default());
                let chunk = Bytes::from(vec![0xabu8; 64 << 10]);
                for _ in 0..n {
                    sink.send(&chunk).await?;
                    seen.produced.fetch_add(1, Ordering::SeqCst);
                }
                Ok(())
            }
        })
        .typed()
        .client_streaming("sum", |mut reqs, _| async move {
            let mut total = 0i64;
            while let Some(x) = reqs.message().await? {
                let x: i64 = x;
                total += x;
            }
            Ok(total)
        })
        .client_streaming("first_only", |mut reqs, _| async move {
            let first: Option<i64> = reqs.message().await?;
            Ok(first.unwrap_or(-1))
        })
        .bidi("double", |mut reqs, _, sink| async move {
            while let Some(x) = reqs.message().await? {
                let x: i64 = x;
                sink.send(&(x * 2)).await?;
            }
            Ok(())
        })
        .bidi("bidi_wait", move |mut reqs, _, sink| {
            let seen = s2.clone();
            async move {
                let _: Option<i64> = reqs.message().await?;
                sink.send(&1i64).await?;
                let _guard = CancelGuard(seen);
                tokio::time::sleep(Duration::from_secs(20)).await;
                std::mem::forget(_guard);
                Ok(())
            }
        })
        .raw()
        .client_streaming("count_msgs", move |mut reqs, _| {
            let _seen = s3.clone();
            async move {
                let mut n = 0u64;
                while reqs.message().await?.is_some() {
                    n += 1;
                }
                Ok(Bytes::from(n.to_le_bytes().to_vec()))
            }
        })
        .typed()
}

struct Backend {
    server: Option<Server>,
    link: Option<LinkEmulator>,
    id: String,
}

impl Backend {
    /// The address the proxy dials: the link emulator's, or the server's own.
    fn addr(&self) -> std::net::SocketAddr {
        match &self.link {
            Some(l) => l.addr(),
            None => self.server.as_ref().unwrap().local_addr(),
        }
    }
}

struct Rig {
    ca: DevCa,
    backends: Vec<Backend>,
    proxy: Proxy,
    seen: Arc<Seen>,
}

impl Rig {
    /// Backends `(region, id, rtt_ms)` (0 = no emulated link) and a proxy in front of them.
    async fn start(sites: &[(&str, &str, u64)]) -> Rig {
        Rig::start_with(sites, |b| b).await
    }

    async fn start_with(
        sites: &[(&str, &str, u64)],
        tune: impl Fn(meridian::region::RegionClientBuilder) -> meridian::region::RegionClientBuilder,
    ) -> Rig {
        let ca = DevCa::new().unwrap();
        let seen = Arc::new(Seen::default());
        let mut map = RegionMap::new();
        let mut backends = Vec::new();
        for (region, id, rtt) in sites {
            let tls = ServerTls::new(ca.issue_server(&["localhost"]).unwrap());
            let server = backend(id, region, seen.clone())
                .bind("127.0.0.1:0".parse().unwrap(), tls)
                .await
                .unwrap();
            let link = if *rtt > 0 {
                Some(
                    LinkEmulator::start(
                        server.local_addr(),
                        LinkSettings::with_rtt(Duration::from_millis(*rtt)),
                    )
                    .await
                    .unwrap(),
                )
            } else {
                None
            };
            let b = Backend {
                server: Some(server),
                link,
                id: id.to_string(),
            };
            map.add_server(region, ServerEndpoint::new(b.addr(), "localhost"));
            backends.push(b);
        }
        let upstream = tune(RegionClient::builder(
            StaticDiscovery::new(map),
            ClientTls::with_roots([ca.certificate().clone()]).unwrap(),
        ))
        .build()
        .unwrap();
        let proxy = Proxy::builder(upstream)
            .region("edge")
            .bind(
                "127.0.0.1:0".parse().unwrap(),
                ServerTls::new(ca.issue_server(&["proxy.local"]).unwrap()),
            )
            .await
            .unwrap();
        // Wait until the proxy has reached its upstreams.
        assert!(
            proxy
                .upstream()
                .ready("whoami", Duration::from_secs(5))
                .await
        );
        Rig {
            ca,
            backends,
            proxy,
            seen,
        }
    }

    fn tls(&self) -> ClientTls {
        ClientTls::with_roots([self.ca.certificate().clone()]).unwrap()
    }

    async fn channel_to(&self, addr: std::net::SocketAddr) -> Channel {
        Channel::builder(addr, self.tls())
            .server_name("proxy.local")
            .connect()
            .await
            .unwrap()
    }

    async fn channel(&self) -> Channel {
        self.channel_to(self.proxy.local_addr()).await
    }
}

#[tokio::test]
async fn every_call_kind_goes_through_the_proxy() {
    let rig = Rig::start(&[("eu", "eu-1", 0)]).await;
    let ch = rig.channel().await;

    // Unary, typed postcard.
    let r = ch
        .call("add")
        .timeout(Duration::from_secs(5))
        .unary::<_, i64>(&(10i64, 5i64))
        .await
        .unwrap();
    assert_eq!(*r.get_ref(), 15);
    assert!(r.timing().proxied(), "the proxy reports its hop");

    // Unary with the Value codec (what Python and C send): the codec travels through.
    let v: Value = ch
        .call("add")
        .codec(Codec::Value)
        .unary(&Value::List(vec![Value::Int(2), Value::Int(3)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v, Value::Int(5));

    // Metadata and routing key reach the server; its trailing metadata comes back.
    let r = ch
        .call("echo_meta")
        .metadata("x-user", "ada")
        .routing_key("key-7")
        .unary::<_, (String, String)>(&())
        .await
        .unwrap();
    assert_eq!(r.get_ref(), &("ada".to_string(), "key-7".to_string()));
    assert_eq!(
        r.metadata().get("served-by").map(|b| &b[..]),
        Some(&b"backend"[..])
    );

    // Server streaming.
    let mut s = ch
        .call("count")
        .server_streaming::<_, u32>(&50u32)
        .await
        .unwrap();
    let mut got = Vec::new();
    while let Some(x) = s.message().await.unwrap() {
        got.push(x);
    }
    assert_eq!(got, (0..50).collect::<Vec<_>>());
    assert!(s.timing().unwrap().proxied());

    // Client streaming.
    let (mut sink, resp) = ch.call("sum").client_streaming::<i64, i64>().await.unwrap();
    for i in 1..=100 {
        sink.send(&i).await.unwrap();
    }
    sink.finish();
    let r = resp.response().await.unwrap();
    assert_eq!(*r.get_ref(), 5050);
    assert!(r.timing().proxied());

    // Bidirectional, interleaved: each answer comes back before the next request goes.
    let (mut sink, mut stream) = ch.call("double").bidi::<i64, i64>().await.unwrap();
    for i in 0..20 {
        sink.send(&i).await.unwrap();
        assert_eq!(stream.message().await.unwrap(), Some(i * 2));
    }
    sink.finish();
    assert_eq!(stream.message().await.unwrap(), None);
    assert!(stream.timing().unwrap().proxied());

    // The proxy announces its upstream catalog in its own HELLO.
    let start = Instant::now();
    let hello = loop {
        let hello = ch.wait_server_info(Duration::from_secs(2)).await.unwrap();
        if hello.methods.len() > 5 || start.elapsed() > Duration::from_secs(2) {
            break hello;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(hello.region, "edge");
    let add = hello.methods.iter().find(|m| m.name == "add").unwrap();
    assert!(add.idempotent);
    assert!(hello.methods.iter().any(|m| m.name == "double"));
    assert_eq!(rig.proxy.stats().calls, 6);
}

/// A server that answers a client-streaming call early, through the proxy: the proxy stops
/// passing requests on (and reading them), the caller's later sends are discarded, and the
/// answer reaches the caller before it finishes sending.
#[tokio::test]
async fn an_early_answer_through_the_proxy_ends_the_callers_sending() {
    let rig = Rig::start(&[("eu", "eu-1", 0)]).await;
    let ch = rig.channel().await;
    let (mut sink, resp) = ch
        .call("first_only")
        .timeout(Duration::from_secs(10))
        .client_streaming::<i64, i64>()
        .await
        .unwrap();
    sink.send(&7).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), resp.response())
        .await
        .expect("the answer comes while the caller's request stream is still open")
        .unwrap();
    assert_eq!(*answer.get_ref(), 7);
    let mut sends = 0;
    while !sink.closed_by_server() {
        assert!(
            sends < 1_000,
            "the proxy never stopped the caller's request stream"
        );
        sink.send(&8).await.unwrap();
        sends += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_client_resumes_with_the_proxy_in_0rtt() {
    let rig = Rig::start(&[("eu", "eu-1", 0)]).await;
    let tls = rig.tls();
    let first = Channel::builder(rig.proxy.local_addr(), tls.clone())
        .server_name("proxy.local")
        .connect()
        .await
        .unwrap();
    // Wait for the proxy's catalog (it says `add` is idempotent), then leave cleanly.
    let start = Instant::now();
    while !first
        .server_info()
        .is_some_and(|h| h.methods.iter().any(|m| m.name == "add" && m.idempotent))
    {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "no catalog from the proxy"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        first.unary::<_, i64>("add", &(1i64, 2i64)).await.unwrap(),
        3
    );
    first.close().await;
    let second = Channel::builder(rig.proxy.local_addr(), tls)
        .server_name("proxy.local")
        .connect()
        .await
        .unwrap();
    let r = second
        .call("add")
        .idempotent(true)
        .unary::<_, i64>(&(20i64, 22i64))
        .await
        .unwrap();
    assert_eq!(*r.get_ref(), 42);
    let stats = second.stats();
    assert!(stats.resumed, "{stats:?}");
    assert_eq!(stats.zero_rtt, Some(true), "{stats:?}");
    assert!(stats.early_calls >= 1, "{stats:?}");
}

#[tokio::test]
async fn a_failure_reaches_the_caller_with_its_status_and_metadata() {
    let rig = Rig::start(&[("eu", "eu-1", 0)]).await;
    let ch = rig.channel().await;
    let err = ch.unary::<_, ()>("fail", &()).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), "no such thing");
    assert_eq!(
        err.metadata().get("why").map(|b| &b[..]),
        Some(&b"because"[..])
    );
    // A method nobody serves is UNIMPLEMENTED, as from a server.
    let err = ch.unary::<_, ()>("nope", &()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{err}");
    assert_eq!(rig.proxy.stats().failed, 2);
}

#[tokio::test]
async fn the_proxy_fails_over_when_the_nearest_server_dies() {
    let mut rig = Rig::start(&[("near", "near-1", 10), ("far", "far-1", 40)]).await;
    let ch = rig.channel().await;
    // Converge on the near region first.
    let start = Instant::now();
    loop {
        let id: String = ch.unary("whoami", &()).await.unwrap();
        if id == "near-1" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "never reached near"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut errors = 0;
    let mut answers = Vec::new();
    for i in 0..150 {
        if i == 30 {
            // The near server goes dark: no clean shutdown, packets simply vanish.
            rig.backends[0].link.as_ref().unwrap().set_outage(true);
            rig.backends[0].server.take();
        }
        match ch
            .call("whoami")
            .timeout(Duration::from_secs(5))
            .unary::<_, String>(&())
            .await
        {
            Ok(r) => answers.push(r.into_inner()),
            Err(e) => {
                eprintln!("call {i} failed: {e}");
                errors += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(errors, 0, "idempotent calls must not fail behind the proxy");
    assert_eq!(answers.last().map(String::as_str), Some("far-1"));
    assert_eq!(rig.backends[1].id, "far-1");
}

#[tokio::test]
async fn cancelling_at_the_client_cancels_the_server_handler() {
    let rig = Rig::start(&[("eu", "eu-1", 0)]).await;
    let ch = rig.channel().await;

    // Unary: the client's deadline passes; the server's handler is cancelled, and it saw
    // the caller's budget minus the time already spent, not more.
    let err = ch
        .call("slow")
        .timeout(Duration::from_millis(400))
        .unary::<_, ()>(&())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded);
    wait_for("deadline", || {
        rig.seen.cancelled.load(Ordering::SeqCst) >= 1
    })
    .await;
    let left = rig.seen.remaining_ms.load(Ordering::SeqCst);
    assert!(left > 0 && left <= 400, "server saw {left} ms left");

    // Unary: the caller drops the call.
    let call = ch.call("slow").unary::<_, ()>(&());
    let _ = tokio::time::timeout(Duration::from_millis(200), call).await;
    wait_for("dropped unary", || {
        rig.seen.cancelled.load(Ordering::SeqCst) >= 2
    })
    .await;

    // Bidirectional: the caller drops both halves mid-stream.
    let (mut sink, mut stream) = ch.call("bidi_wait").bidi::<i64, i64>().await.unwrap();
    sink.send(&1).await.unwrap();
    assert_eq!(stream.message().await.unwrap(), Some(1));
    drop(sink);
    drop(stream);
    wait_for("dropped bidi", || {
        rig.seen.cancelled.load(Ordering::SeqCst) >= 3
    })
    .await;

    // The connection to the proxy is still fine.
    assert_eq!(ch.unary::<_, i64>("add", &(1i64, 1i64)).await.unwrap(), 2);
}

#[tokio::test]
async fn a_slow_reader_slows_the_server_and_proxy_memory_stays_bounded() {
    let rig = Rig::start(&[("eu", "eu-1", 0)]).await;
    let ch = rig.channel().await;
    // 600 messages of 64 KiB = 37.5 MiB on offer; the client reads one, then stalls.
    let mut stream = ch
        .call("firehose")
        .raw()
        .server_streaming(&Bytes::from(600u32.to_le_bytes().to_vec()))
        .await
        .unwrap();
    assert!(stream.message().await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let produced = rig.seen.produced.load(Ordering::SeqCst);
    // What can be in flight: the client's stream window (2 MiB = 32 messages), the
    // proxy's response queue (8) and one message in hand, the proxy's upstream stream
    // window (32) and the server's response queue (8): about 82 of the 600.
    println!("produced while the reader stalled: {produced} of 600");
    assert!(produced <= 90, "the server ran ahead: {produced} messages");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        rig.seen.produced.load(Ordering::SeqCst),
        produced,
        "nothing moves while nobody reads"
    );
    // Reading again drains everything, in order and complete.
    let mut n = 1;
    while let Some(m) = stream.message().await.unwrap() {
        assert_eq!(m.len(), 64 << 10);
        n += 1;
    }
    assert_eq!(n, 600);
}

#[tokio::test]
async fn routing_keys_pick_the_same_server_through_the_proxy() {
    let rig = Rig::start(&[("eu", "eu-1", 0), ("eu", "eu-2", 0), ("eu", "eu-3", 0)]).await;
    let ch = rig.channel().await;
    let mut owners = std::collections::HashMap::new();
    for k in 0..30 {
        let key = format!("user-{k}");
        let mut seen_ids = std::collections::HashSet::new();
        for _ in 0..5 {
            let id: String = ch
                .call("whoami")
                .routing_key(key.clone())
                .unary(&())
                .await
                .unwrap()
                .into_inner();
            seen_ids.insert(id);
        }
        assert_eq!(seen_ids.len(), 1, "key {key} moved between servers");
        owners.insert(key, seen_ids.into_iter().next().unwrap());
    }
    let distinct: std::collections::HashSet<_> = owners.values().collect();
    assert_eq!(distinct.len(), 3, "30 keys should spread over 3 servers");
}

async fn wait_for(what: &str, f: impl Fn() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{what}: the server handler was never cancelled"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn the_time_breakdown_adds_up_to_what_the_client_measured() {
    // proxy -> server: 40 ms RTT; client -> proxy: 20 ms RTT; the handler sleeps 30 ms.
    let rig = Rig::start(&[("eu", "eu-1", 40)]).await;
    let front = LinkEmulator::start(
        rig.proxy.local_addr(),
        LinkSettings::with_rtt(Duration::from_millis(20)),
    )
    .await
    .unwrap();
    let ch = rig.channel_to(front.addr()).await;
    // Warm up: connections up, RTT estimates settled.
    for _ in 0..3 {
        ch.call("sleep_ms").unary::<_, u64>(&1u64).await.unwrap();
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mut parts: [Vec<f64>; 4] = Default::default();
    // Wall-clock time the total leaves out, per call.
    let mut unmeasured = Vec::new();
    for _ in 0..9 {
        let wall = Instant::now();
        let r = ch.call("sleep_ms").unary::<_, u64>(&30u64).await.unwrap();
        let wall = wall.elapsed();
        let t = r.timing();
        let (net1, proxy, net2, server) = (
            t.client_proxy_network().unwrap(),
            t.proxy().unwrap(),
            t.proxy_server_network().unwrap(),
            t.server().unwrap(),
        );
        println!(
            "total {:.2} ms = client<->proxy {:.2} + proxy {:.3} + proxy<->server {:.2} + server {:.2} (wall {:.2})",
            ms(t.total()),
            ms(net1),
            ms(proxy),
            ms(net2),
            ms(server),
            ms(wall)
        );
        // The parts add up to the client's total, and the total fits in the wall clock.
        let sum = net1 + proxy + net2 + server;
        assert!((ms(sum) - ms(t.total())).abs() < 0.01);
        assert!(t.total() <= wall);
        for (v, d) in parts.iter_mut().zip([net1, proxy, net2, server]) {
            v.push(ms(d));
        }
        unmeasured.push(ms(wall) - ms(t.total()));
    }
    // Each part is where the emulated links and the handler put it (medians, so one call
    // delayed by a busy CI machine does not decide).
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let [net1, proxy, net2, server] = parts.each_mut().map(median);
    // The total is what the client waited: little of the wall clock is left out of it.
    let unmeasured = median(&mut unmeasured);
    assert!(unmeasured < 5.0, "the total leaves out {unmeasured} ms");
    assert!((18.0..40.0).contains(&net1), "client<->proxy {net1} ms");
    assert!((38.0..60.0).contains(&net2), "proxy<->server {net2} ms");
    assert!((30.0..50.0).contains(&server), "server {server} ms");
    assert!(proxy < 5.0, "proxy {proxy} ms");
}

#[tokio::test]
async fn a_client_reaches_regions_through_their_proxies() {
    // Two regions, each with a server and a proxy in front; the client only knows proxies
    // for "near" and "far", and reaches them over 5 ms and 40 ms links.
    let ca = DevCa::new().unwrap();
    let seen = Arc::new(Seen::default());
    let mut servers = Vec::new();
    let mut proxies = Vec::new();
    let mut links = Vec::new();
    let mut client_map = RegionMap::new();
    for (region, rtt) in [("near", 5u64), ("far", 40)] {
        let server = backend(&format!("{region}-1"), region, seen.clone())
            .bind(
                "127.0.0.1:0".parse().unwrap(),
                ServerTls::new(ca.issue_server(&["localhost"]).unwrap()),
            )
            .await
            .unwrap();
        let mut map = RegionMap::new();
        map.add_server(
            region,
            ServerEndpoint::new(server.local_addr(), "localhost"),
        );
        let upstream = RegionClient::builder(
            StaticDiscovery::new(map),
            ClientTls::with_roots([ca.certificate().clone()]).unwrap(),
        )
        .build()
        .unwrap();
        for i in 0..2 {
            let proxy = Proxy::builder(upstream.clone())
                .region(region)
                .server_id(format!("{region}-proxy-{i}"))
                .bind(
                    "127.0.0.1:0".parse().unwrap(),
                    ServerTls::new(ca.issue_server(&["proxy.local"]).unwrap()),
                )
                .await
                .unwrap();
            let link = LinkEmulator::start(
                proxy.local_addr(),
                LinkSettings::with_rtt(Duration::from_millis(rtt)),
            )
            .await
            .unwrap();
            client_map.add_server(
                region,
                ServerEndpoint::new(server.local_addr(), "localhost"),
            );
            if let Some(r) = client_map.regions.iter_mut().find(|r| r.name == region) {
                r.proxies
                    .push(ServerEndpoint::new(link.addr(), "proxy.local"));
            }
            proxies.push(proxy);
            links.push(link);
        }
        servers.push(server);
    }
    let client = RegionClient::builder(
        StaticDiscovery::new(client_map),
        ClientTls::with_roots([ca.certificate().clone()]).unwrap(),
    )
    .via_proxies()
    .build()
    .unwrap();
    assert!(client.ready("whoami", Duration::from_secs(5)).await);
    // Nearest proxy's region wins, and every answer came through a proxy.
    let start = Instant::now();
    let mut streak = 0;
    while streak < 10 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "never settled on near"
        );
        let r = client.call("whoami").unary::<_, String>(&()).await.unwrap();
        assert!(r.timing().proxied());
        streak = if r.get_ref() == "near-1" {
            streak + 1
        } else {
            0
        };
    }
    // The client's view lists proxies, not servers.
    let stats = client.stats();
    assert!(stats
        .servers
        .iter()
        .all(|s| links.iter().any(|l| s.addr == l.addr())));
    // `n` calls 10 ms apart: (failures, the last answer).
    let calls = |n: usize| {
        let client = client.clone();
        async move {
            let (mut errors, mut last) = (0, String::new());
            for _ in 0..n {
                match client
                    .call("whoami")
                    .timeout(Duration::from_secs(5))
                    .unary::<_, String>(&())
                    .await
                {
                    Ok(r) => last = r.into_inner(),
                    Err(_) => errors += 1,
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (errors, last)
        }
    };
    // One near proxy goes dark: calls go on through its sibling, still in "near".
    links[0].set_outage(true);
    assert_eq!(calls(100).await, (0, "near-1".to_string()));
    // Both near proxies dark: the far region's proxies take over.
    links[1].set_outage(true);
    assert_eq!(calls(150).await, (0, "far-1".to_string()));
}

/// A raw QUIC connection to the proxy, for sending what no client would.
async fn raw_connection(rig: &Rig) -> quinn::Connection {
    let cfg = rig.tls().quinn_config(&TransportConfig::default()).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(cfg);
    ep.connect(rig.proxy.local_addr(), "proxy.local")
        .unwrap()
        .await
        .unwrap()
}

async fn exchange(conn: &quinn::Connection, bytes: &[u8]) -> Result<Vec<u8>, String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let _ = send.write_all(bytes).await;
    let _ = send.finish();
    match tokio::time::timeout(Duration::from_secs(10), recv.read_to_end(1 << 20)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer".into()),
    }
}

fn last_trailers(answer: &[u8]) -> Option<Trailers> {
    let mut dec = wire::FrameDecoder::new(WireLimits::default());
    dec.extend(answer);
    let mut last = None;
    while let Ok(Some(f)) = dec.next_frame() {
        last = Some(f);
    }
    let f = last?;
    (f.kind == FrameKind::Trailers)
        .then(|| Trailers::decode(&f.payload, &WireLimits::default()).ok())
        .flatten()
}

#[tokio::test]
async fn hostile_callers_are_refused_and_others_do_not_notice() {
    let rig = Rig::start(&[("eu", "eu-1", 0)]).await;
    let good = rig.channel().await;
    // A steady stream of good calls runs beside the attack.
    let good_calls = tokio::spawn(async move {
        let mut ok = 0;
        for i in 0..200i64 {
            if good.unary::<_, i64>("add", &(i, 1i64)).await == Ok(i + 1) {
                ok += 1;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        ok
    });
    let conn = raw_connection(&rig).await;

    // Garbage instead of HEADERS.
    let answer = exchange(&conn, &[0xff; 64]).await;
    if let Ok(a) = &answer {
        let t = last_trailers(a).expect("trailers");
        assert_ne!(t.code, Code::Ok);
    }
    // HEADERS, then a DATA frame announcing 1 GiB: refused before anything is buffered.
    let headers = RequestHeaders {
        method: "count_msgs".into(),
        codec: Codec::Raw,
        timeout: None,
        idempotent: false,
        routing_key: None,
        metadata: Metadata::new(),
    };
    let mut bytes = BytesMut::new();
    bytes.extend_from_slice(&headers.to_frame());
    bytes.put_u8(FrameKind::Data as u8);
    wire::put_varint(&mut bytes, 1 << 30);
    bytes.extend_from_slice(&[0u8; 1000]);
    let answer = exchange(&conn, &bytes).await;
    match &answer {
        Ok(a) => {
            let t = last_trailers(a).expect("trailers");
            assert_eq!(t.code, Code::ResourceExhausted, "{}", t.message);
        }
        Err(e) => assert!(e.contains("reset") || e.contains("stop"), "{e}"),
    }
    // A truncated frame.
    let mut bytes = BytesMut::new();
    bytes.extend_from_slice(&headers.to_frame());
    bytes.put_u8(FrameKind::Data as u8);
    wire::put_varint(&mut bytes, 100);
    bytes.extend_from_slice(&[1u8; 10]);
    let answer = exchange(&conn, &bytes).await;
    if let Ok(a) = &answer {
        let t = last_trailers(a).expect("trailers");
        assert_ne!(t.code, Code::Ok);
    }
    // An oversized message from a well-behaved client library: a clear status.
    let ch = rig.channel().await;
    let big = Bytes::from(vec![0u8; 5 << 20]);
    let err = ch.call("add").raw().unary(&big).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");

    assert_eq!(good_calls.await.unwrap(), 200, "good calls were disturbed");
    // The hostile connection itself is still usable for a proper call.
    let ch2 = rig.channel().await;
    assert_eq!(ch2.unary::<_, i64>("add", &(2i64, 2i64)).await.unwrap(), 4);
}

#[tokio::test]
async fn a_proxy_starts_from_a_toml_file() {
    let ca = DevCa::new().unwrap();
    let seen = Arc::new(Seen::default());
    let server = backend("eu-1", "eu", seen)
        .bind(
            "127.0.0.1:0".parse().unwrap(),
            ServerTls::new(ca.issue_server(&["localhost"]).unwrap()),
        )
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(format!("meridian-proxy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let id = ca.issue_server(&["proxy.local"]).unwrap();
    let pem = |label: &str, der: &[u8]| meridian::transport::pem_encode(label, der);
    std::fs::write(dir.join("proxy.pem"), pem("CERTIFICATE", id.certificate())).unwrap();
    std::fs::write(
        dir.join("proxy.key"),
        pem("PRIVATE KEY", id.key.secret_der()),
    )
    .unwrap();
    std::fs::write(dir.join("ca.pem"), ca.certificate_pem()).unwrap();
    let toml = format!(
        r#"
listen = "127.0.0.1:0"
proxy_region = "edge"
hedge = ["whoami"]

[tls]
cert = "proxy.pem"
key = "proxy.key"
ca = "ca.pem"

[[region]]
name = "eu"
servers = [{{ addr = "{}", server_name = "localhost" }}]
"#,
        server.local_addr()
    );
    std::fs::write(dir.join("proxy.toml"), toml).unwrap();
    let proxy = Proxy::from_toml_file(dir.join("proxy.toml")).await.unwrap();
    assert!(
        proxy
            .upstream()
            .ready("whoami", Duration::from_secs(5))
            .await
    );
    let ch = Channel::builder(
        proxy.local_addr(),
        ClientTls::with_roots([ca.certificate().clone()]).unwrap(),
    )
    .server_name("proxy.local")
    .connect()
    .await
    .unwrap();
    let id: String = ch
        .call("whoami")
        .timeout(Duration::from_secs(5))
        .unary(&())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(id, "eu-1");

    // Bad configurations are clear errors.
    for (bad, what) in [
        ("listen = 5", "listen"),
        (
            "listen = \"127.0.0.1:0\"\n[tls]\ncert = \"a\"\nkey = \"b\"\nbogus = 1",
            "bogus",
        ),
    ] {
        let err = ProxyConfig::from_toml_str(bad).unwrap_err().to_string();
        assert!(err.contains(what), "{err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_call_no_server_took_is_known_not_run_and_moves_to_another_proxy() {
    // Proxy A (the rig's) reaches server eu-1; proxy B reaches only eu-2, over a link that
    // goes dark once B has learned eu-2's catalog.
    let rig = Rig::start(&[("eu", "eu-1", 0)]).await;
    let eu2 = backend("eu-2", "eu", rig.seen.clone())
        .bind(
            "127.0.0.1:0".parse().unwrap(),
            ServerTls::new(rig.ca.issue_server(&["localhost"]).unwrap()),
        )
        .await
        .unwrap();
    let link = LinkEmulator::start(
        eu2.local_addr(),
        LinkSettings::with_rtt(Duration::from_millis(1)),
    )
    .await
    .unwrap();
    let mut map = RegionMap::new();
    map.add_server("eu", ServerEndpoint::new(link.addr(), "localhost"));
    let broken = Proxy::builder(
        RegionClient::builder(StaticDiscovery::new(map), rig.tls())
            .build()
            .unwrap(),
    )
    .bind(
        "127.0.0.1:0".parse().unwrap(),
        ServerTls::new(rig.ca.issue_server(&["proxy.local"]).unwrap()),
    )
    .await
    .unwrap();
    assert!(
        broken
            .upstream()
            .ready("echo_meta", Duration::from_secs(5))
            .await
    );
    link.set_outage(true);
    let start = Instant::now();
    while !broken.upstream().stats().servers.iter().all(|s| s.ejected) {
        assert!(start.elapsed() < Duration::from_secs(10), "never ejected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A call through B now fails at once, marked "not run", though B still announces the
    // method.
    let ch = rig.channel_to(broken.local_addr()).await;
    let t = Instant::now();
    let err = ch
        .unary::<_, (String, String)>("echo_meta", &())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert!(err.is_known_not_run(), "{err:?}");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    // A handler's own failure through a working proxy is never marked: it ran.
    let err = rig
        .channel()
        .await
        .unary::<_, ()>("fail", &())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(!err.is_known_not_run(), "{err:?}");

    // A client that reaches "eu" through both proxies: non-idempotent calls that land on B
    // are sent again through A, since B proved they never ran.
    let mut client_map = RegionMap::new();
    client_map.regions.push(meridian::region::Region {
        name: "eu".into(),
        servers: Vec::new(),
        proxies: vec![
            ServerEndpoint::new(rig.proxy.local_addr(), "proxy.local"),
            ServerEndpoint::new(broken.local_addr(), "proxy.local"),
        ],
        ..meridian::region::Region::new("eu")
    });
    let client = RegionClient::builder(StaticDiscovery::new(client_map), rig.tls())
        .via_proxies()
        .build()
        .unwrap();
    let start = Instant::now();
    while client
        .stats()
        .servers
        .iter()
        .filter(|s| s.connected)
        .count()
        < 2
    {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "proxies not connected"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..40 {
        let r = client
            .call("echo_meta")
            .metadata("x-user", "bob")
            .unary::<_, (String, String)>(&())
            .await
            .unwrap();
        assert_eq!(r.get_ref().0, "bob");
    }
    let stats = client.stats();
    let through_b = stats
        .servers
        .iter()
        .find(|s| s.addr == broken.local_addr())
        .map_or(0, |s| s.calls);
    println!("attempts through the broken proxy: {through_b}, all sent again through the other");
    assert!(through_b >= 1, "the broken proxy was never tried");
    assert!(stats.retries >= through_b);
}

#[tokio::test]
async fn the_proxy_hedges_like_a_region_client() {
    let rig = Rig::start_with(&[("eu", "eu-1", 0), ("eu", "eu-2", 0)], |b| {
        b.hedge("maybe_slow").retry_budget(0.2)
    })
    .await;
    let ch = rig.channel().await;
    let call = || async {
        let t = Instant::now();
        ch.call("maybe_slow")
            .timeout(Duration::from_secs(5))
            .unary::<_, ()>(&())
            .await
            .unwrap();
        t.elapsed()
    };
    // Warm-up: the hedge delay is the observed p95, known after some calls.
    for _ in 0..200 {
        call().await;
    }
    let before = rig.proxy.upstream().stats();
    let mut slowest = Duration::ZERO;
    // Calls that took most of the slow server's 300 ms. Unhedged, every 20th call would
    // (15 of 300); one is allowed for a machine that stalls the test process.
    let mut slow = 0;
    for _ in 0..300 {
        let took = call().await;
        slowest = slowest.max(took);
        slow += usize::from(took >= Duration::from_millis(250));
    }
    let stats = rig.proxy.upstream().stats();
    let (hedges, won) = (
        stats.hedges - before.hedges,
        stats.hedges_won - before.hedges_won,
    );
    println!(
        "through the proxy: slowest of 300 {slowest:?}, {slow} over 250 ms, {hedges} hedges, {won} won"
    );
    assert!(won >= 1, "no hedge answered first");
    assert!(
        slow <= 1,
        "{slow} calls of 300 waited for the 300 ms server (slowest {slowest:?})"
    );
}

/// One caller cannot take every upstream stream. The proxy gives each client connection
/// 256 calls at once; the greedy caller's channel opens its 3 extra connections (1,024
/// calls) and its other calls wait for credit. Those 1,024 calls fill the one upstream
/// connection's stream limit (1,024), so another caller's call goes up an extra upstream
/// connection and is answered at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_caller_cannot_take_every_upstream_stream() {
    let rig = Rig::start(&[("eu", "eu-1", 0)]).await;
    let per_connection = Proxy::DEFAULT_MAX_CALLS_PER_CLIENT as usize;
    let limit = per_connection * (1 + TransportConfig::default().extra_connections);
    let greedy = rig.channel().await;
    let mut calls = Vec::new();
    for _ in 0..limit + 100 {
        let ch = greedy.clone();
        calls.push(tokio::spawn(async move {
            ch.call("slow")
                .timeout(Duration::from_secs(4))
                .unary::<_, ()>(&())
                .await
        }));
    }
    wait_for("the greedy caller's calls to start", || {
        rig.seen.slow_started.load(Ordering::SeqCst) >= limit
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        rig.seen.slow_started.load(Ordering::SeqCst),
        limit,
        "calls past the per-connection limit reached the server"
    );
    let other = rig.channel().await;
    let t0 = Instant::now();
    assert_eq!(
        other.unary::<_, i64>("add", &(1i64, 2i64)).await.unwrap(),
        3
    );
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    for c in calls {
        let _ = c.await;
    }
}

#[tokio::test]
async fn mutual_tls_on_both_sides_of_the_proxy_from_its_toml() {
    use meridian::transport::pem_encode;
    let dir = std::env::temp_dir().join(format!(
        "meridian-proxy-mtls-{}-{:?}",
        std::process::id(),
        std::time::SystemTime::now()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, text: String| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let write_id = |stem: &str, id: &meridian::Identity| {
        let chain: String = id
            .chain
            .iter()
            .map(|c| pem_encode("CERTIFICATE", c))
            .collect();
        (
            write(&format!("{stem}.pem"), chain),
            write(
                &format!("{stem}.key"),
                pem_encode("PRIVATE KEY", id.key.secret_der()),
            ),
        )
    };
    // Servers and the proxy share one CA; callers and the proxy's upstream identity come
    // from two others.
    let (servers, callers, proxies) = (
        DevCa::new().unwrap(),
        DevCa::new().unwrap(),
        DevCa::new().unwrap(),
    );
    let backend = Server::builder()
        .region("eu")
        .no_local_registry()
        .unary(Method::new("who").idempotent(), |(): (), ctx| async move {
            Ok(ctx
                .peer_identity()
                .and_then(|p| p.common_name().map(str::to_string))
                .unwrap_or_default())
        })
        .bind(
            "127.0.0.1:0".parse().unwrap(),
            ServerTls::new(servers.issue_server(&["localhost"]).unwrap())
                .require_client_certs([proxies.certificate().clone()])
                .unwrap(),
        )
        .await
        .unwrap();
    let (cert, key) = write_id("proxy", &servers.issue_server(&["localhost"]).unwrap());
    let (up_cert, up_key) = write_id(
        "upstream",
        &proxies
            .issue_client_with_uri("edge-proxy", "spiffe://t/proxy")
            .unwrap(),
    );
    let ca = write("servers.pem", servers.certificate_pem());
    let client_ca = write("callers.pem", callers.certificate_pem());
    let toml = format!(
        "listen = \"127.0.0.1:0\"\n[tls]\ncert = {cert:?}\nkey = {key:?}\nca = {ca:?}\n\
         client_ca = {client_ca:?}\nupstream_cert = {up_cert:?}\nupstream_key = {up_key:?}\n\
         [[region]]\nname = \"eu\"\nservers = [{{ addr = \"{}\" }}]\n",
        backend.local_addr()
    );
    let config = ProxyConfig::from_toml_str(&toml).unwrap();
    let files = config.tls.clone();
    let proxy = Proxy::from_config(config).await.unwrap();
    assert!(proxy.upstream().ready("who", Duration::from_secs(5)).await);
    let roots = ClientTls::with_roots([servers.certificate().clone()]).unwrap();
    // A caller with a certificate from the callers' CA: served, and the backend sees the
    // proxy's upstream identity.
    let ch = Channel::builder(
        proxy.local_addr(),
        roots
            .clone()
            .with_identity(callers.issue_client("app-1").unwrap()),
    )
    .connect()
    .await
    .unwrap();
    let who: String = ch.unary("who", &()).await.unwrap();
    assert_eq!(who, "edge-proxy");
    // A caller without one: refused.
    let refused = match Channel::builder(proxy.local_addr(), roots).connect().await {
        Err(_) => true,
        Ok(ch) => ch.unary::<_, String>("who", &()).await.is_err(),
    };
    assert!(refused);

    // Rotation: the callers' CA file is replaced and the proxy rereads its [tls] files
    // (what `meridian proxy` does on SIGHUP). New callers need the new CA; the caller
    // connected before keeps its connection.
    let new_callers = DevCa::new().unwrap();
    write("callers.pem", new_callers.certificate_pem());
    proxy.reload_tls(&files).unwrap();
    let served = |ca: &DevCa| {
        let tls = ClientTls::with_roots([servers.certificate().clone()])
            .unwrap()
            .with_identity(ca.issue_client("app-2").unwrap());
        let addr = proxy.local_addr();
        async move {
            match Channel::builder(addr, tls).connect().await {
                Err(_) => false,
                Ok(ch) => ch.unary::<_, String>("who", &()).await.is_ok(),
            }
        }
    };
    assert!(
        served(&new_callers).await,
        "a caller from the new CA is served"
    );
    assert!(
        !served(&callers).await,
        "a new caller from the old CA is refused"
    );
    let who: String = ch.unary("who", &()).await.unwrap();
    assert_eq!(who, "edge-proxy", "the connection made before still works");
    // A broken file: the reload fails and the CAs in use stay.
    write("callers.pem", "garbage".to_string());
    assert!(proxy.reload_tls(&files).is_err());
    assert!(served(&new_callers).await);

    // upstream_cert without upstream_key is a configuration error.
    let half = toml.replace(&format!("upstream_key = {up_key:?}\n"), "");
    let err = Proxy::from_config(ProxyConfig::from_toml_str(&half).unwrap())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("go together"), "{err}");

    // `listen` takes a host name too, resolved when the proxy binds.
    write("callers.pem", new_callers.certificate_pem());
    let named = toml.replace("listen = \"127.0.0.1:0\"", "listen = \"localhost:0\"");
    let by_name = Proxy::from_config(ProxyConfig::from_toml_str(&named).unwrap())
        .await
        .unwrap();
    assert!(by_name.local_addr().ip().is_loopback());
    let unknown = named.replace("localhost:0", "no-such-host.invalid:0");
    let err = Proxy::from_config(ProxyConfig::from_toml_str(&unknown).unwrap())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no-such-host.invalid"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
