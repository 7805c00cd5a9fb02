//! memrl over the network: `memrl serve` (JSON over HTTP, an OpenAI-compatible embeddings
//! route, Prometheus metrics, MCP over streamable HTTP) and `memrl mcp` (MCP over stdio), over a
//! data directory of namespaces, one durable bank each.
//!
//! Why a server: a fleet of agents runs as many processes on many machines. In one process the
//! library's [`memrl::Batcher`] coalesces threads; here every namespace has one, so concurrent
//! requests from different connections become one embedding call and one batched retrieval
//! (one device call), and concurrent writes share fsyncs (the library's group commit). The
//! queue is bounded: a full one answers 429 with `Retry-After`.
//!
//! The parts: [`namespaces`] (banks by name, created on first write, deleted whole), [`api`]
//! (the routes and their strict decoding), [`auth`] (API keys scoped to namespaces),
//! [`error`] (statuses and JSON error bodies), [`metrics`], [`mcp`] (the tools). The routes and
//! bodies are described by `openapi.json`, served at `GET /openapi.json`.
//!
//! Lifecycle: [`Server::serve`] stops accepting on SIGTERM or SIGINT (or the future it is
//! given), lets the requests in flight finish (bounded by a timeout), checkpoints every
//! namespace and closes it. A server killed outright loses nothing it acknowledged: each bank
//! replays its log when it is opened again.

pub mod api;
pub mod auth;
pub mod error;
pub mod mcp;
pub mod metrics;
pub mod namespaces;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::middleware::from_fn_with_state;
use axum::routing::{get, patch, post, put};
use axum::Router;
use memrl::{BatchConfig, Batcher, Limits};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

use api::{AppState, EmbedService, RequestLimits};
use auth::Keys;
use namespaces::{BankSettings, Namespaces};

/// Everything a server is started with.
pub struct ServerConfig {
    /// The data directory: one folder per namespace.
    pub data_dir: PathBuf,
    /// How banks are opened, batched and synced.
    pub banks: BankSettings,
    /// API keys; `None` lets every request touch everything (loopback, or `--insecure`).
    pub keys: Option<Keys>,
    /// What one request may carry.
    pub limits: RequestLimits,
    /// The namespace of MCP calls that name none (and whose key is not scoped to one).
    pub mcp_namespace: String,
    /// `Host` values the MCP route accepts besides loopback ones (DNS-rebinding protection).
    pub allowed_hosts: Vec<String>,
    /// How long shutdown waits for requests in flight.
    pub shutdown_timeout: Duration,
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The data directory cannot be used.
    #[error("data directory {}: {source}", path.display())]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A library call failed while starting.
    #[error(transparent)]
    Memrl(#[from] memrl::Error),
    /// The network failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The configuration is refused.
    #[error("{0}")]
    Config(String),
}

/// Refuses to listen beyond this machine without API keys, unless told `insecure`.
pub fn check_exposure(
    addr: &SocketAddr,
    has_keys: bool,
    insecure: bool,
) -> Result<(), ServerError> {
    if addr.ip().is_loopback() || has_keys || insecure {
        return Ok(());
    }
    Err(ServerError::Config(format!(
        "refusing to listen on {addr} without API keys: anyone who can reach it could read and change every memory. Give --keys FILE (or MEMRL_API_KEYS), listen on 127.0.0.1, or pass --insecure"
    )))
}

/// A started server: its namespaces are open.
pub struct Server {
    state: Arc<AppState>,
    mcp_namespace: String,
    allowed_hosts: Vec<String>,
    shutdown_timeout: Duration,
}

impl Server {
    /// Opens the data directory and every namespace in it (replaying their logs).
    pub async fn open(config: ServerConfig) -> Result<Server, ServerError> {
        let ServerConfig {
            data_dir,
            mut banks,
            keys,
            limits,
            mcp_namespace,
            allowed_hosts,
            shutdown_timeout,
        } = config;
        namespaces::validate_name(&mcp_namespace).map_err(ServerError::Config)?;
        if limits.max_items == 0 || limits.max_text_bytes == 0 || limits.max_body_bytes == 0 {
            return Err(ServerError::Config(
                "request limits must be at least 1".into(),
            ));
        }
        // The banks' own limits: the request limits, and room for the batches the queues form.
        let batch_max = banks
            .batch
            .as_ref()
            .map_or(0, |b: &BatchConfig| b.max_batch);
        banks.limits = Limits {
            max_text_bytes: limits.max_text_bytes,
            max_batch: limits.max_items.max(batch_max),
            ..banks.limits
        };
        let embed = match &banks.embedder {
            Some(embedder) => {
                let batcher = match &banks.batch {
                    Some(batch) => {
                        // A bank with no memory: the queue needs one to reach the embedder.
                        let bank = memrl::Bank::options()
                            .embedder(embedder.clone())
                            .device(banks.device.clone())
                            .in_memory()?;
                        Some(Batcher::new(Arc::new(bank), batch.clone())?)
                    }
                    None => None,
                };
                Some(EmbedService {
                    embedder: embedder.clone(),
                    batcher,
                })
            }
            None => None,
        };
        let namespaces =
            Namespaces::new(&data_dir, banks).map_err(|source| ServerError::DataDir {
                path: data_dir.clone(),
                source,
            })?;
        error::redact_path(&data_dir);
        error::redact_path(namespaces.dir());
        let opened = namespaces.open_all().await;
        tracing::info!(data = %namespaces.dir().display(), namespaces = opened, "data directory open");
        Ok(Server {
            state: Arc::new(AppState {
                namespaces,
                keys,
                limits,
                metrics: metrics::Metrics::new(),
                embed,
                draining: Default::default(),
            }),
            mcp_namespace,
            allowed_hosts,
            shutdown_timeout,
        })
    }

    /// What the handlers share.
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// The routes (with the MCP route cancelled by `mcp_stop`).
    pub fn router(&self, mcp_stop: CancellationToken) -> Router {
        let state = self.state.clone();
        let mcp_server = mcp::MemrlMcp::new(state.clone(), self.mcp_namespace.clone());
        let mut hosts: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
        hosts.extend(self.allowed_hosts.iter().cloned());
        let mcp_config = StreamableHttpServerConfig::default()
            .with_allowed_hosts(hosts)
            .with_cancellation_token(mcp_stop);
        let mut mcp_config = mcp_config;
        mcp_config.max_request_body_bytes = state.limits.max_body_bytes;
        mcp_config.json_response = true;
        let mcp_service: StreamableHttpService<mcp::MemrlMcp, LocalSessionManager> =
            StreamableHttpService::new(
                move || Ok(mcp_server.clone()),
                Default::default(),
                mcp_config,
            );
        let authenticated = Router::new()
            .route("/metrics", get(api::metrics))
            .route("/v1/namespaces", get(api::list_namespaces))
            .route(
                "/v1/namespaces/{ns}",
                put(api::create_namespace)
                    .get(api::namespace_info)
                    .delete(api::delete_namespace),
            )
            .route("/v1/namespaces/{ns}/memories", post(api::add))
            .route(
                "/v1/namespaces/{ns}/memories/{id}",
                get(api::get_memory).delete(api::remove_memory),
            )
            .route("/v1/namespaces/{ns}/retrieve", post(api::retrieve))
            .route("/v1/namespaces/{ns}/feedback", post(api::feedback))
            .route("/v1/namespaces/{ns}/stats", get(api::stats))
            .route("/v1/namespaces/{ns}/calibrate", post(api::calibrate))
            .route("/v1/namespaces/{ns}/config", patch(api::set_config))
            .route("/v1/namespaces/{ns}/checkpoint", post(api::checkpoint))
            .route("/v1/embeddings", post(api::embeddings))
            .nest_service("/mcp", mcp_service)
            .route_layer(from_fn_with_state(state.clone(), api::authenticate));
        Router::new()
            .route("/health", get(api::health))
            .route("/openapi.json", get(api::openapi))
            .merge(authenticated)
            .fallback(api::no_route)
            .method_not_allowed_fallback(api::wrong_method)
            .layer(DefaultBodyLimit::max(state.limits.max_body_bytes))
            .layer(from_fn_with_state(state.clone(), api::observe))
            .with_state(state)
    }

    /// Serves HTTP on `listener` until `shutdown` completes (see [`shutdown_signal`]), then
    /// drains, checkpoints every namespace and closes them.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let stop = CancellationToken::new();
        let router = self.router(stop.child_token());
        let addr = listener.local_addr()?;
        tracing::info!(%addr, keys = self.state.keys.as_ref().map_or(0, Keys::len), "listening");
        let draining = {
            let stop = stop.clone();
            let state = self.state.clone();
            tokio::spawn(async move {
                shutdown.await;
                state.draining.store(true, Ordering::Relaxed);
                tracing::info!("shutting down: no new connections; draining requests in flight");
                stop.cancel();
            })
        };
        let graceful = {
            let stop = stop.clone();
            async move { stop.cancelled().await }
        };
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            // Small JSON answers must not wait for Nagle's algorithm.
            let _ = tcp.set_nodelay(true);
        });
        let serving = axum::serve(listener, router).with_graceful_shutdown(graceful);
        let timeout = self.shutdown_timeout;
        let deadline = {
            let stop = stop.clone();
            async move {
                stop.cancelled().await;
                tokio::time::sleep(timeout).await;
            }
        };
        tokio::select! {
            served = serving => served?,
            () = deadline => tracing::warn!(seconds = timeout.as_secs_f64(), "requests still in flight after the shutdown timeout: closing anyway (their writes are either in the log or not acknowledged)"),
        }
        draining.abort();
        self.close().await;
        Ok(())
    }

    /// Checkpoints and closes every namespace.
    pub async fn close(&self) {
        let failed = self.state.namespaces.checkpoint_all().await;
        self.state.namespaces.close_all().await;
        if failed == 0 {
            tracing::info!("every namespace checkpointed and closed");
        } else {
            tracing::error!(
                failed,
                "some checkpoints failed; their logs still hold every acknowledged write"
            );
        }
    }

    /// Serves MCP over stdin and stdout until the client closes them (or `shutdown`), then
    /// checkpoints and closes every namespace.
    pub async fn serve_stdio(
        self,
        namespace: String,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        use rmcp::ServiceExt;
        namespaces::validate_name(&namespace).map_err(ServerError::Config)?;
        let server = mcp::MemrlMcp::new(self.state.clone(), namespace);
        let running = server
            .serve(rmcp::transport::stdio())
            .await
            .map_err(|e| ServerError::Config(format!("MCP over stdio: {e}")))?;
        tokio::select! {
            done = running.waiting() => {
                if let Err(e) = done {
                    tracing::warn!(error = %e, "the MCP session ended with an error");
                }
            }
            () = shutdown => tracing::info!("shutting down"),
        }
        self.close().await;
        Ok(())
    }
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!("SIGINT"),
        () = terminate => tracing::info!("SIGTERM"),
    }
}
