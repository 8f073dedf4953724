//! The server's extension points, used as a user would (the region proxy is built on the
//! same ones): an unknown-method fallback, a report of the upstream call for the TRAILERS,
//! an announced catalog, and raw calls that carry the caller's codec byte.

use std::time::{Duration, Instant};

use bytes::Bytes;
use meridian::wire::{MethodInfo, MethodKind};
use meridian::{Code, Server, ServerTls, Status, UpstreamReport};

use crate::common::{eventually, Fixture};

#[tokio::test]
async fn a_hand_made_gateway_forwards_unknown_methods_with_its_hop_s_time() {
    let backend = Fixture::start().await;
    let upstream = backend.channel().await;

    // Every method the gateway has no handler for is a unary call passed on as raw bytes,
    // with the caller's codec byte, and the upstream call's time reported back.
    let templates = Server::builder()
        .raw()
        .unary("any", move |request: Bytes, ctx| {
            let upstream = upstream.clone();
            async move {
                let started = Instant::now();
                let reply = upstream
                    .call(ctx.method())
                    .codec(ctx.codec())
                    .raw()
                    .unary(&request)
                    .await?;
                let mut report = UpstreamReport::new(started.elapsed());
                report.server_time = reply.server_time();
                ctx.report_upstream(report);
                Ok::<_, Status>(reply.into_inner())
            }
        });
    let ca = meridian::DevCa::new().unwrap();
    let gateway = Server::builder()
        .no_local_registry()
        .fallback(
            |name| MethodInfo {
                name: name.to_string(),
                kind: MethodKind::Unary,
                idempotent: false,
            },
            templates,
        )
        .bind(
            "127.0.0.1:0".parse().unwrap(),
            ServerTls::new(ca.issue_server(&["localhost"]).unwrap()),
        )
        .await
        .unwrap();
    let announced = gateway.catalog_handle();
    assert!(announced.set(vec![MethodInfo {
        name: "add".into(),
        kind: MethodKind::Unary,
        idempotent: true,
    }]));

    let tls = meridian::ClientTls::with_roots([ca.certificate().clone()]).unwrap();
    let client = meridian::Channel::builder(gateway.local_addr(), tls)
        .connect()
        .await
        .unwrap();
    let reply = client
        .call("add")
        .unary::<_, i64>(&(40i64, 2i64))
        .await
        .unwrap();
    assert_eq!(*reply.get_ref(), 42);
    let timing = reply.timing();
    assert!(
        timing.proxy().is_some(),
        "the TRAILERS carry the gateway's hop"
    );
    assert!(timing.server().is_some(), "and the backend's own time");
    assert!(timing.proxy_server_network().is_some());

    // Value-encoded calls keep their codec through the gateway.
    let v = client
        .call_value("add", &meridian::Value::List(vec![1.into(), 2.into()]))
        .await
        .unwrap();
    assert_eq!(v, meridian::Value::Int(3));

    // The backend's own answer comes back unchanged.
    let err = client
        .call("no_such_method")
        .unary::<_, i64>(&1i64)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);

    // The announced catalog reaches clients in the HELLO.
    assert!(
        eventually(Duration::from_secs(5), || client
            .catalog()
            .is_idempotent("add"))
        .await,
        "announced methods reach the client's catalog"
    );
}
