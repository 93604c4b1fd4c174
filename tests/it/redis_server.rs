//! Real `redis-server` processes for the tests: one node on a free port (restartable on the
//! same port and data directory, for the AOF test), or a 3-master cluster made with
//! `redis-cli --cluster create`. Killed when dropped.

#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use purge_service::config::Config;
use tempfile::TempDir;

const SERVER: &str = "redis-server";

/// One redis-server process.
pub struct RedisServer {
    pub port: u16,
    dir: TempDir,
    child: Option<Child>,
    extra: Vec<String>,
}

impl RedisServer {
    /// A node without persistence.
    pub fn start() -> RedisServer {
        RedisServer::start_with(&["--appendonly", "no"])
    }

    /// A node that writes every change to its append-only file before answering.
    pub fn start_with_aof() -> RedisServer {
        RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"])
    }

    /// A node that is not running yet, on a port nothing listens on; `launch` starts it.
    pub fn reserved() -> RedisServer {
        RedisServer {
            port: crate::support::free_port(),
            dir: tempfile::tempdir().expect("temp dir"),
            child: None,
            extra: ["--appendonly", "no"].map(String::from).to_vec(),
        }
    }

    pub fn launch(&mut self) {
        assert!(
            self.spawn(),
            "redis-server could not take port {}",
            self.port
        );
    }

    pub fn start_with(extra: &[&str]) -> RedisServer {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        for _ in 0..5 {
            let mut server = RedisServer {
                port: crate::support::free_port(),
                dir: tempfile::tempdir().expect("temp dir"),
                child: None,
                extra: extra.clone(),
            };
            if server.spawn() {
                return server;
            }
        }
        panic!("cannot start redis-server");
    }

    /// Starts the process and waits until it answers PING; false if it exited (port taken).
    fn spawn(&mut self) -> bool {
        let child = Command::new(SERVER)
            .args(["--port", &self.port.to_string()])
            .args([
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--protected-mode",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--logfile", "redis.log"])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (is it installed?)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return false;
            }
            if self.ping() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "redis-server on port {} did not answer PING within 10 s",
            self.port
        );
    }

    fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("redis url")
    }

    fn ping(&self) -> bool {
        self.client()
            .get_connection_with_timeout(Duration::from_millis(200))
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .is_ok_and(|p| p == "PONG")
    }

    /// A command on this node, for test setup and checks.
    pub fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        let mut c = self.client().get_connection().expect("connect to redis");
        cmd.query(&mut c).expect("redis command")
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the process at once, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same port and data directory.
    pub fn restart(&mut self) {
        self.kill();
        assert!(
            self.spawn(),
            "redis-server could not take port {} again",
            self.port
        );
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three masters, no replicas, every slot assigned.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let mut nodes = Vec::new();
        while nodes.len() < 3 {
            // The cluster bus listens on port + 10000: both must be free.
            let port = rand::random_range(20_000..30_000u16);
            let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
            if !free(port) || !free(port + 10_000) {
                continue;
            }
            let mut node = RedisServer {
                port,
                dir: tempfile::tempdir().expect("temp dir"),
                child: None,
                extra: [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--appendonly",
                    "no",
                ]
                .map(String::from)
                .to_vec(),
            };
            if node.spawn() {
                nodes.push(node);
            }
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli runs");
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = RedisCluster { nodes };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cluster.nodes.iter().all(|n| {
            let info: String = n.query(redis::cmd("CLUSTER").arg("INFO"));
            info.contains("cluster_state:ok")
        }) {
            assert!(
                Instant::now() < deadline,
                "the cluster did not become ok within 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        cluster
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }
}

/// Where a test's replicas keep their state.
#[derive(Clone, Debug)]
pub struct RedisTarget {
    urls: Vec<String>,
    cluster: bool,
    pub prefix: String,
}

impl RedisTarget {
    /// A unique key prefix on one node.
    pub fn node(server: &RedisServer) -> RedisTarget {
        RedisTarget {
            urls: vec![server.url()],
            cluster: false,
            prefix: unique("t"),
        }
    }

    pub fn cluster(cluster: &RedisCluster) -> RedisTarget {
        RedisTarget {
            urls: cluster.urls(),
            cluster: true,
            prefix: unique("t"),
        }
    }

    /// A `[store]` section for these replicas, then `rest` (providers, dispatch...).
    pub fn config(&self, rest: &str) -> Config {
        let urls = if self.cluster {
            format!("cluster_urls = {:?}", self.urls)
        } else {
            format!("url = {:?}", self.urls[0])
        };
        crate::support::config(&format!(
            "[store]\nbackend = \"redis\"\n{urls}\nkey_prefix = {:?}\ntimeout = \"500ms\"\n{rest}",
            self.prefix
        ))
    }
}

/// A name no other test uses, for key prefixes and sandbox accounts.
pub fn unique(what: &str) -> String {
    format!("{what}-{:012x}", rand::random::<u64>() >> 16)
}
