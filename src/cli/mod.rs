//! The `prodgate` command line: flag definitions, dispatch to one thin
//! function per subcommand, and the exit-code contract.
//!
//! `serve`, `check-config`, `verify-log --data-dir` and `completions` work
//! locally; every other subcommand is a gRPC client of a running server
//! (`--server`, `--token`, TLS flags; see [`client`]).
//!
//! # Exit codes
//!
//! Scripts and CI jobs branch on these, so they are part of the interface:
//!
//! | code | meaning |
//! |------|---------|
//! | 0 | success |
//! | 1 | local error: a flag value that does not parse, a file that cannot be read, an invalid config, a broken audit chain (`verify-log`) |
//! | 2 | usage error (unknown subcommand or flag, missing argument) |
//! | 3 | refused by the server: any gRPC status it answered except `UNAVAILABLE` and `DEADLINE_EXCEEDED` |
//! | 4 | server unreachable or unavailable: connection refused, TLS failure, a connection closed or reset mid-call (whatever status tonic labels it with, e.g. `UNKNOWN`), `UNAVAILABLE`, `DEADLINE_EXCEEDED`, `health` not `SERVING` |
//! | 5 | `--wait` ended in a terminal state other than `PROMOTED` (`FAILED`, `REJECTED`, `CANCELLED`, `EXPIRED`) |

pub mod client;
pub mod commands;
pub mod error;
pub mod json;
pub mod local;
pub mod output;
pub mod serve;
pub mod table;
pub mod time;
pub mod wait;

use crate::pb;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

pub use error::{CliError, Exit};

const LONG_ABOUT: &str = "\
Gated, audited promotion of container images.

`prodgate serve` runs the gRPC service; the other subcommands are its client
(or, for check-config, verify-log --data-dir and completions, local tools).

Exit codes:
  0  success
  1  local error: a flag value that does not parse, a file that cannot be read,
     an invalid config, a broken audit chain (verify-log)
  2  usage error (unknown subcommand or flag, missing argument)
  3  refused by the server: any gRPC status it answered except UNAVAILABLE
     and DEADLINE_EXCEEDED (the message on stderr names the status)
  4  server unreachable or unavailable: connection refused, TLS failure, a
     connection closed or reset mid-call, UNAVAILABLE, DEADLINE_EXCEEDED,
     health not SERVING
  5  --wait ended in FAILED, REJECTED, CANCELLED or EXPIRED instead of PROMOTED";

#[derive(Debug, Parser)]
#[command(
    name = "prodgate",
    version,
    about = "Gated, audited promotion of container images",
    long_about = LONG_ABOUT
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every client subcommand shares; accepted before or after the
/// subcommand name.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// Server URL; https:// uses TLS.
    #[arg(
        long,
        global = true,
        env = "PRODGATE_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    pub server: String,
    /// Bearer token.
    #[arg(long, global = true, env = "PRODGATE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Read the bearer token from this file (surrounding whitespace is
    /// trimmed); wins over PRODGATE_TOKEN.
    #[arg(long, global = true, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// PEM CA certificate(s) to trust for an https:// server.
    #[arg(long, global = true, value_name = "PATH")]
    pub ca_cert: Option<PathBuf>,
    /// PEM client certificate for mTLS (with --key).
    #[arg(long, global = true, value_name = "PATH", requires = "key")]
    pub cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(long, global = true, value_name = "PATH", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Deadline of each call (not of a --wait stream), e.g. 30s.
    #[arg(long, global = true, value_parser = humantime::parse_duration, default_value = "30s")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// One proto3-JSON object per line, for scripts.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gRPC server.
    Serve(serve::ServeArgs),
    /// Load and validate a configuration file.
    ///
    /// Files it names that do not exist on this machine (password_file, TLS
    /// files, docker_config, secret_file) and unset password_env variables
    /// are warnings, so a deployed config can be checked on a laptop or in
    /// CI; Docker credential helpers are not run.
    CheckConfig {
        /// Configuration file (TOML).
        file: PathBuf,
        /// Read every file the config names and run credential helpers, as
        /// `serve` does: what is missing here is an error.
        #[arg(long)]
        strict: bool,
    },
    /// Ask to promote the digest SOURCE resolves to now.
    Request {
        /// Registry host and repository path, e.g. registry.example.com/team/app.
        repository: String,
        /// Tag or digest to promote (e.g. staging, sha256:…).
        #[arg(long)]
        source: String,
        /// Target environment.
        #[arg(long, alias = "environment")]
        env: String,
        /// Why (recorded in the audit log).
        #[arg(long)]
        reason: String,
        /// Idempotency key: repeating a request with it returns the first promotion.
        #[arg(long)]
        request_id: Option<String>,
        /// Follow the promotion until it ends; exit 5 unless it ends PROMOTED.
        #[arg(long)]
        wait: bool,
    },
    /// Approve a pending promotion.
    Approve {
        /// Promotion ID.
        id: String,
        /// Recorded with the approval in the audit log.
        #[arg(long)]
        comment: Option<String>,
        /// Follow the promotion until it ends; exit 5 unless it ends PROMOTED.
        #[arg(long)]
        wait: bool,
    },
    /// Reject a pending promotion (approvers only).
    Reject {
        /// Promotion ID.
        id: String,
        /// Why (required: the requester needs to know what to fix).
        #[arg(long)]
        comment: String,
    },
    /// Cancel a pending promotion (the requester or an approver).
    Cancel {
        /// Promotion ID.
        id: String,
        /// Recorded in the audit log.
        #[arg(long)]
        comment: Option<String>,
    },
    /// Show one promotion.
    Get {
        /// Promotion ID.
        id: String,
    },
    /// List promotions, oldest first (the server's order).
    List {
        /// Only this repository (host/path).
        #[arg(long)]
        repository: Option<String>,
        /// Only promotions to this environment.
        #[arg(long, alias = "environment")]
        env: Option<String>,
        /// Only promotions in this state (any case).
        #[arg(long, value_enum, ignore_case = true)]
        state: Option<StateArg>,
        /// Print at most N promotions.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        limit: Option<u32>,
    },
    /// Show the audit log, oldest entry first.
    History {
        /// Only this repository (host/path).
        #[arg(long)]
        repository: Option<String>,
        /// Only this environment.
        #[arg(long, alias = "environment")]
        env: Option<String>,
        /// Only this promotion.
        #[arg(long, value_name = "ID")]
        promotion: Option<String>,
        /// RFC 3339 (2026-11-26T14:32:00Z) or a duration ago (2h).
        #[arg(long, value_name = "T", value_parser = time::parse_moment)]
        since: Option<prost_types::Timestamp>,
        /// RFC 3339 (2026-11-26T14:32:00Z) or a duration ago (2h).
        #[arg(long, value_name = "T", value_parser = time::parse_moment)]
        until: Option<prost_types::Timestamp>,
        /// Print at most N entries.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        limit: Option<u32>,
    },
    /// Which digest an environment's tag carried, now or at --at.
    Deployed {
        /// Registry host and repository path.
        repository: String,
        /// The environment whose tag is asked about.
        #[arg(long, alias = "environment")]
        env: String,
        /// RFC 3339 (2026-11-26T14:32:00Z) or a duration ago (2h).
        #[arg(long, value_name = "T", value_parser = time::parse_moment)]
        at: Option<prost_types::Timestamp>,
    },
    /// Recompute the audit hash chain: on the server, or with --data-dir in
    /// a stopped server's data directory.
    VerifyLog {
        /// Check this data directory offline (the server must be stopped).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// gRPC health check of the server; exit 0 only when SERVING.
    Health,
    /// Print a shell completion script.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

/// `--state` values; `pending` is short for PENDING_APPROVAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StateArg {
    #[value(alias = "pending_approval", alias = "pending-approval")]
    Pending,
    Approved,
    Promoted,
    Rejected,
    #[value(alias = "canceled")]
    Cancelled,
    Expired,
    Failed,
    Superseded,
}

impl StateArg {
    pub fn proto(self) -> pb::PromotionState {
        match self {
            StateArg::Pending => pb::PromotionState::PendingApproval,
            StateArg::Approved => pb::PromotionState::Approved,
            StateArg::Promoted => pb::PromotionState::Promoted,
            StateArg::Rejected => pb::PromotionState::Rejected,
            StateArg::Cancelled => pb::PromotionState::Cancelled,
            StateArg::Expired => pb::PromotionState::Expired,
            StateArg::Failed => pb::PromotionState::Failed,
            StateArg::Superseded => pb::PromotionState::Superseded,
        }
    }
}

/// Parses `args` (argv, program name first), runs the subcommand and reports
/// the outcome as an exit code, printing any error as one line on stderr.
pub async fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let cli = match parse(args) {
        Ok(cli) => cli,
        Err(code) => return ExitCode::from(code),
    };
    match run(cli).await {
        Ok(()) => ExitCode::from(Exit::Ok as u8),
        Err(e) => {
            if e.is_reportable() {
                eprintln!("prodgate: {e}");
            }
            ExitCode::from(e.exit() as u8)
        }
    }
}

/// Clap's own handling, except that a flag value that does not parse is a
/// local error (1), as the exit-code table promises, not a usage error.
fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Cli, u8> {
    let clap_error = |e: clap::Error| {
        let _ = e.print();
        use clap::error::ErrorKind as K;
        match e.kind() {
            _ if !e.use_stderr() => Exit::Ok as u8,
            K::InvalidValue | K::ValueValidation | K::InvalidUtf8 => Exit::Local as u8,
            _ => Exit::Usage as u8,
        }
    };
    let matches = Cli::command()
        .try_get_matches_from(args)
        .map_err(clap_error)?;
    Cli::from_arg_matches(&matches).map_err(clap_error)
}

/// Runs one parsed command line.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    let Cli { global, command } = cli;
    let g = &global;
    let out = &mut output::Printer::stdout(global.output);
    match command {
        Command::Serve(args) => serve::serve(args).await,
        Command::CheckConfig { file, strict } => local::check_config(&file, strict, out),
        Command::VerifyLog {
            data_dir: Some(dir),
        } => local::verify_offline(&dir, out),
        Command::VerifyLog { data_dir: None } => commands::verify_log(g, out).await,
        Command::Completions { shell } => local::completions(shell, &mut Cli::command(), out),
        Command::Health => commands::health(g, out).await,
        Command::Request {
            repository,
            source,
            env,
            reason,
            request_id,
            wait,
        } => {
            let req = pb::RequestPromotionRequest {
                repository,
                source,
                environment: env,
                reason,
                request_id: request_id.unwrap_or_default(),
            };
            commands::request(g, out, req, wait).await
        }
        Command::Approve { id, comment, wait } => {
            let req = pb::ApproveRequest {
                promotion_id: id,
                comment: comment.unwrap_or_default(),
            };
            commands::approve(g, out, req, wait).await
        }
        Command::Reject { id, comment } => {
            let req = pb::RejectRequest {
                promotion_id: id,
                comment,
            };
            commands::reject(g, out, req).await
        }
        Command::Cancel { id, comment } => {
            let req = pb::CancelRequest {
                promotion_id: id,
                comment: comment.unwrap_or_default(),
            };
            commands::cancel(g, out, req).await
        }
        Command::Get { id } => commands::get(g, out, id).await,
        Command::List {
            repository,
            env,
            state,
            limit,
        } => {
            let filter = pb::ListPromotionsRequest {
                repository: repository.unwrap_or_default(),
                environment: env.unwrap_or_default(),
                state: state.map_or(0, |s| s.proto() as i32),
                page_size: 0,
                page_token: String::new(),
                newest_first: false,
                awaiting_me: false,
            };
            commands::list(g, out, filter, limit).await
        }
        Command::History {
            repository,
            env,
            promotion,
            since,
            until,
            limit,
        } => {
            let filter = pb::HistoryRequest {
                repository: repository.unwrap_or_default(),
                environment: env.unwrap_or_default(),
                promotion_id: promotion.unwrap_or_default(),
                since,
                until,
                page_size: 0,
                page_token: String::new(),
                newest_first: false,
            };
            commands::history(g, out, filter, limit).await
        }
        Command::Deployed {
            repository,
            env,
            at,
        } => {
            let req = pb::GetDeployedRequest {
                repository,
                environment: env,
                at,
            };
            commands::deployed(g, out, req).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn bad_values_are_local_errors_and_bad_usage_is_not() {
        let code = |args: &[&str]| parse(args.iter().map(OsString::from)).err();
        assert_eq!(code(&["prodgate", "list", "--state", "done"]), Some(1));
        assert_eq!(code(&["prodgate", "history", "--since", "soon"]), Some(1));
        assert_eq!(code(&["prodgate", "reject", "7"]), Some(2));
        assert_eq!(code(&["prodgate", "--cert", "c.pem", "health"]), Some(2));
        assert_eq!(
            code(&["prodgate", "list", "--state", "PENDING_APPROVAL"]),
            None
        );
        assert_eq!(code(&["prodgate", "get", "7", "--output", "json"]), None);
    }
}
