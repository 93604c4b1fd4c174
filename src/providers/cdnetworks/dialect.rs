//! CDN Pro's target dialect, checked at CreatePurge time so a bad pattern is refused with the
//! rule it breaks instead of failing later at the provider.

use regex_syntax::ast::{self, Ast, RepetitionKind, RepetitionRange};

use crate::providers::Refused;

/// Longest `fileUrls` entry CDN Pro accepts.
pub const MAX_FILE_URL: usize = 2048;
/// Longest part of a regex pattern after `scheme://host`.
pub const MAX_REGEX_AFTER_HOST: usize = 126;
/// Most unlimited quantifiers (`*`, `+`, `{n,}`) in one pattern.
pub const MAX_UNLIMITED: usize = 2;
/// Largest quantifier bound (`{n}`, `{m,n}`).
pub const MAX_BOUND: u32 = 59;

fn rule(name: &str, detail: impl std::fmt::Display) -> Refused {
    Refused::new(format!("breaks the CDN Pro rule \"{name}\": {detail}"))
}

/// `fileUrls`: no `*` (URL purges are exact), every `%` starts an escape, at most 2048 bytes.
pub fn check_file_url(t: &str) -> Result<(), Refused> {
    if t.len() > MAX_FILE_URL {
        return Err(rule(
            "url length",
            format!("{} bytes, at most {MAX_FILE_URL}", t.len()),
        ));
    }
    if t.contains('*') {
        return Err(rule(
            "no wildcard in URL",
            "`*` is not allowed in a URL purge; use WILDCARD",
        ));
    }
    check_percent(t)
}

fn check_percent(t: &str) -> Result<(), Refused> {
    let b = t.as_bytes();
    for (i, _) in t.match_indices('%') {
        let ok = b.len() > i + 2 && b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit();
        if !ok {
            return Err(rule(
                "percent encoding",
                format!("`%` at byte {i} must be encoded as %25"),
            ));
        }
    }
    Ok(())
}

/// PREFIX targets become `dirUrls` ending in `**`, so a `*` inside would turn into a wildcard.
pub fn check_prefix(t: &str) -> Result<(), Refused> {
    if t.contains('*') {
        return Err(rule(
            "no wildcard in PREFIX",
            "`*` would be read as a wildcard; use WILDCARD",
        ));
    }
    check_percent(t)
}

/// `dirUrls` wildcards: only the last `*` or `**` is a wildcard, so there may be only one.
pub fn check_wildcard(t: &str) -> Result<(), Refused> {
    let runs: Vec<usize> = t
        .split(|c| c != '*')
        .filter(|s| !s.is_empty())
        .map(str::len)
        .collect();
    if runs.iter().any(|&n| n > 2) {
        return Err(rule("wildcard", "use `*` or `**`, not three or more stars"));
    }
    if runs.len() > 1 {
        return Err(rule(
            "one wildcard",
            format!(
                "only the last `*`/`**` is a wildcard, this has {}; earlier ones would match literally",
                runs.len()
            ),
        ));
    }
    check_percent(t)
}

/// Splits `scheme://host/rest` into the host and `/rest`.
fn split_pattern(t: &str) -> Result<(&str, &str), Refused> {
    let Some((scheme, rest)) = t.split_once("://") else {
        return Err(rule(
            "scheme",
            "must start with http://, https:// or any:// followed by the host and /",
        ));
    };
    if !matches!(scheme, "http" | "https" | "any") {
        return Err(rule(
            "scheme",
            format!("scheme {scheme:?} is not http, https or any"),
        ));
    }
    let Some(slash) = rest.find('/') else {
        return Err(rule("scheme", "the host must be followed by /"));
    };
    let host = &rest[..slash];
    let literal = host.replace("\\.", ".");
    let host_ok = !literal.is_empty()
        && literal
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b':');
    if !host_ok {
        return Err(rule(
            "host",
            format!("{host:?} is not a literal host name (only `\\.` may be escaped)"),
        ));
    }
    Ok((host, &rest[slash..]))
}

#[derive(Default)]
struct Quantifiers {
    unlimited: usize,
    largest_bound: u32,
}

impl ast::Visitor for Quantifiers {
    type Output = Quantifiers;
    type Err = std::convert::Infallible;

    fn finish(self) -> Result<Quantifiers, Self::Err> {
        Ok(self)
    }

    fn visit_pre(&mut self, ast: &Ast) -> Result<(), Self::Err> {
        if let Ast::Repetition(r) = ast {
            match &r.op.kind {
                RepetitionKind::ZeroOrOne => {}
                RepetitionKind::ZeroOrMore | RepetitionKind::OneOrMore => self.unlimited += 1,
                RepetitionKind::Range(RepetitionRange::AtLeast(n)) => {
                    self.unlimited += 1;
                    self.largest_bound = self.largest_bound.max(*n);
                }
                RepetitionKind::Range(RepetitionRange::Exactly(n)) => {
                    self.largest_bound = self.largest_bound.max(*n);
                }
                RepetitionKind::Range(RepetitionRange::Bounded(m, n)) => {
                    self.largest_bound = self.largest_bound.max(*m.max(n));
                }
            }
        }
        Ok(())
    }
}

/// `regexPatterns`: `{http|https|any}://{host}/`, at most 126 characters after the host, at
/// most two unlimited quantifiers, no quantifier bound above 59.
pub fn check_regex(t: &str) -> Result<(), Refused> {
    let (_, rest) = split_pattern(t)?;
    let len = rest.chars().count();
    if len > MAX_REGEX_AFTER_HOST {
        return Err(rule(
            "length after host",
            format!("{len} characters after the host, at most {MAX_REGEX_AFTER_HOST}"),
        ));
    }
    let parsed = ast::parse::Parser::new()
        .parse(rest)
        .map_err(|e| rule("syntax", e.kind().to_string()))?;
    let q = ast::visit(&parsed, Quantifiers::default()).unwrap_or_default();
    if q.unlimited > MAX_UNLIMITED {
        return Err(rule(
            "unlimited quantifiers",
            format!(
                "{} of `*`, `+`, `{{n,}}`, at most {MAX_UNLIMITED}",
                q.unlimited
            ),
        ));
    }
    if q.largest_bound > MAX_BOUND {
        return Err(rule(
            "bound above 59",
            format!("quantifier bound {} is above {MAX_BOUND}", q.largest_bound),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broken(r: Result<(), Refused>) -> String {
        r.expect_err("should break a rule").rule
    }

    #[test]
    fn good_patterns_pass() {
        for p in [
            "https://www.example.com/static/.*\\.png",
            "any://www\\.example\\.com/a/[0-9]{1,59}/.+",
            "http://img.example.com:8080/(x|y)?/z",
        ] {
            assert_eq!(check_regex(p), Ok(()), "{p}");
        }
    }

    #[test]
    fn each_regex_rule_is_named() {
        assert!(broken(check_regex("ftp://www.example.com/.*")).contains("\"scheme\""));
        assert!(broken(check_regex("www.example.com/.*")).contains("\"scheme\""));
        assert!(broken(check_regex("https://www.example.com")).contains("\"scheme\""));
        assert!(broken(check_regex("https://.*/a")).contains("\"host\""));
        let long = format!("https://www.example.com/{}", "a".repeat(126));
        let e = broken(check_regex(&long));
        assert!(
            e.contains("\"length after host\"") && e.contains("127"),
            "{e}"
        );
        let ok_long = format!("https://www.example.com/{}", "a".repeat(125));
        assert_eq!(check_regex(&ok_long), Ok(()));
        let e = broken(check_regex("https://www.example.com/a.*b.+c{2,}"));
        assert!(
            e.contains("\"unlimited quantifiers\"") && e.contains('3'),
            "{e}"
        );
        assert_eq!(check_regex("https://www.example.com/a.*b.+c?"), Ok(()));
        let e = broken(check_regex("https://www.example.com/a{60}"));
        assert!(e.contains("\"bound above 59\"") && e.contains("60"), "{e}");
        assert!(broken(check_regex("https://www.example.com/a{1,60}")).contains("bound above 59"));
        assert!(broken(check_regex("https://www.example.com/(")).contains("\"syntax\""));
    }

    #[test]
    fn url_prefix_and_wildcard_rules() {
        assert_eq!(check_file_url("https://a.com/x%20y"), Ok(()));
        assert!(broken(check_file_url("https://a.com/x*")).contains("no wildcard"));
        assert!(broken(check_file_url("https://a.com/100%")).contains("percent"));
        let long = format!("https://a.com/{}", "a".repeat(2040));
        assert!(broken(check_file_url(&long)).contains("url length"));
        assert!(broken(check_prefix("https://a.com/*/")).contains("PREFIX"));
        assert_eq!(check_wildcard("https://a.com/img/**"), Ok(()));
        assert_eq!(check_wildcard("https://a.com/img/*.png"), Ok(()));
        assert!(broken(check_wildcard("https://a.com/*/x/*.png")).contains("one wildcard"));
        assert!(broken(check_wildcard("https://a.com/***")).contains("\"wildcard\""));
    }
}
