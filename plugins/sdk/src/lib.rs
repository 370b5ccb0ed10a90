//! Guest SDK for fhirwall plugins (`fhirwall:plugin@0.1.0`, see `wit/plugin.wit`).
//!
//! A plugin is a Rust library built as a `cdylib` for `wasm32-wasip2`, which
//! produces a WebAssembly component. Enable exactly one world feature
//! (`matcher` or `policy`), implement the matching trait on a type, and
//! export it:
//!
//! ```ignore
//! use fhirwall_plugin_sdk::policy::*;
//! struct MyPolicy;
//! impl Policy for MyPolicy {
//!     fn on_request(_ctx: &RequestContext) -> Decision { Decision::Allow }
//!     fn on_resource(_ctx: &RequestContext, resource: &str) -> Verdict { Verdict::Keep }
//! }
//! fhirwall_plugin_sdk::export_policy!(MyPolicy);
//! ```
//!
//! - [`fhir`]: typed views of the FHIR JSON fields plugins usually read
//!   (names, birth dates, identifiers, security labels), plus normalisation.
//! - [`matcher`] / [`policy`]: the world bindings and the plugin traits.
//! - [`testing`]: a native test harness: an in-memory member index that
//!   answers `candidates` queries like the host does, so `cargo test` runs
//!   a matcher's logic without WebAssembly.

pub mod fhir;
#[cfg(feature = "matcher")]
pub mod testing;

#[cfg(feature = "matcher")]
pub mod matcher;
#[cfg(feature = "policy")]
pub mod policy;

#[cfg(all(feature = "matcher", feature = "policy"))]
compile_error!(
    "a component implements one world: enable either the `matcher` or the `policy` feature of fhirwall-plugin-sdk, \
     and build each plugin on its own (cargo build -p NAME)"
);
