//! JSON-RPC 2.0 framing and the MCP protocol-version table.
//! Everything here is transport-agnostic: a message is parsed once at the edge into
//! [`Message`], and every failure is an [`RpcError`] that the transports map to bytes.

use std::fmt;

use bytes::Bytes;

use serde_json::{Map, Value, json};

/// Session-based protocol revisions we speak, oldest first.
pub const SESSION_VERSIONS: &[&str] = &["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];
/// The answer to an `initialize` asking for a version we do not speak.
pub const LATEST_VERSION: &str = "2025-11-25";
/// The stateless revision (no handshake, no sessions; SPEC 2.9), served per request.
pub const STATELESS_VERSION: &str = "2026-07-28";
/// Every version we speak, newest first (`server/discover`, `UnsupportedProtocolVersion` data).
pub const ALL_VERSIONS: &[&str] = &["2026-07-28", "2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];
/// `_meta` key carrying a stateless request's protocol version.
pub const META_PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";

/// JSON-RPC and MCP error codes.
pub mod code {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    pub const INVALID_PARAMS: i64 = -32602;
    pub const INTERNAL_ERROR: i64 = -32603;
    /// MCP: resource not found.
    pub const RESOURCE_NOT_FOUND: i64 = -32002;
    /// 2026-07-28: HTTP headers missing or not matching the body.
    pub const HEADER_MISMATCH: i64 = -32020;
    /// 2026-07-28: the request's protocol version is not one we serve.
    pub const UNSUPPORTED_PROTOCOL_VERSION: i64 = -32022;
}

/// Returns the canonical `'static` spelling of a supported session-based version.
pub fn supported_version(v: &str) -> Option<&'static str> {
    SESSION_VERSIONS.iter().copied().find(|s| *s == v)
}

/// Batches were allowed by 2025-03-26 only; later revisions removed them. Older
/// clients (2024-11-05) technically could batch too, so only the revisions that
/// explicitly dropped batching refuse them.
pub fn version_allows_batch(v: &str) -> bool {
    v <= "2025-03-26"
}

/// The version a request names in `params._meta["io.modelcontextprotocol/protocolVersion"]`,
/// which marks it as a request of the stateless revision: `None` when absent,
/// `Some(Err(()))` when present but not a string.
pub fn meta_version(params: Option<&Value>) -> Option<Result<&str, ()>> {
    let v = params?.get("_meta")?.get(META_PROTOCOL_VERSION)?;
    Some(v.as_str().ok_or(()))
}

/// A JSON-RPC request id: a string or a number (MCP forbids null).
pub type RequestId = Value;

/// An error to be sent back as a JSON-RPC error object.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    pub data: Option<Value>,
}

impl RpcError {
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), data: None }
    }
    pub fn parse(message: impl Into<String>) -> Self {
        Self::new(code::PARSE_ERROR, message)
    }
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(code::INVALID_REQUEST, message)
    }
    pub fn method_not_found(method: &str) -> Self {
        Self::new(code::METHOD_NOT_FOUND, format!("Method not found: {method}"))
    }
    pub fn invalid_params(message: impl Into<String>) -> Self {
        Self::new(code::INVALID_PARAMS, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(code::INTERNAL_ERROR, message)
    }

    pub fn header_mismatch(message: impl Into<String>) -> Self {
        Self::new(code::HEADER_MISMATCH, format!("Header mismatch: {}", message.into()))
    }
    pub fn unsupported_version(requested: &str) -> Self {
        Self {
            code: code::UNSUPPORTED_PROTOCOL_VERSION,
            message: format!("Unsupported protocol version: {requested} (supported: {})", ALL_VERSIONS.join(", ")),
            data: Some(json!({ "supported": ALL_VERSIONS, "requested": requested })),
        }
    }

    pub fn to_value(&self) -> Value {
        let mut err = Map::new();
        err.insert("code".into(), self.code.into());
        err.insert("message".into(), self.message.clone().into());
        if let Some(data) = &self.data {
            err.insert("data".into(), data.clone());
        }
        Value::Object(err)
    }
}

/// One parsed JSON-RPC message from a client.
#[derive(Debug, Clone)]
pub enum Message {
    Request {
        id: RequestId,
        method: String,
        params: Option<Value>,
    },
    Notification {
        method: String,
        params: Option<Value>,
    },
    /// A client's answer to a server request. We never send server requests, so
    /// these are acknowledged and dropped.
    Response {
        id: RequestId,
    },
}

impl Message {
    /// Validates the JSON-RPC envelope. The error keeps the id when one could be read,
    /// so the client can match it.
    pub fn from_value(value: Value) -> Result<Message, (Option<RequestId>, RpcError)> {
        let Value::Object(mut obj) = value else {
            return Err((None, RpcError::invalid_request("Invalid request: a JSON-RPC message must be a JSON object")));
        };
        let id = match obj.remove("id") {
            None => None,
            Some(id @ (Value::String(_) | Value::Number(_))) => Some(id),
            Some(Value::Null) => {
                return Err((None, RpcError::invalid_request("Invalid request: \"id\" must not be null")));
            }
            Some(_) => {
                return Err((None, RpcError::invalid_request("Invalid request: \"id\" must be a string or a number")));
            }
        };
        let fail = |msg: &str| Err((id.clone(), RpcError::invalid_request(format!("Invalid request: {msg}"))));
        match obj.get("jsonrpc") {
            Some(Value::String(v)) if v == "2.0" => {}
            Some(_) => return fail("\"jsonrpc\" must be \"2.0\""),
            None => return fail("missing \"jsonrpc\": \"2.0\""),
        }
        let params = obj.remove("params");
        if let Some(p) = &params
            && !(p.is_object() || p.is_array())
        {
            return fail("\"params\" must be an object or an array");
        }
        match obj.remove("method") {
            Some(Value::String(method)) => Ok(match id {
                Some(id) => Message::Request { id, method, params },
                None => Message::Notification { method, params },
            }),
            Some(_) => fail("\"method\" must be a string"),
            None => match id {
                Some(id) if obj.contains_key("result") || obj.contains_key("error") => Ok(Message::Response { id }),
                _ => fail("missing \"method\""),
            },
        }
    }
}

/// A result or message on its way out: a JSON value, or JSON text written once already.
/// Tool results are written straight from the typed graph into [`RawJson`] on the
/// blocking thread that read it, so a large answer never exists as a `Value` tree and
/// is copied only into the response body.
#[derive(Debug, Clone)]
pub enum Answer {
    Value(Value),
    Raw(RawJson),
    /// A success response around a raw result, written out when the body is.
    Response {
        id: RequestId,
        result: RawJson,
    },
}

/// JSON text (UTF-8) that is valid because this crate wrote it with serde_json: never
/// parsed back, since re-validating a 7 MB answer would cost as much as writing it.
/// Cloning shares the bytes (a cached graph answer is sent to many clients uncopied).
#[derive(Debug, Clone)]
pub struct RawJson(Bytes);

impl RawJson {
    /// `json` must be one complete JSON value in UTF-8; only our own encoders call this.
    pub(crate) fn trusted(json: impl Into<Bytes>) -> RawJson {
        RawJson(json.into())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn to_bytes(&self) -> Bytes {
        self.0.clone()
    }
}

impl From<Value> for Answer {
    fn from(v: Value) -> Self {
        Answer::Value(v)
    }
}

impl Answer {
    /// The answer as a value tree (for callers that inspect or edit it).
    pub fn into_value(self) -> Value {
        match self {
            Answer::Value(v) => v,
            other => serde_json::from_slice(&other.to_vec()).unwrap_or(Value::Null),
        }
    }

    /// The bytes of a raw answer (others are written out).
    pub fn into_raw_bytes(self) -> Bytes {
        match self {
            Answer::Raw(r) => r.0,
            other => Bytes::from(other.to_vec()),
        }
    }

    /// The answer as JSON bytes (an HTTP body, an SSE event's data, a stdio line).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len_hint());
        self.write_to(&mut out);
        out
    }

    /// Several answers as one JSON array (a batch reply).
    pub fn batch_to_vec(answers: &[Answer]) -> Vec<u8> {
        let mut out = Vec::with_capacity(answers.iter().map(|a| a.len_hint() + 1).sum::<usize>() + 2);
        out.push(b'[');
        for (i, answer) in answers.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            answer.write_to(&mut out);
        }
        out.push(b']');
        out
    }

    fn len_hint(&self) -> usize {
        match self {
            Answer::Value(_) => 128,
            Answer::Raw(r) => r.0.len(),
            Answer::Response { result, .. } => result.0.len() + 64,
        }
    }

    /// The head of a success response up to its result: `{"jsonrpc":"2.0","id":ID,"result":`.
    pub fn response_head(id: &RequestId) -> Vec<u8> {
        let mut out = br#"{"jsonrpc":"2.0","id":"#.to_vec();
        // Writing a Value into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, id);
        out.extend_from_slice(br#","result":"#);
        out
    }

    fn write_to(&self, out: &mut Vec<u8>) {
        // Writing a Value into a Vec cannot fail.
        match self {
            Answer::Value(v) => {
                let _ = serde_json::to_writer(&mut *out, v);
            }
            Answer::Raw(r) => out.extend_from_slice(&r.0),
            Answer::Response { id, result } => {
                out.extend_from_slice(&Self::response_head(id));
                out.extend_from_slice(&result.0);
                out.push(b'}');
            }
        }
    }
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.to_vec()))
    }
}

pub fn response(id: &RequestId, result: impl Into<Answer>) -> Answer {
    match result.into() {
        Answer::Value(result) => Answer::Value(json!({ "jsonrpc": "2.0", "id": id, "result": result })),
        Answer::Raw(result) => Answer::Response { id: id.clone(), result },
        // A response is never a result; keep it whole rather than nest it.
        whole @ Answer::Response { .. } => whole,
    }
}

pub fn error_response(id: Option<&RequestId>, err: &RpcError) -> Value {
    json!({ "jsonrpc": "2.0", "id": id.cloned().unwrap_or(Value::Null), "error": err.to_value() })
}

pub fn notification(method: &str, params: Value) -> Value {
    json!({ "jsonrpc": "2.0", "method": method, "params": params })
}

/// Parses raw bytes into a JSON value, naming the problem on failure.
pub fn parse_json(bytes: &[u8]) -> Result<Value, RpcError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| RpcError::parse(format!("Parse error: body is not valid UTF-8 ({e})")))?;
    serde_json::from_str(text).map_err(|e| RpcError::parse(format!("Parse error: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_messages() {
        let m = Message::from_value(json!({"jsonrpc":"2.0","id":1,"method":"ping"})).unwrap();
        assert!(matches!(m, Message::Request { .. }));
        let m = Message::from_value(json!({"jsonrpc":"2.0","method":"notifications/initialized"})).unwrap();
        assert!(matches!(m, Message::Notification { .. }));
        let m = Message::from_value(json!({"jsonrpc":"2.0","id":"a","result":{}})).unwrap();
        assert!(matches!(m, Message::Response { .. }));
    }

    #[test]
    fn rejects_bad_envelopes_with_a_reason() {
        let (id, e) = Message::from_value(json!({"id":1,"method":"ping"})).unwrap_err();
        assert_eq!(id, Some(json!(1)));
        assert_eq!(e.code, code::INVALID_REQUEST);
        assert!(e.message.contains("jsonrpc"));
        let (_, e) = Message::from_value(json!({"jsonrpc":"2.0","id":1})).unwrap_err();
        assert!(e.message.contains("method"));
        let (_, e) = Message::from_value(json!([1])).unwrap_err();
        assert!(e.message.contains("object"));
        let (_, e) = Message::from_value(json!({"jsonrpc":"2.0","id":1,"method":"x","params":3})).unwrap_err();
        assert!(e.message.contains("params"));
    }

    #[test]
    fn parse_errors_name_the_problem() {
        assert!(parse_json(b"{").unwrap_err().message.starts_with("Parse error"));
        assert!(parse_json(&[0xff, 0xfe]).unwrap_err().message.contains("UTF-8"));
    }

    #[test]
    fn batch_rule() {
        assert!(version_allows_batch("2025-03-26"));
        assert!(version_allows_batch("2024-11-05"));
        assert!(!version_allows_batch("2025-06-18"));
    }
}
