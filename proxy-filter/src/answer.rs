//! A [`Decision`] -> what Envoy does with the request. State owned: none.
//!
//! - ALLOW: continue, after RequestAuthentication's upstream header effects (the token header
//!   removed unless `forwardOriginalToken`, then `outputPayloadToHeader` / `outputClaimToHeaders`
//!   set, in that order, as Envoy's `jwt_authn` does).
//! - DENY: local reply 403 with the engine's body (`RBAC: access denied`).
//! - UNAUTHENTICATED: local reply 401 with the engine's JWT body and
//!   `www-authenticate: Bearer realm="<scheme>://<host><path>", error="invalid_token"`, as Envoy's
//!   `jwt_authn` answers; a JWT-caused 403 (audience) carries the same header.
//!
//! For a gRPC request (`content-type: application/grpc`, `application/grpc+proto`, ...), the
//! reply also carries `grpc-status` (7 PERMISSION_DENIED for 403, 16 UNAUTHENTICATED for 401),
//! `grpc-message` and `content-type: application/grpc`: Envoy answers a gRPC request's local
//! reply as HTTP 200 "trailers-only", and without our `grpc-status` the dynamic-module
//! `send_response` says `grpc-status: 0`, a success, for a denied call.
//!
//! Codes and bodies come from [`Decision::http_status`] and [`Decision::body`], the same the
//! ext_authz server answers with.

use authz_engine::{Decision, Reason, Verdict};

use crate::request::StreamHost;

/// `envoy_dynamic_module_type_on_http_filter_request_headers_status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadersStatus {
    Continue = 0,
    StopIteration = 1,
}

/// Response code details Envoy records for our local replies (`%RESPONSE_CODE_DETAILS%`).
pub const DETAILS_DENIED: &str = "meshauthz_access_denied";
pub const DETAILS_UNAUTHENTICATED: &str = "meshauthz_jwt_rejected";
pub const DETAILS_INTERNAL: &str = "meshauthz_internal_error";

/// The body of a denial (the engine's text for a DENY).
pub const DENIED_BODY: &str = "RBAC: access denied";

/// A local reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    pub body: std::borrow::Cow<'static, str>,
    pub www_authenticate: Option<String>,
    pub details: &'static str,
}

impl LocalReply {
    /// The answer when the filter itself failed (a caught panic): deny.
    pub fn internal_error() -> LocalReply {
        LocalReply {
            status: 403,
            body: std::borrow::Cow::Borrowed(DENIED_BODY),
            www_authenticate: None,
            details: DETAILS_INTERNAL,
        }
    }
}

/// What to do with the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer<'d> {
    /// Forward it, after removing then setting these request headers.
    Continue {
        remove: &'d [String],
        set: &'d [(String, String)],
    },
    Reply(LocalReply),
}

/// The answer for a decision. `realm` is called only for a JWT failure.
pub fn answer(d: &Decision, realm: impl FnOnce() -> String) -> Answer<'_> {
    match d.verdict {
        Verdict::Allow => Answer::Continue {
            remove: &d.upstream.remove,
            set: &d.upstream.set,
        },
        Verdict::Deny | Verdict::Unauthenticated => {
            let jwt = matches!(d.reason, Reason::Jwt { .. });
            Answer::Reply(LocalReply {
                status: u32::from(d.http_status()),
                body: std::borrow::Cow::Owned(d.body().to_string()),
                www_authenticate: jwt
                    .then(|| format!("Bearer realm=\"{}\", error=\"invalid_token\"", realm())),
                details: if d.verdict == Verdict::Unauthenticated {
                    DETAILS_UNAUTHENTICATED
                } else {
                    DETAILS_DENIED
                },
            })
        }
    }
}

/// The request's original URI for `www-authenticate`: `<scheme>://<host><path>` (Envoy's
/// `buildOriginalUri`), with `"`, `\` and control characters percent-encoded so that the header
/// value stays well formed.
pub fn realm(scheme: &str, host: &str, path: &str) -> String {
    let scheme = if scheme.is_empty() { "http" } else { scheme };
    let mut out = String::with_capacity(scheme.len() + 3 + host.len() + path.len());
    for c in scheme
        .chars()
        .chain("://".chars())
        .chain(host.chars())
        .chain(path.chars())
    {
        if c == '"' || c == '\\' || c.is_control() {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Carries out an answer on the stream.
pub fn apply(answer: &Answer<'_>, host: &mut impl StreamHost) -> HeadersStatus {
    match answer {
        Answer::Continue { remove, set } => {
            for name in remove.iter() {
                host.set_request_header(name, None);
            }
            for (name, value) in set.iter() {
                host.set_request_header(name, Some(value));
            }
            HeadersStatus::Continue
        }
        Answer::Reply(reply) => {
            send(reply, host);
            HeadersStatus::StopIteration
        }
    }
}

/// Sends a local reply (in gRPC form for a gRPC request, see the module header).
pub fn send(reply: &LocalReply, host: &mut impl StreamHost) {
    let mut headers: Vec<(&str, &str)> = Vec::with_capacity(4);
    if let Some(v) = &reply.www_authenticate {
        headers.push(("www-authenticate", v.as_str()));
    }
    let grpc_message;
    if is_grpc(host) {
        grpc_message = percent_encode_grpc_message(&reply.body);
        headers.push(("content-type", "application/grpc"));
        headers.push(("grpc-status", grpc_status(reply.status)));
        headers.push(("grpc-message", &grpc_message));
    }
    host.send_response(reply.status, &headers, &reply.body, reply.details);
}

/// Whether the request is gRPC: a `content-type` of `application/grpc`, optionally followed by
/// `+<format>` or `;<parameters>` (ASCII case-insensitive). This is at least every request Envoy
/// answers in gRPC form (`application/grpc` and `application/grpc+...`); `application/grpc-web`
/// is not gRPC.
pub fn is_grpc(host: &impl StreamHost) -> bool {
    let mut values = Vec::new();
    host.request_header_values("content-type", &mut values);
    values.iter().any(|(_, v)| {
        let v = v.trim().as_bytes();
        const GRPC: &[u8] = b"application/grpc";
        v.len() >= GRPC.len()
            && v[..GRPC.len()].eq_ignore_ascii_case(GRPC)
            && matches!(v.get(GRPC.len()), None | Some(b'+' | b';'))
    })
}

/// The gRPC status of a local reply's HTTP status (as Envoy's `httpToGrpcStatus`): never 0.
pub fn grpc_status(http: u32) -> &'static str {
    match http {
        401 => "16",             // UNAUTHENTICATED
        403 => "7",              // PERMISSION_DENIED
        400 => "13",             // INTERNAL
        404 => "12",             // UNIMPLEMENTED
        429 | 502..=504 => "14", // UNAVAILABLE
        _ => "2",                // UNKNOWN
    }
}

/// `grpc-message` as the gRPC spec writes it: bytes outside printable ASCII, and `%`,
/// percent-encoded.
fn percent_encode_grpc_message(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::fake::FakeStream;

    fn decision(verdict: Verdict, reason: Reason) -> Decision {
        Decision::new(verdict, reason, 1)
    }

    #[test]
    fn allow_continues_with_header_effects_remove_then_set() {
        let mut d = decision(Verdict::Allow, Reason::AllowMatched);
        d.upstream.remove = vec!["authorization".into()];
        d.upstream.set = vec![
            ("x-jwt-sub".into(), "alice".into()),
            ("authorization".into(), "kept".into()),
        ];
        let mut s = FakeStream::http("/")
            .header("authorization", "Bearer t")
            .header("x-jwt-sub", "forged");
        let a = answer(&d, || unreachable!("no realm for an allow"));
        assert_eq!(apply(&a, &mut s), HeadersStatus::Continue);
        assert_eq!(s.header_value("x-jwt-sub"), Some("alice"));
        assert_eq!(s.header_value("authorization"), Some("kept"));
        assert_eq!(s.reply, None);
    }

    #[test]
    fn deny_is_403_rbac_access_denied() {
        let d = decision(Verdict::Deny, Reason::DenyMatched);
        let mut s = FakeStream::http("/");
        let a = answer(&d, || unreachable!("no realm for an RBAC denial"));
        assert_eq!(apply(&a, &mut s), HeadersStatus::StopIteration);
        let (status, headers, body, details) = s.reply.unwrap();
        assert_eq!(status, 403);
        assert!(headers.is_empty());
        assert_eq!(body, "RBAC: access denied");
        assert_eq!(details, DETAILS_DENIED);
    }

    #[test]
    fn unauthenticated_is_401_with_www_authenticate() {
        let d = decision(
            Verdict::Unauthenticated,
            Reason::Jwt {
                error: "Jwt is expired".into(),
            },
        );
        let mut s = FakeStream::http("/");
        let a = answer(&d, || realm("https", "api.test", "/x?y=1"));
        assert_eq!(apply(&a, &mut s), HeadersStatus::StopIteration);
        let (status, headers, body, details) = s.reply.unwrap();
        assert_eq!(status, 401);
        assert_eq!(
            headers,
            vec![(
                "www-authenticate".to_string(),
                "Bearer realm=\"https://api.test/x?y=1\", error=\"invalid_token\"".to_string()
            )]
        );
        assert_eq!(body, d.body());
        assert_eq!(details, DETAILS_UNAUTHENTICATED);
    }

    #[test]
    fn grpc_requests_get_a_non_ok_grpc_status() {
        let d = decision(Verdict::Deny, Reason::DenyMatched);
        for ct in [
            "application/grpc",
            "application/grpc+proto",
            "Application/GRPC; charset=utf-8",
        ] {
            let mut s = FakeStream::http("/pkg.Svc/M").header("content-type", ct);
            let a = answer(&d, || unreachable!("no realm for an RBAC denial"));
            assert_eq!(apply(&a, &mut s), HeadersStatus::StopIteration);
            let (status, headers, body, details) = s.reply.unwrap();
            assert_eq!(status, 403, "{ct}");
            let h = |n: &str| {
                headers
                    .iter()
                    .find(|(k, _)| k == n)
                    .map(|(_, v)| v.as_str())
            };
            assert_eq!(h("grpc-status"), Some("7"), "{ct}");
            assert_eq!(h("grpc-message"), Some("RBAC: access denied"), "{ct}");
            assert_eq!(h("content-type"), Some("application/grpc"), "{ct}");
            assert_eq!(body, "RBAC: access denied");
            assert_eq!(details, DETAILS_DENIED);
        }
        // A JWT failure: 16, with www-authenticate kept; the message is percent-encoded.
        let d = decision(
            Verdict::Unauthenticated,
            Reason::Jwt {
                error: "Jwt is expired".into(),
            },
        );
        let mut s = FakeStream::http("/pkg.Svc/M").header("content-type", "application/grpc");
        let a = answer(&d, || realm("http", "h", "/pkg.Svc/M"));
        apply(&a, &mut s);
        let (status, headers, _, _) = s.reply.unwrap();
        assert_eq!(status, 401);
        let h = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        assert_eq!(h("grpc-status").as_deref(), Some("16"));
        assert!(h("www-authenticate").is_some());
        assert_eq!(percent_encode_grpc_message("a%b\u{e9}\n"), "a%25b%C3%A9%0A");
        // The internal-error reply too.
        let mut s = FakeStream::http("/").header("content-type", "application/grpc");
        send(&LocalReply::internal_error(), &mut s);
        let (_, headers, _, _) = s.reply.unwrap();
        assert!(headers.contains(&("grpc-status".to_string(), "7".to_string())));
    }

    #[test]
    fn non_grpc_requests_get_no_grpc_headers() {
        for ct in ["application/grpc-web", "application/json", "text/grpc"] {
            let mut s = FakeStream::http("/").header("content-type", ct);
            send(&LocalReply::internal_error(), &mut s);
            let (status, headers, _, _) = s.reply.unwrap();
            assert_eq!((status, headers), (403, vec![]), "{ct}");
        }
        for (http, grpc) in [(401, "16"), (403, "7"), (503, "14"), (500, "2")] {
            assert_eq!(grpc_status(http), grpc);
        }
    }

    #[test]
    fn realm_escapes_quotes_and_controls() {
        assert_eq!(realm("", "h", "/a\"b\\c\u{7}"), "http://h/a%22b%5Cc%07");
    }

    #[test]
    fn internal_error_denies() {
        let mut s = FakeStream::http("/");
        send(&LocalReply::internal_error(), &mut s);
        let (status, _, body, details) = s.reply.unwrap();
        assert_eq!((status, body.as_str()), (403, "RBAC: access denied"));
        assert_eq!(details, DETAILS_INTERNAL);
    }
}
