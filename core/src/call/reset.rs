//! Stream reset codes and the statuses they stand for, both ways.

use crate::status::Status;
use crate::wire::{self, reset};

/// The status matching a stream reset code received from the peer.
pub(crate) fn status_for_reset(code: u64) -> Status {
    match u32::try_from(code).unwrap_or(u32::MAX) {
        reset::CANCELLED => Status::cancelled("the peer cancelled the call"),
        reset::DEADLINE_EXCEEDED => Status::deadline_exceeded("deadline exceeded"),
        reset::REFUSED => Status::unavailable("the server refused the call before running it"),
        reset::TOO_LARGE => Status::resource_exhausted("message too large"),
        reset::PROTOCOL_ERROR => Status::internal("the peer reported a protocol error"),
        other => Status::unknown(format!("stream reset with code {other}")),
    }
}

/// The reset code that tells the peer why we abandoned a call.
pub(crate) fn reset_for_status(status: &Status) -> u32 {
    match status.code() {
        wire::Code::DeadlineExceeded => reset::DEADLINE_EXCEEDED,
        wire::Code::ResourceExhausted => reset::TOO_LARGE,
        _ => reset::CANCELLED,
    }
}
