//! The purge-service binary: parse the command line, load config, serve until SIGTERM/SIGINT.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

use purge_service::app::AppError;
use purge_service::{App, config::Config, telemetry};

/// jemalloc, not glibc malloc: under load the service allocates and frees on every worker
/// thread; glibc's arena locks and consolidation took about a quarter of its CPU, and
/// CreatePurge costs about a third less CPU with jemalloc (README, "Allocator and fewer Redis
/// calls").
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
        /// CA of the server's certificate: connect with TLS.
        #[arg(long)]
        tls_ca: Option<PathBuf>,
        /// The probe's client certificate, when the server requires one.
        #[arg(long, requires = "key")]
        cert: Option<PathBuf>,
        #[arg(long, requires = "cert")]
        key: Option<PathBuf>,
        /// The name the server's certificate carries, when not the host of --addr.
        #[arg(long)]
        tls_domain: Option<String>,
    },
    /// Talk to a running server: create, get, watch, list, cancel purges.
    Purge(purge_service::client::PurgeArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Purge(args)) = cli.command {
        return ExitCode::from(purge_service::client::run(args).await);
    }
    if let Some(Command::Health {
        addr,
        timeout,
        tls_ca,
        cert,
        key,
        tls_domain,
    }) = &cli.command
    {
        let tls = purge_service::health_probe::ProbeTls {
            ca_file: tls_ca.clone(),
            cert_file: cert.clone(),
            key_file: key.clone(),
            domain: tls_domain.clone(),
        };
        // A probe's answer: one short line, exit 1 unless SERVING.
        if let Err(e) = purge_service::health_probe::check(addr, *timeout, &tls).await {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
        println!("SERVING");
        return ExitCode::SUCCESS;
    }
    let config = match Config::load(cli.config.as_deref(), std::env::vars()) {
        Ok(config) => config,
        Err(e) => return user_error("loading configuration", &e),
    };
    if let Some(Command::CheckConfig) = cli.command {
        if let Err(e) = purge_service::providers::build::check_secrets(&config.providers) {
            return user_error("checking secrets", &e);
        }
        if let Err(e) = purge_service::core::Callers::from_config(&config.callers) {
            return user_error("checking caller tokens", &e);
        }
        print!("{}", config.to_toml());
        return ExitCode::SUCCESS;
    }
    let telemetry = match telemetry::init(&config.telemetry) {
        Ok(t) => t,
        Err(e) => return user_error("setting up telemetry", &e),
    };
    let served = serve(config).await;
    telemetry.shutdown().await;
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(Stop::User(what, e)) => user_error(&what, e.as_ref()),
        Err(Stop::Bug(e)) => {
            // Not the user's doing: the backtrace (when enabled) helps whoever fixes it.
            tracing::error!(error = format!("{e:#}"), "stopped with an error");
            eprintln!("error: {e:?}");
            ExitCode::FAILURE
        }
    }
}

/// Why serving stopped: a mistake in the configuration or the environment (what was being
/// done, the error), or anything else.
enum Stop {
    User(String, Box<dyn std::error::Error + Send + Sync>),
    Bug(anyhow::Error),
}

/// A user's mistake: its cause chain on one line, no backtrace, exit status 2.
fn user_error(what: &str, e: &(dyn std::error::Error + 'static)) -> ExitCode {
    let mut line = format!("error: {what}: {e}");
    let mut source = e.source();
    while let Some(cause) = source {
        line.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    eprintln!("{line}");
    ExitCode::from(2)
}

async fn serve(config: purge_service::config::Config) -> Result<(), Stop> {
    let listen = config.server.listen;
    let app = match App::build(config).await {
        Ok(app) => app,
        Err(e @ (AppError::Config(_) | AppError::Tls(_))) => {
            return Err(Stop::User("building the service".into(), e.into()));
        }
        Err(e) => {
            return Err(Stop::Bug(
                anyhow::Error::new(e).context("building the service"),
            ));
        }
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Stop::User(format!("binding {listen}"), e.into()))?;
    app.run(listener, shutdown_signal())
        .await
        .map_err(|e| Stop::Bug(e.into()))
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
