//! `libmeshauthz_filter.so`: meshauthz inside Envoy 1.40 as an HTTP dynamic module (ABI
//! `v0.2.0`). Envoy calls the module's hooks; on every request the filter reads the request from
//! Envoy's attributes and headers, builds a [`authz_engine::RequestAttrs`], calls
//! [`authz_engine::decide`] in-process and answers: continue (with RequestAuthentication's header
//! effects), 403 or 401.
//!
//! ```text
//!   Envoy ──hooks──> ffi (the only unsafe code: C types, hooks, resolved callbacks, panic guards)
//!                     │  EnvoyStream: StreamHost
//!                     v
//!   config ──> filter::FilterConfig ── request::read_request ──> decide ──> answer::answer
//!   (JSON)      (snapshot: ArcSwap,       (attributes, headers)              (continue | reply)
//!                PolicyWatcher, JwksStore)
//! ```
//!
//! State owned here: none at crate level. One [`filter::FilterConfig`] per Envoy filter config
//! (one workload) owns the live snapshot; streams own nothing.
#![deny(unsafe_code)]

pub mod answer;
pub mod config;
mod ffi;
pub mod filter;
pub mod logging;
pub mod request;

/// The ABI version this module is written against (Envoy 1.40).
pub const ABI_VERSION: &str = "v0.2.0";

/// The one filter name the module serves (`filter_name` in Envoy's config).
pub const FILTER_NAME: &str = "meshauthz";
