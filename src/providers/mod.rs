//! The provider trait every CDN client implements, and the registry built from configuration.

pub mod akamai;
pub mod build;
pub mod cdnetworks;
pub mod cloudflare;
pub mod cloudfront;
pub mod edgeone;
pub mod fastly;
pub mod handle;
pub mod http;
mod registry;
pub mod sandbox;
pub mod settings;
pub mod signing;

pub use registry::Registry;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

pub use handle::{LocalBacklog, ProviderHandle, next_day_start};

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

/// The poll of a provider with no status API, where a purge is done once accepted: every task
/// asked about has finished, without a call.
pub fn finished_at_acceptance(tasks: &[TaskQuery]) -> Vec<(String, TaskProgress)> {
    tasks
        .iter()
        .map(|t| {
            (
                t.task_id.clone(),
                TaskProgress::Finished { failed: Vec::new() },
            )
        })
        .collect()
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

/// What each provider's settings type implements: how its client is built.
pub trait ProviderFactory {
    /// The client of provider `name`, on the one shared `http` client. `registry` is where the
    /// provider is about to be registered, for what a provider adds beside its client (the
    /// sandbox's simulated CDN, which tests read).
    fn build(
        &self,
        name: &str,
        http: &reqwest::Client,
        registry: &mut Registry,
    ) -> Result<Arc<dyn Provider>, crate::settings::ConfigError>;
}

/// The [`ProviderFactory`] of a settings type whose provider is built by
/// `Client::new(&settings, http)`, as most are: `factory_from_new!(EdgeOneSettings => EdgeOne);`.
macro_rules! factory_from_new {
    ($settings:ty => $client:ty) => {
        impl $crate::providers::ProviderFactory for $settings {
            fn build(
                &self,
                _name: &str,
                http: &reqwest::Client,
                _registry: &mut $crate::providers::Registry,
            ) -> Result<
                std::sync::Arc<dyn $crate::providers::Provider>,
                $crate::settings::ConfigError,
            > {
                Ok(std::sync::Arc::new(<$client>::new(self, http.clone())?))
            }
        }
    };
}
pub(crate) use factory_from_new;

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
