//! Conversions between `purge.v1` messages and domain types.

use chrono::{DateTime, Utc};

use crate::core::{CreateRequest, Seen};
use crate::model::{Action, PurgeKind, PurgeRecord, PurgeState, TaskState};
use crate::pb;

pub fn create_request(m: pb::CreatePurgeRequest, metadata_key: Option<String>) -> CreateRequest {
    CreateRequest {
        kind: kind_from(m.kind).ok_or(m.kind),
        action: action_from(m.action).ok_or(m.action),
        provider: m.provider,
        targets: m.targets,
        hosts: m.hosts,
        headers: m.headers.into_iter().collect(),
        labels: m.labels.into_iter().collect(),
        idempotency_key: m.idempotency_key,
        idempotency_metadata: metadata_key,
    }
}

fn kind_from(raw: i32) -> Option<PurgeKind> {
    Some(match pb::PurgeKind::try_from(raw).ok()? {
        pb::PurgeKind::Unspecified => return None,
        pb::PurgeKind::Url => PurgeKind::Url,
        pb::PurgeKind::Prefix => PurgeKind::Prefix,
        pb::PurgeKind::Host => PurgeKind::Host,
        pb::PurgeKind::All => PurgeKind::All,
        pb::PurgeKind::Tag => PurgeKind::Tag,
        pb::PurgeKind::Wildcard => PurgeKind::Wildcard,
        pb::PurgeKind::Regex => PurgeKind::Regex,
    })
}

fn action_from(raw: i32) -> Option<Action> {
    Some(match pb::PurgeAction::try_from(raw).ok()? {
        pb::PurgeAction::Unspecified | pb::PurgeAction::Invalidate => Action::Invalidate,
        pb::PurgeAction::Delete => Action::Delete,
    })
}

fn kind_to(k: PurgeKind) -> pb::PurgeKind {
    match k {
        PurgeKind::Url => pb::PurgeKind::Url,
        PurgeKind::Prefix => pb::PurgeKind::Prefix,
        PurgeKind::Host => pb::PurgeKind::Host,
        PurgeKind::All => pb::PurgeKind::All,
        PurgeKind::Tag => pb::PurgeKind::Tag,
        PurgeKind::Wildcard => pb::PurgeKind::Wildcard,
        PurgeKind::Regex => pb::PurgeKind::Regex,
    }
}

fn state_to(s: PurgeState) -> pb::PurgeState {
    match s {
        PurgeState::Queued => pb::PurgeState::Queued,
        PurgeState::Running => pb::PurgeState::Running,
        PurgeState::Succeeded => pb::PurgeState::Succeeded,
        PurgeState::Failed => pb::PurgeState::Failed,
        PurgeState::Cancelled => pb::PurgeState::Cancelled,
    }
}

fn task_state_to(s: TaskState) -> pb::TaskState {
    match s {
        TaskState::Running => pb::TaskState::Running,
        TaskState::Succeeded => pb::TaskState::Succeeded,
        TaskState::Failed => pb::TaskState::Failed,
    }
}

pub fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

pub fn purge(r: &PurgeRecord) -> pb::Purge {
    let p = r.progress();
    pb::Purge {
        id: r.id.clone(),
        state: state_to(r.state) as i32,
        provider: r.spec.provider.clone(),
        providers: r.spec.providers.clone(),
        kind: kind_to(r.spec.kind) as i32,
        targets: r.spec.targets.clone(),
        action: match r.spec.action {
            Action::Invalidate => pb::PurgeAction::Invalidate,
            Action::Delete => pb::PurgeAction::Delete,
        } as i32,
        hosts: r.spec.hosts.clone(),
        headers: r.spec.headers.clone().into_iter().collect(),
        idempotency_key: r.spec.idempotency_key.clone().unwrap_or_default(),
        labels: r.spec.labels.clone().into_iter().collect(),
        tasks: r
            .tasks
            .iter()
            .map(|t| pb::Task {
                provider: t.provider.clone(),
                provider_task_id: t.provider_task_id.clone(),
                state: task_state_to(t.state) as i32,
                target_count: t.target_count as i32,
                error: t.error.clone().unwrap_or_default(),
                request_id: t.request_id.clone().unwrap_or_default(),
                submit_time: Some(timestamp(t.submit_time)),
            })
            .collect(),
        failures: r
            .failures()
            .into_iter()
            .map(|f| pb::TargetFailure {
                target: f.target,
                provider: f.provider,
                reason: f.reason,
            })
            .collect(),
        progress: Some(pb::Progress {
            total: p.total as i32,
            succeeded: p.succeeded as i32,
            failed: p.failed as i32,
            pending: p.pending as i32,
            cancelled: p.cancelled as i32,
        }),
        error: r.error.clone().unwrap_or_default(),
        create_time: Some(timestamp(r.create_time)),
        update_time: Some(timestamp(r.update_time)),
        finish_time: r.finish_time.map(timestamp),
        version: r.version,
        cancelled_targets: r
            .cancelled()
            .map(|u| pb::CancelledTarget {
                target: u.target.clone(),
                provider: u.provider.clone(),
            })
            .collect(),
        cancel_time: r.cancel_time.map(timestamp),
        plan: None,
        estimated_start_time: None,
    }
}

/// A recorded purge as answered, with its estimated start while it has unsent targets.
pub fn seen(s: &Seen) -> pb::Purge {
    let mut p = purge(&s.record);
    p.estimated_start_time = s.estimated_start.map(timestamp);
    p
}

/// The answer to a `validate_only` create: the purge as it would be, with its plan.
pub fn planned(r: &PurgeRecord, plan: &crate::core::plan::Plan) -> pb::Purge {
    let mut p = purge(r);
    p.state = pb::PurgeState::Unspecified as i32;
    p.create_time = None;
    p.update_time = None;
    p.version = 0;
    p.plan = Some(pb::PurgePlan {
        providers: plan
            .providers
            .iter()
            .map(|p| pb::ProviderPlan {
                provider: p.provider.clone(),
                targets: p.targets as i32,
                calls: p.calls as i32,
                max_per_call: p.max_per_call as i32,
                daily_quota_needed: p.daily_needed as i64,
                daily_quota_left: p.daily_left.map(|l| l as i64),
                calls_ahead: p.calls_ahead as i32,
                estimated_start_time: Some(timestamp(p.start)),
                estimated_finish_time: Some(timestamp(p.finish)),
            })
            .collect(),
        estimated_start_time: Some(timestamp(plan.start)),
        estimated_finish_time: Some(timestamp(plan.finish)),
    });
    p
}
