"""`archsmith.peak` against the step it models: the real Trainer's step on CPU, measured by torch.profiler's memory events.

The CPU runs the GPU's recipe (bf16 autocast over fp32 weights, fp32 loss, fused AdamW, clipping) and the fp32 one;
the cases put the peak in each phase of the step. The GPU figures are benchmarks/bench_memory_gpu.py's.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import numpy as np
import pytest

from archsmith import estimate as est
from archsmith import peak
from archsmith.errors import ArchsmithError
from archsmith.spec import ArchitectureSpec
from archsmith.train.loop import TrainConfig, Trainer
from archsmith.train.run import Plan, RunArgs, causal_lm_objective, check_memory, planned_peak

BASE = ArchitectureSpec(hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=1, ffn_size=384, vocab_size=4096,
                        context_length=1024, head_dim=32)
SMALL_VOCAB = {"vocab_size": 256, "batch": 2, "seq": 512}
PLAIN_MLP = {"ffn_kind": "gelu", "activation": "gelu", "ffn_size": 512}
WIDE = {"hidden_size": 512, "ffn_size": 1408, "num_heads": 8, "num_kv_heads": 4, "head_dim": 64, "num_layers": 4, "vocab_size": 4096}
# (spec changes with batch, seq, checkpointing, precision; the phase the model puts the peak in). bf16 matmuls are
# slow on CPU: the bf16 cases are small; the step's parts are linear in its sizes.
CASES = {
    "logit-bound bf16": ({}, "forward"),
    "logit-bound fp32": ({"precision": "fp32"}, "forward"),
    "activation-bound bf16": (SMALL_VOCAB, "forward"),
    "checkpointed bf16": ({**SMALL_VOCAB, "checkpointing": True}, "layer backward"),
    "checkpointed fp32": ({**SMALL_VOCAB, "checkpointing": True, "precision": "fp32"}, "layer backward"),
    "plain MLP, layernorm, learned positions": ({**SMALL_VOCAB, **PLAIN_MLP, "norm": "layernorm", "position": "learned",
                                                  "checkpointing": True}, "layer backward"),
    "untied, one short sequence": ({**WIDE, "tie_embeddings": False, "batch": 1, "seq": 64}, "embedding backward"),
    "wider, MHA, fp32": ({**WIDE, "num_kv_heads": 8, "vocab_size": 512, "batch": 2, "seq": 1024, "precision": "fp32"},
                         "layer backward"),
}


def measured(spec: ArchitectureSpec, batch: int, seq: int, checkpointing: bool, precision: str, tmp_path) -> int:
    """Peak bytes of the Trainer's second step of `archsmith.network.CausalLM` on CPU."""
    from archsmith.network import CausalLM
    from archsmith.files import HeldDir
    from archsmith.train.data import lm_batch
    from archsmith.train.memory import measured_step

    rng = np.random.default_rng(0)
    windows = [rng.integers(0, spec.vocab_size, seq) for _ in range(4 * batch)]
    trainer = Trainer(CausalLM.from_spec(spec, seed=0), causal_lm_objective, windows, partial(lm_batch, pad_id=0, eos_id=1),
                      tmp_path, TrainConfig(steps=4, global_batch=batch, precision=precision, checkpointing=checkpointing,
                                            progress=False))
    with HeldDir(tmp_path, "out") as trainer.run:
        trainer._prepare()
        assert trainer.optimizer.defaults["fused"]  # the recipe the peak models, on CPU as on CUDA
        return measured_step(trainer)["peak_bytes"]


@pytest.mark.parametrize("name", CASES)
def test_the_step_peak_is_the_measured_peak(name, tmp_path):
    changes, phase = CASES[name]
    changes = dict(changes)
    batch, seq = changes.pop("batch", 2), changes.pop("seq", 256)
    checkpointing, precision = changes.pop("checkpointing", False), changes.pop("precision", "bf16")
    spec = dataclasses.replace(BASE, **changes)
    plan = peak.training_peak(spec, batch, seq, precision, checkpointing)
    real = measured(spec, batch, seq, checkpointing, precision, tmp_path)
    assert plan["at"] == phase and plan["exact"]
    assert abs(plan["peak_bytes"] / real - 1) < 0.03, (plan["peak_bytes"], real, plan["phases"])
    if not checkpointing and precision == "bf16":  # the sum of parts (pure-bf16 transformers) misses what autocast keeps
        parts = est.training_memory(spec, batch, seq, "bf16", checkpointing=checkpointing)["total_bytes"]
        assert abs(parts / real - 1) > abs(plan["peak_bytes"] / real - 1)


def test_estimate_reports_the_peak_and_says_where_it_is_not_held():
    dense = est.estimate(BASE, batch=4, seq=512)["memory"]
    assert dense["training_peak_bytes"] == peak.training_peak(BASE, 4, 512)["peak_bytes"] and dense["peak_exact"]
    assert dense["training_reserved_bytes"] == int(dense["training_peak_bytes"] * (1 + peak.ALLOCATOR_HEADROOM))
    assert "fused AdamW" in dense["training_peak"]["recipe"] and dense["peak_note"] is None
    compiled = est.estimate(BASE, batch=4, seq=512, compile=True)
    assert not compiled["memory"]["peak_exact"] and "torch.compile" in compiled["memory"]["peak_note"]
    assert compiled["settings"]["compile"] is True
    from archsmith.spec import MoESpec

    moe = dataclasses.replace(BASE, model_type="qwen3_moe", moe=MoESpec(num_experts=8, top_k=2, expert_ffn_size=256))
    assert "MoE" in est.estimate(moe, batch=1, seq=64)["memory"]["peak_note"]


def plan_of(spec: ArchitectureSpec, **settings) -> Plan:
    args = RunArgs(model="m", data=["d"], out="o", **settings)
    return Plan(args=args, config_path=None, weights=False, spec=spec, tokenizer=None, files=[], seq=settings.get("seq", 512))


def test_train_refuses_a_micro_batch_that_does_not_fit_and_names_one_that_does():
    plan = plan_of(BASE, batch=8, seq=512)
    whole = planned_peak(plan, 1)
    assert "autocast" in whole["recipe"] and "fp32 throughout" in check_memory(plan, 1, None)["recipe"]  # CPU: fp32, unchecked
    assert check_memory(plan, 1, whole["reserved_bytes"]) == whole
    four = planned_peak(plan, 1, micro_batch=4)
    with pytest.raises(ArchsmithError) as info:
        check_memory(plan, 1, four["reserved_bytes"])
    message = str(info.value)
    assert info.value.field == "micro_batch" and "\n" not in message
    assert message.endswith("--micro-batch 4 fits") and "micro-batch 8 x 512 tokens" in message
    assert planned_peak(plan, 1, micro_batch=8)["reserved_bytes"] > four["reserved_bytes"]
    one = plan_of(BASE, batch=1, seq=512)
    with pytest.raises(ArchsmithError, match="--checkpointing fits$"):
        check_memory(one, 1, planned_peak(one, 1, checkpointing=True)["reserved_bytes"])
    with pytest.raises(ArchsmithError, match="no smaller micro-batch fits one device"):
        check_memory(one, 1, 2**20)
    assert check_memory(plan_of(BASE, batch=8, seq=512, strategy="fsdp"), 2, 2**20)["peak_bytes"] > 2**20  # sharded: not checked


def test_estimate_cli_names_the_recipe_and_the_phase(tmp_path):
    import json

    from typer.testing import CliRunner

    from archsmith.cli import app
    from archsmith.hfconfig import hf_from_spec

    config = tmp_path / "config.json"
    config.write_text(json.dumps(hf_from_spec(BASE)))
    shown = CliRunner().invoke(app, ["estimate", str(config), "--batch", "2", "--seq", "256", "--compile"], env={"COLUMNS": "80"})
    assert shown.exit_code == 0, shown.output
    text = " ".join(shown.stdout.split())
    assert "training peak (archsmith train)" in text and "in its forward phase" in text
    assert "training peak: an estimate, not yet held to 5% (under torch.compile" in text
    assert max(map(len, shown.stdout.splitlines())) <= 80
    data = json.loads(CliRunner().invoke(app, ["estimate", str(config), "--batch", "2", "--seq", "256", "--json"]).stdout)
    assert data["memory"]["training_peak_bytes"] == peak.training_peak(BASE, 2, 256)["peak_bytes"] and data["memory"]["peak_exact"]
