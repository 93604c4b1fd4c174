//! In-process store for a single replica: the default when no Redis is configured.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::broadcast;

use super::{Change, CreateOutcome, IdempotencyClaim, Store};
use crate::backend::BackendError;
use crate::model::{PurgeRecord, WorkItem};

#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    enqueue: Enqueue,
    events: broadcast::Sender<String>,
    retention: Duration,
}

#[derive(Default)]
struct State {
    purges: HashMap<String, PurgeRecord>,
    /// Purge ids oldest first, for expiring finished records after the retention.
    created: VecDeque<(Instant, String)>,
    keys: HashMap<String, KeyEntry>,
    /// Idempotency scopes in the order their keys were set, for expiring them.
    key_order: VecDeque<(Instant, String)>,
}

impl State {
    /// What a request already made under `claim`'s key gets: its purge, or a conflict.
    fn replay(&self, claim: &IdempotencyClaim, now: Instant) -> Option<CreateOutcome> {
        let entry = self.keys.get(&claim.scope).filter(|e| e.expires > now)?;
        if entry.fingerprint != claim.fingerprint {
            return Some(CreateOutcome::Conflict {
                existing_id: entry.purge_id.clone(),
            });
        }
        self.purges
            .get(&entry.purge_id)
            .map(|r| CreateOutcome::Existing(r.clone()))
    }

    /// Forgets finished purges created more than `retention` ago, and expired keys.
    fn expire(&mut self, now: Instant, retention: Duration) {
        while let Some((at, _)) = self.created.front() {
            if now.duration_since(*at) < retention {
                break;
            }
            let (_, id) = self.created.pop_front().expect("front exists");
            match self.purges.get(&id) {
                Some(r) if !r.state.is_terminal() => self.created.push_back((now, id)),
                _ => {
                    self.purges.remove(&id);
                }
            }
        }
        while let Some((expires, _)) = self.key_order.front() {
            if *expires > now {
                break;
            }
            let (_, scope) = self.key_order.pop_front().expect("front exists");
            // A key set again later has a later expiry of its own.
            if self.keys.get(&scope).is_some_and(|e| e.expires <= now) {
                self.keys.remove(&scope);
            }
        }
    }
}

/// Where created work goes, under the store's lock so create stays atomic.
pub type Enqueue = Arc<dyn Fn(Vec<WorkItem>) + Send + Sync>;

struct KeyEntry {
    fingerprint: String,
    purge_id: String,
    expires: Instant,
}

impl MemoryStore {
    /// A store that hands created work to `enqueue` (the memory queue, wired by the app) and
    /// keeps finished purges `retention`.
    pub fn new(enqueue: Enqueue, retention: Duration) -> MemoryStore {
        let (events, _) = broadcast::channel(4096);
        MemoryStore {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                enqueue,
                events,
                retention,
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
    ) -> Result<CreateOutcome, BackendError> {
        let mut state = self.inner.state.lock().expect("store lock");
        let now = Instant::now();
        if let Some(claim) = &idempotency {
            if let Some(outcome) = state.replay(claim, now) {
                return Ok(outcome);
            }
            state.keys.insert(
                claim.scope.clone(),
                KeyEntry {
                    fingerprint: claim.fingerprint.clone(),
                    purge_id: record.id.clone(),
                    expires: now + claim.retention,
                },
            );
            state
                .key_order
                .push_back((now + claim.retention, claim.scope.clone()));
        }
        state.expire(now, self.inner.retention);
        state.created.push_back((now, record.id.clone()));
        state.purges.insert(record.id.clone(), record.clone());
        drop(state);
        (self.inner.enqueue)(work);
        Ok(CreateOutcome::Created(record))
    }

    async fn replay(
        &self,
        claim: &IdempotencyClaim,
    ) -> Result<Option<CreateOutcome>, BackendError> {
        let state = self.inner.state.lock().expect("store lock");
        Ok(state.replay(claim, Instant::now()))
    }

    async fn get(&self, id: &str) -> Result<Option<PurgeRecord>, BackendError> {
        let state = self.inner.state.lock().expect("store lock");
        Ok(state.purges.get(id).cloned())
    }

    async fn update(
        &self,
        id: &str,
        change: Change<'_>,
    ) -> Result<Option<PurgeRecord>, BackendError> {
        let mut state = self.inner.state.lock().expect("store lock");
        let Some(record) = state.purges.get_mut(id) else {
            return Ok(None);
        };
        let changed = record.apply(change, chrono::Utc::now());
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

    async fn ping(&self) -> Result<(), BackendError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Action, PurgeKind, PurgeSpec};

    fn record() -> PurgeRecord {
        let spec = PurgeSpec {
            provider: "sandbox".into(),
            providers: vec!["sandbox".into()],
            kind: PurgeKind::Host,
            targets: vec!["example.com".into()],
            action: Action::Invalidate,
            hosts: Vec::new(),
            headers: Default::default(),
            labels: Default::default(),
            idempotency_key: Some("k".into()),
        };
        let id = uuid::Uuid::now_v7().to_string();
        PurgeRecord::new(id, "c".into(), spec, chrono::Utc::now())
    }

    fn claim(scope: &str, retention: Duration) -> IdempotencyClaim {
        IdempotencyClaim {
            scope: scope.into(),
            fingerprint: "f".into(),
            retention,
        }
    }

    #[tokio::test]
    async fn idempotency_keys_are_forgotten_after_their_retention() {
        let store = MemoryStore::new(Arc::new(|_| {}), Duration::from_secs(3600));
        let kept = claim("kept", Duration::from_secs(3600));
        for i in 0..100 {
            let short = claim(&format!("short-{i}"), Duration::ZERO);
            store
                .create(record(), Some(short), Vec::new())
                .await
                .unwrap();
        }
        let first = store.create(record(), Some(kept.clone()), Vec::new()).await;
        let Ok(CreateOutcome::Created(first)) = first else {
            panic!("created");
        };
        {
            let state = store.inner.state.lock().unwrap();
            assert_eq!(state.keys.len(), 1, "expired keys are gone");
            assert_eq!(state.key_order.len(), 1);
        }
        match store.replay(&kept).await.unwrap() {
            Some(CreateOutcome::Existing(r)) => assert_eq!(r.id, first.id),
            other => panic!("the kept key answers with its purge, got {other:?}"),
        }
        assert!(
            store
                .replay(&claim("short-1", Duration::ZERO))
                .await
                .unwrap()
                .is_none()
        );
    }
}
