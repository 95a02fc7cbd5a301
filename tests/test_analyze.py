"""analyze: per-module shapes, parameters, FLOPs, saved activations and latency shares of any nn.Module."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from archsmith.analyze import count_flops, load, run
from archsmith.cli import app
from archsmith.errors import ArchsmithError
from conftest import minilm_path

pytestmark = pytest.mark.usefixtures("one_thread")  # before the module-scoped model fixtures

HERE = Path(__file__).resolve().parent
FACTORIES = HERE / "factories.py"


def rows(result: dict) -> dict[str, dict]:
    return {r["name"]: r for r in result["layers"]}


def test_minilm_exact_parameters_flops_and_attention():
    from transformers import AutoModel

    B, S = 2, 32
    result = run(str(minilm_path()), batch=B, seq=S, repeats=2)
    assert result["totals"]["params"] == 22_713_216
    reference = AutoModel.from_pretrained(str(minilm_path()), attn_implementation="eager").eval()
    assert result["totals"]["params"] == sum(p.numel() for p in reference.parameters())
    ids = torch.randint(0, 30522, (B, S))
    eager_flops = count_flops(reference, kwargs={"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    assert result["totals"]["forward_flops"] == eager_flops  # the CPU flash kernel counted as eager attention's matmuls
    by_name = rows(result)
    h, f = 384, 1536
    assert by_name["encoder.layer.0.intermediate.dense"]["flops"] == 2 * B * S * h * f
    assert by_name["encoder.layer.0.intermediate.dense"]["output_shapes"] == [[B, S, f]]
    assert by_name["encoder.layer.3.attention.self"]["self_flops"] == 2 * 2 * B * S * S * h  # QK^T and PV
    assert by_name["(root)"]["latency_share"] == pytest.approx(1.0)
    assert 0 < by_name["encoder"]["latency_share"] <= 1.0
    assert result["totals"]["activation_bytes"] == by_name["(root)"]["activation_bytes"] > 0
    assert all(r["name"].startswith("encoder.layer.") for r in result["bottlenecks"]["by_flops"])
    assert any("attention" in n and "flash_attention_for_cpu" in n for n in result["notes"])
    meta = run(str(minilm_path()), batch=B, seq=S, meta=True)
    assert meta["device"] == "meta" and meta["totals"]["latency_ms"] is None
    assert meta["totals"]["params"] == 22_713_216 and meta["totals"]["forward_flops"] == eager_flops


def test_cnn_layer_table():
    result = run(f"{FACTORIES}:cnn", repeats=3)
    model, (x,) = __import__("factories").cnn()
    assert result["totals"]["params"] == sum(p.numel() for p in model.parameters())
    by_name = rows(result)
    assert by_name["features.0"]["flops"] == 2 * 4 * 16 * 32 * 32 * 3 * 9  # 2 * B * Cout * H * W * Cin * k^2
    assert by_name["features.4"]["input_shapes"] == [[4, 16, 16, 16]]
    assert by_name["features.3"]["output_shapes"] == [[4, 16, 16, 16]]
    assert result["bottlenecks"]["by_flops"][0]["name"] == "features.4"
    conv = next(t for t in result["bottlenecks"]["by_type"] if t["type"] == "Conv2d")
    assert conv["modules"] == 2 and conv["flops"] == by_name["features.0"]["flops"] + by_name["features.4"]["flops"]
    assert by_name["features.2"]["activation_bytes"] == 4 * 16 * 32 * 32 * 4  # ReLU saves its fp32 output
    assert sum(r["self_latency_share"] for r in result["layers"]) == pytest.approx(1.0, abs=1e-6)
    assert result["totals"]["latency_ms"] > 0
    bigger = run(f"{FACTORIES}:cnn", input_shapes=[(2, 3, 64, 64)], repeats=1)
    assert rows(bigger)["features.0"]["flops"] == 2 * by_name["features.0"]["flops"]  # half the batch, 4x the pixels


def test_message_passing_graph_network():
    result = run(f"{FACTORIES}:graph_net", repeats=3)
    by_name = rows(result)
    assert by_name["layer"]["calls"] == 3  # one shared layer, three rounds
    edges, width = 200, 32
    assert by_name["layer.message.0"]["flops"] == 3 * 2 * edges * 2 * width * width  # three calls
    assert by_name["layer.update"]["flops"] > 0
    assert any("index_add" in n and "layer" in n for n in result["notes"])


def test_custom_and_data_dependent_ops_are_named():
    custom = run(f"{FACTORIES}:wobbly", repeats=1)
    assert any(n.startswith("custom ops:") and "archsmith_test::wobble" in n for n in custom["notes"])
    branchy = run(f"{FACTORIES}:branchy", repeats=1)
    assert any(n.startswith("data-dependent") and "_local_scalar_dense" in n for n in branchy["notes"])


def test_meta_device_for_a_published_config():
    from archsmith.estimate import count_params
    from archsmith.hfconfig import load_spec

    path = HERE.parent / "src" / "data" / "reference_architectures" / "HuggingFaceTB__SmolLM2-135M.json"
    result = run(str(path), seq=64, meta=True)
    assert result["totals"]["params"] == count_params(load_spec(path))["total"]
    assert result["bottlenecks"]["by_time"] == [] and result["bottlenecks"]["by_flops"][0]["name"] == "lm_head"


def test_a_run_too_large_for_this_machine_goes_to_the_meta_device(tmp_path):
    """batch x seq is bounded by memory, not by time: a client cannot make the server allocate what it has not got."""
    import os

    from archsmith.analyze import RUN_MEMORY_FRACTION, _run_bytes

    config = {**json.loads((HERE.parent / "src" / "data" / "reference_architectures" / "HuggingFaceTB__SmolLM2-135M.json").read_text())}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    machine = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    batch, seq = 64, 8192
    need = _run_bytes(134_515_008, config["vocab_size"], config["hidden_size"], config["num_hidden_layers"],
                      config["num_attention_heads"], batch, seq)
    assert need > machine * RUN_MEMORY_FRACTION  # the setting really is too large here
    result = run(str(path), batch=batch, seq=seq)
    assert result["totals"]["latency_ms"] is None and any("analysed on the meta device" in n for n in result["notes"])
    with pytest.raises(ArchsmithError, match=r"^seq: a measured run at batch 64 x seq 8192 needs about"):
        run(str(path), batch=batch, seq=seq, meta=False)
    small = run(str(path), batch=1, seq=8, repeats=1)  # the same model at a small size is measured
    assert small["totals"]["latency_ms"] is not None


def test_cli_json_chart_and_errors(tmp_path):
    chart = tmp_path / "cnn.png"
    done = CliRunner().invoke(app, ["analyze", f"{FACTORIES}:cnn", "--repeats", "2", "--chart", str(chart), "--json"])
    assert done.exit_code == 0, done.stderr
    assert json.loads(done.stdout)["totals"]["params"] == 5514
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for args, field in ((["no/such/dir/x"], "model"), ([f"{FACTORIES}:cnn", "--input-shape", "a,b"], "input_shape"),
                        ([f"{FACTORIES}:nothing"], "model"), ([f"{FACTORIES}:cnn", "--chart", str(chart)], "chart")):
        bad = CliRunner().invoke(app, ["analyze", *args])
        assert bad.exit_code == 2 and bad.stdout == "", args
        assert len(bad.stderr.strip().splitlines()) == 1 and f"{field}:" in bad.stderr, bad.stderr


def test_factories_only_where_code_is_allowed():
    with pytest.raises(ArchsmithError, match="ARCHSMITH_ALLOW_CODE"):
        load(f"{FACTORIES}:cnn", allow_code=False)


def test_mcp_refuses_factories_unless_allowed(tmp_path, monkeypatch):
    import anyio
    from mcp import Client

    from archsmith.mcp_server.server import build_server

    (tmp_path / "factories.py").write_text(FACTORIES.read_text())
    monkeypatch.delenv("ARCHSMITH_ALLOW_CODE", raising=False)

    async def call():
        async with Client(build_server(tmp_path)) as client:
            refused = await client.call_tool("analyze_model", {"model": "factories.py:cnn"})
            monkeypatch.setenv("ARCHSMITH_ALLOW_CODE", "1")
            allowed = await client.call_tool("analyze_model", {"model": "factories.py:cnn", "repeats": 1, "chart_path": "a.png"})
            outside = await client.call_tool("analyze_model", {"model": "../factories.py:cnn"})
            return refused, allowed, outside

    refused, allowed, outside = anyio.run(call)
    assert refused.is_error and "ARCHSMITH_ALLOW_CODE" in refused.content[0].text
    assert not allowed.is_error and allowed.structured_content["totals"]["params"] == 5514
    assert (tmp_path / "a.png").is_file() and allowed.structured_content["chart"] == "a.png"
    assert outside.is_error and "leaves the workspace root" in outside.content[0].text


def test_count_flops_through_modules_kernels_wraps_and_keeps_requires_grad():
    """transformers 5.25 wraps Qwen3-Next's causal convolution in a `kernels` module that gets a view of a weight:
    counting under no_grad must not trip FlopCounterMode's module tracker, and parameters keep requires_grad."""
    from archsmith.estimate import forward_flops
    from archsmith.hfconfig import spec_from_hf
    from conftest import TINY_FAMILIES, tiny_model

    model = tiny_model("qwen3_next")
    spec = spec_from_hf(TINY_FAMILIES["qwen3_next"])
    ids = torch.randint(3, spec.vocab_size, (2, 48), generator=torch.Generator().manual_seed(0))
    assert count_flops(model, kwargs={"input_ids": ids}) == forward_flops(spec, 2, 48, causal=False)["total"]
    assert all(p.requires_grad for p in model.parameters())


def test_piped_analyze_names_its_stage_and_no_profiler_noise(tmp_path):
    """Piped, a spinner says nothing: a stage that runs a while is a plain line (here at once); the profiler's C++
    `USDT: ...` lines never appear."""
    import subprocess
    import sys

    import os

    done = subprocess.run([str(Path(sys.executable).parent / "archsmith"), "analyze", f"{FACTORIES}:cnn", "--json"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "ARCHSMITH_PROGRESS_EVERY_S": "0"})
    assert done.returncode == 0, done.stderr
    assert done.stderr == f"analysing {FACTORIES}:cnn\n" and json.loads(done.stdout)["totals"]["params"] > 0
