//! In-process limiter for a single replica.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::{
    Charge, Decision, LEARNED_CAP_TTL, Limiter, RuleState, Snapshot, Stamped, budget_group,
    evaluate, now_ms, refunded, unspent,
};
use crate::backend::BackendError;

#[derive(Clone, Default)]
pub struct MemoryLimiter {
    rules: Arc<Mutex<HashMap<String, RuleState>>>,
    /// Budget group -> paused until (ms since the epoch).
    pauses: Arc<Mutex<HashMap<String, u64>>>,
    /// (budget, lane) -> learned per-call cap and when it was last lowered (ms).
    caps: Arc<Mutex<HashMap<(String, String), LearnedCap>>>,
}

/// A learned per-call cap and when it was last lowered (ms since the epoch).
type LearnedCap = (usize, u64);

impl MemoryLimiter {
    /// Decides at an explicit time; the trait method uses the clock.
    pub fn acquire_at(&self, charges: &[Charge], now: u64) -> Decision {
        let mut rules = self.rules.lock().expect("limiter lock");
        let mut next = Vec::with_capacity(charges.len());
        let mut wait: Option<(u64, bool)> = None;
        {
            let pauses = self.pauses.lock().expect("limiter lock");
            for c in charges {
                if let Some(&until) = pauses.get(budget_group(&c.key))
                    && until > now
                {
                    let (w, e) = wait.unwrap_or((0, false));
                    wait = Some((w.max(until - now), e));
                }
            }
        }
        for c in charges {
            let state = rules.get(&c.key).cloned().unwrap_or_default();
            match evaluate(&state, &c.limit, c.cost, now) {
                Ok(s) => next.push((c.key.clone(), s)),
                Err((ms, exhausted)) => {
                    let (w, e) = wait.unwrap_or((0, false));
                    wait = Some((w.max(ms), e || exhausted));
                }
            }
        }
        match wait {
            Some((ms, true)) => Decision::Exhausted(Duration::from_millis(ms)),
            Some((ms, false)) => Decision::Wait(Duration::from_millis(ms)),
            None => {
                rules.extend(next);
                Decision::Granted
            }
        }
    }
}

#[async_trait]
impl Limiter for MemoryLimiter {
    async fn acquire_stamped(&self, charges: &[Charge]) -> Result<Stamped, BackendError> {
        let at_ms = now_ms();
        Ok(Stamped {
            decision: self.acquire_at(charges, at_ms),
            at_ms,
        })
    }

    async fn unspend(&self, charges: &[Charge], at_ms: u64) -> Result<bool, BackendError> {
        let now = now_ms();
        let mut rules = self.rules.lock().expect("limiter lock");
        let mut back = false;
        for c in charges {
            let state = rules
                .get(&c.key)
                .and_then(|state| unspent(state, &c.limit, c.cost, at_ms, now));
            if let Some(state) = state {
                rules.insert(c.key.clone(), state);
                back = true;
            }
        }
        Ok(back)
    }

    async fn refund(&self, charges: &[Charge]) -> Result<(), BackendError> {
        let now = now_ms();
        let mut rules = self.rules.lock().expect("limiter lock");
        for c in charges {
            let back = rules
                .get(&c.key)
                .and_then(|state| refunded(state, &c.limit, c.cost, now));
            if let Some(state) = back {
                rules.insert(c.key.clone(), state);
            }
        }
        Ok(())
    }

    async fn pause(&self, group: &str, wait: Duration) -> Result<(), BackendError> {
        self.pause_at(group, wait, now_ms());
        Ok(())
    }

    async fn learned_caps(&self, budget: &str) -> Result<BTreeMap<String, usize>, BackendError> {
        let now = now_ms();
        let mut caps = self.caps.lock().expect("limiter lock");
        caps.retain(|_, (_, at)| now.saturating_sub(*at) < LEARNED_CAP_TTL.as_millis() as u64);
        Ok(caps
            .iter()
            .filter(|((b, _), _)| b == budget)
            .map(|((_, lane), (cap, _))| (lane.clone(), *cap))
            .collect())
    }

    async fn lower_cap(&self, budget: &str, lane: &str, cap: usize) -> Result<bool, BackendError> {
        let now = now_ms();
        let mut caps = self.caps.lock().expect("limiter lock");
        let key = (budget.to_owned(), lane.to_owned());
        let fresh = |at: u64| now.saturating_sub(at) < LEARNED_CAP_TTL.as_millis() as u64;
        match caps.get(&key) {
            Some(&(known, at)) if known <= cap && fresh(at) => Ok(false),
            _ => {
                caps.insert(key, (cap, now));
                Ok(true)
            }
        }
    }

    async fn forget_cap(&self, budget: &str, lane: &str) -> Result<(), BackendError> {
        self.caps
            .lock()
            .expect("limiter lock")
            .remove(&(budget.to_owned(), lane.to_owned()));
        Ok(())
    }

    async fn snapshot(&self, charges: &[Charge]) -> Result<Snapshot, BackendError> {
        let rules = self.rules.lock().expect("limiter lock");
        Ok(Snapshot {
            now_ms: now_ms(),
            states: charges
                .iter()
                .map(|c| rules.get(&c.key).cloned().unwrap_or_default())
                .collect(),
        })
    }
}

impl MemoryLimiter {
    /// Pauses `group` for `wait` from `now` (ms); a longer pause already set stays.
    pub fn pause_at(&self, group: &str, wait: Duration, now: u64) {
        let until = now + wait.as_millis() as u64;
        let mut pauses = self.pauses.lock().expect("limiter lock");
        pauses.retain(|_, u| *u > now);
        let entry = pauses.entry(group.to_owned()).or_insert(until);
        *entry = (*entry).max(until);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::{Limit, Rate};

    fn charge(key: &str) -> Charge {
        Charge {
            key: key.into(),
            limit: Limit::Window(Rate::new(100, Duration::from_secs(60))),
            cost: 1,
        }
    }

    #[test]
    fn a_pause_holds_every_rule_of_its_group_until_it_ends() {
        let limiter = MemoryLimiter::default();
        limiter.pause_at("cf:submit", Duration::from_millis(1_500), 10_000);
        // A shorter pause later does not shorten it.
        limiter.pause_at("cf:submit", Duration::from_millis(100), 10_100);
        let both = [charge("cf:submit:0"), charge("cf:submit:1")];
        assert_eq!(
            limiter.acquire_at(&both, 10_200),
            Decision::Wait(Duration::from_millis(1_300))
        );
        // Nothing was charged while paused; other budgets are not paused.
        assert_eq!(
            limiter.acquire_at(&[charge("cf:status:0")], 10_200),
            Decision::Granted
        );
        assert_eq!(limiter.acquire_at(&both, 11_500), Decision::Granted);
        let rules = limiter.rules.lock().unwrap();
        assert!(matches!(&rules["cf:submit:0"], RuleState::Window { grants } if grants.len() == 1));
    }

    #[tokio::test]
    async fn a_snapshot_tells_what_is_left_and_charges_nothing() {
        let limiter = MemoryLimiter::default();
        let daily = Charge {
            key: "cdn:daily:0".into(),
            limit: Limit::Daily {
                max: 10,
                utc_offset_secs: 0,
            },
            cost: 1,
        };
        let window = charge("cdn:submit:0");
        for _ in 0..3 {
            let both = [daily.clone(), window.clone()];
            assert_eq!(limiter.acquire(&both).await.unwrap(), Decision::Granted);
        }
        let both = [daily, window, charge("cdn:submit:1")];
        let read = limiter.snapshot(&both).await.unwrap();
        assert_eq!(read.remaining(&both), vec![7, 97, 100]);
        assert_eq!(limiter.snapshot(&both).await.unwrap().states, read.states);
    }

    #[tokio::test]
    async fn a_learned_cap_only_goes_down_until_forgotten() {
        let limiter = MemoryLimiter::default();
        assert!(limiter.lower_cap("acct", "edge:URL", 50).await.unwrap());
        assert!(!limiter.lower_cap("acct", "edge:URL", 60).await.unwrap());
        assert!(!limiter.lower_cap("acct", "edge:URL", 50).await.unwrap());
        assert!(limiter.lower_cap("acct", "edge:URL", 25).await.unwrap());
        assert!(limiter.lower_cap("other", "edge:URL", 80).await.unwrap());
        let caps = limiter.learned_caps("acct").await.unwrap();
        assert_eq!(caps, BTreeMap::from([("edge:URL".to_owned(), 25)]));
        limiter.forget_cap("acct", "edge:URL").await.unwrap();
        assert!(limiter.learned_caps("acct").await.unwrap().is_empty());
        assert_eq!(limiter.learned_caps("other").await.unwrap().len(), 1);
    }
}
