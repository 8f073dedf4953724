//! Choosing a region: nearest healthy by RTT, without flapping, with soft moves.
//!
//! The obvious rule, "send each call to the region with the lowest RTT", misbehaves in
//! three ways that [`RegionSelector`] guards against:
//!
//! - **Flapping.** Two regions a few percent apart trade places with every noisy sample,
//!   and each move costs cold connections and caches. Once a region is current, another
//!   one must be better by more than 20% *and* by at least 2 ms, continuously for
//!   `switch_after` (1 s), before traffic moves.
//! - **Stampedes.** Moving all traffic at once onto a region that was carrying none can
//!   overload it. Between two healthy regions the move *ramps*: the new region gets 20%
//!   of the calls at first, growing linearly to 100% over `ramp` (2 s), the rest still
//!   going to the old one. When the old region is unhealthy there is nowhere else to
//!   send them, so the move is immediate and whole: an outage is never prolonged by
//!   caution.
//! - **Bouncing back too early.** A region that has just come back from an outage often
//!   goes down again. A region that turned healthy again is not a move target until it
//!   has stayed healthy for `hold_down` (5 s); then traffic moves back, with the ramp.
//!
//! A preferred home region, when set, is used whenever it is healthy (after its
//! hold-down), whatever the RTT. A region with no RTT figure yet counts as farther than
//! any that has one.
//!
//! The selector has no clock and no randomness of its own: the wiring feeds it region
//! states and instants with [`RegionSelector::update`], and asks with
//! [`RegionSelector::choose`], passing a random number for the ramp's split. It keeps one
//! current region; a call whose candidate regions do not include it is sent to the best
//! candidate without moving the current region (a wiring that wants hysteresis per
//! method can keep one selector per candidate set).

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Tuning of [`RegionSelector`].
#[derive(Debug, Clone, PartialEq)]
pub struct SelectorConfig {
    /// A region must beat the current one's RTT by more than this fraction of it to take
    /// over (default 0.2).
    pub switch_ratio: f64,
    /// ...and by at least this much (default 2 ms).
    pub switch_min_gain: Duration,
    /// ...continuously for this long (default 1 s).
    pub switch_after: Duration,
    /// How long a move between two healthy regions ramps (default 2 s; zero moves at
    /// once).
    pub ramp: Duration,
    /// The new region's share of the calls when a ramp starts (default 0.2).
    pub ramp_start: f64,
    /// How long a region that turned healthy again must stay healthy before traffic
    /// moves to it (default 5 s).
    pub hold_down: Duration,
}

impl Default for SelectorConfig {
    fn default() -> Self {
        Self {
            switch_ratio: 0.2,
            switch_min_gain: Duration::from_millis(2),
            switch_after: Duration::from_secs(1),
            ramp: Duration::from_secs(2),
            ramp_start: 0.2,
            hold_down: Duration::from_secs(5),
        }
    }
}

/// A move in progress between two healthy regions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ramp {
    /// The region traffic is leaving.
    pub from: String,
    /// The region traffic is moving to (the current region).
    pub to: String,
    /// When the move started.
    pub started: Instant,
}

/// What the selector knows of one region.
#[derive(Debug, Clone)]
struct RegionState {
    rtt: Option<Duration>,
    healthy: bool,
    /// When the region last turned from unhealthy to healthy.
    recovered_at: Option<Instant>,
}

impl RegionState {
    /// A region never reported: usable, but farther than any with an RTT.
    const UNKNOWN: RegionState = RegionState {
        rtt: None,
        healthy: true,
        recovered_at: None,
    };
}

/// Chooses the region for each call; see the [module docs](self) for the rules.
///
/// ```
/// use meridian::region::select::RegionSelector;
/// use std::time::{Duration, Instant};
///
/// let t0 = Instant::now();
/// let ms = Duration::from_millis;
/// let mut selector = RegionSelector::new();
/// selector.update("us-east", Some(ms(70)), true, t0);
/// selector.update("eu-west", Some(ms(8)), true, t0);
/// assert_eq!(selector.choose(&["us-east", "eu-west"], t0, 1).as_deref(), Some("eu-west"));
///
/// // eu-west goes down: the very next call fails over.
/// selector.update("eu-west", Some(ms(8)), false, t0 + ms(100));
/// let region = selector.choose(&["us-east", "eu-west"], t0 + ms(100), 2);
/// assert_eq!(region.as_deref(), Some("us-east"));
/// assert_eq!(selector.switches(), 1);
/// ```
#[derive(Debug, Clone)]
pub struct RegionSelector {
    config: SelectorConfig,
    regions: HashMap<String, RegionState>,
    home: Option<String>,
    current: Option<String>,
    ramp: Option<Ramp>,
    /// Since when some healthy region has continuously beaten the current one.
    better_since: Option<Instant>,
    /// The current region was chosen while its RTT was unknown.
    blind: bool,
    switches: u64,
}

impl RegionSelector {
    /// A selector with the default tuning, knowing no region yet.
    pub fn new() -> Self {
        Self::with_config(SelectorConfig::default())
    }

    /// A selector with the given tuning. `ramp_start` is clamped to `[0, 1]` and a
    /// negative or NaN `switch_ratio` taken as 0.
    pub fn with_config(mut config: SelectorConfig) -> Self {
        config.ramp_start = if config.ramp_start.is_nan() {
            SelectorConfig::default().ramp_start
        } else {
            config.ramp_start.clamp(0.0, 1.0)
        };
        if config.switch_ratio.is_nan() || config.switch_ratio < 0.0 {
            config.switch_ratio = 0.0;
        }
        Self {
            config,
            regions: HashMap::new(),
            home: None,
            current: None,
            ramp: None,
            better_since: None,
            blind: false,
            switches: 0,
        }
    }

    /// The tuning in use.
    pub fn config(&self) -> &SelectorConfig {
        &self.config
    }

    /// Sets (or, with `None`, clears) the preferred home region, used whenever it is
    /// healthy, whatever its RTT. Takes effect at the next [`choose`](Self::choose).
    pub fn set_home<S: Into<String>>(&mut self, home: Option<S>) {
        self.home = home.map(Into::into);
        self.better_since = None;
    }

    /// The preferred home region, if set.
    pub fn home(&self) -> Option<&str> {
        self.home.as_deref()
    }

    /// Reports a region's state at `now`: its RTT estimate (`None` keeps the previous
    /// figure, if any) and whether it has a usable server.
    ///
    /// A region reported healthy after being unhealthy starts its hold-down at `now`. A
    /// region seen for the first time has no hold-down.
    pub fn update(&mut self, region: &str, rtt: Option<Duration>, healthy: bool, now: Instant) {
        match self.regions.get_mut(region) {
            Some(state) => {
                if rtt.is_some() {
                    state.rtt = rtt;
                }
                if healthy && !state.healthy {
                    state.recovered_at = Some(now);
                }
                state.healthy = healthy;
            }
            None => {
                self.regions.insert(
                    region.to_string(),
                    RegionState {
                        rtt,
                        healthy,
                        recovered_at: None,
                    },
                );
            }
        }
    }

    /// Forgets a region (it left the region map). If it was current, the next
    /// [`choose`](Self::choose) picks afresh, without counting a switch.
    pub fn forget(&mut self, region: &str) {
        self.regions.remove(region);
        if self.current.as_deref() == Some(region) {
            self.current = None;
            self.ramp = None;
            self.better_since = None;
        }
        if self.ramp.as_ref().is_some_and(|r| r.from == region) {
            self.ramp = None;
        }
    }

    /// Chooses the region for one call among `candidates` (the regions that serve the
    /// method, in any order; duplicates are harmless), at `now`. `rand` is any random
    /// number; it only splits calls during a ramp.
    ///
    /// Returns `None` when no candidate is healthy. Regions never reported through
    /// [`update`](Self::update) count as healthy with no RTT. Costs O(c) with c
    /// candidates, plus an allocation for the returned name.
    pub fn choose(&mut self, candidates: &[&str], now: Instant, rand: u64) -> Option<String> {
        self.expire_ramp(now);
        let mut healthy: Vec<&str> = candidates
            .iter()
            .copied()
            .filter(|r| self.state(r).healthy)
            .collect();
        healthy.sort_unstable();
        healthy.dedup();
        if healthy.is_empty() {
            return None;
        }
        let Some(mut current) = self.current.clone() else {
            let first = self.best(&healthy, now)?;
            self.blind = self.rtt(&first).is_none();
            self.current = Some(first.clone());
            return Some(first);
        };
        if self.blind && healthy.iter().any(|r| self.rtt(r).is_some()) {
            // The current region was chosen before its RTT was known: a guess, which gives
            // way at once (no hysteresis, no ramp, no switch counted) to the first measures.
            if let Some(best) = self.best(&healthy, now) {
                self.blind = self.rtt(&best).is_none();
                self.current = Some(best.clone());
                self.ramp = None;
                self.better_since = None;
                current = best;
            }
        }
        if !candidates.contains(&current.as_str()) {
            // This method is not served by the current region: answer without moving.
            return self.best(&healthy, now);
        }
        if !healthy.contains(&current.as_str()) {
            // Failover: immediate and whole, there is nowhere else for the calls to go.
            let target = self.best(&healthy, now)?;
            self.move_to(target.clone(), now, false);
            return Some(target);
        }
        if let Some(target) = self.planned_move(&current, &healthy, now) {
            self.move_to(target, now, true);
        }
        Some(self.route(&healthy, now, rand))
    }

    /// The current region, if one was chosen.
    pub fn current(&self) -> Option<&str> {
        self.current.as_deref()
    }

    /// How many times the current region changed (the first choice does not count).
    pub fn switches(&self) -> u64 {
        self.switches
    }

    /// The move in progress, if a ramp is running (as of the last `choose`).
    pub fn ramp(&self) -> Option<&Ramp> {
        self.ramp.as_ref()
    }

    /// The share of calls the current region gets at `now` while a ramp runs, `None`
    /// when no ramp is running.
    pub fn ramp_fraction(&self, now: Instant) -> Option<f64> {
        let ramp = self.ramp.as_ref()?;
        let elapsed = now.saturating_duration_since(ramp.started);
        if elapsed >= self.config.ramp {
            return None;
        }
        let progress = elapsed.as_secs_f64() / self.config.ramp.as_secs_f64();
        let start = self.config.ramp_start;
        Some(start + (1.0 - start) * progress)
    }

    /// The last RTT reported for `region`.
    pub fn rtt(&self, region: &str) -> Option<Duration> {
        self.regions.get(region).and_then(|s| s.rtt)
    }

    /// Whether `region` was last reported healthy (`true` for a region never reported).
    pub fn is_healthy(&self, region: &str) -> bool {
        self.state(region).healthy
    }

    /// Whether `region` is healthy but still in its hold-down at `now`.
    pub fn is_held_down(&self, region: &str, now: Instant) -> bool {
        let state = self.state(region);
        state.healthy
            && state
                .recovered_at
                .is_some_and(|at| now.saturating_duration_since(at) < self.config.hold_down)
    }

    fn state(&self, region: &str) -> &RegionState {
        self.regions.get(region).unwrap_or(&RegionState::UNKNOWN)
    }

    /// The region to be in, ignoring hysteresis: the home region if usable, else the
    /// nearest not held down, else (everything held down) the nearest.
    fn best(&self, healthy: &[&str], now: Instant) -> Option<String> {
        if let Some(home) = self.home.as_deref() {
            if healthy.contains(&home) && !self.is_held_down(home, now) {
                return Some(home.to_string());
            }
        }
        self.nearest(
            healthy
                .iter()
                .copied()
                .filter(|r| !self.is_held_down(r, now)),
        )
        .or_else(|| self.nearest(healthy.iter().copied()))
        .map(str::to_string)
    }

    /// The nearest of `regions`: lowest RTT, regions without one last, ties by name.
    fn nearest<'a>(&self, regions: impl Iterator<Item = &'a str>) -> Option<&'a str> {
        regions.min_by(|a, b| {
            let (ra, rb) = (self.rtt(a), self.rtt(b));
            (ra.is_none(), ra)
                .cmp(&(rb.is_none(), rb))
                .then_with(|| a.cmp(b))
        })
    }

    /// Whether `a`'s RTT beats `b`'s by enough to be worth a move.
    fn beats(&self, a: &str, b: &str) -> bool {
        match (self.rtt(a), self.rtt(b)) {
            (Some(_), None) => true,
            (None, _) => false,
            (Some(a), Some(b)) => {
                let Some(gain) = b.checked_sub(a) else {
                    return false;
                };
                gain >= self.config.switch_min_gain
                    && gain.as_secs_f64() > self.config.switch_ratio * b.as_secs_f64()
            }
        }
    }

    /// Where to move from a healthy current region, if anywhere: to the home region at
    /// once, or to a region that has beaten the current one for `switch_after`.
    ///
    /// The timer runs while the better region is held down, so a region that recovered
    /// is moved back to as soon as its hold-down ends.
    fn planned_move(&mut self, current: &str, healthy: &[&str], now: Instant) -> Option<String> {
        if let Some(home) = self.home.as_deref() {
            if home == current {
                self.better_since = None;
                return None;
            }
            if healthy.contains(&home) && !self.is_held_down(home, now) {
                return Some(home.to_string());
            }
        }
        let challenged = healthy
            .iter()
            .any(|r| *r != current && self.beats(r, current));
        if !challenged {
            self.better_since = None;
            return None;
        }
        let since = *self.better_since.get_or_insert(now);
        if now.saturating_duration_since(since) < self.config.switch_after {
            return None;
        }
        self.nearest(
            healthy
                .iter()
                .copied()
                .filter(|r| *r != current && !self.is_held_down(r, now) && self.beats(r, current)),
        )
        .map(str::to_string)
    }

    /// Makes `target` current; with `ramp`, calls move over gradually.
    fn move_to(&mut self, target: String, now: Instant, ramp: bool) {
        if self.current.as_deref() == Some(target.as_str()) {
            return;
        }
        self.blind = self.rtt(&target).is_none();
        let from = self.current.replace(target.clone());
        if from.is_some() {
            self.switches = self.switches.saturating_add(1);
        }
        self.better_since = None;
        self.ramp = match from {
            Some(from) if ramp && !self.config.ramp.is_zero() => Some(Ramp {
                from,
                to: target,
                started: now,
            }),
            _ => None,
        };
    }

    /// The region for this call: the current one, or during a ramp the region being
    /// left for the share of calls not yet moved (if it is still healthy).
    fn route(&self, healthy: &[&str], now: Instant, rand: u64) -> String {
        let current = self.current.clone().unwrap_or_default();
        if let (Some(ramp), Some(fraction)) = (&self.ramp, self.ramp_fraction(now)) {
            if ramp.to == current && healthy.contains(&ramp.from.as_str()) && unit(rand) >= fraction
            {
                return ramp.from.clone();
            }
        }
        current
    }

    /// Drops a finished ramp, or one whose target is no longer current.
    fn expire_ramp(&mut self, now: Instant) {
        let finished = self.ramp_fraction(now).is_none();
        let stale = self
            .ramp
            .as_ref()
            .is_some_and(|r| self.current.as_deref() != Some(r.to.as_str()));
        if finished || stale {
            self.ramp = None;
        }
    }
}

impl Default for RegionSelector {
    /// Same as [`RegionSelector::new`].
    fn default() -> Self {
        Self::new()
    }
}

/// A uniform number in `[0, 1)` from any 64-bit `rand` (mixed first, so counters work).
fn unit(rand: u64) -> f64 {
    let mut z = rand.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region::estimate::RttEstimate;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    const AB: [&str; 2] = ["a", "b"];
    const ABC: [&str; 3] = ["a", "b", "c"];

    #[test]
    fn a_blind_first_choice_gives_way_to_the_first_measured_rtt() {
        let t0 = Instant::now();
        let mut sel = RegionSelector::new();
        sel.update("a", None, true, t0);
        sel.update("b", None, true, t0);
        // No RTT anywhere: a guess (by name).
        assert_eq!(sel.choose(&AB, t0, 1).as_deref(), Some("a"));
        // The first figure arrives, for b: b at once, no ramp, not counted as a switch.
        sel.update("b", Some(ms(40)), true, t0 + ms(10));
        assert_eq!(sel.choose(&AB, t0 + ms(10), 2).as_deref(), Some("b"));
        assert!(sel.ramp().is_none());
        assert_eq!(sel.switches(), 0);
        // From then on, the usual hysteresis: a nearer a must win for 1 s before moving.
        sel.update("a", Some(ms(5)), true, t0 + ms(20));
        assert_eq!(sel.choose(&AB, t0 + ms(20), 3).as_deref(), Some("b"));

        // A guess whose own RTT arrives together with a better region's: still a guess.
        let mut sel = RegionSelector::new();
        sel.update("a", None, true, t0);
        sel.update("b", None, true, t0);
        assert_eq!(sel.choose(&AB, t0, 1).as_deref(), Some("a"));
        sel.update("a", Some(ms(120)), true, t0 + ms(10));
        sel.update("b", Some(ms(40)), true, t0 + ms(10));
        assert_eq!(sel.choose(&AB, t0 + ms(10), 2).as_deref(), Some("b"));
        assert_eq!(sel.switches(), 0);
    }

    /// Counts, over `[from, to)` in steps of `step`, how many choices went to each
    /// region, with a counter as the random input.
    fn tally(
        sel: &mut RegionSelector,
        candidates: &[&str],
        from: Instant,
        to: Instant,
        step: Duration,
    ) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        let mut now = from;
        let mut r = 0u64;
        while now < to {
            r += 1;
            if let Some(region) = sel.choose(candidates, now, r) {
                *counts.entry(region).or_insert(0) += 1;
            }
            now += step;
        }
        counts
    }

    fn share(counts: &HashMap<String, usize>, region: &str) -> f64 {
        let total: usize = counts.values().sum();
        counts.get(region).copied().unwrap_or(0) as f64 / total as f64
    }

    #[test]
    fn nearest_healthy_region_is_chosen() {
        let t0 = Instant::now();
        let mut sel = RegionSelector::new();
        sel.update("a", Some(ms(40)), true, t0);
        sel.update("b", Some(ms(5)), true, t0);
        sel.update("c", Some(ms(1)), false, t0);
        assert_eq!(sel.choose(&ABC, t0, 0).as_deref(), Some("b"));
        assert_eq!(sel.current(), Some("b"));
        assert_eq!(sel.switches(), 0);
        // Order of candidates does not matter.
        let mut other = sel.clone();
        other.current = None;
        assert_eq!(other.choose(&["c", "b", "a"], t0, 0).as_deref(), Some("b"));
    }

    #[test]
    fn region_without_rtt_counts_as_farthest() {
        let t0 = Instant::now();
        let mut sel = RegionSelector::new();
        sel.update("a", None, true, t0);
        sel.update("b", Some(ms(300)), true, t0);
        assert_eq!(sel.choose(&AB, t0, 0).as_deref(), Some("b"));
        // A region never reported at all is usable when it is the only one.
        assert_eq!(sel.choose(&["z"], t0, 0).as_deref(), Some("z"));
    }

    #[test]
    fn no_healthy_candidate_gives_none() {
        let t0 = Instant::now();
        let mut sel = RegionSelector::new();
        sel.update("a", Some(ms(5)), true, t0);
        assert_eq!(sel.choose(&["a"], t0, 0).as_deref(), Some("a"));
        sel.update("a", Some(ms(5)), false, t0);
        assert_eq!(sel.choose(&["a"], t0, 0), None);
        assert_eq!(sel.choose(&[], t0, 0), None);
        assert_eq!(sel.current(), Some("a"));
    }

    #[test]
    fn similar_regions_never_flap() {
        // 5.0 vs 5.4 ms, trading places every 250 ms for 10 s.
        let t0 = Instant::now();
        let mut sel = RegionSelector::new();
        let mut now = t0;
        let mut first = None;
        for tick in 0..40u64 {
            let (a, b) = if tick % 2 == 0 {
                (us(5000), us(5400))
            } else {
                (us(5400), us(5000))
            };
            sel.update("a", Some(a), true, now);
            sel.update("b", Some(b), true, now);
            for k in 0..25 {
                let chosen = sel.choose(&AB, now + ms(10 * k), tick * 100 + k);
                first.get_or_insert(chosen.clone());
                assert_eq!(chosen, first.clone().flatten());
            }
            now += ms(250);
        }
        assert_eq!(sel.switches(), 0);
    }

    #[test]
    fn ten_percent_apart_never_flaps_at_any_scale() {
        let t0 = Instant::now();
        let mut sel = RegionSelector::new();
        let mut now = t0;
        for tick in 0..40u64 {
            let (a, b) = if tick % 2 == 0 {
                (ms(100), ms(110))
            } else {
                (ms(110), ms(100))
            };
            sel.update("a", Some(a), true, now);
            sel.update("b", Some(b), true, now);
            sel.choose(&AB, now, tick);
            now += ms(250);
        }
        assert_eq!(sel.switches(), 0);
    }

    #[test]
    fn small_absolute_gain_does_not_switch() {
        // 30% better but only 1.5 ms.
        let t0 = Instant::now();
        let mut sel = RegionSelector::new();
        sel.update("a", Some(us(5000)), true, t0);
        sel.choose(&AB, t0, 0);
        sel.update("b", Some(us(3500)), true, t0);
        tally(&mut sel, &AB, t0, t0 + Duration::from_secs(5), ms(10));
        assert_eq!(sel.current(), Some("a"));
        assert_eq!(sel.switches(), 0);
    }

    #[test]
    fn clearly_better_region_wins_after_switch_after() {
        let t0 = Instant::now();
        let mut sel = RegionSelector::new();
        sel.update("a", Some(ms(100)), true, t0);
        assert_eq!(sel.choose(&AB, t0, 0).as_deref(), Some("a"));
        sel.update("b", Some(ms(70)), true, t0);
        sel.choose(&AB, t0 + ms(10), 0);
        sel.choose(&AB, t0 + ms(900), 0);
        assert_eq!(sel.current(), Some("a"));
        sel.choose(&AB, t0 + ms(1010), 0);
        assert_eq!(sel.current(), Some("b"));
        assert_eq!(sel.switches(), 1);
    }

    #[test]
    fn advantage_must_be_continuous() {
        let t0 = Instant::now();
        let mut sel = RegionSelector::new();
        sel.update("a", Some(ms(100)), true, t0);
        sel.choose(&AB, t0, 0);
        // b is better for 0.6 s, then not, then better again for 0.6 s: no move.
        sel.update("b", Some(ms(70)), true, t0);
        sel.choose(&AB, t0 + ms(600), 0);
        sel.update("b", Some(ms(95)), true, t0 + ms(700));
        sel.choose(&AB, t0 + ms(700), 0);
        sel.update("b", Some(ms(70)), true, t0 + ms(800));
        sel.choose(&AB, t0 + ms(800), 0);
        sel.choose(&AB, t0 + ms(1400), 0);
        assert_eq!(sel.current(), Some("a"));
        sel.choose(&AB, t0 + ms(1800), 0);
        assert_eq!(sel.current(), Some("b"));
    }

    #[test]
    fn lasting_rtt_change_moves_traffic_within_a_few_seconds() {
        // RTT reports every 250 ms through RttEstimate, as the wiring does; a call every
        // 10 ms. At 2 s region a's RTT goes from 5 ms to 150 ms for good.
        let t0 = Instant::now();
        let mut sel = RegionSelector::new();
        let mut est_a = RttEstimate::new();
        let mut est_b = RttEstimate::new();
        let change = t0 + Duration::from_secs(2);
        let mut now = t0;
        let mut moved_at = None;
        let mut all_b_at = None;
        while now < t0 + Duration::from_secs(12) {
            if (now - t0).as_millis() % 250 == 0 {
                let a = if now >= change { ms(150) } else { ms(5) };
                est_a.observe(a.min(ms(5)), a, now);
                est_b.observe(ms(20), ms(20), now);
                sel.update("a", est_a.get(now), true, now);
                sel.update("b", est_b.get(now), true, now);
            }
            let chosen = sel.choose(&AB, now, (now - t0).as_millis() as u64);
            if now < change {
                assert_eq!(chosen.as_deref(), Some("a"));
            }
            if moved_at.is_none() && sel.current() == Some("b") {
                moved_at = Some(now - change);
            }
            if chosen.as_deref() == Some("b") && sel.ramp().is_none() && all_b_at.is_none() {
                all_b_at = Some(now - change);
            }
            now += ms(10);
        }
        let moved_at = moved_at.expect("never moved");
        assert!(
            moved_at <= Duration::from_secs(3),
            "moved after {moved_at:?}"
        );
        let all_b_at = all_b_at.expect("never fully moved");
        assert!(
            all_b_at <= Duration::from_secs(5),
            "all moved after {all_b_at:?}"
        );
        assert_eq!(sel.switches(), 1);
    }

    #[test]
    fn failover_on_unhealthy_is_immediate_and_whole() {
        let t0 = Instant::now();
        let mut sel = RegionSelector::new();
        sel.update("a", Some(ms(5)), true, t0);
        sel.update("b", Some(ms(30)), true, t0);
        sel.update("c", Some(ms(90)), true, t0);
        assert_eq!(sel.choose(&ABC, t0, 0).as_deref(), Some("a"));
        let down = t0 + Duration::from_secs(1);
        sel.update("a", Some(ms(5)), false, down);
        let counts = tally(&mut sel, &ABC, down, down + Duration::from_secs(1), ms(1));
        assert_eq!(counts.get("b"), Some(&1000));
        assert_eq!(sel.current(), Some("b"));
        assert_eq!(sel.ramp(), None);
        assert_eq!(sel.switches(), 1);
    }

    #[test]
    fn recovered_region_is_held_down_then_ramped_back() {
        let t0 = Instant::now();
        let mut sel = RegionSelector::new();
        sel.update("a", Some(ms(5)), true, t0);
        sel.update("b", Some(ms(40)), true, t0);
        sel.choose(&AB, t0, 0);
        sel.update("a", Some(ms(5)), false, t0 + ms(500));
        assert_eq!(sel.choose(&AB, t0 + ms(500), 0).as_deref(), Some("b"));
        let back = t0 + Duration::from_secs(2);
        sel.update("a", Some(ms(5)), true, back);
        assert!(sel.is_held_down("a", back));
        // Every call stays in b for the whole hold-down.
        let held = tally(&mut sel, &AB, back, back + ms(4990), ms(10));
        assert_eq!(held.len(), 1);
        assert!(held.contains_key("b"));
        assert_eq!(sel.current(), Some("b"));
        // Then traffic moves back, with a ramp.
        let after = back + Duration::from_secs(5);
        sel.choose(&AB, after, 0);
        assert_eq!(sel.current(), Some("a"));
        assert_eq!(sel.switches(), 2);
        let ramp = sel.ramp().cloned().expect("no ramp");
        assert_eq!((ramp.from.as_str(), ramp.to.as_str()), ("b", "a"));
    }

    #[test]
    fn flapping_during_hold_down_restarts_it() {
        let t0 = Instant::now();
        let mut sel = RegionSelector::new();
        sel.update("a", Some(ms(5)), true, t0);
        sel.update("b", Some(ms(40)), true, t0);
        sel.choose(&AB, t0, 0);
        sel.update("a", None, false, t0 + ms(100));
        sel.choose(&AB, t0 + ms(100), 0);
        sel.update("a", None, true, t0 + ms(1000));
        sel.update("a", None, false, t0 + ms(4000));
        sel.update("a", None, true, t0 + ms(5000));
        for k in 0..99 {
            sel.choose(&AB, t0 + ms(5000 + 50 * k), 0);
        }
        assert_eq!(sel.current(), Some("b"));
        sel.choose(&AB, t0 + ms(10_000), 0);
        assert_eq!(sel.current(), Some("a"));
    }

    #[test]
    fn ramp_fractions_grow_linearly_from_a_fifth() {
        let t0 = Instant::now();
        let mut sel = RegionSelector::new();
        sel.update("a", Some(ms(50)), true, t0);
        sel.choose(&AB, t0, 0);
        sel.update("b", Some(ms(10)), true, t0);
        sel.choose(&AB, t0, 0);
        let start = t0 + Duration::from_secs(1);
        sel.choose(&AB, start, 0);
        assert_eq!(sel.current(), Some("b"));
        let fraction = |at: Instant| sel.ramp_fraction(at).unwrap_or(f64::NAN);
        assert!((fraction(start) - 0.2).abs() < 1e-9);
        assert!((fraction(start + ms(1000)) - 0.6).abs() < 1e-9);
        assert!((fraction(start + ms(1500)) - 0.8).abs() < 1e-9);
        assert_eq!(sel.ramp_fraction(start + ms(2000)), None);
        let step = us(100);
        let early = tally(&mut sel, &AB, start, start + ms(100), step);
        let middle = tally(&mut sel, &AB, start + ms(950), start + ms(1050), step);
        let late = tally(&mut sel, &AB, start + ms(1900), start + ms(2000), step);
        let done = tally(&mut sel, &AB, start + ms(2000), start + ms(2100), step);
        let (e, m, l) = (share(&early, "b"), share(&middle, "b"), share(&late, "b"));
        assert!((e - 0.22).abs() < 0.05, "{e}");
        assert!((m - 0.6).abs() < 0.05, "{m}");
        assert!((l - 0.98).abs() < 0.05, "{l}");
        assert_eq!(share(&done, "b"), 1.0);
        assert_eq!(sel.ramp(), None);
    }

    #[test]
    fn ramp_stops_when_the_old_region_fails() {
        let t0 = Instant::now();
        let mut sel = RegionSelector::new();
        sel.update("a", Some(ms(50)), true, t0);
        sel.choose(&AB, t0, 0);
        sel.update("b", Some(ms(10)), true, t0);
        sel.choose(&AB, t0, 0);
        let start = t0 + Duration::from_secs(1);
        sel.choose(&AB, start, 0);
        assert!(sel.ramp().is_some());
        sel.update("a", None, false, start + ms(100));
        let counts = tally(&mut sel, &AB, start + ms(100), start + ms(600), ms(1));
        assert_eq!(counts.len(), 1);
        assert!(counts.contains_key("b"));
    }

    #[test]
    fn home_region_is_used_whenever_healthy() {
        let t0 = Instant::now();
        let mut sel = RegionSelector::new();
        sel.set_home(Some("c"));
        assert_eq!(sel.home(), Some("c"));
        sel.update("a", Some(ms(5)), true, t0);
        sel.update("c", Some(ms(80)), true, t0);
        let regions = ["a", "c"];
        let counts = tally(&mut sel, &regions, t0, t0 + Duration::from_secs(3), ms(10));
        assert_eq!(counts.len(), 1);
        assert!(counts.contains_key("c"));
        // Home down: nearest other at once; home back: after its hold-down.
        sel.update("c", None, false, t0 + Duration::from_secs(3));
        assert_eq!(
            sel.choose(&regions, t0 + Duration::from_secs(3), 0)
                .as_deref(),
            Some("a")
        );
        let back = t0 + Duration::from_secs(4);
        sel.update("c", None, true, back);
        sel.choose(&regions, back + ms(4900), 0);
        assert_eq!(sel.current(), Some("a"));
        sel.choose(&regions, back + ms(5000), 0);
        assert_eq!(sel.current(), Some("c"));
        // Clearing the home lets RTT decide again, with hysteresis.
        sel.set_home(None::<String>);
        let later = back + Duration::from_secs(10);
        sel.choose(&regions, later, 0);
        assert_eq!(sel.current(), Some("c"));
        sel.choose(&regions, later + ms(1000), 0);
        assert_eq!(sel.current(), Some("a"));
    }

    #[test]
    fn setting_home_moves_with_a_ramp() {
        let t0 = Instant::now();
        let mut sel = RegionSelector::new();
        sel.update("a", Some(ms(5)), true, t0);
        sel.update("b", Some(ms(60)), true, t0);
        sel.choose(&AB, t0, 0);
        sel.set_home(Some("b".to_string()));
        sel.choose(&AB, t0 + ms(10), 0);
        assert_eq!(sel.current(), Some("b"));
        assert!(sel.ramp().is_some_and(|r| r.from == "a"));
    }

    #[test]
    fn candidates_without_current_do_not_move_it() {
        let t0 = Instant::now();
        let mut sel = RegionSelector::new();
        sel.update("a", Some(ms(5)), true, t0);
        sel.update("b", Some(ms(50)), true, t0);
        sel.update("c", Some(ms(20)), true, t0);
        sel.choose(&ABC, t0, 0);
        assert_eq!(sel.choose(&["b", "c"], t0, 0).as_deref(), Some("c"));
        assert_eq!(sel.current(), Some("a"));
        assert_eq!(sel.switches(), 0);
    }

    #[test]
    fn failover_prefers_regions_not_held_down() {
        let t0 = Instant::now();
        let mut sel = RegionSelector::new();
        sel.update("a", Some(ms(5)), true, t0);
        sel.update("b", Some(ms(10)), true, t0);
        sel.update("c", Some(ms(50)), true, t0);
        sel.choose(&ABC, t0, 0);
        // b flapped a moment ago; a then fails: c, then b after its hold-down.
        sel.update("b", None, false, t0 + ms(100));
        sel.update("b", None, true, t0 + ms(200));
        sel.update("a", None, false, t0 + ms(300));
        assert_eq!(sel.choose(&ABC, t0 + ms(300), 0).as_deref(), Some("c"));
        // With everything held down, the nearest held-down region still serves.
        sel.update("c", None, false, t0 + ms(400));
        assert_eq!(sel.choose(&ABC, t0 + ms(400), 0).as_deref(), Some("b"));
    }

    #[test]
    fn forgetting_the_current_region_picks_afresh() {
        let t0 = Instant::now();
        let mut sel = RegionSelector::new();
        sel.update("a", Some(ms(5)), true, t0);
        sel.update("b", Some(ms(10)), true, t0);
        sel.choose(&AB, t0, 0);
        sel.forget("a");
        assert_eq!(sel.current(), None);
        assert_eq!(sel.choose(&["b"], t0, 0).as_deref(), Some("b"));
        assert_eq!(sel.switches(), 0);
    }

    #[test]
    fn update_without_rtt_keeps_the_last_figure() {
        let t0 = Instant::now();
        let mut sel = RegionSelector::new();
        sel.update("a", Some(ms(7)), true, t0);
        sel.update("a", None, true, t0 + ms(1));
        assert_eq!(sel.rtt("a"), Some(ms(7)));
        assert!(sel.is_healthy("a"));
        assert!(sel.is_healthy("never-seen"));
        assert!(!sel.is_held_down("a", t0));
    }
}
