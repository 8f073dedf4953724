//! The reason phrase of a server's `CONNECTION_CLOSE(SHUTDOWN)`: which calls provably never
//! reached a handler (docs/PROTOCOL.md §4.3).

/// Marks the machine-readable part of the reason phrase.
const NOT_RUN_FROM: &str = "not-run-from=";

/// The reason phrase of a `CONNECTION_CLOSE(SHUTDOWN)`: `text`, then the ID of the first
/// call stream that never reached a handler. No handler ran, or will run, for any
/// client-initiated bidirectional stream with an ID at or above `first_not_run`; 0 means
/// no call on the connection ran.
///
/// ```
/// use meridian::wire::{shutdown_not_run_from, shutdown_reason};
/// let reason = shutdown_reason("server shutting down", 12);
/// assert_eq!(reason, b"server shutting down; not-run-from=12");
/// assert_eq!(shutdown_not_run_from(&reason), Some(12));
/// ```
pub fn shutdown_reason(text: &str, first_not_run: u64) -> Vec<u8> {
    format!("{text}; {NOT_RUN_FROM}{first_not_run}").into_bytes()
}

/// The first call stream ID a `CONNECTION_CLOSE(SHUTDOWN)` reason phrase vouches never
/// ran (see [`shutdown_reason`]); `None` when the phrase does not say (an older server, a
/// close that is not a graceful shutdown).
pub fn shutdown_not_run_from(reason: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(reason).ok()?;
    let (_, n) = text.rsplit_once(NOT_RUN_FROM)?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}
