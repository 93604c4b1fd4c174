//! The purge-service binary: parse the command line, load config, serve until SIGTERM/SIGINT.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use purge_service::{App, config::Config, telemetry};

#[derive(Parser)]
#[command(version, about = "gRPC service that purges CDN caches")]
struct Cli {
    /// TOML config file; without one: 127.0.0.1:50051, memory backend, one sandbox provider.
    #[arg(long, env = "PURGE_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve gRPC (the default).
    Serve,
    /// Validate the config and print the effective settings (secrets are never printed).
    CheckConfig,
    /// Ask a running server for its gRPC health (service ""); exit 0 only when SERVING.
    Health {
        /// host:port of the server.
        #[arg(long, default_value = "127.0.0.1:50051")]
        addr: String,
        /// Give up after this long (connect and call).
        #[arg(long, default_value = "5s", value_parser = humantime_serde::re::humantime::parse_duration)]
        timeout: std::time::Duration,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Health { addr, timeout }) = &cli.command {
        // A probe's answer: one short line, exit 1 unless SERVING.
        if let Err(e) = purge_service::health_probe::check(addr, *timeout).await {
            eprintln!("{e}");
            std::process::exit(1);
        }
        println!("SERVING");
        return Ok(());
    }
    let config =
        Config::load(cli.config.as_deref(), std::env::vars()).context("loading configuration")?;
    if let Some(Command::CheckConfig) = cli.command {
        purge_service::providers::build::check_secrets(&config.providers)
            .context("checking secrets")?;
        purge_service::core::Callers::from_config(&config.callers)
            .context("checking caller tokens")?;
        print!("{}", config.to_toml());
        return Ok(());
    }
    let telemetry = telemetry::init(&config.telemetry).context("setting up telemetry")?;
    let served = serve(config).await;
    if let Err(e) = &served {
        tracing::error!(error = format!("{e:#}"), "stopped with an error");
    }
    telemetry.shutdown().await;
    served
}

async fn serve(config: purge_service::config::Config) -> anyhow::Result<()> {
    let listen = config.server.listen;
    let app = App::build(config).await.context("building the service")?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    app.run(listener, shutdown_signal()).await?;
    Ok(())
}

/// Resolves on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
