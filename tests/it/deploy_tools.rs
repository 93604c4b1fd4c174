//! Helpers for the deployment tests (image, chart): run a tool and keep its output, read
//! rendered YAML, start and stop the real binary as a child process.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output};
use std::time::Duration;

/// The repository root (where Cargo.toml is).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `cmd`; panics with a hint when the tool is not installed.
pub fn output(cmd: &mut Command) -> Output {
    let program = cmd.get_program().to_string_lossy().into_owned();
    cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {program} (scripts/test installs it; see scripts/tools.sh): {e}")
    })
}

/// Runs `cmd` and returns its stdout; panics with stdout and stderr when it fails.
pub fn run_ok(cmd: &mut Command) -> String {
    let shown = format!("{cmd:?}");
    let out = output(cmd);
    assert!(
        out.status.success(),
        "{shown} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// The documents of a multi-document YAML text, as JSON (PyYAML: kubernetes-validate's own
/// dependency, installed with it).
pub fn yaml_docs(yaml: &str) -> Vec<serde_json::Value> {
    use std::io::Write;
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import sys, json, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the YAML does not parse:\n{yaml}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The document of `kind` named `name` (any name when None).
pub fn find<'a>(
    docs: &'a [serde_json::Value],
    kind: &str,
    name: Option<&str>,
) -> Option<&'a serde_json::Value> {
    docs.iter().find(|d| {
        d["kind"] == kind && name.is_none_or(|n| d["metadata"]["name"].as_str() == Some(n))
    })
}

/// A child process killed when dropped; its stdout and stderr go to a file shown on failure.
pub struct Process {
    pub child: Child,
    log: tempfile::NamedTempFile,
}

impl Process {
    pub fn spawn(cmd: &mut Command) -> Process {
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = cmd
            .stdout(log.reopen().unwrap())
            .stderr(log.reopen().unwrap())
            .spawn()
            .expect("the process starts");
        Process { child, log }
    }

    /// What the process wrote so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn terminate(&self) {
        run_ok(Command::new("kill").args(["-TERM", &self.pid().to_string()]));
    }

    /// Polls until the process exits, failing the test after `deadline`.
    pub async fn exit(&mut self, deadline: Duration) -> ExitStatus {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < until,
                "the process did not exit within {deadline:?}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Fails the test if the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("the service exited early: {status}\n{}", self.log());
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until gRPC health (service "") at `addr` is SERVING, using the library's own probe.
pub async fn wait_serving(addr: &str, process: &mut Process) {
    crate::support::eventually(
        Duration::from_secs(30),
        &format!("{addr} is SERVING"),
        || {
            process.assert_running();
            async move {
                purge_service::health_probe::check(
                    addr,
                    Duration::from_secs(1),
                    &Default::default(),
                )
                .await
                .ok()
            }
        },
    )
    .await;
}

/// Writes `text` to `path`, creating its directory.
pub fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}
