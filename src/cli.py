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
        written = write_files(out_dir, render_design(result), overwrite)
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
def analyze(
    model: str = typer.Argument(..., help="HF model directory or Hub id (config only), an archsmith spec JSON, or file.py:factory returning (module, example_inputs) - runs that file's code."),
    batch: int = typer.Option(1, "--batch", help="Sequences per batch for text models."),
    seq: Optional[int] = typer.Option(None, "--seq", help="Tokens per sequence for text models (default: min(128, context))."),
    input_shape: Optional[list[str]] = typer.Option(None, "--input-shape", help="New shape for a factory's tensor inputs, in order, e.g. 8,3,32,32 (repeat per input)."),
    meta: Optional[bool] = typer.Option(None, "--meta/--no-meta", help="Analyse on the meta device (no weights, no latency); default: only above 2 GiB of weights."),
    depth: int = typer.Option(3, "--depth", help="Module-tree depth shown in the table (--json has every module)."),
    repeats: int = typer.Option(5, "--repeats", help="Profiled forward passes for the latency shares."),
    top: int = typer.Option(5, "--top", help="Bottlenecks listed by time and by FLOPs."),
    chart: Optional[Path] = typer.Option(None, "--chart", help="Write a PNG of the top modules by FLOPs and time here."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --chart file."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Layer-by-layer analysis of any nn.Module: shapes, parameters, FLOPs, saved activations, latency shares, bottlenecks."""
    from archsmith import analyze as analyzer
    from archsmith.files import write_file

    try:
        if chart is not None and chart.exists() and not overwrite:
            raise ArchsmithError("chart", f"{chart} exists; pass --overwrite to replace it")
        shapes = [analyzer.parse_shape(s) for s in input_shape] if input_shape else None
        with err.status(f"analysing {model}"):
            result = analyzer.run(model, batch=batch, seq=seq, input_shapes=shapes, meta=meta, repeats=repeats, top=top)
        if chart is not None:
            result["chart"] = str(write_file(chart, analyzer.chart(result), overwrite, "chart"))
    except ArchsmithError as exc:
        _fail(exc)
    if as_json:
        _json(result)
        return
    from archsmith.units import human_bytes, human_count

    t = result["totals"]
    table = Table(title=f"{result['model']} on {result['device']}, inputs {result['inputs']}")
    for col in ("module", "type", "output", "params", "FLOPs", "saved", "time %"):
        table.add_column(col, justify="left" if col in ("module", "type", "output") else "right")
    for r in result["layers"]:
        if r["depth"] > depth:
            continue
        share = "" if r["latency_share"] is None else f"{100 * r['latency_share']:.1f}"
        shape = "x".join(map(str, r["output_shapes"][0])) if r["output_shapes"] else ""
        table.add_row("  " * r["depth"] + r["name"].rsplit(".", 1)[-1], r["type"], shape, human_count(r["params"]),
                      human_count(r["flops"]), human_bytes(r["activation_bytes"]), share)
    out.print(table)
    latency = "" if t["latency_ms"] is None else f", {t['latency_ms']:.2f} ms median forward"
    out.print(f"parameters {t['params']:,}; forward FLOPs {t['forward_flops']:,}; saved activations "
              f"{human_bytes(t['activation_bytes'])}; intensity {t['arithmetic_intensity']} FLOP/byte{latency}")
    for kind in ("by_time", "by_flops"):
        if result["bottlenecks"][kind]:
            out.print(f"top {kind.replace('_', ' ')}: " + ", ".join(f"{r['name']} ({100 * r['share']:.1f}%)" for r in result["bottlenecks"][kind]))
    total_flops = t["forward_flops"] or 1
    out.print("by module type: " + ", ".join(f"{r['type']} x{r['modules']} ({100 * r['latency_share']:.0f}% time, "
                                             f"{100 * r['flops'] / total_flops:.0f}% FLOPs)" for r in result["bottlenecks"]["by_type"][:5]))
    for note in result["notes"]:
        out.print(f"note: {note}", highlight=False)
    if "chart" in result:
        out.print(f"wrote {result['chart']}")


@app.command()
def compress(
    model: str = typer.Argument(..., help="Teacher: a BERT-style encoder or llama/mistral/qwen2/qwen3 decoder directory (config.json + safetensors)."),
    reduction: float = typer.Option(..., "--reduction", help="Share of parameters to remove, in (0, 1): 0.5 halves the model."),
    out_dir: Path = typer.Option(..., "--out", help="Directory for the student (must not exist unless --overwrite)."),
    strategy: str = typer.Option("both", "--strategy", help="depth (drop layers), width (narrow them) or both."),
    v2: bool = typer.Option(False, "--v2", help="Operational efficiency: GQA/MQA with mean-pooled KV heads (decoders), tanh-GELU (encoders)."),
    kv_heads: Optional[int] = typer.Option(None, "--kv-heads", help="With --v2, KV heads of a decoder student (1 = MQA; default heads / 4)."),
    calibration: Optional[Path] = typer.Option(None, "--calibration", help="Text file, one sample per line, for activation importance (default: shipped English text)."),
    heldout: Optional[Path] = typer.Option(None, "--heldout", help="Text file for the fidelity report (default: shipped English sentences)."),
    repeats: int = typer.Option(5, "--repeats", help="Timed forward passes per latency point."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace files in an existing --out directory."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Design a smaller student initialised from the teacher; write it as an HF model directory with a comparison."""
    from archsmith.compress import compress as run

    try:
        with err.status("compressing") as status:
            report = run(model, reduction, out_dir, strategy=strategy, v2=v2, kv_heads=kv_heads, calibration=calibration,
                         heldout=heldout, repeats=repeats, overwrite=overwrite, progress=status.update)
    except ArchsmithError as exc:
        _fail(exc)
    if as_json:
        _json(report)
        return
    cmp = report["comparison"]
    table = Table(title=f"{report['teacher']} -> {out_dir} ({report['version']}, {report['strategy']})")
    for col in ("", "teacher", "student"):
        table.add_column(col, justify="left" if not col else "right")
    for key in ("params", "layers", "hidden", "heads", "kv_heads", "ffn", "forward_flops"):
        table.add_row(key, f"{cmp['teacher'][key]:,}", f"{cmp['student'][key]:,}")
    for r in cmp["latency"]:
        table.add_row(f"ms at batch {r['batch']}, seq {r['seq']}", f"{r['teacher_ms']:.2f}", f"{r['student_ms']:.2f} ({r['speedup']:.2f}x)")
    out.print(table)
    fid = report["fidelity"]["teacher_vs_student"]
    out.print(f"reduction {report['achieved_reduction']:.1%} (asked {report['target_reduction']:.0%}); kept layers {report['kept_layers']}; "
              f"fidelity before distillation: " + ", ".join(f"{k} {v}" for k, v in fid.items() if k not in ("kind", "texts")))
    for note in report["notes"]:
        out.print(f"note: {note}", highlight=False)
    out.print("wrote " + ", ".join(report["files"]), highlight=False)


@app.command()
def export(
    model: str = typer.Argument(..., help="A model directory (config.json + safetensors) or file.py:factory returning (module, example_inputs)."),
    fmt: str = typer.Option(..., "--format", help="onnx, pt2 (torch.export) or torchscript (deprecated upstream)."),
    out_dir: Path = typer.Option(..., "--out", help="Directory for the artifact and export.json (must not exist unless --overwrite)."),
    quantize: Optional[str] = typer.Option(None, "--quantize", help="int8: also write onnxruntime's dynamic int8 model, with its accuracy delta."),
    repeats: int = typer.Option(5, "--repeats", help="Timed runs per latency point."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace files in an existing --out directory."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Export to ONNX / torch.export / TorchScript, validate against eager at several shapes, time it."""
    from archsmith.export import export as run

    try:
        with err.status("exporting") as status:
            report = run(model, fmt, out_dir, quantize=quantize, overwrite=overwrite, repeats=repeats, progress=status.update)
    except ArchsmithError as exc:
        _fail(exc)
    if as_json:
        _json(report)
        return
    table = Table(title=f"{model} -> {fmt}: validation against eager (tolerance {report['tolerance']})")
    for col in ("case", "max |diff|", "allowed", "ok"):
        table.add_column(col, justify="left" if col == "case" else "right")
    for r in report["validation"]:
        table.add_row(r["case"], f"{r['max_abs_diff']:.2e}", f"{r['tolerance']:.1e}", "yes" if r["ok"] else "NO")
    out.print(table)
    if "int8" in report:
        q = report["int8"]
        out.print(f"int8: max |diff| {q['max_abs_diff']:.3g}, mean {q['mean_abs_diff']:.3g}, min cosine {q['min_cosine']}, size x{q['size_ratio']}")
    timing = Table(title=f"median latency (ms, CPU, {report['threads']} threads)")
    keys = [k for k in report["latency"][0] if k.endswith("_ms")]
    timing.add_column("case")
    for k in keys:
        timing.add_column(k[:-3], justify="right")
    for r in report["latency"]:
        timing.add_row(r["case"], *(f"{r[k]:.2f}" + (f" ({r[k[:-3] + '_speedup']:.2f}x)" if k != "eager_ms" else "") for k in keys))
    out.print(timing)
    for note in report["notes"]:
        out.print(f"note: {note}", highlight=False)
    out.print("wrote " + ", ".join(report["files"]), highlight=False)


@app.command()
def serve(
    http: Optional[int] = typer.Option(None, "--http", min=1, max=65535, help="Serve streamable HTTP on this port instead of stdio."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface for --http (loopback unless told otherwise)."),
    root: Optional[Path] = typer.Option(None, "--root", help="Workspace root for files tools read and write (default: $ARCHSMITH_WORKSPACE or the current directory)."),
) -> None:
    """Run the MCP server (stdio by default): the engine's tools and reference data for Claude Code or any MCP client."""
    from archsmith.mcp_server.server import serve as run

    run(http_port=http, host=host, root=root)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
