//! The TOML configuration (DESIGN.md "Config"). Every table rejects unknown
//! keys, every default lives here, and relative paths resolve against the
//! config file's directory so a config means the same thing from any cwd.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A config problem, reported at startup (or by `fhirwall config check`).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config {path}: {key}: {message}")]
    Invalid { path: PathBuf, key: String, message: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    pub upstream: UpstreamConfig,
    #[serde(default)]
    pub state: StateConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    /// Provider systems allowed to request tokens.
    #[serde(default)]
    pub clients: Vec<ClientConfig>,
    #[serde(default)]
    pub attribution: AttributionConfig,
    #[serde(default)]
    pub policy: PolicyConfig,
    /// WebAssembly plugins (matcher and policy worlds).
    #[serde(default)]
    pub plugins: Vec<PluginConfig>,
    /// `$member-match` response options.
    #[serde(default)]
    pub member_match: MemberMatchConfig,
    #[serde(default)]
    pub audit: AuditConfig,
    /// Bulk export (`Group/{id}/$export`, `$davinci-data-export`).
    #[serde(default)]
    pub export: ExportConfig,
}

/// The public FHIR listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address the FHIR listener binds.
    pub listen: SocketAddr,
    /// The FHIR base URL fhirwall serves, as callers see it (scheme, host,
    /// port and path). Its path is where FHIR requests are routed; the token
    /// endpoint is `/auth/token` on the same origin.
    pub base_url: url::Url,
    /// PEM certificate chain; with `tls_key`, the listener speaks TLS.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Connections served at once; more wait in the accept queue.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
    /// Largest request body accepted (POST `_search`, operations).
    #[serde(default = "defaults::max_request_body_bytes")]
    pub max_request_body_bytes: usize,
    /// Seconds in-flight requests get to finish after SIGTERM/SIGINT.
    #[serde(default = "defaults::shutdown_grace_s")]
    pub shutdown_grace_s: u64,
    /// Let writes and batch/transaction through. Provider Access is read-only:
    /// leave this off unless the deployment is something else.
    #[serde(default)]
    pub allow_writes: bool,
    /// FHIR requests one client may make per second on this node, with
    /// bursts of twice that (more: 429 with `Retry-After`); 0 = no limit.
    #[serde(default = "defaults::client_requests_per_s")]
    pub client_requests_per_s: u32,
    /// The same over all the clients of one organization; 0 = no limit.
    #[serde(default = "defaults::organization_requests_per_s")]
    pub organization_requests_per_s: u32,
}

/// The operator API on its own listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address the admin listener binds (keep it private).
    #[serde(default = "defaults::admin_listen")]
    pub listen: SocketAddr,
    /// Name of the environment variable holding the admin bearer token. When
    /// it is unset or empty, every authenticated admin endpoint answers 401.
    #[serde(default = "defaults::admin_token_env")]
    pub token_env: String,
}

/// The FHIR server fhirwall fronts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Base URL of the upstream FHIR R4 server, or `"sandbox"` for the
    /// built-in demo server loaded with the synthetic payer dataset.
    pub url: String,
    /// Deadline for the whole upstream exchange (headers and body), ms.
    #[serde(default = "defaults::upstream_timeout_ms")]
    pub timeout_ms: u64,
    /// Deadline for establishing a connection, ms.
    #[serde(default = "defaults::upstream_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Largest upstream body fhirwall will read; bigger answers are a 502.
    #[serde(default = "defaults::upstream_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Idle pooled connections kept per upstream host.
    #[serde(default = "defaults::upstream_pool_max_idle")]
    pub pool_max_idle_per_host: usize,
    /// Other spellings of the upstream base that may appear in its answers
    /// (e.g. its public hostname); rewritten like `url`.
    #[serde(default)]
    pub base_aliases: Vec<String>,
    /// Name of an environment variable holding the `Authorization` header
    /// value fhirwall sends upstream (its own credential; the caller's token
    /// is never forwarded).
    #[serde(default)]
    pub authorization_env: Option<String>,
    /// OAuth 2.0 client credentials against the upstream's token endpoint
    /// (instead of `authorization_env`).
    #[serde(default)]
    pub oauth: Option<UpstreamOAuthConfig>,
    /// TLS to the upstream: a private CA, and a client certificate for
    /// mutual TLS.
    #[serde(default)]
    pub tls: Option<UpstreamTlsConfig>,
}

/// `[upstream.oauth]`: fhirwall obtains its own upstream access token with
/// the client-credentials grant, authenticating with a client secret
/// (`client_secret_basic`) or a signed assertion (`private_key_jwt`,
/// RFC 7523), caches it and refreshes it before it expires.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamOAuthConfig {
    /// The upstream authorization server's token endpoint.
    pub token_url: String,
    pub client_id: String,
    /// Environment variable holding the client secret (`client_secret_basic`).
    #[serde(default)]
    pub client_secret_env: Option<String>,
    /// PEM private key (PKCS#8, RSA or EC P-256/P-384) signing the client
    /// assertion (`private_key_jwt`).
    #[serde(default)]
    pub private_key_file: Option<PathBuf>,
    /// `kid` of that key as the authorization server knows it.
    #[serde(default)]
    pub key_id: Option<String>,
    /// `RS384` (default), `RS256`, `ES384` or `ES256`.
    #[serde(default = "defaults::upstream_oauth_algorithm")]
    pub algorithm: String,
    /// Scope asked for (none: the server's default).
    #[serde(default)]
    pub scope: Option<String>,
    /// A token is replaced this many seconds before it expires.
    #[serde(default = "defaults::upstream_oauth_refresh_before_s")]
    pub refresh_before_s: u64,
}

/// `[upstream.tls]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// PEM certificates to trust for the upstream (and its token endpoint)
    /// instead of the public web roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM certificate chain fhirwall presents (mutual TLS).
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of that certificate.
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
}

impl UpstreamConfig {
    pub fn is_sandbox(&self) -> bool {
        self.url == "sandbox"
    }
}

/// Where state lives (clients, opt-outs, rosters, jobs, replay cache).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// `sqlite://PATH` (relative to the config file) or `postgres://...`.
    #[serde(default = "defaults::state_url")]
    pub url: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Lifetime of issued access tokens, seconds (>= 1).
    #[serde(default = "defaults::token_ttl_s")]
    pub token_ttl_s: u64,
    /// Token requests this node answers per second, over all callers, with
    /// bursts of twice that (more: 429 with `Retry-After`): bounds the
    /// signature checks and replay-cache writes a flood can cause. 0 = no limit.
    #[serde(default = "defaults::token_requests_per_s")]
    pub token_requests_per_s: u32,
}

/// A registered provider system (SMART Backend Services client).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    pub client_id: String,
    /// The provider organization the client acts for: `Organization/{id}`.
    pub organization: String,
    /// The organization's NPI.
    #[serde(default)]
    pub npi: Option<String>,
    /// JWKS file with the client's public keys.
    #[serde(default)]
    pub jwks_path: Option<PathBuf>,
    /// JWKS inline.
    #[serde(default)]
    pub jwks: Option<serde_json::Value>,
    /// JWKS fetched over https and cached.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// Scopes the client may be granted.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// For sandboxes only: environment variable with a client secret, which
    /// enables `client_secret_basic` for this client.
    #[serde(default)]
    pub client_secret_env: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttributionSource {
    /// PDex attribution Groups read from the upstream, plus stored rosters.
    Upstream,
    /// Only rosters ingested through the admin API.
    Store,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttributionConfig {
    #[serde(default = "defaults::attribution_source")]
    pub source: AttributionSource,
    /// Seconds between refreshes of upstream attribution Groups.
    #[serde(default = "defaults::attribution_refresh_s")]
    pub refresh_s: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Part2Mode {
    /// Drop Part 2 resources entirely.
    Exclude,
    /// Keep the resource, remove the sensitive elements, label it REDACTED.
    Redact,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinancialMode {
    /// CARIN BB Non-Financial basis: no payment, totals or amounts.
    Strip,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    #[serde(default = "defaults::part2")]
    pub part2: Part2Mode,
    /// Part 2 programs: `Organization/{id}` references or NPIs.
    #[serde(default)]
    pub part2_programs: Vec<String>,
    /// Records with service dates before this date (YYYY-MM-DD) are excluded.
    #[serde(default = "defaults::service_date_floor")]
    pub service_date_floor: String,
    #[serde(default = "defaults::financial")]
    pub financial: FinancialMode,
    /// Largest visible set a patient-less search is narrowed to; beyond it
    /// the caller is pointed to bulk export.
    #[serde(default = "defaults::max_narrowed_patients")]
    pub max_narrowed_patients: usize,
    /// Tell providers that a member opted out (ConsentConstrainedMembers)
    /// rather than reporting a plain non-match.
    #[serde(default = "defaults::yes")]
    pub reveal_opt_out: bool,
    /// Directory with the policy data (code sets, program list, tables);
    /// default: the `policies/` folder shipped with fhirwall.
    #[serde(default)]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginWorld {
    Matcher,
    Policy,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    pub name: String,
    pub world: PluginWorld,
    /// The WebAssembly component (`.wasm`).
    pub path: PathBuf,
    /// Linear memory cap per instance.
    #[serde(default = "defaults::plugin_memory_mb")]
    pub memory_mb: u64,
    /// Deadline per call: the plugin's own compute time (time the host
    /// spends answering its `candidates` queries is not counted).
    #[serde(default = "defaults::plugin_timeout_ms")]
    pub timeout_ms: u64,
    // plugins: sandbox grants; nothing is granted by default.
    /// Environment variables the plugin sees (its configuration). Without
    /// this the environment is empty; the gateway's own is never inherited.
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// Give the plugin the real wall and monotonic clocks. Without this both
    /// read as the Unix epoch (deterministic plugins, no timing channel).
    #[serde(default)]
    pub clock: bool,
    /// Directories the plugin may read (read-only, at the same path).
    /// Network access is never granted.
    #[serde(default)]
    pub read_dirs: Vec<PathBuf>,
    /// Matchers: most members one `candidates` query returns.
    #[serde(default = "defaults::plugin_max_candidates")]
    pub max_candidates: usize,
}

// plugins
/// `$member-match` (HRex) response details.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberMatchConfig {
    /// `MemberIdentifier.type`: `MB` (v2-0203, HRex 1.0) or `UMB` (HRex 1.1
    /// hrex-temp).
    #[serde(default = "defaults::member_identifier_type")]
    pub identifier_type: MemberIdentifierType,
    /// Also return `MemberId` (a reference to the member's Patient; HRex 1.1).
    #[serde(default = "defaults::yes")]
    pub member_id: bool,
    /// `MemberIdentifier.system` when the member's own identifier has none.
    #[serde(default)]
    pub identifier_system: Option<String>,
    /// Brute-force defence (HRex HREX-10, see ops::throttle): attempts
    /// without a match one client may make for one person (family name and
    /// birth date) within `failure_window_s`; then 429.
    #[serde(default = "defaults::match_failures_per_subject")]
    pub max_failures_per_subject: u32,
    /// Attempts without a match one client may make in all within `failure_window_s`.
    #[serde(default = "defaults::match_failures_per_client")]
    pub max_failures_per_client: u32,
    /// The sliding window of both budgets, seconds.
    #[serde(default = "defaults::match_failure_window_s")]
    pub failure_window_s: u64,
    /// `$provider-member-match`: how long a MatchedMembers Group (and the
    /// attribution it gives) lives, days.
    #[serde(default = "defaults::group_ttl_days")]
    pub group_ttl_days: u32,
    /// `$provider-member-match`: most MemberBundles in one request (more: 400).
    #[serde(default = "defaults::provider_match_max_members")]
    pub max_members: usize,
    /// `$provider-member-match`: most members a request without `Prefer:
    /// respond-async` may carry (answered at once with 200); more need async.
    #[serde(default = "defaults::provider_match_sync_max_members")]
    pub sync_max_members: usize,
    /// `$provider-member-match`: requests one organization may have running
    /// at once, over all its clients and all nodes (more: 429).
    #[serde(default = "defaults::provider_match_max_jobs")]
    pub max_jobs_per_organization: u32,
    /// `$provider-member-match`: the member directory (every covered member,
    /// read from the upstream) is read again when older than this, seconds.
    #[serde(default = "defaults::directory_refresh_s")]
    pub directory_refresh_s: u64,
    /// `$provider-member-match`: how long a finished request's answer can be
    /// fetched from its status URL, seconds.
    #[serde(default = "defaults::provider_match_result_ttl_s")]
    pub result_ttl_s: u64,
    /// `$provider-member-match`: `Retry-After` of a running request's status, seconds.
    #[serde(default = "defaults::provider_match_retry_after_s")]
    pub retry_after_s: u64,
}

impl Default for MemberMatchConfig {
    fn default() -> Self {
        MemberMatchConfig {
            identifier_type: defaults::member_identifier_type(),
            member_id: true,
            identifier_system: None,
            max_failures_per_subject: defaults::match_failures_per_subject(),
            max_failures_per_client: defaults::match_failures_per_client(),
            failure_window_s: defaults::match_failure_window_s(),
            group_ttl_days: defaults::group_ttl_days(),
            max_members: defaults::provider_match_max_members(),
            sync_max_members: defaults::provider_match_sync_max_members(),
            max_jobs_per_organization: defaults::provider_match_max_jobs(),
            directory_refresh_s: defaults::directory_refresh_s(),
            result_ttl_s: defaults::provider_match_result_ttl_s(),
            retry_after_s: defaults::provider_match_retry_after_s(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberIdentifierType {
    #[serde(rename = "MB")]
    Mb,
    #[serde(rename = "UMB")]
    Umb,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Directory of the hash-chained NDJSON audit log. One writer per
    /// directory: give each gateway node its own.
    #[serde(default = "defaults::audit_dir")]
    pub dir: PathBuf,
    /// A log file is rotated (the chain continues in the next file) once it
    /// reaches this many bytes, at a batch boundary.
    #[serde(default = "defaults::audit_rotate_bytes")]
    pub rotate_bytes: u64,
}

/// Bulk export: where files go, how big they get, how long they live, and
/// how hard exports may press the upstream.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportConfig {
    /// Where export files are kept: a directory (relative to the config
    /// file), or `s3://bucket[/prefix]` for S3-compatible object storage
    /// shared by several nodes (credentials from `AWS_ACCESS_KEY_ID` /
    /// `AWS_SECRET_ACCESS_KEY`, or the `s3_*_env` variables named below).
    #[serde(default = "defaults::export_storage")]
    pub storage: String,
    /// S3: endpoint of an S3-compatible server (MinIO, moto, Ceph...);
    /// unset means AWS.
    #[serde(default)]
    pub s3_endpoint: Option<String>,
    /// S3: region.
    #[serde(default = "defaults::export_s3_region")]
    pub s3_region: String,
    /// S3: the environment variables holding the access key id and secret.
    #[serde(default)]
    pub s3_access_key_env: Option<String>,
    #[serde(default)]
    pub s3_secret_key_env: Option<String>,
    /// S3: allow a plain-HTTP endpoint (test servers on loopback).
    #[serde(default)]
    pub s3_allow_http: bool,
    /// An output file is cut once it holds this many bytes.
    #[serde(default = "defaults::export_file_max_bytes")]
    pub file_max_bytes: u64,
    /// How long a finished export's files stay downloadable, seconds.
    #[serde(default = "defaults::export_expire_s")]
    pub expire_s: u64,
    /// Patients per batch (one upstream search per type and batch:
    /// `patient=a,b,...`); a checkpoint is written after each batch.
    #[serde(default = "defaults::export_batch_patients")]
    pub batch_patients: usize,
    /// Upstream searches one job runs at once.
    #[serde(default = "defaults::export_concurrency")]
    pub concurrency: usize,
    /// Upstream requests per second all exports on this node may make
    /// together, so on-demand requests keep their latency.
    #[serde(default = "defaults::export_upstream_rps")]
    pub upstream_rps: u32,
    /// Jobs one client may have queued or running (more: 429).
    #[serde(default = "defaults::export_max_jobs_per_client")]
    pub max_jobs_per_client: u32,
    /// Jobs running at once on all nodes together.
    #[serde(default = "defaults::export_max_running_jobs")]
    pub max_running_jobs: u32,
    /// The `Retry-After` a status poll is given while the job runs, seconds;
    /// polling sooner is answered 429.
    #[serde(default = "defaults::export_retry_after_s")]
    pub retry_after_s: u64,
    /// A running job's lease, seconds: a node that stops renewing it (crash,
    /// kill -9) loses the job to another node (or its own restart) after this.
    #[serde(default = "defaults::export_lease_s")]
    pub lease_s: u64,
}

impl Default for ExportConfig {
    fn default() -> Self {
        ExportConfig {
            storage: defaults::export_storage(),
            s3_endpoint: None,
            s3_region: defaults::export_s3_region(),
            s3_access_key_env: None,
            s3_secret_key_env: None,
            s3_allow_http: false,
            file_max_bytes: defaults::export_file_max_bytes(),
            expire_s: defaults::export_expire_s(),
            batch_patients: defaults::export_batch_patients(),
            concurrency: defaults::export_concurrency(),
            upstream_rps: defaults::export_upstream_rps(),
            max_jobs_per_client: defaults::export_max_jobs_per_client(),
            max_running_jobs: defaults::export_max_running_jobs(),
            retry_after_s: defaults::export_retry_after_s(),
            lease_s: defaults::export_lease_s(),
        }
    }
}

impl ExportConfig {
    /// Is the storage an S3-compatible bucket (else a local directory)?
    pub fn is_s3(&self) -> bool {
        self.storage.starts_with("s3://")
    }
}

/// Every default, in one place.
mod defaults {
    use std::net::SocketAddr;
    use std::path::PathBuf;

    pub fn max_connections() -> usize {
        4096
    }
    pub fn max_request_body_bytes() -> usize {
        4 * 1024 * 1024
    }
    pub fn shutdown_grace_s() -> u64 {
        30
    }
    pub fn admin_listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 8081))
    }
    pub fn admin_token_env() -> String {
        "FHIRWALL_ADMIN_TOKEN".into()
    }
    pub fn upstream_timeout_ms() -> u64 {
        15_000
    }
    pub fn upstream_connect_timeout_ms() -> u64 {
        2_000
    }
    pub fn upstream_max_body_bytes() -> usize {
        64 * 1024 * 1024
    }
    pub fn upstream_oauth_algorithm() -> String {
        "RS384".into()
    }
    pub fn upstream_oauth_refresh_before_s() -> u64 {
        60
    }
    pub fn upstream_pool_max_idle() -> usize {
        64
    }
    pub fn state_url() -> String {
        "sqlite://data/fhirwall.db".into()
    }
    pub fn token_ttl_s() -> u64 {
        300
    }
    pub fn token_requests_per_s() -> u32 {
        100
    }
    pub fn client_requests_per_s() -> u32 {
        200
    }
    pub fn organization_requests_per_s() -> u32 {
        1000
    }
    pub fn attribution_source() -> super::AttributionSource {
        super::AttributionSource::Upstream
    }
    pub fn attribution_refresh_s() -> u64 {
        300
    }
    pub fn part2() -> super::Part2Mode {
        super::Part2Mode::Exclude
    }
    pub fn service_date_floor() -> String {
        "2016-01-01".into()
    }
    pub fn financial() -> super::FinancialMode {
        super::FinancialMode::Strip
    }
    pub fn max_narrowed_patients() -> usize {
        100
    }
    pub fn yes() -> bool {
        true
    }
    pub fn plugin_memory_mb() -> u64 {
        64
    }
    pub fn plugin_timeout_ms() -> u64 {
        100
    }
    pub fn plugin_max_candidates() -> usize {
        100
    }
    pub fn match_failures_per_subject() -> u32 {
        5
    }
    pub fn match_failures_per_client() -> u32 {
        500
    }
    pub fn match_failure_window_s() -> u64 {
        3600
    }
    pub fn group_ttl_days() -> u32 {
        30
    }
    pub fn provider_match_max_members() -> usize {
        1000
    }
    pub fn provider_match_sync_max_members() -> usize {
        10
    }
    pub fn provider_match_max_jobs() -> u32 {
        2
    }
    pub fn directory_refresh_s() -> u64 {
        300
    }
    pub fn provider_match_result_ttl_s() -> u64 {
        86_400
    }
    pub fn provider_match_retry_after_s() -> u64 {
        2
    }
    pub fn member_identifier_type() -> super::MemberIdentifierType {
        super::MemberIdentifierType::Mb
    }
    pub fn audit_dir() -> PathBuf {
        PathBuf::from("data/audit")
    }
    pub fn audit_rotate_bytes() -> u64 {
        64 * 1024 * 1024
    }
    pub fn export_storage() -> String {
        "data/exports".into()
    }
    pub fn export_s3_region() -> String {
        "us-east-1".into()
    }
    pub fn export_file_max_bytes() -> u64 {
        256 * 1024 * 1024
    }
    pub fn export_expire_s() -> u64 {
        24 * 3600
    }
    pub fn export_batch_patients() -> usize {
        50
    }
    pub fn export_concurrency() -> usize {
        2
    }
    pub fn export_upstream_rps() -> u32 {
        100
    }
    pub fn export_max_jobs_per_client() -> u32 {
        2
    }
    pub fn export_max_running_jobs() -> u32 {
        4
    }
    pub fn export_retry_after_s() -> u64 {
        2
    }
    pub fn export_lease_s() -> u64 {
        30
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig { listen: defaults::admin_listen(), token_env: defaults::admin_token_env() }
    }
}
impl Default for StateConfig {
    fn default() -> Self {
        StateConfig { url: defaults::state_url() }
    }
}
impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            token_ttl_s: defaults::token_ttl_s(),
            token_requests_per_s: defaults::token_requests_per_s(),
        }
    }
}
impl Default for AttributionConfig {
    fn default() -> Self {
        AttributionConfig {
            source: defaults::attribution_source(),
            refresh_s: defaults::attribution_refresh_s(),
        }
    }
}
impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            part2: defaults::part2(),
            part2_programs: Vec::new(),
            service_date_floor: defaults::service_date_floor(),
            financial: defaults::financial(),
            max_narrowed_patients: defaults::max_narrowed_patients(),
            reveal_opt_out: true,
            dir: None,
        }
    }
}
impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig { dir: defaults::audit_dir(), rotate_bytes: defaults::audit_rotate_bytes() }
    }
}

impl Config {
    /// Read, parse, resolve relative paths and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
        Config::from_toml(&text, &dir).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse { path: path.to_owned(), message },
            ConfigError::Invalid { key, message, .. } => {
                ConfigError::Invalid { path: path.to_owned(), key, message }
            }
            other => other,
        })
    }

    /// Parse config text; relative paths resolve against `dir`.
    pub fn from_toml(text: &str, dir: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: PathBuf::new(), message: e.to_string() })?;
        config.resolve_paths(dir);
        config.validate()?;
        Ok(config)
    }

    fn resolve_paths(&mut self, dir: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        if let Some(p) = self.server.tls_cert.as_mut() {
            resolve(p);
        }
        if let Some(p) = self.server.tls_key.as_mut() {
            resolve(p);
        }
        if let Some(oauth) = self.upstream.oauth.as_mut()
            && let Some(p) = oauth.private_key_file.as_mut()
        {
            resolve(p);
        }
        if let Some(tls) = self.upstream.tls.as_mut() {
            [&mut tls.ca_file, &mut tls.client_cert_file, &mut tls.client_key_file]
                .into_iter()
                .flatten()
                .for_each(resolve);
        }
        for client in &mut self.clients {
            if let Some(p) = client.jwks_path.as_mut() {
                resolve(p);
            }
        }
        for plugin in &mut self.plugins {
            resolve(&mut plugin.path);
            plugin.read_dirs.iter_mut().for_each(resolve);
        }
        if let Some(p) = self.policy.dir.as_mut() {
            resolve(p);
        }
        resolve(&mut self.audit.dir);
        if !self.export.is_s3() && Path::new(&self.export.storage).is_relative() {
            self.export.storage = dir.join(&self.export.storage).display().to_string();
        }
        if let Some(rest) = self.state.url.strip_prefix("sqlite://") {
            let (file, query) = rest.split_once('?').map_or((rest, None), |(f, q)| (f, Some(q)));
            if !file.is_empty() && file != ":memory:" && Path::new(file).is_relative() {
                let abs = dir.join(file);
                self.state.url = match query {
                    Some(q) => format!("sqlite://{}?{q}", abs.display()),
                    None => format!("sqlite://{}", abs.display()),
                };
            }
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: PathBuf::new(),
            key: key.to_owned(),
            message,
        };
        self.validate_server(&invalid)?;
        if self.audit.rotate_bytes < 4096 {
            return Err(invalid("audit.rotate_bytes", "must be at least 4096".into()));
        }
        self.validate_export(&invalid)?;
        if self.server.max_connections == 0 {
            return Err(invalid("server.max_connections", "must be at least 1".into()));
        }
        let mm = &self.member_match;
        if mm.max_failures_per_subject == 0 || mm.max_failures_per_client == 0 || mm.failure_window_s == 0 {
            return Err(invalid(
                "member_match.max_failures_per_subject",
                "member_match budgets and failure_window_s must be at least 1 (the brute-force defence cannot be switched off)"
                    .into(),
            ));
        }
        for (key, value) in [
            ("member_match.group_ttl_days", u64::from(mm.group_ttl_days)),
            ("member_match.max_members", mm.max_members as u64),
            ("member_match.max_jobs_per_organization", u64::from(mm.max_jobs_per_organization)),
            ("member_match.directory_refresh_s", mm.directory_refresh_s),
            ("member_match.result_ttl_s", mm.result_ttl_s),
            ("member_match.retry_after_s", mm.retry_after_s),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1".into()));
            }
        }
        if mm.group_ttl_days > 3650 {
            return Err(invalid("member_match.group_ttl_days", "must be at most 3650".into()));
        }
        self.validate_upstream(&invalid)?;
        if !(self.state.url.starts_with("sqlite:") || self.state.url.starts_with("postgres")) {
            return Err(invalid("state.url", "must be sqlite://PATH or postgres://...".into()));
        }
        if self.auth.token_ttl_s == 0 {
            return Err(invalid("auth.token_ttl_s", "must be at least 1".into()));
        }
        self.validate_clients(&invalid)?;
        if !is_iso_date(&self.policy.service_date_floor) {
            return Err(invalid("policy.service_date_floor", "must be a date YYYY-MM-DD".into()));
        }
        self.validate_plugins(&invalid)?;
        Ok(())
    }

    fn validate_server(&self, invalid: &dyn Fn(&str, String) -> ConfigError) -> Result<(), ConfigError> {
        let base = &self.server.base_url;
        if !matches!(base.scheme(), "http" | "https") || base.host().is_none() {
            return Err(invalid("server.base_url", "must be an absolute http(s) URL".into()));
        }
        if base.query().is_some() || base.fragment().is_some() {
            return Err(invalid("server.base_url", "must not have a query or fragment".into()));
        }
        if base.path().trim_end_matches('/').starts_with("/auth") || base.path().starts_with("/.well-known") {
            return Err(invalid("server.base_url", "its path must not overlap /auth or /.well-known".into()));
        }
        if self.server.tls_cert.is_some() != self.server.tls_key.is_some() {
            return Err(invalid("server.tls_cert", "tls_cert and tls_key go together".into()));
        }
        for (key, path) in
            [("server.tls_cert", &self.server.tls_cert), ("server.tls_key", &self.server.tls_key)]
        {
            if let Some(p) = path
                && !p.is_file()
            {
                return Err(invalid(key, format!("no such file: {}", p.display())));
            }
        }
        if self.server.listen == self.admin.listen {
            return Err(invalid("admin.listen", "must differ from server.listen".into()));
        }
        Ok(())
    }

    fn validate_export(&self, invalid: &dyn Fn(&str, String) -> ConfigError) -> Result<(), ConfigError> {
        let e = &self.export;
        let at_least_one = [
            ("export.file_max_bytes", e.file_max_bytes == 0),
            ("export.expire_s", e.expire_s == 0),
            ("export.batch_patients", e.batch_patients == 0),
            ("export.concurrency", e.concurrency == 0),
            ("export.upstream_rps", e.upstream_rps == 0),
            ("export.max_jobs_per_client", e.max_jobs_per_client == 0),
            ("export.max_running_jobs", e.max_running_jobs == 0),
            ("export.retry_after_s", e.retry_after_s == 0),
            ("export.lease_s", e.lease_s < 2),
        ];
        if let Some((key, _)) = at_least_one.iter().find(|(_, zero)| *zero) {
            return Err(invalid(key, "must be at least 1 (lease_s: at least 2)".into()));
        }
        if e.batch_patients > 500 {
            return Err(invalid("export.batch_patients", "must be at most 500".into()));
        }
        if e.is_s3() && e.storage.trim_start_matches("s3://").split('/').next().unwrap_or("").is_empty() {
            return Err(invalid("export.storage", "s3://BUCKET[/PREFIX] names no bucket".into()));
        }
        Ok(())
    }

    fn validate_upstream(&self, invalid: &dyn Fn(&str, String) -> ConfigError) -> Result<(), ConfigError> {
        if !self.upstream.is_sandbox() {
            let u = url::Url::parse(&self.upstream.url)
                .map_err(|e| invalid("upstream.url", format!("not a URL or \"sandbox\": {e}")))?;
            if !matches!(u.scheme(), "http" | "https") || u.host().is_none() {
                return Err(invalid("upstream.url", "must be an absolute http(s) URL or \"sandbox\"".into()));
            }
        }
        for alias in &self.upstream.base_aliases {
            url::Url::parse(alias).map_err(|e| invalid("upstream.base_aliases", format!("{alias}: {e}")))?;
        }
        if self.upstream.timeout_ms == 0 || self.upstream.connect_timeout_ms == 0 {
            return Err(invalid("upstream.timeout_ms", "deadlines must be at least 1 ms".into()));
        }
        if let Some(o) = &self.upstream.oauth {
            if self.upstream.authorization_env.is_some() {
                return Err(invalid(
                    "upstream.oauth",
                    "set either upstream.authorization_env or [upstream.oauth], not both".into(),
                ));
            }
            let u = url::Url::parse(&o.token_url)
                .map_err(|e| invalid("upstream.oauth.token_url", format!("not a URL: {e}")))?;
            if !matches!(u.scheme(), "http" | "https") {
                return Err(invalid("upstream.oauth.token_url", "must be an http(s) URL".into()));
            }
            if o.client_id.is_empty() {
                return Err(invalid("upstream.oauth.client_id", "must not be empty".into()));
            }
            if o.client_secret_env.is_some() == o.private_key_file.is_some() {
                return Err(invalid(
                    "upstream.oauth",
                    "set exactly one of client_secret_env (client_secret_basic) and private_key_file (private_key_jwt)"
                        .into(),
                ));
            }
            if !["RS256", "RS384", "ES256", "ES384"].contains(&o.algorithm.as_str()) {
                return Err(invalid(
                    "upstream.oauth.algorithm",
                    format!("{}: use RS384, RS256, ES384 or ES256", o.algorithm),
                ));
            }
        }
        if let Some(t) = &self.upstream.tls
            && t.client_cert_file.is_some() != t.client_key_file.is_some()
        {
            return Err(invalid(
                "upstream.tls",
                "client_cert_file and client_key_file go together (mutual TLS needs both)".into(),
            ));
        }
        Ok(())
    }

    fn validate_plugins(&self, invalid: &dyn Fn(&str, String) -> ConfigError) -> Result<(), ConfigError> {
        let mut names = std::collections::HashSet::new();
        if self.plugins.iter().filter(|p| p.world == PluginWorld::Matcher).count() > 1 {
            return Err(invalid("plugins.world", "at most one matcher plugin".into()));
        }
        for plugin in &self.plugins {
            if !names.insert(&plugin.name) {
                return Err(invalid("plugins.name", format!("duplicate plugin name {}", plugin.name)));
            }
            if !plugin.path.is_file() {
                return Err(invalid("plugins.path", format!("no such file: {}", plugin.path.display())));
            }
            for dir in &plugin.read_dirs {
                if !dir.is_dir() {
                    return Err(invalid(
                        "plugins.read_dirs",
                        format!("no such directory: {}", dir.display()),
                    ));
                }
            }
            if plugin.memory_mb > 4096 || plugin.timeout_ms > 60_000 {
                return Err(invalid(
                    "plugins.memory_mb",
                    "memory_mb is at most 4096 and timeout_ms at most 60000".into(),
                ));
            }
            if plugin.max_candidates == 0 {
                return Err(invalid("plugins.max_candidates", "must be at least 1".into()));
            }
            if plugin.memory_mb == 0 || plugin.timeout_ms == 0 {
                return Err(invalid(
                    "plugins.memory_mb",
                    "memory_mb and timeout_ms must be at least 1".into(),
                ));
            }
        }
        Ok(())
    }

    fn validate_clients(&self, invalid: &dyn Fn(&str, String) -> ConfigError) -> Result<(), ConfigError> {
        let mut ids = std::collections::HashSet::new();
        for client in &self.clients {
            if client.client_id.is_empty() || !ids.insert(&client.client_id) {
                return Err(invalid(
                    "clients.client_id",
                    format!("empty or duplicate: {:?}", client.client_id),
                ));
            }
            let org = client.organization.strip_prefix("Organization/").unwrap_or("");
            if org.is_empty() || org.contains('/') {
                return Err(invalid(
                    "clients.organization",
                    format!("{}: must be Organization/{{id}}", client.client_id),
                ));
            }
            let sources = [client.jwks_path.is_some(), client.jwks.is_some(), client.jwks_uri.is_some()];
            if sources.iter().filter(|s| **s).count() > 1 {
                return Err(invalid(
                    "clients.jwks",
                    format!("{}: give one of jwks, jwks_path, jwks_uri", client.client_id),
                ));
            }
            if let Some(p) = &client.jwks_path
                && !p.is_file()
            {
                return Err(invalid(
                    "clients.jwks_path",
                    format!("{}: no such file: {}", client.client_id, p.display()),
                ));
            }
        }
        Ok(())
    }

    /// The resolved config as TOML, for `fhirwall config check`.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

/// `YYYY-MM-DD` with a plausible month and day.
pub fn is_iso_date(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return false;
    }
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    if !(digits(0..4) && digits(5..7) && digits(8..10)) {
        return false;
    }
    let month: u32 = s[5..7].parse().unwrap_or(0);
    let day: u32 = s[8..10].parse().unwrap_or(0);
    (1..=12).contains(&month) && (1..=31).contains(&day)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[server]
listen = "127.0.0.1:8080"
base_url = "http://127.0.0.1:8080/fhir"
[upstream]
url = "sandbox"
"#;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::from_toml(MINIMAL, Path::new("/etc/fw")).unwrap();
        assert_eq!(c.upstream.timeout_ms, 15_000);
        assert_eq!(c.state.url, "sqlite:///etc/fw/data/fhirwall.db");
        assert_eq!(c.audit.dir, PathBuf::from("/etc/fw/data/audit"));
        assert_eq!(c.policy.service_date_floor, "2016-01-01");
        assert_eq!(c.admin.token_env, "FHIRWALL_ADMIN_TOKEN");
    }

    #[test]
    fn unknown_keys_are_named() {
        for (text, key) in [
            (format!("{MINIMAL}\n[audit]\nbogus_audit = 1\n"), "bogus_audit"),
            (MINIMAL.replace("[upstream]", "[upstream]\nbogus_up = 2"), "bogus_up"),
            (
                format!(
                    "{MINIMAL}\n[[clients]]\nclient_id=\"a\"\norganization=\"Organization/o\"\nbogus_client = \"x\"\n"
                ),
                "bogus_client",
            ),
            (format!("{MINIMAL}\n[bogus_table]\nx = 1\n"), "bogus_table"),
        ] {
            let err = Config::from_toml(&text, Path::new("/")).unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }
    }

    #[test]
    fn invalid_values_are_refused_with_their_key() {
        for (patch, key) in [
            (("url = \"sandbox\"", "url = \"ftp://x\""), "upstream.url"),
            (("url = \"sandbox\"", "url = \"sandbox\"\ntimeout_ms = 0"), "upstream.timeout_ms"),
            (("/fhir\"", "/auth\""), "server.base_url"),
            (("http://127.0.0.1:8080/fhir", "not a url"), "base_url"),
        ] {
            let text = MINIMAL.replace(patch.0, patch.1);
            let err = Config::from_toml(&text, Path::new("/")).unwrap_err().to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
        let floor = format!("{MINIMAL}\n[policy]\nservice_date_floor = \"2016-13-01\"\n");
        assert!(Config::from_toml(&floor, Path::new("/")).is_err());
        let ttl = format!("{MINIMAL}\n[auth]\ntoken_ttl_s = 0\n");
        assert!(Config::from_toml(&ttl, Path::new("/")).is_err());
    }

    #[test]
    fn relative_paths_resolve_against_the_config_dir() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("keys")).unwrap();
        std::fs::write(dir.path().join("keys/a.jwks.json"), "{\"keys\":[]}").unwrap();
        let text = format!(
            "{MINIMAL}\n[[clients]]\nclient_id=\"a\"\norganization=\"Organization/o\"\njwks_path=\"keys/a.jwks.json\"\n"
        );
        let c = Config::from_toml(&text, dir.path()).unwrap();
        assert_eq!(c.clients[0].jwks_path.as_deref(), Some(dir.path().join("keys/a.jwks.json").as_path()));
        let missing = text.replace("a.jwks.json", "missing.json");
        assert!(Config::from_toml(&missing, dir.path()).unwrap_err().to_string().contains("no such file"));
    }

    #[test]
    fn iso_dates() {
        assert!(is_iso_date("2016-01-01"));
        for bad in ["2016-1-01", "2016-00-01", "2016-01-32", "20160101", "2016-01-01T00:00:00Z", ""] {
            assert!(!is_iso_date(bad), "{bad}");
        }
    }
}
