//! A configured provider as the dispatcher and the API use it: its client, effective
//! capabilities, and what it learned at run time (reported quotas, exhausted kinds, per-call
//! caps learned from refusals).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{Capabilities, KindQuota, Provider};
use crate::model::PurgeKind;

/// A configured provider: the client and its effective capabilities.
#[derive(Clone)]
pub struct ProviderHandle {
    pub name: String,
    pub client: Arc<dyn Provider>,
    pub caps: Capabilities,
    /// The account its budgets are kept under: its own name unless configured to share.
    pub budget: String,
    quota: Arc<Mutex<BTreeMap<PurgeKind, KindQuota>>>,
    /// Kinds whose daily quota ran out, until the provider's next day.
    exhausted: Arc<Mutex<BTreeMap<PurgeKind, DateTime<Utc>>>>,
    /// When `quota` was reported: a "none left" stops counting at the provider's next day.
    quota_at: Arc<Mutex<Option<DateTime<Utc>>>>,
    /// Per-call caps learned from "batch too large" refusals: this replica's copy of the ones
    /// every replica shares through the limiter.
    learned: Arc<Mutex<BTreeMap<PurgeKind, usize>>>,
    /// What this replica's dispatcher holds for the provider, for estimates.
    local: Arc<LocalBacklog>,
}

/// What one replica's dispatcher holds for a provider, noted by the dispatcher as it changes
/// and read by start estimates: plain counters, no lock.
#[derive(Debug, Default)]
pub struct LocalBacklog {
    /// Targets waiting in the lanes.
    waiting: AtomicUsize,
    /// Purges held (claimed from the queue, not yet acknowledged): in the lanes or in flight.
    held: AtomicUsize,
    /// Unsent targets per purge the intake took from the queue, a moving average in
    /// thousandths; 0 until the first.
    per_purge_milli: AtomicUsize,
}

impl LocalBacklog {
    pub fn note_waiting(&self, targets: usize) {
        self.waiting.store(targets, Ordering::Relaxed);
    }

    /// Targets waiting in this replica's lanes, as last noted.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    pub fn note_held(&self, purges: usize) {
        self.held.store(purges, Ordering::Relaxed);
    }

    /// Purges this replica holds for the provider, as last noted.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// The intake took a purge with `targets` unsent targets: the average moves a fifth of
    /// the way toward it.
    pub fn note_adopted(&self, targets: usize) {
        if targets == 0 {
            return;
        }
        let sample = targets.saturating_mul(1000);
        let _ = self
            .per_purge_milli
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(if old == 0 {
                    sample
                } else {
                    old - old / 5 + sample / 5
                })
            });
    }

    /// Unsent targets per purge, as the intake has recently seen them; `None` before the
    /// first.
    pub fn per_purge(&self) -> Option<f64> {
        match self.per_purge_milli.load(Ordering::Relaxed) {
            0 => None,
            m => Some(m as f64 / 1000.0),
        }
    }
}

impl ProviderHandle {
    pub fn new(name: String, client: Arc<dyn Provider>, caps: Capabilities) -> ProviderHandle {
        ProviderHandle {
            budget: name.clone(),
            name,
            client,
            caps,
            quota: Arc::default(),
            exhausted: Arc::default(),
            quota_at: Arc::default(),
            learned: Arc::default(),
            local: Arc::default(),
        }
    }

    /// What this replica's dispatcher holds for this provider (shared with it).
    pub fn local(&self) -> &Arc<LocalBacklog> {
        &self.local
    }

    /// The per-call cap for `kind`, lowered by what the provider last reported and by what a
    /// "batch too large" refusal taught.
    pub fn max_per_call(&self, kind: PurgeKind) -> usize {
        let configured = self.caps.max_per_call.get(&kind).copied().unwrap_or(1);
        let reported = self
            .quota
            .lock()
            .expect("quota lock")
            .get(&kind)
            .and_then(|q| q.per_call)
            .unwrap_or(usize::MAX);
        let learned = self.learned_cap(kind).unwrap_or(usize::MAX);
        configured.min(reported).min(learned).max(1)
    }

    /// The per-call cap for `kind` learned from a refusal, if any.
    pub fn learned_cap(&self, kind: PurgeKind) -> Option<usize> {
        self.learned.lock().expect("quota lock").get(&kind).copied()
    }

    /// Lowers this replica's learned cap for `kind` to `cap` (never raises it).
    pub fn learn_cap(&self, kind: PurgeKind, cap: usize) {
        let mut learned = self.learned.lock().expect("quota lock");
        let entry = learned.entry(kind).or_insert(cap);
        *entry = (*entry).min(cap).max(1);
    }

    /// Replaces this replica's learned caps with the shared ones.
    pub fn set_learned_caps(&self, caps: BTreeMap<PurgeKind, usize>) {
        *self.learned.lock().expect("quota lock") = caps;
    }

    /// The field a learned cap of `kind` is shared under, in its budget's (account's) caps.
    pub fn cap_lane(&self, kind: PurgeKind) -> String {
        format!("{}:{}", self.name, kind.as_str())
    }

    /// What the provider last reported for `kind`, with `remaining: Some(0)` while the day's
    /// quota is known to be gone.
    pub fn known_quota(&self, kind: PurgeKind) -> KindQuota {
        let mut quota = self
            .quota
            .lock()
            .expect("quota lock")
            .get(&kind)
            .copied()
            .unwrap_or_default();
        let reported_at = *self.quota_at.lock().expect("quota lock");
        if quota.remaining == Some(0)
            && reported_at.is_some_and(|at| Utc::now() >= next_day_start(at, self.day_offset(kind)))
        {
            // Reported yesterday (by the provider's day): today's count is not known yet.
            quota.remaining = None;
        }
        let exhausted = self.exhausted.lock().expect("quota lock");
        if exhausted
            .get(&kind)
            .is_some_and(|until| Utc::now() < *until)
        {
            quota.remaining = Some(0);
        }
        quota
    }

    /// How long until the day's quota for `kind`, known to be gone, is back.
    pub fn exhausted_for(&self, kind: PurgeKind) -> Option<Duration> {
        let until = *self.exhausted.lock().expect("quota lock").get(&kind)?;
        (until - Utc::now()).to_std().ok()
    }

    /// Takes the provider's report as the truth, including for kinds marked exhausted.
    pub fn set_quota(&self, quota: BTreeMap<PurgeKind, KindQuota>) {
        let mut exhausted = self.exhausted.lock().expect("quota lock");
        exhausted.retain(|kind, _| quota.get(kind).is_none_or(|q| q.remaining.is_none()));
        *self.quota.lock().expect("quota lock") = quota;
        *self.quota_at.lock().expect("quota lock") = Some(Utc::now());
    }

    /// The UTC offset of the provider's day for `kind`: its documented daily quota's, else UTC.
    fn day_offset(&self, kind: PurgeKind) -> i32 {
        self.caps
            .daily
            .iter()
            .find(|q| q.kinds.contains(&kind))
            .map_or(0, |q| q.utc_offset_secs)
    }

    /// Records that the day's quota for `kind` is gone, until the provider's next day starts
    /// (its documented day for that kind, else UTC's).
    pub fn mark_exhausted(&self, kind: PurgeKind) {
        let until = next_day_start(Utc::now(), self.day_offset(kind));
        self.exhausted
            .lock()
            .expect("quota lock")
            .insert(kind, until);
    }
}

/// The first instant of the day after `now`'s, days starting at midnight UTC+`offset_secs`.
pub fn next_day_start(now: DateTime<Utc>, offset_secs: i32) -> DateTime<Utc> {
    let offset = chrono::Duration::seconds(offset_secs.into());
    let local = now + offset;
    let midnight = local
        .date_naive()
        .succ_opt()
        .expect("a next day")
        .and_hms_opt(0, 0, 0)
        .expect("midnight")
        .and_utc();
    midnight - offset
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::sandbox;

    #[test]
    fn the_next_day_starts_at_the_providers_midnight() {
        let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        // 15:30 UTC is 23:30 in UTC+8: the day ends half an hour later.
        assert_eq!(
            next_day_start(at("2026-11-23T15:30:00Z"), 8 * 3600),
            at("2026-11-23T16:00:00Z")
        );
        // 16:30 UTC is already the next day in UTC+8.
        assert_eq!(
            next_day_start(at("2026-11-23T16:30:00Z"), 8 * 3600),
            at("2026-11-24T16:00:00Z")
        );
        assert_eq!(
            next_day_start(at("2026-11-23T23:59:59Z"), 0),
            at("2026-11-24T00:00:00Z")
        );
    }

    #[test]
    fn an_exhausted_kind_stays_exhausted_until_a_quota_report_says_otherwise() {
        let sandbox = sandbox::Sandbox::new(Default::default()).unwrap();
        let caps = sandbox.capabilities();
        let handle = ProviderHandle::new("s".into(), Arc::new(sandbox), caps);
        assert_eq!(handle.known_quota(PurgeKind::Url).remaining, None);
        handle.mark_exhausted(PurgeKind::Url);
        assert_eq!(handle.known_quota(PurgeKind::Url).remaining, Some(0));
        assert!(
            handle
                .exhausted_for(PurgeKind::Url)
                .is_some_and(|d| d <= Duration::from_secs(86_400))
        );
        assert_eq!(handle.known_quota(PurgeKind::Prefix).remaining, None);
        let report = KindQuota {
            remaining: Some(100),
            ..Default::default()
        };
        handle.set_quota(BTreeMap::from([(PurgeKind::Url, report)]));
        assert_eq!(handle.known_quota(PurgeKind::Url).remaining, Some(100));
        // "None left", reported on an earlier day of the provider's, no longer holds.
        let none_left = KindQuota {
            remaining: Some(0),
            ..Default::default()
        };
        handle.set_quota(BTreeMap::from([(PurgeKind::Url, none_left)]));
        assert_eq!(handle.known_quota(PurgeKind::Url).remaining, Some(0));
        *handle.quota_at.lock().unwrap() = Some(Utc::now() - chrono::Duration::days(2));
        assert_eq!(handle.known_quota(PurgeKind::Url).remaining, None);
    }
}
