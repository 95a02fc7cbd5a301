"""The accelerator table (data in `data/gpus.yaml`, each entry with its datasheet source)."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Any

import yaml

from archsmith.errors import ArchsmithError


@lru_cache(maxsize=1)
def _table() -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    data = yaml.safe_load(resources.files("archsmith.data").joinpath("gpus.yaml").read_text(encoding="utf-8"))
    aliases = {str(k).lower(): v for k, v in data.pop("aliases", {}).items()}
    return data, aliases


def gpu_table() -> dict[str, dict[str, Any]]:
    """All GPUs by id, each with `id` added."""
    table, _ = _table()
    return {key: {"id": key, **value} for key, value in table.items()}


def get_gpu(name: str) -> dict[str, Any]:
    """Look up a GPU by id or alias (case-insensitive): 'h100', 'A100-80GB', 'mi300x'."""
    table, aliases = _table()
    key = str(name).strip().lower()
    key = aliases.get(key, key)
    if key not in table:
        raise ArchsmithError("gpu", f"unknown GPU {name!r}; known: {', '.join(sorted(table))}")
    return {"id": key, **table[key]}


def memory_bytes(gpu: dict[str, Any]) -> int:
    return int(gpu["memory_gib"] * 2**30)
