//! The memory backend's bounds through the API: eviction order, the capacity answer, aged-out
//! reads, idempotency after eviction, purges in flight at the cap.

use std::time::Duration;

use purge_service::config::Config;
use purge_service::pb::{self, GetPurgeRequest, PurgeKind, PurgeState};
use tonic::Code;
use tonic_types::StatusExt;

use crate::support::{self, Client, reason, request, spawn_app, wait_terminal};

const WAIT: Duration = Duration::from_secs(10);

/// `fast` finishes in 20 ms, `medium` in 400 ms, `slow` not within any test.
fn bounded(max_records: usize, max_keys: usize) -> Config {
    support::config(&format!(
        "[store.memory]\nmax_records = {max_records}\nmax_idempotency_keys = {max_keys}\n\
         [[providers]]\nname = \"fast\"\ntype = \"sandbox\"\ndelay = \"20ms\"\n\
         [[providers]]\nname = \"medium\"\ntype = \"sandbox\"\ndelay = \"400ms\"\n\
         [[providers]]\nname = \"slow\"\ntype = \"sandbox\"\ndelay = \"1h\"\n"
    ))
}

async fn create(client: &Client, provider: &str, key: &str) -> Result<pb::Purge, tonic::Status> {
    let mut req = request(provider, PurgeKind::Url, &["https://www.example.com/a.js"]);
    req.idempotency_key = key.into();
    client
        .clone()
        .create_purge(req)
        .await
        .map(|r| r.into_inner())
}

async fn finished(client: &Client, provider: &str) -> String {
    let p = create(client, provider, "").await.expect("created");
    wait_terminal(client, &p.id, WAIT).await;
    p.id
}

async fn get(client: &Client, id: &str) -> Result<pb::Purge, tonic::Status> {
    client
        .clone()
        .get_purge(GetPurgeRequest { id: id.into() })
        .await
        .map(|r| r.into_inner())
}

fn assert_aged_out(status: tonic::Status) {
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(reason(&status), "PURGE_AGED_OUT");
    assert!(
        status.message().contains("aged out"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn the_oldest_finished_purge_is_evicted_first_and_unfinished_ones_never() {
    let app = spawn_app(bounded(3, 10)).await;
    let c = &app.client;
    let unfinished = create(c, "slow", "").await.unwrap().id;
    let oldest = finished(c, "fast").await;
    let newer = finished(c, "fast").await;
    let fourth = finished(c, "fast").await;
    assert_aged_out(get(c, &oldest).await.unwrap_err());
    assert!(get(c, &newer).await.is_ok());
    assert!(get(c, &fourth).await.is_ok());
    let slow = get(c, &unfinished)
        .await
        .expect("an unfinished purge is never evicted");
    assert!(!support::is_terminal(&slow));
    // A purge that never existed is plain NOT_FOUND, not aged out.
    let never = get(c, &uuid::Uuid::now_v7().to_string()).await.unwrap_err();
    assert_eq!(never.code(), Code::NotFound);
    assert_eq!(reason(&never), "PURGE_NOT_FOUND");
}

#[tokio::test]
async fn unfinished_purges_at_the_cap_get_resource_exhausted_with_retry_info() {
    let app = spawn_app(bounded(2, 10)).await;
    let c = &app.client;
    let first = create(c, "medium", "").await.unwrap().id;
    let second = create(c, "medium", "").await.unwrap().id;
    let refused = create(c, "fast", "").await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(reason(&refused), "TOO_MANY_UNFINISHED_PURGES");
    let details = refused.get_error_details();
    let retry = details.retry_info().expect("RetryInfo");
    assert!(retry.retry_delay.is_some_and(|d| d > Duration::ZERO));
    assert!(
        refused.message().contains("2 unfinished"),
        "{}",
        refused.message()
    );
    // The purges in flight when the cap was reached still finish ...
    for id in [&first, &second] {
        let p = wait_terminal(c, id, WAIT).await;
        assert_eq!(p.state(), PurgeState::Succeeded);
    }
    // ... and then make room.
    let later = create(c, "fast", "").await.expect("room again");
    wait_terminal(c, &later.id, WAIT).await;
}

#[tokio::test]
async fn a_replayed_key_whose_purge_was_evicted_makes_a_new_purge() {
    let app = spawn_app(bounded(2, 10)).await;
    let c = &app.client;
    let first = create(c, "fast", "deploy-1").await.unwrap();
    wait_terminal(c, &first.id, WAIT).await;
    let replay = create(c, "fast", "deploy-1").await.unwrap();
    assert_eq!(replay.id, first.id, "kept: the same purge");
    finished(c, "fast").await;
    finished(c, "fast").await;
    assert_aged_out(get(c, &first.id).await.unwrap_err());
    let again = create(c, "fast", "deploy-1").await.unwrap();
    assert_ne!(again.id, first.id, "evicted: the request is made anew");
    let replay = create(c, "fast", "deploy-1").await.unwrap();
    assert_eq!(replay.id, again.id);
}

#[tokio::test]
async fn idempotency_keys_beyond_their_bound_are_forgotten_oldest_first() {
    let app = spawn_app(bounded(100, 2)).await;
    let c = &app.client;
    let a = create(c, "fast", "a").await.unwrap();
    let b = create(c, "fast", "b").await.unwrap();
    let _c = create(c, "fast", "c").await.unwrap();
    assert_eq!(create(c, "fast", "b").await.unwrap().id, b.id);
    assert_ne!(
        create(c, "fast", "a").await.unwrap().id,
        a.id,
        "key a was forgotten"
    );
}

#[test]
fn the_bounds_are_read_from_the_environment_and_zero_is_refused() {
    let env = |v: &str| vec![("PURGE_STORE__MEMORY__MAX_RECORDS".to_owned(), v.to_owned())];
    let config = Config::load(None, env("1234")).expect("loads");
    assert_eq!(config.store.memory.max_records.get(), 1234);
    assert_eq!(config.store.memory.max_idempotency_keys.get(), 50_000);
    let e = format!(
        "{:#}",
        anyhow::Error::from(Config::load(None, env("0")).unwrap_err())
    );
    assert!(e.contains("max_records") && e.contains('0'), "{e}");
}
