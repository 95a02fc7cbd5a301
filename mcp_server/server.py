"""The archsmith MCP server: the engine's tools and reference data over stdio or streamable HTTP.

    archsmith serve                  # stdio (what .mcp.json starts)
    archsmith serve --http 8765      # streamable HTTP on 127.0.0.1:8765/mcp
    ARCHSMITH_MCP_TOKEN=... archsmith serve --http 8765 --host 0.0.0.0 --allow-host myhost.example
                                     # any other interface: a bearer token and the host names clients use

Every tool call runs inside the workspace root (`archsmith.files.workspace`); heavy tools run on a
bounded pool with a time limit (`pool.py`); every failure reaches the client as one line that starts
with the field it is about ("batch: must be an integer in [1, 1048576], got 0"), and anything
unexpected as "internal error in TOOL: ..." with the traceback in the server's log.
stdout carries the protocol; logs go to stderr.
"""

import errno
import hmac
import inspect
import ipaddress
import json
import logging
import os
import re
import socket
import sys
import time
from pathlib import Path
from typing import Any

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError

from archsmith.errors import ArchsmithError
from archsmith.mcp_server import pool
from archsmith.mcp_server.tools import TOOLS, set_workspace

log = logging.getLogger("archsmith.mcp")
INSTRUCTIONS = ("archsmith computes model-architecture numbers instead of guessing them: design an LM for a budget, "
                "estimate params/FLOPs/memory of any config.json, emit configs transformers loads, build the model. "
                "Quote the numbers these tools return; paths are relative to the workspace root (or absolute inside it).")
TOKEN_ENV = "ARCHSMITH_MCP_TOKEN"  # the bearer token for HTTP; never taken from the command line (shells log those)
MIN_TOKEN_CHARS = 16  # shorter secrets can be guessed over the network
LOOPBACK_HOSTS = ["127.0.0.1:*", "localhost:*", "[::1]:*"]  # the Host headers a loopback client sends


class ArchsmithServer(MCPServer):
    """MCPServer plus archsmith's boundary: the workspace root, the heavy pool and one-line errors for every call."""

    def __init__(self, root: Path, heavy_pool: pool.HeavyPool, timeout_s: float, **kwargs):
        super().__init__(**kwargs)
        self.root, self.heavy_pool, self.timeout_s = root, heavy_pool, timeout_s
        self.time_limits: dict[str, float] = {}  # heavy tool -> its time limit

    def add_engine_tool(self, fn) -> None:
        if pool.is_heavy(fn):
            self.time_limits[fn.__name__] = pool.time_limit(fn, self.timeout_s)
            if not inspect.iscoroutinefunction(fn):
                fn = pool.in_pool(fn)
        self.add_tool(fn, name=fn.__name__)

    async def call_tool(self, name: str, arguments: dict[str, Any], context=None):
        client = pool.current_client.set(pool.client_key(getattr(context, "_request_context", None)))
        heavy = pool.current_pool.set(self.heavy_pool)
        jobs = pool.current_jobs.set([])
        from archsmith.files import workspace

        start = time.monotonic()
        try:
            with workspace(self.root):
                if name not in self.time_limits:
                    return await super().call_tool(name, arguments, context)
                with anyio.fail_after(self.time_limits[name]):
                    return await super().call_tool(name, arguments, context)
        except TimeoutError:
            ended = await pool.settle(pool.current_jobs.get(), pool.STOP_GRACE_S)  # its jobs were stopped at the limit
            state = ("its work was stopped" if ended else
                     "its work is being stopped (it is inside a call that cannot be interrupted; it ends when that call returns)")
            raise ToolError(f"timeout: {name} did not finish within {self.time_limits[name]:g} s (timeout after "
                            f"{time.monotonic() - start:.1f} s); {state}; ask for less (a smaller model, fewer items) or "
                            "try again when the server is less busy") from None
        except ToolError as exc:
            raise ToolError(one_line(hide_root(self._explain(name, arguments, exc), self.root))) from None
        finally:
            pool.current_jobs.reset(jobs)
            pool.current_pool.reset(heavy)
            pool.current_client.reset(client)

    def _explain(self, name: str, arguments: dict[str, Any], exc: ToolError) -> str:
        """'field: what is allowed' for bad arguments and engine errors; 'internal error in TOOL: ...' (logged) otherwise.

        An engine error that names a value rather than a field ("acme/nope: not found on the Hub") gets the
        argument holding that value in front ("model_id: acme/nope: ...").
        """
        from pydantic import ValidationError

        tool = self._tool_manager.get_tool(name)
        if tool is None:
            return f"name: unknown tool {name!r}"
        if isinstance(exc.__cause__, ValidationError):
            return validation_message(exc.__cause__, tool.parameters)
        engine = _engine_error(exc)
        if engine is not None:
            named = engine.field in tool.parameters.get("properties", {})
            holder = None if named else next((key for key, value in arguments.items() if value == engine.field), None)
            return f"{holder}: {engine}" if isinstance(holder, str) else str(engine)
        if isinstance(exc, UnexpectedToolError):
            crash = exc.__cause__ or exc
            log.error("internal error in %s: %s: %s", name, type(crash).__name__, crash, exc_info=crash)
            return f"internal error in {name}: {type(crash).__name__}: {str(crash)[:200]} (a bug in archsmith; the server log has the details)"
        return str(exc).removeprefix(f"Error executing tool {name}: ")


def hide_root(text: str, root: Path) -> str:
    """`text` with paths under the workspace root made relative to it: answers never show the host's layout."""
    base = str(root).rstrip("/")
    return re.sub(re.escape(base) + r"(?:/|(?=[\s'\"),:;]|$))", lambda m: "" if m.group(0).endswith("/") else ".", text)


def one_line(text: str) -> str:
    """`text` with control characters escaped (a key sent as "\\n" stays on the error's one line)."""
    return "".join(repr(c)[1:-1] if ord(c) < 32 or ord(c) == 127 else c for c in text)


def _engine_error(exc: BaseException) -> ArchsmithError | None:
    """The ArchsmithError this failure came from, if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, ArchsmithError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def validation_message(error, schema: dict[str, Any]) -> str:
    """Pydantic's argument errors as the CLI says them: 'batch: must be an integer in [1, 1048576], got 0'."""
    properties = schema.get("properties", {})
    parts: dict[str, str] = {}
    for item in error.errors(include_url=False):
        field = str(item["loc"][0]) if item["loc"] else "arguments"
        if field in parts:  # a union reports each branch; the first line says enough
            continue
        allowed = _allowed(properties.get(field, {}))
        if item["type"] == "missing":
            parts[field] = f"{field}: required" + (f" ({allowed})" if allowed else "")
        else:
            said = f"must be {allowed}" if allowed else item["msg"][:1].lower() + item["msg"][1:]
            parts[field] = f"{field}: {said}, got {_shown(item.get('input'))}"
    return "; ".join(parts.values()) or "arguments: do not match the tool's input schema"


def _allowed(schema: dict[str, Any]) -> str:
    """What a JSON-schema node accepts, in words: 'an integer in [1, 1048576] or null'."""
    words = []
    for node in schema.get("anyOf", [schema]):
        kind = node.get("type")
        if "enum" in node:
            words.append("one of " + ", ".join(json.dumps(v) for v in node["enum"]))
        elif kind in ("integer", "number"):
            noun = "an integer" if kind == "integer" else "a number"
            low, high = node.get("minimum", node.get("exclusiveMinimum")), node.get("maximum", node.get("exclusiveMaximum"))
            if low is None and high is None:
                words.append(noun)
            else:
                words.append(f"{noun} in {'(' if 'exclusiveMinimum' in node or low is None else '['}{_number(low, '-inf')}, "
                             f"{_number(high, 'inf')}{')' if 'exclusiveMaximum' in node or high is None else ']'}")
        elif kind == "string":
            low, high = node.get("minLength", 0), node.get("maxLength")
            words.append("a string" + (f" of {low} to {high} characters" if high else f" of at least {low} characters" if low else ""))
        elif kind:
            words.append({"boolean": "true or false", "null": "null", "object": "an object", "array": "a list"}.get(kind, kind))
    return " or ".join(words)


def _number(value, missing: str) -> str:
    return missing if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _shown(value) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def build_server(root: str | Path | None = None, token: str | None = None, workers: int = pool.WORKERS,
                 per_client: int = pool.PER_CLIENT, timeout_s: float = pool.TIMEOUT_S) -> ArchsmithServer:
    """The server with every tool in TOOLS and the reference-data resources; files stay under `root`.

    `token`: HTTP clients must send `Authorization: Bearer <token>` (the SDK's bearer-auth middleware).
    """
    from archsmith import __version__

    auth = {}
    if token is not None:
        from mcp.server.auth.settings import AuthSettings

        # AuthSettings wants an issuer URL; without an OAuth provider it is never served or checked
        auth = {"auth": AuthSettings(issuer_url="http://localhost", resource_server_url=None), "token_verifier": _StaticToken(token)}
    server = ArchsmithServer(set_workspace(root), pool.HeavyPool(workers, per_client), timeout_s,
                             name="archsmith", version=__version__, instructions=INSTRUCTIONS, log_level="WARNING", **auth)
    for fn in TOOLS:
        server.add_engine_tool(fn)

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


# ---- HTTP ---------------------------------------------------------------------------------------

class _StaticToken:
    """The SDK's TokenVerifier for one shared secret, compared in constant time."""

    def __init__(self, token: str):
        self._token = token.encode()

    async def verify_token(self, token: str):
        from mcp.server.auth.provider import AccessToken

        if hmac.compare_digest(token.encode(), self._token):
            return AccessToken(token=token, client_id="archsmith", scopes=[])
        return None


def read_token(token_file: str | Path | None = None) -> str | None:
    """The bearer token from `token_file`, else $ARCHSMITH_MCP_TOKEN, else None."""
    if token_file is not None:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ArchsmithError("token_file", f"cannot read {token_file}: {getattr(exc, 'strerror', None) or exc}") from None
        field = "token_file"
    else:
        token, field = os.environ.get(TOKEN_ENV, "").strip(), TOKEN_ENV
    if not token:
        if token_file is not None:
            raise ArchsmithError("token_file", f"{token_file} is empty")
        return None
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise ArchsmithError(field, f"the token must be at least {MIN_TOKEN_CHARS} characters without spaces "
                                    "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)")
    return token


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def transport_security(host: str, port: int, allow_hosts: list[str]):
    """Host/Origin validation (DNS-rebinding protection) with an explicit allow-list, whatever the interface."""
    from mcp.server.transport_security import TransportSecuritySettings

    hosts = list(LOOPBACK_HOSTS)
    for name in allow_hosts:
        hosts.append(name if name.rpartition(":")[2].isdigit() or name.endswith(":*") else f"{name}:{port}")
    if not is_loopback(host) and not _wildcard(host):  # the address itself, as a client types it
        hosts.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    origins = [f"{scheme}://{h}" for h in hosts for scheme in ("http", "https")]
    return TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins)


def _wildcard(host: str) -> bool:
    return host in ("0.0.0.0", "::", "")


def check_http(host: str, port: int, token: str | None, allow_hosts: list[str]) -> None:
    """Refuse to serve beyond loopback without a token, or on every interface without the names clients use."""
    if is_loopback(host):
        return
    if token is None:
        raise ArchsmithError("host", f"serving on {host} (not loopback) needs a bearer token: set {TOKEN_ENV} or pass "
                                     "--token-file FILE (never the token itself on the command line)")
    if _wildcard(host) and not allow_hosts:
        raise ArchsmithError("allow_host", f"serving on {host or 'every interface'} needs --allow-host NAME for each host name or "
                                           "address clients use (their Host header is checked against it)")


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, or a one-line error naming the port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a restart may reuse a port in TIME_WAIT
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ArchsmithError("http", f"port {port} on {host} is already in use; pick another with --http PORT") from None
        raise ArchsmithError("http", f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(2048)  # uvicorn's default backlog; clients queue from here until the server accepts
    return sock


def serve(http_port: int | None = None, host: str = "127.0.0.1", root: str | Path | None = None,
          allow_hosts: list[str] | tuple[str, ...] = (), token_file: str | Path | None = None) -> None:
    """Run until the client closes stdin (stdio) or the process is stopped (HTTP). Raises ArchsmithError before serving."""
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if http_port is None:
        server = build_server(root)
        print(f"archsmith MCP server on stdio (workspace {server.root}): waiting for an MCP client on stdin; "
              "Ctrl-C or end of input stops it", file=sys.stderr, flush=True)  # stdout carries the protocol only
        server.run("stdio")
        return
    token = read_token(token_file)
    check_http(host, http_port, token, list(allow_hosts))
    server = build_server(root, token=token)
    security = transport_security(host, http_port, list(allow_hosts))
    app = server.streamable_http_app(host=host, transport_security=security)
    sock = bind(host, http_port)
    address = f"[{host}]:{http_port}" if ":" in host else f"{host}:{http_port}"
    names = [address] if is_loopback(host) else [h.replace(":*", f":{http_port}") for h in security.allowed_hosts[len(LOOPBACK_HOSTS):]]
    print(f"archsmith MCP server on {', '.join(f'http://{n}/mcp' for n in names)} (workspace {server.root}"
          f"{', bearer token required' if token else ''}); Ctrl-C stops it", file=sys.stderr, flush=True)
    import uvicorn

    http = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
    anyio.run(http.serve, [sock])


def main(argv: list[str] | None = None) -> None:
    """`archsmith-mcp [--http PORT] [--host H] [--allow-host NAME] [--token-file F] [--root DIR]`: `archsmith serve`, faster to start."""
    import argparse

    parser = argparse.ArgumentParser(prog="archsmith-mcp", description="archsmith MCP server (stdio unless --http).")
    parser.add_argument("--http", type=int, metavar="PORT", help="serve streamable HTTP on this port")
    parser.add_argument("--host", default="127.0.0.1", help="interface for --http (default: loopback); another one needs a token")
    parser.add_argument("--allow-host", action="append", default=[], metavar="NAME[:PORT]",
                        help="a host name or address clients use (Host/Origin allow-list); repeatable")
    parser.add_argument("--token-file", metavar="FILE", help=f"file holding the bearer token (default: ${TOKEN_ENV})")
    parser.add_argument("--root", help="workspace root (default: $ARCHSMITH_WORKSPACE or the current directory)")
    args = parser.parse_args(argv)
    try:
        serve(http_port=args.http, host=args.host, root=args.root, allow_hosts=args.allow_host, token_file=args.token_file)
    except ArchsmithError as exc:
        print(f"archsmith-mcp: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        pass
