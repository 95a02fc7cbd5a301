"""`archsmith` command line: a thin adapter over the engine (the contract is in DESIGN.md).

Every command takes --json to print one JSON object on stdout; bad input is one line on
stderr naming the field, exit code 2, nothing written.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from archsmith.errors import ArchsmithError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Model-architecture specialists: designs, estimates and configs that are computed, not guessed.")
err = Console(stderr=True)
out = Console()


def _fail(exc: Exception) -> None:
    err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if hasattr(value, "__dataclass_fields__"):
        return {k: getattr(value, k) for k in value.__dataclass_fields__}
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


@app.command()
def design(
    out_dir: Path = typer.Option(..., "--out", help="Directory for config.json and the reports (must not exist unless --overwrite)."),
    params: Optional[str] = typer.Option(None, "--params", help="Target parameter count, e.g. 125M, 1B, 7B."),
    compute: Optional[str] = typer.Option(None, "--compute", help="Compute budget in FLOPs, e.g. 1e21; sized by Chinchilla."),
    memory: Optional[str] = typer.Option(None, "--memory", help="Memory budget per GPU for training, e.g. 24GB or 80GiB."),
    context: Optional[int] = typer.Option(None, "--context", help="Context length in tokens (default: the template's)."),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", help="Tokenizer directory (tokenizer.json + tokenizer_config.json)."),
    gpu: str = typer.Option("h100", "--gpu", help="GPU kind from the GPU table (h100, a100-80gb, h200, b200, mi300x, ...)."),
    gpus: int = typer.Option(8, "--gpus", help="Number of GPUs for training."),
    tokens: Optional[str] = typer.Option(None, "--tokens", help="Training tokens, e.g. 100B (default: Chinchilla's 20 per parameter)."),
    mfu: float = typer.Option(0.40, "--mfu", help="Assumed model-FLOPs utilisation for time estimates, in (0, 1]."),
    vocab: Optional[int] = typer.Option(None, "--vocab", help="Vocabulary size when no tokenizer is given."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace files in an existing --out directory."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Design a decoder-only LM for a parameter, compute or memory budget and write config.json + reports."""
    from archsmith import design as designer
    from archsmith.files import check_out_dir, write_files
    from archsmith.report import render_design

    try:
        check_out_dir(out_dir, overwrite)
        result = designer.design_from_text(params=params, compute=compute, memory=memory, context=context,
                                           tokenizer=str(tokenizer) if tokenizer else None, gpu=gpu, gpus=gpus,
                                           tokens=tokens, mfu=mfu, vocab=vocab)
        written = write_files(out_dir, render_design(result, str(out_dir)), overwrite)
    except ArchsmithError as exc:
        _fail(exc)
    rec = result["recommended"]
    summary = {**designer.summary(result), "files": [str(p) for p in written]}
    if as_json:
        _json(summary)
        return
    from archsmith.units import human_bytes, human_count, human_duration

    table = Table(title=f"Candidates for {human_count(result['target']['params'])} parameters ({result['template']['name']} template)")
    for col in ("candidate", "hidden x layers", "heads/kv", "ffn", "params", "train time", "mem/GPU", "KV/request"):
        table.add_column(col, justify="right" if col not in ("candidate",) else "left")
    for c in result["candidates"]:
        s = c.summary
        table.add_row(("* " if c is rec else "  ") + c.name, s["shape"], f"{c.spec.num_heads}/{c.spec.num_kv_heads}", str(c.spec.ffn_size),
                      f"{s['params']['total']:,}", human_duration(s["train_time"]["seconds"]),
                      human_bytes(s["memory_per_gpu"]["total_bytes"]), human_bytes(s["kv_cache_per_request"]))
    out.print(table)
    out.print(f"recommended: [bold]{rec.name}[/bold] - " + "; ".join(result["rationale"]))
    out.print(f"{result['context_check']}")
    out.print("wrote " + ", ".join(str(p) for p in written))


@app.command()
def estimate(
    config: str = typer.Argument(..., help="A config.json file, a model directory holding one, or a Hub id (org/name: only config.json is fetched)."),
    batch: int = typer.Option(1, "--batch", help="Micro-batch size (sequences)."),
    seq: Optional[int] = typer.Option(None, "--seq", help="Sequence length (default: the model's context)."),
    dtype: str = typer.Option("bf16", "--dtype", help="fp32, bf16 or fp16 (bf16/fp16 imply fp32 master weights)."),
    optimizer: str = typer.Option("adamw", "--optimizer", help="adamw, adamw8bit, sgd or adafactor."),
    checkpointing: bool = typer.Option(False, "--checkpointing", help="Activation checkpointing per decoder layer."),
    attention: str = typer.Option("sdpa", "--attention", help="sdpa (fused/flash) or eager."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Parameters, FLOPs and memory of a model from its config.json, in closed form."""
    from archsmith import estimate as est
    from archsmith.hub import spec_for

    try:
        spec = spec_for(config)
        result = est.estimate(spec, batch=batch, seq=seq, dtype=dtype, optimizer=optimizer, checkpointing=checkpointing, attention=attention)
    except ArchsmithError as exc:
        _fail(exc)
    result["spec"] = spec.to_dict()
    if as_json:
        _json(result)
        return
    from archsmith.units import human_bytes

    p, f, m = result["params"], result["flops"], result["memory"]
    t = Table(title=f"{config} ({spec.model_type}, {spec.hidden_size} x {spec.num_layers})", show_header=False)
    t.add_column("what")
    t.add_column("value", justify="right")
    rows = [
        ("parameters", f"{p['total']:,}"), ("  embedding", f"{p['embedding']:,}"), ("  lm_head", f"{p['lm_head']:,}" + (" (tied)" if p["tied_embeddings"] else "")),
        ("  per layer", f"{p['per_layer']:,}"), ("  non-embedding", f"{p['non_embedding']:,}"),
        (f"forward FLOPs/token at {f['seq']} (causal)", f"{f['forward_per_token']:,}"), ("training FLOPs/token", f"{f['training_per_token']:,}"),
        ("weights", human_bytes(m["weights_bytes"])), ("gradients", human_bytes(m["gradients_bytes"])),
        ("optimizer (incl. fp32 master)", human_bytes(m["optimizer_bytes"])), ("activations", human_bytes(m["activations_bytes"])),
        ("logits", human_bytes(m["logits_bytes"])), ("training total", human_bytes(m["training_total_bytes"])),
        ("KV cache", human_bytes(m["kv_cache_bytes"])), ("inference total", human_bytes(m["inference_total_bytes"])),
    ]
    for row in rows:
        t.add_row(*row)
    out.print(t)


@app.command()
def search(
    query: Optional[str] = typer.Argument(None, help="Free text matched against model ids."),
    task: Optional[str] = typer.Option(None, "--task", help="Pipeline tag, e.g. text-classification, text-generation."),
    library: Optional[str] = typer.Option(None, "--library", help="e.g. transformers, sentence-transformers."),
    author: Optional[str] = typer.Option(None, "--author", help="Organisation or user."),
    language: Optional[str] = typer.Option(None, "--language", help="ISO code, e.g. es."),
    license: Optional[str] = typer.Option(None, "--license", help="'commercial' (permissive preset) or a comma list, e.g. apache-2.0,mit."),
    gpu: Optional[str] = typer.Option(None, "--gpu", help="GPU to check fit on (e.g. t4, l4, a100-80gb)."),
    use: str = typer.Option("run_fp16", "--use", help="What must fit: run_fp16|run_int8|run_int4|finetune_full|finetune_lora|finetune_qlora."),
    max_params: Optional[str] = typer.Option(None, "--max-params", help="Largest parameter count, e.g. 1B."),
    sort: str = typer.Option("downloads", "--sort", help="downloads, likes, trending or recent."),
    limit: int = typer.Option(20, "--limit", help="How many models to fetch (1-200)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Search the Hub, enrich each hit from its metadata (never weights) and rank by your constraints."""
    from archsmith.hub import search as hub_search
    from archsmith.units import parse_count

    try:
        result = hub_search(query, task=task, library=library, author=author, language=language, license=license, gpu=gpu,
                            use=use, max_params=parse_count(max_params, "max_params") if max_params else None, sort=sort, limit=limit)
    except ArchsmithError as exc:
        _fail(exc)
    if as_json:
        _json(result)
        return
    from archsmith.units import human_bytes, human_count

    table = Table(title=f"Models from {result['source']}")
    for col in ("#", "model", "task", "params", "license", "gated", "downloads", f"{use}", "why"):
        table.add_column(col)
    for h in result["results"]:
        need = human_bytes(h["memory"]["needs_bytes"][use]) if h["memory"] else "?"
        fits = "" if not h["memory"] or "fits" not in h["memory"] else (" ok" if h["memory"]["fits"][use] else " too big")
        table.add_row(str(h["rank"]), h["id"], h["task"] or "", human_count(h["params"]) if h["params"] else "?", h["license"] or "?",
                      "yes" if h["gated"] else "", f"{h['downloads']:,}", need + fits, "; ".join(h["reasons"][:1] + h["problems"][:1]))
    out.print(table)


@app.command()
def evaluate(
    model_id: str = typer.Argument(..., help="Hub id, e.g. Qwen/Qwen2.5-0.5B."),
    gpu: Optional[str] = typer.Option(None, "--gpu", help="GPU to check fit on."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """One model from its config.json, tokenizer_config.json, card and safetensors header: architecture, license, memory."""
    from archsmith.hub import evaluate as hub_evaluate

    try:
        result = hub_evaluate(model_id, gpu=gpu)
    except ArchsmithError as exc:
        _fail(exc)
    if as_json:
        _json(result)
        return
    from archsmith.units import human_bytes

    out.print(f"[bold]{result['id']}[/bold]  task {result['task']}  license {result['license']} ({result['commercial']})"
              f"  gated {result['gated']}  params {result['params']:,} ({result['params_source']})" if result["params"] else result["id"])
    if result["memory"]:
        for key, value in result["memory"]["needs_bytes"].items():
            fit = result["memory"].get("fits", {}).get(key)
            out.print(f"  {key:16} {human_bytes(value):>12}" + ("" if fit is None else "  fits" if fit else "  does not fit"))
    for problem in result["problems"]:
        err.print(f"[yellow]note:[/yellow] {problem}", highlight=False)


@app.command()
def configure(
    model_id: str = typer.Argument(..., help="Hub id of the chosen model."),
    task: str = typer.Option("text-generation", "--task", help="text-generation, text-classification, token-classification, ..."),
    gpu: str = typer.Option("t4", "--gpu", help="The GPU the fine-tune runs on."),
    method: str = typer.Option("auto", "--method", help="auto (largest that fits), full, lora or qlora."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Directory for finetune.py and plan.json (must not exist unless --overwrite)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace files in an existing --out directory."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Loading + fine-tuning configuration (full / LoRA / QLoRA) for one model on one GPU, with the memory behind it."""
    from archsmith.files import check_out_dir, write_files
    from archsmith.hub import plan_finetune

    try:
        if out_dir is not None:
            check_out_dir(out_dir, overwrite)
        plan = plan_finetune(model_id, task=task, gpu=gpu, method=method)
        written = []
        if out_dir is not None:
            plan_json = json.dumps({k: v for k, v in plan.items() if k != "script"}, indent=2, default=str) + "\n"
            written = write_files(out_dir, {"finetune.py": plan["script"], "plan.json": plan_json}, overwrite)
    except ArchsmithError as exc:
        _fail(exc)
    if as_json:
        _json({**plan, "files": [str(p) for p in written]})
        return
    for line in plan["why"]:
        out.print(line)
    out.print(f"method: [bold]{plan['method']}[/bold]; LoRA targets: {', '.join(plan['settings']['target_modules']) or '-'}")
    out.print("wrote " + ", ".join(str(p) for p in written) if written else plan["script"], highlight=False)


@app.command()
def serve(
    http: Optional[int] = typer.Option(None, "--http", min=1, max=65535, help="Serve streamable HTTP on this port instead of stdio."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface for --http (loopback unless told otherwise)."),
    root: Optional[Path] = typer.Option(None, "--root", help="Workspace root for files tools read and write (default: $ARCHSMITH_WORKSPACE or the current directory)."),
) -> None:
    """Run the MCP server (stdio by default): the engine's tools and reference data for Claude Code or any MCP client."""
    from archsmith.mcp_server.server import serve as run

    run(http_port=http, host=host, root=root)


tokenizer_app = typer.Typer(no_args_is_help=True, help="Tokenizers: train one on a corpus (the design and train steps read it).")
app.add_typer(tokenizer_app, name="tokenizer")


@tokenizer_app.command("train")
def tokenizer_train(
    corpus: list[Path] = typer.Argument(..., help="Text files (a blank line ends a document), JSONL files or directories of them."),
    vocab: int = typer.Option(..., "--vocab", help="Vocabulary size including special tokens (a small corpus may yield fewer)."),
    out_dir: Path = typer.Option(..., "--out", help="Directory for tokenizer.json, tokenizer_config.json, special_tokens_map.json, tokenizer_report.json."),
    kind: str = typer.Option("bpe", "--kind", help="bpe (byte-level BPE, lossless) or unigram."),
    special: list[str] = typer.Option([], "--special", help="Extra special token (repeatable); <pad> <s> </s> <unk> are always ids 0-3."),
    field: str = typer.Option("text", "--field", help="The string field of JSONL records."),
    max_length: Optional[int] = typer.Option(None, "--max-length", help="model_max_length to record (the context you will design for)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace files in an existing --out directory."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Train a byte-level BPE or Unigram tokenizer that AutoTokenizer loads and `design --tokenizer` reads."""
    from archsmith.files import check_out_dir, write_files
    from archsmith.tokenizer import train_tokenizer

    try:
        check_out_dir(out_dir, overwrite)
        files, report = train_tokenizer([str(c) for c in corpus], vocab, kind=kind, special=special, text_field=field,
                                        max_length=max_length, progress=not as_json)
        written = write_files(out_dir, files, overwrite)
    except ArchsmithError as exc:
        _fail(exc)
    if as_json:
        _json({**report, "files": [str(p) for p in written]})
        return
    held, lengths = report["held_out"], report["document_tokens"]
    t = Table(title=f"{kind} tokenizer in {out_dir}", show_header=False)
    t.add_column("what")
    t.add_column("value", justify="right")
    for row in (("vocabulary", f"{report['vocab_size']:,} (asked {vocab:,})"),
                ("corpus", f"{report['corpus']['documents']:,} documents, {report['corpus']['bytes']:,} bytes"),
                ("characters / token", f"{held['characters_per_token']}"), ("bytes / token", f"{held['bytes_per_token']}"),
                ("document tokens p50 / p90 / p99 / max", f"{lengths['p50']:.0f} / {lengths['p90']:.0f} / {lengths['p99']:.0f} / {lengths['max']}"),
                ("training", f"{report['training_seconds']} s ({report['training_mb_per_s']} MB/s)")):
        t.add_row(*row)
    out.print(t)
    out.print(f"measured on {report['measured_on']}; wrote " + ", ".join(str(p) for p in written), highlight=False)


@app.command()
def train(
    model: str = typer.Argument(..., help="A design directory or config.json (fresh weights), or a model directory with safetensors (continue)."),
    data: list[str] = typer.Option(..., "--data", help="Corpus: text files, JSONL files or directories (repeatable)."),
    out_dir: str = typer.Option(..., "--out", help="Run directory (must be new, unless --resume)."),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="Tokenizer directory (default: the model directory's tokenizer files)."),
    steps: int = typer.Option(1000, "--steps", help="Optimizer steps."),
    batch: int = typer.Option(32, "--batch", help="Global batch in sequences per optimizer step (all processes, accumulation included)."),
    micro_batch: Optional[int] = typer.Option(None, "--micro-batch", help="Sequences per forward/backward per process (default: batch / nproc)."),
    seq: Optional[int] = typer.Option(None, "--seq", help="Tokens per sequence (default: the model's context length)."),
    lr: float = typer.Option(3e-4, "--lr", help="Peak learning rate (AdamW)."),
    min_lr_ratio: float = typer.Option(0.1, "--min-lr-ratio", help="Final learning rate as a fraction of the peak."),
    schedule: str = typer.Option("cosine", "--schedule", help="cosine, linear or wsd (warmup-stable-decay), after linear warmup."),
    warmup: Optional[int] = typer.Option(None, "--warmup", help="Warmup steps (default: 5% of steps, at most 2000)."),
    weight_decay: float = typer.Option(0.1, "--weight-decay", help="AdamW weight decay on matrices (never on norms, biases, embeddings)."),
    clip: float = typer.Option(1.0, "--clip", help="Max global gradient norm."),
    precision: str = typer.Option("auto", "--precision", help="auto (bf16 on GPUs that have it, fp16 + grad scaler on others, fp32 on CPU), fp32, bf16, fp16."),
    save_every: int = typer.Option(1000, "--save-every", help="Steps between checkpoints (and always at the end); 0: only at the end."),
    keep: int = typer.Option(3, "--keep", help="Checkpoints kept (newest)."),
    eval_every: Optional[int] = typer.Option(None, "--eval-every", help="Steps between held-out evaluations (default: --save-every)."),
    eval_samples: int = typer.Option(256, "--eval-samples", help="Held-out sequences per evaluation."),
    eval_fraction: float = typer.Option(0.05, "--eval-fraction", help="Share of sequences held out (0: none)."),
    patience: Optional[int] = typer.Option(None, "--patience", help="Stop after this many evaluations without improvement."),
    document_mask: bool = typer.Option(False, "--document-mask", help="Attend only within each packed document; positions restart."),
    field: str = typer.Option("text", "--field", help="The string field of JSONL records."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its newest complete checkpoint."),
    seed: int = typer.Option(0, "--seed", help="Seed of the initial weights and the data order."),
    nproc: int = typer.Option(1, "--nproc", help="Processes on this machine (starts torchrun); under torchrun, leave it out."),
    strategy: str = typer.Option("ddp", "--strategy", help="ddp or fsdp (FSDP2, one shard group per decoder layer) with several processes."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile each decoder layer."),
    checkpointing: bool = typer.Option(False, "--checkpointing", help="Activation checkpointing per decoder layer."),
    deterministic: bool = typer.Option(False, "--deterministic", help="Deterministic algorithms: bitwise-repeatable runs and resumes on one device."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bars on stderr."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (the run summary) on stdout."),
) -> None:
    """Train a causal LM from a design or checkpoint on a corpus: checkpoints, metrics.jsonl, loss curve, report."""
    import os

    from archsmith.train.parallel import under_torchrun
    from archsmith.train.run import LAUNCHED_ENV, RunArgs, launch
    from archsmith.train.run import train as run_training

    args = RunArgs(model=model, data=data, out=out_dir, tokenizer=tokenizer, steps=steps, batch=batch, micro_batch=micro_batch,
                   seq=seq, lr=lr, min_lr_ratio=min_lr_ratio, schedule=schedule, warmup=warmup, weight_decay=weight_decay,
                   clip=clip, precision=precision, save_every=save_every, keep=keep, eval_every=eval_every,
                   eval_samples=eval_samples, eval_fraction=eval_fraction, patience=patience, document_mask=document_mask,
                   field=field, resume=resume, seed=seed, nproc=nproc, strategy=strategy, compile=compile,
                   checkpointing=checkpointing, deterministic=deterministic, progress=progress and not as_json)
    try:
        if under_torchrun() and nproc > 1 and nproc != int(os.environ["WORLD_SIZE"]):
            raise ArchsmithError("nproc", f"torchrun started {os.environ['WORLD_SIZE']} processes; leave --nproc out under torchrun")
        summary = launch(args) if nproc > 1 and not under_torchrun() else run_training(args)
    except ArchsmithError as exc:
        _fail(exc)
    if not summary or os.environ.get(LAUNCHED_ENV):  # another rank, or a rank whose launcher reports
        return
    if as_json:
        _json(summary)
        return
    evals = summary["evals"]
    out.print(f"trained {summary['model']['parameters']:,} parameters for {summary['steps']} steps on {summary['world']} "
              f"process(es) ({summary['strategy']}): {summary['tokens']:,} tokens, {summary['tokens_per_s']:,.0f} tokens/s")
    line = f"loss {summary['first_loss']:.4f} -> {summary['last_loss']:.4f}"
    if len(evals) > 1:
        line += f"; held-out {evals[0]['loss']:.4f} -> {evals[-1]['loss']:.4f} (perplexity {evals[-1]['perplexity']:.2f})"
    out.print(line + f"; {summary['stop_reason']}")
    out.print(f"wrote {summary['final']} (model + tokenizer), report.md, loss.png, metrics.jsonl, checkpoints in {out_dir}", highlight=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
