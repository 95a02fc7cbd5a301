"""The designer keeps its own budget: memory plans that fit, the training plan it assumes, tiny models, the scaling path."""

from __future__ import annotations

import json
from pathlib import Path

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


# ---- component choices -------------------------------------------------------------------------

def active_in_transformers(model, config: dict) -> int:
    """Parameters one token runs through in the transformers model: routed experts count top_k / num_experts."""
    experts = config.get("num_experts") or config.get("n_routed_experts") or config.get("num_local_experts") or 1
    top_k = config.get("num_experts_per_tok", 1)
    return sum(p.numel() * top_k // experts if ".mlp.experts." in name else p.numel() for name, p in model.named_parameters())


def test_moe_on_the_upper_layers_with_windows_loads_with_the_exact_total_and_active_counts(tmp_path):
    from typer.testing import CliRunner

    from archsmith.cli import app

    out = tmp_path / "moe"
    run = CliRunner().invoke(app, ["design", "--params", "100M", "--moe", "8:2", "--moe-layers", "upper", "--window", "1024",
                                   "--out", str(out), "--json"])
    assert run.exit_code == 0, run.output
    result = json.loads(run.stdout)
    rec = next(c for c in result["candidates"] if c["name"] == result["recommended"])
    config = json.loads((out / "config.json").read_text())
    model = meta_model(config)
    assert param_count(model) == rec["params"]
    assert active_in_transformers(model, config) == rec["active_params"] < rec["params"]
    layers = config["num_hidden_layers"]
    moe_layers = [i for i in range(layers) if hasattr(model.model.layers[i].mlp, "experts")]
    assert moe_layers == list(range(layers // 2, layers))  # the upper half, as asked
    assert model.config.layer_types[:2] == ["sliding_attention", "full_attention"] and model.config.sliding_window == 1024
    report = (out / "architecture_report.md").read_text()
    assert "## Component choices" in report and "| moe |" in report and "| window |" in report
    kinds = {row["choice"] for row in result["components"]["tradeoffs"]}
    assert {"moe", "window"} <= kinds
    adopted = [row for row in result["components"]["tradeoffs"] if row["choice"].startswith("adopted: ")]
    assert all(row["params_delta"] > 0 for row in adopted)  # what the family hard-codes is costed, not hidden


@pytest.mark.usefixtures("one_thread")
def test_an_alternating_window_moe_design_is_proven_and_its_config_computes_as_network_py(tmp_path):
    """The network-architect's request of issue 25 (MoE 8:2, sliding windows on alternate layers): written in a family
    whose transformers code honours layer_types (never qwen3_moe, whose code slides every layer), proven on a tiny
    instance, and the written config.json itself, at its real widths, gives transformers' logits in network.py."""
    import torch
    from transformers import AutoModelForCausalLM
    from typer.testing import CliRunner

    from archsmith import families
    from archsmith.cli import app
    from archsmith.network import CausalLM
    from conftest import hf_config

    out = tmp_path / "moe"
    run = CliRunner().invoke(app, ["design", "--params", "20M", "--moe", "8:2", "--window", "64", "--window-layers", "alternate",
                                   "--out", str(out), "--json"])
    assert run.exit_code == 0, run.output
    proof = json.loads(run.stdout)["proof"]
    config = json.loads((out / "config.json").read_text())
    assert proof["status"] == "proven" and proof["max_abs_diff"] <= 1e-4 and "layer_types" in proof["switches"]
    assert proof["model_type"] == config["model_type"] in families.honouring("layer_types")
    assert config["layer_types"][:2] == ["sliding_attention", "full_attention"] and config["sliding_window"] == 64
    torch.manual_seed(0)
    theirs = AutoModelForCausalLM.from_config(hf_config({**config, "dtype": "float32"}), attn_implementation="eager",
                                              experts_implementation="eager").eval()
    theirs.save_pretrained(tmp_path / "hf")
    ours = CausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(3, config["vocab_size"], (1, 80), generator=torch.Generator().manual_seed(1))  # past the window of 64
    with torch.no_grad():
        assert (ours(ids).logits - theirs(input_ids=ids).logits).abs().max().item() <= 1e-4


def test_a_family_whose_config_transformers_computes_differently_is_passed_over(monkeypatch):
    """With qwen3_moe's row as it was before the finding (layer_types written, which transformers ignores), the designer
    would pick qwen3_moe (the fewest adopted changes); its proof fails, so the design is written in the next family that
    expresses the request and proves, and the proof of what is written is in the result."""
    import dataclasses

    from archsmith import families
    from archsmith.components import Components, family_for
    from archsmith.spec import ArchitectureSpec

    row = families.get("qwen3_moe")
    monkeypatch.setitem(families.FAMILIES, "qwen3_moe", dataclasses.replace(
        row, layers=families.LayerRule("window_layers", gate=("use_sliding_window",)), layouts=(*row.layouts, "layer_types"),
        extra={**row.extra, **families.WINDOW_LAYERS}))
    asked = Components(experts=8, top_k=2, window=64)
    base = ArchitectureSpec(hidden_size=256, num_layers=1, num_heads=4, num_kv_heads=2, ffn_size=768, vocab_size=1024)
    spec = asked.at_depth(base, 8)
    assert hf_from_spec(spec.replace(model_type="qwen3_moe", qk_norm="head"))["layer_types"][:2] == [
        "sliding_attention", "full_attention"]  # the writer alone accepts the lying row
    assert family_for(spec, asked.chosen).model_type == "qwen2_moe"
    result = design_from_text(params="20M", moe="8:2", window=64)
    assert result["recommended"].spec.model_type == "qwen2_moe" and result["proof"]["status"] == "proven"


@pytest.mark.parametrize("choices", [
    {"attention": "mqa"}, {"attention": "mha"}, {"window": 256, "window_layers": "all"}, {"window": 256, "window_layers": "3:1"},
    {"moe": "4:1", "moe_layers": "alternate"}, {"moe": "8:2", "moe_layers": "upper", "attention": "mla"},
    {"norm": "layernorm"}, {"position": "learned"}, {"position": "alibi", "attention": "mqa"},
])
def test_each_component_choice_writes_a_config_transformers_builds_with_the_reported_counts(choices):
    result = design_from_text(params="20M", **choices)
    spec = result["recommended"].spec
    config = hf_from_spec(spec)
    model = meta_model(config)
    assert param_count(model) == est.count_params(spec)["total"]
    assert active_in_transformers(model, config) == est.count_params(spec)["active"]
    asked = {row["choice"] for row in result["components"]["tradeoffs"]}
    assert set(result["components"]["tradeoffs"][0]) >= {"params_delta", "active_delta", "kv_cache_ratio", "what"}
    assert asked >= {"moe" if "moe" in choices else "attention" if "attention" in choices else next(iter(choices))}
    if "window" in choices:
        types = model.config.layer_types if getattr(model.config, "layer_types", None) else ["sliding_attention"] * spec.num_layers
        assert types[:4] == (["sliding_attention"] * 4 if choices["window_layers"] == "all" else
                             ["sliding_attention"] * 3 + ["full_attention"])
    if choices.get("attention") == "mqa":
        assert spec.num_kv_heads == 1 and (config.get("num_key_value_heads") == 1 or config.get("multi_query") is True)


def test_a_choice_no_family_expresses_names_the_nearest_refusal():
    with pytest.raises(ArchsmithError) as exc:
        design_from_text(params="20M", position="alibi")  # every family with ALiBi has MQA or MHA, not GQA
    assert str(exc.value).startswith("position: no transformers family") and "num_kv_heads" in str(exc.value)


@pytest.mark.parametrize("args, field", [
    ({"moe": "8:9"}, "moe"), ({"moe": "eight"}, "moe"), ({"moe_layers": "upper"}, "moe_layers"),
    ({"moe": "8:2", "moe_layers": "middle"}, "moe_layers"), ({"window": 8}, "window"),
    ({"window": 512, "window_layers": "0:1"}, "window_layers"), ({"window_layers": "all"}, "window_layers"),
    ({"attention": "linear"}, "attention"), ({"norm": "batchnorm"}, "norm"), ({"position": "none"}, "position"),
])
def test_bad_component_choices_name_the_option(args, field):
    with pytest.raises(ArchsmithError) as exc:
        design_from_text(params="20M", **args)
    assert exc.value.field == field


def test_a_compute_budget_offers_an_moe_at_the_same_active_parameters():
    result = design(compute=1e21)
    by_name = {c.name: c for c in result["candidates"]}
    dense, moe = by_name["balanced"], by_name["moe-equal-compute"]
    assert moe.spec.moe is not None and moe.spec.hidden_size == dense.spec.hidden_size
    assert abs(moe.summary["params"]["active"] / dense.summary["params"]["active"] - 1) < 0.05
    assert moe.summary["params"]["total"] > 2 * dense.summary["params"]["total"]
    assert any("FLOPs per token" in p for p in moe.pros) and any("per GPU" in c for c in moe.cons)


def test_design_search_recommends_the_lowest_measured_loss_and_writes_the_study(tiny_lm, tmp_path):
    from archsmith.files import write_files
    from archsmith.report import render_design

    result = design_from_text(params="3M", tokenizer=str(tiny_lm["tokenizer"]), search=True, data=str(tiny_lm["corpus"]), trials=3,
                              steps=6)
    found, rec = result["search"], result["recommended"]
    finished = [r for r in found["trials"] if r["state"] == "complete"]
    assert rec.name == "searched" and result["candidates"][0] is rec and finished
    assert found["best"]["heldout_loss"] == min(r["heldout_loss"] for r in finished)  # measured, not the first candidate
    assert est.count_params(rec.spec)["total"] == found["best"]["params"]
    assert all(abs(r["params"] / 3e6 - 1) <= 0.1 for r in found["trials"] if r["steps_trained"])  # trained at the budget
    written = write_files(tmp_path / "d", render_design(result, str(tmp_path / "d")))
    names = {p.name for p in written}
    assert {"search.json", "search_study.db", "config.json"} <= names
    assert param_count(meta_model(json.loads((tmp_path / "d" / "config.json").read_text()))) == found["best"]["params"]
    assert "## Search" in (tmp_path / "d" / "architecture_report.md").read_text()
    assert summary(result)["search"]["best"] == found["best"]


@pytest.mark.parametrize("args, field", [
    ({"search": True, "data": "corpus.txt"}, "search"),  # no tokenizer: nothing to tokenize the corpus with
    ({"search": True, "data": "corpus.txt", "moe": "8:2", "tokenizer": "tok"}, "search"),
    ({"search": True}, "data"),
    ({"trials": 4}, "trials"),
])
def test_design_search_options_are_checked(args, field, tiny_lm):
    if "tokenizer" in args:
        args = {**args, "tokenizer": str(tiny_lm["tokenizer"])}
    with pytest.raises(ArchsmithError) as exc:
        design_from_text(params="3M", **args)
    assert exc.value.field == field


def test_design_search_flags_on_the_cli(tmp_path):
    from typer.testing import CliRunner

    from archsmith.cli import app

    for args, words in ((["--search"], "data: --search needs --data CORPUS"), (["--data", "c.txt"], "data: only with --search"),
                        (["--trials", "3"], "trials: only with --search")):
        run = CliRunner().invoke(app, ["design", "--params", "3M", "--out", str(tmp_path / "d"), *args])
        assert run.exit_code == 2 and words in run.output, run.output
        assert not (tmp_path / "d").exists()


def test_design_search_scored_by_a_harness_task(tiny_lm, tmp_path):
    """--search-tasks: each trained trial is scored by lm-evaluation-harness on a local task (story_end, held-out
    stories); the recommendation has the best accuracy, the report tabulates it; an unknown task is refused first."""
    from archsmith.report import render_design

    tasks = Path(__file__).resolve().parent / "data" / "tasks"
    result = design_from_text(params="3M", tokenizer=str(tiny_lm["tokenizer"]), search=True, data=str(tiny_lm["corpus"]),
                              trials=2, steps=4, search_tasks=["story_end"], search_include=[str(tasks)], search_limit=12)
    found = result["search"]
    done = [r for r in found["trials"] if r["state"] == "complete"]
    assert done and found["config"]["metric"] == "story_end acc"
    assert all(0 <= r["task_metric"] <= 1 and r["objective_value"] == pytest.approx(1 - r["task_metric"]) for r in done)
    assert found["best"]["task_metric"] == max(r["task_metric"] for r in done)
    report = render_design(result, str(tmp_path / "d"))["architecture_report.md"]
    assert "| held-out loss | story_end acc | state |" in report and "story_end acc (lm-evaluation-harness)" in report
    with pytest.raises(ArchsmithError, match="^search_tasks: unknown task 'nope'"):
        design_from_text(params="3M", tokenizer=str(tiny_lm["tokenizer"]), search=True, data=str(tiny_lm["corpus"]),
                         trials=2, steps=4, search_tasks=["nope"], search_include=[str(tasks)])
    with pytest.raises(ArchsmithError, match="^search_tasks: only with --search"):
        design_from_text(params="3M", search_tasks=["story_end"])
