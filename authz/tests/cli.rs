//! The `meshauthz` binary as a user runs it: exit codes, output contracts
//! (`shared/spec/test-format.md`), the bundled examples and the conformance corpus.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::path::{Path, PathBuf};
use std::process::Output;

mod support;

use support::{meshauthz, repo};

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `N passed, M failed` from the last line.
fn totals(o: &Output) -> (usize, usize) {
    let out = stdout(o);
    let last = out.lines().last().unwrap_or_default().to_string();
    let words: Vec<&str> = last.split_whitespace().collect();
    assert_eq!(words.len(), 4, "closing line `{last}`");
    assert_eq!(
        (words[1], words[3]),
        ("passed,", "failed"),
        "closing line `{last}`"
    );
    (words[0].parse().unwrap(), words[2].parse().unwrap())
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn bundled_examples_pass() {
    let o = meshauthz(&["test", "policies/"]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let (passed, failed) = totals(&o);
    assert!(passed >= 20, "{passed}");
    assert_eq!(failed, 0);
}

#[test]
fn conformance_corpus_passes() {
    let o = meshauthz(&["test", "--quiet", "tests/conformance/"]);
    let (passed, failed) = totals(&o);
    assert_eq!(failed, 0, "{}", stdout(&o));
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(passed >= 200, "only {passed} conformance cases");
    // --quiet prints failures only: nothing but the closing line.
    assert_eq!(stdout(&o).lines().count(), 1, "{}", stdout(&o));
}

#[test]
fn invalid_policies_make_the_file_unusable() {
    let dir = repo().join("tests/conformance-invalid");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 10);
    for f in files {
        let o = meshauthz(&["test", f.to_str().unwrap()]);
        let out = stdout(&o);
        assert_eq!(o.status.code(), Some(2), "{}: {out}", f.display());
        assert!(out.contains("ERROR"), "{out}");
        assert!(
            out.contains(f.file_name().unwrap().to_str().unwrap()),
            "{out}"
        );
        assert_eq!(totals(&o), (0, 0), "no case of an unusable file runs");
    }
}

#[test]
fn pass_and_fail_lines_follow_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "t.yaml",
        r#"
workloads:
  - {namespace: foo, name: httpbin, labels: {app: httpbin}}
policies:
  - |
    apiVersion: security.istio.io/v1
    kind: AuthorizationPolicy
    metadata: {name: deny-admin, namespace: foo}
    spec:
      action: DENY
      rules: [{to: [{operation: {paths: ["/admin"]}}]}]
cases:
  - name: admin is denied
    request: {workload: foo/httpbin, path: /admin}
    expect: DENY
    policy: foo/deny-admin
  - name: wrong expectation
    request: {workload: foo/httpbin, path: /admin}
    expect: ALLOW
"#,
    );
    let o = meshauthz(&["test", f.to_str().unwrap()]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains(&format!("PASS {}: admin is denied", f.display())),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "FAIL {}: wrong expectation: expected ALLOW, got DENY (DENY foo/deny-admin rule 0",
            f.display()
        )),
        "{out}"
    );
    assert_eq!(totals(&o), (1, 1));

    let o = meshauthz(&["test", "--quiet", f.to_str().unwrap()]);
    assert!(!stdout(&o).contains("PASS"), "{}", stdout(&o));
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is an IPv6 address to every block, as in
/// Envoy's CIDR matching: a policy may name such a block, a peer may have such an address, and
/// neither fails the file or the decision.
#[test]
fn ipv4_mapped_addresses_compare_as_ipv6() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "mapped.yaml",
        r#"
workloads:
  - {namespace: foo, name: deny-mapped, labels: {app: deny-mapped}}
  - {namespace: foo, name: allow-v4, labels: {app: allow-v4}}
policies:
  - |
    apiVersion: security.istio.io/v1
    kind: AuthorizationPolicy
    metadata: {name: deny-mapped, namespace: foo}
    spec:
      selector: {matchLabels: {app: deny-mapped}}
      action: DENY
      rules: [{from: [{source: {ipBlocks: ["::ffff:10.0.0.0/104"]}}]}]
    ---
    apiVersion: security.istio.io/v1
    kind: AuthorizationPolicy
    metadata: {name: allow-v4, namespace: foo}
    spec:
      selector: {matchLabels: {app: allow-v4}}
      rules: [{from: [{source: {remoteIpBlocks: ["10.0.0.0/8"]}}]}]
cases:
  - name: a mapped peer inside the mapped block is denied
    request: {workload: foo/deny-mapped, source: {ip: "::ffff:10.0.0.9"}}
    expect: DENY
    policy: foo/deny-mapped
  - name: the IPv4 peer of the same address is outside an IPv6 block
    request: {workload: foo/deny-mapped, source: {ip: 10.0.0.9}}
    expect: ALLOW
  - name: a mapped client is outside an IPv4 block
    request: {workload: foo/allow-v4, remoteIp: "::ffff:10.0.0.9"}
    expect: DENY
  - name: the IPv4 client is inside it
    request: {workload: foo/allow-v4, remoteIp: 10.0.0.9}
    expect: ALLOW
    policy: foo/allow-v4
"#,
    );
    let o = meshauthz(&["test", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(totals(&o), (4, 0));
}

#[test]
fn unknown_key_in_a_test_file_is_unusable() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "t.yaml",
        "workloads: []\ncases:\n  - name: x\n    request: {workload: foo/a, pth: /}\n    expect: ALLOW\n",
    );
    let o = meshauthz(&["test", f.to_str().unwrap()]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(
        out.contains("cases[0].request") && out.contains("pth"),
        "{out}"
    );

    let f = write(
        dir.path(),
        "u.yaml",
        "cases:\n  - name: x\n    request: {workload: foo/missing}\n    expect: ALLOW\n",
    );
    let o = meshauthz(&["test", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stdout(&o).contains("foo/missing"), "{}", stdout(&o));
}

#[test]
fn validate_lists_every_error_with_its_location() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "bad.yaml",
        r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: a, namespace: foo}
spec:
  rules:
  - when:
    - key: request.foo
      values: ["x"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: b, namespace: foo}
spec:
  action: DENY
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: c, namespace: foo}
spec:
  rules:
  - to:
    - operation: {ports: [8080]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: d, namespace: foo}
spec:
  rules:
  - from:
    - source: {notPrinciples: ["x"]}
"#,
    );
    let o = meshauthz(&["validate", "-f", f.to_str().unwrap()]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    for needle in [
        "document 1: AuthorizationPolicy foo/a: spec.rules[0].when[0].key: unknown attribute `request.foo`",
        "document 2: AuthorizationPolicy foo/b: spec.rules: a DENY policy without rules",
        "document 3: AuthorizationPolicy foo/c: spec.rules[0].to[0].operation.ports[0]: invalid type: integer `8080`",
        "document 4: AuthorizationPolicy foo/d: spec.rules[0].from[0].source.notPrinciples: unknown field `notPrinciples`",
        "bad.yaml:7:",
        "bad.yaml:22:",
    ] {
        assert!(out.contains(needle), "missing `{needle}` in:\n{out}");
    }

    let o = meshauthz(&["validate", "-f", "policies/"]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
}

#[test]
fn invalid_utf8_and_malformed_yaml_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bin.yaml");
    std::fs::write(&f, b"apiVersion: v1\nkind: \xff\xfe\n").unwrap();
    let o = meshauthz(&["validate", "-f", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("bin.yaml:2: the file is not valid UTF-8"),
        "{}",
        stdout(&o)
    );

    let f = write(
        dir.path(),
        "m.yaml",
        "apiVersion: security.istio.io/v1\nkind: [unclosed\n",
    );
    let o = meshauthz(&["validate", "-f", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("m.yaml:"), "{}", stdout(&o));
}

#[test]
fn check_exit_codes_and_explanation() {
    let base = [
        "check",
        "-f",
        "policies/bookinfo/",
        "--workload",
        "default/details-v1",
        "--path",
        "/details/0",
    ];
    let mut allow = base.to_vec();
    allow.extend([
        "--from",
        "spiffe://cluster.local/ns/default/sa/bookinfo-productpage",
    ]);
    let o = meshauthz(&allow);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).starts_with("ALLOW (ALLOW default/details-viewer rule 0"),
        "{}",
        stdout(&o)
    );

    let mut deny = base.to_vec();
    deny.extend([
        "--from",
        "spiffe://cluster.local/ns/default/sa/bookinfo-reviews",
    ]);
    let o = meshauthz(&deny);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(out.starts_with("DENY"), "{out}");
    assert!(
        out.contains("from[0].source.principals: DOES NOT HOLD"),
        "the explanation names the condition that failed:\n{out}"
    );

    let o = meshauthz(&[
        "check",
        "-f",
        "policies/bookinfo/",
        "--workload",
        "nonsense",
    ]);
    assert_eq!(o.status.code(), Some(1));

    let mut json = deny.clone();
    json.extend(["-o", "json"]);
    let o = meshauthz(&json);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["decision"]["verdict"], "DENY");
    assert_eq!(v["decision"]["reason"], "no_allow_matched");
}

#[test]
fn compile_is_stable_and_annotated() {
    let a = meshauthz(&["compile", "-f", "policies/"]);
    let b = meshauthz(&["compile", "-f", "policies/"]);
    assert_eq!(a.status.code(), Some(0), "{}", stderr(&a));
    assert_eq!(a.stdout, b.stdout);
    let out = stdout(&a);
    assert!(out.contains("@id(\"default/details-viewer[0]\")"), "{out}");
    assert!(
        out.contains("@source(\"policies/bookinfo/policies.yaml:"),
        "{out}"
    );
    let json = meshauthz(&["compile", "-f", "policies/", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert!(v["policies"].as_array().unwrap().len() >= 8);
    let schema = meshauthz(&["compile", "-f", "policies/", "-o", "schema"]);
    assert!(stdout(&schema).contains("namespace Mesh"));
}
