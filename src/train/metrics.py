"""What a run leaves for people and tools: metrics.jsonl, status.json, the loss curve (PNG)."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path
from typing import Any, Protocol

from archsmith.files import HeldDir

STATUS_FILE, METRICS_FILE = "status.json", "metrics.jsonl"
ROW_BYTES = 512  # more than a metrics row takes: status reads this many bytes per row it returns


class Logger(Protocol):
    """Any experiment logger with the usual `log(metrics, step)` method (a wandb Run, a TensorBoardLog, ...)."""

    def log(self, metrics: dict[str, float], step: int) -> Any: ...


class MetricsLog:
    """Appends one JSON object per line to RUN/metrics.jsonl (rank 0 only), through the held run directory, and hands
    each row's numbers to `loggers` as {"<kind>/<name>": value} at its step (train/loss, eval/loss, ...).
    `truncate_after`: on resume, rows of later steps (logged after the checkpoint by the interrupted run) are
    dropped first, so each step appears once."""

    def __init__(self, run: HeldDir, enabled: bool, truncate_after: int = 0, loggers: list[Logger] | tuple = ()):
        self.fh, self.run, self.loggers = None, run, list(loggers) if enabled else []
        if not enabled:
            return
        if truncate_after and run.exists(METRICS_FILE):
            with run.open(METRICS_FILE, "r", encoding="utf-8") as fh:
                kept = [line for line in fh.read().splitlines(keepends=True) if _step(line) <= truncate_after]
            run.write(METRICS_FILE, "".join(kept))
        self.fh = run.open(METRICS_FILE, "a", encoding="utf-8")

    def write(self, row: dict[str, Any]) -> None:
        if self.fh is not None:
            self.run.check()  # the open file moves with its directory: never append to one moved away
            self.fh.write(json.dumps({k: v for k, v in row.items() if not k.startswith("_")}) + "\n")
            self.fh.flush()  # a killed run keeps every row it logged
        numbers = {f"{row['kind']}/{k}": float(v) for k, v in row.items()
                   if k not in ("kind", "step") and not k.startswith("_") and isinstance(v, (int, float)) and not isinstance(v, bool)}
        for logger in self.loggers:
            logger.log(numbers, row["step"])

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None
        for logger in self.loggers:
            if hasattr(logger, "close"):
                logger.close()


TENSORBOARD_DIR = "tensorboard"


class TensorBoardLog:
    """Scalars as TensorBoard event files in RUN/tensorboard (tensorboardX; `tensorboard --logdir RUN/tensorboard`).
    `purge_step`: a resumed run first hides the events its interrupted predecessor wrote from that step on."""

    def __init__(self, run: HeldDir, purge_step: int | None = None):
        from tensorboardX import SummaryWriter

        from archsmith.files import fd_path

        self.held = run.sub(TENSORBOARD_DIR)  # held open: the writer's files land in this directory wherever it moves
        self.writer = SummaryWriter(fd_path(self.held.fd), purge_step=purge_step or None, flush_secs=10)

    def log(self, metrics: dict[str, float], step: int) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)

    def close(self) -> None:
        self.writer.close()
        self.held.close()


def _step(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):  # a line cut short by a kill
        return float("inf")


def read_metrics(run: HeldDir | str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """The rows of RUN/metrics.jsonl (a last line cut short by a kill is skipped); `run` is the held run directory
    or its path. `limit`: only the last bytes that hold about that many rows are read (status of a long run)."""
    if not isinstance(run, HeldDir):
        with HeldDir(run, "out", create=False) as held:
            return read_metrics(held, limit)
    if run.exists(METRICS_FILE) != "file":
        return []
    with run.open(METRICS_FILE, "rb") as fh:
        if limit is not None:
            size = os.fstat(fh.fileno()).st_size
            fh.seek(max(0, size - limit * ROW_BYTES))
        text = fh.read().decode("utf-8", errors="replace")
    rows = []
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def write_status(run: HeldDir, d, state: str, step: int, steps: int, error: str | None = None,
                 notes: list[str] | None = None) -> None:
    """RUN/status.json (rank 0): state (running, finished, stopped, failed), step, steps, pid, time, error, notes."""
    if not d.main:
        return
    status = {"state": state, "step": step, "steps": steps, "pid": os.getpid(), "world": d.world,
              "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "error": error, "notes": list(notes or [])}
    run.write(STATUS_FILE, json.dumps(status, indent=2) + "\n")


def loss_curve(rows: list[dict[str, Any]]) -> bytes:
    """PNG: training loss per step, held-out loss at its evaluations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in rows if r.get("kind") == "train"]
    evals = [r for r in rows if r.get("kind") == "eval"]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="training loss", linewidth=1)
    if evals:
        ax.plot([r["step"] for r in evals], [r["loss"] for r in evals], "o-", label="held-out loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats per token)" if any("nll" in r for r in rows) else "loss")
    ax.set_title("Loss curve")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
