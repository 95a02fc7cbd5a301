"""The README's Python example runs as written: design -> build -> one training step -> save -> generate."""

from __future__ import annotations

import re
from pathlib import Path

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
