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
from typing import Any, Callable

import yaml

from archsmith import estimate as est
from archsmith import layouts as parallel_layouts
from archsmith import peak, scaling
from archsmith.components import Components, tradeoffs
from archsmith.errors import ArchsmithError
from archsmith.gpus import get_gpu, memory_bytes
from archsmith.spec import MAX_CONTEXT, ArchitectureSpec
from archsmith.tokenizer import TokenizerInfo
from archsmith.units import human_bytes, human_count

# Hidden sizes we choose from: from 256 up, multiples of 128 so that every matmul tiles tensor cores
# and splits evenly for tensor parallelism; below, multiples of 64 for tiny models (CPU smoke runs).
HIDDEN_LADDER = (64, 128, 192, 256, 384, 512, 640, 768, 896, 1024, 1280, 1536, 1792, 2048, 2560, 3072, 3584, 4096,
                 5120, 6144, 7168, 8192, 10240, 12288, 16384)
FFN_MULTIPLE = 256  # FFN width multiple: tensor-core tiles and 8-way tensor-parallel splits (the width itself when narrower)
MIN_HEAD_DIM = 16  # narrower heads waste the attention kernels' tiles; tiny widths halve the template's head_dim down to this
VOCAB_MULTIPLE = 128  # pad the vocabulary so the embedding and lm_head matmuls tile evenly
MIN_PARAMS = 1_000_000
MAX_PARAMS = 2_000_000_000_000
MIN_TOKENS, MAX_TOKENS = 1_000_000, 10**16  # training tokens: below is no run, above is 1000x the largest published (15T)
DEFAULT_MFU = 0.40  # a well-tuned dense LM run on H100-class GPUs reaches 38-45% MFU (Llama 3 paper, torchtitan)
USABLE_MEMORY = 0.90  # leave 10% of device memory for the CUDA context, allocator fragmentation and buffers
MAX_MICRO_BATCH = 65536  # sequences per GPU per step; more is a typo
# What an engineer tries, least communication first: DDP, then sharding optimizer state (ZeRO-1), gradients (ZeRO-2),
# parameters (ZeRO-3, the footprint of FSDP full-shard); activation checkpointing (a third more compute) only after.
AUTO_STRATEGIES = ("ddp", "zero1", "zero2", "zero3")
STRATEGY_CHOICES = ("auto", *est.STRATEGIES)
TRAINING_DTYPE, TRAINING_OPTIMIZER = "bf16", "adamw"  # the regime every plan assumes: bf16 mixed precision, AdamW
MOE_AT_EQUAL_COMPUTE = Components(experts=8, top_k=2)  # the MoE candidate of a compute budget (Mixtral's 8 experts, top-2)


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
               tokenizer: TokenizerInfo | None = None, components: Components | None = None,
               by: str = "total") -> ArchitectureSpec | None:
    """A spec of width `hidden` whose depth (2 to 256 layers) is solved so its `by` parameters (total or active) are
    closest to `params`; None when no such depth exists. Without components: the Llama family."""
    base = _one_layer(tpl, hidden, vocab, context, kv_heads, tokenizer)
    if components is not None:
        return _solve_depth(components.builder(base), params, by)
    counts = est.count_params(base)
    fixed = counts["total"] - counts["per_layer"]
    layers = round((params - fixed) / counts["per_layer"])
    if layers < 2 or layers > 256:
        return None
    return base.replace(num_layers=layers)


def _solve_depth(build: Callable[[int], ArchitectureSpec], params: int, by: str) -> ArchitectureSpec | None:
    """The depth in [2, 256] whose `by` parameter count is closest to `params` (counts grow with depth: bisection)."""
    def count(layers: int) -> int:
        return est.count_params(build(layers))[by]

    if params < count(2) - (count(3) - count(2)) / 2 or params > count(256) + (count(256) - count(255)) / 2:
        return None  # the best depth lies outside [2, 256]
    low, high = 2, 256
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if count(mid) <= params else (low, mid)
    return build(min((low, high), key=lambda n: abs(count(n) - params)))


def _one_layer(tpl: dict[str, Any], hidden: int, vocab: int, context: int, kv_heads: int | None = None,
               tokenizer: TokenizerInfo | None = None) -> ArchitectureSpec:
    """The template's one-layer spec at width `hidden`: heads, KV heads, FFN width, vocabulary, special tokens."""
    head_dim = tpl["head_dim"]
    while hidden < 4 * head_dim and head_dim > MIN_HEAD_DIM:  # keep at least 4 heads on narrow widths
        head_dim //= 2
    heads = hidden // head_dim
    multiple = min(FFN_MULTIPLE, hidden)
    ffn = max(multiple, round(tpl["ffn_ratio"] * hidden / multiple) * multiple)
    return ArchitectureSpec(
        hidden_size=hidden, num_layers=1, num_heads=heads, num_kv_heads=_kv_heads(heads, kv_heads or tpl["kv_heads"]),
        head_dim=head_dim, ffn_size=ffn, vocab_size=vocab, context_length=context,
        tie_embeddings=tpl["tie_embeddings"], rope_theta=tpl["rope_theta"], norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id if tokenizer else None,
        eos_token_id=tokenizer.eos_token_id if tokenizer else None,
        pad_token_id=tokenizer.pad_token_id if tokenizer else None,
    )


@dataclass
class Candidate:
    name: str
    spec: ArchitectureSpec
    summary: dict[str, Any] = field(default_factory=dict)
    pros: list[str] = field(default_factory=list)
    cons: list[str] = field(default_factory=list)


def usable_memory(gpu: dict[str, Any], budget: int | None = None) -> dict[str, Any]:
    """Bytes per GPU a training plan may use: the `--memory` budget, capped by the device's usable memory."""
    device = int(memory_bytes(gpu) * USABLE_MEMORY)
    limit = device if budget is None else min(budget, device)
    device_words = f"{USABLE_MEMORY:.0%} of the {gpu['memory_gib']} GiB of one {gpu['id']}"
    source = device_words if limit == device else f"the --memory budget; one {gpu['id']} has {human_bytes(device)} usable"
    return {"bytes": limit, "budget_bytes": budget, "device_usable_bytes": device, "usable_fraction": USABLE_MEMORY,
            "why": f"{human_bytes(limit)} per GPU ({source})"}


def memory_per_gpu(spec: ArchitectureSpec, strategy: str, checkpointing: bool, gpus: int, micro_batch: int,
                   seq: int) -> dict[str, Any]:
    """Training memory per GPU (bf16 mixed precision, AdamW) under one data-parallel strategy: the sharded state of
    `sharded_memory` and what one step of archsmith train holds above it at its peak (`peak.per_gpu`)."""
    train = est.training_memory(spec, micro_batch, seq, TRAINING_DTYPE, TRAINING_OPTIMIZER, checkpointing=checkpointing)
    step = peak.training_peak(spec, micro_batch, seq, TRAINING_DTYPE, checkpointing)
    return peak.per_gpu(step, train, est.sharded_memory(train, spec, strategy, gpus))


def choose_training(spec: ArchitectureSpec, gpus: int, micro_batch: int, seq: int, strategy: str,
                    checkpointing: bool | None, limit: int) -> dict[str, Any]:
    """The strategy and checkpointing a plan assumes: the user's, or for 'auto' / None the first that fits `limit`
    bytes per GPU in the order an engineer tries them (AUTO_STRATEGIES without, then with, checkpointing). When
    nothing fits, the most frugal of the allowed settings, with fits False."""
    strategies = (AUTO_STRATEGIES if gpus > 1 else ("ddp",)) if strategy == "auto" else (strategy,)
    options = [(s, c) for c in ((False, True) if checkpointing is None else (checkpointing,)) for s in strategies]
    chosen = next(((s, c) for s, c in options if memory_per_gpu(spec, s, c, gpus, micro_batch, seq)["total_bytes"] <= limit), None)
    s, c = chosen or options[-1]
    return {"strategy": s, "checkpointing": c, "micro_batch": micro_batch, "seq": seq, "gpus": gpus,
            "dtype": TRAINING_DTYPE, "optimizer": TRAINING_OPTIMIZER, "fits": chosen is not None, "limit_bytes": limit,
            "strategy_set_by": "auto" if strategy == "auto" else "user", "checkpointing_set_by": "auto" if checkpointing is None else "user"}


def gpus_needed(spec: ArchitectureSpec, micro_batch: int, seq: int, checkpointing: bool, limit: int) -> int | None:
    """Fewest GPUs (a power of two up to 65536) whose ZeRO-3 / FSDP shard of the training state fits `limit`."""
    return next((n for n in (2**k for k in range(17))
                 if memory_per_gpu(spec, "zero3", checkpointing, n, micro_batch, seq)["total_bytes"] <= limit), None)


def _setting_words(setup: dict[str, Any]) -> str:
    """'zero1 + checkpointing over 8 GPUs at micro-batch 1 x seq 2048'."""
    return (f"{setup['strategy']}{' + checkpointing' if setup['checkpointing'] else ''} over {setup['gpus']} GPU(s) "
            f"at micro-batch {setup['micro_batch']} x seq {setup['seq']}")


def _assumptions(setup: dict[str, Any], limit: dict[str, Any]) -> list[str]:
    """What 'memory per GPU' assumes, in words, for the CLI and the reports."""
    auto = ("the first of " + ", ".join(AUTO_STRATEGIES) + " that fits" if setup["gpus"] > 1 else "one GPU: nothing to shard")
    strategy = f"{setup['strategy']} ({'auto: ' + auto if setup['strategy_set_by'] == 'auto' else 'given'})"
    ckpt = "with activation checkpointing" if setup["checkpointing"] else "no activation checkpointing"
    ckpt += " (auto: only when nothing fits without)" if setup["checkpointing_set_by"] == "auto" else " (given)"
    return [
        f"memory per GPU assumes bf16 mixed precision (fp32 master weights) and AdamW, micro-batch {setup['micro_batch']} "
        f"x {setup['seq']} tokens per GPU, {strategy} over {setup['gpus']} GPU(s), {ckpt}",
        f"memory limit {limit['why']}",
    ]


COMPUTE_TOLERANCE = 1.1  # a plan whose 6 N D is within 10% of the compute budget spends it; further off, a warning


def _compute_check(compute: float, params: int, tokens: int, chinchilla: dict[str, float],
                   unique: int | None) -> list[str]:
    """A warning when the size and the given training tokens do not spend the compute budget (6 N D, Chinchilla's
    count, off by more than COMPUTE_TOLERANCE either way)."""
    used = scaling.FLOPS_PER_PARAM_TOKEN * params * tokens
    if 1 / COMPUTE_TOLERANCE <= used / compute <= COMPUTE_TOLERANCE:
        return []
    words = (f"--compute {compute:.3g} and --tokens {human_count(tokens)} disagree: {human_count(params)} parameters (sized by "
             f"the compute) on {human_count(tokens)} tokens is {tokens / params:.1f} tokens per parameter and 6ND = "
             f"{used:.3g} FLOPs, {used / compute:.0%} of the budget; Chinchilla spends the budget as "
             f"{human_count(chinchilla['params'])} parameters on {human_count(chinchilla['tokens'])} tokens")
    if unique is None:
        words += ("; if the tokens are the unique data you have, give them as --unique-tokens (not --tokens): the size and "
                  "the epochs then follow Muennighoff et al. 2023's data-constrained law")
    return [words]


def _repetition_check(data: dict[str, Any]) -> list[str]:
    """A warning when the run repeats its unique data past the epochs where repetition still pays (Muennighoff et al.)."""
    epochs = data["epochs"]
    if epochs <= scaling.VALUABLE_EPOCHS:
        return []
    opt = data["optimum"]
    past = (f"past ~{scaling.R_STAR_DATA:.0f} epochs more repetition adds almost nothing" if epochs > scaling.R_STAR_DATA
            else f"past ~{scaling.VALUABLE_EPOCHS} epochs repeated tokens are worth less than unique ones")
    return [f"{epochs:.1f} epochs of {human_count(data['unique_tokens'])} unique tokens: {past} (Muennighoff et al. 2023): the "
            f"{human_count(data['tokens'])} training tokens are worth {human_count(data['effective_tokens'])} unique tokens "
            f"({data['tokens_lost_fraction']:.0%} lost), predicted loss {data['loss_penalty']:+.3f} over the same run on unique "
            f"data; for this compute the law's optimum is {human_count(opt['params'])} parameters on {human_count(opt['tokens'])} "
            f"tokens ({opt['epochs']:.1f} epochs), or find more unique data"]


def data_lines(data: dict[str, Any] | None) -> list[str]:
    """The data-constrained report in words (terminal and reports); empty without --unique-tokens."""
    if data is None:
        return []
    opt = data["optimum"]
    return [f"{human_count(data['tokens'])} training tokens over {human_count(data['unique_tokens'])} unique tokens: "
            f"{data['epochs']:.2f} epochs, worth {human_count(data['effective_tokens'])} unique tokens "
            f"({data['tokens_lost_fraction']:.1%} lost to repetition; the parameters are worth {human_count(data['effective_params'])}, "
            f"{data['params_lost_fraction']:.1%} less, beyond the unique data's compute-optimal size); predicted loss "
            f"{data['loss']:.3f}, {data['loss_penalty']:+.4f} over the same run on unique data",
            f"data-constrained optimum for the same compute ({data['compute_flops']:.3g} FLOPs, 6ND): {human_count(opt['params'])} "
            f"parameters on {human_count(opt['tokens'])} tokens, {opt['epochs']:.2f} epochs, predicted loss {opt['loss']:.3f}",
            f"source: {data['source']}"]


def _summarise(c: Candidate, tokens: int | None, gpu: dict[str, Any], mfu: float, setup: dict[str, Any]) -> None:
    spec = c.spec
    counts = est.count_params(spec)
    f = est.flops(spec, setup["seq"])  # model FLOPs at the training length: MFU excludes checkpoint recompute
    train_tokens = tokens or scaling.optimal_tokens(counts["total"])
    per_gpu = memory_per_gpu(spec, setup["strategy"], setup["checkpointing"], setup["gpus"], setup["micro_batch"], setup["seq"])
    c.summary = {
        "params": counts,
        "flops": f,
        "shape": f"{spec.hidden_size} x {spec.num_layers}",
        "aspect": round(spec.hidden_size / spec.num_layers, 1),
        "train_tokens": train_tokens,
        "tokens_source": "given" if tokens else "Chinchilla, 20 per parameter",
        "tokens_per_param": round(train_tokens / counts["total"], 1),
        "train_flops": f["training_per_token"] * train_tokens,
        "train_time": est.training_time(f["training_per_token"] * train_tokens, gpu, setup["gpus"], mfu),
        "memory_per_gpu": per_gpu,
        "fits": per_gpu["total_bytes"] <= setup["limit_bytes"],
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
    for c in cands[1:]:
        if c.spec.moe is not None and base.spec.moe is None:
            total, active = c.summary["params"]["total"], c.summary["params"]["active"]
            c.pros.append(f"{total / base.summary['params']['total']:.1f}x the parameters for {active / base.summary['params']['active']:.2f}x "
                          "the FLOPs per token: more capacity from the same compute (Switch Transformer, Mixtral)")
            c.cons.append(f"all {total:,} parameters' weights, gradients and optimizer state are held: "
                          f"{human_bytes(c.summary['memory_per_gpu']['total_bytes'])} per GPU; the router needs a load-balancing loss")
    base.pros.append(f"aspect {base.summary['aspect']} hidden per layer, in the range where loss is flat in shape (Kaplan et al. 2020)")
    base.pros.append(f"GQA group {base.spec.gqa_group}: KV cache {base.spec.num_kv_heads}/{base.spec.num_heads} of full multi-head attention")


def design(params: int | str | None = None, compute: float | None = None, memory: int | None = None,
           context: int | None = None, tokenizer: TokenizerInfo | None = None, gpu: str = "h100", gpus: int = 8,
           tokens: int | None = None, mfu: float = DEFAULT_MFU, vocab: int | None = None, batch: int = 1,
           seq: int | None = None, strategy: str = "auto", checkpointing: bool | None = None,
           components: Components | None = None, global_batch: int | None = None,
           layouts: bool | None = None, unique_tokens: int | None = None) -> dict[str, Any]:
    """Design a decoder-only LM. Exactly one of params / compute / memory (bytes per GPU) sets the size.

    `components` (MoE, sliding windows, positions, norms, attention) change the Llama defaults; the design is then
    written as the registry family that expresses them, each choice and adopted change costed in the report.

    `batch` (micro-batch per GPU), `seq` (tokens per sequence; default the context), `strategy` and `checkpointing`
    (None: auto) set the training plan behind "memory per GPU"; a memory budget never yields a design whose plan
    exceeds min(budget, usable device memory).

    `global_batch` (tokens per step; default one micro-batch per GPU) and `layouts` size tensor / pipeline / context
    parallel layouts of the recommended shape (`archsmith.layouts`): True always, None (auto) when plain data
    parallelism does not fit the GPUs or cannot give each GPU a micro-batch of the global batch, False never.

    The recipe (`training_recipe`: tokens per step, micro-batch x accumulation, learning rate, warmup, decay, steps)
    sizes the global batch from DeepSeek LLM's fit unless `global_batch` is given; parallel layouts split the same batch.

    `unique_tokens` (the unique data available): with a compute budget and no `tokens`, the size and tokens minimise
    Muennighoff et al.'s data-constrained loss (`scaling.data_constrained_optimum`); with any target, `data` states
    the epochs and what repetition costs, and warnings say when epochs pass where repetition stops paying."""
    given = [name for name, v in (("params", params), ("compute", compute), ("memory", memory)) if v is not None]
    if len(given) != 1:
        raise ArchsmithError("params", "give exactly one of --params, --compute or --memory")
    if not isinstance(gpus, int) or not 1 <= gpus <= 65536:
        raise ArchsmithError("gpus", f"must be in [1, 65536], got {gpus}")
    if not 0 < mfu <= 1:
        raise ArchsmithError("mfu", f"must be in (0, 1], got {mfu}")
    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= MAX_MICRO_BATCH:
        raise ArchsmithError("batch", f"micro-batch per GPU must be an integer in [1, {MAX_MICRO_BATCH}], got {batch!r}")
    for name, value in (("context", context), ("seq", seq)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 128 <= value <= MAX_CONTEXT):
            raise ArchsmithError(name, f"must be in [128, {MAX_CONTEXT}] tokens, got {value!r}")
    if seq is not None and context is not None and seq > context:
        raise ArchsmithError("seq", f"must be <= the context {context}, got {seq}")
    if strategy not in STRATEGY_CHOICES:
        raise ArchsmithError("strategy", f"must be one of {', '.join(STRATEGY_CHOICES)}; got {strategy!r}")
    if checkpointing not in (None, True, False):
        raise ArchsmithError("checkpointing", f"must be true, false or auto (null); got {checkpointing!r}")
    for name, value in (("tokens", tokens), ("unique_tokens", unique_tokens)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not MIN_TOKENS <= value <= MAX_TOKENS):
            raise ArchsmithError(name, f"must be an integer in [{MIN_TOKENS:,}, {MAX_TOKENS:,}] tokens, got {value!r}")
    device = get_gpu(gpu)
    limit = usable_memory(device, memory)
    tokens_given = tokens
    target: dict[str, Any] = {"by": given[0]}
    if compute is not None:
        if not 1e15 <= compute <= 1e28:
            raise ArchsmithError("compute", f"must be in [1e15, 1e28] FLOPs, got {compute:g}")
        opt = scaling.optimal_for_compute(compute)
        target.update(compute_flops=compute, chinchilla=opt)
        if unique_tokens is not None and tokens is None:  # the unique data limits: Muennighoff et al.'s optimum
            dc = scaling.data_constrained_optimum(compute, unique_tokens)
            params, tokens = int(dc["params"]), int(dc["tokens"])
            target.update(data_constrained=dc)
        else:
            params = int(opt["params"])
            tokens = tokens or int(opt["tokens"])
    if memory is not None:
        if not 2**28 <= memory <= 2**44:
            raise ArchsmithError("memory", f"must be between 256 MiB and 16 TiB per GPU, got {memory:,} bytes")
        params = _largest_fitting(limit, gpus, batch, seq, strategy, checkpointing, context, tokenizer, vocab, components)
        target.update(memory_bytes=memory, limit_bytes=limit["bytes"])
    params = int(params)
    if not MIN_PARAMS <= params <= MAX_PARAMS:
        raise ArchsmithError("params", f"must be in [{MIN_PARAMS:,}, {MAX_PARAMS:,}], got {params:,}")
    target["params"] = params
    tpl = template_for(params)
    context = _context(context, seq, tpl)
    raw_vocab = tokenizer.vocab_size if tokenizer else (vocab or tpl["vocab_size"])
    padded = pad_vocab(raw_vocab)

    def make(hidden: int, kv: int | None = None) -> ArchitectureSpec | None:
        return shape_spec(tpl, hidden, params, padded, context, kv, tokenizer, components)

    balanced = balanced_shape(tpl, params, padded, context, tokenizer, components)
    if balanced is None:
        raise ArchsmithError("params", _no_shape_reason(tpl, params, padded, context))
    balanced_h = balanced.hidden_size
    i = HIDDEN_LADDER.index(balanced_h)
    cands: list[Candidate] = [Candidate("balanced", balanced)]
    if i > 0 and (s := make(HIDDEN_LADDER[i - 1])) is not None:
        cands.append(Candidate("deep-narrow", s))
    if i + 1 < len(HIDDEN_LADDER) and (s := make(HIDDEN_LADDER[i + 1])) is not None:
        cands.append(Candidate("wide-shallow", s))
    base = cands[0].spec
    if (components is None or components.attention == "gqa") and base.num_kv_heads > 1 \
            and (s := make(balanced_h, max(1, base.num_kv_heads // 2))) is not None and s.num_kv_heads != base.num_kv_heads:
        cands.append(Candidate("balanced-lean-kv", s))
    if compute is not None and components is None and (s := shape_spec(tpl, balanced_h, params, padded, context, None, tokenizer,
                                                                        MOE_AT_EQUAL_COMPUTE, by="active")) is not None:
        cands.append(Candidate("moe-equal-compute", s))  # a compute budget buys active parameters: MoE adds capacity
    setup = choose_training(balanced, gpus, batch, seq or context, strategy, checkpointing, limit["bytes"])
    if global_batch is not None:
        parallel_layouts.check_global_batch(global_batch, setup["seq"])
    for c in cands:
        _summarise(c, tokens, device, mfu, setup)
    _tradeoffs(cands)
    for c in cands[1:]:
        if not c.summary["fits"]:
            c.cons.append(f"needs {human_bytes(c.summary['memory_per_gpu']['total_bytes'])} per GPU under the same plan, "
                          f"more than the {limit['why']}")
    recommended = cands[0]
    rationale = [
        f"{recommended.summary['params']['total']:,} parameters, {100 * abs(recommended.summary['params']['total'] / params - 1):.1f}% from the {params:,} target",
        f"aspect {recommended.summary['aspect']} (hidden / layers): of the ladder's widths, the one whose solved depth comes "
        f"nearest the {tpl['name']} template's target aspect {tpl['aspect']}, like {', '.join(tpl['examples'])}",
        "GQA + SwiGLU + RoPE + RMSNorm: the Llama-family defaults that transformers, vLLM and every major trainer run fast"
        if components is None else
        f"{components.words()} as asked, on the Llama defaults otherwise; written as {recommended.spec.model_type}, the registry "
        "family that expresses it with the fewest further changes (each costed under 'component choices')",
    ]
    if memory is not None:
        rationale.append(f"the largest size whose training fits {limit['why']}, with {_setting_words(setup)}")
    warnings = []
    if not setup["fits"]:
        need = recommended.summary["memory_per_gpu"]["total_bytes"]
        more = gpus_needed(balanced, batch, setup["seq"], True, limit["bytes"])
        warnings.append(f"does not fit: needs {human_bytes(need)} per GPU with {_setting_words(setup)}, more than the "
                        f"{limit['why']}; " + (f"ZeRO-3 / FSDP with checkpointing fits it on {more} GPUs, or " if more else "")
                        + "lower --seq or --batch")
    context_note = _context_check(context, tokenizer)
    train_tokens = recommended.summary["train_tokens"]
    recipe = training_recipe(balanced, setup, train_tokens, global_batch)
    one_each = gpus * batch * setup["seq"]  # tokens when every GPU takes one micro-batch: plain data parallelism
    layout_plan = None
    if layouts or (layouts is None and (not setup["fits"] or (global_batch or one_each) < one_each)):
        layout_plan = parallel_layouts.plan(balanced, device, gpus, setup["seq"], global_batch or recipe["tokens_per_step"],
                                            batch, mfu, limit["bytes"])
        layout_plan["train_tokens"] = train_tokens
        if layout_plan["recommended"] is None:
            warnings.append(f"no tensor / pipeline / context parallel layout of {gpus} GPUs fits either; see "
                            "'Parallel layouts' for why (add GPUs, lower --seq, or change --global-batch)")
        else:
            recipe = recipe_on_layout(recipe, balanced, layout_plan["recommended"])
    n_total = recommended.summary["params"]["total"]
    if compute is not None and tokens_given is not None:
        warnings.extend(_compute_check(compute, n_total, train_tokens, target["chinchilla"], unique_tokens))
    data = None
    if unique_tokens is not None:
        data = scaling.data_constrained(n_total, train_tokens, unique_tokens)
        warnings.extend(_repetition_check(data))
        if "data_constrained" in target:
            opt = target["chinchilla"]
            chinchilla_loss = scaling.data_constrained_loss(opt["params"], opt["tokens"], unique_tokens)
            rationale.insert(1, f"sized for {human_count(unique_tokens)} unique tokens by Muennighoff et al. 2023's "
                                f"data-constrained law: {human_count(n_total)} parameters for {human_count(train_tokens)} tokens "
                                f"({data['epochs']:.2f} epochs), predicted loss {data['loss']:.3f}, against {chinchilla_loss:.3f} "
                                f"for Chinchilla's {human_count(opt['params'])} on {human_count(opt['tokens'])} "
                                f"({opt['tokens'] / unique_tokens:.2f} epochs) of the same data")
    return {
        "target": target,
        "tokens": tokens,  # training tokens given or sized by the compute budget (None: Chinchilla per candidate)
        "template": tpl,
        "vocab": {"given": raw_vocab, "padded": padded, "padding": padded - raw_vocab, "multiple": VOCAB_MULTIPLE},
        "tokenizer": tokenizer.to_dict() if tokenizer else None,
        "context_check": context_note,
        "gpu": device,
        "gpus": gpus,
        "limit": limit,
        "training": setup,
        "strategy": setup["strategy"],
        "assumptions": _assumptions(setup, limit),
        "warnings": warnings,
        "mfu": mfu,
        "candidates": cands,
        "recommended": recommended,
        "rationale": rationale,
        "search": None,  # set by design_from_text(search=CORPUS): the study behind a measured recommendation
        "components": None if components is None else {
            "asked": components.words(), "family": recommended.spec.model_type,
            "tradeoffs": tradeoffs(recommended.spec, _one_layer(tpl, balanced_h, padded, context, None, tokenizer), components)},
        "scaling_path": scaling_path(recommended.spec, tokenizer, padded, components),
        "layouts": layout_plan,  # tensor / pipeline / context parallel layouts of the recommended shape, or None
        "global_batch": global_batch,
        "recipe": recipe,  # tokens per step, micro-batch x accumulation, learning rate, warmup, decay, steps
        "recipe_lines": _recipe_lines(recipe, larger_micro_batch(balanced, setup, recipe)),
        "data": data,  # with unique_tokens: epochs, what repetition costs, the data-constrained optimum
    }


def _context(context: int | None, seq: int | None, tpl: dict[str, Any]) -> int:
    """The context length: the user's, else the template's (at least the training sequence length)."""
    return context if context is not None else max(tpl["context_length"], seq or 0)


def _no_shape_reason(tpl: dict[str, Any], params: int, vocab: int, context: int) -> str:
    """Why no ladder width reaches `params` with 2 to 256 layers, in numbers."""
    smallest = est.count_params(_one_layer(tpl, HIDDEN_LADDER[0], vocab, context).replace(num_layers=2))
    largest = est.count_params(_one_layer(tpl, HIDDEN_LADDER[-1], vocab, context).replace(num_layers=256))["total"]
    if params < smallest["total"]:
        embed = smallest["embedding"] + smallest["lm_head"]
        if embed >= params:
            return (f"the vocabulary of {vocab:,} tokens alone needs {embed:,} embedding parameters at the narrowest width "
                    f"{HIDDEN_LADDER[0]}, more than the {params:,} target; use a smaller vocabulary (--vocab or a smaller tokenizer) or raise params")
        return (f"the smallest shape ({HIDDEN_LADDER[0]} x 2 layers, vocabulary {vocab:,}) has {smallest['total']:,} parameters, "
                f"more than the {params:,} target; raise params or lower the vocabulary")
    if params > largest:
        return f"the largest shape ({HIDDEN_LADDER[-1]} x 256 layers) has {largest:,} parameters, fewer than the {params:,} target"
    return f"no width from {HIDDEN_LADDER[0]} to {HIDDEN_LADDER[-1]} reaches {params:,} parameters with 2 to 256 layers"


def balanced_shape(tpl: dict[str, Any], params: int, vocab: int, context: int, tokenizer: TokenizerInfo | None = None,
                   components: Components | None = None) -> ArchitectureSpec | None:
    """The ladder width whose solved depth keeps the template's width-to-depth aspect best (the first on a tie);
    None when no shape of 2 to 256 layers reaches `params`."""
    shapes = [s for h in HIDDEN_LADDER if (s := shape_spec(tpl, h, params, vocab, context, None, tokenizer, components)) is not None]
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


def scaling_path(spec: ArchitectureSpec, tokenizer: TokenizerInfo | None, vocab: int,
                 components: Components | None = None) -> list[dict[str, Any]]:
    """The same architecture family at each template's nominal size (10M -> 100M -> 350M -> 1B -> 7B), each shaped
    exactly as `design(params=<that size>)` shapes it with this vocabulary."""
    from archsmith.units import parse_count

    path = []
    for tpl in scale_templates():
        target = parse_count(tpl["name"], "template")
        shaped = balanced_shape(tpl, target, vocab, spec.context_length, tokenizer, components)
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


def _largest_fitting(limit: dict[str, Any], gpus: int, micro_batch: int, seq: int | None, strategy: str,
                     checkpointing: bool | None, context: int | None, tokenizer: TokenizerInfo | None, vocab: int | None,
                     components: Components | None = None) -> int:
    """Largest parameter count whose design (the balanced shape `design` would recommend) trains within `limit` per GPU
    under the allowed strategies and checkpointing. Binary search on a 1% grid; every size it returns was checked."""

    def plan(n: int) -> tuple[ArchitectureSpec, dict[str, Any]] | None:
        tpl = template_for(n)
        v = pad_vocab(tokenizer.vocab_size if tokenizer else (vocab or tpl["vocab_size"]))
        ctx = _context(context, seq, tpl)
        s = balanced_shape(tpl, n, v, ctx, tokenizer, components)
        if s is None:  # no 2-256 layer shape reaches n: not a design
            return None
        return s, choose_training(s, gpus, micro_batch, seq or ctx, strategy, checkpointing, limit["bytes"])

    low = MIN_PARAMS
    while (first := plan(low)) is None and low < MAX_PARAMS:  # the smallest size that has a shape at all
        low *= 2
    if first is None:
        raise ArchsmithError("params", "no shape of 2 to 256 layers exists for this vocabulary")
    spec, setup = first
    if not setup["fits"]:
        per = memory_per_gpu(spec, setup["strategy"], setup["checkpointing"], gpus, micro_batch, setup["seq"])
        hint = "lower --seq or --batch" + ("" if per["activations_bytes"] >= limit["bytes"] else ", or add GPUs")
        raise ArchsmithError("memory", f"even a {human_count(est.count_params(spec)['total'])}-parameter model "
                             f"({spec.hidden_size} x {spec.num_layers}) needs {human_bytes(per['total_bytes'])} per GPU with "
                             f"{_setting_words(setup)}, more than the {limit['why']}; {hint}")
    high = MAX_PARAMS
    while high / low > 1.01:
        mid = int(math.sqrt(low * high))
        found = plan(mid)
        low, high = (mid, high) if found is not None and found[1]["fits"] else (low, mid)
    return low


def capacity_plan(spec: ArchitectureSpec, gpu: dict[str, Any], gpus: int, tokens: int, mfu: float,
                  micro_batch: int = 1, seq: int | None = None, limit: dict[str, Any] | None = None,
                  setup: dict[str, Any] | None = None) -> dict[str, Any]:
    """Training and inference memory per GPU by strategy, GPUs needed, time, checkpoints, KV cache.

    `limit` (from `usable_memory`) is what "fits" means; `setup` (from `choose_training`) marks the row the design assumes."""
    seq = seq or spec.context_length
    limit = limit or usable_memory(gpu)
    cap = limit["bytes"]
    rows = []
    for ckpt in (False, True):
        for strategy in est.STRATEGIES[:-1]:  # fsdp full-shard equals zero3
            per = memory_per_gpu(spec, strategy, ckpt, gpus, micro_batch, seq)
            chosen = setup is not None and setup["checkpointing"] == ckpt and {"fsdp": "zero3"}.get(setup["strategy"], setup["strategy"]) == strategy
            rows.append({**per, "checkpointing": ckpt, "fits": per["total_bytes"] <= cap, "chosen": chosen})
    needed = {("with_checkpointing" if ckpt else "without_checkpointing"): gpus_needed(spec, micro_batch, seq, ckpt, cap)
              for ckpt in (False, True)}
    f = est.flops(spec, seq)  # model FLOPs: MFU excludes checkpoint recompute
    kv_rows = []
    weights = est.count_params(spec)["total"] * 2
    for ctx in sorted({min(2048, spec.context_length), spec.context_length}):
        per_req = est.kv_cache_bytes(spec, 1, ctx, "bf16")
        kv_rows.append({"context": ctx, "bytes_per_request": per_req, "requests_per_gpu": max(0, int((cap - weights) // per_req))})
    infer = {d: est.inference_memory(spec, 1, spec.context_length, d) for d in ("bf16", "int8", "int4")}
    return {
        "gpu": gpu,
        "gpus": gpus,
        "usable_fraction": USABLE_MEMORY,
        "usable_bytes": cap,
        "limit": limit,
        "micro_batch": micro_batch,
        "seq": seq,
        "strategies": rows,
        "gpus_needed_zero3": needed,
        "tokens": tokens,
        "train_flops": f["training_per_token"] * tokens,
        "train_time": est.training_time(f["training_per_token"] * tokens, gpu, gpus, mfu),
        "checkpoint": est.checkpoint_sizes(spec),
        "kv_cache": kv_rows,
        "inference": infer,
    }


# ---- the training recipe -----------------------------------------------------------------------------

def training_recipe(spec: ArchitectureSpec, setup: dict[str, Any], tokens: int, global_batch: int | None = None) -> dict[str, Any]:
    """The run a plan launches, under its memory plan `setup` (`choose_training`: micro-batch, seq, GPUs, strategy).

    Tokens per step: `global_batch` (tokens) when given, else DeepSeek LLM's B_opt for C = M x `tokens` (`scaling.
    batch_and_lr`), rounded to micro_batch x grad_accum x gpus x seq with grad_accum >= 1 (so never below one micro-batch
    per GPU). Steps cover `tokens`; the peak learning rate is the fit's for the run's compute (M x steps x tokens per
    step), the warmup and cosine decay `scaling`'s (what `archsmith train` uses when no --lr / --warmup is given)."""
    seq, gpus, micro = setup["seq"], setup["gpus"], setup["micro_batch"]
    per_flops = scaling.non_embedding_flops(spec, seq)
    fit = scaling.batch_and_lr(per_flops * tokens)
    target = global_batch if global_batch is not None else fit["batch_tokens"]
    unit = micro * gpus * seq  # one micro-batch on every GPU
    accum = max(1, round(target / unit))
    if global_batch is not None:
        source = f"the given --global-batch of {global_batch:,} tokens"
    else:
        source = (f"DeepSeek LLM's (2024) fit B_opt = {scaling.BATCH_FIT[0]} C^{scaling.BATCH_FIT[1]} gives "
                  f"{fit['batch_tokens_fit']:,.0f} tokens at C = {fit['compute_flops']:.3g} FLOPs ({human_count(per_flops)} "
                  f"non-embedding FLOPs per token x {human_count(tokens)} tokens)"
                  + (f", capped at {scaling.MAX_BATCH_TOKENS:,} (Llama 3 405B's final batch, the largest published)"
                     if fit["batch_clamped"] else ""))
    return _recipe(spec, tokens, per_flops, micro, accum, gpus, gpus, seq, target, source)


def _recipe(spec: ArchitectureSpec, tokens: int, per_flops: int, micro: int, accum: int, data_parallel: int, gpus: int,
            seq: int, target: float, source: str) -> dict[str, Any]:
    """A recipe of micro x accum x data_parallel x seq tokens per step: steps, learning rate, warmup, decay, in words."""
    per_step = micro * accum * data_parallel * seq
    steps = max(1, math.ceil(tokens / per_step))
    fit = scaling.batch_and_lr(per_flops * steps * per_step)
    warmup = scaling.warmup_steps(steps)
    ranks = ("GPU" if gpus == 1 else "GPUs") if data_parallel == gpus else "data-parallel ranks"
    split = f"micro-batch {micro} x {accum} accumulation steps x {data_parallel} {ranks} x {seq} tokens"
    if per_step == round(target):
        batch_words = f"{per_step:,} tokens per step = {split}; {source}"
    elif accum == 1 and per_step > target:
        batch_words = f"{per_step:,} tokens per step = {split}; {source}: less than one micro-batch per GPU, so raised to one each"
    else:
        batch_words = f"{per_step:,} tokens per step = {split}; {source}, rounded to whole accumulation steps"
    lr_words = (f"peak learning rate {fit['lr']:g}: DeepSeek LLM's (2024) fit eta_opt = {scaling.LR_FIT[0]} C^{scaling.LR_FIT[1]} "
                f"gives {fit['lr_fit']:.3g} at C = {fit['compute_flops']:.3g} FLOPs (the run's steps x tokens per step)"
                + (f", clamped to [{scaling.LR_RANGE[0]:g}, {scaling.LR_RANGE[1]:g}]" if fit["lr_clamped"] else ""))
    schedule_words = (f"linear warmup over {warmup:,} steps (5% of the run, at most {scaling.MAX_WARMUP:,}), then cosine decay "
                      f"to {scaling.MIN_LR_RATIO:.0%} of the peak ({fit['lr'] * scaling.MIN_LR_RATIO:.3g}) at step {steps:,}; "
                      "AdamW, weight decay 0.1, gradient clipping 1.0")
    return {
        "tokens_per_step": per_step, "micro_batch": micro, "grad_accum": accum, "gpus": gpus, "data_parallel": data_parallel,
        "seq": seq, "sequences_per_step": per_step // seq, "steps": steps, "tokens": tokens, "trained_tokens": steps * per_step,
        "lr": fit["lr"], "warmup_steps": warmup, "schedule": scaling.SCHEDULE, "min_lr_ratio": scaling.MIN_LR_RATIO,
        "compute_flops": fit["compute_flops"], "non_embedding_flops_per_token": per_flops,
        "batch_tokens_asked": target, "batch_source": source, "lr_fit": fit["lr_fit"], "lr_clamped": fit["lr_clamped"],
        "layout": None, "words": [batch_words, lr_words, schedule_words],
    }


def recipe_on_layout(recipe: dict[str, Any], spec: ArchitectureSpec, row: dict[str, Any]) -> dict[str, Any]:
    """`recipe` run on the parallel layout `row` (`layouts.layout`): its micro-batch, micro-batches per step and
    data-parallel degree split the layout's global batch (the recipe's, unless the user gave --global-batch)."""
    out = _recipe(spec, recipe["tokens"], recipe["non_embedding_flops_per_token"], row["micro_batch"], row["micro_batches"],
                  row["dp"], row["gpus"], row["seq"], recipe["batch_tokens_asked"], recipe["batch_source"])
    out["layout"] = {k: row[k] for k in ("name", "tp", "pp", "cp", "dp", "schedule", "recompute")}
    out["words"][0] += (f"; on the {row['name']} layout each model replica spans {row['gpus'] // row['dp']} GPU(s) "
                        f"(tp x pp x cp), so {row['dp']} data-parallel rank(s) split the batch")
    return out


def larger_micro_batch(spec: ArchitectureSpec, setup: dict[str, Any], recipe: dict[str, Any]) -> dict[str, Any] | None:
    """The largest power-of-two micro-batch above the plan's, at most the sequences each GPU takes per step, that still
    fits the plan's limit under its strategy and checkpointing (fewer accumulation steps); None when none does."""
    if not setup["fits"] or recipe["layout"] is not None:
        return None
    per_gpu = recipe["micro_batch"] * recipe["grad_accum"]
    best = None
    m = setup["micro_batch"] * 2
    while m <= per_gpu:
        need = memory_per_gpu(spec, setup["strategy"], setup["checkpointing"], setup["gpus"], m, setup["seq"])["total_bytes"]
        if need > setup["limit_bytes"]:
            break
        best = {"micro_batch": m, "bytes": need}
        m *= 2
    return best


def recipe_flags(recipe: dict[str, Any]) -> list[str]:
    """The `archsmith train` flags of the recipe's optimizer schedule (the batch flags come with the launch command)."""
    return ["--lr", f"{recipe['lr']:g}", "--warmup", str(recipe["warmup_steps"]), "--schedule", recipe["schedule"],
            "--min-lr-ratio", f"{recipe['min_lr_ratio']:g}"]


def recipe_launch(result: dict[str, Any], model_dir: str) -> dict[str, Any]:
    """The command that runs the design's recipe from `model_dir`: the recommended parallel layout's
    (`layouts.launch`) when the recipe runs on one, else the data-parallel plan's (`train.parallel.launch_plan`);
    `command` carries the recipe's batch, steps, learning rate, warmup and decay."""
    if result["recipe"]["layout"] is not None:
        return layout_launch(result, model_dir)
    return launch_plan_of(result, model_dir)


def launch_plan_of(result: dict[str, Any], model_dir: str) -> dict[str, Any]:
    """The data-parallel plan's command (`train.parallel.launch_plan`) with the recipe, in its data-parallel form when
    the recipe runs on a parallel layout (the capacity plan shows it for reference then)."""
    from archsmith.train.parallel import launch_plan

    recipe = result["recipe"]
    if recipe["layout"] is not None:
        recipe = training_recipe(result["recommended"].spec, result["training"], recipe["tokens"], result["global_batch"])
    return launch_plan(result["training"], model_dir, recipe["tokens"], recipe)


def layout_launch(result: dict[str, Any], model_dir: str) -> dict[str, Any] | None:
    """The recommended parallel layout's command (`layouts.launch`) with the recipe's optimizer flags; None when no
    layout was sized or none fits."""
    plan = result.get("layouts")
    if not plan or plan["recommended"] is None:
        return None
    go = parallel_layouts.launch(plan["recommended"], model_dir, plan["train_tokens"], recipe_flags(result["recipe"]))
    return {**go, "strategy": plan["recommended"]["name"]}


def _recipe_lines(recipe: dict[str, Any], hint: dict[str, Any] | None) -> list[str]:
    """The recipe's words, with the larger micro-batch that also fits when there is one."""
    lines = list(recipe["words"])
    if hint:
        lines.append(f"micro-batch {hint['micro_batch']} also fits ({human_bytes(hint['bytes'])} per GPU under the same plan): "
                     f"design with --batch {hint['micro_batch']} for fewer accumulation steps and larger matmuls")
    return lines


def design_from_text(params: str | None = None, compute: str | None = None, memory: str | None = None,
                     context: int | None = None, tokenizer: str | None = None, gpu: str = "h100", gpus: int = 8,
                     tokens: str | None = None, mfu: float = DEFAULT_MFU, vocab: int | None = None, batch: int = 1,
                     seq: int | None = None, strategy: str = "auto", checkpointing: bool | None = None,
                     moe: str | None = None, moe_layers: str | None = None, window: int | None = None,
                     window_layers: str | None = None, position: str | None = None, norm: str | None = None,
                     attention: str | None = None, search: bool = False, data: str | None = None, trials: int | None = None,
                     steps: int | None = None, search_tasks: list[str] | None = None, search_include: list[str] = (),
                     search_limit: int | None = None, progress: bool = False, global_batch: str | None = None,
                     layouts: bool | None = None, unique_tokens: str | None = None) -> dict[str, Any]:
    """`design` from the strings people type ('1B', '1e21', '24GB', '100B', a tokenizer directory, '8:2' experts,
    a global batch of '16777216' tokens, '20B' unique tokens).

    `search` explores the decoder space around the design by training on the corpus `data`
    (`archsmith.search.decoder`, `trials` proxy runs of `steps` steps) and recommends the lowest held-out loss, or
    with `search_tasks` the highest mean accuracy on those lm-evaluation-harness tasks."""
    from archsmith import components
    from archsmith.tokenizer import read_tokenizer
    from archsmith.units import parse_bytes, parse_count

    if vocab is not None and not 1 <= vocab <= 1 << 22:
        raise ArchsmithError("vocab", f"must be in [1, {1 << 22}], got {vocab}")
    if search and data is None:
        raise ArchsmithError("data", "--search needs --data CORPUS (the text the proxy runs train on)")
    given = {"data": data, "trials": trials, "steps": steps, "search_tasks": search_tasks or None,
             "search_include": search_include or None, "search_limit": search_limit}
    if not search and any(v is not None for v in given.values()):
        raise ArchsmithError(next(k for k, v in given.items() if v is not None), "only with --search")
    asked = components.parse(moe, moe_layers, window, window_layers, position, norm, attention)
    if search and asked is not None:
        raise ArchsmithError("search", "explores MoE and sliding windows itself; give either --search or component choices")
    result = design(
        params=parse_count(params, "params", MIN_PARAMS, MAX_PARAMS) if params is not None else None,
        compute=float(parse_count(compute, "compute", 10**15, 10**28)) if compute is not None else None,
        memory=parse_bytes(memory, "memory", 2**28, 2**44) if memory is not None else None,
        context=context, tokenizer=read_tokenizer(tokenizer) if tokenizer else None, gpu=gpu, gpus=gpus,
        tokens=parse_count(tokens, "tokens", MIN_TOKENS, MAX_TOKENS) if tokens is not None else None, mfu=mfu, vocab=vocab,
        batch=batch, seq=seq, strategy=strategy, checkpointing=checkpointing,
        components=asked, layouts=layouts,
        unique_tokens=parse_count(unique_tokens, "unique_tokens", MIN_TOKENS, MAX_TOKENS) if unique_tokens is not None else None,
        global_batch=(parse_count(global_batch, "global_batch", 1, parallel_layouts.MAX_GLOBAL_BATCH)
                      if global_batch is not None else None),
    )
    if search:
        from archsmith.search.decoder import DEFAULT_STEPS, DEFAULT_TRIALS, search_design

        found = search_design(result, data, trials or DEFAULT_TRIALS, steps or DEFAULT_STEPS, progress=progress,
                              tasks=search_tasks, include=search_include, limit=search_limit)
        adopt_searched(result, found)
    prove_design(result)
    return result


def prove_design(result: dict[str, Any]) -> None:
    """The recommended config.json proven before it is written (`archsmith.parity`): a tiny instance of its layout in
    transformers and network.py computes the same logits, else ArchsmithError naming the layout field. The proof goes
    into result["proof"]; a family network.py cannot build leaves it unproven, with a warning."""
    from archsmith import parity

    proof = parity.prove_spec(result["recommended"].spec)
    result["proof"] = proof
    if proof["status"] == "unproven":
        result["warnings"].append(f"config.json is not proven against transformers: {proof['reason']}")


def adopt_searched(result: dict[str, Any], found: dict[str, Any]) -> None:
    """Make the searched shape the design's recommendation (first candidate), summarised under the same plan."""
    best = found["best"]
    c = Candidate("searched", found["spec"])
    _summarise(c, result["tokens"], result["gpu"], result["mfu"], result["training"])
    kwargs = ", ".join(f"{k} {v}" for k, v in best["model_kwargs"].items())
    metric = found["config"]["metric"]
    reached = (f"held-out loss {best['heldout_loss']:.4f}" if metric == "loss" else
               f"{metric} {best['task_metric']:.4f} (held-out loss {best['heldout_loss']:.4f})")
    c.pros.append(f"the {'lowest held-out loss' if metric == 'loss' else 'highest ' + metric} ({reached}) of "
                  f"{len(found['trials'])} trials of {found['config']['steps']} steps on {found['config']['data']} ({kwargs})")
    result["candidates"].insert(0, c)
    result["recommended"] = c
    result["rationale"].insert(0, f"measured, not assumed: {kwargs} reached {reached} after "
                                  f"{found['config']['steps']} steps of {found['batch']} x {found['seq']} tokens, the best of "
                                  f"{found['counts']['complete']} finished trials (table under 'Search')")
    result["search"] = found
    # the recipe of the searched shape, data-parallel (the parallel layouts, if any, were sized for the balanced shape)
    recipe = training_recipe(c.spec, result["training"], c.summary["train_tokens"], result["global_batch"])
    result["recipe"] = recipe
    result["recipe_lines"] = _recipe_lines(recipe, larger_micro_batch(c.spec, result["training"], recipe))
    if result["data"] is not None:
        result["data"] = scaling.data_constrained(c.summary["params"]["total"], c.summary["train_tokens"],
                                                  result["data"]["unique_tokens"])


def summary(result: dict[str, Any], model_dir: str = "DESIGN_DIR") -> dict[str, Any]:
    """The JSON view of a design: candidates with their key numbers, the recommendation, the plan's assumptions;
    `layouts` (each layout without its per-stage rows) and `layout_plan` (the recommended layout's launch command for
    `model_dir`, why each TP degree has no feasible layout) when parallel layouts were sized; `recipe` (tokens per
    step = micro_batch x grad_accum x data_parallel x seq, steps, lr, warmup_steps, and `launch`, the command that runs
    it from `model_dir`); `data_constrained` with --unique-tokens."""
    plan = result.get("layouts")
    layout_plan = None
    if plan is not None:
        best = plan["recommended"]
        layout_plan = {**{k: v for k, v in plan.items() if k not in ("layouts", "recommended")},
                       "recommended": best and {k: v for k, v in best.items() if k != "stages"},
                       "launch": layout_launch(result, model_dir)}
    go = recipe_launch(result, model_dir)
    recipe = {**{k: v for k, v in result["recipe"].items() if k != "words"}, "launch": go["command"],
              "strategy": go["strategy"], "nodes": go["nodes"], "gpus_per_node": go["gpus_per_node"],
              "words": result["recipe_lines"]}
    return {
        "target": result["target"],
        "template": result["template"]["name"],
        "vocab": result["vocab"],
        "context_check": result["context_check"],
        "training": result["training"],
        "limit": result["limit"],
        "assumptions": result["assumptions"],
        "warnings": result["warnings"],
        "candidates": [
            {"name": c.name, "spec": c.spec.to_dict(), "model_type": c.spec.model_type, "params": c.summary["params"]["total"],
             "active_params": c.summary["params"]["active"], "shape": c.summary["shape"],
             "training_flops_per_token": c.summary["flops"]["training_per_token"], "train_tokens": c.summary["train_tokens"],
             "train_time_seconds": c.summary["train_time"]["seconds"], "memory_per_gpu_bytes": c.summary["memory_per_gpu"]["total_bytes"],
             "fits": c.summary["fits"], "kv_cache_per_request_bytes": c.summary["kv_cache_per_request"], "pros": c.pros, "cons": c.cons}
            for c in result["candidates"]
        ],
        "recommended": result["recommended"].name,
        "rationale": result["rationale"],
        "components": result["components"],
        "proof": result.get("proof"),  # the written config against transformers on a tiny instance (archsmith.parity)
        "search": result["search"] and {k: v for k, v in result["search"].items() if k not in ("spec", "files")},
        "scaling_path": result["scaling_path"],
        "layouts": [{k: v for k, v in row.items() if k != "stages"} for row in plan["layouts"]] if plan else [],
        "layout_plan": layout_plan,
        "recipe": recipe,
        "data_constrained": result["data"],
    }
