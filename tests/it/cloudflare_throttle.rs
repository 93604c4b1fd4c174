//! A Cloudflare 429 with `Retry-After` is honoured by three replicas on one Redis: the
//! dispatcher turns it into the limiter's shared pause, so no replica calls before the time it
//! named, not only the one that got it.

use std::time::Duration;

use purge_service::pb::{PurgeKind, PurgeState};

use crate::fakes::cloudflare::{FakeCloudflare, TOKEN};
use crate::redis_server::{RedisServer, RedisTarget, unique};
use crate::support::{eventually, request, spawn_app, wait_terminal};

#[tokio::test]
async fn a_cloudflare_429_makes_every_replica_wait_until_retry_after() {
    const RETRY_AFTER: u64 = 3;
    let server = RedisServer::start();
    let target = RedisTarget::node(&server);
    let fake = FakeCloudflare::start((1_000, Duration::from_secs(1))).await;
    fake.fault(429, 10429, "Rate limited", Some(RETRY_AFTER));
    let dir = tempfile::tempdir().unwrap();
    let rest = format!(
        "[dispatch]\nlinger = \"5ms\"\nretry_max_elapsed = \"30s\"\n{}[providers.limits]\naccount = \"{}\"\n",
        crate::cloudflare::provider_toml(&fake, "cf", &dir, TOKEN),
        unique("cf")
    );
    let mut apps = Vec::new();
    for _ in 0..3 {
        apps.push(spawn_app(target.config(&rest)).await);
    }
    let first = apps[0]
        .client
        .clone()
        .create_purge(request("cf", PurgeKind::Tag, &["first"]))
        .await
        .unwrap()
        .into_inner()
        .id;
    let throttled_at = eventually(Duration::from_secs(10), "the 429 is answered", || {
        let calls = fake.calls();
        async move { calls.iter().find(|c| c.status == 429).map(|c| c.at) }
    })
    .await;
    let mut ids = vec![(0, first)];
    for (i, app) in apps.iter().enumerate() {
        let id = app
            .client
            .clone()
            .create_purge(request("cf", PurgeKind::Tag, &[&format!("after-{i}")]))
            .await
            .unwrap()
            .into_inner()
            .id;
        ids.push((i, id));
    }
    for (i, id) in &ids {
        let done = wait_terminal(&apps[*i].client, id, Duration::from_secs(30)).await;
        assert_eq!(done.state(), PurgeState::Succeeded, "{done:?}");
    }
    let until = throttled_at + Duration::from_secs(RETRY_AFTER);
    let early: Vec<_> = fake
        .calls()
        .into_iter()
        .filter(|c| c.at > throttled_at && c.at < until)
        .collect();
    assert!(
        early.is_empty(),
        "calls before the Retry-After ended: {early:?}"
    );
}
