//! The seeded chaos test: two regions of two servers, each behind the link emulator; a
//! schedule drawn from a seed kills and restarts servers, cuts regions off, makes links
//! lossy, shifts RTTs and deregisters servers with a grace period, while callers issue
//! idempotent (`read`, hedged) and non-idempotent (`write`) calls, some of which they
//! cancel. The servers record every execution. At the end:
//!
//! 1. every `write` ran at most once, exactly once when its caller got OK, and never when
//!    its caller was told it did not run;
//! 2. no `read` failed while a region had a server undisturbed for the whole call (and
//!    3 s before it, for detection: a server just back from a kill is not yet known to be
//!    back);
//! 3. `in_flight` is 0 on every server of the region client once calls are over;
//! 4. the dropped client leaves no connection open on any server (once connections it
//!    closed during a loss burst, whose close the server never heard, have been reset;
//!    a handshake it abandoned ends at the server's handshake timeout).
//!
//! Seeds: `CHAOS_SEEDS=1,2,3` (default: two fixed seeds); `CHAOS_RUNS=n` runs n seeds from
//! `CHAOS_FIRST` (default 1). A failure prints its seed and schedule; rerun with that seed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meridian::region::{Discovery, RegionClient, RegionMap, ServerEndpoint, StaticDiscovery};
use meridian::testing::{LinkEmulator, LinkSettings};
use meridian::{ClientTls, DevCa, Method, Server, ServerTls, Status};

/// splitmix64: the schedule's randomness, from the seed alone.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo))
    }
}

const REGIONS: [(&str, u64); 2] = [("near", 10), ("far", 40)];
const PER_REGION: usize = 2;
const CHAOS: Duration = Duration::from_secs(4);
const DEADLINE: Duration = Duration::from_secs(4);
/// How long before a call a region must have been undisturbed for invariant 2.
const DETECTION: Duration = Duration::from_secs(3);

/// Executions per call id, shared by every incarnation of every server.
#[derive(Default)]
struct Ledger(Mutex<HashMap<u64, u32>>);

impl Ledger {
    fn record(&self, id: u64) {
        *self.0.lock().unwrap().entry(id).or_default() += 1;
    }
    fn runs(&self, id: u64) -> u32 {
        self.0.lock().unwrap().get(&id).copied().unwrap_or(0)
    }
}

/// One event of the schedule.
#[derive(Debug, Clone)]
enum Event {
    /// A server crashes and comes back on the same port after `down`. Silent: its link
    /// black-holes first, so nobody hears it close (a dead host); else its connections
    /// close at once with calls in flight (a killed process whose host answers).
    Kill {
        site: usize,
        down: Duration,
        silent: bool,
    },
    /// Every link of a region drops everything for `down`.
    Outage { region: usize, down: Duration },
    /// Every link of a region loses 30% of packets for `down`.
    Loss { region: usize, down: Duration },
    /// A region's RTT changes for good.
    Rtt { region: usize, rtt: Duration },
    /// A server leaves the map, shuts down with a grace period, restarts and rejoins after
    /// `gone`.
    Deregister { site: usize, gone: Duration },
}

fn schedule(seed: u64) -> Vec<(Duration, Event)> {
    let mut rng = Rng(seed);
    let sites = (REGIONS.len() * PER_REGION) as u64;
    let mut at = Duration::from_millis(300);
    let mut events = Vec::new();
    while at < CHAOS - Duration::from_millis(500) {
        let region = rng.below(REGIONS.len() as u64) as usize;
        let site = rng.below(sites) as usize;
        let event = match rng.below(5) {
            0 => Event::Kill {
                site,
                down: rng.ms(200, 1200),
                silent: rng.below(2) == 0,
            },
            1 => Event::Outage {
                region,
                down: rng.ms(300, 1500),
            },
            2 => Event::Loss {
                region,
                down: rng.ms(300, 1500),
            },
            3 => Event::Rtt {
                region,
                rtt: rng.ms(5, 80),
            },
            _ => Event::Deregister {
                site,
                gone: rng.ms(300, 1200),
            },
        };
        events.push((at, event));
        at += rng.ms(150, 700);
    }
    events
}

struct Site {
    region: usize,
    id: String,
    addr: SocketAddr,
    link: LinkEmulator,
    server: Mutex<Option<Server>>,
}

struct World {
    ca: DevCa,
    sites: Vec<Site>,
    discovery: Arc<StaticDiscovery>,
    ledger: Arc<Ledger>,
    /// Per site: windows during which it was disturbed (killed, deregistered, cut off or
    /// lossy; end `None`: still).
    disturbed: Mutex<Vec<(usize, Instant, Option<Instant>)>>,
    /// What went wrong outside the invariants (a port that stayed bound).
    notes: Mutex<Vec<String>>,
}

async fn start_server(
    ca: &DevCa,
    region: &str,
    id: &str,
    addr: SocketAddr,
    ledger: &Arc<Ledger>,
) -> Result<Server, String> {
    let (read_ledger, write_ledger) = (ledger.clone(), ledger.clone());
    let mut last = None;
    // A restart takes the port back; the old socket may take a moment to go (a connection
    // of the old server still in its handshake holds it up to the handshake timeout).
    let started = Instant::now();
    for _ in 0..250 {
        let tls = ServerTls::new(ca.issue_server(&["localhost"]).unwrap());
        let (r, w) = (read_ledger.clone(), write_ledger.clone());
        let built = Server::builder()
            .region(region)
            .server_id(id)
            .no_local_registry()
            .unary(Method::new("read").idempotent(), move |id: u64, _| {
                let r = r.clone();
                async move {
                    r.record(id);
                    tokio::time::sleep(Duration::from_millis(id % 20)).await;
                    Ok(id)
                }
            })
            .unary("write", move |id: u64, _| {
                let w = w.clone();
                async move {
                    w.record(id);
                    tokio::time::sleep(Duration::from_millis(id % 20)).await;
                    Ok(id)
                }
            })
            .bind(addr, tls)
            .await;
        match built {
            Ok(s) => {
                if started.elapsed() > Duration::from_secs(1) {
                    eprintln!(
                        "  (note) {addr} was free again after {:?}",
                        started.elapsed()
                    );
                }
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!(
        "cannot bind {addr} again after {:?}: {last:?}",
        started.elapsed()
    ))
}

/// A server on a port below the kernel's ephemeral range: a restart takes it back, where
/// an ephemeral port freed by a kill may meanwhile go to any new socket (a client's, the
/// emulator's).
async fn start_fixed(
    ca: &DevCa,
    region: &str,
    id: &str,
    seed: u64,
    ledger: &Arc<Ledger>,
) -> Server {
    let mut rng = Rng(seed ^ 0x5eed);
    for _ in 0..200 {
        let port = 20_000 + rng.below(12_000) as u16;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        if std::net::UdpSocket::bind(addr).is_ok() {
            return start_server(ca, region, id, addr, ledger)
                .await
                .expect("a fresh port binds");
        }
    }
    panic!("no free port below the ephemeral range");
}

impl World {
    async fn start(seed: u64) -> World {
        let ca = DevCa::new().unwrap();
        let ledger = Arc::new(Ledger::default());
        let mut map = RegionMap::new();
        let mut sites = Vec::new();
        for (r, (region, rtt)) in REGIONS.iter().enumerate() {
            for i in 0..PER_REGION {
                let id = format!("{region}-{i}");
                let server = start_fixed(&ca, region, &id, seed, &ledger).await;
                let addr = server.local_addr();
                let link =
                    LinkEmulator::start(addr, LinkSettings::with_rtt(Duration::from_millis(*rtt)))
                        .await
                        .unwrap();
                link.reseed(seed ^ (sites.len() as u64 + 1));
                map.add_server(region, ServerEndpoint::new(link.addr(), "localhost"));
                sites.push(Site {
                    region: r,
                    id,
                    addr,
                    link,
                    server: Mutex::new(Some(server)),
                });
            }
        }
        World {
            ca,
            sites,
            discovery: StaticDiscovery::new(map),
            ledger,
            disturbed: Mutex::new(Vec::new()),
            notes: Mutex::new(Vec::new()),
        }
    }

    /// Opens a disturbance window on `site`; returns it for [`World::settle`].
    fn disturb(&self, site: usize) -> usize {
        let mut d = self.disturbed.lock().unwrap();
        d.push((site, Instant::now(), None));
        d.len() - 1
    }

    /// Opens a window on every site of `region`.
    fn disturb_region(&self, region: usize) -> Vec<usize> {
        (0..self.sites.len())
            .filter(|i| self.sites[*i].region == region)
            .map(|i| self.disturb(i))
            .collect()
    }

    fn settle(&self, window: usize) {
        self.disturbed.lock().unwrap()[window].2 = Some(Instant::now());
    }

    /// Whether some server of `region` was undisturbed from `from` to `to`.
    fn undisturbed(&self, region: usize, from: Instant, to: Instant) -> bool {
        let d = self.disturbed.lock().unwrap();
        (0..self.sites.len())
            .filter(|i| self.sites[*i].region == region)
            .any(|site| {
                d.iter()
                    .filter(|(s, _, _)| *s == site)
                    .all(|(_, start, end)| *start > to || end.is_some_and(|e| e < from))
            })
    }

    /// The sum of one figure of the running servers' stats.
    fn servers_sum(&self, figure: impl Fn(&meridian::server::ServerStats) -> usize) -> usize {
        self.sites
            .iter()
            .filter_map(|s| {
                s.server
                    .lock()
                    .unwrap()
                    .as_ref()
                    .map(|s| figure(&s.stats()))
            })
            .sum()
    }

    fn region_links(&self, region: usize) -> impl Iterator<Item = &Site> {
        self.sites.iter().filter(move |s| s.region == region)
    }

    /// Restarts a site on its port; if the old server's socket still holds the port, the
    /// site stays down and the run notes it (a finding about the server, not about
    /// routing; reported apart from the invariants).
    async fn restart(&self, site: usize) -> bool {
        let s = &self.sites[site];
        match start_server(&self.ca, REGIONS[s.region].0, &s.id, s.addr, &self.ledger).await {
            Ok(server) => {
                *s.server.lock().unwrap() = Some(server);
                true
            }
            Err(e) => {
                self.notes
                    .lock()
                    .unwrap()
                    .push(format!("{} stays down: {e}", s.id));
                false
            }
        }
    }

    async fn apply(self: Arc<Self>, event: Event) {
        match event {
            Event::Kill { site, down, silent } => {
                let s = &self.sites[site];
                let Some(server) = s.server.lock().unwrap().take() else {
                    return;
                };
                let w = self.disturb(site);
                s.link.set_outage(silent);
                drop(server);
                tokio::time::sleep(down).await;
                let back = self.restart(site).await;
                s.link.set_outage(false);
                if back {
                    self.settle(w);
                }
            }
            Event::Outage { region, down } => {
                let w = self.disturb_region(region);
                self.region_links(region)
                    .for_each(|s| s.link.set_outage(true));
                tokio::time::sleep(down).await;
                self.region_links(region)
                    .for_each(|s| s.link.set_outage(false));
                w.into_iter().for_each(|w| self.settle(w));
            }
            Event::Loss { region, down } => {
                let w = self.disturb_region(region);
                self.region_links(region).for_each(|s| s.link.set_loss(0.3));
                tokio::time::sleep(down).await;
                self.region_links(region).for_each(|s| s.link.set_loss(0.0));
                w.into_iter().for_each(|w| self.settle(w));
            }
            Event::Rtt { region, rtt } => {
                self.region_links(region).for_each(|s| s.link.set_rtt(rtt));
            }
            Event::Deregister { site, gone } => {
                let s = &self.sites[site];
                let Some(server) = s.server.lock().unwrap().take() else {
                    return;
                };
                let w = self.disturb(site);
                let mut map = self.discovery.watch().borrow().clone();
                map.remove_server(s.link.addr());
                self.discovery.update(map);
                // Clients follow the map on their next probe tick, then the server drains.
                tokio::time::sleep(Duration::from_millis(200)).await;
                server.shutdown(Duration::from_secs(2)).await;
                tokio::time::sleep(gone).await;
                if !self.restart(site).await {
                    return;
                }
                let mut map = self.discovery.watch().borrow().clone();
                map.add_server(
                    REGIONS[s.region].0,
                    ServerEndpoint::new(s.link.addr(), "localhost"),
                );
                self.discovery.update(map);
                self.settle(w);
            }
        }
    }
}

/// How a caller's call ended.
#[derive(Debug)]
enum Ended {
    Ok,
    Failed(Status),
    Cancelled,
}

#[derive(Debug)]
struct Call {
    id: u64,
    write: bool,
    started: Instant,
    ended_at: Instant,
    ended: Ended,
}

async fn run_seed(seed: u64) -> Result<String, String> {
    let events = schedule(seed);
    if std::env::var_os("CHAOS_VERBOSE").is_some() {
        eprintln!("seed {seed} schedule: {events:?}");
    }
    let world = Arc::new(World::start(seed).await);
    let client = RegionClient::builder(
        world.discovery.clone(),
        ClientTls::with_roots([world.ca.certificate().clone()]).unwrap(),
    )
    .hedge("read")
    // The default budget (10% of calls, plus 10 a second) is meant to refuse retries when
    // failures pile up, which is exactly what this schedule does on purpose; a larger one
    // keeps the test about routing. Calls the budget refused would say so.
    .retry_budget(0.5)
    .build()
    .unwrap();
    if !client.ready("write", Duration::from_secs(5)).await {
        return Err("the client never became ready".into());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let next_id = Arc::new(AtomicU64::new(1));
    let mut callers = tokio::task::JoinSet::new();
    for caller in 0..4u64 {
        let (client, stop, next_id) = (client.clone(), stop.clone(), next_id.clone());
        let mut rng = Rng(seed.wrapping_mul(31).wrapping_add(caller));
        callers.spawn(async move {
            let mut calls = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let id = next_id.fetch_add(1, Ordering::Relaxed);
                let write = rng.below(2) == 0;
                let cancel_after = (rng.below(10) == 0).then(|| rng.ms(1, 40));
                let started = Instant::now();
                let call = client
                    .call(if write { "write" } else { "read" })
                    .timeout(DEADLINE)
                    .unary::<_, u64>(&id);
                let ended = match cancel_after {
                    Some(after) => match tokio::time::timeout(after, call).await {
                        Ok(Ok(_)) => Ended::Ok,
                        Ok(Err(s)) => Ended::Failed(s),
                        Err(_) => Ended::Cancelled,
                    },
                    None => match call.await {
                        Ok(r) if *r.get_ref() == id => Ended::Ok,
                        Ok(r) => Ended::Failed(Status::internal(format!(
                            "answer {} to call {id}",
                            r.get_ref()
                        ))),
                        Err(s) => Ended::Failed(s),
                    },
                };
                calls.push(Call {
                    id,
                    write,
                    started,
                    ended_at: Instant::now(),
                    ended,
                });
            }
            calls
        });
    }
    let t0 = Instant::now();
    let mut chaos = tokio::task::JoinSet::new();
    for (at, event) in events.clone() {
        let world = world.clone();
        chaos.spawn(async move {
            tokio::time::sleep_until((t0 + at).into()).await;
            world.apply(event).await;
        });
    }
    tokio::time::sleep_until((t0 + CHAOS).into()).await;
    stop.store(true, Ordering::Relaxed);
    let mut calls = Vec::new();
    while let Some(c) = callers.join_next().await {
        calls.extend(c.unwrap());
    }
    while chaos.join_next().await.is_some() {}

    let mut violations = Vec::new();
    let (mut ok, mut failed, mut cancelled) = (0, 0, 0);
    for c in &calls {
        let runs = world.ledger.runs(c.id);
        match &c.ended {
            Ended::Ok => ok += 1,
            Ended::Failed(_) => failed += 1,
            Ended::Cancelled => cancelled += 1,
        }
        if c.write {
            match &c.ended {
                Ended::Ok if runs != 1 => {
                    violations.push(format!("write {} OK but ran {runs} times", c.id))
                }
                Ended::Failed(s) if s.is_known_not_run() && runs != 0 => violations.push(format!(
                    "write {} said not run ({s}) but ran {runs} times",
                    c.id
                )),
                _ if runs > 1 => violations.push(format!("write {} ran {runs} times", c.id)),
                _ => {}
            }
        } else if let Ended::Failed(s) = &c.ended {
            let from = c.started.checked_sub(DETECTION).unwrap_or(t0);
            let clean: Vec<&str> = (0..REGIONS.len())
                .filter(|r| world.undisturbed(*r, from, c.ended_at))
                .map(|r| REGIONS[r].0)
                .collect();
            if !clean.is_empty() {
                violations.push(format!(
                    "read {} failed after {:?} ({s}) while {clean:?} stayed undisturbed",
                    c.id,
                    c.ended_at - c.started
                ));
            }
        }
    }
    // Quiescence: nothing in flight once the calls are over.
    let quiet = Instant::now();
    while client.stats().servers.iter().any(|s| s.in_flight > 0) {
        if quiet.elapsed() > Duration::from_secs(3) {
            violations.push(format!("in_flight stuck: {:?}", client.stats().servers));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A dropped client leaves no connection open.
    let open = || world.servers_sum(|s| s.connections);
    // A connection the client closed during a loss burst may not have heard the close
    // (QUIC does not retransmit it); the server's next keep-alive (5 s) then meets the
    // client endpoint's stateless reset. Only the client's own connections are at stake.
    let settle = Instant::now();
    let mine = || {
        client
            .stats()
            .servers
            .iter()
            .filter(|s| s.connected)
            .count()
    };
    while open() > mine() && settle.elapsed() < Duration::from_secs(8) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if open() > mine() {
        violations.push(format!(
            "servers hold {} connection(s), the client has {}",
            open(),
            mine()
        ));
    }
    drop(client);
    let gone = Instant::now();
    let handshaking = || world.servers_sum(|s| s.handshakes);
    // Established connections close at once. One whose handshake the client abandoned
    // (a redial under way when it was dropped) may not hear the close, and then ends at
    // the server's handshake timeout (10 s).
    while open() > 0 {
        let late = gone.elapsed() > Duration::from_secs(3);
        if late && open() > handshaking() {
            violations.push(format!(
                "{} connection(s) open after the client was dropped ({} in handshake)",
                open(),
                handshaking()
            ));
            break;
        }
        if gone.elapsed() > Duration::from_secs(12) {
            violations.push(format!(
                "{} handshake(s) still open 12 s after the client was dropped",
                handshaking()
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if gone.elapsed() > Duration::from_secs(3) {
        world.notes.lock().unwrap().push(format!(
            "a handshake the dropped client abandoned ended after {:?}",
            gone.elapsed()
        ));
    }
    let notes = world.notes.lock().unwrap().clone();
    let summary = format!(
        "seed {seed}: {} events, {} calls ({ok} ok, {failed} failed, {cancelled} cancelled){}",
        events.len(),
        calls.len(),
        if notes.is_empty() {
            String::new()
        } else {
            format!("; notes: {}", notes.join("; "))
        }
    );
    if violations.is_empty() {
        Ok(summary)
    } else {
        Err(format!(
            "{summary}\nschedule: {events:#?}\nviolations:\n  {}",
            violations.join("\n  ")
        ))
    }
}

fn seeds() -> Vec<u64> {
    if let Ok(list) = std::env::var("CHAOS_SEEDS") {
        return list
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .collect();
    }
    if let Ok(n) = std::env::var("CHAOS_RUNS") {
        let n: u64 = n.parse().unwrap_or(1);
        let first: u64 = std::env::var("CHAOS_FIRST")
            .ok()
            .and_then(|f| f.parse().ok())
            .unwrap_or(1);
        return (first..first + n).collect();
    }
    vec![7, 1009]
}

#[test]
fn routing_keeps_its_promises_under_seeded_chaos() {
    let mut failures = Vec::new();
    for seed in seeds() {
        // A runtime per seed, on a thread of its own: nothing of one run leaks into the
        // next, and a runtime whose threads are all held (its own timers cannot fire) is
        // caught by this thread's clock.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let run = rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(60), run_seed(seed))
                    .await
                    .unwrap_or_else(|_| {
                        Err(format!(
                            "seed {seed} hung (a call, a shutdown or a restart did not end); \
                             schedule: {:#?}",
                            schedule(seed)
                        ))
                    })
            });
            rt.shutdown_timeout(Duration::from_secs(1));
            let _ = tx.send(run);
        });
        let run = rx
            .recv_timeout(Duration::from_secs(90))
            .unwrap_or_else(|_| {
                panic!(
                    "seed {seed}: the runtime stopped making progress (its threads are held); \
                 schedule: {:#?}",
                    schedule(seed)
                )
            });
        match run {
            Ok(summary) => eprintln!("{summary}"),
            Err(report) => {
                eprintln!("{report}");
                failures.push(seed);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "invariants broken for seeds {failures:?} (rerun with CHAOS_SEEDS)"
    );
}
