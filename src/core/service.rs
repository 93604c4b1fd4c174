//! The purge use cases: create, get, watch, cancel, list. The gRPC adapters call these and nothing else.

pub use super::settings::CoreSettings;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::Stream;
use tokio_util::sync::CancellationToken;

use super::auth::{Caller, Callers};
use super::error::{Error, FieldViolation};
use super::estimate::{Backlogs, queued_start};
use super::list::{Filter, PageTokens};
use super::validate::{CreateRequest, validate};
use super::watch::{Subscription, WatchHub};
use crate::limiter::{Charge, Decision, Limit, Limiter};
use crate::model::WorkItem;
use crate::model::{PurgeRecord, PurgeSpec};
use crate::providers::Registry;
use crate::queue::Queue;
use crate::store::{CreateOutcome, IdempotencyClaim, ListQuery, Store};

/// A purge id as stored (lowercase, hyphenated), whichever UUID spelling the caller used.
fn canonical_id(id: &str) -> Result<String, Error> {
    uuid::Uuid::parse_str(id.trim())
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| {
            Error::InvalidArgument(vec![FieldViolation::new(
                "id",
                format!("{} is not a purge id (a UUID)", super::validate::quote(id)),
            )])
        })
}

/// The caller's answer for a create outcome.
fn answer(outcome: CreateOutcome, key: Option<String>) -> Result<PurgeRecord, Error> {
    match outcome {
        CreateOutcome::Created(r) | CreateOutcome::Existing(r) => Ok(r),
        CreateOutcome::Conflict { existing_id } => Err(Error::IdempotencyKeyReused {
            key: key.unwrap_or_default(),
            existing_id,
        }),
        CreateOutcome::AtCapacity { limit, retry_after } => {
            Err(Error::AtCapacity { limit, retry_after })
        }
    }
}

/// A purge as answered: the record and, while some of its targets are not sent yet, when the
/// next of them is estimated to go out (computed as the answer is made).
#[derive(Clone, Debug)]
pub struct Seen {
    pub record: PurgeRecord,
    pub estimated_start: Option<DateTime<Utc>>,
}

#[derive(Clone)]
pub struct PurgeCore {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    limiter: Arc<dyn Limiter>,
    registry: Registry,
    /// The providers' backlogs, for start estimates.
    backlogs: Backlogs,
    hub: WatchHub,
    callers: Callers,
    settings: CoreSettings,
    /// Cancelled at shutdown: open watches end with UNAVAILABLE.
    closing: CancellationToken,
    /// Signs page tokens; read from the store once.
    page_secret: tokio::sync::OnceCell<Vec<u8>>,
}

impl PurgeCore {
    #[allow(clippy::too_many_arguments)] // the backends, the providers, and how to serve
    pub fn new(
        store: Arc<dyn Store>,
        queue: Arc<dyn Queue>,
        limiter: Arc<dyn Limiter>,
        registry: Registry,
        hub: WatchHub,
        callers: Callers,
        settings: CoreSettings,
        closing: CancellationToken,
    ) -> PurgeCore {
        PurgeCore {
            inner: Arc::new(Inner {
                store,
                limiter,
                registry,
                backlogs: Backlogs::new(queue),
                hub,
                callers,
                settings,
                closing,
                page_secret: tokio::sync::OnceCell::new(),
            }),
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// The caller an `authorization` header names.
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
        cert_sans: &[String],
    ) -> Result<Caller, Error> {
        self.inner.callers.identify(authorization, cert_sans)
    }

    /// `record` as answered now: with its estimated start while it has unsent targets.
    async fn seen(&self, record: PurgeRecord) -> Seen {
        let inner = &self.inner;
        let estimated_start = queued_start(
            &record,
            &inner.registry,
            &inner.backlogs,
            &inner.settings,
            Utc::now(),
        )
        .await;
        Seen {
            record,
            estimated_start,
        }
    }

    /// Validates, checks quotas and the caller's rate, then records and enqueues in one step.
    pub async fn create(&self, caller: &Caller, req: CreateRequest) -> Result<Seen, Error> {
        let record = self.record(caller, req).await?;
        Ok(self.seen(record).await)
    }

    async fn record(&self, caller: &Caller, req: CreateRequest) -> Result<PurgeRecord, Error> {
        let inner = &self.inner;
        let spec = validate(req, &inner.registry, inner.settings.limits)?;
        caller.authorize(&spec)?;
        let claim = spec.idempotency_key.as_ref().map(|key| IdempotencyClaim {
            scope: format!("{}\u{1f}{key}", caller.name),
            fingerprint: spec.fingerprint(),
            retention: inner.settings.idempotency_retention,
        });
        if let Err(refused) = self.admit(caller, &spec).await {
            // A retry of a request already accepted gets its purge, whatever the quotas and
            // rates say now: they were charged when it was accepted.
            if let Some(claim) = &claim
                && let Some(outcome) = inner.store.replay(claim).await?
            {
                return answer(outcome, spec.idempotency_key);
            }
            return Err(refused);
        }
        let id = uuid::Uuid::now_v7().to_string();
        let work = spec
            .providers
            .iter()
            .map(|p| WorkItem {
                purge_id: id.clone(),
                provider: p.clone(),
            })
            .collect();
        let key = spec.idempotency_key.clone();
        let record = PurgeRecord::new(id, caller.name.clone(), spec, chrono::Utc::now());
        let outcome = inner.store.create(record, claim, work).await?;
        if let CreateOutcome::Created(r) = &outcome {
            // Per purge, so DEBUG: at INFO the log would grow with the request rate; the provider
            // calls are logged at INFO, and ListPurges is the record of every purge.
            tracing::debug!(purge_id = %r.id, kind = %r.spec.kind, targets = r.units.len(), "purge accepted");
        }
        answer(outcome, key)
    }

    /// CreatePurge with `validate_only`: validates and authorizes like `create`, then answers
    /// the purge as it would be recorded (no id) and its plan. Records and charges nothing.
    pub async fn plan(
        &self,
        caller: &Caller,
        req: CreateRequest,
    ) -> Result<(PurgeRecord, super::plan::Plan), Error> {
        let inner = &self.inner;
        let spec = validate(req, &inner.registry, inner.settings.limits)?;
        caller.authorize(&spec)?;
        let now = chrono::Utc::now();
        let plan = super::plan::plan(
            &spec,
            &inner.registry,
            &inner.backlogs,
            &inner.settings,
            now,
        )
        .await;
        Ok((
            PurgeRecord::new(String::new(), caller.name.clone(), spec, now),
            plan,
        ))
    }

    /// The day's quota and the caller's rate, for a new purge.
    async fn admit(&self, caller: &Caller, spec: &PurgeSpec) -> Result<(), Error> {
        let inner = &self.inner;
        for name in &spec.providers {
            let handle = inner.registry.get(name).expect("resolved provider exists");
            let remaining = handle.known_quota(spec.kind).remaining;
            if remaining.is_some_and(|r| r < spec.effective_targets().len() as u64) {
                return Err(Error::QuotaExhausted {
                    provider: name.clone(),
                    kind: spec.kind,
                    resets_in: handle.exhausted_for(spec.kind),
                });
            }
        }
        if let Some(rate) = inner.settings.caller_rate {
            let charge = Charge {
                key: format!("caller:{}", caller.name),
                limit: Limit::Gcra {
                    rate,
                    burst: rate.count,
                },
                cost: 1,
            };
            match inner.limiter.acquire(&[charge]).await? {
                Decision::Granted => {}
                Decision::Wait(retry_after) | Decision::Exhausted(retry_after) => {
                    return Err(Error::CallerRateLimited {
                        caller: caller.name.clone(),
                        limit: rate,
                        retry_after,
                    });
                }
            }
        }
        Ok(())
    }

    pub async fn get(&self, caller: &Caller, id: &str) -> Result<Seen, Error> {
        let record = self.read(caller, id).await?;
        Ok(self.seen(record).await)
    }

    /// The record of `id` if `caller` may read it.
    async fn read(&self, caller: &Caller, id: &str) -> Result<PurgeRecord, Error> {
        let id = canonical_id(id)?;
        match self.inner.store.get(&id).await? {
            Some(r) if caller.may_read(&r) => Ok(r),
            Some(_) => Err(Error::NotFound { id }),
            None => Err(self.not_found(id)),
        }
    }

    /// CancelPurge: withdraws the units no dispatcher has claimed, through the same
    /// compare-and-set as the dispatcher's claim, so each unit is either sent or cancelled.
    /// Idempotent; a finished purge is returned as it is.
    pub async fn cancel(&self, caller: &Caller, id: &str) -> Result<Seen, Error> {
        let record = self.read(caller, id).await?;
        let updated = self
            .inner
            .store
            .update(&record.id, &|r| r.cancel(chrono::Utc::now()))
            .await?;
        let record = updated.ok_or_else(|| self.not_found(record.id.clone()))?;
        tracing::info!(purge_id = %record.id, state = ?record.state, cancelled = record.progress().cancelled, "purge cancel asked");
        Ok(self.seen(record).await)
    }

    /// ListPurges: one page of the caller's purges (everyone's in anonymous mode), newest
    /// first, and the token of the next page (`None` on the last).
    pub async fn list(
        &self,
        caller: &Caller,
        filter: &str,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<Seen>, Option<String>), Error> {
        let limit = super::list::page_size(page_size)?;
        let parsed = Filter::parse(filter)?;
        let secret = self
            .inner
            .page_secret
            .get_or_try_init(|| self.inner.store.shared_secret())
            .await?;
        let tokens = PageTokens {
            secret,
            caller: &caller.name,
            filter,
        };
        let before = (!page_token.is_empty())
            .then(|| tokens.check(page_token))
            .transpose()?;
        let keep = move |r: &PurgeRecord| parsed.matches(r);
        let page = self
            .inner
            .store
            .list(ListQuery {
                caller: caller.list_scope(),
                before: before.as_deref(),
                limit,
                keep: &keep,
            })
            .await?;
        let next = page
            .more
            .then(|| page.records.last().map(|r| tokens.issue(&r.id)))
            .flatten();
        let mut seen = Vec::with_capacity(page.records.len());
        for r in page.records {
            seen.push(self.seen(r).await);
        }
        Ok((seen, next))
    }

    /// NOT_FOUND for a purge the store does not have, saying so when it aged out.
    fn not_found(&self, id: String) -> Error {
        if self.inner.store.aged_out(&id) {
            Error::AgedOut { id }
        } else {
            Error::NotFound { id }
        }
    }

    /// The current snapshot, then each newer version, ending after a terminal state. On
    /// shutdown the stream's last item is `Error::ShuttingDown`.
    ///
    /// The stream does its work when polled: no task and no channel per watch, so an open
    /// watch costs its state and the HTTP/2 stream, nothing more.
    pub async fn watch(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<impl Stream<Item = Result<Seen, Error>> + Send + 'static, Error> {
        // Subscribed before the first read, so no change after it goes unnoticed.
        let id = canonical_id(id)?;
        let changes = self.inner.hub.subscribe(&id);
        let first = self.read(caller, &id).await?;
        let state = WatchState {
            core: self.clone(),
            changes,
            last: first.version,
            done: false,
            first: Some(Box::new(first)),
        };
        Ok(futures::stream::unfold(state, WatchState::next))
    }
}

/// Where one watch is: what it last sent, whether it is over. Kept small, one per open
/// stream: the id is the subscription's, the first record boxed until it is sent.
struct WatchState {
    core: PurgeCore,
    changes: Subscription,
    last: u64,
    done: bool,
    first: Option<Box<PurgeRecord>>,
}

impl WatchState {
    /// The next message: the record (with its estimated start, computed now), or the error
    /// that ends the stream.
    async fn next(mut self) -> Option<(Result<Seen, Error>, WatchState)> {
        if let Some(first) = self.first.take() {
            self.done = first.state.is_terminal();
            let seen = self.core.seen(*first).await;
            return Some((Ok(seen), self));
        }
        let resync = self.core.inner.settings.watch_resync;
        while !self.done {
            tokio::select! {
                _ = self.core.inner.closing.cancelled() => {
                    self.done = true;
                    return Some((Err(Error::ShuttingDown), self));
                }
                _ = self.changes.changed() => {}
                _ = tokio::time::sleep(resync) => {}
            }
            match self.core.inner.store.get(self.changes.id()).await {
                Ok(Some(r)) if r.version > self.last => {
                    self.last = r.version;
                    self.done = r.state.is_terminal();
                    let seen = self.core.seen(r).await;
                    return Some((Ok(seen), self));
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    // Expired or removed while watched.
                    self.done = true;
                    let id = self.changes.id().to_owned();
                    return Some((Err(self.core.not_found(id)), self));
                }
                Err(e) => {
                    tracing::warn!(purge_id = %self.changes.id(), error = %e, "watch re-read failed; retrying")
                }
            }
        }
        None
    }
}
