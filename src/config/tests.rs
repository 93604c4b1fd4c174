//! Tests of loading, overlaying and showing the config.

use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn no_file_means_the_documented_default() {
    let c = Config::load(None, Vec::new()).unwrap();
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:50051");
    assert_eq!(c.store.backend, Backend::Memory);
    assert_eq!(c.providers.len(), 1);
    assert_eq!(c.providers[0].name, "sandbox");
}

#[test]
fn env_overrides_file_values_and_nested_arrays() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = \"0.0.0.0:1\"\n[[providers]]\nname = \"a\"\ntype = \"sandbox\"\ndelay = \"1s\"\n",
    )
    .unwrap();
    let c = Config::load(
        Some(&path),
        env(&[
            ("PURGE_SERVER__LISTEN", "127.0.0.1:7"),
            ("PURGE_DISPATCH__LINGER", "5ms"),
            ("PURGE_PROVIDERS__0__MAX_PER_CALL", "7"),
            ("OTHER", "x"),
        ]),
    )
    .unwrap();
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:7");
    assert_eq!(c.dispatch.linger, Duration::from_millis(5));
    let ProviderSettings::Sandbox(s) = &c.providers[0].settings else {
        panic!("a sandbox provider")
    };
    assert_eq!((s.max_per_call, s.delay), (7, Duration::from_secs(1)));
}

#[test]
fn unknown_fields_and_bad_groups_are_rejected() {
    let t = |s: &str| -> Result<Config, ConfigError> {
        let c: Config = toml::from_str(s)?;
        c.validate()?;
        Ok(c)
    };
    assert!(t("[server]\nlisen = \"x\"").is_err());
    assert!(t("[[providers]]\nname=\"a\"\ntype=\"sandbox\"\nbogus=1").is_err());
    assert!(t("[[groups]]\nname=\"g\"\nproviders=[\"nope\"]").is_err());
    assert!(t("[store]\nbackend=\"redis\"").is_err());
    let two = |b: &str| {
        format!(
            "[[providers]]\nname=\"a\"\ntype=\"sandbox\"\nlimits={{account=\"x\"}}\n[[providers]]\nname=\"b\"\ntype=\"sandbox\"\nlimits={{account=\"x\"{b}}}"
        )
    };
    assert!(t(&two("")).is_ok());
    let err = t(&two(", submit=[{count=1, per=\"1s\"}]")).unwrap_err();
    assert!(
        err.to_string().contains("providers.b.limits.account"),
        "{err}"
    );
    assert!(
        t("[[providers]]\nname=\"a\"\ntype=\"sandbox\"\nlimits={max_per_call={URL=0}}").is_err()
    );
    assert!(t("[server]\nrecord_retention=\"1h\"\nidempotency_retention=\"2h\"").is_err());
    assert!(t("[store]\ntimeout=\"0s\"").is_err());
    assert!(t("[telemetry]\notlp_endpoint=\"http://otel:4317\"").is_ok());
    assert!(t("[telemetry]\notlp_endpoint=\"https://otel:4317\"").is_ok());
    let err = t("[telemetry]\notlp_endpoint=\"grpc://otel:4317\"").unwrap_err();
    assert!(err.to_string().contains("telemetry.otlp_endpoint"), "{err}");
}

#[test]
fn redis_passwords_are_masked_in_check_config_and_debug() {
    let c = Config::load(
        None,
        env(&[
            ("PURGE_STORE__BACKEND", "redis"),
            ("PURGE_STORE__URL", "redis://app:hunter2@redis:6379/0"),
            (
                "PURGE_STORE__CLUSTER_URLS",
                "[\"redis://:hunter3@n1:7000\"]",
            ),
        ]),
    )
    .unwrap();
    let shown = c.to_toml();
    let debug = format!("{c:?}");
    for text in [&shown, &debug] {
        assert!(
            !text.contains("hunter2") && !text.contains("hunter3"),
            "{text}"
        );
        assert!(text.contains("redis://app:***@redis:6379/0"), "{text}");
    }
    assert_eq!(
        c.store.url.as_deref(),
        Some("redis://app:hunter2@redis:6379/0")
    );
    assert_eq!(mask_url("not a url with pass"), "***");
    let unix = mask_url("redis+unix:///run/redis.sock?db=1&pass=hunter4");
    assert!(!unix.contains("hunter4") && unix.contains("db=1"), "{unix}");
}

#[test]
fn the_replica_is_named_by_hostname_unless_configured() {
    let c = Config::load(None, env(&[("HOSTNAME", "pod-7")])).unwrap();
    assert_eq!(c.server.replica_name.as_deref(), Some("pod-7"));
    assert_eq!(c.server.watch_resync, Duration::from_secs(2));
    let c = Config::load(
        None,
        env(&[
            ("HOSTNAME", "pod-7"),
            ("PURGE_SERVER__REPLICA_NAME", "blue"),
            ("PURGE_SERVER__WATCH_RESYNC", "500ms"),
        ]),
    )
    .unwrap();
    assert_eq!(c.server.replica_name.as_deref(), Some("blue"));
    assert_eq!(c.server.watch_resync, Duration::from_millis(500));
    assert_eq!(
        Config::load(None, Vec::new()).unwrap().server.replica_name,
        None
    );
}

#[test]
fn kubernetes_service_variables_are_not_config() {
    let c = Config::load(
        None,
        env(&[
            ("PURGE_SERVICE_HOST", "10.0.0.7"),
            ("PURGE_SERVICE_PORT_GRPC", "50051"),
            ("PURGE_PORT", "tcp://10.0.0.7:50051"),
            ("PURGE_SERVER__MAX_TARGETS", "10"),
            ("PURGE_CONFIG", "/etc/purge.toml"),
            (
                "PURGE_GROUPS",
                "[{ name = \"all\", providers = [\"sandbox\"] }]",
            ),
        ]),
    )
    .unwrap();
    assert_eq!(c.server.max_targets, 10);
    assert_eq!(c.groups[0].name, "all");
    let err = Config::load(None, env(&[("PURGE_SERVR__LISTEN", "0.0.0.0:1")])).unwrap_err();
    assert!(err.to_string().contains("PURGE_SERVR__LISTEN"), "{err}");
}

#[test]
fn numeric_account_ids_and_masked_type_errors() {
    let c = Config::load(
        None,
        env(&[
            ("PURGE_PROVIDERS__0__NAME", "sandbox"),
            ("PURGE_PROVIDERS__0__TYPE", "sandbox"),
            ("PURGE_PROVIDERS__0__LIMITS__ACCOUNT", "1300012345"),
        ]),
    )
    .unwrap();
    assert_eq!(c.providers[0].limits.account.as_deref(), Some("1300012345"));
    let err = Config::load(
        None,
        env(&[("PURGE_STORE__CLUSTER_URLS", "redis://:hunter5@n1:7000")]),
    )
    .unwrap_err();
    assert!(!err.to_string().contains("hunter5"), "{err}");
}

#[test]
fn the_admin_listener_is_off_unless_set_and_needs_its_own_port() {
    assert_eq!(Config::default().admin.listen, None);
    let c = Config::load(None, env(&[("PURGE_ADMIN__LISTEN", "127.0.0.1:9464")])).unwrap();
    assert_eq!(c.admin.listen, Some("127.0.0.1:9464".parse().unwrap()));
    let err = Config::load(None, env(&[("PURGE_ADMIN__LISTEN", "127.0.0.1:50051")]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("admin.listen") && err.contains("127.0.0.1:50051"),
        "{err}"
    );
    let err = Config::load(None, env(&[("PURGE_ADMIN__LISTEN", "nowhere")]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("admin.listen") || err.contains("listen"),
        "{err}"
    );
}
