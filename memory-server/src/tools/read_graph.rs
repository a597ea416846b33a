//! `read_graph`: the project's whole graph. It takes no arguments (any given are
//! ignored, as by the official server), and its answer is built once per committed
//! state and shared by every caller until the next commit (`Store::read_cached`).

use super::{ToolError, cached_graph_answer, graph_result};
use crate::postgres::{self, Project};
use crate::protocol::Answer;
use crate::store::Store;

/// Blocks (building the answer reads the whole graph): call it from a blocking thread.
pub(super) fn read(store: &Store) -> Result<Answer, ToolError> {
    Ok(cached_graph_answer(store, "read_graph", graph_result)?)
}
/// The same call against the team's PostgreSQL project.
pub(super) async fn team(project: &Project) -> Result<Answer, ToolError> {
    Ok(graph_result(&project.read(&(), |tx, id, ()| Box::pin(postgres::read_graph(tx, id))).await?)?)
}
