//! The meshauthz decision engine: `decide(&Snapshot, &RequestAttrs) -> Decision`.
//!
//! Pure and synchronous: no tokio, no I/O, no clock. The only code that evaluates Cedar
//! policies (`eval`, with Cedar's evaluator). Hosts build [`RequestAttrs`], hold an `Arc<Snapshot>` and call [`decide`].
#![warn(missing_docs)]
#![allow(
    missing_docs,
    reason = "documented at module level; item docs where they say more than the name"
)]

pub mod attrs;
pub mod cache;
mod context;
pub mod decide;
mod eval;
mod index;
pub mod jwt;
pub mod path;
pub mod snapshot;

pub use attrs::{Protocol, RequestAttrs};
pub use cache::{NoCache, TokenCache, TokenKey, VerifiedToken};
pub use decide::{
    cedar_request, decide, decide_with, explain, Decision, PolicyMatch, Reason, Verdict,
};
pub use snapshot::{Snapshot, SnapshotError};
