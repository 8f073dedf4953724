//! Which failed attempts the channel may send again.

use crate::status::Status;

/// Most attempts one unary call makes (first try included). An attempt after a lost
/// connection waits for the reconnection: its backoff (100 ms doubling to 5 s) plus up to
/// the handshake timeout per dial, so without a deadline the attempts can take more than a
/// minute against a server that is gone; a deadline ends them sooner.
pub(super) const MAX_ATTEMPTS: u32 = 8;

/// Whether a failed attempt may be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Retry {
    /// The server answered, or the failure says nothing about where the call got.
    No,
    /// Provably not run: never sent (no connection or stream), refused by the server,
    /// lost with rejected 0-RTT data, or failed by a close that says it did not run.
    NotStarted,
    /// The connection died with the call in flight: it may or may not have run.
    MaybeStarted,
}

pub(super) struct Failure {
    pub(super) status: Status,
    pub(super) retry: Retry,
}

impl Failure {
    /// The status the caller sees: marked when the call provably never ran, and saying so
    /// when it may have run.
    pub(super) fn into_status(self, idempotent: bool) -> Status {
        match self.retry {
            Retry::NotStarted => self.status.mark_not_run(),
            Retry::MaybeStarted if !idempotent => Status::unavailable(format!(
                "the connection was lost with the call in flight; it may or may not have run ({})",
                self.status.message()
            )),
            _ => self.status,
        }
    }
}

impl From<Status> for Failure {
    fn from(status: Status) -> Failure {
        Failure {
            status,
            retry: Retry::No,
        }
    }
}
