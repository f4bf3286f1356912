//! The one mapping from the service's errors to gRPC statuses. Exhaustive on
//! purpose: a new variant must be placed here, not fall into INTERNAL.

use crate::domain::machine::DomainError;
use crate::error::{Error, StoreError};
use crate::registry::RegistryError;
use tonic::Status;

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let msg = e.to_string();
        match e {
            Error::InvalidArgument { .. } => Status::invalid_argument(msg),
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
                    StoreError::Format { .. }
                    | StoreError::Unaudited(_)
                    | StoreError::Unusable(_) => Status::internal(msg),
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
}
