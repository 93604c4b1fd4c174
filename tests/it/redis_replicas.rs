//! Several replicas on one Redis: the provider budget holds across all of them, a replica that
//! dies mid-batch leaves its purges to another, and a Redis crash (AOF on) loses no accepted
//! purge. The sandboxes of one test share a simulated CDN account, as replicas share a CDN.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use purge_service::pb::{PurgeKind, PurgeState};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::redis_server::{RedisServer, RedisTarget, unique};
use crate::support::{Client, eventually, request, spawn_app, wait_terminal};

async fn create_one(client: &Client, target: &str) -> Result<String, tonic::Status> {
    client
        .clone()
        .create_purge(request("sandbox", PurgeKind::Url, &[target]))
        .await
        .map(|p| p.into_inner().id)
}

#[tokio::test]
async fn three_replicas_keep_the_provider_rate_and_use_it() {
    const N: usize = 10;
    let server = RedisServer::start();
    let target = RedisTarget::node(&server);
    // The sandbox throttles the whole account above N calls/s, like a real CDN would.
    let rest = format!(
        "[dispatch]\nlinger = \"5ms\"\nrate_margin = 0.05\n[[providers]]\nname = \"sandbox\"\ntype = \"sandbox\"\ndelay = \"20ms\"\nmax_per_call = 1\nrate = {{ count = {N}, per = \"1s\" }}\naccount = \"{}\"\n",
        unique("acct")
    );
    let mut apps = Vec::new();
    for _ in 0..3 {
        apps.push(spawn_app(target.config(&rest)).await);
    }
    let creates = (0..90).map(|i| {
        let client = apps[i % 3].client.clone();
        tokio::spawn(
            async move { create_one(&client, &format!("https://example.com/flood/{i}")).await },
        )
    });
    let ids: Vec<String> = futures::future::join_all(creates)
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap())
        .collect();
    for (i, id) in ids.iter().enumerate() {
        let p = wait_terminal(&apps[(i + 1) % 3].client, id, Duration::from_secs(60)).await;
        assert_eq!(p.state(), PurgeState::Succeeded, "{p:?}");
    }
    // The account's call log holds the calls of all three replicas.
    let calls = apps[0].registry.sandbox("sandbox").unwrap().calls();
    assert!(
        calls.iter().all(|c| !c.throttled),
        "the provider throttled a call"
    );
    assert_eq!(
        calls.len(),
        90,
        "one call per target, none lost or repeated"
    );
    let mut times: Vec<SystemTime> = calls.iter().map(|c| c.at).collect();
    times.sort();
    for (i, start) in times.iter().enumerate() {
        let in_window = times[i..]
            .iter()
            .take_while(|t| t.duration_since(*start).unwrap() < Duration::from_secs(1))
            .count();
        assert!(in_window <= N, "{in_window} calls within 1 s from call {i}");
    }
    let span = times
        .last()
        .unwrap()
        .duration_since(times[0])
        .unwrap()
        .as_secs_f64();
    let rate = (times.len() - 1) as f64 / span;
    assert!(
        rate >= 0.9 * N as f64,
        "the flood reached only {rate:.2} calls/s of {N}"
    );
}

/// Replica A claims a batch, submits part of it and dies; B takes over the rest after
/// `reclaim_idle`: it resumes polling the tasks A submitted (they run for a while at the
/// provider) and submits what A had not sent. Every target is sent exactly once.
#[tokio::test]
async fn a_replica_killed_mid_batch_leaves_its_purges_to_another() {
    let server = RedisServer::start();
    let target = RedisTarget::node(&server);
    let rest = format!(
        "[dispatch]\nlinger = \"5ms\"\nreclaim_idle = \"1s\"\n[[providers]]\nname = \"sandbox\"\ntype = \"sandbox\"\ndelay = \"3s\"\nmax_per_call = 1\naccount = \"{}\"\nlimits = {{ submit = [{{ count = 5, per = \"1s\" }}] }}\n",
        unique("acct")
    );
    let a = spawn_app(target.config(&rest)).await;
    let targets: Vec<String> = (0..20)
        .map(|i| format!("https://example.com/batch/{i}"))
        .collect();
    let mut ids = Vec::new();
    for t in &targets {
        ids.push(create_one(&a.client, t).await.unwrap());
    }
    let sandbox = a.registry.sandbox("sandbox").unwrap().clone();
    eventually(
        Duration::from_secs(10),
        "replica A submitted part of the batch",
        || {
            let n = sandbox.calls().len();
            async move { (n >= 3).then_some(()) }
        },
    )
    .await;
    let b = spawn_app(target.config(&rest)).await;
    a.stop().await.unwrap();
    let sent_by_a = sandbox.calls().len();
    assert!(
        sent_by_a < 20,
        "A must die mid-batch, it sent all {sent_by_a}"
    );

    for id in &ids {
        let p = wait_terminal(&b.client, id, Duration::from_secs(30)).await;
        assert_eq!(p.state(), PurgeState::Succeeded, "{p:?}");
    }
    let calls = b.registry.sandbox("sandbox").unwrap().calls();
    let mut sent: Vec<&str> = calls
        .iter()
        .flat_map(|c| c.targets.iter().map(String::as_str))
        .collect();
    sent.sort();
    let mut expected: Vec<&str> = targets.iter().map(String::as_str).collect();
    expected.sort();
    assert_eq!(
        sent, expected,
        "every target sent exactly once: no batch lost, none repeated"
    );
}

async fn health(addr: std::net::SocketAddr) -> Option<ServingStatus> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .ok()?
        .connect()
        .await
        .ok()?;
    let mut h = HealthClient::new(channel);
    let r = h
        .check(HealthCheckRequest {
            service: "purge.v1.PurgeService".into(),
        })
        .await
        .ok()?;
    Some(r.into_inner().status())
}

/// Redis crashes mid-run and comes back from its append-only file: health goes NOT_SERVING,
/// creates answer UNAVAILABLE without hanging, then everything resumes by itself and every
/// accepted purge ends terminal.
#[tokio::test]
async fn redis_restart_with_aof_loses_no_accepted_purge() {
    let mut server = RedisServer::start_with_aof();
    let target = RedisTarget::node(&server);
    let rest = format!(
        "[dispatch]\nreclaim_idle = \"2s\"\n[[providers]]\nname = \"sandbox\"\ntype = \"sandbox\"\ndelay = \"200ms\"\nmax_per_call = 5\naccount = \"{}\"\n",
        unique("acct")
    );
    let apps = [
        spawn_app(target.config(&rest)).await,
        spawn_app(target.config(&rest)).await,
    ];
    let accepted = Arc::new(Mutex::new(Vec::<String>::new()));
    let refused = Arc::new(Mutex::new(BTreeMap::<String, usize>::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    let creator = {
        let clients: Vec<Client> = apps.iter().map(|a| a.client.clone()).collect();
        let (accepted, refused, stop) = (accepted.clone(), refused.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0usize;
            while !stop.is_cancelled() {
                match create_one(&clients[i % 2], &format!("https://example.com/aof/{i}")).await {
                    Ok(id) => accepted.lock().unwrap().push(id),
                    Err(s) => {
                        *refused
                            .lock()
                            .unwrap()
                            .entry(format!("{:?}", s.code()))
                            .or_default() += 1
                    }
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let accepted_count = || accepted.lock().unwrap().len();
    eventually(Duration::from_secs(10), "some purges are accepted", || {
        let n = accepted_count();
        async move { (n >= 30).then_some(()) }
    })
    .await;

    server.kill();
    let addrs = [apps[0].addr, apps[1].addr];
    eventually(
        Duration::from_secs(10),
        "health reports NOT_SERVING",
        || async move { (health(addrs[0]).await == Some(ServingStatus::NotServing)).then_some(()) },
    )
    .await;
    let started = Instant::now();
    let err = create_one(&apps[1].client, "https://example.com/while-down")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "CreatePurge hung for {:?}",
        started.elapsed()
    );

    server.restart();
    eventually(
        Duration::from_secs(20),
        "health reports SERVING again",
        || async move { (health(addrs[1]).await == Some(ServingStatus::Serving)).then_some(()) },
    )
    .await;
    let before = accepted_count();
    eventually(
        Duration::from_secs(20),
        "creates are accepted again",
        || {
            let n = accepted_count();
            async move { (n >= before + 30).then_some(()) }
        },
    )
    .await;
    stop.cancel();
    creator.await.unwrap();

    let ids: Vec<String> = accepted.lock().unwrap().clone();
    let unique_ids: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique_ids.len(), ids.len());
    for (i, id) in ids.iter().enumerate() {
        let p = wait_terminal(&apps[i % 2].client, id, Duration::from_secs(60)).await;
        assert_eq!(p.state(), PurgeState::Succeeded, "{p:?}");
    }
    let refused = refused.lock().unwrap().clone();
    assert!(
        refused.keys().all(|code| code == "Unavailable"),
        "refusals other than UNAVAILABLE: {refused:?}"
    );
}

/// A replica started while Redis is down serves health NOT_SERVING and refuses creates with
/// UNAVAILABLE, then works as soon as Redis comes up, without a restart.
#[tokio::test]
async fn a_replica_started_before_redis_comes_up_by_itself() {
    let mut server = RedisServer::reserved();
    let target = RedisTarget::node(&server);
    let app = spawn_app(target.config(&format!(
        "[[providers]]\nname = \"sandbox\"\ntype = \"sandbox\"\ndelay = \"20ms\"\naccount = \"{}\"\n",
        unique("acct")
    )))
    .await;
    let addr = app.addr;
    eventually(
        Duration::from_secs(10),
        "health reports NOT_SERVING",
        || async move { (health(addr).await == Some(ServingStatus::NotServing)).then_some(()) },
    )
    .await;
    let err = create_one(&app.client, "https://example.com/early")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");

    server.launch();
    eventually(
        Duration::from_secs(20),
        "health reports SERVING",
        || async move { (health(addr).await == Some(ServingStatus::Serving)).then_some(()) },
    )
    .await;
    let id = create_one(&app.client, "https://example.com/late")
        .await
        .unwrap();
    let p = wait_terminal(&app.client, &id, Duration::from_secs(20)).await;
    assert_eq!(p.state(), PurgeState::Succeeded, "{p:?}");
}
