"""The designer keeps its own budget: memory plans that fit, the training plan it assumes, tiny models, the scaling path."""

from __future__ import annotations

import pytest

from archsmith import estimate as est
from archsmith import peak
from archsmith.design import AUTO_STRATEGIES, capacity_plan, design, design_from_text, summary
from archsmith.errors import ArchsmithError
from archsmith.gpus import get_gpu
from archsmith.hfconfig import hf_from_spec
from archsmith.units import parse_bytes, parse_count
from conftest import meta_model, param_count


def plan_bytes(spec, strategy: str, checkpointing: bool, gpus: int, batch: int, seq: int) -> int:
    """Training memory per GPU straight from the estimator: the sharded state and the step's peak above it."""
    train = est.training_memory(spec, batch, seq, "bf16", "adamw", checkpointing=checkpointing)
    step = peak.training_peak(spec, batch, seq, "bf16", checkpointing)
    return peak.per_gpu(step, train, est.sharded_memory(train, spec, strategy, gpus))["total_bytes"]


def test_one_gpu_plans_hold_the_step_peak_of_archsmith_train():
    result = design_from_text(memory="24GB", gpus=1, batch=4, seq=2048)
    rec, training = result["recommended"], result["training"]
    step = peak.training_peak(rec.spec, 4, 2048, "bf16", training["checkpointing"])
    per = rec.summary["memory_per_gpu"]
    assert per["total_bytes"] == step["peak_bytes"] <= result["limit"]["bytes"] == 24e9
    assert sum(per[k] for k in ("weights_bytes", "gradients_bytes", "optimizer_bytes", "communication_buffers_bytes",
                                "activations_bytes")) == per["total_bytes"]


@pytest.mark.parametrize("budget,gpu,gpus", [("24GB", "h100", 8), ("100GB", "rtx4090", 1), ("24GB", "h100", 1), ("2GiB", "l4", 2)])
def test_memory_budget_is_never_exceeded(budget, gpu, gpus):
    result = design_from_text(memory=budget, gpu=gpu, gpus=gpus)
    device = get_gpu(gpu)
    limit = min(parse_bytes(budget, "memory"), int(device["memory_gib"] * 2**30 * 0.9))
    rec, training = result["recommended"], result["training"]
    assert training["fits"] and result["warnings"] == []
    needed = plan_bytes(rec.spec, training["strategy"], training["checkpointing"], gpus, training["micro_batch"], training["seq"])
    assert needed <= limit
    assert rec.summary["memory_per_gpu"]["total_bytes"] == needed
    plan = capacity_plan(rec.spec, device, gpus, rec.summary["train_tokens"], 0.4, training["micro_batch"], training["seq"],
                         result["limit"], training)
    assert plan["usable_bytes"] == limit
    for row in plan["strategies"]:
        assert row["fits"] == (row["total_bytes"] <= limit)
    assert [r for r in plan["strategies"] if r["chosen"]] == [r for r in plan["strategies"] if r["chosen"] and r["fits"]] != []
    assert needed >= 0.85 * limit  # the largest that fits: the search stops within 1% of the budget's edge


def test_nothing_fits_says_so_and_why():
    with pytest.raises(ArchsmithError) as info:
        design_from_text(memory="256MiB", gpus=1, seq=16384)
    assert info.value.field == "memory"
    message = str(info.value)
    for words in ("even a", "per GPU", "micro-batch 1 x seq 16384", "256.00 MiB", "lower --seq"):
        assert words in message, words


def test_auto_plan_is_the_first_that_fits_in_an_engineers_order():
    order = [(s, c) for c in (False, True) for s in AUTO_STRATEGIES]
    for params, gpus in ((125_000_000, 8), (7_000_000_000, 8), (30_000_000_000, 8)):
        result = design(params=params, gpus=gpus)
        spec, training, limit = result["recommended"].spec, result["training"], result["limit"]["bytes"]
        fitting = [(s, c) for s, c in order if plan_bytes(spec, s, c, gpus, 1, training["seq"]) <= limit]
        assert (training["strategy"], training["checkpointing"]) == fitting[0]
    assert design(params=125_000_000)["training"]["strategy"] == "ddp"  # plain DDP without checkpointing for a small model
    too_big = design(params=70_000_000_000, gpus=1)
    assert not too_big["training"]["fits"] and too_big["training"]["checkpointing"]
    assert "does not fit" in too_big["warnings"][0] and "GPUs" in too_big["warnings"][0]


def test_user_settings_drive_memory_per_gpu():
    result = design_from_text(params="350M", batch=4, seq=1024, strategy="zero2", checkpointing=True, gpus=4)
    for c in result["candidates"]:
        assert c.summary["memory_per_gpu"]["total_bytes"] == plan_bytes(c.spec, "zero2", True, 4, 4, 1024)
    training = result["training"]
    assert (training["micro_batch"], training["seq"], training["strategy_set_by"], training["checkpointing_set_by"]) == (4, 1024, "user", "user")
    words = " ".join(result["assumptions"])
    assert "micro-batch 4 x 1024" in words and "zero2 (given)" in words and "with activation checkpointing (given)" in words
    assert summary(result)["training"] == training
    on_budget = design_from_text(memory="24GB", strategy="ddp", checkpointing=False)
    assert (on_budget["training"]["strategy"], on_budget["training"]["checkpointing"]) == ("ddp", False)
    assert on_budget["recommended"].summary["memory_per_gpu"]["total_bytes"] <= 24e9


@pytest.mark.parametrize("params", ["1M", "3M", "10M", "20M"])
def test_tiny_models_can_be_designed(params):
    result = design_from_text(params=params)
    rec = result["recommended"]
    assert result["template"]["name"] == "10M"
    assert rec.spec.num_heads >= 4 and rec.spec.hidden_size % rec.spec.num_heads == 0
    assert abs(rec.summary["params"]["total"] / parse_count(params, "params") - 1) < 0.1
    assert param_count(meta_model(hf_from_spec(rec.spec))) == rec.summary["params"]["total"]


def test_impossible_vocabulary_names_the_embedding():
    with pytest.raises(ArchsmithError) as info:
        design_from_text(params="1M", vocab=73089)
    padded = 73216  # 73089 padded to a multiple of 128
    assert f"{padded * 64:,} embedding parameters" in str(info.value) and "1,000,000 target" in str(info.value)


def test_scaling_path_is_shaped_as_the_designer_shapes_each_size():
    result = design_from_text(params="125M")
    steps = {s["template"]: s for s in result["scaling_path"]}
    assert set(steps) == {"10M", "100M", "350M", "1B", "7B"}
    for name, step in steps.items():
        alone = design_from_text(params=name, vocab=result["vocab"]["padded"])["recommended"]
        assert (step["shape"], step["params"]) == (alone.summary["shape"], alone.summary["params"]["total"]), name
    rationale = result["rationale"][1]
    assert f"aspect {result['recommended'].summary['aspect']} " in rationale and "target aspect 64" in rationale


@pytest.mark.parametrize("field,value", [("params", "1e999"), ("compute", "1e999"), ("tokens", "1e999"), ("memory", "1e999GB"),
                                         ("params", "-5"), ("tokens", "1e30"), ("compute", "nan")])
def test_absurd_numbers_are_one_line_errors_naming_the_range(field, value):
    args = {"params": "1B", field: value} if field in ("tokens",) else {field: value}
    with pytest.raises(ArchsmithError) as info:
        design_from_text(**args)
    assert info.value.field == field
    assert "\n" not in str(info.value) and ("[" in str(info.value) or "cannot read" in str(info.value))


@pytest.mark.parametrize("field,value", [("context", 0), ("seq", 0), ("seq", 100), ("batch", 0), ("strategy", "pipeline")])
def test_plan_settings_out_of_range(field, value):
    with pytest.raises(ArchsmithError) as info:
        design(params=125_000_000, **{field: value})
    assert info.value.field == field


def test_mcp_design_tools_take_the_plan_and_name_bad_numbers(tmp_path):
    import json

    import anyio
    from mcp import Client

    from archsmith.mcp_server.server import build_server

    plan = {"params": "350M", "gpus": 4, "batch": 2, "seq": 1024, "strategy": "zero1", "checkpointing": False}

    async def main():
        async with Client(build_server(tmp_path)) as client:
            answer = await client.call_tool("design_architecture", plan)
            assert not answer.is_error, answer.content
            assert answer.structured_content == json.loads(json.dumps(summary(design_from_text(**plan))))
            for args in ({"params": "1e999"}, {"compute": "1e999"}, {"params": "1B", "tokens": "1e999"}):
                bad = await client.call_tool("design_architecture", args)
                field = "tokens" if "tokens" in args else next(iter(args))
                assert bad.is_error and f"{field}: must be a finite number in [" in bad.content[0].text, bad.content
            written = await client.call_tool("write_design", {"out_dir": "tiny", "params": "10M", "seq": 256, "strategy": "ddp"})
            assert not written.is_error, written.content
            assert "micro-batch 1 x 256 tokens per GPU, ddp (given)" in (tmp_path / "tiny" / "capacity_plan.md").read_text()

    anyio.run(main)
