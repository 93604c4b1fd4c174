//! CancelPurge: withdrawn targets never reach the provider, sent ones finish, the resulting
//! state follows the proto's rules, watchers see it, and three replicas racing on one Redis
//! never both send and cancel a target.

use std::collections::HashSet;
use std::time::Duration;

use purge_service::pb::{self, PurgeKind, PurgeState};
use tokio_stream::StreamExt;

use crate::redis_server::{RedisServer, RedisTarget, unique};
use crate::support::{Client, config, eventually, request, spawn_app, wait_terminal};

async fn create(client: &Client, targets: &[String]) -> String {
    let refs: Vec<&str> = targets.iter().map(String::as_str).collect();
    client
        .clone()
        .create_purge(request("sandbox", PurgeKind::Url, &refs))
        .await
        .unwrap()
        .into_inner()
        .id
}

async fn cancel(client: &Client, id: &str) -> pb::Purge {
    client
        .clone()
        .cancel_purge(pb::CancelPurgeRequest { id: id.into() })
        .await
        .unwrap()
        .into_inner()
}

fn sent_targets(calls: &[purge_service::providers::sandbox::SandboxCall]) -> Vec<String> {
    calls.iter().flat_map(|c| c.targets.clone()).collect()
}

/// One target per second: the rest of a purge waits in its lane, cancellable.
const SLOW: &str = "[dispatch]\nlinger = \"5ms\"\n[[providers]]\nname = \"sandbox\"\ntype = \"sandbox\"\ndelay = \"20ms\"\nmax_per_call = 1\nlimits = { submit = [{ count = 1, per = \"1s\" }] }\n";

#[tokio::test]
async fn cancelling_withdraws_what_was_not_sent_and_the_sent_targets_finish() {
    let app = spawn_app(config(SLOW)).await;
    let sandbox = app.registry.sandbox("sandbox").unwrap().clone();
    let targets: Vec<String> = (0..5).map(|i| format!("https://a.example/{i}")).collect();
    let id = create(&app.client, &targets).await;
    let mut watch = app
        .client
        .clone()
        .watch_purge(pb::WatchPurgeRequest { id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    eventually(Duration::from_secs(10), "one target was sent", || {
        let n = sandbox.calls().len();
        async move { (n >= 1).then_some(()) }
    })
    .await;
    let after = cancel(&app.client, &id).await;
    assert!(after.cancel_time.is_some());
    assert!(after.progress.unwrap().cancelled >= 1, "{after:?}");
    // Idempotent: the same purge, nothing changed by the second call.
    let again = cancel(&app.client, &id).await;
    assert!(again.version >= after.version);
    assert_eq!(again.cancel_time, after.cancel_time);

    let done = wait_terminal(&app.client, &id, Duration::from_secs(20)).await;
    let sent: HashSet<String> = sent_targets(&sandbox.calls()).into_iter().collect();
    let cancelled: HashSet<String> = done
        .cancelled_targets
        .iter()
        .map(|c| c.target.clone())
        .collect();
    assert!(!sent.is_empty() && !cancelled.is_empty(), "{done:?}");
    assert!(
        sent.is_disjoint(&cancelled),
        "sent {sent:?}, cancelled {cancelled:?}"
    );
    assert_eq!(sent.len() + cancelled.len(), 5, "{sent:?} {cancelled:?}");
    assert_eq!(done.state(), PurgeState::Succeeded, "{done:?}");
    let p = done.progress.unwrap();
    assert_eq!(
        (p.succeeded as usize, p.cancelled as usize, p.pending),
        (sent.len(), cancelled.len(), 0)
    );
    // The watcher saw the cancel.
    let mut saw_cancel = false;
    while let Some(Ok(m)) = watch.next().await {
        saw_cancel |= m.cancel_time.is_some();
    }
    assert!(saw_cancel);
    // Cancelling a finished purge returns it as it is.
    assert_eq!(cancel(&app.client, &id).await.version, done.version);
}

#[tokio::test]
async fn a_purge_cancelled_before_anything_was_sent_ends_cancelled() {
    let app = spawn_app(config(SLOW)).await;
    let sandbox = app.registry.sandbox("sandbox").unwrap().clone();
    // The first purge holds the budget; the second waits behind it.
    let first: Vec<String> = (0..3)
        .map(|i| format!("https://a.example/first/{i}"))
        .collect();
    let first_id = create(&app.client, &first).await;
    let second: Vec<String> = (0..3)
        .map(|i| format!("https://a.example/second/{i}"))
        .collect();
    let id = create(&app.client, &second).await;
    let after = cancel(&app.client, &id).await;
    assert_eq!(after.state(), PurgeState::Cancelled, "{after:?}");
    assert!(
        after.error.contains("cancelled before any"),
        "{}",
        after.error
    );
    assert_eq!(after.cancelled_targets.len(), 3);
    assert!(after.finish_time.is_some());
    wait_terminal(&app.client, &first_id, Duration::from_secs(20)).await;
    let sent = sent_targets(&sandbox.calls());
    assert!(second.iter().all(|t| !sent.contains(t)), "{sent:?}");
    // Another caller's purge, or a bad id, is refused as for GetPurge.
    let err = app
        .client
        .clone()
        .cancel_purge(pb::CancelPurgeRequest { id: "nope".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = app
        .client
        .clone()
        .cancel_purge(pb::CancelPurgeRequest {
            id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
}

/// Three replicas on one Redis dispatch purges while others cancel them at random moments from
/// other replicas. The simulated CDN (one account, shared by the replicas) logs every target it
/// is sent: none of them may be a target the purge lists as cancelled, and every target is one
/// or the other.
#[tokio::test]
async fn three_replicas_racing_cancels_never_send_a_cancelled_target() {
    const PURGES: usize = 24;
    const TARGETS: usize = 6;
    let server = RedisServer::start();
    let target = RedisTarget::node(&server);
    let rest = format!(
        "[dispatch]\nlinger = \"5ms\"\n[[providers]]\nname = \"sandbox\"\ntype = \"sandbox\"\ndelay = \"30ms\"\nmax_per_call = 2\naccount = \"{}\"\nlimits = {{ submit = [{{ count = 40, per = \"1s\" }}] }}\n",
        unique("acct")
    );
    let mut apps = Vec::new();
    for _ in 0..3 {
        apps.push(spawn_app(target.config(&rest)).await);
    }
    let mut runs = Vec::new();
    for i in 0..PURGES {
        let creator = apps[i % 3].client.clone();
        let canceller = apps[(i + 1) % 3].client.clone();
        runs.push(tokio::spawn(async move {
            let targets: Vec<String> = (0..TARGETS)
                .map(|t| format!("https://race.example/{i}/{t}"))
                .collect();
            let id = create(&creator, &targets).await;
            // Cancel at a different moment for each purge: before, during and after sending.
            tokio::time::sleep(Duration::from_millis((i as u64 * 37) % 400)).await;
            cancel(&canceller, &id).await;
            (id, targets)
        }));
    }
    let mut purges = Vec::new();
    for r in runs {
        purges.push(r.await.unwrap());
    }
    let mut states = HashSet::new();
    let mut finals = Vec::new();
    for (i, (id, targets)) in purges.iter().enumerate() {
        let done = wait_terminal(&apps[(i + 2) % 3].client, id, Duration::from_secs(60)).await;
        states.insert(done.state());
        finals.push((done, targets.clone()));
    }
    let sent: Vec<String> = sent_targets(&apps[0].registry.sandbox("sandbox").unwrap().calls());
    let sent_set: HashSet<&String> = sent.iter().collect();
    assert_eq!(sent.len(), sent_set.len(), "a target was sent twice");
    let mut cancelled_total = 0;
    for (done, targets) in &finals {
        let cancelled: HashSet<&String> =
            done.cancelled_targets.iter().map(|c| &c.target).collect();
        cancelled_total += cancelled.len();
        for t in targets {
            assert!(
                sent_set.contains(t) != cancelled.contains(t),
                "{t}: sent {}, cancelled {}",
                sent_set.contains(t),
                cancelled.contains(t)
            );
        }
        let any_sent = targets.iter().any(|t| sent_set.contains(t));
        let want = if any_sent {
            PurgeState::Succeeded
        } else {
            PurgeState::Cancelled
        };
        assert_eq!(done.state(), want, "{done:?}");
    }
    // The race really raced: some targets went out, some were withdrawn.
    assert!(
        !sent.is_empty() && cancelled_total > 0,
        "sent {}, cancelled {cancelled_total}",
        sent.len()
    );
    println!(
        "race: {} sent, {cancelled_total} cancelled, states {states:?}",
        sent.len()
    );
}

/// A batch whose every target was cancelled while it waited for budget makes no call, and the
/// call it was granted goes to the next batch instead of being lost: with one call per 3 s,
/// the purge after it goes out one interval after the first call, not two.
async fn a_wholly_cancelled_batch_gives_its_call_back(app: &crate::support::TestApp) {
    let client = &app.client;
    let sandbox = app.registry.sandbox("sandbox").unwrap().clone();
    let first = create(client, &["https://u.example/first".into()]).await;
    eventually(Duration::from_secs(5), "the first call went out", || {
        let n = sandbox.calls().len();
        async move { (n == 1).then_some(()) }
    })
    .await;
    // Waits in its lane for the next slot, and is cancelled there.
    let withdrawn = create(client, &["https://u.example/withdrawn".into()]).await;
    assert_eq!(
        cancel(client, &withdrawn).await.state(),
        PurgeState::Cancelled
    );
    // Another lane (PREFIX), behind the cancelled one.
    let next = client
        .clone()
        .create_purge(request(
            "sandbox",
            PurgeKind::Prefix,
            &["https://u.example/dir/"],
        ))
        .await
        .unwrap()
        .into_inner()
        .id;
    let next = wait_terminal(client, &next, Duration::from_secs(20)).await;
    assert_eq!(next.state(), PurgeState::Succeeded);
    let first = wait_terminal(client, &first, Duration::from_secs(5)).await;
    let at = |p: &pb::Purge| {
        let t = p.tasks[0].submit_time.as_ref().unwrap();
        t.seconds as f64 + f64::from(t.nanos) / 1e9
    };
    let gap = at(&next) - at(&first);
    println!("call after a wholly cancelled batch: {gap:.2} s after the first (interval 3.06 s)");
    assert!(
        gap < 4.5,
        "the next call came {gap:.2} s after the first: the cancelled batch's call was lost"
    );
    let calls = sandbox.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(!sent_targets(&calls).contains(&"https://u.example/withdrawn".to_owned()));
}

/// One call per 3 s (a window rule); batches of up to 10.
fn one_call_per_3s(account: &str) -> String {
    format!(
        "[dispatch]\nlinger = \"5ms\"\n[[providers]]\nname = \"sandbox\"\ntype = \"sandbox\"\n\
         delay = \"20ms\"\nmax_per_call = 10\naccount = \"{account}\"\n\
         limits = {{ submit = [{{ count = 1, per = \"3s\" }}] }}\n"
    )
}

#[tokio::test]
async fn a_wholly_cancelled_batch_gives_its_call_back_memory() {
    let app = spawn_app(config(&one_call_per_3s(&unique("acct")))).await;
    a_wholly_cancelled_batch_gives_its_call_back(&app).await;
}

#[tokio::test]
async fn a_wholly_cancelled_batch_gives_its_call_back_redis() {
    let server = RedisServer::start();
    let target = RedisTarget::node(&server);
    let app = spawn_app(target.config(&one_call_per_3s(&unique("acct")))).await;
    a_wholly_cancelled_batch_gives_its_call_back(&app).await;
}
