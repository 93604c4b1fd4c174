//! In-process limiter for a single replica.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::{Charge, Decision, Limiter, RuleState, evaluate, now_ms, refunded};
use crate::backend::BackendError;

#[derive(Clone, Default)]
pub struct MemoryLimiter {
    rules: Arc<Mutex<HashMap<String, RuleState>>>,
}

impl MemoryLimiter {
    /// Decides at an explicit time; the trait method uses the clock.
    pub fn acquire_at(&self, charges: &[Charge], now: u64) -> Decision {
        let mut rules = self.rules.lock().expect("limiter lock");
        let mut next = Vec::with_capacity(charges.len());
        let mut wait: Option<(u64, bool)> = None;
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
    async fn acquire(&self, charges: &[Charge]) -> Result<Decision, BackendError> {
        Ok(self.acquire_at(charges, now_ms()))
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
}
