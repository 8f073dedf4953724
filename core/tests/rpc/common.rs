//! A test server with one method per behaviour under test, and a client for it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use meridian::{
    Channel, ClientTls, DevCa, Method, Server, ServerBuilder, ServerTls, Status, Value,
};
use serde::{Deserialize, Serialize};

/// A typed request the tests send.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Add {
    pub a: i64,
    pub b: i64,
}

/// Counts handler events the tests assert on.
#[derive(Debug, Default)]
pub struct Probe {
    pub started: AtomicUsize,
    pub completed: AtomicUsize,
    pub dropped_early: AtomicUsize,
    pub saw_cancel: AtomicUsize,
}

/// Marks a handler as dropped before it completed (its future was cancelled).
pub struct DropGuard {
    pub probe: Arc<Probe>,
    pub done: bool,
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        if !self.done {
            self.probe.dropped_early.fetch_add(1, Ordering::SeqCst);
        }
    }
}

pub fn builder(probe: Arc<Probe>) -> ServerBuilder {
    let p1 = probe.clone();
    let p2 = probe.clone();
    Server::builder()
        .region("test-region")
        .server_id("test-1")
        .unary(
            Method::new("add").idempotent(),
            |(a, b): (i64, i64), _| async move {
                a.checked_add(b)
                    .ok_or_else(|| Status::out_of_range("sum overflows"))
            },
        )
        .unary("add_struct", |req: Add, ctx| async move {
            ctx.set_trailer("x-handled-by", "add_struct");
            Ok(req.a + req.b)
        })
        .unary("echo_meta", |key: String, ctx| async move {
            Ok(ctx.metadata().get_str(&key).map(str::to_owned))
        })
        .unary("remaining_ms", |_: (), ctx| async move {
            Ok(ctx.remaining().map(|d| d.as_millis() as u64))
        })
        .unary("value_echo", |v: Value, _| async move { Ok(v) })
        .raw()
        .unary("raw_reverse", |b: bytes::Bytes, _| async move {
            let mut v = b.to_vec();
            v.reverse();
            Ok(bytes::Bytes::from(v))
        })
        .typed()
        .unary("fail", |msg: String, _| async move {
            Err::<(), _>(Status::not_found(msg))
        })
        .unary("panic", |_: (), _| async move {
            if true {
                panic!("handler exploded on purpose");
            }
            Ok(())
        })
        .unary("sleep_ms", move |ms: u64, ctx| {
            let probe = p1.clone();
            async move {
                probe.started.fetch_add(1, Ordering::SeqCst);
                let mut guard = DropGuard {
                    probe: probe.clone(),
                    done: false,
                };
                let watcher = {
                    let ctx = ctx.clone();
                    let probe = probe.clone();
                    tokio::spawn(async move {
                        ctx.cancelled().await;
                        probe.saw_cancel.fetch_add(1, Ordering::SeqCst);
                    })
                };
                tokio::time::sleep(Duration::from_millis(ms)).await;
                guard.done = true;
                watcher.abort();
                probe.completed.fetch_add(1, Ordering::SeqCst);
                Ok(ms)
            }
        })
        .server_streaming("count", |n: u32, _, sink| async move {
            for i in 0..n {
                sink.send(&i).await?;
            }
            Ok(())
        })
        .server_streaming("count_forever", move |_: (), _, sink| {
            let probe = p2.clone();
            async move {
                probe.started.fetch_add(1, Ordering::SeqCst);
                let _guard = DropGuard {
                    probe: probe.clone(),
                    done: false,
                };
                let mut i = 0u64;
                loop {
                    sink.send(&i).await?;
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        })
        .client_streaming(
            "sum",
            |mut reqs: meridian::RequestStream<i64>, _| async move {
                let mut total = 0i64;
                while let Some(v) = reqs.message().await? {
                    total += v;
                }
                Ok(total)
            },
        )
        .bidi(
            "double",
            |mut reqs: meridian::RequestStream<i64>, _, sink| async move {
                while let Some(v) = reqs.message().await? {
                    sink.send(&(v * 2)).await?;
                }
                Ok(())
            },
        )
}

pub struct Fixture {
    pub server: Server,
    pub ca: DevCa,
    pub probe: Arc<Probe>,
}

impl Fixture {
    pub async fn start() -> Fixture {
        Self::start_with(|b| b).await
    }

    pub async fn start_with(f: impl FnOnce(ServerBuilder) -> ServerBuilder) -> Fixture {
        let probe = Arc::new(Probe::default());
        let ca = DevCa::new().expect("dev CA");
        let tls = ServerTls::new(ca.issue_server(&["localhost"]).expect("server cert"));
        let server = f(builder(probe.clone()))
            .bind("127.0.0.1:0".parse().unwrap(), tls)
            .await
            .expect("bind");
        Fixture { server, ca, probe }
    }

    pub fn client_tls(&self) -> ClientTls {
        ClientTls::with_roots([self.ca.certificate().clone()]).expect("roots")
    }

    /// A link emulator in front of the server with `settings`, and a channel through it.
    pub async fn through_link(
        &self,
        settings: meridian::testing::LinkSettings,
    ) -> (meridian::testing::LinkEmulator, Channel) {
        let link = meridian::testing::LinkEmulator::start(self.server.local_addr(), settings)
            .await
            .expect("link");
        let ch = Channel::builder(link.addr(), self.client_tls())
            .connect()
            .await
            .expect("connect");
        (link, ch)
    }

    pub async fn channel(&self) -> Channel {
        Channel::builder(self.server.local_addr(), self.client_tls())
            .connect()
            .await
            .expect("connect")
    }
}

/// Polls `cond` every 10 ms for up to `limit`.
pub async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < end {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}
