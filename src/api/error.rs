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
use crate::registry::RegistryError;
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
/// every blocker whose error does not name one.
pub fn status(e: Error, subject: &str) -> Status {
    let blockers = e.blockers();
    let status = mapped(e);
    if blockers.is_empty() {
        return status;
    }
    let violations: Vec<PreconditionViolation> = blockers
        .into_iter()
        .map(|b| violation(b, subject))
        .collect();
    Status::with_error_details(
        status.code(),
        status.message(),
        ErrorDetails::with_precondition_failure(violations),
    )
}

fn violation(b: Blocker, subject: &str) -> PreconditionViolation {
    let subject = if b.subject.is_empty() {
        subject.to_owned()
    } else {
        b.subject
    };
    PreconditionViolation::new(b.gate, subject, b.description)
}

/// The code and message of each error (and the field of an
/// INVALID_ARGUMENT); [`status`] adds the blockers.
fn mapped(e: Error) -> Status {
    let msg = e.to_string();
    match e {
        Error::InvalidArgument { field, message } => Status::with_error_details(
            Code::InvalidArgument,
            msg,
            ErrorDetails::with_bad_request_violation(field, message),
        ),
        Error::OutOfRange { .. } => Status::out_of_range(msg),
        Error::Internal(_) => Status::internal(msg),
        Error::NotRequester { .. } => Status::permission_denied(msg),
        Error::PromotionNotFound(_)
        | Error::SourceNotFound(_)
        | Error::PolicyNotFound(_)
        | Error::NothingDeployed { .. } => Status::not_found(msg),
        Error::Blocked(_) | Error::Expired { .. } | Error::Unclaimed { .. } => {
            Status::failed_precondition(msg)
        }
        Error::RequestIdReused { .. } => Status::already_exists(msg),
        Error::NotCheckReporter { .. } | Error::NotBreakGlass { .. } => {
            Status::permission_denied(msg)
        }
        Error::RollbackRefused { .. } => Status::failed_precondition(msg),
        Error::TooManyChecks { .. } => Status::resource_exhausted(msg),
        Error::ShuttingDown => Status::unavailable(msg),
        Error::TooManyWatches { .. } => Status::resource_exhausted(msg),
        Error::Domain(d) => match d {
            DomainError::NotApprover { .. }
            | DomainError::SelfApproval { .. }
            | DomainError::NotAllowedToCancel { .. } => Status::permission_denied(msg),
            DomainError::NotPending { .. } | DomainError::NotApproved { .. } => {
                Status::failed_precondition(msg)
            }
        },
        Error::Registry(r) => match r {
            RegistryError::NotFound { .. } => Status::not_found(msg),
            RegistryError::Unavailable { .. } | RegistryError::Protocol { .. } => {
                Status::unavailable(msg)
            }
            RegistryError::Denied { .. }
            | RegistryError::DigestMismatch { .. }
            | RegistryError::Refused { .. }
            | RegistryError::ManifestTooLarge { .. }
            | RegistryError::BlobTooLarge { .. } => Status::failed_precondition(msg),
        },
        Error::Store(s) => {
            tracing::error!(error = %s, "storage failure");
            match s {
                StoreError::Corrupt { .. } => Status::data_loss(msg),
                StoreError::Format { .. } | StoreError::Unaudited(_) | StoreError::Unusable(_) => {
                    Status::internal(msg)
                }
                StoreError::Read(_) => Status::unavailable(format!("{msg}; retry")),
                StoreError::Backend(_) | StoreError::Closed => Status::unavailable(format!(
                    "the change was not recorded, so nothing was changed: {msg}; retry"
                )),
                StoreError::Flush(_) | StoreError::Poisoned => Status::unavailable(format!(
                    "the change was not recorded, so nothing was changed: {msg}"
                )),
            }
        }
    }
}
