//! Budget metrics end to end: real traffic through a provider fake, then a real HTTP scrape of
//! `/metrics` parsed by a Prometheus text parser. The time work waited for budget is one
//! observation per grant and adds up to what the provider's rate forces; what is left of a
//! budget is what the calls made imply, on the memory backend and on a real Redis (where other
//! replicas' charges count too).

use std::time::{Duration, Instant};

use purge_service::config::Config;
use purge_service::limiter::{Charge, Decision, Limit, Rate};
use purge_service::pb::{PurgeKind, PurgeState};

use crate::cdnetworks::{Scheme, provider_toml as cdnetworks_toml};
use crate::edgeone::provider_toml;
use crate::fakes::cdnetworks::content::{FakeContent, RECEIVER, REGEX};
use crate::fakes::edgeone::{FakeEdgeOne, SECRET_KEY};
use crate::metrics::{observations, scrape, value};
use crate::redis_server::{RedisServer, RedisTarget};
use crate::support::{config, create, request, spawn_app};

const WAIT: &str = "purge_budget_wait_duration_seconds";
const LEFT: &str = "purge_budget_remaining";

/// A flood of `N` one-target submits under a submit rate of `RATE` calls a second.
///
/// What the rate forces: the limiter grants submit `k` no sooner than `1/RATE` after submit
/// `k-1` (GCRA without burst; the rate margin only lengthens the spacing), and only the flusher
/// asks for submit budget, one ask at a time, the next right after the last grant. So the
/// `N - 1` submits after the first each wait at least `1/RATE` less the flusher's own time
/// between a grant and its next ask (taking one target from the lane, spawning the call,
/// reading the budget's state for the gauge: in-memory work and one limiter read, allowed here
/// `GAP`, several hundred times what it takes):
///   sum >= (N - 1) * (1/RATE - GAP).
/// And since the waits never overlap, they fit in the time the whole purge took:
///   sum <= elapsed.
#[tokio::test]
async fn the_wait_for_budget_is_one_observation_per_grant_and_what_the_rate_forces() {
    const N: usize = 8;
    const RATE: u32 = 4;
    const GAP: f64 = 0.1;
    let fake = FakeEdgeOne::start(50, Duration::from_millis(10)).await;
    let dir = tempfile::tempdir().unwrap();
    let limits = format!(
        "[providers.limits]\nsubmit = [{{ count = {RATE}, per = \"1s\" }}]\nmax_per_call = {{ URL = 1 }}\n"
    );
    let toml = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{}",
        provider_toml(&fake, SECRET_KEY, &limits, dir.path())
    );
    let app = spawn_app(config(&toml)).await;
    let admin = app.admin.expect("admin listener on");
    let targets: Vec<String> = (0..N)
        .map(|i| format!("https://www.example.com/flood/{i}.js"))
        .collect();
    let targets: Vec<&str> = targets.iter().map(String::as_str).collect();

    let started = Instant::now();
    let done = create(&app, request("edge", PurgeKind::Url, &targets)).await;
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(done.state(), PurgeState::Succeeded, "{done:?}");

    // One submit grant per provider call: N calls of one target each.
    let grants = fake.accepted("CreatePurgeTask").len();
    assert_eq!(grants, N);
    let s = scrape(admin).await;
    let submit = [
        ("provider", "edge"),
        ("budget", "submit"),
        ("operation", "submit"),
    ];
    assert_eq!(observations(&s, WAIT, &submit), grants as f64);
    assert_eq!(
        value(&s, "purge_provider_calls_total", &[("operation", "submit")]),
        grants as f64
    );
    let sum = value(&s, &format!("{WAIT}_sum"), &submit);
    let forced = (N - 1) as f64 * (1.0 / f64::from(RATE) - GAP);
    assert!(
        sum >= forced,
        "{N} submits at {RATE}/s waited {sum:.3} s in all, the rate forces at least {forced:.3} s"
    );
    assert!(
        sum <= elapsed,
        "waits of one asker after another ({sum:.3} s) cannot outlast the purge ({elapsed:.3} s)"
    );
    // Status grants (polls, quota reads) are apart, under their own budget.
    assert!(
        observations(
            &s,
            WAIT,
            &[
                ("provider", "edge"),
                ("budget", "status"),
                ("operation", "poll")
            ]
        ) >= 1.0
    );
}

/// Content Management's documented budgets: 10 submit calls per 5 minutes (both purge
/// endpoints together), 500 REGEX targets a day on the UTC+8 day.
const SUBMITS: u32 = 10;
const REGEX_A_DAY: u64 = 500;

/// The service with the admin listener and Content Management at `fake` (its key files in
/// `dir`), on the backend `store` writes the config for.
fn content_config(
    fake: &FakeContent,
    dir: &std::path::Path,
    store: impl Fn(&str) -> Config,
) -> Config {
    let provider = cdnetworks_toml("cdnetworks", &fake.endpoint(), Scheme::AkSk, None, "", dir);
    store(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{provider}\n[providers.limits]\nstatus = [{{ count = 20, per = \"1s\" }}]\n"
    ))
}

/// Three submit calls (one per lane: URL, PREFIX, REGEX with two targets), then the gauge of
/// what is left: the submit window less the three calls and `others_calls`, the REGEX day less
/// the two targets and `others_targets`.
async fn remaining_after_known_calls(config: Config, others_calls: u32, others_targets: u64) {
    let app = spawn_app(config).await;
    let admin = app.admin.expect("admin listener on");
    let requests = [
        request(
            "cdnetworks",
            PurgeKind::Url,
            &["https://www.example.com/a.js"],
        ),
        request(
            "cdnetworks",
            PurgeKind::Prefix,
            &["https://www.example.com/dir/"],
        ),
        request(
            "cdnetworks",
            PurgeKind::Regex,
            &[
                "http://www.example.com/r1/.*",
                "http://www.example.com/r2/.*",
            ],
        ),
    ];
    for req in requests {
        let done = create(&app, req).await;
        assert_eq!(done.state(), PurgeState::Succeeded, "{done:?}");
    }
    let s = scrape(admin).await;
    let left = |budget: &str, extra: &[(&'static str, &'static str)]| {
        let mut labels = vec![
            ("provider", "cdnetworks"),
            ("budget", budget),
            ("rule", "0"),
        ];
        labels.extend_from_slice(extra);
        value(&s, LEFT, &labels)
    };
    assert!(
        s.samples.iter().any(|x| x.metric == LEFT),
        "the remaining gauge is exported"
    );
    assert_eq!(
        left("submit", &[]),
        f64::from(SUBMITS - 3 - others_calls),
        "the 5-minute submit window after 3 calls here and {others_calls} elsewhere"
    );
    assert_eq!(
        left("daily", &[("kind", "REGEX")]),
        (REGEX_A_DAY - 2 - others_targets) as f64,
        "the REGEX day after 2 targets here and {others_targets} elsewhere"
    );
    // A 20/s status rate paced without burst: one call or none left at any moment.
    assert!(left("status", &[]) <= 1.0);
}

#[tokio::test]
async fn what_is_left_of_a_budget_follows_the_calls_made_on_the_memory_backend() {
    let fake = FakeContent::start(Duration::from_millis(50)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = content_config(&fake, dir.path(), config);
    remaining_after_known_calls(config, 0, 0).await;
    assert_eq!(
        fake.accepted(RECEIVER).len() + fake.accepted(REGEX).len(),
        3
    );
}

/// On Redis the gauge reads the shared rules, so another replica's charges count: it takes 2
/// submit calls and 5 REGEX targets from the same budgets first.
#[tokio::test]
async fn what_is_left_of_a_budget_counts_every_replica_on_redis() {
    let server = RedisServer::start();
    let target = RedisTarget::node(&server);
    let fake = FakeContent::start(Duration::from_millis(50)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = content_config(&fake, dir.path(), |rest| target.config(rest));
    let other = purge_service::app::Backends::build(&config).await.unwrap();
    let submit = Charge {
        key: "cdnetworks:submit:0".into(),
        limit: Limit::for_rate(
            Rate::new(SUBMITS, Duration::from_secs(300)),
            config.dispatch.rate_margin,
        ),
        cost: 1,
    };
    let daily = Charge {
        key: "cdnetworks:daily:0".into(),
        limit: Limit::Daily {
            max: REGEX_A_DAY,
            utc_offset_secs: 8 * 3600,
        },
        cost: 5,
    };
    for charges in [&[submit.clone()][..], &[submit], &[daily]] {
        assert_eq!(
            other.limiter.acquire(charges).await.unwrap(),
            Decision::Granted
        );
    }
    remaining_after_known_calls(config, 2, 5).await;
    assert_eq!(
        fake.accepted(RECEIVER).len() + fake.accepted(REGEX).len(),
        3
    );
}
