//! The native filter (`libmeshauthz_filter.so`) inside a real Envoy 1.40: the whole conformance
//! corpus replayed through it over plaintext and mTLS listeners (one of each per workload, as
//! the module's config guards one workload), and the agreement of the three enforcement points,
//! the CLI, the ext_authz service and the native filter, on every corpus case (issue 4).
//!
//! The module is built with `cargo build -p proxy-filter` by the harness (never a stale one).
//! Envoy is found as for tests/envoy.rs; without it each test prints `skipped: no envoy` and
//! passes, except when `CI` is set: then it fails. See tests/e2e/README.md.
//!
//! The two corpus replays (ext_authz, native) run once per test binary and are shared between
//! the tests (a `OnceLock` each).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use meshauthz_e2e::agreement::{self, Agreement};
use meshauthz_e2e::envoy;
use meshauthz_e2e::replay::{
    self, Env, Mode, Outcome, Replay, NATIVE_JWT_CLAIMS_SKIP, NATIVE_SOURCE_IP_SKIP,
    NATIVE_TCP_SKIP,
};

/// The corpus, relative to the workspace root (as the CLI is run).
const CORPUS: &str = "tests/conformance/";

/// The corpus replay in `mode`, computed once per process (concurrent callers wait for it).
fn corpus_replay(mode: Mode, envoy: &Path) -> &'static Replay {
    static EXT_AUTHZ: OnceLock<Result<Replay, String>> = OnceLock::new();
    static NATIVE: OnceLock<Result<Replay, String>> = OnceLock::new();
    let cell = match mode {
        Mode::ExtAuthz => &EXT_AUTHZ,
        Mode::Native => &NATIVE,
    };
    let result = cell.get_or_init(|| {
        let started = Instant::now();
        let replay = Env::new(envoy.to_path_buf()).and_then(|env| {
            replay::replay_corpus(&env, mode, &meshauthz_e2e::workspace_root().join(CORPUS))
        });
        eprintln!(
            "[{}] corpus replay took {:.1} s",
            mode.as_str(),
            started.elapsed().as_secs_f64()
        );
        replay.map_err(|e| format!("{e:#}"))
    });
    match result {
        Ok(r) => r,
        Err(e) => panic!("the {} corpus replay could not run: {e}", mode.as_str()),
    }
}

fn percent(n: usize, of: usize) -> f64 {
    if of == 0 {
        0.0
    } else {
        100.0 * n as f64 / of as f64
    }
}

/// The whole `tests/conformance/` corpus through Envoy with the native filter: every case the
/// filter can be sent gets the answer the file expects. TCP cases, `jwtClaims` cases and cases
/// with a source address other than the harness's loopback peer are skipped with their reasons
/// (the module is an HTTP filter, it verifies tokens itself, and its `source.ip` is the
/// physical peer, which a PROXY header does not set); at least 80 % of the HTTP cases must be
/// replayed.
#[test]
fn conformance_corpus_through_native_filter() {
    let Some(envoy) = envoy::envoy_or_skip().unwrap() else {
        return;
    };
    let replay = corpus_replay(Mode::Native, &envoy);
    let report = replay.tally.report();
    let (http_replayed, http_total) = replay.http_coverage();
    println!("{report}");
    println!(
        "HTTP cases replayed through the native filter: {http_replayed} of {http_total} \
         ({:.1}%)",
        percent(http_replayed, http_total)
    );
    assert!(
        replay.tally.failures.is_empty(),
        "{} case(s) answered differently through the native filter:\n{report}",
        replay.tally.failures.len(),
    );
    assert!(
        http_total > 0 && http_replayed * 5 >= http_total * 4,
        "only {http_replayed} of {http_total} HTTP cases replayed through the native filter \
         (< 80%):\n{report}"
    );
}

/// For every corpus case, the CLI (`meshauthz test --results`), the ext_authz service behind
/// Envoy and the native filter inside Envoy give the same verdict. A case skipped at one point
/// is compared among the others; the test fails naming every case (file, name, the three
/// verdicts) where two points disagree, and every case a point has no result for. It also
/// checks that the native replay skips nothing the ext_authz replay ran, except for its own three
/// reasons (TCP, `jwtClaims`, a source address other than the physical peer).
#[test]
fn enforcement_points_agree() {
    let Some(envoy) = envoy::envoy_or_skip().unwrap() else {
        return;
    };
    let started = Instant::now();
    let out = tempfile::Builder::new()
        .prefix("meshauthz-agreement-")
        .tempdir()
        .unwrap();
    let (cli, ext_authz, native) = std::thread::scope(|s| {
        let cli = s.spawn(|| {
            let bin = meshauthz_e2e::meshauthz::binary()?;
            agreement::run_cli(&bin, Path::new(CORPUS), out.path())
        });
        let ext_authz = s.spawn(|| corpus_replay(Mode::ExtAuthz, &envoy));
        let native = corpus_replay(Mode::Native, &envoy);
        (
            cli.join().unwrap().unwrap(),
            ext_authz.join().unwrap(),
            native,
        )
    });
    let agreement = Agreement::build(&cli, &ext_authz.records, &native.records);
    let report = agreement.report();
    println!("{report}");
    eprintln!(
        "agreement (CLI + both replays) took {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // The native replay runs everything the ext_authz replay runs, but TCP, jwtClaims and
    // source addresses other than the harness's own (the filter reads the physical peer).
    let ran = |r: &Replay| -> BTreeSet<(String, String)> {
        r.records
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Replayed { .. }))
            .map(|r| (r.file.clone(), r.case.clone()))
            .collect()
    };
    let (ext_ran, native_ran) = (ran(ext_authz), ran(native));
    let unexplained: Vec<String> = native
        .records
        .iter()
        .filter(|r| ext_ran.contains(&(r.file.clone(), r.case.clone())))
        .filter(|r| !native_ran.contains(&(r.file.clone(), r.case.clone())))
        .filter(|r| {
            !matches!(&r.outcome, Outcome::Skipped(why)
                if why == NATIVE_TCP_SKIP || why == NATIVE_JWT_CLAIMS_SKIP
                    || why == NATIVE_SOURCE_IP_SKIP)
        })
        .map(|r| format!("{}: {}: {:?}", r.file, r.case, r.outcome))
        .collect();
    assert!(
        unexplained.is_empty(),
        "replayed through ext_authz but not through the native filter:\n{}",
        unexplained.join("\n")
    );

    let missing = agreement.missing();
    assert!(
        missing.is_empty(),
        "{} case(s) have no result at some enforcement point:\n{report}",
        missing.len()
    );
    let disagreements = agreement.disagreements();
    assert!(
        disagreements.is_empty(),
        "{} case(s) where the enforcement points disagree:\n{}{}",
        disagreements.len(),
        agreement.disagreement_lines(),
        agreement.summary()
    );
    assert!(
        agreement.rows.iter().any(|r| r.compared_at() == 3),
        "no case compared at all three points:\n{report}"
    );
}

/// The module the tests load is the normal build of `cargo build -p proxy-filter` (not the
/// `test-panic` build `cargo test -p proxy-filter` makes), in this test build's profile.
#[test]
fn native_module_is_the_fresh_normal_build() {
    let Some(_) = envoy::envoy_or_skip().unwrap() else {
        return;
    };
    let so: PathBuf = meshauthz_e2e::native::module().unwrap();
    assert_eq!(
        so.file_name().and_then(|n| n.to_str()),
        Some(
            format!(
                "lib{}{}",
                meshauthz_e2e::native::MODULE_NAME,
                std::env::consts::DLL_SUFFIX
            )
            .as_str()
        )
    );
    assert_ne!(
        so.parent()
            .and_then(Path::file_name)
            .and_then(|n| n.to_str()),
        Some("deps"),
        "{}",
        so.display()
    );
}
