//! Domain types: what a purge is, independent of the wire format and of storage. The rules of
//! a purge record's life are its methods, in `record`.

mod record;

pub use record::quota_reason;

use foldhash::HashMap;
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What a purge removes; the meaning of a target depends on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PurgeKind {
    Url,
    Prefix,
    Host,
    All,
    Tag,
    Wildcard,
    Regex,
}

impl PurgeKind {
    pub const EVERY: [PurgeKind; 7] = [
        PurgeKind::Url,
        PurgeKind::Prefix,
        PurgeKind::Host,
        PurgeKind::All,
        PurgeKind::Tag,
        PurgeKind::Wildcard,
        PurgeKind::Regex,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PurgeKind::Url => "URL",
            PurgeKind::Prefix => "PREFIX",
            PurgeKind::Host => "HOST",
            PurgeKind::All => "ALL",
            PurgeKind::Tag => "TAG",
            PurgeKind::Wildcard => "WILDCARD",
            PurgeKind::Regex => "REGEX",
        }
    }

    pub fn parse(s: &str) -> Option<PurgeKind> {
        PurgeKind::EVERY
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s))
    }
}

impl std::fmt::Display for PurgeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Action {
    #[default]
    Invalidate,
    Delete,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Invalidate => "INVALIDATE",
            Action::Delete => "DELETE",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PurgeState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl PurgeState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            PurgeState::Succeeded | PurgeState::Failed | PurgeState::Cancelled
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TaskState {
    Running,
    Succeeded,
    Failed,
}

/// A validated, normalized purge request. Its fingerprint decides idempotency conflicts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeSpec {
    /// What the caller named: a provider or a group.
    pub provider: String,
    /// What that name resolved to.
    pub providers: Vec<String>,
    pub kind: PurgeKind,
    pub targets: Vec<String>,
    pub action: Action,
    pub hosts: Vec<String>,
    pub headers: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// The target a kind without targets (ALL) is tracked under.
pub const WHOLE_ZONE: &str = "*";

impl PurgeSpec {
    /// The targets each provider must purge; ALL has one implicit target.
    pub fn effective_targets(&self) -> Vec<String> {
        if self.kind == PurgeKind::All {
            vec![WHOLE_ZONE.to_owned()]
        } else {
            self.targets.clone()
        }
    }

    /// A stable digest of everything that defines the request, for idempotency comparisons.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut canonical = self.clone();
        canonical.idempotency_key = None;
        // The same targets in another order are the same purge.
        canonical.targets.sort_unstable();
        let bytes = serde_json::to_vec(&canonical).expect("spec serializes");
        hex::encode(Sha256::digest(bytes))
    }
}

/// One (provider, target) pair of a purge and how far it got.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unit {
    #[serde(rename = "p")]
    pub provider: String,
    #[serde(rename = "t")]
    pub target: String,
    #[serde(rename = "s")]
    pub status: UnitStatus,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum UnitStatus {
    Pending,
    /// Claimed by a dispatcher about to send it: from here on it can no longer be cancelled.
    /// The claim is written before the provider call, so a unit is either sent or cancelled,
    /// never both (a dispatcher that dies after claiming leaves it to be claimed and sent again).
    Sending,
    /// Carried by `tasks[task]`, waiting for the provider to finish it.
    Submitted {
        task: usize,
    },
    Succeeded,
    Failed {
        reason: String,
    },
    /// Withdrawn by CancelPurge before any dispatcher claimed it: never sent.
    Cancelled,
}

impl UnitStatus {
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            UnitStatus::Succeeded | UnitStatus::Failed { .. } | UnitStatus::Cancelled
        )
    }

    /// Waiting to be sent (claimed or not).
    pub fn is_unsent(&self) -> bool {
        matches!(self, UnitStatus::Pending | UnitStatus::Sending)
    }
}

/// One provider call as seen by one purge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub provider: String,
    pub provider_task_id: String,
    pub state: TaskState,
    pub target_count: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    pub submit_time: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetFailure {
    pub target: String,
    pub provider: String,
    pub reason: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub total: u32,
    pub succeeded: u32,
    pub failed: u32,
    pub pending: u32,
    pub cancelled: u32,
}

/// A purge as stored: the request, its units, the provider calls made for it. Its fields are
/// read everywhere but changed only by its methods (`record.rs`), which say whether anything
/// changed; stores wrap every change in [`PurgeRecord::apply`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeRecord {
    pub id: String,
    pub caller: String,
    pub spec: PurgeSpec,
    pub state: PurgeState,
    pub units: Vec<Unit>,
    pub tasks: Vec<TaskRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_time: Option<DateTime<Utc>>,
    /// When CancelPurge was first asked for this purge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_time: Option<DateTime<Utc>>,
    pub version: u64,
}

/// What a purge record says; its changes are in `record`.
impl PurgeRecord {
    pub fn progress(&self) -> Progress {
        let mut p = Progress {
            total: self.units.len() as u32,
            ..Progress::default()
        };
        for u in &self.units {
            match u.status {
                UnitStatus::Succeeded => p.succeeded += 1,
                UnitStatus::Failed { .. } => p.failed += 1,
                UnitStatus::Cancelled => p.cancelled += 1,
                UnitStatus::Pending | UnitStatus::Sending | UnitStatus::Submitted { .. } => {
                    p.pending += 1
                }
            }
        }
        p
    }

    pub fn failures(&self) -> Vec<TargetFailure> {
        self.units
            .iter()
            .filter_map(|u| match &u.status {
                UnitStatus::Failed { reason } => Some(TargetFailure {
                    target: u.target.clone(),
                    provider: u.provider.clone(),
                    reason: reason.clone(),
                }),
                _ => None,
            })
            .collect()
    }

    /// The (provider, target) pairs CancelPurge withdrew.
    pub fn cancelled(&self) -> impl Iterator<Item = &Unit> {
        self.units
            .iter()
            .filter(|u| u.status == UnitStatus::Cancelled)
    }

    /// True when every unit of `provider` has a final outcome.
    pub fn provider_done(&self, provider: &str) -> bool {
        self.units
            .iter()
            .filter(|u| u.provider == provider)
            .all(|u| u.status.is_terminal())
    }
}

/// A provider call that went out, as recorded on each purge it carried targets for.
#[derive(Clone, Copy, Debug)]
pub struct Submitted<'a> {
    pub provider: &'a str,
    pub task_id: &'a str,
    pub request_id: Option<&'a str>,
    /// Targets the provider refused outright, with its reason.
    pub rejected: &'a HashMap<&'a str, &'a str>,
}

/// What the queue carries: "purge `purge_id` still has work at `provider`".
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WorkItem {
    pub purge_id: String,
    pub provider: String,
}

/// The one spelling of a host name: lowercase, without the root's trailing dot.
pub fn normalize_host(h: &str) -> String {
    h.trim_end_matches('.').to_ascii_lowercase()
}
