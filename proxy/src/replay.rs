//! What a client set up on its session beyond the handshake, kept so that a recovery can
//! set it up again on the new session: the resources it subscribed to
//! (`resources/subscribe` adds a URI, `resources/unsubscribe` removes it) and the last
//! `logging/setLevel`. Without them a new session would be silent: a subscriber would
//! never again hear `notifications/resources/updated`, and the daemon would log at its
//! default level.
//!
//! A message is noted when the client sends it, before it is forwarded: a recovery that
//! races with it then sets up one subscription too many (subscribing twice is harmless),
//! never one too few. The client's requests are kept whole (their params may carry more
//! than the URI or the level) and replayed under ids of the proxy's own, so that their
//! answers can never be taken for an answer the client is waiting for.

use serde_json::{Value, json};

#[derive(Default)]
pub struct SessionSetup {
    /// The subscribed URIs with the request that subscribed each, in the order first
    /// subscribed (a handful at most, so a list).
    subscriptions: Vec<(String, Value)>,
    /// The last `logging/setLevel` request.
    log_level: Option<Value>,
}

impl SessionSetup {
    /// Notes a client message if it changes the session's setup.
    pub fn note(&mut self, message: &Value) {
        let method = message.get("method").and_then(Value::as_str);
        // `get`, not `pointer` (which allocates for its path): every message is noted.
        let uri = message.get("params").and_then(|p| p.get("uri")).and_then(Value::as_str);
        match (method, uri) {
            (Some("resources/subscribe"), Some(uri)) => match self.subscriptions.iter_mut().find(|(u, _)| u == uri) {
                Some((_, request)) => *request = message.clone(),
                None => self.subscriptions.push((uri.to_owned(), message.clone())),
            },
            (Some("resources/unsubscribe"), Some(uri)) => self.subscriptions.retain(|(u, _)| u != uri),
            (Some("logging/setLevel"), _) => self.log_level = Some(message.clone()),
            _ => {}
        }
    }

    /// Whether the client listens for resource updates, which only come on the
    /// session's event stream.
    pub fn has_subscriptions(&self) -> bool {
        !self.subscriptions.is_empty()
    }

    /// The requests that set the session up again, subscriptions first, each under the
    /// id `mcp-proxy-replay-<generation>-<n>`.
    pub fn replay(&self, generation: u64) -> Vec<Value> {
        self.subscriptions
            .iter()
            .map(|(_, request)| request)
            .chain(self.log_level.as_ref())
            .enumerate()
            .map(|(n, request)| {
                let mut request = request.clone();
                request["id"] = json!(format!("mcp-proxy-replay-{generation}-{}", n + 1));
                request
            })
            .collect()
    }

    /// What [`replay`](Self::replay) sets up, for the log.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        match self.subscriptions.len() {
            0 => {}
            1 => parts.push("1 subscription".to_owned()),
            n => parts.push(format!("{n} subscriptions")),
        }
        if self.log_level.is_some() {
            parts.push("the log level".to_owned());
        }
        parts.join(" and ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(id: u64, method: &str, params: Value) -> Value {
        json!({"jsonrpc":"2.0","id":id,"method":method,"params":params})
    }

    fn methods_and_params(setup: &SessionSetup) -> Vec<(String, Value)> {
        setup
            .replay(1)
            .iter()
            .map(|r| (r["method"].as_str().unwrap_or_default().to_owned(), r["params"].clone()))
            .collect()
    }

    #[test]
    fn subscriptions_are_a_set_and_the_last_log_level_wins() {
        let mut setup = SessionSetup::default();
        assert!(setup.replay(1).is_empty());
        assert!(!setup.has_subscriptions());
        setup.note(&request(1, "resources/subscribe", json!({"uri":"memory://a"})));
        setup.note(&request(2, "resources/subscribe", json!({"uri":"memory://b"})));
        setup.note(&request(3, "logging/setLevel", json!({"level":"debug"})));
        setup.note(&request(4, "resources/subscribe", json!({"uri":"memory://a","_meta":{"k":1}})));
        setup.note(&request(5, "resources/unsubscribe", json!({"uri":"memory://b"})));
        setup.note(&request(6, "logging/setLevel", json!({"level":"error"})));
        setup.note(&request(7, "tools/call", json!({"name":"x"})));
        setup.note(&request(8, "resources/subscribe", json!({})));
        assert!(setup.has_subscriptions());
        assert_eq!(
            methods_and_params(&setup),
            [
                ("resources/subscribe".to_owned(), json!({"uri":"memory://a","_meta":{"k":1}})),
                ("logging/setLevel".to_owned(), json!({"level":"error"})),
            ]
        );
        assert_eq!(setup.describe(), "1 subscription and the log level");
        setup.note(&request(9, "resources/unsubscribe", json!({"uri":"memory://a"})));
        assert!(!setup.has_subscriptions());
        assert_eq!(setup.describe(), "the log level");
    }

    #[test]
    fn replayed_requests_carry_ids_of_the_proxys_own() {
        let mut setup = SessionSetup::default();
        setup.note(&request(1, "resources/subscribe", json!({"uri":"memory://a"})));
        setup.note(&request(1, "resources/subscribe", json!({"uri":"memory://b"})));
        setup.note(&request(2, "logging/setLevel", json!({"level":"info"})));
        let ids: Vec<Value> = setup.replay(7).iter().map(|r| r["id"].clone()).collect();
        assert_eq!(ids, [json!("mcp-proxy-replay-7-1"), json!("mcp-proxy-replay-7-2"), json!("mcp-proxy-replay-7-3")]);
        assert_eq!(setup.describe(), "2 subscriptions and the log level");
    }
}
