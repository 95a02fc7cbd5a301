"""Closed-form parameters, FLOPs and memory of an `ArchitectureSpec`. Never instantiates weights.

Tests hold every number here against reality: parameter counts against `transformers`
models built on the meta device, matmul FLOPs against `torch.utils.flop_counter`, weights +
gradients + AdamW state against a real optimizer step, activations against the tensors
autograd saves for backward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from archsmith.errors import ArchsmithError
from archsmith.spec import ArchitectureSpec

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

FP32 = 4  # bytes of an fp32 value: master weights, optimizer moments, norm statistics
INT64 = 8  # bytes of a token id (torch.long), saved by the embedding and the loss
STEP_TENSOR = 4  # torch AdamW/Adafactor keep `step` as a 0-d float32 tensor per parameter tensor
ADAM8BIT_BLOCK = 256  # bitsandbytes 8-bit optimizers quantise moments in blocks of 256 values
ADAM8BIT_MIN_SIZE = 4096  # bitsandbytes keeps fp32 moments for tensors smaller than this
INT4_GROUP = 128  # typical GPTQ/AWQ/bnb-nf4 group size: one fp16 scale (+ zero) per 128 weights
INT4_GROUP_OVERHEAD = 4  # bytes per group: fp16 scale + fp16 zero point
INT8_ROW_OVERHEAD = 4  # LLM.int8(): one fp32 scale per output row
# HF implementations that multiply the norm weight in fp32 before casting down (so they save an fp32 normalised input)
NORM_WEIGHT_IN_FP32 = ("olmo2", "gemma2")
# HF implementations that keep the rotary cos/sin tables in fp32 under bf16 training
ROPE_IN_FP32 = ("olmo2",)


def norm_dtype(dtype: str, allowed: tuple[str, ...] | dict[str, float] = DTYPE_BYTES) -> str:
    """The canonical name of `dtype` ('bfloat16' -> 'bf16'); an error listing `allowed` when it is not one of them."""
    key = DTYPE_ALIASES.get(str(dtype).lower(), str(dtype).lower())
    if key not in allowed:
        raise ArchsmithError("dtype", f"must be one of {', '.join(allowed)}; got {dtype!r}")
    return key


# ---- parameters ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Tensor:
    """One parameter tensor, named as in the HF Llama state dict (layer tensors without prefix)."""

    name: str
    shape: tuple[int, ...]
    group: str  # breakdown bucket: q_proj, mlp, norms, ...

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def _norm_tensors(spec: ArchitectureSpec, name: str, width: int, group: str) -> list[Tensor]:
    tensors = [Tensor(f"{name}.weight", (width,), group)]
    if spec.norm == "layernorm":
        tensors.append(Tensor(f"{name}.bias", (width,), group))
    return tensors


def layer_tensors(spec: ArchitectureSpec) -> list[Tensor]:
    """The parameter tensors of one decoder layer (every layer has the same ones)."""
    h, q, kv = spec.hidden_size, spec.q_dim, spec.kv_dim
    t: list[Tensor] = []
    if spec.fused_qkv:
        t.append(Tensor("self_attn.qkv_proj.weight", (q + 2 * kv, h), "attention_qkv"))
        if spec.qkv_bias:
            t.append(Tensor("self_attn.qkv_proj.bias", (q + 2 * kv,), "attention_bias"))
    else:
        for proj, width in (("q_proj", q), ("k_proj", kv), ("v_proj", kv)):
            t.append(Tensor(f"self_attn.{proj}.weight", (width, h), f"attention_{proj[0]}"))
            if spec.qkv_bias:
                t.append(Tensor(f"self_attn.{proj}.bias", (width,), "attention_bias"))
    t.append(Tensor("self_attn.o_proj.weight", (h, q), "attention_o"))
    if spec.o_bias:
        t.append(Tensor("self_attn.o_proj.bias", (h,), "attention_bias"))
    if spec.qk_norm != "none":
        q_width, k_width = (spec.head_dim, spec.head_dim) if spec.qk_norm == "head" else (q, kv)
        t += _norm_tensors(spec, "self_attn.q_norm", q_width, "qk_norm")
        t += _norm_tensors(spec, "self_attn.k_norm", k_width, "qk_norm")
    t += _mlp_tensors(spec)
    norms = {
        "pre": ["input_layernorm", "post_attention_layernorm"],
        "post": ["post_attention_layernorm", "post_feedforward_layernorm"],
        "sandwich": ["input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm"],
    }[spec.norm_placement]
    for name in norms:
        t += _norm_tensors(spec, name, h, "norms")
    return t


def _mlp_tensors(spec: ArchitectureSpec) -> list[Tensor]:
    h = spec.hidden_size
    if spec.moe is not None:
        moe = spec.moe
        e, f = moe.num_experts, moe.expert_ffn_size
        t = [Tensor("mlp.gate.weight", (e, h), "router")]
        if moe.router_bias:
            t.append(Tensor("mlp.gate.bias", (e,), "router"))
        # transformers 5 stores the experts as two 3-D tensors per layer
        up_rows = 2 * f if spec.gated else f
        t += [Tensor("mlp.experts.gate_up_proj", (e, up_rows, h), "experts"), Tensor("mlp.experts.down_proj", (e, h, f), "experts")]
        for i in range(moe.shared_experts):
            sf = moe.shared_ffn_size
            rows = ["gate_proj", "up_proj"] if spec.gated else ["up_proj"]
            t += [Tensor(f"mlp.shared_experts.{i}.{r}.weight", (sf, h), "shared_experts") for r in rows]
            t.append(Tensor(f"mlp.shared_experts.{i}.down_proj.weight", (h, sf), "shared_experts"))
        return t
    f = spec.ffn_size
    t = []
    if spec.gated and spec.fused_gate_up:
        t.append(Tensor("mlp.gate_up_proj.weight", (2 * f, h), "mlp"))
        if spec.mlp_bias:
            t.append(Tensor("mlp.gate_up_proj.bias", (2 * f,), "mlp_bias"))
    else:
        for proj in ("gate_proj", "up_proj") if spec.gated else ("up_proj",):
            t.append(Tensor(f"mlp.{proj}.weight", (f, h), "mlp"))
            if spec.mlp_bias:
                t.append(Tensor(f"mlp.{proj}.bias", (f,), "mlp_bias"))
    t.append(Tensor("mlp.down_proj.weight", (h, f), "mlp"))
    if spec.mlp_bias:
        t.append(Tensor("mlp.down_proj.bias", (h,), "mlp_bias"))
    return t


def model_tensors(spec: ArchitectureSpec) -> list[Tensor]:
    """All parameter tensors; a tied lm_head shares the embedding and is not listed."""
    h = spec.hidden_size
    t = [Tensor("model.embed_tokens.weight", (spec.vocab_size, h), "embedding")]
    if spec.position == "learned":
        t.append(Tensor("model.embed_positions.weight", (spec.context_length, h), "embedding"))
    layer = layer_tensors(spec)
    for i in range(spec.num_layers):
        t += [Tensor(f"model.layers.{i}.{x.name}", x.shape, x.group) for x in layer]
    t += _norm_tensors(spec, "model.norm", h, "final_norm")
    if not spec.tie_embeddings:
        t.append(Tensor("lm_head.weight", (spec.vocab_size, h), "lm_head"))
    return t


def count_params(spec: ArchitectureSpec) -> dict[str, Any]:
    """Parameter counts: total, embedding, lm_head, per layer, per component, non-embedding."""
    layer = layer_tensors(spec)
    per_layer = sum(t.numel for t in layer)
    per_layer_groups: dict[str, int] = {}
    for t in layer:
        per_layer_groups[t.group] = per_layer_groups.get(t.group, 0) + t.numel
    h, V = spec.hidden_size, spec.vocab_size
    embedding = V * h + (spec.context_length * h if spec.position == "learned" else 0)
    lm_head = 0 if spec.tie_embeddings else V * h
    final_norm = h * (2 if spec.norm == "layernorm" else 1)
    total = embedding + spec.num_layers * per_layer + final_norm + lm_head
    active_per_layer = per_layer
    if spec.moe is not None:
        routed = per_layer_groups["experts"]
        active_per_layer = per_layer - routed + routed * spec.moe.top_k // spec.moe.num_experts
    n_layer_tensors = len(layer)
    return {
        "total": total,
        "embedding": embedding,
        "lm_head": lm_head,
        "tied_embeddings": spec.tie_embeddings,
        "per_layer": per_layer,
        "layers": spec.num_layers * per_layer,
        "final_norm": final_norm,
        "non_embedding": total - embedding - lm_head,
        "active": total - spec.num_layers * (per_layer - active_per_layer),
        "tensors": n_layer_tensors * spec.num_layers + (2 if spec.position == "learned" else 1)
        + (2 if spec.norm == "layernorm" else 1) + (0 if spec.tie_embeddings else 1),
        "breakdown": {
            "embedding": embedding,
            **{f"per_layer.{k}": v for k, v in per_layer_groups.items()},
            "final_norm": final_norm,
            "lm_head": lm_head,
        },
    }


# ---- FLOPs --------------------------------------------------------------------------------

def _matmul_weights_per_token(spec: ArchitectureSpec) -> int:
    """Weight elements one token multiplies through in one layer (biases and norms excluded)."""
    h, f = spec.hidden_size, spec.ffn_size
    attn = h * (spec.q_dim + 2 * spec.kv_dim) + spec.q_dim * h
    if spec.moe is None:
        mlp = (3 if spec.gated else 2) * h * f
    else:
        moe = spec.moe
        per_expert = (3 if spec.gated else 2) * h * moe.expert_ffn_size
        shared = moe.shared_experts * (3 if spec.gated else 2) * h * moe.shared_ffn_size
        mlp = h * moe.num_experts + moe.top_k * per_expert + shared
    return attn + mlp


def attention_pairs(seq: int, causal: bool, window: int | None) -> int:
    """(query, key) pairs one head scores over a sequence of `seq` tokens.

    Dense (causal=False): seq**2, what an eager/masked kernel multiplies.
    Causal: each query i sees min(i + 1, window) keys, what flash kernels compute.
    """
    if not causal:
        return seq * seq
    if window is None or window >= seq:
        return seq * (seq + 1) // 2
    return window * (window + 1) // 2 + (seq - window) * window


def forward_flops(spec: ArchitectureSpec, batch: int, seq: int, causal: bool = True) -> dict[str, int]:
    """Matmul FLOPs (2 per multiply-add) of one forward pass over batch x seq tokens, logits for all positions."""
    tokens = batch * seq
    linear = 2 * tokens * spec.num_layers * _matmul_weights_per_token(spec)
    lm_head = 2 * tokens * spec.hidden_size * spec.vocab_size
    attention = 0
    for kind in spec.resolved_layer_types:
        window = spec.sliding_window if kind == "sliding_attention" else None
        # QK^T and attention x V: 2 matmuls x 2 FLOPs x head_dim per (query, key) pair per head
        attention += 4 * spec.num_heads * spec.head_dim * batch * attention_pairs(seq, causal, window)
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
        "six_n_per_token": 6 * params["non_embedding"],  # Kaplan et al. 2020 rule of thumb, for comparison
        "checkpointing_recompute": checkpointing,
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
        overhead = spec.num_layers * sum(t.shape[0] for t in layer_tensors(spec) if len(t.shape) >= 2) * INT8_ROW_OVERHEAD
    return {"dtype": dtype, "bytes": raw + overhead, "raw_bytes": raw, "quantization_overhead_bytes": overhead}


def optimizer_bytes(spec: ArchitectureSpec, optimizer: str, state_bytes: int) -> int:
    """Optimizer state for every parameter tensor, moments stored at `state_bytes` per value."""
    tensors = model_tensors(spec)
    if optimizer == "adamw":  # exp_avg and exp_avg_sq, plus a step tensor each
        return sum(2 * t.numel * state_bytes + STEP_TENSOR for t in tensors)
    if optimizer == "sgd":  # momentum_buffer (torch SGD keeps no step)
        return sum(t.numel * state_bytes for t in tensors)
    if optimizer == "adamw8bit":
        total = 0
        for t in tensors:
            if t.numel < ADAM8BIT_MIN_SIZE:
                total += 2 * t.numel * FP32
            else:  # two uint8 moments + one fp32 absmax per block per moment
                total += 2 * t.numel + 2 * math.ceil(t.numel / ADAM8BIT_BLOCK) * FP32
        return total
    if optimizer == "adafactor":  # factored second moment: row and column statistics, no first moment
        total = 0
        for t in tensors:
            if len(t.shape) >= 2:
                lead = math.prod(t.shape[:-2])
                total += lead * (t.shape[-2] + t.shape[-1]) * state_bytes
            else:
                total += t.numel * state_bytes
            total += STEP_TENSOR
        return total
    raise ArchsmithError("optimizer", f"must be one of {', '.join(OPTIMIZERS)}; got {optimizer!r}")


def _norm_saved(spec: ArchitectureSpec, width: int, b: int, groups: int = 1) -> int:
    """Bytes one norm saves per token for `width` features normalised in `groups` groups."""
    if spec.norm == "rmsnorm":
        # fp32 upcast of the input (for pow/mul), fp32 rsqrt(variance) per group, normalised input in dtype (weight grad)
        normalised = FP32 if spec.model_type in NORM_WEIGHT_IN_FP32 else b
        return FP32 * width + FP32 * groups + normalised * width
    # native_layer_norm saves its input plus fp32 mean and rstd per group
    return b * width + 2 * FP32 * groups


def activation_bytes(spec: ArchitectureSpec, batch: int, seq: int, dtype: str = "bf16", attention: str = "sdpa",
                     checkpointing: bool = False) -> dict[str, int]:
    """Bytes of tensors autograd saves for backward in one forward of batch x seq tokens.

    Calibrated, tensor by tensor, on the HF Llama-style block (pre-norm RMSNorm, RoPE,
    gated MLP, SDPA or eager attention) that `network.py` also implements: the tests measure
    it with `torch.autograd.graph.saved_tensors_hooks`. Other layouts (post/sandwich norms,
    LayerNorm, GELU MLPs, dropout) use the same per-op rules and are approximations.
    Checkpointing means one checkpoint per decoder layer: a layer keeps only its input.
    """
    if attention not in ATTENTION_IMPLS:
        raise ArchsmithError("attention", f"must be one of {', '.join(ATTENTION_IMPLS)}; got {attention!r}")
    b = int(DTYPE_BYTES[norm_dtype(dtype)])
    h, q, kv, f = spec.hidden_size, spec.q_dim, spec.kv_dim, spec.ffn_size
    T = batch * seq
    per_token = 0
    # attention block: norm + projection input
    per_token += _norm_saved(spec, h, b) + b * h
    if spec.qk_norm == "head":  # one norm group per head
        per_token += _norm_saved(spec, q + kv, b, spec.num_heads + spec.num_kv_heads)
    elif spec.qk_norm == "full":  # one group for all of q, one for all of k
        per_token += _norm_saved(spec, q + kv, b, 2)
    layer_attn = 0
    if attention == "sdpa":
        # q, k, v (GQA: k and v at kv width), output (also the o_proj input), fp32 logsumexp per head
        per_token += b * (2 * q + 2 * kv) + FP32 * spec.num_heads
    else:
        # q, repeated k and v, o_proj input copy, fp32 softmax probabilities (and their cast when b != 4)
        per_token += b * 4 * q
        layer_attn = spec.num_heads * seq * (FP32 + (b if b != FP32 else 0))
    # MLP block: norm + input, then gate output, act(gate), up output, act*up (down_proj input)
    per_token += _norm_saved(spec, h, b) + b * h
    if spec.moe is not None:
        k, ef = spec.moe.top_k, spec.moe.expert_ffn_size
        per_token += FP32 * spec.moe.num_experts + k * b * (4 if spec.gated else 2) * ef
        per_token += spec.moe.shared_experts * b * (4 if spec.gated else 2) * spec.moe.shared_ffn_size
    else:
        per_token += b * (4 if spec.gated else 2) * f
    if spec.norm_placement == "sandwich":
        per_token += 2 * _norm_saved(spec, h, b)
    per_layer = T * (per_token + layer_attn)
    rope = 0
    if spec.position == "rope":
        rot = int(spec.head_dim * spec.partial_rotary_factor)
        rope = 2 * seq * rot * (FP32 if spec.model_type in ROPE_IN_FP32 else b)  # cos and sin, shared by all layers (position ids of batch 1)
    head = T * (_norm_saved(spec, h, b) + b * h)  # final norm + lm_head input
    loss = T * (FP32 * spec.vocab_size + INT64) + FP32  # fp32 log-softmax, labels, total weight
    embedding = T * INT64  # input ids for the embedding backward
    if checkpointing:
        layers = spec.num_layers * T * b * h  # each layer keeps only its input
        rope = 0
    else:
        layers = spec.num_layers * per_layer
    total = layers + rope + head + loss + embedding
    return {
        "total": total,
        "layers": layers,
        "per_layer": per_layer,
        "rope": rope,
        "head": head,
        "loss": loss,
        "embedding": embedding,
        "recompute_peak": per_layer if checkpointing else 0,
    }


def kv_cache_bytes(spec: ArchitectureSpec, batch: int, context: int, dtype: str = "bf16") -> int:
    """K and V for every layer; sliding-window layers keep the last `sliding_window - 1` positions
    (as transformers' sliding cache does: the incoming token completes the window)."""
    b = DTYPE_BYTES[norm_dtype(dtype)]
    total = 0
    for kind in spec.resolved_layer_types:
        kept = min(context, spec.sliding_window - 1) if kind == "sliding_attention" else context
        total += 2 * spec.kv_dim * kept
    return int(total * batch * b)


def training_memory(spec: ArchitectureSpec, batch: int, seq: int, dtype: str = "bf16", optimizer: str = "adamw",
                    checkpointing: bool = False, attention: str = "sdpa", master_weights: bool | None = None) -> dict[str, Any]:
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
    acts = activation_bytes(spec, batch, seq, dtype, attention, checkpointing)
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
    """Weights + KV cache + the largest transient of a prefill (one layer's MLP, last-position logits)."""
    weights = weights_bytes(spec, dtype)["bytes"]
    kv = kv_cache_bytes(spec, batch, context, kv_dtype or ("bf16" if norm_dtype(dtype) in ("int8", "int4", "fp8") else dtype))
    act_b = 2 if norm_dtype(dtype) != "fp32" else 4  # compute runs in bf16 for quantised weights
    ffn = spec.moe.expert_ffn_size * spec.moe.top_k if spec.moe else spec.ffn_size
    transient = batch * context * act_b * (2 * ffn + spec.hidden_size) + batch * spec.vocab_size * FP32
    return {"weights_bytes": weights, "kv_cache_bytes": kv, "activations_bytes": transient, "total_bytes": weights + kv + transient}


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
             checkpointing: bool = False, attention: str = "sdpa", kv_batch: int | None = None) -> dict[str, Any]:
    """Everything `archsmith estimate --json` prints (the CLI contract in docs/architecture.md)."""
    seq = spec.context_length if seq is None else seq
    _positive("batch", batch)
    if isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq <= spec.context_length:
        raise ArchsmithError("seq", f"must be an integer in [1, {spec.context_length}] (the model's context_length), got {seq!r}")
    params = count_params(spec)
    train = training_memory(spec, batch, seq, dtype, optimizer, checkpointing, attention)
    infer = inference_memory(spec, kv_batch or batch, seq, dtype)
    return {
        "params": params,
        "flops": flops(spec, seq, checkpointing),
        "memory": {
            "weights_bytes": train["weights_bytes"],
            "gradients_bytes": train["gradients_bytes"],
            "optimizer_bytes": train["optimizer_bytes"],
            "activations_bytes": train["activations_bytes"],
            "logits_bytes": train["logits_bytes"],
            "kv_cache_bytes": infer["kv_cache_bytes"],
            "training_total_bytes": train["total_bytes"],
            "inference_total_bytes": infer["total_bytes"],
            "weights_by_dtype": {d: weights_bytes(spec, d)["bytes"] for d in ("fp32", "bf16", "int8", "int4")},
            "checkpoint": checkpoint_sizes(spec, optimizer),
            "training": train,
            "inference": infer,
        },
        "settings": {"batch": batch, "seq": seq, "dtype": train["dtype"], "optimizer": optimizer,
                     "checkpointing": checkpointing, "attention": attention},
    }


def _positive(field: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ArchsmithError(field, f"must be a positive integer, got {value!r}")
