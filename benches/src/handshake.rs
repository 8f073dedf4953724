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
    let me = std::process::id();
    let tid = own_tid()?;
    let mut cpu_rows = Vec::new();
    {
        let tls_fresh = || ClientTls::with_roots([meridian.listening.cert.clone()]);
        let (c0, s0) = (cpu_ns(me, tid)?, cpu_ns(meridian.pid(), meridian.pid())?);
        for _ in 0..plan.setups {
            let (_, ch) = meridian_first_response(m_addr, &tls_fresh()?).await?;
            ch.disconnect();
        }
        let (c1, s1) = (cpu_ns(me, tid)?, cpu_ns(meridian.pid(), meridian.pid())?);
        cpu_rows.push((
            "Meridian, full handshake, a new client socket each time",
            c1 - c0,
            s1 - s0,
        ));

        let tls = tls_fresh()?;
        let (_, warm) = meridian_first_response(m_addr, &tls).await?;
        warm.close().await;
        let (c0, s0) = (cpu_ns(me, tid)?, cpu_ns(meridian.pid(), meridian.pid())?);
        for _ in 0..plan.setups {
            let (_, ch) = meridian_first_response(m_addr, &tls).await?;
            if ch.stats().early_calls != 1 {
                return Err("a resumed connection (CPU row) did not send its call early".into());
            }
            // Waits (idle) for the next session tickets before closing.
            ch.close().await;
        }
        let (c1, s1) = (cpu_ns(me, tid)?, cpu_ns(meridian.pid(), meridian.pid())?);
        cpu_rows.push((
            "Meridian, 0-RTT resumption (channels of one ClientTls share a socket)",
            c1 - c0,
            s1 - s0,
        ));

        // A full handshake again, with one client UDP socket shared by every connection:
        // a new socket per connection costs its own setup (buffers, socket options).
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
        let (c0, s0) = (cpu_ns(me, tid)?, cpu_ns(meridian.pid(), meridian.pid())?);
        for _ in 0..plan.setups {
            let (_, ch) = first_response_on(m_addr, &tls_fresh()?, Some(&endpoint)).await?;
            // Ended as the 0-RTT row ends (taking the session tickets in, then closing),
            // so the two rows differ only in the handshake.
            ch.close().await;
        }
        let (c1, s1) = (cpu_ns(me, tid)?, cpu_ns(meridian.pid(), meridian.pid())?);
        cpu_rows.push((
            "Meridian, full handshake, shared client socket",
            c1 - c0,
            s1 - s0,
        ));

        let (c0, s0) = (cpu_ns(me, tid)?, cpu_ns(tonic.pid(), tonic.pid())?);
        for _ in 0..plan.setups {
            tonic_first_response(&tonic.listening).await?;
        }
        let (c1, s1) = (cpu_ns(me, tid)?, cpu_ns(tonic.pid(), tonic.pid())?);
        cpu_rows.push(("tonic, TCP + TLS 1.3", c1 - c0, s1 - s0));
    }

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
    let _ = writeln!(out, "{} setups each; CPU time from `/proc/<pid>/task/<tid>/schedstat` of the client thread and the server's thread.\n", plan.setups);
    let _ = writeln!(out, "| method | client µs | server µs | total µs |");
    let _ = writeln!(out, "| --- | --- | --- | --- |");
    for (label, c, s) in cpu_rows {
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
