//! CDNetworks CDN Pro: `POST /cdn/purges` for URL (with cache-key headers), PREFIX and
//! WILDCARD (`dirUrls`) and REGEX (`regexPatterns`) purges, `GET /cdn/purges/{id}` for
//! completion, `GET /cdn/purges/purgeTokens` for the daily budget.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{
    Api, AuthSettings, Reply, by_http_status, count, default_endpoint, default_missing_timeout,
    default_timeout, dialect,
};
use crate::limiter::Rate;
use crate::model::{Action, PurgeKind};
use crate::providers::Refused;
use crate::providers::{
    Batch, CallBudget, Capabilities, KindQuota, Provider, ProviderError, Submission, TaskProgress,
    TaskQuery,
};
use crate::settings::ConfigError;

/// Where CDN Pro purges: the staging or the production network.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CdnProTarget {
    Staging,
    #[default]
    Production,
}

impl CdnProTarget {
    fn as_str(self) -> &'static str {
        match self {
            CdnProTarget::Staging => "staging",
            CdnProTarget::Production => "production",
        }
    }
}

/// `type = "cdnpro"` settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CdnProSettings {
    pub auth: AuthSettings,
    #[serde(default = "default_endpoint")]
    pub endpoint: String,
    /// The network purged: `production` (default) or `staging`.
    #[serde(default)]
    pub target: CdnProTarget,
    /// Deadline of one API call.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// A purge CDN Pro answers 404 for is still given this long before its targets fail.
    #[serde(default = "default_missing_timeout", with = "humantime_serde")]
    pub missing_timeout: Duration,
}

/// `fileUrls` per call: CDN Pro documents no cap, so a conservative one (configurable with
/// `limits.max_per_call`).
const MAX_FILE_URLS: usize = 100;
const MAX_DIR_URLS: usize = 20;
const MAX_REGEX_PATTERNS: usize = 2;

/// The CDN Pro client of one account.
#[derive(Clone, Debug)]
pub struct CdnPro {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    api: Api,
    target: CdnProTarget,
    missing_timeout: Duration,
}

impl CdnPro {
    pub fn new(settings: &CdnProSettings, http: reqwest::Client) -> Result<CdnPro, ConfigError> {
        Ok(CdnPro {
            inner: Arc::new(Inner {
                api: Api::new(
                    "cdnpro",
                    &settings.endpoint,
                    &settings.auth,
                    settings.timeout,
                    http,
                )?,
                target: settings.target,
                missing_timeout: settings.missing_timeout,
            }),
        })
    }

    async fn status(&self, task: &TaskQuery) -> Result<TaskProgress, ProviderError> {
        let path = format!("/cdn/purges/{}", task.task_id);
        let reply = self.inner.api.send(Method::GET, &path, "", None).await?;
        if reply.status.as_u16() == 404 {
            let age = super::age(task.submitted_at);
            if age < self.inner.missing_timeout {
                return Ok(TaskProgress::Running);
            }
            return Ok(TaskProgress::Failed {
                reason: format!(
                    "CDN Pro does not know purge {} {:?} after it was created{}",
                    task.task_id,
                    age,
                    reply.request_note()
                ),
            });
        }
        if !reply.status.is_success() {
            return Err(classify(&reply, "GET /cdn/purges/{id}"));
        }
        let status = reply
            .body
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("");
        match status {
            "waiting" | "inprogress" => Ok(TaskProgress::Running),
            "finished" => {
                let rate = reply.body.get("successRate").and_then(|v| match v {
                    Value::Number(n) => n.as_f64(),
                    Value::String(s) => s.trim().trim_end_matches('%').parse().ok(),
                    _ => None,
                });
                match rate {
                    Some(r) if r >= 100.0 => Ok(TaskProgress::Finished { failed: Vec::new() }),
                    Some(r) => {
                        let reason = format!(
                            "CDN Pro finished purge {} with successRate {r}%; it does not say which targets failed",
                            task.task_id
                        );
                        Ok(TaskProgress::Finished {
                            failed: task
                                .targets
                                .iter()
                                .map(|t| (t.clone(), reason.clone()))
                                .collect(),
                        })
                    }
                    None => Err(ProviderError::Protocol {
                        message: format!(
                            "CDN Pro purge {} finished without a successRate{}",
                            task.task_id,
                            reply.request_note()
                        ),
                    }),
                }
            }
            other => Err(ProviderError::Protocol {
                message: format!(
                    "CDN Pro purge {} has unknown status {other:?}{}",
                    task.task_id,
                    reply.request_note()
                ),
            }),
        }
    }
}

/// The one place CDN Pro answers are classified.
fn classify(reply: &Reply, what: &str) -> ProviderError {
    let code = reply.code().unwrap_or_default();
    let message = format!("{}{}", reply.message(), reply.request_note());
    let lower = code.to_ascii_lowercase();
    // The daily budget is counted in purge tokens; running out is the quota, not a bad request
    // (an auth code such as `InvalidToken` is not about purge tokens).
    if lower.contains("quota") || lower.contains("purgetoken") {
        return ProviderError::QuotaExhausted {
            message: format!("{what}: {code}: {message}"),
        };
    }
    if reply.status.as_u16() == 413 {
        return ProviderError::BatchTooLarge {
            message: format!("{what}: {code}: {message}"),
        };
    }
    by_http_status(reply, what).unwrap_or_else(|| ProviderError::Rejected {
        code: if code.is_empty() {
            format!("HTTP {}", reply.status.as_u16())
        } else {
            code
        },
        message: format!("{what}: {message}"),
    })
}

/// The purge id at the end of `Location: .../cdn/purges/{purgeId}`.
fn purge_id(location: &str) -> Option<String> {
    let path = location.split(['?', '#']).next()?;
    let id = path.trim_end_matches('/').rsplit('/').next()?;
    (!id.is_empty() && path.contains("/cdn/purges/")).then(|| id.to_owned())
}

/// A PREFIX target as a `dirUrls` entry: everything under it.
fn dir_url(prefix: &str) -> String {
    format!("{prefix}**")
}

#[async_trait]
impl Provider for CdnPro {
    /// CDN Pro allows 300 requests per 5 minutes per user, shared half and half by submits and
    /// status reads (one `GET /cdn/purges/{id}` per task, plus the token reads): every task
    /// needs at least one status read, so confirmations keep up with submits at full rate.
    fn capabilities(&self) -> Capabilities {
        let window = Duration::from_secs(300);
        Capabilities {
            max_per_call: BTreeMap::from([
                (PurgeKind::Url, MAX_FILE_URLS),
                (PurgeKind::Prefix, MAX_DIR_URLS),
                (PurgeKind::Wildcard, MAX_DIR_URLS),
                (PurgeKind::Regex, MAX_REGEX_PATTERNS),
            ]),
            headers: true,
            tag_needs_hosts: false,
            submit_rates: vec![Rate::new(150, window)],
            status_rates: vec![Rate::new(150, window)],
            daily: Vec::new(),
            poll_batch: 1,
            kind_submit_rates: Default::default(),
        }
    }

    fn check_target(&self, kind: PurgeKind, target: &str) -> Result<(), Refused> {
        match kind {
            PurgeKind::Url => dialect::check_file_url(target),
            PurgeKind::Prefix => dialect::check_prefix(target),
            PurgeKind::Wildcard => dialect::check_wildcard(target),
            PurgeKind::Regex => dialect::check_regex(target),
            PurgeKind::Host | PurgeKind::All | PurgeKind::Tag => Ok(()),
        }
    }

    async fn submit(&self, batch: &Batch) -> Result<Submission, ProviderError> {
        let mut body = json!({
            "target": self.inner.target.as_str(),
            "action": match batch.action {
                Action::Invalidate => "invalidate",
                Action::Delete => "delete",
            },
        });
        match batch.kind {
            PurgeKind::Url => {
                body["fileUrls"] = json!(batch.targets);
                if !batch.headers.is_empty() {
                    let headers: Vec<Value> = batch
                        .headers
                        .iter()
                        .map(|(name, value)| json!({"name": name, "value": value}))
                        .collect();
                    body["fileHeaders"] = Value::Array(headers);
                }
            }
            PurgeKind::Prefix => {
                body["dirUrls"] =
                    json!(batch.targets.iter().map(|t| dir_url(t)).collect::<Vec<_>>());
            }
            PurgeKind::Wildcard => body["dirUrls"] = json!(batch.targets),
            PurgeKind::Regex => body["regexPatterns"] = json!(batch.targets),
            PurgeKind::Host | PurgeKind::All | PurgeKind::Tag => {
                return Err(ProviderError::Rejected {
                    code: "Unsupported".into(),
                    message: format!("CDN Pro cannot purge {}", batch.kind),
                });
            }
        }
        let reply = self
            .inner
            .api
            .send(Method::POST, "/cdn/purges", "", Some(&body))
            .await?;
        if !reply.status.is_success() {
            return Err(classify(&reply, "POST /cdn/purges"));
        }
        let task_id = reply
            .location
            .as_deref()
            .and_then(purge_id)
            .ok_or_else(|| ProviderError::Protocol {
                message: format!(
                    "POST /cdn/purges answered HTTP {} without a Location naming the purge{}",
                    reply.status.as_u16(),
                    reply.request_note()
                ),
            })?;
        Ok(Submission {
            task_id,
            request_id: reply.request_id,
            rejected: Vec::new(),
        })
    }

    async fn poll(
        &self,
        tasks: &[TaskQuery],
        budget: &dyn CallBudget,
    ) -> Result<Vec<(String, TaskProgress)>, ProviderError> {
        super::poll_each(tasks, budget, |task| self.status(task)).await
    }

    /// `filePurgeTokens` is the day's remainder for URL purges, `dirPurgeTokens` for PREFIX
    /// and WILDCARD (both are `dirUrls`). REGEX has no documented token count.
    async fn quota(&self) -> Result<BTreeMap<PurgeKind, KindQuota>, ProviderError> {
        let query = format!("target={}", self.inner.target.as_str());
        let reply = self
            .inner
            .api
            .send(Method::GET, "/cdn/purges/purgeTokens", &query, None)
            .await?;
        if !reply.status.is_success() {
            return Err(classify(&reply, "GET /cdn/purges/purgeTokens"));
        }
        let remaining = |name| KindQuota {
            per_call: None,
            daily: None,
            remaining: count(reply.body.get(name)),
        };
        let mut out = BTreeMap::new();
        for (kind, name) in [
            (PurgeKind::Url, "filePurgeTokens"),
            (PurgeKind::Prefix, "dirPurgeTokens"),
            (PurgeKind::Wildcard, "dirPurgeTokens"),
        ] {
            let q = remaining(name);
            if q.remaining.is_some() {
                out.insert(kind, q);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purge_id_comes_from_the_location() {
        assert_eq!(
            purge_id("https://api.cdnetworks.com/cdn/purges/abc-123").as_deref(),
            Some("abc-123")
        );
        assert_eq!(purge_id("/cdn/purges/x9/").as_deref(), Some("x9"));
        assert_eq!(purge_id("https://api.cdnetworks.com/other"), None);
    }

    #[test]
    fn answers_are_classified_once() {
        let answer = |status: u16, code: &str, credentials_proven: bool| {
            classify(
                &Reply {
                    status: reqwest::StatusCode::from_u16(status).unwrap(),
                    location: None,
                    request_id: Some("r-9".into()),
                    body: json!({"code": code, "message": "m"}),
                    credentials_proven,
                },
                "POST /cdn/purges",
            )
        };
        let class = |status: u16, code: &str| answer(status, code, false);
        // Keys that worked before: a 401 is about this signature, worth signing again.
        assert!(answer(401, "InvalidToken", true).is_retryable());
        assert!(!answer(403, "Forbidden", true).is_retryable());
        assert!(matches!(
            class(400, "PurgeTokenQuotaExceeded"),
            ProviderError::QuotaExhausted { .. }
        ));
        assert!(matches!(
            class(401, "InvalidToken"),
            ProviderError::Auth { .. }
        ));
        assert!(matches!(
            class(413, "TooLarge"),
            ProviderError::BatchTooLarge { .. }
        ));
        assert!(class(429, "TooManyRequests").is_retryable());
        assert!(class(503, "").is_retryable());
        let rejected = class(400, "InvalidRegexPattern");
        assert!(!rejected.is_retryable());
        assert!(rejected.to_string().contains("InvalidRegexPattern"));
        assert!(rejected.to_string().contains("(request r-9)"));
    }

    #[test]
    fn prefixes_become_recursive_dir_urls() {
        assert_eq!(dir_url("https://a.com/dir/"), "https://a.com/dir/**");
    }
}
