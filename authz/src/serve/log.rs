//! Logging of `meshauthz serve`: the tracing subscriber (text or JSON, on standard error, so that
//! standard output carries only the `meshauthz serving ...` line) and the decision log line.
//!
//! State owned: the process-wide subscriber with its writer thread (log lines are formatted on
//! the thread that logs and written to standard error by a dedicated thread, in batches, so a
//! Check never waits on a write system call; when the writer falls 64k lines behind, logging threads wait
//! rather than drop lines), and the decision id generator.
//!
//! One line per Check, target `meshauthz::decision`, level INFO: decision id, workload, source
//! principal, request principal, method, path (without the query, which may carry a token),
//! verdict, reason, determining policies, dry-run and audit matches, latency and the snapshot
//! generation. Filter with `RUST_LOG` (e.g. `RUST_LOG=info,meshauthz::decision=warn`).

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use authz_engine::{Decision, PolicyMatch, RequestAttrs};
use clap::ValueEnum;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Flushes the log lines still queued when dropped: keep it until the process ends.
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard {
    _writer: Option<tracing_appender::non_blocking::WorkerGuard>,
}

impl std::fmt::Debug for LogGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogGuard")
    }
}

/// Installs the global subscriber (once; later calls do nothing).
pub fn init(format: LogFormat) -> LogGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(64 * 1024)
        .thread_name("meshauthz-log")
        // The writer thread drains every queued line, then flushes: under load, one write
        // system call carries many lines.
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let installed = match format {
        LogFormat::Text => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    LogGuard {
        _writer: installed.is_ok().then_some(guard),
    }
}

/// Unique, unguessable-enough decision ids: a per-process random prefix and a bijective mix
/// of a counter (so two decisions of one process never share an id). 32 hex digits.
#[derive(Debug)]
pub struct DecisionIds {
    prefix: u64,
    key: u64,
    counter: AtomicU64,
}

impl Default for DecisionIds {
    fn default() -> Self {
        let seed = |salt: u64| RandomState::new().hash_one(salt);
        DecisionIds {
            prefix: seed(1),
            key: seed(2),
            counter: AtomicU64::new(0),
        }
    }
}

impl DecisionIds {
    pub fn next(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}{:016x}", self.prefix, splitmix64(n ^ self.key))
    }
}

/// A bijection on u64 (SplitMix64's finalizer).
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn list(matches: &[PolicyMatch]) -> String {
    let parts: Vec<String> = matches.iter().map(ToString::to_string).collect();
    parts.join(", ")
}

/// Logs one decision.
pub fn decision(
    id: &str,
    workload: &str,
    attrs: &RequestAttrs,
    d: &Decision,
    latency: Duration,
    detail: Option<&str>,
) {
    let path = attrs.path.split(['?', '#']).next().unwrap_or_default();
    let path: String = path.chars().take(512).collect();
    let request_principal = d
        .request_auth
        .as_ref()
        .map(|a| a.principal.as_str())
        .unwrap_or_default();
    let errors = d.errors.join("; ");
    tracing::info!(
        target: "meshauthz::decision",
        decision_id = id,
        workload,
        protocol = ?attrs.protocol,
        source_principal = attrs.source_principal.as_deref().unwrap_or_default(),
        source_ip = %attrs.source_ip.map(|i| i.to_string()).unwrap_or_default(),
        request_principal,
        method = attrs.method.as_str(),
        path = path.as_str(),
        verdict = d.verdict.as_str(),
        reason = d.reason.name(),
        detail = detail.unwrap_or_default(),
        policies = list(&d.determining),
        dry_run = list(&d.dry_run),
        audit = list(&d.audit),
        errors = errors.as_str(),
        latency_us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
        generation = d.generation,
        "decision"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_hex() {
        let ids = DecisionIds::default();
        let a = ids.next();
        let b = ids.next();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
