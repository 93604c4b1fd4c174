//! Content Management end to end.

use std::time::Duration;

use purge_service::pb::{PurgeAction, PurgeKind, PurgeState};
use tonic::Code;

use super::{Scheme, create, service};
use crate::fakes::cdnetworks::Fault;
use crate::fakes::cdnetworks::content::{FakeContent, QUERY, RECEIVER, REGEX};
use crate::support::{
    TestApp, assert_failed_with, eventually, max_in_window, request, wait_terminal,
};

/// Status polls at the test's pace.
const FAST_POLLS: &str = "[providers.limits]\nstatus = [{ count = 20, per = \"1s\" }]\n";

/// The service with Content Management at `fake`, polled at the test's pace.
async fn content_service(fake: &FakeContent, scheme: Scheme) -> (TestApp, tempfile::TempDir) {
    service(
        "cdnetworks",
        &fake.endpoint(),
        scheme,
        None,
        "",
        FAST_POLLS,
        "",
    )
    .await
}

/// `n` distinct regex targets from number `from` on.
fn regexes(from: usize, n: usize) -> Vec<String> {
    (from..from + n)
        .map(|i| format!("http://www.example.com/r{i}/.*"))
        .collect()
}

#[tokio::test]
async fn cdnetworks_a_32_target_batch_is_read_over_every_status_page() {
    let fake = FakeContent::start(Duration::from_millis(100)).await;
    // Content Management's own wait for unreported targets (10 min) is left as it is: a
    // target on a page never read stays RUNNING past the test's deadline.
    let (app, _dir) = content_service(&fake, Scheme::AkSk).await;
    let urls: Vec<String> = (0..32)
        .map(|i| format!("https://www.example.com/p/{i}.js"))
        .collect();
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    let mut client = app.client.clone();
    let created = client
        .create_purge(request("cdnetworks", PurgeKind::Url, &urls))
        .await
        .unwrap()
        .into_inner();
    let done = wait_terminal(&app.client, &created.id, Duration::from_secs(20)).await;
    assert_eq!(done.state(), PurgeState::Succeeded, "{done:?}");
    assert_eq!(done.progress.unwrap().succeeded, 32);
    assert_eq!(
        fake.accepted(RECEIVER).len(),
        1,
        "one call carried the batch"
    );
    // Both pages were asked, each a status call of its own, within the status budget.
    let queries = fake.accepted(QUERY);
    let pages: Vec<u64> = queries
        .iter()
        .filter_map(|b| b["pageNo"].as_u64())
        .collect();
    assert!(pages.contains(&1) && pages.contains(&2), "{queries:?}");
    assert!(
        pages.iter().all(|p| *p <= 2),
        "no page past `count`: {pages:?}"
    );
    let at: Vec<_> = fake.calls_of(QUERY).iter().map(|c| c.at).collect();
    assert!(max_in_window(&at, Duration::from_secs(1)) <= 20, "{at:?}");
}

#[tokio::test]
async fn cdnetworks_prefix_delete_refused_names_the_account_setting() {
    // Directory DELETE is off by default on an account.
    let fake = FakeContent::start(Duration::from_millis(100)).await;
    let (app, _dir) = content_service(&fake, Scheme::AkSk).await;
    let mut dir = request(
        "cdnetworks",
        PurgeKind::Prefix,
        &["https://www.example.com/static/"],
    );
    dir.action = PurgeAction::Delete as i32;
    let done = create(&app, dir).await;
    assert_eq!(done.state(), PurgeState::Failed, "{done:?}");
    let reason = &done.failures[0].reason;
    assert!(
        reason.contains("directory DELETE is off by default") && reason.contains("INVALIDATE"),
        "{reason}"
    );
    assert_eq!(
        fake.calls_of(RECEIVER).len(),
        1,
        "refused once, not retried"
    );
}

#[tokio::test]
async fn cdnetworks_aksk_per_item_failures_and_unreported_items_fail_by_name() {
    let fake = FakeContent::start(Duration::from_millis(100)).await;
    let (app, _dir) = service(
        "cdnetworks",
        &fake.endpoint(),
        Scheme::AkSk,
        None,
        "missing_timeout = \"1s\"",
        FAST_POLLS,
        "",
    )
    .await;
    let done = create(
        &app,
        request(
            "cdnetworks",
            PurgeKind::Url,
            &[
                "https://www.example.com/ok",
                "https://www.example.com/fail",
                "https://www.example.com/unreported",
            ],
        ),
    )
    .await;
    assert_eq!(done.state(), PurgeState::Failed, "{done:?}");
    assert_failed_with(&done, "/fail", "failed at 0%");
    assert_failed_with(&done, "/unreported", "did not report");
    assert_eq!(done.failures.len(), 2);
    assert_eq!(done.progress.unwrap().succeeded, 1);
    assert!(fake.calls().iter().all(|c| c.auth == "aksk"));
}

#[tokio::test]
async fn cdnetworks_repeat_url_regular_is_waited_out_and_system_exceptions_retried() {
    let fake = FakeContent::start(Duration::from_millis(1200)).await;
    fake.fault(REGEX, Fault::Code(500, "SystemException"));
    let (app, _dir) = service(
        "cdnetworks",
        &fake.endpoint(),
        Scheme::AkSk,
        None,
        "repeat_retry = \"300ms\"",
        FAST_POLLS,
        "",
    )
    .await;
    let pattern = "http://www.example.com/repeat/.*";
    let mut client = app.client.clone();
    let first = client
        .create_purge(request("cdnetworks", PurgeKind::Regex, &[pattern]))
        .await
        .unwrap()
        .into_inner();
    eventually(
        Duration::from_secs(10),
        "the first regex is running",
        || {
            let n = fake.accepted(REGEX).len();
            async move { (n == 1).then_some(()) }
        },
    )
    .await;
    // The same regex while the first still runs: CDNetworks says RepeatUrlRegular.
    let second = create(&app, request("cdnetworks", PurgeKind::Regex, &[pattern])).await;
    assert_eq!(second.state(), PurgeState::Succeeded, "{second:?}");
    let first = wait_terminal(&app.client, &first.id, Duration::from_secs(10)).await;
    assert_eq!(first.state(), PurgeState::Succeeded, "{first:?}");
    let errors: Vec<Option<String>> = fake.calls_of(REGEX).into_iter().map(|c| c.error).collect();
    assert_eq!(errors[0].as_deref(), Some("SystemException"), "{errors:?}");
    assert!(
        errors
            .iter()
            .any(|e| e.as_deref() == Some("RepeatUrlRegular")),
        "{errors:?}"
    );
    assert_eq!(
        errors.iter().filter(|e| e.is_none()).count(),
        2,
        "{errors:?}"
    );
    assert!(errors.len() <= 10, "within the call budget: {errors:?}");
}

#[tokio::test]
async fn cdnetworks_eleven_rapid_regex_purges_stay_within_ten_calls_per_five_minutes() {
    let fake = FakeContent::start(Duration::from_millis(100)).await;
    let (app, _dir) = service(
        "cdnetworks",
        &fake.endpoint(),
        Scheme::AkSk,
        None,
        "",
        FAST_POLLS,
        "linger = \"300ms\"",
    )
    .await;
    let mut ids = Vec::new();
    for i in 0..11 {
        let mut client = app.client.clone();
        let pattern = format!("http://www.example.com/rapid/{i}/.*");
        let created = client
            .create_purge(request("cdnetworks", PurgeKind::Regex, &[&pattern]))
            .await
            .unwrap()
            .into_inner();
        ids.push(created.id);
    }
    for id in &ids {
        let done = wait_terminal(&app.client, id, Duration::from_secs(30)).await;
        assert_eq!(done.state(), PurgeState::Succeeded, "{done:?}");
    }
    let calls = fake.calls_of(REGEX);
    assert!(calls.iter().all(|c| c.error.is_none()), "{calls:?}");
    let times: Vec<_> = calls.iter().map(|c| c.at).collect();
    assert!(
        max_in_window(&times, Duration::from_secs(300)) <= 10,
        "{calls:?}"
    );
    assert!(
        calls.len() < 11,
        "purges were batched: {} calls",
        calls.len()
    );
    let sent: usize = fake
        .accepted(REGEX)
        .iter()
        .map(|b| b["urlRegulars"].as_array().unwrap().len())
        .sum();
    assert_eq!(sent, 11);
}

/// 450 regexes used today: of a 60-regex purge, the 50 the day still holds go out in one
/// call, the other 10 fail on the quota, and further regex purges are refused at once.
#[tokio::test]
async fn cdnetworks_a_batch_over_the_days_regex_quota_sends_what_fits() {
    let fake = FakeContent::start(Duration::from_millis(100)).await;
    let (app, _dir) = content_service(&fake, Scheme::ApiKey).await;
    let first = regexes(0, 450);
    let first: Vec<&str> = first.iter().map(String::as_str).collect();
    let done = create(&app, request("cdnetworks", PurgeKind::Regex, &first)).await;
    assert_eq!(done.state(), PurgeState::Succeeded, "{:?}", done.error);

    let second = regexes(450, 60);
    let second: Vec<&str> = second.iter().map(String::as_str).collect();
    let done = create(&app, request("cdnetworks", PurgeKind::Regex, &second)).await;
    assert_eq!(done.state(), PurgeState::Failed);
    let progress = done.progress.unwrap();
    assert_eq!((progress.succeeded, progress.failed), (50, 10));
    assert!(
        done.failures
            .iter()
            .all(|f| f.reason.contains("daily REGEX quota")),
        "{:?}",
        done.failures
    );
    let sent: Vec<usize> = fake
        .accepted(REGEX)
        .iter()
        .map(|b| b["urlRegulars"].as_array().unwrap().len())
        .collect();
    assert_eq!(sent, [450, 50]);

    let err = app
        .client
        .clone()
        .create_purge(request(
            "cdnetworks",
            PurgeKind::Regex,
            &["http://www.example.com/late/.*"],
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
}

/// A batch Content Management refuses outright did not use the day's regex quota: the units
/// are given back, and a later purge can use them.
#[tokio::test]
async fn cdnetworks_a_refused_batch_gives_its_daily_quota_back() {
    let fake = FakeContent::start(Duration::from_millis(100)).await;
    fake.fault(REGEX, Fault::Code(400, "InvalidUrlRegular"));
    let (app, _dir) = content_service(&fake, Scheme::ApiKey).await;
    let refused = regexes(0, 480);
    let refused: Vec<&str> = refused.iter().map(String::as_str).collect();
    let done = create(&app, request("cdnetworks", PurgeKind::Regex, &refused)).await;
    assert_eq!(done.state(), PurgeState::Failed);
    assert!(
        done.failures[0].reason.contains("InvalidUrlRegular"),
        "{:?}",
        done.failures[0]
    );

    let next = regexes(480, 60);
    let next: Vec<&str> = next.iter().map(String::as_str).collect();
    let done = create(&app, request("cdnetworks", PurgeKind::Regex, &next)).await;
    assert_eq!(
        done.state(),
        PurgeState::Succeeded,
        "{:?}",
        done.failures.first()
    );
    let sent: Vec<usize> = fake
        .accepted(REGEX)
        .iter()
        .map(|b| b["urlRegulars"].as_array().unwrap().len())
        .collect();
    assert_eq!(sent, [60]);
}
