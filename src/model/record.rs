//! The life of a purge record: every change the dispatcher makes to a purge is one method here
//! that says whether it changed anything; stores wrap each in `apply`, which versions it and
//! derives the purge state from its units.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};

use super::{
    PurgeRecord, PurgeSpec, PurgeState, Submitted, TaskRecord, TaskState, Unit, UnitStatus,
};

impl PurgeRecord {
    /// A new purge in state QUEUED with one pending unit per provider and target.
    pub fn new(id: String, caller: String, spec: PurgeSpec, now: DateTime<Utc>) -> PurgeRecord {
        let targets = spec.effective_targets();
        let units = spec
            .providers
            .iter()
            .flat_map(|p| {
                targets.iter().map(move |t| Unit {
                    provider: p.clone(),
                    target: t.clone(),
                    status: UnitStatus::Pending,
                })
            })
            .collect();
        PurgeRecord {
            id,
            caller,
            spec,
            state: PurgeState::Queued,
            units,
            tasks: Vec::new(),
            error: None,
            create_time: now,
            update_time: now,
            finish_time: None,
            cancel_time: None,
            version: 1,
        }
    }

    /// Applies `change` (one of the transitions below). When it changed something, bumps the
    /// version and update time and derives the purge state from the units; says whether it did.
    pub fn apply(
        &mut self,
        change: impl FnOnce(&mut PurgeRecord) -> bool,
        now: DateTime<Utc>,
    ) -> bool {
        if !change(self) {
            return false;
        }
        self.version += 1;
        self.update_time = now.max(self.update_time);
        self.settle(now);
        true
    }

    /// `sub` went out carrying `targets` of this purge: its pending units there are now
    /// submitted under a new task, or failed where the provider refused them. A task whose
    /// every target was refused is over at once. False when no pending unit was carried (the
    /// change was recorded before).
    #[must_use]
    pub fn submitted(
        &mut self,
        sub: &Submitted<'_>,
        targets: &HashSet<&str>,
        now: DateTime<Utc>,
    ) -> bool {
        let task = self.tasks.len();
        let mut carried = 0;
        let mut refused = 0;
        for unit in self.units.iter_mut() {
            if unit.provider != sub.provider
                || !unit.status.is_unsent()
                || !targets.contains(unit.target.as_str())
            {
                continue;
            }
            carried += 1;
            unit.status = match sub.rejected.get(unit.target.as_str()) {
                Some(reason) => {
                    refused += 1;
                    UnitStatus::Failed {
                        reason: (*reason).to_owned(),
                    }
                }
                None => UnitStatus::Submitted { task },
            };
        }
        if carried == 0 {
            return false;
        }
        let all_refused = refused == carried;
        self.tasks.push(TaskRecord {
            provider: sub.provider.to_owned(),
            provider_task_id: sub.task_id.to_owned(),
            state: if all_refused {
                TaskState::Failed
            } else {
                TaskState::Running
            },
            target_count: carried,
            error: (refused > 0)
                .then(|| format!("{refused} of {carried} targets refused by the provider")),
            request_id: sub.request_id.map(str::to_owned),
            submit_time: now,
        });
        true
    }

    /// A dispatcher is about to send `targets` of this purge to `provider`: its pending units
    /// there become `Sending`, which CancelPurge no longer withdraws. Written (compare-and-set
    /// in the store) before the provider call; the caller sends only the targets whose unit is
    /// `Sending` afterwards ([`PurgeRecord::sendable`]). False when nothing was pending.
    #[must_use]
    pub fn claim(&mut self, provider: &str, targets: &HashSet<&str>) -> bool {
        let mut changed = false;
        for unit in self.units.iter_mut().filter(|u| {
            u.provider == provider
                && u.status == UnitStatus::Pending
                && targets.contains(u.target.as_str())
        }) {
            unit.status = UnitStatus::Sending;
            changed = true;
        }
        changed
    }

    /// Which of `targets` at `provider` a dispatcher may send now: those claimed for sending.
    pub fn sendable<'a>(&self, provider: &str, targets: &[&'a str]) -> Vec<&'a str> {
        targets
            .iter()
            .copied()
            .filter(|t| {
                self.units.iter().any(|u| {
                    u.provider == provider && u.target == *t && u.status == UnitStatus::Sending
                })
            })
            .collect()
    }

    /// CancelPurge: every unit no dispatcher has claimed yet is withdrawn; claimed and
    /// submitted units finish as usual. The first call records the cancel time. False when
    /// the purge is already final or was cancelled before with nothing left to withdraw.
    #[must_use]
    pub fn cancel(&mut self, now: DateTime<Utc>) -> bool {
        if self.state.is_terminal() {
            return false;
        }
        let mut changed = false;
        if self.cancel_time.is_none() {
            self.cancel_time = Some(now);
            changed = true;
        }
        for unit in self
            .units
            .iter_mut()
            .filter(|u| u.status == UnitStatus::Pending)
        {
            unit.status = UnitStatus::Cancelled;
            changed = true;
        }
        changed
    }

    /// Provider task `task_id` of `provider` finished for `targets`: those in `failed` failed
    /// with its reason, the others succeeded, and the task ends (failed if any target failed,
    /// now or when the provider refused some at submit). Units submitted under another task
    /// are left alone. False when nothing was still waiting for this task.
    #[must_use]
    pub fn task_finished(
        &mut self,
        provider: &str,
        task_id: &str,
        targets: &HashSet<&str>,
        failed: &HashMap<String, String>,
    ) -> bool {
        let mut changed = false;
        let mut failures = 0;
        for unit in self
            .units
            .iter_mut()
            .filter(|u| u.provider == provider && targets.contains(u.target.as_str()))
        {
            let UnitStatus::Submitted { task } = unit.status else {
                continue;
            };
            if self
                .tasks
                .get(task)
                .is_none_or(|t| t.provider_task_id != task_id)
            {
                continue;
            }
            unit.status = match failed.get(&unit.target) {
                Some(reason) => {
                    failures += 1;
                    UnitStatus::Failed {
                        reason: reason.clone(),
                    }
                }
                None => UnitStatus::Succeeded,
            };
            changed = true;
        }
        for t in self
            .tasks
            .iter_mut()
            .filter(|t| t.provider_task_id == task_id && t.provider == provider)
        {
            if t.state != TaskState::Running {
                continue;
            }
            // Targets the provider refused at submit already failed this task.
            let refused = t.error.take();
            t.state = if failures == 0 && refused.is_none() {
                TaskState::Succeeded
            } else {
                TaskState::Failed
            };
            let failed = (failures > 0).then(|| format!("{failures} targets failed"));
            t.error = match (refused, failed) {
                (Some(a), Some(b)) => Some(format!("{a}; {b}")),
                (a, b) => a.or(b),
            };
            changed = true;
        }
        changed
    }

    /// `targets` of this purge at `provider` failed for `reason` (a provider error, a spent
    /// budget) without a task to wait for. Units already final keep their outcome. False when
    /// none was still open.
    #[must_use]
    pub fn targets_failed(
        &mut self,
        provider: &str,
        targets: &HashSet<&str>,
        reason: &str,
    ) -> bool {
        let mut changed = false;
        for unit in self.units.iter_mut() {
            if unit.provider == provider
                && !unit.status.is_terminal()
                && targets.contains(unit.target.as_str())
            {
                unit.status = UnitStatus::Failed {
                    reason: reason.to_owned(),
                };
                changed = true;
            }
        }
        changed
    }

    /// `targets` of this purge at `provider` failed because the provider's daily quota for the
    /// purge's kind is gone; see [`PurgeRecord::targets_failed`].
    #[must_use]
    pub fn quota_refused(&mut self, provider: &str, targets: &HashSet<&str>) -> bool {
        let reason = quota_reason(self.spec.kind, provider);
        self.targets_failed(provider, targets, &reason)
    }

    /// Derives the purge state from its units; a final state stays.
    fn settle(&mut self, now: DateTime<Utc>) {
        if self.state.is_terminal() {
            return;
        }
        let p = self.progress();
        if p.pending > 0 {
            if self.units.iter().any(|u| u.status != UnitStatus::Pending) {
                self.state = PurgeState::Running;
            }
            return;
        }
        if p.cancelled == p.total {
            // Nothing was sent.
            self.state = PurgeState::Cancelled;
            self.error = Some(format!(
                "cancelled before any of its {} targets was sent",
                p.total
            ));
        } else if p.failed == 0 {
            self.state = PurgeState::Succeeded;
        } else {
            self.state = PurgeState::Failed;
            self.error = Some(format!("{} of {} targets failed", p.failed, p.total));
        }
        self.finish_time = Some(now);
    }
}

/// Why targets failed when the day's quota of `kind` at `provider` ran out.
pub fn quota_reason(kind: super::PurgeKind, provider: &str) -> String {
    format!("daily {kind} quota of provider {provider:?} exhausted")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

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
        let rejected = HashMap::from([("u2", "not ours")]);
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
        let rejected = HashMap::from([("u3", "bad")]);
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
        let failed = HashMap::from([("u2".to_owned(), "origin said no".to_owned())]);
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
        let rejected = HashMap::from([("u3", "bad")]);
        assert!(r.submitted(&sub("T1", &rejected), &set(&["u1", "u2", "u3"]), at(1)));
        let failed = HashMap::from([("u1".to_owned(), "timeout".to_owned())]);
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
}
