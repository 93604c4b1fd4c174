//! Polling for one provider: asks about followed tasks when they are due, under the status
//! budget, and records how each ended (or that it ran out of time).

use foldhash::{HashMap, HashMapExt};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::budget::{Budget, Grant, Op};
use super::inflight::{InFlight, Tasks};
use super::records::Records;
use crate::providers::{ProviderHandle, TaskProgress, TaskQuery};

/// How a provider task ended.
enum Outcome {
    /// Done; these targets failed, with the reason.
    Finished(HashMap<String, String>),
    /// Every target failed for this reason.
    AllFailed(String),
}

/// One provider's poll loop and what it needs.
pub(super) struct Poller {
    pub(super) provider: ProviderHandle,
    pub(super) budget: Budget,
    pub(super) tasks: Tasks,
    pub(super) records: Records,
    /// How often due tasks are looked for.
    pub(super) every: Duration,
    /// A task still running after this long fails its targets.
    pub(super) task_timeout: Duration,
    pub(super) stop: CancellationToken,
}

impl Poller {
    fn name(&self) -> &str {
        &self.provider.name
    }

    /// Polls followed tasks under the status budget until stopped.
    pub(super) async fn run(self) {
        let chunk = self.provider.caps.poll_batch.max(1);
        while self
            .stop
            .run_until_cancelled(tokio::time::sleep(self.every))
            .await
            .is_some()
        {
            let tasks = self.tasks.due(Instant::now());
            for group in tasks.chunks(chunk) {
                match self.budget.status(Op::Poll).await {
                    Grant::Granted(_) => {}
                    Grant::Stopped => return,
                    Grant::Exhausted => break,
                }
                self.poll(group).await;
            }
        }
    }

    /// Asks about `group` in one poll (its first call's budget granted) and records the tasks
    /// that ended.
    async fn poll(&self, group: &[InFlight]) {
        let queries: Vec<TaskQuery> = group.iter().map(|t| t.query.clone()).collect();
        let span = tracing::info_span!(
            "provider_poll",
            provider = self.name(),
            tasks = queries.len()
        );
        let budget = self.budget.status_calls(Op::Poll);
        let answer =
            tracing::Instrument::instrument(self.provider.client.poll(&queries, &budget), span)
                .await;
        let progress: HashMap<String, TaskProgress> = match answer {
            Ok(p) => p.into_iter().collect(),
            Err(e) => {
                tracing::warn!(provider = self.name(), error = %e, retryable = e.is_retryable(), "status poll failed");
                HashMap::new()
            }
        };
        for task in group {
            let outcome = match progress.get(&task.query.task_id) {
                Some(TaskProgress::Finished { failed }) => {
                    Some(Outcome::Finished(failed.iter().cloned().collect()))
                }
                Some(TaskProgress::Failed { reason }) => Some(Outcome::AllFailed(reason.clone())),
                Some(TaskProgress::Running) | None => self.timed_out(task).map(Outcome::AllFailed),
            };
            match outcome {
                Some(outcome) => self.finish(&task.query, outcome).await,
                None => self
                    .tasks
                    .still_running(&task.query.task_id, Instant::now()),
            }
        }
    }

    /// The failure reason of a task running for longer than the task timeout.
    fn timed_out(&self, task: &InFlight) -> Option<String> {
        let age = Utc::now() - task.query.submitted_at;
        let limit = chrono::Duration::from_std(self.task_timeout).ok()?;
        (age > limit).then(|| {
            format!(
                "provider task {} did not finish within {:?}",
                task.query.task_id, self.task_timeout
            )
        })
    }

    /// Records a finished task on every purge it carried the polled targets for. Targets
    /// merged into the task since the poll began were not asked about: they stay followed.
    async fn finish(&self, polled: &TaskQuery, outcome: Outcome) {
        let Some(done) = self.tasks.take_polled(&polled.task_id, &polled.targets) else {
            return;
        };
        let failed = match outcome {
            Outcome::Finished(failed) => failed,
            Outcome::AllFailed(reason) => done
                .query
                .targets
                .iter()
                .map(|t| (t.clone(), reason.clone()))
                .collect(),
        };
        self.records.task_finished(&done, &failed).await;
    }
}
