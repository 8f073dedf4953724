//! The registry must not decide alone whom a client trusts, over real QUIC on loopback:
//! with pinning on, a server whose published `cert_sha256` is not the certificate it
//! presents (or that publishes none) is refused with a clear reason while the others keep
//! serving; a region's expected name, set on the client, beats the name a map entry
//! gives; and a channel can require a hash by itself.

use std::net::SocketAddr;
use std::time::Duration;

use meridian::region::{RegionClient, RegionMap, ServerEndpoint, StaticDiscovery};
use meridian::transport::cert_sha256;
use meridian::{Channel, ClientTls, DevCa, Identity, Method, Server, ServerTls};

const WAIT: Duration = Duration::from_secs(5);

async fn serve(id: &str, identity: Identity) -> Server {
    let id = id.to_string();
    Server::builder()
        .region("eu")
        .server_id(id.clone())
        .no_local_registry()
        .unary(Method::new("whoami").idempotent(), move |(): (), _| {
            let id = id.clone();
            async move { Ok::<_, meridian::Status>(id) }
        })
        .bind(
            "127.0.0.1:0".parse().expect("addr"),
            ServerTls::new(identity),
        )
        .await
        .expect("bind")
}

fn roots(ca: &DevCa) -> ClientTls {
    ClientTls::with_roots([ca.certificate().clone()]).expect("roots")
}

async fn whoami(client: &RegionClient) -> Result<String, meridian::Status> {
    client
        .call("whoami")
        .timeout(WAIT)
        .unary::<(), String>(&())
        .await
        .map(|r| r.into_inner())
}

/// Calls until `n` answers arrived, returning them (fails the test on an error).
async fn answers(client: &RegionClient, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    for _ in 0..n {
        got.push(whoami(client).await.expect("call"));
    }
    got
}

struct Fleet {
    ca: DevCa,
    _servers: Vec<Server>,
    good: ServerEndpoint,
    wrong: ServerEndpoint,
    missing: ServerEndpoint,
}

/// Three servers of one CA, all valid for `localhost`: `good` publishes its own hash,
/// `wrong` publishes good's, `missing` publishes none.
async fn fleet() -> Fleet {
    let ca = DevCa::new().expect("ca");
    let (a, b, c) = (
        ca.issue_server(&["localhost"]).unwrap(),
        ca.issue_server(&["localhost"]).unwrap(),
        ca.issue_server(&["localhost"]).unwrap(),
    );
    let hash_a = cert_sha256(a.certificate());
    let servers = vec![
        serve("good", a).await,
        serve("wrong", b).await,
        serve("missing", c).await,
    ];
    let at = |i: usize| ServerEndpoint::at(servers[i].local_addr());
    Fleet {
        good: at(0).with_cert_sha256(hash_a),
        wrong: at(1).with_cert_sha256(hash_a),
        missing: at(2),
        ca,
        _servers: servers,
    }
}

fn map_of(servers: &[&ServerEndpoint]) -> RegionMap {
    let mut map = RegionMap::new();
    for s in servers {
        map.add_server("eu", (*s).clone());
    }
    map
}

#[tokio::test]
async fn pinned_clients_refuse_servers_whose_published_hash_does_not_match() {
    let f = fleet().await;
    let all = map_of(&[&f.good, &f.wrong, &f.missing]);

    // Without pinning, every server of the CA serves (the hashes are not looked at).
    let open = RegionClient::builder(StaticDiscovery::new(all.clone()), roots(&f.ca))
        .build()
        .unwrap();
    assert!(open.ready("whoami", WAIT).await);
    let deadline = tokio::time::Instant::now() + WAIT;
    while open.stats().servers.iter().any(|s| !s.connected) {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", open.stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // With pinning, only the server that presents the published certificate does.
    let pinned = RegionClient::builder(StaticDiscovery::new(all), roots(&f.ca))
        .pin_cert_sha256()
        .build()
        .unwrap();
    let got = answers(&pinned, 20).await;
    assert!(got.iter().all(|id| id == "good"), "{got:?}");
    let stats = pinned.stats();
    for refused in [&f.wrong, &f.missing] {
        let row = stats
            .servers
            .iter()
            .find(|s| s.addr == refused.addr)
            .expect("row");
        assert!(!row.connected && row.calls == 0, "{row:?}");
    }

    // Alone, a mismatching server fails the call, and the error says why.
    let only_wrong = RegionClient::builder(StaticDiscovery::new(map_of(&[&f.wrong])), roots(&f.ca))
        .pin_cert_sha256()
        .build()
        .unwrap();
    let err = whoami(&only_wrong).await.expect_err("refused");
    assert_eq!(err.code(), meridian::Code::Unavailable, "{err}");
    assert!(
        err.message().contains("certificate SHA-256 mismatch"),
        "{err}"
    );
    // So does one that publishes no hash.
    let only_missing =
        RegionClient::builder(StaticDiscovery::new(map_of(&[&f.missing])), roots(&f.ca))
            .pin_cert_sha256()
            .build()
            .unwrap();
    let err = whoami(&only_missing).await.expect_err("refused");
    assert!(
        err.message().contains("no cert_sha256 is published"),
        "{err}"
    );
}

#[tokio::test]
async fn a_region_file_pins_one_region_and_leaves_the_others() {
    let f = fleet().await;
    let entry = |ep: &ServerEndpoint| {
        let hash = ep
            .cert_sha256
            .map(|h| {
                format!(
                    ", cert_sha256 = \"sha256:{}\"",
                    meridian::discovery::sha256_hex(&h)
                )
            })
            .unwrap_or_default();
        format!("{{ addr = \"{}\"{hash} }}", ep.addr)
    };
    let text = format!(
        "[[region]]\nname = \"eu\"\npin_cert_sha256 = true\nservers = [{}, {}]\n\n\
         [[region]]\nname = \"us\"\nservers = [{}]\n",
        entry(&f.good),
        entry(&f.wrong),
        entry(&f.missing)
    );
    let map = RegionMap::from_toml_str(&text).expect("region file");
    let client = RegionClient::builder(StaticDiscovery::new(map), roots(&f.ca))
        .home_region("us")
        .build()
        .unwrap();
    // "us" is not pinned: its server, which publishes no hash, serves.
    let got = answers(&client, 5).await;
    assert!(got.iter().all(|id| id == "missing"), "{got:?}");
    let deadline = tokio::time::Instant::now() + WAIT;
    let wrong_row = |c: &RegionClient| {
        c.stats()
            .servers
            .into_iter()
            .find(|s| s.addr == f.wrong.addr)
            .expect("row")
    };
    // "eu" is: its mismatching server is refused, its good one connects.
    loop {
        let stats = client.stats();
        let good = stats
            .servers
            .iter()
            .find(|s| s.addr == f.good.addr)
            .expect("row");
        if good.connected && wrong_row(&client).ejections > 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{stats:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!wrong_row(&client).connected);
}

#[tokio::test]
async fn the_client_not_the_map_chooses_the_verified_name() {
    let ca = DevCa::new().expect("ca");
    // The real server of the region, and another holder of a valid certificate from the
    // same CA, for another name, that a registry entry points at.
    let real = serve("real", ca.issue_server(&["eu.example.test"]).unwrap()).await;
    let other = serve("other", ca.issue_server(&["other.example.test"]).unwrap()).await;
    let mut map = RegionMap::new();
    map.add_server(
        "eu",
        ServerEndpoint::new(real.local_addr(), "eu.example.test"),
    );
    map.add_server(
        "eu",
        ServerEndpoint::new(other.local_addr(), "other.example.test"),
    );

    // Trusting the map's names, both serve.
    let trusting = RegionClient::builder(StaticDiscovery::new(map.clone()), roots(&ca))
        .build()
        .unwrap();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..200 {
        seen.insert(whoami(&trusting).await.expect("call"));
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen.len(), 2, "both served: {seen:?}");

    // With the region's name set on the client, the other one is refused.
    let strict = RegionClient::builder(StaticDiscovery::new(map), roots(&ca))
        .expect_server_name("eu", "eu.example.test")
        .build()
        .unwrap();
    let got = answers(&strict, 20).await;
    assert!(got.iter().all(|id| id == "real"), "{got:?}");
    let deadline = tokio::time::Instant::now() + WAIT;
    let why = loop {
        if let Some(why) = strict.last_connect_error() {
            break why;
        }
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let other_addr: SocketAddr = other.local_addr();
    assert!(
        why.contains(&other_addr.to_string()) && why.contains("not valid for name"),
        "{why}"
    );
}

#[tokio::test]
async fn a_channel_can_require_the_hash_of_the_certificate() {
    let ca = DevCa::new().expect("ca");
    let id = ca.issue_server(&["localhost"]).unwrap();
    let right = cert_sha256(id.certificate());
    let server = serve("one", id).await;
    let ch = Channel::builder(server.local_addr(), roots(&ca))
        .require_cert_sha256(right)
        .connect()
        .await
        .expect("the presented certificate has the hash");
    let who: String = ch.unary("whoami", &()).await.expect("call");
    assert_eq!(who, "one");
    let err = Channel::builder(server.local_addr(), roots(&ca))
        .require_cert_sha256([0; 32])
        .connect()
        .await
        .expect_err("another hash is refused");
    let text = err.to_string();
    assert!(text.contains("certificate SHA-256 mismatch"), "{text}");
    assert!(
        text.contains(&meridian::discovery::sha256_hex(&right)),
        "{text}"
    );
}
