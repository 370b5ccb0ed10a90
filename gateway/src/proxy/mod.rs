//! The upstream side: a pooled HTTP(S) client with deadlines (`client`),
//! fhirwall's own upstream credential (`credentials`),
//! rewriting of upstream URLs to fhirwall's base (`rewrite`), and sealed
//! paging tokens that keep upstream links server-side (`paging`).

pub mod client;
pub mod credentials;
pub mod paging;
pub mod rewrite;

pub use client::{Upstream, UpstreamRequest, UpstreamResponse};
pub use paging::{Looped, PageRef, PageSealer, Trail};
pub use rewrite::UrlRewriter;
