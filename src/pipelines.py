"""diffusers pipelines on the Hub: their components and the memory of each, from headers only.

A pipeline repository has `model_index.json` (`{"unet": ["diffusers", "UNet2DConditionModel"], "vae": [...],
"text_encoder": ["transformers", "CLIPTextModel"], "scheduler": [...], "_class_name": ...}`) and one folder per
component. Each component with weights is read from the safetensors headers of its folder (HTTP range requests:
never the weights): exact parameters by dtype, bytes on disk, and memory at fp32 / fp16 / bf16 / int8. Variant files
(`*.fp16.safetensors`, `*.non_ema.safetensors`) are used only where a component has nothing else; the variant read is
named. Components without weights (scheduler, tokenizer, feature extractor) are listed with their class.

`finetune_plan` sizes a fine-tune of the pipeline's UNet (the component that learns; the others stay frozen at the
training dtype) and gives the settings `templates/finetune_diffusers.py.j2` writes into a script.
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


LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]  # diffusers' attention projections (UNet2DConditionModel, UNet2DModel)
LORA_FRACTION = 0.01  # rank-4..16 adapters on the attention projections: about 1% of the UNet
TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")


def finetune_plan(pipeline: dict[str, Any], method: str, usable: int, bf16: bool) -> dict[str, Any]:
    """Memory of a full / LoRA fine-tune of the pipeline's UNet and the script settings, for a GPU with `usable` bytes.

    full: the UNet in fp32 with gradients and AdamW's two moments (16 bytes a parameter), the frozen components at the
    training dtype (2 bytes); lora: everything at 2 bytes, adapters (LORA_FRACTION of the UNet) at 16. Activations
    come on top (they grow with resolution and batch): the numbers are lower bounds, as for text models."""
    rows = {r["component"]: r for r in pipeline["components"]}
    unet = rows.get("unet")
    if unet is None or not unet["params"]:
        denoiser = next((r for r in pipeline["components"] if r["params"] and r["component"] == "transformer"), None)
        named = f"its {denoiser['class']} transformer" if denoiser else "no UNet weights"
        raise ArchsmithError("task", f"{pipeline['class'] or 'this pipeline'} has {named}; the fine-tuning script covers UNet "
                                     "pipelines (Stable Diffusion 1.x / 2.x, DDPM): follow diffusers' training examples for it")
    encoders = [name for name in TEXT_ENCODERS if name in rows]
    if len(encoders) > 1 or unet["class"] not in ("UNet2DConditionModel", "UNet2DModel"):
        raise ArchsmithError("task", f"{pipeline['class']} ({unet['class']}, {len(encoders)} text encoders) needs extra "
                                     "conditioning (SDXL-style); the script covers UNet2DConditionModel with one text "
                                     "encoder and UNet2DModel: follow diffusers' training examples for it")
    frozen = sum(r["params"] for name, r in rows.items() if name != "unet")
    adapters = int(unet["params"] * LORA_FRACTION)
    needs = {"finetune_full": unet["params"] * 16 + frozen * 2,
             "finetune_lora": (unet["params"] + frozen) * 2 + adapters * 16}
    if method == "auto":
        method = "full" if needs["finetune_full"] <= usable else "lora"
    if method not in ("full", "lora"):
        raise ArchsmithError("method", f"a diffusion pipeline is fine-tuned full or with lora; got {method!r}")
    return {"method": method, "needs_bytes": needs, "usable_bytes": usable, "fits": {k: v <= usable for k, v in needs.items()},
            "settings": {"pipeline_class": pipeline["class"], "denoiser": "unet", "denoiser_class": unet["class"],
                         "text_encoder": encoders[0] if encoders else None, "has_vae": "vae" in rows,
                         "frozen": [name for name, r in rows.items() if name != "unet" and r["params"]],
                         "dtype": "bfloat16" if bf16 else "float16", "lora_rank": 8, "lora_alpha": 8,
                         "target_modules": LORA_TARGETS if method == "lora" else [],
                         "learning_rate": 1e-5 if method == "full" else 1e-4}}
