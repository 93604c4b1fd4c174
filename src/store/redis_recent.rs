//! The Redis store's recent records: what this replica last read in a batch or wrote, kept as
//! the starting point of the next batch change, so the dispatcher's updates of a purge
//! (claimed, submitted, finished) skip reading it back from Redis each time.
//!
//! Only a hint: every write is a compare-and-set on the record's version, so a record another
//! replica changed meanwhile costs one refused write and a read, never a lost change.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::model::PurgeRecord;

/// Records kept at most, and their units (targets x providers) at most: a few MB however
/// large the purges. A finished purge is dropped at once; the oldest kept goes first.
pub(super) const RECENT_RECORDS: usize = 4096;
pub(super) const RECENT_UNITS: usize = 32 * 1024;

pub(super) struct Recent {
    inner: Mutex<Inner>,
    max_records: usize,
    max_units: usize,
}

#[derive(Default)]
struct Inner {
    /// Id -> (the generation it was kept under, the record).
    records: HashMap<String, (u64, Arc<PurgeRecord>)>,
    /// Ids in the order they were kept, each with its generation: an entry whose generation
    /// is no longer the record's (dropped, or kept again since) is stale and skipped.
    order: VecDeque<(u64, String)>,
    units: usize,
    generation: u64,
}

impl Inner {
    fn remove(&mut self, id: &str) {
        if let Some((_, r)) = self.records.remove(id) {
            self.units -= r.units.len();
        }
    }
}

impl Recent {
    pub(super) fn new(max_records: usize, max_units: usize) -> Recent {
        Recent {
            inner: Mutex::default(),
            max_records,
            max_units,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("recent records lock")
    }

    /// The record of `id` as last seen here, if kept.
    pub(super) fn get(&self, id: &str) -> Option<Arc<PurgeRecord>> {
        self.lock().records.get(id).map(|(_, r)| r.clone())
    }

    /// Keeps `record` as the latest seen of its purge, unless a newer version is kept; a
    /// finished one is dropped instead, as the dispatcher is done with it.
    pub(super) fn keep(&self, record: Arc<PurgeRecord>) {
        if record.state.is_terminal() {
            self.forget(&record.id);
            return;
        }
        let mut inner = self.lock();
        if let Some((_, kept)) = inner.records.get(&record.id)
            && kept.version > record.version
        {
            return;
        }
        inner.remove(&record.id);
        inner.generation += 1;
        let generation = inner.generation;
        inner.units += record.units.len();
        inner.order.push_back((generation, record.id.clone()));
        inner
            .records
            .insert(record.id.clone(), (generation, record));
        while inner.records.len() > self.max_records || inner.units > self.max_units {
            let Some((generation, oldest)) = inner.order.pop_front() else {
                break;
            };
            if inner
                .records
                .get(&oldest)
                .is_some_and(|(g, _)| *g == generation)
            {
                inner.remove(&oldest);
            }
        }
        // Stale entries wait in the order until they reach its front: dropped when they
        // outnumber the records, so the order stays within twice the records kept.
        if inner.order.len() > 2 * inner.records.len().max(64) {
            let Inner { records, order, .. } = &mut *inner;
            order.retain(|(g, id)| records.get(id).is_some_and(|(kept, _)| kept == g));
        }
    }

    /// Drops `id`: it changed elsewhere, is gone, or could not be written.
    pub(super) fn forget(&self, id: &str) {
        self.lock().remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Action, PurgeKind, PurgeSpec, PurgeState};

    fn record(id: &str, targets: usize) -> Arc<PurgeRecord> {
        let spec = PurgeSpec {
            provider: "sandbox".into(),
            providers: vec!["sandbox".into()],
            kind: PurgeKind::Url,
            targets: (0..targets).map(|i| format!("https://a/{i}")).collect(),
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
        let recent = Recent::new(2, 100);
        recent.keep(record("a", 1));
        recent.keep(record("b", 1));
        recent.keep(record("c", 1));
        assert!(recent.get("a").is_none(), "first kept, first evicted");
        assert!(recent.get("b").is_some() && recent.get("c").is_some());
        let mut done = Arc::unwrap_or_clone(record("b", 1));
        done.state = PurgeState::Succeeded;
        recent.keep(Arc::new(done));
        assert!(recent.get("b").is_none());
    }

    #[test]
    fn a_record_kept_again_is_evicted_by_its_latest_keep_only() {
        let recent = Recent::new(2, 100);
        recent.keep(record("a", 1));
        recent.keep(record("b", 1));
        recent.forget("a");
        recent.keep(record("a", 1));
        // "a"'s first entry is stale: evicting for "c" takes "b", the oldest kept now.
        recent.keep(record("c", 1));
        assert!(recent.get("b").is_none());
        assert!(recent.get("a").is_some() && recent.get("c").is_some());
    }

    #[test]
    fn an_older_version_does_not_replace_a_newer_one() {
        let recent = Recent::new(4, 100);
        let mut newer = Arc::unwrap_or_clone(record("a", 1));
        newer.version = 3;
        recent.keep(Arc::new(newer));
        recent.keep(record("a", 1));
        assert_eq!(recent.get("a").unwrap().version, 3);
    }

    #[test]
    fn units_bound_what_is_kept() {
        let recent = Recent::new(100, 10);
        recent.keep(record("a", 6));
        recent.keep(record("b", 6));
        assert!(
            recent.get("a").is_none(),
            "12 units kept over a bound of 10"
        );
        assert!(recent.get("b").is_some());
        assert_eq!(recent.lock().units, 6);
    }

    #[test]
    fn forgetting_and_keeping_the_same_ids_keeps_the_order_bounded() {
        let recent = Recent::new(1000, 100_000);
        for round in 0..50 {
            for i in 0..100 {
                let id = format!("p{i}");
                if round % 2 == 0 {
                    recent.forget(&id);
                }
                recent.keep(record(&id, 1));
            }
        }
        let inner = recent.lock();
        assert_eq!(inner.records.len(), 100);
        assert!(
            inner.order.len() <= 200,
            "order kept {} entries",
            inner.order.len()
        );
    }
}
