//! The `purge-service purge ...` client: create (optionally waiting for the outcome), get,
//! watch, list and cancel against a running server, for operators and deploy pipelines.
//! Exit codes: 0 done (SUCCEEDED when waiting), 3 FAILED, 4 CANCELLED, 2 a refused request
//! (INVALID_ARGUMENT, bad flags), 1 any other error.

mod output;
mod tls;

use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use sha2::{Digest, Sha256};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use crate::pb::{self, PurgeState, purge_service_client::PurgeServiceClient};

pub use output::Output;
pub use tls::{TlsArgs, TlsError, Transport};

/// Options shared by every `purge` subcommand.
#[derive(Args, Debug)]
pub struct PurgeArgs {
    /// Server address (host:port, http:// or https:// URL); repeat it (or separate with
    /// commas) to name replicas: a call that finds its server unavailable goes to the next,
    /// and a watch that loses its server follows the purge on the next one.
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
    #[command(flatten)]
    pub tls: TlsArgs,
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
    #[error("cannot connect to {addr}")]
    Connect {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error(transparent)]
    Transport(#[from] TlsError),
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
            ClientError::Transport(_) | ClientError::Token => 2,
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
    transport: Transport,
    token: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl Session {
    async fn client(&self, i: usize) -> Result<PurgeServiceClient<Channel>, ClientError> {
        let addr = &self.addrs[i % self.addrs.len()];
        let channel = self
            .transport
            .endpoint(addr)?
            .connect()
            .await
            .map_err(|source| ClientError::Connect {
                addr: addr.clone(),
                source,
            })?;
        Ok(PurgeServiceClient::new(channel))
    }

    /// One unary call, on the first address that takes it: an address that cannot be
    /// reached or answers UNAVAILABLE passes the call to the next (every call here is safe
    /// to repeat: a create carries its idempotency key).
    async fn call<T, F, Fut>(&self, mut f: F) -> Result<T, ClientError>
    where
        F: FnMut(PurgeServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut i = 0;
        loop {
            let failed = match self.client(i).await {
                Ok(client) => match f(client).await {
                    Ok(r) => return Ok(r.into_inner()),
                    Err(s) if s.code() == tonic::Code::Unavailable => ClientError::from(s),
                    Err(s) => return Err(s.into()),
                },
                Err(e @ ClientError::Connect { .. }) => e,
                Err(e) => return Err(e),
            };
            i += 1;
            if i == self.addrs.len() {
                return Err(failed);
            }
            eprintln!("{}; trying the next address", with_causes(&failed));
        }
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
                    eprintln!(
                        "watch interrupted ({}); following the purge again",
                        with_causes(&e)
                    );
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
        ClientError::Transport(_) | ClientError::Token => false,
    }
}

/// `e` and its causes, "outer: inner: ...", each said once (a TLS refusal is in the causes).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        // A status is said as "code: message" already; its own text repeats its causes.
        let said = match cause.downcast_ref::<tonic::Status>() {
            Some(_) => String::new(),
            None => cause.to_string(),
        };
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

/// Runs a `purge` subcommand; the process exit code.
pub async fn run(args: PurgeArgs) -> u8 {
    match execute(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", with_causes(&e));
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
    let transport = args.tls.transport()?;
    // Every address is checked against the TLS flags before any call.
    for addr in &args.addr {
        transport.endpoint(addr)?;
    }
    let session = Session {
        addrs: args.addr,
        transport,
        token,
    };
    let out = args.output;
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
            let created = session
                .call(|mut client| {
                    let req = session.request(req.clone());
                    async move { client.create_purge(req).await }
                })
                .await?;
            if !c.wait || c.validate_only {
                out.purge(&created);
                return Ok(0);
            }
            let done = session.follow(&created.id, out).await?;
            out.purge(&done);
            Ok(state_code(&done))
        }
        PurgeCommand::Get { id } => {
            let p = session
                .call(|mut client| {
                    let req = session.request(pb::GetPurgeRequest { id: id.clone() });
                    async move { client.get_purge(req).await }
                })
                .await?;
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
            let page = session
                .call(|mut client| {
                    let req = session.request(pb::ListPurgesRequest {
                        filter: filter.clone(),
                        page_size,
                        page_token: page_token.clone(),
                    });
                    async move { client.list_purges(req).await }
                })
                .await?;
            out.list(&page);
            Ok(0)
        }
        PurgeCommand::Cancel { id } => {
            let p = session
                .call(|mut client| {
                    let req = session.request(pb::CancelPurgeRequest { id: id.clone() });
                    async move { client.cancel_purge(req).await }
                })
                .await?;
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
