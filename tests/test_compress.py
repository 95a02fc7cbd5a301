"""compress and export end to end on real models: the README's MiniLM path as written, a tiny decoder, bad input."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from archsmith.compress import text as comp
from archsmith.cli import app
from archsmith.errors import ArchsmithError
from conftest import TINY_FAMILIES, minilm_path

pytestmark = pytest.mark.usefixtures("one_thread")  # before the module-scoped model fixtures

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
ROOT = Path(__file__).resolve().parents[1]
FACTORIES = ROOT / "tests" / "factories.py"
SENTENCES = ["A man is playing a guitar on the street.", "The weather is cold and windy today.", "Stocks rose after the report."]


def readme_bash(heading: str) -> str:
    section = (ROOT / "README.md").read_text().split(heading, 1)[1]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory):
    """The README's analyze -> compress -> distill -> export block, run as written in a fresh directory."""
    work = tmp_path_factory.mktemp("readme")
    (work / ".venv").symlink_to(Path(sys.executable).parents[1])
    done = subprocess.run(["bash", "-ec", readme_bash("## Analyse, compress and export a model")], cwd=work,
                          capture_output=True, text=True, timeout=900, env={**os.environ, "COLUMNS": "100", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return work, done.stdout


def test_readme_analysis_states_the_exact_parameter_count(readme_run):
    work, printed = readme_run
    assert "parameters 22,713,216;" in printed
    assert (work / "runs" / "minilm-analysis.png").read_bytes()[:4] == b"\x89PNG"


def test_readme_student_has_half_the_parameters_and_loads(readme_run):
    from transformers import AutoModel, AutoTokenizer

    work, _ = readme_run
    student_dir = work / "runs" / "minilm-half"
    report = json.loads((student_dir / "compression.json").read_text())
    assert abs(report["achieved_reduction"] - 0.5) <= comp.TOLERANCE
    student = AutoModel.from_pretrained(student_dir).eval()
    assert sum(p.numel() for p in student.parameters()) == report["student_params"] == report["comparison"]["student"]["params"]
    assert report["teacher_params"] == 22_713_216
    kept = report["kept_layers"]
    assert kept[0] == 0 and kept[-1] == 5 and len(kept) < 6
    assert sum(i < 3 for i in kept) >= sum(i >= 3 for i in kept)  # later layers reduced more
    ids = AutoTokenizer.from_pretrained(student_dir)(SENTENCES)["input_ids"]
    assert ids == AutoTokenizer.from_pretrained(minilm_path())(SENTENCES)["input_ids"]  # same tokenizer
    fid = report["fidelity"]["teacher_vs_student"]
    assert fid["pairs"] == 40 * 39 // 2 and 0.3 < fid["spearman"] < 1.0  # related but not yet distilled
    cmp = report["comparison"]
    assert cmp["student"]["forward_flops"] < cmp["teacher"]["forward_flops"]
    assert [(r["batch"], r["seq"]) for r in cmp["latency"]] == list(comp.LATENCY_GRID)
    assert all(r["speedup"] == pytest.approx(r["teacher_ms"] / r["student_ms"], rel=1e-2) for r in cmp["latency"])
    assert (student_dir / "comparison.png").read_bytes()[:4] == b"\x89PNG"


def test_readme_distillation_brings_the_student_closer_to_the_teacher(readme_run):
    from transformers import AutoModel

    work, printed = readme_run
    half, run = work / "runs" / "minilm-half", work / "runs" / "minilm-distilled"
    report = json.loads((run / "distillation.json").read_text())
    before, after = report["fidelity"]["before"], report["fidelity"]["after"]
    assert before == json.loads((half / "compression.json").read_text())["fidelity"]["teacher_vs_student"]  # same measurement
    assert after["spearman"] > before["spearman"] + 0.03 and after["pearson"] > before["pearson"]
    assert report["projection"] and report["layer_map"] == json.loads((half / "compression.json").read_text())["kept_layers"]
    distilled, undistilled = AutoModel.from_pretrained(run / "final"), AutoModel.from_pretrained(half)
    assert sum(p.numel() for p in distilled.parameters()) == sum(p.numel() for p in undistilled.parameters())
    from archsmith.compress import load_student

    for directory, reference in ((run, distilled), (half, undistilled)):  # a distill run and a compress output alike
        loaded = load_student(directory)
        assert type(loaded) is type(reference) and all(torch.equal(a, b) for a, b in zip(loaded.parameters(), reference.parameters()))
    assert any((a - b).abs().max() > 0 for a, b in zip(distilled.parameters(), undistilled.parameters()))
    assert f"{after['spearman']}" in printed and (run / "fidelity.png").read_bytes()[:4] == b"\x89PNG"


def test_readme_onnx_student_matches_pytorch(readme_run):
    import onnxruntime as ort
    from transformers import AutoModel, AutoTokenizer

    work, _ = readme_run
    student_dir, onnx_dir = work / "runs" / "minilm-distilled" / "final", work / "runs" / "minilm-half-onnx"
    report = json.loads((onnx_dir / "export.json").read_text())
    assert [r["ok"] for r in report["validation"]] == [True] * 3
    batch = AutoTokenizer.from_pretrained(student_dir)(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = AutoModel.from_pretrained(student_dir).eval()(**{k: batch[k] for k in ("input_ids", "attention_mask")}).last_hidden_state
    feed = {"input_ids": batch["input_ids"].numpy(), "attention_mask": batch["attention_mask"].numpy()}
    got = torch.from_numpy(ort.InferenceSession(str(onnx_dir / "model.onnx")).run(None, feed)[0])
    valid = batch["attention_mask"].bool()
    assert (got[valid] - expected[valid]).abs().max().item() <= 1e-4
    int8 = torch.from_numpy(ort.InferenceSession(str(onnx_dir / "model.int8.onnx")).run(None, feed)[0])
    cos = torch.nn.functional.cosine_similarity(int8[valid], expected[valid], dim=-1)
    assert cos.min().item() > 0.9 and report["int8"]["min_cosine"] > 0.9 and report["int8"]["size_ratio"] < 0.5
    assert set(report["latency"][0]) >= {"eager_ms", "onnxruntime_ms", "onnxruntime int8_ms", "onnxruntime_speedup"}


@pytest.fixture(scope="module")
def minilm_teacher():
    return comp.load_teacher(minilm_path())


def test_importance_pruning_beats_its_opposite(minilm_teacher):
    teacher = minilm_teacher
    shape = comp.plan(teacher, 0.5)
    calibration = comp.read_lines(None, comp.CALIBRATION, "calibration")[:16]
    held = comp.read_lines(None, comp.HELDOUT, "heldout")[:24]
    scores = comp.importance(teacher, comp.token_batches(teacher, calibration))
    best = comp.build_student(teacher, shape, scores)
    worst = comp.build_student(teacher, shape, {"hidden": -scores["hidden"], "heads": [-h for h in scores["heads"]],
                                                "neurons": [-n for n in scores["neurons"]]})
    assert comp.fidelity(teacher, best, held)["spearman"] > comp.fidelity(teacher, worst, held)["spearman"] + 0.1
    emb = comp.sentence_embeddings(teacher.model, comp.token_batches(teacher, held))
    assert comp.similarity_agreement(emb, emb)["spearman"] == pytest.approx(1.0)


@settings(max_examples=8, deadline=None)
@given(st.floats(0.05, 0.9), st.sampled_from(comp.STRATEGIES), st.booleans())
def test_planned_parameters_equal_the_built_student(minilm_teacher, reduction, strategy, v2):
    teacher = minilm_teacher
    try:
        shape = comp.plan(teacher, reduction, strategy, v2)
    except ArchsmithError as exc:
        assert "nearest feasible reductions" in str(exc)
        return
    assert abs(1 - shape.params / teacher.shape.params - reduction) <= comp.TOLERANCE
    scores = {"hidden": torch.rand(384), "heads": [torch.rand(12) for _ in range(6)], "neurons": [torch.rand(1536) for _ in range(6)]}
    student = comp.build_student(teacher, shape, scores, v2)
    assert sum(p.numel() for p in student.parameters()) == shape.params
    assert student.config.hidden_act == ("gelu_new" if v2 else "gelu")


@given(st.integers(1, 48).flatmap(lambda n: st.tuples(st.just(n), st.integers(1, n))))
def test_layer_selection_keeps_early_layers(case):
    total, keep = case
    chosen = comp.keep_layers(total, keep)
    assert len(chosen) == keep and chosen == sorted(set(chosen)) and 0 <= chosen[0] and chosen[-1] < total
    assert chosen[0] == 0 and (keep == 1 or chosen[-1] == total - 1)
    assert sum(i < total / 2 for i in chosen) >= sum(i >= total / 2 for i in chosen)  # later layers are reduced more


# ---- a tiny decoder through the same path ------------------------------------------------------

@pytest.fixture(scope="module")
def decoder_teacher(tmp_path_factory):
    """A tiny qwen2 LM (archsmith.network, saved as an HF checkpoint) without a tokenizer: random calibration ids."""
    from archsmith.hfconfig import spec_from_hf
    from archsmith.network import CausalLM

    path = tmp_path_factory.mktemp("decoder") / "teacher"
    cfg = dict(model_type="qwen2", hidden_size=128, intermediate_size=352, num_hidden_layers=4, num_attention_heads=8,
               num_key_value_heads=8, vocab_size=512, max_position_embeddings=256, tie_word_embeddings=True)
    CausalLM.from_spec(spec_from_hf(cfg), seed=0).save_pretrained(path)
    return path


def test_decoder_v2_student_is_mqa_initialised_from_the_teacher(decoder_teacher, tmp_path):
    from transformers import AutoModelForCausalLM

    from archsmith.export import export
    from archsmith.network import CausalLM

    report = comp.compress(decoder_teacher, 0.5, tmp_path / "student", v2=True, kv_heads=1, grid=((1, 16),), repeats=2)
    assert report["comparison"]["student"]["kv_heads"] == 1 and abs(report["achieved_reduction"] - 0.5) <= comp.TOLERANCE
    fid = report["fidelity"]["teacher_vs_student"]
    assert fid["kl_to_teacher"] > 0 and fid["teacher_perplexity"] > 1 and fid["tokens"] > 100
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "student").eval()
    ours = CausalLM.from_pretrained(tmp_path / "student").eval()
    from archsmith.compress import load_student

    loaded = load_student(tmp_path / "student")
    assert type(loaded) is type(hf) and all(torch.equal(a, b) for a, b in zip(loaded.parameters(), hf.parameters()))
    x = torch.randint(0, 512, (2, 24))
    with torch.no_grad():
        assert (hf(x).logits - ours(x).logits).abs().max().item() <= 1e-5
    assert hf.config.num_key_value_heads == 1 and sum(p.numel() for p in hf.parameters()) == report["student_params"]
    # the one KV head is the mean of the kept query heads' teacher KV heads (on the kept channels)
    teacher = comp.load_teacher(decoder_teacher)
    shape = comp.plan(teacher, 0.5, v2=True, kv_heads=1)
    scores = comp.importance(teacher, comp.token_batches(teacher, comp.read_lines(None, comp.CALIBRATION, "calibration")))
    channels = torch.sort(torch.topk(scores["hidden"], shape.hidden).indices).values
    heads = torch.sort(torch.topk(scores["heads"][0], shape.heads).indices).values
    d = shape.head_dim
    k = teacher.model.model.layers[0].self_attn.k_proj.weight.detach().view(8, d, 128)
    assert torch.allclose(ours.model.layers[0].self_attn.k_proj.weight, k[heads].mean(0)[:, channels], atol=1e-6)
    exported = export(str(tmp_path / "student"), "onnx", tmp_path / "onnx", repeats=1, latency_grid=((1, 16),))
    assert all(r["ok"] for r in exported["validation"]) and exported["output"] == "logits"
    import onnxruntime as ort

    mask = torch.ones_like(x)
    got = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx")).run(None, {"input_ids": x.numpy(), "attention_mask": mask.numpy()})[0]
    with torch.no_grad():
        assert (torch.from_numpy(got) - hf(x).logits).abs().max().item() <= 1e-4


def test_decoder_v1_keeps_mha_and_shrinks(decoder_teacher, tmp_path):
    report = comp.compress(decoder_teacher, 0.3, tmp_path / "v1", strategy="both", grid=((1, 16),), repeats=1)
    s = report["comparison"]["student"]
    assert s["kv_heads"] == s["heads"] and abs(report["achieved_reduction"] - 0.3) <= comp.TOLERANCE
    assert report["notes"] == ["no tokenizer in the model directory: calibration and fidelity used random token ids"]
    assert sorted(p.name for p in (tmp_path / "v1").iterdir()) == ["comparison.png", "compression.json", "config.json", "model.safetensors"]


@pytest.mark.parametrize("name", comp.DECODERS)
def test_every_decoder_family_compresses_or_is_refused_by_name(name, tmp_path):
    """Each family network.py matches: the student loads in transformers as the same model, or the teacher is refused
    with a one-line reason (MoE, latent attention, norms or blocks outside the Llama layout)."""
    from transformers import AutoModelForCausalLM

    from archsmith.hfconfig import spec_from_hf
    from archsmith.network import CausalLM

    spec = spec_from_hf(TINY_FAMILIES[name])
    CausalLM.from_spec(spec, seed=0).save_pretrained(tmp_path / "teacher")
    try:
        report = comp.compress(tmp_path / "teacher", 0.3, tmp_path / "student", strategy="both", grid=((1, 8),), repeats=1)
    except ArchsmithError as e:
        assert e.field == "model" and ("mixture-of-experts" in str(e) or "Llama-layout" in str(e))
        assert (spec.moe is not None or comp._layout_gaps(spec)) and not (tmp_path / "student").exists()
        return
    assert spec.moe is None and not comp._layout_gaps(spec) and abs(report["achieved_reduction"] - 0.3) <= comp.TOLERANCE
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "student").eval()
    ours = CausalLM.from_pretrained(tmp_path / "student").eval()
    from archsmith.compress import load_student

    loaded = load_student(tmp_path / "student")
    assert type(loaded) is type(hf) and all(torch.equal(a, b) for a, b in zip(loaded.parameters(), hf.parameters()))
    assert sum(p.numel() for p in hf.parameters()) == report["student_params"]
    x = torch.randint(0, spec.vocab_size, (2, 12))
    with torch.no_grad():
        assert (hf(x).logits - ours(x).logits).abs().max().item() <= 1e-5


# ---- bad input: one line, exit 2, nothing written ----------------------------------------------

def one_line_error(args: list[str], field: str) -> str:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and result.stdout == "", (args, result.stdout)
    *stages, error = result.stderr.strip().splitlines()  # stage lines show when a stage before the check ran a while
    assert error.startswith(f"error: {field}:") and not any(s.startswith(("error", "Traceback", " ")) for s in stages), result.stderr
    return error


def test_bad_input_is_refused_and_writes_nothing(tmp_path):
    out = tmp_path / "s"
    line = one_line_error(["compress", str(minilm_path()), "--reduction", "0.5", "--strategy", "depth", "--out", str(out)], "reduction")
    assert "nearest feasible reductions: 0.391" in line and not out.exists()
    one_line_error(["compress", str(minilm_path()), "--reduction", "1.5", "--out", str(out)], "reduction")
    one_line_error(["compress", str(minilm_path()), "--reduction", "0.5", "--strategy", "sideways", "--out", str(out)], "strategy")
    assert not out.exists()
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    one_line_error(["compress", str(minilm_path()), "--reduction", "0.5", "--out", str(taken)], "out")
    one_line_error(["export", f"{FACTORIES}:cnn", "--format", "tflite", "--out", str(out)], "format")
    one_line_error(["export", f"{FACTORIES}:cnn", "--format", "pt2", "--quantize", "int8", "--out", str(out)], "quantize")
    one_line_error(["export", f"{FACTORIES}:cnn", "--format", "onnx", "--out", str(taken)], "out")
    line = one_line_error(["export", f"{FACTORIES}:wobbly", "--format", "onnx", "--out", str(out)], "format")
    assert "archsmith_test::wobble" in line and "factories.py" in line and "line" in line
    line = one_line_error(["export", f"{FACTORIES}:branchy", "--format", "pt2", "--out", str(out)], "model")
    assert "torch.export cannot capture" in line
    assert not out.exists() and [p.name for p in taken.iterdir()] == ["keep.txt"]


def test_exports_of_plain_torch_models(tmp_path):
    from archsmith.export import export

    pt2 = export(f"{FACTORIES}:graph_net", "pt2", tmp_path / "gnn", repeats=1)
    assert all(r["ok"] for r in pt2["validation"]) and (tmp_path / "gnn" / "model.pt2").is_file()
    program = torch.export.load(str(tmp_path / "gnn" / "model.pt2")).module()
    model, inputs = __import__("factories").graph_net()
    assert torch.allclose(program(*inputs), model.eval()(*inputs), atol=1e-5)
    ts = export(f"{FACTORIES}:cnn", "torchscript", tmp_path / "cnn", repeats=1)
    assert any("deprecated" in n for n in ts["notes"]) and all(r["ok"] for r in ts["validation"])
    assert sorted(p.name for p in (tmp_path / "cnn").iterdir()) == ["export.json", "model.torchscript.pt"]


def test_mcp_compress_refuses_an_unreachable_target(tmp_path):
    import anyio
    from mcp import Client

    from archsmith.mcp_server.server import build_server

    shutil.copytree(minilm_path(), tmp_path / "minilm")

    async def call():
        async with Client(build_server(tmp_path)) as client:
            return await client.call_tool("compress_model", {"model": "minilm", "out_dir": "s", "reduction": 0.5, "strategy": "depth"})

    result = anyio.run(call)
    assert result.is_error and "nearest feasible reductions: 0.391" in result.content[0].text and not (tmp_path / "s").exists()
