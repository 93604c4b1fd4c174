//! Callers: bearer tokens and client-certificate names mapped to a caller name and what that
//! caller may purge. With no callers configured every request is the anonymous caller,
//! allowed everything.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

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

/// The configured callers: by the SHA-256 of their token (compared in constant time) and by
/// the subject alternative names of their client certificates.
#[derive(Clone, Default)]
pub struct Callers {
    by_token: Arc<Vec<([u8; 32], Caller)>>,
    by_san: Arc<HashMap<String, Caller>>,
}

impl Callers {
    pub fn from_config(configs: &[CallerConfig]) -> Result<Callers, ConfigError> {
        let mut by_token: Vec<([u8; 32], Caller)> = Vec::new();
        let mut by_san = HashMap::new();
        for c in configs {
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
            for san in &c.cert_sans {
                if by_san.insert(san_key(san), caller.clone()).is_some() {
                    return Err(ConfigError::Invalid(format!(
                        "callers.{}.cert_sans: {san:?} names another caller too",
                        c.name
                    )));
                }
            }
            if !c.has_token() && !c.cert_sans.is_empty() {
                continue;
            }
            let token = c.resolve_token(&format!("callers.{}.token", c.name))?;
            let token = secrecy::ExposeSecret::expose_secret(&token).trim();
            if token.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "callers.{}: the token is empty (an unset variable or an empty file?)",
                    c.name
                )));
            }
            let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
            if by_token.iter().any(|(d, _)| bool::from(d.ct_eq(&digest))) {
                return Err(ConfigError::Invalid(format!(
                    "callers.{}: token shared with another caller",
                    c.name
                )));
            }
            by_token.push((digest, caller));
        }
        Ok(Callers {
            by_token: Arc::new(by_token),
            by_san: Arc::new(by_san),
        })
    }

    fn is_empty(&self) -> bool {
        self.by_token.is_empty() && self.by_san.is_empty()
    }

    /// The caller an `authorization` header names (`Bearer <token>`).
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Caller, Error> {
        self.identify(authorization, &[])
    }

    /// The caller a bearer token or the client certificate's subject alternative names
    /// (`cert_sans`) identify. A token wins; when both are sent they must name one caller.
    pub fn identify(
        &self,
        authorization: Option<&str>,
        cert_sans: &[String],
    ) -> Result<Caller, Error> {
        if self.is_empty() {
            return Ok(Caller::anonymous());
        }
        let by_cert = cert_sans
            .iter()
            .find_map(|san| self.by_san.get(&san_key(san)))
            .cloned();
        let Some(authorization) = authorization else {
            return by_cert.ok_or_else(|| {
                Error::Unauthenticated(
                    "send `authorization: Bearer <token>` or a client certificate of a configured caller"
                        .into(),
                )
            });
        };
        let by_token = self.by_token(authorization)?;
        match by_cert {
            Some(c) if c.name != by_token.name => Err(Error::Unauthenticated(
                "the bearer token and the client certificate name different callers".into(),
            )),
            _ => Ok(by_token),
        }
    }

    fn by_token(&self, authorization: &str) -> Result<Caller, Error> {
        // The scheme is case-insensitive (RFC 9110); the token may not be empty.
        let token = authorization
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|token| !token.is_empty())
            .ok_or_else(|| Error::Unauthenticated("send `authorization: Bearer <token>`".into()))?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Every entry is compared, in constant time: how long this takes says nothing about
        // which token came close.
        let mut found = None;
        for (d, caller) in self.by_token.iter() {
            if bool::from(d.ct_eq(&digest)) {
                found = Some(caller);
            }
        }
        found
            .cloned()
            .ok_or_else(|| Error::Unauthenticated("unknown token".into()))
    }
}

/// DNS names compare case-insensitively; URIs (SPIFFE IDs) exactly.
fn san_key(san: &str) -> String {
    if san.contains("://") {
        san.to_owned()
    } else {
        san.to_ascii_lowercase()
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
            cert_sans: Vec::new(),
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

    #[test]
    fn certificates_identify_callers_and_must_agree_with_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("t");
        std::fs::write(&token, "s3cret").unwrap();
        let deployer = crate::config::CallerConfig {
            name: "deployer".into(),
            token_env: None,
            token_file: Some(token),
            providers: None,
            hosts: None,
            cert_sans: vec!["spiffe://cluster.local/ns/shop/sa/deployer".into()],
        };
        let ci = crate::config::CallerConfig {
            name: "ci".into(),
            token_file: None,
            cert_sans: vec!["CI.example.com".into()],
            ..deployer.clone()
        };
        let callers = Callers::from_config(&[deployer, ci]).unwrap();
        let sans = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let who = |auth: Option<&str>, s: &[&str]| callers.identify(auth, &sans(s)).map(|c| c.name);
        assert_eq!(who(None, &["ci.example.com"]).unwrap(), "ci");
        assert_eq!(
            who(
                None,
                &["x.example", "spiffe://cluster.local/ns/shop/sa/deployer"]
            )
            .unwrap(),
            "deployer"
        );
        assert!(who(None, &["spiffe://cluster.local/ns/shop/sa/other"]).is_err());
        assert!(who(None, &[]).is_err());
        assert_eq!(who(Some("Bearer s3cret"), &[]).unwrap(), "deployer");
        let err = who(Some("Bearer s3cret"), &["ci.example.com"]).unwrap_err();
        assert!(err.to_string().contains("different callers"), "{err}");
        assert!(who(Some("Bearer wrong"), &["ci.example.com"]).is_err());
    }
}
