//! The plaintext admin HTTP listener: `/metrics` (Prometheus text), `/healthz` (the process
//! answers) and `/readyz` (the gRPC health meaning: not ready while the state backend does not
//! answer or the service is shutting down).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Whether the service takes calls now; set where gRPC health is set.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }

    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
struct Admin {
    metrics: Metrics,
    ready: Readiness,
}

/// Serves the admin routes on `listener` until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    ready: Readiness,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(Admin { metrics, ready });
    axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
}

async fn metrics_text(State(admin): State<Admin>) -> impl IntoResponse {
    match admin.metrics.exposition() {
        Some(text) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        ),
        None => (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "metrics are off\n".to_owned(),
        ),
    }
}

async fn readyz(State(admin): State<Admin>) -> impl IntoResponse {
    if admin.ready.get() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}
