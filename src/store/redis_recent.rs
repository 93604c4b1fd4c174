//! The Redis store's recent records: what this replica last read in a batch or wrote, kept as
//! the starting point of the next batch change, so the dispatcher's updates of a purge
//! (claimed, submitted, finished) skip reading it back from Redis each time.
//!
//! Only a hint: every write is a compare-and-set on the record's version, so a record another
//! replica changed meanwhile costs one refused write and a read, never a lost change.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::model::PurgeRecord;

/// Records kept at most: about what a busy replica has in flight (read by the intake, not
/// finished yet). A finished purge is dropped at once, so an idle replica keeps none.
pub(super) const RECENT_RECORDS: usize = 4096;

pub(super) struct Recent {
    inner: Mutex<Inner>,
    capacity: usize,
}

#[derive(Default)]
struct Inner {
    records: HashMap<String, Arc<PurgeRecord>>,
    /// Ids in the order they were first kept, for eviction; may hold ids dropped since.
    order: VecDeque<String>,
}

impl Recent {
    pub(super) fn new(capacity: usize) -> Recent {
        Recent {
            inner: Mutex::default(),
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("recent records lock")
    }

    /// The record of `id` as last seen here, if kept.
    pub(super) fn get(&self, id: &str) -> Option<Arc<PurgeRecord>> {
        self.lock().records.get(id).cloned()
    }

    /// Keeps `record` as the latest seen of its purge; a finished one is dropped instead, as
    /// the dispatcher is done with it.
    pub(super) fn keep(&self, record: Arc<PurgeRecord>) {
        if record.state.is_terminal() {
            self.forget(&record.id);
            return;
        }
        let mut inner = self.lock();
        let id = record.id.clone();
        if inner.records.insert(id.clone(), record).is_none() {
            inner.order.push_back(id);
        }
        while inner.records.len() > self.capacity {
            let Some(oldest) = inner.order.pop_front() else {
                break;
            };
            inner.records.remove(&oldest);
        }
        // Ids dropped by `forget` stay in the order until they reach its front: compacted
        // when they outnumber the records, so the order stays bounded too.
        if inner.order.len() > 2 * self.capacity.max(inner.records.len()) {
            let Inner { records, order } = &mut *inner;
            order.retain(|id| records.contains_key(id));
        }
    }

    /// Drops `id`: it changed elsewhere, is gone, or could not be written.
    pub(super) fn forget(&self, id: &str) {
        self.lock().records.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Action, PurgeKind, PurgeSpec, PurgeState};

    fn record(id: &str) -> Arc<PurgeRecord> {
        let spec = PurgeSpec {
            provider: "sandbox".into(),
            providers: vec!["sandbox".into()],
            kind: PurgeKind::Url,
            targets: vec!["https://a/1".into()],
            action: Action::Invalidate,
            hosts: vec![],
            headers: Default::default(),
            labels: Default::default(),
            idempotency_key: None,
        };
        Arc::new(PurgeRecord::new(
            id.into(),
            "c".into(),
            spec,
            chrono::Utc::now(),
        ))
    }

    #[test]
    fn the_oldest_is_evicted_past_capacity_and_a_finished_one_is_dropped() {
        let recent = Recent::new(2);
        recent.keep(record("a"));
        recent.keep(record("b"));
        recent.keep(record("a"));
        recent.keep(record("c"));
        assert!(recent.get("a").is_none(), "first kept, first evicted");
        assert!(recent.get("b").is_some() && recent.get("c").is_some());
        let mut done = Arc::unwrap_or_clone(record("b"));
        done.state = PurgeState::Succeeded;
        recent.keep(Arc::new(done));
        assert!(recent.get("b").is_none());
    }

    #[test]
    fn forgotten_ids_do_not_grow_the_order() {
        let recent = Recent::new(4);
        for i in 0..1000 {
            let id = format!("p{i}");
            recent.keep(record(&id));
            recent.forget(&id);
        }
        let inner = recent.lock();
        assert!(inner.records.is_empty());
        assert!(
            inner.order.len() <= 8,
            "order kept {} ids",
            inner.order.len()
        );
    }
}
