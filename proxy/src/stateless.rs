//! The request-metadata rules of the stateless MCP revisions (2026-07-28 on, SPEC 2.9 and
//! 3.4): such a request carries its protocol version in
//! `params._meta["io.modelcontextprotocol/protocolVersion"]`, and on streamable HTTP the
//! `MCP-Protocol-Version`, `Mcp-Method` and `Mcp-Name` headers mirror the body. No
//! session id is ever sent with it.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use mcp_wire::{BASE64_PREFIX, BASE64_SUFFIX, META_PROTOCOL_VERSION, PARAM_HEADER_PREFIX};
use reqwest::header::{HeaderName, HeaderValue};
use serde_json::Value;

/// The first revision without `initialize` and sessions.
const FIRST_STATELESS_REVISION: &str = mcp_wire::V2026_07_28;

const VERSION_HEADER: HeaderName = HeaderName::from_static(mcp_wire::VERSION_HEADER);
const METHOD_HEADER: HeaderName = HeaderName::from_static(mcp_wire::METHOD_HEADER);
const NAME_HEADER: HeaderName = HeaderName::from_static(mcp_wire::NAME_HEADER);

/// The stateless revision a message was sent under, if any: the per-request protocol
/// version, when it names 2026-07-28 or a later revision (dates compare as strings).
pub fn revision(message: &Value) -> Option<&str> {
    // `get` rather than `pointer`: every message passes here, and `pointer` splits and
    // unescapes its path into new strings on each call.
    let version = message.get("params")?.get("_meta")?.get(META_PROTOCOL_VERSION)?.as_str()?;
    (is_date(version) && version >= FIRST_STATELESS_REVISION).then_some(version)
}

fn is_date(v: &str) -> bool {
    v.len() == 10 && v.bytes().enumerate().all(|(i, b)| if i == 4 || i == 7 { b == b'-' } else { b.is_ascii_digit() })
}

/// The body field `Mcp-Name` mirrors for `method`, if it has one.
fn name_field(method: &str) -> Option<&'static str> {
    match method {
        "tools/call" | "prompts/get" => Some("name"),
        "resources/read" => Some("uri"),
        _ => None,
    }
}

/// The headers a stateless request is sent with, mirrored from its body:
/// `MCP-Protocol-Version` (the `_meta` version), `Mcp-Method` (`method`) and, for
/// `tools/call`/`prompts/get`/`resources/read`, `Mcp-Name` (`params.name`/`params.uri`,
/// Base64-wrapped when not a plain header value).
pub fn headers(message: &Value, version: &str) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::with_capacity(3);
    if let Ok(v) = HeaderValue::from_str(version) {
        out.push((VERSION_HEADER, v));
    }
    if let Some(method) = message.get("method").and_then(Value::as_str) {
        if let Ok(v) = HeaderValue::from_str(&encode_value(method)) {
            out.push((METHOD_HEADER, v));
        }
        let name = name_field(method).and_then(|f| message.pointer(&format!("/params/{f}"))).and_then(Value::as_str);
        if let Some(Ok(v)) = name.map(|n| HeaderValue::from_str(&encode_value(n))) {
            out.push((NAME_HEADER, v));
        }
    }
    out
}

/// A tool's `x-mcp-header` annotations: for each, the `{name}` of `Mcp-Param-{name}` and
/// the property path (`properties` keys from the root of `inputSchema`) of its value.
pub type ParamHeaders = Vec<(String, Vec<String>)>;

/// Schema keywords whose values are schemas (or maps or lists of them) other than
/// `properties`: an annotation reached through one of them is not statically reachable.
const SUBSCHEMA_KEYWORDS: [&str; 19] = [
    "items",
    "prefixItems",
    "additionalItems",
    "contains",
    "additionalProperties",
    "patternProperties",
    "propertyNames",
    "unevaluatedItems",
    "unevaluatedProperties",
    "dependentSchemas",
    "anyOf",
    "oneOf",
    "allOf",
    "not",
    "if",
    "then",
    "else",
    "$defs",
    "definitions",
];

/// The `x-mcp-header` annotations of a tool's `inputSchema`, or why the tool definition
/// is invalid (the revision's constraints: a non-empty token, unique ignoring case, on a
/// `string`/`integer`/`boolean` property reached only through `properties`).
pub fn param_headers(input_schema: &Value) -> Result<ParamHeaders, String> {
    let mut found = ParamHeaders::new();
    visit(input_schema, Some(&mut Vec::new()), &mut found)?;
    let mut seen = std::collections::HashSet::new();
    for (name, _) in &found {
        if !seen.insert(name.to_ascii_lowercase()) {
            return Err(format!("x-mcp-header `{name}` is used twice"));
        }
    }
    Ok(found)
}

/// Walks one schema; `path` is its property path when it is statically reachable.
fn visit(schema: &Value, mut path: Option<&mut Vec<String>>, found: &mut ParamHeaders) -> Result<(), String> {
    let Some(object) = schema.as_object() else { return Ok(()) };
    if let Some(name) = object.get("x-mcp-header") {
        let at = path.as_deref().filter(|p| !p.is_empty()).ok_or("x-mcp-header outside `properties`")?;
        let name = name
            .as_str()
            .filter(|n| !n.is_empty() && n.bytes().all(is_tchar))
            .ok_or_else(|| format!("x-mcp-header {name} at {} is not a header-name token", at.join(".")))?;
        if !matches!(object.get("type").and_then(Value::as_str), Some("string" | "integer" | "boolean")) {
            return Err(format!(
                "x-mcp-header `{name}` is on {}, which is not a string, integer or boolean",
                at.join(".")
            ));
        }
        found.push((name.to_owned(), at.clone()));
    }
    if let Some(properties) = object.get("properties").and_then(Value::as_object) {
        for (key, sub) in properties {
            match path.as_deref_mut() {
                Some(p) => {
                    p.push(key.clone());
                    let result = visit(sub, Some(p), found);
                    p.pop();
                    result?;
                }
                None => visit(sub, None, found)?,
            }
        }
    }
    for keyword in SUBSCHEMA_KEYWORDS {
        match object.get(keyword) {
            Some(Value::Array(list)) => list.iter().try_for_each(|s| visit(s, None, found))?,
            Some(Value::Object(map)) if keyword_is_map(keyword) => {
                map.values().try_for_each(|s| visit(s, None, found))?
            }
            Some(sub) => visit(sub, None, found)?,
            None => {}
        }
    }
    Ok(())
}

fn keyword_is_map(keyword: &str) -> bool {
    matches!(keyword, "patternProperties" | "dependentSchemas" | "$defs" | "definitions")
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The `Mcp-Param-{name}` headers of a `tools/call`, from its arguments: strings
/// encoded as for `Mcp-Name`, integers in decimal, booleans as `true`/`false`; an absent
/// or `null` value (or any other kind) sends no header.
pub fn param_values(annotations: &ParamHeaders, arguments: &Value) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::new();
    for (name, path) in annotations {
        let value = path.iter().try_fold(arguments, |v, key| v.get(key));
        let text = match value {
            Some(Value::String(s)) => encode_value(s),
            Some(Value::Bool(b)) => b.to_string(),
            Some(Value::Number(n)) if n.is_i64() || n.is_u64() => n.to_string(),
            _ => continue,
        };
        if let (Ok(k), Ok(v)) =
            (HeaderName::from_bytes(format!("{PARAM_HEADER_PREFIX}{name}").as_bytes()), HeaderValue::from_str(&text))
        {
            out.push((k, v));
        }
    }
    out
}

/// A value as the revision's "Value Encoding" carries it: verbatim when it is printable
/// ASCII without leading or trailing whitespace and does not look like the sentinel,
/// else `=?base64?<Base64 of the UTF-8, standard alphabet, padded>?=`.
pub fn encode_value(value: &str) -> String {
    let plain = value.bytes().all(|b| (0x20..=0x7e).contains(&b))
        && value.trim() == value
        && !(value.starts_with(BASE64_PREFIX) && value.ends_with(BASE64_SUFFIX));
    if plain { value.to_owned() } else { format!("{BASE64_PREFIX}{}{BASE64_SUFFIX}", BASE64.encode(value)) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcp_wire::LISTEN;
    use serde_json::json;

    fn request(method: &str, params: Value) -> Value {
        let mut params = params;
        params["_meta"] =
            json!({META_PROTOCOL_VERSION: "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}});
        json!({"jsonrpc":"2.0","id":1,"method":method,"params":params})
    }

    fn names(message: &Value) -> Vec<(String, String)> {
        headers(message, revision(message).unwrap())
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
            .collect()
    }

    #[test]
    fn only_per_request_versions_from_2026_07_28_on_are_stateless() {
        assert_eq!(revision(&request("tools/list", json!({}))), Some("2026-07-28"));
        let mut later = request("tools/list", json!({}));
        later["params"]["_meta"][META_PROTOCOL_VERSION] = json!("2027-01-01");
        assert_eq!(revision(&later), Some("2027-01-01"));
        let mut older = request("tools/list", json!({}));
        older["params"]["_meta"][META_PROTOCOL_VERSION] = json!("2025-11-25");
        assert_eq!(revision(&older), None);
        older["params"]["_meta"][META_PROTOCOL_VERSION] = json!("draft");
        assert_eq!(revision(&older), None);
        assert_eq!(revision(&json!({"jsonrpc":"2.0","id":1,"method":"tools/list"})), None);
        assert_eq!(
            revision(&json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2026-07-28"}})),
            None
        );
    }

    #[test]
    fn headers_mirror_the_body() {
        let v = |s: &str| s.to_owned();
        assert_eq!(
            names(&request("tools/call", json!({"name":"read_graph","arguments":{}}))),
            [
                (v("mcp-protocol-version"), v("2026-07-28")),
                (v("mcp-method"), v("tools/call")),
                (v("mcp-name"), v("read_graph"))
            ]
        );
        assert_eq!(
            names(&request("resources/read", json!({"uri":"memory://knowledge-graph"})))[2],
            (v("mcp-name"), v("memory://knowledge-graph"))
        );
        assert_eq!(names(&request("prompts/get", json!({"name":"p"})))[2], (v("mcp-name"), v("p")));
        assert_eq!(names(&request("server/discover", json!({}))).len(), 2);
        assert_eq!(
            names(&request("subscriptions/listen", json!({"notifications":{}})))[1],
            (v("mcp-method"), v(LISTEN))
        );
    }

    #[test]
    fn x_mcp_header_annotations_are_read_from_properties_only() {
        let schema = json!({"type":"object","properties":{
            "region":{"type":"string","x-mcp-header":"Region"},
            "opts":{"type":"object","properties":{"n":{"type":"integer","x-mcp-header":"N"},"f":{"type":"boolean","x-mcp-header":"Flag"}}},
            "query":{"type":"string"}}});
        let found = param_headers(&schema).unwrap();
        let v = |s: &str| s.to_owned();
        assert_eq!(
            found,
            [(v("Region"), vec![v("region")]), (v("N"), vec![v("opts"), v("n")]), (v("Flag"), vec![v("opts"), v("f")])]
        );
        let args = json!({"region":"Hello, 世界","opts":{"n":42,"f":false},"query":"q"});
        let headers: Vec<(String, String)> = param_values(&found, &args)
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        assert_eq!(
            headers,
            [
                (v("mcp-param-region"), v("=?base64?SGVsbG8sIOS4lueVjA==?=")),
                (v("mcp-param-n"), v("42")),
                (v("mcp-param-flag"), v("false"))
            ]
        );
        assert!(param_values(&found, &json!({"region":null})).is_empty());
        assert_eq!(param_headers(&json!({"type":"object"})).unwrap(), []);

        let bad = [
            json!({"type":"object","properties":{"a":{"type":"array","items":{"type":"string","x-mcp-header":"A"}}}}),
            json!({"type":"object","anyOf":[{"properties":{"a":{"type":"string","x-mcp-header":"A"}}}]}),
            json!({"type":"object","properties":{"a":{"type":"number","x-mcp-header":"A"}}}),
            json!({"type":"object","properties":{"a":{"type":"string","x-mcp-header":""}}}),
            json!({"type":"object","properties":{"a":{"type":"string","x-mcp-header":"A B"}}}),
            json!({"type":"object","properties":{"a":{"type":"string","x-mcp-header":"A"},"b":{"type":"string","x-mcp-header":"a"}}}),
            json!({"type":"object","x-mcp-header":"Root"}),
            json!({"type":"object","$defs":{"d":{"type":"string","x-mcp-header":"D"}}}),
        ];
        for schema in bad {
            assert!(param_headers(&schema).is_err(), "{schema}");
        }
    }

    #[test]
    fn values_outside_the_safe_set_are_base64_wrapped() {
        assert_eq!(encode_value("us-west1"), "us-west1");
        assert_eq!(encode_value("Hello, 世界"), "=?base64?SGVsbG8sIOS4lueVjA==?=");
        assert_eq!(encode_value(" padded "), "=?base64?IHBhZGRlZCA=?=");
        assert_eq!(encode_value("line1\nline2"), "=?base64?bGluZTEKbGluZTI=?=");
        assert_eq!(encode_value("=?base64?literal?="), "=?base64?PT9iYXNlNjQ/bGl0ZXJhbD89?=");
        // Standard alphabet, padded: one, two and three bytes.
        assert_eq!(encode_value(" "), "=?base64?IA==?=");
        assert_eq!(encode_value(" a"), "=?base64?IGE=?=");
        assert_eq!(encode_value(" ab"), "=?base64?IGFi?=");
        assert_eq!(encode_value("\u{ffff}"), "=?base64?77+/?=");
    }
}
