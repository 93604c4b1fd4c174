//! The real binary: SIGTERM during an open WatchPurge ends the stream with UNAVAILABLE and the
//! process exits 0.

use std::time::Duration;

use purge_service::pb::{self, PurgeKind};
use tokio_stream::StreamExt;
use tonic::Code;

use crate::support::{Binary, request};

#[tokio::test]
async fn sigterm_ends_watches_with_unavailable_and_exits_zero() {
    let mut service = Binary::start(
        "drain_timeout = \"5s\"",
        "[[providers]]\nname = \"slow\"\ntype = \"sandbox\"\ndelay = \"1h\"\n",
    );
    let mut client = service.client().await;
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

    service.terminate();

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
    let exit = service.exit(Duration::from_secs(15)).await;
    assert!(exit.success(), "exit status {exit:?}");
}
