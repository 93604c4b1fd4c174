//! EdgeOne (teo 2022-09-01) request and response shapes, and the one place its error codes are
//! classified.

use serde::{Deserialize, Serialize};

use crate::model::PurgeKind;
use crate::providers::ProviderError;

pub const VERSION: &str = "2022-09-01";

/// Rows per DescribePurgeTasks page (the API's maximum `Limit`).
pub const PAGE: u32 = 1000;
/// Tasks one poll covers: at the default cap of 100 targets per task that is at most 1000
/// rows, one page. Further pages (only with raised per-call caps) wait for the status budget
/// like the first; they are bounded by `POLL_PAGES`.
pub const POLL_TASKS: usize = (PAGE / 100) as usize;

/// The purge `Type` of a kind; `None` for kinds EdgeOne cannot purge.
pub fn purge_type(kind: PurgeKind) -> Option<&'static str> {
    Some(match kind {
        PurgeKind::Url => "purge_url",
        PurgeKind::Prefix => "purge_prefix",
        PurgeKind::Host => "purge_host",
        PurgeKind::All => "purge_all",
        PurgeKind::Tag => "purge_cache_tag",
        PurgeKind::Wildcard | PurgeKind::Regex => return None,
    })
}

pub fn kind_of(purge_type: &str) -> Option<PurgeKind> {
    PurgeKind::EVERY
        .into_iter()
        .find(|k| purge_type_is(*k, purge_type))
}

fn purge_type_is(kind: PurgeKind, t: &str) -> bool {
    purge_type(kind) == Some(t)
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreatePurgeTask<'a> {
    pub zone_id: &'a str,
    #[serde(rename = "Type")]
    pub kind: &'a str,
    pub method: &'a str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub targets: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_tag: Option<CacheTag<'a>>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CacheTag<'a> {
    pub domains: &'a [String],
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreatePurgeTaskResponse {
    pub job_id: Option<String>,
    pub failed_list: Option<Vec<FailReason>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct FailReason {
    pub reason: Option<String>,
    pub targets: Option<Vec<String>>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribePurgeTasks<'a> {
    pub zone_id: &'a str,
    pub start_time: String,
    pub end_time: String,
    pub offset: u32,
    pub limit: u32,
    pub filters: Vec<AdvancedFilter>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AdvancedFilter {
    pub name: &'static str,
    pub values: Vec<String>,
    pub fuzzy: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribePurgeTasksResponse {
    pub total_count: Option<u64>,
    pub tasks: Option<Vec<Task>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Task {
    pub job_id: String,
    pub target: Option<String>,
    #[serde(rename = "Type")]
    pub kind: Option<String>,
    /// `invalidate` or `delete`.
    pub method: Option<String>,
    pub status: String,
    pub create_time: Option<String>,
    pub fail_type: Option<String>,
    pub fail_message: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeContentQuota<'a> {
    pub zone_id: &'a str,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeContentQuotaResponse {
    pub purge_quota: Option<Vec<Quota>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Quota {
    #[serde(rename = "Type")]
    pub kind: String,
    pub batch: Option<u64>,
    pub daily: Option<u64>,
    pub daily_available: Option<u64>,
}

/// `{"Response": {...}}`, the error shape included.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Envelope {
    pub response: serde_json::Value,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ApiError {
    pub code: String,
    pub message: Option<String>,
}

/// Whether the code asks for a fresh signature (clock skew); retried at once with a new one.
pub fn is_signature_expired(code: &str) -> bool {
    code == "AuthFailure.SignatureExpire"
}

/// Classifies an EdgeOne error code (PROVIDERS.md, "Errors").
pub fn classify(code: &str, message: &str) -> ProviderError {
    let message = format!("{code}: {message}");
    if code.starts_with("RequestLimitExceeded") || code == "LimitExceeded.RateLimitExceeded" {
        ProviderError::Throttled {
            message,
            retry_after: None,
        }
    } else if code.starts_with("InternalError")
        || code == "ServiceUnavailable"
        || is_signature_expired(code)
    {
        ProviderError::Transient {
            message,
            source: None,
        }
    } else if code == "LimitExceeded.BatchQuota" {
        ProviderError::BatchTooLarge { message }
    } else if code == "LimitExceeded.DailyQuota" {
        ProviderError::QuotaExhausted { message }
    } else if code.starts_with("AuthFailure") || code.starts_with("UnauthorizedOperation") {
        ProviderError::Auth { message }
    } else {
        ProviderError::Rejected {
            code: code.to_owned(),
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_fall_in_their_class() {
        let retryable = |c: &str| classify(c, "m").is_retryable();
        assert!(retryable("RequestLimitExceeded.UinLimitExceeded"));
        assert!(retryable("LimitExceeded.RateLimitExceeded"));
        assert!(retryable("InternalError.ProxyServer"));
        assert!(retryable("ServiceUnavailable"));
        assert!(!retryable("AuthFailure.SignatureFailure"));
        assert!(!retryable("UnauthorizedOperation.NoPermission"));
        assert!(!retryable("InvalidParameter.Target"));
        assert!(!retryable("LimitExceeded.PackNotAllow"));
        assert!(!retryable("OperationDenied"));
        assert!(matches!(
            classify("LimitExceeded.BatchQuota", ""),
            ProviderError::BatchTooLarge { .. }
        ));
        assert!(matches!(
            classify("LimitExceeded.DailyQuota", ""),
            ProviderError::QuotaExhausted { .. }
        ));
        assert_eq!(kind_of("purge_cache_tag"), Some(PurgeKind::Tag));
    }
}
