"""Heavy tools: a bounded pool of worker threads, a time limit per call, a limit per client (session).

Declare a tool heavy with `@heavy` (or `@heavy(timeout_s=3600)` for long work such as training); inside
an async heavy tool, run each blocking step with `await run_heavy(fn, *args)`. A sync heavy tool runs
whole on the pool. Light tools (list_gpus, list_scale_templates, ...) keep the SDK's own worker
threads, which heavy work never takes, so they answer while the pool is full.

Threads, not processes: the engine's heavy calls are bounded (the largest `build_model` is about 4 s
on the meta device, spec fields are capped), a process per call costs a start-up that is larger than
most calls (benchmarks/bench_pool.py, docs/benchmarks.md), and threads share the process's state
(the workspace root, the Hub client settings). A call past its time limit is stopped where it stands:
its thread gets `Stopped` raised at the next Python bytecode it runs (CPython's per-thread asynchronous
exception), which unwinds the engine's code through its `finally` blocks and `with` exits. A thread inside one
long C call (a big matmul, a blocking read) stops when that call returns; until then the work keeps its pool
thread and its client's slot, so no client can pile up work beyond its share. `Stopped` derives from
BaseException, so the engine's `except Exception` handlers do not swallow it.
"""

from __future__ import annotations

import asyncio
import contextvars
import ctypes
import functools
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

WORKERS = 4  # heavy jobs running at once in one server: past the core count they only share the GIL and the cores
PER_CLIENT = 2  # heavy jobs one client may run at once, so two clients never fill the pool alone
TIMEOUT_S = 120.0  # per heavy call: a design takes ~0.3 s, the largest build_model ~4 s, a Hub request up to 20 s per try
STOP_GRACE_S = 1.0  # after a time limit, how long the answer waits for the stopped work to end (to say it has)
_HEAVY = "__archsmith_heavy_timeout__"  # attribute @heavy sets on the tool function: its time limit (None: the server's)

current_pool: contextvars.ContextVar[HeavyPool | None] = contextvars.ContextVar("archsmith_heavy_pool", default=None)
current_client: contextvars.ContextVar[object] = contextvars.ContextVar("archsmith_client", default=None)
current_jobs: contextvars.ContextVar[list | None] = contextvars.ContextVar("archsmith_jobs", default=None)  # this call's jobs


class Stopped(BaseException):
    """Raised inside a heavy job's thread when its call passed its time limit (or its caller went away)."""


def _raise_in(thread_id: int, exc: type[BaseException] | None) -> None:
    """Have thread `thread_id` raise `exc` at its next bytecode (None: withdraw one not raised yet)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc else None)


class Job:
    """One heavy call on a pool thread, which `stop` interrupts.

    The lock orders `stop` against the job's start and end: a job stopped before it starts never runs, one stopped
    while it runs gets `Stopped` in its thread, one that has ended is left alone, and an interruption that arrives
    as the job ends is withdrawn, so it never reaches the pool's own code.
    """

    def __init__(self, fn: Callable[[], Any]):
        self.fn = fn
        self.lock = threading.Lock()
        self.thread: int | None = None
        self.state = "waiting"  # -> running -> ended
        self.stopped = False
        self.future: Future | None = None

    def run(self) -> Any:
        with self.lock:
            if self.stopped:
                self.state = "ended"
                raise Stopped("stopped before it started")
            self.thread, self.state = threading.get_ident(), "running"
        try:
            return self.fn()
        finally:
            self._end()

    def _end(self) -> None:
        while True:
            try:
                with self.lock:
                    self.state = "ended"
                    if self.stopped:
                        _raise_in(self.thread, None)  # an interruption still pending is for fn, which has returned
                return
            except Stopped:  # it arrived between fn's end and the lock: once only, so the next try ends
                continue

    def stop(self) -> None:
        """Interrupt the job where it stands (or keep it from starting); a no-op once it has ended."""
        with self.lock:
            if self.stopped or self.state == "ended":
                return
            self.stopped = True
            if self.state == "running":
                _raise_in(self.thread, Stopped)
        if self.future is not None:
            self.future.cancel()  # still queued for a pool thread: it never starts

    @property
    def ended(self) -> bool:
        return self.future is not None and self.future.done()


async def settle(jobs: list[Job] | None, grace_s: float) -> bool:
    """Wait up to `grace_s` for stopped jobs to end; True when all of them have."""
    futures = [asyncio.wrap_future(job.future) for job in jobs or () if job.future is not None and not job.future.done()]
    if futures:
        done, pending = await asyncio.wait(futures, timeout=grace_s)
        for future in done:
            if not future.cancelled():
                future.exception()  # a stopped job ends in Stopped: expected, not an error to log
        for future in pending:
            future.cancel()  # stop waiting (the job itself is not cancelled by this once it runs)
    return all(job.ended for job in jobs or ())


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
        """fn(*args, **kwargs) on a pool thread, in this call's context; cancelling the wait (the call's time limit)
        stops the job (see `Job`).

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
        job = Job(functools.partial(contextvars.copy_context().run, functools.partial(fn, *args, **kwargs)))
        try:
            job.future = self.executor.submit(job.run)
        except BaseException:
            slots.release()
            self._leave(client)
            raise
        job.future.add_done_callback(lambda _: _call_soon(loop, lambda: (slots.release(), self._leave(client))))
        jobs = current_jobs.get()
        if jobs is not None:
            jobs.append(job)
        try:
            return await asyncio.wrap_future(job.future)
        except asyncio.CancelledError:
            job.stop()
            raise

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
