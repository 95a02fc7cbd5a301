"""Training runs in the background, for the MCP tools: start a detached `archsmith train`, read its state, stop it.

A run started here is a process of its own (a new session, stdin closed, output in RUN/train.log),
not a task of the MCP server: it outlives the request and the server. Its state is read from the
files the run writes (status.json, metrics.jsonl, checkpoints/) and RUN/launch.json (pid, command).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from archsmith.errors import ArchsmithError
from archsmith.train.run import RunArgs, check, record

LOG_FILE, LAUNCH_FILE = "train.log", "launch.json"
LOG_TAIL_LINES = 20  # enough for a traceback's last frames and the error line
_children: dict[str, subprocess.Popen] = {}  # runs this process started: poll() reaps them when they end


def start(args: RunArgs, cwd: str | Path | None = None) -> dict[str, Any]:
    """Validate (errors come back at once), record run.json, then start the run detached; returns its pid and command."""
    from archsmith.files import write_file

    args = args.resolved()
    plan = check(args)
    out = Path(args.out)
    alive = _alive(out)
    if alive:
        raise ArchsmithError("out_dir", f"{out} has a training process running (pid {alive}); stop it first")
    record(plan)
    command = [sys.executable, "-m", "archsmith.cli", "train", *args.argv(), "--no-progress", "--json"]
    if args.nproc > 1:
        command += ["--nproc", str(args.nproc)]
    with open(out / LOG_FILE, "ab") as log:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=cwd,
                                start_new_session=True)
    _children[str(out.resolve())] = proc
    launch = {"pid": proc.pid, "command": command, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_file(out / LAUNCH_FILE, json.dumps(launch, indent=2) + "\n", overwrite=True, field="out_dir")
    return {"run_dir": str(out), "pid": proc.pid, "command": command, "log": str(out / LOG_FILE)}


def status(out: str | Path, rows: int = 1) -> dict[str, Any]:
    """State of the run in `out`: running / finished / stopped / failed / died (killed without a word),
    step and steps, the last `rows` training rows and the last evaluation, checkpoints, and the log's tail on failure."""
    from archsmith.train.checkpoint import CHECKPOINTS, complete
    from archsmith.train.metrics import STATUS_FILE, read_metrics

    out = Path(out)
    if not (out / LAUNCH_FILE).is_file() and not (out / STATUS_FILE).is_file():
        raise ArchsmithError("out_dir", f"{out} holds no training run (no {LAUNCH_FILE} or {STATUS_FILE})")
    st = json.loads((out / STATUS_FILE).read_text()) if (out / STATUS_FILE).is_file() else {"state": "starting", "step": 0}
    alive = _alive(out)
    state = st["state"]
    if state in ("running", "starting") and not alive:
        state = "died" if (out / STATUS_FILE).is_file() else "failed"
    metrics = read_metrics(out / "metrics.jsonl")
    train = [r for r in metrics if r.get("kind") == "train"]
    evals = [r for r in metrics if r.get("kind") == "eval"]
    result = {"run_dir": str(out), "state": state, "alive": bool(alive), "pid": alive or None, "step": train[-1]["step"] if train else 0,
              "steps": st.get("steps"), "last": train[-rows:], "last_eval": evals[-1] if evals else None,
              "checkpoints": [p.name for _, p in complete(out / CHECKPOINTS)], "error": st.get("error")}
    if state in ("failed", "died") and (out / LOG_FILE).is_file():
        result["log_tail"] = (out / LOG_FILE).read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
    if (out / "summary.json").is_file() and state == "finished":
        result["summary"] = json.loads((out / "summary.json").read_text())
    return result


def stop(out: str | Path) -> dict[str, Any]:
    """SIGTERM to the run's process group: it finishes the current step, saves a checkpoint and exits (state 'stopped').

    With several processes torchrun passes the signal on and kills ranks still running 30 s later; a checkpoint cut
    short that way is discarded whole (the previous one stays)."""
    out = Path(out)
    pid = _alive(out)
    if not pid:
        raise ArchsmithError("out_dir", f"{out} has no running training process")
    os.killpg(pid, signal.SIGTERM)  # the run leads its own session: the group holds torchrun and its ranks too
    return {"run_dir": str(out), "pid": pid, "signal": "SIGTERM"}


def _alive(out: Path) -> int | None:
    """The pid of the run's process if it is still running, else None."""
    proc = _children.get(str(out.resolve()))
    if proc is not None:
        return proc.pid if proc.poll() is None else None
    launch = out / LAUNCH_FILE
    if not launch.is_file():
        return None
    pid = json.loads(launch.read_text())["pid"]
    if not Path("/proc").is_dir():  # not Linux: existence only
        try:
            os.kill(pid, 0)
        except OSError:
            return None
        return pid
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    running = stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    return pid if running and b"archsmith" in cmdline else None  # a reused pid belongs to something else
