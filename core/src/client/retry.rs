//! Which failed attempts the channel may send again.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

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
    /// Provably not run: never sent (no connection or stream), refused by the server, or
    /// failed by a close that says it did not run.
    NotStarted,
    /// Sent in 0-RTT data the server rejected: it saw nothing; the same attempt goes again
    /// once the handshake is done.
    EarlyRejected,
    /// The connection died with the call in flight: it may or may not have run.
    MaybeStarted,
}

/// Whether a call on a channel may have reached its server so far, for a caller that gives
/// the call up midway (a region client whose server was ejected): not while every attempt
/// provably did not run (none sent yet, refused, failed by a close that says so, waiting to
/// be sent again); yes from the moment an attempt's stream is opened until it proves not
/// run, and for good once an attempt may have run.
#[derive(Debug, Clone, Default)]
pub(crate) struct Reach(Arc<AtomicU8>);

impl Reach {
    const NONE: u8 = 0;
    const IN_FLIGHT: u8 = 1;
    const MAY_HAVE_RUN: u8 = 2;

    /// An attempt's stream is open: its bytes may reach the server from now on.
    pub(super) fn opened(&self) {
        let _ = self.0.compare_exchange(
            Self::NONE,
            Self::IN_FLIGHT,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
    }

    /// The attempt in flight ended: `retry` says whether it may have run.
    pub(super) fn ended(&self, retry: Retry) {
        if retry == Retry::NotStarted {
            let _ = self.0.compare_exchange(
                Self::IN_FLIGHT,
                Self::NONE,
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
        } else {
            self.0.store(Self::MAY_HAVE_RUN, Ordering::SeqCst);
        }
    }

    /// Whether the call may have reached the server.
    pub(crate) fn may_have_reached(&self) -> bool {
        self.0.load(Ordering::SeqCst) != Self::NONE
    }
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
            Retry::NotStarted | Retry::EarlyRejected => self.status.mark_not_run(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_may_have_reached_its_server_only_while_an_attempt_is_open_or_after_one_may_have_run()
    {
        let reach = Reach::default();
        assert!(!reach.may_have_reached(), "nothing sent yet");
        reach.opened();
        assert!(reach.may_have_reached());
        reach.ended(Retry::NotStarted);
        assert!(
            !reach.may_have_reached(),
            "refused: waiting to be sent again"
        );
        reach.opened();
        reach.ended(Retry::MaybeStarted);
        assert!(reach.may_have_reached());
        // Once an attempt may have run, later attempts change nothing.
        reach.opened();
        reach.ended(Retry::NotStarted);
        assert!(reach.may_have_reached());
    }
}
