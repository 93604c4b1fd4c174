//! Work on Redis Streams: one stream per provider and shard, one consumer group `dispatch`.
//! Claims read without blocking the shared connection: the create script publishes which
//! shard got work, the replica's one subscriber wakes the claimers, and a full sweep every
//! `wait` catches a lost wake-up. Abandoned work is taken over with XAUTOCLAIM.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use ::redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use ::redis::{RedisError, Script};
use async_trait::async_trait;
use futures::future::join_all;

use super::{Delivery, Queue};
use crate::backend::BackendError;
use crate::model::WorkItem;
use crate::redis_state::{ALL_SHARDS, SHARDS, Shared};

const GROUP: &str = "dispatch";

/// KEYS: stream. ARGV: group, consumer, ids. Resets the idle time of the entries this
/// consumer still owns (an entry another replica took over stays with it).
static KEEP_ALIVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  end
end
return 0
",
    )
});

/// KEYS: streams. ARGV: group, then per stream the count of its ids and the ids.
/// Acknowledges and deletes, so streams stay small.
static ACK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local a = 2
for k = 1, #KEYS do
  local n = tonumber(ARGV[a])
  local ids = {}
  for i = 1, n do ids[i] = ARGV[a + i] end
  redis.call('XACK', KEYS[k], ARGV[1], unpack(ids))
  redis.call('XDEL', KEYS[k], unpack(ids))
  a = a + n + 1
end
return 0
",
    )
});

#[derive(Clone)]
pub struct RedisQueue {
    shared: Arc<Shared>,
    /// Providers whose consumer groups are known to exist.
    ready: Arc<Mutex<HashSet<String>>>,
    /// Where the last XAUTOCLAIM scan of each (provider, shard) stopped, so successive scans
    /// walk the whole pending list instead of its first entries again and again.
    cursors: Arc<Mutex<BTreeMap<(String, u8), String>>>,
}

/// XAUTOCLAIM calls per shard in one `reclaim`; each looks at up to 10 x COUNT entries.
const RECLAIM_ROUNDS: usize = 8;

/// `<shard>/<stream entry id>`.
fn delivery_id(shard: u8, entry: &str) -> String {
    format!("{shard}/{entry}")
}

/// Delivery ids grouped by shard.
fn by_shard(ids: &[String]) -> BTreeMap<u8, Vec<String>> {
    let mut out: BTreeMap<u8, Vec<String>> = BTreeMap::new();
    for id in ids {
        if let Some((shard, entry)) = id.split_once('/')
            && let Ok(shard) = shard.parse::<u8>()
        {
            out.entry(shard).or_default().push(entry.to_owned());
        }
    }
    out
}

fn shards(mask: u32) -> impl Iterator<Item = u8> {
    (0..SHARDS).filter(move |s| mask & (1 << s) != 0)
}

fn is_no_group(e: &BackendError) -> bool {
    match e {
        BackendError::Unavailable(source) => source
            .downcast_ref::<RedisError>()
            .is_some_and(|r| r.code() == Some("NOGROUP")),
        BackendError::Corrupt(_) => false,
    }
}

impl RedisQueue {
    /// Runs one operation per shard, each within the timeout. Entries a shard delivered are
    /// this consumer's now, so they are kept even when another shard failed; an error only
    /// when every shard failed.
    async fn each_shard(
        &self,
        ops: impl Iterator<Item = impl Future<Output = Result<(u8, Vec<StreamId>), RedisError>>>,
    ) -> Result<Vec<(u8, Vec<StreamId>)>, BackendError> {
        let answers = join_all(ops.map(|op| self.shared.bounded(op))).await;
        let mut results = Vec::with_capacity(answers.len());
        let mut failure = None;
        for answer in answers {
            match answer {
                Ok(r) => results.push(r),
                // A shard whose consumer group is gone must be regrouped by the caller; its
                // siblings' entries are taken over again after `reclaim_idle`.
                Err(e) if is_no_group(&e) => return Err(e),
                Err(e) => failure = Some(e),
            }
        }
        match failure {
            Some(e) if results.is_empty() => Err(e),
            Some(e) => {
                tracing::warn!(error = %e, "a queue shard did not answer; the others' work is kept");
                Ok(results)
            }
            None => Ok(results),
        }
    }

    pub fn new(shared: Arc<Shared>) -> RedisQueue {
        RedisQueue {
            shared,
            ready: Arc::default(),
            cursors: Arc::default(),
        }
    }

    /// Creates the consumer group of every shard stream of `provider` (at the stream's
    /// start, so work enqueued before the first replica came is seen).
    async fn ensure_groups(&self, provider: &str) -> Result<(), BackendError> {
        if self.ready.lock().expect("ready lock").contains(provider) {
            return Ok(());
        }
        let conn = self.shared.conn().await?;
        let creates = (0..SHARDS).map(|shard| {
            let key = self.shared.keys.stream(shard, provider);
            let mut c = conn.clone();
            async move {
                let r: Result<(), RedisError> = ::redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(&key)
                    .arg(GROUP)
                    .arg("0")
                    .arg("MKSTREAM")
                    .query_async(&mut c)
                    .await;
                match r {
                    Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
                    other => other,
                }
            }
        });
        self.shared
            .bounded(async {
                join_all(creates)
                    .await
                    .into_iter()
                    .collect::<Result<Vec<()>, _>>()
            })
            .await?;
        self.ready
            .lock()
            .expect("ready lock")
            .insert(provider.to_owned());
        Ok(())
    }

    /// New entries of the given shards, `per_shard` at most from each.
    async fn read(
        &self,
        provider: &str,
        consumer: &str,
        mask: u32,
        per_shard: usize,
    ) -> Result<Vec<Delivery>, BackendError> {
        let conn = self.shared.conn().await?;
        let reads = shards(mask).map(|shard| {
            let key = self.shared.keys.stream(shard, provider);
            let mut c = conn.clone();
            async move {
                let reply: Option<StreamReadReply> = ::redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(GROUP)
                    .arg(consumer)
                    .arg("COUNT")
                    .arg(per_shard)
                    .arg("STREAMS")
                    .arg(&key)
                    .arg(">")
                    .query_async(&mut c)
                    .await?;
                let ids = reply
                    .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
                    .unwrap_or_default();
                Ok::<_, RedisError>((shard, ids))
            }
        });
        let results = self.each_shard(reads).await?;
        let mut out = Vec::new();
        for (shard, ids) in results {
            if ids.len() >= per_shard {
                // The shard may hold more: read it again on the next claim.
                self.shared.work.mark(provider, 1 << shard);
            }
            out.extend(ids.into_iter().filter_map(|e| entry(provider, shard, e)));
        }
        Ok(out)
    }

    /// `read`, recreating the groups if Redis lost them (a restart without persistence).
    async fn read_or_regroup(
        &self,
        provider: &str,
        consumer: &str,
        mask: u32,
        per_shard: usize,
    ) -> Result<Vec<Delivery>, BackendError> {
        match self.read(provider, consumer, mask, per_shard).await {
            Err(e) if is_no_group(&e) => {
                tracing::warn!(provider, "work streams were lost; recreating them");
                self.ready.lock().expect("ready lock").remove(provider);
                self.ensure_groups(provider).await?;
                self.read(provider, consumer, mask, per_shard).await
            }
            other => other,
        }
    }
}

fn entry(provider: &str, shard: u8, e: StreamId) -> Option<Delivery> {
    let purge_id: String = e.get("purge")?;
    Some(Delivery {
        id: delivery_id(shard, &e.id),
        item: WorkItem {
            purge_id,
            provider: provider.to_owned(),
        },
    })
}

#[async_trait]
impl Queue for RedisQueue {
    async fn claim(
        &self,
        provider: &str,
        consumer: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, BackendError> {
        self.ensure_groups(provider).await?;
        let per_shard = max.div_ceil(SHARDS as usize).max(1);
        let deadline = tokio::time::Instant::now() + wait;
        let signal = self.shared.work.clone();
        loop {
            let arrived = signal.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let mask = signal.take(provider);
            if mask != 0 {
                let found = self
                    .read_or_regroup(provider, consumer, mask, per_shard)
                    .await?;
                if !found.is_empty() {
                    return Ok(found);
                }
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                // No wake-up within `wait`: sweep every shard once, in case one was lost.
                return self
                    .read_or_regroup(provider, consumer, ALL_SHARDS, per_shard)
                    .await;
            }
        }
    }

    async fn reclaim(
        &self,
        provider: &str,
        consumer: &str,
        min_idle: Duration,
        max: usize,
    ) -> Result<Vec<Delivery>, BackendError> {
        self.ensure_groups(provider).await?;
        let per_shard = max.div_ceil(SHARDS as usize).max(1);
        let conn = self.shared.conn().await?;
        let idle = min_idle.as_millis() as u64;
        let claims = (0..SHARDS).map(|shard| {
            let key = self.shared.keys.stream(shard, provider);
            let cursor_key = (provider.to_owned(), shard);
            let mut c = conn.clone();
            async move {
                let mut start = self
                    .cursors
                    .lock()
                    .expect("cursor lock")
                    .get(&cursor_key)
                    .cloned()
                    .unwrap_or_else(|| "0-0".into());
                let mut claimed = Vec::new();
                for _ in 0..RECLAIM_ROUNDS {
                    let reply: Result<StreamAutoClaimReply, RedisError> =
                        ::redis::cmd("XAUTOCLAIM")
                            .arg(&key)
                            .arg(GROUP)
                            .arg(consumer)
                            .arg(idle)
                            .arg(&start)
                            .arg("COUNT")
                            .arg(per_shard - claimed.len())
                            .query_async(&mut c)
                            .await;
                    let reply = match reply {
                        Ok(r) => r,
                        Err(e) if claimed.is_empty() => return Err(e),
                        // What earlier rounds claimed is ours now: keep it.
                        Err(e) => {
                            tracing::warn!(provider, shard, error = %e, "reclaim stopped early");
                            break;
                        }
                    };
                    if !reply.deleted_ids.is_empty() {
                        // Entries acknowledged and deleted meanwhile: nothing left to do; if
                        // this fails, a later round acknowledges them.
                        let acked: Result<i64, RedisError> = ::redis::cmd("XACK")
                            .arg(&key)
                            .arg(GROUP)
                            .arg(&reply.deleted_ids)
                            .query_async(&mut c)
                            .await;
                        if let Err(e) = acked {
                            tracing::warn!(provider, shard, error = %e, "cannot drop deleted entries");
                        }
                    }
                    claimed.extend(reply.claimed);
                    start = reply.next_stream_id;
                    if start == "0-0" || claimed.len() >= per_shard {
                        break;
                    }
                }
                self.cursors
                    .lock()
                    .expect("cursor lock")
                    .insert(cursor_key, start);
                Ok::<_, RedisError>((shard, claimed))
            }
        });
        let results = self.each_shard(claims).await?;
        Ok(results
            .into_iter()
            .flat_map(|(shard, ids)| {
                ids.into_iter()
                    .filter_map(move |e| entry(provider, shard, e))
            })
            .collect())
    }

    async fn keep_alive(
        &self,
        provider: &str,
        consumer: &str,
        ids: &[String],
    ) -> Result<(), BackendError> {
        let conn = self.shared.conn().await?;
        let calls = by_shard(ids).into_iter().map(|(shard, entries)| {
            let mut call = KEEP_ALIVE.prepare_invoke();
            call.key(self.shared.keys.stream(shard, provider))
                .arg(GROUP)
                .arg(consumer)
                .arg(entries);
            let mut c = conn.clone();
            async move { call.invoke_async::<i64>(&mut c).await }
        });
        self.shared
            .bounded(async { join_all(calls).await.into_iter().collect() })
            .await
            .map(|_: Vec<i64>| ())
    }

    /// XLEN of each shard stream (acknowledged entries are deleted, so what is left is
    /// unclaimed or held), one constant-time command per stream.
    async fn backlog(&self, provider: &str) -> Result<u64, BackendError> {
        let conn = self.shared.conn().await?;
        let lengths = (0..SHARDS).map(|shard| {
            let key = self.shared.keys.stream(shard, provider);
            let mut c = conn.clone();
            async move {
                ::redis::cmd("XLEN")
                    .arg(&key)
                    .query_async::<u64>(&mut c)
                    .await
            }
        });
        self.shared
            .bounded(async {
                join_all(lengths)
                    .await
                    .into_iter()
                    .sum::<Result<u64, RedisError>>()
            })
            .await
    }

    async fn ack(&self, provider: &str, ids: &[String]) -> Result<(), BackendError> {
        let conn = self.shared.conn().await?;
        // One call per shard on a cluster (a call's keys must share a slot); one call for
        // every shard on one node.
        let shards: Vec<(u8, Vec<String>)> = by_shard(ids).into_iter().collect();
        let groups: Vec<&[(u8, Vec<String>)]> = if self.shared.is_cluster() {
            shards.chunks(1).collect()
        } else {
            vec![&shards[..]]
        };
        let calls = groups.into_iter().filter(|g| !g.is_empty()).map(|group| {
            let mut call = ACK.prepare_invoke();
            call.arg(GROUP);
            for (shard, entries) in group {
                call.key(self.shared.keys.stream(*shard, provider))
                    .arg(entries.len())
                    .arg(entries);
            }
            let mut c = conn.clone();
            async move { call.invoke_async::<i64>(&mut c).await }
        });
        self.shared
            .bounded(async { join_all(calls).await.into_iter().collect() })
            .await
            .map(|_: Vec<i64>| ())
    }
}
