//! The errors the purge use cases answer with; `api::status` maps each to a gRPC status.

use std::time::Duration;

use crate::backend::BackendError;
use crate::limiter::Rate;
use crate::model::PurgeKind;

/// One bad field: `field` is a path such as `targets[3]`, `description` says what is wrong
/// and quotes the offending value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> FieldViolation {
        FieldViolation {
            field: field.into(),
            description: description.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid request: {}", summary(.0))]
    InvalidArgument(Vec<FieldViolation>),
    #[error(
        "idempotency key {key:?} was already used for a different request (purge {existing_id})"
    )]
    IdempotencyKeyReused { key: String, existing_id: String },
    #[error("caller {caller:?} is over its rate of {} per {:?}", limit.count, limit.per)]
    CallerRateLimited {
        caller: String,
        limit: Rate,
        retry_after: Duration,
    },
    #[error("the daily {kind} purge quota of provider {provider:?} is exhausted")]
    QuotaExhausted {
        provider: String,
        kind: PurgeKind,
        resets_in: Option<Duration>,
    },
    #[error("purge {id:?} not found")]
    NotFound { id: String },
    #[error(
        "purge {id:?} not found: it aged out (finished purges are kept for a limited time and number)"
    )]
    AgedOut { id: String },
    #[error(
        "the service holds {limit} unfinished purges, its limit: try again when some have finished"
    )]
    AtCapacity { limit: usize, retry_after: Duration },
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    #[error("the state backend is unavailable")]
    Unavailable(#[source] BackendError),
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("no answer within the server's deadline of {0:?}")]
    DeadlineExceeded(Duration),
    #[error("internal error")]
    Internal(#[source] BackendError),
}

/// The first few violations; the details list more.
fn summary(v: &[FieldViolation]) -> String {
    const SHOWN: usize = 3;
    let mut s = v
        .iter()
        .take(SHOWN)
        .map(|f| format!("{}: {}", f.field, f.description))
        .collect::<Vec<_>>()
        .join("; ");
    if v.len() > SHOWN {
        s.push_str(&format!(" (and {} more in the details)", v.len() - SHOWN));
    }
    s
}

impl From<BackendError> for Error {
    fn from(e: BackendError) -> Error {
        match e {
            BackendError::Unavailable(_) => Error::Unavailable(e),
            BackendError::Corrupt(_) => Error::Internal(e),
        }
    }
}
