//! In-process store for a single replica: the default when no Redis is configured.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use tokio::sync::broadcast;

use super::{Change, CreateOutcome, IdempotencyClaim, Store, StoreError, apply_change};
use crate::core::model::{PurgeRecord, WorkItem};
use crate::queue::memory::MemoryQueue;

#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    queue: MemoryQueue,
    events: broadcast::Sender<String>,
}

#[derive(Default)]
struct State {
    purges: HashMap<String, PurgeRecord>,
    keys: HashMap<String, KeyEntry>,
}

struct KeyEntry {
    fingerprint: String,
    purge_id: String,
    expires: Instant,
}

impl MemoryStore {
    /// A store that enqueues created work on `queue`.
    pub fn new(queue: MemoryQueue) -> MemoryStore {
        let (events, _) = broadcast::channel(4096);
        MemoryStore {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                queue,
                events,
            }),
        }
    }

    fn notify(&self, id: &str) {
        // No receiver is fine: nobody watches.
        let _ = self.inner.events.send(id.to_owned());
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn create(
        &self,
        record: PurgeRecord,
        idempotency: Option<IdempotencyClaim>,
        work: Vec<WorkItem>,
    ) -> Result<CreateOutcome, StoreError> {
        let mut state = self.inner.state.lock().expect("store lock");
        let now = Instant::now();
        if let Some(claim) = &idempotency {
            if let Some(entry) = state.keys.get(&claim.scope).filter(|e| e.expires > now) {
                if entry.fingerprint != claim.fingerprint {
                    return Ok(CreateOutcome::Conflict {
                        existing_id: entry.purge_id.clone(),
                    });
                }
                if let Some(existing) = state.purges.get(&entry.purge_id) {
                    return Ok(CreateOutcome::Existing(existing.clone()));
                }
            }
            state.keys.retain(|_, e| e.expires > now);
            state.keys.insert(
                claim.scope.clone(),
                KeyEntry {
                    fingerprint: claim.fingerprint.clone(),
                    purge_id: record.id.clone(),
                    expires: now + claim.retention,
                },
            );
        }
        state.purges.insert(record.id.clone(), record.clone());
        drop(state);
        self.inner.queue.enqueue(work);
        Ok(CreateOutcome::Created(record))
    }

    async fn get(&self, id: &str) -> Result<Option<PurgeRecord>, StoreError> {
        let state = self.inner.state.lock().expect("store lock");
        Ok(state.purges.get(id).cloned())
    }

    async fn update(
        &self,
        id: &str,
        change: Change<'_>,
    ) -> Result<Option<PurgeRecord>, StoreError> {
        let mut state = self.inner.state.lock().expect("store lock");
        let Some(record) = state.purges.get_mut(id) else {
            return Ok(None);
        };
        let changed = apply_change(record, change);
        let after = record.clone();
        drop(state);
        if changed {
            self.notify(id);
        }
        Ok(Some(after))
    }

    fn events(&self) -> broadcast::Receiver<String> {
        self.inner.events.subscribe()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
