//! Logging and tracing: text or JSON lines, filtered by `RUST_LOG` or the configured
//! directives, and, when an OTLP endpoint is configured, the same spans exported to an
//! OpenTelemetry collector over OTLP/gRPC, continuing the caller's W3C trace context.

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogFormat, TelemetryConfig};

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("telemetry.otlp_endpoint {endpoint:?}: cannot build the OTLP exporter")]
    Exporter {
        endpoint: String,
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
    #[error("telemetry.otlp_ca_file = {path:?}: cannot read")]
    CaFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What must be flushed before the process exits.
#[must_use = "call shutdown() before exiting, or the last spans are lost"]
pub struct Telemetry {
    traces: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered. Runs off the async workers: the exporter needs them.
    pub async fn shutdown(self) {
        if let Some(provider) = self.traces {
            let flushed = tokio::task::spawn_blocking(move || provider.shutdown()).await;
            if let Ok(Err(e)) = flushed {
                eprintln!("cannot flush traces: {e}");
            }
        }
    }
}

/// Whether the installed subscriber exports spans over OTLP.
static EXPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether spans are exported: the OpenTelemetry attributes of a span and the caller's
/// trace context are worth their cost only then.
pub fn exporting() -> bool {
    EXPORTING.load(std::sync::atomic::Ordering::Relaxed)
}

/// Installs the global subscriber (a second call, as in tests, keeps the first). Call from
/// within the Tokio runtime: the OTLP exporter runs on it.
pub fn init(config: &TelemetryConfig) -> Result<Telemetry, TelemetryError> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.filter));
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let fmt = match config.format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .boxed(),
    };
    let traces = match &config.otlp_endpoint {
        Some(endpoint) => Some(tracer_provider(endpoint, config)?),
        None => None,
    };
    let otel = traces.as_ref().map(|provider| {
        tracing_opentelemetry::layer().with_tracer(provider.tracer("purge-service"))
    });
    let installed = tracing_subscriber::registry()
        .with(otel)
        .with(fmt)
        .with(filter)
        .try_init()
        .is_ok();
    if installed && traces.is_some() {
        EXPORTING.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    Ok(Telemetry { traces })
}

fn tracer_provider(
    endpoint: &str,
    config: &TelemetryConfig,
) -> Result<SdkTracerProvider, TelemetryError> {
    let service_name = &config.service_name;
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(std::time::Duration::from_secs(5));
    if endpoint.starts_with("https://") {
        exporter = exporter.with_tls_config(otlp_tls(config.otlp_ca_file.as_deref())?);
    }
    let exporter = exporter
        .build()
        .map_err(|source| TelemetryError::Exporter {
            endpoint: endpoint.to_owned(),
            source,
        })?;
    // The batch processor exports on the Tokio runtime, where tonic's channel lives.
    let processor =
        BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service_name.to_owned())
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource)
        .build())
}

/// TLS to the collector: its CA from `ca_file`, else the public web roots.
fn otlp_tls(
    ca_file: Option<&std::path::Path>,
) -> Result<tonic::transport::ClientTlsConfig, TelemetryError> {
    let tls = tonic::transport::ClientTlsConfig::new();
    match ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|source| TelemetryError::CaFile {
                path: path.to_owned(),
                source,
            })?;
            Ok(tls.ca_certificate(tonic::transport::Certificate::from_pem(pem)))
        }
        None => Ok(tls.with_webpki_roots()),
    }
}

/// Makes `span`, not yet entered, a child of the caller's trace (`traceparent` metadata),
/// when traces are exported; otherwise does nothing.
pub fn continue_remote_trace(span: &tracing::Span, metadata: &tonic::metadata::MetadataMap) {
    let parent = TraceContextPropagator::new().extract(&MetadataCarrier(metadata));
    // Fails only when no OpenTelemetry layer is installed: nothing to continue then.
    let _ = span.set_parent(parent);
}

struct MetadataCarrier<'a>(&'a tonic::metadata::MetadataMap);

impl Extractor for MetadataCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}
