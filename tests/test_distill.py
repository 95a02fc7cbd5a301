"""distill on a tiny network.py decoder end to end (compress -> distill -> export), resume, the MCP tool, bad input.

The MiniLM path (analyze -> compress -> distill -> export, as the README writes it) is checked in test_compress.py."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from archsmith.compress import text as comp
from archsmith.cli import app
from archsmith.distill import distill
from archsmith.errors import ArchsmithError

pytestmark = pytest.mark.usefixtures("one_thread")

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
STORIES = Path(__file__).resolve().parent / "data" / "stories.txt"
FAST = dict(steps=80, batch=8, seq=64, lr=2e-3, alpha=1.0, progress=False)  # soft targets only: the teacher is random, not the data


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A tiny Llama-layout teacher with a BPE tokenizer trained on the stories and sharp (scaled) logits, and its
    40%-smaller student from compress."""
    from archsmith.files import write_files
    from archsmith.network import CausalLM
    from archsmith.spec import ArchitectureSpec
    from archsmith.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("distill")
    files, report = train_tokenizer([STORIES], 512, progress=False)
    write_files(root / "teacher", files)
    spec = ArchitectureSpec(hidden_size=64, num_layers=4, num_heads=4, num_kv_heads=2, ffn_size=192,
                            vocab_size=report["vocab_size"], context_length=128, tie_embeddings=False)
    teacher = CausalLM.from_spec(spec, seed=0)
    with torch.no_grad():
        teacher.lm_head.weight.mul_(40)  # a random model's next-token distributions are near uniform: sharpen them
    teacher.save_pretrained(root / "teacher-weights")
    for name in (root / "teacher-weights").iterdir():
        shutil.move(name, root / "teacher" / name.name)
    comp.compress(root / "teacher", 0.4, root / "student", grid=((1, 8),), repeats=1)
    return root / "teacher", root / "student"


def test_a_decoder_student_gets_closer_to_its_teacher_and_exports(pair, tmp_path):
    import onnxruntime as ort
    from transformers import AutoModelForCausalLM

    from archsmith.export import export
    from archsmith.network import CausalLM

    teacher, student = pair
    report = distill(teacher, student, [STORIES], tmp_path / "run", **FAST)
    before, after = report["fidelity"]["before"], report["fidelity"]["after"]
    assert before["kind"] == "next-token KL and perplexity" and before["tokens"] == after["tokens"] > 100
    assert after["kl_to_teacher"] < 0.5 * before["kl_to_teacher"]
    assert before == json.loads((student / "compression.json").read_text())["fidelity"]["teacher_vs_student"]  # the same measurement
    shapes = json.loads((student / "compression.json").read_text())["shape"]
    assert report["layer_map"] == shapes["student"]["layers"]  # each student layer learns from the teacher layer it came from
    assert report["projection"] == (shapes["student"]["hidden"] != shapes["teacher"]["hidden"])
    final = tmp_path / "run" / "final"
    hf = AutoModelForCausalLM.from_pretrained(final).eval()
    ours = CausalLM.from_pretrained(final).eval()
    assert sum(p.numel() for p in hf.parameters()) == sum(p.numel() for p in CausalLM.from_pretrained(student).parameters())
    ids = torch.randint(0, hf.config.vocab_size, (2, 16))
    with torch.no_grad():
        assert (hf(ids).logits - ours(ids).logits).abs().max().item() <= 1e-5
    assert (final / "tokenizer.json").is_file() and (tmp_path / "run" / "fidelity.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((tmp_path / "run" / "distillation.json").read_text())
    assert saved["fidelity"] == report["fidelity"] and saved["training"]["steps"] == FAST["steps"]
    exported = export(str(final), "onnx", tmp_path / "onnx", repeats=1, latency_grid=((1, 16),))
    assert all(r["ok"] for r in exported["validation"])
    got = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx")).run(None, {"input_ids": ids.numpy(), "attention_mask": torch.ones_like(ids).numpy()})[0]
    with torch.no_grad():
        assert (torch.from_numpy(got) - hf(ids).logits).abs().max().item() <= 1e-4


def test_a_resumed_distillation_continues_where_it_stopped(pair, tmp_path):
    from archsmith.train.metrics import read_metrics

    teacher, student = pair
    settings = {**FAST, "steps": 10}
    distill(teacher, student, [STORIES], tmp_path / "run", **settings)
    report = distill(teacher, student, [STORIES], tmp_path / "run", **{**settings, "steps": 16}, resume=True)
    rows = [r["step"] for r in read_metrics(tmp_path / "run") if r["kind"] == "train"]
    assert rows == list(range(1, 17)) and report["training"]["steps"] == 16
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step_000010", "step_000016"]


def test_mcp_distill_model_reports_fidelity(pair, tmp_path):
    import anyio
    from mcp import Client

    from archsmith.mcp_server.server import build_server

    teacher, student = pair
    shutil.copytree(teacher, tmp_path / "t")
    shutil.copytree(student, tmp_path / "s")
    shutil.copy(STORIES, tmp_path / "stories.txt")

    async def call():
        async with Client(build_server(tmp_path)) as client:
            return await client.call_tool("distill_model", {"teacher": "t", "student": str(tmp_path / "s"), "data": ["stories.txt"],
                                                            "out_dir": "run", "steps": 4, "batch": 4, "seq": 32})

    result = anyio.run(call)
    assert not result.is_error, result.content[0].text
    data = result.structured_content
    assert data["final"] == "run/final" and data["training"]["steps"] == 4 and "run/distillation.json" in data["files"]
    assert set(data["fidelity"]["after"]) == set(data["fidelity"]["before"])


@pytest.mark.parametrize("change,field", [
    ({"steps": 0}, "steps"), ({"temperature": 0}, "temperature"), ({"alpha": 1.5}, "alpha"), ({"data": ["missing.txt"]}, "data"),
    ({"attention_weight": 1.0}, "attention_weight"), ({"student": "other-vocab"}, "student"), ({"student": "minilm"}, "student"),
    ({"out": "exists"}, "out"),
])
def test_bad_input_names_its_field_and_writes_nothing(pair, tmp_path, change, field):
    from archsmith.network import CausalLM

    teacher, student = pair
    (tmp_path / "exists").mkdir()
    if change.get("student") == "other-vocab":
        model = CausalLM.from_pretrained(student)
        CausalLM.from_spec(model.spec.replace(vocab_size=model.spec.vocab_size + 64)).save_pretrained(tmp_path / "other-vocab")
    if change.get("student") == "minilm":
        from conftest import minilm_path

        os.symlink(minilm_path(), tmp_path / "minilm")
    args = {"teacher": teacher, "student": student, "data": [STORIES], "out": tmp_path / "run", **FAST}
    args.update({k: (tmp_path / v if k in ("student", "out") else [tmp_path / d for d in v] if k == "data" else v) for k, v in change.items()})
    with pytest.raises(ArchsmithError) as info:
        distill(**args)
    assert info.value.field == field and "\n" not in str(info.value)
    assert not (tmp_path / "run").exists() and sorted(p.name for p in (tmp_path / "exists").iterdir()) == []


def test_cli_error_is_one_line(pair, tmp_path):
    teacher, student = pair
    result = CliRunner().invoke(app, ["distill", str(teacher), str(student), "--data", str(STORIES), "--out", str(tmp_path / "r"),
                                      "--temperature", "0"])
    assert result.exit_code == 2 and result.output.strip().count("\n") == 0 and "temperature" in result.output
    assert not (tmp_path / "r").exists()
