//! `meshauthz serve`: finding (and building) the binary, starting it on ephemeral ports, and
//! reading the addresses it announces.
//!
//! The contract: `meshauthz serve --policies PATH... [--mesh FILE] --grpc-addr 127.0.0.1:0
//! --admin-addr 127.0.0.1:0 [--expose-decision-headers]` prints `meshauthz serving
//! grpc=<addr> admin=<addr>` on stdout once listening; `/readyz` on the admin port answers 200
//! once a snapshot is loaded.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::wire::http_get;

/// The `target/<profile>` directory this test binary was built into (`target/<profile>/deps/x`).
fn profile_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let deps = exe.parent()?;
    if deps.file_name()? != "deps" {
        return None;
    }
    Some(deps.parent()?.to_path_buf())
}

/// The meshauthz binary: `$MESHAUTHZ_BIN` as is, else `target/<profile>/meshauthz` of this
/// test build, brought up to date once per process with `cargo build -p authz --bin meshauthz`
/// (a no-op when fresh), so the suite never runs a stale server.
pub fn binary() -> Result<PathBuf> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| locate_and_build().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

fn locate_and_build() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("MESHAUTHZ_BIN").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("MESHAUTHZ_BIN={} is not a file", p.display());
        }
        return Ok(p);
    }
    let (mut cmd, dir) = cargo_build(&["-p", "authz", "--bin", "meshauthz"]);
    let out = cmd.output().context("running cargo build -p authz")?;
    if !out.status.success() {
        bail!(
            "`cargo build -p authz --bin meshauthz` failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let bin = dir.join(format!("meshauthz{}", std::env::consts::EXE_SUFFIX));
    if !bin.is_file() {
        bail!("{} is missing after cargo build", bin.display());
    }
    Ok(bin)
}

/// `cargo build --quiet ARGS` in this test build's profile and target directory, run from the
/// workspace root, and that profile's output directory (`target/<profile>`).
pub(crate) fn cargo_build(args: &[&str]) -> (Command, PathBuf) {
    let root = crate::workspace_root();
    let dir = profile_dir().unwrap_or_else(|| root.join("target/debug"));
    let profile = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug")
        .to_string();
    let target_dir = dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| root.join("target"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet"])
        .args(args)
        .env("CARGO_TARGET_DIR", &target_dir)
        .current_dir(&root);
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    (cmd, dir)
}

/// Arguments of `meshauthz serve`.
#[derive(Clone, Debug, Default)]
pub struct ServeArgs {
    pub policies: Vec<PathBuf>,
    pub mesh: Option<PathBuf>,
    pub expose_decision_headers: bool,
}

/// A running `meshauthz serve`, killed on drop.
#[derive(Debug)]
pub struct Meshauthz {
    child: Option<Child>,
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    log: PathBuf,
}

const START_TIMEOUT: Duration = Duration::from_secs(30);

impl Meshauthz {
    /// Starts the server with its logs in `dir/meshauthz.log`; returns once it announced its
    /// addresses and `/readyz` answers 200.
    pub fn start(bin: &Path, args: &ServeArgs, dir: &Path) -> Result<Meshauthz> {
        let log = dir.join("meshauthz.log");
        let mut cmd = Command::new(bin);
        cmd.arg("serve").arg("--policies").args(&args.policies);
        if let Some(mesh) = &args.mesh {
            cmd.arg("--mesh").arg(mesh);
        }
        cmd.args(["--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"]);
        if args.expose_decision_headers {
            cmd.arg("--expose-decision-headers");
        }
        let mut child = cmd
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {} serve", bin.display()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no stdout pipe"))?;
        let mut server = Meshauthz {
            child: Some(child),
            grpc: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
        };
        let (tx, rx) = mpsc::channel();
        // Reads the announcement, then keeps draining stdout so the server never blocks on it.
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if let Some(addrs) = parse_announcement(&line) {
                            let _ = tx.send(addrs);
                            break;
                        }
                    }
                }
            }
            let _ = std::io::copy(&mut reader.take(u64::MAX), &mut std::io::sink());
        });
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok((grpc, admin)) => {
                    server.grpc = grpc;
                    server.admin = admin;
                    break;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // stdout closed without the announcement: the server exited or never prints it.
                    std::thread::sleep(Duration::from_millis(100));
                    let status = server.try_status();
                    bail!(
                        "meshauthz serve closed stdout without announcing `meshauthz serving \
                         grpc=<addr> admin=<addr>` (exit status: {status}):\n{}",
                        server.log()
                    );
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "meshauthz serve did not announce its addresses within {START_TIMEOUT:?}:\n{}",
                    server.log()
                );
            }
        }
        loop {
            if let Ok((200, _)) = http_get(server.admin, "/readyz") {
                return Ok(server);
            }
            if Instant::now() > deadline {
                bail!(
                    "meshauthz /readyz not 200 within {START_TIMEOUT:?}:\n{}",
                    server.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn try_status(&mut self) -> String {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(s))) => s.to_string(),
            Some(Ok(None)) => "still running".to_string(),
            Some(Err(e)) => e.to_string(),
            None => "stopped".to_string(),
        }
    }

    /// Kills the server and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// GET on the admin port.
    pub fn admin_get(&self, path: &str) -> Result<(u16, String)> {
        http_get(self.admin, path)
    }

    /// What the server wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Meshauthz {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `meshauthz serving grpc=<addr> admin=<addr>` -> the two addresses.
pub fn parse_announcement(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let rest = line.trim().strip_prefix("meshauthz serving ")?;
    let mut grpc = None;
    let mut admin = None;
    for part in rest.split_whitespace() {
        if let Some(a) = part.strip_prefix("grpc=") {
            grpc = a.parse().ok();
        } else if let Some(a) = part.strip_prefix("admin=") {
            admin = a.parse().ok();
        }
    }
    Some((grpc?, admin?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcement() {
        assert_eq!(
            parse_announcement("meshauthz serving grpc=127.0.0.1:4001 admin=127.0.0.1:4002\n"),
            Some((
                "127.0.0.1:4001".parse().unwrap(),
                "127.0.0.1:4002".parse().unwrap()
            ))
        );
        assert_eq!(parse_announcement("starting"), None);
    }
}
