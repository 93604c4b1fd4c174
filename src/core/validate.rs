//! CreatePurge validation: every field, every target for its kind, and the chosen providers'
//! capabilities and dialect rules. Collects every violation instead of stopping at the first.

use std::collections::{BTreeMap, HashSet};

use super::error::{Error, FieldViolation};
use crate::model::{Action, PurgeKind, PurgeSpec, normalize_host};
use crate::providers::Registry;

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

/// Most field violations one error lists.
pub const MAX_VIOLATIONS: usize = 50;
/// Most bytes of field violations one error lists (about 4 KB once base64-encoded).
const MAX_DETAILS_BYTES: usize = 3000;

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

pub fn validate(
    req: CreateRequest,
    registry: &Registry,
    limits: Limits,
) -> Result<PurgeSpec, Error> {
    let mut v = Vec::new();
    let mut bad =
        |field: String, description: String| v.push(FieldViolation::new(field, description));

    let providers = if req.provider.is_empty() {
        bad(
            "provider".into(),
            format!("required; one of {}", registry.names().join(", ")),
        );
        Vec::new()
    } else {
        match registry.resolve(&req.provider) {
            Some(p) => p,
            None => {
                bad(
                    "provider".into(),
                    format!(
                        "unknown provider or group {}; configured: {}",
                        quote(&req.provider),
                        registry.names().join(", ")
                    ),
                );
                Vec::new()
            }
        }
    };

    let kind = match req.kind {
        Ok(k) => Some(k),
        Err(raw) => {
            let kinds: Vec<String> = PurgeKind::EVERY
                .iter()
                .map(|k| format!("PURGE_KIND_{}", k.as_str()))
                .collect();
            let what = if raw == 0 {
                "required".to_owned()
            } else {
                format!("{raw} is not a purge kind")
            };
            bad(
                "kind".into(),
                format!("{what}; one of {}", kinds.join(", ")),
            );
            None
        }
    };
    let action = match req.action {
        Ok(a) => a,
        Err(raw) => {
            bad(
                "action".into(),
                format!("{raw} is not an action; use INVALIDATE or DELETE"),
            );
            Action::Invalidate
        }
    };

    // Targets: count, then each one for its kind, then each provider's own rules.
    let mut targets = Vec::with_capacity(req.targets.len());
    let mut seen = HashSet::new();
    if let Some(kind) = kind {
        if kind == PurgeKind::All {
            if !req.targets.is_empty() {
                bad(
                    "targets".into(),
                    format!("must be empty for ALL, got {} targets", req.targets.len()),
                );
            }
        } else if req.targets.is_empty() {
            bad(
                "targets".into(),
                format!("at least one target is required for {kind}"),
            );
        } else if req.targets.len() > limits.max_targets {
            bad(
                "targets".into(),
                format!(
                    "{} targets, at most {} per request",
                    req.targets.len(),
                    limits.max_targets
                ),
            );
        } else {
            for (i, t) in req.targets.iter().enumerate() {
                let checked = check_target(kind, t, limits.max_len).and_then(|()| {
                    providers.iter().try_for_each(|p| {
                        p.client
                            .check_target(kind, t)
                            .map_err(|rule| format!("provider {:?}: {rule}", p.name))
                    })
                });
                match checked {
                    Err(why) => bad(format!("targets[{i}]"), format!("{why}: {}", quote(t))),
                    Ok(()) => {
                        // Host names are case-insensitive: one spelling, so duplicates and
                        // idempotent retries compare equal.
                        let t = match kind {
                            PurgeKind::Host => normalize_host(t),
                            _ => t.clone(),
                        };
                        if seen.insert(t.clone()) {
                            targets.push(t);
                        }
                    }
                }
            }
        }
        for p in &providers {
            if !p.caps.supports(kind) {
                bad(
                    "kind".into(),
                    format!(
                        "provider {:?} cannot purge {kind}; it supports {}",
                        p.name,
                        kind_list(&p.caps.kinds())
                    ),
                );
            } else if let Err(why) = p.client.check_action(kind, action) {
                bad("action".into(), format!("provider {:?}: {why}", p.name));
            }
        }
    }

    // Hosts scope TAG purges.
    let mut hosts: Vec<String> = Vec::new();
    if !req.hosts.is_empty() && kind.is_some_and(|k| k != PurgeKind::Tag) {
        bad("hosts".into(), "only TAG purges take hosts".into());
    } else if req.hosts.len() > MAX_HOSTS {
        bad(
            "hosts".into(),
            format!("{} hosts, at most {MAX_HOSTS}", req.hosts.len()),
        );
    } else {
        for (i, h) in req.hosts.iter().enumerate() {
            match check_host(h) {
                Ok(()) => hosts.push(normalize_host(h)),
                Err(why) => bad(format!("hosts[{i}]"), format!("{why}: {}", quote(h))),
            }
        }
        hosts.sort();
        hosts.dedup();
    }
    if kind == Some(PurgeKind::Tag) && req.hosts.is_empty() {
        for p in providers.iter().filter(|p| p.caps.tag_needs_hosts) {
            bad(
                "hosts".into(),
                format!(
                    "provider {:?} needs the hosts a TAG purge applies to",
                    p.name
                ),
            );
        }
    }

    // Cache-key headers go with URL purges.
    if !req.headers.is_empty() {
        if kind.is_some_and(|k| k != PurgeKind::Url) {
            bad(
                "headers".into(),
                "only URL purges take cache-key headers".into(),
            );
        }
        for p in providers.iter().filter(|p| !p.caps.headers) {
            bad(
                "headers".into(),
                format!("provider {:?} does not take cache-key headers", p.name),
            );
        }
        for (name, value) in &req.headers {
            if name.is_empty() || !name.bytes().all(is_token_byte) {
                bad(
                    format!("headers[{}]", quote(name)),
                    "not a valid header name".into(),
                );
            } else if value.len() > limits.max_len || value.chars().any(char::is_control) {
                bad(
                    format!("headers[{}]", quote(name)),
                    format!(
                        "value {} has control characters or is too long",
                        quote(value)
                    ),
                );
            }
        }
    }

    if req.labels.len() > MAX_LABELS {
        bad(
            "labels".into(),
            format!("{} labels, at most {MAX_LABELS}", req.labels.len()),
        );
    }
    for (k, val) in &req.labels {
        if k.is_empty()
            || k.len() > MAX_LABEL_KEY
            || !k
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-/".contains(&b))
        {
            bad(
                format!("labels[{}]", quote(k)),
                format!("keys are 1-{MAX_LABEL_KEY} characters of A-Z, a-z, 0-9, _ . - /"),
            );
        } else if val.len() > MAX_LABEL_VALUE || val.chars().any(char::is_control) {
            bad(
                format!("labels[{}]", quote(k)),
                format!(
                    "value {} is over {MAX_LABEL_VALUE} bytes or has control characters",
                    quote(val)
                ),
            );
        }
    }

    let key = match (
        req.idempotency_key.as_str(),
        req.idempotency_metadata.as_deref(),
    ) {
        ("", None | Some("")) => None,
        ("", Some(m)) => Some(m.to_owned()),
        (f, None) => Some(f.to_owned()),
        (f, Some(m)) if f == m || m.is_empty() => Some(f.to_owned()),
        (f, Some(m)) => {
            bad(
                "idempotency_key".into(),
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
        bad(
            "idempotency_key".into(),
            format!(
                "{} must be 1-{MAX_IDEMPOTENCY_KEY} printable ASCII characters",
                quote(k)
            ),
        );
    }

    if !v.is_empty() {
        // Error details travel base64-encoded in a trailer, and some clients refuse metadata
        // over 8 KB: list violations while they fit in a few KB.
        let mut size = 0;
        let fit = v
            .iter()
            .take(MAX_VIOLATIONS)
            .take_while(|f| {
                size += f.field.len() + f.description.len() + 8;
                size <= MAX_DETAILS_BYTES
            })
            .count();
        if v.len() > fit {
            let more = v.len() - fit;
            v.truncate(fit);
            v.push(FieldViolation::new(
                "targets",
                format!("{more} more violations not listed; fix the ones above and retry"),
            ));
        }
        return Err(Error::InvalidArgument(v));
    }
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

/// Checks one target against the rules of its kind; the error names the rule.
pub fn check_target(kind: PurgeKind, t: &str, max_len: usize) -> Result<(), String> {
    if t.is_empty() {
        return Err("empty target".into());
    }
    if t.len() > max_len {
        return Err(format!("{} bytes, at most {max_len}", t.len()));
    }
    if t.chars().any(char::is_control) {
        return Err("contains control characters".into());
    }
    match kind {
        PurgeKind::Url | PurgeKind::Prefix => check_url(t, false),
        PurgeKind::Wildcard => {
            if !t.contains('*') {
                return Err("a WILDCARD target needs a `*` or `**`; use URL for exact URLs".into());
            }
            check_url(t, true)
        }
        PurgeKind::Host => check_host(t),
        PurgeKind::Tag => {
            if t.trim() != t || t.chars().any(char::is_whitespace) {
                Err("tags may not contain whitespace".into())
            } else {
                Ok(())
            }
        }
        PurgeKind::Regex => regex_syntax::Parser::new()
            .parse(t)
            .map(|_| ())
            .map_err(|e| {
                format!(
                    "not a valid regular expression ({})",
                    first_line(&e.to_string())
                )
            }),
        PurgeKind::All => Err("ALL takes no targets".into()),
    }
}

fn first_line(s: &str) -> String {
    s.lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or(s)
        .trim()
        .to_owned()
}

fn check_url(t: &str, wildcard: bool) -> Result<(), String> {
    if t.chars().any(char::is_whitespace) {
        return Err("URLs may not contain whitespace".into());
    }
    let lower = t.to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) {
        return Err("must be an absolute http:// or https:// URL".into());
    }
    // Parsers disagree about `\` (`https://allowed.com\@other.com/`) and about a missing
    // host (`https:///other.com/`): what we check must be what the CDN reads.
    if t.contains('\\') {
        return Err("URLs may not contain `\\`".into());
    }
    let authority = t.split_once("://").map_or("", |(_, rest)| rest);
    if authority.starts_with('/') || authority.is_empty() {
        return Err("needs a host right after `://`".into());
    }
    // The host must be literal even in a wildcard target; `*` may appear only in the path.
    let parsed = url::Url::parse(t).map_err(|e| format!("not a valid URL ({e})"))?;
    let host = parsed.host_str().unwrap_or_default();
    if host.is_empty() || host.contains('*') {
        return Err("needs a literal host".into());
    }
    if parsed.fragment().is_some() {
        return Err("a URL fragment (#...) is never sent to a CDN".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("URLs may not carry credentials".into());
    }
    if wildcard && parsed.query().is_some_and(|q| q.contains('*')) {
        return Err("`*` is a wildcard only in the path".into());
    }
    Ok(())
}

/// A DNS host name: labels of letters, digits and hyphens, at most 253 characters.
pub fn check_host(h: &str) -> Result<(), String> {
    if h.is_empty() || h.len() > 253 {
        return Err("host names are 1-253 characters".into());
    }
    let ok = h.trim_end_matches('.').split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    if ok {
        Ok(())
    } else if !h.is_ascii() {
        Err("not a valid host name (internationalized names go in punycode: xn--...)".into())
    } else {
        Err("not a valid host name".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_checked_for_their_kind() {
        let ok = |k, t| check_target(k, t, 2048).is_ok();
        assert!(ok(PurgeKind::Url, "https://example.com/a.png?x=1"));
        // What we check must be what the CDN reads.
        assert!(!ok(PurgeKind::Url, "https://allowed.com\\@other.com/x"));
        assert!(!ok(PurgeKind::Url, "https:///other.com/x"));
        assert!(!ok(PurgeKind::Prefix, "https://a.com\\dir/"));
        assert!(!ok(PurgeKind::Url, "example.com/a.png"));
        assert!(!ok(PurgeKind::Url, "ftp://example.com/a"));
        assert!(!ok(PurgeKind::Url, "https://example.com/a b"));
        assert!(!ok(PurgeKind::Url, "https://example.com/a#frag"));
        assert!(!ok(PurgeKind::Url, "https://example.com/\u{7}"));
        assert!(ok(PurgeKind::Wildcard, "https://example.com/img/*.png"));
        assert!(!ok(PurgeKind::Wildcard, "https://*.example.com/img/"));
        assert!(!ok(PurgeKind::Wildcard, "https://example.com/img/"));
        assert!(ok(PurgeKind::Host, "www.example.com"));
        assert!(!ok(PurgeKind::Host, "-bad.example.com"));
        assert!(!ok(PurgeKind::Host, "https://example.com"));
        assert!(ok(PurgeKind::Tag, "product-42"));
        assert!(!ok(PurgeKind::Tag, "two words"));
        assert!(ok(PurgeKind::Regex, r"https://example\.com/img/.*\.png"));
        assert!(!ok(PurgeKind::Regex, "https://example.com/(unclosed"));
        assert!(!ok(
            PurgeKind::Url,
            &format!("https://example.com/{}", "a".repeat(3000))
        ));
    }
}
