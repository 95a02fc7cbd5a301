"""Component choices of a designed decoder, and the transformers family that expresses them.

The designer starts from the Llama defaults (GQA, SwiGLU, RoPE, RMSNorm). A choice (`--moe 8:2
--moe-layers upper`, `--window 1024`, `--position alibi`, `--norm layernorm`, `--attention mla`)
changes the spec; the family is then the registry row that expresses the changed spec with the
fewest further changes (what that row's transformers code hard-codes: QK-norm, biases, a shared
expert), never undoing a choice. Every choice and every adopted change is stated with its cost in
parameters and KV cache, measured by `estimate` against the same shape without it.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from archsmith import estimate as est
from archsmith import families, parity
from archsmith.errors import ArchsmithError
from archsmith.spec import MLASpec, MoESpec, ArchitectureSpec

MOE_LAYERS = ("all", "upper", "lower", "alternate")  # every layer, the upper / lower half, every odd layer
WINDOW_LAYERS_HELP = "all, alternate (even layers slide, odd ones attend fully) or N:1 (N sliding layers, then one full)"
POSITIONS = ("rope", "alibi", "learned")
NORMS = ("rmsnorm", "layernorm")
ATTENTIONS = ("gqa", "mqa", "mha", "mla")
MIN_WINDOW = 16
MAX_EXPERTS = 1024
EXPERT_MULTIPLE = 16  # expert FFN widths round down to this (tensor-core tiles)
REFERENCE_DEPTH = 32  # depth at which the family is chosen (a layer pattern shows whole periods)
# Fields each choice sets: a family that would change one of them does not express the choice.
CHOSEN_FIELDS = {"moe": ("moe.num_experts", "moe.top_k", "moe.expert_ffn_size", "moe.layers"),
                 "window": ("sliding_window", "layer_types"), "position": ("position",), "norm": ("norm",),
                 "attention": ("num_kv_heads", "mla", "head_dim")}
# What a change a family hard-codes means, by spec field (its cost in numbers is measured alongside).
ADOPTED = {
    "qk_norm": "QK-norm over each head's queries and keys: steadier attention logits at high learning rates",
    "qkv_bias": "biases on the q, k and v projections",
    "o_bias": "a bias on the attention output projection",
    "mlp_bias": "biases in the MLP",
    "moe.shared_experts": "always-on shared experts beside the routed ones, as wide as one",
    "norm_placement": "a different norm placement",
    "ffn_kind": "a different MLP kind",
    "norm": "a different norm",
    "fused_qkv": "q, k and v stored as one tensor (same parameters, one matmul)",
    "fused_gate_up": "gate and up projections stored as one tensor (same parameters)",
    "num_kv_heads": "one KV head per query head (multi-head attention)",
    "position": "a different position encoding",
}


@dataclass(frozen=True)
class Components:
    """What the user asked for beyond the defaults; None / the default value where nothing was asked."""

    experts: int | None = None
    top_k: int | None = None
    moe_layers: str = "all"
    window: int | None = None
    window_layers: str = "alternate"
    position: str = "rope"
    norm: str = "rmsnorm"
    attention: str = "gqa"

    @property
    def chosen(self) -> list[str]:
        """The choices that differ from the defaults, in CHOSEN_FIELDS order."""
        asked = {"moe": self.experts is not None, "window": self.window is not None, "position": self.position != "rope",
                 "norm": self.norm != "rmsnorm", "attention": self.attention != "gqa"}
        return [name for name in CHOSEN_FIELDS if asked[name]]

    def words(self) -> str:
        """'MoE 8x top-2 on the upper layers, sliding window 1024 (alternate)'."""
        said = {"moe": f"MoE {self.experts} experts top-{self.top_k} on {self.moe_layers} layers",
                "window": f"sliding window {self.window} ({self.window_layers})", "position": f"{self.position} positions",
                "norm": self.norm, "attention": self.attention.upper()}
        return ", ".join(said[name] for name in self.chosen)

    def at_depth(self, base: ArchitectureSpec, layers: int) -> ArchitectureSpec:
        """`base` (a one-layer template spec) at `layers` layers with these choices."""
        changes: dict[str, Any] = {"num_layers": layers}
        if self.attention == "mqa":
            changes["num_kv_heads"] = 1
        elif self.attention == "mha":
            changes["num_kv_heads"] = base.num_heads
        elif self.attention == "mla":
            changes.update(num_kv_heads=base.num_heads, head_dim=base.head_dim + base.head_dim // 2, mla=mla_for(base))
        if self.position != "rope":
            changes["position"] = self.position
        if self.norm != "rmsnorm":
            changes["norm"] = self.norm
        if self.experts is not None:
            width = max(EXPERT_MULTIPLE, base.ffn_size // self.top_k // EXPERT_MULTIPLE * EXPERT_MULTIPLE)
            changes["moe"] = MoESpec(self.experts, self.top_k, width, layers=moe_layers(self.moe_layers, layers))
        if self.window is not None:
            changes.update(sliding_window=self.window, layer_types=window_types(self.window_layers, layers))
        return base.replace(**changes)

    def builder(self, base: ArchitectureSpec) -> Callable[[int], ArchitectureSpec]:
        """depth -> the spec at that depth, in the family chosen once at REFERENCE_DEPTH."""
        fit = family_for(self.at_depth(base, REFERENCE_DEPTH), self.chosen)
        return lambda layers: fit.apply(self.at_depth(base, layers))


def mla_for(base: ArchitectureSpec) -> MLASpec:
    """DeepSeek's proportions at this width: a latent of a quarter of the width (at most 512), rotary keys half a head,
    no query latent below 4096 wide (V2-Lite) and three times the KV latent above (V3)."""
    rank = max(32, min(512, base.hidden_size // 4) // 32 * 32)
    return MLASpec(kv_lora_rank=rank, qk_nope_head_dim=base.head_dim, qk_rope_head_dim=base.head_dim // 2,
                   v_head_dim=base.head_dim, q_lora_rank=3 * rank if base.hidden_size >= 4096 else None)


def moe_layers(pattern: str, layers: int) -> tuple[int, ...] | None:
    """Indices of the MoE layers for a pattern of MOE_LAYERS (None: every layer)."""
    half = layers // 2
    return {"all": None, "upper": tuple(range(half, layers)), "lower": tuple(range(max(1, half))),
            "alternate": tuple(range(1, layers, 2))}[pattern]


def window_types(pattern: str, layers: int) -> tuple[str, ...] | None:
    """Per-layer attention kinds for a window pattern (None: every layer slides)."""
    if pattern == "all":
        return None
    period = 2 if pattern == "alternate" else int(pattern.split(":")[0]) + 1
    return tuple("full_attention" if (i + 1) % period == 0 else "sliding_attention" for i in range(layers))


def parse(moe: str | None = None, moe_layers: str | None = None, window: int | None = None, window_layers: str | None = None,
          position: str | None = None, norm: str | None = None, attention: str | None = None) -> Components | None:
    """Components from what people type; None when nothing differs from the defaults. Errors name the option."""
    experts = top_k = None
    if moe is not None:
        found = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(moe))
        if not found:
            raise ArchsmithError("moe", f"must be EXPERTS:TOP_K, e.g. 8:2; got {str(moe)[:40]!r}")
        experts, top_k = int(found[1]), int(found[2])
        if not 2 <= experts <= MAX_EXPERTS:
            raise ArchsmithError("moe", f"experts must be in [2, {MAX_EXPERTS}], got {experts}")
        if not 1 <= top_k <= experts:
            raise ArchsmithError("moe", f"top_k must be in [1, {experts}] (the experts), got {top_k}")
    if moe_layers is not None and moe is None:
        raise ArchsmithError("moe_layers", "needs --moe EXPERTS:TOP_K")
    if moe_layers is not None and moe_layers not in MOE_LAYERS:
        raise ArchsmithError("moe_layers", f"must be one of {', '.join(MOE_LAYERS)}; got {str(moe_layers)[:40]!r}")
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < MIN_WINDOW):
        raise ArchsmithError("window", f"must be an integer >= {MIN_WINDOW} tokens, got {window!r:.40}")
    if window_layers is not None:
        if window is None:
            raise ArchsmithError("window_layers", "needs --window W")
        ratio = re.fullmatch(r"(\d+):1", str(window_layers))
        if window_layers not in ("all", "alternate") and not (ratio and 1 <= int(ratio[1]) <= 15):
            raise ArchsmithError("window_layers", f"must be {WINDOW_LAYERS_HELP}, with N in [1, 15]; got {str(window_layers)[:40]!r}")
    for name, value, allowed in (("position", position, POSITIONS), ("norm", norm, NORMS), ("attention", attention, ATTENTIONS)):
        if value is not None and value not in allowed:
            raise ArchsmithError(name, f"must be one of {', '.join(allowed)}; got {str(value)[:40]!r}")
    chosen = Components(experts, top_k, moe_layers or "all", window, window_layers or "alternate", position or "rope",
                        norm or "rmsnorm", attention or "gqa")
    return chosen if chosen.chosen else None


@dataclass(frozen=True)
class Fit:
    """A registry family and the spec fields it hard-codes (dotted names reach into sub-specs)."""

    model_type: str
    changes: dict[str, Any] = field(default_factory=dict)

    def apply(self, spec: ArchitectureSpec) -> ArchitectureSpec:
        """`spec` in this family, with its hard-coded fields."""
        top: dict[str, Any] = {}
        subs: dict[str, dict[str, Any]] = {}
        for key, value in self.changes.items():
            value = _resolved(spec, value)
            sub, _, name = key.partition(".")
            if name:
                subs.setdefault(sub, {})[name] = value
            else:
                top[key] = value
        top.update({sub: dataclasses.replace(getattr(spec, sub), **values) for sub, values in subs.items()})
        return spec.replace(model_type=self.model_type, **top)


def _value(spec: ArchitectureSpec, name: str) -> Any:
    sub, _, rest = name.partition(".")
    return getattr(getattr(spec, sub), rest) if rest else getattr(spec, name)


def _resolved(spec: ArchitectureSpec, value: Any) -> Any:
    """A row's fixed value for `spec`: a `Same(field)` is that field's value, anything else itself."""
    return _value(spec, value.field) if isinstance(value, families.Same) else value


def family_for(spec: ArchitectureSpec, chosen: list[str], keep: tuple[str, ...] = ()) -> Fit:
    """The registry family that expresses `spec` with the fewest adopted changes and computed extras (families
    network.py trains first, then registry order); none may touch the fields of a `chosen` choice, nor those in
    `keep` (a pretrained model's fields whose change would alter what its weights compute). The family's written config
    must also prove (`archsmith.parity`: transformers computes what network.py computes on a tiny instance); a family
    that fails is passed over for the next."""
    from archsmith.hfconfig import hf_from_spec

    protected = {f for name in chosen for f in CHOSEN_FIELDS[name]} | set(keep)
    fits, refusals = [], []
    for order, row in enumerate(families.FAMILIES.values()):
        if row.is_moe != (spec.moe is not None):  # MoE layouts only in MoE families, dense ones only in dense
            continue
        changes = {k: v for k, v in row.fixed.items() if _value(spec, k) != _resolved(spec, v)}
        if protected & {k if k.startswith("moe.") else k.split(".")[0] for k in changes}:
            continue
        score = (row.parity != "both", len(changes) + len(families.features(row, {})), order)
        if _builds_shared_expert(spec, row) and not spec.moe.shared_experts:
            changes["moe.shared_experts"] = 1
        if spec.moe is not None and "moe.shared_ffn_size" in row.keys and not spec.moe.shared_ffn_size:
            changes["moe.shared_ffn_size"] = families.Same("moe.expert_ffn_size")  # a shared expert as wide as a routed one
        groups = row.extra["n_group"].default if "n_group" in row.extra else None
        if spec.moe is not None and groups and (spec.moe.num_experts % groups or spec.moe.num_experts // groups < 2):
            changes["extra"] = {**spec.extra, "n_group": 1, "topk_group": 1}  # the family's groups need more experts
        fit = Fit(row.model_type, changes)
        try:
            config = hf_from_spec(fit.apply(spec))
        except ArchsmithError as exc:  # the most telling refusal comes from a row that takes the choices themselves
            refusals.append(((exc.field.split(".")[0] in {f.split(".")[0] for f in protected}, len(changes), order), str(exc)))
            continue
        fits.append((score, fit, config))
    for _, fit, config in sorted(fits, key=lambda item: item[0]):
        try:  # what transformers computes from the written config, on a tiny instance, against network.py
            parity.prove_config(config)
        except ArchsmithError as exc:  # this family writes it but computes something else: the next one that expresses it
            refusals.append(((False, -1, -1), str(exc)))
            continue
        return fit
    nearest = min(refusals)[1] if refusals else "no family of this kind (dense or MoE)"
    raise ArchsmithError(chosen[0] if chosen else "model_type", "no transformers family in the registry expresses this "
                         f"combination; the nearest refuses it with {nearest}")


def _builds_shared_expert(spec: ArchitectureSpec, row: families.Family) -> bool:
    """An MoE spec in a family whose transformers code builds the shared MLP whatever its width: one shared expert."""
    return spec.moe is not None and "moe.shared_experts" in row.keys


def tradeoffs(spec: ArchitectureSpec, base: ArchitectureSpec, components: Components) -> list[dict[str, Any]]:
    """Each choice and each change its family adopted, with the measured cost: parameters (total, active) and the KV
    cache per request at the context, against `spec` without it. `base` is the one-layer template spec `spec` grew from."""
    asked = components.at_depth(base, spec.num_layers)  # the choices before the family adopted anything
    reverts = {
        "moe": {"moe": None},
        "window": {"sliding_window": None, "layer_types": None},
        "position": {"position": "rope"},
        "norm": {"norm": "rmsnorm"},
        "attention": {"num_kv_heads": base.num_kv_heads, "head_dim": base.head_dim, "mla": None},
    }
    rows = [{"choice": name, "what": _choice_words(name, spec, components), **_cost(spec, reverts[name])}
            for name in components.chosen]
    row = families.get(spec.model_type)
    rows += [{"choice": "computes", "what": f"{feature}: {spec.model_type}'s code computes it (no parameters)", **_cost(spec, {})}
             for feature in families.features(row, spec.extra)]
    built = ["moe.shared_experts"] if _builds_shared_expert(spec, row) else []
    for key in [*row.fixed, *built]:
        sub, _, rest = key.partition(".")
        before, after = _value(asked, key), _value(spec, key)
        if before == after or rest in ("shared_expert_gate", "shared_ffn_size"):  # those two count with the shared expert
            continue
        values = {rest: before, **(_SHARED_OFF if rest == "shared_experts" else {})}
        revert = {sub: dataclasses.replace(getattr(spec, sub), **values)} if rest else {key: before}
        gate = ", with a sigmoid gate" if rest == "shared_experts" and spec.moe.shared_expert_gate else ""
        rows.append({"choice": f"adopted: {key}", "what": f"{ADOPTED.get(key, key)}{gate}: {after!r} instead of {before!r} "
                                                           f"({spec.model_type} hard-codes it)", **_cost(spec, revert)})
    return rows


_SHARED_OFF = {"shared_ffn_size": 0, "shared_expert_gate": False}


def _cost(spec: ArchitectureSpec, revert: dict[str, Any]) -> dict[str, Any]:
    """Parameters and KV cache of `spec` against `spec` with `revert` applied (the default family: no family rules)."""
    without = dataclasses.replace(spec, model_type=families.DEFAULT_FAMILY, extra={}, **revert)
    with_counts, without_counts = est.count_params(spec), est.count_params(without)
    kv, kv_without = (est.kv_cache_bytes(s, 1, spec.context_length) for s in (spec, without))
    return {"params_delta": with_counts["total"] - without_counts["total"],
            "active_delta": with_counts["active"] - without_counts["active"],
            "kv_cache_delta": kv - kv_without, "kv_cache_ratio": round(kv / kv_without, 4) if kv_without else None}


def _choice_words(name: str, spec: ArchitectureSpec, c: Components) -> str:
    """One sentence per choice: what it buys and what it costs."""
    counts = est.count_params(spec)
    layers = spec.num_layers
    if name == "moe":
        moe = spec.moe
        n = layers if moe.layers is None else len(moe.layers)
        return (f"{moe.num_experts} routed experts of width {moe.expert_ffn_size}, top-{moe.top_k}, on {n} of {layers} layers "
                f"({c.moe_layers}): {counts['total']:,} parameters of which {counts['active']:,} "
                f"({counts['active'] / counts['total']:.0%}) act per token; more capacity at the same FLOPs per token, but every "
                "expert's weights, gradients and optimizer state stay in memory and the router needs its load-balancing loss")
    if name == "window":
        sliding = sum(t == "sliding_attention" for t in spec.resolved_layer_types)
        return (f"sliding window of {spec.sliding_window} tokens on {sliding} of {layers} layers ({c.window_layers}): those "
                f"layers cache at most {spec.sliding_window} positions; tokens further apart meet only in the "
                f"{layers - sliding} full-attention layers")
    if name == "position":
        return {"alibi": "ALiBi: a fixed linear distance penalty per head, no rotary channels; extrapolates past the training "
                         "length without rescaling, but fused kernels must take the bias (fewer fast paths than RoPE)",
                "learned": f"learned absolute positions: a {spec.context_length} x {spec.hidden_size} table, and no position "
                           f"beyond {spec.context_length} (no RoPE scaling later)"}[spec.position]
    if name == "norm":
        return "LayerNorm: centres as well as scales, one more reduction per norm; RMSNorm trains as well for less (Zhang & Sennrich 2019)"
    if c.attention == "mla":
        return (f"multi-head latent attention: keys and values from a {spec.mla.kv_lora_rank}-wide latent; the cache holds the "
                f"latent and a {spec.mla.qk_rope_head_dim}-wide rotary key per token (DeepSeek-V2/V3)")
    return {"mqa": "multi-query attention: one KV head shared by all query heads, the smallest KV cache; can cost quality "
                   "(Ainslie et al. 2023)",
            "mha": "multi-head attention: a KV head per query head, the largest KV cache; the quality reference GQA approximates"}[c.attention]
