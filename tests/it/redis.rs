//! The core flows on the Redis backend, on one node and on a 3-master cluster: create, watch,
//! idempotency across replicas, fan-out, failures, caller rates, and the shared limiter.

use std::collections::HashSet;
use std::time::Duration;

use purge_service::limiter::{Charge, Decision, Limit, Rate};
use purge_service::pb::{self, PurgeKind, PurgeState};
use tokio_stream::StreamExt;
use tonic::Code;

use crate::redis_server::{RedisCluster, RedisServer, RedisTarget, unique};
use crate::support::{TestApp, reason, request, spawn_app, wait_terminal};

fn sandbox(account: &str, extra: &str) -> String {
    format!(
        "[[providers]]\nname = \"sandbox\"\ntype = \"sandbox\"\ndelay = \"50ms\"\naccount = \"{account}\"\n{extra}\n"
    )
}

async fn replicas(target: &RedisTarget, rest: &str, n: usize) -> Vec<TestApp> {
    let mut apps = Vec::new();
    for _ in 0..n {
        apps.push(spawn_app(target.config(rest)).await);
    }
    apps
}

async fn create_then_watch(target: &RedisTarget) {
    let app = spawn_app(target.config(&sandbox(&unique("acct"), ""))).await;
    let mut client = app.client.clone();
    let created = client
        .create_purge(request(
            "sandbox",
            PurgeKind::Url,
            &["https://example.com/a.png", "https://example.com/b.css"],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.state(), PurgeState::Queued);
    let mut stream = client
        .watch_purge(pb::WatchPurgeRequest {
            id: created.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut versions = Vec::new();
    let mut last = None;
    while let Some(msg) = tokio::time::timeout(Duration::from_secs(15), stream.next())
        .await
        .expect("watch progresses")
    {
        let p = msg.expect("stream ends with OK");
        versions.push(p.version);
        last = Some(p);
    }
    let last = last.expect("at least the snapshot");
    assert_eq!(last.state(), PurgeState::Succeeded, "{last:?}");
    assert!(
        versions.len() >= 2 && versions.windows(2).all(|w| w[0] < w[1]),
        "versions: {versions:?}"
    );
    assert_eq!(last.progress.unwrap().succeeded, 2);
    let got = client
        .get_purge(pb::GetPurgeRequest { id: created.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.version, last.version);
}

/// 100 concurrent creates with one key, spread over three replicas: one purge, one call.
async fn one_key_on_three_replicas(target: &RedisTarget) {
    let account = unique("acct");
    let apps = replicas(target, &sandbox(&account, ""), 3).await;
    let mut req = request("sandbox", PurgeKind::Url, &["https://example.com/once"]);
    req.idempotency_key = unique("deploy");
    let calls = (0..100).map(|i| {
        let mut c = apps[i % 3].client.clone();
        let req = req.clone();
        tokio::spawn(async move { c.create_purge(req).await.map(|p| p.into_inner().id) })
    });
    let ids: HashSet<String> = futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap())
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let id = ids.into_iter().next().unwrap();
    for app in &apps {
        let p = wait_terminal(&app.client, &id, Duration::from_secs(15)).await;
        assert_eq!(p.state(), PurgeState::Succeeded);
    }
    let sent = apps[0].registry.sandbox("sandbox").unwrap().calls();
    assert_eq!(sent.len(), 1, "one purge means one provider call: {sent:?}");

    // Same key, another request, on another replica.
    let mut other = req.clone();
    other.targets = vec!["https://example.com/other".into()];
    let err = apps[2]
        .client
        .clone()
        .create_purge(other)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(reason(&err), "IDEMPOTENCY_KEY_REUSED");
}

/// A group fans out to two providers: both streams are written by the one create script.
async fn groups_and_failures(target: &RedisTarget) {
    let rest = format!(
        "{}{}[[groups]]\nname = \"both\"\nproviders = [\"a\", \"b\"]\n",
        sandbox(&unique("acct"), "").replace("\"sandbox\"\ntype", "\"a\"\ntype"),
        sandbox(&unique("acct"), "fail_pattern = \"/broken/\"")
            .replace("\"sandbox\"\ntype", "\"b\"\ntype"),
    );
    let app = spawn_app(target.config(&rest)).await;
    let mut client = app.client.clone();
    let mut req = request(
        "both",
        PurgeKind::Url,
        &["https://example.com/ok", "https://example.com/broken/x"],
    );
    req.idempotency_key = unique("fan");
    let created = client.create_purge(req).await.unwrap().into_inner();
    let done = wait_terminal(&client, &created.id, Duration::from_secs(15)).await;
    assert_eq!(done.state(), PurgeState::Failed, "{done:?}");
    assert_eq!(done.progress.unwrap().total, 4);
    assert_eq!(done.progress.unwrap().succeeded, 3);
    let failed: Vec<(&str, &str)> = done
        .failures
        .iter()
        .map(|f| (f.provider.as_str(), f.target.as_str()))
        .collect();
    assert_eq!(failed, [("b", "https://example.com/broken/x")]);
    assert_eq!(app.registry.sandbox("a").unwrap().calls().len(), 1);
    assert_eq!(app.registry.sandbox("b").unwrap().calls().len(), 1);
}

/// A caller's rate is shared by the replicas: the third call within the period is refused
/// by whichever replica gets it.
async fn caller_rate_across_replicas(target: &RedisTarget) {
    let rest = format!(
        "[server]\ncaller_rate = {{ count = 2, per = \"60s\" }}\n{}",
        sandbox(&unique("acct"), "")
    );
    let apps = replicas(target, &rest, 2).await;
    let req = request("sandbox", PurgeKind::Url, &["https://example.com/r"]);
    apps[0]
        .client
        .clone()
        .create_purge(req.clone())
        .await
        .unwrap();
    apps[1]
        .client
        .clone()
        .create_purge(req.clone())
        .await
        .unwrap();
    let err = apps[1]
        .client
        .clone()
        .create_purge(req.clone())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    let retry = tonic_types::StatusExt::get_error_details(&err)
        .retry_info()
        .cloned();
    let delay = retry
        .and_then(|r| r.retry_delay)
        .expect("RetryInfo with a delay");
    assert!(
        delay > Duration::from_secs(20) && delay <= Duration::from_secs(60),
        "{delay:?}"
    );
    let err = apps[0].client.clone().create_purge(req).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
}

/// The limiter script decides as `limiter::evaluate` does, with Redis time.
async fn limiter_rules(target: &RedisTarget) {
    let config = target.config(&sandbox(&unique("acct"), ""));
    let backends = purge_service::app::Backends::build(&config).await.unwrap();
    let limiter = backends.limiter;
    let key = unique("lim");
    let window = |cost| Charge {
        key: format!("{key}:0"),
        limit: Limit::Window(Rate::new(3, Duration::from_secs(300))),
        cost,
    };
    for _ in 0..3 {
        assert_eq!(
            limiter.acquire(&[window(1)]).await.unwrap(),
            Decision::Granted
        );
    }
    match limiter.acquire(&[window(1)]).await.unwrap() {
        Decision::Wait(d) => assert!(
            d > Duration::from_secs(290) && d <= Duration::from_secs(300),
            "{d:?}"
        ),
        other => panic!("a full window must wait, got {other:?}"),
    }
    let daily = |cost| Charge {
        key: format!("{key}:1"),
        limit: Limit::Daily {
            max: 10,
            utc_offset_secs: 8 * 3600,
        },
        cost,
    };
    assert_eq!(
        limiter.acquire(&[daily(8)]).await.unwrap(),
        Decision::Granted
    );
    match limiter.acquire(&[daily(3)]).await.unwrap() {
        Decision::Exhausted(d) => assert!(d <= Duration::from_secs(86_400), "{d:?}"),
        other => panic!("an exceeded daily quota is exhausted, got {other:?}"),
    }
    assert_eq!(
        limiter.acquire(&[daily(2)]).await.unwrap(),
        Decision::Granted
    );
    // Units given back (a refused call) can be charged again, but no more than were used.
    limiter.refund(&[daily(4)]).await.unwrap();
    assert_eq!(
        limiter.acquire(&[daily(4)]).await.unwrap(),
        Decision::Granted
    );
    assert!(matches!(
        limiter.acquire(&[daily(1)]).await.unwrap(),
        Decision::Exhausted(_)
    ));
    limiter.refund(&[daily(50)]).await.unwrap();
    assert_eq!(
        limiter.acquire(&[daily(10)]).await.unwrap(),
        Decision::Granted
    );
    assert!(matches!(
        limiter.acquire(&[daily(1)]).await.unwrap(),
        Decision::Exhausted(_)
    ));
    // All or nothing: a denied rule charges none of the others. (Rules acquired together
    // differ only in their last `:<n>`, so they share a cluster slot.)
    let gcra = Charge {
        key: format!("{key}:2"),
        limit: Limit::Gcra {
            rate: Rate::new(1, Duration::from_secs(60)),
            burst: 1,
        },
        cost: 1,
    };
    assert!(matches!(
        limiter.acquire(&[gcra.clone(), daily(1)]).await.unwrap(),
        Decision::Exhausted(_)
    ));
    assert_eq!(
        limiter.acquire(std::slice::from_ref(&gcra)).await.unwrap(),
        Decision::Granted
    );
    match limiter.acquire(&[gcra]).await.unwrap() {
        Decision::Wait(d) => assert!(d > Duration::from_secs(55), "{d:?}"),
        other => panic!("GCRA must space calls, got {other:?}"),
    }
    snapshot_reads_what_is_left(limiter.as_ref()).await;
    a_kinds_rate_with_the_apis(limiter.as_ref()).await;
    unused_grants_given_back(&*limiter, &key).await;
}

/// A kind's own rate (Fastly's purge_all) is charged in one call with the API's: on a cluster
/// their keys must be in one slot.
async fn a_kinds_rate_with_the_apis(limiter: &dyn purge_service::limiter::Limiter) {
    let budget = unique("fastly");
    let charges = [
        Charge {
            key: format!("{budget}:submit:0"),
            limit: Limit::Gcra {
                rate: Rate::new(100, Duration::from_secs(1)),
                burst: 100,
            },
            cost: 1,
        },
        Charge {
            key: format!("{budget}:submit-ALL:0"),
            limit: Limit::Window(Rate::new(2, Duration::from_secs(3600))),
            cost: 1,
        },
    ];
    for _ in 0..2 {
        assert_eq!(limiter.acquire(&charges).await.unwrap(), Decision::Granted);
    }
    assert!(matches!(
        limiter.acquire(&charges).await.unwrap(),
        Decision::Wait(_)
    ));
    let read = limiter.snapshot(&charges).await.unwrap();
    assert_eq!(read.remaining(&charges)[1], 0, "the kind's window is spent");
}

/// A snapshot reads what is left of each rule with Redis time, as `limiter::remaining` says,
/// and charges nothing.
async fn snapshot_reads_what_is_left(limiter: &dyn purge_service::limiter::Limiter) {
    let key = unique("left");
    let charge = |i: usize, limit| Charge {
        key: format!("{key}:{i}"),
        limit,
        cost: 1,
    };
    let rules = [
        charge(0, Limit::Window(Rate::new(10, Duration::from_secs(300)))),
        charge(
            1,
            Limit::Daily {
                max: 10,
                utc_offset_secs: 8 * 3600,
            },
        ),
        charge(
            2,
            Limit::Gcra {
                rate: Rate::new(1, Duration::from_secs(60)),
                burst: 5,
            },
        ),
        // Never charged.
        charge(3, Limit::Window(Rate::new(4, Duration::from_secs(1)))),
    ];
    for _ in 0..3 {
        assert_eq!(
            limiter.acquire(&rules[..3]).await.unwrap(),
            Decision::Granted
        );
    }
    let read = limiter.snapshot(&rules).await.unwrap();
    assert_eq!(read.remaining(&rules), [7, 7, 2, 4]);
    let local = purge_service::limiter::now_ms();
    assert!(read.now_ms.abs_diff(local) < 5_000, "Redis time {read:?}");
    let again = limiter.snapshot(&rules).await.unwrap();
    assert_eq!(
        again.remaining(&rules),
        [7, 7, 2, 4],
        "a read charges nothing"
    );
}

/// `unspend` as `limiter::unspent` does: a GCRA grant only while it is the last one spaced,
/// a window grant always.
async fn unused_grants_given_back(limiter: &dyn purge_service::limiter::Limiter, key: &str) {
    let gcra = |burst| Charge {
        key: format!("{key}:{}", 2 + burst),
        limit: Limit::Gcra {
            rate: Rate::new(1, Duration::from_secs(60)),
            burst,
        },
        cost: 1,
    };
    let one = [gcra(1)];
    let first = limiter.acquire_stamped(&one).await.unwrap();
    assert_eq!(first.decision, Decision::Granted);
    assert!(matches!(
        limiter.acquire(&one).await.unwrap(),
        Decision::Wait(_)
    ));
    assert!(limiter.unspend(&one, first.at_ms).await.unwrap());
    assert_eq!(limiter.acquire(&one).await.unwrap(), Decision::Granted);
    // Two grants in a burst: the first is no longer the last, so it stays spent.
    let two = [gcra(2)];
    let first = limiter.acquire_stamped(&two).await.unwrap();
    assert_eq!(first.decision, Decision::Granted);
    assert_eq!(limiter.acquire(&two).await.unwrap(), Decision::Granted);
    assert!(!limiter.unspend(&two, first.at_ms).await.unwrap());
    assert!(matches!(
        limiter.acquire(&two).await.unwrap(),
        Decision::Wait(_)
    ));
    let window = [Charge {
        key: format!("{key}:5"),
        limit: Limit::Window(Rate::new(1, Duration::from_secs(300))),
        cost: 1,
    }];
    let granted = limiter.acquire_stamped(&window).await.unwrap();
    assert_eq!(granted.decision, Decision::Granted);
    assert!(matches!(
        limiter.acquire(&window).await.unwrap(),
        Decision::Wait(_)
    ));
    assert!(limiter.unspend(&window, granted.at_ms).await.unwrap());
    assert_eq!(limiter.acquire(&window).await.unwrap(), Decision::Granted);
}

#[tokio::test]
async fn redis_create_then_watch() {
    let server = RedisServer::start();
    create_then_watch(&RedisTarget::node(&server)).await;
}

#[tokio::test]
async fn redis_one_key_on_three_replicas_is_one_purge() {
    let server = RedisServer::start();
    one_key_on_three_replicas(&RedisTarget::node(&server)).await;
}

#[tokio::test]
async fn redis_groups_and_failures() {
    let server = RedisServer::start();
    groups_and_failures(&RedisTarget::node(&server)).await;
}

#[tokio::test]
async fn redis_caller_rate_is_shared() {
    let server = RedisServer::start();
    caller_rate_across_replicas(&RedisTarget::node(&server)).await;
}

#[tokio::test]
async fn redis_limiter_rules() {
    let server = RedisServer::start();
    limiter_rules(&RedisTarget::node(&server)).await;
}

#[tokio::test]
async fn redis_cluster_core_flows() {
    let cluster = RedisCluster::start();
    let target = || RedisTarget::cluster(&cluster);
    create_then_watch(&target()).await;
    one_key_on_three_replicas(&target()).await;
    groups_and_failures(&target()).await;
    caller_rate_across_replicas(&target()).await;
    limiter_rules(&target()).await;
    // The create path spread purges over every master.
    let mut masters_with_records = 0;
    for node in &cluster.nodes {
        let size: i64 = node.query(&redis::cmd("DBSIZE"));
        if size > 0 {
            masters_with_records += 1;
        }
    }
    assert_eq!(masters_with_records, 3, "keys should land on every master");
}

#[tokio::test]
async fn redis_retries_are_answered_over_the_rate() {
    let server = RedisServer::start();
    let target = RedisTarget::node(&server);
    crate::api::retries_are_answered_over_the_rate(
        target.config(crate::api::ONE_CREATE_PER_MINUTE),
    )
    .await;
}

/// Takeover walks the whole pending list: work a live replica keeps alive at the front does not
/// hide the idle work of a dead one behind it.
#[tokio::test]
async fn redis_reclaim_reaches_idle_work_behind_live_work() {
    use purge_service::model::{Action, PurgeKind, PurgeRecord, PurgeSpec, WorkItem};

    let server = RedisServer::start();
    let target = RedisTarget::node(&server);
    let backends = purge_service::app::Backends::build(&target.config(&sandbox("acct", "")))
        .await
        .unwrap();
    let (store, queue) = (backends.store, backends.queue);
    let spec = PurgeSpec {
        provider: "sandbox".into(),
        providers: vec!["sandbox".into()],
        kind: PurgeKind::Url,
        targets: vec!["https://example.com/a".into()],
        action: Action::Invalidate,
        hosts: Vec::new(),
        headers: Default::default(),
        labels: Default::default(),
        idempotency_key: None,
    };
    for _ in 0..400 {
        let id = uuid::Uuid::now_v7().to_string();
        let work = vec![WorkItem {
            purge_id: id.clone(),
            provider: "sandbox".into(),
        }];
        let record = PurgeRecord::new(id, "t".into(), spec.clone(), chrono::Utc::now());
        store.create(record, None, work).await.unwrap();
    }
    let mut held = Vec::new();
    while held.len() < 400 {
        let got = queue
            .claim("sandbox", "live", 400, Duration::from_secs(1))
            .await
            .unwrap();
        held.extend(got.into_iter().map(|d| d.id));
    }
    // Entry ids are times: the oldest 300 are kept alive, the newest 100 are abandoned.
    held.sort_by_key(|id| {
        let entry = id.split_once('/').unwrap().1;
        let (ms, seq) = entry.split_once('-').unwrap();
        (ms.parse::<u64>().unwrap(), seq.parse::<u64>().unwrap())
    });
    let (alive, abandoned) = held.split_at(300);
    let abandoned: HashSet<String> = abandoned.iter().cloned().collect();
    let mut taken = HashSet::new();
    let until = tokio::time::Instant::now() + Duration::from_secs(20);
    while taken.len() < abandoned.len() {
        assert!(
            tokio::time::Instant::now() < until,
            "only {} of {} abandoned items taken over",
            taken.len(),
            abandoned.len()
        );
        queue.keep_alive("sandbox", "live", alive).await.unwrap();
        let got = queue
            .reclaim("sandbox", "other", Duration::from_millis(300), 16)
            .await
            .unwrap();
        taken.extend(got.into_iter().map(|d| d.id));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(taken, abandoned, "only the abandoned work is taken over");
}

/// A purge record that disappears from Redis while watched (evicted, or deleted by an operator)
/// ends the watch with NOT_FOUND instead of leaving it open forever.
#[tokio::test]
async fn redis_a_watched_purge_that_disappears_ends_the_watch_not_found() {
    let server = RedisServer::start();
    let target = RedisTarget::node(&server);
    let app = spawn_app(
        target.config("[[providers]]\nname = \"sandbox\"\ntype = \"sandbox\"\ndelay = \"1h\"\n"),
    )
    .await;
    let mut client = app.client.clone();
    let created = client
        .create_purge(request("sandbox", PurgeKind::Host, &["a.example.com"]))
        .await
        .unwrap()
        .into_inner();
    let mut stream = client
        .watch_purge(pb::WatchPurgeRequest {
            id: created.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    stream.next().await.unwrap().expect("the snapshot");
    let keys: Vec<String> =
        server.query(redis::cmd("KEYS").arg(format!("*{}*:purge:{}", target.prefix, created.id)));
    assert_eq!(keys.len(), 1, "{keys:?}");
    let _: i64 = server.query(redis::cmd("DEL").arg(&keys[0]));
    let end = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match stream.next().await {
                Some(Ok(_)) => continue,
                Some(Err(status)) => return Some(status),
                None => return None,
            }
        }
    })
    .await
    .expect("the watch ends");
    let status = end.expect("the watch ends with an error");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
}
