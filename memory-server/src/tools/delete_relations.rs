//! `delete_relations`: removes the given relations (matched on all three fields);
//! relations that do not exist are ignored.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use serde_json::Value;

use super::args::{ArgError, Field, relation};
use super::{ToolError, message};
use crate::postgres::{self, Project};
use crate::protocol::Answer;
use crate::store::model::Relation;
use crate::store::{Store, graph};

pub(super) fn parse(args: &Value) -> Result<Vec<Relation>, ArgError> {
    Field::root(args).get("relations").array(relation)
}

/// Always with the store's other writes (see `ToolCall::is_small_write`).
pub(super) async fn write(
    store: &Arc<Store>,
    cancel: Option<Arc<AtomicBool>>,
    relations: Vec<Relation>,
) -> Result<Answer, ToolError> {
    store.write_async(cancel, move |c| graph::delete_relations(c, &relations)).await?;
    Ok(message("Relations deleted successfully"))
}
/// The same call against the team's PostgreSQL project.
pub(super) async fn team(project: &Project, relations: Vec<Relation>) -> Result<Answer, ToolError> {
    project.write(&relations, |tx, id, a| Box::pin(postgres::delete_relations(tx, id, a))).await?;
    Ok(message("Relations deleted successfully"))
}
