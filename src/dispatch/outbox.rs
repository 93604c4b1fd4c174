//! Targets waiting to be sent for one provider: the lanes intake fills and the flusher drains,
//! with a wake-up for the flusher when they change.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::lanes::{LaneKey, Lanes, Taken};
use crate::model::PurgeKind;
use crate::providers::LocalBacklog;

/// One provider's lanes, as a cheap handle.
#[derive(Clone)]
pub(super) struct Outbox(Arc<Inner>);

struct Inner {
    lanes: Mutex<Lanes>,
    changed: Notify,
    /// Where the count of waiting targets is noted at every change, for start estimates.
    local: Arc<LocalBacklog>,
}

impl Outbox {
    pub(super) fn new(local: Arc<LocalBacklog>) -> Outbox {
        Outbox(Arc::new(Inner {
            lanes: Mutex::default(),
            changed: Notify::new(),
            local,
        }))
    }

    fn lanes(&self) -> MutexGuard<'_, Lanes> {
        self.0.lanes.lock().expect("lanes lock")
    }

    /// Queues `targets` of `purge_id` in lane `key` and wakes the flusher; says how many.
    pub(super) fn push<'a>(
        &self,
        key: &LaneKey,
        targets: impl IntoIterator<Item = &'a str>,
        purge_id: &str,
    ) -> usize {
        let mut queued = 0;
        {
            let mut lanes = self.lanes();
            for target in targets {
                lanes.push(key, target, purge_id);
                queued += 1;
            }
            self.0.local.note_waiting(lanes.waiting());
        }
        if queued > 0 {
            self.0.changed.notify_one();
        }
        queued
    }

    /// Targets waiting to be sent, over every lane.
    pub(super) fn waiting(&self) -> usize {
        self.lanes().waiting()
    }

    /// The lane to send next and when it is due; see [`Lanes::next_due`].
    pub(super) fn next_due(
        &self,
        linger: Duration,
        cap: impl Fn(PurgeKind) -> usize,
    ) -> Option<(LaneKey, Instant)> {
        self.lanes().next_due(linger, cap)
    }

    /// Takes up to `cap` targets from lane `key`.
    pub(super) fn take(&self, key: &LaneKey, cap: usize) -> Taken {
        let mut lanes = self.lanes();
        let taken = lanes.take(key, cap);
        self.0.local.note_waiting(lanes.waiting());
        taken
    }

    /// Resolves at the next change after this call.
    pub(super) fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.0.changed.notified()
    }
}
