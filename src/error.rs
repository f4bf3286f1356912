//! The service's error: every way a use case can fail, structured so that
//! `api::error` maps each to one precise gRPC status.

use crate::domain::gates;
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
    /// The source tag or digest is not in the registry.
    #[error("{0} was not found in the registry")]
    SourceNotFound(String),
    /// The prerequisite environment's tag does not carry the digest.
    #[error("{message}")]
    PrerequisiteNotMet { repository: String, message: String },
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
    #[error("promotion {id} expired at {expires_at} without enough approvals")]
    Expired { id: u64, expires_at: String },
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
    /// A gate blocks the promotion from becoming APPROVED; the message names
    /// every blocking gate and what would unblock it.
    #[error("not approved: {0}")]
    GatesBlocked(String),
    #[error(transparent)]
    GroupsUnrepresented(#[from] crate::domain::gates::GroupsUnrepresented),
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

/// One gate that refused a call, as a client acting per gate reads it (the
/// `google.rpc.PreconditionFailure` violations `api::error` attaches).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocker {
    /// The gate's name: `prerequisite`, `approvals`, `required_groups`,
    /// `checks`, `signature`, `soak`, `window`, `freeze`, `break_glass`,
    /// `noop`, `rollback`.
    pub gate: &'static str,
    /// What the gate judged: the promotion id (decimal) or the repository.
    /// Empty when the error does not know it; the call does, and fills it
    /// in (`api::error::status`).
    pub subject: String,
    /// The sentence a person reads.
    pub description: String,
}

impl Blocker {
    fn new(gate: &'static str, subject: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            gate,
            subject: subject.into(),
            description: description.into(),
        }
    }
}

impl Error {
    /// Every gate that refused, one per blocker; empty for an error that is
    /// no gate's refusal. Exhaustive, so a new variant is placed here too.
    pub fn blockers(&self) -> Vec<Blocker> {
        match self {
            Error::PrerequisiteNotMet {
                repository,
                message,
            } => vec![Blocker::new(gates::PREREQUISITE, repository, message)],
            Error::GatesBlocked(list) => gate_list(list),
            Error::GroupsUnrepresented(g) => {
                vec![Blocker::new(gates::REQUIRED_GROUPS, "", g.to_string())]
            }
            Error::RollbackRefused { repository, .. } => {
                vec![Blocker::new("rollback", repository, self.to_string())]
            }
            Error::NotBreakGlass { .. } => vec![Blocker::new("break_glass", "", self.to_string())],
            Error::InvalidArgument { .. }
            | Error::NotRequester { .. }
            | Error::PromotionNotFound(_)
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

/// Gate names a [`Error::GatesBlocked`] list may hold.
const GATE_NAMES: [&str; 8] = [
    gates::PREREQUISITE,
    gates::APPROVALS,
    gates::REQUIRED_GROUPS,
    gates::CHECKS,
    gates::SIGNATURE,
    gates::SOAK,
    gates::WINDOW,
    "freeze",
];

/// One blocker per gate of a `"; "`-joined `name: message` list (the
/// domain's `GateReport::blocking_message`). A message may hold `"; "`
/// itself, so a part that does not start with a gate's name continues the
/// message before it. Only until the list arrives structured.
fn gate_list(list: &str) -> Vec<Blocker> {
    let mut out: Vec<Blocker> = Vec::new();
    for part in list.split("; ") {
        let named = GATE_NAMES.into_iter().find_map(|gate| {
            part.strip_prefix(gate)
                .and_then(|rest| rest.strip_prefix(": "))
                .map(|message| (gate, message))
        });
        match (named, out.last_mut()) {
            (Some((gate, message)), _) => out.push(Blocker::new(gate, "", message)),
            (None, Some(last)) => {
                last.description.push_str("; ");
                last.description.push_str(part);
            }
            // Not the expected form: one blocker with all of it.
            (None, None) => out.push(Blocker::new("gates", "", part)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocked_list_is_one_blocker_per_gate() {
        let b = gate_list(
            "approvals: 1 of 2 recorded; window: closed; opens at 09:00 UTC; soak: 1h left",
        );
        let got: Vec<(&str, &str)> = b.iter().map(|b| (b.gate, b.description.as_str())).collect();
        assert_eq!(
            got,
            [
                ("approvals", "1 of 2 recorded"),
                ("window", "closed; opens at 09:00 UTC"),
                ("soak", "1h left"),
            ]
        );
        assert!(b.iter().all(|b| b.subject.is_empty()));
        // `required_groups` is not taken for a longer name's prefix, nor
        // the other way round.
        let b = gate_list("required_groups: needs security");
        assert_eq!(
            (b[0].gate, b[0].description.as_str()),
            ("required_groups", "needs security")
        );
        let b = gate_list("something else");
        assert_eq!(
            (b[0].gate, b[0].description.as_str()),
            ("gates", "something else")
        );
    }

    #[test]
    fn refusals_by_a_gate_name_it_and_others_have_none() {
        let e = Error::PrerequisiteNotMet {
            repository: "r.example/app".into(),
            message: "environment production requires staging".into(),
        };
        assert_eq!(
            e.blockers(),
            [Blocker::new(
                "prerequisite",
                "r.example/app",
                "environment production requires staging"
            )]
        );
        assert_eq!(e.to_string(), "environment production requires staging");
        let e = Error::RollbackRefused {
            repository: "r.example/app".into(),
            environment: "production".into(),
            why: "prodgate has not moved its tag yet".into(),
        };
        assert_eq!(e.blockers()[0].gate, "rollback");
        assert_eq!(e.blockers()[0].subject, "r.example/app");
        assert_eq!(e.blockers()[0].description, e.to_string());
        let e = Error::NotBreakGlass {
            principal: "bob".into(),
            environment: "production".into(),
            allowed: "nobody".into(),
        };
        assert_eq!(e.blockers()[0].gate, "break_glass");
        assert!(Error::PromotionNotFound(7).blockers().is_empty());
    }
}
