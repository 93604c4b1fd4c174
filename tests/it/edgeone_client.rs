//! The EdgeOne client on its own against the fake EdgeOne API (and raw sockets for broken
//! connections): transport classification, re-signing, headers, paging, unreported targets and
//! the lookup after a lost submit.

use std::time::Duration;

use chrono::Utc;
use purge_service::model::{Action, PurgeKind};
use purge_service::providers::edgeone::{EdgeOne, EdgeOneSettings};
use purge_service::providers::{
    Batch, Provider, ProviderError, TaskProgress, TaskQuery, Unmetered,
};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::fakes::edgeone::{FakeEdgeOne, Fault, SECRET_ID, SECRET_KEY, ZONE};
use crate::support::{eventually, free_port};

/// A client of `endpoint` with the fake's credentials; `extra` is appended to its settings.
fn client(endpoint: &str, extra: &str) -> (EdgeOne, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let id = dir.path().join("id");
    let key = dir.path().join("key");
    let token = dir.path().join("token");
    std::fs::write(&id, SECRET_ID).unwrap();
    std::fs::write(&key, SECRET_KEY).unwrap();
    std::fs::write(&token, "session-token-1\n").unwrap();
    let settings: EdgeOneSettings = toml::from_str(&format!(
        "zone_id = \"{ZONE}\"\nsecret_id_file = {id:?}\nsecret_key_file = {key:?}\nendpoint = \"{endpoint}\"\ntimeout = \"1s\"\n{}\n",
        extra.replace("TOKEN_FILE", &format!("{token:?}"))
    ))
    .unwrap();
    let http = purge_service::providers::build::http_client().unwrap();
    (EdgeOne::new(&settings, http).unwrap(), dir)
}

/// One URL to invalidate.
fn one_url() -> Batch {
    batch(PurgeKind::Url, Action::Invalidate, &["https://a.com/x"])
}

fn batch(kind: PurgeKind, action: Action, targets: &[&str]) -> Batch {
    Batch {
        id: "test-batch".into(),
        kind,
        action,
        targets: targets.iter().map(|t| t.to_string()).collect(),
        hosts: Vec::new(),
        headers: Default::default(),
    }
}

async fn submit_query(edge: &EdgeOne, b: &Batch) -> TaskQuery {
    let sub = edge.submit(b).await.expect("submitted");
    TaskQuery {
        task_id: sub.task_id,
        kind: b.kind,
        targets: b.targets.clone(),
        submitted_at: Utc::now(),
    }
}

/// Polls `task` until EdgeOne reports it finished, returning its failed targets.
async fn finished(edge: &EdgeOne, task: &TaskQuery) -> Vec<(String, String)> {
    eventually(Duration::from_secs(15), "the task finishes", || async {
        match edge
            .poll(std::slice::from_ref(task), &Unmetered)
            .await
            .ok()?
            .pop()?
        {
            (_, TaskProgress::Finished { failed }) => Some(failed),
            _ => None,
        }
    })
    .await
}

#[tokio::test]
async fn a_refused_connection_is_transient_nothing_was_sent() {
    let (edge, _dir) = client(&format!("http://127.0.0.1:{}", free_port()), "");
    let err = edge.submit(&one_url()).await.unwrap_err();
    assert!(
        matches!(err, ProviderError::Transient { .. }),
        "a connect failure is safe to resend: {err:?}"
    );
}

/// A server that reads a request, then answers `reply` (maybe nothing) and hangs up.
async fn broken_server(reply: &'static [u8]) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let mut buf = vec![0u8; 65536];
            let mut seen = Vec::new();
            // Read until the body (after the blank line) has arrived.
            while let Ok(n) = socket.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                seen.extend_from_slice(&buf[..n]);
                if seen.ends_with(b"}") {
                    break;
                }
            }
            let _ = socket.write_all(reply).await;
            let _ = socket.shutdown().await;
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn a_connection_lost_after_sending_is_ambiguous() {
    let endpoint = broken_server(b"").await;
    let (edge, _dir) = client(&endpoint, "");
    let err = edge.submit(&one_url()).await.unwrap_err();
    assert!(
        matches!(err, ProviderError::Ambiguous { .. }),
        "the request was written, EdgeOne may have acted: {err:?}"
    );
}

#[tokio::test]
async fn an_answer_cut_off_is_ambiguous() {
    let endpoint =
        broken_server(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 200\r\n\r\n{\"Response\":")
            .await;
    let (edge, _dir) = client(&endpoint, "");
    let err = edge.submit(&one_url()).await.unwrap_err();
    assert!(matches!(err, ProviderError::Ambiguous { .. }), "{err:?}");
}

#[tokio::test]
async fn a_timeout_is_ambiguous() {
    let fake = FakeEdgeOne::start(20, Duration::from_millis(50)).await;
    fake.fault("CreatePurgeTask", Fault::Hang(Duration::from_secs(3)));
    let (edge, _dir) = client(&fake.endpoint(), "");
    let err = edge.submit(&one_url()).await.unwrap_err();
    assert!(matches!(err, ProviderError::Ambiguous { .. }), "{err:?}");
}

#[tokio::test]
async fn an_expired_signature_is_sent_again_with_a_new_timestamp_and_signature() {
    let fake = FakeEdgeOne::start(20, Duration::from_millis(50)).await;
    fake.fault(
        "CreatePurgeTask",
        Fault::Error("AuthFailure.SignatureExpire"),
    );
    let (edge, _dir) = client(&fake.endpoint(), "");
    edge.submit(&one_url())
        .await
        .expect("signed again and accepted");
    let calls = fake.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(
        calls[0].error.as_deref(),
        Some("AuthFailure.SignatureExpire")
    );
    assert_eq!(calls[1].error, None);
    let ts = |i: usize| calls[i].timestamp.clone().unwrap().parse::<i64>().unwrap();
    assert!(ts(1) > ts(0), "a fresh timestamp: {} then {}", ts(0), ts(1));
    assert_ne!(calls[0].authorization, calls[1].authorization);
}

#[tokio::test]
async fn a_skewed_clock_is_corrected_from_edgeones_date() {
    let fake = FakeEdgeOne::start(1000, Duration::from_millis(50)).await;
    // EdgeOne's clock is 10 minutes ahead of ours: every signature of ours looks expired.
    fake.set_clock_offset(600);
    let (edge, _dir) = client(&fake.endpoint(), "");
    let quota = edge.quota().await.expect("signed by EdgeOne's clock");
    assert!(quota.contains_key(&PurgeKind::Url));
    let task = submit_query(&edge, &one_url()).await;
    assert!(finished(&edge, &task).await.is_empty());
    let errors: Vec<_> = fake.calls().into_iter().filter_map(|c| c.error).collect();
    assert_eq!(errors, ["AuthFailure.SignatureExpire"], "learned once");
}

#[tokio::test]
async fn token_region_and_language_headers_are_sent() {
    let fake = FakeEdgeOne::start(20, Duration::from_millis(50)).await;
    fake.require_token("session-token-1");
    let (without, _d1) = client(&fake.endpoint(), "");
    let err = without.quota().await.unwrap_err();
    assert!(
        matches!(&err, ProviderError::Auth { message } if message.contains("AuthFailure.TokenFailure")),
        "{err:?}"
    );
    let (with, _d2) = client(
        &fake.endpoint(),
        "token_file = TOKEN_FILE\nregion = \"ap-singapore\"\nlanguage = \"en-US\"",
    );
    with.quota().await.expect("token accepted");
    let last = fake.calls().pop().unwrap();
    assert_eq!(last.token.as_deref(), Some("session-token-1"));
    assert_eq!(last.region.as_deref(), Some("ap-singapore"));
    assert_eq!(last.language.as_deref(), Some("en-US"));
    assert!(!format!("{with:?}").contains("session-token-1"));
}

#[tokio::test]
async fn polls_page_until_every_row_is_read() {
    let fake = FakeEdgeOne::start(1000, Duration::from_millis(50)).await;
    // EdgeOne answers 3 rows per page: 8 rows take 3 pages.
    fake.set_page_cap(3);
    let (edge, _dir) = client(&fake.endpoint(), "");
    let mut targets: Vec<String> = (0..7).map(|i| format!("https://a.com/{i}")).collect();
    targets.push("https://a.com/fail-later".into());
    let refs: Vec<&str> = targets.iter().map(String::as_str).collect();
    let task = submit_query(&edge, &batch(PurgeKind::Url, Action::Invalidate, &refs)).await;
    let failed = finished(&edge, &task).await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0].1.contains("originPullFailed"), "{failed:?}");
    let offsets: Vec<u64> = fake
        .accepted("DescribePurgeTasks")
        .iter()
        .rev()
        .take(3)
        .map(|b| b["Offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [6, 3, 0]);
}

#[tokio::test]
async fn a_poll_needing_too_many_pages_is_an_error() {
    let fake = FakeEdgeOne::start(1000, Duration::from_millis(50)).await;
    fake.set_page_cap(1);
    let (edge, _dir) = client(&fake.endpoint(), "");
    let targets: Vec<String> = (0..12).map(|i| format!("https://a.com/{i}")).collect();
    let refs: Vec<&str> = targets.iter().map(String::as_str).collect();
    let task = submit_query(&edge, &batch(PurgeKind::Url, Action::Invalidate, &refs)).await;
    let err = edge.poll(&[task], &Unmetered).await.unwrap_err();
    assert!(
        matches!(&err, ProviderError::Protocol { message } if message.contains("pages")),
        "{err:?}"
    );
    assert_eq!(fake.accepted("DescribePurgeTasks").len(), 10);
}

#[tokio::test]
async fn a_target_edgeone_never_lists_fails_after_the_task_timeout() {
    let fake = FakeEdgeOne::start(1000, Duration::ZERO).await;
    let (edge, _dir) = client(&fake.endpoint(), "task_timeout = \"2s\"");
    let task = submit_query(
        &edge,
        &batch(
            PurgeKind::Url,
            Action::Invalidate,
            &["https://a.com/ok", "https://a.com/unreported"],
        ),
    )
    .await;
    // The listed target is done at once; the unlisted one keeps the task running...
    let first = edge
        .poll(std::slice::from_ref(&task), &Unmetered)
        .await
        .unwrap();
    assert_eq!(first, [(task.task_id.clone(), TaskProgress::Running)]);
    // ... until the task is older than the timeout, then it fails, never counted as purged.
    let failed = finished(&edge, &task).await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].0, "https://a.com/unreported");
    assert!(
        failed[0]
            .1
            .contains("no status reported by EdgeOne within 2s"),
        "{failed:?}"
    );
    assert!(Utc::now() - task.submitted_at >= chrono::Duration::seconds(2));
}

#[tokio::test]
async fn a_lookup_credits_only_a_job_of_the_same_method_covering_the_whole_batch() {
    let fake = FakeEdgeOne::start(1000, Duration::from_millis(50)).await;
    let (edge, _dir) = client(&fake.endpoint(), "");
    let since = Utc::now() - chrono::Duration::seconds(60);
    let a = "https://a.com/a";
    let b = "https://a.com/b";
    // Earlier jobs: `a` deleted, `a` alone invalidated.
    edge.submit(&batch(PurgeKind::Url, Action::Delete, &[a, b]))
        .await
        .unwrap();
    edge.submit(&batch(PurgeKind::Url, Action::Invalidate, &[a]))
        .await
        .unwrap();
    let lost = batch(PurgeKind::Url, Action::Invalidate, &[a, b]);
    assert_eq!(
        edge.find_submitted(&lost, since, &Unmetered).await.unwrap(),
        None,
        "neither job purged both targets by invalidation"
    );
    let lookup = fake.accepted("DescribePurgeTasks").pop().unwrap();
    assert_eq!(lookup["Filters"][0]["Name"], "type");
    assert_eq!(lookup["Filters"][0]["Values"][0], "purge_url");
    assert_eq!(lookup["Filters"][1]["Name"], "target");
    assert_eq!(lookup["Filters"][1]["Values"].as_array().unwrap().len(), 2);
    // Our job did reach EdgeOne: it is found.
    let ours = edge.submit(&lost).await.unwrap();
    let found = edge
        .find_submitted(&lost, since, &Unmetered)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.task_id, ours.task_id);
    // A PREFIX batch of the same strings is not credited to a URL job.
    let prefix = batch(PurgeKind::Prefix, Action::Invalidate, &[a, b]);
    assert_eq!(
        edge.find_submitted(&prefix, since, &Unmetered)
            .await
            .unwrap(),
        None
    );
    // A lookup EdgeOne refuses cannot tell: the batch is sent again rather than failed.
    fake.fault(
        "DescribePurgeTasks",
        Fault::Error("InvalidParameter.ParameterError"),
    );
    assert_eq!(
        edge.find_submitted(&lost, since, &Unmetered).await.unwrap(),
        None
    );
}
