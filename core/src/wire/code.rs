//! Status codes and the QUIC stream reset codes.

use std::fmt;

/// The 17 gRPC status codes, with gRPC's names and numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Code {
    /// Success.
    Ok = 0,
    /// The call was cancelled, usually by the caller.
    Cancelled = 1,
    /// An error that fits no other code.
    Unknown = 2,
    /// The client sent an argument the server cannot accept.
    InvalidArgument = 3,
    /// The deadline passed before the call completed.
    DeadlineExceeded = 4,
    /// A requested entity was not found.
    NotFound = 5,
    /// The entity the client tried to create exists already.
    AlreadyExists = 6,
    /// The caller may not run this call.
    PermissionDenied = 7,
    /// A resource (size, quota, capacity) is exhausted.
    ResourceExhausted = 8,
    /// The system is not in a state required for the call.
    FailedPrecondition = 9,
    /// The call was aborted, usually by a concurrency conflict.
    Aborted = 10,
    /// A value was outside the valid range.
    OutOfRange = 11,
    /// The method is not implemented or not known by this server.
    Unimplemented = 12,
    /// An invariant broke inside the server.
    Internal = 13,
    /// The service is unavailable; retrying may help.
    Unavailable = 14,
    /// Unrecoverable data loss or corruption.
    DataLoss = 15,
    /// The caller has no valid credentials.
    Unauthenticated = 16,
}

impl Code {
    /// Parses a numeric code; unknown numbers map to [`Code::Unknown`], as gRPC does.
    pub fn from_u64(v: u64) -> Code {
        use Code::*;
        match v {
            0 => Ok,
            1 => Cancelled,
            3 => InvalidArgument,
            4 => DeadlineExceeded,
            5 => NotFound,
            6 => AlreadyExists,
            7 => PermissionDenied,
            8 => ResourceExhausted,
            9 => FailedPrecondition,
            10 => Aborted,
            11 => OutOfRange,
            12 => Unimplemented,
            13 => Internal,
            14 => Unavailable,
            15 => DataLoss,
            16 => Unauthenticated,
            _ => Unknown,
        }
    }

    /// The gRPC name, e.g. `DEADLINE_EXCEEDED`.
    pub fn name(self) -> &'static str {
        use Code::*;
        match self {
            Ok => "OK",
            Cancelled => "CANCELLED",
            Unknown => "UNKNOWN",
            InvalidArgument => "INVALID_ARGUMENT",
            DeadlineExceeded => "DEADLINE_EXCEEDED",
            NotFound => "NOT_FOUND",
            AlreadyExists => "ALREADY_EXISTS",
            PermissionDenied => "PERMISSION_DENIED",
            ResourceExhausted => "RESOURCE_EXHAUSTED",
            FailedPrecondition => "FAILED_PRECONDITION",
            Aborted => "ABORTED",
            OutOfRange => "OUT_OF_RANGE",
            Unimplemented => "UNIMPLEMENTED",
            Internal => "INTERNAL",
            Unavailable => "UNAVAILABLE",
            DataLoss => "DATA_LOSS",
            Unauthenticated => "UNAUTHENTICATED",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Application error codes used in QUIC `RESET_STREAM`, `STOP_SENDING` and
/// `CONNECTION_CLOSE` frames.
pub mod reset {
    /// The stream ended without error (used when closing a connection cleanly).
    pub const NO_ERROR: u32 = 0x00;
    /// The caller gave up on the call (dropped it or cancelled it).
    pub const CANCELLED: u32 = 0x01;
    /// The call's deadline passed.
    pub const DEADLINE_EXCEEDED: u32 = 0x02;
    /// The peer broke the framing rules; the call is abandoned.
    pub const PROTOCOL_ERROR: u32 = 0x03;
    /// The server refused the stream before running anything (shutting down or overloaded):
    /// the call may be retried elsewhere even if it is not idempotent.
    pub const REFUSED: u32 = 0x04;
    /// A message exceeded a size limit.
    pub const TOO_LARGE: u32 = 0x05;
    /// Connection close: the server is shutting down.
    pub const SHUTDOWN: u32 = 0x10;
    /// Connection close: the server retired this connection (idle or too old) and still
    /// serves; reconnect when a call needs it. Its reason phrase names the first stream
    /// that did not run, as [`SHUTDOWN`]'s does.
    pub const RETIRED: u32 = 0x11;
}
