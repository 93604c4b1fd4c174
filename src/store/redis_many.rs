//! The Redis store's batch operations: the records of one provider call read and written with
//! one script call per shard (their keys share a hash tag, so one call is one cluster slot).

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use ::redis::Script;

use super::redis_recent::Recent;
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

/// Records read or written by one script call, at most, and the bytes written by one: a batch
/// of thousands of purges is split so no call blocks Redis for long.
const MANY_CHUNK: usize = 256;
const MANY_BYTES: usize = 1 << 20;

/// Positions of `ids` grouped for one script call each: by shard on a cluster (a call's keys
/// must share a slot), all together on one node, where a call per shard would only multiply
/// the calls (16 for a provider call of 50 purges). At most `MANY_CHUNK` a group and, where
/// `size` tells each one's bytes, at most `MANY_BYTES` (or one record).
fn by_shard(ids: &[&str], cluster: bool, size: impl Fn(usize) -> usize) -> Vec<Vec<usize>> {
    let mut shards: BTreeMap<u8, Vec<usize>> = BTreeMap::new();
    for (i, id) in ids.iter().enumerate() {
        let shard = if cluster { shard_of_id(id) } else { 0 };
        shards.entry(shard).or_default().push(i);
    }
    let mut groups = Vec::new();
    for positions in shards.into_values() {
        let mut group: Vec<usize> = Vec::new();
        let mut bytes = 0;
        for i in positions {
            if !group.is_empty() && (group.len() == MANY_CHUNK || bytes + size(i) > MANY_BYTES) {
                groups.push(std::mem::take(&mut group));
                bytes = 0;
            }
            bytes += size(i);
            group.push(i);
        }
        groups.push(group);
    }
    groups
}

/// One record's answer in a round of `update_many`.
enum Swapped {
    /// Written, unchanged by the change, or gone (`None`).
    Done(Option<Arc<PurgeRecord>>),
    /// Changed by another writer since it was read: to be read and changed again.
    Conflict,
    /// Not read or not written: its shard did not answer, or its record is corrupt. The other
    /// records of the batch are not held back by it.
    Failed(BackendError),
}

type Read = Result<Option<Arc<PurgeRecord>>, BackendError>;

/// The records `ids`, in order; one script call per shard. A shard that does not answer, or a
/// record that cannot be read, fails only its own ids.
pub(super) async fn get_many(shared: &Shared, ids: &[&str]) -> Vec<Read> {
    let mut out: Vec<Read> = ids.iter().map(|_| Ok(None)).collect();
    let reads = by_shard(ids, shared.is_cluster(), |_| 0)
        .into_iter()
        .map(|positions| async move {
            let mut call = GET_MANY.prepare_invoke();
            for &i in &positions {
                call.key(shared.keys.record(ids[i]));
            }
            let found: Result<Vec<Option<Vec<u8>>>, BackendError> = shared.invoke(call).await;
            (positions, found)
        });
    for (positions, found) in futures::future::join_all(reads).await {
        match found {
            Ok(found) => {
                for (i, json) in positions.into_iter().zip(found) {
                    out[i] = json
                        .as_deref()
                        .map(codec::decode_stored)
                        .transpose()
                        .map(|r| r.map(Arc::new));
                }
            }
            Err(e) => {
                for i in positions {
                    out[i] = Err(e.again());
                }
            }
        }
    }
    out
}

/// `Store::update_many`: rounds of reads and compare-and-set writes, one script call per shard
/// each, until every record is written, found gone or failed (or changed too often by others).
pub(super) async fn update_many(
    shared: &Shared,
    recent: &Recent,
    ttl_ms: u64,
    ids: &[&str],
    change: Change<'_>,
) -> Vec<Read> {
    let mut out: Vec<Option<Read>> = (0..ids.len()).map(|_| None).collect();
    let mut pending: Vec<usize> = (0..ids.len()).collect();
    for _ in 0..MAX_CONFLICTS {
        if pending.is_empty() {
            break;
        }
        let batch: Vec<&str> = pending.iter().map(|&i| ids[i]).collect();
        let mut conflicts = Vec::new();
        let results = swap_many(shared, recent, ttl_ms, &batch, change).await;
        for (&i, r) in pending.iter().zip(results) {
            match r {
                Swapped::Done(record) => out[i] = Some(Ok(record)),
                Swapped::Conflict => conflicts.push(i),
                Swapped::Failed(e) => out[i] = Some(Err(e)),
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

/// A change applied to a copy of a record.
enum Applied {
    /// The version it was applied to, the record after it and its stored form.
    Changed(u64, PurgeRecord, Vec<u8>),
    /// The change leaves the record as it is.
    Unchanged(PurgeRecord),
}

fn applied(
    record: Arc<PurgeRecord>,
    change: Change<'_>,
    now: chrono::DateTime<chrono::Utc>,
) -> Applied {
    let mut record = Arc::unwrap_or_clone(record);
    let expected = record.version;
    if record.apply(change, now) {
        let stored = codec::encode(&record, true);
        Applied::Changed(expected, record, stored)
    } else {
        Applied::Unchanged(record)
    }
}

/// One round of `update_many`: applies the change to every record, and writes back those it
/// changed if nobody else did meanwhile, one script call per shard. A record kept from this
/// replica's last batch read or write (`recent`) is not read again; one the change leaves alone
/// is, as the kept copy may be behind.
async fn swap_many(
    shared: &Shared,
    recent: &Recent,
    ttl_ms: u64,
    ids: &[&str],
    change: Change<'_>,
) -> Vec<Swapped> {
    let now = chrono::Utc::now();
    let mut out: Vec<Option<Swapped>> = (0..ids.len()).map(|_| None).collect();
    // Position -> (version read, record after the change, its stored form).
    let mut changed: Vec<Option<(u64, PurgeRecord, Vec<u8>)>> =
        (0..ids.len()).map(|_| None).collect();
    let mut to_read = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        match recent.get(id).map(|kept| applied(kept, change, now)) {
            Some(Applied::Changed(expected, record, stored)) => {
                changed[i] = Some((expected, record, stored));
            }
            Some(Applied::Unchanged(_)) | None => to_read.push(i),
        }
    }
    let read_ids: Vec<&str> = to_read.iter().map(|&i| ids[i]).collect();
    for (&i, read) in to_read.iter().zip(get_many(shared, &read_ids).await) {
        let record = match read {
            Ok(Some(record)) => record,
            Ok(None) => {
                recent.forget(ids[i]);
                out[i] = Some(Swapped::Done(None));
                continue;
            }
            Err(e) => {
                recent.forget(ids[i]);
                out[i] = Some(Swapped::Failed(e));
                continue;
            }
        };
        match applied(record, change, now) {
            Applied::Changed(expected, record, stored) => {
                changed[i] = Some((expected, record, stored));
            }
            Applied::Unchanged(record) => {
                let record = Arc::new(record);
                recent.keep(record.clone());
                out[i] = Some(Swapped::Done(Some(record)));
            }
        }
    }
    let positions: Vec<usize> = (0..ids.len()).filter(|&i| changed[i].is_some()).collect();
    let to_write: Vec<&str> = positions.iter().map(|&i| ids[i]).collect();
    let size = |j: usize| changed[positions[j]].as_ref().map_or(0, |c| c.2.len());
    let channel = shared.keys.events_channel();
    let writes = by_shard(&to_write, shared.is_cluster(), size)
        .into_iter()
        .map(|group| {
            let mut call = SWAP_MANY.prepare_invoke();
            call.arg(ttl_ms).arg(&channel);
            for &j in &group {
                let i = positions[j];
                let (expected, record, stored) = changed[i].as_ref().expect("changed");
                call.key(shared.keys.record(ids[i]))
                    .arg(expected)
                    .arg(record.version)
                    .arg(stored.as_slice())
                    .arg(ids[i]);
            }
            async move {
                let written: Result<Vec<i64>, BackendError> = shared.invoke(call).await;
                (group, written)
            }
        });
    for (group, written) in futures::future::join_all(writes).await {
        match written {
            Ok(written) => {
                for (j, w) in group.into_iter().zip(written) {
                    let i = positions[j];
                    out[i] = Some(match w {
                        1 => Swapped::Done(changed[i].take().map(|(_, r, _)| {
                            let r = Arc::new(r);
                            recent.keep(r.clone());
                            r
                        })),
                        -1 => {
                            recent.forget(ids[i]);
                            Swapped::Done(None)
                        }
                        _ => {
                            // Changed elsewhere: the next round reads it.
                            recent.forget(ids[i]);
                            Swapped::Conflict
                        }
                    });
                }
            }
            Err(e) => {
                for j in group {
                    recent.forget(ids[positions[j]]);
                    out[positions[j]] = Some(Swapped::Failed(e.again()));
                }
            }
        }
    }
    out.into_iter()
        .map(|o| o.unwrap_or(Swapped::Conflict))
        .collect()
}
