//! JSON-RPC 2.0 framing and the MCP protocol-version table.
//! Everything here is transport-agnostic: a message is parsed once at the edge into
//! [`Message`], and every failure is an [`RpcError`] that the transports map to bytes.

use std::fmt;

use bytes::Bytes;
use mcp_wire::{META_PROTOCOL_VERSION, V2024_11_05, V2025_03_26, V2025_06_18, V2025_11_25, V2026_07_28};

use serde::de::{Deserializer as _, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

/// Session-based protocol revisions we speak, oldest first.
pub const SESSION_VERSIONS: &[&str] = &[V2024_11_05, V2025_03_26, V2025_06_18, V2025_11_25];
/// The answer to an `initialize` asking for a version we do not speak.
pub const LATEST_VERSION: &str = V2025_11_25;
/// The stateless revision (no handshake, no sessions; SPEC 2.9), served per request.
pub const STATELESS_VERSION: &str = V2026_07_28;
/// Every version we speak, newest first (`server/discover`, `UnsupportedProtocolVersion` data).
pub const ALL_VERSIONS: &[&str] = &[V2026_07_28, V2025_11_25, V2025_06_18, V2025_03_26, V2024_11_05];

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
    /// JSON-RPC's implementation-defined server error: a limit of the daemon is reached
    /// (`--max-streams`, `--max-connections`); the request may succeed later.
    pub const SERVER_BUSY: i64 = -32000;
}

/// Returns the canonical `'static` spelling of a supported session-based version.
pub fn supported_version(v: &str) -> Option<&'static str> {
    SESSION_VERSIONS.iter().copied().find(|s| *s == v)
}

/// Batches were allowed by 2025-03-26 only; later revisions removed them. Older
/// clients (2024-11-05) technically could batch too, so only the revisions that
/// explicitly dropped batching refuse them.
pub fn version_allows_batch(v: &str) -> bool {
    v <= V2025_03_26
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

    /// The answer's JSON after `prefix`, as buffers to write one after another: a large
    /// raw result is its shared buffer itself (a cached graph answer, the same for every
    /// reply of a batch, is never copied per reply), anything else one fresh buffer.
    pub fn into_chunks(self, prefix: &[u8]) -> Vec<Bytes> {
        match self {
            Answer::Response { id, result } if result.0.len() >= SHARED_RESULT_MIN => {
                let mut head = prefix.to_vec();
                head.extend_from_slice(&Self::response_head(&id));
                vec![Bytes::from(head), result.0, Bytes::from_static(b"}")]
            }
            other => {
                let mut out = Vec::with_capacity(prefix.len() + other.len_hint());
                out.extend_from_slice(prefix);
                other.write_to(&mut out);
                vec![Bytes::from(out)]
            }
        }
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

/// Results from this size on are written from where they lie rather than copied into
/// the reply's buffer; below it one buffer (one write) is cheaper.
pub const SHARED_RESULT_MIN: usize = 64 * 1024;

/// Parses raw bytes into a JSON value, naming the problem on failure.
pub fn parse_json(bytes: &[u8]) -> Result<Value, RpcError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| RpcError::parse(format!("Parse error: body is not valid UTF-8 ({e})")))?;
    serde_json::from_str(text).map_err(|e| RpcError::parse(format!("Parse error: {e}")))
}

/// serde_json refuses values nested this deep (its recursion limit is 128 levels), so a
/// batch message nested deeper could never be parsed when its turn comes.
const MAX_NESTING: usize = 128;

/// A POST body or a stdio line, parsed only as far as serving it needs: one message as a
/// value; a batch split into its messages' raw text, each parsed only when it runs, so a
/// large batch never exists as one value tree.
#[derive(Debug)]
pub enum Incoming {
    Single(Value),
    /// The raw JSON text of each message, sharing the body's buffer; never empty and
    /// never longer than the limit it was parsed with.
    Batch(Vec<Bytes>),
}

impl Incoming {
    /// Parses `body`; a batch (a JSON array) may hold at most `max_batch` messages. A
    /// larger or empty one is refused whole (`-32600`), as is one whose messages are
    /// nested too deeply to parse (`-32700`), so nothing of it runs.
    pub fn parse(body: Bytes, max_batch: usize) -> Result<Incoming, RpcError> {
        let first = body.iter().find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
        if first != Some(&b'[') {
            return parse_json(&body).map(Incoming::Single);
        }
        let text = std::str::from_utf8(&body)
            .map_err(|e| RpcError::parse(format!("Parse error: body is not valid UTF-8 ({e})")))?;
        let parse_error = |e: serde_json::Error| RpcError::parse(format!("Parse error: {e}"));
        let mut de = serde_json::Deserializer::from_str(text);
        let (kept, len) = de.deserialize_seq(BatchVisitor { max: max_batch }).map_err(parse_error)?;
        de.end().map_err(parse_error)?;
        if len == 0 {
            return Err(RpcError::invalid_request("Invalid request: empty batch"));
        }
        if len > max_batch {
            return Err(RpcError::invalid_request(format!(
                "Invalid request: a batch may hold at most {max_batch} messages (--max-batch); this one holds {len}"
            )));
        }
        if let Some(i) = kept.iter().position(|raw| nesting_exceeds(raw.get().as_bytes(), MAX_NESTING)) {
            return Err(RpcError::parse(format!(
                "Parse error: recursion limit exceeded: message {} of the batch is nested {MAX_NESTING} levels deep or more",
                i + 1
            )));
        }
        // `from_str` borrows every raw message from `text`, which is `body`'s buffer.
        Ok(Incoming::Batch(kept.into_iter().map(|raw| body.slice_ref(raw.get().as_bytes())).collect()))
    }
}

/// Counts a batch's messages, keeping the raw text of at most `max` of them: the
/// count names the size of an oversized batch without holding any more of it.
struct BatchVisitor {
    max: usize,
}

impl<'de> Visitor<'de> for BatchVisitor {
    type Value = (Vec<&'de RawValue>, usize);

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON-RPC batch (an array of messages)")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut kept = Vec::new();
        let mut len = 0usize;
        while let Some(raw) = seq.next_element::<&'de RawValue>()? {
            len += 1;
            if len <= self.max {
                kept.push(raw);
            }
        }
        Ok((kept, len))
    }
}

/// Whether valid JSON `json` nests arrays and objects `limit` levels deep or more. A
/// loop over the bytes, not a parse: cheap, and no recursion on untrusted depth.
fn nesting_exceeds(json: &[u8], limit: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in json {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth >= limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
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

    fn batch(body: &str, max: usize) -> Result<Vec<Bytes>, RpcError> {
        match Incoming::parse(Bytes::copy_from_slice(body.as_bytes()), max)? {
            Incoming::Batch(messages) => Ok(messages),
            Incoming::Single(v) => panic!("not a batch: {v}"),
        }
    }

    #[test]
    fn a_batch_is_split_into_raw_messages() {
        let messages = batch(r#" [ {"jsonrpc":"2.0","id":1,"method":"ping"} , 7, [] ] "#, 3).unwrap();
        let texts: Vec<&[u8]> = messages.iter().map(|m| &m[..]).collect();
        assert_eq!(texts, [&br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#[..], b"7", b"[]"]);
        assert!(matches!(Incoming::parse(Bytes::from_static(b" {\"a\":1}"), 3), Ok(Incoming::Single(_))));
    }

    #[test]
    fn oversized_and_empty_batches_are_refused_whole() {
        let e = batch(&format!("[{}1]", "1,".repeat(53_036)), 100).unwrap_err();
        assert_eq!(e.code, code::INVALID_REQUEST);
        assert_eq!(
            e.message,
            "Invalid request: a batch may hold at most 100 messages (--max-batch); this one holds 53037"
        );
        assert_eq!(batch(&format!("[{}1]", "1,".repeat(99)), 100).unwrap().len(), 100);
        assert_eq!(batch(" [ ] ", 100).unwrap_err().message, "Invalid request: empty batch");
        assert_eq!(batch("[1,2", 100).unwrap_err().code, code::PARSE_ERROR);
        assert_eq!(batch("[1] x", 100).unwrap_err().code, code::PARSE_ERROR);
    }

    #[test]
    fn nesting_beyond_serde_json_limit_is_a_parse_error_before_anything_runs() {
        for (open, close) in [("[", "]"), (r#"{"a":"#, "}")] {
            for depth in [MAX_NESTING - 1, MAX_NESTING] {
                let deep = format!("{}1{}", open.repeat(depth), close.repeat(depth));
                let serde_refuses = serde_json::from_str::<Value>(&deep).is_err();
                assert_eq!(nesting_exceeds(deep.as_bytes(), MAX_NESTING), serde_refuses, "{open} x {depth}");
                let result = batch(&format!(r#"[1,{deep}]"#), 100);
                assert_eq!(result.is_err(), serde_refuses, "{open} x {depth}");
            }
        }
        let e = batch(&format!("[1,{}{}]", "[".repeat(100_000), "]".repeat(100_000)), 100).unwrap_err();
        assert_eq!(e.code, code::PARSE_ERROR);
        assert!(e.message.contains("message 2 of the batch"), "{}", e.message);
        assert_eq!(Incoming::parse(Bytes::from("[".repeat(100_000)), 100).unwrap_err().code, code::PARSE_ERROR);
        // Brackets inside strings do not nest.
        assert!(!nesting_exceeds(format!(r#"["{}\"{}"]"#, "[".repeat(200), "{".repeat(200)).as_bytes(), 3));
    }

    #[test]
    fn large_results_are_chunked_without_copying() {
        let result = RawJson::trusted(vec![b'1'; SHARED_RESULT_MIN]);
        let answer = Answer::Response { id: json!(7), result: result.clone() };
        let chunks = answer.clone().into_chunks(b",");
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks[1].as_ptr(), result.as_bytes().as_ptr(), "the shared result itself");
        let joined: Vec<u8> = chunks.concat();
        assert_eq!(joined[1..], answer.to_vec()[..]);
        assert_eq!(Answer::Value(json!({"a":1})).into_chunks(b"[").concat(), br#"[{"a":1}"#);
    }

    #[test]
    fn batch_rule() {
        assert!(version_allows_batch("2025-03-26"));
        assert!(version_allows_batch("2024-11-05"));
        assert!(!version_allows_batch("2025-06-18"));
    }
}
