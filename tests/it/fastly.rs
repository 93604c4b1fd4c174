//! Fastly end to end: gRPC in, the fake Fastly API out; the client against the fake's hourly
//! purge_all budget; refusals at CreatePurge; a group of Cloudflare + Fastly + EdgeOne.

use std::time::Duration;

use purge_service::pb::{PurgeAction, PurgeKind, PurgeState};
use purge_service::providers::fastly::{Fastly, FastlySettings};
use purge_service::providers::{Batch, Provider, ProviderError};
use tempfile::TempDir;
use tonic::Code;

use crate::fakes::cloudflare::{FakeCloudflare, TOKEN as CF_TOKEN};
use crate::fakes::edgeone::{FakeEdgeOne, SECRET_ID, SECRET_KEY, ZONE as EDGE_ZONE};
use crate::fakes::fastly::{FakeFastly, SERVICE, TOKEN};
use crate::support::{TestApp, check_config_error, config, create, request, spawn_app, violations};

fn provider_toml(fake: &FakeFastly, dir: &TempDir, token: &str) -> String {
    let file = dir.path().join("fastly-token");
    std::fs::write(&file, format!("{token}\n")).unwrap();
    format!(
        "[[providers]]\nname = \"fastly\"\ntype = \"fastly\"\nservice_id = \"{SERVICE}\"\nendpoint = \"{}\"\ntimeout = \"2s\"\napi_token_file = {file:?}\n",
        fake.endpoint()
    )
}

async fn service(fake: &FakeFastly, token: &str) -> (TestApp, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[dispatch]\nretry_max_elapsed = \"20s\"\n{}",
        provider_toml(fake, &dir, token)
    );
    (spawn_app(config(&toml)).await, dir)
}

#[tokio::test]
async fn fastly_every_kind_and_action_reaches_fastly_as_documented() {
    let fake = FakeFastly::start().await;
    let (app, _dir) = service(&fake, TOKEN).await;
    let soft = create(
        &app,
        request(
            "fastly",
            PurgeKind::Url,
            &["https://www.example.com/a/b.js?x=1"],
        ),
    )
    .await;
    assert_eq!(soft.state(), PurgeState::Succeeded, "{soft:?}");
    assert!(
        soft.tasks[0].request_id.starts_with(SERVICE),
        "{:?}",
        soft.tasks
    );
    let mut hard = request("fastly", PurgeKind::Url, &["https://www.example.com/c.css"]);
    hard.action = PurgeAction::Delete as i32;
    assert_eq!(create(&app, hard).await.state(), PurgeState::Succeeded);
    // 300 keys: over the 256 per call, split.
    let keys: Vec<String> = (0..300).map(|i| format!("key-{i}")).collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let tags = create(&app, request("fastly", PurgeKind::Tag, &refs)).await;
    assert_eq!(tags.state(), PurgeState::Succeeded, "{tags:?}");
    assert_eq!(tags.tasks.len(), 2, "{:?}", tags.tasks);
    let mut all = request("fastly", PurgeKind::All, &[]);
    all.action = PurgeAction::Delete as i32;
    assert_eq!(create(&app, all).await.state(), PurgeState::Succeeded);

    let calls = fake.calls();
    let url = |p: &str| {
        calls
            .iter()
            .find(|c| c.path == p)
            .unwrap_or_else(|| panic!("{p}: {calls:?}"))
    };
    assert!(url("/purge/www.example.com/a/b.js?x=1").soft);
    assert!(!url("/purge/www.example.com/c.css").soft);
    let batches: Vec<usize> = calls
        .iter()
        .filter(|c| c.path == format!("/service/{SERVICE}/purge"))
        .map(|c| c.body["surrogate_keys"].as_array().unwrap().len())
        .collect();
    assert_eq!(batches.iter().sum::<usize>(), 300, "{batches:?}");
    assert!(batches.iter().all(|n| *n <= 256), "{batches:?}");
    let key_calls = calls
        .iter()
        .filter(|c| c.path == format!("/service/{SERVICE}/purge"));
    assert!(
        key_calls.clone().all(|c| c.soft),
        "INVALIDATE keys are soft: {calls:?}"
    );
    assert!(!url(&format!("/service/{SERVICE}/purge_all")).soft);
}

#[tokio::test]
async fn fastly_refuses_what_it_cannot_do_at_create_purge() {
    let fake = FakeFastly::start().await;
    let (app, _dir) = service(&fake, TOKEN).await;
    let mut client = app.client.clone();
    let err = client
        .create_purge(request(
            "fastly",
            PurgeKind::Prefix,
            &["https://www.example.com/d/"],
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let v = violations(&err);
    assert!(
        v.iter()
            .any(|(f, d)| f == "kind" && d.contains("PREFIX") && d.contains("fastly")),
        "{v:?}"
    );
    // ALL cannot be soft: INVALIDATE (the default action) + ALL is refused.
    let err = client
        .create_purge(request("fastly", PurgeKind::All, &[]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let v = violations(&err);
    assert!(
        v.iter().any(|(f, d)| f == "action"
            && d.contains("ALL")
            && d.contains("INVALIDATE")
            && d.contains("fastly")),
        "{v:?}"
    );
    assert!(fake.calls().is_empty(), "nothing reached Fastly");
}

#[tokio::test]
async fn fastly_a_wrong_token_fails_the_targets_with_the_reason() {
    let fake = FakeFastly::start().await;
    let (app, _dir) = service(&fake, "wrong-token").await;
    let done = create(&app, request("fastly", PurgeKind::Tag, &["k"])).await;
    assert_eq!(done.state(), PurgeState::Failed, "{done:?}");
    let reason = &done.failures[0].reason;
    assert!(
        reason.contains("authentication failed") && reason.contains("credentials"),
        "{reason}"
    );
    assert_eq!(fake.calls().len(), 1, "not retried");
    assert!(!format!("{done:?}").contains("wrong-token"));
}

#[tokio::test]
async fn fastly_5xx_is_retried() {
    let fake = FakeFastly::start().await;
    fake.fault(503, "Service Unavailable");
    let (app, _dir) = service(&fake, TOKEN).await;
    let done = create(&app, request("fastly", PurgeKind::Tag, &["k"])).await;
    assert_eq!(done.state(), PurgeState::Succeeded, "{done:?}");
    let statuses: Vec<u16> = fake.calls().iter().map(|c| c.status).collect();
    assert_eq!(statuses, vec![503, 200]);
}

#[tokio::test]
async fn fastly_client_reads_the_hourly_budget_headers_of_a_429() {
    let fake = FakeFastly::start().await;
    fake.set_purge_all_budget(1);
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("t");
    std::fs::write(&token, TOKEN).unwrap();
    let settings: FastlySettings = toml::from_str(&format!(
        "service_id = \"{SERVICE}\"\nendpoint = \"{}\"\napi_token_file = {token:?}\n",
        fake.endpoint()
    ))
    .unwrap();
    let client = Fastly::new(&settings, reqwest::Client::new()).unwrap();
    let all = Batch {
        id: "test-batch".into(),
        kind: purge_service::model::PurgeKind::All,
        action: purge_service::model::Action::Delete,
        targets: vec![],
        hosts: vec![],
        headers: Default::default(),
    };
    let first = client.submit(&all).await.unwrap();
    assert!(first.task_id.starts_with("fastly-"), "{first:?}");
    match client.submit(&all).await {
        Err(e @ ProviderError::Throttled { .. }) => {
            let wait = e.retry_after().unwrap();
            assert!(
                wait > Duration::from_secs(3_590) && wait <= Duration::from_secs(3_600),
                "{wait:?}"
            );
            assert!(e.to_string().contains("0 calls left"), "{e}");
        }
        other => panic!("expected Throttled, got {other:?}"),
    }
    // Only purge_all counts: URL purges still go through.
    let url = Batch {
        id: "test-batch".into(),
        kind: purge_service::model::PurgeKind::Url,
        targets: vec!["https://www.example.com/x".into()],
        ..all
    };
    client.submit(&url).await.unwrap();
}

#[tokio::test]
async fn a_group_of_cloudflare_fastly_and_edgeone_ends_with_a_status_per_provider() {
    let cf = FakeCloudflare::start((1_000, Duration::from_secs(1))).await;
    let fastly = FakeFastly::start().await;
    let edge = FakeEdgeOne::start(100, Duration::from_millis(100)).await;
    let dir = tempfile::tempdir().unwrap();
    let (id, key) = (dir.path().join("id"), dir.path().join("key"));
    std::fs::write(&id, SECRET_ID).unwrap();
    std::fs::write(&key, SECRET_KEY).unwrap();
    let toml = format!(
        "[dispatch]\nretry_max_elapsed = \"20s\"\n{}{}[[providers]]\nname = \"edge\"\ntype = \"edgeone\"\nzone_id = \"{EDGE_ZONE}\"\nsecret_id_file = {id:?}\nsecret_key_file = {key:?}\nendpoint = \"{}\"\ntimeout = \"2s\"\n[[groups]]\nname = \"everywhere\"\nproviders = [\"cf\", \"fastly\", \"edge\"]\n",
        crate::cloudflare::provider_toml(&cf, "cf", &dir, CF_TOKEN),
        provider_toml(&fastly, &dir, TOKEN),
        edge.endpoint()
    );
    let app = spawn_app(config(&toml)).await;
    let mut req = request(
        "everywhere",
        PurgeKind::Url,
        &[
            "https://www.example.com/g1.js",
            "https://www.example.com/g2.js",
        ],
    );
    req.action = PurgeAction::Delete as i32;
    let done = create(&app, req).await;
    assert_eq!(done.state(), PurgeState::Succeeded, "{done:?}");
    let per = |p: &str| done.tasks.iter().filter(|t| t.provider == p).count();
    assert_eq!(per("cf"), 1, "{:?}", done.tasks);
    assert_eq!(
        per("fastly"),
        2,
        "one URL per Fastly call: {:?}",
        done.tasks
    );
    assert_eq!(per("edge"), 1, "{:?}", done.tasks);
    let progress = done.progress.unwrap();
    assert_eq!((progress.total, progress.succeeded), (6, 6));
    assert_eq!(cf.accepted("purge_cache").len(), 1);
    assert_eq!(fastly.calls().len(), 2);

    // One provider failing fails its targets only, each named with its provider.
    let (bad_dir, bad_token) = (tempfile::tempdir().unwrap(), "bad");
    let toml = format!(
        "{}{}[[groups]]\nname = \"both\"\nproviders = [\"cf\", \"fastly\"]\n",
        crate::cloudflare::provider_toml(&cf, "cf", &bad_dir, CF_TOKEN),
        provider_toml(&fastly, &bad_dir, bad_token),
    );
    let app = spawn_app(config(&toml)).await;
    let done = create(&app, request("both", PurgeKind::Tag, &["t"])).await;
    assert_eq!(done.state(), PurgeState::Failed, "{done:?}");
    assert_eq!(done.failures.len(), 1, "{:?}", done.failures);
    assert_eq!(done.failures[0].provider, "fastly");
    let progress = done.progress.unwrap();
    assert_eq!((progress.succeeded, progress.failed), (1, 1));
}

#[test]
fn fastly_check_config_names_the_missing_field() {
    let load = check_config_error;
    let err = load("[[providers]]\nname = \"f\"\ntype = \"fastly\"\napi_token_env = \"X\"\n");
    assert!(err.contains("service_id"), "{err}");
    let err = load(&format!(
        "[[providers]]\nname = \"f\"\ntype = \"fastly\"\nservice_id = \"{SERVICE}\"\napi_token_env = \"PURGE_TEST_UNSET_FASTLY_TOKEN\"\n"
    ));
    assert!(
        err.contains("api_token") && err.contains("PURGE_TEST_UNSET_FASTLY_TOKEN"),
        "{err}"
    );
}
