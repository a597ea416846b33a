//! `delete_observations`: removes the given observations from the given entities; an
//! entity or observation that does not exist is ignored.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use serde_json::Value;

use super::args::{ArgError, Field, strings};
use super::{ToolError, message};
use crate::postgres::{self, Project};
use crate::protocol::Answer;
use crate::store::model::ObservationDeletion;
use crate::store::{Store, graph};

pub(super) fn parse(args: &Value) -> Result<Vec<ObservationDeletion>, ArgError> {
    Field::root(args).get("deletions").array(|d| {
        let d = d.object()?;
        Ok(ObservationDeletion {
            entity_name: d.get("entityName").string()?,
            observations: strings(&d.get("observations"))?,
        })
    })
}

/// Always with the store's other writes (see `ToolCall::is_small_write`).
pub(super) async fn write(
    store: &Arc<Store>,
    cancel: Option<Arc<AtomicBool>>,
    deletions: Vec<ObservationDeletion>,
) -> Result<Answer, ToolError> {
    store.write_async(cancel, move |c| graph::delete_observations(c, &deletions)).await?;
    Ok(message("Observations deleted successfully"))
}
/// The same call against the team's PostgreSQL project.
pub(super) async fn team(project: &Project, deletions: Vec<ObservationDeletion>) -> Result<Answer, ToolError> {
    project.write(&deletions, |tx, id, a| Box::pin(postgres::delete_observations(tx, id, a))).await?;
    Ok(message("Observations deleted successfully"))
}
