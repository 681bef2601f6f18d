//! End-to-end harness for meshauthz behind a real Envoy 1.40: the ext_authz service (issue 3)
//! and the native filter loaded into Envoy (issue 4), and their agreement with the CLI.
//!
//! Everything is made at run time: a CA and SPIFFE certificates (`certs`), the Envoy bootstrap
//! (`envoy`), the server's mesh and policy files (`corpus`). Requests are written byte by byte
//! over plain TCP or rustls, each behind a PROXY protocol header that sets the source and
//! destination addresses Envoy reports to ext_authz (`wire`). `replay` runs whole test files
//! and tallies passes, failures and skips (each skip with its reason), in either enforcement
//! mode; `native` builds the filter module; `agreement` compares the CLI, ext_authz and the
//! native filter case by case.
//!
//! Nothing here panics: every step returns a `Result`, and the tests decide what is fatal.

use std::path::PathBuf;

pub mod agreement;
pub mod certs;
pub mod corpus;
pub mod envoy;
pub mod jwt;
pub mod meshauthz;
pub mod native;
pub mod replay;
pub mod wire;

/// The repository root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let root = here.join("../..");
    root.canonicalize().unwrap_or(root)
}
