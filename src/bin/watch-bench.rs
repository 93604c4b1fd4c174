//! Server memory per open WatchPurge stream: creates `--streams` purges (on a provider that
//! keeps them running), reads the server's RSS, opens one watch per purge over
//! `--connections` HTTP/2 connections, reads the RSS again and prints the difference per
//! stream. Run it against purge-service and against `bare-grpc` for the baseline.
//!
//! `watch-bench --addr http://127.0.0.1:50051 --pid $(pidof purge-service) --streams 10000`

use std::time::Duration;

use clap::Parser;
use purge_service::pb::purge_service_client::PurgeServiceClient;
use purge_service::pb::{CreatePurgeRequest, PurgeKind, WatchPurgeRequest};
use tonic::transport::Channel;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// The server's process id, whose RSS is read from /proc.
    #[arg(long)]
    pid: u32,
    #[arg(long, default_value_t = 10_000)]
    streams: usize,
    /// HTTP/2 connections the streams share (servers allow about 200 streams each).
    #[arg(long, default_value_t = 100)]
    connections: usize,
    /// The provider to create purges on.
    #[arg(long, default_value = "sandbox")]
    provider: String,
}

/// Resident set size of `pid` in KiB.
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or_else(|| anyhow::anyhow!("no VmRSS for {pid}"))?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .unwrap_or("0")
        .parse()
        .unwrap_or(0))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut clients = Vec::new();
    for _ in 0..args.connections {
        let channel = Channel::from_shared(args.addr.clone())?.connect().await?;
        clients.push(PurgeServiceClient::new(channel));
    }
    let mut ids = Vec::with_capacity(args.streams);
    for i in 0..args.streams {
        let mut c = clients[i % clients.len()].clone();
        let purge = c
            .create_purge(CreatePurgeRequest {
                provider: args.provider.clone(),
                kind: PurgeKind::Url as i32,
                targets: vec![format!("https://bench.example.com/w/{i}")],
                ..Default::default()
            })
            .await?
            .into_inner();
        ids.push(purge.id);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = rss_kib(args.pid)?;
    let mut streams = Vec::with_capacity(ids.len());
    for (i, id) in ids.iter().enumerate() {
        let mut c = clients[i % clients.len()].clone();
        let mut stream = c
            .watch_purge(WatchPurgeRequest { id: id.clone() })
            .await?
            .into_inner();
        stream
            .message()
            .await?
            .ok_or_else(|| anyhow::anyhow!("watch {id} ended at once"))?;
        streams.push(stream);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = rss_kib(args.pid)?;
    let per_stream = (after.saturating_sub(before)) as f64 * 1024.0 / streams.len() as f64;
    println!(
        "streams={} rss_before_kib={before} rss_after_kib={after} per_stream_bytes={per_stream:.0}",
        streams.len()
    );
    Ok(())
}
