//! One provider's shared budgets: waiting for the call rates the limiter keeps for every
//! replica (and for a pause a provider asked for), charging and giving back the documented
//! daily target quotas, re-reading the quota the provider reports, and the per-call caps
//! learned from "batch too large" refusals, shared by every replica.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::limiter::{Charge, Decision, Limit, Limiter, Rate};
use crate::model::PurgeKind;
use crate::providers::{Batch, CallBudget, KindQuota, ProviderError, ProviderHandle};

/// What waiting for budget ended with.
pub(super) enum Grant {
    /// At this time by the limiter's clock (what giving it back takes).
    Granted(u64),
    /// Gone for today.
    Exhausted,
    Stopped,
}

/// The budgets of one provider (its account's, when several share one), as a cheap handle.
#[derive(Clone)]
pub(super) struct Budget(Arc<Inner>);

struct Inner {
    provider: ProviderHandle,
    limiter: Arc<dyn Limiter>,
    /// Fraction by which rate windows are stretched.
    rate_margin: f64,
    stop: CancellationToken,
    /// Woken when this replica gives a submit grant back, so a wait for the slot it freed
    /// ends at once instead of at its computed time.
    given_back: Notify,
}

impl Budget {
    pub(super) fn new(
        provider: ProviderHandle,
        limiter: Arc<dyn Limiter>,
        rate_margin: f64,
        stop: CancellationToken,
    ) -> Budget {
        Budget(Arc::new(Inner {
            provider,
            limiter,
            rate_margin,
            stop,
            given_back: Notify::new(),
        }))
    }

    fn name(&self) -> &str {
        &self.0.provider.name
    }

    fn charges(&self, api: &str, rates: &[Rate]) -> Vec<Charge> {
        rates
            .iter()
            .enumerate()
            .map(|(i, rate)| Charge {
                key: format!("{}:{api}:{i}", self.0.provider.budget),
                limit: Limit::for_rate(*rate, self.0.rate_margin),
                cost: 1,
            })
            .collect()
    }

    /// One submit call's charges for a batch of `kind`: the API's rates, and the rates of that
    /// kind only (kept under their own keys, so other kinds do not pay them).
    fn submit_charges(&self, kind: PurgeKind) -> Vec<Charge> {
        let caps = &self.0.provider.caps;
        let rates = &caps.submit_rates;
        let mut charges = if rates.is_empty() {
            // No rate to keep, but a shared pause (a provider's 429) must still hold every
            // replica: a charge of nothing in the submit group checks it.
            vec![Charge {
                key: format!("{}:submit:0", self.0.provider.budget),
                limit: Limit::Window(Rate::new(u32::MAX, Duration::from_secs(1))),
                cost: 0,
            }]
        } else {
            self.charges("submit", rates)
        };
        if let Some(rates) = caps.kind_submit_rates.get(&kind) {
            charges.extend(self.charges(&format!("submit-{}", kind.as_str()), rates));
        }
        charges
    }

    /// The budget group every submit charge of this provider is in.
    fn submit_group(&self) -> String {
        format!("{}:submit", self.0.provider.budget)
    }

    /// The provider asked for no call before `wait` from now: every replica's submits wait.
    pub(super) async fn pause_submits(&self, wait: Duration) {
        tracing::info!(provider = self.name(), wait = ?wait, "provider asked to wait; pausing submits on every replica");
        if let Err(e) = self.0.limiter.pause(&self.submit_group(), wait).await {
            tracing::warn!(provider = self.name(), error = %e, "cannot share the provider's wait");
        }
    }

    /// A batch of `sent` targets of `kind` was refused as too large: later batches of that
    /// kind, on every replica, carry at most half of it, until a quota read says otherwise.
    pub(super) async fn batch_too_large(&self, kind: PurgeKind, sent: usize) {
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
    pub(super) async fn refresh_learned_caps(self, every: Duration) {
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

    fn status_charges(&self) -> Vec<Charge> {
        self.charges("status", &self.0.provider.caps.status_rates)
    }

    /// The documented daily target quotas a batch of `n` targets of `kind` is charged to.
    fn daily_charges(&self, kind: PurgeKind, n: usize) -> Vec<Charge> {
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

    /// Waits for one submit call's budget, for a batch of `kind`.
    pub(super) async fn submit(&self, kind: PurgeKind) -> Grant {
        self.wait(&self.submit_charges(kind)).await
    }

    /// Gives back the submit call granted at `at_ms` for a batch of `kind` that the claim
    /// emptied (all of it cancelled meanwhile), when the limiter can without letting more
    /// calls through than the rates allow (see `Limiter::unspend`); a wait on this replica for
    /// the freed slot ends at once.
    pub(super) async fn unspend_submit(&self, kind: PurgeKind, at_ms: u64) {
        match self
            .0
            .limiter
            .unspend(&self.submit_charges(kind), at_ms)
            .await
        {
            Ok(true) => {
                tracing::debug!(provider = self.name(), %kind, "a call granted for a wholly cancelled batch was given back");
                self.0.given_back.notify_waiters();
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(provider = self.name(), error = %e, "cannot give back an unused call")
            }
        }
    }

    /// Waits for one status call's budget (a poll, a lookup, a quota read).
    pub(super) async fn status(&self) -> Grant {
        self.wait(&self.status_charges()).await
    }

    /// Waits until every replica together may send `batch`'s targets under the provider's
    /// per-target budget (Akamai's object buckets), when it has one.
    pub(super) async fn items_or_stop(&self, batch: &Batch) -> Result<(), ProviderError> {
        let Some(items) = self.0.provider.client.item_budget(batch) else {
            return Ok(());
        };
        let rate = Rate {
            count: items.rate.count,
            per: items.rate.per.mul_f64(1.0 + self.0.rate_margin.max(0.0)),
        };
        let charge = Charge {
            key: format!("{}:items-{}:0", self.0.provider.budget, items.bucket),
            // Paced at the refill rate: the bucket's burst is not counted on, since what other
            // clients of the account took from it cannot be seen.
            limit: Limit::Gcra { rate, burst: 1 },
            cost: items.cost,
        };
        self.or_stop(&[charge]).await
    }

    /// [`Budget::submit`] as a provider call's error when not granted.
    pub(super) async fn submit_or_stop(&self, kind: PurgeKind) -> Result<(), ProviderError> {
        self.or_stop(&self.submit_charges(kind)).await
    }

    /// [`Budget::status`] as a provider call's error when not granted.
    pub(super) async fn status_or_stop(&self) -> Result<(), ProviderError> {
        self.or_stop(&self.status_charges()).await
    }

    /// One status call's budget if it is there now, without waiting.
    pub(super) async fn status_now(&self) -> bool {
        matches!(
            self.0.limiter.acquire(&self.status_charges()).await,
            Ok(Decision::Granted)
        )
    }

    /// The status budget as providers take it, for a poll or lookup of several calls.
    pub(super) fn status_calls(&self) -> StatusCalls<'_> {
        StatusCalls(self)
    }

    /// Waits until the limiter grants every charge; the purge stays queued meanwhile.
    async fn wait(&self, charges: &[Charge]) -> Grant {
        if self.0.stop.is_cancelled() {
            return Grant::Stopped;
        }
        loop {
            // Registered before asking, so a grant given back meanwhile is not missed.
            let given_back = self.0.given_back.notified();
            tokio::pin!(given_back);
            given_back.as_mut().enable();
            let wait = match self.0.limiter.acquire_stamped(charges).await {
                Ok(s) => match s.decision {
                    Decision::Granted => return Grant::Granted(s.at_ms),
                    Decision::Exhausted(_) => return Grant::Exhausted,
                    Decision::Wait(d) => d,
                },
                Err(e) => {
                    tracing::warn!(provider = self.name(), error = %e, "limiter unavailable; waiting");
                    Duration::from_millis(500)
                }
            };
            let slept = tokio::select! {
                slept = self.pause(wait.min(Duration::from_secs(5))) => slept,
                _ = given_back => true,
            };
            if !slept {
                return Grant::Stopped;
            }
        }
    }

    async fn or_stop(&self, charges: &[Charge]) -> Result<(), ProviderError> {
        match self.wait(charges).await {
            Grant::Granted(_) => Ok(()),
            Grant::Exhausted => Err(ProviderError::QuotaExhausted {
                message: format!(
                    "call budget of provider {:?} exhausted for today",
                    self.name()
                ),
            }),
            Grant::Stopped => Err(ProviderError::Transient {
                message: "dispatcher stopping".into(),
                source: None,
            }),
        }
    }

    /// Sleeps unless stopped; false when stopped.
    async fn pause(&self, d: Duration) -> bool {
        self.0
            .stop
            .run_until_cancelled(tokio::time::sleep(d))
            .await
            .is_some()
    }

    /// Charges as many of `n` targets of `kind` as the documented daily quotas still hold
    /// (all of them when the limiter cannot be asked) and says how many.
    pub(super) async fn charge_daily(&self, kind: PurgeKind, n: usize) -> usize {
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
        fitted
    }

    /// Gives back the daily quota `n` targets of `kind` were charged when the provider cannot
    /// have counted them: no attempt may have gone through unanswered, and the last answer was
    /// a refusal. A server error or an unreadable acceptance may have been counted: kept.
    pub(super) async fn refund_daily(
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
    pub(super) async fn refresh_quota(self, every: Duration) {
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
            match self.status().await {
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

/// The status budget, for providers that need several calls for one poll or lookup.
pub(super) struct StatusCalls<'a>(&'a Budget);

#[async_trait::async_trait]
impl CallBudget for StatusCalls<'_> {
    async fn acquire(&self) -> Result<(), ProviderError> {
        self.0.status_or_stop().await
    }
}

#[cfg(test)]
#[path = "budget_tests.rs"]
mod tests;
