"""Extend a pretrained decoder that network.py builds: choose its layers, grow its vocabulary, lengthen its context.

    report = extend("runs/base", "runs/longer", context=8192, rope_scaling="yarn")

- layers: the teacher's layer indices, in order (`[0, 1, 2, 3, 3]` repeats the last one, `[0, 2]` drops two); each
  new layer is a copy of the one it names; per-layer choices (`layer_types`, `nope_layers`) follow their layer;
- vocabulary: a larger `vocab_size` keeps every existing row of the embeddings (and of an untied head) and starts
  each new row at the mean of the old ones, so logits of existing tokens are unchanged; a smaller one cuts rows;
- context: a longer `context_length` with RoPE scaling (linear, dynamic or YaRN: factor = new / old context,
  YaRN keeping the original length as `original_max_position_embeddings`);
- sliding windows: `window` tokens on the layers of a pattern (all, alternate, N:1), weights unchanged;
- MoE layers upcycled from the dense MLP (Komatsuzaki et al. 2022): every expert a copy of the layer's MLP, a
  small random router, top-k weights renormalised, so the output equals the dense layer's until training moves
  the experts apart.
A window or MoE layout the model's family cannot express moves it to the registry family that can
(`archsmith.components`); what that family hard-codes is reported, new biases and shared experts start at zero.

The output is a checkpoint directory (config.json + safetensors) transformers' AutoModelForCausalLM loads, written
atomically; the report gives the exact parameter delta (count_params of both specs, equal to the built modules) and,
where the change should not touch them, the largest logit difference on the teacher's tokens.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from archsmith import families
from archsmith.errors import ArchsmithError

ROPE_SCALINGS = ("linear", "dynamic", "yarn")
# What a new family may not change in a pretrained model: anything that alters what its weights compute. Biases may
# appear (they start at zero), existing ones may not go; a shared expert may appear (its output projection is zero).
KEEP = ("qk_norm", "norm", "norm_placement", "ffn_kind", "activation", "position", "num_kv_heads", "fused_qkv", "fused_gate_up")
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


def _layout(spec, window: int | None, window_layers: str | None, moe: str | None, moe_layers: str | None):
    """(the spec with windows and upcycled MoE layers in the family that expresses them, the spec fields that family
    hard-codes) -- unchanged when neither is asked."""
    from archsmith import components
    from archsmith.spec import MoESpec

    chosen = components.parse(moe=moe, moe_layers=moe_layers, window=window, window_layers=window_layers)
    if chosen is None:
        return spec, {}
    if moe is not None and spec.moe is not None:
        raise ArchsmithError("moe", "the model has MoE layers already; upcycling starts from a dense model")
    if window is not None and window >= spec.context_length:
        raise ArchsmithError("window", f"must be shorter than the context {spec.context_length}, got {window}")
    changes: dict[str, Any] = {}
    if moe is not None:
        changes["moe"] = MoESpec(chosen.experts, chosen.top_k, spec.ffn_size,
                                 layers=components.moe_layers(chosen.moe_layers, spec.num_layers))
    if window is not None:
        changes.update(sliding_window=window, layer_types=components.window_types(chosen.window_layers, spec.num_layers))
    from archsmith.hfconfig import hf_from_spec

    laid = dataclasses.replace(spec, **changes)
    try:  # the model's own family first: nothing changes but the layout
        hf_from_spec(laid)
        return laid, {}
    except ArchsmithError as exc:
        computed = families.features(families.get(spec.model_type), spec.extra)
        if computed:  # another family would silently drop what this one computes
            raise ArchsmithError("window" if window is not None else "moe",
                                 f"{spec.model_type} cannot express it ({exc}), and moving to another family would drop "
                                 f"what {spec.model_type} computes: {', '.join(computed)}") from None
    laid = dataclasses.replace(laid, model_type=families.DEFAULT_FAMILY, extra={})
    fit = components.family_for(laid, chosen.chosen, keep=KEEP + tuple(b for b in ("qkv_bias", "o_bias", "mlp_bias") if getattr(spec, b)))
    new = fit.apply(laid)
    if moe is not None and "norm_topk_prob" in families.get(new.model_type).extra:  # identical experts: weights sum to 1
        new = new.replace(extra={**new.extra, "norm_topk_prob": True})
    return new, fit.changes


def _upcycle(name: str, tensor, old_state: dict, order: list[int]) -> None:
    """Fill a tensor the old model lacks: experts from the layer's dense MLP, new biases and
    shared experts' output projections zero (the output is unchanged); routers keep their random start."""
    import torch

    if not name.startswith("model.layers."):
        return
    index, rest = name[len("model.layers."):].split(".", 1)
    mlp = f"model.layers.{order[int(index)]}.mlp."
    if rest == "mlp.experts.gate_up_proj":
        gate = old_state[mlp + "gate_proj.weight"] if mlp + "gate_proj.weight" in old_state else None
        dense = torch.cat((gate, old_state[mlp + "up_proj.weight"])) if gate is not None else old_state[mlp + "up_proj.weight"]
        tensor.copy_(dense.expand_as(tensor))
    elif rest == "mlp.experts.down_proj":
        tensor.copy_(old_state[mlp + "down_proj.weight"].expand_as(tensor))
    elif rest.startswith("mlp.shared_experts.") and rest.endswith("down_proj.weight") or rest.endswith(".bias"):
        tensor.zero_()


def extend(model: str | Path, out: str | Path, layers: list[int] | None = None, vocab: int | None = None,
           context: int | None = None, rope_scaling: str | None = None, window: int | None = None,
           window_layers: str | None = None, moe: str | None = None, moe_layers: str | None = None,
           overwrite: bool = False) -> dict[str, Any]:
    """A new checkpoint in `out` from the one in `model` (see the module docstring); returns the report."""
    import torch

    from archsmith.estimate import count_params
    from archsmith.files import check_out_dir
    from archsmith.network import CausalLM
    from archsmith.spec import MAX_VOCAB

    if layers is None and vocab is None and context is None and window is None and moe is None:
        if rope_scaling is not None:
            raise ArchsmithError("rope_scaling", "applies with a longer context: give context as well")
        raise ArchsmithError("layers", "nothing to change: give layers, vocab, context, window or moe")
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
    new_spec, adopted = _layout(dataclasses.replace(spec, **changes), window, window_layers, moe, moe_layers)
    new = CausalLM.from_spec(new_spec, seed=0).eval()  # initialised: tensors the old model lacks keep this start
    state, old_state = new.state_dict(), old.state_dict()
    rows = min(spec.vocab_size, new_spec.vocab_size)
    with torch.no_grad():
        for name, tensor in state.items():
            source = name
            if name.startswith("model.layers."):
                index, rest = name[len("model.layers."):].split(".", 1)
                source = f"model.layers.{order[int(index)]}.{rest}"
            if source not in old_state:
                _upcycle(name, tensor, old_state, order)
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
                              "context_length": new_spec.context_length, "rope_scaling": new_spec.rope_scaling,
                              "model_type": new_spec.model_type, "sliding_window": new_spec.sliding_window,
                              "layer_types": list(new_spec.resolved_layer_types) if window else None,
                              "moe": dataclasses.asdict(new_spec.moe) if moe else None,
                              "active_params_after": count_params(new_spec)["active"],
                              "adopted": {k: repr(v) for k, v in adopted.items()}}
    if layers is None and context is None:  # vocabulary, windows, MoE: existing tokens' logits must not move
        ids = torch.arange(min(CHECK_TOKENS, rows, new_spec.sliding_window or CHECK_TOKENS))[None]  # within the window
        with torch.no_grad():
            diff = (new(ids).logits[..., :rows] - old(ids).logits[..., :rows]).abs().max().item()
        report["max_logit_diff_existing_tokens"] = diff
    report["files"] = [str(p) for p in new.save_pretrained(out, overwrite=overwrite)]
    return report
