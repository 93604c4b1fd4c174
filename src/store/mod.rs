//! Purge records, idempotency keys and change events, behind one trait with a memory and a Redis
//! implementation.

pub mod codec;
pub mod memory;
mod memory_slot;
pub mod redis;
mod redis_create;
mod redis_list;
mod redis_many;
mod redis_recent;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::broadcast;

use crate::backend::BackendError;
use crate::model::{PurgeRecord, WorkItem};

/// "Caller `scope` used this key for a request with this fingerprint."
#[derive(Clone, Debug)]
pub struct IdempotencyClaim {
    pub scope: String,
    pub fingerprint: String,
    pub retention: Duration,
}

#[derive(Debug)]
pub enum CreateOutcome {
    Created(PurgeRecord),
    /// The idempotency key was used before for the same request.
    Existing(PurgeRecord),
    /// The idempotency key was used before for a different request.
    Conflict {
        existing_id: String,
    },
    /// Unfinished purges alone fill the backend's bound: nothing was recorded; try again
    /// after `retry_after`, when some will have finished.
    AtCapacity {
        limit: usize,
        retry_after: Duration,
    },
}

/// A change to a record: one of its transitions (`PurgeRecord::submitted`, ...), which returns
/// false when it changed nothing. May run more than once.
pub type Change<'a> = &'a (dyn Fn(&mut PurgeRecord) -> bool + Send + Sync);

/// Which purges a listing reads: newest first, from before the id `before` (exclusive).
pub struct ListQuery<'a> {
    /// Only this caller's purges; `None`: every caller's.
    pub caller: Option<&'a str>,
    /// Continue below this id (the last one of the previous page).
    pub before: Option<&'a str>,
    /// At most this many records.
    pub limit: usize,
    /// The filter; records it refuses are skipped and do not count.
    pub keep: &'a (dyn Fn(&PurgeRecord) -> bool + Send + Sync),
}

/// One page of a listing.
#[derive(Debug, Default)]
pub struct ListPage {
    pub records: Vec<PurgeRecord>,
    /// More matching purges follow the last record.
    pub more: bool,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Checks the idempotency claim, records the purge and enqueues its work, atomically.
    async fn create(
        &self,
        record: PurgeRecord,
        idempotency: Option<IdempotencyClaim>,
        work: Vec<WorkItem>,
    ) -> Result<CreateOutcome, BackendError>;

    /// What `create` would answer for a request already made under `claim`'s key: `Existing`
    /// or `Conflict`, or `None` when the key is unused. Creates nothing.
    async fn replay(&self, claim: &IdempotencyClaim)
    -> Result<Option<CreateOutcome>, BackendError>;

    async fn get(&self, id: &str) -> Result<Option<PurgeRecord>, BackendError>;

    /// Whether a purge `get` does not find may have existed and been forgotten (expired or
    /// evicted), so the caller can be told it aged out rather than that it never was.
    fn aged_out(&self, id: &str) -> bool;

    /// Applies `change` atomically through `PurgeRecord::apply` and wakes watchers. `None`: no such purge.
    async fn update(
        &self,
        id: &str,
        change: Change<'_>,
    ) -> Result<Option<PurgeRecord>, BackendError>;

    /// `get` of each of `ids`, in order, each with its own answer (one that cannot be read
    /// does not hold back the others): the dispatcher reads the purges of a claim at once.
    /// The memory backend hands out the record it keeps, without a copy; by default the
    /// reads run concurrently (a multiplexed connection pipelines them).
    async fn get_many(&self, ids: &[&str]) -> Vec<Result<Option<Arc<PurgeRecord>>, BackendError>> {
        let reads = ids
            .iter()
            .map(|id| async move { self.get(id).await.map(|r| r.map(Arc::new)) });
        futures::future::join_all(reads).await
    }

    /// `update` of each of `ids` with one change (which tells the purges apart by their id):
    /// atomic per purge, not over the set; one answer per id, in order. The dispatcher records
    /// a provider call on every purge it carried targets for at once. By default the updates
    /// run concurrently.
    async fn update_many(
        &self,
        ids: &[&str],
        change: Change<'_>,
    ) -> Vec<Result<Option<Arc<PurgeRecord>>, BackendError>> {
        let updates = ids
            .iter()
            .map(|id| async move { self.update(id, change).await.map(|r| r.map(Arc::new)) });
        futures::future::join_all(updates).await
    }

    /// A page of purges, newest first (ids are UUIDv7s: their order is creation order).
    async fn list(&self, query: ListQuery<'_>) -> Result<ListPage, BackendError>;

    /// A random secret shared by every replica on this backend (made on first use), for
    /// signing page tokens.
    async fn shared_secret(&self) -> Result<Vec<u8>, BackendError>;

    /// Wake-ups carrying the ids of purges that changed, separated by spaces (one batch of
    /// updates is one wake-up). A wake-up may be lost or lag: watchers re-read the record, so
    /// nothing is lost with it.
    fn events(&self) -> broadcast::Receiver<String>;

    /// Whether the backend answers, for health.
    async fn ping(&self) -> Result<(), BackendError>;
}

/// When the purge `id` was created, in milliseconds since the epoch, read from its UUIDv7.
pub fn created_ms(id: &str) -> Option<u64> {
    let (secs, nanos) = uuid::Uuid::parse_str(id).ok()?.get_timestamp()?.to_unix();
    Some(secs * 1000 + u64::from(nanos) / 1_000_000)
}

/// Milliseconds since the epoch now.
pub fn now_ms() -> u64 {
    chrono::Utc::now().timestamp_millis().max(0) as u64
}
