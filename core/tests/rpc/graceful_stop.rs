//! A graceful stop racing calls: every call whose handler started gets its answer within
//! the grace period, and every other call fails saying it never ran (safe to send again),
//! never "it may or may not have run".

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use meridian::testing::LinkSettings;
use meridian::{Channel, Status, TransportConfig};

use crate::common::Fixture;

/// How long before the stop each call of a busy round is sent (negative: after the stop
/// began), in ms. Many are sent right at the stop, where a call is most likely to be caught
/// half-way.
const BUSY_ROUND_MS: [i64; 43] = [
    50, 40, 30, 20, 10, 5, 2, 1, 0, 0, 50, 40, 30, 20, 10, 5, 2, 1, 0, 0, 50, 40, 30, 20, 10, 5, 2,
    1, 0, 0, 50, 40, 30, 20, 10, 5, 2, 1, 0, 0, -5, -20, -40,
];

/// The outcome of races: calls answered, calls refused with "not run", and every other
/// failure (each a bug), with how long before the stop the call was sent.
#[derive(Debug, Default)]
struct Tally {
    ok: usize,
    not_run: usize,
    bad: Vec<String>,
}

/// One race, stopped: its calls still finishing, and the server's count of handlers.
struct Race {
    calls: tokio::task::JoinSet<(i64, Result<u64, Status>)>,
    probe: std::sync::Arc<crate::common::Probe>,
}

/// Sends one call of a 100 ms handler at each of `offsets_ms` before `shutdown(3 s)`, and
/// returns once the server has stopped.
async fn race(offsets_ms: &[i64]) -> Race {
    let fx = Fixture::start().await;
    // A call that did not run is sent again to the (gone) server, and reconnecting fails
    // only at the handshake timeout, so keep that short.
    let ch = Channel::builder(fx.server.local_addr(), fx.client_tls())
        .transport(TransportConfig {
            handshake_timeout: Duration::from_millis(200),
            ..TransportConfig::default()
        })
        .connect()
        .await
        .unwrap();
    // The connection and the catalog are ready before the race starts.
    let _: i64 = ch.unary("add", &(1i64, 1i64)).await.unwrap();
    let _ = ch.wait_server_info(Duration::from_secs(5)).await;

    let stop_at = tokio::time::Instant::now() + Duration::from_millis(100);
    let mut calls = tokio::task::JoinSet::new();
    for &d in offsets_ms {
        let ch: Channel = ch.clone();
        let at = if d >= 0 {
            stop_at - Duration::from_millis(d as u64)
        } else {
            stop_at + Duration::from_millis(d.unsigned_abs())
        };
        calls.spawn(async move {
            tokio::time::sleep_until(at).await;
            (d, ch.unary::<_, u64>("sleep_ms", &100u64).await)
        });
    }
    tokio::time::sleep_until(stop_at).await;
    let stopping = Instant::now();
    let probe = fx.probe.clone();
    fx.server.shutdown(Duration::from_secs(3)).await;
    let took = stopping.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "the stop waits for the calls in flight, not for the whole grace: {took:?}"
    );
    Race { calls, probe }
}

/// Sorts the outcomes of a stopped race's calls. Checks the server side too: the handlers
/// that started are exactly the answered calls, and each finished (none was cut short).
async fn tally(mut race: Race, into: &mut Tally) {
    let (mut ok, mut not_run, mut bad) = (0, 0, 0);
    while let Some(r) = race.calls.join_next().await {
        match r.unwrap() {
            (_, Ok(v)) => {
                assert_eq!(v, 100);
                ok += 1;
            }
            (_, Err(s)) if s.is_known_not_run() => not_run += 1,
            (d, Err(s)) => {
                bad += 1;
                into.bad.push(format!("sent {d} ms before the stop: {s}"));
            }
        }
    }
    let started = race.probe.started.load(Ordering::SeqCst);
    let completed = race.probe.completed.load(Ordering::SeqCst);
    if started != completed {
        into.bad.push(format!(
            "{} handler(s) cut short (started {started}, completed {completed})",
            started - completed
        ));
    }
    if bad == 0 && started != ok {
        into.bad.push(format!(
            "{started} handler(s) started, {ok} call(s) answered, {not_run} said not run"
        ));
    }
    into.ok += ok;
    into.not_run += not_run;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_answers_every_started_call_and_refuses_the_others() {
    let mut races = Vec::new();
    // One call alone, sent D ms before the stop: the stop finds at most that call in
    // flight, so it closes as soon as the call is answered (before, it closed as soon as
    // the response was written, and the response was often lost). A call sent less than
    // about 2 ms before the stop arrives after it: refused, see the busy rounds.
    for _ in 0..3 {
        for d in [2, 5, 10, 50] {
            races.push(race(&[d]).await);
        }
    }
    // Busy rounds: 40 calls before the stop (many right at it) and 3 during it.
    for _ in 0..2 {
        races.push(race(&BUSY_ROUND_MS).await);
    }
    let mut totals = Tally::default();
    let all = async {
        for r in races {
            tally(r, &mut totals).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), all)
        .await
        .expect("every call ends soon after the stop");
    let calls = 3 * 4 + 2 * BUSY_ROUND_MS.len();
    assert!(
        totals.bad.is_empty(),
        "of {calls} calls, {} answered, {} said not run, and these did not say whether they ran: {:#?}",
        totals.ok,
        totals.not_run,
        totals.bad
    );
    assert_eq!(totals.ok + totals.not_run, calls);
    assert!(
        totals.ok >= calls / 2,
        "most calls were answered: {totals:?}"
    );
    assert!(
        totals.not_run >= 2 * 3,
        "calls sent after the stop began are refused: {totals:?}"
    );
}

/// A call that reaches the server only after the grace period ended never ran; the server
/// says so when it closes the connection, while a call it did run and cut short may have
/// run. The link delays each way by 200 ms, so the late call is still on its way when the
/// connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_the_server_never_took_is_known_not_run_after_the_close() {
    let fx = Fixture::start().await;
    let (_link, ch) = fx
        .through_link(LinkSettings::with_rtt(Duration::from_millis(400)))
        .await;
    let _: i64 = ch.unary("add", &(1i64, 1i64)).await.unwrap();
    // Runs for a minute: still running when the grace period ends.
    let stuck = {
        let ch = ch.clone();
        tokio::spawn(async move { ch.unary::<_, u64>("sleep_ms", &60_000u64).await })
    };
    assert!(
        crate::common::eventually(Duration::from_secs(3), || {
            fx.probe.started.load(Ordering::SeqCst) == 1
        })
        .await
    );
    let probe = fx.probe.clone();
    let stop = tokio::spawn(fx.server.shutdown(Duration::from_millis(300)));
    // Sent 200 ms into the 300 ms grace period, it arrives 100 ms after the close.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let late = match ch
        .call("count_forever")
        .server_streaming::<_, u64>(&())
        .await
    {
        Err(s) => s,
        Ok(mut stream) => stream
            .message()
            .await
            .expect_err("the late call got no answer"),
    };
    stop.await.unwrap();
    assert!(late.is_known_not_run(), "{late:?}");
    let stuck = stuck.await.unwrap().unwrap_err();
    assert!(
        !stuck.is_known_not_run() && stuck.message().contains("may or may not have run"),
        "{stuck:?}"
    );
    assert_eq!(
        probe.started.load(Ordering::SeqCst),
        1,
        "the late call did not run"
    );
}

/// A call whose HEADERS are not complete when the stop begins is refused at once, saying it
/// did not run, and the stop does not wait the grace period for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_still_sending_its_headers_is_refused_at_once() {
    use meridian::wire::{FrameDecoder, FrameKind, Trailers, WireLimits};
    let fx = Fixture::start().await;
    let cfg = fx
        .client_tls()
        .quinn_config(&TransportConfig::default())
        .unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(cfg);
    let conn = ep
        .connect(fx.server.local_addr(), "localhost")
        .unwrap()
        .await
        .unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    // The first byte of a HEADERS frame, and nothing more.
    send.write_all(&[FrameKind::Headers as u8]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let stopping = Instant::now();
    let stop = tokio::spawn(fx.server.shutdown(Duration::from_secs(5)));
    let answer = tokio::time::timeout(Duration::from_secs(3), recv.read_to_end(1 << 16))
        .await
        .expect("an answer before the grace period ends")
        .expect("TRAILERS, not a lost connection");
    let mut frames = FrameDecoder::new(WireLimits::default());
    frames.extend(&answer);
    let last = frames.next_frame().unwrap().expect("a frame");
    assert_eq!(last.kind, FrameKind::Trailers);
    let trailers = Trailers::decode(&last.payload, &WireLimits::default()).unwrap();
    assert_eq!(trailers.code, meridian::Code::Unavailable, "{trailers:?}");
    assert!(trailers.not_run, "{trailers:?}");
    stop.await.unwrap();
    assert!(
        stopping.elapsed() < Duration::from_secs(2),
        "the stop did not wait for the refused call: {:?}",
        stopping.elapsed()
    );
}
