//! The Redis store's batch operations: the records of one provider call read and written with
//! one script call per shard (their keys share a hash tag, so one call is one cluster slot).

use std::sync::{Arc, LazyLock};

use ::redis::Script;

use super::{Change, codec};
use crate::backend::BackendError;
use crate::model::PurgeRecord;
use crate::redis_state::{Shared, shard_of_id};

/// Concurrent writers of one record retry this often before giving up.
pub(super) const MAX_CONFLICTS: usize = 64;

/// KEYS: records of one shard. Returns each record's json, or false where there is none.
static GET_MANY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local out = {}
for i = 1, #KEYS do
  out[i] = redis.call('HGET', KEYS[i], 'json')
end
return out
",
    )
});

/// SWAP over records of one shard. KEYS: records. ARGV: ttl ms, events channel, then per key
/// expected version, new version, json, id. Returns per key 1 written, 0 version conflict,
/// -1 no such record; one wake-up carries the ids written, separated by spaces.
static SWAP_MANY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local out = {}
local written = {}
for i = 1, #KEYS do
  local a = 2 + (i - 1) * 4
  local v = redis.call('HGET', KEYS[i], 'v')
  if not v then
    out[i] = -1
  elseif v ~= ARGV[a + 1] then
    out[i] = 0
  else
    redis.call('HSET', KEYS[i], 'v', ARGV[a + 2], 'json', ARGV[a + 3])
    redis.call('PEXPIRE', KEYS[i], ARGV[1])
    written[#written + 1] = ARGV[a + 4]
    out[i] = 1
  end
end
if #written > 0 then redis.call('PUBLISH', ARGV[2], table.concat(written, ' ')) end
return out
",
    )
});

/// Records read or written by one script call, at most: a batch of thousands of purges is
/// split so no call blocks Redis for long.
const MANY_CHUNK: usize = 256;

/// Positions of `ids` grouped by shard (one script call each), at most `MANY_CHUNK` a group.
fn by_shard(ids: &[&str]) -> Vec<Vec<usize>> {
    let mut shards: std::collections::BTreeMap<u8, Vec<usize>> = Default::default();
    for (i, id) in ids.iter().enumerate() {
        shards.entry(shard_of_id(id)).or_default().push(i);
    }
    shards
        .into_values()
        .flat_map(|positions| {
            positions
                .chunks(MANY_CHUNK)
                .map(<[usize]>::to_vec)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// One record's answer in a round of `update_many`.
enum Swapped {
    /// Written, unchanged by the change, or gone (`None`).
    Done(Option<Arc<PurgeRecord>>),
    /// Changed by another writer since it was read: to be read and changed again.
    Conflict,
}

/// The records `ids`, in order; one script call per shard.
pub(super) async fn get_many(
    shared: &Shared,
    ids: &[&str],
) -> Result<Vec<Option<Arc<PurgeRecord>>>, BackendError> {
    let mut out: Vec<Option<Arc<PurgeRecord>>> = vec![None; ids.len()];
    let reads = by_shard(ids).into_iter().map(|positions| async move {
        let mut call = GET_MANY.prepare_invoke();
        for &i in &positions {
            call.key(shared.keys.record(ids[i]));
        }
        let found: Vec<Option<Vec<u8>>> = shared
            .with(|mut c| async move { call.invoke_async(&mut c).await })
            .await?;
        Ok::<_, BackendError>((positions, found))
    });
    for (positions, found) in futures::future::try_join_all(reads).await? {
        for (i, json) in positions.into_iter().zip(found) {
            out[i] = json
                .as_deref()
                .map(codec::decode_stored)
                .transpose()?
                .map(Arc::new);
        }
    }
    Ok(out)
}

/// `Store::update_many`: rounds of reads and compare-and-set writes, one script call per shard
/// each, until every record is written or found gone (or changed too often by others).
pub(super) async fn update_many(
    shared: &Shared,
    ttl_ms: u64,
    ids: &[&str],
    change: Change<'_>,
) -> Vec<Result<Option<Arc<PurgeRecord>>, BackendError>> {
    let mut out: Vec<Option<Result<Option<Arc<PurgeRecord>>, BackendError>>> =
        (0..ids.len()).map(|_| None).collect();
    let mut pending: Vec<usize> = (0..ids.len()).collect();
    for _ in 0..MAX_CONFLICTS {
        if pending.is_empty() {
            break;
        }
        let batch: Vec<&str> = pending.iter().map(|&i| ids[i]).collect();
        let mut conflicts = Vec::new();
        match swap_many(shared, ttl_ms, &batch, change).await {
            Ok(results) => {
                for (&i, r) in pending.iter().zip(results) {
                    match r {
                        Swapped::Done(record) => out[i] = Some(Ok(record)),
                        Swapped::Conflict => conflicts.push(i),
                    }
                }
            }
            Err(e) => {
                for &i in &pending {
                    out[i] = Some(Err(e.again()));
                }
            }
        }
        if !conflicts.is_empty() {
            tokio::task::yield_now().await;
        }
        pending = conflicts;
    }
    out.into_iter()
        .enumerate()
        .map(|(i, r)| {
            r.unwrap_or_else(|| {
                Err(BackendError::Unavailable(
                    format!(
                        "purge {} kept changing under {MAX_CONFLICTS} attempts to update it",
                        ids[i]
                    )
                    .into(),
                ))
            })
        })
        .collect()
}

/// One round of `update_many`: reads every record, applies the change, and writes back
/// those it changed if nobody else did meanwhile, one script call per shard.
async fn swap_many(
    shared: &Shared,
    ttl_ms: u64,
    ids: &[&str],
    change: Change<'_>,
) -> Result<Vec<Swapped>, BackendError> {
    let records = get_many(shared, ids).await?;
    let now = chrono::Utc::now();
    let mut out: Vec<Option<Swapped>> = (0..ids.len()).map(|_| None).collect();
    // Position -> (version read, record after the change), for the records it changed.
    let mut changed: Vec<Option<(u64, PurgeRecord)>> = (0..ids.len()).map(|_| None).collect();
    for (i, record) in records.into_iter().enumerate() {
        let Some(record) = record else {
            out[i] = Some(Swapped::Done(None));
            continue;
        };
        let mut record = Arc::unwrap_or_clone(record);
        let expected = record.version;
        if record.apply(change, now) {
            changed[i] = Some((expected, record));
        } else {
            out[i] = Some(Swapped::Done(Some(Arc::new(record))));
        }
    }
    let to_write: Vec<&str> = ids
        .iter()
        .zip(&changed)
        .filter(|(_, c)| c.is_some())
        .map(|(id, _)| *id)
        .collect();
    let positions: Vec<usize> = (0..ids.len()).filter(|&i| changed[i].is_some()).collect();
    let ttl = ttl_ms;
    let channel = shared.keys.events_channel();
    let writes = by_shard(&to_write).into_iter().map(|group| {
        let mut call = SWAP_MANY.prepare_invoke();
        call.arg(ttl).arg(&channel);
        for &j in &group {
            let i = positions[j];
            let (expected, record) = changed[i].as_ref().expect("changed");
            call.key(shared.keys.record(ids[i]))
                .arg(expected)
                .arg(record.version)
                .arg(codec::encode(record, true))
                .arg(ids[i]);
        }
        async move {
            let written: Vec<i64> = shared
                .with(|mut c| async move { call.invoke_async(&mut c).await })
                .await?;
            Ok::<_, BackendError>((group, written))
        }
    });
    let answers = futures::future::try_join_all(writes).await?;
    for (group, written) in answers {
        for (j, w) in group.into_iter().zip(written) {
            let i = positions[j];
            out[i] = Some(match w {
                1 => Swapped::Done(changed[i].take().map(|(_, r)| Arc::new(r))),
                -1 => Swapped::Done(None),
                _ => Swapped::Conflict,
            });
        }
    }
    Ok(out
        .into_iter()
        .map(|o| o.unwrap_or(Swapped::Conflict))
        .collect())
}
