//! A provider's daily quotas and per-call caps: charging and giving back the documented daily
//! target quotas, re-reading the quota the provider reports, and the per-call caps learned
//! from "batch too large" refusals, shared by every replica.

use std::collections::BTreeMap;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

use super::{Budget, Grant, Op};
use crate::limiter::{Charge, Decision, Limit};
use crate::model::PurgeKind;
use crate::providers::{KindQuota, ProviderError};

impl Budget {
    /// A batch of `sent` targets of `kind` was refused as too large: later batches of that
    /// kind, on every replica, carry at most half of it, until a quota read says otherwise.
    pub(in crate::dispatch) async fn batch_too_large(&self, kind: PurgeKind, sent: usize) {
        let provider = &self.0.provider;
        let cap = sent.div_ceil(2).max(1);
        if provider.max_per_call(kind) <= cap {
            return;
        }
        provider.learn_cap(kind, cap);
        match self
            .0
            .limiter
            .lower_cap(&provider.budget, &provider.cap_lane(kind), cap)
            .await
        {
            Ok(true) => tracing::warn!(
                provider = self.name(),
                %kind,
                refused = sent,
                cap,
                "batch refused as too large; later batches of this kind carry at most the cap"
            ),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(provider = self.name(), error = %e, "cannot share a learned batch cap")
            }
        }
    }

    /// Takes the caps every replica learned into this replica's copy.
    async fn load_learned_caps(&self) {
        let provider = &self.0.provider;
        let shared = match self.0.limiter.learned_caps(&provider.budget).await {
            Ok(shared) => shared,
            Err(e) => {
                tracing::debug!(provider = self.name(), error = %e, "cannot read learned batch caps");
                return;
            }
        };
        let caps = provider
            .caps
            .kinds()
            .into_iter()
            .filter_map(|kind| Some((kind, *shared.get(&provider.cap_lane(kind))?)))
            .collect();
        provider.set_learned_caps(caps);
    }

    /// Re-reads the shared learned caps every `every` (one small read per provider, never one
    /// per batch), until stopped.
    pub(in crate::dispatch) async fn refresh_learned_caps(self, every: Duration) {
        loop {
            self.load_learned_caps().await;
            if !self.pause(every).await {
                return;
            }
        }
    }

    /// A quota read reported per-call caps: a learned cap below a reported one is forgotten.
    async fn quota_read(&self, quota: &BTreeMap<PurgeKind, KindQuota>) {
        let provider = &self.0.provider;
        for (kind, q) in quota {
            let (Some(reported), Some(learned)) = (q.per_call, provider.learned_cap(*kind)) else {
                continue;
            };
            if reported <= learned {
                continue;
            }
            tracing::info!(provider = self.name(), %kind, learned, reported, "the provider reports a larger batch cap; forgetting the learned one");
            if let Err(e) = self
                .0
                .limiter
                .forget_cap(&provider.budget, &provider.cap_lane(*kind))
                .await
            {
                tracing::warn!(provider = self.name(), error = %e, "cannot forget a learned batch cap");
                continue;
            }
        }
        self.load_learned_caps().await;
    }

    /// The documented daily target quotas a batch of `n` targets of `kind` is charged to.
    pub(super) fn daily_charges(&self, kind: PurgeKind, n: usize) -> Vec<Charge> {
        self.0
            .provider
            .caps
            .daily
            .iter()
            .enumerate()
            .filter(|(_, q)| q.kinds.contains(&kind))
            .map(|(i, q)| Charge {
                key: format!("{}:daily:{i}", self.0.provider.budget),
                limit: Limit::Daily {
                    max: q.max,
                    utc_offset_secs: q.utc_offset_secs,
                },
                cost: n as u32,
            })
            .collect()
    }

    /// Charges as many of `n` targets of `kind` as the documented daily quotas still hold
    /// (all of them when the limiter cannot be asked) and says how many.
    pub(in crate::dispatch) async fn charge_daily(&self, kind: PurgeKind, n: usize) -> usize {
        let mut charges = self.daily_charges(kind, n);
        if charges.is_empty() {
            return n;
        }
        // Greedy halving: at most about log2(n)^2 limiter calls, never a provider call.
        let (mut fitted, mut step) = (0, n);
        while fitted < n && step > 0 {
            let cost = step.min(n - fitted);
            for c in &mut charges {
                c.cost = cost as u32;
            }
            match self.0.limiter.acquire(&charges).await {
                Ok(Decision::Granted) => fitted += cost,
                Ok(Decision::Wait(_) | Decision::Exhausted(_)) => step /= 2,
                Err(e) => {
                    tracing::warn!(provider = self.name(), error = %e, "cannot check the daily quota; sending anyway");
                    return n;
                }
            }
        }
        self.read_rules(&charges).await;
        fitted
    }

    /// Gives back the daily quota `n` targets of `kind` were charged when the provider cannot
    /// have counted them: no attempt may have gone through unanswered, and the last answer was
    /// a refusal. A server error or an unreadable acceptance may have been counted: kept.
    pub(in crate::dispatch) async fn refund_daily(
        &self,
        kind: PurgeKind,
        n: usize,
        e: &ProviderError,
        maybe_sent: bool,
    ) {
        let refused = matches!(
            e,
            ProviderError::Rejected { .. }
                | ProviderError::Auth { .. }
                | ProviderError::BatchTooLarge { .. }
                | ProviderError::QuotaExhausted { .. }
                | ProviderError::Busy { .. }
                | ProviderError::Throttled { .. }
        );
        if maybe_sent || !refused {
            return;
        }
        let charges = self.daily_charges(kind, n);
        if charges.is_empty() {
            return;
        }
        if let Err(err) = self.0.limiter.refund(&charges).await {
            tracing::warn!(provider = self.name(), error = %err, "cannot give back daily quota");
        }
    }

    /// Reads the provider's quota every `every`, so batches and fail-fast checks follow it. A
    /// read that fails (at start, say, before the provider can be reached) is tried again with
    /// backoff until it succeeds, not only at the next `every`.
    pub(in crate::dispatch) async fn refresh_quota(self, every: Duration) {
        loop {
            if !self.read_quota(every).await || !self.pause(every).await {
                return;
            }
        }
    }

    /// One successful quota read, however many tries it takes; false when stopped.
    async fn read_quota(&self, every: Duration) -> bool {
        let mut backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(500))
            .with_max_delay(Duration::from_secs(30).min(every))
            .with_jitter()
            .without_max_times()
            .build();
        loop {
            // A quota read is a call to the provider's API like a status poll, paid alike.
            match self.status(Op::Quota).await {
                Grant::Granted(_) => {}
                Grant::Stopped => return false,
                Grant::Exhausted => return true,
            }
            match self.0.provider.client.quota().await {
                Ok(q) => {
                    if !q.is_empty() {
                        self.quota_read(&q).await;
                        self.0.provider.set_quota(q);
                    }
                    return true;
                }
                Err(e) => {
                    let wait = backoff.next().unwrap_or(Duration::from_secs(30));
                    tracing::warn!(provider = self.name(), error = %e, retry_in = ?wait, "cannot read provider quota; trying again");
                    if !self.pause(wait).await {
                        return false;
                    }
                }
            }
        }
    }
}
