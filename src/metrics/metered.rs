//! Measuring wrappers around the provider, store, queue and limiter traits: the dispatcher and
//! the core call them as before, and every call is counted and timed on the way through.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
// Keyed by purge ids, which the service makes: the fast hasher.
use foldhash::HashSet;
use opentelemetry::KeyValue;
use tokio::sync::broadcast;

use super::{Metrics, outcome, state_label};
use crate::backend::BackendError;
use crate::limiter::{Charge, Decision, Limiter, Snapshot, Stamped, budget_group};
use crate::model::{Action, PurgeKind, PurgeRecord, WorkItem};
use crate::providers::{
    Batch, CallBudget, Capabilities, ItemBudget, KindQuota, Provider, ProviderError, Refused,
    Submission, TaskProgress, TaskQuery,
};
use crate::queue::{Delivery, Queue};
use crate::store::{
    Change, CreateOutcome, IdempotencyClaim, ListPage, ListQuery, Store, created_ms, now_ms,
};

/// A provider client whose calls are counted by operation and outcome, and timed. It forwards
/// every `Provider` method, those with a default too: a method added to the trait must be
/// forwarded here, or the decorator silently answers with the default (the Akamai per-item
/// budget was lost that way).
pub struct MeteredProvider {
    name: String,
    inner: Arc<dyn Provider>,
    metrics: Metrics,
}

impl MeteredProvider {
    pub fn wrap(name: &str, inner: Arc<dyn Provider>, metrics: &Metrics) -> Arc<dyn Provider> {
        Arc::new(MeteredProvider {
            name: name.to_owned(),
            inner,
            metrics: metrics.clone(),
        })
    }

    fn ended<T>(&self, operation: &'static str, start: Instant, r: &Result<T, ProviderError>) {
        let label = match r {
            Ok(_) => "success",
            Err(e) => {
                if e.is_retryable() {
                    self.metrics.i().provider_retries.add(
                        1,
                        &[
                            KeyValue::new("provider", self.name.clone()),
                            KeyValue::new("operation", operation),
                        ],
                    );
                }
                outcome(e)
            }
        };
        let seconds = start.elapsed().as_secs_f64();
        self.metrics
            .provider_call(&self.name, operation, label, seconds);
    }
}

#[async_trait]
impl Provider for MeteredProvider {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn check_target(&self, kind: PurgeKind, target: &str) -> Result<(), Refused> {
        self.inner.check_target(kind, target)
    }

    fn check_action(&self, kind: PurgeKind, action: Action) -> Result<(), Refused> {
        self.inner.check_action(kind, action)
    }

    async fn submit(&self, batch: &Batch) -> Result<Submission, ProviderError> {
        let start = Instant::now();
        let r = self.inner.submit(batch).await;
        self.ended("submit", start, &r);
        let attrs = [
            KeyValue::new("provider", self.name.clone()),
            KeyValue::new("kind", batch.kind.as_str()),
        ];
        let i = self.metrics.i();
        let targets = batch.targets.len() as u64;
        i.batch_targets.record(targets, &attrs);
        let cap = self
            .inner
            .capabilities()
            .max_per_call
            .get(&batch.kind)
            .copied()
            .unwrap_or(1)
            .max(1);
        i.batch_fill.record(targets as f64 / cap as f64, &attrs);
        r
    }

    async fn poll(
        &self,
        tasks: &[TaskQuery],
        budget: &dyn CallBudget,
    ) -> Result<Vec<(String, TaskProgress)>, ProviderError> {
        let start = Instant::now();
        let r = self.inner.poll(tasks, budget).await;
        self.ended("poll", start, &r);
        r
    }

    async fn quota(&self) -> Result<BTreeMap<PurgeKind, KindQuota>, ProviderError> {
        let start = Instant::now();
        let r = self.inner.quota().await;
        self.ended("quota", start, &r);
        if let Ok(kinds) = &r {
            for (kind, q) in kinds {
                if let Some(remaining) = q.remaining {
                    self.metrics.i().quota_remaining.record(
                        remaining,
                        &[
                            KeyValue::new("provider", self.name.clone()),
                            KeyValue::new("kind", kind.as_str()),
                        ],
                    );
                }
            }
        }
        r
    }

    fn item_budget(&self, batch: &Batch) -> Option<ItemBudget> {
        self.inner.item_budget(batch)
    }

    fn finds_submitted(&self) -> bool {
        self.inner.finds_submitted()
    }

    async fn find_submitted(
        &self,
        batch: &Batch,
        since: DateTime<Utc>,
        budget: &dyn CallBudget,
    ) -> Result<Option<Submission>, ProviderError> {
        let start = Instant::now();
        let r = self.inner.find_submitted(batch, since, budget).await;
        self.ended("lookup", start, &r);
        r
    }
}

/// Times one state-backend call and counts it when it fails.
fn backend<T>(m: &Metrics, operation: &'static str, start: Instant, r: &Result<T, BackendError>) {
    backend_outcome(m, operation, start, r.is_ok());
}

fn backend_outcome(m: &Metrics, operation: &'static str, start: Instant, ok: bool) {
    m.backend_call(operation, start.elapsed().as_secs_f64(), ok);
}

/// The purges already finished before the last application of a change (a backend may apply
/// it again after a conflict): a purge finishes once, where its state turns terminal. Kept for
/// the rare finished ones only, so watching costs nothing per unfinished purge.
#[derive(Default)]
struct StatesBefore(Mutex<HashSet<String>>);

impl StatesBefore {
    fn watch<'a>(
        &'a self,
        change: Change<'a>,
    ) -> impl Fn(&mut PurgeRecord) -> bool + Send + Sync + 'a {
        move |rec: &mut PurgeRecord| {
            if rec.state.is_terminal() {
                self.0.lock().expect("state lock").insert(rec.id.clone());
            } else {
                let mut finished = self.0.lock().expect("state lock");
                if !finished.is_empty() {
                    finished.remove(&rec.id);
                }
            }
            change(rec)
        }
    }

    fn finished_now(&self, rec: &PurgeRecord) -> bool {
        rec.state.is_terminal() && !self.0.lock().expect("state lock").contains(&rec.id)
    }
}

pub struct MeteredStore {
    pub inner: Arc<dyn Store>,
    pub metrics: Metrics,
}

impl MeteredStore {
    /// If the change just finished `rec`: records its time from create and answers its
    /// finished counter's labels (state, kind), for the caller to count.
    fn finished(
        &self,
        before: &StatesBefore,
        rec: &PurgeRecord,
    ) -> Option<(&'static str, &'static str)> {
        if !before.finished_now(rec) {
            return None;
        }
        let labels = (state_label(rec.state), rec.spec.kind.as_str());
        if let Some(created) = created_ms(&rec.id) {
            let seconds = now_ms().saturating_sub(created) as f64 / 1000.0;
            self.metrics
                .purge_finished_after(rec.state, rec.spec.kind, seconds);
        }
        Some(labels)
    }

    /// Counts `n` purges finished with `labels`.
    fn count_finished(&self, labels: (&'static str, &'static str), n: u64) {
        self.metrics.i().purges_finished.add(n, &attrs(labels));
    }
}

fn attrs((state, kind): (&'static str, &'static str)) -> [KeyValue; 2] {
    [KeyValue::new("state", state), KeyValue::new("kind", kind)]
}

#[async_trait]
impl Store for MeteredStore {
    async fn create(
        &self,
        record: PurgeRecord,
        idempotency: Option<IdempotencyClaim>,
        work: Vec<WorkItem>,
    ) -> Result<CreateOutcome, BackendError> {
        let start = Instant::now();
        let r = self.inner.create(record, idempotency, work).await;
        backend(&self.metrics, "store.create", start, &r);
        if let Ok(CreateOutcome::Created(rec)) = &r {
            self.metrics
                .purge_created(rec.spec.kind, rec.spec.action, &rec.caller);
        }
        r
    }

    async fn replay(
        &self,
        claim: &IdempotencyClaim,
    ) -> Result<Option<CreateOutcome>, BackendError> {
        let start = Instant::now();
        let r = self.inner.replay(claim).await;
        backend(&self.metrics, "store.replay", start, &r);
        r
    }

    async fn get(&self, id: &str) -> Result<Option<PurgeRecord>, BackendError> {
        let start = Instant::now();
        let r = self.inner.get(id).await;
        backend(&self.metrics, "store.get", start, &r);
        r
    }

    fn aged_out(&self, id: &str) -> bool {
        self.inner.aged_out(id)
    }

    async fn get_many(&self, ids: &[&str]) -> Vec<Result<Option<Arc<PurgeRecord>>, BackendError>> {
        let start = Instant::now();
        let r = self.inner.get_many(ids).await;
        let ok = r.iter().all(Result::is_ok);
        backend_outcome(&self.metrics, "store.get_many", start, ok);
        r
    }

    async fn update(
        &self,
        id: &str,
        change: Change<'_>,
    ) -> Result<Option<PurgeRecord>, BackendError> {
        let before = StatesBefore::default();
        let watched = before.watch(change);
        let start = Instant::now();
        let r = self.inner.update(id, &watched).await;
        backend(&self.metrics, "store.update", start, &r);
        if let Ok(Some(rec)) = &r
            && let Some(labels) = self.finished(&before, rec)
        {
            self.count_finished(labels, 1);
        }
        r
    }

    async fn update_many(
        &self,
        ids: &[&str],
        change: Change<'_>,
    ) -> Vec<Result<Option<Arc<PurgeRecord>>, BackendError>> {
        let before = StatesBefore::default();
        let watched = before.watch(change);
        let start = Instant::now();
        let results = self.inner.update_many(ids, &watched).await;
        let ok = results.iter().all(Result::is_ok);
        backend_outcome(&self.metrics, "store.update_many", start, ok);
        // One count per state and kind for the whole call.
        let mut finished: BTreeMap<(&'static str, &'static str), u64> = BTreeMap::new();
        for rec in results.iter().flatten().flatten() {
            if let Some(labels) = self.finished(&before, rec) {
                *finished.entry(labels).or_default() += 1;
            }
        }
        for (labels, n) in finished {
            self.count_finished(labels, n);
        }
        results
    }

    async fn list(&self, query: ListQuery<'_>) -> Result<ListPage, BackendError> {
        let start = Instant::now();
        let r = self.inner.list(query).await;
        backend(&self.metrics, "store.list", start, &r);
        r
    }

    async fn shared_secret(&self) -> Result<Vec<u8>, BackendError> {
        let start = Instant::now();
        let r = self.inner.shared_secret().await;
        backend(&self.metrics, "store.shared_secret", start, &r);
        r
    }

    fn events(&self) -> broadcast::Receiver<String> {
        self.inner.events()
    }

    async fn ping(&self) -> Result<(), BackendError> {
        let start = Instant::now();
        let r = self.inner.ping().await;
        backend(&self.metrics, "store.ping", start, &r);
        r
    }
}

/// A queue whose calls are timed, and which tracks the work this replica holds.
pub struct MeteredQueue {
    pub inner: Arc<dyn Queue>,
    pub metrics: Metrics,
}

fn held(deliveries: &[Delivery]) -> impl Iterator<Item = (String, u64)> + '_ {
    deliveries.iter().map(|d| {
        let created = created_ms(&d.item.purge_id).unwrap_or_else(now_ms);
        (d.id.clone(), created)
    })
}

#[async_trait]
impl Queue for MeteredQueue {
    async fn claim(
        &self,
        provider: &str,
        consumer: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, BackendError> {
        let start = Instant::now();
        let r = self.inner.claim(provider, consumer, max, wait).await;
        // A claim blocks up to `wait` for work to arrive: only its errors say anything.
        if r.is_err() {
            backend(&self.metrics, "queue.claim", start, &r);
        }
        if let Ok(d) = &r {
            self.metrics.hold(provider, held(d));
        }
        r
    }

    async fn reclaim(
        &self,
        provider: &str,
        consumer: &str,
        min_idle: Duration,
        max: usize,
    ) -> Result<Vec<Delivery>, BackendError> {
        let start = Instant::now();
        let r = self.inner.reclaim(provider, consumer, min_idle, max).await;
        backend(&self.metrics, "queue.reclaim", start, &r);
        if let Ok(d) = &r {
            if !d.is_empty() {
                self.metrics.i().work_reclaimed.add(
                    d.len() as u64,
                    &[KeyValue::new("provider", provider.to_owned())],
                );
            }
            self.metrics.hold(provider, held(d));
        }
        r
    }

    async fn keep_alive(
        &self,
        provider: &str,
        consumer: &str,
        ids: &[String],
    ) -> Result<(), BackendError> {
        let start = Instant::now();
        let r = self.inner.keep_alive(provider, consumer, ids).await;
        backend(&self.metrics, "queue.keep_alive", start, &r);
        r
    }

    async fn ack(&self, provider: &str, ids: &[String]) -> Result<(), BackendError> {
        let start = Instant::now();
        let r = self.inner.ack(provider, ids).await;
        backend(&self.metrics, "queue.ack", start, &r);
        self.metrics.release(provider, ids);
        r
    }

    async fn backlog(&self, provider: &str) -> Result<u64, BackendError> {
        let start = Instant::now();
        let r = self.inner.backlog(provider).await;
        backend(&self.metrics, "queue.backlog", start, &r);
        r
    }
}

/// A limiter whose calls are timed, and whose answers count daily quotas found used up. (The
/// time work waits for budget is measured where it waits, from its first ask to the grant:
/// `dispatch::budget`.)
pub struct MeteredLimiter {
    pub inner: Arc<dyn Limiter>,
    pub metrics: Metrics,
}

#[async_trait]
impl Limiter for MeteredLimiter {
    async fn acquire_stamped(&self, charges: &[Charge]) -> Result<Stamped, BackendError> {
        let start = Instant::now();
        let r = self.inner.acquire_stamped(charges).await;
        backend(&self.metrics, "limiter.acquire", start, &r);
        if let Ok(Decision::Exhausted(_)) = r.as_ref().map(|s| s.decision) {
            let budget = charges
                .first()
                .map_or("none", |c| budget_group(&c.key))
                .to_owned();
            self.metrics
                .i()
                .budget_exhausted
                .add(1, &[KeyValue::new("budget", budget)]);
        }
        r
    }

    async fn unspend(&self, charges: &[Charge], at_ms: u64) -> Result<bool, BackendError> {
        let start = Instant::now();
        let r = self.inner.unspend(charges, at_ms).await;
        backend(&self.metrics, "limiter.unspend", start, &r);
        r
    }

    async fn refund(&self, charges: &[Charge]) -> Result<(), BackendError> {
        let start = Instant::now();
        let r = self.inner.refund(charges).await;
        backend(&self.metrics, "limiter.refund", start, &r);
        r
    }

    async fn pause(&self, group: &str, wait: Duration) -> Result<(), BackendError> {
        let start = Instant::now();
        let r = self.inner.pause(group, wait).await;
        backend(&self.metrics, "limiter.pause", start, &r);
        r
    }

    async fn learned_caps(&self, budget: &str) -> Result<BTreeMap<String, usize>, BackendError> {
        let start = Instant::now();
        let r = self.inner.learned_caps(budget).await;
        backend(&self.metrics, "limiter.learned_caps", start, &r);
        r
    }

    async fn lower_cap(&self, budget: &str, lane: &str, cap: usize) -> Result<bool, BackendError> {
        let start = Instant::now();
        let r = self.inner.lower_cap(budget, lane, cap).await;
        backend(&self.metrics, "limiter.lower_cap", start, &r);
        r
    }

    async fn forget_cap(&self, budget: &str, lane: &str) -> Result<(), BackendError> {
        let start = Instant::now();
        let r = self.inner.forget_cap(budget, lane).await;
        backend(&self.metrics, "limiter.forget_cap", start, &r);
        r
    }

    async fn snapshot(&self, charges: &[Charge]) -> Result<Snapshot, BackendError> {
        let start = Instant::now();
        let r = self.inner.snapshot(charges).await;
        backend(&self.metrics, "limiter.snapshot", start, &r);
        r
    }
}
