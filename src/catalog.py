"""Reference architectures: real published config.json files shipped with archsmith, with their sources."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml

from archsmith.errors import ArchsmithError

PACKAGE = "archsmith.data.reference_architectures"


@lru_cache(maxsize=1)
def _sources() -> dict[str, dict[str, Any]]:
    return yaml.safe_load(resources.files(PACKAGE).joinpath("SOURCES.yaml").read_text(encoding="utf-8"))


def names() -> list[str]:
    """File stems, e.g. 'meta-llama__Llama-3.1-8B' (the Hub id with '/' written as '__')."""
    return sorted(p.name[:-5] for p in resources.files(PACKAGE).iterdir() if p.name.endswith(".json"))


def reference_config(name: str) -> dict[str, Any]:
    """The published config.json of one reference architecture."""
    if name not in names():
        raise ArchsmithError("name", f"unknown reference architecture {name!r}; known: {', '.join(names())}")
    return json.loads(resources.files(PACKAGE).joinpath(f"{name}.json").read_text(encoding="utf-8"))


def reference_architectures() -> list[dict[str, Any]]:
    """One row per shipped config: Hub id, family, shape, exact parameter count, context, source URL, and the Hub
    metadata offline search checks (task, library, languages, license, gated; None where not known)."""
    from archsmith.estimate import count_params
    from archsmith.hfconfig import spec_from_hf

    rows = []
    for name in names():
        spec = spec_from_hf(reference_config(name))
        source = _sources().get(f"{name}.json", {})
        rows.append({
            "name": name, "repo": source.get("repo", name.replace("__", "/")), "model_type": spec.model_type,
            "params": count_params(spec)["total"], "hidden_size": spec.hidden_size, "num_layers": spec.num_layers,
            "num_heads": spec.num_heads, "num_kv_heads": spec.num_kv_heads, "vocab_size": spec.vocab_size,
            "context_length": spec.context_length, "moe": spec.moe is not None, "license": source.get("license"),
            "task": source.get("task"), "library": source.get("library"), "languages": source.get("languages"),
            "gated": source.get("gated"), "source": source.get("url"),
        })
    return rows
