//! TLS and mutual TLS on the gRPC port, end to end with certificates made at test time:
//! tonic, grpcurl and Python grpcio clients; refusals at the handshake (wrong CA, no client
//! certificate, an expired one); callers identified by certificate keep to their own purges
//! and idempotency keys; certificate rotation from the files.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use purge_service::App;
use purge_service::config::Config;
use purge_service::pb::purge_service_client::PurgeServiceClient;
use purge_service::pb::{GetPurgeRequest, PurgeKind};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::pki::{Ca, Pem, serial_of, write};
use crate::support::{config, eventually, request};

const DEPLOYER: &str = "spiffe://cluster.local/ns/shop/sa/deployer";
const CI: &str = "ci.example.com";

/// A service on a free port; stopped when dropped.
pub struct Served {
    pub addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

/// Serves `config` (TLS ones too: nothing here connects in plaintext).
pub async fn serve(config: Config) -> Served {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = App::build(config).await.expect("app builds");
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(app.run(listener, async {
        let _ = rx.await;
    }));
    Served { addr, _stop: tx }
}

/// A TLS channel trusting `ca`, presenting `identity` if given.
async fn channel(
    addr: SocketAddr,
    ca: &str,
    identity: Option<&Pem>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some(id) = identity {
        tls = tls.identity(Identity::from_pem(&id.cert, &id.key));
    }
    Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

/// One health check over a fresh TLS connection.
async fn health(addr: SocketAddr, ca: &str, identity: Option<&Pem>) -> Result<i32, String> {
    let channel = channel(addr, ca, identity)
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    check(channel).await
}

async fn check(channel: Channel) -> Result<i32, String> {
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .map(|r| r.into_inner().status)
        .map_err(|s| format!("call: {:?} {}", s.code(), s.message()))
}

/// The serial of the certificate the server presents to a new connection.
async fn presented_serial(addr: SocketAddr, ca: &str) -> String {
    let mut roots = rustls::RootCertStore::empty();
    let ca = rustls_pki_types::CertificateDer::from_pem_slice(ca.as_bytes()).expect("ca");
    roots.add(ca).expect("root");
    let config = rustls::ClientConfig::builder_with_provider(purge_service::tls::certs::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.expect("tcp");
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    let tls = connector.connect(name, tcp).await.expect("handshake");
    let leaf = &tls
        .get_ref()
        .1
        .peer_certificates()
        .expect("server certificate")[0];
    purge_service::tls::certs::info(leaf).expect("x509").serial
}

/// What a raw TLS client presenting `identity` learns when it then reads: the server's
/// alert, when the server refused it.
async fn handshake_alert(addr: SocketAddr, ca: &str, identity: Option<&Pem>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_slice(ca.as_bytes()).expect("ca"))
        .expect("root");
    let builder =
        rustls::ClientConfig::builder_with_provider(purge_service::tls::certs::provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots);
    let mut config = match identity {
        Some(id) => builder
            .with_client_auth_cert(
                vec![rustls_pki_types::CertificateDer::from_pem_slice(id.cert.as_bytes()).unwrap()],
                rustls_pki_types::PrivateKeyDer::from_pem_slice(id.key.as_bytes()).unwrap(),
            )
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.expect("tcp");
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    let mut tls = match connector.connect(name, tcp).await {
        Ok(tls) => tls,
        Err(e) => return format!("{e:?}"),
    };
    let _ = tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await {
        Ok(Err(e)) => format!("{e:?}"),
        other => format!("not refused: {other:?}"),
    }
}

use rustls_pki_types::pem::PemObject;

/// The server's files and two callers known by certificate (the deployer also by token).
fn mtls_config(dir: &Path, ca: &Ca) -> Config {
    let server = ca.server(1);
    let cert = write(dir, "tls.crt", &server.cert);
    let key = write(dir, "tls.key", &server.key);
    let client_ca = write(dir, "ca.crt", &ca.pem);
    let token = write(dir, "token", "deployer-token");
    config(&format!(
        "[server.tls]\ncert_file = {cert:?}\nkey_file = {key:?}\nclient_ca_file = {client_ca:?}\n\
         [[providers]]\nname = \"sandbox\"\ntype = \"sandbox\"\ndelay = \"10ms\"\n\
         [[callers]]\nname = \"deployer\"\ntoken_file = {token:?}\ncert_sans = [\"{DEPLOYER}\"]\n\
         [[callers]]\nname = \"ci\"\ncert_sans = [\"{CI}\"]\n"
    ))
}

#[tokio::test]
async fn mutual_tls_refuses_wrong_ca_missing_and_expired_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let app = serve(mtls_config(dir.path(), &ca)).await;
    let deployer = ca.client(DEPLOYER);
    eventually(Duration::from_secs(10), "SERVING over mTLS", || async {
        (health(app.addr, &ca.pem, Some(&deployer)).await == Ok(1)).then_some(())
    })
    .await;

    // The client does not trust the server: its CA is another one.
    let other = Ca::new("other CA");
    let err = health(app.addr, &other.pem, Some(&other.client(DEPLOYER)))
        .await
        .unwrap_err();
    assert!(
        err.contains("connect") || err.contains("Unavailable"),
        "{err}"
    );
    // No client certificate, a certificate of another CA, an expired one: the server ends the
    // handshake with an alert saying why, so no call reaches the service.
    for (what, id, alert) in [
        ("no certificate", None, "CertificateRequired"),
        (
            "another CA's certificate",
            Some(other.client(DEPLOYER)),
            "UnknownCA",
        ),
        (
            "an expired certificate",
            Some(ca.expired_client(DEPLOYER)),
            "CertificateExpired",
        ),
    ] {
        let err = handshake_alert(app.addr, &ca.pem, id.as_ref()).await;
        assert!(err.contains(alert), "{what}: {err}");
        let err = health(app.addr, &ca.pem, id.as_ref()).await.unwrap_err();
        assert!(!err.contains("Unauthenticated"), "{what}: {err}");
    }
    assert_eq!(health(app.addr, &ca.pem, Some(&deployer)).await, Ok(1));
}

#[tokio::test]
async fn callers_by_certificate_keep_to_their_own_purges_and_keys() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let app = serve(mtls_config(dir.path(), &ca)).await;
    let (addr, ca_pem) = (app.addr, ca.pem.clone());
    let client = |id: Pem| {
        let ca_pem = ca_pem.clone();
        async move {
            let channel = eventually(Duration::from_secs(10), "mTLS connects", || async {
                channel(addr, &ca_pem, Some(&id)).await.ok()
            })
            .await;
            PurgeServiceClient::new(channel)
        }
    };
    let mut deployer = client(ca.client(DEPLOYER)).await;
    let mut ci = client(ca.client(CI)).await;
    let mut stranger = client(ca.client("stranger.example.com")).await;

    let keyed = |key: &str| {
        let mut req = tonic::Request::new(request(
            "sandbox",
            PurgeKind::Url,
            &["https://example.com/a.png"],
        ));
        req.metadata_mut()
            .insert("idempotency-key", key.parse().unwrap());
        req
    };
    let mine = deployer
        .create_purge(keyed("release-42"))
        .await
        .expect("the deployer's certificate identifies it")
        .into_inner();
    // The same key from another caller is another purge, not the deployer's.
    let theirs = ci
        .create_purge(keyed("release-42"))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(theirs.id, mine.id);
    let again = deployer.create_purge(keyed("release-42")).await.unwrap();
    assert_eq!(again.into_inner().id, mine.id);
    // ci cannot read the deployer's purge; the deployer can.
    let err = ci
        .get_purge(GetPurgeRequest {
            id: mine.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    deployer
        .get_purge(GetPurgeRequest {
            id: mine.id.clone(),
        })
        .await
        .expect("its own purge");
    // A certificate the CA signed but no caller names; a token of another caller.
    let err = stranger
        .get_purge(GetPurgeRequest {
            id: mine.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    let mut req = tonic::Request::new(GetPurgeRequest { id: theirs.id });
    req.metadata_mut()
        .insert("authorization", "Bearer deployer-token".parse().unwrap());
    let err = ci.get_purge(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
}

#[tokio::test]
async fn rotated_files_reach_new_connections_and_old_ones_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    // The Kubernetes layout: tls.crt -> ..data/tls.crt, ..data -> a versioned directory that
    // an update replaces by swapping the ..data symlink.
    let version = |name: &str, pem: &Pem| {
        let v = dir.path().join(name);
        std::fs::create_dir(&v).unwrap();
        write(&v, "tls.crt", &pem.cert);
        write(&v, "tls.key", &pem.key);
        let link = dir.path().join("..data.tmp");
        std::os::unix::fs::symlink(name, &link).unwrap();
        std::fs::rename(&link, dir.path().join("..data")).unwrap();
    };
    let first = ca.server(0x1001);
    version("v1", &first);
    for f in ["tls.crt", "tls.key"] {
        std::os::unix::fs::symlink(format!("..data/{f}"), dir.path().join(f)).unwrap();
    }
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let app = serve(config(&format!(
        "[server.tls]\ncert_file = {cert:?}\nkey_file = {key:?}\nreload_interval = \"50ms\"\n"
    )))
    .await;
    let old = eventually(Duration::from_secs(10), "TLS connects", || async {
        channel(app.addr, &ca.pem, None).await.ok()
    })
    .await;
    assert_eq!(check(old.clone()).await, Ok(1));
    assert_eq!(
        presented_serial(app.addr, &ca.pem).await,
        serial_of(&first.cert)
    );

    // A certificate whose key does not fit is not taken: new connections keep the old one
    // until a good pair arrives.
    let second = ca.server(0x2002);
    let third = ca.server(0x3003);
    version(
        "v2",
        &Pem {
            cert: second.cert.clone(),
            key: third.key.clone(),
        },
    );
    version("v3", &third);
    let allowed = [serial_of(&first.cert), serial_of(&third.cert)];
    eventually(
        Duration::from_secs(10),
        "the third certificate is served",
        || async {
            let serial = presented_serial(app.addr, &ca.pem).await;
            assert!(
                allowed.contains(&serial),
                "a mismatched pair was served: {serial}"
            );
            (serial == allowed[1]).then_some(())
        },
    )
    .await;
    // The connection made before the rotation still works.
    assert_eq!(check(old).await, Ok(1));
}

/// Runs a program; (success, stdout + stderr).
async fn run(program: &str, args: &[&str]) -> (bool, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(program).args(args).output(),
    )
    .await
    .expect("finishes")
    .unwrap_or_else(|e| panic!("cannot run {program} (scripts/tools.sh ensure_test_tools): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn grpcurl_and_python_grpcio_speak_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let app = serve(mtls_config(dir.path(), &ca)).await;
    let ci = ca.client(CI);
    let ca_file = write(dir.path(), "client-ca.pem", &ca.pem);
    let cert = write(dir.path(), "ci.crt", &ci.cert);
    let key = write(dir.path(), "ci.key", &ci.key);
    let [ca_file, cert, key] = [&ca_file, &cert, &key].map(|p| p.to_str().unwrap().to_owned());
    let addr = format!("localhost:{}", app.addr.port());
    let grpcurl = std::env::var("GRPCURL").unwrap_or_else(|_| "grpcurl".into());
    let tls = ["-cacert", &ca_file, "-cert", &cert, "-key", &key];

    let (ok, out) = eventually(Duration::from_secs(20), "grpcurl checks health", || async {
        let mut args = tls.to_vec();
        args.extend([addr.as_str(), "grpc.health.v1.Health/Check"]);
        let (ok, out) = run(&grpcurl, &args).await;
        ok.then_some((ok, out))
    })
    .await;
    assert!(ok && out.contains("SERVING"), "{out}");
    let body =
        r#"{"provider":"sandbox","kind":"PURGE_KIND_URL","targets":["https://example.com/a.png"]}"#;
    let mut args = tls.to_vec();
    args.extend([
        "-d",
        body,
        addr.as_str(),
        "purge.v1.PurgeService/CreatePurge",
    ]);
    let (ok, out) = run(&grpcurl, &args).await;
    assert!(ok && out.contains("PURGE_STATE_QUEUED"), "{out}");
    // Without a client certificate grpcurl cannot even connect.
    let (ok, out) = run(
        &grpcurl,
        &["-cacert", &ca_file, &addr, "grpc.health.v1.Health/Check"],
    )
    .await;
    assert!(!ok, "{out}");

    // The image's own probe, as a Kubernetes exec probe runs it.
    let bin = env!("CARGO_BIN_EXE_purge-service");
    let probe = ["health", "--addr", &addr, "--tls-ca", &ca_file];
    let (ok, out) = run(
        bin,
        &[&probe[..], &["--cert", &cert, "--key", &key]].concat(),
    )
    .await;
    assert!(ok && out.contains("SERVING"), "{out}");
    let (ok, out) = run(bin, &probe).await;
    assert!(!ok, "without a client certificate: {out}");

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/grpcio_client.py");
    let (ok, out) = run("python3", &[script, &addr, &ca_file, &cert, &key]).await;
    assert!(ok && out.contains("status 1"), "{out}");
    let other = Ca::new("other CA");
    let other_ca = write(dir.path(), "other-ca.pem", &other.pem);
    let (ok, out) = run(
        "python3",
        &[script, &addr, other_ca.to_str().unwrap(), &cert, &key],
    )
    .await;
    assert!(!ok && out.contains("UNAVAILABLE"), "{out}");
}

#[tokio::test]
async fn slow_handshakes_are_cut_and_large_messages_refused() {
    use tokio::io::AsyncReadExt;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let server = ca.server(1);
    let cert = write(dir.path(), "tls.crt", &server.cert);
    let key = write(dir.path(), "tls.key", &server.key);
    let app = serve(config(&format!(
        "[server]\nmax_message_size = 2048\n\
         [server.tls]\ncert_file = {cert:?}\nkey_file = {key:?}\nhandshake_timeout = \"300ms\"\n"
    )))
    .await;
    let channel = eventually(Duration::from_secs(10), "TLS connects", || async {
        channel(app.addr, &ca.pem, None).await.ok()
    })
    .await;
    // A client that connects and says nothing is disconnected after the handshake timeout.
    let mut idle = TcpStream::connect(app.addr).await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(10), idle.read(&mut buf))
        .await
        .expect("the server closes the silent connection");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    // A request over max_message_size is refused before it is decoded.
    let big = "https://example.com/".to_owned() + &"a".repeat(4096);
    let err = PurgeServiceClient::new(channel)
        .create_purge(request("sandbox", PurgeKind::Url, &[big.as_str()]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err:?}");
}

/// The served certificate's expiry, read from the PEM with x509-parser.
fn not_after(pem: &str) -> i64 {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).expect("pem");
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("x509");
    cert.validity().not_after.timestamp()
}

#[tokio::test]
async fn the_certificate_expiry_is_a_gauge_on_the_admin_port() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let server = ca.server(0x4004);
    let cert = write(dir.path(), "tls.crt", &server.cert);
    let key = write(dir.path(), "tls.key", &server.key);
    let app = App::build(config(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[server.tls]\ncert_file = {cert:?}\nkey_file = {key:?}\n"
    )))
    .await
    .expect("app builds");
    let admin = app.admin_addr().expect("admin listener");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let (_stop, rx) = oneshot::channel::<()>();
    tokio::spawn(app.run(listener, async {
        let _ = rx.await;
    }));
    let scrape = crate::metrics::scrape(admin).await;
    let expiry = crate::metrics::value(&scrape, "purge_tls_certificate_expiry_seconds", &[]);
    assert_eq!(expiry as i64, not_after(&server.cert));
}
