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

/// How long a reference that replaced a conflicting one is kept for its batch.
pub const REFERENCE_TTL: Duration = Duration::from_secs(15 * 60);

/// Caller references, derived from the distribution and the dispatcher's batch id (the same
/// purges' targets packed the same way, on any replica): a batch sent again after a timeout or
/// a lost connection, or by another replica that took the work over, carries the same
/// reference, and CloudFront answers the invalidation it already made instead of making a
/// second. A reference CloudFront says was used for other paths is replaced, for that batch.
#[derive(Debug, Default)]
pub struct References {
    renewed: Mutex<HashMap<String, (String, Instant)>>,
}

impl References {
    /// The identity of a batch: sha256 over the distribution and the batch id.
    pub fn identity(distribution: &str, batch_id: &str) -> String {
        let mut h = Sha256::new();
        for part in [distribution, batch_id] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        hex::encode(h.finalize())
    }

    /// The reference of the batch `identity`: derived from it alone, unless it was renewed.
    pub fn reference(&self, identity: &str) -> String {
        let mut renewed = self.renewed.lock().expect("references lock");
        renewed.retain(|_, (_, at)| at.elapsed() < REFERENCE_TTL);
        match renewed.get(identity) {
            Some((reference, _)) => reference.clone(),
            None => format!("purge-{}", &identity[..40]),
        }
    }

    /// CloudFront knows the reference for other paths: the batch takes a new one, derived
    /// from its identity and the time.
    pub fn renew(&self, identity: &str) {
        let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default();
        let digest = Sha256::digest(format!("{identity}/{now}").as_bytes());
        self.renewed.lock().expect("references lock").insert(
            identity.to_owned(),
            (
                format!("purge-{}", &hex::encode(digest)[..40]),
                Instant::now(),
            ),
        );
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
    fn a_batch_has_one_reference_on_every_replica_until_renewed() {
        let (here, there) = (References::default(), References::default());
        let id = References::identity("E1", "batch-1");
        assert_ne!(id, References::identity("E1", "batch-2"));
        assert_ne!(id, References::identity("E2", "batch-1"));
        let first = here.reference(&id);
        assert_eq!(here.reference(&id), first);
        assert_eq!(there.reference(&id), first, "another replica resending it");
        here.renew(&id);
        let renewed = here.reference(&id);
        assert_ne!(renewed, first);
        assert_eq!(here.reference(&id), renewed);
    }
}
