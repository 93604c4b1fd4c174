//! Soak and footprint benchmarks against a purge-service running in ANOTHER process.
//!
//! `purge-soak load`: CreatePurge (two URLs each) at a steady rate, sampling the server's RSS
//! (`/proc/PID/status`), its record count (the memory store's "memory store size" debug line in
//! the server's log) or Redis's `used_memory` every second, as CSV.
//! `purge-soak footprint`: starts the server, polls health over one connection until SERVING,
//! then reads its idle RSS. `purge-soak redis-usage`: `MEMORY USAGE` of stored records, beside
//! the same records in the older plain-JSON form. `bench/soak.sh` runs them all.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use purge_service::pb::purge_service_client::PurgeServiceClient;
use purge_service::pb::{CreatePurgeRequest, PurgeKind};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Load(Load),
    Footprint(Footprint),
    RedisUsage(RedisUsage),
}

#[derive(Parser)]
struct Load {
    #[arg(long, default_value = "127.0.0.1:50051")]
    addr: String,
    /// The server's process id, for its RSS.
    #[arg(long)]
    pid: u32,
    #[arg(long, default_value_t = 1_000_000)]
    total: u64,
    /// Creates per second.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Keep sampling this long after the last create (purges finish, memory settles).
    #[arg(long, default_value_t = 10.0)]
    tail_secs: f64,
    /// The server's log, for the memory store's record count.
    #[arg(long)]
    server_log: Option<PathBuf>,
    /// Redis to sample `used_memory` and `DBSIZE` from.
    #[arg(long)]
    redis_url: Option<String>,
    /// Redis's process id, for its RSS.
    #[arg(long)]
    redis_pid: Option<u32>,
    #[arg(long)]
    csv: PathBuf,
}

#[derive(Parser)]
struct Footprint {
    /// The purge-service binary.
    #[arg(long)]
    bin: PathBuf,
    #[arg(long, default_value = "127.0.0.1:50071")]
    addr: String,
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// How long the server idles before its RSS is read.
    #[arg(long, default_value_t = 2.0)]
    idle_secs: f64,
    /// Extra environment for the server, `KEY=VALUE`.
    #[arg(long = "env")]
    envs: Vec<String>,
}

#[derive(Parser)]
struct RedisUsage {
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    #[arg(long, default_value = "purge")]
    key_prefix: String,
    #[arg(long, default_value_t = 200)]
    samples: usize,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new()?;
    match cli.command {
        Command::Load(a) => rt.block_on(load(a)),
        Command::Footprint(a) => rt.block_on(footprint(a)),
        Command::RedisUsage(a) => rt.block_on(redis_usage(a)),
    }
}

/// A field of `/proc/PID/status` in kB (`VmRSS`, `VmHWM`).
fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    line[field.len() + 1..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// The last `records=N` of the memory store's size line in the log, read from `offset` on.
fn records_in_log(path: &PathBuf, offset: &mut u64, last: &mut Option<u64>) {
    let Ok(mut f) = std::fs::File::open(path) else {
        return;
    };
    let mut text = String::new();
    if f.seek(SeekFrom::Start(*offset)).is_err() || f.read_to_string(&mut text).is_err() {
        return;
    }
    // Only whole lines; the rest is read next time.
    let Some(end) = text.rfind('\n') else { return };
    *offset += end as u64 + 1;
    for line in text[..end]
        .lines()
        .filter(|l| l.contains("memory store size"))
    {
        if let Some(n) = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("records="))
            .and_then(|n| n.parse().ok())
        {
            *last = Some(n);
        }
    }
}

async fn redis_info(url: &str) -> anyhow::Result<(u64, u64)> {
    let client = redis::Client::open(url)?;
    let mut c = client.get_multiplexed_async_connection().await?;
    let info: String = redis::cmd("INFO").arg("memory").query_async(&mut c).await?;
    let used = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let keys: u64 = redis::cmd("DBSIZE").query_async(&mut c).await?;
    Ok((used, keys))
}

async fn load(a: Load) -> anyhow::Result<()> {
    let mut channels = Vec::new();
    for _ in 0..a.connections.max(1) {
        channels.push(
            Endpoint::from_shared(format!("http://{}", a.addr))?
                .connect()
                .await
                .with_context(|| format!("connecting to {}", a.addr))?,
        );
    }
    let next = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let exhausted = Arc::new(AtomicU64::new(0));
    let start = tokio::time::Instant::now();
    let per = Duration::from_secs_f64(1.0 / a.rate.max(1) as f64);
    let workers: Vec<_> = (0..a.concurrency.max(1))
        .map(|w| {
            let mut client = PurgeServiceClient::new(channels[w % channels.len()].clone());
            let (next, ok, errors, exhausted) =
                (next.clone(), ok.clone(), errors.clone(), exhausted.clone());
            let total = a.total;
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return;
                    }
                    tokio::time::sleep_until(start + per * i as u32).await;
                    let req = CreatePurgeRequest {
                        provider: "sandbox".into(),
                        kind: PurgeKind::Url as i32,
                        targets: vec![
                            format!("https://soak.example.com/{i}/app.js"),
                            format!("https://soak.example.com/{i}/app.css"),
                        ],
                        ..Default::default()
                    };
                    match client.create_purge(req).await {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                            exhausted.fetch_add(1, Ordering::Relaxed)
                        }
                        Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    let mut csv = std::fs::File::create(&a.csv)?;
    writeln!(
        csv,
        "t_s,created,errors,resource_exhausted,rss_kb,records,redis_used_memory,redis_keys,redis_rss_kb"
    )?;
    let (mut offset, mut records) = (0u64, None);
    let mut done_at: Option<Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        if let Some(log) = &a.server_log {
            records_in_log(log, &mut offset, &mut records);
        }
        let (used, keys) = match &a.redis_url {
            Some(url) => redis_info(url).await.unwrap_or((0, 0)),
            None => (0, 0),
        };
        let row = format!(
            "{:.1},{},{},{},{},{},{},{},{}",
            start.elapsed().as_secs_f64(),
            ok.load(Ordering::Relaxed),
            errors.load(Ordering::Relaxed),
            exhausted.load(Ordering::Relaxed),
            status_kb(a.pid, "VmRSS").unwrap_or(0),
            records.map_or(String::new(), |r| r.to_string()),
            used,
            keys,
            a.redis_pid.and_then(|p| status_kb(p, "VmRSS")).unwrap_or(0),
        );
        writeln!(csv, "{row}")?;
        eprintln!("{row}");
        let finished = workers.iter().all(|w| w.is_finished());
        if finished && done_at.is_none() {
            done_at = Some(Instant::now());
        }
        if done_at.is_some_and(|d| d.elapsed().as_secs_f64() >= a.tail_secs) {
            break;
        }
    }
    let secs = start.elapsed().as_secs_f64() - a.tail_secs;
    println!(
        "created {} ({:.0}/s over {:.1} s), errors {}, resource_exhausted {}, server VmHWM {} kB",
        ok.load(Ordering::Relaxed),
        ok.load(Ordering::Relaxed) as f64 / secs.max(0.001),
        secs,
        errors.load(Ordering::Relaxed),
        exhausted.load(Ordering::Relaxed),
        status_kb(a.pid, "VmHWM").unwrap_or(0)
    );
    Ok(())
}

async fn footprint(a: Footprint) -> anyhow::Result<()> {
    let mut startups = Vec::new();
    let mut rss = Vec::new();
    for run in 0..a.runs {
        let endpoint = Endpoint::from_shared(format!("http://{}", a.addr))?
            .connect_timeout(Duration::from_millis(50));
        let mut cmd = std::process::Command::new(&a.bin);
        cmd.env("PURGE_SERVER__LISTEN", &a.addr)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        for kv in &a.envs {
            let (k, v) = kv.split_once('=').context("--env takes KEY=VALUE")?;
            cmd.env(k, v);
        }
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {:?}", a.bin))?;
        // Connect as soon as the port answers, then ask over that one connection.
        let channel: Channel = loop {
            match endpoint.connect().await {
                Ok(c) => break c,
                Err(_) if started.elapsed() < Duration::from_secs(10) => {
                    tokio::time::sleep(Duration::from_micros(500)).await
                }
                Err(e) => return Err(e).context("the server never listened"),
            }
        };
        let mut health = HealthClient::new(channel);
        loop {
            let status = health
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .map(|r| r.into_inner().status());
            if matches!(status, Ok(ServingStatus::Serving)) {
                break;
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        let startup = started.elapsed();
        tokio::time::sleep(Duration::from_secs_f64(a.idle_secs)).await;
        let idle = status_kb(child.id(), "VmRSS").unwrap_or(0);
        child.kill()?;
        child.wait()?;
        println!(
            "run {run}: SERVING after {:.1} ms, idle RSS {idle} kB",
            startup.as_secs_f64() * 1e3
        );
        startups.push(startup);
        rss.push(idle);
    }
    startups.sort();
    rss.sort();
    println!(
        "median of {}: SERVING after {:.1} ms, idle RSS {} kB",
        a.runs,
        startups[startups.len() / 2].as_secs_f64() * 1e3,
        rss[rss.len() / 2]
    );
    Ok(())
}

async fn redis_usage(a: RedisUsage) -> anyhow::Result<()> {
    let client = redis::Client::open(a.redis_url.as_str())?;
    let mut c = client.get_multiplexed_async_connection().await?;
    let pattern = format!("{{{}:*}}:purge:*", a.key_prefix);
    let mut iter: redis::AsyncIter<String> = redis::cmd("SCAN")
        .cursor_arg(0)
        .arg("MATCH")
        .arg(&pattern)
        .arg("COUNT")
        .arg(1000)
        .clone()
        .iter_async(&mut c)
        .await?;
    let mut keys = Vec::new();
    while let Some(k) = iter.next_item().await {
        keys.push(k?);
        if keys.len() >= a.samples {
            break;
        }
    }
    drop(iter);
    anyhow::ensure!(!keys.is_empty(), "no record matches {pattern}");
    let (mut now, mut legacy, mut n) = (0u64, 0u64, 0u64);
    for key in &keys {
        let bytes: Option<Vec<u8>> = redis::cmd("HGET")
            .arg(key)
            .arg("json")
            .query_async(&mut c)
            .await?;
        let Some(bytes) = bytes else { continue };
        let record = purge_service::store::codec::decode(&bytes, "")?;
        let version: String = redis::cmd("HGET")
            .arg(key)
            .arg("v")
            .query_async(&mut c)
            .await?;
        let probe = format!("{key}:legacy-probe");
        let _: () = redis::cmd("HSET")
            .arg(&probe)
            .arg("v")
            .arg(&version)
            .arg("json")
            .arg(serde_json::to_vec(&record)?)
            .query_async(&mut c)
            .await?;
        let usage = |k: String| {
            let mut c = c.clone();
            async move {
                redis::cmd("MEMORY")
                    .arg("USAGE")
                    .arg(k)
                    .arg("SAMPLES")
                    .arg(0)
                    .query_async::<u64>(&mut c)
                    .await
            }
        };
        now += usage(key.clone()).await?;
        legacy += usage(probe.clone()).await?;
        let _: () = redis::cmd("DEL").arg(&probe).query_async(&mut c).await?;
        n += 1;
    }
    println!(
        "MEMORY USAGE over {n} record keys: {} bytes each now, {} bytes each in the older plain-JSON form",
        now / n.max(1),
        legacy / n.max(1)
    );
    Ok(())
}
