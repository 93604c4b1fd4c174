//! Budget metrics: what is left of each provider budget rule, computed at every collection from
//! the rule states the dispatcher last read from the limiter (a Prometheus scrape runs the
//! callback synchronously, so it cannot ask Redis itself), and how long work waited for budget.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use opentelemetry::KeyValue;
use opentelemetry::metrics::Meter;

use crate::limiter::{Limit, RuleState, Snapshot, now_ms, remaining};

/// One budget rule of a provider, as the gauge labels it (every part bounded by configuration).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RuleId {
    /// `submit`, `status`, `daily` or `items`.
    pub budget: &'static str,
    /// The kinds a rule is kept for: a kind's own submit rate (`ALL`), a daily quota's kinds.
    pub kind: Option<String>,
    /// The provider's object bucket of an `items` rule (Akamai's `url`, `tag`, `cpcode`).
    pub bucket: Option<String>,
    /// The rule's place among the budget's rules: `0` for the first rate of an API.
    pub rule: usize,
}

/// A rule's state as last read, and the limiter's clock against ours then.
struct Known {
    limit: Limit,
    state: RuleState,
    /// When it was read, by the limiter's clock (ms).
    read_ms: u64,
    /// The limiter's clock minus ours (ms): Redis `TIME` may differ from this host's clock.
    offset_ms: i64,
}

/// What one provider's dispatcher last read of its budget rules: a cheap `Clone` handle. Between
/// reads a GCRA refills, a window slides and a day turns by the clock; charges made elsewhere
/// (other replicas, other providers of the account) show at this dispatcher's next read.
#[derive(Clone, Default)]
pub struct KnownBudgets(Arc<Mutex<BTreeMap<RuleId, Known>>>);

impl KnownBudgets {
    /// Keeps what `snapshot`, read for `rules` (in its order) and received at `local_ms` (this
    /// host's clock), says of them, unless a later read of a rule is kept already (reads of one
    /// provider may end out of order).
    pub fn update(
        &self,
        rules: impl IntoIterator<Item = (RuleId, Limit)>,
        snapshot: Snapshot,
        local_ms: u64,
    ) {
        let offset_ms = snapshot.now_ms as i64 - local_ms as i64;
        let mut known = self.0.lock().expect("budgets lock");
        for ((id, limit), state) in rules.into_iter().zip(snapshot.states) {
            if known.get(&id).is_some_and(|k| k.read_ms > snapshot.now_ms) {
                continue;
            }
            let read_ms = snapshot.now_ms;
            known.insert(
                id,
                Known {
                    limit,
                    state,
                    read_ms,
                    offset_ms,
                },
            );
        }
    }

    /// What each known rule has left at `local_ms` (this host's clock).
    pub fn left(&self, local_ms: u64) -> Vec<(RuleId, u64)> {
        let known = self.0.lock().expect("budgets lock");
        known
            .iter()
            .map(|(id, k)| {
                let now = (local_ms as i64 + k.offset_ms).max(0) as u64;
                (id.clone(), remaining(&k.state, &k.limit, now))
            })
            .collect()
    }
}

/// Known budgets by provider.
pub(super) type Providers = Arc<Mutex<HashMap<String, KnownBudgets>>>;

/// The gauge `purge.budget.remaining`, read from `providers` at each collection.
pub(super) fn observe_remaining(meter: &Meter, providers: Providers) {
    meter
        .u64_observable_gauge("purge.budget.remaining")
        .with_description(
            "What is left of a provider budget rule (calls, or targets for daily quotas and item buckets), as this replica last read it",
        )
        .with_unit("{unit}")
        .with_callback(move |o| {
            let now = now_ms();
            for (provider, known) in providers.lock().expect("budgets lock").iter() {
                for (id, left) in known.left(now) {
                    let mut attrs = vec![
                        KeyValue::new("provider", provider.clone()),
                        KeyValue::new("budget", id.budget),
                        KeyValue::new("rule", id.rule.to_string()),
                    ];
                    if let Some(kind) = id.kind {
                        attrs.push(KeyValue::new("kind", kind));
                    }
                    if let Some(bucket) = id.bucket {
                        attrs.push(KeyValue::new("bucket", bucket));
                    }
                    o.observe(left, &attrs);
                }
            }
        })
        .build();
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::limiter::Rate;

    fn id(rule: usize) -> RuleId {
        RuleId {
            budget: "submit",
            kind: None,
            bucket: None,
            rule,
        }
    }

    #[test]
    fn a_known_rule_refills_by_the_clock_and_keeps_its_latest_read() {
        let known = KnownBudgets::default();
        let gcra = Limit::Gcra {
            rate: Rate::new(10, Duration::from_secs(1)),
            burst: 5,
        };
        // Read from a limiter whose clock is 1 s ahead of ours: 3 of 5 tokens taken.
        let local = 1_000_000;
        let read = |tat_from_now: u64, ahead: u64| Snapshot {
            now_ms: local + ahead,
            states: vec![RuleState::Gcra {
                tat: local + ahead + tat_from_now,
            }],
        };
        known.update([(id(0), gcra)], read(300, 1_000), local);
        assert_eq!(known.left(local), vec![(id(0), 2)]);
        assert_eq!(known.left(local + 100), vec![(id(0), 3)]);
        assert_eq!(known.left(local + 10_000), vec![(id(0), 5)]);
        // An older read ending late does not replace a newer one.
        known.update([(id(0), gcra)], read(500, 900), local);
        assert_eq!(known.left(local), vec![(id(0), 2)]);
    }
}
