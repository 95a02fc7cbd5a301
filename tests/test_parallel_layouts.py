"""`archsmith train --tp/--pp`: tensor, pipeline and tensor x FSDP layouts on 4 gloo processes equal one process, step
for step, and a checkpoint written under one layout resumes under another (and on one process)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from test_train import cli, losses, weights

STEPS = ["--steps", 20, "--batch", 8, "--micro-batch", 2, "--seq", 32, "--save-every", 10, "--lr", "3e-3",
         "--eval-samples", 8, "--eval-every", 10, "--no-progress"]


@pytest.fixture(scope="module")
def deep(tmp_path_factory, tiny_lm) -> Path:
    """tiny_lm's model with 4 untied layers: 2 pipeline stages of 2 layers, or 4 interleaved stages of 1."""
    model = tmp_path_factory.mktemp("deep") / "model"
    shutil.copytree(tiny_lm["model"], model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 4, "tie_word_embeddings": False}))
    return model


def train(deep: Path, corpus: Path, out: Path, *layout) -> Path:
    cli("train", deep, "--data", corpus, *STEPS, "--out", out, *layout)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory, deep, tiny_lm) -> dict[str, Path]:
    root, corpus = tmp_path_factory.mktemp("layouts"), tiny_lm["corpus"]
    return {"single": train(deep, corpus, root / "single"),
            "tp2_pp2": train(deep, corpus, root / "tp2_pp2", "--nproc", 4, "--tp", 2, "--pp", 2),
            "tp2_fsdp2": train(deep, corpus, root / "tp2_fsdp2", "--nproc", 4, "--tp", 2, "--strategy", "fsdp")}


def evals(run: Path) -> dict[int, float]:
    from archsmith.train.metrics import read_metrics

    return {r["step"]: r["loss"] for r in read_metrics(run) if r["kind"] == "eval"}


@pytest.mark.parametrize("name, layout", [("tp2_pp2", "tp=2 x pp=2 (1f1b)"), ("tp2_fsdp2", "tp=2 x dp=2")])
def test_layouts_match_one_process(runs, name, layout):
    one, four = runs["single"], runs[name]
    summary = json.loads((four / "summary.json").read_text())
    assert (summary["world"], summary["layout"]) == (4, layout)
    a, b = losses(one), losses(four)
    assert sorted(b) == list(range(1, 21)) and a[20] < a[1] - 1.0  # it learns
    assert max(abs(a[s] - b[s]) for s in a) <= 1e-5, (a, b)
    assert max(abs(evals(one)[s] - evals(four)[s]) for s in (0, 10, 20)) <= 1e-5
    x, y = weights(one / "final"), weights(four / "final")  # every stage's tensors, whole, in one export
    assert x.keys() == y.keys() and max((x[k] - y[k]).abs().max().item() for k in x) <= 1e-4
    assert (four / "checkpoints" / "step_000020" / "dcp").is_dir()


def test_a_checkpoint_resumes_under_another_layout(tmp_path, runs, deep, tiny_lm):
    """tp2 x pp2's step 10 continued as interleaved pp2 x FSDP2; tp2 x FSDP2's on one process: steps 11-20 as before."""
    one = losses(runs["single"])
    for source, target, layout in (("tp2_pp2", "pipe", ["--nproc", 4, "--pp", 2, "--pp-schedule", "interleaved",
                                                         "--strategy", "fsdp"]),
                                   ("tp2_fsdp2", "one", [])):
        out = tmp_path / target
        shutil.copytree(runs[source], out)
        shutil.rmtree(out / "checkpoints" / "step_000020")
        cli("train", deep, "--data", tiny_lm["corpus"], *STEPS, "--out", out, "--resume", *layout)
        again = losses(out)
        assert sorted(again) == list(range(1, 21))
        assert max(abs(one[s] - again[s]) for s in range(11, 21)) <= 1e-5, (target, one, again)


def test_layouts_refuse_what_they_cannot_split(tmp_path, tiny_lm, deep):
    """One line naming the field, before any process starts; nothing written."""
    from typer.testing import CliRunner

    from archsmith.cli import app

    def refused(model, *args, field: str) -> str:
        result = CliRunner().invoke(app, ["train", str(model), "--data", str(tiny_lm["corpus"]), "--out", str(tmp_path / "x"),
                                          "--steps", "2", "--batch", "8", "--seq", "32", *map(str, args)])
        assert result.exit_code == 2 and not (tmp_path / "x").exists(), result.output
        line = result.stderr.strip()
        assert line.startswith(f"error: {field}:") and "\n" not in line, line
        return line

    assert "tied embeddings" in refused(tiny_lm["model"], "--nproc", 2, "--pp", 2, field="pp")
    assert "num_kv_heads = 2" in refused(deep, "--nproc", 4, "--tp", 4, field="tp")
    assert "tp 2 x pp 2" in refused(deep, "--nproc", 6, "--tp", 2, "--pp", 2, field="nproc")
    assert "--strategy fsdp" in refused(deep, "--nproc", 4, "--tp", 2, field="strategy")
    assert "1f1b" in refused(deep, "--nproc", 2, "--pp", 2, "--pp-schedule", "zigzag", field="pp_schedule")
    assert "without --pp" in refused(deep, "--nproc", 2, "--pp", 2, "--document-mask", field="document_mask")
    if not torch.cuda.is_available():
        assert "CUDA" in refused(deep, "--nproc", 2, "--cp", 2, field="cp")
