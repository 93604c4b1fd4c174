//! CreatePurge validation: every field, every target for its kind, and the chosen providers'
//! capabilities and dialect rules. One small check per field, all feeding one [`Violations`]
//! collector, so every violation is reported instead of the first.

use std::collections::{BTreeMap, HashSet};

use super::error::Error;
use super::targets::{ProviderRefusal, TargetError, check_host, check_target};
use super::violations::Violations;
use crate::model::{Action, PurgeKind, PurgeSpec, normalize_host};
use crate::providers::{ProviderHandle, Registry};

/// A CreatePurge request as the caller sent it, before validation.
#[derive(Clone, Debug)]
pub struct CreateRequest {
    pub provider: String,
    /// `Err(raw)` for an unspecified or unknown enum value.
    pub kind: Result<PurgeKind, i32>,
    pub targets: Vec<String>,
    pub action: Result<Action, i32>,
    pub hosts: Vec<String>,
    pub headers: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub idempotency_key: String,
    /// The `idempotency-key` metadata, if sent.
    pub idempotency_metadata: Option<String>,
}

/// Size limits from the server configuration.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_targets: usize,
    pub max_len: usize,
}

const MAX_LABELS: usize = 64;
const MAX_LABEL_KEY: usize = 63;
const MAX_LABEL_VALUE: usize = 256;
const MAX_IDEMPOTENCY_KEY: usize = 128;
const MAX_HOSTS: usize = 100;

pub use super::violations::MAX_VIOLATIONS;

/// Quotes a value for an error message, shortened so errors stay small.
pub fn quote(value: &str) -> String {
    const MAX: usize = 64;
    if value.chars().count() <= MAX {
        format!("{value:?}")
    } else {
        let head: String = value.chars().take(MAX).collect();
        format!("{head:?}... ({} chars)", value.chars().count())
    }
}

/// The spec of a valid request, or one INVALID_ARGUMENT listing every violation.
pub fn validate(
    req: CreateRequest,
    registry: &Registry,
    limits: Limits,
) -> Result<PurgeSpec, Error> {
    let mut v = Violations::default();
    let providers = check_provider(&mut v, &req.provider, registry);
    let kind = check_kind(&mut v, req.kind);
    let action = check_action(&mut v, req.action);
    let mut targets = Vec::new();
    if let Some(kind) = kind {
        targets = check_targets(&mut v, kind, &req.targets, &providers, limits);
        check_providers_can(&mut v, kind, action, &providers);
    }
    let hosts = check_hosts(&mut v, kind, &req.hosts, &providers);
    check_headers(&mut v, kind, &req.headers, &providers, limits);
    check_labels(&mut v, &req.labels);
    let key = check_idempotency_key(
        &mut v,
        &req.idempotency_key,
        req.idempotency_metadata.as_deref(),
    );
    v.into_result()?;
    Ok(PurgeSpec {
        provider: req.provider,
        providers: providers.iter().map(|p| p.name.clone()).collect(),
        kind: kind.expect("kind checked"),
        targets,
        action,
        hosts,
        headers: req.headers,
        labels: req.labels,
        idempotency_key: key,
    })
}

/// `provider`: a configured provider or group; its members.
fn check_provider<'r>(
    v: &mut Violations,
    name: &str,
    registry: &'r Registry,
) -> Vec<&'r ProviderHandle> {
    if name.is_empty() {
        v.add(
            "provider",
            format!("required; one of {}", registry.names().join(", ")),
        );
        return Vec::new();
    }
    registry.resolve(name).unwrap_or_else(|| {
        v.add(
            "provider",
            format!(
                "unknown provider or group {}; configured: {}",
                quote(name),
                registry.names().join(", ")
            ),
        );
        Vec::new()
    })
}

/// `kind`: a known purge kind.
fn check_kind(v: &mut Violations, kind: Result<PurgeKind, i32>) -> Option<PurgeKind> {
    let raw = match kind {
        Ok(k) => return Some(k),
        Err(raw) => raw,
    };
    let kinds: Vec<String> = PurgeKind::EVERY
        .iter()
        .map(|k| format!("PURGE_KIND_{}", k.as_str()))
        .collect();
    let what = if raw == 0 {
        "required".to_owned()
    } else {
        format!("{raw} is not a purge kind")
    };
    v.add("kind", format!("{what}; one of {}", kinds.join(", ")));
    None
}

/// `action`: a known action (unset means INVALIDATE).
fn check_action(v: &mut Violations, action: Result<Action, i32>) -> Action {
    action.unwrap_or_else(|raw| {
        v.add(
            "action",
            format!("{raw} is not an action; use INVALIDATE or DELETE"),
        );
        Action::Invalidate
    })
}

/// `targets`: their count, then each one for its kind and each provider's own rules; the
/// distinct valid ones, hosts in one spelling.
fn check_targets(
    v: &mut Violations,
    kind: PurgeKind,
    raw: &[String],
    providers: &[&ProviderHandle],
    limits: Limits,
) -> Vec<String> {
    if kind == PurgeKind::All {
        if !raw.is_empty() {
            v.add(
                "targets",
                format!("must be empty for ALL, got {} targets", raw.len()),
            );
        }
        return Vec::new();
    }
    if raw.is_empty() {
        v.add(
            "targets",
            format!("at least one target is required for {kind}"),
        );
        return Vec::new();
    }
    if raw.len() > limits.max_targets {
        v.add(
            "targets",
            format!(
                "{} targets, at most {} per request",
                raw.len(),
                limits.max_targets
            ),
        );
        return Vec::new();
    }
    let mut targets = Vec::with_capacity(raw.len());
    let mut seen = HashSet::new();
    for (i, t) in raw.iter().enumerate() {
        let checked = check_target(kind, t, limits.max_len).and_then(|()| {
            providers.iter().try_for_each(|p| {
                ProviderRefusal::check(&p.name, p.client.check_target(kind, t))
                    .map_err(TargetError::from)
            })
        });
        if v.check_at(|| format!("targets[{i}]"), quoted(checked, t))
            .is_some()
        {
            // Host names are case-insensitive: one spelling, so duplicates and idempotent
            // retries compare equal.
            let t = match kind {
                PurgeKind::Host => normalize_host(t),
                _ => t.clone(),
            };
            if seen.insert(t.clone()) {
                targets.push(t);
            }
        }
    }
    targets
}

/// `kind` and `action` again: what each chosen provider can do.
fn check_providers_can(
    v: &mut Violations,
    kind: PurgeKind,
    action: Action,
    providers: &[&ProviderHandle],
) {
    for p in providers {
        if !p.caps.supports(kind) {
            v.add(
                "kind",
                format!(
                    "provider {:?} cannot purge {kind}; it supports {}",
                    p.name,
                    kind_list(&p.caps.kinds())
                ),
            );
        } else {
            let checked = ProviderRefusal::check(&p.name, p.client.check_action(kind, action));
            v.check("action", checked);
        }
    }
}

/// `hosts`: only with TAG purges, where some providers need them; sorted and distinct.
fn check_hosts(
    v: &mut Violations,
    kind: Option<PurgeKind>,
    raw: &[String],
    providers: &[&ProviderHandle],
) -> Vec<String> {
    let mut hosts: Vec<String> = Vec::new();
    if !raw.is_empty() && kind.is_some_and(|k| k != PurgeKind::Tag) {
        v.add("hosts", "only TAG purges take hosts");
    } else if raw.len() > MAX_HOSTS {
        v.add("hosts", format!("{} hosts, at most {MAX_HOSTS}", raw.len()));
    } else {
        for (i, h) in raw.iter().enumerate() {
            if v.check_at(|| format!("hosts[{i}]"), quoted(check_host(h), h))
                .is_some()
            {
                hosts.push(normalize_host(h));
            }
        }
        hosts.sort();
        hosts.dedup();
    }
    if kind == Some(PurgeKind::Tag) && raw.is_empty() {
        for p in providers.iter().filter(|p| p.caps.tag_needs_hosts) {
            v.add(
                "hosts",
                format!(
                    "provider {:?} needs the hosts a TAG purge applies to",
                    p.name
                ),
            );
        }
    }
    hosts
}

/// `headers`: cache-key headers, with URL purges and providers that take them.
fn check_headers(
    v: &mut Violations,
    kind: Option<PurgeKind>,
    headers: &BTreeMap<String, String>,
    providers: &[&ProviderHandle],
    limits: Limits,
) {
    if headers.is_empty() {
        return;
    }
    if kind.is_some_and(|k| k != PurgeKind::Url) {
        v.add("headers", "only URL purges take cache-key headers");
    }
    for p in providers.iter().filter(|p| !p.caps.headers) {
        v.add(
            "headers",
            format!("provider {:?} does not take cache-key headers", p.name),
        );
    }
    for (name, value) in headers {
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            v.add(
                format!("headers[{}]", quote(name)),
                "not a valid header name",
            );
        } else if value.len() > limits.max_len || value.chars().any(char::is_control) {
            v.add(
                format!("headers[{}]", quote(name)),
                format!(
                    "value {} has control characters or is too long",
                    quote(value)
                ),
            );
        }
    }
}

/// `labels`: a bounded number of short keys and values.
fn check_labels(v: &mut Violations, labels: &BTreeMap<String, String>) {
    if labels.len() > MAX_LABELS {
        v.add(
            "labels",
            format!("{} labels, at most {MAX_LABELS}", labels.len()),
        );
    }
    for (k, val) in labels {
        if k.is_empty()
            || k.len() > MAX_LABEL_KEY
            || !k
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-/".contains(&b))
        {
            v.add(
                format!("labels[{}]", quote(k)),
                format!("keys are 1-{MAX_LABEL_KEY} characters of A-Z, a-z, 0-9, _ . - /"),
            );
        } else if val.len() > MAX_LABEL_VALUE || val.chars().any(char::is_control) {
            v.add(
                format!("labels[{}]", quote(k)),
                format!(
                    "value {} is over {MAX_LABEL_VALUE} bytes or has control characters",
                    quote(val)
                ),
            );
        }
    }
}

/// `idempotency_key`: the field or the metadata (equal when both are sent), printable ASCII.
fn check_idempotency_key(
    v: &mut Violations,
    field: &str,
    metadata: Option<&str>,
) -> Option<String> {
    let key = match (field, metadata) {
        ("", None | Some("")) => None,
        ("", Some(m)) => Some(m.to_owned()),
        (f, None) => Some(f.to_owned()),
        (f, Some(m)) if f == m || m.is_empty() => Some(f.to_owned()),
        (f, Some(m)) => {
            v.add(
                "idempotency_key",
                format!(
                    "field {} differs from metadata idempotency-key {}",
                    quote(f),
                    quote(m)
                ),
            );
            None
        }
    };
    if let Some(k) = &key
        && (k.len() > MAX_IDEMPOTENCY_KEY || !k.bytes().all(|b| (0x21..0x7f).contains(&b)))
    {
        v.add(
            "idempotency_key",
            format!(
                "{} must be 1-{MAX_IDEMPOTENCY_KEY} printable ASCII characters",
                quote(k)
            ),
        );
    }
    key
}

/// A refused value is quoted after the reason: `"{why}: {value}"`.
struct Quoted<'a>(TargetError, &'a str);

impl std::fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.0, quote(self.1))
    }
}

fn quoted(r: Result<(), TargetError>, value: &str) -> Result<(), Quoted<'_>> {
    r.map_err(|e| Quoted(e, value))
}

fn kind_list(kinds: &[PurgeKind]) -> String {
    kinds
        .iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}
