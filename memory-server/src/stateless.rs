//! The stateless protocol revision 2026-07-28 (SPEC 2.9), transport-agnostic: which
//! requests belong to it, the version and header rules, `server/discover`, result
//! decoration (`resultType`, server identity, `ttlMs`/`cacheScope`) and
//! `subscriptions/listen`. The transports (`transport::http`, `transport::stdio`) only
//! frame what this module decides.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use mcp_wire::{
    BASE64_PREFIX, BASE64_SUFFIX, GRAPH_RESOURCE_URI, LISTEN, META_CLIENT_CAPABILITIES, META_PROTOCOL_VERSION,
    META_SERVER_INFO, META_SUBSCRIPTION_ID,
};
use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use crate::dispatch::{McpServer, server_info};
use crate::protocol::{
    ALL_VERSIONS, Answer, RawJson, RequestId, RpcError, STATELESS_VERSION, code, meta_version, notification, response,
};
use crate::streams::StreamPermit;

/// The methods of 2026-07-28 we serve. `ping`, `logging/setLevel`, `initialize` and
/// `resources/(un)subscribe` do not exist in this revision.
pub const METHODS: &[&str] = &[
    "server/discover",
    "tools/list",
    "tools/call",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    LISTEN,
];

/// How long static lists may be cached (the tool catalog and resource list never change
/// while a daemon runs).
const STATIC_TTL_MS: u64 = 3_600_000;

/// Whether a message belongs to the stateless revision: its params carry
/// `_meta["io.modelcontextprotocol/protocolVersion"]`.
pub fn is_stateless(params: Option<&Value>) -> bool {
    meta_version(params).is_some()
}

/// The body's `_meta` must carry the version (2026-07-28, anything else gets
/// `UnsupportedProtocolVersion`) and the client capabilities (an object); a missing or
/// malformed field is invalid params.
pub fn check_version(params: Option<&Value>) -> Result<(), RpcError> {
    let missing = |what: &str| {
        RpcError::invalid_params(format!("Invalid params: params._meta[\"{what}\"] is required in {STATELESS_VERSION}"))
    };
    match meta_version(params) {
        Some(Ok(STATELESS_VERSION)) => {}
        Some(Ok(other)) => return Err(RpcError::unsupported_version(other)),
        Some(Err(())) | None => return Err(missing(META_PROTOCOL_VERSION)),
    }
    match params.and_then(|p| p.get("_meta")).and_then(|m| m.get(META_CLIENT_CAPABILITIES)) {
        Some(Value::Object(_)) => Ok(()),
        _ => Err(missing(META_CLIENT_CAPABILITIES)),
    }
}

/// The body value `Mcp-Name` must mirror, for the methods that require the header:
/// `Some(value)` (`None` inside when the body lacks it), or `None` when not required.
pub fn name_source<'a>(method: &str, params: Option<&'a Value>) -> Option<Option<&'a str>> {
    let field = match method {
        "tools/call" | "prompts/get" => "name",
        "resources/read" => "uri",
        _ => return None,
    };
    Some(params.and_then(|p| p.get(field)).and_then(Value::as_str))
}

/// Decodes an `Mcp-Name` / `Mcp-Param-*` value: `=?base64?…?=` is Base64 of UTF-8, in
/// the standard alphabet with its padding (the revision's examples); anything else
/// inside the markers is refused, not guessed at.
pub fn decode_header_value(raw: &str) -> Result<String, RpcError> {
    if let Some(inner) = raw.strip_prefix(BASE64_PREFIX).and_then(|r| r.strip_suffix(BASE64_SUFFIX)) {
        let bytes = BASE64
            .decode(inner)
            .map_err(|_| RpcError::header_mismatch(format!("header value {raw:?} is not valid Base64")))?;
        String::from_utf8(bytes)
            .map_err(|_| RpcError::header_mismatch(format!("header value {raw:?} does not decode to UTF-8")))
    } else {
        Ok(raw.to_owned())
    }
}

/// The `server/discover` result (before decoration); `placement` says where the
/// project's memory is kept when that is not the project itself.
pub fn discover(placement: Option<String>) -> Value {
    let mut instructions = "A knowledge graph memory shared across sessions: entities, relations and observations, \
                            stored per project (Mcp-Project-Path)."
        .to_owned();
    if let Some(note) = placement {
        instructions.push(' ');
        instructions.push_str(&note);
    }
    json!({
        "supportedVersions": ALL_VERSIONS,
        "capabilities": {
            "tools": { "listChanged": false },
            "resources": { "subscribe": true, "listChanged": false },
        },
        "instructions": instructions,
    })
}

/// Adds what every 2026-07-28 result carries: `resultType`, the server identity in
/// `_meta`, and for cacheable results `ttlMs`/`cacheScope`.
pub fn decorate(method: &str, result: Answer) -> Answer {
    match result {
        Answer::Value(v) => Answer::Value(decorate_value(method, v)),
        Answer::Raw(raw) => Answer::Raw(decorate_raw(method, raw)),
        whole @ Answer::Response { .. } => whole,
    }
}

/// The members `decorate` adds, `_meta` holding only the server identity.
fn added_members(method: &str) -> Map<String, Value> {
    let mut added = Map::new();
    added.insert("resultType".into(), "complete".into());
    added.insert("_meta".into(), json!({ META_SERVER_INFO: server_info() }));
    let cache = match method {
        "server/discover" | "tools/list" | "resources/list" | "resources/templates/list" => {
            Some((STATIC_TTL_MS, "public"))
        }
        // The graph changes with every write: never fresh, and the project's own data.
        "resources/read" => Some((0, "private")),
        _ => None,
    };
    if let Some((ttl, scope)) = cache {
        added.insert("ttlMs".into(), ttl.into());
        added.insert("cacheScope".into(), scope.into());
    }
    added
}

fn decorate_value(method: &str, mut result: Value) -> Value {
    let Value::Object(obj) = &mut result else { return result };
    for (key, value) in added_members(method) {
        match (obj.get_mut(&key), value) {
            (Some(Value::Object(meta)), Value::Object(ours)) => meta.extend(ours),
            (_, value) => {
                obj.insert(key, value);
            }
        }
    }
    result
}

/// A raw result is a tool or resource result we wrote ourselves, an object without any
/// of the added members: they go in front of its own, without parsing it.
fn decorate_raw(method: &str, raw: RawJson) -> RawJson {
    let Some(rest) = raw.as_bytes().strip_prefix(b"{") else { return raw };
    let added = Value::Object(added_members(method)).to_string();
    let mut out = Vec::with_capacity(added.len() + rest.len() + 1);
    out.extend_from_slice(&added.as_bytes()[..added.len() - 1]); // `{...` without its closing brace
    if !rest.trim_ascii_start().starts_with(b"}") {
        out.push(b',');
    }
    out.extend_from_slice(rest);
    RawJson::trusted(out)
}

/// Errors whose code changed in this revision: resource not found is `-32602`.
fn remap(mut e: RpcError) -> RpcError {
    if e.code == code::RESOURCE_NOT_FOUND {
        e.code = code::INVALID_PARAMS;
    }
    e
}

impl McpServer {
    /// Serves one 2026-07-28 request other than `subscriptions/listen` (its version
    /// already checked). Unknown methods are `-32601`.
    pub async fn handle_stateless(&self, method: &str, params: Option<Value>) -> Result<Answer, RpcError> {
        let result = match method {
            "server/discover" => discover(self.placement_note()).into(),
            "tools/list" | "tools/call" | "resources/list" | "resources/templates/list" | "resources/read" => {
                self.handle(None, method, params).await.map_err(remap)?
            }
            _ => return Err(RpcError::method_not_found(method)),
        };
        Ok(decorate(method, result))
    }

    /// Opens a `subscriptions/listen` subscription for the request's project; it holds
    /// `permit`, its place among the open event streams, until it is dropped.
    pub async fn listen(
        &self,
        id: &RequestId,
        params: Option<&Value>,
        permit: StreamPermit,
    ) -> Result<Listener, RpcError> {
        let filter = params.and_then(|p| p.get("notifications"));
        let wanted = match filter.and_then(|f| f.get("resourceSubscriptions")) {
            None | Some(Value::Null) => false,
            Some(Value::Array(uris)) => uris.iter().any(|u| u.as_str() == Some(GRAPH_RESOURCE_URI)),
            Some(_) => {
                return Err(RpcError::invalid_params(
                    "params.notifications.resourceSubscriptions must be an array of URIs",
                ));
            }
        };
        let mut agreed = Map::new();
        let changes = if wanted {
            agreed.insert("resourceSubscriptions".into(), json!([GRAPH_RESOURCE_URI]));
            let memory = self.memory().await?;
            let rx = memory.changes();
            memory.watch_outside_writes();
            Some(rx)
        } else {
            None
        };
        let ack = notification(
            "notifications/subscriptions/acknowledged",
            json!({ "_meta": { META_SUBSCRIPTION_ID: id }, "notifications": agreed }),
        );
        Ok(Listener { id: id.clone(), ack: Some(ack), changes, _permit: permit })
    }
}

/// One open `subscriptions/listen` subscription. Dropping it ends the subscription.
pub struct Listener {
    id: RequestId,
    ack: Option<Value>,
    changes: Option<broadcast::Receiver<()>>,
    _permit: StreamPermit,
}

impl Listener {
    pub fn id(&self) -> &RequestId {
        &self.id
    }

    /// The next message of the subscription: the acknowledgement first, then one
    /// `notifications/resources/updated` per change (coalesced when lagging). Pends
    /// forever when nothing was opted in to.
    pub async fn next(&mut self) -> Value {
        if let Some(ack) = self.ack.take() {
            return ack;
        }
        let Some(rx) = self.changes.as_mut() else { return std::future::pending().await };
        if let Err(broadcast::error::RecvError::Closed) = rx.recv().await {
            return std::future::pending().await;
        }
        notification(
            "notifications/resources/updated",
            json!({ "_meta": { META_SUBSCRIPTION_ID: &self.id }, "uri": GRAPH_RESOURCE_URI }),
        )
    }

    /// The graceful end of the subscription (server shutdown).
    pub fn closing_response(&self) -> Value {
        response(&self.id, json!({ "resultType": "complete", "_meta": { META_SUBSCRIPTION_ID: &self.id } }))
            .into_value()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_sentinel() {
        assert_eq!(decode_header_value("=?base64?SGVsbG8sIOS4lueVjA==?=").unwrap(), "Hello, 世界");
        assert_eq!(decode_header_value("=?base64?PT9iYXNlNjQ/bGl0ZXJhbD89?=").unwrap(), "=?base64?literal?=");
        assert_eq!(decode_header_value("=?base64??=").unwrap(), "");
        assert_eq!(decode_header_value("plain").unwrap(), "plain");
    }

    #[test]
    fn base64_values_must_be_standard_and_padded() {
        let refused = [
            "=?base64?!!?=",
            "=?base64?SGVs bG8=?=",
            "=?base64?/w==?=", // 0xFF: not UTF-8
            // Accepted by the lenient decoder this crate had before the `base64` crate:
            "=?base64?SGVsbG8?=", // no padding
            "=?base64?SGk==?=",   // too much padding
            "=?base64?SGl=?=",    // bits set after the last byte
            "=?base64?Pz8-?=",    // URL-safe alphabet
            "=?base64?Pz8_?=",    // URL-safe alphabet
        ];
        for raw in refused {
            assert_eq!(decode_header_value(raw).unwrap_err().code, code::HEADER_MISMATCH, "{raw}");
        }
    }

    #[test]
    fn versions() {
        let ok = json!({"_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                                  "io.modelcontextprotocol/clientCapabilities": {}}});
        assert!(check_version(Some(&ok)).is_ok());
        let old = json!({"_meta": {"io.modelcontextprotocol/protocolVersion": "1900-01-01"}});
        let e = check_version(Some(&old)).unwrap_err();
        assert_eq!(e.code, code::UNSUPPORTED_PROTOCOL_VERSION);
        assert_eq!(e.data.unwrap()["supported"][0], "2026-07-28");
        let no_caps = json!({"_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}});
        assert_eq!(check_version(Some(&no_caps)).unwrap_err().code, code::INVALID_PARAMS);
    }

    #[test]
    fn decoration() {
        let r = decorate("tools/list", json!({"tools": []}).into()).into_value();
        assert_eq!(r["resultType"], "complete");
        assert_eq!(r["cacheScope"], "public");
        assert_eq!(r["_meta"][META_SERVER_INFO]["name"], "memory-server");
        let r = decorate("tools/call", json!({"content": [], "_meta": {"x": 1}}).into()).into_value();
        assert!(r.get("ttlMs").is_none());
        assert_eq!(r["_meta"]["x"], 1, "a result's own _meta is kept");
        assert_eq!(r["_meta"][META_SERVER_INFO]["name"], "memory-server");
    }

    #[test]
    fn raw_results_are_decorated_like_values() {
        for (method, text) in
            [("tools/call", r#"{"content":[],"structuredContent":{"a":1}}"#), ("resources/read", "{}")]
        {
            let raw = RawJson::trusted(text.to_owned());
            let from_raw = decorate(method, Answer::Raw(raw)).into_value();
            let from_value = decorate(method, serde_json::from_str::<Value>(text).unwrap().into()).into_value();
            assert_eq!(from_raw, from_value, "{method}");
        }
    }
}
