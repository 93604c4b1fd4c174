//! Creates without an idempotency key on one Redis node, committed in groups: the creates
//! waiting when a commit starts go out as one `MULTI`/`EXEC` transaction, one round trip.
//!
//! Under load a create was one round trip of its own: a request through the multiplexed
//! connection, a `writev`, a read and a reply on both sides, for six commands. In a group those
//! are paid once, and the group writes each listing index with one `ZADD` of all its new ids
//! and publishes each distinct work wake-up once. Nothing waits to fill a group: a create that
//! finds no commit running goes out alone at once, and the group grows only while
//! `IN_FLIGHT` commits are already on their way.
//!
//! Each create in a group gets its own answer. A command that fails inside the transaction
//! (a key of the wrong type, say) fails the creates it was written for and no other; as with
//! any `MULTI`/`EXEC`, the transaction's other commands still run. A connection lost or a
//! timeout while the transaction is on its way leaves every create of the group unknown, as
//! it leaves one create sent alone: each caller is told the backend is unavailable, and a
//! create that did commit is still dispatched (its stream entries were written with it).
//! Two groups on their way at once may commit in either order.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ::redis::{RedisError, Value};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::backend::BackendError;
use crate::redis_state::{Shared, classify};

/// Creates in one transaction, at most: a few hundred commands, well under a millisecond of
/// Redis's time for records of ordinary size, so no other client waits long behind it.
const GROUP: usize = 64;

/// Record bytes in one transaction, at most: a record can reach megabytes under the default
/// limits, and Redis runs a transaction whole, so a group of large records is cut into
/// several transactions, sent one after another.
const GROUP_BYTES: usize = 1 << 20;

/// Transactions on their way at once: up to `IN_FLIGHT` x `GROUP` creates, as many as a
/// busy replica has open. With 2 under `bench/h2load.sh`'s 512 open calls, creates waited
/// for a slot and calls/s fell by a sixth; with 8 they match a create per round trip.
const IN_FLIGHT: usize = 8;

/// How often one replica prunes a listing index and refreshes its ttl, at most: by the first
/// create into that index after this much time. Every create did both, which were four of the
/// create script's ten Redis calls. So an entry past the span stays until that create, and an
/// index that vanished (evicted, flushed) within this much of an upkeep and was recreated has
/// no ttl until that create either.
const INDEX_UPKEEP: Duration = Duration::from_secs(1);

/// Listing indexes whose upkeep one replica remembers: more (callers x shards) forget them
/// all, which costs one more upkeep each.
const UPKEEP_KEYS: usize = 4096;

/// One purge's create, as the group commit writes it.
pub(super) struct Created {
    pub id: String,
    pub record_key: String,
    pub json: Vec<u8>,
    pub version: u64,
    /// The caller's and everyone's listing index.
    pub indexes: [String; 2],
    pub streams: Vec<String>,
    /// The work wake-up: `<shard> <provider>...`.
    pub work: String,
}

struct Pending {
    create: Created,
    done: oneshot::Sender<Result<(), BackendError>>,
}

/// When this replica last pruned each listing index and refreshed its ttl.
#[derive(Default)]
pub(super) struct Upkeep(Mutex<HashMap<String, Instant>>);

impl Upkeep {
    /// Which of `indexes` are due for upkeep at `now`.
    pub(super) fn due<const N: usize>(&self, indexes: [&str; N], now: Instant) -> [bool; N] {
        let last = self.0.lock().expect("upkeep lock");
        indexes.map(|index| {
            last.get(index)
                .is_none_or(|at| now.duration_since(*at) >= INDEX_UPKEEP)
        })
    }

    /// Notes the upkeep of `indexes` done at `now`: only once a create that carried it has
    /// succeeded, so a failed or refused one leaves it due.
    pub(super) fn done<'a>(&self, indexes: impl IntoIterator<Item = &'a str>, now: Instant) {
        let mut last = self.0.lock().expect("upkeep lock");
        for index in indexes {
            if last.len() >= UPKEEP_KEYS {
                last.clear();
            }
            last.insert(index.to_owned(), now);
        }
    }
}

/// What a commit needs besides the creates.
#[derive(Clone)]
pub(super) struct Context {
    pub shared: Arc<Shared>,
    pub upkeep: Arc<Upkeep>,
    pub record_ttl: Duration,
    /// How long a purge stays in the listing indexes.
    pub index_span: Duration,
}

/// The way into the group commit of one store: started on the first create (inside the
/// runtime), ended when the store is dropped.
pub(super) struct Committer {
    context: Context,
    tx: std::sync::OnceLock<mpsc::Sender<Pending>>,
}

impl Committer {
    pub(super) fn new(context: Context) -> Committer {
        Committer {
            context,
            tx: std::sync::OnceLock::new(),
        }
    }

    /// Writes `create` with whatever other creates are waiting; answers once it is committed.
    pub(super) async fn create(&self, create: Created) -> Result<(), BackendError> {
        let tx = self.tx.get_or_init(|| {
            let (tx, rx) = mpsc::channel(4 * GROUP);
            tokio::spawn(run(rx, self.context.clone()));
            tx
        });
        let (done, answer) = oneshot::channel();
        let gone = || BackendError::Unavailable("the create committer stopped".into());
        tx.send(Pending { create, done })
            .await
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

/// Takes the waiting creates in groups and commits each group, `IN_FLIGHT` at a time, until
/// every sender is gone.
async fn run(mut rx: mpsc::Receiver<Pending>, context: Context) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut group = Vec::with_capacity(GROUP);
        if rx.recv_many(&mut group, GROUP).await == 0 {
            return;
        }
        let context = context.clone();
        tokio::spawn(async move {
            // A create whose caller gave up (its call cancelled) is left unwritten: no one
            // was told it was accepted.
            group.retain(|p| !p.done.is_closed());
            while !group.is_empty() {
                let mut bytes = 0;
                let cut = group
                    .iter()
                    .position(|p| {
                        bytes += p.create.json.len();
                        bytes > GROUP_BYTES
                    })
                    .map_or(group.len(), |at| at.max(1));
                let rest = group.split_off(cut);
                commit(&context, group).await;
                group = rest;
            }
            drop(slot);
        });
    }
}

/// Whose create a command of the transaction was written for.
enum Owner {
    One(usize),
    /// A command shared by several creates: an index's `ZADD` and upkeep, a wake-up.
    Many(Vec<usize>),
}

impl Owner {
    fn each(&self) -> &[usize] {
        match self {
            Owner::One(i) => std::slice::from_ref(i),
            Owner::Many(all) => all,
        }
    }
}

async fn commit(context: &Context, group: Vec<Pending>) {
    let now = Instant::now();
    let shared = &context.shared;
    let mut pipe = ::redis::pipe();
    pipe.atomic().ignore_errors();
    let mut owners: Vec<Owner> = Vec::new();
    for (i, p) in group.iter().enumerate() {
        let c = &p.create;
        pipe.cmd("HSET")
            .arg(&c.record_key)
            .arg("v")
            .arg(c.version)
            .arg("json")
            .arg(c.json.as_slice());
        pipe.cmd("PEXPIRE")
            .arg(&c.record_key)
            .arg(ms(context.record_ttl));
        owners.extend([Owner::One(i), Owner::One(i)]);
        for stream in &c.streams {
            pipe.cmd("XADD")
                .arg(stream)
                .arg("*")
                .arg("purge")
                .arg(&c.id);
            owners.push(Owner::One(i));
        }
    }
    // Each index once, with every id the group adds to it; in key order, so the commands are
    // the same whatever order the creates came in.
    let mut indexes: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    let mut wakeups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, p) in group.iter().enumerate() {
        for index in &p.create.indexes {
            indexes.entry(index).or_default().push(i);
        }
        if !p.create.streams.is_empty() {
            wakeups.entry(&p.create.work).or_default().push(i);
        }
    }
    let mut kept_up: Vec<(&str, Vec<usize>)> = Vec::new();
    for (index, members) in indexes {
        let zadd = pipe.cmd("ZADD").arg(index);
        for &i in &members {
            zadd.arg(0).arg(&group[i].create.id);
        }
        owners.push(Owner::Many(members.clone()));
        let [due] = context.upkeep.due([index], now);
        if due {
            pipe.cmd("ZREMRANGEBYLEX")
                .arg(index)
                .arg("-")
                .arg(index_cutoff(context.index_span));
            pipe.cmd("PEXPIRE").arg(index).arg(ms(context.index_span));
            owners.extend([Owner::Many(members.clone()), Owner::Many(members.clone())]);
            kept_up.push((index, members));
        }
    }
    for (work, members) in wakeups {
        pipe.cmd("PUBLISH")
            .arg(shared.keys.work_channel())
            .arg(work);
        owners.push(Owner::Many(members));
    }
    let replies: Result<Vec<Value>, BackendError> = shared
        .with(|mut conn| async move { pipe.query_async(&mut conn).await })
        .await;
    let mut failed: Vec<Option<BackendError>> = (0..group.len()).map(|_| None).collect();
    match replies {
        Ok(replies) if replies.len() == owners.len() => {
            for (reply, owner) in replies.into_iter().zip(&owners) {
                if let Value::ServerError(e) = reply {
                    let e = classify(RedisError::from(e));
                    for &i in owner.each() {
                        failed[i].get_or_insert_with(|| e.again());
                    }
                }
            }
        }
        Ok(replies) => {
            let e = BackendError::Corrupt(format!(
                "a create transaction of {} commands answered {}",
                owners.len(),
                replies.len()
            ));
            failed.iter_mut().for_each(|f| *f = Some(e.again()));
        }
        Err(e) => failed.iter_mut().for_each(|f| *f = Some(e.again())),
    }
    let kept_up = kept_up
        .into_iter()
        .filter(|(_, members)| members.iter().all(|&i| failed[i].is_none()));
    context.upkeep.done(kept_up.map(|(index, _)| index), now);
    for (p, failed) in group.into_iter().zip(failed) {
        let _ = p.done.send(failed.map_or(Ok(()), Err));
    }
}

/// The exclusive lex bound below which index entries are pruned: the UUIDv7 time prefix
/// (`xxxxxxxx-xxxx`, 48 bits of milliseconds) of `span` ago.
pub(super) fn index_cutoff(span: Duration) -> String {
    let ms = super::now_ms().saturating_sub(span.as_millis() as u64);
    let hex = format!("{ms:012x}");
    format!("({}-{}", &hex[..8], &hex[8..12])
}

/// A duration in whole milliseconds for `PEXPIRE`, at least one.
pub(super) fn ms(d: Duration) -> u64 {
    (d.as_millis() as u64).max(1)
}
