//! A tower layer measuring every gRPC call by the OpenTelemetry RPC conventions: unary calls in
//! `rpc.server.call.duration`, streams (WatchPurge) apart in `rpc.server.stream.duration`, with
//! `rpc.system.name`, the fully qualified `rpc.method` and `rpc.response.status_code` read from
//! the response headers (an error before the first message) or trailers. A call dropped before
//! its status (the client went away) counts as CANCELLED.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use http_body::{Body, Frame, SizeHint};
use opentelemetry::metrics::BoundHistogram;
use opentelemetry::{KeyValue, StringValue, Value};
use prost::Message as _;

use super::Metrics;
use super::bound::BoundSet;

/// gRPC status codes: 0 (OK) to 16 (UNAUTHENTICATED).
const CODES: usize = 17;

/// One method's label and the count of its calls in progress. Counted with an atomic and read
/// at collection (observable counters), so a call costs no SDK recording for it.
pub struct MethodStats {
    name: StringValue,
    streams: bool,
    active: AtomicI64,
    /// The duration histogram bound to this method and each status code (by its number).
    durations: BoundSet<BoundHistogram<f64>>,
}

impl MethodStats {
    fn new(name: &str, streams: bool) -> Arc<MethodStats> {
        Arc::new(MethodStats {
            name: StringValue::from(Arc::<str>::from(name)),
            streams,
            active: AtomicI64::new(0),
            durations: BoundSet::new(CODES),
        })
    }

    fn attrs(&self) -> [KeyValue; 2] {
        [
            KeyValue::new("rpc.system.name", "grpc"),
            KeyValue::new("rpc.method", Value::String(self.name.clone())),
        ]
    }
}

/// The methods served, by path, and whether each streams; other paths are `_OTHER`, so a
/// client cannot make up label values.
#[derive(Clone)]
pub struct Methods {
    by_path: Arc<HashMap<String, Arc<MethodStats>>>,
    other: Arc<MethodStats>,
}

impl Methods {
    /// Every method of the given encoded descriptor sets, plus server reflection.
    pub fn from_descriptor_sets(sets: &[&[u8]]) -> Methods {
        let mut methods = HashMap::new();
        let mut add = |path: String, streams: bool| {
            let stats = MethodStats::new(&path[1..], streams);
            methods.insert(path, stats);
        };
        for set in sets {
            let Ok(set) = prost_types::FileDescriptorSet::decode(*set) else {
                continue;
            };
            for file in set.file {
                let package = file.package.unwrap_or_default();
                for service in file.service {
                    let service_name = service.name.unwrap_or_default();
                    for m in service.method {
                        let streams = m.server_streaming() || m.client_streaming();
                        add(format!("/{package}.{service_name}/{}", m.name()), streams);
                    }
                }
            }
        }
        for v in ["v1", "v1alpha"] {
            add(
                format!("/grpc.reflection.{v}.ServerReflection/ServerReflectionInfo"),
                true,
            );
        }
        Methods {
            by_path: Arc::new(methods),
            other: MethodStats::new("_OTHER", false),
        }
    }

    fn all(&self) -> impl Iterator<Item = &Arc<MethodStats>> {
        self.by_path.values().chain(std::iter::once(&self.other))
    }
}

/// Measures every call passing through.
#[derive(Clone)]
pub struct RpcMetricsLayer {
    metrics: Metrics,
    methods: Methods,
}

impl RpcMetricsLayer {
    pub fn new(metrics: Metrics, methods: Methods) -> RpcMetricsLayer {
        let (active, open) = (methods.clone(), methods.clone());
        metrics.observe_calls(
            move |observe| {
                for m in active.all() {
                    observe(m.active.load(Ordering::Relaxed), &m.attrs());
                }
            },
            move |observe| {
                for m in open.all().filter(|m| m.streams) {
                    observe(m.active.load(Ordering::Relaxed), &m.attrs());
                }
            },
        );
        RpcMetricsLayer { metrics, methods }
    }
}

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> RpcMetrics<S> {
        RpcMetrics {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RpcMetrics<S> {
    inner: S,
    layer: RpcMetricsLayer,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for RpcMetrics<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Body,
{
    type Response = http::Response<MeteredBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let path = req.uri().path();
        let methods = &self.layer.methods;
        let method = methods.by_path.get(path).unwrap_or(&methods.other).clone();
        let mut call = Call::start(self.layer.metrics.clone(), method);
        let fut = self.inner.call(req);
        Box::pin(async move {
            match fut.await {
                Ok(res) => {
                    // A trailers-only response (an error before any message) has it here.
                    call.code = res.headers().get("grpc-status").map(code_of);
                    Ok(res.map(|body| MeteredBody {
                        inner: body,
                        call: Some(call),
                    }))
                }
                Err(e) => {
                    call.end(tonic::Code::Unknown);
                    Err(e)
                }
            }
        })
    }
}

/// One call being measured; recorded when dropped, as CANCELLED unless a status was seen.
struct Call {
    metrics: Metrics,
    method: Arc<MethodStats>,
    start: Instant,
    code: Option<tonic::Code>,
}

impl Call {
    fn start(metrics: Metrics, method: Arc<MethodStats>) -> Call {
        method.active.fetch_add(1, Ordering::Relaxed);
        Call {
            metrics,
            method,
            start: Instant::now(),
            code: None,
        }
    }

    /// Ends the call with `code` (dropping it records it).
    fn end(mut self, code: tonic::Code) {
        self.code = Some(code);
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.method.active.fetch_sub(1, Ordering::Relaxed);
        let code = self.code.unwrap_or(tonic::Code::Cancelled);
        let seconds = self.start.elapsed().as_secs_f64();
        let i = self.metrics.i();
        let histogram = if self.method.streams {
            &i.watch_duration
        } else {
            &i.rpc_duration
        };
        let bound = self.method.durations.get(code as usize, || {
            let [system, method] = self.method.attrs();
            histogram.bind(&[
                system,
                method,
                KeyValue::new("rpc.response.status_code", code_label(code)),
            ])
        });
        bound.record(seconds);
    }
}

pin_project_lite::pin_project! {
    /// A response body that ends its call's measurement at the trailers (or when dropped).
    pub struct MeteredBody<B> {
        #[pin]
        inner: B,
        call: Option<Call>,
    }
}

impl<B: Body> Body for MeteredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame
                    .trailers_ref()
                    .and_then(|t| t.get("grpc-status"))
                    .map(code_of)
                    && let Some(call) = this.call.as_mut()
                {
                    call.code = Some(code);
                }
            }
            Poll::Ready(None) => {
                // The end: a call whose status came nowhere ended without one.
                if let Some(mut call) = this.call.take() {
                    call.code.get_or_insert(tonic::Code::Unknown);
                }
            }
            Poll::Ready(Some(Err(_))) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn code_of(v: &http::HeaderValue) -> tonic::Code {
    let n = v
        .to_str()
        .ok()
        .and_then(|s| s.parse::<i32>().ok())
        .unwrap_or(2);
    tonic::Code::from_i32(n)
}

fn code_label(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "CANCELLED",
        tonic::Code::Unknown => "UNKNOWN",
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
        tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        tonic::Code::NotFound => "NOT_FOUND",
        tonic::Code::AlreadyExists => "ALREADY_EXISTS",
        tonic::Code::PermissionDenied => "PERMISSION_DENIED",
        tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
        tonic::Code::Aborted => "ABORTED",
        tonic::Code::OutOfRange => "OUT_OF_RANGE",
        tonic::Code::Unimplemented => "UNIMPLEMENTED",
        tonic::Code::Internal => "INTERNAL",
        tonic::Code::Unavailable => "UNAVAILABLE",
        tonic::Code::DataLoss => "DATA_LOSS",
        tonic::Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
