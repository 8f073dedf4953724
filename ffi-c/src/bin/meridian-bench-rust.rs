//! The Rust side of the C boundary benchmark: the same unary call as `bench/bench_unary.c`
//! (64 raw bytes to `echo`), made the way libmeridian makes it (a multi-threaded runtime,
//! the caller's thread blocked on the call), without the C boundary.
//!
//! `meridian-bench-rust PORT CA_PEM CALLS` prints `rust p50_us=<..> mean_us=<..>`.

use std::time::Instant;

use bytes::Bytes;
use mcore::{Channel, ClientTls};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: meridian-bench-rust PORT CA_PEM CALLS";
    let port: u16 = args.next().ok_or(usage)?.parse()?;
    let ca = args.next().ok_or(usage)?;
    let calls: usize = args.next().ok_or(usage)?.parse()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let tls = ClientTls::with_roots_pem_file(ca)?;
    let channel = rt.block_on(Channel::builder(([127, 0, 0, 1], port).into(), tls).connect())?;
    let payload = Bytes::from(vec![b'x'; 64]);
    let mut lat = Vec::with_capacity(calls);
    for i in 0..calls + calls / 5 {
        let started = Instant::now();
        // Idiomatic Rust: no copies (the C path copies the request in and the body out, and
        // that cost is part of the boundary being measured).
        let resp = rt.block_on(channel.call("echo").raw().unary(&payload.clone()))?;
        std::hint::black_box(resp.get_ref().len());
        if i >= calls / 5 {
            lat.push(started.elapsed().as_secs_f64() * 1e6);
        }
    }
    let mean = lat.iter().sum::<f64>() / lat.len() as f64;
    lat.sort_by(f64::total_cmp);
    println!("rust p50_us={:.1} mean_us={:.1}", lat[lat.len() / 2], mean);
    Ok(())
}
