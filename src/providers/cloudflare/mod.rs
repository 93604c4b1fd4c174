//! Cloudflare (`type = "cloudflare"`): `zones/{zone_id}/purge_cache` (DELETE) and
//! `invalidate_cache` (INVALIDATE) for URL (with cache-key headers), PREFIX, HOST, TAG and ALL.
//! Cloudflare has no status API: a purge it accepted is done. `api.rs` holds the wire format.

mod api;

pub use api::{prefix as prefix_of, ratelimit_reset};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::http::{read_error, send_error};
use super::{
    Batch, CallBudget, Capabilities, Provider, ProviderError, Refused, Submission, TaskProgress,
    TaskQuery,
};
use crate::limiter::Rate;
use crate::model::PurgeKind;
use crate::settings::{ConfigError, SecretRef};

pub const DEFAULT_ENDPOINT: &str = "https://api.cloudflare.com/client/v4";

/// The zone's plan: it picks the documented request rate, and the URL cap of one call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Plan {
    #[default]
    Free,
    Pro,
    Business,
    Enterprise,
}

impl Plan {
    /// Purge requests allowed (per account).
    pub fn requests(self) -> Rate {
        match self {
            Plan::Free => Rate::new(5, Duration::from_secs(60)),
            Plan::Pro => Rate::new(5, Duration::from_secs(1)),
            Plan::Business => Rate::new(10, Duration::from_secs(1)),
            Plan::Enterprise => Rate::new(50, Duration::from_secs(1)),
        }
    }

    /// Single-file URLs purged per second (a moving average).
    pub fn urls_per_second(self) -> u32 {
        match self {
            Plan::Free => 800,
            Plan::Pro | Plan::Business => 1_500,
            Plan::Enterprise => 3_000,
        }
    }

    /// URLs one call may carry: 30 outside Enterprise (as reported), 500 on Enterprise; and
    /// never more than the URL rate allows at the full request rate, so `requests x cap`
    /// stays within the URLs-per-second budget whatever the mix of calls.
    pub fn url_cap(self) -> usize {
        let documented = match self {
            Plan::Enterprise => 500,
            _ => 30,
        };
        let rate = self.requests();
        let calls_per_second = (rate.count as f64 / rate.per.as_secs_f64()).max(f64::MIN_POSITIVE);
        let by_rate = (self.urls_per_second() as f64 / calls_per_second).floor() as usize;
        documented.min(by_rate.max(1))
    }
}

/// Items of other kinds one call may carry.
pub const MAX_ITEMS: usize = 100;

/// `type = "cloudflare"` settings. Secrets come from env or files only.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudflareSettings {
    pub zone_id: String,
    /// An API token with the Zone / Cache Purge permission (`Authorization: Bearer`).
    pub api_token_env: Option<String>,
    pub api_token_file: Option<PathBuf>,
    /// Legacy: the account email (`X-Auth-Email`) with the global API key (`X-Auth-Key`).
    pub email: Option<String>,
    pub api_key_env: Option<String>,
    pub api_key_file: Option<PathBuf>,
    #[serde(default)]
    pub plan: Plan,
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

enum Credentials {
    Token(SecretString),
    Legacy { email: String, key: SecretString },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Token(_) => f.write_str("Token(..)"),
            Credentials::Legacy { email, .. } => f
                .debug_struct("Legacy")
                .field("email", email)
                .finish_non_exhaustive(),
        }
    }
}

impl Credentials {
    fn resolve(s: &CloudflareSettings) -> Result<Credentials, ConfigError> {
        let token_set = s.api_token_env.is_some() || s.api_token_file.is_some();
        let key_set = s.api_key_env.is_some() || s.api_key_file.is_some();
        if !token_set && (s.email.is_some() || key_set) {
            let email = s.email.clone().filter(|e| !e.is_empty()).ok_or_else(|| {
                ConfigError::Invalid(
                    "cloudflare email: the legacy api_key_env/api_key_file needs email".into(),
                )
            })?;
            let key = SecretRef::new(s.api_key_env.clone(), s.api_key_file.clone())
                .resolve("cloudflare api_key")?;
            return Ok(Credentials::Legacy { email, key });
        }
        if s.email.is_some() || key_set {
            return Err(ConfigError::Invalid(
                "cloudflare email/api_key_env/api_key_file: set either an API token or the legacy email and key, not both".into(),
            ));
        }
        SecretRef::new(s.api_token_env.clone(), s.api_token_file.clone())
            .resolve("cloudflare api_token")
            .map(Credentials::Token)
    }
}

/// The Cloudflare client of one zone.
#[derive(Clone, Debug)]
pub struct Cloudflare {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    base: url::Url,
    zone_id: String,
    plan: Plan,
    credentials: Credentials,
    timeout: Duration,
}

impl Cloudflare {
    pub fn new(
        settings: &CloudflareSettings,
        http: reqwest::Client,
    ) -> Result<Cloudflare, ConfigError> {
        let (base, _) = super::http::endpoint("cloudflare", &settings.endpoint)?;
        let zone_id = settings.zone_id.trim();
        if zone_id.is_empty() || !zone_id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(ConfigError::Invalid(format!(
                "cloudflare zone_id {:?}: must be the zone's non-empty alphanumeric id",
                settings.zone_id
            )));
        }
        Ok(Cloudflare {
            inner: Arc::new(Inner {
                http,
                base,
                zone_id: zone_id.to_owned(),
                plan: settings.plan,
                credentials: Credentials::resolve(settings)?,
                timeout: settings.timeout,
            }),
        })
    }

    /// One purge call: sent, read and classified.
    async fn send(&self, batch: &Batch) -> Result<Submission, ProviderError> {
        let body = api::body(batch)?;
        let path = format!(
            "zones/{}/{}",
            self.inner.zone_id,
            api::action_path(batch.action)
        );
        let what = format!("POST {path}");
        let mut url = self.inner.base.clone();
        let base_path = url.path().trim_end_matches('/').to_owned();
        url.set_path(&format!("{base_path}/{path}"));
        let mut req = self
            .inner
            .http
            .post(url)
            .timeout(self.inner.timeout)
            .json(&body);
        req = match &self.inner.credentials {
            Credentials::Token(token) => req.bearer_auth(token.expose_secret()),
            Credentials::Legacy { email, key } => req
                .header("X-Auth-Email", email)
                .header("X-Auth-Key", key.expose_secret()),
        };
        let response = req.send().await.map_err(|e| send_error(&what, e))?;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (ray, retry_after, ratelimit, ratelimit_policy) = (
            header("cf-ray"),
            header("retry-after"),
            header("ratelimit"),
            header("ratelimit-policy"),
        );
        let status = response.status().as_u16();
        let text = response.text().await.map_err(|e| read_error(&what, e))?;
        let (envelope, raw) = match serde_json::from_str::<api::Envelope>(&text) {
            Ok(envelope) => (envelope, None),
            Err(_) => (api::Envelope::default(), Some(text)),
        };
        let reply = api::Reply {
            status,
            ray,
            retry_after,
            ratelimit,
            ratelimit_policy,
            envelope,
            raw,
        };
        if !(200..300).contains(&status) {
            return Err(api::classify(&reply, &what));
        }
        if !reply.envelope.success {
            return Err(ProviderError::Protocol {
                message: format!(
                    "{what}: HTTP {status} without success: {}",
                    reply.raw.as_deref().unwrap_or("success is false")
                ),
            });
        }
        // The result id names the zone, not the purge: the ray (one per call) keeps task ids
        // apart; a unique id stands in when a proxy drops the ray.
        let task_id = reply
            .ray
            .clone()
            .unwrap_or_else(|| format!("cf-{}", uuid::Uuid::now_v7()));
        Ok(Submission {
            task_id,
            request_id: reply.ray,
            rejected: Vec::new(),
        })
    }
}

/// Cloudflare's rules for one target, beyond the service's own: tags of at most 1,024
/// characters, prefixes without query or fragment.
fn check_cloudflare_target(kind: PurgeKind, target: &str) -> Result<(), Refused> {
    match kind {
        PurgeKind::Tag if target.chars().count() > api::MAX_TAG_LEN => Err(Refused::new(format!(
            "a Cloudflare cache tag has at most {} characters",
            api::MAX_TAG_LEN
        ))),
        PurgeKind::Prefix => api::prefix(target).map(|_| ()),
        _ => Ok(()),
    }
}

#[async_trait]
impl Provider for Cloudflare {
    /// One request budget per plan; no status API, so no status budget.
    fn capabilities(&self) -> Capabilities {
        let plan = self.inner.plan;
        Capabilities {
            max_per_call: BTreeMap::from([
                (PurgeKind::Url, plan.url_cap()),
                (PurgeKind::Prefix, MAX_ITEMS),
                (PurgeKind::Host, MAX_ITEMS),
                (PurgeKind::Tag, MAX_ITEMS),
                (PurgeKind::All, 1),
            ]),
            headers: true,
            tag_needs_hosts: false,
            submit_rates: vec![plan.requests()],
            status_rates: Vec::new(),
            daily: Vec::new(),
            poll_batch: 1_000,
            kind_submit_rates: Default::default(),
        }
    }

    fn check_target(&self, kind: PurgeKind, target: &str) -> Result<(), Refused> {
        check_cloudflare_target(kind, target)
    }

    async fn submit(&self, batch: &Batch) -> Result<Submission, ProviderError> {
        self.send(batch).await
    }

    /// Accepted is done: every task asked about has finished, without a call.
    async fn poll(
        &self,
        tasks: &[TaskQuery],
        _budget: &dyn CallBudget,
    ) -> Result<Vec<(String, TaskProgress)>, ProviderError> {
        Ok(super::finished_at_acceptance(tasks))
    }
}

super::factory_from_new!(CloudflareSettings => Cloudflare);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_pick_rates_and_a_url_cap_the_url_rate_allows() {
        assert_eq!(Plan::Free.url_cap(), 30);
        assert_eq!(Plan::Business.url_cap(), 30);
        // 50 calls/s x 60 URLs = the 3,000 URLs/s of Enterprise.
        assert_eq!(Plan::Enterprise.url_cap(), 60);
        assert_eq!(Plan::Pro.requests(), Rate::new(5, Duration::from_secs(1)));
    }

    #[test]
    fn credentials_are_one_scheme_and_never_shown() {
        let dir = tempfile_dir();
        let file = dir.join("token");
        std::fs::write(&file, "very-secret-token\n").unwrap();
        let base = CloudflareSettings {
            zone_id: "023e105f4ecef8ad9ca31a8372d0c353".into(),
            api_token_env: None,
            api_token_file: Some(file.clone()),
            email: None,
            api_key_env: None,
            api_key_file: None,
            plan: Plan::Pro,
            endpoint: DEFAULT_ENDPOINT.into(),
            timeout: default_timeout(),
        };
        let cf = Cloudflare::new(&base, reqwest::Client::new()).unwrap();
        assert!(!format!("{cf:?}").contains("very-secret-token"));
        let both = CloudflareSettings {
            email: Some("a@b.c".into()),
            ..base.clone()
        };
        let err = Cloudflare::new(&both, reqwest::Client::new()).unwrap_err();
        assert!(err.to_string().contains("not both"), "{err}");
        let legacy = CloudflareSettings {
            api_token_file: None,
            api_key_file: Some(file),
            ..base.clone()
        };
        let err = Cloudflare::new(&legacy, reqwest::Client::new()).unwrap_err();
        assert!(err.to_string().contains("needs email"), "{err}");
        let bad_zone = CloudflareSettings {
            zone_id: "".into(),
            ..base
        };
        let err = Cloudflare::new(&bad_zone, reqwest::Client::new()).unwrap_err();
        assert!(err.to_string().contains("zone_id"), "{err}");
        std::fs::remove_dir_all(dir).ok();
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("cf-test-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn tags_and_prefixes_follow_cloudflare_rules() {
        assert!(check_cloudflare_target(PurgeKind::Tag, &"t".repeat(1024)).is_ok());
        assert!(check_cloudflare_target(PurgeKind::Tag, &"t".repeat(1025)).is_err());
        assert!(check_cloudflare_target(PurgeKind::Prefix, "https://a.com/d/?x").is_err());
        assert!(check_cloudflare_target(PurgeKind::Prefix, "https://a.com/d/").is_ok());
    }
}
