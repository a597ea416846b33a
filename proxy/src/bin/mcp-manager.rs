//! `mcp-manager`: status, start/stop, health checks and client configuration for the
//! shared MCP daemons. The logic lives in `mcp_proxy::manager`.

fn main() -> std::process::ExitCode {
    mcp_proxy::manager::cli::main()
}
