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
    config: Path = typer.Argument(..., help="A config.json file or a model directory holding one."),
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
    from archsmith.hfconfig import load_spec

    try:
        spec = load_spec(config)
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
