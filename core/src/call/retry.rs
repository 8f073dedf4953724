//! The one retry-safety rule: may a failed attempt of a call be sent again? The channel,
//! the region client and the proxy all ask this function, so the promise "a call that is not
//! idempotent runs again only when it provably did not run" is written once.

use std::time::Instant;

use crate::status::Status;
use crate::wire::Code;

/// Whether a failed attempt may be sent again (to the same server or another):
/// - a call that provably never ran ([`Status::is_known_not_run`]: refused before running,
///   an unknown method, rejected 0-RTT data, a proxy that placed it nowhere) always may;
/// - otherwise only an idempotent call may, and only after a failure of the server or the
///   network ([`is_server_failure`]), never after a handler's own answer.
///
/// Deadlines and budgets are the caller's to check on top of this.
pub(crate) fn may_send_again(status: &Status, idempotent: bool) -> bool {
    status.is_known_not_run() || (idempotent && is_server_failure(status.code()))
}

/// [`may_send_again`], for a caller whose call ends at `deadline`: never past it, and
/// without one, DEADLINE_EXCEEDED is the server's (or an upstream's) own answer, not an
/// attempt that ran out of time: final.
pub(crate) fn may_send_again_before(
    status: &Status,
    idempotent: bool,
    deadline: Option<Instant>,
) -> bool {
    may_send_again(status, idempotent)
        && match deadline {
            Some(d) => Instant::now() < d,
            None => status.code() != Code::DeadlineExceeded,
        }
}

/// Whether a status says the server or the network failed rather than the request.
pub(crate) fn is_server_failure(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Internal
            | Code::Unknown
            | Code::DataLoss
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_that_may_have_run_goes_again_only_if_idempotent_and_the_server_failed() {
        let lost = Status::unavailable("connection lost");
        assert!(may_send_again(&lost, true));
        assert!(!may_send_again(&lost, false));
        // A handler's own answer is final, even for an idempotent call.
        for answer in [
            Status::unimplemented("not here"),
            Status::invalid_argument("bad"),
            Status::not_found("no such row"),
        ] {
            assert!(!may_send_again(&answer, true), "{answer}");
            assert!(!may_send_again(&answer, false), "{answer}");
        }
    }

    #[test]
    fn a_call_that_provably_never_ran_may_always_go_again() {
        for s in [
            Status::unimplemented("unknown method").mark_not_run(),
            Status::unavailable("refused").mark_not_run(),
        ] {
            assert!(may_send_again(&s, false));
            assert!(may_send_again(&s, true));
        }
    }

    #[test]
    fn no_resend_past_the_deadline_and_a_server_s_deadline_answer_is_final() {
        let lost = Status::unavailable("connection lost");
        let soon = Some(Instant::now() + std::time::Duration::from_secs(60));
        let past = Some(Instant::now() - std::time::Duration::from_millis(1));
        assert!(may_send_again_before(&lost, true, soon));
        assert!(may_send_again_before(&lost, true, None));
        assert!(!may_send_again_before(&lost, true, past));
        let slow = Status::deadline_exceeded("deadline exceeded");
        assert!(may_send_again_before(&slow, true, soon));
        assert!(!may_send_again_before(&slow, true, None));
    }
}
