//! Lane buffers: targets waiting to be packed into provider calls, one buffer per lane, with
//! identical targets kept once and credited to every purge that asked for them.

use foldhash::{HashMap, HashMapExt, HashSet};
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::model::{Action, PurgeKind, PurgeSpec};
use crate::providers::Batch;

/// What must be equal for targets to share a provider call (the provider is implied).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LaneKey {
    pub kind: PurgeKind,
    pub action: Action,
    pub hosts: Vec<String>,
    pub headers: BTreeMap<String, String>,
}

impl LaneKey {
    pub fn of(spec: &PurgeSpec) -> LaneKey {
        LaneKey {
            kind: spec.kind,
            action: spec.action,
            hosts: spec.hosts.clone(),
            headers: spec.headers.clone(),
        }
    }

    /// The batch carrying `taken`, its id derived from this lane and the sorted (purge id,
    /// target) pairs, so the same packing gives the same id on any replica.
    pub fn batch(&self, taken: &Taken) -> Batch {
        let mut pairs: Vec<(&str, &str)> = taken
            .credits
            .iter()
            .flat_map(|(t, purges)| purges.iter().map(move |p| (p.as_str(), t.as_str())))
            .collect();
        pairs.sort_unstable();
        let mut h = Sha256::new();
        let mut part = |s: &str| {
            h.update(s.as_bytes());
            h.update([0]);
        };
        part(self.kind.as_str());
        part(self.action.as_str());
        self.hosts.iter().for_each(|host| part(host));
        part("");
        for (name, value) in &self.headers {
            part(name);
            part(value);
        }
        part("");
        for (purge, target) in pairs {
            part(purge);
            part(target);
        }
        Batch {
            id: hex::encode(h.finalize()),
            kind: self.kind,
            action: self.action,
            targets: taken.targets.clone(),
            hosts: self.hosts.clone(),
            headers: self.headers.clone(),
        }
    }
}

/// Targets taken from a lane for one call, each with the purges it is credited to.
#[derive(Clone, Debug, Default)]
pub struct Taken {
    pub targets: Vec<String>,
    pub credits: HashMap<String, Vec<String>>,
}

impl Taken {
    /// Purge id -> its targets in this batch.
    pub fn by_purge(&self) -> HashMap<&str, HashSet<&str>> {
        let mut out: HashMap<&str, HashSet<&str>> = HashMap::new();
        for (target, purges) in &self.credits {
            for p in purges {
                out.entry(p).or_default().insert(target);
            }
        }
        out
    }

    /// The purges credited with some target of this batch, each once.
    pub fn purges(&self) -> Vec<String> {
        let distinct: HashSet<&String> = self.credits.values().flatten().collect();
        distinct.into_iter().cloned().collect()
    }

    /// Targets not sent again because another purge in this batch asked for them too.
    pub fn saved(&self) -> usize {
        let credited: usize = self.credits.values().map(Vec::len).sum();
        credited.saturating_sub(self.targets.len())
    }

    /// Splits into two halves, for a provider that refused the batch as too large.
    pub fn split(self) -> (Taken, Taken) {
        let mid = self.targets.len() / 2;
        self.split_at(mid)
    }

    /// The first `mid` targets, and the rest.
    pub fn split_at(self, mid: usize) -> (Taken, Taken) {
        let mut credits = self.credits;
        let mut part = |targets: Vec<String>| {
            let credits = targets
                .iter()
                .filter_map(|t| credits.remove(t).map(|c| (t.clone(), c)))
                .collect();
            Taken { targets, credits }
        };
        let mut left = self.targets;
        let right = left.split_off(mid);
        (part(left), part(right))
    }
}

/// Past this many purges on one target, whether a purge is already credited is looked up in
/// a set instead of scanned: a hot target (or any target behind a throttled provider) can
/// gather hundreds of thousands of purges, and a scan per create made that quadratic.
const SCAN_LIMIT: usize = 16;

/// The purges one waiting target is credited to, each once, in arrival order.
#[derive(Default)]
struct Credits {
    purges: Vec<String>,
    /// Built once `purges` outgrows `SCAN_LIMIT`.
    index: Option<HashSet<String>>,
}

impl Credits {
    fn add(&mut self, purge_id: &str) {
        let known = match &mut self.index {
            Some(index) => !index.insert(purge_id.to_owned()),
            None => self.purges.iter().any(|p| p == purge_id),
        };
        if known {
            return;
        }
        self.purges.push(purge_id.to_owned());
        if self.index.is_none() && self.purges.len() > SCAN_LIMIT {
            self.index = Some(self.purges.iter().cloned().collect());
        }
    }
}

#[derive(Default)]
struct LaneBuf {
    order: VecDeque<String>,
    /// Keyed by callers' targets and long-lived (a throttled lane gathers many), so with
    /// std's DoS-resistant hasher; the maps keyed by purge ids, which this service makes, and
    /// the per-call maps bounded by a provider's batch size use foldhash.
    credits: std::collections::HashMap<String, Credits>,
    since: Option<Instant>,
}

/// Every lane of one provider.
#[derive(Default)]
pub struct Lanes {
    lanes: HashMap<LaneKey, LaneBuf>,
}

impl Lanes {
    /// Adds `target` for `purge_id`; a target already waiting is only credited.
    pub fn push(&mut self, key: &LaneKey, target: &str, purge_id: &str) {
        let lane = self.lanes.entry(key.clone()).or_default();
        lane.since.get_or_insert_with(Instant::now);
        match lane.credits.get_mut(target) {
            Some(credits) => credits.add(purge_id),
            None => {
                lane.order.push_back(target.to_owned());
                let mut credits = Credits::default();
                credits.add(purge_id);
                lane.credits.insert(target.to_owned(), credits);
            }
        }
    }

    /// The lane to send next and when it is due: a full lane now, else the oldest at
    /// `since + linger`.
    pub fn next_due(
        &self,
        linger: Duration,
        cap: impl Fn(PurgeKind) -> usize,
    ) -> Option<(LaneKey, Instant)> {
        self.lanes
            .iter()
            .filter_map(|(k, l)| {
                let since = l.since?;
                let due = if l.order.len() >= cap(k.kind) {
                    since.min(Instant::now())
                } else {
                    since + linger
                };
                Some((k.clone(), due))
            })
            .min_by_key(|(_, due)| *due)
    }

    /// Takes up to `cap` targets from the lane.
    pub fn take(&mut self, key: &LaneKey, cap: usize) -> Taken {
        let Some(lane) = self.lanes.get_mut(key) else {
            return Taken::default();
        };
        let n = lane.order.len().min(cap);
        let targets: Vec<String> = lane.order.drain(..n).collect();
        let credits = targets
            .iter()
            .filter_map(|t| lane.credits.remove(t).map(|c| (t.clone(), c.purges)))
            .collect();
        if lane.order.is_empty() {
            self.lanes.remove(key);
        }
        Taken { targets, credits }
    }

    /// Targets waiting to be sent, over every lane.
    pub fn waiting(&self) -> usize {
        self.lanes.values().map(|l| l.order.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.lanes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> LaneKey {
        LaneKey {
            kind: PurgeKind::Url,
            action: Action::Invalidate,
            hosts: vec![],
            headers: BTreeMap::new(),
        }
    }

    #[test]
    fn identical_targets_are_sent_once_and_credited_to_all() {
        let mut lanes = Lanes::default();
        lanes.push(&key(), "https://a/1", "p1");
        lanes.push(&key(), "https://a/1", "p2");
        lanes.push(&key(), "https://a/2", "p2");
        assert_eq!(lanes.waiting(), 2);
        let taken = lanes.take(&key(), 10);
        assert_eq!(taken.targets, ["https://a/1", "https://a/2"]);
        assert_eq!(taken.credits["https://a/1"], ["p1", "p2"]);
        assert_eq!(taken.by_purge()["p2"].len(), 2);
        let mut purges = taken.purges();
        purges.sort();
        assert_eq!(purges, ["p1", "p2"]);
        assert!(lanes.is_empty());
    }

    #[test]
    fn a_batch_id_names_the_packed_purges_and_targets_whatever_their_order() {
        let taken = |pairs: &[(&str, &str)]| {
            let mut lanes = Lanes::default();
            for (target, purge) in pairs {
                lanes.push(&key(), target, purge);
            }
            lanes.take(&key(), 10)
        };
        let a = key().batch(&taken(&[("u1", "p1"), ("u2", "p2"), ("u1", "p3")]));
        let b = key().batch(&taken(&[("u2", "p2"), ("u1", "p3"), ("u1", "p1")]));
        assert_eq!(a.id, b.id, "another replica re-packing the same work");
        assert_ne!(a.targets, b.targets);
        let c = key().batch(&taken(&[("u1", "p1"), ("u2", "p2")]));
        assert_ne!(a.id, c.id, "one purge fewer");
        let d = key().batch(&taken(&[("u1", "p1"), ("u2", "p2"), ("u1", "p4")]));
        assert_ne!(a.id, d.id, "another purge");
        let mut other = key();
        other.action = Action::Delete;
        assert_ne!(
            other
                .batch(&taken(&[("u1", "p1"), ("u2", "p2"), ("u1", "p3")]))
                .id,
            a.id
        );
    }

    #[test]
    fn a_hot_target_credits_each_purge_once_in_order() {
        let mut lanes = Lanes::default();
        for round in 0..2 {
            for i in 0..100 {
                lanes.push(&key(), "https://a/hot", &format!("p{i}"));
            }
            assert_eq!(lanes.waiting(), 1, "round {round}");
        }
        let taken = lanes.take(&key(), 10);
        let want: Vec<String> = (0..100).map(|i| format!("p{i}")).collect();
        assert_eq!(taken.credits["https://a/hot"], want);
    }

    #[test]
    fn a_full_lane_is_due_at_once_and_split_by_cap() {
        let mut lanes = Lanes::default();
        for i in 0..5 {
            lanes.push(&key(), &format!("https://a/{i}"), "p");
        }
        let (_, due) = lanes.next_due(Duration::from_secs(60), |_| 3).unwrap();
        assert!(due <= Instant::now());
        assert_eq!(lanes.take(&key(), 3).targets.len(), 3);
        let (_, due) = lanes.next_due(Duration::from_secs(60), |_| 3).unwrap();
        assert!(due > Instant::now());
        let (a, b) = lanes.take(&key(), 3).split();
        assert_eq!((a.targets.len(), b.targets.len()), (1, 1));
        assert_eq!(b.credits.len(), 1);
    }
}
