//! Tencent EdgeOne (teo 2022-09-01): CreatePurgeTask for URL, PREFIX, HOST, ALL and TAG purges,
//! DescribePurgeTasks for completion, DescribeContentQuota for per-call caps and daily quota.
//! `client.rs` signs, sends and classifies; `tasks.rs` maps batches and task rows.

mod api;
mod client;
mod sign;
mod tasks;

pub use sign::{SignInput, authorization, signature};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{
    Batch, CallBudget, Capabilities, KindQuota, Provider, ProviderError, Submission, TaskProgress,
    TaskQuery,
};
use crate::limiter::Rate;
use crate::model::PurgeKind;
use crate::settings::{ConfigError, SecretRef};
use client::{Client, Credentials};

/// `type = "edgeone"` settings. Credentials come from env or files only.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeOneSettings {
    pub zone_id: String,
    pub secret_id_env: Option<String>,
    pub secret_id_file: Option<PathBuf>,
    pub secret_key_env: Option<String>,
    pub secret_key_file: Option<PathBuf>,
    /// Temporary credentials' session token (`X-TC-Token`).
    pub token_env: Option<String>,
    pub token_file: Option<PathBuf>,
    /// `https://teo.tencentcloudapi.com` or `https://teo.intl.tencentcloudapi.com`.
    #[serde(default = "default_endpoint")]
    pub endpoint: String,
    /// `X-TC-Region`; EdgeOne does not need one.
    pub region: Option<String>,
    /// `X-TC-Language`, e.g. `en-US`.
    pub language: Option<String>,
    /// Deadline of one API call.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// A target of a job that DescribePurgeTasks still does not list after this long fails as
    /// unreported (instead of counting as purged). Keep it below `dispatch.task_timeout`.
    #[serde(default = "default_task_timeout", with = "humantime_serde")]
    pub task_timeout: Duration,
}

fn default_endpoint() -> String {
    "https://teo.tencentcloudapi.com".into()
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_task_timeout() -> Duration {
    Duration::from_secs(30 * 60)
}

/// The EdgeOne client of one zone.
#[derive(Clone, Debug)]
pub struct EdgeOne {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    client: Client,
    zone_id: String,
    task_timeout: Duration,
}

super::factory_from_new!(EdgeOneSettings => EdgeOne);

impl EdgeOne {
    pub fn new(settings: &EdgeOneSettings, http: reqwest::Client) -> Result<EdgeOne, ConfigError> {
        let (endpoint, host) = super::http::endpoint("edgeone", &settings.endpoint)?;
        if settings.zone_id.is_empty() {
            return Err(ConfigError::Invalid("edgeone zone_id is required".into()));
        }
        let secret = |env: &Option<String>, file: &Option<PathBuf>, what: &str| {
            SecretRef::new(env.clone(), file.clone()).resolve(what)
        };
        let token = match (&settings.token_env, &settings.token_file) {
            (None, None) => None,
            (env, file) => Some(secret(env, file, "token")?),
        };
        let credentials = Credentials {
            secret_id: secret(
                &settings.secret_id_env,
                &settings.secret_id_file,
                "secret_id",
            )?,
            secret_key: secret(
                &settings.secret_key_env,
                &settings.secret_key_file,
                "secret_key",
            )?,
            token,
        };
        let client = Client::new(
            http,
            endpoint,
            host,
            credentials,
            settings.region.clone(),
            settings.language.clone(),
            settings.timeout,
        );
        Ok(EdgeOne {
            inner: Arc::new(Inner {
                client,
                zone_id: settings.zone_id.clone(),
                task_timeout: settings.task_timeout,
            }),
        })
    }
}

#[async_trait]
impl Provider for EdgeOne {
    fn capabilities(&self) -> Capabilities {
        let per_second = vec![Rate::new(20, Duration::from_secs(1))];
        let mut max_per_call = BTreeMap::from([
            (PurgeKind::Url, 100),
            (PurgeKind::Prefix, 100),
            (PurgeKind::Host, 100),
            (PurgeKind::All, 1),
            (PurgeKind::Tag, 100),
        ]);
        // purge_all is refused for the account-wide zone `*`.
        if self.inner.zone_id == "*" {
            max_per_call.remove(&PurgeKind::All);
        }
        Capabilities {
            max_per_call,
            headers: false,
            tag_needs_hosts: true,
            submit_rates: per_second.clone(),
            status_rates: per_second,
            daily: Vec::new(),
            poll_batch: api::POLL_TASKS,
            kind_submit_rates: Default::default(),
        }
    }

    async fn submit(&self, batch: &Batch) -> Result<Submission, ProviderError> {
        self.create(batch).await
    }

    /// Targets EdgeOne has not listed yet stay running until `task_timeout`, then fail.
    async fn poll(
        &self,
        tasks: &[TaskQuery],
        budget: &dyn CallBudget,
    ) -> Result<Vec<(String, TaskProgress)>, ProviderError> {
        self.progress_of(tasks, budget).await
    }

    async fn quota(&self) -> Result<BTreeMap<PurgeKind, KindQuota>, ProviderError> {
        self.content_quota().await
    }

    fn finds_submitted(&self) -> bool {
        true
    }

    /// Credits only a job covering every target of the batch; otherwise `None`, and the whole
    /// batch is sent again.
    async fn find_submitted(
        &self,
        batch: &Batch,
        since: DateTime<Utc>,
        budget: &dyn CallBudget,
    ) -> Result<Option<Submission>, ProviderError> {
        self.lookup(batch, since, budget).await
    }
}
