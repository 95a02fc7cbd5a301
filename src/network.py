"""The decoder LM built from an `ArchitectureSpec`: one class per component, HF state-dict names.

Parameter names follow transformers' Llama layout (`model.embed_tokens`,
`model.layers.{i}.self_attn.{q,k,v,o}_proj`, `mlp.{gate,up,down}_proj`, `input_layernorm`,
`post_attention_layernorm`, `model.norm`, `lm_head`), so loading and saving HF checkpoints
(`archsmith.weights`) is a key check, not a conversion. The set of tensors is exactly
`estimate.model_tensors(spec)`; a test ties the two together.

Shapes: B batch, S new tokens, K keys (cached + new), H query heads, G KV heads, D head_dim.
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
}
ATTENTION_IMPLS = ("sdpa", "eager")


# Components this module implements beyond the Llama block, named as `families.features` names them.
# A family builds only when its parity is not "none" and every feature it needs is here.
FEATURES: frozenset[str] = frozenset()
# Spec fields this module cannot build yet: (field, the value it can build, what is missing)
UNBUILT: tuple[tuple[str, object, str], ...] = (
    ("mla", None, "multi-head latent attention"),
    ("linear_attention", None, "gated delta-net linear attention"),
    ("attention_sinks", False, "attention sinks"),
    ("attn_output_gate", False, "a gated attention output"),
    ("lm_head_bias", False, "an lm_head bias"),
    ("nope_layers", (), "layers without RoPE"),
    ("attention_chunk_size", None, "chunked attention"),
)


def check_buildable(spec: ArchitectureSpec) -> None:
    """Raise SpecError for anything this module would not build faithfully (never approximate).

    A spec of a family whose `parity` in `archsmith.families` is "none" is refused, naming what
    network.py lacks for it; so is any spec field no component here implements.
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
    if spec.activation not in ACTIVATIONS:
        raise SpecError("activation", f"must be one of {', '.join(ACTIVATIONS)}; got {spec.activation!r}")
    if spec.position == "rope":
        scaling = spec.rope_scaling or {}
        rot = int(spec.head_dim * spec.partial_rotary_factor)
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


def _missing(spec: ArchitectureSpec) -> list[tuple[str, str]]:
    """(field, what is missing) for each component the spec needs that this module lacks."""
    found = [(field, text) for field, built, text in UNBUILT if getattr(spec, field) != built]
    unbuilt_choices = {"norm": ("rmsnorm", "layernorm"), "norm_placement": ("pre", "post", "sandwich"),
                       "qk_norm": ("none", "head", "full")}
    found += [(field, f"{field} {getattr(spec, field)!r}") for field, ok in unbuilt_choices.items() if getattr(spec, field) not in ok]
    if spec.moe is not None:
        found += [(f"moe.{name}", text) for name, text in (("expert_bias", "expert biases"), ("shared_expert_gate", "a shared-expert gate"))
                  if getattr(spec.moe, name)]
        if spec.moe.layers is not None:
            found.append(("moe.layers", "dense layers between MoE layers"))
    found += [("model_type", feature) for feature in families.features(families.get(spec.model_type), spec.extra)
              if feature not in FEATURES]
    return found


# ---- norms ----------------------------------------------------------------------------------

class RMSNorm(nn.Module):
    """y = weight * x / sqrt(mean(x**2) + eps) over the last dim; statistics in fp32. x: (..., width)."""

    def __init__(self, width: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class LayerNorm(nn.Module):
    """y = weight * (x - mean) / sqrt(var + eps) + bias over the last dim. x: (..., width)."""

    def __init__(self, width: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.bias = nn.Parameter(torch.zeros(width))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


def make_norm(spec: ArchitectureSpec, width: int) -> nn.Module:
    return RMSNorm(width, spec.norm_eps) if spec.norm == "rmsnorm" else LayerNorm(width, spec.norm_eps)


# ---- positions ------------------------------------------------------------------------------

class RotaryEmbedding(nn.Module):
    """cos/sin tables for rotary embeddings, computed once per forward for all layers.

    Rotate-half layout as in transformers; the first `rot_dim` = head_dim * partial_rotary_factor
    channels rotate. Scalings: default, linear (positions / factor), dynamic NTK (base grows with the
    sequence beyond `context_length`), llama3 (frequency-dependent, Llama 3.1).
    """

    def __init__(self, spec: ArchitectureSpec):
        super().__init__()
        self.rot_dim = int(spec.head_dim * spec.partial_rotary_factor)
        self.theta = float(spec.rope_theta)
        self.scaling = dict(spec.rope_scaling or {})
        self.kind = self.scaling.get("rope_type", "default")
        self.context_length = spec.context_length
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
        return inv

    def forward(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """positions (B, S) -> cos, sin (B, S, rot_dim) in `dtype`."""
        if self.kind == "dynamic":
            inv = self.inv_freq(int(positions.max()) + 1, positions.device)
        else:
            if positions.device not in self._cached or torch.compiler.is_compiling():
                self._cached[positions.device] = self.inv_freq(0, positions.device)
            inv = self._cached[positions.device]
        freqs = positions[:, :, None].float() * inv[None, None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def _llama3_inv_freq(inv: Tensor, s: dict) -> Tensor:
    """Llama 3.1: long wavelengths divided by `factor`, short ones kept, a smooth blend between."""
    factor, low, high, old = s["factor"], s["low_freq_factor"], s["high_freq_factor"], s["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > old / low, inv / factor, inv)
    smooth = (old / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old / high) & (wavelen <= old / low)
    return torch.where(medium, blended, scaled)


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x (B, heads, S, D); cos/sin (B, S, rot_dim). Rotates the first rot_dim channels."""
    cos, sin = cos[:, None], sin[:, None]
    rot = cos.shape[-1]
    if rot == x.shape[-1]:
        return x * cos + _rotate_half(x) * sin
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    return torch.cat((x_rot * cos + _rotate_half(x_rot) * sin, x_pass), dim=-1)


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


class Attention(nn.Module):
    """Multi-head attention with grouped KV heads (MHA: G = H, GQA: 1 < G < H, MQA: G = 1).

    SDPA by default; `impl = "eager"` computes softmax(q k^T * scale + mask) v explicitly with
    an fp32 softmax, for inspection and as the reference the fused kernel must match.
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
        if spec.qk_norm == "head":  # Qwen3: per head, over D
            self.q_norm, self.k_norm = make_norm(spec, d), make_norm(spec, d)
        elif spec.qk_norm == "full":  # OLMo 2: over all heads
            self.q_norm, self.k_norm = make_norm(spec, self.q_dim), make_norm(spec, self.kv_dim)
        self.scale = float(families.setting(spec, "query_pre_attn_scalar", d)) ** -0.5
        self.sliding = spec.resolved_layer_types[layer_idx] == "sliding_attention"
        self.impl = "sdpa"

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None, mask: Tensor | None,
                cache: "KVCache | None" = None) -> Tensor:
        """x (B, S, hidden) -> (B, S, hidden). mask: bool or additive (B|1, 1|H, S, K), or None for plain causal."""
        B, S, _ = x.shape
        if self.fused:
            q, k, v = self.qkv_proj(x).split([self.q_dim, self.kv_dim, self.kv_dim], dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.qk_norm == "full":
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(B, S, self.num_heads, self.head_dim)
        k = k.view(B, S, self.num_kv_heads, self.head_dim)
        if self.qk_norm == "head":
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # (B, H|G, S, D)
        v = v.view(B, S, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)
        causal = mask is None and S > 1
        if self.impl == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=self.scale,
                                                 enable_gqa=self.num_kv_heads != self.num_heads)
        else:
            out = self._eager(q, k, v, mask, causal)
        return self.o_proj(out.transpose(1, 2).reshape(B, S, self.q_dim))

    def _eager(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool) -> Tensor:
        group = self.num_heads // self.num_kv_heads
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        scores = (q @ k.transpose(-2, -1)) * self.scale  # (B, H, S, K)
        if causal:
            S, K = scores.shape[-2:]
            mask = torch.ones(S, K, dtype=torch.bool, device=q.device).tril(K - S)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        return probs @ v


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
    down_proj: (E, hidden, F).
    """

    def __init__(self, spec: ArchitectureSpec):
        super().__init__()
        moe = spec.moe
        e, f, h = moe.num_experts, moe.expert_ffn_size, spec.hidden_size
        self.num_experts, self.gated = e, spec.gated
        self.act = ACTIVATIONS[spec.activation]
        self.gate_up_proj = nn.Parameter(torch.empty(e, 2 * f if spec.gated else f, h))
        self.down_proj = nn.Parameter(torch.empty(e, h, f))

    def forward(self, x: Tensor, indices: Tensor, weights: Tensor) -> Tensor:
        """x (T, hidden); indices, weights (T, k) -> (T, hidden) = sum_k weight * expert_k(x)."""
        out = torch.zeros_like(x)
        for e in range(self.num_experts):
            token, slot = torch.where(indices == e)
            if token.numel() == 0:
                continue
            y = F.linear(x[token], self.gate_up_proj[e])
            if self.gated:
                gate, up = y.chunk(2, dim=-1)
                y = self.act(gate) * up
            else:
                y = self.act(y)
            y = F.linear(y, self.down_proj[e]) * weights[token, slot, None]
            out.index_add_(0, token, y.to(out.dtype))
        return out


class MoE(nn.Module):
    """Mixture-of-experts FFN: a softmax router picks top-k experts per token, plus optional shared experts.

    Returns the output and the load-balancing loss E * sum_e f_e * P_e (Switch Transformer;
    f_e: top-k assignments to e per token, P_e: mean router probability), k under uniform routing.
    """

    def __init__(self, spec: ArchitectureSpec):
        super().__init__()
        moe = spec.moe
        self.num_experts, self.top_k = moe.num_experts, moe.top_k
        self.normalize = bool(families.setting(spec, "norm_topk_prob", True))
        self.gate = nn.Linear(spec.hidden_size, moe.num_experts, bias=moe.router_bias)
        self.experts = Experts(spec)
        # all shared experts as one MLP of width shared_experts * shared_ffn_size (the HF layout; the same function)
        self.shared_experts = MLP(spec, width=moe.shared_experts * moe.shared_ffn_size, bias=False, fused=False) if moe.shared_experts else None

    def route(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (T, hidden) -> top-k weights (T, k) fp32, expert indices (T, k), router probabilities (T, E) fp32."""
        probs = torch.softmax(self.gate(x).float(), dim=-1)
        weights, indices = torch.topk(probs, self.top_k, dim=-1)
        if self.normalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights, indices, probs

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        weights, indices, probs = self.route(x)
        out = self.experts(x, indices, weights)
        if self.shared_experts is not None:
            out = out + self.shared_experts(x)
        assigned = torch.zeros_like(probs).scatter_add_(1, indices, torch.ones_like(weights)).mean(0)  # (E,)
        aux = self.num_experts * (assigned * probs.mean(0)).sum()
        return out.reshape(shape), aux


# ---- blocks and model -----------------------------------------------------------------------

class DecoderLayer(nn.Module):
    """One transformer block. Norm placements: pre (Llama), post (OLMo 2), sandwich (Gemma 2).

    pre:      x += attn(in_norm(x));             x += mlp(post_attn_norm(x))
    post:     x += post_attn_norm(attn(x));      x += post_ff_norm(mlp(x))
    sandwich: x += post_attn_norm(attn(in_norm(x)));  x += post_ff_norm(mlp(pre_ff_norm(x)))
    """

    def __init__(self, spec: ArchitectureSpec, layer_idx: int):
        super().__init__()
        self.placement = spec.norm_placement
        self.self_attn = Attention(spec, layer_idx)
        self.is_moe = spec.moe is not None
        self.mlp = MoE(spec) if self.is_moe else MLP(spec)
        for name in NORMS_BY_PLACEMENT[self.placement]:
            setattr(self, name, make_norm(spec, spec.hidden_size))
        self.checkpointing = False  # recompute this block in backward instead of keeping its activations

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None, mask: Tensor | None,
                cache: "KVCache | None" = None) -> tuple[Tensor, Tensor | None]:
        """x (B, S, hidden) -> (x, MoE aux loss or None)."""
        if self.checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(self._forward, x, rope, mask, cache, use_reentrant=False)
        return self._forward(x, rope, mask, cache)

    def _forward(self, x: Tensor, rope, mask, cache) -> tuple[Tensor, Tensor | None]:
        if self.placement == "post":
            x = x + self.post_attention_layernorm(self.self_attn(x, rope, mask, cache))
            y, aux = self._ffn(x)
            return x + self.post_feedforward_layernorm(y), aux
        x = x + self._post_attn(self.self_attn(self.input_layernorm(x), rope, mask, cache))
        if self.placement == "pre":
            y, aux = self._ffn(self.post_attention_layernorm(x))
            return x + y, aux
        y, aux = self._ffn(self.pre_feedforward_layernorm(x))
        return x + self.post_feedforward_layernorm(y), aux

    def _post_attn(self, y: Tensor) -> Tensor:
        return self.post_attention_layernorm(y) if self.placement == "sandwich" else y

    def _ffn(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        if self.is_moe:
            return self.mlp(x)
        return self.mlp(x), None


class KVCache:
    """Pre-allocated keys and values of every layer: (B, G, max_len, D) each; `length` positions filled.

    All positions are kept (sliding-window layers mask the old ones), so every layer sees the
    same cache indices.
    """

    def __init__(self, spec: ArchitectureSpec, batch: int, max_len: int, dtype: torch.dtype, device: torch.device | str):
        shape = (batch, spec.num_kv_heads, max_len, spec.head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(spec.num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(spec.num_layers)]
        self.max_len = max_len
        self.length = 0

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store k, v (B, G, S, D) after the filled positions; return all keys/values so far (B, G, length + S, D)."""
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; {end} requested")
        self.keys[layer][:, :, self.length:end] = k
        self.values[layer][:, :, self.length:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


class Decoder(nn.Module):
    """Embeddings, the stack of DecoderLayers and the final norm (HF's `model.` prefix)."""

    def __init__(self, spec: ArchitectureSpec):
        super().__init__()
        self.spec = spec
        self.embed_tokens = nn.Embedding(spec.vocab_size, spec.hidden_size)
        if spec.position == "learned":
            self.embed_positions = nn.Embedding(spec.context_length, spec.hidden_size)
        self.rotary_emb = RotaryEmbedding(spec) if spec.position == "rope" else None
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
        x = self.embed_tokens(input_ids)
        if self.spec.position == "learned":
            x = x + self.embed_positions(position_ids)
        rope = None
        if self.rotary_emb is not None:
            rope = self.rotary_emb(position_ids, x.dtype)
        masks = {}
        for kind in self.layer_kinds:
            window = self.spec.sliding_window if kind == "sliding_attention" else None
            mask = build_mask(S, past, padding, window, input_ids.device, force=self.alibi is not None or allowed is not None)
            if allowed is not None:
                mask = mask & allowed
            masks[kind] = self.alibi(mask, past) if self.alibi is not None else mask
        aux_losses = []
        for layer in self.layers:
            x, aux = layer(x, rope, masks["sliding_attention" if layer.self_attn.sliding else "full_attention"], cache)
            if aux is not None:
                aux_losses.append(aux)
        if cache is not None:
            cache.length += S
        aux = torch.stack(aux_losses).mean() if aux_losses else None
        return self.norm(x), aux


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


class CausalLM(nn.Module):
    """The decoder LM: `model` (Decoder) and `lm_head`, tied to the embedding when the spec says so."""

    def __init__(self, spec: ArchitectureSpec):
        super().__init__()
        check_buildable(spec)
        self.spec = spec
        self.model = Decoder(spec)
        self.lm_head = nn.Linear(spec.hidden_size, spec.vocab_size, bias=False)
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
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            targets = F.pad(labels[:, 1:], (0, 1), value=-100)  # shift the labels, not the (large) logits
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
            if aux is not None:
                loss = loss + float(families.setting(self.spec, "router_aux_loss_coef", 0.01)) * aux
        return CausalLMOutput(logits=logits, loss=loss, aux_loss=aux)

    # ---- switches -------------------------------------------------------------------------
    def set_checkpointing(self, enabled: bool = True, layers: Iterable[int] | None = None) -> None:
        """Activation checkpointing per block: all blocks, or only the given layer indices."""
        chosen = set(range(self.spec.num_layers) if layers is None else layers)
        for i, layer in enumerate(self.model.layers):
            layer.checkpointing = enabled and i in chosen

    def set_attention(self, impl: str) -> None:
        """'sdpa' (fused kernel) or 'eager' (explicit softmax, same result)."""
        if impl not in ATTENTION_IMPLS:
            raise SpecError("attention", f"must be one of {', '.join(ATTENTION_IMPLS)}; got {impl!r}")
        for layer in self.model.layers:
            layer.self_attn.impl = impl

    def num_parameters(self) -> int:
        """Distinct parameters (a tied lm_head counts once), as `estimate.count_params(spec)['total']`."""
        return sum(p.numel() for p in self.parameters())

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        p = self.lm_head.weight
        return KVCache(self.spec, batch, max_len, p.dtype, p.device)

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
    norm weights 1. Drawn on the CPU from one generator in parameter order, so reproducible by seed.
    """
    spec = model.spec
    std = spec.initializer_range
    resid_std = std / math.sqrt(2 * spec.num_layers)
    norms = {id(m.weight) for m in model.modules() if isinstance(m, (RMSNorm, LayerNorm))}
    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if id(p) in norms:
                p.fill_(1.0)
            elif name.endswith("bias"):
                p.zero_()
            else:
                sigma = resid_std if name.endswith(RESIDUAL_OUTPUTS) else std
                p.copy_(torch.empty(p.shape, dtype=torch.float32).normal_(0.0, sigma, generator=gen))


# ---- inspection -----------------------------------------------------------------------------

def describe(spec: ArchitectureSpec, depth: int = 4) -> dict:
    """Build the model on the meta device (no memory) and report its module tree and parameter count.

    tree: one row per module down to `depth` levels below the root (repeated layers shown once,
    as `model.layers.0`), with its class and distinct parameter count.
    """
    from archsmith.estimate import count_params

    with torch.device("meta"):
        model = CausalLM(spec)
    rows = []
    for name, module in model.named_modules():
        level = name.count(".") + 1 if name else 0
        first_layer = name == "model.layers.0" or name.startswith("model.layers.0.")
        if level > depth or (name.startswith("model.layers.") and not first_layer):
            continue
        rows.append({"name": name or "(root)", "class": type(module).__name__,
                     "parameters": sum(p.numel() for p in module.parameters())})
    estimated = count_params(spec)["total"]
    total = model.num_parameters()
    return {"parameters": total, "estimated_parameters": estimated, "matches_estimate": total == estimated,
            "num_layers": len(model.model.layers), "parameter_tensors": len(list(model.parameters())), "tree": rows}
