//! The provider tasks this replica follows: which purges each polled target is credited to,
//! and when to ask about each task next (less and less often while it keeps running).

use foldhash::{HashMap, HashMapExt};
use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::providers::TaskQuery;

/// A submitted task this replica follows.
#[derive(Clone, Debug)]
pub(super) struct InFlight {
    pub(super) query: TaskQuery,
    /// Target -> purges it is credited to.
    pub(super) credits: HashMap<String, Vec<String>>,
    /// When to ask about it next.
    schedule: PollSchedule,
}

impl InFlight {
    /// A task to ask about at the next round.
    pub(super) fn new(query: TaskQuery, credits: HashMap<String, Vec<String>>) -> InFlight {
        InFlight {
            query,
            credits,
            schedule: PollSchedule::default(),
        }
    }
}

/// A running task is asked about less and less often (`poll_interval`, growing by half each
/// time up to `max_poll_interval`), so long tasks do not eat the status budget new ones need.
#[derive(Clone, Copy, Debug, Default)]
struct PollSchedule {
    /// `None`: at the next round.
    next: Option<Instant>,
    polls: u32,
}

impl PollSchedule {
    fn due(&self, now: Instant) -> bool {
        self.next.is_none_or(|next| next <= now)
    }

    /// After a poll that found the task still running.
    fn still_running(&mut self, now: Instant, every: Duration, max: Duration) {
        self.polls = self.polls.saturating_add(1);
        let grown = every.mul_f64(1.5f64.powi(self.polls.min(32) as i32));
        self.next = Some(now + grown.min(max.max(every)));
    }
}

/// Every task followed for one provider, by provider task id; a cheap handle.
#[derive(Clone)]
pub(super) struct Tasks(Arc<Inner>);

struct Inner {
    tasks: Mutex<HashMap<String, InFlight>>,
    /// First gap between polls of a task.
    every: Duration,
    /// Largest gap.
    max: Duration,
}

impl Tasks {
    pub(super) fn new(every: Duration, max: Duration) -> Tasks {
        Tasks(Arc::new(Inner {
            tasks: Mutex::default(),
            every,
            max,
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, InFlight>> {
        self.0.tasks.lock().expect("inflight lock")
    }

    /// Follows `task`, merging its targets and credits into an entry already following the
    /// same provider task (adopted from another replica's work, or submitted for several
    /// purges).
    pub(super) fn follow(&self, task: InFlight) {
        self.follow_all([task]);
    }

    pub(super) fn follow_all(&self, tasks: impl IntoIterator<Item = InFlight>) {
        let mut inflight = self.lock();
        for task in tasks {
            merge(&mut inflight, task);
        }
    }

    /// The tasks due for a poll at `now`, oldest first.
    pub(super) fn due(&self, now: Instant) -> Vec<InFlight> {
        let mut due: Vec<InFlight> = self
            .lock()
            .values()
            .filter(|t| t.schedule.due(now))
            .cloned()
            .collect();
        due.sort_by_key(|t| t.query.submitted_at);
        due
    }

    /// A poll at `now` found task `task_id` still running: it is asked about later.
    pub(super) fn still_running(&self, task_id: &str, now: Instant) {
        if let Some(entry) = self.lock().get_mut(task_id) {
            entry.schedule.still_running(now, self.0.every, self.0.max);
        }
    }

    /// Takes the `polled` targets of task `task_id` out, with their credits; the task's other
    /// targets (merged in since the poll began) stay followed. `None` when the task is no
    /// longer followed.
    pub(super) fn take_polled(&self, task_id: &str, polled: &[String]) -> Option<InFlight> {
        let mut inflight = self.lock();
        let entry = inflight.get_mut(task_id)?;
        let mut done = InFlight {
            query: TaskQuery {
                targets: Vec::new(),
                ..entry.query.clone()
            },
            credits: HashMap::new(),
            schedule: entry.schedule,
        };
        for target in polled {
            if let Some(purges) = entry.credits.remove(target) {
                done.query.targets.push(target.clone());
                done.credits.insert(target.clone(), purges);
            }
        }
        entry
            .query
            .targets
            .retain(|t| entry.credits.contains_key(t));
        if entry.credits.is_empty() {
            inflight.remove(task_id);
        }
        Some(done)
    }
}

fn merge(inflight: &mut HashMap<String, InFlight>, task: InFlight) {
    match inflight.entry(task.query.task_id.clone()) {
        Entry::Vacant(v) => {
            v.insert(task);
        }
        Entry::Occupied(mut o) => {
            let entry = o.get_mut();
            for (target, purges) in task.credits {
                if !entry.query.targets.contains(&target) {
                    entry.query.targets.push(target.clone());
                }
                let credits = entry.credits.entry(target).or_default();
                for p in purges {
                    if !credits.contains(&p) {
                        credits.push(p);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::model::PurgeKind;

    fn task(id: &str, credits: &[(&str, &str)]) -> InFlight {
        let mut t = InFlight::new(
            TaskQuery {
                task_id: id.into(),
                kind: PurgeKind::Url,
                targets: Vec::new(),
                submitted_at: Utc::now(),
            },
            HashMap::new(),
        );
        for (target, purge) in credits {
            t.query.targets.push((*target).into());
            t.credits.insert((*target).into(), vec![(*purge).into()]);
        }
        t
    }

    #[test]
    fn targets_merged_during_a_poll_stay_followed() {
        let tasks = Tasks::new(Duration::from_secs(1), Duration::from_secs(10));
        tasks.follow(task("T", &[("u1", "p1")]));
        let polled = vec!["u1".to_owned()];
        // Another purge's work on the same task is taken over while the poll is out.
        tasks.follow(task("T", &[("u2", "p2"), ("u1", "p3")]));
        let done = tasks.take_polled("T", &polled).unwrap();
        assert_eq!(done.query.targets, ["u1"]);
        assert_eq!(done.credits["u1"], ["p1", "p3"]);
        let rest = tasks.due(Instant::now());
        assert_eq!(rest[0].query.targets, ["u2"]);
        assert_eq!(rest[0].credits["u2"], ["p2"]);
        let done = tasks.take_polled("T", &["u2".to_owned()]).unwrap();
        assert_eq!(done.credits.len(), 1);
        assert!(tasks.due(Instant::now()).is_empty());
        assert!(tasks.take_polled("T", &polled).is_none());
    }

    #[test]
    fn a_task_still_running_is_not_due_until_its_next_poll() {
        let tasks = Tasks::new(Duration::from_millis(500), Duration::from_secs(10));
        tasks.follow(task("T", &[("u1", "p1")]));
        let t0 = Instant::now();
        assert_eq!(tasks.due(t0).len(), 1);
        tasks.still_running("T", t0);
        assert!(tasks.due(t0).is_empty());
        assert_eq!(tasks.due(t0 + Duration::from_millis(750)).len(), 1);
    }

    #[test]
    fn running_tasks_are_asked_less_and_less_often() {
        let every = Duration::from_millis(500);
        let max = Duration::from_secs(10);
        let t0 = Instant::now();
        let mut s = PollSchedule::default();
        assert!(s.due(t0));
        let mut gaps = Vec::new();
        for _ in 0..12 {
            s.still_running(t0, every, max);
            gaps.push(s.next.unwrap() - t0);
        }
        assert_eq!(gaps[0], Duration::from_millis(750));
        assert!(gaps.windows(2).all(|w| w[0] <= w[1]), "{gaps:?}");
        assert_eq!(*gaps.last().unwrap(), max);
        assert!(!s.due(t0) && s.due(t0 + max));
    }
}
