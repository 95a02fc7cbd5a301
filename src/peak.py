"""Peak memory of one training step of `archsmith train`, from the step's timeline. Never instantiates weights.

The recipe is what `archsmith.train.loop.Trainer` runs on one device for `archsmith.network.CausalLM`:
fp32 weights; the forward under bf16 (or fp16) autocast, or plain fp32; next-token cross-entropy over the
logits cast to fp32; backward; global-norm clipping; fused AdamW; gradients set to None after the step.
What is alive (bytes) at each point of a step:

    resident         weights 4N + AdamW moments 8N + one fp32 step counter per tensor + the batch
    forward end      + per layer its saved activations (fp32 residual stream and norm statistics, a
                     low-precision copy of every linear's fp32 input, the attention kernel's and the MLP's
                     tensors) and the autocast's low-precision copies of its weights; the head; the rotary
                     tables; the loss's fp32 log-softmax
    loss             forward: + the logits, their fp32 copy (and the final hidden state) until the
                     log-softmax is taken; backward: the log-softmax becomes the logits' fp32 gradient in
                     place (`network._CrossEntropy`), + its low-precision copy under autocast
    layer backward   layer by layer from the last: the layer's activations and weight copies are freed as
                     its fp32 weight gradients appear; its backward holds its MLP's gradients for a moment
    embedding        + a dense fp32 gradient of the embedding while it is added into .grad
    optimizer        resident + gradients 4N (the fused kernel and clipping need no model-sized temporaries)

The peak is the largest of these. Tests measure the same step on CPU (bf16 autocast and fp32) with
torch.profiler's memory events and hold every phase to this model (tests/test_peak.py); a GPU benchmark
(benchmarks/bench_memory_gpu.py) records `torch.cuda.max_memory_allocated` against it. Layouts whose
tensors this model has not been held to (`not_calibrated`) are marked `exact: False`.
"""

from __future__ import annotations

from typing import Any

from archsmith import estimate as est
from archsmith import families
from archsmith.spec import ArchitectureSpec

FP32, INT64 = 4, 8
# The caching allocator holds more than is allocated: blocks rounded up, segments split between sizes. Until the GPU
# benchmark measures it per case, the plan assumes reserved = peak * (1 + this); with the CUDA context outside
# torch's count, a plan fits when peak * 1.1 <= the device's free memory (about 90% of the device).
ALLOCATOR_HEADROOM = 0.10
RECIPES = {"autocast": "bf16 autocast over fp32 weights, fp32 loss, fused AdamW, clipping",
           "fp32": "fp32 throughout, fused AdamW, clipping"}


def not_calibrated(spec: ArchitectureSpec, compile: bool = False) -> list[str]:
    """Why the peak of this layout is not yet held to 5% of a measurement (empty: it is)."""
    reasons, fam = [], families.get(spec.model_type)
    if fam.parity == "none":
        reasons.append(f"archsmith train does not build {spec.model_type} models: the figure is a llama-style step of these sizes")
    if compile:
        reasons.append("under torch.compile fewer tensors are saved: the figure is the eager step's peak (an upper bound)")
    if spec.moe is not None:
        reasons.append("MoE layers: routing, expert gathers and per-expert gradients are not yet modelled")
    if spec.mla is not None:
        reasons.append("multi-head latent attention is not yet modelled")
    if spec.norm_placement != "pre":
        reasons.append(f"norm placement {spec.norm_placement!r} is not yet modelled (pre-norm is)")
    if spec.qk_norm != "none" or families.setting(spec, "clip_qkv", None) is not None:
        reasons.append("QK-norm and q/k/v clipping are not yet modelled")
    if (spec.sliding_window or spec.position == "alibi" or families.setting(spec, "attn_logit_softcapping", None)
            or any(kind != "full_attention" for kind in spec.resolved_layer_types)):
        reasons.append("masked or eager attention (sliding windows, ALiBi, soft-capping) is not yet modelled")
    if (fam.embed_scale != "none" or families.setting(spec, "logits_scaling", 1.0) != 1.0 or families.setting(spec, "logit_scale", 1.0) != 1.0
            or families.setting(spec, "final_logit_softcapping", None) or families.setting(spec, "embedding_multiplier", 1.0) != 1.0):
        reasons.append("scaled or soft-capped embeddings and logits add transients not yet modelled")
    return reasons


def _norm_saved(spec: ArchitectureSpec, width: int, fp32: bool) -> int:
    """Bytes per token a norm saves: its fp32 input and statistics, the normalised x it scales, and in an fp32 step its
    output (the next linear's saved input; under autocast each linear saves its own low-precision copy instead)."""
    if spec.norm == "rmsnorm":  # x, rsqrt(mean x^2), x * rsqrt
        saved = 2 * FP32 * width + FP32
    elif spec.norm == "layernorm":  # F.layer_norm on fp32 input: x, mean, rstd; the output is the affine result
        saved = FP32 * width + 2 * FP32
    else:  # layer_norm of x.float(), then weight * y: x, mean, rstd, y
        saved = 2 * FP32 * width + 2 * FP32 if spec.norm == "layernorm_nobias" else FP32 * width + 2 * FP32
    return saved + (FP32 * width if fp32 else 0)


def layer_timeline(spec: ArchitectureSpec, layer: int, tokens: int, c: int) -> dict[str, int]:
    """One pre-norm decoder layer's part of the step, in bytes: `saved` activations, `copies` (autocast's weight
    copies), `params` (its parameter elements), `transient` (the most its backward holds above its start).

    c: bytes of the compute dtype (2 under bf16/fp16 autocast, 4 in an fp32 step). Shapes as network.py computes
    them: each linear reading the fp32 stream saves a c-byte copy of it (autocast; none in fp32); SDPA's fused kernel
    saves q, k, v, its output (o_proj's input) and fp32 log-sum-exp per head; the MLP its activation's input,
    output, the up projection and their product (gated) or the activation's input and output (plain).
    """
    h, f, q, kv = spec.hidden_size, spec.ffn_size, spec.q_dim, spec.kv_dim
    fp32 = c == FP32
    copy = 0 if fp32 else c * h  # per linear reading the fp32 stream
    qkv_reads = 1 if spec.fused_qkv or fp32 else 3
    attention = _norm_saved(spec, h, fp32) + qkv_reads * copy + c * (2 * q + 2 * kv) + FP32 * spec.num_heads
    mlp_reads = 1 if (spec.fused_gate_up or not spec.gated or fp32) else 2
    mlp = _norm_saved(spec, h, fp32) + mlp_reads * copy + c * f * (4 if spec.gated else 2)
    tensors = est.layer_tensors(spec, layer)
    weights = sum(t.numel for t in tensors if t.macs)  # matmul weights: autocast casts each once and keeps the copy
    # MLP backward: the gradients of both factors of the gated product at once (one (T, F) gradient for a plain MLP),
    # and down_proj's weight gradient in the compute dtype before its fp32 cast
    transient = (2 if spec.gated else 1) * c * tokens * f + c * h * f
    return {"saved": tokens * (attention + mlp), "copies": 0 if fp32 else c * weights,
            "params": sum(t.numel for t in tensors), "transient": transient}


def training_peak(spec: ArchitectureSpec, batch: int, seq: int, dtype: str = "bf16", checkpointing: bool = False,
                  compile: bool = False) -> dict[str, Any]:
    """The peak allocated bytes of one training step of `archsmith train` on one device, phase by phase.

    dtype bf16/fp16: autocast over fp32 weights (the Trainer on a GPU); fp32: an fp32 step. Returns `peak_bytes`,
    the phase it happens in (`at`), every phase's peak (`phases`), `reserved_bytes` (the peak with the allocator's
    headroom), `recipe`, and `exact` / `not_calibrated` (layouts not yet held to 5% of measurement).
    """
    dtype = est.norm_dtype(dtype, est.TRAIN_DTYPES)
    c = FP32 if dtype == "fp32" else 2
    fp32 = c == FP32
    T, h, V = batch * seq, spec.hidden_size, spec.vocab_size
    params = est.count_params(spec)
    n = params["total"]
    resident = 3 * FP32 * n + FP32 * params["tensors"] + 2 * INT64 * T  # weights, moments, step counters, ids + labels
    grads = FP32 * n

    kinds = {i: group[0] for group in est.layer_kinds(spec).values() for i in group}  # layers of one kind are alike
    first = {k: layer_timeline(spec, k, T, c) for k in set(kinds.values())}
    layers = [first[kinds[i]] for i in range(spec.num_layers)]
    rope = 2 * T * spec.rope_dim * FP32 if spec.position == "rope" else 0  # cos, sin (B, S, rot) of the fp32 stream
    stream = FP32 * T * h  # the fp32 residual stream (and its gradient)
    head_weight = 0 if fp32 else c * V * h  # lm_head's weight copy
    head = T * (_norm_saved(spec, h, fp32) + (0 if fp32 else c * h)) + head_weight
    log_softmax = FP32 * T * V
    loss_saved = log_softmax + INT64 * T + FP32  # log-softmax, shifted targets, total weight
    # checkpointing: a layer keeps only its input; autocast's weight copies stay cached until the forward ends
    kept = [stream if checkpointing else x["saved"] + x["copies"] for x in layers]
    forward_end = resident + sum(kept) + rope + head + loss_saved
    copies_cached = sum(x["copies"] for x in layers) if checkpointing else 0
    logits = c * T * V + (0 if fp32 else FP32 * T * V)  # the logits and their fp32 copy, beside the log-softmax
    phases = {"forward": (forward_end + copies_cached + logits + stream, 0)}  # (peak bytes, gradient bytes alive)
    phases["loss backward"] = (forward_end + (0 if fp32 else c * T * V), 0)  # the logits' gradient, cast to their dtype

    # lm_head's backward: the head's tensors go, its weight gradient arrives (fp32; tied: the embedding's)
    live, grown = forward_end - loss_saved - head + stream + FP32 * V * h, FP32 * V * h
    phases["layer backward"] = (0, 0)
    for i in reversed(range(spec.num_layers)):
        x = layers[i]
        recompute = x["saved"] + x["copies"] - stream if checkpointing else 0
        phases["layer backward"] = max(phases["layer backward"], (live + recompute + x["transient"], grown))
        live, grown = live + FP32 * x["params"] - kept[i], grown + FP32 * x["params"]
    untied = 0 if spec.tie_embeddings else FP32 * V * h
    phases["embedding backward"] = (resident + grads - untied + stream + FP32 * V * h, grads)
    phases["optimizer"] = (resident + grads, grads)
    at = max(phases, key=lambda name: phases[name][0])
    peak, grads_at_peak = phases[at]
    reasons = not_calibrated(spec, compile)
    return {"peak_bytes": peak, "at": at, "phases": {name: value[0] for name, value in phases.items()},
            "params": n, "resident_bytes": resident, "gradients_at_peak_bytes": grads_at_peak,
            "reserved_bytes": int(peak * (1 + ALLOCATOR_HEADROOM)), "headroom": ALLOCATOR_HEADROOM,
            "recipe": RECIPES["fp32" if fp32 else "autocast"].replace("bf16", dtype),
            "checkpointing": checkpointing, "compile": compile, "exact": not reasons, "not_calibrated": reasons}


def per_gpu(step: dict[str, Any], train: dict[str, Any], sharded: dict[str, Any]) -> dict[str, Any]:
    """A `sharded_memory` row whose total is the step's peak per GPU: the sharded weights, moments and the gradients
    alive at the peak, plus what the step holds above them (`step` from `training_peak` for the micro-batch,
    `train` from `training_memory`). `activations_bytes` becomes that remainder, so the parts still add up; on one
    GPU without sharding the total is `step["peak_bytes"]`. Sharded plans scale the state only: not yet measured."""
    n = step["params"]
    share = {k: sharded[k] / train[k] if train[k] else 0.0 for k in ("weights_bytes", "gradients_bytes", "optimizer_bytes")}
    grads = step["gradients_at_peak_bytes"]
    above = step["peak_bytes"] - 3 * FP32 * n - grads  # activations, transients, step counters, the batch
    at_peak = FP32 * n * share["weights_bytes"] + 2 * FP32 * n * share["optimizer_bytes"] + grads * share["gradients_bytes"]
    state = sharded["weights_bytes"] + sharded["gradients_bytes"] + sharded["optimizer_bytes"] + sharded["communication_buffers_bytes"]
    rest = max(0, int(at_peak + above + sharded["communication_buffers_bytes"]) - state)
    return {**sharded, "activations_bytes": rest, "total_bytes": state + rest, "peak_exact": step["exact"],
            "peak_note": "; ".join(step["not_calibrated"]) or None}
