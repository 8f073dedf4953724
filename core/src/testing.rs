//! Test rig: a user-space WAN link emulator for loopback tests, examples and benchmarks.
//!
//! The kernels Meridian is tested on have no `netem`, so WAN conditions are made here: a
//! [`LinkEmulator`] listens on a loopback UDP port and relays every datagram to a target,
//! holding it for the configured one-way delay (plus jitter), dropping it with the
//! configured loss probability, dropping datagrams over a size limit (a narrow path MTU),
//! or dropping everything during an outage. All settings can change while traffic flows.
//!
//! Packets leave each direction in the order they arrived (jitter delays, never reorders),
//! and tokio's timer rounds every delay up to the next millisecond. Queues are bounded:
//! when a direction holds [`LinkEmulator::QUEUE_LIMIT`] packets, new ones are dropped, as a
//! router's full buffer would.

pub mod demo;
#[cfg(feature = "etcd")]
pub mod etcd;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Conditions of an emulated link, per direction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkSettings {
    /// One-way delay from the client side to the target.
    pub delay_to_target: Duration,
    /// One-way delay from the target back to the client side.
    pub delay_from_target: Duration,
    /// Extra random delay, uniform in `0..=jitter`, added to each packet.
    pub jitter: Duration,
    /// Probability in `0.0..=1.0` that a packet is dropped, each direction.
    pub loss: f64,
    /// Drop every packet both ways (a region outage).
    pub outage: bool,
    /// Drop every datagram larger than this many bytes, both ways: a path with a smaller
    /// MTU than loopback's. `None` (the default) carries any size.
    pub max_datagram: Option<usize>,
}

impl LinkSettings {
    /// A clean link with this round-trip time, split evenly between the directions.
    pub fn with_rtt(rtt: Duration) -> LinkSettings {
        LinkSettings {
            delay_to_target: rtt / 2,
            delay_from_target: rtt - rtt / 2,
            ..LinkSettings::default()
        }
    }
}

impl Default for LinkSettings {
    fn default() -> Self {
        LinkSettings {
            delay_to_target: Duration::ZERO,
            delay_from_target: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 0.0,
            outage: false,
            max_datagram: None,
        }
    }
}

/// Packet counters of a link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Datagrams delivered, both directions.
    pub forwarded: u64,
    /// Datagrams dropped by loss, outage, size (`max_datagram`) or a full queue.
    pub dropped: u64,
}

struct LinkState {
    settings: Mutex<LinkSettings>,
    rng: AtomicU64,
    forwarded: AtomicU64,
    dropped: AtomicU64,
}

impl LinkState {
    fn settings(&self) -> LinkSettings {
        self.settings.lock().map(|s| *s).unwrap_or_default()
    }

    /// A uniform random number in [0, 1) (splitmix64; no need for a crypto RNG here).
    fn random(&self) -> f64 {
        let mut z = self
            .rng
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// When a packet entering now should leave, or `None` if it is dropped.
    fn schedule(&self, to_target: bool, len: usize) -> Option<Duration> {
        let s = self.settings();
        if s.outage
            || s.max_datagram.is_some_and(|max| len > max)
            || (s.loss > 0.0 && self.random() < s.loss)
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let base = if to_target {
            s.delay_to_target
        } else {
            s.delay_from_target
        };
        let jitter = if s.jitter.is_zero() {
            Duration::ZERO
        } else {
            s.jitter.mul_f64(self.random())
        };
        Some(base + jitter)
    }
}

struct Packet {
    due: Instant,
    data: Vec<u8>,
    socket: Arc<UdpSocket>,
    dest: SocketAddr,
}

/// A UDP relay with delay, jitter, loss and outages, on loopback. See the module docs.
pub struct LinkEmulator {
    addr: SocketAddr,
    target: SocketAddr,
    state: Arc<LinkState>,
    tasks: Vec<JoinHandle<()>>,
    sessions: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl std::fmt::Debug for LinkEmulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkEmulator")
            .field("addr", &self.addr)
            .field("target", &self.target)
            .field("settings", &self.state.settings())
            .finish()
    }
}

impl LinkEmulator {
    /// Packets a direction may hold before new ones are dropped.
    pub const QUEUE_LIMIT: usize = 4096;
    /// Distinct client addresses one emulator relays for.
    pub const MAX_CLIENTS: usize = 256;

    /// Starts relaying from a new loopback port to `target`.
    pub async fn start(target: SocketAddr, settings: LinkSettings) -> io::Result<LinkEmulator> {
        let bind: SocketAddr = if target.is_ipv6() {
            "[::1]:0".parse().map_err(io::Error::other)?
        } else {
            "127.0.0.1:0".parse().map_err(io::Error::other)?
        };
        let front = Arc::new(UdpSocket::bind(bind).await?);
        let addr = front.local_addr()?;
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        let state = Arc::new(LinkState {
            settings: Mutex::new(settings),
            rng: AtomicU64::new(seed),
            forwarded: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        });
        let (to_tx, to_rx) = mpsc::channel(Self::QUEUE_LIMIT);
        let (from_tx, from_rx) = mpsc::channel(Self::QUEUE_LIMIT);
        let sessions = Arc::new(Mutex::new(Vec::new()));
        let tasks = vec![
            tokio::spawn(delay_line(to_rx, state.clone())),
            tokio::spawn(delay_line(from_rx, state.clone())),
            tokio::spawn(relay_front(
                front,
                target,
                bind,
                state.clone(),
                to_tx,
                from_tx,
                sessions.clone(),
            )),
        ];
        Ok(LinkEmulator {
            addr,
            target,
            state,
            tasks,
            sessions,
        })
    }

    /// The address clients send to instead of the target.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The relayed target.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Current settings.
    pub fn settings(&self) -> LinkSettings {
        self.state.settings()
    }

    /// Replaces all settings; applies to packets entering from now on.
    pub fn set(&self, settings: LinkSettings) {
        if let Ok(mut s) = self.state.settings.lock() {
            *s = settings;
        }
    }

    /// Changes the round-trip delay, keeping the other settings.
    pub fn set_rtt(&self, rtt: Duration) {
        let mut s = self.settings();
        s.delay_to_target = rtt / 2;
        s.delay_from_target = rtt - rtt / 2;
        self.set(s);
    }

    /// Starts or ends an outage.
    pub fn set_outage(&self, outage: bool) {
        let mut s = self.settings();
        s.outage = outage;
        self.set(s);
    }

    /// Changes the loss probability (each direction).
    pub fn set_loss(&self, loss: f64) {
        let mut s = self.settings();
        s.loss = loss.clamp(0.0, 1.0);
        self.set(s);
    }

    /// Seeds the loss decisions, so a seeded test run drops packets the same way (as far
    /// as packet timing allows).
    pub fn reseed(&self, seed: u64) {
        self.state.rng.store(seed.max(1), Ordering::Relaxed);
    }

    /// Packet counters.
    pub fn stats(&self) -> LinkStats {
        LinkStats {
            forwarded: self.state.forwarded.load(Ordering::Relaxed),
            dropped: self.state.dropped.load(Ordering::Relaxed),
        }
    }
}

impl Drop for LinkEmulator {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Ok(s) = self.sessions.lock() {
            for t in s.iter() {
                t.abort();
            }
        }
    }
}

fn enqueue(
    state: &LinkState,
    queue: &mpsc::Sender<Packet>,
    to_target: bool,
    data: &[u8],
    socket: &Arc<UdpSocket>,
    dest: SocketAddr,
) {
    let Some(delay) = state.schedule(to_target, data.len()) else {
        return;
    };
    let packet = Packet {
        due: Instant::now() + delay,
        data: data.to_vec(),
        socket: socket.clone(),
        dest,
    };
    if queue.try_send(packet).is_err() {
        state.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

async fn relay_front(
    front: Arc<UdpSocket>,
    target: SocketAddr,
    bind: SocketAddr,
    state: Arc<LinkState>,
    to_target: mpsc::Sender<Packet>,
    from_target: mpsc::Sender<Packet>,
    sessions: Arc<Mutex<Vec<JoinHandle<()>>>>,
) {
    let mut upstreams: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, client)) = front.recv_from(&mut buf).await else {
            continue;
        };
        let upstream = match upstreams.get(&client) {
            Some(u) => u.clone(),
            None => {
                if upstreams.len() >= LinkEmulator::MAX_CLIENTS {
                    state.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let Ok(sock) = UdpSocket::bind(bind).await else {
                    continue;
                };
                let sock = Arc::new(sock);
                upstreams.insert(client, sock.clone());
                let back = tokio::spawn(relay_back(
                    sock.clone(),
                    front.clone(),
                    client,
                    state.clone(),
                    from_target.clone(),
                ));
                if let Ok(mut s) = sessions.lock() {
                    s.push(back);
                }
                sock
            }
        };
        enqueue(&state, &to_target, true, &buf[..n], &upstream, target);
    }
}

async fn relay_back(
    upstream: Arc<UdpSocket>,
    front: Arc<UdpSocket>,
    client: SocketAddr,
    state: Arc<LinkState>,
    from_target: mpsc::Sender<Packet>,
) {
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, _)) = upstream.recv_from(&mut buf).await else {
            continue;
        };
        enqueue(&state, &from_target, false, &buf[..n], &front, client);
    }
}

async fn delay_line(mut queue: mpsc::Receiver<Packet>, state: Arc<LinkState>) {
    let mut last_due = Instant::now();
    while let Some(p) = queue.recv().await {
        // Keep arrival order: a packet never overtakes the one before it.
        let due = p.due.max(last_due);
        last_due = due;
        if due > Instant::now() {
            tokio::time::sleep_until(due).await;
        }
        if p.socket.send_to(&p.data, p.dest).await.is_ok() {
            state.forwarded.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A TCP relay with a fixed delay each way, for comparing TCP-based transports (gRPC over
/// HTTP/2 + TLS) with QUIC over the same emulated WAN.
///
/// Each accepted connection gets its own connection to the target; bytes are forwarded
/// in the chunks they were read in, each held for the one-way delay of its direction.
/// The relay accepts at once on loopback, so TCP's own handshake round trip is emulated:
/// nothing the client sends is forwarded until one RTT after it connected, when its SYN-ACK
/// would have arrived.
/// Memory per direction is bounded by [`TcpLinkEmulator::QUEUE_CHUNKS`] chunks of at most
/// 64 KiB; a full queue stops reading (TCP backpressure), it never drops bytes.
pub struct TcpLinkEmulator {
    addr: SocketAddr,
    delays: Arc<Mutex<(Duration, Duration)>>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for TcpLinkEmulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpLinkEmulator")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl TcpLinkEmulator {
    /// Chunks a direction may hold in flight.
    pub const QUEUE_CHUNKS: usize = 256;

    /// Starts relaying from a new loopback port to `target` with this round-trip time.
    pub async fn start(target: SocketAddr, rtt: Duration) -> io::Result<TcpLinkEmulator> {
        let bind: SocketAddr = if target.is_ipv6() {
            "[::1]:0".parse().map_err(io::Error::other)?
        } else {
            "127.0.0.1:0".parse().map_err(io::Error::other)?
        };
        let listener = tokio::net::TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let delays = Arc::new(Mutex::new((rtt / 2, rtt - rtt / 2)));
        let d = delays.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let d = d.clone();
                let syn_ack = Instant::now();
                conns.spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let (to, from) = d.lock().map(|g| *g).unwrap_or_default();
                    let handshake_done = syn_ack + to + from;
                    tokio::join!(
                        tcp_pipe(cr, sw, to, handshake_done),
                        tcp_pipe(sr, cw, from, syn_ack)
                    );
                });
            }
        });
        Ok(TcpLinkEmulator { addr, delays, task })
    }

    /// The address clients connect to instead of the target.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes the round-trip time for connections accepted from now on.
    pub fn set_rtt(&self, rtt: Duration) {
        if let Ok(mut d) = self.delays.lock() {
            *d = (rtt / 2, rtt - rtt / 2);
        }
    }
}

impl Drop for TcpLinkEmulator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn tcp_pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
    sent_no_earlier_than: Instant,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(TcpLinkEmulator::QUEUE_CHUNKS);
    let reader = async move {
        let mut buf = vec![0u8; 65536];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let sent = Instant::now().max(sent_no_earlier_than);
                    if tx.send((sent + delay, buf[..n].to_vec())).await.is_err() {
                        break;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}
