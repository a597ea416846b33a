//! What every tool's argument parsing shares: a cursor into the JSON arguments that
//! turns them into typed values, or into an error naming the offending field in the
//! official server's words (`expected array, received string at entities`), so a model
//! that learned from that server corrects itself the same way. Each tool's own fields
//! are read in its file.

use serde_json::Value;

use crate::store::model::Relation;

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
pub(super) struct Field<'a> {
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
    pub(super) fn root(value: &'a Value) -> Self {
        Field { value: Some(value), parent: None, key: Key::Root }
    }

    pub(super) fn get(&'a self, key: &'a str) -> Field<'a> {
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

    pub(super) fn string(&self) -> Result<String> {
        match self.value {
            Some(Value::String(s)) => Ok(s.clone()),
            _ => Err(self.mismatch("string")),
        }
    }

    /// An entity name: a string that is not empty.
    pub(super) fn name(&self) -> Result<String> {
        let s = self.string()?;
        if s.is_empty() {
            return Err(self.fail("Invalid input: entity name must not be empty".into()));
        }
        Ok(s)
    }

    pub(super) fn array<T>(&self, mut item: impl FnMut(&Field<'_>) -> Result<T>) -> Result<Vec<T>> {
        let Some(Value::Array(items)) = self.value else {
            return Err(self.mismatch("array"));
        };
        items
            .iter()
            .enumerate()
            .map(|(i, v)| item(&Field { value: Some(v), parent: Some(self), key: Key::Index(i) }))
            .collect()
    }

    pub(super) fn object(&self) -> Result<&Self> {
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

/// An array of strings.
pub(super) fn strings(f: &Field<'_>) -> Result<Vec<String>> {
    f.array(|s| s.string())
}

/// One relation, as `create_relations` and `delete_relations` both take it; its ends
/// must be non-empty names.
pub(super) fn relation(f: &Field<'_>) -> Result<Relation> {
    let f = f.object()?;
    Ok(Relation {
        from: f.get("from").name()?,
        to: f.get("to").name()?,
        relation_type: f.get("relationType").string()?,
    })
}
