//! CDNetworks: CDN Pro (`type = "cdnpro"`) and Content Management (`type = "cdnetworks"`),
//! sharing settings for authentication, one signed HTTP call, and reading of `x-cnc-request-id`
//! and of `Code` fields that are strings on some endpoints and integers on others.

pub mod auth;
mod cdnpro;
mod content;
pub mod dialect;

pub use cdnpro::{CdnPro, CdnProSettings, CdnProTarget};
pub use content::{ContentManagement, ContentSettings};

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use chrono::Utc;
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::http::{read_error, send_error};
use super::{CallBudget, ProviderError, TaskProgress, TaskQuery};
use crate::settings::{ConfigError, SecretRef};

pub const DEFAULT_ENDPOINT: &str = "https://api.cdnetworks.com";

fn default_endpoint() -> String {
    DEFAULT_ENDPOINT.into()
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

/// How long a task the provider does not report on is still given before its targets fail.
fn default_missing_timeout() -> Duration {
    Duration::from_secs(600)
}

/// Which CDNetworks authentication scheme to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthScheme {
    /// `CNC-HMAC-SHA256` with an access key and a secret key (what the official SDKs use).
    Aksk,
    /// Legacy: `Date` header and Basic auth with base64(HMAC-SHA1(api key, Date)).
    ApiKey,
}

/// `[providers.auth]`: the scheme and where its secrets come from (env or file, never inline).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    pub scheme: AuthScheme,
    /// AK/SK: the access key.
    pub access_key_env: Option<String>,
    pub access_key_file: Option<PathBuf>,
    /// AK/SK: the secret key.
    pub secret_key_env: Option<String>,
    pub secret_key_file: Option<PathBuf>,
    /// API key: the account user name (not a secret).
    pub username: Option<String>,
    /// API key: the API key.
    pub api_key_env: Option<String>,
    pub api_key_file: Option<PathBuf>,
}

enum Credentials {
    ApiKey {
        username: String,
        api_key: SecretString,
    },
    AkSk {
        access_key: SecretString,
        secret_key: SecretString,
    },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::ApiKey { username, .. } => f
                .debug_struct("ApiKey")
                .field("username", username)
                .finish_non_exhaustive(),
            Credentials::AkSk { .. } => f.write_str("AkSk { .. }"),
        }
    }
}

impl Credentials {
    fn resolve(auth: &AuthSettings, product: &str) -> Result<Credentials, ConfigError> {
        let secret = |env: &Option<String>, file: &Option<PathBuf>, what: &str| {
            SecretRef::new(env.clone(), file.clone()).resolve(&format!("{product} auth.{what}"))
        };
        let unused = |fields: &[(&str, bool)]| -> Result<(), ConfigError> {
            match fields.iter().find(|(_, set)| *set) {
                Some((name, _)) => Err(ConfigError::Invalid(format!(
                    "{product} auth.{name} does not belong to scheme {:?}",
                    auth.scheme
                ))),
                None => Ok(()),
            }
        };
        match auth.scheme {
            AuthScheme::Aksk => {
                unused(&[
                    ("username", auth.username.is_some()),
                    (
                        "api_key_env/api_key_file",
                        auth.api_key_env.is_some() || auth.api_key_file.is_some(),
                    ),
                ])?;
                Ok(Credentials::AkSk {
                    access_key: secret(&auth.access_key_env, &auth.access_key_file, "access_key")?,
                    secret_key: secret(&auth.secret_key_env, &auth.secret_key_file, "secret_key")?,
                })
            }
            AuthScheme::ApiKey => {
                unused(&[
                    (
                        "access_key_env/access_key_file",
                        auth.access_key_env.is_some() || auth.access_key_file.is_some(),
                    ),
                    (
                        "secret_key_env/secret_key_file",
                        auth.secret_key_env.is_some() || auth.secret_key_file.is_some(),
                    ),
                ])?;
                let username =
                    auth.username
                        .clone()
                        .filter(|u| !u.is_empty())
                        .ok_or_else(|| {
                            ConfigError::Invalid(format!(
                                "{product} auth: scheme \"api_key\" needs username"
                            ))
                        })?;
                Ok(Credentials::ApiKey {
                    username,
                    api_key: secret(&auth.api_key_env, &auth.api_key_file, "api_key")?,
                })
            }
        }
    }
}

/// An answer read off the wire, before the product classifies it.
#[derive(Debug)]
struct Reply {
    status: reqwest::StatusCode,
    location: Option<String>,
    request_id: Option<String>,
    body: Value,
    /// These credentials were accepted before: a 401 now is about this one signature (a
    /// timestamp another replica used in the same second, a clock step), not the keys.
    credentials_proven: bool,
}

impl Reply {
    /// ` (request <id>)` for error messages, so support can find the call.
    fn request_note(&self) -> String {
        self.request_id
            .as_deref()
            .map(|id| format!(" (request {id})"))
            .unwrap_or_default()
    }

    /// `Code`/`code`, whether the endpoint sends it as a string or an integer.
    fn code(&self) -> Option<String> {
        field(&self.body, &["Code", "code"]).and_then(scalar)
    }

    fn message(&self) -> String {
        field(&self.body, &["Message", "message", "msg"])
            .and_then(scalar)
            .unwrap_or_default()
    }
}

/// The first of `names` present in `body`.
fn field<'a>(body: &'a Value, names: &[&str]) -> Option<&'a Value> {
    names.iter().find_map(|n| body.get(*n))
}

/// A string or a number as text; `None` for anything else.
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A count sent as a number or a numeric string.
fn count(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Number(n) => n.as_u64().or_else(|| n.as_f64().map(|f| f.max(0.0) as u64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Errors every CDNetworks endpoint signals the same way, by HTTP status.
fn by_http_status(reply: &Reply, what: &str) -> Option<ProviderError> {
    let detail = format!(
        "{what}: HTTP {} {} {}{}",
        reply.status.as_u16(),
        reply.code().unwrap_or_default(),
        reply.message(),
        reply.request_note()
    );
    match reply.status.as_u16() {
        401 if reply.credentials_proven => Some(ProviderError::Transient {
            message: format!("{detail}; these credentials worked before: signing again"),
            source: None,
        }),
        401 | 403 => Some(ProviderError::Auth { message: detail }),
        429 => Some(ProviderError::Throttled {
            message: detail,
            retry_after: None,
        }),
        500..=599 => Some(ProviderError::Transient {
            message: detail,
            source: None,
        }),
        _ => None,
    }
}

/// One CDNetworks API account: endpoint, credentials and the shared HTTP client.
#[derive(Debug)]
struct Api {
    http: reqwest::Client,
    base: url::Url,
    host: String,
    credentials: Credentials,
    timeout: Duration,
    /// Whether the provider has accepted these credentials since start.
    credentials_proven: AtomicBool,
    /// The last AK/SK timestamp used: a signed request may not be replayed within 5 minutes,
    /// so two identical calls in one second get different timestamps.
    last_timestamp: AtomicI64,
}

impl Api {
    fn new(
        product: &str,
        endpoint: &str,
        auth: &AuthSettings,
        timeout: Duration,
        http: reqwest::Client,
    ) -> Result<Api, ConfigError> {
        let (base, host) = super::http::endpoint(product, endpoint)?;
        Ok(Api {
            http,
            base,
            host,
            credentials: Credentials::resolve(auth, product)?,
            timeout,
            last_timestamp: AtomicI64::new(0),
            credentials_proven: AtomicBool::new(false),
        })
    }

    /// Now, or one second after the last timestamp used when that is later (but never more
    /// than a minute ahead of the clock).
    fn timestamp(&self) -> i64 {
        let now = Utc::now().timestamp();
        let mut last = self.last_timestamp.load(Ordering::Relaxed);
        loop {
            let next = if last >= now && last < now + 60 {
                last + 1
            } else {
                now
            };
            match self.last_timestamp.compare_exchange(
                last,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return next,
                Err(current) => last = current,
            }
        }
    }

    /// Sends one call, signed afresh (a new `Date` or timestamp every attempt). Transport
    /// failures are classified here; HTTP answers are returned for the product to read.
    async fn send(
        &self,
        method: Method,
        path: &str,
        query: &str,
        body: Option<&Value>,
    ) -> Result<Reply, ProviderError> {
        let what = format!("{method} {path}");
        let bytes = match body {
            Some(b) => serde_json::to_vec(b).map_err(|e| ProviderError::Protocol {
                message: format!("{what}: cannot encode the body: {e}"),
            })?,
            None => Vec::new(),
        };
        let mut url = self.base.clone();
        let base_path = self.base.path().trim_end_matches('/');
        url.set_path(&format!("{base_path}{path}"));
        url.set_query((!query.is_empty()).then_some(query));
        let content_type = "application/json";
        let mut req = self
            .http
            .request(method.clone(), url.clone())
            .timeout(self.timeout)
            .header("Content-Type", content_type)
            .header("Accept", "application/json")
            .header("Host", &self.host);
        match &self.credentials {
            Credentials::ApiKey { username, api_key } => {
                let date = httpdate::fmt_http_date(std::time::SystemTime::now());
                let authorization =
                    auth::api_key_authorization(username, api_key.expose_secret(), &date);
                req = req
                    .header("Date", date)
                    .header("Authorization", authorization);
            }
            Credentials::AkSk {
                access_key,
                secret_key,
            } => {
                let timestamp = self.timestamp();
                let authorization = auth::aksk_authorization(&auth::AkSkInput {
                    access_key: access_key.expose_secret(),
                    secret_key: secret_key.expose_secret(),
                    method: method.as_str(),
                    path: url.path(),
                    query: url.query().unwrap_or(""),
                    content_type,
                    host: &self.host,
                    timestamp,
                    body: &bytes,
                });
                req = req
                    .header("x-cnc-accessKey", access_key.expose_secret())
                    .header("x-cnc-timestamp", timestamp.to_string())
                    .header("x-cnc-auth-method", "AKSK")
                    .header("Authorization", authorization);
            }
        }
        if body.is_some() {
            req = req.body(bytes);
        }
        let response = req.send().await.map_err(|e| send_error(&what, e))?;
        let status = response.status();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let location = header("location");
        let request_id = header("x-cnc-request-id");
        let text = response.text().await.map_err(|e| read_error(&what, e))?;
        let body = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        // A 401 after the keys worked is retried once: the flag is spent on it, so revoked
        // keys fail at the next 401 instead of being retried for every call.
        let credentials_proven = match status.as_u16() {
            401 => self.credentials_proven.swap(false, Ordering::Relaxed),
            _ => {
                if status.is_success() {
                    self.credentials_proven.store(true, Ordering::Relaxed);
                }
                self.credentials_proven.load(Ordering::Relaxed)
            }
        };
        Ok(Reply {
            credentials_proven,
            status,
            location,
            request_id,
            body,
        })
    }
}

/// Both products answer one task per status call: each call after the first waits for
/// `budget`, and what was read is reported even when a later call fails (the rest is asked
/// again next round).
async fn poll_each<'a, F, Fut>(
    tasks: &'a [TaskQuery],
    budget: &dyn CallBudget,
    mut status: F,
) -> Result<Vec<(String, TaskProgress)>, ProviderError>
where
    F: FnMut(&'a TaskQuery) -> Fut,
    Fut: std::future::Future<Output = Result<TaskProgress, ProviderError>>,
{
    let mut out = Vec::with_capacity(tasks.len());
    for (i, task) in tasks.iter().enumerate() {
        if i > 0 && budget.acquire().await.is_err() {
            break;
        }
        match status(task).await {
            Ok(progress) => out.push((task.task_id.clone(), progress)),
            Err(e) if out.is_empty() => return Err(e),
            Err(_) => break,
        }
    }
    Ok(out)
}

/// Age of a task, for deciding when a task the provider stays silent about has failed.
fn age(submitted_at: chrono::DateTime<Utc>) -> Duration {
    (Utc::now() - submitted_at).to_std().unwrap_or_default()
}

super::factory_from_new!(CdnProSettings => CdnPro);
super::factory_from_new!(ContentSettings => ContentManagement);
