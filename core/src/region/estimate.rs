//! Latency estimates that the routing decisions are made from.
//!
//! Routing needs two different figures, and DESIGN.md §7 keeps them apart on purpose:
//!
//! - the *service time* of one server, from call latencies. A server that starts to
//!   struggle must lose traffic at once, and one that recovers may win it back only
//!   gradually, so a single slow call counts fully while fast calls pull the figure down
//!   slowly. That is the peak EWMA of Finagle and linkerd: [`PeakEwma`].
//! - the *network RTT* to a region, from QUIC's own estimator. Here the opposite matters:
//!   one delayed ACK or a burst of queueing must not move traffic between continents, but a
//!   route change that lasts must be noticed within a few seconds. [`RttEstimate`] takes the
//!   median of the recent smoothed-RTT reports, which ignores lone outliers and follows a
//!   lasting change once it makes up half of the window.
//!
//! Both are plain values fed with samples and `Instant`s, so the tests drive them with a
//! simulated clock.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The decay time constant of [`PeakEwma`] used by Finagle and linkerd, and by DESIGN.md §7.
pub const DEFAULT_SERVICE_TIME_TAU: Duration = Duration::from_secs(10);

/// A peak-sensitive exponentially weighted moving average of a latency.
///
/// A sample above the current estimate replaces it outright; a sample below it is blended
/// in with the weight `1 - exp(-dt / tau)`, where `dt` is the time since the previous
/// sample, so the estimate forgets a spike over a few `tau`. Between samples the value
/// read by [`get`](Self::get) also decays towards zero with the same time constant, as in
/// Finagle and tower: a server that stopped receiving calls because its record looked bad
/// slowly looks attractive again and gets a chance to prove otherwise.
///
/// Costs O(1) time and memory per call; it never allocates.
///
/// ```
/// use meridian::region::estimate::PeakEwma;
/// use std::time::{Duration, Instant};
///
/// let t0 = Instant::now();
/// let mut ewma = PeakEwma::default();
/// ewma.observe(Duration::from_millis(2), t0);
/// ewma.observe(Duration::from_millis(50), t0 + Duration::from_millis(10));
/// // A spike is taken at once...
/// assert_eq!(ewma.get(t0 + Duration::from_millis(10)), Some(Duration::from_millis(50)));
/// // ...and forgotten slowly.
/// ewma.observe(Duration::from_millis(2), t0 + Duration::from_millis(20));
/// assert!(ewma.get(t0 + Duration::from_millis(20)).unwrap() > Duration::from_millis(49));
/// ```
#[derive(Debug, Clone)]
pub struct PeakEwma {
    tau: Duration,
    /// The estimate in seconds as of `updated_at`.
    value: f64,
    updated_at: Option<Instant>,
}

impl PeakEwma {
    /// An empty estimate with the decay time constant `tau`.
    ///
    /// A zero `tau` makes every sample replace the estimate, and turns off the decay
    /// between samples.
    pub fn new(tau: Duration) -> Self {
        Self {
            tau,
            value: 0.0,
            updated_at: None,
        }
    }

    /// The decay time constant this estimate was built with.
    pub fn tau(&self) -> Duration {
        self.tau
    }

    /// Feeds one latency sample taken at `now`.
    ///
    /// Samples are expected in time order; one stamped earlier than the previous sample is
    /// treated as simultaneous with it (it is blended with no weight unless it is a peak).
    pub fn observe(&mut self, sample: Duration, now: Instant) {
        let sample = sample.as_secs_f64();
        match self.updated_at {
            None => self.value = sample,
            Some(_) if sample > self.value => self.value = sample,
            Some(last) => {
                let w = self.weight(now.saturating_duration_since(last));
                self.value = self.value * w + sample * (1.0 - w);
            }
        }
        // Never move the stamp backwards, so a late sample cannot stretch the next decay.
        self.updated_at = Some(match self.updated_at {
            Some(last) if last > now => last,
            _ => now,
        });
    }

    /// The estimate as seen at `now`, or `None` before the first sample.
    ///
    /// The stored value decays towards zero for the time elapsed since the last sample.
    pub fn get(&self, now: Instant) -> Option<Duration> {
        let last = self.updated_at?;
        if self.tau.is_zero() {
            return Some(secs_to_duration(self.value));
        }
        let w = self.weight(now.saturating_duration_since(last));
        Some(secs_to_duration(self.value * w))
    }

    /// The estimate as of the last sample, without the decay towards zero, or `None`
    /// before the first sample. Useful for statistics.
    pub fn last_value(&self) -> Option<Duration> {
        self.updated_at.map(|_| secs_to_duration(self.value))
    }

    /// `true` until the first sample arrives.
    pub fn is_empty(&self) -> bool {
        self.updated_at.is_none()
    }

    /// The weight kept by the old estimate after `dt`: `exp(-dt / tau)`.
    fn weight(&self, dt: Duration) -> f64 {
        if self.tau.is_zero() {
            return 0.0;
        }
        (-dt.as_secs_f64() / self.tau.as_secs_f64()).exp()
    }
}

impl Default for PeakEwma {
    /// An empty estimate with [`DEFAULT_SERVICE_TIME_TAU`] (10 s).
    fn default() -> Self {
        Self::new(DEFAULT_SERVICE_TIME_TAU)
    }
}

/// How long [`RttEstimate`] keeps a sample by default.
pub const DEFAULT_RTT_WINDOW: Duration = Duration::from_secs(2);

/// How many samples [`RttEstimate`] keeps at most by default, whatever their age.
pub const DEFAULT_RTT_MAX_SAMPLES: usize = 64;

/// The network RTT to a region, fed from QUIC's per-connection RTT figures.
///
/// Each report carries the connection's minimum RTT and its smoothed RTT (RFC 9002). The
/// estimate is the median of the smoothed RTTs reported within the last `window`
/// (default 2 s, at most 64 samples): a single outlier, or any minority of them, cannot
/// move it, while a lasting change wins as soon as it fills half of the window. With
/// reports every 250 ms that is about one second after the change, in either direction.
///
/// The smallest minimum RTT in the window is kept as well ([`min_rtt`](Self::min_rtt)):
/// it is the path's propagation delay without queueing, useful in statistics. It is not
/// used for the estimate because QUIC keeps it for a connection's whole lifetime, so it
/// would never show a path that got longer.
///
/// When no report arrived within the window, the estimate stays at the last report's
/// value rather than vanishing: a region whose connections went quiet is not suddenly
/// unknown. [`is_stale`](Self::is_stale) tells that case apart.
///
/// Costs O(n log n) for `get` with n ≤ the sample cap (it sorts a copy), O(1) amortised
/// for `observe`; memory is bounded by the sample cap.
///
/// ```
/// use meridian::region::estimate::RttEstimate;
/// use std::time::{Duration, Instant};
///
/// let t0 = Instant::now();
/// let mut rtt = RttEstimate::default();
/// let ms = Duration::from_millis;
/// rtt.observe(ms(5), ms(5), t0);
/// rtt.observe(ms(5), ms(6), t0 + ms(250));
/// rtt.observe(ms(5), ms(90), t0 + ms(500)); // one outlier
/// assert!(rtt.get(t0 + ms(500)).unwrap() <= ms(6));
/// ```
#[derive(Debug, Clone)]
pub struct RttEstimate {
    window: Duration,
    max_samples: usize,
    /// `(when, smoothed, min)` in arrival order, oldest first.
    samples: VecDeque<(Instant, Duration, Duration)>,
}

impl RttEstimate {
    /// An empty estimate with [`DEFAULT_RTT_WINDOW`] (2 s) and
    /// [`DEFAULT_RTT_MAX_SAMPLES`] (64).
    pub fn new() -> Self {
        Self::with_window(DEFAULT_RTT_WINDOW, DEFAULT_RTT_MAX_SAMPLES)
    }

    /// An empty estimate keeping samples for `window`, and at most `max_samples` of them
    /// (at least one is always kept).
    pub fn with_window(window: Duration, max_samples: usize) -> Self {
        let max_samples = max_samples.max(1);
        Self {
            window,
            max_samples,
            samples: VecDeque::with_capacity(max_samples),
        }
    }

    /// Feeds one report of a connection's RTT figures, taken at `now`.
    ///
    /// `smoothed` below `min_rtt` (which a correct QUIC stack never reports) is raised to
    /// `min_rtt`.
    pub fn observe(&mut self, min_rtt: Duration, smoothed: Duration, now: Instant) {
        let smoothed = smoothed.max(min_rtt);
        if self.samples.len() == self.max_samples {
            self.samples.pop_front();
        }
        self.samples.push_back((now, smoothed, min_rtt));
        self.expire(now);
    }

    /// The median smoothed RTT over the window ending at `now`, or `None` before the
    /// first report. With an even number of samples the two middle ones are averaged.
    pub fn get(&self, now: Instant) -> Option<Duration> {
        let mut recent: Vec<Duration> = self.recent(now).map(|s| s.1).collect();
        if recent.is_empty() {
            // Nothing fresh: keep the last word rather than forgetting the region.
            return self.samples.back().map(|s| s.1);
        }
        recent.sort_unstable();
        let mid = recent.len() / 2;
        if recent.len() % 2 == 1 {
            Some(recent[mid])
        } else {
            Some(recent[mid - 1] + (recent[mid] - recent[mid - 1]) / 2)
        }
    }

    /// The smallest minimum RTT reported within the window ending at `now` (or the last
    /// one reported, when none is that recent); `None` before the first report.
    pub fn min_rtt(&self, now: Instant) -> Option<Duration> {
        self.recent(now)
            .map(|s| s.2)
            .min()
            .or_else(|| self.samples.back().map(|s| s.2))
    }

    /// `true` when no report arrived within the window ending at `now` (including when
    /// none ever did).
    pub fn is_stale(&self, now: Instant) -> bool {
        self.recent(now).next().is_none()
    }

    /// `true` until the first report arrives.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The samples younger than the window at `now`.
    fn recent(&self, now: Instant) -> impl Iterator<Item = &(Instant, Duration, Duration)> {
        let window = self.window;
        self.samples
            .iter()
            .filter(move |s| now.saturating_duration_since(s.0) <= window)
    }

    /// Drops samples older than the window, always keeping the newest one.
    fn expire(&mut self, now: Instant) {
        while self.samples.len() > 1 {
            match self.samples.front() {
                Some(s) if now.saturating_duration_since(s.0) > self.window => {
                    self.samples.pop_front();
                }
                _ => break,
            }
        }
    }
}

impl Default for RttEstimate {
    /// Same as [`RttEstimate::new`].
    fn default() -> Self {
        Self::new()
    }
}

/// Seconds to a `Duration`, clamping negatives, NaN and overflow instead of panicking.
fn secs_to_duration(secs: f64) -> Duration {
    if secs.is_nan() || secs <= 0.0 {
        return Duration::ZERO;
    }
    Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn close(a: Duration, b: Duration, tolerance: Duration) -> bool {
        a.abs_diff(b) <= tolerance
    }

    #[test]
    fn peak_ewma_is_empty_until_first_sample() {
        let t0 = Instant::now();
        let mut e = PeakEwma::default();
        assert!(e.is_empty());
        assert_eq!(e.get(t0), None);
        assert_eq!(e.last_value(), None);
        e.observe(ms(7), t0);
        assert!(!e.is_empty());
        assert_eq!(e.get(t0), Some(ms(7)));
        assert_eq!(e.tau(), Duration::from_secs(10));
    }

    #[test]
    fn peak_ewma_jumps_to_a_spike_at_once() {
        let t0 = Instant::now();
        let mut e = PeakEwma::default();
        e.observe(ms(1), t0);
        e.observe(ms(200), t0 + ms(1));
        assert_eq!(e.get(t0 + ms(1)), Some(ms(200)));
    }

    #[test]
    fn peak_ewma_forgets_a_spike_slowly() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(Duration::from_secs(10));
        e.observe(ms(100), t0);
        // One second of 1 ms samples every 10 ms: the weight kept is exp(-1/10) ≈ 0.905.
        let mut now = t0;
        for _ in 0..100 {
            now += ms(10);
            e.observe(ms(1), now);
        }
        // 100 blends of dt = 10 ms keep exp(-0.1) of the spike in total.
        let kept = (-0.1f64).exp();
        let expected = Duration::from_secs_f64((100.0 * kept + (1.0 - kept)) / 1000.0);
        let v = e.get(now).unwrap();
        assert!(
            close(v, expected, Duration::from_micros(10)),
            "{v:?} vs {expected:?}"
        );
        assert!(v > ms(90));
        // After a minute of fast samples it is back near 1 ms.
        for _ in 0..6000 {
            now += ms(10);
            e.observe(ms(1), now);
        }
        assert!(close(
            e.get(now).unwrap(),
            ms(1),
            Duration::from_micros(300)
        ));
    }

    #[test]
    fn peak_ewma_blend_uses_time_since_last_sample() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(Duration::from_secs(10));
        e.observe(ms(100), t0);
        // After exactly tau the old value keeps e^-1 of its weight.
        e.observe(ms(0), t0 + Duration::from_secs(10));
        let w = (-1.0f64).exp();
        let expected = Duration::from_secs_f64(0.1 * w);
        assert!(close(
            e.get(t0 + Duration::from_secs(10)).unwrap(),
            expected,
            Duration::from_micros(1)
        ));
    }

    #[test]
    fn peak_ewma_decays_towards_zero_when_idle() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(Duration::from_secs(10));
        e.observe(ms(100), t0);
        let later = e.get(t0 + Duration::from_secs(10)).unwrap();
        assert!(close(
            later,
            Duration::from_secs_f64(0.1 / std::f64::consts::E),
            Duration::from_micros(1)
        ));
        // Reading does not change the stored value.
        assert_eq!(e.last_value(), Some(ms(100)));
        assert_eq!(e.get(t0), Some(ms(100)));
    }

    #[test]
    fn peak_ewma_same_instant_samples_do_not_blend() {
        let t0 = Instant::now();
        let mut e = PeakEwma::default();
        e.observe(ms(50), t0);
        e.observe(ms(1), t0);
        assert_eq!(e.get(t0), Some(ms(50)));
    }

    #[test]
    fn peak_ewma_tolerates_out_of_order_instants() {
        let t0 = Instant::now() + Duration::from_secs(1);
        let mut e = PeakEwma::default();
        e.observe(ms(10), t0);
        e.observe(ms(5), t0 - ms(500));
        // Treated as simultaneous: no blend, and the stamp stays at t0.
        assert_eq!(e.get(t0), Some(ms(10)));
        e.observe(ms(30), t0 - ms(500));
        assert_eq!(e.get(t0), Some(ms(30)));
    }

    #[test]
    fn peak_ewma_zero_tau_follows_every_sample() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(Duration::ZERO);
        e.observe(ms(10), t0);
        e.observe(ms(3), t0 + ms(1));
        assert_eq!(e.get(t0 + ms(1)), Some(ms(3)));
        assert_eq!(e.get(t0 + Duration::from_secs(100)), Some(ms(3)));
    }

    /// Feeds `rtt` every 250 ms from `start` for `secs` seconds and returns the end time
    /// and the first time the estimate came within 10% of `rtt`.
    fn feed(
        est: &mut RttEstimate,
        start: Instant,
        rtt: Duration,
        secs: u64,
    ) -> (Instant, Option<Duration>) {
        let mut now = start;
        let mut reached = None;
        for _ in 0..secs * 4 {
            now += ms(250);
            est.observe(rtt.min(ms(5)), rtt, now);
            let got = est.get(now).unwrap();
            if reached.is_none() && close(got, rtt, rtt / 10) {
                reached = Some(now - start);
            }
        }
        (now, reached)
    }

    #[test]
    fn rtt_is_empty_until_first_report() {
        let t0 = Instant::now();
        let est = RttEstimate::default();
        assert!(est.is_empty());
        assert!(est.is_stale(t0));
        assert_eq!(est.get(t0), None);
        assert_eq!(est.min_rtt(t0), None);
    }

    #[test]
    fn rtt_follows_a_lasting_rise_within_a_few_seconds() {
        let t0 = Instant::now();
        let mut est = RttEstimate::default();
        let (now, _) = feed(&mut est, t0, ms(5), 5);
        assert_eq!(est.get(now), Some(ms(5)));
        let (now, reached) = feed(&mut est, now, ms(150), 5);
        let reached = reached.expect("never followed the change");
        assert!(reached <= Duration::from_secs(2), "took {reached:?}");
        assert_eq!(est.get(now), Some(ms(150)));
    }

    #[test]
    fn rtt_follows_a_lasting_drop_within_a_few_seconds() {
        let t0 = Instant::now();
        let mut est = RttEstimate::default();
        let (now, _) = feed(&mut est, t0, ms(150), 5);
        let (now, reached) = feed(&mut est, now, ms(5), 5);
        let reached = reached.expect("never followed the change");
        assert!(reached <= Duration::from_secs(2), "took {reached:?}");
        assert_eq!(est.get(now), Some(ms(5)));
    }

    #[test]
    fn rtt_ignores_a_single_outlier() {
        let t0 = Instant::now();
        let mut est = RttEstimate::default();
        let (mut now, _) = feed(&mut est, t0, ms(5), 3);
        now += ms(250);
        est.observe(ms(5), ms(400), now);
        assert_eq!(est.get(now), Some(ms(5)));
        for _ in 0..12 {
            now += ms(250);
            est.observe(ms(5), ms(5), now);
            assert_eq!(est.get(now), Some(ms(5)));
        }
    }

    #[test]
    fn rtt_ignores_a_single_low_outlier() {
        let t0 = Instant::now();
        let mut est = RttEstimate::default();
        let (mut now, _) = feed(&mut est, t0, ms(150), 3);
        now += ms(250);
        est.observe(ms(1), ms(1), now);
        assert_eq!(est.get(now), Some(ms(150)));
        assert_eq!(est.min_rtt(now), Some(ms(1)));
    }

    #[test]
    fn rtt_keeps_last_value_when_reports_stop() {
        let t0 = Instant::now();
        let mut est = RttEstimate::default();
        est.observe(ms(20), ms(25), t0);
        let later = t0 + Duration::from_secs(60);
        assert!(est.is_stale(later));
        assert_eq!(est.get(later), Some(ms(25)));
        assert_eq!(est.min_rtt(later), Some(ms(20)));
        assert!(!est.is_stale(t0));
    }

    #[test]
    fn rtt_averages_the_two_middle_samples() {
        let t0 = Instant::now();
        let mut est = RttEstimate::default();
        est.observe(ms(1), ms(10), t0);
        est.observe(ms(1), ms(20), t0 + ms(1));
        assert_eq!(est.get(t0 + ms(1)), Some(ms(15)));
    }

    #[test]
    fn rtt_memory_is_bounded() {
        let t0 = Instant::now();
        let mut est = RttEstimate::with_window(Duration::from_secs(3600), 16);
        for i in 0..10_000u64 {
            est.observe(ms(1), ms(i % 7 + 1), t0 + Duration::from_micros(i));
        }
        assert_eq!(est.samples.len(), 16);
        assert!(est.samples.capacity() < 64);
    }

    #[test]
    fn rtt_huge_figures_do_not_overflow() {
        let t0 = Instant::now();
        let mut est = RttEstimate::default();
        est.observe(Duration::MAX, Duration::MAX, t0);
        est.observe(Duration::MAX, Duration::MAX, t0);
        assert_eq!(est.get(t0), Some(Duration::MAX));
        let mut e = PeakEwma::default();
        e.observe(Duration::MAX, t0);
        assert_eq!(e.get(t0), Some(Duration::MAX));
    }

    #[test]
    fn rtt_smoothed_below_min_is_raised() {
        let t0 = Instant::now();
        let mut est = RttEstimate::default();
        est.observe(ms(8), ms(3), t0);
        assert_eq!(est.get(t0), Some(ms(8)));
    }
}
