//! The knowledge-graph model as the official memory server shapes it on the wire.
//! Field order matters: results are printed as pretty JSON and compared byte for byte
//! with the official server, so the structs list fields in its order.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entity {
    pub name: String,
    #[serde(rename = "entityType")]
    pub entity_type: String,
    pub observations: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Relation {
    pub from: String,
    pub to: String,
    #[serde(rename = "relationType")]
    pub relation_type: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnowledgeGraph {
    pub entities: Vec<Entity>,
    pub relations: Vec<Relation>,
}

/// One item of `add_observations`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservationAddition {
    pub entity_name: String,
    pub contents: Vec<String>,
}

/// One item of the `add_observations` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AddedObservations {
    #[serde(rename = "entityName")]
    pub entity_name: String,
    #[serde(rename = "addedObservations")]
    pub added_observations: Vec<String>,
}

/// One item of `delete_observations`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservationDeletion {
    pub entity_name: String,
    pub observations: Vec<String>,
}
