//! 0-RTT reconnection through a 50 ms emulated link: early calls, replay safety,
//! rejection, restarts, shared session stores, ticket supply.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meridian::testing::{LinkEmulator, LinkSettings};
use meridian::transport::{memory_session_store, SessionStore};
use meridian::{Channel, ClientTls, DevCa, Identity, Method, Server, ServerBuilder, ServerTls};

use crate::common::eventually;

const RTT: Duration = Duration::from_millis(50);

/// What a handler saw: (arrived in 0-RTT data, handshake confirmed when it started).
type Seen = (bool, bool);

#[derive(Default)]
struct Runs {
    /// Runs per call id.
    by_id: Mutex<HashMap<u64, u32>>,
    /// What each run of `once` saw.
    once: Mutex<Vec<Seen>>,
}

fn methods(runs: Arc<Runs>) -> ServerBuilder {
    let r1 = runs.clone();
    Server::builder()
        .unary(Method::new("probe").idempotent(), move |id: u64, ctx| {
            let runs = r1.clone();
            async move {
                *runs.by_id.lock().unwrap().entry(id).or_default() += 1;
                Ok::<Seen, _>((ctx.is_early_data(), ctx.is_handshake_confirmed()))
            }
        })
        .unary("slow_probe", {
            let runs = runs.clone();
            move |id: u64, _| {
                let runs = runs.clone();
                async move {
                    *runs.by_id.lock().unwrap().entry(id).or_default() += 1;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Ok(id)
                }
            }
        })
        .unary(Method::new("slow_probe_idem").idempotent(), {
            let runs = runs.clone();
            move |id: u64, _| {
                let runs = runs.clone();
                async move {
                    *runs.by_id.lock().unwrap().entry(id).or_default() += 1;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Ok(id)
                }
            }
        })
        .unary("once", move |(): (), ctx| {
            let runs = runs.clone();
            async move {
                let seen = (ctx.is_early_data(), ctx.is_handshake_confirmed());
                runs.once.lock().unwrap().push(seen);
                Ok::<Seen, _>(seen)
            }
        })
}

async fn server_on(
    addr: SocketAddr,
    identity: Identity,
    store: Arc<dyn SessionStore>,
    runs: Arc<Runs>,
) -> Server {
    let tls = ServerTls::new(identity).with_session_store(store);
    // A restarted server takes its predecessor's port; the old socket may take a moment
    // to be released.
    let mut last = None;
    for _ in 0..50 {
        match methods(runs.clone()).bind(addr, tls.clone()).await {
            Ok(s) => return s,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("cannot bind {addr}: {last:?}");
}

struct Rig {
    ca: DevCa,
    identity: Identity,
    runs: Arc<Runs>,
    server: Server,
    link: LinkEmulator,
    tls: ClientTls,
}

impl Rig {
    async fn start() -> Rig {
        let ca = DevCa::new().unwrap();
        let identity = ca.issue_server(&["localhost"]).unwrap();
        let runs = Arc::new(Runs::default());
        let server = server_on(
            "127.0.0.1:0".parse().unwrap(),
            identity.clone(),
            memory_session_store(64),
            runs.clone(),
        )
        .await;
        let link = LinkEmulator::start(server.local_addr(), LinkSettings::with_rtt(RTT))
            .await
            .unwrap();
        let tls = ClientTls::with_roots([ca.certificate().clone()]).unwrap();
        Rig {
            ca,
            identity,
            runs,
            server,
            link,
            tls,
        }
    }

    async fn channel(&self) -> Channel {
        Channel::builder(self.link.addr(), self.tls.clone())
            .connect()
            .await
            .unwrap()
    }
}

async fn probe(ch: &Channel, id: u64) -> Seen {
    ch.call("probe")
        .timeout(Duration::from_secs(5))
        .unary(&id)
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn a_reconnect_sends_its_first_idempotent_call_in_the_first_flight() {
    let rig = Rig::start().await;
    let t = Instant::now();
    let ch = rig.channel().await;
    assert_eq!(
        probe(&ch, 1).await,
        (false, true),
        "a first contact is a full handshake"
    );
    let full = t.elapsed();
    assert_eq!(ch.stats().zero_rtt_attempted, 0);
    ch.close().await;

    // The next call reconnects with the ticket the first connection collected.
    let t = Instant::now();
    let (early, _) = probe(&ch, 2).await;
    let resumed = t.elapsed();
    assert!(early, "the server saw the call arrive in 0-RTT data");
    let stats = ch.stats();
    assert!(stats.resumed);
    assert_eq!(stats.zero_rtt_attempted, 1);
    assert_eq!(stats.early_calls, 1);
    assert!(eventually(Duration::from_secs(2), || ch.stats().zero_rtt_accepted == 1).await);
    assert_eq!(ch.stats().zero_rtt, Some(true));
    // One round trip (plus the emulator's timer rounding) against two for a full handshake.
    assert!(
        resumed < RTT * 8 / 5,
        "0-RTT first response took {resumed:?}"
    );
    assert!(
        full >= RTT * 2,
        "a full handshake plus a call took {full:?}"
    );
    assert_eq!(rig.runs.by_id.lock().unwrap().get(&2), Some(&1));
}

#[tokio::test]
async fn a_non_idempotent_call_never_runs_before_the_handshake_completes() {
    let rig = Rig::start().await;
    let ch = rig.channel().await;
    let _ = probe(&ch, 1).await;
    ch.close().await;

    // The client waits for the handshake: the call is not sent early at all.
    let seen: Seen = ch.unary("once", &()).await.unwrap();
    assert_eq!(seen, (false, true));
    ch.close().await;

    // A client that wrongly claims the call is idempotent gets it into 0-RTT data, but the
    // server follows its own catalog and holds the call until the handshake completes.
    let seen: Seen = ch
        .call("once")
        .idempotent(true)
        .timeout(Duration::from_secs(5))
        .unary(&())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        seen,
        (true, true),
        "arrived early, ran only once confirmed: {:?}",
        ch.stats()
    );
    assert_eq!(
        rig.runs.once.lock().unwrap().len(),
        2,
        "each call ran exactly once"
    );
    assert!(rig
        .runs
        .once
        .lock()
        .unwrap()
        .iter()
        .all(|(_, confirmed)| *confirmed));
}

#[tokio::test]
async fn rejected_0rtt_is_resent_once_after_the_handshake() {
    let rig = Rig::start().await;
    let ch = rig.channel().await;
    let _ = probe(&ch, 1).await;
    ch.close().await;

    // Restart the server on the same port with an empty session store: the client's
    // ticket is unknown there, so the server rejects the 0-RTT data.
    let addr = rig.server.local_addr();
    rig.server.shutdown(Duration::from_millis(100)).await;
    let runs = Arc::new(Runs::default());
    let _restarted = server_on(
        addr,
        rig.identity.clone(),
        memory_session_store(64),
        runs.clone(),
    )
    .await;

    let (early, confirmed) = probe(&ch, 7).await;
    assert!(
        !early,
        "the call that ran was the re-sent one, after the handshake"
    );
    assert!(confirmed);
    let stats = ch.stats();
    assert_eq!(stats.zero_rtt_attempted, 1);
    assert_eq!(stats.zero_rtt_rejected, 1);
    assert_eq!(stats.retries, 1);
    assert_eq!(runs.by_id.lock().unwrap().get(&7), Some(&1), "exactly once");
}

#[tokio::test]
async fn servers_sharing_a_session_store_resume_each_others_clients() {
    let ca = DevCa::new().unwrap();
    let store = memory_session_store(64);
    let runs = Arc::new(Runs::default());
    let a = server_on(
        "127.0.0.1:0".parse().unwrap(),
        ca.issue_server(&["localhost"]).unwrap(),
        store.clone(),
        runs.clone(),
    )
    .await;
    let b = server_on(
        "127.0.0.1:0".parse().unwrap(),
        ca.issue_server(&["localhost"]).unwrap(),
        store.clone(),
        runs.clone(),
    )
    .await;
    let link_a = LinkEmulator::start(a.local_addr(), LinkSettings::with_rtt(RTT))
        .await
        .unwrap();
    let link_b = LinkEmulator::start(b.local_addr(), LinkSettings::with_rtt(RTT))
        .await
        .unwrap();
    // The servers share ticket keys, and the client is told so.
    let tls = ClientTls::with_roots([ca.certificate().clone()])
        .unwrap()
        .share_tickets_by_name();

    let to_a = Channel::builder(link_a.addr(), tls.clone())
        .connect()
        .await
        .unwrap();
    assert_eq!(probe(&to_a, 1).await, (false, true));
    to_a.close().await;

    // A new channel to the other server, built from the same client settings. It has no
    // HELLO from B yet, so the call says itself that it is idempotent.
    let to_b = Channel::builder(link_b.addr(), tls.clone())
        .connect()
        .await
        .unwrap();
    let (early, _): Seen = to_b
        .call("probe")
        .idempotent(true)
        .timeout(Duration::from_secs(5))
        .unary(&2u64)
        .await
        .unwrap()
        .into_inner();
    assert!(
        early,
        "server B accepted a session that server A issued: {:?}",
        to_b.stats()
    );
    assert!(
        eventually(Duration::from_secs(2), || to_b.stats().zero_rtt_accepted
            == 1)
        .await
    );
}

#[tokio::test]
async fn servers_of_one_name_keep_their_own_tickets() {
    // Two servers with one certificate name and their own ticket keys (the default), one
    // client: each reconnect resumes with its own server's ticket, whichever server issued
    // the last one.
    let ca = DevCa::new().unwrap();
    let runs = Arc::new(Runs::default());
    let mut links = Vec::new();
    let mut servers = Vec::new();
    for _ in 0..2 {
        let s = server_on(
            "127.0.0.1:0".parse().unwrap(),
            ca.issue_server(&["localhost"]).unwrap(),
            memory_session_store(64),
            runs.clone(),
        )
        .await;
        links.push(
            LinkEmulator::start(s.local_addr(), LinkSettings::with_rtt(RTT))
                .await
                .unwrap(),
        );
        servers.push(s);
    }
    let tls = ClientTls::with_roots([ca.certificate().clone()]).unwrap();
    let to_a = Channel::builder(links[0].addr(), tls.clone())
        .connect()
        .await
        .unwrap();
    assert_eq!(probe(&to_a, 1).await, (false, true));
    let to_b = Channel::builder(links[1].addr(), tls.clone())
        .connect()
        .await
        .unwrap();
    assert_eq!(probe(&to_b, 2).await, (false, true));
    for i in 0..3u64 {
        to_a.close().await;
        let (early, _) = probe(&to_a, 10 + i).await;
        assert!(
            early,
            "A resumed with its own ticket (round {i}): {:?}",
            to_a.stats()
        );
        to_b.close().await;
        let (early, _) = probe(&to_b, 20 + i).await;
        assert!(
            early,
            "B resumed with its own ticket (round {i}): {:?}",
            to_b.stats()
        );
    }
    assert!(
        eventually(Duration::from_secs(2), || to_a.stats().zero_rtt_accepted
            == 3
            && to_b.stats().zero_rtt_accepted == 3)
        .await,
        "{:?} {:?}",
        to_a.stats(),
        to_b.stats()
    );
    assert_eq!(
        to_a.stats().zero_rtt_rejected + to_b.stats().zero_rtt_rejected,
        0
    );
}

#[tokio::test]
async fn twenty_reconnects_in_a_row_all_use_0rtt() {
    let rig = Rig::start().await;
    let ch = rig.channel().await;
    let _ = probe(&ch, 0).await;
    for i in 1..=20u64 {
        ch.close().await;
        let (early, _) = probe(&ch, i).await;
        assert!(early, "reconnect {i} had no ticket left");
    }
    assert!(
        eventually(Duration::from_secs(2), || ch.stats().zero_rtt_accepted
            == 20)
        .await
    );
    assert_eq!(ch.stats().zero_rtt_rejected, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_under_load_loses_no_idempotent_call_and_runs_none_twice() {
    let rig = Rig::start().await;
    let ch = rig.channel().await;
    let load = {
        let ch = ch.clone();
        tokio::spawn(async move {
            let mut failures = Vec::new();
            for id in 0..150u64 {
                // Calls ride the restart by waiting for the connection (gRPC's
                // wait-for-ready); without it they fail fast while the server is down.
                if let Err(e) = ch
                    .call("probe")
                    .wait_for_ready(true)
                    .timeout(Duration::from_secs(5))
                    .unary::<_, Seen>(&id)
                    .await
                {
                    failures.push((id, e));
                }
            }
            failures
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let addr = rig.server.local_addr();
    rig.server.shutdown(Duration::from_secs(2)).await;
    // The restarted server shares nothing with the old one but its identity; the run
    // counts are shared so duplicates across the restart would show.
    let _restarted = server_on(
        addr,
        rig.identity.clone(),
        memory_session_store(64),
        rig.runs.clone(),
    )
    .await;
    let failures = load.await.unwrap();
    assert!(failures.is_empty(), "failed calls: {failures:?}");
    let runs = rig.runs.by_id.lock().unwrap();
    assert_eq!(runs.len(), 150);
    assert!(runs.values().all(|n| *n == 1), "a call ran twice: {runs:?}");
    let _ = &rig.ca;
}

#[tokio::test]
async fn a_call_in_flight_when_its_connection_dies() {
    let rig = Rig::start().await;
    let ch = rig.channel().await;
    let _ = probe(&ch, 0).await;
    let addr = rig.server.local_addr();
    let identity = rig.identity.clone();
    let runs = rig.runs.clone();

    let idem = {
        let ch = ch.clone();
        tokio::spawn(async move {
            // It rides out the restart: on a loaded machine the new server may bind after
            // the reconnection's first flight, whose retransmission then comes after the
            // 1 s a call waits for a reconnection by default (CI saw this).
            ch.call("slow_probe_idem")
                .timeout(Duration::from_secs(5))
                .wait_for_ready(true)
                .unary::<_, u64>(&1u64)
                .await
        })
    };
    let other = {
        let ch = ch.clone();
        tokio::spawn(async move {
            ch.call("slow_probe")
                .timeout(Duration::from_secs(5))
                .unary::<_, u64>(&2u64)
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    // The server dies abruptly with both calls running, and comes back.
    drop(rig.server);
    let _back = server_on(addr, identity, memory_session_store(64), runs.clone()).await;

    let idem = idem.await.unwrap();
    assert_eq!(
        idem.unwrap().into_inner(),
        1,
        "the idempotent call was retried on the new connection"
    );
    let err = other.await.unwrap().unwrap_err();
    assert_eq!(err.code(), meridian::Code::Unavailable);
    assert!(err.message().contains("may or may not have run"), "{err}");
    assert_eq!(runs.by_id.lock().unwrap().get(&2), Some(&1), "not re-sent");
    assert!(ch.stats().retries >= 1);
}

#[tokio::test]
async fn a_lost_connection_is_re_established_in_the_background() {
    let rig = Rig::start().await;
    let ch = rig.channel().await;
    let _ = probe(&ch, 0).await;
    let addr = rig.server.local_addr();
    rig.server.shutdown(Duration::from_millis(50)).await;
    let _back = server_on(
        addr,
        rig.identity.clone(),
        memory_session_store(64),
        rig.runs.clone(),
    )
    .await;
    // No call is made: the channel reconnects by itself.
    assert!(
        eventually(Duration::from_secs(5), || ch.stats().connections >= 2).await,
        "reconnected: {:?}",
        ch.stats()
    );
}
