//! The server: runs the FHIR and admin listeners over one [`Gateway`], and
//! shuts both down gracefully on SIGTERM/SIGINT.
//!
//! - `pipeline`: the FHIR request pipeline, stage by stage.
//!
//! The accept loop is `crate::listener`, responses are `crate::respond`.

pub mod pipeline;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::gateway::Gateway;
use crate::listener;

/// Run both listeners until a shutdown signal, then drain.
pub async fn run(config: Config) -> anyhow::Result<()> {
    run_with_admin_token(config, None).await
}

/// `run`, with the admin token given directly instead of through the
/// environment variable `admin.token_env` names (the demo uses this).
pub async fn run_with_admin_token(config: Config, admin_token: Option<String>) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received");
        let _ = stop_tx.send(true);
    });
    run_until(config, admin_token, stop_rx).await
}

/// Run both listeners until `stop` flips to true (tests and the demo drive this).
pub async fn run_until(
    config: Config,
    admin_token: Option<String>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let fhir_addr = config.server.listen;
    let admin_addr = config.admin.listen;
    let tls = match (&config.server.tls_cert, &config.server.tls_key) {
        (Some(cert), Some(key)) => Some(listener::tls_acceptor(cert, key)?),
        _ => None,
    };
    let fhir_listener = TcpListener::bind(fhir_addr)
        .await
        .with_context(|| format!("server.listen: cannot bind {fhir_addr}"))?;
    let admin_listener = TcpListener::bind(admin_addr)
        .await
        .with_context(|| format!("admin.listen: cannot bind {admin_addr}"))?;

    let gateway = Gateway::build(config, admin_token).await?;
    gateway.spawn_key_refresher();
    let grace = Duration::from_secs(gateway.config.server.shutdown_grace_s);
    let max_connections = gateway.config.server.max_connections;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(
        fhir = %format!("{scheme}://{fhir_addr}"),
        admin = %format!("http://{admin_addr}"),
        base_url = %gateway.public_base,
        upstream = %if gateway.config.upstream.is_sandbox() { "sandbox" } else { gateway.upstream.base() },
        "fhirwall listening"
    );

    let handler = Arc::new(pipeline::FhirHandler::new(gateway.clone()));
    // The export runner claims jobs through the same handler the listener
    // serves, so a batch runs the chain an on-demand search runs. It runs on
    // its own one-thread runtime: however much work exports have, they hold
    // at most one core, and on-demand requests never queue behind them.
    let exports = export_runtime()?;
    let runner = crate::ops::export::runner::Runner::new(handler.clone(), gateway.exports.clone());
    let runner = {
        let _entered = exports.enter();
        runner.spawn(stop.clone())
    };
    let match_sweeper = pipeline::spawn_match_sweeper(gateway.clone());
    let fhir = listener::serve(
        fhir_listener,
        listener::ListenerSettings {
            name: "fhir",
            tls,
            max_connections,
            grace,
            metrics: gateway.metrics.clone(),
        },
        handler,
        stop.clone(),
    );
    let admin = listener::serve(
        admin_listener,
        listener::ListenerSettings {
            name: "admin",
            tls: None,
            max_connections: 64,
            grace,
            metrics: gateway.metrics.clone(),
        },
        Arc::new(
            crate::admin::AdminHandler::new(gateway.clone())
                .with_explainer(Arc::new(pipeline::explain::PipelineExplainer(gateway.clone()))),
        ),
        stop,
    );
    gateway.mark_ready();
    tokio::join!(fhir, admin);
    // A job stopped mid-batch resumes from its checkpoint (here or on
    // another node) once its lease runs out.
    runner.abort();
    match_sweeper.abort();
    exports.shutdown_background();
    if let Err(e) = gateway.audit.record(&crate::audit::AuditRecord::application(false)).await {
        tracing::error!(error = %e, "audit: cannot record the stop");
    }
    tracing::info!("fhirwall stopped");
    Ok(())
}

/// The runtime export jobs run on (see `run_until`).
fn export_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("fhirwall-export")
        .enable_all()
        .build()
        .context("starting the export runtime")
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
