//! The two messages every call carries, read without building a JSON tree: a session's
//! request on its way to the child, and the child's answer on its way back. Each is
//! checked whole by serde_json, only its few fields the host needs are looked at, and it
//! is passed on as the same text with its id (and progress token) replaced. Parsing the
//! two into `Value` trees and printing them again was a third of the host's work per
//! call. Anything out of the ordinary (no id, a batch, duplicate keys where the host
//! looks, a line break in the text, a field of an unexpected type) is left to the
//! `Value` path, which handles every message.

use std::borrow::Cow;
use std::ops::Range;

use serde::{Deserialize, Deserializer};
use serde_json::Value;
use serde_json::value::RawValue;

/// A field that is present, whatever its value (`null` included), unlike `Option`,
/// which serde maps `null` to `None` for: `"id": null` is still an id.
#[derive(Default)]
struct Present<'a>(Option<&'a RawValue>);

impl<'de: 'a, 'a> Deserialize<'de> for Present<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <&'a RawValue>::deserialize(d).map(|raw| Present(Some(raw)))
    }
}

/// The top level of a message: what tells a request from the rest, and its params.
/// serde refuses a duplicate of any of these, so each is the message's only one.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(default, borrow)]
    id: Present<'a>,
    #[serde(default, borrow)]
    method: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    params: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Params<'a> {
    #[serde(rename = "_meta", default, borrow)]
    meta: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Meta<'a> {
    #[serde(rename = "progressToken", default, borrow)]
    progress_token: Present<'a>,
    // mcp_wire::META_PROTOCOL_VERSION (serde wants the literal).
    #[serde(rename = "io.modelcontextprotocol/protocolVersion", default, borrow)]
    protocol_version: Present<'a>,
}

/// A request (a method and an id) read from its text.
pub struct Request<'a> {
    text: &'a str,
    pub method: Cow<'a, str>,
    id: &'a RawValue,
    /// `params._meta.progressToken`, when present.
    token: Option<&'a RawValue>,
    /// Whether `params._meta` names a protocol version (a stateless request).
    pub stateless: bool,
}

impl<'a> Request<'a> {
    /// `body` as a request, when it is one this path may take: a JSON object on one line
    /// with a string `method` and an `id`, whose `params` and `params._meta` (when they
    /// are objects) hold no duplicate of the keys read here.
    pub fn parse(body: &'a [u8]) -> Option<Request<'a>> {
        let text = std::str::from_utf8(body).ok()?;
        // The child reads lines: a body with a line break must be printed again on one.
        if !is_one_line(text) || !starts_object(text) {
            return None;
        }
        let head: Head<'a> = serde_json::from_str(text).ok()?;
        let (Present(Some(id)), Some(method)) = (head.id, head.method) else { return None };
        // As `Value::get` sees them: `_meta` only inside an object `params`, its keys
        // only inside an object `_meta`.
        let meta = match head.params.filter(|p| starts_object(p.get())) {
            Some(params) => serde_json::from_str::<Params<'a>>(params.get()).ok()?.meta,
            None => None,
        };
        let (token, stateless) = match meta.filter(|m| starts_object(m.get())) {
            Some(meta) => {
                let meta: Meta<'a> = serde_json::from_str(meta.get()).ok()?;
                (meta.progress_token.0, meta.protocol_version.0.is_some())
            }
            None => (None, false),
        };
        Some(Request { text, method, id, token, stateless })
    }

    /// The session's id for this request.
    pub fn id(&self) -> Value {
        to_value(self.id)
    }

    /// The session's progress token, when it asked for progress.
    pub fn progress_token(&self) -> Option<Value> {
        self.token.map(to_value)
    }

    /// The text for the child: `id` as the child's id and, when the request carries a
    /// progress token, `token` in its place.
    pub fn rewrite(&self, id: u64, token: Option<&str>) -> String {
        let mut edits = vec![(span(self.text, self.id.get()), id.to_string())];
        if let (Some(raw), Some(token)) = (self.token, token) {
            edits.push((span(self.text, raw.get()), Value::String(token.to_owned()).to_string()));
        }
        splice(self.text, edits)
    }
}

/// A line of the child's that answers one of its requests: the child's id (a number,
/// as the host's ids always are) and where it stands in the line.
pub fn answer(line: &str) -> Option<(u64, Range<usize>)> {
    if !is_one_line(line) || !starts_object(line) {
        return None;
    }
    let head: Head<'_> = serde_json::from_str(line).ok()?;
    let (Present(Some(id)), None) = (head.id, head.method) else { return None };
    let child_id = id.get().parse::<u64>().ok()?;
    Some((child_id, span(line, id.get())))
}

/// `line` with the value at `id` replaced by `value` (a JSON value's text).
pub fn replace(line: &str, id: Range<usize>, value: &Value) -> String {
    splice(line, vec![(id, value.to_string())])
}

/// No line break anywhere: the text can be written as one line to the child, and as
/// one `data:` line of an event stream.
fn is_one_line(text: &str) -> bool {
    !text.bytes().any(|b| b == b'\n' || b == b'\r')
}

fn starts_object(text: &str) -> bool {
    text.trim_start().starts_with('{')
}

fn to_value(raw: &RawValue) -> Value {
    // Checked JSON already, so this cannot fail; `Null` keeps it total anyway.
    serde_json::from_str(raw.get()).unwrap_or(Value::Null)
}

/// Where `inner` (a slice of `outer`, as a borrowed `RawValue` is) lies in `outer`.
fn span(outer: &str, inner: &str) -> Range<usize> {
    let start = (inner.as_ptr() as usize).saturating_sub(outer.as_ptr() as usize);
    debug_assert!(start + inner.len() <= outer.len(), "not a slice of the message");
    start..start + inner.len()
}

/// `text` with each range replaced by its new text (ranges do not overlap).
fn splice(text: &str, mut edits: Vec<(Range<usize>, String)>) -> String {
    edits.sort_by_key(|(range, _)| range.start);
    let added: usize = edits.iter().map(|(_, new)| new.len()).sum();
    // One more byte for the line break the child's writer adds.
    let mut out = String::with_capacity(text.len() + added + 1);
    let mut at = 0;
    for (range, new) in edits {
        out.push_str(&text[at..range.start]);
        out.push_str(&new);
        at = range.end;
    }
    out.push_str(&text[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rewritten(body: &str, id: u64, token: Option<&str>) -> Value {
        let request = Request::parse(body.as_bytes()).expect("a request");
        serde_json::from_str(&request.rewrite(id, token)).expect("JSON")
    }

    #[test]
    fn a_request_gets_the_childs_id_and_token_and_keeps_the_rest() {
        let body = r#"{"jsonrpc":"2.0","id":"a\"b","method":"tools/call","params":{"name":"echo","arguments":{"id":1},"_meta":{"progressToken":7,"x":"\u00e9"}}}"#;
        let request = Request::parse(body.as_bytes()).unwrap();
        assert_eq!(request.method, "tools/call");
        assert_eq!(request.id(), json!("a\"b"));
        assert_eq!(request.progress_token(), Some(json!(7)));
        assert!(!request.stateless);
        let mut expected: Value = serde_json::from_str(body).unwrap();
        expected["id"] = json!(12);
        expected["params"]["_meta"]["progressToken"] = json!("mcp-host-progress-12");
        assert_eq!(rewritten(body, 12, Some("mcp-host-progress-12")), expected);
        // Key order is kept.
        assert!(request.rewrite(12, None).starts_with(r#"{"jsonrpc":"2.0","id":12,"method""#));
    }

    #[test]
    fn only_plain_requests_take_this_path() {
        for body in [
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
            r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#,
            r#"{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":5}"#,
            "{\"jsonrpc\":\"2.0\",\n\"id\":1,\"method\":\"ping\"}",
            r#"{"jsonrpc":"2.0","id":1,"method":"x","params":{"_meta":{"progressToken":1,"progressToken":2}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"x"} trailing"#,
            "{\"id\":1,\"method\":\"x\",\"s\":\"\u{0}\"}",
        ] {
            assert!(Request::parse(body.as_bytes()).is_none(), "{body}");
        }
        assert!(Request::parse(b"{\"id\":1,\"method\":\"x\",\"s\":\"\xff\"}").is_none(), "not UTF-8");
        // `id: null` is an id; positional params and a `_meta` that is no object have no token.
        let r = Request::parse(br#"{"id":null,"method":"x","params":[{"_meta":{"progressToken":1}}]}"#).unwrap();
        assert_eq!(r.id(), Value::Null);
        assert_eq!(r.progress_token(), None);
        let r = Request::parse(br#"{"id":1,"method":"x","params":{"_meta":[1]}}"#).unwrap();
        assert_eq!(r.progress_token(), None);
        let r = Request::parse(br#"{"id":1,"method":"x","params":{"_meta":{"progressToken":null}}}"#).unwrap();
        assert_eq!(r.progress_token(), Some(Value::Null));
        let r = Request::parse(
            br#"{"id":1,"method":"x","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#,
        )
        .unwrap();
        assert!(r.stateless);
    }

    #[test]
    fn an_answer_is_found_by_its_numeric_id_and_given_the_sessions() {
        let line = r#"{"result":{"content":[{"type":"text","text":"id: 3"}]},"jsonrpc":"2.0","id":3}"#;
        let (child_id, at) = answer(line).unwrap();
        assert_eq!(child_id, 3);
        let back: Value = serde_json::from_str(&replace(line, at, &json!("s-1"))).unwrap();
        let mut expected: Value = serde_json::from_str(line).unwrap();
        expected["id"] = json!("s-1");
        assert_eq!(back, expected);
        for line in [
            r#"{"jsonrpc":"2.0","id":3,"method":"roots/list"}"#,
            r#"{"jsonrpc":"2.0","id":"3","result":{}}"#,
            r#"{"jsonrpc":"2.0","id":3.0,"result":{}}"#,
            r#"{"jsonrpc":"2.0","id":-3,"result":{}}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/progress"}"#,
            "{\"jsonrpc\":\"2.0\",\r\"id\":3,\"result\":{}}",
        ] {
            assert!(answer(line).is_none(), "{line}");
        }
    }
}
