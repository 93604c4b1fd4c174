//! The HTTP side of EdgeOne: one signed POST per attempt, the `{"Response": ...}` envelope, and
//! the classification of every failure (API error codes in `api.rs`, transport errors here).

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::header::{DATE, HeaderMap};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::api;
use super::sign::{SignInput, authorization};
use crate::providers::ProviderError;
use crate::providers::http::{read_error, send_error};

const CONTENT_TYPE: &str = "application/json";

pub(super) struct Credentials {
    pub secret_id: SecretString,
    pub secret_key: SecretString,
    pub token: Option<SecretString>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials { .. }")
    }
}

/// Signs and sends Tencent Cloud API calls to one endpoint.
#[derive(Debug)]
pub(super) struct Client {
    pub http: reqwest::Client,
    pub endpoint: url::Url,
    /// `host[:port]` of the endpoint, signed and sent as `Host`.
    pub host: String,
    pub credentials: Credentials,
    pub region: Option<String>,
    pub language: Option<String>,
    pub timeout: Duration,
    /// EdgeOne's clock minus ours in seconds, learned from the `Date` of its answers, so a
    /// skewed host clock signs acceptably and looks tasks up in the right window.
    skew_secs: AtomicI64,
}

/// Why one attempt failed: an API error code (still to classify), or a classified error.
enum Failure {
    Api { code: String, message: String },
    Other(ProviderError),
}

impl Client {
    pub fn new(
        http: reqwest::Client,
        endpoint: url::Url,
        host: String,
        credentials: Credentials,
        region: Option<String>,
        language: Option<String>,
        timeout: Duration,
    ) -> Client {
        Client {
            http,
            endpoint,
            host,
            credentials,
            region,
            language,
            timeout,
            skew_secs: AtomicI64::new(0),
        }
    }

    /// Calls `action`. `AuthFailure.SignatureExpire` is answered once at once with a fresh
    /// signature: a new timestamp, later than the refused one and corrected by the server's
    /// clock. Returns the `Response` object and its `RequestId`.
    pub async fn call<T: DeserializeOwned>(
        &self,
        action: &str,
        body: &impl Serialize,
    ) -> Result<(T, Option<String>), ProviderError> {
        let body = serde_json::to_vec(body).map_err(|e| ProviderError::Protocol {
            message: format!("cannot encode {action}: {e}"),
        })?;
        let mut not_before = i64::MIN;
        let mut resigned = false;
        loop {
            let timestamp = self.timestamp(not_before);
            match self.call_once(action, &body, timestamp).await {
                Ok((value, request_id)) => {
                    let parsed =
                        serde_json::from_value(value).map_err(|e| ProviderError::Protocol {
                            message: format!("{action} response: {e}"),
                        })?;
                    return Ok((parsed, request_id));
                }
                Err(Failure::Api { code, message })
                    if api::is_signature_expired(&code) && !resigned =>
                {
                    // The answer's `Date` already corrected the known clock difference.
                    resigned = true;
                    not_before = timestamp + 1;
                    tracing::warn!(
                        action,
                        message,
                        skew_secs = self.skew_secs.load(Ordering::Relaxed),
                        "EdgeOne says the signature expired; signing again with a new timestamp"
                    );
                }
                Err(Failure::Api { code, message }) => {
                    return Err(api::classify(&code, &message));
                }
                Err(Failure::Other(e)) => return Err(e),
            }
        }
    }

    /// Keeps EdgeOne's clock (an answer's `Date`) against ours, once they differ by more than
    /// the header's one-second resolution and the call's latency can explain: signatures and
    /// the task lookup's time window follow EdgeOne's clock.
    fn observe_clock(&self, server: i64) {
        let observed = server - Utc::now().timestamp();
        let known = self.skew_secs.load(Ordering::Relaxed);
        if (observed - known).abs() >= 2 {
            self.skew_secs.store(observed, Ordering::Relaxed);
        }
    }

    /// EdgeOne's clock minus ours, as far as we know it.
    pub fn skew(&self) -> chrono::Duration {
        chrono::Duration::seconds(self.skew_secs.load(Ordering::Relaxed))
    }

    /// Now by EdgeOne's clock.
    fn now(&self) -> DateTime<Utc> {
        Utc::now() + self.skew()
    }

    /// Now by EdgeOne's clock, and at least `not_before`.
    fn timestamp(&self, not_before: i64) -> i64 {
        self.now().timestamp().max(not_before)
    }

    async fn call_once(
        &self,
        action: &str,
        body: &[u8],
        timestamp: i64,
    ) -> Result<(serde_json::Value, Option<String>), Failure> {
        let creds = &self.credentials;
        let auth = authorization(&SignInput {
            secret_id: creds.secret_id.expose_secret(),
            secret_key: creds.secret_key.expose_secret(),
            service: "teo",
            host: &self.host,
            content_type: CONTENT_TYPE,
            timestamp,
            body,
        });
        let mut req = self
            .http
            .post(self.endpoint.clone())
            .timeout(self.timeout)
            .header("Content-Type", CONTENT_TYPE)
            .header("Host", &self.host)
            .header("X-TC-Action", action)
            .header("X-TC-Timestamp", timestamp.to_string())
            .header("X-TC-Version", api::VERSION)
            .header("Authorization", auth)
            .body(body.to_vec());
        if let Some(region) = &self.region {
            req = req.header("X-TC-Region", region);
        }
        if let Some(token) = &creds.token {
            req = req.header("X-TC-Token", token.expose_secret());
        }
        if let Some(language) = &self.language {
            req = req.header("X-TC-Language", language);
        }
        let response = req
            .send()
            .await
            .map_err(|e| Failure::Other(send_error(action, e)))?;
        let status = response.status();
        if let Some(server) = server_time(response.headers()) {
            self.observe_clock(server);
        }
        let text = response
            .text()
            .await
            .map_err(|e| Failure::Other(read_error(action, e)))?;
        if status.as_u16() == 429 {
            return Err(Failure::Other(ProviderError::Throttled {
                message: format!("{action}: HTTP 429"),
                retry_after: None,
            }));
        }
        if status.is_server_error() {
            return Err(Failure::Other(ProviderError::Transient {
                message: format!("{action}: HTTP {status}"),
                source: None,
            }));
        }
        let envelope: api::Envelope = serde_json::from_str(&text).map_err(|e| {
            Failure::Other(ProviderError::Protocol {
                message: format!("{action}: HTTP {status}, not a Tencent Cloud response: {e}"),
            })
        })?;
        let mut response = envelope.response;
        let request_id = response
            .get("RequestId")
            .and_then(|v| v.as_str())
            .map(str::to_owned);
        if let Some(error) = response.get_mut("Error").map(serde_json::Value::take) {
            let error: api::ApiError = serde_json::from_value(error).map_err(|e| {
                Failure::Other(ProviderError::Protocol {
                    message: format!("{action}: unreadable error: {e}"),
                })
            })?;
            let message = format!(
                "{} (request {})",
                error.message.unwrap_or_default(),
                request_id.as_deref().unwrap_or("?")
            );
            return Err(Failure::Api {
                code: error.code,
                message,
            });
        }
        Ok((response, request_id))
    }
}

/// The Unix time of an HTTP `Date` header.
fn server_time(headers: &HeaderMap) -> Option<i64> {
    let date = headers.get(DATE)?.to_str().ok()?;
    let time = httpdate::parse_http_date(date).ok()?;
    let secs = time.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    i64::try_from(secs).ok()
}
