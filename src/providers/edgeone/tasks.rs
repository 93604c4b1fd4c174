//! EdgeOne purge tasks: a batch to `CreatePurgeTask`, `DescribePurgeTasks` rows (paged) to
//! per-target progress, the lookup of a submit whose answer was lost, and the content quota.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};

use super::EdgeOne;
use super::api::{self, AdvancedFilter, PAGE, purge_type};
use crate::model::{Action, PurgeKind, WHOLE_ZONE};
use crate::providers::{
    Batch, CallBudget, KindQuota, ProviderError, Submission, TaskProgress, TaskQuery,
};

/// Most pages one poll reads; more rows than this is an error, not a partial answer.
pub(super) const POLL_PAGES: u32 = 10;
/// Most pages one lookup after an ambiguous submit reads; beyond that the batch is resent.
const LOOKUP_PAGES: u32 = 2;
/// Polls look this far before the earliest task's recorded submit time: a task found by a
/// lookup was created up to the dispatcher's retry window before it was recorded.
const POLL_LOOKBACK: chrono::Duration = chrono::Duration::hours(1);

fn method(action: Action) -> &'static str {
    match action {
        Action::Invalidate => "invalidate",
        Action::Delete => "delete",
    }
}

/// A target as EdgeOne may echo it: URLs in their parsed form (lower-case scheme and host),
/// hosts in lower case; tags as they are.
fn normalize(kind: PurgeKind, target: &str) -> String {
    match kind {
        PurgeKind::Url | PurgeKind::Prefix => url::Url::parse(target)
            .map(String::from)
            .unwrap_or_else(|_| target.to_owned()),
        PurgeKind::Host => crate::model::normalize_host(target),
        _ => target.to_owned(),
    }
}

/// A target's outcome from its DescribePurgeTasks rows.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    Running,
    Succeeded,
    /// EdgeOne's reason, shown to the caller.
    Failed(String),
}

/// The outcome of one DescribePurgeTasks row.
fn outcome(row: &api::Task) -> Outcome {
    match row.status.as_str() {
        "processing" => Outcome::Running,
        "success" => Outcome::Succeeded,
        "timeout" => Outcome::Failed("EdgeOne: the purge timed out".into()),
        other => Outcome::Failed(
            format!(
                "EdgeOne: {other}: {} {}",
                row.fail_type.as_deref().unwrap_or(""),
                row.fail_message.as_deref().unwrap_or("")
            )
            .trim_end()
            .to_owned(),
        ),
    }
}

/// Several rows for one target (a target sent twice): running wins, then failure.
fn worst(a: Outcome, b: Outcome) -> Outcome {
    match (a, b) {
        (Outcome::Running, _) | (_, Outcome::Running) => Outcome::Running,
        (Outcome::Failed(e), _) | (_, Outcome::Failed(e)) => Outcome::Failed(e),
        (Outcome::Succeeded, Outcome::Succeeded) => Outcome::Succeeded,
    }
}

/// The progress of one task from its rows. A target without a row is not done: it stays
/// running until the task is older than `timeout`, then fails as unreported.
pub(super) fn progress(
    task: &TaskQuery,
    rows: &[&api::Task],
    now: DateTime<Utc>,
    timeout: Duration,
) -> TaskProgress {
    let mut by_target: HashMap<String, Outcome> = HashMap::new();
    for row in rows {
        // ALL is tracked under one implicit target, whatever EdgeOne names it.
        let target = if task.kind == PurgeKind::All {
            WHOLE_ZONE.to_owned()
        } else {
            normalize(task.kind, row.target.as_deref().unwrap_or(""))
        };
        let o = outcome(row);
        let merged = match by_target.remove(&target) {
            Some(prev) => worst(prev, o),
            None => o,
        };
        by_target.insert(target, merged);
    }
    let mut running = false;
    let mut failed = Vec::new();
    let mut missing = Vec::new();
    for target in &task.targets {
        match by_target.get(&normalize(task.kind, target)) {
            None => missing.push(target),
            Some(Outcome::Running) => running = true,
            Some(Outcome::Succeeded) => {}
            Some(Outcome::Failed(reason)) => failed.push((target.clone(), reason.clone())),
        }
    }
    let expired = chrono::Duration::from_std(timeout)
        .map(|t| now - task.submitted_at > t)
        .unwrap_or(false);
    if running || (!missing.is_empty() && !expired) {
        return TaskProgress::Running;
    }
    let reason = format!(
        "no status reported by EdgeOne within {timeout:?} for job {}",
        task.task_id
    );
    failed.extend(missing.into_iter().map(|t| (t.clone(), reason.clone())));
    TaskProgress::Finished { failed }
}

/// The job to credit for `batch` among lookup rows: one job of the batch's type and method
/// whose rows cover every target of the batch; the newest if several do.
pub(super) fn covering_job(batch: &Batch, kind: &str, rows: &[api::Task]) -> Option<String> {
    let method = method(batch.action);
    let mut jobs: HashMap<&str, (Vec<String>, Option<DateTime<Utc>>)> = HashMap::new();
    for row in rows {
        if row.kind.as_deref() != Some(kind) || row.method.as_deref() != Some(method) {
            continue;
        }
        let entry = jobs.entry(row.job_id.as_str()).or_default();
        entry
            .0
            .push(normalize(batch.kind, row.target.as_deref().unwrap_or("")));
        let created = row
            .create_time
            .as_deref()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc));
        entry.1 = entry.1.max(created);
    }
    jobs.into_iter()
        .filter(|(_, (targets, _))| {
            batch.kind == PurgeKind::All
                || batch
                    .targets
                    .iter()
                    .all(|t| targets.contains(&normalize(batch.kind, t)))
        })
        .max_by(|a, b| (a.1.1, a.0).cmp(&(b.1.1, b.0)))
        .map(|(job, _)| job.to_owned())
}

impl EdgeOne {
    pub(super) async fn create(&self, batch: &Batch) -> Result<Submission, ProviderError> {
        let kind = purge_type(batch.kind).ok_or_else(|| ProviderError::Rejected {
            code: "Unsupported".into(),
            message: format!("EdgeOne cannot purge {}", batch.kind),
        })?;
        let targets: &[String] = if batch.kind == PurgeKind::All {
            &[]
        } else {
            &batch.targets
        };
        let request = api::CreatePurgeTask {
            zone_id: &self.inner.zone_id,
            kind,
            method: method(batch.action),
            targets,
            cache_tag: (batch.kind == PurgeKind::Tag).then_some(api::CacheTag {
                domains: &batch.hosts,
            }),
        };
        let (answer, request_id): (api::CreatePurgeTaskResponse, _) =
            self.inner.client.call("CreatePurgeTask", &request).await?;
        let task_id =
            answer
                .job_id
                .filter(|j| !j.is_empty())
                .ok_or_else(|| ProviderError::Protocol {
                    message: "CreatePurgeTask answered without a JobId".into(),
                })?;
        let rejected = answer
            .failed_list
            .unwrap_or_default()
            .into_iter()
            .flat_map(|f| {
                let reason = format!("EdgeOne refused: {}", f.reason.unwrap_or_default());
                f.targets
                    .unwrap_or_default()
                    .into_iter()
                    .map(move |t| (t, reason.clone()))
            })
            .collect();
        Ok(Submission {
            task_id,
            request_id,
            rejected,
        })
    }

    /// One DescribePurgeTasks call covers every task given: a job-id filter over the window
    /// from the earliest submit, paged until `TotalCount` rows are read.
    pub(super) async fn progress_of(
        &self,
        tasks: &[TaskQuery],
        budget: &dyn CallBudget,
    ) -> Result<Vec<(String, TaskProgress)>, ProviderError> {
        let Some(since) = tasks.iter().map(|t| t.submitted_at).min() else {
            return Ok(Vec::new());
        };
        let filter = AdvancedFilter {
            name: "job-id",
            values: tasks.iter().map(|t| t.task_id.clone()).collect(),
            fuzzy: false,
        };
        let rows = self
            .describe(since - POLL_LOOKBACK, vec![filter], POLL_PAGES, budget)
            .await?
            .map_err(|total| ProviderError::Protocol {
                message: format!(
                    "DescribePurgeTasks: {total} rows for {} jobs need more than {POLL_PAGES} pages of {PAGE}",
                    tasks.len()
                ),
            })?;
        let mut by_job: HashMap<&str, Vec<&api::Task>> = HashMap::new();
        for row in &rows {
            by_job.entry(row.job_id.as_str()).or_default().push(row);
        }
        let now = Utc::now();
        Ok(tasks
            .iter()
            .map(|task| {
                let rows = by_job
                    .get(task.task_id.as_str())
                    .map(Vec::as_slice)
                    .unwrap_or(&[]);
                let p = progress(task, rows, now, self.inner.task_timeout);
                (task.task_id.clone(), p)
            })
            .collect())
    }

    /// After an ambiguous submit: the one job of the batch's type and method, created since
    /// `since`, that covers all of the batch's targets. If no single job covers them all, or
    /// EdgeOne refuses the lookup, the answer is `None` and the whole batch is sent again: a
    /// purge repeated is harmless, a target credited to a job that does not carry it would
    /// never be purged. Throttling and transport errors are returned, to retry the lookup.
    pub(super) async fn lookup(
        &self,
        batch: &Batch,
        since: DateTime<Utc>,
        budget: &dyn CallBudget,
    ) -> Result<Option<Submission>, ProviderError> {
        let Some(kind) = purge_type(batch.kind) else {
            return Ok(None);
        };
        let mut filters = vec![AdvancedFilter {
            name: "type",
            values: vec![kind.to_owned()],
            fuzzy: false,
        }];
        if batch.kind != PurgeKind::All {
            filters.push(AdvancedFilter {
                name: "target",
                values: batch.targets.clone(),
                fuzzy: false,
            });
        }
        let rows = match self.describe(since, filters, LOOKUP_PAGES, budget).await {
            Ok(Ok(rows)) => rows,
            // A lookup EdgeOne refuses (e.g. a filter it does not take) cannot tell; resend.
            Err(e @ (ProviderError::Rejected { .. } | ProviderError::Protocol { .. })) => {
                tracing::warn!(error = %e, "cannot look a lost EdgeOne submit up; sending it again");
                return Ok(None);
            }
            Err(e) => return Err(e),
            Ok(Err(total)) => {
                tracing::warn!(
                    rows = total,
                    "too many EdgeOne tasks to look a lost submit up; sending it again"
                );
                return Ok(None);
            }
        };
        let job = covering_job(batch, kind, &rows);
        if job.is_none() && !rows.is_empty() {
            tracing::info!(
                rows = rows.len(),
                "no EdgeOne job covers the whole batch of a lost submit; sending it again"
            );
        }
        Ok(job.map(|task_id| Submission {
            task_id,
            request_id: None,
            rejected: Vec::new(),
        }))
    }

    pub(super) async fn content_quota(
        &self,
    ) -> Result<BTreeMap<PurgeKind, KindQuota>, ProviderError> {
        let request = api::DescribeContentQuota {
            zone_id: &self.inner.zone_id,
        };
        let (answer, _): (api::DescribeContentQuotaResponse, _) = self
            .inner
            .client
            .call("DescribeContentQuota", &request)
            .await?;
        Ok(answer
            .purge_quota
            .unwrap_or_default()
            .into_iter()
            .filter_map(|q| {
                let kind = api::kind_of(&q.kind)?;
                Some((
                    kind,
                    KindQuota {
                        per_call: q.batch.map(|b| b as usize),
                        daily: q.daily,
                        remaining: q.daily_available,
                    },
                ))
            })
            .collect())
    }

    /// Every DescribePurgeTasks row in the window from `since` (our clock), matching
    /// `filters`, read page by page (`Offset` = rows read so far) until `TotalCount` rows are
    /// in. `Ok(Err(total))` when that takes more than `max_pages` pages.
    async fn describe(
        &self,
        since: DateTime<Utc>,
        filters: Vec<AdvancedFilter>,
        max_pages: u32,
        budget: &dyn CallBudget,
    ) -> Result<Result<Vec<api::Task>, u64>, ProviderError> {
        // EdgeOne's times are by its clock.
        let skew = self.inner.client.skew();
        let (now, since) = (Utc::now() + skew, since + skew);
        // The API accepts a window of at most 7 days.
        let start = since.max(now - chrono::Duration::days(7) + chrono::Duration::minutes(5));
        let end = now + chrono::Duration::minutes(1);
        let mut rows: Vec<api::Task> = Vec::new();
        let mut total = 0;
        for page in 0..max_pages {
            if page > 0 {
                budget.acquire().await?;
            }
            let request = api::DescribePurgeTasks {
                zone_id: &self.inner.zone_id,
                start_time: start.to_rfc3339_opts(SecondsFormat::Secs, true),
                end_time: end.to_rfc3339_opts(SecondsFormat::Secs, true),
                offset: rows.len() as u32,
                limit: PAGE,
                filters: filters
                    .iter()
                    .map(|f| AdvancedFilter {
                        name: f.name,
                        values: f.values.clone(),
                        fuzzy: f.fuzzy,
                    })
                    .collect(),
            };
            let (answer, _): (api::DescribePurgeTasksResponse, _) = self
                .inner
                .client
                .call("DescribePurgeTasks", &request)
                .await?;
            let got = answer.tasks.unwrap_or_default();
            total = answer.total_count.unwrap_or(0);
            let empty = got.is_empty();
            rows.extend(got);
            if rows.len() as u64 >= total {
                return Ok(Ok(rows));
            }
            if empty {
                return Err(ProviderError::Protocol {
                    message: format!(
                        "DescribePurgeTasks: TotalCount {total} but no rows after {}",
                        rows.len()
                    ),
                });
            }
        }
        Ok(Err(total))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(job: &str, target: &str, status: &str, method: &str) -> api::Task {
        api::Task {
            job_id: job.into(),
            target: Some(target.into()),
            kind: Some("purge_url".into()),
            method: Some(method.into()),
            status: status.into(),
            create_time: Some("2024-05-01T10:00:00Z".into()),
            fail_type: None,
            fail_message: None,
        }
    }

    fn query(targets: &[&str], age_secs: i64) -> (TaskQuery, DateTime<Utc>) {
        let now = Utc::now();
        let q = TaskQuery {
            task_id: "job-1".into(),
            kind: PurgeKind::Url,
            targets: targets.iter().map(|t| t.to_string()).collect(),
            submitted_at: now - chrono::Duration::seconds(age_secs),
        };
        (q, now)
    }

    #[test]
    fn a_target_without_a_row_runs_until_the_timeout_then_fails() {
        let rows = [row("job-1", "https://a.com/x", "success", "invalidate")];
        let refs: Vec<&api::Task> = rows.iter().collect();
        let timeout = Duration::from_secs(60);
        let (q, now) = query(&["https://a.com/x", "https://a.com/y"], 10);
        assert_eq!(progress(&q, &refs, now, timeout), TaskProgress::Running);
        let (q, now) = query(&["https://a.com/x", "https://a.com/y"], 61);
        let TaskProgress::Finished { failed } = progress(&q, &refs, now, timeout) else {
            panic!("finished");
        };
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].0, "https://a.com/y");
        assert!(
            failed[0]
                .1
                .contains("no status reported by EdgeOne within 60s"),
            "{failed:?}"
        );
        // No rows at all: the same.
        let (q, now) = query(&["https://a.com/x"], 61);
        assert!(matches!(
            progress(&q, &[], now, timeout),
            TaskProgress::Finished { failed } if failed.len() == 1
        ));
    }

    #[test]
    fn targets_match_in_their_normal_form() {
        let rows = [row("job-1", "https://WWW.A.com/x", "success", "invalidate")];
        let refs: Vec<&api::Task> = rows.iter().collect();
        let (q, now) = query(&["https://www.a.com/x"], 10);
        assert_eq!(
            progress(&q, &refs, now, Duration::from_secs(60)),
            TaskProgress::Finished { failed: vec![] }
        );
    }

    #[test]
    fn only_a_job_of_the_same_method_covering_every_target_is_credited() {
        let batch = Batch {
            id: "test-batch".into(),
            kind: PurgeKind::Url,
            action: Action::Invalidate,
            targets: vec!["https://a.com/1".into(), "https://a.com/2".into()],
            hosts: vec![],
            headers: Default::default(),
        };
        let rows = vec![
            row("job-delete", "https://a.com/1", "success", "delete"),
            row("job-delete", "https://a.com/2", "success", "delete"),
            row("job-partial", "https://a.com/1", "success", "invalidate"),
        ];
        assert_eq!(covering_job(&batch, "purge_url", &rows), None);
        let mut rows = rows;
        rows.push(row(
            "job-ours",
            "https://a.com/2",
            "processing",
            "invalidate",
        ));
        rows.push(row(
            "job-ours",
            "https://a.com/1",
            "processing",
            "invalidate",
        ));
        assert_eq!(
            covering_job(&batch, "purge_url", &rows).as_deref(),
            Some("job-ours")
        );
        assert_eq!(covering_job(&batch, "purge_prefix", &rows), None);
    }
}
