"""Every family of the registry against transformers: parameters, FLOPs, optimizer state and KV cache
equal a real instance; network.py either matches its logits both ways or refuses it, naming what it lacks.

The tests enumerate `archsmith.families.NAMES`, never a hand list: a family without a tiny config, a
published config or a parity verdict fails here.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import json
import re
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from conftest import DATA, HF_CONFIGS, TINY_CONFIGS, TINY_FAMILIES, TINY_VARIANTS, hf_config, meta_model, param_count, tiny_model
from torch.utils.flop_counter import FlopCounterMode

from archsmith import families
from archsmith.analyze import frozen
from archsmith.errors import ArchsmithError, SpecError
from archsmith.estimate import count_params, estimate, forward_flops, kv_cache_bytes, model_tensors, training_memory
from archsmith.hfconfig import _required, hf_from_spec, spec_from_hf
from archsmith.network import FEATURES, CausalLM, RMSNorm
from archsmith.spec import ArchitectureSpec
from archsmith.weights import CheckpointError

ROOT = Path(__file__).resolve().parents[1]
NAMES = families.NAMES
TOL = 1e-4  # logits parity bound (float32, tiny models)
SPEC = {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "ffn_size": 128, "vocab_size": 256}


def test_every_family_has_a_tiny_config_and_a_published_one():
    assert set(TINY_FAMILIES) == set(NAMES)
    assert {spec_from_hf(TINY_VARIANTS[v]).model_type for v in TINY_VARIANTS} <= set(NAMES)
    published = {spec_from_hf(json.loads(p.read_text())).model_type for p in HF_CONFIGS}
    assert published == set(NAMES), set(NAMES) - published


def shapes(tensors) -> Counter:
    return Counter(tuple(t.shape) for t in tensors)


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_parameters_equal_transformers(name):
    """Every tensor's shape, the tensor count and the total equal the transformers model; config round trips."""
    cfg = TINY_CONFIGS[name]
    spec = spec_from_hf(cfg)
    model = meta_model(cfg)
    assert shapes(model_tensors(spec)) == shapes(model.parameters())
    counts = count_params(spec)
    assert counts["total"] == param_count(model) and counts["tensors"] == len(list(model.parameters()))
    emitted = hf_from_spec(spec)
    assert spec_from_hf(emitted) == spec
    assert param_count(meta_model(emitted)) == counts["total"]


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_forward_flops_and_cache_equal_transformers(name):
    """FLOPs: eager attention and eager experts, as FlopCounterMode counts them on CPU (its SDPA flash kernel
    counts nothing). KV cache: every tensor the transformers cache holds after a prefill."""
    model = tiny_model(name)
    spec = spec_from_hf(TINY_CONFIGS[name])
    sizes = [(2, 48), (1, 80)] if spec.linear_attention else [(2, 48)]  # 80: two 64-token chunks of the delta rule
    for batch, seq in sizes:
        ids = torch.randint(3, spec.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(seq))
        with torch.no_grad(), frozen(model), FlopCounterMode(display=False) as counter:
            model(input_ids=ids)
        assert counter.get_total_flops() == forward_flops(spec, batch, seq, causal=False)["total"], (batch, seq)
    if name in EXPANDED_CACHE:
        return
    ids = torch.randint(3, spec.vocab_size, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        cache = model(input_ids=ids, use_cache=True).past_key_values
        assert kv_cache_bytes(spec, 3, 40, "fp32", after="prefill") == cache_bytes(cache)
        cache = model(input_ids=ids[:, :1], past_key_values=cache, use_cache=True).past_key_values
    assert kv_cache_bytes(spec, 3, 41, "fp32") == cache_bytes(cache)


def cache_bytes(cache) -> int:
    """Bytes of memory a transformers cache holds: the storages under its keys/values, conv and recurrent states
    (a sliding layer's view over a longer tensor holds all of it)."""
    from archsmith.train.memory import resident_bytes

    tensors = []
    for layer in cache.layers:
        tensors += [getattr(layer, "keys", None), getattr(layer, "values", None)]
        for states in (getattr(layer, "conv_states", None), getattr(layer, "recurrent_states", None)):
            tensors += list(states.values()) if isinstance(states, dict) else []
    return resident_bytes(tensors)


def test_sliding_caches_hold_the_whole_prefill_until_the_next_token():
    """After a prefill longer than the window transformers' sliding layers keep views over the full K and V."""
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           vocab_size=100, sliding_window=16, max_position_embeddings=256)
    model = MistralForCausalLM(config).eval()
    spec = spec_from_hf(config.to_dict())
    with torch.no_grad():
        cache = model(input_ids=torch.randint(0, 100, (1, 64)), use_cache=True).past_key_values
        prefill = cache_bytes(cache)
        decode = cache_bytes(model(input_ids=torch.randint(0, 100, (1, 1)), past_key_values=cache, use_cache=True).past_key_values)
    assert kv_cache_bytes(spec, 1, 64, "fp32", after="prefill") == prefill == 4 * decode
    assert kv_cache_bytes(spec, 1, 65, "fp32") == decode
    memory = estimate(spec, batch=1, seq=64, dtype="fp32")["memory"]
    assert memory["kv_cache_after_prefill_bytes"] == prefill and memory["inference"]["kv_cache_bytes"] == prefill


# transformers' Falcon before 5.25 expands K/V to every head before caching in the new decoder architecture; the
# estimate counts the K/V heads the architecture has (what an efficient cache stores, and 5.25 caches).
EXPANDED_CACHE = () if families.release(families.TRANSFORMERS) >= (5, 25) else (
    "falcon-new-architecture", "falcon-one-norm-new-architecture")


OPTIMIZERS = {
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-3),
    "sgd": lambda p: torch.optim.SGD(p, lr=1e-3, momentum=0.9),
    "adafactor": lambda p: torch.optim.Adafactor(p, lr=1e-3),
}


@pytest.mark.parametrize("name", NAMES)
def test_weights_gradients_optimizer_equal_a_real_step(name):
    model = tiny_model(name)
    spec = spec_from_hf(TINY_FAMILIES[name])
    ids = torch.randint(3, spec.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids).loss.backward()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
    for optimizer, factory in OPTIMIZERS.items():
        opt = factory(model.parameters())
        opt.step()
        state = sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values() if torch.is_tensor(v))
        est = training_memory(spec, 2, 16, "fp32", optimizer, master_weights=False)
        assert (est["weights_bytes"], est["gradients_bytes"], est["optimizer_bytes"]) == (weights, grads, state), optimizer


def logits_diff(ours: CausalLM, hf, ids: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    with torch.no_grad():
        a, b = ours(ids, attention_mask=mask).logits, hf(input_ids=ids, attention_mask=mask).logits
    if mask is not None:  # compare real tokens only (left padding)
        keep = mask.bool()
        return (a[keep] - b[keep]).abs().max().item()
    return (a - b).abs().max().item()


def perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every float parameter and persistent buffer moved off its initial value (norm weights of 0 or 1, zero biases
    and router corrections would hide a component that ignores them)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.add_(torch.randn(t.shape, generator=gen) * 0.05)  # 0.05: well above fp32 noise, small next to 0.02-std weights' sums
    return model


def stored_names(path) -> set[str]:
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), framework="pt") as fh:
        return set(fh.keys())


# Settings the tiny configs leave at values that hide a component: tight soft-caps, clipping that binds, YaRN and
# linear rope scaling, the other RoPE layout. Each runs the parity checks of its family.
PARITY_VARIANTS = {
    "gemma2-tight-caps": ("gemma2", {"attn_logit_softcapping": 0.5, "final_logit_softcapping": 0.3}),
    "gemma3_text-linear-rope": ("gemma3_text", {"rope_parameters": {
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}}}),
    "olmo-clip-qkv": ("olmo", {"clip_qkv": 0.05}),
    "qwen3-yarn": ("qwen3", {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16,
                                                 "rope_theta": 10_000.0}}),
    "deepseek_v3-yarn-halves": ("deepseek_v3", {"rope_interleave": False, "rope_parameters": {
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, "mscale": 1.0, "mscale_all_dim": 1.0,
        "beta_fast": 32, "beta_slow": 1, "rope_theta": 10_000.0}}),
    **{name: (name, {}) for name in TINY_VARIANTS if families.get(TINY_VARIANTS[name]["model_type"]).parity == "both"},
}


@pytest.mark.parametrize("name", [*NAMES, *PARITY_VARIANTS])
def test_network_matches_transformers_or_refuses(name, tmp_path):
    """parity both: HF checkpoint -> ours and ours -> transformers, logits within 1e-4 (padded batch too), with
    every attention kernel both sides allow; our checkpoint holds the tensor names transformers writes, and our
    parameter count is the estimator's. Otherwise CausalLM refuses the family from a spec, a config.json and a
    checkpoint, naming what it lacks."""
    from transformers import AutoModelForCausalLM

    key, overrides = PARITY_VARIANTS.get(name, (name, {}))
    cfg = {**TINY_CONFIGS[key], **overrides}
    fam = families.get(cfg["model_type"])
    spec = spec_from_hf(cfg)
    if fam.parity == "none":
        hf_config(cfg).save_pretrained(tmp_path / "hf")  # refused before any weight is read
        lacking = [f for f in families.features(fam, spec.extra) if f not in FEATURES]
        for build in (lambda: CausalLM.from_spec(spec), lambda: CausalLM.from_config(tmp_path / "hf")):
            with pytest.raises(SpecError) as err:
                build()
            assert err.value.field == "model_type" and name in str(err.value)
            assert all(feature in str(err.value) for feature in lacking), (lacking, str(err.value))
        with pytest.raises(CheckpointError, match="model_type"):
            CausalLM.from_pretrained(tmp_path / "hf")
        return
    assert not [f for f in families.features(fam, spec.extra) if f not in FEATURES]
    kernels = [k for k in ("eager", "sdpa") if k in fam.attention_kernels]
    hf = perturbed(tiny_model(key, attn="eager", **overrides), seed=1).eval()
    hf.save_pretrained(tmp_path / "hf")
    ids = torch.randint(3, spec.vocab_size, (2, 40), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    ours = CausalLM.from_pretrained(tmp_path / "hf").eval()
    assert ours.num_parameters() == count_params(spec)["total"]
    assert {n: tuple(p.shape) for n, p in ours.named_parameters()} == {t.name: t.shape for t in model_tensors(spec)}
    for theirs in kernels:
        hf.set_attn_implementation(theirs)
        for mine in kernels:
            ours.set_attention(mine)
            assert logits_diff(ours, hf, ids) <= TOL and logits_diff(ours, hf, ids, mask) <= TOL, (theirs, mine)
    if "sdpa" not in kernels:  # soft-capped scores: SDPA cannot compute them, so it is refused
        with pytest.raises(SpecError, match="attention"):
            ours.set_attention("sdpa")
    if fam.parity == "both":
        mine = perturbed(CausalLM.from_spec(spec, seed=3), seed=4).eval()
        mine.save_pretrained(tmp_path / "ours")
        assert stored_names(tmp_path / "ours") == stored_names(tmp_path / "hf")
        back, info = AutoModelForCausalLM.from_pretrained(tmp_path / "ours", output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
        assert type(back).__name__ == fam.architecture
        assert logits_diff(mine, back.eval(), ids) <= TOL


# ---- parity per layout: every layout switch of every family, honoured (and matched) or refused -----------

WINDOW = 8  # tiny sliding window: the 40-token probe batch outruns it five times


def switched(name: str, switch: str) -> ArchitectureSpec | None:
    """The family's tiny spec with `switch` (a families.LAYOUTS name) turned on as its config would say it; None where
    the switch needs MoE layers and the family has none."""
    fam, spec = families.get(name), spec_from_hf(TINY_FAMILIES[name])
    if switch in ("dense_layers", "shared_experts") and not fam.is_moe:
        return None
    if switch == "window":
        return spec.replace(sliding_window=WINDOW, layer_types=None)
    if switch == "layer_types":
        if len(set(spec.resolved_layer_types)) > 1:  # the tiny config mixes kinds already (period rules, linear attention)
            return spec
        nope = spec.nope_layers or (1,)  # local layers on the NoPE ones where the family ties them (SmolLM3)
        kinds = [("sliding_attention" if i in nope else "full_attention") if fam.layers.rule == "rope" else
                 ("full_attention" if i % 2 else "sliding_attention") for i in range(spec.num_layers)]
        return spec.replace(sliding_window=WINDOW, layer_types=tuple(kinds), nope_layers=spec.nope_layers or
                            (nope if fam.layers.rule == "rope" else ()))
    if switch == "dense_layers":
        return spec.replace(moe=dataclasses.replace(spec.moe, layers=(1,)))
    if switch == "shared_experts":
        moe = spec.moe if spec.moe.shared_experts else dataclasses.replace(
            spec.moe, shared_experts=1, shared_ffn_size=spec.moe.expert_ffn_size,
            shared_expert_gate=fam.fixed.get("moe.shared_expert_gate", False))
        return spec.replace(moe=moe)
    return spec.replace(nope_layers=(1,))


@functools.cache
def covered() -> set[tuple[str, str]]:
    """(family, switch) pairs a config of test_network_matches_transformers_or_refuses turns on already."""
    configs = [TINY_CONFIGS[key] | overrides for key, overrides in PARITY_VARIANTS.values()] + list(TINY_FAMILIES.values())
    return {(spec.model_type, switch) for spec in map(spec_from_hf, configs) for switch in families.layout_switches(spec)}


def off(spec: ArchitectureSpec, switch: str) -> ArchitectureSpec:
    """`spec` with an attention switch turned off (every layer full attention, or every layer with RoPE)."""
    return spec.replace(nope_layers=()) if switch == "nope_layers" else spec.replace(sliding_window=None, layer_types=None)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name,switch", [(n, s) for n in NAMES for s in families.LAYOUTS])
def test_every_layout_switch_is_honoured_and_matched_or_refused(name, switch, tmp_path):
    """A switch the registry says the family's transformers code honours is written, read back, and (parity both)
    computed by network.py as transformers computes it, with logits that change when it is off; any other is refused by
    check_buildable and by the writer, naming its field (the qwen3_moe finding: windows on some layers only)."""
    from archsmith.network import check_buildable

    fam = families.get(name)
    try:
        spec = switched(name, switch)
    except SpecError as exc:  # the spec itself cannot hold it (NoPE layers without RoPE)
        assert switch not in fam.layouts and exc.field == families.LAYOUT_FIELDS[switch]
        return
    if spec is None:
        return
    assert switch in families.layout_switches(spec)
    field = families.LAYOUT_FIELDS[switch]
    if switch not in fam.layouts:
        for build in (check_buildable, hf_from_spec):
            with pytest.raises(SpecError) as err:
                build(spec)
            named = {field} | ({"model_type"} if fam.parity == "none" and build is check_buildable else set())
            assert err.value.field in named, (build.__name__, str(err.value))
        return
    config = hf_from_spec(spec, dtype="float32")
    back = spec_from_hf(config)  # the reader takes it back as transformers' config class keeps it (a window on every layer
    assert back.replace(layer_types=None) == spec.replace(layer_types=None)  # may come back spelled out per layer)
    assert back.resolved_layer_types == spec.resolved_layer_types
    if fam.parity == "none" or (name, switch) in covered():
        return
    from transformers import AutoModelForCausalLM

    hf = perturbed(AutoModelForCausalLM.from_config(hf_config(config), attn_implementation="eager", experts_implementation="eager"),
                   seed=1).eval()
    hf.save_pretrained(tmp_path)
    ours = CausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(3, spec.vocab_size, (2, 40), generator=torch.Generator().manual_seed(2))
    assert logits_diff(ours, hf, ids) <= TOL
    if switch in ("window", "layer_types", "nope_layers"):  # the same weights without it compute something else
        plain = CausalLM.from_spec(off(spec, switch)).eval()
        plain.load_state_dict(ours.state_dict())
        assert logits_diff(plain, hf, ids) > 1e-3


def test_the_registry_records_what_each_family_honours():
    """The qwen3_moe finding, from transformers itself: Qwen3-MoE computes the same logits with and without an alternating
    layer_types (its code reads none), while Qwen3 and Qwen2-MoE honour it; qwen3_moe's row therefore lacks layer_types,
    and network.py refuses to build a qwen3_moe with windows on some layers only, naming the families that honour it."""
    from archsmith.network import check_buildable

    alternate = ["sliding_attention", "full_attention"]
    ids = torch.randint(3, 512, (1, 40), generator=torch.Generator().manual_seed(0))

    def logits(name: str, **changes) -> torch.Tensor:
        with torch.no_grad():
            return tiny_model(name, use_sliding_window=True, sliding_window=WINDOW, **changes)(input_ids=ids).logits

    for name, honours in (("qwen3_moe", False), ("qwen3", True), ("qwen2_moe", True)):
        moved = (logits(name, layer_types=alternate) - logits(name, layer_types=["sliding_attention"] * 2)).abs().max().item()
        assert (moved > 1e-3) == honours == ("layer_types" in families.get(name).layouts), (name, moved)
    windows = spec_from_hf({**TINY_FAMILIES["qwen3_moe"], "use_sliding_window": True, "sliding_window": WINDOW})
    check_buildable(windows)  # one window on every layer: what transformers computes
    with pytest.raises(SpecError) as err:
        check_buildable(windows.replace(layer_types=tuple(alternate)))
    assert err.value.field == "layer_types" and "Qwen3MoeForCausalLM does not honour" in str(err.value)
    assert "qwen2_moe" in str(err.value) and "qwen3_moe" not in families.honouring("layer_types")


# ---- emitted configs are proven (archsmith.parity) -----------------------------------------------

def lying_qwen3_moe(monkeypatch) -> None:
    """The registry row qwen3_moe had before the finding: layer_types read and written, which transformers ignores."""
    row = families.get("qwen3_moe")
    monkeypatch.setitem(families.FAMILIES, "qwen3_moe", dataclasses.replace(
        row, layers=families.LayerRule("window_layers", gate=("use_sliding_window",)), layouts=(*row.layouts, "layer_types"),
        extra={**row.extra, **families.WINDOW_LAYERS}))


ALTERNATING_MOE = {"hidden_size": 64, "num_layers": 4, "num_heads": 4, "num_kv_heads": 2, "ffn_size": 128, "vocab_size": 256,
                   "sliding_window": 512, "layer_types": ["sliding_attention", "full_attention"] * 2,
                   "moe": {"num_experts": 8, "top_k": 2, "expert_ffn_size": 64}}


def test_the_proof_catches_a_registry_row_transformers_contradicts(monkeypatch):
    """With the old qwen3_moe row the writer emits layer_types and network.py builds the alternating windows; the proof
    runs both on a tiny instance and refuses the config, naming layer_types. A family that honours it is proven."""
    from archsmith.parity import prove_spec

    lying_qwen3_moe(monkeypatch)
    spec = ArchitectureSpec.from_dict({**ALTERNATING_MOE, "model_type": "qwen3_moe", "qk_norm": "head"})
    assert hf_from_spec(spec)["layer_types"] == ALTERNATING_MOE["layer_types"]  # written: the finding's config
    with pytest.raises(ArchsmithError) as err:
        prove_spec(spec)
    assert err.value.field == "layer_types" and "computes this qwen3_moe config differently" in str(err.value)
    assert "without layer_types the two agree" in str(err.value)
    honest = spec.replace(model_type="qwen2_moe", qk_norm="none", qkv_bias=True,
                          moe=dataclasses.replace(spec.moe, shared_experts=1, shared_ffn_size=64, shared_expert_gate=True))
    proof = prove_spec(honest)
    assert proof["status"] == "proven" and proof["max_abs_diff"] <= TOL and proof["switches"][0] == "layer_types"
    assert proof["layers"] == 2  # the fewest leading layers that show both kinds of layer


def test_emit_tool_proves_what_it_writes(tmp_path, monkeypatch):
    import anyio
    from mcp import Client

    from archsmith.mcp_server.server import build_server

    lying_qwen3_moe(monkeypatch)
    spec = {**ALTERNATING_MOE, "qk_norm": "head"}

    async def main():
        async with Client(build_server(tmp_path)) as client:
            refused = await client.call_tool("emit_hf_config", {"spec": spec, "model_type": "qwen3_moe", "out_path": "bad.json"})
            assert refused.is_error and "layer_types" in refused.content[0].text and "differently" in refused.content[0].text
            honest = {**spec, "qk_norm": "none", "qkv_bias": True,
                      "moe": {**spec["moe"], "shared_experts": 1, "shared_ffn_size": 64, "shared_expert_gate": True}}
            done = await client.call_tool("emit_hf_config", {"spec": honest, "model_type": "qwen2_moe", "out_path": "good.json"})
            assert not done.is_error, done.content[0].text
            return done.structured_content
    result = anyio.run(main)
    assert not (tmp_path / "bad.json").exists() and (tmp_path / "good.json").exists()
    assert result["proof"]["status"] == "proven" and result["proof"]["max_abs_diff"] <= TOL
    assert result["config"]["layer_types"] == ALTERNATING_MOE["layer_types"]


@pytest.mark.parametrize("path", HF_CONFIGS, ids=lambda p: p.stem)
def test_every_published_layout_has_a_tiny_instance(path):
    """The proof's tiny instance of each published config: the same family and layout switches, the same kinds of layer
    in the same order up to the first of each kind, written as a config its family accepts."""
    from archsmith.parity import instance, pattern_layers, signature, switches

    spec = spec_from_hf(json.loads(path.read_text()))
    small, config = instance(spec)
    assert spec_from_hf(config) == small and small.model_type == spec.model_type and switches(small) == switches(spec)
    assert small.num_layers == pattern_layers(spec) <= spec.num_layers
    assert [signature(small, i) for i in range(small.num_layers)] == [signature(spec, i) for i in range(small.num_layers)]
    assert count_params(small)["total"] < 5_000_000


def test_gemma2_builds_every_component_it_needs():
    """The case that motivated the registry: gemma2 used to build silently without soft-caps, (1 + w) norms and the
    embedding scale, and its logits differed from transformers by 0.67. Now it builds them (parity above), and each
    one changes the logits here, so a model without it could not pass that test."""
    spec = spec_from_hf({**TINY_FAMILIES["gemma2"], "attn_logit_softcapping": 0.5, "final_logit_softcapping": 0.3})
    ids = torch.randint(3, spec.vocab_size, (1, 30), generator=torch.Generator().manual_seed(0))  # 30 > window of 24

    def logits(change=lambda model: None, spec=spec) -> torch.Tensor:
        model = perturbed(CausalLM.from_spec(spec, seed=0), seed=1).eval()  # the same weights every time
        change(model)
        with torch.no_grad():
            return model(ids).logits

    full = logits()
    assert full.abs().max() < 0.3  # the final soft-cap binds
    without = {
        "final soft-cap": logits(lambda m: setattr(m, "final_softcap", None)),
        "attention soft-cap": logits(lambda m: [setattr(layer.self_attn, "softcap", None) for layer in m.model.layers]),
        "embedding scale": logits(lambda m: setattr(m.model, "embed_scale", None)),
        "(1 + w) norms": logits(lambda m: [setattr(n, "offset", 0.0) for n in m.modules() if isinstance(n, RMSNorm)]),
        "sliding layers": logits(spec=spec.replace(sliding_window=None, layer_types=None)),
    }
    for what, other in without.items():
        assert (other - full).abs().max() > 1e-3, what


TOKEN_IDS = {"bos_token_id", "eos_token_id", "pad_token_id"}  # per-checkpoint presets, not family layout


@pytest.mark.parametrize("name", NAMES)
def test_registry_row_agrees_with_transformers(name):
    """Class name, accepted attention kernels and every default the reader relies on equal transformers'."""
    import transformers
    from transformers import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    fam = families.get(name)
    assert MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[name] == fam.architecture
    cls = getattr(transformers, fam.architecture)
    kernels = {"eager"} | {k for k, ok in (("sdpa", cls._supports_sdpa), ("flash_attention_2", cls._supports_flash_attn),
                                           ("flex_attention", cls._supports_flex_attn)) if ok}
    assert set(fam.attention_kernels) == kernels
    config = CONFIG_MAPPING[name]()
    rope = getattr(config, "rope_parameters", None) or {}
    rope = rope.get("full_attention", rope) if fam.rope_per_layer_type else rope
    theirs = {**config.to_dict(), "rope_theta": rope.get("rope_theta"), "partial_rotary_factor": rope.get("partial_rotary_factor", 1.0)}
    read = {k for k in {**families.KEYS, **fam.keys}.values() if k} | {k for s in fam.switches for k in s.keys}
    read |= {"rope_theta", "partial_rotary_factor"} if spec_from_hf(TINY_FAMILIES[name]).position == "rope" else set()
    required = {key for field, key in {**families.KEYS, **fam.keys}.items() if key and _required(field)}
    for key in sorted(read & set(theirs) - TOKEN_IDS):
        ours = fam.default(key)
        if ours is families.MISSING:  # transformers presets a size to one model: config.json must give it
            assert key in required, key
        elif isinstance(ours, families.Same):
            assert theirs[key] in (None, theirs[families.KEYS[ours.field]]), key
        elif key == "head_dim" and ours is None:  # derived: hidden_size // num_attention_heads
            assert theirs[key] in (None, theirs["hidden_size"] // theirs["num_attention_heads"]), key
        elif not isinstance(ours, families.Times):
            assert ours == theirs[key], (key, ours, theirs[key])
    for key, rule in fam.extra.items():
        if key in theirs:
            assert rule.default == theirs[key], (key, rule.default, theirs[key])


# ---- spec.extra carries only the family's own settings (issue: overrides of checked fields) -----

@pytest.mark.parametrize("key,value", [("num_hidden_layers", 1e9), ("vocab_size", -1), ("auto_map", {"AutoModel": "x.Y"}),
                                       ("hidden_size", 8), ("model_type", "bert"), ("rope_theta", 1.0), ("unheard_of", 1)])
def test_extra_cannot_override_checked_fields(key, value):
    with pytest.raises(SpecError) as err:
        ArchitectureSpec.from_dict({**SPEC, "extra": {key: value}})
    assert err.value.field == f"extra.{key}"


def test_extra_is_checked_against_the_family_written():
    gemma2 = spec_from_hf(TINY_FAMILIES["gemma2"]).replace(extra={"attn_logit_softcapping": 30.0})
    with pytest.raises(SpecError) as err:  # llama has no soft-caps: written as llama, the value would be dropped
        hf_from_spec(gemma2.replace(norm_placement="pre", ffn_kind="swiglu", sliding_window=None, layer_types=None), "llama")
    assert err.value.field == "extra.attn_logit_softcapping"
    assert hf_from_spec(gemma2)["attn_logit_softcapping"] == 30.0


def test_extra_values_are_validated_naming_the_key():
    cfg = {**TINY_FAMILIES["gemma2"], "query_pre_attn_scalar": 0}  # used to raise ZeroDivisionError
    with pytest.raises(SpecError) as err:
        spec_from_hf(cfg)
    assert err.value.field == "query_pre_attn_scalar" and "> 0" in str(err.value)
    with pytest.raises(SpecError, match="extra.attn_logit_softcapping"):
        spec_from_hf(TINY_FAMILIES["gemma2"]).replace(extra={"attn_logit_softcapping": "50"})
    ok = spec_from_hf(TINY_FAMILIES["gemma2"]).replace(extra={"attn_logit_softcapping": None})
    assert hf_from_spec(ok)["attn_logit_softcapping"] is None


def test_emit_tool_refuses_extra_overrides(tmp_path):
    import anyio
    from mcp import Client

    from archsmith.mcp_server.server import build_server

    spec = {**SPEC, "extra": {"num_hidden_layers": 1e9}}

    async def main():
        async with Client(build_server(tmp_path)) as client:
            result = await client.call_tool("emit_hf_config", {"spec": spec, "out_path": "config.json"})
            assert result.is_error and "extra.num_hidden_layers" in result.content[0].text
            bad = await client.call_tool("build_model", {"config": {**TINY_FAMILIES["gemma2"], "query_pre_attn_scalar": 0}})
            assert bad.is_error and "query_pre_attn_scalar" in bad.content[0].text
    anyio.run(main)
    assert not (tmp_path / "config.json").exists()


# ---- the activation estimate says where it is not calibrated ---------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_activation_estimate_states_its_calibration(name):
    """Every family's default layout is measured (tests/test_memory.py): its estimate is marked exact, with no note."""
    memory = estimate(spec_from_hf(TINY_FAMILIES[name]), batch=1, seq=16)["memory"]
    assert memory["activations_exact"] is True and memory["activations_note"] is None


def test_unmeasured_layouts_carry_a_note():
    fp32 = estimate(spec_from_hf(TINY_FAMILIES["qwen3_next"]), batch=1, seq=16, dtype="fp32")["memory"]
    assert fp32["activations_exact"] is False and "gated delta-net" in fp32["activations_note"]
    unknown = estimate(spec_from_hf({**TINY_FAMILIES["llama"], "hidden_act": "mish"}), batch=1, seq=16)["memory"]
    assert unknown["activations_exact"] is False and "'mish'" in unknown["activations_note"]


def test_default_attention_is_one_transformers_accepts():
    for name in NAMES:
        used = estimate(spec_from_hf(TINY_FAMILIES[name]), seq=16)["settings"]["attention"]
        assert used in families.get(name).attention_kernels, name
    gemma2 = spec_from_hf(TINY_FAMILIES["gemma2"])
    forced = estimate(gemma2, seq=16, attention="sdpa")["memory"]
    assert not forced["activations_exact"] and "does not run gemma2 with sdpa" in forced["activations_note"]


# ---- published models: counts against what their cards say -----------------------------------

def published_total(text: str) -> float:
    """The first figure of a SOURCES.yaml published_params entry ("671B", "46.7B total, 12.9B active")."""
    number, unit = re.match(r"\s*([\d.]+)\s*([MB])", text).groups()
    return float(number) * {"M": 1e6, "B": 1e9}[unit]


def test_published_totals_match_the_model_cards():
    sources = yaml.safe_load((DATA / "SOURCES.yaml").read_text())
    for path in HF_CONFIGS:
        entry = sources[path.name]
        total = count_params(spec_from_hf(json.loads(path.read_text())))["total"]
        card = published_total(str(entry["published_params"]))
        assert abs(total / card - 1) < 0.05, (path.name, total, card)  # cards round to a size class


# ---- family names live in the registry only ----------------------------------------------------
# Rule: Python code outside src/families.py, tests/ and src/data/ may not name a model_type: no
# identifier with a model_type as an underscore-separated token and no string literal (docstrings
# excepted) with a model_type as a whole word. Docstrings and comments may use family names in prose
# ("the Llama layout", "Gemma 2 style"); Hub repo ids and file names ("meta-llama__Llama-3.1-8B") are
# model names, not model types, and stay allowed.
NOT_A_FAMILY = {("src/hub.py", "gemma"): "the Gemma license id in the Hub license table"}


def code_names(tree: ast.AST) -> list[tuple[int, str, str]]:
    """(line, kind, text) for identifiers and non-docstring strings of a module."""
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    found = []
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            found.append((line, "string", node.value))
        for attr in ("id", "attr", "arg", "name"):
            value = getattr(node, attr, None)
            if isinstance(value, str) and not isinstance(node, ast.alias):
                found.append((line, "identifier", value))
    return found


def test_family_names_only_in_the_registry():
    words = re.compile(r"[^\s,;:()\[\]{}'\"`|*=]+")
    offenders = []
    sources = [p for folder in ("src", "mcp_server", "benchmarks") for p in (ROOT / folder).rglob("*.py")]
    for path in sources:
        rel = path.relative_to(ROOT).as_posix()
        if rel == "src/families.py" or rel.startswith("src/data/"):
            continue
        for line, kind, text in code_names(ast.parse(path.read_text())):
            if kind == "identifier":
                hits = [n for n in NAMES if re.search(rf"(^|_){re.escape(n)}(_|$)", text.lower())]
            else:
                hits = [n for n in NAMES if n in {w.rstrip(".") for w in words.findall(text)}]
            offenders += [f"{rel}:{line}: {n!r} in {text[:60]!r}" for n in hits if (rel, n) not in NOT_A_FAMILY]
    assert not offenders, "\n".join(offenders)


def test_the_grep_rule_catches_what_it_forbids():
    tree = ast.parse('"""A Llama-style block."""\nFAMILIES = ("llama", "gpt2")\ndef _gpt2_from_hf(): return "meta-llama__Llama-3"\n')
    texts = [t for _, _, t in code_names(tree)]
    assert "llama" in texts and "_gpt2_from_hf" in texts and "A Llama-style block." not in texts


def test_a_known_layout_under_another_model_type_is_read_as_that_layout(tmp_path):
    """Kimi-K2's config says model_type kimi_k2 and DeepseekV3ForCausalLM: read as deepseek_v3, with a note."""
    import json
    from importlib import resources

    from typer.testing import CliRunner

    from archsmith.cli import app
    from archsmith.errors import ConfigError

    v3 = json.loads(resources.files("archsmith.data").joinpath("reference_architectures/deepseek-ai__DeepSeek-V3.json").read_text())
    kimi = {**v3, "model_type": "kimi_k2", "n_routed_experts": 384, "num_attention_heads": 64, "num_key_value_heads": 64, "n_group": 1, "topk_group": 1,
            "vocab_size": 163840, "auto_map": {"AutoModelForCausalLM": "modeling_deepseek.DeepseekV3ForCausalLM"}}
    (tmp_path / "config.json").write_text(json.dumps(kimi))
    shown = CliRunner().invoke(app, ["estimate", str(tmp_path / "config.json"), "--json"])
    assert shown.exit_code == 0, shown.output
    result = json.loads(shown.stdout)
    assert "model_type 'kimi_k2' is read as deepseek_v3: its architectures name DeepseekV3ForCausalLM" in result["source"]
    assert result["spec"]["model_type"] == "deepseek_v3"
    same = spec_from_hf({**kimi, "model_type": "deepseek_v3"})
    as_v3 = json.loads(json.dumps({**kimi, "model_type": "deepseek_v3"}))  # transformers edits the dicts it is given
    assert result["params"]["total"] == count_params(same)["total"] == param_count(meta_model(as_v3))
    wrapped = {"model_type": "kimi_k25", "text_config": kimi}  # a multimodal wrapper around it
    assert spec_from_hf(wrapped) == same
    with pytest.raises(ConfigError, match="unsupported model_type 'kimi_k2'"):
        spec_from_hf({**kimi, "architectures": ["SomethingElseForCausalLM"]})
