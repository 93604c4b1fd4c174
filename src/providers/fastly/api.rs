//! Fastly's purge API on the wire: the request of one call for a batch, and the one place its
//! answers (status, `{msg, detail}`, `Fastly-RateLimit-*`) are read.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::model::{Action, PurgeKind};
use crate::providers::{Batch, ProviderError, Refused};

/// Why INVALIDATE+ALL is refused at CreatePurge.
pub const INVALIDATE_ALL: &str = "kind ALL cannot be action INVALIDATE on Fastly: purge_all cannot be \
     soft (Fastly would silently purge hard); use action DELETE";

/// Surrogate keys one call may carry.
pub const MAX_KEYS: usize = 256;

/// What one call sends: path and query under the endpoint, and a JSON body if any.
#[derive(Debug, PartialEq)]
pub struct Call {
    pub path: String,
    pub query: Option<String>,
    pub body: Option<Value>,
    /// `Fastly-Soft-Purge: 1`: mark stale instead of removing.
    pub soft: bool,
}

/// The URL purge's path: the cached URL without its scheme, as is (`/purge/{host}/{path}`);
/// its query becomes the call's query.
pub fn url_path(target: &str) -> Result<(String, Option<String>), Refused> {
    let url = url::Url::parse(target).map_err(|e| Refused::new(format!("not a URL ({e})")))?;
    let host = url
        .host_str()
        .ok_or_else(|| Refused::new("a URL needs a host"))?;
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    Ok((
        format!("/purge/{host}{port}{}", url.path()),
        url.query().map(str::to_owned),
    ))
}

/// The call for a batch; INVALIDATE+ALL is refused (Fastly would purge hard anyway).
pub fn call(service_id: &str, batch: &Batch) -> Result<Call, ProviderError> {
    let soft = batch.action == Action::Invalidate;
    let unsupported = |why: String| ProviderError::Rejected {
        code: "Unsupported".into(),
        message: why,
    };
    match batch.kind {
        PurgeKind::Url => {
            let [target] = batch.targets.as_slice() else {
                return Err(ProviderError::BatchTooLarge {
                    message: format!(
                        "Fastly purges one URL per call, not {}",
                        batch.targets.len()
                    ),
                });
            };
            let (path, query) = url_path(target).map_err(|r| unsupported(r.rule))?;
            Ok(Call {
                path,
                query,
                body: None,
                soft,
            })
        }
        PurgeKind::Tag => Ok(Call {
            path: format!("/service/{service_id}/purge"),
            query: None,
            body: Some(json!({ "surrogate_keys": batch.targets })),
            soft,
        }),
        PurgeKind::All if soft => Err(unsupported(INVALIDATE_ALL.into())),
        PurgeKind::All => Ok(Call {
            path: format!("/service/{service_id}/purge_all"),
            query: None,
            body: None,
            soft: false,
        }),
        other => Err(unsupported(format!("Fastly cannot purge {other}"))),
    }
}

/// An answer read off the wire, before it is classified.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub request_id: Option<String>,
    pub retry_after: Option<String>,
    pub remaining: Option<String>,
    /// `Fastly-RateLimit-Reset`: when the hourly budget resets, epoch seconds.
    pub reset: Option<String>,
    pub body: Value,
}

impl Reply {
    /// The purge id: `id` of a URL purge, the first key's id of a key batch; none for
    /// purge_all.
    pub fn purge_id(&self, batch: &Batch) -> Option<String> {
        if let Some(id) = self.body.get("id").and_then(Value::as_str) {
            return Some(id.to_owned());
        }
        batch
            .targets
            .first()
            .and_then(|key| self.body.get(key))
            .and_then(Value::as_str)
            .map(str::to_owned)
    }

    fn message(&self) -> String {
        let text = |k: &str| self.body.get(k).and_then(Value::as_str).unwrap_or("");
        match (text("msg"), text("detail")) {
            ("", "") => match &self.body {
                Value::String(s) => s.chars().take(200).collect(),
                _ => String::new(),
            },
            (msg, "") => msg.to_owned(),
            (msg, detail) => format!("{msg}: {detail}"),
        }
    }

    /// How long Fastly asks to wait: `Retry-After`, else until `Fastly-RateLimit-Reset`.
    pub fn wait(&self, now: SystemTime) -> Option<Duration> {
        if let Some(d) = self
            .retry_after
            .as_deref()
            .and_then(|v| crate::providers::http::retry_after(v, now))
        {
            return Some(d);
        }
        let reset = self.reset.as_deref()?.trim().parse::<u64>().ok()?;
        Some(
            (UNIX_EPOCH + Duration::from_secs(reset))
                .duration_since(now)
                .unwrap_or_default(),
        )
    }
}

/// The one place Fastly answers are classified, by HTTP status.
pub fn classify(reply: &Reply, what: &str) -> ProviderError {
    let note = reply
        .request_id
        .as_deref()
        .map(|id| format!(" (request {id})"))
        .unwrap_or_default();
    let message = reply.message();
    let detail = format!("{what}: HTTP {} {message}{note}", reply.status);
    let lower = message.to_ascii_lowercase();
    match reply.status {
        429 => ProviderError::Throttled {
            retry_after: reply.wait(SystemTime::now()),
            message: match &reply.remaining {
                Some(r) => format!("{detail}; {r} calls left this hour"),
                None => detail,
            },
        },
        401 | 403 => ProviderError::Auth { message: detail },
        413 => ProviderError::BatchTooLarge { message: detail },
        400 if lower.contains("too many") || lower.contains("maximum") => {
            ProviderError::BatchTooLarge { message: detail }
        }
        500..=599 => ProviderError::Transient {
            message: detail,
            source: None,
        },
        status => ProviderError::Rejected {
            code: format!("HTTP {status}"),
            message: detail,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn batch(kind: PurgeKind, action: Action, targets: &[&str]) -> Batch {
        Batch {
            id: "test-batch".into(),
            kind,
            action,
            targets: targets.iter().map(|t| t.to_string()).collect(),
            hosts: Vec::new(),
            headers: BTreeMap::new(),
        }
    }

    #[test]
    fn each_kind_is_its_documented_call() {
        let url = call(
            "SVC",
            &batch(
                PurgeKind::Url,
                Action::Invalidate,
                &["https://www.example.com/a/b.js?x=1"],
            ),
        )
        .unwrap();
        assert_eq!(url.path, "/purge/www.example.com/a/b.js");
        assert_eq!(url.query.as_deref(), Some("x=1"));
        assert!(url.soft);
        let keys = call("SVC", &batch(PurgeKind::Tag, Action::Delete, &["k1", "k2"])).unwrap();
        assert_eq!(keys.path, "/service/SVC/purge");
        assert_eq!(keys.body, Some(json!({"surrogate_keys": ["k1", "k2"]})));
        assert!(!keys.soft);
        let all = call("SVC", &batch(PurgeKind::All, Action::Delete, &[])).unwrap();
        assert_eq!(all.path, "/service/SVC/purge_all");
        assert!(call("SVC", &batch(PurgeKind::All, Action::Invalidate, &[])).is_err());
        assert!(matches!(
            call(
                "SVC",
                &batch(
                    PurgeKind::Url,
                    Action::Delete,
                    &["https://a/1", "https://a/2"]
                )
            ),
            Err(ProviderError::BatchTooLarge { .. })
        ));
    }

    fn reply(status: u16) -> Reply {
        Reply {
            status,
            request_id: Some("req-1".into()),
            retry_after: None,
            remaining: Some("0".into()),
            reset: None,
            body: json!({"msg": "m", "detail": "d"}),
        }
    }

    #[test]
    fn answers_are_classified_by_status() {
        let now = SystemTime::now();
        let mut throttled = reply(429);
        let reset = now.duration_since(UNIX_EPOCH).unwrap().as_secs() + 120;
        throttled.reset = Some(reset.to_string());
        let wait = throttled.wait(now).unwrap();
        assert!(
            wait > Duration::from_secs(118) && wait <= Duration::from_secs(120),
            "{wait:?}"
        );
        assert!(classify(&throttled, "p").retry_after().is_some());
        assert!(matches!(
            classify(&reply(401), "p"),
            ProviderError::Auth { .. }
        ));
        assert!(classify(&reply(503), "p").is_retryable());
        let rejected = classify(&reply(400), "p");
        assert!(!rejected.is_retryable());
        assert!(
            rejected.to_string().contains("m: d (request req-1)"),
            "{rejected}"
        );
    }
}
