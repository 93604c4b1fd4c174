//! The stored form of a purge record, shared by both backends: short field names, nothing
//! stored twice (units as statuses in the order `PurgeRecord::new` makes them, providers of
//! tasks as indexes), empty fields left out, times as nanoseconds. Records written before
//! this form (the plain JSON of `PurgeRecord`) still read.

use std::borrow::Cow;
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::{
    Action, PurgeKind, PurgeRecord, PurgeSpec, PurgeState, TaskRecord, TaskState, Unit, UnitStatus,
    WHOLE_ZONE,
};

/// Why a stored record could not be read back.
#[derive(Debug, thiserror::Error)]
#[error("stored purge record does not decode: {0}")]
pub struct DecodeError(#[source] serde_json::Error);

/// Borrowed from the record when writing, owned when reading: encoding copies no string.
#[derive(Serialize, Deserialize)]
struct Compact<'a> {
    /// Empty when the container's key already is the id (memory backend).
    #[serde(default, skip_serializing_if = "str_empty")]
    i: Cow<'a, str>,
    c: Cow<'a, str>,
    p: Cow<'a, str>,
    /// The resolved providers, left out when they are just `p`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ps: Option<Cow<'a, [String]>>,
    k: PurgeKind,
    #[serde(default, skip_serializing_if = "slice_empty")]
    t: Cow<'a, [String]>,
    #[serde(default, skip_serializing_if = "is_default")]
    a: Action,
    #[serde(default, skip_serializing_if = "slice_empty")]
    h: Cow<'a, [String]>,
    #[serde(default, skip_serializing_if = "map_empty")]
    hd: Cow<'a, BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "map_empty")]
    l: Cow<'a, BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ik: Option<Cow<'a, str>>,
    s: PurgeState,
    /// Unit statuses, one per (provider, effective target) in `PurgeRecord::new`'s order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    u: Vec<Status<'a>>,
    /// Units in full, only when they are not in that order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    uf: Option<Cow<'a, [Unit]>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    tk: Vec<Task<'a>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    e: Option<Cow<'a, str>>,
    /// Create time, nanoseconds since the epoch; the other times relative to it.
    ct: i64,
    #[serde(default, skip_serializing_if = "is_default")]
    ud: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fd: Option<i64>,
    /// Cancel time relative to the create time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    xd: Option<i64>,
    v: u64,
}

/// A unit status in a few bytes: "P", "S" (sending), "D", "C" (cancelled), {"T":task},
/// {"F":reason}.
#[derive(Serialize, Deserialize)]
enum Status<'a> {
    P,
    S,
    C,
    D,
    T(usize),
    F(Cow<'a, str>),
}

#[derive(Serialize, Deserialize)]
struct Task<'a> {
    /// Index into the purge's providers, or the name in `pn` when it is not one of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    p: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pn: Option<Cow<'a, str>>,
    id: Cow<'a, str>,
    s: TaskState,
    n: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    e: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    r: Option<Cow<'a, str>>,
    /// Submit time relative to the purge's create time, nanoseconds.
    at: i64,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

#[allow(clippy::ptr_arg)] // serde hands `skip_serializing_if` the field's own type
fn str_empty(v: &Cow<'_, str>) -> bool {
    v.is_empty()
}

#[allow(clippy::ptr_arg)] // serde hands `skip_serializing_if` the field's own type
fn slice_empty<T: Clone>(v: &Cow<'_, [T]>) -> bool {
    v.is_empty()
}

#[allow(clippy::ptr_arg)] // serde hands `skip_serializing_if` the field's own type
fn map_empty(v: &Cow<'_, BTreeMap<String, String>>) -> bool {
    v.is_empty()
}

fn nanos(t: DateTime<Utc>) -> i64 {
    t.timestamp_nanos_opt().unwrap_or(i64::MAX)
}

fn time(ns: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_nanos(ns)
}

fn status_of(s: &UnitStatus) -> Status<'_> {
    match s {
        UnitStatus::Pending => Status::P,
        UnitStatus::Sending => Status::S,
        UnitStatus::Cancelled => Status::C,
        UnitStatus::Succeeded => Status::D,
        UnitStatus::Submitted { task } => Status::T(*task),
        UnitStatus::Failed { reason } => Status::F(Cow::Borrowed(reason)),
    }
}

fn unit_status(s: Status) -> UnitStatus {
    match s {
        Status::P => UnitStatus::Pending,
        Status::S => UnitStatus::Sending,
        Status::C => UnitStatus::Cancelled,
        Status::D => UnitStatus::Succeeded,
        Status::T(task) => UnitStatus::Submitted { task },
        Status::F(reason) => UnitStatus::Failed {
            reason: reason.into_owned(),
        },
    }
}

/// The (provider, target) pairs `PurgeRecord::new` makes for `spec`, in its order, without
/// copying a target (an encode runs at every change of a purge).
fn canonical_pairs(spec: &PurgeSpec) -> impl Iterator<Item = (&str, &str)> {
    let all = spec.kind == PurgeKind::All;
    let targets = move || {
        all.then_some(WHOLE_ZONE).into_iter().chain(
            spec.targets
                .iter()
                .map(String::as_str)
                .filter(move |_| !all),
        )
    };
    spec.providers
        .iter()
        .flat_map(move |p| targets().map(move |t| (p.as_str(), t)))
}

/// The stored bytes of `record`; without its id when `with_id` is false (the caller keeps the
/// id as the key and passes it back to `decode`).
pub fn encode(record: &PurgeRecord, with_id: bool) -> Vec<u8> {
    let PurgeRecord {
        id,
        caller,
        spec,
        state,
        units,
        tasks,
        error,
        create_time,
        update_time,
        finish_time,
        cancel_time,
        version,
    } = record;
    let in_order = units.len() == canonical_pairs(spec).count()
        && canonical_pairs(spec)
            .zip(units)
            .all(|((p, t), u)| u.provider == p && u.target == t);
    let ct = nanos(*create_time);
    let compact = Compact {
        i: Cow::Borrowed(if with_id { id } else { "" }),
        c: Cow::Borrowed(caller),
        p: Cow::Borrowed(&spec.provider),
        ps: (spec.providers != [spec.provider.as_str()]).then_some(Cow::Borrowed(&spec.providers)),
        k: spec.kind,
        t: Cow::Borrowed(&spec.targets),
        a: spec.action,
        h: Cow::Borrowed(&spec.hosts),
        hd: Cow::Borrowed(&spec.headers),
        l: Cow::Borrowed(&spec.labels),
        ik: spec.idempotency_key.as_deref().map(Cow::Borrowed),
        s: *state,
        u: if in_order {
            units.iter().map(|u| status_of(&u.status)).collect()
        } else {
            Vec::new()
        },
        uf: (!in_order).then_some(Cow::Borrowed(units)),
        tk: tasks
            .iter()
            .map(|t| {
                let index = spec.providers.iter().position(|p| *p == t.provider);
                Task {
                    p: index,
                    pn: index.is_none().then_some(Cow::Borrowed(&t.provider)),
                    id: Cow::Borrowed(&t.provider_task_id),
                    s: t.state,
                    n: t.target_count,
                    e: t.error.as_deref().map(Cow::Borrowed),
                    r: t.request_id.as_deref().map(Cow::Borrowed),
                    at: nanos(t.submit_time).saturating_sub(ct),
                }
            })
            .collect(),
        e: error.as_deref().map(Cow::Borrowed),
        ct,
        ud: nanos(*update_time).saturating_sub(ct),
        fd: finish_time.map(|f| nanos(f).saturating_sub(ct)),
        xd: cancel_time.map(|f| nanos(f).saturating_sub(ct)),
        v: *version,
    };
    serde_json::to_vec(&compact).expect("records serialize")
}

/// The record stored as `bytes` (this form or the older plain JSON); `id` fills in an id
/// stored without one.
pub fn decode(bytes: &[u8], id: &str) -> Result<PurgeRecord, DecodeError> {
    let c: Compact = match serde_json::from_slice(bytes) {
        Ok(c) => c,
        // Written before the compact form: `{"id": ..., "spec": ..., ...}`.
        Err(compact) => {
            return serde_json::from_slice::<PurgeRecord>(bytes).map_err(|_| DecodeError(compact));
        }
    };
    let provider = c.p.into_owned();
    let spec = PurgeSpec {
        providers: c.ps.map_or_else(|| vec![provider.clone()], Cow::into_owned),
        provider,
        kind: c.k,
        targets: c.t.into_owned(),
        action: c.a,
        hosts: c.h.into_owned(),
        headers: c.hd.into_owned(),
        labels: c.l.into_owned(),
        idempotency_key: c.ik.map(Cow::into_owned),
    };
    let units = match c.uf {
        Some(units) => units.into_owned(),
        None => canonical_pairs(&spec)
            .zip(c.u)
            .map(|((p, t), s)| Unit {
                provider: p.to_owned(),
                target: t.to_owned(),
                status: unit_status(s),
            })
            .collect(),
    };
    let tasks =
        c.tk.into_iter()
            .map(|t| TaskRecord {
                provider: t
                    .pn
                    .map(Cow::into_owned)
                    .or_else(|| t.p.and_then(|i| spec.providers.get(i).cloned()))
                    .unwrap_or_default(),
                provider_task_id: t.id.into_owned(),
                state: t.s,
                target_count: t.n,
                error: t.e.map(Cow::into_owned),
                request_id: t.r.map(Cow::into_owned),
                submit_time: time(c.ct.saturating_add(t.at)),
            })
            .collect();
    Ok(PurgeRecord {
        id: if c.i.is_empty() {
            id.to_owned()
        } else {
            c.i.into_owned()
        },
        caller: c.c.into_owned(),
        spec,
        state: c.s,
        units,
        tasks,
        error: c.e.map(Cow::into_owned),
        create_time: time(c.ct),
        update_time: time(c.ct.saturating_add(c.ud)),
        finish_time: c.fd.map(|d| time(c.ct.saturating_add(d))),
        cancel_time: c.xd.map(|d| time(c.ct.saturating_add(d))),
        version: c.v,
    })
}

/// A record as a backend stored it, or why it cannot be read.
pub fn decode_stored(bytes: &[u8]) -> Result<PurgeRecord, crate::backend::BackendError> {
    decode(bytes, "")
        .map_err(|e| crate::backend::BackendError::Corrupt(format!("purge record: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished() -> PurgeRecord {
        let spec = PurgeSpec {
            provider: "all".into(),
            providers: vec!["sandbox".into(), "edge".into()],
            kind: PurgeKind::Url,
            targets: vec![
                "https://www.example.com/app.js".into(),
                "https://www.example.com/app.css".into(),
            ],
            action: Action::Delete,
            hosts: Vec::new(),
            headers: BTreeMap::from([("accept-encoding".into(), "gzip".into())]),
            labels: BTreeMap::from([("ticket".into(), "OPS-42".into())]),
            idempotency_key: Some("deploy-1".into()),
        };
        let now = Utc::now();
        let mut r = PurgeRecord::new(uuid::Uuid::now_v7().to_string(), "ci".into(), spec, now);
        r.units[0].status = UnitStatus::Succeeded;
        r.units[1].status = UnitStatus::Submitted { task: 1 };
        r.units[2].status = UnitStatus::Failed {
            reason: "denied".into(),
        };
        r.units[3].status = UnitStatus::Cancelled;
        r.cancel_time = Some(now + chrono::Duration::milliseconds(500));
        r.tasks = vec![
            TaskRecord {
                provider: "sandbox".into(),
                provider_task_id: "t-1".into(),
                state: TaskState::Succeeded,
                target_count: 2,
                error: None,
                request_id: Some("req-1".into()),
                submit_time: now + chrono::Duration::milliseconds(120),
            },
            TaskRecord {
                provider: "gone".into(),
                provider_task_id: "t-2".into(),
                state: TaskState::Failed,
                target_count: 1,
                error: Some("boom".into()),
                request_id: None,
                submit_time: now,
            },
        ];
        r.state = PurgeState::Failed;
        r.error = Some("1 of 4 targets failed".into());
        r.update_time = now + chrono::Duration::seconds(1);
        r.finish_time = Some(r.update_time);
        r.version = 7;
        r
    }

    #[test]
    fn a_record_reads_back_as_written_with_or_without_its_id() {
        let r = finished();
        assert_eq!(decode(&encode(&r, true), "other").unwrap(), r);
        assert_eq!(decode(&encode(&r, false), &r.id).unwrap(), r);
    }

    #[test]
    fn units_out_of_the_usual_order_are_kept_whole() {
        let mut r = finished();
        r.units.swap(0, 3);
        assert_eq!(decode(&encode(&r, true), "").unwrap(), r);
    }

    #[test]
    fn records_written_as_plain_json_still_read() {
        let r = finished();
        let old = serde_json::to_vec(&r).unwrap();
        assert_eq!(decode(&old, "ignored").unwrap(), r);
    }

    #[test]
    fn garbage_is_an_error_naming_the_problem() {
        let e = decode(b"{\"x\":1}", "id").unwrap_err();
        assert!(e.to_string().contains("does not decode"), "{e}");
    }

    #[test]
    fn the_compact_form_is_much_smaller_than_plain_json() {
        let mut r = finished();
        r.spec.providers = vec!["sandbox".into()];
        r.spec.provider = "sandbox".into();
        r.units.truncate(2);
        r.tasks.truncate(1);
        let plain = serde_json::to_vec(&r).unwrap().len();
        let compact = encode(&r, false).len();
        assert!(compact * 2 < plain, "compact {compact} vs plain {plain}");
    }
}
