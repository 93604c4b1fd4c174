//! What every provider's HTTP client needs: telling from a failed request whether it may have
//! reached the provider (resending is safe only when it cannot have).

use super::ProviderError;
use crate::settings::ConfigError;

/// A provider's configured `endpoint`, and the `Host` its requests are signed for
/// (`host[:port]`).
pub fn endpoint(product: &str, raw: &str) -> Result<(url::Url, String), ConfigError> {
    let url = url::Url::parse(raw)
        .map_err(|e| ConfigError::Invalid(format!("{product} endpoint {raw:?}: {e}")))?;
    let host = match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_owned(),
        (None, _) => {
            return Err(ConfigError::Invalid(format!(
                "{product} endpoint {raw:?} needs a host"
            )));
        }
    };
    Ok((url, host))
}

/// Whether a failed request may have reached the provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Delivery {
    /// No connection was made: nothing was sent, sending again is safe.
    NotSent,
    /// Sent, or possibly sent: a timeout, or the connection was lost while the request was
    /// written or its answer awaited. The provider may have acted on it.
    MaybeSent,
    /// The request could not be built; it never left.
    Invalid,
}

/// Classifies a `send()` failure from reqwest's predicates. A connect failure (a connect
/// timeout included: reqwest marks it both connect and timeout) never sent anything; any
/// other failure after connecting may have delivered the request.
fn delivery(e: &reqwest::Error) -> Delivery {
    if e.is_connect() {
        Delivery::NotSent
    } else if e.is_builder() || e.is_redirect() {
        Delivery::Invalid
    } else {
        // is_timeout, is_request (connection reset or closed after writing), is_body, ...
        Delivery::MaybeSent
    }
}

/// A request that failed before an answer: `Transient` when it cannot have been sent,
/// `Ambiguous` when it may have been.
pub fn send_error(action: &str, e: reqwest::Error) -> ProviderError {
    let e = e.without_url();
    match delivery(&e) {
        Delivery::NotSent => ProviderError::Transient {
            message: format!("{action}: cannot connect; nothing was sent: {e}"),
            source: Some(Box::new(e)),
        },
        Delivery::Invalid => ProviderError::Protocol {
            message: format!("{action}: cannot build the request: {e}"),
        },
        Delivery::MaybeSent if e.is_timeout() => ProviderError::Ambiguous {
            message: format!("{action}: no answer within the timeout"),
        },
        Delivery::MaybeSent => ProviderError::Ambiguous {
            message: format!("{action}: connection lost after sending: {}", chain(&e)),
        },
    }
}

/// The answer's body could not be read: the request was delivered and perhaps acted on.
pub fn read_error(action: &str, e: reqwest::Error) -> ProviderError {
    let e = e.without_url();
    ProviderError::Ambiguous {
        message: if e.is_timeout() {
            format!("{action}: no complete answer within the timeout")
        } else {
            format!("{action}: answer cut off: {}", chain(&e))
        },
    }
}

/// An error and its causes on one line (reqwest's own message alone says little).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// A `Retry-After` value: delay seconds or an HTTP date (RFC 9110), as a wait from `now`.
pub fn retry_after(value: &str, now: std::time::SystemTime) -> Option<std::time::Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(std::time::Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        assert_eq!(super::retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        assert_eq!(
            super::retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            super::retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(super::retry_after("soon", SystemTime::now()), None);
    }
}
