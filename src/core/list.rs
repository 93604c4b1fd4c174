//! ListPurges' request: the filter (a small AIP-160 subset), page sizes and page tokens that
//! are bound, by an HMAC, to the caller and the filter they were issued for.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::error::{Error, FieldViolation};
use crate::model::{PurgeKind, PurgeRecord, PurgeState};

/// Page size when the request says 0.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// Larger page sizes are lowered to this (AIP-158).
pub const MAX_PAGE_SIZE: usize = 1000;

/// The page size a request asks for: 0 is the default, above the maximum is the maximum.
pub fn page_size(requested: i32) -> Result<usize, Error> {
    match requested {
        0 => Ok(DEFAULT_PAGE_SIZE),
        n if n < 0 => Err(invalid(
            "page_size",
            format!("must not be negative, got {n}"),
        )),
        n => Ok((n as usize).min(MAX_PAGE_SIZE)),
    }
}

fn invalid(field: &str, description: String) -> Error {
    Error::InvalidArgument(vec![FieldViolation::new(field, description)])
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Op {
    fn holds(self, ord: std::cmp::Ordering) -> bool {
        use std::cmp::Ordering::*;
        match self {
            Op::Eq => ord == Equal,
            Op::Ne => ord != Equal,
            Op::Lt => ord == Less,
            Op::Le => ord != Greater,
            Op::Gt => ord == Greater,
            Op::Ge => ord != Less,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Term {
    State(Op, PurgeState),
    Provider(Op, String),
    Kind(Op, PurgeKind),
    Label(Op, String, String),
    Created(Op, DateTime<Utc>),
}

/// A parsed `filter`: comparisons that must all hold.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filter {
    terms: Vec<Term>,
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Word(String),
    Quoted(String),
    Op(Op),
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Token::Word(w) | Token::Quoted(w) => write!(f, "{w:?}"),
            Token::Op(op) => write!(f, "{:?}", op_text(*op)),
        }
    }
}

fn op_text(op: Op) -> &'static str {
    match op {
        Op::Eq => "=",
        Op::Ne => "!=",
        Op::Lt => "<",
        Op::Le => "<=",
        Op::Gt => ">",
        Op::Ge => ">=",
    }
}

fn bad(filter: &str, problem: impl std::fmt::Display) -> Error {
    invalid("filter", format!("{filter:?}: {problem}"))
}

fn tokens(filter: &str) -> Result<Vec<Token>, Error> {
    let mut out = Vec::new();
    let mut chars = filter.char_indices().peekable();
    while let Some(&(at, c)) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '"' => {
                chars.next();
                let mut text = String::new();
                loop {
                    match chars.next() {
                        Some((_, '\\')) => match chars.next() {
                            Some((_, c)) => text.push(c),
                            None => return Err(bad(filter, "unterminated string")),
                        },
                        Some((_, '"')) => break,
                        Some((_, c)) => text.push(c),
                        None => {
                            return Err(bad(filter, format!("unterminated string at offset {at}")));
                        }
                    }
                }
                out.push(Token::Quoted(text));
            }
            '=' | '!' | '<' | '>' => {
                chars.next();
                let eq_follows = chars.peek().is_some_and(|&(_, n)| n == '=');
                let op = match (c, eq_follows) {
                    ('=', _) => Op::Eq,
                    ('!', true) => Op::Ne,
                    ('<', true) => Op::Le,
                    ('<', false) => Op::Lt,
                    ('>', true) => Op::Ge,
                    ('>', false) => Op::Gt,
                    _ => return Err(bad(filter, format!("unexpected \"!\" at offset {at}"))),
                };
                if eq_follows && c != '=' {
                    chars.next();
                }
                out.push(Token::Op(op));
            }
            c if c.is_alphanumeric() || "_.-:+".contains(c) => {
                let mut word = String::new();
                while let Some(&(_, c)) = chars.peek() {
                    if c.is_alphanumeric() || "_.-:+".contains(c) {
                        word.push(c);
                        chars.next();
                    } else {
                        break;
                    }
                }
                out.push(Token::Word(word));
            }
            other => {
                return Err(bad(filter, format!("unexpected {other:?} at offset {at}")));
            }
        }
    }
    Ok(out)
}

fn state_named(s: &str) -> Option<PurgeState> {
    Some(match s.trim_start_matches("PURGE_STATE_") {
        "QUEUED" => PurgeState::Queued,
        "RUNNING" => PurgeState::Running,
        "SUCCEEDED" => PurgeState::Succeeded,
        "FAILED" => PurgeState::Failed,
        "CANCELLED" => PurgeState::Cancelled,
        _ => return None,
    })
}

impl Filter {
    /// Parses `a = b AND c >= "d"`; the error names the filter and the offending token.
    pub fn parse(filter: &str) -> Result<Filter, Error> {
        let mut terms = Vec::new();
        let mut rest = tokens(filter)?.into_iter();
        loop {
            let Some(field) = rest.next() else {
                if terms.is_empty() {
                    return Ok(Filter::default());
                }
                return Err(bad(filter, "ends after AND: expected a comparison"));
            };
            let Token::Word(field) = field else {
                return Err(bad(filter, format!("expected a field name, got {field}")));
            };
            let op = match rest.next() {
                Some(Token::Op(op)) => op,
                Some(t) => {
                    return Err(bad(
                        filter,
                        format!("expected an operator after {field:?}, got {t}"),
                    ));
                }
                None => return Err(bad(filter, format!("expected an operator after {field:?}"))),
            };
            let value = match rest.next() {
                Some(Token::Word(v) | Token::Quoted(v)) => v,
                Some(t) => {
                    return Err(bad(
                        filter,
                        format!("expected a value after {field:?}, got {t}"),
                    ));
                }
                None => return Err(bad(filter, format!("expected a value after {field:?}"))),
            };
            terms.push(Self::term(filter, &field, op, value)?);
            match rest.next() {
                None => return Ok(Filter { terms }),
                Some(Token::Word(w)) if w == "AND" => {}
                Some(t) => {
                    return Err(bad(
                        filter,
                        format!("expected AND, got {t} (only AND is supported)"),
                    ));
                }
            }
        }
    }

    fn term(filter: &str, field: &str, op: Op, value: String) -> Result<Term, Error> {
        let equality = |op: Op| {
            if matches!(op, Op::Eq | Op::Ne) {
                Ok(op)
            } else {
                Err(bad(
                    filter,
                    format!("{field:?} takes = or !=, not {:?}", op_text(op)),
                ))
            }
        };
        Ok(match field {
            "state" => Term::State(
                equality(op)?,
                state_named(&value).ok_or_else(|| {
                    bad(filter, format!("{value:?} is not a state (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)"))
                })?,
            ),
            "provider" => Term::Provider(equality(op)?, value),
            "kind" => Term::Kind(
                equality(op)?,
                PurgeKind::parse(value.trim_start_matches("PURGE_KIND_")).ok_or_else(|| {
                    bad(filter, format!("{value:?} is not a kind (URL, PREFIX, HOST, ALL, TAG, WILDCARD, REGEX)"))
                })?,
            ),
            "create_time" => Term::Created(
                op,
                DateTime::parse_from_rfc3339(&value)
                    .map_err(|e| bad(filter, format!("{value:?} is not an RFC 3339 time: {e}")))?
                    .with_timezone(&Utc),
            ),
            f => match f.strip_prefix("labels.") {
                Some(key) if !key.is_empty() => Term::Label(equality(op)?, key.to_owned(), value),
                _ => {
                    return Err(bad(filter, format!(
                        "unknown field {f:?} (state, provider, kind, labels.<key>, create_time)"
                    )));
                }
            },
        })
    }

    /// Whether `record` passes every comparison.
    pub fn matches(&self, record: &PurgeRecord) -> bool {
        self.terms.iter().all(|t| match t {
            Term::State(op, s) => op.holds(if record.state == *s {
                std::cmp::Ordering::Equal
            } else {
                std::cmp::Ordering::Less
            }),
            Term::Provider(op, p) => op.holds(record.spec.provider.as_str().cmp(p)),
            Term::Kind(op, k) => op.holds(record.spec.kind.cmp(k)),
            Term::Label(op, k, v) => match record.spec.labels.get(k) {
                Some(have) => op.holds(have.as_str().cmp(v)),
                None => *op == Op::Ne,
            },
            Term::Created(op, t) => op.holds(record.create_time.cmp(t)),
        })
    }
}

/// Signs and checks page tokens: `base64url(<last id>.<mac>)`, the MAC over the caller, the
/// filter and the id, so a token works only for the listing that issued it.
pub struct PageTokens<'a> {
    pub secret: &'a [u8],
    pub caller: &'a str,
    pub filter: &'a str,
}

impl PageTokens<'_> {
    fn mac(&self, id: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.secret).expect("any key length");
        for part in [self.caller, self.filter, id] {
            mac.update(part.as_bytes());
            mac.update(b"\x1f");
        }
        hex::encode(&mac.finalize().into_bytes()[..16])
    }

    pub fn issue(&self, last_id: &str) -> String {
        URL_SAFE_NO_PAD.encode(format!("{last_id}.{}", self.mac(last_id)))
    }

    /// The id a token continues after; INVALID_ARGUMENT for a token of another caller, another
    /// filter, or no token at all.
    pub fn check(&self, token: &str) -> Result<String, Error> {
        let refused = || {
            invalid(
                "page_token",
                format!(
                    "{:?} is not a page token of this listing (it was issued for another caller or filter, or altered)",
                    token.chars().take(64).collect::<String>()
                ),
            )
        };
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| refused())?;
        let text = String::from_utf8(bytes).map_err(|_| refused())?;
        let (id, mac) = text.rsplit_once('.').ok_or_else(refused)?;
        let expected = self.mac(id);
        // Constant time: the MAC is the secret-derived part.
        let same = expected.len() == mac.len()
            && expected
                .bytes()
                .zip(mac.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if !same || uuid::Uuid::parse_str(id).is_err() {
            return Err(refused());
        }
        Ok(id.to_owned())
    }
}

#[cfg(test)]
#[path = "list_tests.rs"]
mod tests;
