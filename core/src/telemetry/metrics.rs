//! Counters kept on the call path (atomics only), and their Prometheus text exposition.
//!
//! The call path only touches atomics: a per-method row found once per call, a status
//! counter, an in-flight gauge and a latency histogram with fixed buckets. Everything else
//! (connections, buffered bytes, a region client's RTTs and health) is read from the
//! components' own counters when a scrape asks. The text is written by
//! [`prometheus-client`](https://docs.rs/prometheus-client), the Prometheus project's own
//! Rust crate: it has no global registry, does the OpenMetrics escaping and suffixes, and
//! lets each component encode a snapshot on demand (its `Collector`), so nothing is copied
//! into a metrics library on the call path.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::wire::Code;

/// Upper bounds of the latency histogram's buckets, in microseconds (100 µs to 10 s);
/// one more bucket counts everything slower.
const BUCKETS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// A latency histogram: fixed buckets, lock-free.
#[derive(Debug, Default)]
pub(crate) struct Latency {
    buckets: [AtomicU64; BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Latency {
    /// Counts one call that took `d`.
    pub(crate) fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = BUCKETS_US.partition_point(|&b| b < us);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// A snapshot: per-bucket counts (not cumulative; the last bound is `+Inf`), the count
    /// and the sum in seconds.
    pub(crate) fn snapshot(&self) -> Histogram {
        let buckets: Vec<(f64, u64)> = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let bound = BUCKETS_US.get(i).map_or(f64::MAX, |&us| us as f64 / 1e6);
                (bound, n.load(Ordering::Relaxed))
            })
            .collect();
        Histogram {
            count: buckets.iter().map(|(_, n)| n).sum(),
            sum: self.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
            buckets,
        }
    }
}

/// A histogram as read at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// Observations.
    pub count: u64,
    /// Their sum, in seconds.
    pub sum: f64,
    /// `(upper bound in seconds, observations in this bucket alone)`; the last bound is
    /// `f64::MAX` (`+Inf`).
    pub buckets: Vec<(f64, u64)>,
}

/// One method's counters on a server.
#[derive(Debug, Default)]
pub(crate) struct MethodMetrics {
    codes: [AtomicU64; 17],
    in_flight: AtomicI64,
    latency: Latency,
}

impl MethodMetrics {
    /// A call of the method starts (its handler may run).
    pub(crate) fn start(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A call started with [`start`](Self::start) ended with `code` after `took`.
    pub(crate) fn finish(&self, code: Code, took: Duration) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.codes[code as usize].fetch_add(1, Ordering::Relaxed);
        self.latency.observe(took);
    }
}

/// Label of the calls to methods the server does not know.
pub(crate) const UNKNOWN_METHOD: &str = "<unknown>";
/// Label of the calls to methods past [`TransportConfig::max_metric_methods`](crate::TransportConfig::max_metric_methods).
pub(crate) const OTHER_METHODS: &str = "<other>";

/// Per-method counters, one row per method name up to a limit: names come from peers (a
/// proxy forwards any name), so past `limit` distinct names they share one row.
#[derive(Debug)]
pub(crate) struct MethodTable {
    rows: RwLock<HashMap<Arc<str>, Arc<MethodMetrics>>>,
    limit: usize,
}

impl MethodTable {
    pub(crate) fn new(limit: usize) -> MethodTable {
        MethodTable {
            rows: RwLock::new(HashMap::new()),
            limit,
        }
    }

    /// The row of `method` (`None`: a method the server does not serve).
    pub(crate) fn row(&self, method: Option<&str>) -> Arc<MethodMetrics> {
        let name = method.unwrap_or(UNKNOWN_METHOD);
        if let Ok(rows) = self.rows.read() {
            if let Some(r) = rows.get(name) {
                return r.clone();
            }
        }
        let mut rows = match self.rows.write() {
            Ok(r) => r,
            Err(poisoned) => poisoned.into_inner(),
        };
        // `limit` rows of their own at most, beside the two shared ones.
        let shared = usize::from(rows.contains_key(UNKNOWN_METHOD))
            + usize::from(rows.contains_key(OTHER_METHODS));
        let full = rows.len() - shared >= self.limit;
        let name = if full && name != UNKNOWN_METHOD && !rows.contains_key(name) {
            OTHER_METHODS
        } else {
            name
        };
        rows.entry(Arc::from(name))
            .or_insert_with(|| Arc::new(MethodMetrics::default()))
            .clone()
    }

    /// Writes the per-method families under `prefix`.
    pub(crate) fn encode(&self, w: &mut MetricsWriter<'_>, prefix: &str) -> fmt::Result {
        let rows: Vec<(Arc<str>, Arc<MethodMetrics>)> = match self.rows.read() {
            Ok(r) => r.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            Err(_) => return Ok(()),
        };
        let mut calls = Vec::new();
        let mut in_flight = Vec::new();
        let mut latency = Vec::new();
        for (method, m) in &rows {
            for (i, n) in m.codes.iter().enumerate() {
                let n = n.load(Ordering::Relaxed);
                if n > 0 {
                    let code = Code::from_u64(i as u64).name();
                    calls.push((
                        vec![("method", method.to_string()), ("code", code.into())],
                        n,
                    ));
                }
            }
            in_flight.push((
                vec![("method", method.to_string())],
                m.in_flight.load(Ordering::Relaxed).max(0),
            ));
            latency.push((vec![("method", method.to_string())], m.latency.snapshot()));
        }
        w.counter(
            &format!("{prefix}_calls"),
            "Calls ended, by method and status code.",
            &calls,
        )?;
        w.gauge(
            &format!("{prefix}_calls_in_flight"),
            "Calls running now, by method.",
            &in_flight,
        )?;
        w.histogram(
            &format!("{prefix}_call_duration_seconds"),
            "Time from a call's HEADERS to its TRAILERS, by method.",
            &latency,
        )
    }
}

/// Labels of one row: `(name, value)` pairs.
pub type Labels = Vec<(&'static str, String)>;

/// Writes metric families in the Prometheus text format; given to
/// [`MetricsSource::encode`].
pub struct MetricsWriter<'a> {
    enc: DescriptorEncoder<'a>,
}

impl fmt::Debug for MetricsWriter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsWriter").finish_non_exhaustive()
    }
}

impl MetricsWriter<'_> {
    /// A counter family (`name` gets the `_total` suffix); rows with no labels are fine.
    pub fn counter(&mut self, name: &str, help: &str, rows: &[(Labels, u64)]) -> fmt::Result {
        self.family(name, help, MetricType::Counter, rows, |m, v| {
            m.encode_counter::<NoLabelSet, u64, u64>(v, None)
        })
    }

    /// A gauge family.
    pub fn gauge(&mut self, name: &str, help: &str, rows: &[(Labels, i64)]) -> fmt::Result {
        self.family(name, help, MetricType::Gauge, rows, |m, v| {
            m.encode_gauge(v)
        })
    }

    /// A gauge family of floating-point values (seconds, ratios).
    pub fn gauge_f64(&mut self, name: &str, help: &str, rows: &[(Labels, f64)]) -> fmt::Result {
        self.family(name, help, MetricType::Gauge, rows, |m, v| {
            m.encode_gauge(v)
        })
    }

    /// A histogram family.
    pub fn histogram(
        &mut self,
        name: &str,
        help: &str,
        rows: &[(Labels, Histogram)],
    ) -> fmt::Result {
        self.family(name, help, MetricType::Histogram, rows, |m, h| {
            m.encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None)
        })
    }

    /// One family: its descriptor, then each row under its labels (none: no braces).
    fn family<V>(
        &mut self,
        name: &str,
        help: &str,
        kind: MetricType,
        rows: &[(Labels, V)],
        mut encode: impl FnMut(&mut MetricEncoder<'_>, &V) -> fmt::Result,
    ) -> fmt::Result {
        let mut m = self.enc.encode_descriptor(name, help, None, kind)?;
        for (labels, v) in rows {
            if labels.is_empty() {
                encode(&mut m, v)?;
            } else {
                let labels = escaped(labels);
                encode(&mut m.encode_family(&labels.as_slice())?, v)?;
            }
        }
        Ok(())
    }
}

/// Label values escaped for the text format (backslash, double quote, line feed), which
/// prometheus-client writes as given: a method name comes from a peer, and one with a
/// quote or a newline must not break the exposition.
fn escaped(labels: &Labels) -> Vec<(&str, std::borrow::Cow<'_, str>)> {
    labels
        .iter()
        .map(|(k, v)| {
            let v = if v.contains(['\\', '"', '\n']) {
                std::borrow::Cow::Owned(
                    v.replace('\\', "\\\\")
                        .replace('"', "\\\"")
                        .replace('\n', "\\n"),
                )
            } else {
                std::borrow::Cow::Borrowed(v.as_str())
            };
            (*k, v)
        })
        .collect()
}

/// Something whose figures a [`Metrics`] registry exposes: a server, a region client, a
/// proxy, or your own.
pub trait MetricsSource: Send + Sync + 'static {
    /// Writes the source's families; called on every scrape.
    fn encode(&self, w: &mut MetricsWriter<'_>) -> fmt::Result;

    /// Whether the source is ready to take traffic (`/readyz`): `Err` says why not.
    fn ready(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Adapts a source to prometheus-client's collector.
struct Source(Arc<dyn MetricsSource>);

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Source")
    }
}

impl Collector for Source {
    fn encode(&self, enc: DescriptorEncoder<'_>) -> fmt::Result {
        self.0.encode(&mut MetricsWriter { enc })
    }
}

/// The figures exposed on one metrics endpoint: the sources added to it, read on every
/// scrape.
///
/// ```
/// let metrics = meridian::telemetry::Metrics::new();
/// assert!(metrics.render().ends_with("# EOF\n"));
/// ```
#[derive(Default)]
pub struct Metrics {
    sources: Mutex<Vec<Arc<dyn MetricsSource>>>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// No sources yet.
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// Adds a source (a server's [`metrics_source`](crate::Server::metrics_source), ...).
    pub fn add(&self, source: Arc<dyn MetricsSource>) {
        if let Ok(mut s) = self.sources.lock() {
            s.push(source);
        }
    }

    fn sources(&self) -> Vec<Arc<dyn MetricsSource>> {
        self.sources.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Every source's figures in the OpenMetrics text format (which Prometheus scrapes),
    /// ending with `# EOF`.
    pub fn render(&self) -> String {
        let mut registry = Registry::with_prefix("meridian");
        for s in self.sources() {
            registry.register_collector(Box::new(Source(s)));
        }
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::warn!(error = %e, "cannot encode the metrics");
        }
        out
    }

    /// Whether every source is ready; `Err` lists the reasons of those that are not.
    pub fn ready(&self) -> Result<(), String> {
        let reasons: Vec<String> = self
            .sources()
            .iter()
            .filter_map(|s| s.ready().err())
            .collect();
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_lands_in_the_first_bucket_whose_bound_is_not_below_it() {
        let l = Latency::default();
        l.observe(Duration::from_micros(100));
        l.observe(Duration::from_micros(101));
        l.observe(Duration::from_secs(60));
        let h = l.snapshot();
        assert_eq!(h.count, 3);
        assert_eq!(h.buckets[0], (0.0001, 1));
        assert_eq!(h.buckets[1], (0.00025, 1));
        assert_eq!(h.buckets.last(), Some(&(f64::MAX, 1)));
        assert!((h.sum - 60.000201).abs() < 1e-9);
    }

    #[test]
    fn method_rows_stop_growing_at_the_limit() {
        let t = MethodTable::new(2);
        for name in ["a", "b", "c", "d"] {
            t.row(Some(name)).start();
        }
        t.row(None).start();
        let rows = t.rows.read().unwrap();
        let mut names: Vec<&str> = rows.keys().map(|k| &**k).collect();
        names.sort();
        // Two own names, then everything shares "<other>" (the unknown row is one more).
        assert_eq!(names.len(), 4, "{names:?}");
        assert!(names.contains(&OTHER_METHODS));
        assert_eq!(rows[OTHER_METHODS].in_flight.load(Ordering::Relaxed), 2);
        assert_eq!(rows[UNKNOWN_METHOD].in_flight.load(Ordering::Relaxed), 1);
    }

    struct Fixed;
    impl MetricsSource for Fixed {
        fn encode(&self, w: &mut MetricsWriter<'_>) -> fmt::Result {
            w.counter(
                "test_things",
                "Things.",
                &[(vec![("k", "a\"b\\c\nd".into())], 3)],
            )
        }
        fn ready(&self) -> Result<(), String> {
            Err("not yet".into())
        }
    }

    #[test]
    fn a_source_is_rendered_with_the_prefix_and_escaped_labels() {
        let m = Metrics::new();
        m.add(Arc::new(Fixed));
        let text = m.render();
        assert!(
            text.contains("# TYPE meridian_test_things counter"),
            "{text}"
        );
        assert!(
            text.contains(r#"meridian_test_things_total{k="a\"b\\c\nd"} 3"#),
            "{text}"
        );
        assert_eq!(m.ready(), Err("not yet".to_string()));
    }
}
