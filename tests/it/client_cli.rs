//! The `purge-service purge ...` client, as the real binary, against a real server: exit codes
//! by outcome (0 SUCCEEDED, 3 FAILED, 4 CANCELLED, 2 refused, 1 unreachable), JSON output and
//! the derived idempotency key that makes a rerun get the same purge; a watch that moves to
//! the next replica when its server stops.

use std::process::Output;
use std::time::Duration;

use crate::support::{config, spawn_app, wait_terminal};

/// `purge-service purge <args>` with no `PURGE_*` variable from the test's environment.
pub fn command(args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_purge-service"));
    cmd.arg("purge").args(args);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("PURGE_")) {
        cmd.env_remove(k);
    }
    cmd
}

/// Runs `purge-service purge <args>` to its end (a minute at most).
pub async fn run(args: &[&str]) -> Output {
    tokio::time::timeout(Duration::from_secs(60), command(args).output())
        .await
        .expect("the client finished within a minute")
        .unwrap()
}

async fn cli(addr: &str, args: &[&str]) -> Output {
    run(&[&["--addr", addr][..], args].concat()).await
}

pub fn json(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("{e}: {stdout:?} / {}", String::from_utf8_lossy(&out.stderr)))
}

const SLOW: &str = "[dispatch]\nlinger = \"5ms\"\n[[providers]]\nname = \"sandbox\"\ntype = \"sandbox\"\ndelay = \"20ms\"\nmax_per_call = 1\nfail_pattern = \"/broken/\"\nlimits = { submit = [{ count = 2, per = \"1s\" }] }\n";

#[tokio::test]
async fn create_wait_exits_by_the_outcome_and_a_rerun_gets_the_same_purge() {
    let app = spawn_app(config(SLOW)).await;
    let addr = app.addr.to_string();
    let ok = [
        "purge",
        "create",
        "--provider",
        "sandbox",
        "--wait",
        "--label",
        "ticket=OPS-42",
        "https://c.example/a",
    ];
    let out = cli(&addr, &["--output", "json"]).await;
    assert_eq!(out.status.code(), Some(2), "no subcommand is a usage error");
    let out = cli(&addr, &[&["--output", "json"][..], &ok[1..]].concat()).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first = json(&out);
    assert_eq!(first["state"], "SUCCEEDED");
    assert_eq!(first["labels"]["ticket"], "OPS-42");
    // The rerun of the same step: the same purge, not a second one.
    let again = json(&cli(&addr, &[&["--output", "json"][..], &ok[1..]].concat()).await);
    assert_eq!(again["id"], first["id"]);
    assert_eq!(app.registry.sandbox("sandbox").unwrap().calls().len(), 1);

    let out = cli(
        &addr,
        &[
            "--output",
            "json",
            "create",
            "--provider",
            "sandbox",
            "--wait",
            "https://c.example/broken/1",
        ],
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let failed = json(&out);
    assert_eq!(failed["state"], "FAILED");
    assert_eq!(
        failed["failures"][0]["target"],
        "https://c.example/broken/1"
    );

    // Refused by the server: 2, with the field named.
    let out = cli(
        &addr,
        &["create", "--provider", "nope", "https://c.example/a"],
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("provider"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Not found: 1.
    let out = cli(&addr, &["get", &uuid::Uuid::now_v7().to_string()]).await;
    assert_eq!(out.status.code(), Some(1));
    // Nobody listening: 1.
    let out = cli(
        &format!("127.0.0.1:{}", crate::support::free_port()),
        &["get", "x"],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));

    // list and get.
    let listed = json(
        &cli(
            &addr,
            &["--output", "json", "list", "--filter", "state = FAILED"],
        )
        .await,
    );
    assert_eq!(listed["purges"].as_array().unwrap().len(), 1);
    assert_eq!(listed["purges"][0]["id"], failed["id"]);
    let got = cli(&addr, &["get", first["id"].as_str().unwrap()]).await;
    assert_eq!(got.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&got.stdout).contains("SUCCEEDED"));
    // validate_only prints the plan and records nothing.
    let plan = json(
        &cli(
            &addr,
            &[
                "--output",
                "json",
                "create",
                "--provider",
                "sandbox",
                "--validate-only",
                "https://c.example/x",
                "https://c.example/y",
            ],
        )
        .await,
    );
    assert_eq!(plan["plan"]["providers"][0]["calls"], 2);
    assert_eq!(plan["id"], "");
}

#[tokio::test]
async fn watch_exits_4_when_the_purge_is_cancelled() {
    let app = spawn_app(config(SLOW)).await;
    let addr = app.addr.to_string();
    // The first purge holds the budget; the second waits, cancellable.
    let busy = json(
        &cli(
            &addr,
            &[
                "--output",
                "json",
                "create",
                "--provider",
                "sandbox",
                "https://c.example/1",
                "https://c.example/2",
                "https://c.example/3",
            ],
        )
        .await,
    );
    let queued = json(
        &cli(
            &addr,
            &[
                "--output",
                "json",
                "create",
                "--provider",
                "sandbox",
                "https://c.example/later",
            ],
        )
        .await,
    );
    let id = queued["id"].as_str().unwrap().to_owned();
    let watcher = {
        let addr = addr.clone();
        let id = id.clone();
        tokio::spawn(async move { cli(&addr, &["watch", &id]).await })
    };
    let out = cli(&addr, &["--output", "json", "cancel", &id]).await;
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(json(&out)["state"], "CANCELLED");
    let watched = watcher.await.unwrap();
    assert_eq!(
        watched.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&watched.stderr)
    );
    wait_terminal(
        &app.client,
        busy["id"].as_str().unwrap(),
        Duration::from_secs(20),
    )
    .await;
}

/// Two replicas on one Redis: `create --wait` is sent to A (first of `--addr A,B`); A stops
/// while the CLI follows the purge (its watch ends UNAVAILABLE), and the CLI follows it on B
/// to SUCCEEDED, exit 0.
#[tokio::test]
async fn create_wait_follows_the_purge_on_the_next_replica_when_one_stops() {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

    use crate::redis_server::{RedisServer, RedisTarget, unique};

    let server = RedisServer::start();
    let target = RedisTarget::node(&server);
    // The task runs 3 s at the simulated CDN: A stops while it runs; B takes the held work
    // over after 1 s and follows the task to its end.
    let rest = format!(
        "[dispatch]\nlinger = \"5ms\"\nreclaim_idle = \"1s\"\n[[providers]]\nname = \"sandbox\"\n\
         type = \"sandbox\"\ndelay = \"3s\"\naccount = \"{}\"\n",
        unique("acct")
    );
    let a = spawn_app(target.config(&rest)).await;
    let b = spawn_app(target.config(&rest)).await;
    let a_addr = a.addr;
    let addrs = format!("{a_addr},{}", b.addr);
    let mut child = command(&[
        "--addr",
        &addrs,
        "create",
        "--wait",
        "--provider",
        "sandbox",
        "https://c.example/replicas",
    ])
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .kill_on_drop(true)
    .spawn()
    .unwrap();
    // The first progress line is the watch's snapshot: the CLI follows the purge on A now.
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(20), stderr.next_line())
        .await
        .expect("the CLI follows the purge")
        .unwrap()
        .expect("a progress line");
    let id = first.split_whitespace().next().unwrap().to_owned();
    assert!(
        a.client
            .clone()
            .get_purge(purge_service::pb::GetPurgeRequest { id: id.clone() })
            .await
            .is_ok(),
        "{first}"
    );
    a.stop().await.unwrap();
    let mut rest_of_stderr = vec![first];
    let status = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = stderr.next_line().await.unwrap() {
            rest_of_stderr.push(line);
        }
        child.wait().await.unwrap()
    })
    .await
    .expect("the CLI finished within a minute");
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .await
        .unwrap();
    let stderr = rest_of_stderr.join("\n");
    assert_eq!(status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&id) && stdout.contains("SUCCEEDED"),
        "{stdout}"
    );
    assert!(
        stderr.contains("watch interrupted"),
        "the watch on A was cut, not finished there: {stderr}"
    );
    let done = wait_terminal(&b.client, &id, Duration::from_secs(5)).await;
    assert_eq!(done.progress.unwrap().succeeded, 1);
    // A unary call whose first address is gone goes to the next.
    let out = cli(&format!("{},{}", a_addr, b.addr), &["get", &id]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot connect to {a_addr}"))
            && stderr.contains("trying the next address"),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("SUCCEEDED"));
}
