"""The designer: scale templates -> candidate architectures -> a recommendation and a scaling path.

Targets are a parameter count, a compute budget (FLOPs, sized by Chinchilla) or a memory
budget (bytes per GPU for training). Every number in a design comes from `estimate` and
`scaling`; this module only chooses shapes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml

from archsmith import estimate as est
from archsmith import scaling
from archsmith.errors import ArchsmithError
from archsmith.gpus import get_gpu, memory_bytes
from archsmith.spec import MAX_CONTEXT, ArchitectureSpec
from archsmith.tokenizer import TokenizerInfo

# Hidden sizes we choose from: multiples of 128 so that every matmul tiles tensor cores
# and splits evenly for tensor parallelism.
HIDDEN_LADDER = (256, 384, 512, 640, 768, 896, 1024, 1280, 1536, 1792, 2048, 2560, 3072, 3584, 4096,
                 5120, 6144, 7168, 8192, 10240, 12288, 16384)
FFN_MULTIPLE = 256  # FFN width multiple: tensor-core tiles and 8-way tensor-parallel splits
VOCAB_MULTIPLE = 128  # pad the vocabulary so the embedding and lm_head matmuls tile evenly
MIN_PARAMS = 1_000_000
MAX_PARAMS = 2_000_000_000_000
DEFAULT_MFU = 0.40  # a well-tuned dense LM run on H100-class GPUs reaches 38-45% MFU (Llama 3 paper, torchtitan)
USABLE_MEMORY = 0.90  # leave 10% of device memory for the CUDA context, allocator fragmentation and buffers


@lru_cache(maxsize=1)
def scale_templates() -> tuple[dict[str, Any], ...]:
    text = resources.files("archsmith.data").joinpath("scale_templates.yaml").read_text(encoding="utf-8")
    return tuple(yaml.safe_load(text))


def template_for(params: int) -> dict[str, Any]:
    """The scale template whose parameter range holds `params` (the nearest one outside all ranges)."""
    templates = scale_templates()
    for tpl in templates:
        low, high = tpl["range"]
        if low <= params < high:
            return tpl
    return templates[0] if params < templates[0]["range"][0] else templates[-1]


def pad_vocab(vocab: int) -> int:
    return math.ceil(vocab / VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def _kv_heads(heads: int, wanted: int) -> int:
    """The largest power of two <= wanted that divides `heads` (GQA needs kv | heads; powers of two split for TP)."""
    return max(d for d in (2**k for k in range(13)) if d <= max(1, wanted) and heads % d == 0)


def shape_spec(tpl: dict[str, Any], hidden: int, params: int, vocab: int, context: int, kv_heads: int | None = None,
               tokenizer: TokenizerInfo | None = None) -> ArchitectureSpec | None:
    """A Llama-family spec of width `hidden` whose depth is solved so the total is closest to `params`."""
    head_dim = tpl["head_dim"] if hidden >= 4 * tpl["head_dim"] else 64
    heads = hidden // head_dim
    ffn = max(FFN_MULTIPLE, round(tpl["ffn_ratio"] * hidden / FFN_MULTIPLE) * FFN_MULTIPLE)
    base = ArchitectureSpec(
        hidden_size=hidden, num_layers=1, num_heads=heads, num_kv_heads=_kv_heads(heads, kv_heads or tpl["kv_heads"]),
        head_dim=head_dim, ffn_size=ffn, vocab_size=vocab, context_length=context,
        tie_embeddings=tpl["tie_embeddings"], rope_theta=tpl["rope_theta"], norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id if tokenizer else None,
        eos_token_id=tokenizer.eos_token_id if tokenizer else None,
        pad_token_id=tokenizer.pad_token_id if tokenizer else None,
    )
    counts = est.count_params(base)
    fixed = counts["total"] - counts["per_layer"]
    layers = round((params - fixed) / counts["per_layer"])
    if layers < 2 or layers > 256:
        return None
    return base.replace(num_layers=layers)


@dataclass
class Candidate:
    name: str
    spec: ArchitectureSpec
    summary: dict[str, Any] = field(default_factory=dict)
    pros: list[str] = field(default_factory=list)
    cons: list[str] = field(default_factory=list)


def _summarise(c: Candidate, tokens: int | None, gpu: dict[str, Any], num_gpus: int, mfu: float, strategy: str) -> None:
    spec = c.spec
    counts = est.count_params(spec)
    f = est.flops(spec, spec.context_length)  # model FLOPs: MFU excludes checkpoint recompute
    train_tokens = tokens or scaling.optimal_tokens(counts["total"])
    train = est.training_memory(spec, 1, spec.context_length, "bf16", "adamw", checkpointing=True)
    per_gpu = est.sharded_memory(train, spec, strategy, num_gpus)
    time = est.training_time(f["training_per_token"] * train_tokens, gpu, num_gpus, mfu)
    c.summary = {
        "params": counts,
        "flops": f,
        "shape": f"{spec.hidden_size} x {spec.num_layers}",
        "aspect": round(spec.hidden_size / spec.num_layers, 1),
        "train_tokens": train_tokens,
        "tokens_per_param": round(train_tokens / counts["total"], 1),
        "train_flops": f["training_per_token"] * train_tokens,
        "train_time": time,
        "memory_per_gpu": per_gpu,
        "training_memory": train,
        "kv_cache_per_request": est.kv_cache_bytes(spec, 1, spec.context_length, "bf16"),
        "weights_bf16": counts["total"] * 2,
        "loss_hoffmann": scaling.predicted_loss(counts["total"], train_tokens, "hoffmann"),
        "loss_epoch": scaling.predicted_loss(counts["total"], train_tokens, "epoch"),
    }


def _tradeoffs(cands: list[Candidate]) -> None:
    """Pros and cons of each candidate relative to the balanced one, in numbers."""
    base = cands[0]
    b_kv, b_layers = base.summary["kv_cache_per_request"], base.spec.num_layers
    for c in cands[1:]:
        kv = c.summary["kv_cache_per_request"] / b_kv - 1
        if c.spec.num_layers > b_layers:
            c.pros.append(f"{c.spec.num_layers} layers vs {b_layers}: depth helps small models most (MobileLLM, Liu et al. 2024)")
            c.cons.append(f"{c.spec.num_layers - b_layers} more sequential layers: lower throughput per token and more pipeline stages")
        elif c.spec.num_layers < b_layers:
            c.pros.append(f"{b_layers - c.spec.num_layers} fewer sequential layers: larger matmuls, higher GPU utilisation, lower latency")
            c.cons.append("wider and shallower: less depth per parameter, which can cost quality at small scale")
        if c.spec.num_kv_heads != base.spec.num_kv_heads:
            c.pros.append(f"{c.spec.num_kv_heads} KV heads vs {base.spec.num_kv_heads}: KV cache {kv:+.0%} per request, more concurrent requests")
            c.cons.append(f"GQA group {c.spec.gqa_group} vs {base.spec.gqa_group}: fewer KV heads can cost a little quality (Ainslie et al. 2023)")
        elif abs(kv) > 0.01:
            (c.pros if kv < 0 else c.cons).append(f"KV cache {kv:+.0%} per request at {c.spec.context_length} tokens")
    base.pros.append(f"aspect {base.summary['aspect']} hidden per layer, in the range where loss is flat in shape (Kaplan et al. 2020)")
    base.pros.append(f"GQA group {base.spec.gqa_group}: KV cache {base.spec.num_kv_heads}/{base.spec.num_heads} of full multi-head attention")


def design(params: int | str | None = None, compute: float | None = None, memory: int | None = None,
           context: int | None = None, tokenizer: TokenizerInfo | None = None, gpu: str = "h100", gpus: int = 8,
           tokens: int | None = None, mfu: float = DEFAULT_MFU, vocab: int | None = None) -> dict[str, Any]:
    """Design a decoder-only LM. Exactly one of params / compute / memory sets the size."""
    given = [name for name, v in (("params", params), ("compute", compute), ("memory", memory)) if v is not None]
    if len(given) != 1:
        raise ArchsmithError("params", "give exactly one of --params, --compute or --memory")
    if not isinstance(gpus, int) or not 1 <= gpus <= 65536:
        raise ArchsmithError("gpus", f"must be in [1, 65536], got {gpus}")
    if not 0 < mfu <= 1:
        raise ArchsmithError("mfu", f"must be in (0, 1], got {mfu}")
    device = get_gpu(gpu)
    strategy = "ddp" if gpus == 1 else "fsdp"
    target: dict[str, Any] = {"by": given[0]}
    if compute is not None:
        if not 1e15 <= compute <= 1e28:
            raise ArchsmithError("compute", f"must be in [1e15, 1e28] FLOPs, got {compute:g}")
        opt = scaling.optimal_for_compute(compute)
        params = int(opt["params"])
        tokens = tokens or int(opt["tokens"])
        target.update(compute_flops=compute, chinchilla=opt)
    if memory is not None:
        params = _largest_fitting(memory, context, tokenizer, vocab, strategy, gpus)
        target.update(memory_bytes=memory)
    params = int(params)
    if not MIN_PARAMS <= params <= MAX_PARAMS:
        raise ArchsmithError("params", f"must be in [{MIN_PARAMS:,}, {MAX_PARAMS:,}], got {params:,}")
    target["params"] = params
    tpl = template_for(params)
    context = context or tpl["context_length"]
    if not 128 <= context <= MAX_CONTEXT:
        raise ArchsmithError("context", f"must be in [128, {MAX_CONTEXT}], got {context}")
    raw_vocab = tokenizer.vocab_size if tokenizer else (vocab or tpl["vocab_size"])
    padded = pad_vocab(raw_vocab)

    def make(hidden: int, kv: int | None = None) -> ArchitectureSpec | None:
        return shape_spec(tpl, hidden, params, padded, context, kv, tokenizer)

    balanced = balanced_shape(tpl, params, padded, context, tokenizer)
    if balanced is None:
        raise ArchsmithError("params", f"no shape of 2 to 256 layers reaches {params:,} parameters with a vocabulary of "
                                       f"{padded:,} (its embedding alone is large); raise params or lower the vocabulary")
    balanced_h = balanced.hidden_size
    i = HIDDEN_LADDER.index(balanced_h)
    cands: list[Candidate] = [Candidate("balanced", balanced)]
    if i > 0 and (s := make(HIDDEN_LADDER[i - 1])) is not None:
        cands.append(Candidate("deep-narrow", s))
    if i + 1 < len(HIDDEN_LADDER) and (s := make(HIDDEN_LADDER[i + 1])) is not None:
        cands.append(Candidate("wide-shallow", s))
    base = cands[0].spec
    if base.num_kv_heads > 1 and (s := make(balanced_h, max(1, base.num_kv_heads // 2))) is not None and s.num_kv_heads != base.num_kv_heads:
        cands.append(Candidate("balanced-lean-kv", s))
    for c in cands:
        _summarise(c, tokens, device, gpus, mfu, strategy)
    _tradeoffs(cands)
    recommended = cands[0]
    rationale = [
        f"{recommended.summary['params']['total']:,} parameters, {100 * abs(recommended.summary['params']['total'] / params - 1):.1f}% from the {params:,} target",
        f"keeps the {tpl['name']} template's width-to-depth ratio (aspect {tpl['aspect']}), like {', '.join(tpl['examples'])}",
        "GQA + SwiGLU + RoPE + RMSNorm: the Llama-family defaults that transformers, vLLM and every major trainer run fast",
    ]
    if memory is not None:
        rationale.append(f"the largest size whose training state fits {memory / 2**30:.1f} GiB per GPU with {strategy} over {gpus} GPU(s)")
    context_note = _context_check(context, tokenizer)
    return {
        "target": target,
        "template": tpl,
        "vocab": {"given": raw_vocab, "padded": padded, "padding": padded - raw_vocab, "multiple": VOCAB_MULTIPLE},
        "tokenizer": tokenizer.to_dict() if tokenizer else None,
        "context_check": context_note,
        "gpu": device,
        "gpus": gpus,
        "strategy": strategy,
        "mfu": mfu,
        "candidates": cands,
        "recommended": recommended,
        "rationale": rationale,
        "scaling_path": scaling_path(recommended.spec, tokenizer, padded),
    }


def balanced_shape(tpl: dict[str, Any], params: int, vocab: int, context: int,
                   tokenizer: TokenizerInfo | None = None) -> ArchitectureSpec | None:
    """The ladder width whose solved depth keeps the template's width-to-depth aspect best (the first on a tie);
    None when no shape of 2 to 256 layers reaches `params`."""
    shapes = [s for h in HIDDEN_LADDER if (s := shape_spec(tpl, h, params, vocab, context, None, tokenizer)) is not None]
    return min(shapes, key=lambda s: _aspect_error(s, tpl["aspect"])) if shapes else None


def _aspect_error(spec: ArchitectureSpec, aspect: float) -> float:
    return abs(math.log(spec.hidden_size / spec.num_layers / aspect))


def _context_check(context: int, tokenizer: TokenizerInfo | None) -> str:
    note = _context_check_max_length(context, tokenizer)
    lengths = tokenizer.document_tokens if tokenizer else None
    if lengths:  # measured when `archsmith tokenizer train` trained it
        note += (f"; documents are {lengths['p50']:.0f} / {lengths['p90']:.0f} / {lengths['p99']:.0f} tokens at p50 / p90 / p99 "
                 f"(max {lengths['max']}): {'the p99 document fits' if lengths['p99'] <= context else 'p99 documents are longer than'} "
                 f"the context {context}")
    return note


def _context_check_max_length(context: int, tokenizer: TokenizerInfo | None) -> str:
    if tokenizer is None:
        return f"no tokenizer given: context {context} not checked against a tokenizer"
    if tokenizer.model_max_length is None:
        return f"the tokenizer sets no model_max_length; context {context} is not limited by it"
    if tokenizer.model_max_length < context:
        return (f"warning: the tokenizer's model_max_length is {tokenizer.model_max_length}, shorter than the context {context}; "
                "raise model_max_length in tokenizer_config.json or transformers will warn and truncate")
    if tokenizer.model_max_length > context:
        return f"the tokenizer allows {tokenizer.model_max_length} tokens, more than the context {context}: set model_max_length to {context}"
    return f"context {context} equals the tokenizer's model_max_length"


def scaling_path(spec: ArchitectureSpec, tokenizer: TokenizerInfo | None, vocab: int) -> list[dict[str, Any]]:
    """The same architecture family at each template size (e.g. 100M -> 350M -> 1B -> 7B)."""
    path = []
    for tpl in scale_templates():
        target = {"100M": 125_000_000, "350M": 350_000_000, "1B": 1_200_000_000, "7B": 8_000_000_000}.get(tpl["name"], tpl["range"][0])
        shaped = balanced_shape(tpl, target, vocab, spec.context_length, tokenizer)
        if shaped is None:  # the vocabulary alone outgrows this size
            continue
        n = est.count_params(shaped)["total"]
        tokens = scaling.optimal_tokens(n)
        path.append({
            "template": tpl["name"],
            "shape": f"{shaped.hidden_size} x {shaped.num_layers}",
            "heads": f"{shaped.num_heads}/{shaped.num_kv_heads}",
            "ffn_size": shaped.ffn_size,
            "params": n,
            "chinchilla_tokens": tokens,
            "compute_flops": est.flops(shaped)["training_per_token"] * tokens,
            "loss_hoffmann": scaling.predicted_loss(n, tokens),
        })
    return path


def _largest_fitting(memory: int, context: int | None, tokenizer: TokenizerInfo | None, vocab: int | None,
                     strategy: str, gpus: int) -> int:
    """Largest parameter count whose bf16 AdamW training (micro-batch 1, checkpointing) fits `memory` per GPU."""
    if not 2**28 <= memory <= 2**44:
        raise ArchsmithError("memory", f"must be between 256 MiB and 16 TiB per GPU, got {memory:,} bytes")

    def fits(n: int) -> bool:
        tpl = template_for(n)
        v = pad_vocab(tokenizer.vocab_size if tokenizer else (vocab or tpl["vocab_size"]))
        ctx = context or tpl["context_length"]
        s = balanced_shape(tpl, n, v, ctx, tokenizer)
        if s is None:  # no 2-256 layer shape reaches n: treat as not fitting, the search stays below it
            return False
        train = est.training_memory(s, 1, ctx, "bf16", "adamw", checkpointing=True)
        return est.sharded_memory(train, s, strategy, gpus)["total_bytes"] <= memory * USABLE_MEMORY

    low, high = MIN_PARAMS * 10, MAX_PARAMS
    if not fits(low):
        raise ArchsmithError("memory", f"{memory / 2**30:.2f} GiB per GPU cannot train even a {low:,}-parameter model at this context")
    while high / low > 1.01:
        mid = int(math.sqrt(low * high))
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low


def capacity_plan(spec: ArchitectureSpec, gpu: dict[str, Any], gpus: int, tokens: int, mfu: float,
                  micro_batch: int = 1) -> dict[str, Any]:
    """Training and inference memory per GPU by strategy, GPUs needed, time, checkpoints, KV cache."""
    limit = memory_bytes(gpu) * USABLE_MEMORY
    rows = []
    for ckpt in (False, True):
        train = est.training_memory(spec, micro_batch, spec.context_length, "bf16", "adamw", checkpointing=ckpt)
        for strategy in est.STRATEGIES[:-1]:  # fsdp full-shard equals zero3
            per = est.sharded_memory(train, spec, strategy, gpus)
            rows.append({**per, "checkpointing": ckpt, "fits": per["total_bytes"] <= limit})
    needed = {}
    for ckpt in (False, True):
        train = est.training_memory(spec, micro_batch, spec.context_length, "bf16", "adamw", checkpointing=ckpt)
        n = next((n for n in (2**k for k in range(17)) if est.sharded_memory(train, spec, "zero3", n)["total_bytes"] <= limit), None)
        needed["with_checkpointing" if ckpt else "without_checkpointing"] = n
    f = est.flops(spec, spec.context_length)  # model FLOPs: MFU excludes checkpoint recompute
    kv_rows = []
    weights = est.count_params(spec)["total"] * 2
    for ctx in sorted({min(2048, spec.context_length), spec.context_length}):
        per_req = est.kv_cache_bytes(spec, 1, ctx, "bf16")
        free = limit - weights
        kv_rows.append({"context": ctx, "bytes_per_request": per_req, "requests_per_gpu": max(0, int(free // per_req))})
    infer = {d: est.inference_memory(spec, 1, spec.context_length, d) for d in ("bf16", "int8", "int4")}
    return {
        "gpu": gpu,
        "gpus": gpus,
        "usable_fraction": USABLE_MEMORY,
        "usable_bytes": int(limit),
        "micro_batch": micro_batch,
        "strategies": rows,
        "gpus_needed_zero3": needed,
        "tokens": tokens,
        "train_flops": f["training_per_token"] * tokens,
        "train_time": est.training_time(f["training_per_token"] * tokens, gpu, gpus, mfu),
        "checkpoint": est.checkpoint_sizes(spec),
        "kv_cache": kv_rows,
        "inference": infer,
    }


def design_from_text(params: str | None = None, compute: str | None = None, memory: str | None = None,
                     context: int | None = None, tokenizer: str | None = None, gpu: str = "h100", gpus: int = 8,
                     tokens: str | None = None, mfu: float = DEFAULT_MFU, vocab: int | None = None) -> dict[str, Any]:
    """`design` from the strings people type ('1B', '1e21', '24GB', '100B', a tokenizer directory)."""
    from archsmith.tokenizer import read_tokenizer
    from archsmith.units import parse_bytes, parse_count

    if vocab is not None and not 1 <= vocab <= 1 << 22:
        raise ArchsmithError("vocab", f"must be in [1, {1 << 22}], got {vocab}")
    return design(
        params=parse_count(params, "params") if params else None,
        compute=float(parse_count(compute, "compute")) if compute else None,
        memory=parse_bytes(memory, "memory") if memory else None,
        context=context, tokenizer=read_tokenizer(tokenizer) if tokenizer else None, gpu=gpu, gpus=gpus,
        tokens=parse_count(tokens, "tokens") if tokens else None, mfu=mfu, vocab=vocab,
    )


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The JSON view of a design: candidates with their key numbers, the recommendation, the scaling path."""
    return {
        "target": result["target"],
        "template": result["template"]["name"],
        "vocab": result["vocab"],
        "context_check": result["context_check"],
        "candidates": [
            {"name": c.name, "spec": c.spec.to_dict(), "params": c.summary["params"]["total"], "shape": c.summary["shape"],
             "training_flops_per_token": c.summary["flops"]["training_per_token"], "train_tokens": c.summary["train_tokens"],
             "train_time_seconds": c.summary["train_time"]["seconds"], "memory_per_gpu_bytes": c.summary["memory_per_gpu"]["total_bytes"],
             "kv_cache_per_request_bytes": c.summary["kv_cache_per_request"], "pros": c.pros, "cons": c.cons}
            for c in result["candidates"]
        ],
        "recommended": result["recommended"].name,
        "rationale": result["rationale"],
        "scaling_path": result["scaling_path"],
    }
