//! Rate budgets shared by every replica: GCRA for per-second limits, an exact sliding window for
//! long windows, and daily counters on the provider's own day.

pub mod memory;
pub mod redis;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::backend::BackendError;

/// `count` events per `per`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub count: u32,
    #[serde(with = "humantime_serde")]
    pub per: Duration,
}

impl Rate {
    pub const fn new(count: u32, per: Duration) -> Rate {
        Rate { count, per }
    }
}

/// One budget rule. Every rule a call is charged to must grant it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Limit {
    /// Evenly spaced events, `burst` of them at once at most.
    Gcra { rate: Rate, burst: u32 },
    /// At most `rate.count` events in any window of `rate.per`.
    Window(Rate),
    /// At most `max` units per day, the day starting at midnight in UTC+`utc_offset_secs`.
    Daily { max: u64, utc_offset_secs: i32 },
}

impl Limit {
    /// The rule that enforces `rate` exactly: GCRA without burst up to a second (so no window
    /// of `per` ever sees more than `count`), an exact sliding window beyond. `margin` (e.g.
    /// 0.02) stretches the period to absorb network jitter between us and the provider's clock.
    pub fn for_rate(rate: Rate, margin: f64) -> Limit {
        let stretched = Rate {
            count: rate.count,
            per: rate.per.mul_f64(1.0 + margin.max(0.0)),
        };
        if rate.per <= Duration::from_secs(1) {
            Limit::Gcra {
                rate: stretched,
                burst: 1,
            }
        } else {
            Limit::Window(stretched)
        }
    }
}

/// "Charge `cost` to the budget `key` under `limit`."
#[derive(Clone, Debug, PartialEq)]
pub struct Charge {
    pub key: String,
    pub limit: Limit,
    pub cost: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Granted,
    /// Not now; try again after this long.
    Wait(Duration),
    /// A daily quota is used up until the provider's next day, this long from now.
    Exhausted(Duration),
}

/// A decision and, for a grant, when the limiter made it (its clock, ms since the epoch):
/// what [`Limiter::unspend`] takes to give an unused grant back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamped {
    pub decision: Decision,
    pub at_ms: u64,
}

#[async_trait]
pub trait Limiter: Send + Sync + 'static {
    /// Charges every rule or none of them.
    async fn acquire(&self, charges: &[Charge]) -> Result<Decision, BackendError> {
        Ok(self.acquire_stamped(charges).await?.decision)
    }

    /// [`Limiter::acquire`], saying when a grant was made.
    async fn acquire_stamped(&self, charges: &[Charge]) -> Result<Stamped, BackendError>;

    /// Gives back a grant of `charges` made at `at_ms` that no call used (the batch it was for
    /// was wholly cancelled), where that cannot let more through than the rules allow: a GCRA
    /// rule only while that grant is still its last (its theoretical arrival time is still
    /// `at_ms` + cost x interval; a later grant was spaced after it and stays so), a window
    /// rule by removing that grant's entries, a daily rule by giving the units back the same
    /// day. True when some rule gave it back.
    async fn unspend(&self, charges: &[Charge], at_ms: u64) -> Result<bool, BackendError>;

    /// Gives back daily units charged today for work the provider never counted (a refused
    /// call); other rules are left as they are, a call made stays made.
    async fn refund(&self, charges: &[Charge]) -> Result<(), BackendError>;

    /// Stops every charge to the budget `group` for `wait` from now, on every replica sharing
    /// this limiter: while the pause holds, `acquire` answers `Decision::Wait` (until its end)
    /// for any charge whose key is in `group` (see [`budget_group`]). A provider's 429 with
    /// `Retry-After` becomes `pause("<budget>:submit", retry_after)`, so no replica calls before
    /// the time the provider named. A shorter pause never cuts a longer one short.
    async fn pause(&self, group: &str, wait: Duration) -> Result<(), BackendError>;

    /// The per-call caps learned from "batch too large" refusals under the budget `budget`
    /// (a provider's account), by lane key (`<provider>:<KIND>`), shared by every replica.
    async fn learned_caps(&self, budget: &str) -> Result<BTreeMap<String, usize>, BackendError>;

    /// Lowers the learned cap of `lane` under `budget` to `cap` unless it is already at most
    /// that; true when this call lowered it (so the change is logged once, by one replica).
    /// A learned cap is kept for [`LEARNED_CAP_TTL`] after its last lowering.
    async fn lower_cap(&self, budget: &str, lane: &str, cap: usize) -> Result<bool, BackendError>;

    /// Forgets the learned cap of `lane` (a quota read reported a larger one).
    async fn forget_cap(&self, budget: &str, lane: &str) -> Result<(), BackendError>;

    /// Reads the state of each charge's rule, charging nothing (`cost` is not used), with the
    /// limiter's clock, so what is left of a budget can be told (see [`Snapshot::remaining`]).
    /// The charges must be of one slot, as for `acquire`. A pause is not part of it.
    async fn snapshot(&self, charges: &[Charge]) -> Result<Snapshot, BackendError>;
}

/// Rule states as the limiter read them, one per charge asked about, and its clock then.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Milliseconds since the Unix epoch by the limiter's clock (Redis `TIME` on Redis).
    pub now_ms: u64,
    pub states: Vec<RuleState>,
}

impl Snapshot {
    /// What each of `charges` (those the snapshot was read for) had left when it was read.
    pub fn remaining(&self, charges: &[Charge]) -> Vec<u64> {
        charges
            .iter()
            .zip(&self.states)
            .map(|(c, s)| remaining(s, &c.limit, self.now_ms))
            .collect()
    }
}

/// The units `limit` would still grant at `now_ms` from `state`, one at a time, charging
/// nothing: GCRA tokens left of its burst (`burst - ceil((tat - now) / interval)`, at least 0),
/// a window's count less the units granted within the last `per`, a daily quota less what
/// today used. Pure, so both limiters (and a gauge computed later from a read) agree with
/// [`evaluate`].
pub fn remaining(state: &RuleState, limit: &Limit, now_ms: u64) -> u64 {
    match *limit {
        Limit::Gcra { rate, burst } => {
            let ahead = match state {
                RuleState::Gcra { tat } => tat.saturating_sub(now_ms),
                _ => 0,
            };
            u64::from(burst).saturating_sub(ahead.div_ceil(gcra_interval_ms(rate)))
        }
        Limit::Window(rate) => {
            let per = rate.per.as_millis() as u64;
            let used = match state {
                RuleState::Window { grants } => {
                    grants.iter().filter(|&&t| t + per > now_ms).count() as u64
                }
                _ => 0,
            };
            u64::from(rate.count).saturating_sub(used)
        }
        Limit::Daily {
            max,
            utc_offset_secs,
        } => {
            let day = (now_ms as i64 + utc_offset_secs as i64 * 1000).div_euclid(DAY_MS);
            match *state {
                RuleState::Daily { day: d, used } if d == day => max.saturating_sub(used),
                _ => max,
            }
        }
    }
}

/// How long a learned per-call cap holds after its last lowering, for providers without a
/// quota API that could say otherwise (a raised account limit is noticed the next day).
pub const LEARNED_CAP_TTL: Duration = Duration::from_secs(24 * 3600);

/// The budget a charge key belongs to: the key without a trailing `:<number>` (the index of
/// one rule among a provider API's rules), e.g. `acct:submit:1` -> `acct:submit`.
pub fn budget_group(charge_key: &str) -> &str {
    match charge_key.rsplit_once(':') {
        Some((head, idx)) if !idx.is_empty() && idx.bytes().all(|b| b.is_ascii_digit()) => head,
        _ => charge_key,
    }
}

/// A daily rule's state after `cost` units are given back at `now_ms`: only units of the
/// same day, never below zero. `None`: nothing to give back.
pub fn refunded(state: &RuleState, limit: &Limit, cost: u32, now_ms: u64) -> Option<RuleState> {
    let Limit::Daily {
        utc_offset_secs, ..
    } = *limit
    else {
        return None;
    };
    let day = (now_ms as i64 + utc_offset_secs as i64 * 1000).div_euclid(DAY_MS);
    match *state {
        RuleState::Daily { day: d, used } if d == day => Some(RuleState::Daily {
            day,
            used: used.saturating_sub(cost as u64),
        }),
        _ => None,
    }
}

/// A rule's state once a grant of `cost` made at `at_ms` and never used is given back, at
/// `now_ms` (see [`Limiter::unspend`]); `None`: nothing may be given back.
pub fn unspent(
    state: &RuleState,
    limit: &Limit,
    cost: u32,
    at_ms: u64,
    now_ms: u64,
) -> Option<RuleState> {
    match (*limit, state) {
        (Limit::Gcra { rate, .. }, RuleState::Gcra { tat }) => {
            let spent = gcra_interval_ms(rate) * cost as u64;
            (*tat == at_ms + spent && spent > 0).then_some(RuleState::Gcra { tat: at_ms })
        }
        (Limit::Window(_), RuleState::Window { grants }) => {
            let mut grants = grants.clone();
            let mut removed = 0;
            while removed < cost {
                match grants.iter().rposition(|&t| t == at_ms) {
                    Some(i) => {
                        grants.remove(i);
                        removed += 1;
                    }
                    None => break,
                }
            }
            (removed > 0).then_some(RuleState::Window { grants })
        }
        (Limit::Daily { .. }, _) => refunded(state, limit, cost, now_ms),
        _ => None,
    }
}

/// The state one rule keeps, in milliseconds since the Unix epoch.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum RuleState {
    #[default]
    Fresh,
    /// Theoretical arrival time.
    Gcra {
        tat: u64,
    },
    /// Grant times in the current window, oldest first, one entry per unit of cost.
    Window {
        grants: std::collections::VecDeque<u64>,
    },
    Daily {
        day: i64,
        used: u64,
    },
}

const DAY_MS: i64 = 86_400_000;

/// Milliseconds between evenly spaced events of `rate`, rounded up: rounding down would let
/// `count + 1` events into one period (7 per second: 142 ms spacing fits 8 in 994 ms).
pub fn gcra_interval_ms(rate: Rate) -> u64 {
    (rate.per.as_millis() as u64)
        .div_ceil(rate.count.max(1) as u64)
        .max(1)
}

/// Decides one rule at `now_ms`: `Ok(new state)` if `cost` fits, else how long to wait
/// (`Err((wait_ms, exhausted))`). Pure, so the memory and Redis limiters agree.
pub fn evaluate(
    state: &RuleState,
    limit: &Limit,
    cost: u32,
    now_ms: u64,
) -> Result<RuleState, (u64, bool)> {
    match *limit {
        Limit::Gcra { rate, burst } => {
            let interval = gcra_interval_ms(rate);
            let tolerance = interval * burst.saturating_sub(1) as u64;
            let tat = match state {
                RuleState::Gcra { tat } => (*tat).max(now_ms),
                _ => now_ms,
            };
            let allowed_at = tat.saturating_sub(tolerance);
            if now_ms < allowed_at {
                return Err((allowed_at - now_ms, false));
            }
            Ok(RuleState::Gcra {
                tat: tat + interval * cost as u64,
            })
        }
        Limit::Window(rate) => {
            let per = rate.per.as_millis() as u64;
            let mut grants = match state {
                RuleState::Window { grants } => grants.clone(),
                _ => Default::default(),
            };
            while grants.front().is_some_and(|&t| t + per <= now_ms) {
                grants.pop_front();
            }
            let room = (rate.count as usize).saturating_sub(grants.len());
            if (cost as usize) > room {
                // Wait until enough old grants leave the window.
                let needed = cost as usize - room;
                let wait = grants
                    .get(needed - 1)
                    .map(|&t| t + per - now_ms)
                    .unwrap_or(per);
                return Err((wait.max(1), false));
            }
            grants.extend(std::iter::repeat_n(now_ms, cost as usize));
            Ok(RuleState::Window { grants })
        }
        Limit::Daily {
            max,
            utc_offset_secs,
        } => {
            let local = now_ms as i64 + utc_offset_secs as i64 * 1000;
            let day = local.div_euclid(DAY_MS);
            let used = match state {
                RuleState::Daily { day: d, used } if *d == day => *used,
                _ => 0,
            };
            if used + cost as u64 > max {
                let next_day = (day + 1) * DAY_MS;
                return Err(((next_day - local) as u64, true));
            }
            Ok(RuleState::Daily {
                day,
                used: used + cost as u64,
            })
        }
    }
}

/// Milliseconds since the Unix epoch by the local clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_group_drops_the_rule_index_only() {
        assert_eq!(budget_group("cf:submit:0"), "cf:submit");
        assert_eq!(budget_group("account:42:submit:12"), "account:42:submit");
        assert_eq!(budget_group("cf:submit"), "cf:submit");
        assert_eq!(budget_group("cf:submit:"), "cf:submit:");
    }

    #[test]
    fn gcra_spaces_calls_evenly() {
        let limit = Limit::Gcra {
            rate: Rate::new(10, Duration::from_secs(1)),
            burst: 1,
        };
        let s = evaluate(&RuleState::Fresh, &limit, 1, 1_000).unwrap();
        assert_eq!(evaluate(&s, &limit, 1, 1_050), Err((50, false)));
        assert!(evaluate(&s, &limit, 1, 1_100).is_ok());
    }

    #[test]
    fn gcra_never_lets_more_than_count_into_one_period() {
        // 7 per second does not divide 1000 ms evenly.
        let limit = Limit::Gcra {
            rate: Rate::new(7, Duration::from_secs(1)),
            burst: 1,
        };
        let (mut s, mut t, mut grants) = (RuleState::Fresh, 0u64, Vec::new());
        while grants.len() < 50 {
            match evaluate(&s, &limit, 1, t) {
                Ok(next) => {
                    s = next;
                    grants.push(t);
                }
                Err((wait, _)) => t += wait,
            }
        }
        for w in grants.windows(8) {
            assert!(w[7] - w[0] >= 1000, "8 grants within {} ms", w[7] - w[0]);
        }
    }

    #[test]
    fn daily_units_are_given_back_on_the_same_day_only() {
        let limit = Limit::Daily {
            max: 10,
            utc_offset_secs: 0,
        };
        let s = evaluate(&RuleState::Fresh, &limit, 10, 1_000).unwrap();
        assert!(evaluate(&s, &limit, 1, 2_000).is_err());
        let back = refunded(&s, &limit, 4, 3_000).unwrap();
        assert!(evaluate(&back, &limit, 4, 4_000).is_ok());
        assert!(evaluate(&back, &limit, 5, 4_000).is_err());
        assert_eq!(
            refunded(&s, &limit, 4, DAY_MS as u64 + 1),
            None,
            "yesterday's units"
        );
        let gcra = Limit::Gcra {
            rate: Rate::new(1, Duration::from_secs(1)),
            burst: 1,
        };
        assert_eq!(refunded(&s, &gcra, 1, 3_000), None);
    }

    /// Units granted one at a time at `now` until refused: what `remaining` must say.
    fn granted_now(mut state: RuleState, limit: &Limit, now: u64) -> u64 {
        let mut n = 0;
        while let Ok(next) = evaluate(&state, limit, 1, now) {
            state = next;
            n += 1;
            assert!(n < 10_000, "{limit:?} never refuses");
        }
        n
    }

    #[test]
    fn remaining_is_what_the_rule_would_grant_now() {
        let limits = [
            Limit::Gcra {
                rate: Rate::new(7, Duration::from_secs(1)),
                burst: 1,
            },
            Limit::Gcra {
                rate: Rate::new(10, Duration::from_secs(1)),
                burst: 5,
            },
            Limit::Window(Rate::new(10, Duration::from_secs(300))),
            Limit::Daily {
                max: 10,
                utc_offset_secs: 8 * 3600,
            },
        ];
        for limit in &limits {
            assert_eq!(
                remaining(&RuleState::Fresh, limit, 5_000),
                granted_now(RuleState::Fresh, limit, 5_000),
                "{limit:?} fresh"
            );
            // Charges of several costs over time, then reads at later times.
            let mut state = RuleState::Fresh;
            for (t, cost) in [(5_000, 1), (5_010, 2), (5_120, 1), (5_300, 3)] {
                if let Ok(next) = evaluate(&state, limit, cost, t) {
                    state = next;
                }
                for later in [t, t + 1, t + 99, t + 100, t + 1_000, t + 300_000] {
                    assert_eq!(
                        remaining(&state, limit, later),
                        granted_now(state.clone(), limit, later),
                        "{limit:?} at {later} from {state:?}"
                    );
                }
            }
        }
        // A daily quota is whole again on the provider's next day.
        let daily = limits[3];
        let used = evaluate(&RuleState::Fresh, &daily, 3, 1_000).unwrap();
        assert_eq!(remaining(&used, &daily, 1_000), 7);
        assert_eq!(remaining(&used, &daily, DAY_MS as u64 + 1_000), 10);
    }

    #[test]
    fn an_unused_grant_is_given_back_only_while_nothing_was_spaced_after_it() {
        let gcra = Limit::Gcra {
            rate: Rate::new(10, Duration::from_secs(1)),
            burst: 1,
        };
        let s = evaluate(&RuleState::Fresh, &gcra, 1, 1_000).unwrap();
        assert!(evaluate(&s, &gcra, 1, 1_050).is_err());
        let back = unspent(&s, &gcra, 1, 1_000, 1_050).unwrap();
        assert!(
            evaluate(&back, &gcra, 1, 1_050).is_ok(),
            "the slot is free again"
        );
        // A grant spaced after it: giving the first back would let two calls 50 ms apart.
        let later = evaluate(&s, &gcra, 1, 1_100).unwrap();
        assert_eq!(unspent(&later, &gcra, 1, 1_000, 1_150), None);

        let window = Limit::Window(Rate::new(2, Duration::from_secs(300)));
        let mut w = RuleState::Fresh;
        for t in [0, 10] {
            w = evaluate(&w, &window, 1, t).unwrap();
        }
        assert!(evaluate(&w, &window, 1, 20).is_err());
        let back = unspent(&w, &window, 1, 10, 20).unwrap();
        assert!(evaluate(&back, &window, 1, 20).is_ok());
        assert_eq!(unspent(&w, &window, 1, 5, 20), None, "no grant at 5 ms");
    }

    #[test]
    fn window_counts_exactly() {
        let limit = Limit::Window(Rate::new(3, Duration::from_secs(300)));
        let mut s = RuleState::Fresh;
        for t in [0, 10, 20] {
            s = evaluate(&s, &limit, 1, t).unwrap();
        }
        assert_eq!(evaluate(&s, &limit, 1, 100), Err((299_900, false)));
        assert!(evaluate(&s, &limit, 1, 300_000).is_ok());
        assert_eq!(evaluate(&s, &limit, 2, 300_000), Err((10, false)));
    }

    #[test]
    fn daily_resets_on_the_providers_day() {
        // UTC+8: 16:00 UTC is midnight.
        let limit = Limit::Daily {
            max: 5,
            utc_offset_secs: 8 * 3600,
        };
        let before_midnight = 16 * 3_600_000 - 1_000;
        let s = evaluate(&RuleState::Fresh, &limit, 5, before_midnight).unwrap();
        assert_eq!(evaluate(&s, &limit, 1, before_midnight), Err((1_000, true)));
        assert!(evaluate(&s, &limit, 5, before_midnight + 1_000).is_ok());
    }
}
