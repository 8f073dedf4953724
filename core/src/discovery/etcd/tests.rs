//! Unit tests of the etcd backend that need no etcd.

use std::net::SocketAddr;
use std::time::Duration;

use rustls::pki_types::CertificateDer;

use super::{EtcdConfig, ServerRecord};
use crate::discovery::RegionMap;

#[test]
fn reads_the_etcd_table_of_a_region_file() {
    let text = r#"
        [[region]]
        name = "near"
        servers = [{ addr = "127.0.0.1:7000" }]

        [etcd]
        endpoints = ["http://127.0.0.1:2379"]
        lease_ttl = 4
        prefix = "/svc"
    "#;
    let c = EtcdConfig::from_toml_str(text).unwrap().unwrap();
    assert_eq!(c.endpoints, ["http://127.0.0.1:2379"]);
    assert_eq!(c.lease_ttl, Duration::from_secs(4));
    assert_eq!(c.prefix, "/svc/");
    assert!(c.tls.is_none());
    // The region list still parses, the table is ignored there.
    assert_eq!(RegionMap::from_toml_str(text).unwrap().regions.len(), 1);
    // No table: no etcd.
    assert!(EtcdConfig::from_toml_str("[[region]]\nname = \"a\"\n")
        .unwrap()
        .is_none());
}

#[test]
fn bad_etcd_tables_are_clear_errors() {
    for bad in [
        "[etcd]\nendpoints = []\n",
        "[etcd]\nendpoints = [\"http://x:1\"]\nlease_ttl = 0\n",
        "[etcd]\nendpoints = [\"http://x:1\"]\nttl = 3\n",
        "[etcd]\nendpoints = \"http://x:1\"\n",
    ] {
        assert!(EtcdConfig::from_toml_str(bad).is_err(), "{bad}");
    }
    let tls = "[etcd]\nendpoints = [\"https://x:1\"]\n[etcd.tls]\ncert = \"c.pem\"\n";
    let c = EtcdConfig::from_toml_str(tls).unwrap().unwrap();
    assert!(c.tls.unwrap().options().is_err());
}

#[test]
fn ttl_is_whole_seconds_rounded_up() {
    let c = EtcdConfig::new(["http://x:1"]);
    assert_eq!(
        c.clone().lease_ttl(Duration::from_millis(1500)).ttl_secs(),
        2
    );
    assert_eq!(c.clone().lease_ttl(Duration::ZERO).ttl_secs(), 1);
    assert_eq!(c.lease_ttl(Duration::from_secs(7)).ttl_secs(), 7);
}

#[test]
fn records_round_trip_and_bad_ones_are_refused() {
    let addr: SocketAddr = "127.0.0.1:7000".parse().unwrap();
    let r = ServerRecord::new("eu", addr, "eu.example")
        .server_id("eu-1")
        .certificate(&CertificateDer::from(vec![1u8, 2, 3]));
    assert_eq!(r.cert_sha256.as_deref().map(str::len), Some(64));
    let json = serde_json::to_vec(&r).unwrap();
    let back: ServerRecord = serde_json::from_slice(&json).unwrap();
    assert_eq!(back, r);
    // Minimal records from other tools parse, with defaults.
    let min: ServerRecord =
        serde_json::from_str(r#"{"region":"a","server_id":"b","addr":"127.0.0.1:1"}"#).unwrap();
    // No name: the host of the address is the name; no hash: nothing to pin.
    assert_eq!(min.server_name, None);
    assert_eq!(min.endpoint().server_name, "127.0.0.1");
    assert_eq!(min.endpoint().cert_sha256, None);
    assert!(min.check().is_ok());
    assert!(ServerRecord::new("a/b", addr, "x").check().is_err());
    // A record carries its hash to the endpoint; a malformed hash is a bad record.
    assert_eq!(r.endpoint().server_name, "eu.example");
    assert!(r.endpoint().cert_sha256.is_some());
    let mut bad = r.clone();
    bad.cert_sha256 = Some("xyz".into());
    assert!(bad.check().unwrap_err().contains("cert_sha256"));
    // A host name as the address is kept, and names the certificate.
    let named: ServerRecord =
        serde_json::from_str(r#"{"region":"a","server_id":"b","addr":"svc.example.com:7000"}"#)
            .unwrap();
    assert_eq!(named.endpoint().server_name, "svc.example.com");
    assert_eq!(named.addr.to_string(), "svc.example.com:7000");
}

/// An etcd nobody listens at: the error says `connection refused` in one line, not the
/// gRPC client's debug dump, and counts as unreachable.
#[tokio::test]
async fn an_unreachable_etcd_is_one_readable_line() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let config = EtcdConfig::new([format!("http://127.0.0.1:{port}")])
        .connect_timeout(Duration::from_secs(2));
    let e = match super::EtcdDiscovery::connect(config).await {
        Ok(_) => panic!("connected to nothing"),
        Err(e) => e,
    };
    assert!(e.is_unreachable(), "{e:?}");
    let text = e.to_string();
    assert!(text.ends_with(": connection refused"), "{text}");
    assert!(!text.contains("tonic") && !text.contains('\n'), "{text}");
    assert_eq!(e.cause(), "connection refused");
}
