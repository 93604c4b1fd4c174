//! Akamai Fast Purge end to end: gRPC in, the fake CCU v3 out (real HTTP, EdgeGrid checked by
//! the fake's own code, token buckets, body cap).

use purge_service::pb::{PurgeAction, PurgeKind, PurgeState};
use serde_json::json;
use tempfile::TempDir;

use crate::fakes::akamai::{ACCESS_TOKEN, Bucket, CLIENT_SECRET, CLIENT_TOKEN, FakeAkamai};
use crate::support::{TestApp, config, create, request, spawn_app, violations};

/// The service with one Akamai provider `aka`, credentials from files; `extra` is appended.
async fn service(fake: &FakeAkamai, extra: &str) -> (TestApp, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, value: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, value).unwrap();
        path
    };
    let toml = format!(
        "[dispatch]\nretry_max_elapsed = \"20s\"\n[[providers]]\nname = \"aka\"\ntype = \"akamai\"\nhost = \"akab-fake.luna.akamaiapis.net\"\nclient_token_file = {:?}\nclient_secret_file = {:?}\naccess_token_file = {:?}\ncp_codes = [12345, 67890]\nendpoint = \"{}\"\ntimeout = \"2s\"\n{extra}\n",
        file("ct", CLIENT_TOKEN),
        file("cs", CLIENT_SECRET),
        file("at", ACCESS_TOKEN),
        fake.endpoint()
    );
    (spawn_app(config(&toml)).await, dir)
}

#[tokio::test]
async fn every_kind_and_action_reaches_fast_purge() {
    let fake = FakeAkamai::start(1).await;
    let (app, _dir) = service(&fake, "").await;
    let url = create(
        &app,
        request(
            "aka",
            PurgeKind::Url,
            &[
                "https://www.example.com/a.js",
                "http://www.example.com/b.css",
            ],
        ),
    )
    .await;
    assert_eq!(url.state(), PurgeState::Succeeded, "{url:?}");
    assert!(
        url.tasks[0].request_id.starts_with("support-"),
        "{:?}",
        url.tasks
    );
    let mut delete = request("aka", PurgeKind::Url, &["https://www.example.com/c.js"]);
    delete.action = PurgeAction::Delete as i32;
    assert_eq!(create(&app, delete).await.state(), PurgeState::Succeeded);
    let tag = create(&app, request("aka", PurgeKind::Tag, &["product-42"])).await;
    assert_eq!(tag.state(), PurgeState::Succeeded);
    let all = create(&app, request("aka", PurgeKind::All, &[])).await;
    assert_eq!(all.state(), PurgeState::Succeeded);
    let got: Vec<(String, serde_json::Value)> = fake
        .accepted()
        .into_iter()
        .map(|c| (c.path, c.objects))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "/ccu/v3/invalidate/url/production".into(),
                json!([
                    "https://www.example.com/a.js",
                    "http://www.example.com/b.css"
                ])
            ),
            (
                "/ccu/v3/delete/url/production".into(),
                json!(["https://www.example.com/c.js"])
            ),
            (
                "/ccu/v3/invalidate/tag/production".into(),
                json!(["product-42"])
            ),
            (
                "/ccu/v3/invalidate/cpcode/production".into(),
                json!([12345, 67890])
            ),
        ]
    );
    // No status API: done at submit time + estimatedSeconds (1 s here).
    let took = all.finish_time.unwrap().seconds - all.create_time.unwrap().seconds;
    assert!(took >= 1, "{all:?}");
    let err = app
        .client
        .clone()
        .create_purge(request(
            "aka",
            PurgeKind::Prefix,
            &["https://www.example.com/d/"],
        ))
        .await
        .unwrap_err();
    assert_eq!(violations(&err)[0].0, "kind");
}

#[tokio::test]
async fn edgerc_credentials_staging_and_a_skewed_clock_signed_again_once() {
    let fake = FakeAkamai::start(0).await;
    fake.set_clock_offset(120);
    let dir = tempfile::tempdir().unwrap();
    let edgerc = dir.path().join("edgerc");
    std::fs::write(
        &edgerc,
        format!("[default]\nhost = other\n[ccu]\nclient_secret = {CLIENT_SECRET}\nhost = akab-fake.luna.akamaiapis.net/\naccess_token = {ACCESS_TOKEN}\nclient_token = {CLIENT_TOKEN}\n"),
    )
    .unwrap();
    let toml = format!(
        "[[providers]]\nname = \"aka\"\ntype = \"akamai\"\nedgerc_file = {edgerc:?}\nedgerc_section = \"ccu\"\nnetwork = \"staging\"\nendpoint = \"{}\"\n",
        fake.endpoint()
    );
    let app = spawn_app(config(&toml)).await;
    let p = create(
        &app,
        request("aka", PurgeKind::Url, &["https://www.example.com/a"]),
    )
    .await;
    assert_eq!(p.state(), PurgeState::Succeeded, "{p:?}");
    let calls = fake.calls();
    assert_eq!(
        calls.iter().map(|c| c.status).collect::<Vec<_>>(),
        [400, 201],
        "{calls:?}"
    );
    assert_eq!(calls[1].path, "/ccu/v3/invalidate/url/staging");
}

#[tokio::test]
async fn a_429_waits_until_the_objects_bucket_has_the_tokens() {
    let fake = FakeAkamai::start(0).await;
    fake.set_objects_bucket("url", Bucket::new(3.0, 3.0));
    let (app, _dir) = service(&fake, "").await;
    let first = create(
        &app,
        request(
            "aka",
            PurgeKind::Url,
            &["https://e.com/1", "https://e.com/2", "https://e.com/3"],
        ),
    )
    .await;
    assert_eq!(first.state(), PurgeState::Succeeded);
    let second = create(
        &app,
        request(
            "aka",
            PurgeKind::Url,
            &["https://e.com/4", "https://e.com/5", "https://e.com/6"],
        ),
    )
    .await;
    assert_eq!(second.state(), PurgeState::Succeeded, "{second:?}");
    let statuses: Vec<u16> = fake.calls().iter().map(|c| c.status).collect();
    // The wait comes from X-Ratelimit-*: one refusal, then enough tokens.
    assert_eq!(statuses, [201, 429, 201], "{statuses:?}");
}

#[tokio::test]
async fn bodies_are_capped_by_bytes_before_and_after_sending() {
    // The client's cap splits before sending; nothing over it reaches Akamai.
    let fake = FakeAkamai::start(0).await;
    let (app, _dir) = service(&fake, "max_body_bytes = 200").await;
    let targets: Vec<String> = (0..6)
        .map(|i| format!("https://www.example.com/static/asset-{i:03}.js"))
        .collect();
    let refs: Vec<&str> = targets.iter().map(String::as_str).collect();
    let p = create(&app, request("aka", PurgeKind::Url, &refs)).await;
    assert_eq!(p.state(), PurgeState::Succeeded, "{p:?}");
    let calls = fake.calls();
    assert!(
        calls.iter().all(|c| c.status == 201 && c.body_len <= 200),
        "{calls:?}"
    );
    let sent: usize = calls
        .iter()
        .map(|c| c.objects.as_array().unwrap().len())
        .sum();
    assert_eq!(sent, 6);
    // Akamai's own 413 splits too.
    let fake = FakeAkamai::start(0).await;
    fake.set_max_body(200);
    let (app, _dir2) = service(&fake, "").await;
    let p = create(&app, request("aka", PurgeKind::Url, &refs)).await;
    assert_eq!(p.state(), PurgeState::Succeeded, "{p:?}");
    let calls = fake.calls();
    assert_eq!(calls[0].status, 413);
    let sent: usize = fake
        .accepted()
        .iter()
        .map(|c| c.objects.as_array().unwrap().len())
        .sum();
    assert_eq!(sent, 6);
}

#[tokio::test]
async fn refusals_fail_at_once_and_server_errors_are_retried() {
    let fake = FakeAkamai::start(0).await;
    let (app, _dir) = service(&fake, "").await;
    fake.fail_next(400);
    let p = create(
        &app,
        request("aka", PurgeKind::Url, &["https://www.example.com/bad"]),
    )
    .await;
    assert_eq!(p.state(), PurgeState::Failed);
    assert!(
        format!("{p:?}").contains("supportId fake-support-1"),
        "{p:?}"
    );
    assert_eq!(fake.calls().len(), 1);
    fake.fail_next(403);
    let p = create(
        &app,
        request(
            "aka",
            PurgeKind::Url,
            &["https://www.example.com/forbidden"],
        ),
    )
    .await;
    assert_eq!(p.state(), PurgeState::Failed);
    assert_eq!(fake.calls().len(), 2);
    fake.fail_next(507);
    fake.fail_next(503);
    let p = create(
        &app,
        request("aka", PurgeKind::Url, &["https://www.example.com/later"]),
    )
    .await;
    assert_eq!(p.state(), PurgeState::Succeeded, "{p:?}");
    assert_eq!(
        fake.calls().iter().map(|c| c.status).collect::<Vec<_>>(),
        [400, 403, 507, 503, 201]
    );
}

#[test]
fn debug_output_masks_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("cs");
    std::fs::write(&secret, CLIENT_SECRET).unwrap();
    let settings: purge_service::providers::akamai::AkamaiSettings = toml::from_str(&format!(
        "host = \"h.example\"\nclient_token_env = \"NOPE_UNSET_CT\"\nclient_secret_file = {secret:?}\naccess_token_file = {secret:?}\n"
    ))
    .unwrap();
    let err = purge_service::providers::akamai::Akamai::new(&settings, reqwest::Client::new())
        .unwrap_err();
    assert!(err.to_string().contains("NOPE_UNSET_CT"), "{err}");
    let settings: purge_service::providers::akamai::AkamaiSettings = toml::from_str(&format!(
        "host = \"h.example\"\nclient_token_file = {secret:?}\nclient_secret_file = {secret:?}\naccess_token_file = {secret:?}\n"
    ))
    .unwrap();
    let client =
        purge_service::providers::akamai::Akamai::new(&settings, reqwest::Client::new()).unwrap();
    assert!(!format!("{client:?}").contains(CLIENT_SECRET));
}
