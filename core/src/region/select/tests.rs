//! Simulated-time tests of the region selector.

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

/// A region whose servers were still connecting when first reported was never healthy,
/// so it did not fail: when it comes up it is used at once, without a hold-down (a client
/// started with a home region sends its first calls there, not elsewhere for 5 s).
#[test]
fn a_region_that_comes_up_late_is_not_held_down() {
    let t0 = Instant::now();
    let mut sel = RegionSelector::new();
    sel.set_home(Some("a"));
    sel.update("a", None, false, t0);
    sel.update("b", Some(ms(5)), true, t0);
    assert_eq!(sel.choose(&AB, t0, 0).as_deref(), Some("b"));
    let up = t0 + ms(100);
    sel.update("a", Some(ms(40)), true, up);
    assert!(!sel.is_held_down("a", up));
    sel.choose(&AB, up, 0);
    assert_eq!(sel.current(), Some("a"));
    // Once it has been healthy, a failure and a recovery do hold it down.
    sel.update("a", Some(ms(40)), false, up + ms(100));
    let back = up + ms(200);
    sel.update("a", Some(ms(40)), true, back);
    assert!(sel.is_held_down("a", back));
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
