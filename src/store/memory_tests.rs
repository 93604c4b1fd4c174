//! Unit tests of the memory store: bounds, eviction order, expiry, idempotency.

use super::*;
use crate::model::{Action, PurgeKind, PurgeSpec, PurgeState, UnitStatus};

fn record() -> PurgeRecord {
    let spec = PurgeSpec {
        provider: "sandbox".into(),
        providers: vec!["sandbox".into()],
        kind: PurgeKind::Host,
        targets: vec!["example.com".into()],
        action: Action::Invalidate,
        hosts: Vec::new(),
        headers: Default::default(),
        labels: Default::default(),
        idempotency_key: Some("k".into()),
    };
    let id = uuid::Uuid::now_v7().to_string();
    PurgeRecord::new(id, "c".into(), spec, chrono::Utc::now())
}

fn claim(scope: &str, retention: Duration) -> IdempotencyClaim {
    IdempotencyClaim {
        scope: scope.into(),
        fingerprint: "f".into(),
        retention,
    }
}

fn store(max_records: usize, max_keys: usize) -> MemoryStore {
    MemoryStore::with_limits(
        Arc::new(|_| {}),
        Duration::from_secs(3600),
        MemoryLimits {
            max_records,
            max_idempotency_keys: max_keys,
        },
    )
}

async fn create(store: &MemoryStore, claim: Option<IdempotencyClaim>) -> CreateOutcome {
    store.create(record(), claim, Vec::new()).await.unwrap()
}

async fn created(store: &MemoryStore) -> String {
    match create(store, None).await {
        CreateOutcome::Created(r) => r.id,
        other => panic!("expected a new purge, got {other:?}"),
    }
}

async fn finish(store: &MemoryStore, id: &str) {
    let done = |r: &mut PurgeRecord| {
        for u in &mut r.units {
            u.status = UnitStatus::Succeeded;
        }
        true
    };
    let r = store.update(id, &done).await.unwrap().expect("exists");
    assert_eq!(r.state, PurgeState::Succeeded);
}

async fn kept(store: &MemoryStore, id: &str) -> bool {
    store.get(id).await.unwrap().is_some()
}

#[tokio::test]
async fn the_oldest_finished_purge_goes_first_and_an_unfinished_one_never() {
    let store = store(3, 10);
    let unfinished = created(&store).await;
    let older = created(&store).await;
    let newer = created(&store).await;
    // Finished in the other order than created: the one finished first goes first.
    finish(&store, &newer).await;
    finish(&store, &older).await;
    let fourth = created(&store).await;
    assert!(!kept(&store, &newer).await, "the first finished is evicted");
    assert!(kept(&store, &older).await);
    assert!(kept(&store, &unfinished).await, "unfinished purges stay");
    let fifth = created(&store).await;
    assert!(!kept(&store, &older).await);
    assert!(kept(&store, &unfinished).await && kept(&store, &fourth).await);
    assert!(kept(&store, &fifth).await);
    assert_eq!(
        store.stats(),
        MemoryStats {
            records: 3,
            unfinished: 3,
            idempotency_keys: 0
        }
    );
    assert!(store.aged_out(&newer) && store.aged_out(&older));
    assert!(!store.aged_out(&uuid::Uuid::now_v7().to_string()));
}

#[tokio::test]
async fn unfinished_purges_at_the_cap_refuse_creates_until_one_finishes() {
    let store = store(2, 10);
    let first = created(&store).await;
    let _second = created(&store).await;
    match create(&store, Some(claim("refused", Duration::from_secs(60)))).await {
        CreateOutcome::AtCapacity { limit, retry_after } => {
            assert_eq!(limit, 2);
            assert!(retry_after > Duration::ZERO);
        }
        other => panic!("expected AtCapacity, got {other:?}"),
    }
    assert_eq!(
        store.stats().idempotency_keys,
        0,
        "a refused create keeps no key"
    );
    // Purges in flight still change and finish at the cap.
    finish(&store, &first).await;
    let third = created(&store).await;
    assert!(kept(&store, &third).await);
    assert!(!kept(&store, &first).await);
}

#[tokio::test]
async fn a_finished_purge_reads_back_whole_from_its_compact_form() {
    let store = store(10, 10);
    let id = created(&store).await;
    finish(&store, &id).await;
    let r = store.get(&id).await.unwrap().unwrap();
    assert_eq!(r.id, id);
    assert_eq!(r.state, PurgeState::Succeeded);
    assert_eq!(r.units[0].target, "example.com");
    // A later change to a finished purge is kept too.
    let label = |r: &mut PurgeRecord| {
        r.spec.labels.insert("late".into(), "yes".into());
        true
    };
    store.update(&id, &label).await.unwrap().unwrap();
    let r = store.get(&id).await.unwrap().unwrap();
    assert_eq!(r.spec.labels["late"], "yes");
    assert_eq!(store.stats().unfinished, 0);
}

#[tokio::test]
async fn idempotency_keys_are_bounded_oldest_first() {
    let store = store(100, 2);
    let long = Duration::from_secs(3600);
    for scope in ["a", "b", "c"] {
        create(&store, Some(claim(scope, long))).await;
    }
    assert_eq!(store.stats().idempotency_keys, 2);
    assert!(store.replay(&claim("a", long)).await.unwrap().is_none());
    assert!(matches!(
        store.replay(&claim("c", long)).await.unwrap(),
        Some(CreateOutcome::Existing(_))
    ));
}

#[tokio::test]
async fn a_key_whose_purge_was_evicted_makes_a_new_purge() {
    let store = store(2, 10);
    let key = claim("k", Duration::from_secs(3600));
    let CreateOutcome::Created(first) = create(&store, Some(key.clone())).await else {
        panic!("created");
    };
    finish(&store, &first.id).await;
    let filler = created(&store).await;
    finish(&store, &filler).await;
    created(&store).await;
    assert!(
        !kept(&store, &first.id).await,
        "the oldest finished is evicted"
    );
    match create(&store, Some(key)).await {
        CreateOutcome::Created(r) => assert_ne!(r.id, first.id),
        other => panic!("expected a new purge, got {other:?}"),
    }
}

#[tokio::test]
async fn idempotency_keys_are_forgotten_after_their_retention() {
    let store = MemoryStore::new(Arc::new(|_| {}), Duration::from_secs(3600));
    let kept = claim("kept", Duration::from_secs(3600));
    for i in 0..100 {
        let short = claim(&format!("short-{i}"), Duration::ZERO);
        create(&store, Some(short)).await;
    }
    let first = store.create(record(), Some(kept.clone()), Vec::new()).await;
    let Ok(CreateOutcome::Created(first)) = first else {
        panic!("created");
    };
    {
        let state = store.inner.state.lock().unwrap();
        assert_eq!(state.keys.len(), 1, "expired keys are gone");
        assert_eq!(state.key_order.len(), 1);
    }
    match store.replay(&kept).await.unwrap() {
        Some(CreateOutcome::Existing(r)) => assert_eq!(r.id, first.id),
        other => panic!("the kept key answers with its purge, got {other:?}"),
    }
    assert!(
        store
            .replay(&claim("short-1", Duration::ZERO))
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn finished_purges_expire_after_the_retention() {
    let store = MemoryStore::new(Arc::new(|_| {}), Duration::ZERO);
    let id = created(&store).await;
    finish(&store, &id).await;
    let unfinished = created(&store).await;
    assert!(!kept(&store, &id).await, "expired at the next create");
    assert!(kept(&store, &unfinished).await);
    assert!(store.aged_out(&id));
}
