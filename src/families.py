"""One row per Hugging Face `model_type`: everything archsmith knows about a model family, as data.

A row says how the family's `config.json` keys map to `ArchitectureSpec` fields (renames,
transformers' defaults, flags that switch layouts), what its transformers code hard-codes
(norms, biases, QK-norm, MoE layout, layer patterns), which layout switches its transformers code honours
(`layouts`: windows, per-layer attention kinds, dense layers beside MoE ones, shared experts, NoPE layers; network.py
builds no other), what it computes beyond its sizes
(soft-caps, (1 + w) norms, embedding scales, multipliers), which attention kernels
transformers accepts for it, how the activation estimator treats it, and how far
`network.py` reproduces it (`parity`). `hfconfig`, `estimate`, `network`, `weights`, the MCP
tools and the CLI read these rows; no other module names a family. Adding a family is one row
(plus `network.py` components when it needs new ones).

Field names on the left of `keys`, `fixed` and `switches` are spec fields; dotted names reach
into the sub-specs (`moe.num_experts`, `mla.kv_lora_rank`, `linear_attention.num_key_heads`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from importlib import metadata
from typing import Any, Literal, Mapping

from archsmith.errors import SpecError

Parity = Literal["both", "load", "none"]


@dataclass(frozen=True)
class Same:
    """A default equal to another spec field (num_key_value_heads absent or null: num_heads)."""

    field: str


@dataclass(frozen=True)
class Times:
    """A default `factor` times another spec field (n_inner absent or null: 4 * hidden_size)."""

    field: str
    factor: int


ANY = object()  # in a Switch table: matches every value of that key


@dataclass(frozen=True)
class Switch:
    """Spec fields chosen by config flags.

    `table` rows are (flag values, spec fields); reading takes the first row whose values match
    the config (ANY matches anything), writing the first row whose fields match the spec. A field
    value may be `Same(...)`.
    """

    keys: tuple[str, ...]
    table: tuple[tuple[tuple[Any, ...], Mapping[str, Any]], ...]


@dataclass(frozen=True)
class Extra:
    """A config key that changes no tensor shape (soft-caps, multipliers, router settings).

    It travels from config.json into `spec.extra` and back, validated against `kind` and the
    bounds. `feature` names what network.py must compute for it when its value is not null.
    """

    kind: Literal["number", "int", "bool", "choice"]
    default: Any = None  # transformers' value when config.json omits the key
    choices: tuple[str, ...] = ()  # kind choice: the strings transformers accepts
    minimum: float | None = None  # inclusive lower bound
    above: float | None = None  # exclusive lower bound (must be > above)
    maximum: float | None = None
    nullable: bool = False
    feature: str | None = None
    # a dropout probability, and where transformers applies it: embedding (once, on the embedded tokens),
    # residual (on each sub-block's output), attention (on the attention probabilities)
    dropout: Literal["embedding", "residual", "attention"] | None = None


@dataclass(frozen=True)
class LayerRule:
    """How transformers fills `layer_types` when config.json has none.

    rule: full (no local attention) | all_sliding (every layer slides when sliding_window is set, and the gate allows) |
    window_layers (layers >= max_window_layers slide, gated by use_sliding_window) |
    alternate_window_layers (even layers below max_window_layers slide, gated likewise) |
    period (layer i is `nth` when (i + 1) % period == 0, else `other`) |
    rope (layers with RoPE are `other`, NoPE layers `nth`; `gate` keys must be truthy for `nth`).
    """

    rule: Literal["full", "all_sliding", "window_layers", "alternate_window_layers", "period", "rope"] = "full"
    period: int = 2
    period_key: str | None = None  # config key holding the period
    other: str = "sliding_attention"
    nth: str = "full_attention"
    gate: tuple[str, ...] = ()


@dataclass(frozen=True)
class Family:
    """Everything family-specific about one `model_type`."""

    model_type: str
    architecture: str  # transformers class written into "architectures"
    # what network.py does with it: both = builds it, loads HF checkpoints and saves ones transformers
    # loads, logits within 1e-4 both ways (tested); load = builds and loads only; none = refused
    parity: Parity = "none"
    # ---- config.json <-> spec ----------------------------------------------------------------
    keys: Mapping[str, str | None] = field(default_factory=dict)  # spec field -> config key (None: no key)
    aliases: Mapping[str, str] = field(default_factory=dict)  # older config key -> the key it stands for
    defaults: Mapping[str, Any] = field(default_factory=dict)  # config key -> transformers' default
    fixed: Mapping[str, Any] = field(default_factory=dict)  # spec fields the family's code hard-codes
    switches: tuple[Switch, ...] = ()
    layers: LayerRule = LayerRule()
    nope: bool = False  # reads no_rope_layers / no_rope_layer_interval (layers without RoPE)
    moe_layers: Literal["all", "first_k_dense", "sparse_step", "interleave"] | None = None  # None: dense
    # the layout switches (LAYOUTS) its transformers code honours: network.py refuses the others for this family and
    # the writer never emits them; tests/test_families.py runs each one against transformers
    layouts: tuple[str, ...] = ()
    heads_divide_hidden: bool = False  # the config class refuses hidden_size % num_heads != 0 even with head_dim
    rope_per_layer_type: bool = False  # rope_parameters nested by layer type (local theta for sliding layers)
    extra: Mapping[str, Extra] = field(default_factory=dict)
    # ---- computation the sizes do not show (network.py needs a component for each) -------------
    norm_weight_offset: float = 0.0  # 1.0: RMSNorm scales by (1 + weight)
    embed_scale: Literal["none", "sqrt_hidden"] = "none"
    experts_transposed: bool = False  # expert tensors stored (E, hidden, 2F) / (E, F, hidden)
    linear_transposed: bool = False  # layer projections stored (in, out) (GPT-2's Conv1D) instead of nn.Linear's (out, in)
    experts_run: Literal["routed", "all"] = "routed"  # transformers runs each token through top_k / all experts
    # state-dict names that differ from the Llama layout network.py uses: (ours, transformers') name fragments,
    # replaced in order when saving and in reverse order when loading
    renames: tuple[tuple[str, str], ...] = ()
    # checkpoints hold each expert's (gate, up, down) as 2-D tensors `...experts.{j}.<name>.weight`, which transformers 5
    # merges into the 3-D experts on load and splits again on save; None: checkpoints hold the 3-D tensors
    expert_names: tuple[str, str, str] | None = None
    rope_interleaved: bool = False  # RoPE rotates adjacent channel pairs (x0, x1), (x2, x3) instead of the two halves
    latent_norm_eps: float | None = None  # eps of MLA's q/kv latent norms when the family's code fixes it (None: norm_eps)
    # ---- fine-tuning -------------------------------------------------------------------------------
    # leaf names of the nn.Linear (GPT-2: Conv1D) modules in a block that LoRA adapts (peft `target_modules`), as the
    # family's transformers code names them; routers and fused 3-D expert parameters are left out (tests/test_hub.py
    # checks every row against the model transformers builds on the meta device)
    lora_targets: tuple[str, ...] = ()  # (): the Llama names, LLAMA_LORA (`lora_modules`)
    # ---- estimator rules -------------------------------------------------------------------------
    attention_kernels: tuple[str, ...] = ("sdpa", "eager", "flash_attention_2", "flex_attention")  # what transformers accepts
    norm_weight_in_fp32: bool = False  # norm multiplies its weight in fp32 (saves an fp32 normalised input)
    # LayerNorm on an fp32 copy of its input: "fused" (one native layer_norm: saves the fp32 input) or "manual"
    # (mean, centring twice, rsqrt and the weight as separate fp32 ops: saves three fp32 copies); None: native
    norm_upcast: Literal["fused", "manual"] | None = None
    # RoPE concatenates the rotated and passed-through channels, so SDPA's output comes back in (batch, heads, seq,
    # head_dim) order and o_proj gets a contiguous copy of it (one more query-width tensor)
    rope_concat: bool = False
    # attention hands its KV heads over unrepeated: one shared KV head makes SDPA fall back to its math kernel and
    # matmul broadcast it (copies for batch > 1); several are broadcast to every query head first
    unrepeated_kv: bool = False
    sdpa_mask: bool = False  # hands SDPA a materialized causal mask (ALiBi: with the per-head bias), which SDPA saves
    eager_softmax_fp32: bool = True  # eager attention's softmax runs in fp32 and is cast back (else: in dtype)
    router_fp32: bool = False  # the MoE router multiplies an fp32 copy of its input (DeepSeek-style sigmoid routing)
    router_topk_softmax: bool = False  # softmax over the top-k logits only, in dtype (gpt-oss): no fp32 probabilities
    # fp32 softmax over all experts, top-k scaled and not renormalised (DeepSeek-V2); group-limited greedy top-k
    # (topk_method) also saves the groups' maxima indices, the kept groups and the expert mask
    router_scaled_topk: bool = False
    expert_glu_saved: int = 4  # expert-width tensors a routed row's gated activation saves (gate|up output, act, product)
    rope_in_fp32: bool = False  # rotary cos/sin stay fp32 under bf16
    # estimator rules that changed with the family's transformers code: (first transformers version, fields), oldest
    # first; a row describes the transformers installed (`TRANSFORMERS`)
    since: tuple[tuple[str, Mapping[str, Any]], ...] = ()

    def as_of(self, version: tuple[int, ...]) -> "Family":
        """The row as transformers `version` runs the family (every `since` entry up to it applied)."""
        changed = {k: v for first, fields in self.since if version >= release(first) for k, v in fields.items()}
        return replace(self, since=(), **changed) if changed else self

    @property
    def is_moe(self) -> bool:
        return self.moe_layers is not None

    def default(self, key: str) -> Any:
        """transformers' value for `key` when config.json omits it (MISSING when there is none)."""
        return self.defaults.get(key, CONFIG_DEFAULTS.get(key, MISSING))


def release(version: str) -> tuple[int, ...]:
    """(major, minor, patch) of a version string such as "5.25.0" or "5.26.0.dev0"."""
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def installed_transformers() -> str:
    """The installed transformers' version (read from its metadata, without importing it); "0" when absent."""
    try:
        return metadata.version("transformers")
    except metadata.PackageNotFoundError:
        return "0"


TRANSFORMERS = installed_transformers()  # the version the rows describe

# Layout switches a family's config can turn on, each honoured by some families' transformers code and ignored by
# others' (Qwen3-MoE reads no layer_types: every layer slides when its window is on).
LAYOUTS: dict[str, str] = {
    "window": "one sliding window on every layer (sliding_window)",
    "layer_types": "layers of different attention kinds (layer_types: sliding, chunked or linear beside full attention)",
    "dense_layers": "dense MLP layers beside the MoE ones (first_k_dense_replace, mlp_only_layers, decoder_sparse_step, "
                    "moe_layers)",
    "shared_experts": "always-on shared experts beside the routed ones",
    "nope_layers": "layers without RoPE (no_rope_layers)",
}
LAYOUT_FIELDS = {"window": "sliding_window", "layer_types": "layer_types", "dense_layers": "moe.layers",
                 "shared_experts": "moe.shared_experts", "nope_layers": "nope_layers"}  # the spec field each one sets


def layout_switches(spec: Any) -> list[str]:
    """The LAYOUTS switches an ArchitectureSpec turns on, in LAYOUTS order."""
    kinds = set(spec.resolved_layer_types)
    moe = spec.moe
    used = {"window": kinds == {"sliding_attention"}, "layer_types": len(kinds) > 1,
            "dense_layers": moe is not None and moe.layers is not None and tuple(moe.layers) != tuple(range(spec.num_layers)),
            "shared_experts": moe is not None and moe.shared_experts > 0, "nope_layers": bool(spec.nope_layers)}
    return [name for name in LAYOUTS if used[name]]


def honouring(switch: str) -> tuple[str, ...]:
    """Families whose transformers code honours `switch`, sorted."""
    return tuple(sorted(f.model_type for f in FAMILIES.values() if switch in f.layouts))


MISSING = object()  # no default: the key is required
# What a null value means where it is not transformers' default (a null num_key_value_heads: one per head).
NULL_MEANS: dict[str, Any] = {"num_key_value_heads": Same("num_heads")}

# Config keys every family shares (spec field -> key); a row's `keys` renames or removes them.
KEYS: dict[str, str] = {
    "hidden_size": "hidden_size",
    "num_heads": "num_attention_heads",
    "num_kv_heads": "num_key_value_heads",
    "num_layers": "num_hidden_layers",
    "head_dim": "head_dim",
    "ffn_size": "intermediate_size",
    "vocab_size": "vocab_size",
    "context_length": "max_position_embeddings",
    "activation": "hidden_act",
    "norm_eps": "rms_norm_eps",
    "tie_embeddings": "tie_word_embeddings",
    "initializer_range": "initializer_range",
    "bos_token_id": "bos_token_id",
    "eos_token_id": "eos_token_id",
    "pad_token_id": "pad_token_id",
}
# transformers' defaults shared by every config class (a row's `defaults` overrides them; MISSING there
# means the class presets a size to one model, so config.json must give it).
CONFIG_DEFAULTS: dict[str, Any] = {
    "num_key_value_heads": Same("num_heads"),
    "hidden_act": "silu",
    "head_dim": None,
    "tie_word_embeddings": False,
    "initializer_range": 0.02,
    "bos_token_id": None,
    "eos_token_id": None,
    "pad_token_id": None,
    "attention_bias": False,
    "mlp_bias": False,
    "rope_theta": 10000.0,
    "partial_rotary_factor": 1.0,
    "sliding_window": None,
}

# Key groups several rows share.
ATTENTION_BIAS = {"qkv_bias": "attention_bias", "o_bias": "attention_bias"}
NO_BIAS = {"qkv_bias": False, "o_bias": False}
ROUTER = {"moe.top_k": "num_experts_per_tok"}
AUX_LOSS = {"router_aux_loss_coef": Extra("number", 0.001, minimum=0.0)}
TOPK_NORM = {"norm_topk_prob": Extra("bool", False)}
GROUPED_ROUTING = "grouped sigmoid router (n_group, topk_group, routed_scaling_factor)"
GROUPED_ROUTER = {
    "routed_scaling_factor": Extra("number", 1.0, above=0.0, feature=GROUPED_ROUTING),
    "n_group": Extra("int", 1, minimum=1),
    "topk_group": Extra("int", 1, minimum=1),
    "norm_topk_prob": Extra("bool", True),
}
SOFTCAP_ATTENTION, SOFTCAP_FINAL = "attention logit soft-capping", "final logit soft-capping"
# What a family computes beyond the spec's sizes, as `features` names it and network.FEATURES lists what it builds.
NORM_OFFSET, EMBED_SCALE, TRANSPOSED = "(1 + weight) RMSNorm", "sqrt(hidden_size) embedding scale", "transposed weight layout"
MULTIPLIERS = "embedding, residual, attention and logits multipliers"
INTERLEAVED_ROPE, LOCAL_ROPE = "interleaved RoPE", "a separate RoPE base for sliding layers"
CLIP_QKV, LOGIT_SCALE = "q/k/v clipping (clip_qkv)", "logit scale"
WINDOW_LAYERS = {"max_window_layers": Extra("int", 28, minimum=0)}  # the first layer of the sliding ones
GEMMA_NORM = dict(norm_weight_offset=1.0, norm_weight_in_fp32=True)  # (1 + w) RMSNorm computed in fp32
GEMMA_DEFAULTS = {"num_key_value_heads": MISSING, "rms_norm_eps": 1e-6, "tie_word_embeddings": True, "head_dim": 256,
                  "sliding_window": 4096, "hidden_activation": "gelu_pytorch_tanh"}


WINDOW_ONLY, WINDOW_PATTERNS = ("window",), ("window", "layer_types")  # a window on every layer; also any sliding / full mix


def dropout(default: float, **sites: str) -> dict[str, Extra]:
    """Dropout probabilities the family's config carries (transformers' default `default`), by site: key."""
    return {key: Extra("number", default, minimum=0.0, maximum=1.0, dropout=site) for site, key in sites.items()}

QK_NORM_FLAG = ("use_qk_norm",)
# DeepSeek's MLA and MoE config keys (V2 and V3 name them alike)
DEEPSEEK_KEYS = {**ATTENTION_BIAS, "head_dim": None, **ROUTER, "moe.num_experts": "n_routed_experts",
                 "moe.expert_ffn_size": "moe_intermediate_size", "moe.shared_experts": "n_shared_experts",
                 "moe.shared_ffn_size": "moe_intermediate_size", "mla.q_lora_rank": "q_lora_rank",
                 "mla.kv_lora_rank": "kv_lora_rank", "mla.qk_nope_head_dim": "qk_nope_head_dim",
                 "mla.qk_rope_head_dim": "qk_rope_head_dim", "mla.v_head_dim": "v_head_dim"}
PER_EXPERT = ("gate_proj", "up_proj", "down_proj")  # per-expert checkpoint tensors of the Qwen-MoE / DeepSeek layout
# LoRA targets (module leaf names): the Llama block's projections, and the other layouts'
LLAMA_LORA = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ATTENTION_LORA = LLAMA_LORA[:4]  # MoE layers whose experts are fused 3-D parameters in transformers 5: attention only
NEOX_LORA = ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")
MLA_LORA = ("q_proj", "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

ROWS: tuple[Family, ...] = (
    # ---- the Llama block and its close relatives ----
    Family("llama", "LlamaForCausalLM", parity="both", heads_divide_hidden=True,
           keys={**ATTENTION_BIAS, "mlp_bias": "mlp_bias"},
           defaults={"max_position_embeddings": 2048, "rms_norm_eps": 1e-6}),
    Family("mistral", "MistralForCausalLM", parity="both", layouts=WINDOW_ONLY, layers=LayerRule("all_sliding"),
           defaults={"max_position_embeddings": 131072, "num_key_value_heads": MISSING, "rms_norm_eps": 1e-6}),
    Family("qwen2", "Qwen2ForCausalLM", parity="both", layouts=WINDOW_PATTERNS, fixed={"qkv_bias": True},
           layers=LayerRule("window_layers", gate=("use_sliding_window",)),
           defaults={"max_position_embeddings": 32768, "rms_norm_eps": 1e-6}, extra=WINDOW_LAYERS),
    Family("qwen3", "Qwen3ForCausalLM", parity="both", layouts=WINDOW_PATTERNS, keys=ATTENTION_BIAS, fixed={"qk_norm": "head"},
           layers=LayerRule("window_layers", gate=("use_sliding_window",)),
           defaults={"max_position_embeddings": 32768, "rms_norm_eps": 1e-6}, extra=WINDOW_LAYERS),
    Family("granite", "GraniteForCausalLM", parity="both", keys={**ATTENTION_BIAS, "mlp_bias": "mlp_bias"},
           defaults={"max_position_embeddings": 2048, "rms_norm_eps": 1e-6},
           extra={name: Extra("number", 1.0, above=0.0, feature=MULTIPLIERS)
                  for name in ("embedding_multiplier", "residual_multiplier", "attention_multiplier", "logits_scaling")}),
    Family("smollm3", "SmolLM3ForCausalLM", parity="both", layouts=("layer_types", "nope_layers"),
           keys={**ATTENTION_BIAS, "mlp_bias": "mlp_bias"}, nope=True,
           layers=LayerRule("rope", other="full_attention", nth="sliding_attention", gate=("use_sliding_window", "sliding_window")),
           defaults={"max_position_embeddings": 32768, "num_key_value_heads": MISSING, "rms_norm_eps": 1e-6,
                     "tie_word_embeddings": True, "rope_theta": 2_000_000.0}),
    Family("ernie4_5", "Ernie4_5ForCausalLM", parity="both", keys={"qkv_bias": "use_bias", "o_bias": "use_bias", "mlp_bias": "use_bias"},
           defaults={"max_position_embeddings": 131072, "num_key_value_heads": MISSING, "rms_norm_eps": 1e-5, "use_bias": False,
                     "tie_word_embeddings": True, "head_dim": 128, "rope_theta": 500_000.0},
           rope_interleaved=True),
    Family("olmo2", "Olmo2ForCausalLM", parity="both", keys=ATTENTION_BIAS, fixed={"norm_placement": "post", "qk_norm": "full"},
           defaults={"max_position_embeddings": 2048, "rms_norm_eps": 1e-5}, norm_weight_in_fp32=True, rope_in_fp32=True),
    Family("olmo", "OlmoForCausalLM", parity="both", keys={**ATTENTION_BIAS, "norm_eps": None},
           fixed={"norm": "layernorm_nonparametric", "norm_eps": 1e-5}, defaults={"max_position_embeddings": 2048},
           extra={"clip_qkv": Extra("number", None, above=0.0, nullable=True, feature=CLIP_QKV)}, norm_upcast="fused"),
    Family("phi3", "Phi3ForCausalLM", parity="both", layouts=WINDOW_ONLY, layers=LayerRule("all_sliding"),
           fixed={**NO_BIAS, "fused_qkv": True, "fused_gate_up": True},
           defaults={"max_position_embeddings": 4096, "rms_norm_eps": 1e-5}, rope_concat=True,
           extra={"original_max_position_embeddings": Extra("int", 4096, minimum=1), **dropout(0.0, residual="resid_pdrop", embedding="embd_pdrop")},
           lora_targets=("qkv_proj", "o_proj", "gate_up_proj", "down_proj")),
    # ---- Gemma: (1 + w) RMSNorm, sqrt(hidden) embedding scale, GeGLU ----
    Family("gemma", "GemmaForCausalLM", parity="both", keys=ATTENTION_BIAS, fixed={"ffn_kind": "geglu"},
           defaults={"max_position_embeddings": 8192, "rms_norm_eps": 1e-6, "tie_word_embeddings": True, "head_dim": 256,
                     "hidden_act": "gelu_pytorch_tanh"},
           embed_scale="sqrt_hidden", **GEMMA_NORM),
    Family("gemma2", "Gemma2ForCausalLM", parity="both", layouts=WINDOW_PATTERNS, heads_divide_hidden=True,
           keys={**ATTENTION_BIAS, "activation": "hidden_activation"},
           fixed={"norm_placement": "sandwich", "ffn_kind": "geglu"}, layers=LayerRule("period", 2),
           defaults={**GEMMA_DEFAULTS, "max_position_embeddings": 8192},
           extra={"query_pre_attn_scalar": Extra("number", 256, above=0.0),
                  "attn_logit_softcapping": Extra("number", 50.0, above=0.0, nullable=True, feature=SOFTCAP_ATTENTION),
                  "final_logit_softcapping": Extra("number", 30.0, above=0.0, nullable=True, feature=SOFTCAP_FINAL)},
           embed_scale="sqrt_hidden", attention_kernels=("eager", "flash_attention_2", "flex_attention"), **GEMMA_NORM),
    Family("gemma3_text", "Gemma3ForCausalLM", parity="both", layouts=WINDOW_PATTERNS, heads_divide_hidden=True,
           rope_per_layer_type=True,
           keys={**ATTENTION_BIAS, "activation": "hidden_activation"},
           fixed={"norm_placement": "sandwich", "ffn_kind": "geglu", "qk_norm": "head"},
           layers=LayerRule("period", 6, period_key="sliding_window_pattern"),
           aliases={"_sliding_window_pattern": "sliding_window_pattern"},
           defaults={**GEMMA_DEFAULTS, "max_position_embeddings": 131072, "rope_theta": 1_000_000.0},
           extra={"query_pre_attn_scalar": Extra("number", 256, above=0.0),
                  "attn_logit_softcapping": Extra("number", None, above=0.0, nullable=True, feature=SOFTCAP_ATTENTION),
                  "final_logit_softcapping": Extra("number", None, above=0.0, nullable=True, feature=SOFTCAP_FINAL),
                  "rope_local_base_freq": Extra("number", 10_000.0, above=1.0, feature=LOCAL_ROPE),
                  "use_bidirectional_attention": Extra("bool", False, feature="bidirectional attention")},
           embed_scale="sqrt_hidden", **GEMMA_NORM),
    # ---- LayerNorm families: biases, plain GELU MLPs, parallel blocks ----
    Family("gpt2", "GPT2LMHeadModel",
           keys={"hidden_size": "n_embd", "num_layers": "n_layer", "num_heads": "n_head", "num_kv_heads": None, "head_dim": None,
                 "ffn_size": "n_inner", "context_length": "n_positions", "activation": "activation_function",
                 "norm_eps": "layer_norm_epsilon"},
           fixed={"norm": "layernorm", "position": "learned", "ffn_kind": "gelu", "fused_qkv": True, "qkv_bias": True,
                  "o_bias": True, "mlp_bias": True, "num_kv_heads": Same("num_heads")},
           defaults={"n_inner": Times("hidden_size", 4), "n_positions": 1024, "activation_function": "gelu_new",
                     "layer_norm_epsilon": 1e-5, "tie_word_embeddings": True},
           extra=dropout(0.1, residual="resid_pdrop", embedding="embd_pdrop", attention="attn_pdrop"),
           linear_transposed=True, attention_kernels=("sdpa", "eager", "flash_attention_2"), eager_softmax_fp32=False,
           lora_targets=("c_attn", "c_proj", "c_fc")),
    Family("gpt_neox", "GPTNeoXForCausalLM", keys={"num_kv_heads": None, "head_dim": None, "norm_eps": "layer_norm_eps", **ATTENTION_BIAS},
           aliases={"rotary_pct": "partial_rotary_factor", "rotary_emb_base": "rope_theta"},
           fixed={"norm": "layernorm", "ffn_kind": "gelu", "fused_qkv": True, "mlp_bias": True, "num_kv_heads": Same("num_heads")},
           switches=(Switch(("use_parallel_residual",), (((True,), {"norm_placement": "parallel"}),
                                                         ((False,), {"norm_placement": "pre"}))),),
           defaults={"max_position_embeddings": 2048, "layer_norm_eps": 1e-5, "hidden_act": "gelu", "attention_bias": True,
                     "partial_rotary_factor": 0.25, "use_parallel_residual": True}, rope_concat=True, lora_targets=NEOX_LORA),
    Family("falcon", "FalconForCausalLM",
           keys={"num_kv_heads": "num_kv_heads", "head_dim": None, "ffn_size": "ffn_hidden_size", "activation": "activation",
                 "norm_eps": "layer_norm_epsilon", "qkv_bias": "bias", "o_bias": "bias", "mlp_bias": "bias"},
           fixed={"norm": "layernorm", "ffn_kind": "gelu", "fused_qkv": True},
           switches=(
               # (new_decoder_architecture, multi_query, parallel_attn, num_ln_in_parallel_attn): the new architecture
               # reads num_kv_heads; the old one has one KV head (multi_query) or one per head
               Switch(("new_decoder_architecture", "multi_query", "parallel_attn", "num_ln_in_parallel_attn"), (
                   ((False, True, True, ANY), {"num_kv_heads": 1, "norm_placement": "parallel_shared"}),
                   ((False, True, False, ANY), {"num_kv_heads": 1, "norm_placement": "pre"}),
                   ((False, False, True, ANY), {"num_kv_heads": Same("num_heads"), "norm_placement": "parallel_shared"}),
                   ((False, False, False, ANY), {"num_kv_heads": Same("num_heads"), "norm_placement": "pre"}),
                   ((True, ANY, True, 1), {"norm_placement": "parallel_shared"}),
                   ((True, ANY, ANY, ANY), {"norm_placement": "parallel"}),
               )),
               Switch(("alibi",), (((True,), {"position": "alibi"}), ((False,), {"position": "rope"}))),
           ),
           defaults={"ffn_hidden_size": Times("hidden_size", 4), "activation": "gelu", "layer_norm_epsilon": 1e-5,
                     "bias": False, "tie_word_embeddings": True, "num_kv_heads": Same("num_heads"),
                     "max_position_embeddings": 2048, "new_decoder_architecture": False, "multi_query": True,
                     "parallel_attn": True, "num_ln_in_parallel_attn": None, "alibi": False},
           attention_kernels=("sdpa", "eager", "flash_attention_2"), unrepeated_kv=True, sdpa_mask=True,
           eager_softmax_fp32=False,
           # 5.25 moved Falcon onto the shared attention functions: KV heads repeated, eager softmax in fp32
           since=(("5.25", {"unrepeated_kv": False, "eager_softmax_fp32": True}),), lora_targets=NEOX_LORA),
    Family("starcoder2", "Starcoder2ForCausalLM", layouts=WINDOW_ONLY,
           keys={"norm_eps": "norm_epsilon", "qkv_bias": "use_bias", "o_bias": "use_bias", "mlp_bias": "use_bias"},
           fixed={"norm": "layernorm", "ffn_kind": "gelu"}, layers=LayerRule("all_sliding"),
           defaults={"max_position_embeddings": 4096, "num_key_value_heads": MISSING, "norm_epsilon": 1e-5, "use_bias": True,
                     "tie_word_embeddings": True, "hidden_act": "gelu_pytorch_tanh", "initializer_range": 0.018042},
           extra=dropout(0.0, residual="residual_dropout", embedding="embedding_dropout"),
           lora_targets=(*ATTENTION_LORA, "c_fc", "c_proj")),
    Family("phi", "PhiForCausalLM", keys={"norm_eps": "layer_norm_eps"},
           fixed={"norm": "layernorm", "norm_placement": "parallel_shared", "ffn_kind": "gelu", "qkv_bias": True,
                  "o_bias": True, "mlp_bias": True, "lm_head_bias": True},
           switches=(Switch(("qk_layernorm",), (((True,), {"qk_norm": "head"}), ((False,), {"qk_norm": "none"}))),),
           defaults={"max_position_embeddings": 2048, "layer_norm_eps": 1e-5, "hidden_act": "gelu_new",
                     "partial_rotary_factor": 0.5, "qk_layernorm": False}, rope_concat=True,
           extra=dropout(0.0, residual="resid_pdrop", embedding="embd_pdrop"),
           lora_targets=("q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2")),
    Family("cohere", "CohereForCausalLM", parity="both", keys={**ATTENTION_BIAS, "norm_eps": "layer_norm_eps"},
           fixed={"norm": "layernorm_nobias", "norm_placement": "parallel_shared"},
           switches=(Switch(QK_NORM_FLAG, (((True,), {"qk_norm": "per_head"}), ((False,), {"qk_norm": "none"}))),),
           defaults={"max_position_embeddings": 8192, "layer_norm_eps": 1e-5, "tie_word_embeddings": True, "use_qk_norm": False,
                     "rope_theta": 500_000.0},
           extra={"logit_scale": Extra("number", 0.0625, above=0.0, feature=LOGIT_SCALE)},
           rope_interleaved=True, norm_upcast="manual"),
    # ---- mixtures of experts ----
    Family("mixtral", "MixtralForCausalLM", parity="both", layouts=WINDOW_ONLY,
           keys={**ROUTER, "moe.num_experts": "num_local_experts", "moe.expert_ffn_size": "intermediate_size"},
           fixed=NO_BIAS, layers=LayerRule("all_sliding"), moe_layers="all",
           renames=((".mlp.", ".block_sparse_moe."),), expert_names=("w1", "w3", "w2"),
           defaults={"max_position_embeddings": 131072, "num_key_value_heads": MISSING, "rope_theta": 1_000_000.0,
                     "rms_norm_eps": 1e-5},
           extra=AUX_LOSS, lora_targets=ATTENTION_LORA),
    Family("qwen3_moe", "Qwen3MoeForCausalLM", parity="both", layouts=("window", "dense_layers"),
           keys={**ATTENTION_BIAS, **ROUTER, "moe.num_experts": "num_experts", "moe.expert_ffn_size": "moe_intermediate_size"},
           aliases={"num_local_experts": "num_experts"}, fixed={"qk_norm": "head"}, moe_layers="sparse_step",
           expert_names=PER_EXPERT,
           # transformers' Qwen3-MoE has no layer_types: every layer slides when use_sliding_window is on
           layers=LayerRule("all_sliding", gate=("use_sliding_window",)),
           defaults={"max_position_embeddings": 32768, "num_key_value_heads": MISSING, "rms_norm_eps": 1e-6},
           extra={**AUX_LOSS, **TOPK_NORM}, lora_targets=ATTENTION_LORA),
    Family("qwen2_moe", "Qwen2MoeForCausalLM", parity="both", layouts=(*WINDOW_PATTERNS, "dense_layers", "shared_experts"),
           keys={"qkv_bias": "qkv_bias", **ROUTER, "moe.num_experts": "num_experts",
                 "moe.expert_ffn_size": "moe_intermediate_size", "moe.shared_ffn_size": "shared_expert_intermediate_size"},
           fixed={"moe.shared_experts": 1, "moe.shared_expert_gate": True}, moe_layers="sparse_step",
           layers=LayerRule("alternate_window_layers", gate=("use_sliding_window",)),
           defaults={"max_position_embeddings": 32768, "shared_expert_intermediate_size": 5632, "rms_norm_eps": 1e-6, "qkv_bias": True},
           renames=((".mlp.shared_experts.", ".mlp.shared_expert."),),
           expert_names=PER_EXPERT,
           extra={**AUX_LOSS, **TOPK_NORM, **WINDOW_LAYERS}),
    Family("qwen3_next", "Qwen3NextForCausalLM", layouts=("layer_types", "dense_layers", "shared_experts"),
           keys={**ATTENTION_BIAS, **ROUTER, "moe.num_experts": "num_experts", "moe.expert_ffn_size": "moe_intermediate_size",
                 "moe.shared_ffn_size": "shared_expert_intermediate_size",
                 "linear_attention.num_key_heads": "linear_num_key_heads", "linear_attention.num_value_heads": "linear_num_value_heads",
                 "linear_attention.key_head_dim": "linear_key_head_dim", "linear_attention.value_head_dim": "linear_value_head_dim",
                 "linear_attention.conv_kernel": "linear_conv_kernel_dim"},
           fixed={"qk_norm": "head", "attn_output_gate": True, "moe.shared_experts": 1, "moe.shared_expert_gate": True},
           layers=LayerRule("period", 4, period_key="full_attention_interval", other="linear_attention"), moe_layers="sparse_step",
           expert_names=PER_EXPERT,
           defaults={"max_position_embeddings": 32768, "num_key_value_heads": MISSING, "shared_expert_intermediate_size": 512,
                     "rms_norm_eps": 1e-6, "head_dim": 256, "partial_rotary_factor": 0.25, "linear_conv_kernel_dim": 4},
           extra={**AUX_LOSS, "norm_topk_prob": Extra("bool", True)}, **GEMMA_NORM, rope_concat=True,
           attention_kernels=("sdpa", "eager", "flash_attention_2"),
           lora_targets=(*LLAMA_LORA, "in_proj_qkvz", "in_proj_ba", "out_proj")),
    Family("deepseek_v3", "DeepseekV3ForCausalLM", parity="both", layouts=("dense_layers", "shared_experts"),
           keys=DEEPSEEK_KEYS,
           moe_layers="first_k_dense",
           defaults={"max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "n_shared_experts": 1, "first_k_dense_replace": 3,
                     "q_lora_rank": 1536},
           latent_norm_eps=1e-6,  # transformers builds q_a_layernorm / kv_a_layernorm with RMSNorm's default eps
           expert_names=PER_EXPERT,
           extra={**GROUPED_ROUTER, "routed_scaling_factor": Extra("number", 2.5, above=0.0, feature=GROUPED_ROUTING),
                  "n_group": Extra("int", 8, minimum=1), "topk_group": Extra("int", 4, minimum=1),
                  "rope_interleave": Extra("bool", True, feature=INTERLEAVED_ROPE)},
           router_fp32=True, lora_targets=MLA_LORA),
    # DeepSeek-V2 / V2-Lite: V3's MLA and MoE layout with a softmax router (greedy or group-limited top-k, scaled, not
    # renormalised) and complex-number RoPE on adjacent pairs; network.py has neither router nor that RoPE: parity none
    Family("deepseek_v2", "DeepseekV2ForCausalLM", layouts=("dense_layers", "shared_experts"),
           keys=DEEPSEEK_KEYS,
           moe_layers="first_k_dense",
           defaults={"max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "n_shared_experts": 2, "first_k_dense_replace": 0,
                     "q_lora_rank": 1536, "kv_lora_rank": 512, "n_routed_experts": 64, "moe_intermediate_size": 1407,
                     "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128},
           latent_norm_eps=1e-6, expert_names=PER_EXPERT, rope_interleaved=True,
           extra={"routed_scaling_factor": Extra("number", 1.0, above=0.0), "n_group": Extra("int", None, minimum=1, nullable=True),
                  "topk_group": Extra("int", None, minimum=1, nullable=True), "norm_topk_prob": Extra("bool", False),
                  "topk_method": Extra("choice", "greedy", choices=("greedy", "group_limited_greedy"))},
           router_fp32=True, router_scaled_topk=True, lora_targets=MLA_LORA),
    Family("glm4_moe", "Glm4MoeForCausalLM", parity="both", layouts=("dense_layers", "shared_experts"),
           keys={"qkv_bias": "attention_bias", **ROUTER, "moe.num_experts": "n_routed_experts",
                 "moe.expert_ffn_size": "moe_intermediate_size", "moe.shared_experts": "n_shared_experts",
                 "moe.shared_ffn_size": "moe_intermediate_size"},
           switches=(Switch(QK_NORM_FLAG, (((True,), {"qk_norm": "head"}), ((False,), {"qk_norm": "none"}))),),
           moe_layers="first_k_dense", expert_names=PER_EXPERT,
           defaults={"max_position_embeddings": 131072, "num_key_value_heads": MISSING, "rms_norm_eps": 1e-5,
                     "partial_rotary_factor": 0.5, "use_qk_norm": False, "n_shared_experts": 1, "first_k_dense_replace": 1},
           extra=GROUPED_ROUTER, router_fp32=True, rope_concat=True),
    Family("gpt_oss", "GptOssForCausalLM", layouts=WINDOW_PATTERNS,
           keys={**ATTENTION_BIAS, **ROUTER, "moe.num_experts": "num_local_experts", "moe.expert_ffn_size": "intermediate_size"},
           fixed={"attention_sinks": True, "moe.router_bias": True, "moe.expert_bias": True},
           layers=LayerRule("period", 2), moe_layers="all", experts_transposed=True,
           defaults={"max_position_embeddings": 131072, "num_key_value_heads": MISSING, "rope_theta": 150_000.0,
                     "rms_norm_eps": 1e-5, "attention_bias": True, "head_dim": 64, "sliding_window": 128},
           extra={**AUX_LOSS, "swiglu_limit": Extra("number", 7.0, above=0.0, feature="clamped SwiGLU (swiglu_limit, alpha 1.702)")},
           attention_kernels=("eager", "flash_attention_2", "flex_attention"),
           norm_weight_in_fp32=True, router_topk_softmax=True, expert_glu_saved=7, lora_targets=ATTENTION_LORA),  # clamped SwiGLU: clamps, sigmoid, scaled gate, up + 1
    Family("llama4_text", "Llama4ForCausalLM", layouts=("layer_types", "dense_layers", "shared_experts", "nope_layers"),
           keys={**ATTENTION_BIAS, "ffn_size": "intermediate_size_mlp", **ROUTER, "moe.num_experts": "num_local_experts",
                 "moe.expert_ffn_size": "intermediate_size", "moe.shared_ffn_size": "intermediate_size",
                 "attention_chunk_size": "attention_chunk_size"},
           fixed={"moe.shared_experts": 1}, nope=True, moe_layers="interleave",
           layers=LayerRule("rope", other="chunked_attention", nth="full_attention"),
           switches=(Switch(QK_NORM_FLAG, (((True,), {"qk_norm": "l2"}), ((False,), {"qk_norm": "none"}))),),
           defaults={"max_position_embeddings": 131072, "num_key_value_heads": MISSING, "rms_norm_eps": 1e-5, "head_dim": 128,
                     "use_qk_norm": True, "attention_chunk_size": 8192, "rope_theta": 500_000.0},
           extra={**AUX_LOSS, "attn_temperature_tuning": Extra("bool", True, feature="attention temperature tuning on NoPE layers"),
                  "floor_scale": Extra("number", 8192, above=0.0), "attn_scale": Extra("number", 0.1, above=0.0)},
           experts_transposed=True, experts_run="all", attention_kernels=("sdpa", "eager", "flex_attention"), eager_softmax_fp32=False),
)
FAMILIES: dict[str, Family] = {}  # model_type -> its row as the installed transformers runs it


def describe(version: str) -> None:
    """Make the registry describe transformers `version`: the installed one at import; a benchmark that re-estimates
    measurements taken under another version passes that one."""
    FAMILIES.clear()
    FAMILIES.update({f.model_type: f.as_of(release(version)) for f in ROWS})


describe(TRANSFORMERS)

DEFAULT_FAMILY = "llama"  # what a designed spec is written as: the layout every runtime loads
NAMES: tuple[str, ...] = tuple(sorted(FAMILIES))


def get(model_type: Any) -> Family:
    """The row for `model_type`; SpecError naming the field when there is none."""
    if model_type not in FAMILIES:
        raise SpecError("model_type", f"unsupported model_type {model_type!r:.60}; supported: {', '.join(NAMES)}")
    return FAMILIES[model_type]


def lora_modules(model_type: Any) -> tuple[str, ...] | None:
    """The module leaf names LoRA adapts in `model_type`'s blocks (peft `target_modules`); None: not a registry family."""
    family = FAMILIES.get(model_type) if isinstance(model_type, str) else None
    return None if family is None else family.lora_targets or LLAMA_LORA


def with_parity(*levels: str) -> tuple[str, ...]:
    """Families whose `parity` is one of `levels`, sorted."""
    return tuple(name for name in NAMES if FAMILIES[name].parity in levels)


def setting(spec: Any, key: str, fallback: Any) -> Any:
    """spec.extra[key], else transformers' default for the spec's family, else `fallback` (a key the family lacks)."""
    if key in spec.extra:
        return spec.extra[key]
    rule = FAMILIES[spec.model_type].extra.get(key)
    return rule.default if rule is not None and rule.default is not None else fallback


def features(family: Family, extra: Mapping[str, Any]) -> list[str]:
    """What the family computes beyond the spec's sizes, for network.py (names as network.FEATURES spells them)."""
    found = []
    if family.norm_weight_offset:
        found.append(NORM_OFFSET)
    if family.embed_scale != "none":
        found.append(EMBED_SCALE)
    if family.experts_transposed or family.linear_transposed:
        found.append(TRANSPOSED)
    if family.rope_interleaved:
        found.append(INTERLEAVED_ROPE)
    for key, rule in family.extra.items():
        if rule.feature and extra.get(key, rule.default) not in (None, False) and rule.feature not in found:  # null / false: off
            found.append(rule.feature)
    return found


def check_extra(family: Family, extra: Mapping[str, Any], prefix: str = "extra.") -> None:
    """Raise SpecError unless every key is one of the family's passthrough keys with a valid value."""
    owned = owned_keys(family)
    for key, value in extra.items():
        name = f"{prefix}{key}"
        if key in owned:
            raise SpecError(name, f"is written from the spec field {owned[key]}; set that field instead")
        rule = family.extra.get(key)
        if rule is None:
            allowed = ", ".join(sorted(family.extra)) or "none"
            raise SpecError(name, f"is not a setting of model_type {family.model_type!r}; allowed extra keys: {allowed}")
        _check_value(name, value, rule)


def _check_value(name: str, value: Any, rule: Extra) -> None:
    if value is None:
        if not rule.nullable:
            raise SpecError(name, "must not be null")
        return
    if rule.kind == "bool":
        if not isinstance(value, bool):
            raise SpecError(name, f"must be true or false, got {value!r:.60}")
        return
    if rule.kind == "choice":
        if value not in rule.choices:
            raise SpecError(name, f"must be one of {', '.join(rule.choices)}; got {value!r:.60}")
        return
    types = (int,) if rule.kind == "int" else (int, float)
    if isinstance(value, bool) or not isinstance(value, types) or value != value:  # value != value: NaN
        raise SpecError(name, f"must be {'an integer' if rule.kind == 'int' else 'a number'}, got {value!r:.60}")
    if rule.above is not None and not value > rule.above:
        raise SpecError(name, f"must be > {rule.above}, got {value}")
    if rule.minimum is not None and value < rule.minimum:
        raise SpecError(name, f"must be >= {rule.minimum}, got {value}")
    if rule.maximum is not None and value > rule.maximum:
        raise SpecError(name, f"must be <= {rule.maximum}, got {value}")


def owned_keys(family: Family) -> dict[str, str]:
    """Config keys written from checked spec fields (key -> field): extra may not carry them."""
    owned = {key: field_ for field_, key in {**KEYS, **family.keys}.items() if key}
    for switch in family.switches:
        fields = sorted({f for _, row in switch.table for f in row})
        owned.update(dict.fromkeys(switch.keys, "/".join(fields)))
    for key in ("model_type", "architectures", "auto_map", "rope_parameters", "rope_scaling", "rope_theta",
                "partial_rotary_factor", "layer_types", "sliding_window", "use_sliding_window", "no_rope_layers",
                "moe_layers", "mlp_only_layers", "decoder_sparse_step", "first_k_dense_replace",
                "interleave_moe_layer_step", "head_dim", "quantization_config", "dtype", "torch_dtype"):
        owned.setdefault(key, "the spec (layout, positions and layers)" if key != "auto_map" else "nothing: remote code is never enabled")
    for old, new in family.aliases.items():
        owned.setdefault(old, owned.get(new, new))
    return owned
