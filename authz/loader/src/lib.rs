//! Policy sources shared by every meshauthz host (the CLI, `meshauthz serve`, the native Envoy
//! filter): reading policy files and directories, the `--mesh` file, and fetching `jwksUri`
//! keys. Synchronous (std threads and blocking HTTP with timeouts), so the native filter can use
//! it without an async runtime. Never called on the request path.

pub mod cluster;
pub mod files;
pub mod jwks;
pub mod watch;

pub use files::{
    compile_inputs, compile_inputs_with, fetch_jwks, load_mesh_file, load_policies,
    parse_mesh_file, policy_files, strip_location, with_fetched_keys,
};
