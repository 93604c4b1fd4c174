//! Unit tests of the purge record's transitions.

use std::collections::BTreeMap;

use foldhash::HashMapExt;

use super::*;
use crate::model::{Action, PurgeKind, WHOLE_ZONE};

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000, 0).unwrap()
}

fn record(providers: &[&str], targets: &[&str]) -> PurgeRecord {
    let spec = PurgeSpec {
        provider: "all".into(),
        providers: providers.iter().map(|p| (*p).to_owned()).collect(),
        kind: PurgeKind::Url,
        targets: targets.iter().map(|t| (*t).to_owned()).collect(),
        action: Action::Invalidate,
        hosts: vec![],
        headers: BTreeMap::new(),
        labels: BTreeMap::new(),
        idempotency_key: None,
    };
    PurgeRecord::new("p1".into(), "caller".into(), spec, t0())
}

fn set<'a>(targets: &[&'a str]) -> HashSet<&'a str> {
    targets.iter().copied().collect()
}

fn status(r: &PurgeRecord, provider: &str, target: &str) -> UnitStatus {
    r.units
        .iter()
        .find(|u| u.provider == provider && u.target == target)
        .unwrap()
        .status
        .clone()
}

fn sub<'a>(task_id: &'a str, rejected: &'a HashMap<&'a str, &'a str>) -> Submitted<'a> {
    Submitted {
        provider: "a",
        task_id,
        request_id: Some("req-1"),
        rejected,
    }
}

fn at(secs: i64) -> DateTime<Utc> {
    t0() + chrono::Duration::seconds(secs)
}

#[test]
fn a_new_purge_is_queued_with_a_pending_unit_per_provider_and_target() {
    let r = record(&["a", "b"], &["u1", "u2"]);
    assert_eq!((r.state, r.version), (PurgeState::Queued, 1));
    assert_eq!(r.units.len(), 4);
    assert!(r.units.iter().all(|u| u.status == UnitStatus::Pending));
    let mut all = record(&["a"], &[]);
    all.spec.kind = PurgeKind::All;
    let all = PurgeRecord::new(all.id, all.caller, all.spec, t0());
    assert_eq!(all.units[0].target, WHOLE_ZONE);
}

#[test]
fn submitting_moves_pending_units_of_that_provider_onto_a_running_task() {
    let mut r = record(&["a", "b"], &["u1", "u2", "u3"]);
    let none = HashMap::new();
    assert!(r.apply(
        |r| r.submitted(&sub("T1", &none), &set(&["u1", "u2"]), at(1)),
        at(1)
    ));
    assert_eq!(status(&r, "a", "u1"), UnitStatus::Submitted { task: 0 });
    assert_eq!(status(&r, "a", "u3"), UnitStatus::Pending);
    assert_eq!(status(&r, "b", "u1"), UnitStatus::Pending);
    let task = &r.tasks[0];
    assert_eq!((task.state, task.target_count), (TaskState::Running, 2));
    assert_eq!(task.request_id.as_deref(), Some("req-1"));
    assert_eq!((task.error.as_ref(), task.submit_time), (None, at(1)));
    assert_eq!(
        (r.state, r.version, r.update_time),
        (PurgeState::Running, 2, at(1))
    );
    // Recorded again (a retried store write): nothing left to carry.
    assert!(!r.apply(
        |r| r.submitted(&sub("T1", &none), &set(&["u1", "u2"]), at(2)),
        at(2)
    ));
    assert_eq!((r.tasks.len(), r.version, r.update_time), (1, 2, at(1)));
}

#[test]
fn targets_refused_at_submit_fail_and_a_task_refusing_all_is_over() {
    let mut r = record(&["a"], &["u1", "u2", "u3"]);
    let rejected = HashMap::from_iter([("u2", "not ours")]);
    assert!(r.submitted(&sub("T1", &rejected), &set(&["u1", "u2"]), at(1)));
    assert_eq!(
        status(&r, "a", "u2"),
        UnitStatus::Failed {
            reason: "not ours".into()
        }
    );
    assert_eq!(r.tasks[0].state, TaskState::Running);
    assert_eq!(
        r.tasks[0].error.as_deref(),
        Some("1 of 2 targets refused by the provider")
    );
    let rejected = HashMap::from_iter([("u3", "bad")]);
    assert!(r.submitted(&sub("T2", &rejected), &set(&["u3"]), at(2)));
    assert_eq!(r.tasks[1].state, TaskState::Failed);
    assert_eq!(r.tasks[1].target_count, 1);
}

#[test]
fn a_finished_task_settles_its_units_and_the_purge() {
    let mut r = record(&["a"], &["u1", "u2"]);
    let none = HashMap::new();
    assert!(r.apply(
        |r| r.submitted(&sub("T1", &none), &set(&["u1", "u2"]), at(1)),
        at(1)
    ));
    // Another task's report does not touch units submitted under T1.
    let targets = set(&["u1", "u2"]);
    assert!(!r.apply(
        |r| r.task_finished("a", "T9", &targets, &HashMap::new()),
        at(2)
    ));
    assert!(!r.apply(
        |r| r.task_finished("b", "T1", &targets, &HashMap::new()),
        at(2)
    ));
    assert_eq!(r.version, 2);
    let failed = HashMap::from_iter([("u2".to_owned(), "origin said no".to_owned())]);
    assert!(r.apply(|r| r.task_finished("a", "T1", &targets, &failed), at(3)));
    assert_eq!(status(&r, "a", "u1"), UnitStatus::Succeeded);
    assert_eq!(
        status(&r, "a", "u2"),
        UnitStatus::Failed {
            reason: "origin said no".into()
        }
    );
    assert_eq!(r.tasks[0].state, TaskState::Failed);
    assert_eq!(r.tasks[0].error.as_deref(), Some("1 targets failed"));
    assert_eq!(r.state, PurgeState::Failed);
    assert_eq!(r.error.as_deref(), Some("1 of 2 targets failed"));
    assert_eq!((r.finish_time, r.version), (Some(at(3)), 3));
    // Reported twice: nothing changes.
    assert!(!r.apply(|r| r.task_finished("a", "T1", &targets, &failed), at(4)));
    assert_eq!(r.version, 3);
}

#[test]
fn a_task_finished_for_some_targets_keeps_running_for_the_others() {
    let mut r = record(&["a"], &["u1", "u2"]);
    let none = HashMap::new();
    assert!(r.submitted(&sub("T1", &none), &set(&["u1", "u2"]), at(1)));
    assert!(r.apply(
        |r| r.task_finished("a", "T1", &set(&["u1"]), &none_failed()),
        at(2)
    ));
    assert_eq!(status(&r, "a", "u1"), UnitStatus::Succeeded);
    assert_eq!(status(&r, "a", "u2"), UnitStatus::Submitted { task: 0 });
    assert_eq!(r.tasks[0].state, TaskState::Succeeded);
    assert_eq!(r.state, PurgeState::Running);
    assert_eq!(r.finish_time, None);
}

fn none_failed() -> HashMap<String, String> {
    HashMap::new()
}

#[test]
fn a_task_with_refused_targets_ends_failed_and_keeps_both_reasons() {
    let mut r = record(&["a"], &["u1", "u2", "u3"]);
    let rejected = HashMap::from_iter([("u3", "bad")]);
    assert!(r.submitted(&sub("T1", &rejected), &set(&["u1", "u2", "u3"]), at(1)));
    let failed = HashMap::from_iter([("u1".to_owned(), "timeout".to_owned())]);
    assert!(r.task_finished("a", "T1", &set(&["u1", "u2"]), &failed));
    assert_eq!(r.tasks[0].state, TaskState::Failed);
    assert_eq!(
        r.tasks[0].error.as_deref(),
        Some("1 of 3 targets refused by the provider; 1 targets failed")
    );
    let mut clean = record(&["a"], &["u1"]);
    assert!(clean.submitted(&sub("T1", &rejected), &set(&["u1"]), at(1)));
    assert!(clean.apply(
        |r| r.task_finished("a", "T1", &set(&["u1"]), &none_failed()),
        at(2)
    ));
    assert_eq!(
        (clean.tasks[0].state, clean.tasks[0].error.as_ref()),
        (TaskState::Succeeded, None)
    );
    assert_eq!(
        (clean.state, clean.error.as_ref()),
        (PurgeState::Succeeded, None)
    );
}

#[test]
fn failing_targets_leaves_final_units_and_other_providers_alone() {
    let mut r = record(&["a", "b"], &["u1", "u2"]);
    let none = HashMap::new();
    assert!(r.submitted(&sub("T1", &none), &set(&["u1"]), at(1)));
    assert!(r.task_finished("a", "T1", &set(&["u1"]), &none_failed()));
    assert!(r.apply(
        |r| r.targets_failed("a", &set(&["u1", "u2"]), "budget gone"),
        at(2)
    ));
    assert_eq!(status(&r, "a", "u1"), UnitStatus::Succeeded);
    assert_eq!(
        status(&r, "a", "u2"),
        UnitStatus::Failed {
            reason: "budget gone".into()
        }
    );
    assert_eq!(status(&r, "b", "u2"), UnitStatus::Pending);
    assert!(!r.targets_failed("a", &set(&["u1", "u2"]), "again"));
    assert!(!r.targets_failed("a", &set(&["u9"]), "unknown target"));
}

#[test]
fn a_refused_quota_names_the_kind_and_provider() {
    let mut r = record(&["a"], &["u1"]);
    assert!(r.apply(|r| r.quota_refused("a", &set(&["u1"])), at(1)));
    assert_eq!(
        status(&r, "a", "u1"),
        UnitStatus::Failed {
            reason: "daily URL quota of provider \"a\" exhausted".into()
        }
    );
    assert_eq!((r.state, r.finish_time), (PurgeState::Failed, Some(at(1))));
}

#[test]
fn a_final_purge_keeps_its_state_and_time_never_goes_back() {
    let mut r = record(&["a"], &["u1"]);
    assert!(r.apply(|r| r.targets_failed("a", &set(&["u1"]), "x"), at(5)));
    assert_eq!(r.state, PurgeState::Failed);
    // A clock behind the last write does not move update_time back.
    assert!(r.apply(
        |r| {
            r.units[0].status = UnitStatus::Succeeded;
            true
        },
        at(3)
    ));
    assert_eq!(
        (r.state, r.update_time, r.version),
        (PurgeState::Failed, at(5), 3)
    );
    assert_eq!(r.finish_time, Some(at(5)));
}

#[test]
fn cancelling_before_anything_is_sent_ends_cancelled_and_is_idempotent() {
    let mut r = record(&["a", "b"], &["u1", "u2"]);
    assert!(r.apply(|r| r.cancel(at(1)), at(1)));
    assert_eq!(r.state, PurgeState::Cancelled);
    assert_eq!((r.cancel_time, r.finish_time), (Some(at(1)), Some(at(1))));
    assert_eq!(r.progress().cancelled, 4);
    assert_eq!(r.cancelled().count(), 4);
    assert!(r.error.as_deref().unwrap().contains("cancelled before any"));
    // Again: nothing changes.
    assert!(!r.apply(|r| r.cancel(at(2)), at(2)));
    assert_eq!((r.version, r.cancel_time), (2, Some(at(1))));
}

#[test]
fn a_claimed_unit_cannot_be_cancelled_and_a_cancelled_unit_cannot_be_claimed_or_sent() {
    let mut r = record(&["a"], &["u1", "u2", "u3"]);
    assert!(r.apply(|r| r.claim("a", &set(&["u1"])), at(1)));
    assert_eq!(status(&r, "a", "u1"), UnitStatus::Sending);
    assert_eq!(r.state, PurgeState::Running);
    assert!(r.apply(|r| r.cancel(at(2)), at(2)));
    assert_eq!(status(&r, "a", "u1"), UnitStatus::Sending);
    assert_eq!(status(&r, "a", "u2"), UnitStatus::Cancelled);
    assert_eq!(r.state, PurgeState::Running);
    // A dispatcher that took u2 and u3 from its lane before the cancel finds them gone.
    assert!(!r.claim("a", &set(&["u2", "u3"])));
    assert_eq!(r.sendable("a", &["u1", "u2", "u3"]), vec!["u1"]);
    let none = HashMap::new();
    assert!(r.apply(
        |r| r.submitted(&sub("T1", &none), &set(&["u1", "u2", "u3"]), at(3)),
        at(3)
    ));
    assert_eq!(r.tasks[0].target_count, 1);
    assert_eq!(status(&r, "a", "u2"), UnitStatus::Cancelled);
    // The sent target's outcome decides; the cancelled ones are listed.
    assert!(r.apply(
        |r| r.task_finished("a", "T1", &set(&["u1"]), &none_failed()),
        at(4)
    ));
    assert_eq!(r.state, PurgeState::Succeeded);
    let p = r.progress();
    assert_eq!((p.succeeded, p.cancelled, p.pending), (1, 2, 0));
    assert!(!r.apply(|r| r.cancel(at(5)), at(5)));
}

#[test]
fn a_partly_cancelled_purge_whose_sent_target_failed_ends_failed() {
    let mut r = record(&["a"], &["u1", "u2"]);
    assert!(r.claim("a", &set(&["u1"])));
    assert!(r.apply(|r| r.cancel(at(1)), at(1)));
    assert!(r.apply(|r| r.targets_failed("a", &set(&["u1", "u2"]), "x"), at(2)));
    assert_eq!(status(&r, "a", "u2"), UnitStatus::Cancelled);
    assert_eq!(r.state, PurgeState::Failed);
    assert_eq!(r.error.as_deref(), Some("1 of 2 targets failed"));
}
