//! The retry budget: one cap on retries and hedges together.
//!
//! Retries and hedged copies make a client resilient when a few calls fail, and make an
//! outage worse when many do: if every failed call is retried, a struggling server sees
//! twice the load at the worst moment. So every extra attempt (a retry or a hedge) must
//! be paid from one budget, earned by the ordinary calls: by default at most 10% extra
//! over the last 10 s. A small floor (10 per second by default) lets a client that makes
//! only a few calls still retry one of them. This is Finagle's retry budget, and the one
//! gRPC's retry throttling approximates.
//!
//! The window slides in ten buckets, so memory is fixed and every operation is O(1).

use std::time::{Duration, Instant};

/// How many buckets the sliding window is cut into.
const BUCKETS: usize = 10;

/// Tuning of [`RetryBudget`].
#[derive(Debug, Clone, PartialEq)]
pub struct RetryBudgetConfig {
    /// Extra attempts allowed per call over the window (default 0.1: 10%). Negative or
    /// NaN counts as 0.
    pub ratio: f64,
    /// Extra attempts allowed per second whatever the traffic, up to one second's worth
    /// at a time (default 10). Negative or NaN counts as 0.
    pub floor_per_sec: f64,
    /// How far back calls earn budget (default 10 s).
    pub window: Duration,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        Self {
            ratio: 0.1,
            floor_per_sec: 10.0,
            window: Duration::from_secs(10),
        }
    }
}

/// Calls and attempts paid by the ratio in one slice of the window.
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Which slice of time (counted from the budget's first use) this bucket holds.
    epoch: u64,
    calls: u64,
    spent: u64,
}

/// A budget for retries and hedges: `ratio` extra attempts per call over a sliding
/// window, plus a floor of `floor_per_sec`.
///
/// Call [`record_call`](Self::record_call) once per original call (not per attempt), and
/// [`try_spend`](Self::try_spend) before each retry or hedge; send it only if that
/// returned `true`.
///
/// ```
/// use meridian::region::budget::RetryBudget;
/// use std::time::Instant;
///
/// let now = Instant::now();
/// let mut budget = RetryBudget::new(0.1);
/// for _ in 0..100 {
///     budget.record_call(now);
/// }
/// let granted = (0..100).filter(|_| budget.try_spend(now)).count();
/// assert_eq!(granted, 10 + 10); // 10% of 100 calls, plus the floor of 10 per second
/// ```
#[derive(Debug, Clone)]
pub struct RetryBudget {
    ratio: f64,
    floor_per_sec: f64,
    bucket_width: Duration,
    buckets: [Bucket; BUCKETS],
    /// The instant epochs are counted from: the first one the budget saw.
    origin: Option<Instant>,
    floor_tokens: f64,
    floor_refilled_at: Option<Instant>,
}

impl RetryBudget {
    /// A budget allowing `ratio` extra attempts per call, with the default floor
    /// (10 per second) and window (10 s).
    pub fn new(ratio: f64) -> Self {
        Self::with_config(RetryBudgetConfig {
            ratio,
            ..RetryBudgetConfig::default()
        })
    }

    /// A budget with the given tuning. A zero window is taken as one millisecond.
    pub fn with_config(config: RetryBudgetConfig) -> Self {
        let window = config.window.max(Duration::from_millis(1));
        let floor_per_sec = non_negative(config.floor_per_sec);
        Self {
            ratio: non_negative(config.ratio),
            floor_per_sec,
            bucket_width: window / BUCKETS as u32,
            buckets: [Bucket::default(); BUCKETS],
            origin: None,
            floor_tokens: floor_per_sec,
            floor_refilled_at: None,
        }
    }

    /// Records one original call made at `now`; it earns `ratio` of an extra attempt for
    /// the length of the window.
    pub fn record_call(&mut self, now: Instant) {
        let bucket = self.bucket_mut(now);
        bucket.calls = bucket.calls.saturating_add(1);
    }

    /// Asks for one extra attempt (retry or hedge) at `now`: `true` means granted and
    /// paid for; `false` means the budget is spent and the attempt must not be made.
    ///
    /// The ratio's allowance is used first; the floor is the reserve.
    pub fn try_spend(&mut self, now: Instant) -> bool {
        if self.ratio_allowance(now) >= 1 {
            let bucket = self.bucket_mut(now);
            bucket.spent = bucket.spent.saturating_add(1);
            return true;
        }
        self.refill_floor(now);
        if self.floor_tokens >= 1.0 {
            self.floor_tokens -= 1.0;
            return true;
        }
        false
    }

    /// How many extra attempts would be granted at `now` if asked for in a burst.
    pub fn available(&self, now: Instant) -> u64 {
        let floor = match self.floor_refilled_at {
            Some(at) => self.floor_after(now.saturating_duration_since(at)),
            None => self.floor_tokens,
        };
        self.ratio_allowance(now).saturating_add(floor as u64)
    }

    /// Calls recorded within the window ending at `now`.
    pub fn calls_in_window(&self, now: Instant) -> u64 {
        let epoch = self.epoch(now);
        self.live(epoch).map(|b| b.calls).sum()
    }

    /// The ratio part of the budget left at `now`: `floor(ratio x calls) - spent` over
    /// the window.
    fn ratio_allowance(&self, now: Instant) -> u64 {
        let epoch = self.epoch(now);
        let (calls, spent) = self.live(epoch).fold((0u64, 0u64), |(c, s), b| {
            (c.saturating_add(b.calls), s.saturating_add(b.spent))
        });
        let earned = (calls as f64 * self.ratio).floor() as u64;
        earned.saturating_sub(spent)
    }

    /// The buckets still inside the window that ends in `epoch`.
    fn live(&self, epoch: u64) -> impl Iterator<Item = &Bucket> {
        self.buckets
            .iter()
            .filter(move |b| b.epoch <= epoch && epoch - b.epoch < BUCKETS as u64)
    }

    /// The bucket for `now`, cleared first if it still holds an older slice.
    fn bucket_mut(&mut self, now: Instant) -> &mut Bucket {
        if self.origin.is_none() {
            self.origin = Some(now);
        }
        let epoch = self.epoch(now);
        let bucket = &mut self.buckets[(epoch % BUCKETS as u64) as usize];
        if bucket.epoch != epoch {
            *bucket = Bucket {
                epoch,
                calls: 0,
                spent: 0,
            };
        }
        bucket
    }

    /// Which slice of the window `now` falls in. Instants before the first one seen
    /// count as the first slice.
    fn epoch(&self, now: Instant) -> u64 {
        let Some(origin) = self.origin else {
            return 0;
        };
        let elapsed = now.saturating_duration_since(origin).as_nanos();
        let width = self.bucket_width.as_nanos().max(1);
        u64::try_from(elapsed / width).unwrap_or(u64::MAX)
    }

    /// Adds the floor earned since the last refill, up to one second's worth.
    fn refill_floor(&mut self, now: Instant) {
        if let Some(at) = self.floor_refilled_at {
            self.floor_tokens = self.floor_after(now.saturating_duration_since(at));
        }
        self.floor_refilled_at = Some(match self.floor_refilled_at {
            Some(at) if at > now => at,
            _ => now,
        });
    }

    /// The floor tokens there would be after `elapsed` more time.
    fn floor_after(&self, elapsed: Duration) -> f64 {
        (self.floor_tokens + elapsed.as_secs_f64() * self.floor_per_sec).min(self.floor_per_sec)
    }
}

impl Default for RetryBudget {
    /// The default tuning: 10% over 10 s, floor 10 per second.
    fn default() -> Self {
        Self::with_config(RetryBudgetConfig::default())
    }
}

fn non_negative(x: f64) -> f64 {
    if x.is_nan() || x < 0.0 {
        0.0
    } else {
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: f64) -> Duration {
        Duration::from_secs_f64(n)
    }

    fn spend_all(b: &mut RetryBudget, now: Instant) -> usize {
        (0..100_000).take_while(|_| b.try_spend(now)).count()
    }

    #[test]
    fn burst_of_calls_earns_ratio_plus_floor() {
        let t0 = Instant::now();
        let mut b = RetryBudget::default();
        for _ in 0..1000 {
            b.record_call(t0);
        }
        assert_eq!(b.available(t0), 110);
        assert_eq!(spend_all(&mut b, t0), 110);
        assert!(!b.try_spend(t0));
        assert_eq!(b.available(t0), 0);
    }

    #[test]
    fn steady_traffic_with_retry_storm_is_capped() {
        // 1,000 calls over 10 s, each wanting to be retried.
        let t0 = Instant::now();
        let mut b = RetryBudget::default();
        let mut granted = 0;
        for i in 0..1000 {
            let now = t0 + secs(i as f64 * 0.01);
            b.record_call(now);
            if b.try_spend(now) {
                granted += 1;
            }
        }
        // 10% of the calls plus 10 per second over 10 s plus the initial second's floor.
        assert!(granted <= 100 + 100 + 10, "{granted}");
        assert!(granted >= 100, "{granted}");
    }

    #[test]
    fn without_calls_only_the_floor_is_granted() {
        let t0 = Instant::now();
        let mut b = RetryBudget::default();
        assert_eq!(spend_all(&mut b, t0), 10);
    }

    #[test]
    fn floor_refills_over_time_up_to_one_second() {
        let t0 = Instant::now();
        let mut b = RetryBudget::default();
        assert_eq!(spend_all(&mut b, t0), 10);
        assert_eq!(spend_all(&mut b, t0 + secs(0.5)), 5);
        assert_eq!(spend_all(&mut b, t0 + secs(60.0)), 10);
    }

    #[test]
    fn ratio_allowance_expires_with_the_window() {
        let t0 = Instant::now();
        let mut b = RetryBudget::with_config(RetryBudgetConfig {
            floor_per_sec: 0.0,
            ..RetryBudgetConfig::default()
        });
        for _ in 0..200 {
            b.record_call(t0);
        }
        assert_eq!(b.available(t0 + secs(9.0)), 20);
        assert_eq!(b.available(t0 + secs(10.5)), 0);
        assert_eq!(b.calls_in_window(t0 + secs(10.5)), 0);
        assert!(!b.try_spend(t0 + secs(10.5)));
    }

    #[test]
    fn spent_attempts_leave_the_window_too() {
        let t0 = Instant::now();
        let mut b = RetryBudget::with_config(RetryBudgetConfig {
            floor_per_sec: 0.0,
            ..RetryBudgetConfig::default()
        });
        for _ in 0..100 {
            b.record_call(t0);
        }
        assert_eq!(spend_all(&mut b, t0), 10);
        // Fresh calls after the window: fresh allowance, old spending forgotten.
        let later = t0 + secs(12.0);
        for _ in 0..50 {
            b.record_call(later);
        }
        assert_eq!(spend_all(&mut b, later), 5);
    }

    #[test]
    fn window_slides_bucket_by_bucket() {
        let t0 = Instant::now();
        let mut b = RetryBudget::with_config(RetryBudgetConfig {
            floor_per_sec: 0.0,
            ..RetryBudgetConfig::default()
        });
        for s in 0..10 {
            for _ in 0..10 {
                b.record_call(t0 + secs(s as f64));
            }
        }
        assert_eq!(b.calls_in_window(t0 + secs(9.5)), 100);
        assert_eq!(b.calls_in_window(t0 + secs(12.5)), 70);
        assert_eq!(b.available(t0 + secs(12.5)), 7);
    }

    #[test]
    fn zero_ratio_and_floor_grant_nothing() {
        let t0 = Instant::now();
        let mut b = RetryBudget::with_config(RetryBudgetConfig {
            ratio: 0.0,
            floor_per_sec: 0.0,
            window: Duration::from_secs(10),
        });
        for _ in 0..1000 {
            b.record_call(t0);
        }
        assert!(!b.try_spend(t0));
    }

    #[test]
    fn bad_tuning_is_sanitised() {
        let t0 = Instant::now();
        let mut b = RetryBudget::with_config(RetryBudgetConfig {
            ratio: f64::NAN,
            floor_per_sec: -5.0,
            window: Duration::ZERO,
        });
        b.record_call(t0);
        assert!(!b.try_spend(t0));
        let mut c = RetryBudget::new(-1.0);
        for _ in 0..100 {
            c.record_call(t0);
        }
        assert_eq!(spend_all(&mut c, t0), 10);
    }

    #[test]
    fn earlier_instants_do_not_panic() {
        let t0 = Instant::now() + secs(5.0);
        let mut b = RetryBudget::default();
        b.record_call(t0);
        b.record_call(t0 - secs(3.0));
        assert_eq!(b.calls_in_window(t0), 2);
        assert!(b.try_spend(t0 - secs(4.0)));
    }
}
