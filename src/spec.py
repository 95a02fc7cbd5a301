"""The architecture spec: one dataclass that describes a transformer, and everything flows from it.

`hfconfig` reads it from / writes it to Hugging Face `config.json`, `estimate` computes
parameters, FLOPs and memory from it in closed form, `design` produces it from a budget,
`network` builds the `nn.Module` from it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from archsmith import families
from archsmith.errors import SpecError

FfnKind = Literal["swiglu", "geglu", "gelu"]
# layernorm: weight and bias; layernorm_nobias: weight only; layernorm_nonparametric: neither
NormKind = Literal["rmsnorm", "layernorm", "layernorm_nobias", "layernorm_nonparametric"]
NormPlacement = Literal["pre", "post", "sandwich", "parallel", "parallel_shared"]
PositionKind = Literal["rope", "alibi", "learned"]
QkNormKind = Literal["none", "head", "full", "per_head", "l2"]
LayerType = Literal["full_attention", "sliding_attention", "chunked_attention", "linear_attention"]

FFN_KINDS = ("swiglu", "geglu", "gelu")
NORM_KINDS = ("rmsnorm", "layernorm", "layernorm_nobias", "layernorm_nonparametric")
NORM_PLACEMENTS = ("pre", "post", "sandwich", "parallel", "parallel_shared")
POSITION_KINDS = ("rope", "alibi", "learned")
QK_NORM_KINDS = ("none", "head", "full", "per_head", "l2")
LAYER_TYPES = ("full_attention", "sliding_attention", "chunked_attention", "linear_attention")
# The norms of one block by placement, in HF order. parallel: attention and MLP both read x, each
# through its own norm (GPT-NeoX); parallel_shared: both read one norm of x (Phi, Cohere, Falcon-7B).
NORMS_BY_PLACEMENT: dict[str, tuple[str, ...]] = {
    "pre": ("input_layernorm", "post_attention_layernorm"),
    "post": ("post_attention_layernorm", "post_feedforward_layernorm"),
    "sandwich": ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm"),
    "parallel": ("input_layernorm", "post_attention_layernorm"),
    "parallel_shared": ("input_layernorm",),
}

# Largest sizes we accept. They are far beyond any published model; anything larger is a typo.
MAX_HIDDEN = 1 << 17  # 131,072 (Llama 3.1 405B uses 16,384)
MAX_LAYERS = 1024  # deepest published dense LMs have < 200 layers
MAX_VOCAB = 1 << 22  # 4,194,304 (Gemma uses 256,000)
MAX_CONTEXT = 1 << 24  # 16M tokens
MAX_EXPERTS = 4096
MAX_HEAD_DIM = 4096  # widest per-head dimension we accept (published models use <= 512)
MAX_CONV_KERNEL = 64  # linear-attention short convolutions are 4 wide in published models


@dataclass(frozen=True)
class MoESpec:
    """Mixture-of-experts FFN: `num_experts` routed experts, each token goes to `top_k` of them."""

    num_experts: int
    top_k: int
    expert_ffn_size: int  # hidden width of one routed expert
    shared_experts: int = 0  # always-on experts, stored as one MLP of width shared_experts * shared_ffn_size
    shared_ffn_size: int = 0  # hidden width of one shared expert
    router_bias: bool = False
    expert_bias: bool = False  # biases on the expert projections (gpt-oss)
    shared_expert_gate: bool = False  # sigmoid gate (Linear hidden -> 1) on the shared expert (Qwen2-MoE)
    layers: tuple[int, ...] | None = None  # indices of the MoE layers; None: every layer (the others use a dense MLP)


@dataclass(frozen=True)
class MLASpec:
    """Multi-head latent attention (DeepSeek-V2/V3): keys and values come from a low-rank latent.

    q: hidden -> q_lora_rank -> heads * (qk_nope + qk_rope) (or directly when q_lora_rank is None);
    kv: hidden -> kv_lora_rank + qk_rope (the rope part shared by all heads) -> heads * (qk_nope + v).
    """

    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    q_lora_rank: int | None = None


@dataclass(frozen=True)
class LinearAttentionSpec:
    """Gated delta-net linear attention (Qwen3-Next "linear_attention" layers): a causal depthwise
    convolution over q, k, v, then a chunked delta-rule recurrence with a per-head decay."""

    num_key_heads: int
    num_value_heads: int
    key_head_dim: int
    value_head_dim: int
    conv_kernel: int = 4


@dataclass(frozen=True)
class ArchitectureSpec:
    """A decoder-only (or, later, encoder) transformer. Sizes are element counts, context in tokens."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    ffn_size: int  # hidden width of the dense MLP (per gate for gated MLPs)
    vocab_size: int
    context_length: int = 4096
    head_dim: int | None = None  # None: hidden_size // num_heads
    ffn_kind: FfnKind = "swiglu"
    activation: str = "silu"  # HF activation name used inside the MLP
    norm: NormKind = "rmsnorm"
    norm_eps: float = 1e-5
    norm_placement: NormPlacement = "pre"  # pre: Llama; post: OLMo 2; sandwich: Gemma 2; parallel(_shared): GPT-NeoX, Phi
    position: PositionKind = "rope"
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # HF rope parameters beyond theta (llama3, yarn, linear, dynamic, longrope)
    partial_rotary_factor: float = 1.0
    tie_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    # head: over head_dim, shared weight (Qwen3); full: over all heads (OLMo 2); per_head: over head_dim,
    # one weight per head (Cohere); l2: weightless L2 norm (Llama 4)
    qk_norm: QkNormKind = "none"
    sliding_window: int | None = None
    layer_types: tuple[str, ...] | None = None  # per layer; None: all sliding if sliding_window else all full
    attention_chunk_size: int | None = None  # chunked_attention layers see keys of their own chunk only
    nope_layers: tuple[int, ...] = ()  # layers without positional encoding (NoPE)
    fused_qkv: bool = False  # one qkv projection tensor (Phi-3, GPT-2): same params, fewer tensors
    fused_gate_up: bool = False  # one gate+up tensor (Phi-3)
    attention_sinks: bool = False  # one learned sink logit per head joins the softmax (gpt-oss)
    attn_output_gate: bool = False  # q_proj also yields a sigmoid gate on the attention output (Qwen3-Next)
    lm_head_bias: bool = False
    moe: MoESpec | None = None
    mla: MLASpec | None = None
    linear_attention: LinearAttentionSpec | None = None  # the layout of linear_attention layers
    encoder: bool = False  # bidirectional encoder (reserved; decoder-only today)
    model_type: str = families.DEFAULT_FAMILY  # HF family (a row of archsmith.families)
    initializer_range: float = 0.02
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # family fields that change no size (softcaps, ...)

    def __post_init__(self) -> None:
        if self.head_dim is None:
            _check_int(self, "hidden_size", 1, MAX_HIDDEN)
            _check_int(self, "num_heads", 1, self.hidden_size)
            if self.hidden_size % self.num_heads:
                raise SpecError("num_heads", f"must divide hidden_size={self.hidden_size} (or give head_dim); got {self.num_heads}")
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        for name, kind in (("moe", MoESpec), ("mla", MLASpec), ("linear_attention", LinearAttentionSpec)):
            value = getattr(self, name)
            if isinstance(value, dict):
                try:
                    object.__setattr__(self, name, kind(**value))
                except TypeError as exc:
                    raise SpecError(name, f"has an unknown or missing field: {exc}") from None
        if self.moe is not None and isinstance(self.moe.layers, list):
            object.__setattr__(self, "moe", dataclasses.replace(self.moe, layers=tuple(self.moe.layers)))
        for name in ("layer_types", "nope_layers"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        validate(self)

    # ---- derived quantities -------------------------------------------------------------
    @property
    def q_dim(self) -> int:
        """Width of the queries: num_heads * head_dim (MLA: head_dim = qk_nope + qk_rope)."""
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Width of each of the key and value projection outputs: num_kv_heads * head_dim."""
        return self.num_kv_heads * self.head_dim

    @property
    def v_head_dim(self) -> int:
        """Per-head width of the values (MLA may differ from the query/key head_dim)."""
        return self.mla.v_head_dim if self.mla else self.head_dim

    @property
    def rope_dim(self) -> int:
        """Channels per head that rotate: MLA's qk_rope_head_dim, else head_dim * partial_rotary_factor."""
        return self.mla.qk_rope_head_dim if self.mla else int(self.head_dim * self.partial_rotary_factor)

    def is_moe_layer(self, layer: int) -> bool:
        return self.moe is not None and (self.moe.layers is None or layer in self.moe.layers)

    @property
    def gqa_group(self) -> int:
        """Query heads per KV head (1: MHA, num_heads: MQA)."""
        return self.num_heads // self.num_kv_heads

    @property
    def gated(self) -> bool:
        return self.ffn_kind in ("swiglu", "geglu")

    @property
    def resolved_layer_types(self) -> tuple[str, ...]:
        if self.layer_types is not None:
            return self.layer_types
        kind = "sliding_attention" if self.sliding_window else "full_attention"
        return (kind,) * self.num_layers

    def replace(self, **changes: Any) -> "ArchitectureSpec":
        """A copy with some fields changed (validated again)."""
        if "hidden_size" in changes or "num_heads" in changes:
            changes.setdefault("head_dim", None)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ArchitectureSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecError(unknown[0], f"unknown spec field; known fields: {', '.join(sorted(known))}")
        required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [name for name in required if name not in data]
        if missing:
            raise SpecError(missing[0], f"is required (required fields: {', '.join(required)})")
        try:
            return cls(**data)
        except TypeError as exc:  # a value of the wrong JSON type (a string where a number belongs, ...)
            raise SpecError("spec", f"a field has the wrong type: {exc}") from None


def _check_int(spec: ArchitectureSpec, name: str, low: int, high: int) -> None:
    _check_value(name, getattr(spec, name), low, high)


def _check_value(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(name, f"must be an integer in [{low}, {high}], got {value!r:.60}")
    if not low <= value <= high:
        raise SpecError(name, f"must be in [{low}, {high}], got {value}")


def _check_choice(spec: ArchitectureSpec, name: str, allowed: tuple[str, ...]) -> None:
    value = getattr(spec, name)
    if value not in allowed:
        raise SpecError(name, f"must be one of {', '.join(allowed)}; got {value!r:.60}")


def _check_indices(name: str, values: Any, count: int) -> None:
    """A sorted list of distinct layer indices in [0, count)."""
    if not isinstance(values, tuple) or any(isinstance(v, bool) or not isinstance(v, int) for v in values):
        raise SpecError(name, f"must be a list of layer indices, got {values!r:.60}")
    if list(values) != sorted(set(values)) or (values and not 0 <= values[0] <= values[-1] < count):
        raise SpecError(name, f"must be distinct increasing layer indices in [0, num_layers={count}), got {list(values)!r:.60}")


def validate(spec: ArchitectureSpec) -> None:
    """Raise `SpecError` naming the first field that is out of range or inconsistent."""
    _check_int(spec, "hidden_size", 1, MAX_HIDDEN)
    _check_int(spec, "num_layers", 1, MAX_LAYERS)
    _check_int(spec, "num_heads", 1, spec.hidden_size * 8)
    _check_int(spec, "num_kv_heads", 1, spec.num_heads)
    _check_int(spec, "head_dim", 1, MAX_HEAD_DIM)
    _check_int(spec, "ffn_size", 1, MAX_HIDDEN * 16)
    _check_int(spec, "vocab_size", 1, MAX_VOCAB)
    _check_int(spec, "context_length", 1, MAX_CONTEXT)
    if spec.num_heads % spec.num_kv_heads:
        raise SpecError("num_kv_heads", f"must divide num_heads={spec.num_heads}; got {spec.num_kv_heads}")
    _check_choice(spec, "ffn_kind", FFN_KINDS)
    _check_choice(spec, "norm", NORM_KINDS)
    _check_choice(spec, "norm_placement", NORM_PLACEMENTS)
    _check_choice(spec, "position", POSITION_KINDS)
    _check_choice(spec, "qk_norm", QK_NORM_KINDS)
    _check_choice(spec, "model_type", families.NAMES)
    if not (isinstance(spec.norm_eps, (int, float)) and 0 < spec.norm_eps < 1):
        raise SpecError("norm_eps", f"must be in (0, 1), got {spec.norm_eps!r}")
    _validate_mla(spec)
    if spec.position == "rope":
        if not (isinstance(spec.rope_theta, (int, float)) and spec.rope_theta > 1):
            raise SpecError("rope_theta", f"must be > 1, got {spec.rope_theta!r}")
        if not 0 < spec.partial_rotary_factor <= 1:
            raise SpecError("partial_rotary_factor", f"must be in (0, 1], got {spec.partial_rotary_factor}")
        if spec.mla is None and spec.head_dim % 2:
            raise SpecError("head_dim", f"must be even for rotary embeddings, got {spec.head_dim}")
    if spec.sliding_window is not None:
        _check_int(spec, "sliding_window", 1, MAX_CONTEXT)
    if spec.attention_chunk_size is not None:
        _check_int(spec, "attention_chunk_size", 1, MAX_CONTEXT)
    _check_indices("nope_layers", spec.nope_layers, spec.num_layers)
    if spec.layer_types is not None:
        if not isinstance(spec.layer_types, tuple) or len(spec.layer_types) != spec.num_layers:
            raise SpecError("layer_types", f"must have num_layers={spec.num_layers} entries, got {spec.layer_types!r:.60}")
        bad = [t for t in spec.layer_types if t not in LAYER_TYPES]
        if bad:
            raise SpecError("layer_types", f"entries must be one of {', '.join(LAYER_TYPES)}; got {bad[0]!r:.60}")
    kinds = set(spec.resolved_layer_types)
    needs = {"sliding_attention": ("sliding_window", spec.sliding_window), "chunked_attention": ("attention_chunk_size", spec.attention_chunk_size),
             "linear_attention": ("linear_attention", spec.linear_attention)}
    for kind, (name, value) in needs.items():
        if kind in kinds and not value:
            raise SpecError(name, f"must be set when layer_types has {kind} layers")
    if not (isinstance(spec.initializer_range, (int, float)) and 0 < spec.initializer_range < 1):
        raise SpecError("initializer_range", f"must be in (0, 1), got {spec.initializer_range!r}")
    for name in ("tie_embeddings", "qkv_bias", "o_bias", "mlp_bias", "fused_qkv", "fused_gate_up", "encoder",
                 "attention_sinks", "attn_output_gate", "lm_head_bias"):
        if not isinstance(getattr(spec, name), bool):
            raise SpecError(name, f"must be true or false, got {getattr(spec, name)!r:.60}")
    if spec.rope_scaling is not None and not isinstance(spec.rope_scaling, dict):
        raise SpecError("rope_scaling", f"must be an object (HF rope parameters) or null, got {spec.rope_scaling!r:.60}")
    if not isinstance(spec.extra, dict):
        raise SpecError("extra", f"must be an object, got {spec.extra!r:.60}")
    families.check_extra(families.get(spec.model_type), spec.extra)
    _validate_moe(spec)
    _validate_linear_attention(spec)
    for name in ("bos_token_id", "pad_token_id"):
        value = getattr(spec, name)
        if value is not None:
            _check_value(name, value, 0, spec.vocab_size - 1)
    eos = spec.eos_token_id
    for value in eos if isinstance(eos, list) else [eos]:
        if value is not None:
            _check_value("eos_token_id", value, 0, spec.vocab_size - 1)


def _sub(spec: ArchitectureSpec, name: str, kind: type, fields: str) -> Any:
    """The sub-spec `name` (None when absent); SpecError when it is neither null nor an object of its fields."""
    value = getattr(spec, name)
    if value is not None and not isinstance(value, kind):
        raise SpecError(name, f"must be an object with {fields}, or null; got {value!r:.60}")
    return value


def _check_ranges(prefix: str, sub: Any, ranges: dict[str, tuple[int, int]]) -> None:
    for name, (low, high) in ranges.items():
        _check_value(f"{prefix}.{name}", getattr(sub, name), low, high)


def _validate_moe(spec: ArchitectureSpec) -> None:
    moe = _sub(spec, "moe", MoESpec, "num_experts, top_k and expert_ffn_size")
    if moe is None:
        return
    _check_value("moe.num_experts", moe.num_experts, 1, MAX_EXPERTS)
    _check_ranges("moe", moe, {"top_k": (1, moe.num_experts), "expert_ffn_size": (1, MAX_HIDDEN * 16), "shared_experts": (0, MAX_EXPERTS)})
    if moe.shared_experts:
        _check_value("moe.shared_ffn_size", moe.shared_ffn_size, 1, MAX_HIDDEN * 16)
    elif moe.shared_expert_gate:
        raise SpecError("moe.shared_expert_gate", "needs a shared expert (shared_experts >= 1)")
    for name in ("router_bias", "expert_bias", "shared_expert_gate"):
        if not isinstance(getattr(moe, name), bool):
            raise SpecError(f"moe.{name}", f"must be true or false, got {getattr(moe, name)!r:.60}")
    if moe.layers is not None:
        _check_indices("moe.layers", moe.layers, spec.num_layers)
        if not moe.layers:
            raise SpecError("moe.layers", "must name at least one layer (use moe: null for a dense model)")


def _validate_mla(spec: ArchitectureSpec) -> None:
    mla = _sub(spec, "mla", MLASpec, "kv_lora_rank, qk_nope_head_dim, qk_rope_head_dim and v_head_dim")
    if mla is None:
        return
    if mla.q_lora_rank is not None:
        _check_value("mla.q_lora_rank", mla.q_lora_rank, 1, MAX_HIDDEN)
    _check_ranges("mla", mla, {"kv_lora_rank": (1, MAX_HIDDEN), "qk_nope_head_dim": (0, MAX_HEAD_DIM),
                               "qk_rope_head_dim": (2, MAX_HEAD_DIM), "v_head_dim": (1, MAX_HEAD_DIM)})
    if mla.qk_rope_head_dim % 2:
        raise SpecError("mla.qk_rope_head_dim", f"must be even for rotary embeddings, got {mla.qk_rope_head_dim}")
    if spec.head_dim != mla.qk_nope_head_dim + mla.qk_rope_head_dim:
        raise SpecError("head_dim", f"must be mla.qk_nope_head_dim + mla.qk_rope_head_dim = "
                                    f"{mla.qk_nope_head_dim + mla.qk_rope_head_dim} with multi-head latent attention, got {spec.head_dim}")


def _validate_linear_attention(spec: ArchitectureSpec) -> None:
    lin = _sub(spec, "linear_attention", LinearAttentionSpec, "num_key_heads, num_value_heads, key_head_dim and value_head_dim")
    if lin is None:
        return
    _check_ranges("linear_attention", lin, {"num_key_heads": (1, MAX_HEAD_DIM), "num_value_heads": (1, MAX_HEAD_DIM),
                                            "key_head_dim": (1, MAX_HEAD_DIM), "value_head_dim": (1, MAX_HEAD_DIM),
                                            "conv_kernel": (1, MAX_CONV_KERNEL)})
    if lin.num_value_heads % lin.num_key_heads:
        raise SpecError("linear_attention.num_value_heads", f"must be a multiple of num_key_heads={lin.num_key_heads}, got {lin.num_value_heads}")
