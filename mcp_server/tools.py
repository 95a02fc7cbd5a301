"""The MCP tools: typed adapters, one engine call each. Register a new tool by adding it to TOOLS.

Arguments carry their bounds and descriptions (the input schema an LLM reads); the docstring
says when to call the tool. Engine errors (`ArchsmithError`: "field: what is allowed") become
MCP tool errors. Heavy modules (torch, transformers, matplotlib) load inside the tools that need them.
Annotations stay real objects here (no `from __future__ import annotations`): the SDK reads them.

Paths go through `_path(value, field)`: inside the workspace root, relative to it or absolute.
A tool that can take long is declared `@heavy` (bounded pool, time limit; see pool.py); inside an
async heavy tool, blocking steps run with `await run_heavy(fn, *args)`.
"""

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal, TypedDict

from mcp.server.mcpserver import Context
from pydantic import Field

from archsmith import families, modalities
from archsmith.distill import ALPHA, HIDDEN_WEIGHT, LR, TEMPERATURE
from archsmith.mcp_server.pool import heavy, run_heavy

# ---- the workspace root: every path a tool reads or writes lies under it -------------------

ROOT_ENV = "ARCHSMITH_WORKSPACE"
_root: Path | None = None


def set_workspace(root: str | Path | None) -> Path:
    """Fix the root: the argument, else $ARCHSMITH_WORKSPACE, else the current directory."""
    global _root
    _root = Path(root or os.environ.get(ROOT_ENV) or Path.cwd()).resolve()
    return _root


def workspace() -> Path:
    return _root or set_workspace(None)


def _path(relative: str, field: str) -> Path:
    """`relative` (from the root, or absolute inside it) as a resolved path under the workspace root."""
    from archsmith.files import inside

    return inside(workspace(), relative, field)


@contextmanager
def _named(**names: str):
    """Engine errors named after this tool's arguments: the engine (and the CLI) say `out`, the tool says `out_dir`."""
    from archsmith.errors import ArchsmithError

    try:
        yield
    except ArchsmithError as exc:
        if exc.field not in names:
            raise
        raise ArchsmithError(names[exc.field], str(exc).split(": ", 1)[1]) from None


def _relative(path: Path) -> str:
    return str(path.relative_to(workspace()))


# ---- argument types ---------------------------------------------------------------------------

Count = Annotated[str | None, Field(description="A count with an optional K/M/B/T suffix, e.g. '125M', '1.5B', '7B'.", max_length=40)]
Compute = Annotated[str | None, Field(description="Compute budget in FLOPs, e.g. '1e21' (1e15 to 1e28).", max_length=40)]
Memory = Annotated[str | None, Field(description="Training memory budget per GPU, e.g. '24GB' or '80GiB'.", max_length=40)]
Context_ = Annotated[int | None, Field(description="Context length in tokens (default: the template's).", ge=128, le=1 << 24)]
MicroBatch = Annotated[int, Field(description="Micro-batch per GPU (sequences) for the training memory plan.", ge=1, le=65536)]
Seq = Annotated[int | None, Field(description="Sequence length of the training memory plan (default: the context).", ge=128, le=1 << 24)]
Strategy = Annotated[Literal["auto", "ddp", "zero1", "zero2", "zero3", "fsdp"],
                     Field(description="Data-parallel strategy of the memory plan; auto takes the first that fits: ddp, zero1, zero2, zero3.")]
Checkpointing = Annotated[bool | None, Field(description="Activation checkpointing in the memory plan; null (default) = auto, only when nothing fits without.")]
Moe = Annotated[str | None, Field(description="Mixture of experts 'EXPERTS:TOP_K', e.g. '8:2'.", pattern=r"^\d{1,4}:\d{1,4}$")]
MoeLayers = Annotated[Literal["all", "upper", "lower", "alternate"] | None, Field(description="Which layers are MoE (default all).")]
Window = Annotated[int | None, Field(description="Sliding-window attention of this many tokens.", ge=16, le=1 << 24)]
WindowLayers = Annotated[str | None, Field(description="Which layers slide: 'all', 'alternate' (default) or 'N:1'.",
                                           pattern=r"^(all|alternate|\d{1,2}:1)$")]
Position = Annotated[Literal["rope", "alibi", "learned"] | None, Field(description="Position encoding (default rope).")]
NormChoice = Annotated[Literal["rmsnorm", "layernorm"] | None, Field(description="Norm (default rmsnorm).")]
AttentionChoice = Annotated[Literal["gqa", "mqa", "mha", "mla"] | None, Field(description="Attention (default gqa).")]
Vocab = Annotated[int | None, Field(description="Vocabulary size when no tokenizer is given (padded to a multiple of 128).", ge=1, le=1 << 22)]
Gpu = Annotated[str, Field(description="GPU kind from list_gpus, e.g. 'h100', 'a100-80gb', 'l4'.", min_length=1, max_length=64)]
Gpus = Annotated[int, Field(description="Number of GPUs for training.", ge=1, le=65536)]
Mfu = Annotated[float, Field(description="Assumed model-FLOPs utilisation for time estimates.", gt=0, le=1)]
GlobalBatch = Annotated[str | None, Field(description="Tokens per optimizer step of the training recipe and parallel layouts, a multiple of seq, e.g. '16777216' (2048 x 8192); default DeepSeek LLM's batch-size fit for the run's compute.", max_length=40)]
UniqueTokens = Annotated[str | None, Field(description="Unique training tokens available, e.g. '20B': with compute (and no tokens) the size and epochs follow Muennighoff et al. 2023's data-constrained law; with any target the result states the epochs and what repetition costs.", max_length=40)]
Layouts = Annotated[bool | None, Field(description="Size tensor / pipeline / context parallel layouts (TP x PP x DP x CP) of the recommended shape; null (default) = auto, when plain data parallelism does not fit the GPUs or the global batch.")]
TokenizerDir = Annotated[str | None, Field(description="Tokenizer directory (tokenizer.json + tokenizer_config.json) inside the workspace root (relative to it, or absolute).", max_length=1024)]
RelPath = Annotated[str, Field(description="Path inside the workspace root: relative to it, or absolute inside it.", min_length=1, max_length=1024)]
ConfigDict = Annotated[dict[str, Any] | None, Field(description="An inline Hugging Face config.json object (give this or config_path).")]
ConfigPath = Annotated[str | None, Field(description="A config.json file or model directory inside the workspace root, relative to it or absolute (give this or config).", max_length=1024)]
EvalTasks = Annotated[list[Annotated[str, Field(min_length=1, max_length=200)]], Field(description="lm-evaluation-harness tasks measured on teacher and student (decoders): the report's quality rows.", max_length=32)]
EvalInclude = Annotated[list[Annotated[str, Field(min_length=1, max_length=1024)]], Field(description="Directories of local task YAMLs for eval_tasks, relative to the workspace root.", max_length=8)]
EvalLimit = Annotated[int | None, Field(description="Examples per task (default: all).", ge=1, le=1_000_000)]
EvalData = Annotated[str | None, Field(description="Encoders: JSONL for teacher and student metrics (as evaluate_quality's data).", max_length=1024)]


class DesignSummary(TypedDict):
    target: dict[str, Any]
    template: str
    vocab: dict[str, Any]
    context_check: str
    training: dict[str, Any]  # the plan behind "memory per GPU": strategy, checkpointing, micro_batch, seq, fits
    limit: dict[str, Any]  # bytes per GPU a plan may use: min(memory budget, usable device memory)
    assumptions: list[str]
    warnings: list[str]
    candidates: list[dict[str, Any]]
    recommended: str
    rationale: list[str]
    components: dict[str, Any] | None  # asked choices, the family written, each choice's measured cost
    proof: dict[str, Any]  # the recommended config.json against transformers on a tiny instance (archsmith.parity)
    search: dict[str, Any] | None  # the study behind a searched recommendation (write_design with a corpus)
    scaling_path: list[dict[str, Any]]
    layouts: list[dict[str, Any]]  # parallel layouts (feasible first, ranked by step time) when sized, else empty
    layout_plan: dict[str, Any] | None  # the recommended layout, its launch command, why each TP degree has none
    recipe: dict[str, Any]  # tokens_per_step = micro_batch x grad_accum x data_parallel x seq, steps, lr, warmup_steps, launch
    data_constrained: dict[str, Any] | None  # with unique_tokens: epochs, effective tokens, value lost, the optimum


class WrittenDesign(TypedDict):
    files: list[str]  # relative to the workspace root
    recommended: str
    params: int
    config: dict[str, Any]
    proof: dict[str, Any]  # config.json against transformers on a tiny instance (archsmith.parity)


class EmittedConfig(TypedDict):
    config: dict[str, Any]
    written: str | None
    proof: dict[str, Any]  # status proven / covered / unproven, max_abs_diff, the layout switches it checked


class ModelDescription(TypedDict):
    parameters: int
    estimated_parameters: int
    matches_estimate: bool
    num_layers: int
    parameter_tensors: int
    tree: list[dict[str, Any]]


def _spec(config: dict[str, Any] | None, config_path: str | None):
    from archsmith.errors import ArchsmithError
    from archsmith.hfconfig import read_config, spec_from_hf

    if (config is None) == (config_path is None):
        raise ArchsmithError("config", "give exactly one of config (an object) or config_path (a file)")
    return spec_from_hf(config if config is not None else read_config(_path(config_path, "config_path"), "config_path"))


def _design(tokenizer_dir: str | None, **args: Any) -> dict[str, Any]:
    from archsmith.design import design_from_text

    tokenizer = str(_path(tokenizer_dir, "tokenizer_dir")) if tokenizer_dir else None
    return design_from_text(tokenizer=tokenizer, **args)


# ---- tools ------------------------------------------------------------------------------------

@heavy
def design_architecture(params: Count = None, compute: Compute = None, memory: Memory = None, context: Context_ = None,
                        vocab: Vocab = None, gpu: Gpu = "h100", gpus: Gpus = 8, tokens: Count = None, mfu: Mfu = 0.4,
                        tokenizer_dir: TokenizerDir = None, batch: MicroBatch = 1, seq: Seq = None, strategy: Strategy = "auto",
                        checkpointing: Checkpointing = None, moe: Moe = None, moe_layers: MoeLayers = None,
                        window: Window = None, window_layers: WindowLayers = None, position: Position = None,
                        norm: NormChoice = None, attention: AttentionChoice = None, global_batch: GlobalBatch = None,
                        layouts: Layouts = None, unique_tokens: UniqueTokens = None) -> DesignSummary:
    """Design a decoder-only LM for ONE budget: params (e.g. '10M', '1B'), compute (FLOPs, Chinchilla-sized) or memory
    per GPU (the largest model whose training plan fits it on `gpu`). Returns 3-4 candidate shapes with exact parameter
    counts, FLOPs, training time, memory per GPU and KV cache per request, the recommended one with its rationale, the
    training plan behind "memory per GPU" (batch, seq, strategy, checkpointing: given or auto) with its assumptions
    and warnings, and a scaling path. Component choices (moe, window, position, norm, attention) are written as the
    transformers family that expresses them with the fewest further changes, each costed under `components`. With
    `layouts` (auto when plain data parallelism does not fit `gpus` or the global batch), `layouts` lists TP x PP x DP x CP
    layouts with per-GPU memory, bubble, traffic, step time and why infeasible, and `layout_plan` the recommended one
    with its launch command. `recipe` is the training run: tokens per step (DeepSeek LLM's fit, or global_batch) as
    micro_batch x grad_accum x data_parallel x seq, steps, peak lr, warmup, cosine decay and the launch command;
    `warnings` say when compute, tokens and size disagree or the data repeats past where it pays. Writes nothing."""
    from archsmith.design import summary

    return summary(_design(tokenizer_dir, params=params, compute=compute, memory=memory, context=context, vocab=vocab, gpu=gpu,
                           gpus=gpus, tokens=tokens, mfu=mfu, batch=batch, seq=seq, strategy=strategy, checkpointing=checkpointing,
                           moe=moe, moe_layers=moe_layers, window=window, window_layers=window_layers, position=position,
                           norm=norm, attention=attention, global_batch=global_batch, layouts=layouts,
                           unique_tokens=unique_tokens))


@heavy(timeout_s=3600)  # with a search corpus: proxy training runs
async def write_design(out_dir: RelPath, params: Count = None, compute: Compute = None, memory: Memory = None,
                       context: Context_ = None, vocab: Vocab = None, gpu: Gpu = "h100", gpus: Gpus = 8, tokens: Count = None,
                       mfu: Mfu = 0.4, tokenizer_dir: TokenizerDir = None, batch: MicroBatch = 1, seq: Seq = None,
                       strategy: Strategy = "auto", checkpointing: Checkpointing = None, moe: Moe = None,
                       moe_layers: MoeLayers = None, window: Window = None, window_layers: WindowLayers = None,
                       position: Position = None, norm: NormChoice = None, attention: AttentionChoice = None,
                       global_batch: GlobalBatch = None, layouts: Layouts = None, unique_tokens: UniqueTokens = None,
                       search: Annotated[bool, Field(description="Train proxy runs of widths, KV heads, MoE and windows on `data` "
                                                             "and recommend the lowest held-out loss (needs tokenizer_dir).")] = False,
                       data: Annotated[str | None, Field(description="With search: the corpus (text or JSONL) relative to the workspace root.",
                                                         max_length=1024)] = None,
                       trials: Annotated[int | None, Field(description="With search: proxy runs (default 8).", ge=1, le=200)] = None,
                       steps: Annotated[int | None, Field(description="With search: AdamW steps per run (default 30).", ge=1, le=100_000)] = None,
                       search_tasks: Annotated[list[Annotated[str, Field(min_length=1, max_length=200)]], Field(description="With search: score each trained trial by its mean acc on these lm-evaluation-harness tasks instead of held-out loss.", max_length=8)] = [],
                       search_include: Annotated[list[Annotated[str, Field(min_length=1, max_length=1024)]], Field(description="With search_tasks: directories of local task YAMLs, relative to the workspace root.", max_length=8)] = [],
                       search_limit: Annotated[int | None, Field(description="With search_tasks: examples per task per trial.", ge=1, le=1_000_000)] = None,
                       overwrite: bool = False, ctx: Context = None) -> WrittenDesign:
    """Design as design_architecture does, then write config.json (loads in transformers), architecture_report.md,
    capacity_plan.md (with the training recipe and its launch command, and a 'Parallel layouts' table when layouts
    are sized) and two memory charts
    (PNG) into out_dir under the workspace root (with search also the
    study: search.json, search_study.db, search_pareto.png, and the searched shape as the recommendation). An existing non-empty
    out_dir is refused unless overwrite is true; files appear all at once or not at all. config.json is proven before
    anything is written (proof: a tiny instance of its layout computes the same logits in transformers and network.py),
    and a design transformers would compute differently is refused naming the layout field."""
    import json

    from archsmith.files import check_out_dir, write_files

    out = _path(out_dir, "out_dir")
    await run_heavy(check_out_dir, out, overwrite, "out_dir")
    await ctx.report_progress(0, 3, "designing")
    result = await run_heavy(_design, tokenizer_dir, params=params, compute=compute, memory=memory, context=context, vocab=vocab,
                             gpu=gpu, gpus=gpus, tokens=tokens, mfu=mfu, batch=batch, seq=seq, strategy=strategy,
                             checkpointing=checkpointing, moe=moe, moe_layers=moe_layers, window=window,
                             window_layers=window_layers, position=position, norm=norm, attention=attention,
                             global_batch=global_batch, layouts=layouts, unique_tokens=unique_tokens, search=search, data=str(_path(data, "data")) if data else None,
                             trials=trials, steps=steps, search_tasks=list(search_tasks) or None,
                             search_include=[str(_path(d, "search_include")) for d in search_include], search_limit=search_limit)
    await ctx.report_progress(1, 3, "rendering reports and charts")

    def render():
        from archsmith.report import render_design

        return render_design(result, out_dir)

    files = await run_heavy(render)
    await ctx.report_progress(2, 3, "writing files")
    written = await run_heavy(write_files, out, files, overwrite, "out_dir")
    await ctx.report_progress(3, 3, "done")
    rec = result["recommended"]
    return {"files": [_relative(p) for p in written], "recommended": rec.name, "params": rec.summary["params"]["total"],
            "config": json.loads(files["config.json"]), "proof": result["proof"]}


@heavy
def estimate_config(config: ConfigDict = None, config_path: ConfigPath = None,
                    batch: Annotated[int, Field(description="Micro-batch size in sequences.", ge=1, le=1 << 20)] = 1,
                    seq: Annotated[int | None, Field(description="Sequence length (default: the model's context).", ge=1, le=1 << 24)] = None,
                    dtype: Annotated[Literal["fp32", "bf16", "fp16"], Field(description="Training precision; bf16/fp16 keep fp32 master weights.")] = "bf16",
                    optimizer: Literal["adamw", "adamw8bit", "sgd", "adafactor"] = "adamw",
                    checkpointing: Annotated[bool, Field(description="Activation checkpointing per decoder layer.")] = False,
                    attention: Annotated[Literal["sdpa", "eager"] | None, Field(description="Attention kernel (default: the one transformers uses for the family).")] = None,
                    compile: Annotated[bool, Field(description="The training peak of a run with torch.compile (not yet modelled: the eager peak).")] = False,
                    device: Annotated[Literal["cuda", "cpu"], Field(description="Whose kernels the activation figures describe.")] = "cuda") -> dict[str, Any]:
    """Parameters (total, embedding, per layer, per component, active), FLOPs per token and memory (weights,
    gradients, fp32 master + optimizer state, activations, logits, KV cache; training and inference totals) of a
    Hugging Face config.json, in closed form; memory.activations_exact is false (with activations_note) where the
    activation estimate is not yet calibrated. memory.training_peak_bytes is the peak of one step of archsmith train
    (training_reserved_bytes with the allocator's headroom; peak_exact false with peak_note where not yet held to 5%).
    Model types: {families}."""
    from archsmith.estimate import estimate

    spec = _spec(config, config_path)
    result = estimate(spec, batch=batch, seq=seq, dtype=dtype, optimizer=optimizer, checkpointing=checkpointing, attention=attention,
                      compile=compile, device=device)
    return {**result, "spec": spec.to_dict()}


@heavy
def emit_hf_config(spec: Annotated[dict[str, Any], Field(description="ArchitectureSpec fields: hidden_size, num_layers, num_heads, num_kv_heads, ffn_size, vocab_size, and optional context_length, head_dim, rope_theta, tie_embeddings, ... (as design_architecture returns them).")],
                   model_type: Literal[families.NAMES] | None = None,
                   dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16",
                   out_path: Annotated[str | None, Field(description="Optional file to write inside the workspace root (relative to it, or absolute).", max_length=1024)] = None,
                   overwrite: bool = False) -> EmittedConfig:
    """Turn an architecture spec into the config.json that transformers' AutoConfig/AutoModelForCausalLM load.
    Refuses, naming the field, a spec the chosen family cannot express (e.g. QK-norm in llama), a layout its
    transformers code ignores (e.g. layer_types in qwen3_moe), and any spec.extra key that is not one of the family's
    own settings (soft-caps, multipliers, ...). The config is proven before it is returned or written: a tiny instance of
    its layout in transformers and in network.py computes the same logits (proof.status proven; covered: no layout
    switch, the family's own tested layout; unproven: a family network.py does not build), else it is refused naming
    the layout field transformers computes differently."""
    import json

    from archsmith.files import write_file
    from archsmith.hfconfig import hf_from_spec
    from archsmith.parity import prove_config
    from archsmith.spec import ArchitectureSpec

    config = hf_from_spec(ArchitectureSpec.from_dict(spec), model_type=model_type, dtype=dtype)
    proof = prove_config(config)
    written = None
    if out_path is not None:
        target = write_file(_path(out_path, "out_path"), json.dumps(config, indent=2) + "\n", overwrite, "out_path")
        written = _relative(target)
    return {"config": config, "written": written, "proof": proof}


def compute_optimal_sizing(compute_flops: Annotated[float | None, Field(description="Compute budget in FLOPs (give this or params).", ge=1e15, le=1e28)] = None,
                           params: Annotated[float | None, Field(description="Model size in parameters (give this or compute_flops).", ge=1e6, le=2e12)] = None,
                           tokens: Annotated[float | None, Field(description="Training tokens for the given params (default: 20 per parameter).", ge=1e6, le=1e16)] = None) -> dict[str, Any]:
    """Chinchilla scaling: a compute budget -> compute-optimal parameters and tokens under the 20-tokens-per-parameter
    rule and both published loss fits (Hoffmann et al., Epoch AI); or a model size (+ tokens) -> training FLOPs
    and predicted loss."""
    from archsmith.scaling import plan

    return plan(compute_flops=compute_flops, params=params, tokens=tokens)


def list_scale_templates() -> dict[str, Any]:
    """The scale templates (10M, 100M, 350M, 1B, 7B): parameter ranges, width-to-depth aspect, heads, KV heads, FFN ratio,
    context and vocabulary defaults, and published models of that class."""
    from archsmith.design import scale_templates

    return {"templates": list(scale_templates())}


def list_gpus() -> dict[str, Any]:
    """The GPU table: memory (bytes), dense bf16/fp16/fp8 peak FLOPs, memory bandwidth, interconnect, with sources."""
    from archsmith.gpus import gpu_table

    return {"gpus": gpu_table()}


@heavy
async def build_model(config: ConfigDict = None, config_path: ConfigPath = None,
                      depth: Annotated[int, Field(description="Module-tree depth to report (layer 0 stands for all layers).", ge=0, le=6)] = 4,
                      ctx: Context = None) -> ModelDescription:
    """Build archsmith.network.CausalLM from a config (on the meta device: no memory, any size) and report its
    module tree, parameter count and tensor count, checked against the closed-form estimate. Builds the model types
    whose logits match transformers ({buildable}); others are refused, naming what network.py lacks."""
    def check():
        from archsmith.network import check_buildable

        spec = _spec(config, config_path)
        check_buildable(spec)
        return spec

    spec = await run_heavy(check)
    await ctx.report_progress(0, 1, "building on the meta device")

    def build():
        from archsmith.network import describe

        return describe(spec, depth)

    result = await run_heavy(build)
    await ctx.report_progress(1, 1, "done")
    return result


HubId = Annotated[str, Field(description="Hugging Face model id, 'org/name'.", min_length=1, max_length=200)]
GpuOpt = Annotated[str | None, Field(description="GPU to check fit on, from list_gpus (e.g. 't4', 'l4', 'a100-80gb').", max_length=64)]


@heavy  # network-bound: a slow Hub must not hold the SDK's worker threads that light tools use
def search_models(query: Annotated[str | None, Field(description="Free text matched against model ids.", max_length=200)] = None,
                  task: Annotated[str | None, Field(description="Pipeline tag, e.g. 'text-classification'.", max_length=64)] = None,
                  library: Annotated[str | None, Field(description="e.g. 'transformers'.", max_length=64)] = None,
                  author: Annotated[str | None, Field(description="Organisation or user.", max_length=96)] = None,
                  language: Annotated[str | None, Field(description="ISO language code, e.g. 'es'.", max_length=16)] = None,
                  license: Annotated[str | None, Field(description="Presets and/or license ids, comma-separated: 'permissive' (MIT, Apache, BSD, CC-BY: no duty beyond attribution), 'commercial-ok' (permissive + restricted-use: OpenRAIL, Llama, Gemma terms), 'copyleft-ok' (permissive + GPL, CC-BY-SA, MPL); e.g. 'permissive' or 'apache-2.0,mit'.", max_length=200)] = None,
                  gpu: GpuOpt = None,
                  use: Literal["run_fp16", "run_int8", "run_int4", "finetune_full", "finetune_lora", "finetune_qlora"] = "run_fp16",
                  max_params: Annotated[int | None, Field(description="Largest parameter count.", ge=1, le=10**13)] = None,
                  sort: Annotated[str, Field(description="downloads, likes, trending, recent, or score:TASK: the score each card's model-index reports for a benchmark (e.g. score:hellaswag), highest first; models whose card gives none come after, with score null (reported, not measured).", pattern=r"^(downloads|likes|trending|recent|score:[\w.-]{1,64})$")] = "downloads",
                  limit: Annotated[int, Field(description="How many models to fetch.", ge=1, le=200)] = 20,
                  include_rejected: Annotated[bool, Field(description="Also return the models that break a constraint (meets_constraints false).")] = False) -> dict[str, Any]:
    """Search Hugging Face Hub models that meet every given constraint (task, library, language, author, license,
    max_params, fits `use` on `gpu`), ranked by downloads and likes; `include_rejected` adds the others after them.
    Each hit has `meets_constraints`, the constraints `checked`, `violated` and `unchecked` (metadata that cannot tell:
    never counted as met), task, parameters (from safetensors metadata, never weights), license and whether it allows
    commercial use (`commercial` yes/restricted/no/unknown, `license_class` permissive/copyleft/restricted-use/
    non-commercial/unknown), gating, memory at fp16/int8/int4 and for full/LoRA/QLoRA fine-tuning, and its reasons; `rejected`
    counts the models filtered out per constraint and `message` says it in one line; `notes` carries warnings (a
    deprecated preset, an unknown license name). Offline (HF_HUB_OFFLINE=1) it
    checks the same constraints against the local HF cache and archsmith's reference architectures."""
    from archsmith.hub import search

    return search(query, task=task, library=library, author=author, language=language, license=license, gpu=gpu, use=use,
                  max_params=max_params, sort=sort, limit=limit, include_rejected=include_rejected)


@heavy  # network-bound: a slow Hub must not hold the SDK's worker threads that light tools use
def evaluate_model(model_id: HubId, gpu: GpuOpt = None) -> dict[str, Any]:
    """Evaluate one Hub model from config.json, tokenizer_config.json, the model card and the safetensors header
    (never the weights): architecture, parameters, context, vocabulary, license, gating, card sections on limitations
    and bias, provenance (base model, datasets), the scores the card reports in its model-index (`reported_scores`:
    task, dataset, split, metric, value, source; reported, not measured), for a diffusers pipeline (model_index.json)
    each component's parameters, dtypes, bytes on disk and memory by precision from its safetensors headers
    (`pipeline`), memory for inference and fine-tuning, fit on `gpu`. Offline
    (HF_HUB_OFFLINE=1) it answers from the local HF cache or archsmith's reference architectures; `source` says which."""
    from archsmith.hub import evaluate

    return evaluate(model_id, gpu=gpu)


@heavy
def plan_finetune(model_id: Annotated[str, Field(description="Hugging Face model id 'org/name', or a model directory (config.json, safetensors, tokenizer) relative to the workspace root: no Hub needed.", min_length=1, max_length=1024)],
                  task: Literal[tuple(modalities.TASKS)] = "text-generation",
                  method: Literal["auto", "full", "lora", "qlora"] = "auto",
                  gpu: Annotated[str, Field(description="The GPU the fine-tune runs on.", min_length=1, max_length=64)] = "t4") -> dict[str, Any]:
    """Plan a fine-tune of a Hub model (or a local model directory, offline) on one GPU: picks full / LoRA / QLoRA (auto:
    the largest that fits) from computed memory, and returns the settings and a Python script. For text-generation and
    text-classification the script is complete (`script_complete`; run it as `usage` says): data from a .jsonl/.json/
    .csv/.txt file or a datasets name, the model's chat template, a training loop (AdamW, warm-up + cosine, mixed
    precision), held-out evaluation before and after, and saving the adapter (or model), tokenizer and metrics.json.
    It loads (AutoModelFor..., the processor of the modality:
    tokenizer, image processor, feature extractor or processor, with the model's preprocessor settings; dtype, sdpa,
    device map, 4-bit config for QLoRA, LoRA rank/alpha and target modules from the families registry's module names,
    else the model transformers builds on the meta device (`settings.target_source`), a new classification head
    trained in full). Tasks cover text, vision (image classification, detection,
    segmentation), audio (speech recognition, audio classification) and image-text models, and diffusers pipelines
    (text-to-image, unconditional-image-generation): the UNet learns (full or LoRA on the attention projections), the
    VAE and text encoder stay frozen, memory from each component's safetensors header, and `train_step` in the script."""
    from archsmith.hub import plan_finetune as plan

    return _hide_root(plan(_hub_or_path(model_id, "model_id"), task=task, method=method, gpu=gpu))


@heavy(timeout_s=3600)  # a harness run: every example of every task through the model
async def evaluate_quality(model: Annotated[str, Field(description="A model directory (config.json, safetensors, tokenizer; a training run directory: its final/) relative to the workspace root, or a Hub id.", min_length=1, max_length=1024)],
                           tasks: Annotated[list[Annotated[str, Field(min_length=1, max_length=200)]], Field(description="lm-evaluation-harness task names (registry, or YAML definitions under include).", max_length=32)] = [],
                           include: Annotated[list[Annotated[str, Field(min_length=1, max_length=1024)]], Field(description="Directories of local task definitions (YAML + data files) relative to the workspace root.", max_length=8)] = [],
                           text: Annotated[str | None, Field(description="Held-out text file for word/byte perplexity and bits per byte.", max_length=1024)] = None,
                           images: Annotated[str | None, Field(description="Image classifier: a folder of class folders named as the model's labels (top-1/top-5).", max_length=1024)] = None,
                           data: Annotated[str | None, Field(description="Text encoder: JSONL of {text,label} (linear-probe accuracy), {sentence1,sentence2,score} (Spearman) or {query,positive} (recall@k, MRR).", max_length=1024)] = None,
                           limit: Annotated[int | None, Field(description="Examples per task (default: all).", ge=1, le=1_000_000)] = None,
                           fewshot: Annotated[int | None, Field(description="Few-shot examples per prompt (default: the task's).", ge=0, le=25)] = None,
                           batch: Annotated[int, Field(description="Sequences (images, texts) per forward pass.", ge=1, le=512)] = 8,
                           engine: Literal["transformers", "network"] = "transformers",
                           out_dir: Annotated[str | None, Field(description="Write results.json and quality.png here, relative to the workspace root.", max_length=1024)] = None,
                           overwrite: bool = False, ctx: Context = None) -> dict[str, Any]:
    """Measure a model's quality. Language models: lm-evaluation-harness tasks (accuracy +- stderr with the harness's
    metric names: acc, acc_norm, exact_match, ...) and perplexity of a held-out text, on transformers or on
    archsmith.network with the same weights; image classifiers: top-1/top-5 on a local image folder through the model's
    image processor (its settings are returned); text encoders: classification, similarity and retrieval metrics on
    local JSONL. Where the model card's model-index reports a score for a measured task, `comparison` sets measured
    against reported and flags gaps beyond 2 stderr. Settings (engine, device, limit, few-shot, seed, harness version)
    are recorded. Task YAMLs that load Python (!function) need a server that allows code."""
    from archsmith.files import check_out_dir, write_files
    from archsmith.quality import evaluate, output_files

    ref, _ = _model(model, hub=True)
    out = _path(out_dir, "out_dir") if out_dir else None
    if out is not None:
        check_out_dir(out, overwrite)
    folders = [str(_path(d, "include")) for d in include]
    files = {name: str(_path(value, name)) if value else None for name, value in (("text", text), ("images", images), ("data", data))}
    await ctx.report_progress(0, 1, "evaluating")
    result = await run_heavy(evaluate, ref, list(tasks), folders, files["text"], files["images"], files["data"], limit=limit,
                             fewshot=fewshot, batch=batch, engine=engine, allow_code=os.environ.get(ALLOW_CODE_ENV) == "1")
    if out is not None:
        result["files"] = [_relative(p) for p in write_files(out, output_files(result), overwrite)]
    await ctx.report_progress(1, 1, "done")
    return _hide_root(result)


# ---- analysis, compression, export (the ml-architecture-designer's tools) ----------------------

ALLOW_CODE_ENV = "ARCHSMITH_ALLOW_CODE"  # "1": file.py:factory models (arbitrary code under the workspace root) are allowed
ModelRef = Annotated[str, Field(description="A model directory or config.json relative to the workspace root; "
                                            "file.py:factory only when the server allows code (ARCHSMITH_ALLOW_CODE=1).",
                                min_length=1, max_length=1024)]


def _model(model: str, hub: bool = False) -> tuple[str, bool]:
    """(engine model string, allow_code): paths resolved under the workspace; factories only when allowed."""
    from archsmith.analyze import FACTORY

    if FACTORY.match(model):
        return _code_ref(model, "model"), True
    return _hub_or_path(model, "model") if hub else str(_path(model, "model")), False


def _hub_or_path(value: str, field: str) -> str:
    """A Hub id (owner/name, nothing of that name in the workspace) as it is, else a path resolved under the workspace."""
    import re

    from archsmith.files import kind

    if re.fullmatch(r"[\w.-]+/[\w.-]+", value) and kind(workspace() / value, field) is None:
        return value
    return str(_path(value, field))


def _code_ref(ref: str | None, field: str) -> str | None:
    """A file.py:fn reference resolved under the workspace; refused unless the server allows code."""
    from archsmith.analyze import FACTORY
    from archsmith.errors import ArchsmithError

    if ref is None:
        return None
    match = FACTORY.match(ref)
    if not match:
        raise ArchsmithError(field, f"must be file.py:function, got {ref!r:.120}")
    if os.environ.get(ALLOW_CODE_ENV) != "1":
        raise ArchsmithError(field, "file.py:function runs Python code, which this server refuses; start it with "
                                    f"{ALLOW_CODE_ENV}=1 to allow code under the workspace root, or use the CLI")
    return f"{_path(match['file'], field)}:{match['name']}"


def _student_code(directory: Path, field: str) -> bool:
    """Whether loading the student in `directory` may run code: a student of a file.py:factory runs that factory, so
    it needs a server that allows code and a factory under the workspace root."""
    import json

    record = directory / "student.json"
    if not record.is_file():
        return False
    try:
        source = json.loads(record.read_text())["source"]
        kind, ref = source["kind"], source["ref"]
    except (ValueError, KeyError, TypeError):
        return False  # load_student names the broken file
    if kind != "factory":
        return False
    _code_ref(ref, field)
    return True


def _chart(chart_path: str | None, overwrite: bool) -> Path | None:
    """The chart file under the workspace, refused when it exists and overwrite is off."""
    from archsmith.errors import ArchsmithError
    from archsmith.files import kind

    chart = _path(chart_path, "chart_path") if chart_path else None
    if chart is not None and kind(chart, "chart_path") is not None and not overwrite:
        raise ArchsmithError("chart_path", f"{chart_path} exists; pass overwrite to replace it")
    return chart


CodeRef = Annotated[str | None, Field(description="file.py:function relative to the workspace root (needs a server started "
                                                  f"with {ALLOW_CODE_ENV}=1).", max_length=1024)]


@heavy(timeout_s=900)  # profiling a large model takes minutes on a CPU
async def analyze_model(model: Annotated[str, Field(description="A model directory, config.json or archsmith spec JSON relative to the workspace root, "
                                                                  "a Hub id 'org/name' (config.json only), or file.py:factory when the server allows code.",
                                                      min_length=1, max_length=1024)],
                        batch: Annotated[int, Field(description="Sequences per batch for text models.", ge=1, le=4096)] = 1,
                        seq: Annotated[int | None, Field(description="Tokens per sequence (default: min(128, context)).", ge=1, le=1 << 20)] = None,
                        input_shape: Annotated[str | None, Field(description="New shapes for a factory's tensor inputs, in order, ';'-separated, e.g. '8,3,32,32'.", max_length=200)] = None,
                        meta: Annotated[bool | None, Field(description="Force the meta device (no latency); default: only above 2 GiB of weights.")] = None,
                        repeats: Annotated[int, Field(description="Profiled forward passes.", ge=1, le=100)] = 5,
                        chart_path: Annotated[str | None, Field(description="PNG to write (top modules by FLOPs and time), relative to the workspace root.", max_length=1024)] = None,
                        overwrite: bool = False, ctx: Context = None) -> dict[str, Any]:
    """Analyse any nn.Module layer by layer: per module its input/output shapes, parameters, FLOPs (FlopCounterMode),
    activation bytes saved for backward and share of measured CPU latency; totals with the exact parameter count,
    arithmetic intensity, the top bottlenecks by time and by FLOPs, and notes on attention kernels, graph/scatter ops,
    custom ops and data-dependent control flow. Models above 2 GiB of weights run on the meta device (no latency)."""
    from archsmith import analyze
    from archsmith.files import write_file

    ref, allow = _model(model, hub=True)
    chart = _chart(chart_path, overwrite)
    await ctx.report_progress(0, 1, "analysing")
    shapes = [analyze.parse_shape(s) for s in input_shape.split(";")] if input_shape else None
    result = await run_heavy(analyze.run, ref, batch=batch, seq=seq, input_shapes=shapes, allow_code=allow, meta=meta, repeats=repeats)
    if chart is not None:
        result["chart"] = _relative(write_file(chart, analyze.chart(result), overwrite, "chart_path"))
    await ctx.report_progress(1, 1, "done")
    return result


@heavy(timeout_s=900)  # several forwards, a backward, dynamo and torch.export on a CPU
async def prove_module(model: Annotated[str, Field(description="file.py:factory when the server allows code, an HF model directory, or an "
                                                                 "archsmith spec / design config, relative to the workspace root.",
                                                     min_length=1, max_length=1024)],
                       inputs: CodeRef = None,
                       invariance: Annotated[list[Literal["permutation", "rotation"]], Field(max_length=2)] = [],
                       chart_path: Annotated[str | None, Field(description="PNG to write (activation and gradient scale by depth), relative to the workspace root.", max_length=1024)] = None,
                       overwrite: bool = False, ctx: Context = None) -> dict[str, Any]:
    """Prove any nn.Module sound by running it: forward at 1, 2 and 3 copies of the batch (graphs as disjoint unions),
    exact parameters by component, gradients of the mean squared output (parameters without one, RMS by depth),
    activation scale by depth at initialisation, bf16 vs fp32 drift, initialisation reproducible under a seed,
    torch.compile graph breaks with dynamo's reasons, torch.export readiness and declared symmetries. Returns every
    measurement and `findings` ({code, module, detail}; codes no_gradient, vanishing_gradients,
    exploding_activations, bf16_drift, nondeterministic_init, graph_break, not_exportable, breaks_invariance); a
    healthy model has none."""
    from archsmith import proof
    from archsmith.files import write_file

    ref, allow = _model(model)
    chart = _chart(chart_path, overwrite)
    await ctx.report_progress(0, 1, "proving")
    report = await run_heavy(proof.prove, ref, _code_ref(inputs, "inputs"), list(invariance), allow_code=allow or inputs is not None)
    if chart is not None:
        report["chart"] = _relative(write_file(chart, proof.chart(report), overwrite, "chart_path"))
    await ctx.report_progress(1, 1, "done")
    return report


@heavy(timeout_s=3600)  # trains up to `trials` proxy runs on a CPU
async def search_architecture(model: Annotated[str, Field(description="file.py:factory whose keyword arguments the space names, relative "
                                                                      "to the workspace root (needs ARCHSMITH_ALLOW_CODE=1).",
                                                          min_length=1, max_length=1024)],
                              space: Annotated[str, Field(description="space.yaml relative to the workspace root: model: {name: value | "
                                                                      "{int: [lo, hi], step} | {float: [lo, hi], log} | {choice: [...]}}, "
                                                                      "train: {lr, weight_decay}.", min_length=1, max_length=1024)],
                              data: Annotated[str, Field(description="file.py:fn yielding (inputs, target) batches; the first 2 are held out.",
                                                         min_length=1, max_length=1024)],
                              out_dir: RelPath,
                              loss: Literal["cross_entropy", "mse"] = "cross_entropy",
                              trials: Annotated[int, Field(description="Trials in the study in all; a resumed study runs the rest.", ge=1, le=10_000)] = 20,
                              steps: Annotated[int, Field(description="AdamW steps per trial (the proxy run).", ge=1, le=1_000_000)] = 100,
                              objective: Literal["params", "flops", "latency"] = "params",
                              max_params: Annotated[int | None, Field(description="Trials with more parameters are pruned before training.", ge=1)] = None,
                              max_memory: Annotated[int | None, Field(description="Trials whose training memory (bytes) is larger are pruned before training.", ge=1)] = None,
                              pruner: Literal["hyperband", "halving", "none"] = "hyperband",
                              metric: Annotated[Literal["loss", "accuracy"], Field(description="First objective: held-out loss, or held-out error (1 - top-1 accuracy; class targets) measured after training.")] = "loss",
                              seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0,
                              overwrite: bool = False, ctx: Context = None) -> dict[str, Any]:
    """Search a factory's design space with Optuna: multi-objective (held-out loss against parameters, forward FLOPs or
    CPU latency), each trial's size measured exactly on the meta device before training (over max_params / max_memory:
    pruned, never trained), short proxy runs stopped early by Hyperband / successive halving, the study in
    out_dir/study.db (run again to resume or extend), the Pareto front and a chart (out_dir/pareto.png). Returns every
    trial, the front and the recommendation (the front's lowest held-out loss)."""
    from archsmith.search import search

    ref, data_ref = _code_ref(model, "model"), _code_ref(data, "data")
    await ctx.report_progress(0, 1, "searching")
    result = await run_heavy(search, ref, _path(space, "space"), data_ref, _path(out_dir, "out_dir"), loss=loss, trials=trials,
                             steps=steps, objective=objective, max_params=max_params, max_memory=max_memory, pruner=pruner,
                             seed=seed, overwrite=overwrite, progress=False, metric=metric)
    await ctx.report_progress(1, 1, "done")
    result["study"] = _relative(Path(result["study"]))
    if "chart" in result:
        result["chart"] = _relative(Path(result["chart"]))
    return result


@heavy(timeout_s=900)  # loads and saves a checkpoint
async def extend_model(model: Annotated[str, Field(description="A checkpoint directory (config.json + safetensors) of a family network.py loads, relative to the workspace root.", min_length=1, max_length=1024)],
                       out_dir: RelPath,
                       layers: Annotated[list[Annotated[int, Field(ge=0, le=100_000)]] | None, Field(description="Layer indices to keep, in order: [0, 1, 3] drops 2, [0, 1, 2, 3, 3] repeats 3.", min_length=1, max_length=4096)] = None,
                       vocab: Annotated[int | None, Field(description="New vocabulary size: new rows start at the mean of the old ones.", ge=1, le=10_000_000)] = None,
                       context: Annotated[int | None, Field(description="Longer context in tokens (with rope_scaling).", ge=1, le=1 << 22)] = None,
                       rope_scaling: Literal["linear", "dynamic", "yarn"] | None = None,
                       window: Window = None, window_layers: WindowLayers = None,
                       moe: Annotated[str | None, Field(description="Upcycle MLPs into 'EXPERTS:TOP_K' MoE layers whose experts copy the dense MLP.",
                                                        pattern=r"^\d{1,4}:\d{1,4}$")] = None,
                       moe_layers: MoeLayers = None,
                       overwrite: bool = False, ctx: Context = None) -> dict[str, Any]:
    """Reshape a pretrained decoder and save it where transformers' AutoModelForCausalLM loads it: keep, drop or
    repeat layers (each new layer a copy of the one it names), grow or cut the vocabulary (existing rows kept, new
    ones at the mean: logits of existing tokens unchanged, measured), lengthen the context with RoPE scaling
    (linear, dynamic, YaRN), add sliding windows on a layer pattern or upcycle MLPs into MoE layers (experts copy the
    dense MLP: the output is unchanged, measured); a layout the family cannot express moves it to the registry family
    that can (`adopted` lists what that family hard-codes). Returns the exact parameter delta (and active parameters)
    and the new layers, vocabulary, context, windows and experts."""
    from archsmith.extend import extend
    from archsmith.files import check_out_dir

    source = _path(model, "model")
    out = _path(out_dir, "out_dir")
    check_out_dir(out, overwrite)
    await ctx.report_progress(0, 1, "extending")
    report = await run_heavy(extend, source, out, layers, vocab, context, rope_scaling, window=window, window_layers=window_layers,
                             moe=moe, moe_layers=moe_layers, overwrite=overwrite)
    report["model"], report["out"] = model, out_dir
    report["files"] = [_relative(Path(p)) for p in report["files"]]
    await ctx.report_progress(1, 1, "done")
    return report




def _measure(tasks: list[str], include: list[str], limit: int | None, data: str | None) -> dict[str, Any]:
    """The eval_* arguments as the engine takes them, paths resolved under the workspace."""
    return {"eval_tasks": list(tasks), "eval_include": [str(_path(d, "eval_include")) for d in include], "eval_limit": limit,
            "eval_data": str(_path(data, "eval_data")) if data else None}


@heavy(timeout_s=1800)  # importance on calibration text + latency sweeps of teacher and student
async def compress_model(model: ModelRef, out_dir: RelPath,
                         reduction: Annotated[float, Field(description="Share of parameters to remove: 0.5 halves the model.", gt=0, lt=1)] = 0.5,
                         strategy: Literal["depth", "width", "both"] = "both",
                         v2: Annotated[bool, Field(description="Operational efficiency: GQA/MQA with mean-pooled KV heads (decoders), tanh-GELU (encoders).")] = False,
                         kv_heads: Annotated[int | None, Field(description="With v2, KV heads of a decoder student (1 = MQA).", ge=1, le=1024)] = None,
                         calibration: Annotated[str | None, Field(description="Calibration text file (one sample per line), relative to the workspace root.", max_length=1024)] = None,
                         heldout: Annotated[str | None, Field(description="Held-out text file for the fidelity report.", max_length=1024)] = None,
                         inputs: CodeRef = None, data: CodeRef = None,
                         invariance: Annotated[list[Literal["permutation", "rotation"]], Field(max_length=2)] = [],
                         route: Literal["auto", "knobs", "prune"] = "auto",
                         eval_tasks: EvalTasks = [], eval_include: EvalInclude = [], eval_limit: EvalLimit = None,
                         eval_data: EvalData = None, overwrite: bool = False, ctx: Context = None) -> dict[str, Any]:
    """Make a smaller student initialised from the teacher and write it to out_dir. Text models: a BERT-style encoder or
    a decoder ({decoders}; Llama-layout blocks) get layer selection that reduces later layers more, width and head
    pruning by activation importance on calibration text (v2: mean-pooled GQA/MQA for decoders), saved as
    config.json + model.safetensors for AutoModel / AutoModelForCausalLM. Any other nn.Module (a model directory such as
    ResNet or ViT, or file.py:factory when the server allows code; inputs / data: file.py:fn giving one batch / batches)
    goes by its factory's size knobs (route knobs) or torch-pruning of blocks, channels and heads (route prune); v2
    rewrites operations (linear attention, tanh-GELU, depthwise-separable convolutions, lower lmax); invariance permutation / rotation
    is measured on teacher and student and a student breaking one is refused. Returns parameters, FLOPs, saved
    activations and measured CPU latency of teacher vs student, the fidelity before distillation and the decisions.
    An unreachable reduction is refused with the nearest feasible ones. eval_tasks / eval_data add `quality`: the
    teacher's and the student's task metrics (as evaluate_quality measures them) side by side."""
    from archsmith.compress import compress
    from archsmith.files import check_out_dir

    ref, allow = _model(model)
    out = _path(out_dir, "out_dir")
    check_out_dir(out, overwrite)
    calibration_file = _path(calibration, "calibration") if calibration else None
    heldout_file = _path(heldout, "heldout") if heldout else None
    await ctx.report_progress(0, 1, "compressing")
    report = await run_heavy(compress, ref, reduction, out, strategy=strategy, v2=v2, kv_heads=kv_heads, calibration=calibration_file,
                             heldout=heldout_file, inputs=_code_ref(inputs, "inputs"), data=_code_ref(data, "data"),
                             invariance=list(invariance), route=route, allow_code=allow, overwrite=overwrite,
                             **_measure(eval_tasks, eval_include, eval_limit, eval_data))
    report["files"] = [_relative(Path(p)) for p in report["files"]]
    await ctx.report_progress(1, 1, "done")
    return report


@heavy(timeout_s=1800)  # export + validation at several shapes + latency
async def export_model(model: ModelRef, out_dir: RelPath, format: Literal["onnx", "pt2", "torchscript"] = "onnx",
                       quantize: Annotated[Literal["int8"] | None, Field(description="int8: onnxruntime dynamic quantisation (onnx only).")] = None,
                       overwrite: bool = False,
                       static: Annotated[bool, Field(description="Fixed shapes (the example's) instead of dynamic ones, for a model whose dynamic-shape export differs from eager.")] = False,
                       ctx: Context = None) -> dict[str, Any]:
    """Export a model directory to ONNX (torch.export-based exporter, dynamic batch and sequence axes, run through
    onnxruntime), torch.export (.pt2, reloaded and run) or TorchScript (deprecated upstream). The artifact is validated
    against eager at several batch sizes and lengths (max abs diff and the tolerance) and timed against eager (and int8);
    unsupported operations are named with their module and source line; nothing is written unless validation passes.
    When dynamic shapes make the export differ from eager, the error names the input whose dynamic dimensions break it
    and offers `static` (fixed shapes)."""
    from archsmith.export import export
    from archsmith.files import check_out_dir

    ref, allow = _model(model)
    allow = allow or _student_code(Path(ref), "model")
    out = _path(out_dir, "out_dir")
    check_out_dir(out, overwrite)
    await ctx.report_progress(0, 1, "exporting")
    report = await run_heavy(export, ref, format, out, quantize=quantize, allow_code=allow, overwrite=overwrite, static=static)
    report["files"] = [_relative(Path(p)) for p in report["files"]]
    await ctx.report_progress(1, 1, "done")
    return report


# ---- tokenizer training and training runs ---------------------------------------------------------

CorpusPaths = Annotated[list[Annotated[str, Field(min_length=1, max_length=1024)]],
                        Field(description="Corpus files or directories, relative to the workspace root: text (a blank line ends a "
                                          "document), JSONL (one document per line, see field) or directories of them.",
                              min_length=1, max_length=256)]
JsonlField = Annotated[str, Field(description="The string field of JSONL records.", min_length=1, max_length=128)]
RunDir = Annotated[str, Field(description="The run directory, relative to the workspace root.", min_length=1, max_length=1024)]


@heavy(timeout_s=3600)  # a large corpus takes minutes to tokenize and train on
async def train_tokenizer(corpus: CorpusPaths, out_dir: RelPath,
                          vocab: Annotated[int, Field(description="Vocabulary size including special tokens (a small corpus may yield fewer).", ge=64, le=1 << 20)],
                          kind: Annotated[Literal["bpe", "unigram", "wordpiece", "sentencepiece", "sentencepiece-bpe"],
                                          Field(description="bpe: byte-level BPE (lossless, GPT-2/Llama 3 style); unigram: Unigram with the tokenizers "
                                                            "library; wordpiece: BERT-style (lower-cased, [CLS]/[SEP]/[MASK], for encoders: no eos); "
                                                            "sentencepiece / sentencepiece-bpe: a real SentencePiece tokenizer.model (unigram / BPE, "
                                                            "byte fallback, lossless) plus its tokenizer.json.")] = "bpe",
                          special: Annotated[list[Annotated[str, Field(min_length=1, max_length=64)]], Field(description="Extra special tokens after <pad> <s> </s> <unk> (ids 0-3; wordpiece: after [PAD] [UNK] [CLS] [SEP] [MASK], ids 0-4).", max_length=1000)] = [],
                          field: JsonlField = "text",
                          max_length: Annotated[int | None, Field(description="model_max_length to record: the context you will design for.", ge=1, le=1 << 24)] = None,
                          overwrite: bool = False, ctx: Context = None) -> dict[str, Any]:
    """Train a tokenizer on a corpus and write tokenizer.json, tokenizer_config.json, special_tokens_map.json and
    tokenizer_report.json (plus vocab.txt for wordpiece, tokenizer.model for sentencepiece) into out_dir (AutoTokenizer
    loads it; pass it as tokenizer_dir to write_design). Returns the report: vocabulary size, characters and bytes per
    token, unknown-token rate and document-length percentiles in tokens, measured on held-out documents (every 20th)
    the same way for every kind, training speed, and warnings (a corpus or held-out sample too small)."""
    from archsmith.files import check_out_dir, write_files
    from archsmith.tokenizer import FILES

    paths = [str(_path(c, "corpus")) for c in corpus]
    out = _path(out_dir, "out_dir")
    check_out_dir(out, overwrite)
    await ctx.report_progress(0, 2, "training the tokenizer")

    def run():
        from archsmith.tokenizer import train_tokenizer as train

        return train(paths, vocab, kind=kind, special=special, text_field=field, max_length=max_length, progress=False)

    files, report = await run_heavy(run)
    written = write_files(out, files, overwrite, stale=FILES)  # no other kind's vocab.txt or .model
    await ctx.report_progress(2, 2, "done")
    return {**report, "files": [_relative(p) for p in written]}


@heavy  # validates the run's inputs (config, tokenizer, data) before the detached process starts
def start_training(model_dir: Annotated[str, Field(description="A design directory or config.json (fresh weights), or a model directory with safetensors (continued training), relative to the workspace root.", min_length=1, max_length=1024)],
                   data: CorpusPaths, out_dir: RunDir, tokenizer_dir: TokenizerDir = None,
                   steps: Annotated[int, Field(description="Optimizer steps.", ge=1, le=10**9)] = 1000,
                   batch: Annotated[int, Field(description="Global batch in sequences per optimizer step.", ge=1, le=1 << 20)] = 32,
                   micro_batch: Annotated[int | None, Field(description="Sequences per forward/backward per process (default: batch / nproc).", ge=1, le=1 << 20)] = None,
                   seq: Annotated[int | None, Field(description="Tokens per sequence (default: the model's context).", ge=2, le=1 << 24)] = None,
                   lr: Annotated[float | None, Field(description="Peak AdamW learning rate (default: for fresh weights, DeepSeek LLM's fit for the run's compute, as write_design's recipe; 3e-4 when continuing from weights).", gt=0, le=1)] = None,
                   schedule: Literal["cosine", "linear", "wsd"] = "cosine",
                   warmup: Annotated[int | None, Field(description="Warmup steps (default: 5% of steps, at most 2000).", ge=0)] = None,
                   save_every: Annotated[int, Field(description="Steps between checkpoints (0: only at the end).", ge=0)] = 1000,
                   eval_every: Annotated[int | None, Field(description="Steps between held-out evaluations (default: save_every).", ge=0)] = None,
                   eval_samples: Annotated[int, Field(description="Held-out sequences per evaluation.", ge=1, le=1 << 20)] = 256,
                   patience: Annotated[int | None, Field(description="Early stopping: evaluations without improvement.", ge=1)] = None,
                   precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto",
                   document_mask: bool = False, field: JsonlField = "text", resume: bool = False,
                   seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0,
                   nproc: Annotated[int, Field(description="Processes on this machine (torchrun); one per GPU.", ge=1, le=64)] = 1,
                   strategy: Literal["ddp", "fsdp"] = "ddp",
                   tp: Annotated[int, Field(description="Tensor-parallel degree (nproc must be a multiple of tp x pp x cp).", ge=1, le=64)] = 1,
                   pp: Annotated[int, Field(description="Pipeline-parallel degree (stages of consecutive layers).", ge=1, le=64)] = 1,
                   cp: Annotated[int, Field(description="Context-parallel degree (ring attention; CUDA only).", ge=1, le=64)] = 1,
                   pp_schedule: Literal["1f1b", "interleaved", "gpipe"] = "1f1b",
                   tensorboard: Annotated[bool, Field(description="Also write metrics as TensorBoard event files in out_dir/tensorboard.")] = False,
                   eval_tasks: Annotated[list[Annotated[str, Field(min_length=1, max_length=200)]], Field(description="lm-evaluation-harness tasks measured at every evaluation (metrics.jsonl's eval rows: 'task/acc', ...).", max_length=32)] = [],
                   eval_include: Annotated[str | None, Field(description="Directory of local task YAMLs for eval_tasks, relative to the workspace root.", max_length=1024)] = None,
                   eval_limit: EvalLimit = None) -> dict[str, Any]:
    """Start `archsmith train` in the background and return at once (run_dir, pid, command). Bad settings (missing
    tokenizer, a vocabulary smaller than the tokenizer's, an out_dir that holds another run without resume, resume
    without a checkpoint) are refused here. The run writes metrics.jsonl, checkpoints, final/ (an HF model directory),
    loss.png and report.md into out_dir; follow it with training_status, stop it with stop_training. eval_tasks adds
    lm-evaluation-harness task metrics to every evaluation (one process or DDP)."""
    from dataclasses import replace

    from archsmith.quality import check_measure

    from archsmith.train.background import start
    from archsmith.train.run import RunArgs

    args = RunArgs(model=str(_path(model_dir, "model_dir")), data=[str(_path(d, "data")) for d in data],
                   out=str(_path(out_dir, "out_dir")), tokenizer=str(_path(tokenizer_dir, "tokenizer_dir")) if tokenizer_dir else None,
                   steps=steps, batch=batch, micro_batch=micro_batch, seq=seq, lr=lr, schedule=schedule, warmup=warmup,
                   save_every=save_every, eval_every=eval_every, eval_samples=eval_samples, patience=patience, precision=precision,
                   document_mask=document_mask, field=field, resume=resume, seed=seed, nproc=nproc, strategy=strategy,
                   tp=tp, pp=pp, cp=cp, pp_schedule=pp_schedule, tensorboard=tensorboard, eval_tasks=",".join(eval_tasks) or None, eval_include=str(_path(eval_include, "eval_include")) if eval_include else None,
                   eval_limit=eval_limit, progress=False)
    if eval_tasks:  # the run itself would accept task YAMLs that load Python: this server refuses them unless allowed
        check_measure(list(eval_tasks), [args.eval_include] if args.eval_include else [], allow_code=os.environ.get(ALLOW_CODE_ENV) == "1")
    with _named(model="model_dir", out="out_dir", tokenizer="tokenizer_dir"):
        shown = replace(args, model=_relative(Path(args.model)), data=[_relative(Path(d)) for d in args.data], out=out_dir,
                        tokenizer=_relative(Path(args.tokenizer)) if args.tokenizer else None)
        return start(args, workspace(), shown, client=_client())


def _client() -> str:
    """Who calls (the MCP session or client), as training runs record their owner."""
    from archsmith.mcp_server.pool import current_client

    return repr(current_client.get())


def training_status(out_dir: RunDir,
                    rows: Annotated[int, Field(description="How many of the last training rows to return.", ge=1, le=1000)] = 1) -> dict[str, Any]:
    """State of a training run: running / finished / stopped / failed / died, step of steps, the last metrics rows
    (loss, lr, tokens, tokens_per_s, grad_norm), the last held-out evaluation (loss, perplexity), the checkpoints on
    disk, the summary when finished and the log's tail when it failed."""
    from archsmith.train.background import status

    with _named(out="out_dir"):
        return _hide_root({**status(_path(out_dir, "out_dir"), rows, client=_client()), "run_dir": out_dir})


def _hide_root(value: Any) -> Any:
    """Every string in `value` with workspace paths made relative (a run's errors and summary name host paths)."""
    from archsmith.mcp_server.server import hide_root

    if isinstance(value, str):
        return hide_root(value, workspace())
    if isinstance(value, dict):
        return {k: _hide_root(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_hide_root(v) for v in value]
    return value


def stop_training(out_dir: RunDir) -> dict[str, Any]:
    """Stop a background training run gracefully: it finishes its current step, writes a checkpoint and exits with
    state 'stopped'; start_training with resume=true continues it."""
    from archsmith.train.background import stop

    with _named(out="out_dir"):
        return {**stop(_path(out_dir, "out_dir"), client=_client()), "run_dir": out_dir}


estimate_config.__doc__ = estimate_config.__doc__.format(families=", ".join(families.NAMES))
build_model.__doc__ = build_model.__doc__.format(buildable=", ".join(families.with_parity("both", "load")))
compress_model.__doc__ = compress_model.__doc__.format(decoders=", ".join(families.with_parity("both")))

@heavy(timeout_s=3600)  # a training run: minutes on a CPU for a small student
async def distill_model(teacher: Annotated[str, Field(description="Teacher: a model directory (config.json + safetensors; text models with their tokenizer) relative to the workspace root, or file.py:factory when the server allows code.", min_length=1, max_length=1024)],
                        student: Annotated[str, Field(description="Student directory, what compress_model wrote (text models: same kind and vocabulary).", min_length=1, max_length=1024)],
                        data: CorpusPaths, out_dir: RunDir,
                        steps: Annotated[int, Field(description="Optimizer steps.", ge=1, le=1_000_000)] = 200,
                        temperature: Annotated[float, Field(description="Softening of the teacher's logits (LMs); the KL is scaled by T^2.", ge=0.1, le=100)] = TEMPERATURE,
                        alpha: Annotated[float, Field(description="LMs: weight of the soft-target KL; 1 - alpha goes to the next-token loss.", ge=0, le=1)] = ALPHA,
                        hidden_weight: Annotated[float, Field(description="Weight of the hidden-state loss (relative MSE through a learned projection); 0 disables.", ge=0, le=100)] = HIDDEN_WEIGHT,
                        attention_weight: Annotated[float, Field(description="Encoders: weight of attention transfer (MSE of head-averaged maps).", ge=0, le=100)] = 0.0,
                        lr: Annotated[float, Field(description="Peak AdamW learning rate.", ge=1e-7, le=1)] = LR,
                        batch: Annotated[int, Field(description="Samples per optimizer step.", ge=1, le=4096)] = 16,
                        seq: Annotated[int, Field(description="Tokens per sample (encoders: at most; LMs: packed windows).", ge=8, le=8192)] = 128,
                        heldout: Annotated[str | None, Field(description="Held-out text file for the fidelity report (default: shipped English sentences).", max_length=1024)] = None,
                        loss: Annotated[Literal["auto", "mse", "kl"], Field(description="Students of other modules: output loss (auto: KL for a transformers model's logits, else relative squared error).")] = "auto",
                        feature_weight: Annotated[float, Field(description="Students of other modules: weight of matching the blocks both keep.", ge=0, le=100)] = 1.0,
                        eval_tasks: EvalTasks = [], eval_include: EvalInclude = [], eval_limit: EvalLimit = None,
                        eval_data: EvalData = None, resume: bool = False, ctx: Context = None) -> dict[str, Any]:
    """Distil a teacher into a student (a BERT-style encoder, or a causal LM of the families network.py matches) on a
    corpus, with the training loop of start_training: temperature-softened KL x T^2 plus next-token loss for LMs, the
    teacher's in-batch sentence-similarity matrix for encoders, hidden states through a learned projection from the
    layers compress_model kept, optional attention transfer. Writes out_dir/final (the distilled student: AutoModel /
    AutoModelForCausalLM load it), checkpoints (resume continues them), metrics.jsonl, loss.png, distillation.json and
    fidelity.png. Returns the fidelity on held-out text before and after (similarity agreement for encoders; KL to the
    teacher and perplexity for LMs) and the training summary. A student of any other nn.Module (compress_model's
    student.json) learns on data = [file.py:fn] (its batches; the server must allow code) by output matching plus
    the blocks both keep; final/ is a student directory again. eval_tasks / eval_data add `quality`: the teacher's
    and the distilled student's task metrics side by side."""
    from archsmith.distill import distill, is_module_student

    student_dir, out = _path(student, "student"), _path(out_dir, "out_dir")
    await ctx.report_progress(0, 1, "distilling")
    if is_module_student(student_dir):
        ref, _ = _model(teacher)  # _model, _code_ref and _student_code refuse code unless the server allows it
        _student_code(student_dir, "student")
        report = await run_heavy(distill, ref, student_dir, [_code_ref(d, "data") for d in data], out, steps=steps, lr=lr,
                                 loss=loss, temperature=temperature, feature_weight=feature_weight, resume=resume,
                                 progress=False)
    else:
        paths = [str(_path(d, "data")) for d in data]
        heldout_file = _path(heldout, "heldout") if heldout else None
        report = await run_heavy(distill, _path(teacher, "teacher"), student_dir, paths, out,
                                 steps=steps, temperature=temperature, alpha=alpha, hidden_weight=hidden_weight,
                                 attention_weight=attention_weight, lr=lr, batch=batch, seq=seq, heldout=heldout_file,
                                 resume=resume, progress=False, allow_code=os.environ.get(ALLOW_CODE_ENV) == "1",
                                 **_measure(eval_tasks, eval_include, eval_limit, eval_data))
    report["files"] = [_relative(Path(p)) for p in report["files"]]
    report["final"] = _relative(Path(report["final"]))
    await ctx.report_progress(1, 1, "done")
    return report


TOOLS = [design_architecture, write_design, estimate_config, emit_hf_config, compute_optimal_sizing,
         list_scale_templates, list_gpus, build_model, search_models, evaluate_model, plan_finetune, evaluate_quality,
         analyze_model, prove_module, search_architecture, extend_model, compress_model, distill_model, export_model, train_tokenizer, start_training, training_status, stop_training]
