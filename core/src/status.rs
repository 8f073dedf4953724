//! [`Status`]: the outcome of a failed call, and [`Error`]: failures outside calls.

use std::fmt;

use crate::wire::{Code, Metadata};

/// Why a call failed: a gRPC status code, a message and optional metadata.
///
/// Servers return it from handlers; clients receive it from the server's TRAILERS or make
/// it themselves (deadline passed, connection lost, ...).
#[derive(Clone, PartialEq, Eq)]
pub struct Status {
    code: Code,
    message: String,
    metadata: Metadata,
    not_run: bool,
    answered: bool,
}

macro_rules! status_ctor {
    ($($(#[$doc:meta])* $name:ident => $code:ident,)*) => {
        $(
            $(#[$doc])*
            pub fn $name(message: impl Into<String>) -> Status {
                Status::new(Code::$code, message)
            }
        )*
    };
}

impl Status {
    /// A status with the given code and message.
    pub fn new(code: Code, message: impl Into<String>) -> Status {
        Status {
            code,
            message: message.into(),
            metadata: Metadata::new(),
            not_run: false,
            answered: false,
        }
    }

    /// Adds metadata (sent in the TRAILERS).
    pub fn with_metadata(mut self, metadata: Metadata) -> Status {
        self.metadata = metadata;
        self
    }

    status_ctor! {
        /// `CANCELLED`: the caller gave up.
        cancelled => Cancelled,
        /// `UNKNOWN`.
        unknown => Unknown,
        /// `INVALID_ARGUMENT`: the request cannot be accepted.
        invalid_argument => InvalidArgument,
        /// `DEADLINE_EXCEEDED`: the deadline passed.
        deadline_exceeded => DeadlineExceeded,
        /// `NOT_FOUND`.
        not_found => NotFound,
        /// `ALREADY_EXISTS`.
        already_exists => AlreadyExists,
        /// `PERMISSION_DENIED`.
        permission_denied => PermissionDenied,
        /// `RESOURCE_EXHAUSTED`: a size limit or quota was hit.
        resource_exhausted => ResourceExhausted,
        /// `FAILED_PRECONDITION`.
        failed_precondition => FailedPrecondition,
        /// `ABORTED`.
        aborted => Aborted,
        /// `OUT_OF_RANGE`.
        out_of_range => OutOfRange,
        /// `UNIMPLEMENTED`: unknown method.
        unimplemented => Unimplemented,
        /// `INTERNAL`: a server invariant broke (a handler panicked, ...).
        internal => Internal,
        /// `UNAVAILABLE`: the server cannot be reached; retrying may help.
        unavailable => Unavailable,
        /// `DATA_LOSS`.
        data_loss => DataLoss,
        /// `UNAUTHENTICATED`.
        unauthenticated => Unauthenticated,
    }

    /// Whether the client knows the server never ran the call (it refused the call,
    /// rejected the 0-RTT data that carried it, or could not be reached): such a call may
    /// be sent elsewhere even if it is not idempotent.
    pub fn is_known_not_run(&self) -> bool {
        self.not_run
    }

    pub(crate) fn mark_not_run(mut self) -> Status {
        self.not_run = true;
        self
    }

    /// The same status, its message followed by `note` (flags and metadata kept).
    pub(crate) fn annotate(mut self, note: &str) -> Status {
        self.message = format!("{} ({note})", self.message);
        self
    }

    pub(crate) fn clear_not_run(mut self) -> Status {
        self.not_run = false;
        self
    }

    /// Whether the status is the server's own answer, received in its TRAILERS (a
    /// handler's error, or the server refusing the call), rather than one the client made
    /// itself because no answer came (connection lost, deadline passed, cannot connect).
    /// Routing counts only the latter against a server's health: a handler's errors say
    /// nothing about whether the server can serve its other methods.
    pub fn is_answer(&self) -> bool {
        self.answered
    }

    pub(crate) fn mark_answered(mut self) -> Status {
        self.answered = true;
        self
    }

    /// The status code.
    pub fn code(&self) -> Code {
        self.code
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Metadata sent with the status.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    pub(crate) fn into_parts(self) -> (Code, String, Metadata) {
        (self.code, self.message, self.metadata)
    }
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Status");
        d.field("code", &self.code).field("message", &self.message);
        if !self.metadata.is_empty() {
            d.field("metadata", &self.metadata);
        }
        d.finish()
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.message.is_empty() {
            write!(f, "{}", self.code)
        } else {
            write!(f, "{}: {}", self.code, self.message)
        }
    }
}

impl std::error::Error for Status {}

impl From<crate::codec::CodecError> for Status {
    fn from(e: crate::codec::CodecError) -> Status {
        Status::invalid_argument(format!("cannot decode message: {e}"))
    }
}

/// A TOML error in `text` as one line, `line L, column C: message (at `that line`)`, the
/// position being that of the error's first byte (the line and column an editor shows).
pub(crate) fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim_end();
    match e.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            let source = text.lines().nth(line - 1).unwrap_or("").trim();
            let source: String = if source.chars().count() > 80 {
                source.chars().take(77).chain("...".chars()).collect()
            } else {
                source.to_string()
            };
            format!("line {line}, column {column}: {message} (at `{source}`)")
        }
        None => message.to_string(),
    }
}

/// Failures outside a call: bad configuration, unreadable certificates, a server that
/// cannot bind, a connection that cannot be established.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is not usable.
    #[error("configuration error: {0}")]
    Config(String),
    /// Reading a file or binding a socket failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// TLS setup failed (bad certificate or key).
    #[error("TLS error: {0}")]
    Tls(#[from] rustls::Error),
    /// The connection could not be established or was refused by the peer.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// The address that was dialled.
        addr: std::net::SocketAddr,
        /// Why it failed, e.g. an untrusted certificate.
        reason: String,
    },
}
