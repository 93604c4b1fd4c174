//! Cloudflare end to end: gRPC in, the fake Cloudflare API out (real HTTP, its own check of
//! the credentials, caps and budget); the client against the fake; check-config.

use std::time::Duration;

use purge_service::pb::{PurgeAction, PurgeKind, PurgeState};
use purge_service::providers::cloudflare::{Cloudflare, CloudflareSettings};
use purge_service::providers::{Batch, Provider, ProviderError};
use serde_json::json;
use tempfile::TempDir;

use crate::fakes::cloudflare::{EMAIL, FakeCloudflare, GLOBAL_KEY, TOKEN, ZONE};
use crate::support::{TestApp, check_config_error, config, create, request, spawn_app};

/// Provider settings (a TOML fragment) of a Cloudflare provider `name` at `fake` with the
/// secret files it names written to `dir`.
pub fn provider_toml(fake: &FakeCloudflare, name: &str, dir: &TempDir, token: &str) -> String {
    let file = dir.path().join(format!("{name}-token"));
    std::fs::write(&file, format!("{token}\n")).unwrap();
    format!(
        "[[providers]]\nname = \"{name}\"\ntype = \"cloudflare\"\nzone_id = \"{ZONE}\"\nendpoint = \"{}\"\nplan = \"enterprise\"\ntimeout = \"2s\"\napi_token_file = {file:?}\n",
        fake.endpoint()
    )
}

async fn service(fake: &FakeCloudflare, token: &str) -> (TestApp, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[dispatch]\nretry_max_elapsed = \"20s\"\n{}",
        provider_toml(fake, "cf", &dir, token)
    );
    (spawn_app(config(&toml)).await, dir)
}

fn fast() -> (usize, Duration) {
    (1_000, Duration::from_secs(1))
}

#[tokio::test]
async fn cloudflare_every_kind_and_action_reaches_cloudflare_as_documented() {
    let fake = FakeCloudflare::start(fast()).await;
    let (app, _dir) = service(&fake, TOKEN).await;
    let mut url = request("cf", PurgeKind::Url, &["https://www.example.com/a.js"]);
    url.headers.insert("CF-IPCountry".into(), "US".into());
    let done = create(&app, url).await;
    assert_eq!(done.state(), PurgeState::Succeeded, "{done:?}");
    // Accepted is done; the ray is kept for Cloudflare's support.
    assert!(
        done.tasks[0].request_id == fake.calls()[0].ray,
        "{:?}",
        done.tasks
    );
    let cases = [
        (PurgeKind::Prefix, vec!["https://www.example.com/static/"]),
        (PurgeKind::Host, vec!["www.example.com"]),
        (PurgeKind::Tag, vec!["product-42", "catalog"]),
        (PurgeKind::All, vec![]),
    ];
    for (kind, targets) in cases {
        for action in [PurgeAction::Delete, PurgeAction::Invalidate] {
            let mut req = request("cf", kind, &targets);
            req.action = action as i32;
            let done = create(&app, req).await;
            assert_eq!(
                done.state(),
                PurgeState::Succeeded,
                "{kind:?} {action:?}: {done:?}"
            );
        }
    }
    let invalidated = fake.accepted("invalidate_cache");
    let deleted = fake.accepted("purge_cache");
    assert_eq!(
        invalidated[0],
        json!({"files": [{"url": "https://www.example.com/a.js", "headers": {"CF-IPCountry": "US"}}]})
    );
    for bodies in [&invalidated, &deleted] {
        assert!(
            bodies.contains(&json!({"prefixes": ["www.example.com/static/"]})),
            "{bodies:?}"
        );
        assert!(
            bodies.contains(&json!({"hosts": ["www.example.com"]})),
            "{bodies:?}"
        );
        assert!(
            bodies.contains(&json!({"purge_everything": true})),
            "{bodies:?}"
        );
        assert!(
            bodies
                .iter()
                .any(|b| b["tags"].as_array().is_some_and(|t| t.len() == 2))
        );
    }
    assert!(fake.calls().iter().all(|c| c.auth == "token"));
}

#[tokio::test]
async fn cloudflare_legacy_email_and_global_key_are_accepted() {
    let fake = FakeCloudflare::start(fast()).await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, GLOBAL_KEY).unwrap();
    let toml = format!(
        "[[providers]]\nname = \"cf\"\ntype = \"cloudflare\"\nzone_id = \"{ZONE}\"\nendpoint = \"{}\"\nemail = \"{EMAIL}\"\napi_key_file = {key:?}\n",
        fake.endpoint()
    );
    let app = spawn_app(config(&toml)).await;
    let done = create(&app, request("cf", PurgeKind::Host, &["www.example.com"])).await;
    assert_eq!(done.state(), PurgeState::Succeeded, "{done:?}");
    assert_eq!(fake.calls()[0].auth, "legacy");
}

#[tokio::test]
async fn cloudflare_a_batch_over_the_cap_it_refuses_is_split() {
    // Enterprise allows 60 URLs per call by our defaults; this zone refuses more than 30.
    let fake = FakeCloudflare::start(fast()).await;
    let (app, _dir) = service(&fake, TOKEN).await;
    let urls: Vec<String> = (0..45)
        .map(|i| format!("https://www.example.com/s{i}.css"))
        .collect();
    let refs: Vec<&str> = urls.iter().map(String::as_str).collect();
    let done = create(&app, request("cf", PurgeKind::Url, &refs)).await;
    assert_eq!(done.state(), PurgeState::Succeeded, "{done:?}");
    let calls = fake.calls();
    assert!(
        calls.iter().any(|c| c.status == 400),
        "the 45 were refused first: {calls:?}"
    );
    let accepted = fake.accepted("invalidate_cache");
    let sizes: Vec<usize> = accepted
        .iter()
        .map(|b| b["files"].as_array().unwrap().len())
        .collect();
    assert_eq!(sizes.iter().sum::<usize>(), 45, "{sizes:?}");
    assert!(sizes.iter().all(|n| *n <= 30), "{sizes:?}");
}

#[tokio::test]
async fn cloudflare_a_wrong_token_fails_the_targets_with_the_reason_and_no_retry() {
    let fake = FakeCloudflare::start(fast()).await;
    let (app, _dir) = service(&fake, "not-the-token").await;
    let done = create(
        &app,
        request("cf", PurgeKind::Url, &["https://www.example.com/x"]),
    )
    .await;
    assert_eq!(done.state(), PurgeState::Failed, "{done:?}");
    let reason = &done.failures[0].reason;
    assert!(
        reason.contains("authentication failed") && reason.contains("10000"),
        "{reason}"
    );
    assert_eq!(fake.calls().len(), 1, "an auth failure is not retried");
    assert!(!format!("{done:?}").contains("not-the-token"));
}

#[tokio::test]
async fn cloudflare_a_429_is_honoured_and_5xx_retried() {
    let fake = FakeCloudflare::start(fast()).await;
    fake.fault(429, 10429, "Rate limited", Some(2));
    fake.fault(502, 0, "Bad gateway", None);
    let (app, _dir) = service(&fake, TOKEN).await;
    let done = create(&app, request("cf", PurgeKind::Tag, &["t1"])).await;
    assert_eq!(done.state(), PurgeState::Succeeded, "{done:?}");
    let calls = fake.calls();
    assert_eq!(
        calls.iter().map(|c| c.status).collect::<Vec<_>>(),
        vec![429, 502, 200]
    );
    let waited = calls[1].at.duration_since(calls[0].at).unwrap();
    assert!(
        waited >= Duration::from_secs(2),
        "called again after {waited:?}"
    );
}

#[tokio::test]
async fn cloudflare_client_reads_retry_after_and_ratelimit_from_a_429() {
    let fake = FakeCloudflare::start((1, Duration::from_secs(30))).await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("t");
    std::fs::write(&token, TOKEN).unwrap();
    let settings: CloudflareSettings = toml::from_str(&format!(
        "zone_id = \"{ZONE}\"\nendpoint = \"{}\"\napi_token_file = {token:?}\n",
        fake.endpoint()
    ))
    .unwrap();
    let client = Cloudflare::new(&settings, reqwest::Client::new()).unwrap();
    let batch = Batch {
        id: "test-batch".into(),
        kind: purge_service::model::PurgeKind::Host,
        action: purge_service::model::Action::Delete,
        targets: vec!["www.example.com".into()],
        hosts: vec![],
        headers: Default::default(),
    };
    let first = client.submit(&batch).await.unwrap();
    assert_eq!(first.request_id.as_deref(), Some(first.task_id.as_str()));
    match client.submit(&batch).await {
        Err(e @ ProviderError::Throttled { .. }) => {
            let wait = e.retry_after().unwrap();
            assert!(
                wait > Duration::from_secs(25) && wait <= Duration::from_secs(30),
                "{wait:?}"
            );
            assert!(e.to_string().contains("policy"), "{e}");
        }
        other => panic!("expected Throttled, got {other:?}"),
    }
}

#[test]
fn cloudflare_check_config_names_the_missing_field() {
    let load = check_config_error;
    let err = load("[[providers]]\nname = \"cf\"\ntype = \"cloudflare\"\napi_token_env = \"X\"\n");
    assert!(err.contains("zone_id"), "{err}");
    let err = load(&format!(
        "[[providers]]\nname = \"cf\"\ntype = \"cloudflare\"\nzone_id = \"{ZONE}\"\napi_token_env = \"PURGE_TEST_UNSET_CF_TOKEN\"\n"
    ));
    assert!(
        err.contains("api_token") && err.contains("PURGE_TEST_UNSET_CF_TOKEN"),
        "{err}"
    );
    let err = load(&format!(
        "[[providers]]\nname = \"cf\"\ntype = \"cloudflare\"\nzone_id = \"{ZONE}\"\napi_token_env = \"X\"\nplan = \"gold\"\n"
    ));
    assert!(err.contains("gold"), "{err}");
}
