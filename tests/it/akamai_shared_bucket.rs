//! Akamai's token buckets shared by three replicas: after the first 429 the dispatcher turns
//! the refill wait the answer's `X-Ratelimit-*` headers give into the limiter's shared pause,
//! so every replica waits it out and no second request is refused for tokens.

use std::time::Duration;

use purge_service::pb::{PurgeKind, PurgeState};

use crate::fakes::akamai::{ACCESS_TOKEN, Bucket, CLIENT_SECRET, CLIENT_TOKEN, FakeAkamai};
use crate::redis_server::{RedisServer, RedisTarget, unique};
use crate::support::{request, spawn_app, wait_terminal};

#[tokio::test]
async fn three_replicas_exhaust_the_bucket_and_only_the_first_429_is_refused() {
    let fake = FakeAkamai::start(0).await;
    // 20 URL tokens refilling 10 a second, for the whole account.
    fake.set_objects_bucket("url", Bucket::new(20.0, 10.0));
    let server = RedisServer::start();
    let target = RedisTarget::node(&server);
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, value: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, value).unwrap();
        path
    };
    let rest = format!(
        "[dispatch]\nlinger = \"5ms\"\nretry_max_elapsed = \"60s\"\n[[providers]]\nname = \"aka\"\ntype = \"akamai\"\nhost = \"akab-fake.luna.akamaiapis.net\"\nclient_token_file = {:?}\nclient_secret_file = {:?}\naccess_token_file = {:?}\nendpoint = \"{}\"\n[providers.limits]\naccount = \"{}\"\nmax_per_call = {{ URL = 5 }}\n",
        file("ct", CLIENT_TOKEN),
        file("cs", CLIENT_SECRET),
        file("at", ACCESS_TOKEN),
        fake.endpoint(),
        unique("akamai")
    );
    let mut apps = Vec::new();
    for _ in 0..3 {
        apps.push(spawn_app(target.config(&rest)).await);
    }
    let mut ids = Vec::new();
    for i in 0..60 {
        let mut client = apps[i % 3].client.clone();
        let target = format!("https://www.example.com/flood/{i}");
        let p = client
            .create_purge(request("aka", PurgeKind::Url, &[&target]))
            .await
            .unwrap()
            .into_inner();
        ids.push((i % 3, p.id));
    }
    for (app, id) in &ids {
        let p = wait_terminal(&apps[*app].client, id, Duration::from_secs(60)).await;
        assert_eq!(p.state(), PurgeState::Succeeded, "{p:?}");
    }
    let statuses: Vec<u16> = fake.calls().iter().map(|c| c.status).collect();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert!(
        refused <= 1,
        "refused for tokens after the first 429: {statuses:?}"
    );
}
