//! The one mapping from the service's errors to gRPC statuses. Exhaustive on
//! purpose: a new variant must be placed here, not fall into INTERNAL.
//!
//! Programs get the richer error model's details besides the message: a
//! `google.rpc.PreconditionFailure` with one violation per blocking gate
//! (type = the gate, subject = the promotion id or the repository) on every
//! refusal by a gate, and a `google.rpc.BadRequest` naming the field on
//! every INVALID_ARGUMENT.

use crate::domain::machine::DomainError;
use crate::error::{Blocker, Error, StoreError};
use crate::pb;
use crate::registry::RegistryError;
use std::collections::HashMap;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, PreconditionViolation, StatusExt};

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        status(e, "")
    }
}

/// INVALID_ARGUMENT for `field`, with a `google.rpc.BadRequest` naming it:
/// the one way a handler refuses a request field.
pub fn invalid_argument(field: &'static str, message: impl Into<String>) -> Status {
    Status::from(Error::InvalidArgument {
        field,
        message: message.into(),
    })
}

/// `e` as the answer to a call about `subject` (the promotion id, or the
/// repository when there is no promotion yet), which becomes the subject of
/// every blocker whose error does not name one. Every status carries a
/// `google.rpc.ErrorInfo` (domain `prodgate`, a [`pb::ErrorReason`]), and
/// as fits the error a `PreconditionFailure`, a `BadRequest` or a
/// `RetryInfo`.
pub fn status(e: Error, subject: &str) -> Status {
    let blockers = e.blockers();
    let (reason, metadata) = reason(&e, subject);
    let field = match &e {
        Error::InvalidArgument { field, message } | Error::OutOfRange { field, message } => {
            Some((*field, message.clone()))
        }
        Error::UnknownEnvironment { .. } => Some(("environment", e.to_string())),
        Error::UnknownRegistry { .. } => Some(("repository", e.to_string())),
        _ => None,
    };
    let retry = matches!(e, Error::ShuttingDown);
    if let Error::Store(s) = &e {
        tracing::error!(error = %s, "storage failure");
    }
    let code = code(reason, &e);
    let message = message(&e);
    let mut details = ErrorDetails::new();
    details.set_error_info(reason_name(reason), DOMAIN, metadata);
    if !blockers.is_empty() {
        let violations: Vec<PreconditionViolation> = blockers
            .into_iter()
            .map(|b| violation(b, subject))
            .collect();
        details.set_precondition_failure(violations);
    }
    if let Some((field, message)) = field {
        details.add_bad_request_violation(field, message);
    }
    if retry {
        details.set_retry_info(Some(std::time::Duration::from_secs(1)));
    }
    Status::with_error_details(code, message, details)
}

/// The ErrorInfo `domain` of every prodgate status.
pub const DOMAIN: &str = "prodgate";

/// `SOURCE_NOT_FOUND` for `ERROR_REASON_SOURCE_NOT_FOUND`: the reason
/// string is the enum value's name without its prefix.
pub fn reason_name(r: pb::ErrorReason) -> &'static str {
    let name = r.as_str_name();
    name.strip_prefix("ERROR_REASON_").unwrap_or(name)
}

/// The reason of `e` and its metadata (snake_case keys). Exhaustive, so a
/// new error is given a reason (and by it a code) on purpose.
fn reason(e: &Error, subject: &str) -> (pb::ErrorReason, HashMap<String, String>) {
    use pb::ErrorReason as R;
    let mut m = HashMap::new();
    let mut put = |k: &str, v: &str| {
        m.insert(k.to_owned(), v.to_owned());
    };
    let r = match e {
        Error::InvalidArgument { field, .. } | Error::OutOfRange { field, .. } => {
            put("field", field);
            R::InvalidField
        }
        Error::UnknownEnvironment { name, .. } => {
            put("environment", name);
            R::UnknownEnvironment
        }
        Error::UnknownRegistry { host } => {
            put("registry", host);
            R::UnknownRegistry
        }
        Error::NotRequester {
            principal,
            repository,
            project,
            ..
        } => {
            put("principal", principal);
            put("repository", repository);
            put("project", project);
            R::NotRequester
        }
        Error::PromotionNotFound(id) => {
            put("promotion_id", &id.to_string());
            R::PromotionNotFound
        }
        Error::SourceNotFound(reference) => {
            put("repository", subject);
            put("source", reference);
            R::SourceNotFound
        }
        Error::RequestIdReused {
            request_id,
            promotion_id,
        } => {
            put("request_id", request_id);
            put("promotion_id", &promotion_id.to_string());
            R::RequestIdConflict
        }
        Error::PolicyNotFound(digest) => {
            put("policy_digest", digest);
            R::PolicyNotFound
        }
        Error::Internal(_) => R::Internal,
        Error::NothingDeployed {
            repository,
            environment,
            ..
        } => {
            put("repository", repository);
            put("environment", environment);
            R::NothingDeployed
        }
        Error::Expired { id, .. } => {
            put("promotion_id", &id.to_string());
            put("state", "EXPIRED");
            R::NotOpen
        }
        Error::NotCheckReporter {
            principal,
            repository,
        } => {
            put("principal", principal);
            put("repository", repository);
            R::NotCheckReporter
        }
        Error::TooManyChecks { limit, .. } => {
            put("limit", &limit.to_string());
            R::LimitExceeded
        }
        Error::NotBreakGlass {
            principal,
            environment,
            ..
        } => {
            put("principal", principal);
            put("environment", environment);
            R::NotBreakGlass
        }
        Error::RollbackRefused {
            repository,
            environment,
            ..
        } => {
            put("repository", repository);
            put("environment", environment);
            R::RollbackRefused
        }
        Error::Blocked(blockers) => {
            // A prerequisite not met says the most about what to do first.
            let first = blockers
                .iter()
                .find(|b| b.gate == crate::domain::gates::PREREQUISITE)
                .or(blockers.first());
            for (k, v) in first.map(|b| b.facts.as_slice()).unwrap_or_default() {
                put(k, v);
            }
            match first.map(|b| b.gate) {
                Some(crate::domain::gates::PREREQUISITE) => R::PrerequisiteNotMet,
                Some(crate::domain::decision::NOOP) => R::Noop,
                _ => {
                    let gates: Vec<&str> = blockers.iter().map(|b| b.gate).collect();
                    put("gates", &gates.join(","));
                    R::GatesBlocked
                }
            }
        }
        Error::Unclaimed { repository, .. } => {
            put("repository", repository);
            R::UnclaimedRepository
        }
        Error::ShuttingDown => R::ShuttingDown,
        Error::TooManyWatches { limit, .. } => {
            put("limit", &limit.to_string());
            R::LimitExceeded
        }
        Error::Domain(d) => match d {
            DomainError::NotApprover {
                principal,
                environment,
                ..
            } => {
                put("principal", principal);
                put("environment", environment);
                R::NotApprover
            }
            DomainError::SelfApproval {
                principal,
                environment,
            } => {
                put("principal", principal);
                put("environment", environment);
                R::SelfApproval
            }
            DomainError::NotAllowedToCancel { environment } => {
                put("environment", environment);
                R::NotAllowedToCancel
            }
            DomainError::NotPending { id, state, .. } | DomainError::NotApproved { id, state } => {
                put("promotion_id", &id.to_string());
                put("state", state.label());
                R::NotOpen
            }
        },
        Error::Registry(r) => match r {
            RegistryError::NotFound { reference } => {
                put("repository", subject);
                put("source", reference);
                R::SourceNotFound
            }
            RegistryError::Unavailable { registry, .. } => {
                put("registry", registry);
                R::RegistryUnavailable
            }
            RegistryError::Protocol { registry, .. } => {
                put("registry", registry);
                R::RegistryUnavailable
            }
            RegistryError::Denied { registry, .. } | RegistryError::Refused { registry, .. } => {
                put("registry", registry);
                R::RegistryRefused
            }
            RegistryError::DigestMismatch { .. }
            | RegistryError::ManifestTooLarge { .. }
            | RegistryError::BlobTooLarge { .. } => R::RegistryRefused,
        },
        Error::Store(s) => match s {
            StoreError::Read(_)
            | StoreError::Backend(_)
            | StoreError::Closed
            | StoreError::Flush(_)
            | StoreError::Poisoned => R::StoreUnavailable,
            StoreError::Corrupt { .. }
            | StoreError::Format { .. }
            | StoreError::Unaudited(_)
            | StoreError::Unusable(_) => R::Internal,
        },
    };
    (r, m)
}

fn violation(b: Blocker, subject: &str) -> PreconditionViolation {
    let subject = if b.subject.is_empty() {
        subject.to_owned()
    } else {
        b.subject
    };
    PreconditionViolation::new(b.gate, subject, b.description)
}

/// The code of each reason, as the proto's `ErrorReason` documents it;
/// `e` tells apart the two reasons that come with either of two codes.
fn code(r: pb::ErrorReason, e: &Error) -> Code {
    use pb::ErrorReason as R;
    match r {
        R::InvalidField if matches!(e, Error::OutOfRange { .. }) => Code::OutOfRange,
        R::InvalidField | R::UnknownEnvironment | R::UnknownRegistry => Code::InvalidArgument,
        R::SourceNotFound | R::PromotionNotFound | R::PolicyNotFound | R::NothingDeployed => {
            Code::NotFound
        }
        R::PrerequisiteNotMet
        | R::GatesBlocked
        | R::NotOpen
        | R::Noop
        | R::UnclaimedRepository
        | R::RollbackRefused
        | R::RegistryRefused => Code::FailedPrecondition,
        R::RequestIdConflict => Code::AlreadyExists,
        R::NotApprover
        | R::SelfApproval
        | R::NotRequester
        | R::NotBreakGlass
        | R::NotCheckReporter
        | R::NotAllowedToCancel => Code::PermissionDenied,
        R::TokenExpired | R::TokenInvalid => Code::Unauthenticated,
        R::LimitExceeded => Code::ResourceExhausted,
        R::RegistryUnavailable | R::StoreUnavailable | R::ShuttingDown => Code::Unavailable,
        R::Internal if matches!(e, Error::Store(StoreError::Corrupt { .. })) => Code::DataLoss,
        R::Internal | R::Unspecified => Code::Internal,
    }
}

/// The message a person reads: the error, and for a write the store could
/// not make, that nothing was changed.
fn message(e: &Error) -> String {
    let msg = e.to_string();
    match e {
        Error::Store(StoreError::Read(_)) => format!("{msg}; retry"),
        Error::Store(StoreError::Backend(_) | StoreError::Closed) => {
            format!("the change was not recorded, so nothing was changed: {msg}; retry")
        }
        Error::Store(StoreError::Flush(_) | StoreError::Poisoned) => {
            format!("the change was not recorded, so nothing was changed: {msg}")
        }
        _ => msg,
    }
}
