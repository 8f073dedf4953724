//! W3C trace context (`traceparent`) carried in call metadata.
//!
//! A client that is part of a trace sends `traceparent: 00-<trace id>-<span id>-<flags>`
//! in its metadata. A server records the trace id and the caller's span id in the call's
//! span and access-log line; the proxy continues the trace: it forwards the call with the
//! same trace id and a span id of its own, so the server's record names the proxy's hop as
//! its parent. The format is <https://www.w3.org/TR/trace-context/#traceparent-header>.

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::wire::Metadata;

/// The metadata key of the trace context.
pub const TRACEPARENT: &str = "traceparent";

/// One position in a distributed trace: which trace, which span, sampled or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace's id (never all zeros).
    pub trace_id: [u8; 16],
    /// The id of the span that sent the call (never all zeros).
    pub span_id: [u8; 8],
    /// Trace flags; bit 0 is "sampled".
    pub flags: u8,
}

impl TraceContext {
    /// A new trace, sampled, with fresh ids.
    pub fn new_root() -> TraceContext {
        let hi = random_u64();
        let lo = random_u64();
        let mut trace_id = [0u8; 16];
        trace_id[..8].copy_from_slice(&hi.to_be_bytes());
        trace_id[8..].copy_from_slice(&lo.to_be_bytes());
        TraceContext {
            trace_id,
            span_id: random_u64().to_be_bytes(),
            flags: 1,
        }
    }

    /// The same trace, with a fresh span id: what a hop sends on as the parent of the next.
    pub fn child(&self) -> TraceContext {
        TraceContext {
            span_id: random_u64().to_be_bytes(),
            ..*self
        }
    }

    /// Parses a `traceparent` value; `None` if it is malformed (as the W3C text says, a
    /// receiver then ignores it).
    pub fn parse(s: &str) -> Option<TraceContext> {
        let mut parts = s.trim().split('-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let span = parts.next()?;
        let flags = parts.next()?;
        // Version 00 has exactly four fields; a later version may add more after them.
        if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
            return None;
        }
        hex_u8(version)?;
        let mut trace_id = [0u8; 16];
        let mut span_id = [0u8; 8];
        hex_into(trace, &mut trace_id)?;
        hex_into(span, &mut span_id)?;
        if trace_id == [0; 16] || span_id == [0; 8] || flags.len() != 2 {
            return None;
        }
        Some(TraceContext {
            trace_id,
            span_id,
            flags: hex_u8(flags)?,
        })
    }

    /// The context a call's metadata carries, if any (and well formed).
    pub fn from_metadata(metadata: &Metadata) -> Option<TraceContext> {
        TraceContext::parse(metadata.get_str(TRACEPARENT)?)
    }

    /// The trace id as 32 lower-case hex digits.
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// The span id as 16 lower-case hex digits.
    pub fn span_id_hex(&self) -> String {
        hex(&self.span_id)
    }
}

impl fmt::Display for TraceContext {
    /// The `traceparent` value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&self.span_id),
            self.flags
        )
    }
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn hex_u8(s: &str) -> Option<u8> {
    // Lower-case only, as the W3C format requires.
    if s.len() != 2 || s.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    u8::from_str_radix(s, 16).ok()
}

fn hex_into(s: &str, out: &mut [u8]) -> Option<()> {
    if s.len() != out.len() * 2 || !s.is_ascii() {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = hex_u8(&s[2 * i..2 * i + 2])?;
    }
    Some(())
}

/// 64 random bits for ids (not for secrets): std's per-process random hash keys, mixed
/// with a counter, so no extra crate is needed. Never 0.
fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    loop {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        let v = h.finish();
        if v != 0 {
            return v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_round_trips() {
        let s = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t = TraceContext::parse(s).unwrap();
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.span_id_hex(), "00f067aa0ba902b7");
        assert_eq!(t.flags, 1);
        assert_eq!(t.to_string(), s);
    }

    #[test]
    fn malformed_values_are_ignored() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e47é-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_child_keeps_the_trace_and_changes_the_span() {
        let root = TraceContext::new_root();
        let child = root.child();
        assert_eq!(child.trace_id, root.trace_id);
        assert_ne!(child.span_id, root.span_id);
        assert_ne!(TraceContext::new_root().trace_id, root.trace_id);
    }
}
