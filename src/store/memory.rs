//! In-process store for a single replica: the default when no Redis is configured. Bounded, so
//! a sidecar that runs for months keeps a flat footprint: at most `max_records` purges (the
//! oldest finished one is forgotten first, an unfinished one never) and `max_idempotency_keys`
//! keys. Finished purges are kept in their compact stored form (`codec`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::broadcast;

use super::memory_slot::{Moved, Slot};
use super::{Change, CreateOutcome, IdempotencyClaim, ListPage, ListQuery, Store, created_ms};
use crate::backend::BackendError;
use crate::model::{PurgeRecord, WorkItem};

/// How long a create refused for capacity is told to wait before trying again.
const CAPACITY_RETRY: Duration = Duration::from_secs(1);

/// Purges changed under one hold of the lock by `update_many`.
const UPDATE_CHUNK: usize = 64;

/// Wake-ups buffered for slow watchers; a watcher that lags re-reads, so a small buffer is fine.
const EVENTS_BUFFER: usize = 256;

/// Where created work goes, under the store's lock so create stays atomic.
pub type Enqueue = Arc<dyn Fn(Vec<WorkItem>) + Send + Sync>;

/// What the store keeps at most.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryLimits {
    pub max_records: usize,
    pub max_idempotency_keys: usize,
}

impl Default for MemoryLimits {
    fn default() -> Self {
        MemoryLimits {
            max_records: 50_000,
            max_idempotency_keys: 50_000,
        }
    }
}

/// How full the store is, for logs and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryStats {
    pub records: usize,
    pub unfinished: usize,
    pub idempotency_keys: usize,
}

#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    enqueue: Enqueue,
    events: broadcast::Sender<String>,
    /// Signs page tokens; one process, so made here.
    secret: [u8; 32],
    retention: Duration,
    limits: MemoryLimits,
}

struct KeyEntry {
    fingerprint: Box<str>,
    purge_id: u128,
    expires: Instant,
}

#[derive(Default)]
struct State {
    /// By the id's 128 bits: 16 bytes a key instead of a 36-character string. Ordered: UUIDv7s
    /// sort by creation, so the map itself is the listing's index (and eviction keeps it
    /// consistent by construction).
    purges: BTreeMap<u128, Slot>,
    unfinished: usize,
    /// Finished purges in the order they finished, for eviction and expiry.
    finished: VecDeque<(Instant, u128)>,
    keys: HashMap<Arc<str>, KeyEntry>,
    /// Idempotency scopes in the order their keys were set, with that entry's expiry.
    key_order: VecDeque<(Instant, Arc<str>)>,
    /// The newest id forgotten: UUIDv7s sort by creation, so a purge with an id at or below
    /// it that is not here may have been forgotten.
    horizon: u128,
    next_report: Option<Instant>,
}

fn key_of(id: &str) -> Option<u128> {
    uuid::Uuid::parse_str(id).ok().map(|u| u.as_u128())
}

fn id_of(key: u128) -> String {
    uuid::Uuid::from_u128(key).hyphenated().to_string()
}

impl State {
    fn stats(&self) -> MemoryStats {
        MemoryStats {
            records: self.purges.len(),
            unfinished: self.unfinished,
            idempotency_keys: self.keys.len(),
        }
    }

    fn get(&self, id: &str) -> Result<Option<Arc<PurgeRecord>>, BackendError> {
        let Some(slot) = key_of(id).and_then(|k| self.purges.get(&k)) else {
            return Ok(None);
        };
        slot.shared(id).map(Some)
    }

    /// Applies `change` to the purge `id`; the record after it, unless there is no such purge.
    fn update(
        &mut self,
        id: &str,
        change: Change<'_>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<(Arc<PurgeRecord>, bool)>, BackendError> {
        let Some(key) = key_of(id) else {
            return Ok(None);
        };
        let Some(slot) = self.purges.get_mut(&key) else {
            return Ok(None);
        };
        // What the slot holds changes only when the record did; a record that finishes is
        // encoded from where it lies.
        let (after, moved) = match slot {
            Slot::Live(shared) => {
                // A copy only while a reader still holds the record.
                let record = Arc::make_mut(shared);
                if !record.apply(change, now) {
                    return Ok(Some((shared.clone(), false)));
                }
                let after = shared.clone();
                if after.state.is_terminal() {
                    *slot = Slot::encoded(&after);
                    (after, Moved::Finished)
                } else {
                    (after, Moved::Changed)
                }
            }
            Slot::Done(_) => {
                let mut record = Arc::unwrap_or_clone(slot.shared(id)?);
                if !record.apply(change, now) {
                    return Ok(Some((Arc::new(record), false)));
                }
                let after = Arc::new(record);
                if after.state.is_terminal() {
                    // Finished before: keeps its place in the finished order.
                    *slot = Slot::encoded(&after);
                    (after, Moved::Changed)
                } else {
                    *slot = Slot::Live(after.clone());
                    (after, Moved::Reopened)
                }
            }
        };
        match moved {
            Moved::Changed => {}
            Moved::Finished => {
                self.unfinished -= 1;
                self.finished.push_back((Instant::now(), key));
            }
            Moved::Reopened => self.unfinished += 1,
        }
        Ok(Some((after, true)))
    }

    /// What a request already made under `claim`'s key gets: its purge, or a conflict.
    fn replay(
        &self,
        claim: &IdempotencyClaim,
        now: Instant,
    ) -> Result<Option<CreateOutcome>, BackendError> {
        let Some(entry) = self
            .keys
            .get(claim.scope.as_str())
            .filter(|e| e.expires > now)
        else {
            return Ok(None);
        };
        let id = id_of(entry.purge_id);
        if *entry.fingerprint != *claim.fingerprint {
            return Ok(Some(CreateOutcome::Conflict { existing_id: id }));
        }
        // A key whose purge was forgotten is as good as unused: the request makes a new one.
        Ok(self
            .get(&id)?
            .map(|r| CreateOutcome::Existing(Arc::unwrap_or_clone(r))))
    }

    /// Stores `record` under `key`, keeping the counts and the finished order.
    fn put(&mut self, key: u128, record: Arc<PurgeRecord>, now: Instant) {
        let slot = Slot::of(record);
        let done = slot.is_done();
        match self.purges.insert(key, slot) {
            Some(old) if !old.is_done() => self.unfinished -= 1,
            _ => {}
        }
        if done {
            self.finished.push_back((now, key));
        } else {
            self.unfinished += 1;
        }
    }

    /// Forgets the finished purge `key`, if it still is one; moves the horizon past it.
    fn forget(&mut self, key: u128) -> bool {
        if !self.purges.get(&key).is_some_and(Slot::is_done) {
            // Gone already, or not finished any more: the queue entry is stale.
            return false;
        }
        self.purges.remove(&key);
        self.horizon = self.horizon.max(key);
        true
    }

    /// Forgets purges finished `retention` ago, and expired keys.
    fn expire(&mut self, now: Instant, retention: Duration) {
        while let Some(&(at, key)) = self.finished.front() {
            if now.duration_since(at) < retention {
                break;
            }
            self.finished.pop_front();
            self.forget(key);
        }
        while let Some((expires, _)) = self.key_order.front() {
            if *expires > now {
                break;
            }
            let (expires, scope) = self.key_order.pop_front().expect("front exists");
            self.drop_key(&scope, expires);
        }
    }

    /// Removes the key `scope` if `expires` is its current entry (a key set again later has an
    /// entry of its own further back).
    fn drop_key(&mut self, scope: &str, expires: Instant) -> bool {
        if self.keys.get(scope).is_some_and(|e| e.expires == expires) {
            self.keys.remove(scope);
            return true;
        }
        false
    }

    /// Makes room for one more record by forgetting the oldest finished one; false when
    /// unfinished purges alone fill `max`.
    fn make_room(&mut self, max: usize) -> bool {
        while self.purges.len() >= max {
            let Some((_, key)) = self.finished.pop_front() else {
                return false;
            };
            self.forget(key);
        }
        true
    }

    fn remember_key(&mut self, claim: &IdempotencyClaim, purge_id: u128, now: Instant, max: usize) {
        let scope: Arc<str> = claim.scope.as_str().into();
        let expires = now + claim.retention;
        self.keys.insert(
            scope.clone(),
            KeyEntry {
                fingerprint: claim.fingerprint.as_str().into(),
                purge_id,
                expires,
            },
        );
        self.key_order.push_back((expires, scope));
        while self.keys.len() > max {
            let Some((expires, oldest)) = self.key_order.pop_front() else {
                break;
            };
            self.drop_key(&oldest, expires);
        }
        // Entries of keys set again are dropped here at the latest.
        while self.key_order.len() > 2 * max {
            let (expires, oldest) = self.key_order.pop_front().expect("longer than max");
            self.drop_key(&oldest, expires);
        }
    }

    /// One debug line a second with the counts (the soak benchmark reads it).
    fn report(&mut self, now: Instant) {
        if self.next_report.is_some_and(|at| now < at) {
            return;
        }
        self.next_report = Some(now + Duration::from_secs(1));
        let s = self.stats();
        tracing::debug!(
            records = s.records,
            unfinished = s.unfinished,
            idempotency_keys = s.idempotency_keys,
            "memory store size"
        );
    }
}

impl MemoryStore {
    /// A store that hands created work to `enqueue` (the memory queue, wired by the app) and
    /// keeps finished purges `retention`, within the default limits.
    pub fn new(enqueue: Enqueue, retention: Duration) -> MemoryStore {
        MemoryStore::with_limits(enqueue, retention, MemoryLimits::default())
    }

    /// A store that keeps at most what `limits` says.
    pub fn with_limits(enqueue: Enqueue, retention: Duration, limits: MemoryLimits) -> MemoryStore {
        let (events, _) = broadcast::channel(EVENTS_BUFFER);
        MemoryStore {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                enqueue,
                events,
                secret: rand::random(),
                retention,
                limits: MemoryLimits {
                    max_records: limits.max_records.max(1),
                    max_idempotency_keys: limits.max_idempotency_keys.max(1),
                },
            }),
        }
    }

    pub fn stats(&self) -> MemoryStats {
        self.inner.state.lock().expect("store lock").stats()
    }

    /// Wakes the watchers of `ids` (separated by spaces).
    fn notify(&self, ids: String) {
        // No receiver is fine: nobody watches.
        let _ = self.inner.events.send(ids);
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn create(
        &self,
        record: PurgeRecord,
        idempotency: Option<IdempotencyClaim>,
        work: Vec<WorkItem>,
    ) -> Result<CreateOutcome, BackendError> {
        let key = key_of(&record.id).ok_or_else(|| {
            BackendError::Corrupt(format!("purge id {:?} is not a UUID", record.id))
        })?;
        let limits = self.inner.limits;
        let mut state = self.inner.state.lock().expect("store lock");
        let now = Instant::now();
        state.expire(now, self.inner.retention);
        if let Some(claim) = &idempotency
            && let Some(outcome) = state.replay(claim, now)?
        {
            return Ok(outcome);
        }
        if !state.make_room(limits.max_records) {
            return Ok(CreateOutcome::AtCapacity {
                limit: limits.max_records,
                retry_after: CAPACITY_RETRY,
            });
        }
        if let Some(claim) = &idempotency {
            state.remember_key(claim, key, now, limits.max_idempotency_keys);
        }
        let record = Arc::new(record);
        state.put(key, record.clone(), now);
        state.report(now);
        drop(state);
        (self.inner.enqueue)(work);
        Ok(CreateOutcome::Created(Arc::unwrap_or_clone(record)))
    }

    async fn replay(
        &self,
        claim: &IdempotencyClaim,
    ) -> Result<Option<CreateOutcome>, BackendError> {
        let state = self.inner.state.lock().expect("store lock");
        state.replay(claim, Instant::now())
    }

    async fn get(&self, id: &str) -> Result<Option<PurgeRecord>, BackendError> {
        let shared = self.inner.state.lock().expect("store lock").get(id)?;
        Ok(shared.map(Arc::unwrap_or_clone))
    }

    async fn get_many(&self, ids: &[&str]) -> Vec<Result<Option<Arc<PurgeRecord>>, BackendError>> {
        let state = self.inner.state.lock().expect("store lock");
        ids.iter().map(|id| state.get(id)).collect()
    }

    fn aged_out(&self, id: &str) -> bool {
        let (Some(key), Some(created)) = (key_of(id), created_ms(id)) else {
            return false;
        };
        let horizon = self.inner.state.lock().expect("store lock").horizon;
        let retention_ms = self.inner.retention.as_millis() as u64;
        key <= horizon || created.saturating_add(retention_ms) <= super::now_ms()
    }

    async fn update(
        &self,
        id: &str,
        change: Change<'_>,
    ) -> Result<Option<PurgeRecord>, BackendError> {
        let after = self.update_many(&[id], change).await.pop();
        Ok(after.transpose()?.flatten().map(Arc::unwrap_or_clone))
    }

    async fn update_many(
        &self,
        ids: &[&str],
        change: Change<'_>,
    ) -> Vec<Result<Option<Arc<PurgeRecord>>, BackendError>> {
        let now = chrono::Utc::now();
        let mut after = Vec::with_capacity(ids.len());
        let mut changed = Vec::new();
        // The lock is let go between chunks, so creates and reads are not held up by a
        // provider call that carried thousands of purges.
        for chunk in ids.chunks(UPDATE_CHUNK) {
            let mut state = self.inner.state.lock().expect("store lock");
            for id in chunk {
                let updated = state.update(id, change, now);
                if let Ok(Some((_, true))) = &updated {
                    changed.push(*id);
                }
                after.push(updated.map(|u| u.map(|(r, _)| r)));
            }
        }
        if !changed.is_empty() {
            self.notify(changed.join(" "));
        }
        after
    }

    async fn list(&self, query: ListQuery<'_>) -> Result<ListPage, BackendError> {
        let below = match query.before {
            Some(id) => key_of(id).unwrap_or(0),
            None => u128::MAX,
        };
        let state = self.inner.state.lock().expect("store lock");
        let mut page = ListPage::default();
        for (key, slot) in state.purges.range(..below).rev() {
            let record = Arc::unwrap_or_clone(slot.shared(&id_of(*key))?);
            if query.caller.is_some_and(|c| record.caller != c) || !(query.keep)(&record) {
                continue;
            }
            if page.records.len() == query.limit {
                page.more = true;
                break;
            }
            page.records.push(record);
        }
        Ok(page)
    }

    async fn shared_secret(&self) -> Result<Vec<u8>, BackendError> {
        Ok(self.inner.secret.to_vec())
    }

    fn events(&self) -> broadcast::Receiver<String> {
        self.inner.events.subscribe()
    }

    async fn ping(&self) -> Result<(), BackendError> {
        Ok(())
    }
}

#[cfg(test)]
#[path = "memory_tests.rs"]
mod tests;
