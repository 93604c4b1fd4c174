//! The estimated start of a queued purge (`Purge.estimated_start_time`): behind a flood at a
//! known submit rate it lies in a sane window, comes closer while the purge waits, is within a
//! stated tolerance of the actual first call, and is gone once nothing is left to send. On
//! Redis a replica that holds none of the work sees every replica's backlog.

use std::time::Duration;

use purge_service::pb::{self, PurgeKind, PurgeState};

use crate::redis_server::{RedisServer, RedisTarget, unique};
use crate::support::{Client, TestApp, eventually, request, spawn_app, wait_terminal};

/// 5 calls/s (the simulated CDN throttles above it too), 2 targets a call.
const CALLS_PER_SECOND: u32 = 5;
const FLOOD: usize = 20;

fn provider(account: &str) -> String {
    format!(
        "[dispatch]\nlinger = \"10ms\"\npoll_interval = \"100ms\"\n\
         [[providers]]\nname = \"sandbox\"\ntype = \"sandbox\"\ndelay = \"10ms\"\nmax_per_call = 2\n\
         account = \"{account}\"\nrate = {{ count = {CALLS_PER_SECOND}, per = \"1s\" }}\n\
         limits = {{ submit = [{{ count = {CALLS_PER_SECOND}, per = \"1s\" }}] }}\n"
    )
}

fn secs(t: &prost_types::Timestamp) -> f64 {
    t.seconds as f64 + f64::from(t.nanos) / 1e9
}

fn now() -> f64 {
    secs(&prost_types::Timestamp::from(std::time::SystemTime::now()))
}

/// Two targets per purge: `FLOOD` purges make `FLOOD` calls.
async fn create(client: &Client, name: &str) -> pb::Purge {
    let targets = [
        format!("https://e.example/{name}/a"),
        format!("https://e.example/{name}/b"),
    ];
    let refs: Vec<&str> = targets.iter().map(String::as_str).collect();
    client
        .clone()
        .create_purge(request("sandbox", PurgeKind::Url, &refs))
        .await
        .unwrap()
        .into_inner()
}

async fn get(client: &Client, id: &str) -> pb::Purge {
    client
        .clone()
        .get_purge(pb::GetPurgeRequest { id: id.to_owned() })
        .await
        .unwrap()
        .into_inner()
}

/// What one estimate said, seconds from when it was asked.
struct Asked {
    at: f64,
    estimate: f64,
}

async fn ask(client: &Client, id: &str) -> Asked {
    let at = now();
    let p = get(client, id).await;
    assert_eq!(p.state(), PurgeState::Queued, "{p:?}");
    let estimate = secs(
        p.estimated_start_time
            .as_ref()
            .expect("a queued purge's estimate"),
    );
    Asked { at, estimate }
}

/// Follows `mine` (queued behind the flood) through `reader`: the estimate at the start lies
/// in the window the flood makes, a second and a half later it is closer by about as much,
/// and the actual first call is within `tolerance` of the first estimate. Returns the first
/// estimate's error (actual minus estimate) in seconds.
async fn check_estimates(app: &TestApp, reader: &Client, mine: &str, tolerance: f64) -> f64 {
    let first = ask(reader, mine).await;
    let interval = 1.02 / f64::from(CALLS_PER_SECOND);
    let wait = first.estimate - first.at;
    // The flood is FLOOD calls; a few may be out already.
    let (low, high) = (
        (FLOOD as f64 - 6.0) * interval,
        (FLOOD as f64 + 1.0) * interval,
    );
    assert!(
        (low..=high).contains(&wait),
        "estimated start {wait:.2} s away, expected {low:.2}..{high:.2} s"
    );
    eventually(Duration::from_secs(5), "1.5 s have passed", || {
        let at = first.at;
        async move { (now() - at > 1.5).then_some(()) }
    })
    .await;
    let second = ask(reader, mine).await;
    let closer = (first.estimate - first.at) - (second.estimate - second.at);
    assert!(
        closer > 1.0,
        "the estimate came {closer:.2} s closer in {:.2} s",
        second.at - first.at
    );
    let done = wait_terminal(&app.client, mine, Duration::from_secs(30)).await;
    assert_eq!(done.state(), PurgeState::Succeeded);
    assert!(
        done.estimated_start_time.is_none(),
        "no estimate once finished"
    );
    let started = secs(done.tasks[0].submit_time.as_ref().unwrap());
    let error = started - first.estimate;
    println!(
        "estimated start: asked {:.2} s before it, estimate {:+.2} s from asking, actual {:+.2} s \
         (error {error:+.2} s); 1.5 s later {:+.2} s, error {:+.2} s",
        started - first.at,
        first.estimate - first.at,
        started - first.at,
        second.estimate - second.at,
        started - second.estimate,
    );
    assert!(
        error.abs() < tolerance,
        "estimated {:.2}, started {started:.2} ({error:+.2} s)",
        first.estimate
    );
    error
}

#[tokio::test]
async fn a_queued_purge_carries_a_fresh_estimate_of_its_start() {
    let app = spawn_app(crate::support::config(&provider(&unique("acct")))).await;
    for i in 0..FLOOD {
        create(&app.client, &format!("flood{i}")).await;
    }
    let mine = create(&app.client, "mine").await;
    assert!(
        mine.estimated_start_time.is_some(),
        "CreatePurge answers the estimate too"
    );
    check_estimates(&app, &app.client, &mine.id, 1.0).await;
}

/// Replica A holds the flood and the purge; replica B, started after A claimed them, holds
/// nothing: only the Redis backlog tells it what waits.
#[tokio::test]
async fn a_replica_holding_none_of_the_work_sees_the_redis_backlog() {
    let server = RedisServer::start();
    let target = RedisTarget::node(&server);
    let rest = provider(&unique("acct"));
    let a = spawn_app(target.config(&rest)).await;
    for i in 0..FLOOD {
        create(&a.client, &format!("flood{i}")).await;
    }
    let mine = create(&a.client, "mine").await;
    let sandbox = a.registry.sandbox("sandbox").unwrap().clone();
    eventually(Duration::from_secs(5), "replica A sends", || {
        let n = sandbox.calls().len();
        async move { (n > 0).then_some(()) }
    })
    .await;
    let b = spawn_app(target.config(&rest)).await;
    check_estimates(&a, &b.client, &mine.id, 1.0).await;
    assert!(
        sandbox.calls().iter().all(|c| !c.throttled),
        "the simulated CDN throttled a call"
    );
}
