//! A simulated CDN: accepts every kind, finishes tasks after a delay, fails targets matching a
//! pattern, and enforces its own per-call cap and call rate like a real provider would.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{
    Batch, CallBudget, Capabilities, Provider, ProviderError, Submission, TaskProgress, TaskQuery,
};
use crate::limiter::Rate;
use crate::model::PurgeKind;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxSettings {
    /// How long a task runs before it finishes.
    #[serde(default = "default_delay", with = "humantime_serde")]
    pub delay: Duration,
    /// Targets matching this regex fail.
    #[serde(default)]
    pub fail_pattern: Option<String>,
    /// The most targets one call may carry.
    #[serde(default = "default_max_per_call")]
    pub max_per_call: usize,
    /// The call rate the simulated CDN allows; calls above it are throttled.
    #[serde(default)]
    pub rate: Option<Rate>,
    /// The kinds it accepts; all by default.
    #[serde(default)]
    pub kinds: Option<Vec<PurgeKind>>,
    /// Sandboxes of one process naming the same account share one simulated CDN (tasks, call
    /// log, rate), as replicas share one real CDN account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
}

fn default_delay() -> Duration {
    Duration::from_millis(200)
}

fn default_max_per_call() -> usize {
    100
}

impl Default for SandboxSettings {
    fn default() -> Self {
        SandboxSettings {
            delay: default_delay(),
            fail_pattern: None,
            max_per_call: default_max_per_call(),
            rate: None,
            kinds: None,
            account: None,
        }
    }
}

/// One submit call as the simulated CDN saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxCall {
    pub at: SystemTime,
    pub kind: PurgeKind,
    pub targets: Vec<String>,
    /// Whether the call was refused for going over the rate.
    pub throttled: bool,
}

#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

struct Inner {
    settings: SandboxSettings,
    fail: Option<regex::Regex>,
    state: Arc<Mutex<State>>,
}

type Accounts = Mutex<HashMap<String, std::sync::Weak<Mutex<State>>>>;

/// The simulated CDN of a named account, shared by the sandboxes that name it.
fn account_state(name: &str) -> Arc<Mutex<State>> {
    static ACCOUNTS: std::sync::OnceLock<Accounts> = std::sync::OnceLock::new();
    let mut accounts = ACCOUNTS
        .get_or_init(Accounts::default)
        .lock()
        .expect("accounts lock");
    accounts.retain(|_, state| state.strong_count() > 0);
    if let Some(state) = accounts.get(name).and_then(std::sync::Weak::upgrade) {
        return state;
    }
    let state = Arc::default();
    accounts.insert(name.to_owned(), Arc::downgrade(&state));
    state
}

#[derive(Default)]
struct State {
    next_id: u64,
    /// By the number in the task id (`sbx-N`).
    tasks: HashMap<u64, SimTask>,
    calls: Vec<SandboxCall>,
    /// Targets carried by the calls in `calls`.
    call_targets: usize,
    recent: VecDeque<SystemTime>,
    polls: u64,
}

/// How long a finished task can still be polled.
const TASK_MEMORY: Duration = Duration::from_secs(600);

/// Targets of the calls remembered for `calls()`: past twice this the oldest calls are
/// forgotten, down to this, so a sidecar running on the sandbox for months stays small.
const CALL_HISTORY_TARGETS: usize = 20_000;

/// A task as remembered: only what a poll answers (its failed targets are decided at submit,
/// the fail pattern being fixed), not every target it carried.
struct SimTask {
    failed: Vec<(String, String)>,
    done_at: SystemTime,
}

impl State {
    fn record_call(&mut self, call: SandboxCall) {
        self.call_targets += call.targets.len();
        self.calls.push(call);
        if self.call_targets <= 2 * CALL_HISTORY_TARGETS {
            return;
        }
        let mut forget = 0;
        for c in &self.calls {
            if self.call_targets <= CALL_HISTORY_TARGETS || forget + 1 == self.calls.len() {
                break;
            }
            self.call_targets -= c.targets.len();
            forget += 1;
        }
        self.calls.drain(..forget);
    }
}

impl super::ProviderFactory for SandboxSettings {
    fn build(
        &self,
        name: &str,
        _http: &reqwest::Client,
        registry: &mut super::Registry,
    ) -> Result<Arc<dyn super::Provider>, crate::settings::ConfigError> {
        let sandbox = Sandbox::new(self.clone()).map_err(|e| {
            crate::settings::ConfigError::Invalid(format!("providers.{name}.fail_pattern: {e}"))
        })?;
        registry.insert_sandbox(name, sandbox.clone());
        Ok(Arc::new(sandbox))
    }
}

impl Sandbox {
    pub fn new(settings: SandboxSettings) -> Result<Sandbox, regex::Error> {
        let fail = settings
            .fail_pattern
            .as_deref()
            .map(regex::Regex::new)
            .transpose()?;
        let state = match &settings.account {
            Some(name) => account_state(name),
            None => Arc::default(),
        };
        Ok(Sandbox {
            inner: Arc::new(Inner {
                settings,
                fail,
                state,
            }),
        })
    }

    /// The submit calls so far, throttled ones included; in a long run only the latest
    /// (at least `CALL_HISTORY_TARGETS` targets' worth).
    pub fn calls(&self) -> Vec<SandboxCall> {
        self.inner.state.lock().expect("sandbox lock").calls.clone()
    }

    /// How many status calls were made.
    pub fn polls(&self) -> u64 {
        self.inner.state.lock().expect("sandbox lock").polls
    }

    fn failure(&self, target: &str) -> Option<String> {
        let re = self.inner.fail.as_ref()?;
        re.is_match(target)
            .then(|| format!("sandbox: target matches fail_pattern {:?}", re.as_str()))
    }
}

#[async_trait]
impl Provider for Sandbox {
    fn capabilities(&self) -> Capabilities {
        let cap = self.inner.settings.max_per_call;
        Capabilities {
            max_per_call: self
                .inner
                .settings
                .kinds
                .as_deref()
                .unwrap_or(&PurgeKind::EVERY)
                .iter()
                .map(|k| (*k, cap))
                .collect(),
            headers: true,
            tag_needs_hosts: false,
            submit_rates: self.inner.settings.rate.into_iter().collect(),
            status_rates: Vec::new(),
            daily: Vec::new(),
            poll_batch: 1000,
            kind_submit_rates: Default::default(),
        }
    }

    async fn submit(&self, batch: &Batch) -> Result<Submission, ProviderError> {
        let now = SystemTime::now();
        let mut state = self.inner.state.lock().expect("sandbox lock");
        let mut call = SandboxCall {
            at: now,
            kind: batch.kind,
            targets: batch.targets.clone(),
            throttled: false,
        };
        if let Some(rate) = self.inner.settings.rate {
            while state
                .recent
                .front()
                .is_some_and(|t| now.duration_since(*t).unwrap_or_default() >= rate.per)
            {
                state.recent.pop_front();
            }
            if state.recent.len() >= rate.count as usize {
                call.throttled = true;
                state.record_call(call);
                return Err(ProviderError::Throttled {
                    message: format!("more than {} calls per {:?}", rate.count, rate.per),
                    retry_after: None,
                });
            }
            state.recent.push_back(now);
        }
        state.record_call(call);
        if batch.targets.len() > self.inner.settings.max_per_call {
            return Err(ProviderError::BatchTooLarge {
                message: format!(
                    "{} targets, at most {} per call",
                    batch.targets.len(),
                    self.inner.settings.max_per_call
                ),
            });
        }
        // Finished tasks stay answerable for a while (every replica following one may ask),
        // then are forgotten so a long run stays small.
        if state.next_id.is_multiple_of(1024) {
            state
                .tasks
                .retain(|_, t| now.duration_since(t.done_at).unwrap_or_default() < TASK_MEMORY);
        }
        state.next_id += 1;
        let number = state.next_id;
        let failed = batch
            .targets
            .iter()
            .filter_map(|tg| self.failure(tg).map(|r| (tg.clone(), r)))
            .collect();
        state.tasks.insert(
            number,
            SimTask {
                failed,
                done_at: now + self.inner.settings.delay,
            },
        );
        Ok(Submission {
            task_id: format!("sbx-{number}"),
            request_id: None,
            rejected: Vec::new(),
        })
    }

    async fn poll(
        &self,
        tasks: &[TaskQuery],
        _budget: &dyn CallBudget,
    ) -> Result<Vec<(String, TaskProgress)>, ProviderError> {
        let now = SystemTime::now();
        let mut state = self.inner.state.lock().expect("sandbox lock");
        state.polls += 1;
        let mut out = Vec::new();
        for q in tasks {
            let task = q
                .task_id
                .strip_prefix("sbx-")
                .and_then(|n| n.parse::<u64>().ok())
                .and_then(|n| state.tasks.get(&n));
            let progress = match task {
                None => TaskProgress::Failed {
                    reason: format!("sandbox: unknown task {}", q.task_id),
                },
                Some(t) if t.done_at > now => TaskProgress::Running,
                Some(t) => TaskProgress::Finished {
                    failed: t.failed.clone(),
                },
            };
            out.push((q.task_id.clone(), progress));
        }
        Ok(out)
    }

    async fn quota(&self) -> Result<BTreeMap<PurgeKind, super::KindQuota>, ProviderError> {
        Ok(BTreeMap::new())
    }
}
