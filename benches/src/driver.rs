//! The measuring side: starts a server process per kind, connects, runs the
//! three phases (latency, throughput, large payloads) and collects figures.

use std::cell::Cell;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustls::pki_types::CertificateDer;
use tokio::task::{JoinSet, LocalSet};

use crate::kinds::{Client, Kind, Listening, Transport};
use crate::tls;
use crate::Result;

/// Payload size of the latency and throughput phases.
pub const SMALL_PAYLOAD: usize = 64;

/// What to measure and for how long.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Sequential calls made and discarded before the latency phase.
    pub warmup_calls: usize,
    /// Sequential calls timed in the latency phase.
    pub latency_calls: usize,
    /// Calls kept in flight in the throughput phase.
    pub in_flight: usize,
    /// Time the throughput phase runs before it starts counting.
    pub throughput_warmup: Duration,
    /// Time over which the throughput phase counts completed calls.
    pub throughput_time: Duration,
    /// The large-payload phases, in order.
    pub large: Vec<LargePlan>,
    /// CPUs the client and the server are pinned to, if pinned.
    pub pin: Option<Pin>,
}

/// CPU placement of the two processes.
#[derive(Clone, Copy, Debug)]
pub struct Pin {
    /// CPU the driver (client) runs on.
    pub client: usize,
    /// CPU each server process runs on.
    pub server: usize,
}

impl Pin {
    /// The first two CPUs this process may run on, if there are two.
    pub fn first_two_cpus() -> Option<Self> {
        match core_affinity::get_core_ids()?.as_slice() {
            [client, server, ..] => Some(Self {
                client: client.id,
                server: server.id,
            }),
            _ => None,
        }
    }
}

/// Pins the calling thread (and threads it starts later) to `cpu`.
pub fn pin_current_thread(cpu: usize) -> Result<()> {
    if core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
        Ok(())
    } else {
        Err(format!("could not pin to CPU {cpu}").into())
    }
}

/// One large-payload phase.
#[derive(Clone, Copy, Debug)]
pub struct LargePlan {
    /// Payload size in bytes.
    pub size: usize,
    /// Untimed calls first.
    pub warmup_calls: usize,
    /// Timed sequential calls.
    pub calls: usize,
}

impl Plan {
    /// The full plan, or a shorter one with `quick`.
    pub fn new(quick: bool) -> Self {
        let large = |size, warmup_calls, calls| LargePlan {
            size,
            warmup_calls,
            calls,
        };
        if quick {
            Self {
                warmup_calls: 500,
                latency_calls: 3_000,
                in_flight: 64,
                throughput_warmup: Duration::from_millis(200),
                throughput_time: Duration::from_secs(1),
                large: vec![large(64 << 10, 20, 200), large(1 << 20, 5, 30)],
                pin: None,
            }
        } else {
            Self {
                warmup_calls: 500,
                latency_calls: 20_000,
                in_flight: 64,
                throughput_warmup: Duration::from_millis(500),
                throughput_time: Duration::from_secs(3),
                large: vec![large(64 << 10, 50, 1_000), large(1 << 20, 10, 100)],
                pin: None,
            }
        }
    }
}

/// Latency figures of a sequential phase, in microseconds.
#[derive(Clone, Copy, Debug)]
pub struct Latency {
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// Arithmetic mean.
    pub mean_us: f64,
    /// Number of timed calls.
    pub calls: usize,
    /// Sum of the timed calls' durations.
    pub total: Duration,
}

/// Result of one large-payload phase.
#[derive(Clone, Copy, Debug)]
pub struct LargeResult {
    /// Payload size in bytes.
    pub size: usize,
    /// `None` when the kind cannot carry this size ("n/a").
    pub latency: Option<Latency>,
}

impl LargeResult {
    /// Payload bytes echoed per second of call time, in MB/s (10^6 bytes),
    /// counting each payload once (not twice for the round trip).
    pub fn mb_per_s(&self) -> Option<f64> {
        self.latency
            .map(|l| (self.size * l.calls) as f64 / l.total.as_secs_f64() / 1e6)
    }
}

/// Allocations and CPU time of one side, as counted at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cost {
    /// Allocations and reallocations so far.
    pub allocations: u64,
    /// CPU time of the thread running the runtime so far, in ns.
    pub cpu_ns: u64,
}

impl Cost {
    /// The client side: this process's allocations, this thread's CPU time.
    fn client() -> Result<Cost> {
        Ok(Cost {
            allocations: crate::cost::allocations(),
            cpu_ns: crate::cost::cpu_ns(std::process::id(), crate::cost::own_tid()?)?,
        })
    }
}

/// What one call cost on each side in the throughput phase (means over every call
/// completed while counting).
#[derive(Clone, Copy, Debug, Default)]
pub struct PerCall {
    /// Client allocations per call.
    pub client_allocs: f64,
    /// Server allocations per call.
    pub server_allocs: f64,
    /// Client CPU per call, µs.
    pub client_cpu_us: f64,
    /// Server CPU per call, µs.
    pub server_cpu_us: f64,
}

/// Everything measured for one kind.
#[derive(Clone, Debug)]
pub struct KindResults {
    /// Sequential 64-byte calls.
    pub latency: Latency,
    /// Completed calls per second with [`Plan::in_flight`] calls in flight.
    pub calls_per_s: f64,
    /// Allocations and CPU per call in the throughput phase.
    pub per_call: PerCall,
    /// One entry per [`Plan::large`] phase.
    pub large: Vec<LargeResult>,
}

/// Connects a `T` client to `server` and runs every phase of `plan`.
///
/// Must run inside a [`LocalSet`] (the throughput phase spawns local tasks).
pub async fn measure<T: Transport>(process: &ServerProcess, plan: &Plan) -> Result<KindResults> {
    let server = &process.listening;
    let client = Rc::new(T::connect(server).await?);
    let small = payload(SMALL_PAYLOAD);

    let dgrams_before = client.datagrams();
    let latency = sequential(&*client, &small, plan.warmup_calls, plan.latency_calls).await?;
    if std::env::var_os("BENCH_DEBUG").is_some() {
        if let (Some((tx0, rx0)), Some((tx1, rx1))) = (dgrams_before, client.datagrams()) {
            let calls = (plan.warmup_calls + plan.latency_calls).max(1) as f64;
            eprintln!(
                "  one call at a time, datagrams per call: sent {:.2}, received {:.2}",
                (tx1 - tx0) as f64 / calls,
                (rx1 - rx0) as f64 / calls
            );
        }
    }
    let (calls_per_s, per_call) = throughput(&client, &small, plan, process).await?;

    let mut large = Vec::with_capacity(plan.large.len());
    for phase in &plan.large {
        let fits = client.max_payload().is_none_or(|max| phase.size <= max);
        let latency = if fits {
            let data = payload(phase.size);
            Some(sequential(&*client, &data, phase.warmup_calls, phase.calls).await?)
        } else {
            None
        };
        large.push(LargeResult {
            size: phase.size,
            latency,
        });
    }
    Ok(KindResults {
        latency,
        calls_per_s,
        per_call,
        large,
    })
}

/// A recognisable, non-constant payload of `size` bytes.
pub(crate) fn payload(size: usize) -> Bytes {
    (0..size).map(|i| (i * 31 + 7) as u8).collect()
}

/// `warmup` untimed then `calls` timed sequential calls; each echo is checked
/// outside the timed section.
async fn sequential<C: Client>(
    client: &C,
    payload: &Bytes,
    warmup: usize,
    calls: usize,
) -> Result<Latency> {
    for _ in 0..warmup {
        check_echo(payload, &client.call(payload.clone()).await?)?;
    }
    let mut nanos = Vec::with_capacity(calls);
    timed_calls(client, payload, calls, &mut nanos).await?;
    Ok(summarize(nanos))
}

/// `calls` sequential calls of `payload`, each one's time in nanoseconds pushed onto
/// `nanos`; each echo is checked after its clock stopped.
pub(crate) async fn timed_calls<C: Client>(
    client: &C,
    payload: &Bytes,
    calls: usize,
    nanos: &mut Vec<u64>,
) -> Result<()> {
    for _ in 0..calls {
        let start = Instant::now();
        let echo = client.call(payload.clone()).await?;
        nanos.push(start.elapsed().as_nanos() as u64);
        check_echo(payload, &echo)?;
    }
    Ok(())
}

fn check_echo(sent: &Bytes, echo: &Bytes) -> Result<()> {
    if sent != echo {
        return Err(format!(
            "echo differs from payload ({} bytes sent, {} received)",
            sent.len(),
            echo.len()
        )
        .into());
    }
    Ok(())
}

/// Percentiles from a sorted vector: the value at rank `ceil(q * n)`.
fn percentile(sorted: &[u64], q: f64) -> u64 {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub(crate) fn summarize(mut nanos: Vec<u64>) -> Latency {
    assert!(!nanos.is_empty(), "no calls timed");
    nanos.sort_unstable();
    let sum: u64 = nanos.iter().sum();
    Latency {
        p50_us: percentile(&nanos, 0.50) as f64 / 1e3,
        p99_us: percentile(&nanos, 0.99) as f64 / 1e3,
        mean_us: sum as f64 / nanos.len() as f64 / 1e3,
        calls: nanos.len(),
        total: Duration::from_nanos(sum),
    }
}

/// `plan.in_flight` tasks (spawned with `JoinSet::spawn_local` on the
/// current-thread runtime) each loop sequential calls over the one shared
/// client; completed calls are counted over `plan.throughput_time` after
/// `plan.throughput_warmup`.
async fn throughput<C: Client>(
    client: &Rc<C>,
    payload: &Bytes,
    plan: &Plan,
    server: &ServerProcess,
) -> Result<(f64, PerCall)> {
    let Workers {
        completed,
        stop,
        mut workers,
    } = Workers::spawn(client, payload, plan.in_flight);
    tokio::time::sleep(plan.throughput_warmup).await;
    let (start_count, start) = (completed.get(), Instant::now());
    let (client_before, server_before) = (Cost::client()?, server.cost()?);
    let dgrams_before = client.datagrams();
    tokio::time::sleep(plan.throughput_time).await;
    let (end_count, elapsed) = (completed.get(), start.elapsed());
    let (client_after, server_after) = (Cost::client()?, server.cost()?);
    let n = (end_count - start_count).max(1) as f64;
    let per_call = PerCall {
        client_allocs: (client_after.allocations - client_before.allocations) as f64 / n,
        server_allocs: (server_after.allocations - server_before.allocations) as f64 / n,
        client_cpu_us: (client_after.cpu_ns - client_before.cpu_ns) as f64 / n / 1e3,
        server_cpu_us: (server_after.cpu_ns - server_before.cpu_ns) as f64 / n / 1e3,
    };
    if std::env::var_os("BENCH_DEBUG").is_some() {
        if let (Some((tx0, rx0)), Some((tx1, rx1))) = (dgrams_before, client.datagrams()) {
            let calls = (end_count - start_count).max(1) as f64;
            eprintln!(
                "  datagrams per call: sent {:.2}, received {:.2}",
                (tx1 - tx0) as f64 / calls,
                (rx1 - rx0) as f64 / calls
            );
        }
    }
    stop.set(true);
    while let Some(joined) = workers.join_next().await {
        joined??;
    }
    Ok((
        (end_count - start_count) as f64 / elapsed.as_secs_f64(),
        per_call,
    ))
}

/// The throughput phase's callers: `in_flight` tasks, each making one call after another
/// until `stop` is set, counting them in `completed`.
struct Workers {
    completed: Rc<Cell<u64>>,
    stop: Rc<Cell<bool>>,
    workers: JoinSet<Result<()>>,
}

impl Workers {
    fn spawn<C: Client>(client: &Rc<C>, payload: &Bytes, in_flight: usize) -> Self {
        let completed = Rc::new(Cell::new(0u64));
        let stop = Rc::new(Cell::new(false));
        let mut workers: JoinSet<Result<()>> = JoinSet::new();
        for _ in 0..in_flight {
            let (client, completed, stop) = (client.clone(), completed.clone(), stop.clone());
            let payload = payload.clone();
            workers.spawn_local(async move {
                while !stop.get() {
                    let echo = client.call(payload.clone()).await?;
                    if echo.len() != payload.len() {
                        return Err(
                            format!("echo of {} bytes for {}", echo.len(), payload.len()).into(),
                        );
                    }
                    completed.set(completed.get() + 1);
                }
                Ok(())
            });
        }
        Workers {
            completed,
            stop,
            workers,
        }
    }
}

/// `meridian-bench load`: the throughput phase of the full plan (64 calls in flight, 0.5 s
/// warm-up) for `time`, against a server someone else started; returns the calls
/// completed in `time`, and in all (warm-up included).
pub async fn load<T: Transport>(server: &Listening, time: Duration) -> Result<(u64, u64)> {
    let plan = Plan::new(false);
    let client = Rc::new(T::connect(server).await?);
    // BENCH_IN_FLIGHT=1 profiles one call at a time (the latency phase's pattern).
    let in_flight = std::env::var("BENCH_IN_FLIGHT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(plan.in_flight);
    let Workers {
        completed,
        stop,
        mut workers,
    } = Workers::spawn(&client, &payload(SMALL_PAYLOAD), in_flight);
    tokio::time::sleep(plan.throughput_warmup).await;
    let start = completed.get();
    tokio::time::sleep(time).await;
    let calls = completed.get() - start;
    stop.set(true);
    while let Some(joined) = workers.join_next().await {
        joined??;
    }
    Ok((calls, completed.get()))
}

/// A server child process (`meridian-bench serve KIND`, or `scale-serve`). Ended when
/// dropped.
pub struct ServerProcess {
    child: Child,
    /// The server's stdout after its LISTEN line: answers to `ALLOCS` requests (and held
    /// so the server never writes into a closed pipe).
    stdout: std::cell::RefCell<BufReader<ChildStdout>>,
    /// What the server announced on its LISTEN line.
    pub listening: Listening,
}

/// A command running this executable, under the tool named in
/// `MERIDIAN_BENCH_SERVER_WRAPPER` if set (for example
/// `valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.%p`, to profile a server).
pub fn own_command() -> Result<Command> {
    let wrapper = std::env::var("MERIDIAN_BENCH_SERVER_WRAPPER").unwrap_or_default();
    let mut words = wrapper.split_whitespace();
    Ok(match words.next() {
        Some(tool) => {
            let mut c = Command::new(tool);
            c.args(words).arg(std::env::current_exe()?);
            c
        }
        None => Command::new(std::env::current_exe()?),
    })
}

impl ServerProcess {
    /// Starts `current_exe() serve KIND [--cpu N]` and waits for its LISTEN
    /// line.
    pub fn spawn(kind: Kind, cpu: Option<usize>) -> Result<Self> {
        let mut command = own_command()?;
        command.args(["serve", kind.name()]);
        if let Some(cpu) = cpu {
            command.args(["--cpu", &cpu.to_string()]);
        }
        Self::start(command, kind.name())
    }

    /// Starts `command` (a server printing a LISTEN line first, then answering request
    /// lines on its stdin) and waits for its LISTEN line; `what` names it in errors.
    pub fn start(mut command: Command, what: &str) -> Result<Self> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let mut stdout = BufReader::new(child.stdout.take().ok_or("no child stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let listening = match parse_listen_line(&line) {
            Ok(listening) => listening,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{what} server: {e} (got {:?})", line.trim()).into());
            }
        };
        Ok(Self {
            child,
            stdout: std::cell::RefCell::new(stdout),
            listening,
        })
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `request` as a line on the server's stdin and returns its one-line answer
    /// with the `REQUEST ` prefix removed.
    pub fn ask(&self, request: &str) -> Result<String> {
        use std::io::Write as _;
        let stdin = self.child.stdin.as_ref().ok_or("no server stdin")?;
        (&*stdin).write_all(format!("{request}\n").as_bytes())?;
        let mut line = String::new();
        self.stdout.borrow_mut().read_line(&mut line)?;
        line.strip_prefix(request)
            .and_then(|rest| rest.strip_prefix(' '))
            .map(|rest| rest.trim().to_string())
            .ok_or_else(|| format!("server answered {:?} to {request}", line.trim()).into())
    }

    /// The server's allocations so far (asked over its stdin) and the CPU time of its
    /// main thread, which runs its single-threaded runtime.
    pub fn cost(&self) -> Result<Cost> {
        let allocations = self.ask("ALLOCS")?.parse()?;
        let pid = self.pid();
        Ok(Cost {
            allocations,
            cpu_ns: crate::cost::cpu_ns(pid, pid)?,
        })
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // Closing its stdin ends the server with exit(0), so a tool it may run under
        // (`MERIDIAN_BENCH_SERVER_WRAPPER` for `scale`) writes its report; killed if it
        // has not ended within 30 s.
        drop(self.child.stdin.take());
        for _ in 0..600 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Formats the line a server prints once it is ready.
pub fn listen_line(addr: SocketAddr, cert: &CertificateDer<'_>) -> String {
    format!("LISTEN {addr} {}", tls::to_hex(cert))
}

/// Parses `LISTEN <addr> <cert-der-hex>`.
pub fn parse_listen_line(line: &str) -> Result<Listening> {
    let mut words = line.split_whitespace();
    if words.next() != Some("LISTEN") {
        return Err("expected a LISTEN line".into());
    }
    let addr = words.next().ok_or("LISTEN line without address")?.parse()?;
    let cert = tls::from_hex(words.next().ok_or("LISTEN line without certificate")?)?;
    Ok(Listening {
        addr,
        cert: CertificateDer::from(cert),
    })
}

/// Measures `kind`: its own server process, and a fresh single-threaded
/// runtime here for the client.
pub fn run_kind(kind: Kind, plan: &Plan) -> Result<KindResults> {
    let server = ServerProcess::spawn(kind, plan.pin.map(|pin| pin.server))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let results = LocalSet::new().block_on(&runtime, kind.bench(&server, plan));
    drop(runtime);
    drop(server);
    results
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), 50);
        assert_eq!(percentile(&v, 0.99), 99);
        assert_eq!(percentile(&[7], 0.99), 7);
        let l = summarize(vec![3000, 1000, 2000]);
        assert_eq!(l.p50_us, 2.0);
        assert_eq!(l.mean_us, 2.0);
    }

    #[test]
    fn listen_line_round_trip() {
        let cert = CertificateDer::from(vec![1u8, 2, 0xab]);
        let line = listen_line("127.0.0.1:4433".parse().unwrap(), &cert);
        let parsed = parse_listen_line(&line).unwrap();
        assert_eq!(parsed.addr.port(), 4433);
        assert_eq!(parsed.cert, cert);
        assert!(parse_listen_line("HELLO").is_err());
    }
}
