//! The client side of `purge-service health`: one gRPC health Check, so the image itself can be
//! an exec probe or a `helm test` hook without a grpcurl image, over TLS when the server
//! serves TLS (kubelet's own gRPC probe cannot).

use std::time::Duration;

use tonic::transport::Endpoint;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Why a health check did not find the service SERVING.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("invalid address {addr:?}")]
    Address {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("cannot connect to {addr} within {timeout:?}")]
    Connect { addr: String, timeout: Duration },
    #[error("health check of {addr} failed: {status}")]
    Call { addr: String, status: tonic::Status },
    #[error("{addr} is {status}")]
    NotServing { addr: String, status: String },
    #[error("cannot read {path:?}")]
    TlsFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// TLS for the probe of a server with `[server.tls]`: the CA that signed the server's
/// certificate and, when the server wants one, the probe's own certificate and key.
#[derive(Clone, Debug, Default)]
pub struct ProbeTls {
    pub ca_file: Option<std::path::PathBuf>,
    pub cert_file: Option<std::path::PathBuf>,
    pub key_file: Option<std::path::PathBuf>,
    /// The name the server's certificate must carry; the host of `addr` when unset.
    pub domain: Option<String>,
}

impl ProbeTls {
    fn is_on(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some()
    }

    fn config(&self) -> Result<tonic::transport::ClientTlsConfig, ProbeError> {
        let read = |path: &std::path::PathBuf| {
            std::fs::read(path).map_err(|source| ProbeError::TlsFile {
                path: path.clone(),
                source,
            })
        };
        let mut tls = tonic::transport::ClientTlsConfig::new();
        if let Some(ca) = &self.ca_file {
            tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?));
        }
        if let (Some(cert), Some(key)) = (&self.cert_file, &self.key_file) {
            tls = tls.identity(tonic::transport::Identity::from_pem(
                read(cert)?,
                read(key)?,
            ));
        }
        if let Some(domain) = &self.domain {
            tls = tls.domain_name(domain.clone());
        }
        Ok(tls)
    }
}

/// Checks service `""` (the whole server) at `addr` (`host:port`); Ok only when it answers
/// SERVING within `timeout` (connect and call together).
pub async fn check(addr: &str, timeout: Duration, tls: &ProbeTls) -> Result<(), ProbeError> {
    let scheme = if tls.is_on() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|source| ProbeError::Address {
            addr: addr.into(),
            source,
        })?
        .connect_timeout(timeout)
        .timeout(timeout);
    if tls.is_on() {
        endpoint = endpoint
            .tls_config(tls.config()?)
            .map_err(|source| ProbeError::Address {
                addr: addr.into(),
                source,
            })?;
    }
    let call = async {
        let channel = endpoint.connect().await.map_err(|_| ProbeError::Connect {
            addr: addr.into(),
            timeout,
        })?;
        HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map_err(|status| ProbeError::Call {
                addr: addr.into(),
                status,
            })
    };
    let answer = tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| ProbeError::Connect {
            addr: addr.into(),
            timeout,
        })??
        .into_inner();
    match answer.status() {
        ServingStatus::Serving => Ok(()),
        other => Err(ProbeError::NotServing {
            addr: addr.into(),
            status: other.as_str_name().into(),
        }),
    }
}
