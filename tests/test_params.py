"""Parameter counts equal what transformers instantiates, exactly."""

from __future__ import annotations

import json

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from archsmith.estimate import count_params, model_tensors
from archsmith.hfconfig import hf_from_spec, spec_from_hf
from archsmith.spec import ArchitectureSpec, MoESpec
from conftest import DATA, HF_CONFIGS, meta_model, param_count


def test_published_configs_are_sourced():
    sources = yaml.safe_load((DATA / "SOURCES.yaml").read_text())
    assert len(HF_CONFIGS) >= 12
    families = set()
    for path in HF_CONFIGS:
        entry = sources[path.name]
        assert entry["url"].startswith("https://huggingface.co/"), path.name
        families.add(spec_from_hf(json.loads(path.read_text())).model_type)
    assert {"llama", "mistral", "qwen2", "qwen3", "gemma2", "olmo2", "phi3", "gpt2"} <= families


def test_published_config_count_is_exact(published):
    name, cfg = published
    spec = spec_from_hf(cfg)
    counts = count_params(spec)
    model = meta_model(cfg)
    assert counts["total"] == param_count(model), name
    assert counts["tensors"] == len(list(model.parameters())), name
    assert sum(t.numel for t in model_tensors(spec)) == counts["total"]
    assert counts["non_embedding"] + counts["embedding"] + counts["lm_head"] == counts["total"]
    # named_parameters() lists a tied lm_head weight once, under the embedding
    assert sum(p.numel() for n, p in model.named_parameters() if n.startswith("lm_head.")) == counts["lm_head"]
    assert model.get_input_embeddings().weight.numel() == spec.vocab_size * spec.hidden_size


def test_published_config_round_trips(published):
    """config.json -> spec -> our config.json -> transformers: same model, same count."""
    name, cfg = published
    spec = spec_from_hf(cfg)
    emitted = hf_from_spec(spec)
    assert spec_from_hf(emitted) == spec, name
    assert param_count(meta_model(emitted)) == count_params(spec)["total"], name


def test_llama_405b_numbers():
    spec = spec_from_hf(json.loads((DATA / "meta-llama__Llama-3.1-405B.json").read_text()))
    counts = count_params(spec)
    assert counts["embedding"] == counts["lm_head"] == 128256 * 16384
    assert counts["per_layer"] == 2 * 16384 * 16384 + 2 * 16384 * 1024 + 3 * 16384 * 53248 + 2 * 16384


def test_moe_active_params():
    spec = spec_from_hf(json.loads((DATA / "mistralai__Mixtral-8x7B-v0.1.json").read_text()))
    counts = count_params(spec)
    per_expert = 3 * 4096 * 14336
    assert counts["total"] - counts["active"] == 32 * 6 * per_expert  # 6 of 8 experts idle per token


@st.composite
def llama_specs(draw):
    kv = draw(st.sampled_from([1, 2, 4]))
    heads = kv * draw(st.sampled_from([1, 2, 3]))
    head_dim = draw(st.sampled_from([8, 16, 32]))
    family = draw(st.sampled_from(["llama", "qwen2", "qwen3", "mistral", "olmo2", "phi3", "gemma2"]))
    spec = dict(
        hidden_size=draw(st.integers(2, 24)) * 8, num_layers=draw(st.integers(1, 4)), num_heads=heads, num_kv_heads=kv,
        head_dim=head_dim, ffn_size=draw(st.integers(1, 64)) * 4, vocab_size=draw(st.integers(16, 3000)),
        context_length=draw(st.sampled_from([128, 512, 2048])), tie_embeddings=draw(st.booleans()), model_type=family,
    )
    spec["norm_placement"] = {"olmo2": "post", "gemma2": "sandwich"}.get(family, "pre")
    spec["qk_norm"] = {"qwen3": "head", "olmo2": "full"}.get(family, "none")
    spec["ffn_kind"] = "geglu" if family == "gemma2" else "swiglu"
    spec["fused_qkv"] = spec["fused_gate_up"] = family == "phi3"
    if family == "qwen2":
        spec["qkv_bias"] = True
    elif family in ("llama", "qwen3", "olmo2", "gemma2"):
        spec["qkv_bias"] = spec["o_bias"] = draw(st.booleans())
    if family == "llama":
        spec["mlp_bias"] = draw(st.booleans())
    if family in ("mistral", "gemma2") and draw(st.booleans()):
        spec["sliding_window"] = draw(st.integers(16, 256))
    if family in ("llama", "gemma2") and spec["hidden_size"] % heads:
        spec["hidden_size"] = heads * 8 * draw(st.integers(1, 4))  # these transformers configs require heads | hidden
    return ArchitectureSpec(**spec)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(llama_specs())
def test_random_specs_match_transformers(spec):
    """Over many random valid specs: estimator == instantiated transformers model."""
    cfg = hf_from_spec(spec)
    model = meta_model(cfg)
    assert param_count(model) == count_params(spec)["total"]
    assert len(list(model.parameters())) == count_params(spec)["tensors"]


def test_llama_refuses_heads_not_dividing_hidden():
    from archsmith.errors import SpecError

    spec = ArchitectureSpec(hidden_size=16, num_layers=1, num_heads=3, num_kv_heads=1, head_dim=8, ffn_size=8, vocab_size=16)
    with pytest.raises(SpecError) as info:
        hf_from_spec(spec, "llama")
    assert info.value.field == "num_heads"
    assert param_count(meta_model(hf_from_spec(spec, "mistral"))) == count_params(spec)["total"]


def test_moe_spec_round_trip():
    spec = ArchitectureSpec(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, ffn_size=96, vocab_size=300,
                            moe=MoESpec(num_experts=4, top_k=2, expert_ffn_size=32), qk_norm="head", model_type="qwen3_moe",
                            head_dim=16)
    assert param_count(meta_model(hf_from_spec(spec))) == count_params(spec)["total"]
