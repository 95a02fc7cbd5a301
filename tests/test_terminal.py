"""The CLI in a terminal: tables that never cut a number at 80 columns (or in a pipe), -h and --version everywhere,
flags that read as flags, and option errors that name the field and the range."""

from __future__ import annotations

import json
import re
from importlib.metadata import version
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from typer.main import get_command
from typer.testing import CliRunner

from archsmith import cli
from archsmith.units import human_bytes, human_count, human_duration

LLAMA = Path(__file__).resolve().parents[1] / "src" / "data" / "reference_architectures" / "meta-llama__Llama-3.2-1B.json"
COMMANDS = sorted(get_command(cli.app).commands)


@pytest.fixture
def run(monkeypatch):
    """Run the CLI in process with an 80-column console, as a pipe or Claude Code's Bash tool has."""
    monkeypatch.setattr(cli, "out", Console(width=80))
    monkeypatch.setattr(cli, "err", Console(width=80, stderr=True))
    runner = CliRunner()
    return lambda *args: runner.invoke(cli.app, [str(a) for a in args], env={"COLUMNS": "80"})


def table_part(text: str) -> str:
    """The output up to the end of the first table (so that prose repeating a number cannot hide a cut one)."""
    lines = text.splitlines()
    return "\n".join(lines[:next(i for i, line in enumerate(lines) if line.startswith("└")) + 1])


def assert_whole(text: str, numbers: list[str]) -> None:
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= 80
    for number in numbers:
        assert number in text, number


@pytest.mark.parametrize("args", [["--params", "125M"], ["--memory", "24GB"], ["--params", "70B", "--gpus", "1"]],
                         ids=["125M", "24GB", "70B-1gpu"])
def test_design_table_keeps_every_number_whole(run, tmp_path, args):
    data = json.loads(run("design", *args, "--out", tmp_path / "j", "--json").stdout)
    result = run("design", *args, "--out", tmp_path / "t")
    assert result.exit_code == 0, result.output
    numbers = []
    for c in data["candidates"]:
        numbers += [f"{c['params']:,}", c["shape"], human_duration(c["train_time_seconds"]), human_bytes(c["memory_per_gpu_bytes"])]
        numbers.append(c["name"])  # names wrap at spaces, never inside a word ("balanced-lean-kv")
    assert_whole(table_part(result.stdout), numbers)
    for line in data["assumptions"]:  # the assumptions follow the table
        assert " ".join(line.split()) in " ".join(result.stdout.split())


def test_estimate_table_keeps_every_number_whole(run):
    data = json.loads(run("estimate", LLAMA, "--json").stdout)
    text = run("estimate", LLAMA).stdout
    p, f, m = data["params"], data["flops"], data["memory"]
    numbers = [f"{p[k]:,}" for k in ("total", "embedding", "per_layer", "non_embedding")]
    numbers += [f"{f['forward_per_token']:,}", f"{f['training_per_token']:,}"]
    numbers += [human_bytes(m[k]) for k in ("weights_bytes", "optimizer_bytes", "activations_bytes", "training_total_bytes",
                                            "kv_cache_bytes", "inference_total_bytes")]
    assert_whole(table_part(text), numbers)


def test_hub_tables_keep_every_number_whole(run, monkeypatch, tmp_path):
    from hubserver import FakeHub, use_fake_hub
    from test_hub import repos

    with FakeHub(repos()) as hub:
        use_fake_hub(monkeypatch, tmp_path / "hf", hub)
        search = ["search", "--task", "text-classification", "--gpu", "t4", "--use", "finetune_lora"]
        found = json.loads(run(*search, "--json").stdout)
        numbers = []
        for h in found["results"]:
            numbers.append(f"{h['downloads']:,}")
            if h["params"]:
                numbers.append(human_count(h["params"]))
            if h["memory"]:
                numbers.append(human_bytes(h["memory"]["needs_bytes"]["finetune_lora"]))
        assert_whole(table_part(run(*search).stdout), numbers)

        evaluated = json.loads(run("evaluate", "acme/tiny-llama-es", "--gpu", "l4", "--json").stdout)
        text = run("evaluate", "acme/tiny-llama-es", "--gpu", "l4").stdout
        assert_whole(text, [f"{evaluated['params']:,}"] + [human_bytes(v) for v in evaluated["memory"]["needs_bytes"].values()])

        plan = json.loads(run("configure", "acme/roberta-es-sentiment", "--task", "text-classification", "--json").stdout)
        text = run("configure", "acme/roberta-es-sentiment", "--task", "text-classification").stdout
        needs = [human_bytes(plan["memory"]["needs_bytes"][f"finetune_{m}"]) for m in ("full", "lora", "qlora")]
        assert_whole(table_part(text), needs + [human_bytes(plan["usable_bytes"])])


NUMBER = st.integers(0, 10**15).map(lambda n: f"{n:,}") | st.floats(0, 2**45).map(human_bytes)
WORDS = st.text(st.sampled_from("abcdefghij-/ "), min_size=1, max_size=40)


def test_analyze_table_keeps_every_number_whole(run):
    factories = Path(__file__).resolve().parent / "factories.py"
    data = json.loads(run("analyze", f"{factories}:graph_net", "--repeats", "1", "--json").stdout)
    text = run("analyze", f"{factories}:graph_net", "--repeats", "1").stdout
    shown = [r for r in data["layers"] if r["depth"] <= 3]  # the command's default --depth
    assert shown, data["layers"]
    assert_whole(table_part(text), [human_count(r["params"]) for r in shown] + [human_count(r["flops"]) for r in shown])


@settings(max_examples=100, deadline=None, derandomize=True)
@given(width=st.integers(30, 160), kinds=st.lists(st.tuples(st.booleans(), st.booleans()), min_size=2, max_size=10),
       data=st.data())
def test_show_table_never_cuts_a_number(width, kinds, data):
    from io import StringIO

    columns = [cli.Column(f"column {i}", number, optional) for i, (number, optional) in enumerate(kinds)]
    rows = [[data.draw(NUMBER if c.number else WORDS) for c in columns] for _ in range(data.draw(st.integers(1, 5)))]
    console = Console(width=width, file=StringIO())
    cli.show_table("title", columns, rows, console)
    text = console.file.getvalue()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= width
    left_out = re.search(r"left out at this width: (.*?); --json", " ".join(text.split()))
    left_out = set(left_out.group(1).split(", ")) if left_out else set()
    assert all(c.optional for c in columns if c.header in left_out)
    for row in rows:
        for value, c in zip(row, columns):
            if c.number and c.header not in left_out:
                assert value in text


def test_version_and_short_help_everywhere(run):
    assert run("--version").stdout.strip() == f"archsmith {version('archsmith')}"
    assert "Usage:" in run("-h").stdout and run("-h").exit_code == 0
    for name in COMMANDS:
        short, long = run(name, "-h"), run(name, "--help")
        assert short.exit_code == 0 and short.stdout == long.stdout and "Usage:" in short.stdout, name
        assert "<bool>" not in short.stdout, name  # flags take no value
        assert run(name, "--version").stdout.strip() == f"archsmith {version('archsmith')}", name
    design_help = run("design", "-h").stdout
    assert "--checkpointing" in design_help and "--no-checkpointing" in design_help


@pytest.mark.parametrize("args,field,says,never", [
    (["design", "--params", "1B", "--context", "0"], "context", "[128, ", None),
    (["design", "--params", "1B", "--seq", "0"], "seq", "[128, ", None),
    (["design", "--params", "-5"], "params", "must be positive", "cannot read"),
    (["design", "--params", "1e999"], "params", "finite", None),
    (["design", "--compute", "1e999"], "compute", "[1e15, 1e28]", None),
    (["design", "--params", "1B", "--tokens", "1e999"], "tokens", "finite", None),
    (["design", "--memory", "1e999GB"], "memory", "finite", None),
    (["design", "--params", "1B", "--strategy", "pipeline"], "strategy", "zero3", None),
    (["design", "--params", "1B", "--batch", "0"], "batch", "[1, ", None),
    (["estimate", str(LLAMA), "--seq", "0"], "seq", "[1, 131072]", None),
    (["estimate", str(LLAMA), "--dtype", "banana"], "dtype", "fp32, bf16, fp16", "fp8"),
    (["search", "--max-params", "1e999"], "max_params", "finite", None),
])
def test_bad_options_are_one_line_errors(run, tmp_path, args, field, says, never):
    out = tmp_path / "out"
    result = run(*args, *(["--out", out] if args[0] == "design" else []))
    assert result.exit_code == 2, result.output
    line = result.stderr.strip()
    assert line.startswith(f"error: {field}: ") and "\n" not in line and says in line, line
    assert never is None or never not in line
    assert not out.exists()


@pytest.mark.parametrize("command", [[], *([c] for c in COMMANDS), ["tokenizer", "train"]], ids=lambda c: " ".join(c) or "archsmith")
def test_help_at_80_columns_never_splits_a_word(command):
    """Every option name and every word of every help text appears whole; no line passes 80 columns."""
    import click

    result = CliRunner().invoke(cli.app, [*command, "--help"], terminal_width=80, env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.output.splitlines()) <= 80
    tokens = set(result.output.split())
    group = get_command(cli.app)
    target = group
    for name in command:
        target = target.commands[name] if isinstance(target, click.Group) else target
    for param in [p for p in target.params if p.name != "version"]:  # --version is the top command's
        for name in [*getattr(param, "opts", []), *getattr(param, "secondary_opts", [])]:
            assert any(name in t for t in tokens), name
        for word in (getattr(param, "help", None) or "").split():
            assert word in tokens or any(word in t for t in tokens), (param.name, word)
