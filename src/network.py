"""The decoder LM built from an `ArchitectureSpec`: one class per component, HF state-dict names.

Parameter names follow transformers' Llama layout (`model.embed_tokens`,
`model.layers.{i}.self_attn.{q,k,v,o}_proj`, `mlp.{gate,up,down}_proj`, `input_layernorm`,
`post_attention_layernorm`, `model.norm`, `lm_head`; DeepSeek's MLA and MoE names), so loading and
saving HF checkpoints (`archsmith.weights`) is a key check plus the family row's layout rules
(renames, transposed tensors), not a conversion. The set of tensors is exactly
`estimate.model_tensors(spec)`; a test ties the two together. What a family computes beyond its
sizes (norm offsets, soft-caps, multipliers, RoPE layouts, routers) is read from the spec and its row
in `archsmith.families`: components never test a model_type.

Shapes: B batch, S new tokens, K keys (cached + new), H query heads, G KV heads, D head_dim, T tokens (B * S),
E experts, k experts per token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from archsmith import families
from archsmith.errors import SpecError
from archsmith.hfconfig import check_layout
from archsmith.spec import NORMS_BY_PLACEMENT, ArchitectureSpec

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "silu": F.silu,
    "swish": F.silu,
    "gelu": F.gelu,
    "gelu_pytorch_tanh": partial(F.gelu, approximate="tanh"),
    "gelu_new": partial(F.gelu, approximate="tanh"),
    "relu": F.relu,
}
# rope_type -> keys its parameters must have
ROPE_TYPES: dict[str, tuple[str, ...]] = {
    "default": (),
    "linear": ("factor",),
    "dynamic": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
    "yarn": ("factor",),  # original_max_position_embeddings defaults to context_length, as in transformers
}
ATTENTION_IMPLS = ("sdpa", "eager")


# What this module computes beyond the Llama block, named as `families.features` names them.
# A family builds only when its parity is not "none" and every feature it needs is here.
FEATURES: frozenset[str] = frozenset({
    families.NORM_OFFSET, families.EMBED_SCALE, families.SOFTCAP_ATTENTION, families.SOFTCAP_FINAL, families.MULTIPLIERS,
    families.INTERLEAVED_ROPE, families.LOCAL_ROPE, families.CLIP_QKV, families.LOGIT_SCALE, families.GROUPED_ROUTING,
})
# Spec fields this module cannot build yet: (field, the value it can build, what is missing)
UNBUILT: tuple[tuple[str, object, str], ...] = (
    ("linear_attention", None, "gated delta-net linear attention"),
    ("attention_sinks", False, "attention sinks"),
    ("attn_output_gate", False, "a gated attention output"),
    ("lm_head_bias", False, "an lm_head bias"),
    ("attention_chunk_size", None, "chunked attention"),
)


def check_buildable(spec: ArchitectureSpec) -> None:
    """Raise SpecError for anything this module would not build faithfully (never approximate).

    A spec of a family whose `parity` in `archsmith.families` is "none" is refused, naming what
    network.py lacks for it; so is any spec field no component here implements, and any layout (windows,
    per-layer attention kinds, MoE layers, shared experts, NoPE layers) the family's config.json cannot say or
    its transformers code does not honour (`hfconfig.check_layout`).
    """
    missing = _missing(spec)
    fam = families.get(spec.model_type)
    if fam.parity == "none":
        lacks = "; ".join(text for _, text in missing) or "no logits parity test against transformers yet"
        raise SpecError("model_type", f"network.py does not build {spec.model_type} models (it would not match transformers): {lacks}")
    if missing:
        field, text = missing[0]
        raise SpecError(field, f"network.py cannot build {text} yet")
    if spec.encoder:
        raise SpecError("encoder", "network.py builds decoder-only models; must be false")
    check_layout(spec)  # a layout the family's transformers code would compute differently is never built
    if spec.activation not in ACTIVATIONS:
        raise SpecError("activation", f"must be one of {', '.join(ACTIVATIONS)}; got {spec.activation!r}")
    if spec.position == "rope":
        _check_rope(spec)
    if spec.moe is not None and families.GROUPED_ROUTING in families.features(fam, spec.extra):
        _check_groups(spec)


def _check_rope(spec: ArchitectureSpec) -> None:
    scaling = spec.rope_scaling or {}
    rot = spec.rope_dim
    if rot < 2 or rot % 2:
        raise SpecError("partial_rotary_factor", f"head_dim * partial_rotary_factor must be an even number >= 2; got {rot}")
    kind = scaling.get("rope_type", "default")
    if kind not in ROPE_TYPES:
        raise SpecError("rope_scaling.rope_type", f"must be one of {', '.join(ROPE_TYPES)}; got {kind!r}")
    for key in ROPE_TYPES[kind]:
        if not isinstance(scaling.get(key), (int, float)) or scaling[key] <= 0:
            raise SpecError(f"rope_scaling.{key}", f"rope_type {kind!r} needs a positive number; got {scaling.get(key)!r}")
    if kind == "llama3" and scaling["high_freq_factor"] <= scaling["low_freq_factor"]:
        raise SpecError("rope_scaling.high_freq_factor", "must be greater than low_freq_factor")
    for key in ("original_max_position_embeddings", "attention_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim") if kind == "yarn" else ():
        value = scaling.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            raise SpecError(f"rope_scaling.{key}", f"must be a number >= 0 or absent; got {value!r:.40}")


def _check_groups(spec: ArchitectureSpec) -> None:
    """Grouped routing needs experts split evenly into n_group groups of at least 2, and enough experts kept for top_k."""
    experts, top_k = spec.moe.num_experts, spec.moe.top_k
    groups, kept = int(families.setting(spec, "n_group", 1)), int(families.setting(spec, "topk_group", 1))
    if experts % groups or experts // groups < 2:
        raise SpecError("extra.n_group", f"must split moe.num_experts={experts} into groups of >= 2 experts; got {groups}")
    if not 1 <= kept <= groups:
        raise SpecError("extra.topk_group", f"must be in [1, n_group={groups}]; got {kept}")
    if top_k > kept * (experts // groups):
        raise SpecError("moe.top_k", f"must be <= topk_group * experts per group = {kept * (experts // groups)}; got {top_k}")


def _missing(spec: ArchitectureSpec) -> list[tuple[str, str]]:
    """(field, what is missing) for each component the spec needs that this module lacks."""
    found = [(field, text) for field, built, text in UNBUILT if getattr(spec, field) != built]
    if spec.qk_norm == "l2":
        found.append(("qk_norm", "qk_norm 'l2' (a weightless L2 QK-norm)"))
    if spec.mla is not None:
        found += [(field, f"multi-head latent attention with {text}") for field, unbuilt, text in (
            ("qk_norm", spec.qk_norm != "none", "QK-norm"), ("fused_qkv", spec.fused_qkv, "a fused qkv projection"),
            ("position", spec.position != "rope", f"{spec.position} positions"),
            ("nope_layers", bool(spec.nope_layers), "layers without RoPE")) if unbuilt]
    if spec.moe is not None and spec.moe.expert_bias:
        found.append(("moe.expert_bias", "expert biases"))
    found += [("model_type", feature) for feature in families.features(families.get(spec.model_type), spec.extra)
              if feature not in FEATURES]
    return found


# ---- norms ----------------------------------------------------------------------------------

class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x**2) + eps) * (offset + weight) over the last dim; statistics in fp32. x: (..., width).

    `offset` 1 is Gemma's (1 + w) norm: the weight is stored around 0 (a parameter here rather than a class
    of its own: the same statistic, another parametrisation of the scale). `weight_in_fp32` multiplies the
    fp32 normalised x before the cast back (Gemma, OLMo 2); otherwise the weight multiplies the cast value
    (Llama). Both are equal in fp32 and each is what transformers does for its family in bf16.
    """

    def __init__(self, width: int | tuple[int, ...], eps: float, offset: float = 0.0, weight_in_fp32: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.full(width if isinstance(width, tuple) else (width,), 1.0 - offset))
        self.eps, self.offset, self.weight_in_fp32 = eps, offset, weight_in_fp32

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.weight_in_fp32:
            weight = self.weight.float()
            return (x * (weight + self.offset if self.offset else weight)).to(dtype)
        return (self.weight + self.offset if self.offset else self.weight) * x.to(dtype)


class LayerNorm(nn.Module):
    """y = (x - mean) / sqrt(var + eps) [* weight [+ bias]] over the last dim. x: (..., width).

    kind layernorm: weight and bias, in the input dtype (nn.LayerNorm); layernorm_nobias: weight only,
    computed in fp32 (Cohere; a (heads, head_dim) weight for per-head QK-norm); layernorm_nonparametric:
    neither, in fp32 (OLMo).
    """

    def __init__(self, width: int | tuple[int, ...], eps: float, kind: str = "layernorm"):
        super().__init__()
        shape = width if isinstance(width, tuple) else (width,)
        self.weight = nn.Parameter(torch.ones(shape)) if kind != "layernorm_nonparametric" else None
        self.bias = nn.Parameter(torch.zeros(shape)) if kind == "layernorm" else None
        self.eps, self.in_fp32 = eps, kind != "layernorm"

    def forward(self, x: Tensor) -> Tensor:
        if not self.in_fp32 and self.weight.dim() == 1:
            return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)
        y = F.layer_norm(x.float(), (x.shape[-1],), None, None, self.eps)
        if self.weight is not None:
            y = self.weight.float() * y
        if self.bias is not None:
            y = y + self.bias.float()
        return y.to(x.dtype)


def make_norm(spec: ArchitectureSpec, width: int | tuple[int, ...], eps: float | None = None) -> nn.Module:
    """The spec's norm kind over `width` features, as its family computes it."""
    eps = spec.norm_eps if eps is None else eps
    if spec.norm == "rmsnorm":
        fam = families.get(spec.model_type)
        return RMSNorm(width, eps, fam.norm_weight_offset, fam.norm_weight_in_fp32)
    return LayerNorm(width, eps, spec.norm)


class SoftCap(nn.Module):
    """cap * tanh(x / cap): bounds scores or logits smoothly to (-cap, cap) (Gemma 2's soft-capping)."""

    def __init__(self, cap: float):
        super().__init__()
        self.cap = float(cap)

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(x / self.cap) * self.cap


# ---- positions ------------------------------------------------------------------------------

class RotaryEmbedding(nn.Module):
    """cos/sin tables for rotary embeddings, computed once per forward for all layers.

    The first `rot_dim` channels of a head rotate (head_dim * partial_rotary_factor, or MLA's
    qk_rope_head_dim). Scalings: default, linear (positions / factor), dynamic NTK (base grows with the
    sequence beyond `context_length`), llama3 (frequency-dependent, Llama 3.1), yarn (NTK-by-parts
    blend, cos/sin times an attention factor). `local`: the table of sliding layers in families whose
    rope parameters differ by layer type (their own base, no scaling). Tables stay fp32 where the family
    rotates in fp32 (`rope_in_fp32`).
    """

    def __init__(self, spec: ArchitectureSpec, local: bool = False):
        super().__init__()
        self.rot_dim = spec.rope_dim
        self.theta = float(families.setting(spec, "rope_local_base_freq", spec.rope_theta) if local else spec.rope_theta)
        self.scaling = {} if local else dict(spec.rope_scaling or {})
        self.kind = self.scaling.get("rope_type", "default")
        self.context_length = spec.context_length
        if self.kind == "yarn":
            self.scaling.setdefault("original_max_position_embeddings", spec.context_length)
        self.in_fp32 = families.get(spec.model_type).rope_in_fp32
        self.attention_factor = yarn_attention_factor(self.scaling) if self.kind == "yarn" else 1.0
        self._cached: dict[torch.device, Tensor] = {}  # static inv_freq per device (not a buffer: stays fp32 under .to())

    def inv_freq(self, seq_len: int, device: torch.device) -> Tensor:
        """(rot_dim / 2,) fp32 inverse frequencies for sequences of `seq_len` tokens (dynamic NTK only reads it)."""
        dim, base = self.rot_dim, self.theta
        if self.kind == "dynamic" and seq_len > self.context_length:
            factor = self.scaling["factor"]
            base = base * ((factor * seq_len / self.context_length) - (factor - 1)) ** (dim / (dim - 2))
        inv = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim))
        if self.kind == "linear":
            inv = inv / self.scaling["factor"]
        elif self.kind == "llama3":
            inv = _llama3_inv_freq(inv, self.scaling)
        elif self.kind == "yarn":
            inv = _yarn_inv_freq(inv, dim, base, self.scaling)
        return inv

    def forward(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """positions (B, S) -> cos, sin (B, S, rot_dim) in `dtype` (fp32 for fp32-rotating families)."""
        if self.kind == "dynamic":
            inv = self.inv_freq(int(positions.max()) + 1, positions.device)
        else:
            if positions.device not in self._cached or torch.compiler.is_compiling():
                self._cached[positions.device] = self.inv_freq(0, positions.device)
            inv = self._cached[positions.device]
        freqs = positions[:, :, None].float() * inv[None, None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos(), emb.sin()
        if self.attention_factor != 1.0:
            cos, sin = cos * self.attention_factor, sin * self.attention_factor
        return (cos, sin) if self.in_fp32 else (cos.to(dtype), sin.to(dtype))


def _llama3_inv_freq(inv: Tensor, s: dict) -> Tensor:
    """Llama 3.1: long wavelengths divided by `factor`, short ones kept, a smooth blend between."""
    factor, low, high, old = s["factor"], s["low_freq_factor"], s["high_freq_factor"], s["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > old / low, inv / factor, inv)
    smooth = (old / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old / high) & (wavelen <= old / low)
    return torch.where(medium, blended, scaled)


def _yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's attention temperature: 0.1 * mscale * ln(factor) + 1 (1 for factor <= 1)."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def yarn_attention_factor(s: dict) -> float:
    """The factor on cos/sin: `attention_factor` if given, else mscale(factor, mscale) / mscale(factor, mscale_all_dim)."""
    if s.get("attention_factor") is not None:
        return float(s["attention_factor"])
    if s.get("mscale") and s.get("mscale_all_dim"):
        return _yarn_mscale(s["factor"], s["mscale"]) / _yarn_mscale(s["factor"], s["mscale_all_dim"])
    return _yarn_mscale(s["factor"])


def _yarn_inv_freq(inv: Tensor, dim: int, base: float, s: dict) -> Tensor:
    """YaRN (NTK-by-parts): frequencies that turn fewer than beta_slow times over the original context are
    divided by `factor`, those turning more than beta_fast times are kept, a linear ramp between."""
    factor, old = s["factor"], s["original_max_position_embeddings"]
    fast, slow = s.get("beta_fast") or 32, s.get("beta_slow") or 1  # the paper's defaults

    def channel(rotations: float) -> float:  # the channel that turns `rotations` times over `old` positions
        return dim * math.log(old / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = channel(fast), channel(slow)
    if s.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    ramp = ((torch.arange(dim // 2, dtype=torch.float32, device=inv.device) - low) / max(high - low, 0.001)).clamp(0, 1)
    return (inv / factor) * ramp + inv * (1 - ramp)


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _rotate_pairs(x: Tensor) -> Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...): the rotation partner of each channel in the interleaved layout."""
    return torch.stack((-x[..., 1::2], x[..., 0::2]), dim=-1).flatten(-2)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor, interleaved: bool = False) -> Tensor:
    """x (B, heads, S, D); cos/sin (B, S, rot_dim). Rotates the first rot_dim channels, as two halves or as
    adjacent pairs (`interleaved`); fp32 tables rotate in fp32, the result has x's dtype."""
    cos, sin = cos[:, None], sin[:, None]
    rot = cos.shape[-1]
    x_rot = x if rot == x.shape[-1] else x[..., :rot]
    if interleaved:
        cos, sin = cos[..., : rot // 2].repeat_interleave(2, dim=-1), sin[..., : rot // 2].repeat_interleave(2, dim=-1)
        out = (x_rot * cos + _rotate_pairs(x_rot) * sin).to(x.dtype)
    else:
        out = (x_rot * cos + _rotate_half(x_rot) * sin).to(x.dtype)
    return out if rot == x.shape[-1] else torch.cat((out, x[..., rot:]), dim=-1)


def rope_interleaved(spec: ArchitectureSpec) -> bool:
    """Whether the family rotates adjacent channel pairs (a fixed layout, or the config's rope_interleave)."""
    return families.get(spec.model_type).rope_interleaved or bool(families.setting(spec, "rope_interleave", False))


class ALiBi(nn.Module):
    """Attention with linear biases (Press et al.): score += slope_h * (key_pos - query_pos)."""

    def __init__(self, num_heads: int):
        super().__init__()
        self.slopes = alibi_slopes(num_heads)

    def forward(self, allowed: Tensor, past: int) -> Tensor:
        """allowed (B|1, 1, S, K) bool -> additive float mask (B|1, H, S, K), -inf where not allowed."""
        S, K = allowed.shape[-2:]
        q = torch.arange(past, past + S, device=allowed.device)[:, None]
        k = torch.arange(K, device=allowed.device)[None, :]
        slopes = torch.tensor(self.slopes, device=allowed.device)[:, None, None]
        bias = slopes * (k - q).float()[None]
        return torch.where(allowed, bias[None], torch.tensor(float("-inf"), device=allowed.device))


def alibi_slopes(num_heads: int) -> list[float]:
    """Geometric slopes 2^(-8i/n); for a head count that is not a power of two, the paper's interleave."""
    def power_of_two(n: int) -> list[float]:
        start = 2 ** (-8 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(num_heads).is_integer():
        return power_of_two(num_heads)
    closest = 2 ** math.floor(math.log2(num_heads))
    return power_of_two(closest) + power_of_two(2 * closest)[0::2][: num_heads - closest]


# ---- attention ------------------------------------------------------------------------------

def build_mask(q_len: int, past: int, padding: Tensor | None, window: int | None, device: torch.device,
                   force: bool = False) -> Tensor | None:
    """Bool mask (B|1, 1, S, K), True where query i (at cache index past + i) may see key j.

    Causal, within `window` keys (the query itself included) and not padding. A padding query sees
    itself only, so no row is empty. None when plain causal attention is exact (SDPA's is_causal
    for a prefill, nothing for one decoded token) and `force` is off.
    """
    K = past + q_len
    if not force and padding is None and (window is None or K <= window) and (past == 0 or q_len == 1):
        return None
    q = torch.arange(past, K, device=device)[:, None]
    k = torch.arange(K, device=device)[None, :]
    allowed = k <= q
    if window is not None:
        allowed = allowed & (k > q - window)
    allowed = allowed[None, None]
    if padding is not None:
        allowed = (allowed & padding[:, None, None, :].bool()) | (k == q)[None, None]
    return allowed


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float, impl: str,
           softcap: SoftCap | None = None) -> Tensor:
    """softmax(q k^T * scale [soft-capped] + mask) v. q (B, H, S, Dk), k (B, G, K, Dk), v (B, G, K, Dv) -> (B, H, S, Dv).

    mask: bool or additive (B|1, 1|H, S, K), or None for plain causal. "sdpa" is the fused kernel; "eager"
    the explicit product with an fp32 softmax (the only path that soft-caps scores).
    """
    causal = mask is None and q.shape[2] > 1
    groups = q.shape[1] // k.shape[1]
    if impl == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale, enable_gqa=groups > 1)
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = (q @ k.transpose(-2, -1)) * scale  # (B, H, S, K)
    if softcap is not None:
        scores = softcap(scores)
    if causal:
        S, K = scores.shape[-2:]
        mask = torch.ones(S, K, dtype=torch.bool, device=q.device).tril(K - S)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return probs @ v


def attention_scale(spec: ArchitectureSpec, head_dim: int) -> float:
    """The factor on q k^T: the family's attention_multiplier, else query_pre_attn_scalar ** -0.5, else head_dim ** -0.5."""
    multiplier = families.setting(spec, "attention_multiplier", None)
    if multiplier is not None:
        return float(multiplier)
    return float(families.setting(spec, "query_pre_attn_scalar", head_dim)) ** -0.5


class Attention(nn.Module):
    """Multi-head attention with grouped KV heads (MHA: G = H, GQA: 1 < G < H, MQA: G = 1).

    SDPA by default; `impl = "eager"` computes softmax(q k^T * scale + mask) v explicitly with an fp32
    softmax, for inspection and as the reference the fused kernel must match. From the spec and its
    family row: QK-norm (per head over D, over all heads, or per head with a weight per head), q/k/v
    clipping, the score scale, attention soft-capping (eager only: SDPA cannot cap scores), interleaved RoPE.
    """

    def __init__(self, spec: ArchitectureSpec, layer_idx: int):
        super().__init__()
        h, d = spec.hidden_size, spec.head_dim
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads, self.head_dim = spec.num_heads, spec.num_kv_heads, d
        self.q_dim, self.kv_dim = spec.q_dim, spec.kv_dim
        self.fused = spec.fused_qkv
        if self.fused:
            self.qkv_proj = nn.Linear(h, self.q_dim + 2 * self.kv_dim, bias=spec.qkv_bias)
        else:
            self.q_proj = nn.Linear(h, self.q_dim, bias=spec.qkv_bias)
            self.k_proj = nn.Linear(h, self.kv_dim, bias=spec.qkv_bias)
            self.v_proj = nn.Linear(h, self.kv_dim, bias=spec.qkv_bias)
        self.o_proj = nn.Linear(self.q_dim, h, bias=spec.o_bias)
        self.qk_norm = spec.qk_norm
        widths = {"head": (d, d), "full": (self.q_dim, self.kv_dim), "per_head": ((spec.num_heads, d), (spec.num_kv_heads, d))}
        if spec.qk_norm in widths:  # head: Qwen3 (over D, one weight); full: OLMo 2 (over all heads); per_head: Cohere
            self.q_norm, self.k_norm = (make_norm(spec, width) for width in widths[spec.qk_norm])
        self.scale = attention_scale(spec, d)
        cap = families.setting(spec, "attn_logit_softcapping", None)
        self.softcap = SoftCap(cap) if cap is not None else None
        self.clip = families.setting(spec, "clip_qkv", None)
        self.interleaved = rope_interleaved(spec)
        self.sliding = spec.resolved_layer_types[layer_idx] == "sliding_attention"
        self.cache_shapes = ((self.num_kv_heads, d), (self.num_kv_heads, d))  # (heads, width) of cached keys, values
        self.impl = "eager" if self.softcap is not None else "sdpa"

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None, mask: Tensor | None,
                cache: "KVCache | None" = None) -> Tensor:
        """x (B, S, hidden) -> (B, S, hidden). mask: bool or additive (B|1, 1|H, S, K), or None for plain causal."""
        B, S, _ = x.shape
        if self.fused:
            q, k, v = self.qkv_proj(x).split([self.q_dim, self.kv_dim, self.kv_dim], dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.clip is not None:
            q, k, v = (t.clamp(-self.clip, self.clip) for t in (q, k, v))
        if self.qk_norm == "full":
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(B, S, self.num_heads, self.head_dim)
        k = k.view(B, S, self.num_kv_heads, self.head_dim)
        if self.qk_norm in ("head", "per_head"):
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # (B, H|G, S, D)
        v = v.view(B, S, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = apply_rotary(q, *rope, self.interleaved), apply_rotary(k, *rope, self.interleaved)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)
        out = attend(q, k, v, mask, self.scale, self.impl, self.softcap)
        return self.o_proj(out.transpose(1, 2).reshape(B, S, self.q_dim))


class MLAttention(nn.Module):
    """Multi-head latent attention (DeepSeek-V2/V3): keys and values are expanded from a small latent.

    q: hidden -> q_lora_rank (RMSNorm) -> H * (nope + rope)  (or hidden -> H * (nope + rope) directly);
    kv: hidden -> kv_lora_rank latent (RMSNorm) + one rope key of qk_rope_head_dim shared by all heads;
    latent -> H * (nope + v). Each head's key is [its nope part, the shared rotated key]; the score scale
    is (nope + rope) ** -0.5 (times YaRN's mscale(mscale_all_dim) ** 2 under YaRN scaling). The cache holds
    the latent and the rotated key, (B, 1, K, kv_lora_rank + qk_rope_head_dim) in all: what makes MLA's
    cache small; keys and values are expanded from it at every step.
    """

    def __init__(self, spec: ArchitectureSpec, layer_idx: int):
        super().__init__()
        mla, h = spec.mla, spec.hidden_size
        self.layer_idx = layer_idx
        self.num_heads, self.rank = spec.num_heads, mla.kv_lora_rank
        self.nope, self.rope_dim, self.v_dim = mla.qk_nope_head_dim, mla.qk_rope_head_dim, mla.v_head_dim
        qk_dim = self.nope + self.rope_dim
        eps = families.get(spec.model_type).latent_norm_eps or spec.norm_eps
        self.low_rank_q = mla.q_lora_rank is not None
        if self.low_rank_q:
            self.q_a_proj = nn.Linear(h, mla.q_lora_rank, bias=spec.qkv_bias)
            self.q_a_layernorm = make_norm(spec, mla.q_lora_rank, eps)
            self.q_b_proj = nn.Linear(mla.q_lora_rank, self.num_heads * qk_dim, bias=False)
        else:
            self.q_proj = nn.Linear(h, self.num_heads * qk_dim, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(h, self.rank + self.rope_dim, bias=spec.qkv_bias)
        self.kv_a_layernorm = make_norm(spec, self.rank, eps)
        self.kv_b_proj = nn.Linear(self.rank, self.num_heads * (self.nope + self.v_dim), bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.v_dim, h, bias=spec.o_bias)
        scaling = spec.rope_scaling or {}
        mscale = _yarn_mscale(scaling["factor"], scaling["mscale_all_dim"]) if scaling.get("rope_type") == "yarn" and scaling.get("mscale_all_dim") else 1.0
        self.scale = qk_dim ** -0.5 * mscale * mscale
        self.interleaved = rope_interleaved(spec)
        self.sliding = spec.resolved_layer_types[layer_idx] == "sliding_attention"
        self.cache_shapes = ((1, self.rank), (1, self.rope_dim))  # the latent and the shared rotated key
        self.softcap = None
        self.impl = "sdpa"

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], mask: Tensor | None, cache: "KVCache | None" = None) -> Tensor:
        """x (B, S, hidden) -> (B, S, hidden)."""
        B, S, _ = x.shape
        q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x))) if self.low_rank_q else self.q_proj(x)
        q_pass, q_rot = q.view(B, S, self.num_heads, -1).transpose(1, 2).split([self.nope, self.rope_dim], dim=-1)
        latent, k_rot = self.kv_a_proj_with_mqa(x).split([self.rank, self.rope_dim], dim=-1)
        latent, k_rot = self.kv_a_layernorm(latent)[:, None], k_rot[:, None]  # (B, 1, S, rank), (B, 1, S, rope)
        q_rot, k_rot = apply_rotary(q_rot, *rope, self.interleaved), apply_rotary(k_rot, *rope, self.interleaved)
        if cache is not None:
            latent, k_rot = cache.update(self.layer_idx, latent, k_rot)
        K = latent.shape[2]
        kv = self.kv_b_proj(latent[:, 0]).view(B, K, self.num_heads, self.nope + self.v_dim).transpose(1, 2)
        k_nope, v = kv.split([self.nope, self.v_dim], dim=-1)  # (B, H, K, nope), (B, H, K, v)
        k = torch.cat((k_nope, k_rot.expand(B, self.num_heads, K, self.rope_dim)), dim=-1)
        # SDPA's fused CPU kernel needs one head width for q, k and v (else the unfused path materialises the
        # (S, K) scores): zero columns padded onto v give the same output in its first v_dim columns
        pad = k.shape[-1] - self.v_dim if self.impl == "sdpa" and x.device.type == "cpu" else 0
        out = attend(torch.cat((q_pass, q_rot), dim=-1), k, F.pad(v, (0, pad)) if pad > 0 else v, mask, self.scale, self.impl)
        if pad > 0:
            out = out[..., : self.v_dim]
        return self.o_proj(out.transpose(1, 2).reshape(B, S, self.num_heads * self.v_dim))


# ---- feed-forward ---------------------------------------------------------------------------

class MLP(nn.Module):
    """Gated (SwiGLU/GeGLU: down(act(gate x) * up x)) or plain (down(act(up x))) MLP. x: (..., hidden)."""

    def __init__(self, spec: ArchitectureSpec, width: int | None = None, bias: bool | None = None, fused: bool | None = None):
        super().__init__()
        h, f = spec.hidden_size, width or spec.ffn_size
        bias = spec.mlp_bias if bias is None else bias
        self.gated = spec.gated
        self.fused = spec.fused_gate_up if fused is None else fused
        self.act = ACTIVATIONS[spec.activation]
        if self.gated and self.fused:
            self.gate_up_proj = nn.Linear(h, 2 * f, bias=bias)
        else:
            if self.gated:
                self.gate_proj = nn.Linear(h, f, bias=bias)
            self.up_proj = nn.Linear(h, f, bias=bias)
        self.down_proj = nn.Linear(f, h, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        if not self.gated:
            return self.down_proj(self.act(self.up_proj(x)))
        if self.fused:
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(self.act(gate) * up)


class Experts(nn.Module):
    """E expert MLPs stored as 3-D tensors (transformers 5 layout).

    gate_up_proj: (E, 2F, hidden) for gated MLPs (gate rows first), (E, F, hidden) otherwise;
    down_proj: (E, hidden, F). Dispatch sorts the (token, expert) assignments by expert once, so each
    expert multiplies one contiguous block of its rows: one grouped GEMM per projection where torch has
    it for these tensors (`grouped_mm_fits`), else one matmul per expert that has tokens. The weighted
    expert outputs are summed back per token with one `index_add_`.
    """

    def __init__(self, spec: ArchitectureSpec):
        super().__init__()
        moe = spec.moe
        e, f, h = moe.num_experts, moe.expert_ffn_size, spec.hidden_size
        self.num_experts, self.gated = e, spec.gated
        self.act = ACTIVATIONS[spec.activation]
        self.gate_up_proj = nn.Parameter(torch.empty(e, 2 * f if spec.gated else f, h))
        self.down_proj = nn.Parameter(torch.empty(e, h, f))
        self.grouped = True  # False: always one matmul per expert (the reference path)

    def forward(self, x: Tensor, indices: Tensor, weights: Tensor) -> Tensor:
        """x (T, hidden); indices, weights (T, k) -> (T, hidden) = sum_k weight * expert_k(x)."""
        flat = indices.reshape(-1)
        order = flat.argsort(stable=True)
        token = order // indices.shape[1]  # the token of each assignment, grouped by expert: (T * k,)
        counts = torch.bincount(flat, minlength=self.num_experts)  # rows per expert (E,)
        picked = x[token]  # (T * k, hidden)
        if self.grouped and grouped_mm_fits(picked, self.gate_up_proj, self.down_proj):
            offsets = counts.cumsum(0, dtype=torch.int32)  # end row of each expert; no host sync
            y = self._activate(F.grouped_mm(picked, self.gate_up_proj.transpose(1, 2), offs=offsets))
            y = F.grouped_mm(y, self.down_proj.transpose(1, 2), offs=offsets)
        else:
            y = self._per_expert(picked, counts.tolist())  # one host sync per layer
        y = y * weights.reshape(-1)[order, None]  # routing weights are fp32: the sum runs in fp32
        return torch.zeros(x.shape, dtype=y.dtype, device=x.device).index_add_(0, token, y).to(x.dtype)

    def _activate(self, y: Tensor) -> Tensor:
        """(rows, 2F) gate and up outputs -> act(gate) * up (rows, F); (rows, F) -> act(y) for plain MLPs."""
        if self.gated:
            gate, up = y.chunk(2, dim=-1)
            return self.act(gate) * up
        return self.act(y)

    def _per_expert(self, picked: Tensor, counts: list[int]) -> Tensor:
        """picked (T * k, hidden) sorted by expert, counts[e] rows each -> expert outputs (T * k, hidden).

        Only experts with rows run; the weights are unbound once so that backward stacks one gradient per
        tensor instead of one zero-filled (E, ...) gradient per expert."""
        live = [e for e, n in enumerate(counts) if n]
        if not live:
            return picked.new_zeros(picked.shape)
        gate_up, down = self.gate_up_proj.unbind(0), self.down_proj.unbind(0)
        sizes = [counts[e] for e in live]
        y = torch.cat([F.linear(rows, gate_up[e]) for rows, e in zip(picked.split(sizes), live)])
        y = self._activate(y)
        return torch.cat([F.linear(rows, down[e]) for rows, e in zip(y.split(sizes), live)])


def grouped_mm_fits(x: Tensor, *weights: Tensor) -> bool:
    """Whether `F.grouped_mm(x, w.transpose(1, 2))` runs for these tensors: torch has it (2.10+), on CPU or a CUDA
    GPU of compute capability 8.0+, plain tensors (not subclasses such as DTensor shards), outside torch.compile
    unless bf16 (inductor lowers only bf16), with the 16-byte aligned rows (and, eager, data) its kernels require."""
    tensors = (x, *weights)
    if not hasattr(F, "grouped_mm") or x.device.type not in ("cpu", "cuda") or any(type(t) not in (Tensor, nn.Parameter) for t in tensors):
        return False
    if x.device.type == "cuda" and torch.cuda.get_device_capability(x.device) < (8, 0):
        return False
    compiling = torch.compiler.is_compiling()  # traced tensors have no data pointer
    if compiling and x.dtype != torch.bfloat16:
        return False
    size = x.element_size()
    return all(w.dtype == x.dtype and w.is_contiguous() and w.shape[-2] * size % 16 == 0 for w in weights) and all(
        t.shape[-1] * size % 16 == 0 and (compiling or t.data_ptr() % 16 == 0) for t in tensors)


class Router(nn.Module):
    """Softmax router (Mixtral, Qwen-MoE): top-k of softmax(W x) per token, renormalised when norm_topk_prob."""

    def __init__(self, spec: ArchitectureSpec):
        super().__init__()
        moe = spec.moe
        self.top_k = moe.top_k
        self.normalize = bool(families.setting(spec, "norm_topk_prob", True))
        self.weight = nn.Parameter(torch.empty(moe.num_experts, spec.hidden_size))
        self.bias = nn.Parameter(torch.empty(moe.num_experts)) if moe.router_bias else None

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (T, hidden) -> top-k weights (T, k) fp32, expert indices (T, k), router probabilities (T, E) fp32."""
        probs = torch.softmax(F.linear(x, self.weight, self.bias).float(), dim=-1)
        weights, indices = torch.topk(probs, self.top_k, dim=-1)
        if self.normalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights, indices, probs


class GroupedRouter(nn.Module):
    """DeepSeek-V3 routing: sigmoid scores in fp32; experts form n_group groups, the topk_group groups with the
    largest sum of their two best scores stay eligible, and the top-k eligible experts are chosen. Choice adds
    `e_score_correction_bias` (a buffer that load balancing adjusts outside backprop); the weights are the
    plain scores, renormalised when norm_topk_prob, times routed_scaling_factor."""

    def __init__(self, spec: ArchitectureSpec):
        super().__init__()
        moe = spec.moe
        self.top_k, self.num_experts = moe.top_k, moe.num_experts
        self.groups, self.kept_groups = int(families.setting(spec, "n_group", 1)), int(families.setting(spec, "topk_group", 1))
        self.normalize = bool(families.setting(spec, "norm_topk_prob", True))
        self.scaling = float(families.setting(spec, "routed_scaling_factor", 1.0))
        self.weight = nn.Parameter(torch.empty(moe.num_experts, spec.hidden_size))
        self.register_buffer("e_score_correction_bias", torch.zeros(moe.num_experts))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (T, hidden) -> weights (T, k) fp32, expert indices (T, k), scores normalised per token (T, E) fp32."""
        scores = F.linear(x.float(), self.weight.float()).sigmoid()
        choice = scores + self.e_score_correction_bias
        per_group = self.num_experts // self.groups
        group_scores = choice.view(-1, self.groups, per_group).topk(2, dim=-1).values.sum(-1)  # (T, n_group)
        kept = group_scores.topk(self.kept_groups, dim=-1, sorted=False).indices
        eligible = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, kept, True).repeat_interleave(per_group, dim=1)
        indices = choice.masked_fill(~eligible, float("-inf")).topk(self.top_k, dim=-1, sorted=False).indices
        weights = scores.gather(1, indices)
        if self.normalize:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)  # 1e-20: transformers' guard against 0 / 0
        return weights * self.scaling, indices, scores / scores.sum(dim=-1, keepdim=True)


def load_balancing_loss(probs: Tensor, indices: Tensor, tokens: Tensor | None = None) -> Tensor:
    """E * sum_e f_e * P_e (Switch Transformer) over real tokens: f_e the top-k assignments to e per token,
    P_e the mean router probability of e; k under uniform routing. probs (T, E), indices (T, k), tokens (T,) or None."""
    assigned = torch.zeros_like(probs).scatter_add_(1, indices, torch.ones_like(indices, dtype=probs.dtype))
    if tokens is None:
        f, p = assigned.mean(0), probs.mean(0)
    else:
        w = tokens.reshape(-1, 1).to(probs.dtype)
        count = w.sum().clamp(min=1.0)
        f, p = (assigned * w).sum(0) / count, (probs * w).sum(0) / count
    return probs.shape[-1] * (f * p).sum()


class MoE(nn.Module):
    """Mixture-of-experts FFN: a router picks top-k experts per token, plus optional shared experts.

    The router is softmax top-k, or DeepSeek's grouped sigmoid router where the family routes so. Shared
    experts run on every token (as one MLP of width shared_experts * shared_ffn_size, the HF layout),
    scaled by a sigmoid gate where the spec has one (Qwen2-MoE). Returns the output and the load-balancing
    loss over the real (not padding) tokens.
    """

    def __init__(self, spec: ArchitectureSpec):
        super().__init__()
        moe = spec.moe
        grouped = families.GROUPED_ROUTING in families.features(families.get(spec.model_type), spec.extra)
        self.gate = GroupedRouter(spec) if grouped else Router(spec)
        self.experts = Experts(spec)
        width = moe.shared_experts * moe.shared_ffn_size
        self.shared_experts = MLP(spec, width=width, bias=False, fused=False) if moe.shared_experts else None
        self.shared_expert_gate = nn.Linear(spec.hidden_size, 1, bias=False) if moe.shared_expert_gate else None

    def route(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (T, hidden) -> top-k weights (T, k) fp32, expert indices (T, k), router probabilities (T, E) fp32."""
        return self.gate(x)

    def forward(self, x: Tensor, tokens: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x (B, S, hidden), tokens (B, S) 1 for real tokens or None -> (output like x, aux loss)."""
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        weights, indices, probs = self.route(x)
        out = self.experts(x, indices, weights)
        if self.shared_experts is not None:
            shared = self.shared_experts(x)
            if self.shared_expert_gate is not None:
                shared = torch.sigmoid(self.shared_expert_gate(x)) * shared
            out = out + shared
        return out.reshape(shape), load_balancing_loss(probs, indices, tokens)


# ---- blocks and model -----------------------------------------------------------------------

class DecoderLayer(nn.Module):
    """One transformer block. Norm placements: pre (Llama), post (OLMo 2), sandwich (Gemma 2),
    parallel_shared (Cohere: attention and MLP read one norm of x), parallel (GPT-NeoX: each its own).

    pre:      x += r * attn(in_norm(x));          x += r * mlp(post_attn_norm(x))   (r: residual_multiplier, 1 but Granite)
    post:     x += post_attn_norm(attn(x));      x += post_ff_norm(mlp(x))
    sandwich: x += post_attn_norm(attn(in_norm(x)));  x += post_ff_norm(mlp(pre_ff_norm(x)))
    parallel: x += attn(in_norm(x)) + mlp(in_norm(x) or post_attn_norm(x))
    """

    def __init__(self, spec: ArchitectureSpec, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.placement = spec.norm_placement
        self.self_attn = MLAttention(spec, layer_idx) if spec.mla is not None else Attention(spec, layer_idx)
        self.is_moe = spec.is_moe_layer(layer_idx)
        self.mlp = MoE(spec) if self.is_moe else MLP(spec)
        for name in NORMS_BY_PLACEMENT[self.placement]:
            setattr(self, name, make_norm(spec, spec.hidden_size))
        self.residual_scale = float(families.setting(spec, "residual_multiplier", 1.0))
        self.checkpointing = False  # recompute this block in backward instead of keeping its activations

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None, mask: Tensor | None,
                cache: "KVCache | None" = None, tokens: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """x (B, S, hidden), tokens (B, S) real-token mask or None -> (x, MoE aux loss or None)."""
        if self.checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(self._forward, x, rope, mask, cache, tokens, use_reentrant=False)
        return self._forward(x, rope, mask, cache, tokens)

    def _forward(self, x: Tensor, rope, mask, cache, tokens) -> tuple[Tensor, Tensor | None]:
        if self.placement == "post":
            x = x + self.post_attention_layernorm(self.self_attn(x, rope, mask, cache))
            y, aux = self._ffn(x, tokens)
            return x + self.post_feedforward_layernorm(y), aux
        if self.placement in ("parallel", "parallel_shared"):
            h = self.input_layernorm(x)
            y, aux = self._ffn(h if self.placement == "parallel_shared" else self.post_attention_layernorm(x), tokens)
            return x + self.self_attn(h, rope, mask, cache) + y, aux
        y = self.self_attn(self.input_layernorm(x), rope, mask, cache)
        if self.placement == "pre":
            x = x + self._scaled(y)
            y, aux = self._ffn(self.post_attention_layernorm(x), tokens)
            return x + self._scaled(y), aux
        x = x + self.post_attention_layernorm(y)
        y, aux = self._ffn(self.pre_feedforward_layernorm(x), tokens)
        return x + self.post_feedforward_layernorm(y), aux

    def _scaled(self, y: Tensor) -> Tensor:
        return y * self.residual_scale if self.residual_scale != 1.0 else y

    def _ffn(self, x: Tensor, tokens: Tensor | None) -> tuple[Tensor, Tensor | None]:
        if self.is_moe:
            return self.mlp(x, tokens)
        return self.mlp(x), None


class KVCache:
    """Pre-allocated keys and values of every layer, (B, heads, max_len, width) each; `length` positions filled.

    Each layer's attention says its shapes (`cache_shapes`): (G, D) keys and values for Attention, the latent
    (1, kv_lora_rank) and the shared rotated key (1, qk_rope_head_dim) for MLAttention. All positions are kept
    (sliding-window layers mask the old ones), so every layer sees the same cache indices.
    """

    def __init__(self, shapes: list[tuple[tuple[int, int], tuple[int, int]]], batch: int, max_len: int,
                 dtype: torch.dtype, device: torch.device | str):
        self.keys = [torch.zeros((batch, *k[:1], max_len, *k[1:]), dtype=dtype, device=device) for k, _ in shapes]
        self.values = [torch.zeros((batch, *v[:1], max_len, *v[1:]), dtype=dtype, device=device) for _, v in shapes]
        self.max_len = max_len
        self.length = 0

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store k, v (B, heads, S, width) after the filled positions; return all of them so far (B, heads, length + S, width)."""
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; {end} requested")
        self.keys[layer][:, :, self.length:end] = k
        self.values[layer][:, :, self.length:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def truncate(self, length: int) -> None:
        """Keep the first `length` positions (0 <= length <= self.length); the next update writes after them.

        Speculative decoding rolls rejected draft tokens back this way: nothing is copied or cleared.
        """
        if not 0 <= length <= self.length:
            raise ValueError(f"KV cache holds {self.length} positions; cannot truncate to {length}")
        self.length = length


class Decoder(nn.Module):
    """Embeddings, the stack of DecoderLayers and the final norm (HF's `model.` prefix).

    The token embedding is scaled by sqrt(hidden_size) as a tensor of its dtype (Gemma: bf16 rounds it, as
    transformers does) and by the family's embedding_multiplier (Granite). Rotary tables: one for all layers,
    plus one for sliding layers where the family gives them their own base; NoPE layers get none.
    """

    def __init__(self, spec: ArchitectureSpec):
        super().__init__()
        self.spec = spec
        fam = families.get(spec.model_type)
        self.embed_tokens = nn.Embedding(spec.vocab_size, spec.hidden_size)
        self.embed_scale = math.sqrt(spec.hidden_size) if fam.embed_scale == "sqrt_hidden" else None
        self.embedding_multiplier = float(families.setting(spec, "embedding_multiplier", 1.0))
        if spec.position == "learned":
            self.embed_positions = nn.Embedding(spec.context_length, spec.hidden_size)
        self.rotary_emb = RotaryEmbedding(spec) if spec.position == "rope" else None
        self.rotary_emb_local = RotaryEmbedding(spec, local=True) if spec.position == "rope" and fam.rope_per_layer_type else None
        self.alibi = ALiBi(spec.num_heads) if spec.position == "alibi" else None
        self.layers = nn.ModuleList(DecoderLayer(spec, i) for i in range(spec.num_layers))
        self.layer_kinds = sorted(set(spec.resolved_layer_types))
        self.norm = make_norm(spec, spec.hidden_size)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, position_ids: Tensor | None = None,
                cache: KVCache | None = None) -> tuple[Tensor, Tensor | None]:
        """input_ids (B, S); attention_mask (B, past + S), 1 for tokens, 0 for padding, or a bool (B, 1, S, S)
        saying which earlier tokens each token may see (document masking) -> hidden (B, S, hidden), aux."""
        B, S = input_ids.shape
        past = cache.length if cache is not None else 0
        allowed = None
        if attention_mask is not None and attention_mask.dim() == 4:
            if past or attention_mask.shape != (B, 1, S, S) or attention_mask.dtype != torch.bool:
                raise ValueError(f"a 4-D attention_mask must be bool ({B}, 1, {S}, {S}) without a cache, got "
                                 f"{attention_mask.dtype} {tuple(attention_mask.shape)}")
            allowed, attention_mask = attention_mask, None
        if attention_mask is not None and attention_mask.shape != (B, past + S):
            raise ValueError(f"attention_mask must have shape ({B}, {past + S}) (cached + new tokens), got {tuple(attention_mask.shape)}")
        if self.spec.position == "learned" and past + S > self.spec.context_length:
            raise ValueError(f"sequence of {past + S} tokens exceeds context_length={self.spec.context_length} (learned positions)")
        padding = None if attention_mask is None or bool(attention_mask.all()) else attention_mask
        if position_ids is None:
            position_ids = _positions(B, S, past, padding, input_ids.device)
        x = self.embed(input_ids, position_ids)
        ropes, masks = self.context(position_ids, past, padding, allowed, x.dtype)
        tokens = padding[:, past:] if padding is not None else None
        x, aux_losses = self.run_layers(x, ropes, masks, cache, tokens)
        if cache is not None:
            cache.length += S
        aux = torch.stack(aux_losses).mean() if aux_losses else None
        return self.norm(x), aux

    def embed(self, input_ids: Tensor, position_ids: Tensor) -> Tensor:
        """input_ids (B, S), position_ids (B, S) -> the scaled token (+ learned position) embeddings (B, S, hidden)."""
        x = self.embed_tokens(input_ids)
        if self.embed_scale is not None:
            x = x * x.new_tensor(self.embed_scale)
        if self.embedding_multiplier != 1.0:
            x = x * self.embedding_multiplier
        if self.spec.position == "learned":
            x = x + self.embed_positions(position_ids)
        return x

    def context(self, position_ids: Tensor, past: int, padding: Tensor | None, allowed: Tensor | None,
                dtype: torch.dtype) -> tuple[dict, dict]:
        """What every layer reads besides x, per layer kind: rotary (cos, sin) tables (or None) and attention masks."""
        S, device = position_ids.shape[1], position_ids.device
        ropes = {kind: None for kind in self.layer_kinds}
        if self.rotary_emb is not None:
            ropes = {kind: self.rotary_emb(position_ids, dtype) for kind in self.layer_kinds}
            if self.rotary_emb_local is not None and "sliding_attention" in ropes:
                ropes["sliding_attention"] = self.rotary_emb_local(position_ids, dtype)
        masks = {}
        for kind in self.layer_kinds:
            window = self.spec.sliding_window if kind == "sliding_attention" else None
            mask = build_mask(S, past, padding, window, device, force=self.alibi is not None or allowed is not None)
            if allowed is not None:
                mask = mask & allowed
            masks[kind] = self.alibi(mask, past) if self.alibi is not None else mask
        return ropes, masks

    def stack(self) -> list["DecoderLayer"]:
        """The layers in order: all of them, or a pipeline stage's share (a ModuleDict keyed by layer index)."""
        return list(self.layers.values() if isinstance(self.layers, nn.ModuleDict) else self.layers)

    def run_layers(self, x: Tensor, ropes: dict, masks: dict, cache: KVCache | None = None, tokens: Tensor | None = None,
                   layers: list["DecoderLayer"] | None = None) -> tuple[Tensor, list[Tensor]]:
        """x (B, S, hidden) through `layers` (default: this decoder's) -> (x, MoE aux losses)."""
        aux_losses = []
        for layer in self.stack() if layers is None else layers:
            i = layer.layer_idx
            kind = self.spec.resolved_layer_types[i]
            x, aux = layer(x, None if i in self.spec.nope_layers else ropes[kind], masks[kind], cache, tokens)
            if aux is not None:
                aux_losses.append(aux)
        return x, aux_losses


def _positions(B: int, S: int, past: int, padding: Tensor | None, device: torch.device) -> Tensor:
    """Position of each new token: its index among the real tokens of its row (left padding skipped)."""
    if padding is None:
        return torch.arange(past, past + S, device=device).expand(B, S)
    return (padding.long().cumsum(-1) - 1).clamp(min=0)[:, past:]


@dataclass
class CausalLMOutput:
    logits: Tensor  # (B, S or logits_to_keep, vocab)
    loss: Tensor | None = None  # next-token cross-entropy (+ router_aux_loss_coef * aux_loss for MoE)
    aux_loss: Tensor | None = None  # MoE load-balancing loss, mean over layers


torch.export.register_dataclass(CausalLMOutput, serialized_type_name="archsmith.network.CausalLMOutput")  # torch.export can return it


class CausalLM(nn.Module):
    """The decoder LM: `model` (Decoder) and `lm_head`, tied to the embedding when the spec says so.

    Logits as the family computes them: divided by logits_scaling (Granite), times logit_scale (Cohere),
    soft-capped by final_logit_softcapping (Gemma 2).
    """

    def __init__(self, spec: ArchitectureSpec):
        super().__init__()
        check_buildable(spec)
        self.spec = spec
        self.model = Decoder(spec)
        self.lm_head = nn.Linear(spec.hidden_size, spec.vocab_size, bias=False)
        self.logits_divisor = float(families.setting(spec, "logits_scaling", 1.0))
        self.logit_scale = float(families.setting(spec, "logit_scale", 1.0))
        cap = families.setting(spec, "final_logit_softcapping", None)
        self.final_softcap = SoftCap(cap) if cap is not None else None
        self.tie_weights()

    def tie_weights(self) -> None:
        if self.spec.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, labels: Tensor | None = None,
                position_ids: Tensor | None = None, cache: KVCache | None = None, logits_to_keep: int = 0) -> CausalLMOutput:
        """input_ids (B, S) -> logits (B, S, vocab). labels (B, S) are the input ids (shifted here), -100 ignored.

        logits_to_keep > 0 computes logits for the last that many positions only (generation).
        """
        _check_ids(input_ids, self.spec.vocab_size)
        hidden, aux = self.model(input_ids, attention_mask, position_ids, cache)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.head(hidden)
        loss = None
        if labels is not None:
            loss = next_token_loss(logits, labels)
            if aux is not None:
                loss = loss + float(families.setting(self.spec, "router_aux_loss_coef", 0.01)) * aux
        return CausalLMOutput(logits=logits, loss=loss, aux_loss=aux)

    def head(self, hidden: Tensor) -> Tensor:
        """Final-normed hidden (B, S, hidden) -> logits (B, S, vocab), scaled and capped as the family does."""
        logits = self.lm_head(hidden)
        if self.logits_divisor != 1.0:
            logits = logits / self.logits_divisor
        if self.logit_scale != 1.0:
            logits = logits * self.logit_scale
        if self.final_softcap is not None:
            logits = self.final_softcap(logits)
        return logits

    # ---- switches -------------------------------------------------------------------------
    def set_checkpointing(self, enabled: bool = True, layers: Iterable[int] | None = None) -> None:
        """Activation checkpointing per block: all blocks, or only the given layer indices."""
        chosen = set(range(self.spec.num_layers) if layers is None else layers)
        for layer in self.model.stack():
            layer.checkpointing = enabled and layer.layer_idx in chosen

    def set_attention(self, impl: str) -> None:
        """'sdpa' (fused kernel) or 'eager' (explicit softmax, same result); soft-capped attention is eager only."""
        if impl not in ATTENTION_IMPLS:
            raise SpecError("attention", f"must be one of {', '.join(ATTENTION_IMPLS)}; got {impl!r}")
        if impl == "sdpa" and any(layer.self_attn.softcap is not None for layer in self.model.layers):
            raise SpecError("attention", "must be 'eager' with attention soft-capping (attn_logit_softcapping): SDPA cannot cap scores")
        for layer in self.model.layers:
            layer.self_attn.impl = impl

    def num_parameters(self) -> int:
        """Distinct parameters (a tied lm_head counts once), as `estimate.count_params(spec)['total']`."""
        return sum(p.numel() for p in self.parameters())

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        p = self.lm_head.weight
        return KVCache([layer.self_attn.cache_shapes for layer in self.model.layers], batch, max_len, p.dtype, p.device)

    # ---- construction and files ------------------------------------------------------------
    @classmethod
    def from_spec(cls, spec: ArchitectureSpec, seed: int = 0, dtype: torch.dtype = torch.float32,
                  device: torch.device | str = "cpu") -> "CausalLM":
        """Build with `init_weights(seed)`: the same spec and seed give the same weights on any device."""
        with torch.device("meta"):
            model = cls(spec)
        model.to_empty(device=device)
        model.tie_weights()
        init_weights(model, seed)
        return model.to(dtype)

    @classmethod
    def from_config(cls, path, seed: int = 0, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> "CausalLM":
        """A freshly initialised model from a config.json (for example the one `archsmith design` wrote)."""
        from archsmith.hfconfig import load_spec

        return cls.from_spec(load_spec(path), seed=seed, dtype=dtype, device=device)

    @classmethod
    def from_pretrained(cls, path, dtype: torch.dtype | None = None, device: torch.device | str = "cpu") -> "CausalLM":
        """Load an HF checkpoint directory of a family with load parity (safetensors, sharded or not)."""
        from archsmith.weights import load_pretrained

        return load_pretrained(path, dtype=dtype, device=device)

    def save_pretrained(self, path, max_shard_size: int | str = "5GB", overwrite: bool = False) -> list:
        """Write config.json + safetensors (sharded beyond max_shard_size) that transformers loads as this model."""
        from archsmith.weights import save_pretrained

        return save_pretrained(self, path, max_shard_size=max_shard_size, overwrite=overwrite)


def next_token_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy of logits (B, S, vocab) against labels (B, S) shifted one left (-100 ignored); fp32. A DTensor
    split over the vocabulary (tensor parallel) goes through torch's vocabulary-parallel loss (`loss_parallel`), and a
    traced one through `F.cross_entropy` (the compiler fuses it); plain tensors through `_CrossEntropy`."""
    targets = F.pad(labels[:, 1:], (0, 1), value=-100).flatten()  # shift the labels, not the (large) logits
    logits = logits.flatten(0, 1)
    if type(logits) is not Tensor or torch.compiler.is_compiling():
        return F.cross_entropy(logits.float(), targets, ignore_index=-100)
    return _CrossEntropy.apply(logits, targets)


class _CrossEntropy(torch.autograd.Function):
    """`F.cross_entropy(logits.float(), targets, ignore_index=-100)` for logits (N, vocab), targets (N,), with the
    gradient (softmax - one-hot) formed in the forward in the log-softmax's own storage and scaled in place by the
    backward: two passes over (N, vocab) and two (N, vocab) fp32 tensors fewer than autograd's log-softmax and NLL
    backward. That storage is saved once: a second backward through the graph (retain_graph) is refused by autograd."""

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor) -> Tensor:
        with torch.autocast(logits.device.type, enabled=False):
            grad = torch.log_softmax(logits.float(), dim=-1)  # (N, vocab) fp32
            kept = targets != -100
            rows = torch.where(kept, targets, 0)[:, None]  # (N, 1)
            weight = kept.to(grad.dtype)[:, None]  # (N, 1): 1 for a counted token, 0 for an ignored one
            count = weight.sum()
            loss = -(grad.gather(1, rows) * weight).sum() / count
            grad.exp_().scatter_add_(1, rows, -weight)  # softmax - one-hot (ignored rows: scaled to 0 below)
        ctx.save_for_backward(grad, weight / count)
        ctx.dtype = logits.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss: Tensor) -> tuple[Tensor, None]:
        grad, weight = ctx.saved_tensors
        return grad.mul_(weight * grad_loss).to(ctx.dtype), None


def _check_ids(input_ids: Tensor, vocab: int) -> None:
    if input_ids.dim() != 2 or input_ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"input_ids must be an integer tensor of shape (batch, seq), got {input_ids.dtype} {tuple(input_ids.shape)}")
    if input_ids.numel() and not torch.compiler.is_compiling():
        low, high = int(input_ids.min()), int(input_ids.max())
        if low < 0 or high >= vocab:
            raise ValueError(f"input_ids must be in [0, vocab_size={vocab}), got values in [{low}, {high}]")


# ---- initialisation -------------------------------------------------------------------------

RESIDUAL_OUTPUTS = ("o_proj.weight", "down_proj.weight", "experts.down_proj")


def init_weights(model: CausalLM, seed: int = 0) -> None:
    """Normal(0, initializer_range) for matrices and embeddings; residual output projections
    (o_proj, down_proj) get initializer_range / sqrt(2 * num_layers) (GPT-2 / Megatron); biases 0;
    norms scale by 1 (a (1 + w) norm's weight is 0); buffers (router score corrections) 0. Drawn on the
    CPU from one generator in parameter order, so reproducible by seed.
    """
    spec = model.spec
    std = spec.initializer_range
    resid_std = std / math.sqrt(2 * spec.num_layers)
    norms = {id(m.weight): 1.0 - getattr(m, "offset", 0.0) for m in model.modules()
             if isinstance(m, (RMSNorm, LayerNorm)) and m.weight is not None}
    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for buffer in model.buffers():
            buffer.zero_()
        for name, p in model.named_parameters():
            if id(p) in norms:
                p.fill_(norms[id(p)])
            elif name.endswith("bias"):
                p.zero_()
            else:
                sigma = resid_std if name.endswith(RESIDUAL_OUTPUTS) else std
                p.copy_(torch.empty(p.shape, dtype=torch.float32).normal_(0.0, sigma, generator=gen))


# ---- inspection -----------------------------------------------------------------------------

def describe(spec: ArchitectureSpec, depth: int = 4) -> dict:
    """Build the model on the meta device (no memory) and report its module tree and parameter count.

    tree: one row per module down to `depth` levels below the root (repeated layers shown once,
    as `model.layers.0`), with its class and distinct parameter count; a tied lm_head shows 0 of its own and
    `tied_to` {"weight": "model.embed_tokens.weight"}, so the top-level rows add up to the root's total.
    """
    from archsmith.analyze import own_parameters
    from archsmith.estimate import count_params

    with torch.device("meta"):
        model = CausalLM(spec)
    own, tied = own_parameters(model)
    rows = []
    for name, module in model.named_modules():
        level = name.count(".") + 1 if name else 0
        first_layer = name == "model.layers.0" or name.startswith("model.layers.0.")
        if level > depth or (name.startswith("model.layers.") and not first_layer):
            continue
        rows.append({"name": name or "(root)", "class": type(module).__name__, "parameters": own[name],
                     **({"tied_to": tied[name]} if name in tied else {})})
    estimated = count_params(spec)["total"]
    total = model.num_parameters()
    return {"parameters": total, "estimated_parameters": estimated, "matches_estimate": total == estimated,
            "num_layers": len(model.model.layers), "parameter_tensors": len(list(model.parameters())), "tree": rows}
