//! What can go wrong in a CLI run, and which exit code each failure gets
//! (the table is in the [`crate::cli`] module doc and `prodgate --help`).

use std::error::Error as _;
use std::path::PathBuf;
use tonic::{Code, Status};

/// Process exit codes; see the module doc of [`crate::cli`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    Ok = 0,
    Local = 1,
    Usage = 2,
    Refused = 3,
    Unreachable = 4,
    NotPromoted = 5,
    WaitTimedOut = 6,
    GateBlocks = 7,
    FollowFailed = 8,
    NotAttested = 9,
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot read {what} {}: {source}", path.display())]
    ReadFile {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `from` says where the token came from (`--token-file PATH`, …).
    #[error("the token from {from} is empty")]
    EmptyToken { from: String },
    #[error("the token from {from} must be printable ASCII without spaces")]
    BadToken { from: String },
    #[error("invalid --server {url:?}: {reason}")]
    BadServer { url: String, reason: String },
    #[error("--ca-cert, --cert and --key need an https:// --server, not {0}")]
    TlsWithoutHttps(String),
    #[error("invalid TLS setup: {0}")]
    Tls(String),
    #[error("{} holds no PEM {want} (-----BEGIN {want}-----)", path.display())]
    NotPem { path: PathBuf, want: &'static str },
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    /// `release --from-file`: the file is no release; `error` says what is
    /// wrong and where (the key, the line).
    #[error("{}: {error}", path.display())]
    ReleaseFile {
        path: PathBuf,
        error: super::release::FileError,
    },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Server(#[from] crate::server::ServerError),
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    StoreDir(#[from] crate::store::sled::dir::DirError),
    #[error("{0}")]
    Migrate(#[from] crate::store::postgres::migrate::MigrateError),
    /// The chain verdict is already on stdout (`BROKEN at sequence …`).
    #[error("the audit chain is broken")]
    ChainBroken,
    #[error("cannot reach {server}: {}", chain(.source))]
    Connect {
        server: String,
        source: tonic::transport::Error,
    },
    #[error("{}", describe_status(.0))]
    Status(#[from] Status),
    #[error("the server is {0}")]
    NotServing(String),
    #[error("the server ended the watch of promotion {0} before a terminal state")]
    WatchEnded(String),
    /// `state` is the end state's label with any detail (`SUPERSEDED by 9`).
    #[error("promotion {id} ended {state}, not PROMOTED{}", detail_suffix(.detail))]
    NotPromoted {
        id: String,
        state: String,
        detail: String,
    },
    /// `--wait --timeout` ran out; `state` is the last state seen.
    #[error(
        "gave up waiting after {}: promotion {id} is still {state}; it goes on without \
         this command (`prodgate get {id}` shows where it stands)",
        humantime::format_duration(*.after)
    )]
    WaitTimedOut {
        id: String,
        state: String,
        after: std::time::Duration,
    },
    /// `--wait` failed after the promotion was made (or approved, or
    /// found): it exists on the server and goes on there; only following
    /// it here failed, for `error`'s reason. A code of its own: 3 tells a
    /// script that nothing was recorded.
    #[error(
        "promotion {id} exists, but following it failed: {error}; `prodgate get {id}` shows \
         where it stands (`prodgate get {id} --wait` follows it again)"
    )]
    FollowFailed { id: String, error: Box<CliError> },
    /// `gates`: at least one gate blocks (the report is on stdout);
    /// `gates` lists the blocking ones by name; `subject` names what they
    /// block (`promotion 7`, or a dry run's request).
    #[error("{subject} is blocked by {gates}")]
    GateBlocks { subject: String, gates: String },
    /// Another error with what to change ([`super::client::explain`]).
    #[error("{error}; {hint}")]
    Hinted { error: Box<CliError>, hint: String },
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
    #[error("cannot write {}: {source}", path.display())]
    WriteFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Evidence(String),
    /// The bundle or proof does not verify; what failed is the message.
    #[error("NOT VERIFIED: {0}")]
    NotVerified(String),
    /// `verify-image --key`: the file is not an attestation public key.
    #[error("{}: {reason}", path.display())]
    NotAnAttestKey {
        path: PathBuf,
        reason: crate::attest::verify::NotAPublicKey,
    },
    /// `verify-image`: the registry failed or refused; retrying may help
    /// when [`crate::registry::RegistryError::is_transient`].
    #[error("{0}")]
    Registry(#[from] crate::registry::RegistryError),
    /// `verify-image`: no layer was accepted; the report (each layer's
    /// reason, the verdict) is on stdout.
    #[error("{image} carries no valid attestation for {environment}")]
    NotAttested { image: String, environment: String },
}

impl CliError {
    pub fn exit(&self) -> Exit {
        match self {
            CliError::ReadFile { .. }
            | CliError::EmptyToken { .. }
            | CliError::BadToken { .. }
            | CliError::BadServer { .. }
            | CliError::TlsWithoutHttps(_)
            | CliError::Tls(_)
            | CliError::NotPem { .. }
            | CliError::Config(_)
            | CliError::ReleaseFile { .. }
            | CliError::Listen { .. }
            | CliError::Server(_)
            | CliError::Store(_)
            | CliError::StoreDir(_)
            | CliError::Migrate(_)
            | CliError::ChainBroken
            | CliError::WriteFile { .. }
            | CliError::Evidence(_)
            | CliError::NotVerified(_)
            | CliError::NotAnAttestKey { .. }
            | CliError::Output(_) => Exit::Local,
            // The registry in the server's place: a refusal or a missing
            // image is 3, "try again later" is 4.
            CliError::Registry(e) if e.is_transient() => Exit::Unreachable,
            CliError::Registry(_) => Exit::Refused,
            CliError::NotAttested { .. } => Exit::NotAttested,
            CliError::Connect { .. } | CliError::NotServing(_) | CliError::WatchEnded(_) => {
                Exit::Unreachable
            }
            CliError::Status(s) if is_unreachable(s) => Exit::Unreachable,
            CliError::Status(_) => Exit::Refused,
            CliError::NotPromoted { .. } => Exit::NotPromoted,
            CliError::WaitTimedOut { .. } => Exit::WaitTimedOut,
            CliError::GateBlocks { .. } => Exit::GateBlocks,
            CliError::FollowFailed { .. } => Exit::FollowFailed,
            CliError::Hinted { error, .. } => error.exit(),
        }
    }

    /// A failure of the connection itself (refused, reset, TLS, a local
    /// timeout), not an answer of the server: the fix is in `--server` or
    /// the TLS options, or the server is down.
    pub fn is_transport(&self) -> bool {
        match self {
            CliError::Connect { .. } => true,
            CliError::Status(s) => s.source().is_some(),
            CliError::Hinted { error, .. } => error.is_transport(),
            _ => false,
        }
    }

    /// The local error behind a transport failure, for a closer look
    /// (which TLS check failed).
    pub fn transport_cause(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CliError::Connect { source, .. } => Some(source),
            CliError::Status(s) => s.source(),
            CliError::Hinted { error, .. } => error.transport_cause(),
            _ => None,
        }
    }

    /// Whether the call ran out of `--timeout` on this side.
    pub fn is_local_timeout(&self) -> bool {
        match self {
            CliError::Status(s) => is_local_timeout(s),
            CliError::Hinted { error, .. } => error.is_local_timeout(),
            _ => false,
        }
    }

    /// The line `main` prints on stderr: one line whatever the server or a
    /// registry put in the message, with control and bidi characters
    /// escaped so that none reaches the terminal.
    pub fn line(&self) -> String {
        let text = self.to_string();
        match self {
            // The toml crate's message is a snippet of the file: the line,
            // a caret under the column, what was expected. Its line breaks
            // are the layout, so they stay; anything else unprintable is
            // still made visible.
            CliError::Config(crate::config::ConfigError::Parse { .. })
            | CliError::ReleaseFile {
                error: super::release::FileError::Toml(_),
                ..
            } => {
                let lines: Vec<_> = text.lines().map(crate::telemetry::visible).collect();
                format!("prodgate: {}", lines.join("\n"))
            }
            _ => format!("prodgate: {}", crate::telemetry::visible(&text)),
        }
    }

    /// Whether `main` should print the error: a broken chain already said so
    /// on stdout, and a closed pipe (`prodgate list | head`) is the reader's
    /// choice, not a failure worth a message.
    pub fn is_reportable(&self) -> bool {
        match self {
            CliError::ChainBroken | CliError::NotAttested { .. } => false,
            CliError::Output(e) => e.kind() != std::io::ErrorKind::BrokenPipe,
            CliError::Hinted { error, .. } => error.is_reportable(),
            _ => true,
        }
    }
}

/// UNAVAILABLE and DEADLINE_EXCEEDED mean "try again later". A status that
/// carries a source error was built by tonic from a local transport failure
/// (connection closed or reset, TLS rejected during the first call) and may
/// be labelled UNKNOWN or CANCELLED: it never came from the server. A status
/// the server sent has no source; that is its answer, a refusal.
fn is_unreachable(s: &Status) -> bool {
    match s.code() {
        Code::Unavailable | Code::DeadlineExceeded => true,
        _ => s.source().is_some(),
    }
}

/// Whether tonic gave up waiting for `--timeout` itself. It reports that as
/// CANCELLED; for the user it is the deadline they set, so say so.
fn is_local_timeout(s: &Status) -> bool {
    let mut cause = s.source();
    while let Some(c) = cause {
        if c.is::<tonic::TimeoutExpired>() {
            return true;
        }
        cause = c.source();
    }
    false
}

fn describe_status(s: &Status) -> String {
    if is_local_timeout(s) {
        return "unreachable (DEADLINE_EXCEEDED): no answer within --timeout".to_owned();
    }
    // UNAVAILABLE or DEADLINE_EXCEEDED the server sent is a reachable
    // server saying "not now" (its registry or storage is down).
    let verdict = match (is_unreachable(s), s.source().is_some()) {
        (false, _) => "refused",
        (true, true) => "unreachable",
        (true, false) => "unavailable",
    };
    let mut message = s.message().to_owned();
    // Transport failures say little in the message ("transport error");
    // the cause chain has the part a person can act on.
    let mut cause = s.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !message.contains(&text) {
            if !message.is_empty() {
                message.push_str(": ");
            }
            message.push_str(&text);
        }
        cause = c.source();
    }
    // `main` escapes control characters, so this stays one line on stderr.
    let retry = if verdict == "unavailable" {
        "; try again later"
    } else {
        ""
    };
    format!("{verdict} ({}): {message}{retry}", code_name(s.code()))
}

fn detail_suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    }
}

/// The canonical gRPC name, as grpcurl and other clients print it.
pub fn code_name(c: Code) -> &'static str {
    match c {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// A transport error's whole cause chain on one line: tonic's own Display
/// is just "transport error".
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cause = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_answers_are_refusals_and_transport_failures_are_not() {
        let denied = CliError::Status(Status::permission_denied("bob is not an approver"));
        assert_eq!(denied.exit(), Exit::Refused);
        assert_eq!(
            denied.to_string(),
            "refused (PERMISSION_DENIED): bob is not an approver"
        );
        assert_eq!(
            CliError::Status(Status::unavailable("draining")).exit(),
            Exit::Unreachable
        );
        assert_eq!(
            CliError::Status(Status::deadline_exceeded("slow")).exit(),
            Exit::Unreachable
        );
        // The server said UNKNOWN: still its answer.
        assert_eq!(
            CliError::Status(Status::unknown("boom")).exit(),
            Exit::Refused
        );
        let local = Status::from_error(Box::new(std::io::Error::other("reset")));
        assert_eq!(local.code(), Code::Unknown);
        assert_eq!(CliError::Status(local).exit(), Exit::Unreachable);
        let mut closed = Status::cancelled("operation was canceled");
        closed.set_source(std::sync::Arc::new(std::io::Error::other(
            "connection closed",
        )));
        assert_eq!(CliError::Status(closed).exit(), Exit::Unreachable);
    }

    #[test]
    fn a_failure_after_the_promotion_exists_names_it_and_the_way_back() {
        let refused = CliError::Hinted {
            error: Box::new(CliError::Status(Status::unauthenticated("token expired"))),
            hint: "the token came from --token-file t: check that it holds your token".into(),
        };
        let e = CliError::FollowFailed {
            id: "7".into(),
            error: Box::new(refused),
        };
        assert_eq!(e.exit(), Exit::FollowFailed);
        assert_eq!(Exit::FollowFailed as u8, 8);
        assert_eq!(
            e.line(),
            "prodgate: promotion 7 exists, but following it failed: refused (UNAUTHENTICATED): \
             token expired; the token came from --token-file t: check that it holds your token; \
             `prodgate get 7` shows where it stands (`prodgate get 7 --wait` follows it again)"
        );
        // Whatever failed inside, even a closed stdout, the id is worth a line.
        let closed = CliError::FollowFailed {
            id: "7".into(),
            error: Box::new(CliError::Output(std::io::ErrorKind::BrokenPipe.into())),
        };
        assert!(closed.is_reportable());
        assert_eq!(closed.exit(), Exit::FollowFailed);
    }

    #[test]
    fn verify_image_tells_a_verdict_from_a_registry_refusal_and_an_outage() {
        use crate::registry::RegistryError;
        let outage = CliError::Registry(RegistryError::Unavailable {
            registry: "r.example".into(),
            reason: "HTTP 503".into(),
            retry_after: None,
        });
        assert_eq!(outage.exit(), Exit::Unreachable);
        let denied = CliError::Registry(RegistryError::Denied {
            registry: "r.example".into(),
            status: 401,
        });
        assert_eq!(denied.exit(), Exit::Refused);
        let missing = CliError::Registry(RegistryError::NotFound {
            reference: "r.example/app:v1".into(),
        });
        assert_eq!(missing.exit(), Exit::Refused);
        let verdict = CliError::NotAttested {
            image: "r.example/app@sha256:ab".into(),
            environment: "production".into(),
        };
        assert_eq!(verdict.exit() as u8, 9);
        // Its report is on stdout already.
        assert!(!verdict.is_reportable());
    }

    #[test]
    fn messages_stay_on_one_line_and_escape_what_a_terminal_would_act_on() {
        let e = CliError::Status(Status::invalid_argument("a\nb\u{1b}[2J\u{202e}c"));
        assert_eq!(
            e.line(),
            r"prodgate: refused (INVALID_ARGUMENT): a\nb\u{1b}[2J\u{202e}c"
        );
        let e = CliError::Status(Status::unavailable("registry r is unavailable"));
        assert_eq!(
            e.line(),
            "prodgate: unavailable (UNAVAILABLE): registry r is unavailable; try again later"
        );
        let hinted = CliError::Hinted {
            error: Box::new(CliError::Status(Status::unauthenticated("unknown token"))),
            hint: "the token came from --token: check it".into(),
        };
        assert_eq!(hinted.exit(), Exit::Refused);
        assert_eq!(
            hinted.line(),
            "prodgate: refused (UNAUTHENTICATED): unknown token; the token came from --token: check it"
        );
    }
}
