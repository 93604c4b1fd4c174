//! gRPC adapters: convert, call the core, map the error. Nothing here touches storage or HTTP.

pub mod convert;
pub mod status;

use std::pin::Pin;

use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::core::{Caller, PurgeCore};
use crate::pb::{self, purge_service_server::PurgeService};

/// The `purge.v1.PurgeService` implementation.
#[derive(Clone)]
pub struct PurgeApi {
    core: PurgeCore,
    /// Deadline of a unary call (a watch only until its first answer).
    deadline: std::time::Duration,
}

impl PurgeApi {
    pub fn new(core: PurgeCore, deadline: std::time::Duration) -> PurgeApi {
        PurgeApi { core, deadline }
    }

    /// Runs `call` within the server's deadline; past it the caller gets DEADLINE_EXCEEDED
    /// with ErrorInfo like every other error. `call` is boxed before anything wraps it: a
    /// handler's future is about 2 KB, and this wrapper, the span's and tonic's would each copy
    /// it again (`perf`: memmove was 7% of the server's samples under load).
    fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, Status>>,
    ) -> impl std::future::Future<Output = Result<T, Status>> {
        let call = Box::pin(call);
        async move {
            tokio::time::timeout(self.deadline, call)
                .await
                .unwrap_or_else(|_| {
                    Err(status::from_error(crate::core::Error::DeadlineExceeded(
                        self.deadline,
                    )))
                })
        }
    }
}

/// The caller the `authorization` metadata or the client certificate names.
fn caller<T>(core: &PurgeCore, req: &Request<T>) -> Result<Caller, Status> {
    let header = req
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    let cert_sans = crate::tls::peer_names(req.extensions());
    core.authenticate(header, &cert_sans)
        .map_err(status::from_error)
}

/// The `idempotency-key` metadata, if the caller sent one.
fn metadata_key<T>(req: &Request<T>) -> Option<String> {
    req.metadata().get("idempotency-key").map(|v| {
        v.to_str()
            .map(str::to_owned)
            .unwrap_or_else(|_| "\u{fffd}".into())
    })
}

#[tonic::async_trait]
impl PurgeService for PurgeApi {
    async fn create_purge(
        &self,
        request: Request<pb::CreatePurgeRequest>,
    ) -> Result<Response<pb::Purge>, Status> {
        let span = rpc_span("CreatePurge", &request, "");
        self.bounded(self.create(request)).instrument(span).await
    }

    async fn get_purge(
        &self,
        request: Request<pb::GetPurgeRequest>,
    ) -> Result<Response<pb::Purge>, Status> {
        let span = rpc_span("GetPurge", &request, &request.get_ref().id);
        self.bounded(self.get(request)).instrument(span).await
    }

    async fn cancel_purge(
        &self,
        request: Request<pb::CancelPurgeRequest>,
    ) -> Result<Response<pb::Purge>, Status> {
        let span = rpc_span("CancelPurge", &request, &request.get_ref().id);
        self.bounded(self.cancel(request)).instrument(span).await
    }

    async fn list_purges(
        &self,
        request: Request<pb::ListPurgesRequest>,
    ) -> Result<Response<pb::ListPurgesResponse>, Status> {
        let span = rpc_span("ListPurges", &request, "");
        self.bounded(self.list(request)).instrument(span).await
    }

    type WatchPurgeStream = Pin<Box<dyn Stream<Item = Result<pb::Purge, Status>> + Send>>;

    async fn watch_purge(
        &self,
        request: Request<pb::WatchPurgeRequest>,
    ) -> Result<Response<Self::WatchPurgeStream>, Status> {
        let span = rpc_span("WatchPurge", &request, &request.get_ref().id);
        self.bounded(self.watch(request)).instrument(span).await
    }
}

/// One span per call. When spans are exported it is named as OpenTelemetry names gRPC server
/// spans and continues the caller's trace when it sent a `traceparent`.
fn rpc_span<T>(rpc: &'static str, request: &Request<T>, purge_id: &str) -> tracing::Span {
    let span = if crate::telemetry::exporting() {
        let span = tracing::info_span!(
            "rpc",
            rpc,
            otel.name = %format_args!("purge.v1.PurgeService/{rpc}"),
            otel.kind = "server",
            rpc.system = "grpc",
            purge_id = tracing::field::Empty,
        );
        crate::telemetry::continue_remote_trace(&span, request.metadata());
        span
    } else {
        // Only log lines read the span: the method (its name) and the purge are all they show.
        // The exported span's attributes and the trace context cost a few percent of a
        // CreatePurge under load (README, "Allocator and fewer Redis calls"), and so did a
        // field naming the method, which the log layer formats into text for every call.
        macro_rules! lean {
            ($($name:literal)|*) => {
                match rpc {
                    $($name => tracing::info_span!($name, purge_id = tracing::field::Empty),)*
                    _ => tracing::info_span!("rpc", rpc, purge_id = tracing::field::Empty),
                }
            };
        }
        lean!("CreatePurge" | "GetPurge" | "CancelPurge" | "ListPurges" | "WatchPurge")
    };
    if !purge_id.is_empty() {
        span.record("purge_id", purge_id);
    }
    span
}

impl PurgeApi {
    async fn create(
        &self,
        request: Request<pb::CreatePurgeRequest>,
    ) -> Result<Response<pb::Purge>, Status> {
        let caller = caller(&self.core, &request)?;
        let key = metadata_key(&request);
        let validate_only = request.get_ref().validate_only;
        let req = convert::create_request(request.into_inner(), key);
        if validate_only {
            let (purge, plan) = self
                .core
                .plan(&caller, req)
                .await
                .map_err(status::from_error)?;
            return Ok(Response::new(convert::planned(&purge, &plan)));
        }
        let purge = self
            .core
            .create(&caller, req)
            .await
            .map_err(status::from_error)?;
        // Nothing logs in this call's span after this point: only an exported span reads it.
        if crate::telemetry::exporting() {
            tracing::Span::current().record("purge_id", purge.record.id.as_str());
        }
        Ok(Response::new(convert::seen(&purge)))
    }

    async fn get(
        &self,
        request: Request<pb::GetPurgeRequest>,
    ) -> Result<Response<pb::Purge>, Status> {
        let caller = caller(&self.core, &request)?;
        let purge = self
            .core
            .get(&caller, &request.get_ref().id)
            .await
            .map_err(status::from_error)?;
        Ok(Response::new(convert::seen(&purge)))
    }

    async fn cancel(
        &self,
        request: Request<pb::CancelPurgeRequest>,
    ) -> Result<Response<pb::Purge>, Status> {
        let caller = caller(&self.core, &request)?;
        let purge = self
            .core
            .cancel(&caller, &request.get_ref().id)
            .await
            .map_err(status::from_error)?;
        Ok(Response::new(convert::seen(&purge)))
    }

    async fn list(
        &self,
        request: Request<pb::ListPurgesRequest>,
    ) -> Result<Response<pb::ListPurgesResponse>, Status> {
        let caller = caller(&self.core, &request)?;
        let req = request.get_ref();
        let (purges, next) = self
            .core
            .list(&caller, &req.filter, req.page_size, &req.page_token)
            .await
            .map_err(status::from_error)?;
        Ok(Response::new(pb::ListPurgesResponse {
            purges: purges.iter().map(convert::seen).collect(),
            next_page_token: next.unwrap_or_default(),
        }))
    }

    async fn watch(
        &self,
        request: Request<pb::WatchPurgeRequest>,
    ) -> Result<Response<<Self as PurgeService>::WatchPurgeStream>, Status> {
        let caller = caller(&self.core, &request)?;
        let updates = self
            .core
            .watch(&caller, &request.get_ref().id)
            .await
            .map_err(status::from_error)?;
        let stream = updates.map(|u| u.map(|p| convert::seen(&p)).map_err(status::from_error));
        Ok(Response::new(Box::pin(stream)))
    }
}
