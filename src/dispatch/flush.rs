//! Flushing one provider's lanes: sends each lane when it is full or has lingered long enough,
//! once a submit slot and the provider's call budget allow, and fails what a spent quota or
//! budget cannot carry.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::budget::{Budget, Grant};
use super::lanes::{LaneKey, Taken};
use super::outbox::Outbox;
use super::records::Records;
use super::submit::Submitter;
use crate::providers::ProviderHandle;

/// One provider's flush loop and what it needs.
pub(super) struct Flusher {
    pub(super) provider: ProviderHandle,
    pub(super) outbox: Outbox,
    pub(super) budget: Budget,
    pub(super) records: Records,
    pub(super) submitter: Submitter,
    /// Submits in flight at once.
    pub(super) submits: Arc<Semaphore>,
    /// How long a batch waits for more targets before it is sent anyway.
    pub(super) linger: Duration,
    pub(super) stop: CancellationToken,
    pub(super) metrics: crate::metrics::Metrics,
}

impl Flusher {
    /// Sends due lanes as soon as the provider's budget allows, until stopped.
    pub(super) async fn run(self) {
        // Submits under way. They end soon after a stop (no new attempt starts), and are
        // waited for so that a batch already sent is recorded; if the dispatcher is aborted
        // instead, dropping the set aborts them too.
        let mut sending = JoinSet::new();
        self.flush(&mut sending).await;
        while sending.join_next().await.is_some() {}
    }

    async fn flush(&self, sending: &mut JoinSet<()>) {
        loop {
            while sending.try_join_next().is_some() {}
            let next = self
                .outbox
                .next_due(self.linger, |k| self.provider.max_per_call(k));
            let changed = self.outbox.changed();
            let Some((key, due)) = next else {
                tokio::select! {
                    _ = self.stop.cancelled() => return,
                    _ = changed => continue,
                }
            };
            if due > Instant::now() {
                tokio::select! {
                    _ = self.stop.cancelled() => return,
                    _ = changed => continue,
                    _ = tokio::time::sleep_until(due.into()) => {}
                }
            }
            let permit = tokio::select! {
                _ = self.stop.cancelled() => return,
                p = self.submits.clone().acquire_owned() => p.expect("semaphore open"),
            };
            if self.provider.known_quota(key.kind).remaining == Some(0) {
                // The day's quota for this kind is gone: no call to pay for.
                let taken = self.take(&key);
                self.records.quota_refused(key.kind, &taken).await;
                continue;
            }
            let granted_at = match self.budget.submit(key.kind).await {
                Grant::Granted(at) => at,
                Grant::Stopped => return,
                Grant::Exhausted => {
                    let taken = self.take(&key);
                    self.records
                        .targets_failed(
                            &taken.by_purge(),
                            "provider call budget exhausted for today",
                        )
                        .await;
                    continue;
                }
            };
            // Take what the lane holds now: it may have grown while we waited for budget.
            let taken = self.take(&key);
            if taken.targets.is_empty() {
                self.budget.unspend_submit(key.kind, granted_at).await;
                continue;
            }
            self.metrics
                .deduplicated(&self.provider.name, key.kind, taken.saved());
            let submitter = self.submitter.clone();
            let records = self.records.clone();
            let provider = self.provider.name.clone();
            sending.spawn(async move {
                let purges = taken.purges();
                let sent = std::panic::AssertUnwindSafe(submitter.submit(key, taken, granted_at));
                if futures::FutureExt::catch_unwind(sent).await.is_err() {
                    // A bug, not a provider error. Let go of the purges without acknowledging
                    // them: their work is claimed again after `reclaim_idle` and resumes from
                    // the records.
                    tracing::error!(
                        provider,
                        purges = purges.len(),
                        "submit task panicked; releasing its purges"
                    );
                    records.release(&purges);
                }
                drop(permit);
            });
        }
    }

    fn take(&self, key: &LaneKey) -> Taken {
        self.outbox.take(key, self.provider.max_per_call(key.kind))
    }
}
