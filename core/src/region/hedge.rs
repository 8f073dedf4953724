//! When to hedge: the latency quantile after which a second copy of a call is sent.
//!
//! Hedging (Dean and Barroso, "The Tail at Scale") sends a second copy of a slow call to
//! another server or region and takes whichever answer comes first. Sent after the p95
//! latency, it costs about 5% extra calls and cuts the tail by an order of magnitude. The
//! delay must follow each method's own latency, which moves with load and with the
//! region in use, so [`HedgePolicy`] keeps the last N latencies of one method in a fixed
//! ring and recomputes the quantile every K samples by selection on a scratch copy:
//! memory is fixed, and the cost per sample is O(N / K) amortised (about 16 element
//! moves with the defaults), with no allocation after the first recomputation.
//!
//! Until enough samples have arrived there is no delay, and the caller should not hedge:
//! hedging on a guess would double the load of a cold method. Whether a hedge may be sent
//! at all is the [`RetryBudget`](super::budget::RetryBudget)'s decision, not this one's.

use std::time::Duration;

/// Tuning of [`HedgePolicy`].
#[derive(Debug, Clone, PartialEq)]
pub struct HedgeConfig {
    /// The latency quantile used as the delay, in `[0, 1]` (default 0.95).
    pub quantile: f64,
    /// How many of the latest samples are kept (default 1,000; at least 1).
    pub window: usize,
    /// No delay is given before this many samples (default 50; at least 1).
    pub min_samples: usize,
    /// The quantile is recomputed every this many samples (default 64; at least 1).
    pub recompute_every: usize,
}

impl Default for HedgeConfig {
    fn default() -> Self {
        Self {
            quantile: 0.95,
            window: 1000,
            min_samples: 50,
            recompute_every: 64,
        }
    }
}

/// The hedge delay of one method: a quantile of its recent latencies.
///
/// ```
/// use meridian::region::hedge::HedgePolicy;
/// use std::time::Duration;
///
/// let mut policy = HedgePolicy::new();
/// assert_eq!(policy.delay(), None);
/// for i in 0..1024u64 {
///     policy.observe(Duration::from_millis(1 + i % 100));
/// }
/// // p95 of 1..=100 ms.
/// assert_eq!(policy.delay(), Some(Duration::from_millis(95)));
/// ```
#[derive(Debug, Clone)]
pub struct HedgePolicy {
    config: HedgeConfig,
    /// The latest samples; once full, `next` is the oldest.
    ring: Vec<Duration>,
    next: usize,
    since_recompute: usize,
    /// Reused for each recomputation so it never reallocates.
    scratch: Vec<Duration>,
    delay: Option<Duration>,
}

impl HedgePolicy {
    /// A policy with the default tuning: p95 of the last 1,000 samples, from 50 samples
    /// on.
    pub fn new() -> Self {
        Self::with_config(HedgeConfig::default())
    }

    /// A policy with the given tuning; out-of-range values are brought into range
    /// (quantile clamped to `[0, 1]`, NaN taken as the default, counts at least 1,
    /// `min_samples` at most `window`).
    pub fn with_config(config: HedgeConfig) -> Self {
        let window = config.window.max(1);
        let quantile = if config.quantile.is_nan() {
            HedgeConfig::default().quantile
        } else {
            config.quantile.clamp(0.0, 1.0)
        };
        let config = HedgeConfig {
            quantile,
            window,
            min_samples: config.min_samples.clamp(1, window),
            recompute_every: config.recompute_every.max(1),
        };
        Self {
            ring: Vec::with_capacity(window),
            next: 0,
            since_recompute: 0,
            scratch: Vec::new(),
            delay: None,
            config,
        }
    }

    /// The tuning in use (after sanitising).
    pub fn config(&self) -> &HedgeConfig {
        &self.config
    }

    /// Records the latency of one finished call (successful ones: a failure's latency
    /// says little about when an answer usually comes).
    pub fn observe(&mut self, latency: Duration) {
        if self.ring.len() < self.config.window {
            self.ring.push(latency);
        } else {
            self.ring[self.next] = latency;
            self.next = (self.next + 1) % self.config.window;
        }
        self.since_recompute += 1;
        let first = self.delay.is_none() && self.ring.len() >= self.config.min_samples;
        if first || (self.delay.is_some() && self.since_recompute >= self.config.recompute_every) {
            self.recompute();
        }
    }

    /// How long to wait before sending a hedge: the configured quantile of the recent
    /// latencies, as of the last recomputation; `None` until `min_samples` arrived.
    pub fn delay(&self) -> Option<Duration> {
        self.delay
    }

    /// How many samples are held (at most the window).
    pub fn len(&self) -> usize {
        self.ring.len()
    }

    /// `true` before the first sample.
    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// Recomputes the quantile from the ring (nearest-rank definition).
    fn recompute(&mut self) {
        self.since_recompute = 0;
        let n = self.ring.len();
        if n == 0 {
            return;
        }
        self.scratch.clear();
        self.scratch.extend_from_slice(&self.ring);
        // Nearest rank: the smallest sample with at least `quantile` of them at or below.
        let rank = (self.config.quantile * n as f64).ceil() as usize;
        let index = rank.clamp(1, n) - 1;
        let (_, nth, _) = self.scratch.select_nth_unstable(index);
        self.delay = Some(*nth);
    }
}

impl Default for HedgePolicy {
    /// Same as [`HedgePolicy::new`].
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// 1 ms, except every `one_in`-th sample which is 100 ms.
    fn bimodal(i: u64, one_in: u64) -> Duration {
        if i % one_in == 0 {
            ms(100)
        } else {
            ms(1)
        }
    }

    #[test]
    fn no_delay_before_min_samples() {
        let mut p = HedgePolicy::new();
        assert!(p.is_empty());
        for _ in 0..49 {
            p.observe(ms(3));
            assert_eq!(p.delay(), None);
        }
        p.observe(ms(3));
        assert_eq!(p.delay(), Some(ms(3)));
        assert_eq!(p.len(), 50);
    }

    #[test]
    fn five_percent_slow_lands_at_the_p95_boundary() {
        let mut p = HedgePolicy::new();
        for i in 0..1024 {
            p.observe(bimodal(i, 20));
        }
        // At the last recomputation exactly 50 of the 1,000 samples in the window were
        // slow: the p95 is the largest fast sample, and hedging after it sends a copy of
        // precisely the slow calls.
        assert_eq!(p.delay(), Some(ms(1)));
        // A little more than 5% slow: the p95 is slow.
        let mut q = HedgePolicy::new();
        for i in 0..1024 {
            q.observe(bimodal(i, 15));
        }
        assert_eq!(q.delay(), Some(ms(100)));
        // A little less: the p95 is fast.
        let mut r = HedgePolicy::new();
        for i in 0..1024 {
            r.observe(bimodal(i, 25));
        }
        assert_eq!(r.delay(), Some(ms(1)));
    }

    #[test]
    fn spread_latencies_give_the_p95() {
        let mut p = HedgePolicy::new();
        // 1..=1000 µs in a scrambled order.
        for i in 0..1024u64 {
            p.observe(Duration::from_micros((i * 617) % 1000 + 1));
        }
        let d = p.delay().unwrap();
        assert!(
            d >= Duration::from_micros(940) && d <= Duration::from_micros(960),
            "{d:?}"
        );
    }

    #[test]
    fn configurable_quantile() {
        let mut p = HedgePolicy::with_config(HedgeConfig {
            quantile: 0.5,
            ..HedgeConfig::default()
        });
        for i in 0..1024u64 {
            p.observe(ms(1 + i % 100));
        }
        assert_eq!(p.delay(), Some(ms(50)));
    }

    #[test]
    fn follows_a_change_within_the_window() {
        let mut p = HedgePolicy::new();
        for _ in 0..1000 {
            p.observe(ms(2));
        }
        assert_eq!(p.delay(), Some(ms(2)));
        for _ in 0..1100 {
            p.observe(ms(40));
        }
        assert_eq!(p.delay(), Some(ms(40)));
    }

    #[test]
    fn memory_is_bounded() {
        let mut p = HedgePolicy::new();
        for i in 0..100_000u64 {
            p.observe(Duration::from_micros(i % 977));
        }
        assert_eq!(p.len(), 1000);
        assert!(p.ring.capacity() <= 1000 * 2);
        assert!(p.scratch.capacity() <= 1000 * 2);
        let ring_cap = p.ring.capacity();
        let scratch_cap = p.scratch.capacity();
        for i in 0..10_000u64 {
            p.observe(Duration::from_micros(i));
        }
        assert_eq!(p.ring.capacity(), ring_cap);
        assert_eq!(p.scratch.capacity(), scratch_cap);
    }

    #[test]
    fn recomputes_only_every_k_samples() {
        let mut p = HedgePolicy::with_config(HedgeConfig {
            min_samples: 10,
            recompute_every: 10,
            ..HedgeConfig::default()
        });
        for _ in 0..10 {
            p.observe(ms(1));
        }
        assert_eq!(p.delay(), Some(ms(1)));
        for _ in 0..9 {
            p.observe(ms(500));
        }
        // Not yet recomputed: the delay lags by at most K samples.
        assert_eq!(p.delay(), Some(ms(1)));
        p.observe(ms(500));
        assert_eq!(p.delay(), Some(ms(500)));
    }

    #[test]
    fn bad_tuning_is_sanitised() {
        let p = HedgePolicy::with_config(HedgeConfig {
            quantile: f64::NAN,
            window: 0,
            min_samples: 0,
            recompute_every: 0,
        });
        assert_eq!(p.config().quantile, 0.95);
        assert_eq!(p.config().window, 1);
        assert_eq!(p.config().min_samples, 1);
        assert_eq!(p.config().recompute_every, 1);
        let q = HedgePolicy::with_config(HedgeConfig {
            quantile: 7.0,
            min_samples: 5000,
            ..HedgeConfig::default()
        });
        assert_eq!(q.config().quantile, 1.0);
        assert_eq!(q.config().min_samples, 1000);
    }

    #[test]
    fn extreme_quantiles() {
        let mut max = HedgePolicy::with_config(HedgeConfig {
            quantile: 1.0,
            min_samples: 3,
            ..HedgeConfig::default()
        });
        let mut min = HedgePolicy::with_config(HedgeConfig {
            quantile: 0.0,
            min_samples: 3,
            ..HedgeConfig::default()
        });
        for d in [ms(5), ms(1), ms(9)] {
            max.observe(d);
            min.observe(d);
        }
        assert_eq!(max.delay(), Some(ms(9)));
        assert_eq!(min.delay(), Some(ms(1)));
    }

    #[test]
    fn window_of_one_tracks_the_last_sample() {
        let mut p = HedgePolicy::with_config(HedgeConfig {
            window: 1,
            min_samples: 1,
            recompute_every: 1,
            quantile: 0.95,
        });
        p.observe(ms(3));
        assert_eq!(p.delay(), Some(ms(3)));
        p.observe(ms(8));
        assert_eq!(p.delay(), Some(ms(8)));
        assert_eq!(p.len(), 1);
    }
}
