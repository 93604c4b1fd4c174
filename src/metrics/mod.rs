//! Metrics: one OpenTelemetry meter provider per service, read by a Prometheus exporter (for
//! the admin port's `/metrics`) and pushed over OTLP when a collector is configured. `Metrics`
//! is the one cheap handle every recording site holds; labels are bounded (provider, kind,
//! action, state, outcome, operation, caller name), never an id, URL, tag or token.

pub(crate) mod bound;
pub mod budget;
pub mod metered;
pub mod rpc;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use opentelemetry::KeyValue;
use opentelemetry::metrics::{
    BoundCounter, BoundHistogram, Counter, Gauge, Histogram, Meter, MeterProvider as _,
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::metrics::periodic_reader_with_async_runtime::PeriodicReader;

use self::bound::BoundSet;
use crate::config::Config;
use crate::model::{Action, PurgeKind, PurgeState};
use crate::providers::ProviderError;

/// Why metrics could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("telemetry.otlp_endpoint {endpoint:?}: cannot build the OTLP metrics exporter")]
    Exporter {
        endpoint: String,
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
    #[error("cannot build the Prometheus exporter")]
    Prometheus(#[source] opentelemetry_sdk::error::OTelSdkError),
}

/// Seconds, for calls: from a few milliseconds to minutes.
const CALL_SECONDS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];
/// Seconds, for a purge from request to done: seconds to a day.
const PURGE_SECONDS: &[f64] = &[
    1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0,
];
/// Targets in one call over the call's cap.
const FILL_RATIO: &[f64] = &[0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0];

/// The service's metrics: a cheap `Clone`; a disabled one records into nothing.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

struct Inner {
    provider: SdkMeterProvider,
    registry: Option<prometheus::Registry>,
    /// Deliveries this replica holds and has not acknowledged: provider -> id -> purge created ms.
    held: Arc<Mutex<HashMap<String, HashMap<String, u64>>>>,
    /// Per provider: how many targets wait in its dispatcher's lanes now.
    lanes: Arc<Mutex<HashMap<String, TargetCount>>>,
    /// Per provider: the budget rules its dispatcher last read.
    budgets: budget::Providers,
    /// Whether any reader collects (else reads made only for metrics are skipped).
    recording: bool,
    i: Instruments,
    bound: Bound,
}

/// What is recorded once per purge or per call, bound to its attribute sets (`bound`).
struct Bound {
    /// `purge.backend.call.duration` of a successful call, by `BOUND_BACKEND_OPS` index.
    backend_ok: BoundSet<BoundHistogram<f64>>,
    /// `purge.duration`, by state x kind.
    purge_duration: BoundSet<BoundHistogram<f64>>,
    /// `purge.created`, by caller, then action x kind. Callers are configured, so few.
    created: ArcSwap<HashMap<String, Arc<BoundSet<BoundCounter<u64>>>>>,
}

/// The state-backend operations made once per purge or per provider call; others record
/// unbound.
const BOUND_BACKEND_OPS: [&str; 6] = [
    "store.create",
    "store.get",
    "store.get_many",
    "store.update_many",
    "queue.ack",
    "limiter.acquire",
];
const KINDS: usize = PurgeKind::EVERY.len();
const ACTIONS: usize = 2;
const STATES: usize = 5;

type TargetCount = Box<dyn Fn() -> usize + Send + Sync>;

pub(crate) struct Instruments {
    pub rpc_duration: Histogram<f64>,
    pub watch_duration: Histogram<f64>,
    pub purges_created: Counter<u64>,
    pub purges_finished: Counter<u64>,
    pub purge_duration: Histogram<f64>,
    pub provider_calls: Counter<u64>,
    pub provider_duration: Histogram<f64>,
    pub provider_retries: Counter<u64>,
    pub batch_targets: Histogram<u64>,
    pub batch_fill: Histogram<f64>,
    pub quota_remaining: Gauge<u64>,
    pub budget_wait: Histogram<f64>,
    pub budget_exhausted: Counter<u64>,
    pub work_reclaimed: Counter<u64>,
    pub deduplicated: Counter<u64>,
    pub backend_duration: Histogram<f64>,
    pub backend_errors: Counter<u64>,
}

impl Metrics {
    /// Reads `[admin] listen` (a Prometheus reader when set) and `telemetry.otlp_endpoint` (an
    /// OTLP push reader when set). Call from within the Tokio runtime: the OTLP push runs on it.
    pub fn from_config(config: &Config) -> Result<Metrics, MetricsError> {
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(config.telemetry.service_name.clone())
            .build();
        let mut builder = SdkMeterProvider::builder().with_resource(resource);
        let mut registry = None;
        let recording = config.admin.listen.is_some() || config.telemetry.otlp_endpoint.is_some();
        if config.admin.listen.is_some() {
            let r = prometheus::Registry::new();
            let exporter = opentelemetry_prometheus::exporter()
                .with_registry(r.clone())
                .build()
                .map_err(MetricsError::Prometheus)?;
            builder = builder.with_reader(exporter);
            registry = Some(r);
        }
        if let Some(endpoint) = &config.telemetry.otlp_endpoint {
            let exporter = opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .with_timeout(Duration::from_secs(5))
                .build()
                .map_err(|source| MetricsError::Exporter {
                    endpoint: endpoint.clone(),
                    source,
                })?;
            let reader = PeriodicReader::builder(exporter, opentelemetry_sdk::runtime::Tokio)
                .with_interval(Duration::from_secs(30))
                .build();
            builder = builder.with_reader(reader);
        }
        Ok(Metrics::with_provider(builder.build(), registry, recording))
    }

    /// Records nothing: no reader is attached.
    pub fn disabled() -> Metrics {
        Metrics::with_provider(SdkMeterProvider::builder().build(), None, false)
    }

    fn with_provider(
        provider: SdkMeterProvider,
        registry: Option<prometheus::Registry>,
        recording: bool,
    ) -> Metrics {
        let meter = provider.meter("purge-service");
        let held: Arc<Mutex<HashMap<String, HashMap<String, u64>>>> = Arc::default();
        observe_held(&meter, held.clone());
        let lanes: Arc<Mutex<HashMap<String, TargetCount>>> = Arc::default();
        let counts = lanes.clone();
        meter
            .i64_observable_gauge("purge.targets.waiting")
            .with_description("Targets waiting in a provider's lanes to be sent")
            .with_unit("{target}")
            .with_callback(move |o| {
                for (provider, count) in counts.lock().expect("lanes lock").iter() {
                    o.observe(
                        count() as i64,
                        &[KeyValue::new("provider", provider.clone())],
                    );
                }
            })
            .build();
        let budgets = budget::Providers::default();
        budget::observe_remaining(&meter, budgets.clone());
        Metrics(Arc::new(Inner {
            i: Instruments::new(&meter),
            bound: Bound {
                backend_ok: BoundSet::new(BOUND_BACKEND_OPS.len()),
                purge_duration: BoundSet::new(STATES * KINDS),
                created: ArcSwap::default(),
            },
            provider,
            registry,
            held,
            lanes,
            budgets,
            recording,
        }))
    }

    /// Whether a reader collects what is recorded (a Prometheus or an OTLP reader).
    pub fn is_recording(&self) -> bool {
        self.0.recording
    }

    /// Exports `read()`, when the served TLS certificate expires (seconds since the epoch), as
    /// the gauge `purge.tls.certificate.expiry`, read at each collection (so rotations show).
    pub fn observe_certificate_expiry(&self, read: impl Fn() -> i64 + Send + Sync + 'static) {
        self.0
            .provider
            .meter("purge-service")
            .i64_observable_gauge("purge.tls.certificate.expiry")
            .with_description("When the served TLS certificate expires, in seconds since the epoch")
            .with_unit("s")
            .with_callback(move |o| o.observe(read(), &[]))
            .build();
    }

    /// Exports the calls in progress (`rpc.server.active_calls`) and the open streams
    /// (`rpc.server.open_streams`), each read by its callback at every collection: a callback
    /// gets a function to report one count with its attributes.
    pub(crate) fn observe_calls(
        &self,
        active: impl Fn(&dyn Fn(i64, &[KeyValue])) + Send + Sync + 'static,
        open: impl Fn(&dyn Fn(i64, &[KeyValue])) + Send + Sync + 'static,
    ) {
        let meter = self.0.provider.meter("purge-service");
        meter
            .i64_observable_up_down_counter("rpc.server.active_calls")
            .with_description("gRPC calls in progress")
            .with_unit("{call}")
            .with_callback(move |o| active(&|n, attrs| o.observe(n, attrs)))
            .build();
        meter
            .i64_observable_up_down_counter("rpc.server.open_streams")
            .with_description("Open streaming calls (WatchPurge)")
            .with_unit("{stream}")
            .with_callback(move |o| open(&|n, attrs| o.observe(n, attrs)))
            .build();
    }

    pub(crate) fn i(&self) -> &Instruments {
        &self.0.i
    }

    /// The Prometheus text exposition, when the admin listener is on.
    pub fn exposition(&self) -> Option<String> {
        use prometheus::Encoder as _;
        let registry = self.0.registry.as_ref()?;
        let mut out = Vec::new();
        // Encoding into a Vec fails only on a malformed family, which the exporter never builds.
        let _ = prometheus::TextEncoder::new().encode(&registry.gather(), &mut out);
        Some(String::from_utf8_lossy(&out).into_owned())
    }

    /// Pushes what is not yet exported. Runs off the async workers: the exporter needs them.
    pub async fn shutdown(&self) {
        let provider = self.0.provider.clone();
        let flushed = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        if let Ok(Err(e)) = flushed {
            tracing::debug!(error = %e, "metrics shutdown");
        }
    }

    /// A provider call ended: its operation, outcome and latency.
    pub(crate) fn provider_call(
        &self,
        provider: &str,
        operation: &'static str,
        outcome: &'static str,
        seconds: f64,
    ) {
        let attrs = [
            KeyValue::new("provider", provider.to_owned()),
            KeyValue::new("operation", operation),
            KeyValue::new("outcome", outcome),
        ];
        self.0.i.provider_calls.add(1, &attrs);
        self.0.i.provider_duration.record(seconds, &attrs);
    }

    /// A state-backend call of `operation` took `seconds`; failures are counted too.
    pub(crate) fn backend_call(&self, operation: &'static str, seconds: f64, ok: bool) {
        let i = &self.0.i;
        let op = KeyValue::new("operation", operation);
        if !ok {
            i.backend_duration
                .record(seconds, &[op.clone(), KeyValue::new("outcome", "error")]);
            i.backend_errors.add(1, &[op]);
            return;
        }
        match BOUND_BACKEND_OPS.iter().position(|o| *o == operation) {
            Some(index) => {
                let bound = self.0.bound.backend_ok.get(index, || {
                    i.backend_duration
                        .bind(&[op, KeyValue::new("outcome", "success")])
                });
                bound.record(seconds);
            }
            None => i
                .backend_duration
                .record(seconds, &[op, KeyValue::new("outcome", "success")]),
        }
    }

    /// A purge was accepted.
    pub(crate) fn purge_created(&self, kind: PurgeKind, action: Action, caller: &str) {
        let callers = self.0.bound.created.load();
        let by_kind = match callers.get(caller) {
            Some(set) => set.clone(),
            None => {
                drop(callers);
                let fresh = Arc::new(BoundSet::new(KINDS * ACTIONS));
                let mut added = None;
                self.0.bound.created.rcu(|callers| {
                    let mut callers = HashMap::clone(callers);
                    let set = callers
                        .entry(caller.to_owned())
                        .or_insert_with(|| fresh.clone());
                    added = Some(set.clone());
                    callers
                });
                added.unwrap_or(fresh)
            }
        };
        let bound = by_kind.get(action as usize * KINDS + kind as usize, || {
            self.0.i.purges_created.bind(&[
                KeyValue::new("kind", kind.as_str()),
                KeyValue::new("action", action.as_str()),
                KeyValue::new("caller", caller.to_owned()),
            ])
        });
        bound.add(1);
    }

    /// A purge reached terminal `state` `seconds` after it was created.
    pub(crate) fn purge_finished_after(&self, state: PurgeState, kind: PurgeKind, seconds: f64) {
        let bound = self
            .0
            .bound
            .purge_duration
            .get(state as usize * KINDS + kind as usize, || {
                self.0.i.purge_duration.bind(&[
                    KeyValue::new("state", state_label(state)),
                    KeyValue::new("kind", kind.as_str()),
                ])
            });
        bound.record(seconds);
    }

    /// The budget rules `provider`'s dispatcher reads, exported as `purge.budget.remaining`.
    pub(crate) fn known_budgets(&self, provider: &str) -> budget::KnownBudgets {
        self.0
            .budgets
            .lock()
            .expect("budgets lock")
            .entry(provider.to_owned())
            .or_default()
            .clone()
    }

    /// Work of `provider` waited `seconds` from its first ask to the grant of `budget`
    /// (`submit`, `status`, `items`) for `operation` (`submit`, `poll`, `quota`, `lookup`).
    pub(crate) fn budget_waited(
        &self,
        provider: &str,
        budget: &'static str,
        operation: &'static str,
        seconds: f64,
    ) {
        self.0.i.budget_wait.record(
            seconds,
            &[
                KeyValue::new("provider", provider.to_owned()),
                KeyValue::new("budget", budget),
                KeyValue::new("operation", operation),
            ],
        );
    }

    /// Reads `provider`'s waiting targets with `count` at each collection.
    pub(crate) fn count_targets(
        &self,
        provider: &str,
        count: impl Fn() -> usize + Send + Sync + 'static,
    ) {
        self.0
            .lanes
            .lock()
            .expect("lanes lock")
            .insert(provider.to_owned(), Box::new(count));
    }

    /// A batch left out `saved` targets another purge in it had asked for already.
    pub(crate) fn deduplicated(&self, provider: &str, kind: crate::model::PurgeKind, saved: usize) {
        if saved > 0 {
            self.0.i.deduplicated.add(
                saved as u64,
                &[
                    KeyValue::new("provider", provider.to_owned()),
                    KeyValue::new("kind", kind.as_str()),
                ],
            );
        }
    }

    /// Deliveries `provider`'s dispatcher now holds, for the waiting gauges (kept only while
    /// a reader collects them).
    pub(crate) fn hold(&self, provider: &str, deliveries: impl Iterator<Item = (String, u64)>) {
        if !self.0.recording {
            return;
        }
        let mut held = self.0.held.lock().expect("held lock");
        let map = held.entry(provider.to_owned()).or_default();
        map.extend(deliveries);
    }

    pub(crate) fn release(&self, provider: &str, ids: &[String]) {
        if !self.0.recording {
            return;
        }
        let mut held = self.0.held.lock().expect("held lock");
        if let Some(map) = held.get_mut(provider) {
            for id in ids {
                map.remove(id);
            }
        }
    }
}

/// The label of a purge state.
pub(crate) fn state_label(s: PurgeState) -> &'static str {
    match s {
        PurgeState::Queued => "queued",
        PurgeState::Running => "running",
        PurgeState::Succeeded => "succeeded",
        PurgeState::Failed => "failed",
        PurgeState::Cancelled => "cancelled",
    }
}

/// The outcome label of a provider call that failed.
pub fn outcome(e: &ProviderError) -> &'static str {
    match e {
        ProviderError::Throttled { .. } | ProviderError::QuotaExhausted { .. } => "throttled",
        ProviderError::Transient { .. } | ProviderError::Busy { .. } => "retryable",
        ProviderError::Ambiguous { .. } => "ambiguous",
        ProviderError::BatchTooLarge { .. }
        | ProviderError::Auth { .. }
        | ProviderError::Rejected { .. }
        | ProviderError::Protocol { .. } => "fatal",
    }
}

/// Purges waiting per provider (held by this replica, not yet acknowledged) and the oldest's age.
fn observe_held(meter: &Meter, held: Arc<Mutex<HashMap<String, HashMap<String, u64>>>>) {
    let counts = held.clone();
    meter
        .i64_observable_gauge("purge.work.waiting")
        .with_description("Purges this replica holds for a provider and has not finished")
        .with_unit("{purge}")
        .with_callback(move |o| {
            for (provider, map) in counts.lock().expect("held lock").iter() {
                o.observe(
                    map.len() as i64,
                    &[KeyValue::new("provider", provider.clone())],
                );
            }
        })
        .build();
    meter
        .f64_observable_gauge("purge.work.oldest_age")
        .with_description("Age of the oldest purge waiting for a provider (0 when none)")
        .with_unit("s")
        .with_callback(move |o| {
            let now = crate::store::now_ms();
            for (provider, map) in held.lock().expect("held lock").iter() {
                let age = map
                    .values()
                    .min()
                    .map_or(0.0, |oldest| now.saturating_sub(*oldest) as f64 / 1000.0);
                o.observe(age, &[KeyValue::new("provider", provider.clone())]);
            }
        })
        .build();
}

impl Instruments {
    fn new(m: &Meter) -> Instruments {
        let seconds = |name: &'static str, what: &'static str, bounds: &[f64]| {
            m.f64_histogram(name)
                .with_description(what)
                .with_unit("s")
                .with_boundaries(bounds.to_vec())
                .build()
        };
        Instruments {
            rpc_duration: seconds(
                "rpc.server.call.duration",
                "Duration of unary gRPC calls (streams are in rpc.server.stream.duration)",
                CALL_SECONDS,
            ),
            watch_duration: seconds(
                "rpc.server.stream.duration",
                "How long streaming calls (WatchPurge) stayed open",
                PURGE_SECONDS,
            ),
            purges_created: m
                .u64_counter("purge.created")
                .with_description("Purges accepted")
                .with_unit("{purge}")
                .build(),
            purges_finished: m
                .u64_counter("purge.finished")
                .with_description("Purges that reached a terminal state")
                .with_unit("{purge}")
                .build(),
            purge_duration: seconds(
                "purge.duration",
                "From CreatePurge to a terminal state (the service-level metric)",
                PURGE_SECONDS,
            ),
            provider_calls: m
                .u64_counter("purge.provider.calls")
                .with_description("Provider API calls by operation and outcome")
                .with_unit("{call}")
                .build(),
            provider_duration: seconds(
                "purge.provider.call.duration",
                "Provider API call latency",
                CALL_SECONDS,
            ),
            provider_retries: m
                .u64_counter("purge.provider.retries")
                .with_description("Provider calls that failed and will be tried again")
                .with_unit("{call}")
                .build(),
            batch_targets: m
                .u64_histogram("purge.provider.batch.targets")
                .with_description("Targets per provider submit")
                .with_unit("{target}")
                .with_boundaries(vec![
                    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0,
                ])
                .build(),
            batch_fill: m
                .f64_histogram("purge.provider.batch.fill")
                .with_description("Targets per provider submit over the call's cap")
                .with_unit("1")
                .with_boundaries(FILL_RATIO.to_vec())
                .build(),
            quota_remaining: m
                .u64_gauge("purge.provider.quota.remaining")
                .with_description("Daily quota left, as the provider last reported it")
                .with_unit("{target}")
                .build(),
            budget_wait: seconds(
                "purge.budget.wait.duration",
                "Time work waited for a provider budget, from its first ask to the grant (one per grant)",
                CALL_SECONDS,
            ),
            budget_exhausted: m
                .u64_counter("purge.budget.exhausted")
                .with_description("Budget checks refused because a daily quota is used up")
                .with_unit("{check}")
                .build(),
            work_reclaimed: m
                .u64_counter("purge.work.reclaimed")
                .with_description("Work taken over from a replica that stopped acknowledging")
                .with_unit("{purge}")
                .build(),
            deduplicated: m
                .u64_counter("purge.targets.deduplicated")
                .with_description("Targets not sent again: another purge in the batch had them")
                .with_unit("{target}")
                .build(),
            backend_duration: seconds(
                "purge.backend.call.duration",
                "State backend (store, queue, limiter) call latency",
                CALL_SECONDS,
            ),
            backend_errors: m
                .u64_counter("purge.backend.errors")
                .with_description("State backend calls that failed")
                .with_unit("{call}")
                .build(),
        }
    }
}
