//! The service's error: every way a use case can fail, structured so that
//! `api::error` maps each to one precise gRPC status.

pub use crate::domain::decision::Blocker;
use crate::domain::decision::Refusal;
use crate::domain::machine::DomainError;
use crate::registry::RegistryError;
pub use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is malformed or names something not configured.
    #[error("{field}: {message}")]
    InvalidArgument {
        field: &'static str,
        message: String,
    },
    /// The repository's project names requesters and the caller is not one.
    #[error(
        "{principal} may not request promotions of {repository}: project {project} lets only {requesters} request them"
    )]
    NotRequester {
        principal: String,
        repository: String,
        project: String,
        requesters: String,
    },
    #[error("promotion {0} does not exist")]
    PromotionNotFound(u64),
    /// A request names an environment no `[[environment]]` defines.
    #[error("environment: no environment named {name:?} is configured (known: {known})")]
    UnknownEnvironment { name: String, known: String },
    /// A request names a registry no `[[registry]]` configures.
    #[error(
        "repository: registry {host} is not configured; prodgate only promotes within its configured registries"
    )]
    UnknownRegistry { host: String },
    /// The source tag or digest is not in the registry.
    #[error("{0} was not found in the registry")]
    SourceNotFound(String),
    #[error(
        "request_id {request_id:?} was already used by this principal for promotion {promotion_id} with different parameters"
    )]
    RequestIdReused {
        request_id: String,
        promotion_id: u64,
    },
    #[error(
        "no policy version {0} was ever recorded here; POLICY_CHANGED entries in History and Promotion.policy_digest name the recorded ones"
    )]
    PolicyNotFound(String),
    /// A bug or a broken invariant on the server's side (never the caller's).
    #[error("internal error: {0}")]
    Internal(String),
    #[error("{field}: {message}")]
    OutOfRange {
        field: &'static str,
        message: String,
    },
    #[error("prodgate has not moved the {environment} tag of {repository} (as of {at})")]
    NothingDeployed {
        repository: String,
        environment: String,
        at: String,
    },
    #[error("promotion {id} expired at {expires_at} {why}")]
    Expired {
        id: u64,
        expires_at: String,
        /// `without enough approvals` (approval_ttl), or what it was still
        /// waiting for (wait_ttl).
        why: String,
    },
    #[error(
        "{principal} may not report checks for {repository}: only the configured check_reporters may"
    )]
    NotCheckReporter {
        principal: String,
        repository: String,
    },
    /// A new check name for a digest that already has reports of the
    /// configured number of distinct checks.
    #[error(
        "{repository}@{digest} already has reports of {limit} distinct checks (max_checks_per_digest = {limit}); report one of those again, or raise max_checks_per_digest"
    )]
    TooManyChecks {
        repository: String,
        digest: String,
        limit: usize,
    },
    #[error(
        "{principal} may not break glass in environment {environment}: only its break_glass principals may ({allowed})"
    )]
    NotBreakGlass {
        principal: String,
        environment: String,
        /// Who may, as configured (`nobody` when no one).
        allowed: String,
    },
    #[error("cannot roll back environment {environment} of {repository}: {why}")]
    RollbackRefused {
        repository: String,
        environment: String,
        why: String,
    },
    /// Gates that refuse a call rather than wait (a prerequisite not met,
    /// a request that would change nothing): every one that fails.
    #[error("{}", blocked_message(.0))]
    Blocked(Vec<Blocker>),
    #[error(
        "no [[project]] claims {repository}, and unclaimed_repositories = \"refuse\": promotions go only to repositories matching {patterns}"
    )]
    Unclaimed {
        repository: String,
        patterns: String,
    },
    #[error("the server is shutting down; repeat the call")]
    ShuttingDown,
    #[error(
        "{principal} already has {limit} WatchPromotion streams open (max_watches_per_principal = {limit}); close one before opening another"
    )]
    TooManyWatches { principal: String, limit: usize },
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A decision's refusal as the service's error.
impl From<Refusal> for Error {
    fn from(r: Refusal) -> Error {
        match r {
            Refusal::Domain(d) => Error::Domain(d),
            Refusal::BreakGlass {
                principal,
                environment,
                allowed,
            } => Error::NotBreakGlass {
                principal,
                environment,
                allowed,
            },
            Refusal::Unexplained { field } => Error::InvalidArgument {
                field,
                message: "is required with break_glass: say why the window, freeze or soak must be overridden".into(),
            },
            Refusal::Blocked(blockers) => Error::Blocked(blockers),
        }
    }
}

/// The blockers' sentences, `; `-separated (each already names its gate's
/// subject and what would unblock it).
fn blocked_message(blockers: &[Blocker]) -> String {
    let parts: Vec<&str> = blockers.iter().map(|b| b.description.as_str()).collect();
    parts.join("; ")
}

impl Error {
    /// Every gate that refused, one per blocker (the
    /// `google.rpc.PreconditionFailure` violations `api::error` attaches);
    /// empty for an error that is no gate's refusal. Exhaustive, so a new
    /// variant is placed here too. A blocker whose subject the error does
    /// not know has it empty; the call fills it in (`api::error::status`).
    pub fn blockers(&self) -> Vec<Blocker> {
        let one = |gate: &'static str, subject: &str| {
            vec![Blocker {
                gate,
                subject: subject.to_owned(),
                description: self.to_string(),
                facts: Vec::new(),
            }]
        };
        match self {
            Error::Blocked(list) => list.clone(),
            Error::RollbackRefused { repository, .. } => one("rollback", repository),
            Error::NotBreakGlass { .. } => one(crate::domain::decision::BREAK_GLASS, ""),
            Error::InvalidArgument { .. }
            | Error::NotRequester { .. }
            | Error::PromotionNotFound(_)
            | Error::UnknownEnvironment { .. }
            | Error::UnknownRegistry { .. }
            | Error::SourceNotFound(_)
            | Error::RequestIdReused { .. }
            | Error::PolicyNotFound(_)
            | Error::Internal(_)
            | Error::OutOfRange { .. }
            | Error::NothingDeployed { .. }
            | Error::Expired { .. }
            | Error::NotCheckReporter { .. }
            | Error::TooManyChecks { .. }
            | Error::Unclaimed { .. }
            | Error::ShuttingDown
            | Error::TooManyWatches { .. }
            | Error::Domain(_)
            | Error::Registry(_)
            | Error::Store(_) => Vec::new(),
        }
    }
}
