#!/usr/bin/env python3
"""Give the installed plugin a Python environment and start archsmith's MCP server from it.

Claude Code copies a marketplace plugin into ~/.claude/plugins/cache/..., where no virtual environment exists.
This script uses the standard library only and runs under any `python3` >= 3.8:

    bootstrap.py serve     the MCP server command in .mcp.json
    bootstrap.py hook      the SessionStart hook in hooks/hooks.json: installs if needed, reports one status line
    bootstrap.py install   the installer (started detached by the two above; can be run by hand)
    bootstrap.py status    one line: ready, installing, failed or not installed
    bootstrap.py run PROGRAM [ARGS]   run `archsmith` or `python` from the environment (bin/ does this)

The server runs from the first of:
  1. ${CLAUDE_PLUGIN_ROOT}/.venv: a checkout where the README's set-up ran;
  2. ${CLAUDE_PLUGIN_DATA}/envs/<stamp>: a venv that `pip install` filled from the plugin's pyproject.toml, with
     the locked versions of constraints.txt (the newest pyproject.toml allows where those do not install). The
     stamp hashes the plugin version, pyproject.toml, the lock and the Python used: only a change re-installs.

pip runs with the user's own configuration (PIP_CONSTRAINT, PIP_INDEX_URL, pip.conf, ...). The install is
detached from Claude Code, whose time limits (30 s for an MCP server to answer `initialize`, the hook's timeout)
would otherwise kill it; its output goes to ${CLAUDE_PLUGIN_DATA}/install.log.

Until the environment is ready, `serve` answers Claude Code itself (the server shows as connected at once). It
lists the real server's tools from hooks/tools.json (written by scripts/tool_list.py) plus `setup_status`, so the
first request of the install's own session already offers them; a call made before the install is done waits
for it (up to CALL_WAIT_S). When the install finishes it starts the real server, hands the session over to it
(with the calls that waited) and sends `notifications/tools/list_changed`.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SCHEME = 3  # bump when the install recipe changes, so every stamp changes with it
EXTRAS = "students,eval"  # pyproject.toml's extras the plugin installs: students of any nn.Module, measured quality
LOCK = "constraints.txt"  # the tested, locked versions (pip -c)
MIN_PYTHON = (3, 11)  # pyproject.toml's requires-python
CANDIDATES = ("python3.13", "python3.12", "python3.11", "python3")  # searched on PATH when ARCHSMITH_PYTHON is unset
POLL_S = 0.5  # how often a waiter looks at the installer's progress
HOOK_WAIT_S = 840  # the hook waits this long (its timeout in hooks.json is 900 s); the install goes on after
STATUS_WAIT_S = 50  # setup_status waits at most this long, so the model can tell the user how it goes
CALL_WAIT_S = 300  # a tool called during the install waits this long for it, then answers that it is installing
TOOL_LIST = "tools.json"  # beside this file: the real server's tools/list, offered while the install runs
SKIP_COPY = {".git", ".venv", ".cache", "__pycache__", "runs", "build", "dist", ".pytest_cache", ".hypothesis",
             "node_modules"}  # never part of the package: caches, environments, outputs
RUN_WAIT_S = 100  # bin/archsmith waits this long for an install (below the Bash tool's 120 s default timeout)
DATA_ENV = "ARCHSMITH_PLUGIN_DATA"  # the data directory, as the hook exports it to the Bash tool
HANDOVER_ID = "archsmith-bootstrap-initialize"  # JSON-RPC id of the initialize request replayed to the real server


class InstallError(Exception):
    """A one-line reason the environment could not be installed."""


# ---- where things live --------------------------------------------------------------------------------------------

def plugin_root() -> Path:
    return Path(os.environ.get("CLAUDE_PLUGIN_ROOT") or Path(__file__).resolve().parents[1])


def data_dir() -> Path:
    """Claude Code's persistent directory for the plugin (it survives updates); outside Claude Code, an XDG one.

    Claude Code sets CLAUDE_PLUGIN_DATA for hooks and servers only; the hook exports it to the Bash tool as
    ARCHSMITH_PLUGIN_DATA (through CLAUDE_ENV_FILE), where bin/archsmith needs it."""
    given = os.environ.get("CLAUDE_PLUGIN_DATA") or os.environ.get(DATA_ENV)
    if given:
        return Path(given)
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "archsmith"


def plugin_version(root: Path) -> str:
    return json.loads((root / ".claude-plugin" / "plugin.json").read_text(encoding="utf-8"))["version"]


def python_version(python: str) -> tuple[int, ...] | None:
    if Path(python).resolve() == Path(sys.executable).resolve():
        return tuple(sys.version_info[:3])
    try:
        out = subprocess.run([python, "-c", "import sys; print(*sys.version_info[:3])"], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return tuple(int(x) for x in out.stdout.split()) if out.returncode == 0 and out.stdout.strip() else None


def find_python() -> tuple[str, tuple[int, ...]]:
    """The interpreter for the venv: $ARCHSMITH_PYTHON, else the first Python >= 3.11 on PATH (this one first)."""
    wanted = os.environ.get("ARCHSMITH_PYTHON")
    candidates = [shutil.which(wanted) or wanted] if wanted else [sys.executable] + [p for p in map(shutil.which, CANDIDATES) if p]
    found = []
    for python in candidates:
        version = python_version(python)
        if version and version >= MIN_PYTHON:
            return str(Path(python).resolve()), version
        found.append(f"{python} ({'.'.join(map(str, version)) if version else 'does not run'})")
    need = ".".join(map(str, MIN_PYTHON))
    raise InstallError(f"archsmith needs Python >= {need}; found {', '.join(found) or 'none'}: install Python {need}+ "
                       f"or set ARCHSMITH_PYTHON to one")


def stamp(root: Path, python: str, version: tuple[int, ...]) -> str:
    """Changes exactly when the plugin version, its dependencies (pyproject.toml) or the Python change."""
    digest = hashlib.sha256()
    lock = root / LOCK
    for part in (f"scheme {SCHEME}", plugin_version(root), (root / "pyproject.toml").read_text(encoding="utf-8"),
                 lock.read_text(encoding="utf-8") if lock.exists() else "", python, ".".join(map(str, version))):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:16]


def checkout_server(root: Path) -> Path | None:
    server = root / ".venv" / "bin" / "archsmith-mcp"
    return server if server.exists() else None


class Layout:
    """The files of one data directory: envs/<stamp>/, install.lock, install.log, install-status.json."""

    def __init__(self, data: Path):
        self.data = data
        self.envs = data / "envs"
        self.lock = data / "install.lock"
        self.log = data / "install.log"
        self.status = data / "install-status.json"

    def env(self, key: str) -> Path:
        return self.envs / key

    def ready(self, key: str) -> Path | None:
        """The server of a completely installed environment, else None."""
        env = self.env(key)
        return env / "bin" / "archsmith-mcp" if (env / "archsmith-ready.json").exists() else None

    def read_status(self) -> dict:
        try:
            return json.loads(self.status.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def write_status(self, **fields) -> None:
        tmp = self.status.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**fields, "time": time.time()}), encoding="utf-8")
        os.replace(tmp, self.status)


def current_stamp(root: Path) -> str | None:
    """The stamp for this machine's Python; None when there is no usable one (the installer then says why)."""
    try:
        python, version = find_python()
    except InstallError:
        return None
    return stamp(root, python, version)


def ready_server(root: Path, layout: Layout) -> Path | None:
    """The server to run now: the checkout's, else a completely installed environment's, else None."""
    key = current_stamp(root)
    return checkout_server(root) or (layout.ready(key) if key else None)


# ---- the installer ------------------------------------------------------------------------------------------------

def locked(path: Path):
    """An exclusive lock on `path` held while the returned file stays open; None if another process holds it."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


def installing(layout: Layout) -> bool:
    handle = locked(layout.lock)
    if handle is None:
        return True
    handle.close()
    return False


def log(message: str) -> None:
    print(f"[archsmith {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(command: list[str], what: str) -> None:
    log(f"{what}: {' '.join(command)}")
    done = subprocess.run(command, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise InstallError(f"{what} failed (exit {done.returncode})")


def last_error(log_path: Path, start: int) -> str:
    """pip's last 'ERROR: ...' line written to the log since `start` (a byte offset): its most useful line."""
    try:
        with open(log_path, "rb") as handle:
            handle.seek(start)
            lines = handle.read().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    errors = [line.strip() for line in lines if line.strip().startswith("ERROR:")]
    return errors[-1][:300] if errors else ""


def copy_sources(root: Path, into: Path) -> Path:
    """The package sources, copied so that building them writes nothing into the plugin's (cache) directory."""
    target = into / "archsmith"
    shutil.copytree(root, target, symlinks=False,
                    ignore=lambda _, names: [n for n in names if n in SKIP_COPY or n.endswith(".egg-info")])
    return target


def install(root: Path, layout: Layout) -> int:
    """Create envs/<stamp> with pip; one installer at a time (a second waits for the first, then finds it ready)."""
    import fcntl

    layout.data.mkdir(parents=True, exist_ok=True)
    with open(layout.lock, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        started = time.time()
        log_start = layout.log.stat().st_size if layout.log.exists() else 0
        try:
            python, version = find_python()
            key = stamp(root, python, version)
            if layout.ready(key):
                layout.write_status(state="ready", stamp=key, message=str(layout.env(key)))
                return 0
            env = layout.env(key)
            layout.write_status(state="installing", stamp=key, pid=os.getpid(), started=started,
                                message=f"installing into {env}")
            shutil.rmtree(env, ignore_errors=True)  # what a killed earlier attempt left
            run([python, "-m", "venv", str(env)], "creating the virtual environment")
            with tempfile.TemporaryDirectory(dir=layout.data, prefix="build-") as tmp:
                source = copy_sources(root, Path(tmp))
                pip = [str(env / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", f"{source}[{EXTRAS}]"]
                try:  # the versions the suite passed with; another Python or OS may lack some of those wheels
                    run([*pip, "-c", str(source / LOCK)], f"pip install (locked versions, {LOCK})")
                except InstallError:
                    log("the locked versions do not install here; installing the newest that pyproject.toml allows")
                    run(pip, "pip install")
            run([str(env / "bin" / "python"), "-c", "import archsmith.mcp_server.server"], "checking the import")
            seconds = round(time.time() - started, 1)
            (env / "archsmith-ready.json").write_text(json.dumps(
                {"stamp": key, "plugin_version": plugin_version(root), "python": python, "seconds": seconds}))
            for old in layout.envs.iterdir():
                if old.name != key:
                    shutil.rmtree(old, ignore_errors=True)
            layout.write_status(state="ready", stamp=key, seconds=seconds, message=f"{env}, installed in {seconds:.0f} s")
            log(f"ready in {seconds:.0f} s")
            return 0
        except Exception as exc:  # whatever it is, the user gets one line and the log the rest
            reason = str(exc) if isinstance(exc, InstallError) else f"{type(exc).__name__}: {exc}"
            detail = last_error(layout.log, log_start)
            layout.write_status(state="failed", message=f"{reason}{': ' + detail if detail else ''}")
            log(f"failed: {reason}")
            return 1


def start_install(root: Path, layout: Layout) -> subprocess.Popen:
    """Run `install` in its own session, so that Claude Code ending this process does not end the install."""
    env = {**os.environ, "CLAUDE_PLUGIN_ROOT": str(root), "CLAUDE_PLUGIN_DATA": str(layout.data)}
    with open(layout.log, "ab") as out:
        return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "install"], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


class Install:
    """One install as its waiters see it: started by `start` unless one is already running, then polled."""

    def __init__(self, root: Path, layout: Layout, start: bool = True):
        self.root, self.layout, self.began = root, layout, time.time()
        self.key = current_stamp(root)
        self.proc = start_install(root, layout) if start and not installing(layout) else None

    def poll(self) -> tuple[str, Path | None]:
        """('ready', server) | ('installing', None) | ('failed', None)."""
        server = self.layout.ready(self.key) if self.key else None
        if server:
            return "ready", server
        running = self.proc.poll() is None if self.proc is not None else installing(self.layout)
        return ("installing" if running else "failed"), None

    def wait(self, seconds: float) -> tuple[str, Path | None]:
        deadline = time.time() + seconds
        while True:
            state, server = self.poll()
            if state != "installing" or time.time() >= deadline:
                return state, server
            time.sleep(POLL_S)

    def line(self, state: str) -> str:
        """The one-line status a user reads."""
        status = self.layout.read_status()
        if state == "ready":
            return f"archsmith: Python environment ready: {status.get('message', self.layout.env(self.key or ''))}"
        if state == "failed" and status.get("state") == "failed":
            return (f"archsmith: installing its Python environment failed: {status.get('message', 'see the log')} "
                    f"(log: {self.layout.log})")
        if state == "failed":
            return f"archsmith: not installed yet; it installs on first use into {self.layout.envs}"
        began = status.get("started", self.began) if status.get("state") == "installing" else self.began
        return (f"archsmith: installing its Python environment (first use, or the plugin's dependencies changed): "
                f"{time.time() - began:.0f} s so far, usually 1-5 min; log: {self.layout.log}")


# ---- the SessionStart hook ----------------------------------------------------------------------------------------

def hook(root: Path, layout: Layout) -> int:
    """Tell the Bash tool where the environment lives; if it is not ready, install (waiting up to HOOK_WAIT_S)
    and report one line to the user. Silent when ready."""
    env_file = os.environ.get("CLAUDE_ENV_FILE")
    if env_file:
        with open(env_file, "a", encoding="utf-8") as handle:
            handle.write(f"export {DATA_ENV}={shlex.quote(str(layout.data))}\n")
    if ready_server(root, layout):
        return 0
    job = Install(root, layout)
    state, _ = job.wait(HOOK_WAIT_S)
    output: dict = {"systemMessage": job.line(state)}
    if state != "ready":
        why = "it failed" if state == "failed" else "it is still running"
        output["hookSpecificOutput"] = {"hookEventName": "SessionStart", "additionalContext": (
            f"The archsmith MCP tools are not available yet: installing their Python environment {why} "
            f"({job.line(state)}). Tell the user; do not compute archsmith's numbers by hand.")}
    print(json.dumps(output))
    return 0


def run_program(root: Path, layout: Layout, program: str, args: list[str]) -> int:
    """Exec `program` (archsmith, python) from the environment, waiting up to RUN_WAIT_S for an install."""
    server = ready_server(root, layout)
    if server is None:
        job = Install(root, layout)
        state, server = job.wait(RUN_WAIT_S)
        if server is None:
            print(job.line(state), file=sys.stderr)
            return 3
    target = server.parent / program
    if not target.exists():
        print(f"archsmith: {program} is not in the environment {server.parent}", file=sys.stderr)
        return 2
    os.execv(str(target), [str(target), *args])
    return 0  # not reached


# ---- the MCP server command ---------------------------------------------------------------------------------------

def listed_tools() -> list[dict]:
    """The real server's tools as hooks/tools.json lists them; none if the file is missing or malformed."""
    try:
        tools = json.loads((Path(__file__).resolve().parent / TOOL_LIST).read_text(encoding="utf-8"))["tools"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [t for t in tools if isinstance(t, dict) and isinstance(t.get("name"), str)] if isinstance(tools, list) else []


class Shim:
    """A minimal MCP server over stdio that stands in while the install runs, then hands over to the real one."""

    def __init__(self, job: Install):
        self.job = job
        self.out_lock = threading.Lock()
        self.init: dict | None = None  # the client's initialize request, replayed to the real server
        self.initialized = False
        self.waiting: list[tuple[float, object]] = []  # setup_status calls waiting for the install: (deadline, id)
        self.tools = listed_tools()
        self.held: list[tuple[float, object, bytes]] = []  # real tools' calls waiting: (deadline, id, the raw line)

    def send(self, message: dict) -> None:
        data = json.dumps(message, separators=(",", ":")) + "\n"
        with self.out_lock:
            sys.stdout.write(data)
            sys.stdout.flush()

    def result(self, id_, result: dict) -> None:
        self.send({"jsonrpc": "2.0", "id": id_, "result": result})

    def status_result(self, state: str) -> dict:
        line = self.job.line(state)
        if state == "ready":
            line = "archsmith: ready; its tools are listed now (tools/list_changed was sent)."
        return {"content": [{"type": "text", "text": line}], "isError": state == "failed"}

    def handle(self, message: dict, state: str, line: bytes) -> None:
        method, id_ = message.get("method"), message.get("id")
        if method is None or id_ is None:  # a notification, or a response to a request we never sent
            self.initialized = self.initialized or method == "notifications/initialized"
            return
        if method == "initialize":
            self.init = message
            version = (message.get("params") or {}).get("protocolVersion") or "2025-06-18"
            self.result(id_, {"protocolVersion": version, "serverInfo": {"name": "archsmith", "version": plugin_version(self.job.root)},
                              "capabilities": {name: {"listChanged": True} for name in ("tools", "resources", "prompts")},
                              "instructions": "archsmith is installing its Python environment; a tool called before it "
                                              "is ready waits for it. setup_status reports progress."})
        elif method == "ping":
            self.result(id_, {})
        elif method == "tools/list":
            self.result(id_, {"tools": self.tools + [{
                "name": "setup_status",
                "description": "archsmith's tools appear when its Python environment is installed (first use). This "
                               "reports the install's progress, waiting up to wait_seconds for it to finish.",
                "inputSchema": {"type": "object", "properties": {"wait_seconds": {
                    "type": "integer", "minimum": 0, "maximum": STATUS_WAIT_S, "default": 30,
                    "description": "How long to wait for the install to finish."}}}}]})
        elif method == "tools/call" and (message.get("params") or {}).get("name") == "setup_status":
            wait = (message["params"].get("arguments") or {}).get("wait_seconds", 30)
            wait = min(max(int(wait), 0), STATUS_WAIT_S) if isinstance(wait, (int, float)) else 30
            self.waiting.append((time.time() + wait, id_))
        elif method == "tools/call" and state == "installing" and any(
                t["name"] == (message.get("params") or {}).get("name") for t in self.tools):
            self.held.append((time.time() + CALL_WAIT_S, id_, line))  # the real server answers it when it starts
        elif method == "tools/call":  # the install failed, or no such tool: say why
            self.result(id_, {"content": [{"type": "text", "text": self.job.line(state)}], "isError": True})
        elif method in ("resources/list", "resources/templates/list", "prompts/list"):
            key = {"resources/list": "resources", "resources/templates/list": "resourceTemplates"}.get(method, "prompts")
            self.result(id_, {key: []})
        else:
            self.send({"jsonrpc": "2.0", "id": id_, "error": {"code": -32601, "message": self.job.line(state)}})

    def answer_waiting(self, state: str, everyone: bool) -> None:
        now = time.time()
        due = [w for w in self.waiting if everyone or state != "installing" or w[0] <= now]
        for entry in due:
            self.waiting.remove(entry)
            self.result(entry[1], self.status_result(state))
        for held in [h for h in self.held if state == "failed" or (state == "installing" and h[0] <= now)]:
            self.held.remove(held)
            self.result(held[1], {"content": [{"type": "text", "text": self.job.line(state)}], "isError": True})

    def hand_over(self, server: Path, incoming: queue.Queue) -> int:
        """Start the real server, replay the handshake and the calls that waited, announce the new lists, then copy
        messages both ways."""
        child = subprocess.Popen([str(server)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        if self.init is not None:  # the client's own initialize; the answer (already given by us) is dropped
            child.stdin.write((json.dumps({**self.init, "id": HANDOVER_ID}) + "\n").encode())
            child.stdin.flush()
            for line in child.stdout:  # skip what the server says before its answer
                if b'"' + HANDOVER_ID.encode() + b'"' in line:
                    break
            if self.initialized:
                child.stdin.write(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
                child.stdin.flush()

        def pump() -> None:
            for line in child.stdout:
                with self.out_lock:
                    sys.stdout.buffer.write(line)
                    sys.stdout.flush()
            os._exit(child.wait())  # the real server ended: so does this process

        threading.Thread(target=pump, daemon=True).start()
        if self.init is not None:
            for kind in ("tools", "resources", "prompts"):
                self.send({"jsonrpc": "2.0", "method": f"notifications/{kind}/list_changed"})
        for _, _, line in self.held:
            child.stdin.write(line)
        child.stdin.flush()
        while (line := incoming.get()) is not None:
            child.stdin.write(line)
            child.stdin.flush()
        child.stdin.close()
        return child.wait()

    def run(self) -> int:
        incoming: queue.Queue = queue.Queue()

        def read() -> None:
            for line in sys.stdin.buffer:
                incoming.put(line)
            incoming.put(None)

        threading.Thread(target=read, daemon=True).start()
        print(self.job.line("installing"), file=sys.stderr, flush=True)
        reported = "installing"
        while True:
            state, server = self.job.poll()
            if state != reported:
                print(self.job.line(state), file=sys.stderr, flush=True)
                reported = state
            self.answer_waiting(state, everyone=state == "ready")
            if server is not None:
                return self.hand_over(server, incoming)
            try:
                line = incoming.get(timeout=POLL_S)
            except queue.Empty:
                continue
            if line is None:
                return 0
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if isinstance(message, dict):
                self.handle(message, state, line if line.endswith(b"\n") else line + b"\n")


def serve(root: Path, layout: Layout, args: list[str]) -> int:
    server = ready_server(root, layout)
    if server is not None:
        os.execv(str(server), [str(server), *args])
    return Shim(Install(root, layout)).run()


# ---- command line -------------------------------------------------------------------------------------------------

def main(argv: list[str]) -> int:
    command = argv[0] if argv else "status"
    root, layout = plugin_root(), Layout(data_dir())
    if command == "serve":
        return serve(root, layout, argv[1:])
    if command == "hook":
        return hook(root, layout)
    if command == "install":
        return install(root, layout)
    if command == "run" and len(argv) >= 2:
        return run_program(root, layout, argv[1], argv[2:])
    if command == "status":
        server = ready_server(root, layout)
        if server is not None:
            print(f"archsmith: ready ({server})")
            return 0
        job = Install(root, layout, start=False)
        print(job.line(job.poll()[0]))
        return 1
    print(f"usage: {Path(__file__).name} serve|hook|install|status|run PROGRAM [ARGS]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
