//! The client side of `purge-service health`: one gRPC health Check, so the image itself can be
//! an exec probe or a `helm test` hook without a grpcurl image.

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
}

/// Checks service `""` (the whole server) at `addr` (`host:port`); Ok only when it answers
/// SERVING within `timeout` (connect and call together).
pub async fn check(addr: &str, timeout: Duration) -> Result<(), ProbeError> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|source| ProbeError::Address {
            addr: addr.into(),
            source,
        })?
        .connect_timeout(timeout)
        .timeout(timeout);
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
