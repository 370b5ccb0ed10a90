//! End-to-end test harness (`fhirwall-testkit`) shared by the test files in
//! `tests/e2e/`.
//!
//! The e2e tests are integration tests of the `fhirwall` package (`[[test]]`
//! entries in `gateway/Cargo.toml`), which has this crate as a dev-dependency. A
//! test file uses it with
//!
//! ```ignore
//! use fhirwall_testkit as support;
//! use support::*;
//! ```
//!
//! and gets real processes: a third-party FHIR upstream ([`Upstream::medplum`],
//! Medplum's engine under Node, see `tests/medplum/README.md`) or fhirwall's own
//! sandbox ([`Upstream::sandbox`]), a gateway ([`Gateway::start`]) running the
//! `fhirwall` binary built for this test run ([`fhirwall_bin`]), and a small HTTP
//! client ([`get`], [`request`], …) that does no redirects, no decompression and no
//! proxying, so a test sees exactly what the gateway sent.
//!
//! Every process is killed when its handle is dropped (SIGTERM, then SIGKILL after
//! 5 s). When a test panics, the tail of each process's log is printed as the handle
//! drops, so a failing test shows what the gateway and the upstream said. Set
//! `FHIRWALL_TEST_KEEP=1` to keep the gateway's temp dir (config, SQLite database,
//! audit files, log) after the test.
//!
//! Everything here is synchronous except the HTTP client, so [`Gateway::start`] and
//! [`Upstream`] work both in plain `#[test]`s and in `#[tokio::test]`s.
//!
//! The code is split by job; everything is re-exported here, so a test names
//! `support::Gateway`, not the module it lives in:
//!
//! - `paths`: the repository, fixtures, datasets and the `fhirwall` binary;
//! - `ports`: free loopback ports, waiting for a listener;
//! - `process`: child processes with log files, stopped on drop;
//! - `upstream`: [`Upstream`] (Medplum, the sandbox) and Medplum's `node_modules`;
//! - `gateway`: [`GatewayConfig`] and [`Gateway`];
//! - `http`: the HTTP client and its [`Resp`];
//! - `fhir`: OperationOutcome and Bundle helpers;
//! - [`postgres`]: a private PostgreSQL server for the multi-node tests;
//! - [`pyjwt`]: the independent PyJWT client for tests of authentication;
//! - [`s3`]: an S3-compatible server (moto) for export storage shared by nodes;
//! - [`venvs`]: third-party Python tools (smart-fetch, moto) in their venvs;
//! - [`fault_upstream`]: a raw-TCP upstream whose answers a test scripts byte by
//!   byte (resets, stalls, trickles, broken framing).

mod fhir;
mod gateway;
mod guard;
mod http;
mod log_scan;
mod paths;
mod ports;
mod process;
mod upstream;

pub mod fault_upstream;
pub mod postgres;
pub mod pyjwt;
pub mod s3;
pub mod venvs;

pub use fhir::{assert_operation_outcome, bundle_link, bundle_refs, bundle_resources};
pub use gateway::{Gateway, GatewayConfig, assert_config_refused, audit_lines};
pub use guard::UpstreamGuard;
pub use http::{Resp, get, get_bearer, get_with, post_form, post_json, request};
pub use paths::{fhirwall_bin, fixture, medplum_dir, payer_dataset, repo_root};
pub use ports::{free_port, wait_for_port};
pub use upstream::{MedplumOptions, Upstream, ensure_medplum_deps};
