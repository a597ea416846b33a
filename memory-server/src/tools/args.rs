//! Tool argument parsing: JSON arguments become typed requests, or an error naming the
//! offending field in the official server's words (`expected array, received string at
//! entities`), so a model that learned from that server corrects itself the same way.

use serde_json::Value;

use crate::store::model::{Entity, ObservationAddition, ObservationDeletion, Relation};

/// A problem with one field of a tool's arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgError {
    pub problem: String,
    pub path: String,
}

impl ArgError {
    /// The message shown to the client, shaped like the official server's.
    pub fn message(&self, tool: &str) -> String {
        format!(
            "MCP error -32602: Input validation error: Invalid arguments for tool {tool}: {} at {}",
            self.problem, self.path
        )
    }
}

type Result<T> = std::result::Result<T, ArgError>;

/// A cursor into the arguments that remembers its path for error messages.
#[derive(Clone, Copy)]
struct Field<'a> {
    value: Option<&'a Value>,
    parent: Option<&'a Field<'a>>,
    key: Key<'a>,
}

#[derive(Clone, Copy)]
enum Key<'a> {
    Root,
    Name(&'a str),
    Index(usize),
}

impl<'a> Field<'a> {
    fn root(value: &'a Value) -> Self {
        Field { value: Some(value), parent: None, key: Key::Root }
    }

    fn get(&'a self, key: &'a str) -> Field<'a> {
        Field { value: self.value.and_then(|v| v.get(key)), parent: Some(self), key: Key::Name(key) }
    }

    fn path(&self) -> String {
        let mut parts = Vec::new();
        let mut cur = Some(self);
        while let Some(f) = cur {
            parts.push(f.key);
            cur = f.parent;
        }
        let mut out = String::new();
        for key in parts.into_iter().rev() {
            match key {
                Key::Root => {}
                Key::Name(n) if out.is_empty() => out.push_str(n),
                Key::Name(n) => {
                    out.push('.');
                    out.push_str(n);
                }
                Key::Index(i) => out.push_str(&format!("[{i}]")),
            }
        }
        out
    }

    fn fail(&self, problem: String) -> ArgError {
        ArgError { problem, path: self.path() }
    }

    fn mismatch(&self, expected: &str) -> ArgError {
        self.fail(format!("Invalid input: expected {expected}, received {}", js_type(self.value)))
    }

    fn string(&self) -> Result<String> {
        match self.value {
            Some(Value::String(s)) => Ok(s.clone()),
            _ => Err(self.mismatch("string")),
        }
    }

    /// An entity name: a string that is not empty.
    fn name(&self) -> Result<String> {
        let s = self.string()?;
        if s.is_empty() {
            return Err(self.fail("Invalid input: entity name must not be empty".into()));
        }
        Ok(s)
    }

    fn array<T>(&self, mut item: impl FnMut(&Field<'_>) -> Result<T>) -> Result<Vec<T>> {
        let Some(Value::Array(items)) = self.value else {
            return Err(self.mismatch("array"));
        };
        items
            .iter()
            .enumerate()
            .map(|(i, v)| item(&Field { value: Some(v), parent: Some(self), key: Key::Index(i) }))
            .collect()
    }

    fn object(&self) -> Result<&Self> {
        match self.value {
            Some(Value::Object(_)) => Ok(self),
            _ => Err(self.mismatch("object")),
        }
    }
}

fn js_type(v: Option<&Value>) -> &'static str {
    match v {
        None => "undefined",
        Some(Value::Null) => "null",
        Some(Value::Bool(_)) => "boolean",
        Some(Value::Number(_)) => "number",
        Some(Value::String(_)) => "string",
        Some(Value::Array(_)) => "array",
        Some(Value::Object(_)) => "object",
    }
}

fn strings(f: &Field<'_>) -> Result<Vec<String>> {
    f.array(|s| s.string())
}

fn relation(f: &Field<'_>) -> Result<Relation> {
    let f = f.object()?;
    Ok(Relation {
        from: f.get("from").name()?,
        to: f.get("to").name()?,
        relation_type: f.get("relationType").string()?,
    })
}

pub fn create_entities(args: &Value) -> Result<Vec<Entity>> {
    Field::root(args).get("entities").array(|e| {
        let e = e.object()?;
        Ok(Entity {
            name: e.get("name").name()?,
            entity_type: e.get("entityType").string()?,
            observations: strings(&e.get("observations"))?,
        })
    })
}

pub fn relations(args: &Value) -> Result<Vec<Relation>> {
    Field::root(args).get("relations").array(relation)
}

pub fn add_observations(args: &Value) -> Result<Vec<ObservationAddition>> {
    Field::root(args).get("observations").array(|o| {
        let o = o.object()?;
        Ok(ObservationAddition { entity_name: o.get("entityName").name()?, contents: strings(&o.get("contents"))? })
    })
}

pub fn delete_entities(args: &Value) -> Result<Vec<String>> {
    strings(&Field::root(args).get("entityNames"))
}

pub fn delete_observations(args: &Value) -> Result<Vec<ObservationDeletion>> {
    Field::root(args).get("deletions").array(|d| {
        let d = d.object()?;
        Ok(ObservationDeletion {
            entity_name: d.get("entityName").string()?,
            observations: strings(&d.get("observations"))?,
        })
    })
}

pub fn search_query(args: &Value) -> Result<String> {
    Field::root(args).get("query").string()
}

pub fn open_names(args: &Value) -> Result<Vec<String>> {
    strings(&Field::root(args).get("names"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn errors_name_the_field_like_the_official_server() {
        let e = create_entities(&json!({})).unwrap_err();
        assert_eq!(
            e.message("create_entities"),
            "MCP error -32602: Input validation error: Invalid arguments for tool create_entities: \
             Invalid input: expected array, received undefined at entities"
        );
        let e = create_entities(&json!({"entities":[{"name":1,"entityType":"t","observations":[]}]})).unwrap_err();
        assert_eq!(e.path, "entities[0].name");
        assert_eq!(e.problem, "Invalid input: expected string, received number");
        let e = add_observations(&json!({"observations":[{"entityName":"a","contents":"x"}]})).unwrap_err();
        assert_eq!(e.path, "observations[0].contents");
        let e = search_query(&json!({"query": null})).unwrap_err();
        assert_eq!(e.problem, "Invalid input: expected string, received null");
    }

    #[test]
    fn empty_entity_names_are_refused() {
        let e = create_entities(&json!({"entities":[{"name":"","entityType":"t","observations":[]}]})).unwrap_err();
        assert_eq!(e.path, "entities[0].name");
        assert!(e.problem.contains("empty"));
        let e = relations(&json!({"relations":[{"from":"a","to":"","relationType":"r"}]})).unwrap_err();
        assert_eq!(e.path, "relations[0].to");
    }

    #[test]
    fn parses_valid_arguments() {
        let r = relations(&json!({"relations":[{"from":"a","to":"b","relationType":"r","extra":1}]})).unwrap();
        assert_eq!(r, vec![Relation { from: "a".into(), to: "b".into(), relation_type: "r".into() }]);
    }
}
