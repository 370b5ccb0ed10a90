//! fhirwall: a CMS-0057-F Provider Access gateway in front of any FHIR R4 server.
//!
//! One module per capability, each owning its types; no two modules import
//! each other. Data flows one way:
//! request -> auth -> parse (`fhir`) -> access -> upstream (`proxy`) -> filter
//! chain -> audit -> response, composed in `server::pipeline`.
//!
//! - `config`: the TOML configuration, validated at startup.
//! - `error`: the one gateway error with blame, status and issue code.
//! - `fhir`: the REST request model, Bundles, OperationOutcome.
//! - `net`: outbound HTTP plumbing (TLS roots, connect deadlines).
//! - `proxy`: the pooled upstream client, deadlines and URL rewriting.
//! - `redact`: 42 CFR Part 2, financial stripping, service-date floor, prior
//!   authorizations: what of each resource may leave (policies/ as data).
//! - `gateway`: the shared state every handler holds, built once at startup.
//! - `listener`: accept loop, connection limit, TLS, graceful drain.
//! - `respond`: responses, and the one edge where an error becomes an
//!   OperationOutcome (its status comes from the error's kind).
//! - `server`: runs both listeners; the FHIR request pipeline.
//! - `access`: attribution, opt-outs, request decisions and the response filter.
//! - `auth`: SMART Backend Services: token endpoint, clients, token checks, scopes.
//! - `admin`: the operator API on its own listener (health, metrics, ...).
//! - `audit`: the hash-chained, durable audit log (one AuditEvent per request).
//! - `store`: persistent state in SQLite or PostgreSQL.
//! - `keyring`: the rotating keys every node shares (token signing, page sealing).
//! - `sandbox`: the built-in demo/test FHIR server (not the product).
//! - `plugins`: the WebAssembly plugin host (matcher and policy worlds).
//! - `plugin_cli`: `fhirwall match` and `fhirwall plugin test|check`.
//! - `ops`: FHIR operations fhirwall implements itself (`$member-match`).
//! - `telemetry`: logging and Prometheus metrics.

pub mod access;
pub mod admin;
pub mod audit;
pub mod auth;
pub mod chain;
pub mod clock;
pub mod config;
pub mod error;
pub mod fhir;
pub mod gateway;
pub mod keyring;
pub mod listener;
pub mod net;
pub mod ops;
pub mod plugin_cli;
pub mod plugin_scaffold;
pub mod plugins;
pub mod proxy;
pub mod rate_limit;
pub mod redact;
pub mod respond;
pub mod sandbox;
pub mod server;
pub mod store;
pub mod telemetry;

pub use error::{Blame, GatewayError};
