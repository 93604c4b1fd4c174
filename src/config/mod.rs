//! Typed configuration: defaults, then a TOML file, then `PURGE_*` environment variables
//! (`__` between levels), validated once at start. The types are here; `env` holds the
//! environment overlay, `validate` the checks. Over 500 lines on purpose: one struct per
//! section with its defaults, kept together as the one reference of every setting.

mod env;
mod mask;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::limiter::Rate;
pub use crate::providers::settings::{
    GroupConfig, LimitsConfig, ProviderConfig, ProviderSettings, string_or_number,
};
pub use crate::settings::{ConfigError, ConfigProblems, SecretRef};
pub use env::PlaceError;
pub use mask::{mask_url, mask_urls_in};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub dispatch: DispatchConfig,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default = "default_providers")]
    pub providers: Vec<ProviderConfig>,
    #[serde(default)]
    pub groups: Vec<GroupConfig>,
    /// Callers and their bearer tokens; with none, every call is anonymous and allowed.
    #[serde(default)]
    pub callers: Vec<CallerConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server: ServerConfig::default(),
            store: StoreConfig::default(),
            dispatch: DispatchConfig::default(),
            telemetry: TelemetryConfig::default(),
            admin: AdminConfig::default(),
            providers: default_providers(),
            groups: Vec::new(),
            callers: Vec::new(),
        }
    }
}

fn default_providers() -> Vec<ProviderConfig> {
    vec![ProviderConfig {
        name: "sandbox".into(),
        limits: LimitsConfig::default(),
        settings: ProviderSettings::Sandbox(crate::providers::sandbox::SandboxSettings::default()),
    }]
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// How long shutdown waits for open calls before it gives up on them.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Deadline for unary calls.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Calls served at once, across all connections.
    pub max_concurrent_requests: usize,
    /// Most targets one CreatePurge may carry.
    pub max_targets: usize,
    /// Longest target, host, tag or header value accepted.
    pub max_target_len: usize,
    /// How long an idempotency key keeps answering with the same purge.
    #[serde(with = "humantime_serde")]
    pub idempotency_retention: Duration,
    /// How long a finished purge can still be read.
    #[serde(with = "humantime_serde")]
    pub record_retention: Duration,
    /// Each caller's own CreatePurge rate; over it the caller gets RESOURCE_EXHAUSTED.
    pub caller_rate: Option<Rate>,
    /// How often a WatchPurge re-reads its purge, in case an event was missed.
    #[serde(with = "humantime_serde")]
    pub watch_resync: Duration,
    /// This replica's name in the work queue (its consumer name, with a random suffix);
    /// `HOSTNAME` when unset, `replica` without either.
    pub replica_name: Option<String>,
    /// Largest request message accepted, in bytes; larger ones get RESOURCE_EXHAUSTED.
    pub max_message_size: usize,
    /// HTTP/2 streams (calls, watches) one connection may have open at once.
    pub max_streams_per_connection: u32,
    /// TLS on the gRPC port; plaintext when absent.
    pub tls: Option<crate::tls::ServerTlsConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            drain_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_concurrent_requests: 1024,
            max_targets: 1000,
            max_target_len: 2048,
            idempotency_retention: Duration::from_secs(24 * 3600),
            record_retention: Duration::from_secs(7 * 24 * 3600),
            caller_rate: None,
            watch_resync: Duration::from_secs(2),
            replica_name: None,
            max_message_size: 4 * 1024 * 1024,
            max_streams_per_connection: 256,
            tls: None,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    #[default]
    Memory,
    Redis,
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub backend: Backend,
    pub url: Option<String>,
    pub cluster_urls: Vec<String>,
    /// Prefix of every key, so several deployments can share one Redis.
    pub key_prefix: String,
    /// Deadline for one backend operation.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Bounds of the embedded backend (`backend = "memory"`).
    pub memory: MemoryStoreConfig,
    /// ACL user for Redis (managed services); the URL's user when unset.
    pub username: Option<String>,
    /// Where the Redis password comes from (env variable or file); the URL's when unset.
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
    /// CA of Redis's certificate for `rediss://` URLs; the system roots when unset.
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate and key, when Redis asks for one.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
}

/// How much the embedded backend keeps, so a sidecar that runs for months stays bounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryStoreConfig {
    /// Purge records kept; past it the oldest finished one is forgotten, and when unfinished
    /// purges alone fill it CreatePurge answers RESOURCE_EXHAUSTED.
    pub max_records: std::num::NonZeroUsize,
    /// Idempotency keys kept; past it the oldest is forgotten.
    pub max_idempotency_keys: std::num::NonZeroUsize,
}

impl Default for MemoryStoreConfig {
    fn default() -> Self {
        let cap = std::num::NonZeroUsize::new(50_000).expect("non-zero");
        MemoryStoreConfig {
            max_records: cap,
            max_idempotency_keys: cap,
        }
    }
}

impl StoreConfig {
    /// The same settings with the password of every Redis URL masked.
    pub fn masked(&self) -> StoreConfig {
        StoreConfig {
            url: self.url.as_deref().map(mask_url),
            cluster_urls: self.cluster_urls.iter().map(|u| mask_url(u)).collect(),
            ..self.clone()
        }
    }
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.masked();
        f.debug_struct("StoreConfig")
            .field("backend", &m.backend)
            .field("url", &m.url)
            .field("cluster_urls", &m.cluster_urls)
            .field("key_prefix", &m.key_prefix)
            .field("timeout", &m.timeout)
            .field("memory", &m.memory)
            .field("username", &m.username)
            .field("password_env", &m.password_env)
            .field("password_file", &m.password_file)
            .field("tls_ca_file", &m.tls_ca_file)
            .field("tls_cert_file", &m.tls_cert_file)
            .field("tls_key_file", &m.tls_key_file)
            .finish()
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: Backend::Memory,
            url: None,
            cluster_urls: Vec::new(),
            key_prefix: "purge".into(),
            timeout: Duration::from_secs(2),
            memory: MemoryStoreConfig::default(),
            username: None,
            password_env: None,
            password_file: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DispatchConfig {
    /// How long a batch waits for more targets before it is sent anyway.
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// How soon a running provider task is first polled; then less often, growing by half
    /// each time up to `max_poll_interval`.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub max_poll_interval: Duration,
    /// Submits in flight at once per provider.
    pub max_in_flight: usize,
    /// Work items claimed per queue read.
    pub claim_batch: usize,
    /// Work held this long without a sign of life by another replica is taken over.
    #[serde(with = "humantime_serde")]
    pub reclaim_idle: Duration,
    /// Retries of a failing submit stop after this long; its targets then fail.
    #[serde(with = "humantime_serde")]
    pub retry_max_elapsed: Duration,
    /// A provider task still running after this long fails its targets.
    #[serde(with = "humantime_serde")]
    pub task_timeout: Duration,
    /// Fraction by which rate windows are stretched to absorb network jitter.
    pub rate_margin: f64,
    /// How often provider quotas are re-read.
    #[serde(with = "humantime_serde")]
    pub quota_refresh: Duration,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            linger: Duration::from_millis(100),
            poll_interval: Duration::from_millis(500),
            max_poll_interval: Duration::from_secs(10),
            max_in_flight: 8,
            claim_batch: 512,
            reclaim_idle: Duration::from_secs(30),
            retry_max_elapsed: Duration::from_secs(300),
            task_timeout: Duration::from_secs(3600),
            rate_margin: 0.02,
            quota_refresh: Duration::from_secs(300),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    pub format: LogFormat,
    /// `tracing` filter directives; `RUST_LOG` wins when set.
    pub filter: String,
    /// An OpenTelemetry collector's OTLP/gRPC endpoint (`http://otel-collector:4317`, or
    /// `https://` for TLS): spans are exported there too, continuing callers' `traceparent`.
    /// Off when unset.
    pub otlp_endpoint: Option<String>,
    /// CA of the collector's certificate for an `https://` endpoint; the system roots when unset.
    pub otlp_ca_file: Option<PathBuf>,
    /// `service.name` of the exported spans.
    pub service_name: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            format: LogFormat::Text,
            filter: "info".into(),
            otlp_endpoint: None,
            otlp_ca_file: None,
            service_name: "purge-service".into(),
        }
    }
}

/// The plaintext admin HTTP listener: `/metrics`, `/healthz`, `/readyz`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Where to serve it (`127.0.0.1:9464`); off when unset, so local processes never fight
    /// over a port. Plaintext even when gRPC uses TLS: kubelet probes and scrapers read it.
    pub listen: Option<SocketAddr>,
}

/// A caller: its name, where its bearer token comes from, and what it may purge.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallerConfig {
    pub name: String,
    pub token_env: Option<String>,
    pub token_file: Option<PathBuf>,
    /// Providers or groups it may use; all when absent.
    pub providers: Option<Vec<String>>,
    /// Hosts it may purge (`example.com`, or `.example.com` / `*.example.com` for subdomains);
    /// all when absent.
    pub hosts: Option<Vec<String>>,
    /// Subject alternative names (DNS names, URIs such as SPIFFE IDs) of client certificates
    /// that identify this caller, as its token does.
    #[serde(default)]
    pub cert_sans: Vec<String>,
}

impl CallerConfig {
    /// Whether the caller names a token (else it proves itself by certificate only).
    pub fn has_token(&self) -> bool {
        self.token_env.is_some() || self.token_file.is_some()
    }

    pub fn resolve_token(&self, what: &str) -> Result<SecretString, ConfigError> {
        SecretRef::new(self.token_env.clone(), self.token_file.clone()).resolve(what)
    }
}

impl Config {
    /// Loads defaults, then `file`, then the `PURGE_*` variables of `env`, and validates;
    /// `HOSTNAME` of `env` names the replica unless `server.replica_name` does.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = env.into_iter().collect();
        let hostname = env
            .iter()
            .find(|(k, _)| k == "HOSTNAME")
            .map(|(_, v)| v.clone());
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                toml::from_str::<toml::Table>(&text)?
            }
            None => toml::Table::new(),
        };
        let had_providers = table.contains_key("providers");
        env::overlay(&mut table, env)?;
        // Providers only from variables that do not make valid providers: say why.
        let providers_from_env = !had_providers
            && table
                .get("providers")
                .is_some_and(|p| p.clone().try_into::<Vec<ProviderConfig>>().is_err());
        // Type errors quote the value: a URL with a password in the wrong place must not be
        // printed whole.
        let mut config: Config =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| {
                    let mut message = mask_urls_in(&e.to_string());
                    if providers_from_env {
                        message = message.trim_end().replace('\n', " ");
                        message.push_str(&providers_from_env_hint());
                    }
                    ConfigError::Invalid(message)
                })?;
        if config.server.replica_name.is_none() {
            config.server.replica_name = hostname.filter(|h| !h.is_empty());
        }
        config.validate()?;
        Ok(config)
    }

    /// The effective settings as TOML, for `check-config`; Redis passwords are masked and
    /// secrets are only references (env var or file names).
    pub fn to_toml(&self) -> String {
        let shown = Config {
            store: self.store.masked(),
            ..self.clone()
        };
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render: {e}"))
    }
}

/// Added to a provider error when only `PURGE_PROVIDERS__*` variables define providers.
fn providers_from_env_hint() -> String {
    format!(
        "; PURGE_PROVIDERS__<n>__* variables replace the default sandbox provider instead of \
         changing it: each provider they define needs NAME and TYPE ({}) and that type's \
         required settings, e.g. PURGE_PROVIDERS__0__NAME=sandbox and \
         PURGE_PROVIDERS__0__TYPE=sandbox",
        ProviderSettings::TYPES.join(", ")
    )
}

#[cfg(test)]
mod tests;
