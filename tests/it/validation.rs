//! Validation through a real socket: every kind's malformed targets and every bad field get
//! INVALID_ARGUMENT naming the field and value, and the server keeps serving.

use std::time::Duration;

use purge_service::pb::{self, PurgeKind, PurgeState};
use tonic::Code;

use crate::support::{config, reason, request, spawn_app, violations, wait_terminal};

/// Each case: a request and the field violations it must produce.
#[tokio::test]
async fn bad_inputs_name_the_field_and_value() {
    let app = spawn_app(config(
        "[server]\nmax_targets = 5\n[[providers]]\nname = \"sandbox\"\ntype = \"sandbox\"\ndelay = \"10ms\"\n[[providers]]\nname = \"urls-only\"\ntype = \"sandbox\"\nkinds = [\"URL\"]\n",
    ))
    .await;
    let mut client = app.client.clone();
    let url = |t: &[&str]| request("sandbox", PurgeKind::Url, t);
    let long = format!("https://example.com/{}", "a".repeat(3000));
    let cases: Vec<(pb::CreatePurgeRequest, &[&str], &str)> = vec![
        (url(&["example.com/a"]), &["targets[0]"], "absolute"),
        (
            url(&["https://example.com/ok", "ftp://example.com/x"]),
            &["targets[1]"],
            "ftp://",
        ),
        (
            url(&["https://example.com/a b"]),
            &["targets[0]"],
            "whitespace",
        ),
        (
            url(&["https://example.com/\u{1}"]),
            &["targets[0]"],
            "control",
        ),
        (url(&[long.as_str()]), &["targets[0]"], "at most 2048"),
        (url(&[]), &["targets"], "at least one"),
        (
            url(&[
                "https://e.com/1",
                "https://e.com/2",
                "https://e.com/3",
                "https://e.com/4",
                "https://e.com/5",
                "https://e.com/6",
            ]),
            &["targets"],
            "at most 5",
        ),
        (
            request("sandbox", PurgeKind::Prefix, &["/relative/"]),
            &["targets[0]"],
            "absolute",
        ),
        (
            request("sandbox", PurgeKind::Host, &["bad_host!"]),
            &["targets[0]"],
            "host name",
        ),
        (
            request("sandbox", PurgeKind::Tag, &["two words"]),
            &["targets[0]"],
            "whitespace",
        ),
        (
            request(
                "sandbox",
                PurgeKind::Wildcard,
                &["https://example.com/no-star"],
            ),
            &["targets[0]"],
            "`*`",
        ),
        (
            request("sandbox", PurgeKind::Regex, &["https://example.com/(open"]),
            &["targets[0]"],
            "regular expression",
        ),
        (
            request("sandbox", PurgeKind::All, &["https://example.com/"]),
            &["targets"],
            "must be empty",
        ),
        (
            request("nowhere", PurgeKind::Url, &["https://example.com/a"]),
            &["provider"],
            "\"nowhere\"",
        ),
        (
            request("", PurgeKind::Url, &["https://example.com/a"]),
            &["provider"],
            "required",
        ),
        (
            request("urls-only", PurgeKind::Url, &["https://example.com/a"]),
            &[],
            "",
        ),
        (
            request("urls-only", PurgeKind::Tag, &["t1"]),
            &["kind"],
            "cannot purge TAG; it supports URL",
        ),
        (
            request(
                "sandbox",
                PurgeKind::Unspecified,
                &["https://example.com/a"],
            ),
            &["kind"],
            "required; one of PURGE_KIND_URL",
        ),
        (
            pb::CreatePurgeRequest {
                kind: 99,
                ..url(&["https://example.com/a"])
            },
            &["kind"],
            "99",
        ),
        (
            pb::CreatePurgeRequest {
                action: 7,
                ..url(&["https://example.com/a"])
            },
            &["action"],
            "7",
        ),
        (
            pb::CreatePurgeRequest {
                hosts: vec!["a.com".into()],
                ..url(&["https://example.com/a"])
            },
            &["hosts"],
            "TAG",
        ),
        (
            pb::CreatePurgeRequest {
                labels: [("Bad Key".to_string(), "v".to_string())].into(),
                ..url(&["https://example.com/a"])
            },
            &["labels[\"Bad Key\"]"],
            "keys",
        ),
        (
            pb::CreatePurgeRequest {
                idempotency_key: "has space".into(),
                ..url(&["https://example.com/a"])
            },
            &["idempotency_key"],
            "printable",
        ),
    ];
    for (req, fields, needle) in cases {
        let shown = format!("{req:?}");
        let result = client.create_purge(req).await;
        if fields.is_empty() {
            assert!(result.is_ok(), "{shown} should be accepted: {result:?}");
            continue;
        }
        let err = result.expect_err(&shown);
        assert_eq!(err.code(), Code::InvalidArgument, "{shown}");
        assert_eq!(reason(&err), "INVALID_ARGUMENT");
        let got = violations(&err);
        let names: Vec<&str> = got.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(names, fields, "{shown}: {got:?}");
        assert!(
            got[0].1.contains(needle),
            "{shown}: {:?} should mention {needle:?}",
            got[0].1
        );
    }
    // Several bad targets: one violation each, with its index.
    let err = client
        .create_purge(url(&["x", "https://example.com/fine", "y"]))
        .await
        .unwrap_err();
    let names: Vec<String> = violations(&err).into_iter().map(|(f, _)| f).collect();
    assert_eq!(names, ["targets[0]", "targets[2]"]);
    // And the server keeps serving.
    let ok = client
        .create_purge(url(&["https://example.com/still-fine"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        wait_terminal(&client, &ok.id, Duration::from_secs(10))
            .await
            .state(),
        PurgeState::Succeeded
    );
}

/// A request with a thousand bad targets gets a bounded error: the first violations, each
/// naming its index and value, and a count of the rest.
#[tokio::test]
async fn many_bad_targets_give_a_bounded_error() {
    let app = spawn_app(config(
        "[[providers]]\nname = \"sandbox\"\ntype = \"sandbox\"\n",
    ))
    .await;
    let bad: Vec<String> = (0..1000)
        .map(|i| format!("ftp://example.com/{i}/{}", "x".repeat(200)))
        .collect();
    let refs: Vec<&str> = bad.iter().map(String::as_str).collect();
    let err = app
        .client
        .clone()
        .create_purge(request("sandbox", PurgeKind::Url, &refs))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let v = violations(&err);
    let listed = v.len() - 1;
    assert!((10..=50).contains(&listed), "{listed} listed");
    assert_eq!(v[0].0, "targets[0]");
    assert!(v[0].1.contains("ftp://example.com/0/"), "{}", v[0].1);
    assert_eq!(v[listed - 1].0, format!("targets[{}]", listed - 1));
    let more = format!("{} more", 1000 - listed);
    assert!(v[listed].1.contains(&more), "{}", v[listed].1);
    // The details stay far below the 8 KB some clients allow for metadata.
    let details: usize = v.iter().map(|(f, d)| f.len() + d.len()).sum();
    assert!(details < 4_000, "{details} bytes of violations");
    assert!(err.message().len() < 2_000, "{} bytes", err.message().len());
    assert!(
        err.message().contains("more in the details"),
        "{}",
        err.message()
    );
}
