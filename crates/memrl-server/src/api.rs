//! The JSON routes: request bodies, their checks, the calls on the banks, the answers.
//!
//! Every route that touches a bank runs the bank call on tokio's blocking pool (a write waits
//! for its fsync there, so concurrent writers share one: group commit), except single
//! retrievals and embeddings when batching is on: those are submitted to the namespace's
//! batching queue and awaited, so no thread waits per request. Bodies are decoded strictly:
//! an unknown field is an error that names it, as is a missing one; every count and length is
//! checked against the server's limits before any work is done.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, MatchedPath, Path, Query as UrlQuery, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use memrl::embed::Embedder;
use memrl::{
    BankConfig, Batcher, Hit, KeyDType, Outcome, Query, Retrieval, RetrievalConfig, RetrievalId,
    ZSim,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Value};

use crate::auth::{Keys, Scope};
use crate::error::ApiError;
use crate::metrics::{Metrics, NamespaceFigures};
use crate::namespaces::{validate_name, Handle, Namespaces};

/// The largest `k1` a request may ask for.
pub const MAX_K1: usize = 10_000;
/// The largest `k2` a request may ask for.
pub const MAX_K2: usize = 1_000;
/// The most histogram bins or extremes `stats` returns.
pub const MAX_STATS_ROWS: usize = 10_000;
/// The most pairs `calibrate` may sample.
pub const MAX_CALIBRATION_PAIRS: usize = 20_000_000;

/// Bounds on what one request may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Bytes of a request body (413 above).
    pub max_body_bytes: usize,
    /// Memories, queries, outcomes or texts in one request.
    pub max_items: usize,
    /// Bytes of one text (an intent, an experience, a query, an input to embed).
    pub max_text_bytes: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: 32 << 20,
            max_items: 1024,
            max_text_bytes: 64 << 10,
        }
    }
}

/// The server's model, for `/v1/embeddings` (one batching queue for the model, over a bank
/// that holds no memory).
pub struct EmbedService {
    /// The model.
    pub embedder: Arc<Embedder>,
    /// Its queue (`None` when batching is off).
    pub batcher: Option<Batcher>,
}

/// What every handler shares.
pub struct AppState {
    /// The banks.
    pub namespaces: Namespaces,
    /// API keys (`None`: every request may touch everything).
    pub keys: Option<Keys>,
    /// Request bounds.
    pub limits: RequestLimits,
    /// Counters and histograms.
    pub metrics: Metrics,
    /// The embedding model, if the server has one.
    pub embed: Option<EmbedService>,
    /// Set once shutdown has begun: `/health` says so.
    pub draining: AtomicBool,
}

/// A JSON body, decoded strictly (415 without a JSON content type, 413 above the body limit,
/// 400 for malformed JSON or UTF-8, a wrong shape, an unknown field).
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| {
                let v = v.trim().to_ascii_lowercase();
                v == "application/json" || (v.starts_with("application/") && v.ends_with("+json"))
            })
            .unwrap_or(false);
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON, with `Content-Type: application/json`",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::too_large(
                    "the request body is larger than the server accepts (--max-body-bytes)",
                )
            } else {
                ApiError::invalid(format!(
                    "cannot read the request body: {}",
                    rejection.body_text()
                ))
            }
        })?;
        decode(&bytes).map(JsonBody)
    }
}

/// Decodes a request body.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::invalid(format!("the body is not a valid request: {e}")))
}

fn path<T>(extracted: Result<Path<T>, PathRejection>) -> Result<T, ApiError> {
    extracted
        .map(|Path(p)| p)
        .map_err(|e| ApiError::invalid(e.body_text()))
}

/// Checks the name, then the key's scope (403: the key may not touch it, whether or not it
/// exists).
fn allow(scope: &Scope, namespace: &str) -> Result<(), ApiError> {
    validate_name(namespace).map_err(ApiError::invalid)?;
    if scope.allows(namespace) {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "this API key may not use namespace {namespace:?}"
        )))
    }
}

/// Runs a bank call on the blocking pool.
async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> memrl::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(call)
        .await
        .map_err(|e| ApiError::internal(format!("a bank call did not finish: {e}")))?
        .map_err(ApiError::from)
}

fn check_text(limits: &RequestLimits, what: &str, text: &str) -> Result<(), ApiError> {
    if text.len() > limits.max_text_bytes {
        return Err(ApiError::invalid(format!(
            "{what}: {} bytes exceeds the limit of {} (--max-text-bytes)",
            text.len(),
            limits.max_text_bytes
        )));
    }
    Ok(())
}

fn check_count(limits: &RequestLimits, what: &str, n: usize) -> Result<(), ApiError> {
    if n > limits.max_items {
        return Err(ApiError::invalid(format!(
            "{what}: {n} exceeds the limit of {} per request (--max-items)",
            limits.max_items
        )));
    }
    if n == 0 {
        return Err(ApiError::invalid(format!("{what}: none given")));
    }
    Ok(())
}

impl AppState {
    pub(crate) fn count_tokens(&self, texts: &[&str]) {
        if let Some(embed) = &self.embed {
            let tokens: usize = texts
                .iter()
                .filter_map(|t| embed.embedder.token_count(t).ok())
                .sum();
            self.metrics.add_embedding_tokens(tokens);
        }
    }
}

// ---- health, metrics, the document ----

/// `GET /health`.
pub async fn health(State(state): State<Arc<AppState>>) -> Response {
    if state.draining.load(Ordering::Relaxed) {
        return ApiError::shutting_down().into_response();
    }
    let (model, dim) = match &state.embed {
        Some(e) => (Some(e.embedder.name().to_string()), Some(e.embedder.dim())),
        None => (None, None),
    };
    Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "model": model,
        "dim": dim,
    }))
    .into_response()
}

/// The OpenAPI document.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// `GET /openapi.json`.
pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// `GET /metrics` (a key of every namespace).
pub async fn metrics(
    State(state): State<Arc<AppState>>,
    Extension(scope): Extension<Scope>,
) -> Result<Response, ApiError> {
    if scope != Scope::All {
        return Err(ApiError::forbidden(
            "the metrics name every namespace: they need a key of scope `*`",
        ));
    }
    let opened = state.namespaces.opened();
    let figures = tokio::task::spawn_blocking(move || {
        opened
            .iter()
            .map(|ns| {
                let bank = ns.bank();
                let stats = bank.stats(0, 0);
                NamespaceFigures {
                    name: ns.name().to_string(),
                    queue_depth: ns.batcher().map_or(0, Batcher::depth),
                    batches: ns.batcher().map(Batcher::stats),
                    memories: stats.memories,
                    intents: stats.intents,
                    q_quantiles: stats.q_quantiles,
                    q_signs: stats.q_signs,
                    log_syncs: bank.log_syncs().unwrap_or(0),
                    log_bytes: bank.log_bytes().unwrap_or(0),
                }
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| ApiError::internal(format!("reading the namespaces' figures: {e}")))?;
    let text = state.metrics.render(&figures);
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// Authenticates `Authorization: Bearer <key>` and puts the key's [`Scope`] in the request.
pub async fn authenticate(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let scope = match &state.keys {
        None => Scope::All,
        Some(keys) => {
            let token = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    v.strip_prefix("Bearer ")
                        .or_else(|| v.strip_prefix("bearer "))
                })
                .map(str::trim);
            let Some(token) = token else {
                return ApiError::unauthorized("send an API key: `Authorization: Bearer <key>`")
                    .into_response();
            };
            match keys.authenticate(token) {
                Some(scope) => scope.clone(),
                None => return ApiError::unauthorized("the API key is not valid").into_response(),
            }
        }
    };
    request.extensions_mut().insert(scope);
    next.run(request).await
}

/// Counts and times every request, and logs it.
pub async fn observe(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = match request.extensions().get::<MatchedPath>() {
        Some(p) if p.as_str().starts_with("/mcp") => "/mcp".to_string(),
        Some(p) => p.as_str().to_string(),
        None => "unmatched".to_string(),
    };
    let response = next.run(request).await;
    let elapsed = started.elapsed();
    let status = response.status();
    state
        .metrics
        .observe(&route, method.as_str(), status.as_u16(), elapsed);
    if status.is_server_error() {
        tracing::warn!(%method, %route, status = status.as_u16(), ms = elapsed.as_secs_f64() * 1e3, "request failed");
    } else {
        tracing::debug!(%method, %route, status = status.as_u16(), ms = elapsed.as_secs_f64() * 1e3, "request");
    }
    response
}

/// Unknown routes.
pub async fn no_route(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!(
        "no route {method} {}: see GET /openapi.json",
        uri.path()
    ))
}

/// A known route with the wrong method.
pub async fn wrong_method(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} does not take {method}: see GET /openapi.json",
            uri.path()
        ),
    )
}

// ---- namespaces ----

#[derive(Serialize)]
struct NamespaceSummary {
    name: String,
    memories: Option<usize>,
}

/// `GET /v1/namespaces`: the namespaces the key may use.
pub async fn list_namespaces(
    State(state): State<Arc<AppState>>,
    Extension(scope): Extension<Scope>,
) -> Result<Json<Value>, ApiError> {
    let opened = state.namespaces.opened();
    let names: Vec<String> = state
        .namespaces
        .names()
        .into_iter()
        .filter(|n| scope.allows(n))
        .collect();
    let list = tokio::task::spawn_blocking(move || {
        names
            .into_iter()
            .map(|name| NamespaceSummary {
                memories: opened
                    .iter()
                    .find(|ns| ns.name() == name)
                    .map(|ns| ns.bank().len()),
                name,
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(json!({ "namespaces": list })))
}

/// The body of `PUT /v1/namespaces/{ns}`: the new bank's shape; what is left out comes from the
/// server's model (or `--dim`/`--model-id`).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CreateNamespace {
    dim: Option<usize>,
    model_id: Option<String>,
    dtype: Option<KeyDType>,
    dedup_sim: Option<f32>,
}

/// `PUT /v1/namespaces/{ns}`: 201 created, 200 when it exists with this config, 409 with another.
pub async fn create_namespace(
    State(state): State<Arc<AppState>>,
    Extension(scope): Extension<Scope>,
    ns: Result<Path<String>, PathRejection>,
    JsonBody(body): JsonBody<CreateNamespace>,
) -> Result<Response, ApiError> {
    let ns = path(ns)?;
    allow(&scope, &ns)?;
    let default = state.namespaces.settings().default_config.clone();
    let dim = body
        .dim
        .or(default.as_ref().map(|c| c.dim))
        .ok_or_else(|| ApiError::invalid("dim: required (this server has no default dimension)"))?;
    let model_id = body
        .model_id
        .or(default.as_ref().map(|c| c.model_id.clone()))
        .ok_or_else(|| {
            ApiError::invalid("model_id: required (this server has no default model)")
        })?;
    if model_id.len() > 256 {
        return Err(ApiError::invalid("model_id: longer than 256 bytes"));
    }
    let mut config = BankConfig::new(dim, model_id);
    if let Some(dtype) = body.dtype {
        config.dtype = dtype;
    }
    if let Some(dedup_sim) = body.dedup_sim {
        config.dedup_sim = dedup_sim;
    }
    let created = state.namespaces.create(&ns, config.clone()).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(json!({ "name": ns, "config": config, "created": created })),
    )
        .into_response())
}

/// `GET /v1/namespaces/{ns}`: the bank's shape, configs and counts.
pub async fn namespace_info(
    State(state): State<Arc<AppState>>,
    Extension(scope): Extension<Scope>,
    ns: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let ns = path(ns)?;
    allow(&scope, &ns)?;
    let handle = state.namespaces.existing(&ns).await?;
    blocking(move || {
        let bank = handle.bank();
        let recovery = bank.recovery();
        Ok(Json(json!({
            "name": handle.name(),
            "config": bank.config(),
            "retrieval_config": bank.retrieval_config(),
            "learning_config": bank.learning_config(),
            "memories": bank.len(),
            "intents": bank.num_intents(),
            "text": bank.embedder().is_some(),
            "log_bytes": bank.log_bytes(),
            "log_syncs": bank.log_syncs(),
            "recovery": {
                "replayed": recovery.replayed,
                "torn_tail_bytes": recovery.tail.as_ref().map(|t| t.bytes),
            },
        })))
    })
    .await
}

/// `DELETE /v1/namespaces/{ns}`.
pub async fn delete_namespace(
    State(state): State<Arc<AppState>>,
    Extension(scope): Extension<Scope>,
    ns: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let ns = path(ns)?;
    allow(&scope, &ns)?;
    state.namespaces.delete(&ns).await?;
    Ok(Json(json!({ "deleted": ns })))
}

/// The body of `PATCH /v1/namespaces/{ns}/config`: the fields to change, of either config;
/// what is left out keeps its stored value.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigIn {
    retrieval_config: Option<serde_json::Map<String, Value>>,
    learning_config: Option<serde_json::Map<String, Value>>,
}

/// `stored` with the fields of `patch` replaced, refusing a field the config does not have (the
/// config's own decoder would take the default for it, and silently drop a misspelt one).
fn patched<T: Serialize + DeserializeOwned>(
    what: &str,
    stored: &T,
    patch: serde_json::Map<String, Value>,
) -> Result<T, ApiError> {
    let mut value = serde_json::to_value(stored)
        .map_err(|e| ApiError::internal(format!("serialising the {what}: {e}")))?;
    let Some(fields) = value.as_object_mut() else {
        return Err(ApiError::internal(format!("the {what} is not an object")));
    };
    for (key, v) in patch {
        if !fields.contains_key(&key) {
            let known: Vec<&str> = fields.keys().map(String::as_str).collect();
            return Err(ApiError::invalid(format!(
                "{what}: unknown field {:?} (known: {})",
                key.chars().take(40).collect::<String>(),
                known.join(", ")
            )));
        }
        fields.insert(key, v);
    }
    serde_json::from_value(value).map_err(|e| ApiError::invalid(format!("{what}: {e}")))
}

/// `PATCH /v1/namespaces/{ns}/config`: changes the stored retrieval and learning configs (each
/// validated, then logged: durable like a write; the namespace is created as by a first write)
/// and answers both as stored. Both are checked before either is written, so an invalid field
/// changes nothing; each is one logged write, so if the disk fails between the two, the first
/// stays and the request is an error: sending it again is harmless (setting a config twice to
/// the same value changes nothing more).
pub async fn set_config(
    State(state): State<Arc<AppState>>,
    Extension(scope): Extension<Scope>,
    ns: Result<Path<String>, PathRejection>,
    JsonBody(body): JsonBody<ConfigIn>,
) -> Result<Json<Value>, ApiError> {
    let ns = path(ns)?;
    allow(&scope, &ns)?;
    let handle = state.namespaces.writable(&ns).await?;
    let bank = handle.bank().clone();
    let retrieval = match body.retrieval_config {
        Some(patch) => {
            let c: RetrievalConfig = patched("retrieval_config", &bank.retrieval_config(), patch)?;
            c.validate()?;
            Some(c)
        }
        None => None,
    };
    let learning = match body.learning_config {
        Some(patch) => {
            let c: memrl::LearningConfig =
                patched("learning_config", &bank.learning_config(), patch)?;
            c.validate()?;
            Some(c)
        }
        None => None,
    };
    blocking(move || {
        if let Some(c) = retrieval {
            bank.set_retrieval_config(c)?;
        }
        if let Some(c) = learning {
            bank.set_learning_config(c)?;
        }
        Ok(Json(json!({
            "retrieval_config": bank.retrieval_config(),
            "learning_config": bank.learning_config(),
        })))
    })
    .await
}

/// `POST /v1/namespaces/{ns}/checkpoint`: writes the namespace's snapshot now and resets its log
/// (the server also checkpoints by its policy and on shutdown).
pub async fn checkpoint(
    State(state): State<Arc<AppState>>,
    Extension(scope): Extension<Scope>,
    ns: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let ns = path(ns)?;
    allow(&scope, &ns)?;
    let handle = state.namespaces.existing(&ns).await?;
    blocking(move || {
        let bank = handle.bank();
        bank.checkpoint()?;
        Ok(Json(json!({ "log_seq": bank.log_seq() })))
    })
    .await
}

// ---- memories ----

/// One memory to add.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryIn {
    id: Option<u64>,
    #[serde(default)]
    intent: String,
    experience: String,
    #[serde(default)]
    success: bool,
    q: Option<f32>,
    metadata: Option<Value>,
    embedding: Option<Vec<f32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddMany {
    memories: Vec<MemoryIn>,
}

impl MemoryIn {
    fn check(&self, limits: &RequestLimits, index: usize) -> Result<(), ApiError> {
        check_text(limits, &format!("memory #{index}: intent"), &self.intent)?;
        check_text(
            limits,
            &format!("memory #{index}: experience"),
            &self.experience,
        )
    }

    fn into_new(self) -> memrl::NewMemory {
        memrl::NewMemory {
            id: self.id,
            intent: self.intent,
            embedding: self.embedding,
            experience: self.experience,
            success: self.success,
            q: self.q,
            metadata: self.metadata,
        }
    }
}

/// `POST /v1/namespaces/{ns}/memories`: one memory (`{"intent", "experience", ...}` -> `{"id"}`)
/// or a batch, all or nothing (`{"memories": [...]}` -> `{"ids"}`).
pub async fn add(
    State(state): State<Arc<AppState>>,
    Extension(scope): Extension<Scope>,
    ns: Result<Path<String>, PathRejection>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Json<Value>, ApiError> {
    let ns = path(ns)?;
    allow(&scope, &ns)?;
    let limits = state.limits;
    let many = body.as_object().is_some_and(|o| o.contains_key("memories"));
    if many {
        let AddMany { memories } = serde_json::from_value(body)
            .map_err(|e| ApiError::invalid(format!("the body is not a valid request: {e}")))?;
        check_count(&limits, "memories", memories.len())?;
        for (i, m) in memories.iter().enumerate() {
            m.check(&limits, i)?;
        }
        let texts: Vec<&str> = memories
            .iter()
            .filter(|m| m.embedding.is_none())
            .map(|m| m.intent.as_str())
            .collect();
        state.count_tokens(&texts);
        let handle = state.namespaces.writable(&ns).await?;
        let memories: Vec<memrl::NewMemory> =
            memories.into_iter().map(MemoryIn::into_new).collect();
        let ids = blocking(move || handle.bank().add_many(memories)).await?;
        return Ok(Json(json!({ "ids": ids })));
    }
    let memory: MemoryIn = serde_json::from_value(body)
        .map_err(|e| ApiError::invalid(format!("the body is not a valid request: {e}")))?;
    memory.check(&limits, 0)?;
    if memory.embedding.is_none() {
        state.count_tokens(&[memory.intent.as_str()]);
    }
    let handle = state.namespaces.writable(&ns).await?;
    let mut memory = memory.into_new();
    // Batched: the intent joins the queue's next embedding call; the add itself then waits for
    // its fsync on the blocking pool (group commit), not on the queue's thread.
    if memory.embedding.is_none() {
        if let (Some(batcher), true) = (handle.batcher(), handle.bank().embedder().is_some()) {
            memory.embedding = Some(batcher.submit_embed(memory.intent.clone())?.await?);
        }
    }
    let id = blocking(move || handle.bank().add(memory)).await?;
    Ok(Json(json!({ "id": id })))
}

fn memory_id(raw: &str) -> Result<u64, ApiError> {
    raw.parse().map_err(|_| {
        ApiError::invalid(format!(
            "memory id {:?} is not an unsigned 64-bit integer",
            raw.chars().take(40).collect::<String>()
        ))
    })
}

/// `GET /v1/namespaces/{ns}/memories/{id}`.
pub async fn get_memory(
    State(state): State<Arc<AppState>>,
    Extension(scope): Extension<Scope>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<memrl::Memory>, ApiError> {
    let (ns, id) = path(p)?;
    allow(&scope, &ns)?;
    let id = memory_id(&id)?;
    let handle = state.namespaces.existing(&ns).await?;
    blocking(move || handle.bank().get(id).ok_or(memrl::Error::NotFound(id)))
        .await
        .map(Json)
}

/// `DELETE /v1/namespaces/{ns}/memories/{id}`: the removed memory.
pub async fn remove_memory(
    State(state): State<Arc<AppState>>,
    Extension(scope): Extension<Scope>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<memrl::Memory>, ApiError> {
    let (ns, id) = path(p)?;
    allow(&scope, &ns)?;
    let id = memory_id(&id)?;
    let handle = state.namespaces.existing(&ns).await?;
    blocking(move || handle.bank().remove(id)).await.map(Json)
}

// ---- retrieval ----

/// Absent: `None`; `null`: `Some(None)`; a value: `Some(Some(v))`.
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// The body of a retrieval: exactly one of `text`, `texts`, `vector`, `vectors`, and any
/// retrieval option, each replacing the namespace's stored value for this request.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RetrieveIn {
    text: Option<String>,
    texts: Option<Vec<String>>,
    vector: Option<Vec<f32>>,
    vectors: Option<Vec<Vec<f32>>>,
    k1: Option<usize>,
    k2: Option<usize>,
    delta: Option<f32>,
    lambda: Option<f32>,
    zsim: Option<ZSim>,
    z_clip: Option<f32>,
    clip_zsim: Option<bool>,
    #[serde(default, deserialize_with = "nullable")]
    q_min: Option<Option<f32>>,
    epsilon: Option<f32>,
    seed: Option<u64>,
    thompson: Option<f32>,
    ucb: Option<f32>,
    #[serde(default, deserialize_with = "nullable")]
    sim_margin: Option<Option<f32>>,
}

impl RetrieveIn {
    fn has_options(&self) -> bool {
        self.k1.is_some()
            || self.k2.is_some()
            || self.delta.is_some()
            || self.lambda.is_some()
            || self.zsim.is_some()
            || self.z_clip.is_some()
            || self.clip_zsim.is_some()
            || self.q_min.is_some()
            || self.epsilon.is_some()
            || self.seed.is_some()
            || self.thompson.is_some()
            || self.ucb.is_some()
            || self.sim_margin.is_some()
    }

    /// The stored config with this request's options, checked.
    fn config(&self, stored: RetrievalConfig) -> Result<RetrievalConfig, ApiError> {
        let mut c = stored;
        if let Some(k1) = self.k1 {
            if k1 > MAX_K1 {
                return Err(ApiError::invalid(format!(
                    "k1: {k1} exceeds the limit of {MAX_K1}"
                )));
            }
            c.k1 = k1;
        }
        if let Some(k2) = self.k2 {
            if k2 > MAX_K2 {
                return Err(ApiError::invalid(format!(
                    "k2: {k2} exceeds the limit of {MAX_K2}"
                )));
            }
            c.k2 = k2;
        }
        c.delta = self.delta.unwrap_or(c.delta);
        c.lambda = self.lambda.unwrap_or(c.lambda);
        c.zsim = self.zsim.unwrap_or(c.zsim);
        c.z_clip = self.z_clip.unwrap_or(c.z_clip);
        c.clip_zsim = self.clip_zsim.unwrap_or(c.clip_zsim);
        if let Some(q_min) = self.q_min {
            c.q_min = q_min;
        }
        c.epsilon = self.epsilon.unwrap_or(c.epsilon);
        c.seed = self.seed.unwrap_or(c.seed);
        c.thompson = self.thompson.unwrap_or(c.thompson);
        c.ucb = self.ucb.unwrap_or(c.ucb);
        if let Some(margin) = self.sim_margin {
            c.sim_margin = margin;
        }
        c.validate()?;
        Ok(c)
    }

    /// The queries, and whether the request asked for one (not a list).
    fn queries(&mut self, limits: &RequestLimits) -> Result<(Vec<Query>, bool), ApiError> {
        let given = [
            self.text.is_some(),
            self.texts.is_some(),
            self.vector.is_some(),
            self.vectors.is_some(),
        ]
        .iter()
        .filter(|&&g| g)
        .count();
        if given != 1 {
            return Err(ApiError::invalid(
                "give exactly one of `text`, `texts`, `vector`, `vectors`",
            ));
        }
        let (queries, single) = if let Some(text) = self.text.take() {
            (vec![Query::Text(text)], true)
        } else if let Some(texts) = self.texts.take() {
            (texts.into_iter().map(Query::Text).collect(), false)
        } else if let Some(vector) = self.vector.take() {
            (vec![Query::Vector(vector)], true)
        } else {
            let vectors = self.vectors.take().unwrap_or_default();
            (vectors.into_iter().map(Query::Vector).collect(), false)
        };
        check_count(limits, "queries", queries.len())?;
        for (i, q) in queries.iter().enumerate() {
            if let Query::Text(t) = q {
                check_text(limits, &format!("query #{i}"), t)?;
            }
        }
        Ok((queries, single))
    }
}

/// One query's answer.
#[derive(Serialize)]
pub struct RetrievalOut {
    /// Report the episode's reward with it (a string: it does not fit a JSON double).
    pub retrieval_id: String,
    /// The memories, best first.
    pub hits: Vec<Hit>,
}

impl From<Retrieval> for RetrievalOut {
    fn from(r: Retrieval) -> Self {
        Self {
            retrieval_id: r.id.0.to_string(),
            hits: r.hits,
        }
    }
}

/// Runs retrievals through the namespace's queue (or one call when batching is off).
pub(crate) async fn run_retrievals(
    handle: Handle,
    queries: Vec<Query>,
    config: Option<RetrievalConfig>,
) -> Result<Vec<Retrieval>, ApiError> {
    if let Some(batcher) = handle.batcher() {
        let mut pending = Vec::with_capacity(queries.len());
        for query in queries {
            pending.push(batcher.submit_retrieve(query, config.clone())?);
        }
        let mut out = Vec::with_capacity(pending.len());
        for p in pending {
            out.push(p.await?);
        }
        return Ok(out);
    }
    blocking(move || {
        let bank = handle.bank();
        let texts: Vec<&str> = queries
            .iter()
            .filter_map(|q| match q {
                Query::Text(t) => Some(t.as_str()),
                Query::Vector(_) => None,
            })
            .collect();
        let vectors: Vec<Vec<f32>>;
        let queries: memrl::Queries<'_> = if texts.len() == queries.len() {
            memrl::Queries::Texts(texts)
        } else if texts.is_empty() {
            vectors = queries
                .iter()
                .filter_map(|q| match q {
                    Query::Vector(v) => Some(v.clone()),
                    Query::Text(_) => None,
                })
                .collect();
            memrl::Queries::Vectors(&vectors)
        } else {
            return Err(memrl::Error::InvalidValue {
                field: "queries".into(),
                problem: "mixes texts and vectors".into(),
            });
        };
        match &config {
            Some(config) => bank.retrieve_with(queries, config),
            None => bank.retrieve(queries),
        }
    })
    .await
}

/// `POST /v1/namespaces/{ns}/retrieve`: `{"retrieval_id", "hits"}` for `text`/`vector`,
/// `{"results": [...]}` for `texts`/`vectors`.
pub async fn retrieve(
    State(state): State<Arc<AppState>>,
    Extension(scope): Extension<Scope>,
    ns: Result<Path<String>, PathRejection>,
    JsonBody(mut body): JsonBody<RetrieveIn>,
) -> Result<Json<Value>, ApiError> {
    let ns = path(ns)?;
    allow(&scope, &ns)?;
    let (queries, single) = body.queries(&state.limits)?;
    let handle = state.namespaces.existing(&ns).await?;
    let config = if body.has_options() {
        Some(body.config(handle.bank().retrieval_config())?)
    } else {
        None
    };
    let texts: Vec<&str> = queries
        .iter()
        .filter_map(|q| match q {
            Query::Text(t) => Some(t.as_str()),
            Query::Vector(_) => None,
        })
        .collect();
    state.count_tokens(&texts);
    let results = run_retrievals(handle, queries, config).await?;
    let mut results: Vec<RetrievalOut> = results.into_iter().map(Into::into).collect();
    if single {
        let one = results.remove(0);
        return Ok(Json(json!(one)));
    }
    Ok(Json(json!({ "results": results })))
}

// ---- feedback ----

/// A retrieval id: the string the server returned, or the same number.
#[derive(Debug, Clone, Copy)]
pub struct RetrievalIdIn(pub u64);

impl<'de> Deserialize<'de> for RetrievalIdIn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "a retrieval id is the string (or unsigned integer) a retrieval returned",
            )
        })? {
            Raw::Number(n) => Ok(RetrievalIdIn(n)),
            Raw::Text(s) => s.parse().map(RetrievalIdIn).map_err(|_| {
                serde::de::Error::custom(format!(
                    "retrieval id {:?} is not an unsigned 64-bit integer",
                    s.chars().take(40).collect::<String>()
                ))
            }),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RewardIn {
    retrieval_id: RetrievalIdIn,
    reward: f32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OutcomeIn {
    memory_ids: Vec<u64>,
    reward: f32,
}

/// The body of a feedback: `{"retrieval_id", "reward"}`, `{"rewards": [{"retrieval_id",
/// "reward"}]}`, `{"memory_ids", "reward"}` or `{"outcomes": [{"memory_ids", "reward"}]}`;
/// several are one atomic batch.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedbackIn {
    retrieval_id: Option<RetrievalIdIn>,
    reward: Option<f32>,
    rewards: Option<Vec<RewardIn>>,
    memory_ids: Option<Vec<u64>>,
    outcomes: Option<Vec<OutcomeIn>>,
}

enum Feedback {
    Retrievals(Vec<(RetrievalId, f32)>),
    Outcomes(Vec<Outcome>),
}

impl FeedbackIn {
    fn into_feedback(self, limits: &RequestLimits) -> Result<Feedback, ApiError> {
        let form = |msg: &str| Err(ApiError::invalid(msg.to_string()));
        let feedback = match self {
            FeedbackIn { retrieval_id: Some(id), reward: Some(reward), rewards: None, memory_ids: None, outcomes: None } => {
                Feedback::Retrievals(vec![(RetrievalId(id.0), reward)])
            }
            FeedbackIn { retrieval_id: None, reward: None, rewards: Some(rewards), memory_ids: None, outcomes: None } => {
                check_count(limits, "rewards", rewards.len())?;
                Feedback::Retrievals(rewards.into_iter().map(|r| (RetrievalId(r.retrieval_id.0), r.reward)).collect())
            }
            FeedbackIn { retrieval_id: None, reward: Some(reward), rewards: None, memory_ids: Some(memory_ids), outcomes: None } => {
                check_count(limits, "memory_ids", memory_ids.len())?;
                Feedback::Outcomes(vec![Outcome { memory_ids, reward }])
            }
            FeedbackIn { retrieval_id: None, reward: None, rewards: None, memory_ids: None, outcomes: Some(outcomes) } => {
                check_count(limits, "outcomes", outcomes.len())?;
                let ids: usize = outcomes.iter().map(|o| o.memory_ids.len()).sum();
                if ids > limits.max_items {
                    return form("outcomes: more memory ids in all than the limit per request (--max-items)");
                }
                Feedback::Outcomes(outcomes.into_iter().map(|o| Outcome { memory_ids: o.memory_ids, reward: o.reward }).collect())
            }
            _ => {
                return form("give one of: {\"retrieval_id\", \"reward\"}, {\"rewards\": [...]}, {\"memory_ids\", \"reward\"}, {\"outcomes\": [...]}")
            }
        };
        Ok(feedback)
    }
}

/// `POST /v1/namespaces/{ns}/feedback`: the outcome report.
pub async fn feedback(
    State(state): State<Arc<AppState>>,
    Extension(scope): Extension<Scope>,
    ns: Result<Path<String>, PathRejection>,
    JsonBody(body): JsonBody<FeedbackIn>,
) -> Result<Json<memrl::OutcomeReport>, ApiError> {
    let ns = path(ns)?;
    allow(&scope, &ns)?;
    let feedback = body.into_feedback(&state.limits)?;
    let handle = state.namespaces.existing(&ns).await?;
    blocking(move || match feedback {
        Feedback::Retrievals(rewards) => handle.bank().feedback_many(&rewards),
        Feedback::Outcomes(outcomes) => handle.bank().apply_outcomes(&outcomes),
    })
    .await
    .map(Json)
}

// ---- stats, calibration ----

/// `?bins=&extremes=` of `stats`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StatsIn {
    bins: Option<usize>,
    extremes: Option<usize>,
}

/// `GET /v1/namespaces/{ns}/stats?bins=10&extremes=5`: counts and Q telemetry.
pub async fn stats(
    State(state): State<Arc<AppState>>,
    Extension(scope): Extension<Scope>,
    ns: Result<Path<String>, PathRejection>,
    query: Result<UrlQuery<StatsIn>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<memrl::Stats>, ApiError> {
    let ns = path(ns)?;
    allow(&scope, &ns)?;
    let UrlQuery(q) = query?;
    let (bins, extremes) = (q.bins.unwrap_or(10), q.extremes.unwrap_or(5));
    if bins > MAX_STATS_ROWS || extremes > MAX_STATS_ROWS {
        return Err(ApiError::invalid(format!(
            "bins and extremes: at most {MAX_STATS_ROWS}"
        )));
    }
    let handle = state.namespaces.existing(&ns).await?;
    blocking(move || Ok(handle.bank().stats(bins, extremes)))
        .await
        .map(Json)
}

/// The body of `calibrate`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CalibrateIn {
    max_pairs: Option<usize>,
    seed: Option<u64>,
    #[serde(default)]
    write: bool,
    #[serde(default)]
    fixed_zsim: bool,
}

/// `POST /v1/namespaces/{ns}/calibrate`: the paper's delta and fixed-zsim statistics;
/// `"write": true` stores delta (and with `"fixed_zsim": true` the statistics) in the
/// namespace's retrieval config.
pub async fn calibrate(
    State(state): State<Arc<AppState>>,
    Extension(scope): Extension<Scope>,
    ns: Result<Path<String>, PathRejection>,
    JsonBody(body): JsonBody<CalibrateIn>,
) -> Result<Json<Value>, ApiError> {
    let ns = path(ns)?;
    allow(&scope, &ns)?;
    let max_pairs = body.max_pairs.unwrap_or(memrl::DEFAULT_MAX_PAIRS);
    if max_pairs == 0 || max_pairs > MAX_CALIBRATION_PAIRS {
        return Err(ApiError::invalid(format!(
            "max_pairs: must be in 1..={MAX_CALIBRATION_PAIRS}"
        )));
    }
    if body.fixed_zsim && !body.write {
        return Err(ApiError::invalid("fixed_zsim goes with write"));
    }
    let handle = state.namespaces.existing(&ns).await?;
    let (write, fixed) = (body.write, body.fixed_zsim);
    let seed = body.seed.unwrap_or(0);
    blocking(move || {
        let bank = handle.bank();
        let c = bank.calibrate(max_pairs, seed)?;
        let mut written = Value::Null;
        if write {
            let mut config = bank.retrieval_config();
            config.delta = c.delta;
            if fixed {
                config.zsim = ZSim::Fixed {
                    mean: c.mean,
                    std: c.std,
                };
            }
            bank.set_retrieval_config(config.clone())?;
            written = json!(config);
        }
        Ok(Json(
            json!({ "calibration": c, "retrieval_config": written }),
        ))
    })
    .await
}

// ---- embeddings (OpenAI) ----

/// The body of `POST /v1/embeddings`, as OpenAI's API takes it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingsIn {
    input: Value,
    model: String,
    encoding_format: Option<String>,
    dimensions: Option<usize>,
    /// Accepted and ignored, as OpenAI clients send it for abuse tracking.
    #[allow(dead_code)]
    user: Option<String>,
}

/// `POST /v1/embeddings`: OpenAI-compatible (`float` or `base64` encoding).
pub async fn embeddings(
    State(state): State<Arc<AppState>>,
    JsonBody(body): JsonBody<EmbeddingsIn>,
) -> Result<Json<Value>, ApiError> {
    let Some(embed) = &state.embed else {
        return Err(ApiError::not_found("this server has no embedding model"));
    };
    let name = embed.embedder.name().to_string();
    if body.model != name {
        return Err(ApiError::not_found(format!(
            "model {:?}: this server embeds with {name:?}",
            body.model.chars().take(80).collect::<String>()
        )));
    }
    let base64 = match body.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "encoding_format {:?}: `float` or `base64`",
                other.chars().take(40).collect::<String>()
            )))
        }
    };
    let dim = embed.embedder.dim();
    if let Some(d) = body.dimensions.filter(|&d| d != dim) {
        return Err(ApiError::invalid(format!(
            "dimensions {d}: {name} embeds into {dim} dimensions only"
        )));
    }
    let texts: Vec<String> = match body.input {
        Value::String(s) => vec![s],
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s),
                _ => Err(ApiError::invalid(format!(
                    "input #{i}: a string (token arrays are not accepted)"
                ))),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(ApiError::invalid("input: a string or an array of strings")),
    };
    check_count(&state.limits, "input", texts.len())?;
    let mut tokens = 0;
    for (i, t) in texts.iter().enumerate() {
        check_text(&state.limits, &format!("input #{i}"), t)?;
        tokens += embed.embedder.token_count(t)?;
    }
    state.metrics.add_embedding_tokens(tokens);
    let vectors: Vec<Vec<f32>> = match &embed.batcher {
        Some(batcher) => {
            let mut pending = Vec::with_capacity(texts.len());
            for t in texts {
                pending.push(batcher.submit_embed(t)?);
            }
            let mut out = Vec::with_capacity(pending.len());
            for p in pending {
                out.push(p.await?);
            }
            out
        }
        None => {
            let embedder = embed.embedder.clone();
            blocking(move || embedder.embed(&texts)?.to_rows()).await?
        }
    };
    let data: Vec<Value> = vectors
        .into_iter()
        .enumerate()
        .map(|(index, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64_encode(&bytes))
            } else {
                json!(v)
            };
            json!({ "object": "embedding", "index": index, "embedding": embedding })
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": name,
        "usage": { "prompt_tokens": tokens, "total_tokens": tokens },
    })))
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
