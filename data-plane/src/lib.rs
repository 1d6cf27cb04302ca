//! mcpgw data plane: the MCP gateway.
