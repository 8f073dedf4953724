//! Discovery in etcd, against a real etcd started by each test (`EtcdProcess`: the `etcd`
//! binary from `MERIDIAN_ETCD_BIN` or `PATH`, free loopback ports, a temporary data
//! directory). Servers sit behind link emulators so regions have different RTTs.
//!
//! With `CI=true` a missing etcd fails the tests; elsewhere they are skipped with a note
//! (`bash scripts/etcd.sh install` installs it).
//!
//! Run with `cargo test -p meridian --features etcd --test etcd -- --nocapture` to see the
//! measured times.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meridian::region::{
    EtcdConfig, EtcdDiscovery, EtcdRegistration, RegionClient, RegionMap, ServerRecord,
};
use meridian::testing::etcd::EtcdProcess;
use meridian::testing::{LinkEmulator, LinkSettings};
use meridian::{ClientTls, DevCa, Method, Server, ServerTls};

const TTL: Duration = Duration::from_secs(2);

fn config(etcd: &EtcdProcess) -> EtcdConfig {
    EtcdConfig::new([etcd.endpoint()])
        .lease_ttl(TTL)
        .connect_timeout(Duration::from_secs(2))
}

/// One server behind its own emulated link, registered in etcd at the link's address.
struct Site {
    server: Option<Server>,
    link: LinkEmulator,
    registration: Option<EtcdRegistration>,
}

impl Site {
    async fn start(ca: &DevCa, cfg: &EtcdConfig, region: &str, id: &str, rtt_ms: u64) -> Site {
        let id_owned = id.to_string();
        let identity = ca.issue_server(&["localhost"]).unwrap();
        let cert = identity.certificate().clone();
        let server = Server::builder()
            .region(region)
            .server_id(id)
            .no_local_registry()
            .unary(Method::new("whoami").idempotent(), move |(): (), _| {
                let id = id_owned.clone();
                async move { Ok(id) }
            })
            .bind("127.0.0.1:0".parse().unwrap(), ServerTls::new(identity))
            .await
            .unwrap();
        let link = LinkEmulator::start(
            server.local_addr(),
            LinkSettings::with_rtt(Duration::from_millis(rtt_ms)),
        )
        .await
        .unwrap();
        let record = ServerRecord::for_server(&server, link.addr(), "localhost")
            .server_id(id)
            .certificate(&cert);
        let registration = EtcdRegistration::register(cfg, record).await.unwrap();
        Site {
            server: Some(server),
            link,
            registration: Some(registration),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.link.addr()
    }

    /// A crash: no more keep-alives (the lease is not revoked), no more packets.
    fn kill(&mut self) {
        if let Some(r) = self.registration.take() {
            r.abandon();
        }
        self.link.set_outage(true);
        self.server.take();
    }
}

fn tls(ca: &DevCa) -> ClientTls {
    ClientTls::with_roots([ca.certificate().clone()]).unwrap()
}

fn addrs(map: &RegionMap) -> BTreeSet<SocketAddr> {
    map.regions
        .iter()
        .flat_map(|r| r.servers.iter().filter_map(|s| s.addr.socket_addr()))
        .collect()
}

/// Polls `f` every 20 ms until it holds, up to `limit`; returns how long it took.
async fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

async fn whoami(client: &RegionClient) -> Result<String, meridian::Status> {
    client
        .call("whoami")
        .timeout(Duration::from_secs(5))
        .unary(&())
        .await
        .map(|r| r.into_inner())
}

/// Callers that keep calling `whoami` until stopped, noting failures and when each server
/// last answered.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    last_answer: Arc<Mutex<HashMap<String, Instant>>>,
    first_answer: Arc<Mutex<HashMap<String, Instant>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(client: &RegionClient, callers: usize) -> Load {
        let load = Load {
            stop: Arc::default(),
            ok: Arc::default(),
            failed: Arc::default(),
            last_answer: Arc::default(),
            first_answer: Arc::default(),
            tasks: Vec::new(),
        };
        let mut tasks = Vec::new();
        for _ in 0..callers {
            let (client, stop, ok, failed) = (
                client.clone(),
                load.stop.clone(),
                load.ok.clone(),
                load.failed.clone(),
            );
            let (last, first) = (load.last_answer.clone(), load.first_answer.clone());
            tasks.push(tokio::spawn(async move {
                // Bounded: at most 60 s of calls whatever happens.
                let end = Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                    match whoami(&client).await {
                        Ok(id) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            let now = Instant::now();
                            last.lock().unwrap().insert(id.clone(), now);
                            first.lock().unwrap().entry(id).or_insert(now);
                        }
                        Err(e) => {
                            eprintln!("call failed: {e}");
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }));
        }
        Load { tasks, ..load }
    }

    fn first(&self, id: &str) -> Option<Instant> {
        self.first_answer.lock().unwrap().get(id).copied()
    }

    fn last(&self, id: &str) -> Option<Instant> {
        self.last_answer.lock().unwrap().get(id).copied()
    }

    async fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_server_is_found_and_called() {
    let Some(etcd) = EtcdProcess::start_or_skip() else {
        return;
    };
    let cfg = config(&etcd);
    let ca = DevCa::new().unwrap();
    let site = Site::start(&ca, &cfg, "eu", "eu-1", 2).await;

    let discovery = EtcdDiscovery::connect(cfg.clone()).await.unwrap();
    assert!(discovery.is_connected());
    let records = discovery.records();
    assert_eq!(records.len(), 1, "{records:?}");
    let r = &records[0];
    assert_eq!(
        (r.region.as_str(), r.server_id.as_str()),
        ("eu", "eu-1"),
        "{r:?}"
    );
    assert_eq!(r.addr, site.addr());
    assert_eq!(r.cert_sha256.as_ref().map(String::len), Some(64));
    assert!(
        r.methods
            .iter()
            .any(|m| m.name == "whoami" && m.idempotent && m.kind == "unary"),
        "{r:?}"
    );
    assert_eq!(
        site.registration.as_ref().unwrap().key(),
        "/meridian/eu/eu-1"
    );

    let client = RegionClient::builder(discovery.clone(), tls(&ca))
        .build()
        .unwrap();
    assert_eq!(whoami(&client).await.unwrap(), "eu-1");

    // A clean stop revokes the lease: the server is gone at once, not after the TTL.
    let start = Instant::now();
    let Site {
        registration,
        server,
        ..
    } = site;
    registration.unwrap().deregister().await;
    let gone = wait_for(Duration::from_secs(5), || discovery.records().is_empty()).await;
    println!("clean stop: gone from membership after {gone:?}");
    assert!(
        start.elapsed() < Duration::from_millis(900),
        "{:?}",
        start.elapsed()
    );
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_disappears_after_its_lease_expires() {
    let Some(etcd) = EtcdProcess::start_or_skip() else {
        return;
    };
    let cfg = config(&etcd);
    let ca = DevCa::new().unwrap();
    let a = Site::start(&ca, &cfg, "r", "a", 2).await;
    let mut b = Site::start(&ca, &cfg, "r", "b", 2).await;
    let discovery = EtcdDiscovery::connect(cfg.clone()).await.unwrap();
    let client = RegionClient::builder(discovery.clone(), tls(&ca))
        .build()
        .unwrap();
    assert!(client.ready("whoami", Duration::from_secs(5)).await);
    let load = Load::start(&client, 4);
    let both = wait_for(Duration::from_secs(5), || {
        load.last("a").is_some() && load.last("b").is_some()
    })
    .await;
    assert!(both.is_some(), "both servers should take calls");

    let b_addr = b.addr();
    let calls_to_b = |c: &RegionClient| {
        c.stats()
            .servers
            .iter()
            .find(|s| s.addr == b_addr)
            .map(|s| s.calls)
    };
    let killed = Instant::now();
    b.kill();
    // Not revoked: it is still listed right after the crash.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(addrs(&discovery.snapshot()).contains(&b_addr));

    // Follow the client's attempts to b until the membership drops it.
    let mut last_sent = killed;
    let mut seen = calls_to_b(&client);
    let removed = wait_for(TTL + Duration::from_secs(3), || {
        let now = calls_to_b(&client);
        if now != seen && now.is_some() {
            seen = now;
            last_sent = Instant::now();
        }
        !addrs(&discovery.snapshot()).contains(&b_addr)
    })
    .await
    .map(|_| killed.elapsed());
    let removed = removed.expect("the dead server never left the membership");
    // Gone from the client too, at its next tick.
    let left_client = wait_for(Duration::from_secs(2), || calls_to_b(&client).is_none())
        .await
        .map(|_| killed.elapsed());
    // Calls keep succeeding on a alone.
    let before = load.ok.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(load.ok.load(Ordering::Relaxed) > before);
    let last_answer_b = load.last("b").map(|t| t.saturating_duration_since(killed));
    let (ok, failed) = load.finish().await;
    println!(
        "dead server (lease TTL {TTL:?}): last attempt sent to it {:?} after the crash, \
         last answer {last_answer_b:?}, removed from etcd membership after {removed:?}, \
         from the client after {left_client:?}; calls ok {ok}, failed {failed}",
        last_sent.duration_since(killed)
    );
    assert!(
        removed >= Duration::from_millis(500),
        "removed too early: {removed:?}"
    );
    assert!(removed <= TTL + Duration::from_millis(1500), "{removed:?}");
    assert!(left_client.is_some());
    assert!(
        last_sent.duration_since(killed) <= TTL + Duration::from_millis(1500),
        "attempts went on too long"
    );
    assert_eq!(failed, 0, "idempotent calls must not fail");
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_server_in_a_nearer_region_is_picked_up() {
    let Some(etcd) = EtcdProcess::start_or_skip() else {
        return;
    };
    let cfg = config(&etcd);
    let ca = DevCa::new().unwrap();
    let _mid = Site::start(&ca, &cfg, "mid", "m1", 40).await;
    let discovery = EtcdDiscovery::connect(cfg.clone()).await.unwrap();
    let client = RegionClient::builder(discovery.clone(), tls(&ca))
        .build()
        .unwrap();
    assert_eq!(whoami(&client).await.unwrap(), "m1");
    let load = Load::start(&client, 2);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let registering = Instant::now();
    let near = Site::start(&ca, &cfg, "near", "n1", 5).await;
    let registered = registering.elapsed();
    let in_map = wait_for(Duration::from_secs(5), || {
        addrs(&discovery.snapshot()).contains(&near.addr())
    })
    .await
    .map(|_| registering.elapsed());
    let first = wait_for(Duration::from_secs(8), || load.first("n1").is_some()).await;
    assert!(
        first.is_some(),
        "the nearer server never got traffic: {:?}",
        client.stats()
    );
    let first = load.first("n1").unwrap().duration_since(registering);
    // Then it takes all the traffic (after the selector's 1 s switch delay and 2 s ramp,
    // see region::select): the far region answers nothing more.
    let settled = wait_for(Duration::from_secs(6), || {
        load.last("m1")
            .is_none_or(|t| t.elapsed() > Duration::from_millis(300))
    })
    .await
    .map(|_| registering.elapsed() - Duration::from_millis(300));
    let (ok, failed) = load.finish().await;
    println!(
        "new server: registered in {registered:?}, in the client's membership after \
         {in_map:?}, first call answered {first:?} after registration began, all calls \
         go to it after {settled:?}; calls ok {ok}, failed {failed}"
    );
    assert!(first < Duration::from_secs(3), "{first:?}");
    assert!(
        settled.is_some(),
        "traffic did not move to the nearer region"
    );
    assert_eq!(client.stats().current_region.as_deref(), Some("near"));
    assert_eq!(failed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_restarting_while_calls_flow_loses_nothing() {
    let Some(mut etcd) = EtcdProcess::start_or_skip() else {
        return;
    };
    let cfg = config(&etcd);
    let ca = DevCa::new().unwrap();
    let a = Site::start(&ca, &cfg, "r", "a", 2).await;
    let discovery = EtcdDiscovery::connect(cfg.clone()).await.unwrap();
    let client = RegionClient::builder(discovery.clone(), tls(&ca))
        .build()
        .unwrap();
    assert!(client.ready("whoami", Duration::from_secs(5)).await);
    let load = Load::start(&client, 3);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Down for longer than the lease TTL.
    let mut etcd = tokio::task::spawn_blocking(move || {
        etcd.stop();
        etcd
    })
    .await
    .unwrap();
    let noticed = wait_for(Duration::from_secs(5), || !discovery.is_connected()).await;
    assert!(noticed.is_some(), "the watch never noticed etcd was gone");
    tokio::time::sleep(TTL + Duration::from_millis(500)).await;
    // The last known membership stays in force, and calls go on.
    assert!(addrs(&discovery.snapshot()).contains(&a.addr()));
    let during = load.ok.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(load.ok.load(Ordering::Relaxed) > during);

    let etcd = tokio::task::spawn_blocking(move || {
        etcd.restart().unwrap();
        etcd
    })
    .await
    .unwrap();
    let back = wait_for(Duration::from_secs(10), || discovery.is_connected()).await;
    println!("etcd restarted: the watch resumed after {back:?}");
    assert!(back.is_some(), "the watch never resumed");

    // A server registered after the restart is seen and called.
    let added = Instant::now();
    let b = Site::start(&ca, &cfg, "r", "b", 2).await;
    let seen = wait_for(Duration::from_secs(5), || load.first("b").is_some()).await;
    assert!(
        seen.is_some(),
        "the server added after the restart got no calls"
    );
    println!(
        "server added after the restart answered its first call after {:?}",
        added.elapsed()
    );
    // The first server's lease survived the outage (renewed by its registration).
    tokio::time::sleep(TTL + Duration::from_millis(500)).await;
    let members = addrs(&discovery.snapshot());
    assert!(
        members.contains(&a.addr()) && members.contains(&b.addr()),
        "{members:?}"
    );
    let (ok, failed) = load.finish().await;
    println!("etcd restart: calls ok {ok}, failed {failed}");
    assert_eq!(failed, 0, "no call may fail while etcd restarts");
    drop(etcd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_see_the_same_membership() {
    let Some(etcd) = EtcdProcess::start_or_skip() else {
        return;
    };
    let cfg = config(&etcd);
    let ca = DevCa::new().unwrap();
    let mut sites = vec![
        Site::start(&ca, &cfg, "east", "e1", 2).await,
        Site::start(&ca, &cfg, "east", "e2", 2).await,
        Site::start(&ca, &cfg, "west", "w1", 2).await,
    ];
    let one = EtcdDiscovery::connect(cfg.clone()).await.unwrap();
    let two = EtcdDiscovery::connect(cfg.clone()).await.unwrap();
    let c1 = RegionClient::builder(one.clone(), tls(&ca))
        .build()
        .unwrap();
    let c2 = RegionClient::builder(two.clone(), tls(&ca))
        .build()
        .unwrap();
    let expect = |sites: &[Site]| sites.iter().map(Site::addr).collect::<BTreeSet<_>>();
    let same = |sites: &[Site]| {
        let want = expect(sites);
        let client_view = |c: &RegionClient| {
            c.stats()
                .servers
                .iter()
                .filter_map(|s| s.addr.socket_addr())
                .collect::<BTreeSet<_>>()
        };
        addrs(&one.snapshot()) == want
            && addrs(&two.snapshot()) == want
            && one.snapshot() == two.snapshot()
            && client_view(&c1) == want
            && client_view(&c2) == want
    };
    assert!(wait_for(Duration::from_secs(5), || same(&sites))
        .await
        .is_some());

    // A malformed value under the prefix is skipped by both, not fatal.
    let mut raw = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap();
    raw.put("/meridian/east/garbage", "{not json", None)
        .await
        .unwrap();
    raw.put("/meridian/west/w9", r#"{"region":"west"}"#, None)
        .await
        .unwrap();

    // Membership changes: one added, one stopped cleanly.
    sites.push(Site::start(&ca, &cfg, "west", "w2", 2).await);
    let gone = sites.remove(0);
    gone.registration.unwrap().deregister().await;
    let t = wait_for(Duration::from_secs(5), || same(&sites)).await;
    println!("two clients agree on the new membership after {t:?}");
    assert!(t.is_some(), "{:?} vs {:?}", one.snapshot(), two.snapshot());
    assert_eq!(one.records(), two.records());
    assert_eq!(one.records().len(), 3);
    // Both still route calls.
    assert!(whoami(&c1).await.is_ok());
    assert!(whoami(&c2).await.is_ok());
}

/// A proxy whose upstream servers come from etcd: it forwards to a server that registered
/// after the proxy started, and stops using one that left.
#[tokio::test]
async fn a_proxy_follows_etcd_membership() {
    let Some(etcd) = EtcdProcess::start_or_skip() else {
        return;
    };
    let cfg = config(&etcd);
    let ca = DevCa::new().unwrap();
    let mut first = Site::start(&ca, &cfg, "eu", "eu-1", 2).await;
    let upstream =
        RegionClient::builder(EtcdDiscovery::connect(cfg.clone()).await.unwrap(), tls(&ca))
            .build()
            .unwrap();
    let proxy = meridian::proxy::Proxy::builder(upstream)
        .bind(
            "127.0.0.1:0".parse().unwrap(),
            ServerTls::new(ca.issue_server(&["proxy.local"]).unwrap()),
        )
        .await
        .unwrap();
    let ch = meridian::Channel::builder(proxy.local_addr(), tls(&ca))
        .server_name("proxy.local")
        .connect()
        .await
        .unwrap();
    let call = || async {
        ch.call("whoami")
            .timeout(Duration::from_secs(5))
            .unary::<_, String>(&())
            .await
            .map(|r| r.into_inner())
    };
    assert_eq!(call().await.unwrap(), "eu-1");
    // A second server registers while the proxy runs; the first one crashes.
    let _second = Site::start(&ca, &cfg, "eu", "eu-2", 2).await;
    let joined = Instant::now();
    first.kill();
    let mut errors = 0;
    let mut moved = None;
    while joined.elapsed() < Duration::from_secs(10) {
        match call().await {
            Ok(id) if id == "eu-2" => {
                moved.get_or_insert(joined.elapsed());
                if joined.elapsed() > moved.unwrap() + Duration::from_millis(500) {
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("{e}");
                errors += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let moved = moved.expect("the proxy never used the server that joined in etcd");
    println!("proxy: new server from etcd answered {moved:?} after it registered");
    assert_eq!(errors, 0, "idempotent calls through the proxy failed");
    assert_eq!(call().await.unwrap(), "eu-2");
    drop(etcd);
}

/// The `cert_sha256` a server publishes with its record pins it for pinning clients: a
/// server that registers with the hash of its own certificate is called; one whose record
/// carries another certificate's hash (a stale record, or someone else's) is refused
/// while the first keeps serving; and a client that does not pin calls both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_cert_sha256_pins_the_server() {
    let Some(etcd) = EtcdProcess::start_or_skip() else {
        return;
    };
    let cfg = config(&etcd);
    let ca = DevCa::new().unwrap();
    let good = Site::start(&ca, &cfg, "eu", "eu-good", 1).await;
    // A server whose record names another certificate than the one it presents.
    let identity = ca.issue_server(&["localhost"]).unwrap();
    let server = Server::builder()
        .region("eu")
        .server_id("eu-stale")
        .no_local_registry()
        .unary(Method::new("whoami").idempotent(), |(): (), _| async {
            Ok("eu-stale".to_string())
        })
        .bind("127.0.0.1:0".parse().unwrap(), ServerTls::new(identity))
        .await
        .unwrap();
    let other = ca.issue_server(&["localhost"]).unwrap();
    let record = ServerRecord::for_server(&server, server.local_addr(), "localhost")
        .server_id("eu-stale")
        .certificate(other.certificate());
    let _registration = EtcdRegistration::register(&cfg, record).await.unwrap();

    let discovery = EtcdDiscovery::connect(cfg.clone()).await.unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || addrs(&discovery.snapshot())
            .len()
            == 2)
        .await
        .is_some()
    );
    let open = RegionClient::builder(discovery.clone(), tls(&ca))
        .build()
        .unwrap();
    let mut seen = BTreeSet::new();
    for _ in 0..200 {
        seen.insert(whoami(&open).await.unwrap());
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen.len(), 2, "unpinned, both serve: {seen:?}");

    let pinned = RegionClient::builder(discovery, tls(&ca))
        .pin_cert_sha256()
        .build()
        .unwrap();
    for _ in 0..20 {
        assert_eq!(whoami(&pinned).await.unwrap(), "eu-good");
    }
    let why = pinned
        .last_connect_error()
        .expect("the stale server was refused");
    assert!(
        why.contains(&server.local_addr().to_string()) && why.contains("SHA-256 mismatch"),
        "{why}"
    );
    drop(good);
}
