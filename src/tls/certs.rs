//! Reading PEM files into a rustls server config, and what a certificate says about itself
//! (serial, expiry, subject alternative names), parsed with `x509-parser`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::extensions::GeneralName;

use super::settings::{ClientAuth, ServerTlsConfig};

/// Why a certificate, key or CA file cannot be used; names the setting and the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{field} = {path:?}: cannot read the file")]
    Read {
        field: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{field} = {path:?}: not PEM")]
    Pem {
        field: &'static str,
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("{field} = {path:?}: no certificate in the file")]
    NoCertificate { field: &'static str, path: PathBuf },
    #[error("{field} = {path:?}: not an X.509 certificate: {reason}")]
    Certificate {
        field: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("server.tls.key_file = {key:?} does not fit server.tls.cert_file = {cert:?}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("server.tls.client_ca_file = {path:?}: cannot verify clients with it")]
    ClientCa {
        path: PathBuf,
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
}

/// What the logs say about a certificate: never key material.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// Hex, as `openssl x509 -serial` prints it.
    pub serial: String,
    /// RFC 3339.
    pub not_after: String,
    /// The same instant in seconds since the epoch, for the expiry gauge.
    pub not_after_unix: i64,
    pub subject: String,
}

/// The ring provider, the one crypto backend of the service.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(field: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        field,
        path: path.to_owned(),
        source,
    })
}

/// Every certificate of a PEM file, in order; at least one.
pub fn certificates(
    field: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(field, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            field,
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            field,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The rustls config the files of `tls` describe, and what its leaf certificate says.
pub fn server_config(tls: &ServerTlsConfig) -> Result<(rustls::ServerConfig, CertInfo), TlsError> {
    let chain = certificates("server.tls.cert_file", &tls.cert_file)?;
    let info = info(&chain[0]).map_err(|e| TlsError::Certificate {
        field: "server.tls.cert_file",
        path: tls.cert_file.clone(),
        reason: e.to_string(),
    })?;
    let key_pem = read("server.tls.key_file", &tls.key_file)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|source| TlsError::Pem {
        field: "server.tls.key_file",
        path: tls.key_file.clone(),
        source,
    })?;
    let provider = provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Mismatch {
            cert: tls.cert_file.clone(),
            key: tls.key_file.clone(),
            source,
        })?;
    let builder = match &tls.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for ca in certificates("server.tls.client_ca_file", path)? {
                roots.add(ca).map_err(|e| TlsError::Certificate {
                    field: "server.tls.client_ca_file",
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = match tls.client_auth {
                ClientAuth::Required => verifier,
                ClientAuth::Optional => verifier.allow_unauthenticated(),
            };
            let verifier = verifier.build().map_err(|source| TlsError::ClientCa {
                path: path.clone(),
                source,
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|source| TlsError::Mismatch {
            cert: tls.cert_file.clone(),
            key: tls.key_file.clone(),
            source,
        })?;
    // gRPC runs on HTTP/2 only; clients such as grpc-go insist on ALPN saying so.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok((config, info))
}

/// Serial, expiry and subject of a DER certificate.
pub fn info(
    cert: &CertificateDer<'_>,
) -> Result<CertInfo, x509_parser::nom::Err<x509_parser::error::X509Error>> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert)?;
    let not_after_unix = x509.validity().not_after.timestamp();
    let not_after = chrono::DateTime::from_timestamp(not_after_unix, 0)
        .map(|t| t.to_rfc3339())
        .unwrap_or_else(|| format!("{not_after_unix} (unix seconds)"));
    Ok(CertInfo {
        serial: x509.raw_serial_as_string().replace(':', ""),
        not_after,
        not_after_unix,
        subject: x509.subject().to_string(),
    })
}

/// The DNS names (lowercase) and URIs (SPIFFE IDs among them) a client certificate's subject
/// alternative names give; empty when it cannot be parsed.
pub fn subject_alt_names(cert: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, x509)) = x509_parser::parse_x509_certificate(cert) else {
        return Vec::new();
    };
    let Ok(Some(san)) = x509.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some(dns.to_ascii_lowercase()),
            GeneralName::URI(uri) => Some((*uri).to_owned()),
            _ => None,
        })
        .collect()
}
