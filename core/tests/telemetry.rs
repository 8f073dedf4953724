//! What servers, region clients and proxies tell operators, over real QUIC connections and
//! a real HTTP scrape: the metrics exposition, `/healthz` and `/readyz`, the health method
//! (serving, not serving, draining), W3C trace context continued by the proxy, the log
//! lines of region health changes, and the proxy's access lines naming the upstream server.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meridian::proxy::Proxy;
use meridian::region::{RegionClient, RegionMap, ServerEndpoint, StaticDiscovery};
use meridian::telemetry::{Metrics, MetricsEndpoint, TraceContext};
use meridian::{
    Channel, ClientTls, Code, DevCa, Method, Server, ServerBuilder, ServerTls, Status,
    HEALTH_METHOD,
};

fn methods(region: &str, id: &str) -> ServerBuilder {
    Server::builder()
        .region(region)
        .server_id(id)
        .no_local_registry()
        .unary(
            Method::new("add").idempotent(),
            |(a, b): (i64, i64), _| async move { Ok(a + b) },
        )
        .unary("fail", |(): (), _| async move {
            Err::<(), _>(Status::not_found("nothing"))
        })
        .unary("sleep_ms", |ms: u64, _| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(ms)
        })
        .unary("traceparent", |(): (), ctx| async move {
            Ok(ctx
                .metadata()
                .get_str("traceparent")
                .unwrap_or("")
                .to_string())
        })
        .server_streaming("count", |n: u32, _, sink| async move {
            for i in 0..n {
                sink.send(&i).await?;
            }
            Ok(())
        })
        .client_streaming("sum", |mut reqs, _| async move {
            let mut total = 0i64;
            while let Some(x) = reqs.message().await? {
                let x: i64 = x;
                total += x;
            }
            Ok(total)
        })
        .bidi("double", |mut reqs, _, sink| async move {
            while let Some(x) = reqs.message().await? {
                let x: i64 = x;
                sink.send(&(x * 2)).await?;
            }
            Ok(())
        })
}

async fn serve(ca: &DevCa, region: &str, id: &str) -> Server {
    methods(region, id)
        .bind(
            "127.0.0.1:0".parse().unwrap(),
            ServerTls::new(ca.issue_server(&["localhost"]).unwrap()),
        )
        .await
        .unwrap()
}

fn tls(ca: &DevCa) -> ClientTls {
    ClientTls::with_roots([ca.certificate().clone()]).unwrap()
}

/// A proxy in region "edge", access log on, forwarding to the one server `backend` (in
/// region "eu").
async fn logging_proxy(ca: &DevCa, backend: SocketAddr) -> Proxy {
    let mut map = RegionMap::new();
    map.add_server("eu", ServerEndpoint::new(backend, "localhost"));
    let upstream = RegionClient::builder(StaticDiscovery::new(map), tls(ca))
        .build()
        .unwrap();
    Proxy::builder(upstream)
        .region("edge")
        .access_log(true)
        .bind(
            "127.0.0.1:0".parse().unwrap(),
            ServerTls::new(ca.issue_server(&["localhost"]).unwrap()),
        )
        .await
        .unwrap()
}

/// One HTTP GET over a fresh TCP connection (blocking, bounded by timeouts): status code
/// and body.
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body.to_string())
}

async fn get_async(addr: SocketAddr, path: &'static str) -> (u16, String) {
    tokio::task::spawn_blocking(move || get(addr, path))
        .await
        .unwrap()
}

/// The value of the sample `name{labels}` in an exposition (labels in any order).
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
        if metric != name {
            return None;
        }
        let all = labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        all.then(|| value.parse().ok()).flatten()
    })
}

#[tokio::test]
async fn a_scrape_shows_calls_by_method_and_status_latency_and_in_flight() {
    let ca = DevCa::new().unwrap();
    let server = serve(&ca, "eu", "eu-1").await;
    let metrics = Arc::new(Metrics::new());
    metrics.add(server.metrics_source());
    let endpoint = MetricsEndpoint::bind("127.0.0.1:0".parse().unwrap(), metrics)
        .await
        .unwrap();
    let ch = Channel::builder(server.local_addr(), tls(&ca))
        .connect()
        .await
        .unwrap();
    for i in 0..5i64 {
        let sum: i64 = ch.unary("add", &(i, 1i64)).await.unwrap();
        assert_eq!(sum, i + 1);
    }
    for _ in 0..2 {
        let e = ch.unary::<_, ()>("fail", &()).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
    }
    let e = ch.unary::<_, ()>("no_such_method", &()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented);
    // One call stays in flight during the scrape.
    let slow = {
        let ch = ch.clone();
        tokio::spawn(async move { ch.unary::<_, u64>("sleep_ms", &1500u64).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;

    let (status, text) = get_async(endpoint.local_addr(), "/metrics").await;
    assert_eq!(status, 200, "{text}");
    assert!(text.ends_with("# EOF\n"), "{text}");
    let calls = "meridian_server_calls_total";
    assert_eq!(
        sample(&text, calls, &[("method", "add"), ("code", "OK")]),
        Some(5.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, calls, &[("method", "fail"), ("code", "NOT_FOUND")]),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            calls,
            &[("method", "<unknown>"), ("code", "UNIMPLEMENTED")]
        ),
        Some(1.0),
        "{text}"
    );
    let hist = "meridian_server_call_duration_seconds_count";
    assert_eq!(
        sample(&text, hist, &[("method", "add")]),
        Some(5.0),
        "{text}"
    );
    let inf = "meridian_server_call_duration_seconds_bucket";
    assert_eq!(
        sample(&text, inf, &[("method", "add"), ("le", "+Inf")]),
        Some(5.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "meridian_server_calls_in_flight",
            &[("method", "sleep_ms")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "meridian_server_connections",
            &[("server", "eu-1"), ("region", "eu")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "meridian_server_serving", &[]),
        Some(1.0),
        "{text}"
    );

    assert_eq!(slow.await.unwrap().unwrap(), 1500);
    let (_, text) = get_async(endpoint.local_addr(), "/metrics").await;
    assert_eq!(
        sample(
            &text,
            "meridian_server_calls_in_flight",
            &[("method", "sleep_ms")]
        ),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, calls, &[("method", "sleep_ms"), ("code", "OK")]),
        Some(1.0),
        "{text}"
    );
    let (status, body) = get_async(endpoint.local_addr(), "/nope").await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test]
async fn the_metrics_endpoint_refuses_what_is_not_a_short_get() {
    let endpoint = MetricsEndpoint::bind("127.0.0.1:0".parse().unwrap(), Arc::new(Metrics::new()))
        .await
        .unwrap();
    let addr = endpoint.local_addr();
    tokio::task::spawn_blocking(move || {
        // Not GET.
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"POST /metrics HTTP/1.1\r\n\r\n").unwrap();
        let mut t = String::new();
        s.read_to_string(&mut t).unwrap();
        assert!(t.starts_with("HTTP/1.1 405"), "{t}");
        // A request head past the limit is refused, not buffered.
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let long = format!("GET /metrics HTTP/1.1\r\nx: {}\r\n", "a".repeat(64 * 1024));
        let _ = s.write_all(long.as_bytes());
        let mut t = String::new();
        let _ = s.read_to_string(&mut t);
        assert!(t.starts_with("HTTP/1.1 400"), "{t}");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn health_says_serving_not_serving_and_draining_and_readyz_follows() {
    let ca = DevCa::new().unwrap();
    let server = serve(&ca, "eu", "eu-1").await;
    let metrics = Arc::new(Metrics::new());
    metrics.add(server.metrics_source());
    let endpoint = MetricsEndpoint::bind("127.0.0.1:0".parse().unwrap(), metrics)
        .await
        .unwrap();
    let http = endpoint.local_addr();
    let ch = Channel::builder(server.local_addr(), tls(&ca))
        .connect()
        .await
        .unwrap();
    let health = |m: &'static str| {
        let ch = ch.clone();
        async move { ch.unary::<_, String>(HEALTH_METHOD, &m.to_string()).await }
    };
    assert_eq!(health("").await.unwrap(), "SERVING");
    assert_eq!(health("add").await.unwrap(), "SERVING");
    assert_eq!(health("nosuch").await.unwrap_err().code(), Code::NotFound);
    assert_eq!(get_async(http, "/healthz").await, (200, "ok\n".into()));
    assert_eq!(get_async(http, "/readyz").await.0, 200);

    server.set_serving(false);
    assert_eq!(health("").await.unwrap(), "NOT_SERVING");
    let (status, body) = get_async(http, "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("not serving"), "{body}");
    server.set_serving(true);
    assert_eq!(get_async(http, "/readyz").await.0, 200);

    // While a call keeps the server draining, the check is still answered, and /readyz
    // fails; liveness holds.
    let slow = {
        let ch = ch.clone();
        tokio::spawn(async move { ch.unary::<_, u64>("sleep_ms", &1500u64).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopping = tokio::spawn(server.shutdown(Duration::from_secs(5)));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(health("").await.unwrap(), "DRAINING");
    // An ordinary call is refused meanwhile (and said not to have run).
    let refused = ch.unary::<_, i64>("add", &(1i64, 2i64)).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused}");
    let (status, body) = get_async(http, "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("draining"), "{body}");
    assert_eq!(get_async(http, "/healthz").await.0, 200);
    assert_eq!(slow.await.unwrap().unwrap(), 1500);
    stopping.await.unwrap();
    let (status, body) = get_async(http, "/readyz").await;
    assert_eq!(status, 503, "{body}");
}

#[tokio::test]
async fn the_proxy_continues_the_callers_trace_and_reports_its_upstream() {
    let ca = DevCa::new().unwrap();
    let backend = serve(&ca, "eu", "eu-1").await;
    let proxy = logging_proxy(&ca, backend.local_addr()).await;
    assert!(proxy.upstream().ready("add", Duration::from_secs(5)).await);
    let ch = Channel::builder(proxy.local_addr(), tls(&ca))
        .connect()
        .await
        .unwrap();
    let root = TraceContext::new_root();
    let seen: String = ch
        .call("traceparent")
        .metadata("traceparent", root.to_string())
        .unary(&())
        .await
        .unwrap()
        .into_inner();
    let seen = TraceContext::parse(&seen).expect("the server got a valid traceparent");
    assert_eq!(seen.trace_id, root.trace_id, "same trace");
    assert_ne!(
        seen.span_id, root.span_id,
        "the proxy's hop is the server's parent"
    );
    assert_eq!(seen.flags, root.flags);

    // A caller with no trace: the proxy (access log on) starts one, so its line and the
    // server's can be matched.
    let seen: String = ch.unary("traceparent", &()).await.unwrap();
    assert!(TraceContext::parse(&seen).is_some(), "{seen:?}");

    // A malformed traceparent is not continued (the proxy starts a new trace).
    let seen: String = ch
        .call("traceparent")
        .metadata("traceparent", "00-zz-yy-01")
        .unary(&())
        .await
        .unwrap()
        .into_inner();
    assert!(TraceContext::parse(&seen).is_some(), "{seen:?}");

    // The proxy's scrape has its own calls, the upstream's view and the forwarding counts.
    let metrics = Metrics::new();
    metrics.add(proxy.metrics_source());
    let text = metrics.render();
    assert_eq!(
        sample(
            &text,
            "meridian_server_calls_total",
            &[("method", "traceparent"), ("code", "OK")]
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "meridian_proxy_forwarded_total", &[]),
        Some(3.0),
        "{text}"
    );
    let server = backend.local_addr().to_string();
    assert_eq!(
        sample(
            &text,
            "meridian_region_server_attempts_total",
            &[("region", "eu"), ("server", &server)]
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "meridian_region_server_healthy",
            &[("server", &server)]
        ),
        Some(1.0),
        "{text}"
    );
    let rtt = sample(&text, "meridian_region_rtt_seconds", &[("region", "eu")]).unwrap();
    assert!(rtt > 0.0 && rtt < 1.0, "{rtt}");
    assert_eq!(
        sample(&text, "meridian_region_chosen", &[("region", "eu")]),
        Some(1.0)
    );
    assert!(metrics.ready().is_ok());
}

/// Log lines captured from the tracing subscriber of a test.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Captures this thread's log lines at INFO and above until the guard is dropped.
fn capture_logs() -> (Captured, tracing::subscriber::DefaultGuard) {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    (logs, tracing::subscriber::set_default(subscriber))
}

#[test]
fn a_region_client_logs_servers_leaving_and_the_region_it_moves_to() {
    let (logs, _guard) = capture_logs();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let eu_addr = rt.block_on(async {
        let ca = DevCa::new().unwrap();
        let eu = serve(&ca, "eu", "eu-1").await;
        let us = serve(&ca, "us", "us-1").await;
        let eu_addr = eu.local_addr();
        let mut map = RegionMap::new();
        map.add_server("eu", ServerEndpoint::new(eu_addr, "localhost"));
        map.add_server("us", ServerEndpoint::new(us.local_addr(), "localhost"));
        let client = RegionClient::builder(StaticDiscovery::new(map), tls(&ca))
            .home_region("eu")
            .probe_interval(Duration::from_millis(50))
            .build()
            .unwrap();
        assert!(client.ready("add", Duration::from_secs(5)).await);
        let sum: i64 = client.unary("add", &(1i64, 2i64)).await.unwrap();
        assert_eq!(sum, 3);
        // Wait for the first "calls now go to region eu".
        for _ in 0..100 {
            if logs.text().contains("calls now go to region") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(eu);
        // The dead server is noticed (silence limit 1 s); calls go to us meanwhile.
        for _ in 0..200 {
            let t = logs.text();
            if t.contains("server out of service") && t.contains("region unhealthy") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let sum: i64 = client.unary("add", &(2i64, 2i64)).await.unwrap();
        assert_eq!(sum, 4);
        let metrics = Metrics::new();
        metrics.add(client.metrics_source());
        let text = metrics.render();
        let ejections = sample(
            &text,
            "meridian_region_server_ejections_total",
            &[("server", &eu_addr.to_string())],
        );
        assert!(ejections.is_some_and(|n| n >= 1.0), "{text}");
        let attempts = sample(
            &text,
            "meridian_region_server_attempts_total",
            &[("region", "us")],
        );
        assert_eq!(attempts, Some(1.0), "{text}");
        eu_addr
    });
    let text = logs.text();
    let first = text
        .lines()
        .find(|l| l.contains("calls now go to region"))
        .unwrap_or_else(|| panic!("no region line in:\n{text}"));
    assert!(first.contains("INFO") && first.contains("eu"), "{first}");
    let out = text
        .lines()
        .find(|l| l.contains("server out of service"))
        .unwrap_or_else(|| panic!("no ejection line in:\n{text}"));
    assert!(out.contains("WARN") && out.contains("region=eu"), "{out}");
    assert!(out.contains(&eu_addr.to_string()), "{out}");
    let region = text
        .lines()
        .find(|l| l.contains("region unhealthy"))
        .unwrap_or_else(|| panic!("no region health line in:\n{text}"));
    assert!(
        region.contains("WARN") && region.contains("region=eu"),
        "{region}"
    );
}

#[test]
fn the_proxys_access_line_names_the_upstream_server_for_every_call_kind() {
    let (logs, _guard) = capture_logs();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let backend_addr = rt.block_on(async {
        let ca = DevCa::new().unwrap();
        let backend = serve(&ca, "eu", "eu-1").await;
        let addr = backend.local_addr();

        // Straight to the server: a stream names the server it comes from.
        let direct = Channel::builder(addr, tls(&ca)).connect().await.unwrap();
        let mut s = direct
            .call("count")
            .server_streaming::<_, u32>(&3u32)
            .await
            .unwrap();
        while s.message().await.unwrap().is_some() {}
        let by = s.served_by();
        assert_eq!(
            (by.region(), by.server_id(), by.addr()),
            ("eu", "eu-1", addr)
        );

        let proxy = logging_proxy(&ca, addr).await;
        assert!(
            proxy
                .upstream()
                .ready("double", Duration::from_secs(5))
                .await
        );
        let ch = Channel::builder(proxy.local_addr(), tls(&ca))
            .connect()
            .await
            .unwrap();

        let sum: i64 = ch.unary("add", &(2i64, 3i64)).await.unwrap();
        assert_eq!(sum, 5);
        let mut s = ch
            .call("count")
            .server_streaming::<_, u32>(&4u32)
            .await
            .unwrap();
        let mut got = Vec::new();
        while let Some(x) = s.message().await.unwrap() {
            got.push(x);
        }
        assert_eq!(got, [0, 1, 2, 3]);
        // Through a proxy, the stream's own end is the proxy.
        assert_eq!(s.served_by().region(), "edge");
        let (mut sink, resp) = ch.call("sum").client_streaming::<i64, i64>().await.unwrap();
        for i in 1..=4 {
            sink.send(&i).await.unwrap();
        }
        sink.finish();
        assert_eq!(*resp.response().await.unwrap().get_ref(), 10);
        let (mut sink, mut stream) = ch.call("double").bidi::<i64, i64>().await.unwrap();
        sink.send(&21).await.unwrap();
        assert_eq!(stream.message().await.unwrap(), Some(42));
        sink.finish();
        assert_eq!(stream.message().await.unwrap(), None);
        addr
    });
    let text = logs.text();
    let upstream = format!("upstream=\"eu/eu-1@{backend_addr}\"");
    for (method, kind) in [
        ("add", "unary"),
        ("count", "server_streaming"),
        ("sum", "client_streaming"),
        ("double", "bidi"),
    ] {
        let line = text
            .lines()
            .find(|l| l.contains("forwarded") && l.contains(&format!("method=\"{method}\"")))
            .unwrap_or_else(|| panic!("no access line for {method} ({kind}) in:\n{text}"));
        assert!(line.contains("code=\"OK\""), "{line}");
        assert!(line.contains(&upstream), "{kind}: {line}");
    }
}
