//! `add_observations`: new observations on existing entities. An entity that does not
//! exist fails the whole call (nothing of it is written), with the official server's
//! words; observations already present are skipped and left out of the result.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use serde_json::Value;

use super::args::{ArgError, Field, strings};
use super::{ToolError, commit, list};
use crate::postgres::{self, Project};
use crate::protocol::Answer;
use crate::store::model::ObservationAddition;
use crate::store::{Store, graph};

pub(super) fn parse(args: &Value) -> Result<Vec<ObservationAddition>, ArgError> {
    Field::root(args).get("observations").array(|o| {
        let o = o.object()?;
        Ok(ObservationAddition { entity_name: o.get("entityName").name()?, contents: strings(&o.get("contents"))? })
    })
}

/// Commits at once when `small` (see `ToolCall::is_small_write`), else with the store's
/// other writes. Text: what each entity gained; structured content: `{"results": [...]}`.
pub(super) async fn write(
    store: &Arc<Store>,
    small: bool,
    cancel: Option<Arc<AtomicBool>>,
    additions: Vec<ObservationAddition>,
) -> Result<Answer, ToolError> {
    let added = commit(store, small, cancel, move |c| graph::add_observations(c, &additions)).await?;
    Ok(list("results", &added)?)
}

/// The same call against the team's PostgreSQL project.
pub(super) async fn team(project: &Project, additions: Vec<ObservationAddition>) -> Result<Answer, ToolError> {
    let added = project.write(&additions, |tx, id, a| Box::pin(postgres::add_observations(tx, id, a))).await?;
    Ok(list("results", &added)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn errors_name_the_field() {
        let e = parse(&json!({"observations":[{"entityName":"a","contents":"x"}]})).unwrap_err();
        assert_eq!(e.path, "observations[0].contents");
    }
}
