//! TLS for the gRPC port (our own rustls acceptor, certificates rotated from their files,
//! client certificates handed to the handlers) and the client-side TLS of Redis and OTLP.

pub mod accept;
pub mod certs;
pub mod reload;
pub mod settings;

pub use accept::{Conn, ConnInfo, incoming};
pub use certs::{CertInfo, TlsError, subject_alt_names};
pub use reload::Reloading;
pub use settings::{ClientAuth, ServerTlsConfig};

/// Makes ring the process-wide rustls provider, for the clients (Redis, OTLP) that use the
/// default one. Idempotent.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The SANs of the client certificate of a call's connection, if it sent one.
pub fn peer_names(extensions: &tonic::Extensions) -> Vec<String> {
    extensions
        .get::<ConnInfo>()
        .and_then(|info| info.peer_certs.as_ref())
        .and_then(|chain| chain.first().map(subject_alt_names))
        .unwrap_or_default()
}
