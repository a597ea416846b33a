//! The bookkeeping that lets many sessions share one child as if each had its own: which
//! session waits for which of the child's answers (ids rewritten so sessions never
//! collide), whose progress token is whose, which session a server request went to, who
//! is subscribed to which URI, and each session's log level. Pure state under one lock;
//! `child.rs` writes what it returns to the child and `http.rs` to the sessions.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

/// A session's id (`Mcp-Session-Id`).
pub type SessionId = Arc<str>;

/// Where messages for a session go: the stream of one of its requests, or its GET stream.
pub type Sink = mpsc::UnboundedSender<Outgoing>;

/// A message for a session.
#[derive(Debug, PartialEq)]
pub enum Outgoing {
    Message(Value),
    /// The answer to the request whose sink it is sent to, as the text the child wrote
    /// with the session's id put back (`wire`: never parsed into a tree).
    Answer(String),
}

impl From<Value> for Outgoing {
    fn from(message: Value) -> Outgoing {
        Outgoing::Message(message)
    }
}

/// Who waits for an answer of the child.
enum Waiter {
    /// A session's request, under the session's own id; its progress token, rewritten.
    Session { session: SessionId, id: Value, sink: Sink, token: Option<String>, seq: u64 },
    /// The host's own request (the handshake, re-subscribing, setting the log level).
    Host(oneshot::Sender<Value>),
}

/// A session attached to the child.
struct Member {
    /// The capabilities its `initialize` declared (which server requests it can answer).
    capabilities: Value,
    level: Option<Level>,
    /// Higher is more recent.
    active: u64,
    /// Its GET stream, while open.
    stream: Option<Sink>,
}

/// A server request handed to a session, under an id the host chose.
struct Forwarded {
    session: SessionId,
    /// The child's own id for it.
    child_id: Value,
}

/// What routing one of the child's messages produced.
#[derive(Default)]
pub struct Routed {
    /// Messages for sessions.
    pub deliver: Vec<(Sink, Value)>,
    /// An answer the host gives the child itself (a server request nobody can answer).
    pub to_child: Option<Value>,
}

/// What a session leaving leaves to do.
#[derive(Default)]
pub struct Left {
    /// URIs nobody is subscribed to any more: unsubscribe the child.
    pub unsubscribe: Vec<String>,
    /// Answers for server requests the session will never answer now.
    pub to_child: Vec<Value>,
    /// The child's new log level, when it changed.
    pub level: Option<Level>,
}

/// MCP log levels, least severe first (RFC 5424's order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Debug,
    Info,
    Notice,
    Warning,
    Error,
    Critical,
    Alert,
    Emergency,
}

impl Level {
    pub fn parse(s: &str) -> Option<Level> {
        Some(match s {
            "debug" => Level::Debug,
            "info" => Level::Info,
            "notice" => Level::Notice,
            "warning" => Level::Warning,
            "error" => Level::Error,
            "critical" => Level::Critical,
            "alert" => Level::Alert,
            "emergency" => Level::Emergency,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Notice => "notice",
            Level::Warning => "warning",
            Level::Error => "error",
            Level::Critical => "critical",
            Level::Alert => "alert",
            Level::Emergency => "emergency",
        }
    }
}

/// Prefix of the ids the host gives server requests it hands to sessions.
const FORWARDED_PREFIX: &str = "mcp-host-";
/// Prefix of rewritten progress tokens.
const TOKEN_PREFIX: &str = "mcp-host-progress-";

pub struct Mux {
    /// The child's name, for messages.
    name: String,
    seq: u64,
    /// By the id the child sees (always a number we chose).
    pending: HashMap<u64, Waiter>,
    /// Rewritten progress token → its session and the session's own token.
    tokens: HashMap<String, (SessionId, Value)>,
    /// By the id the session sees.
    forwarded: HashMap<String, Forwarded>,
    subscriptions: BTreeMap<String, BTreeSet<SessionId>>,
    members: HashMap<SessionId, Member>,
    /// The level last set on the child.
    child_level: Option<Level>,
    /// `roots/list` answer when no session can be asked (the project, in project mode).
    fallback_roots: Option<Value>,
}

impl Mux {
    pub fn new(name: &str, fallback_roots: Option<Value>) -> Mux {
        Mux {
            name: name.to_owned(),
            seq: 0,
            pending: HashMap::new(),
            tokens: HashMap::new(),
            forwarded: HashMap::new(),
            subscriptions: BTreeMap::new(),
            members: HashMap::new(),
            child_level: None,
            fallback_roots,
        }
    }

    fn next(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    pub fn join(&mut self, session: SessionId, capabilities: Value) {
        let active = self.next();
        self.members.insert(session, Member { capabilities, level: None, active, stream: None });
    }

    pub fn members(&self) -> usize {
        self.members.len()
    }

    pub fn touch(&mut self, session: &SessionId) {
        let active = self.next();
        if let Some(m) = self.members.get_mut(session) {
            m.active = active;
        }
    }

    /// Gives the session's GET stream (replacing an earlier one).
    pub fn set_stream(&mut self, session: &SessionId, sink: Sink) {
        if let Some(m) = self.members.get_mut(session) {
            m.stream = Some(sink);
        }
    }

    pub fn has_stream(&self, session: &SessionId) -> bool {
        self.members.get(session).and_then(|m| m.stream.as_ref()).is_some_and(|s| !s.is_closed())
    }

    /// A session's request, rewritten for the child: a fresh numeric id and, when it
    /// asks for progress, a fresh token. The child's answer will go to `sink`.
    pub fn request(&mut self, session: &SessionId, mut message: Value, sink: Sink) -> Value {
        let id = message.get("id").cloned().unwrap_or(Value::Null);
        // `get`, not `pointer` (which allocates for its path): every request passes here.
        let original = message.get("params").and_then(|p| p.get("_meta")).and_then(|m| m.get("progressToken")).cloned();
        let (seq, token) = self.register(session, id, original, sink);
        if let Some(token) = token
            && let Some(meta) = message.pointer_mut("/params/_meta").and_then(Value::as_object_mut)
        {
            meta.insert("progressToken".into(), Value::String(token));
        }
        message["id"] = json!(seq);
        message
    }

    /// Notes a session's request (its own `id` and progress token) as waiting for the
    /// child; returns the child's id for it and, when it asked for progress, the token
    /// the child gets instead. The child's answer will go to `sink`.
    pub fn register(
        &mut self,
        session: &SessionId,
        id: Value,
        progress_token: Option<Value>,
        sink: Sink,
    ) -> (u64, Option<String>) {
        let seq = self.next();
        if let Some(m) = self.members.get_mut(session) {
            m.active = seq;
        }
        let token = progress_token.map(|original| {
            let rewritten = format!("{TOKEN_PREFIX}{seq}");
            self.tokens.insert(rewritten.clone(), (session.clone(), original));
            rewritten
        });
        self.pending.insert(seq, Waiter::Session { session: session.clone(), id, sink, token: token.clone(), seq });
        (seq, token)
    }

    /// The child's answer to `child_id`, read by `wire::answer` (`id` is where its id
    /// stands in `line`), when a session's request waits for it: the session's sink and
    /// the line with the session's own id. `None` leaves the line to [`Mux::route`]
    /// (the host's own requests, ids nobody waits for).
    pub fn answer_line(&mut self, child_id: u64, line: &str, id: std::ops::Range<usize>) -> Option<(Sink, String)> {
        if !matches!(self.pending.get(&child_id), Some(Waiter::Session { .. })) {
            return None;
        }
        let Some(Waiter::Session { id: theirs, sink, token, .. }) = self.pending.remove(&child_id) else { return None };
        if let Some(t) = token {
            self.tokens.remove(&t);
        }
        Some((sink, crate::wire::replace(line, id, &theirs)))
    }

    /// A request of the host's own; its answer comes on the receiver.
    pub fn host_request(&mut self, method: &str, params: Value) -> (Value, oneshot::Receiver<Value>) {
        let seq = self.next();
        let (tx, rx) = oneshot::channel();
        self.pending.insert(seq, Waiter::Host(tx));
        (json!({"jsonrpc": "2.0", "id": seq, "method": method, "params": params}), rx)
    }

    /// Forgets a session's request that nobody waits for any more (its stream closed).
    pub fn abandon(&mut self, session: &SessionId, id: &Value) -> Option<u64> {
        let child_id = self.pending.iter().find_map(|(k, w)| match w {
            Waiter::Session { session: s, id: i, .. } if s == session && i == id => Some(*k),
            _ => None,
        })?;
        if let Some(Waiter::Session { token: Some(t), .. }) = self.pending.remove(&child_id) {
            self.tokens.remove(&t);
        }
        Some(child_id)
    }

    /// A session's `notifications/cancelled`, rewritten to the child's id (None when the
    /// request is not the child's any more).
    pub fn cancel(&mut self, session: &SessionId, mut notification: Value) -> Option<Value> {
        let id = notification.pointer("/params/requestId")?.clone();
        let child_id = self.abandon(session, &id)?;
        notification["params"]["requestId"] = json!(child_id);
        Some(notification)
    }

    /// A session's answer to a server request, rewritten to the child's id.
    pub fn answer(&mut self, session: &SessionId, mut message: Value) -> Option<Value> {
        let key = id_key(message.get("id")?);
        match self.forwarded.get(&key) {
            Some(f) if &f.session == session => {}
            _ => return None,
        }
        let f = self.forwarded.remove(&key)?;
        message["id"] = f.child_id;
        Some(message)
    }

    /// Records a subscription; true when it is the URI's first (the child must be asked).
    pub fn subscribe(&mut self, session: &SessionId, uri: &str) -> bool {
        let subscribers = self.subscriptions.entry(uri.to_owned()).or_default();
        let first = subscribers.is_empty();
        subscribers.insert(session.clone());
        first
    }

    /// Drops a subscription; true when it was the URI's last (the child is told).
    pub fn unsubscribe(&mut self, session: &SessionId, uri: &str) -> bool {
        let Some(subscribers) = self.subscriptions.get_mut(uri) else { return false };
        if !subscribers.remove(session) {
            return false;
        }
        if subscribers.is_empty() {
            self.subscriptions.remove(uri);
            return true;
        }
        false
    }

    /// Every URI someone is subscribed to (re-subscribed after a restart).
    pub fn subscribed(&self) -> Vec<String> {
        self.subscriptions.keys().cloned().collect()
    }

    /// A session's `logging/setLevel`; the child's new level when it must change (the
    /// most verbose any session asked for, so each gets at least what it wants).
    pub fn set_level(&mut self, session: &SessionId, level: Level) -> Option<Level> {
        if let Some(m) = self.members.get_mut(session) {
            m.level = Some(level);
        }
        self.relevel()
    }

    fn relevel(&mut self) -> Option<Level> {
        let wanted = self.members.values().filter_map(|m| m.level).min();
        if wanted.is_some() && wanted != self.child_level {
            self.child_level = wanted;
            return wanted;
        }
        None
    }

    /// The level to set again after a restart.
    pub fn child_level(&self) -> Option<Level> {
        self.child_level
    }

    /// A session ends: its subscriptions, tokens and waiting requests go; server requests
    /// it holds are answered with an error.
    pub fn leave(&mut self, session: &SessionId) -> Left {
        let mut left = Left::default();
        if self.members.remove(session).is_none() {
            return left;
        }
        let uris: Vec<String> = self.subscriptions.keys().cloned().collect();
        for uri in uris {
            if self.unsubscribe(session, &uri) {
                left.unsubscribe.push(uri);
            }
        }
        self.pending.retain(|_, w| !matches!(w, Waiter::Session { session: s, .. } if s == session));
        self.tokens.retain(|_, (s, _)| s != session);
        let held: Vec<String> =
            self.forwarded.iter().filter(|(_, f)| &f.session == session).map(|(k, _)| k.clone()).collect();
        for key in held {
            if let Some(f) = self.forwarded.remove(&key) {
                left.to_child.push(error_answer(f.child_id, -32603, "the session this request went to has ended"));
            }
        }
        // Its level no longer counts; the child stays as verbose as it is until another
        // session asks otherwise (lowering it would need a level nobody asked for).
        left.level = self.relevel();
        left
    }

    /// Routes one message of the child.
    pub fn route(&mut self, message: Value) -> Routed {
        let method = message.get("method").and_then(Value::as_str).map(str::to_owned);
        match (method, message.get("id").cloned()) {
            (None, Some(id)) => self.route_answer(id, message),
            (Some(method), Some(id)) => self.route_server_request(&method, id, message),
            (Some(method), None) => self.route_notification(&method, message),
            (None, None) => Routed::default(),
        }
    }

    fn route_answer(&mut self, id: Value, mut message: Value) -> Routed {
        let mut routed = Routed::default();
        let Some(waiter) = id.as_u64().and_then(|k| self.pending.remove(&k)) else { return routed };
        match waiter {
            Waiter::Host(tx) => {
                let _ = tx.send(message);
            }
            Waiter::Session { id, sink, token, .. } => {
                if let Some(t) = token {
                    self.tokens.remove(&t);
                }
                message["id"] = id;
                routed.deliver.push((sink, message));
            }
        }
        routed
    }

    fn route_server_request(&mut self, method: &str, child_id: Value, mut message: Value) -> Routed {
        let mut routed = Routed::default();
        let needs = match method {
            "sampling/createMessage" => Some("sampling"),
            "elicitation/create" => Some("elicitation"),
            "roots/list" => Some("roots"),
            _ => None,
        };
        // An elicitation in URL mode needs a session that declared that mode; form mode
        // (the default) one that declared form, or elicitation without modes (2025-06-18).
        let url_mode = method == "elicitation/create" && message.pointer("/params/mode") == Some(&json!("url"));
        let able = |m: &Member| {
            let Some(cap) = needs else { return true };
            let Some(c) = m.capabilities.get(cap).filter(|c| !c.is_null()) else { return false };
            if cap != "elicitation" {
                return true;
            }
            let declares = |mode: &str| c.get(mode).is_some_and(|v| !v.is_null());
            if url_mode { declares("url") } else { declares("form") || !declares("url") }
        };
        // The session whose request is in flight (the latest, when several are), else
        // the most recently active session that can answer and has a stream open.
        let in_flight = self
            .pending
            .values()
            .filter_map(|w| match w {
                Waiter::Session { session, sink, seq, .. } if !sink.is_closed() => Some((*seq, session, sink)),
                _ => None,
            })
            .filter(|(_, s, _)| self.members.get(*s).is_some_and(&able))
            .max_by_key(|(seq, _, _)| *seq)
            .map(|(_, s, sink)| (s.clone(), sink.clone()));
        let target = in_flight.or_else(|| {
            self.members
                .iter()
                .filter(|(_, m)| able(m))
                .filter_map(|(s, m)| m.stream.as_ref().filter(|k| !k.is_closed()).map(|k| (m.active, s, k)))
                .max_by_key(|(active, _, _)| *active)
                .map(|(_, s, k)| (s.clone(), k.clone()))
        });
        match target {
            Some((session, sink)) => {
                let key = format!("{FORWARDED_PREFIX}{}", self.next());
                message["id"] = Value::String(key.clone());
                self.forwarded.insert(key, Forwarded { session, child_id });
                routed.deliver.push((sink, message));
            }
            None if method == "roots/list" && self.fallback_roots.is_some() => {
                let roots = self.fallback_roots.clone().unwrap_or(Value::Null);
                routed.to_child = Some(json!({"jsonrpc": "2.0", "id": child_id, "result": {"roots": roots}}));
            }
            None => {
                let text = format!(
                    "mcp-host: no session attached to `{}` can answer {method} (none declared the capability \
                     or has a stream open)",
                    self.name
                );
                routed.to_child = Some(error_answer(child_id, -32601, &text));
            }
        }
        routed
    }

    fn route_notification(&mut self, method: &str, mut message: Value) -> Routed {
        let mut routed = Routed::default();
        match method {
            "notifications/progress" => {
                let Some(token) = message.pointer("/params/progressToken").map(id_key) else { return routed };
                let Some((session, original)) = self.tokens.get(&token).cloned() else { return routed };
                message["params"]["progressToken"] = original;
                // On the stream of the request that asked for it, while it runs.
                let sink = self
                    .pending
                    .values()
                    .find_map(|w| match w {
                        Waiter::Session { token: Some(t), sink, .. } if *t == token => Some(sink.clone()),
                        _ => None,
                    })
                    .or_else(|| self.stream_of(&session));
                routed.deliver.extend(sink.map(|s| (s, message)));
            }
            "notifications/cancelled" => {
                // The child gives up a server request it sent to a session.
                let Some(child_id) = message.pointer("/params/requestId").cloned() else { return routed };
                let Some(key) = self.forwarded.iter().find(|(_, f)| f.child_id == child_id).map(|(k, _)| k.clone())
                else {
                    return routed;
                };
                if let Some(f) = self.forwarded.remove(&key) {
                    message["params"]["requestId"] = Value::String(key);
                    routed.deliver.extend(self.stream_of(&f.session).map(|s| (s, message)));
                }
            }
            "notifications/resources/updated" => {
                let uri = message.pointer("/params/uri").and_then(Value::as_str).unwrap_or_default();
                let subscribers: Vec<SessionId> =
                    self.subscriptions.get(uri).map(|s| s.iter().cloned().collect()).unwrap_or_default();
                for s in subscribers {
                    routed.deliver.extend(self.stream_of(&s).map(|k| (k, message.clone())));
                }
            }
            "notifications/message" => {
                let level = message.pointer("/params/level").and_then(Value::as_str).and_then(Level::parse);
                for m in self.members.values() {
                    let wanted = match (m.level, level) {
                        (Some(min), Some(l)) => l >= min,
                        _ => true,
                    };
                    if wanted && let Some(k) = m.stream.as_ref().filter(|k| !k.is_closed()) {
                        routed.deliver.push((k.clone(), message.clone()));
                    }
                }
            }
            // list_changed and anything else: every session.
            _ => {
                for m in self.members.values() {
                    if let Some(k) = m.stream.as_ref().filter(|k| !k.is_closed()) {
                        routed.deliver.push((k.clone(), message.clone()));
                    }
                }
            }
        }
        routed
    }

    fn stream_of(&self, session: &SessionId) -> Option<Sink> {
        self.members.get(session)?.stream.clone().filter(|k| !k.is_closed())
    }

    /// The child is gone: every waiting session request gets an error saying `why`; the
    /// host's own requests (the handshake) get `cause`, which their caller words itself.
    pub fn fail_all(&mut self, why: &str, cause: &str) -> Vec<(Sink, Value)> {
        let mut out = Vec::new();
        for (_, waiter) in self.pending.drain() {
            match waiter {
                Waiter::Session { id, sink, .. } => out.push((sink, error_answer(id, -32603, why))),
                Waiter::Host(tx) => {
                    let _ = tx.send(error_answer(Value::Null, -32603, cause));
                }
            }
        }
        self.tokens.clear();
        // Server requests of the dead child can no longer be answered; the sessions'
        // late answers are dropped.
        self.forwarded.clear();
        out
    }

    /// Requests waiting for the child (for `/status`).
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }
}

/// A JSON-RPC error answer.
pub fn error_answer(id: Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

/// An id or token as a map key (`1` and `"1"` stay distinct).
fn id_key(id: &Value) -> String {
    match id {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(name: &str) -> SessionId {
        Arc::from(name)
    }

    fn sink() -> (Sink, mpsc::UnboundedReceiver<Outgoing>) {
        mpsc::unbounded_channel()
    }

    /// The next message a receiver holds (a parsed one: raw answers come from `answer_line`).
    fn received(rx: &mut mpsc::UnboundedReceiver<Outgoing>) -> Option<Value> {
        match rx.try_recv().ok()? {
            Outgoing::Message(m) => Some(m),
            Outgoing::Answer(text) => panic!("a raw answer: {text}"),
        }
    }

    #[test]
    fn ids_are_rewritten_so_sessions_never_collide() {
        let mut mux = Mux::new("x", None);
        let (a, b) = (session("a"), session("b"));
        mux.join(a.clone(), json!({}));
        mux.join(b.clone(), json!({}));
        let (ka, mut ra) = sink();
        let (kb, mut rb) = sink();
        let to_child_a = mux.request(&a, json!({"jsonrpc":"2.0","id":1,"method":"tools/call"}), ka);
        let to_child_b = mux.request(&b, json!({"jsonrpc":"2.0","id":1,"method":"tools/call"}), kb);
        assert_ne!(to_child_a["id"], to_child_b["id"]);
        // Answered out of order, each reaches its own session under its own id.
        let r = mux.route(json!({"jsonrpc":"2.0","id":to_child_b["id"],"result":{"b":true}}));
        for (k, v) in r.deliver {
            k.send(v.into()).unwrap();
        }
        let r = mux.route(json!({"jsonrpc":"2.0","id":to_child_a["id"],"result":{"a":true}}));
        for (k, v) in r.deliver {
            k.send(v.into()).unwrap();
        }
        assert_eq!(received(&mut ra).unwrap(), json!({"jsonrpc":"2.0","id":1,"result":{"a":true}}));
        assert_eq!(received(&mut rb).unwrap(), json!({"jsonrpc":"2.0","id":1,"result":{"b":true}}));
    }

    #[test]
    fn a_raw_answer_goes_back_under_the_sessions_id_and_the_hosts_own_are_left_to_route() {
        let mut mux = Mux::new("x", None);
        let a = session("a");
        mux.join(a.clone(), json!({}));
        let (ka, _ra) = sink();
        let (seq, token) = mux.register(&a, json!("q"), Some(json!(5)), ka.clone());
        let token = token.unwrap();
        assert_eq!(mux.tokens.get(&token).map(|(s, t)| (s.clone(), t.clone())), Some((a.clone(), json!(5))));
        let line = format!(r#"{{"jsonrpc":"2.0","id":{seq},"result":{{}}}}"#);
        let (child_id, at) = crate::wire::answer(&line).unwrap();
        let (k, text) = mux.answer_line(child_id, &line, at).unwrap();
        assert!(k.same_channel(&ka));
        assert_eq!(text, r#"{"jsonrpc":"2.0","id":"q","result":{}}"#);
        assert!(mux.tokens.is_empty() && mux.in_flight() == 0);
        // Answered once only; a host request's answer is routed the parsed way.
        assert!(mux.answer_line(child_id, &line, 23..24).is_none());
        let (message, mut rx) = mux.host_request("ping", json!({}));
        let id = message["id"].as_u64().unwrap();
        let line = format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{{}}}}"#);
        let (child_id, at) = crate::wire::answer(&line).unwrap();
        assert!(mux.answer_line(child_id, &line, at).is_none());
        let _ = mux.route(serde_json::from_str(&line).unwrap());
        assert_eq!(rx.try_recv().unwrap()["id"], json!(id));
    }

    #[test]
    fn progress_reaches_only_the_tokens_owner() {
        let mut mux = Mux::new("x", None);
        let (a, b) = (session("a"), session("b"));
        mux.join(a.clone(), json!({}));
        mux.join(b.clone(), json!({}));
        let (ka, _ra) = sink();
        let (kb, _rb) = sink();
        let sent_a = mux.request(&a, json!({"id":7,"method":"tools/call","params":{"_meta":{"progressToken":5}}}), ka);
        let _ = mux.request(&b, json!({"id":7,"method":"tools/call","params":{"_meta":{"progressToken":5}}}), kb);
        let token = sent_a.pointer("/params/_meta/progressToken").unwrap().clone();
        assert_ne!(token, json!(5));
        let r = mux.route(json!({"method":"notifications/progress","params":{"progressToken":token,"progress":1}}));
        assert_eq!(r.deliver.len(), 1);
        assert_eq!(r.deliver[0].1["params"]["progressToken"], json!(5));
        assert!(r.deliver[0].0.same_channel(&mux.pending_sink_of(&a).unwrap()));
    }

    #[test]
    fn a_server_request_goes_to_the_session_in_flight_and_its_answer_back_under_the_childs_id() {
        let mut mux = Mux::new("x", None);
        let (a, b) = (session("a"), session("b"));
        mux.join(a.clone(), json!({"sampling": {}}));
        mux.join(b.clone(), json!({"sampling": {}}));
        let (ka, mut ra) = sink();
        let _ = mux.request(&a, json!({"id":1,"method":"tools/call"}), ka);
        let r = mux.route(json!({"id":"c1","method":"sampling/createMessage","params":{}}));
        assert!(r.to_child.is_none());
        for (k, v) in r.deliver {
            k.send(v.into()).unwrap();
        }
        let forwarded = received(&mut ra).unwrap();
        let host_id = forwarded["id"].clone();
        assert!(host_id.as_str().unwrap().starts_with(FORWARDED_PREFIX));
        // Another session cannot answer it; the owner can.
        assert!(mux.answer(&b, json!({"id":host_id,"result":{}})).is_none());
        let back = mux.answer(&a, json!({"id":host_id,"result":{"content":1}})).unwrap();
        assert_eq!(back["id"], json!("c1"));
    }

    #[test]
    fn a_server_request_nobody_can_answer_gets_an_error_or_the_project_root() {
        let mut mux = Mux::new("x", None);
        mux.join(session("a"), json!({}));
        let r = mux.route(json!({"id":3,"method":"sampling/createMessage"}));
        let answer = r.to_child.unwrap();
        assert_eq!(answer["id"], json!(3));
        assert!(answer["error"]["message"].as_str().unwrap().contains("sampling/createMessage"));

        let mut mux = Mux::new("x", Some(json!([{"uri":"file:///p","name":"p"}])));
        let r = mux.route(json!({"id":4,"method":"roots/list"}));
        assert_eq!(r.to_child.unwrap()["result"]["roots"][0]["uri"], json!("file:///p"));
    }

    #[test]
    fn an_elicitation_goes_to_a_session_that_declared_its_mode() {
        let mut mux = Mux::new("x", None);
        let (form, url) = (session("form"), session("url"));
        mux.join(form.clone(), json!({"elicitation": {}}));
        mux.join(url.clone(), json!({"elicitation": {"url": {}}}));
        let (kf, mut rf) = sink();
        let (ku, mut ru) = sink();
        mux.set_stream(&form, kf);
        mux.set_stream(&url, ku);
        for (id, mode) in [(1, json!("url")), (2, json!("form")), (3, Value::Null)] {
            let r = mux.route(json!({"id":id,"method":"elicitation/create","params":{"mode":mode,"message":"m"}}));
            assert!(r.to_child.is_none());
            for (k, v) in r.deliver {
                k.send(v.into()).unwrap();
            }
        }
        assert_eq!(received(&mut ru).unwrap()["params"]["mode"], json!("url"));
        assert!(received(&mut ru).is_none(), "a session declaring only url mode gets no form");
        assert_eq!(received(&mut rf).unwrap()["params"]["mode"], json!("form"));
        assert_eq!(received(&mut rf).unwrap()["params"]["mode"], Value::Null);

        let mut mux = Mux::new("x", None);
        mux.join(form.clone(), json!({"elicitation": {}}));
        let r = mux.route(json!({"id":4,"method":"elicitation/create","params":{"mode":"url","message":"m"}}));
        assert_eq!(r.to_child.unwrap()["error"]["code"], json!(-32601), "nobody can open a URL");
    }

    #[test]
    fn subscriptions_are_counted_per_uri_and_dropped_with_the_session() {
        let mut mux = Mux::new("x", None);
        let (a, b) = (session("a"), session("b"));
        mux.join(a.clone(), json!({}));
        mux.join(b.clone(), json!({}));
        assert!(mux.subscribe(&a, "u"));
        assert!(!mux.subscribe(&b, "u"));
        let (ka, mut ra) = sink();
        mux.set_stream(&a, ka);
        let r = mux.route(json!({"method":"notifications/resources/updated","params":{"uri":"u"}}));
        assert_eq!(r.deliver.len(), 1, "b has no stream open");
        for (k, v) in r.deliver {
            k.send(v.into()).unwrap();
        }
        assert_eq!(received(&mut ra).unwrap()["params"]["uri"], json!("u"));
        assert!(!mux.unsubscribe(&a, "u"));
        assert_eq!(mux.leave(&b).unsubscribe, ["u"]);
        assert!(mux.subscribed().is_empty());
    }

    #[test]
    fn log_levels_are_honoured_per_session() {
        let mut mux = Mux::new("x", None);
        let (a, b) = (session("a"), session("b"));
        mux.join(a.clone(), json!({}));
        mux.join(b.clone(), json!({}));
        let (ka, mut ra) = sink();
        let (kb, mut rb) = sink();
        mux.set_stream(&a, ka);
        mux.set_stream(&b, kb);
        assert_eq!(mux.set_level(&a, Level::Error), Some(Level::Error));
        assert_eq!(mux.set_level(&b, Level::Debug), Some(Level::Debug));
        let r = mux.route(json!({"method":"notifications/message","params":{"level":"info","data":"x"}}));
        for (k, v) in r.deliver {
            k.send(v.into()).unwrap();
        }
        assert!(received(&mut ra).is_none());
        assert!(received(&mut rb).is_some());
    }

    #[test]
    fn a_dead_child_fails_every_waiting_request() {
        let mut mux = Mux::new("x", None);
        let a = session("a");
        mux.join(a.clone(), json!({}));
        let (ka, _ra) = sink();
        let _ = mux.request(&a, json!({"id":"q","method":"tools/call"}), ka);
        let failed = mux.fail_all("server `x` exited", "it exited");
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].1["id"], json!("q"));
        assert_eq!(mux.in_flight(), 0);
    }

    impl Mux {
        fn pending_sink_of(&self, session: &SessionId) -> Option<Sink> {
            self.pending.values().find_map(|w| match w {
                Waiter::Session { session: s, sink, .. } if s == session => Some(sink.clone()),
                _ => None,
            })
        }
    }
}
