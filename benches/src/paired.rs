//! `meridian-bench latency`: the latency phase with the kinds taken in turns.
//!
//! `run` measures one kind after the other, so a kind whose turn falls in a slow minute of
//! the VM looks slow. On this machine the p50 of one and the same build moves by more than
//! the 10% the goals are stated in (one run measured bare quinn's p50 at 174 µs, about
//! three times its usual). Here the kinds share the time instead: every kind's server
//! process is started and every client connected first, then the timed calls are made in
//! rounds of `calls` sequential calls on each kind in turn, `rounds` times over, the kind
//! that goes first moving along by one each round. A slow stretch then falls on every
//! kind alike, and each ratio compares calls made within the same few seconds.
//!
//! The calls themselves are the latency phase's: one 64-byte echo at a time on one
//! connection, checked outside the timed section.

use std::future::Future;
use std::pin::Pin as PinBox;

use bytes::Bytes;
use tokio::task::LocalSet;

use crate::driver::{self, Latency, Plan, ServerProcess};
use crate::kinds::{Client, Kind};
use crate::Result;

/// How many calls, in how many rounds.
#[derive(Clone, Copy, Debug)]
pub struct Rounds {
    /// Rounds over all kinds.
    pub rounds: usize,
    /// Timed sequential calls per kind in each round.
    pub calls: usize,
    /// Untimed calls per kind before the first round.
    pub warmup_calls: usize,
}

impl Default for Rounds {
    /// 20 rounds of 1,000 calls: the 20,000 timed calls of `run`'s latency phase.
    fn default() -> Self {
        Self {
            rounds: 20,
            calls: 1_000,
            warmup_calls: 500,
        }
    }
}

/// A connected client of any kind, seen only as a maker of timed sequential calls, so that
/// clients of different kinds can sit in one list. The box is per round, not per call:
/// inside a round the kind's own `call` runs, monomorphised, as in `run`.
pub trait TimedCalls {
    /// Makes `calls` sequential calls of `payload`, pushing each one's time in nanoseconds
    /// onto `nanos`, and checks each echo after its clock stopped.
    fn timed_calls<'a>(
        &'a self,
        payload: &'a Bytes,
        calls: usize,
        nanos: &'a mut Vec<u64>,
    ) -> PinBox<Box<dyn Future<Output = Result<()>> + 'a>>;
}

impl<C: Client> TimedCalls for C {
    fn timed_calls<'a>(
        &'a self,
        payload: &'a Bytes,
        calls: usize,
        nanos: &'a mut Vec<u64>,
    ) -> PinBox<Box<dyn Future<Output = Result<()>> + 'a>> {
        Box::pin(driver::timed_calls(self, payload, calls, nanos))
    }
}

/// Runs the rounds over `kinds` (each with its own server process, pinned as `plan` says)
/// and returns each kind's latency over all its timed calls.
pub fn run(kinds: &[Kind], plan: &Plan, rounds: Rounds) -> Result<Vec<(Kind, Latency)>> {
    if kinds.is_empty() || rounds.rounds == 0 || rounds.calls == 0 {
        return Err("latency needs at least one kind, one round and one call".into());
    }
    let servers = kinds
        .iter()
        .map(|&kind| ServerProcess::spawn(kind, plan.pin.map(|pin| pin.server)))
        .collect::<Result<Vec<_>>>()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let measured = LocalSet::new().block_on(&runtime, async {
        let payload = driver::payload(driver::SMALL_PAYLOAD);
        let mut clients = Vec::with_capacity(kinds.len());
        for (kind, server) in kinds.iter().zip(&servers) {
            let client = kind.connect_timed(&server.listening).await?;
            let mut discarded = Vec::with_capacity(rounds.warmup_calls);
            client
                .timed_calls(&payload, rounds.warmup_calls, &mut discarded)
                .await?;
            clients.push(client);
        }
        let mut nanos = vec![Vec::with_capacity(rounds.rounds * rounds.calls); kinds.len()];
        for round in 0..rounds.rounds {
            for k in turn_order(round, kinds.len()) {
                clients[k]
                    .timed_calls(&payload, rounds.calls, &mut nanos[k])
                    .await?;
            }
        }
        Ok::<_, crate::BoxError>(nanos)
    });
    drop(runtime);
    drop(servers);
    Ok(kinds
        .iter()
        .copied()
        .zip(measured?.into_iter().map(driver::summarize))
        .collect())
}

/// The order in which `kinds` kinds take their turns in `round`: each once, the first
/// moving along by one each round, so no kind always follows the same other kind.
pub(crate) fn turn_order(round: usize, kinds: usize) -> impl Iterator<Item = usize> {
    (0..kinds).map(move |step| (round + step) % kinds)
}

/// The markdown table `latency` prints: each kind's figures, and its p50 against each
/// kind's.
pub fn table(measured: &[(Kind, Latency)], rounds: Rounds) -> String {
    let mut out = format!(
        "Sequential 64 B calls, {} rounds of {} per kind, kinds in turns\n\n\
         | kind | p50 µs | p99 µs | mean µs |",
        rounds.rounds, rounds.calls
    );
    for (kind, _) in measured {
        out.push_str(&format!(" p50 vs {} |", kind.name()));
    }
    out.push_str("\n|---|---:|---:|---:|");
    out.push_str(&"---:|".repeat(measured.len()));
    for (kind, latency) in measured {
        out.push_str(&format!(
            "\n| {} | {:.1} | {:.1} | {:.1} |",
            kind.name(),
            latency.p50_us,
            latency.p99_us,
            latency.mean_us
        ));
        for (_, other) in measured {
            out.push_str(&format!(" {:.2}x |", latency.p50_us / other.p50_us));
        }
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn every_kind_takes_one_turn_per_round_and_the_first_moves_along() {
        let rounds: Vec<Vec<usize>> = (0..4).map(|r| turn_order(r, 3).collect()).collect();
        assert_eq!(rounds, [[0, 1, 2], [1, 2, 0], [2, 0, 1], [0, 1, 2]]);
        assert_eq!(turn_order(5, 1).collect::<Vec<_>>(), [0]);
    }

    #[test]
    fn the_table_gives_each_p50_against_every_other() {
        let latency = |p50_us| Latency {
            p50_us,
            p99_us: 2.0 * p50_us,
            mean_us: p50_us,
            calls: 10,
            total: Duration::from_micros(10),
        };
        let table = table(
            &[
                (Kind::Quinn, latency(100.0)),
                (Kind::Meridian, latency(105.0)),
            ],
            Rounds::default(),
        );
        let meridian = table
            .lines()
            .find(|line| line.starts_with("| meridian |"))
            .expect("a row for meridian");
        assert_eq!(
            meridian,
            "| meridian | 105.0 | 210.0 | 105.0 | 1.05x | 1.00x |"
        );
        assert!(
            table.contains("| kind | p50 µs | p99 µs | mean µs | p50 vs quinn | p50 vs meridian |")
        );
    }
}
