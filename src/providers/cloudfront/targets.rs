//! From purge targets to CloudFront invalidation paths: the host rule, the wildcard and tag
//! rules, and the caller reference that makes a resent batch the same invalidation.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::model::PurgeKind;
use crate::providers::Refused;

/// The path of a URL-shaped target whose host must be one of `hosts`.
pub fn url_path(target: &str, hosts: &[String], distribution: &str) -> Result<String, Refused> {
    let url =
        url::Url::parse(target).map_err(|e| Refused::new(format!("not a valid URL ({e})")))?;
    let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
    if !hosts.iter().any(|h| h.eq_ignore_ascii_case(&host)) {
        return Err(Refused::new(format!(
            "host {host:?} of {target:?} is not one of CloudFront distribution {distribution}'s hosts ({})",
            hosts.join(", ")
        )));
    }
    Ok(match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    })
}

/// A WILDCARD path may hold one `*`, at its end.
pub fn check_wildcard(path: &str) -> Result<(), Refused> {
    match path.find('*') {
        Some(i) if i == path.len() - 1 => Ok(()),
        _ => Err(Refused::new(format!(
            "CloudFront allows `*` only as the last character of a path, got {path:?}"
        ))),
    }
}

/// A cache tag: ASCII 33-126 without commas, at most 256 characters.
pub fn check_tag(tag: &str) -> Result<(), Refused> {
    if tag.len() > 256 {
        return Err(Refused::new(format!(
            "CloudFront cache tags are at most 256 characters, got {}",
            tag.len()
        )));
    }
    if let Some(c) = tag.chars().find(|c| !('!'..='~').contains(c) || *c == ',') {
        return Err(Refused::new(format!(
            "CloudFront cache tags are ASCII 33-126 without commas; {c:?} is not allowed"
        )));
    }
    Ok(())
}

/// The invalidation path of one checked target.
pub fn path_of(
    kind: PurgeKind,
    target: &str,
    hosts: &[String],
    distribution: &str,
) -> Result<String, Refused> {
    match kind {
        PurgeKind::Url => url_path(target, hosts, distribution),
        PurgeKind::Prefix => url_path(target, hosts, distribution).map(|p| format!("{p}*")),
        PurgeKind::Wildcard => {
            let path = url_path(target, hosts, distribution)?;
            check_wildcard(&path)?;
            Ok(path)
        }
        PurgeKind::All => Ok("/*".into()),
        PurgeKind::Tag => check_tag(target).map(|()| format!("#{target}")),
        PurgeKind::Host | PurgeKind::Regex => {
            Err(Refused::new(format!("CloudFront cannot purge {kind}")))
        }
    }
}

/// How long a caller reference is reused for a batch that may have reached CloudFront.
pub const REFERENCE_TTL: Duration = Duration::from_secs(15 * 60);

/// Caller references of batches not yet answered for sure, by the batch's identity
/// (distribution, kind and sorted paths). A resend of the same batch reuses its reference, so
/// CloudFront answers the invalidation it already made; an answered batch forgets it, so a
/// later purge of the same paths is a new invalidation.
#[derive(Debug, Default)]
pub struct References {
    open: Mutex<HashMap<String, (String, Instant)>>,
}

impl References {
    /// The identity of a batch: sha256 over the distribution, the kind and the sorted paths.
    pub fn identity(distribution: &str, kind: PurgeKind, paths: &[String]) -> String {
        let mut h = Sha256::new();
        for part in [distribution, kind.as_str()] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        for p in paths {
            h.update(p.as_bytes());
            h.update([0]);
        }
        hex::encode(h.finalize())
    }

    /// The reference of the batch `identity`: the open one, or a new one derived from the
    /// identity and the time of its first attempt.
    pub fn reference(&self, identity: &str) -> String {
        let mut open = self.open.lock().expect("references lock");
        open.retain(|_, (_, at)| at.elapsed() < REFERENCE_TTL);
        open.entry(identity.to_owned())
            .or_insert_with(|| {
                let first = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default();
                let digest = Sha256::digest(format!("{identity}/{first}").as_bytes());
                (
                    format!("purge-{}", &hex::encode(digest)[..40]),
                    Instant::now(),
                )
            })
            .0
            .clone()
    }

    /// The batch was answered for sure: its next send is a new invalidation.
    pub fn close(&self, identity: &str) {
        self.open.lock().expect("references lock").remove(identity);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts() -> Vec<String> {
        vec!["www.example.com".into(), "d111.cloudfront.net".into()]
    }

    #[test]
    fn targets_become_paths() {
        let path = |k, t| path_of(k, t, &hosts(), "E1");
        assert_eq!(
            path(PurgeKind::Url, "https://WWW.example.com/a.js?v=1").unwrap(),
            "/a.js?v=1"
        );
        assert_eq!(
            path(PurgeKind::Prefix, "https://www.example.com/img/").unwrap(),
            "/img/*"
        );
        assert_eq!(
            path(PurgeKind::Wildcard, "https://www.example.com/css/*").unwrap(),
            "/css/*"
        );
        assert_eq!(path(PurgeKind::All, "").unwrap(), "/*");
        assert_eq!(path(PurgeKind::Tag, "product-42").unwrap(), "#product-42");
    }

    #[test]
    fn a_foreign_host_is_refused_naming_the_target_and_the_hosts() {
        let err = path_of(PurgeKind::Url, "https://other.com/a", &hosts(), "E1")
            .unwrap_err()
            .rule;
        assert!(err.contains("\"other.com\""), "{err}");
        assert!(
            err.contains("www.example.com, d111.cloudfront.net"),
            "{err}"
        );
    }

    #[test]
    fn wildcards_and_tags_follow_cloudfronts_rules() {
        assert!(check_wildcard("/a/*/b").is_err());
        assert!(check_wildcard("/a/b*").is_ok());
        assert!(check_tag("a,b").is_err());
        assert!(check_tag("caf\u{e9}").is_err());
        assert!(check_tag(&"x".repeat(257)).is_err());
        assert!(check_tag("ok-tag_1").is_ok());
    }

    #[test]
    fn a_resent_batch_keeps_its_reference_until_answered() {
        let refs = References::default();
        let paths = vec!["/a".to_owned(), "/b".to_owned()];
        let id = References::identity("E1", PurgeKind::Url, &paths);
        assert_ne!(id, References::identity("E1", PurgeKind::Wildcard, &paths));
        let first = refs.reference(&id);
        assert_eq!(refs.reference(&id), first);
        refs.close(&id);
        assert_ne!(refs.reference(&id), first);
    }
}
