"""What a run leaves for people and tools: metrics.jsonl, status.json, the loss curve (PNG)."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path
from typing import Any

STATUS_FILE = "status.json"


class MetricsLog:
    """Appends one JSON object per line to `path` (rank 0 only). `truncate_after`: on resume, rows of later
    steps (logged after the checkpoint by the interrupted run) are dropped first, so each step appears once."""

    def __init__(self, path: Path, enabled: bool, truncate_after: int = 0):
        self.fh = None
        if not enabled:
            return
        if truncate_after and path.exists():
            from archsmith.files import write_file

            kept = [line for line in path.read_text().splitlines(keepends=True) if _step(line) <= truncate_after]
            write_file(path, "".join(kept), overwrite=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(path, "a", encoding="utf-8")

    def write(self, row: dict[str, Any]) -> None:
        if self.fh is not None:
            self.fh.write(json.dumps({k: v for k, v in row.items() if not k.startswith("_")}) + "\n")
            self.fh.flush()  # a killed run keeps every row it logged

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None


def _step(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):  # a line cut short by a kill
        return float("inf")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl (a last line cut short by a kill is skipped)."""
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return rows


def write_status(out: Path, d, state: str, step: int, steps: int, error: str | None = None) -> None:
    """RUN/status.json (rank 0): state (running, finished, stopped, failed), step, steps, pid, time, error."""
    if not d.main:
        return
    from archsmith.files import write_file

    status = {"state": state, "step": step, "steps": steps, "pid": os.getpid(), "world": d.world,
              "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "error": error}
    write_file(out / STATUS_FILE, json.dumps(status, indent=2) + "\n", overwrite=True)


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
