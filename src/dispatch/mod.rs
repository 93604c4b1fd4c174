//! The dispatcher, one per replica and provider: claims queued work, packs targets into
//! provider batches per lane, waits for the provider's shared budget, submits, follows tasks
//! to completion and records every outcome on the purges.
//!
//! Its parts, each a type of its own: `intake` (queue -> lanes and followed tasks), `outbox`
//! and `lanes` (targets waiting), `flush` (lanes -> submits), `submit` (one batch),
//! `inflight` (followed tasks and their poll schedule), `poll`, `budget` (rates and daily
//! quotas), `records` (outcomes -> purge records, acks). Only this module wires them.

mod budget;
mod flush;
mod inflight;
mod intake;
pub mod lanes;
mod outbox;
mod poll;
mod records;
mod submit;

use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::DispatchConfig;
use crate::limiter::Limiter;
use crate::providers::{ProviderHandle, Registry};
use crate::queue::Queue;
use crate::store::Store;
use budget::Budget;
use flush::Flusher;
use inflight::Tasks;
use intake::Intake;
use outbox::Outbox;
use poll::Poller;
use records::Records;
use submit::Submitter;

/// How often each replica re-reads the per-call caps every replica learned from refusals.
const LEARNED_CAPS_REFRESH: std::time::Duration = std::time::Duration::from_secs(1);

/// Starts one dispatcher per provider; they stop when `stop` is cancelled.
#[allow(clippy::too_many_arguments)] // the backends, the providers, and how to run them
pub fn spawn(
    store: Arc<dyn Store>,
    queue: Arc<dyn Queue>,
    limiter: Arc<dyn Limiter>,
    registry: &Registry,
    settings: DispatchConfig,
    consumer: String,
    stop: CancellationToken,
    metrics: crate::metrics::Metrics,
) -> JoinSet<()> {
    let mut set = JoinSet::new();
    let backends = Backends {
        store,
        queue,
        limiter,
    };
    for handle in registry.handles() {
        Dispatcher::new(
            handle.clone(),
            &backends,
            &settings,
            &consumer,
            &stop,
            &metrics,
        )
        .start(&mut set);
    }
    set
}

/// The shared backends every provider's dispatcher uses.
struct Backends {
    store: Arc<dyn Store>,
    queue: Arc<dyn Queue>,
    limiter: Arc<dyn Limiter>,
}

/// One provider's dispatcher: its four loops, wired to the state they share.
struct Dispatcher {
    intake: Intake,
    flusher: Flusher,
    poller: Poller,
    budget: Budget,
    quota_refresh: std::time::Duration,
}

impl Dispatcher {
    fn new(
        provider: ProviderHandle,
        backends: &Backends,
        settings: &DispatchConfig,
        consumer: &str,
        stop: &CancellationToken,
        metrics: &crate::metrics::Metrics,
    ) -> Dispatcher {
        let budget = Budget::new(
            provider.clone(),
            backends.limiter.clone(),
            settings.rate_margin,
            stop.clone(),
            metrics,
        );
        let records = Records::new(
            &provider,
            backends.store.clone(),
            backends.queue.clone(),
            stop.clone(),
        );
        let tasks = Tasks::new(settings.poll_interval, settings.max_poll_interval);
        let outbox = Outbox::new(provider.local().clone());
        metrics.count_targets(&provider.name, {
            let outbox = outbox.clone();
            move || outbox.waiting()
        });
        let submitter = Submitter::new(
            provider.clone(),
            budget.clone(),
            records.clone(),
            tasks.clone(),
            settings.retry_max_elapsed,
            stop.clone(),
        );
        Dispatcher {
            intake: Intake {
                provider: provider.name.clone(),
                local: provider.local().clone(),
                consumer: consumer.to_owned(),
                queue: backends.queue.clone(),
                store: backends.store.clone(),
                records: records.clone(),
                outbox: outbox.clone(),
                tasks: tasks.clone(),
                claim_batch: settings.claim_batch,
                reclaim_idle: settings.reclaim_idle,
                stop: stop.clone(),
            },
            flusher: Flusher {
                provider: provider.clone(),
                outbox,
                budget: budget.clone(),
                records: records.clone(),
                submitter,
                submits: Arc::new(Semaphore::new(settings.max_in_flight)),
                linger: settings.linger,
                stop: stop.clone(),
                metrics: metrics.clone(),
            },
            poller: Poller {
                provider,
                budget: budget.clone(),
                tasks,
                records,
                every: settings.poll_interval,
                task_timeout: settings.task_timeout,
                stop: stop.clone(),
            },
            budget,
            quota_refresh: settings.quota_refresh,
        }
    }

    fn start(self, set: &mut JoinSet<()>) {
        set.spawn(self.intake.run());
        set.spawn(self.flusher.run());
        set.spawn(self.poller.run());
        set.spawn(
            self.budget
                .clone()
                .refresh_learned_caps(LEARNED_CAPS_REFRESH),
        );
        set.spawn(self.budget.refresh_quota(self.quota_refresh));
    }
}
