"""Parse and format the sizes people type: 125M, 1.5B, 100B tokens, 24GB, 3e21 FLOPs."""

from __future__ import annotations

import re

from archsmith.errors import ArchsmithError

_COUNT_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}
_BYTES_SUFFIX = {
    "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}


def parse_count(text: str | int | float, field: str) -> int:
    """'125M' -> 125_000_000, '1.5B' -> 1_500_000_000, '3e21' -> 3*10**21."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmbgt]?)\s*", str(text).lower())
        if not m:
            raise ArchsmithError(field, f"cannot read {text!r}; write a number with an optional K/M/B/T suffix, e.g. 125M or 1.5B")
        value = float(m.group(1)) * _COUNT_SUFFIX[m.group(2)]
    if value <= 0:
        raise ArchsmithError(field, f"must be positive, got {text!r}")
    return int(round(value))


def parse_bytes(text: str | int | float, field: str) -> int:
    """'24GB' -> 24e9 bytes, '80GiB' -> 80 * 2**30 bytes; a bare number is GB."""
    if isinstance(text, (int, float)):
        value, unit = float(text), "gb"
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?i?b)?\s*", str(text).lower())
        if not m:
            raise ArchsmithError(field, f"cannot read {text!r}; write e.g. 24GB or 80GiB")
        value, unit = float(m.group(1)), m.group(2) or "gb"
    if value <= 0:
        raise ArchsmithError(field, f"must be positive, got {text!r}")
    return int(round(value * _BYTES_SUFFIX[unit]))


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
