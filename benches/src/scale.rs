//! `meridian-bench scale`: how a Meridian server holds up as connections and calls grow.
//!
//! A server process (`scale-serve`) serves `echo` (raw unary), `slow` (answers after
//! 10 ms) and `hold` (answers after two minutes, so the call stays open and idle), and answers `STATS` lines on
//! its stdin with its call and connection counts and its resident memory. The driver:
//!
//! 1. opens many connections (each makes one `echo`) and reads the server's memory growth:
//!    memory per idle connection, and whether all of them were served;
//! 2. opens many `hold` calls on one connection: memory per open idle call;
//! 3. starts 10,000 `slow` calls at once on one connection whose server allows fewer
//!    concurrent streams: every call must finish, none may fail, and the server's
//!    in-flight count must stay within the stream limit;
//! 4. runs the server on a multi-threaded runtime with 1 and 2 workers (and on the
//!    current-thread runtime the main benchmark uses) against 2 load processes
//!    (`scale-load`, 64 calls in flight each) and reports calls/s.

use std::io::BufRead as _;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use meridian::{Channel, ClientTls, Method, Server, ServerTls, TransportConfig};
use tokio::task::JoinSet;

use crate::driver::{listen_line, own_command, parse_listen_line, ServerProcess};
use crate::kinds::Listening;
use crate::tls::{self, Identity};
use crate::Result;

/// What `scale` measures; the defaults are the figures issue #19 asks for.
pub struct ScalePlan {
    /// Connections opened to one server.
    pub connections: usize,
    /// Idle calls held open on one connection.
    pub idle_calls: usize,
    /// Calls started at once on one connection.
    pub burst_calls: usize,
    /// The server's concurrent-stream limit per connection during the burst.
    pub stream_limit: u32,
    /// How long each load process counts calls.
    pub load_time: Duration,
}

impl Default for ScalePlan {
    fn default() -> Self {
        Self {
            connections: 2000,
            idle_calls: 1000,
            burst_calls: 10_000,
            stream_limit: TransportConfig::DEFAULT_MAX_CONCURRENT_STREAMS,
            load_time: Duration::from_secs(3),
        }
    }
}

/// The server's answer to `STATS`.
#[derive(Clone, Copy, Debug, Default)]
struct Stats {
    in_flight: usize,
    connections: usize,
    refused: u64,
    rss_kib: u64,
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn server_transport(stream_limit: u32) -> TransportConfig {
    TransportConfig {
        max_concurrent_streams: stream_limit,
        // Room for the connection step (the default caps a server at 4,096).
        max_connections: 8192,
        ..TransportConfig::default()
    }
}

/// `scale-serve --threads N --streams S`: the server side (N = 0: current-thread runtime).
pub fn serve(args: &[String]) -> Result<()> {
    let (mut threads, mut streams) = (0usize, TransportConfig::DEFAULT_MAX_CONCURRENT_STREAMS);
    let mut task_per_call = false;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == "--task-per-call" {
            task_per_call = true;
            continue;
        }
        let value = it.next().ok_or(format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--threads" => threads = value.parse()?,
            "--streams" => streams = value.parse()?,
            other => return Err(format!("unknown option {other:?}").into()),
        }
    }
    let runtime = if threads == 0 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    let identity = Identity::generate()?;
    let (requests, mut incoming) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if requests.send(line).is_err() {
                break;
            }
        }
        std::process::exit(0);
    });
    runtime.block_on(async move {
        let server = Server::builder()
            .transport(server_transport(streams))
            .task_per_call(task_per_call)
            .no_local_registry()
            .raw()
            .unary(
                Method::new("echo").idempotent(),
                |payload: Bytes, _| async move { Ok(payload) },
            )
            .unary(Method::new("slow"), |payload: Bytes, _| async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                Ok(payload)
            })
            .unary(Method::new("hold"), |payload: Bytes, _| async move {
                tokio::time::sleep(Duration::from_secs(120)).await;
                Ok(payload)
            })
            .typed()
            .bind(
                "127.0.0.1:0".parse::<SocketAddr>()?,
                ServerTls::new(crate::kinds::meridian::meridian_identity(&identity)),
            )
            .await?;
        println!("{}", listen_line(server.local_addr(), &identity.cert_der));
        while let Some(line) = incoming.recv().await {
            if line.trim() == "STATS" {
                let s = server.stats();
                println!(
                    "STATS {} {} {} {}",
                    s.in_flight,
                    s.connections,
                    s.connections_refused,
                    rss_kib()
                );
            }
        }
        Ok(())
    })
}

/// A `scale-serve` child, ended when dropped.
struct ScaleServer(ServerProcess);

impl std::ops::Deref for ScaleServer {
    type Target = ServerProcess;
    fn deref(&self) -> &ServerProcess {
        &self.0
    }
}

impl ScaleServer {
    fn spawn(threads: usize, streams: u32) -> Result<Self> {
        Self::spawn_with(threads, streams, false)
    }

    fn spawn_with(threads: usize, streams: u32, task_per_call: bool) -> Result<Self> {
        // MERIDIAN_BENCH_SERVER_WRAPPER runs the server under a tool, e.g.
        // "valgrind --tool=dhat --dhat-out-file=/tmp/dhat.json" to see what its memory is.
        let mut command = own_command()?;
        command
            .args(["scale-serve", "--threads", &threads.to_string()])
            .args(["--streams", &streams.to_string()])
            .args(task_per_call.then_some("--task-per-call"));
        Ok(Self(ServerProcess::start(command, "scale")?))
    }

    fn stats(&self) -> Result<Stats> {
        let answer = self.ask("STATS")?;
        let v: Vec<u64> = answer
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        let [in_flight, connections, refused, rss_kib] = v[..] else {
            return Err(format!("bad STATS answer {answer:?}").into());
        };
        Ok(Stats {
            in_flight: in_flight as usize,
            connections: connections as usize,
            refused,
            rss_kib,
        })
    }

    /// Polls `STATS` until `done` holds (at most `limit`), returning the last answer.
    async fn wait_for(&self, limit: Duration, done: impl Fn(&Stats) -> bool) -> Result<Stats> {
        let start = Instant::now();
        loop {
            let s = self.stats()?;
            if done(&s) || start.elapsed() > limit {
                return Ok(s);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn client_transport() -> TransportConfig {
    TransportConfig {
        // One connection per channel, whatever the stream limit: calls over the limit wait
        // for stream credit instead of opening extra connections.
        extra_connections: 0,
        ..TransportConfig::default()
    }
}

async fn connect(server: &Listening, tls: &ClientTls) -> Result<Channel> {
    Ok(Channel::builder(server.addr, tls.clone())
        .server_name(tls::SERVER_NAME)
        .transport(client_transport())
        .connect()
        .await?)
}

async fn echo(channel: &Channel, payload: &Bytes) -> Result<()> {
    let reply = channel
        .call("echo")
        .raw()
        .unary(payload)
        .await?
        .into_inner();
    if reply != *payload {
        return Err("echo returned other bytes".into());
    }
    Ok(())
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Runs the plan and returns the report section.
pub async fn run(plan: &ScalePlan) -> Result<String> {
    let mut rows: Vec<(String, String)> = Vec::new();
    let payload = Bytes::from(vec![7u8; 64]);

    // 1. Many connections, each served once, then idle.
    let server = ScaleServer::spawn(0, plan.stream_limit)?;
    let tls = ClientTls::with_roots([server.listening.cert.clone()])?;
    let first = connect(&server.listening, &tls).await?;
    echo(&first, &payload).await?;
    let base = server.stats()?;
    let started = Instant::now();
    let mut channels = Vec::with_capacity(plan.connections);
    let mut failed = 0usize;
    // In batches, so the server's handshake limit is not what is measured.
    for batch in (0..plan.connections).collect::<Vec<_>>().chunks(100) {
        let mut set = JoinSet::new();
        for _ in batch {
            let (server, tls, payload) = (server.listening.clone(), tls.clone(), payload.clone());
            set.spawn_local(async move {
                let channel = connect(&server, &tls).await?;
                echo(&channel, &payload).await?;
                Result::<Channel>::Ok(channel)
            });
        }
        while let Some(joined) = set.join_next().await {
            match joined? {
                Ok(channel) => channels.push(channel),
                Err(_) => failed += 1,
            }
        }
    }
    let connect_time = started.elapsed();
    let loaded = server
        .wait_for(Duration::from_secs(5), |s| {
            s.connections > plan.connections && s.in_flight == 0
        })
        .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let settled = server.stats()?;
    let per_conn =
        settled.rss_kib.saturating_sub(base.rss_kib) as f64 / channels.len().max(1) as f64;
    rows.push((
        format!("{} connections to one server, each calls `echo` once (batches of 100)", plan.connections),
        format!(
            "{} served, {} failed, {} refused by the server, in {:.2} s; server sees {} connections",
            channels.len(),
            failed,
            loaded.refused - base.refused,
            connect_time.as_secs_f64(),
            settled.connections
        ),
    ));
    rows.push((
        "server memory per idle connection (RSS growth / connections)".into(),
        format!(
            "{per_conn:.1} KiB (RSS {} with 1 connection, {} with {})",
            mib(base.rss_kib),
            mib(settled.rss_kib),
            settled.connections
        ),
    ));
    drop(channels);
    drop(first);
    drop(server);

    // 2. Open idle calls on one connection, on a fresh server: memory freed by the
    // connections above would be reused by the allocator and hide what the calls take.
    let server = ScaleServer::spawn(0, plan.stream_limit)?;
    let tls = ClientTls::with_roots([server.listening.cert.clone()])?;
    let first = connect(&server.listening, &tls).await?;
    echo(&first, &payload).await?;
    let before_calls = server.stats()?;
    let holder = Rc::new(connect(&server.listening, &tls).await?);
    let mut holds = JoinSet::new();
    for _ in 0..plan.idle_calls {
        let (holder, payload) = (holder.clone(), payload.clone());
        holds.spawn_local(async move { holder.call("hold").raw().unary(&payload).await });
    }
    let open = server
        .wait_for(Duration::from_secs(10), |s| s.in_flight >= plan.idle_calls)
        .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let open = Stats {
        rss_kib: server.stats()?.rss_kib,
        ..open
    };
    let per_call =
        open.rss_kib.saturating_sub(before_calls.rss_kib) as f64 / open.in_flight.max(1) as f64;
    rows.push((
        format!(
            "server memory per open idle call ({} `hold` calls on one connection)",
            plan.idle_calls
        ),
        format!(
            "{per_call:.2} KiB ({} calls open at the server; RSS {} -> {})",
            open.in_flight,
            mib(before_calls.rss_kib),
            mib(open.rss_kib)
        ),
    ));
    holds.abort_all();
    while holds.join_next().await.is_some() {}
    let drained = server
        .wait_for(Duration::from_secs(10), |s| s.in_flight == 0)
        .await?;
    rows.push((
        "the same calls dropped by the client".into(),
        format!("server in-flight back to {}", drained.in_flight),
    ));
    drop(holder);

    // 3. A burst over the stream limit on one connection.
    let burst_channel = Rc::new(connect(&server.listening, &tls).await?);
    let mut burst = JoinSet::new();
    let started = Instant::now();
    for _ in 0..plan.burst_calls {
        let (channel, payload) = (burst_channel.clone(), payload.clone());
        burst.spawn_local(async move {
            let reply = channel
                .call("slow")
                .raw()
                .unary(&payload)
                .await?
                .into_inner();
            if reply != payload {
                return Err("slow returned other bytes".into());
            }
            Result::<()>::Ok(())
        });
    }
    let server = Rc::new(server);
    // Samples the server's in-flight count while the burst runs (the calls are tasks of
    // this thread, so they make progress between samples).
    let sampling = Rc::new(std::cell::Cell::new(true));
    let sampler = {
        let (server, sampling) = (server.clone(), sampling.clone());
        tokio::task::spawn_local(async move {
            let mut peak = 0usize;
            while sampling.get() {
                peak = peak.max(server.stats()?.in_flight);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Result::<usize>::Ok(peak)
        })
    };
    let (mut ok, mut failed) = (0usize, 0usize);
    let mut first_error = None;
    while let Some(joined) = burst.join_next().await {
        match joined? {
            Ok(()) => ok += 1,
            Err(e) => {
                failed += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    let burst_time = started.elapsed();
    sampling.set(false);
    let peak = sampler.await??;
    let channel_stats = burst_channel.stats();
    rows.push((
        format!(
            "{} calls of `slow` (10 ms each) started at once on one connection, server stream limit {}",
            plan.burst_calls, plan.stream_limit
        ),
        format!(
            "{ok} OK, {failed} failed{} in {:.2} s; peak in flight at the server {peak} (sampled); {} waits for stream credit; the channel opened {} connection(s)",
            first_error.map(|e| format!(" (first: {e})")).unwrap_or_default(),
            burst_time.as_secs_f64(),
            channel_stats.stream_credit_waits,
            channel_stats.connections,
        ),
    ));
    drop(burst_channel);
    drop(first);
    drop(server);

    // 4. Multi-threaded servers against two load processes.
    // Each runtime with the default (a connection's calls polled by its task) and with
    // `task_per_call`, one after the other in the same run.
    for threads in [0usize, 1, 2] {
        let mut figures = Vec::new();
        for per_call in [false, true] {
            let server = ScaleServer::spawn_with(
                threads,
                TransportConfig::DEFAULT_MAX_CONCURRENT_STREAMS,
                per_call,
            )?;
            let total = load(&server.listening, 2, plan.load_time)?;
            figures.push(total as f64 / plan.load_time.as_secs_f64());
        }
        rows.push((
            match threads {
                0 => "calls/s, server on a current-thread runtime, 2 load processes x 64 in flight".into(),
                n => format!("calls/s, server on a multi-threaded runtime with {n} worker(s), 2 load processes x 64 in flight"),
            },
            format!(
                "{:.0} (with `task_per_call`: {:.0})",
                figures[0], figures[1]
            ),
        ));
    }

    let mut out = String::from(
        "## Scale\n\n- command: `./target/release/meridian-bench scale --append benches/RESULTS.md`\n\
         - layout: the server in its own process; the driver (one current-thread runtime) opens the connections and calls; 64 B payloads; loopback; no CPU pinning. \
         Memory is the server's resident set (VmRSS), so it includes what the allocator keeps.\n\n\
         | figure | measured |\n| --- | --- |\n",
    );
    for (k, v) in rows {
        out.push_str(&format!("| {k} | {v} |\n"));
    }
    Ok(out)
}

/// Starts `processes` load processes against `server`, each counting completed calls for
/// `time` after a warm-up; returns the sum.
fn load(server: &Listening, processes: usize, time: Duration) -> Result<u64> {
    let mut children = Vec::new();
    for _ in 0..processes {
        children.push(
            Command::new(std::env::current_exe()?)
                .args([
                    "scale-load",
                    &server.addr.to_string(),
                    &tls::to_hex(&server.cert),
                    &time.as_millis().to_string(),
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()?,
        );
    }
    let mut total = 0;
    for child in children {
        let out = child.wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let calls: u64 = text
            .trim()
            .strip_prefix("CALLS ")
            .ok_or_else(|| format!("load process printed {:?}", text.trim()))?
            .parse()?;
        total += calls;
    }
    Ok(total)
}

/// `scale-load ADDR CERT_HEX MILLIS`: 64 calls in flight on one channel; prints `CALLS n`,
/// the calls completed in MILLIS after a 0.5 s warm-up.
pub fn load_process(args: &[String]) -> Result<()> {
    let [addr, cert, millis] = args else {
        return Err("usage: meridian-bench scale-load ADDR CERT_HEX MILLIS".into());
    };
    let line = format!("LISTEN {addr} {cert}");
    let server = parse_listen_line(&line)?;
    let time = Duration::from_millis(millis.parse()?);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let calls = tokio::task::LocalSet::new().block_on(&runtime, async move {
        let tls = ClientTls::with_roots([server.cert.clone()])?;
        let channel = Rc::new(connect(&server, &tls).await?);
        let payload = Bytes::from(vec![7u8; 64]);
        let done = Rc::new(std::cell::Cell::new(0u64));
        let stop = Rc::new(std::cell::Cell::new(false));
        let mut workers = JoinSet::new();
        for _ in 0..64 {
            let (channel, payload, done, stop) =
                (channel.clone(), payload.clone(), done.clone(), stop.clone());
            workers.spawn_local(async move {
                while !stop.get() {
                    echo(&channel, &payload).await?;
                    done.set(done.get() + 1);
                }
                Result::<()>::Ok(())
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (start, before) = (done.get(), channel.stats());
        tokio::time::sleep(time).await;
        let (calls, after) = (done.get() - start, channel.stats());
        if std::env::var_os("BENCH_DEBUG").is_some() {
            let n = calls.max(1) as f64;
            eprintln!(
                "  load process: datagrams per call sent {:.2}, received {:.2}",
                (after.datagrams_sent - before.datagrams_sent) as f64 / n,
                (after.datagrams_received - before.datagrams_received) as f64 / n
            );
        }
        stop.set(true);
        while let Some(joined) = workers.join_next().await {
            joined??;
        }
        Result::<u64>::Ok(calls)
    })?;
    println!("CALLS {calls}");
    Ok(())
}
