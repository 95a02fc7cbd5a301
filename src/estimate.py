"""Closed-form parameters, FLOPs and memory of an `ArchitectureSpec`. Never instantiates weights.

Tests hold every number here against reality: parameter counts against `transformers`
models built on the meta device, matmul FLOPs against `torch.utils.flop_counter`, weights +
gradients + AdamW state against a real optimizer step, activations against the tensors
autograd saves for backward.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

from archsmith.errors import ArchsmithError
from archsmith import families
from archsmith.spec import NORMS_BY_PLACEMENT, ArchitectureSpec

# Bytes per element of each storage precision.
DTYPE_BYTES: dict[str, float] = {
    "fp32": 4,
    "bf16": 2,
    "fp16": 2,
    "fp8": 1,
    "int8": 1,
    "int4": 0.5,  # two 4-bit values per byte; quantisation scales are reported separately
}
DTYPE_ALIASES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float": "fp32"}
TRAIN_DTYPES = ("fp32", "bf16", "fp16")
OPTIMIZERS = ("adamw", "adamw8bit", "sgd", "adafactor")
STRATEGIES = ("ddp", "zero1", "zero2", "zero3", "fsdp")
ATTENTION_IMPLS = ("sdpa", "eager")
DEVICES = ("cuda", "cpu")  # whose kernels the activation figures describe

FP32 = 4  # bytes of an fp32 value: master weights, optimizer moments, norm statistics
INT64 = 8  # bytes of a token id (torch.long), saved by the embedding and the loss
MASK = 1  # bytes per element of a dropout mask (torch.bool)
DELTA_CHUNK = 64  # chunk length of transformers' torch gated delta rule
# Tensors of the MLP's width an activation saves: its input (or output), or for gelu_new, transformers' Python
# tanh formula, the input, tanh(...), 0.5 * input and 1 + tanh(...).
ACTIVATION_SAVED = {"silu": 1, "swish": 1, "gelu": 1, "gelu_pytorch_tanh": 1, "relu": 1, "gelu_new": 4}
STEP_TENSOR = 4  # torch AdamW/Adafactor keep `step` as a 0-d float32 tensor per parameter tensor
ADAM8BIT_BLOCK = 256  # bitsandbytes 8-bit optimizers quantise moments in blocks of 256 values
ADAM8BIT_MIN_SIZE = 4096  # bitsandbytes keeps fp32 moments for tensors smaller than this
INT4_GROUP = 128  # typical GPTQ/AWQ/bnb-nf4 group size: one fp16 scale (+ zero) per 128 weights
INT4_GROUP_OVERHEAD = 4  # bytes per group: fp16 scale + fp16 zero point
INT8_ROW_OVERHEAD = 4  # LLM.int8(): one fp32 scale per output row


def norm_dtype(dtype: str, allowed: tuple[str, ...] | dict[str, float] = DTYPE_BYTES) -> str:
    """The canonical name of `dtype` ('bfloat16' -> 'bf16'); an error listing `allowed` when it is not one of them."""
    key = DTYPE_ALIASES.get(str(dtype).lower(), str(dtype).lower())
    if key not in allowed:
        raise ArchsmithError("dtype", f"must be one of {', '.join(allowed)}; got {dtype!r}")
    return key


# ---- parameters ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Tensor:
    """One parameter tensor, named as in the HF state dict of the Llama-style layout (layer tensors without prefix)."""

    name: str
    shape: tuple[int, ...]
    group: str  # breakdown bucket: q_proj, mlp, norms, ...
    macs: float = 0.0  # multiply-adds per token per element (1: a linear layer every token uses, top_k / E: a routed expert)
    routed: bool = False  # a routed-expert tensor: counts toward active parameters in proportion top_k / num_experts

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def _norm_tensors(spec: ArchitectureSpec, name: str, width: int | tuple[int, ...], group: str) -> list[Tensor]:
    shape = width if isinstance(width, tuple) else (width,)
    if spec.norm == "layernorm_nonparametric":
        return []
    tensors = [Tensor(f"{name}.weight", shape, group)]
    if spec.norm == "layernorm":
        tensors.append(Tensor(f"{name}.bias", shape, group))
    return tensors


def _linear(name: str, out: int, inp: int, group: str, bias: bool, bias_group: str | None = None) -> list[Tensor]:
    tensors = [Tensor(f"{name}.weight", (out, inp), group, macs=1.0)]
    if bias:
        tensors.append(Tensor(f"{name}.bias", (out,), bias_group or group))
    return tensors


def _attention_tensors(spec: ArchitectureSpec) -> list[Tensor]:
    """Softmax attention (GQA, MLA, sinks, output gate, QK-norm)."""
    h, q, kv, d = spec.hidden_size, spec.q_dim, spec.kv_dim, spec.head_dim
    t: list[Tensor] = []
    if spec.mla is not None:
        mla = spec.mla
        if mla.q_lora_rank:
            t += _linear("self_attn.q_a_proj", mla.q_lora_rank, h, "attention_q", spec.qkv_bias, "attention_bias")
            t += _norm_tensors(spec, "self_attn.q_a_layernorm", mla.q_lora_rank, "qk_norm")
            t += _linear("self_attn.q_b_proj", q, mla.q_lora_rank, "attention_q", False)
        else:
            t += _linear("self_attn.q_proj", q, h, "attention_q", False)
        t += _linear("self_attn.kv_a_proj_with_mqa", mla.kv_lora_rank + mla.qk_rope_head_dim, h, "attention_kv", spec.qkv_bias, "attention_bias")
        t += _norm_tensors(spec, "self_attn.kv_a_layernorm", mla.kv_lora_rank, "qk_norm")
        t += _linear("self_attn.kv_b_proj", spec.num_heads * (mla.qk_nope_head_dim + mla.v_head_dim), mla.kv_lora_rank, "attention_kv", False)
        return t + _linear("self_attn.o_proj", h, spec.num_heads * mla.v_head_dim, "attention_o", spec.o_bias, "attention_bias")
    if spec.attention_sinks:
        t.append(Tensor("self_attn.sinks", (spec.num_heads,), "attention_sinks"))
    if spec.fused_qkv:
        t += _linear("self_attn.qkv_proj", q + 2 * kv, h, "attention_qkv", spec.qkv_bias, "attention_bias")
    else:
        q_out = 2 * q if spec.attn_output_gate else q  # the gate rides along with the queries
        for proj, width in (("q_proj", q_out), ("k_proj", kv), ("v_proj", kv)):
            t += _linear(f"self_attn.{proj}", width, h, f"attention_{proj[0]}", spec.qkv_bias, "attention_bias")
    t += _linear("self_attn.o_proj", h, q, "attention_o", spec.o_bias, "attention_bias")
    widths = {"head": ((d,), (d,)), "full": ((q,), (kv,)), "per_head": ((spec.num_heads, d), (spec.num_kv_heads, d))}
    if spec.qk_norm in widths:
        q_width, k_width = widths[spec.qk_norm]
        t += _norm_tensors(spec, "self_attn.q_norm", q_width, "qk_norm")
        t += _norm_tensors(spec, "self_attn.k_norm", k_width, "qk_norm")
    return t


def _linear_attention_tensors(spec: ArchitectureSpec) -> list[Tensor]:
    """Gated delta-net: q/k/v/z and beta/a projections, depthwise conv, decay parameters, gated norm, output."""
    lin, h = spec.linear_attention, spec.hidden_size
    key_dim, value_dim = lin.num_key_heads * lin.key_head_dim, lin.num_value_heads * lin.value_head_dim
    return [
        *_linear("linear_attn.in_proj_qkvz", 2 * key_dim + 2 * value_dim, h, "linear_attention", False),
        *_linear("linear_attn.in_proj_ba", 2 * lin.num_value_heads, h, "linear_attention", False),
        Tensor("linear_attn.conv1d.weight", (2 * key_dim + value_dim, 1, lin.conv_kernel), "linear_attention"),
        Tensor("linear_attn.dt_bias", (lin.num_value_heads,), "linear_attention"),
        Tensor("linear_attn.A_log", (lin.num_value_heads,), "linear_attention"),
        Tensor("linear_attn.norm.weight", (lin.value_head_dim,), "linear_attention"),
        *_linear("linear_attn.out_proj", h, value_dim, "linear_attention", False),
    ]


def layer_tensors(spec: ArchitectureSpec, layer: int = 0) -> list[Tensor]:
    """The parameter tensors of decoder layer `layer` (token mixer, feed-forward, norms)."""
    kind = spec.resolved_layer_types[layer]
    t = _linear_attention_tensors(spec) if kind == "linear_attention" else _attention_tensors(spec)
    t += _moe_tensors(spec) if spec.is_moe_layer(layer) else _mlp_tensors(spec, "mlp", spec.ffn_size, spec.mlp_bias, spec.fused_gate_up)
    for name in NORMS_BY_PLACEMENT[spec.norm_placement]:
        t += _norm_tensors(spec, name, spec.hidden_size, "norms")
    return t


def _mlp_tensors(spec: ArchitectureSpec, name: str, f: int, bias: bool, fused: bool, group: str = "mlp") -> list[Tensor]:
    h = spec.hidden_size
    if spec.gated and fused:
        t = _linear(f"{name}.gate_up_proj", 2 * f, h, group, bias, f"{group}_bias")
    else:
        t = [x for proj in (("gate_proj", "up_proj") if spec.gated else ("up_proj",))
             for x in _linear(f"{name}.{proj}", f, h, group, bias, f"{group}_bias")]
    return t + _linear(f"{name}.down_proj", h, f, group, bias, f"{group}_bias")


def _moe_tensors(spec: ArchitectureSpec) -> list[Tensor]:
    """Router, experts stored as 3-D tensors (transformers 5 layout), one shared MLP of all shared experts."""
    moe, h = spec.moe, spec.hidden_size
    e, f = moe.num_experts, moe.expert_ffn_size
    fam = families.get(spec.model_type)
    share = 1.0 if fam.experts_run == "all" else moe.top_k / e  # of the expert weights each token multiplies through
    t = _linear("mlp.gate", e, h, "router", moe.router_bias)
    up_rows = 2 * f if spec.gated else f
    gate_up, down = ((e, h, up_rows), (e, f, h)) if fam.experts_transposed else ((e, up_rows, h), (e, h, f))
    t += [Tensor("mlp.experts.gate_up_proj", gate_up, "experts", share, routed=True)]
    if moe.expert_bias:
        t.append(Tensor("mlp.experts.gate_up_proj_bias", (e, up_rows), "experts", routed=True))
    t.append(Tensor("mlp.experts.down_proj", down, "experts", share, routed=True))
    if moe.expert_bias:
        t.append(Tensor("mlp.experts.down_proj_bias", (e, h), "experts", routed=True))
    if moe.shared_experts:
        t += _mlp_tensors(spec, "mlp.shared_experts", moe.shared_experts * moe.shared_ffn_size, False, False, "shared_experts")
    if moe.shared_expert_gate:
        t += _linear("mlp.shared_expert_gate", 1, h, "shared_experts", False)
    return t


def _outer_tensors(spec: ArchitectureSpec) -> tuple[list[Tensor], list[Tensor]]:
    """(embedding tensors, final norm + lm_head tensors); a tied lm_head shares the embedding and is not listed."""
    h = spec.hidden_size
    head = [Tensor("model.embed_tokens.weight", (spec.vocab_size, h), "embedding")]
    if spec.position == "learned":
        head.append(Tensor("model.embed_positions.weight", (spec.context_length, h), "embedding"))
    tail = _norm_tensors(spec, "model.norm", h, "final_norm")
    if not spec.tie_embeddings:
        tail.append(Tensor("lm_head.weight", (spec.vocab_size, h), "lm_head"))
    if spec.lm_head_bias:
        tail.append(Tensor("lm_head.bias", (spec.vocab_size,), "lm_head"))
    return head, tail


def model_tensors(spec: ArchitectureSpec) -> list[Tensor]:
    """All parameter tensors with their names, in state-dict order."""
    head, tail = _outer_tensors(spec)
    flip = families.get(spec.model_type).linear_transposed  # Conv1D layout: (in, out)
    layers = [Tensor(f"model.layers.{i}.{x.name}", x.shape[::-1] if flip and x.macs else x.shape, x.group, x.macs, x.routed)
              for i in range(spec.num_layers) for x in layer_tensors(spec, i)]
    return head + layers + tail


def layer_kinds(spec: ArchitectureSpec) -> dict[tuple[str, bool], list[int]]:
    """Layers grouped by (token mixer, MoE or dense): layers of one group have the same tensors."""
    if spec.linear_attention is None and (spec.moe is None or spec.moe.layers is None):  # one kind of layer
        return {("attention", spec.moe is not None): list(range(spec.num_layers))}
    kinds: dict[tuple[str, bool], list[int]] = {}
    for i, kind in enumerate(spec.resolved_layer_types):
        mixer = "linear_attention" if kind == "linear_attention" else "attention"
        kinds.setdefault((mixer, spec.is_moe_layer(i)), []).append(i)
    return kinds


def _counted_tensors(spec: ArchitectureSpec) -> list[tuple[Tensor, int]]:
    """Every parameter tensor once per layer kind, with how many copies the model has (fast for deep models)."""
    head, tail = _outer_tensors(spec)
    layers = [(t, len(group)) for group in layer_kinds(spec).values() for t in layer_tensors(spec, group[0])]
    return [(t, 1) for t in head] + layers + [(t, 1) for t in tail]


def count_params(spec: ArchitectureSpec) -> dict[str, Any]:
    """Parameter counts: total, embedding, lm_head, per layer (the largest layer), per component, non-embedding, active."""
    groups = []
    for (mixer, moe), layers in layer_kinds(spec).items():
        tensors = layer_tensors(spec, layers[0])
        params = sum(t.numel for t in tensors)
        routed = sum(t.numel for t in tensors if t.routed)
        groups.append({"mixer": mixer, "moe": moe, "layers": len(layers), "params": params, "tensors": len(tensors),
                       "active": params - routed + routed * spec.moe.top_k // spec.moe.num_experts if moe else params,
                       "by_group": _by_group(tensors)})
    largest = max(groups, key=lambda g: g["params"])
    h, V = spec.hidden_size, spec.vocab_size
    embedding = V * h + (spec.context_length * h if spec.position == "learned" else 0)
    lm_head = (0 if spec.tie_embeddings else V * h) + (V if spec.lm_head_bias else 0)
    final_norm = sum(t.numel for t in _norm_tensors(spec, "model.norm", h, "final_norm"))
    layers = sum(g["layers"] * g["params"] for g in groups)
    total = embedding + layers + final_norm + lm_head
    return {
        "total": total,
        "embedding": embedding,
        "lm_head": lm_head,
        "tied_embeddings": spec.tie_embeddings,
        "per_layer": largest["params"],
        "layers": layers,
        "final_norm": final_norm,
        "non_embedding": total - embedding - lm_head,
        "active": total - layers + sum(g["layers"] * g["active"] for g in groups),
        "tensors": sum(count for _, count in _counted_tensors(spec)),
        "layer_kinds": [{k: g[k] for k in ("mixer", "moe", "layers", "params", "active")} for g in groups],
        "breakdown": {
            "embedding": embedding,
            **{f"per_layer.{k}": v for k, v in largest["by_group"].items()},
            "final_norm": final_norm,
            "lm_head": lm_head,
        },
    }


def _by_group(tensors: list[Tensor]) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in tensors:
        out[t.group] = out.get(t.group, 0) + t.numel
    return out


# ---- FLOPs --------------------------------------------------------------------------------

DELTA_RULE_CHUNK = 64  # transformers' and fla's chunk length for the gated delta rule


def attention_pairs(seq: int, causal: bool, window: int | None, chunk: int | None = None) -> int:
    """(query, key) pairs one head scores over a sequence of `seq` tokens.

    Dense (causal=False): seq**2, what an eager/masked kernel multiplies.
    Causal: each query i sees min(i + 1, window) keys (or the keys of its own chunk), what flash kernels compute.
    """
    if not causal:
        return seq * seq
    if chunk is not None:
        full, rest = divmod(seq, chunk)
        return full * chunk * (chunk + 1) // 2 + rest * (rest + 1) // 2
    if window is None or window >= seq:
        return seq * (seq + 1) // 2
    return window * (window + 1) // 2 + (seq - window) * window


def _mixing_flops(spec: ArchitectureSpec, kind: str, batch: int, seq: int, causal: bool) -> int:
    """Matmul FLOPs of one layer's token mixing beyond its projections (scores, values, recurrences)."""
    if kind == "linear_attention":
        lin = spec.linear_attention
        c, dk, dv = DELTA_RULE_CHUNK, lin.key_head_dim, lin.value_head_dim
        padded = -(-seq // c) * c  # the sequence is padded to whole chunks
        conv_dim, k = 2 * lin.num_key_heads * dk + lin.num_value_heads * dv, lin.conv_kernel
        conv = 2 * batch * conv_dim * k * (seq + k - 1)  # depthwise causal conv, padded by k - 1 on both sides
        # per chunk and head: two (C x dk)(dk x C) products, then per chunk of the scan
        # state reads q S, (k decay) S and the updates A v, k^T v
        recurrence = batch * lin.num_value_heads * padded * (4 * c * dk + 2 * c * dv + 6 * dk * dv)
        return conv + recurrence
    window = spec.sliding_window if kind == "sliding_attention" else None
    chunk = spec.attention_chunk_size if kind == "chunked_attention" else None
    # QK^T and attention x V: 2 FLOPs per multiply-add, (qk head dim + v head dim) per (query, key) pair per head
    return 2 * spec.num_heads * (spec.head_dim + spec.v_head_dim) * batch * attention_pairs(seq, causal, window, chunk)


def forward_flops(spec: ArchitectureSpec, batch: int, seq: int, causal: bool = True) -> dict[str, int]:
    """Matmul FLOPs (2 per multiply-add) of one forward pass over batch x seq tokens, logits for all positions.

    MoE layers count the experts transformers runs for the family: top_k per token, or all of them
    where its implementation multiplies every expert (see `families.Family.experts_run`).
    """
    tokens = batch * seq
    linear = 2 * tokens * round(sum(t.numel * t.macs * count for t, count in _counted_tensors(spec)))
    attention = sum(_mixing_flops(spec, kind, batch, seq, causal) for kind in spec.resolved_layer_types)
    lm_head = 2 * tokens * spec.hidden_size * spec.vocab_size
    return {"linear": linear, "attention": attention, "lm_head": lm_head, "total": linear + attention + lm_head}


def flops(spec: ArchitectureSpec, seq: int | None = None, checkpointing: bool = False) -> dict[str, Any]:
    """Per-token FLOPs at sequence length `seq` (default: the context length)."""
    seq = seq or spec.context_length
    causal = forward_flops(spec, 1, seq, causal=True)
    dense = forward_flops(spec, 1, seq, causal=False)
    # Backward costs two matmuls per forward matmul (input and weight gradients).
    # Checkpointing re-runs each layer's forward once more (the lm_head is not recomputed).
    recompute = causal["linear"] + causal["attention"] if checkpointing else 0
    training = 3 * causal["total"] + recompute
    params = count_params(spec)
    return {
        "seq": seq,
        "attention_causal_halving": True,
        "forward_per_token": round(causal["total"] / seq),
        "training_per_token": round(training / seq),
        "forward_per_token_no_causal_halving": round(dense["total"] / seq),
        "training_per_token_no_causal_halving": round((3 * dense["total"] + (dense["linear"] + dense["attention"] if checkpointing else 0)) / seq),
        "attention_per_token": round(causal["attention"] / seq),
        # Kaplan et al. 2020 rule of thumb, for comparison: N is the non-embedding parameters a token runs through
        # (an MoE's active ones: top_k of its routed experts, not all of them)
        "six_n_per_token": 6 * (params["active"] - params["embedding"] - params["lm_head"]),
        "checkpointing_recompute": checkpointing,
        "experts_run": families.get(spec.model_type).experts_run if spec.moe else None,
    }


def training_time(training_flops: float, gpu: dict[str, Any], num_gpus: int, mfu: float, dtype: str = "bf16") -> dict[str, Any]:
    """Wall-clock time for `training_flops` on `num_gpus` GPUs at model-FLOPs utilisation `mfu`."""
    if not 0 < mfu <= 1:
        raise ArchsmithError("mfu", f"must be in (0, 1], got {mfu}")
    if num_gpus < 1:
        raise ArchsmithError("gpus", f"must be >= 1, got {num_gpus}")
    key = {"fp32": "bf16", "fp16": "fp16", "bf16": "bf16", "fp8": "fp8"}.get(dtype, "bf16")
    peak = gpu.get(f"{key}_tflops") or gpu.get("fp16_tflops")
    if not peak:
        raise ArchsmithError("gpu", f"{gpu['name']} has no {key} tensor throughput in the GPU table")
    seconds = training_flops / (num_gpus * peak * 1e12 * mfu)
    return {"seconds": seconds, "gpu_hours": seconds * num_gpus / 3600, "peak_tflops_per_gpu": peak, "mfu": mfu, "gpus": num_gpus}


# ---- memory -------------------------------------------------------------------------------

def weights_bytes(spec: ArchitectureSpec, dtype: str) -> dict[str, Any]:
    """Weight storage at one precision, with quantisation metadata for int8 / int4."""
    dtype = norm_dtype(dtype)
    n = count_params(spec)["total"]
    raw = int(n * DTYPE_BYTES[dtype])
    overhead = 0
    if dtype == "int4":
        overhead = math.ceil(n / INT4_GROUP) * INT4_GROUP_OVERHEAD
    elif dtype == "int8":
        rows = sum(math.prod(t.shape[:-1]) * count for t, count in _counted_tensors(spec) if t.macs)
        overhead = rows * INT8_ROW_OVERHEAD
    return {"dtype": dtype, "bytes": raw + overhead, "raw_bytes": raw, "quantization_overhead_bytes": overhead}


def optimizer_bytes(spec: ArchitectureSpec, optimizer: str, state_bytes: int) -> int:
    """Optimizer state for every parameter tensor, moments stored at `state_bytes` per value."""
    if optimizer not in OPTIMIZERS:
        raise ArchsmithError("optimizer", f"must be one of {', '.join(OPTIMIZERS)}; got {optimizer!r}")
    return sum(_tensor_state(t, optimizer, state_bytes) * count for t, count in _counted_tensors(spec))


def _tensor_state(t: Tensor, optimizer: str, state_bytes: int) -> int:
    """Bytes of optimizer state torch (or bitsandbytes) keeps for one parameter tensor."""
    if optimizer == "adamw":  # exp_avg and exp_avg_sq, plus a step tensor
        return 2 * t.numel * state_bytes + STEP_TENSOR
    if optimizer == "sgd":  # momentum_buffer (torch SGD keeps no step)
        return t.numel * state_bytes
    if optimizer == "adamw8bit":
        if t.numel < ADAM8BIT_MIN_SIZE:
            return 2 * t.numel * FP32
        return 2 * t.numel + 2 * math.ceil(t.numel / ADAM8BIT_BLOCK) * FP32  # two uint8 moments + fp32 absmax per block
    # adafactor: factored second moment (row and column statistics over the last two dims), no first moment
    if len(t.shape) >= 2:
        return math.prod(t.shape[:-2]) * (t.shape[-2] + t.shape[-1]) * state_bytes + STEP_TENSOR
    return t.numel * state_bytes + STEP_TENSOR


def _norm_saved(spec: ArchitectureSpec, width: int, b: int, groups: int = 1) -> int:
    """Bytes one norm saves per token for `width` features normalised in `groups` groups."""
    fam = families.get(spec.model_type)
    if spec.norm == "rmsnorm":
        # fp32 upcast of the input (for pow/mul), fp32 rsqrt(variance) per group, normalised input in dtype (weight grad)
        normalised = FP32 if fam.norm_weight_in_fp32 else b
        return FP32 * width + FP32 * groups + normalised * width
    if fam.norm_upcast == "manual":  # x - mean (twice: for the variance and for the scaling), the fp32 normalised x, rsqrt
        return 3 * FP32 * width + FP32 * groups
    # native_layer_norm saves its input (an fp32 copy when the family upcasts) plus fp32 mean and rstd per group
    return (FP32 if fam.norm_upcast else b) * width + 2 * FP32 * groups


def activations_calibration(spec: ArchitectureSpec, attention: str, dtype: str = "bf16", device: str = "cuda") -> list[str]:
    """Why `activation_bytes` is not held to 5% of measurement for this spec (empty: it is).

    Measured (tests/test_memory.py at tiny widths, docs/benchmarks.md at real widths): every family's default
    layout and the layouts its config flags switch on, under the attention kernels transformers accepts for it,
    with transformers' default (grouped_mm) experts. Not yet: activations without a saving rule
    (`ACTIVATION_SAVED`), the gated delta-net recurrence in fp32.
    """
    reasons = []
    fam = families.get(spec.model_type)
    if spec.activation not in ACTIVATION_SAVED:
        reasons.append(f"the tensors activation {spec.activation!r} saves are not yet modelled (counted as one)")
    if spec.linear_attention is not None and norm_dtype(dtype) == "fp32":
        reasons.append("the gated delta-net recurrence in fp32 saves copies that depend on tensor strides, measured up to 11% off")
    if attention not in fam.attention_kernels:
        reasons.append(f"transformers does not run {spec.model_type} with {attention} attention")
    if device == "cpu" and any(_dropout(spec, site) for site in ("embedding", "residual", "attention")):
        reasons.append("on CPU, dropout keeps masks in the activations' dtype and attention dropout runs SDPA's math kernel "
                       "(every head's weights): the figures are CUDA's")
    return reasons


def _attention_saved(spec: ArchitectureSpec, b: int, batch: int, seq: int, attention: str, kind: str = "full_attention",
                     nope: bool = False) -> tuple[int, int]:
    """(bytes per token, bytes per token per key) one softmax-attention mixer of layer type `kind` saves (norm and
    projection input excluded); `nope`: the layer has no positional encoding."""
    fam = families.get(spec.model_type)
    q, kv = spec.q_dim, spec.kv_dim
    v = out = spec.num_heads * spec.v_head_dim  # the values after repeat_kv, and the attention output
    per_token = 0
    if spec.qk_norm in ("head", "per_head"):  # one norm group per head
        per_token += _norm_saved(spec, q + kv, b, spec.num_heads + spec.num_kv_heads)
    elif spec.qk_norm == "full":  # one group for all of q, one for all of k
        per_token += _norm_saved(spec, q + kv, b, 2)
    elif spec.qk_norm == "l2" and not nope:  # weightless, on RoPE layers: fp32 q and k, an fp32 rsqrt per head
        per_token += FP32 * (q + kv + spec.num_heads + spec.num_kv_heads)
    if nope and families.setting(spec, "attn_temperature_tuning", False):  # an fp32 query scale per token
        per_token += FP32
    if spec.fused_qkv and spec.position != "rope" and (attention == "sdpa" or batch == 1):
        # no RoPE copies q: it stays a view of the whole fused q|k|v output (eager's batched matmul copies it when batch > 1)
        per_token += b * 2 * kv
    # one KV head: repeating it (repeat_kv, or matmul's broadcast) is a stride-0 view, which eager's batched matmul
    # copies to every head unless batch is 1; several KV heads are repeated to every head (a copy)
    single = spec.num_kv_heads == 1 < spec.num_heads
    repeated = kv if single and batch == 1 else q  # k and v as eager's matmuls read them
    if fam.unrepeated_kv and spec.num_kv_heads < spec.num_heads:
        if single and attention == "sdpa":  # unrepeated, SDPA falls back to its math kernel
            # the math kernel: fp32 scaled q, k and v, fp32 probabilities; o_proj's input
            return per_token + FP32 * (q + 2 * repeated) + b * q, FP32 * spec.num_heads
        kv = q
    # SDPA saves the mask it gets: a (batch, 1, seq, seq) bool mask becomes a new float mask in every layer (an ALiBi
    # bias mask is one tensor for all layers: `activation_bytes` counts it once); with a mask, KV heads are repeated
    span = {"sliding_attention": spec.sliding_window, "chunked_attention": spec.attention_chunk_size}.get(kind)
    masked = attention == "sdpa" and (fam.sdpa_mask or span is not None and seq > span)
    if masked and not single:
        kv = q
    values = kv if single else v if masked else kv
    if spec.mla is not None:  # the latent projections save their inputs; keys and values are per head after kv_b_proj
        mla = spec.mla
        per_token += b * ((mla.q_lora_rank or 0) + mla.kv_lora_rank) + _norm_saved(spec, (mla.q_lora_rank or 0) + mla.kv_lora_rank, b, 2)
        values = v
    # o_proj reads a contiguous copy of the output when it comes back in (batch, heads, seq, head_dim) order: always
    # from eager's matmul, from SDPA when RoPE concatenated the query (or MLA concatenated its nope and rope parts)
    copy = out if attention == "eager" or spec.mla is not None or fam.rope_concat else 0
    if spec.attn_output_gate:  # sigmoid(gate) and the gated output (o_proj's input), next to the output copy
        per_token += 2 * b * out
        copy = out
    if attention == "sdpa":
        # q, k, v (GQA: k and v at kv width), output, fp32 logsumexp per head
        mask = b if masked and spec.position != "alibi" else 0
        return per_token + b * (q + kv + values + out + copy) + FP32 * spec.num_heads, mask
    # q, repeated k and v, fp32 softmax probabilities (and their cast when b != 4); with dropout, its mask and the
    # dropped probabilities instead of the cast
    if fam.eager_softmax_fp32:
        probs = FP32 + (MASK + b if _dropout(spec, "attention") else b if b != FP32 else 0)
    else:  # the softmax output in dtype, and the dropped probabilities with dropout's mask
        probs = b + (MASK + b if _dropout(spec, "attention") else 0)
    if spec.attention_sinks:  # softmax over the keys and the sink in dtype, after an int64 max index per head
        probs = b
        per_token += spec.num_heads * (INT64 + b)
    if families.setting(spec, "attn_logit_softcapping", None):  # tanh saves its output, in dtype
        probs += b
    return per_token + b * (q + repeated + (v if spec.mla is not None else repeated) + copy), spec.num_heads * probs


def _linear_attention_saved(spec: ArchitectureSpec, b: int, batch: int, seq: int) -> int:
    """Bytes one gated delta-net mixer saves for batch x seq tokens, in transformers' torch implementation.

    Outside the recurrence: the convolution's input and its output (padded by kernel - 1 per sequence), the beta
    sigmoid, the fp32 decay (softplus input and output), the fp32 L2-normalised q and k with their rsqrt, the gated
    RMSNorm (fp32 input, rsqrt, gate and SiLU output; normalised and weighted output in dtype) and out_proj's input.
    The chunked recurrence runs in fp32 over the sequence padded to DELTA_CHUNK: per padded token and value head, five
    chunk x chunk matrices (decays, the two QK^T products, the triangular system, the intra-chunk attention), ten
    key-width (five for a single chunk; more in fp32) and three value-width copies, four scalars; per chunk the
    recurrent state; a chunk x chunk mask. Measured exact in bf16; fp32 varies with strides (flagged).
    """
    lin = spec.linear_attention
    hv, dk, dv = lin.num_value_heads, lin.key_head_dim, lin.value_head_dim
    conv_dim = 2 * lin.num_key_heads * dk + hv * dv
    tokens = batch * seq
    padded = batch * -(-seq // DELTA_CHUNK) * DELTA_CHUNK
    per_token = (2 * b * conv_dim + b * hv + 2 * FP32 * hv + 2 * FP32 * hv * (dk + 1)
                 + hv * dv * (3 * FP32 + 2 * b) + FP32 * hv + b * hv * dv)
    # a single chunk never reads a recurrent state that needs gradients: one key-width copy fewer; in fp32 the
    # conversions to fp32 are no-ops and an unpadded sequence keeps strided views that matmul copies four more times
    copies = 6 if seq > DELTA_CHUNK else 5
    if b == FP32 and seq % DELTA_CHUNK == 0:
        copies += 4
    per_padded = FP32 * hv * (5 * DELTA_CHUNK + copies * dk + 3 * dv + 4)
    per_chunk = FP32 * hv * (dk * dv + 1)
    return (tokens * per_token + padded * per_padded + padded // DELTA_CHUNK * per_chunk
            + batch * b * conv_dim * (lin.conv_kernel - 1) + DELTA_CHUNK * DELTA_CHUNK)


def _ffn_saved(spec: ArchitectureSpec, b: int, moe: bool) -> int:
    """Bytes per token an MLP or an MoE layer saves.

    A gated MLP saves its gate output (the activation's input), the activation's output, the up output and
    their product (the down projection's input); a plain one the activation's input and output. An MoE layer
    (transformers' default grouped_mm experts) saves the router's tensors and, for each of a token's top_k rows:
    the gathered input, the expert MLP's tensors, the expert output, its routing weight and the int64
    permutation indices (the gather, the weight gather, the inverse order, the expert-bias gather).
    """
    saved = ACTIVATION_SAVED.get(spec.activation, 1)
    act = saved + (3 if spec.gated else 1)
    if not moe:
        return b * act * spec.ffn_size
    m, fam = spec.moe, families.get(spec.model_type)
    shared = b * act * m.shared_experts * m.shared_ffn_size
    if m.shared_expert_gate:  # sigmoid(gate) and the shared expert's output it scales
        shared += b * (1 + spec.hidden_size)
    if fam.experts_run == "all":
        # every token runs through every expert, its input scaled by its (zero unless chosen) sigmoid score: fp32
        # scores, top-k indices, the scores in dtype; per expert the input copy, the scaled input, the expert MLP
        rows = m.num_experts * (b + 2 * b * spec.hidden_size + b * act * m.expert_ffn_size)
        return FP32 * m.num_experts + INT64 * m.top_k + rows + shared
    if fam.router_topk_softmax:  # top-k indices, softmax over the k logits in dtype; routing weights in dtype
        router, weight = (INT64 + b) * m.top_k, b
    elif fam.router_scaled_topk:  # fp32 probabilities and top-k indices; group-limited: group maxima, kept groups, mask
        router, weight = FP32 * m.num_experts + INT64 * m.top_k, FP32
        if families.setting(spec, "topk_method", "greedy") == "group_limited_greedy":
            router += INT64 * (int(families.setting(spec, "n_group", 1)) + int(families.setting(spec, "topk_group", 1))) + MASK * m.num_experts
    else:  # fp32 probabilities, top-k indices, normalised top-k weights and their sum
        router, weight = FP32 * m.num_experts + (INT64 + FP32) * m.top_k + FP32, FP32
    if fam.router_fp32 and b != FP32:
        router += FP32 * spec.hidden_size
    expert = saved - 1 + fam.expert_glu_saved if spec.gated else act
    indices = 3 + m.expert_bias
    rows = m.top_k * (2 * b * spec.hidden_size + b * expert * m.expert_ffn_size + weight + indices * INT64)
    return router + rows + shared


def _dropout(spec: ArchitectureSpec, site: str) -> bool:
    """Whether the family's config applies dropout at `site` (embedding, residual, attention) in training."""
    rules = families.get(spec.model_type).extra
    return any(families.setting(spec, key, 0.0) > 0 for key, rule in rules.items() if rule.dropout == site)


def activation_bytes(spec: ArchitectureSpec, batch: int, seq: int, dtype: str = "bf16", attention: str | None = None,
                     checkpointing: bool = False, device: str = "cuda") -> dict[str, Any]:
    """Bytes of tensors autograd saves for backward in one forward of batch x seq tokens.

    Modelled tensor by tensor on transformers' code for each family, as CUDA runs it (SDPA's fused kernels,
    fused dropout with bool masks, grouped_mm experts, the torch gated delta rule): the tests measure every
    family with `torch.autograd.graph.saved_tensors_hooks` at tiny widths, docs/benchmarks.md at real widths.
    Where a layout is not yet modelled within 5%, `exact` is False and `not_calibrated` says why (see
    `activations_calibration`). Checkpointing means one checkpoint per decoder layer: a layer keeps only its input.
    """
    attention = attention or default_attention(spec)
    if attention not in ATTENTION_IMPLS:
        raise ArchsmithError("attention", f"must be one of {', '.join(ATTENTION_IMPLS)}; got {attention!r}")
    if device not in DEVICES:
        raise ArchsmithError("device", f"must be one of {', '.join(DEVICES)}; got {device!r}")
    b = int(DTYPE_BYTES[norm_dtype(dtype)])
    h = spec.hidden_size
    T = batch * seq
    layers_total = largest = 0
    block_norms = len(NORMS_BY_PLACEMENT[spec.norm_placement])
    kinds = Counter((kind, spec.is_moe_layer(i), i in spec.nope_layers) for i, kind in enumerate(spec.resolved_layer_types))
    for (kind, moe, nope), count in kinds.items():
        # every norm saves its statistics; each sub-block's first projection saves its input (one input when
        # attention and MLP read the same norm)
        per_token = block_norms * _norm_saved(spec, h, b) + (1 if spec.norm_placement == "parallel_shared" else 2) * b * h
        if spec.norm_placement == "parallel":  # both norms read the block's input: it is saved once
            per_token -= _norm_saved(spec, h, b) - _norm_saved(spec, 0, b)
        per_key = recurrence = 0
        if kind == "linear_attention":
            recurrence = _linear_attention_saved(spec, b, batch, seq)
        else:
            mixer, per_key = _attention_saved(spec, b, batch, seq, attention, kind, nope)
            per_token += mixer
        per_token += _ffn_saved(spec, b, moe)
        if _dropout(spec, "residual"):  # a mask on the attention output and one on the MLP output
            per_token += 2 * MASK * h
        layer = T * (per_token + per_key * seq) + recurrence
        layers_total += count * layer
        largest = max(largest, layer)
    rope = 0
    if spec.position == "rope":  # cos and sin, shared by all layers (position ids of batch 1)
        rope = 2 * seq * spec.rope_dim * (FP32 if families.get(spec.model_type).rope_in_fp32 else b)
    head = T * (_norm_saved(spec, h, b) + b * h)  # final norm + lm_head input
    loss = T * (FP32 * spec.vocab_size + INT64) + FP32  # fp32 log-softmax, labels, total weight
    if families.setting(spec, "final_logit_softcapping", None):  # tanh saves the capped logits, in dtype
        loss += T * b * spec.vocab_size
    embedding = T * (INT64 + (MASK * h if _dropout(spec, "embedding") else 0))  # input ids (and a dropout mask)
    if attention == "sdpa" and spec.position == "alibi":  # the (batch, heads, seq, seq) bias mask all layers share
        layers_total += T * spec.num_heads * seq * b
    if checkpointing:
        layers_total = spec.num_layers * T * b * h  # each layer keeps only its input
        rope = 0
    reasons = activations_calibration(spec, attention, dtype, device)
    return {
        "total": layers_total + rope + head + loss + embedding,
        "layers": layers_total,
        "per_layer": largest,
        "rope": rope,
        "head": head,
        "loss": loss,
        "embedding": embedding,
        "recompute_peak": largest if checkpointing else 0,
        "attention": attention,
        "device": device,
        "exact": not reasons,
        "not_calibrated": reasons,
    }


def default_attention(spec: ArchitectureSpec) -> str:
    """The kernel transformers picks for this family that the estimator models: sdpa when accepted, else eager."""
    return "sdpa" if "sdpa" in families.get(spec.model_type).attention_kernels else "eager"


CACHE_MOMENTS = ("decode", "prefill")


def kv_cache_bytes(spec: ArchitectureSpec, batch: int, context: int, dtype: str = "bf16", after: str = "decode") -> int:
    """The memory transformers' cache holds: K and V per attention layer (MLA keeps the compressed latent and the
    shared rope key), fixed conv and fp32 recurrent states per linear-attention layer.

    after="decode": while decoding at `context` tokens; sliding and chunked layers hold the last `window` positions
    (the incoming token's concatenation, of which the cache shows window - 1). after="prefill": right after one
    prefill of `context` tokens, when sliding layers still hold views over the prefill's full-length K and V.
    """
    if after not in CACHE_MOMENTS:
        raise ArchsmithError("after", f"must be one of {', '.join(CACHE_MOMENTS)}; got {after!r}")
    b = DTYPE_BYTES[norm_dtype(dtype)]
    total = 0.0
    for kind in spec.resolved_layer_types:
        if kind == "linear_attention":
            lin = spec.linear_attention
            conv_dim = 2 * lin.num_key_heads * lin.key_head_dim + lin.num_value_heads * lin.value_head_dim
            total += conv_dim * lin.conv_kernel * b + lin.num_value_heads * lin.key_head_dim * lin.value_head_dim * FP32
            continue
        window = {"sliding_attention": spec.sliding_window, "chunked_attention": spec.attention_chunk_size}.get(kind)
        kept = min(context, window) if window and after == "decode" else context
        per_position = spec.mla.kv_lora_rank + spec.mla.qk_rope_head_dim if spec.mla else 2 * spec.kv_dim
        total += per_position * kept * b
    return int(total * batch)


def training_memory(spec: ArchitectureSpec, batch: int, seq: int, dtype: str = "bf16", optimizer: str = "adamw",
                    checkpointing: bool = False, attention: str | None = None, master_weights: bool | None = None,
                    device: str = "cuda") -> dict[str, Any]:
    """Memory of one training step on one device, unsharded.

    Mixed precision (dtype bf16/fp16, master_weights default on): weights and gradients in
    dtype, an fp32 master copy and fp32 optimizer moments - 16 bytes per parameter for AdamW
    (Rajbhandari et al., ZeRO, 2020). dtype fp32: everything in fp32.
    """
    dtype = norm_dtype(dtype, TRAIN_DTYPES)
    if optimizer not in OPTIMIZERS:
        raise ArchsmithError("optimizer", f"must be one of {', '.join(OPTIMIZERS)}; got {optimizer!r}")
    if master_weights is None:
        master_weights = dtype != "fp32"
    b = int(DTYPE_BYTES[dtype])
    n = count_params(spec)["total"]
    weights = n * b
    gradients = n * b  # gradients are kept in the parameter dtype
    master = n * FP32 if master_weights else 0
    state_bytes = FP32 if master_weights else b  # moments follow the fp32 master copy under mixed precision
    opt_state = optimizer_bytes(spec, optimizer, state_bytes)
    acts = activation_bytes(spec, batch, seq, dtype, attention, checkpointing, device)
    logits = batch * seq * spec.vocab_size * b  # the logits the forward returns, alive until backward
    total = weights + gradients + master + opt_state + acts["total"] + logits
    return {
        "dtype": dtype,
        "optimizer": optimizer,
        "master_weights": master_weights,
        "weights_bytes": weights,
        "gradients_bytes": gradients,
        "master_weights_bytes": master,
        "optimizer_state_bytes": opt_state,
        "optimizer_bytes": master + opt_state,
        "activations_bytes": acts["total"],
        "activations": acts,
        "logits_bytes": logits,
        "total_bytes": total,
    }


def sharded_memory(train: dict[str, Any], spec: ArchitectureSpec, strategy: str, num_gpus: int) -> dict[str, Any]:
    """Per-GPU memory under data parallelism. `train` is `training_memory` for the per-GPU micro-batch."""
    if strategy not in STRATEGIES:
        raise ArchsmithError("strategy", f"must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
    if num_gpus < 1:
        raise ArchsmithError("gpus", f"must be >= 1, got {num_gpus}")
    w, g, o = train["weights_bytes"], train["gradients_bytes"], train["optimizer_bytes"]
    extra = 0
    if strategy == "ddp":
        # DDP's default buckets (gradient_as_bucket_view=False) hold a second copy of the gradients
        extra = g if num_gpus > 1 else 0
    elif strategy == "zero1":
        o = o / num_gpus
    elif strategy == "zero2":
        g, o = g / num_gpus, o / num_gpus
    else:  # zero3 / fsdp full shard
        w, g, o = w / num_gpus, g / num_gpus, o / num_gpus
        # the unsharded parameters of the layer being computed and of the one prefetched
        layer_bytes = count_params(spec)["per_layer"] * train["weights_bytes"] // max(count_params(spec)["total"], 1)
        extra = 2 * layer_bytes if num_gpus > 1 else 0
    parts = {
        "weights_bytes": int(w),
        "gradients_bytes": int(g),
        "optimizer_bytes": int(o),
        "communication_buffers_bytes": int(extra),
        "activations_bytes": train["activations_bytes"] + train["logits_bytes"],
    }
    return {"strategy": strategy, "gpus": num_gpus, **parts, "total_bytes": sum(parts.values())}  # the parts add up exactly


def inference_memory(spec: ArchitectureSpec, batch: int, context: int, dtype: str = "bf16", kv_dtype: str | None = None) -> dict[str, int]:
    """Weights + the KV cache right after a prefill of `context` tokens (sliding layers still hold all of them) + the
    largest transient of that prefill (one layer's MLP, last-position logits). `decode_kv_cache_bytes`: what the
    cache holds once decoding runs."""
    weights = weights_bytes(spec, dtype)["bytes"]
    kv_dtype = kv_dtype or ("bf16" if norm_dtype(dtype) in ("int8", "int4", "fp8") else dtype)
    kv = kv_cache_bytes(spec, batch, context, kv_dtype, after="prefill")
    act_b = 2 if norm_dtype(dtype) != "fp32" else 4  # compute runs in bf16 for quantised weights
    ffn = spec.moe.expert_ffn_size * spec.moe.top_k if spec.moe else spec.ffn_size
    transient = batch * context * act_b * (2 * ffn + spec.hidden_size) + batch * spec.vocab_size * FP32
    return {"weights_bytes": weights, "kv_cache_bytes": kv, "decode_kv_cache_bytes": kv_cache_bytes(spec, batch, context, kv_dtype),
            "activations_bytes": transient, "total_bytes": weights + kv + transient}


def checkpoint_sizes(spec: ArchitectureSpec, optimizer: str = "adamw") -> dict[str, int]:
    """Bytes on disk (safetensors; headers are a few KB and left out)."""
    n = count_params(spec)["total"]
    return {
        "weights_bf16": n * 2,
        "weights_fp32": n * 4,
        # resumable training state: bf16 weights + fp32 master + optimizer moments
        "training_state": n * 2 + n * FP32 + optimizer_bytes(spec, optimizer, FP32),
    }


def estimate(spec: ArchitectureSpec, batch: int = 1, seq: int | None = None, dtype: str = "bf16", optimizer: str = "adamw",
             checkpointing: bool = False, attention: str | None = None, kv_batch: int | None = None,
             compile: bool = False, device: str = "cuda") -> dict[str, Any]:
    """Everything `archsmith estimate --json` prints (the CLI contract in docs/architecture.md).

    attention None picks the family's default kernel (`default_attention`). `memory.activations_exact`
    is False where the activation estimate is not yet held to 5% of measurement; `activations_note` says why.
    `memory.training_peak_bytes` is the peak of one step of `archsmith train` (`archsmith.peak`: its recipe, the
    phase, the allocator's headroom, and `peak_exact` / `peak_note` where the layout is not yet held to 5%).
    """
    from archsmith.peak import training_peak

    seq = spec.context_length if seq is None else seq
    _positive("batch", batch)
    if isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq <= spec.context_length:
        raise ArchsmithError("seq", f"must be an integer in [1, {spec.context_length}] (the model's context_length), got {seq!r}")
    params = count_params(spec)
    train = training_memory(spec, batch, seq, dtype, optimizer, checkpointing, attention, device=device)
    infer = inference_memory(spec, kv_batch or batch, seq, dtype)
    peak = training_peak(spec, batch, seq, dtype, checkpointing, compile)
    return {
        "params": params,
        "flops": flops(spec, seq, checkpointing),
        "memory": {
            "weights_bytes": train["weights_bytes"],
            "gradients_bytes": train["gradients_bytes"],
            "optimizer_bytes": train["optimizer_bytes"],
            "activations_bytes": train["activations_bytes"],
            "logits_bytes": train["logits_bytes"],
            "kv_cache_bytes": infer["decode_kv_cache_bytes"],
            "kv_cache_after_prefill_bytes": infer["kv_cache_bytes"],
            "training_total_bytes": train["total_bytes"],
            "training_peak_bytes": peak["peak_bytes"],
            "training_reserved_bytes": peak["reserved_bytes"],
            "peak_exact": peak["exact"],
            "peak_note": "; ".join(peak["not_calibrated"]) or None,
            "training_peak": peak,
            "inference_total_bytes": infer["total_bytes"],
            "weights_by_dtype": {d: weights_bytes(spec, d)["bytes"] for d in ("fp32", "bf16", "int8", "int4")},
            "checkpoint": checkpoint_sizes(spec, optimizer),
            "activations_exact": train["activations"]["exact"],
            "activations_note": "; ".join(train["activations"]["not_calibrated"]) or None,
            "training": train,
            "inference": infer,
        },
        "settings": {"batch": batch, "seq": seq, "dtype": train["dtype"], "optimizer": optimizer,
                     "checkpointing": checkpointing, "compile": compile, "attention": train["activations"]["attention"],
                     "device": device,
                     "transformers": families.TRANSFORMERS},  # whose code the activation figures follow
    }


def _positive(field: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ArchsmithError(field, f"must be a positive integer, got {value!r}")
