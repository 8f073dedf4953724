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
    /// Whether the region has been reported healthy at least once.
    was_healthy: bool,
    /// When the region last turned from unhealthy to healthy.
    recovered_at: Option<Instant>,
}

impl RegionState {
    /// A region never reported: usable, but farther than any with an RTT.
    const UNKNOWN: RegionState = RegionState {
        rtt: None,
        healthy: true,
        was_healthy: false,
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
    /// region seen for the first time has no hold-down, nor has one that was never healthy
    /// before (its servers were still connecting): hold-down keeps traffic off a region
    /// that failed, not one that came up late.
    pub fn update(&mut self, region: &str, rtt: Option<Duration>, healthy: bool, now: Instant) {
        match self.regions.get_mut(region) {
            Some(state) => {
                if rtt.is_some() {
                    state.rtt = rtt;
                }
                if healthy && !state.healthy && state.was_healthy {
                    state.recovered_at = Some(now);
                }
                state.healthy = healthy;
                state.was_healthy |= healthy;
            }
            None => {
                self.regions.insert(
                    region.to_string(),
                    RegionState {
                        rtt,
                        healthy,
                        was_healthy: healthy,
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

    /// The nearest of `candidates` (the home region first), healthy or not: where calls go
    /// when every region that could take them is unhealthy. Moves nothing.
    pub fn nearest_any(&self, candidates: &[&str], now: Instant) -> Option<String> {
        let mut all = candidates.to_vec();
        all.sort_unstable();
        all.dedup();
        self.best(&all, now)
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
mod tests;
