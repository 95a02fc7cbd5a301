#!/usr/bin/env python3
"""Write hooks/tools.json: the MCP server's own tools/list, which the bootstrap lists while the plugin installs.

Run after changing a tool's name, signature or docstring (tests/test_plugin_install.py says when it is stale):
    .venv/bin/python scripts/tool_list.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TARGET = Path(__file__).resolve().parents[1] / "hooks" / "tools.json"


def tool_list() -> list[dict]:
    """Every tool as the server's tools/list answers it (name, description, inputSchema, outputSchema)."""
    import anyio

    from archsmith.mcp_server.server import build_server

    tools = anyio.run(build_server(Path.cwd()).list_tools)
    return [tool.model_dump(by_alias=True, exclude_none=True, mode="json") for tool in tools]


if __name__ == "__main__":
    tools = tool_list()
    TARGET.write_text(json.dumps({"tools": tools}, indent=1) + "\n")
    print(f"wrote {TARGET} ({len(tools)} tools)", file=sys.stderr)
