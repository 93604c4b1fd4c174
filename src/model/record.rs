//! The life of a purge record: every change the dispatcher makes to a purge is one method here
//! that says whether it changed anything; stores wrap each in `apply`, which versions it and
//! derives the purge state from its units.

use foldhash::{HashMap, HashSet};

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
        // One pass over the units, not one per target: a purge can carry thousands.
        let sending: foldhash::HashSet<&str> = self
            .units
            .iter()
            .filter(|u| u.provider == provider && u.status == UnitStatus::Sending)
            .map(|u| u.target.as_str())
            .collect();
        targets
            .iter()
            .copied()
            .filter(|t| sending.contains(t))
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
#[path = "record_tests.rs"]
mod tests;
