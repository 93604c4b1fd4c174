//! The `purge-service purge ...` client: create (optionally waiting for the outcome), get,
//! watch, list and cancel against a running server, for operators and deploy pipelines.
//! Exit codes: 0 done (SUCCEEDED when waiting), 3 FAILED, 4 CANCELLED, 2 a refused request
//! (INVALID_ARGUMENT, bad flags), 1 any other error.

mod output;

use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use sha2::{Digest, Sha256};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use crate::pb::{self, PurgeState, purge_service_client::PurgeServiceClient};

pub use output::Output;

/// Options shared by every `purge` subcommand.
#[derive(Args, Debug)]
pub struct PurgeArgs {
    /// Server address (host:port or URL); repeat it to name replicas: a watch that loses its
    /// server (UNAVAILABLE) follows the purge on the next one.
    #[arg(
        long,
        env = "PURGE_ADDR",
        value_delimiter = ',',
        default_value = "127.0.0.1:50051"
    )]
    pub addr: Vec<String>,
    /// Bearer token of the caller (never printed).
    #[arg(long, env = "PURGE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    #[command(subcommand)]
    pub command: PurgeCommand,
}

#[derive(Subcommand, Debug)]
pub enum PurgeCommand {
    /// Create a purge; with --wait, follow it and exit by its outcome.
    Create(CreateArgs),
    /// Print a purge.
    Get { id: String },
    /// Follow a purge until it finishes; exit by its outcome.
    Watch { id: String },
    /// List your purges, newest first.
    List {
        /// AIP-160 subset, e.g. `state = FAILED AND labels.ticket = "OPS-42"`.
        #[arg(long, default_value = "")]
        filter: String,
        #[arg(long, default_value_t = 0)]
        page_size: i32,
        #[arg(long, default_value = "")]
        page_token: String,
    },
    /// Cancel a purge: targets not yet sent are withdrawn.
    Cancel { id: String },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Kind {
    Url,
    Prefix,
    Host,
    All,
    Tag,
    Wildcard,
    Regex,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Provider or group name.
    #[arg(long)]
    pub provider: String,
    #[arg(long, value_enum, default_value_t = Kind::Url)]
    pub kind: Kind,
    /// DELETE instead of INVALIDATE.
    #[arg(long)]
    pub delete: bool,
    /// Host scope for TAG purges (repeatable).
    #[arg(long = "host")]
    pub hosts: Vec<String>,
    /// key=value label (repeatable).
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Idempotency key; default: derived from provider, kind, action and targets, so a rerun
    /// pipeline step gets the same purge instead of purging twice.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Follow the purge until it finishes and exit by its outcome.
    #[arg(long)]
    pub wait: bool,
    /// Only validate and print the plan.
    #[arg(long)]
    pub validate_only: bool,
    pub targets: Vec<String>,
}

/// A `--label` that is not `key=value`.
#[derive(Debug, thiserror::Error)]
#[error("label {0:?} is not key=value")]
pub struct NotKeyValue(String);

fn parse_label(s: &str) -> Result<(String, String), NotKeyValue> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| NotKeyValue(s.to_owned()))
}

/// Why a command did not get its answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("invalid --addr {0:?}")]
    Address(String),
    #[error("the token is not valid header text")]
    Token,
    #[error("{}: {}", .0.code(), .0.message())]
    Rpc(#[from] tonic::Status),
    #[error("the watch ended before the purge finished")]
    WatchEnded,
}

impl ClientError {
    /// 2 for a request the server refused as invalid, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Rpc(s) if s.code() == tonic::Code::InvalidArgument => 2,
            ClientError::Address(_) | ClientError::Token => 2,
            ClientError::Rpc(_) | ClientError::Connect { .. } | ClientError::WatchEnded => 1,
        }
    }
}

/// The exit code of a purge's outcome: 0 SUCCEEDED (or not finished), 3 FAILED, 4 CANCELLED.
pub fn state_code(p: &pb::Purge) -> u8 {
    match p.state() {
        PurgeState::Failed => 3,
        PurgeState::Cancelled => 4,
        _ => 0,
    }
}

/// The default idempotency key: sha256 over provider, kind, action and the sorted targets.
pub fn derived_key(c: &CreateArgs) -> String {
    let mut targets = c.targets.clone();
    targets.sort_unstable();
    let mut h = Sha256::new();
    for part in [
        c.provider.as_str(),
        &format!("{:?}", c.kind),
        if c.delete { "DELETE" } else { "INVALIDATE" },
    ] {
        h.update(part.as_bytes());
        h.update(b"\x1f");
    }
    for t in &targets {
        h.update(t.as_bytes());
        h.update(b"\x1e");
    }
    format!("cli-{}", &hex::encode(h.finalize())[..32])
}

struct Session {
    addrs: Vec<String>,
    token: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl Session {
    async fn client(&self, i: usize) -> Result<PurgeServiceClient<Channel>, ClientError> {
        let addr = &self.addrs[i % self.addrs.len()];
        let url = if addr.contains("://") {
            addr.clone()
        } else {
            format!("http://{addr}")
        };
        let endpoint = Channel::from_shared(url).map_err(|_| ClientError::Address(addr.clone()))?;
        let channel = endpoint
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|source| ClientError::Connect {
                addr: addr.clone(),
                source,
            })?;
        Ok(PurgeServiceClient::new(channel))
    }

    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        if let Some(t) = &self.token {
            r.metadata_mut().insert("authorization", t.clone());
        }
        r
    }

    /// Follows `id` until it is final, moving to the next address after UNAVAILABLE or a
    /// lost connection (at most 20 times in a row, a second apart).
    async fn follow(&self, id: &str, out: Output) -> Result<pb::Purge, ClientError> {
        let mut failures = 0;
        let mut i = 0;
        loop {
            let attempt = async {
                let mut client = self.client(i).await?;
                let mut stream = client
                    .watch_purge(self.request(pb::WatchPurgeRequest { id: id.to_owned() }))
                    .await?
                    .into_inner();
                let mut last = None;
                while let Some(m) = stream.next().await {
                    let m = m?;
                    out.progress(&m);
                    last = Some(m);
                }
                last.filter(is_final).ok_or(ClientError::WatchEnded)
            };
            match attempt.await {
                Ok(p) => return Ok(p),
                Err(e) if retryable(&e) && failures < 20 => {
                    failures += 1;
                    i += 1;
                    eprintln!("watch interrupted ({e}); following the purge again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

fn is_final(p: &pb::Purge) -> bool {
    matches!(
        p.state(),
        PurgeState::Succeeded | PurgeState::Failed | PurgeState::Cancelled
    )
}

fn retryable(e: &ClientError) -> bool {
    match e {
        ClientError::Rpc(s) => matches!(
            s.code(),
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal
        ),
        ClientError::Connect { .. } | ClientError::WatchEnded => true,
        ClientError::Address(_) | ClientError::Token => false,
    }
}

/// Runs a `purge` subcommand; the process exit code.
pub async fn run(args: PurgeArgs) -> u8 {
    match execute(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

async fn execute(args: PurgeArgs) -> Result<u8, ClientError> {
    let token = match &args.token {
        Some(t) => Some(
            format!("Bearer {t}")
                .parse()
                .map_err(|_| ClientError::Token)?,
        ),
        None => None,
    };
    let session = Session {
        addrs: args.addr,
        token,
    };
    let out = args.output;
    let mut client = session.client(0).await?;
    match args.command {
        PurgeCommand::Create(c) => {
            let key = c.idempotency_key.clone().unwrap_or_else(|| derived_key(&c));
            let req = pb::CreatePurgeRequest {
                provider: c.provider.clone(),
                kind: kind(c.kind) as i32,
                action: if c.delete {
                    pb::PurgeAction::Delete
                } else {
                    pb::PurgeAction::Invalidate
                } as i32,
                hosts: c.hosts.clone(),
                labels: c.labels.iter().cloned().collect(),
                idempotency_key: key,
                validate_only: c.validate_only,
                targets: c.targets.clone(),
                ..Default::default()
            };
            let created = client
                .create_purge(session.request(req))
                .await?
                .into_inner();
            if !c.wait || c.validate_only {
                out.purge(&created);
                return Ok(0);
            }
            let done = session.follow(&created.id, out).await?;
            out.purge(&done);
            Ok(state_code(&done))
        }
        PurgeCommand::Get { id } => {
            let p = client
                .get_purge(session.request(pb::GetPurgeRequest { id }))
                .await?
                .into_inner();
            out.purge(&p);
            Ok(0)
        }
        PurgeCommand::Watch { id } => {
            let done = session.follow(&id, out).await?;
            out.purge(&done);
            Ok(state_code(&done))
        }
        PurgeCommand::List {
            filter,
            page_size,
            page_token,
        } => {
            let page = client
                .list_purges(session.request(pb::ListPurgesRequest {
                    filter,
                    page_size,
                    page_token,
                }))
                .await?
                .into_inner();
            out.list(&page);
            Ok(0)
        }
        PurgeCommand::Cancel { id } => {
            let p = client
                .cancel_purge(session.request(pb::CancelPurgeRequest { id }))
                .await?
                .into_inner();
            out.purge(&p);
            Ok(0)
        }
    }
}

fn kind(k: Kind) -> pb::PurgeKind {
    match k {
        Kind::Url => pb::PurgeKind::Url,
        Kind::Prefix => pb::PurgeKind::Prefix,
        Kind::Host => pb::PurgeKind::Host,
        Kind::All => pb::PurgeKind::All,
        Kind::Tag => pb::PurgeKind::Tag,
        Kind::Wildcard => pb::PurgeKind::Wildcard,
        Kind::Regex => pb::PurgeKind::Regex,
    }
}
