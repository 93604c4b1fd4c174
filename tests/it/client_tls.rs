//! The client over TLS and mutual TLS (`--ca-cert`, `--cert`, `--key`, `--tls-server-name`)
//! against the TLS-serving app, and the flag combinations it refuses by name (exit 2).

use std::time::Duration;

use crate::client_cli::{json, run};
use crate::pki::{Ca, write};
use crate::support::config;
use crate::tls::serve;

const DEPLOYER: &str = "deployer.example.com";

#[tokio::test]
async fn the_client_speaks_mutual_tls_and_refuses_flags_that_do_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let server = ca.server(1);
    let (cert, key) = (
        write(dir.path(), "tls.crt", &server.cert),
        write(dir.path(), "tls.key", &server.key),
    );
    let ca_file = write(dir.path(), "ca.crt", &ca.pem);
    let app = serve(config(&format!(
        "[server.tls]\ncert_file = {cert:?}\nkey_file = {key:?}\nclient_ca_file = {ca_file:?}\n\
         [[providers]]\nname = \"sandbox\"\ntype = \"sandbox\"\ndelay = \"10ms\"\n\
         [[callers]]\nname = \"deployer\"\ncert_sans = [\"{DEPLOYER}\"]\n"
    )))
    .await;
    let client = ca.client(DEPLOYER);
    let client_cert = write(dir.path(), "client.crt", &client.cert);
    let client_key = write(dir.path(), "client.key", &client.key);
    let other = Ca::new("other CA");
    let other_ca = write(dir.path(), "other.crt", &other.pem);
    let (ca_s, cert_s, key_s, other_s) = (
        ca_file.to_str().unwrap(),
        client_cert.to_str().unwrap(),
        client_key.to_str().unwrap(),
        other_ca.to_str().unwrap(),
    );
    let host_port = app.addr.to_string();
    let https = format!("https://localhost:{}", app.addr.port());
    let mtls = ["--ca-cert", ca_s, "--cert", cert_s, "--key", key_s];

    // host:port with --ca-cert is TLS; the certificate names 127.0.0.1 and localhost, and
    // --tls-server-name (alias --domain) picks the name to check.
    let out = run(&[
        &["--addr", &host_port, "--output", "json"][..],
        &mtls,
        &["--tls-server-name", "localhost"],
        &[
            "create",
            "--wait",
            "--provider",
            "sandbox",
            "https://t.example/a",
        ],
    ]
    .concat())
    .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created = json(&out);
    assert_eq!(created["state"], "SUCCEEDED");
    let id = created["id"].as_str().unwrap().to_owned();
    // https:// with the CA; --domain as the alias.
    let out = run(&[
        &["--addr", &https][..],
        &mtls,
        &["--domain", "localhost", "get", &id],
    ]
    .concat())
    .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("SUCCEEDED"));

    // Refused by the server or by the client's own check: exit 1 (no answer), saying why
    // when the client refused, and the key is never printed.
    for (what, args, says) in [
        ("plaintext to a TLS port", vec!["--addr", &host_port], ""),
        (
            "no client certificate",
            vec!["--addr", &host_port, "--ca-cert", ca_s],
            "",
        ),
        (
            "a CA that did not sign the server's certificate",
            vec![
                "--addr",
                &host_port,
                "--ca-cert",
                other_s,
                "--cert",
                cert_s,
                "--key",
                key_s,
            ],
            "invalid peer certificate: UnknownIssuer",
        ),
        (
            "a server name the certificate does not carry",
            [
                &["--addr", &host_port][..],
                &mtls,
                &["--tls-server-name", "elsewhere.example"],
            ]
            .concat(),
            "not valid for name \"elsewhere.example\"",
        ),
    ] {
        let out = tokio::time::timeout(
            Duration::from_secs(30),
            run(&[&args[..], &["get", &id]].concat()),
        )
        .await
        .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
        assert!(!stderr.contains("PRIVATE KEY"), "{what}: {stderr}");
        assert!(stderr.contains(says), "{what}: {stderr}");
    }

    // Flags that do not fit: exit 2, naming the flag (and the file) at fault, before any call.
    let missing = dir.path().join("missing.crt");
    let missing_s = missing.to_str().unwrap();
    let not_pem = write(dir.path(), "notes.txt", "not a certificate");
    let not_pem_s = not_pem.to_str().unwrap();
    for (args, says) in [
        (
            vec!["--addr", &host_port, "--ca-cert", ca_s, "--cert", cert_s],
            "--cert",
        ),
        (
            vec!["--addr", &host_port, "--ca-cert", ca_s, "--key", key_s],
            "--key",
        ),
        (
            vec!["--addr", &host_port, "--cert", cert_s, "--key", key_s],
            "--cert needs TLS",
        ),
        (
            vec!["--addr", "http://127.0.0.1:1", "--ca-cert", ca_s],
            "plaintext (http://) but --ca-cert",
        ),
        (
            vec!["--addr", &host_port, "--tls-server-name", "localhost"],
            "--tls-server-name needs TLS",
        ),
        (
            vec!["--addr", &host_port, "--ca-cert", missing_s],
            "cannot read --ca-cert",
        ),
        (
            vec!["--addr", &host_port, "--ca-cert", not_pem_s],
            "holds no PEM certificate",
        ),
        (
            vec!["--addr", &https, "--cert", cert_s, "--key", ca_s],
            "--key",
        ),
        (vec!["--addr", "grpc://127.0.0.1:1"], "http:// or https://"),
    ] {
        let out = run(&[&args[..], &["get", &id]].concat()).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}
