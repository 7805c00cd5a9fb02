//! The Model Context Protocol face of the server: four tools an agent calls in a loop
//! (retrieve, act, report the outcome, record what it learned), over stdio (`memrl mcp`) or
//! the streamable HTTP transport at `/mcp` (with the same API keys as the JSON routes).
//!
//! The descriptions are written for the model that reads them: each says when to call the tool
//! and what to pass on to the next, so the order retrieve -> (work) -> report_outcome ->
//! add_memory falls out of reading them.

use std::sync::Arc;

use memrl::{Query, RetrievalConfig};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, Implementation, ServerCapabilities, ServerConfig};
use rmcp::service::RequestContext;
use rmcp::{schemars, tool, tool_handler, tool_router, ErrorData, RoleServer, ServerHandler};
use serde::Deserialize;
use serde_json::json;

use crate::api::{run_retrievals, AppState, MAX_K2};
use crate::auth::Scope;
use crate::error::ApiError;

/// What the server tells a client about itself at the handshake.
const INSTRUCTIONS: &str = "memrl is your memory of past tasks, and it learns which memories \
actually help. For every task: (1) call retrieve_memories with the task before you start and \
use the experiences it returns as advice; (2) do the task; (3) call report_outcome with the \
retrieval_id from step 1 and reward 1 if the task succeeded, -1 if it failed; (4) call \
add_memory with the task and the lesson you learned (what worked, or what to avoid), and whether \
it succeeded. Memories that helped rise in later retrievals; misleading ones sink.";

/// Arguments of `retrieve_memories`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetrieveArgs {
    /// The task you are about to do, in one or two sentences (what the user asked for).
    pub task: String,
    /// How many memories to return (default 5, at most 50).
    pub k: Option<usize>,
    /// The memory namespace (leave out to use the default one).
    pub namespace: Option<String>,
}

/// Arguments of `report_outcome`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutcomeArgs {
    /// The retrieval_id that retrieve_memories returned for this task.
    pub retrieval_id: String,
    /// 1 if the task succeeded, -1 if it failed; a value in between for partial success.
    pub reward: f32,
    /// The namespace given to retrieve_memories, if one was.
    pub namespace: Option<String>,
}

/// Arguments of `add_memory`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AddArgs {
    /// The task, as you would describe it to retrieve_memories.
    pub task: String,
    /// The lesson for next time: the steps that worked, or the mistake to avoid.
    pub experience: String,
    /// Whether the task succeeded.
    pub success: bool,
    /// The memory namespace (leave out to use the default one).
    pub namespace: Option<String>,
}

/// Arguments of `memory_stats`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StatsArgs {
    /// The memory namespace (leave out to use the default one).
    pub namespace: Option<String>,
}

/// The MCP server over the server's namespaces.
#[derive(Clone)]
pub struct MemrlMcp {
    state: Arc<AppState>,
    default_namespace: String,
    tool_router: ToolRouter<Self>,
}

fn tool_error(e: ApiError) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(format!(
        "{} ({}): {}",
        e.kind,
        e.status.as_u16(),
        e.message
    ))])
}

fn answer(text: String, value: serde_json::Value) -> CallToolResult {
    let mut result = CallToolResult::success(vec![ContentBlock::text(text)]);
    result.structured_content = Some(value);
    result
}

impl MemrlMcp {
    /// Tools over `state`; a call without a namespace uses the key's only namespace, else
    /// `default_namespace`.
    pub fn new(state: Arc<AppState>, default_namespace: String) -> Self {
        Self {
            state,
            default_namespace,
            tool_router: Self::tool_router(),
        }
    }

    /// The namespace of a call, checked against the caller's key (HTTP) or open to all (stdio).
    fn namespace(
        &self,
        given: Option<String>,
        context: &RequestContext<RoleServer>,
    ) -> Result<String, ApiError> {
        let scope = context
            .extensions
            .get::<axum::http::request::Parts>()
            .and_then(|parts| parts.extensions.get::<Scope>())
            .cloned();
        let scope = match scope {
            Some(scope) => scope,
            // Only the HTTP transport carries request parts; the route's middleware always
            // puts a scope there. Without parts the caller is the local stdio process.
            None if context
                .extensions
                .get::<axum::http::request::Parts>()
                .is_none() =>
            {
                Scope::All
            }
            None => return Err(ApiError::unauthorized("no API key")),
        };
        let name = given
            .or_else(|| scope.only_namespace().map(str::to_string))
            .unwrap_or_else(|| self.default_namespace.clone());
        crate::namespaces::validate_name(&name).map_err(ApiError::invalid)?;
        if !scope.allows(&name) {
            return Err(ApiError::forbidden(format!(
                "this API key may not use namespace {name:?}"
            )));
        }
        Ok(name)
    }

    async fn retrieve(
        &self,
        args: RetrieveArgs,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ApiError> {
        let namespace = self.namespace(args.namespace, context)?;
        let k = args.k.unwrap_or(5);
        if k == 0 || k > MAX_K2.min(50) {
            return Err(ApiError::invalid("k: between 1 and 50"));
        }
        if args.task.len() > self.state.limits.max_text_bytes {
            return Err(ApiError::invalid(
                "task: longer than the server's text limit",
            ));
        }
        let handle = match self.state.namespaces.existing(&namespace).await {
            Ok(handle) => handle,
            // An empty memory is not an error for the agent: it starts without advice.
            Err(e) if e.status == axum::http::StatusCode::NOT_FOUND => {
                self.state.namespaces.writable(&namespace).await?
            }
            Err(e) => return Err(e),
        };
        let config = RetrievalConfig {
            k2: k,
            ..handle.bank().retrieval_config()
        };
        self.state.count_tokens(&[args.task.as_str()]);
        let mut results =
            run_retrievals(handle, vec![Query::Text(args.task)], Some(config)).await?;
        let retrieval = results.remove(0);
        let id = retrieval.id.0.to_string();
        let mut text =
            format!("retrieval_id: {id}\n(pass it to report_outcome once the task is done)\n");
        if retrieval.hits.is_empty() {
            text.push_str("No past experience is similar to this task: proceed on your own.\n");
        } else {
            text.push_str("Past experiences, most useful first:\n");
            for (i, hit) in retrieval.hits.iter().enumerate() {
                text.push_str(&format!(
                    "{}. (memory {}, utility {:.2}, similarity {:.2}) {}\n",
                    i + 1,
                    hit.id,
                    hit.q,
                    hit.sim,
                    hit.experience
                ));
            }
        }
        let hits: Vec<serde_json::Value> = retrieval
            .hits
            .iter()
            .map(|h| json!({ "id": h.id, "experience": h.experience, "q": h.q, "sim": h.sim, "score": h.score }))
            .collect();
        Ok(answer(
            text,
            json!({ "retrieval_id": id, "namespace": namespace, "hits": hits }),
        ))
    }

    async fn outcome(
        &self,
        args: OutcomeArgs,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ApiError> {
        let namespace = self.namespace(args.namespace, context)?;
        let id: u64 = args.retrieval_id.trim().parse().map_err(|_| {
            ApiError::invalid("retrieval_id: the number retrieve_memories returned")
        })?;
        let handle = self.state.namespaces.existing(&namespace).await?;
        let reward = args.reward;
        let report = tokio::task::spawn_blocking(move || {
            handle.bank().feedback(memrl::RetrievalId(id), reward)
        })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
        Ok(answer(
            format!(
                "Recorded reward {reward} for {} memories. Now call add_memory with what you learned from this task.",
                report.memories
            ),
            json!(report),
        ))
    }

    async fn add(
        &self,
        args: AddArgs,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ApiError> {
        let namespace = self.namespace(args.namespace, context)?;
        let limit = self.state.limits.max_text_bytes;
        if args.task.len() > limit || args.experience.len() > limit {
            return Err(ApiError::invalid(
                "task or experience: longer than the server's text limit",
            ));
        }
        self.state.count_tokens(&[args.task.as_str()]);
        let handle = self.state.namespaces.writable(&namespace).await?;
        let memory = memrl::NewMemory::new(args.task, args.experience).success(args.success);
        let id = tokio::task::spawn_blocking(move || handle.bank().add(memory))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))??;
        Ok(answer(
            format!("Stored as memory {id} in namespace {namespace}."),
            json!({ "id": id, "namespace": namespace }),
        ))
    }

    async fn stats(
        &self,
        args: StatsArgs,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ApiError> {
        let namespace = self.namespace(args.namespace, context)?;
        let handle = self.state.namespaces.existing(&namespace).await?;
        let stats = tokio::task::spawn_blocking(move || handle.bank().stats(5, 3))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let q = stats
            .q_quantiles
            .map(|q| format!("Q min {:.2}, median {:.2}, max {:.2}", q[0], q[2], q[4]))
            .unwrap_or_else(|| "no memory yet".into());
        Ok(answer(
            format!(
                "Namespace {namespace}: {} memories ({} distinct tasks); {q}; {} helped (Q > 0), {} misled (Q < 0).",
                stats.memories, stats.intents, stats.q_signs[2], stats.q_signs[0]
            ),
            json!(stats),
        ))
    }
}

fn result(outcome: Result<CallToolResult, ApiError>) -> Result<CallToolResult, ErrorData> {
    Ok(outcome.unwrap_or_else(tool_error))
}

#[tool_router]
impl MemrlMcp {
    /// Step 1 of every task.
    #[tool(
        name = "retrieve_memories",
        description = "Call this FIRST, before you start a task. Finds past experiences relevant to the task, ranked by how much they helped before, and returns them with a retrieval_id. Use the experiences as advice, then keep the retrieval_id: once the task is done, pass it to report_outcome."
    )]
    async fn retrieve_memories(
        &self,
        Parameters(args): Parameters<RetrieveArgs>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        result(self.retrieve(args, &context).await)
    }

    /// Step 3.
    #[tool(
        name = "report_outcome",
        description = "Call this when a task is finished, with the retrieval_id that retrieve_memories returned for it and reward 1 if the task succeeded or -1 if it failed. This is how memory learns: the memories you were given gain or lose utility. Report each retrieval once. Then call add_memory."
    )]
    async fn report_outcome(
        &self,
        Parameters(args): Parameters<OutcomeArgs>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        result(self.outcome(args, &context).await)
    }

    /// Step 4.
    #[tool(
        name = "add_memory",
        description = "Call this after report_outcome to store what you learned from the task for next time: the task, and the lesson (the steps that worked, or the mistake to avoid), and whether it succeeded. Write the lesson so that it helps on a similar task."
    )]
    async fn add_memory(
        &self,
        Parameters(args): Parameters<AddArgs>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        result(self.add(args, &context).await)
    }

    /// Any time.
    #[tool(
        name = "memory_stats",
        description = "How many memories there are and how their utility is spread (how many helped, how many misled). Not needed for the task loop; call it when asked about the memory itself."
    )]
    async fn memory_stats(
        &self,
        Parameters(args): Parameters<StatsArgs>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        result(self.stats(args, &context).await)
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for MemrlMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("memrl", env!("CARGO_PKG_VERSION")))
            .with_instructions(INSTRUCTIONS)
    }
}
