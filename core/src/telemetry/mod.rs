//! What a running server, region client or proxy tells its operators: metrics in the
//! Prometheus text format, a health endpoint, and W3C trace context across hops.
//!
//! ```no_run
//! # async fn demo(server: &meridian::Server) -> std::io::Result<()> {
//! use std::sync::Arc;
//! use meridian::telemetry::{Metrics, MetricsEndpoint};
//! let metrics = Arc::new(Metrics::new());
//! metrics.add(server.metrics_source());
//! let endpoint = MetricsEndpoint::bind("127.0.0.1:9464".parse().unwrap(), metrics).await?;
//! println!("scrape http://{}/metrics", endpoint.local_addr());
//! # Ok(()) }
//! ```

mod http;
pub(crate) mod metrics;
#[cfg(feature = "otlp")]
mod otlp;
pub mod trace;

pub use http::MetricsEndpoint;
pub(crate) use metrics::MethodTable;
pub use metrics::{Histogram, Labels, Metrics, MetricsSource, MetricsWriter};
#[cfg(feature = "otlp")]
pub use otlp::OtlpLayer;
pub use trace::TraceContext;
