//! Whom a client of the in-process registry trusts, over real QUIC on loopback: each
//! address's registered end-entity certificate, pinned for that address, and nothing
//! else. A server whose chain is a real one (leaf + intermediate) does not make its
//! intermediate trusted for other servers, and servers registered after the client was
//! built are trusted too.
//!
//! Alone in its file: the registry is process-wide, and this test must be the only one
//! filling it.

use std::time::Duration;

use meridian::region::{LocalRegistry, RegionClient, ServerEndpoint};
use meridian::{DevCa, Identity, Method, Server, ServerTls};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

const WAIT: Duration = Duration::from_secs(5);

/// A root CA, an intermediate CA under it, and a function issuing server certificates
/// for `localhost` under the intermediate (chain: leaf, intermediate).
fn intermediate_ca() -> impl Fn() -> Identity {
    let ca_params = |name: &str| {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        p
    };
    let root_key = rcgen::KeyPair::generate().expect("key");
    let root = ca_params("test root");
    let inter_key = rcgen::KeyPair::generate().expect("key");
    let inter = ca_params("test intermediate");
    let inter_cert = inter
        .signed_by(&inter_key, &rcgen::Issuer::from_params(&root, &root_key))
        .expect("intermediate")
        .der()
        .clone();
    move || {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = p
            .signed_by(&key, &rcgen::Issuer::from_params(&inter, &inter_key))
            .expect("leaf");
        Identity {
            chain: vec![leaf.der().clone(), inter_cert.clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }
}

fn server(id: &str) -> meridian::ServerBuilder {
    let id = id.to_string();
    Server::builder()
        .region("local")
        .server_id(id.clone())
        .unary(Method::new("whoami").idempotent(), move |(): (), _| {
            let id = id.clone();
            async move { Ok::<_, meridian::Status>(id) }
        })
}

#[tokio::test]
async fn the_local_registry_pins_each_leaf_and_never_trusts_the_chain_s_ca() {
    let issue = intermediate_ca();
    let a_id = issue();
    let a_leaf = a_id.certificate().clone();
    // A registers itself (advertise_locally is the default).
    let a = server("a")
        .bind("127.0.0.1:0".parse().unwrap(), ServerTls::new(a_id))
        .await
        .unwrap();
    // B holds another valid leaf of the same intermediate, for the same name; its
    // registry entry (a stale or forged one) names A's certificate.
    let b = server("b")
        .no_local_registry()
        .bind("127.0.0.1:0".parse().unwrap(), ServerTls::new(issue()))
        .await
        .unwrap();
    let _b_entry = LocalRegistry::global().register(
        "local",
        ServerEndpoint::new(b.local_addr(), "localhost"),
        a_leaf,
    );

    let client = RegionClient::local().build().unwrap();
    for _ in 0..20 {
        let who: String = client.unary("whoami", &()).await.expect("call");
        assert_eq!(
            who, "a",
            "B's certificate chains to A's intermediate, and is refused"
        );
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    let why = loop {
        if let Some(why) = client.last_connect_error() {
            break why;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            client.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(why.contains(&b.local_addr().to_string()), "{why}");

    // A server registered after the client was built is trusted (its leaf is looked up
    // when it is dialled), with a certificate from another CA altogether.
    let c_tls = ServerTls::new(DevCa::new().unwrap().issue_server(&["localhost"]).unwrap());
    let c = server("c")
        .bind("127.0.0.1:0".parse().unwrap(), c_tls.clone())
        .await
        .unwrap();
    loop {
        let connected = client
            .stats()
            .servers
            .iter()
            .any(|s| s.addr == c.local_addr() && s.connected);
        if connected {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline + WAIT,
            "{:?}",
            client.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // C's certificate rotates live (another CA again): a local client dialling it now
    // pins the certificate C presents now, not the one it registered with.
    let rotated = DevCa::new().unwrap().issue_server(&["localhost"]).unwrap();
    let rotated_leaf = rotated.certificate().clone();
    c_tls.set_identity(rotated).unwrap();
    assert_eq!(
        LocalRegistry::global().certificate_of(&c.local_addr().into()),
        Some(rotated_leaf)
    );
    drop((a, b));
    let fresh = RegionClient::local().build().unwrap();
    let who: String = tokio::time::timeout(WAIT, async {
        loop {
            match fresh.unary::<_, String>("whoami", &()).await {
                Ok(who) => break who,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the rotated server is not trusted: {:?}",
            fresh.last_connect_error()
        )
    });
    assert_eq!(who, "c");
    drop(c);
}
