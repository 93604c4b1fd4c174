//! How the client prints purges: one line of text each, or JSON (one object per purge; the
//! final one last), for pipelines.

use clap::ValueEnum;
use serde_json::{Value, json};

use crate::pb;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

fn time(t: &Option<prost_types::Timestamp>) -> Value {
    t.as_ref()
        .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
        .map_or(Value::Null, |t| json!(t.to_rfc3339()))
}

fn state_name(p: &pb::Purge) -> &'static str {
    p.state().as_str_name().trim_start_matches("PURGE_STATE_")
}

pub fn purge_json(p: &pb::Purge) -> Value {
    let progress = p.progress.unwrap_or_default();
    json!({
        "id": p.id,
        "state": state_name(p),
        "provider": p.provider,
        "providers": p.providers,
        "kind": p.kind().as_str_name().trim_start_matches("PURGE_KIND_"),
        "targets": p.targets,
        "labels": p.labels,
        "progress": {
            "total": progress.total, "succeeded": progress.succeeded, "failed": progress.failed,
            "pending": progress.pending, "cancelled": progress.cancelled,
        },
        "failures": p.failures.iter().map(|f| json!({"target": f.target, "provider": f.provider, "reason": f.reason})).collect::<Vec<_>>(),
        "cancelled_targets": p.cancelled_targets.iter().map(|c| json!({"target": c.target, "provider": c.provider})).collect::<Vec<_>>(),
        "error": p.error,
        "create_time": time(&p.create_time),
        "finish_time": time(&p.finish_time),
        "estimated_start_time": time(&p.estimated_start_time),
        "version": p.version,
        "plan": p.plan.as_ref().map(|plan| json!({
            "estimated_start_time": time(&plan.estimated_start_time),
            "estimated_finish_time": time(&plan.estimated_finish_time),
            "providers": plan.providers.iter().map(|pp| json!({
                "provider": pp.provider, "targets": pp.targets, "calls": pp.calls,
                "max_per_call": pp.max_per_call, "calls_ahead": pp.calls_ahead,
                "daily_quota_needed": pp.daily_quota_needed, "daily_quota_left": pp.daily_quota_left,
            })).collect::<Vec<_>>(),
        })),
    })
}

fn text(p: &pb::Purge) -> String {
    let g = p.progress.unwrap_or_default();
    let mut line = format!(
        "{} {} {} succeeded={} failed={} pending={} cancelled={}",
        if p.id.is_empty() {
            "(not recorded)"
        } else {
            &p.id
        },
        state_name(p),
        p.provider,
        g.succeeded,
        g.failed,
        g.pending,
        g.cancelled
    );
    if !p.error.is_empty() {
        line.push_str(&format!(" error={:?}", p.error));
    }
    if p.estimated_start_time.is_some() {
        let at = time(&p.estimated_start_time);
        line.push_str(&format!(
            " estimated_start={}",
            at.as_str().unwrap_or_default()
        ));
    }
    if let Some(plan) = &p.plan {
        for pp in &plan.providers {
            line.push_str(&format!(
                "\n  {}: {} calls of up to {} ({} ahead), quota needed {} left {}",
                pp.provider,
                pp.calls,
                pp.max_per_call,
                pp.calls_ahead,
                pp.daily_quota_needed,
                pp.daily_quota_left
                    .map_or("unknown".into(), |l| l.to_string())
            ));
        }
        line.push_str(&format!(
            "\n  estimated start {} finish {}",
            time(&plan.estimated_start_time),
            time(&plan.estimated_finish_time)
        ));
    }
    for f in &p.failures {
        line.push_str(&format!(
            "\n  failed {} at {}: {}",
            f.target, f.provider, f.reason
        ));
    }
    line
}

impl Output {
    /// A purge, as the command's answer.
    pub fn purge(self, p: &pb::Purge) {
        match self {
            Output::Text => println!("{}", text(p)),
            Output::Json => println!("{}", purge_json(p)),
        }
    }

    /// A change seen while following a purge: on stderr, so stdout holds only the answer.
    pub fn progress(self, p: &pb::Purge) {
        if let Output::Text = self {
            eprintln!("{}", text(p));
        }
    }

    pub fn list(self, page: &pb::ListPurgesResponse) {
        match self {
            Output::Text => {
                for p in &page.purges {
                    println!("{}", text(p));
                }
                if !page.next_page_token.is_empty() {
                    println!("next page: --page-token {}", page.next_page_token);
                }
            }
            Output::Json => println!(
                "{}",
                json!({
                    "purges": page.purges.iter().map(purge_json).collect::<Vec<_>>(),
                    "next_page_token": page.next_page_token,
                })
            ),
        }
    }
}
