"""Parallel layouts (TP x PP x DP x CP): per-GPU memory, bubble and traffic worked out by hand for a small decoder,
the published Llama 3 405B layout on 16,384 H100s, the reasons a layout is refused, and the design CLI / JSON."""

from __future__ import annotations

import json

import pytest
from rich.console import Console
from typer.testing import CliRunner

from archsmith import cli, layouts
from archsmith import estimate as est
from archsmith.catalog import reference_config
from archsmith.errors import ArchsmithError
from archsmith.gpus import get_gpu
from archsmith.hfconfig import spec_from_hf
from archsmith.spec import ArchitectureSpec

# h=64, 4 layers, 4 heads of 16 (q 64), 2 KV heads (k, v 32 each), SwiGLU FFN 128, vocabulary 256, untied lm_head
SMALL = ArchitectureSpec(hidden_size=64, num_layers=4, num_heads=4, num_kv_heads=2, ffn_size=128, vocab_size=256,
                         context_length=512)
H100 = get_gpu("h100")  # 989.4 dense bf16 TFLOP/s, 450 GB/s NVLink, 50 GB/s per GPU between nodes, 80 GiB
LAYER = 64 * 64 + 32 * 64 + 32 * 64 + 64 * 64 + 3 * 64 * 128 + 2 * 64  # q, k, v, o, gate/up/down, 2 norms = 36,992
EMBED = HEAD = 256 * 64  # embed_tokens; lm_head (+ the 64-wide final norm)
# bytes one Llama layer saves per token in bf16 (estimate's rule): 2 RMSNorms x (fp32 input 4h + fp32 rstd 4 + bf16
# normalised 2h) + bf16 inputs of the q/k/v and gate/up projections 2 x 2h + SDPA's q, k, v, output 2 x (64+32+32+64)
# and fp32 log-sum-exp 4 x 4 heads + the MLP's gate, silu, up and product 4 x 2 x 128
PER_TOKEN = 2 * (4 * 64 + 4 + 2 * 64) + 2 * 2 * 64 + 2 * (64 + 32 + 32 + 64) + 4 * 4 + 4 * 2 * 128  # = 2,456


def run(tp, pp, cp, schedule, gpus, batch_sequences, micro, recompute="selective", seq=256):
    return layouts.layout(SMALL, H100, gpus, seq, batch_sequences * seq, micro, tp, pp, cp, schedule, recompute)


def test_the_small_decoder_by_hand_matches_estimate():
    counts = est.count_params(SMALL)
    assert (counts["per_layer"], counts["embedding"], counts["lm_head"]) == (LAYER, EMBED, HEAD)
    assert est.activation_bytes(SMALL, 2, 256)["per_layer"] == PER_TOKEN * 512


def test_tp2_pp2_1f1b_by_hand():
    # 16 GPUs = 2 nodes x 8; tp 2 x pp 2 x dp 4; 32 sequences of 256, micro-batch 2: m = 32 / (4 x 2) = 4
    r = run(2, 2, 1, "1f1b", gpus=16, batch_sequences=32, micro=2)
    assert (r["dp"], r["micro_batches"], r["stage_layers"], r["feasible"]) == (4, 4, [2, 2], True)
    stage0 = 2 * LAYER + EMBED  # 90,368 parameters
    # per GPU: bf16 weights and fp32 gradients of the stage over tp; fp32 master + m + v over tp x dp
    assert r["memory"]["weights_bytes"] == 2 * stage0 // 2 == 90_368
    assert r["memory"]["gradients_bytes"] == 4 * stage0 // 2 == 180_736
    assert r["memory"]["optimizer_bytes"] == 12 * stage0 // (2 * 4) == 135_552
    # stage 0 holds min(m, pp - 0) = 2 micro-batches of its 2 layers, each 512 tokens x 2,456 B over tp 2 (SP),
    # plus the int64 token ids of those 2 micro-batches and the bf16 rotary tables (cos, sin: 2 x 256 x 16 x 2 B)
    acts = 2 * 2 * 512 * PER_TOKEN // 2 + 2 * 512 * 8 + 2 * 256 * 16 * 2
    assert r["memory"]["activations_bytes"] == acts == 2_539_520
    assert r["memory"]["stage"] == 0 and r["memory"]["total_bytes"] == 90_368 + 180_736 + 135_552 + 2_539_520
    assert r["bubble"] == pytest.approx((2 - 1) / (4 * 1 + 2 - 1))  # 0.2
    # traffic per GPU per step. TP (SP): per micro-batch 4 all-reduce equivalents per layer x 2 layers + 1 for the
    # embedding (or lm_head), each 2 x (tp - 1) / tp of the micro-batch's bf16 activations (2 x 256 x 64 x 2 B)
    tp_bytes = 4 * (4 * 2 + 1) * 2 * (1 / 2) * (2 * 256 * 64 * 2)
    # FSDP over dp 4 with PP: the stage's bf16 weights gathered and fp32 gradients reduce-scattered once per step
    dp_bytes = (3 / 4) * (2 + 4) * (2 * LAYER + 64 + HEAD) / 2  # the larger stage: 2 layers + final norm + lm_head
    pp_bytes = 2 * 4 * (2 * 256 * 64 * 2) / 2  # activations forward, gradients back, per micro-batch, SP-sharded
    assert r["comm"] == {"tp_bytes": int(tp_bytes), "cp_bytes": 0, "dp_bytes": int(dp_bytes), "pp_bytes": int(pp_bytes),
                         "total_bytes": int(tp_bytes) + int(dp_bytes) + int(pp_bytes)}
    # time: the last stage is the slowest (lm_head); 3 passes of its FLOPs over tp GPUs at 40% of 989.4 TFLOP/s
    layer_flops = 2 * 512 * (LAYER - 2 * 64) + 2 * 4 * (16 + 16) * 2 * (256 * 257 // 2)  # matmuls + causal attention
    flops = 3 * (2 * layer_flops + 2 * 512 * 64 * 256)
    t_mb = flops / (2 * 989.4e12 * 0.4) + tp_bytes / 4 / 450e9
    assert r["time"]["step_s"] == pytest.approx(t_mb * (4 + 1) + pp_bytes / 50e9)  # dp traffic hides in one micro-batch


def test_fsdp_with_context_parallel_by_hand():
    # 16 GPUs: tp 1 x pp 1 x cp 2 x dp 8; 16 sequences, micro-batch 1: m = 2; full shard over dp x cp = 16
    r = run(1, 1, 2, "1f1b", gpus=16, batch_sequences=16, micro=1)
    total = 4 * LAYER + EMBED + 64 + HEAD  # 180,800
    assert r["memory"]["weights_bytes"] == 2 * 2 * LAYER  # two gathered bf16 layers (computing + prefetching)
    assert r["memory"]["gradients_bytes"] == 4 * total // 16 == 45_200
    assert r["memory"]["optimizer_bytes"] == 12 * total // 16 == 135_600
    # 128 tokens per CP rank: 4 layers x 128 x 2,456 B; ids; rotary tables at 128; final norm (fp32 x, rstd, bf16
    # normalised) + lm_head input; fp32 log-softmax + int64 labels + 4; bf16 logits
    acts = 4 * 128 * PER_TOKEN + 128 * 8 + 2 * 128 * 16 * 2 + 128 * (4 * 64 + 4 + 2 * 64 + 2 * 64) \
        + 128 * (4 * 256 + 8) + 4 + 2 * 128 * 256
    assert r["memory"]["activations_bytes"] == acts == 1_530_372
    # ring attention: per layer K and V of the sequence (256 x 2 x 32 x 2 B) pass (cp - 1) / cp round, 3 times
    cp_bytes = 2 * 4 * 3 * (1 / 2) * (256 * 2 * 32 * 2)
    # full shard: per micro-batch gather (forward and backward) bf16, reduce-scatter fp32, of all parameters
    dp_bytes = 2 * (15 / 16) * (2 * 2 + 4) * total
    assert r["comm"] == {"tp_bytes": 0, "cp_bytes": int(cp_bytes), "dp_bytes": int(dp_bytes), "pp_bytes": 0,
                         "total_bytes": int(cp_bytes) + int(dp_bytes)}
    assert r["bubble"] == 0 and r["feasible"]


def test_interleaved_schedule_holds_korthikantis_extra_micro_batches():
    # tp 1 x pp 2 x dp 8, 2 chunks per stage, m = 32 / 8 = 4
    r = run(1, 2, 1, "interleaved", gpus=16, batch_sequences=32, micro=1)
    assert r["virtual_stages"] == 2 and r["bubble"] == pytest.approx(1 / (4 * 2 + 1))
    # stage 0 holds pp (1 + (pp - 1) / (pp v)) = 2 x 1.25 = 2.5 micro-batches of its 2 layers
    assert r["stages"][0]["in_flight"] == 2.5 and r["stages"][1]["in_flight"] == 1.5
    acts = 2.5 * 2 * 256 * PER_TOKEN + 2.5 * 256 * 8 + 2 * 256 * 16 * 2
    stage0 = 2 * LAYER + EMBED
    assert r["memory"]["total_bytes"] == 2 * stage0 + 4 * stage0 + 12 * stage0 // 8 + acts == 3_842_944
    assert r["comm"]["pp_bytes"] == 2 * 4 * 2 * (256 * 64 * 2)  # each micro-batch crosses a rank v = 2 times


def test_full_recomputation_keeps_layer_inputs_and_pays_a_forward():
    sel, full = (run(2, 2, 1, "1f1b", gpus=16, batch_sequences=32, micro=2, recompute=mode) for mode in ("selective", "full"))
    # stage 0: 2 micro-batches x 2 layers keep their bf16 input (512 x 64 x 2 B / tp), one layer is recomputed at a time
    recomputed = 512 * PER_TOKEN // 2
    assert full["stages"][0]["activations_bytes"] == 2 * 2 * 512 * 64 * 2 // 2 + recomputed + 2 * 512 * 8 + 2 * 256 * 16 * 2
    # stage 1 (now the fullest): 1 micro-batch's inputs, the recomputed layer, and the head's and loss's tensors over tp
    head = 512 * (4 * 64 + 4 + 2 * 64 + 2 * 64) + 512 * (4 * 256 + 8) + 4 + 2 * 512 * 256
    assert full["memory"]["activations_bytes"] == 2 * 512 * 64 * 2 // 2 + recomputed + head // 2 == 1_221_634
    assert full["memory"]["total_bytes"] < sel["memory"]["total_bytes"]
    assert full["comm"]["tp_bytes"] == 4 * (6 * 2 + 1) * 2 * (1 / 2) * (2 * 256 * 64 * 2)  # the forward's traffic again
    assert full["time"]["compute_s"] > sel["time"]["compute_s"]


def test_stage_splits():
    assert layouts.stage_layers(126, 16) == [7] + [8] * 14 + [7]  # Llama 3 405B
    assert layouts.stage_layers(10, 4) == [2, 3, 3, 2]
    assert layouts.stage_layers(9, 2) == [4, 5]  # one short: the first stage gives it up
    assert layouts.stage_layers(10, 8) is None and layouts.stage_layers(4, 8) is None


@pytest.mark.parametrize("args,code,words", [
    ((16, 1, 1, "1f1b", 32, 32, 1), "crosses_nodes", "tp 16 crosses nodes (8 GPUs per node)"),
    ((8, 1, 1, "1f1b", 16, 32, 1), "heads", "tp 8 does not divide 4 heads and 2 KV heads"),
    ((1, 16, 1, "1f1b", 16, 32, 1), "layers", "pp 16 does not divide 4 layers"),
    ((1, 1, 1, "1f1b", 16, 24, 1), "batch", "global batch 24 sequences not divisible by dp x micro-batch = 16 x 1"),
    ((1, 4, 1, "1f1b", 16, 8, 1), "fill", "2 micro-batches < 4 stages: the pipeline never fills (bubble 60%)"),
    ((1, 4, 1, "interleaved", 16, 24, 1), "interleave", "interleaving needs micro-batches (6) divisible by pp (4)"),
], ids=["tp-crosses-nodes", "heads", "layers", "batch", "fill", "interleave"])
def test_infeasible_layouts_say_why(args, code, words):
    r = run(*args[:4], gpus=args[4], batch_sequences=args[5], micro=args[6])
    assert not r["feasible"] and code in [x["code"] for x in r["reasons"]] and words in r["why"], r["why"]


def test_layouts_the_trainer_refuses_are_not_feasible():
    """The planner recommends only what `archsmith train` runs: no pipeline over tied embeddings, no tensor-parallel
    split of a vocabulary tp does not divide."""
    import dataclasses

    tied = layouts.layout(dataclasses.replace(SMALL, tie_embeddings=True), H100, 16, 256, 32 * 256, 1, 1, 2, 1, "1f1b")
    assert not tied["feasible"] and [x["code"] for x in tied["reasons"]] == ["trainer"]
    assert "archsmith train refuses it (pp: tied embeddings" in tied["why"]
    odd = layouts.layout(dataclasses.replace(SMALL, vocab_size=255), H100, 16, 256, 32 * 256, 1, 2, 1, 1, "1f1b")
    assert [x["code"] for x in odd["reasons"]] == ["trainer"] and "vocab_size = 255 is not a multiple of 2" in odd["why"]
    assert run(2, 2, 1, "1f1b", 16, 32, 1)["feasible"]  # the same splits of the untied model run


def test_memory_over_the_limit_names_both_figures():
    r = layouts.layout(SMALL, "h100", 16, 256, 32 * 256, 2, 2, 2, 1, "1f1b", "selective", limit_bytes=2**20)
    assert [x["code"] for x in r["reasons"]] == ["memory"]
    assert r["why"] == "per-GPU memory 2.81 MiB > 1.00 MiB usable (stage 0, selective recomputation)"


def test_bad_arguments_name_the_field():
    for kwargs, field in (({"global_batch": 1000}, "global_batch"), ({"tp": 3}, "gpus"), ({"schedule": "zb"}, "schedule")):
        args = {"global_batch": 32 * 256, "tp": 2, "schedule": "1f1b", **kwargs}
        with pytest.raises(ArchsmithError, match=f"^{field}: "):
            layouts.layout(SMALL, H100, 16, 256, args["global_batch"], 1, args["tp"], 1, 1, args["schedule"])


# ---- Llama 3 405B on 16,384 H100 80GB: TP 8, CP 1, PP 16, DP 128, 16M-token batches at 8K (Llama 3 paper, table 4) ----

@pytest.fixture(scope="module")
def llama405b():
    spec = spec_from_hf(reference_config("meta-llama__Llama-3.1-405B"))
    assert (spec.num_layers, spec.hidden_size, spec.num_heads, spec.num_kv_heads, spec.ffn_size, spec.vocab_size) == \
        (126, 16384, 128, 8, 53248, 128256)
    return layouts.plan(spec, "h100", 16384, 8192, 2048 * 8192, 1)


def test_llama3_405b_published_layout_is_feasible(llama405b):
    published = [r for r in llama405b["layouts"] if (r["tp"], r["pp"], r["cp"]) == (8, 16, 1)]
    assert {r["schedule"] for r in published} == {"1f1b", "interleaved"}
    for r in published:
        assert r["feasible"] and r["dp"] == 128 and r["micro_batches"] == 16, r["why"]
        assert r["memory"]["total_bytes"] < 80e9 and r["memory"]["total_bytes"] <= llama405b["limit_bytes"]
        assert r["stage_layers"] == [7] + [8] * 14 + [7]
    assert llama405b["recommended"]["tp"] == 8


def test_llama3_405b_smaller_tp_degrees_say_why_not(llama405b):
    for entry in llama405b["by_tp"]:
        if entry["tp"] in (1, 2, 4):
            assert entry["feasible"] == 0 and entry["best"] is None
            codes = {w["code"] for w in entry["why_not"]}
            assert {"fill", "memory"} <= codes, entry  # pipelines too deep for the batch, or state too big
    rows = {(r["tp"], r["pp"], r["schedule"]): r for r in llama405b["layouts"] if r["cp"] == 1}
    # the published pipeline with half the tensor parallelism: 8 micro-batches per step for 16 stages
    assert "8 micro-batches < 16 stages" in rows[(4, 16, "1f1b")]["why"]
    # no pipeline: 4,096 data-parallel ranks for 2,048 sequences
    assert "global batch 2,048 sequences not divisible by dp x micro-batch = 4,096 x 1" in rows[(4, 1, "none")]["why"]
    # one GPU per stage of 32: 405B / 32 stages still exceeds an H100
    assert any(x["code"] == "memory" for x in rows[(1, 32, "1f1b")]["reasons"])


# ---- the design command ----------------------------------------------------------------------------------------

def test_design_cli_sizes_layouts_in_json_report_and_80_columns(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "out", Console(width=80, record=True))
    monkeypatch.setattr(cli, "err", Console(width=80, stderr=True))
    monkeypatch.chdir(tmp_path)  # a short relative --out, as users type it: the command's words fit 80 columns
    runner = CliRunner()
    args = ["design", "--params", "1B", "--gpus", "16", "--seq", "2048", "--global-batch", str(32 * 2048), "--layouts"]
    data = json.loads(runner.invoke(cli.app, [*args, "--out", "j", "--json"]).stdout)
    rows, plan = data["layouts"], data["layout_plan"]
    assert rows and all("stages" not in r for r in rows) and plan["feasible"] == sum(r["feasible"] for r in rows)
    best = plan["recommended"]
    assert best == rows[0] and best["rank"] == 1 and best["global_batch_sequences"] == 32
    flags = f"--tp {best['tp']} --pp {best['pp']} --cp {best['cp']}"
    assert flags in plan["launch"]["command"] and "-m archsmith.train j " in plan["launch"]["command"]
    assert "--batch 32 --micro-batch 1 --seq 2048" in plan["launch"]["command"]
    report = (tmp_path / "j" / "capacity_plan.md").read_text()
    assert "## Parallel layouts" in report and plan["launch"]["command"] in report
    cli._show_layouts(data)  # what `design` prints after its candidates table, at 80 columns
    text = cli.out.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80 and "…" not in text
    assert best["name"] in " ".join(text.split()) and f"{best['memory']['total_bytes'] / 2**30:.1f}" in text
    bad = runner.invoke(cli.app, [*args[:-3], "--global-batch", "5000", "--out", str(tmp_path / "b")])
    assert bad.exit_code == 2 and "global_batch: must be a multiple of seq 2048: 5,000 is not; nearest 4,096 or 6,144 tokens" in bad.stderr
