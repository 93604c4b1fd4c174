//! Issue 10, part 1: a quota read that fails at start is tried again until it succeeds, and a
//! "batch too large" refusal teaches every replica (through Redis) the cap for later batches.

use std::time::{Duration, SystemTime};

use futures::StreamExt;

use purge_service::pb::{PurgeKind, PurgeState};

use crate::edgeone::provider_toml;
use crate::fakes::edgeone::{FakeEdgeOne, Fault, SECRET_KEY};
use crate::redis_server::{RedisServer, RedisTarget, unique};
use crate::support::{TestApp, config, eventually, request, spawn_app, wait_terminal};

const BATCH_QUOTA: &str = "LimitExceeded.BatchQuota";

/// Creates one single-URL purge per target, spread over `apps`, and waits until all succeed.
async fn flood(apps: &[&TestApp], targets: &[String]) {
    // 32 creates at a time: a burst, without timing out the backend.
    let ids: Vec<(usize, String)> = futures::stream::iter(targets.iter().enumerate())
        .map(|(i, target)| {
            let app = i % apps.len();
            let mut client = apps[app].client.clone();
            async move {
                let p = client
                    .create_purge(request("edge", PurgeKind::Url, &[target]))
                    .await
                    .unwrap()
                    .into_inner();
                (app, p.id)
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    for (app, id) in ids {
        let p = wait_terminal(&apps[app].client, &id, Duration::from_secs(60)).await;
        assert_eq!(p.state(), PurgeState::Succeeded, "{p:?}");
    }
}

/// When the fake received calls refused for their size.
fn refused_for_size(fake: &FakeEdgeOne) -> Vec<(SystemTime, usize)> {
    fake.calls()
        .iter()
        .filter(|c| c.action == "CreatePurgeTask" && c.error.as_deref() == Some(BATCH_QUOTA))
        .map(|c| (c.at, c.body["Targets"].as_array().map_or(0, Vec::len)))
        .collect()
}

#[tokio::test]
async fn a_refused_batch_size_is_learned_by_every_replica_that_cannot_read_the_quota() {
    // The zone allows 10 URLs per call; the configured cap says 20. Replicas whose region is
    // "ap-unreachable" cannot read the quota (DescribeContentQuota answers 503, for ever).
    let fake = FakeEdgeOne::start(50, Duration::from_millis(50)).await;
    fake.set_batch("purge_url", 10);
    fake.refuse_quota_for_region("ap-unreachable");
    let server = RedisServer::start();
    let target = RedisTarget::node(&server);
    let dir = tempfile::tempdir().unwrap();
    let account = unique("edge");
    let rest = |extra: &str| {
        format!(
            "[dispatch]\nlinger = \"100ms\"\nretry_max_elapsed = \"30s\"\n{}[providers.limits]\naccount = \"{account}\"\nsubmit = [{{ count = 8, per = \"1s\" }}]\nmax_per_call = {{ URL = 20 }}\n",
            provider_toml(&fake, SECRET_KEY, extra, dir.path())
        )
    };
    let unreachable = rest("region = \"ap-unreachable\"");
    let mut apps = Vec::new();
    for cfg in [&unreachable, &unreachable, &rest("")] {
        apps.push(spawn_app(target.config(cfg)).await);
    }
    eventually(
        Duration::from_secs(10),
        "the good replica read the quota",
        || {
            let read = fake.accepted("DescribeContentQuota").len();
            async move { (read > 0).then_some(()) }
        },
    )
    .await;
    // A flood of distinct single-URL purges: far more than 8 calls a second carry at once.
    let targets: Vec<String> = (0..600)
        .map(|i| format!("https://www.example.com/flood/{i}"))
        .collect();
    flood(&apps.iter().collect::<Vec<_>>(), &targets).await;
    let refused = refused_for_size(&fake);
    let Some(&(first, _)) = refused.iter().min_by_key(|(at, _)| *at) else {
        panic!("no replica sent a batch over the zone's cap: the test proves nothing");
    };
    // Calls already on their way when the first refusal came back may be refused too; none
    // sent after every replica had time to learn it (a shared cap is re-read every second).
    let settled = first + Duration::from_millis(1_500);
    let late: Vec<_> = refused.iter().filter(|(at, _)| *at > settled).collect();
    assert!(
        late.is_empty(),
        "refused for size after the first refusal: {late:?}"
    );
    let last = fake.calls().iter().map(|c| c.at).max().unwrap();
    assert!(
        last > settled + Duration::from_secs(1),
        "the flood ended before the cap was shared: it proves nothing"
    );

    // A replica started now, which cannot read the quota either, takes the learned cap from
    // Redis: none of its calls is refused for its size.
    let before = refused.len();
    let late_comer = spawn_app(target.config(&unreachable)).await;
    let more: Vec<String> = (0..100)
        .map(|i| format!("https://www.example.com/late/{i}"))
        .collect();
    flood(&[&late_comer], &more).await;
    let sizes: Vec<usize> = fake
        .accepted("CreatePurgeTask")
        .iter()
        .map(|b| b["Targets"].as_array().unwrap().len())
        .collect();
    assert!(sizes.iter().all(|&n| n <= 10), "{sizes:?}");
    assert_eq!(
        refused_for_size(&fake).len(),
        before,
        "the late replica did not use the shared cap"
    );
}

#[tokio::test]
async fn a_quota_read_that_fails_at_start_is_tried_again_until_it_succeeds() {
    let fake = FakeEdgeOne::start(20, Duration::from_millis(50)).await;
    for _ in 0..3 {
        fake.fault("DescribeContentQuota", Fault::Http(503));
    }
    let dir = tempfile::tempdir().unwrap();
    // The next scheduled read is an hour away: only a retry can read the quota in time.
    let toml = format!(
        "[dispatch]\nquota_refresh = \"1h\"\n{}",
        provider_toml(&fake, SECRET_KEY, "", dir.path())
    );
    let _app = spawn_app(config(&toml)).await;
    eventually(Duration::from_secs(15), "the quota was read", || {
        let read = fake.accepted("DescribeContentQuota").len();
        async move { (read > 0).then_some(()) }
    })
    .await;
    let tries = fake
        .calls()
        .iter()
        .filter(|c| c.action == "DescribeContentQuota")
        .count();
    assert!(
        tries >= 4,
        "three refused reads, then one that succeeded: {tries}"
    );
}
