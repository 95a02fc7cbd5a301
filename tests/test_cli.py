"""The CLI contract: design writes three files that transformers accepts; estimate --json; bad input exits 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from archsmith.design import template_for
from archsmith.units import parse_count
from conftest import meta_model, param_count

ARCHSMITH = [sys.executable, "-m", "archsmith.cli"]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*ARCHSMITH, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.mark.parametrize("size", ["100M", "350M", "1B", "3B", "7B"])
def test_design_writes_loadable_config(tmp_path, size):
    from transformers import AutoConfig

    out = tmp_path / "run"
    result = run("design", "--params", size, "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    for name in ("config.json", "architecture_report.md", "capacity_plan.md", "architecture_memory.png", "capacity_memory.png"):
        assert (out / name).is_file(), name
    assert len(summary["candidates"]) >= 2
    rec = next(c for c in summary["candidates"] if c["name"] == summary["recommended"])
    cfg = json.loads((out / "config.json").read_text())
    AutoConfig.from_pretrained(out)  # transformers accepts the file
    assert param_count(meta_model(cfg)) == rec["params"]
    low, high = template_for(parse_count(size, "params"))["range"]
    assert low <= rec["params"] < high
    assert f"{rec['params']:,}" in (out / "architecture_report.md").read_text()
    assert "capacity_memory.png" in (out / "capacity_plan.md").read_text()
    assert (out / "architecture_memory.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_estimate_json_contract(tmp_path):
    cfg = Path(__file__).resolve().parents[1] / "src" / "data" / "reference_architectures" / "meta-llama__Llama-3.2-1B.json"
    result = run("estimate", str(cfg), "--batch", "2", "--seq", "1024", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["params"]["total"] == 1_235_814_400
    for key in ("total", "embedding", "per_layer", "breakdown"):
        assert key in data["params"]
    assert set(data["flops"]) >= {"forward_per_token", "training_per_token"}
    for key in ("weights_bytes", "gradients_bytes", "optimizer_bytes", "activations_bytes", "kv_cache_bytes",
                "training_total_bytes", "inference_total_bytes"):
        assert isinstance(data["memory"][key], int) and data["memory"][key] > 0, key
    assert data["memory"]["weights_bytes"] == 2 * 1_235_814_400
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(cfg.read_text())
    assert json.loads(run("estimate", str(model_dir), "--json").stdout)["params"]["total"] == 1_235_814_400


@pytest.mark.parametrize("args,field", [
    (["design", "--params", "-5M"], "params"),
    (["design", "--params", "1B", "--gpu", "tpu9"], "gpu"),
    (["design", "--params", "1B", "--mfu", "1.5"], "mfu"),
    (["design", "--params", "10T"], "params"),
    (["design", "--params", "1B", "--compute", "1e21"], "params"),
    (["design", "--params", "1B", "--context", "10"], "context"),
    (["design", "--params", "1B", "--tokenizer", "NOPE"], "tokenizer"),
    (["design", "--params", "1M", "--vocab", "73089"], "params"),  # found by the MCP fuzzing: no shape fits
    (["estimate", "missing.json"], "config"),
    (["estimate", "BAD", "--batch", "0"], "batch"),
    (["estimate", "BAD", "--dtype", "fp12"], "dtype"),
    (["estimate", "BAD", "--optimizer", "lion"], "optimizer"),
])
def test_bad_input_exits_2_and_writes_nothing(tmp_path, args, field):
    (tmp_path / "BAD").mkdir()
    (tmp_path / "BAD" / "config.json").write_text((Path(__file__).resolve().parents[1] / "src" / "data" / "reference_architectures" / "openai-community__gpt2.json").read_text())
    out = tmp_path / "out"
    extra = ["--out", str(out)] if args[0] == "design" else []
    result = run(*args, *extra, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert f"{field}:" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2
    assert not out.exists()


def test_out_exists_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("{}")
    result = run("design", "--params", "100M", "--out", str(out))
    assert result.returncode == 2 and "--overwrite" in result.stderr
    assert (out / "config.json").read_text() == "{}"
    result = run("design", "--params", "100M", "--out", str(out), "--overwrite")
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"
    assert not [p for p in tmp_path.rglob(".*")], "temporary files left behind"


def test_compute_and_memory_budgets(tmp_path):
    by_compute = json.loads(run("design", "--compute", "1e21", "--out", str(tmp_path / "c"), "--json").stdout)
    params = by_compute["target"]["params"]
    assert by_compute["target"]["by"] == "compute"
    assert abs(6 * params * 20 * params / 1e21 - 1) < 0.01
    by_memory = json.loads(run("design", "--memory", "24GB", "--gpus", "1", "--out", str(tmp_path / "m"), "--json").stdout)
    rec = next(c for c in by_memory["candidates"] if c["name"] == by_memory["recommended"])
    assert rec["memory_per_gpu_bytes"] <= 24e9


def test_help_does_not_import_torch():
    code = "import sys; from archsmith.cli import app; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_a_mistyped_local_path_is_a_missing_path_not_a_hub_failure(tmp_path):
    (tmp_path / "runs").mkdir()
    typo = run("estimate", "runs/nope", cwd=tmp_path)
    assert typo.returncode == 2 and typo.stderr.strip() == "error: config: no such file: runs/nope"
    json_typo = run("estimate", "nope/config.json", cwd=tmp_path)
    assert json_typo.returncode == 2 and "no such file: nope/config.json" in json_typo.stderr and "Hub" not in json_typo.stderr
