//! The dispatcher, one per replica: claims queued work, packs targets into provider batches per
//! lane, waits for the provider's shared budget, submits, follows tasks to completion and
//! records every outcome on the purges.

pub mod lanes;
mod submit;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::DispatchConfig;
use crate::limiter::{Charge, Decision, Limit, Limiter};
use crate::model::{PurgeKind, PurgeRecord, TaskState, UnitStatus};
use crate::providers::{
    CallBudget, ProviderError, ProviderHandle, Registry, TaskProgress, TaskQuery,
};
use crate::queue::{Delivery, Queue};
use crate::store::Store;
use lanes::{LaneKey, Lanes};

/// Starts one worker per provider; they stop when `stop` is cancelled.
pub fn spawn(
    store: Arc<dyn Store>,
    queue: Arc<dyn Queue>,
    limiter: Arc<dyn Limiter>,
    registry: &Registry,
    settings: DispatchConfig,
    consumer: String,
    stop: CancellationToken,
) -> JoinSet<()> {
    let mut set = JoinSet::new();
    for handle in registry.handles() {
        let worker = Worker(Arc::new(Inner {
            provider: handle.clone(),
            store: store.clone(),
            queue: queue.clone(),
            limiter: limiter.clone(),
            submits: Arc::new(Semaphore::new(settings.max_in_flight)),
            settings: settings.clone(),
            consumer: consumer.clone(),
            stop: stop.clone(),
            lanes: Mutex::default(),
            lane_changed: Notify::new(),
            inflight: Mutex::default(),
            held: Mutex::default(),
        }));
        set.spawn(worker.clone().intake());
        set.spawn(worker.clone().flush());
        set.spawn(worker.clone().poll());
        set.spawn(worker.refresh_quota());
    }
    set
}

/// A submitted task this replica follows.
#[derive(Clone, Debug)]
struct InFlight {
    query: TaskQuery,
    /// Target -> purges it is credited to.
    credits: HashMap<String, Vec<String>>,
    /// When to ask about it next.
    schedule: PollSchedule,
}

/// A running task is asked about less and less often (`poll_interval`, growing by half each
/// time up to `max_poll_interval`), so long tasks do not eat the status budget new ones need.
#[derive(Clone, Copy, Debug, Default)]
struct PollSchedule {
    /// `None`: at the next round.
    next: Option<std::time::Instant>,
    polls: u32,
}

impl PollSchedule {
    fn due(&self, now: std::time::Instant) -> bool {
        self.next.is_none_or(|next| next <= now)
    }

    /// After a poll that found the task still running.
    fn still_running(&mut self, now: std::time::Instant, every: Duration, max: Duration) {
        self.polls = self.polls.saturating_add(1);
        let grown = every.mul_f64(1.5f64.powi(self.polls.min(32) as i32));
        self.next = Some(now + grown.min(max.max(every)));
    }
}

#[derive(Clone)]
struct Worker(Arc<Inner>);

struct Inner {
    provider: ProviderHandle,
    store: Arc<dyn Store>,
    queue: Arc<dyn Queue>,
    limiter: Arc<dyn Limiter>,
    submits: Arc<Semaphore>,
    settings: DispatchConfig,
    consumer: String,
    stop: CancellationToken,
    lanes: Mutex<Lanes>,
    lane_changed: Notify,
    inflight: Mutex<HashMap<String, InFlight>>,
    /// Purge id -> the delivery to acknowledge when this provider is done with it.
    held: Mutex<HashMap<String, String>>,
}

/// How a provider task ended.
enum Outcome {
    /// Done; these targets failed, with the reason.
    Finished(HashMap<String, String>),
    /// Every target failed for this reason.
    AllFailed(String),
}

/// Outcome of waiting for budget.
enum Budget {
    Granted,
    Exhausted,
    Stopped,
}

impl Worker {
    fn name(&self) -> &str {
        &self.0.provider.name
    }

    /// Claims new work, reclaims abandoned work, and keeps held work alive.
    async fn intake(self) {
        let s = &self.0.settings;
        let mut last_upkeep = tokio::time::Instant::now();
        let upkeep_every = s.reclaim_idle / 3;
        // Unsent targets beyond this leave work in the queue for replicas with room, instead
        // of piling it up behind this one's share of the provider budget. Purges only waiting
        // for their provider tasks do not count.
        let max_waiting = s.claim_batch.saturating_mul(16).max(1);
        while !self.0.stop.is_cancelled() {
            if last_upkeep.elapsed() >= upkeep_every {
                last_upkeep = tokio::time::Instant::now();
                self.upkeep().await;
            }
            if self.0.lanes.lock().expect("lanes lock").waiting() >= max_waiting {
                self.pause(Duration::from_millis(200)).await;
                continue;
            }
            let claimed = tokio::select! {
                _ = self.0.stop.cancelled() => return,
                c = self.0.queue.claim(self.name(), &self.0.consumer, s.claim_batch, Duration::from_secs(1)) => c,
            };
            match claimed {
                Ok(deliveries) => self.adopt_all(deliveries).await,
                Err(e) => {
                    tracing::warn!(provider = self.name(), error = %e, "cannot claim work; retrying");
                    self.pause(Duration::from_millis(500)).await;
                }
            }
        }
    }

    async fn upkeep(&self) {
        let s = &self.0.settings;
        let held: Vec<String> = self
            .0
            .held
            .lock()
            .expect("held lock")
            .values()
            .cloned()
            .collect();
        if !held.is_empty()
            && let Err(e) = self
                .0
                .queue
                .keep_alive(self.name(), &self.0.consumer, &held)
                .await
        {
            tracing::warn!(provider = self.name(), error = %e, "cannot refresh held work");
        }
        match self
            .0
            .queue
            .reclaim(self.name(), &self.0.consumer, s.reclaim_idle, s.claim_batch)
            .await
        {
            Ok(d) if !d.is_empty() => {
                tracing::info!(
                    provider = self.name(),
                    count = d.len(),
                    "took over abandoned work"
                );
                self.adopt_all(d).await;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(provider = self.name(), error = %e, "cannot reclaim work"),
        }
    }

    async fn adopt_all(&self, deliveries: Vec<Delivery>) {
        for d in deliveries {
            // A record we cannot read now is left unacknowledged; upkeep reclaims it later.
            match self.0.store.get(&d.item.purge_id).await {
                Ok(Some(record)) => self.adopt(d, &record).await,
                Ok(None) => self.ack(&d.id).await,
                Err(e) => {
                    tracing::warn!(purge_id = %d.item.purge_id, error = %e, "cannot read claimed purge")
                }
            }
        }
    }

    /// Puts the pending units of `record` in their lane and follows its submitted tasks.
    async fn adopt(&self, delivery: Delivery, record: &PurgeRecord) {
        if record.provider_done(self.name()) {
            self.ack(&delivery.id).await;
            return;
        }
        let duplicate = {
            let mut held = self.0.held.lock().expect("held lock");
            match held.get(&record.id) {
                // Already ours (our own idle work handed back, or a second delivery of the
                // same purge): its units are in a lane or in flight; adding them again would
                // send them twice.
                Some(existing) => Some(*existing != delivery.id),
                None => {
                    held.insert(record.id.clone(), delivery.id.clone());
                    None
                }
            }
        };
        match duplicate {
            Some(true) => return self.ack(&delivery.id).await,
            Some(false) => return,
            None => {}
        }
        let key = LaneKey::of(&record.spec);
        let mut queued = 0;
        {
            let mut lanes = self.0.lanes.lock().expect("lanes lock");
            let mut inflight = self.0.inflight.lock().expect("inflight lock");
            for unit in record.units.iter().filter(|u| u.provider == self.name()) {
                match unit.status {
                    UnitStatus::Pending => {
                        lanes.push(&key, &unit.target, &record.id);
                        queued += 1;
                    }
                    UnitStatus::Submitted { task } => {
                        let Some(t) = record.tasks.get(task) else {
                            continue;
                        };
                        merge_inflight(
                            &mut inflight,
                            InFlight {
                                query: TaskQuery {
                                    task_id: t.provider_task_id.clone(),
                                    kind: record.spec.kind,
                                    targets: vec![unit.target.clone()],
                                    submitted_at: t.submit_time,
                                },
                                credits: HashMap::from([(
                                    unit.target.clone(),
                                    vec![record.id.clone()],
                                )]),
                                schedule: PollSchedule::default(),
                            },
                        );
                    }
                    UnitStatus::Succeeded | UnitStatus::Failed { .. } => {}
                }
            }
        }
        if queued > 0 {
            tracing::debug!(purge_id = %record.id, provider = self.name(), targets = queued, "queued for batching");
            self.0.lane_changed.notify_one();
        }
    }

    /// Sends due lanes as soon as the provider's budget allows.
    async fn flush(self) {
        // Submits under way. They end soon after a stop (no new attempt starts), and are
        // waited for so that a batch already sent is recorded; if this worker is aborted
        // instead, dropping the set aborts them too.
        let mut sending = JoinSet::new();
        self.flush_lanes(&mut sending).await;
        while sending.join_next().await.is_some() {}
    }

    async fn flush_lanes(&self, sending: &mut JoinSet<()>) {
        let linger = self.0.settings.linger;
        loop {
            while sending.try_join_next().is_some() {}
            let next = {
                let lanes = self.0.lanes.lock().expect("lanes lock");
                lanes.next_due(linger, |k| self.0.provider.max_per_call(k))
            };
            let changed = self.0.lane_changed.notified();
            let Some((key, due)) = next else {
                tokio::select! {
                    _ = self.0.stop.cancelled() => return,
                    _ = changed => continue,
                }
            };
            if due > std::time::Instant::now() {
                tokio::select! {
                    _ = self.0.stop.cancelled() => return,
                    _ = changed => continue,
                    _ = tokio::time::sleep_until(due.into()) => {}
                }
            }
            let permit = tokio::select! {
                _ = self.0.stop.cancelled() => return,
                p = self.0.submits.clone().acquire_owned() => p.expect("semaphore open"),
            };
            if self.0.provider.known_quota(key.kind).remaining == Some(0) {
                // The day's quota for this kind is gone: no call to pay for.
                let taken = self.take(&key);
                self.fail_quota_gone(key.kind, &taken).await;
                continue;
            }
            match self.wait_budget(&self.submit_charges()).await {
                Budget::Granted => {}
                Budget::Stopped => return,
                Budget::Exhausted => {
                    let taken = self.take(&key);
                    self.fail_targets(
                        &taken.by_purge(),
                        "provider call budget exhausted for today",
                    )
                    .await;
                    continue;
                }
            }
            // Take what the lane holds now: it may have grown while we waited for budget.
            let taken = self.take(&key);
            if taken.targets.is_empty() {
                continue;
            }
            let worker = self.clone();
            sending.spawn(async move {
                let purges: Vec<String> = taken.by_purge().into_keys().collect();
                let sent = std::panic::AssertUnwindSafe(worker.submit(key, taken));
                if futures::FutureExt::catch_unwind(sent).await.is_err() {
                    // A bug, not a provider error. Let go of the purges without acknowledging
                    // them: their work is claimed again after `reclaim_idle` and resumes from
                    // the records.
                    tracing::error!(
                        provider = worker.name(),
                        purges = purges.len(),
                        "submit task panicked; releasing its purges"
                    );
                    let mut held = worker.0.held.lock().expect("held lock");
                    for p in &purges {
                        held.remove(p);
                    }
                }
                drop(permit);
            });
        }
    }

    fn take(&self, key: &LaneKey) -> lanes::Taken {
        let cap = self.0.provider.max_per_call(key.kind);
        self.0.lanes.lock().expect("lanes lock").take(key, cap)
    }

    fn charges(&self, api: &str, rates: &[crate::limiter::Rate]) -> Vec<Charge> {
        rates
            .iter()
            .enumerate()
            .map(|(i, rate)| Charge {
                key: format!("{}:{api}:{i}", self.0.provider.budget),
                limit: Limit::for_rate(*rate, self.0.settings.rate_margin),
                cost: 1,
            })
            .collect()
    }

    fn submit_charges(&self) -> Vec<Charge> {
        self.charges("submit", &self.0.provider.caps.submit_rates)
    }

    fn status_charges(&self) -> Vec<Charge> {
        self.charges("status", &self.0.provider.caps.status_rates)
    }

    /// The documented daily target quotas a batch of `n` targets of `kind` is charged to.
    fn daily_charges(&self, kind: PurgeKind, n: usize) -> Vec<Charge> {
        self.0
            .provider
            .caps
            .daily
            .iter()
            .enumerate()
            .filter(|(_, q)| q.kinds.contains(&kind))
            .map(|(i, q)| Charge {
                key: format!("{}:daily:{i}", self.0.provider.budget),
                limit: Limit::Daily {
                    max: q.max,
                    utc_offset_secs: q.utc_offset_secs,
                },
                cost: n as u32,
            })
            .collect()
    }

    /// Waits until the limiter grants every charge; the purge stays queued meanwhile.
    async fn wait_budget(&self, charges: &[Charge]) -> Budget {
        if self.0.stop.is_cancelled() {
            return Budget::Stopped;
        }
        if charges.is_empty() {
            return Budget::Granted;
        }
        loop {
            let wait = match self.0.limiter.acquire(charges).await {
                Ok(Decision::Granted) => return Budget::Granted,
                Ok(Decision::Exhausted(_)) => return Budget::Exhausted,
                Ok(Decision::Wait(d)) => d,
                Err(e) => {
                    tracing::warn!(provider = self.name(), error = %e, "limiter unavailable; waiting");
                    Duration::from_millis(500)
                }
            };
            if !self.pause(wait.min(Duration::from_secs(5))).await {
                return Budget::Stopped;
            }
        }
    }

    /// Sleeps unless stopped; false when stopped.
    async fn pause(&self, d: Duration) -> bool {
        tokio::select! {
            _ = self.0.stop.cancelled() => false,
            _ = tokio::time::sleep(d) => true,
        }
    }

    /// Polls in-flight tasks under the status budget until they finish.
    async fn poll(self) {
        let every = self.0.settings.poll_interval;
        let chunk = self.0.provider.caps.poll_batch.max(1);
        let max_every = self.0.settings.max_poll_interval;
        while self.pause(every).await {
            let now = std::time::Instant::now();
            let mut tasks: Vec<InFlight> = self
                .0
                .inflight
                .lock()
                .expect("inflight lock")
                .values()
                .filter(|t| t.schedule.due(now))
                .cloned()
                .collect();
            tasks.sort_by_key(|t| t.query.submitted_at);
            for group in tasks.chunks(chunk) {
                match self.wait_budget(&self.status_charges()).await {
                    Budget::Granted => {}
                    Budget::Stopped => return,
                    Budget::Exhausted => break,
                }
                let queries: Vec<TaskQuery> = group.iter().map(|t| t.query.clone()).collect();
                let span = tracing::info_span!(
                    "provider_poll",
                    provider = self.name(),
                    tasks = queries.len()
                );
                let budget = StatusBudget(&self);
                let answer = tracing::Instrument::instrument(
                    self.0.provider.client.poll(&queries, &budget),
                    span,
                )
                .await;
                let progress: HashMap<String, TaskProgress> = match answer {
                    Ok(p) => p.into_iter().collect(),
                    Err(e) => {
                        tracing::warn!(provider = self.name(), error = %e, retryable = e.is_retryable(), "status poll failed");
                        HashMap::new()
                    }
                };
                for task in group {
                    let outcome = match progress.get(&task.query.task_id) {
                        Some(TaskProgress::Finished { failed }) => {
                            Some(Outcome::Finished(failed.iter().cloned().collect()))
                        }
                        Some(TaskProgress::Failed { reason }) => {
                            Some(Outcome::AllFailed(reason.clone()))
                        }
                        Some(TaskProgress::Running) | None => {
                            self.timed_out(task).map(Outcome::AllFailed)
                        }
                    };
                    match outcome {
                        Some(outcome) => self.finish_task(&task.query, outcome).await,
                        None => {
                            let now = std::time::Instant::now();
                            let mut inflight = self.0.inflight.lock().expect("inflight lock");
                            if let Some(entry) = inflight.get_mut(&task.query.task_id) {
                                entry.schedule.still_running(now, every, max_every);
                            }
                        }
                    }
                }
            }
        }
    }

    /// The failure reason of a task running for longer than the task timeout.
    fn timed_out(&self, task: &InFlight) -> Option<String> {
        let age = Utc::now() - task.query.submitted_at;
        let limit = chrono::Duration::from_std(self.0.settings.task_timeout).ok()?;
        (age > limit).then(|| {
            format!(
                "provider task {} did not finish within {:?}",
                task.query.task_id, self.0.settings.task_timeout
            )
        })
    }

    /// Records a finished task on every purge it carried the polled targets for. Targets
    /// merged into the task since the poll began were not asked about: they stay followed.
    async fn finish_task(&self, polled: &TaskQuery, outcome: Outcome) {
        let Some(task) = take_polled(
            &mut self.0.inflight.lock().expect("inflight lock"),
            &polled.task_id,
            &polled.targets,
        ) else {
            return;
        };
        let failed = match outcome {
            Outcome::Finished(failed) => failed,
            Outcome::AllFailed(reason) => task
                .query
                .targets
                .iter()
                .map(|t| (t.clone(), reason.clone()))
                .collect(),
        };
        let mut by_purge: HashMap<&String, HashSet<&String>> = HashMap::new();
        for (target, purges) in &task.credits {
            for p in purges {
                by_purge.entry(p).or_default().insert(target);
            }
        }
        let provider = self.name().to_owned();
        for (purge_id, targets) in by_purge {
            let task_id = &task.query.task_id;
            let change = |r: &mut PurgeRecord| {
                let mut changed = false;
                let mut failures = 0;
                for unit in r
                    .units
                    .iter_mut()
                    .filter(|u| u.provider == provider && targets.contains(&u.target))
                {
                    let UnitStatus::Submitted { task } = unit.status else {
                        continue;
                    };
                    if r.tasks
                        .get(task)
                        .is_none_or(|t| &t.provider_task_id != task_id)
                    {
                        continue;
                    }
                    unit.status = match failed.get(&unit.target) {
                        Some(reason) => {
                            failures += 1;
                            UnitStatus::Failed {
                                reason: reason.clone(),
                            }
                        }
                        None => UnitStatus::Succeeded,
                    };
                    changed = true;
                }
                for t in r
                    .tasks
                    .iter_mut()
                    .filter(|t| &t.provider_task_id == task_id && t.provider == provider)
                {
                    if t.state == TaskState::Running {
                        // Targets the provider refused at submit already failed this task.
                        let refused = t.error.take();
                        t.state = if failures == 0 && refused.is_none() {
                            TaskState::Succeeded
                        } else {
                            TaskState::Failed
                        };
                        let failed = (failures > 0).then(|| format!("{failures} targets failed"));
                        t.error = match (refused, failed) {
                            (Some(a), Some(b)) => Some(format!("{a}; {b}")),
                            (a, b) => a.or(b),
                        };
                        changed = true;
                    }
                }
                changed
            };
            self.update(purge_id, &change).await;
        }
    }

    /// Fails `taken` because the day's quota for `kind` is gone.
    async fn fail_quota_gone(&self, kind: PurgeKind, taken: &lanes::Taken) {
        let reason = format!("daily {kind} quota of provider {:?} exhausted", self.name());
        self.fail_targets(&taken.by_purge(), &reason).await;
    }

    /// Fails the given units (purge id -> targets) with `reason`.
    async fn fail_targets(&self, by_purge: &HashMap<String, Vec<String>>, reason: &str) {
        let provider = self.name().to_owned();
        for (purge_id, targets) in by_purge {
            tracing::warn!(purge_id = %purge_id, provider = %provider, targets = targets.len(), reason, "targets failed");
            let change = |r: &mut PurgeRecord| {
                let mut changed = false;
                for unit in r.units.iter_mut() {
                    if unit.provider == provider
                        && !unit.status.is_terminal()
                        && targets.contains(&unit.target)
                    {
                        unit.status = UnitStatus::Failed {
                            reason: reason.to_owned(),
                        };
                        changed = true;
                    }
                }
                changed
            };
            self.update(purge_id, &change).await;
        }
    }

    /// Applies a change, retrying while the store is unavailable, and acknowledges the work
    /// once this provider is done with the purge.
    async fn update(&self, purge_id: &str, change: crate::store::Change<'_>) {
        let mut delay = Duration::from_millis(100);
        let record = loop {
            match self.0.store.update(purge_id, change).await {
                Ok(r) => break r,
                Err(e) if e.is_retryable() && !self.0.stop.is_cancelled() => {
                    tracing::warn!(purge_id, error = %e, "cannot record progress; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    tracing::error!(purge_id, error = %e, "cannot record progress; the work stays queued");
                    return;
                }
            }
        };
        let done = record.as_ref().is_none_or(|r| r.provider_done(self.name()));
        if let Some(r) = record.as_ref().filter(|r| r.state.is_terminal()) {
            tracing::info!(purge_id, state = ?r.state, "purge finished");
        }
        if done {
            let delivery = self.0.held.lock().expect("held lock").remove(purge_id);
            if let Some(id) = delivery {
                self.ack(&id).await;
            }
        }
    }

    async fn ack(&self, delivery_id: &str) {
        if let Err(e) = self
            .0
            .queue
            .ack(self.name(), &[delivery_id.to_owned()])
            .await
        {
            tracing::warn!(provider = self.name(), error = %e, "cannot acknowledge work; it will be reclaimed and found done");
        }
    }

    /// Reads the provider's quota now and then, so batches and fail-fast checks follow it.
    async fn refresh_quota(self) {
        loop {
            // A quota read is a call to the provider's API like a status poll, paid alike.
            match self.wait_budget(&self.status_charges()).await {
                Budget::Granted => {}
                Budget::Stopped => return,
                Budget::Exhausted => {
                    if !self.pause(self.0.settings.quota_refresh).await {
                        return;
                    }
                    continue;
                }
            }
            match self.0.provider.client.quota().await {
                Ok(q) if !q.is_empty() => self.0.provider.set_quota(q),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(provider = self.name(), error = %e, "cannot read provider quota")
                }
            }
            if !self.pause(self.0.settings.quota_refresh).await {
                return;
            }
        }
    }

    fn track(&self, task: InFlight) {
        merge_inflight(&mut self.0.inflight.lock().expect("inflight lock"), task);
    }
}

/// The status budget, for providers that need several calls for one poll or lookup.
struct StatusBudget<'a>(&'a Worker);

#[async_trait::async_trait]
impl CallBudget for StatusBudget<'_> {
    async fn acquire(&self) -> Result<(), ProviderError> {
        self.0.budget_or_stop(&self.0.status_charges()).await
    }
}

/// Follows `task`, merging its targets and credits into an entry already following the same
/// provider task (adopted from another replica's work, or submitted for several purges).
fn merge_inflight(inflight: &mut HashMap<String, InFlight>, task: InFlight) {
    match inflight.entry(task.query.task_id.clone()) {
        std::collections::hash_map::Entry::Vacant(v) => {
            v.insert(task);
        }
        std::collections::hash_map::Entry::Occupied(mut o) => {
            let entry = o.get_mut();
            for (target, purges) in task.credits {
                if !entry.query.targets.contains(&target) {
                    entry.query.targets.push(target.clone());
                }
                let credits = entry.credits.entry(target).or_default();
                for p in purges {
                    if !credits.contains(&p) {
                        credits.push(p);
                    }
                }
            }
        }
    }
}

/// Takes the `polled` targets of task `task_id` out of `inflight`, with their credits; the
/// task's other targets stay. `None` when the task is no longer followed.
fn take_polled(
    inflight: &mut HashMap<String, InFlight>,
    task_id: &str,
    polled: &[String],
) -> Option<InFlight> {
    let entry = inflight.get_mut(task_id)?;
    let mut done = InFlight {
        query: TaskQuery {
            targets: Vec::new(),
            ..entry.query.clone()
        },
        credits: HashMap::new(),
        schedule: entry.schedule,
    };
    for target in polled {
        if let Some(purges) = entry.credits.remove(target) {
            done.query.targets.push(target.clone());
            done.credits.insert(target.clone(), purges);
        }
    }
    entry
        .query
        .targets
        .retain(|t| entry.credits.contains_key(t));
    if entry.credits.is_empty() {
        inflight.remove(task_id);
    }
    Some(done)
}

/// When a task started, for lookups after an ambiguous submit.
type Since = DateTime<Utc>;

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str, credits: &[(&str, &str)]) -> InFlight {
        let mut t = InFlight {
            query: TaskQuery {
                task_id: id.into(),
                kind: PurgeKind::Url,
                targets: Vec::new(),
                submitted_at: Utc::now(),
            },
            credits: HashMap::new(),
            schedule: PollSchedule::default(),
        };
        for (target, purge) in credits {
            t.query.targets.push((*target).into());
            t.credits.insert((*target).into(), vec![(*purge).into()]);
        }
        t
    }

    #[test]
    fn targets_merged_during_a_poll_stay_followed() {
        let mut inflight = HashMap::new();
        merge_inflight(&mut inflight, task("T", &[("u1", "p1")]));
        let polled = vec!["u1".to_owned()];
        // Another purge's work on the same task is taken over while the poll is out.
        merge_inflight(&mut inflight, task("T", &[("u2", "p2"), ("u1", "p3")]));
        let done = take_polled(&mut inflight, "T", &polled).unwrap();
        assert_eq!(done.query.targets, ["u1"]);
        assert_eq!(done.credits["u1"], ["p1", "p3"]);
        let rest = &inflight["T"];
        assert_eq!(rest.query.targets, ["u2"]);
        assert_eq!(rest.credits["u2"], ["p2"]);
        let done = take_polled(&mut inflight, "T", &["u2".to_owned()]).unwrap();
        assert_eq!(done.credits.len(), 1);
        assert!(inflight.is_empty());
        assert!(take_polled(&mut inflight, "T", &polled).is_none());
    }

    #[test]
    fn running_tasks_are_asked_less_and_less_often() {
        let every = Duration::from_millis(500);
        let max = Duration::from_secs(10);
        let t0 = std::time::Instant::now();
        let mut s = PollSchedule::default();
        assert!(s.due(t0));
        let mut gaps = Vec::new();
        for _ in 0..12 {
            s.still_running(t0, every, max);
            gaps.push(s.next.unwrap() - t0);
        }
        assert_eq!(gaps[0], Duration::from_millis(750));
        assert!(gaps.windows(2).all(|w| w[0] <= w[1]), "{gaps:?}");
        assert_eq!(*gaps.last().unwrap(), max);
        assert!(!s.due(t0) && s.due(t0 + max));
    }
}
