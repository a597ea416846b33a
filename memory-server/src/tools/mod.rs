//! The nine memory tools of `@modelcontextprotocol/server-memory`, drop-in: the catalog
//! (names, titles, descriptions, schemas, annotations) is the official server's, and
//! every result is shaped and pretty-printed exactly as that server prints it.

pub mod args;

use std::sync::{Arc, LazyLock};

use serde::Serialize;
use serde_json::{Value, json};

use crate::protocol::RpcError;
use crate::store::model::{Entity, KnowledgeGraph, ObservationAddition, ObservationDeletion, Relation};
use crate::store::{GraphError, Store, StoreError, graph};

pub const GRAPH_RESOURCE_URI: &str = "memory://knowledge-graph";

/// `tools/list` of the official server 2026.8.31, as captured in
/// `tests/fixtures/official/` (a test keeps the two equal).
static CATALOG: LazyLock<Value> = LazyLock::new(|| {
    let tools: Value = serde_json::from_str(include_str!("catalog.json")).unwrap_or(Value::Null);
    json!({ "tools": tools })
});

/// The `tools/list` result.
pub fn catalog() -> &'static Value {
    &CATALOG
}

/// The `resources/list` result.
pub fn resource_list() -> Value {
    json!({ "resources": [{
        "uri": GRAPH_RESOURCE_URI,
        "name": "knowledge-graph",
        "title": "Knowledge Graph",
        "description": "The full knowledge graph with all entities and relations",
        "mimeType": "application/json",
    }]})
}

/// The `resources/read` result for the graph resource.
pub fn resource_contents(graph: &KnowledgeGraph) -> Result<Value, RpcError> {
    Ok(json!({ "contents": [{
        "uri": GRAPH_RESOURCE_URI,
        "mimeType": "application/json",
        "text": pretty(graph)?,
    }]}))
}

/// A parsed tool call.
#[derive(Debug)]
pub enum ToolCall {
    CreateEntities(Vec<Entity>),
    CreateRelations(Vec<Relation>),
    AddObservations(Vec<ObservationAddition>),
    DeleteEntities(Vec<String>),
    DeleteObservations(Vec<ObservationDeletion>),
    DeleteRelations(Vec<Relation>),
    ReadGraph,
    SearchNodes(String),
    OpenNodes(Vec<String>),
}

impl ToolCall {
    /// `Err` is a protocol error (unknown tool); `Ok(Err(result))` is an argument error
    /// reported to the model as a tool result with `isError: true`.
    pub fn parse(name: &str, arguments: &Value) -> Result<Result<ToolCall, Value>, RpcError> {
        let parsed = match name {
            "create_entities" => args::create_entities(arguments).map(ToolCall::CreateEntities),
            "create_relations" => args::relations(arguments).map(ToolCall::CreateRelations),
            "add_observations" => args::add_observations(arguments).map(ToolCall::AddObservations),
            "delete_entities" => args::delete_entities(arguments).map(ToolCall::DeleteEntities),
            "delete_observations" => args::delete_observations(arguments).map(ToolCall::DeleteObservations),
            "delete_relations" => args::relations(arguments).map(ToolCall::DeleteRelations),
            "read_graph" => Ok(ToolCall::ReadGraph),
            "search_nodes" => args::search_query(arguments).map(ToolCall::SearchNodes),
            "open_nodes" => args::open_names(arguments).map(ToolCall::OpenNodes),
            _ => return Err(RpcError::invalid_params(format!("Unknown tool: {name}"))),
        };
        Ok(parsed.map_err(|e| error_result(&e.message(name))))
    }

    /// Runs the call against `store` in one transaction. Blocks: call it from a
    /// blocking thread.
    pub fn run(self, store: &Store) -> Value {
        self.execute(store).unwrap_or_else(|e| {
            if !matches!(e, ToolError::Store(StoreError::Graph(GraphError::EntityNotFound(_)))) {
                tracing::error!(error = %e, "tool call failed");
            }
            error_result(&e.to_string())
        })
    }

    fn execute(self, store: &Store) -> Result<Value, ToolError> {
        Ok(match self {
            ToolCall::CreateEntities(e) => list("entities", &store.write(|c| graph::create_entities(c, &e))?)?,
            ToolCall::CreateRelations(r) => list("relations", &store.write(|c| graph::create_relations(c, &r))?)?,
            ToolCall::AddObservations(a) => list("results", &store.write(|c| graph::add_observations(c, &a))?)?,
            ToolCall::DeleteEntities(n) => {
                store.write(|c| graph::delete_entities(c, &n))?;
                message("Entities deleted successfully")
            }
            ToolCall::DeleteObservations(d) => {
                store.write(|c| graph::delete_observations(c, &d))?;
                message("Observations deleted successfully")
            }
            ToolCall::DeleteRelations(r) => {
                store.write(|c| graph::delete_relations(c, &r))?;
                message("Relations deleted successfully")
            }
            ToolCall::ReadGraph => graph_result(&store.read(graph::read_graph)?)?,
            ToolCall::SearchNodes(q) => {
                if store.read(graph::search_index_is_stale)? {
                    store.write(graph::repair_search_index)?;
                }
                graph_result(&store.read(|c| graph::search_nodes(c, &q))?)?
            }
            ToolCall::OpenNodes(n) => graph_result(&store.read(|c| graph::open_nodes(c, &n))?)?,
        })
    }
}

#[derive(Debug, thiserror::Error)]
enum ToolError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("could not encode the result: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Runs a parsed call on a blocking thread against `store`.
pub async fn run(call: ToolCall, store: Arc<Store>) -> Result<Value, RpcError> {
    // A request that can be cancelled (2026-07-28, see `stateless::cancellable`) sets its
    // flag when this future is dropped; the blocking write sees it before committing.
    let cancel = crate::stateless::cancel_flag();
    let _on_drop = cancel.clone().map(crate::stateless::SetOnDrop);
    tokio::task::spawn_blocking(move || crate::store::with_cancel(cancel, || call.run(&store)))
        .await
        .map_err(|e| RpcError::internal(format!("tool call panicked: {e}")))
}

/// A tool result whose text is `JSON.stringify(items, null, 2)` and whose
/// structured content is `{key: items}`.
fn list<T: Serialize>(key: &str, items: &[T]) -> Result<Value, serde_json::Error> {
    let value = serde_json::to_value(items)?;
    let text = serde_json::to_string_pretty(&value)?;
    Ok(json!({ "content": [{ "type": "text", "text": text }], "structuredContent": { key: value } }))
}

fn graph_result(graph: &KnowledgeGraph) -> Result<Value, serde_json::Error> {
    let value = serde_json::to_value(graph)?;
    let text = serde_json::to_string_pretty(&value)?;
    Ok(json!({ "content": [{ "type": "text", "text": text }], "structuredContent": value }))
}

fn message(text: &str) -> Value {
    json!({
        "content": [{ "type": "text", "text": text }],
        "structuredContent": { "success": true, "message": text },
    })
}

fn error_result(text: &str) -> Value {
    json!({ "content": [{ "type": "text", "text": text }], "isError": true })
}

fn pretty<T: Serialize>(value: &T) -> Result<String, RpcError> {
    serde_json::to_string_pretty(value).map_err(|e| RpcError::internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_lists_the_nine_official_tools() {
        let names: Vec<&str> =
            catalog()["tools"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
        assert_eq!(
            names,
            [
                "create_entities",
                "create_relations",
                "add_observations",
                "delete_entities",
                "delete_observations",
                "delete_relations",
                "read_graph",
                "search_nodes",
                "open_nodes"
            ]
        );
    }

    #[test]
    fn catalog_equals_the_captured_official_tools_list() {
        let fixture: Value =
            serde_json::from_str(include_str!("../../../tests/fixtures/official/server-memory-2026.8.31.json"))
                .unwrap();
        assert_eq!(catalog(), &fixture["tools_list"]);
    }

    #[test]
    fn unknown_tool_is_a_protocol_error() {
        let err = ToolCall::parse("nope", &json!({})).unwrap_err();
        assert_eq!(err.code, crate::protocol::code::INVALID_PARAMS);
        assert!(err.message.contains("nope"));
    }
}
