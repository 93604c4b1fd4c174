//! CDN Pro end to end.

use std::time::Duration;

use purge_service::pb::{PurgeKind, PurgeState};

use super::{Scheme, create, service};
use crate::fakes::cdnetworks::Fault;
use crate::fakes::cdnetworks::cdnpro::{FakeCdnPro, PURGES, TOKENS};
use crate::support::{TestApp, eventually, request};

/// Status polls at the test's pace; the documented 300 per 5 minutes still bounds the total.
const FAST_POLLS: &str = "[providers.limits]\nstatus = [{ count = 20, per = \"1s\" }]\n";

/// The service with CDN Pro at `fake`, polled at the test's pace.
async fn cdnpro_service(fake: &FakeCdnPro, scheme: Scheme) -> (TestApp, tempfile::TempDir) {
    service("cdnpro", &fake.endpoint(), scheme, None, "", FAST_POLLS, "").await
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
async fn cdnpro_server_errors_throttling_and_a_401_after_accepted_keys_are_retried() {
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
