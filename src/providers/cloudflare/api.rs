//! Cloudflare's purge API on the wire: the body of one call for a batch, and the one place
//! its answers (status, `{success, errors, result}`, `Ratelimit`/`Retry-After`) are read.

use std::time::{Duration, SystemTime};

use serde::Deserialize;
use serde_json::{Value, json};

use crate::model::{Action, PurgeKind};
use crate::providers::{Batch, ProviderError, Refused};

/// The API path of an action, under `zones/{zone_id}/`.
pub fn action_path(action: Action) -> &'static str {
    match action {
        Action::Delete => "purge_cache",
        Action::Invalidate => "invalidate_cache",
    }
}

/// A PREFIX target as Cloudflare reads it: host and path, without scheme, query or fragment.
pub fn prefix(target: &str) -> Result<String, Refused> {
    let url = url::Url::parse(target).map_err(|e| Refused::new(format!("not a URL ({e})")))?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(Refused::new("a Cloudflare prefix has no query or fragment"));
    }
    let host = url
        .host_str()
        .ok_or_else(|| Refused::new("a prefix needs a host"))?;
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    Ok(format!("{host}{port}{}", url.path()))
}

/// The longest cache tag Cloudflare accepts.
pub const MAX_TAG_LEN: usize = 1024;

/// The JSON body of one call: exactly one of `files`, `prefixes`, `hosts`, `tags`,
/// `purge_everything`; URLs carry the request's cache-key headers as `[{url, headers}]`.
pub fn body(batch: &Batch) -> Result<Value, ProviderError> {
    Ok(match batch.kind {
        PurgeKind::Url if batch.headers.is_empty() => json!({ "files": batch.targets }),
        PurgeKind::Url => {
            let files: Vec<Value> = batch
                .targets
                .iter()
                .map(|url| json!({ "url": url, "headers": batch.headers }))
                .collect();
            json!({ "files": files })
        }
        PurgeKind::Prefix => {
            let prefixes = batch
                .targets
                .iter()
                .map(|t| prefix(t))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|why| ProviderError::Rejected {
                    code: "InvalidPrefix".into(),
                    message: why.rule,
                })?;
            json!({ "prefixes": prefixes })
        }
        PurgeKind::Host => json!({ "hosts": batch.targets }),
        PurgeKind::Tag => json!({ "tags": batch.targets }),
        PurgeKind::All => json!({ "purge_everything": true }),
        PurgeKind::Wildcard | PurgeKind::Regex => {
            return Err(ProviderError::Rejected {
                code: "Unsupported".into(),
                message: format!("Cloudflare cannot purge {}", batch.kind),
            });
        }
    })
}

/// The envelope of every answer.
#[derive(Debug, Default, Deserialize)]
pub struct Envelope {
    #[serde(default)]
    pub success: bool,
    #[serde(default)]
    pub errors: Vec<ApiMessage>,
}

#[derive(Debug, Deserialize)]
pub struct ApiMessage {
    #[serde(default)]
    pub code: Value,
    #[serde(default)]
    pub message: String,
}

/// An answer read off the wire, before it is classified.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    /// `cf-ray`: the id Cloudflare support asks for.
    pub ray: Option<String>,
    pub retry_after: Option<String>,
    pub ratelimit: Option<String>,
    pub ratelimit_policy: Option<String>,
    pub envelope: Envelope,
    /// The body when it was not Cloudflare's JSON envelope (a proxy's page, say).
    pub raw: Option<String>,
}

impl Reply {
    fn errors(&self) -> String {
        let listed: Vec<String> = self
            .envelope
            .errors
            .iter()
            .map(|e| format!("{} {}", e.code, e.message))
            .collect();
        match (listed.is_empty(), &self.raw) {
            (false, _) => listed.join("; "),
            (true, Some(raw)) => raw.chars().take(200).collect(),
            (true, None) => String::new(),
        }
    }

    fn ray_note(&self) -> String {
        self.ray
            .as_deref()
            .map(|r| format!(" (cf-ray {r})"))
            .unwrap_or_default()
    }

    /// How long Cloudflare asks to wait: `Retry-After`, else the `t=` of `Ratelimit`.
    pub fn wait(&self, now: SystemTime) -> Option<Duration> {
        self.retry_after
            .as_deref()
            .and_then(|v| crate::providers::http::retry_after(v, now))
            .or_else(|| self.ratelimit.as_deref().and_then(ratelimit_reset))
    }
}

/// The seconds until the quota resets, from `Ratelimit: "default";r=50;t=30` (RFC draft
/// `ratelimit-headers`: `r` remaining, `t` seconds to reset).
pub fn ratelimit_reset(value: &str) -> Option<Duration> {
    value
        .split(';')
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| *k == "t")
        .and_then(|(_, v)| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// Whether an error message says the call held too many items.
fn over_cap(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    ["too many", "at most", "maximum", "exceed", "limit of"]
        .iter()
        .any(|w| m.contains(w))
}

/// The one place Cloudflare answers are classified, by HTTP status (its numeric codes are
/// poorly documented), and for a 400 by an over-cap message.
pub fn classify(reply: &Reply, what: &str) -> ProviderError {
    let detail = format!(
        "{what}: HTTP {} {}{}",
        reply.status,
        reply.errors(),
        reply.ray_note()
    );
    match reply.status {
        429 => ProviderError::Throttled {
            retry_after: reply.wait(SystemTime::now()),
            message: match &reply.ratelimit_policy {
                Some(policy) => format!("{detail}; policy {policy}"),
                None => detail,
            },
        },
        401 | 403 => ProviderError::Auth { message: detail },
        413 => ProviderError::BatchTooLarge { message: detail },
        400 if over_cap(&reply.errors()) => ProviderError::BatchTooLarge { message: detail },
        500..=599 => ProviderError::Transient {
            message: detail,
            source: None,
        },
        _ => ProviderError::Rejected {
            code: reply
                .envelope
                .errors
                .first()
                .map(|e| e.code.to_string())
                .unwrap_or_else(|| format!("HTTP {}", reply.status)),
            message: detail,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn batch(kind: PurgeKind, targets: &[&str]) -> Batch {
        Batch {
            id: "test-batch".into(),
            kind,
            action: Action::Delete,
            targets: targets.iter().map(|t| t.to_string()).collect(),
            hosts: Vec::new(),
            headers: BTreeMap::new(),
        }
    }

    #[test]
    fn each_kind_has_its_one_field() {
        let url = body(&batch(PurgeKind::Url, &["https://a.com/x"])).unwrap();
        assert_eq!(url, json!({"files": ["https://a.com/x"]}));
        let mut with_headers = batch(PurgeKind::Url, &["https://a.com/x"]);
        with_headers
            .headers
            .insert("CF-IPCountry".into(), "US".into());
        assert_eq!(
            body(&with_headers).unwrap(),
            json!({"files": [{"url": "https://a.com/x", "headers": {"CF-IPCountry": "US"}}]})
        );
        let prefixes = body(&batch(PurgeKind::Prefix, &["https://a.com:8443/d/"])).unwrap();
        assert_eq!(prefixes, json!({"prefixes": ["a.com:8443/d/"]}));
        assert_eq!(
            body(&batch(PurgeKind::All, &[])).unwrap(),
            json!({"purge_everything": true})
        );
        assert!(body(&batch(PurgeKind::Regex, &["x"])).is_err());
        assert!(prefix("https://a.com/d/?q=1").is_err());
    }

    fn reply(status: u16, message: &str) -> Reply {
        Reply {
            status,
            ray: Some("8a1b".into()),
            retry_after: None,
            ratelimit: None,
            ratelimit_policy: None,
            envelope: Envelope {
                success: false,
                errors: vec![ApiMessage {
                    code: json!(1234),
                    message: message.into(),
                }],
            },
            raw: None,
        }
    }

    #[test]
    fn answers_are_classified_by_status() {
        let mut throttled = reply(429, "rate limited");
        throttled.ratelimit = Some("\"default\";r=0;t=30".into());
        let e = classify(&throttled, "POST purge_cache");
        assert_eq!(e.retry_after(), Some(Duration::from_secs(30)));
        throttled.retry_after = Some("7".into());
        let e = classify(&throttled, "POST purge_cache");
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
        assert!(matches!(
            classify(&reply(401, "Invalid access token"), "p"),
            ProviderError::Auth { .. }
        ));
        assert!(matches!(
            classify(&reply(403, "no permission"), "p"),
            ProviderError::Auth { .. }
        ));
        assert!(classify(&reply(502, "bad gateway"), "p").is_retryable());
        assert!(matches!(
            classify(&reply(400, "Too many files: at most 30 per request"), "p"),
            ProviderError::BatchTooLarge { .. }
        ));
        let rejected = classify(&reply(400, "Invalid url"), "p");
        assert!(matches!(rejected, ProviderError::Rejected { .. }));
        assert!(rejected.to_string().contains("cf-ray 8a1b"), "{rejected}");
    }
}
