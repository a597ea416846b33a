//! `search_nodes`: the entities whose name, type or an observation contains the query
//! (lower-cased as JavaScript does), with the relations touching them. Rows written but
//! not yet in the search index are indexed first, which is a write.

use serde_json::Value;

use super::args::{ArgError, Field};
use super::{ToolError, graph_result};
use crate::postgres::{self, Project};
use crate::protocol::Answer;
use crate::store::model::KnowledgeGraph;
use crate::store::{GraphError, Store, StoreError, graph};

pub(super) fn parse(args: &Value) -> Result<String, ArgError> {
    Field::root(args).get("query").string()
}

/// The search on a reader that is free right now (`None`: none is), for the async
/// worker; `Some(Ok(None))` when rows wait to be indexed, which that worker must not do.
pub(super) fn try_read(store: &Store, query: &str) -> Option<Result<Option<KnowledgeGraph>, StoreError>> {
    store.try_read(|c| if_indexed(c, store, query))
}

/// The search, indexing waiting rows first when there are any. Blocks: call it from a
/// blocking thread.
pub(super) fn read(store: &Store, query: &str) -> Result<Answer, ToolError> {
    let found = match store.read(|c| if_indexed(c, store, query))? {
        Some(found) => found,
        None => {
            store.update_search_index()?;
            store.read(|c| graph::search_nodes_planned(c, query, store.trigram_counts()))?
        }
    };
    Ok(graph_result(&found)?)
}

/// The search's graph, or `None` when written rows wait to be indexed first (a write;
/// see `Store::update_search_index`). The check shares the search's read transaction.
fn if_indexed(c: &rusqlite::Connection, store: &Store, query: &str) -> Result<Option<KnowledgeGraph>, GraphError> {
    if graph::search_index_is_stale(c)? {
        return Ok(None);
    }
    graph::search_nodes_planned(c, query, store.trigram_counts()).map(Some)
}

/// The same call against the team's PostgreSQL project (its index is kept up to date by
/// every write there).
pub(super) async fn team(project: &Project, query: String) -> Result<Answer, ToolError> {
    Ok(graph_result(&project.read(&query, |tx, id, a| Box::pin(postgres::search_nodes(tx, id, a))).await?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_query_must_be_a_string() {
        let e = parse(&json!({"query": null})).unwrap_err();
        assert_eq!(e.problem, "Invalid input: expected string, received null");
    }
}
