"""`archsmith` command line: a thin adapter over the engine (the contract is in docs/architecture.md).

Every command takes --json to print one JSON object on stdout; bad input is one line on
stderr naming the field, exit code 2, nothing written.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Optional

import typer
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from archsmith import families
from archsmith.errors import ArchsmithError
from archsmith.distill import ALPHA, HIDDEN_WEIGHT, LR, TEMPERATURE
from archsmith.runner import DEFAULT_STEPS, DEFAULT_TOKENS


class _Commands(TyperGroup):
    """The app's command group: -h beside --help, --version on every command, flags shown as flags in --help
    (typer labels them <bool> as if they took a value)."""

    def get_command(self, ctx, cmd_name):
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            if not any("--version" in p.opts for p in command.params):
                version = copy.copy(next(p for p in self.params if "--version" in p.opts))
                version.expose_value = False  # the command's function has no such argument
                command.params.append(version)
            _flags_take_no_value([*command.params, command.get_help_option(ctx)])
        return command

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        _flags_take_no_value([*self.params, option])
        return option


def _flags_take_no_value(params: list) -> None:
    for param in params:
        if param is not None and getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""


# rich_markup_mode=None: click's help, which wraps only at spaces and moves help text under a long option at 80 columns
app = typer.Typer(cls=_Commands, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None, context_settings={"help_option_names": ["-h", "--help"]},
                  help="Model-architecture specialists: designs, estimates and configs that are computed, not guessed.")
err = Console(stderr=True)
out = Console()


def _show_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"archsmith {version('archsmith')}")
        raise typer.Exit()


@app.callback()
def _app(version: Optional[bool] = typer.Option(None, "--version", callback=_show_version, is_eager=True,
                                                help="Show archsmith's version and exit.")) -> None:
    pass


class Column(NamedTuple):
    """One column of a terminal table."""

    header: str
    number: bool = False  # numbers are never wrapped, shrunk or cut
    optional: bool = False  # left out first when the terminal is too narrow for every column


TEXT_MIN = 10  # the narrowest a wrapping text column gets before columns are left out


def show_table(title: str | None, columns: list[Column], rows: list[list[str]], console: Console | None = None) -> None:
    """Print `rows` so that no number is ever cut, whatever the width (80 columns and pipes included): text wraps;
    when that is not enough, optional columns are left out (and named under the table); when even that is not
    enough, one block per row, a line per column."""
    console = console or out
    keep = list(range(len(columns)))

    def word(i: int) -> int:  # the longest word of a text column: wrapped at spaces, never inside a word
        return max((cell_len(w) for r in rows for w in r[i].split()), default=1)

    def width(i: int) -> int:
        cells = [cell_len(r[i]) for r in rows] + [cell_len(w) for w in columns[i].header.split()]
        return max(cells, default=1) if columns[i].number else max(min(max(cells, default=1), TEXT_MIN), word(i))

    while sum(width(i) + 3 for i in keep) + 1 > console.width and any(columns[i].optional for i in keep):
        keep.remove(max(i for i in keep if columns[i].optional))
    if sum(width(i) + 3 for i in keep) + 1 <= console.width:
        table = Table(title=title)
        for i in keep:
            c = columns[i]
            if c.number:
                table.add_column("\n".join(textwrap.wrap(c.header, width(i))), justify="right", no_wrap=True)
            else:
                table.add_column(c.header, overflow="fold", min_width=word(i))
        for r in rows:
            table.add_row(*(r[i] for i in keep))
        console.print(table)
        left_out = [columns[i].header for i in range(len(columns)) if i not in keep]
        if left_out:
            console.print(f"(left out at this width: {', '.join(left_out)}; --json has every field)", style="dim")
        return
    # one block per row: a header column and a value column at least as wide as the widest number
    numbers = max((cell_len(r[i]) for r in rows for i, c in enumerate(columns) if c.number), default=0)
    room = console.width - 7  # borders and padding of a two-column table
    values = min(max((cell_len(cell) for r in rows for cell in r), default=1), max(numbers, room - TEXT_MIN))
    table = Table(title=title, show_header=False)
    table.add_column(width=max(1, room - values), overflow="fold")
    table.add_column(width=values, overflow="fold")
    for r in rows:
        for i, (c, cell) in enumerate(zip(columns, r)):
            table.add_row(c.header, Text(cell, style="bold") if i == 0 else cell, end_section=i == len(r) - 1)
    console.print(table)


@contextlib.contextmanager
def stages(first: str, bar_inside: bool = False) -> Iterator[Callable[[str], None]]:
    """The stages of a long command on stderr; the value says the next one. A spinner on a terminal; plain lines when
    piped, or when a progress bar of its own runs inside (distill's training), so the two never share a line (a
    stage shows once it has run a moment: bad input stays one line)."""
    if err.is_terminal and not bar_inside:
        with err.status(first) as status:
            yield lambda message: status.update(message)
        return
    from archsmith.progress import Stages

    lines = Stages(first)
    try:
        yield lines.say
    finally:
        lines.close()


def _fail(exc: Exception) -> None:
    err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _show_command(command: str, width: int = 80) -> None:
    """A shell command in lines of at most `width` columns joined by backslash continuations (it pastes as one
    command); quoted words stay whole."""
    import shlex

    lexer = shlex.shlex(command, posix=False)
    lexer.whitespace_split = True
    lines, line = [], ""
    for word in lexer:
        if line and len(line) + 1 + len(word) > width - 2:  # room for " \\"
            lines.append(line + " \\")
            line = "  " + word
        else:
            line = f"{line} {word}" if line else word
    out.print("\n".join([*lines, line]), highlight=False, markup=False, soft_wrap=True)


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
    params: Optional[str] = typer.Option(None, "--params", help="Target parameter count, e.g. 10M, 125M, 1B, 7B."),
    compute: Optional[str] = typer.Option(None, "--compute", help="Compute budget in FLOPs, e.g. 1e21; sized by Chinchilla."),
    memory: Optional[str] = typer.Option(None, "--memory", help="Memory budget per GPU for training, e.g. 24GB or 80GiB: the largest model whose plan fits it on --gpu."),
    context: Optional[int] = typer.Option(None, "--context", help="Context length in tokens, 128 or more (default: the template's, or --seq when longer)."),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", help="Tokenizer directory (tokenizer.json + tokenizer_config.json)."),
    gpu: str = typer.Option("h100", "--gpu", help="GPU kind from the GPU table (h100, a100-80gb, h200, b200, mi300x, rtx4090, ...)."),
    gpus: int = typer.Option(8, "--gpus", help="Number of GPUs for training."),
    tokens: Optional[str] = typer.Option(None, "--tokens", help="Training tokens, e.g. 100B (default: Chinchilla's 20 per parameter)."),
    mfu: float = typer.Option(0.40, "--mfu", help="Assumed model-FLOPs utilisation for time estimates, in (0, 1]."),
    vocab: Optional[int] = typer.Option(None, "--vocab", help="Vocabulary size when no tokenizer is given."),
    batch: int = typer.Option(1, "--batch", help="Micro-batch per GPU (sequences) for the memory plan."),
    seq: Optional[int] = typer.Option(None, "--seq", help="Sequence length for the memory plan, 128 or more (default: the context)."),
    strategy: str = typer.Option("auto", "--strategy", help="ddp, zero1, zero2, zero3, fsdp or auto (the first that fits: ddp, then ZeRO-1/2/3)."),
    checkpointing: Optional[bool] = typer.Option(None, "--checkpointing/--no-checkpointing", show_default=False,
                                                 help="Activation checkpointing in the memory plan (default: auto, only when nothing fits without)."),
    moe: Optional[str] = typer.Option(None, "--moe", help="Mixture of experts EXPERTS:TOP_K, e.g. 8:2 (each expert 1/TOP_K of the dense FFN)."),
    moe_layers: Optional[str] = typer.Option(None, "--moe-layers", help="Which layers are MoE: all, upper, lower or alternate (default all)."),
    window: Optional[int] = typer.Option(None, "--window", help="Sliding-window attention of W tokens (16 or more)."),
    window_layers: Optional[str] = typer.Option(None, "--window-layers", help="Which layers slide: all, alternate (default) or N:1 (N sliding, then one full)."),
    position: Optional[str] = typer.Option(None, "--position", help="rope (default), alibi or learned."),
    norm: Optional[str] = typer.Option(None, "--norm", help="rmsnorm (default) or layernorm."),
    attention: Optional[str] = typer.Option(None, "--attention", help="gqa (default), mqa, mha or mla (multi-head latent attention)."),
    search: bool = typer.Option(False, "--search", help="Train proxy runs of widths, KV heads, MoE and windows on --data and recommend the lowest held-out loss (needs --tokenizer)."),
    data: Optional[str] = typer.Option(None, "--data", help="With --search: the corpus (text or JSONL) the proxy runs train on."),
    trials: Optional[int] = typer.Option(None, "--trials", help="With --search: proxy runs (default 8)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="With --search: AdamW steps per proxy run (default 30)."),
    search_tasks: Optional[str] = typer.Option(None, "--search-tasks", help="With --search: score trials by mean acc on these lm-evaluation-harness tasks (comma list) instead of held-out loss."),
    search_include: Optional[str] = typer.Option(None, "--search-include", help="With --search-tasks: directory of local task YAMLs."),
    search_limit: Optional[int] = typer.Option(None, "--search-limit", help="With --search-tasks: examples per task per trial."),
    global_batch: Optional[str] = typer.Option(None, "--global-batch", help="Tokens per optimizer step of the training recipe and parallel layouts, a multiple of --seq, e.g. 16777216 (2048 x 8192) (default: DeepSeek LLM's batch-size fit for the run's compute)."),
    unique_tokens: Optional[str] = typer.Option(None, "--unique-tokens", help="Unique training tokens available, e.g. 20B: with --compute (no --tokens) size and epochs follow Muennighoff et al. 2023's data-constrained law; the plan states epochs and what repetition costs."),
    layouts: Optional[bool] = typer.Option(None, "--layouts/--no-layouts", show_default=False,
                                           help="Size tensor / pipeline / context parallel layouts (default: auto, when plain data parallelism does not fit the GPUs or the global batch)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace files in an existing --out directory."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Design a decoder-only LM for a parameter, compute or memory budget and write config.json + reports.

    Component choices (--moe, --window, --position, --norm, --attention) are written as the transformers family that
    expresses them with the fewest further changes; the report costs each one."""
    from archsmith import design as designer
    from archsmith.files import check_out_dir, write_files
    from archsmith.quality import task_list
    from archsmith.report import render_design

    try:
        check_out_dir(out_dir, overwrite)
        result = designer.design_from_text(params=params, compute=compute, memory=memory, context=context,
                                           tokenizer=str(tokenizer) if tokenizer else None, gpu=gpu, gpus=gpus,
                                           tokens=tokens, mfu=mfu, vocab=vocab, batch=batch, seq=seq, strategy=strategy,
                                           checkpointing=checkpointing, moe=moe, moe_layers=moe_layers, window=window,
                                           window_layers=window_layers, position=position, norm=norm, attention=attention,
                                           search=search, data=data, trials=trials, steps=steps,
                                           search_tasks=task_list(search_tasks) or None,
                                           search_include=[search_include] if search_include else [], search_limit=search_limit,
                                           progress=not as_json, global_batch=global_batch, layouts=layouts,
                                           unique_tokens=unique_tokens)
        written = write_files(out_dir, render_design(result, str(out_dir)), overwrite)
    except ArchsmithError as exc:
        _fail(exc)
    rec = result["recommended"]
    summary = {**designer.summary(result, str(out_dir)), "files": [str(p) for p in written]}
    if as_json:
        _json(summary)
        return
    from archsmith.units import human_bytes, human_count, human_duration

    columns = [Column("candidate"), Column("hidden x layers", True), Column("heads/kv", True, True), Column("ffn", True, True),
               Column("params", True), Column("train time", True), Column("mem/GPU", True), Column("KV/request", True, True)]
    rows = [[("* " if c is rec else "") + c.name, c.summary["shape"], f"{c.spec.num_heads}/{c.spec.num_kv_heads}", str(c.spec.ffn_size),
             f"{c.summary['params']['total']:,}", human_duration(c.summary["train_time"]["seconds"]),
             human_bytes(c.summary["memory_per_gpu"]["total_bytes"]) + ("" if c.summary["fits"] else " (too big)"),
             human_bytes(c.summary["kv_cache_per_request"])] for c in result["candidates"]]
    show_table(f"Candidates for {human_count(result['target']['params'])} parameters ({result['template']['name']} template)", columns, rows)
    for line in result["assumptions"]:
        out.print(line, style="dim", highlight=False)
    for warning in result["warnings"]:
        err.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
    out.print(f"recommended: [bold]{rec.name}[/bold] - " + "; ".join(result["rationale"]), highlight=False)
    if result["components"]:
        for row in result["components"]["tradeoffs"]:
            out.print(f"{row['choice']}: {row['params_delta']:+,} parameters ({row['active_delta']:+,} active) - {row['what']}",
                      highlight=False)
    out.print(f"{result['context_check']}", highlight=False)
    for line in designer.data_lines(result["data"])[:2]:
        out.print(f"data: {line}", highlight=False)
    if summary["layout_plan"]:
        _show_layouts(summary)
    _show_recipe(summary["recipe"], shown=bool(summary["layout_plan"] and summary["layout_plan"]["launch"]))
    out.print("wrote " + ", ".join(str(p) for p in written), highlight=False)


LAYOUTS_SHOWN = 5  # feasible layouts in the terminal; capacity_plan.md lists more, --json all


def _show_recipe(recipe: dict[str, Any], shown: bool = False) -> None:
    """The training recipe in one line, its sources, and the command that runs it (`shown`: printed with the
    recommended parallel layout above)."""
    out.print(f"recipe: {recipe['tokens_per_step']:,} tokens per step = micro-batch {recipe['micro_batch']} x "
              f"{recipe['grad_accum']} accumulation x {recipe['data_parallel']} "
              f"{'GPUs' if recipe['data_parallel'] == recipe['gpus'] else 'data-parallel ranks'} x {recipe['seq']}; "
              f"{recipe['steps']:,} steps; peak lr {recipe['lr']:g}, warmup {recipe['warmup_steps']:,}, {recipe['schedule']} "
              f"to {recipe['min_lr_ratio']:.0%}", highlight=False)
    for line in recipe["words"]:
        out.print(f"  {line}", style="dim", highlight=False)
    if shown:
        out.print("launch: the recommended layout's command above", highlight=False)
        return
    out.print("launch:", highlight=False)
    _show_command(recipe["launch"])


def _show_layouts(summary: dict[str, Any]) -> None:
    """The fastest feasible parallel layouts, why each TP degree without one has none, and the recommended command."""
    plan, rows = summary["layout_plan"], [r for r in summary["layouts"] if r["feasible"]][:LAYOUTS_SHOWN]
    columns = [Column("layout"), Column("mem/GPU GiB", True), Column("bubble", True), Column("comm GB/step", True, True),
               Column("step s", True), Column("recompute", optional=True)]
    title = (f"Parallel layouts: {plan['gpus']} x {plan['gpu']}, global batch {plan['global_batch_tokens']:,} tokens "
             f"({plan['feasible']} of {len(summary['layouts'])} feasible)")
    if rows:
        show_table(title, columns, [[r["name"], f"{r['memory']['total_bytes'] / 2**30:.1f}", f"{100 * r['bubble']:.1f}%",
                                     f"{r['comm']['total_bytes'] / 1e9:.1f}", f"{r['time']['step_s']:.3g}", r["recompute"]]
                                    for r in rows])
    else:
        out.print(title, highlight=False)
    for entry in plan["by_tp"]:
        if not entry["feasible"]:
            out.print(f"tp {entry['tp']}: {entry['words']}", highlight=False)
    if plan["launch"]:
        best = plan["recommended"]
        out.print(f"recommended layout: [bold]{best['name']}[/bold] ({best['recompute']} recomputation), "
                  f"{best['time']['step_s']:.3g} s per step; launch:", highlight=False)
        _show_command(plan["launch"]["command"])


@app.command()
def estimate(
    config: str = typer.Argument(..., help="A config.json file, a model directory holding one, or a Hub id (org/name: only config.json "
                                 "is fetched). Model types: " + ", ".join(families.NAMES) + "."),
    batch: int = typer.Option(1, "--batch", help="Micro-batch size (sequences)."),
    seq: Optional[int] = typer.Option(None, "--seq", help="Sequence length (default: the model's context)."),
    dtype: str = typer.Option("bf16", "--dtype", help="fp32, bf16 or fp16 (bf16/fp16 imply fp32 master weights)."),
    optimizer: str = typer.Option("adamw", "--optimizer", help="adamw, adamw8bit, sgd or adafactor."),
    checkpointing: bool = typer.Option(False, "--checkpointing", help="Activation checkpointing per decoder layer."),
    compile: bool = typer.Option(False, "--compile", help="The training peak of a run with --compile (not yet modelled: the eager peak)."),
    device: str = typer.Option("cuda", "--device", help="cuda or cpu: whose kernels the activation figures describe."),
    attention: Optional[str] = typer.Option(None, "--attention", help="sdpa (fused/flash) or eager (default: what transformers uses for the family)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Parameters, FLOPs and memory of a model from its config.json, in closed form."""
    from archsmith import estimate as est
    from archsmith.hub import spec_and_source

    try:
        spec, source = spec_and_source(config)
        result = est.estimate(spec, batch=batch, seq=seq, dtype=dtype, optimizer=optimizer, checkpointing=checkpointing,
                              attention=attention, compile=compile, device=device)
    except ArchsmithError as exc:
        _fail(exc)
    result["spec"], result["source"] = spec.to_dict(), source
    if as_json:
        _json(result)
        return
    from archsmith.units import human_bytes

    p, f, m = result["params"], result["flops"], result["memory"]
    rows = [
        ["parameters", f"{p['total']:,}"], ["  embedding", f"{p['embedding']:,}"], ["  lm_head", f"{p['lm_head']:,}" + (" (tied)" if p["tied_embeddings"] else "")],
        ["  per layer", f"{p['per_layer']:,}"], ["  non-embedding", f"{p['non_embedding']:,}"],
        [f"forward FLOPs/token at {f['seq']} (causal)", f"{f['forward_per_token']:,}"], ["training FLOPs/token", f"{f['training_per_token']:,}"],
        ["weights", human_bytes(m["weights_bytes"])], ["gradients", human_bytes(m["gradients_bytes"])],
        ["optimizer (incl. fp32 master)", human_bytes(m["optimizer_bytes"])], ["activations", human_bytes(m["activations_bytes"])],
        ["logits", human_bytes(m["logits_bytes"])], ["training total", human_bytes(m["training_total_bytes"])],
        ["training peak (archsmith train)", human_bytes(m["training_peak_bytes"])],
        ["  reserved (+allocator)", human_bytes(m["training_reserved_bytes"])],
        ["KV cache (decoding)", human_bytes(m["kv_cache_bytes"])],
        ["  right after the prefill", human_bytes(m["kv_cache_after_prefill_bytes"])],
        ["inference total", human_bytes(m["inference_total_bytes"])],
    ]
    show_table(f"{config} ({spec.model_type}, {spec.hidden_size} x {spec.num_layers})", [Column("what"), Column("value", True)], rows)
    out.print(f"source: {source}", highlight=False)
    if not m["activations_exact"]:
        out.print(f"activations: an estimate, not yet calibrated to 5% ({m['activations_note']})", highlight=False)
    peak = m["training_peak"]
    out.print(f"training peak: one step of archsmith train ({peak['recipe']}), in its {peak['at']} phase", highlight=False)
    if not m["peak_exact"]:
        out.print(f"training peak: an estimate, not yet held to 5% ({m['peak_note']})", highlight=False)


@app.command()
def search(
    query: Optional[str] = typer.Argument(None, help="Free text matched against model ids; with --space, MODEL: file.py:factory."),
    task: Optional[str] = typer.Option(None, "--task", help="Pipeline tag, e.g. text-classification, text-generation."),
    library: Optional[str] = typer.Option(None, "--library", help="e.g. transformers, sentence-transformers."),
    author: Optional[str] = typer.Option(None, "--author", help="Organisation or user."),
    language: Optional[str] = typer.Option(None, "--language", help="ISO code, e.g. es."),
    license: Optional[str] = typer.Option(None, "--license", help="Presets and/or license ids, comma-separated: permissive (MIT, Apache, BSD, CC-BY...), commercial-ok (permissive + OpenRAIL, Llama, Gemma terms), copyleft-ok (permissive + GPL, CC-BY-SA...), e.g. apache-2.0,mit."),
    gpu: Optional[str] = typer.Option(None, "--gpu", help="GPU to check fit on (e.g. t4, l4, a100-80gb)."),
    use: str = typer.Option("run_fp16", "--use", help="What must fit: run_fp16|run_int8|run_int4|finetune_full|finetune_lora|finetune_qlora."),
    max_params: Optional[str] = typer.Option(None, "--max-params", help="Largest parameter count, e.g. 1B."),
    sort: str = typer.Option("downloads", "--sort", help="downloads, likes, trending, recent, or score:TASK (the score cards report for a benchmark, e.g. score:hellaswag; reported, not measured)."),
    limit: int = typer.Option(20, "--limit", help="How many models to fetch (1-200)."),
    include_rejected: bool = typer.Option(False, "--include-rejected", help="Also list the models that break a constraint, labelled."),
    space: Optional[Path] = typer.Option(None, "--space", help="Architecture search: space.yaml of the factory's keyword arguments (and lr, weight_decay)."),
    data: Optional[str] = typer.Option(None, "--data", help="With --space: file.py:fn yielding (inputs, target) batches; the first 2 are held out."),
    loss: str = typer.Option("cross_entropy", "--loss", help="With --space: cross_entropy or mse."),
    trials: int = typer.Option(20, "--trials", help="With --space: trials in the study in all (a resumed study runs the rest)."),
    steps: int = typer.Option(100, "--steps", help="With --space: AdamW steps per trial (the proxy run)."),
    objective: str = typer.Option("params", "--objective", help="With --space: the second objective: params, flops or latency."),
    max_memory: Optional[str] = typer.Option(None, "--max-memory", help="With --space: largest training memory (weights, gradients, AdamW, saved activations), e.g. 2GB."),
    pruner: str = typer.Option("hyperband", "--pruner", help="With --space: hyperband, halving or none (stops poor learning curves)."),
    metric: str = typer.Option("loss", "--metric", help="With --space: the first objective, held-out loss or accuracy (1 - top-1 accuracy on the held-out batches)."),
    seed: int = typer.Option(0, "--seed", help="With --space: sampler and initialisation seed."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="With --space: the study directory (study.db, search.json, pareto.png); resumed when it holds one."),
    overwrite: bool = typer.Option(False, "--overwrite", help="With --space: use an existing --out that holds no study."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Search the Hub (offline: the local HF cache and the reference architectures) for models that meet every constraint.

    With --space: search MODEL's design space instead (Optuna, multi-objective: held-out loss against size)."""
    from archsmith.hub import search as hub_search
    from archsmith.units import parse_bytes, parse_count

    if space is not None:
        hub_only = {"--task": task, "--library": library, "--author": author, "--language": language, "--license": license,
                    "--gpu": gpu}
        given = [name for name, value in hub_only.items() if value is not None]
        try:
            if given:
                raise ArchsmithError(given[0].lstrip("-"), "is a Hub search option; an architecture search (--space) takes none")
            _architecture_search(query, space, data, out_dir, loss=loss, trials=trials, steps=steps, objective=objective,
                                 max_params=parse_count(max_params, "max_params", 1, 10**13) if max_params else None,
                                 max_memory=parse_bytes(max_memory, "max_memory", 1, 2**50) if max_memory else None,
                                 pruner=pruner, seed=seed, metric=metric,
                                 overwrite=overwrite, as_json=as_json)
        except ArchsmithError as exc:
            _fail(exc)
        return
    try:
        with stages("searching") as say:
            result = hub_search(query, task=task, library=library, author=author, language=language, license=license, gpu=gpu,
                                use=use, max_params=parse_count(max_params, "max_params", 1, 10**13) if max_params else None, sort=sort,
                                limit=limit, include_rejected=include_rejected, progress=say)
    except ArchsmithError as exc:
        _fail(exc)
    for note in result["notes"]:
        err.print(f"[yellow]note:[/yellow] {note}", highlight=False)
    if as_json:
        _json(result)
        return
    from archsmith.units import human_bytes, human_count

    columns = [Column("#", True), Column("model"), Column("task", optional=True), Column("params", True), Column("license"),
               Column("gated", optional=True), Column("downloads", True), Column(use, True), Column("why", optional=True)]
    if sort.startswith("score:"):
        columns.insert(2, Column(f"{sort[6:]} (card)", True))
    rows = []
    for h in result["results"]:
        need = human_bytes(h["memory"]["needs_bytes"][use]) if h["memory"] else "?"
        fits = "" if not h["memory"] or "fits" not in h["memory"] else (" ok" if h["memory"]["fits"][use] else " too big")
        why = ("" if h["meets_constraints"] else "rejected: ") + "; ".join(h["reasons"][:1] + h["problems"][:1])
        rows.append([str(h["rank"]), h["id"], h["task"] or "", human_count(h["params"]) if h["params"] else "?",
                     f"{h['license']} ({h['license_class']})" if h["license"] else "?",
                     "yes" if h["gated"] else "", "-" if h["downloads"] is None else f"{h['downloads']:,}", need + fits, why])
        if sort.startswith("score:"):
            rows[-1].insert(2, "-" if h["score"] is None else f"{h['score']['value']:g} {h['score']['metric']}")
    if rows:
        show_table(f"Models from {result['source']}", columns, rows)
    if result["message"]:
        out.print(result["message"], highlight=False, soft_wrap=True)


def _architecture_search(model: str | None, space: Path, data: str | None, out_dir: Path | None, as_json: bool,
                         **options: Any) -> None:
    """`archsmith search MODEL --space ...`: the study, its table and the Pareto front."""
    from archsmith.search import search as study_search
    from archsmith.search.study import size_key

    for name, value in (("model", model), ("data", data), ("out", out_dir)):
        if value is None:
            raise ArchsmithError(name, "an architecture search needs MODEL (file.py:factory), --data file.py:fn and --out DIR")
    result = study_search(model, space, data, out_dir, progress=not as_json, **options)
    if as_json:
        _json(result)
        return
    from archsmith.units import human_count

    key, accuracy = size_key(options["objective"]), options["metric"] == "accuracy"
    columns = [Column("trial", True), Column("held-out loss", True), *([Column("accuracy", True)] if accuracy else []),
               Column(key, True), Column("settings")]
    rows = [[str(r["trial"]), f"{r['heldout_loss']:.4f}", *([f"{r['task_metric']:.4f}"] if accuracy else []),
             f"{r[key]:.3g}" if key == "latency_ms" else human_count(r[key]),
             ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in {**r["model_kwargs"], **r["train"]}.items())]
            for r in result["pareto_front"]]
    c = result["counts"]
    show_table(f"Pareto front: {c['complete']} trained, {result['pruned_by_size']} over the caps (not trained), "
               f"{c['pruned'] - result['pruned_by_size']} stopped early, {c['fail']} failed", columns, rows)
    if result["recommended"]:
        best = "highest held-out accuracy" if accuracy else "lowest held-out loss"
        out.print(f"recommended: trial {result['recommended']['trial']} (the front's {best})", highlight=False)
    out.print(f"study: {result['study']}" + (f"; chart: {result['chart']}" if result.get("chart") else ""), highlight=False)


@app.command()
def evaluate(
    model_id: str = typer.Argument(..., help="Hub id, e.g. Qwen/Qwen2.5-0.5B."),
    gpu: Optional[str] = typer.Option(None, "--gpu", help="GPU to check fit on."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """One model from its config.json, tokenizer_config.json, card and safetensors header: architecture, license, memory."""
    from archsmith.hub import evaluate as hub_evaluate

    try:
        with stages(f"reading {model_id}: config, tokenizer, card and safetensors header"):
            result = hub_evaluate(model_id, gpu=gpu)
    except ArchsmithError as exc:
        _fail(exc)
    if as_json:
        _json(result)
        return
    from archsmith.units import human_bytes

    out.print(f"[bold]{result['id']}[/bold]  task {result['task']}  license {result['license']} ({result['commercial']})"
              f"  gated {result['gated']}  params {result['params']:,} ({result['params_source']})" if result["params"] else result["id"])
    out.print(f"  source: {result['source']}", highlight=False)
    for row in result.get("checkpoints") or []:
        kinds = ", ".join(sorted({f["precision"] for f in row["listed"] if f["precision"]}))
        out.print(f"  weights: {row['format']}, {row['files']} file(s), {human_bytes(row['bytes'])}"
                  + (f" ({kinds})" if kinds else "") + f": {row['handling']}", highlight=False)
    if result["memory"]:
        fits = result["memory"].get("fits", {})
        show_table(f"Memory{' on ' + gpu if gpu else ''}", [Column("use"), Column("needs", True), Column("fits")],
                   [[key, human_bytes(value), "" if key not in fits else "yes" if fits[key] else "no"]
                    for key, value in result["memory"]["needs_bytes"].items()])
    if result["pipeline"]:
        pipe = result["pipeline"]
        show_table(f"{pipe['class'] or 'diffusers'} pipeline: components (safetensors headers)",
                   [Column("component"), Column("class", optional=True), Column("params", True), Column("on disk", True),
                    Column("fp16", True), Column("fp32", True, True)],
                   [[r["component"], r["class"], f"{r['params']:,}", human_bytes(r["bytes_on_disk"]),
                     *(human_bytes(r["memory_bytes"][p]) if r["memory_bytes"] else "-" for p in ("fp16", "fp32"))]
                    for r in pipe["components"]])
    if result["reported_scores"]:
        show_table("Reported on the card (model-index; not measured here)",
                   [Column("task"), Column("dataset"), Column("metric"), Column("value", True), Column("source", optional=True)],
                   [[r["task_name"] or r["task"] or "", " ".join(filter(None, (r["dataset_name"] or r["dataset"], r["split"]))),
                     r["metric_name"] or r["metric"], f"{r['value']:g}", r["source"] + (" (verified)" if r["verified"] else "")]
                    for r in result["reported_scores"]])
    for problem in result["problems"]:
        err.print(f"[yellow]note:[/yellow] {problem}", highlight=False)


@app.command("eval")
def eval_quality(
    model: str = typer.Argument(..., help="Model directory (a training run: its final/), or Hub id."),
    tasks: Optional[list[str]] = typer.Option(None, "--tasks", help="lm-evaluation-harness tasks, comma-separated (or repeated): registry names or YAML definitions in --include."),
    include: Optional[list[Path]] = typer.Option(None, "--include", help="Directory of local task definitions (YAML + data files), as the harness's --include_path."),
    text: Optional[Path] = typer.Option(None, "--text", help="Held-out text file: word/byte perplexity and bits per byte (paragraphs are documents)."),
    images: Optional[Path] = typer.Option(None, "--images", help="Image classifier: a folder of class folders named as the model's labels (top-1/top-5)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Text encoder: JSONL of {text,label}, {sentence1,sentence2,score} or {query,positive}."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Examples per task (default: all)."),
    fewshot: Optional[int] = typer.Option(None, "--fewshot", help="Few-shot examples per prompt (default: the task's)."),
    batch: int = typer.Option(8, "--batch", help="Sequences (or images, texts) per forward pass."),
    engine: str = typer.Option("transformers", "--engine", help="transformers (reference) or network (archsmith.network, same weights)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the harness's sampling (few-shot examples)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Write results.json and quality.png here (must not exist unless --overwrite)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace files in an existing --out directory."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Measured quality: lm-evaluation-harness tasks and perplexity, image top-1/top-5, encoder metrics; beside the card's scores."""
    from archsmith.files import check_out_dir, write_files
    from archsmith.quality import evaluate as measure
    from archsmith.quality import output_files, task_list, values

    try:
        if out_dir is not None:
            check_out_dir(out_dir, overwrite)
        with stages(f"evaluating {model}"):
            result = measure(model, task_list(*tasks or []), include or [], text, images, data, limit=limit,
                             fewshot=fewshot, batch=batch, engine=engine, seed=seed)
        if out_dir is not None:
            result["files"] = [str(p) for p in write_files(out_dir, output_files(result), overwrite)]
    except ArchsmithError as exc:
        _fail(exc)
    if as_json:
        _json(result)
        return
    reported = {(c["task"], c["metric"]): c for c in result["comparison"]}
    rows = []
    for task, metrics in result["results"].items():
        for name, value in values(metrics).items():
            se, c = metrics.get(f"{name}_stderr"), reported.get((task, name))
            rows.append([task, name, f"{value:.4f}", "" if se is None else f"{se:.4f}", "" if c is None else f"{c['reported']:.4f}",
                         "" if c is None else f"{c['gap']:+.4f}" + (" !" if c["flagged"] else ""), str(metrics["samples"] or "")])
    s = result["settings"]
    columns = [Column("task"), Column("metric"), Column("value", True), Column("stderr", True), Column("reported", True, True),
               Column("gap", True, True), Column("n", True, True)]
    keep = [i for i in range(len(columns)) if i not in (4, 5) or reported]  # no card scores: no columns for them
    show_table(f"{result['model']} ({result['kind']}, {result['params']:,} parameters)", [columns[i] for i in keep],
               [[r[i] for i in keep] for r in rows])
    if "harness" in s:
        said = f"{s['engine']} on {s['device']}, {s['harness']}"
    elif "processor" in s:
        said = ", ".join(f"{k} {v}" for k, v in s["processor"].items() if k in ("class", "size", "image_mean", "image_std"))
    else:
        said = s["pooling"]
    out.print(f"settings: {said}; limit {s['limit'] or 'all'}; batch {s['batch']}", highlight=False)
    for c in result["comparison"]:
        if c["flagged"]:
            out.print(f"gap: {c['task']} {c['metric']} measured {c['measured']:.4f} vs reported {c['reported']:.4f} "
                      f"({c['source']}): {c['gap_in_stderr']:+.1f} stderr", highlight=False)
    for problem in result["problems"]:
        err.print(f"[yellow]note:[/yellow] {problem}", highlight=False)
    if "files" in result:
        out.print("wrote " + ", ".join(result["files"]), highlight=False)


@app.command()
def configure(
    model_id: str = typer.Argument(..., help="Hub id of the chosen model, or a model directory on this machine (config.json, safetensors, tokenizer: no Hub needed)."),
    task: str = typer.Option("text-generation", "--task", help="text-generation, text-classification, image-classification, automatic-speech-recognition, zero-shot-image-classification, text-to-image (diffusers), ..."),
    gpu: str = typer.Option("t4", "--gpu", help="The GPU the fine-tune runs on."),
    method: str = typer.Option("auto", "--method", help="auto (largest that fits), full, lora or qlora."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Directory for finetune.py and plan.json (must not exist unless --overwrite)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace files in an existing --out directory."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Fine-tuning plan (full / LoRA / QLoRA) for one model on one GPU, with the memory behind it, and finetune.py: for text
    generation and classification a complete script (data, chat template, training loop, evaluation, saving)."""
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
    from archsmith.units import human_bytes

    needs, fits = plan["memory"]["needs_bytes"], plan["memory"]["fits"]
    show_table(f"Fine-tuning {model_id} on {gpu}", [Column("method"), Column("needs", True), Column("usable", True), Column("fits")],
               [[m, human_bytes(needs[f"finetune_{m}"]), human_bytes(plan["usable_bytes"]), "yes" if fits[f"finetune_{m}"] else "no"]
                for m in ("full", "lora", "qlora") if f"finetune_{m}" in needs])
    out.print(f"method: [bold]{plan['method']}[/bold]; LoRA targets: {', '.join(plan['settings']['target_modules']) or '-'}"
              + (f" (from {plan['settings']['target_source']})" if plan["settings"]["target_source"] else ""), highlight=False)
    for note in plan["notes"]:
        err.print(f"[yellow]note:[/yellow] {note}", highlight=False)
    out.print("wrote " + ", ".join(str(p) for p in written) if written else plan["script"], highlight=False)
    if written and plan["usage"]:
        out.print(f"run: cd {out_dir} && {plan['usage']}", highlight=False)


@app.command()
def agent(
    args: list[str] = typer.Argument(..., metavar='ROLE "TASK" | --team "TASK"',
                                     help="A role (llm-architect, model-architect, network-architect, ml-architecture-designer) and its task; with --team, only the task."),
    team: bool = typer.Option(False, "--team", help="A coordinator delegates the task to the four roles."),
    model: Optional[str] = typer.Option(None, "--model", help="Model id (default: the role's front matter; inherit -> $ANTHROPIC_MODEL, else sonnet)."),
    max_steps: int = typer.Option(DEFAULT_STEPS, "--max-steps", help="Model replies per role before it is stopped (1-500)."),
    max_tokens: int = typer.Option(DEFAULT_TOKENS, "--max-tokens", help="Input + output tokens for the whole run, all roles together."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Directory for the transcripts (JSONL + Markdown per role) and the summary."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace files in an existing --out directory."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout (no streaming)."),
) -> None:
    """Run a role, or the team of four, outside Claude Code on the Anthropic API (needs ANTHROPIC_API_KEY)."""
    from archsmith import runner, transcript
    from archsmith.files import check_out_dir
    from archsmith.roles import load_role

    try:
        if team != (len(args) == 1) or len(args) > 2:
            raise ArchsmithError("args", 'give ROLE "TASK", or --team "TASK"')
        if not 1 <= max_steps <= 500:
            raise ArchsmithError("max_steps", f"must be between 1 and 500; got {max_steps}")
        if max_tokens < 1000:
            raise ArchsmithError("max_tokens", f"must be at least 1000; got {max_tokens}")
        if not team:
            load_role(args[0])
        if out_dir is not None:
            check_out_dir(out_dir, overwrite)
        options = dict(model=model, max_steps=max_steps, max_tokens=max_tokens, listener=None if as_json else _stream())
        result = runner.run_team(args[0], **options) if team else runner.run_role(args[0], args[1], **options)
        written = transcript.write(result, out_dir, overwrite) if out_dir is not None else []
    except ArchsmithError as exc:
        _fail(exc)
    if as_json:
        _json({**result.to_dict(), "files": [str(p) for p in written]})
        return
    rows = result.by_role()
    out.print()
    show_table("usage and cost per role",
               [Column("role"), Column("runs", True), Column("steps", True), Column("input tokens", True),
                Column("output tokens", True), Column("cost (USD)", True)],
               [[role, str(row["runs"]), str(row["steps"]), f"{row['usage'].input_tokens:,}", f"{row['usage'].output_tokens:,}",
                 "unknown" if row["cost_usd"] is None else f"{row['cost_usd']:.4f}"] for role, row in rows.items()])
    if written:
        out.print(f"transcripts: {out_dir}/ ({', '.join(p.name for p in written)})", highlight=False)


def _stream():
    """Print the roles' text as it streams, and each tool call and result as one line."""
    current = {"role": None}

    def listener(role: str, kind: str, data) -> None:
        if current["role"] != role:
            out.print(f"\n[bold]── {role}[/bold]", highlight=False)
            current["role"] = role
        if kind == "text":
            out.file.write(data)
            out.file.flush()
        elif data["event"] == "reply":
            for call in data["tool_calls"]:
                args = json.dumps(call["input"])
                out.print(f"\n[dim]→ {call['name']} {args[:200]}{'…' if len(args) > 200 else ''}[/dim]", highlight=False)
        elif data["event"] == "tool_result":
            text = " ".join(data["content"].split())
            label = "[red]error[/red]" if data["is_error"] else "ok"
            out.print(f"[dim]← {data['name']}: {label} {text[:160]}{'…' if len(text) > 160 else ''}[/dim]", highlight=False)
        elif data["event"] == "end" and data["stopped"] != "end_turn":
            out.print(f"\n[yellow]{role} stopped: {data['stopped']}[/yellow]", highlight=False)

    return listener


def _free_chart(chart: Path | None, overwrite: bool) -> None:
    """Refuse an existing --chart file before any work, unless --overwrite."""
    if chart is not None and chart.exists() and not overwrite:
        raise ArchsmithError("chart", f"{chart} exists; pass --overwrite to replace it")


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
        _free_chart(chart, overwrite)
        shapes = [analyzer.parse_shape(s) for s in input_shape] if input_shape else None
        with stages(f"analysing {model}"):
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
    rows = []
    for r in result["layers"]:
        if r["depth"] > depth:
            continue
        share = "" if r["latency_share"] is None else f"{100 * r['latency_share']:.1f}"
        shape = "x".join(map(str, r["output_shapes"][0])) if r["output_shapes"] else ""
        rows.append(["  " * r["depth"] + r["name"].rsplit(".", 1)[-1], r["type"], shape,
                     human_count(r["params"]) + (" (tied)" if r.get("tied_to") else ""),
                     human_count(r["flops"]), human_bytes(r["activation_bytes"]), share])
    show_table(f"{result['model']} on {result['device']}, inputs {result['inputs']}",
               [Column("module"), Column("type", optional=True), Column("output", optional=True), Column("params", True),
                Column("FLOPs", True), Column("saved", True), Column("time %", True)], rows)
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
def prove(
    model: str = typer.Argument(..., help="file.py:factory (runs that file's code), an HF model directory or an archsmith spec / design config."),
    inputs: Optional[str] = typer.Option(None, "--inputs", help="file.py:fn returning one example batch (a tensor, tuple or dict of tensors)."),
    invariance: list[str] = typer.Option([], "--invariance", help="permutation or rotation (repeatable): checked in float64."),
    chart: Optional[Path] = typer.Option(None, "--chart", help="Write a PNG of activation and gradient scale by depth here."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --chart file."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Prove a network sound by running it: batches, gradients, activations, bf16, init, compile, export, symmetries."""
    from archsmith import proof
    from archsmith.files import write_file

    try:
        _free_chart(chart, overwrite)
        with stages(f"proving {model}") as say:
            report = proof.prove(model, inputs, invariance, progress=say)
        if chart is not None:
            report["chart"] = str(write_file(chart, proof.chart(report), overwrite, "chart"))
    except ArchsmithError as exc:
        _fail(exc)
    if as_json:
        _json(report)
        return
    grads, bf16, init, comp = report["gradients"], report["bf16"], report["init"], report["compile"]
    ratio = grads["early_over_late"]
    rows = [["parameters", f"{report['parameters']['total']:,}"],
            ["batches (copies)", ", ".join(f"{b['copies']}: {'ok' if b['ok'] else 'fails'}" for b in report["batches"])],
            ["gradient, early / late RMS", "-" if ratio is None else f"{ratio:.3g}"],
            ["largest activation RMS", f"{max((a['rms'] for a in report['activations']), default=0):.3g}"],
            ["bf16 drift (relative L2)", "fails" if bf16["drift"] is None else f"{bf16['drift']:.3g}"],
            ["init under a seed", "not rebuilt" if not init["checked"] else "reproducible" if not init["differ"] else "differs"],
            ["torch.compile graph breaks", "-" if comp["graph_breaks"] is None else str(comp["graph_breaks"])],
            ["torch.export", "ok" if report["export"]["exportable"] else "fails"]]
    rows += [[f"{kind} error", str(value)] for kind, value in report["symmetry"].items()]
    show_table(f"{model}: {len(report['findings'])} findings", [Column("check"), Column("result")], rows)
    for f in report["findings"]:
        out.print(f"{f['code']} at {f['module']}: {f['detail']}", highlight=False)
    if "chart" in report:
        out.print(f"wrote {report['chart']}")


@app.command()
def extend(
    model: str = typer.Argument(..., help="A checkpoint directory of a family network.py loads (config.json + safetensors)."),
    out_dir: Path = typer.Option(..., "--out", help="Directory for the new checkpoint (must not exist unless --overwrite)."),
    layers: Optional[str] = typer.Option(None, "--layers", help="Layer indices to keep, in order, comma-separated: 0,1,3 drops 2; 0,1,2,3,3 repeats 3."),
    vocab: Optional[int] = typer.Option(None, "--vocab", help="New vocabulary size: new rows start at the mean of the old ones."),
    context: Optional[int] = typer.Option(None, "--context", help="Longer context, in tokens (with --rope-scaling)."),
    rope_scaling: Optional[str] = typer.Option(None, "--rope-scaling", help="linear, dynamic or yarn (factor = new / old context)."),
    window: Optional[int] = typer.Option(None, "--window", help="Sliding-window attention of W tokens on --window-layers."),
    window_layers: Optional[str] = typer.Option(None, "--window-layers", help="all, alternate (default) or N:1 (N sliding, then one full)."),
    moe: Optional[str] = typer.Option(None, "--moe", help="Upcycle MLPs into EXPERTS:TOP_K MoE layers (experts copy the dense MLP), e.g. 8:2."),
    moe_layers: Optional[str] = typer.Option(None, "--moe-layers", help="Which layers become MoE: all (default), upper, lower or alternate."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace files in an existing --out directory."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Reshape a pretrained decoder: choose layers, grow the vocabulary, lengthen the context, add sliding windows or
    upcycled MoE layers; transformers loads it."""
    from archsmith.extend import extend as run

    try:
        indices = None
        if layers is not None:
            if not re.fullmatch(r"\s*\d+(\s*,\s*\d+)*\s*", layers):
                raise ArchsmithError("layers", f"must be comma-separated layer indices like 0,1,3; got {layers!r:.60}")
            indices = [int(i) for i in layers.split(",")]
        with stages(f"extending {model}"):
            report = run(model, out_dir, indices, vocab, context, rope_scaling, window=window, window_layers=window_layers,
                         moe=moe, moe_layers=moe_layers, overwrite=overwrite)
    except ArchsmithError as exc:
        _fail(exc)
    if as_json:
        _json(report)
        return
    rows = [["parameters", f"{report['params_before']:,}", f"{report['params_after']:,} ({report['params_delta']:+,})"],
            ["layers", "", ",".join(map(str, report["layers"]))], ["vocabulary", "", f"{report['vocab_size']:,}"],
            ["context", "", f"{report['context_length']:,}"], ["family", "", report["model_type"]]]
    if report["sliding_window"]:
        rows.append(["sliding window", "", f"{report['sliding_window']:,} on {report['layer_types'].count('sliding_attention')} layers"])
    if report["moe"]:
        rows.append(["active parameters", "", f"{report['active_params_after']:,}"])
    show_table(f"{model} -> {out_dir}", [Column(""), Column("before", True), Column("after", True)], rows)
    if "max_logit_diff_existing_tokens" in report:
        out.print(f"logits of existing tokens: max |diff| {report['max_logit_diff_existing_tokens']:.2e}", highlight=False)
    for key, value in report["adopted"].items():
        out.print(f"adopted: {key} = {value} ({report['model_type']} hard-codes it)", highlight=False)
    out.print("wrote " + ", ".join(report["files"]), highlight=False)


@app.command()
def compress(
    model: str = typer.Argument(..., help="Teacher: a text model directory (BERT-style encoder, Llama-layout decoder), another model directory (config.json + safetensors: ResNet, ViT, ...) or file.py:factory (its integer keyword arguments are size knobs)."),
    reduction: float = typer.Option(..., "--reduction", help="Share of parameters to remove, in (0, 1): 0.5 halves the model."),
    out_dir: Path = typer.Option(..., "--out", help="Directory for the student (must not exist unless --overwrite)."),
    strategy: str = typer.Option("both", "--strategy", help="depth (drop layers / blocks), width (narrow them) or both."),
    v2: bool = typer.Option(False, "--v2", help="Cheaper operations: GQA/MQA (decoders), tanh-GELU, linear attention (vision encoders), depthwise-separable convolutions, a lower lmax (size knobs)."),
    kv_heads: Optional[int] = typer.Option(None, "--kv-heads", help="With --v2, KV heads of a decoder student (1 = MQA; default heads / 4)."),
    calibration: Optional[Path] = typer.Option(None, "--calibration", help="Text models: a text file, one sample per line, for activation importance (default: shipped English text)."),
    heldout: Optional[Path] = typer.Option(None, "--heldout", help="Text models: a text file for the fidelity report (default: shipped English sentences)."),
    inputs: Optional[str] = typer.Option(None, "--inputs", help="Other modules: file.py:fn returning one example batch (a tensor, tuple or dict of tensors)."),
    data: Optional[str] = typer.Option(None, "--data", help="Other modules: file.py:fn returning batches for calibration and held-out fidelity (default: the example batch redrawn)."),
    invariance: list[str] = typer.Option([], "--invariance", help="permutation or rotation (repeatable): measured on teacher and student; a student that breaks one the teacher keeps is refused."),
    route: str = typer.Option("auto", "--route", help="Other modules: knobs (search the factory's size knobs), prune (torch-pruning) or auto (knobs when the factory has them)."),
    repeats: int = typer.Option(5, "--repeats", help="Timed forward passes per latency point."),
    eval_tasks: Optional[str] = typer.Option(None, "--eval-tasks", help="lm-evaluation-harness tasks (comma list) measured on teacher and student (decoders)."),
    eval_include: Optional[Path] = typer.Option(None, "--eval-include", help="Directory of local task YAMLs for --eval-tasks."),
    eval_limit: Optional[int] = typer.Option(None, "--eval-limit", help="Examples per task (default: all)."),
    eval_data: Optional[Path] = typer.Option(None, "--eval-data", help="Encoders: JSONL for teacher and student metrics (as `archsmith eval --data`)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace files in an existing --out directory."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Design a smaller student initialised from the teacher; write it with its weights, code and a comparison."""
    from archsmith.compress import compress as run

    try:
        with stages("compressing") as say:
            report = run(model, reduction, out_dir, strategy=strategy, v2=v2, kv_heads=kv_heads, calibration=calibration,
                         heldout=heldout, inputs=inputs, data=data, invariance=invariance, route=route, repeats=repeats,
                         overwrite=overwrite, progress=say, **_measure(eval_tasks, eval_include, eval_limit, eval_data))
    except ArchsmithError as exc:
        _fail(exc)
    if as_json:
        _json(report)
        return
    _show_quality(report)
    if "route" in report:
        _show_module_student(report, out_dir)
        return
    cmp = report["comparison"]
    rows = [[key, f"{cmp['teacher'][key]:,}", f"{cmp['student'][key]:,}"]
            for key in ("params", "layers", "hidden", "heads", "kv_heads", "ffn", "forward_flops")]
    rows += [[f"ms at batch {r['batch']}, seq {r['seq']}", f"{r['teacher_ms']:.2f}", f"{r['student_ms']:.2f} ({r['speedup']:.2f}x)"]
             for r in cmp["latency"]]
    show_table(f"{report['teacher']} -> {out_dir} ({report['version']}, {report['strategy']})",
               [Column(""), Column("teacher", True), Column("student", True)], rows)
    fid = report["fidelity"]["teacher_vs_student"]
    out.print(f"reduction {report['achieved_reduction']:.1%} (asked {report['target_reduction']:.0%}); kept layers {report['kept_layers']}; "
              f"fidelity before distillation: " + ", ".join(f"{k} {v}" for k, v in fid.items() if k not in ("kind", "texts")))
    for note in report["notes"]:
        out.print(f"note: {note}", highlight=False)
    out.print("wrote " + ", ".join(report["files"]), highlight=False)


def _measure(tasks: str | None, include: Path | None, limit: int | None, data: Path | None) -> dict[str, Any]:
    """compress / distill's --eval-* options as the engine's keyword arguments."""
    from archsmith.quality import task_list

    return {"eval_tasks": task_list(tasks), "eval_include": [include] if include else [], "eval_limit": limit, "eval_data": data}


def _show_quality(report: dict) -> None:
    """Teacher and student task metrics, when --eval-tasks or --eval-data asked for them."""
    if "quality" not in report:
        return
    show_table("Task metrics (archsmith.quality)", [Column("task"), Column("metric"), Column("teacher", True),
                                                   Column("student", True), Column("kept", True)],
               [[r["task"], r["metric"], f"{r['teacher']:.4f}", "-" if r["student"] is None else f"{r['student']:.4f}",
                 "-" if r["student_over_teacher"] is None else f"{r['student_over_teacher']:.1%}"] for r in report["quality"]["rows"]])


def _show_module_student(report: dict, out_dir: Path) -> None:
    """compress's summary for a student of any nn.Module."""
    cmp = report["comparison"]
    labels = {"params": "parameters", "forward_flops": "forward FLOPs", "activation_bytes": "saved activations (B)",
              "latency_ms": "CPU latency (ms)"}
    rows = [[label, f"{cmp['teacher'][k]:,}", f"{cmp['student'][k]:,}", "-" if cmp["ratios"][k] is None else f"{cmp['ratios'][k]:.3f}"]
            for k, label in labels.items()]
    show_table(f"{report['teacher']} -> {out_dir} ({report['version']}, {report['route']}, {report['strategy']})",
               [Column(""), Column("teacher", True), Column("student", True), Column("ratio", True)], rows)
    fid = report["fidelity"]["teacher_vs_student"]
    out.print(f"reduction {report['achieved_reduction']:.1%} (asked {report['target_reduction']:.0%}); speed-up "
              f"{cmp['speedup']:.2f}x on CPU; fidelity before distillation: "
              + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in fid.items()), highlight=False)
    def errors(value) -> str:
        return ", ".join(f"{k} {v:.1e}" for k, v in value.items() if v is not None) if isinstance(value, dict) else f"{value:.1e}"

    for kind, teacher in report["symmetry"]["teacher"].items():
        out.print(f"{kind} error: teacher {errors(teacher)}; student {errors(report['symmetry']['student'][kind])}", highlight=False)
    for decision in report["decisions"]:
        out.print(f"decision: {decision}", highlight=False)
    out.print("wrote " + ", ".join(report["files"]), highlight=False)


@app.command()
def distill(
    teacher: str = typer.Argument(..., help="Teacher: a model directory (config.json + safetensors; text models with their tokenizer) or file.py:factory."),
    student: Path = typer.Argument(..., help="Student directory: what compress wrote (text models: same kind and vocabulary)."),
    data: list[str] = typer.Option(..., "--data", help="Text models: text files (encoders: one sentence per line), JSONL files or directories (repeatable). Other modules: file.py:fn returning batches."),
    out_dir: Path = typer.Option(..., "--out", help="Run directory (must be new, unless --resume): final/ is the distilled student."),
    steps: int = typer.Option(200, "--steps", help="Optimizer steps."),
    temperature: float = typer.Option(TEMPERATURE, "--temperature", help="Softening of the teacher's logits (LMs); the KL is scaled by T^2."),
    alpha: float = typer.Option(ALPHA, "--alpha", help="LMs: weight of the soft-target KL; 1 - alpha goes to the next-token loss."),
    hidden_weight: float = typer.Option(HIDDEN_WEIGHT, "--hidden-weight", help="Weight of the hidden-state loss (relative MSE through a learned projection); 0 disables."),
    attention_weight: float = typer.Option(0.0, "--attention-weight", help="Encoders: weight of attention transfer (MSE of head-averaged maps)."),
    lr: float = typer.Option(LR, "--lr", help="Peak learning rate (AdamW, warmup then cosine)."),
    batch: int = typer.Option(16, "--batch", help="Samples per optimizer step."),
    seq: int = typer.Option(128, "--seq", help="Tokens per sample (encoders: at most; LMs: packed windows)."),
    heldout: Optional[Path] = typer.Option(None, "--heldout", help="Text file for the fidelity report (default: the shipped English sentences compress uses)."),
    loss: str = typer.Option("auto", "--loss", help="Other modules: mse (relative squared error of the outputs), kl (logits, with --temperature) or auto."),
    feature_weight: float = typer.Option(1.0, "--feature-weight", help="Other modules: weight of matching the blocks both keep, through learned projections; 0 disables."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    eval_tasks: Optional[str] = typer.Option(None, "--eval-tasks", help="lm-evaluation-harness tasks (comma list) measured on teacher and student (decoders)."),
    eval_include: Optional[Path] = typer.Option(None, "--eval-include", help="Directory of local task YAMLs for --eval-tasks."),
    eval_limit: Optional[int] = typer.Option(None, "--eval-limit", help="Examples per task (default: all)."),
    eval_data: Optional[Path] = typer.Option(None, "--eval-data", help="Encoders: JSONL for teacher and student metrics (as `archsmith eval --data`)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Distil a teacher into a student; fidelity on held-out text or batches before and after."""
    from archsmith.distill import distill as run
    from archsmith.distill import is_module_student

    module = is_module_student(student)
    options = dict(steps=steps, lr=lr, loss=loss, temperature=temperature, feature_weight=feature_weight) if module else dict(
        steps=steps, temperature=temperature, alpha=alpha, hidden_weight=hidden_weight, attention_weight=attention_weight,
        lr=lr, batch=batch, seq=seq, heldout=heldout)
    try:
        with stages("distilling", bar_inside=not as_json) as say:
            report = run(teacher, student, data, out_dir, resume=resume, progress=not as_json, say=say, **options,
                         **_measure(eval_tasks, eval_include, eval_limit, eval_data))
    except ArchsmithError as exc:
        _fail(exc)
    if as_json:
        _json(report)
        return
    _show_quality(report)
    if module:
        before, after = report["fidelity"]["before"], report["fidelity"]["after"]
        keys = [k for k in before if k != "batches"]
        show_table(f"fidelity to the teacher on {before['batches']} held-out batches",
                   [Column(""), Column("before", True), Column("after", True)], [[k.replace("_", " "), f"{before[k]}", f"{after[k]}"] for k in keys])
        t = report["training"]
        out.print(f"{t['steps']} steps, loss {t['first_loss']:.4f} -> {t['last_loss']:.4f}; objective: {report['objective']}", highlight=False)
        out.print("wrote " + ", ".join(report["files"]), highlight=False)
        return
    before, after = report["fidelity"]["before"], report["fidelity"]["after"]
    keys = [k for k in before if k not in ("kind", "texts", "pairs", "tokens")]
    show_table(f"fidelity to the teacher: {before['kind']} on {before['texts']} held-out texts",
               [Column(""), Column("before", True), Column("after", True)], [[k, f"{before[k]:,}", f"{after[k]:,}"] for k in keys])
    t = report["training"]
    out.print(f"{t['steps']} steps, loss {t['first_loss']:.4f} -> {t['last_loss']:.4f}; objective: {report['objective']}", highlight=False)
    out.print("wrote " + ", ".join(report["files"]), highlight=False)


@app.command()
def export(
    model: str = typer.Argument(..., help="A model directory (config.json + safetensors) or file.py:factory returning (module, example_inputs)."),
    fmt: str = typer.Option(..., "--format", help="onnx, pt2 (torch.export) or torchscript (deprecated upstream)."),
    out_dir: Path = typer.Option(..., "--out", help="Directory for the artifact and export.json (must not exist unless --overwrite)."),
    quantize: Optional[str] = typer.Option(None, "--quantize", help="int8: also write onnxruntime's dynamic int8 model, with its accuracy delta."),
    repeats: int = typer.Option(5, "--repeats", help="Timed runs per latency point."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace files in an existing --out directory."),
    static: bool = typer.Option(False, "--static", help="Fixed shapes (the example's) instead of dynamic ones, for a model whose dynamic-shape export differs from eager."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Export to ONNX / torch.export / TorchScript, validate against eager at several shapes, time it."""
    from archsmith.export import export as run

    try:
        with stages("exporting") as say:
            report = run(model, fmt, out_dir, quantize=quantize, overwrite=overwrite, repeats=repeats, progress=say, static=static)
    except ArchsmithError as exc:
        _fail(exc)
    if as_json:
        _json(report)
        return
    show_table(f"{model} -> {fmt}: validation against eager (tolerance {report['tolerance']})",
               [Column("case"), Column("max |diff|", True), Column("allowed", True), Column("ok")],
               [[r["case"], f"{r['max_abs_diff']:.2e}", f"{r['tolerance']:.1e}", "yes" if r["ok"] else "NO"] for r in report["validation"]])
    if "int8" in report:
        q = report["int8"]
        out.print(f"int8: max |diff| {q['max_abs_diff']:.3g}, mean {q['mean_abs_diff']:.3g}, min cosine {q['min_cosine']}, size x{q['size_ratio']}")
    keys = [k for k in report["latency"][0] if k.endswith("_ms")]
    show_table(f"median latency (ms, CPU, {report['threads']} threads)", [Column("case"), *(Column(k[:-3], True) for k in keys)],
               [[r["case"], *(f"{r[k]:.2f}" + (f" ({r[k[:-3] + '_speedup']:.2f}x)" if k != "eager_ms" else "") for k in keys)]
                for r in report["latency"]])
    for note in report["notes"]:
        out.print(f"note: {note}", highlight=False)
    out.print("wrote " + ", ".join(report["files"]), highlight=False)


@app.command("generate")
def generate_text(
    model: Path = typer.Argument(..., help="Model directory: config.json, safetensors and the tokenizer files."),
    prompt: str = typer.Option(..., "--prompt", help="Text to continue."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", help="Most tokens to generate (fewer when the end-of-text token comes)."),
    temperature: float = typer.Option(0.0, "--temperature", help="0: greedy; above 0: sample at this temperature."),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="Sample among the k most likely tokens only."),
    top_p: Optional[float] = typer.Option(None, "--top-p", help="Sample within the smallest set of tokens holding this probability (0, 1]."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the sampling."),
    draft: Optional[Path] = typer.Option(None, "--draft", help="Draft model directory with the same vocabulary: speculative decoding."),
    draft_tokens: int = typer.Option(4, "--draft-tokens", help="Tokens the draft proposes per target forward (1-16)."),
    compare: bool = typer.Option(False, "--compare", help="With --draft, decode with the target alone too: speed-up and, greedy, identical tokens."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Continue a prompt with a KV cache (greedy or sampled), speculatively with a smaller draft model."""
    from archsmith.generate import generate_text as run

    try:
        with stages(f"generating with {model}"):
            result = run(model, prompt, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                         seed=seed, draft_dir=draft, draft_tokens=draft_tokens, compare=compare)
    except ArchsmithError as exc:
        _fail(exc)
    if as_json:
        _json(result)
        return
    out.print(result["text"], highlight=False, markup=False)
    speed = f"{result['new_tokens']} in {result['wall_s']:.2f} s ({result['tokens_per_s']:,.1f} tokens/s)"
    if "speculative" not in result:
        out.print(f"new tokens: {speed}", highlight=False)
        return
    s = result["speculative"]
    rows = [["new tokens", speed], ["draft tokens per round (k)", str(s["draft_tokens"])],
            ["acceptance rate", f"{s['acceptance_rate']:.2f} ({s['accepted']:,} of {s['proposed']:,} proposed)"],
            ["tokens per target forward", f"{s['tokens_per_target_forward']:.2f}"]]
    if "plain" in result:
        same = {True: ", same tokens", False: ", tokens DIFFER", None: ""}[result["identical"]]
        rows.append(["plain decoding", f"{result['plain']['tokens_per_s']:,.1f} tokens/s"])
        rows.append(["speed-up", f"{result['speed_up']:.2f}x{same}"])
    show_table(f"speculative decoding, draft {result['draft']}", [Column("what"), Column("value", True)], rows)


@app.command()
def serve(
    http: Optional[int] = typer.Option(None, "--http", min=1, max=65535, help="Serve streamable HTTP on this port instead of stdio."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface for --http (loopback unless told otherwise; any other needs a bearer token)."),
    allow_host: list[str] = typer.Option([], "--allow-host", help="A host name or address clients use, NAME[:PORT] (Host/Origin allow-list); repeatable."),
    token_file: Optional[Path] = typer.Option(None, "--token-file", help="File holding the bearer token HTTP clients must send (default: $ARCHSMITH_MCP_TOKEN)."),
    root: Optional[Path] = typer.Option(None, "--root", help="Workspace root for files tools read and write (default: $ARCHSMITH_WORKSPACE or the current directory)."),
) -> None:
    """Run the MCP server (stdio by default): the engine's tools and reference data for Claude Code or any MCP client."""
    from archsmith.mcp_server.server import serve as run

    try:
        run(http_port=http, host=host, root=root, allow_hosts=allow_host, token_file=token_file)
    except ArchsmithError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        pass


tokenizer_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Tokenizers: train one on a corpus (the design and train steps read it).")
app.add_typer(tokenizer_app, name="tokenizer")


@tokenizer_app.command("train")
def tokenizer_train(
    corpus: list[Path] = typer.Argument(..., help="Text files (a blank line ends a document), JSONL files or directories of them."),
    vocab: int = typer.Option(..., "--vocab", help="Vocabulary size including special tokens (a small corpus may yield fewer)."),
    out_dir: Path = typer.Option(..., "--out", help="Directory for tokenizer.json, tokenizer_config.json, special_tokens_map.json, tokenizer_report.json (and vocab.txt for wordpiece, tokenizer.model for sentencepiece)."),
    kind: str = typer.Option("bpe", "--kind", help="bpe (byte-level BPE, lossless), unigram, wordpiece (BERT-style, for encoders), sentencepiece (unigram) or sentencepiece-bpe (a real tokenizer.model, byte fallback)."),
    special: list[str] = typer.Option([], "--special", help="Extra special token (repeatable); <pad> <s> </s> <unk> are always ids 0-3 (wordpiece: [PAD] [UNK] [CLS] [SEP] [MASK], ids 0-4)."),
    field: str = typer.Option("text", "--field", help="The string field of JSONL records."),
    max_length: Optional[int] = typer.Option(None, "--max-length", help="model_max_length to record (the context you will design for)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace files in an existing --out directory."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Train a BPE, Unigram, WordPiece or SentencePiece tokenizer that AutoTokenizer loads and `design --tokenizer` reads."""
    from archsmith.files import check_out_dir, write_files
    from archsmith.tokenizer import FILES, train_tokenizer

    try:
        check_out_dir(out_dir, overwrite)
        files, report = train_tokenizer([str(c) for c in corpus], vocab, kind=kind, special=special, text_field=field,
                                        max_length=max_length, progress=not as_json)
        written = write_files(out_dir, files, overwrite, stale=FILES)  # no other kind's vocab.txt or .model
    except ArchsmithError as exc:
        _fail(exc)
    for warning in report["warnings"]:
        err.print(f"[yellow]warning:[/yellow] {warning}", highlight=False, soft_wrap=True)
    if as_json:
        _json({**report, "files": [str(p) for p in written]})
        return
    held, lengths = report["held_out"], report["document_tokens"]
    show_table(f"{kind} tokenizer in {out_dir}", [Column("what"), Column("value", True)], [
        ["vocabulary", f"{report['vocab_size']:,} (asked {vocab:,})"],
        ["corpus documents", f"{report['corpus']['documents']:,}"], ["corpus bytes", f"{report['corpus']['bytes']:,}"],
        ["characters / token", f"{held['characters_per_token']}"], ["bytes / token", f"{held['bytes_per_token']}"],
        ["unknown tokens", f"{held['unknown_tokens']:,} ({held['unknown_rate']:.4%})"],
        ["documents decoded exactly", f"{held['exact_round_trips']:.1%}"],
        ["document tokens p50 / p90 / p99 / max", f"{lengths['p50']:.0f} / {lengths['p90']:.0f} / {lengths['p99']:.0f} / {lengths['max']}"],
        ["training", f"{report['training_seconds']} s ({report['training_mb_per_s']} MB/s)"]])
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
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate (AdamW) (default: for fresh weights, DeepSeek LLM's fit for the run's compute, as design's recipe; 3e-4 when continuing from weights)."),
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
    tp: int = typer.Option(1, "--tp", help="Tensor-parallel degree (sequence-parallel norms, vocabulary-parallel loss)."),
    pp: int = typer.Option(1, "--pp", help="Pipeline-parallel degree (stages of consecutive layers)."),
    cp: int = typer.Option(1, "--cp", help="Context-parallel degree (ring attention; CUDA)."),
    pp_schedule: str = typer.Option("1f1b", "--pp-schedule", help="1f1b, interleaved (2 stages per rank) or gpipe."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile each decoder layer."),
    checkpointing: bool = typer.Option(False, "--checkpointing", help="Activation checkpointing per decoder layer."),
    deterministic: bool = typer.Option(False, "--deterministic", help="Deterministic algorithms: bitwise-repeatable runs and resumes on one device."),
    eval_tasks: Optional[str] = typer.Option(None, "--eval-tasks", help="lm-evaluation-harness tasks (comma list) measured at every evaluation."),
    eval_include: Optional[str] = typer.Option(None, "--eval-include", help="Directory of local task YAMLs for --eval-tasks."),
    eval_limit: Optional[int] = typer.Option(None, "--eval-limit", help="Examples per task at each evaluation (default: all)."),
    tensorboard: bool = typer.Option(False, "--tensorboard", help="Also write metrics as TensorBoard event files (RUN/tensorboard)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bars on stderr."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (the run summary) on stdout."),
) -> None:
    """Train a causal LM from a design or checkpoint on a corpus: checkpoints, metrics.jsonl, loss curve, report."""
    import os

    from archsmith.files import workspace
    from archsmith.train.parallel import under_torchrun
    from archsmith.train.run import BOUNDARY_ENV, LAUNCHED_ENV, RunArgs, launch, task_columns
    from archsmith.train.run import train as run_training

    args = RunArgs(model=model, data=data, out=out_dir, tokenizer=tokenizer, steps=steps, batch=batch, micro_batch=micro_batch,
                   seq=seq, lr=lr, min_lr_ratio=min_lr_ratio, schedule=schedule, warmup=warmup, weight_decay=weight_decay,
                   clip=clip, precision=precision, save_every=save_every, keep=keep, eval_every=eval_every,
                   eval_samples=eval_samples, eval_fraction=eval_fraction, patience=patience, document_mask=document_mask,
                   field=field, resume=resume, seed=seed, nproc=nproc, strategy=strategy, tp=tp, pp=pp, cp=cp,
                   pp_schedule=pp_schedule, compile=compile, checkpointing=checkpointing, deterministic=deterministic, eval_tasks=eval_tasks, eval_include=eval_include,
                   eval_limit=eval_limit, tensorboard=tensorboard, progress=progress and not as_json)
    try:
        if under_torchrun() and nproc > 1 and nproc != int(os.environ["WORLD_SIZE"]):
            raise ArchsmithError("nproc", f"torchrun started {os.environ['WORLD_SIZE']} processes; leave --nproc out under torchrun")
        with workspace(os.environ.get(BOUNDARY_ENV) or None):  # started by the MCP server: its workspace root
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
              f"process(es) ({summary['layout']}): {summary['tokens']:,} tokens, {summary['tokens_per_s']:,.0f} tokens/s")
    line = f"loss {summary['first_loss']:.4f} -> {summary['last_loss']:.4f}"
    if len(evals) > 1:
        line += f"; held-out {evals[0]['loss']:.4f} -> {evals[-1]['loss']:.4f} (perplexity {evals[-1]['perplexity']:.2f})"
    reason = summary["stop_reason"]
    out.print(line + "; " + (f"all {summary['steps']} steps done" if reason == "steps" else reason))
    tasks = task_columns(evals)
    if tasks:
        first, last = evals[0], evals[-1]
        out.print("tasks: " + "; ".join(f"{k} {first[k]:.4f} -> {last[k]:.4f}" if k in first else f"{k} {last[k]:.4f}" for k in tasks),
                  highlight=False)
    out.print(f"wrote {summary['final']} (model + tokenizer), report.md, loss.png, metrics.jsonl, checkpoints in {out_dir}", highlight=False)
    if reason.startswith("stopped"):
        from archsmith.train.run import resume_command

        err.print(f"stopped at step {summary['steps']} with a checkpoint; continue with: {resume_command(args)}", highlight=False,
                  soft_wrap=True)  # one line: a command to copy
        if reason.endswith("SIGINT"):
            raise typer.Exit(130)


def main() -> None:
    """The CLI with a last-resort handler: an engine error is one line (exit 2), anything else one line saying
    "internal error in COMMAND" (exit 1; ARCHSMITH_DEBUG=1 adds the traceback), never a bare traceback."""
    import os

    try:
        app()
    except ArchsmithError as exc:  # raised outside a command's own try (e.g. while rendering)
        err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except Exception as exc:
        from rich.markup import escape

        command = next((a for a in sys.argv[1:] if not a.startswith("-")), "archsmith")
        err.print(f"[red]error:[/red] internal error in {escape(command)}: {type(exc).__name__}: {escape(str(exc)[:300])} "
                  "(a bug in archsmith; set ARCHSMITH_DEBUG=1 for the traceback)", highlight=False, soft_wrap=True)
        if os.environ.get("ARCHSMITH_DEBUG"):
            import traceback

            traceback.print_exc()
        sys.exit(1)


if __name__ == "__main__":
    main()
