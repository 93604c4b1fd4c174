//! Sending one batch: daily quota, retries with backoff and jitter on retryable errors only,
//! splitting on "batch too large", lookup before resending after an ambiguous timeout, and
//! recording the task on every purge it carries targets for.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use chrono::Utc;
use tracing::Instrument;

use super::lanes::{LaneKey, Taken};
use super::{Budget, InFlight, Since, Worker};
use crate::limiter::Decision;
use crate::model::{PurgeRecord, TaskRecord, TaskState, UnitStatus};
use crate::providers::{Batch, ProviderError, Submission, TaskQuery};

impl Worker {
    /// Submits `taken` (whose first call's budget is already granted) and records the outcome.
    pub(super) async fn submit(&self, key: LaneKey, taken: Taken) {
        let fit = self.charge_daily(key.kind, taken.targets.len()).await;
        let taken = if fit < taken.targets.len() {
            // What the day's quota still holds goes out; the rest fails, and the kind is
            // refused at CreatePurge until the provider's next day.
            self.0.provider.mark_exhausted(key.kind);
            let (fits, over) = taken.split_at(fit);
            self.fail_quota_gone(key.kind, &over).await;
            if fits.targets.is_empty() {
                return;
            }
            fits
        } else {
            taken
        };
        let mut parts = vec![(taken, true)];
        while let Some((part, granted)) = parts.pop() {
            let batch = key.batch(part.targets.clone());
            let (result, maybe_sent) = self.send(&batch, granted).await;
            match result {
                Ok(sub) => self.record_submitted(&key, part, sub).await,
                Err(ProviderError::BatchTooLarge { message }) if part.targets.len() > 1 => {
                    tracing::info!(
                        provider = self.name(),
                        targets = part.targets.len(),
                        message,
                        "batch too large; splitting"
                    );
                    let (a, b) = part.split();
                    parts.push((b, false));
                    parts.push((a, false));
                }
                Err(e) if e.is_retryable() && self.0.stop.is_cancelled() => {
                    // Stopping, not failing: the targets stay pending and the unacknowledged
                    // work is taken over by another replica, which pays the quota again.
                    tracing::info!(
                        provider = self.name(),
                        targets = part.targets.len(),
                        "stopping; leaving a batch to another replica"
                    );
                    self.refund_daily(key.kind, &part, &e, maybe_sent).await;
                }
                Err(e) => {
                    if matches!(e, ProviderError::QuotaExhausted { .. }) {
                        self.0.provider.mark_exhausted(key.kind);
                    }
                    self.refund_daily(key.kind, &part, &e, maybe_sent).await;
                    self.fail_targets(&part.by_purge(), &e.to_string()).await;
                }
            }
        }
    }

    /// Charges as many of `n` targets of `kind` as the documented daily quotas still hold
    /// (all of them when the limiter cannot be asked) and says how many.
    async fn charge_daily(&self, kind: crate::model::PurgeKind, n: usize) -> usize {
        let mut charges = self.daily_charges(kind, n);
        if charges.is_empty() {
            return n;
        }
        // Greedy halving: at most about log2(n)^2 limiter calls, never a provider call.
        let (mut fitted, mut step) = (0, n);
        while fitted < n && step > 0 {
            let cost = step.min(n - fitted);
            for c in &mut charges {
                c.cost = cost as u32;
            }
            match self.0.limiter.acquire(&charges).await {
                Ok(Decision::Granted) => fitted += cost,
                Ok(Decision::Wait(_) | Decision::Exhausted(_)) => step /= 2,
                Err(e) => {
                    tracing::warn!(provider = self.name(), error = %e, "cannot check the daily quota; sending anyway");
                    return n;
                }
            }
        }
        fitted
    }

    /// Gives back the daily quota `part` was charged when the provider cannot have counted
    /// it: no attempt may have gone through unanswered, and the last answer was a refusal.
    /// A server error or an unreadable acceptance may have been counted: kept.
    async fn refund_daily(
        &self,
        kind: crate::model::PurgeKind,
        part: &Taken,
        e: &ProviderError,
        maybe_sent: bool,
    ) {
        let refused = matches!(
            e,
            ProviderError::Rejected { .. }
                | ProviderError::Auth { .. }
                | ProviderError::BatchTooLarge { .. }
                | ProviderError::QuotaExhausted { .. }
                | ProviderError::Busy { .. }
                | ProviderError::Throttled { .. }
        );
        if maybe_sent || !refused {
            return;
        }
        let charges = self.daily_charges(kind, part.targets.len());
        if charges.is_empty() {
            return;
        }
        if let Err(err) = self.0.limiter.refund(&charges).await {
            tracing::warn!(provider = self.name(), error = %err, "cannot give back daily quota");
        }
    }

    /// One provider call with retries; every attempt after a granted first one waits for
    /// budget again, and an ambiguous attempt is looked up before the next send. Also says
    /// whether some attempt may have reached the provider without an answer.
    async fn send(
        &self,
        batch: &Batch,
        granted: bool,
    ) -> (Result<Submission, ProviderError>, bool) {
        let started: Since = Utc::now();
        let maybe_sent = AtomicBool::new(false);
        let attempts = AtomicU32::new(0);
        let attempt = || async {
            let n = attempts.fetch_add(1, Ordering::Relaxed);
            if n > 0 && self.0.stop.is_cancelled() {
                // No new call once stopping; the targets stay pending for another replica.
                return Err(ProviderError::Transient {
                    message: "dispatcher stopping".into(),
                    source: None,
                });
            }
            if maybe_sent.load(Ordering::Relaxed) && self.0.provider.client.finds_submitted() {
                self.budget_or_stop(&self.status_charges()).await?;
                if let Some(found) = self.look_up(batch, started).await? {
                    return Ok(found);
                }
            }
            if n > 0 || !granted {
                self.budget_or_stop(&self.submit_charges()).await?;
            }
            let span = tracing::info_span!("provider_call", provider = self.name(), kind = %batch.kind, targets = batch.targets.len(), attempt = n + 1);
            let result = self.0.provider.client.submit(batch).instrument(span).await;
            if let Err(ProviderError::Ambiguous { .. }) = &result {
                maybe_sent.store(true, Ordering::Relaxed);
            }
            result
        };
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(30))
            .with_jitter()
            .with_total_delay(Some(self.0.settings.retry_max_elapsed))
            .without_max_times();
        let stop = self.0.stop.clone();
        let result = attempt
            .retry(backoff)
            .sleep(move |d| {
                let stop = stop.clone();
                async move {
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = tokio::time::sleep(d) => {}
                    }
                }
            })
            .when(|e: &ProviderError| e.is_retryable() && !self.0.stop.is_cancelled())
            .adjust(|e: &ProviderError, d: Option<Duration>| d.map(|d| e.retry_after().map_or(d, |r| r.max(d))))
            .notify(|e: &ProviderError, d: Duration| {
                tracing::warn!(provider = self.name(), error = %e, retry_in = ?d, "provider call failed; retrying");
            })
            .await;
        let maybe_sent = maybe_sent.load(Ordering::Relaxed);
        // Stopping after a call that may have gone through: one last lookup if the budget
        // allows it now, so another replica does not send the batch again.
        if result.is_err()
            && maybe_sent
            && self.0.stop.is_cancelled()
            && self.0.provider.client.finds_submitted()
            && matches!(
                self.0.limiter.acquire(&self.status_charges()).await,
                Ok(Decision::Granted)
            )
            && let Ok(Some(found)) = self.look_up(batch, started).await
        {
            return (Ok(found), maybe_sent);
        }
        (result, maybe_sent)
    }

    /// The provider task a possibly sent `batch` made, if the provider can tell.
    async fn look_up(
        &self,
        batch: &Batch,
        started: Since,
    ) -> Result<Option<Submission>, ProviderError> {
        // Whole seconds: providers' task times have no finer resolution.
        let since = started - chrono::Duration::seconds(2);
        let budget = super::StatusBudget(self);
        let found = self
            .0
            .provider
            .client
            .find_submitted(batch, since, &budget)
            .await?;
        if let Some(found) = &found {
            tracing::info!(provider = self.name(), task = %found.task_id, "found the task of an ambiguous submit");
        }
        Ok(found)
    }

    pub(super) async fn budget_or_stop(
        &self,
        charges: &[crate::limiter::Charge],
    ) -> Result<(), ProviderError> {
        match self.wait_budget(charges).await {
            Budget::Granted => Ok(()),
            Budget::Exhausted => Err(ProviderError::QuotaExhausted {
                message: format!(
                    "call budget of provider {:?} exhausted for today",
                    self.name()
                ),
            }),
            Budget::Stopped => Err(ProviderError::Transient {
                message: "dispatcher stopping".into(),
                source: None,
            }),
        }
    }

    /// Records the provider task on each purge of the batch and starts following it.
    async fn record_submitted(&self, key: &LaneKey, part: Taken, sub: Submission) {
        let now = Utc::now();
        let rejected: std::collections::HashMap<&str, &str> = sub
            .rejected
            .iter()
            .map(|(t, r)| (t.as_str(), r.as_str()))
            .collect();
        let provider = self.name().to_owned();
        for (purge_id, targets) in part.by_purge() {
            tracing::info!(purge_id = %purge_id, provider = %provider, task = %sub.task_id, targets = targets.len(), "targets submitted");
            let change = |r: &mut PurgeRecord| {
                let task = r.tasks.len();
                let mut carried = 0;
                let mut refused = 0;
                for unit in r.units.iter_mut() {
                    if unit.provider != provider
                        || unit.status != UnitStatus::Pending
                        || !targets.contains(&unit.target)
                    {
                        continue;
                    }
                    carried += 1;
                    unit.status = match rejected.get(unit.target.as_str()) {
                        Some(reason) => {
                            refused += 1;
                            UnitStatus::Failed {
                                reason: (*reason).to_owned(),
                            }
                        }
                        None => UnitStatus::Submitted { task },
                    };
                }
                if carried == 0 {
                    return false;
                }
                // A task whose every target was refused is over: nothing follows it.
                let all_refused = refused == carried;
                r.tasks.push(TaskRecord {
                    provider: provider.clone(),
                    provider_task_id: sub.task_id.clone(),
                    state: if all_refused {
                        TaskState::Failed
                    } else {
                        TaskState::Running
                    },
                    target_count: carried,
                    error: (refused > 0)
                        .then(|| format!("{refused} of {carried} targets refused by the provider")),
                    request_id: sub.request_id.clone(),
                    submit_time: now,
                });
                true
            };
            self.update(&purge_id, &change).await;
        }
        let credits: std::collections::HashMap<String, Vec<String>> = part
            .credits
            .into_iter()
            .filter(|(t, _)| !rejected.contains_key(t.as_str()))
            .collect();
        if credits.is_empty() {
            return;
        }
        self.track(InFlight {
            query: TaskQuery {
                task_id: sub.task_id,
                kind: key.kind,
                targets: credits.keys().cloned().collect(),
                submitted_at: now,
            },
            credits,
            schedule: super::PollSchedule::default(),
        });
    }
}
