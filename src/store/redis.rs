//! Purge records and idempotency keys in Redis, shared by every replica. Create is one script
//! (idempotency check, record, enqueue); without a key on one node it is the same commands in a
//! `MULTI`/`EXEC` transaction shared with the other creates waiting at that moment
//! (`redis_create`). Updates are compare-and-set on the record version and publish a wake-up;
//! one subscriber connection per replica feeds `events()`.

use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use ::redis::Script;
use async_trait::async_trait;
use tokio::sync::broadcast;

use super::{
    Change, CreateOutcome, IdempotencyClaim, ListPage, ListQuery, Store, codec, created_ms,
};
use crate::backend::BackendError;
use crate::model::{PurgeRecord, WorkItem};
use crate::redis_state::{Shared, pin_id, shard_of_id, shard_of_scope};

/// KEYS: record, idempotency key (or the record again), the caller's and everyone's listing
/// index, provider streams.
/// ARGV: record json, version, record ttl ms, fingerprint ('' = none), key ttl ms, purge id,
/// record key prefix of the shard, work channel, work payload, which indexes to keep up ('1'
/// or '0' for each of KEYS[3] and KEYS[4]: prune and refresh their ttl), index cutoff
/// (exclusive lex bound: ids created before it are pruned), index ttl ms.
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
for i = 3, 4 do
  redis.call('ZADD', KEYS[i], 0, ARGV[6])
  if string.byte(ARGV[10], i - 2) == 49 then
    redis.call('ZREMRANGEBYLEX', KEYS[i], '-', ARGV[11])
    redis.call('PEXPIRE', KEYS[i], ARGV[12])
  end
end
for i = 5, #KEYS do
  redis.call('XADD', KEYS[i], '*', 'purge', ARGV[6])
end
if #KEYS > 4 then redis.call('PUBLISH', ARGV[8], ARGV[9]) end
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

use super::redis_create::{Committer, Context, Created, Upkeep, index_cutoff, ms};
use super::redis_many::MAX_CONFLICTS;
use super::redis_recent::{RECENT_RECORDS, RECENT_UNITS, Recent};

#[derive(Clone)]
pub struct RedisStore {
    pub(super) shared: Arc<Shared>,
    record_ttl: Duration,
    /// Where the batch updates start from (`redis_recent`).
    recent: Arc<Recent>,
    /// When this replica last pruned each listing index and refreshed its ttl.
    upkeep: Arc<Upkeep>,
    /// Creates without an idempotency key on one node, committed in groups.
    committer: Arc<Committer>,
}

/// The Redis store, queue and limiter of one replica, over one connection.
impl RedisStore {
    /// A store on `shared` that keeps finished purges `record_ttl` after their last change.
    pub fn new(shared: Arc<Shared>, record_ttl: Duration) -> RedisStore {
        let upkeep = Arc::new(Upkeep::default());
        let committer = Arc::new(Committer::new(Context {
            shared: shared.clone(),
            upkeep: upkeep.clone(),
            record_ttl,
            index_span: record_ttl + INDEX_SLACK,
        }));
        RedisStore {
            shared,
            record_ttl,
            recent: Arc::new(Recent::new(RECENT_RECORDS, RECENT_UNITS)),
            upkeep,
            committer,
        }
    }
}

/// How long a purge stays in the listing indexes: the record retention, plus a day for the
/// purges that ran long (a record expires `record_ttl` after its last change, not its creation).
const INDEX_SLACK: Duration = Duration::from_secs(24 * 3600);

impl RedisStore {
    fn index_span(&self) -> Duration {
        self.record_ttl + INDEX_SLACK
    }
}

fn decode(bytes: &[u8]) -> Result<PurgeRecord, BackendError> {
    codec::decode_stored(bytes)
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
        let indexes = [
            keys.list_index(shard, Some(&record.caller)),
            keys.list_index(shard, None),
        ];
        let streams: Vec<String> = providers.iter().map(|p| keys.stream(shard, p)).collect();
        let work = format!("{shard} {}", providers.join(" "));
        if idempotency.is_none() && !self.shared.is_cluster() {
            let created = Created {
                id,
                record_key,
                json: encode(&record),
                version: record.version,
                indexes,
                streams,
                work,
            };
            self.committer.create(created).await?;
            return Ok(CreateOutcome::Created(record));
        }
        let now = Instant::now();
        let upkeep = self.upkeep.due(indexes.each_ref().map(String::as_str), now);
        let mut call = CREATE.prepare_invoke();
        call.key(&record_key);
        match &idempotency {
            Some(claim) => call.key(keys.idempotency(&claim.scope)),
            None => call.key(&record_key),
        };
        call.key(&indexes[0]).key(&indexes[1]);
        for stream in &streams {
            call.key(stream);
        }
        call.arg(encode(&record))
            .arg(record.version)
            .arg(ms(self.record_ttl))
            .arg(idempotency.as_ref().map_or("", |c| c.fingerprint.as_str()))
            .arg(idempotency.as_ref().map_or(1, |c| ms(c.retention)))
            .arg(&id)
            .arg(keys.record_prefix(shard))
            .arg(keys.work_channel())
            .arg(work)
            .arg(
                upkeep
                    .map(|due| if due { '1' } else { '0' })
                    .iter()
                    .collect::<String>(),
            )
            .arg(index_cutoff(self.index_span()))
            .arg(ms(self.index_span()));
        let (outcome, detail): (String, Vec<u8>) = self.shared.invoke(call).await?;
        match outcome.as_str() {
            "created" => {
                let kept_up = indexes.iter().zip(upkeep).filter(|(_, due)| *due);
                self.upkeep
                    .done(kept_up.map(|(index, _)| index.as_str()), now);
                Ok(CreateOutcome::Created(record))
            }
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
            let written: i64 = self.shared.invoke(call).await?;
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

    async fn get_many(&self, ids: &[&str]) -> Vec<Result<Option<Arc<PurgeRecord>>, BackendError>> {
        let read = super::redis_many::get_many(&self.shared, ids).await;
        // What the dispatcher reads it changes next: kept as the start of that change.
        for record in read.iter().flatten().flatten() {
            self.recent.keep(record.clone());
        }
        read
    }

    async fn update_many(
        &self,
        ids: &[&str],
        change: Change<'_>,
    ) -> Vec<Result<Option<Arc<PurgeRecord>>, BackendError>> {
        super::redis_many::update_many(&self.shared, &self.recent, ms(self.record_ttl), ids, change)
            .await
    }

    async fn list(&self, query: ListQuery<'_>) -> Result<ListPage, BackendError> {
        super::redis_list::list(&self.shared, query).await
    }

    async fn shared_secret(&self) -> Result<Vec<u8>, BackendError> {
        let key = self.shared.keys.page_token_secret();
        let fresh = hex::encode(rand::random::<[u8; 32]>());
        let secret: String = self
            .shared
            .with(|mut c| async move {
                // Made once by whichever replica asks first; every replica reads that one.
                let _: Option<String> = ::redis::cmd("SET")
                    .arg(&key)
                    .arg(&fresh)
                    .arg("NX")
                    .query_async(&mut c)
                    .await?;
                ::redis::cmd("GET").arg(&key).query_async(&mut c).await
            })
            .await?;
        Ok(secret.into_bytes())
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
