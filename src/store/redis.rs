//! Purge records and idempotency keys in Redis, shared by every replica. Create is one script
//! (idempotency check, record, enqueue); updates are compare-and-set on the record version
//! and publish a wake-up; one subscriber connection per replica feeds `events()`.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use ::redis::Script;
use async_trait::async_trait;
use tokio::sync::broadcast;

use super::{Change, CreateOutcome, IdempotencyClaim, Store, codec, created_ms};
use crate::backend::BackendError;
use crate::model::{PurgeRecord, WorkItem};
use crate::redis_state::{Shared, pin_id, shard_of_id, shard_of_scope};

/// KEYS: record, idempotency key (or the record again), provider streams.
/// ARGV: record json, version, record ttl ms, fingerprint ('' = none), key ttl ms, purge id,
/// record key prefix of the shard, work channel, work payload.
static CREATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local fp = ARGV[4]
if fp ~= '' then
  local e = redis.call('HMGET', KEYS[2], 'fp', 'id')
  if e[1] then
    if e[1] ~= fp then return {'conflict', e[2]} end
    -- Same shard as KEYS[2] by construction, so the same slot.
    local existing = redis.call('HGET', ARGV[7] .. e[2], 'json')
    if existing then return {'existing', existing} end
  end
  redis.call('HSET', KEYS[2], 'fp', fp, 'id', ARGV[6])
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
end
redis.call('HSET', KEYS[1], 'v', ARGV[2], 'json', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
for i = 3, #KEYS do
  redis.call('XADD', KEYS[i], '*', 'purge', ARGV[6])
end
if #KEYS > 2 then redis.call('PUBLISH', ARGV[8], ARGV[9]) end
return {'created', ''}
",
    )
});

/// KEYS: record. ARGV: expected version, new version, json, ttl ms, events channel, id.
/// Returns 1 written, 0 version conflict, -1 no such record.
static SWAP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local v = redis.call('HGET', KEYS[1], 'v')
if not v then return -1 end
if v ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'v', ARGV[2], 'json', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PUBLISH', ARGV[5], ARGV[6])
return 1
",
    )
});

/// Concurrent writers of one record retry this often before giving up.
const MAX_CONFLICTS: usize = 64;

#[derive(Clone)]
pub struct RedisStore {
    shared: Arc<Shared>,
    record_ttl: Duration,
}

/// The Redis store, queue and limiter of one replica, over one connection.
impl RedisStore {
    /// A store on `shared` that keeps finished purges `record_ttl` after their last change.
    pub fn new(shared: Arc<Shared>, record_ttl: Duration) -> RedisStore {
        RedisStore { shared, record_ttl }
    }
}

fn ms(d: Duration) -> u64 {
    (d.as_millis() as u64).max(1)
}

fn decode(bytes: &[u8]) -> Result<PurgeRecord, BackendError> {
    codec::decode(bytes, "").map_err(|e| BackendError::Corrupt(format!("purge record: {e}")))
}

fn encode(record: &PurgeRecord) -> Vec<u8> {
    codec::encode(record, true)
}

#[async_trait]
impl Store for RedisStore {
    async fn create(
        &self,
        mut record: PurgeRecord,
        idempotency: Option<IdempotencyClaim>,
        work: Vec<WorkItem>,
    ) -> Result<CreateOutcome, BackendError> {
        let keys = &self.shared.keys;
        let shard = match &idempotency {
            // A retried request must find the key: the scope decides the shard, and the id
            // is pinned to it so the record shares the key's slot.
            Some(claim) => {
                let shard = shard_of_scope(&claim.scope);
                record.id = pin_id(&record.id, shard);
                shard
            }
            None => shard_of_id(&record.id),
        };
        let id = record.id.clone();
        let mut providers: Vec<&str> = work.iter().map(|w| w.provider.as_str()).collect();
        providers.sort_unstable();
        providers.dedup();
        let record_key = keys.record(&id);
        let mut call = CREATE.prepare_invoke();
        call.key(&record_key);
        match &idempotency {
            Some(claim) => call.key(keys.idempotency(&claim.scope)),
            None => call.key(&record_key),
        };
        for p in &providers {
            call.key(keys.stream(shard, p));
        }
        call.arg(encode(&record))
            .arg(record.version)
            .arg(ms(self.record_ttl))
            .arg(idempotency.as_ref().map_or("", |c| c.fingerprint.as_str()))
            .arg(idempotency.as_ref().map_or(1, |c| ms(c.retention)))
            .arg(&id)
            .arg(keys.record_prefix(shard))
            .arg(keys.work_channel())
            .arg(format!("{shard} {}", providers.join(" ")));
        let (outcome, detail): (String, Vec<u8>) = self
            .shared
            .with(|mut c| async move { call.invoke_async(&mut c).await })
            .await?;
        match outcome.as_str() {
            "created" => Ok(CreateOutcome::Created(record)),
            "existing" => Ok(CreateOutcome::Existing(decode(&detail)?)),
            "conflict" => Ok(CreateOutcome::Conflict {
                existing_id: String::from_utf8_lossy(&detail).into_owned(),
            }),
            other => Err(BackendError::Corrupt(format!(
                "create script answered {other:?}"
            ))),
        }
    }

    async fn replay(
        &self,
        claim: &IdempotencyClaim,
    ) -> Result<Option<CreateOutcome>, BackendError> {
        let key = self.shared.keys.idempotency(&claim.scope);
        let (fingerprint, id): (Option<String>, Option<String>) = self
            .shared
            .with(|mut c| async move {
                ::redis::cmd("HMGET")
                    .arg(&key)
                    .arg("fp")
                    .arg("id")
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let (Some(fingerprint), Some(id)) = (fingerprint, id) else {
            return Ok(None);
        };
        if fingerprint != claim.fingerprint {
            return Ok(Some(CreateOutcome::Conflict { existing_id: id }));
        }
        Ok(self.get(&id).await?.map(CreateOutcome::Existing))
    }

    async fn get(&self, id: &str) -> Result<Option<PurgeRecord>, BackendError> {
        let key = self.shared.keys.record(id);
        let json: Option<Vec<u8>> = self
            .shared
            .with(|mut c| async move {
                ::redis::cmd("HGET")
                    .arg(&key)
                    .arg("json")
                    .query_async(&mut c)
                    .await
            })
            .await?;
        json.as_deref().map(decode).transpose()
    }

    fn aged_out(&self, id: &str) -> bool {
        // Records live `record_ttl` after their last change: one created longer ago that is
        // not found has expired (or never was).
        created_ms(id).is_some_and(|created| {
            created.saturating_add(self.record_ttl.as_millis() as u64) <= super::now_ms()
        })
    }

    async fn update(
        &self,
        id: &str,
        change: Change<'_>,
    ) -> Result<Option<PurgeRecord>, BackendError> {
        let key = self.shared.keys.record(id);
        for _ in 0..MAX_CONFLICTS {
            let Some(mut record) = self.get(id).await? else {
                return Ok(None);
            };
            let expected = record.version;
            if !record.apply(change, chrono::Utc::now()) {
                return Ok(Some(record));
            }
            let mut call = SWAP.prepare_invoke();
            call.key(&key)
                .arg(expected)
                .arg(record.version)
                .arg(encode(&record))
                .arg(ms(self.record_ttl))
                .arg(self.shared.keys.events_channel())
                .arg(id);
            let written: i64 = self
                .shared
                .with(|mut c| async move { call.invoke_async(&mut c).await })
                .await?;
            match written {
                1 => return Ok(Some(record)),
                -1 => return Ok(None),
                _ => tokio::task::yield_now().await,
            }
        }
        Err(BackendError::Unavailable(
            format!("purge {id} kept changing under {MAX_CONFLICTS} attempts to update it").into(),
        ))
    }

    fn events(&self) -> broadcast::Receiver<String> {
        self.shared.events.subscribe()
    }

    async fn ping(&self) -> Result<(), BackendError> {
        let pong: String = self
            .shared
            .with(|mut c| async move { ::redis::cmd("PING").query_async(&mut c).await })
            .await?;
        match pong.as_str() {
            "PONG" => Ok(()),
            other => Err(BackendError::Corrupt(format!("PING answered {other:?}"))),
        }
    }
}
