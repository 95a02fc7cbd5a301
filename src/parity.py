"""Proof that a written config.json means to transformers what it means to `network.py`.

`prove_config(config)` builds a tiny instance of the config — the same family, the same layout switches (window,
per-layer attention kinds, dense and MoE layers, shared experts, NoPE layers) and the same per-layer pattern over the
fewest leading layers that show every kind of layer, at small widths — in transformers (real weights, randomly
initialised and moved off their initial values; no remote code) and in `network.py` from the checkpoint transformers
saves (`archsmith.weights`), and compares their logits on one batch longer than the tiny window. A config that
transformers computes differently is refused with an `ArchsmithError` naming the layout field that makes the
difference. A config without layout switches is its family's own layout, which the family's parity test proves
(status covered); a family network.py does not build cannot be compared (status unproven, with the reason).

Proofs are cached by the tiny config (the layout signature: widths, KV heads and RoPE base are normalised away), so
the designs of one layout pay once per process. A design's proofs take 0.07-0.16 s on two busy CPU cores (0.8 s for
latent attention with MoE; benchmarks/bench_parity.py), after the first proof's imports of torch and transformers
(about 4 s there).
"""

from __future__ import annotations

import json
import tempfile
import threading
from dataclasses import replace
from typing import Any

from archsmith import families
from archsmith.errors import ArchsmithError
from archsmith.spec import ArchitectureSpec

TOL = 1e-4  # max |logit difference| in fp32, as the family tests (tests/test_families.py) allow
HEADS, HEAD_DIMS, FFN, VOCAB = 4, (16, 32, 64, 80, 128), 64, 128  # tiny widths (head_dim: the first whose rotary part is even)
EXPERTS, EXPERT_FFN = 4, 16  # routed experts and expert width of a tiny MoE (more where grouped routing needs them)
WINDOW, SEQ, BATCH, CONTEXT = 8, 24, 2, 128  # a tiny window the probe batch's rows outrun three times
SEED = 0
PERTURB = 0.05  # every weight moved by N(0, 0.05): norm weights of 1 and zero biases would hide a component
FIELDS = {**families.LAYOUT_FIELDS, "experts": "moe"}  # layout switch -> the spec field a refusal names
DIAGNOSIS = ("layer_types", "nope_layers", "dense_layers", "shared_experts", "window", "experts")  # most specific first

_cache: dict[str, dict[str, Any] | ArchsmithError] = {}
_lock = threading.Lock()


def switches(spec: ArchitectureSpec) -> list[str]:
    """The layout switches `spec` turns on: `families.layout_switches`, plus `experts` for MoE layers at all."""
    used = families.layout_switches(spec)
    return used + ["experts"] if spec.moe is not None else used


def signature(spec: ArchitectureSpec, layer: int) -> tuple[str, bool, bool]:
    """What distinguishes layer `layer`: (attention kind, MoE or dense MLP, NoPE)."""
    return spec.resolved_layer_types[layer], spec.moe is not None and spec.is_moe_layer(layer), layer in spec.nope_layers


def pattern_layers(spec: ArchitectureSpec) -> int:
    """The fewest leading layers that hold every kind of layer of `spec` (at least 2 where it has 2)."""
    first: dict[tuple, int] = {}
    for i in range(spec.num_layers):
        first.setdefault(signature(spec, i), i)
    return max(max(first.values()) + 1, min(2, spec.num_layers))


def _head_dim(factor: float) -> int:
    for dim in HEAD_DIMS:
        rot = dim * factor
        if rot == int(rot) and int(rot) >= 2 and int(rot) % 2 == 0:
            return dim
    return HEAD_DIMS[-1]


def tiny(spec: ArchitectureSpec, keep_kv: bool = False) -> ArchitectureSpec:
    """`spec` at small widths over its leading `pattern_layers` layers: same family, switches and per-layer pattern.

    Two KV heads for four query heads, unless `keep_kv` or latent attention: then one, two or four as the spec has one,
    several or one per query head (for families whose config fixes or switches on that)."""
    layers = pattern_layers(spec)
    kv = 2 if not keep_kv and spec.mla is None else HEADS if spec.num_kv_heads == spec.num_heads else 1 if spec.num_kv_heads == 1 else 2
    head_dim = _head_dim(spec.partial_rotary_factor)
    changes: dict[str, Any] = dict(
        hidden_size=HEADS * head_dim, num_layers=layers, num_heads=HEADS, num_kv_heads=kv, head_dim=head_dim, ffn_size=FFN,
        vocab_size=VOCAB, context_length=CONTEXT, rope_theta=10_000.0,
        bos_token_id=None if spec.bos_token_id is None else 1, pad_token_id=None if spec.pad_token_id is None else 0,
        eos_token_id=None if spec.eos_token_id is None else 2,
        sliding_window=WINDOW if spec.sliding_window is not None else None,
        attention_chunk_size=WINDOW if spec.attention_chunk_size is not None else None,
        layer_types=spec.layer_types[:layers] if spec.layer_types is not None else None,
        nope_layers=tuple(i for i in spec.nope_layers if i < layers))
    if spec.mla is not None:
        changes["mla"] = replace(spec.mla, kv_lora_rank=16, q_lora_rank=None if spec.mla.q_lora_rank is None else 32,
                                 qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16)
        changes["head_dim"] = 24
    if spec.linear_attention is not None:
        changes["linear_attention"] = replace(spec.linear_attention, num_key_heads=2, num_value_heads=4, key_head_dim=8,
                                              value_head_dim=8)
    if spec.moe is not None:
        moe = spec.moe
        groups = int(families.setting(spec, "n_group", 1) or 1)
        kept = int(families.setting(spec, "topk_group", 1) or 1)
        most = max(EXPERTS, 2 * groups) // groups * groups  # two experts per group at least
        experts = moe.num_experts if moe.num_experts <= most else most
        top_k = max(1, min(moe.top_k, experts, kept * max(1, experts // groups)))
        moe_layers = None if moe.layers is None else tuple(i for i in moe.layers if i < layers)
        changes["moe"] = replace(moe, num_experts=experts, top_k=top_k, expert_ffn_size=EXPERT_FFN,
                                 shared_experts=min(moe.shared_experts, 2), shared_ffn_size=EXPERT_FFN if moe.shared_ffn_size else 0,
                                 layers=moe_layers)
    return _one_value_per_key(spec.replace(**changes))


def _one_value_per_key(spec: ArchitectureSpec) -> ArchitectureSpec:
    """Sizes the family stores in one config key made equal, to the largest (Mixtral's ffn_size and expert width:
    intermediate_size; DeepSeek's expert and shared-expert widths, the latter 0 without shared experts)."""
    fam = families.get(spec.model_type)
    by_key: dict[str, list[str]] = {}
    for field, key in {**families.KEYS, **fam.keys}.items():
        if key and field.endswith("_size") and (not field.startswith("moe.") or spec.moe is not None):
            by_key.setdefault(key, []).append(field)
    for fields in by_key.values():
        values = {f: getattr(spec.moe, f[4:]) if f.startswith("moe.") else getattr(spec, f) for f in fields}
        if len(fields) > 1 and len(set(values.values())) > 1:
            size = max(values.values())
            top = {f: size for f in fields if "." not in f}
            sub = {f[4:]: size for f in fields if f.startswith("moe.")}
            spec = spec.replace(**top, **({"moe": replace(spec.moe, **sub)} if sub else {}))
    return spec


def prove_config(config: dict[str, Any]) -> dict[str, Any]:
    """Prove `config` (a config.json dict archsmith writes) on a tiny instance; raise ArchsmithError where transformers
    computes it differently from network.py.

    Returns {status, model_type, switches, layers (of the tiny instance), max_abs_diff, tolerance, transformers,
    reason}: status proven (logits within TOL), covered (no layout switch: the family's own layout, which its parity
    test in tests/test_families.py proves), or unproven (network.py does not build the family; reason says why)."""
    from archsmith.hfconfig import spec_from_hf

    spec = spec_from_hf(config)
    fam = families.get(spec.model_type)
    used = switches(spec)
    result = {"model_type": spec.model_type, "switches": used, "layers": None, "max_abs_diff": None, "tolerance": TOL,
              "transformers": families.TRANSFORMERS, "reason": None}
    if fam.parity == "none":
        return {**result, "status": "unproven", "reason": f"network.py does not build {spec.model_type} models (parity none in "
                                                          "the families registry): nothing to compare transformers with"}
    if not used:
        return {**result, "status": "covered", "reason": f"no layout switch: the {spec.model_type} layout its parity test "
                                                         "against transformers proves"}
    small, tiny_config = instance(spec)
    key = json.dumps([families.TRANSFORMERS, tiny_config], sort_keys=True, default=str)
    with _lock:
        found = _cache.get(key)
    if found is None:
        try:
            found = {**result, **_prove(small, tiny_config)}
        except ArchsmithError as exc:
            found = exc
        with _lock:
            _cache[key] = found
    if isinstance(found, ArchsmithError):
        raise found
    return dict(found)


def instance(spec: ArchitectureSpec) -> tuple[ArchitectureSpec, dict[str, Any]]:
    """The tiny instance of `spec` and its fp32 config.json (the KV heads' count is a width, except in families whose
    config fixes it or switches layouts on it: then `tiny(keep_kv=True)`)."""
    from archsmith.hfconfig import hf_from_spec

    try:
        small = tiny(spec)
        return small, hf_from_spec(small, dtype="float32")
    except ArchsmithError:
        small = tiny(spec, keep_kv=True)
        return small, hf_from_spec(small, dtype="float32")


def prove_spec(spec: ArchitectureSpec) -> dict[str, Any]:
    """`prove_config` of the config.json `spec` is written as (its own family)."""
    from archsmith.hfconfig import hf_from_spec

    return prove_config(hf_from_spec(spec))


def _unbuildable(spec: ArchitectureSpec) -> str | None:
    """Why network.py refuses `spec` (None: it builds it)."""
    from archsmith.network import check_buildable

    try:
        check_buildable(spec)
    except ArchsmithError as exc:
        return str(exc)
    return None


def _prove(spec: ArchitectureSpec, config: dict[str, Any]) -> dict[str, Any]:
    """Compare the tiny `spec` (written as `config`) in transformers and network.py: the result's status and numbers."""
    used = switches(spec)
    why = _unbuildable(spec)
    if why is not None:
        return {"status": "unproven", "layers": spec.num_layers, "reason": why}
    diff = logits_diff(config, spec)
    if diff <= TOL:
        return {"status": "proven", "layers": spec.num_layers, "max_abs_diff": diff}
    field, culprit = _culprit(spec, used)
    raise ArchsmithError(field, f"transformers {families.TRANSFORMERS} computes this {spec.model_type} config differently from "
                                f"network.py: logits differ by {diff:.3g} (> {TOL}) on a tiny instance with the same layout "
                                f"({spec.num_layers} layers, {', '.join(used)}){culprit}; write it in a family whose "
                                "transformers code honours it, or drop that choice")


def _culprit(spec: ArchitectureSpec, used: list[str]) -> tuple[str, str]:
    """(field, words) of the layout switch whose removal makes the tiny instance match; the family itself when none."""
    from archsmith.hfconfig import hf_from_spec

    without = {"layer_types": {"layer_types": None}, "window": {"sliding_window": None, "layer_types": None},
               "nope_layers": {"nope_layers": ()}}
    if spec.moe is not None:
        without |= {"dense_layers": {"moe": replace(spec.moe, layers=None)},
                    "shared_experts": {"moe": replace(spec.moe, shared_experts=0, shared_ffn_size=0, shared_expert_gate=False)}}
    for switch in sorted(used, key=DIAGNOSIS.index):
        if switch not in without:
            continue
        try:
            other = spec.replace(**without[switch])  # without layer_types: a window, if any, on every layer
            if _unbuildable(other) is None and logits_diff(hf_from_spec(other, dtype="float32"), other) <= TOL:
                return FIELDS[switch], f"; without {FIELDS[switch]} the two agree, so transformers does not honour it"
        except ArchsmithError:
            continue
    return "model_type", ""


def layout(spec: ArchitectureSpec) -> dict[str, Any]:
    """The layout fields of `spec` a proof holds fixed, by the field a refusal names."""
    moe = spec.moe
    every = moe is None or moe.layers is None or tuple(moe.layers) == tuple(range(spec.num_layers))
    return {"layer_types": spec.resolved_layer_types, "sliding_window": spec.sliding_window, "nope_layers": tuple(spec.nope_layers),
            "moe": moe is not None, "moe.layers": None if every else tuple(moe.layers),
            "moe.shared_experts": moe.shared_experts if moe is not None else 0}


def logits_diff(config: dict[str, Any], expected: ArchitectureSpec | None = None) -> float:
    """Max |logit difference| between transformers and network.py (same weights, fp32) on a seeded batch, on one
    thread (tiny matrices: more threads only contend, 1000x slower on a busy machine).

    network.py reads the config transformers saves; with `expected`, a layout field that comes back other than
    `expected` has it (transformers' config class dropped or rewrote it) is refused, naming the field."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _logits_diff(config, expected)
    finally:
        torch.set_num_threads(threads)


def _logits_diff(config: dict[str, Any], expected: ArchitectureSpec | None) -> float:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from archsmith.weights import load_pretrained

    fam = families.get(config["model_type"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        try:
            theirs = AutoModelForCausalLM.from_config(AutoConfig.for_model(**json.loads(json.dumps(config))),
                                                      attn_implementation="eager", experts_implementation="eager",
                                                      trust_remote_code=False).eval()
        except Exception as exc:  # noqa: BLE001 - whatever transformers raises on a config it cannot build
            raise ArchsmithError("model_type", f"transformers {families.TRANSFORMERS} refuses this {fam.model_type} config: "
                                               f"{str(exc)[:300]}") from None
    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for tensor in theirs.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.randn(tensor.shape, generator=gen) * PERTURB)
    with tempfile.TemporaryDirectory(prefix="archsmith-proof-") as tmp:
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # no "Writing model shards" bar on the user's terminal
        try:
            theirs.save_pretrained(tmp)
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        ours = load_pretrained(tmp, dtype=torch.float32).eval()
    if expected is not None:
        kept, wanted = layout(ours.spec), layout(expected)
        for field in wanted:
            if kept[field] != wanted[field]:
                raise ArchsmithError(field, f"transformers {families.TRANSFORMERS} saves this {fam.model_type} config with "
                                            f"{field} {kept[field]!r:.80} instead of {wanted[field]!r:.80}: its config class "
                                            "does not keep what was written")
    ours.set_attention("eager")
    ids = torch.randint(3, VOCAB, (BATCH, SEQ), generator=gen)
    with torch.no_grad():
        a = ours(ids).logits
        try:
            b = theirs(input_ids=ids).logits
        except Exception as exc:  # noqa: BLE001 - a config transformers builds but cannot run
            raise ArchsmithError("model_type", f"transformers {families.TRANSFORMERS} cannot run this {fam.model_type} config: "
                                               f"{type(exc).__name__}: {str(exc)[:300]}") from None
    finite = torch.isfinite(a) & torch.isfinite(b)
    if not torch.equal(finite, torch.isfinite(a)) or not torch.equal(finite, torch.isfinite(b)):
        return float("inf")
    return float((a - b)[finite].abs().max()) if finite.any() else 0.0
