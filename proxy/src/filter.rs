//! Tool filters (`tools = { allow, deny }`, SPEC 3.2), applied where every relay meets the
//! client, so each transport (streamable HTTP, plain HTTP, hosted stdio, legacy SSE) and
//! each way an answer arrives (a JSON reply, an event in an SSE reply, the session's GET
//! stream, the legacy event stream) gets the same treatment:
//!
//! - a client's `tools/call` of a filtered tool is answered here, with a JSON-RPC error
//!   (-32602) naming the daemon and the pattern, and never reaches the daemon;
//! - the ids of the client's `tools/list` requests are remembered while they are
//!   forwarded, and only answers with one of those ids are parsed and have the filtered
//!   tools taken out.
//!
//! With no filter configured nothing here runs on the hot path beyond one `bool`; with a
//! filter, a line to the client is looked into only while a `tools/list` is in flight.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Value, json};

use crate::config::ToolFilter;

/// JSON-RPC "invalid params": the tool named is not one this session may call.
pub const FILTERED: i64 = -32602;

pub struct ToolGate {
    daemon: String,
    filter: ToolFilter,
    /// Whether a filter is configured at all.
    active: bool,
    /// The client's `tools/list` requests being forwarded: id (as JSON text, so `1` and
    /// `"1"` stay apart) → how many with that id.
    listing: Mutex<HashMap<String, usize>>,
    /// The sum of `listing`'s counts, read without the lock on every line to the client.
    in_flight: AtomicUsize,
}

/// A client message after the gate: what to forward, what to answer at once, and the
/// `tools/list` ids to [`ToolGate::release`] once the forward is done.
#[derive(Debug, Default, PartialEq)]
pub struct Admitted {
    pub forward: Option<Value>,
    /// Answers for refused calls: one message, or a batch's refusals as one array.
    pub refusal: Option<Value>,
    pub listing: Vec<String>,
}

/// The parts of a message to the client the gate needs, read without building the rest.
#[derive(Deserialize)]
struct Head {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    method: Option<IgnoredAny>,
}

impl ToolGate {
    pub fn new(daemon: &str, filter: ToolFilter) -> ToolGate {
        ToolGate {
            daemon: daemon.to_owned(),
            active: !filter.is_empty(),
            filter,
            listing: Mutex::new(HashMap::new()),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn listing(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.listing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Looks at one client message (or batch): refuses calls of filtered tools and
    /// remembers `tools/list` ids. Without a filter the message passes untouched.
    pub fn admit(&self, message: Value) -> Admitted {
        if !self.active {
            return Admitted { forward: Some(message), ..Admitted::default() };
        }
        let mut listing = Vec::new();
        match message {
            Value::Array(batch) => {
                let mut kept = Vec::with_capacity(batch.len());
                let mut refused = Vec::new();
                for m in batch {
                    match self.refuse(&m) {
                        Some(Some(answer)) => refused.push(answer),
                        Some(None) => {}
                        None => {
                            listing.extend(self.remember(&m));
                            kept.push(m);
                        }
                    }
                }
                Admitted {
                    forward: (!kept.is_empty()).then_some(Value::Array(kept)),
                    refusal: (!refused.is_empty()).then_some(Value::Array(refused)),
                    listing,
                }
            }
            m => match self.refuse(&m) {
                Some(refusal) => Admitted { forward: None, refusal, listing },
                None => {
                    listing.extend(self.remember(&m));
                    Admitted { forward: Some(m), refusal: None, listing }
                }
            },
        }
    }

    /// `Some` when `m` calls a filtered tool: the error answer for its id (`None` for a
    /// call sent as a notification, which gets no answer).
    fn refuse(&self, m: &Value) -> Option<Option<Value>> {
        if m.get("method").and_then(Value::as_str) != Some("tools/call") {
            return None;
        }
        let name = m.pointer("/params/name").and_then(Value::as_str)?;
        let reason = self.filter.check(name).err()?;
        crate::log(&self.daemon, &format!("tools/call refused: {reason}"));
        // Refused either way; only a request (with an id) gets an answer.
        let Some(id) = m.get("id").filter(|id| !id.is_null()) else { return Some(None) };
        let message = format!("mcp-proxy: daemon `{}`: {reason}", self.daemon);
        Some(Some(json!({"jsonrpc":"2.0","id":id,"error":{"code":FILTERED,"message":message}})))
    }

    /// Remembers the id of a `tools/list` request, returning its key.
    fn remember(&self, m: &Value) -> Option<String> {
        if m.get("method").and_then(Value::as_str) != Some("tools/list") {
            return None;
        }
        let key = m.get("id").filter(|id| !id.is_null())?.to_string();
        *self.listing().entry(key.clone()).or_insert(0) += 1;
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        Some(key)
    }

    /// Forgets `tools/list` ids whose forward has finished: their answer has been written
    /// (or never will be: the relays drop answers nothing waits for).
    pub fn release(&self, keys: &[String]) {
        if keys.is_empty() {
            return;
        }
        let mut listing = self.listing();
        for key in keys {
            if let Some(n) = listing.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    listing.remove(key);
                }
                self.in_flight.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    /// Whether lines to the client need looking into: a filter and a `tools/list` in flight.
    fn watching(&self) -> bool {
        self.active && self.in_flight.load(Ordering::SeqCst) > 0
    }

    /// A message to the client: itself, or a copy without the filtered tools when it
    /// answers a pending `tools/list`.
    pub fn outgoing<'a>(&self, value: &'a Value) -> Cow<'a, Value> {
        if !self.watching() {
            return Cow::Borrowed(value);
        }
        match value {
            Value::Array(batch) if batch.iter().any(|v| self.answers_listing(v)) => {
                let mut batch = batch.clone();
                for v in &mut batch {
                    if self.answers_listing(v) {
                        self.strip(v);
                    }
                }
                Cow::Owned(Value::Array(batch))
            }
            v if self.answers_listing(v) => {
                let mut v = v.clone();
                self.strip(&mut v);
                Cow::Owned(v)
            }
            _ => Cow::Borrowed(value),
        }
    }

    /// A line to the client that is one JSON message already (the relays' fast path):
    /// passed on as it is unless it answers a pending `tools/list`, which only its id and
    /// method tell; then parsed, filtered and printed again.
    pub fn outgoing_line(&self, line: String) -> String {
        if !self.watching() {
            return line;
        }
        let answers = if line.trim_start().starts_with('[') {
            serde_json::from_str::<Vec<Head>>(&line).is_ok_and(|heads| heads.iter().any(|h| self.head_answers(h)))
        } else {
            serde_json::from_str::<Head>(&line).is_ok_and(|h| self.head_answers(&h))
        };
        if !answers {
            return line;
        }
        match serde_json::from_str::<Value>(&line) {
            Ok(value) => match self.outgoing(&value) {
                Cow::Owned(filtered) => filtered.to_string(),
                Cow::Borrowed(_) => line,
            },
            Err(_) => line,
        }
    }

    fn head_answers(&self, head: &Head) -> bool {
        head.method.is_none() && head.id.as_ref().is_some_and(|id| self.listing().contains_key(&id.to_string()))
    }

    fn answers_listing(&self, v: &Value) -> bool {
        v.get("method").is_none()
            && v.get("id").filter(|id| !id.is_null()).is_some_and(|id| self.listing().contains_key(&id.to_string()))
    }

    /// Takes the filtered tools out of a `tools/list` answer (an error has none).
    fn strip(&self, answer: &mut Value) {
        if let Some(tools) = answer.pointer_mut("/result/tools").and_then(Value::as_array_mut) {
            // A tool without a name cannot be called, so no pattern is needed to hide it.
            tools.retain(|t| t.get("name").and_then(Value::as_str).is_none_or(|name| self.filter.allows(name)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(allow: &[&str], deny: &[&str]) -> ToolGate {
        let text = format!("[daemons.d]\nport = 1\ntools = {{ allow = {allow:?}, deny = {deny:?} }}\n");
        let env = crate::config::Env { exe_dir: None, home: None, var: Box::new(|_| None) };
        let config = crate::config::Config::parse(&text, "t.toml", &env).unwrap();
        ToolGate::new("d", config.daemons["d"].tools.clone())
    }

    fn list_answer(id: Value, names: &[&str]) -> Value {
        let tools: Vec<Value> = names.iter().map(|n| json!({"name": n, "inputSchema": {"type": "object"}})).collect();
        json!({"jsonrpc":"2.0","id":id,"result":{"tools":tools}})
    }

    fn names(answer: &Value) -> Vec<&str> {
        answer["result"]["tools"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect()
    }

    #[test]
    fn without_a_filter_nothing_is_looked_at() {
        let g = ToolGate::new("d", ToolFilter::default());
        let list = json!({"jsonrpc":"2.0","id":1,"method":"tools/list"});
        let admitted = g.admit(list.clone());
        assert_eq!(admitted, Admitted { forward: Some(list), refusal: None, listing: vec![] });
        let answer = list_answer(json!(1), &["a", "b"]);
        assert!(matches!(g.outgoing(&answer), Cow::Borrowed(_)));
        assert_eq!(g.outgoing_line("not even json".into()), "not even json");
    }

    #[test]
    fn a_call_of_a_filtered_tool_is_answered_with_the_pattern() {
        let g = gate(&[], &["delete_*"]);
        let call = json!({"jsonrpc":"2.0","id":"c1","method":"tools/call","params":{"name":"delete_entities"}});
        let admitted = g.admit(call);
        assert_eq!(admitted.forward, None);
        let refusal = admitted.refusal.unwrap();
        assert_eq!(refusal["id"], "c1");
        assert_eq!(refusal["error"]["code"], FILTERED);
        let message = refusal["error"]["message"].as_str().unwrap();
        assert!(message.contains("daemon `d`") && message.contains("\"delete_*\""), "{message}");
        // Allowed calls, and calls sent as notifications (no answer), are not answered here.
        let ok = json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"read_graph"}});
        assert_eq!(g.admit(ok.clone()).forward, Some(ok));
        let notification = json!({"jsonrpc":"2.0","method":"tools/call","params":{"name":"delete_entities"}});
        assert_eq!(g.admit(notification), Admitted::default());
    }

    #[test]
    fn only_answers_to_pending_lists_are_filtered() {
        let g = gate(&["read_*", "search_*"], &["search_nodes"]);
        let before = list_answer(json!(7), &["read_graph", "delete_entities"]);
        assert!(matches!(g.outgoing(&before), Cow::Borrowed(_)), "nothing pending yet");
        let admitted = g.admit(json!({"jsonrpc":"2.0","id":7,"method":"tools/list","params":{}}));
        assert_eq!(admitted.listing, vec!["7".to_owned()]);
        // The line form (the relay's fast path) and the value form agree.
        let answer = list_answer(json!(7), &["read_graph", "search_nodes", "delete_entities", "search_x"]);
        let line: Value = serde_json::from_str(&g.outgoing_line(answer.to_string())).unwrap();
        assert_eq!(names(&line), ["read_graph", "search_x"]);
        assert_eq!(names(&g.outgoing(&answer)), ["read_graph", "search_x"]);
        // Same id, but a server request, or another id: untouched.
        let request = json!({"jsonrpc":"2.0","id":7,"method":"roots/list"});
        assert!(matches!(g.outgoing(&request), Cow::Borrowed(_)));
        let other = list_answer(json!("7"), &["delete_entities"]).to_string();
        assert_eq!(g.outgoing_line(other.clone()), other);
        g.release(&admitted.listing);
        assert!(matches!(g.outgoing(&answer), Cow::Borrowed(_)), "released");
        assert_eq!(g.in_flight.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn batches_are_split_and_filtered_element_by_element() {
        let g = gate(&[], &["slow"]);
        let batch = json!([
            {"jsonrpc":"2.0","id":1,"method":"tools/list"},
            {"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"slow"}},
            {"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"fast"}}
        ]);
        let admitted = g.admit(batch);
        let forward = admitted.forward.unwrap();
        assert_eq!(forward.as_array().unwrap().iter().map(|m| m["id"].clone()).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(admitted.refusal.unwrap()[0]["id"], 2);
        let answers = json!([list_answer(json!(1), &["slow", "fast"]), {"jsonrpc":"2.0","id":3,"result":{}}]);
        let filtered: Value = serde_json::from_str(&g.outgoing_line(answers.to_string())).unwrap();
        assert_eq!(names(&filtered[0]), ["fast"]);
        assert_eq!(filtered[1], answers[1]);
        // A batch of refused calls only: nothing to forward.
        let admitted = g.admit(json!([{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"slow"}}]));
        assert_eq!(admitted.forward, None);
        g.release(&["1".to_owned()]);
        assert_eq!(g.in_flight.load(Ordering::SeqCst), 0);
    }
}
