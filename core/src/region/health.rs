//! Outlier ejection with backoff, and slow start for a server coming back.
//!
//! A server that keeps failing should stop receiving calls quickly, but not forever: it
//! may only have restarted. So after a few consecutive failures (or at once, when a
//! connection attempt fails) it is *ejected* for a while, and each further ejection lasts
//! twice as long as the one before, up to a cap, so a server that is really down costs a
//! probe now and then instead of a stream of failed calls. Once it has stayed in service
//! long enough the doubling is forgiven.
//!
//! A server that has just come back is on *probation*: its weight in the balancer ramps
//! from 10% to 100% over the slow-start period, so a cold cache or a JIT warming up is not
//! flooded by everything its siblings were carrying. (Envoy ejects for 30 s x times
//! ejected and has no slow start across priorities; Finagle and linkerd do no slow start
//! at all.)
//!
//! [`Health`] is a plain value fed with outcomes and `Instant`s; reading it never
//! changes it.

use std::time::{Duration, Instant};

/// The weight of a server at the very start of its slow start.
pub const SLOW_START_INITIAL_WEIGHT: f64 = 0.1;

/// Tuning of [`Health`]. The defaults suit servers answering in milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    /// Consecutive failed calls that eject the server (default 3; 0 acts as 1).
    pub eject_after: u32,
    /// Length of the first ejection (default 1 s); the n-th lasts `base x 2^(n-1)`.
    pub base_ejection: Duration,
    /// The longest an ejection may last (default 30 s).
    pub max_ejection: Duration,
    /// How long the weight takes to ramp from 0.1 to 1.0 after an ejection ends
    /// (default 5 s; zero disables slow start).
    pub slow_start: Duration,
    /// How long a server must stay in service, without being ejected again, before its
    /// ejection count is forgiven and the next ejection starts from `base_ejection` again
    /// (default 60 s).
    pub forgive_after: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            eject_after: 3,
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(30),
            slow_start: Duration::from_secs(5),
            forgive_after: Duration::from_secs(60),
        }
    }
}

/// The health of one server: consecutive failures, ejection and probation.
///
/// ```
/// use meridian::region::health::Health;
/// use std::time::{Duration, Instant};
///
/// let t0 = Instant::now();
/// let mut health = Health::new();
/// for _ in 0..3 {
///     health.record_failure(t0);
/// }
/// assert!(!health.is_available(t0));
/// // Back after the first ejection (1 s), at a tenth of its weight.
/// let back = t0 + Duration::from_secs(1);
/// assert!(health.is_available(back));
/// assert!((health.slow_start_weight(back) - 0.1).abs() < 1e-9);
/// ```
#[derive(Debug, Clone)]
pub struct Health {
    config: HealthConfig,
    consecutive_failures: u32,
    times_ejected: u32,
    ejections_total: u64,
    ejected_until: Option<Instant>,
}

impl Health {
    /// A healthy server with the default [`HealthConfig`].
    pub fn new() -> Self {
        Self::with_config(HealthConfig::default())
    }

    /// A healthy server with the given tuning.
    pub fn with_config(config: HealthConfig) -> Self {
        Self {
            config,
            consecutive_failures: 0,
            times_ejected: 0,
            ejections_total: 0,
            ejected_until: None,
        }
    }

    /// The tuning in use.
    pub fn config(&self) -> &HealthConfig {
        &self.config
    }

    /// Records a call that succeeded at `now`: the failure streak ends.
    ///
    /// A success reported while the server is ejected (a call sent before the ejection)
    /// ends the streak but does not lift the ejection. A success after the server has
    /// been back for `forgive_after` also forgives its past ejections.
    pub fn record_success(&mut self, now: Instant) {
        self.consecutive_failures = 0;
        self.maybe_forgive(now);
    }

    /// Records a call that failed at `now`; the `eject_after`-th failure in a row ejects
    /// the server.
    ///
    /// Failures reported while the server is ejected are ignored: they come from calls
    /// sent before the ejection and say nothing new.
    pub fn record_failure(&mut self, now: Instant) {
        if self.is_ejected(now) {
            return;
        }
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        if self.consecutive_failures >= self.config.eject_after.max(1) {
            self.eject_now(now);
        }
    }

    /// Ejects the server at once (a refused or timed-out connection needs no second
    /// opinion). Does nothing if it is already ejected.
    pub fn eject_now(&mut self, now: Instant) {
        if self.is_ejected(now) {
            return;
        }
        self.maybe_forgive(now);
        self.times_ejected = self.times_ejected.saturating_add(1);
        self.ejections_total = self.ejections_total.saturating_add(1);
        self.consecutive_failures = 0;
        let length = self.ejection_length(self.times_ejected);
        // An absurd `max_ejection` could overflow the clock; a day is forever enough.
        let until = now
            .checked_add(length)
            .or_else(|| now.checked_add(Duration::from_secs(86_400)))
            .unwrap_or(now);
        self.ejected_until = Some(until);
    }

    /// Whether the server may receive calls at `now` (it is not ejected).
    pub fn is_available(&self, now: Instant) -> bool {
        !self.is_ejected(now)
    }

    /// Whether the server is ejected at `now`.
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|until| now < until)
    }

    /// The weight the balancer gives the server at `now`, in `[0, 1]`: 0 while ejected,
    /// ramping linearly from 0.1 to 1.0 over `slow_start` after an ejection ends, 1.0
    /// otherwise.
    pub fn slow_start_weight(&self, now: Instant) -> f64 {
        let Some(until) = self.ejected_until else {
            return 1.0;
        };
        if now < until {
            return 0.0;
        }
        let slow_start = self.config.slow_start;
        let since = now.saturating_duration_since(until);
        if slow_start.is_zero() || since >= slow_start {
            return 1.0;
        }
        let progress = since.as_secs_f64() / slow_start.as_secs_f64();
        SLOW_START_INITIAL_WEIGHT + (1.0 - SLOW_START_INITIAL_WEIGHT) * progress
    }

    /// Whether the server is back from an ejection and still ramping up at `now`.
    pub fn on_probation(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|until| {
            now >= until && now.saturating_duration_since(until) < self.config.slow_start
        })
    }

    /// How many times the server was ejected since it was last forgiven.
    pub fn times_ejected(&self) -> u32 {
        self.times_ejected
    }

    /// Every ejection since the server was added, forgiven or not (for metrics).
    pub fn ejections_total(&self) -> u64 {
        self.ejections_total
    }

    /// When the latest ejection ends (or ended); `None` if the server was never ejected.
    pub fn ejected_until(&self) -> Option<Instant> {
        self.ejected_until
    }

    /// Failed calls in a row since the last success or ejection.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// `base x 2^(n-1)`, capped, without overflowing for any `n`.
    fn ejection_length(&self, n: u32) -> Duration {
        let doublings = n.saturating_sub(1).min(31);
        self.config
            .base_ejection
            .checked_mul(1u32 << doublings)
            .unwrap_or(self.config.max_ejection)
            .min(self.config.max_ejection)
    }

    /// Forgets past ejections if the server stayed in service for `forgive_after`.
    fn maybe_forgive(&mut self, now: Instant) {
        if let Some(until) = self.ejected_until {
            if now.saturating_duration_since(until) >= self.config.forgive_after {
                self.times_ejected = 0;
            }
        }
    }
}

impl Default for Health {
    /// Same as [`Health::new`].
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: f64) -> Duration {
        Duration::from_secs_f64(n)
    }

    fn fail_n(h: &mut Health, n: u32, now: Instant) {
        for _ in 0..n {
            h.record_failure(now);
        }
    }

    #[test]
    fn new_server_is_available_at_full_weight() {
        let t0 = Instant::now();
        let h = Health::default();
        assert!(h.is_available(t0));
        assert_eq!(h.slow_start_weight(t0), 1.0);
        assert_eq!(h.times_ejected(), 0);
        assert_eq!(h.ejected_until(), None);
        assert!(!h.on_probation(t0));
    }

    #[test]
    fn ejected_after_three_consecutive_failures() {
        let t0 = Instant::now();
        let mut h = Health::new();
        fail_n(&mut h, 2, t0);
        assert!(h.is_available(t0));
        assert_eq!(h.consecutive_failures(), 2);
        h.record_failure(t0);
        assert!(!h.is_available(t0));
        assert_eq!(h.times_ejected(), 1);
        assert_eq!(h.ejected_until(), Some(t0 + secs(1.0)));
        assert_eq!(h.slow_start_weight(t0), 0.0);
    }

    #[test]
    fn a_success_breaks_the_streak() {
        let t0 = Instant::now();
        let mut h = Health::new();
        fail_n(&mut h, 2, t0);
        h.record_success(t0);
        fail_n(&mut h, 2, t0);
        assert!(h.is_available(t0));
    }

    #[test]
    fn eject_now_skips_the_count() {
        let t0 = Instant::now();
        let mut h = Health::new();
        h.eject_now(t0);
        assert!(!h.is_available(t0 + secs(0.999)));
        assert!(h.is_available(t0 + secs(1.0)));
    }

    #[test]
    fn ejections_double_up_to_the_cap() {
        let t0 = Instant::now();
        let mut h = Health::new();
        let mut now = t0;
        let mut lengths = Vec::new();
        for _ in 0..8 {
            h.eject_now(now);
            let until = h.ejected_until().unwrap();
            lengths.push((until - now).as_secs());
            now = until; // fails again the moment it comes back
        }
        assert_eq!(lengths, vec![1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(h.times_ejected(), 8);
    }

    #[test]
    fn failures_while_ejected_are_ignored() {
        let t0 = Instant::now();
        let mut h = Health::new();
        h.eject_now(t0);
        fail_n(&mut h, 10, t0 + secs(0.5));
        h.eject_now(t0 + secs(0.5));
        assert_eq!(h.times_ejected(), 1);
        assert_eq!(h.ejected_until(), Some(t0 + secs(1.0)));
        assert_eq!(h.consecutive_failures(), 0);
    }

    #[test]
    fn success_while_ejected_does_not_lift_it() {
        let t0 = Instant::now();
        let mut h = Health::new();
        h.eject_now(t0);
        h.record_success(t0 + secs(0.1));
        assert!(!h.is_available(t0 + secs(0.2)));
    }

    #[test]
    fn slow_start_ramps_from_a_tenth_to_full() {
        let t0 = Instant::now();
        let mut h = Health::new();
        h.eject_now(t0);
        let back = t0 + secs(1.0);
        let w = |dt: f64| h.slow_start_weight(back + secs(dt));
        assert!((w(0.0) - 0.1).abs() < 1e-9);
        assert!((w(2.5) - 0.55).abs() < 1e-9);
        assert!((w(4.999) - 1.0).abs() < 1e-3);
        assert_eq!(w(5.0), 1.0);
        assert_eq!(w(100.0), 1.0);
        assert!(h.on_probation(back + secs(1.0)));
        assert!(!h.on_probation(back + secs(5.0)));
        // Monotone.
        let mut last = 0.0;
        for i in 0..=50 {
            let x = w(i as f64 * 0.1);
            assert!(x >= last);
            last = x;
        }
    }

    #[test]
    fn zero_slow_start_returns_at_full_weight() {
        let t0 = Instant::now();
        let mut h = Health::with_config(HealthConfig {
            slow_start: Duration::ZERO,
            ..HealthConfig::default()
        });
        h.eject_now(t0);
        assert_eq!(h.slow_start_weight(t0 + secs(1.0)), 1.0);
    }

    #[test]
    fn failing_on_probation_ejects_for_longer() {
        let t0 = Instant::now();
        let mut h = Health::new();
        h.eject_now(t0);
        let back = t0 + secs(1.0);
        fail_n(&mut h, 3, back + secs(0.5));
        assert_eq!(h.times_ejected(), 2);
        assert_eq!(h.ejected_until(), Some(back + secs(2.5)));
    }

    #[test]
    fn long_good_service_forgives_past_ejections() {
        let t0 = Instant::now();
        let mut h = Health::new();
        let mut now = t0;
        for _ in 0..4 {
            h.eject_now(now);
            now = h.ejected_until().unwrap();
        }
        assert_eq!(h.times_ejected(), 4);
        // A minute of good service later, the next ejection starts over at 1 s.
        let later = now + secs(61.0);
        h.record_success(later);
        assert_eq!(h.times_ejected(), 0);
        h.eject_now(later);
        assert_eq!(h.ejected_until(), Some(later + secs(1.0)));
        // Forgiveness also applies without a success in between.
        let mut g = Health::new();
        g.eject_now(t0);
        g.eject_now(t0 + secs(1.0));
        let much_later = t0 + secs(3.0) + secs(60.0);
        g.eject_now(much_later);
        assert_eq!(g.times_ejected(), 1);
    }

    #[test]
    fn eject_after_zero_acts_as_one() {
        let t0 = Instant::now();
        let mut h = Health::with_config(HealthConfig {
            eject_after: 0,
            ..HealthConfig::default()
        });
        h.record_failure(t0);
        assert!(!h.is_available(t0));
    }

    #[test]
    fn huge_base_is_capped_without_overflow() {
        let t0 = Instant::now();
        let mut h = Health::with_config(HealthConfig {
            base_ejection: Duration::from_secs(u64::MAX / 4),
            max_ejection: Duration::from_secs(30),
            ..HealthConfig::default()
        });
        h.eject_now(t0);
        assert_eq!(h.ejected_until(), Some(t0 + secs(30.0)));
        assert_eq!(h.ejection_length(u32::MAX), Duration::from_secs(30));
        // An ejection that would overflow the clock is held to a day instead of panicking.
        let mut forever = Health::with_config(HealthConfig {
            base_ejection: Duration::MAX,
            max_ejection: Duration::MAX,
            ..HealthConfig::default()
        });
        forever.eject_now(t0);
        assert!(!forever.is_available(t0 + secs(3600.0)));
    }
}
