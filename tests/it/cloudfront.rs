//! CloudFront end to end: gRPC in, the fake CloudFront (and STS) out, real HTTP, signatures
//! checked by the fakes' own code.

use std::time::Duration;

use purge_service::pb::{PurgeAction, PurgeKind, PurgeState};
use tempfile::TempDir;
use tonic::Code;

use crate::fakes::cloudfront::{
    ACCESS_KEY_ID, DISTRIBUTION, FakeCloudFront, Fault, SECRET_ACCESS_KEY,
};
use crate::fakes::sts::{FakeSts, ROLE_ARN};
use crate::support::{TestApp, config, create, request, spawn_app, violations};

const HOSTS: &str = "hosts = [\"www.example.com\", \"d111.cloudfront.net\"]\ntags = true\n";

/// The service with one CloudFront provider `cf` on static keys from files.
async fn service(fake: &FakeCloudFront, extra: &str) -> (TestApp, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let id = dir.path().join("id");
    let key = dir.path().join("key");
    std::fs::write(&id, ACCESS_KEY_ID).unwrap();
    std::fs::write(&key, format!("{SECRET_ACCESS_KEY}\n")).unwrap();
    let toml = format!(
        "[dispatch]\nretry_max_elapsed = \"20s\"\n[[providers]]\nname = \"cf\"\ntype = \"cloudfront\"\ndistribution_id = \"{DISTRIBUTION}\"\n{HOSTS}access_key_id_file = {id:?}\nsecret_access_key_file = {key:?}\nendpoint = \"{}\"\ntimeout = \"2s\"\nbusy_wait = \"100ms\"\n{extra}\n",
        fake.endpoint()
    );
    (spawn_app(config(&toml)).await, dir)
}

fn posts(fake: &FakeCloudFront) -> Vec<crate::fakes::cloudfront::Call> {
    fake.calls()
        .into_iter()
        .filter(|c| c.method == "POST")
        .collect()
}

#[tokio::test]
async fn every_kind_and_action_becomes_invalidation_paths() {
    let fake = FakeCloudFront::start(Duration::from_millis(300)).await;
    let (app, _dir) = service(&fake, "").await;
    // A throttled first call (HTTP 400 `Throttling`) is sent again.
    fake.fault(Fault::Error(400, "Throttling"));
    let mut url = request(
        "cf",
        PurgeKind::Url,
        &[
            "https://www.example.com/a.js?v=2",
            "https://D111.cloudfront.net/b.css",
        ],
    );
    url.action = PurgeAction::Delete as i32;
    let done = create(&app, url).await;
    assert_eq!(done.state(), PurgeState::Succeeded, "{done:?}");
    let for_kind = [
        (PurgeKind::Prefix, vec!["https://www.example.com/img/"]),
        (PurgeKind::Wildcard, vec!["https://www.example.com/css/*"]),
        (PurgeKind::All, vec![]),
        (PurgeKind::Tag, vec!["product-42"]),
    ];
    for (kind, targets) in for_kind {
        let p = create(&app, request("cf", kind, &targets)).await;
        assert_eq!(p.state(), PurgeState::Succeeded, "{kind:?}: {p:?}");
        assert!(p.tasks[0].provider_task_id.starts_with('I'), "{p:?}");
    }
    let paths: Vec<Vec<String>> = fake.invalidations().into_iter().map(|i| i.paths).collect();
    assert_eq!(
        paths,
        vec![
            vec!["/a.js?v=2".to_owned(), "/b.css".to_owned()],
            vec!["/img/*".to_owned()],
            vec!["/css/*".to_owned()],
            vec!["/*".to_owned()],
            vec!["#product-42".to_owned()],
        ]
    );
    let calls = fake.calls();
    assert_eq!(calls[0].error.as_deref(), Some("Throttling"));
    // Completion came from GetInvalidation, signed like the rest.
    assert!(calls.iter().any(|c| c.method == "GET" && c.error.is_none()));
    let post = posts(&fake).pop().unwrap();
    assert_eq!(post.signed_headers, "content-type;host;x-amz-date");
    assert_eq!(
        post.path,
        format!("/2020-05-31/distribution/{DISTRIBUTION}/invalidation")
    );
}

#[tokio::test]
async fn a_batch_resent_after_a_lost_answer_is_the_same_invalidation() {
    let fake = FakeCloudFront::start(Duration::from_millis(200)).await;
    let (app, _dir) = service(&fake, "").await;
    fake.fault(Fault::DropAfterCreate);
    let done = create(
        &app,
        request("cf", PurgeKind::Url, &["https://www.example.com/lost"]),
    )
    .await;
    assert_eq!(done.state(), PurgeState::Succeeded, "{done:?}");
    let invalidations = fake.invalidations();
    assert_eq!(
        invalidations.len(),
        1,
        "a second invalidation: {invalidations:?}"
    );
    let posts = posts(&fake);
    assert_eq!(posts.len(), 2, "{posts:?}");
    assert_eq!(
        posts[0].body, posts[1].body,
        "the resend carries the same CallerReference"
    );
    assert_eq!(done.tasks[0].provider_task_id, invalidations[0].id);

    // The same path purged again later is a new invalidation, not the old one.
    let again = create(
        &app,
        request("cf", PurgeKind::Url, &["https://www.example.com/lost"]),
    )
    .await;
    assert_eq!(again.state(), PurgeState::Succeeded);
    assert_eq!(fake.invalidations().len(), 2);
}

#[tokio::test]
async fn a_reused_reference_in_either_form_is_sent_again_under_a_new_one() {
    for documented in [false, true] {
        let fake = FakeCloudFront::start(Duration::from_millis(100)).await;
        if documented {
            fake.documented_conflict();
        }
        let (app, _dir) = service(&fake, "").await;
        fake.fault(Fault::Conflict);
        let done = create(
            &app,
            request("cf", PurgeKind::Url, &["https://www.example.com/x"]),
        )
        .await;
        assert_eq!(done.state(), PurgeState::Succeeded, "{done:?}");
        let posts = posts(&fake);
        assert_eq!(posts.len(), 2);
        assert_ne!(posts[0].body, posts[1].body, "a new CallerReference");
        assert_eq!(fake.invalidations().len(), 1);
    }
}

#[tokio::test]
async fn too_large_batches_split_and_the_in_progress_limit_is_waited_out() {
    let fake = FakeCloudFront::start(Duration::from_millis(700)).await;
    fake.set_caps(3000, 2);
    let (app, _dir) = service(&fake, "").await;
    let targets = [
        "https://www.example.com/a/*",
        "https://www.example.com/b/*",
        "https://www.example.com/c/*",
    ];
    let done = create(&app, request("cf", PurgeKind::Wildcard, &targets)).await;
    assert_eq!(done.state(), PurgeState::Succeeded, "{done:?}");
    let errors: Vec<String> = fake.calls().into_iter().filter_map(|c| c.error).collect();
    assert!(errors.contains(&"BatchTooLarge".to_owned()), "{errors:?}");
    assert!(
        errors.contains(&"TooManyInvalidationsInProgress".to_owned()),
        "{errors:?}"
    );
    let mut paths: Vec<String> = fake
        .invalidations()
        .into_iter()
        .flat_map(|i| i.paths)
        .collect();
    paths.sort();
    assert_eq!(paths, ["/a/*", "/b/*", "/c/*"]);
}

#[tokio::test]
async fn foreign_hosts_and_kinds_are_refused_naming_the_field() {
    let fake = FakeCloudFront::start(Duration::from_millis(100)).await;
    let (app, _dir) = service(&fake, "").await;
    let mut client = app.client.clone();
    let err = client
        .create_purge(request(
            "cf",
            PurgeKind::Url,
            &["https://www.example.com/ok", "https://other.com/a"],
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let v = violations(&err);
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0].0, "targets[1]");
    assert!(
        v[0].1.contains("\"other.com\"") && v[0].1.contains("www.example.com, d111.cloudfront.net"),
        "{v:?}"
    );
    let err = client
        .create_purge(request(
            "cf",
            PurgeKind::Wildcard,
            &["https://www.example.com/a*/b"],
        ))
        .await
        .unwrap_err();
    assert_eq!(violations(&err)[0].0, "targets[0]");
    let err = client
        .create_purge(request("cf", PurgeKind::Tag, &["a,b"]))
        .await
        .unwrap_err();
    assert!(violations(&err)[0].1.contains("without commas"), "{err:?}");
    let err = client
        .create_purge(request("cf", PurgeKind::Host, &["www.example.com"]))
        .await
        .unwrap_err();
    assert_eq!(violations(&err)[0].0, "kind", "{err:?}");
    assert!(fake.calls().is_empty());
}

#[tokio::test]
async fn web_identity_keys_come_from_sts_and_are_exchanged_again_before_expiry() {
    for (lifetime, expect_sts_calls) in [(3600, 1), (240, 2)] {
        let fake = FakeCloudFront::start(Duration::from_millis(100)).await;
        let sts = FakeSts::start(fake.clone(), "web-token-1", Duration::from_secs(lifetime)).await;
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "web-token-1\n").unwrap();
        let toml = format!(
            "[[providers]]\nname = \"cf\"\ntype = \"cloudfront\"\ndistribution_id = \"{DISTRIBUTION}\"\n{HOSTS}role_arn = \"{ROLE_ARN}\"\nweb_identity_token_file = {token:?}\nsts_endpoint = \"{}\"\nendpoint = \"{}\"\n",
            sts.endpoint(),
            fake.endpoint()
        );
        let app = spawn_app(config(&toml)).await;
        for path in ["/one", "/two"] {
            let target = format!("https://www.example.com{path}");
            let p = create(&app, request("cf", PurgeKind::Url, &[&target])).await;
            assert_eq!(p.state(), PurgeState::Succeeded, "{p:?}");
        }
        let calls = sts.calls();
        // Every CloudFront call (two creates, at least two reads) with keys 4 minutes from
        // expiry exchanges again; an hour's keys are exchanged once.
        if expect_sts_calls == 1 {
            assert_eq!(calls.len(), 1, "{calls:?}");
        } else {
            assert!(calls.len() >= 4, "{calls:?}");
        }
        let cf = fake.calls();
        assert!(cf.iter().all(|c| c.error.is_none()), "{cf:?}");
        assert!(
            cf.iter()
                .all(|c| c.signed_headers.contains("x-amz-security-token"))
        );
        assert!(cf.iter().all(|c| {
            c.token
                .as_deref()
                .is_some_and(|t| t.starts_with("sessionToken"))
        }));
    }
}

#[tokio::test]
async fn a_wrong_web_identity_token_fails_as_authentication() {
    let fake = FakeCloudFront::start(Duration::from_millis(100)).await;
    let sts = FakeSts::start(fake.clone(), "right-token", Duration::from_secs(3600)).await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "wrong-token").unwrap();
    let toml = format!(
        "[[providers]]\nname = \"cf\"\ntype = \"cloudfront\"\ndistribution_id = \"{DISTRIBUTION}\"\n{HOSTS}role_arn = \"{ROLE_ARN}\"\nweb_identity_token_file = {token:?}\nsts_endpoint = \"{}\"\nendpoint = \"{}\"\n",
        sts.endpoint(),
        fake.endpoint()
    );
    let app = spawn_app(config(&toml)).await;
    let p = create(
        &app,
        request("cf", PurgeKind::Url, &["https://www.example.com/a"]),
    )
    .await;
    assert_eq!(p.state(), PurgeState::Failed);
    assert!(
        p.error.contains("InvalidIdentityToken")
            || p.failures[0].reason.contains("InvalidIdentityToken"),
        "{p:?}"
    );
    assert_eq!(sts.calls().len(), 1, "an auth failure is not retried");
    assert!(fake.calls().is_empty());
    assert!(!format!("{p:?}").contains("wrong-token"));
}
