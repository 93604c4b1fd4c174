//! The rules a target follows for its kind, whatever the provider: each broken rule is a
//! [`TargetError`] variant whose text names it.

use crate::model::PurgeKind;
use crate::providers::Refused;

/// Why a target is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("empty target")]
    Empty,
    #[error("{len} bytes, at most {max}")]
    TooLong { len: usize, max: usize },
    #[error("contains control characters")]
    ControlCharacters,
    #[error("a WILDCARD target needs a `*` or `**`; use URL for exact URLs")]
    NoWildcard,
    #[error("tags may not contain whitespace")]
    TagWhitespace,
    #[error("not a valid regular expression ({0})")]
    Regex(String),
    #[error("ALL takes no targets")]
    AllTakesNone,
    #[error("URLs may not contain whitespace")]
    UrlWhitespace,
    #[error("must be an absolute http:// or https:// URL")]
    NotHttp,
    #[error("URLs may not contain `\\`")]
    Backslash,
    #[error("needs a host right after `://`")]
    NoHostAfterScheme,
    #[error("not a valid URL ({0})")]
    Url(#[from] url::ParseError),
    #[error("needs a literal host")]
    NotLiteralHost,
    #[error("a URL fragment (#...) is never sent to a CDN")]
    Fragment,
    #[error("URLs may not carry credentials")]
    Credentials,
    #[error("`*` is a wildcard only in the path")]
    WildcardInQuery,
    #[error("host names are 1-253 characters")]
    HostLength,
    #[error("not a valid host name (internationalized names go in punycode: xn--...)")]
    HostNotPunycode,
    #[error("not a valid host name")]
    HostInvalid,
    /// A chosen provider's own rule.
    #[error(transparent)]
    Provider(#[from] ProviderRefusal),
}

/// A provider's refusal of a target or an action, as a violation shows it: naming the provider.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("provider {provider:?}: {refused}")]
pub struct ProviderRefusal {
    pub provider: String,
    #[source]
    pub refused: Refused,
}

impl ProviderRefusal {
    /// The result of one of `provider`'s checks, its refusal named.
    pub fn check(provider: &str, result: Result<(), Refused>) -> Result<(), ProviderRefusal> {
        result.map_err(|refused| ProviderRefusal {
            provider: provider.to_owned(),
            refused,
        })
    }
}

/// Checks one target against the rules of its kind.
pub fn check_target(kind: PurgeKind, t: &str, max_len: usize) -> Result<(), TargetError> {
    if t.is_empty() {
        return Err(TargetError::Empty);
    }
    if t.len() > max_len {
        return Err(TargetError::TooLong {
            len: t.len(),
            max: max_len,
        });
    }
    if t.chars().any(char::is_control) {
        return Err(TargetError::ControlCharacters);
    }
    match kind {
        PurgeKind::Url | PurgeKind::Prefix => check_url(t, false),
        PurgeKind::Wildcard => {
            if !t.contains('*') {
                return Err(TargetError::NoWildcard);
            }
            check_url(t, true)
        }
        PurgeKind::Host => check_host(t),
        PurgeKind::Tag => {
            if t.trim() != t || t.chars().any(char::is_whitespace) {
                Err(TargetError::TagWhitespace)
            } else {
                Ok(())
            }
        }
        PurgeKind::Regex => regex_syntax::Parser::new()
            .parse(t)
            .map(|_| ())
            .map_err(|e| TargetError::Regex(last_line(&e.to_string()))),
        PurgeKind::All => Err(TargetError::AllTakesNone),
    }
}

/// The last non-blank line: regex-syntax puts the reason below a picture of the pattern.
fn last_line(s: &str) -> String {
    s.lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or(s)
        .trim()
        .to_owned()
}

fn check_url(t: &str, wildcard: bool) -> Result<(), TargetError> {
    if t.chars().any(char::is_whitespace) {
        return Err(TargetError::UrlWhitespace);
    }
    let scheme = |s: &str| t.get(..s.len()).is_some_and(|p| p.eq_ignore_ascii_case(s));
    if !(scheme("http://") || scheme("https://")) {
        return Err(TargetError::NotHttp);
    }
    // Parsers disagree about `\` (`https://allowed.com\@other.com/`) and about a missing
    // host (`https:///other.com/`): what we check must be what the CDN reads.
    if t.contains('\\') {
        return Err(TargetError::Backslash);
    }
    let authority = t.split_once("://").map_or("", |(_, rest)| rest);
    if authority.starts_with('/') || authority.is_empty() {
        return Err(TargetError::NoHostAfterScheme);
    }
    // The host must be literal even in a wildcard target; `*` may appear only in the path.
    let parsed = url::Url::parse(t)?;
    let host = parsed.host_str().unwrap_or_default();
    if host.is_empty() || host.contains('*') {
        return Err(TargetError::NotLiteralHost);
    }
    if parsed.fragment().is_some() {
        return Err(TargetError::Fragment);
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(TargetError::Credentials);
    }
    if wildcard && parsed.query().is_some_and(|q| q.contains('*')) {
        return Err(TargetError::WildcardInQuery);
    }
    Ok(())
}

/// A DNS host name: labels of letters, digits and hyphens, at most 253 characters.
pub fn check_host(h: &str) -> Result<(), TargetError> {
    if h.is_empty() || h.len() > 253 {
        return Err(TargetError::HostLength);
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
        Err(TargetError::HostNotPunycode)
    } else {
        Err(TargetError::HostInvalid)
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

    #[test]
    fn each_refusal_says_the_rule_it_names() {
        let why = |k, t| check_target(k, t, 20).unwrap_err().to_string();
        assert_eq!(
            why(PurgeKind::Url, "https://example.com/aaaaaa"),
            "26 bytes, at most 20"
        );
        assert_eq!(
            why(PurgeKind::Url, "https://a.com/#x"),
            TargetError::Fragment.to_string()
        );
        assert_eq!(
            why(PurgeKind::Host, "bücher.de"),
            "not a valid host name (internationalized names go in punycode: xn--...)"
        );
        assert!(why(PurgeKind::Regex, "(").starts_with("not a valid regular expression ("));
        let refused = ProviderRefusal::check("cdnpro", Err(Refused::new("breaks a rule")));
        assert_eq!(
            TargetError::from(refused.unwrap_err()).to_string(),
            "provider \"cdnpro\": breaks a rule"
        );
    }
}
