"""Every family of the registry against transformers: parameters, FLOPs, optimizer state and KV cache
equal a real instance; network.py either matches its logits both ways or refuses it, naming what it lacks.

The tests enumerate `archsmith.families.NAMES`, never a hand list: a family without a tiny config, a
published config or a parity verdict fails here.
"""

from __future__ import annotations

import ast
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
from archsmith.errors import SpecError
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
