//! Listing purges from Redis: per-shard sorted sets of ids (one per caller, one for everyone,
//! added and pruned by create), read newest first and merged across the
//! shards; no `KEYS` or `SCAN`, and every command stays within one shard's slot.

use futures::future::try_join_all;

use super::codec::decode_stored as decode;
use super::{ListPage, ListQuery};
use crate::backend::BackendError;
use crate::redis_state::{SHARDS, Shared};

/// Ids read per shard and round: enough for most pages in one round, whatever the filter.
fn batch_of(limit: usize) -> usize {
    (limit + 1).clamp(32, 1000)
}

pub(super) async fn list(shared: &Shared, query: ListQuery<'_>) -> Result<ListPage, BackendError> {
    let batch = batch_of(query.limit);
    let mut cursor = query.before.map(str::to_owned);
    let mut page = ListPage::default();
    loop {
        let max = cursor
            .as_ref()
            .map_or_else(|| "+".to_owned(), |c| format!("({c}"));
        let reads = (0..SHARDS).map(|shard| {
            let key = shared.keys.list_index(shard, query.caller);
            let max = max.clone();
            shared.with(move |mut c| async move {
                ::redis::cmd("ZREVRANGEBYLEX")
                    .arg(&key)
                    .arg(&max)
                    .arg("-")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(batch)
                    .query_async::<Vec<String>>(&mut c)
                    .await
            })
        });
        let lists = try_join_all(reads).await?;
        // Each shard gave its newest `batch`: the newest `batch` of their union are exact.
        let short = lists.iter().all(|l| l.len() < batch);
        let mut ids: Vec<String> = lists.into_iter().flatten().collect();
        ids.sort_unstable_by(|a, b| b.cmp(a));
        let exhausted = short && ids.len() <= batch;
        ids.truncate(batch);
        let Some(last) = ids.last().cloned() else {
            return Ok(page);
        };
        let loads = ids.iter().map(|id| {
            let key = shared.keys.record(id);
            shared.with(move |mut c| async move {
                ::redis::cmd("HGET")
                    .arg(&key)
                    .arg("json")
                    .query_async::<Option<Vec<u8>>>(&mut c)
                    .await
            })
        });
        for json in try_join_all(loads).await? {
            // Expired since it was indexed: pruned at a later create.
            let Some(json) = json else { continue };
            let record = decode(&json)?;
            if query.caller.is_some_and(|c| record.caller != c) || !(query.keep)(&record) {
                continue;
            }
            if page.records.len() == query.limit {
                page.more = true;
                return Ok(page);
            }
            page.records.push(record);
        }
        if exhausted {
            return Ok(page);
        }
        cursor = Some(last);
    }
}
