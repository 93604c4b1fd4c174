//! The container image: built by scripts/image (buildah, FROM scratch), its root filesystem
//! mounted and its entrypoint run there (chroot) as the image's user: health SERVING, a purge on
//! the sandbox, Redis found by host name through /etc/hosts and DNS, SIGTERM ends it with 0.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use purge_service::pb::{PurgeKind, PurgeState};
use serde_json::Value;

use crate::deploy_tools::{Process, repo, run_ok, wait_serving};
use crate::redis_server::{RedisServer, unique};
use crate::support::{connect, free_port, request, wait_terminal};

/// buildah with the storage driver scripts/image uses.
fn buildah() -> Command {
    let mut cmd = Command::new("buildah");
    cmd.args(["--storage-driver", "vfs"]);
    cmd
}

/// An image built for this test and a working container of it, mounted; all removed on drop.
struct MountedImage {
    name: String,
    container: String,
    root: PathBuf,
}

impl MountedImage {
    fn build() -> MountedImage {
        let name = format!("localhost/purge-service:{}", unique("it"));
        let started = std::time::Instant::now();
        let printed = run_ok(Command::new(repo().join("scripts/image")).arg(&name));
        assert_eq!(printed.trim(), name);
        eprintln!("scripts/image took {:?}", started.elapsed());
        let container = run_ok(buildah().args(["from", "--quiet", &name]))
            .trim()
            .to_string();
        let root = PathBuf::from(run_ok(buildah().args(["mount", &container])).trim());
        MountedImage {
            name,
            container,
            root,
        }
    }

    fn config(&self) -> Value {
        let inspect = run_ok(buildah().args(["inspect", "--type", "image", &self.name]));
        let inspect: Value = serde_json::from_str(&inspect).unwrap();
        inspect["OCIv1"]["config"].clone()
    }

    fn labels(&self) -> Value {
        let inspect = run_ok(buildah().args(["inspect", "--type", "image", &self.name]));
        let inspect: Value = serde_json::from_str(&inspect).unwrap();
        inspect["OCIv1"]["config"]["Labels"].clone()
    }
}

impl Drop for MountedImage {
    fn drop(&mut self) {
        let _ = buildah().args(["umount", &self.container]).output();
        let _ = buildah().args(["rm", &self.container]).output();
        let _ = buildah().args(["rmi", "--force", &self.name]).output();
    }
}

/// Every regular file under `root` with its size.
fn files(root: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let meta = std::fs::symlink_metadata(entry.path()).unwrap();
            let rel = entry
                .path()
                .strip_prefix(root)
                .unwrap()
                .display()
                .to_string();
            if meta.is_dir() {
                dirs.push(entry.path());
            } else {
                out.push((format!("/{rel}"), meta.len()));
            }
        }
    }
    out.sort();
    out
}

/// A DNS server on 127.53.0.1:53 answering A queries for `name` with 127.0.0.1 (NXDOMAIN for
/// anything else, no AAAA), as a cluster DNS would answer for a Redis Service name.
async fn dns_server(name: &'static str) -> tokio::task::JoinHandle<()> {
    let socket = tokio::net::UdpSocket::bind("127.53.0.1:53")
        .await
        .expect("bind 127.53.0.1:53 for the test DNS server (the image test runs as root)");
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        loop {
            let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                return;
            };
            let query = &buf[..n];
            // Header (12 bytes), then the question: labels, 0, type, class.
            let mut i = 12;
            let mut labels = Vec::new();
            while i < n && query[i] != 0 {
                let len = query[i] as usize;
                labels.push(String::from_utf8_lossy(&query[i + 1..i + 1 + len]).to_string());
                i += len + 1;
            }
            let question_end = i + 5;
            if question_end > n {
                continue;
            }
            let qtype = u16::from_be_bytes([query[i + 1], query[i + 2]]);
            let known = labels.join(".").eq_ignore_ascii_case(name);
            let answer = known && qtype == 1;
            let mut reply = query[..2].to_vec();
            reply.extend([0x81, if known { 0x80 } else { 0x83 }]);
            reply.extend([0, 1, 0, u8::from(answer), 0, 0, 0, 0]);
            reply.extend(&query[12..question_end]);
            if answer {
                reply.extend([0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 1]);
            }
            let _ = socket.send_to(&reply, peer).await;
        }
    })
}

#[tokio::test]
async fn image_runs_its_entrypoint_as_non_root_serves_and_stops_on_sigterm() {
    let image = MountedImage::build();
    let config = image.config();

    // Non-root numeric user, the listen address, the entrypoint, labels.
    let user = config["User"].as_str().expect("the image sets a user");
    let uid: u32 = user
        .split(':')
        .next()
        .unwrap()
        .parse()
        .expect("numeric uid");
    assert_ne!(uid, 0, "the image runs as root");
    let env: Vec<&str> = config["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(
        env.contains(&"PURGE_SERVER__LISTEN=0.0.0.0:50051"),
        "{env:?}"
    );
    let labels = image.labels();
    for label in ["title", "version", "revision", "source", "licenses"] {
        let key = format!("org.opencontainers.image.{label}");
        assert!(labels[&key].is_string(), "label {key} missing: {labels}");
    }

    // Only the binary and the files it reads; no shell; under 40 MB.
    let files = files(&image.root);
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "/etc/group",
            "/etc/nsswitch.conf",
            "/etc/passwd",
            "/usr/local/bin/purge-service"
        ],
        "unexpected files in the image"
    );
    let size: u64 = files.iter().map(|(_, s)| s).sum();
    eprintln!("image content: {size} bytes");
    assert!(size < 40 * 1024 * 1024, "the image holds {size} bytes");

    // What every OCI runtime gives a container: the standard devices (the binary reads
    // /dev/urandom where getrandom(2) cannot be found: a static binary has no dlsym).
    for (dev, minor) in [("null", 3), ("zero", 5), ("random", 8), ("urandom", 9)] {
        let path = image.root.join("dev").join(dev);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        run_ok(Command::new("mknod").args(["-m", "0666"]).arg(&path).args([
            "c",
            "1",
            &minor.to_string(),
        ]));
    }
    // What Kubernetes mounts into every container: /etc/hosts and /etc/resolv.conf.
    let redis_name = "redis.cache.svc.cluster.test";
    std::fs::write(
        image.root.join("etc/hosts"),
        "127.0.0.1 localhost\n127.0.0.1 redis-by-hosts\n",
    )
    .unwrap();
    std::fs::write(
        image.root.join("etc/resolv.conf"),
        "nameserver 127.53.0.1\noptions ndots:1 timeout:1 attempts:2\n",
    )
    .unwrap();
    let _dns = dns_server(redis_name).await;
    let redis = RedisServer::start();

    // The entrypoint in the image's root, as its user, configured the way the chart does
    // (environment), listening on every address but on a free port.
    let entrypoint: Vec<String> = config["Entrypoint"]
        .as_array()
        .unwrap()
        .iter()
        .chain(config["Cmd"].as_array().unwrap())
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    let port = free_port();
    let prefix = unique("img");
    let chroot = |args: &[String]| {
        let mut cmd = Command::new("chroot");
        cmd.arg(format!("--userspec={user}"))
            .arg(&image.root)
            .args(args)
            .env_clear()
            .envs(env.iter().map(|e| e.split_once('=').unwrap()))
            .env("PURGE_SERVER__LISTEN", format!("0.0.0.0:{port}"))
            .env("PURGE_STORE__BACKEND", "redis")
            .env(
                "PURGE_STORE__URL",
                format!("redis://{redis_name}:{}", redis.port),
            )
            .env("PURGE_STORE__KEY_PREFIX", &prefix)
            .env("PURGE_DISPATCH__LINGER", "20ms")
            .env("PURGE_DISPATCH__POLL_INTERVAL", "50ms")
            .env("PURGE_PROVIDERS__0__NAME", "sandbox")
            .env("PURGE_PROVIDERS__0__TYPE", "sandbox")
            .env("PURGE_PROVIDERS__0__DELAY", "50ms");
        cmd
    };
    let mut service = Process::spawn(&mut chroot(&entrypoint));
    let addr = format!("127.0.0.1:{port}");
    // SERVING means Redis answered PING: its host name resolved inside the image (DNS).
    wait_serving(&addr, &mut service).await;

    let status = std::fs::read_to_string(format!("/proc/{}/status", service.pid())).unwrap();
    let running_uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap();
    assert_eq!(
        running_uid,
        uid.to_string(),
        "the service runs as {running_uid}"
    );

    // The image's own health command, as an exec probe or the helm test hook runs it.
    let probe = |addr: &str| {
        chroot(&["/usr/local/bin/purge-service", "health", "--addr", addr].map(String::from))
            .output()
            .unwrap()
    };
    let ok = probe(&addr);
    assert!(ok.status.success(), "{ok:?}");
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "SERVING");
    // Host names resolve through /etc/hosts too (the `files` source).
    let by_hosts = probe(&format!("redis-by-hosts:{port}"));
    assert!(by_hosts.status.success(), "{by_hosts:?}");
    let closed = probe(&format!("127.0.0.1:{}", free_port()));
    assert!(
        !closed.status.success(),
        "health of a closed port succeeded"
    );

    let mut client = connect(addr.parse().unwrap()).await;
    let purge = client
        .create_purge(request(
            "sandbox",
            PurgeKind::Url,
            &["https://www.example.com/app.js"],
        ))
        .await
        .unwrap()
        .into_inner();
    let done = wait_terminal(&client, &purge.id, Duration::from_secs(20)).await;
    assert_eq!(done.state(), PurgeState::Succeeded, "{done:?}");

    service.terminate();
    let exit = service.exit(Duration::from_secs(30)).await;
    assert!(exit.success(), "exit status {exit:?}");
}
