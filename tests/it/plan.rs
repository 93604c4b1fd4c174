//! CreatePurge with validate_only: the plan (providers, calls, quota, estimates), nothing
//! recorded, and how far the estimate is from what then happens under a rate limit.

use std::time::Duration;

use purge_service::pb::{self, PurgeKind, PurgeState};
use tonic::Code;

use crate::support::{config, eventually, request, spawn_app, violations, wait_terminal};

fn targets(prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("https://p.example/{prefix}/{i}"))
        .collect()
}

fn req(ts: &[String], validate_only: bool) -> pb::CreatePurgeRequest {
    let refs: Vec<&str> = ts.iter().map(String::as_str).collect();
    let mut r = request("sandbox", PurgeKind::Url, &refs);
    r.validate_only = validate_only;
    r
}

fn secs(t: &prost_types::Timestamp) -> f64 {
    t.seconds as f64 + f64::from(t.nanos) / 1e9
}

#[tokio::test]
async fn a_validate_only_create_plans_and_records_nothing() {
    let app = spawn_app(config(
        "[[providers]]\nname = \"sandbox\"\ntype = \"sandbox\"\nmax_per_call = 4\n\
         [[groups]]\nname = \"both\"\nproviders = [\"sandbox\", \"two\"]\n\
         [[providers]]\nname = \"two\"\ntype = \"sandbox\"\nmax_per_call = 3\n",
    ))
    .await;
    let mut client = app.client.clone();
    let mut r = req(&targets("a", 10), true);
    r.provider = "both".into();
    let p = client.create_purge(r).await.unwrap().into_inner();
    assert!(
        p.id.is_empty() && p.state() == PurgeState::Unspecified,
        "{p:?}"
    );
    let plan = p.plan.unwrap();
    let calls: Vec<(String, i32, i32)> = plan
        .providers
        .iter()
        .map(|p| (p.provider.clone(), p.calls, p.max_per_call))
        .collect();
    assert_eq!(calls, vec![("sandbox".into(), 3, 4), ("two".into(), 4, 3)]);
    assert!(
        plan.providers
            .iter()
            .all(|p| p.daily_quota_left.is_none() && p.targets == 10)
    );
    assert!(
        plan.estimated_finish_time.unwrap().seconds >= plan.estimated_start_time.unwrap().seconds
    );
    // Nothing was recorded or sent.
    let listed = client
        .list_purges(pb::ListPurgesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.purges.is_empty());
    assert!(app.registry.sandbox("sandbox").unwrap().calls().is_empty());
    // Validation still applies.
    let err = client
        .create_purge(req(&["not a url".to_owned()], true))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(violations(&err)[0].0, "targets[0]");
}

/// Under a 5 calls/s budget with 2 targets a call, a purge queued behind 40 targets: how far
/// the plan's start and finish are from the purge's first call and finish time.
#[tokio::test]
async fn the_estimate_against_what_happens_under_a_rate_limit() {
    let app = spawn_app(config(
        "[dispatch]\nlinger = \"10ms\"\npoll_interval = \"100ms\"\n\
         [[providers]]\nname = \"sandbox\"\ntype = \"sandbox\"\ndelay = \"10ms\"\nmax_per_call = 2\n\
         limits = { submit = [{ count = 5, per = \"1s\" }] }\n",
    ))
    .await;
    let mut client = app.client.clone();
    let ahead = client
        .create_purge(req(&targets("ahead", 40), false))
        .await
        .unwrap()
        .into_inner();
    let mine = targets("mine", 10);
    let plan = eventually(Duration::from_secs(5), "the plan sees calls ahead", || {
        let mut c = client.clone();
        let r = req(&mine, true);
        async move {
            let plan = c.create_purge(r).await.ok()?.into_inner().plan?;
            (plan.providers[0].calls_ahead > 0).then_some(plan)
        }
    })
    .await;
    let created = client
        .create_purge(req(&mine, false))
        .await
        .unwrap()
        .into_inner();
    let done = wait_terminal(&client, &created.id, Duration::from_secs(30)).await;
    wait_terminal(&client, &ahead.id, Duration::from_secs(30)).await;
    assert_eq!(done.state(), PurgeState::Succeeded);
    let est_start = secs(plan.estimated_start_time.as_ref().unwrap());
    let est_finish = secs(plan.estimated_finish_time.as_ref().unwrap());
    let first_call = done
        .tasks
        .iter()
        .map(|t| secs(t.submit_time.as_ref().unwrap()))
        .fold(f64::MAX, f64::min);
    let finish = secs(done.finish_time.as_ref().unwrap());
    let created_at = secs(done.create_time.as_ref().unwrap());
    println!(
        "plan estimate: calls ahead {}, start {:+.2} s (actual {:+.2} s), finish {:+.2} s (actual {:+.2} s), from create",
        plan.providers[0].calls_ahead,
        est_start - created_at,
        first_call - created_at,
        est_finish - created_at,
        finish - created_at,
    );
    // Within a second and a half of the actual finish (4 s of work here).
    assert!(
        (est_finish - finish).abs() < 1.5,
        "estimated {est_finish}, finished {finish}"
    );
}
