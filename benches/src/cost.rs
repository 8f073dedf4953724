//! What a call costs beside its time: allocations (counted by the binary's global
//! allocator, `stats_alloc`, so the driver counts its own and asks a server process for
//! its count over stdin) and CPU time (from `/proc/<pid>/task/<tid>/schedstat`).

use std::alloc::System;

use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Allocations and reallocations made by this process so far.
pub fn allocations() -> u64 {
    let s = GLOBAL.stats();
    (s.allocations + s.reallocations) as u64
}

/// CPU time (ns) the thread `tid` of process `pid` has used, from schedstat.
pub fn cpu_ns(pid: u32, tid: u32) -> crate::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat"))?;
    Ok(text
        .split_whitespace()
        .next()
        .ok_or("empty schedstat")?
        .parse()?)
}

/// The calling thread's id.
pub fn own_tid() -> crate::Result<u32> {
    let link = std::fs::read_link("/proc/thread-self")?;
    let tid = link
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or("cannot read /proc/thread-self")?;
    Ok(tid.parse()?)
}
