//! The purge.v1 API on the embedded backend: create, get, watch, idempotency, bad inputs.

use std::time::Duration;

use purge_service::pb::{self, PurgeKind, PurgeState};
use tokio_stream::StreamExt;
use tonic::Code;

use crate::support::{
    config, reason, request, sandbox_config, spawn_app, violations, wait_terminal,
};

#[tokio::test]
async fn create_then_watch_until_succeeded() {
    let app = spawn_app(sandbox_config()).await;
    let mut client = app.client.clone();
    let mut req = request(
        "sandbox",
        PurgeKind::Url,
        &["https://example.com/a.png", "https://example.com/b.css"],
    );
    req.labels.insert("team".into(), "web".into());
    let created = client.create_purge(req).await.unwrap().into_inner();
    assert_eq!(created.state(), PurgeState::Queued);
    assert_eq!(created.labels["team"], "web");
    assert_eq!(created.progress.unwrap().total, 2);
    assert!(uuid::Uuid::parse_str(&created.id).is_ok_and(|u| u.get_version_num() == 7));

    let mut stream = client
        .watch_purge(pb::WatchPurgeRequest {
            id: created.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut versions = Vec::new();
    let mut last = None;
    while let Some(msg) = tokio::time::timeout(Duration::from_secs(10), stream.next())
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
        versions.windows(2).all(|w| w[0] < w[1]),
        "versions strictly increase: {versions:?}"
    );
    assert_eq!(last.progress.unwrap().succeeded, 2);
    assert_eq!(last.tasks.len(), 1);
    assert_eq!(last.tasks[0].target_count, 2);
    assert!(last.finish_time.is_some());

    // Watching a finished purge yields the snapshot and ends.
    let mut again = client
        .watch_purge(pb::WatchPurgeRequest { id: created.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        again.next().await.unwrap().unwrap().state(),
        PurgeState::Succeeded
    );
    assert!(again.next().await.is_none());
}

#[tokio::test]
async fn groups_fan_out_to_every_member() {
    let app = spawn_app(config(
        "[[providers]]\nname = \"a\"\ntype = \"sandbox\"\ndelay = \"10ms\"\n[[providers]]\nname = \"b\"\ntype = \"sandbox\"\ndelay = \"10ms\"\n[[groups]]\nname = \"both\"\nproviders = [\"a\", \"b\"]\n",
    ))
    .await;
    let mut client = app.client.clone();
    let created = client
        .create_purge(request("both", PurgeKind::Host, &["www.example.com"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.providers, ["a", "b"]);
    let done = wait_terminal(&client, &created.id, Duration::from_secs(10)).await;
    assert_eq!(done.state(), PurgeState::Succeeded);
    assert_eq!(done.progress.unwrap().total, 2);
    assert_eq!(app.registry.sandbox("a").unwrap().calls().len(), 1);
    assert_eq!(app.registry.sandbox("b").unwrap().calls().len(), 1);
}

#[tokio::test]
async fn idempotency_keys_return_the_same_purge_or_conflict() {
    let app = spawn_app(sandbox_config()).await;
    let mut client = app.client.clone();
    let mut req = request("sandbox", PurgeKind::Url, &["https://example.com/a"]);
    req.idempotency_key = "deploy-42".into();
    let first = client.create_purge(req.clone()).await.unwrap().into_inner();
    let done = wait_terminal(&client, &first.id, Duration::from_secs(10)).await;
    // Same key and request after completion: the same purge, as it is now.
    let again = client.create_purge(req.clone()).await.unwrap().into_inner();
    assert_eq!(again.id, first.id);
    assert_eq!(again.state(), done.state());

    // The key also comes as metadata.
    let mut via_metadata = tonic::Request::new(request(
        "sandbox",
        PurgeKind::Url,
        &["https://example.com/a"],
    ));
    via_metadata
        .metadata_mut()
        .insert("idempotency-key", "deploy-42".parse().unwrap());
    assert_eq!(
        client
            .create_purge(via_metadata)
            .await
            .unwrap()
            .into_inner()
            .id,
        first.id
    );

    // Same key, different request.
    let mut other = req.clone();
    other.targets = vec!["https://example.com/b".into()];
    let err = client.create_purge(other).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(reason(&err), "IDEMPOTENCY_KEY_REUSED");

    // Field and metadata disagree.
    let mut both = tonic::Request::new(req);
    both.metadata_mut()
        .insert("idempotency-key", "other".parse().unwrap());
    let err = client.create_purge(both).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(violations(&err)[0].0, "idempotency_key");
}

#[tokio::test]
async fn concurrent_creates_with_one_key_make_one_purge() {
    let app = spawn_app(sandbox_config()).await;
    let mut req = request("sandbox", PurgeKind::Url, &["https://example.com/c"]);
    req.idempotency_key = "burst".into();
    let calls = (0..50).map(|_| {
        let mut c = app.client.clone();
        let r = req.clone();
        tokio::spawn(async move { c.create_purge(r).await.map(|p| p.into_inner().id) })
    });
    let ids: std::collections::HashSet<String> = futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap())
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
}

#[tokio::test]
async fn unknown_and_malformed_ids() {
    let app = spawn_app(sandbox_config()).await;
    let mut client = app.client.clone();
    let err = client
        .get_purge(pb::GetPurgeRequest {
            id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(reason(&err), "PURGE_NOT_FOUND");
    let err = client
        .get_purge(pb::GetPurgeRequest { id: "nope".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(violations(&err)[0].0, "id");
    let err = client
        .watch_purge(pb::WatchPurgeRequest {
            id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // Any spelling of the UUID finds the purge.
    let created = client
        .create_purge(request("sandbox", PurgeKind::Host, &["a.example.com"]))
        .await
        .unwrap()
        .into_inner();
    let shouted = created.id.to_uppercase();
    let got = client
        .get_purge(pb::GetPurgeRequest {
            id: shouted.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.id, created.id);
    let mut stream = client
        .watch_purge(pb::WatchPurgeRequest { id: shouted })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stream.message().await.unwrap().unwrap().id, created.id);
}

#[tokio::test]
async fn a_caller_over_its_rate_gets_resource_exhausted() {
    let app = spawn_app(config(
        "[[providers]]\nname = \"sandbox\"\ntype = \"sandbox\"\n[server]\ncaller_rate = { count = 2, per = \"1m\" }\n",
    ))
    .await;
    let mut client = app.client.clone();
    // The caller rate: the third create within a minute is refused with RetryInfo.
    for _ in 0..2 {
        client
            .create_purge(request("sandbox", PurgeKind::Host, &["a.example.com"]))
            .await
            .unwrap();
    }
    let err = client
        .create_purge(request("sandbox", PurgeKind::Host, &["a.example.com"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert_eq!(reason(&err), "CALLER_RATE_EXCEEDED");
    use tonic_types::StatusExt;
    let details = err.get_error_details();
    assert!(
        details
            .retry_info()
            .and_then(|r| r.retry_delay)
            .is_some_and(|d| d > Duration::ZERO)
    );
    assert!(details.quota_failure().is_some());
}

/// Providers and a caller rate of one create per minute, for `retries_are_answered_over_the_rate`.
pub const ONE_CREATE_PER_MINUTE: &str = "[[providers]]\nname = \"sandbox\"\ntype = \"sandbox\"\n[server]\ncaller_rate = { count = 1, per = \"1m\" }\n";

#[tokio::test]
async fn a_retry_of_an_accepted_request_is_answered_even_over_the_rate() {
    retries_are_answered_over_the_rate(config(ONE_CREATE_PER_MINUTE)).await;
}

/// A retry of an accepted request gets its purge even when the caller is over its rate.
pub async fn retries_are_answered_over_the_rate(config: purge_service::config::Config) {
    let app = spawn_app(config).await;
    let mut client = app.client.clone();
    let keyed = |targets: &[&str]| {
        let mut r = request("sandbox", PurgeKind::Host, targets);
        r.idempotency_key = "deploy-42".into();
        r
    };
    let first = client
        .create_purge(keyed(&["a.example.com", "b.example.com"]))
        .await
        .unwrap()
        .into_inner();
    // The rate is used up, but a retry (targets in another order, another case) is the same
    // request: it gets the purge it made.
    let retry = client
        .create_purge(keyed(&["B.example.com", "a.example.com"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retry.id, first.id);
    // A new request with the key is still a conflict, and a new request without one is
    // over the rate.
    let err = client
        .create_purge(keyed(&["c.example.com"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let err = client
        .create_purge(request("sandbox", PurgeKind::Host, &["c.example.com"]))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "CALLER_RATE_EXCEEDED");
}

#[tokio::test]
async fn callers_need_a_token_and_stay_within_their_providers_and_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let web = dir.path().join("web.token");
    let ops = dir.path().join("ops.token");
    std::fs::write(&web, "web-secret-token\n").unwrap();
    std::fs::write(&ops, "ops-secret-token").unwrap();
    let app = spawn_app(config(&format!(
        "[[providers]]\nname = \"sandbox\"\ntype = \"sandbox\"\ndelay = \"10ms\"\n[[providers]]\nname = \"other\"\ntype = \"sandbox\"\n\
         [[callers]]\nname = \"web\"\ntoken_file = {web:?}\nproviders = [\"sandbox\"]\nhosts = [\"www.example.com\", \".static.example.com\"]\n\
         [[callers]]\nname = \"ops\"\ntoken_file = {ops:?}\n"
    )))
    .await;
    let mut client = app.client.clone();
    let with_token = |token: &str, req: pb::CreatePurgeRequest| {
        let mut r = tonic::Request::new(req);
        r.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        r
    };
    let ok = request(
        "sandbox",
        PurgeKind::Url,
        &[
            "https://www.example.com/a",
            "https://img.static.example.com/b",
        ],
    );

    let err = client.create_purge(ok.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = client
        .create_purge(with_token("wrong", ok.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(!err.message().contains("web-secret-token"));

    let created = client
        .create_purge(with_token("web-secret-token", ok.clone()))
        .await
        .unwrap()
        .into_inner();
    let cases = [
        request("other", PurgeKind::Url, &["https://www.example.com/a"]),
        request("sandbox", PurgeKind::Url, &["https://evil.example.net/a"]),
        request("sandbox", PurgeKind::All, &[]),
    ];
    for req in cases {
        let err = client
            .create_purge(with_token("web-secret-token", req))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
        assert_eq!(reason(&err), "PERMISSION_DENIED");
    }
    // Idempotency and reads are scoped to the caller: another caller does not see web's purge.
    let mut get = tonic::Request::new(pb::GetPurgeRequest {
        id: created.id.clone(),
    });
    get.metadata_mut()
        .insert("authorization", "Bearer ops-secret-token".parse().unwrap());
    assert_eq!(
        client.get_purge(get).await.unwrap_err().code(),
        Code::NotFound
    );
    let mut get = tonic::Request::new(pb::GetPurgeRequest {
        id: created.id.clone(),
    });
    get.metadata_mut()
        .insert("authorization", "Bearer web-secret-token".parse().unwrap());
    assert_eq!(
        client.get_purge(get).await.unwrap().into_inner().id,
        created.id
    );
    // ops may do anything.
    client
        .create_purge(with_token(
            "ops-secret-token",
            request("other", PurgeKind::All, &[]),
        ))
        .await
        .unwrap();
}
