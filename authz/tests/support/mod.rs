//! Helpers shared by the integration tests of the `meshauthz` binary (each test file includes
//! this module with `mod support;`): running the binary, reading the line it announces itself
//! with, waiting for a condition.

#![allow(dead_code, reason = "each test file uses a subset")]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The repository root (tests run the binary there, so relative paths in the repo resolve).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `meshauthz ARGS` in the repository root, to completion, without the environment variables
/// that would change its defaults.
pub fn meshauthz(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshauthz"))
        .args(args)
        .current_dir(repo())
        .env_remove("AUTHZ_GRPC_ADDR")
        .env_remove("AUTHZ_ADMIN_ADDR")
        .env_remove("AUTHZ_LOG_FORMAT")
        .output()
        .expect("run meshauthz")
}

/// Spawns `command` with its standard output piped and waits for its first line (the servers
/// print `meshauthz serving ...` once they listen). A process that prints nothing within
/// `limit` is killed and the test fails with `log` (its standard error, when kept in a file).
pub fn spawn_announced(
    command: &mut Command,
    limit: Duration,
    log: Option<&Path>,
) -> (Child, String) {
    let mut child = command
        .stdout(Stdio::piped())
        .spawn()
        .expect("start meshauthz");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    match rx.recv_timeout(limit) {
        Ok(line) => (child, line),
        Err(_) => {
            let _ = child.kill();
            let text = log
                .and_then(|p| std::fs::read_to_string(p).ok())
                .unwrap_or_default();
            panic!("{command:?} did not start within {limit:?}:\n{text}");
        }
    }
}

/// `value` of `name=value` in an announcement line (`name` given with its `=`).
pub fn field(line: &str, name: &str) -> String {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(name))
        .unwrap_or_else(|| panic!("no `{name}` in `{line}`"))
        .to_string()
}

/// Polls `f` every 20 ms for at most `limit` (blocking: admin-port polls and file reads only).
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}
