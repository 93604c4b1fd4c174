//! Test support: start the service on a free port, talk to it, poll with a deadline.

#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use purge_service::App;
use purge_service::app::AppError;
use purge_service::config::Config;
use purge_service::pb::purge_service_client::PurgeServiceClient;
use purge_service::pb::{self, CreatePurgeRequest, PurgeKind, PurgeState};
use purge_service::providers::Registry;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

pub type Client = PurgeServiceClient<Channel>;

/// A running service; shut down when dropped.
pub struct TestApp {
    pub addr: SocketAddr,
    pub client: Client,
    pub registry: Registry,
    /// The admin listener (`/metrics`, `/healthz`, `/readyz`), when `[admin] listen` is set.
    pub admin: Option<SocketAddr>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), AppError>>>,
}

impl TestApp {
    /// Triggers graceful shutdown and waits for `run` to return.
    pub async fn stop(mut self) -> Result<(), AppError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.handle
            .take()
            .expect("running")
            .await
            .expect("run task")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A config from TOML, with test-friendly dispatch timings unless the TOML sets them.
pub fn config(toml_text: &str) -> Config {
    let mut table: toml::Table = toml::from_str(toml_text).expect("test config parses");
    let dispatch = table
        .entry("dispatch")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .expect("dispatch table");
    dispatch.entry("linger").or_insert("20ms".into());
    dispatch.entry("poll_interval").or_insert("50ms".into());
    let config: Config = toml::Value::Table(table)
        .try_into()
        .expect("test config is valid");
    config.validate().expect("test config validates");
    config
}

/// The default sandbox with a short delay.
pub fn sandbox_config() -> Config {
    config("[[providers]]\nname = \"sandbox\"\ntype = \"sandbox\"\ndelay = \"50ms\"\n")
}

pub async fn spawn_app(config: Config) -> TestApp {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = App::build(config).await.expect("app builds");
    let registry = app.registry().clone();
    let admin = app.admin_addr();
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(app.run(listener, async {
        let _ = rx.await;
    }));
    let client = connect(addr).await;
    TestApp {
        addr,
        client,
        registry,
        admin,
        shutdown: Some(tx),
        handle: Some(handle),
    }
}

pub async fn connect(addr: SocketAddr) -> Client {
    eventually(
        Duration::from_secs(10),
        "the server accepts connections",
        || async move {
            PurgeServiceClient::connect(format!("http://{addr}"))
                .await
                .ok()
        },
    )
    .await
}

/// Polls `f` every 20 ms until it returns `Some`, failing the test after `deadline`.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "timed out after {deadline:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn request(provider: &str, kind: PurgeKind, targets: &[&str]) -> CreatePurgeRequest {
    CreatePurgeRequest {
        provider: provider.into(),
        kind: kind as i32,
        targets: targets.iter().map(|t| t.to_string()).collect(),
        ..Default::default()
    }
}

pub fn is_terminal(p: &pb::Purge) -> bool {
    matches!(
        p.state(),
        PurgeState::Succeeded | PurgeState::Failed | PurgeState::Cancelled
    )
}

/// Polls GetPurge until the purge is terminal.
pub async fn wait_terminal(client: &Client, id: &str, deadline: Duration) -> pb::Purge {
    eventually(deadline, &format!("purge {id} is terminal"), || {
        let mut c = client.clone();
        let id = id.to_owned();
        async move {
            let p = c
                .get_purge(pb::GetPurgeRequest { id })
                .await
                .ok()?
                .into_inner();
            is_terminal(&p).then_some(p)
        }
    })
    .await
}

/// Asserts that the target of `p` ending in `suffix` failed with a reason containing `says`.
pub fn assert_failed_with(p: &pb::Purge, suffix: &str, says: &str) {
    let reason = p
        .failures
        .iter()
        .find(|f| f.target.ends_with(suffix))
        .map(|f| f.reason.as_str())
        .unwrap_or_default();
    assert!(reason.contains(says), "{suffix}: {:?}", p.failures);
}

/// Polls CreatePurge with `req` until it is refused (by what the service learns in the
/// What `check-config` answers for a config file holding `toml`: loading, then the providers'
/// secrets; the error as text (the config must be refused).
pub fn check_config_error(toml: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, toml).unwrap();
    Config::load(Some(&path), std::iter::empty())
        .and_then(|c| purge_service::providers::build::check_secrets(&c.providers))
        .unwrap_err()
        .to_string()
}

/// Creates `req` on `app` and waits (30 s at most) for the purge's terminal state.
pub async fn create(app: &TestApp, req: pb::CreatePurgeRequest) -> pb::Purge {
    let created = app
        .client
        .clone()
        .create_purge(req)
        .await
        .unwrap()
        .into_inner();
    wait_terminal(&app.client, &created.id, Duration::from_secs(30)).await
}

/// background, such as a provider's quota), and answers the refusal.
pub async fn refused_eventually(client: &Client, req: CreatePurgeRequest) -> tonic::Status {
    eventually(Duration::from_secs(10), "CreatePurge fails fast", || {
        let mut c = client.clone();
        let req = req.clone();
        async move { c.create_purge(req).await.err() }
    })
    .await
}

/// The BadRequest field names of an INVALID_ARGUMENT status.
pub fn violations(status: &tonic::Status) -> Vec<(String, String)> {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .bad_request()
        .map(|b| {
            b.field_violations
                .iter()
                .map(|v| (v.field.clone(), v.description.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// The ErrorInfo reason of a status.
pub fn reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    let info = status.get_error_details().error_info().cloned();
    let info = info.expect("every error carries ErrorInfo");
    assert_eq!(info.domain, "purge.v1");
    info.reason
}

/// A port nothing listens on right now, for processes that must be told their port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The most events in any window of `window` (half-open), for checking rate limits.
pub fn max_in_window(times: &[std::time::SystemTime], window: Duration) -> usize {
    let mut sorted = times.to_vec();
    sorted.sort();
    (0..sorted.len())
        .map(|i| {
            sorted[i..]
                .iter()
                .take_while(|t| t.duration_since(sorted[i]).unwrap_or_default() < window)
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// The real `purge-service` binary on a free port: `server` holds more `[server]` settings,
/// `rest` the other tables.
pub struct Binary {
    pub port: u16,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Binary {
    pub fn start(server: &str, rest: &str) -> Binary {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("purge.toml");
        let port = free_port();
        let toml = format!("[server]\nlisten = \"127.0.0.1:{port}\"\n{server}\n{rest}");
        std::fs::write(&cfg, toml).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_purge-service"))
            .arg("--config")
            .arg(&cfg)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Binary {
            port,
            child,
            _dir: dir,
        }
    }

    pub async fn client(&self) -> Client {
        connect(([127, 0, 0, 1], self.port).into()).await
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit.
    pub async fn exit(&mut self, deadline: Duration) -> std::process::ExitStatus {
        let child = &mut self.child;
        let until = tokio::time::Instant::now() + deadline;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < until,
                "the process did not exit within {deadline:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
