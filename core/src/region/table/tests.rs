//! The routing table in simulated time: every instant is made up, links are fakes.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::*;
use std::net::SocketAddr;

use crate::discovery::{RegionMap, ServerAddr, ServerEndpoint};

/// A fake link: connected or not, a catalog (`None`: no HELLO yet), datagrams heard.
#[derive(Clone, Debug)]
struct Fake {
    methods: Option<HashSet<String>>,
    connected: bool,
    heard: u64,
}

impl Link for Fake {
    fn serves(&self, method: &str) -> Option<bool> {
        Some(self.methods.as_ref()?.contains(method))
    }
    fn is_connected(&self) -> bool {
        self.connected
    }
    fn heard(&self) -> (u64, Option<(Duration, Duration)>) {
        let rtt = Duration::from_millis(10);
        (self.heard, Some((rtt, rtt)))
    }
}

fn fake(methods: &[&str]) -> Fake {
    Fake {
        methods: Some(methods.iter().map(|m| m.to_string()).collect()),
        connected: true,
        heard: 1,
    }
}

fn addr(n: u16) -> ServerAddr {
    ServerAddr::Ip(SocketAddr::from(([127, 0, 0, 1], n)))
}

fn map_of(servers: &[(&str, u16)]) -> RegionMap {
    let mut map = RegionMap::new();
    for (region, port) in servers {
        map.add_server(region, ServerEndpoint::new(addr(*port), "localhost"));
    }
    map
}

/// A table with `servers` in the map, each connected with a link serving `methods`.
fn table(servers: &[(&str, u16)], methods: &[&str], t0: Instant) -> RoutingTable<Fake> {
    let mut t = RoutingTable::new(
        RegionSelector::new(),
        RetryBudget::new(0.2),
        Duration::from_secs(1),
    );
    t.sync_membership(&map_of(servers), false, t0);
    for (_, port) in servers {
        t.connected(addr(*port), Some(fake(methods)), t0);
    }
    t.tick(t0);
    t
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn every_claim_is_given_back_once_whichever_way_the_attempt_ends() {
    let t0 = Instant::now();
    let mut t = table(&[("r", 1), ("r", 2)], &["m"], t0);
    let mut claims = Vec::new();
    for _ in 0..10 {
        claims.push(t.pick("m", None, &[], false, t0).unwrap().claim);
    }
    let in_flight =
        |t: &RoutingTable<Fake>| -> u32 { t.servers.values().map(|s| s.load.in_flight).sum() };
    assert_eq!(in_flight(&t), 10);
    // Finished, released as a hedge loser (with a sample), released on drop (none).
    let (a, rest) = claims.split_at(4);
    for c in a {
        t.finish(c.clone(), ms(5), None, Outcome::Answered, t0 + ms(5));
    }
    for c in &rest[..3] {
        t.release(c.clone(), Some(ms(9)), t0 + ms(9));
    }
    for c in &rest[3..] {
        t.release(c.clone(), None, t0 + ms(9));
    }
    assert_eq!(in_flight(&t), 0);
}

#[test]
fn a_claim_from_before_a_server_left_and_came_back_is_not_given_to_the_new_row() {
    let t0 = Instant::now();
    let mut t = table(&[("r", 1)], &["m"], t0);
    let old = t.pick("m", None, &[], false, t0).unwrap().claim;
    // The server leaves; its claim holds the row through the drain, until the limit.
    t.sync_membership(&RegionMap::new(), false, t0 + ms(1));
    assert!(t.servers.contains_key(&addr(1)));
    t.sync_membership(&RegionMap::new(), false, t0 + DRAIN_LIMIT + ms(2));
    assert!(t.servers.is_empty(), "the drain is capped");
    // Back in the map, a fresh row with a call of its own.
    t.sync_membership(&map_of(&[("r", 1)]), false, t0 + DRAIN_LIMIT + ms(3));
    t.connected(addr(1), Some(fake(&["m"])), t0 + DRAIN_LIMIT + ms(3));
    let new = t
        .pick("m", None, &[], false, t0 + DRAIN_LIMIT + ms(4))
        .unwrap();
    t.release(old, None, t0 + DRAIN_LIMIT + ms(5));
    assert_eq!(
        t.servers[&addr(1)].load.in_flight,
        1,
        "the old claim took the new one's"
    );
    t.release(new.claim, None, t0 + DRAIN_LIMIT + ms(6));
    assert_eq!(t.servers[&addr(1)].load.in_flight, 0);
}

#[test]
fn a_server_that_leaves_drains_its_calls_and_gets_no_new_ones() {
    let t0 = Instant::now();
    let mut t = table(&[("r", 1), ("r", 2)], &["m"], t0);
    let mut on_1 = None;
    while on_1.is_none() {
        let p = t.pick("m", None, &[], false, t0).unwrap();
        if p.claim.addr == addr(1) {
            on_1 = Some(p.claim);
        } else {
            t.release(p.claim, None, t0);
        }
    }
    t.sync_membership(&map_of(&[("r", 2)]), false, t0 + ms(10));
    assert!(t.servers[&addr(1)].draining_since.is_some());
    for i in 0..50 {
        let p = t.pick("m", None, &[], false, t0 + ms(11 + i)).unwrap();
        assert_eq!(p.claim.addr, addr(2), "a draining server got a new call");
        t.release(p.claim, None, t0 + ms(11 + i));
    }
    // Its last call ends: the next sync forgets it.
    t.finish(
        on_1.unwrap(),
        ms(100),
        None,
        Outcome::Answered,
        t0 + ms(100),
    );
    t.sync_membership(&map_of(&[("r", 2)]), false, t0 + ms(101));
    assert!(!t.servers.contains_key(&addr(1)));
}

#[test]
fn a_failure_costs_at_most_the_penalty_beyond_its_latency() {
    let t0 = Instant::now();
    let mut t = table(&[("r", 1)], &["m"], t0);
    let c = t.pick("m", None, &[], false, t0).unwrap().claim;
    let year = Duration::from_secs(365 * 24 * 3600);
    t.finish(c, ms(1), Some(year), Outcome::NoAnswer, t0 + ms(1));
    let estimate = t.servers[&addr(1)]
        .load
        .service_time
        .get(t0 + ms(1))
        .unwrap();
    assert!(
        estimate <= balance::MAX_FAILURE_PENALTY + ms(1),
        "{estimate:?}"
    );
}

#[test]
fn only_missing_answers_eject_a_server() {
    let t0 = Instant::now();
    let mut t = table(&[("r", 1)], &["m"], t0);
    for i in 0..20 {
        let now = t0 + ms(i);
        let c = t.pick("m", None, &[], false, now).unwrap().claim;
        t.finish(c, ms(1), None, Outcome::HandlerFailed, now);
    }
    assert!(t.servers[&addr(1)].usable(t0 + ms(20)));
    for i in 0..3 {
        let now = t0 + ms(30 + i);
        let c = t.pick("m", None, &[], false, now).unwrap().claim;
        t.finish(c, ms(1), None, Outcome::NoAnswer, now);
    }
    assert!(
        !t.servers[&addr(1)].usable(t0 + ms(40)),
        "three lost calls eject"
    );
}

#[test]
fn when_every_server_is_ejected_calls_still_go_somewhere() {
    let t0 = Instant::now();
    let mut t = table(&[("near", 1), ("far", 2)], &["m"], t0);
    for port in [1, 2] {
        t.servers
            .get_mut(&addr(port))
            .unwrap()
            .load
            .health
            .eject_now(t0);
    }
    t.tick(t0 + ms(1));
    let p = t.pick("m", None, &[], false, t0 + ms(2)).unwrap();
    // Panic routing keeps the usual rules: the nearest region (equal RTTs: by name).
    assert_eq!(p.region, "far");
    t.release(p.claim, None, t0 + ms(2));
    // A server that stopped being heard from is not part of it: it would not answer.
    for port in [1, 2] {
        t.servers.get_mut(&addr(port)).unwrap().silent = true;
    }
    assert_eq!(
        t.pick("m", None, &[], false, t0 + ms(3)).unwrap_err(),
        NoPick::NoServer
    );
}

#[test]
fn a_resend_is_paid_only_when_a_server_takes_it() {
    let t0 = Instant::now();
    let mut t = table(&[("r", 1)], &["m"], t0);
    let before = t.budget.available(t0);
    assert!(before > 0);
    // Nowhere to send it: no token spent.
    assert_eq!(
        t.pick("m", None, &[addr(1)], true, t0).unwrap_err(),
        NoPick::NoServer
    );
    assert_eq!(t.budget.available(t0), before);
    let p = t.pick("m", None, &[], true, t0).unwrap();
    assert_eq!(t.budget.available(t0), before - 1);
    t.release(p.claim, None, t0);
    // Budget spent: refused, and nothing claimed.
    while t.budget.try_spend(t0) {}
    assert_eq!(
        t.pick("m", None, &[], true, t0).unwrap_err(),
        NoPick::NoBudget
    );
    assert_eq!(t.servers[&addr(1)].load.in_flight, 0);
}

#[test]
fn a_method_goes_only_where_it_is_served_and_unknown_catalogs_come_next() {
    let t0 = Instant::now();
    let mut t = table(&[("near", 1), ("far", 2)], &["m"], t0);
    t.connected(addr(2), Some(fake(&["m", "only_far"])), t0);
    for _ in 0..20 {
        let p = t.pick("only_far", None, &[], false, t0).unwrap();
        assert_eq!(p.claim.addr, addr(2));
        t.release(p.claim, None, t0);
    }
    // A server with no HELLO yet is tried before one known not to serve the method.
    let mut t = table(&[("r", 1), ("r", 2)], &["m"], t0);
    let mut no_hello = fake(&[]);
    no_hello.methods = None;
    t.connected(addr(2), Some(no_hello), t0);
    let p = t.pick("new_method", None, &[], false, t0).unwrap();
    assert_eq!(p.claim.addr, addr(2));
}

#[test]
fn a_silent_server_is_ejected_and_returns_when_heard_again() {
    let t0 = Instant::now();
    let mut t = table(&[("r", 1)], &["m"], t0);
    let p = t.pick("m", None, &[], false, t0).unwrap();
    let mut ejected = p.ejected.clone();
    t.release(p.claim, None, t0);
    // Nothing heard for longer than the silence limit (1 s here).
    t.tick(t0 + ms(1500));
    assert!(t.servers[&addr(1)].silent);
    assert!(
        ejected.has_changed().unwrap(),
        "attempts in flight are told"
    );
    ejected.mark_unchanged();
    // Heard again: usable once its ejection ends.
    if let Some(link) = t.servers.get_mut(&addr(1)).unwrap().link.as_mut() {
        link.heard += 1;
    }
    t.tick(t0 + ms(1600));
    assert!(!t.servers[&addr(1)].silent);
}

#[test]
fn an_entry_rewritten_in_place_is_what_the_next_dial_uses() {
    let t0 = Instant::now();
    let mut t = table(&[("r", 1)], &["m"], t0);
    let generation = t.servers[&addr(1)].generation;
    // The registry publishes a new certificate hash (a rotation) at the same address.
    let mut map = RegionMap::new();
    map.add_server(
        "r",
        ServerEndpoint::new(addr(1), "localhost").with_cert_sha256([7; 32]),
    );
    t.sync_membership(&map, false, t0 + ms(1));
    let row = &t.servers[&addr(1)];
    assert_eq!(row.endpoint.cert_sha256, Some([7; 32]));
    // The same server: its connection, samples and claims stay.
    assert!(row.link.is_some());
    assert_eq!(row.generation, generation);
}
