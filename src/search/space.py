"""A search space as data: `space.yaml` names the factory's keyword arguments and the training settings to try.

    model:                          # keyword arguments of MODEL's factory
      width: {int: [8, 64], step: 8}
      depth: {int: [1, 4]}
      act: {choice: [relu, gelu]}
      dropout: {float: [0.0, 0.3]}
      bias: true                    # a fixed value
    train:                          # lr and weight_decay only
      lr: {float: [1.0e-4, 1.0e-2], log: true}

Each entry is a fixed scalar or exactly one of `int: [low, high]` (with `step`), `float: [low, high]` (with `log`
or `step`) or `choice: [values]`; Optuna's `suggest_*` draws it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from archsmith.errors import ArchsmithError

SECTIONS = ("model", "train")
TRAIN_KEYS = {"lr": 1e-3, "weight_decay": 0.0}  # the training settings a space may set, with their defaults
MAX_PARAMETERS = 32
MAX_CHOICES = 64
MAX_TEXT = 200  # characters of a string value
MAX_FILE = 64 * 1024  # bytes of space.yaml
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


@dataclass(frozen=True)
class Dimension:
    """One searched or fixed value: kind int | float | choice | fixed."""

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()
    value: Any = None

    def suggest(self, trial) -> Any:
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, list(self.choices))
        return self.value


@dataclass(frozen=True)
class Space:
    model: tuple[Dimension, ...]
    train: tuple[Dimension, ...]

    def suggest(self, trial) -> tuple[dict[str, Any], dict[str, Any]]:
        """(factory keyword arguments, training settings) for one trial; `train.` names keep the two apart in Optuna."""
        model = {d.name: d.suggest(trial) for d in self.model}
        train = dict(TRAIN_KEYS)
        train.update({d.name.removeprefix("train."): d.suggest(trial) for d in self.train})
        return model, train

    def to_dict(self) -> dict[str, Any]:
        def one(d: Dimension) -> Any:
            if d.kind == "fixed":
                return d.value
            if d.kind == "choice":
                return {"choice": list(d.choices)}
            return {d.kind: [d.low, d.high], **({"step": d.step} if d.step else {}), **({"log": True} if d.log else {})}

        return {"model": {d.name: one(d) for d in self.model},
                "train": {d.name.removeprefix("train."): one(d) for d in self.train}}


def _scalar(value: Any, where: str) -> Any:
    if isinstance(value, str):
        if len(value) > MAX_TEXT:
            raise ArchsmithError("space", f"{where}: strings are at most {MAX_TEXT} characters")
        return value
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    raise ArchsmithError("space", f"{where}: values are strings, numbers, booleans or null; got {type(value).__name__}")


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ArchsmithError("space", f"{where}: must be a finite number, got {value!r:.40}")
    return value


def _dimension(name: str, entry: Any, where: str) -> Dimension:
    if not isinstance(entry, dict):
        return Dimension(name, "fixed", value=_scalar(entry, where))
    kinds = [k for k in ("int", "float", "choice") if k in entry]
    extra = set(entry) - {"int", "float", "choice", "step", "log"}
    if len(kinds) != 1 or extra:
        raise ArchsmithError("space", f"{where}: give exactly one of int: [low, high], float: [low, high] or choice: [...]"
                                      + (f"; unknown keys {sorted(map(str, extra))}" if extra else ""))
    kind = kinds[0]
    if kind == "choice":
        values = entry["choice"]
        if not isinstance(values, list) or not 1 <= len(values) <= MAX_CHOICES or "step" in entry or "log" in entry:
            raise ArchsmithError("space", f"{where}: choice must be a list of 1 to {MAX_CHOICES} values, without step or log")
        return Dimension(name, "choice", choices=tuple(_scalar(v, where) for v in values))
    bounds = entry[kind]
    if not isinstance(bounds, list) or len(bounds) != 2:
        raise ArchsmithError("space", f"{where}: {kind} must be [low, high]")
    low, high = (_number(b, where) for b in bounds)
    step = _number(entry["step"], where) if entry.get("step") is not None else None
    log = entry.get("log", False)
    if not isinstance(log, bool):
        raise ArchsmithError("space", f"{where}: log must be true or false")
    if kind == "int" and not all(float(v).is_integer() for v in (low, high, step or 1)):
        raise ArchsmithError("space", f"{where}: int bounds and step must be integers")
    if low > high:
        raise ArchsmithError("space", f"{where}: low {low} must be <= high {high}")
    if step is not None and step <= 0:
        raise ArchsmithError("space", f"{where}: step must be > 0, got {step}")
    if log and (low <= 0 or step not in (None, 1)):
        raise ArchsmithError("space", f"{where}: log needs low > 0 and no step")
    return Dimension(name, kind, low, high, step, log)


def parse_space(data: Any) -> Space:
    """A Space from the parsed YAML; errors name `space` and the entry."""
    if not isinstance(data, dict) or not data or set(data) - set(SECTIONS):
        raise ArchsmithError("space", f"must be a mapping with the sections {' and '.join(SECTIONS)}")
    sections = {}
    for section in SECTIONS:
        entries = data.get(section) or {}
        if not isinstance(entries, dict):
            raise ArchsmithError("space", f"{section}: must be a mapping of names to values or ranges")
        for name in entries:
            if not isinstance(name, str) or not NAME.match(name):
                raise ArchsmithError("space", f"{section}: {str(name)[:40]!r} is not a Python identifier")
            if section == "train" and name not in TRAIN_KEYS:
                raise ArchsmithError("space", f"train: {name!r} is not a training setting; allowed: {', '.join(TRAIN_KEYS)}")
        prefix = "train." if section == "train" else ""
        sections[section] = tuple(_dimension(prefix + n, e, f"{section}.{n}") for n, e in entries.items())
    if not sections["model"]:
        raise ArchsmithError("space", "model: name at least one keyword argument of the factory")
    if len(sections["model"]) + len(sections["train"]) > MAX_PARAMETERS:
        raise ArchsmithError("space", f"at most {MAX_PARAMETERS} entries")
    for d in sections["train"]:
        if d.kind == "fixed" and (isinstance(d.value, bool) or not isinstance(d.value, (int, float)) or d.value < 0):
            raise ArchsmithError("space", f"{d.name}: must be a number >= 0")
        if d.kind in ("int", "float") and d.low < 0:
            raise ArchsmithError("space", f"{d.name}: must be >= 0")
    return Space(sections["model"], sections["train"])


def read_space(path: str | Path) -> Space:
    """space.yaml -> Space (at most 64 KiB, YAML safe_load)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ArchsmithError("space", f"{path} is not a file")
    if p.stat().st_size > MAX_FILE:
        raise ArchsmithError("space", f"{path} is larger than {MAX_FILE // 1024} KiB")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ArchsmithError("space", f"{path} is not valid YAML: {str(exc).splitlines()[0][:160]}") from None
    return parse_space(data)
