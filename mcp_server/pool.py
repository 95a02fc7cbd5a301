"""Heavy tools: a bounded pool of worker threads, a time limit per call, a limit per client (session).

Declare a tool heavy with `@heavy` (or `@heavy(timeout_s=3600)` for long work such as training); inside
an async heavy tool, run each blocking step with `await run_heavy(fn, *args)`. A sync heavy tool runs
whole on the pool. Light tools (list_gpus, list_scale_templates, ...) keep the SDK's own worker
threads, which heavy work never takes, so they answer while the pool is full.

Threads, not processes: the engine's heavy calls are bounded (the largest `build_model` is about 4 s
on the meta device, spec fields are capped), a process per call costs a start-up that is larger than
most calls (benchmarks/bench_pool.py, docs/benchmarks.md), and threads share the process's state
(the workspace root, the Hub client settings). A thread cannot be killed: a call past its time limit
answers "timeout" at once and its work is abandoned, but that work keeps its pool thread and its
client's slot until it really ends, so no client can pile up abandoned work beyond its share.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

WORKERS = 4  # heavy jobs running at once in one server: past the core count they only share the GIL and the cores
PER_CLIENT = 2  # heavy jobs one client may run at once, so two clients never fill the pool alone
TIMEOUT_S = 120.0  # per heavy call: a design takes ~0.3 s, the largest build_model ~4 s, a Hub request up to 20 s per try
_HEAVY = "__archsmith_heavy_timeout__"  # attribute @heavy sets on the tool function: its time limit (None: the server's)

current_pool: contextvars.ContextVar[HeavyPool | None] = contextvars.ContextVar("archsmith_heavy_pool", default=None)
current_client: contextvars.ContextVar[object] = contextvars.ContextVar("archsmith_client", default=None)


def heavy(fn: Callable | None = None, *, timeout_s: float | None = None):
    """Mark a tool heavy: it runs on the bounded pool under a time limit (`timeout_s`, else the server's)."""
    def mark(tool: Callable) -> Callable:
        setattr(tool, _HEAVY, timeout_s)
        return tool

    return mark(fn) if fn is not None else mark


def is_heavy(fn: Callable) -> bool:
    return hasattr(fn, _HEAVY)


def time_limit(fn: Callable, default: float) -> float:
    return getattr(fn, _HEAVY, None) or default


def client_key(request_context) -> object:
    """Who a call comes from, for the per-client limit.

    The MCP session id where the transport keeps sessions (streamable HTTP after an initialize handshake);
    else the client's network address and the name it gives (stateless HTTP, stdio, in process). Over stdio
    there is one client per server process.
    """
    if request_context is None:
        return None
    request = request_context.request  # the HTTP request; None over stdio and in process
    session_id = request.headers.get("mcp-session-id") if request is not None else None
    if session_id:
        return ("session", session_id)
    params = request_context.session.client_params
    info = params.client_info if params is not None else None
    address = request.client.host if request is not None and request.client is not None else None
    return ("client", address, (info.name, info.version) if info is not None else None)


class HeavyPool:
    """`workers` threads for heavy jobs; at most `per_client` jobs of one client run (or wait for a thread) at once."""

    def __init__(self, workers: int = WORKERS, per_client: int = PER_CLIENT):
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix="archsmith-heavy")
        self.per_client = per_client
        self._slots: dict[object, asyncio.Semaphore] = {}  # client -> its slots, while it has jobs running or waiting
        self._users: dict[object, int] = {}  # client -> jobs running or waiting

    async def run(self, fn: Callable[..., Any], *args, **kwargs) -> Any:
        """fn(*args, **kwargs) on a pool thread, in this call's context; cancelling the wait abandons the job.

        The client's slot is given back when the job ends, not when the caller stops waiting.
        """
        client = current_client.get()
        slots = self._slots.setdefault(client, asyncio.Semaphore(self.per_client))
        self._users[client] = self._users.get(client, 0) + 1
        try:
            await slots.acquire()
        except BaseException:
            self._leave(client)
            raise
        loop = asyncio.get_running_loop()
        try:
            job = self.executor.submit(contextvars.copy_context().run, functools.partial(fn, *args, **kwargs))
        except BaseException:
            slots.release()
            self._leave(client)
            raise
        job.add_done_callback(lambda _: _call_soon(loop, lambda: (slots.release(), self._leave(client))))
        return await asyncio.wrap_future(job)

    def _leave(self, client: object) -> None:
        self._users[client] -= 1
        if not self._users[client]:
            del self._users[client], self._slots[client]


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    try:
        loop.call_soon_threadsafe(callback)
    except RuntimeError:  # the event loop is closed: the server has stopped
        pass


async def run_heavy(fn: Callable[..., Any], *args, **kwargs) -> Any:
    """Inside a tool: fn on the heavy pool of the server running this call (outside a server: a worker thread)."""
    pool = current_pool.get()
    if pool is None:
        import anyio.to_thread

        return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))
    return await pool.run(fn, *args, **kwargs)


def in_pool(fn: Callable) -> Callable:
    """A sync tool as an async one that runs it on the heavy pool (the SDK reads the signature through __wrapped__)."""
    @functools.wraps(fn)
    async def wrapper(**kwargs):
        return await run_heavy(fn, **kwargs)

    return wrapper
