//! The MCP wire vocabulary that memory-server and the proxy both speak: header names,
//! protocol revision dates, `_meta` keys, the one method and the one resource URI both
//! sides name. Constants only, so each is spelled once; what a side does with them
//! stays in that side's crate.

// HTTP header names, lower-case: they are `HeaderMap` keys (HTTP compares field names
// case-insensitively, and the `http` crate stores them lower-cased).

/// `Mcp-Session-Id`: the session issued by `initialize` and sent with every later request
/// (2025-03-26 to 2025-11-25).
pub const SESSION_HEADER: &str = "mcp-session-id";
/// `MCP-Protocol-Version`: the negotiated revision (2025-06-18 on); from 2026-07-28 on it
/// must equal the body's `_meta` version ([`META_PROTOCOL_VERSION`]).
pub const VERSION_HEADER: &str = "mcp-protocol-version";
/// `Mcp-Project-Path`: ours, not MCP's: the project directory whose memory a request
/// uses, percent-encoded UTF-8.
pub const PROJECT_HEADER: &str = "mcp-project-path";
/// `Mcp-Project-Id`: ours: the project's identity across machines, for a daemon a team
/// shares (SPEC 2.12): its normalised `origin` remote (`github.com/org/repo`, with
/// `#sub/dir` for a directory below the work tree's root), else its path; percent-encoded
/// UTF-8 like [`PROJECT_HEADER`], which is sent beside it.
pub const PROJECT_ID_HEADER: &str = "mcp-project-id";
/// `Mcp-Method`: 2026-07-28, the body's `method`, mirrored for intermediaries.
pub const METHOD_HEADER: &str = "mcp-method";
/// `Mcp-Name`: 2026-07-28, the body's `params.name` (`tools/call`, `prompts/get`) or
/// `params.uri` (`resources/read`), in the [`BASE64_PREFIX`] form when not a plain value.
pub const NAME_HEADER: &str = "mcp-name";
/// `Mcp-Param-{name}`: 2026-07-28, a tool argument that the tool's input schema marks
/// with `x-mcp-header: {name}`.
pub const PARAM_HEADER_PREFIX: &str = "mcp-param-";

/// Opens a 2026-07-28 header value carried as Base64 of its UTF-8 (`Mcp-Name`,
/// `Mcp-Param-*`): `=?base64?{standard Base64, padded}?=`. Case-sensitive.
pub const BASE64_PREFIX: &str = "=?base64?";
/// Closes a Base64 header value (see [`BASE64_PREFIX`]).
pub const BASE64_SUFFIX: &str = "?=";

// Protocol revisions, named by their dates; dates compare correctly as strings.

/// The first revision: `initialize`, sessions, the HTTP+SSE transport, batches.
pub const V2024_11_05: &str = "2024-11-05";
/// Streamable HTTP; the last revision that allows JSON-RPC batches.
pub const V2025_03_26: &str = "2025-03-26";
/// Batches removed; the `MCP-Protocol-Version` header.
pub const V2025_06_18: &str = "2025-06-18";
/// The last revision with `initialize` and sessions.
pub const V2025_11_25: &str = "2025-11-25";
/// The first stateless revision: no `initialize`, no sessions; every request names its
/// version in `_meta` ([`META_PROTOCOL_VERSION`]).
pub const V2026_07_28: &str = "2026-07-28";

// `_meta` keys of the stateless revisions (2026-07-28 on).

/// In a request's `params._meta`: the protocol version it is sent under; its presence
/// marks a request of a stateless revision.
pub const META_PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
/// In a request's `params._meta`: the client's capabilities (an object, required).
pub const META_CLIENT_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
/// In a result's `_meta`: the server's identity (`name`, `title`, `version`).
pub const META_SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";
/// In the notifications of a `subscriptions/listen` stream: the id of the request that
/// opened it.
pub const META_SUBSCRIPTION_ID: &str = "io.modelcontextprotocol/subscriptionId";

/// The 2026-07-28 method that opens a long-lived stream of the change notifications the
/// client opted in to.
pub const LISTEN: &str = "subscriptions/listen";

/// memory-server's one resource: the whole knowledge graph of the request's project.
pub const GRAPH_RESOURCE_URI: &str = "memory://knowledge-graph";
