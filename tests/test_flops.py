"""Matmul FLOPs equal what torch.utils.flop_counter counts on real tiny models (every family: test_families).

FlopCounterMode counts matmuls (mm, addmm, bmm, baddbmm, SDPA); it does not count norms,
activations, softmax, RoPE, residual adds, the embedding lookup or the loss, and neither do
we. On CPU the fused SDPA kernel is not counted, so the models run eager attention, which
multiplies the full seq x seq score matrix: the estimator's no-causal-halving figure.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from archsmith.estimate import attention_pairs, flops, forward_flops
from archsmith.hfconfig import spec_from_hf
from conftest import TINY_FAMILIES, tiny_model


def test_training_flops_match_counter():
    """Backward costs two matmuls per forward matmul: a training step is 3x the forward."""
    model = tiny_model("llama")
    spec = spec_from_hf(TINY_FAMILIES["llama"])
    ids = torch.randint(3, spec.vocab_size, (2, 32))
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids, labels=ids).loss.backward()
    assert counter.get_total_flops() == 3 * forward_flops(spec, 2, 32, causal=False)["total"]


def test_causal_halving_and_window():
    assert attention_pairs(4, causal=False, window=None) == 16
    assert attention_pairs(4, causal=True, window=None) == 10  # 1 + 2 + 3 + 4
    assert attention_pairs(6, causal=True, window=2) == 1 + 2 * 5
    spec = spec_from_hf(TINY_FAMILIES["llama"])
    f = flops(spec, seq=128)
    assert f["attention_causal_halving"] is True
    assert f["forward_per_token"] < f["forward_per_token_no_causal_halving"]
    assert f["training_per_token"] == 3 * f["forward_per_token"]
    assert flops(spec, 128, checkpointing=True)["training_per_token"] > f["training_per_token"]
