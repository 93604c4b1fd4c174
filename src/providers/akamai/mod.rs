//! Akamai Fast Purge (CCU v3): `POST /ccu/v3/{invalidate|delete}/{url|tag|cpcode}/{network}`
//! for URL, TAG and ALL (the configured CP codes) purges. v3 has no status API: a purge is done
//! at submit time + `estimatedSeconds`. `sign.rs` is EdgeGrid, `edgerc.rs` the credentials,
//! `client.rs` one signed call.

mod client;
pub mod edgerc;
pub mod sign;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{
    Batch, CallBudget, Capabilities, ItemBudget, Provider, ProviderError, Submission, TaskProgress,
    TaskQuery,
};
use crate::limiter::Rate;
use crate::model::{Action, PurgeKind};
use crate::settings::{ConfigError, SecretRef};
use client::{Client, Reply};
use edgerc::EdgeGridCredentials;

pub use client::RateLimits;

/// Which Akamai network to purge.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    Staging,
    #[default]
    Production,
}

/// `type = "akamai"` settings. Credentials from env/files, or a section of an `.edgerc` file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AkamaiSettings {
    /// The API host of the client credentials (`akab-....luna.akamaiapis.net`).
    pub host: Option<String>,
    pub client_token_env: Option<String>,
    pub client_token_file: Option<PathBuf>,
    pub client_secret_env: Option<String>,
    pub client_secret_file: Option<PathBuf>,
    pub access_token_env: Option<String>,
    pub access_token_file: Option<PathBuf>,
    pub edgerc_file: Option<PathBuf>,
    /// The `.edgerc` section; `default` when not set.
    pub edgerc_section: Option<String>,
    #[serde(default)]
    pub network: Network,
    /// What ALL purges: these CP codes.
    #[serde(default)]
    pub cp_codes: Vec<u64>,
    /// Overrides `https://{host}` (tests, proxies); the `Host` sent and signed follows it.
    pub endpoint: Option<String>,
    /// Deadline of one API call.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Largest request body Akamai accepts; a larger batch is split before it is sent.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_max_body() -> usize {
    50_000
}

/// `estimatedSeconds` when Akamai's answer lacks it, and for a purge submitted elsewhere.
const DEFAULT_ESTIMATE: Duration = Duration::from_secs(5);

/// The Fast Purge client of one API client (its account's buckets).
#[derive(Clone, Debug)]
pub struct Akamai {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    client: Client,
    network: Network,
    cp_codes: Vec<u64>,
    max_body: usize,
    /// When each purge submitted here is done (submit time + `estimatedSeconds`).
    done_at: Mutex<HashMap<String, DateTime<Utc>>>,
    /// Object bucket (`url`, `tag`, `cpcode`) -> its refill per second, as last answered.
    refills: Mutex<HashMap<&'static str, f64>>,
}

fn credentials(s: &AkamaiSettings) -> Result<EdgeGridCredentials, ConfigError> {
    let direct = s.client_token_env.is_some()
        || s.client_token_file.is_some()
        || s.client_secret_env.is_some()
        || s.client_secret_file.is_some()
        || s.access_token_env.is_some()
        || s.access_token_file.is_some();
    if let Some(file) = &s.edgerc_file {
        if direct || s.host.is_some() {
            return Err(ConfigError::Invalid(
                "akamai: set either edgerc_file (+ edgerc_section) or host with client_token_*, client_secret_*, access_token_*, not both".into(),
            ));
        }
        return edgerc::from_file(file, s.edgerc_section.as_deref().unwrap_or("default"));
    }
    if s.edgerc_section.is_some() {
        return Err(ConfigError::Invalid(
            "akamai edgerc_section needs edgerc_file".into(),
        ));
    }
    let secret = |env: &Option<String>,
                  file: &Option<PathBuf>,
                  what: &str|
     -> Result<SecretString, ConfigError> {
        SecretRef::new(env.clone(), file.clone()).resolve(what)
    };
    let host = s
        .host
        .as_deref()
        .map(edgerc::bare_host)
        .filter(|h| !h.is_empty())
        .ok_or_else(|| ConfigError::Invalid("akamai: set host (or edgerc_file)".into()))?;
    Ok(EdgeGridCredentials {
        host,
        client_token: secret(&s.client_token_env, &s.client_token_file, "client_token")?,
        client_secret: secret(&s.client_secret_env, &s.client_secret_file, "client_secret")?,
        access_token: secret(&s.access_token_env, &s.access_token_file, "access_token")?,
    })
}

impl Akamai {
    pub fn new(settings: &AkamaiSettings, http: reqwest::Client) -> Result<Akamai, ConfigError> {
        let credentials = credentials(settings)?;
        let endpoint = settings
            .endpoint
            .clone()
            .unwrap_or_else(|| format!("https://{}", credentials.host));
        let (base, host) = super::http::endpoint("akamai", &endpoint)?;
        if let Some(zero) = settings.cp_codes.iter().find(|c| **c == 0) {
            return Err(ConfigError::Invalid(format!(
                "akamai cp_codes: {zero} is not a CP code"
            )));
        }
        if settings.max_body_bytes < 100 {
            return Err(ConfigError::Invalid(format!(
                "akamai max_body_bytes: {} is too small",
                settings.max_body_bytes
            )));
        }
        Ok(Akamai {
            inner: Arc::new(Inner {
                client: Client::new(http, base, host, credentials, settings.timeout),
                network: settings.network,
                cp_codes: settings.cp_codes.clone(),
                max_body: settings.max_body_bytes,
                done_at: Mutex::new(HashMap::new()),
                refills: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The request path and body of `batch`.
    /// The object bucket a batch of `kind` is paid from.
    fn bucket(kind: PurgeKind) -> Option<&'static str> {
        match kind {
            PurgeKind::Url => Some("url"),
            PurgeKind::Tag => Some("tag"),
            PurgeKind::All => Some("cpcode"),
            _ => None,
        }
    }

    fn request(&self, batch: &Batch) -> Result<(String, Vec<u8>, usize), ProviderError> {
        let action = match batch.action {
            Action::Invalidate => "invalidate",
            Action::Delete => "delete",
        };
        let objects = match batch.kind {
            PurgeKind::All => json!(self.inner.cp_codes),
            _ => json!(batch.targets),
        };
        let Some(kind) = Akamai::bucket(batch.kind) else {
            return Err(ProviderError::Rejected {
                code: "Unsupported".into(),
                message: format!("Akamai Fast Purge cannot purge {}", batch.kind),
            });
        };
        let count = objects.as_array().map_or(0, Vec::len);
        let network = match self.inner.network {
            Network::Staging => "staging",
            Network::Production => "production",
        };
        let body = serde_json::to_vec(&json!({ "objects": objects })).map_err(|e| {
            ProviderError::Protocol {
                message: format!("cannot encode the purge body: {e}"),
            }
        })?;
        Ok((format!("/ccu/v3/{action}/{kind}/{network}"), body, count))
    }
}

/// The one place Fast Purge answers are classified (both problem shapes).
fn classify(reply: &Reply, objects: usize) -> ProviderError {
    let status = reply
        .text("httpStatus")
        .or_else(|| reply.text("status"))
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|s| *s >= 400)
        .unwrap_or(reply.status);
    let support = reply
        .text("supportId")
        .map(|id| format!(" (supportId {id})"))
        .unwrap_or_default();
    let message = format!("HTTP {status} {}{support}", reply.problem());
    match status {
        401 | 403 => ProviderError::Auth { message },
        413 => ProviderError::BatchTooLarge { message },
        429 => ProviderError::Throttled {
            retry_after: Some(
                reply
                    .retry_after
                    .unwrap_or_else(|| reply.limits.wait_for(objects)),
            ),
            message,
        },
        500..=599 => ProviderError::Transient {
            message,
            source: None,
        },
        _ => ProviderError::Rejected {
            code: format!("HTTP {status}"),
            message,
        },
    }
}

#[async_trait]
impl Provider for Akamai {
    /// The requests bucket refills 50 a second; object buckets are the account's (see the
    /// README): a 429 waits until enough tokens are back.
    fn capabilities(&self) -> Capabilities {
        let mut max_per_call = BTreeMap::from([(PurgeKind::Url, 500), (PurgeKind::Tag, 500)]);
        if !self.inner.cp_codes.is_empty() {
            max_per_call.insert(PurgeKind::All, 1);
        }
        Capabilities {
            max_per_call,
            headers: false,
            tag_needs_hosts: false,
            submit_rates: vec![Rate::new(50, Duration::from_secs(1))],
            status_rates: vec![Rate::new(50, Duration::from_secs(1))],
            daily: Vec::new(),
            poll_batch: 1000,
            kind_submit_rates: Default::default(),
        }
    }

    fn check_target(&self, kind: PurgeKind, target: &str) -> Result<(), super::Refused> {
        match kind {
            PurgeKind::Tag if target.len() > 128 => Err(super::Refused::new(format!(
                "Akamai cache tags are at most 128 characters, got {}",
                target.len()
            ))),
            _ => Ok(()),
        }
    }

    /// Once an answer gave the bucket's refill rate: the batch's objects (its targets, or the
    /// CP codes of an ALL) at that rate, so replicas sharing the account never outrun it.
    fn item_budget(&self, batch: &Batch) -> Option<ItemBudget> {
        let bucket = Akamai::bucket(batch.kind)?;
        let refill = *self
            .inner
            .refills
            .lock()
            .expect("refills lock")
            .get(bucket)?;
        let cost = match batch.kind {
            PurgeKind::All => self.inner.cp_codes.len(),
            _ => batch.targets.len(),
        };
        Some(ItemBudget {
            bucket: bucket.to_owned(),
            rate: Rate::new(1, Duration::from_secs_f64(1.0 / refill)),
            cost: cost as u32,
        })
    }

    /// A body over `max_body_bytes` is refused before sending (the dispatcher splits it).
    async fn submit(&self, batch: &Batch) -> Result<Submission, ProviderError> {
        let (path, body, objects) = self.request(batch)?;
        if body.len() > self.inner.max_body {
            return Err(ProviderError::BatchTooLarge {
                message: format!(
                    "the {} byte body of {objects} objects exceeds Akamai's {} bytes",
                    body.len(),
                    self.inner.max_body
                ),
            });
        }
        let submitted = Utc::now();
        let reply = self.inner.client.post(&path, &body).await?;
        if let (Some(bucket), Some(refill)) = (
            Akamai::bucket(batch.kind),
            reply.limits.limit_per_second_objects,
        ) && refill.is_finite()
            && refill > 0.0
        {
            self.inner
                .refills
                .lock()
                .expect("refills lock")
                .insert(bucket, refill);
        }
        if !(200..300).contains(&reply.status) {
            return Err(classify(&reply, objects));
        }
        let purge_id = reply
            .text("purgeId")
            .ok_or_else(|| ProviderError::Protocol {
                message: format!("{path} answered HTTP {} without a purgeId", reply.status),
            })?;
        let estimate = reply
            .body
            .get("estimatedSeconds")
            .and_then(Value::as_f64)
            .map_or(DEFAULT_ESTIMATE, |s| Duration::from_secs_f64(s.max(0.0)));
        let done = submitted + chrono::Duration::from_std(estimate).unwrap_or_default();
        self.inner
            .done_at
            .lock()
            .expect("done_at lock")
            .insert(purge_id.clone(), done);
        Ok(Submission {
            task_id: purge_id,
            request_id: reply.text("supportId"),
            rejected: Vec::new(),
        })
    }

    /// No call: a purge is done at its submit time + `estimatedSeconds`.
    async fn poll(
        &self,
        tasks: &[TaskQuery],
        _budget: &dyn CallBudget,
    ) -> Result<Vec<(String, TaskProgress)>, ProviderError> {
        let now = Utc::now();
        let mut done_at = self.inner.done_at.lock().expect("done_at lock");
        Ok(tasks
            .iter()
            .map(|t| {
                let done = done_at.get(&t.task_id).copied().unwrap_or_else(|| {
                    t.submitted_at
                        + chrono::Duration::from_std(DEFAULT_ESTIMATE).unwrap_or_default()
                });
                let progress = if now >= done {
                    done_at.remove(&t.task_id);
                    TaskProgress::Finished { failed: Vec::new() }
                } else {
                    TaskProgress::Running
                };
                (t.task_id.clone(), progress)
            })
            .collect())
    }
}

super::factory_from_new!(AkamaiSettings => Akamai);

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: u16, body: Value) -> Reply {
        Reply {
            status,
            body,
            limits: RateLimits::default(),
            retry_after: None,
        }
    }

    #[test]
    fn both_problem_shapes_are_classified_and_keep_the_support_id() {
        let api = |s: u16| {
            classify(
                &reply(
                    s,
                    json!({"supportId": "17PY1", "httpStatus": s, "title": "T", "detail": "D"}),
                ),
                1,
            )
        };
        let e = api(400);
        assert!(matches!(e, ProviderError::Rejected { .. }));
        assert!(e.to_string().contains("supportId 17PY1"), "{e}");
        assert!(matches!(api(403), ProviderError::Auth { .. }));
        assert!(matches!(api(413), ProviderError::BatchTooLarge { .. }));
        assert!(matches!(
            api(429),
            ProviderError::Throttled {
                retry_after: Some(_),
                ..
            }
        ));
        assert!(api(507).is_retryable());
        assert!(api(503).is_retryable());
        let auth = classify(
            &reply(
                401,
                json!({"type": "x", "title": "Not authorized", "status": 401}),
            ),
            1,
        );
        assert!(matches!(auth, ProviderError::Auth { .. }), "{auth}");
    }
}
