//! Errors and exit codes: what failed decides the exit code, and the message says what to do.

use std::fmt;
use std::net::SocketAddr;

use meridian::Status;

/// The exit codes in one line, for the subcommands' help.
pub const EXIT_CODES: &str = "Exit codes: 0 ok, 1 call failed, 2 usage, 3 config, 4 unreachable, \
5 untrusted, 6 other (details: `meridian --help`)";

/// The exit codes, as the top-level `meridian --help` shows them.
pub const EXIT_CODES_FULL: &str = "\
Exit codes:
  0  success
  1  a call failed: the status code name and message are printed (bench: some calls failed)
  2  bad usage or input: unknown flag, bad JSON argument, bad metadata or duration
  3  bad configuration: unreadable or invalid region or certificate file, unknown region,
     no trust given (--ca or --insecure-dev), address already in use
  4  unreachable: no server answered within --connect-timeout
  5  untrusted: the TLS handshake failed (certificate not trusted, or client certificate refused)
  6  anything else: an I/O error (e.g. the dev directory cannot be written), no HELLO
     in time for --describe, the demo failed";

/// Why the command failed, which decides its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// A call ended with a status other than OK.
    Status = 1,
    /// Bad flags or input.
    Usage = 2,
    /// Bad configuration.
    Config = 3,
    /// No server could be reached.
    Unreachable = 4,
    /// The TLS handshake failed.
    Untrusted = 5,
    /// Anything else.
    Other = 6,
}

/// A failure of the command: one line for stderr, and its exit code.
#[derive(Debug)]
pub struct CliError {
    pub exit: Exit,
    pub message: String,
    /// The status code name, when a call failed with a status (`UNAVAILABLE`).
    pub code: Option<&'static str>,
}

impl CliError {
    pub fn new(exit: Exit, message: impl Into<String>) -> CliError {
        CliError {
            exit,
            message: message.into(),
            code: None,
        }
    }

    /// The error as `{"error": {"code": "UNAVAILABLE", "message": "...", "exit": 5}}`
    /// (`code` is null when no call status is involved), for `--json`.
    pub fn to_json(&self) -> serde_json::Value {
        let text = self.to_string();
        // The code has its own field; the message need not repeat it.
        let message = match self.code {
            Some(code) => text.strip_prefix(&format!("{code}: ")).unwrap_or(&text),
            None => &text,
        };
        serde_json::json!({
            "error": {
                "code": self.code,
                "message": message,
                "exit": self.exit as u8,
            }
        })
    }

    /// Prints the error on stderr: one line, or one JSON object with `json`.
    pub fn print(&self, json: bool) {
        if json {
            eprintln!("{}", self.to_json());
        } else {
            eprintln!("meridian: error: {self}");
        }
    }

    pub fn usage(message: impl Into<String>) -> CliError {
        CliError::new(Exit::Usage, message)
    }

    pub fn config(message: impl Into<String>) -> CliError {
        CliError::new(Exit::Config, message)
    }

    pub fn other(message: impl Into<String>) -> CliError {
        CliError::new(Exit::Other, message)
    }

    /// A call's status: `CODE: message`. A call that failed because a TLS handshake
    /// failed (the client's certificate refused, the server's not trusted) is untrusted
    /// (exit code 5) and says which flag to look at.
    pub fn status(status: &Status) -> CliError {
        let line = status_line(status);
        let mut e = if status.code() == meridian::Code::Unavailable && line.contains(TLS_FAILED) {
            CliError::new(Exit::Untrusted, format!("{line} ({})", tls_hint(&line)))
        } else {
            CliError::new(Exit::Status, line)
        };
        e.code = Some(status.code().name());
        e
    }

    /// A library error, classified by what it says.
    pub fn from_meridian(e: &meridian::Error) -> CliError {
        match e {
            meridian::Error::Connect { addr, reason } => connect_failure(*addr, reason),
            // Unreadable files, addresses that cannot be bound, bad certificates.
            _ => CliError::config(e.to_string()),
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keep it to one line whatever the source said.
        f.write_str(&self.message.replace('\n', " "))
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> CliError {
        CliError::other(format!("I/O error: {e}"))
    }
}

pub type CliResult<T> = Result<T, CliError>;

/// `CODE: message`, or the code alone.
pub fn status_line(status: &Status) -> String {
    if status.message().is_empty() {
        status.code().name().to_string()
    } else {
        format!("{}: {}", status.code().name(), status.message())
    }
}

/// How the library's descriptions of a failed TLS handshake begin.
const TLS_FAILED: &str = "TLS handshake failed";

/// What to do about a failed TLS handshake, from what failed.
pub fn tls_hint(reason: &str) -> &'static str {
    let lower = reason.to_ascii_lowercase();
    // The name first: a certificate for other names is trusted, and --ca would not help.
    if lower.contains("not valid for name") {
        "the certificate is trusted but valid for other names: the name checked is the host \
         dialled unless one is given: see --server-name, or server_name in the region file \
         (per server or per region)"
    } else if lower.contains("certificate sha-256 mismatch") {
        "the server presents another certificate than the cert_sha256 published for it \
         (--pin-cert-sha256 or pin_cert_sha256 in the region file): the registry entry is \
         stale, or someone else answers at that address"
    } else if lower.contains("last connect error from") {
        "a server behind the region routing presents a certificate that is not trusted: \
         see --ca, or the [tls] ca of the proxy's configuration"
    } else if lower.contains("refused the client certificate") {
        "the server requires a client certificate issued by a CA it trusts: see --cert and --key"
    } else {
        "is its certificate trusted? see --ca and --insecure-dev"
    }
}

/// Sorts a failed connection attempt into untrusted (TLS) or unreachable.
pub fn connect_failure(addr: SocketAddr, reason: &str) -> CliError {
    let lower = reason.to_ascii_lowercase();
    let timed_out = lower.contains("timed out") || lower.contains("timeout");
    if !timed_out
        && (lower.contains("tls") || lower.contains("certificate") || lower.contains("handshake"))
    {
        CliError::new(
            Exit::Untrusted,
            format!(
                "TLS handshake with {addr} failed ({}): {reason}",
                tls_hint(reason)
            ),
        )
    } else {
        CliError::new(Exit::Unreachable, format!("cannot reach {addr}: {reason}"))
    }
}
