//! Agreement of the three enforcement points on the conformance corpus: the CLI (`meshauthz
//! test --results`, the engine in-process), the ext_authz service behind Envoy and the native
//! filter inside Envoy (the two replays of [`crate::replay`]).
//!
//! Each point's answer for a case becomes a [`Seen`]; a case is compared among the points that
//! ran it (a point that skipped it is left out), and any two answers that differ make the case
//! a disagreement. What a client sees cannot always tell DENY from UNAUTHENTICATED: a closed TCP
//! connection, or a 400 that Envoy answered itself before any enforcement point, is only "not
//! ALLOW" ([`Seen::NotAllow`]), which agrees with DENY and UNAUTHENTICATED but not with ALLOW.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::replay::{effective_status, reached_upstream, Answer, CaseRecord, Outcome};
use crate::wire::TcpOutcome;

/// A verdict as one enforcement point gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    Allow,
    Deny,
    Unauthenticated,
    /// Only known not to be ALLOW (why: a closed TCP connection, a 400 from Envoy itself).
    NotAllow(String),
    /// No verdict at all (no answer, an unexpected status, an unknown CLI verdict).
    Other(String),
}

impl Seen {
    /// The CLI's `got`.
    pub fn from_cli(got: &str) -> Seen {
        match got {
            "ALLOW" => Seen::Allow,
            "DENY" => Seen::Deny,
            "UNAUTHENTICATED" => Seen::Unauthenticated,
            other => Seen::Other(format!("CLI verdict {other:?}")),
        }
    }

    /// What a client behind Envoy saw, as a verdict (statuses as [`crate::replay::judge`]
    /// reads them, gRPC local replies mapped back).
    pub fn from_answer(answer: &Answer) -> Seen {
        match answer {
            Answer::Http(r) => match effective_status(r) {
                200 if !reached_upstream(r) => {
                    Seen::Other("no verdict: a 200 local reply, the upstream not reached".into())
                }
                200 => Seen::Allow,
                403 => Seen::Deny,
                401 => Seen::Unauthenticated,
                400 => Seen::NotAllow("HTTP 400 answered by Envoy".to_string()),
                s => Seen::Other(format!("HTTP {s}")),
            },
            Answer::Tcp(TcpOutcome::Open) => Seen::Allow,
            Answer::Tcp(TcpOutcome::Closed(_)) => Seen::NotAllow("TCP closed".to_string()),
            Answer::Error(e) => Seen::Other(format!("no answer: {e}")),
        }
    }

    /// Whether two points agree.
    pub fn agrees(&self, other: &Seen) -> bool {
        use Seen::*;
        match (self, other) {
            (Other(_), _) | (_, Other(_)) => false,
            (NotAllow(_), NotAllow(_) | Deny | Unauthenticated)
            | (Deny | Unauthenticated, NotAllow(_)) => true,
            (a, b) => a == b,
        }
    }
}

impl std::fmt::Display for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Seen::Allow => f.write_str("ALLOW"),
            Seen::Deny => f.write_str("DENY"),
            Seen::Unauthenticated => f.write_str("UNAUTHENTICATED"),
            Seen::NotAllow(why) => write!(f, "not ALLOW ({why})"),
            Seen::Other(what) => f.write_str(what),
        }
    }
}

/// One point's part in a case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum At {
    /// The verdict, and what was seen (the answer as printed, or the CLI's determining policies).
    Ran(Seen, String),
    Skipped(String),
    /// The point has no result for this case at all (a file it could not use).
    Missing,
}

impl At {
    fn seen(&self) -> Option<&Seen> {
        match self {
            At::Ran(s, _) => Some(s),
            _ => None,
        }
    }
}

impl std::fmt::Display for At {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            At::Ran(seen, detail) if detail.is_empty() => write!(f, "{seen}"),
            At::Ran(seen, detail) => write!(f, "{seen} [{detail}]"),
            At::Skipped(why) => write!(f, "skipped ({why})"),
            At::Missing => f.write_str("MISSING (no result for this case)"),
        }
    }
}

/// The enforcement points, in report order.
pub const POINTS: [&str; 3] = ["CLI", "ext_authz", "native filter"];

/// One corpus case at the three points.
#[derive(Clone, Debug)]
pub struct Row {
    pub file: String,
    pub case: String,
    pub expect: Option<String>,
    /// Indexed as [`POINTS`].
    pub at: [At; 3],
}

impl Row {
    /// How many points gave a verdict.
    pub fn compared_at(&self) -> usize {
        self.at.iter().filter(|a| a.seen().is_some()).count()
    }

    /// Whether any two points that ran the case disagree.
    pub fn disagrees(&self) -> bool {
        let seen: Vec<&Seen> = self.at.iter().filter_map(At::seen).collect();
        seen.iter()
            .enumerate()
            .any(|(i, a)| seen[i + 1..].iter().any(|b| !a.agrees(b)))
    }

    pub fn missing(&self) -> bool {
        self.at.contains(&At::Missing)
    }

    fn line(&self) -> String {
        let mut s = format!("{}: {}", self.file, self.case);
        if let Some(e) = &self.expect {
            let _ = write!(s, " (file expects {e})");
        }
        for (name, at) in POINTS.iter().zip(&self.at) {
            let _ = write!(s, "\n    {name:<13} {at}");
        }
        s
    }
}

/// One line of `meshauthz test --results`.
#[derive(Clone, Debug, Deserialize)]
pub struct CliResult {
    pub file: String,
    pub case: String,
    pub expected: String,
    pub got: String,
    #[serde(default)]
    pub determining: Vec<String>,
}

/// The CLI's results keyed by (file name, case name).
pub type CliResults = BTreeMap<(String, String), CliResult>;

/// Reads a `--results` file. Files are keyed by their name (the corpus is one directory).
pub fn read_cli_results(path: &Path) -> Result<CliResults> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = CliResults::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let r: CliResult = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: {line}", path.display(), i + 1))?;
        let file = Path::new(&r.file)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| r.file.clone());
        let key = (file, r.case.clone());
        if out.insert(key.clone(), r).is_some() {
            bail!("{}: case {:?} of {} twice", path.display(), key.1, key.0);
        }
    }
    Ok(out)
}

/// Runs `meshauthz test --quiet --results <out_dir>/cli.jsonl <corpus>` from the workspace
/// root and reads the results. The exit status may say that a case failed its expectation
/// (that is the corpus tests' business, not agreement); a file the CLI cannot use is an error.
pub fn run_cli(bin: &Path, corpus: &Path, out_dir: &Path) -> Result<CliResults> {
    let results: PathBuf = out_dir.join("cli.jsonl");
    let out = Command::new(bin)
        .args(["test", "--quiet", "--results"])
        .arg(&results)
        .arg(corpus)
        .current_dir(crate::workspace_root())
        .output()
        .with_context(|| format!("running {} test", bin.display()))?;
    match out.status.code() {
        Some(0) => {}
        Some(1) => eprintln!(
            "note: `meshauthz test` reports cases that fail their expectation:\n{}",
            String::from_utf8_lossy(&out.stdout)
        ),
        _ => bail!(
            "`meshauthz test --results` failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
    read_cli_results(&results)
}

/// Every case at the three points.
#[derive(Debug, Default)]
pub struct Agreement {
    pub rows: Vec<Row>,
}

fn at_envoy(r: &CaseRecord) -> At {
    match &r.outcome {
        Outcome::Skipped(why) => At::Skipped(why.clone()),
        Outcome::Replayed { answer, .. } => At::Ran(Seen::from_answer(answer), answer.to_string()),
    }
}

impl Agreement {
    /// Joins the three points' results by (file name, case name), in corpus order (the
    /// ext_authz replay's, then anything only the others know).
    pub fn build(cli: &CliResults, ext_authz: &[CaseRecord], native: &[CaseRecord]) -> Agreement {
        let key = |r: &CaseRecord| (r.file.clone(), r.case.clone());
        let ext: BTreeMap<_, _> = ext_authz.iter().map(|r| (key(r), r)).collect();
        let nat: BTreeMap<_, _> = native.iter().map(|r| (key(r), r)).collect();
        let mut order: Vec<(String, String)> = Vec::new();
        let mut seen = BTreeSet::new();
        let keys = ext_authz
            .iter()
            .map(key)
            .chain(native.iter().map(key))
            .chain(cli.keys().cloned());
        for k in keys {
            if seen.insert(k.clone()) {
                order.push(k);
            }
        }
        let rows = order
            .into_iter()
            .map(|k| {
                let c = cli.get(&k);
                let e = ext.get(&k);
                let n = nat.get(&k);
                let expect = e
                    .or(n)
                    .map(|r| r.expect.as_str().to_string())
                    .or_else(|| c.map(|c| c.expected.clone()));
                Row {
                    at: [
                        c.map_or(At::Missing, |c| {
                            At::Ran(
                                Seen::from_cli(&c.got),
                                if c.determining.is_empty() {
                                    String::new()
                                } else {
                                    format!("determining: {}", c.determining.join(", "))
                                },
                            )
                        }),
                        e.map_or(At::Missing, |r| at_envoy(r)),
                        n.map_or(At::Missing, |r| at_envoy(r)),
                    ],
                    file: k.0,
                    case: k.1,
                    expect,
                }
            })
            .collect();
        Agreement { rows }
    }

    pub fn disagreements(&self) -> Vec<&Row> {
        self.rows.iter().filter(|r| r.disagrees()).collect()
    }

    /// Every disagreement: file, case and the three verdicts.
    pub fn disagreement_lines(&self) -> String {
        self.disagreements()
            .iter()
            .map(|r| format!("DISAGREE {}\n", r.line()))
            .collect()
    }

    pub fn missing(&self) -> Vec<&Row> {
        self.rows.iter().filter(|r| r.missing()).collect()
    }

    /// `N cases: compared at 3 points: a, at 2 points: b, at fewer: c; disagreements: d`.
    pub fn summary(&self) -> String {
        let at = |n: usize| self.rows.iter().filter(|r| r.compared_at() == n).count();
        format!(
            "{} cases: compared at 3 points: {}, at 2 points: {}, at fewer than 2 (not \
             compared): {}; disagreements: {}",
            self.rows.len(),
            at(3),
            at(2),
            at(1) + at(0),
            self.disagreements().len()
        )
    }

    /// Every disagreement and missing case with the three verdicts, which points skipped what
    /// (reason -> count), and the summary.
    pub fn report(&self) -> String {
        let mut s = self.disagreement_lines();
        for r in self.missing() {
            let _ = writeln!(s, "MISSING {}", r.line());
        }
        let mut skips: BTreeMap<(&str, &str), usize> = BTreeMap::new();
        for r in &self.rows {
            for (name, at) in POINTS.iter().zip(&r.at) {
                if let At::Skipped(why) = at {
                    *skips.entry((name, why.as_str())).or_default() += 1;
                }
            }
        }
        for ((name, why), n) in skips {
            let _ = writeln!(s, "not compared at {name}: {n} x {why}");
        }
        let _ = writeln!(s, "{}", self.summary());
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::corpus::Expect;
    use crate::replay::Verdict;
    use crate::wire::HttpResponse;

    fn http(status: u16) -> Answer {
        Answer::Http(HttpResponse {
            status,
            headers: vec![(crate::wire::UPSTREAM_MARK.to_string(), "1".to_string())]
                .into_iter()
                .filter(|_| status == 200)
                .collect(),
            body: String::new(),
        })
    }

    fn rec(case: &str, outcome: Outcome) -> CaseRecord {
        CaseRecord {
            file: "f.yaml".to_string(),
            case: case.to_string(),
            expect: Expect::Deny,
            tcp: false,
            outcome,
        }
    }

    fn ran(answer: Answer) -> Outcome {
        Outcome::Replayed {
            answer,
            verdict: Verdict::Pass,
            request: String::new(),
        }
    }

    fn cli(case: &str, got: &str) -> ((String, String), CliResult) {
        (
            ("f.yaml".to_string(), case.to_string()),
            CliResult {
                file: "tests/conformance/f.yaml".to_string(),
                case: case.to_string(),
                expected: "DENY".to_string(),
                got: got.to_string(),
                determining: vec!["foo/deny".to_string()],
            },
        )
    }

    #[test]
    fn agreement_rules() {
        use Seen::*;
        assert!(Deny.agrees(&Deny));
        assert!(!Deny.agrees(&Unauthenticated));
        assert!(NotAllow("tcp".into()).agrees(&Deny));
        assert!(Unauthenticated.agrees(&NotAllow("tcp".into())));
        assert!(!NotAllow("tcp".into()).agrees(&Allow));
        assert!(!Other("x".into()).agrees(&Other("x".into())));
        let tcp = Answer::Tcp(TcpOutcome::Closed("EOF".into()));
        assert_eq!(Seen::from_answer(&tcp), NotAllow("TCP closed".into()));
        assert_eq!(Seen::from_answer(&http(401)), Unauthenticated);
        assert!(matches!(Seen::from_answer(&http(503)), Other(_)));
        // A gRPC local reply with grpc-status 0 never reached the upstream: no verdict.
        let local = Answer::Http(HttpResponse {
            status: 200,
            headers: vec![("grpc-status".into(), "0".into())],
            body: String::new(),
        });
        assert!(matches!(Seen::from_answer(&local), Other(_)));
        assert_eq!(
            crate::replay::judge(Expect::Allow, &local),
            crate::replay::Verdict::Fail
        );
    }

    #[test]
    fn names_every_disagreement_and_compares_among_the_points_that_ran() {
        let cli: CliResults = [
            cli("same", "DENY"),
            cli("native differs", "DENY"),
            cli("skipped natively", "ALLOW"),
            cli("only cli", "ALLOW"),
        ]
        .into_iter()
        .collect();
        let ext = vec![
            rec("same", ran(http(403))),
            rec("native differs", ran(http(403))),
            rec("skipped natively", ran(http(200))),
            rec("only cli", Outcome::Skipped("remoteIp".into())),
        ];
        let native = vec![
            rec("same", ran(http(403))),
            rec("native differs", ran(http(200))),
            rec("skipped natively", Outcome::Skipped("tcp".into())),
            rec("only cli", Outcome::Skipped("remoteIp".into())),
        ];
        let a = Agreement::build(&cli, &ext, &native);
        let d = a.disagreements();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].case, "native differs");
        let report = a.report();
        assert!(
            report.contains("DISAGREE f.yaml: native differs")
                && report.contains("CLI           DENY")
                && report.contains("ext_authz     DENY")
                && report.contains("native filter ALLOW"),
            "{report}"
        );
        assert_eq!(
            a.summary(),
            "4 cases: compared at 3 points: 2, at 2 points: 1, at fewer than 2 (not compared): \
             1; disagreements: 1"
        );
        assert!(a.missing().is_empty());

        // A case the CLI has no line for is missing, not silently agreed.
        let a = Agreement::build(&CliResults::new(), &ext[..1], &native[..1]);
        assert_eq!(a.missing().len(), 1);
        assert_eq!(a.rows[0].compared_at(), 2);
    }

    #[test]
    fn reads_cli_result_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cli.jsonl");
        std::fs::write(
            &p,
            "{\"file\":\"tests/conformance/01-scopes.yaml\",\"case\":\"a\",\"expected\":\"ALLOW\",\"got\":\"DENY\",\"determining\":[\"x\"]}\n",
        )
        .unwrap();
        let r = read_cli_results(&p).unwrap();
        let got = &r[&("01-scopes.yaml".to_string(), "a".to_string())];
        assert_eq!(got.got, "DENY");
        assert_eq!(got.determining, vec!["x".to_string()]);
    }
}
