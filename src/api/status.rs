//! The one place a domain error becomes a gRPC status, with `google.rpc` details.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::core::Error;

pub const DOMAIN: &str = "purge.v1";

fn info(reason: &str, metadata: HashMap<String, String>) -> ErrorDetails {
    let mut d = ErrorDetails::new();
    d.set_error_info(reason, DOMAIN, metadata);
    d
}

/// Exhaustive by design: a new error variant must decide its status here.
pub fn from_error(e: Error) -> Status {
    let message = e.to_string();
    let (code, details) = match &e {
        Error::InvalidArgument(violations) => {
            let mut d = info("INVALID_ARGUMENT", HashMap::new());
            for v in violations {
                d.add_bad_request_violation(&v.field, &v.description);
            }
            (Code::InvalidArgument, d)
        }
        Error::IdempotencyKeyReused { existing_id, .. } => (
            Code::FailedPrecondition,
            info(
                "IDEMPOTENCY_KEY_REUSED",
                HashMap::from([("purge_id".to_owned(), existing_id.clone())]),
            ),
        ),
        Error::CallerRateLimited {
            caller,
            retry_after,
            limit,
        } => {
            let mut d = info(
                "CALLER_RATE_EXCEEDED",
                HashMap::from([("caller".to_owned(), caller.clone())]),
            );
            d.set_retry_info(Some(*retry_after));
            d.add_quota_failure_violation(
                format!("caller:{caller}"),
                format!(
                    "at most {} CreatePurge calls per {:?}",
                    limit.count, limit.per
                ),
            );
            (Code::ResourceExhausted, d)
        }
        Error::QuotaExhausted {
            provider,
            kind,
            resets_in,
        } => {
            let mut d = info(
                "PROVIDER_QUOTA_EXHAUSTED",
                HashMap::from([
                    ("provider".to_owned(), provider.clone()),
                    ("kind".to_owned(), kind.to_string()),
                ]),
            );
            if let Some(r) = resets_in {
                d.set_retry_info(Some(*r));
            }
            d.add_quota_failure_violation(
                format!("provider:{provider}:{kind}"),
                "the provider's daily purge quota for this kind is used up",
            );
            (Code::ResourceExhausted, d)
        }
        Error::NotFound { id } => (
            Code::NotFound,
            info(
                "PURGE_NOT_FOUND",
                HashMap::from([("id".to_owned(), id.clone())]),
            ),
        ),
        Error::AgedOut { id } => (
            Code::NotFound,
            info(
                "PURGE_AGED_OUT",
                HashMap::from([("id".to_owned(), id.clone())]),
            ),
        ),
        Error::AtCapacity { limit, retry_after } => {
            let mut d = info(
                "TOO_MANY_UNFINISHED_PURGES",
                HashMap::from([("limit".to_owned(), limit.to_string())]),
            );
            d.set_retry_info(Some(*retry_after));
            d.add_quota_failure_violation(
                "store:unfinished_purges",
                format!("at most {limit} purges kept (store.memory.max_records)"),
            );
            (Code::ResourceExhausted, d)
        }
        Error::Unauthenticated(_) => (
            Code::Unauthenticated,
            info("UNAUTHENTICATED", HashMap::new()),
        ),
        Error::PermissionDenied(_) => (
            Code::PermissionDenied,
            info("PERMISSION_DENIED", HashMap::new()),
        ),
        Error::Unavailable(cause) => {
            tracing::warn!(error = %cause, cause = ?std::error::Error::source(cause), "backend unavailable");
            (
                Code::Unavailable,
                info("BACKEND_UNAVAILABLE", HashMap::new()),
            )
        }
        Error::ShuttingDown => (Code::Unavailable, info("SHUTTING_DOWN", HashMap::new())),
        Error::DeadlineExceeded(_) => (
            Code::DeadlineExceeded,
            info("SERVER_DEADLINE_EXCEEDED", HashMap::new()),
        ),
        Error::Internal(cause) => {
            tracing::error!(error = %cause, cause = ?std::error::Error::source(cause), "internal error");
            (Code::Internal, info("INTERNAL", HashMap::new()))
        }
    };
    Status::with_error_details(code, message, details)
}
