//! `open_nodes`: the named entities that exist, in graph order, with every relation
//! that has at least one end among them; names that do not exist are ignored.

use serde_json::Value;

use super::args::{ArgError, Field, strings};
use super::{ToolError, graph_result};
use crate::postgres::{self, Project};
use crate::protocol::Answer;
use crate::store::model::KnowledgeGraph;
use crate::store::{Store, StoreError, graph};

pub(super) fn parse(args: &Value) -> Result<Vec<String>, ArgError> {
    strings(&Field::root(args).get("names"))
}

/// The lookup on a reader that is free right now (`None`: none is), for the async worker.
pub(super) fn try_read(store: &Store, names: &[String]) -> Option<Result<KnowledgeGraph, StoreError>> {
    store.try_read(|c| graph::open_nodes(c, names))
}

/// The lookup. Blocks: call it from a blocking thread.
pub(super) fn read(store: &Store, names: Vec<String>) -> Result<Answer, ToolError> {
    Ok(graph_result(&store.read(move |c| graph::open_nodes(c, &names))?)?)
}
/// The same call against the team's PostgreSQL project.
pub(super) async fn team(project: &Project, names: Vec<String>) -> Result<Answer, ToolError> {
    Ok(graph_result(&project.read(&names, |tx, id, a| Box::pin(postgres::open_nodes(tx, id, a))).await?)?)
}
