//! Rate budgets in Redis, shared by every replica: one script decides all charges of an
//! acquire atomically with Redis `TIME` as the clock, following `limiter::evaluate` rule by
//! rule (GCRA theoretical arrival time, exact sliding window, daily counter on the provider's
//! day), so the memory and Redis limiters agree.

use std::sync::{Arc, LazyLock};

use std::collections::BTreeMap;

use ::redis::{AsyncCommands, Script};
use async_trait::async_trait;

use super::{
    Charge, Decision, LEARNED_CAP_TTL, Limit, Limiter, RuleState, Snapshot, Stamped, budget_group,
    gcra_interval_ms,
};
use crate::backend::BackendError;
use crate::redis_state::Shared;

/// KEYS: one per charge, then the pause key of each budget group charged (see `pause_key`).
/// ARGV: four per charge: kind, a, b, cost, where kind `g` (GCRA: a =
/// emission interval ms, b = tolerance ms), `w` (window: a = count, b = window ms) or `d`
/// (daily: a = max, b = UTC offset ms). Returns {granted, wait ms, exhausted, now ms}.
///
/// State: GCRA a string (tat ms); window a list of grant times, oldest first, one per unit;
/// daily a hash {day, used}; a pause a string (until ms). Every key expires once it no longer
/// matters. While a pause is in force nothing is charged and the wait is until its end.
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local DAY = 86400000
local plans = {}
local wait, denied, exhausted = 0, false, false
local n = #ARGV / 4
for i = n + 1, #KEYS do
  local untilms = tonumber(redis.call('GET', KEYS[i]) or '0')
  if untilms > now then
    denied = true
    wait = math.max(wait, untilms - now)
  end
end
for i = 1, n do
  local key = KEYS[i]
  local kind = ARGV[i * 4 - 3]
  local a = tonumber(ARGV[i * 4 - 2])
  local b = tonumber(ARGV[i * 4 - 1])
  local cost = tonumber(ARGV[i * 4])
  if kind == 'g' then
    local tat = tonumber(redis.call('GET', key) or '0')
    if tat < now then tat = now end
    local allowed = tat - b
    if allowed < 0 then allowed = 0 end
    if now < allowed then
      denied = true
      wait = math.max(wait, allowed - now)
    else
      plans[i] = tat + a * cost
    end
  elseif kind == 'w' then
    while true do
      local first = redis.call('LINDEX', key, 0)
      if first and tonumber(first) + b <= now then redis.call('LPOP', key) else break end
    end
    local room = a - redis.call('LLEN', key)
    if room < 0 then room = 0 end
    if cost > room then
      local oldest = redis.call('LINDEX', key, cost - room - 1)
      local w = b
      if oldest then w = tonumber(oldest) + b - now end
      if w < 1 then w = 1 end
      denied = true
      wait = math.max(wait, w)
    else
      plans[i] = true
    end
  elseif kind == 'd' then
    local lo = now + b
    local day = math.floor(lo / DAY)
    local s = redis.call('HMGET', key, 'day', 'used')
    local used = 0
    if s[1] and tonumber(s[1]) == day then used = tonumber(s[2]) end
    if used + cost > a then
      denied = true
      exhausted = true
      wait = math.max(wait, (day + 1) * DAY - lo)
    else
      plans[i] = {day, used + cost, (day + 1) * DAY - lo}
    end
  else
    return redis.error_reply('unknown rule kind ' .. tostring(kind))
  end
end
if denied then
  if exhausted then return {0, wait, 1, now} end
  return {0, wait, 0, now}
end
for i = 1, n do
  local key = KEYS[i]
  local kind = ARGV[i * 4 - 3]
  local p = plans[i]
  if kind == 'g' then
    redis.call('SET', key, string.format('%.0f', p), 'PX', string.format('%.0f', p - now + 1000))
  elseif kind == 'w' then
    for _ = 1, tonumber(ARGV[i * 4]) do redis.call('RPUSH', key, string.format('%.0f', now)) end
    redis.call('PEXPIRE', key, ARGV[i * 4 - 1])
  else
    redis.call('HSET', key, 'day', string.format('%.0f', p[1]), 'used', string.format('%.0f', p[2]))
    redis.call('PEXPIRE', key, string.format('%.0f', p[3] + DAY))
  end
end
return {1, 0, 0, now}
",
    )
});

/// KEYS: daily rule keys. ARGV: two per key: UTC offset ms, cost. Gives units back to the
/// current day's count (as `limiter::refunded`), never below zero.
static REFUND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i, key in ipairs(KEYS) do
  local day = math.floor((now + tonumber(ARGV[i * 2 - 1])) / 86400000)
  local s = redis.call('HMGET', key, 'day', 'used')
  if s[1] and tonumber(s[1]) == day then
    local used = tonumber(s[2]) - tonumber(ARGV[i * 2])
    if used < 0 then used = 0 end
    redis.call('HSET', key, 'used', string.format('%.0f', used))
  end
end
return 0
",
    )
});

/// KEYS: rule keys. ARGV: the grant's time (ms), then four per key as for ACQUIRE (kind, a,
/// b, cost). Gives back a grant made at that time and never used, as `limiter::unspent`:
/// GCRA only while its theoretical arrival time is still the grant's (no grant spaced after
/// it), a window's entries of that time, a daily rule's units the same day. Returns how
/// many rules gave it back.
static UNSPEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local at = tonumber(ARGV[1])
local back = 0
for i, key in ipairs(KEYS) do
  local kind = ARGV[i * 4 - 2]
  local a = tonumber(ARGV[i * 4 - 1])
  local b = tonumber(ARGV[i * 4])
  local cost = tonumber(ARGV[i * 4 + 1])
  if kind == 'g' then
    local tat = tonumber(redis.call('GET', key) or '0')
    if a * cost > 0 and tat == at + a * cost then
      if at + 1000 > now then
        redis.call('SET', key, string.format('%.0f', at), 'PX', string.format('%.0f', at + 1000 - now))
      else
        redis.call('DEL', key)
      end
      back = back + 1
    end
  elseif kind == 'w' then
    if redis.call('LREM', key, -cost, string.format('%.0f', at)) > 0 then back = back + 1 end
  elseif kind == 'd' then
    local day = math.floor((now + b) / 86400000)
    local s = redis.call('HMGET', key, 'day', 'used')
    if s[1] and tonumber(s[1]) == day then
      local used = tonumber(s[2]) - cost
      if used < 0 then used = 0 end
      redis.call('HSET', key, 'used', string.format('%.0f', used))
      back = back + 1
    end
  end
end
return back
",
    )
});

/// KEYS: a pause key. ARGV: wait ms. Sets the pause to end `wait` after Redis `TIME` unless
/// it already ends later; the key expires (PEXPIREAT) when the pause does.
static PAUSE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local untilms = now + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if untilms > current then
  redis.call('SET', KEYS[1], string.format('%.0f', untilms))
  redis.call('PEXPIREAT', KEYS[1], string.format('%.0f', untilms))
end
return 0
",
    )
});

/// KEYS: the learned caps hash. ARGV: lane, cap, ttl ms. Lowers the lane's cap unless it is
/// already at most `cap`; returns 1 when lowered. The hash expires `ttl` after a lowering.
static LOWER_CAP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local cap = tonumber(ARGV[2])
if cur > 0 and cur <= cap then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
",
    )
});

/// KEYS: rule keys (of one slot). ARGV: the kind of each (`g`, `w`, `d`, as for `ACQUIRE`).
/// Reads only: returns {now ms by Redis `TIME`, {state of each key}}, a state being {tat} (GCRA),
/// the grant times in the list (window), {day, used} (daily), or {} when the key is not set.
static SNAPSHOT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local states = {}
for i, key in ipairs(KEYS) do
  local kind = ARGV[i]
  local s = {}
  if kind == 'g' then
    local tat = redis.call('GET', key)
    if tat then s = {tonumber(tat)} end
  elseif kind == 'w' then
    for j, g in ipairs(redis.call('LRANGE', key, 0, -1)) do s[j] = tonumber(g) end
  else
    local d = redis.call('HMGET', key, 'day', 'used')
    if d[1] then s = {tonumber(d[1]), tonumber(d[2] or '0')} end
  end
  states[i] = s
end
return {now, states}
",
    )
});

#[derive(Clone)]
pub struct RedisLimiter {
    shared: Arc<Shared>,
}

impl RedisLimiter {
    pub fn new(shared: Arc<Shared>) -> RedisLimiter {
        RedisLimiter { shared }
    }

    /// The pause key of a budget group, under the same hash tag as the group's rule keys (so
    /// one acquire still touches one cluster slot).
    fn pause_key(&self, group: &str) -> String {
        format!("{}:pause", self.shared.keys.limit(&format!("{group}:0")))
    }

    /// The hash of per-call caps learned under `budget`, beside its submit budget.
    fn caps_key(&self, budget: &str) -> String {
        format!(
            "{}:caps",
            self.shared.keys.limit(&format!("{budget}:submit:0"))
        )
    }
}

/// The script's `kind, a, b` of a rule, computed as `limiter::evaluate` does.
fn rule_args(limit: &Limit) -> (&'static str, i64, i64) {
    match *limit {
        Limit::Gcra { rate, burst } => {
            let interval = gcra_interval_ms(rate);
            let tolerance = interval * burst.saturating_sub(1) as u64;
            ("g", interval as i64, tolerance as i64)
        }
        Limit::Window(rate) => ("w", rate.count as i64, rate.per.as_millis() as i64),
        Limit::Daily {
            max,
            utc_offset_secs,
        } => ("d", max as i64, utc_offset_secs as i64 * 1000),
    }
}

/// A rule's state from what `SNAPSHOT` read of its key.
fn rule_state(limit: &Limit, read: &[u64]) -> RuleState {
    match (limit, read) {
        (_, []) => RuleState::Fresh,
        (Limit::Gcra { .. }, [tat, ..]) => RuleState::Gcra { tat: *tat },
        (Limit::Window(_), grants) => RuleState::Window {
            grants: grants.iter().copied().collect(),
        },
        (Limit::Daily { .. }, [day, used, ..]) => RuleState::Daily {
            day: *day as i64,
            used: *used,
        },
        (Limit::Daily { .. }, [_]) => RuleState::Fresh,
    }
}

impl RedisLimiter {
    /// A charge as the ACQUIRE and UNSPEND scripts take it: its key, then its rule and cost.
    fn charge_args(&self, call: &mut ::redis::ScriptInvocation<'_>, c: &Charge) {
        let (kind, a, b) = rule_args(&c.limit);
        call.key(self.shared.keys.limit(&c.key))
            .arg(kind)
            .arg(a)
            .arg(b)
            .arg(c.cost);
    }
}

#[async_trait]
impl Limiter for RedisLimiter {
    async fn acquire_stamped(&self, charges: &[Charge]) -> Result<Stamped, BackendError> {
        if charges.is_empty() {
            return Ok(Stamped {
                decision: Decision::Granted,
                at_ms: super::now_ms(),
            });
        }
        let mut call = ACQUIRE.prepare_invoke();
        let mut groups: Vec<&str> = Vec::new();
        for c in charges {
            self.charge_args(&mut call, c);
            let group = budget_group(&c.key);
            if !groups.contains(&group) {
                groups.push(group);
            }
        }
        for group in groups {
            call.key(self.pause_key(group));
        }
        let (granted, wait, exhausted, at_ms): (i64, u64, i64, u64) =
            self.shared.invoke(call).await?;
        let wait = std::time::Duration::from_millis(wait);
        let decision = match (granted, exhausted) {
            (1, _) => Decision::Granted,
            (_, 1) => Decision::Exhausted(wait),
            _ => Decision::Wait(wait),
        };
        Ok(Stamped { decision, at_ms })
    }

    async fn unspend(&self, charges: &[Charge], at_ms: u64) -> Result<bool, BackendError> {
        if charges.is_empty() {
            return Ok(false);
        }
        let mut call = UNSPEND.prepare_invoke();
        call.arg(at_ms);
        for c in charges {
            self.charge_args(&mut call, c);
        }
        let back: i64 = self.shared.invoke(call).await?;
        Ok(back > 0)
    }

    async fn refund(&self, charges: &[Charge]) -> Result<(), BackendError> {
        let mut call = REFUND.prepare_invoke();
        let mut any = false;
        for c in charges {
            if let Limit::Daily {
                utc_offset_secs, ..
            } = c.limit
            {
                call.key(self.shared.keys.limit(&c.key))
                    .arg(utc_offset_secs as i64 * 1000)
                    .arg(c.cost);
                any = true;
            }
        }
        if !any {
            return Ok(());
        }
        let _: i64 = self.shared.invoke(call).await?;
        Ok(())
    }

    async fn pause(&self, group: &str, wait: std::time::Duration) -> Result<(), BackendError> {
        let mut call = PAUSE.prepare_invoke();
        call.key(self.pause_key(group))
            .arg(wait.as_millis().max(1) as u64);
        let _: i64 = self.shared.invoke(call).await?;
        Ok(())
    }

    async fn learned_caps(&self, budget: &str) -> Result<BTreeMap<String, usize>, BackendError> {
        let key = self.caps_key(budget);
        self.shared
            .with(|mut conn| async move { conn.hgetall(key).await })
            .await
    }

    async fn lower_cap(&self, budget: &str, lane: &str, cap: usize) -> Result<bool, BackendError> {
        let mut call = LOWER_CAP.prepare_invoke();
        call.key(self.caps_key(budget))
            .arg(lane)
            .arg(cap.max(1) as u64)
            .arg(LEARNED_CAP_TTL.as_millis() as u64);
        let lowered: i64 = self.shared.invoke(call).await?;
        Ok(lowered == 1)
    }

    async fn snapshot(&self, charges: &[Charge]) -> Result<Snapshot, BackendError> {
        if charges.is_empty() {
            return Ok(Snapshot {
                now_ms: super::now_ms(),
                states: Vec::new(),
            });
        }
        let mut call = SNAPSHOT.prepare_invoke();
        for c in charges {
            call.key(self.shared.keys.limit(&c.key))
                .arg(rule_args(&c.limit).0);
        }
        let (now_ms, read): (u64, Vec<Vec<u64>>) = self.shared.invoke(call).await?;
        let states = charges
            .iter()
            .zip(read)
            .map(|(c, s)| rule_state(&c.limit, &s))
            .collect();
        Ok(Snapshot { now_ms, states })
    }

    async fn forget_cap(&self, budget: &str, lane: &str) -> Result<(), BackendError> {
        let key = self.caps_key(budget);
        let _: i64 = self
            .shared
            .with(|mut conn| {
                let lane = lane.to_owned();
                async move { conn.hdel(key, lane).await }
            })
            .await?;
        Ok(())
    }
}
