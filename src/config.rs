//! Typed configuration: defaults, then a TOML file, then `PURGE_*` environment variables
//! (`__` between levels), validated once at start.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::limiter::Rate;
pub use crate::providers::settings::{
    GroupConfig, LimitsConfig, ProviderConfig, ProviderSettings, string_or_number,
};
pub use crate::settings::{ConfigError, SecretRef};

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
            .finish()
    }
}

/// Every `scheme://user:password@` in `text` with the password masked.
pub fn mask_urls_in(text: &str) -> String {
    static URL_PASSWORD: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:@/\s]*:)[^@\s]*@")
            .expect("valid regex")
    });
    URL_PASSWORD.replace_all(text, "${head}***@").into_owned()
}

/// `redis://user:secret@host/` -> `redis://user:***@host/`; a URL that does not parse is
/// masked whole, since it may hold a password anywhere.
pub fn mask_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            // redis-rs also reads a password from the query (`redis+unix:///s.sock?pass=...`).
            if u.query_pairs().any(|(k, _)| k == "pass" || k == "password") {
                let pairs: Vec<(String, String)> = u
                    .query_pairs()
                    .map(|(k, v)| {
                        let v = if k == "pass" || k == "password" {
                            "***".into()
                        } else {
                            v.into_owned()
                        };
                        (k.into_owned(), v)
                    })
                    .collect();
                u.query_pairs_mut().clear().extend_pairs(pairs);
            }
            u.to_string()
        }
        Err(_) => "***".into(),
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
    /// An OpenTelemetry collector's OTLP/gRPC endpoint (`http://otel-collector:4317`): spans
    /// are exported there too, continuing callers' `traceparent`. Off when unset.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans.
    pub service_name: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            format: LogFormat::Text,
            filter: "info".into(),
            otlp_endpoint: None,
            service_name: "purge-service".into(),
        }
    }
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
}

impl CallerConfig {
    pub fn resolve_token(&self, what: &str) -> Result<SecretString, ConfigError> {
        SecretRef::new(self.token_env.clone(), self.token_file.clone()).resolve(what)
    }
}

impl Config {
    /// Loads defaults, then `file`, then the `PURGE_*` variables of `env`, and validates.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
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
        overlay_env(&mut table, env)?;
        // Type errors quote the value: a URL with a password in the wrong place must not be
        // printed whole.
        let config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(mask_urls_in(&e.to_string())))?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let mut names = std::collections::HashSet::new();
        for p in &self.providers {
            if p.name.is_empty() || !names.insert(p.name.as_str()) {
                return invalid(format!("providers: duplicate or empty name {:?}", p.name));
            }
            for rate in p.limits.submit.iter().chain(&p.limits.status).flatten() {
                if rate.count == 0 || rate.per.is_zero() {
                    return invalid(format!(
                        "providers.{}.limits: rates need count and per > 0",
                        p.name
                    ));
                }
            }
            if p.limits
                .account
                .as_deref()
                .is_some_and(|a| a.trim().is_empty())
            {
                return invalid(format!(
                    "providers.{}.limits.account: must not be empty",
                    p.name
                ));
            }
            for (kind, cap) in &p.limits.max_per_call {
                if *cap == 0 {
                    return invalid(format!(
                        "providers.{}.limits.max_per_call.{kind}: must be at least 1, got 0",
                        p.name
                    ));
                }
                if crate::model::PurgeKind::parse(kind).is_none() {
                    return invalid(format!(
                        "providers.{}.limits.max_per_call: unknown kind {kind:?}",
                        p.name
                    ));
                }
            }
        }
        if self.server.record_retention < self.server.idempotency_retention {
            return invalid(format!(
                "server.record_retention ({:?}) must be at least server.idempotency_retention ({:?}): a retry must find the purge its key names",
                self.server.record_retention, self.server.idempotency_retention
            ));
        }
        for (field, d) in [
            ("server.request_timeout", self.server.request_timeout),
            ("store.timeout", self.store.timeout),
            ("dispatch.poll_interval", self.dispatch.poll_interval),
            ("dispatch.reclaim_idle", self.dispatch.reclaim_idle),
        ] {
            if d.is_zero() {
                return invalid(format!("{field}: must be more than 0"));
            }
        }
        if let Some(endpoint) = &self.telemetry.otlp_endpoint
            && !endpoint.starts_with("http://")
        {
            return invalid(format!(
                "telemetry.otlp_endpoint: {endpoint:?} must be a plaintext http:// OTLP/gRPC endpoint (a collector or agent beside the service); TLS to a collector is not built in"
            ));
        }
        let mut accounts: BTreeMap<&str, &ProviderConfig> = BTreeMap::new();
        for p in &self.providers {
            let Some(account) = p.limits.account.as_deref() else {
                continue;
            };
            let Some(first) = accounts.insert(account, p) else {
                continue;
            };
            let same_type =
                std::mem::discriminant(&first.settings) == std::mem::discriminant(&p.settings);
            if !same_type
                || first.limits.submit != p.limits.submit
                || first.limits.status != p.limits.status
            {
                return invalid(format!(
                    "providers.{}.limits.account: {account:?} is also the account of provider {:?}; providers sharing an account need the same type and the same limits.submit and limits.status",
                    p.name, first.name
                ));
            }
        }
        for g in &self.groups {
            if !names.insert(g.name.as_str()) {
                return invalid(format!("groups: name {:?} is already used", g.name));
            }
            if g.providers.is_empty() {
                return invalid(format!("groups.{}: needs at least one provider", g.name));
            }
            if let Some(m) = g
                .providers
                .iter()
                .find(|m| !self.providers.iter().any(|p| &p.name == *m))
            {
                return invalid(format!("groups.{}: unknown provider {m:?}", g.name));
            }
        }
        let mut callers = std::collections::HashSet::new();
        for c in &self.callers {
            if !callers.insert(c.name.as_str()) {
                return invalid(format!("callers: duplicate name {:?}", c.name));
            }
            if let Some(p) = c
                .providers
                .iter()
                .flatten()
                .find(|p| !names.contains(p.as_str()))
            {
                return invalid(format!(
                    "callers.{}.providers: unknown provider or group {p:?}",
                    c.name
                ));
            }
        }
        if self.store.backend == Backend::Redis
            && self.store.url.is_none()
            && self.store.cluster_urls.is_empty()
        {
            return invalid("store: backend \"redis\" needs url or cluster_urls".into());
        }
        if self.server.max_targets == 0
            || self.dispatch.max_in_flight == 0
            || self.dispatch.claim_batch == 0
        {
            return invalid(
                "server.max_targets, dispatch.max_in_flight and dispatch.claim_batch must be > 0"
                    .into(),
            );
        }
        if let Some(rate) = self.server.caller_rate
            && (rate.count == 0 || rate.per.is_zero())
        {
            return invalid("server.caller_rate: count and per must be > 0".into());
        }
        Ok(())
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

/// Applies `PURGE_SERVER__LISTEN=...`-style overrides; array items by index
/// (`PURGE_PROVIDERS__0__ZONE_ID`). Values parse as TOML when they can (`100`, `true`,
/// `["a"]`), as strings otherwise.
/// The top-level tables of the config, the first part of a `PURGE_..__..` variable.
const SECTIONS: &[&str] = &[
    "server",
    "store",
    "dispatch",
    "telemetry",
    "providers",
    "groups",
    "callers",
];

fn overlay_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    // Only `PURGE_<SECTION>` and `PURGE_<SECTION>__...` are ours: Kubernetes adds
    // `PURGE_SERVICE_HOST`-style variables for a Service named `purge...`, which must not stop
    // the process from starting. A `__` path under an unknown section is a typo: an error.
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| {
            let Some(rest) = k.strip_prefix("PURGE_") else {
                return false;
            };
            let section = rest.split("__").next().unwrap_or("").to_ascii_lowercase();
            rest.contains("__") || SECTIONS.contains(&section.as_str())
        })
        .collect();
    vars.sort();
    for (key, value) in vars {
        let path: Vec<String> = key["PURGE_".len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        if !SECTIONS.contains(&path[0].as_str()) {
            return Err(ConfigError::Invalid(format!(
                "{key}: no config section {:?}; sections are {}",
                path[0],
                SECTIONS.join(", ")
            )));
        }
        let value = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or(toml::Value::String(value));
        set_path(table, &path, value).map_err(|m| ConfigError::Invalid(format!("{key}: {m}")))?;
    }
    Ok(())
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    if path.is_empty() {
        return Err("empty key".into());
    }
    let mut root = toml::Value::Table(std::mem::take(table));
    let placed = place(&mut root, path, value);
    if let toml::Value::Table(t) = root {
        *table = t;
    }
    placed
}

/// Puts `value` at `path` below `node`, making the tables and arrays on the way: a numeric
/// segment is an array index, so `PROVIDERS__0__NAME` works without a config file too.
fn place(node: &mut toml::Value, path: &[String], value: toml::Value) -> Result<(), String> {
    let Some((seg, rest)) = path.split_first() else {
        *node = value;
        return Ok(());
    };
    let fresh = || match rest.first() {
        Some(next) if next.parse::<usize>().is_ok() => toml::Value::Array(Vec::new()),
        _ => toml::Value::Table(toml::Table::new()),
    };
    match node {
        toml::Value::Table(t) => {
            let child = t.entry(seg.clone()).or_insert_with(fresh);
            place(child, rest, value)
        }
        toml::Value::Array(items) => {
            let i: usize = seg
                .parse()
                .map_err(|_| format!("{seg:?} is not an index"))?;
            if i >= 256 {
                return Err(format!("index {i} is too large"));
            }
            while items.len() <= i {
                items.push(fresh());
            }
            place(&mut items[i], rest, value)
        }
        _ => Err(format!("{seg:?} is below a plain value")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn no_file_means_the_documented_default() {
        let c = Config::load(None, Vec::new()).unwrap();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:50051");
        assert_eq!(c.store.backend, Backend::Memory);
        assert_eq!(c.providers.len(), 1);
        assert_eq!(c.providers[0].name, "sandbox");
    }

    #[test]
    fn env_overrides_file_values_and_nested_arrays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[server]\nlisten = \"0.0.0.0:1\"\n[[providers]]\nname = \"a\"\ntype = \"sandbox\"\ndelay = \"1s\"\n",
        )
        .unwrap();
        let c = Config::load(
            Some(&path),
            env(&[
                ("PURGE_SERVER__LISTEN", "127.0.0.1:7"),
                ("PURGE_DISPATCH__LINGER", "5ms"),
                ("PURGE_PROVIDERS__0__MAX_PER_CALL", "7"),
                ("OTHER", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:7");
        assert_eq!(c.dispatch.linger, Duration::from_millis(5));
        let ProviderSettings::Sandbox(s) = &c.providers[0].settings else {
            panic!("a sandbox provider")
        };
        assert_eq!((s.max_per_call, s.delay), (7, Duration::from_secs(1)));
    }

    #[test]
    fn unknown_fields_and_bad_groups_are_rejected() {
        let t = |s: &str| -> Result<Config, ConfigError> {
            let c: Config = toml::from_str(s)?;
            c.validate()?;
            Ok(c)
        };
        assert!(t("[server]\nlisen = \"x\"").is_err());
        assert!(t("[[providers]]\nname=\"a\"\ntype=\"sandbox\"\nbogus=1").is_err());
        assert!(t("[[groups]]\nname=\"g\"\nproviders=[\"nope\"]").is_err());
        assert!(t("[store]\nbackend=\"redis\"").is_err());
        let two = |b: &str| {
            format!(
                "[[providers]]\nname=\"a\"\ntype=\"sandbox\"\nlimits={{account=\"x\"}}\n[[providers]]\nname=\"b\"\ntype=\"sandbox\"\nlimits={{account=\"x\"{b}}}"
            )
        };
        assert!(t(&two("")).is_ok());
        let err = t(&two(", submit=[{count=1, per=\"1s\"}]")).unwrap_err();
        assert!(
            err.to_string().contains("providers.b.limits.account"),
            "{err}"
        );
        assert!(
            t("[[providers]]\nname=\"a\"\ntype=\"sandbox\"\nlimits={max_per_call={URL=0}}")
                .is_err()
        );
        assert!(t("[server]\nrecord_retention=\"1h\"\nidempotency_retention=\"2h\"").is_err());
        assert!(t("[store]\ntimeout=\"0s\"").is_err());
        assert!(t("[telemetry]\notlp_endpoint=\"http://otel:4317\"").is_ok());
        let err = t("[telemetry]\notlp_endpoint=\"https://otel:4317\"").unwrap_err();
        assert!(err.to_string().contains("telemetry.otlp_endpoint"), "{err}");
    }

    #[test]
    fn redis_passwords_are_masked_in_check_config_and_debug() {
        let c = Config::load(
            None,
            env(&[
                ("PURGE_STORE__BACKEND", "redis"),
                ("PURGE_STORE__URL", "redis://app:hunter2@redis:6379/0"),
                (
                    "PURGE_STORE__CLUSTER_URLS",
                    "[\"redis://:hunter3@n1:7000\"]",
                ),
            ]),
        )
        .unwrap();
        let shown = c.to_toml();
        let debug = format!("{c:?}");
        for text in [&shown, &debug] {
            assert!(
                !text.contains("hunter2") && !text.contains("hunter3"),
                "{text}"
            );
            assert!(text.contains("redis://app:***@redis:6379/0"), "{text}");
        }
        assert_eq!(
            c.store.url.as_deref(),
            Some("redis://app:hunter2@redis:6379/0")
        );
        assert_eq!(mask_url("not a url with pass"), "***");
        let unix = mask_url("redis+unix:///run/redis.sock?db=1&pass=hunter4");
        assert!(!unix.contains("hunter4") && unix.contains("db=1"), "{unix}");
    }

    #[test]
    fn kubernetes_service_variables_are_not_config() {
        let c = Config::load(
            None,
            env(&[
                ("PURGE_SERVICE_HOST", "10.0.0.7"),
                ("PURGE_SERVICE_PORT_GRPC", "50051"),
                ("PURGE_PORT", "tcp://10.0.0.7:50051"),
                ("PURGE_SERVER__MAX_TARGETS", "10"),
                ("PURGE_CONFIG", "/etc/purge.toml"),
                (
                    "PURGE_GROUPS",
                    "[{ name = \"all\", providers = [\"sandbox\"] }]",
                ),
            ]),
        )
        .unwrap();
        assert_eq!(c.server.max_targets, 10);
        assert_eq!(c.groups[0].name, "all");
        let err = Config::load(None, env(&[("PURGE_SERVR__LISTEN", "0.0.0.0:1")])).unwrap_err();
        assert!(err.to_string().contains("PURGE_SERVR__LISTEN"), "{err}");
    }

    #[test]
    fn numeric_account_ids_and_masked_type_errors() {
        let c = Config::load(
            None,
            env(&[
                ("PURGE_PROVIDERS__0__NAME", "sandbox"),
                ("PURGE_PROVIDERS__0__TYPE", "sandbox"),
                ("PURGE_PROVIDERS__0__LIMITS__ACCOUNT", "1300012345"),
            ]),
        )
        .unwrap();
        assert_eq!(c.providers[0].limits.account.as_deref(), Some("1300012345"));
        let err = Config::load(
            None,
            env(&[("PURGE_STORE__CLUSTER_URLS", "redis://:hunter5@n1:7000")]),
        )
        .unwrap_err();
        assert!(!err.to_string().contains("hunter5"), "{err}");
    }
}
