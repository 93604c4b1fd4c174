//! Metrics end to end: real traffic through the fake EdgeOne API, then a real HTTP scrape of the
//! admin port's `/metrics`, parsed by a Prometheus text parser, checked against what the fake
//! recorded and the calls made; and every metric the chart's dashboard and alerts use is there.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use prometheus_parse::{Sample, Scrape, Value};
use purge_service::pb::{GetPurgeRequest, PurgeKind};

use crate::edgeone::provider_toml;
use crate::fakes::edgeone::{FakeEdgeOne, SECRET_KEY};
use crate::support::{TestApp, config, eventually, is_terminal, request, spawn_app};

/// A real HTTP GET of `/metrics`, parsed.
pub async fn scrape(admin: SocketAddr) -> Scrape {
    let response = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("Prometheus text parses")
}

fn matching<'a>(
    scrape: &'a Scrape,
    name: &'a str,
    labels: &'a [(&str, &str)],
) -> impl Iterator<Item = &'a Sample> {
    scrape.samples.iter().filter(move |s| {
        s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
    })
}

/// The sum of a counter's or gauge's samples with these labels (0 when none).
pub fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    matching(scrape, name, labels)
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            other => panic!("{name} is not a counter or gauge: {other:?}"),
        })
        .sum()
}

/// How many observations a histogram's samples with these labels hold.
pub fn observations(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    matching(scrape, name, labels)
        .map(|s| match &s.value {
            Value::Histogram(buckets) => buckets
                .iter()
                .find(|b| b.less_than.is_infinite())
                .map_or(0.0, |b| b.count),
            other => panic!("{name} is not a histogram: {other:?}"),
        })
        .sum()
}

async fn service(fake: &FakeEdgeOne) -> (TestApp, tempfile::TempDir) {
    service_with(fake, "").await
}

/// The service with the admin listener on, one EdgeOne provider `edge` and `dispatch` settings.
async fn service_with(fake: &FakeEdgeOne, dispatch: &str) -> (TestApp, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[dispatch]\nquota_refresh = \"200ms\"\n{dispatch}\n{}",
        provider_toml(fake, SECRET_KEY, "", dir.path())
    );
    (spawn_app(config(&toml)).await, dir)
}

#[tokio::test]
async fn a_scrape_counts_what_the_provider_fake_and_the_client_saw() {
    let fake = FakeEdgeOne::start(50, Duration::from_millis(1500)).await;
    fake.set_daily_available("purge_host", 4321);
    let (app, _dir) = service(&fake).await;
    let admin = app.admin.expect("admin listener on");
    let mut client = app.client.clone();

    // Nothing waits before the first purge.
    let before = scrape(admin).await;
    assert_eq!(
        value(&before, "purge_work_waiting", &[("provider", "edge")]),
        0.0
    );

    let created = client
        .create_purge(request(
            "edge",
            PurgeKind::Url,
            &["https://www.example.com/a"],
        ))
        .await
        .unwrap()
        .into_inner();
    // The purge waits at the provider (its task takes 1.5 s): one purge held, and aging.
    eventually(Duration::from_secs(10), "one purge waits", || async {
        let s = scrape(admin).await;
        (value(&s, "purge_work_waiting", &[("provider", "edge")]) == 1.0).then_some(())
    })
    .await;

    let mut gets = 0;
    let done = eventually(Duration::from_secs(30), "the purge finishes", || {
        gets += 1;
        let mut client = client.clone();
        let id = created.id.clone();
        async move {
            let p = client
                .get_purge(GetPurgeRequest { id })
                .await
                .unwrap()
                .into_inner();
            is_terminal(&p).then_some(p)
        }
    })
    .await;
    assert_eq!(done.state, purge_service::pb::PurgeState::Succeeded as i32);
    // ... and then nothing waits.
    let s = eventually(
        Duration::from_secs(10),
        "the waiting purge is done",
        || async {
            let s = scrape(admin).await;
            (value(&s, "purge_work_waiting", &[("provider", "edge")]) == 0.0).then_some(s)
        },
    )
    .await;
    assert_eq!(
        value(&s, "purge_work_oldest_age_seconds", &[("provider", "edge")]),
        0.0
    );

    // RPC histogram counts are the calls made, by fully qualified method and status.
    let unary = |method: &'static str| {
        [
            ("rpc_system_name", "grpc"),
            ("rpc_method", method),
            ("rpc_response_status_code", "OK"),
        ]
    };
    assert_eq!(
        observations(
            &s,
            "rpc_server_call_duration_seconds",
            &unary("purge.v1.PurgeService/CreatePurge")
        ),
        1.0
    );
    assert_eq!(
        observations(
            &s,
            "rpc_server_call_duration_seconds",
            &unary("purge.v1.PurgeService/GetPurge")
        ),
        f64::from(gets)
    );

    // Provider calls equal what the fake recorded, by operation.
    let calls = fake.calls();
    let count = |action: &str| calls.iter().filter(|c| c.action == action).count() as f64;
    let provider = |op: &'static str| [("provider", "edge"), ("operation", op)];
    assert_eq!(
        value(&s, "purge_provider_calls_total", &provider("submit")),
        count("CreatePurgeTask")
    );
    assert_eq!(
        value(&s, "purge_provider_calls_total", &provider("poll")),
        count("DescribePurgeTasks")
    );
    let quota_reads = count("DescribeContentQuota");
    assert!(quota_reads >= 1.0, "the quota was read");
    // A quota read may be in flight at the fake while we scrape; it is counted when it ends.
    let counted = value(&s, "purge_provider_calls_total", &provider("quota"));
    assert!(
        counted == quota_reads || counted + 1.0 == quota_reads,
        "{counted} quota reads counted, the fake saw {quota_reads}"
    );
    assert_eq!(
        observations(
            &s,
            "purge_provider_call_duration_seconds",
            &[
                ("provider", "edge"),
                ("operation", "submit"),
                ("outcome", "success")
            ]
        ),
        count("CreatePurgeTask")
    );

    // The quota gauge is what the fake reported.
    assert_eq!(
        value(
            &s,
            "purge_provider_quota_remaining",
            &[("provider", "edge"), ("kind", "HOST")]
        ),
        4321.0
    );

    // The purge is counted once created and once finished, with its time to done.
    assert_eq!(value(&s, "purge_created_total", &[("kind", "URL")]), 1.0);
    assert_eq!(
        value(&s, "purge_finished_total", &[("state", "succeeded")]),
        1.0
    );
    assert_eq!(
        observations(&s, "purge_duration_seconds", &[("state", "succeeded")]),
        1.0
    );
    assert_eq!(
        observations(
            &s,
            "purge_provider_batch_fill_ratio",
            &[("provider", "edge"), ("kind", "URL")]
        ),
        count("CreatePurgeTask")
    );
}

/// Two purges of the same target in one batch: the target waits once, is sent once, and one is
/// counted as saved.
#[tokio::test]
async fn targets_saved_by_deduplication_are_counted() {
    let fake = FakeEdgeOne::start(50, Duration::from_millis(10)).await;
    let (app, _dir) = service_with(&fake, "linger = \"3s\"").await;
    let admin = app.admin.expect("admin listener on");
    let mut client = app.client.clone();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let p = client
            .create_purge(request(
                "edge",
                PurgeKind::Url,
                &["https://www.example.com/same"],
            ))
            .await
            .unwrap()
            .into_inner();
        ids.push(p.id);
    }
    // The lane holds the shared target once while it lingers...
    eventually(
        Duration::from_secs(3),
        "one target waits in the lane",
        || async {
            let s = scrape(admin).await;
            (value(&s, "purge_targets_waiting", &[("provider", "edge")]) == 1.0).then_some(())
        },
    )
    .await;
    for id in &ids {
        crate::support::wait_terminal(&app.client, id, Duration::from_secs(30)).await;
    }
    // ... and none once it is sent.
    let s = scrape(admin).await;
    assert_eq!(
        value(&s, "purge_targets_waiting", &[("provider", "edge")]),
        0.0
    );
    let sent: usize = fake
        .accepted("CreatePurgeTask")
        .iter()
        .map(|b| b["Targets"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(sent, 1, "the shared target went out once");
    let s = scrape(admin).await;
    assert_eq!(
        value(
            &s,
            "purge_targets_deduplicated_total",
            &[("provider", "edge"), ("kind", "URL")]
        ),
        1.0
    );
}

#[tokio::test]
async fn health_and_readiness_answer_on_the_admin_port() {
    let fake = FakeEdgeOne::start(50, Duration::from_millis(10)).await;
    let (app, _dir) = service(&fake).await;
    let admin = app.admin.expect("admin listener on");
    let healthz = reqwest::get(format!("http://{admin}/healthz"))
        .await
        .unwrap();
    assert_eq!(healthz.status(), 200);
    eventually(Duration::from_secs(10), "/readyz says ready", || async {
        let r = reqwest::get(format!("http://{admin}/readyz")).await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    let missing = reqwest::get(format!("http://{admin}/nothing"))
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

/// `/readyz` means what gRPC health means: not ready while Redis is down, ready again after;
/// `/healthz` stays up all along. Backend errors are counted meanwhile.
#[tokio::test]
async fn readiness_follows_the_state_backend() {
    let mut redis = crate::redis_server::RedisServer::start();
    let toml = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[store]\nbackend = \"redis\"\nurl = \"{}\"\ntimeout = \"500ms\"\n",
        redis.url()
    );
    let app = spawn_app(config(&toml)).await;
    let admin = app.admin.expect("admin listener on");
    let status = |path: &'static str| async move {
        reqwest::get(format!("http://{admin}{path}"))
            .await
            .map(|r| r.status().as_u16())
            .ok()
    };
    eventually(Duration::from_secs(10), "ready", || async {
        (status("/readyz").await == Some(200)).then_some(())
    })
    .await;
    redis.kill();
    eventually(
        Duration::from_secs(15),
        "not ready while Redis is down",
        || async { (status("/readyz").await == Some(503)).then_some(()) },
    )
    .await;
    assert_eq!(status("/healthz").await, Some(200));
    let s = scrape(admin).await;
    assert!(
        value(
            &s,
            "purge_backend_errors_total",
            &[("operation", "store.ping")]
        ) >= 1.0
    );
    redis.restart();
    eventually(Duration::from_secs(15), "ready again", || async {
        (status("/readyz").await == Some(200)).then_some(())
    })
    .await;
}

/// A WatchPurge counts as a stream, apart from unary calls; an error before the first message
/// is read from the headers.
#[tokio::test]
async fn streams_and_early_errors_are_measured() {
    let fake = FakeEdgeOne::start(50, Duration::from_millis(10)).await;
    let (app, _dir) = service(&fake).await;
    let admin = app.admin.expect("admin listener on");
    let mut client = app.client.clone();
    let missing = client
        .get_purge(GetPurgeRequest {
            id: "0190b1a2-0000-7000-8000-000000000000".into(),
        })
        .await
        .unwrap_err();
    let created = client
        .create_purge(request(
            "edge",
            PurgeKind::Url,
            &["https://www.example.com/w"],
        ))
        .await
        .unwrap()
        .into_inner();
    let mut stream = client
        .watch_purge(purge_service::pb::WatchPurgeRequest { id: created.id })
        .await
        .unwrap()
        .into_inner();
    while let Some(p) = stream.message().await.unwrap() {
        if is_terminal(&p) {
            break;
        }
    }
    drop(stream);
    let code = format!("{:?}", missing.code());
    let s = eventually(Duration::from_secs(10), "the stream is closed", || async {
        let s = scrape(admin).await;
        let open = value(
            &s,
            "rpc_server_open_streams",
            &[("rpc_method", "purge.v1.PurgeService/WatchPurge")],
        );
        (open == 0.0).then_some(s)
    })
    .await;
    assert_eq!(
        observations(
            &s,
            "rpc_server_stream_duration_seconds",
            &[("rpc_method", "purge.v1.PurgeService/WatchPurge")]
        ),
        1.0
    );
    assert_eq!(
        observations(
            &s,
            "rpc_server_call_duration_seconds",
            &[("rpc_method", "purge.v1.PurgeService/WatchPurge")]
        ),
        0.0
    );
    let not_found = observations(
        &s,
        "rpc_server_call_duration_seconds",
        &[
            ("rpc_method", "purge.v1.PurgeService/GetPurge"),
            ("rpc_response_status_code", "NOT_FOUND"),
        ],
    );
    assert_eq!(not_found, 1.0, "GetPurge of an unknown id answered {code}");
}

/// A watch the client drops before the purge ends counts as CANCELLED, and is no longer open.
#[tokio::test]
async fn a_dropped_watch_counts_as_cancelled() {
    let fake = FakeEdgeOne::start(50, Duration::from_secs(30)).await;
    let (app, _dir) = service(&fake).await;
    let admin = app.admin.expect("admin listener on");
    let mut client = app.client.clone();
    let created = client
        .create_purge(request(
            "edge",
            PurgeKind::Url,
            &["https://www.example.com/slow"],
        ))
        .await
        .unwrap()
        .into_inner();
    let mut stream = client
        .watch_purge(purge_service::pb::WatchPurgeRequest { id: created.id })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().expect("the current state");
    assert!(!is_terminal(&first));
    let watch = [("rpc_method", "purge.v1.PurgeService/WatchPurge")];
    let open = scrape(admin).await;
    assert_eq!(value(&open, "rpc_server_open_streams", &watch), 1.0);
    drop(stream);
    let s = eventually(
        Duration::from_secs(10),
        "the dropped watch is counted",
        || async {
            let s = scrape(admin).await;
            (value(&s, "rpc_server_open_streams", &watch) == 0.0).then_some(s)
        },
    )
    .await;
    assert_eq!(
        observations(
            &s,
            "rpc_server_stream_duration_seconds",
            &[
                ("rpc_method", "purge.v1.PurgeService/WatchPurge"),
                ("rpc_response_status_code", "CANCELLED")
            ]
        ),
        1.0
    );
}

/// Every metric the chart's dashboard and alert rules query is in a scrape: renaming a metric
/// without updating them fails here.
#[tokio::test]
async fn every_metric_the_dashboard_and_alerts_use_is_exported() {
    let fake = FakeEdgeOne::start(50, Duration::from_millis(10)).await;
    let (app, _dir) = service(&fake).await;
    let admin = app.admin.expect("admin listener on");
    let mut client = app.client.clone();
    let created = client
        .create_purge(request(
            "edge",
            PurgeKind::Url,
            &["https://www.example.com/d"],
        ))
        .await
        .unwrap()
        .into_inner();
    // Watched to the end, so the stream metrics are exported too.
    let mut stream = client
        .watch_purge(purge_service::pb::WatchPurgeRequest { id: created.id })
        .await
        .unwrap()
        .into_inner();
    while let Some(p) = stream.message().await.unwrap() {
        if is_terminal(&p) {
            break;
        }
    }
    drop(stream);

    let chart = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("helm/purge-service");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(chart.join("files/dashboard.json")).unwrap())
            .expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 8, "the dashboard's queries: {exprs:?}");
    let alerts = std::fs::read_to_string(chart.join("files/alerts.yaml")).unwrap();
    let used = metric_names(exprs.iter().map(String::as_str).chain([alerts.as_str()]));
    assert!(used.len() >= 8, "metrics used: {used:?}");

    // Gauges read by callbacks appear with the first scrape after the work they count.
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    let missing = loop {
        let exported = exported(&scrape(admin).await);
        let missing: Vec<&String> = used.iter().filter(|m| !exported.contains(*m)).collect();
        if missing.is_empty() || tokio::time::Instant::now() > until {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        missing.is_empty(),
        "used by the dashboard or alerts, not exported: {missing:?}"
    );
}

fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| collect_exprs(i, out)),
        _ => {}
    }
}

/// Names of this service's metrics in PromQL text, without the series suffixes.
fn metric_names<'a>(texts: impl Iterator<Item = &'a str>) -> BTreeSet<String> {
    let re = regex::Regex::new(r"\b(?:purge|rpc_server)_[a-z_]+\b").unwrap();
    let mut names = BTreeSet::new();
    for text in texts {
        for m in re.find_iter(text) {
            let name = m.as_str();
            let base = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            names.insert(base.to_owned());
        }
    }
    names
}

fn exported(s: &Scrape) -> BTreeSet<String> {
    s.samples.iter().map(|x| x.metric.clone()).collect()
}
