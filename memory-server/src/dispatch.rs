//! MCP method dispatch, shared by the HTTP and stdio transports: one request in, one
//! result or `RpcError` out. The request's project comes from the task-local set by
//! the transport (see `routing`), its session (if any) from the caller.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mcp_wire::GRAPH_RESOURCE_URI;
use serde_json::{Value, json};

use crate::memory::{Memory, MemoryError};
use crate::protocol::{Answer, LATEST_VERSION, RpcError, code, supported_version};
use crate::routing::Router;
use crate::scope::current_project;
use crate::session::{Session, SessionRegistry};
use crate::store::StoreError;
use crate::streams::EventStreams;
use crate::tools::{self, ToolCall};

const LOG_LEVELS: &[&str] = &["debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"];

pub struct McpServer {
    pub router: Router,
    pub sessions: SessionRegistry,
    /// Open event streams: session `GET` streams and `subscriptions/listen` (see `streams`).
    pub streams: Arc<EventStreams>,
    /// Cancelled at shutdown: ends `subscriptions/listen` streams gracefully.
    pub shutdown: tokio_util::sync::CancellationToken,
    started: Instant,
}

/// The server identity (`serverInfo` at `initialize`, `_meta` of 2026-07-28 results).
pub fn server_info() -> Value {
    json!({
        "name": "memory-server",
        "title": "Memory (shared SQLite daemon)",
        "version": env!("CARGO_PKG_VERSION"),
    })
}

impl McpServer {
    pub fn new(router: Router, session_idle: Duration) -> Self {
        Self {
            router,
            sessions: SessionRegistry::new(session_idle),
            streams: Arc::new(EventStreams::default()),
            shutdown: tokio_util::sync::CancellationToken::new(),
            started: Instant::now(),
        }
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Answers `initialize`: echoes a supported requested version, else offers the
    /// latest; tells the client where its project's memory is kept when that is not in
    /// the project. Returns the result and the negotiated version.
    pub fn initialize(&self, params: Option<&Value>) -> Result<(Value, &'static str), RpcError> {
        let requested = params
            .and_then(|p| p.get("protocolVersion"))
            .and_then(Value::as_str)
            .ok_or_else(|| RpcError::invalid_params("initialize needs params.protocolVersion (a string)"))?;
        let version = supported_version(requested).unwrap_or(LATEST_VERSION);
        let mut result = json!({
            "protocolVersion": version,
            "capabilities": {
                "tools": { "listChanged": false },
                "resources": { "subscribe": true, "listChanged": false },
                "logging": {},
            },
            "serverInfo": server_info(),
        });
        if let Some(note) = self.placement_note() {
            result["instructions"] = note.into();
        }
        Ok((result, version))
    }

    /// Where the current request's project keeps its memory, when that is not the
    /// project itself (see `routing::Placement`).
    pub fn placement_note(&self) -> Option<String> {
        current_project().and_then(|project| self.router.placement_note(&project))
    }

    /// Serves one request other than `initialize`.
    pub async fn handle(
        &self,
        session: Option<&Arc<Session>>,
        method: &str,
        params: Option<Value>,
    ) -> Result<Answer, RpcError> {
        let params = params.unwrap_or(Value::Null);
        let value = match method {
            "tools/call" => return self.call_tool(&params).await,
            "resources/read" => return self.read_resource(&params).await,
            _ => self.handle_small(session, method, &params).await?,
        };
        Ok(Answer::Value(value))
    }

    /// The methods whose results are small values.
    async fn handle_small(
        &self,
        session: Option<&Arc<Session>>,
        method: &str,
        params: &Value,
    ) -> Result<Value, RpcError> {
        match method {
            "ping" => Ok(json!({})),
            "tools/list" => Ok(tools::catalog().clone()),
            "resources/list" => Ok(tools::resource_list()),
            "resources/templates/list" => Ok(json!({ "resourceTemplates": [] })),
            "resources/subscribe" | "resources/unsubscribe" => {
                graph_uri(params)?;
                let session = session.ok_or_else(|| {
                    RpcError::invalid_request(format!(
                        "{method} needs a session: send initialize first and then the Mcp-Session-Id header"
                    ))
                })?;
                let memory = self.memory().await?;
                if method == "resources/subscribe" {
                    session.subscribe(&memory);
                } else {
                    session.unsubscribe(&memory);
                }
                Ok(json!({}))
            }
            "logging/setLevel" => match params.get("level").and_then(Value::as_str) {
                Some(level) if LOG_LEVELS.contains(&level) => Ok(json!({})),
                _ => Err(RpcError::invalid_params(format!(
                    "logging/setLevel needs params.level, one of {}",
                    LOG_LEVELS.join(", ")
                ))),
            },
            "initialize" => Err(RpcError::invalid_request("initialize must be sent on its own, not in a batch")),
            _ => Err(RpcError::method_not_found(method)),
        }
    }

    async fn read_resource(&self, params: &Value) -> Result<Answer, RpcError> {
        graph_uri(params)?;
        tools::read_resource(self.memory().await?).await
    }

    async fn call_tool(&self, params: &Value) -> Result<Answer, RpcError> {
        let name = params
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| RpcError::invalid_params("tools/call needs params.name (a string)"))?;
        let empty = json!({});
        let arguments = match params.get("arguments") {
            None | Some(Value::Null) => &empty,
            Some(args @ Value::Object(_)) => args,
            Some(_) => return Err(RpcError::invalid_params("tools/call params.arguments must be an object")),
        };
        let call = match ToolCall::parse(name, arguments)? {
            Ok(call) => call,
            Err(error_result) => return Ok(error_result),
        };
        match self.router.current_memory().await {
            Ok(memory) => tools::run(call, memory).await,
            Err(MemoryError::Store(e)) => Ok(store_error_result(&e)),
            Err(MemoryError::Postgres(e)) => Err(database_error(&e)),
        }
    }

    /// The current request's memory; a store that cannot be opened or a database that
    /// cannot be reached is an internal error naming it.
    pub async fn memory(&self) -> Result<Memory, RpcError> {
        self.router.current_memory().await.map_err(|e| match e {
            MemoryError::Postgres(e) => database_error(&e),
            e => RpcError::internal(e.to_string()),
        })
    }
}

/// PostgreSQL unreachable (or refusing): a JSON-RPC error naming the database, so the
/// client sees the outage as such rather than as a tool's failure.
pub fn database_error(e: &crate::postgres::PgError) -> RpcError {
    tracing::warn!(error = %e, "PostgreSQL request failed");
    RpcError::internal(e.to_string())
}

fn graph_uri(params: &Value) -> Result<(), RpcError> {
    match params.get("uri").and_then(Value::as_str) {
        Some(GRAPH_RESOURCE_URI) => Ok(()),
        Some(other) => Err(RpcError {
            code: code::RESOURCE_NOT_FOUND,
            message: format!("Resource not found: {other} (this server has {GRAPH_RESOURCE_URI})"),
            data: Some(json!({ "uri": other })),
        }),
        None => Err(RpcError::invalid_params("params.uri (a string) is required")),
    }
}

fn store_error_result(e: &StoreError) -> Answer {
    tracing::error!(error = %e, "could not open the memory database");
    Answer::Value(json!({ "content": [{ "type": "text", "text": e.to_string() }], "isError": true }))
}
