//! What running servers and proxies share for operators: logs (`RUST_LOG`,
//! `--log-format`), the metrics and health endpoint (`--metrics`), the access log.

use std::net::SocketAddr;
use std::sync::Arc;

use clap::{Args, ValueEnum};
use meridian::telemetry::{Metrics, MetricsEndpoint, MetricsSource};

use super::{CliError, CliResult};

/// How log lines are written (on stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per event (for log shippers).
    Json,
}

/// Installs the log subscriber: events on stderr, filtered by `RUST_LOG` when it is set
/// (e.g. `RUST_LOG=meridian=debug`), else at `default` (`info` for the long-running
/// commands, `error` for the others, which print their own failure). With `otlp`
/// (`--otlp URL`, feature `otlp`), the spans of traced calls also go to that collector.
pub fn init_logging(format: LogFormat, default: &str, otlp: Option<(&str, &str)>) -> CliResult<()> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer, Registry};
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => EnvFilter::try_new(&v).unwrap_or_else(|e| {
            eprintln!(
                "meridian: warning: RUST_LOG={v:?} is not a valid filter ({e}); using {default:?}"
            );
            EnvFilter::new(default)
        }),
        _ => EnvFilter::new(default),
    };
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let lines: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Text => lines.with_ansi(false).boxed(),
        LogFormat::Json => lines.json().flatten_event(true).boxed(),
    };
    let registry = tracing_subscriber::registry().with(lines.with_filter(filter));
    // Another subscriber already installed (never in the binary) is not an error worth
    // stopping for.
    match otlp {
        #[cfg(feature = "otlp")]
        Some((endpoint, service)) => {
            let layer = meridian::telemetry::OtlpLayer::new(endpoint, service)
                .map_err(|e| CliError::usage(format!("--otlp: {e}")))?;
            let spans = tracing_subscriber::filter::Targets::new()
                .with_target("meridian", tracing::Level::DEBUG);
            let _ = registry.with(layer.with_filter(spans)).try_init();
        }
        #[cfg(not(feature = "otlp"))]
        Some(_) => {
            let _ = registry.try_init();
            return Err(CliError::config(
                "--otlp needs a build with the `otlp` feature (--features cli,otlp)",
            ));
        }
        None => {
            let _ = registry.try_init();
        }
    }
    Ok(())
}

/// Flags of `serve` and `proxy` for operating them.
#[derive(Args, Debug, Clone)]
pub struct OpsArgs {
    /// Serve Prometheus metrics on http://ADDR/metrics, and /healthz (alive) and /readyz
    /// (ready: serving, not draining) for load balancers and orchestrators (TCP).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// Log one line per call (target `meridian::access`, level info): method, status,
    /// peer, duration and W3C trace ids.
    #[arg(long)]
    pub access_log: bool,
    /// Send the spans of traced calls (those carrying W3C `traceparent` metadata) to an
    /// OpenTelemetry collector over OTLP/HTTP JSON, e.g. http://127.0.0.1:4318 (builds
    /// with the `otlp` feature).
    #[arg(long, value_name = "URL")]
    pub otlp: Option<String>,
}

impl OpsArgs {
    /// Starts the metrics endpoint if `--metrics` was given, serving `sources`.
    pub async fn start_metrics(
        &self,
        sources: Vec<Arc<dyn MetricsSource>>,
    ) -> CliResult<Option<MetricsEndpoint>> {
        let Some(addr) = self.metrics else {
            return Ok(None);
        };
        let metrics = Arc::new(Metrics::new());
        for s in sources {
            metrics.add(s);
        }
        let endpoint = MetricsEndpoint::bind(addr, metrics).await.map_err(|e| {
            CliError::config(format!("cannot listen for metrics on {addr} (TCP): {e}"))
        })?;
        tracing::info!(
            "metrics on http://{0}/metrics, health on http://{0}/healthz and /readyz",
            endpoint.local_addr()
        );
        Ok(Some(endpoint))
    }
}
