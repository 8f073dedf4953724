//! OpenTelemetry export (feature `otlp`): a call traced by its caller, forwarded by a
//! proxy, reaches a fake OTLP/HTTP collector as two spans of one trace, the proxy's the
//! parent of the server's, over real QUIC connections.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::Duration;

use meridian::proxy::Proxy;
use meridian::region::{RegionClient, RegionMap, ServerEndpoint, StaticDiscovery};
use meridian::telemetry::{OtlpLayer, TraceContext};
use meridian::{Channel, ClientTls, DevCa, Method, Server, ServerTls};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::Layer;

/// A collector that accepts POSTs and passes each body on.
fn collector() -> (String, mpsc::Receiver<(String, serde_json::Value)>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(50) {
            let Ok(mut stream) = stream else { return };
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let mut length = 0usize;
            loop {
                let mut h = String::new();
                reader.read_line(&mut h).unwrap();
                if h.trim().is_empty() {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0u8; length];
            reader.read_exact(&mut body).unwrap();
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
            let json = serde_json::from_slice(&body).expect("OTLP JSON");
            if tx.send((line.trim().to_string(), json)).is_err() {
                return;
            }
        }
    });
    (format!("http://{addr}"), rx)
}

#[test]
fn a_traced_call_through_the_proxy_is_exported_as_two_linked_spans() {
    let (endpoint, bodies) = collector();
    let otlp = OtlpLayer::new(&endpoint, "test-service").unwrap();
    let subscriber = tracing_subscriber::registry().with(otlp.with_filter(
        tracing_subscriber::filter::Targets::new().with_target("meridian", tracing::Level::DEBUG),
    ));
    let _guard = tracing::subscriber::set_default(subscriber);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let root = TraceContext::new_root();
    rt.block_on(async {
        let ca = DevCa::new().unwrap();
        let tls = || ClientTls::with_roots([ca.certificate().clone()]).unwrap();
        let server = Server::builder()
            .region("eu")
            .no_local_registry()
            .unary(
                Method::new("add").idempotent(),
                |(a, b): (i64, i64), _| async move { Ok(a + b) },
            )
            .bind(
                "127.0.0.1:0".parse().unwrap(),
                ServerTls::new(ca.issue_server(&["localhost"]).unwrap()),
            )
            .await
            .unwrap();
        let mut map = RegionMap::new();
        map.add_server("eu", ServerEndpoint::new(server.local_addr(), "localhost"));
        let upstream = RegionClient::builder(StaticDiscovery::new(map), tls())
            .build()
            .unwrap();
        let proxy = Proxy::builder(upstream)
            .bind(
                "127.0.0.1:0".parse().unwrap(),
                ServerTls::new(ca.issue_server(&["localhost"]).unwrap()),
            )
            .await
            .unwrap();
        assert!(proxy.upstream().ready("add", Duration::from_secs(5)).await);
        let ch = Channel::builder(proxy.local_addr(), tls())
            .connect()
            .await
            .unwrap();
        let sum: i64 = ch
            .call("add")
            .metadata("traceparent", root.to_string())
            .unary(&(2i64, 3i64))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(sum, 5);
        // An untraced call is not exported.
        let _: i64 = ch.unary("add", &(1i64, 1i64)).await.unwrap();
    });
    // Spans come in batches within about a second.
    let mut spans = Vec::new();
    while spans.len() < 2 {
        let (line, body) = bodies
            .recv_timeout(Duration::from_secs(10))
            .expect("the collector got the spans");
        assert_eq!(line, "POST /v1/traces HTTP/1.1");
        let rs = &body["resourceSpans"][0];
        assert_eq!(
            rs["resource"]["attributes"][0]["value"]["stringValue"],
            "test-service"
        );
        spans.extend(
            rs["scopeSpans"][0]["spans"]
                .as_array()
                .unwrap()
                .iter()
                .cloned(),
        );
    }
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let trace = root.trace_id_hex();
    let by_name = |prefix: &str| {
        spans
            .iter()
            .find(|s| s["name"].as_str().unwrap().starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} span in {spans:#?}"))
            .clone()
    };
    let hop = by_name("rpc.proxy");
    let at_server = by_name("rpc.server");
    assert_eq!(hop["traceId"], trace.as_str());
    assert_eq!(at_server["traceId"], trace.as_str());
    assert_eq!(hop["parentSpanId"], root.span_id_hex().as_str());
    assert_eq!(
        at_server["parentSpanId"], hop["spanId"],
        "the proxy is the server's parent"
    );
    assert_ne!(at_server["spanId"], hop["spanId"]);
    assert_eq!(at_server["name"], "rpc.server add");
    assert_eq!(at_server["status"]["code"], 1);
    let start: u128 = at_server["startTimeUnixNano"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let end: u128 = at_server["endTimeUnixNano"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(end >= start && end - start < 5_000_000_000, "{start} {end}");
}
