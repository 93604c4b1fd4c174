//! Intake for one provider: claims queued work, takes over work other replicas abandoned,
//! keeps held work alive, and turns each purge's open units into lane targets (pending) or
//! followed tasks (submitted before).

use foldhash::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::inflight::{InFlight, Tasks};
use super::lanes::LaneKey;
use super::outbox::Outbox;
use super::records::{Hold, Records};
use crate::model::{PurgeRecord, UnitStatus};
use crate::providers::{LocalBacklog, TaskQuery};
use crate::queue::{Delivery, Queue};
use crate::store::Store;

/// What intake reads its work from and hands it to.
pub(super) struct Intake {
    pub(super) provider: String,
    /// Where the unsent targets of each purge taken are noted, for start estimates.
    pub(super) local: Arc<LocalBacklog>,
    pub(super) consumer: String,
    pub(super) queue: Arc<dyn Queue>,
    pub(super) store: Arc<dyn Store>,
    pub(super) records: Records,
    pub(super) outbox: Outbox,
    pub(super) tasks: Tasks,
    /// Work items claimed per queue read.
    pub(super) claim_batch: usize,
    /// Work held this long by another replica without a sign of life is taken over.
    pub(super) reclaim_idle: Duration,
    pub(super) stop: CancellationToken,
}

impl Intake {
    fn name(&self) -> &str {
        &self.provider
    }

    /// Claims new work, reclaims abandoned work, and keeps held work alive, until stopped.
    pub(super) async fn run(self) {
        let mut last_upkeep = tokio::time::Instant::now();
        let upkeep_every = self.reclaim_idle / 3;
        // Unsent targets beyond this leave work in the queue for replicas with room, instead
        // of piling it up behind this one's share of the provider budget. Purges only waiting
        // for their provider tasks do not count.
        let max_waiting = self.claim_batch.saturating_mul(16).max(1);
        while !self.stop.is_cancelled() {
            if last_upkeep.elapsed() >= upkeep_every {
                last_upkeep = tokio::time::Instant::now();
                self.upkeep().await;
            }
            if self.outbox.waiting() >= max_waiting {
                self.pause(Duration::from_millis(200)).await;
                continue;
            }
            let claim = self.queue.claim(
                self.name(),
                &self.consumer,
                self.claim_batch,
                Duration::from_secs(1),
            );
            let Some(claimed) = self.stop.run_until_cancelled(claim).await else {
                return;
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

    /// Sleeps unless stopped.
    async fn pause(&self, d: Duration) {
        self.stop.run_until_cancelled(tokio::time::sleep(d)).await;
    }

    async fn upkeep(&self) {
        let held = self.records.deliveries();
        if !held.is_empty()
            && let Err(e) = self
                .queue
                .keep_alive(self.name(), &self.consumer, &held)
                .await
        {
            tracing::warn!(provider = self.name(), error = %e, "cannot refresh held work");
        }
        match self
            .queue
            .reclaim(
                self.name(),
                &self.consumer,
                self.reclaim_idle,
                self.claim_batch,
            )
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
        // One read for the whole claim: a claim can hold hundreds of purges.
        let ids: Vec<&str> = deliveries
            .iter()
            .map(|d| d.item.purge_id.as_str())
            .collect();
        let records = self.store.get_many(&ids).await;
        let mut acks = Vec::new();
        for (d, record) in deliveries.into_iter().zip(records) {
            match record {
                Ok(Some(record)) => acks.extend(self.adopt(d, &record)),
                Ok(None) => acks.push(d.id),
                Err(e) => {
                    // Left unacknowledged; upkeep reclaims it later.
                    tracing::warn!(purge_id = %d.item.purge_id, error = %e, "cannot read claimed purge");
                }
            }
        }
        self.records.ack_all(&acks).await;
    }

    /// Puts the pending units of `record` in their lane and follows its submitted tasks; the
    /// delivery to acknowledge when there is nothing to do.
    fn adopt(&self, delivery: Delivery, record: &PurgeRecord) -> Option<String> {
        if record.provider_done(self.name()) {
            return Some(delivery.id);
        }
        match self.records.hold(&record.id, &delivery.id) {
            // Already ours (our own idle work handed back, or a second delivery of the same
            // purge): its units are in a lane or in flight; adding them again would send
            // them twice.
            Hold::Duplicate => return Some(delivery.id),
            Hold::Again => return None,
            Hold::New => {}
        }
        let units = record.units.iter().filter(|u| u.provider == self.name());
        let pending = units
            .clone()
            // Claimed but not recorded as sent: the replica that claimed them stopped.
            .filter(|u| u.status.is_unsent())
            .map(|u| u.target.as_str());
        let queued = self
            .outbox
            .push(&LaneKey::of(&record.spec), pending, &record.id);
        self.tasks.follow_all(units.filter_map(|unit| {
            let UnitStatus::Submitted { task } = unit.status else {
                return None;
            };
            let t = record.tasks.get(task)?;
            Some(InFlight::new(
                TaskQuery {
                    task_id: t.provider_task_id.clone(),
                    kind: record.spec.kind,
                    targets: vec![unit.target.clone()],
                    submitted_at: t.submit_time,
                },
                HashMap::from_iter([(unit.target.clone(), vec![record.id.clone()])]),
            ))
        }));
        self.local.note_adopted(queued);
        if queued > 0 {
            tracing::debug!(purge_id = %record.id, provider = self.name(), targets = queued, "queued for batching");
        }
        None
    }
}
