//! Unit tests of the budget's charges: per-kind rates, pauses, unused grants given back.

use std::collections::BTreeMap;

use super::*;
use crate::limiter::memory::MemoryLimiter;
use crate::providers::sandbox::Sandbox;
use crate::providers::{Capabilities, Provider};

/// A budget on `limiter` for a sandbox provider with the capabilities `shape` makes.
fn budget_with(limiter: &MemoryLimiter, shape: impl FnOnce(&mut Capabilities)) -> Budget {
    let sandbox = Sandbox::new(Default::default()).unwrap();
    let mut caps = sandbox.capabilities();
    shape(&mut caps);
    let handle = ProviderHandle::new("s".into(), Arc::new(sandbox), caps);
    Budget::new(
        handle,
        Arc::new(limiter.clone()),
        0.0,
        CancellationToken::new(),
        &Metrics::disabled(),
    )
}

/// A provider without submit rates but with 2 ALL calls an hour (Fastly's shape).
fn budget(limiter: &MemoryLimiter) -> Budget {
    budget_with(limiter, |caps| {
        caps.submit_rates.clear();
        caps.kind_submit_rates = BTreeMap::from([(
            PurgeKind::All,
            vec![Rate::new(2, Duration::from_secs(3_600))],
        )]);
    })
}

#[tokio::test]
async fn a_kinds_own_rate_is_charged_for_that_kind_only() {
    let limiter = MemoryLimiter::default();
    let budget = budget(&limiter);
    let all = budget.submit_charges(PurgeKind::All);
    for _ in 0..2 {
        assert_eq!(limiter.acquire(&all).await.unwrap(), Decision::Granted);
    }
    assert!(matches!(
        limiter.acquire(&all).await.unwrap(),
        Decision::Wait(_)
    ));
    let url = budget.submit_charges(PurgeKind::Url);
    assert_eq!(limiter.acquire(&url).await.unwrap(), Decision::Granted);
}

#[tokio::test]
async fn a_pause_holds_a_provider_without_submit_rates() {
    let limiter = MemoryLimiter::default();
    let budget = budget(&limiter);
    let url = budget.submit_charges(PurgeKind::Url);
    assert_eq!(limiter.acquire(&url).await.unwrap(), Decision::Granted);
    budget.pause_submits(Duration::from_secs(60)).await;
    assert!(matches!(
        limiter.acquire(&url).await.unwrap(),
        Decision::Wait(d) if d > Duration::from_secs(50)
    ));
}

/// A provider allowing one URL call per 10 s (a window rule).
fn one_call_per_10s(limiter: &MemoryLimiter) -> Budget {
    budget_with(limiter, |caps| {
        caps.submit_rates = vec![Rate::new(1, Duration::from_secs(10))];
        caps.kind_submit_rates.clear();
    })
}

#[tokio::test]
async fn a_grant_given_back_frees_the_slot_and_wakes_its_waiter() {
    let limiter = MemoryLimiter::default();
    let budget = one_call_per_10s(&limiter);
    let Grant::Granted(at) = budget.submit(PurgeKind::Url).await else {
        panic!("the first call is granted");
    };
    // The next call waits ~10 s for the slot, until the first grant is given back.
    let waiter = tokio::spawn({
        let budget = budget.clone();
        async move { matches!(budget.submit(PurgeKind::Url).await, Grant::Granted(_)) }
    });
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished());
    budget.unspend_submit(PurgeKind::Url, at).await;
    let granted = tokio::time::timeout(Duration::from_secs(2), waiter)
        .await
        .expect("the waiter is woken, not left to its 10 s")
        .unwrap();
    assert!(granted);
    // The slot is the waiter's now.
    assert!(matches!(
        limiter
            .acquire(&budget.submit_charges(PurgeKind::Url))
            .await
            .unwrap(),
        Decision::Wait(_)
    ));
}
