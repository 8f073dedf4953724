//! A small Rust Meridian server for the C tests and the C boundary benchmark.
//!
//! `meridian-test-server DIR` writes a development CA and server certificate into `DIR`
//! (`ca.pem`, `server.pem`, `server.key`), serves on a free loopback port, starts a region
//! proxy in front of that server on another port, prints `PROXY_PORT <n>` then `PORT <n>`
//! on stdout, and stops when its stdin closes.
//!
//! Methods: `add` (typed `(i64, i64) -> i64`, so a C JSON call `[10, 5]` reaches a typed
//! Rust handler), `echo` (raw bytes), `count` (typed server streaming: `n -> 0..n`).

use std::io::{BufRead, Write};
use std::time::Duration;

use mcore::proxy::Proxy;
use mcore::region::{RegionClient, RegionMap, ServerEndpoint, StaticDiscovery};
use mcore::{ClientTls, DevCa, Method, ResponseSink, Server, ServerTls, Status};

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .ok_or("usage: meridian-test-server DIR")?;
    let dir = std::path::Path::new(&dir);
    let ca = DevCa::new()?;
    let id = ca.issue_server(&["localhost"])?;
    std::fs::write(dir.join("ca.pem"), ca.certificate_pem())?;
    let server = Server::builder()
        .region("rust")
        .no_local_registry()
        .unary(
            Method::new("add").idempotent(),
            |(a, b): (i64, i64), _ctx| async move {
                a.checked_add(b)
                    .ok_or_else(|| Status::out_of_range("sum overflows"))
            },
        )
        .raw()
        .unary(Method::new("echo").idempotent(), |req, _ctx| async move {
            Ok(req)
        })
        .typed()
        .server_streaming(
            "count",
            |n: i64, _ctx, sink: ResponseSink<i64>| async move {
                for i in 0..n {
                    sink.send(&i).await?;
                }
                Ok(())
            },
        )
        .bind("127.0.0.1:0".parse()?, ServerTls::new(id.clone()))
        .await?;
    let mut map = RegionMap::new();
    map.add_server(
        "rust",
        ServerEndpoint::new(server.local_addr(), "localhost"),
    );
    let upstream = RegionClient::builder(
        StaticDiscovery::new(map),
        ClientTls::with_roots([ca.certificate().clone()])?,
    )
    .build()?;
    let proxy = Proxy::builder(upstream)
        .bind("127.0.0.1:0".parse()?, ServerTls::new(id))
        .await?;
    if !proxy.upstream().ready("add", Duration::from_secs(5)).await {
        return Err("the proxy cannot reach the server".into());
    }
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "PROXY_PORT {}", proxy.local_addr().port())?;
        writeln!(out, "PORT {}", server.local_addr().port())?;
        out.flush()?;
    }
    // Wait for stdin to close (the test driver holds it open while it needs the server).
    tokio::task::spawn_blocking(|| {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            if line.is_err() {
                break;
            }
        }
    })
    .await?;
    proxy.shutdown(Duration::from_millis(500)).await;
    server.shutdown(Duration::from_millis(500)).await;
    Ok(())
}
