//! CDN Pro end to end.

use std::time::Duration;

use purge_service::pb::{PurgeAction, PurgeKind, PurgeState};
use tonic::Code;

use super::{Scheme, create, service};
use crate::fakes::cdnetworks::Fault;
use crate::fakes::cdnetworks::cdnpro::{FakeCdnPro, PURGES, TOKENS};
use crate::support::{TestApp, eventually, reason, request, violations};

/// Status polls at the test's pace; the documented 300 per 5 minutes still bounds the total.
const FAST_POLLS: &str = "[providers.limits]\nstatus = [{ count = 20, per = \"1s\" }]\n";

/// The service with CDN Pro at `fake`, polled at the test's pace.
async fn cdnpro_service(fake: &FakeCdnPro, scheme: Scheme) -> (TestApp, tempfile::TempDir) {
    service("cdnpro", &fake.endpoint(), scheme, None, "", FAST_POLLS, "").await
}

#[tokio::test]
async fn cdnpro_every_kind_reaches_cdn_pro_as_documented() {
    let fake = FakeCdnPro::start(Duration::from_millis(200)).await;
    let (app, _dir) = service(
        "cdnpro",
        &fake.endpoint(),
        Scheme::AkSk,
        None,
        "target = \"staging\"",
        FAST_POLLS,
        "",
    )
    .await;
    let mut url = request(
        "cdnpro",
        PurgeKind::Url,
        &[
            "https://www.example.com/a.jpg",
            "https://www.example.com/b%20c.css",
        ],
    );
    url.headers.insert("Accept-Encoding".into(), "gzip".into());
    let done = create(&app, url).await;
    assert_eq!(done.state(), PurgeState::Succeeded, "{done:?}");
    assert!(
        done.tasks[0].request_id.starts_with("cnc-req-"),
        "{:?}",
        done.tasks
    );
    assert!(
        done.tasks[0].provider_task_id.starts_with("purge-"),
        "{:?}",
        done.tasks
    );

    let mut prefix = request(
        "cdnpro",
        PurgeKind::Prefix,
        &["https://www.example.com/static/"],
    );
    prefix.action = PurgeAction::Delete as i32;
    assert_eq!(create(&app, prefix).await.state(), PurgeState::Succeeded);
    let wildcard = request(
        "cdnpro",
        PurgeKind::Wildcard,
        &["https://www.example.com/img/*.png"],
    );
    assert_eq!(create(&app, wildcard).await.state(), PurgeState::Succeeded);
    let regex = request(
        "cdnpro",
        PurgeKind::Regex,
        &[
            "https://www.example.com/v[0-9]+/.*\\.js",
            "any://www.example.com/x{1,59}",
        ],
    );
    assert_eq!(create(&app, regex).await.state(), PurgeState::Succeeded);

    let bodies = fake.accepted();
    let with = |field: &str| {
        bodies
            .iter()
            .find(|b| b.get(field).is_some())
            .unwrap_or_else(|| panic!("no {field} in {bodies:?}"))
            .clone()
    };
    let url = with("fileUrls");
    assert_eq!(url["fileUrls"].as_array().unwrap().len(), 2);
    assert_eq!(url["fileHeaders"][0]["name"], "Accept-Encoding");
    assert_eq!(url["fileHeaders"][0]["value"], "gzip");
    assert_eq!(url["target"], "staging");
    assert_eq!(url["action"], "invalidate");
    let dirs: Vec<_> = bodies
        .iter()
        .filter(|b| b.get("dirUrls").is_some())
        .collect();
    assert_eq!(dirs[0]["dirUrls"][0], "https://www.example.com/static/**");
    assert_eq!(dirs[0]["action"], "delete");
    assert_eq!(dirs[1]["dirUrls"][0], "https://www.example.com/img/*.png");
    assert_eq!(
        with("regexPatterns")["regexPatterns"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let calls = fake.calls();
    assert!(calls.iter().all(|c| c.auth == "aksk"), "{calls:?}");
    assert!(
        calls
            .iter()
            .any(|c| c.method == "GET" && c.path.starts_with("/cdn/purges/purge-"))
    );
    assert!(
        calls.iter().any(|c| c.path == TOKENS),
        "the token budget is read"
    );
}

#[tokio::test]
async fn cdnpro_api_key_auth_and_a_partial_success_rate_fails_the_purge() {
    let fake = FakeCdnPro::start(Duration::from_millis(100)).await;
    let (app, _dir) = cdnpro_service(&fake, Scheme::ApiKey).await;
    let done = create(
        &app,
        request(
            "cdnpro",
            PurgeKind::Url,
            &[
                "https://www.example.com/ok.js",
                "https://www.example.com/partial.js",
            ],
        ),
    )
    .await;
    assert_eq!(done.state(), PurgeState::Failed, "{done:?}");
    assert_eq!(done.failures.len(), 2, "{:?}", done.failures);
    assert!(
        done.failures[0].reason.contains("successRate 50"),
        "{:?}",
        done.failures
    );
    let calls = fake.calls();
    assert!(calls.iter().all(|c| c.auth == "api_key"), "{calls:?}");
    assert_eq!(fake.accepted()[0]["target"], "production");
}

#[tokio::test]
async fn cdnpro_patterns_breaking_a_dialect_rule_are_refused_naming_the_rule() {
    let fake = FakeCdnPro::start(Duration::from_millis(100)).await;
    let (app, _dir) = service("cdnpro", &fake.endpoint(), Scheme::AkSk, None, "", "", "").await;
    let long = format!("https://www.example.com/{}", "a".repeat(130));
    let cases = [
        ("ftp://www.example.com/.*", "scheme"),
        (long.as_str(), "length after host"),
        ("https://www.example.com/a.*b+c.*", "unlimited quantifiers"),
        ("https://www.example.com/a{1,60}", "bound above 59"),
    ];
    let mut client = app.client.clone();
    for (pattern, rule) in cases {
        let err = client
            .create_purge(request("cdnpro", PurgeKind::Regex, &[pattern]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{pattern}");
        let v = violations(&err);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].0, "targets[0]");
        assert!(v[0].1.contains(&format!("\"{rule}\"")), "{pattern}: {v:?}");
        assert!(v[0].1.contains("cdnpro"), "names the provider: {v:?}");
    }
    let err = client
        .create_purge(request(
            "cdnpro",
            PurgeKind::Wildcard,
            &["https://www.example.com/*/a/*.png"],
        ))
        .await
        .unwrap_err();
    assert!(violations(&err)[0].1.contains("one wildcard"), "{err:?}");
    let err = client
        .create_purge(request("cdnpro", PurgeKind::Host, &["www.example.com"]))
        .await
        .unwrap_err();
    assert!(err.message().contains("cannot purge HOST"), "{err:?}");
    assert!(
        fake.calls().iter().all(|c| c.path != PURGES),
        "nothing reached CDN Pro"
    );
}

#[tokio::test]
async fn cdnpro_exhausted_tokens_fail_fast_and_a_token_error_fails_the_targets() {
    let fake = FakeCdnPro::start(Duration::from_millis(100)).await;
    fake.set_tokens(0, 1_000);
    let (app, _dir) = cdnpro_service(&fake, Scheme::AkSk).await;
    let err = eventually(Duration::from_secs(10), "CreatePurge fails fast", || {
        let mut c = app.client.clone();
        async move {
            c.create_purge(request(
                "cdnpro",
                PurgeKind::Url,
                &["https://www.example.com/q"],
            ))
            .await
            .err()
        }
    })
    .await;
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert_eq!(reason(&err), "PROVIDER_QUOTA_EXHAUSTED");

    // Not known in advance: CDN Pro refuses the call and the targets fail with its reason.
    fake.fault(PURGES, Fault::Code(400, "PurgeTokenQuotaExceeded"));
    let done = create(
        &app,
        request("cdnpro", PurgeKind::Prefix, &["https://www.example.com/a/"]),
    )
    .await;
    assert_eq!(done.state(), PurgeState::Failed);
    assert!(
        done.failures[0].reason.contains("PurgeTokenQuotaExceeded"),
        "{:?}",
        done.failures
    );
    let mut client = app.client.clone();
    let err = client
        .create_purge(request(
            "cdnpro",
            PurgeKind::Prefix,
            &["https://www.example.com/b/"],
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
}

#[tokio::test]
async fn cdnpro_server_errors_and_throttling_are_retried_and_a_wrong_key_is_not() {
    let fake = FakeCdnPro::start(Duration::from_millis(100)).await;
    fake.fault(PURGES, Fault::Code(502, "BadGateway"));
    fake.fault(PURGES, Fault::Code(429, "TooManyRequests"));
    // Keys CDN Pro accepted before (the token read at start): a 401 now is about that one
    // signature (a timestamp another replica used), so it is signed and sent again.
    fake.fault(PURGES, Fault::Code(401, "InvalidSignature"));
    let (app, _dir) = cdnpro_service(&fake, Scheme::AkSk).await;
    eventually(Duration::from_secs(10), "the token read succeeded", || {
        let read = fake
            .calls()
            .iter()
            .any(|c| c.path == TOKENS && c.error.is_none());
        async move { read.then_some(()) }
    })
    .await;
    let done = create(
        &app,
        request("cdnpro", PurgeKind::Url, &["https://www.example.com/r.js"]),
    )
    .await;
    assert_eq!(done.state(), PurgeState::Succeeded, "{done:?}");
    let posts: Vec<_> = fake
        .calls()
        .into_iter()
        .filter(|c| c.path == PURGES)
        .collect();
    let errors: Vec<_> = posts.iter().map(|c| c.error.clone()).collect();
    assert_eq!(
        errors,
        vec![
            Some("BadGateway".into()),
            Some("TooManyRequests".into()),
            Some("InvalidSignature".into()),
            None
        ]
    );

    let wrong = FakeCdnPro::start(Duration::from_millis(100)).await;
    let (app, _dir) = service(
        "cdnpro",
        &wrong.endpoint(),
        Scheme::ApiKey,
        Some("not-the-right-api-key"),
        "",
        "",
        "",
    )
    .await;
    let done = create(
        &app,
        request("cdnpro", PurgeKind::Url, &["https://www.example.com/a"]),
    )
    .await;
    assert_eq!(done.state(), PurgeState::Failed);
    assert!(
        done.failures[0].reason.contains("authentication failed"),
        "{:?}",
        done.failures
    );
    assert!(!format!("{done:?}").contains("not-the-right-api-key"));
    let attempts = wrong.calls().iter().filter(|c| c.path == PURGES).count();
    assert_eq!(attempts, 1, "an auth failure is not retried");
}

#[tokio::test]
async fn cdnpro_a_purge_cdn_pro_no_longer_knows_fails_after_missing_timeout() {
    let fake = FakeCdnPro::start(Duration::from_secs(30)).await;
    let (app, _dir) = service(
        "cdnpro",
        &fake.endpoint(),
        Scheme::AkSk,
        None,
        "missing_timeout = \"1s\"",
        FAST_POLLS,
        "",
    )
    .await;
    let mut client = app.client.clone();
    let created = client
        .create_purge(request(
            "cdnpro",
            PurgeKind::Url,
            &["https://www.example.com/gone"],
        ))
        .await
        .unwrap()
        .into_inner();
    eventually(Duration::from_secs(10), "the purge reached CDN Pro", || {
        let n = fake.accepted().len();
        async move { (n == 1).then_some(()) }
    })
    .await;
    fake.forget_purges();
    let done =
        crate::support::wait_terminal(&app.client, &created.id, Duration::from_secs(10)).await;
    assert_eq!(
        done.state(),
        PurgeState::Failed,
        "a 404 is never a success: {done:?}"
    );
    assert!(
        done.failures[0].reason.contains("does not know purge"),
        "{:?}",
        done.failures
    );
    let not_found = fake
        .calls()
        .iter()
        .filter(|c| c.error.as_deref() == Some("NotFound"))
        .count();
    assert!(not_found >= 1);
}
