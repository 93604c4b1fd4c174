//! Callers: bearer tokens mapped to a caller name and what that caller may purge. With no
//! callers configured every request is the anonymous caller, allowed everything.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::error::Error;
use crate::config::{CallerConfig, ConfigError};
use crate::model::{PurgeKind, PurgeRecord, PurgeSpec};

/// What one configured caller may do.
#[derive(Debug)]
struct Policy {
    /// Provider or group names it may name; `None`: any.
    providers: Option<HashSet<String>>,
    /// Hosts it may purge: `example.com` exactly, `.example.com` any subdomain; `None`: any.
    hosts: Option<Vec<String>>,
}

/// Who is calling; scopes idempotency keys, caller rates and which purges it can read.
#[derive(Clone, Debug)]
pub struct Caller {
    pub name: String,
    policy: Option<Arc<Policy>>,
}

impl PartialEq for Caller {
    fn eq(&self, other: &Caller) -> bool {
        self.name == other.name
    }
}

impl Caller {
    pub fn anonymous() -> Caller {
        Caller {
            name: "anonymous".into(),
            policy: None,
        }
    }

    /// Whose purges this caller lists: its own, or everyone's when callers are not configured.
    pub fn list_scope(&self) -> Option<&str> {
        self.policy.as_ref().map(|_| self.name.as_str())
    }

    /// Whether this caller may run `spec`; the error says what it may not touch.
    pub fn authorize(&self, spec: &PurgeSpec) -> Result<(), Error> {
        let Some(policy) = &self.policy else {
            return Ok(());
        };
        if let Some(providers) = &policy.providers
            && !providers.contains(&spec.provider)
            && !spec.providers.iter().all(|p| providers.contains(p))
        {
            return Err(Error::PermissionDenied(format!(
                "caller {:?} may not use provider {:?}",
                self.name, spec.provider
            )));
        }
        let Some(allowed) = &policy.hosts else {
            return Ok(());
        };
        let hosts: Vec<String> = match spec.kind {
            PurgeKind::All | PurgeKind::Regex => {
                return Err(Error::PermissionDenied(format!(
                    "caller {:?} is limited to some hosts and may not run {} purges",
                    self.name, spec.kind
                )));
            }
            PurgeKind::Tag if spec.hosts.is_empty() => {
                return Err(Error::PermissionDenied(format!(
                    "caller {:?} is limited to some hosts: TAG purges must name their hosts",
                    self.name
                )));
            }
            PurgeKind::Tag => spec.hosts.clone(),
            PurgeKind::Host => spec.targets.clone(),
            PurgeKind::Url | PurgeKind::Prefix | PurgeKind::Wildcard => spec
                .targets
                .iter()
                .map(|t| {
                    url::Url::parse(t)
                        .ok()
                        .and_then(|u| u.host_str().map(str::to_owned))
                        .unwrap_or_default()
                })
                .collect(),
        };
        match hosts.iter().find(|h| !host_allowed(allowed, h)) {
            Some(h) => Err(Error::PermissionDenied(format!(
                "caller {:?} may not purge host {h:?}",
                self.name
            ))),
            None => Ok(()),
        }
    }

    /// A caller reads only its own purges when callers are configured.
    pub fn may_read(&self, record: &PurgeRecord) -> bool {
        self.policy.is_none() || record.caller == self.name
    }
}

fn host_allowed(allowed: &[String], host: &str) -> bool {
    let host = crate::model::normalize_host(host);
    // `.example.com` and `*.example.com` both mean "any host below example.com".
    allowed.iter().any(
        |a| match a.strip_prefix("*.").or_else(|| a.strip_prefix('.')) {
            Some(suffix) => host.ends_with(&format!(".{suffix}")),
            None => a == "*" || *a == host,
        },
    )
}

/// The configured callers by the SHA-256 of their token.
#[derive(Clone, Default)]
pub struct Callers {
    by_token: Arc<HashMap<[u8; 32], Caller>>,
}

impl Callers {
    pub fn from_config(configs: &[CallerConfig]) -> Result<Callers, ConfigError> {
        let mut by_token = HashMap::new();
        for c in configs {
            let token = c.resolve_token(&format!("callers.{}.token", c.name))?;
            let token = secrecy::ExposeSecret::expose_secret(&token).trim();
            if token.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "callers.{}: the token is empty (an unset variable or an empty file?)",
                    c.name
                )));
            }
            let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
            let caller = Caller {
                name: c.name.clone(),
                policy: Some(Arc::new(Policy {
                    providers: c.providers.as_ref().map(|p| p.iter().cloned().collect()),
                    hosts: c
                        .hosts
                        .as_ref()
                        .map(|h| h.iter().map(|h| h.to_ascii_lowercase()).collect()),
                })),
            };
            if by_token.insert(digest, caller).is_some() {
                return Err(ConfigError::Invalid(format!(
                    "callers.{}: token shared with another caller",
                    c.name
                )));
            }
        }
        Ok(Callers {
            by_token: Arc::new(by_token),
        })
    }

    /// The caller an `authorization` header names (`Bearer <token>`).
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Caller, Error> {
        if self.by_token.is_empty() {
            return Ok(Caller::anonymous());
        }
        // The scheme is case-insensitive (RFC 9110); the token may not be empty.
        let token = authorization
            .and_then(|h| h.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|token| !token.is_empty())
            .ok_or_else(|| Error::Unauthenticated("send `authorization: Bearer <token>`".into()))?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.by_token
            .get(&digest)
            .cloned()
            .ok_or_else(|| Error::Unauthenticated("unknown token".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_match_exactly_or_by_subdomain() {
        let allowed = vec!["example.com".to_string(), ".cdn.example.org".to_string()];
        assert!(host_allowed(&allowed, "example.com"));
        assert!(host_allowed(&allowed, "EXAMPLE.com."));
        assert!(!host_allowed(&allowed, "www.example.com"));
        assert!(host_allowed(&allowed, "img.cdn.example.org"));
        assert!(!host_allowed(&allowed, "cdn.example.org"));
        assert!(!host_allowed(&allowed, "evilcdn.example.org"));
        let star = vec!["*.example.net".to_string()];
        assert!(host_allowed(&star, "img.example.net"));
        assert!(!host_allowed(&star, "example.net"));
    }

    #[test]
    fn tokens_are_never_empty_and_the_scheme_is_case_insensitive() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let caller = |token_file| crate::config::CallerConfig {
            name: "ci".into(),
            token_env: None,
            token_file: Some(token_file),
            providers: None,
            hosts: None,
        };
        let err = Callers::from_config(&[caller(file("empty", "\n"))])
            .err()
            .unwrap();
        assert!(err.to_string().contains("empty"), "{err}");
        let callers = Callers::from_config(&[caller(file("t", "s3cret\n"))]).unwrap();
        assert_eq!(
            callers.authenticate(Some("bearer s3cret")).unwrap().name,
            "ci"
        );
        assert!(callers.authenticate(Some("Bearer ")).is_err());
        assert!(callers.authenticate(Some("Bearer")).is_err());
        assert!(callers.authenticate(Some("Basic s3cret")).is_err());
    }
}
