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

/// Sends a local reply.
pub fn send(reply: &LocalReply, host: &mut impl StreamHost) {
    match &reply.www_authenticate {
        Some(v) => host.send_response(
            reply.status,
            &[("www-authenticate", v.as_str())],
            &reply.body,
            reply.details,
        ),
        None => host.send_response(reply.status, &[], &reply.body, reply.details),
    }
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
