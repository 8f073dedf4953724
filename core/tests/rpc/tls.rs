//! TLS: untrusted servers are refused, mutual TLS is enforced, pinning works.

use meridian::{Channel, ClientTls, DevCa, Error, ServerTls};

use crate::common::{builder, Probe};

async fn server(tls: ServerTls) -> meridian::Server {
    builder(Default::default())
        .bind("127.0.0.1:0".parse().unwrap(), tls)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_server_fails_clearly() {
    let ca = DevCa::new().unwrap();
    let s = server(ServerTls::new(ca.issue_server(&["localhost"]).unwrap())).await;
    let other = DevCa::new().unwrap();
    let err = Channel::builder(
        s.local_addr(),
        ClientTls::with_roots([other.certificate().clone()]).unwrap(),
    )
    .connect()
    .await
    .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::Connect { .. }), "{text}");
    assert!(
        text.to_lowercase().contains("certificate"),
        "the error names the certificate: {text}"
    );
}

#[tokio::test]
async fn a_wrong_server_name_is_refused() {
    let ca = DevCa::new().unwrap();
    let s = server(ServerTls::new(ca.issue_server(&["localhost"]).unwrap())).await;
    let err = Channel::builder(
        s.local_addr(),
        ClientTls::with_roots([ca.certificate().clone()]).unwrap(),
    )
    .server_name("elsewhere.example")
    .connect()
    .await
    .unwrap_err();
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
}

#[tokio::test]
async fn mutual_tls_refuses_clients_without_a_certificate() {
    let ca = DevCa::new().unwrap();
    let tls = ServerTls::new(ca.issue_server(&["localhost"]).unwrap())
        .require_client_certs([ca.certificate().clone()])
        .unwrap();
    let s = server(tls).await;
    let roots = ClientTls::with_roots([ca.certificate().clone()]).unwrap();

    // In TLS 1.3 the client may finish its handshake before the server rejects its
    // (missing) certificate, so the refusal shows at connect or at the first call.
    let refused = match Channel::builder(s.local_addr(), roots.clone())
        .connect()
        .await
    {
        Err(_) => true,
        Ok(ch) => ch.unary::<_, i64>("add", &(1i64, 1i64)).await.is_err(),
    };
    assert!(refused, "a client without a certificate must not be served");

    let with_cert = roots.with_identity(ca.issue_client("client-1").unwrap());
    let ch = Channel::builder(s.local_addr(), with_cert)
        .connect()
        .await
        .unwrap();
    assert_eq!(ch.unary::<_, i64>("add", &(1i64, 1i64)).await.unwrap(), 2);
}

#[tokio::test]
async fn with_client_auth_no_hello_reaches_a_client_without_a_certificate() {
    let ca = DevCa::new().unwrap();
    let tls = ServerTls::new(ca.issue_server(&["localhost"]).unwrap())
        .require_client_certs([ca.certificate().clone()])
        .unwrap();
    let s = server(tls).await;
    let roots = ClientTls::with_roots([ca.certificate().clone()]).unwrap();
    // A raw QUIC client without a certificate: its handshake completes on its side, and
    // whatever the server sends before refusing it is readable.
    let hello_bytes = |tls: ClientTls| {
        let addr = s.local_addr();
        async move {
            let cfg = tls
                .quinn_config(&meridian::TransportConfig::default())
                .unwrap();
            let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
            ep.set_default_client_config(cfg);
            let Ok(conn) = ep.connect(addr, "localhost").unwrap().await else {
                return Vec::new();
            };
            let read = async {
                let mut uni = conn.accept_uni().await.ok()?;
                let mut buf = vec![0u8; 4096];
                let n = uni.read(&mut buf).await.ok()??;
                buf.truncate(n);
                Some(buf)
            };
            tokio::time::timeout(std::time::Duration::from_secs(3), read)
                .await
                .ok()
                .flatten()
                .unwrap_or_default()
        }
    };
    for _ in 0..3 {
        let leaked = hello_bytes(roots.clone()).await;
        assert!(
            !leaked.windows(3).any(|w| w == b"add"),
            "the catalog reached an unverified client: {leaked:?}"
        );
    }
    // A client with a certificate gets it.
    let with_cert = roots.with_identity(ca.issue_client("client-1").unwrap());
    let hello = hello_bytes(with_cert).await;
    assert!(hello.windows(3).any(|w| w == b"add"), "{hello:?}");
}

#[tokio::test]
async fn a_handler_learns_who_called_from_the_verified_certificate() {
    let ca = DevCa::new().unwrap();
    let tls = ServerTls::new(ca.issue_server(&["localhost"]).unwrap())
        .require_client_certs([ca.certificate().clone()])
        .unwrap();
    // Who called, and an allow-list by SPIFFE ID for one method.
    let s = meridian::Server::builder()
        .no_local_registry()
        .unary("whoami", |(): (), ctx: meridian::CallContext| async move {
            let p = ctx
                .peer_identity()
                .ok_or_else(|| meridian::Status::unauthenticated("no identity"))?;
            Ok((
                p.dns_names().to_vec(),
                p.spiffe_id().unwrap_or("").to_string(),
                p.common_name().unwrap_or("").to_string(),
            ))
        })
        .unary(
            "billing_only",
            |(): (), ctx: meridian::CallContext| async move {
                let allowed = ctx
                    .peer_identity()
                    .is_some_and(|p| p.spiffe_id() == Some("spiffe://example.org/sa/billing"));
                if allowed {
                    Ok(1u8)
                } else {
                    Err(meridian::Status::permission_denied("billing only"))
                }
            },
        )
        .bind("127.0.0.1:0".parse().unwrap(), tls)
        .await
        .unwrap();
    let roots = ClientTls::with_roots([ca.certificate().clone()]).unwrap();
    let billing = Channel::builder(
        s.local_addr(),
        roots.clone().with_identity(
            ca.issue_client_with_uri("billing-7", "spiffe://example.org/sa/billing")
                .unwrap(),
        ),
    )
    .connect()
    .await
    .unwrap();
    let (dns, spiffe, cn): (Vec<String>, String, String) =
        billing.unary("whoami", &()).await.unwrap();
    assert_eq!(dns, ["billing-7"]);
    assert_eq!(spiffe, "spiffe://example.org/sa/billing");
    assert_eq!(cn, "billing-7");
    assert_eq!(
        billing.unary::<_, u8>("billing_only", &()).await.unwrap(),
        1
    );

    let other = Channel::builder(
        s.local_addr(),
        roots.with_identity(ca.issue_client("web-1").unwrap()),
    )
    .connect()
    .await
    .unwrap();
    let (dns, spiffe, _): (Vec<String>, String, String) = other.unary("whoami", &()).await.unwrap();
    assert_eq!((dns, spiffe), (vec!["web-1".to_string()], String::new()));
    let denied = other.unary::<_, u8>("billing_only", &()).await.unwrap_err();
    assert_eq!(denied.code(), meridian::Code::PermissionDenied);
}

#[tokio::test]
async fn a_certificate_rotated_live_serves_new_handshakes_and_keeps_open_connections() {
    let old_ca = DevCa::new().unwrap();
    let new_ca = DevCa::new().unwrap();
    let tls = ServerTls::new(old_ca.issue_server(&["localhost"]).unwrap());
    // The server is bound with a clone; the handle kept here rotates it.
    let s = server(tls.clone()).await;
    let trusting = |ca: &DevCa| ClientTls::with_roots([ca.certificate().clone()]).unwrap();
    let before = Channel::builder(s.local_addr(), trusting(&old_ca))
        .connect()
        .await
        .unwrap();
    assert_eq!(
        before.unary::<_, i64>("add", &(1i64, 1i64)).await.unwrap(),
        2
    );

    // A key that does not match its certificate is refused, and changes nothing.
    let mismatched = meridian::Identity {
        chain: new_ca.issue_server(&["localhost"]).unwrap().chain,
        key: new_ca.issue_server(&["localhost"]).unwrap().key,
    };
    assert!(tls.set_identity(mismatched).is_err());
    let still_old = Channel::builder(s.local_addr(), trusting(&old_ca))
        .connect()
        .await
        .unwrap();
    assert_eq!(
        still_old
            .unary::<_, i64>("add", &(2i64, 2i64))
            .await
            .unwrap(),
        4
    );

    tls.set_identity(new_ca.issue_server(&["localhost"]).unwrap())
        .unwrap();
    // New handshakes present the new certificate...
    let after = Channel::builder(s.local_addr(), trusting(&new_ca))
        .connect()
        .await
        .unwrap();
    assert_eq!(
        after.unary::<_, i64>("add", &(3i64, 3i64)).await.unwrap(),
        6
    );
    let stale = Channel::builder(s.local_addr(), trusting(&old_ca))
        .connect()
        .await;
    assert!(
        stale.is_err(),
        "a client trusting only the old CA is refused now"
    );
    // ...and the connection made before the rotation still works.
    assert_eq!(
        before.unary::<_, i64>("add", &(5i64, 5i64)).await.unwrap(),
        10
    );
    assert_eq!(before.stats().connections, 1, "not dropped");
}

#[tokio::test]
async fn a_pinned_certificate_is_trusted_and_only_it() {
    let ca = DevCa::new().unwrap();
    let id = ca.issue_server(&["localhost"]).unwrap();
    let pinned = id.certificate().clone();
    let s = server(ServerTls::new(id)).await;
    let ch = Channel::builder(s.local_addr(), ClientTls::pinned(pinned))
        .connect()
        .await
        .unwrap();
    assert_eq!(ch.unary::<_, i64>("add", &(3i64, 4i64)).await.unwrap(), 7);

    let other = ca
        .issue_server(&["localhost"])
        .unwrap()
        .certificate()
        .clone();
    assert!(Channel::builder(s.local_addr(), ClientTls::pinned(other))
        .connect()
        .await
        .is_err());
    let _ = Probe::default();
}

/// A fresh directory for PEM files of one test.
fn pem_dir(test: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("meridian-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn a_client_reloads_its_trust_roots_without_dropping_connections() {
    let old_ca = DevCa::new().unwrap();
    let new_ca = DevCa::new().unwrap();
    let server_tls = ServerTls::new(old_ca.issue_server(&["localhost"]).unwrap());
    let s = server(server_tls.clone()).await;
    let dir = pem_dir("client-roots");
    let roots_file = dir.join("roots.pem");
    std::fs::write(&roots_file, old_ca.certificate_pem()).unwrap();
    let tls = ClientTls::with_roots_pem_file(&roots_file).unwrap();
    let before = Channel::builder(s.local_addr(), tls.clone())
        .connect()
        .await
        .unwrap();
    assert_eq!(
        before.unary::<_, i64>("add", &(1i64, 1i64)).await.unwrap(),
        2
    );

    // The server moves to a certificate from the new CA: new handshakes are refused...
    server_tls
        .set_identity(new_ca.issue_server(&["localhost"]).unwrap())
        .unwrap();
    // (a reload that fails changes nothing)
    std::fs::write(&roots_file, "not a certificate").unwrap();
    assert!(tls.reload_roots_pem_file(&roots_file).is_err());
    assert!(tls.reload_roots_pem_file(dir.join("missing.pem")).is_err());
    // (a client that never connected, so it has no session to resume: one that has,
    // resumes without seeing a certificate, as TLS 1.3 allows)
    let refused = Channel::builder(
        s.local_addr(),
        ClientTls::with_roots([old_ca.certificate().clone()]).unwrap(),
    )
    .connect()
    .await;
    assert!(
        refused.is_err(),
        "the old roots do not trust the new certificate"
    );

    // ...until the client reloads its roots from the rotated file: then the same
    // settings (a clone of them, as a region client holds) connect again.
    std::fs::write(&roots_file, new_ca.certificate_pem()).unwrap();
    tls.reload_roots_pem_file(&roots_file).unwrap();
    let after = Channel::builder(s.local_addr(), tls.clone())
        .connect()
        .await
        .unwrap();
    assert_eq!(
        after.unary::<_, i64>("add", &(2i64, 2i64)).await.unwrap(),
        4
    );
    // The connection made before both changes is still up and serving.
    assert_eq!(
        before.unary::<_, i64>("add", &(3i64, 3i64)).await.unwrap(),
        6
    );
    assert_eq!(before.stats().connections, 1, "not dropped");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn client_cas_and_client_certificates_rotate_live() {
    let old_ca = DevCa::new().unwrap();
    let new_ca = DevCa::new().unwrap();
    let server_tls = ServerTls::new(old_ca.issue_server(&["localhost"]).unwrap())
        .require_client_certs([old_ca.certificate().clone()])
        .unwrap();
    let s = server(server_tls.clone()).await;
    let tls = ClientTls::with_roots([old_ca.certificate().clone()])
        .unwrap()
        .with_identity(old_ca.issue_client("client-1").unwrap());
    let before = Channel::builder(s.local_addr(), tls.clone())
        .connect()
        .await
        .unwrap();
    assert_eq!(
        before.unary::<_, i64>("add", &(1i64, 1i64)).await.unwrap(),
        2
    );

    // A server without mutual TLS has no client CAs to reload.
    let plain = ServerTls::new(old_ca.issue_server(&["localhost"]).unwrap());
    assert!(plain
        .set_client_roots([new_ca.certificate().clone()])
        .is_err());

    // The server now accepts only client certificates from the new CA.
    let dir = pem_dir("client-cas");
    std::fs::write(dir.join("cas.pem"), new_ca.certificate_pem()).unwrap();
    server_tls
        .reload_client_roots_pem_file(dir.join("cas.pem"))
        .unwrap();
    let old_cert = match Channel::builder(s.local_addr(), tls.clone())
        .connect()
        .await
    {
        Err(_) => true,
        Ok(ch) => ch.unary::<_, i64>("add", &(1i64, 1i64)).await.is_err(),
    };
    assert!(
        old_cert,
        "a certificate from the old CA is refused by new handshakes"
    );

    // The client rotates its certificate: new connections are served again.
    tls.set_identity(new_ca.issue_client("client-1").unwrap())
        .unwrap();
    let after = Channel::builder(s.local_addr(), tls.clone())
        .connect()
        .await
        .unwrap();
    assert_eq!(
        after.unary::<_, i64>("add", &(2i64, 2i64)).await.unwrap(),
        4
    );
    // The first connection, made with the old certificate, is untouched.
    assert_eq!(
        before.unary::<_, i64>("add", &(3i64, 3i64)).await.unwrap(),
        6
    );
    assert_eq!(before.stats().connections, 1, "not dropped");
    let _ = std::fs::remove_dir_all(&dir);
}
