//! Property tests: random CreatePurge requests, CDN Pro targets and regex patterns never make
//! the checks panic, and every refusal names the field (or the CDN Pro rule) it is about.

use std::collections::BTreeMap;

use proptest::prelude::*;
use purge_service::core::Error;
use purge_service::core::validate::{CreateRequest, Limits, validate};
use purge_service::model::{Action, PurgeKind};
use purge_service::providers::cdnetworks::dialect;
use purge_service::providers::{Registry, build};

const FIELDS: &[&str] = &[
    "provider",
    "kind",
    "action",
    "targets",
    "hosts",
    "headers",
    "labels",
    "idempotency_key",
];

fn registry() -> Registry {
    let config = crate::support::config(
        "[[providers]]\nname = \"sandbox\"\ntype = \"sandbox\"\n\
         [[providers]]\nname = \"other\"\ntype = \"sandbox\"\n\
         [[groups]]\nname = \"both\"\nproviders = [\"sandbox\", \"other\"]\n",
    );
    let http = build::http_client().expect("http client");
    build::registry(&config.providers, &config.groups, &http).expect("registry")
}

/// Strings that look like what callers send, and plain garbage.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "https?://[a-z.*]{0,20}(:[0-9]{1,5})?/[a-zA-Z0-9%*./?=&#-]{0,40}",
        "[a-z0-9.*-]{0,30}",
        any::<String>(),
    ]
}

fn kind() -> impl Strategy<Value = Result<PurgeKind, i32>> {
    prop_oneof![
        Just(Ok(PurgeKind::Url)),
        Just(Ok(PurgeKind::Prefix)),
        Just(Ok(PurgeKind::Wildcard)),
        Just(Ok(PurgeKind::Regex)),
        Just(Ok(PurgeKind::Host)),
        Just(Ok(PurgeKind::Tag)),
        Just(Ok(PurgeKind::All)),
        any::<i32>().prop_map(Err),
    ]
}

fn request() -> impl Strategy<Value = CreateRequest> {
    (
        prop_oneof![Just("sandbox".to_owned()), Just("both".to_owned()), text()],
        kind(),
        proptest::collection::vec(text(), 0..6),
        prop_oneof![
            Just(Ok(Action::Invalidate)),
            Just(Ok(Action::Delete)),
            any::<i32>().prop_map(Err)
        ],
        proptest::collection::vec(text(), 0..3),
        proptest::collection::btree_map(text(), text(), 0..3),
        proptest::collection::btree_map(text(), text(), 0..3),
        text(),
        proptest::option::of(text()),
    )
        .prop_map(
            |(provider, kind, targets, action, hosts, headers, labels, key, metadata)| {
                CreateRequest {
                    provider,
                    kind,
                    targets,
                    action,
                    hosts,
                    headers: BTreeMap::from_iter(headers),
                    labels: BTreeMap::from_iter(labels),
                    idempotency_key: key,
                    idempotency_metadata: metadata,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn create_requests_never_panic_and_refusals_name_their_field(req in request()) {
        let registry = registry();
        let limits = Limits { max_targets: 4, max_len: 64 };
        match validate(req, &registry, limits) {
            Ok(_) => {}
            Err(Error::InvalidArgument(violations)) => {
                prop_assert!(!violations.is_empty());
                for v in violations {
                    prop_assert!(
                        FIELDS.iter().any(|f| v.field == *f || v.field.starts_with(&format!("{f}["))),
                        "unnamed field {:?}: {}", v.field, v.description
                    );
                    prop_assert!(!v.description.is_empty(), "{:?} says nothing", v.field);
                }
            }
            Err(other) => prop_assert!(false, "not INVALID_ARGUMENT: {other}"),
        }
    }

    #[test]
    fn cdn_pro_checks_never_panic_and_name_the_rule(t in text()) {
        for check in [
            dialect::check_file_url,
            dialect::check_prefix,
            dialect::check_wildcard,
            dialect::check_regex,
        ] {
            if let Err(refused) = check(&t) {
                prop_assert!(refused.rule.contains("CDN Pro rule \""), "{}", refused.rule);
            }
        }
    }

    #[test]
    fn regex_patterns_never_panic_the_dialect_check(
        host in "[a-z]{1,10}\\.example\\.com",
        path in "[a-z0-9.*+?()|\\[\\]{},\\\\^$-]{0,60}",
    ) {
        if let Err(refused) = dialect::check_regex(&format!("https://{host}/{path}")) {
            prop_assert!(refused.rule.contains("CDN Pro rule \""), "{}", refused.rule);
        }
    }
}
