//! The dispatcher seen from outside: batching, duplicate folding, and the provider budget.

use std::time::{Duration, SystemTime};

use purge_service::pb::{PurgeKind, PurgeState};

use purge_service::providers::sandbox::SandboxCall;

use crate::support::{Client, TestApp, config, max_in_window, request, spawn_app, wait_terminal};

async fn create_all(client: &Client, targets: Vec<String>) -> Vec<String> {
    let calls = targets.into_iter().map(|t| {
        let mut c = client.clone();
        tokio::spawn(async move {
            c.create_purge(request("sandbox", PurgeKind::Url, &[t.as_str()]))
                .await
                .map(|p| p.into_inner().id)
        })
    });
    futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap())
        .collect()
}

/// Creates `n` single-URL purges at once, waits until each succeeds, returns the CDN's calls.
async fn create_and_finish(app: &TestApp, path: &str, n: usize) -> Vec<SandboxCall> {
    let targets = (0..n)
        .map(|i| format!("https://example.com/{path}/{i}"))
        .collect();
    for id in create_all(&app.client, targets).await {
        let p = wait_terminal(&app.client, &id, Duration::from_secs(30)).await;
        assert_eq!(p.state(), PurgeState::Succeeded, "{p:?}");
    }
    app.registry.sandbox("sandbox").expect("sandbox").calls()
}

#[tokio::test]
async fn single_url_creates_are_packed_into_few_batches_within_the_cap() {
    let app = spawn_app(config(
        "[dispatch]\nlinger = \"1s\"\n[[providers]]\nname = \"sandbox\"\ntype = \"sandbox\"\ndelay = \"20ms\"\nmax_per_call = 50\n",
    ))
    .await;
    let calls = create_and_finish(&app, "item", 200).await;
    let sizes: Vec<usize> = calls.iter().map(|c| c.targets.len()).collect();
    assert!(
        sizes.iter().all(|&n| n <= 50),
        "a batch above the cap: {sizes:?}"
    );
    assert_eq!(sizes.iter().sum::<usize>(), 200, "{sizes:?}");
    assert!(
        calls.len() <= 6,
        "200 creates in one linger window should need 4 calls, got {sizes:?}"
    );
}

#[tokio::test]
async fn identical_waiting_targets_are_sent_once_and_credited_to_all() {
    let app = spawn_app(config(
        "[dispatch]\nlinger = \"2s\"\n[[providers]]\nname = \"sandbox\"\ntype = \"sandbox\"\ndelay = \"20ms\"\nmax_per_call = 500\n",
    ))
    .await;
    let mut targets = vec!["https://example.com/shared.css".to_string(); 40];
    targets.extend((0..10).map(|i| format!("https://example.com/own/{i}")));
    let ids = create_all(&app.client, targets).await;
    for id in &ids {
        let p = wait_terminal(&app.client, id, Duration::from_secs(20)).await;
        assert_eq!(p.state(), PurgeState::Succeeded, "{p:?}");
        assert_eq!(p.tasks.len(), 1);
    }
    let calls = app.registry.sandbox("sandbox").unwrap().calls();
    let sent: Vec<&String> = calls.iter().flat_map(|c| &c.targets).collect();
    let shared = sent.iter().filter(|t| t.ends_with("shared.css")).count();
    assert_eq!(
        shared,
        1,
        "the shared target went out {shared} times in {} calls",
        calls.len()
    );
    assert_eq!(sent.len(), 11);
}

#[tokio::test]
async fn the_provider_budget_is_never_exceeded() {
    const N: usize = 5;
    let app = spawn_app(config(
        "[dispatch]\nlinger = \"5ms\"\n[[providers]]\nname = \"sandbox\"\ntype = \"sandbox\"\ndelay = \"10ms\"\nmax_per_call = 1\nrate = { count = 5, per = \"1s\" }\n",
    ))
    .await;
    let calls = create_and_finish(&app, "r", 16).await;
    assert!(
        calls.iter().all(|c| !c.throttled),
        "the sandbox throttled a call"
    );
    assert_eq!(calls.len(), 16);
    let times: Vec<SystemTime> = calls.iter().map(|c| c.at).collect();
    let busiest = max_in_window(&times, Duration::from_secs(1));
    assert!(busiest <= N, "{busiest} calls within 1 s");
}

/// The dispatcher believes it may send 100 calls/s; the CDN throttles above 2/s. Throttled
/// calls are retried with backoff until every purge succeeds.
#[tokio::test]
async fn throttled_calls_are_retried_with_backoff() {
    let app = spawn_app(config(
        "[dispatch]\nlinger = \"5ms\"\n[[providers]]\nname = \"sandbox\"\ntype = \"sandbox\"\ndelay = \"10ms\"\nmax_per_call = 1\nrate = { count = 2, per = \"1s\" }\n[providers.limits]\nsubmit = [{ count = 100, per = \"1s\" }]\n",
    ))
    .await;
    let calls = create_and_finish(&app, "t", 6).await;
    let throttled = calls.iter().filter(|c| c.throttled).count();
    assert!(throttled > 0, "the test should provoke throttling");
    assert_eq!(calls.len() - throttled, 6);
}

/// The dispatcher believes 20 targets fit one call; the CDN takes 5. Refused batches are
/// split and resent until they fit.
#[tokio::test]
async fn a_batch_the_provider_finds_too_large_is_split() {
    let app = spawn_app(config(
        "[dispatch]\nlinger = \"200ms\"\n[[providers]]\nname = \"sandbox\"\ntype = \"sandbox\"\ndelay = \"10ms\"\nmax_per_call = 5\n[providers.limits.max_per_call]\nURL = 20\n",
    ))
    .await;
    let many: Vec<String> = (0..20)
        .map(|i| format!("https://example.com/s/{i}"))
        .collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    let mut client = app.client.clone();
    let created = client
        .create_purge(request("sandbox", PurgeKind::Url, &refs))
        .await
        .unwrap()
        .into_inner();
    let p = wait_terminal(&app.client, &created.id, Duration::from_secs(20)).await;
    assert_eq!(p.state(), PurgeState::Succeeded, "{p:?}");
    let calls = app.registry.sandbox("sandbox").unwrap().calls();
    let sizes: Vec<usize> = calls.iter().map(|c| c.targets.len()).collect();
    assert_eq!(sizes.first(), Some(&20), "{sizes:?}");
    let accepted: usize = sizes.iter().filter(|&&n| n <= 5).sum();
    assert_eq!(accepted, 20, "{sizes:?}");
    assert!(p.tasks.len() >= 4, "{:?}", p.tasks);
}

/// Two providers on one CDN account (two zones under one key) name the same `limits.account`:
/// together they stay within the account's rate, which the simulated CDN enforces for both.
#[tokio::test]
async fn providers_sharing_an_account_share_its_budget() {
    const N: usize = 4;
    let account = format!("shared-{:x}", rand::random::<u32>());
    let zone = |name: &str| {
        format!(
            "[[providers]]\nname = \"{name}\"\ntype = \"sandbox\"\ndelay = \"10ms\"\nmax_per_call = 1\naccount = \"{account}\"\nrate = {{ count = {N}, per = \"1s\" }}\n[providers.limits]\naccount = \"cdn-account\"\nsubmit = [{{ count = {N}, per = \"1s\" }}]\n"
        )
    };
    let app = spawn_app(config(&format!(
        "[dispatch]\nlinger = \"5ms\"\nrate_margin = 0.05\n{}{}",
        zone("zone-a"),
        zone("zone-b")
    )))
    .await;
    let client = &app.client;
    let creates = ["zone-a", "zone-b"].into_iter().flat_map(|zone| {
        (0..5).map(move |i| {
            let mut c = client.clone();
            let target = format!("https://{zone}.example.com/{i}");
            async move {
                c.create_purge(request(zone, PurgeKind::Url, &[target.as_str()]))
                    .await
                    .unwrap()
                    .into_inner()
                    .id
            }
        })
    });
    let ids = futures::future::join_all(creates).await;
    for id in ids {
        let p = wait_terminal(&app.client, &id, Duration::from_secs(30)).await;
        assert_eq!(p.state(), PurgeState::Succeeded, "{p:?}");
    }
    // Both sandboxes name one simulated account: its call log holds both zones' calls.
    let calls = app.registry.sandbox("zone-a").unwrap().calls();
    assert_eq!(
        calls.len(),
        10,
        "no call was throttled or repeated: {calls:?}"
    );
    let times: Vec<SystemTime> = calls.iter().map(|c| c.at).collect();
    let busiest = max_in_window(&times, Duration::from_secs(1));
    assert!(busiest <= N, "{busiest} calls within 1 s");
}

/// A task that runs for a while is asked about less and less often: a two-second task polled
/// from every 50 ms takes a handful of status calls, not forty.
#[tokio::test]
async fn long_tasks_are_polled_less_and_less_often() {
    let app = spawn_app(config(
        "[dispatch]\npoll_interval = \"50ms\"\nmax_poll_interval = \"2s\"\n[[providers]]\nname = \"sandbox\"\ntype = \"sandbox\"\ndelay = \"2s\"\n",
    ))
    .await;
    let mut client = app.client.clone();
    let created = client
        .create_purge(request(
            "sandbox",
            PurgeKind::Url,
            &["https://example.com/slow"],
        ))
        .await
        .unwrap()
        .into_inner();
    let p = wait_terminal(&app.client, &created.id, Duration::from_secs(20)).await;
    assert_eq!(p.state(), PurgeState::Succeeded, "{p:?}");
    let polls = app.registry.sandbox("sandbox").unwrap().polls();
    assert!((2..=12).contains(&polls), "{polls} status polls");
}
