"""diffusers pipelines on the Hub: their components and the memory of each, from headers only.

A pipeline repository has `model_index.json` (`{"unet": ["diffusers", "UNet2DConditionModel"], "vae": [...],
"text_encoder": ["transformers", "CLIPTextModel"], "scheduler": [...], "_class_name": ...}`) and one folder per
component. Each component with weights is read from the safetensors headers of its folder (HTTP range requests:
never the weights): exact parameters by dtype, bytes on disk, and memory at fp32 / fp16 / bf16 / int8. Variant files
(`*.fp16.safetensors`, `*.non_ema.safetensors`) are used only where a component has nothing else; the variant read is
named. Components without weights (scheduler, tokenizer, feature extractor) are listed with their class.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from archsmith.errors import ArchsmithError

INDEX = "model_index.json"
VARIANT = re.compile(r"\.(fp16|bf16|fp32|non_ema|ema)\.safetensors$")
BYTES_PER_PARAM = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}
MAX_COMPONENTS = 32
NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")


def components(index: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(folder, library, class) of each component model_index.json names, in its order; malformed entries skipped."""
    found = []
    for name, value in list(index.items())[:MAX_COMPONENTS + 8]:
        if name.startswith("_") or not NAME.match(name):
            continue
        if isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value):
            found.append((name, value[0][:64], value[1][:120]))
    return found[:MAX_COMPONENTS]


def read_pipeline(index: dict[str, Any], files: list[str], header: Callable[[str], Any]) -> dict[str, Any]:
    """The pipeline from its model_index.json, the repository's file names and `header(filename)` (a huggingface_hub
    SafetensorsFileMetadata); per component and in total: parameters, dtypes, bytes on disk and memory by precision."""
    rows, problems = [], []
    for name, library, cls in components(index):
        weights = sorted(f for f in files if f.startswith(f"{name}/") and f.count("/") == 1 and f.endswith(".safetensors"))
        chosen = [f for f in weights if not VARIANT.search(f)]
        if not chosen and weights:
            variant = VARIANT.search(weights[0]).group(1)
            chosen = [f for f in weights if f.endswith(f".{variant}.safetensors")]
            problems.append(f"{name}: only variant weights ({variant}); read those")
        params, on_disk, dtypes = 0, 0, {}
        for file in chosen:
            try:
                meta = header(file)
            except ArchsmithError as exc:
                problems.append(f"{name}: {file} not read: {str(exc)[:160]}")
                continue
            for tensor in meta.tensors.values():
                count = tensor.parameter_count
                params += count
                dtypes[tensor.dtype] = dtypes.get(tensor.dtype, 0) + count
                on_disk += tensor.data_offsets[1] - tensor.data_offsets[0]
        rows.append({"component": name, "library": library, "class": cls, "files": chosen, "params": params,
                     "dtypes": dtypes, "bytes_on_disk": on_disk,
                     "memory_bytes": {p: params * b for p, b in BYTES_PER_PARAM.items()} if params else None})
    total = sum(r["params"] for r in rows)
    return {"class": str(index.get("_class_name", ""))[:120] or None,
            "diffusers_version": str(index.get("_diffusers_version", ""))[:40] or None,
            "components": rows, "params": total, "bytes_on_disk": sum(r["bytes_on_disk"] for r in rows),
            "memory_bytes": {p: total * b for p, b in BYTES_PER_PARAM.items()}, "problems": problems}
