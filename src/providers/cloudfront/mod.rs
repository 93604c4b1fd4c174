//! AWS CloudFront: CreateInvalidation for URL, PREFIX, WILDCARD, ALL and TAG purges (as
//! paths), GetInvalidation for completion. `sign.rs` is SigV4, `credentials.rs` static keys or
//! STS web identity, `client.rs` one signed call, `api.rs` the XML, `targets.rs` the paths.

mod api;
mod client;
mod credentials;
pub mod sign;
mod targets;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::Method;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use super::{
    Batch, CallBudget, Capabilities, Provider, ProviderError, Submission, TaskProgress, TaskQuery,
};
use crate::limiter::Rate;
use crate::model::PurgeKind;
use crate::settings::{ConfigError, SecretRef};
use client::{Client, Failure};
use credentials::{Credentials, Keys, WebIdentity};
use targets::References;

/// `type = "cloudfront"` settings. Keys come from env or files, or from STS with the pod's
/// web identity token.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudFrontSettings {
    pub distribution_id: String,
    /// The distribution's host names: a URL target must be on one of them.
    pub hosts: Vec<String>,
    /// Whether the distribution has a cache tag header configured (TAG purges as `#tag`).
    #[serde(default)]
    pub tags: bool,
    pub access_key_id_env: Option<String>,
    pub access_key_id_file: Option<PathBuf>,
    pub secret_access_key_env: Option<String>,
    pub secret_access_key_file: Option<PathBuf>,
    /// Temporary static credentials' session token.
    pub session_token_env: Option<String>,
    /// Web identity: the role to assume with the token in `web_identity_token_file`.
    pub role_arn: Option<String>,
    pub web_identity_token_file: Option<PathBuf>,
    #[serde(default = "default_sts_endpoint")]
    pub sts_endpoint: String,
    #[serde(default = "default_endpoint")]
    pub endpoint: String,
    /// Deadline of one API call.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// How long to wait after `TooManyInvalidationsInProgress` before sending again.
    #[serde(default = "default_busy_wait", with = "humantime_serde")]
    pub busy_wait: Duration,
}

fn default_endpoint() -> String {
    "https://cloudfront.amazonaws.com".into()
}

fn default_sts_endpoint() -> String {
    "https://sts.amazonaws.com".into()
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_busy_wait() -> Duration {
    Duration::from_secs(20)
}

/// In progress at once per distribution: file paths, and wildcard paths (`/*` and tags too).
pub const MAX_FILE_PATHS: usize = 3000;
pub const MAX_WILDCARD_PATHS: usize = 15;

/// The CloudFront client of one distribution.
#[derive(Clone, Debug)]
pub struct CloudFront {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    client: Client,
    distribution_id: String,
    hosts: Vec<String>,
    tags: bool,
    busy_wait: Duration,
    references: References,
}

fn credentials(s: &CloudFrontSettings, http: &reqwest::Client) -> Result<Credentials, ConfigError> {
    let static_set = s.access_key_id_env.is_some()
        || s.access_key_id_file.is_some()
        || s.secret_access_key_env.is_some()
        || s.secret_access_key_file.is_some();
    match (&s.role_arn, &s.web_identity_token_file) {
        (Some(role), Some(file)) => {
            if static_set || s.session_token_env.is_some() {
                return Err(ConfigError::Invalid(
                    "cloudfront: set either access_key_id_*/secret_access_key_* or role_arn + web_identity_token_file, not both".into(),
                ));
            }
            let (sts, _) = super::http::endpoint("cloudfront sts", &s.sts_endpoint)?;
            Ok(Credentials::WebIdentity(Box::new(WebIdentity::new(
                http.clone(),
                sts,
                role.clone(),
                file.clone(),
                s.timeout,
            ))))
        }
        (Some(_), None) => Err(ConfigError::Invalid(
            "cloudfront role_arn needs web_identity_token_file".into(),
        )),
        (None, Some(_)) => Err(ConfigError::Invalid(
            "cloudfront web_identity_token_file needs role_arn".into(),
        )),
        (None, None) => {
            let secret = |env: &Option<String>, file: &Option<PathBuf>, what: &str| {
                SecretRef::new(env.clone(), file.clone()).resolve(what)
            };
            let session_token: Option<SecretString> = match &s.session_token_env {
                Some(var) => {
                    Some(SecretRef::new(Some(var.clone()), None).resolve("session_token")?)
                }
                None => None,
            };
            Ok(Credentials::Static(Keys {
                access_key_id: secret(
                    &s.access_key_id_env,
                    &s.access_key_id_file,
                    "access_key_id",
                )?,
                secret_access_key: secret(
                    &s.secret_access_key_env,
                    &s.secret_access_key_file,
                    "secret_access_key",
                )?,
                session_token,
            }))
        }
    }
}

impl CloudFront {
    pub fn new(
        settings: &CloudFrontSettings,
        http: reqwest::Client,
    ) -> Result<CloudFront, ConfigError> {
        let (base, host) = super::http::endpoint("cloudfront", &settings.endpoint)?;
        let id = &settings.distribution_id;
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(ConfigError::Invalid(format!(
                "cloudfront distribution_id {id:?}: letters and digits, e.g. EDFDVBD6EXAMPLE"
            )));
        }
        if settings.hosts.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "cloudfront distribution {id}: hosts must list its host names (aliases and the *.cloudfront.net name)"
            )));
        }
        if let Some(bad) = settings
            .hosts
            .iter()
            .find(|h| h.is_empty() || h.contains(['/', ':', ' ']))
        {
            return Err(ConfigError::Invalid(format!(
                "cloudfront hosts: {bad:?} is not a host name"
            )));
        }
        let credentials = credentials(settings, &http)?;
        Ok(CloudFront {
            inner: Arc::new(Inner {
                client: Client {
                    http,
                    base,
                    host,
                    credentials,
                    timeout: settings.timeout,
                },
                distribution_id: id.clone(),
                hosts: settings
                    .hosts
                    .iter()
                    .map(|h| h.to_ascii_lowercase())
                    .collect(),
                tags: settings.tags,
                busy_wait: settings.busy_wait,
                references: References::default(),
            }),
        })
    }

    fn path_of(&self, kind: PurgeKind, target: &str) -> Result<String, super::Refused> {
        targets::path_of(kind, target, &self.inner.hosts, &self.inner.distribution_id)
    }

    fn classify(&self, failure: Failure) -> ProviderError {
        match failure {
            Failure::Api {
                status,
                code,
                message,
            } => api::classify(status, &code, &message, self.inner.busy_wait),
            Failure::Other(e) => e,
        }
    }

    async fn status(&self, task: &TaskQuery) -> Result<TaskProgress, ProviderError> {
        let path = format!(
            "/{}/distribution/{}/invalidation/{}",
            api::VERSION,
            self.inner.distribution_id,
            task.task_id
        );
        match self.inner.client.send(Method::GET, &path, None).await {
            Ok(reply) => {
                let inv: api::Invalidation = api::parse("GetInvalidation", &reply.text)?;
                Ok(match inv.status.as_str() {
                    "Completed" => TaskProgress::Finished { failed: Vec::new() },
                    _ => TaskProgress::Running,
                })
            }
            Err(Failure::Api { code, message, .. }) if code == "NoSuchInvalidation" => {
                Ok(TaskProgress::Failed {
                    reason: format!(
                        "CloudFront does not know invalidation {}: {message}",
                        task.task_id
                    ),
                })
            }
            Err(f) => Err(self.classify(f)),
        }
    }
}

#[async_trait]
impl Provider for CloudFront {
    /// CloudFront publishes no call rate; a conservative one (override with `limits`). The
    /// per-call caps are the in-progress caps, so one call never exceeds them alone.
    fn capabilities(&self) -> Capabilities {
        let mut max_per_call = BTreeMap::from([
            (PurgeKind::Url, MAX_FILE_PATHS),
            (PurgeKind::Prefix, MAX_WILDCARD_PATHS),
            (PurgeKind::Wildcard, MAX_WILDCARD_PATHS),
            (PurgeKind::All, 1),
        ]);
        if self.inner.tags {
            max_per_call.insert(PurgeKind::Tag, MAX_WILDCARD_PATHS);
        }
        Capabilities {
            max_per_call,
            headers: false,
            tag_needs_hosts: false,
            submit_rates: vec![Rate::new(5, Duration::from_secs(1))],
            status_rates: vec![Rate::new(5, Duration::from_secs(1))],
            daily: Vec::new(),
            poll_batch: 1,
            kind_submit_rates: Default::default(),
        }
    }

    /// Kinds CloudFront lacks are refused by the kind check, not per target.
    fn check_target(&self, kind: PurgeKind, target: &str) -> Result<(), super::Refused> {
        match kind {
            PurgeKind::Host | PurgeKind::Regex => Ok(()),
            PurgeKind::Tag if !self.inner.tags => Ok(()),
            _ => self.path_of(kind, target).map(|_| ()),
        }
    }

    async fn submit(&self, batch: &Batch) -> Result<Submission, ProviderError> {
        let mut paths = if batch.kind == PurgeKind::All {
            vec!["/*".to_owned()]
        } else {
            batch
                .targets
                .iter()
                .map(|t| self.path_of(batch.kind, t))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|refused| ProviderError::Rejected {
                    code: "InvalidTarget".into(),
                    message: refused.rule,
                })?
        };
        paths.sort();
        paths.dedup();
        let refs = &self.inner.references;
        let identity = References::identity(&self.inner.distribution_id, &batch.id);
        let reference = refs.reference(&identity);
        let body = api::invalidation_batch(&paths, &reference);
        let path = format!(
            "/{}/distribution/{}/invalidation",
            api::VERSION,
            self.inner.distribution_id
        );
        match self
            .inner
            .client
            .send(Method::POST, &path, Some(&body))
            .await
        {
            Ok(reply) => {
                let inv: api::Invalidation = api::parse("CreateInvalidation", &reply.text)?;
                tracing::debug!(status = reply.status, invalidation = %inv.id, reference, "invalidation created");
                Ok(Submission {
                    task_id: inv.id,
                    request_id: reply.request_id,
                    rejected: Vec::new(),
                })
            }
            Err(Failure::Api { code, message, .. })
                if api::is_reference_conflict(&code, &message) =>
            {
                // The reference names another batch: the next send takes a new one.
                refs.renew(&identity);
                Err(ProviderError::Transient {
                    message: format!(
                        "caller reference {reference} was used for other paths ({code}); sending again under a new one"
                    ),
                    source: None,
                })
            }
            Err(failure) => {
                // May have reached CloudFront, or will be sent again: the reference stays.
                Err(self.classify(failure))
            }
        }
    }

    async fn poll(
        &self,
        tasks: &[TaskQuery],
        budget: &dyn CallBudget,
    ) -> Result<Vec<(String, TaskProgress)>, ProviderError> {
        let mut out = Vec::with_capacity(tasks.len());
        for (i, task) in tasks.iter().enumerate() {
            if i > 0 && budget.acquire().await.is_err() {
                break;
            }
            match self.status(task).await {
                Ok(progress) => out.push((task.task_id.clone(), progress)),
                Err(e) if out.is_empty() => return Err(e),
                Err(_) => break,
            }
        }
        Ok(out)
    }
}

super::factory_from_new!(CloudFrontSettings => CloudFront);
