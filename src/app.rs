//! Wiring: builds the backends, providers, core and dispatcher from a config, and serves gRPC
//! until shutdown. Tests start exactly this, on port 0.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::admin::Readiness;
use crate::api::PurgeApi;
use crate::backend::BackendError;
use crate::config::{Backend, Config, ConfigError, StoreConfig};
use crate::core::PurgeCore;
use crate::core::service::CoreSettings;
use crate::core::validate::Limits;
use crate::core::watch::WatchHub;
use crate::limiter::Limiter;
use crate::limiter::memory::MemoryLimiter;
use crate::limiter::redis::RedisLimiter;
use crate::metrics::Metrics;
use crate::metrics::metered::{MeteredLimiter, MeteredQueue, MeteredStore};
use crate::metrics::rpc::{Methods, RpcMetricsLayer};
use crate::pb::purge_service_server::PurgeServiceServer;
use crate::providers::{Registry, build};
use crate::queue::Queue;
use crate::queue::memory::MemoryQueue;
use crate::queue::redis::RedisQueue;
use crate::redis_state;
use crate::store::Store;
use crate::store::memory::{MemoryLimits, MemoryStore};
use crate::store::redis::RedisStore;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("state backend error")]
    Store(#[from] BackendError),
    #[error("gRPC server error")]
    Serve(#[from] tonic::transport::Error),
    #[error("reflection setup failed")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    #[error("admin.listen {addr}: cannot listen")]
    AdminListen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("admin listener failed")]
    Admin(#[source] std::io::Error),
    #[error("TLS setup failed")]
    Tls(#[from] crate::tls::TlsError),
}

/// The shared-state backends, chosen by `[store] backend`.
#[derive(Clone)]
pub struct Backends {
    pub store: Arc<dyn Store>,
    pub queue: Arc<dyn Queue>,
    pub limiter: Arc<dyn Limiter>,
}

impl Backends {
    pub async fn build(config: &Config) -> Result<Backends, AppError> {
        match config.store.backend {
            Backend::Memory => {
                let queue = MemoryQueue::default();
                Ok(Backends {
                    store: Arc::new(MemoryStore::with_limits(
                        Arc::new({
                            let queue = queue.clone();
                            move |work| queue.enqueue(work)
                        }),
                        config.server.record_retention,
                        MemoryLimits {
                            max_records: config.store.memory.max_records.get(),
                            max_idempotency_keys: config.store.memory.max_idempotency_keys.get(),
                        },
                    )),
                    queue: Arc::new(queue),
                    limiter: Arc::new(MemoryLimiter::default()),
                })
            }
            Backend::Redis => {
                let shared = redis_state::Shared::connect(&redis_options(&config.store)?)?;
                Ok(Backends {
                    store: Arc::new(RedisStore::new(
                        shared.clone(),
                        config.server.record_retention,
                    )),
                    queue: Arc::new(RedisQueue::new(shared.clone())),
                    limiter: Arc::new(RedisLimiter::new(shared)),
                })
            }
        }
    }
}

impl Backends {
    /// The same backends, each call timed and counted.
    fn metered(self, metrics: &Metrics) -> Backends {
        Backends {
            store: Arc::new(MeteredStore {
                inner: self.store,
                metrics: metrics.clone(),
            }),
            queue: Arc::new(MeteredQueue {
                inner: self.queue,
                metrics: metrics.clone(),
            }),
            limiter: Arc::new(MeteredLimiter {
                inner: self.limiter,
                metrics: metrics.clone(),
            }),
        }
    }
}

/// The Redis settings with their secrets and certificates read.
fn redis_options(store: &StoreConfig) -> Result<redis_state::RedisOptions, ConfigError> {
    let password = match (&store.password_env, &store.password_file) {
        (None, None) => None,
        (env, file) => Some(
            crate::settings::SecretRef::new(env.clone(), file.clone()).resolve("store.password")?,
        ),
    };
    let read = |field: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| {
            ConfigError::Invalid(format!("{field} = {:?}: cannot read: {e}", path.display()))
        })
    };
    let root_cert = match &store.tls_ca_file {
        Some(path) => Some(read("store.tls_ca_file", path)?),
        None => None,
    };
    let client_tls = match (&store.tls_cert_file, &store.tls_key_file) {
        (Some(cert), Some(key)) => Some(::redis::ClientTlsConfig {
            client_cert: read("store.tls_cert_file", cert)?,
            client_key: read("store.tls_key_file", key)?,
        }),
        _ => None,
    };
    let tls = (root_cert.is_some() || client_tls.is_some()).then_some(::redis::TlsCertificates {
        client_tls,
        root_cert,
    });
    Ok(redis_state::RedisOptions {
        url: store.url.clone(),
        cluster_urls: store.cluster_urls.clone(),
        key_prefix: store.key_prefix.clone(),
        timeout: store.timeout,
        username: store.username.clone(),
        password,
        tls,
    })
}

/// A built service, ready to `run`.
pub struct App {
    config: Config,
    backends: Backends,
    registry: Registry,
    core: PurgeCore,
    hub: WatchHub,
    closing: CancellationToken,
    metrics: Metrics,
    admin: Option<std::net::TcpListener>,
    /// The gRPC port's TLS, when configured.
    tls: Option<crate::tls::Reloading>,
}

impl App {
    pub async fn build(config: Config) -> Result<App, AppError> {
        crate::tls::install_default_provider();
        let backends = Backends::build(&config).await?;
        App::with_backends(config, backends)
    }

    /// Builds on given backends (several replicas in one test share one Redis this way).
    pub fn with_backends(config: Config, backends: Backends) -> Result<App, AppError> {
        let metrics = Metrics::from_config(&config)?;
        let backends = backends.metered(&metrics);
        let admin = config.admin.listen.map(bind_admin).transpose()?;
        let http = build::http_client()?;
        let mut registry = build::registry(&config.providers, &config.groups, &http)?;
        registry.wrap_clients(|name, client| {
            crate::metrics::metered::MeteredProvider::wrap(name, client, &metrics)
        });
        let hub = WatchHub::default();
        let callers = crate::core::Callers::from_config(&config.callers)?;
        let closing = CancellationToken::new();
        let tls = match &config.server.tls {
            Some(settings) => Some(crate::tls::Reloading::load(settings)?),
            None => None,
        };
        if let Some(tls) = &tls {
            let tls = tls.clone();
            metrics.observe_certificate_expiry(move || tls.not_after_unix());
        }
        let settings = CoreSettings {
            limits: Limits {
                max_targets: config.server.max_targets,
                max_len: config.server.max_target_len,
            },
            idempotency_retention: config.server.idempotency_retention,
            caller_rate: config.server.caller_rate,
            watch_resync: config.server.watch_resync,
            linger: config.dispatch.linger,
            poll_interval: config.dispatch.poll_interval,
            rate_margin: config.dispatch.rate_margin,
        };
        let core = PurgeCore::new(
            backends.store.clone(),
            backends.queue.clone(),
            backends.limiter.clone(),
            registry.clone(),
            hub.clone(),
            callers,
            settings,
            closing.clone(),
        );
        Ok(App {
            config,
            backends,
            registry,
            core,
            hub,
            closing,
            metrics,
            admin,
            tls,
        })
    }

    /// Where the admin listener (`/metrics`, `/healthz`, `/readyz`) listens, when on.
    pub fn admin_addr(&self) -> Option<std::net::SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn core(&self) -> &PurgeCore {
        &self.core
    }

    /// Serves on `listener` until `shutdown` resolves, then drains: health NOT_SERVING, open
    /// watches end with UNAVAILABLE, calls get `drain_timeout` to finish, the dispatcher stops.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), AppError> {
        let stop = CancellationToken::new();
        let consumer = format!(
            "{}-{}",
            self.config
                .server
                .replica_name
                .as_deref()
                .unwrap_or("replica"),
            &uuid::Uuid::now_v7().simple().to_string()[24..]
        );
        tokio::spawn(
            self.hub
                .clone()
                .run(self.backends.store.events(), stop.clone()),
        );
        let mut dispatcher = crate::dispatch::spawn(
            self.backends.store.clone(),
            self.backends.queue.clone(),
            self.backends.limiter.clone(),
            &self.registry,
            self.config.dispatch.clone(),
            consumer.clone(),
            stop.clone(),
            self.metrics.clone(),
        );

        let (reporter, health) = tonic_health::server::health_reporter();
        let ready = Readiness::default();
        let health_watch = tokio::spawn(watch_health(
            reporter.clone(),
            ready.clone(),
            self.backends.store.clone(),
            self.closing.clone(),
        ));
        let admin_stop = CancellationToken::new();
        let admin = match self.admin {
            Some(listener) => {
                let listener = TcpListener::from_std(listener).map_err(AppError::Admin)?;
                Some(tokio::spawn(crate::admin::serve(
                    listener,
                    self.metrics.clone(),
                    ready.clone(),
                    admin_stop.clone(),
                )))
            }
            None => None,
        };
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;
        let api = PurgeServiceServer::new(PurgeApi::new(
            self.core.clone(),
            self.config.server.request_timeout,
        ))
        .max_decoding_message_size(self.config.server.max_message_size);
        if let Some(tls) = &self.tls {
            tokio::spawn(tls.clone().watch(stop.clone()));
        }

        let addr = listener.local_addr().ok();
        let tls = self.tls.is_some();
        tracing::info!(?addr, consumer, tls, backend = ?self.config.store.backend, "serving purge.v1");
        let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
        let methods = Methods::from_descriptor_sets(&[
            crate::pb::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
        ]);
        let rpc_metrics = RpcMetricsLayer::new(self.metrics.clone(), methods);
        let server = layered(Server::builder(), &self.config, rpc_metrics)
            .add_service(health)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(api)
            .serve_with_incoming_shutdown(
                crate::tls::incoming(listener, self.tls.clone()),
                async {
                    let _ = drain_rx.await;
                },
            );
        tokio::pin!(server);
        let result = tokio::select! {
            r = &mut server => r.map_err(AppError::from),
            _ = shutdown => {
                tracing::info!("shutting down: draining calls");
                // The backend watcher stops first, so it cannot report SERVING again.
                self.closing.cancel();
                health_watch.abort();
                let _ = health_watch.await;
                ready.set(false);
                reporter.set_service_status("", ServingStatus::NotServing).await;
                reporter.set_not_serving::<PurgeServiceServer<PurgeApi>>().await;
                let _ = drain_tx.send(());
                match tokio::time::timeout(self.config.server.drain_timeout, &mut server).await {
                    Ok(r) => r.map_err(AppError::from),
                    Err(_) => {
                        tracing::warn!(timeout = ?self.config.server.drain_timeout, "drain timed out; closing open calls");
                        Ok(())
                    }
                }
            }
        };
        stop.cancel();
        // Workers stop at once but first record the batches they already sent; a provider
        // call still open after the bound is abandoned and its work taken over or resent.
        let bound = self.config.server.drain_timeout.max(Duration::from_secs(5));
        let joined = tokio::time::timeout(bound, async {
            while dispatcher.join_next().await.is_some() {}
        })
        .await;
        if joined.is_err() {
            tracing::warn!(timeout = ?bound, "dispatcher did not stop in time; abandoning its calls");
        }
        dispatcher.abort_all();
        admin_stop.cancel();
        if let Some(admin) = admin
            && let Ok(Err(e)) = admin.await
        {
            tracing::warn!(error = %e, "admin listener failed");
        }
        self.metrics.shutdown().await;
        tracing::info!("stopped");
        result
    }
}

/// The tower layers every call passes, outermost first.
fn layered(
    builder: Server,
    config: &Config,
    rpc_metrics: RpcMetricsLayer,
) -> Server<
    tower::layer::util::Stack<
        RpcMetricsLayer,
        tower::layer::util::Stack<
            tower::limit::GlobalConcurrencyLimitLayer,
            tower::layer::util::Identity,
        >,
    >,
> {
    let streams = config.server.max_streams_per_connection;
    builder
        // Let one connection not starve the others: calls served at once per connection, and
        // HTTP/2 streams a client may open on it.
        .concurrency_limit_per_connection(streams as usize)
        .max_concurrent_streams(streams)
        // Keep idle clients' connections healthy through proxies.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        // Bound the calls served at once across all connections; more wait for a slot.
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            config.server.max_concurrent_requests,
        ))
        // Time and count every call by method and gRPC status (calls waiting for a slot are
        // not in flight yet).
        .layer(rpc_metrics)
}

fn bind_admin(addr: std::net::SocketAddr) -> Result<std::net::TcpListener, AppError> {
    let listener = std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|source| AppError::AdminListen { addr, source })?;
    Ok(listener)
}

/// Reports SERVING while the state backend answers, NOT_SERVING while it does not.
async fn watch_health(
    reporter: HealthReporter,
    ready: Readiness,
    store: Arc<dyn Store>,
    stop: CancellationToken,
) {
    let mut last = None;
    loop {
        let status = match store.ping().await {
            Ok(()) => ServingStatus::Serving,
            Err(e) => {
                tracing::warn!(error = %e, "state backend does not answer");
                ServingStatus::NotServing
            }
        };
        ready.set(status == ServingStatus::Serving);
        if last != Some(status) {
            reporter.set_service_status("", status).await;
            reporter
                .set_service_status("purge.v1.PurgeService", status)
                .await;
            last = Some(status);
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
