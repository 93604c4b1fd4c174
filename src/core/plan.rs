//! Plans for `validate_only` creates: what a purge would cost at each provider and when it
//! would start and finish, estimated from this replica's lanes and the provider budgets.

use std::time::Duration;

use chrono::{DateTime, Utc};

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
    /// Calls already waiting in this replica's lanes for the provider.
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

/// Seconds between calls under the tightest of `rates`; zero without a rate.
fn call_interval(rates: &[crate::limiter::Rate]) -> f64 {
    rates
        .iter()
        .filter(|r| r.count > 0)
        .map(|r| r.per.as_secs_f64() / f64::from(r.count))
        .fold(0.0, f64::max)
}

fn after(now: DateTime<Utc>, secs: f64) -> DateTime<Utc> {
    now + chrono::Duration::from_std(Duration::from_secs_f64(secs.max(0.0))).unwrap_or_default()
}

/// The plan of `spec`: per provider, calls = ceil(targets / cap); the first call goes after
/// the calls ahead (waiting targets / cap) have gone at the tightest submit rate, plus the
/// linger; the last one `calls - 1` intervals later; it finishes one poll interval after that.
pub fn plan(
    spec: &PurgeSpec,
    registry: &Registry,
    settings: &CoreSettings,
    now: DateTime<Utc>,
) -> Plan {
    let targets = spec.effective_targets().len();
    let providers: Vec<ProviderPlan> = spec
        .providers
        .iter()
        .filter_map(|name| registry.get(name))
        .map(|h| {
            let cap = h.max_per_call(spec.kind);
            let calls = targets.div_ceil(cap);
            let calls_ahead = h.waiting().div_ceil(cap);
            let interval = call_interval(&h.caps.submit_rates);
            let quota = h.known_quota(spec.kind);
            let counted = quota.daily.is_some()
                || quota.remaining.is_some()
                || h.caps.daily.iter().any(|d| d.kinds.contains(&spec.kind));
            let start = settings.linger.as_secs_f64() + calls_ahead as f64 * interval;
            let last = start + calls.saturating_sub(1) as f64 * interval;
            ProviderPlan {
                provider: h.name.clone(),
                targets,
                max_per_call: cap,
                calls,
                daily_needed: if counted { targets as u64 } else { 0 },
                daily_left: quota.remaining,
                calls_ahead,
                start: after(now, start),
                finish: after(now, last + settings.poll_interval.as_secs_f64()),
            }
        })
        .collect();
    Plan {
        start: providers.iter().map(|p| p.start).min().unwrap_or(now),
        finish: providers.iter().map(|p| p.finish).max().unwrap_or(now),
        providers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::Rate;

    #[test]
    fn the_tightest_rate_spaces_the_calls() {
        let rates = [
            Rate {
                count: 20,
                per: Duration::from_secs(1),
            },
            Rate {
                count: 150,
                per: Duration::from_secs(300),
            },
        ];
        assert!((call_interval(&rates) - 2.0).abs() < 1e-9);
        assert_eq!(call_interval(&[]), 0.0);
    }
}
