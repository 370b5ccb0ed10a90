//! Accepting connections: a bounded number at once, optional TLS, HTTP/1.1
//! and HTTP/2 on the same port, and graceful shutdown (stop accepting, let
//! in-flight requests finish within a grace period, then close).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::telemetry::Metrics;

/// How long a client gets to finish a TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client gets to send its request head (slowloris).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request head read, HTTP/1.1 (request line and headers; more:
/// 431) and HTTP/2 (the decoded header list, however many CONTINUATION
/// frames carry it). A FHIR request with a bearer token needs a few KiB.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// HTTP/2 rapid reset (CVE-2023-44487): streams a client may open and
/// reset before the server accepted them, and resets the server sends for
/// a client's protocol errors, before the connection is closed.
const MAX_PENDING_RESETS: usize = 20;
const MAX_ERROR_RESETS: usize = 256;

/// The per-request handler a listener serves.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> impl Future<Output = Response<crate::respond::Body>> + Send;
}

/// How one listener behaves.
pub struct ListenerSettings {
    /// For logs: "fhir" or "admin".
    pub name: &'static str,
    pub tls: Option<TlsAcceptor>,
    /// Connections served at once; further ones wait in the accept queue.
    pub max_connections: usize,
    /// How long in-flight requests get after shutdown begins.
    pub grace: Duration,
    pub metrics: Arc<Metrics>,
}

/// One accepted connection: its TLS handshake (bounded), then HTTP until
/// the client closes or the listener drains.
struct Connection {
    builder: auto::Builder<TokioExecutor>,
    tls: Option<TlsAcceptor>,
    metrics: Arc<Metrics>,
    peer: SocketAddr,
}

impl Connection {
    async fn serve<S>(self, stream: TcpStream, service: S, watcher: Watcher, permit: OwnedSemaphorePermit)
    where
        S: hyper::service::Service<
                Request<Incoming>,
                Response = Response<crate::respond::Body>,
                Error = Infallible,
            > + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
    {
        let Connection { builder, tls, metrics, peer } = self;
        metrics.connection_opened();
        match tls {
            Some(acceptor) => {
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls_stream)) => {
                        let conn = builder.serve_connection(TokioIo::new(tls_stream), service).into_owned();
                        let _ = watcher.watch(conn).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            }
            None => {
                let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                let _ = watcher.watch(conn).await;
            }
        }
        metrics.connection_closed();
        drop(permit);
    }
}

/// Serve `listener` until `shutdown` flips to true, then drain for `grace`.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    settings: ListenerSettings,
    handler: Arc<H>,
    mut shutdown: watch::Receiver<bool>,
) {
    let ListenerSettings { name, tls, max_connections, grace, metrics } = settings;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        // hyper's default of at most 100 header fields stays (setting it moves
        // the parse to the heap).
        .max_buf_size(MAX_HEAD_BYTES);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(256)
        .max_header_list_size(MAX_HEAD_BYTES as u32)
        .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
        .max_local_error_reset_streams(MAX_ERROR_RESETS);
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(max_connections));

    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let service = hyper::service::service_fn(move |req| {
            let handler = handler.clone();
            async move { Ok::<_, Infallible>(handler.handle(req, peer).await) }
        });
        let connection =
            Connection { builder: builder.clone(), tls: tls.clone(), metrics: metrics.clone(), peer };
        tokio::spawn(connection.serve(stream, service, graceful.watcher(), permit));
    }

    drop(listener);
    tracing::info!(listener = name, open = graceful.count(), "stopped accepting; draining connections");
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!(listener = name, "grace period over; closing remaining connections");
    }
}

/// Build a TLS acceptor from PEM files (HTTP/2 and HTTP/1.1 via ALPN).
pub fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<TlsAcceptor> {
    use anyhow::Context;
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(cert).with_context(|| format!("server.tls_cert {}", cert.display()))?,
    ))
    .collect::<Result<Vec<_>, _>>()
    .with_context(|| format!("server.tls_cert {}: not PEM certificates", cert.display()))?;
    anyhow::ensure!(!certs.is_empty(), "server.tls_cert {}: no certificate found", cert.display());
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(key).with_context(|| format!("server.tls_key {}", key.display()))?,
    ))
    .with_context(|| format!("server.tls_key {}: not a PEM private key", key.display()))?
    .with_context(|| format!("server.tls_key {}: no private key found", key.display()))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("server.tls_cert/tls_key do not form a usable certificate")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
