//! CDNetworks Content Management: URL and PREFIX purges through `/ccm/purge/ItemIdReceiver`,
//! REGEX through `/api/content/regular-url/purge`, completion through `/ccm/purge/ItemIdQuery`
//! (per item id), quota through `/ccm/purge/quota`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{
    Api, AuthSettings, Reply, by_http_status, count, default_endpoint, default_missing_timeout,
    default_timeout, field, scalar,
};
use crate::limiter::Rate;
use crate::model::{Action, PurgeKind};
use crate::providers::Refused;
use crate::providers::{
    Batch, CallBudget, Capabilities, DailyQuota, KindQuota, Provider, ProviderError, Submission,
    TaskProgress, TaskQuery,
};
use crate::settings::ConfigError;

/// `type = "cdnetworks"` settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContentSettings {
    pub auth: AuthSettings,
    #[serde(default = "default_endpoint")]
    pub endpoint: String,
    /// Deadline of one API call.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// A target ItemIdQuery does not report is still given this long before it fails.
    #[serde(default = "default_missing_timeout", with = "humantime_serde")]
    pub missing_timeout: Duration,
    /// How long to wait before sending again after `RepeatUrlRegular` (the same regex is
    /// still running); the documentation says a minute.
    #[serde(default = "default_repeat_retry", with = "humantime_serde")]
    pub repeat_retry: Duration,
}

fn default_repeat_retry() -> Duration {
    Duration::from_secs(60)
}

const MAX_PER_CALL: usize = 500;
const MAX_REGEX_LEN: usize = 2000;
const REGEX_PER_DAY: u64 = 500;
const UTC_PLUS_8: i32 = 8 * 3600;

/// Why a PREFIX+DELETE refusal most likely happened, added to its message.
const DIR_DELETE_OFF: &str = "directory DELETE is off by default on Content Management \
accounts (CDNetworks support enables it on request); send PREFIX purges as INVALIDATE, \
or ask support to enable directory delete";

const REGEX_ONLY_EXPIRES: &str = "Content Management regex purges only expire; use INVALIDATE";

const RECEIVER: &str = "/ccm/purge/ItemIdReceiver";
const REGEX: &str = "/api/content/regular-url/purge";
const QUERY: &str = "/ccm/purge/ItemIdQuery";
const QUOTA: &str = "/ccm/purge/quota";

/// Rows per ItemIdQuery page: the documented default (no larger size is documented).
const PAGE_SIZE: u64 = 20;
/// Pages read at most for one item: 500 targets per call fit in 25 pages of 20.
const MAX_PAGES: u64 = MAX_PER_CALL as u64 / PAGE_SIZE + 1;

/// The Content Management client of one account.
#[derive(Clone, Debug)]
pub struct ContentManagement {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    api: Api,
    missing_timeout: Duration,
    repeat_retry: Duration,
}

impl ContentManagement {
    pub fn new(
        settings: &ContentSettings,
        http: reqwest::Client,
    ) -> Result<ContentManagement, ConfigError> {
        Ok(ContentManagement {
            inner: Arc::new(Inner {
                api: Api::new(
                    "cdnetworks",
                    &settings.endpoint,
                    &settings.auth,
                    settings.timeout,
                    http,
                )?,
                missing_timeout: settings.missing_timeout,
                repeat_retry: settings.repeat_retry,
            }),
        })
    }

    /// The one place Content Management error answers are classified.
    fn classify(&self, reply: &Reply, what: &str) -> ProviderError {
        let code = reply.code().unwrap_or_default();
        let message = format!(
            "{what}: {code}: {}{}",
            reply.message(),
            reply.request_note()
        );
        match code.as_str() {
            "NumberOutOfLimit" => ProviderError::QuotaExhausted { message },
            // Part of the batch is over the day's quota, or the batch is over the cap: split.
            "NumberPartlyOutOfLimit" | "OnceSubmitLessThan500" => {
                ProviderError::BatchTooLarge { message }
            }
            "RepeatUrlRegular" => ProviderError::Busy {
                message,
                retry_after: Some(self.inner.repeat_retry),
            },
            "SystemException" => ProviderError::Transient {
                message,
                source: None,
            },
            "UserNameInvalid" | "UserNotAllowedPush" => ProviderError::Auth { message },
            _ => by_http_status(reply, what).unwrap_or_else(|| ProviderError::Rejected {
                code: if code.is_empty() {
                    format!("HTTP {}", reply.status.as_u16())
                } else {
                    code.clone()
                },
                message,
            }),
        }
    }

    /// Sends a purge and reads its `itemId`; `success` says which `Code` means success.
    async fn purge(
        &self,
        path: &str,
        body: &Value,
        success: fn(&str) -> bool,
    ) -> Result<Submission, ProviderError> {
        let reply = self
            .inner
            .api
            .send(Method::POST, path, "", Some(body))
            .await?;
        let code = reply.code();
        if !reply.status.is_success() || !code.as_deref().is_some_and(success) {
            return Err(self.classify(&reply, path));
        }
        let task_id = field(&reply.body, &["itemId", "ItemId"])
            .and_then(scalar)
            .filter(|id| !id.is_empty())
            .ok_or_else(|| ProviderError::Protocol {
                message: format!("{path} answered without an itemId{}", reply.request_note()),
            })?;
        Ok(Submission {
            task_id,
            request_id: reply.request_id,
            rejected: Vec::new(),
        })
    }

    /// Reads every page of ItemIdQuery for `task`: the first page is the call the dispatcher
    /// paid for, every further page is paid from `budget`.
    async fn status(
        &self,
        task: &TaskQuery,
        budget: &dyn CallBudget,
    ) -> Result<TaskProgress, ProviderError> {
        let mut rows: Vec<Value> = Vec::new();
        let mut page = 1u64;
        loop {
            if page > 1 {
                budget.acquire().await?;
            }
            let body = json!({"itemId": task.task_id, "pageNo": page, "pageSize": PAGE_SIZE});
            let reply = self
                .inner
                .api
                .send(Method::POST, QUERY, "", Some(&body))
                .await?;
            let detail = reply.body.get("resultDetail");
            if !reply.status.is_success()
                || detail.is_none() && reply.code().is_some_and(|c| c != "1")
            {
                return Err(self.classify(&reply, QUERY));
            }
            let got = detail
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let empty = got.is_empty();
            rows.extend(got);
            // `count` is the total number of rows; without it, one page is all there is.
            let total = count(reply.body.get("count")).unwrap_or(0);
            if empty || rows.len() as u64 >= total || page >= MAX_PAGES {
                break;
            }
            page += 1;
        }
        // The newest row per url wins; unknown statuses count as still running.
        let mut by_url: HashMap<String, (String, String)> = HashMap::new();
        for row in &rows {
            let Some(url) = row.get("url").and_then(scalar) else {
                continue;
            };
            let status = row.get("status").and_then(scalar).unwrap_or_default();
            let rate = row.get("rate").and_then(scalar).unwrap_or_default();
            by_url.insert(url, (status, rate));
        }
        let mut failed = Vec::new();
        let mut missing = Vec::new();
        for target in &task.targets {
            match by_url.get(target).map(|(s, r)| (s.as_str(), r)) {
                Some(("success", _)) => {}
                Some(("failure", rate)) => failed.push((
                    target.clone(),
                    format!(
                        "Content Management: item {} failed at {rate}%",
                        task.task_id
                    ),
                )),
                Some(_) => return Ok(TaskProgress::Running),
                None => missing.push(target),
            }
        }
        if !missing.is_empty() {
            let age = super::age(task.submitted_at);
            if age < self.inner.missing_timeout {
                return Ok(TaskProgress::Running);
            }
            let reason = format!(
                "Content Management did not report this target in item {} within {:?}",
                task.task_id, self.inner.missing_timeout
            );
            failed.extend(missing.into_iter().map(|t| (t.clone(), reason.clone())));
        }
        Ok(TaskProgress::Finished { failed })
    }
}

fn is_int_success(code: &str) -> bool {
    code == "1"
}

fn is_word_success(code: &str) -> bool {
    code.eq_ignore_ascii_case("success")
}

#[async_trait]
impl Provider for ContentManagement {
    /// Both purge endpoints allow 10 calls per 5 minutes; they are held to 10 together, which
    /// is safe whether the provider counts them apart or together. ItemIdQuery's budget is
    /// undocumented: one call per second is assumed.
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            max_per_call: BTreeMap::from([
                (PurgeKind::Url, MAX_PER_CALL),
                (PurgeKind::Prefix, MAX_PER_CALL),
                (PurgeKind::Regex, MAX_PER_CALL),
            ]),
            headers: false,
            tag_needs_hosts: false,
            submit_rates: vec![Rate::new(10, Duration::from_secs(300))],
            status_rates: vec![Rate::new(1, Duration::from_secs(1))],
            daily: vec![DailyQuota {
                kinds: vec![PurgeKind::Regex],
                max: REGEX_PER_DAY,
                utc_offset_secs: UTC_PLUS_8,
            }],
            poll_batch: 1,
            kind_submit_rates: Default::default(),
        }
    }

    fn check_target(&self, kind: PurgeKind, target: &str) -> Result<(), Refused> {
        match kind {
            PurgeKind::Prefix if !target.ends_with('/') => Err(Refused::new(
                "Content Management purges directories: a PREFIX target must end with `/`",
            )),
            PurgeKind::Regex if target.chars().count() > MAX_REGEX_LEN => {
                Err(Refused::new(format!(
                    "Content Management takes regexes of at most {MAX_REGEX_LEN} characters, this has {}",
                    target.chars().count()
                )))
            }
            _ => Ok(()),
        }
    }

    fn check_action(&self, kind: PurgeKind, action: Action) -> Result<(), Refused> {
        match (kind, action) {
            (PurgeKind::Regex, Action::Delete) => Err(Refused::new(REGEX_ONLY_EXPIRES)),
            _ => Ok(()),
        }
    }

    async fn submit(&self, batch: &Batch) -> Result<Submission, ProviderError> {
        self.check_action(batch.kind, batch.action)
            .map_err(|refused| ProviderError::Rejected {
                code: "Unsupported".into(),
                message: refused.rule,
            })?;
        let action = match batch.action {
            Action::Invalidate => "expire",
            Action::Delete => "delete",
        };
        match batch.kind {
            PurgeKind::Url => {
                let body = json!({"urls": batch.targets, "urlAction": action});
                self.purge(RECEIVER, &body, is_int_success).await
            }
            PurgeKind::Prefix => {
                let body = json!({"dirs": batch.targets, "dirAction": action});
                let sent = self.purge(RECEIVER, &body, is_int_success).await;
                match (batch.action, sent) {
                    (Action::Delete, Err(ProviderError::Rejected { code, message })) => {
                        Err(ProviderError::Rejected {
                            code,
                            message: format!("{message}; {DIR_DELETE_OFF}"),
                        })
                    }
                    (_, sent) => sent,
                }
            }
            PurgeKind::Regex => {
                let body = json!({"urlRegulars": batch.targets});
                self.purge(REGEX, &body, is_word_success).await
            }
            PurgeKind::Host | PurgeKind::All | PurgeKind::Tag | PurgeKind::Wildcard => {
                Err(ProviderError::Rejected {
                    code: "Unsupported".into(),
                    message: format!("Content Management cannot purge {}", batch.kind),
                })
            }
        }
    }

    async fn poll(
        &self,
        tasks: &[TaskQuery],
        budget: &dyn CallBudget,
    ) -> Result<Vec<(String, TaskProgress)>, ProviderError> {
        super::poll_each(tasks, budget, |task| self.status(task, budget)).await
    }

    async fn quota(&self) -> Result<BTreeMap<PurgeKind, KindQuota>, ProviderError> {
        let reply = self
            .inner
            .api
            .send(Method::POST, QUOTA, "", Some(&json!({})))
            .await?;
        // Here `code` 0 means success, the opposite of the purge calls.
        if !reply.status.is_success() || reply.code().is_some_and(|c| c != "0") {
            return Err(self.classify(&reply, QUOTA));
        }
        let b = &reply.body;
        let mut out = BTreeMap::new();
        for (kind, total, left) in [
            (PurgeKind::Url, "urlQuota", "remainingUrlQuota"),
            (PurgeKind::Prefix, "dirQuota", "remainingDirQuota"),
            (PurgeKind::Regex, "regexQuota", "remainingRegexQuota"),
        ] {
            let q = KindQuota {
                per_call: None,
                daily: count(b.get(total)),
                remaining: count(b.get(left)),
            };
            if q.daily.is_some() || q.remaining.is_some() {
                out.insert(kind, q);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> (ContentManagement, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, "k").unwrap();
        let settings: ContentSettings = toml::from_str(&format!(
            "repeat_retry = \"5s\"\n[auth]\nscheme = \"api_key\"\nusername = \"u\"\napi_key_file = {key:?}\n"
        ))
        .unwrap();
        (
            ContentManagement::new(&settings, reqwest::Client::new()).unwrap(),
            dir,
        )
    }

    fn reply(status: u16, body: Value) -> Reply {
        Reply {
            status: reqwest::StatusCode::from_u16(status).unwrap(),
            location: None,
            request_id: Some("r-1".into()),
            body,
            credentials_proven: false,
        }
    }

    #[test]
    fn each_documented_code_has_its_class() {
        let (cm, _dir) = client();
        let class = |status, code: Value| {
            let e = cm.classify(&reply(status, json!({"Code": code, "Message": "m"})), REGEX);
            assert!(e.to_string().contains("(request r-1)"), "{e}");
            e
        };
        assert!(matches!(
            class(400, json!("NumberOutOfLimit")),
            ProviderError::QuotaExhausted { .. }
        ));
        for code in ["NumberPartlyOutOfLimit", "OnceSubmitLessThan500"] {
            assert!(matches!(
                class(400, json!(code)),
                ProviderError::BatchTooLarge { .. }
            ));
        }
        let busy = class(400, json!("RepeatUrlRegular"));
        assert!(busy.is_retryable());
        assert_eq!(busy.retry_after(), Some(Duration::from_secs(5)));
        assert!(class(500, json!("SystemException")).is_retryable());
        for code in ["UserNameInvalid", "UserNotAllowedPush"] {
            assert!(matches!(
                class(400, json!(code)),
                ProviderError::Auth { .. }
            ));
        }
        for code in [
            "UrlRegularEmpty",
            "InvalidUrlRegular",
            "ParseParameterError",
            "ErrorChannel",
        ] {
            let e = class(400, json!(code));
            assert!(matches!(e, ProviderError::Rejected { .. }) && !e.is_retryable());
        }
        // An integer Code from ItemIdReceiver is read too.
        match class(200, json!(7)) {
            ProviderError::Rejected { code, .. } => assert_eq!(code, "7"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            class(429, json!("Whatever")),
            ProviderError::Throttled { .. }
        ));
    }

    #[test]
    fn success_codes_as_strings_or_integers() {
        assert!(is_int_success(
            &reply(200, json!({"Code": 1})).code().unwrap()
        ));
        assert!(is_int_success(
            &reply(200, json!({"Code": "1"})).code().unwrap()
        ));
        assert!(is_word_success(
            &reply(200, json!({"Code": "Success"})).code().unwrap()
        ));
        assert!(!is_int_success(
            &reply(200, json!({"Code": 0})).code().unwrap()
        ));
    }
}
