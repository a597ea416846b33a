//! The floor: an axum server that answers every `POST /mcp` with one constant JSON-RPC
//! result (set by `PUT /answer`, the bytes of a real answer's `result`), echoing the id.
//! It costs what this machine's loopback HTTP and a JSON parse of the request cost.

use std::sync::{Arc, RwLock};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::routing::{get, post, put};

type Answer = Arc<RwLock<Bytes>>;

async fn mcp(State(answer): State<Answer>, body: Bytes) -> ([(axum::http::HeaderName, &'static str); 1], Vec<u8>) {
    let id = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("id").map(|id| id.to_string()))
        .unwrap_or_else(|| "null".into());
    let result = answer.read().map(|a| a.clone()).unwrap_or_default();
    let mut out = Vec::with_capacity(result.len() + id.len() + 40);
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(b",\"result\":");
    out.extend_from_slice(&result);
    out.push(b'}');
    ([(CONTENT_TYPE, "application/json")], out)
}

async fn set_answer(State(answer): State<Answer>, body: Bytes) -> &'static str {
    if let Ok(mut a) = answer.write() {
        *a = body;
    }
    "ok"
}

/// Runs the floor server on 127.0.0.1:`port` until killed.
pub fn serve(port: u16) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let answer: Answer = Arc::new(RwLock::new(Bytes::from_static(b"{}")));
        let app = Router::new()
            .route("/mcp", post(mcp))
            .route("/answer", put(set_answer))
            .route("/health", get(|| async { "ok" }))
            .layer(axum::extract::DefaultBodyLimit::max(256 << 20))
            .with_state(answer);
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.map_err(|e| e.to_string())?;
        axum::serve(listener, app).await.map_err(|e| e.to_string())
    })
}
