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
/// commands, `error` for the others, which print their own failure).
pub fn init_logging(format: LogFormat, default: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => EnvFilter::try_new(&v).unwrap_or_else(|e| {
            eprintln!(
                "meridian: warning: RUST_LOG={v:?} is not a valid filter ({e}); using {default:?}"
            );
            EnvFilter::new(default)
        }),
        _ => EnvFilter::new(default),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // Another subscriber already installed (never in the binary) is not an error worth
    // stopping for.
    let _ = match format {
        LogFormat::Text => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
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
