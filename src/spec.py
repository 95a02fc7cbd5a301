"""The architecture spec: one dataclass that describes a transformer, and everything flows from it.

`hfconfig` reads it from / writes it to Hugging Face `config.json`, `estimate` computes
parameters, FLOPs and memory from it in closed form, `design` produces it from a budget,
`network` builds the `nn.Module` from it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from archsmith.errors import SpecError

FfnKind = Literal["swiglu", "geglu", "gelu"]
NormKind = Literal["rmsnorm", "layernorm"]
NormPlacement = Literal["pre", "post", "sandwich"]
PositionKind = Literal["rope", "alibi", "learned"]
QkNormKind = Literal["none", "head", "full"]
LayerType = Literal["full_attention", "sliding_attention"]

FFN_KINDS = ("swiglu", "geglu", "gelu")
NORM_KINDS = ("rmsnorm", "layernorm")
NORM_PLACEMENTS = ("pre", "post", "sandwich")
POSITION_KINDS = ("rope", "alibi", "learned")
QK_NORM_KINDS = ("none", "head", "full")
LAYER_TYPES = ("full_attention", "sliding_attention")

# Largest sizes we accept. They are far beyond any published model; anything larger is a typo.
MAX_HIDDEN = 1 << 17  # 131,072 (Llama 3.1 405B uses 16,384)
MAX_LAYERS = 1024  # deepest published dense LMs have < 200 layers
MAX_VOCAB = 1 << 22  # 4,194,304 (Gemma uses 256,000)
MAX_CONTEXT = 1 << 24  # 16M tokens
MAX_EXPERTS = 4096


@dataclass(frozen=True)
class MoESpec:
    """Mixture-of-experts FFN: `num_experts` routed experts, each token goes to `top_k` of them."""

    num_experts: int
    top_k: int
    expert_ffn_size: int  # hidden width of one routed expert
    shared_experts: int = 0  # always-on experts (DeepSeek/Qwen2-MoE style)
    shared_ffn_size: int = 0  # hidden width of one shared expert
    router_bias: bool = False


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
    norm_placement: NormPlacement = "pre"  # pre: Llama; post: OLMo 2; sandwich: Gemma 2 (pre + post)
    position: PositionKind = "rope"
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # HF rope parameters beyond theta (llama3, yarn, linear, dynamic, longrope)
    partial_rotary_factor: float = 1.0
    tie_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: QkNormKind = "none"  # head: norm over head_dim (Qwen3); full: over all heads (OLMo 2)
    sliding_window: int | None = None
    layer_types: tuple[str, ...] | None = None  # per layer; None: all sliding if sliding_window else all full
    fused_qkv: bool = False  # one qkv projection tensor (Phi-3, GPT-2): same params, fewer tensors
    fused_gate_up: bool = False  # one gate+up tensor (Phi-3)
    moe: MoESpec | None = None
    encoder: bool = False  # bidirectional encoder (reserved; decoder-only today)
    model_type: str = "llama"  # HF family used when writing config.json
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
        if isinstance(self.moe, dict):
            object.__setattr__(self, "moe", MoESpec(**self.moe))
        if self.layer_types is not None:
            object.__setattr__(self, "layer_types", tuple(self.layer_types))
        validate(self)

    # ---- derived quantities -------------------------------------------------------------
    @property
    def q_dim(self) -> int:
        """Width of the query projection output: num_heads * head_dim."""
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Width of each of the key and value projection outputs: num_kv_heads * head_dim."""
        return self.num_kv_heads * self.head_dim

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
    value = getattr(spec, name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(name, f"must be an integer in [{low}, {high}], got {value!r}")
    if not low <= value <= high:
        raise SpecError(name, f"must be in [{low}, {high}], got {value}")


def _check_choice(spec: ArchitectureSpec, name: str, allowed: tuple[str, ...]) -> None:
    value = getattr(spec, name)
    if value not in allowed:
        raise SpecError(name, f"must be one of {', '.join(allowed)}; got {value!r}")


def validate(spec: ArchitectureSpec) -> None:
    """Raise `SpecError` naming the first field that is out of range or inconsistent."""
    _check_int(spec, "hidden_size", 1, MAX_HIDDEN)
    _check_int(spec, "num_layers", 1, MAX_LAYERS)
    _check_int(spec, "num_heads", 1, spec.hidden_size * 8)
    _check_int(spec, "num_kv_heads", 1, spec.num_heads)
    _check_int(spec, "head_dim", 1, 4096)
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
    if not (isinstance(spec.norm_eps, (int, float)) and 0 < spec.norm_eps < 1):
        raise SpecError("norm_eps", f"must be in (0, 1), got {spec.norm_eps!r}")
    if spec.position == "rope":
        if not (isinstance(spec.rope_theta, (int, float)) and spec.rope_theta > 1):
            raise SpecError("rope_theta", f"must be > 1, got {spec.rope_theta!r}")
        if not 0 < spec.partial_rotary_factor <= 1:
            raise SpecError("partial_rotary_factor", f"must be in (0, 1], got {spec.partial_rotary_factor}")
        if spec.head_dim % 2:
            raise SpecError("head_dim", f"must be even for rotary embeddings, got {spec.head_dim}")
    if spec.sliding_window is not None:
        _check_int(spec, "sliding_window", 1, MAX_CONTEXT)
    if spec.layer_types is not None:
        if len(spec.layer_types) != spec.num_layers:
            raise SpecError("layer_types", f"must have num_layers={spec.num_layers} entries, got {len(spec.layer_types)}")
        bad = [t for t in spec.layer_types if t not in LAYER_TYPES]
        if bad:
            raise SpecError("layer_types", f"entries must be one of {', '.join(LAYER_TYPES)}; got {bad[0]!r}")
        if "sliding_attention" in spec.layer_types and not spec.sliding_window:
            raise SpecError("sliding_window", "must be set when layer_types has sliding_attention layers")
    if not (isinstance(spec.initializer_range, (int, float)) and 0 < spec.initializer_range < 1):
        raise SpecError("initializer_range", f"must be in (0, 1), got {spec.initializer_range!r}")
    for name in ("tie_embeddings", "qkv_bias", "o_bias", "mlp_bias", "fused_qkv", "fused_gate_up", "encoder"):
        if not isinstance(getattr(spec, name), bool):
            raise SpecError(name, f"must be true or false, got {getattr(spec, name)!r}")
    if spec.rope_scaling is not None and not isinstance(spec.rope_scaling, dict):
        raise SpecError("rope_scaling", f"must be an object (HF rope parameters) or null, got {spec.rope_scaling!r}")
    if not isinstance(spec.extra, dict):
        raise SpecError("extra", f"must be an object, got {spec.extra!r}")
    if spec.moe is not None and not isinstance(spec.moe, MoESpec):
        raise SpecError("moe", f"must be an object with num_experts, top_k and expert_ffn_size, or null; got {spec.moe!r}")
    if spec.moe is not None:
        moe = spec.moe
        if not 1 <= moe.num_experts <= MAX_EXPERTS:
            raise SpecError("moe.num_experts", f"must be in [1, {MAX_EXPERTS}], got {moe.num_experts}")
        if not 1 <= moe.top_k <= moe.num_experts:
            raise SpecError("moe.top_k", f"must be in [1, num_experts={moe.num_experts}], got {moe.top_k}")
        if not 1 <= moe.expert_ffn_size <= MAX_HIDDEN * 16:
            raise SpecError("moe.expert_ffn_size", f"must be in [1, {MAX_HIDDEN * 16}], got {moe.expert_ffn_size}")
        if moe.shared_experts < 0 or (moe.shared_experts and moe.shared_ffn_size < 1):
            raise SpecError("moe.shared_experts", "must be >= 0, and shared_ffn_size >= 1 when shared experts are used")
    for name in ("bos_token_id", "pad_token_id"):
        value = getattr(spec, name)
        if value is not None and not 0 <= value < spec.vocab_size:
            raise SpecError(name, f"must be in [0, vocab_size={spec.vocab_size}), got {value}")
    eos = spec.eos_token_id
    for value in eos if isinstance(eos, list) else [eos]:
        if value is not None and not 0 <= value < spec.vocab_size:
            raise SpecError("eos_token_id", f"must be in [0, vocab_size={spec.vocab_size}), got {value}")
