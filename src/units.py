"""Parse and format the sizes people type: 125M, 1.5B, 100B tokens, 24GB, 3e21 FLOPs."""

from __future__ import annotations

import math
import re

from archsmith.errors import ArchsmithError

_COUNT_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}
_BYTES_SUFFIX = {
    "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}


_NUMBER = r"\s*([+-]?[0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)\s*"  # sign, digits, decimals, exponent, unit


def parse_count(text: str | int | float, field: str, low: int = 1, high: int | None = None) -> int:
    """'125M' -> 125_000_000, '1.5B' -> 1_500_000_000, '3e21' -> 3*10**21; refused outside [low, high]."""
    value = _read(text, field, _COUNT_SUFFIX, "", "write a number with an optional K/M/B/T suffix, e.g. 125M or 1.5B")
    return _in_range(value, text, field, low, high, _plain)


def parse_bytes(text: str | int | float, field: str, low: int = 1, high: int | None = None) -> int:
    """'24GB' -> 24e9 bytes, '80GiB' -> 80 * 2**30 bytes; a bare number is GB; refused outside [low, high] bytes."""
    value = _read(text, field, _BYTES_SUFFIX, "gb", "write e.g. 24GB or 80GiB")
    return _in_range(value, text, field, low, high, human_bytes)


def _read(text: str | int | float, field: str, units: dict[str, int], default: str, hint: str) -> float:
    """The number `text` stands for: a number (in the default unit) or a string of digits and one of `units`."""
    if isinstance(text, (int, float)):
        return float(text) * units[default]
    m = re.fullmatch(_NUMBER, str(text).lower())
    if not m or (m.group(2) or default) not in units:
        raise ArchsmithError(field, f"cannot read {text!r}; {hint}")
    return float(m.group(1)) * units[m.group(2) or default]


def _in_range(value: float, text: object, field: str, low: int, high: int | None, show) -> int:
    """`value` as an int when it is finite, positive and in [low, high]; else an error naming the field and the range."""
    allowed = f"in [{show(low)}, {show(high)}]" if high is not None else f">= {show(low)}"
    if not math.isfinite(value):
        raise ArchsmithError(field, f"must be a finite number {allowed}, got {text!r}")
    if value <= 0:
        raise ArchsmithError(field, f"must be positive ({allowed}), got {text!r}")
    n = int(round(value))
    if n < low or (high is not None and n > high):
        raise ArchsmithError(field, f"must be {allowed}, got {text!r}")
    return n


def _plain(n: float) -> str:
    """1_000_000 -> '1,000,000'; 1e28 -> '1e28' (digits stop helping past 15 of them)."""
    return f"{int(n):,}" if n < 10**15 else f"{n:.0e}".replace("e+", "e")


def human_count(n: float) -> str:
    """1_235_814_400 -> '1.24B'."""
    for div, suffix in ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "K")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suffix}"
    return f"{n:.3g}"


def human_bytes(n: float) -> str:
    """Binary units, as nvidia-smi and torch.cuda report them: 1.5 GiB."""
    for div, suffix in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(n) >= div:
            return f"{n / div:.2f} {suffix}"
    return f"{n:.0f} B"


def human_duration(seconds: float) -> str:
    """Seconds -> '3.2 days' / '5.1 h' / '12 min'."""
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 120:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.1f} s"
