//! `meridian-bench connect`: time from "connect" to "first response" over emulated WAN
//! links, and CPU time per connection setup on loopback.
//!
//! Three ways to get a first answer from a server that is one RTT away:
//! - Meridian with a full QUIC handshake (no session ticket): about 2 RTT;
//! - Meridian resuming with 0-RTT (the call rides in the first flight): about 1 RTT;
//! - tonic gRPC over TCP + TLS 1.3 through a TCP relay with the same delay: TCP's
//!   handshake, TLS's, then the call: about 3 RTT.
//!
//! Servers run in their own processes (`serve meridian`, `serve tonic-tls`); the links
//! run in this process.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use bytes::Bytes;
use meridian::testing::{LinkEmulator, LinkSettings, TcpLinkEmulator};
use meridian::{Channel, ClientTls};

use crate::cost::{cpu_ns, own_tid};
use crate::driver::ServerProcess;
use crate::kinds::grpc::TonicClient;
use crate::kinds::{Client, Kind, Listening};
use crate::tls::SERVER_NAME;
use crate::Result;

/// Options of `connect`.
pub struct ConnectPlan {
    /// Emulated round-trip times.
    pub rtts: Vec<Duration>,
    /// Connections timed per RTT and method.
    pub runs: usize,
    /// Connections set up on loopback to measure CPU time.
    pub setups: usize,
    /// The setup methods whose CPU time is measured (all by default): one alone, for a
    /// profile of the driver process that sees only that method's client.
    pub methods: Vec<Setup>,
}

struct Timing {
    label: &'static str,
    rtt: Duration,
    samples: Vec<Duration>,
}

impl Timing {
    fn percentile(&self, p: f64) -> Duration {
        let mut s = self.samples.clone();
        s.sort();
        s[((s.len() - 1) as f64 * p).round() as usize]
    }
}

fn payload() -> Bytes {
    Bytes::from(vec![7u8; 64])
}

async fn meridian_first_response(
    addr: std::net::SocketAddr,
    tls: &ClientTls,
) -> Result<(Duration, Channel)> {
    first_response_on(addr, tls, None).await
}

/// Connects (on `endpoint` if given, else on a new UDP socket) and makes one call.
async fn first_response_on(
    addr: std::net::SocketAddr,
    tls: &ClientTls,
    endpoint: Option<&quinn::Endpoint>,
) -> Result<(Duration, Channel)> {
    let t = Instant::now();
    let mut builder = Channel::builder(addr, tls.clone()).server_name(SERVER_NAME);
    if let Some(e) = endpoint {
        builder = builder.endpoint(e.clone());
    }
    let ch = builder.connect().await?;
    ch.call("echo")
        .idempotent(true)
        .raw()
        .unary(&payload())
        .await?;
    Ok((t.elapsed(), ch))
}

async fn tonic_first_response(server: &Listening) -> Result<Duration> {
    let t = Instant::now();
    let client = TonicClient::connect(server, true).await?;
    client.call(payload()).await?;
    Ok(t.elapsed())
}

/// Runs the whole plan and returns the markdown section.
pub async fn run(plan: &ConnectPlan) -> Result<String> {
    let meridian = ServerProcess::spawn(Kind::Meridian, None)?;
    let tonic = ServerProcess::spawn(Kind::TonicTls, None)?;
    let bare_quinn = ServerProcess::spawn(Kind::Quinn, None)?;
    let m_addr = meridian.listening.addr;
    let roots = || ClientTls::with_roots([meridian.listening.cert.clone()]);

    let mut timings = Vec::new();
    for &rtt in &plan.rtts {
        let link = LinkEmulator::start(m_addr, LinkSettings::with_rtt(rtt)).await?;
        let tcp = TcpLinkEmulator::start(tonic.listening.addr, rtt).await?;
        let via_tcp = Listening {
            addr: tcp.addr(),
            cert: tonic.listening.cert.clone(),
        };

        let mut full = Vec::new();
        for _ in 0..plan.runs {
            let (d, ch) = meridian_first_response(link.addr(), &roots()?).await?;
            full.push(d);
            ch.disconnect();
        }

        let tls = roots()?;
        let (_, warm) = meridian_first_response(link.addr(), &tls).await?;
        warm.close().await;
        let mut early = Vec::new();
        for _ in 0..plan.runs {
            let (d, ch) = meridian_first_response(link.addr(), &tls).await?;
            let s = ch.stats();
            if s.early_calls != 1 {
                return Err(
                    format!("a resumed connection did not send its call early: {s:?}").into(),
                );
            }
            early.push(d);
            // Keep the connection until the new tickets arrive, outside the timing.
            ch.close().await;
        }

        let mut grpc = Vec::new();
        for _ in 0..plan.runs {
            grpc.push(tonic_first_response(&via_tcp).await?);
        }
        timings.push(Timing {
            label: "Meridian, full QUIC handshake",
            rtt,
            samples: full,
        });
        timings.push(Timing {
            label: "Meridian, 0-RTT resumption",
            rtt,
            samples: early,
        });
        timings.push(Timing {
            label: "tonic, TCP + TLS 1.3",
            rtt,
            samples: grpc,
        });
    }

    // CPU per connection setup (connect + one call), loopback, client and server together.
    let cpu_rows = setup_cpu(plan.setups, &plan.methods, &meridian, &tonic, &bare_quinn).await?;

    let mut out = String::new();
    let _ = writeln!(out, "## Connect to first response\n");
    let _ = writeln!(
        out,
        "- command: `{}`",
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    let _ = writeln!(
        out,
        "- layout: servers in their own processes, the client and the emulated links (UDP relay for QUIC, TCP relay for tonic, same delay each way) in the driver process; {} connections per row; each timing runs from before `connect` until the first unary response (64 B) arrived\n",
        plan.runs
    );
    let _ = writeln!(out, "| RTT | method | median ms | p90 ms | median / RTT |");
    let _ = writeln!(out, "| --- | --- | --- | --- | --- |");
    for t in &timings {
        let med = t.percentile(0.5);
        let _ = writeln!(
            out,
            "| {} ms | {} | {:.1} | {:.1} | {:.2} |",
            t.rtt.as_millis(),
            t.label,
            med.as_secs_f64() * 1e3,
            t.percentile(0.9).as_secs_f64() * 1e3,
            med.as_secs_f64() / t.rtt.as_secs_f64()
        );
    }
    let _ = writeln!(
        out,
        "\n### CPU per connection setup (loopback, connect + one call)\n"
    );
    let _ = writeln!(out, "{} setups each, in {} rounds taking the methods in turns; CPU time from `/proc/<pid>/task/<tid>/schedstat` of the client thread and the server's thread. The first four methods close each connection right after its call; the last three stay idle for about 2 ms first (bare quinn by a sleep, Meridian until the session tickets arrive), and an idle pause between setups costs both processes CPU of its own: compare each group within itself.\n", plan.setups, setup_rounds(plan.setups));
    let _ = writeln!(out, "| method | client µs | server µs | total µs |");
    let _ = writeln!(out, "| --- | --- | --- | --- |");
    for (setup, c, s) in cpu_rows {
        let label = setup.label();
        let n = plan.setups as f64;
        let _ = writeln!(
            out,
            "| {label} | {:.0} | {:.0} | {:.0} |",
            c as f64 / n / 1e3,
            s as f64 / n / 1e3,
            (c + s) as f64 / n / 1e3
        );
    }
    Ok(out)
}

/// The ways of setting up a connection whose CPU cost is measured, in report order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setup {
    /// A full handshake on a new client UDP socket.
    FreshSocket,
    /// A full handshake on one client socket shared by every connection (a new socket per
    /// connection costs its own setup: buffers, socket options), closed right after the
    /// call, as the bare quinn and tonic rows close theirs.
    SharedSocket,
    /// Bare quinn, a full handshake on a shared client socket and one echo on a stream: the
    /// floor under Meridian's full handshake, with the same TLS and stream limits.
    BareQuinn,
    /// tonic over TCP + TLS 1.3.
    Tonic,
    /// As [`Setup::BareQuinn`], then idle for [`TICKET_WAIT`] before closing, as long as
    /// Meridian's channel waits for its session tickets on loopback: what an idle pause
    /// alone costs, with no work done in it.
    BareQuinnIdle,
    /// As [`Setup::SharedSocket`], but kept open until the session tickets have arrived
    /// ([`Channel::close`]), as the 0-RTT row must: the two rows then differ only in the
    /// handshake.
    SharedSocketTickets,
    /// A 0-RTT resumption; the channels share one `ClientTls` and so one socket.
    ZeroRtt,
}

impl Setup {
    /// Every method, in the order the report lists them.
    pub const ALL: [Setup; 7] = [
        Setup::FreshSocket,
        Setup::SharedSocket,
        Setup::BareQuinn,
        Setup::Tonic,
        Setup::BareQuinnIdle,
        Setup::SharedSocketTickets,
        Setup::ZeroRtt,
    ];

    /// The method's name on the command line (`--methods`).
    pub fn name(self) -> &'static str {
        match self {
            Setup::FreshSocket => "fresh-socket",
            Setup::ZeroRtt => "0-rtt",
            Setup::SharedSocket => "shared-socket",
            Setup::SharedSocketTickets => "shared-socket-tickets",
            Setup::Tonic => "tonic",
            Setup::BareQuinn => "bare-quinn",
            Setup::BareQuinnIdle => "bare-quinn-idle",
        }
    }

    /// The methods named in `list` (comma-separated [`Setup::name`]s), in report order.
    pub fn parse_list(list: &str) -> Result<Vec<Setup>> {
        let mut chosen = Vec::new();
        for name in list.split(',') {
            let setup = Setup::ALL
                .into_iter()
                .find(|s| s.name() == name)
                .ok_or_else(|| {
                    let names: Vec<_> = Setup::ALL.iter().map(|s| s.name()).collect();
                    format!(
                        "unknown setup method {name:?} (known: {})",
                        names.join(", ")
                    )
                })?;
            chosen.push(setup);
        }
        Ok(Setup::ALL
            .into_iter()
            .filter(|s| chosen.contains(s))
            .collect())
    }

    fn label(self) -> &'static str {
        match self {
            Setup::FreshSocket => "Meridian, full handshake, a new client socket each time",
            Setup::ZeroRtt => {
                "Meridian, 0-RTT resumption (channels of one ClientTls share a socket), closed once the session tickets arrived"
            }
            Setup::SharedSocket => "Meridian, full handshake, shared client socket",
            Setup::SharedSocketTickets => {
                "Meridian, full handshake, shared client socket, closed once the session tickets arrived"
            }
            Setup::Tonic => "tonic, TCP + TLS 1.3",
            Setup::BareQuinn => "bare quinn, full handshake, shared client socket",
            Setup::BareQuinnIdle => {
                "bare quinn, full handshake, shared client socket, idle 2 ms before closing"
            }
        }
    }
}

/// Rounds the setups are spread over: the methods take turns, so that a slow stretch of
/// the machine falls on all of them alike rather than on whichever row it came in.
fn setup_rounds(setups: usize) -> usize {
    setups.clamp(1, 10)
}

/// One bare quinn setup on `endpoint`: a full handshake (a new rustls configuration, so
/// there is no session to resume), one 64 B echo on a stream, then close. The client allows
/// the server no streams, as Meridian's client does; the server is the bare quinn kind's,
/// with 1,024 streams as Meridian's. One difference stays: the bare quinn server keeps
/// quinn's default path MTU search (four probes where Meridian's sends two). With `idle`,
/// waits that long after the echo before closing.
async fn bare_quinn_setup(
    endpoint: &quinn::Endpoint,
    server: &Listening,
    idle: Option<Duration>,
) -> Result<()> {
    use quinn::crypto::rustls::QuicClientConfig;
    let crypto = QuicClientConfig::try_from(crate::tls::client_config(
        &server.cert,
        &[crate::kinds::quinn::ALPN],
    )?)?;
    let mut config = quinn::ClientConfig::new(std::sync::Arc::new(crypto));
    let mut transport = crate::kinds::quinn::transport_config();
    transport.max_concurrent_bidi_streams(0u32.into());
    config.transport_config(std::sync::Arc::new(transport));
    let connection = endpoint
        .connect_with(config, server.addr, SERVER_NAME)?
        .await?;
    let (mut send, mut recv) = connection.open_bi().await?;
    send.write_all(&payload()).await?;
    send.finish()?;
    let echo = recv.read_to_end(1 << 16).await?;
    if echo != payload() {
        return Err("bare quinn: the echo differs from the payload".into());
    }
    if let Some(idle) = idle {
        tokio::time::sleep(idle).await;
    }
    connection.close(0u32.into(), b"done");
    Ok(())
}

/// How long a Meridian channel on loopback stays open after its handshake for the session
/// tickets ([`Channel::close`]: 1.5 RTT + 2 ms), rounded: the idle pause of
/// [`Setup::BareQuinnIdle`].
const TICKET_WAIT: Duration = Duration::from_millis(2);

/// Idle time after each batch of setups, before its CPU time is read: longer than a closed
/// QUIC connection's draining period (three probe timeouts, each at least the peer's
/// 25 ms maximum ACK delay: about 80 ms on loopback), whose timers and, for the
/// fresh-socket method, socket teardown would otherwise fall in the next method's batch.
const SETTLE: Duration = Duration::from_millis(250);

/// Setups of each method in `round` of `rounds`: an even share, the remainder spread over
/// the first rounds.
fn batch(setups: usize, rounds: usize, round: usize) -> usize {
    setups / rounds + usize::from(round < setups % rounds)
}

/// Client and server CPU time in nanoseconds over `setups` setups of each [`Setup`], made
/// in [`setup_rounds`] rounds with the methods in turns.
async fn setup_cpu(
    setups: usize,
    methods: &[Setup],
    meridian: &ServerProcess,
    tonic: &ServerProcess,
    bare_quinn: &ServerProcess,
) -> Result<Vec<(Setup, u64, u64)>> {
    let me = std::process::id();
    let tid = own_tid()?;
    let m_addr = meridian.listening.addr;
    let tls_fresh = || ClientTls::with_roots([meridian.listening.cert.clone()]);
    // One ClientTls for every 0-RTT setup, holding a session from a first connection.
    let resuming = tls_fresh()?;
    let (_, warm) = meridian_first_response(m_addr, &resuming).await?;
    warm.close().await;
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    let quinn_endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;

    let rounds = setup_rounds(setups);
    let mut totals: Vec<(Setup, u64, u64)> = methods.iter().map(|&s| (s, 0, 0)).collect();
    for round in 0..rounds {
        let batch = batch(setups, rounds, round);
        for i in crate::paired::turn_order(round, methods.len()) {
            let setup = methods[i];
            let server = match setup {
                Setup::Tonic => tonic,
                Setup::BareQuinn | Setup::BareQuinnIdle => bare_quinn,
                Setup::FreshSocket
                | Setup::SharedSocket
                | Setup::SharedSocketTickets
                | Setup::ZeroRtt => meridian,
            };
            let (c0, s0) = (cpu_ns(me, tid)?, cpu_ns(server.pid(), server.pid())?);
            for _ in 0..batch {
                match setup {
                    Setup::FreshSocket => {
                        let (_, ch) = meridian_first_response(m_addr, &tls_fresh()?).await?;
                        ch.disconnect();
                    }
                    Setup::ZeroRtt => {
                        let (_, ch) = meridian_first_response(m_addr, &resuming).await?;
                        if ch.stats().early_calls != 1 {
                            return Err(
                                "a resumed connection (CPU row) did not send its call early".into(),
                            );
                        }
                        // Waits (idle) for the next session tickets before closing.
                        ch.close().await;
                    }
                    Setup::SharedSocket => {
                        let (_, ch) =
                            first_response_on(m_addr, &tls_fresh()?, Some(&endpoint)).await?;
                        ch.disconnect();
                    }
                    Setup::SharedSocketTickets => {
                        let (_, ch) =
                            first_response_on(m_addr, &tls_fresh()?, Some(&endpoint)).await?;
                        // Ended as the 0-RTT row ends (taking the session tickets in, then
                        // closing), so the two rows differ only in the handshake.
                        ch.close().await;
                    }
                    Setup::Tonic => {
                        tonic_first_response(&tonic.listening).await?;
                    }
                    Setup::BareQuinn => {
                        bare_quinn_setup(&quinn_endpoint, &bare_quinn.listening, None).await?
                    }
                    Setup::BareQuinnIdle => {
                        let idle = Some(TICKET_WAIT);
                        bare_quinn_setup(&quinn_endpoint, &bare_quinn.listening, idle).await?
                    }
                }
            }
            // Connections end in the background (a disconnected channel's socket closes
            // once its driver sees it); an idle pause lets that finish, so that it is
            // charged to this batch and not to the next method's.
            tokio::time::sleep(SETTLE).await;
            let (c1, s1) = (cpu_ns(me, tid)?, cpu_ns(server.pid(), server.pid())?);
            totals[i].1 += c1 - c0;
            totals[i].2 += s1 - s0;
        }
    }
    Ok(totals)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setup_is_made_the_number_of_times_asked() {
        for setups in [1, 7, 10, 300, 305] {
            let rounds = setup_rounds(setups);
            let made: usize = (0..rounds).map(|round| batch(setups, rounds, round)).sum();
            assert_eq!(made, setups, "{setups} setups in {rounds} rounds");
        }
    }

    #[test]
    fn methods_are_named_and_kept_in_report_order() {
        for s in Setup::ALL {
            assert_eq!(Setup::parse_list(s.name()).unwrap(), vec![s]);
        }
        assert_eq!(
            Setup::parse_list("tonic,shared-socket,tonic").unwrap(),
            vec![Setup::SharedSocket, Setup::Tonic]
        );
        assert!(Setup::parse_list("shared").is_err());
        assert!(Setup::parse_list("").is_err());
    }
}
