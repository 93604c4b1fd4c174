//! The real binary with an OTLP endpoint: RPC spans reach an OpenTelemetry collector (a real
//! OTLP/gRPC server here), as children of the caller's `traceparent`, and are flushed at exit;
//! metrics are pushed to the same collector.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use purge_service::pb::PurgeKind;
use tokio_stream::wrappers::TcpListenerStream;

use crate::support::{Binary, request, wait_terminal};

/// Keeps every export it receives.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<ExportTraceServiceRequest>>>);

/// Keeps every metrics export it receives.
#[derive(Clone, Default)]
struct MetricsCollector(Arc<Mutex<Vec<ExportMetricsServiceRequest>>>);

#[tonic::async_trait]
impl MetricsService for MetricsCollector {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// Pushed metrics reach the collector: the binary flushes them at exit, with the RPC histogram
/// counting the CreatePurge made and the purge counted as created.
#[tokio::test]
async fn metrics_are_pushed_to_the_collector() {
    let collector = Collector::default();
    let metrics = MetricsCollector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .add_service(MetricsServiceServer::new(metrics.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let mut service = Binary::start(
        "",
        &format!("[telemetry]\notlp_endpoint = \"http://{otlp}\"\nservice_name = \"purge-test\"\n"),
    );
    let mut client = service.client().await;
    let created = client
        .create_purge(request(
            "sandbox",
            PurgeKind::Url,
            &["https://example.com/m"],
        ))
        .await
        .unwrap()
        .into_inner();
    wait_terminal(&client, &created.id, Duration::from_secs(20)).await;
    service.terminate();
    let exit = service.exit(Duration::from_secs(20)).await;
    assert!(exit.success(), "exit status {exit:?}");

    let exports = metrics.0.lock().unwrap().clone();
    let all: Vec<_> = exports
        .iter()
        .flat_map(|e| &e.resource_metrics)
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
        .collect();
    let names: Vec<&str> = all.iter().map(|m| m.name.as_str()).collect();
    let create_calls: u64 = all
        .iter()
        .filter(|m| m.name == "rpc.server.call.duration")
        .filter_map(|m| match &m.data {
            Some(Data::Histogram(h)) => Some(&h.data_points),
            _ => None,
        })
        .flatten()
        .filter(|p| {
            p.attributes.iter().any(|a| {
                a.key == "rpc.method"
                    && matches!(
                        a.value.as_ref().and_then(|v| v.value.as_ref()),
                        Some(Value::StringValue(s)) if s == "purge.v1.PurgeService/CreatePurge"
                    )
            })
        })
        .map(|p| p.count)
        .max()
        .unwrap_or(0);
    assert_eq!(create_calls, 1, "metrics pushed: {names:?}");
    assert!(names.contains(&"purge.created"), "{names:?}");
    assert!(names.contains(&"purge.provider.calls"), "{names:?}");
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::test]
async fn rpc_spans_are_exported_under_the_callers_trace() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );

    let mut service = Binary::start(
        "",
        &format!("[telemetry]\notlp_endpoint = \"http://{otlp}\"\nservice_name = \"purge-test\"\n"),
    );
    let mut client = service.client().await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_id = "00f067aa0ba902b7";
    let mut req = tonic::Request::new(request(
        "sandbox",
        PurgeKind::Url,
        &["https://example.com/traced"],
    ));
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{parent_id}-01").parse().unwrap(),
    );
    let created = client.create_purge(req).await.unwrap().into_inner();
    wait_terminal(&client, &created.id, Duration::from_secs(20)).await;

    // Spans still buffered are exported at shutdown.
    service.terminate();
    let exit = service.exit(Duration::from_secs(20)).await;
    assert!(exit.success(), "exit status {exit:?}");

    let exports = collector.0.lock().unwrap().clone();
    let resource_spans: Vec<_> = exports.iter().flat_map(|e| &e.resource_spans).collect();
    let service_names: Vec<String> = resource_spans
        .iter()
        .filter_map(|r| r.resource.as_ref())
        .flat_map(|r| &r.attributes)
        .filter(|a| a.key == "service.name")
        .filter_map(|a| match a.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            _ => None,
        })
        .collect();
    assert!(
        service_names.iter().any(|s| s == "purge-test"),
        "{service_names:?}"
    );
    let spans: Vec<_> = resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .collect();
    let create = spans
        .iter()
        .find(|s| s.name == "purge.v1.PurgeService/CreatePurge")
        .unwrap_or_else(|| {
            let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
            panic!("no CreatePurge span among {names:?}")
        });
    assert_eq!(hex::encode(&create.trace_id), trace_id);
    assert_eq!(hex::encode(&create.parent_span_id), parent_id);
    // The work behind it is traced too: the provider call of the batch.
    assert!(
        spans.iter().any(|s| s.name == "provider_call"),
        "{:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn spans_are_exported_over_tls_to_a_collector_with_its_own_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = crate::pki::Ca::new("collector CA");
    let server = ca.server(9);
    let ca_file = crate::pki::write(dir.path(), "ca.crt", &ca.pem);
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let tls = tonic::transport::ServerTlsConfig::new().identity(
        tonic::transport::Identity::from_pem(&server.cert, &server.key),
    );
    tokio::spawn(
        tonic::transport::Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let mut service = Binary::start(
        "",
        &format!(
            "[telemetry]\notlp_endpoint = \"https://localhost:{port}\"\notlp_ca_file = {ca_file:?}\n"
        ),
    );
    let mut client = service.client().await;
    let created = client
        .create_purge(request(
            "sandbox",
            PurgeKind::Url,
            &["https://example.com/tls"],
        ))
        .await
        .unwrap()
        .into_inner();
    wait_terminal(&client, &created.id, Duration::from_secs(20)).await;
    service.terminate();
    let exit = service.exit(Duration::from_secs(20)).await;
    assert!(exit.success(), "exit status {exit:?}");
    let spans: usize = collector
        .0
        .lock()
        .unwrap()
        .iter()
        .flat_map(|e| &e.resource_spans)
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len())
        .sum();
    assert!(spans > 0, "no span reached the TLS collector");
}
