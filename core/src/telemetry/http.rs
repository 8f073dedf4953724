//! A small HTTP/1.1 endpoint for scrapers and health checks: `/metrics`, `/healthz`,
//! `/readyz`.
//!
//! It answers one GET per connection and closes it. It is meant for a private port, yet it
//! assumes nothing of its peers: a request head is read within
//! [`MetricsEndpoint::REQUEST_TIMEOUT`] and [`MetricsEndpoint::MAX_REQUEST`] bytes, and at
//! most [`MetricsEndpoint::MAX_CONNECTIONS`] are served at once (more are closed at once).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::metrics::Metrics;

/// A running metrics and health endpoint; stops when dropped.
#[derive(Debug)]
pub struct MetricsEndpoint {
    local_addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MetricsEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MetricsEndpoint {
    /// The longest a client may take to send its request head.
    pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
    /// The largest request head read.
    pub const MAX_REQUEST: usize = 8 * 1024;
    /// Connections served at once.
    pub const MAX_CONNECTIONS: usize = 64;

    /// Listens on `addr` (TCP) and serves `metrics`:
    /// - `GET /metrics`: [`Metrics::render`] (OpenMetrics text);
    /// - `GET /healthz`: `200 ok` while the process answers (liveness);
    /// - `GET /readyz`: `200 ready` when every source is ready, else `503` and the reasons
    ///   (a server stopping says `draining`).
    pub async fn bind(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<MetricsEndpoint> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let slots = Arc::new(Semaphore::new(Self::MAX_CONNECTIONS));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    // Out of descriptors, say: try again shortly rather than spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    continue; // dropped: closed at once
                };
                let metrics = metrics.clone();
                tokio::spawn(async move {
                    let _ =
                        tokio::time::timeout(Self::REQUEST_TIMEOUT * 2, serve(stream, &metrics))
                            .await;
                    drop(slot);
                });
            }
        });
        Ok(MetricsEndpoint { local_addr, task })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

/// Reads the request head: `None` if it is too large, too slow or not HTTP.
async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(512);
    let read = async {
        let mut chunk = [0u8; 1024];
        loop {
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
                return Some(());
            }
            if buf.len() > MetricsEndpoint::MAX_REQUEST {
                return None;
            }
        }
    };
    tokio::time::timeout(MetricsEndpoint::REQUEST_TIMEOUT, read)
        .await
        .ok()??;
    String::from_utf8(buf).ok()
}

async fn serve(mut stream: TcpStream, metrics: &Metrics) {
    let (status, content_type, body) = match read_head(&mut stream).await {
        None => ("400 Bad Request", "text/plain", "bad request\n".to_string()),
        Some(head) => answer(&head, metrics),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// The answer to a request head: status line, content type, body.
fn answer(head: &str, metrics: &Metrics) -> (&'static str, &'static str, String) {
    let line = head.lines().next().unwrap_or("");
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "GET" {
        return (
            "405 Method Not Allowed",
            "text/plain",
            "only GET is served\n".into(),
        );
    }
    let path = target.split('?').next().unwrap_or("");
    match path {
        "/metrics" => (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.render(),
        ),
        "/healthz" => ("200 OK", "text/plain", "ok\n".into()),
        "/readyz" => match metrics.ready() {
            Ok(()) => ("200 OK", "text/plain", "ready\n".into()),
            Err(why) => (
                "503 Service Unavailable",
                "text/plain",
                format!("not ready: {why}\n"),
            ),
        },
        _ => (
            "404 Not Found",
            "text/plain",
            "not found: try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}
