//! Redis over TLS: a real `redis-server --tls-port` that wants a client certificate, its CA
//! and the client's made at test time, and an ACL user whose password comes from a file.

use std::time::Duration;

use purge_service::pb::PurgeKind;

use crate::pki::{Ca, write};
use crate::redis_server::RedisServer;
use crate::support::{config, eventually, free_port, request, spawn_app, wait_terminal};

#[tokio::test]
async fn the_store_speaks_tls_with_a_client_certificate_and_an_acl_user() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("redis CA");
    let server = ca.server(0x5005);
    let client = ca.client("purge-service.example");
    let p = |name: &str, text: &str| write(dir.path(), name, text).to_str().unwrap().to_owned();
    let (server_cert, server_key) = (p("redis.crt", &server.cert), p("redis.key", &server.key));
    let ca_file = p("ca.crt", &ca.pem);
    let tls_port = free_port().to_string();
    let redis = RedisServer::start_with(&[
        "--appendonly",
        "no",
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        &server_cert,
        "--tls-key-file",
        &server_key,
        "--tls-ca-cert-file",
        &ca_file,
        "--tls-auth-clients",
        "yes",
        "--user",
        "purge",
        "on",
        ">s3cret-pw",
        "~*",
        "&*",
        "+@all",
    ]);
    let (cert, key) = (p("client.crt", &client.cert), p("client.key", &client.key));
    let password = p("password", "s3cret-pw\n");
    let app = spawn_app(config(&format!(
        "[store]\nbackend = \"redis\"\nurl = \"rediss://localhost:{tls_port}\"\n\
         username = \"purge\"\npassword_file = {password:?}\n\
         tls_ca_file = {ca_file:?}\ntls_cert_file = {cert:?}\ntls_key_file = {key:?}\n\
         [[providers]]\nname = \"sandbox\"\ntype = \"sandbox\"\ndelay = \"10ms\"\n"
    )))
    .await;
    let created = eventually(
        Duration::from_secs(10),
        "CreatePurge over Redis TLS",
        || {
            let mut c = app.client.clone();
            async move {
                c.create_purge(request(
                    "sandbox",
                    PurgeKind::Url,
                    &["https://example.com/x"],
                ))
                .await
                .ok()
            }
        },
    )
    .await
    .into_inner();
    let done = wait_terminal(&app.client, &created.id, Duration::from_secs(10)).await;
    assert_eq!(done.state(), purge_service::pb::PurgeState::Succeeded);
    // The service's connections are the ACL user's, on the TLS port.
    let clients: String = redis.query(redis::cmd("CLIENT").arg("LIST"));
    let tls_port_field = format!("laddr=127.0.0.1:{tls_port}");
    assert!(
        clients
            .lines()
            .any(|l| l.contains("user=purge") && l.contains(&tls_port_field)),
        "{clients}"
    );
    let keys: Vec<String> = redis.query(redis::cmd("KEYS").arg("*"));
    assert!(!keys.is_empty(), "the purge was stored in Redis");
}
