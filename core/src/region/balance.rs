//! Choosing a server inside a region.
//!
//! Once the region is chosen, the calls should go to whichever of its servers will answer
//! soonest. Asking every server is too costly and always taking the single best one makes
//! the whole client stampede onto it, so this is the power of two choices (P2C): draw two
//! servers at random and take the cheaper, where the cost is the server's service time
//! (a [`PeakEwma`]) times its calls in flight plus one, divided by its slow-start weight.
//! That is Finagle's and linkerd's balancer, with three additions from DESIGN.md §7:
//!
//! - a server with no estimate yet is costed like the best known one, so new servers are
//!   tried rather than starved or flooded;
//! - a failed call is recorded as [`failure_cost`], at least the larger of its latency,
//!   its timeout and twice the estimate, so a server that fails fast does not look fast;
//! - one call in [`EXPLORE_ONE_IN`] goes to a uniformly random available server, so a
//!   server whose estimate went bad still gets an occasional call and can recover.
//!
//! Ejected servers ([`Health`]) are never picked; recovered ones ramp up through their
//! slow-start weight. Everything here is a pure function of the loads, `now` and a random
//! number passed in.

use std::time::{Duration, Instant};

use super::estimate::PeakEwma;
use super::health::Health;

/// One pick in this many (decided from the random input) goes to a uniformly random
/// available server instead of the P2C choice.
pub const EXPLORE_ONE_IN: u64 = 64;

/// The weight below which a server's slow-start weight is not trusted (it would make its
/// cost infinite); an available server is never costed as if its weight were lower.
const MIN_WEIGHT: f64 = 1e-3;

/// What the balancer needs to know about one server.
///
/// Implemented by [`ServerLoad`] and by references to any implementor, so `pick` accepts
/// both `&[ServerLoad]` and `&[&ServerLoad]`; the wiring may implement it for its own
/// per-server state instead.
pub trait LoadView {
    /// The service-time estimate at `now`, `None` when the server has none yet.
    fn estimate(&self, now: Instant) -> Option<Duration>;
    /// Calls sent to the server and not finished yet.
    fn in_flight(&self) -> u32;
    /// Whether the server may be picked at `now` (it is not ejected).
    fn is_available(&self, now: Instant) -> bool;
    /// The slow-start weight at `now`, in `(0, 1]` for an available server.
    fn weight(&self, now: Instant) -> f64;
}

/// The balancing state of one server, fed by the wiring: a service-time estimate, the
/// number of calls in flight, and its health.
#[derive(Debug, Clone, Default)]
pub struct ServerLoad {
    /// Smoothed call latency (feed successes with their latency and failures with
    /// [`failure_cost`]).
    pub service_time: PeakEwma,
    /// Calls sent to the server and not finished yet.
    pub in_flight: u32,
    /// Ejection and slow start.
    pub health: Health,
}

impl ServerLoad {
    /// A new server: no estimate, nothing in flight, healthy, default tuning (10 s
    /// service-time decay, default [`HealthConfig`](super::health::HealthConfig)).
    pub fn new() -> Self {
        Self::default()
    }
}

impl LoadView for ServerLoad {
    fn estimate(&self, now: Instant) -> Option<Duration> {
        self.service_time.get(now)
    }

    fn in_flight(&self) -> u32 {
        self.in_flight
    }

    fn is_available(&self, now: Instant) -> bool {
        self.health.is_available(now)
    }

    fn weight(&self, now: Instant) -> f64 {
        self.health.slow_start_weight(now)
    }
}

impl<T: LoadView + ?Sized> LoadView for &T {
    fn estimate(&self, now: Instant) -> Option<Duration> {
        (**self).estimate(now)
    }

    fn in_flight(&self) -> u32 {
        (**self).in_flight()
    }

    fn is_available(&self, now: Instant) -> bool {
        (**self).is_available(now)
    }

    fn weight(&self, now: Instant) -> f64 {
        (**self).weight(now)
    }
}

/// Picks the server for the next call, returning its index in `servers`, or `None` when
/// no server is available.
///
/// `rand` is any 64-bit random number (it is mixed before use, so a counter works too);
/// the same inputs always give the same pick. One call in [`EXPLORE_ONE_IN`] picks
/// uniformly among the available servers; the others use P2C on
/// `estimate x (in_flight + 1) / weight`. Costs O(n) time, no allocation.
///
/// ```
/// use meridian::region::balance::{pick, ServerLoad};
/// use std::time::{Duration, Instant};
///
/// let now = Instant::now();
/// let mut fast = ServerLoad::new();
/// fast.service_time.observe(Duration::from_millis(1), now);
/// let mut slow = ServerLoad::new();
/// slow.service_time.observe(Duration::from_millis(80), now);
/// let servers = [fast, slow];
/// // With two servers P2C compares both; only the occasional exploration picks the slow one.
/// let picks_of_fast = (0..1000u64).filter(|r| pick(&servers, now, *r) == Some(0)).count();
/// assert!(picks_of_fast > 950);
/// ```
pub fn pick<L: LoadView>(servers: &[L], now: Instant, rand: u64) -> Option<usize> {
    let available = servers.iter().filter(|s| s.is_available(now)).count();
    if available == 0 {
        return None;
    }
    let nth_available = |k: usize| {
        servers
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_available(now))
            .nth(k)
            .map(|(i, _)| i)
    };
    let explore = stream(rand, 1) % EXPLORE_ONE_IN == 0;
    if explore || available == 1 {
        return nth_available(below(stream(rand, 2), available));
    }
    let a = below(stream(rand, 2), available);
    let mut b = below(stream(rand, 3), available - 1);
    if b >= a {
        b += 1;
    }
    let (ia, ib) = (nth_available(a)?, nth_available(b)?);
    let unknown = servers
        .iter()
        .filter(|s| s.is_available(now))
        .filter_map(|s| s.estimate(now))
        .min()
        .unwrap_or(Duration::from_millis(1));
    let cost = |i: usize| cost(&servers[i], now, unknown);
    Some(if cost(ib) < cost(ia) { ib } else { ia })
}

/// The P2C cost of one server, in nanoseconds of expected wait.
fn cost<L: LoadView>(server: &L, now: Instant, unknown: Duration) -> f64 {
    let estimate = server.estimate(now).unwrap_or(unknown);
    // A zero estimate would hide the in-flight count; a nanosecond keeps it meaningful.
    let estimate = (estimate.as_nanos() as f64).max(1.0);
    let load = f64::from(server.in_flight()) + 1.0;
    let weight = server.weight(now);
    let weight = if weight.is_nan() {
        1.0
    } else {
        weight.clamp(MIN_WEIGHT, 1.0)
    };
    estimate * load / weight
}

/// Most a failure adds to a server's estimate beyond the time it really took. The timeout
/// is the caller's choice (through a proxy, a remote peer's), so without a bound one failed
/// call with a one-year timeout would steer traffic away from the server for minutes.
pub const MAX_FAILURE_PENALTY: Duration = Duration::from_secs(2);

/// The service-time sample to record for a failed call: the largest of its `latency`,
/// its `timeout` (if it had one) and twice the current `estimate`, but never more than
/// `latency.max(MAX_FAILURE_PENALTY)`.
///
/// A server that refuses calls in 100 µs must not look like the fastest server in the
/// region, so a failure is never cheaper than waiting out the call's deadline, nor than
/// twice what the server usually takes, up to [`MAX_FAILURE_PENALTY`]. A failure that
/// really took longer costs what it took. Saturates instead of overflowing.
///
/// ```
/// use meridian::region::balance::failure_cost;
/// use std::time::Duration;
///
/// let ms = Duration::from_millis;
/// assert_eq!(failure_cost(ms(1), Some(ms(500)), Some(ms(20))), ms(500));
/// assert_eq!(failure_cost(ms(1), None, Some(ms(20))), ms(40));
/// assert_eq!(failure_cost(ms(1), None, None), ms(1));
/// // A caller's huge timeout is capped; a failure that really took long is not.
/// assert_eq!(failure_cost(ms(1), Some(Duration::from_secs(31_536_000)), None), ms(2000));
/// assert_eq!(failure_cost(ms(9000), Some(ms(10_000)), None), ms(9000));
/// ```
pub fn failure_cost(
    latency: Duration,
    timeout: Option<Duration>,
    estimate: Option<Duration>,
) -> Duration {
    let doubled = estimate.map_or(Duration::ZERO, |e| e.saturating_mul(2));
    let cost = latency.max(timeout.unwrap_or(Duration::ZERO)).max(doubled);
    cost.min(latency.max(MAX_FAILURE_PENALTY))
}

/// The `i`-th independent random number derived from `rand` (splitmix64 steps).
fn stream(rand: u64, i: u64) -> u64 {
    let mut z = rand.wrapping_add(i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A number in `0..n` from a uniform `r` (multiply-shift, no modulo bias worth the name).
fn below(r: u64, n: usize) -> usize {
    ((u128::from(r) * n as u128) >> 64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region::health::HealthConfig;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    /// A deterministic random source for the simulations.
    fn rng(seed: u64) -> impl FnMut() -> u64 {
        let mut state = seed;
        move || {
            state = state.wrapping_add(1);
            stream(state, 0)
        }
    }

    /// How a simulated server answers a call sent at a given time.
    type Behaviour = dyn Fn(usize, Instant) -> (Duration, bool);

    /// A simulated region: calls arrive every `spacing`, each goes to `pick`'s choice and
    /// finishes after the latency `behaviour` gives; the outcome is fed back as the
    /// wiring would. Returns the time each call was sent and the index it went to.
    struct Sim {
        servers: Vec<ServerLoad>,
        /// (finishes at, server, latency, failed)
        pending: Vec<(Instant, usize, Duration, bool)>,
        record_health: bool,
        honest_failures: bool,
    }

    impl Sim {
        fn new(n: usize) -> Self {
            Self {
                servers: (0..n).map(|_| ServerLoad::new()).collect(),
                pending: Vec::new(),
                record_health: false,
                honest_failures: true,
            }
        }

        fn finish_until(&mut self, now: Instant) {
            self.pending.sort_by_key(|p| p.0);
            while let Some(&(at, i, latency, failed)) = self.pending.first() {
                if at > now {
                    break;
                }
                self.pending.remove(0);
                let s = &mut self.servers[i];
                s.in_flight -= 1;
                if failed {
                    let sample = if self.honest_failures {
                        failure_cost(latency, None, s.service_time.get(at))
                    } else {
                        latency
                    };
                    s.service_time.observe(sample, at);
                    if self.record_health {
                        s.health.record_failure(at);
                    }
                } else {
                    s.service_time.observe(latency, at);
                    if self.record_health {
                        s.health.record_success(at);
                    }
                }
            }
        }

        fn run(
            &mut self,
            start: Instant,
            calls: usize,
            spacing: Duration,
            behaviour: &Behaviour,
            seed: u64,
        ) -> Vec<(Instant, usize)> {
            let mut rand = rng(seed);
            let mut picks = Vec::with_capacity(calls);
            for c in 0..calls {
                let now = start + spacing * c as u32;
                self.finish_until(now);
                let Some(i) = pick(&self.servers, now, rand()) else {
                    continue;
                };
                let (latency, failed) = behaviour(i, now);
                self.servers[i].in_flight += 1;
                self.pending.push((now + latency, i, latency, failed));
                picks.push((now, i));
            }
            picks
        }
    }

    fn count(picks: &[(Instant, usize)], server: usize) -> usize {
        picks.iter().filter(|p| p.1 == server).count()
    }

    #[test]
    fn nothing_to_pick_from() {
        let now = Instant::now();
        let empty: [ServerLoad; 0] = [];
        assert_eq!(pick(&empty, now, 1), None);
        let mut down = ServerLoad::new();
        down.health.eject_now(now);
        assert_eq!(pick(&[down], now, 1), None);
    }

    #[test]
    fn single_available_server_is_always_picked() {
        let now = Instant::now();
        let mut down = ServerLoad::new();
        down.health.eject_now(now);
        let servers = [down, ServerLoad::new()];
        for r in 0..200 {
            assert_eq!(pick(&servers, now, r), Some(1));
        }
    }

    #[test]
    fn same_inputs_same_pick() {
        let now = Instant::now();
        let servers: Vec<ServerLoad> = (0..5).map(|_| ServerLoad::new()).collect();
        for r in 0..100 {
            assert_eq!(pick(&servers, now, r), pick(&servers, now, r));
        }
    }

    #[test]
    fn accepts_slices_of_references() {
        let now = Instant::now();
        let a = ServerLoad::new();
        let b = ServerLoad::new();
        let refs = vec![&a, &b];
        assert!(pick(&refs, now, 7).is_some());
    }

    #[test]
    fn failure_cost_is_the_largest_of_the_three_within_the_penalty_cap() {
        assert_eq!(failure_cost(ms(3), Some(ms(2)), Some(ms(1))), ms(3));
        assert_eq!(failure_cost(ms(1), Some(ms(100)), Some(ms(1))), ms(100));
        assert_eq!(failure_cost(ms(1), Some(ms(10)), Some(ms(30))), ms(60));
        assert_eq!(failure_cost(ms(1), None, None), ms(1));
        // Saturating arithmetic, then the cap: no overflow, no unbounded cost.
        assert_eq!(
            failure_cost(ms(1), None, Some(Duration::MAX)),
            MAX_FAILURE_PENALTY
        );
        let year = Duration::from_secs(365 * 24 * 3600);
        assert_eq!(failure_cost(ms(1), Some(year), None), MAX_FAILURE_PENALTY);
        // A failure that really took longer than the cap costs what it took.
        assert_eq!(failure_cost(ms(5000), Some(year), None), ms(5000));
    }

    #[test]
    fn many_in_flight_loses() {
        let now = Instant::now();
        let mut busy = ServerLoad::new();
        busy.service_time.observe(ms(2), now);
        busy.in_flight = 10;
        let mut idle = ServerLoad::new();
        idle.service_time.observe(ms(2), now);
        let servers = [busy, idle];
        let busy_picks = (0..1000u64)
            .filter(|r| pick(&servers, now, *r) == Some(0))
            .count();
        // Only exploration (1/64 of calls, half of which land on it) reaches it.
        assert!(busy_picks < 25, "{busy_picks}");
    }

    #[test]
    fn new_server_without_estimate_gets_tried() {
        let now = Instant::now();
        let mut known = ServerLoad::new();
        known.service_time.observe(ms(5), now);
        let servers = [known, ServerLoad::new()];
        let new_picks = (0..1000u64)
            .filter(|r| pick(&servers, now, *r) == Some(1))
            .count();
        assert!((350..650).contains(&new_picks), "{new_picks}");
    }

    #[test]
    fn exploration_reaches_a_server_with_a_bad_estimate() {
        let now = Instant::now();
        let mut servers: Vec<ServerLoad> = (0..4).map(|_| ServerLoad::new()).collect();
        for s in &mut servers {
            s.service_time.observe(ms(1), now);
        }
        servers[3].service_time.observe(Duration::from_secs(5), now);
        let bad = (0..64_000u64)
            .filter(|r| pick(&servers, now, *r) == Some(3))
            .count();
        // About 64000 / 64 / 4 = 250 exploratory calls, and never from P2C.
        assert!((150..350).contains(&bad), "{bad}");
    }

    #[test]
    fn fast_failing_server_gets_fewer_picks() {
        let t0 = Instant::now();
        let behaviour = |i: usize, _now: Instant| {
            if i == 0 {
                (us(100), true) // refuses every call at once
            } else {
                (ms(1), false)
            }
        };
        let mut sim = Sim::new(3);
        let picks = sim.run(t0, 1000, us(500), &behaviour, 1);
        let failing = count(&picks, 0);
        let healthy = count(&picks, 1).min(count(&picks, 2));
        assert!(
            failing * 5 < healthy,
            "failing {failing}, healthy {healthy}"
        );

        // Recording the raw 100 µs instead would make it the favourite: the reason
        // failure_cost exists.
        let mut naive = Sim::new(3);
        naive.honest_failures = false;
        let picks = naive.run(t0, 1000, us(500), &behaviour, 1);
        assert!(count(&picks, 0) > count(&picks, 1).max(count(&picks, 2)));
    }

    #[test]
    fn slow_server_gets_fewer_picks() {
        let t0 = Instant::now();
        let behaviour = |i: usize, _now: Instant| {
            if i == 2 {
                (ms(20), false)
            } else {
                (ms(2), false)
            }
        };
        let mut sim = Sim::new(3);
        let picks = sim.run(t0, 1000, us(500), &behaviour, 2);
        let slow = count(&picks, 2);
        let fast = count(&picks, 0).min(count(&picks, 1));
        assert!(slow * 4 < fast, "slow {slow}, fast {fast}");
    }

    #[test]
    fn ejected_server_gets_no_picks() {
        let t0 = Instant::now();
        let behaviour = |i: usize, _now: Instant| (ms(1), i == 1);
        let mut sim = Sim::new(3);
        sim.record_health = true;
        // Ejection lasts 1 s; run for 0.5 s.
        let picks = sim.run(t0, 1000, us(500), &behaviour, 3);
        let ejected_at = sim.servers[1]
            .health
            .ejected_until()
            .map(|u| u - Duration::from_secs(1))
            .expect("never ejected");
        let after = picks
            .iter()
            .filter(|p| p.0 >= ejected_at && p.1 == 1)
            .count();
        assert_eq!(after, 0);
        assert!(count(&picks, 1) >= 3);
    }

    #[test]
    fn recovered_server_ramps_up() {
        let t0 = Instant::now();
        let behaviour = |_i: usize, _now: Instant| (ms(2), false);
        let mut sim = Sim::new(3);
        let config = HealthConfig::default();
        sim.servers[2].health = Health::with_config(config);
        sim.servers[2].health.eject_now(t0);
        let back = t0 + Duration::from_secs(1);
        // 8 s of calls every 200 µs: about 10 in flight across the region.
        let picks = sim.run(t0, 40_000, us(200), &behaviour, 4);
        let share = |from: f64, to: f64| {
            let (lo, hi) = (
                back + Duration::from_secs_f64(from),
                back + Duration::from_secs_f64(to),
            );
            let window: Vec<_> = picks.iter().filter(|p| p.0 >= lo && p.0 < hi).collect();
            window.iter().filter(|p| p.1 == 2).count() as f64 / window.len() as f64
        };
        assert_eq!(picks.iter().filter(|p| p.0 < back && p.1 == 2).count(), 0);
        let early = share(0.0, 1.0);
        let middle = share(2.0, 3.0);
        let done = share(5.5, 7.0);
        assert!(
            early < middle && middle < done,
            "{early:.3} {middle:.3} {done:.3}"
        );
        assert!(early < 0.2, "{early:.3}");
        assert!((done - 1.0 / 3.0).abs() < 0.06, "{done:.3}");
    }
}
