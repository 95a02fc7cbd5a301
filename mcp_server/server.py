"""The archsmith MCP server: the engine's tools and reference data over stdio or streamable HTTP.

    archsmith serve                  # stdio (what .mcp.json starts)
    archsmith serve --http 8765      # streamable HTTP on 127.0.0.1:8765/mcp

stdout carries the protocol; logs go to stderr.
"""

import functools
import inspect
import json
import logging
import sys
from pathlib import Path

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from archsmith.mcp_server.tools import TOOLS, set_workspace

log = logging.getLogger("archsmith.mcp")
INSTRUCTIONS = ("archsmith computes model-architecture numbers instead of guessing them: design an LM for a budget, "
                "estimate params/FLOPs/memory of any config.json, emit configs transformers loads, build the model. "
                "Quote the numbers these tools return; paths are relative to the workspace root.")


def _engine_errors(fn):
    """Turn ArchsmithError ('field: what is allowed') into an MCP tool error; other errors stay unexpected (logged)."""
    from archsmith.errors import ArchsmithError

    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def wrapper(*args, **kwargs):
            try:
                return await fn(*args, **kwargs)
            except ArchsmithError as exc:
                raise ToolError(str(exc)) from exc
    else:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except ArchsmithError as exc:
                raise ToolError(str(exc)) from exc
    return wrapper


def build_server(root: str | Path | None = None) -> MCPServer:
    """The server with every tool in TOOLS and the reference-data resources; files stay under `root`."""
    from archsmith import __version__

    set_workspace(root)
    server = MCPServer("archsmith", version=__version__, instructions=INSTRUCTIONS, log_level="WARNING")
    for fn in TOOLS:
        server.tool()(_engine_errors(fn))

    @server.resource("archsmith://scale-templates", mime_type="application/json",
                     description="Scale templates (100M, 350M, 1B, 7B) the designer starts from.")
    def scale_templates() -> str:
        from archsmith.design import scale_templates as templates

        return json.dumps(list(templates()), indent=2)

    @server.resource("archsmith://gpus", mime_type="application/json",
                     description="GPU table: memory, dense peak FLOPs per precision, bandwidth, sources.")
    def gpus() -> str:
        from archsmith.gpus import gpu_table

        return json.dumps(gpu_table(), indent=2)

    @server.resource("archsmith://reference-architectures", mime_type="application/json",
                     description="Published configs shipped with archsmith: family, shape, exact parameter count, source.")
    def references() -> str:
        from archsmith.catalog import reference_architectures

        return json.dumps(reference_architectures(), indent=2)

    @server.resource("archsmith://reference-architectures/{name}", mime_type="application/json",
                     description="One published config.json, by name (e.g. meta-llama__Llama-3.1-8B).")
    def reference(name: str) -> str:
        from archsmith.catalog import reference_config

        return json.dumps(reference_config(name), indent=2)

    return server


def serve(http_port: int | None = None, host: str = "127.0.0.1", root: str | Path | None = None) -> None:
    """Run until the client closes stdin (stdio) or the process is stopped (HTTP)."""
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    server = build_server(root)
    if http_port is None:
        server.run("stdio")
    else:
        server.run("streamable-http", host=host, port=http_port)


def main(argv: list[str] | None = None) -> None:
    """`archsmith-mcp [--http PORT] [--host H] [--root DIR]`: `archsmith serve` without the CLI's imports (faster start)."""
    import argparse

    parser = argparse.ArgumentParser(prog="archsmith-mcp", description="archsmith MCP server (stdio unless --http).")
    parser.add_argument("--http", type=int, metavar="PORT", help="serve streamable HTTP on this port")
    parser.add_argument("--host", default="127.0.0.1", help="interface for --http (default: loopback)")
    parser.add_argument("--root", help="workspace root (default: $ARCHSMITH_WORKSPACE or the current directory)")
    args = parser.parse_args(argv)
    serve(http_port=args.http, host=args.host, root=args.root)
