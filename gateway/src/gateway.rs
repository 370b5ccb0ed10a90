//! The gateway's shared state: everything a request handler needs, built
//! once at startup from the config (policy data, audit log, store, token
//! checks, upstream client, attribution, plugins). The FHIR pipeline and the
//! admin API both hold it; neither owns it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;

use crate::config::Config;
use crate::fhir::ParseOptions;
use crate::keyring::{Keyring, Purpose};
use crate::proxy::{PageSealer, Upstream};
use crate::sandbox;
use crate::store::Store;
use crate::telemetry::Metrics;

/// How long a paging link stays valid.
const PAGE_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// How long a referenced resource's Part 2 classification is reused.
pub const PART2_TARGET_TTL: std::time::Duration = std::time::Duration::from_secs(30);
/// How long an organization's visible patients' identifiers are reused.
pub const MEMBER_IDS_TTL: std::time::Duration = std::time::Duration::from_secs(300);

/// Everything a request handler needs, built once at startup.
pub struct Gateway {
    pub config: Config,
    /// Path of the FHIR base (`/fhir`), no trailing slash ("" for the root).
    pub base_path: String,
    /// The public FHIR base URL, no trailing slash.
    pub public_base: String,
    pub upstream: Upstream,
    pub pages: PageSealer,
    /// WebAssembly plugins: the matcher and the policy chain.
    pub plugins: Arc<crate::plugins::Plugins>,
    pub store: Store,
    /// The rotating keys (polled by [`Gateway::spawn_key_refresher`]).
    pub keyring: Keyring,
    /// SMART Backend Services: token endpoint, clients, token checks.
    pub auth: crate::auth::Auth,
    pub metrics: Arc<Metrics>,
    pub parse_options: ParseOptions,
    /// The admin bearer token; `None` locks every authenticated admin endpoint.
    pub admin_token: Option<String>,
    /// The audit log every request is recorded in before it is answered.
    pub audit: crate::audit::AuditLog,
    /// Attribution, opt-outs, request decisions and the response filter.
    pub access: Arc<crate::access::Access>,
    /// Part 2, drug PAs, service-date floor, financial stripping.
    pub redactor: Arc<crate::redact::Redactor>,
    /// `$member-match` brute-force budgets (HREX-10), kept in the store.
    pub match_throttle: crate::ops::throttle::MatchThrottle,
    /// Bulk export jobs, their files and the upstream budget they share.
    pub exports: Arc<crate::ops::export::Exports>,
    /// `$provider-member-match` jobs, stored Groups and the member directory.
    pub provider_matches: Arc<crate::ops::provider_match::ProviderMatches>,
    /// Referenced resources already classified for Part 2 (`Type/id` ->
    /// withheld), shared by requests for [`PART2_TARGET_TTL`]: a record that
    /// becomes Part 2 upstream withholds its referrers within that time.
    pub part2_targets: moka::sync::Cache<String, bool>,
    /// Per organization: its visible patients' identifiers, for references
    /// given by identifier only (`pipeline::identifiers`).
    pub member_ids: moka::future::Cache<String, Arc<std::collections::HashMap<String, String>>>,
    ready: AtomicBool,
    /// Keeps the built-in sandbox running when `upstream.url = "sandbox"`.
    _sandbox: Option<sandbox::SandboxHandle>,
}

impl Gateway {
    /// Build the gateway: open the store, start the sandbox if configured,
    /// set up the upstream client.
    pub async fn build(config: Config, admin_token: Option<String>) -> anyhow::Result<Arc<Gateway>> {
        let public_base = config.server.base_url.as_str().trim_end_matches('/').to_owned();
        let base_path = config.server.base_url.path().trim_end_matches('/').to_owned();

        // redact: the policy data first; invalid data stops startup.
        let redactor = crate::redact::Redactor::new(&config.policy).context("policy")?;
        for (file, from) in &redactor.policies().sources {
            tracing::debug!(file = %file, from = %from, "policy file");
        }
        let audit = open_audit(&config).await?;
        let store = Store::open(&config.state.url).await.context("state.url")?;
        // keyring: the token signing and page sealing keys, every generation.
        let token_ttl_s = i64::try_from(config.auth.token_ttl_s).unwrap_or(i64::MAX);
        let page_ttl_s = PAGE_TOKEN_TTL.as_secs() as i64;
        let keyring = Keyring::open(store.clone(), token_ttl_s, page_ttl_s, crate::clock::unix_now_s())
            .await
            .context("state: keys")?;
        let pages = PageSealer::from_set(&keyring.load(Purpose::PageToken).await?, PAGE_TOKEN_TTL)
            .map_err(|e| anyhow::anyhow!("state: page key: {}", e.message))?;
        let auth = crate::auth::Auth::new(&config, &store, &keyring).await.context("auth")?;
        let match_throttle = crate::ops::throttle::MatchThrottle::new(
            store.clone(),
            crate::ops::throttle::Budgets::from_config(&config.member_match),
        )
        .await
        .context("state: member-match throttle")?;

        let exports = crate::ops::export::Exports::open(&config.export, store.clone(), &public_base)
            .await
            .context("export")?;

        let (upstream_base, sandbox) = if config.upstream.is_sandbox() {
            let data = Arc::new(sandbox::Sandbox::builtin().context("loading the sandbox dataset")?);
            let handle = sandbox::start(std::net::SocketAddr::from(([127, 0, 0, 1], 0)), data)
                .await
                .context("starting the built-in sandbox upstream")?;
            (handle.base_url().to_owned(), Some(handle))
        } else {
            (config.upstream.url.clone(), None)
        };
        let upstream = Upstream::new(&config.upstream, &upstream_base, &public_base)?;
        let provider_matches = crate::ops::provider_match::ProviderMatches {
            jobs: crate::ops::provider_match::jobs::MatchJobs::open(store.clone())
                .await
                .context("state: provider-member-match jobs")?,
            directory: crate::ops::provider_match::directory::MemberDirectory::new(
                upstream.clone(),
                crate::ops::provider_match::directory_refresh(&config.member_match),
            ),
            settings: config.member_match.clone(),
            reveal_opt_out: config.policy.reveal_opt_out,
            public_base: public_base.clone(),
            node: format!("{}-{}", std::process::id(), crate::audit::event::new_event_id()),
        };
        // access: attribution is loaded per organization on first
        // use and refreshed every attribution.refresh_s in the background.
        let access = crate::access::Access::new(&config, store.clone(), upstream.clone(), &public_base)
            .context("access")?;
        access.spawn_refresher();

        let admin_token =
            admin_token.or_else(|| std::env::var(&config.admin.token_env).ok()).filter(|t| !t.is_empty());
        if admin_token.is_none() {
            tracing::warn!(
                env = %config.admin.token_env,
                "no admin token in the environment: the admin API refuses every authenticated call"
            );
        }
        // plugins: compiled (or taken from the compile cache) and
        // type-checked now; a plugin that does not load stops startup.
        let plugins = load_plugins(&config).await?;

        // redact: programs known by one name are matched by both (looked up
        // on the upstream in the background; answers wait for it).
        let redactor = Arc::new(redactor);
        crate::redact::resolve::spawn(redactor.clone(), upstream.clone());

        Ok(Arc::new(Gateway {
            parse_options: ParseOptions { allow_writes: config.server.allow_writes },
            config,
            base_path,
            public_base,
            upstream,
            pages,
            keyring,
            plugins,
            store,
            auth,
            metrics: Arc::new(Metrics::default()),
            admin_token,
            audit,
            access,
            redactor,
            match_throttle,
            exports: Arc::new(exports),
            provider_matches: Arc::new(provider_matches),
            part2_targets: moka::sync::Cache::builder()
                .max_capacity(200_000)
                .time_to_live(PART2_TARGET_TTL)
                .build(),
            member_ids: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(MEMBER_IDS_TTL)
                .build(),
            ready: AtomicBool::new(false),
            _sandbox: sandbox,
        }))
    }

    /// Read the key table and take what changed: a rotation made on any
    /// node is in force here within [`crate::keyring::POLL`].
    pub async fn refresh_keys(&self) -> anyhow::Result<()> {
        let tokens = self.keyring.load(Purpose::AccessToken).await?;
        self.auth.install_keys(&tokens).context("access-token key")?;
        let pages = self.keyring.load(Purpose::PageToken).await?;
        self.pages.install(&pages).map_err(|e| anyhow::anyhow!("page key: {}", e.message))?;
        Ok(())
    }

    /// Poll the key table for as long as the gateway lives (and purge
    /// generations retired long ago, about once an hour).
    pub fn spawn_key_refresher(self: &Arc<Self>) {
        let gw = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(crate::keyring::POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut polls: u64 = 0;
            loop {
                tick.tick().await;
                let Some(gw) = gw.upgrade() else { return };
                // A store outage keeps the keys this node has; requests
                // meanwhile fail closed on the store themselves.
                if let Err(e) = gw.refresh_keys().await {
                    tracing::warn!(error = %format!("{e:#}"), "keys not refreshed");
                }
                polls += 1;
                if polls.is_multiple_of(1800)
                    && let Err(e) = gw.keyring.purge(crate::clock::unix_now_s()).await
                {
                    tracing::warn!(error = %e, "retired keys not purged");
                }
            }
        });
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Both listeners are bound and serving: `/readyz` answers 200 from now.
    pub fn mark_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }
}

/// Load the `[[plugins]]` (compiling on a blocking thread) and watch their files.
async fn load_plugins(config: &Config) -> anyhow::Result<Arc<crate::plugins::Plugins>> {
    if config.plugins.is_empty() {
        return Ok(Arc::new(crate::plugins::Plugins::none()?));
    }
    let configs = config.plugins.clone();
    let cache = crate::plugins::cache_dir(&config.state.url);
    let plugins = tokio::task::spawn_blocking(move || crate::plugins::Plugins::load(&configs, Some(cache)))
        .await
        .context("plugins: load task")??;
    let plugins = Arc::new(plugins);
    plugins.spawn_watcher();
    Ok(plugins)
}

/// Open the audit log (recovering a crash's torn tail) and record the start.
async fn open_audit(config: &Config) -> anyhow::Result<crate::audit::AuditLog> {
    let (audit, recovery) = crate::audit::AuditLog::open(&config.audit.dir, config.audit.rotate_bytes)
        .with_context(|| format!("audit.dir {}", config.audit.dir.display()))?;
    let mut start = crate::audit::AuditRecord::application(true);
    if recovery.torn_bytes > 0 {
        start.detail("recovered.torn-bytes", recovery.torn_bytes.to_string());
    }
    if recovery.last_record_damaged {
        start.detail("recovered.last-record-damaged", "true");
    }
    audit.record(&start).await.context("audit: cannot record the start")?;
    Ok(audit)
}
