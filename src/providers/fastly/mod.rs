//! Fastly (`type = "fastly"`): URL purges (`POST /purge/{host}/{path}`, one per call),
//! surrogate-key batches (`POST /service/{id}/purge`, up to 256 keys) and `purge_all`;
//! INVALIDATE is a soft purge (`Fastly-Soft-Purge: 1`). No status API: accepted is done.

mod api;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::http::{read_error, send_error};
use super::{
    Batch, CallBudget, Capabilities, Provider, ProviderError, Refused, Submission, TaskProgress,
    TaskQuery,
};
use crate::limiter::Rate;
use crate::model::{Action, PurgeKind};
use crate::settings::{ConfigError, SecretRef};

pub const DEFAULT_ENDPOINT: &str = "https://api.fastly.com";

/// Fastly's budget of non-read calls per user, which only `purge_all` counts against.
pub const PURGE_ALL_RATE: Rate = Rate::new(1_000, Duration::from_secs(3_600));

/// `type = "fastly"` settings. The token comes from env or a file only.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FastlySettings {
    pub service_id: String,
    /// An API token with the `purge_select` (and for ALL `purge_all`) scope (`Fastly-Key`).
    pub api_token_env: Option<String>,
    pub api_token_file: Option<PathBuf>,
    #[serde(default = "default_endpoint")]
    pub endpoint: String,
    /// Deadline of one API call.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_endpoint() -> String {
    DEFAULT_ENDPOINT.into()
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

/// The Fastly client of one service.
#[derive(Clone, Debug)]
pub struct Fastly {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base: url::Url,
    service_id: String,
    token: SecretString,
    timeout: Duration,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fastly")
            .field("base", &self.base.as_str())
            .field("service_id", &self.service_id)
            .finish_non_exhaustive()
    }
}

impl Fastly {
    pub fn new(settings: &FastlySettings, http: reqwest::Client) -> Result<Fastly, ConfigError> {
        let (base, _) = super::http::endpoint("fastly", &settings.endpoint)?;
        let service_id = settings.service_id.trim();
        if service_id.is_empty() || !service_id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(ConfigError::Invalid(format!(
                "fastly service_id {:?}: must be the service's non-empty alphanumeric id",
                settings.service_id
            )));
        }
        let token = SecretRef::new(
            settings.api_token_env.clone(),
            settings.api_token_file.clone(),
        )
        .resolve("fastly api_token")?;
        Ok(Fastly {
            inner: Arc::new(Inner {
                http,
                base,
                service_id: service_id.to_owned(),
                token,
                timeout: settings.timeout,
            }),
        })
    }

    async fn send(&self, batch: &Batch) -> Result<Submission, ProviderError> {
        let call = api::call(&self.inner.service_id, batch)?;
        let what = format!("POST {}", call.path);
        let mut url = self.inner.base.clone();
        let base_path = url.path().trim_end_matches('/').to_owned();
        url.set_path(&format!("{base_path}{}", call.path));
        url.set_query(call.query.as_deref());
        let mut req = self
            .inner
            .http
            .post(url)
            .timeout(self.inner.timeout)
            .header("Accept", "application/json")
            .header("Fastly-Key", self.inner.token.expose_secret());
        if call.soft {
            req = req.header("Fastly-Soft-Purge", "1");
        }
        if let Some(body) = &call.body {
            req = req.json(body);
        }
        let response = req.send().await.map_err(|e| send_error(&what, e))?;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (request_id, retry_after, remaining, reset) = (
            header("x-request-id").or_else(|| header("fastly-request-id")),
            header("retry-after"),
            header("fastly-ratelimit-remaining"),
            header("fastly-ratelimit-reset"),
        );
        let status = response.status().as_u16();
        let text = response.text().await.map_err(|e| read_error(&what, e))?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        let reply = api::Reply {
            status,
            request_id,
            retry_after,
            remaining,
            reset,
            body,
        };
        if !(200..300).contains(&status) {
            return Err(api::classify(&reply, &what));
        }
        if let Some(left) = &reply.remaining {
            tracing::debug!(remaining = %left, reset = ?reply.reset, "Fastly rate budget");
        }
        // purge_all answers no id: the request id, or a unique stand-in, names the task.
        let task_id = reply
            .purge_id(batch)
            .or_else(|| reply.request_id.clone())
            .unwrap_or_else(|| format!("fastly-{}", uuid::Uuid::now_v7()));
        Ok(Submission {
            request_id: reply.request_id.or_else(|| Some(task_id.clone())),
            task_id,
            rejected: Vec::new(),
        })
    }
}

/// Fastly's rule on actions: purge_all is always hard.
fn check_fastly_action(kind: PurgeKind, action: Action) -> Result<(), Refused> {
    match (kind, action) {
        (PurgeKind::All, Action::Invalidate) => Err(Refused::new(api::INVALIDATE_ALL)),
        _ => Ok(()),
    }
}

/// Fastly's rule on URL targets: the host and path go into the call's path.
fn check_fastly_target(kind: PurgeKind, target: &str) -> Result<(), Refused> {
    match kind {
        PurgeKind::Url => api::url_path(target).map(|_| ()),
        _ => Ok(()),
    }
}

#[async_trait]
impl Provider for Fastly {
    /// URL and key purges are not rate limited by Fastly (only purge_all counts against the
    /// hourly budget, `PURGE_ALL_RATE`); no status API, so no status budget.
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            max_per_call: BTreeMap::from([
                (PurgeKind::Url, 1),
                (PurgeKind::Tag, api::MAX_KEYS),
                (PurgeKind::All, 1),
            ]),
            headers: false,
            tag_needs_hosts: false,
            submit_rates: Vec::new(),
            status_rates: Vec::new(),
            daily: Vec::new(),
            poll_batch: 1_000,
            kind_submit_rates: BTreeMap::from([(PurgeKind::All, vec![PURGE_ALL_RATE])]),
        }
    }

    fn check_target(&self, kind: PurgeKind, target: &str) -> Result<(), Refused> {
        check_fastly_target(kind, target)
    }

    fn check_action(&self, kind: PurgeKind, action: Action) -> Result<(), Refused> {
        check_fastly_action(kind, action)
    }

    async fn submit(&self, batch: &Batch) -> Result<Submission, ProviderError> {
        self.send(batch).await
    }

    /// Accepted is done (a purge takes about 150 ms, purge_all 10-20 s): every task asked
    /// about has finished, without a call.
    async fn poll(
        &self,
        tasks: &[TaskQuery],
        _budget: &dyn CallBudget,
    ) -> Result<Vec<(String, TaskProgress)>, ProviderError> {
        Ok(super::finished_at_acceptance(tasks))
    }
}

super::factory_from_new!(FastlySettings => Fastly);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalidate_all_is_refused_naming_kind_action_and_provider() {
        let why = check_fastly_action(PurgeKind::All, Action::Invalidate).unwrap_err();
        for word in ["ALL", "INVALIDATE", "Fastly", "DELETE"] {
            assert!(why.rule.contains(word), "{}", why.rule);
        }
        assert!(check_fastly_action(PurgeKind::All, Action::Delete).is_ok());
        assert!(check_fastly_action(PurgeKind::Url, Action::Invalidate).is_ok());
        assert!(check_fastly_target(PurgeKind::Url, "not a url").is_err());
    }

    #[test]
    fn the_token_is_never_shown() {
        let path = std::env::temp_dir().join(format!("fastly-{}", uuid::Uuid::now_v7()));
        std::fs::write(&path, "fastly-secret-token").unwrap();
        let settings = FastlySettings {
            service_id: "SU1Z0isxPaozGVKXdv0eY".into(),
            api_token_env: None,
            api_token_file: Some(path.clone()),
            endpoint: DEFAULT_ENDPOINT.into(),
            timeout: default_timeout(),
        };
        let fastly = Fastly::new(&settings, reqwest::Client::new()).unwrap();
        let shown = format!("{fastly:?}");
        assert!(
            !shown.contains("fastly-secret-token") && shown.contains("SU1Z"),
            "{shown}"
        );
        let missing = FastlySettings {
            api_token_file: None,
            ..settings
        };
        let err = Fastly::new(&missing, reqwest::Client::new()).unwrap_err();
        assert!(err.to_string().contains("fastly api_token"), "{err}");
        std::fs::remove_file(path).ok();
    }
}
