"""Training runs in the background, for the MCP tools: start a detached `archsmith train`, read its state, stop it.

The server owns what it starts, whole:

- **The child imports nothing from the workspace.** It runs `python -I -m archsmith.cli train …` (isolated mode:
  no PYTHON* variables, no user site, neither the working directory nor a script's directory on `sys.path`) with
  `/` as its working directory (nothing is created outside the workspace for it), an environment filtered to what
  training needs (no API keys, Hub tokens or other secrets: training never reaches the Hub) and PYTHONSAFEPATH=1
  for torchrun's ranks.
- **The boundary holds in the child for the whole run.** It gets the workspace root (BOUNDARY_ENV) and opens
  RUN once (`archsmith.files.HeldDir`): every later write, rename, rotation and delete is relative to that
  descriptor and never crosses a symlink; a run directory moved or swapped stops the run with one line.
- **Runs are this server's.** Each start is recorded here with its owner (this server instance and the MCP
  client) and its process identity (pid, start time in clock ticks, session id). `stop` signals only a process
  whose identity still matches, and only for the client that started it (SHARE_ENV=1: any client of this
  server); RUN/launch.json is a record for people, never trusted for signalling.
- **Bounded.** At most MAX_RUNS runs at once on a server, MAX_RUNS_PER_CLIENT per client and MAX_PROCS
  processes in all (`nproc` counted); a start beyond them is refused naming the running ones.

Reads of a run's files (`status`) go through the held run directory: a symlink planted there is not followed,
and a file that is one is reported as such in `notes`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from archsmith.errors import ArchsmithError
from archsmith.train.run import BOUNDARY_ENV, RunArgs, check, record

LOG_FILE, LAUNCH_FILE = "train.log", "launch.json"
LOG_TAIL_LINES = 20  # enough for a traceback's last frames and the error line
LOG_TAIL_BYTES = 16 * 1024  # read at most this much of the log's end
SUMMARY_MAX_BYTES = 1 << 20  # a summary.json larger than this is not returned
SHARE_ENV = "ARCHSMITH_SHARE_RUNS"  # 1: any client of the server may stop any of its runs
MAX_RUNS = int(os.environ.get("ARCHSMITH_MAX_RUNS", "4"))
MAX_RUNS_PER_CLIENT = int(os.environ.get("ARCHSMITH_MAX_RUNS_PER_CLIENT", "2"))
MAX_PROCS = int(os.environ.get("ARCHSMITH_MAX_TRAIN_PROCS", str(max(2, os.cpu_count() or 2))))
SERVER_ID = uuid.uuid4().hex[:12]  # this server instance
CHILD_CWD = "/"  # the training process's working directory: never the workspace, and nothing is created for it
# Environment variables a training process keeps (names, or prefixes ending in "_"); everything else is dropped.
KEEP_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM", "LC_", "OMP_NUM_THREADS",
            "MKL_", "OPENBLAS_", "CUDA_", "NVIDIA_", "HIP_", "ROCR_", "PYTORCH_", "TORCH_", "NCCL_", "GLOO_", "TORCHINDUCTOR_",
            "TRITON_", "LD_LIBRARY_PATH", "HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_VERBOSITY", "XDG_CACHE_HOME")
SECRET = re.compile(r"TOKEN|KEY|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH|COOKIE", re.I)


@dataclass(frozen=True)
class Launch:
    """A run this server started: where, for whom, and the process's identity beyond its pid."""

    run: str  # the run directory's real path when it started
    shown: str  # the run directory as the client named it
    pid: int
    start_ticks: int  # /proc/PID/stat field 22: the start time, which a reused pid does not share
    sid: int
    nproc: int
    client: str
    proc: subprocess.Popen


_runs: dict[str, Launch] = {}
_lock = threading.Lock()


def child_environment() -> dict[str, str]:
    """The server's environment filtered to what training needs."""
    keep = {k: v for k, v in os.environ.items()
            if any(k == name or (name.endswith("_") and k.startswith(name)) for name in KEEP_ENV) and not SECRET.search(k)}
    return {**keep, "PYTHONSAFEPATH": "1", "PYTHONNOUSERSITE": "1"}


def _identity(pid: int) -> tuple[int, int] | None:
    """(start time in clock ticks, session id) of a live, non-zombie process; None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    if fields[0] == "Z":  # ended, not yet reaped
        return None
    return int(fields[19]), int(fields[3])  # starttime (field 22), session (field 6)


def _alive(launch: Launch) -> bool:
    if launch.proc.poll() is not None:
        return False
    return _identity(launch.pid) == (launch.start_ticks, launch.sid)


def running(client: str | None = None) -> list[Launch]:
    """This server's runs still alive (of one client, or all)."""
    with _lock:
        return [r for r in _runs.values() if _alive(r) and (client is None or r.client == client)]


def _check_caps(nproc: int, client: str) -> None:
    everyone, mine = running(), running(client)
    named = lambda runs: ", ".join(f"{r.shown} (pid {r.pid}, {r.nproc} process{'es' if r.nproc > 1 else ''})" for r in runs)  # noqa: E731
    if nproc > MAX_PROCS:
        raise ArchsmithError("nproc", f"must be at most {MAX_PROCS} (ARCHSMITH_MAX_TRAIN_PROCS), got {nproc}")
    if len(mine) >= MAX_RUNS_PER_CLIENT:
        raise ArchsmithError("out_dir", f"this client already runs {len(mine)} training runs, the most allowed "
                                        f"(ARCHSMITH_MAX_RUNS_PER_CLIENT={MAX_RUNS_PER_CLIENT}): {named(mine)}; stop one first")
    if len(everyone) >= MAX_RUNS:
        raise ArchsmithError("out_dir", f"the server already runs {len(everyone)} training runs, the most allowed "
                                        f"(ARCHSMITH_MAX_RUNS={MAX_RUNS}): {named(everyone)}")
    busy = sum(r.nproc for r in everyone)
    if busy + nproc > MAX_PROCS:
        raise ArchsmithError("nproc", f"{nproc} more processes would make {busy + nproc}, over the server's "
                                      f"{MAX_PROCS} (ARCHSMITH_MAX_TRAIN_PROCS); running: {named(everyone)}")


def start(args: RunArgs, root: Path, shown: RunArgs, client: str = "local") -> dict[str, Any]:
    """Validate (errors come back at once), record run.json, then start the run detached; returns its pid and the
    command as the client would type it (`shown`: the same settings with the client's workspace-relative paths)."""
    from archsmith.files import write_file

    args = args.resolved()  # defaults (lr, warmup, eval_every) shown as the run takes them
    shown = replace(shown, lr=args.lr, warmup=args.warmup, eval_every=args.eval_every)
    real = str(Path(args.out).resolve())
    with _lock:
        previous = _runs.get(real)
    if previous is not None and _alive(previous):
        raise ArchsmithError("out_dir", f"{shown.out} has a training process running (pid {previous.pid}); stop it first")
    _check_caps(args.nproc, client)
    plan = check(args)
    record(plan)
    write_file(Path(args.out) / "status.json", json.dumps({"state": "starting", "step": 0, "steps": args.steps}) + "\n",
               overwrite=True, field="out")
    args, shown = replace(args, progress=False), replace(shown, progress=False)  # argv() then says --no-progress once
    command = [sys.executable, "-I", "-m", "archsmith.cli", "train", *args.argv(), "--json"]
    if args.nproc > 1:
        command += ["--nproc", str(args.nproc)]
    env = {**child_environment(), BOUNDARY_ENV: str(root)}
    from archsmith.files import HeldDir

    with HeldDir(args.out, "out_dir", create=False) as run, run.open(LOG_FILE, "ab") as log:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=CHILD_CWD,
                                env=env, start_new_session=True, close_fds=True)
    ident = _identity(proc.pid) or (0, proc.pid)
    launch = Launch(real, shown.out, proc.pid, ident[0], ident[1], args.nproc, client, proc)
    with _lock:
        _runs[real] = launch
    typed = ["archsmith", "train", *shown.argv(), "--json"] + (["--nproc", str(args.nproc)] if args.nproc > 1 else [])
    record_ = {"pid": proc.pid, "start_ticks": ident[0], "sid": ident[1], "server": SERVER_ID, "command": typed,
               "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_file(Path(args.out) / LAUNCH_FILE, json.dumps(record_, indent=2) + "\n", overwrite=True, field="out_dir")
    return {"run_dir": shown.out, "pid": proc.pid, "command": typed, "log": f"{shown.out.rstrip('/')}/{LOG_FILE}"}


def status(out: str | Path, rows: int = 1, client: str = "local") -> dict[str, Any]:
    """State of the run in `out`: running / finished / stopped / failed / died (killed without a word), step and
    steps, the last `rows` training rows and the last evaluation, checkpoints, the log's tail on failure, and
    `owner`: "you", "another client" or "another server" (or "unknown" for a run this server did not start)."""
    from archsmith.files import HeldDir
    from archsmith.train.checkpoint import CHECKPOINTS, complete
    from archsmith.train.metrics import STATUS_FILE, read_metrics

    out = Path(out)
    notes: list[str] = []
    with HeldDir(out, "out_dir", create=False) as run:
        kinds = dict(run.listdir())
        for name in (STATUS_FILE, LAUNCH_FILE, "metrics.jsonl", LOG_FILE, "summary.json", CHECKPOINTS):
            if kinds.get(name) == "link":
                notes.append(f"{name} is a symlink; not followed")
        if kinds.get(LAUNCH_FILE) != "file" and kinds.get(STATUS_FILE) != "file":
            raise ArchsmithError("out_dir", f"{out.name} holds no training run (no {LAUNCH_FILE} or {STATUS_FILE})")
        st = _json(run, STATUS_FILE, kinds) or {"state": "starting", "step": 0}
        with _lock:
            launch = _runs.get(str(run.real))
        alive = _alive(launch) if launch is not None else False
        owner = ("unknown" if launch is None else "you" if launch.client == client else "another client")
        if launch is None and (_json(run, LAUNCH_FILE, kinds) or {}).get("server") not in (None, SERVER_ID):
            owner = "another server"
        state = st.get("state", "starting")
        if state in ("running", "starting") and not alive:
            state = ("running" if owner in ("another server", "unknown") and _recent(st) else
                     "died" if state == "running" else "failed")
        metrics = read_metrics(run, limit=rows + 8) if kinds.get("metrics.jsonl") == "file" else []
        train = [r for r in metrics if r.get("kind") == "train"]
        evals = [r for r in metrics if r.get("kind") == "eval"]
        result = {"state": state, "alive": alive, "pid": launch.pid if alive else None, "owner": owner,
                  "step": train[-1]["step"] if train else st.get("step", 0), "steps": st.get("steps"), "last": train[-rows:],
                  "last_eval": evals[-1] if evals else None,
                  "checkpoints": [name for _, name in complete(run)] if kinds.get(CHECKPOINTS) == "dir" else [],
                  "error": st.get("error"), "notes": [*st.get("notes", []), *notes]}
        if state in ("failed", "died") and kinds.get(LOG_FILE) == "file":
            with run.open(LOG_FILE, "rb") as fh:
                fh.seek(max(0, os.fstat(fh.fileno()).st_size - LOG_TAIL_BYTES))
                result["log_tail"] = fh.read().decode("utf-8", errors="replace").splitlines()[-LOG_TAIL_LINES:]
        if state == "finished":
            result["summary"] = _json(run, "summary.json", kinds)
    return result


def _recent(st: dict[str, Any], seconds: float = 600) -> bool:
    """status.json was updated within `seconds` (a run of another server may well be alive)."""
    try:
        return time.time() - time.mktime(time.strptime(st["updated"], "%Y-%m-%dT%H:%M:%S%z")) < seconds
    except (KeyError, ValueError, TypeError):
        return False


def _json(run, name: str, kinds: dict[str, str]) -> dict[str, Any] | None:
    """A small JSON object of the run (a regular file, never through a symlink); None when absent or not one."""
    if kinds.get(name) != "file":
        return None
    with run.open(name, "rb") as fh:
        raw = fh.read(SUMMARY_MAX_BYTES + 1)
    try:
        value = json.loads(raw) if len(raw) <= SUMMARY_MAX_BYTES else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def stop(out: str | Path, client: str = "local") -> dict[str, Any]:
    """SIGTERM to the run's process group: it finishes the current step, saves a checkpoint and exits (state 'stopped').

    Only a run this server started and still running as that process (pid, start time and session checked), and
    only for the client that started it unless SHARE_ENV=1. With several processes torchrun passes the signal on."""
    out = Path(out)
    with _lock:
        launch = _runs.get(str(out.resolve()))
    if launch is None:
        raise ArchsmithError("out_dir", f"{out.name} is not a run this server started; stop it where it was started")
    if launch.client != client and os.environ.get(SHARE_ENV) != "1":
        raise ArchsmithError("out_dir", f"{launch.shown} was started by another client; only that client stops it "
                                        f"(or start the server with {SHARE_ENV}=1)")
    if not _alive(launch):
        raise ArchsmithError("out_dir", f"{launch.shown} has no running training process")
    os.killpg(launch.pid, signal.SIGTERM)  # the run leads its own session: the group holds torchrun and its ranks too
    return {"run_dir": launch.shown, "pid": launch.pid, "signal": "SIGTERM"}
