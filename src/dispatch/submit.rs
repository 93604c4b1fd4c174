//! Sending one batch: daily quota, retries with backoff and jitter on retryable errors only,
//! splitting on "batch too large", lookup before resending after an ambiguous timeout, and
//! recording the task on every purge it carries targets for.

use foldhash::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::budget::{Budget, Op};
use super::inflight::{InFlight, Tasks};
use super::lanes::{LaneKey, Taken};
use super::records::Records;
use crate::providers::{Batch, ProviderError, ProviderHandle, Submission, TaskQuery};

/// When a task started, for lookups after an ambiguous submit.
type Since = DateTime<Utc>;

/// Sends batches for one provider and hands what they started to polling; a cheap handle.
#[derive(Clone)]
pub(super) struct Submitter(Arc<Inner>);

struct Inner {
    provider: ProviderHandle,
    budget: Budget,
    records: Records,
    tasks: Tasks,
    /// Retries of a failing submit stop after this long; its targets then fail.
    retry_max_elapsed: Duration,
    stop: CancellationToken,
}

impl Submitter {
    pub(super) fn new(
        provider: ProviderHandle,
        budget: Budget,
        records: Records,
        tasks: Tasks,
        retry_max_elapsed: Duration,
        stop: CancellationToken,
    ) -> Submitter {
        Submitter(Arc::new(Inner {
            provider,
            budget,
            records,
            tasks,
            retry_max_elapsed,
            stop,
        }))
    }

    fn name(&self) -> &str {
        &self.0.provider.name
    }

    /// Submits `taken` (whose first call's budget was granted at `granted_at`, by the
    /// limiter's clock) and records the outcome.
    pub(super) async fn submit(&self, key: LaneKey, taken: Taken, granted_at: u64) {
        let budget = &self.0.budget;
        // Claimed on the records before any call: what CancelPurge withdrew drops out here.
        let taken = self.0.records.claim(taken).await;
        if taken.targets.is_empty() {
            // Every target was cancelled while the batch waited for budget: no call, and the
            // granted one is given back for the next batch.
            budget.unspend_submit(key.kind, granted_at).await;
            return;
        }
        let fit = budget.charge_daily(key.kind, taken.targets.len()).await;
        let taken = if fit < taken.targets.len() {
            // What the day's quota still holds goes out; the rest fails, and the kind is
            // refused at CreatePurge until the provider's next day.
            self.0.provider.mark_exhausted(key.kind);
            let (fits, over) = taken.split_at(fit);
            self.0.records.quota_refused(key.kind, &over).await;
            if fits.targets.is_empty() {
                return;
            }
            fits
        } else {
            taken
        };
        let mut parts = vec![(taken, true)];
        while let Some((part, granted)) = parts.pop() {
            let batch = key.batch(&part);
            let (result, maybe_sent) = self.send(&batch, granted).await;
            match result {
                Ok(sub) => self.submitted(&key, part, sub).await,
                Err(ProviderError::BatchTooLarge { message }) if part.targets.len() > 1 => {
                    let sent = part.targets.len();
                    tracing::info!(
                        provider = self.name(),
                        targets = sent,
                        message,
                        "batch too large; splitting"
                    );
                    budget.batch_too_large(key.kind, sent).await;
                    // Pieces of the cap now known (at most half), first piece sent first.
                    let cap = self.0.provider.max_per_call(key.kind).min(sent.div_ceil(2));
                    let mut pieces = Vec::new();
                    let mut rest = part;
                    while rest.targets.len() > cap {
                        let (piece, tail) = rest.split_at(cap);
                        pieces.push((piece, false));
                        rest = tail;
                    }
                    pieces.push((rest, false));
                    parts.extend(pieces.into_iter().rev());
                }
                Err(e) if e.is_retryable() && self.0.stop.is_cancelled() => {
                    // Stopping, not failing: the targets stay pending and the unacknowledged
                    // work is taken over by another replica, which pays the quota again.
                    tracing::info!(
                        provider = self.name(),
                        targets = part.targets.len(),
                        "stopping; leaving a batch to another replica"
                    );
                    budget
                        .refund_daily(key.kind, part.targets.len(), &e, maybe_sent)
                        .await;
                }
                Err(e) => {
                    if matches!(e, ProviderError::QuotaExhausted { .. }) {
                        self.0.provider.mark_exhausted(key.kind);
                    }
                    budget
                        .refund_daily(key.kind, part.targets.len(), &e, maybe_sent)
                        .await;
                    self.0
                        .records
                        .targets_failed(&part.by_purge(), &e.to_string())
                        .await;
                }
            }
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
                self.0.budget.status_or_stop(Op::Lookup).await?;
                if let Some(found) = self.look_up(batch, started).await? {
                    return Ok(found);
                }
            }
            if n > 0 || !granted {
                self.0.budget.submit_or_stop(batch.kind).await?;
            }
            self.0.budget.items_or_stop(batch).await?;
            let span = tracing::info_span!("provider_call", provider = self.name(), kind = %batch.kind, targets = batch.targets.len(), attempt = n + 1);
            let result = self.0.provider.client.submit(batch).instrument(span).await;
            match &result {
                Err(ProviderError::Ambiguous { .. }) => maybe_sent.store(true, Ordering::Relaxed),
                Err(ProviderError::Throttled {
                    retry_after: Some(wait),
                    ..
                }) => self.0.budget.pause_submits(*wait).await,
                _ => {}
            }
            result
        };
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(30))
            .with_jitter()
            .with_total_delay(Some(self.0.retry_max_elapsed))
            .without_max_times();
        let stop = self.0.stop.clone();
        let result = attempt
            .retry(backoff)
            .sleep(move |d| {
                let stop = stop.clone();
                async move {
                    stop.run_until_cancelled(tokio::time::sleep(d)).await;
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
            && self.0.budget.status_now(Op::Lookup).await
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
        let budget = self.0.budget.status_calls(Op::Lookup);
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

    /// Records the provider task on each purge of the batch and starts following it.
    async fn submitted(&self, key: &LaneKey, part: Taken, sub: Submission) {
        let now = Utc::now();
        self.0.records.submitted(&part, &sub, now).await;
        let rejected: HashSet<&str> = sub.rejected.iter().map(|(t, _)| t.as_str()).collect();
        let credits: HashMap<String, Vec<String>> = part
            .credits
            .into_iter()
            .filter(|(t, _)| !rejected.contains(t.as_str()))
            .collect();
        if credits.is_empty() {
            return;
        }
        self.0.tasks.follow(InFlight::new(
            TaskQuery {
                task_id: sub.task_id,
                kind: key.kind,
                targets: credits.keys().cloned().collect(),
                submitted_at: now,
            },
            credits,
        ));
    }
}
