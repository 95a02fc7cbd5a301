"""Progress of long work on stderr: a rich bar on a terminal, a plain line every few seconds when piped.

    with Progress("training", total=1000, unit="steps") as bar:
        bar.update(step, "loss 3.21  lr 3.0e-04  12,345 tok/s")

Piped to a file or another program, a bar would be silent until the end (or fill the log with redraws), so
there it prints `training: 40/1000 steps, loss 3.21 ... (12 s)` at most every `EVERY_S` seconds
($ARCHSMITH_PROGRESS_EVERY_S), and once at the end of work that took that long; quick work and failures
print nothing more than their result or their one-line error.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from archsmith.units import human_bytes

EVERY_S = float(os.environ.get("ARCHSMITH_PROGRESS_EVERY_S", "10"))
STAGE_DELAY_S = min(3.0, EVERY_S)  # a stage line appears once the stage has run this long


class Progress:
    """Work of `total` units (steps, or bytes with unit="bytes"); nothing at all when not `enabled`."""

    def __init__(self, what: str, total: int, unit: str = "steps", enabled: bool = True, done: int = 0,
                 transient: bool = False):
        self.what, self.total, self.unit, self.enabled, self.done = what, total, unit, enabled, done
        self.transient, self.info, self.bar = transient, "", None
        self.started = self.printed = time.monotonic()

    def __enter__(self) -> "Progress":
        if self.enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich import progress as rp

            columns: list[Any] = ["[progress.description]{task.description}", rp.BarColumn()]
            columns += ([rp.DownloadColumn(), rp.TransferSpeedColumn()] if self.unit == "bytes" else
                        [rp.MofNCompleteColumn(), "{task.fields[info]}", rp.TimeElapsedColumn()])
            self.bar = rp.Progress(*columns, rp.TimeRemainingColumn(), console=Console(stderr=True), transient=self.transient)
            self.task = self.bar.add_task(self.what, total=self.total, completed=self.done, info="")
            self.bar.start()
        return self

    def update(self, done: int, info: str = "") -> None:
        self.done, self.info = done, info
        if self.bar is not None:
            self.bar.update(self.task, completed=done, info=info)
        elif self.enabled and time.monotonic() - self.printed >= EVERY_S:
            self._line()

    def advance(self, n: int) -> None:
        self.update(self.done + n, self.info)

    def _line(self) -> None:
        self.printed = time.monotonic()
        count = (f"{human_bytes(self.done)} of {human_bytes(self.total)}" if self.unit == "bytes" else
                 f"{self.done:,}/{self.total:,} {self.unit}")
        info = f", {self.info}" if self.info else ""
        print(f"{self.what}: {count}{info} ({self.printed - self.started:.0f} s)", file=sys.stderr, flush=True)

    def __exit__(self, kind, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()
        elif self.enabled and self.done and kind is None and time.monotonic() - self.started >= EVERY_S:
            self._line()  # work that took a while ends with its total; a quick one, or a failure, adds no line


class Stages:
    """The stages of a long command as plain lines on stderr (for pipes): a stage is printed only once it has run
    `STAGE_DELAY_S`, so quick work and bad input (one error line) print nothing more."""

    def __init__(self, first: str):
        import threading

        self._lock, self._timer, self._threading = threading.Lock(), None, threading
        self.say(first)

    def say(self, message: str) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            if STAGE_DELAY_S <= 0:  # every stage at once (ARCHSMITH_PROGRESS_EVERY_S=0)
                print(message, file=sys.stderr, flush=True)
                return
            self._timer = self._threading.Timer(STAGE_DELAY_S, lambda: print(message, file=sys.stderr, flush=True))
            self._timer.daemon = True
            self._timer.start()

    def close(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
