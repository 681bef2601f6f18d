//! Istio security resources (`AuthorizationPolicy`, `PeerAuthentication`,
//! `RequestAuthentication`, `security.istio.io` v1 and v1beta1) compiled to Cedar.
//!
//! ```text
//! YAML text --load--> Inputs (typed, validated, with origins)
//!           --compile(mesh, workloads)--> Compiled { Cedar policies + schema, PA/RA tables }
//! ```
//!
//! Pure: no I/O beyond the text it is given, no async. The engine (`authz-engine`) indexes the
//! result into a snapshot; the CLI prints it.

pub mod attributes;
pub mod compile;
pub mod error;
pub mod expr;
pub mod jwks;
pub mod lines;
pub mod load;
pub mod mesh;
pub mod resources;
pub mod schema;
pub mod shared_ast;
pub mod uri_template;
pub mod validate;

pub use compile::{compile, Compiled};
pub use error::{LoadError, Location, Warning};
pub use load::{validate_object, Inputs, SecurityResource, Validated};
pub use mesh::{MeshConfig, MeshFile, PathNormalization, Workload};

/// The annotation that makes an AuthorizationPolicy dry-run.
pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";
