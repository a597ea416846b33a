//! Writes tool results in one buffer, straight from the typed values: a large answer
//! is never built as a `Value` tree, and its pretty text is printed once and escaped
//! once into the JSON string it travels in.

use serde::Serialize;

use crate::protocol::{Answer, RawJson};

/// `{"content":[{"type":"text","text":pretty(shown)}],"structuredContent":structured}`,
/// the official server's result shape (its text is `JSON.stringify(shown, null, 2)`).
pub fn tool_result<T, S>(shown: &T, structured: &S) -> serde_json::Result<Answer>
where
    T: Serialize + ?Sized,
    S: Serialize + ?Sized,
{
    let text = serde_json::to_string_pretty(shown)?;
    // The escaped text plus the compact structured copy, which is a little shorter.
    let mut out = Vec::with_capacity(text.len() * 2 + 128);
    out.extend_from_slice(br#"{"content":[{"type":"text","text":"#);
    serde_json::to_writer(&mut out, &text)?;
    drop(text);
    out.extend_from_slice(br#"}],"structuredContent":"#);
    serde_json::to_writer(&mut out, structured)?;
    out.push(b'}');
    finish(out)
}

/// `{"contents":[{"uri":uri,"mimeType":"application/json","text":pretty(shown)}]}`.
pub fn resource_contents<T: Serialize + ?Sized>(uri: &str, shown: &T) -> serde_json::Result<Answer> {
    let text = serde_json::to_string_pretty(shown)?;
    let mut out = Vec::with_capacity(text.len() + text.len() / 8 + 128);
    out.extend_from_slice(br#"{"contents":[{"uri":"#);
    serde_json::to_writer(&mut out, uri)?;
    out.extend_from_slice(br#","mimeType":"application/json","text":"#);
    serde_json::to_writer(&mut out, &text)?;
    out.extend_from_slice(br#"}]}"#);
    finish(out)
}

fn finish(out: Vec<u8>) -> serde_json::Result<Answer> {
    // serde_json writes UTF-8; checked anyway, it is cheap beside the writing.
    let text = String::from_utf8(out).map_err(|e| serde_json::Error::io(std::io::Error::other(e)))?;
    Ok(Answer::Raw(RawJson::trusted(text)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// Writing into one buffer gives what building the values and printing them gives.
    #[test]
    fn matches_printing_the_values() {
        let tricky = json!({
            "entities": [{
                "name": "quote \" backslash \\ slash / tab \t nl \n cr \r bs \u{8} ff \u{c} nul \u{0} us \u{1f} del \u{7f}",
                "entityType": "ü 日本 😀 \u{2028}",
                "observations": ["", "a\"b", "\\n"],
            }],
            "relations": [],
        });
        let Answer::Raw(raw) = tool_result(&tricky, &tricky).unwrap() else { panic!("not raw") };
        let expected = json!({
            "content": [{ "type": "text", "text": serde_json::to_string_pretty(&tricky).unwrap() }],
            "structuredContent": tricky,
        });
        assert_eq!(raw.as_bytes(), serde_json::to_vec(&expected).unwrap());
        let parsed: Value = serde_json::from_slice(raw.as_bytes()).unwrap();
        assert_eq!(parsed, expected);

        let Answer::Raw(raw) = resource_contents("memory://x", &tricky).unwrap() else { panic!("not raw") };
        let expected = json!({ "contents": [{
            "uri": "memory://x", "mimeType": "application/json",
            "text": serde_json::to_string_pretty(&tricky).unwrap(),
        }]});
        assert_eq!(raw.as_bytes(), serde_json::to_vec(&expected).unwrap());
    }
}
