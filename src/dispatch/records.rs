//! Writing what happened to one provider's share of purges: each outcome is one transition of
//! the purge record (`model`), applied through the store; once the provider is done with a
//! purge, the queue delivery it was held under is acknowledged.

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::inflight::InFlight;
use super::lanes::Taken;
use crate::model::{PurgeKind, PurgeRecord, PurgeState, Submitted, quota_reason};
use crate::providers::{LocalBacklog, ProviderHandle, Submission};
use crate::queue::Queue;
use crate::store::{Change, Store};

/// How a delivery of a purge relates to what this replica already holds.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Hold {
    /// Newly held: its units are to be queued and followed.
    New,
    /// The delivery it is held under came back (idle work handed back): nothing to do.
    Again,
    /// A second delivery of a purge held under another: to be acknowledged, not worked twice.
    Duplicate,
}

/// One provider's record writer and the deliveries it holds, as a cheap handle.
#[derive(Clone)]
pub(super) struct Records(Arc<Inner>);

struct Inner {
    provider: String,
    /// Where the count of held purges is noted, for start estimates.
    local: Arc<LocalBacklog>,
    store: Arc<dyn Store>,
    queue: Arc<dyn Queue>,
    stop: CancellationToken,
    /// Purge id -> the delivery to acknowledge when this provider is done with it.
    held: Mutex<HashMap<String, String>>,
}

impl Records {
    pub(super) fn new(
        provider: &ProviderHandle,
        store: Arc<dyn Store>,
        queue: Arc<dyn Queue>,
        stop: CancellationToken,
    ) -> Records {
        Records(Arc::new(Inner {
            provider: provider.name.clone(),
            local: provider.local().clone(),
            store,
            queue,
            stop,
            held: Mutex::default(),
        }))
    }

    fn name(&self) -> &str {
        &self.0.provider
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.0.held.lock().expect("held lock")
    }

    /// Holds `purge_id` under `delivery_id` unless it is held already.
    pub(super) fn hold(&self, purge_id: &str, delivery_id: &str) -> Hold {
        let mut held = self.held();
        match held.get(purge_id) {
            Some(existing) if existing == delivery_id => Hold::Again,
            Some(_) => Hold::Duplicate,
            None => {
                held.insert(purge_id.to_owned(), delivery_id.to_owned());
                self.0.local.note_held(held.len());
                Hold::New
            }
        }
    }

    /// The deliveries held now, to keep alive in the queue.
    pub(super) fn deliveries(&self) -> Vec<String> {
        self.held().values().cloned().collect()
    }

    /// Lets go of `purges` without acknowledging them: their work is claimed again after
    /// `reclaim_idle` and resumes from the records.
    pub(super) fn release(&self, purges: &[String]) {
        let mut held = self.held();
        for p in purges {
            held.remove(p);
        }
        self.0.local.note_held(held.len());
    }

    /// Claims `taken` for sending on each of its purges (a compare-and-set in the store, before
    /// the provider call) and returns what may be sent: the targets still credited to some
    /// purge whose unit is now `Sending`. Units CancelPurge withdrew meanwhile drop out, so a
    /// target is either sent or cancelled, never both, whichever replica holds it.
    pub(super) async fn claim(&self, taken: Taken) -> Taken {
        // Purges whose record could not be claimed, and targets withdrawn from the others:
        // both usually empty.
        let mut lost: HashSet<String> = HashSet::new();
        let mut withdrawn: HashMap<String, HashSet<String>> = HashMap::new();
        {
            let by_purge = taken.by_purge();
            let ids: Vec<&str> = by_purge.keys().copied().collect();
            let records = self
                .update_each(&ids, &|r| {
                    by_purge
                        .get(r.id.as_str())
                        .is_some_and(|set| r.claim(self.name(), set))
                })
                .await;
            for (purge_id, record) in ids.iter().zip(records) {
                let Some(record) = record else {
                    lost.insert((*purge_id).to_owned());
                    continue;
                };
                let refs: Vec<&str> = by_purge[purge_id].iter().copied().collect();
                let sendable: HashSet<&str> =
                    record.sendable(self.name(), &refs).into_iter().collect();
                if sendable.len() < refs.len() {
                    tracing::info!(purge_id = %purge_id, provider = self.name(), withdrawn = refs.len() - sendable.len(), "cancelled targets not sent");
                    withdrawn.insert(
                        (*purge_id).to_owned(),
                        refs.iter()
                            .filter(|t| !sendable.contains(*t))
                            .map(|t| (*t).to_owned())
                            .collect(),
                    );
                }
            }
        }
        let mut credits = taken.credits;
        let targets = taken
            .targets
            .into_iter()
            .filter(|t| {
                let Some(purges) = credits.get_mut(t) else {
                    return false;
                };
                if !lost.is_empty() || !withdrawn.is_empty() {
                    purges.retain(|p| {
                        !lost.contains(p) && !withdrawn.get(p).is_some_and(|w| w.contains(t))
                    });
                }
                !purges.is_empty()
            })
            .collect::<Vec<_>>();
        credits.retain(|_, purges| !purges.is_empty());
        Taken { targets, credits }
    }

    /// Records `sub`, which carried `part`, on each purge of the batch.
    pub(super) async fn submitted(&self, part: &Taken, sub: &Submission, now: DateTime<Utc>) {
        let rejected: HashMap<&str, &str> = sub
            .rejected
            .iter()
            .map(|(t, r)| (t.as_str(), r.as_str()))
            .collect();
        let submitted = Submitted {
            provider: self.name(),
            task_id: &sub.task_id,
            request_id: sub.request_id.as_deref(),
            rejected: &rejected,
        };
        let by_purge = part.by_purge();
        // One line a call; a call can carry a target for thousands of purges.
        tracing::info!(provider = self.name(), task = %sub.task_id, targets = part.targets.len(), purges = by_purge.len(), "targets submitted");
        let ids: Vec<&str> = by_purge.keys().copied().collect();
        self.update_each(&ids, &|r| {
            by_purge
                .get(r.id.as_str())
                .is_some_and(|targets| r.submitted(&submitted, targets, now))
        })
        .await;
    }

    /// Records the end of the polled part `done` of a task on every purge it carried targets
    /// for; `failed` holds the targets that failed, with the reason.
    pub(super) async fn task_finished(&self, done: &InFlight, failed: &HashMap<String, String>) {
        let mut by_purge: HashMap<&str, HashSet<&str>> = HashMap::new();
        for (target, purges) in &done.credits {
            for p in purges {
                by_purge.entry(p).or_default().insert(target);
            }
        }
        let task_id = &done.query.task_id;
        let ids: Vec<&str> = by_purge.keys().copied().collect();
        self.update_each(&ids, &|r| {
            by_purge
                .get(r.id.as_str())
                .is_some_and(|targets| r.task_finished(self.name(), task_id, targets, failed))
        })
        .await;
    }

    /// Fails the given units (purge id -> targets) with `reason`.
    pub(super) async fn targets_failed(
        &self,
        by_purge: &HashMap<&str, HashSet<&str>>,
        reason: &str,
    ) {
        for (purge_id, targets) in by_purge {
            tracing::warn!(purge_id = %purge_id, provider = self.name(), targets = targets.len(), reason, "targets failed");
        }
        let ids: Vec<&str> = by_purge.keys().copied().collect();
        self.update_each(&ids, &|r| {
            by_purge
                .get(r.id.as_str())
                .is_some_and(|targets| r.targets_failed(self.name(), targets, reason))
        })
        .await;
    }

    /// Fails `taken` because the day's quota for `kind` is gone.
    pub(super) async fn quota_refused(&self, kind: PurgeKind, taken: &Taken) {
        let reason = quota_reason(kind, self.name());
        let by_purge = taken.by_purge();
        for (purge_id, targets) in &by_purge {
            tracing::warn!(purge_id = %purge_id, provider = self.name(), targets = targets.len(), reason, "targets failed");
        }
        let ids: Vec<&str> = by_purge.keys().copied().collect();
        self.update_each(&ids, &|r| {
            by_purge
                .get(r.id.as_str())
                .is_some_and(|targets| r.quota_refused(self.name(), targets))
        })
        .await;
    }

    /// Applies a change to each of `ids` (one store call for all), retrying those the store
    /// cannot write now, and acknowledges, in one call, the work of every purge this provider
    /// is now done with. The records after the change, in order: `None` for a purge that is
    /// gone or could not be written.
    async fn update_each(&self, ids: &[&str], change: Change<'_>) -> Vec<Option<Arc<PurgeRecord>>> {
        let mut after: Vec<Option<Arc<PurgeRecord>>> = vec![None; ids.len()];
        // Whether each purge's change was written (or the purge is gone).
        let mut written = vec![false; ids.len()];
        let mut pending: Vec<usize> = (0..ids.len()).collect();
        let mut delay = Duration::from_millis(100);
        let mut failed = Vec::new();
        while !pending.is_empty() {
            let batch: Vec<&str> = pending.iter().map(|&i| ids[i]).collect();
            let results = self.0.store.update_many(&batch, change).await;
            let mut retry = Vec::new();
            for (&i, result) in pending.iter().zip(results) {
                match result {
                    Ok(record) => {
                        after[i] = record;
                        written[i] = true;
                    }
                    Err(e) if e.is_retryable() && !self.0.stop.is_cancelled() => {
                        if retry.is_empty() {
                            tracing::warn!(purge_id = ids[i], error = %e, "cannot record progress; retrying");
                        }
                        retry.push(i);
                    }
                    Err(e) => {
                        tracing::error!(purge_id = ids[i], error = %e, "cannot record progress; the work stays queued");
                        failed.push(ids[i].to_owned());
                    }
                }
            }
            if !retry.is_empty() {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            pending = retry;
        }
        // Let go without acknowledging: the work is claimed again after `reclaim_idle`, by
        // whichever replica, and resumes from the record.
        self.release(&failed);
        let mut acks = Vec::new();
        {
            let mut held = self.held();
            for (i, purge_id) in ids.iter().enumerate() {
                if !written[i] {
                    continue;
                }
                let record = after[i].as_deref();
                if let Some(r) = record.filter(|r| r.state.is_terminal()) {
                    // Per purge: DEBUG when it succeeded (the call it rode on is logged at
                    // INFO), INFO otherwise.
                    if r.state == PurgeState::Succeeded {
                        tracing::debug!(purge_id, state = ?r.state, "purge finished");
                    } else {
                        tracing::info!(purge_id, state = ?r.state, "purge finished");
                    }
                }
                if record.is_none_or(|r| r.provider_done(self.name()))
                    && let Some(delivery) = held.remove(*purge_id)
                {
                    acks.push(delivery);
                }
            }
            self.0.local.note_held(held.len());
        }
        self.ack_all(&acks).await;
        after
    }

    /// Acknowledges deliveries; one that fails is reclaimed later and found done.
    pub(super) async fn ack_all(&self, delivery_ids: &[String]) {
        if delivery_ids.is_empty() {
            return;
        }
        if let Err(e) = self.0.queue.ack(self.name(), delivery_ids).await {
            tracing::warn!(provider = self.name(), error = %e, "cannot acknowledge work; it will be reclaimed and found done");
        }
    }
}
