//! CloudFront's XML: the InvalidationBatch we send, the Invalidation and ErrorResponse it
//! answers, and the one classification of its error codes.

use std::time::Duration;

use serde::Deserialize;

use crate::providers::ProviderError;

pub const VERSION: &str = "2020-05-31";
const NAMESPACE: &str = "http://cloudfront.amazonaws.com/doc/2020-05-31/";

/// The body of CreateInvalidation: paths in order, then the caller reference.
pub fn invalidation_batch(paths: &[String], caller_reference: &str) -> String {
    let mut items = String::new();
    for p in paths {
        items.push_str("<Path>");
        items.push_str(&quick_xml::escape::escape(p.as_str()));
        items.push_str("</Path>");
    }
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<InvalidationBatch xmlns=\"{NAMESPACE}\"><Paths><Quantity>{}</Quantity><Items>{items}</Items></Paths><CallerReference>{}</CallerReference></InvalidationBatch>",
        paths.len(),
        quick_xml::escape::escape(caller_reference)
    )
}

/// `<Invalidation>`: the answer of CreateInvalidation and GetInvalidation.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Invalidation {
    pub id: String,
    pub status: String,
}

/// `<ErrorResponse><Error>...</Error><RequestId/></ErrorResponse>`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ErrorResponse {
    pub error: ErrorBody,
    pub request_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ErrorBody {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
}

/// Reads an XML document into `T`.
pub fn parse<'a, T: Deserialize<'a>>(what: &str, text: &'a str) -> Result<T, ProviderError> {
    quick_xml::de::from_str(text).map_err(|e| ProviderError::Protocol {
        message: format!("{what}: unreadable XML answer: {e}"),
    })
}

/// The message CloudFront gives real clients when a caller reference is reused with other paths.
const REUSED_REFERENCE: &str = "caller reference that was used for a previous invalidation batch";

/// Whether an error says the caller reference was used before for other paths (either form).
pub fn is_reference_conflict(code: &str, message: &str) -> bool {
    code == "InvalidationBatchAlreadyExists"
        || (code == "InvalidArgument" && message.contains(REUSED_REFERENCE))
}

/// The one place CloudFront errors are classified: by `<Code>`, then by HTTP status.
pub fn classify(status: u16, code: &str, message: &str, busy_wait: Duration) -> ProviderError {
    let detail = format!("HTTP {status} {code}: {message}");
    match code {
        "Throttling" | "ThrottlingException" | "RequestLimitExceeded" => ProviderError::Throttled {
            message: detail,
            retry_after: None,
        },
        "TooManyInvalidationsInProgress" => ProviderError::Busy {
            message: detail,
            retry_after: Some(busy_wait),
        },
        "BatchTooLarge" => ProviderError::BatchTooLarge { message: detail },
        "AccessDenied"
        | "InvalidClientTokenId"
        | "SignatureDoesNotMatch"
        | "MissingAuthenticationToken"
        | "ExpiredToken"
        | "IncompleteSignature"
        | "InvalidIdentityToken"
        | "ExpiredTokenException"
        | "IDPRejectedClaim" => ProviderError::Auth { message: detail },
        "ServiceUnavailable" | "InternalError" | "InternalFailure" | "IDPCommunicationError" => {
            ProviderError::Transient {
                message: detail,
                source: None,
            }
        }
        _ => match status {
            413 => ProviderError::BatchTooLarge { message: detail },
            429 => ProviderError::Throttled {
                message: detail,
                retry_after: None,
            },
            401 | 403 => ProviderError::Auth { message: detail },
            500..=599 => ProviderError::Transient {
                message: detail,
                source: None,
            },
            _ => ProviderError::Rejected {
                code: if code.is_empty() {
                    format!("HTTP {status}")
                } else {
                    code.to_owned()
                },
                message: detail,
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_batch_is_the_documented_xml() {
        let body = invalidation_batch(&["/index.html".into(), "/css/*".into()], "purge-0001");
        assert_eq!(
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(body.as_bytes())),
            "5d451bc16c182bce9f570616fa148442d05247e98304ead46c794bd18132f0cd"
        );
        let escaped = invalidation_batch(&["/a&b<c".into()], "r");
        assert!(escaped.contains("<Path>/a&amp;b&lt;c</Path>"), "{escaped}");
    }

    #[test]
    fn answers_are_read() {
        let inv: Invalidation = parse(
            "x",
            "<?xml version=\"1.0\"?><Invalidation xmlns=\"http://cloudfront.amazonaws.com/doc/2020-05-31/\"><Id>I2J0I21PCUYOIK</Id><Status>InProgress</Status><CreateTime>2024-01-01T00:00:00Z</CreateTime><InvalidationBatch><Paths><Quantity>1</Quantity><Items><Path>/a</Path></Items></Paths><CallerReference>r</CallerReference></InvalidationBatch></Invalidation>",
        )
        .unwrap();
        assert_eq!(inv.id, "I2J0I21PCUYOIK");
        assert_eq!(inv.status, "InProgress");
        let err: ErrorResponse = parse(
            "x",
            "<ErrorResponse xmlns=\"http://cloudfront.amazonaws.com/doc/2020-05-31/\"><Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message></Error><RequestId>req-1</RequestId></ErrorResponse>",
        )
        .unwrap();
        assert_eq!(err.error.code, "Throttling");
        assert_eq!(err.request_id.as_deref(), Some("req-1"));
    }

    #[test]
    fn errors_are_classified_by_code_before_status() {
        let wait = Duration::from_secs(20);
        let class = |status, code| classify(status, code, "m", wait);
        assert!(matches!(
            class(400, "Throttling"),
            ProviderError::Throttled { .. }
        ));
        assert!(matches!(
            class(400, "TooManyInvalidationsInProgress"),
            ProviderError::Busy { retry_after: Some(w), .. } if w == wait
        ));
        assert!(matches!(
            class(413, "BatchTooLarge"),
            ProviderError::BatchTooLarge { .. }
        ));
        assert!(matches!(
            class(403, "AccessDenied"),
            ProviderError::Auth { .. }
        ));
        assert!(matches!(
            class(404, "NoSuchDistribution"),
            ProviderError::Rejected { .. }
        ));
        assert!(matches!(
            class(400, "InvalidArgument"),
            ProviderError::Rejected { .. }
        ));
        assert!(class(503, "Whatever").is_retryable());
        assert!(class(500, "").is_retryable());
    }

    #[test]
    fn a_reused_reference_is_recognised_in_both_forms() {
        assert!(is_reference_conflict("InvalidationBatchAlreadyExists", ""));
        assert!(is_reference_conflict(
            "InvalidArgument",
            "Your request contains a caller reference that was used for a previous invalidation batch for the same distribution."
        ));
        assert!(!is_reference_conflict("InvalidArgument", "bad path"));
    }
}
