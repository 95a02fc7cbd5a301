"""Parallel layouts: per-GPU memory and step time of TP x PP x DP x CP for a spec on a cluster. Never instantiates weights.

A layout splits `gpus` GPUs (nodes of `train.parallel.GPUS_PER_NODE`) as tp x pp x cp x dp, tensor parallel innermost
(inside a node), then context parallel, data parallel, and pipeline stages outermost (torchtitan's device mesh order).
Every figure comes from `estimate` (parameter counts, FLOPs, the activations one layer saves); this module only
divides them as the layout does and adds up what travels between GPUs.

Memory per GPU, for the stage that holds the most (bf16 compute, fp32 master weights and gradients, AdamW, FSDP2 over
dp x cp as torchtitan and Llama 3 shard; norms' few weights counted as split by tp like the rest):

    weights     pp = 1 and dp x cp > 1: FSDP full shard, the bf16 weights of two layers gathered (computing +
                prefetching), 2 B x 2 x layer / tp. Otherwise the stage's bf16 weights stay gathered through the step
                (FSDP does not reshard between micro-batches under PP): 2 B x stage params / tp
    gradients   full shard: fp32, 4 B x params / (tp dp cp); otherwise fp32, accumulated over the step's micro-batches
                before one reduce-scatter: 4 B x stage params / tp
    optimizer   fp32 master weights + AdamW m and v, 12 B x stage params / (tp dp cp)
    activations per layer and micro-batch: estimate.activation_bytes at seq / cp tokens (context parallel), divided by
                tp (sequence parallelism shards every saved tensor, Korthikanti et al. 2022). "selective" recomputation
                saves all of it except the attention scores, which the fused attention kernel recomputes in backward;
                "full" keeps each layer's bf16 input (2 B x tokens x hidden / tp) and recomputes one layer at a time.
                In flight on stage i (0-based): 1F1B min(m, pp - i) micro-batches; interleaved with v chunks per
                stage ((pp - i - 1) x 2 + (v - 1) x pp + 1) / v stage-micro-batches, for stage 0 pp (1 + (pp-1)/(pp v)),
                Korthikanti et al.'s formula. The first stage adds the token ids and rotary tables, the last the final
                norm and lm_head inputs, the logits and the fp32 log-softmax (vocab-parallel: divided by tp), for one
                micro-batch.

Only what `archsmith train` runs is feasible: its tensor-parallel plan's and its pipeline's own checks refuse the rest
(reason "trainer"), so no tensor or pipeline split of an MoE design (FSDP only, no expert parallelism) and no
pipeline over tied embeddings.

Stages: pp must divide the layers, or leave them at most two short: the first stage, then the last, takes one layer
fewer (Llama 3 405B: 126 layers on 16 stages are 7 + 14 x 8 + 7; the first stage holds the embedding and most
micro-batches, the last the output layer and loss).

Step time, for m = global batch / (dp x micro-batch) micro-batches per step:

    t_mb        the slowest stage's micro-batch: its training FLOPs (3 forwards, 4 with full recomputation) over
                tp x cp GPUs at `mfu` of peak, + tensor-parallel traffic (exposed: no async TP), + the context-parallel
                KV exchange beyond what the attention compute hides
    pipeline    t_mb x (m + (pp - 1) / v), v = 1 for 1F1B: the bubble is (pp - 1) / (m v + pp - 1) of it
    data        FSDP's parameter all-gather (bf16) and gradient reduce-scatter (fp32) over dp x cp, less what overlaps
                compute: all of it without PP; with PP (gradients sync on the last micro-batch only) one micro-batch
    pipeline p2p each micro-batch's activations forward and gradients back, v times with interleaving

Traffic per GPU (ring collectives move (n - 1) / n of the data per GPU, each direction): tensor parallel with SP,
4 all-reduce equivalents (all-gather + reduce-scatter) per layer per micro-batch, forward + backward, 6 with full
recomputation, of the micro-batch's bf16 activations, plus one each for the vocab-parallel embedding and lm_head;
context parallel, ring attention as torch's `context_parallel` runs it for `archsmith train --cp`: per layer the
other ranks' K and V pass round the ring forward, K and V again and their gradients backward (3 passes of
(cp - 1) / cp of the sequence's K and V, 4 with full recomputation), overlapped with the attention blocks. Links: `gpus` registry's intra_node_gbs for groups inside a node,
inter_node_gbs across nodes (peak rates: times are lower bounds).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Sequence

from archsmith import estimate as est
from archsmith.errors import ArchsmithError
from archsmith.gpus import get_gpu
from archsmith.spec import ArchitectureSpec
from archsmith.train.parallel import nodes_for, torchrun_command
from archsmith.train.parallel.layout import VIRTUAL
from archsmith.units import human_bytes

TP_DEGREES = (1, 2, 4, 8, 16)  # 16 crosses an 8-GPU node: listed so the plan says why not
MAX_PP = 32
CP_MIN_TOKENS = 8192  # context parallelism only where each rank keeps >= 8192 tokens (Llama 3: cp 16 at 131,072)
SCHEDULES = ("1f1b", "interleaved")
VIRTUAL_STAGES = VIRTUAL["interleaved"]  # chunks per stage of the interleaved schedule (the trainer's; torchtitan's default)
RECOMPUTE = ("selective", "full")
BF16, FP32 = 2, 4
WEIGHT_BYTES, GRAD_BYTES, OPTIMIZER_BYTES = BF16, FP32, 3 * FP32  # bf16 weights; fp32 grads; fp32 master + m + v
MAX_GLOBAL_BATCH = 1 << 40  # tokens per step; more is a typo
REASONS = {  # reason code -> what it means, in words (the CLI and the report count layouts by these)
    "memory": "exceed the memory per GPU",
    "fill": "leave fewer micro-batches than stages",
    "batch": "do not divide the global batch",
    "crosses_nodes": "put tensor parallelism across nodes",
    "heads": "do not divide the heads",
    "layers": "do not divide the layers",
    "interleave": "cannot interleave",
    "cp_seq": "do not divide the sequence",
    "trainer": "split the model in a way archsmith train does not",
}


def stage_layers(num_layers: int, pp: int) -> list[int] | None:
    """Decoder layers on each of `pp` stages: ceil(L / pp) each, the first (then the last) one fewer when the stages
    leave one (two) short; None when they leave more than two short or pp > L."""
    if pp > num_layers:
        return None
    per = math.ceil(num_layers / pp)
    short = per * pp - num_layers
    if short > 2:
        return None
    layers = [per] * pp
    for i in (0, pp - 1)[:short]:
        layers[i] -= 1
    return layers


def trainer_refusal(spec: ArchitectureSpec, tp: int, pp: int, schedule: str) -> str | None:
    """What `archsmith train --tp tp --pp pp` would refuse for this model (its tensor-parallel plan, its pipeline), in
    its own words; None when it runs it. Layer counts the pipeline cannot split are the planner's own reasons."""
    from archsmith.train.parallel import tensor
    from archsmith.train.parallel.layout import check_pipeline

    try:
        if tp > 1:
            tensor.check(spec, tp)
        if pp > 1:
            check_pipeline(spec, pp, schedule)
    except ArchsmithError as exc:
        return str(exc)
    return None


def in_flight(stage: int, pp: int, micro_batches: int, schedule: str, virtual: int) -> float:
    """Micro-batches whose activations stage `stage` holds at once (in whole-stage units)."""
    if pp == 1:
        return 1.0
    if schedule == "1f1b":
        return float(min(micro_batches, pp - stage))
    return min(float(micro_batches), ((pp - stage - 1) * 2 + (virtual - 1) * pp + 1) / virtual)


def bubble(pp: int, micro_batches: int, virtual: int = 1) -> float:
    """Idle fraction of a pipelined step: (pp - 1) / (m v + pp - 1) (Narayanan et al. 2021)."""
    return (pp - 1) / (micro_batches * virtual + pp - 1)


def _ring(n: int) -> float:
    """Share of the data each GPU sends in a ring all-gather or reduce-scatter over n GPUs."""
    return (n - 1) / n


def layout(spec: ArchitectureSpec, gpu: str | dict[str, Any], gpus: int, seq: int, global_batch: int, micro_batch: int,
           tp: int, pp: int, cp: int = 1, schedule: str = "1f1b", recompute: str = "selective", mfu: float = 0.40,
           limit_bytes: int | None = None, virtual_stages: int = VIRTUAL_STAGES) -> dict[str, Any]:
    """One layout: per-GPU memory (bytes) of its fullest stage, step time (s), traffic per GPU per step (bytes),
    bubble fraction, and `feasible` with `reasons` ({code, detail}) when it is not.

    global_batch: tokens per optimizer step (a multiple of seq); micro_batch: sequences per micro-batch;
    limit_bytes: memory a GPU may use (default: design.usable_memory, 90% of the device)."""
    device = get_gpu(gpu) if isinstance(gpu, str) else gpu
    _check(spec, gpus, seq, global_batch, micro_batch, mfu)
    if schedule not in SCHEDULES:
        raise ArchsmithError("schedule", f"must be one of {', '.join(SCHEDULES)}; got {schedule!r}")
    if recompute not in RECOMPUTE:
        raise ArchsmithError("recompute", f"must be one of {', '.join(RECOMPUTE)}; got {recompute!r}")
    for name, value in (("tp", tp), ("pp", pp), ("cp", cp), ("virtual_stages", virtual_stages)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ArchsmithError(name, f"must be a positive integer, got {value!r}")
    if gpus % (tp * pp * cp):
        raise ArchsmithError("gpus", f"{gpus} GPUs do not split into tp x pp x cp = {tp} x {pp} x {cp} x dp")
    if limit_bytes is None:
        from archsmith.design import usable_memory

        limit_bytes = usable_memory(device)["bytes"]
    dp = gpus // (tp * pp * cp)
    nodes = nodes_for(gpus)
    per_node = gpus // nodes
    v = virtual_stages if schedule == "interleaved" and pp > 1 else 1
    sequences = global_batch // seq
    m = max(1, sequences // (dp * micro_batch))
    full = recompute == "full"
    reasons: list[dict[str, str]] = []

    def why(code: str, detail: str) -> None:
        reasons.append({"code": code, "detail": detail})

    if tp > per_node:
        why("crosses_nodes", f"tp {tp} crosses nodes ({per_node} GPUs per node)")
    elif per_node % tp:
        why("crosses_nodes", f"tp {tp} does not divide the {per_node} GPUs of a node")
    if spec.num_heads % tp or spec.num_kv_heads % tp:
        why("heads", f"tp {tp} does not divide {spec.num_heads} heads and {spec.num_kv_heads} KV heads")
    layers = stage_layers(spec.num_layers, pp)
    if layers is None:
        why("layers", f"pp {pp} does not divide {spec.num_layers} layers (an uneven split may leave the first and "
                      "last stages one layer short, no more)")
        layers = [math.ceil(spec.num_layers / pp)] * pp  # the figures below, for the record
    if cp > 1 and seq % (2 * cp):
        why("cp_seq", f"seq {seq} is not a multiple of 2 x cp = {2 * cp} (load-balanced causal chunks)")
    if sequences % (dp * micro_batch):
        why("batch", f"global batch {sequences:,} sequences not divisible by dp x micro-batch = {dp:,} x {micro_batch}")
    if pp > 1 and m < pp:
        why("fill", f"{m} micro-batches < {pp} stages: the pipeline never fills (bubble {bubble(pp, m, v):.0%})")
    if v > 1 and m % pp:
        why("interleave", f"interleaving needs micro-batches ({m}) divisible by pp ({pp})")
    if v > 1 and min(layers) < v:
        why("interleave", f"a stage of {min(layers)} layer(s) cannot hold {v} chunks")
    if not {"heads", "layers", "interleave"} & {r["code"] for r in reasons}:  # those, the trainer words no better
        refused = trainer_refusal(spec, tp, pp, schedule)
        if refused:
            why("trainer", f"archsmith train refuses it ({refused})")

    # ---- memory per GPU, stage by stage
    counts = est.count_params(spec)
    head_params = counts["final_norm"] + counts["lm_head"] + (counts["embedding"] if spec.tie_embeddings and pp > 1 else 0)
    shard = dp * cp
    tokens = micro_batch * seq // cp  # per GPU of a CP group, per micro-batch
    acts = est.activation_bytes(spec, micro_batch, seq // cp, "bf16")
    layer_saved = acts["per_layer"] / tp
    layer_input = BF16 * tokens * spec.hidden_size / tp
    logits = BF16 * tokens * spec.vocab_size
    stages = []
    for i, n in enumerate(layers):
        params = n * counts["per_layer"] + (counts["embedding"] if i == 0 else 0) + (head_params if i == pp - 1 else 0)
        if pp == 1 and shard > 1:  # FSDP full shard
            weights = WEIGHT_BYTES * 2 * counts["per_layer"] / tp
            grads = GRAD_BYTES * params / (tp * shard)
        else:
            weights, grads = WEIGHT_BYTES * params / tp, GRAD_BYTES * params / tp
        optimizer = OPTIMIZER_BYTES * params / (tp * shard)
        held = in_flight(i, pp, m, schedule, v)
        activations = held * n * (layer_input if full else layer_saved) + (layer_saved if full else 0)
        if i == 0:
            activations += held * acts["embedding"] + acts["rope"]
        if i == pp - 1:
            activations += (acts["head"] + acts["loss"] + logits) / tp
        parts = {"weights_bytes": int(weights), "gradients_bytes": int(grads), "optimizer_bytes": int(optimizer),
                 "activations_bytes": int(activations)}
        stages.append({"stage": i, "layers": n, "params": params, "in_flight": held, **parts,
                       "total_bytes": sum(parts.values())})
    fullest = max(stages, key=lambda s: s["total_bytes"])
    if fullest["total_bytes"] > limit_bytes:
        why("memory", f"per-GPU memory {human_bytes(fullest['total_bytes'])} > {human_bytes(limit_bytes)} usable "
                      f"(stage {fullest['stage']}, {recompute} recomputation)")

    # ---- time: the slowest stage's micro-batch, the pipeline, what crosses the links
    intra, inter = device["intra_node_gbs"] * 1e9, device["inter_node_gbs"] * 1e9
    fwd = est.forward_flops(spec, micro_batch, seq)
    layer_flops = (fwd["linear"] + fwd["attention"]) / spec.num_layers
    attention_flops = fwd["attention"] / spec.num_layers
    passes = 4 if full else 3  # forward, backward (2x); full recomputation runs each layer's forward again
    activation = BF16 * tokens * spec.hidden_size  # one micro-batch's activations on this CP rank, unsharded
    tp_link = intra if tp <= per_node else inter
    cp_link = intra if tp * cp <= per_node else inter
    kv = BF16 * micro_batch * seq * 2 * spec.kv_dim / tp  # K and V of the whole sequence, this TP rank's heads

    def seconds(flops: float, n: int) -> float:
        return est.training_time(flops, device, n, mfu)["seconds"]

    per_stage = []
    for s in stages:
        n, last = s["layers"], s["stage"] == pp - 1
        flops = passes * n * layer_flops + (3 * fwd["lm_head"] if last else 0)
        compute = seconds(flops, tp * cp)
        reductions = n * (6 if full else 4) + (s["stage"] == 0) + last  # all-reduce equivalents
        tp_bytes = reductions * 2 * _ring(tp) * activation
        cp_bytes = n * (4 if full else 3) * _ring(cp) * kv
        cp_exposed = max(0.0, cp_bytes / cp_link - seconds(passes * n * attention_flops, tp * cp))
        per_stage.append({"compute_s": compute, "tp_s": tp_bytes / tp_link, "cp_s": cp_exposed,
                          "tp_bytes": tp_bytes, "cp_bytes": cp_bytes,
                          "micro_batch_s": compute + tp_bytes / tp_link + cp_exposed})
    slowest = max(per_stage, key=lambda s: s["micro_batch_s"])
    t_mb = slowest["micro_batch_s"]
    pipeline = t_mb * (m + (pp - 1) / v)
    params = max(s["params"] for s in stages)
    dp_link = intra if tp * shard <= per_node else inter
    if shard == 1:
        dp_bytes = 0.0
    elif pp == 1:  # full shard: gather for forward and for backward, reduce-scatter, every micro-batch
        dp_bytes = m * _ring(shard) * (2 * WEIGHT_BYTES + GRAD_BYTES) * params / tp
    else:  # gathered once, gradients reduce-scattered once, per step
        dp_bytes = _ring(shard) * (WEIGHT_BYTES + GRAD_BYTES) * params / tp
    hidden_by = m * slowest["compute_s"] if pp == 1 else slowest["compute_s"]
    dp_exposed = max(0.0, dp_bytes / dp_link - hidden_by)
    pp_bytes = 2 * m * v * activation / tp if pp > 1 else 0.0
    pp_s = pp_bytes / (intra if nodes == 1 else inter)  # some stage boundary crosses nodes unless all is one node
    step = pipeline + dp_exposed + pp_s
    model_flops = est.flops(spec, seq)["training_per_token"] * sequences * seq
    comm = {"tp_bytes": int(m * slowest["tp_bytes"]), "cp_bytes": int(m * slowest["cp_bytes"]), "dp_bytes": int(dp_bytes),
            "pp_bytes": int(pp_bytes)}
    return {
        "name": f"tp{tp} pp{pp} cp{cp} dp{dp}" + (f" {schedule}" if pp > 1 else ""),
        "tp": tp, "pp": pp, "cp": cp, "dp": dp, "schedule": schedule if pp > 1 else "none", "virtual_stages": v,
        "recompute": recompute, "micro_batch": micro_batch, "micro_batches": m, "global_batch_sequences": sequences,
        "seq": seq, "gpus": gpus, "nodes": nodes, "gpus_per_node": per_node, "stage_layers": layers,
        "stage_layers_text": _layers_text(layers),
        "memory": {**{k: fullest[k] for k in ("weights_bytes", "gradients_bytes", "optimizer_bytes", "activations_bytes",
                                              "total_bytes")}, "stage": fullest["stage"], "limit_bytes": limit_bytes},
        "stages": stages,
        "bubble": bubble(pp, m, v),
        "comm": {**comm, "total_bytes": sum(comm.values())},
        "time": {"micro_batch_s": t_mb, "compute_s": m * slowest["compute_s"], "bubble_s": t_mb * (pp - 1) / v,
                 "tp_s": m * slowest["tp_s"], "cp_s": m * slowest["cp_s"], "dp_s": dp_exposed, "pp_s": pp_s,
                 "step_s": step},
        "mfu_assumed": mfu,
        "mfu_effective": seconds(model_flops, gpus) * mfu / step,  # model FLOPs / (step x gpus x peak)
        "feasible": not reasons,
        "reasons": reasons,
        "why": "; ".join(r["detail"] for r in reasons),
    }


def _layers_text(layers: list[int]) -> str:
    """[7, 8, 8, ..., 8, 7] -> '7 + 14x8 + 7'."""
    runs: list[list[int]] = []
    for n in layers:
        if runs and runs[-1][0] == n:
            runs[-1][1] += 1
        else:
            runs.append([n, 1])
    return " + ".join(str(n) if k == 1 else f"{k}x{n}" for n, k in runs)


def _check(spec: ArchitectureSpec, gpus: int, seq: int, global_batch: int, micro_batch: int, mfu: float) -> None:
    for name, value, high in (("gpus", gpus, 65536), ("micro_batch", micro_batch, 65536), ("seq", seq, spec.context_length)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
            raise ArchsmithError(name, f"must be an integer in [1, {high}], got {value!r}")
    check_global_batch(global_batch, seq)
    if not 0 < mfu <= 1:
        raise ArchsmithError("mfu", f"must be in (0, 1], got {mfu}")


def check_global_batch(global_batch: int, seq: int) -> None:
    """A global batch is whole sequences: tokens per step, a multiple of seq, at least one sequence."""
    if isinstance(global_batch, bool) or not isinstance(global_batch, int) or not seq <= global_batch <= MAX_GLOBAL_BATCH:
        raise ArchsmithError("global_batch", f"must be tokens per step in [{seq} (one sequence), {MAX_GLOBAL_BATCH:,}], got {global_batch!r}")
    if global_batch % seq:
        low = global_batch // seq * seq
        raise ArchsmithError("global_batch", f"must be a multiple of seq {seq}: {global_batch:,} is not; "
                                             f"nearest {low:,} or {low + seq:,} tokens")


def candidates(spec: ArchitectureSpec, gpus: int, seq: int) -> list[tuple[int, int, int, str]]:
    """(tp, pp, cp, schedule) to try: tp in TP_DEGREES, pp in 1..MAX_PP, cp a power of two leaving each rank at least
    CP_MIN_TOKENS tokens (1 below that), tp x pp x cp dividing `gpus`; 1F1B and interleaved for pp > 1."""
    cps = [c for c in (2**k for k in range(11)) if c == 1 or seq // c >= CP_MIN_TOKENS]
    return [(tp, pp, cp, schedule) for tp in TP_DEGREES if tp <= gpus for cp in cps for pp in range(1, MAX_PP + 1)
            if gpus % (tp * pp * cp) == 0 for schedule in (SCHEDULES if pp > 1 else SCHEDULES[:1])]


def plan(spec: ArchitectureSpec, gpu: str | dict[str, Any], gpus: int, seq: int, global_batch: int | None = None,
         micro_batch: int = 1, mfu: float = 0.40, limit_bytes: int | None = None, recompute: str = "auto",
         virtual_stages: int = VIRTUAL_STAGES) -> dict[str, Any]:
    """Every candidate layout (`candidates`), feasible ones ranked by estimated step time, the recommended one, and for
    each TP degree why none of its layouts is feasible (`by_tp`).

    global_batch: tokens per step (default: one micro-batch per GPU, gpus x micro_batch x seq); recompute: 'selective',
    'full', or 'auto' (selective where it fits, else full, as an engineer tries them)."""
    if recompute not in ("auto", *RECOMPUTE):
        raise ArchsmithError("recompute", f"must be one of auto, {', '.join(RECOMPUTE)}; got {recompute!r}")
    device = get_gpu(gpu) if isinstance(gpu, str) else gpu
    global_batch = gpus * micro_batch * seq if global_batch is None else global_batch
    _check(spec, gpus, seq, global_batch, micro_batch, mfu)
    if limit_bytes is None:
        from archsmith.design import usable_memory

        limit_bytes = usable_memory(device)["bytes"]
    rows = []
    for tp, pp, cp, schedule in candidates(spec, gpus, seq):
        modes = RECOMPUTE if recompute == "auto" else (recompute,)
        tried = [layout(spec, device, gpus, seq, global_batch, micro_batch, tp, pp, cp, schedule, mode, mfu, limit_bytes,
                        virtual_stages) for mode in modes]
        fits = [r for r in tried if not any(x["code"] == "memory" for x in r["reasons"])]
        rows.append(fits[0] if fits else tried[-1])
    feasible = sorted((r for r in rows if r["feasible"]), key=lambda r: (r["time"]["step_s"], r["memory"]["total_bytes"]))
    rest = sorted((r for r in rows if not r["feasible"]), key=lambda r: (len(r["reasons"]), r["time"]["step_s"]))  # near misses first
    for rank, r in enumerate(feasible, 1):
        r["rank"] = rank
    for r in rest:
        r["rank"] = None
    by_tp = []
    for tp in TP_DEGREES:
        mine = [r for r in feasible + rest if r["tp"] == tp]  # near misses first: their reasons are the examples
        if not mine:
            continue
        codes = Counter(x["code"] for r in mine for x in r["reasons"])
        examples = {}
        for r in mine:
            for x in r["reasons"]:
                examples.setdefault(x["code"], f"{r['name']}: {x['detail']}")
        ok = [r for r in feasible if r["tp"] == tp]
        entry = {"tp": tp, "layouts": len(mine), "feasible": len(ok), "best": ok[0]["name"] if ok else None,
                 "why_not": [] if ok else [{"code": c, "layouts": k, "example": examples[c]} for c, k in codes.most_common()]}
        by_tp.append({**entry, "words": why_not(entry)})
    best = feasible[0] if feasible else None
    return {
        "gpu": device["id"], "gpus": gpus, "nodes": nodes_for(gpus), "seq": seq, "micro_batch": micro_batch,
        "global_batch_tokens": global_batch, "global_batch_sequences": global_batch // seq, "mfu": mfu,
        "limit_bytes": limit_bytes, "recompute": recompute, "virtual_stages": virtual_stages,
        "layouts": feasible + rest, "feasible": len(feasible), "recommended": best, "by_tp": by_tp,
        "assumptions": assumptions(device, mfu, virtual_stages),
    }


def why_not(entry: dict[str, Any]) -> str:
    """A `by_tp` entry in words: 'of 11 layouts, 10 leave fewer micro-batches than stages, 6 exceed the memory per GPU'
    (a layout can fail for several reasons)."""
    if entry["feasible"]:
        return f"{entry['feasible']} of {entry['layouts']} layouts feasible, best {entry['best']}"
    return f"of {entry['layouts']} layouts, " + ", ".join(f"{w['layouts']} {REASONS[w['code']]}" for w in entry["why_not"])


def assumptions(device: dict[str, Any], mfu: float, virtual_stages: int = VIRTUAL_STAGES) -> list[str]:
    """What the layout figures assume, in words."""
    return [
        "bf16 compute, fp32 master weights and gradients, AdamW; FSDP2 over dp x cp (full shard without PP; with PP "
        "the stage's bf16 weights stay gathered and fp32 gradients accumulate over the step's micro-batches)",
        "activations from estimate at seq / cp tokens, divided by tp (sequence parallelism); selective recomputation: "
        "the attention kernel recomputes its scores; full: each layer keeps only its input",
        f"pipeline: 1F1B, or interleaved with {virtual_stages} chunks per stage (torchtitan's default); "
        "bubble (pp - 1) / (m v + pp - 1); an uneven split leaves the first and last stages one layer short",
        f"compute at {mfu:.0%} of {device['id']}'s dense bf16 peak while computing; tensor-parallel traffic exposed; "
        f"links {device['intra_node_gbs']:g} GB/s inside a node, {device['inter_node_gbs']:g} GB/s between nodes "
        "per GPU (peak rates)",
    ]


def launch(row: dict[str, Any], model_dir: str, tokens: int, flags: Sequence[str] = ()) -> dict[str, Any]:
    """The command that trains with this layout for `tokens` tokens (the flags of `archsmith train`'s parallel layouts),
    with more `archsmith train` flags (a recipe's optimizer schedule) at the end."""
    batch_tokens = row["global_batch_sequences"] * row["seq"]
    steps = max(1, math.ceil(tokens / batch_tokens))
    args = [model_dir, "--data", "CORPUS", "--out", f"{model_dir.rstrip('/')}-run", "--tp", str(row["tp"]),
            "--pp", str(row["pp"]), "--cp", str(row["cp"])]
    if row["pp"] > 1:
        args += ["--pp-schedule", row["schedule"]]
    args += ["--strategy", "fsdp", "--batch", str(row["global_batch_sequences"]), "--micro-batch", str(row["micro_batch"]),
             "--seq", str(row["seq"]), "--steps", str(steps), "--precision", "bf16"]
    if row["recompute"] == "full":
        args.append("--checkpointing")
    args += flags
    return {"steps": steps, "nodes": row["nodes"], "gpus_per_node": row["gpus_per_node"],
            "command": torchrun_command(args, row["gpus_per_node"], row["nodes"])}
