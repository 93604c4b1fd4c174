//! CreatePurge throughput and latency beside a no-op RPC (health Check) on the same server, at
//! several concurrency levels, on the memory or Redis backend. Prints a Markdown table.
//!
//! `cargo run --release --bin purge-bench -- --backend memory [--metrics]`

use std::time::{Duration, Instant};

use clap::Parser;
use purge_service::App;
use purge_service::config::{Backend, Config};
use purge_service::pb::purge_service_client::PurgeServiceClient;
use purge_service::pb::{CreatePurgeRequest, PurgeKind};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

#[derive(Parser)]
struct Args {
    /// memory or redis.
    #[arg(long, default_value = "memory")]
    backend: String,
    /// Redis to use with `--backend redis`.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Concurrent callers, comma separated.
    #[arg(long, default_value = "1,8,32,128", value_delimiter = ',')]
    concurrency: Vec<usize>,
    /// gRPC connections the callers share.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Metrics on: the admin listener with its Prometheus reader (scraped once at the end).
    #[arg(long)]
    metrics: bool,
}

#[derive(Clone, Copy)]
enum Rpc {
    Noop,
    Create,
}

struct Outcome {
    calls: usize,
    errors: usize,
    rps: f64,
    p50: Duration,
    p99: Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut config: Config = toml::from_str(
        "[server]\nmax_concurrent_requests = 4096\n[[providers]]\nname = \"sandbox\"\ntype = \"sandbox\"\ndelay = \"10ms\"\nmax_per_call = 100\n",
    )?;
    if args.backend == "redis" {
        config.store.backend = Backend::Redis;
        config.store.url = Some(args.redis_url.clone());
        config.store.key_prefix = format!("bench-{}", uuid::Uuid::now_v7().simple());
    }
    if args.metrics {
        config.admin.listen = Some("127.0.0.1:0".parse()?);
    }
    config.validate()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = App::build(config).await?;
    let admin = app.admin_addr();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run(listener, async {
        let _ = stop_rx.await;
    }));
    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        channels.push(
            Channel::from_shared(format!("http://{addr}"))?
                .connect()
                .await?,
        );
    }
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "backend: {}, metrics {}, {cpus} CPUs, {} connections, {:.1} s per row\n",
        args.backend,
        if args.metrics { "on" } else { "off" },
        channels.len(),
        args.seconds
    );
    println!("| rpc | concurrency | calls/s | p50 | p99 | errors | of no-op |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let window = Duration::from_secs_f64(args.seconds);
    for &c in &args.concurrency {
        let noop = measure(Rpc::Noop, c, window, &channels).await;
        let create = measure(Rpc::Create, c, window, &channels).await;
        for (name, o) in [("Health/Check (no-op)", &noop), ("CreatePurge", &create)] {
            println!(
                "| {name} | {c} | {:.0} | {:.2} ms | {:.2} ms | {} | {:.0}% |",
                o.rps,
                o.p50.as_secs_f64() * 1e3,
                o.p99.as_secs_f64() * 1e3,
                o.errors,
                100.0 * o.rps / noop.rps.max(1.0),
            );
        }
    }
    println!(
        "\nserver process peak RSS: {} (calls made: creates drive real batching on the sandbox)",
        peak_rss()
    );
    if let Some(admin) = admin {
        let text = reqwest::get(format!("http://{admin}/metrics"))
            .await?
            .text()
            .await?;
        let series = text.lines().filter(|l| !l.starts_with('#')).count();
        println!("scrape: {} bytes, {series} series", text.len());
    }
    let _ = stop_tx.send(());
    let _ = server.await;
    Ok(())
}

async fn measure(rpc: Rpc, concurrency: usize, window: Duration, channels: &[Channel]) -> Outcome {
    let start = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|w| {
            let channel = channels[w % channels.len()].clone();
            tokio::spawn(async move {
                let mut purge = PurgeServiceClient::new(channel.clone());
                let mut health = HealthClient::new(channel);
                let mut latencies = Vec::new();
                let mut errors = 0;
                let mut i = 0u64;
                while start.elapsed() < window {
                    let t = Instant::now();
                    let ok = match rpc {
                        Rpc::Noop => health
                            .check(HealthCheckRequest {
                                service: String::new(),
                            })
                            .await
                            .is_ok(),
                        Rpc::Create => purge
                            .create_purge(CreatePurgeRequest {
                                provider: "sandbox".into(),
                                kind: PurgeKind::Url as i32,
                                targets: vec![format!("https://bench.example.com/{w}/{i}")],
                                ..Default::default()
                            })
                            .await
                            .is_ok(),
                    };
                    latencies.push(t.elapsed());
                    errors += usize::from(!ok);
                    i += 1;
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for w in workers {
        let (l, e) = w.await.expect("worker");
        all.extend(l);
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort();
    let pick = |q: f64| {
        all.get(((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Outcome {
        calls: all.len(),
        errors,
        rps: all.len() as f64 / elapsed,
        p50: pick(0.50),
        p99: pick(0.99),
    }
    .checked()
}

impl Outcome {
    fn checked(self) -> Outcome {
        assert!(self.calls > 0, "no call completed");
        self
    }
}

fn peak_rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l[6..].trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}
