//! The Helm chart (helm/purge-service): `helm lint --strict`, every CI scenario rendered and
//! validated against the Kubernetes 1.30 and 1.35 schemas, the values that must fail, and the
//! chart and the binary agreeing (the real binary run with what the chart renders).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use purge_service::pb::{PurgeKind, PurgeState};
use serde_json::Value;

use crate::deploy_tools::{Process, find, output, repo, run_ok, wait_serving, write, yaml_docs};
use crate::redis_server::RedisServer;
use crate::support::{connect, free_port, request, wait_terminal};

const KUBERNETES: [&str; 2] = ["1.30.0", "1.35.0"];

fn chart() -> PathBuf {
    repo().join("helm/purge-service")
}

/// The `ci/*-values.yaml` scenarios.
fn scenarios() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(chart().join("ci"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with("-values.yaml"))
        .collect();
    files.sort();
    files
}

/// `helm template` of `chart` with `args`; stdout.
fn template(chart: &Path, args: &[&str]) -> String {
    run_ok(
        Command::new("helm")
            .args(["template", "purge", "--namespace", "cdn"])
            .arg(chart)
            .args(args),
    )
}

/// Prometheus Operator objects: kubernetes-validate knows only the built-in kinds, so these are
/// left out of it and checked field by field in `custom_resources_are_well_formed`.
const CRD_KINDS: [&str; 2] = ["ServiceMonitor", "PrometheusRule"];

/// The documents of `manifests` that are not of a CRD_KINDS kind.
fn without_crds(manifests: &str) -> String {
    manifests
        .split("\n---")
        .filter(|doc| {
            !CRD_KINDS
                .iter()
                .any(|k| doc.lines().any(|l| l == format!("kind: {k}")))
        })
        .collect::<Vec<_>>()
        .join("\n---")
}

/// kubernetes-validate --strict of `manifests` for every version in KUBERNETES.
fn validate(what: &str, manifests: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("manifests.yaml");
    std::fs::write(&file, manifests).unwrap();
    for version in KUBERNETES {
        let out = output(
            Command::new("kubernetes-validate")
                .args(["--strict", "--quiet", "-k", version])
                .arg(&file),
        );
        assert!(
            out.status.success(),
            "{what} is not valid for Kubernetes {version}:\n{}{}\n{manifests}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn chart_lints_strict_with_every_scenario() {
    run_ok(Command::new("helm").args(["lint", "--strict"]).arg(chart()));
    for values in scenarios() {
        run_ok(
            Command::new("helm")
                .args(["lint", "--strict"])
                .arg(chart())
                .arg("-f")
                .arg(&values),
        );
    }
}

#[test]
fn every_scenario_renders_manifests_valid_for_kubernetes_1_30_and_1_35() {
    let scenarios = scenarios();
    assert!(scenarios.len() >= 4, "{scenarios:?}");
    for values in &scenarios {
        let rendered = template(&chart(), &["-f", values.to_str().unwrap()]);
        validate(&values.display().to_string(), &without_crds(&rendered));
        let docs = yaml_docs(&rendered);
        let deployment = find(&docs, "Deployment", None);
        let name = values.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("sidecar") {
            assert!(deployment.is_none(), "sidecar mode owns no Deployment");
            assert!(find(&docs, "ConfigMap", None).is_some());
            continue;
        }
        let deployment = deployment.expect("a Deployment");
        let spec = &deployment["spec"];
        assert_eq!(spec["strategy"]["rollingUpdate"]["maxUnavailable"], 0);
        let pod = &spec["template"]["spec"];
        assert_eq!(pod["automountServiceAccountToken"], false);
        assert!(pod["topologySpreadConstraints"].is_array());
        let c = &pod["containers"][0];
        if name.starts_with("deployment-tls") {
            // kubelet's gRPC probe cannot speak TLS: the image's health check over TLS can.
            let probe = c["readinessProbe"]["exec"]["command"].to_string();
            assert!(probe.contains("--tls-ca"), "{probe}");
            let toml = find(&docs, "ConfigMap", None).expect("config")["data"]["purge.toml"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            assert!(toml.contains("[server.tls]"), "{toml}");
            assert!(toml.contains("client_ca_file"), "{toml}");
        } else {
            assert_eq!(c["readinessProbe"]["grpc"]["port"], 50051);
        }
        assert_eq!(c["livenessProbe"]["tcpSocket"]["port"], 50051);
        assert!(c["startupProbe"].is_object());
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
        assert!(c["resources"]["requests"].is_object());
        let port = &find(&docs, "Service", None).expect("a Service")["spec"]["ports"][0];
        assert_eq!(port["name"], "grpc");
        assert_eq!(port["appProtocol"], "grpc");
        let sa = find(&docs, "ServiceAccount", None).expect("a ServiceAccount");
        assert_eq!(sa["automountServiceAccountToken"], false);
        let test_pod = find(&docs, "Pod", None).expect("the helm test pod");
        assert_eq!(test_pod["metadata"]["annotations"]["helm.sh/hook"], "test");
        assert_eq!(test_pod["spec"]["containers"][0]["args"][0], "health");
        if name.starts_with("deployment-hpa") {
            assert!(spec.get("replicas").is_none(), "the HPA owns replicas");
            assert!(find(&docs, "HorizontalPodAutoscaler", None).is_some());
            assert!(find(&docs, "PodDisruptionBudget", None).is_some());
            assert!(find(&docs, "NetworkPolicy", None).is_some());
        }
        let metrics_port = c["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "metrics")
            .expect("a metrics container port");
        assert_eq!(metrics_port["containerPort"], 9464);
        assert!(
            c["env"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["name"] == "PURGE_ADMIN__LISTEN" && e["value"] == "0.0.0.0:9464")
        );
        let service_ports = &find(&docs, "Service", None).unwrap()["spec"]["ports"];
        assert_eq!(service_ports[1]["name"], "metrics");
        if name.starts_with("deployment-metrics") {
            custom_resources_are_well_formed(&docs);
        }
        if name.starts_with("deployment-redis") {
            assert_eq!(spec["replicas"], 3);
            assert_eq!(pod["terminationGracePeriodSeconds"], 20, "2 x 5 s + 10 s");
        }
    }
}

/// The ServiceMonitor scrapes the `metrics` port of the Service's pods; the PrometheusRule has
/// the five alerts, each with an expression; the dashboard ConfigMap carries the Grafana label
/// and parses as JSON.
fn custom_resources_are_well_formed(docs: &[Value]) {
    let sm = find(docs, "ServiceMonitor", None).expect("a ServiceMonitor");
    assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics");
    let service = find(docs, "Service", None).unwrap();
    assert_eq!(
        sm["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
        service["spec"]["selector"]["app.kubernetes.io/name"]
    );
    let rule = find(docs, "PrometheusRule", None).expect("a PrometheusRule");
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    let rules = rule["spec"]["groups"][0]["rules"]
        .as_array()
        .expect("rules");
    let alerts: Vec<&str> = rules.iter().filter_map(|r| r["alert"].as_str()).collect();
    assert_eq!(
        alerts,
        [
            "PurgeOldestWorkTooOld",
            "PurgeProviderFatalErrors",
            "PurgeDailyQuotaNearlyGone",
            "PurgeStateBackendUnavailable",
            "PurgeNoProgress"
        ]
    );
    for r in rules {
        let expr = r["expr"].as_str().expect("an expr");
        assert!(!expr.contains("{{"), "unrendered template in {expr}");
    }
    let dashboard = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["labels"]["grafana_dashboard"] == "1")
        .expect("the dashboard ConfigMap");
    let json: Value =
        serde_json::from_str(dashboard["data"]["purge-service.json"].as_str().unwrap())
            .expect("dashboard JSON");
    assert_eq!(json["uid"], "purge-service");
}

/// The named sidecar templates, as an application chart uses them (helm/examples/sidecar-app,
/// purge-service as its unpacked dependency), native and classic.
#[test]
fn sidecar_templates_render_valid_pods_listening_on_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("sidecar-app");
    run_ok(
        Command::new("cp")
            .arg("-r")
            .arg(repo().join("helm/examples/sidecar-app"))
            .arg(&app),
    );
    std::fs::create_dir_all(app.join("charts")).unwrap();
    run_ok(
        Command::new("cp")
            .arg("-r")
            .arg(chart())
            .arg(app.join("charts")),
    );
    // The sidecar scenario's values, as the application chart's `purge-service:` values.
    let scenario = std::fs::read_to_string(chart().join("ci/sidecar-values.yaml")).unwrap();
    let nested: String = std::iter::once("purge-service:\n".to_string())
        .chain(scenario.lines().map(|l| format!("  {l}\n")))
        .collect();
    let values = dir.path().join("values.yaml");
    std::fs::write(&values, nested).unwrap();
    for native in [true, false] {
        let rendered = template(
            &app,
            &[
                "-f",
                values.to_str().unwrap(),
                "--set",
                &format!("nativeSidecar={native}"),
            ],
        );
        validate(&format!("the sidecar app (native: {native})"), &rendered);
        let docs = yaml_docs(&rendered);
        let pod = &find(&docs, "Deployment", Some("purge-app")).expect("the app")["spec"]["template"]
            ["spec"];
        let list = if native {
            "initContainers"
        } else {
            "containers"
        };
        let sidecar = pod[list]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "purge-service")
            .unwrap_or_else(|| panic!("no purge-service in {list}"));
        if native {
            assert_eq!(sidecar["restartPolicy"], "Always");
        }
        let env = &sidecar["env"];
        assert_eq!(env[0]["name"], "PURGE_SERVER__LISTEN");
        assert_eq!(env[0]["value"], "127.0.0.1:50051");
        assert_eq!(
            sidecar["readinessProbe"]["exec"]["command"][1], "health",
            "kubelet cannot reach a loopback listener: the probe runs in the container"
        );
        assert_eq!(pod["terminationGracePeriodSeconds"], 20);
        assert!(
            pod["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v["configMap"]["name"] == "purge-purge-service-config")
        );
    }
}

#[test]
fn values_that_must_fail_fail_with_their_message() {
    let mut cases = 0;
    for entry in std::fs::read_dir(chart().join("ci/must-fail")).unwrap() {
        let values = entry.unwrap().path();
        let text = std::fs::read_to_string(&values).unwrap();
        let expect = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} lacks its `# expect: ` line", values.display()));
        let out = output(
            Command::new("helm")
                .args(["template", "purge"])
                .arg(chart())
                .arg("-f")
                .arg(&values),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{} rendered instead of failing",
            values.display()
        );
        assert!(
            stderr.contains(expect),
            "{}: expected {expect:?} in:\n{stderr}",
            values.display()
        );
        cases += 1;
    }
    assert!(cases >= 3);
}

/// What a pod of the rendered Deployment would run: args, env (Secrets and `$(VAR)` resolved the
/// way the kubelet does) and purge.toml, with every volume's mount path moved under `root`.
struct RenderedPod {
    args: Vec<String>,
    env: Vec<(String, String)>,
}

/// The Secrets the scenario names, with test values; a Secret or key the test does not know
/// fails the test, as a pod would fail to start.
fn secrets() -> HashMap<(&'static str, &'static str), &'static str> {
    HashMap::from([
        (("purge-redis", "password"), "s3cret-pw"),
        (("edgeone", "secret-id"), "AKIDtest"),
        (("edgeone", "secret-key"), "test-secret-key"),
    ])
}

fn materialize(docs: &[Value], root: &Path) -> RenderedPod {
    let deployment = find(docs, "Deployment", None).expect("a Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let secrets = secrets();
    // Mount paths -> host directories, holding what the volume holds.
    let mut mounts: Vec<(String, PathBuf)> = Vec::new();
    for mount in container["volumeMounts"].as_array().unwrap() {
        let name = mount["name"].as_str().unwrap();
        let path = mount["mountPath"].as_str().unwrap();
        let host = root.join(path.trim_start_matches('/'));
        let volume = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("volume {name} is mounted but not declared"));
        if let Some(cm) = volume["configMap"]["name"].as_str() {
            let config_map = find(docs, "ConfigMap", Some(cm)).expect("the mounted ConfigMap");
            for (key, text) in config_map["data"].as_object().unwrap() {
                write(&host.join(key), text.as_str().unwrap());
            }
        } else if let Some(secret) = volume["secret"]["secretName"].as_str() {
            for ((s, key), value) in &secrets {
                if *s == secret {
                    write(&host.join(key), value);
                }
            }
        } else {
            panic!("unexpected volume {volume}");
        }
        mounts.push((path.to_string(), host));
    }
    let relocate = |text: &str| {
        mounts.iter().fold(text.to_string(), |t, (path, host)| {
            t.replace(path.as_str(), host.to_str().unwrap())
        })
    };
    // Files naming other files (purge.toml's *_file) see the volumes where this test put them.
    for (_, host) in &mounts {
        for entry in std::fs::read_dir(host).unwrap() {
            let file = entry.unwrap().path();
            let text = std::fs::read_to_string(&file).unwrap();
            std::fs::write(&file, relocate(&text)).unwrap();
        }
    }
    let mut env: Vec<(String, String)> = Vec::new();
    for var in container["env"].as_array().unwrap() {
        let name = var["name"].as_str().unwrap().to_string();
        let value = if let Some(v) = var["value"].as_str() {
            // $(VAR) of a variable defined earlier, as the kubelet expands it.
            env.iter().fold(v.to_string(), |t, (n, val)| {
                t.replace(&format!("$({n})"), val)
            })
        } else {
            let r = &var["valueFrom"]["secretKeyRef"];
            let key = (r["name"].as_str().unwrap(), r["key"].as_str().unwrap());
            secrets
                .iter()
                .find(|(k, _)| **k == key)
                .unwrap_or_else(|| panic!("the chart reads Secret key {key:?} the test lacks"))
                .1
                .to_string()
        };
        env.push((name, value));
    }
    let args = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| relocate(a.as_str().unwrap()))
        .collect();
    RenderedPod { args, env }
}

fn binary(pod: &RenderedPod, args: &[String]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_purge-service"));
    cmd.env_clear().envs(pod.env.iter().cloned()).args(args);
    cmd
}

#[tokio::test]
async fn the_binary_runs_with_what_the_chart_renders() {
    let redis = RedisServer::start();
    let password = secrets()[&("purge-redis", "password")];
    let _: () = redis.query(
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("requirepass")
            .arg(password),
    );
    let port = free_port();
    let admin_port = free_port();
    let rendered = template(
        &chart(),
        &[
            "-f",
            chart()
                .join("ci/deployment-redis-values.yaml")
                .to_str()
                .unwrap(),
            // Where this test's Redis and free port are; everything else as the scenario says.
            "--set",
            &format!("redis.url=redis://127.0.0.1:{}/0", redis.port),
            "--set",
            &format!("port={port}"),
            "--set",
            &format!("metrics.port={admin_port}"),
        ],
    );
    let docs = yaml_docs(&rendered);
    let root = tempfile::tempdir().unwrap();
    let pod = materialize(&docs, root.path());
    assert_eq!(pod.args.last().map(String::as_str), Some("serve"));

    // check-config: the rendered purge.toml, env and secrets are what the binary accepts.
    let mut check_args = pod.args.clone();
    *check_args.last_mut().unwrap() = "check-config".into();
    let effective = run_ok(&mut binary(&pod, &check_args));
    for expected in [
        "key_prefix = \"purge-prod\"",
        "drain_timeout = \"5s\"",
        "max_concurrent_requests = 512",
        &format!("listen = \"0.0.0.0:{port}\""),
    ] {
        assert!(
            effective.contains(expected),
            "{expected} not in:\n{effective}"
        );
    }
    assert!(!effective.contains(password), "a secret was printed");

    // serve, against the real Redis, driven through gRPC.
    let mut service = Process::spawn(&mut binary(&pod, &pod.args));
    let addr = format!("127.0.0.1:{port}");
    wait_serving(&addr, &mut service).await;
    let mut client = connect(addr.parse().unwrap()).await;
    for provider in ["sandbox", "everywhere"] {
        let purge = client
            .create_purge(request(
                provider,
                PurgeKind::Url,
                &["https://www.example.com/app.js"],
            ))
            .await
            .unwrap()
            .into_inner();
        let done = wait_terminal(&client, &purge.id, Duration::from_secs(20)).await;
        assert_eq!(done.state(), PurgeState::Succeeded, "{done:?}");
    }
    let url = format!("redis://:{password}@127.0.0.1:{}/0", redis.port);
    let mut conn = redis::Client::open(url).unwrap().get_connection().unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("{purge-prod:*")
        .query(&mut conn)
        .unwrap();
    assert!(
        !keys.is_empty(),
        "the purges are in Redis under the chart's key_prefix"
    );

    // The admin port the chart names `metrics` serves readiness and the scrape.
    let admin = format!("http://127.0.0.1:{admin_port}");
    let ready = reqwest::get(format!("{admin}/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);
    let scrape = reqwest::get(format!("{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        scrape.contains("purge_created_total"),
        "no purge_created_total in:\n{scrape}"
    );

    service.terminate();
    let status = service.exit(Duration::from_secs(30)).await;
    assert!(
        status.success(),
        "exit status {status:?}\n{}",
        service.log()
    );
}
