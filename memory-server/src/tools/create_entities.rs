//! `create_entities`: new entities with their observations. A name already taken (or
//! repeated within the call) is skipped, not an error, as in the official server; the
//! result lists what was stored.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use serde_json::Value;

use super::args::{ArgError, Field, strings};
use super::{ToolError, commit, list};
use crate::postgres::{self, Project};
use crate::protocol::Answer;
use crate::store::model::Entity;
use crate::store::{Store, graph};

pub(super) fn parse(args: &Value) -> Result<Vec<Entity>, ArgError> {
    Field::root(args).get("entities").array(|e| {
        let e = e.object()?;
        Ok(Entity {
            name: e.get("name").name()?,
            entity_type: e.get("entityType").string()?,
            observations: strings(&e.get("observations"))?,
        })
    })
}

/// Commits at once when `small` (see `ToolCall::is_small_write`), else with the store's
/// other writes. Text: the created entities; structured content: `{"entities": [...]}`.
pub(super) async fn write(
    store: &Arc<Store>,
    small: bool,
    cancel: Option<Arc<AtomicBool>>,
    entities: Vec<Entity>,
) -> Result<Answer, ToolError> {
    let created = commit(store, small, cancel, move |c| graph::create_entities(c, &entities)).await?;
    Ok(list("entities", &created)?)
}

/// The same call against the team's PostgreSQL project.
pub(super) async fn team(project: &Project, entities: Vec<Entity>) -> Result<Answer, ToolError> {
    let created = project.write(&entities, |tx, id, a| Box::pin(postgres::create_entities(tx, id, a))).await?;
    Ok(list("entities", &created)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn errors_name_the_field_like_the_official_server() {
        let e = parse(&json!({})).unwrap_err();
        assert_eq!(
            e.message("create_entities"),
            "MCP error -32602: Input validation error: Invalid arguments for tool create_entities: \
             Invalid input: expected array, received undefined at entities"
        );
        let e = parse(&json!({"entities":[{"name":1,"entityType":"t","observations":[]}]})).unwrap_err();
        assert_eq!(e.path, "entities[0].name");
        assert_eq!(e.problem, "Invalid input: expected string, received number");
    }

    #[test]
    fn empty_entity_names_are_refused() {
        let e = parse(&json!({"entities":[{"name":"","entityType":"t","observations":[]}]})).unwrap_err();
        assert_eq!(e.path, "entities[0].name");
        assert!(e.problem.contains("empty"));
    }
}
