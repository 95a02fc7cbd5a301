"""Bad specs and bad configs: clear errors that name the field."""

from __future__ import annotations

import json

import pytest

from archsmith import families
from archsmith.errors import ArchsmithError, ConfigError, SpecError
from archsmith.hfconfig import SUPPORTED, hf_from_spec, load_spec, spec_from_hf
from archsmith.scaling import optimal_for_compute, predicted_loss, sizing
from archsmith.spec import ArchitectureSpec
from archsmith.units import parse_bytes, parse_count

BASE = dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, ffn_size=128, vocab_size=100)


@pytest.mark.parametrize("change,field", [
    ({"hidden_size": -1}, "hidden_size"),
    ({"hidden_size": 10**9}, "hidden_size"),
    ({"num_heads": 3}, "num_heads"),  # does not divide 64
    ({"num_kv_heads": 3}, "num_kv_heads"),  # does not divide 4
    ({"num_kv_heads": 8}, "num_kv_heads"),  # more KV heads than heads
    ({"num_layers": 0}, "num_layers"),
    ({"vocab_size": 0}, "vocab_size"),
    ({"ffn_kind": "relu"}, "ffn_kind"),
    ({"norm": "batchnorm"}, "norm"),
    ({"position": "sinusoidal"}, "position"),
    ({"norm_eps": 0}, "norm_eps"),
    ({"eos_token_id": 100}, "eos_token_id"),
    ({"sliding_window": 0}, "sliding_window"),
    ({"layer_types": ["full_attention"]}, "layer_types"),
    ({"moe": {"num_experts": 4, "top_k": 5, "expert_ffn_size": 8}}, "moe.top_k"),
])
def test_bad_spec_names_field(change, field):
    with pytest.raises(SpecError) as info:
        ArchitectureSpec(**{**BASE, **change})
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")


def test_unknown_model_type_lists_supported():
    with pytest.raises(ConfigError) as info:
        spec_from_hf({"model_type": "bert", "hidden_size": 8})
    assert ", ".join(families.NAMES) in str(info.value)
    assert SUPPORTED == families.NAMES


def test_missing_and_malformed_config(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_spec(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        load_spec(tmp_path / "list.json")
    with pytest.raises(ConfigError, match="no such file"):
        load_spec(tmp_path / "nope.json")
    (tmp_path / "partial.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    with pytest.raises(ConfigError) as info:
        load_spec(tmp_path / "partial.json")
    assert info.value.field == "num_attention_heads"


def test_family_refuses_what_it_cannot_express():
    spec = ArchitectureSpec(**BASE, qk_norm="head")
    with pytest.raises(SpecError) as info:
        hf_from_spec(spec, "llama")
    assert info.value.field == "qk_norm"
    assert hf_from_spec(spec, "qwen3")["model_type"] == "qwen3"


def test_transformers_4_and_5_rope_keys_read_the_same():
    old = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 1, "intermediate_size": 128,
           "vocab_size": 100, "rope_theta": 500000.0,
           "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                            "original_max_position_embeddings": 8192}}
    new = {k: v for k, v in old.items() if k not in ("rope_theta", "rope_scaling")}
    new["rope_parameters"] = {**old["rope_scaling"], "rope_theta": 500000.0}
    assert spec_from_hf(old) == spec_from_hf(new)
    assert spec_from_hf(old).rope_scaling["rope_type"] == "llama3"


def test_units():
    assert parse_count("125M", "params") == 125_000_000
    assert parse_count("1.5B", "params") == 1_500_000_000
    assert parse_count("3e21", "compute") == 3 * 10**21
    assert parse_bytes("80GiB", "memory") == 80 * 2**30
    assert parse_bytes("24GB", "memory") == 24 * 10**9
    for bad in ("-5M", "abc", "0"):
        with pytest.raises(ArchsmithError, match="params"):
            parse_count(bad, "params")


def test_chinchilla():
    opt = optimal_for_compute(1e21)
    assert opt["tokens"] == pytest.approx(20 * opt["params"])
    assert 6 * opt["params"] * opt["tokens"] == pytest.approx(1e21)
    for fit in ("hoffmann", "epoch"):
        best = optimal_for_compute(1e22, fit)
        assert 6 * best["params"] * best["tokens"] == pytest.approx(1e22)
        for scale in (0.8, 1.25):  # the closed form is the minimum along the iso-FLOP curve
            n = best["params"] * scale
            assert predicted_loss(n, 1e22 / (6 * n), fit) > best["loss"]
    s = sizing(1e9)
    assert s["chinchilla_tokens"] == 20 * 10**9
    assert s["loss_hoffmann"] > 1.69  # above the irreducible loss E
