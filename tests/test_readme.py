"""The README's examples run as written: design -> build -> one training step; corpus -> tokenizer -> design -> train -> generate."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from archsmith.cli import app

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_block(heading: str) -> str:
    section = README.read_text().split(heading, 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_build_and_train_what_design_emitted(tmp_path, monkeypatch, capsys):
    from transformers import AutoModelForCausalLM
    from typer.testing import CliRunner

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["design", "--params", "20M", "--out", "runs/demo"])  # small, for CI time
    assert result.exit_code == 0, result.output
    namespace: dict = {}
    exec(compile(readme_block("## Build and train what `design` emitted"), "README.md", "exec"), namespace)
    printed = capsys.readouterr().out
    model = namespace["model"]
    assert f"{model.num_parameters():,} parameters, one step at loss" in printed
    assert namespace["loss"].item() > 0 and model.lm_head.weight.grad is not None
    hf = AutoModelForCausalLM.from_pretrained("runs/demo/weights").eval()
    x = namespace["batch"][:, :16]
    with torch.no_grad():
        assert (hf(x).logits - model(x).logits).abs().max().item() <= 1e-5


def readme_section(heading: str) -> str:
    return README.read_text().split(heading, 1)[1].split("\n## ", 1)[0]


SCRATCH = readme_section("## Train a small LM from scratch")
SINGLE, FSDP = re.findall(r"```bash\n(.*?)```", SCRATCH, re.S)


def shell(line: str, cwd: Path) -> None:
    """One README command line, run by the shell exactly as written."""
    import subprocess

    result = subprocess.run(line, shell=True, cwd=cwd, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (line, result.stderr[-2000:])


def train_losses(run: Path) -> dict[int, float]:
    from archsmith.train.metrics import read_metrics

    return {r["step"]: r["loss"] for r in read_metrics(run) if r["kind"] == "train"}


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """A directory laid out like a checkout (.venv, tests/) where the README's first block has run."""
    import sys

    root = tmp_path_factory.mktemp("readme")
    (root / ".venv").symlink_to(Path(sys.prefix))  # the venv running the tests, where the README expects it
    (root / "tests").symlink_to(README.parent / "tests")
    for line in SINGLE.strip().splitlines():
        shell(line, root)
    return root


def test_train_from_scratch_as_written(scratch, monkeypatch, capsys):
    """corpus -> tokenizer train -> design --params 5M -> train on CPU -> the held-out loss falls -> generate."""
    import json

    import numpy as np

    from archsmith.train.data import TokenFile
    from archsmith.train.metrics import read_metrics

    run = scratch / "runs" / "5m-train"
    summary = json.loads((run / "summary.json").read_text())
    assert 4_000_000 <= summary["model"]["parameters"] <= 6_000_000 and summary["steps"] == 20
    evals = [r["loss"] for r in read_metrics(run) if r["kind"] == "eval"]
    counts = np.bincount(TokenFile.read(run / "data").array()).astype(float)
    p = counts[counts > 0] / counts.sum()
    unigram_entropy = float(-(p * np.log(p)).sum())  # nats/token of the best model that ignores context
    # A real learning check: from ln(vocab) at step 0 to below the unigram entropy (context learned) in 20 steps.
    assert abs(evals[0] - np.log(summary["model"]["vocab_size"])) < 0.5
    assert evals[-1] < unigram_entropy - 0.5 and evals[-1] < evals[0] - 2.0, (evals, unigram_entropy)

    monkeypatch.chdir(scratch)
    exec(compile(re.search(r"```python\n(.*?)```", SCRATCH, re.S).group(1), "README.md", "exec"), {})
    sample = capsys.readouterr().out
    assert sample.startswith("Once upon a time") and len(sample.split()) > 8


@pytest.mark.slow
def test_fsdp_run_as_written(scratch):
    """The same run on two processes with FSDP2 follows the single-process losses (float rounding apart)."""
    shell(FSDP.strip(), scratch)
    one, two = train_losses(scratch / "runs" / "5m-train"), train_losses(scratch / "runs" / "5m-fsdp")
    assert one.keys() == two.keys()
    assert max(abs(one[s] - two[s]) for s in range(1, 6)) <= 1e-5  # before rounding differences grow
    assert max(abs(one[s] - two[s]) for s in one) <= 1e-3


def test_what_you_get_runs_as_written(tmp_path):
    """The first example: a tokenizer, then a 1B design that reads it (nothing is assumed to exist beforehand)."""
    import json
    import sys

    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    (tmp_path / "tests").symlink_to(README.parent / "tests")
    block = re.search(r"```bash\n(.*?)```", readme_section("## What you get"), re.S).group(1)
    for line in block.strip().splitlines():
        shell(line, tmp_path)
    config = json.loads((tmp_path / "runs" / "1b" / "config.json").read_text())
    assert config["vocab_size"] == 768 and (config["bos_token_id"], config["eos_token_id"]) == (1, 2)
    assert (tmp_path / "runs" / "1b" / "tokenizer.json").is_file()


def test_quality_as_written(scratch):
    """The README's quality section, each line run by the shell: the from-scratch model on the local task and held-out
    text, then the colour ViT end to end; results.json says what the table said, and both models learned."""
    import json

    section = readme_section("## Measure quality")
    lines = [line for block in re.findall(r"```bash\n(.*?)```", section, re.S) for line in block.strip().splitlines()]
    assert len(lines) == 3
    if not (scratch / "examples").exists():
        (scratch / "examples").symlink_to(README.parent / "examples")
    for line in lines:
        shell(line, scratch)
    lm = json.loads((scratch / "runs" / "5m-eval" / "results.json").read_text())
    story = lm["results"]["story_end"]
    assert story["samples"] == 60 and story["acc"] > 0.5 and lm["settings"]["engine"] == "network"  # chance: 1/3
    assert lm["results"]["heldout_text"]["bits_per_byte"] < 3
    vision = json.loads((scratch / "runs" / "colours-eval" / "results.json").read_text())
    assert vision["results"]["photos"]["samples"] == 48 and vision["results"]["photos"]["top1"] > 0.8
    assert vision["settings"]["processor"]["size"] == {"height": 32, "width": 32}
    assert (scratch / "runs" / "colours-eval" / "quality.png").stat().st_size > 1000
