"""`archsmith prove` on real networks: healthy ones have no findings, and each defective model in
tests/prove_models.py gets the finding it was built to carry, and only what follows from it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from archsmith.cli import app
from archsmith.errors import ArchsmithError
from archsmith.proof import CODES, prove

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "tests" / "prove_models.py"
GNN = ROOT / "examples" / "graph_network.py"


def line_of(text: str) -> str:
    """file:line of the first line of prove_models.py holding `text` (where dynamo reports a break)."""
    lines = MODELS.read_text().splitlines()
    return f"{MODELS.name}:{next(i for i, line in enumerate(lines, 1) if text in line)}"


def codes(report: dict) -> list[tuple[str, str]]:
    return sorted((f["code"], f["module"]) for f in report["findings"])


@pytest.fixture(scope="module")
def decoder_spec(tmp_path_factory) -> Path:
    """A tiny qwen2-layout decoder as an archsmith spec: network.py builds it."""
    from archsmith.hfconfig import spec_from_hf

    cfg = dict(model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=256, max_position_embeddings=64)
    path = tmp_path_factory.mktemp("spec") / "spec.json"
    path.write_text(json.dumps(spec_from_hf(cfg).to_dict()))
    return path


@pytest.fixture(scope="module")
def design_dir(tmp_path_factory) -> Path:
    """What `archsmith design` writes: an HF config.json that transformers builds (its inputs carry use_cache=False)."""
    out = tmp_path_factory.mktemp("design") / "d"
    assert CliRunner().invoke(app, ["design", "--params", "10M", "--out", str(out)]).exit_code == 0
    return out


@pytest.mark.parametrize("name", ["cnn", "vae", "gnn", "unet", "decoder", "design"])
def test_healthy_networks_have_no_findings(name, decoder_spec, design_dir):
    model, extra = {"cnn": (f"{MODELS}:cnn", {}), "vae": (f"{MODELS}:vae", {}), "unet": (f"{MODELS}:unet", {}),
                    "gnn": (f"{GNN}:graph_network", {"inputs": f"{GNN}:graph", "invariance": ["permutation"]}),
                    "decoder": (str(decoder_spec), {}), "design": (str(design_dir), {})}[name]
    report = prove(model, **extra)
    assert report["findings"] == [], report["findings"]
    assert all(b["ok"] for b in report["batches"]) and report["export"]["exportable"]
    assert report["init"]["checked"] and report["init"]["differ"] == 0 and report["compile"]["graph_breaks"] == 0
    assert report["parameters"]["total"] == sum(report["parameters"]["by_component"].values())
    if name == "gnn":  # a graph grown as a disjoint union: per-node outputs grow with it
        assert [b["output_shapes"][0][0] for b in report["batches"]] == [40, 80, 120]


@pytest.mark.parametrize("name,expected,extra", [
    ("unused", [("no_gradient", "spare")], {}),
    ("deep_sigmoid", [("vanishing_gradients", "0")], {}),
    ("deep_linear", [("exploding_activations", "6")], {}),
    ("cancelling", [("bf16_drift", "(root)")], {}),
    ("python_random", [("nondeterministic_init", "linear")], {}),
    ("graph_break", [("graph_break", line_of("torch._dynamo.graph_break()"))], {}),
    ("branch", [("graph_break", line_of("if y.sum() > 0")), ("not_exportable", "(root)")], {}),  # nor can it export
    ("index_term", [("breaks_invariance", "(root)")], {"invariance": ["permutation"]}),
])
def test_each_planted_defect_is_found_and_nothing_else(name, expected, extra):
    report = prove(f"{MODELS}:{name}", **extra)
    assert codes(report) == expected
    assert {f["code"] for f in report["findings"]} <= set(CODES)


def test_cli_prints_findings_at_80_columns_and_writes_the_chart(tmp_path):
    chart = tmp_path / "scale.png"
    result = CliRunner().invoke(app, ["prove", f"{MODELS}:deep_sigmoid", "--chart", str(chart)], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.stderr
    assert "vanishing_gradients at 0:" in result.stdout and all(len(line) <= 80 for line in result.stdout.splitlines())
    assert chart.read_bytes()[:4] == b"\x89PNG"
    done = CliRunner().invoke(app, ["prove", f"{MODELS}:cnn", "--json"])
    assert json.loads(done.stdout)["findings"] == []


def test_bad_input_names_the_field():
    with pytest.raises(ArchsmithError) as info:
        prove(f"{GNN}:graph_network")  # a bare module and no --inputs
    assert info.value.field == "inputs"
    with pytest.raises(ArchsmithError) as info:
        prove(f"{MODELS}:cnn", invariance=["spin"])
    assert info.value.field == "invariance"
    with pytest.raises(ArchsmithError) as info:
        prove(f"{MODELS}:cnn", inputs=f"{MODELS}:vae")  # a (module, inputs) pair is not a batch
    assert info.value.field == "inputs"


def test_mcp_prove_module_answers_for_a_spec_and_refuses_code(decoder_spec, tmp_path, monkeypatch):
    import shutil

    import anyio
    from mcp import Client

    from archsmith.mcp_server.server import build_server

    shutil.copy(decoder_spec, tmp_path / "spec.json")
    monkeypatch.delenv("ARCHSMITH_ALLOW_CODE", raising=False)

    async def call(arguments):
        async with Client(build_server(tmp_path)) as client:
            return await client.call_tool("prove_module", arguments)

    done = anyio.run(call, {"model": "spec.json", "chart_path": "scale.png"})
    assert not done.is_error and done.structured_content["findings"] == [] and (tmp_path / "scale.png").is_file()
    refused = anyio.run(call, {"model": "spec.json", "inputs": "batch.py:fn"})
    assert refused.is_error and refused.content[0].text.startswith("inputs:")
