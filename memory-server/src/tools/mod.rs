//! The nine memory tools of `@modelcontextprotocol/server-memory`, drop-in: the catalog
//! (names, titles, descriptions, schemas, annotations) is the official server's, and
//! every result is shaped and pretty-printed exactly as that server prints it. Each tool
//! is one file (its arguments, its store call, its result); this one parses a call by
//! name, decides where it runs, and holds what their results share.

mod add_observations;
mod args;
mod create_entities;
mod create_relations;
mod delete_entities;
mod delete_observations;
mod delete_relations;
mod encode;
mod open_nodes;
mod read_graph;
mod search_nodes;

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, LazyLock};

use mcp_wire::GRAPH_RESOURCE_URI;
use serde::Serialize;
use serde_json::{Value, json};

use crate::memory::Memory;
use crate::postgres::{self, PgError, Project};
use crate::protocol::{Answer, RawJson, RpcError};
use crate::store::model::{Entity, KnowledgeGraph, ObservationAddition, ObservationDeletion, Relation};
use crate::store::{GraphError, Store, StoreError, graph};

/// `open_nodes` calls with at most this many names run on the async worker that
/// received them rather than on a blocking thread (see `run`).
const QUICK_OPEN_NAMES: usize = 64;
/// Rows (entities, observations, relations) a write may create and still be small: one
/// statement each, tens of µs in all (see `ToolCall::is_small_write`).
const SMALL_WRITE_ROWS: usize = 16;

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

/// The `resources/read` result for the graph resource: from SQLite built once per
/// committed state (see [`Store::read_cached`]), on a blocking thread.
pub async fn read_resource(memory: Memory) -> Result<Answer, RpcError> {
    match memory {
        Memory::Sqlite(store) => tokio::task::spawn_blocking(move || {
            cached_graph_answer(&store, "resources/read", |g| encode::resource_contents(GRAPH_RESOURCE_URI, g))
                .map_err(|e| RpcError::internal(e.to_string()))
        })
        .await
        .map_err(|e| RpcError::internal(format!("read panicked: {e}")))?,
        Memory::Postgres(project) => {
            let graph = project
                .read(&(), |tx, id, ()| Box::pin(postgres::read_graph(tx, id)))
                .await
                .map_err(|e| crate::dispatch::database_error(&e))?;
            encode::resource_contents(GRAPH_RESOURCE_URI, &graph).map_err(|e| RpcError::internal(e.to_string()))
        }
    }
}

/// `encode` of the whole graph, built once per committed state under `key` (see
/// [`Store::read_cached`]).
fn cached_graph_answer(
    store: &Store,
    key: &'static str,
    encode: impl FnOnce(&KnowledgeGraph) -> serde_json::Result<Answer>,
) -> Result<Answer, StoreError> {
    let bytes =
        store.read_cached(key, |c| Ok(encode(&graph::read_graph(c)?).map_err(encode_failure)?.into_raw_bytes()))?;
    Ok(Answer::Raw(RawJson::trusted(bytes)))
}

/// An answer that cannot be encoded (serde_json writing our own types into memory
/// does not fail in practice) fails the read like an SQL conversion would.
fn encode_failure(e: serde_json::Error) -> GraphError {
    GraphError::Sqlite(rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
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
    pub fn parse(name: &str, arguments: &Value) -> Result<Result<ToolCall, Answer>, RpcError> {
        let parsed = match name {
            "create_entities" => create_entities::parse(arguments).map(ToolCall::CreateEntities),
            "create_relations" => create_relations::parse(arguments).map(ToolCall::CreateRelations),
            "add_observations" => add_observations::parse(arguments).map(ToolCall::AddObservations),
            "delete_entities" => delete_entities::parse(arguments).map(ToolCall::DeleteEntities),
            "delete_observations" => delete_observations::parse(arguments).map(ToolCall::DeleteObservations),
            "delete_relations" => delete_relations::parse(arguments).map(ToolCall::DeleteRelations),
            "read_graph" => Ok(ToolCall::ReadGraph),
            "search_nodes" => search_nodes::parse(arguments).map(ToolCall::SearchNodes),
            "open_nodes" => open_nodes::parse(arguments).map(ToolCall::OpenNodes),
            _ => return Err(RpcError::invalid_params(format!("Unknown tool: {name}"))),
        };
        Ok(parsed.map_err(|e| error_result(&e.message(name))))
    }

    /// Runs a read-only call against `store` in one read transaction. Blocks: call it
    /// from a blocking thread. Writes go through [`run`].
    pub fn run(self, store: &Store) -> Answer {
        outcome(self.read(store))
    }

    fn read(self, store: &Store) -> Result<Answer, ToolError> {
        match self {
            ToolCall::ReadGraph => read_graph::read(store),
            ToolCall::SearchNodes(query) => search_nodes::read(store, &query),
            ToolCall::OpenNodes(names) => open_nodes::read(store, names),
            write => Err(ToolError::NotARead(write.name())),
        }
    }

    /// Runs the call against a project in PostgreSQL: reads in one snapshot, writes in
    /// one transaction (dropping the future, as a cancelled request does, rolls it back).
    async fn run_team(self, project: &Project) -> Result<Answer, ToolError> {
        match self {
            ToolCall::CreateEntities(entities) => create_entities::team(project, entities).await,
            ToolCall::CreateRelations(relations) => create_relations::team(project, relations).await,
            ToolCall::AddObservations(additions) => add_observations::team(project, additions).await,
            ToolCall::DeleteEntities(names) => delete_entities::team(project, names).await,
            ToolCall::DeleteObservations(deletions) => delete_observations::team(project, deletions).await,
            ToolCall::DeleteRelations(relations) => delete_relations::team(project, relations).await,
            ToolCall::ReadGraph => read_graph::team(project).await,
            ToolCall::SearchNodes(query) => search_nodes::team(project, query).await,
            ToolCall::OpenNodes(names) => open_nodes::team(project, names).await,
        }
    }

    /// Whether this is a write of a few rows, which may run at once on the async worker
    /// when nothing else writes (see `Store::write_small_async`). Deletes are not: they
    /// cascade to rows the call does not name.
    fn is_small_write(&self) -> bool {
        let rows = match self {
            ToolCall::CreateEntities(e) => e.iter().map(|e| 1 + e.observations.len()).sum(),
            ToolCall::CreateRelations(r) => r.len(),
            ToolCall::AddObservations(a) => a.iter().map(|a| 1 + a.contents.len()).sum(),
            _ => return false,
        };
        rows <= SMALL_WRITE_ROWS
    }

    /// A write call's work, queued with the store's other writes (see `Store::write_async`),
    /// or run at once when it is small and nothing else writes.
    async fn write(self, store: &Arc<Store>, cancel: Option<Arc<AtomicBool>>) -> Result<Answer, ToolError> {
        let small = self.is_small_write();
        match self {
            ToolCall::CreateEntities(entities) => create_entities::write(store, small, cancel, entities).await,
            ToolCall::CreateRelations(relations) => create_relations::write(store, small, cancel, relations).await,
            ToolCall::AddObservations(additions) => add_observations::write(store, small, cancel, additions).await,
            ToolCall::DeleteEntities(names) => delete_entities::write(store, cancel, names).await,
            ToolCall::DeleteObservations(deletions) => delete_observations::write(store, cancel, deletions).await,
            ToolCall::DeleteRelations(relations) => delete_relations::write(store, cancel, relations).await,
            read @ (ToolCall::ReadGraph | ToolCall::SearchNodes(_) | ToolCall::OpenNodes(_)) => {
                Err(ToolError::NotAWrite(read.name()))
            }
        }
    }

    /// Runs a read whose cost is small and bounded right here, on the async worker:
    /// `open_nodes` of a few names (three indexed statements, a handful of rows per
    /// name), or a search whose plan is known to be selective (see
    /// `TrigramCounts::search_is_cheap`). `None`: not such a read, no reader free at
    /// once (waiting for one must not hold the worker), or the search index needs
    /// updating first (a write, which must not wait on this thread); run it as any
    /// other read.
    fn run_quick(&self, store: &Store) -> Option<Answer> {
        let found = match self {
            ToolCall::OpenNodes(names) if names.len() <= QUICK_OPEN_NAMES => {
                open_nodes::try_read(store, names)?.map(Some)
            }
            ToolCall::SearchNodes(query) if store.trigram_counts().search_is_cheap(query) => {
                search_nodes::try_read(store, query)?
            }
            _ => return None,
        };
        match found {
            Ok(None) => None,
            Ok(Some(graph)) => Some(outcome(graph_result(&graph).map_err(ToolError::from))),
            Err(e) => Some(outcome(Err(e.into()))),
        }
    }

    fn is_read(&self) -> bool {
        matches!(self, ToolCall::ReadGraph | ToolCall::SearchNodes(_) | ToolCall::OpenNodes(_))
    }

    fn name(&self) -> &'static str {
        match self {
            ToolCall::CreateEntities(_) => "create_entities",
            ToolCall::CreateRelations(_) => "create_relations",
            ToolCall::AddObservations(_) => "add_observations",
            ToolCall::DeleteEntities(_) => "delete_entities",
            ToolCall::DeleteObservations(_) => "delete_observations",
            ToolCall::DeleteRelations(_) => "delete_relations",
            ToolCall::ReadGraph => "read_graph",
            ToolCall::SearchNodes(_) => "search_nodes",
            ToolCall::OpenNodes(_) => "open_nodes",
        }
    }
}

/// A tool's outcome as the model sees it: failures are `isError` results.
fn outcome(result: Result<Answer, ToolError>) -> Answer {
    result.unwrap_or_else(|e| {
        let expected = matches!(
            e,
            ToolError::Store(StoreError::Graph(GraphError::EntityNotFound(_)))
                | ToolError::Team(PgError::EntityNotFound(_) | PgError::Nul(_))
        );
        if !expected {
            tracing::error!(error = %e, "tool call failed");
        }
        error_result(&e.to_string())
    })
}

#[derive(Debug, thiserror::Error)]
enum ToolError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Team(#[from] PgError),
    #[error("could not encode the result: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("internal error: {0} was run as a read")]
    NotARead(&'static str),
    #[error("internal error: {0} was run as a write")]
    NotAWrite(&'static str),
}

/// Runs a parsed call against a project's memory. A PostgreSQL database that cannot be
/// reached is a JSON-RPC error naming it (an outage, not the tool's failure).
pub async fn run(call: ToolCall, memory: Memory) -> Result<Answer, RpcError> {
    match memory {
        Memory::Sqlite(store) => run_sqlite(call, store).await,
        Memory::Postgres(project) => match call.run_team(&project).await {
            Err(ToolError::Team(e)) if e.is_unavailable() => Err(crate::dispatch::database_error(&e)),
            result => Ok(outcome(result)),
        },
    }
}

/// Runs a parsed call against `store`: a read on a blocking thread, a write in the
/// store's queue of writes.
async fn run_sqlite(call: ToolCall, store: Arc<Store>) -> Result<Answer, RpcError> {
    // A request that can be cancelled (2026-07-28, see `stateless::cancellable`) sets its
    // flag when this future is dropped; a queued write sees it before committing.
    let cancel = crate::scope::cancel_flag();
    let _on_drop = cancel.clone().map(crate::scope::SetOnDrop);
    if !call.is_read() {
        return Ok(outcome(call.write(&store, cancel).await));
    }
    // Handing a ~50 µs read to another thread and back costs as much again in wake-ups
    // (profiled: five context switches per request); bounded reads run here.
    if let Some(answer) = call.run_quick(&store) {
        return Ok(answer);
    }
    tokio::task::spawn_blocking(move || call.run(&store))
        .await
        .map_err(|e| RpcError::internal(format!("tool call panicked: {e}")))
}

/// Commits a write's work: at once when `small` allows it (see `Store::write_small_async`),
/// else through the store's queue of writes.
async fn commit<T: Send + 'static>(
    store: &Arc<Store>,
    small: bool,
    cancel: Option<Arc<AtomicBool>>,
    f: impl FnMut(&rusqlite::Connection) -> Result<T, GraphError> + Send + 'static,
) -> Result<T, StoreError> {
    match small {
        true => store.write_small_async(cancel, f).await,
        false => store.write_async(cancel, f).await,
    }
}

/// The result of a write that returns items: the text shows the bare list, the
/// structured content is `{key: items}`.
fn list<T: Serialize>(key: &str, items: &[T]) -> Result<Answer, serde_json::Error> {
    encode::tool_result(items, &OneKey(key, items))
}

fn graph_result(graph: &KnowledgeGraph) -> Result<Answer, serde_json::Error> {
    encode::tool_result(graph, graph)
}

/// `{key: value}` with a key chosen at run time.
struct OneKey<'a, T: ?Sized>(&'a str, &'a T);

impl<T: Serialize + ?Sized> Serialize for OneKey<'_, T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(1))?;
        map.serialize_entry(self.0, self.1)?;
        map.end()
    }
}

fn message(text: &str) -> Answer {
    Answer::Value(json!({
        "content": [{ "type": "text", "text": text }],
        "structuredContent": { "success": true, "message": text },
    }))
}

fn error_result(text: &str) -> Answer {
    Answer::Value(json!({ "content": [{ "type": "text", "text": text }], "isError": true }))
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
