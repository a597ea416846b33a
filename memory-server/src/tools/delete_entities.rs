//! `delete_entities`: removes the named entities with their observations and every
//! relation that touches them; names that do not exist are ignored.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use serde_json::Value;

use super::args::{ArgError, Field, strings};
use super::{ToolError, message};
use crate::postgres::{self, Project};
use crate::protocol::Answer;
use crate::store::{Store, graph};

pub(super) fn parse(args: &Value) -> Result<Vec<String>, ArgError> {
    strings(&Field::root(args).get("entityNames"))
}

/// Always with the store's other writes: the rows it removes are not counted up front.
pub(super) async fn write(
    store: &Arc<Store>,
    cancel: Option<Arc<AtomicBool>>,
    names: Vec<String>,
) -> Result<Answer, ToolError> {
    store.write_async(cancel, move |c| graph::delete_entities(c, &names)).await?;
    Ok(message("Entities deleted successfully"))
}
/// The same call against the team's PostgreSQL project.
pub(super) async fn team(project: &Project, names: Vec<String>) -> Result<Answer, ToolError> {
    project.write(&names, |tx, id, a| Box::pin(postgres::delete_entities(tx, id, a))).await?;
    Ok(message("Entities deleted successfully"))
}
