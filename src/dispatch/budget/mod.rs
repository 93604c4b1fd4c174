//! One provider's shared budgets: waiting for the call rates the limiter keeps for every
//! replica (and for a pause a provider asked for), measuring each wait and reading what is
//! left of the budget for the metrics; daily quotas and learned per-call caps are in `quota`.

mod quota;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::limiter::{Charge, Decision, Limit, Limiter, Rate, now_ms};
use crate::metrics::Metrics;
use crate::metrics::budget::{KnownBudgets, RuleId};
use crate::model::PurgeKind;
use crate::providers::{Batch, CallBudget, ProviderError, ProviderHandle};

/// What waiting for budget ended with.
pub(super) enum Grant {
    /// At this time by the limiter's clock (what giving it back takes).
    Granted(u64),
    /// Gone for today.
    Exhausted,
    Stopped,
}

/// What budget is waited for, as the wait metric's `operation` label says (the values of
/// `purge_provider_calls_total`'s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Op {
    Submit,
    Poll,
    Quota,
    Lookup,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Submit => "submit",
            Op::Poll => "poll",
            Op::Quota => "quota",
            Op::Lookup => "lookup",
        }
    }
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
    metrics: Metrics,
    /// The rule states last read, for the `purge.budget.remaining` gauge.
    known: KnownBudgets,
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
        metrics: &Metrics,
    ) -> Budget {
        Budget(Arc::new(Inner {
            known: metrics.known_budgets(&provider.name),
            provider,
            limiter,
            rate_margin,
            stop,
            metrics: metrics.clone(),
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

    fn status_charges(&self) -> Vec<Charge> {
        self.charges("status", &self.0.provider.caps.status_rates)
    }

    /// Waits for one submit call's budget, for a batch of `kind`.
    pub(super) async fn submit(&self, kind: PurgeKind) -> Grant {
        self.wait(&self.submit_charges(kind), "submit", Op::Submit)
            .await
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

    /// Waits for one status call's budget (a poll, a lookup, a quota read: `op`).
    pub(super) async fn status(&self, op: Op) -> Grant {
        self.wait(&self.status_charges(), "status", op).await
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
        self.or_stop(&[charge], "items", Op::Submit).await
    }

    /// [`Budget::submit`] as a provider call's error when not granted.
    pub(super) async fn submit_or_stop(&self, kind: PurgeKind) -> Result<(), ProviderError> {
        self.or_stop(&self.submit_charges(kind), "submit", Op::Submit)
            .await
    }

    /// [`Budget::status`] as a provider call's error when not granted.
    pub(super) async fn status_or_stop(&self, op: Op) -> Result<(), ProviderError> {
        self.or_stop(&self.status_charges(), "status", op).await
    }

    /// One status call's budget (for `op`) if it is there now, without waiting.
    pub(super) async fn status_now(&self, op: Op) -> bool {
        let charges = self.status_charges();
        let asked = Instant::now();
        let granted = matches!(
            self.0.limiter.acquire(&charges).await,
            Ok(Decision::Granted)
        );
        if granted {
            self.granted(&charges, "status", op, asked).await;
        }
        granted
    }

    /// The status budget as providers take it, for a poll or lookup (`op`) of several calls.
    pub(super) fn status_calls(&self, op: Op) -> StatusCalls<'_> {
        StatusCalls(self, op)
    }

    /// Waits until the limiter grants every charge of `budget` (`submit`, `status`, `items`)
    /// for `op`; the purge stays queued meanwhile. A grant is measured from the first ask.
    async fn wait(&self, charges: &[Charge], budget: &'static str, op: Op) -> Grant {
        if self.0.stop.is_cancelled() {
            return Grant::Stopped;
        }
        let asked = Instant::now();
        loop {
            // Registered before asking, so a grant given back meanwhile is not missed.
            let given_back = self.0.given_back.notified();
            tokio::pin!(given_back);
            given_back.as_mut().enable();
            let wait = match self.0.limiter.acquire_stamped(charges).await {
                Ok(s) => match s.decision {
                    Decision::Granted => {
                        self.granted(charges, budget, op, asked).await;
                        return Grant::Granted(s.at_ms);
                    }
                    Decision::Exhausted(_) => {
                        self.read_rules(charges).await;
                        return Grant::Exhausted;
                    }
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

    /// `charges` of `budget` were granted for `op`, asked first at `asked`: the wait is
    /// measured, and what is left of the budget read for the gauge.
    async fn granted(&self, charges: &[Charge], budget: &'static str, op: Op, asked: Instant) {
        let waited = asked.elapsed().as_secs_f64();
        let m = &self.0.metrics;
        m.budget_waited(self.name(), budget, op.as_str(), waited);
        self.read_rules(charges).await;
    }

    /// Reads the state of `charges`' rules for the `purge.budget.remaining` gauge: one small
    /// read-only limiter call (one Redis script on Redis), made only while metrics are read.
    async fn read_rules(&self, charges: &[Charge]) {
        if !self.0.metrics.is_recording() {
            return;
        }
        // A charge of nothing (the pause check of a provider without submit rates) is no rule.
        let (ids, charges): (Vec<RuleId>, Vec<Charge>) = charges
            .iter()
            .filter(|c| c.cost > 0)
            .filter_map(|c| Some((self.rule_id(&c.key)?, c.clone())))
            .unzip();
        if charges.is_empty() {
            return;
        }
        match self.0.limiter.snapshot(&charges).await {
            Ok(read) => {
                let rules = ids.into_iter().zip(charges.iter().map(|c| c.limit));
                self.0.known.update(rules, read, now_ms());
            }
            Err(e) => {
                tracing::debug!(provider = self.name(), error = %e, "cannot read budget rules")
            }
        }
    }

    /// The gauge's name of the rule a charge key (`<budget>:<api>:<n>`, as built here) is of.
    fn rule_id(&self, key: &str) -> Option<RuleId> {
        let provider = &self.0.provider;
        let rest = key
            .strip_prefix(provider.budget.as_str())?
            .strip_prefix(':')?;
        let (api, n) = rest.rsplit_once(':')?;
        let rule: usize = n.parse().ok()?;
        let (api, detail) = api
            .split_once('-')
            .map_or((api, None), |(a, d)| (a, Some(d)));
        let id = |budget, kind: Option<String>, bucket: Option<&str>| RuleId {
            budget,
            kind,
            bucket: bucket.map(str::to_owned),
            rule,
        };
        match api {
            "submit" => Some(id("submit", detail.map(str::to_owned), None)),
            "status" => Some(id("status", None, None)),
            "items" => Some(id("items", None, detail)),
            "daily" => {
                let kinds: Vec<&str> = provider
                    .caps
                    .daily
                    .get(rule)?
                    .kinds
                    .iter()
                    .map(|k| k.as_str())
                    .collect();
                Some(id("daily", Some(kinds.join("+")), None))
            }
            _ => None,
        }
    }

    async fn or_stop(
        &self,
        charges: &[Charge],
        budget: &'static str,
        op: Op,
    ) -> Result<(), ProviderError> {
        match self.wait(charges, budget, op).await {
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
}

/// The status budget, for providers that need several calls for one poll or lookup.
pub(super) struct StatusCalls<'a>(&'a Budget, Op);

#[async_trait::async_trait]
impl CallBudget for StatusCalls<'_> {
    async fn acquire(&self) -> Result<(), ProviderError> {
        self.0.status_or_stop(self.1).await
    }
}

#[cfg(test)]
mod tests;
