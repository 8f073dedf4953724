//! Server interceptors over real QUIC: order, refusals before the handler, metadata added
//! for handlers, `after` with outcome and time, an allow-list by certificate name per
//! method, a per-caller concurrency limit, and the same chain on the proxy.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meridian::proxy::Proxy;
use meridian::region::{RegionClient, RegionMap, ServerEndpoint, StaticDiscovery};
use meridian::server::{AllowNames, CallEnd, CallHead, Hold, Interceptor, PerCallerLimit};
use meridian::{Channel, ClientTls, Code, DevCa, Server, ServerTls, Status};

/// Records what it saw; refuses methods named `deny*`; tags calls with metadata.
struct Recorder {
    name: &'static str,
    log: Arc<Mutex<Vec<String>>>,
}

impl Interceptor for Recorder {
    fn before(&self, call: &mut CallHead<'_>) -> Result<Option<Hold>, Status> {
        self.log
            .lock()
            .unwrap()
            .push(format!("{} before {}", self.name, call.method()));
        if call.method().starts_with("deny") && self.name == "second" {
            return Err(Status::permission_denied("denied by second"));
        }
        call.metadata().insert(format!("x-{}", self.name), "seen");
        Ok(None)
    }

    fn after(&self, end: &CallEnd<'_>) {
        self.log
            .lock()
            .unwrap()
            .push(format!("{} after {} {}", self.name, end.method, end.code));
    }
}

#[tokio::test]
async fn the_chain_runs_in_order_refuses_before_the_handler_and_sees_the_outcome() {
    let ca = DevCa::new().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let ran = Arc::new(AtomicUsize::new(0));
    let (r1, r2) = (ran.clone(), ran.clone());
    let server = Server::builder()
        .no_local_registry()
        .intercept(Recorder {
            name: "first",
            log: log.clone(),
        })
        .intercept(Recorder {
            name: "second",
            log: log.clone(),
        })
        .unary("tags", move |(): (), ctx: meridian::CallContext| {
            r1.fetch_add(1, Ordering::SeqCst);
            let md = ctx.metadata();
            let tags = (
                md.get_str("x-first").unwrap_or("").to_string(),
                md.get_str("x-second").unwrap_or("").to_string(),
            );
            async move { Ok(tags) }
        })
        .unary("deny_me", move |(): (), _| {
            r2.fetch_add(1, Ordering::SeqCst);
            async move { Ok(()) }
        })
        .bind(
            "127.0.0.1:0".parse().unwrap(),
            ServerTls::new(ca.issue_server(&["localhost"]).unwrap()),
        )
        .await
        .unwrap();
    let ch = Channel::builder(
        server.local_addr(),
        ClientTls::with_roots([ca.certificate().clone()]).unwrap(),
    )
    .connect()
    .await
    .unwrap();
    let tags: (String, String) = ch.unary("tags", &()).await.unwrap();
    assert_eq!(tags, ("seen".to_string(), "seen".to_string()));
    let denied = ch.unary::<_, ()>("deny_me", &()).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert_eq!(
        ran.load(Ordering::SeqCst),
        1,
        "the refused handler never ran"
    );
    // The health check is not intercepted.
    let health: String = ch
        .unary(meridian::HEALTH_METHOD, &String::new())
        .await
        .unwrap();
    assert_eq!(health, "SERVING");
    let log = log.lock().unwrap().clone();
    assert_eq!(
        log,
        [
            "first before tags",
            "second before tags",
            "second after tags OK",
            "first after tags OK",
            "first before deny_me",
            "second before deny_me",
            // Only the interceptor that let it through sees the end.
            "first after deny_me PERMISSION_DENIED",
        ]
    );
}

async fn mtls_server(ca: &DevCa, limit: usize) -> Server {
    Server::builder()
        .no_local_registry()
        .intercept(AllowNames::new().method("admin", ["spiffe://t/sa/ops"]))
        .intercept(PerCallerLimit::new(limit))
        .unary("admin", |(): (), _| async move { Ok(1u8) })
        .unary("sleep_ms", |ms: u64, _| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(ms)
        })
        .bind(
            "127.0.0.1:0".parse().unwrap(),
            ServerTls::new(ca.issue_server(&["localhost"]).unwrap())
                .require_client_certs([ca.certificate().clone()])
                .unwrap(),
        )
        .await
        .unwrap()
}

fn client(ca: &DevCa, name: &str, uri: &str) -> ClientTls {
    ClientTls::with_roots([ca.certificate().clone()])
        .unwrap()
        .with_identity(ca.issue_client_with_uri(name, uri).unwrap())
}

#[tokio::test]
async fn an_allow_list_by_certificate_name_and_a_per_caller_limit() {
    let ca = DevCa::new().unwrap();
    let server = mtls_server(&ca, 2).await;
    let ops = Channel::builder(
        server.local_addr(),
        client(&ca, "ops-1", "spiffe://t/sa/ops"),
    )
    .connect()
    .await
    .unwrap();
    let web = Channel::builder(
        server.local_addr(),
        client(&ca, "web-1", "spiffe://t/sa/web"),
    )
    .connect()
    .await
    .unwrap();
    assert_eq!(ops.unary::<_, u8>("admin", &()).await.unwrap(), 1);
    let denied = web.unary::<_, u8>("admin", &()).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied}");

    // Two calls of web's run; a third, even on another connection, is refused; ops is
    // not affected; once web's calls end it may call again.
    let web2 = Channel::builder(
        server.local_addr(),
        client(&ca, "web-1", "spiffe://t/sa/web"),
    )
    .connect()
    .await
    .unwrap();
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let ch = web.clone();
            tokio::spawn(async move { ch.unary::<_, u64>("sleep_ms", &600u64).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let third = web2.unary::<_, u64>("sleep_ms", &1u64).await.unwrap_err();
    assert_eq!(third.code(), Code::ResourceExhausted, "{third}");
    assert_eq!(ops.unary::<_, u64>("sleep_ms", &1u64).await.unwrap(), 1);
    for s in slow {
        assert_eq!(s.await.unwrap().unwrap(), 600);
    }
    assert_eq!(web2.unary::<_, u64>("sleep_ms", &1u64).await.unwrap(), 1);
}

#[tokio::test]
async fn the_proxy_runs_its_chain_before_forwarding() {
    let ca = DevCa::new().unwrap();
    let backend = Server::builder()
        .no_local_registry()
        .unary(
            meridian::Method::new("admin").idempotent(),
            |(): (), _| async move { Ok(7u8) },
        )
        .bind(
            "127.0.0.1:0".parse().unwrap(),
            ServerTls::new(ca.issue_server(&["localhost"]).unwrap()),
        )
        .await
        .unwrap();
    let mut map = RegionMap::new();
    map.add_server("eu", ServerEndpoint::new(backend.local_addr(), "localhost"));
    let upstream = RegionClient::builder(
        StaticDiscovery::new(map),
        ClientTls::with_roots([ca.certificate().clone()]).unwrap(),
    )
    .build()
    .unwrap();
    let proxy = Proxy::builder(upstream)
        .intercept(AllowNames::new().method("admin", ["spiffe://t/sa/ops"]))
        .bind(
            "127.0.0.1:0".parse().unwrap(),
            ServerTls::new(ca.issue_server(&["localhost"]).unwrap())
                .require_client_certs([ca.certificate().clone()])
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(
        proxy
            .upstream()
            .ready("admin", Duration::from_secs(5))
            .await
    );
    let ops = Channel::builder(
        proxy.local_addr(),
        client(&ca, "ops-1", "spiffe://t/sa/ops"),
    )
    .connect()
    .await
    .unwrap();
    assert_eq!(ops.unary::<_, u8>("admin", &()).await.unwrap(), 7);
    let web = Channel::builder(
        proxy.local_addr(),
        client(&ca, "web-1", "spiffe://t/sa/web"),
    )
    .connect()
    .await
    .unwrap();
    let denied = web.unary::<_, u8>("admin", &()).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert_eq!(proxy.stats().calls, 1, "the refused call was not forwarded");
}
