//! Helpers around the official Rust MCP SDK (`rmcp`), the independent client of the
//! conformance tests: connecting over streamable HTTP with a project header, and a
//! handler that reports resource-update notifications.

use std::collections::HashMap;
use std::path::Path;

use rmcp::model::{CallToolRequestParams, CallToolResult, ResourceUpdatedNotificationParam};
use rmcp::service::{NotificationContext, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::encode_project;

/// A client that reports every `notifications/resources/updated` it receives.
#[derive(Clone)]
pub struct Watcher(pub mpsc::UnboundedSender<String>);

impl ClientHandler for Watcher {
    async fn on_resource_updated(
        &self,
        params: ResourceUpdatedNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let _ = self.0.send(params.uri);
    }
}

/// Initializes an rmcp client against `url`, sending `Mcp-Project-Path: project`.
pub async fn connect<H: ClientHandler>(handler: H, url: &str, project: &Path) -> RunningService<RoleClient, H> {
    let mut headers = HashMap::new();
    headers.insert(
        reqwest::header::HeaderName::from_static("mcp-project-path"),
        encode_project(project).parse().expect("header value"),
    );
    let config = StreamableHttpClientTransportConfig::with_uri(url.to_owned()).custom_headers(headers);
    let transport = StreamableHttpClientTransport::from_config(config);
    handler.serve(transport).await.expect("rmcp client initializes against memory-server")
}

/// Subscribes to the graph resource (`resources/subscribe`, the session-based
/// revisions' mechanism; rmcp marks it legacy because 2026-07-28 replaced it).
pub async fn subscribe_graph<H: ClientHandler>(client: &RunningService<RoleClient, H>) {
    #[allow(deprecated)]
    client
        .subscribe(rmcp::model::SubscribeRequestParams::new("memory://knowledge-graph"))
        .await
        .expect("resources/subscribe");
}

/// Calls a tool and asserts it did not fail.
pub async fn call(
    client: &RunningService<RoleClient, impl ClientHandler>,
    name: &'static str,
    args: Value,
) -> CallToolResult {
    let Value::Object(arguments) = args else { panic!("arguments must be an object") };
    let result = client
        .call_tool(CallToolRequestParams::new(name).with_arguments(arguments))
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_ne!(result.is_error, Some(true), "{name} failed: {result:?}");
    result
}

/// The structured content of a tool result.
pub fn structured(result: &CallToolResult) -> Value {
    result.structured_content.clone().expect("structuredContent")
}
