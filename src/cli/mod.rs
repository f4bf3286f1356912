//! The `prodgate` command line: flag definitions, dispatch to one thin
//! function per subcommand, and the exit-code contract.
//!
//! `serve`, `check-config`, `verify-log --data-dir`, `migrate`,
//! `verify-image` (it reads the registry, not the server) and
//! `completions` work locally; every other subcommand is a gRPC client of a running server and
//! takes the [`ClientArgs`] (`--server`, `--token`, TLS flags, `-o`,
//! `--timeout`; see [`client`]).
//!
//! # Exit codes
//!
//! Scripts and CI jobs branch on these, so they are part of the interface:
//!
//! | code | meaning |
//! |------|---------|
//! | 0 | success |
//! | 1 | local error: a flag value that does not parse, a file that cannot be read, an invalid config, a broken audit chain (`verify-log`), a `verify-image --key` that is no attestation public key |
//! | 2 | usage error (unknown subcommand or flag, missing argument) |
//! | 3 | refused by the server: any gRPC status it answered except `UNAVAILABLE` and `DEADLINE_EXCEEDED`; for `verify-image`, by the registry: credentials refused, IMAGE not there, an answer prodgate does not accept |
//! | 4 | server unreachable or unavailable: connection refused, TLS failure, a connection closed or reset mid-call (whatever status tonic labels it with, e.g. `UNKNOWN`), `UNAVAILABLE`, `DEADLINE_EXCEEDED`, `health` not `SERVING`; for `verify-image`, the registry unreachable or unavailable (a timeout, 429, 5xx) |
//! | 5 | `--wait` ended in a terminal state other than `PROMOTED` (`FAILED`, `REJECTED`, `CANCELLED`, `EXPIRED`, `SUPERSEDED`) |
//! | 6 | `--wait` gave up after `--timeout`; the promotion was still in progress and goes on on the server |
//! | 7 | `gates`: at least one gate blocks the promotion now (approvals included); the report is on stdout |
//! | 8 | `--wait` failed after the promotion was known: it exists and goes on on the server, but following it failed (a refusal when watching again, e.g. an expired token; an unreadable `--token-file`; stdout closed). stderr names the promotion, `prodgate get ID` and the error; `-o json` stdout has the lines printed until then |
//! | 9 | `verify-image`: the image's digest carries no valid attestation for the environment (no attestation tag, or every layer skipped or rejected); the report is on stdout |
//!
//! A `--wait` already watching retries a lost connection by itself (until
//! `--timeout`), so 3 and 4 come only from its first call (the request,
//! approval or lookup); after it, the outcomes are 0, 5, 6 and 8.

pub mod client;
pub mod commands;
pub mod error;
pub mod evidence;
pub mod json;
pub mod local;
pub mod output;
pub mod policy;
pub mod release;
pub mod serve;
pub mod table;
pub mod time;
pub mod verify_image;
pub mod wait;

use crate::domain::names::{Reference, split_image};
use crate::pb;
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

pub use error::{CliError, Exit};

const LONG_ABOUT: &str = "\
Gated, audited promotion of container images.

`prodgate serve` runs the gRPC service; the other subcommands are its client
(or, for check-config, verify-log --data-dir, migrate, verify-image and
completions, local tools).
`prodgate <subcommand> --help` lists a client subcommand's connection options
(--server, --token, TLS, --output, --timeout).

Exit codes:
  0  success
  1  local error: a flag value that does not parse, a file that cannot be read,
     an invalid config, a broken audit chain (verify-log), a verify-image
     --key that is no attestation public key
  2  usage error (unknown subcommand or flag, missing argument)
  3  refused by the server: any gRPC status it answered except UNAVAILABLE
     and DEADLINE_EXCEEDED (the message on stderr names the status); for
     verify-image, by the registry (credentials, IMAGE not there)
  4  server unreachable or unavailable: connection refused, TLS failure, a
     connection closed or reset mid-call, UNAVAILABLE, DEADLINE_EXCEEDED,
     health not SERVING; for verify-image, the registry unreachable or
     unavailable
  5  --wait ended in FAILED, REJECTED, CANCELLED, EXPIRED or SUPERSEDED
     instead of PROMOTED
  6  --wait gave up after --timeout; the promotion goes on without it
  7  gates: at least one gate blocks (approvals included); the report is
     on stdout
  8  --wait failed after the promotion was made: it exists and goes on,
     but following it failed (e.g. the token was refused when watching
     again); stderr names it and `prodgate get ID`
  9  verify-image: no valid attestation for the environment; the report is
     on stdout";

#[derive(Debug, Parser)]
#[command(
    name = "prodgate",
    version,
    about = "Gated, audited promotion of container images",
    long_about = LONG_ABOUT
)]
pub struct Cli {
    /// The client options, still accepted before the subcommand name as
    /// earlier versions took them; hidden from help (see [`command`]). A
    /// value given after the subcommand name wins.
    #[command(flatten)]
    pub early: ClientArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// The server a client subcommand talks to when neither `--server` nor
/// PRODGATE_SERVER says otherwise.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:50051";

/// How long one call may take when `--timeout` is not given.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Where to connect and how to authenticate and print: the options of every
/// client subcommand, and only of those (`serve`, `check-config` and
/// `completions` have no use for them).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Client options")]
pub struct ClientArgs {
    /// Server URL: http:// for plain HTTP/2, https:// for TLS.
    #[arg(long, env = "PRODGATE_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
    /// Bearer token.
    #[arg(long, env = "PRODGATE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Read the bearer token from this file (surrounding whitespace is
    /// trimmed); wins over --token and PRODGATE_TOKEN. --wait reads it
    /// again whenever it watches again, so a refreshed token written there
    /// is used.
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// PEM CA certificate(s) to trust for an https:// server.
    #[arg(long, value_name = "PATH")]
    pub ca_cert: Option<PathBuf>,
    /// PEM client certificate for mTLS (with --key).
    #[arg(long, value_name = "PATH", requires = "key")]
    pub cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(long, value_name = "PATH", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Give up after this long, e.g. 30s or 2h: each call's deadline
    /// (default 30s); with --wait, the whole wait's (default: no limit; a
    /// wait that runs out exits 6).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    /// Where `server` and the token came from, for error messages that say
    /// what to change; filled in by [`parse`] from clap's value sources.
    #[arg(skip)]
    pub origin: Origin,
}

impl ClientArgs {
    /// The deadline of one unary call.
    pub fn call_timeout(&self) -> Duration {
        self.timeout.unwrap_or(DEFAULT_CALL_TIMEOUT)
    }
}

/// Where a client option's value came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Source {
    /// Not given: the built-in default (or, for the token, none at all).
    #[default]
    Default,
    /// The command line.
    Flag,
    /// The environment (PRODGATE_SERVER, PRODGATE_TOKEN).
    Env,
}

impl Source {
    fn of(m: &ArgMatches, id: &str) -> Source {
        match m.value_source(id) {
            Some(ValueSource::CommandLine) => Source::Flag,
            Some(ValueSource::EnvVariable) => Source::Env,
            _ => Source::Default,
        }
    }
}

/// Where `--server` and `--token` got their values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Origin {
    pub server: Source,
    pub token: Source,
}

/// The ids of [`ClientArgs`]'s command-line arguments (its field names).
const CLIENT_ARG_IDS: [&str; 8] = [
    "server",
    "token",
    "token_file",
    "output",
    "ca_cert",
    "cert",
    "key",
    "timeout",
];

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
        /// Registry host and repository path, without a tag, e.g.
        /// registry.example.com/team/app.
        #[arg(value_parser = request_repository)]
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
        /// Override the environment's window and soak gates (its break_glass
        /// principals only; recorded as such).
        #[arg(long)]
        break_glass: bool,
        /// Follow the promotion until it ends; exit 5 unless it ends
        /// PROMOTED, 6 if --timeout runs out first, 8 if following it
        /// fails (it exists: `prodgate get ID`).
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Request a release: several images to one environment, approved
    /// once and applied as one (tags move in the order given; a move that
    /// fails moves the others back). Approve, reject or cancel it by any
    /// member's id.
    ///
    /// The images come from the command line or from a TOML file
    /// (--from-file), never both: `environment`, `reason`, optional
    /// `request_id` and `break_glass`, and one `[[component]]` table per
    /// image (`repository`, `source`: a tag or sha256: digest), in the
    /// order the tags are to move. --env, --reason, --request-id and
    /// --break-glass given with --from-file win over the file's.
    Release {
        /// Each image as REPOSITORY:SOURCE (a tag) or REPOSITORY@sha256:…,
        /// e.g. registry.example.com/shop/api:staging; 2 to 50, each a
        /// different repository, in the order their tags are to move.
        #[arg(
            num_args = 2..,
            required_unless_present = "from_file",
            conflicts_with = "from_file",
            value_parser = release::component
        )]
        components: Vec<pb::ReleaseComponent>,
        /// The release as a TOML file (at most 1 MiB) instead of
        /// COMPONENTS; unknown keys are refused.
        #[arg(long, value_name = "FILE")]
        from_file: Option<PathBuf>,
        /// Target environment (with --from-file: instead of the file's).
        #[arg(long, alias = "environment", required_unless_present = "from_file")]
        env: Option<String>,
        /// Why, recorded in the audit log (with --from-file: instead of the
        /// file's).
        #[arg(long, required_unless_present = "from_file")]
        reason: Option<String>,
        /// Idempotency key: repeating the request with it returns the first release.
        #[arg(long)]
        request_id: Option<String>,
        /// As `request --break-glass`, for every member.
        #[arg(long)]
        break_glass: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a release (by its id, its first member's) with its members.
    GetRelease {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Roll an environment's tag back to a digest prodgate moved it to
    /// before (default: the one before its current digest).
    Rollback {
        /// Registry host and repository path, without a tag.
        repository: String,
        /// Environment to roll back.
        #[arg(long)]
        env: String,
        /// The digest to go back to (default: the previous one).
        #[arg(long = "to")]
        to: Option<String>,
        /// Why (required; recorded in the audit log).
        #[arg(long)]
        reason: String,
        /// Idempotency key: repeating a rollback with it returns the first.
        #[arg(long)]
        request_id: Option<String>,
        /// Override the window gate (break_glass principals only).
        #[arg(long)]
        break_glass: bool,
        /// Follow the promotion until it ends; exit 5 unless it ends
        /// PROMOTED, 6 if --timeout runs out first, 8 if following it
        /// fails (it exists: `prodgate get ID`).
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Approve a pending promotion.
    Approve {
        /// Promotion ID.
        id: String,
        /// Recorded with the approval in the audit log.
        #[arg(long)]
        comment: Option<String>,
        /// Override the window and soak gates (break_glass principals only;
        /// needs --comment).
        #[arg(long)]
        break_glass: bool,
        /// Follow the promotion until it ends; exit 5 unless it ends
        /// PROMOTED, 6 if --timeout runs out first, 8 if following it
        /// fails (it exists: `prodgate get ID`).
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Reject a pending promotion (approvers only).
    Reject {
        /// Promotion ID.
        id: String,
        /// Why (required: the requester needs to know what to fix).
        #[arg(long)]
        comment: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Cancel a pending promotion (the requester or an approver).
    Cancel {
        /// Promotion ID.
        id: String,
        /// Recorded in the audit log.
        #[arg(long)]
        comment: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show one promotion.
    Get {
        /// Promotion ID.
        id: String,
        /// Follow the promotion until it ends (through WAITING: it moves on
        /// by itself); exit 5 unless it ends PROMOTED, 6 if --timeout runs
        /// out first, 8 if following it fails.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Evaluate every gate of a promotion now: what blocks it, and why.
    /// Exits 7 when any gate blocks (approvals included), 0 when none does.
    /// With --source and --env, a dry run instead: the gates a request of
    /// REPOSITORY by you would meet now, recording nothing; exits 7 when a
    /// request would be refused or wait for a gate other than the approvals
    /// still to be given.
    Gates {
        /// Promotion ID, or with --source and --env, a repository.
        target: String,
        /// Dry run: the tag or digest a request would promote.
        #[arg(long, requires = "env")]
        source: Option<String>,
        /// Dry run: the environment a request would target.
        #[arg(long, alias = "environment", requires = "source")]
        env: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Report a validation check's result for a digest (check reporters
    /// only); the latest report per check counts for `required_checks`.
    ReportCheck {
        /// Registry host and repository path, without a tag.
        #[arg(value_parser = repository)]
        repository: String,
        /// The digest the check ran against (sha256:…).
        #[arg(long)]
        digest: String,
        /// Check name, e.g. e2e.
        #[arg(long)]
        check: String,
        /// passed or failed.
        #[arg(long)]
        status: CheckStatusArg,
        /// Where the run's details are (recorded).
        #[arg(long)]
        url: Option<String>,
        /// Recorded in the audit log.
        #[arg(long)]
        comment: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The latest report of every check for a digest.
    Checks {
        /// Registry host and repository path, without a tag.
        #[arg(value_parser = repository)]
        repository: String,
        /// The digest (sha256:…).
        #[arg(long)]
        digest: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a recorded policy version (the running one without DIGEST):
    /// who may do what, as the audit log's POLICY_CHANGED entries name it,
    /// per project and environment (-o json: the canonical document the
    /// digest covers). `policy diff A [B]` shows what changed.
    Policy {
        #[command(subcommand)]
        action: Option<PolicyAction>,
        /// `sha256:<hex>`, from a promotion's policy digest or a
        /// POLICY_CHANGED entry; omit for the running policy.
        digest: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List promotions, oldest first unless --newest-first.
    List {
        /// Only this repository (host/path).
        #[arg(long, value_parser = repository)]
        repository: Option<String>,
        /// Only promotions to this environment.
        #[arg(long, alias = "environment")]
        env: Option<String>,
        /// Only promotions of repositories this [[project]] governs.
        #[arg(long, value_name = "NAME")]
        project: Option<String>,
        /// Only promotions in this state (any case).
        #[arg(long, value_enum, ignore_case = true)]
        state: Option<StateArg>,
        /// Only promotions waiting for my approval: pending, I may approve
        /// them, and I have not yet.
        #[arg(long)]
        mine: bool,
        /// Newest promotion first.
        #[arg(long)]
        newest_first: bool,
        /// Print at most N promotions (the newest N with --newest-first).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        limit: Option<u32>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show the audit log, oldest entry first unless --newest-first.
    History {
        /// Only this repository (host/path).
        #[arg(long, value_parser = repository)]
        repository: Option<String>,
        /// Only this environment.
        #[arg(long, alias = "environment")]
        env: Option<String>,
        /// Only this promotion.
        #[arg(long, value_name = "ID")]
        promotion: Option<String>,
        /// RFC 3339 (2026-11-26T14:32:00Z) or a duration ago (2h).
        #[arg(long, value_name = "T", value_parser = time::parse_moment)]
        since: Option<crate::pb::Timestamp>,
        /// RFC 3339 (2026-11-26T14:32:00Z) or a duration ago (2h).
        #[arg(long, value_name = "T", value_parser = time::parse_moment)]
        until: Option<crate::pb::Timestamp>,
        /// Newest entry first.
        #[arg(long)]
        newest_first: bool,
        /// Print at most N entries (the newest N with --newest-first).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        limit: Option<u32>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Which digest an environment's tag carried, now or at --at.
    Deployed {
        /// Registry host and repository path.
        #[arg(value_parser = repository)]
        repository: String,
        /// The environment whose tag is asked about.
        #[arg(long, alias = "environment")]
        env: String,
        /// RFC 3339 (2026-11-26T14:32:00Z) or a duration ago (2h).
        #[arg(long, value_name = "T", value_parser = time::parse_moment)]
        at: Option<crate::pb::Timestamp>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Recompute the audit hash chain: on the server, or with --data-dir in
    /// a stopped server's data directory.
    VerifyLog {
        /// Check this data directory offline (the server must be stopped).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Copy a stopped server's sled data directory into an empty PostgreSQL
    /// database, in one transaction, and check the copy (the same chain
    /// head, Merkle root and records) before committing it.
    ///
    /// Name the database with --to (no password in it; add
    /// --password-file) or, to keep a password out of the shell's history,
    /// with --to-env, the environment variable holding the whole string:
    /// the rules of [storage] url, url_env and password_file.
    Migrate {
        /// The sled data directory (its server must be stopped).
        #[arg(long, value_name = "DIR")]
        from_sled: PathBuf,
        /// The database, e.g. postgres://prodgate@db.example:5432/prodgate.
        #[arg(
            long,
            value_name = "URL",
            required_unless_present = "to_env",
            conflicts_with = "to_env"
        )]
        to: Option<String>,
        /// The environment variable that holds the connection string.
        #[arg(long, value_name = "VAR")]
        to_env: Option<String>,
        /// A file holding the database password.
        #[arg(long, value_name = "PATH")]
        password_file: Option<PathBuf>,
    },
    /// gRPC health check of the server; exit 0 only when SERVING.
    Health {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Make a checkpoint signing key: NAME.key (private, for [checkpoint]
    /// key_file) and NAME.pub (the verifier key auditors use), in DIR.
    Keygen {
        /// The key's name, shown in every signature (e.g. prodgate.example.com).
        #[arg(long, required_unless_present = "attest", conflicts_with = "attest")]
        name: Option<String>,
        /// An attestation key pair instead ([attest] key_file): DIR/attest.key
        /// (ECDSA P-256, PKCS#8 PEM, mode 0600) and DIR/attest.pub (the PEM
        /// public key `cosign verify-attestation --key` takes).
        #[arg(long)]
        attest: bool,
        /// Directory to write the two files to.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// The audit log's current checkpoint (size, root, signed note); with
    /// --verifier-key, verified first.
    Checkpoint {
        /// The log's verifier key (its text, or a file holding it, e.g. the
        /// NAME.pub of `prodgate keygen`).
        #[arg(long, value_name = "KEY")]
        verifier_key: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Prove that entry SEQ is in the log the signed checkpoint commits to,
    /// checking the signature, the entry's hash and the inclusion proof here.
    ///
    /// With -o json: one object with the sequence, leafIndex, treeSize,
    /// rootHash, entryHash, the proof's hashes and the signed note.
    Prove {
        /// The entry's sequence number.
        sequence: u64,
        /// The log's verifier key (its text, or a file holding it, e.g. the
        /// NAME.pub of `prodgate keygen`).
        #[arg(long, value_name = "KEY")]
        verifier_key: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Prove that the log at size --to (default: the signed checkpoint's)
    /// still holds the log at size --from unchanged: fetches the RFC 9162
    /// consistency proof and checks it here against the two roots.
    ///
    /// The root at --to is the signed checkpoint's when --to is its size.
    /// The root at --from is --from-root when given (e.g. from a checkpoint
    /// you kept); otherwise both roots are recomputed from the entries,
    /// each checked against its hash and chain, and bound to the signed
    /// checkpoint. With -o json: one object with fromSize, toSize,
    /// fromRoot, toRoot, the proof's hashes and the signed note.
    Consistency {
        /// The smaller tree size (at least 1).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        from: u64,
        /// The larger tree size (default: the signed checkpoint's size).
        #[arg(long, value_name = "M", value_parser = clap::value_parser!(u64).range(1..))]
        to: Option<u64>,
        /// The root hash (hex) you hold for size --from.
        #[arg(long, value_name = "HEX")]
        from_root: Option<String>,
        /// The log's verifier key (its text, or a file holding it, e.g. the
        /// NAME.pub of `prodgate keygen`).
        #[arg(long, value_name = "KEY")]
        verifier_key: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Write entries SEQ.. and a signed checkpoint covering them to FILE
    /// (JSON lines; `verify-export` checks it without the server). SEQ past
    /// the signed checkpoint's size is an error: there is nothing to prove.
    Export {
        /// The first entry to export (1 to the checkpoint's size).
        #[arg(long, value_name = "SEQ")]
        since: u64,
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Verify an export bundle offline: signature, every entry's hash and
    /// chain, and the Merkle root they lead to. A bundle without entries
    /// proves nothing and fails.
    VerifyExport {
        file: PathBuf,
        /// The log's verifier key (its text, or a file holding it, e.g. the
        /// NAME.pub of `prodgate keygen`).
        // `--key`, as earlier versions named it, still works (unlisted).
        #[arg(long, value_name = "KEY", alias = "key")]
        verifier_key: String,
    },
    /// Check, without the server, that IMAGE carries a valid prodgate
    /// attestation for ENV: the check an admission controller makes.
    ///
    /// IMAGE is resolved to its digest (a digest is used as is); the layers
    /// under cosign's attestation tag sha256-<hex>.att are read (the first
    /// 64, each envelope up to 1 MiB), and a layer is accepted when a
    /// signature by --key verifies over its DSSE envelope and the in-toto
    /// statement inside is a SLSA VSA about that digest that PASSED for
    /// ENV. Prints one line per layer (accepted, skipped: another
    /// predicate, or rejected, with the reason) and the verdict.
    ///
    /// With --config, the registry is reached as `serve` reaches it (the
    /// file's [[registry]] entries: credentials, insecure, ca_cert);
    /// without, anonymously over HTTPS.
    ///
    /// Exit codes: 0 a layer is accepted; 9 none is (no attestation tag,
    /// every layer skipped or rejected); 1 --key is no public key or
    /// --config is invalid; 3 the registry refused the credentials, has no
    /// IMAGE or answered what prodgate does not accept; 4 the registry is
    /// unreachable or unavailable (try again).
    VerifyImage {
        /// host[:port]/repository:tag, host[:port]/repository@sha256:<hex>,
        /// or host[:port]/repository (tag latest).
        #[arg(value_parser = verify_image::image)]
        image: verify_image::Image,
        /// The environment the image must be attested for.
        #[arg(long, alias = "environment")]
        env: String,
        /// The attestation public key: the attest.pub of `prodgate keygen
        /// --attest` (PEM, ECDSA P-256).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// prodgate's configuration file (TOML): its [[registry]] entries
        /// say how to reach the registry.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Print a shell completion script.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

/// `prodgate policy` subcommands.
#[derive(Debug, Subcommand)]
pub enum PolicyAction {
    /// What changed from policy version A to B (default: the running one):
    /// per project and environment, each changed key as old → new, and the
    /// projects, environments and principals added or removed.
    Diff {
        /// `sha256:<hex>` of the older version.
        a: String,
        /// `sha256:<hex>` of the newer version; omit for the running policy.
        b: Option<String>,
    },
}

impl Command {
    /// The client options of a client subcommand; `None` for the local ones.
    fn client_mut(&mut self) -> Option<&mut ClientArgs> {
        match self {
            Command::Serve(_)
            | Command::CheckConfig { .. }
            | Command::Keygen { .. }
            | Command::VerifyExport { .. }
            | Command::VerifyImage { .. }
            | Command::Migrate { .. }
            | Command::Completions { .. } => None,
            Command::Request { client, .. }
            | Command::Release { client, .. }
            | Command::GetRelease { client, .. }
            | Command::Approve { client, .. }
            | Command::Reject { client, .. }
            | Command::Cancel { client, .. }
            | Command::Get { client, .. }
            | Command::Gates { client, .. }
            | Command::Policy { client, .. }
            | Command::ReportCheck { client, .. }
            | Command::Checks { client, .. }
            | Command::Checkpoint { client, .. }
            | Command::Prove { client, .. }
            | Command::Consistency { client, .. }
            | Command::Export { client, .. }
            | Command::Rollback { client, .. }
            | Command::List { client, .. }
            | Command::History { client, .. }
            | Command::Deployed { client, .. }
            | Command::VerifyLog { client, .. }
            | Command::Health { client, .. } => Some(client),
        }
    }
}

/// A repository as `request` takes it: a tag or digest belongs in --source.
fn request_repository(s: &str) -> Result<String, String> {
    untagged(s, true)
}

/// A repository where a tag or digest has no place (list, history, deployed).
fn repository(s: &str) -> Result<String, String> {
    untagged(s, false)
}

/// Refuses `host/team/app:staging` and `host/team/app@sha256:…` with the
/// command that was probably meant, instead of the server's generic
/// INVALID_ARGUMENT. A colon before the first `/` is the registry's port.
fn untagged(s: &str, for_request: bool) -> Result<String, String> {
    // Without a `/`, any colon is a port (`127.0.0.1:5000`): the server
    // says what is wrong with such a repository.
    if !s.contains('/') {
        return Ok(s.to_owned());
    }
    let (repo, what, reference) = match split_image(s) {
        (_, None) => return Ok(s.to_owned()),
        (repo, Some(Reference::Tag(tag))) => (repo, "tag", tag),
        (repo, Some(Reference::Digest(digest))) => (repo, "digest", digest),
    };
    Err(if for_request {
        format!(
            "a repository names no {what}: give the repository alone and the {what} as --source \
             (prodgate request {repo} --source {reference} …)"
        )
    } else {
        format!("a repository names no {what}: give the repository alone ({repo})")
    })
}

/// `report-check --status` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CheckStatusArg {
    Passed,
    Failed,
}

impl CheckStatusArg {
    pub fn proto(self) -> pb::CheckStatus {
        match self {
            CheckStatusArg::Passed => pb::CheckStatus::Passed,
            CheckStatusArg::Failed => pb::CheckStatus::Failed,
        }
    }
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
    /// Approvals complete, another gate (soak, window, freeze, checks,
    /// signature) still blocks.
    Waiting,
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
            StateArg::Waiting => pb::PromotionState::Waiting,
        }
    }
}

/// The command line as clap sees it: [`Cli`] with the client options at the
/// top level hidden, so that `prodgate --help` and the help of `serve`,
/// `check-config` and `completions` do not list them.
pub fn command() -> clap::Command {
    CLIENT_ARG_IDS
        .iter()
        .fold(Cli::command(), |c, id| c.mut_arg(*id, |a| a.hide(true)))
        // `policy diff` takes the client options of `policy`, given before
        // or after `diff`: global there, clap hands their values up.
        .mut_subcommand("policy", |c| {
            CLIENT_ARG_IDS
                .iter()
                .fold(c, |c, id| c.mut_arg(*id, |a| a.global(true)))
        })
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
                eprintln!("{}", e.line());
            }
            ExitCode::from(e.exit() as u8)
        }
    }
}

/// Clap's own handling, except that a flag value that does not parse is a
/// local error (1), as the exit-code table promises, not a usage error.
/// Also merges client options given before the subcommand name into the
/// subcommand's, and records where `--server` and the token came from.
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
    let mut cmd = command();
    let matches = cmd.try_get_matches_from_mut(args).map_err(clap_error)?;
    let mut cli = Cli::from_arg_matches(&matches).map_err(clap_error)?;
    let given = |m: &ArgMatches, id: &str| m.value_source(id) == Some(ValueSource::CommandLine);
    let early: Vec<&str> = CLIENT_ARG_IDS
        .into_iter()
        .filter(|id| given(&matches, id))
        .collect();
    let Some((name, sub)) = matches.subcommand() else {
        // clap requires a subcommand; nothing to merge without one.
        return Ok(cli);
    };
    let Cli {
        early: top,
        command,
    } = &mut cli;
    match command.client_mut() {
        None => {
            if let Some(id) = early.first() {
                let flag = format!("--{}", id.replace('_', "-"));
                return Err(clap_error(cmd.error(
                    clap::error::ErrorKind::ArgumentConflict,
                    format!(
                        "{flag} is an option of the client subcommands; `prodgate {name}` does not take it"
                    ),
                )));
            }
        }
        Some(client) => {
            for id in early.iter().filter(|id| !given(sub, id)) {
                take(client, top, id);
            }
            let origin = |id: &str| {
                if given(sub, id) || given(&matches, id) {
                    Source::Flag
                } else {
                    Source::of(sub, id)
                }
            };
            client.origin = Origin {
                server: origin("server"),
                token: origin("token"),
            };
        }
    }
    Ok(cli)
}

/// Copies the client option `id` given before the subcommand name.
fn take(late: &mut ClientArgs, early: &ClientArgs, id: &str) {
    match id {
        "server" => late.server.clone_from(&early.server),
        "token" => late.token.clone_from(&early.token),
        "token_file" => late.token_file.clone_from(&early.token_file),
        "output" => late.output = early.output,
        "ca_cert" => late.ca_cert.clone_from(&early.ca_cert),
        "cert" => late.cert.clone_from(&early.cert),
        "key" => late.key.clone_from(&early.key),
        "timeout" => late.timeout = early.timeout,
        _ => {}
    }
}

/// Runs one parsed command line; a failure of a client subcommand gets the
/// hint of what to change ([`client::explain`]).
pub async fn run(mut cli: Cli) -> Result<(), CliError> {
    let client = cli.command.client_mut().cloned();
    match (dispatch(cli.command).await, client) {
        (Err(e), Some(c)) => Err(client::explain(e, &c).await),
        (result, _) => result,
    }
}

async fn dispatch(cmd: Command) -> Result<(), CliError> {
    let out = &mut output::Printer::stdout(Format::Table);
    match cmd {
        Command::Serve(args) => serve::serve(args).await,
        Command::CheckConfig { file, strict } => local::check_config(&file, strict, out),
        Command::Completions { shell } => local::completions(shell, &mut command(), out),
        Command::Keygen {
            attest: true,
            out: dir,
            ..
        } => evidence::keygen_attest(&dir, out),
        Command::Keygen {
            name: Some(name),
            out: dir,
            ..
        } => evidence::keygen(&name, &dir, out),
        Command::Keygen { name: None, .. } => Err(CliError::Evidence(
            "--name NAME (a checkpoint key) or --attest (an attestation key)".into(),
        )),
        Command::VerifyExport { file, verifier_key } => {
            evidence::verify_export(&file, &verifier_key, out)
        }
        Command::VerifyImage {
            image,
            env,
            key,
            config,
        } => verify_image::verify_image(&image, &env, &key, config.as_deref(), out).await,
        Command::Checkpoint {
            verifier_key,
            client,
        } => evidence::checkpoint(&client, verifier_key).await,
        Command::Prove {
            sequence,
            verifier_key,
            client,
        } => evidence::prove(&client, sequence, &verifier_key).await,
        Command::Consistency {
            from,
            to,
            from_root,
            verifier_key,
            client,
        } => {
            let asked = evidence::Sizes {
                from,
                to,
                from_root,
            };
            evidence::consistency(&client, asked, &verifier_key).await
        }
        Command::Export { since, out, client } => evidence::export(&client, since, &out).await,
        Command::VerifyLog {
            data_dir: Some(dir),
            client,
        } => local::verify_offline(&dir, &mut output::Printer::stdout(client.output)),
        Command::VerifyLog {
            data_dir: None,
            client,
        } => commands::verify_log(&client).await,
        Command::Migrate {
            from_sled,
            to,
            to_env,
            password_file,
        } => {
            let target = crate::config::postgres_from_flags(
                to.as_deref(),
                to_env.as_deref(),
                password_file.as_deref(),
            )?;
            local::migrate(&from_sled, target, out).await
        }
        Command::Health { client } => commands::health(&client).await,
        Command::Release {
            components,
            from_file,
            env,
            reason,
            request_id,
            break_glass,
            client,
        } => {
            let req = match from_file {
                Some(path) => release::from_file(
                    &path,
                    release::Overrides {
                        environment: env,
                        reason,
                        request_id,
                        break_glass,
                    },
                )?,
                // clap requires --env and --reason without --from-file.
                None => pb::RequestReleaseRequest {
                    environment: env.unwrap_or_default(),
                    reason: reason.unwrap_or_default(),
                    request_id: request_id.unwrap_or_default(),
                    components,
                    break_glass,
                },
            };
            commands::release(&client, req).await
        }
        Command::GetRelease { id, client } => commands::get_release(&client, id).await,
        Command::Request {
            repository,
            source,
            env,
            reason,
            request_id,
            break_glass,
            wait,
            client,
        } => {
            let req = pb::RequestPromotionRequest {
                repository,
                source,
                environment: env,
                reason,
                request_id: request_id.unwrap_or_default(),
                break_glass,
            };
            commands::request(&client, req, wait).await
        }
        Command::Approve {
            id,
            comment,
            break_glass,
            wait,
            client,
        } => {
            let req = pb::ApproveRequest {
                promotion_id: id,
                comment: comment.unwrap_or_default(),
                break_glass,
            };
            commands::approve(&client, req, wait).await
        }
        Command::Reject {
            id,
            comment,
            client,
        } => {
            let req = pb::RejectRequest {
                promotion_id: id,
                comment,
            };
            commands::reject(&client, req).await
        }
        Command::Cancel {
            id,
            comment,
            client,
        } => {
            let req = pb::CancelRequest {
                promotion_id: id,
                comment: comment.unwrap_or_default(),
            };
            commands::cancel(&client, req).await
        }
        Command::Get { id, wait, client } => commands::get(&client, id, wait).await,
        Command::Gates {
            target,
            source: Some(source),
            env: Some(env),
            client,
        } => commands::dry_run(&client, target, source, env).await,
        Command::Gates { target, client, .. } => commands::gates(&client, target).await,
        Command::Policy {
            action: Some(PolicyAction::Diff { a, b }),
            client,
            ..
        } => policy::diff(&client, a, b).await,
        Command::Policy {
            action: None,
            digest,
            client,
        } => policy::show(&client, digest).await,
        Command::ReportCheck {
            repository,
            digest,
            check,
            status,
            url,
            comment,
            client,
        } => {
            let req = pb::ReportCheckRequest {
                repository,
                digest,
                check,
                status: status.proto() as i32,
                details_url: url.unwrap_or_default(),
                comment: comment.unwrap_or_default(),
            };
            commands::report_check(&client, req).await
        }
        Command::Checks {
            repository,
            digest,
            client,
        } => commands::checks(&client, repository, digest).await,
        Command::Rollback {
            repository,
            env,
            to,
            reason,
            request_id,
            break_glass,
            wait,
            client,
        } => {
            let req = pb::RollbackRequest {
                repository,
                environment: env,
                digest: to.unwrap_or_default(),
                reason,
                request_id: request_id.unwrap_or_default(),
                break_glass,
            };
            commands::rollback(&client, req, wait).await
        }
        Command::List {
            repository,
            env,
            project,
            state,
            mine,
            newest_first,
            limit,
            client,
        } => {
            let filter = pb::ListPromotionsRequest {
                repository: repository.unwrap_or_default(),
                environment: env.unwrap_or_default(),
                state: state.map_or(0, |s| s.proto() as i32),
                page_size: 0,
                page_token: String::new(),
                newest_first,
                awaiting_me: mine,
                project: project.unwrap_or_default(),
                request_id: String::new(),
            };
            commands::list(&client, filter, limit).await
        }
        Command::History {
            repository,
            env,
            promotion,
            since,
            until,
            newest_first,
            limit,
            client,
        } => {
            let filter = pb::HistoryRequest {
                repository: repository.unwrap_or_default(),
                environment: env.unwrap_or_default(),
                promotion_id: promotion.unwrap_or_default(),
                since,
                until,
                page_size: 0,
                page_token: String::new(),
                newest_first,
            };
            commands::history(&client, filter, limit).await
        }
        Command::Deployed {
            repository,
            env,
            at,
            client,
        } => {
            let req = pb::GetDeployedRequest {
                repository,
                environment: env,
                at,
            };
            commands::deployed(&client, req).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        command().debug_assert();
    }

    fn parsed(args: &[&str]) -> Cli {
        match parse(args.iter().map(OsString::from)) {
            Ok(cli) => cli,
            Err(code) => panic!("{args:?} exited {code}"),
        }
    }

    fn client(args: &[&str]) -> ClientArgs {
        let mut cli = parsed(args);
        cli.command
            .client_mut()
            .cloned()
            .expect("a client subcommand")
    }

    #[test]
    fn client_options_before_the_subcommand_still_count_and_later_ones_win() {
        let c = client(&[
            "prodgate",
            "--server",
            "http://a:1",
            "-o",
            "json",
            "get",
            "7",
        ]);
        assert_eq!(c.server, "http://a:1");
        assert_eq!(c.output, Format::Json);
        assert_eq!(c.origin.server, Source::Flag);
        let c = client(&[
            "prodgate",
            "--server",
            "http://a:1",
            "--timeout",
            "2s",
            "get",
            "7",
            "--server",
            "http://b:2",
        ]);
        assert_eq!(c.server, "http://b:2");
        assert_eq!(c.timeout, Some(Duration::from_secs(2)));
        let c = client(&["prodgate", "list", "--token", "t"]);
        assert_eq!(c.origin.token, Source::Flag);
        assert_eq!(c.origin.server, Source::Default);
        assert_eq!(c.server, DEFAULT_SERVER);
        assert_eq!(c.timeout, None);
        assert_eq!(c.call_timeout(), DEFAULT_CALL_TIMEOUT);
    }

    #[test]
    fn local_subcommands_take_no_client_options() {
        let code = |args: &[&str]| parse(args.iter().map(OsString::from)).err();
        assert_eq!(
            code(&["prodgate", "--server", "http://a:1", "completions", "bash"]),
            Some(2)
        );
        assert_eq!(
            code(&["prodgate", "completions", "bash", "--token", "t"]),
            Some(2)
        );
        assert_eq!(
            code(&["prodgate", "check-config", "f.toml", "-o", "json"]),
            Some(2)
        );
        for sub in ["serve", "check-config", "completions"] {
            let help = command()
                .find_subcommand_mut(sub)
                .map(|c| c.render_long_help().to_string())
                .unwrap_or_default();
            assert!(!help.is_empty(), "{sub}");
            for flag in ["--server", "--token", "--ca-cert", "--output", "--timeout"] {
                assert!(!help.contains(flag), "{flag} in the help of {sub}:\n{help}");
            }
        }
        let top = command().render_long_help().to_string();
        assert!(!top.contains("--token <TOKEN>"), "{top}");
        let list = command()
            .find_subcommand_mut("list")
            .map(|c| c.render_long_help().to_string())
            .unwrap_or_default();
        for flag in [
            "--server",
            "--token",
            "-o, --output",
            "--timeout",
            "PRODGATE_SERVER",
        ] {
            assert!(list.contains(flag), "{flag} in\n{list}");
        }
    }

    #[test]
    fn a_tag_or_digest_on_the_repository_names_the_flag_it_belongs_to() {
        assert_eq!(
            untagged("127.0.0.1:5000/team/app", true),
            Ok("127.0.0.1:5000/team/app".into())
        );
        assert_eq!(
            untagged("127.0.0.1:5000", true),
            Ok("127.0.0.1:5000".into())
        );
        let tag = untagged("r.example:5000/team/app:staging", true).unwrap_err();
        assert!(
            tag.contains("prodgate request r.example:5000/team/app --source staging"),
            "{tag}"
        );
        let digest = untagged("r.example/team/app@sha256:ab", true).unwrap_err();
        assert!(digest.contains("--source sha256:ab"), "{digest}");
        let elsewhere = untagged("r.example/team/app:production", false).unwrap_err();
        assert!(elsewhere.contains("(r.example/team/app)"), "{elsewhere}");
        let code = |args: &[&str]| parse(args.iter().map(OsString::from)).err();
        // Even without --source, the hint comes before "missing --source".
        assert_eq!(
            code(&[
                "prodgate",
                "request",
                "r/team/app:staging",
                "--env",
                "e",
                "--reason",
                "x"
            ]),
            Some(1)
        );
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
        let mut cli = parsed(&["prodgate", "list", "--state", "WAITING"]);
        assert!(cli.command.client_mut().is_some());
        match cli.command {
            Command::List { state: Some(s), .. } => {
                assert_eq!(s.proto(), pb::PromotionState::Waiting)
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(code(&["prodgate", "get", "7", "--output", "json"]), None);
    }

    #[test]
    fn policy_diff_takes_the_client_options_before_or_after_diff() {
        for args in [
            &[
                "prodgate",
                "policy",
                "diff",
                "sha256:a",
                "sha256:b",
                "-o",
                "json",
                "--server",
                "http://a:1",
            ][..],
            &[
                "prodgate",
                "policy",
                "-o",
                "json",
                "--server",
                "http://a:1",
                "diff",
                "sha256:a",
                "sha256:b",
            ],
        ] {
            let mut cli = parsed(args);
            let c = cli
                .command
                .client_mut()
                .cloned()
                .expect("a client subcommand");
            assert_eq!(
                (c.output, c.server.as_str()),
                (Format::Json, "http://a:1"),
                "{args:?}"
            );
            assert_eq!(c.origin.server, Source::Flag, "{args:?}");
            match cli.command {
                Command::Policy {
                    action: Some(PolicyAction::Diff { a, b }),
                    ..
                } => assert_eq!((a.as_str(), b.as_deref()), ("sha256:a", Some("sha256:b"))),
                other => panic!("{other:?}"),
            }
        }
        let mut cli = parsed(&["prodgate", "policy", "sha256:a", "-o", "json"]);
        assert_eq!(
            cli.command.client_mut().map(|c| c.output),
            Some(Format::Json)
        );
        assert!(matches!(
            cli.command,
            Command::Policy {
                action: None,
                digest: Some(_),
                ..
            }
        ));
    }
}
