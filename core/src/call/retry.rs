//! The one retry-safety rule: may a failed attempt of a call be sent again? The channel,
//! the region client and the proxy all ask this function, so the promise "a call that is not
//! idempotent runs again only when it provably did not run" is written once.

use std::time::Instant;

use crate::status::Status;
use crate::wire::Code;

/// When a routed call is sent again after a failure: how many attempts at most, and which
/// codes count as a failure of the server (rather than its answer). The one retry rule
/// still decides safety: a call that provably never ran may always go again, one that may
/// have run only if it is idempotent and failed with one of `retry_on`. Set per method on a
/// region client (and so on a proxy).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Most attempts of one call, the first included (at least 1). Default 4.
    pub max_attempts: u32,
    /// Codes after which an idempotent call may go again. Default: `UNAVAILABLE`,
    /// `DEADLINE_EXCEEDED` (within the caller's deadline), `INTERNAL`, `UNKNOWN`,
    /// `DATA_LOSS`.
    pub retry_on: Vec<Code>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 4,
            retry_on: SERVER_FAILURES.to_vec(),
        }
    }
}

impl RetryPolicy {
    /// At most `max_attempts` attempts (at least 1), on the default codes.
    pub fn attempts(max_attempts: u32) -> Self {
        RetryPolicy {
            max_attempts: max_attempts.max(1),
            ..Self::default()
        }
    }

    /// The same policy, retrying idempotent calls only after these codes.
    pub fn retry_on(mut self, codes: impl IntoIterator<Item = Code>) -> Self {
        self.retry_on = codes.into_iter().collect();
        self
    }

    /// [`may_send_again_before`] under this policy's codes.
    pub(crate) fn may_send_again_before(
        &self,
        status: &Status,
        idempotent: bool,
        deadline: Option<Instant>,
    ) -> bool {
        let allowed =
            status.is_known_not_run() || (idempotent && self.retry_on.contains(&status.code()));
        allowed && within(status, deadline)
    }
}

const SERVER_FAILURES: [Code; 5] = [
    Code::Unavailable,
    Code::DeadlineExceeded,
    Code::Internal,
    Code::Unknown,
    Code::DataLoss,
];

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
    may_send_again(status, idempotent) && within(status, deadline)
}

/// Never past the deadline; and without one, DEADLINE_EXCEEDED is final.
fn within(status: &Status, deadline: Option<Instant>) -> bool {
    match deadline {
        Some(d) => Instant::now() < d,
        None => status.code() != Code::DeadlineExceeded,
    }
}

/// Whether a status says the server or the network failed rather than the request.
pub(crate) fn is_server_failure(code: Code) -> bool {
    SERVER_FAILURES.contains(&code)
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
    fn a_policy_narrows_the_codes_but_never_the_not_run_rule() {
        let only_unavailable = RetryPolicy::attempts(2).retry_on([Code::Unavailable]);
        let internal = Status::internal("boom");
        assert!(RetryPolicy::default().may_send_again_before(&internal, true, None));
        assert!(!only_unavailable.may_send_again_before(&internal, true, None));
        let lost = Status::unavailable("lost");
        assert!(only_unavailable.may_send_again_before(&lost, true, None));
        assert!(!only_unavailable.may_send_again_before(&lost, false, None));
        let refused = Status::internal("refused").mark_not_run();
        assert!(only_unavailable.may_send_again_before(&refused, false, None));
        assert_eq!(RetryPolicy::attempts(0).max_attempts, 1);
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
