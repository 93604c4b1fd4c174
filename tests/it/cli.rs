//! The real binary's answer to a configuration mistake: the cause on one line, exit status 2,
//! no backtrace even with `RUST_BACKTRACE=1`.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs the binary with `args`, `env`, `RUST_BACKTRACE=1`, and no
/// `PURGE_*` variable of the test's own environment; returns the exit code and stderr.
fn run(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_purge-service"));
    cmd.args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env("RUST_BACKTRACE", "1");
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("PURGE_")) {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().copied());
    let mut child = cmd.spawn().unwrap();
    let until = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > until {
            let _ = child.kill();
            panic!("the binary did not exit on a configuration mistake");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status.code(), stderr)
}

/// The message and its causes, without a backtrace or a panic.
fn assert_cause_only(stderr: &str) {
    assert!(stderr.starts_with("error: "), "{stderr}");
    let lower = stderr.to_lowercase();
    assert!(
        !lower.contains("backtrace") && !lower.contains("panicked"),
        "{stderr}"
    );
}

#[test]
fn a_bad_config_file_prints_its_cause_without_a_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("purge.toml");
    std::fs::write(&path, "[server]\nlisten = \"not an address\"\n").unwrap();
    let (code, stderr) = run(&["--config", path.to_str().unwrap()], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert_cause_only(&stderr);
    assert!(
        stderr.contains("loading configuration") && stderr.contains("listen"),
        "{stderr}"
    );
    let (code, stderr) = run(&["--config", "/nonexistent/purge.toml"], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert_cause_only(&stderr);
    assert!(stderr.contains("/nonexistent/purge.toml"), "{stderr}");
    assert!(stderr.contains("No such file"), "the io cause: {stderr}");
}

#[test]
fn provider_variables_without_a_file_say_they_replace_the_default_provider() {
    let (code, stderr) = run(&[], &[("PURGE_PROVIDERS__0__DELAY", "1h")]);
    assert_eq!(code, Some(2), "{stderr}");
    assert_cause_only(&stderr);
    assert!(stderr.contains("missing field `name`"), "{stderr}");
    assert!(
        stderr.contains("replace the default sandbox provider") && stderr.contains("NAME and TYPE"),
        "{stderr}"
    );
}
