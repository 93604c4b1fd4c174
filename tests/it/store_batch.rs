//! The stores' batch calls (`get_many`, `update_many`), which the dispatcher records a provider
//! call with, on memory, one Redis node and a Redis cluster: one answer per id, in order; a
//! record that cannot be read fails alone; a change applied again changes nothing; every
//! written purge wakes its watchers (on Redis one wake-up carries several ids).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use purge_service::backend::BackendError;
use purge_service::model::{Action, PurgeKind, PurgeRecord, PurgeSpec};
use purge_service::redis_state::Keys;
use purge_service::store::memory::MemoryStore;
use purge_service::store::{CreateOutcome, IdempotencyClaim, Store};

use crate::redis_server::{RedisCluster, RedisServer, RedisTarget};

/// Purges spread over the shards (a UUIDv7's last byte is random).
const PURGES: usize = 40;

fn spec(i: usize) -> PurgeSpec {
    PurgeSpec {
        provider: "sandbox".into(),
        providers: vec!["sandbox".into()],
        kind: PurgeKind::Url,
        targets: vec![format!("https://example.com/{i}.js")],
        action: Action::Invalidate,
        hosts: vec![],
        headers: Default::default(),
        labels: Default::default(),
        idempotency_key: None,
    }
}

/// `PURGES` purges created in `store`, each with an idempotency key when `keyed`.
async fn created(store: &dyn Store, keyed: bool) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..PURGES {
        let id = uuid::Uuid::now_v7().to_string();
        let record = PurgeRecord::new(id, "tester".into(), spec(i), chrono::Utc::now());
        let claim = keyed.then(|| IdempotencyClaim {
            scope: format!("tester\u{1f}key-{i}"),
            fingerprint: format!("fp-{i}"),
            retention: Duration::from_secs(3600),
        });
        match store.create(record, claim, vec![]).await.unwrap() {
            // With a key, the id is pinned to the key's shard.
            CreateOutcome::Created(r) => ids.push(r.id),
            other => panic!("{other:?}"),
        }
    }
    ids
}

/// Reads and changes every purge of `ids` plus one that never was; `broken` is the position
/// of a record that cannot be read, if any.
async fn batch_calls(store: Arc<dyn Store>, ids: &[String], broken: Option<usize>) {
    let gone = uuid::Uuid::now_v7().to_string();
    let mut asked: Vec<&str> = ids.iter().map(String::as_str).collect();
    asked.push(&gone);
    let expect = |i: usize, r: &Result<Option<Arc<PurgeRecord>>, BackendError>| {
        if Some(i) == broken {
            assert!(matches!(r, Err(BackendError::Corrupt(_))), "{i}: {r:?}");
        } else if i == PURGES {
            assert!(matches!(r, Ok(None)), "a purge that never was: {r:?}");
        } else {
            let record = r.as_ref().expect("read").as_ref().expect("exists");
            assert_eq!(record.id, ids[i]);
        }
    };
    let read = store.get_many(&asked).await;
    assert_eq!(read.len(), asked.len());
    for (i, r) in read.iter().enumerate() {
        expect(i, r);
    }

    let mut events = store.events();
    let mark = |r: &mut PurgeRecord| r.spec.labels.insert("seen".into(), r.id.clone()).is_none();
    let after = store.update_many(&asked, &mark).await;
    assert_eq!(after.len(), asked.len());
    for (i, r) in after.iter().enumerate() {
        expect(i, r);
        if let Ok(Some(record)) = r {
            assert_eq!(
                record.spec.labels["seen"], record.id,
                "the change is on the record"
            );
            assert_eq!(
                record.version,
                read[i].as_ref().unwrap().as_ref().unwrap().version + 1
            );
        }
    }
    let again = store.update_many(&asked, &mark).await;
    for (i, r) in again.iter().enumerate() {
        if let Ok(Some(record)) = r {
            let first = after[i].as_ref().unwrap().as_ref().unwrap();
            assert_eq!(
                record.version, first.version,
                "applied again, it changes nothing"
            );
        }
    }
    // Every written purge woke its watchers.
    let written: HashSet<&str> = (0..PURGES)
        .filter(|i| Some(*i) != broken)
        .map(|i| ids[i].as_str())
        .collect();
    let mut woken = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !written.iter().all(|id| woken.contains(*id)) {
        let ids = tokio::time::timeout_at(deadline, events.recv())
            .await
            .expect("a wake-up for every written purge")
            .expect("events open");
        woken.extend(ids.split(' ').map(str::to_owned));
    }
}

#[tokio::test]
async fn memory_batch_calls_answer_each_purge() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new(
        Arc::new(|_| {}),
        Duration::from_secs(3600),
    ));
    let ids = created(store.as_ref(), false).await;
    batch_calls(store, &ids, None).await;
}

async fn redis_store(target: &RedisTarget) -> Arc<dyn Store> {
    let config = target.config("");
    purge_service::app::Backends::build(&config)
        .await
        .unwrap()
        .store
}

#[tokio::test]
async fn redis_batch_calls_fail_only_the_broken_record() {
    let server = RedisServer::start();
    let target = RedisTarget::node(&server);
    let store = redis_store(&target).await;
    let ids = created(store.as_ref(), false).await;
    let key = Keys::new(&target.prefix).record(&ids[7]);
    let _: () = server.query(redis::cmd("HSET").arg(&key).arg("json").arg("not a record"));
    batch_calls(store, &ids, Some(7)).await;
}

#[tokio::test]
async fn redis_cluster_batch_calls_keep_each_call_in_one_slot() {
    let cluster = RedisCluster::start();
    let store = redis_store(&RedisTarget::cluster(&cluster)).await;
    let ids = created(store.as_ref(), false).await;
    batch_calls(store, &ids, None).await;
}

/// Each replica's batch updates start from the records it last read or wrote (the dispatcher
/// changes a purge three times). What another replica wrote meanwhile is never written over:
/// the refused write is made again on a fresh read, and a change the kept copy already shows
/// is checked against Redis, not taken from the copy.
#[tokio::test]
async fn redis_batch_updates_keep_what_another_replica_wrote_meanwhile() {
    let server = RedisServer::start();
    let target = RedisTarget::node(&server);
    let a = redis_store(&target).await;
    let b = redis_store(&target).await;
    let ids = created(a.as_ref(), false).await;
    let asked: Vec<&str> = ids.iter().map(String::as_str).collect();
    let add = |name: &'static str| {
        move |r: &mut PurgeRecord| r.spec.labels.insert(name.into(), "1".into()).is_none()
    };
    let remove =
        |name: &'static str| move |r: &mut PurgeRecord| r.spec.labels.remove(name).is_some();
    let labels = |results: Vec<Result<Option<Arc<PurgeRecord>>, BackendError>>| {
        results
            .into_iter()
            .map(|r| {
                let r = r.expect("written").expect("exists");
                r.spec.labels.keys().cloned().collect::<Vec<_>>().join(",")
            })
            .collect::<Vec<_>>()
    };
    // A reads them, as its dispatcher does when it takes the work, and changes them once.
    a.get_many(&asked).await;
    a.update_many(&asked, &add("a1")).await;
    // B changes every one behind A's back; A's next change is made on B's record.
    b.update_many(&asked, &add("b")).await;
    let after = labels(a.update_many(&asked, &add("a2")).await);
    assert!(after.iter().all(|l| l == "a1,a2,b"), "{after:?}");
    // B takes A's first label off; A's copy still shows it, Redis does not.
    b.update_many(&asked, &remove("a1")).await;
    let after = labels(a.update_many(&asked, &add("a1")).await);
    assert!(after.iter().all(|l| l == "a1,a2,b"), "{after:?}");
    let read = labels(b.get_many(&asked).await);
    assert!(read.iter().all(|l| l == "a1,a2,b"), "{read:?}");
}

/// The listing indexes are kept up by create: a purge id older than the records are kept is
/// pruned, and an index expires (a day after the records would) when nothing is created.
#[tokio::test]
async fn redis_create_prunes_the_listing_indexes_and_keeps_their_ttl() {
    let server = RedisServer::start();
    let target = RedisTarget::node(&server);
    let keys = Keys::new(&target.prefix);
    // An id made 30 days ago (the records are kept 7), in every shard's two indexes.
    let month_ago = chrono::Utc::now() - chrono::Duration::days(30);
    let ts = uuid::Timestamp::from_unix(
        uuid::NoContext,
        month_ago.timestamp() as u64,
        month_ago.timestamp_subsec_nanos(),
    );
    let old = uuid::Uuid::new_v7(ts).to_string();
    let indexes = |shard: u8| {
        [
            keys.list_index(shard, Some("tester")),
            keys.list_index(shard, None),
        ]
    };
    // Without idempotency keys (one MULTI/EXEC each on one node), then with them (the script);
    // a fresh store each time, so every index is due for upkeep.
    for keyed in [false, true] {
        for shard in 0..purge_service::redis_state::SHARDS {
            for index in indexes(shard) {
                let _: () = server.query(redis::cmd("ZADD").arg(&index).arg(0).arg(&old));
            }
        }
        let store = redis_store(&target).await;
        let ids = created(store.as_ref(), keyed).await;
        let shards: HashSet<u8> = ids
            .iter()
            .map(|id| purge_service::redis_state::shard_of_id(id))
            .collect();
        for shard in shards {
            for index in indexes(shard) {
                let members: Vec<String> =
                    server.query(redis::cmd("ZRANGE").arg(&index).arg(0).arg(-1));
                assert!(
                    !members.contains(&old),
                    "keyed {keyed}: {index} still lists {old}"
                );
                assert!(!members.is_empty(), "{index} lists the new purges");
                let ttl: i64 = server.query(redis::cmd("PTTL").arg(&index));
                let (min, max) = (7 * 24 * 3600 * 1000, 8 * 24 * 3600 * 1000);
                assert!((min..=max).contains(&ttl), "{index} expires in {ttl} ms");
            }
        }
    }
}

/// Creates without a key on one node are committed in groups (one `MULTI`/`EXEC` for the
/// creates waiting together), yet each gets its own answer: a caller whose listing index is
/// broken (a key of the wrong type) fails its own creates only, and every other create of the
/// same transaction is recorded, listed and queued.
#[tokio::test]
async fn redis_creates_committed_together_answer_each_alone() {
    let server = RedisServer::start();
    let target = RedisTarget::node(&server);
    let keys = Keys::new(&target.prefix);
    for shard in 0..purge_service::redis_state::SHARDS {
        let index = keys.list_index(shard, Some("broken"));
        let _: () = server.query(redis::cmd("SET").arg(&index).arg("not a sorted set"));
    }
    let store = redis_store(&target).await;
    const CREATES: usize = 200;
    let creates = (0..CREATES).map(|i| {
        let store = store.clone();
        async move {
            let id = uuid::Uuid::now_v7().to_string();
            let caller = if i % 2 == 0 { "tester" } else { "broken" };
            let record = PurgeRecord::new(id.clone(), caller.into(), spec(i), chrono::Utc::now());
            let work = vec![purge_service::model::WorkItem {
                purge_id: id.clone(),
                provider: "sandbox".into(),
            }];
            (caller, id, store.create(record, None, work).await)
        }
    });
    let answers = futures::future::join_all(creates).await;
    let mut queued = HashSet::new();
    for shard in 0..purge_service::redis_state::SHARDS {
        let entries: Vec<redis::Value> = server.query(
            redis::cmd("XRANGE")
                .arg(keys.stream(shard, "sandbox"))
                .arg("-")
                .arg("+"),
        );
        for entry in entries {
            let (_, fields): (String, Vec<String>) = redis::from_redis_value(entry).unwrap();
            queued.insert(fields[1].clone());
        }
    }
    for (caller, id, answer) in answers {
        let shard = purge_service::redis_state::shard_of_id(&id);
        match caller {
            "broken" => assert!(
                matches!(answer, Err(BackendError::Unavailable(_))),
                "{id}: {answer:?}"
            ),
            _ => {
                assert!(
                    matches!(answer, Ok(CreateOutcome::Created(_))),
                    "{id}: {answer:?}"
                );
                assert!(store.get(&id).await.unwrap().is_some(), "{id} is recorded");
                for index in [
                    keys.list_index(shard, Some(caller)),
                    keys.list_index(shard, None),
                ] {
                    let score: Option<f64> =
                        server.query(redis::cmd("ZSCORE").arg(&index).arg(&id));
                    assert_eq!(score, Some(0.0), "{id} is listed in {index}");
                }
                assert!(queued.contains(&id), "{id} is queued");
            }
        }
    }
    // Grouped: far fewer transactions than creates. The creates are all started before the
    // first commit can run because this test's runtime has one thread (`#[tokio::test]`'s
    // default); on a multi-threaded one the first few could go out alone.
    let execs = execs(&server);
    assert!(
        execs < CREATES / 4,
        "{execs} transactions for {CREATES} creates"
    );
}

/// Large records are cut into several transactions (Redis runs a transaction whole, so one of
/// megabytes would hold every other client), and every create of the group is still written.
#[tokio::test]
async fn redis_creates_of_large_records_go_out_in_several_transactions() {
    let server = RedisServer::start();
    let target = RedisTarget::node(&server);
    let store = redis_store(&target).await;
    const CREATES: usize = 6;
    // About 400 KB of targets each: together well over a transaction's megabyte.
    let big = |i: usize| PurgeSpec {
        targets: (0..800)
            .map(|t| format!("https://example.com/{i}/{t}/{}", "x".repeat(480)))
            .collect(),
        ..spec(i)
    };
    let creates = (0..CREATES).map(|i| {
        let store = store.clone();
        async move {
            let id = uuid::Uuid::now_v7().to_string();
            let record = PurgeRecord::new(id.clone(), "tester".into(), big(i), chrono::Utc::now());
            let work = vec![purge_service::model::WorkItem {
                purge_id: id.clone(),
                provider: "sandbox".into(),
            }];
            (id, store.create(record, None, work).await)
        }
    });
    let answers = futures::future::join_all(creates).await;
    for (id, answer) in &answers {
        assert!(
            matches!(answer, Ok(CreateOutcome::Created(_))),
            "{id}: {answer:?}"
        );
        let record = store.get(id).await.unwrap().expect("recorded");
        assert_eq!(record.spec.targets.len(), 800, "{id} keeps its targets");
    }
    let execs = execs(&server);
    // One runtime thread: all six wait together, so one transaction without the byte budget.
    assert!(
        (3..CREATES).contains(&execs),
        "{execs} transactions for {CREATES} creates of ~400 KB"
    );
}

/// `EXEC`s the server has run: one per transaction.
fn execs(server: &RedisServer) -> usize {
    let stats: String = server.query(redis::cmd("INFO").arg("commandstats"));
    stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_exec:calls="))
        .and_then(|l| l.split(',').next())
        .and_then(|n| n.parse().ok())
        .expect("EXEC was called")
}
