"""Hugging Face `config.json` <-> `ArchitectureSpec`.

Each supported `model_type` is a row of `FAMILIES`: which layout choices the family
hard-codes (norm placement, biases, QK-norm, fused projections) and which config keys it
carries through unchanged. Reading accepts both the transformers 4.x rope keys
(`rope_theta`, `rope_scaling`) and the 5.x `rope_parameters`; writing emits the 5.x form.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from archsmith.errors import ConfigError, SpecError
from archsmith.spec import ArchitectureSpec, MoESpec


@dataclass(frozen=True)
class Family:
    """What a transformers model class fixes, so that the spec says what the config omits."""

    architecture: str  # class name written into "architectures"
    norm_placement: str = "pre"
    qk_norm: str = "none"
    qkv_bias: bool | None = None  # None: follows the config's attention_bias
    o_bias: bool | None = None
    has_mlp_bias: bool = False  # the config has an `mlp_bias` key
    ffn_kind: str = "swiglu"
    activation_key: str = "hidden_act"
    fused_qkv: bool = False
    fused_gate_up: bool = False
    tie_default: bool = False  # transformers' default for tie_word_embeddings in this family
    norm_eps_default: float = 1e-6
    sliding: str = "none"  # none | all (mistral) | qwen (use_sliding_window) | alternate (gemma2) | phi3
    moe: str = "none"  # none | mixtral | qwen3_moe
    passthrough: tuple[str, ...] = ()  # keys copied as-is into spec.extra and back
    heads_divide_hidden: bool = False  # the transformers config refuses hidden_size % num_heads != 0 even with head_dim


FAMILIES: dict[str, Family] = {
    "llama": Family("LlamaForCausalLM", has_mlp_bias=True, heads_divide_hidden=True),
    "mistral": Family("MistralForCausalLM", qkv_bias=False, o_bias=False, sliding="all"),
    "qwen2": Family("Qwen2ForCausalLM", qkv_bias=True, o_bias=False, sliding="qwen", passthrough=("max_window_layers",)),
    "qwen3": Family("Qwen3ForCausalLM", qk_norm="head", sliding="qwen", passthrough=("max_window_layers",)),
    "gemma2": Family(
        "Gemma2ForCausalLM", norm_placement="sandwich", ffn_kind="geglu", activation_key="hidden_activation",
        tie_default=True, sliding="alternate", heads_divide_hidden=True,
        passthrough=("query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping"),
    ),
    "olmo2": Family("Olmo2ForCausalLM", norm_placement="post", qk_norm="full", norm_eps_default=1e-5),
    "phi3": Family(
        "Phi3ForCausalLM", qkv_bias=False, o_bias=False, fused_qkv=True, fused_gate_up=True, norm_eps_default=1e-5,
        sliding="phi3", passthrough=("original_max_position_embeddings", "resid_pdrop", "embd_pdrop"),
    ),
    "mixtral": Family("MixtralForCausalLM", qkv_bias=False, o_bias=False, norm_eps_default=1e-5, sliding="all", moe="mixtral",
                      passthrough=("router_aux_loss_coef",)),
    "qwen3_moe": Family("Qwen3MoeForCausalLM", qk_norm="head", sliding="qwen", moe="qwen3_moe",
                        passthrough=("router_aux_loss_coef", "norm_topk_prob", "max_window_layers")),
    # gpt2 is read and written by its own functions below (different key names); the row
    # documents its layout for the estimator.
    "gpt2": Family("GPT2LMHeadModel", qkv_bias=True, o_bias=True, ffn_kind="gelu", activation_key="activation_function",
                   fused_qkv=True, tie_default=True, norm_eps_default=1e-5),
}
SUPPORTED = tuple(sorted(FAMILIES))


def _family(model_type: Any) -> Family:
    if model_type not in FAMILIES:
        raise ConfigError("model_type", f"unsupported model_type {model_type!r}; supported: {', '.join(SUPPORTED)}")
    return FAMILIES[model_type]


def _require(cfg: dict[str, Any], key: str) -> Any:
    if key not in cfg or cfg[key] is None:
        raise ConfigError(key, f"missing from config.json (model_type {cfg.get('model_type')!r})")
    return cfg[key]


def _rope(cfg: dict[str, Any]) -> tuple[float, dict[str, Any] | None, float]:
    """(theta, scaling-without-theta or None, partial_rotary_factor) from either rope format."""
    params = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    theta = params.pop("rope_theta", cfg.get("rope_theta", 10000.0))
    partial = params.pop("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0))
    kind = params.get("rope_type", params.get("type", "default"))
    if "type" in params and "rope_type" not in params:
        params["rope_type"] = params.pop("type")
    scaling = None if kind == "default" else params
    return float(theta), scaling, float(partial)


# JSON types of the keys we read (None is always allowed: the family default applies).
INT_KEYS = ("hidden_size", "num_attention_heads", "num_key_value_heads", "num_hidden_layers", "intermediate_size",
            "vocab_size", "max_position_embeddings", "head_dim", "sliding_window", "max_window_layers", "num_local_experts",
            "num_experts", "num_experts_per_tok", "moe_intermediate_size", "decoder_sparse_step", "n_embd", "n_layer",
            "n_head", "n_inner", "n_positions", "bos_token_id", "pad_token_id")
NUMBER_KEYS = ("rope_theta", "rms_norm_eps", "layer_norm_epsilon", "initializer_range", "partial_rotary_factor")
BOOL_KEYS = ("tie_word_embeddings", "attention_bias", "mlp_bias", "use_sliding_window")
OBJECT_KEYS = ("rope_scaling", "rope_parameters")
STRING_KEYS = ("model_type", "hidden_act", "hidden_activation", "activation_function")


def _check_types(cfg: dict[str, Any]) -> None:
    """Raise ConfigError naming the first key whose JSON type is wrong."""
    kinds = [(INT_KEYS, (int,), "an integer"), (NUMBER_KEYS, (int, float), "a number"), (BOOL_KEYS, (bool,), "true or false"),
             (OBJECT_KEYS, (dict,), "an object"), (STRING_KEYS, (str,), "a string")]
    for keys, types, what in kinds:
        for key in keys:
            value = cfg.get(key)
            if value is None:
                continue
            if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
                raise ConfigError(key, f"must be {what}, got {value!r:.60}")
    eos = cfg.get("eos_token_id")
    if eos is not None and not (isinstance(eos, int) and not isinstance(eos, bool)
                                or isinstance(eos, list) and all(isinstance(e, int) and not isinstance(e, bool) for e in eos)):
        raise ConfigError("eos_token_id", f"must be an integer or a list of integers, got {eos!r:.60}")
    types = cfg.get("layer_types")
    if types is not None and not (isinstance(types, list) and all(isinstance(t, str) for t in types)):
        raise ConfigError("layer_types", f"must be a list of strings, got {types!r:.60}")
    for key in OBJECT_KEYS:
        params = cfg.get(key) or {}
        for name in ("factor", "rope_theta", "partial_rotary_factor", "low_freq_factor", "high_freq_factor"):
            value = params.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ConfigError(f"{key}.{name}", f"must be a number, got {value!r:.60}")
        kind = params.get("rope_type", params.get("type"))
        if kind is not None and not isinstance(kind, str):
            raise ConfigError(f"{key}.rope_type", f"must be a string, got {kind!r:.60}")


def spec_from_hf(cfg: dict[str, Any]) -> ArchitectureSpec:
    """Read a parsed HF config dict. Raises ConfigError / SpecError naming the bad key."""
    if not isinstance(cfg, dict):
        raise ConfigError("config.json", f"must be a JSON object, got {type(cfg).__name__}")
    _check_types(cfg)
    model_type = cfg.get("model_type")
    fam = _family(model_type)
    if model_type == "gpt2":
        return _gpt2_from_hf(cfg)
    hidden = _require(cfg, "hidden_size")
    heads = _require(cfg, "num_attention_heads")
    kv = cfg.get("num_key_value_heads") or heads
    layers = _require(cfg, "num_hidden_layers")
    theta, scaling, partial = _rope(cfg)
    bias = bool(cfg.get("attention_bias", False))
    n_layers = layers if isinstance(layers, int) else 0
    window, layer_types = _sliding(cfg, fam, n_layers)
    moe = None
    ffn = _require(cfg, "intermediate_size")
    if fam.moe == "mixtral":
        moe = MoESpec(num_experts=_require(cfg, "num_local_experts"), top_k=_require(cfg, "num_experts_per_tok"), expert_ffn_size=ffn)
    elif fam.moe == "qwen3_moe":
        if cfg.get("mlp_only_layers") or cfg.get("decoder_sparse_step", 1) != 1:
            raise ConfigError("mlp_only_layers", "qwen3_moe configs with dense layers between MoE layers are not supported")
        experts = cfg.get("num_local_experts", cfg.get("num_experts"))
        if experts is None:
            raise ConfigError("num_experts", "missing from config.json (model_type 'qwen3_moe')")
        moe = MoESpec(num_experts=experts, top_k=_require(cfg, "num_experts_per_tok"), expert_ffn_size=_require(cfg, "moe_intermediate_size"))
    extra = {k: cfg[k] for k in fam.passthrough if k in cfg}
    try:
        return ArchitectureSpec(
            hidden_size=hidden,
            num_layers=layers,
            num_heads=heads,
            num_kv_heads=kv,
            head_dim=cfg.get("head_dim") or None,
            ffn_size=ffn,
            vocab_size=_require(cfg, "vocab_size"),
            context_length=cfg.get("max_position_embeddings", 4096),
            ffn_kind=fam.ffn_kind,
            activation=cfg.get(fam.activation_key) or ("gelu_pytorch_tanh" if fam.ffn_kind == "geglu" else "silu"),
            norm="rmsnorm",
            norm_eps=cfg.get("rms_norm_eps", fam.norm_eps_default),
            norm_placement=fam.norm_placement,
            position="rope",
            rope_theta=theta,
            rope_scaling=scaling,
            partial_rotary_factor=partial,
            tie_embeddings=bool(cfg.get("tie_word_embeddings", fam.tie_default)),
            qkv_bias=bias if fam.qkv_bias is None else fam.qkv_bias,
            o_bias=bias if fam.o_bias is None else fam.o_bias,
            mlp_bias=bool(cfg.get("mlp_bias", False)) if fam.has_mlp_bias else False,
            qk_norm=fam.qk_norm,
            sliding_window=window,
            layer_types=layer_types,
            fused_qkv=fam.fused_qkv,
            fused_gate_up=fam.fused_gate_up,
            moe=moe,
            model_type=model_type,
            initializer_range=cfg.get("initializer_range", 0.02),
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_id=cfg.get("eos_token_id"),
            pad_token_id=cfg.get("pad_token_id"),
            extra=extra,
        )
    except TypeError as exc:  # a value of the wrong JSON type reached a comparison
        raise ConfigError("config.json", f"a field has the wrong type: {exc}") from None


def _sliding(cfg: dict[str, Any], fam: Family, layers: int) -> tuple[int | None, tuple[str, ...] | None]:
    window = cfg.get("sliding_window")
    if fam.sliding == "none" or not window:
        return None, None
    if fam.sliding == "qwen" and not cfg.get("use_sliding_window", False):
        return None, None
    if cfg.get("layer_types"):
        return window, tuple(cfg["layer_types"])
    if fam.sliding == "alternate":  # Gemma 2: even layers slide, odd layers see everything
        return window, tuple("sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers))
    if fam.sliding == "qwen":  # Qwen2/3: layers from max_window_layers on slide
        start = cfg.get("max_window_layers", layers)
        return window, tuple("sliding_attention" if i >= start else "full_attention" for i in range(layers))
    return window, None


def _gpt2_from_hf(cfg: dict[str, Any]) -> ArchitectureSpec:
    hidden = _require(cfg, "n_embd")
    return ArchitectureSpec(
        hidden_size=hidden,
        num_layers=_require(cfg, "n_layer"),
        num_heads=_require(cfg, "n_head"),
        num_kv_heads=_require(cfg, "n_head"),
        ffn_size=cfg.get("n_inner") or 4 * hidden,
        vocab_size=_require(cfg, "vocab_size"),
        context_length=cfg.get("n_positions", 1024),
        ffn_kind="gelu",
        activation=cfg.get("activation_function", "gelu_new"),
        norm="layernorm",
        norm_eps=cfg.get("layer_norm_epsilon", 1e-5),
        position="learned",
        tie_embeddings=bool(cfg.get("tie_word_embeddings", True)),
        qkv_bias=True,
        o_bias=True,
        mlp_bias=True,
        fused_qkv=True,
        model_type="gpt2",
        initializer_range=cfg.get("initializer_range", 0.02),
        bos_token_id=cfg.get("bos_token_id"),
        eos_token_id=cfg.get("eos_token_id"),
        pad_token_id=cfg.get("pad_token_id"),
    )


# ---- writing --------------------------------------------------------------------------

def _mismatch(spec: ArchitectureSpec, field: str, model_type: str, allowed: str) -> SpecError:
    value = getattr(spec, field) if "." not in field else None
    return SpecError(field, f"model_type {model_type!r} supports only {allowed}; the spec has {value!r}")


def hf_from_spec(spec: ArchitectureSpec, model_type: str | None = None, dtype: str = "bfloat16") -> dict[str, Any]:
    """The config.json dict for `spec` in the family `model_type` (default: spec.model_type).

    Raises SpecError when the family cannot express a spec field (for example QK-norm in llama).
    """
    model_type = model_type or spec.model_type
    fam = _family(model_type)
    if model_type == "gpt2":
        return _gpt2_to_hf(spec, dtype)
    checks = [
        ("norm", spec.norm == "rmsnorm", "rmsnorm"),
        ("position", spec.position == "rope", "rope"),
        ("ffn_kind", spec.ffn_kind == fam.ffn_kind, fam.ffn_kind),
        ("norm_placement", spec.norm_placement == fam.norm_placement, fam.norm_placement),
        ("qk_norm", spec.qk_norm == fam.qk_norm, fam.qk_norm),
        ("fused_qkv", spec.fused_qkv == fam.fused_qkv, str(fam.fused_qkv)),
        ("fused_gate_up", spec.fused_gate_up == fam.fused_gate_up, str(fam.fused_gate_up)),
        ("moe", (spec.moe is None) == (fam.moe == "none"), "MoE" if fam.moe != "none" else "a dense MLP"),
    ]
    if fam.qkv_bias is None:
        checks.append(("o_bias", spec.o_bias == spec.qkv_bias, "qkv_bias == o_bias (attention_bias)"))
    else:
        checks.append(("qkv_bias", spec.qkv_bias == fam.qkv_bias, f"qkv_bias={fam.qkv_bias}"))
        checks.append(("o_bias", spec.o_bias == fam.o_bias, f"o_bias={fam.o_bias}"))
    if not fam.has_mlp_bias:
        checks.append(("mlp_bias", not spec.mlp_bias, "mlp_bias=False"))
    if fam.sliding == "none":
        checks.append(("sliding_window", spec.sliding_window is None, "no sliding window"))
    if fam.heads_divide_hidden:
        checks.append(("num_heads", spec.hidden_size % spec.num_heads == 0, f"num_heads dividing hidden_size={spec.hidden_size}"))
    for field, ok, allowed in checks:
        if not ok:
            raise _mismatch(spec, field, model_type, allowed)

    rope: dict[str, Any] = {"rope_theta": spec.rope_theta, "rope_type": "default"}
    if spec.rope_scaling:
        rope = {**spec.rope_scaling, "rope_theta": spec.rope_theta}
    if spec.partial_rotary_factor != 1.0 or model_type == "phi3":
        rope["partial_rotary_factor"] = spec.partial_rotary_factor
    cfg: dict[str, Any] = {
        "architectures": [fam.architecture],
        "model_type": model_type,
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.ffn_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads,
        "num_key_value_heads": spec.num_kv_heads,
        "head_dim": spec.head_dim,
        fam.activation_key: spec.activation,
        "max_position_embeddings": spec.context_length,
        "initializer_range": spec.initializer_range,
        "rms_norm_eps": spec.norm_eps,
        "tie_word_embeddings": spec.tie_embeddings,
        "rope_parameters": rope,
        "attention_dropout": 0.0,
        "bos_token_id": spec.bos_token_id,
        "eos_token_id": spec.eos_token_id,
        "pad_token_id": spec.pad_token_id,
        "use_cache": True,
        "dtype": dtype,
    }
    if fam.qkv_bias is None:
        cfg["attention_bias"] = spec.qkv_bias
    if fam.has_mlp_bias:
        cfg["mlp_bias"] = spec.mlp_bias
    if fam.sliding != "none":
        cfg["sliding_window"] = spec.sliding_window
        if fam.sliding == "qwen":
            cfg["use_sliding_window"] = spec.sliding_window is not None
        if spec.sliding_window is not None and fam.sliding in ("alternate", "qwen"):
            cfg["layer_types"] = list(spec.resolved_layer_types)
    if spec.moe is not None:
        cfg["num_experts_per_tok"] = spec.moe.top_k
        cfg["num_local_experts"] = spec.moe.num_experts
        if fam.moe == "qwen3_moe":
            cfg["moe_intermediate_size"] = spec.moe.expert_ffn_size
            cfg["decoder_sparse_step"] = 1
            cfg["mlp_only_layers"] = []
        elif spec.moe.expert_ffn_size != spec.ffn_size:
            raise SpecError("moe.expert_ffn_size", f"must equal ffn_size={spec.ffn_size} for mixtral")
        if spec.moe.shared_experts:
            raise SpecError("moe.shared_experts", f"model_type {model_type!r} has no shared experts; must be 0")
    cfg.update(spec.extra)
    return cfg


def _gpt2_to_hf(spec: ArchitectureSpec, dtype: str) -> dict[str, Any]:
    checks = [
        ("norm", spec.norm == "layernorm", "layernorm"),
        ("position", spec.position == "learned", "learned"),
        ("ffn_kind", spec.ffn_kind == "gelu", "gelu"),
        ("num_kv_heads", spec.num_kv_heads == spec.num_heads, "num_kv_heads == num_heads (no GQA)"),
        ("head_dim", spec.head_dim * spec.num_heads == spec.hidden_size, "head_dim == hidden_size / num_heads"),
        ("qkv_bias", spec.qkv_bias and spec.o_bias and spec.mlp_bias, "biases everywhere"),
        ("tie_embeddings", spec.tie_embeddings, "tied embeddings"),
        ("moe", spec.moe is None, "a dense MLP"),
        ("qk_norm", spec.qk_norm == "none", "no QK-norm"),
        ("norm_placement", spec.norm_placement == "pre", "pre"),
        ("sliding_window", spec.sliding_window is None, "no sliding window"),
    ]
    for field, ok, allowed in checks:
        if not ok:
            raise _mismatch(spec, field, "gpt2", allowed)
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": spec.vocab_size,
        "n_embd": spec.hidden_size,
        "n_layer": spec.num_layers,
        "n_head": spec.num_heads,
        "n_inner": spec.ffn_size,
        "n_positions": spec.context_length,
        "activation_function": spec.activation,
        "layer_norm_epsilon": spec.norm_eps,
        "initializer_range": spec.initializer_range,
        "tie_word_embeddings": True,
        "bos_token_id": spec.bos_token_id,
        "eos_token_id": spec.eos_token_id,
        "pad_token_id": spec.pad_token_id,
        "use_cache": True,
        "dtype": dtype,
    }


# ---- files ----------------------------------------------------------------------------

def read_config(path: str | Path, field: str = "config") -> dict[str, Any]:
    """Parse a config.json file, or the config.json inside a model directory (read through the workspace boundary)."""
    from archsmith.files import kind, read_text

    path = Path(path)
    if kind(path, field) == "dir":
        path = path / "config.json"
    if kind(path, field) != "file":
        raise ConfigError(field, f"no such file: {path}")
    try:
        data = json.loads(read_text(path, field))
    except json.JSONDecodeError as exc:
        raise ConfigError(field, f"{path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise ConfigError(field, f"{path} nests too deeply to be a config.json") from None
    if not isinstance(data, dict):
        raise ConfigError(field, f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def load_spec(path: str | Path) -> ArchitectureSpec:
    """ArchitectureSpec from a config.json path or a model directory."""
    return spec_from_hf(read_config(path))
