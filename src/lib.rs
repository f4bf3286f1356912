//! prodgate: a gRPC service that moves an image's production tag only after
//! the image passed the previous stage and designated approvers signed off,
//! copying the approved manifest in the registry (no layer transfer) and
//! keeping a hash-chained audit log of every step.
//!
//! # Layout
//! - [`config`]: the TOML file, validated at start-up; errors name the key;
//!   per-repository `[[project]]` policies.
//! - [`domain`]: promotion records, the state machine, policy, the gates
//!   (pure functions from facts to pass/block), name grammar and the audit
//!   hash chain. Pure: no I/O; time is a parameter.
//! - [`clock`]: where time comes from (the system clock, or a settable one
//!   in tests).
//! - [`store`]: the storage port (async reads, write jobs on a unit of work,
//!   the stream of committed changes) and its backends: [`store::sled`], the
//!   embedded default, where the audit log is the source of truth, records
//!   and indexes are derived from it, and one writer thread commits while a
//!   flusher thread fsyncs before anyone is answered; and
//!   [`store::postgres`], any number of replicas on one PostgreSQL
//!   database, where each batch of writes is one transaction serialized
//!   with the other replicas', one replica leads (applies, sweeps) and
//!   LISTEN/NOTIFY carries changes between them.
//! - [`registry`]: resolving tags and copying manifests, behind a trait.
//! - [`promotions`]: the use cases the RPCs call; they gather the gates'
//!   facts and let the domain decide inside a write job.
//! - [`apply`]: the worker that moves tags of APPROVED promotions.
//! - [`backoff`]: the retry loops' one backoff policy (first pause,
//!   doubling, capped; jitter).
//! - [`attest`]: signed in-toto statements (SLSA VSA in a DSSE envelope)
//!   of what prodgate promoted, for admission controllers; [`attest::verify`]
//!   checks one as they do (`prodgate verify-image`).
//! - [`attach`]: the record of each APPLIED promotion, pushed as an OCI
//!   artifact referring to the promoted image (`attach_record`).
//! - [`drift`]: the watch that notices (and may undo) tag moves made
//!   behind prodgate's back.
//! - [`auth`]: the caller's identity from credentials: static tokens, JWTs
//!   of trusted `[[identity]]` issuers (JWKS cached and rotated), mTLS.
//! - [`api`]: gRPC handlers, conversions, page tokens, error -> status.
//! - [`console`]: the approvers' web console (server-rendered pages on a
//!   listener of their own, sign-in through OpenID Connect), another client
//!   of [`promotions`].
//! - [`server`]: wires it all up and serves until shutdown.
//! - [`cli`]: the command line: `serve`, local tools, the gRPC client subcommands.
//! - [`evidence`]: the audit log's signed checkpoints, inclusion and
//!   consistency proofs, and their publication.
//! - [`error`]: the service error every use case returns.
//! - [`telemetry`]: logs (text or JSON).
//! - [`metrics`]: Prometheus counters and the `/metrics` endpoint.
//! - [`notify`]: webhook notifications of promotion and drift events;
//!   [`notify::steps`]: a release's entries of one write as one item;
//!   [`notify::slack`]: approval requests in Slack, updated as promotions
//!   move on, and the handler of their Approve/Reject buttons.

pub mod api;
pub mod apply;
pub mod attach;
pub mod attest;
pub mod auth;
pub mod backoff;
pub mod body;
pub mod cli;
pub mod clock;
pub mod config;
pub mod console;
pub mod domain;
pub mod drift;
pub mod error;
pub mod evidence;
pub mod metrics;
pub mod notify;
pub mod promotions;
pub mod registry;
pub mod server;
pub mod store;
pub mod telemetry;

/// Generated protobuf types and gRPC stubs of `proto/prodgate/v1`.
pub mod pb {
    mod timestamp;
    pub use timestamp::Timestamp;

    tonic::include_proto!("prodgate.v1");
    // proto3 JSON (serde) of every message above, from pbjson-build
    include!(concat!(env!("OUT_DIR"), "/prodgate.v1.serde.rs"));

    /// Encoded descriptors, served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("prodgate_descriptor");
}
