"""The MCP adapter over the archsmith engine (installed as `archsmith.mcp_server`)."""
