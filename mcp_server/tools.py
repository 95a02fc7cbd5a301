"""The MCP tools: typed adapters, one engine call each. Register a new tool by adding it to TOOLS.

Arguments carry their bounds and descriptions (the input schema an LLM reads); the docstring
says when to call the tool. Engine errors (`ArchsmithError`: "field: what is allowed") become
MCP tool errors. Heavy modules (torch, transformers, matplotlib) load inside the tools that need them.
Annotations stay real objects here (no `from __future__ import annotations`): the SDK reads them.
"""

import os
from pathlib import Path
from typing import Annotated, Any, Literal, TypedDict

import anyio.to_thread
from mcp.server.mcpserver import Context
from pydantic import Field

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
    from archsmith.files import inside

    return inside(workspace(), relative, field)


def _relative(path: Path) -> str:
    return str(path.relative_to(workspace()))


# ---- argument types ---------------------------------------------------------------------------

Count = Annotated[str | None, Field(description="A count with an optional K/M/B/T suffix, e.g. '125M', '1.5B', '7B'.", max_length=40)]
Compute = Annotated[str | None, Field(description="Compute budget in FLOPs, e.g. '1e21' (1e15 to 1e28).", max_length=40)]
Memory = Annotated[str | None, Field(description="Training memory budget per GPU, e.g. '24GB' or '80GiB'.", max_length=40)]
Context_ = Annotated[int | None, Field(description="Context length in tokens (default: the template's).", ge=128, le=1 << 24)]
Vocab = Annotated[int | None, Field(description="Vocabulary size when no tokenizer is given (padded to a multiple of 128).", ge=1, le=1 << 22)]
Gpu = Annotated[str, Field(description="GPU kind from list_gpus, e.g. 'h100', 'a100-80gb', 'l4'.", min_length=1, max_length=64)]
Gpus = Annotated[int, Field(description="Number of GPUs for training.", ge=1, le=65536)]
Mfu = Annotated[float, Field(description="Assumed model-FLOPs utilisation for time estimates.", gt=0, le=1)]
TokenizerDir = Annotated[str | None, Field(description="Tokenizer directory (tokenizer.json + tokenizer_config.json), relative to the workspace root.", max_length=1024)]
RelPath = Annotated[str, Field(description="Path relative to the workspace root (no '..', not absolute).", min_length=1, max_length=1024)]
ConfigDict = Annotated[dict[str, Any] | None, Field(description="An inline Hugging Face config.json object (give this or config_path).")]
ConfigPath = Annotated[str | None, Field(description="A config.json file or model directory, relative to the workspace root (give this or config).", max_length=1024)]


class DesignSummary(TypedDict):
    target: dict[str, Any]
    template: str
    vocab: dict[str, Any]
    context_check: str
    candidates: list[dict[str, Any]]
    recommended: str
    rationale: list[str]
    scaling_path: list[dict[str, Any]]


class WrittenDesign(TypedDict):
    files: list[str]  # relative to the workspace root
    recommended: str
    params: int
    config: dict[str, Any]


class EmittedConfig(TypedDict):
    config: dict[str, Any]
    written: str | None


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
    return spec_from_hf(config if config is not None else read_config(_path(config_path, "config_path")))


def _design(params, compute, memory, context, vocab, gpu, gpus, tokens, mfu, tokenizer_dir) -> dict[str, Any]:
    from archsmith.design import design_from_text

    tokenizer = str(_path(tokenizer_dir, "tokenizer_dir")) if tokenizer_dir else None
    return design_from_text(params=params, compute=compute, memory=memory, context=context, tokenizer=tokenizer,
                            gpu=gpu, gpus=gpus, tokens=tokens, mfu=mfu, vocab=vocab)


# ---- tools ------------------------------------------------------------------------------------

def design_architecture(params: Count = None, compute: Compute = None, memory: Memory = None, context: Context_ = None,
                        vocab: Vocab = None, gpu: Gpu = "h100", gpus: Gpus = 8, tokens: Count = None, mfu: Mfu = 0.4,
                        tokenizer_dir: TokenizerDir = None) -> DesignSummary:
    """Design a decoder-only LM for ONE budget: params (e.g. '1B'), compute (FLOPs, Chinchilla-sized) or memory
    per GPU. Returns 3-4 candidate shapes with exact parameter counts, FLOPs, training time, memory per GPU and
    KV cache per request, the recommended one with its rationale, and a scaling path. Writes nothing."""
    from archsmith.design import summary

    return summary(_design(params, compute, memory, context, vocab, gpu, gpus, tokens, mfu, tokenizer_dir))


async def write_design(out_dir: RelPath, params: Count = None, compute: Compute = None, memory: Memory = None,
                       context: Context_ = None, vocab: Vocab = None, gpu: Gpu = "h100", gpus: Gpus = 8, tokens: Count = None,
                       mfu: Mfu = 0.4, tokenizer_dir: TokenizerDir = None, overwrite: bool = False,
                       ctx: Context = None) -> WrittenDesign:
    """Design as design_architecture does, then write config.json (loads in transformers), architecture_report.md,
    capacity_plan.md and two memory charts (PNG) into out_dir under the workspace root. An existing non-empty
    out_dir is refused unless overwrite is true; files appear all at once or not at all."""
    import json

    from archsmith.files import check_out_dir, write_files

    out = _path(out_dir, "out_dir")
    check_out_dir(out, overwrite)
    await ctx.report_progress(0, 3, "designing")
    result = await anyio.to_thread.run_sync(_design, params, compute, memory, context, vocab, gpu, gpus, tokens, mfu, tokenizer_dir)
    await ctx.report_progress(1, 3, "rendering reports and charts")

    def render():
        from archsmith.report import render_design

        return render_design(result, out_dir)

    files = await anyio.to_thread.run_sync(render)
    await ctx.report_progress(2, 3, "writing files")
    written = write_files(out, files, overwrite)
    await ctx.report_progress(3, 3, "done")
    rec = result["recommended"]
    return {"files": [_relative(p) for p in written], "recommended": rec.name, "params": rec.summary["params"]["total"],
            "config": json.loads(files["config.json"])}


def estimate_config(config: ConfigDict = None, config_path: ConfigPath = None,
                    batch: Annotated[int, Field(description="Micro-batch size in sequences.", ge=1, le=1 << 20)] = 1,
                    seq: Annotated[int | None, Field(description="Sequence length (default: the model's context).", ge=1, le=1 << 24)] = None,
                    dtype: Annotated[Literal["fp32", "bf16", "fp16"], Field(description="Training precision; bf16/fp16 keep fp32 master weights.")] = "bf16",
                    optimizer: Literal["adamw", "adamw8bit", "sgd", "adafactor"] = "adamw",
                    checkpointing: Annotated[bool, Field(description="Activation checkpointing per decoder layer.")] = False,
                    attention: Literal["sdpa", "eager"] = "sdpa") -> dict[str, Any]:
    """Parameters (total, embedding, per layer, per component), FLOPs per token and memory (weights, gradients,
    fp32 master + optimizer state, activations, logits, KV cache; training and inference totals) of a Hugging Face
    config.json, in closed form. Families: llama, mistral, qwen2, qwen3, gemma2, olmo2, phi3, gpt2, mixtral, qwen3_moe."""
    from archsmith.estimate import estimate

    spec = _spec(config, config_path)
    result = estimate(spec, batch=batch, seq=seq, dtype=dtype, optimizer=optimizer, checkpointing=checkpointing, attention=attention)
    return {**result, "spec": spec.to_dict()}


def emit_hf_config(spec: Annotated[dict[str, Any], Field(description="ArchitectureSpec fields: hidden_size, num_layers, num_heads, num_kv_heads, ffn_size, vocab_size, and optional context_length, head_dim, rope_theta, tie_embeddings, ... (as design_architecture returns them).")],
                   model_type: Literal["llama", "mistral", "qwen2", "qwen3", "gemma2", "olmo2", "phi3", "mixtral", "qwen3_moe", "gpt2"] | None = None,
                   dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16",
                   out_path: Annotated[str | None, Field(description="Optional file to write, relative to the workspace root.", max_length=1024)] = None,
                   overwrite: bool = False) -> EmittedConfig:
    """Turn an architecture spec into the config.json that transformers' AutoConfig/AutoModelForCausalLM load.
    Refuses, naming the field, a spec the chosen family cannot express (e.g. QK-norm in llama)."""
    import json

    from archsmith.files import write_file
    from archsmith.hfconfig import hf_from_spec
    from archsmith.spec import ArchitectureSpec

    config = hf_from_spec(ArchitectureSpec.from_dict(spec), model_type=model_type, dtype=dtype)
    written = None
    if out_path is not None:
        target = write_file(_path(out_path, "out_path"), json.dumps(config, indent=2) + "\n", overwrite, "out_path")
        written = _relative(target)
    return {"config": config, "written": written}


def compute_optimal_sizing(compute_flops: Annotated[float | None, Field(description="Compute budget in FLOPs (give this or params).", ge=1e15, le=1e28)] = None,
                           params: Annotated[float | None, Field(description="Model size in parameters (give this or compute_flops).", ge=1e6, le=2e12)] = None,
                           tokens: Annotated[float | None, Field(description="Training tokens for the given params (default: 20 per parameter).", ge=1e6, le=1e16)] = None) -> dict[str, Any]:
    """Chinchilla scaling: a compute budget -> compute-optimal parameters and tokens under the 20-tokens-per-parameter
    rule and both published loss fits (Hoffmann et al., Epoch AI); or a model size (+ tokens) -> training FLOPs
    and predicted loss."""
    from archsmith.scaling import plan

    return plan(compute_flops=compute_flops, params=params, tokens=tokens)


def list_scale_templates() -> dict[str, Any]:
    """The scale templates (100M, 350M, 1B, 7B): parameter ranges, width-to-depth aspect, heads, KV heads, FFN ratio,
    context and vocabulary defaults, and published models of that class."""
    from archsmith.design import scale_templates

    return {"templates": list(scale_templates())}


def list_gpus() -> dict[str, Any]:
    """The GPU table: memory (bytes), dense bf16/fp16/fp8 peak FLOPs, memory bandwidth, interconnect, with sources."""
    from archsmith.gpus import gpu_table

    return {"gpus": gpu_table()}


async def build_model(config: ConfigDict = None, config_path: ConfigPath = None,
                      depth: Annotated[int, Field(description="Module-tree depth to report (layer 0 stands for all layers).", ge=0, le=6)] = 4,
                      ctx: Context = None) -> ModelDescription:
    """Build archsmith.network.CausalLM from a config (on the meta device: no memory, any size) and report its
    module tree, parameter count and tensor count, checked against the closed-form estimate."""
    from archsmith.network import check_buildable

    spec = _spec(config, config_path)
    check_buildable(spec)
    await ctx.report_progress(0, 1, "building on the meta device")

    def build():
        from archsmith.network import describe

        return describe(spec, depth)

    result = await anyio.to_thread.run_sync(build)
    await ctx.report_progress(1, 1, "done")
    return result


HubId = Annotated[str, Field(description="Hugging Face model id, 'org/name'.", min_length=1, max_length=200)]
GpuOpt = Annotated[str | None, Field(description="GPU to check fit on, from list_gpus (e.g. 't4', 'l4', 'a100-80gb').", max_length=64)]


def search_models(query: Annotated[str | None, Field(description="Free text matched against model ids.", max_length=200)] = None,
                  task: Annotated[str | None, Field(description="Pipeline tag, e.g. 'text-classification'.", max_length=64)] = None,
                  library: Annotated[str | None, Field(description="e.g. 'transformers'.", max_length=64)] = None,
                  author: Annotated[str | None, Field(description="Organisation or user.", max_length=96)] = None,
                  language: Annotated[str | None, Field(description="ISO language code, e.g. 'es'.", max_length=16)] = None,
                  license: Annotated[str | None, Field(description="'commercial' (permissive licenses) or a comma list such as 'apache-2.0,mit'.", max_length=200)] = None,
                  gpu: GpuOpt = None,
                  use: Literal["run_fp16", "run_int8", "run_int4", "finetune_full", "finetune_lora", "finetune_qlora"] = "run_fp16",
                  max_params: Annotated[int | None, Field(description="Largest parameter count.", ge=1, le=10**13)] = None,
                  sort: Literal["downloads", "likes", "trending", "recent"] = "downloads",
                  limit: Annotated[int, Field(description="How many models to fetch.", ge=1, le=200)] = 20) -> dict[str, Any]:
    """Search Hugging Face Hub models and rank them: constraints first (license, fits `use` on `gpu`, max_params), then
    downloads and likes. Each hit has task, parameters (from safetensors metadata, never weights), license and whether
    it allows commercial use, gating, memory at fp16/int8/int4 and for full/LoRA/QLoRA fine-tuning, and the reasons
    for its rank. Offline (HF_HUB_OFFLINE=1) it searches the local cache and archsmith's reference architectures."""
    from archsmith.hub import search

    return search(query, task=task, library=library, author=author, language=language, license=license, gpu=gpu, use=use,
                  max_params=max_params, sort=sort, limit=limit)


def evaluate_model(model_id: HubId, gpu: GpuOpt = None) -> dict[str, Any]:
    """Evaluate one Hub model from config.json, tokenizer_config.json, the model card and the safetensors header
    (never the weights): architecture, parameters, context, vocabulary, license, gating, card sections on limitations
    and bias, provenance (base model, datasets), memory for inference and fine-tuning, fit on `gpu`."""
    from archsmith.hub import evaluate

    return evaluate(model_id, gpu=gpu)


def plan_finetune(model_id: HubId,
                  task: Literal["text-generation", "text-classification", "sentiment-analysis", "token-classification",
                                "question-answering", "fill-mask", "summarization", "translation", "text2text-generation",
                                "feature-extraction", "sentence-similarity"] = "text-generation",
                  method: Literal["auto", "full", "lora", "qlora"] = "auto",
                  gpu: Annotated[str, Field(description="The GPU the fine-tune runs on.", min_length=1, max_length=64)] = "t4") -> dict[str, Any]:
    """Plan a fine-tune of a Hub model on one GPU: picks full / LoRA / QLoRA (auto: the largest that fits) from computed
    memory, and returns the settings and a ready-to-run Python script (AutoModelFor..., dtype, sdpa, device map,
    4-bit config for QLoRA, LoRA rank/alpha and target modules taken from the model's real layer names)."""
    from archsmith.hub import plan_finetune as plan

    return plan(model_id, task=task, method=method, gpu=gpu)


# ---- tokenizer training and training runs ---------------------------------------------------------

CorpusPaths = Annotated[list[Annotated[str, Field(min_length=1, max_length=1024)]],
                        Field(description="Corpus files or directories, relative to the workspace root: text (a blank line ends a "
                                          "document), JSONL (one document per line, see field) or directories of them.",
                              min_length=1, max_length=256)]
JsonlField = Annotated[str, Field(description="The string field of JSONL records.", min_length=1, max_length=128)]
RunDir = Annotated[str, Field(description="The run directory, relative to the workspace root.", min_length=1, max_length=1024)]


async def train_tokenizer(corpus: CorpusPaths, out_dir: RelPath,
                          vocab: Annotated[int, Field(description="Vocabulary size including special tokens (a small corpus may yield fewer).", ge=64, le=1 << 20)],
                          kind: Annotated[Literal["bpe", "unigram"], Field(description="bpe: byte-level BPE (lossless, GPT-2/Llama 3 style); unigram: SentencePiece-style.")] = "bpe",
                          special: Annotated[list[Annotated[str, Field(min_length=1, max_length=64)]], Field(description="Extra special tokens after <pad> <s> </s> <unk> (ids 0-3).", max_length=1000)] = [],
                          field: JsonlField = "text",
                          max_length: Annotated[int | None, Field(description="model_max_length to record: the context you will design for.", ge=1, le=1 << 24)] = None,
                          overwrite: bool = False, ctx: Context = None) -> dict[str, Any]:
    """Train a tokenizer on a corpus and write tokenizer.json, tokenizer_config.json, special_tokens_map.json and
    tokenizer_report.json into out_dir (AutoTokenizer loads it; pass it as tokenizer_dir to write_design). Returns the
    report: vocabulary size, characters and bytes per token and document-length percentiles in tokens, measured on
    held-out documents (every 20th), and training speed."""
    from archsmith.files import check_out_dir, write_files

    paths = [str(_path(c, "corpus")) for c in corpus]
    out = _path(out_dir, "out_dir")
    check_out_dir(out, overwrite)
    await ctx.report_progress(0, 2, "training the tokenizer")

    def run():
        from archsmith.tokenizer import train_tokenizer as train

        return train(paths, vocab, kind=kind, special=special, text_field=field, max_length=max_length, progress=False)

    files, report = await anyio.to_thread.run_sync(run)
    written = write_files(out, files, overwrite)
    await ctx.report_progress(2, 2, "done")
    return {**report, "files": [_relative(p) for p in written]}


def start_training(model_dir: Annotated[str, Field(description="A design directory or config.json (fresh weights), or a model directory with safetensors (continued training), relative to the workspace root.", min_length=1, max_length=1024)],
                   data: CorpusPaths, out_dir: RunDir, tokenizer_dir: TokenizerDir = None,
                   steps: Annotated[int, Field(description="Optimizer steps.", ge=1, le=10**9)] = 1000,
                   batch: Annotated[int, Field(description="Global batch in sequences per optimizer step.", ge=1, le=1 << 20)] = 32,
                   micro_batch: Annotated[int | None, Field(description="Sequences per forward/backward per process (default: batch / nproc).", ge=1, le=1 << 20)] = None,
                   seq: Annotated[int | None, Field(description="Tokens per sequence (default: the model's context).", ge=2, le=1 << 24)] = None,
                   lr: Annotated[float, Field(description="Peak AdamW learning rate.", gt=0, le=1)] = 3e-4,
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
                   strategy: Literal["ddp", "fsdp"] = "ddp") -> dict[str, Any]:
    """Start `archsmith train` in the background and return at once (run_dir, pid, command). Bad settings (missing
    tokenizer, a vocabulary smaller than the tokenizer's, an out_dir that holds another run without resume, resume
    without a checkpoint) are refused here. The run writes metrics.jsonl, checkpoints, final/ (an HF model directory),
    loss.png and report.md into out_dir; follow it with training_status, stop it with stop_training."""
    from archsmith.train.background import start
    from archsmith.train.run import RunArgs

    args = RunArgs(model=str(_path(model_dir, "model_dir")), data=[str(_path(d, "data")) for d in data],
                   out=str(_path(out_dir, "out_dir")), tokenizer=str(_path(tokenizer_dir, "tokenizer_dir")) if tokenizer_dir else None,
                   steps=steps, batch=batch, micro_batch=micro_batch, seq=seq, lr=lr, schedule=schedule, warmup=warmup,
                   save_every=save_every, eval_every=eval_every, eval_samples=eval_samples, patience=patience, precision=precision,
                   document_mask=document_mask, field=field, resume=resume, seed=seed, nproc=nproc, strategy=strategy,
                   progress=False)
    started = start(args, cwd=workspace())
    return {**started, "run_dir": out_dir, "log": f"{out_dir.rstrip('/')}/train.log"}


def training_status(out_dir: RunDir,
                    rows: Annotated[int, Field(description="How many of the last training rows to return.", ge=1, le=1000)] = 1) -> dict[str, Any]:
    """State of a training run: running / finished / stopped / failed / died, step of steps, the last metrics rows
    (loss, lr, tokens, tokens_per_s, grad_norm), the last held-out evaluation (loss, perplexity), the checkpoints on
    disk, the summary when finished and the log's tail when it failed."""
    from archsmith.train.background import status

    return {**status(_path(out_dir, "out_dir"), rows), "run_dir": out_dir}


def stop_training(out_dir: RunDir) -> dict[str, Any]:
    """Stop a background training run gracefully: it finishes its current step, writes a checkpoint and exits with
    state 'stopped'; start_training with resume=true continues it."""
    from archsmith.train.background import stop

    return {**stop(_path(out_dir, "out_dir")), "run_dir": out_dir}


TOOLS = [design_architecture, write_design, estimate_config, emit_hf_config, compute_optimal_sizing,
         list_scale_templates, list_gpus, build_model, search_models, evaluate_model, plan_finetune,
         train_tokenizer, start_training, training_status, stop_training]
