//! The provider table: each provider described once for the common scenarios (its fake, its
//! config, its kinds, its own refusals and fatal error), with what is special to check about
//! what its fake received.

use std::time::Duration;

use futures::FutureExt;
use purge_service::pb::{CreatePurgeRequest, PurgeAction, PurgeKind};
use serde_json::Value;

use super::{Done, Fatal, Quota, Refusal, Row, Running};
use crate::cdnetworks::{Scheme, provider_toml};
use crate::fakes::cdnetworks::Fault;
use crate::fakes::cdnetworks::cdnpro::{FakeCdnPro, PURGES, TOKENS};
use crate::fakes::cdnetworks::content::{FakeContent, QUERY, QUOTA, RECEIVER, REGEX};
use crate::fakes::edgeone::{FakeEdgeOne, SECRET_KEY};
use crate::support::request;

/// The URL purge of most rows.
const TWO_URLS: &[&str] = &[
    "https://www.example.com/a.jpg",
    "https://www.example.com/b.css",
];

/// Status polls at the test's pace (CDNetworks documents a few per second at most).
const FAST_POLLS: &str = "status = [{ count = 20, per = \"1s\" }]";

fn with_hosts(mut req: CreatePurgeRequest, hosts: &[&str]) -> CreatePurgeRequest {
    req.hosts = hosts.iter().map(|h| h.to_string()).collect();
    req
}

fn refusal(request: CreatePurgeRequest, field: &'static str, says: &str) -> Refusal {
    Refusal {
        request,
        field,
        says: says.to_owned(),
    }
}

/// The length of a JSON array field, 0 when absent.
fn len(body: &Value, field: &str) -> usize {
    body[field].as_array().map_or(0, Vec::len)
}

pub fn edgeone() -> Row<FakeEdgeOne> {
    Row {
        name: "edge",
        request_ids: "req-",
        start: || FakeEdgeOne::start(20, Duration::from_millis(100)).boxed(),
        provider_toml: |fake, secret, keys, dir| {
            crate::edgeone::provider_toml(fake, secret.unwrap_or(SECRET_KEY), keys, dir)
        },
        limits: "",
        kinds: &[
            PurgeKind::Url,
            PurgeKind::Prefix,
            PurgeKind::Host,
            PurgeKind::All,
            PurgeKind::Tag,
        ],
        sample: |kind| match kind {
            PurgeKind::Url => request("edge", kind, TWO_URLS),
            PurgeKind::Prefix => request("edge", kind, &["https://www.example.com/static/"]),
            PurgeKind::Host => request("edge", kind, &["www.example.com"]),
            PurgeKind::Tag => {
                with_hosts(request("edge", kind, &["product-42"]), &["www.example.com"])
            }
            _ => request("edge", kind, &[]),
        },
        refused_actions: &[],
        check_sent: |run, _| {
            let bodies = run.fake.accepted("CreatePurgeTask");
            let sent = |kind: &str, method: &str| {
                bodies
                    .iter()
                    .find(|b| b["Type"] == kind && b["Method"] == method)
                    .unwrap_or_else(|| panic!("no {kind} {method} in {bodies:?}"))
                    .clone()
            };
            assert_eq!(len(&sent("purge_url", "invalidate"), "Targets"), 2);
            assert_eq!(sent("purge_prefix", "delete")["Method"], "delete");
            assert_eq!(
                sent("purge_host", "invalidate")["Targets"][0],
                "www.example.com"
            );
            assert!(sent("purge_all", "invalidate").get("Targets").is_none());
            assert_eq!(
                sent("purge_cache_tag", "invalidate")["CacheTag"]["Domains"][0],
                "www.example.com"
            );
            assert!(
                run.fake
                    .calls()
                    .iter()
                    .any(|c| c.action == "DescribePurgeTasks")
            );
        },
        unsupported: PurgeKind::Regex,
        refusals: || {
            vec![refusal(
                request("edge", PurgeKind::Tag, &["t"]),
                "hosts",
                "needs the hosts a TAG purge applies to",
            )]
        },
        fatal: Fatal {
            wrong_secret: Some("not-the-right-secret-key"),
            keys: "",
            fault: |_| {},
            request: || request("edge", PurgeKind::Url, &["https://www.example.com/a"]),
            failing: &["https://www.example.com/a"],
            reason: "AuthFailure.SignatureFailure",
        },
        attempts: |run| {
            run.fake
                .calls()
                .iter()
                .filter(|c| c.action == "CreatePurgeTask")
                .count()
        },
        sent: |run| {
            run.fake
                .accepted("CreatePurgeTask")
                .iter()
                .map(|b| len(b, "Targets"))
                .collect()
        },
        quota: Some(Quota {
            exhaust: |fake| fake.set_daily_available("purge_url", 0),
            read: |fake| !fake.accepted("DescribeContentQuota").is_empty(),
            exhausted: || request("edge", PurgeKind::Url, &["https://www.example.com/q"]),
            refuse: |fake| fake.set_daily_available("purge_prefix", 1),
            refused: || {
                request(
                    "edge",
                    PurgeKind::Prefix,
                    &["https://www.example.com/a/", "https://www.example.com/b/"],
                )
            },
            reason: "LimitExceeded.DailyQuota",
            unaffected: Some(|| request("edge", PurgeKind::Host, &["www.example.com"])),
        }),
    }
}

pub fn cdnpro() -> Row<FakeCdnPro> {
    Row {
        name: "cdnpro",
        request_ids: "cnc-req-",
        start: || FakeCdnPro::start(Duration::from_millis(100)).boxed(),
        // A wrong secret is tried with the API key scheme, the right keys with AK/SK.
        provider_toml: |fake, secret, keys, dir| {
            let scheme = match secret {
                Some(_) => Scheme::ApiKey,
                None => Scheme::AkSk,
            };
            let keys = format!("target = \"staging\"\n{keys}");
            provider_toml("cdnpro", &fake.endpoint(), scheme, secret, &keys, dir)
        },
        limits: FAST_POLLS,
        kinds: &[
            PurgeKind::Url,
            PurgeKind::Prefix,
            PurgeKind::Wildcard,
            PurgeKind::Regex,
        ],
        sample: |kind| match kind {
            PurgeKind::Url => {
                let mut url = request(
                    "cdnpro",
                    kind,
                    &[
                        "https://www.example.com/a.jpg",
                        "https://www.example.com/b%20c.css",
                    ],
                );
                url.headers.insert("Accept-Encoding".into(), "gzip".into());
                url
            }
            PurgeKind::Prefix => request("cdnpro", kind, &["https://www.example.com/static/"]),
            PurgeKind::Wildcard => request("cdnpro", kind, &["https://www.example.com/img/*.png"]),
            _ => request(
                "cdnpro",
                kind,
                &[
                    "https://www.example.com/v[0-9]+/.*\\.js",
                    "any://www.example.com/x{1,59}",
                ],
            ),
        },
        refused_actions: &[],
        check_sent: |run, done| {
            let url = Done::of(done, PurgeKind::Url, PurgeAction::Invalidate);
            assert!(
                url.tasks[0].provider_task_id.starts_with("purge-"),
                "{:?}",
                url.tasks
            );
            let bodies = run.fake.accepted();
            let with = |field: &str| {
                bodies
                    .iter()
                    .find(|b| b.get(field).is_some())
                    .unwrap_or_else(|| panic!("no {field} in {bodies:?}"))
                    .clone()
            };
            let url = with("fileUrls");
            assert_eq!(len(&url, "fileUrls"), 2);
            assert_eq!(url["fileHeaders"][0]["name"], "Accept-Encoding");
            assert_eq!(url["fileHeaders"][0]["value"], "gzip");
            assert_eq!(url["target"], "staging");
            assert_eq!(url["action"], "invalidate");
            let dir = |first: &str, action: &str| {
                bodies
                    .iter()
                    .any(|b| b["dirUrls"][0] == first && b["action"] == action)
            };
            assert!(
                dir("https://www.example.com/static/**", "delete"),
                "{bodies:?}"
            );
            assert!(
                dir("https://www.example.com/img/*.png", "invalidate"),
                "{bodies:?}"
            );
            assert_eq!(len(&with("regexPatterns"), "regexPatterns"), 2);
            let calls = run.fake.calls();
            assert!(calls.iter().all(|c| c.auth == "aksk"), "{calls:?}");
            assert!(
                calls
                    .iter()
                    .any(|c| c.method == "GET" && c.path.starts_with("/cdn/purges/purge-"))
            );
            assert!(
                calls.iter().any(|c| c.path == TOKENS),
                "the token budget is read"
            );
        },
        unsupported: PurgeKind::Host,
        refusals: || {
            let long = format!("https://www.example.com/{}", "a".repeat(130));
            let mut refused: Vec<Refusal> = [
                ("ftp://www.example.com/.*", "scheme"),
                (long.as_str(), "length after host"),
                ("https://www.example.com/a.*b+c.*", "unlimited quantifiers"),
                ("https://www.example.com/a{1,60}", "bound above 59"),
            ]
            .into_iter()
            .map(|(pattern, rule)| {
                refusal(
                    request("cdnpro", PurgeKind::Regex, &[pattern]),
                    "targets[0]",
                    &format!("\"{rule}\""),
                )
            })
            .collect();
            refused.push(refusal(
                request(
                    "cdnpro",
                    PurgeKind::Wildcard,
                    &["https://www.example.com/*/a/*.png"],
                ),
                "targets[0]",
                "one wildcard",
            ));
            refused
        },
        fatal: Fatal {
            wrong_secret: Some("not-the-right-api-key"),
            keys: "",
            fault: |_| {},
            request: || request("cdnpro", PurgeKind::Url, &["https://www.example.com/a"]),
            failing: &["https://www.example.com/a"],
            reason: "authentication failed",
        },
        attempts: |run| run.fake.calls().iter().filter(|c| c.path == PURGES).count(),
        sent: |run| {
            run.fake
                .accepted()
                .iter()
                .map(|b| len(b, "fileUrls") + len(b, "dirUrls") + len(b, "regexPatterns"))
                .collect()
        },
        quota: Some(Quota {
            exhaust: |fake| fake.set_tokens(0, 1_000),
            read: |fake| {
                fake.calls()
                    .iter()
                    .any(|c| c.path == TOKENS && c.error.is_none())
            },
            exhausted: || request("cdnpro", PurgeKind::Url, &["https://www.example.com/q"]),
            refuse: |fake| fake.fault(PURGES, Fault::Code(400, "PurgeTokenQuotaExceeded")),
            refused: || request("cdnpro", PurgeKind::Prefix, &["https://www.example.com/a/"]),
            reason: "PurgeTokenQuotaExceeded",
            unaffected: None,
        }),
    }
}

pub fn content_management() -> Row<FakeContent> {
    const PATTERN: &str = "http://www.example.com/static/(.*).png";
    Row {
        name: "cdnetworks",
        request_ids: "cnc-req-",
        // Directory DELETE is off on an account by default: this one has it on, so every
        // action goes through (the refusal has its own test).
        start: || {
            async {
                let fake = FakeContent::start(Duration::from_millis(100)).await;
                fake.allow_dir_delete();
                fake
            }
            .boxed()
        },
        provider_toml: |fake, secret, keys, dir| {
            provider_toml(
                "cdnetworks",
                &fake.endpoint(),
                Scheme::ApiKey,
                secret,
                keys,
                dir,
            )
        },
        limits: FAST_POLLS,
        kinds: &[PurgeKind::Url, PurgeKind::Prefix, PurgeKind::Regex],
        sample: |kind| match kind {
            PurgeKind::Url => request("cdnetworks", kind, TWO_URLS),
            PurgeKind::Prefix => request("cdnetworks", kind, &["https://www.example.com/static/"]),
            _ => request("cdnetworks", kind, &[PATTERN]),
        },
        refused_actions: &[(PurgeKind::Regex, PurgeAction::Delete)],
        check_sent: |run, done| {
            let received = run.fake.accepted(RECEIVER);
            let urls = received
                .iter()
                .find(|b| b["urlAction"] == "expire")
                .unwrap_or_else(|| panic!("no expired urls in {received:?}"));
            assert_eq!(len(urls, "urls"), 2);
            assert!(
                received
                    .iter()
                    .any(|b| b["dirs"][0] == "https://www.example.com/static/"
                        && b["dirAction"] == "delete"),
                "{received:?}"
            );
            assert_eq!(run.fake.accepted(REGEX)[0]["urlRegulars"][0], PATTERN);
            let regex = Done::of(done, PurgeKind::Regex, PurgeAction::Invalidate);
            assert!(
                run.fake
                    .accepted(QUERY)
                    .iter()
                    .any(|b| b["itemId"] == regex.tasks[0].provider_task_id.as_str())
            );
            let calls = run.fake.calls();
            assert!(calls.iter().all(|c| c.auth == "api_key"), "{calls:?}");
            assert!(calls.iter().any(|c| c.path == QUOTA), "the quota is read");
        },
        unsupported: PurgeKind::Host,
        refusals: || {
            let mut delete = request(
                "cdnetworks",
                PurgeKind::Regex,
                &["http://www.example.com/d/.*"],
            );
            delete.action = PurgeAction::Delete as i32;
            vec![
                refusal(
                    request(
                        "cdnetworks",
                        PurgeKind::Prefix,
                        &["https://www.example.com/x"],
                    ),
                    "targets[0]",
                    "must end with `/`",
                ),
                refusal(delete, "action", "only expire"),
            ]
        },
        fatal: Fatal {
            wrong_secret: None,
            keys: "",
            fault: |fake| fake.fault(REGEX, Fault::Code(400, "InvalidUrlRegular")),
            request: || {
                request(
                    "cdnetworks",
                    PurgeKind::Regex,
                    &[
                        "http://www.example.com/r0/.*",
                        "http://www.example.com/r1/.*",
                    ],
                )
            },
            failing: &[
                "http://www.example.com/r0/.*",
                "http://www.example.com/r1/.*",
            ],
            reason: "InvalidUrlRegular",
        },
        attempts: |run| run.fake.calls_of(RECEIVER).len() + run.fake.calls_of(REGEX).len(),
        sent: |run| {
            let received = run.fake.accepted(RECEIVER);
            let regexes = run.fake.accepted(REGEX);
            received
                .iter()
                .map(|b| len(b, "urls") + len(b, "dirs"))
                .chain(regexes.iter().map(|b| len(b, "urlRegulars")))
                .collect()
        },
        quota: Some(Quota {
            exhaust: |fake| fake.set_remaining("regex", 0),
            read: |fake| !fake.accepted(QUOTA).is_empty(),
            exhausted: || request("cdnetworks", PurgeKind::Regex, &["http://a.example.com/.*"]),
            refuse: |fake| fake.fault(REGEX, Fault::Code(400, "NumberOutOfLimit")),
            refused: || request("cdnetworks", PurgeKind::Regex, &["http://a.example.com/.*"]),
            reason: "NumberOutOfLimit",
            unaffected: None,
        }),
    }
}

pub fn sandbox() -> Row<()> {
    Row {
        name: "sandbox",
        request_ids: "",
        start: || async {}.boxed(),
        provider_toml: |_, _, keys, _| {
            format!(
                "[[providers]]\nname = \"sandbox\"\ntype = \"sandbox\"\ndelay = \"30ms\"\nkinds = [\"URL\", \"PREFIX\", \"HOST\", \"TAG\", \"REGEX\", \"ALL\"]\n{keys}\n"
            )
        },
        limits: "",
        kinds: &[
            PurgeKind::Url,
            PurgeKind::Prefix,
            PurgeKind::Host,
            PurgeKind::Tag,
            PurgeKind::Regex,
            PurgeKind::All,
        ],
        sample: |kind| match kind {
            PurgeKind::Url => request("sandbox", kind, &["https://example.com/a.png"]),
            PurgeKind::Prefix => request("sandbox", kind, &["https://example.com/static/"]),
            PurgeKind::Host => request("sandbox", kind, &["www.example.com"]),
            PurgeKind::Tag => request("sandbox", kind, &["product-42"]),
            PurgeKind::Regex => request("sandbox", kind, &["https://example\\.com/.*"]),
            _ => request("sandbox", kind, &[]),
        },
        refused_actions: &[],
        check_sent: |run, done| {
            let calls = sandbox_calls(run);
            for d in done {
                let kind = purge_service::model::PurgeKind::parse(
                    d.kind.as_str_name().trim_start_matches("PURGE_KIND_"),
                )
                .unwrap();
                assert!(calls.iter().any(|c| c.kind == kind), "{kind:?}: {calls:?}");
            }
        },
        unsupported: PurgeKind::Wildcard,
        refusals: Vec::new,
        fatal: Fatal {
            wrong_secret: None,
            keys: "fail_pattern = \"/broken/\"",
            fault: |_| {},
            request: || {
                request(
                    "sandbox",
                    PurgeKind::Url,
                    &[
                        "https://example.com/ok.png",
                        "https://example.com/broken/x.png",
                        "https://example.com/broken/y.png",
                    ],
                )
            },
            failing: &[
                "https://example.com/broken/x.png",
                "https://example.com/broken/y.png",
            ],
            reason: "fail_pattern",
        },
        attempts: |run| sandbox_calls(run).len(),
        sent: |run| {
            sandbox_calls(run)
                .iter()
                .filter(|c| !c.throttled)
                .map(|c| c.targets.len())
                .collect()
        },
        quota: None,
    }
}

fn sandbox_calls(run: &Running<()>) -> Vec<purge_service::providers::sandbox::SandboxCall> {
    run.app.registry.sandbox("sandbox").unwrap().calls()
}
