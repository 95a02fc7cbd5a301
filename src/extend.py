"""Extend a pretrained decoder that network.py builds: choose its layers, grow its vocabulary, lengthen its context.

    report = extend("runs/base", "runs/longer", context=8192, rope_scaling="yarn")

- layers: the teacher's layer indices, in order (`[0, 1, 2, 3, 3]` repeats the last one, `[0, 2]` drops two); each
  new layer is a copy of the one it names; per-layer choices (`layer_types`, `nope_layers`) follow their layer;
- vocabulary: a larger `vocab_size` keeps every existing row of the embeddings (and of an untied head) and starts
  each new row at the mean of the old ones, so logits of existing tokens are unchanged; a smaller one cuts rows;
- context: a longer `context_length` with RoPE scaling (linear, dynamic or YaRN: factor = new / old context,
  YaRN keeping the original length as `original_max_position_embeddings`).

The output is a checkpoint directory (config.json + safetensors) transformers' AutoModelForCausalLM loads, written
atomically; the report gives the exact parameter delta (count_params of both specs, equal to the built modules) and,
where the change should not touch them, the largest logit difference on the teacher's tokens.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from archsmith.errors import ArchsmithError

ROPE_SCALINGS = ("linear", "dynamic", "yarn")
CHECK_TOKENS = 32  # tokens of the logits check


def _layers(spec, layers: list[int] | None) -> tuple[list[int], dict[str, Any]]:
    """(teacher index of each new layer, the spec fields that change with them)."""
    if layers is None:
        return list(range(spec.num_layers)), {}
    if not isinstance(layers, list) or not layers or not all(type(i) is int and 0 <= i < spec.num_layers for i in layers):
        raise ArchsmithError("layers", f"must be a non-empty list of layer indices in [0, {spec.num_layers}), got {layers!r:.80}")
    if spec.moe is not None or spec.linear_attention is not None or spec.mla is not None:
        raise ArchsmithError("layers", "this model's layers are not all alike (MoE, MLA or linear-attention layouts): "
                                       "choosing layers is for dense decoders")
    changes: dict[str, Any] = {"num_layers": len(layers)}
    if spec.layer_types is not None:
        changes["layer_types"] = tuple(spec.layer_types[i] for i in layers)
    if spec.nope_layers:
        changes["nope_layers"] = tuple(new for new, old in enumerate(layers) if old in spec.nope_layers)
    return layers, changes


def _context(spec, context: int | None, rope_scaling: str | None) -> dict[str, Any]:
    if context is None:
        if rope_scaling is not None:
            raise ArchsmithError("rope_scaling", "applies with a longer context: give context as well")
        return {}
    if type(context) is not int or not spec.context_length < context <= 1 << 22:
        raise ArchsmithError("context", f"must be an integer above the current {spec.context_length} and at most {1 << 22}, got {context!r}")
    if spec.position != "rope":
        raise ArchsmithError("context", f"lengthening needs RoPE positions; this model uses {spec.position!r}")
    if rope_scaling not in ROPE_SCALINGS:
        raise ArchsmithError("rope_scaling", f"must be one of {', '.join(ROPE_SCALINGS)}; got {rope_scaling!r}")
    if spec.rope_scaling and spec.rope_scaling.get("rope_type", "default") != "default":
        raise ArchsmithError("rope_scaling", f"the model already scales RoPE ({spec.rope_scaling.get('rope_type')}); "
                                             "extending a scaled model is not supported")
    factor = context / spec.context_length
    scaling: dict[str, Any] = {"rope_type": rope_scaling, "factor": factor}
    if rope_scaling == "yarn":
        scaling["original_max_position_embeddings"] = spec.context_length
    return {"context_length": context, "rope_scaling": scaling}


def extend(model: str | Path, out: str | Path, layers: list[int] | None = None, vocab: int | None = None,
           context: int | None = None, rope_scaling: str | None = None, overwrite: bool = False) -> dict[str, Any]:
    """A new checkpoint in `out` from the one in `model` (see the module docstring); returns the report."""
    import torch

    from archsmith.estimate import count_params
    from archsmith.files import check_out_dir
    from archsmith.network import CausalLM
    from archsmith.spec import MAX_VOCAB

    if layers is None and vocab is None and context is None:
        if rope_scaling is not None:
            raise ArchsmithError("rope_scaling", "applies with a longer context: give context as well")
        raise ArchsmithError("layers", "nothing to change: give layers, vocab or context")
    check_out_dir(out, overwrite)
    try:
        old = CausalLM.from_pretrained(model, dtype=torch.float32).eval()
    except ArchsmithError as exc:
        raise ArchsmithError("model", str(exc).split(": ", 1)[-1]) from None
    spec = old.spec
    order, changes = _layers(spec, layers)
    if vocab is not None:
        if type(vocab) is not int or not 1 <= vocab <= MAX_VOCAB:
            raise ArchsmithError("vocab", f"must be an integer in [1, {MAX_VOCAB}], got {vocab!r}")
        changes["vocab_size"] = vocab
    changes.update(_context(spec, context, rope_scaling))
    new_spec = dataclasses.replace(spec, **changes)
    torch.manual_seed(0)
    new = CausalLM(new_spec).eval()
    state, old_state = new.state_dict(), old.state_dict()
    rows = min(spec.vocab_size, new_spec.vocab_size)
    with torch.no_grad():
        for name, tensor in state.items():
            source = name
            if name.startswith("model.layers."):
                index, rest = name[len("model.layers."):].split(".", 1)
                source = f"model.layers.{order[int(index)]}.{rest}"
            if source not in old_state:
                continue
            value = old_state[source]
            if value.shape == tensor.shape:
                tensor.copy_(value)
            elif name in ("model.embed_tokens.weight", "lm_head.weight", "lm_head.bias"):  # vocabulary rows
                tensor[:rows] = value[:rows]
                tensor[rows:] = value.mean(0)
            else:
                raise ArchsmithError("model", f"{name}: {tuple(value.shape)} does not map to {tuple(tensor.shape)}")
    if new_spec.tie_embeddings:
        new.tie_weights()
    before, after = count_params(spec)["total"], count_params(new_spec)["total"]
    built = sum(p.numel() for p in new.parameters())
    if built != after:
        raise RuntimeError(f"count_params gives {after:,} but the built model has {built:,}")
    report: dict[str, Any] = {"model": str(model), "out": str(out), "params_before": before, "params_after": after,
                              "params_delta": after - before, "layers": order, "vocab_size": new_spec.vocab_size,
                              "context_length": new_spec.context_length, "rope_scaling": new_spec.rope_scaling}
    if layers is None and context is None:  # only the vocabulary changed: existing tokens' logits must not move
        ids = torch.arange(min(CHECK_TOKENS, rows))[None]
        with torch.no_grad():
            diff = (new(ids).logits[..., :rows] - old(ids).logits[..., :rows]).abs().max().item()
        report["max_logit_diff_existing_tokens"] = diff
    report["files"] = [str(p) for p in new.save_pretrained(out, overwrite=overwrite)]
    return report
