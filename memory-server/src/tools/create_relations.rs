//! `create_relations`: new relations between entities, which need not exist yet (as in
//! the official server). A relation already stored (or repeated within the call) is
//! skipped; the result lists what was stored.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use serde_json::Value;

use super::args::{ArgError, Field, relation};
use super::{ToolError, commit, list};
use crate::postgres::{self, Project};
use crate::protocol::Answer;
use crate::store::model::Relation;
use crate::store::{Store, graph};

pub(super) fn parse(args: &Value) -> Result<Vec<Relation>, ArgError> {
    Field::root(args).get("relations").array(relation)
}

/// Commits at once when `small` (see `ToolCall::is_small_write`), else with the store's
/// other writes. Text: the created relations; structured content: `{"relations": [...]}`.
pub(super) async fn write(
    store: &Arc<Store>,
    small: bool,
    cancel: Option<Arc<AtomicBool>>,
    relations: Vec<Relation>,
) -> Result<Answer, ToolError> {
    let created = commit(store, small, cancel, move |c| graph::create_relations(c, &relations)).await?;
    Ok(list("relations", &created)?)
}

/// The same call against the team's PostgreSQL project.
pub(super) async fn team(project: &Project, relations: Vec<Relation>) -> Result<Answer, ToolError> {
    let created = project.write(&relations, |tx, id, a| Box::pin(postgres::create_relations(tx, id, a))).await?;
    Ok(list("relations", &created)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn empty_endpoint_names_are_refused() {
        let e = parse(&json!({"relations":[{"from":"a","to":"","relationType":"r"}]})).unwrap_err();
        assert_eq!(e.path, "relations[0].to");
    }

    #[test]
    fn parses_valid_arguments() {
        let r = parse(&json!({"relations":[{"from":"a","to":"b","relationType":"r","extra":1}]})).unwrap();
        assert_eq!(r, vec![Relation { from: "a".into(), to: "b".into(), relation_type: "r".into() }]);
    }
}
