//! EdgeOne end to end: gRPC in, the fake EdgeOne API out (real HTTP, its own signature check).

use std::path::Path;
use std::time::Duration;

use purge_service::pb::{self, PurgeAction, PurgeKind, PurgeState};
use tempfile::TempDir;

use crate::fakes::edgeone::{FakeEdgeOne, Fault, SECRET_ID, SECRET_KEY, ZONE};
use crate::support::{
    TestApp, assert_failed_with, config, create, eventually, max_in_window, request, spawn_app,
};

/// The provider table of one EdgeOne provider `edge` pointed at `fake`, its secrets in files
/// under `dir`; `extra` is appended to the table.
pub fn provider_toml(fake: &FakeEdgeOne, secret_key: &str, extra: &str, dir: &Path) -> String {
    let id = dir.join("id");
    let key = dir.join("key");
    std::fs::write(&id, SECRET_ID).unwrap();
    std::fs::write(&key, format!("{secret_key}\n")).unwrap();
    format!(
        "[[providers]]\nname = \"edge\"\ntype = \"edgeone\"\nzone_id = \"{ZONE}\"\nsecret_id_file = {id:?}\nsecret_key_file = {key:?}\nendpoint = \"{}\"\ntimeout = \"1s\"\n{extra}\n",
        fake.endpoint()
    )
}

/// The service with one EdgeOne provider `edge` pointed at `fake`; `extra` is appended to the
/// provider table.
async fn service(fake: &FakeEdgeOne, secret_key: &str, extra: &str) -> (TestApp, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[dispatch]\nretry_max_elapsed = \"20s\"\n{}",
        provider_toml(fake, secret_key, extra, dir.path())
    );
    (spawn_app(config(&toml)).await, dir)
}

#[tokio::test]
async fn partial_failures_name_each_target_with_edgeones_reason() {
    let fake = FakeEdgeOne::start(20, Duration::from_millis(100)).await;
    let (app, _dir) = service(&fake, SECRET_KEY, "").await;
    let done = create(
        &app,
        request(
            "edge",
            PurgeKind::Url,
            &[
                "https://www.example.com/ok",
                "https://www.example.com/refuse",
                "https://www.example.com/fail-later",
                "https://www.example.com/time-out",
            ],
        ),
    )
    .await;
    assert_eq!(done.state(), PurgeState::Failed);
    assert_failed_with(&done, "/refuse", "target not in zone");
    assert_failed_with(&done, "/fail-later", "originPullFailed");
    assert_failed_with(&done, "/time-out", "timed out");
    assert_eq!(done.failures.len(), 3);
    assert_eq!(done.progress.unwrap().succeeded, 1);
    // The task carried failures: it failed, and says it had a refused target.
    assert_eq!(
        done.tasks[0].state(),
        pb::TaskState::Failed,
        "{:?}",
        done.tasks
    );
    assert!(done.tasks[0].error.contains("refused"), "{:?}", done.tasks);

    // A task whose every target EdgeOne refused is over at once: FAILED, not left running.
    let refused = create(
        &app,
        request(
            "edge",
            PurgeKind::Url,
            &[
                "https://www.example.com/refuse-1",
                "https://www.example.com/refuse-2",
            ],
        ),
    )
    .await;
    assert_eq!(refused.state(), PurgeState::Failed);
    assert_eq!(
        refused.tasks[0].state(),
        pb::TaskState::Failed,
        "{:?}",
        refused.tasks
    );
    assert!(
        refused.tasks[0].error.contains("2 of 2"),
        "{:?}",
        refused.tasks
    );
}

/// A poll that needs several DescribePurgeTasks pages pays the status budget for each page.
#[tokio::test]
async fn every_status_page_is_paid_from_the_status_budget() {
    let fake = FakeEdgeOne::start(20, Duration::from_millis(300)).await;
    fake.set_page_cap(3);
    let (app, _dir) = service(
        &fake,
        SECRET_KEY,
        "[providers.limits]\nstatus = [{ count = 2, per = \"1s\" }]\n",
    )
    .await;
    let targets: Vec<String> = (0..10)
        .map(|i| format!("https://www.example.com/p{i}"))
        .collect();
    let refs: Vec<&str> = targets.iter().map(String::as_str).collect();
    let done = create(&app, request("edge", PurgeKind::Url, &refs)).await;
    assert_eq!(done.state(), PurgeState::Succeeded, "{done:?}");
    let pages: Vec<std::time::SystemTime> = fake
        .calls()
        .iter()
        .filter(|c| c.action == "DescribePurgeTasks")
        .map(|c| c.at)
        .collect();
    assert!(
        pages.len() >= 4,
        "10 rows at 3 a page: {} pages",
        pages.len()
    );
    let busiest = max_in_window(&pages, Duration::from_secs(1));
    assert!(busiest <= 2, "{busiest} status calls within 1 s");
}

#[tokio::test]
async fn throttling_5xx_and_internal_errors_are_retried() {
    let fake = FakeEdgeOne::start(2, Duration::from_millis(50)).await;
    fake.fault("CreatePurgeTask", Fault::Http(502));
    fake.fault("CreatePurgeTask", Fault::Error("InternalError.ProxyServer"));
    // We believe in 50 calls/s; the fake allows 2 per second and says RequestLimitExceeded.
    let (app, _dir) = service(
        &fake,
        SECRET_KEY,
        "[providers.limits]\nsubmit = [{ count = 50, per = \"1s\" }]\nmax_per_call = { URL = 1 }\n",
    )
    .await;
    let targets: Vec<String> = (0..6)
        .map(|i| format!("https://www.example.com/r{i}"))
        .collect();
    let refs: Vec<&str> = targets.iter().map(String::as_str).collect();
    let done = create(&app, request("edge", PurgeKind::Url, &refs)).await;
    assert_eq!(done.state(), PurgeState::Succeeded, "{done:?}");
    let calls = fake.calls();
    let code = |c: &str| {
        calls
            .iter()
            .filter(|x| x.action == "CreatePurgeTask" && x.error.as_deref() == Some(c))
            .count()
    };
    assert!(
        code("RequestLimitExceeded") > 0,
        "the test should provoke throttling"
    );
    assert_eq!(code("502"), 1);
    assert_eq!(code("InternalError.ProxyServer"), 1);
    assert_eq!(fake.accepted("CreatePurgeTask").len(), 6);
}

#[tokio::test]
async fn a_submit_that_timed_out_is_looked_up_before_it_is_sent_again() {
    let fake = FakeEdgeOne::start(20, Duration::from_millis(50)).await;
    // EdgeOne creates the task but answers after the client's 1 s timeout.
    fake.fault("CreatePurgeTask", Fault::Slow(Duration::from_secs(3)));
    let (app, _dir) = service(&fake, SECRET_KEY, "").await;
    let done = create(
        &app,
        request("edge", PurgeKind::Url, &["https://www.example.com/slow.js"]),
    )
    .await;
    assert_eq!(done.state(), PurgeState::Succeeded, "{done:?}");
    assert_eq!(
        fake.accepted("CreatePurgeTask").len(),
        1,
        "the purge was sent again"
    );
    let lookup = fake
        .accepted("DescribePurgeTasks")
        .into_iter()
        .find(|b| {
            b["Filters"]
                .as_array()
                .is_some_and(|f| f.iter().any(|f| f["Name"] == "target"))
        })
        .expect("a lookup by target");
    assert_eq!(
        lookup["Filters"][1]["Values"][0],
        "https://www.example.com/slow.js"
    );
    assert!(
        done.tasks[0].provider_task_id.starts_with("job-"),
        "{:?}",
        done.tasks
    );
}

#[tokio::test]
async fn a_lost_submit_is_not_credited_to_an_earlier_job_of_another_method_or_fewer_targets() {
    let fake = FakeEdgeOne::start(20, Duration::from_millis(50)).await;
    let (app, _dir) = service(&fake, SECRET_KEY, "").await;
    let a = "https://www.example.com/a.js";
    let b = "https://www.example.com/b.js";
    // An earlier DELETE of `a`, then an INVALIDATE of `a` alone.
    let mut delete = request("edge", PurgeKind::Url, &[a]);
    delete.action = PurgeAction::Delete as i32;
    assert_eq!(create(&app, delete).await.state(), PurgeState::Succeeded);
    assert_eq!(
        create(&app, request("edge", PurgeKind::Url, &[a]))
            .await
            .state(),
        PurgeState::Succeeded
    );
    assert_eq!(fake.accepted("CreatePurgeTask").len(), 2);
    // Now EdgeOne receives the INVALIDATE of `a` and `b` but drops it, answering too late.
    fake.fault("CreatePurgeTask", Fault::Hang(Duration::from_secs(3)));
    let done = create(&app, request("edge", PurgeKind::Url, &[a, b])).await;
    assert_eq!(done.state(), PurgeState::Succeeded, "{done:?}");
    // Neither earlier job covers both targets by invalidation: the batch is sent again.
    let sent = fake.accepted("CreatePurgeTask");
    assert_eq!(sent.len(), 3, "{sent:?}");
    let resent = sent.last().unwrap();
    assert_eq!(resent["Method"], "invalidate");
    assert_eq!(resent["Targets"].as_array().unwrap().len(), 2);
    // The purge follows the resent job (the fake numbers jobs by request), not an earlier one.
    let calls = fake.calls();
    let resent_request = calls
        .iter()
        .position(|c| {
            c.action == "CreatePurgeTask"
                && c.error.is_none()
                && c.body["Targets"].as_array().is_some_and(|t| t.len() == 2)
        })
        .unwrap()
        + 1;
    assert_eq!(done.tasks.len(), 1, "{:?}", done.tasks);
    assert_eq!(
        done.tasks[0].provider_task_id,
        format!("job-{resent_request}")
    );
}

#[tokio::test]
async fn a_configured_token_region_and_language_are_sent_on_every_call() {
    let fake = FakeEdgeOne::start(20, Duration::from_millis(50)).await;
    fake.require_token("temporary-session-token");
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "temporary-session-token\n").unwrap();
    let extra = format!("token_file = {token:?}\nregion = \"ap-singapore\"\nlanguage = \"en-US\"");
    let (app, _dir) = service(&fake, SECRET_KEY, &extra).await;
    let done = create(
        &app,
        request("edge", PurgeKind::Url, &["https://www.example.com/t.css"]),
    )
    .await;
    assert_eq!(done.state(), PurgeState::Succeeded, "{done:?}");
    let calls = fake.calls();
    assert!(calls.iter().any(|c| c.action == "DescribePurgeTasks"));
    for call in &calls {
        assert_eq!(call.error, None, "{call:?}");
        assert_eq!(call.token.as_deref(), Some("temporary-session-token"));
        assert_eq!(call.region.as_deref(), Some("ap-singapore"));
        assert_eq!(call.language.as_deref(), Some("en-US"));
    }
    assert!(!format!("{done:?}").contains("temporary-session-token"));
}

#[tokio::test]
async fn batch_quota_splits_and_an_expired_signature_is_signed_again() {
    let fake = FakeEdgeOne::start(20, Duration::from_millis(50)).await;
    let (app, _dir) = service(&fake, SECRET_KEY, "").await;
    eventually(Duration::from_secs(10), "the quota was read", || {
        let seen = fake.accepted("DescribeContentQuota").len();
        async move { (seen > 0).then_some(()) }
    })
    .await;
    // The zone's batch size drops after we read it: EdgeOne answers LimitExceeded.BatchQuota.
    fake.set_batch("purge_url", 3);
    fake.fault(
        "CreatePurgeTask",
        Fault::Error("AuthFailure.SignatureExpire"),
    );
    let targets: Vec<String> = (0..8)
        .map(|i| format!("https://www.example.com/b{i}"))
        .collect();
    let refs: Vec<&str> = targets.iter().map(String::as_str).collect();
    let done = create(&app, request("edge", PurgeKind::Url, &refs)).await;
    assert_eq!(done.state(), PurgeState::Succeeded, "{done:?}");
    let calls = fake.calls();
    assert!(
        calls
            .iter()
            .any(|c| c.error.as_deref() == Some("AuthFailure.SignatureExpire"))
    );
    assert!(
        calls
            .iter()
            .any(|c| c.error.as_deref() == Some("LimitExceeded.BatchQuota"))
    );
    let sizes: Vec<usize> = fake
        .accepted("CreatePurgeTask")
        .iter()
        .map(|b| b["Targets"].as_array().unwrap().len())
        .collect();
    assert!(sizes.iter().all(|&n| n <= 3), "{sizes:?}");
    assert_eq!(sizes.iter().sum::<usize>(), 8);
}

#[test]
fn debug_output_masks_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, "super-secret-value").unwrap();
    let settings: purge_service::providers::edgeone::EdgeOneSettings = toml::from_str(&format!(
        "zone_id = \"z\"\nsecret_id_file = {key:?}\nsecret_key_file = {key:?}\ntoken_file = {key:?}\n"
    ))
    .unwrap();
    let client =
        purge_service::providers::edgeone::EdgeOne::new(&settings, reqwest::Client::new()).unwrap();
    let shown = format!("{client:?}");
    assert!(!shown.contains("super-secret-value"), "{shown}");
}
