//! Unit tests of the ListPurges filter, page sizes and page tokens.

use std::collections::BTreeMap;

use super::*;
use crate::model::{Action, PurgeSpec};

fn record(state: PurgeState, ticket: Option<&str>) -> PurgeRecord {
    let spec = PurgeSpec {
        provider: "edge".into(),
        providers: vec!["edge".into()],
        kind: PurgeKind::Url,
        targets: vec!["https://a/x".into()],
        action: Action::Invalidate,
        hosts: vec![],
        headers: BTreeMap::new(),
        labels: ticket
            .map(|t| BTreeMap::from([("ticket".to_owned(), t.to_owned())]))
            .unwrap_or_default(),
        idempotency_key: None,
    };
    let t = DateTime::parse_from_rfc3339("2026-03-01T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    let mut r = PurgeRecord::new(uuid::Uuid::now_v7().to_string(), "c".into(), spec, t);
    r.state = state;
    r
}

fn message(e: Error) -> String {
    match e {
        Error::InvalidArgument(v) => format!("{}: {}", v[0].field, v[0].description),
        other => panic!("not INVALID_ARGUMENT: {other:?}"),
    }
}

#[test]
fn every_field_filters() {
    let r = record(PurgeState::Succeeded, Some("OPS-42"));
    let yes = [
        "",
        "state = SUCCEEDED",
        "state = PURGE_STATE_SUCCEEDED",
        "state != FAILED",
        "provider = \"edge\"",
        "kind = URL",
        "kind != TAG",
        "labels.ticket = \"OPS-42\"",
        "labels.other != x",
        "create_time >= \"2026-01-01T00:00:00Z\"",
        "create_time < \"2026-03-01T00:00:01Z\"",
        "create_time <= \"2026-03-01T00:00:00Z\"",
        "state = SUCCEEDED AND labels.ticket = \"OPS-42\" AND create_time >= \"2026-01-01T00:00:00Z\"",
    ];
    for f in yes {
        assert!(Filter::parse(f).unwrap().matches(&r), "{f}");
    }
    let no = [
        "state = FAILED",
        "provider = other",
        "kind = TAG",
        "labels.ticket = \"OPS-43\"",
        "labels.missing = x",
        "create_time > \"2026-03-01T00:00:00Z\"",
        "state = SUCCEEDED AND labels.ticket = OPS-1",
    ];
    for f in no {
        assert!(!Filter::parse(f).unwrap().matches(&r), "{f}");
    }
    assert!(
        !Filter::parse("labels.ticket = OPS-42")
            .unwrap()
            .matches(&record(PurgeState::Succeeded, None))
    );
}

#[test]
fn a_bad_filter_names_the_filter_and_the_token() {
    let cases = [
        ("stat = SUCCEEDED", "unknown field \"stat\""),
        ("state = DONE", "\"DONE\" is not a state"),
        ("kind = FILE", "\"FILE\" is not a kind"),
        ("state > SUCCEEDED", "\"state\" takes = or !=, not \">\""),
        (
            "state = SUCCEEDED OR kind = URL",
            "expected AND, got \"OR\"",
        ),
        ("state =", "expected a value after \"state\""),
        (
            "state SUCCEEDED",
            "expected an operator after \"state\", got \"SUCCEEDED\"",
        ),
        ("state = SUCCEEDED AND", "ends after AND"),
        (
            "create_time >= yesterday",
            "\"yesterday\" is not an RFC 3339 time",
        ),
        ("labels.ticket = \"OPS", "unterminated string"),
        (
            "state = SUCCEEDED; kind = URL",
            "unexpected ';' at offset 17",
        ),
        ("= x", "expected a field name, got \"=\""),
    ];
    for (f, want) in cases {
        let got = message(Filter::parse(f).unwrap_err());
        assert!(got.starts_with(&format!("filter: {f:?}: ")), "{got}");
        assert!(got.contains(want), "{f}: {got}");
    }
}

#[test]
fn page_sizes_default_cap_and_refuse_negatives() {
    assert_eq!(page_size(0).unwrap(), 50);
    assert_eq!(page_size(1).unwrap(), 1);
    assert_eq!(page_size(1000).unwrap(), 1000);
    assert_eq!(page_size(1001).unwrap(), 1000);
    assert_eq!(
        message(page_size(-1).unwrap_err()),
        "page_size: must not be negative, got -1"
    );
}

#[test]
fn a_token_works_only_for_its_caller_and_filter() {
    let id = uuid::Uuid::now_v7().to_string();
    let mine = PageTokens {
        secret: b"k1",
        caller: "a",
        filter: "state = FAILED",
    };
    let token = mine.issue(&id);
    assert_eq!(mine.check(&token).unwrap(), id);
    for other in [
        PageTokens {
            caller: "b",
            ..mine
        },
        PageTokens { filter: "", ..mine },
        PageTokens {
            secret: b"k2",
            ..mine
        },
    ] {
        let e = message(other.check(&token).unwrap_err());
        assert!(e.starts_with("page_token: "), "{e}");
        assert!(e.contains("not a page token of this listing"), "{e}");
    }
    assert!(mine.check("garbage!").is_err());
    let forged = URL_SAFE_NO_PAD.encode(format!("{id}.{}", "0".repeat(32)));
    assert!(mine.check(&forged).is_err());
}
