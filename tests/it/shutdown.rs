//! The real binary: SIGTERM during an open WatchPurge ends the stream with UNAVAILABLE and the
//! process exits 0.

use std::process::{Command, Stdio};
use std::time::Duration;

use purge_service::pb::{self, PurgeKind};
use tokio_stream::StreamExt;
use tonic::Code;

use crate::support::{connect, eventually, free_port, request};

#[tokio::test]
async fn sigterm_ends_watches_with_unavailable_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("purge.toml");
    let port = free_port();
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\ndrain_timeout = \"5s\"\n[[providers]]\nname = \"slow\"\ntype = \"sandbox\"\ndelay = \"1h\"\n"
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_purge-service"))
        .arg("--config")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut client = connect(([127, 0, 0, 1], port).into()).await;
    let purge = client
        .create_purge(request("slow", PurgeKind::Url, &["https://example.com/a"]))
        .await
        .unwrap()
        .into_inner();
    let mut stream = client
        .watch_purge(pb::WatchPurgeRequest { id: purge.id })
        .await
        .unwrap()
        .into_inner();
    assert!(
        stream.next().await.unwrap().is_ok(),
        "the snapshot comes first"
    );

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    let end = loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("the stream ends")
        {
            Some(Ok(_)) => continue,
            Some(Err(status)) => break status,
            None => panic!("the stream ended with OK instead of UNAVAILABLE"),
        }
    };
    assert_eq!(end.code(), Code::Unavailable, "{end:?}");
    let exit = eventually(Duration::from_secs(15), "the process exits", || {
        let polled = child.try_wait().unwrap();
        async move { polled }
    })
    .await;
    assert!(exit.success(), "exit status {exit:?}");
}
