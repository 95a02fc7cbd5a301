"""Architecture search (`archsmith search MODEL --space ...`): an Optuna study of the example CNN under a cap."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from archsmith.errors import ArchsmithError
from archsmith.search import search
from archsmith.search.space import parse_space

ROOT = Path(__file__).resolve().parents[1]
MODELS = Path(__file__).resolve().parent / "search_models.py"
SPACE = ROOT / "examples" / "small_cnn.yaml"
CAP = 20_000


def dominated(a: dict, b: dict) -> bool:
    """b dominates a: no worse in loss and parameters, better in one."""
    return (b["heldout_loss"] <= a["heldout_loss"] and b["params"] <= a["params"]
            and (b["heldout_loss"] < a["heldout_loss"] or b["params"] < a["params"]))


def test_a_capped_search_never_trains_over_the_cap_resumes_and_writes_the_front(tmp_path, monkeypatch):
    log = tmp_path / "built.txt"
    monkeypatch.setenv("ARCHSMITH_TEST_BUILD_LOG", str(log))
    out = tmp_path / "study"
    first = search(f"{MODELS}:logged_cnn", SPACE, f"{MODELS}:images", out, trials=8, steps=12, max_params=CAP, progress=False)
    rows = first["trials"]
    assert len(rows) == 8 and first["pruned_by_size"] >= 1 and first["counts"]["complete"] >= 1
    for r in rows:
        assert r["params"] is not None  # every trial was measured before anything else
        run = out / "trials" / str(r["trial"])
        if r["params"] > CAP:
            assert r["state"] == "pruned" and r["steps_trained"] == 0 and "not trained" in r["why"] and not run.exists()
        if r["steps_trained"]:  # trained by archsmith's training loop: its run directory holds the curve
            assert r["params"] <= CAP and (run / "metrics.jsonl").is_file() and (run / "loss.png").is_file()
    built = [line.split() for line in log.read_text().splitlines()]
    assert {d for d, _ in built} == {"meta", "cpu"}  # sized on the meta device, trained on the CPU
    assert all(int(n) <= CAP for d, n in built if d == "cpu")  # nothing over the cap was ever built for training
    done = [r for r in rows if r["state"] == "complete"]
    front = first["pareto_front"]
    assert front and all(not any(dominated(f, r) for r in done) for f in front)
    assert [f["params"] for f in front] == sorted(f["params"] for f in front)
    assert first["recommended"] == min(front, key=lambda r: r["heldout_loss"])
    assert json.loads((out / "search.json").read_text())["pareto_front"] == front
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG" and (out / "study.db").is_file()

    again = search(f"{MODELS}:logged_cnn", SPACE, f"{MODELS}:images", out, trials=11, steps=12, max_params=CAP, progress=False)
    assert len(again["trials"]) == 11 and again["trials"][:8] == rows  # resumed: the first eight kept, three more run
    with pytest.raises(ArchsmithError) as exc:
        search(f"{MODELS}:logged_cnn", SPACE, f"{MODELS}:images", out, trials=12, steps=13, max_params=CAP, progress=False)
    assert exc.value.field == "out" and "steps" in str(exc.value)


def test_the_cli_runs_a_study_and_keeps_hub_options_apart(tmp_path):
    from typer.testing import CliRunner

    from archsmith.cli import app

    args = ["search", f"{MODELS}:logged_cnn", "--space", str(SPACE), "--data", f"{MODELS}:images", "--trials", "3",
            "--steps", "4", "--max-memory", "1GB", "--objective", "flops", "--out", str(tmp_path / "cli")]
    run = CliRunner().invoke(app, [*args, "--json"])
    assert run.exit_code == 0, run.output
    result = json.loads(run.stdout)
    assert len(result["trials"]) == 3 and result["config"]["objective"] == "flops" and result["config"]["max_memory"] == 10**9
    assert all(r["flops"] > 0 for r in result["trials"] if r["state"] == "complete")
    bad = CliRunner().invoke(app, [*args, "--license", "mit"])
    assert bad.exit_code == 2 and "license: is a Hub search option" in bad.output


@pytest.mark.parametrize("space, words", [
    ({"model": {"width": {"int": [64, 8]}}}, "model.width: low 64"),
    ({"model": {"width": {"int": [8, 64], "choice": [1]}}}, "model.width: give exactly one"),
    ({"model": {"lr": {"float": [0, 1], "log": True}}}, "model.lr: log needs low > 0"),
    ({"model": {"width": 8}, "train": {"momentum": 0.9}}, "train: 'momentum' is not a training setting"),
    ({"model": {"1width": 8}}, "is not a Python identifier"),
    ({"train": {"lr": 0.1}}, "model: name at least one"),
    ({"model": {"act": {"choice": []}}}, "model.act: choice must be a list"),
    ({"model": {"w": {"int": [1.5, 4]}}}, "model.w: int bounds"),
    ({"model": {"w": {"float": [0, "inf"]}}}, "model.w: must be a finite number"),
    ([1, 2], "must be a mapping"),
])
def test_bad_spaces_name_the_entry(space, words):
    with pytest.raises(ArchsmithError) as exc:
        parse_space(space)
    assert exc.value.field == "space" and words in str(exc.value)


@pytest.mark.parametrize("data, loss, field, words", [
    ("float_targets", "cross_entropy", "loss", "integer class targets"),
    ("images", "mse", "loss", "mse needs a float target"),
    ("not_pairs", "cross_entropy", "data", "is not an (inputs, target) pair"),
])
def test_data_and_loss_that_do_not_fit_are_named(tmp_path, data, loss, field, words):
    with pytest.raises(ArchsmithError) as exc:
        search(f"{MODELS}:logged_cnn", SPACE, f"{MODELS}:{data}", tmp_path / "s", trials=1, steps=2, loss=loss, progress=False)
    assert exc.value.field == field and words in str(exc.value)


def test_mcp_search_architecture_runs_under_the_code_gate(tmp_path, monkeypatch):
    import shutil

    import anyio
    from mcp import Client

    from archsmith.mcp_server.server import build_server

    shutil.copy(MODELS, tmp_path / "models.py")
    shutil.copy(ROOT / "examples" / "small_cnn.py", tmp_path / "small_cnn.py")
    shutil.copy(SPACE, tmp_path / "space.yaml")
    args = {"model": "models.py:logged_cnn", "space": "space.yaml", "data": "models.py:images", "out_dir": "study",
            "trials": 2, "steps": 3, "max_params": CAP}

    async def main():
        async with Client(build_server(tmp_path)) as client:
            refused = await client.call_tool("search_architecture", args)
            assert refused.is_error and refused.content[0].text.startswith("model: file.py:function runs Python code")
            monkeypatch.setenv("ARCHSMITH_ALLOW_CODE", "1")
            answer = await client.call_tool("search_architecture", args)
            assert not answer.is_error, answer.content
            result = answer.structured_content
            assert result["study"] == "study/study.db" and len(result["trials"]) == 2

    anyio.run(main)


def test_the_readme_block_runs_as_written(tmp_path):
    import os
    import re
    import subprocess
    import sys

    section = (ROOT / "README.md").read_text().split("## Choose components, prove a network, search its design space", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parents[1])
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    done = subprocess.run(["bash", "-ec", block], cwd=tmp_path, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "COLUMNS": "80", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "small_cnn: 0 findings" in done.stdout
    config = json.loads((tmp_path / "runs" / "moe" / "config.json").read_text())
    report = (tmp_path / "runs" / "moe" / "architecture_report.md").read_text()
    assert config["num_experts"] == 8 and config["sliding_window"] == 1024 and "## Component choices" in report
    result = json.loads((tmp_path / "runs" / "cnn-search" / "search.json").read_text())
    assert len(result["trials"]) == 12 and result["pareto_front"]
    assert all(r["params"] <= 20_000 for r in result["trials"] if r["steps_trained"])
    assert max(len(line) for line in done.stdout.splitlines()) <= 80


def test_accuracy_as_the_first_objective(tmp_path):
    """metric="accuracy": each trained trial is scored by held-out top-1 accuracy (computed as a plain count here on
    fixed logits), the first objective is 1 - accuracy and the recommendation has the front's best accuracy."""
    import torch

    from archsmith.search.study import accuracy_of

    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 5.0], [4.0, 0.0, 1.0]])
    target = torch.tensor([0, 1, 0, 2])
    assert accuracy_of(torch.nn.Identity(), [((logits,), target)]) == 0.5  # rows 0 and 1 right
    pixels = torch.randn(2, 3, 4, 4)  # classes second: (N, C, H, W) against (N, H, W)
    assert accuracy_of(torch.nn.Identity(), [((pixels,), pixels.argmax(1))]) == 1.0

    result = search(f"{MODELS}:logged_cnn", SPACE, f"{MODELS}:images", tmp_path / "acc", trials=3, steps=4,
                    metric="accuracy", progress=False)
    done = [r for r in result["trials"] if r["state"] == "complete"]
    assert done and result["config"]["metric"] == "accuracy"
    for r in done:
        assert 0 <= r["task_metric"] <= 1 and r["objective_value"] == pytest.approx(1 - r["task_metric"])
    assert result["recommended"]["task_metric"] == max(r["task_metric"] for r in result["pareto_front"])
    with pytest.raises(ArchsmithError, match="^metric: accuracy needs class targets"):
        search(f"{MODELS}:logged_cnn", SPACE, f"{MODELS}:float_targets", tmp_path / "mse", trials=1, steps=2, loss="mse",
               metric="accuracy", progress=False)
