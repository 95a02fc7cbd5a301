"""`archsmith extend` round-trips through transformers: layers chosen, vocabulary grown, context lengthened."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from archsmith.cli import app
from archsmith.errors import ArchsmithError
from archsmith.estimate import count_params
from archsmith.extend import extend
from archsmith.hfconfig import spec_from_hf
from archsmith.network import CausalLM

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def teacher(request, tmp_path_factory):
    cfg = dict(model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=256, max_position_embeddings=128, tie_word_embeddings=request.param)
    path = tmp_path_factory.mktemp("teacher") / "t"
    CausalLM.from_spec(spec_from_hf(cfg), seed=0).save_pretrained(path)
    return path


def logits(path, ids):
    with torch.no_grad():
        return AutoModelForCausalLM.from_pretrained(path).eval()(ids).logits


def test_vocabulary_grows_with_mean_rows_and_existing_logits_unchanged(teacher, tmp_path):
    report = extend(teacher, tmp_path / "v", vocab=300)
    old, new = CausalLM.from_pretrained(teacher), CausalLM.from_pretrained(tmp_path / "v")
    rows = (300 - 256) * 64 * (1 if old.spec.tie_embeddings else 2)
    assert report["params_delta"] == rows == count_params(new.spec)["total"] - count_params(old.spec)["total"]
    embed = new.model.embed_tokens.weight
    assert torch.equal(embed[:256], old.model.embed_tokens.weight)
    assert torch.allclose(embed[256:], old.model.embed_tokens.weight.mean(0).expand(44, -1))
    ids = torch.randint(0, 256, (2, 24))
    assert report["max_logit_diff_existing_tokens"] == 0.0
    assert (logits(tmp_path / "v", ids)[..., :256] - logits(teacher, ids)).abs().max().item() <= 1e-5  # transformers agrees


def test_layers_are_dropped_and_repeated_by_index(teacher, tmp_path):
    report = extend(teacher, tmp_path / "l", layers=[0, 2, 3, 3])
    old, new = CausalLM.from_pretrained(teacher), CausalLM.from_pretrained(tmp_path / "l")
    assert new.spec.num_layers == 4 and report["params_delta"] == 0
    assert torch.equal(new.model.layers[1].mlp.up_proj.weight, old.model.layers[2].mlp.up_proj.weight)
    assert torch.equal(new.model.layers[3].self_attn.q_proj.weight, old.model.layers[3].self_attn.q_proj.weight)
    fewer = extend(teacher, tmp_path / "f", layers=[0, 3])
    per_layer = (count_params(old.spec)["total"] - count_params(CausalLM.from_pretrained(tmp_path / "f").spec)["total"]) // 2
    assert fewer["params_delta"] == -2 * per_layer < 0
    ids = torch.randint(0, 256, (1, 16))
    with torch.no_grad():
        assert (logits(tmp_path / "f", ids) - new.__class__.from_pretrained(tmp_path / "f")(ids).logits).abs().max() <= 1e-5


@pytest.mark.parametrize("scaling", ["linear", "dynamic", "yarn"])
def test_context_lengthens_with_rope_scaling_that_transformers_reads(teacher, tmp_path, scaling):
    report = extend(teacher, tmp_path / "c", context=512, rope_scaling=scaling)
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    assert config["max_position_embeddings"] == 512 and report["params_delta"] == 0
    rope = config.get("rope_parameters") or config.get("rope_scaling")
    assert rope["rope_type"] == scaling and rope["factor"] == 4.0
    ids = torch.randint(0, 256, (1, 300))  # beyond the teacher's 128 positions
    with torch.no_grad():
        ours = CausalLM.from_pretrained(tmp_path / "c")(ids).logits
    assert (logits(tmp_path / "c", ids) - ours).abs().max().item() <= 1e-4


def test_bad_input_names_the_field_and_writes_nothing(teacher, tmp_path):
    for kwargs, field in [({}, "layers"), ({"layers": [0, 9]}, "layers"), ({"vocab": 0}, "vocab"),
                          ({"context": 64, "rope_scaling": "yarn"}, "context"), ({"context": 512}, "rope_scaling"),
                          ({"context": 512, "rope_scaling": "ntk"}, "rope_scaling"), ({"rope_scaling": "yarn"}, "rope_scaling")]:
        with pytest.raises(ArchsmithError) as info:
            extend(teacher, tmp_path / "x", **kwargs)
        assert info.value.field == field, (kwargs, info.value)
    result = CliRunner().invoke(app, ["extend", str(teacher), "--out", str(tmp_path / "x"), "--layers", "0,a"])
    assert result.exit_code == 2 and result.stderr.strip().splitlines()[-1].startswith("error: layers:")
    assert not (tmp_path / "x").exists()


def test_cli_and_mcp_extend(teacher, tmp_path):
    import shutil

    import anyio
    from mcp import Client

    from archsmith.mcp_server.server import build_server

    done = CliRunner().invoke(app, ["extend", str(teacher), "--out", str(tmp_path / "cli"), "--vocab", "260", "--json"])
    assert done.exit_code == 0 and json.loads(done.stdout)["vocab_size"] == 260
    shutil.copytree(teacher, tmp_path / "base")

    async def call():
        async with Client(build_server(tmp_path)) as client:
            return await client.call_tool("extend_model", {"model": "base", "out_dir": "deeper", "layers": [0, 1, 2, 3, 3, 3]})

    result = anyio.run(call)
    assert not result.is_error and result.structured_content["params_delta"] > 0
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "deeper").config.num_hidden_layers == 6


def test_moe_layers_are_upcycled_from_the_dense_mlp_with_the_output_unchanged(teacher, tmp_path):
    report = extend(teacher, tmp_path / "m", moe="4:2", moe_layers="upper")
    old, new = CausalLM.from_pretrained(teacher), CausalLM.from_pretrained(tmp_path / "m")
    assert new.spec.moe.layers == (2, 3) and new.spec.moe.expert_ffn_size == old.spec.ffn_size and new.spec.qkv_bias
    experts = new.model.layers[3].mlp.experts
    dense = old.model.layers[3].mlp
    assert all(torch.equal(experts.down_proj[e], dense.down_proj.weight) for e in range(4))
    assert torch.equal(experts.gate_up_proj[1], torch.cat((dense.gate_proj.weight, dense.up_proj.weight)))
    assert report["params_delta"] == count_params(new.spec)["total"] - count_params(old.spec)["total"] > 0
    assert report["active_params_after"] < report["params_after"]
    assert report["max_logit_diff_existing_tokens"] <= 1e-5  # identical experts, weights summing to one: the dense output
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert sum(p.numel() for p in hf.parameters()) == report["params_after"]
    ids = torch.randint(0, 256, (2, 24))
    assert (logits(tmp_path / "m", ids) - logits(teacher, ids)).abs().max().item() <= 1e-4  # transformers agrees


def test_sliding_windows_keep_the_weights_and_the_logits_within_the_window(tmp_path):
    cfg = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=256, max_position_embeddings=128)
    CausalLM.from_spec(spec_from_hf(cfg), seed=0).save_pretrained(tmp_path / "llama")
    report = extend(tmp_path / "llama", tmp_path / "w", window=32, window_layers="alternate")
    assert report["layer_types"] == ["sliding_attention", "full_attention"] * 2 and report["sliding_window"] == 32
    assert report["model_type"] != "llama" and report["max_logit_diff_existing_tokens"] <= 1e-5
    assert report["adopted"] == {"qkv_bias": "True"}  # the family with windows has q/k/v biases: they start at zero
    assert report["params_delta"] == 4 * (64 + 2 * 32)  # four layers of q, k and v biases, nothing else
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "w")
    assert hf.config.layer_types == report["layer_types"] and hf.config.sliding_window == 32
    ids = torch.randint(0, 256, (1, 32))
    assert (logits(tmp_path / "w", ids) - logits(tmp_path / "llama", ids)).abs().max().item() <= 1e-4
    with pytest.raises(ArchsmithError) as exc:
        extend(tmp_path / "w", tmp_path / "again", window=256)
    assert exc.value.field == "window"


def test_a_family_that_computes_more_than_its_sizes_is_not_moved_silently(tmp_path):
    from conftest import tiny_model

    tiny_model("gemma2").save_pretrained(tmp_path / "gemma2")  # (1 + w) norms, embedding scale, soft-caps
    with pytest.raises(ArchsmithError) as exc:
        extend(tmp_path / "gemma2", tmp_path / "moe", moe="4:2")
    assert exc.value.field == "moe" and "would drop what gemma2 computes" in str(exc.value)
    assert not (tmp_path / "moe").exists()
