//! The request path as Istio/Envoy authorizes it.
//!
//! `paths`/`notPaths` are matched against `:path` *after* the HTTP connection manager has
//! normalized it, and without the query string and fragment. Getting this wrong is the classic
//! authorization bypass, so this module reproduces Envoy's behaviour for each mesh-wide
//! `pathNormalization` mode:
//!
//! * The fragment (`#...`) is always stripped (CVE-2021-39156: `/user/profile#x` slipped past
//!   `DENY paths:[/user/profile]`), and the query is never part of the matched path
//!   (CVE-2020-8595: `/protected?x=1`).
//! * `BASE` (Istio's default, Envoy `normalize_path`): percent-encoded *unreserved* characters
//!   are decoded, `\` becomes `/`, and RFC 3986 dot segments are removed (`%2e` counts as a dot,
//!   because it is decoded first). `%2F`, `%5C` and `//` are kept, so under `BASE`
//!   `//admin` and `/%2Fadmin` are **not** `/admin` (CVE-2021-31920).
//! * `MERGE_SLASHES` adds `merge_slashes` (`//+` becomes `/`) after `BASE`.
//! * `DECODE_AND_MERGE_SLASHES` first decodes `%2F`/`%5C` (`UNESCAPE_AND_FORWARD`), then does
//!   `BASE`, then merges slashes: Istio's recommended, strictest mode.
//! * `%00` makes Envoy answer 400 under every normalizing mode.
//!
//! Path parameters (`;a=b`), double encoding (`%252e`), overlong UTF-8 (`%c0%ae`) and case are
//! never normalized: Istio leaves those to the backend or a WAF. The same applies here.

use std::fmt;

use policy_compiler::PathNormalization;

/// Why a request path cannot be authorized (Envoy rejects such requests before authorization).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    /// The path holds `%00` (or a raw NUL byte); Envoy answers 400.
    NulByte,
    /// The path does not start with `/` (`*`, authority-form, or empty).
    NotOriginForm,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NulByte => f.write_str("path contains an encoded nul byte (`%00`)"),
            Self::NotOriginForm => f.write_str("path does not start with `/`"),
        }
    }
}

impl std::error::Error for PathError {}

/// Splits a raw `:path` into the path part and the query (without the `?`).
///
/// The fragment is cut off first, so it is removed from the query as well; a `?` inside the
/// fragment does not start a query. An empty query (`/a?`) is `Some("")`.
pub fn split_path(raw: &str) -> (&str, Option<&str>) {
    let without_fragment = match raw.split_once('#') {
        Some((before, _fragment)) => before,
        None => raw,
    };
    match without_fragment.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (without_fragment, None),
    }
}

/// The path Istio/Envoy authorize for `raw` under `mode`: query and fragment removed, then
/// normalized as the HTTP connection manager does.
///
/// Under `NONE` nothing else happens (not even the origin-form or `%00` checks). Under the
/// other modes a path that does not start with `/`, or that holds `%00` or a raw NUL byte,
/// is an error: Envoy rejects such requests.
pub fn normalize_path(raw: &str, mode: PathNormalization) -> Result<String, PathError> {
    let (path, _query) = split_path(raw);
    match mode {
        PathNormalization::None => Ok(path.to_owned()),
        PathNormalization::Base => base(path),
        PathNormalization::MergeSlashes => base(path).map(|p| merge_slashes(&p)),
        PathNormalization::DecodeAndMergeSlashes => {
            check_origin_form_and_nul(path)?;
            let decoded = decode_escapes(path, |b| b == b'/' || b == b'\\');
            base(&decoded).map(|p| merge_slashes(&p))
        }
    }
}

/// Envoy's `normalize_path`: decode unreserved escapes, `\` to `/`, remove dot segments.
fn base(path: &str) -> Result<String, PathError> {
    check_origin_form_and_nul(path)?;
    let decoded = decode_escapes(path, is_unreserved).replace('\\', "/");
    let normalized = remove_dot_segments(&decoded);
    // Decoding is a single pass, so `%%3000` decodes to `%000`: a new `%00` that a backend
    // decoding once more would turn into NUL. Fail closed on it as on a literal `%00`.
    if contains_encoded_nul(&normalized) {
        return Err(PathError::NulByte);
    }
    Ok(normalized)
}

fn check_origin_form_and_nul(path: &str) -> Result<(), PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotOriginForm);
    }
    if path.contains('\0') || contains_encoded_nul(path) {
        return Err(PathError::NulByte);
    }
    Ok(())
}

fn contains_encoded_nul(path: &str) -> bool {
    path.as_bytes().windows(3).any(|w| w == b"%00")
}

/// RFC 3986 `unreserved`: ALPHA / DIGIT / "-" / "." / "_" / "~".
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Replaces each `%XX` (hex in either case) whose byte satisfies `decode` with that byte, in a
/// single left-to-right pass. Every other escape, and any `%` not followed by two hex digits,
/// is copied unchanged, so the original hex case survives.
fn decode_escapes(path: &str, decode: impl Fn(u8) -> bool) -> String {
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(pos) = rest.find('%') {
        let (before, from_percent) = rest.split_at(pos);
        out.push_str(before);
        // `%` is ASCII, so index 1 is a char boundary; `get` refuses a non-boundary end.
        match from_percent.get(1..3).and_then(hex_byte) {
            Some(byte) if decode(byte) => {
                out.push(char::from(byte));
                // The two hex digits are ASCII, so index 3 is a char boundary.
                rest = from_percent.get(3..).unwrap_or_default();
            }
            _ => {
                out.push('%');
                rest = from_percent.get(1..).unwrap_or_default();
            }
        }
    }
    out.push_str(rest);
    out
}

/// The byte that two hex digits spell (`from_str_radix` alone would also take a `+` sign).
fn hex_byte(digits: &str) -> Option<u8> {
    if digits.len() == 2 && digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        u8::from_str_radix(digits, 16).ok()
    } else {
        None
    }
}

/// RFC 3986 §5.2.4 `remove_dot_segments` for an absolute path (starting with `/`). Empty
/// segments are kept (`//` stays), and a trailing `.` or `..` leaves a trailing `/`.
fn remove_dot_segments(path: &str) -> String {
    let body = path.strip_prefix('/').unwrap_or(path);
    let mut kept: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in body.split('/') {
        trailing_slash = false;
        match segment {
            "." => trailing_slash = true,
            ".." => {
                kept.pop();
                trailing_slash = true;
            }
            other => kept.push(other),
        }
    }
    let mut out = String::with_capacity(path.len());
    out.push('/');
    out.push_str(&kept.join("/"));
    if trailing_slash && !kept.is_empty() {
        out.push('/');
    }
    out
}

/// Envoy `merge_slashes`: every run of `/` becomes one `/`.
fn merge_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut previous_slash = false;
    for c in path.chars() {
        let slash = c == '/';
        if !(slash && previous_slash) {
            out.push(c);
        }
        previous_slash = slash;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use PathNormalization::{Base, DecodeAndMergeSlashes, MergeSlashes, None as NoneMode};

    /// The expected outcome for one input under one mode.
    #[derive(Debug, Clone)]
    enum Want {
        /// The output equals the input (the reference's "unchanged").
        Same,
        /// The output is this path.
        Is(&'static str),
        /// Envoy rejects the request (400).
        Bad(PathError),
        /// The reference gives no value for this mode.
        Untested,
    }
    use Want::{Bad, Is, Same, Untested};

    const NOT_ORIGIN: Want = Bad(PathError::NotOriginForm);
    const NUL: Want = Bad(PathError::NulByte);
    const CAFE: &str = "/caf\u{e9}/%c3%a9/x";

    const MODES: [PathNormalization; 4] = [NoneMode, Base, MergeSlashes, DecodeAndMergeSlashes];

    /// §6.2 of the semantics reference, row by row: input, then NONE, BASE, MERGE_SLASHES,
    /// DECODE_AND_MERGE_SLASHES. "same as BASE" is spelled out.
    #[rustfmt::skip]
    const MATRIX: &[(&str, [Want; 4])] = &[
        ("/", [Is("/"), Is("/"), Is("/"), Is("/")]),
        ("/app#foo", [Is("/app"), Is("/app"), Is("/app"), Is("/app")]),
        ("/app/", [Is("/app/"), Is("/app/"), Is("/app/"), Is("/app/")]),
        ("/app/../admin", [Is("/app/../admin"), Is("/admin"), Is("/admin"), Is("/admin")]),
        ("/app//", [Is("/app//"), Is("/app//"), Is("/app/"), Is("/app/")]),
        ("/app/%2f", [Is("/app/%2f"), Is("/app/%2f"), Is("/app/%2f"), Is("/app/")]),
        ("/app%2f/", [Is("/app%2f/"), Is("/app%2f/"), Is("/app%2f/"), Is("/app/")]),
        (
            "/xyz%30..//abc",
            [Same, Is("/xyz0..//abc"), Is("/xyz0../abc"), Is("/xyz0../abc")],
        ),
        ("/app/%2E./admin", [Same, Is("/admin"), Is("/admin"), Is("/admin")]),
        ("/app\\admin", [Same, Is("/app/admin"), Is("/app/admin"), Is("/app/admin")]),
        (
            "/app/\\/\\/\\admin",
            [Same, Is("/app//////admin"), Is("/app/admin"), Is("/app/admin")],
        ),
        ("/%2Fapp%5cadmin%5Cabc", [Same, Same, Same, Is("/app/admin/abc")]),
        (
            "/%5Capp%2f%5c%2F%2e%2e%2fadmin%5c\\abc",
            [
                Same,
                Is("/%5Capp%2f%5c%2F..%2fadmin%5c/abc"),
                Is("/%5Capp%2f%5c%2F..%2fadmin%5c/abc"),
                Is("/app/admin/abc"),
            ],
        ),
        ("/app//../admin", [Same, Is("/app/admin"), Is("/app/admin"), Is("/app/admin")]),
        ("/app//../../admin", [Same, Is("/admin"), Is("/admin"), Is("/admin")]),
        ("/%c0%2e%c0%2e/admin", [Untested, Untested, Untested, Is("/%c0.%c0./admin")]),
        ("/%c0%2fadmin", [Untested, Untested, Untested, Is("/%c0/admin")]),
        ("/admin%00", [Untested, Untested, Untested, NUL]),
    ];

    /// §6.2: these stay unchanged under DECODE_AND_MERGE_SLASHES.
    const UNCHANGED_UNDER_DECODE_AND_MERGE: &[&str] = &[
        "/0x2e0x2e/admin",
        "/%252e%252e/admin",
        "/%25c0%25afadmin",
        "/%c0%ae%c0%ae/admin",
        "/%c0%afadmin",
        "/.../admin",
        "/..../admin",
        "/..;/admin",
        "/;/admin",
        "/admin;a=b",
        "/admin;a=b/xyz",
        "/admin,a=b/xyz",
        "/Admin",
        "/ADMIN",
    ];

    /// §6.2 authz-level examples ([it-authz] PathNormalization, BASE, `ALLOW paths:["/public*"]`):
    /// input, normalized path, whether `/public*` allows it.
    const PUBLIC_PREFIX_UNDER_BASE: &[(&str, &str, bool)] = &[
        ("/public", "/public", true),
        ("/public/../public", "/public", true),
        ("/private", "/private", false),
        ("/public/../private", "/private", false),
        ("/public/./../private", "/private", false),
        ("/public/.././private", "/private", false),
        ("/public/%2E%2E/private", "/private", false),
        ("/public/%2e%2e/private", "/private", false),
        ("/public/%2E/%2E%2E/private", "/private", false),
        ("/public/%2e/%2e%2e/private", "/private", false),
        ("/public/%2E%2E/%2E/private", "/private", false),
        ("/public/%2e%2e/%2e/private", "/private", false),
    ];

    /// §6.3 `DENY paths:[/admin]` inputs and §6.1 CVE inputs, per mode (NONE, BASE,
    /// MERGE_SLASHES, DECODE_AND_MERGE_SLASHES). A result of `/admin` means the DENY applies.
    #[rustfmt::skip]
    const BYPASS_INPUTS: &[(&str, [Want; 4])] = &[
        ("/admin?x=1", [Is("/admin"), Is("/admin"), Is("/admin"), Is("/admin")]),
        ("/admin#x", [Is("/admin"), Is("/admin"), Is("/admin"), Is("/admin")]),
        ("/admin/", [Same, Same, Same, Same]),
        ("/./admin", [Same, Is("/admin"), Is("/admin"), Is("/admin")]),
        ("/adm%69n", [Same, Is("/admin"), Is("/admin"), Is("/admin")]),
        ("/adm%69N", [Same, Is("/admiN"), Is("/admiN"), Is("/admiN")]),
        ("//admin", [Same, Same, Is("/admin"), Is("/admin")]),
        // CVE-2021-31920
        ("/%2Fadmin", [Same, Same, Same, Is("/admin")]),
        ("/%5Cadmin", [Same, Same, Same, Is("/admin")]),
        ("/%2fadmin", [Same, Same, Same, Is("/admin")]),
        // CVE-2021-39156
        ("/user/profile#section1", [Is("/user/profile"), Is("/user/profile"), Is("/user/profile"), Is("/user/profile")]),
        ("/user/profile?a=1#section1", [Is("/user/profile"), Is("/user/profile"), Is("/user/profile"), Is("/user/profile")]),
        ("/user/profile#a?b=1", [Is("/user/profile"), Is("/user/profile"), Is("/user/profile"), Is("/user/profile")]),
        // CVE-2020-8595
        ("/protected?x", [Is("/protected"), Is("/protected"), Is("/protected"), Is("/protected")]),
    ];

    /// Behaviour the reference leaves open; see the module docs and the report.
    #[rustfmt::skip]
    const EDGE_CASES: &[(&str, [Want; 4])] = &[
        // Not origin-form: only NONE lets it through (unchanged).
        ("*", [Same, NOT_ORIGIN, NOT_ORIGIN, NOT_ORIGIN]),
        ("example.com:443", [Same, NOT_ORIGIN, NOT_ORIGIN, NOT_ORIGIN]),
        ("", [Same, NOT_ORIGIN, NOT_ORIGIN, NOT_ORIGIN]),
        ("?x=1", [Is(""), NOT_ORIGIN, NOT_ORIGIN, NOT_ORIGIN]),
        ("admin/../x", [Same, NOT_ORIGIN, NOT_ORIGIN, NOT_ORIGIN]),
        // `%00` or a raw NUL: NONE leaves it alone; a `%00` in the query does not count.
        ("/a%00b", [Same, NUL, NUL, NUL]),
        ("/admin?x=%00", [Is("/admin"), Is("/admin"), Is("/admin"), Is("/admin")]),
        ("/a\0b", [Same, NUL, NUL, NUL]),
        // A `%00` produced by the single decoding pass fails closed too.
        ("/a%%3000", [Same, NUL, NUL, NUL]),
        // Escapes that are not `%XX` are copied as they are.
        ("/a%zz%4/%", [Same, Same, Same, Same]),
        ("/a%%41", [Same, Is("/a%A"), Is("/a%A"), Is("/a%A")]),
        // Dot segments at the ends and beyond the root.
        ("/..", [Same, Is("/"), Is("/"), Is("/")]),
        ("/.", [Same, Is("/"), Is("/"), Is("/")]),
        ("/a/..", [Same, Is("/"), Is("/"), Is("/")]),
        ("/a/b/..", [Same, Is("/a/"), Is("/a/"), Is("/a/")]),
        ("/a/.", [Same, Is("/a/"), Is("/a/"), Is("/a/")]),
        ("/a/./", [Same, Is("/a/"), Is("/a/"), Is("/a/")]),
        ("/../../admin", [Same, Is("/admin"), Is("/admin"), Is("/admin")]),
        ("/a/..//b", [Same, Is("//b"), Is("/b"), Is("/b")]),
        ("/a/%2e%2E/b", [Same, Is("/b"), Is("/b"), Is("/b")]),
        ("/a/.%2e/b", [Same, Is("/b"), Is("/b"), Is("/b")]),
        // `%2F` is decoded before dot segments are removed under DECODE_AND_MERGE_SLASHES.
        ("/a%2F..%2Fadmin", [Same, Same, Same, Is("/admin")]),
        // Non-ASCII input is carried through untouched.
        ("/caf\u{e9}/%c3%a9/\u{1f600}/../x", [Same, Is(CAFE), Is(CAFE), Is(CAFE)]),
        ("/\u{e9}%", [Same, Same, Same, Same]),
        ("/\u{e9}%4\u{e9}", [Same, Same, Same, Same]),
    ];

    fn check_table(name: &str, table: &[(&str, [Want; 4])]) -> usize {
        let mut failures = Vec::new();
        let mut checked = 0;
        for (input, wants) in table {
            for (mode, want) in MODES.iter().zip(wants) {
                let expected = match want {
                    Same => Ok((*input).to_owned()),
                    Is(path) => Ok((*path).to_owned()),
                    Bad(error) => Err(error.clone()),
                    Untested => continue,
                };
                checked += 1;
                let got = normalize_path(input, *mode);
                if got != expected {
                    failures.push(format!(
                        "{input:?} under {mode:?}: got {got:?}, want {expected:?}"
                    ));
                }
            }
        }
        assert!(failures.is_empty(), "{name}:\n{}", failures.join("\n"));
        checked
    }

    #[test]
    fn normalization_matrix() {
        assert_eq!(check_table("matrix", MATRIX), 4 * 15 + 3);
    }

    #[test]
    fn bypass_inputs_from_security_history() {
        check_table("bypass inputs", BYPASS_INPUTS);
    }

    #[test]
    fn edge_cases() {
        check_table("edge cases", EDGE_CASES);
    }

    #[test]
    fn stay_unchanged_under_decode_and_merge_slashes() {
        for input in UNCHANGED_UNDER_DECODE_AND_MERGE {
            assert_eq!(
                normalize_path(input, DecodeAndMergeSlashes).as_deref(),
                Ok(*input),
                "{input}"
            );
        }
    }

    #[test]
    fn every_escape_after_admin_under_decode_and_merge_slashes() {
        let mut checked = 0;
        for byte in 0x01_u8..=0xff {
            for hex in [format!("{byte:02x}"), format!("{byte:02X}")] {
                let input = format!("/admin%{hex}");
                let expected = match byte {
                    b'/' | b'\\' => "/admin/".to_owned(),
                    b if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') => {
                        format!("/admin{}", char::from(b))
                    }
                    _ => input.clone(),
                };
                assert_eq!(
                    normalize_path(&input, DecodeAndMergeSlashes),
                    Ok(expected),
                    "{input}"
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 2 * 255);
    }

    #[test]
    fn every_escape_after_admin_under_base_keeps_slashes_encoded() {
        for hex in ["2f", "2F", "5c", "5C"] {
            let input = format!("/admin%{hex}");
            assert_eq!(normalize_path(&input, Base), Ok(input.clone()));
            assert_eq!(normalize_path(&input, MergeSlashes), Ok(input.clone()));
        }
    }

    #[test]
    fn authz_examples_under_base() {
        for (input, normalized, allowed) in PUBLIC_PREFIX_UNDER_BASE {
            let got = normalize_path(input, Base);
            assert_eq!(got.as_deref(), Ok(*normalized), "{input}");
            let matches_public_prefix = got.is_ok_and(|p| p.starts_with("/public"));
            assert_eq!(matches_public_prefix, *allowed, "{input}");
        }
    }

    #[test]
    fn split_path_cases() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("/a", "/a", None),
            ("/a?x=1", "/a", Some("x=1")),
            ("/a?", "/a", Some("")),
            ("/a?x=1#frag", "/a", Some("x=1")),
            ("/a?x=1?y=2", "/a", Some("x=1?y=2")),
            ("/a#frag", "/a", None),
            ("/a#frag?x=1", "/a", None),
            ("/a#", "/a", None),
            ("?x", "", Some("x")),
            ("#x", "", None),
            ("", "", None),
            ("/\u{e9}?\u{e9}#\u{e9}", "/\u{e9}", Some("\u{e9}")),
        ];
        for (raw, path, query) in cases {
            assert_eq!(split_path(raw), (*path, *query), "{raw:?}");
        }
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            PathError::NulByte.to_string(),
            "path contains an encoded nul byte (`%00`)"
        );
        assert_eq!(
            PathError::NotOriginForm.to_string(),
            "path does not start with `/`"
        );
    }
}
