//! Plans for `validate_only` creates: what a purge would cost at each provider and when it
//! would start and finish, estimated from the providers' backlogs and budgets.

use chrono::{DateTime, Utc};

use super::estimate::{Backlogs, after, call_interval, seconds_to_start};
use super::settings::CoreSettings;
use crate::model::PurgeSpec;
use crate::providers::Registry;

/// One provider's share of a planned purge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderPlan {
    pub provider: String,
    pub targets: usize,
    pub max_per_call: usize,
    /// ceil(targets / max_per_call).
    pub calls: usize,
    /// Daily quota units the purge would use, when the provider counts them.
    pub daily_needed: u64,
    /// What the provider last reported left today.
    pub daily_left: Option<u64>,
    /// Calls already waiting for the provider, on every replica.
    pub calls_ahead: usize,
    pub start: DateTime<Utc>,
    pub finish: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub providers: Vec<ProviderPlan>,
    pub start: DateTime<Utc>,
    pub finish: DateTime<Utc>,
}

/// The plan of `spec`: per provider, calls = ceil(targets / cap); the first call goes after
/// the calls ahead (the provider's waiting targets on every replica / cap) have gone at the
/// tightest submit rate, plus the linger; the last one `calls - 1` intervals later; it
/// finishes one poll interval after that.
pub async fn plan(
    spec: &PurgeSpec,
    registry: &Registry,
    backlogs: &Backlogs,
    settings: &CoreSettings,
    now: DateTime<Utc>,
) -> Plan {
    let targets = spec.effective_targets().len();
    let mut providers = Vec::new();
    for h in spec.providers.iter().filter_map(|name| registry.get(name)) {
        let cap = h.max_per_call(spec.kind);
        let calls = targets.div_ceil(cap);
        let calls_ahead = backlogs.waiting(h, targets).await.div_ceil(cap);
        let interval = call_interval(&h.caps.submit_rates, settings.rate_margin);
        let quota = h.known_quota(spec.kind);
        let counted = quota.daily.is_some()
            || quota.remaining.is_some()
            || h.caps.daily.iter().any(|d| d.kinds.contains(&spec.kind));
        let start = seconds_to_start(h, settings, calls_ahead);
        let last = start + calls.saturating_sub(1) as f64 * interval;
        providers.push(ProviderPlan {
            provider: h.name.clone(),
            targets,
            max_per_call: cap,
            calls,
            daily_needed: if counted { targets as u64 } else { 0 },
            daily_left: quota.remaining,
            calls_ahead,
            start: after(now, start),
            finish: after(now, last + settings.poll_interval.as_secs_f64()),
        });
    }
    Plan {
        start: providers.iter().map(|p| p.start).min().unwrap_or(now),
        finish: providers.iter().map(|p| p.finish).max().unwrap_or(now),
        providers,
    }
}
