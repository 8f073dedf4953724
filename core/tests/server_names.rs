//! Which name a server's certificate is checked against, and addresses written as host
//! names, over real QUIC on loopback: an endpoint given without a name is checked against
//! the host dialled (an IP literal against the certificate's IP address entries), an
//! explicit name still wins, and a region file may name servers by a DNS host that is
//! resolved when they are dialled.

use std::net::SocketAddr;
use std::time::Duration;

use meridian::region::{RegionClient, RegionMap, ServerAddr, ServerEndpoint, StaticDiscovery};
use meridian::{Channel, ClientTls, DevCa, Identity, Method, Server, ServerTls};

const WAIT: Duration = Duration::from_secs(5);

async fn serve(id: &str, at: SocketAddr, identity: Identity) -> Server {
    let id = id.to_string();
    Server::builder()
        .region("eu")
        .server_id(id.clone())
        .no_local_registry()
        .unary(Method::new("whoami").idempotent(), move |(): (), _| {
            let id = id.clone();
            async move { Ok::<_, meridian::Status>(id) }
        })
        .bind(at, ServerTls::new(identity))
        .await
        .expect("bind")
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

fn client(map: RegionMap, ca: &DevCa) -> RegionClient {
    RegionClient::builder(
        StaticDiscovery::new(map),
        ClientTls::with_roots([ca.certificate().clone()]).expect("roots"),
    )
    .build()
    .expect("client")
}

async fn whoami(client: &RegionClient) -> Result<String, meridian::Status> {
    client
        .call("whoami")
        .timeout(WAIT)
        .unary::<(), String>(&())
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn an_endpoint_without_a_name_is_checked_against_the_ip_dialled() {
    let ca = DevCa::new().expect("ca");
    // Certificates with an IP address entry only, and with a DNS name only.
    let by_ip = serve(
        "by-ip",
        loopback(),
        ca.issue_server(&["127.0.0.1"]).unwrap(),
    )
    .await;
    let by_name = serve(
        "by-name",
        loopback(),
        ca.issue_server(&["api.test"]).unwrap(),
    )
    .await;
    let tls = ClientTls::with_roots([ca.certificate().clone()]).unwrap();

    // A channel's default name is the IP it dials.
    let ch = Channel::builder(by_ip.local_addr(), tls.clone())
        .connect()
        .await
        .expect("an IP literal is checked against the IP address entry");
    let id: String = ch.unary("whoami", &()).await.expect("call");
    assert_eq!(id, "by-ip");

    // A region endpoint without a name: the same.
    let ep = ServerEndpoint::at(by_ip.local_addr());
    assert_eq!(ep.server_name, "127.0.0.1");
    let mut map = RegionMap::new();
    map.add_server("eu", ep);
    let c = client(map, &ca);
    assert_eq!(whoami(&c).await.expect("verified by IP"), "by-ip");

    // A certificate that names only a DNS name does not pass for the IP dialled...
    let mut map = RegionMap::new();
    map.add_server("eu", ServerEndpoint::at(by_name.local_addr()));
    let c = client(map, &ca);
    let err = whoami(&c).await.expect_err("not valid for the IP");
    assert_eq!(err.code(), meridian::Code::Unavailable, "{err}");
    let why = c.last_connect_error().expect("a dial failed");
    assert!(
        why.contains("not valid for name") && why.contains("127.0.0.1"),
        "{why}"
    );
    // ... and an explicit name still wins.
    let mut map = RegionMap::new();
    map.add_server("eu", ServerEndpoint::new(by_name.local_addr(), "api.test"));
    let c = client(map, &ca);
    assert_eq!(whoami(&c).await.expect("explicit name"), "by-name");
}

#[tokio::test]
async fn a_region_file_names_a_server_by_its_host_and_resolves_it_when_dialled() {
    let ca = DevCa::new().expect("ca");
    // Listen where `localhost` resolves first, as a client dialling it will.
    let at = ServerAddr::parse("localhost:0")
        .unwrap()
        .resolve()
        .await
        .expect("localhost resolves");
    let server = serve("local", at, ca.issue_server(&["localhost"]).unwrap()).await;
    let port = server.local_addr().port();
    let text = format!(
        "[[region]]\nname = \"eu\"\nservers = [{{ addr = \"localhost:{port}\" }}, \
         {{ addr = \"no-such-host.invalid:{port}\" }}]\n"
    );
    let map = RegionMap::from_toml_str(&text).expect("a host name is a valid address");
    assert_eq!(map.regions[0].servers[0].server_name, "localhost");
    let c = client(map, &ca);
    for _ in 0..5 {
        assert_eq!(whoami(&c).await.expect("call by host name"), "local");
    }
    let stats = c.stats();
    let row = |host: &str| {
        stats
            .servers
            .iter()
            .find(|s| s.addr.host() == host)
            .cloned()
            .expect("row")
    };
    // Kept as written, not as resolved.
    assert_eq!(
        row("localhost").addr.to_string(),
        format!("localhost:{port}")
    );
    assert!(row("localhost").connected);
    // A host that does not resolve is a clear reason, and the other server serves.
    assert!(!row("no-such-host.invalid").connected);
    let why = c.last_connect_error().expect("the bad host failed");
    assert!(
        why.contains("cannot resolve") && why.contains("no-such-host.invalid"),
        "{why}"
    );
}
