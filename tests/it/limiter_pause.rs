//! The limiter's shared pause on a real Redis (one node and a cluster): a pause set by one
//! replica holds every replica's charges to that budget until it ends, and only that budget.

use std::time::{Duration, Instant};

use purge_service::limiter::{Charge, Decision, Limit, Rate};

use crate::redis_server::{RedisCluster, RedisServer, RedisTarget, unique};

const PROVIDER: &str = "[[providers]]\nname = \"sandbox\"\ntype = \"sandbox\"\ndelay = \"50ms\"\n";

async fn pause_is_shared(target: &RedisTarget) {
    let config = target.config(PROVIDER);
    let a = purge_service::app::Backends::build(&config).await.unwrap();
    let b = purge_service::app::Backends::build(&config).await.unwrap();
    let budget = unique("acct");
    let charge = |api: &str, i: usize| Charge {
        key: format!("{budget}:{api}:{i}"),
        limit: Limit::Window(Rate::new(100, Duration::from_secs(60))),
        cost: 1,
    };
    let submit = [charge("submit", 0), charge("submit", 1)];
    assert_eq!(b.limiter.acquire(&submit).await.unwrap(), Decision::Granted);

    let set = Instant::now();
    a.limiter
        .pause(&format!("{budget}:submit"), Duration::from_millis(1_500))
        .await
        .unwrap();
    // A shorter pause does not cut it short.
    b.limiter
        .pause(&format!("{budget}:submit"), Duration::from_millis(10))
        .await
        .unwrap();
    match b.limiter.acquire(&submit).await.unwrap() {
        Decision::Wait(d) => assert!(
            d > Duration::from_millis(1_000) && d <= Duration::from_millis(1_500),
            "{d:?}"
        ),
        other => panic!("the other replica must wait out the pause, got {other:?}"),
    }
    // Another budget of the same account is not paused.
    assert_eq!(
        b.limiter.acquire(&[charge("status", 0)]).await.unwrap(),
        Decision::Granted
    );
    // Poll (with a deadline) until granted: never before the pause's end.
    let granted_at = loop {
        match b.limiter.acquire(&submit).await.unwrap() {
            Decision::Granted => break set.elapsed(),
            Decision::Wait(d) => tokio::time::sleep(d.min(Duration::from_millis(50))).await,
            other => panic!("{other:?}"),
        }
        assert!(set.elapsed() < Duration::from_secs(10), "pause never ended");
    };
    assert!(
        granted_at >= Duration::from_millis(1_450),
        "granted {granted_at:?} after a 1.5 s pause"
    );
    // While paused nothing was charged: the window holds the two grants only.
    let full = Charge {
        cost: 98,
        ..charge("submit", 0)
    };
    assert_eq!(
        a.limiter
            .acquire(std::slice::from_ref(&full))
            .await
            .unwrap(),
        Decision::Granted
    );
    assert!(matches!(
        a.limiter.acquire(&[charge("submit", 0)]).await.unwrap(),
        Decision::Wait(_)
    ));
}

#[tokio::test]
async fn redis_limiter_pause_holds_every_replica() {
    let server = RedisServer::start();
    pause_is_shared(&RedisTarget::node(&server)).await;
}

#[tokio::test]
async fn redis_cluster_limiter_pause_holds_every_replica() {
    let cluster = RedisCluster::start();
    pause_is_shared(&RedisTarget::cluster(&cluster)).await;
}
