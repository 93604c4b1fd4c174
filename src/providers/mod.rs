//! The provider trait every CDN client implements, and the registry built from configuration.

pub mod akamai;
pub mod build;
pub mod cdnetworks;
pub mod cloudflare;
pub mod cloudfront;
pub mod edgeone;
pub mod fastly;
pub mod http;
pub mod sandbox;
pub mod settings;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::limiter::Rate;
use crate::model::{Action, PurgeKind};

/// What a provider can do and what it allows, before configuration overrides.
#[derive(Clone, Debug, PartialEq)]
pub struct Capabilities {
    /// Supported kinds and the most targets one call may carry for each.
    pub max_per_call: BTreeMap<PurgeKind, usize>,
    /// Whether cache-key headers can be sent with URL purges.
    pub headers: bool,
    /// Whether TAG purges need a host scope.
    pub tag_needs_hosts: bool,
    /// Account-wide budget of the submit API.
    pub submit_rates: Vec<Rate>,
    /// Account-wide submit budgets of one kind only (Fastly's purge_all 1,000/h), charged
    /// besides `submit_rates` for batches of that kind.
    pub kind_submit_rates: BTreeMap<PurgeKind, Vec<Rate>>,
    /// Account-wide budget of the status API.
    pub status_rates: Vec<Rate>,
    /// Documented daily target quotas.
    pub daily: Vec<DailyQuota>,
    /// Most tasks one `poll` call should cover (one status API call per `poll`).
    pub poll_batch: usize,
}

impl Capabilities {
    pub fn supports(&self, kind: PurgeKind) -> bool {
        self.max_per_call.contains_key(&kind)
    }

    pub fn kinds(&self) -> Vec<PurgeKind> {
        self.max_per_call.keys().copied().collect()
    }
}

/// At most `max` targets of `kinds` per day, the day starting at midnight UTC+`utc_offset_secs`.
#[derive(Clone, Debug, PartialEq)]
pub struct DailyQuota {
    pub kinds: Vec<PurgeKind>,
    pub max: u64,
    pub utc_offset_secs: i32,
}

/// Targets of one lane, sent in one provider call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// The batch's identity: the same whenever the same purges' targets are packed into one
    /// call again (a resend, or another replica re-packing taken-over work), different for any
    /// other batch. Providers with idempotency tokens derive them from it.
    pub id: String,
    pub kind: PurgeKind,
    pub action: Action,
    pub targets: Vec<String>,
    pub hosts: Vec<String>,
    pub headers: BTreeMap<String, String>,
}

/// A per-target budget a provider keeps besides its call rate (Akamai's object buckets): the
/// targets every replica sends of one bucket are paced at its refill rate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ItemBudget {
    /// The bucket's name, unique within the provider (e.g. `url`).
    pub bucket: String,
    /// How fast the bucket refills.
    pub rate: Rate,
    /// What one batch takes from it.
    pub cost: u32,
}

/// The provider's answer to a submit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Submission {
    pub task_id: String,
    pub request_id: Option<String>,
    /// Targets the provider refused outright, with its reason.
    pub rejected: Vec<(String, String)>,
}

/// A submitted task to ask about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskQuery {
    pub task_id: String,
    pub kind: PurgeKind,
    pub targets: Vec<String>,
    pub submitted_at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskProgress {
    Running,
    /// Done; these targets failed, with the provider's reason.
    Finished {
        failed: Vec<(String, String)>,
    },
    /// The whole task failed.
    Failed {
        reason: String,
    },
}

/// What the provider reports of its quota for one kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KindQuota {
    pub per_call: Option<usize>,
    pub daily: Option<u64>,
    pub remaining: Option<u64>,
}

/// A provider error, classified once where the response is read.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("throttled by the provider: {message}")]
    Throttled {
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("provider temporarily unavailable: {message}")]
    Transient {
        message: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The request may or may not have reached the provider.
    #[error("no answer from the provider after sending: {message}")]
    Ambiguous { message: String },
    #[error("too many targets for one call: {message}")]
    BatchTooLarge { message: String },
    #[error("daily quota exhausted: {message}")]
    QuotaExhausted { message: String },
    /// The same purge is still running at the provider; try again later.
    #[error("provider busy with the same purge: {message}")]
    Busy {
        message: String,
        /// How long the provider says to wait; a minute when it does not say.
        retry_after: Option<Duration>,
    },
    #[error("authentication failed: {message}")]
    Auth { message: String },
    #[error("rejected by the provider: {code}: {message}")]
    Rejected { code: String, message: String },
    #[error("unexpected provider response: {message}")]
    Protocol { message: String },
}

impl ProviderError {
    /// Worth sending again (after a backoff) as it is.
    pub fn is_retryable(&self) -> bool {
        match self {
            ProviderError::Throttled { .. }
            | ProviderError::Transient { .. }
            | ProviderError::Ambiguous { .. }
            | ProviderError::Busy { .. } => true,
            ProviderError::BatchTooLarge { .. }
            | ProviderError::QuotaExhausted { .. }
            | ProviderError::Auth { .. }
            | ProviderError::Rejected { .. }
            | ProviderError::Protocol { .. } => false,
        }
    }

    /// The provider asked for at least this much time before the next try.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ProviderError::Throttled { retry_after, .. } => *retry_after,
            ProviderError::Busy { retry_after, .. } => {
                Some(retry_after.unwrap_or(Duration::from_secs(60)))
            }
            _ => None,
        }
    }
}

/// The status API's budget, for a provider whose one `poll` or lookup takes more than one
/// call (pages): it waits here before every call after the first, so no call goes uncharged.
#[async_trait]
pub trait CallBudget: Send + Sync {
    /// Waits until one more call is allowed; an error (stopping, budget gone) ends the work.
    async fn acquire(&self) -> Result<(), ProviderError>;
}

/// No budget: for a client used outside the dispatcher (tests, tools).
pub struct Unmetered;

#[async_trait]
impl CallBudget for Unmetered {
    async fn acquire(&self) -> Result<(), ProviderError> {
        Ok(())
    }
}

/// A provider's refusal of a target or an action at CreatePurge time: the rule broken, or what
/// the provider can do instead. `core::validate` turns it into a field violation naming the
/// provider.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{rule}")]
pub struct Refused {
    pub rule: String,
}

impl Refused {
    pub fn new(rule: impl Into<String>) -> Refused {
        Refused { rule: rule.into() }
    }
}

/// A CDN purge API.
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    fn capabilities(&self) -> Capabilities;

    /// Provider-specific rules for one target, checked at CreatePurge time; the error says
    /// which rule the target breaks.
    fn check_target(&self, _kind: PurgeKind, _target: &str) -> Result<(), Refused> {
        Ok(())
    }

    /// Whether `action` is possible for `kind`, checked at CreatePurge time; the error says
    /// what the provider can do instead.
    fn check_action(&self, _kind: PurgeKind, _action: Action) -> Result<(), Refused> {
        Ok(())
    }

    async fn submit(&self, batch: &Batch) -> Result<Submission, ProviderError>;

    /// Progress of submitted tasks; a task missing from the answer is still running. The
    /// first status call is already paid for; every further one waits for `budget`.
    async fn poll(
        &self,
        tasks: &[TaskQuery],
        budget: &dyn CallBudget,
    ) -> Result<Vec<(String, TaskProgress)>, ProviderError>;

    /// The quota the provider reports now, if it has such an API.
    async fn quota(&self) -> Result<BTreeMap<PurgeKind, KindQuota>, ProviderError> {
        Ok(BTreeMap::new())
    }

    /// The per-target budget `batch` is paid from, once the provider has said how fast it
    /// refills (Akamai's `X-Ratelimit-*-Objects` answers); `None` when it has no such budget.
    fn item_budget(&self, _batch: &Batch) -> Option<ItemBudget> {
        None
    }

    /// Whether `find_submitted` can look anything up; when not, a possibly sent batch is sent
    /// again without a lookup (and without paying for one).
    fn finds_submitted(&self) -> bool {
        false
    }

    /// After an ambiguous submit: the task the provider made for `batch` since `since`, if any.
    /// Its first status call is already paid for; every further one waits for `budget`.
    async fn find_submitted(
        &self,
        _batch: &Batch,
        _since: DateTime<Utc>,
        _budget: &dyn CallBudget,
    ) -> Result<Option<Submission>, ProviderError> {
        Ok(None)
    }
}

/// A configured provider: the client and its effective capabilities.
#[derive(Clone)]
pub struct ProviderHandle {
    pub name: String,
    pub client: Arc<dyn Provider>,
    pub caps: Capabilities,
    /// The account its budgets are kept under: its own name unless configured to share.
    pub budget: String,
    quota: Arc<Mutex<BTreeMap<PurgeKind, KindQuota>>>,
    /// Kinds whose daily quota ran out, until the provider's next day.
    exhausted: Arc<Mutex<BTreeMap<PurgeKind, DateTime<Utc>>>>,
    /// When `quota` was reported: a "none left" stops counting at the provider's next day.
    quota_at: Arc<Mutex<Option<DateTime<Utc>>>>,
    /// Per-call caps learned from "batch too large" refusals: this replica's copy of the ones
    /// every replica shares through the limiter.
    learned: Arc<Mutex<BTreeMap<PurgeKind, usize>>>,
}

impl ProviderHandle {
    pub fn new(name: String, client: Arc<dyn Provider>, caps: Capabilities) -> ProviderHandle {
        ProviderHandle {
            budget: name.clone(),
            name,
            client,
            caps,
            quota: Arc::default(),
            exhausted: Arc::default(),
            quota_at: Arc::default(),
            learned: Arc::default(),
        }
    }

    /// The per-call cap for `kind`, lowered by what the provider last reported and by what a
    /// "batch too large" refusal taught.
    pub fn max_per_call(&self, kind: PurgeKind) -> usize {
        let configured = self.caps.max_per_call.get(&kind).copied().unwrap_or(1);
        let reported = self
            .quota
            .lock()
            .expect("quota lock")
            .get(&kind)
            .and_then(|q| q.per_call)
            .unwrap_or(usize::MAX);
        let learned = self.learned_cap(kind).unwrap_or(usize::MAX);
        configured.min(reported).min(learned).max(1)
    }

    /// The per-call cap for `kind` learned from a refusal, if any.
    pub fn learned_cap(&self, kind: PurgeKind) -> Option<usize> {
        self.learned.lock().expect("quota lock").get(&kind).copied()
    }

    /// Lowers this replica's learned cap for `kind` to `cap` (never raises it).
    pub fn learn_cap(&self, kind: PurgeKind, cap: usize) {
        let mut learned = self.learned.lock().expect("quota lock");
        let entry = learned.entry(kind).or_insert(cap);
        *entry = (*entry).min(cap).max(1);
    }

    /// Replaces this replica's learned caps with the shared ones.
    pub fn set_learned_caps(&self, caps: BTreeMap<PurgeKind, usize>) {
        *self.learned.lock().expect("quota lock") = caps;
    }

    /// The field a learned cap of `kind` is shared under, in its budget's (account's) caps.
    pub fn cap_lane(&self, kind: PurgeKind) -> String {
        format!("{}:{}", self.name, kind.as_str())
    }

    /// What the provider last reported for `kind`, with `remaining: Some(0)` while the day's
    /// quota is known to be gone.
    pub fn known_quota(&self, kind: PurgeKind) -> KindQuota {
        let mut quota = self
            .quota
            .lock()
            .expect("quota lock")
            .get(&kind)
            .copied()
            .unwrap_or_default();
        let reported_at = *self.quota_at.lock().expect("quota lock");
        if quota.remaining == Some(0)
            && reported_at.is_some_and(|at| Utc::now() >= next_day_start(at, self.day_offset(kind)))
        {
            // Reported yesterday (by the provider's day): today's count is not known yet.
            quota.remaining = None;
        }
        let exhausted = self.exhausted.lock().expect("quota lock");
        if exhausted
            .get(&kind)
            .is_some_and(|until| Utc::now() < *until)
        {
            quota.remaining = Some(0);
        }
        quota
    }

    /// How long until the day's quota for `kind`, known to be gone, is back.
    pub fn exhausted_for(&self, kind: PurgeKind) -> Option<Duration> {
        let until = *self.exhausted.lock().expect("quota lock").get(&kind)?;
        (until - Utc::now()).to_std().ok()
    }

    /// Takes the provider's report as the truth, including for kinds marked exhausted.
    pub fn set_quota(&self, quota: BTreeMap<PurgeKind, KindQuota>) {
        let mut exhausted = self.exhausted.lock().expect("quota lock");
        exhausted.retain(|kind, _| quota.get(kind).is_none_or(|q| q.remaining.is_none()));
        *self.quota.lock().expect("quota lock") = quota;
        *self.quota_at.lock().expect("quota lock") = Some(Utc::now());
    }

    /// The UTC offset of the provider's day for `kind`: its documented daily quota's, else UTC.
    fn day_offset(&self, kind: PurgeKind) -> i32 {
        self.caps
            .daily
            .iter()
            .find(|q| q.kinds.contains(&kind))
            .map_or(0, |q| q.utc_offset_secs)
    }

    /// Records that the day's quota for `kind` is gone, until the provider's next day starts
    /// (its documented day for that kind, else UTC's).
    pub fn mark_exhausted(&self, kind: PurgeKind) {
        let until = next_day_start(Utc::now(), self.day_offset(kind));
        self.exhausted
            .lock()
            .expect("quota lock")
            .insert(kind, until);
    }
}

/// The first instant of the day after `now`'s, days starting at midnight UTC+`offset_secs`.
pub fn next_day_start(now: DateTime<Utc>, offset_secs: i32) -> DateTime<Utc> {
    let offset = chrono::Duration::seconds(offset_secs.into());
    let local = now + offset;
    let midnight = local
        .date_naive()
        .succ_opt()
        .expect("a next day")
        .and_hms_opt(0, 0, 0)
        .expect("midnight")
        .and_utc();
    midnight - offset
}

/// Every configured provider and group, by the name callers use.
#[derive(Clone, Default)]
pub struct Registry {
    providers: HashMap<String, ProviderHandle>,
    groups: HashMap<String, Vec<String>>,
    sandboxes: HashMap<String, sandbox::Sandbox>,
}

impl Registry {
    pub fn insert(&mut self, handle: ProviderHandle) {
        self.providers.insert(handle.name.clone(), handle);
    }

    pub fn insert_sandbox(&mut self, name: &str, sandbox: sandbox::Sandbox) {
        self.sandboxes.insert(name.to_owned(), sandbox);
    }

    pub fn insert_group(&mut self, name: String, members: Vec<String>) {
        self.groups.insert(name, members);
    }

    pub fn get(&self, name: &str) -> Option<&ProviderHandle> {
        self.providers.get(name)
    }

    /// A provider name resolves to itself, a group name to its members.
    pub fn resolve(&self, name: &str) -> Option<Vec<&ProviderHandle>> {
        if let Some(p) = self.providers.get(name) {
            return Some(vec![p]);
        }
        let members = self.groups.get(name)?;
        members.iter().map(|m| self.providers.get(m)).collect()
    }

    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .providers
            .keys()
            .chain(self.groups.keys())
            .cloned()
            .collect();
        names.sort();
        names
    }

    pub fn handles(&self) -> impl Iterator<Item = &ProviderHandle> {
        self.providers.values()
    }

    /// The simulated CDN behind a sandbox provider, for tests and demos.
    pub fn sandbox(&self, name: &str) -> Option<&sandbox::Sandbox> {
        self.sandboxes.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_day_starts_at_the_providers_midnight() {
        let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        // 15:30 UTC is 23:30 in UTC+8: the day ends half an hour later.
        assert_eq!(
            next_day_start(at("2026-11-23T15:30:00Z"), 8 * 3600),
            at("2026-11-23T16:00:00Z")
        );
        // 16:30 UTC is already the next day in UTC+8.
        assert_eq!(
            next_day_start(at("2026-11-23T16:30:00Z"), 8 * 3600),
            at("2026-11-24T16:00:00Z")
        );
        assert_eq!(
            next_day_start(at("2026-11-23T23:59:59Z"), 0),
            at("2026-11-24T00:00:00Z")
        );
    }

    #[test]
    fn an_exhausted_kind_stays_exhausted_until_a_quota_report_says_otherwise() {
        let sandbox = sandbox::Sandbox::new(Default::default()).unwrap();
        let caps = sandbox.capabilities();
        let handle = ProviderHandle::new("s".into(), Arc::new(sandbox), caps);
        assert_eq!(handle.known_quota(PurgeKind::Url).remaining, None);
        handle.mark_exhausted(PurgeKind::Url);
        assert_eq!(handle.known_quota(PurgeKind::Url).remaining, Some(0));
        assert!(
            handle
                .exhausted_for(PurgeKind::Url)
                .is_some_and(|d| d <= Duration::from_secs(86_400))
        );
        assert_eq!(handle.known_quota(PurgeKind::Prefix).remaining, None);
        let report = KindQuota {
            remaining: Some(100),
            ..Default::default()
        };
        handle.set_quota(BTreeMap::from([(PurgeKind::Url, report)]));
        assert_eq!(handle.known_quota(PurgeKind::Url).remaining, Some(100));
        // "None left", reported on an earlier day of the provider's, no longer holds.
        let none_left = KindQuota {
            remaining: Some(0),
            ..Default::default()
        };
        handle.set_quota(BTreeMap::from([(PurgeKind::Url, none_left)]));
        assert_eq!(handle.known_quota(PurgeKind::Url).remaining, Some(0));
        *handle.quota_at.lock().unwrap() = Some(Utc::now() - chrono::Duration::days(2));
        assert_eq!(handle.known_quota(PurgeKind::Url).remaining, None);
    }
}
