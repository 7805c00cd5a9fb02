//! `memrl serve` (HTTP and MCP over streamable HTTP) and `memrl mcp` (MCP over stdio): the
//! arguments, the model, the keys; the server itself is the `memrl-server` crate.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use memrl::{BankConfig, BatchConfig, CheckpointPolicy, Retention, SyncPolicy};
use memrl_server::api::RequestLimits;
use memrl_server::auth::Keys;
use memrl_server::namespaces::BankSettings;
use memrl_server::{check_exposure, Server, ServerConfig};

use crate::cli::ModelArgs;

pub(crate) const SERVE_HELP: &str = "\
Serve a data directory of namespaces (one durable bank each, created on first write) over HTTP: \
JSON routes to add, retrieve, give feedback, get, delete, stats and calibrate; POST \
/v1/embeddings (OpenAI-compatible); GET /health, GET /metrics (Prometheus), GET /openapi.json; \
and MCP (streamable HTTP) at /mcp. Concurrent single retrievals and embeddings are batched into \
one call per namespace; concurrent writes share fsyncs (group commit). A full queue answers 429 \
with Retry-After.

API keys (--keys FILE or the MEMRL_API_KEYS variable) are bearer tokens scoped to namespaces, one \
per line: `KEY ns1,ns2` or `KEY *` (every namespace and the metrics); a key may be given as \
`sha256:<hex digest>`. Without keys the server only listens on a loopback address, unless \
--insecure. SIGTERM or SIGINT stops accepting, drains the requests in flight, checkpoints every \
namespace and exits 0. Prints `listening on http://ADDR` on stdout once ready; logs go to stderr \
(RUST_LOG=info for one line per lifecycle event, debug for one per request).

Example: memrl serve --data ./memories --listen 127.0.0.1:8420";

pub(crate) const MCP_HELP: &str = "\
Serve the Model Context Protocol over stdin and stdout for one agent (a coding assistant, a \
desktop agent), over a data directory of namespaces: the tools retrieve_memories, \
report_outcome, add_memory and memory_stats. Configure it in the client as a command, e.g. \
{\"command\": \"memrl\", \"args\": [\"mcp\", \"--data\", \"/home/me/.memrl\"]}. Logs go to stderr.

Example: memrl mcp --data ~/.memrl --namespace coding";

/// What `serve` and `mcp` share.
#[derive(Args, Debug)]
pub(crate) struct DataArgs {
    /// The data directory: one folder per namespace (created if missing).
    #[arg(long)]
    data: PathBuf,
    /// Dimension of namespaces created by a first write (with --no-model; else the model's).
    #[arg(long, requires = "model_id")]
    dim: Option<usize>,
    /// Model id recorded by namespaces created by a first write (with --no-model).
    #[arg(long, requires = "dim")]
    model_id: Option<String>,
    /// When writes are synced: `batch` (each acknowledged write survives a power loss; concurrent
    /// writes share fsyncs), `interval=MS` (a background sync every MS milliseconds) or `never`.
    #[arg(long, default_value = "batch")]
    sync: String,
    /// Retrievals remembered for feedback by retrieval id, per namespace.
    #[arg(long, default_value_t = 100_000)]
    retention: usize,
    /// Seconds a retrieval is remembered for feedback.
    #[arg(long, default_value_t = 3600)]
    retention_secs: u64,
    #[command(flatten)]
    model: ModelArgs,
}

/// Arguments of `memrl serve`.
#[derive(Args, Debug)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Address to listen on (port 0 picks a free one; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8420")]
    listen: SocketAddr,
    /// API key file (see above); the MEMRL_API_KEYS variable is read when it is not given.
    #[arg(long)]
    keys: Option<PathBuf>,
    /// Listen beyond loopback without API keys.
    #[arg(long)]
    insecure: bool,
    /// Serve every request with its own bank call (the benchmark's baseline).
    #[arg(long)]
    no_batching: bool,
    /// Most requests in one batched call.
    #[arg(long, default_value_t = 256)]
    max_batch: usize,
    /// Most text tokens in one batched call.
    #[arg(long, default_value_t = 16_384)]
    max_batch_tokens: usize,
    /// Requests waiting per namespace before 429.
    #[arg(long, default_value_t = 4096)]
    queue: usize,
    /// Largest request body, in bytes (413 above).
    #[arg(long, default_value_t = RequestLimits::default().max_body_bytes)]
    max_body_bytes: usize,
    /// Most memories, queries, outcomes or texts in one request.
    #[arg(long, default_value_t = RequestLimits::default().max_items)]
    max_items: usize,
    /// Largest text (intent, experience, query, input), in bytes.
    #[arg(long, default_value_t = RequestLimits::default().max_text_bytes)]
    max_text_bytes: usize,
    /// Namespace of MCP calls that name none (unless the key is scoped to one namespace).
    #[arg(long, default_value = "default")]
    mcp_namespace: String,
    /// A `Host` the MCP route accepts besides loopback ones (repeat for several).
    #[arg(long)]
    allowed_host: Vec<String>,
    /// Seconds shutdown waits for requests in flight.
    #[arg(long, default_value_t = 30)]
    shutdown_timeout: u64,
}

/// Arguments of `memrl mcp`.
#[derive(Args, Debug)]
pub(crate) struct McpArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Namespace of calls that name none.
    #[arg(long, default_value = "default")]
    namespace: String,
}

fn parse_sync(s: &str) -> Result<SyncPolicy> {
    Ok(match s {
        "batch" => SyncPolicy::EveryBatch,
        "never" => SyncPolicy::Never,
        _ => match s
            .strip_prefix("interval=")
            .and_then(|ms| ms.parse::<u64>().ok())
        {
            Some(ms) if ms > 0 => SyncPolicy::Interval(Duration::from_millis(ms)),
            _ => bail!("--sync {s:?}: `batch`, `never` or `interval=MS` (MS >= 1)"),
        },
    })
}

fn bank_settings(args: &DataArgs, batch: Option<BatchConfig>) -> Result<BankSettings> {
    let device = args.model.device()?;
    let embedder = if args.model.no_model {
        None
    } else {
        if args.dim.is_some() {
            bail!(
                "--dim and --model-id are for --no-model (namespaces take the model's otherwise)"
            );
        }
        Some(Arc::new(args.model.embedder(None, &device)?))
    };
    let default_config = match (&embedder, args.dim, &args.model_id) {
        (Some(e), _, _) => Some(BankConfig::new(e.dim(), e.name())),
        (None, Some(dim), Some(model_id)) => Some(BankConfig::new(dim, model_id.clone())),
        _ => None,
    };
    if let Some(config) = &default_config {
        config.validate()?;
    }
    if args.retention_secs == 0 {
        bail!("--retention-secs must be at least 1");
    }
    Ok(BankSettings {
        embedder,
        default_config,
        sync: parse_sync(&args.sync)?,
        checkpoint: CheckpointPolicy::LogOutgrowsSnapshot,
        retention: Retention {
            capacity: args.retention,
            ttl: Duration::from_secs(args.retention_secs),
        },
        limits: memrl::Limits::default(),
        device,
        batch,
    })
}

fn load_keys(path: Option<&PathBuf>) -> Result<Option<Keys>> {
    if let Some(path) = path {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the key file {}", path.display()))?;
        return Ok(Some(Keys::parse(&text, &path.display().to_string())?));
    }
    match std::env::var("MEMRL_API_KEYS") {
        Ok(value) if !value.trim().is_empty() => Ok(Some(Keys::parse_env(&value)?)),
        _ => Ok(None),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("memrl-serve")
        .build()
        .context("starting the async runtime")
}

pub(crate) fn serve(args: &ServeArgs) -> Result<()> {
    let keys = load_keys(args.keys.as_ref())?;
    check_exposure(&args.listen, keys.is_some(), args.insecure)?;
    if args.insecure && keys.is_none() && !args.listen.ip().is_loopback() {
        tracing::warn!("listening beyond loopback without API keys (--insecure): anyone who can reach {} can read and change every memory", args.listen);
    }
    let batch = (!args.no_batching).then_some(BatchConfig {
        max_batch: args.max_batch,
        max_batch_tokens: args.max_batch_tokens,
        capacity: args.queue,
    });
    let config = ServerConfig {
        data_dir: args.data.data.clone(),
        banks: bank_settings(&args.data, batch)?,
        keys,
        limits: RequestLimits {
            max_body_bytes: args.max_body_bytes,
            max_items: args.max_items,
            max_text_bytes: args.max_text_bytes,
        },
        mcp_namespace: args.mcp_namespace.clone(),
        allowed_hosts: args.allowed_host.clone(),
        shutdown_timeout: Duration::from_secs(args.shutdown_timeout),
    };
    runtime()?.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        let server = Server::open(config).await?;
        let addr = listener.local_addr()?;
        println!("listening on http://{addr}");
        std::io::Write::flush(&mut std::io::stdout())?;
        server
            .serve(listener, memrl_server::shutdown_signal())
            .await?;
        anyhow::Ok(())
    })
}

pub(crate) fn mcp(args: &McpArgs) -> Result<()> {
    let config = ServerConfig {
        data_dir: args.data.data.clone(),
        // One agent: its calls come one at a time, so there is nothing to batch.
        banks: bank_settings(&args.data, None)?,
        keys: None,
        limits: RequestLimits::default(),
        mcp_namespace: args.namespace.clone(),
        allowed_hosts: Vec::new(),
        shutdown_timeout: Duration::from_secs(5),
    };
    runtime()?.block_on(async {
        let server = Server::open(config).await?;
        server
            .serve_stdio(args.namespace.clone(), memrl_server::shutdown_signal())
            .await?;
        anyhow::Ok(())
    })
}
