//! Tencent EdgeOne (teo 2022-09-01): CreatePurgeTask for URL, PREFIX, HOST, ALL and TAG purges,
//! DescribePurgeTasks for completion, DescribeContentQuota for per-call caps and daily quota.

mod api;
mod sign;

pub use sign::{SignInput, authorization, signature};

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{
    Batch, Capabilities, KindQuota, Provider, ProviderError, Submission, TaskProgress, TaskQuery,
};
use crate::config::{ConfigError, SecretRef};
use crate::core::model::{Action, PurgeKind};
use crate::limiter::Rate;
use api::{AdvancedFilter, purge_type};

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
    pub region: Option<String>,
    /// `X-TC-Language`, e.g. `en-US`.
    pub language: Option<String>,
    /// Deadline of one API call.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_endpoint() -> String {
    "https://teo.tencentcloudapi.com".into()
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

/// Tasks one DescribePurgeTasks call covers: with at most 100 targets per task that is at most
/// 1000 rows, one page.
const POLL_TASKS: usize = 10;
const PAGE: u32 = 1000;

struct Credentials {
    secret_id: SecretString,
    secret_key: SecretString,
    token: Option<SecretString>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials { .. }")
    }
}

/// The EdgeOne client of one zone.
#[derive(Clone, Debug)]
pub struct EdgeOne {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    endpoint: url::Url,
    host: String,
    zone_id: String,
    credentials: Credentials,
    region: Option<String>,
    language: Option<String>,
    timeout: Duration,
}

impl EdgeOne {
    pub fn new(settings: &EdgeOneSettings, http: reqwest::Client) -> Result<EdgeOne, ConfigError> {
        let endpoint = url::Url::parse(&settings.endpoint).map_err(|e| {
            ConfigError::Invalid(format!("edgeone endpoint {:?}: {e}", settings.endpoint))
        })?;
        let host = match (endpoint.host_str(), endpoint.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_owned(),
            (None, _) => return Err(ConfigError::Invalid("edgeone endpoint needs a host".into())),
        };
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
        Ok(EdgeOne {
            inner: Arc::new(Inner {
                http,
                endpoint,
                host,
                zone_id: settings.zone_id.clone(),
                credentials: Credentials {
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
                },
                region: settings.region.clone(),
                language: settings.language.clone(),
                timeout: settings.timeout,
            }),
        })
    }

    /// Calls `action`, signing afresh for each attempt; a stale signature is retried once at
    /// once. Returns the `Response` object and its `RequestId`.
    async fn call<T: DeserializeOwned>(
        &self,
        action: &str,
        body: &impl Serialize,
    ) -> Result<(T, Option<String>), ProviderError> {
        let body = serde_json::to_vec(body).map_err(|e| ProviderError::Protocol {
            message: format!("cannot encode {action}: {e}"),
        })?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.call_once(action, &body).await {
                Err(ApiFailure::Api(code, message))
                    if api::is_signature_expired(&code) && attempt < 2 =>
                {
                    tracing::warn!(
                        action,
                        message,
                        "EdgeOne says the signature expired; signing again"
                    );
                }
                Err(ApiFailure::Api(code, message)) => return Err(api::classify(&code, &message)),
                Err(ApiFailure::Other(e)) => return Err(e),
                Ok((value, request_id)) => {
                    let parsed =
                        serde_json::from_value(value).map_err(|e| ProviderError::Protocol {
                            message: format!("{action} response: {e}"),
                        })?;
                    return Ok((parsed, request_id));
                }
            }
        }
    }

    async fn call_once(
        &self,
        action: &str,
        body: &[u8],
    ) -> Result<(serde_json::Value, Option<String>), ApiFailure> {
        let inner = &self.inner;
        let content_type = "application/json";
        let timestamp = Utc::now().timestamp();
        let creds = &inner.credentials;
        let auth = authorization(&SignInput {
            secret_id: creds.secret_id.expose_secret(),
            secret_key: creds.secret_key.expose_secret(),
            service: "teo",
            host: &inner.host,
            content_type,
            timestamp,
            body,
        });
        let mut req = inner
            .http
            .post(inner.endpoint.clone())
            .timeout(inner.timeout)
            .header("Content-Type", content_type)
            .header("Host", &inner.host)
            .header("X-TC-Action", action)
            .header("X-TC-Timestamp", timestamp.to_string())
            .header("X-TC-Version", api::VERSION)
            .header("Authorization", auth)
            .body(body.to_vec());
        if let Some(region) = &inner.region {
            req = req.header("X-TC-Region", region);
        }
        if let Some(token) = &creds.token {
            req = req.header("X-TC-Token", token.expose_secret());
        }
        if let Some(language) = &inner.language {
            req = req.header("X-TC-Language", language);
        }
        let response = req
            .send()
            .await
            .map_err(|e| ApiFailure::Other(transport_error(action, e)))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| ApiFailure::Other(transport_error(action, e)))?;
        if status.as_u16() == 429 {
            return Err(ApiFailure::Other(ProviderError::Throttled {
                message: format!("{action}: HTTP 429"),
                retry_after: None,
            }));
        }
        if status.is_server_error() {
            return Err(ApiFailure::Other(ProviderError::Transient {
                message: format!("{action}: HTTP {status}"),
                source: None,
            }));
        }
        let envelope: api::Envelope = serde_json::from_str(&text).map_err(|e| {
            ApiFailure::Other(ProviderError::Protocol {
                message: format!("{action}: HTTP {status}, not a Tencent Cloud response: {e}"),
            })
        })?;
        let mut response = envelope.response;
        let request_id = response
            .get("RequestId")
            .and_then(|v| v.as_str())
            .map(str::to_owned);
        if let Some(error) = response.get_mut("Error").map(serde_json::Value::take) {
            let error: api::ApiError = serde_json::from_value(error).map_err(|e| {
                ApiFailure::Other(ProviderError::Protocol {
                    message: format!("{action}: unreadable error: {e}"),
                })
            })?;
            let message = format!(
                "{} (request {})",
                error.message.unwrap_or_default(),
                request_id.as_deref().unwrap_or("?")
            );
            return Err(ApiFailure::Api(error.code, message));
        }
        Ok((response, request_id))
    }

    /// Rows of DescribePurgeTasks in a window, filtered; pages until all are read.
    async fn describe(
        &self,
        since: DateTime<Utc>,
        filters: Vec<AdvancedFilter>,
        max_pages: u32,
    ) -> Result<Vec<api::Task>, ProviderError> {
        let now = Utc::now();
        // The API accepts a window of at most 7 days.
        let start = since.max(now - chrono::Duration::days(7) + chrono::Duration::minutes(5));
        let mut rows = Vec::new();
        for page in 0..max_pages {
            let request = api::DescribePurgeTasks {
                zone_id: &self.inner.zone_id,
                start_time: start.to_rfc3339_opts(SecondsFormat::Secs, true),
                end_time: (now + chrono::Duration::minutes(1))
                    .to_rfc3339_opts(SecondsFormat::Secs, true),
                offset: page * PAGE,
                limit: PAGE,
                filters: filters
                    .iter()
                    .map(|f| AdvancedFilter {
                        name: f.name,
                        values: f.values.clone(),
                        fuzzy: false,
                    })
                    .collect(),
            };
            let (answer, _): (api::DescribePurgeTasksResponse, _) =
                self.call("DescribePurgeTasks", &request).await?;
            let got = answer.tasks.unwrap_or_default();
            let total = answer.total_count.unwrap_or(0);
            let done = got.len() < PAGE as usize || rows.len() + got.len() >= total as usize;
            rows.extend(got);
            if done {
                break;
            }
        }
        Ok(rows)
    }
}

/// An API-level error code, or an error already classified.
enum ApiFailure {
    Api(String, String),
    Other(ProviderError),
}

/// Transport failures: a connect error never reached EdgeOne; a timeout may have.
fn transport_error(action: &str, e: reqwest::Error) -> ProviderError {
    if e.is_timeout() {
        ProviderError::Ambiguous {
            message: format!("{action}: no answer within the timeout"),
        }
    } else {
        ProviderError::Transient {
            message: format!("{action}: {e}"),
            source: Some(Box::new(e)),
        }
    }
}

fn method(action: Action) -> &'static str {
    match action {
        Action::Invalidate => "invalidate",
        Action::Delete => "delete",
    }
}

/// A target's outcome from its DescribePurgeTasks row; `None` while it runs.
fn outcome(row: &api::Task) -> Option<Result<(), String>> {
    match row.status.as_str() {
        "processing" => None,
        "success" => Some(Ok(())),
        "timeout" => Some(Err("EdgeOne: the purge timed out".into())),
        other => Some(Err(format!(
            "EdgeOne: {other}: {} {}",
            row.fail_type.as_deref().unwrap_or(""),
            row.fail_message.as_deref().unwrap_or("")
        )
        .trim_end()
        .to_owned())),
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
            poll_batch: POLL_TASKS,
        }
    }

    async fn submit(&self, batch: &Batch) -> Result<Submission, ProviderError> {
        let kind = purge_type(batch.kind).ok_or_else(|| ProviderError::Rejected {
            code: "Unsupported".into(),
            message: format!("EdgeOne cannot purge {}", batch.kind),
        })?;
        let targets: &[String] = if batch.kind == PurgeKind::All {
            &[]
        } else {
            &batch.targets
        };
        let request = api::CreatePurgeTask {
            zone_id: &self.inner.zone_id,
            kind,
            method: method(batch.action),
            targets,
            cache_tag: (batch.kind == PurgeKind::Tag).then_some(api::CacheTag {
                domains: &batch.hosts,
            }),
        };
        let (answer, request_id): (api::CreatePurgeTaskResponse, _) =
            self.call("CreatePurgeTask", &request).await?;
        let task_id =
            answer
                .job_id
                .filter(|j| !j.is_empty())
                .ok_or_else(|| ProviderError::Protocol {
                    message: "CreatePurgeTask answered without a JobId".into(),
                })?;
        let rejected = answer
            .failed_list
            .unwrap_or_default()
            .into_iter()
            .flat_map(|f| {
                let reason = format!("EdgeOne refused: {}", f.reason.unwrap_or_default());
                f.targets
                    .unwrap_or_default()
                    .into_iter()
                    .map(move |t| (t, reason.clone()))
            })
            .collect();
        Ok(Submission {
            task_id,
            request_id,
            rejected,
        })
    }

    async fn poll(
        &self,
        tasks: &[TaskQuery],
    ) -> Result<Vec<(String, TaskProgress)>, ProviderError> {
        let Some(since) = tasks.iter().map(|t| t.submitted_at).min() else {
            return Ok(Vec::new());
        };
        let filter = AdvancedFilter {
            name: "job-id",
            values: tasks.iter().map(|t| t.task_id.clone()).collect(),
            fuzzy: false,
        };
        let rows = self
            .describe(since - chrono::Duration::minutes(1), vec![filter], 10)
            .await?;
        let mut by_job: HashMap<&str, Vec<&api::Task>> = HashMap::new();
        for row in &rows {
            by_job.entry(row.job_id.as_str()).or_default().push(row);
        }
        let mut out = Vec::new();
        for task in tasks {
            let Some(rows) = by_job.get(task.task_id.as_str()) else {
                continue;
            };
            let outcomes: Vec<(String, Option<Result<(), String>>)> = rows
                .iter()
                .map(|r| (r.target.clone().unwrap_or_default(), outcome(r)))
                .collect();
            if outcomes.iter().any(|(_, o)| o.is_none()) {
                out.push((task.task_id.clone(), TaskProgress::Running));
                continue;
            }
            let failed: Vec<(String, String)> = outcomes
                .into_iter()
                .filter_map(|(target, o)| match o {
                    Some(Err(reason)) => Some((target, reason)),
                    _ => None,
                })
                .map(|(target, reason)| {
                    // ALL is tracked under one implicit target.
                    let target = if task.kind == PurgeKind::All {
                        crate::core::model::WHOLE_ZONE.to_owned()
                    } else {
                        target
                    };
                    (target, reason)
                })
                .collect();
            out.push((task.task_id.clone(), TaskProgress::Finished { failed }));
        }
        Ok(out)
    }

    async fn quota(&self) -> Result<BTreeMap<PurgeKind, KindQuota>, ProviderError> {
        let request = api::DescribeContentQuota {
            zone_id: &self.inner.zone_id,
        };
        let (answer, _): (api::DescribeContentQuotaResponse, _) =
            self.call("DescribeContentQuota", &request).await?;
        Ok(answer
            .purge_quota
            .unwrap_or_default()
            .into_iter()
            .filter_map(|q| {
                let kind = api::kind_of(&q.kind)?;
                Some((
                    kind,
                    KindQuota {
                        per_call: q.batch.map(|b| b as usize),
                        daily: q.daily,
                        remaining: q.daily_available,
                    },
                ))
            })
            .collect())
    }

    async fn find_submitted(
        &self,
        batch: &Batch,
        since: DateTime<Utc>,
    ) -> Result<Option<Submission>, ProviderError> {
        let Some(kind) = purge_type(batch.kind) else {
            return Ok(None);
        };
        let mut filters = vec![AdvancedFilter {
            name: "type",
            values: vec![kind.to_owned()],
            fuzzy: false,
        }];
        if batch.kind != PurgeKind::All
            && let Some(first) = batch.targets.first()
        {
            filters.push(AdvancedFilter {
                name: "target",
                values: vec![first.clone()],
                fuzzy: false,
            });
        }
        let rows = self.describe(since, filters, 1).await?;
        // The newest job whose targets include the batch's first target.
        let newest = rows
            .iter()
            .max_by(|a, b| a.create_time.cmp(&b.create_time))
            .map(|r| r.job_id.clone());
        Ok(newest.map(|task_id| Submission {
            task_id,
            request_id: None,
            rejected: Vec::new(),
        }))
    }
}
