//! Decoding errors.

use super::frame::FrameKind;

/// Errors found while decoding frames or their payloads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The input ended in the middle of a value.
    #[error("truncated frame")]
    Truncated,
    /// A frame kind this implementation does not know.
    #[error("unknown frame kind 0x{0:02x}")]
    UnknownFrame(u8),
    /// A frame arrived where the protocol does not allow it.
    #[error("unexpected {got} frame, expected {expected}")]
    UnexpectedFrame {
        /// What arrived.
        got: FrameKind,
        /// What the protocol allows at this point.
        expected: &'static str,
    },
    /// A frame or field is longer than the configured limit.
    #[error("{what} of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Which limit was exceeded.
        what: &'static str,
        /// The size the peer declared.
        size: u64,
        /// The configured limit.
        limit: u64,
    },
    /// A text field is not UTF-8.
    #[error("{0} is not valid UTF-8")]
    InvalidUtf8(&'static str),
    /// A field holds a value outside its range.
    #[error("invalid {0}")]
    Invalid(&'static str),
}
